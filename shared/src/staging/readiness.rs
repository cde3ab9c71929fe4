//! What the objects' status says: ready, still coming up (and why), or failed (and why).
//! Pure functions over the API server's answers; the step decides when waiting becomes a timeout.
//!
//! Failed at once: a container that cannot be pulled (`ImagePullBackOff`, `ErrImagePull`,
//! `InvalidImageName`), cannot be created (`CreateContainerConfigError`) or crash-loops
//! (`CrashLoopBackOff`, with the last exit code). Still waiting (failed only at the timeout, with
//! the reason): an unschedulable pod (autoscaling may fix it), a Pending PVC (binding waits for
//! the pod with `WaitForFirstConsumer`), probes not passing yet (a restored database replays its
//! log first).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, PersistentVolumeClaim, Pod};

/// How far an object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    Waiting(String),
    Failed(String),
}

/// Container waiting reasons that do not fix themselves.
const IMAGE_FAILURES: [&str; 4] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
];
const CONFIG_FAILURES: [&str; 2] = ["CreateContainerConfigError", "CreateContainerError"];

/// Termination messages are the container's own words: keep them short.
const MAX_DETAIL: usize = 300;

fn short(s: &str) -> String {
    crate::job::codepipeline::truncate(s.trim(), MAX_DETAIL)
}

pub fn claim_health(pvc: &PersistentVolumeClaim) -> Health {
    let name = pvc.metadata.name.as_deref().unwrap_or_default();
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    match phase {
        "Bound" => Health::Ready,
        "Lost" => Health::Failed(format!(
            "PVC {name} is Lost: its PersistentVolume {} is gone",
            pvc.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .unwrap_or("?")
        )),
        other => Health::Waiting(format!("PVC {name} is {other}")),
    }
}

pub fn stateful_set_health(sts: &StatefulSet) -> Health {
    let name = sts.metadata.name.as_deref().unwrap_or_default();
    let generation = sts.metadata.generation.unwrap_or(0);
    let status = sts.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    if observed < generation {
        return Health::Waiting(format!(
            "StatefulSet {name}: generation {generation} not observed yet (observed {observed})"
        ));
    }
    let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < want {
        return Health::Waiting(format!("StatefulSet {name}: {ready}/{want} replicas ready"));
    }
    let updated = status.updated_replicas.unwrap_or(want);
    let rolling =
        matches!((&status.current_revision, &status.update_revision), (Some(c), Some(u)) if c != u);
    if updated < want || rolling {
        return Health::Waiting(format!(
            "StatefulSet {name}: rolling out ({updated}/{want} replicas updated)"
        ));
    }
    Health::Ready
}

/// A Deployment (user templates): current generation, every replica updated and available, old
/// ones gone; failed when its progress deadline passed.
pub fn deployment_health(d: &Deployment) -> Health {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    if observed < generation {
        return Health::Waiting(format!(
            "Deployment {name}: generation {generation} not observed yet (observed {observed})"
        ));
    }
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Health::Failed(format!(
            "Deployment {name} exceeded its progress deadline (ProgressDeadlineExceeded){}",
            detail(c.message.as_deref())
        ));
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < want {
        return Health::Waiting(format!(
            "Deployment {name}: rolling out ({updated}/{want} replicas updated)"
        ));
    }
    if total > updated {
        return Health::Waiting(format!(
            "Deployment {name}: {} old replica(s) still terminating",
            total - updated
        ));
    }
    if available < want {
        return Health::Waiting(format!(
            "Deployment {name}: {available}/{want} replicas available"
        ));
    }
    Health::Ready
}

/// `": <message>"` (shortened) when there is a message, else nothing.
fn detail(message: Option<&str>) -> String {
    message
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {}", short(m)))
        .unwrap_or_default()
}

/// `": <message>"` of a terminated container, whose message is often its last log lines: the
/// end is kept (where the error is), lines joined with " | ".
fn last_words(message: Option<&str>) -> String {
    let Some(m) = message.map(str::trim).filter(|m| !m.is_empty()) else {
        return String::new();
    };
    let m = m
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    let n = m.chars().count();
    if n <= MAX_DETAIL {
        return format!(": {m}");
    }
    let tail: String = m.chars().skip(n - (MAX_DETAIL - 1)).collect();
    format!(": …{tail}")
}

