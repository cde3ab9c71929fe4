//! Deploying for real: server-side apply of the plan, then one check per invocation until the
//! database is ready, then the masking and migration Jobs, then the outputs. Never sleeps: each
//! wait is an `Outcome::Continue` with a small [`DeployState`].
//!
//! | phase | this invocation | next |
//! | --- | --- | --- |
//! | (none) | check ownership, apply Namespace, the isolating NetworkPolicies ([`crate::staging::render::network`]), Secret (new credentials only if it does not exist), PV, PVC, Service, StatefulSet | `ready` |
//! | `ready` | PVC Bound, StatefulSet ready and current, pod Ready (its init container `credentials-reset` set the staging password first, [`crate::staging::render::reset`]); fail at once on a pull/crash failure, at `readyTimeoutMinutes` otherwise | `masking`, `migration` or done |
//! | `masking` | the masking Job's result; on success `staging-db-access` opens the database (at `ready` already when no masking is configured) | `migration` or done |
//! | `migration` | the migration Job's result (`MigrationResult`) | done |
//!
//! Any failure after the apply deletes the namespace this run created (`onFailure: "teardown"`,
//! the default) or keeps it (`"keep"`), and says which in the message.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Event, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::interlock::VolumeMarks;
use crate::job::contract::{Execution, Outcome};
use crate::kube::api;
use crate::kube::client::BACKEND;
use crate::kube::ownership;
use crate::staging::credentials::{self, Credentials};
use crate::staging::guard;
use crate::staging::objects::{SECRET_NAME, STATEFULSET_NAME};
use crate::staging::params::OnFailure;
use crate::staging::params::VolumeSource;
use crate::staging::plan::Plan;
use crate::staging::readiness::{self, Health, JobHealth};
use crate::staging::render::Workload;
use crate::staging::render::jobs::{self, JobKind};
use crate::staging::render::network;
use crate::staging::render::template::TemplateObject;
use crate::staging::rollback;
use crate::staging::teardown;

/// The `Mode` output once the database is deployed.
pub const MODE_APPLIED: &str = "applied";
/// Extra time a Job gets beyond its `activeDeadlineSeconds` before snapstage gives up on it.
const JOB_GRACE_SECONDS: i64 = 120;

/// Where a deploy is, between invocations (a few dozen bytes of JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Ready,
    Masking,
    Migration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployState {
    #[serde(rename = "p")]
    pub phase: Phase,
    /// When the phase began (Unix seconds).
    #[serde(rename = "t")]
    pub since: i64,
    /// When the namespace expires (Unix seconds): the `ExpiresAt` output.
    #[serde(rename = "x")]
    pub expires: i64,
    /// True when this run created the namespace: only then does a failure delete it.
    #[serde(rename = "c")]
    pub created: bool,
    /// The `snapstage.io/pipeline` label: marks the namespace healthy at the end, finds the
    /// previous healthy one on failure (continuations do not know the pipeline's name).
    #[serde(rename = "pl", default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
}

impl DeployState {
    pub fn from_value(v: serde_json::Value) -> Result<Self> {
        serde_json::from_value(v).map_err(|e| {
            Error::Configuration(format!(
                "continuationToken: deploy state unreadable ({e}); start a new run without it"
            ))
        })
    }

    fn to_value(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| Error::Internal(format!("deploy state: {e}")))
    }
}

/// What a deploy's first invocation needs besides the cluster: the interlock's reads of the
/// imported volume, and the run it checks the volume against.
#[derive(Clone, Copy)]
pub struct First<'a> {
    pub volumes: &'a dyn VolumeMarks,
    pub execution: &'a Execution,
}

/// One step of a deploy.
pub async fn deploy(
    client: &kube::Client,
    plan: &Plan,
    state: Option<DeployState>,
    now: Timestamp,
    first: First<'_>,
) -> Result<Outcome> {
    match state {
        None => start(client, plan, now, first).await,
        Some(s) => match advance(client, plan, &s, now).await {
            // The API server blinked: look again next time, until the phase's timeout.
            Err(e @ Error::Unavailable { .. }) if !timed_out(plan, &s, now) => {
                tracing::warn!(error = %e, "Kubernetes API unavailable; checking again next invocation");
                continue_with(plan, s.clone(), now, format!("{e}; checking again"))
            }
            Err(e) => Err(on_failure(client, plan, s.created, e, s.pipeline.as_deref(), now).await),
            Ok(o) => Ok(o),
        },
    }
}

/// Checks the imported volume (the interlock) and ownership, applies every object, and starts
/// waiting.
async fn start(
    client: &kube::Client,
    plan: &Plan,
    now: Timestamp,
    first: First<'_>,
) -> Result<Outcome> {
    let spec = &plan.spec;
    // The production interlock, before anything else is read or applied.
    let view = guard::ClusterView { client };
    let checked = guard::check(spec, first.execution, first.volumes, Some(view)).await?;
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let existing = api::get_opt(&ns_api, &spec.namespace).await?;
    let created = match &existing {
        None => true,
        Some(ns) => {
            ownership::check("Namespace", &ns.metadata, "deploy into")?;
            if ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating") {
                return Err(Error::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "namespace {} is being deleted (an earlier teardown or the TTL sweep); re-run when it is gone",
                        spec.namespace
                    ),
                    source: None,
                });
            }
            ownership::execution_of(&ns.metadata) == Some(spec.execution_label.as_str())
        }
    };
    // The same run again (a retry, a duplicate delivery): its namespace keeps the expiry the
    // first invocation set. A new run re-deploying into a reused namespace gets a new one.
    let kept_expiry = existing
        .as_ref()
        .filter(|_| created)
        .and_then(teardown::expires_at);
    let adjusted = match kept_expiry {
        Some(t) if t.to_string() != plan.expires_at => Some(plan.with_expiry(t)?),
        _ => None,
    };
    let plan = adjusted.as_ref().unwrap_or(plan);
    let claim_note = existing_claim(plan, checked.claim.as_ref());
    if let Some(pv) = &plan.rendered.persistent_volume {
        let api: Api<PersistentVolume> = Api::all(client.clone());
        let name = pv.metadata.name.as_deref().unwrap_or_default();
        if let Some(found) = api::get_opt(&api, name).await? {
            ownership::check("PersistentVolume", &found.metadata, "apply")?;
        }
    }
    let applied = match apply_objects(client, plan, existing.is_some()).await {
        Ok(a) => format!("{a}{claim_note}; {}", checked.note),
        Err(e) => {
            let pipeline = spec.pipeline_label.as_deref();
            return Err(on_failure(client, plan, created, e, pipeline, now).await);
        }
    };
    let state = DeployState {
        phase: Phase::Ready,
        since: now.as_second(),
        expires: plan
            .expires_at
            .parse::<Timestamp>()
            .map_or(0, |t| t.as_second()),
        created,
        pipeline: spec.pipeline_label.clone(),
    };
    Ok(Outcome::Continue {
        summary: format!(
            "applied {applied} in namespace {} (server-side apply as {}); waiting up to {} minutes for the {} {} to be ready",
            spec.namespace,
            spec.field_manager,
            spec.ready_timeout_minutes,
            spec.engine,
            spec.engine.kind()
        ),
        percent: 10,
        state: state.to_value()?,
    })
}

/// With `pvcName`: says how the existing PVC (read and checked by the interlock) will be
/// treated; empty for the other sources.
fn existing_claim(plan: &Plan, claim: Option<&PersistentVolumeClaim>) -> String {
    let VolumeSource::ExistingClaim { claim: name } = &plan.spec.volume else {
        return String::new();
    };
    match claim.is_some_and(|c| ownership::is_managed(&c.metadata)) {
        true => format!("; mounting the existing PVC {name} (snapstage's)"),
        false => format!(
            "; mounting the existing PVC {name} (not labelled {}={}: teardown will not delete this namespace)",
            crate::kube::labels::LABEL_MANAGED_BY,
            crate::kube::labels::MANAGED_BY
        ),
    }
}