/// A container's state, failed when it cannot recover by itself.
fn container_health(c: &ContainerStatus) -> Option<Health> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or("Waiting");
    let message = detail(waiting.message.as_deref());
    if IMAGE_FAILURES.contains(&reason) {
        return Some(Health::Failed(format!(
            "image {:?} of container {} cannot be pulled ({reason}{message}); check the image name and tag and the nodes' access to its registry",
            c.image, c.name
        )));
    }
    if CONFIG_FAILURES.contains(&reason) {
        return Some(Health::Failed(format!(
            "container {} cannot be created ({reason}{message})",
            c.name
        )));
    }
    if reason == "CrashLoopBackOff" {
        let last = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| {
                let why = t.reason.as_deref().unwrap_or("terminated");
                let said = last_words(t.message.as_deref());
                format!("; last exit code {} ({why}){said}", t.exit_code)
            })
            .unwrap_or_default();
        return Some(Health::Failed(format!(
            "container {} is crash-looping (CrashLoopBackOff, {} restarts){last}",
            c.name, c.restart_count
        )));
    }
    Some(Health::Waiting(format!(
        "container {} is {reason}{message}",
        c.name
    )))
}

/// The pod's conditions and containers.
pub fn pod_health(pod: &Pod) -> Health {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    let mut waiting = None;
    for c in containers {
        match container_health(c) {
            Some(Health::Failed(why)) => return Health::Failed(format!("pod {name}: {why}")),
            Some(Health::Waiting(why)) if waiting.is_none() => waiting = Some(why),
            _ => {}
        }
    }
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .cloned()
    };
    if let Some(c) = condition("PodScheduled")
        && c.status == "False"
    {
        let reason = c.reason.unwrap_or_else(|| "NotScheduled".into());
        let message = c.message.map(|m| short(&m)).unwrap_or_default();
        return Health::Waiting(format!(
            "pod {name} cannot be scheduled ({reason}): {message}"
        ));
    }
    if condition("Ready").is_some_and(|c| c.status == "True") {
        return Health::Ready;
    }
    let phase = status.phase.as_deref().unwrap_or("Pending");
    match waiting {
        Some(why) => Health::Waiting(format!("pod {name} is {phase}: {why}")),
        None => Health::Waiting(format!(
            "pod {name} is {phase}: the database is starting (readiness probe not passing yet)"
        )),
    }
}

/// A Job's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobHealth {
    Succeeded,
    Running,
    Failed(String),
}

pub fn job_health(job: &Job) -> JobHealth {
    let status = job.status.clone().unwrap_or_default();
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => return JobHealth::Succeeded,
            "Failed" | "FailureTarget" => {
                let reason = c.reason.as_deref().unwrap_or("Failed");
                let message = detail(c.message.as_deref());
                return JobHealth::Failed(format!("{reason}{message}"));
            }
            _ => {}
        }
    }
    if status.succeeded.unwrap_or(0) > 0 {
        JobHealth::Succeeded
    } else {
        JobHealth::Running
    }
}

/// The last exit of a Job's pods: `exit code 3 (Error): <termination message>`.
pub fn last_exit(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let state = c.state.as_ref()?;
            state
                .terminated
                .as_ref()
                .or_else(|| c.last_state.as_ref()?.terminated.as_ref())
        })
        .filter(|t| t.exit_code != 0)
        .max_by_key(|t| t.finished_at.as_ref().map(|f| f.0))
        .map(|t| {
            let said = last_words(t.message.as_deref());
            format!(
                "exit code {} ({}){said}",
                t.exit_code,
                t.reason.as_deref().unwrap_or("Error")
            )
        })
}

/// The first container failure among a Job's pods (an image that cannot be pulled never ends).
pub fn pods_failure(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|p| match pod_health(p) {
        Health::Failed(why) => Some(why),
        _ => None,
    })
}

/// The newest distinct Warning events, `Reason: message`, at most `max`.
pub fn warnings(events: &[Event], max: usize) -> Option<String> {
    let mut warn: Vec<&Event> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    warn.sort_by_key(|e| {
        std::cmp::Reverse(
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        )
    });
    let mut lines: Vec<String> = Vec::new();
    for e in warn {
        let line = format!(
            "{}: {}",
            e.reason.as_deref().unwrap_or("Warning"),
            short(e.message.as_deref().unwrap_or_default())
        );
        if !lines.contains(&line) {
            lines.push(line);
        }
        if lines.len() >= max {
            break;
        }
    }
    (!lines.is_empty()).then(|| lines.join("; "))
}

#[cfg(test)]
mod tests;