/// Applies Namespace, Secret (only when new), PV, PVC, Service, StatefulSet; says what it did.
async fn apply_objects(
    client: &kube::Client,
    plan: &Plan,
    namespace_existed: bool,
) -> Result<String> {
    let spec = &plan.spec;
    let r = &plan.rendered;
    let manager = spec.field_manager.as_str();
    let ns = spec.namespace.as_str();
    let mut kinds: Vec<String> = vec!["Namespace".into()];
    api::apply(
        &Api::<Namespace>::all(client.clone()),
        &r.namespace,
        manager,
    )
    .await?;
    // Closed before anything runs in the namespace: the restored data is unmasked.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    for policy in &r.network.isolation {
        api::apply(&policies, policy, manager).await?;
        kinds.push(format!(
            "NetworkPolicy {}",
            policy.metadata.name.as_deref().unwrap_or_default()
        ));
    }

    let secret_note = match &r.secret {
        Some(rendered) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
            let kept = match namespace_existed {
                true => api::get_opt(&secrets, SECRET_NAME).await?,
                false => None,
            };
            match kept {
                Some(s) => {
                    credentials::check_existing(&s, ns)?;
                    "the existing Secret kept as it is"
                }
                None => {
                    let secret = Credentials::generate(&spec.database_user)?.into_secret(rendered);
                    api::apply(&secrets, &secret, manager).await?;
                    kinds.push("Secret".into());
                    "new credentials in the Secret"
                }
            }
        }
        None => "no credentials Secret: the application keeps its own users",
    };
    if let Some(pv) = &r.persistent_volume {
        api::apply(&Api::<PersistentVolume>::all(client.clone()), pv, manager).await?;
        kinds.push("PersistentVolume".into());
    }
    if let Some(claim) = &r.claim {
        api::apply(
            &Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
            claim,
            manager,
        )
        .await?;
        kinds.push("PersistentVolumeClaim".into());
    }
    match &r.workload {
        Workload::Builtin(b) => {
            api::apply(
                &Api::<Service>::namespaced(client.clone(), ns),
                &b.service,
                manager,
            )
            .await?;
            api::apply(
                &Api::<StatefulSet>::namespaced(client.clone(), ns),
                &b.stateful_set,
                manager,
            )
            .await?;
            kinds.extend(["Service".into(), "StatefulSet".into()]);
        }
        Workload::Template(objects) => {
            for o in objects {
                o.apply(client, manager).await?;
                kinds.push(format!("{} {}", o.kind(), o.name()));
            }
        }
    }
    Ok(format!("{} ({secret_note})", kinds.join(", ")))
}

/// Seconds the current phase may last.
fn phase_limit(plan: &Plan, s: &DeployState) -> i64 {
    let spec = &plan.spec;
    let job_minutes = |kind: JobKind| kind.timeout_minutes(spec);
    match s.phase {
        Phase::Ready => i64::from(spec.ready_timeout_minutes) * 60,
        Phase::Masking => i64::from(job_minutes(JobKind::Masking)) * 60 + JOB_GRACE_SECONDS,
        Phase::Migration => i64::from(job_minutes(JobKind::Migration)) * 60 + JOB_GRACE_SECONDS,
    }
}

fn timed_out(plan: &Plan, s: &DeployState, now: Timestamp) -> bool {
    now.as_second() - s.since > phase_limit(plan, s)
}

fn minutes(seconds: i64) -> String {
    format!("{}m{:02}s", seconds.max(0) / 60, seconds.max(0) % 60)
}

fn continue_with(plan: &Plan, s: DeployState, now: Timestamp, why: String) -> Result<Outcome> {
    let elapsed = now.as_second() - s.since;
    let limit = phase_limit(plan, &s).max(1);
    let (percent, doing) = match s.phase {
        Phase::Ready => (
            10 + u8::try_from((elapsed.clamp(0, limit) * 50) / limit).unwrap_or(50),
            format!("waiting for the staging {}", plan.spec.engine.kind()),
        ),
        Phase::Masking => (65, "masking the staging data".into()),
        Phase::Migration => (80, "checking the migrations".into()),
    };
    Ok(Outcome::Continue {
        summary: format!(
            "{doing} in {} ({} of {}): {why}",
            plan.spec.namespace,
            minutes(elapsed),
            minutes(phase_limit(plan, &s))
        ),
        percent,
        state: s.to_value()?,
    })
}

fn failed(message: String) -> Error {
    Error::Backend {
        backend: BACKEND,
        message,
        source: None,
    }
}

async fn advance(
    client: &kube::Client,
    plan: &Plan,
    s: &DeployState,
    now: Timestamp,
) -> Result<Outcome> {
    let ns = &plan.spec.namespace;
    match s.phase {
        Phase::Ready => match check_ready(client, plan).await? {
            Health::Ready => next(client, plan, s, now, None).await,
            Health::Failed(why) => Err(failed(format!(
                "the staging {} in {ns} failed: {why}",
                plan.spec.engine.kind()
            ))),
            Health::Waiting(why) if timed_out(plan, s, now) => Err(failed(format!(
                "the staging {} in {ns} was not ready after {} minutes (readyTimeoutMinutes): {why}",
                plan.spec.engine.kind(),
                plan.spec.ready_timeout_minutes
            ))),
            Health::Waiting(why) => continue_with(plan, s.clone(), now, why),
        },
        Phase::Masking => check_job(client, plan, s, now, JobKind::Masking).await,
        Phase::Migration => check_job(client, plan, s, now, JobKind::Migration).await,
    }
}

/// PVC, StatefulSet and pod, with the PVC's warning events while it is Pending.
async fn check_ready(client: &kube::Client, plan: &Plan) -> Result<Health> {
    let ns = plan.spec.namespace.as_str();
    let claim_name = plan.rendered.claim_name.as_str();
    let pvc = api::get_opt(
        &Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
        claim_name,
    )
    .await?
    .ok_or_else(|| {
        failed(format!(
            "PVC {ns}/{claim_name} is gone (deleted while waiting)"
        ))
    })?;
    // Each workload's own health, and its pods' (failed at once on a pull/crash failure).
    let (workloads, pods) = match &plan.rendered.workload {
        Workload::Builtin(_) => builtin_health(client, ns).await?,
        Workload::Template(objects) => template_health(client, ns, objects).await?,
    };
    let mut claim = readiness::claim_health(&pvc);
    for h in std::iter::once(&claim).chain(&pods) {
        if let Health::Failed(_) = h {
            return Ok(h.clone());
        }
    }
    if let Health::Waiting(why) = &claim {
        let events = api::list(
            &Api::<Event>::namespaced(client.clone(), ns),
            &ListParams::default().fields(&format!(
                "involvedObject.kind=PersistentVolumeClaim,involvedObject.name={claim_name}"
            )),
        )
        .await?;
        if let Some(w) = readiness::warnings(&events, 2) {
            claim = Health::Waiting(format!("{why} ({w})"));
        }
    }
    let waiting: Vec<String> = std::iter::once(claim)
        .chain(workloads)
        .chain(pods)
        .filter_map(|h| match h {
            Health::Waiting(w) | Health::Failed(w) => Some(w),
            Health::Ready => None,
        })
        .collect();
    Ok(if waiting.is_empty() {
        Health::Ready
    } else {
        Health::Waiting(waiting.join("; "))
    })
}

/// snapstage's StatefulSet and its pod `staging-db-0`.
async fn builtin_health(client: &kube::Client, ns: &str) -> Result<(Vec<Health>, Vec<Health>)> {
    let sts = api::get_opt(
        &Api::<StatefulSet>::namespaced(client.clone(), ns),
        STATEFULSET_NAME,
    )
    .await?
    .ok_or_else(|| {
        failed(format!(
            "StatefulSet {ns}/{STATEFULSET_NAME} is gone (deleted while waiting)"
        ))
    })?;
    let pod_name = format!("{STATEFULSET_NAME}-0");
    let pod = api::get_opt(&Api::<Pod>::namespaced(client.clone(), ns), &pod_name).await?;
    let pod_health = match &pod {
        Some(p) => readiness::pod_health(p),
        None => Health::Waiting(
            no_pods(client, ns, "StatefulSet", STATEFULSET_NAME)
                .await?
                .unwrap_or_else(|| format!("pod {pod_name} is not created yet")),
        ),
    };
    Ok((vec![readiness::stateful_set_health(&sts)], vec![pod_health]))
}

/// Why a workload has no pods, from its controller's Warning events: admission refusing the pod
/// (PodSecurity, quota, a webhook) is reported as `FailedCreate` on the workload, not on any pod.
/// A Deployment's pods are its ReplicaSet's, whose events are not looked up here.
async fn no_pods(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<Option<String>> {
    let events = api::list(
        &Api::<Event>::namespaced(client.clone(), ns),
        &ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        )),
    )
    .await?;
    Ok(readiness::warnings(&events, 1).map(|w| format!("{kind} {name} has no pods: {w}")))
}

/// Every StatefulSet and Deployment of a template, and the pods their selectors match.
async fn template_health(
    client: &kube::Client,
    ns: &str,
    objects: &[TemplateObject],
) -> Result<(Vec<Health>, Vec<Health>)> {
    let (mut workloads, mut pods) = (Vec::new(), Vec::new());
    for o in objects {
        let Some((_, selector)) = o.workload() else {
            continue;
        };
        let name = o.name();
        let gone = || {
            failed(format!(
                "{} {ns}/{name} is gone (deleted while waiting)",
                o.kind()
            ))
        };
        workloads.push(match o {
            TemplateObject::StatefulSet(_) => readiness::stateful_set_health(
                &api::get_opt(&Api::<StatefulSet>::namespaced(client.clone(), ns), name)
                    .await?
                    .ok_or_else(gone)?,
            ),
            _ => readiness::deployment_health(
                &api::get_opt(&Api::<Deployment>::namespaced(client.clone(), ns), name)
                    .await?
                    .ok_or_else(gone)?,
            ),
        });
        let labels: Vec<String> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let found = api::list(
            &Api::<Pod>::namespaced(client.clone(), ns),
            &ListParams::default().labels(&labels.join(",")),
        )
        .await?;
        if found.is_empty() {
            pods.push(Health::Waiting(
                no_pods(client, ns, o.kind(), name)
                    .await?
                    .unwrap_or_else(|| format!("{} {name} has no pods yet", o.kind())),
            ));
        }
        pods.extend(found.iter().map(readiness::pod_health));
    }
    Ok((workloads, pods))
}

/// The Job to run after `from`, if any.
fn job_after(plan: &Plan, from: Phase) -> Option<JobKind> {
    let spec = &plan.spec;
    let masking = spec.masking.is_some().then_some(JobKind::Masking);
    let migration = spec.migration.is_some().then_some(JobKind::Migration);
    match from {
        Phase::Ready => masking.or(migration),
        Phase::Masking => migration,
        Phase::Migration => None,
    }
}

/// Starts the next Job, or finishes.
async fn next(
    client: &kube::Client,
    plan: &Plan,
    s: &DeployState,
    now: Timestamp,
    migration: Option<MigrationResult>,
) -> Result<Outcome> {
    // Masking succeeded (or none is configured): the database may be reached now.
    let opened = match (s.phase, plan.spec.masking.is_some()) {
        (Phase::Masking, _) | (Phase::Ready, false) => open_access(client, plan).await?,
        _ => None,
    };
    let Some(kind) = job_after(plan, s.phase) else {
        return finish(client, plan, s, now, migration).await;
    };
    let job = jobs::render(&plan.spec, kind)
        .ok_or_else(|| Error::Internal(format!("the {} Job is not configured", kind.as_str())))?;
    let api: Api<Job> = Api::namespaced(client.clone(), &plan.spec.namespace);
    api::apply(&api, &job, &plan.spec.field_manager).await?;
    let state = DeployState {
        phase: match kind {
            JobKind::Masking => Phase::Masking,
            JobKind::Migration => Phase::Migration,
        },
        since: now.as_second(),
        ..s.clone()
    };
    let why = match s.phase {
        Phase::Ready if plan.spec.reset_credentials => "the database is ready, its password reset",
        Phase::Ready if plan.spec.engine.is_app() => "the application is ready",
        Phase::Ready => "the database is ready",
        _ => "masking succeeded",
    };
    let opened = opened.map(|o| format!("; {o}")).unwrap_or_default();
    continue_with(
        plan,
        state,
        now,
        format!("{why}{opened}; started Job {}", kind.job_name()),
    )
}

/// Applies `staging-db-access`: what it opened, or `None` without NetworkPolicies.
async fn open_access(client: &kube::Client, plan: &Plan) -> Result<Option<String>> {
    let Some(policy) = &plan.rendered.network.access else {
        return Ok(None);
    };
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &plan.spec.namespace);
    api::apply(&api, policy, &plan.spec.field_manager).await?;
    Ok(Some(format!(
        "NetworkPolicy {} opened the {} {}",
        network::ACCESS,
        plan.spec.engine.kind(),
        plan.spec.network_policy.describe_access()
    )))
}

/// What the migration check said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationResult {
    pub succeeded: bool,
    pub detail: String,
}

async fn check_job(
    client: &kube::Client,
    plan: &Plan,
    s: &DeployState,
    now: Timestamp,
    kind: JobKind,
) -> Result<Outcome> {
    let ns = plan.spec.namespace.as_str();
    let name = kind.job_name();
    let job = api::get_opt(&Api::<Job>::namespaced(client.clone(), ns), &name)
        .await?
        .ok_or_else(|| failed(format!("Job {ns}/{name} is gone (deleted while it ran)")))?;
    let pods = || async {
        api::list(
            &Api::<Pod>::namespaced(client.clone(), ns),
            &ListParams::default().labels(&format!("{}={name}", jobs::LABEL_JOB_NAME)),
        )
        .await
    };
    let failure = match readiness::job_health(&job) {
        JobHealth::Succeeded => {
            let result = (kind == JobKind::Migration).then(|| MigrationResult {
                succeeded: true,
                detail: format!("Job {name} succeeded"),
            });
            return next(client, plan, s, now, result).await;
        }
        JobHealth::Failed(reason) => {
            let exit = readiness::last_exit(&pods().await?)
                .map(|e| format!("; {e}"))
                .unwrap_or_default();
            format!("{reason}{exit}")
        }
        JobHealth::Running => match readiness::pods_failure(&pods().await?) {
            Some(f) => f,
            None if timed_out(plan, s, now) => format!(
                "did not finish in {} minutes",
                kind.timeout_minutes(&plan.spec)
            ),
            None => {
                return continue_with(plan, s.clone(), now, format!("Job {name} is running"));
            }
        },
    };
    let allow = kind.params(&plan.spec).is_some_and(|p| p.allow_failure);
    match kind {
        JobKind::Migration if allow => {
            let result = MigrationResult {
                succeeded: false,
                detail: format!("Job {name} failed: {failure}"),
            };
            finish(client, plan, s, now, Some(result)).await
        }
        JobKind::Migration => Err(failed(format!(
            "the migration check Job {ns}/{name} failed: {failure} (set migration.allowFailure to report it without failing)"
        ))),
        JobKind::Masking => Err(failed(format!(
            "the masking Job {ns}/{name} failed: {failure}; the staging database is not published"
        ))),
    }
}

/// Publishes: marks the namespace healthy for its pipeline (when known), then the outputs.
async fn finish(
    client: &kube::Client,
    plan: &Plan,
    s: &DeployState,
    now: Timestamp,
    migration: Option<MigrationResult>,
) -> Result<Outcome> {
    let outcome = done(plan, s, migration);
    if let (Some(_), Outcome::Done { outputs, .. }) = (&s.pipeline, &outcome) {
        // The database is healthy whatever happens to the mark: a failed mark only means a
        // later rollback cannot find this one.
        if let Err(e) = rollback::mark_healthy(client, plan, outputs, now).await {
            tracing::warn!(error = %e, namespace = %plan.spec.namespace, "could not mark the namespace healthy");
        }
    }
    Ok(outcome)
}

/// The outputs once everything succeeded.
fn done(plan: &Plan, s: &DeployState, migration: Option<MigrationResult>) -> Outcome {
    let spec = &plan.spec;
    let expires_at = Timestamp::from_second(s.expires)
        .map_or_else(|_| plan.expires_at.clone(), |t| t.to_string());
    let mut outputs: BTreeMap<String, String> = plan.outputs();
    outputs.insert("Mode".into(), MODE_APPLIED.into());
    outputs.insert("ExpiresAt".into(), expires_at.clone());
    let mut summary = format!(
        "staging {} ready: {} in namespace {} (from {} {}; expires {expires_at})",
        spec.engine,
        plan.endpoint(),
        spec.namespace,
        spec.volume.backend().as_str(),
        spec.volume.source_name(),
    );
    if spec.reset_credentials {
        summary.push_str(&format!(
            "; password of database user {} reset to the generated one in Secret {SECRET_NAME} before the server started (production's passwords no longer log in)",
            spec.database_user
        ));
        outputs.insert("CredentialsReset".into(), "true".into());
    } else {
        outputs.insert("CredentialsReset".into(), "false".into());
    }
    if spec.masking.is_some() {
        summary.push_str("; data masked");
    }
    let access = match spec.network_policy.enabled {
        true => {
            summary.push_str(&format!(
                "; reachable {} (NetworkPolicy {})",
                spec.network_policy.describe_access(),
                network::ACCESS
            ));
            "networkpolicy"
        }
        false => "cluster-default",
    };
    outputs.insert("NetworkAccess".into(), access.into());
    if let Some(m) = migration {
        let result = if m.succeeded { "succeeded" } else { "failed" };
        outputs.insert("MigrationResult".into(), result.into());
        summary.push_str(&format!("; migration check {result}: {}", m.detail));
    }
    Outcome::Done {
        summary: crate::job::codepipeline::truncate(&summary, 2000),
        outputs,
    }
}

/// Applies `onFailure` and says what happened to the namespace in the error. `pipeline` is
/// the `snapstage.io/pipeline` label, for a rollback.
async fn on_failure(
    client: &kube::Client,
    plan: &Plan,
    created: bool,
    err: Error,
    pipeline: Option<&str>,
    now: Timestamp,
) -> Error {
    let ns = &plan.spec.namespace;
    if plan.spec.on_failure == OnFailure::Rollback {
        let removed = match created {
            false => format!("namespace {ns} existed before this run and is left as it is"),
            true => match teardown::remove_by_name(client, ns).await {
                Ok(Some(r)) => format!("{} (onFailure: rollback)", r.describe(false)),
                Ok(None) => format!("namespace {ns} was not created"),
                Err(e) => {
                    format!("deleting namespace {ns} failed too ({e}); the TTL sweep removes it")
                }
            },
        };
        let previous = match pipeline {
            None => "no pipeline is known (run it in CodePipeline or set pipeline), so there is no previous staging database to roll back to".to_string(),
            Some(p) => match rollback::previous_healthy(client, p, ns, now).await {
                Ok(Some(prev)) => prev.describe(),
                Ok(None) => "no previous healthy staging database of this pipeline stands: nothing to roll back to".to_string(),
                Err(e) => format!("looking for the previous healthy staging database failed ({e})"),
            },
        };
        return with_note(err, &format!("{removed}. {previous}"));
    }
    let note = match (plan.spec.on_failure, created) {
        (OnFailure::Rollback, _) => String::new(),
        (OnFailure::Keep, _) => format!(
            "namespace {ns} is kept for debugging (onFailure: keep); it expires at {}",
            plan.expires_at
        ),
        (OnFailure::Teardown, false) => {
            format!("namespace {ns} existed before this run and is left as it is")
        }
        (OnFailure::Teardown, true) => match teardown::remove_by_name(client, ns).await {
            Ok(Some(r)) => format!("{} (onFailure: teardown)", r.describe(false)),
            Ok(None) => format!("namespace {ns} was not created"),
            Err(e) => format!("deleting namespace {ns} failed too ({e}); the TTL sweep removes it"),
        },
    };
    with_note(err, &note)
}

/// The same error, its message followed by `note`.
fn with_note(err: Error, note: &str) -> Error {
    let add = |m: String| format!("{m}. {note}");
    match err {
        Error::Event(m) => Error::Event(add(m)),
        Error::Parameter { field, message } => Error::Parameter {
            field,
            message: add(message),
        },
        Error::Configuration(m) => Error::Configuration(add(m)),
        Error::Permission {
            backend,
            message,
            source,
        } => Error::Permission {
            backend,
            message: add(message),
            source,
        },
        Error::NotFound {
            backend,
            message,
            source,
        } => Error::NotFound {
            backend,
            message: add(message),
            source,
        },
        Error::Refused(m) => Error::Refused(add(m)),
        Error::Unavailable {
            backend,
            message,
            source,
        } => Error::Unavailable {
            backend,
            message: add(message),
            source,
        },
        Error::Backend {
            backend,
            message,
            source,
        } => Error::Backend {
            backend,
            message: add(message),
            source,
        },
        Error::Internal(m) => Error::Internal(add(m)),
    }
}
