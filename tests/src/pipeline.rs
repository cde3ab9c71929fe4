//! The pipeline driver: runs Invoke actions in order the way CodePipeline does.
//!
//! For each action: resolve `#{Namespace.Variable}` in its UserParameters, create a job in the
//! job service, invoke the function with the job event, and read the job's one result back:
//! - success with a continuation token → a new job for the same action with
//!   `data.continuationToken` set, invoked again (at most [`Options::max_rounds`] jobs);
//! - success → its output variables are stored under the action's namespace;
//! - failure, no result at all, or an unresolvable variable → the pipeline stops, Failed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::Error;
use crate::event::{JobEventSpec, job_event};
use crate::invoker::Invoker;
use crate::jobservice::{JobOutcome, JobService, JobSpec};
use crate::timeline::{Entry, Status, Timeline};

/// One Invoke action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub stage: String,
    pub name: String,
    /// Its output variables are read downstream as `#{<namespace>.<Variable>}`.
    pub namespace: String,
    /// The function's binary name (and Lambda function name).
    pub function: String,
    /// The UserParameters template.
    pub user_parameters: String,
}

impl Action {
    /// An action in a stage of the same name.
    pub fn new(name: &str, namespace: &str, function: &str, user_parameters: &str) -> Self {
        Self {
            stage: name.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            function: function.to_string(),
            user_parameters: user_parameters.to_string(),
        }
    }
}

/// A pipeline: actions in run order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub name: String,
    pub actions: Vec<Action>,
}

/// How the driver paces an action.
#[derive(Debug, Clone)]
pub struct Options {
    /// Jobs per action before it fails as stuck (CodePipeline's own cap is time-based).
    pub max_rounds: u32,
    /// Wait between a continuation and the next job (CodePipeline waits; local backends need not).
    pub poll_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_rounds: 50,
            poll_delay: Duration::ZERO,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed { action: String, reason: String },
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Run {
    pub pipeline: String,
    /// The pipeline execution id (`#{codepipeline.PipelineExecutionId}`).
    pub execution_id: String,
    pub status: RunStatus,
    pub timeline: Timeline,
    /// Output variables by namespace.
    pub variables: BTreeMap<String, BTreeMap<String, String>>,
    /// Each action's jobs, in order.
    pub jobs: BTreeMap<String, Vec<String>>,
    pub duration: Duration,
}

impl Run {
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }

    /// `#{Namespace.Variable}` after the run.
    pub fn variable(&self, namespace: &str, key: &str) -> Option<&str> {
        self.variables
            .get(namespace)
            .and_then(|v| v.get(key))
            .map(String::as_str)
    }

    /// One line: `pipeline Succeeded in 4 actions (5 invocations, 3.2s)`.
    pub fn summary_line(&self, total_actions: usize) -> String {
        let actions = self.jobs.values().filter(|j| !j.is_empty()).count();
        let invocations = self.timeline.entries.len();
        let secs = self.duration.as_secs_f64();
        match &self.status {
            RunStatus::Succeeded => format!(
                "pipeline {} Succeeded in {actions} actions ({invocations} invocations, {secs:.1}s)",
                self.pipeline
            ),
            RunStatus::Failed { action, reason } => format!(
                "pipeline {} Failed at action {action} ({actions} of {total_actions} actions ran, {invocations} invocations, {secs:.1}s): {reason}",
                self.pipeline
            ),
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Succeeded => f.write_str("Succeeded"),
            Self::Failed { action, reason } => write!(f, "Failed at {action}: {reason}"),
        }
    }
}

/// Runs `pipeline` against `jobs` with `invoker`. `Err` only when the local setup is broken
/// (a binary missing, a process that cannot start); what CodePipeline would show as a failed
/// action is a `Run` with `RunStatus::Failed`.
pub async fn run<I: Invoker>(
    pipeline: &Pipeline,
    jobs: &JobService,
    invoker: &I,
    options: &Options,
) -> Result<Run, Error> {
    let started = Instant::now();
    let execution_id = crate::jobservice::new_execution_id();
    let mut run = Run {
        pipeline: pipeline.name.clone(),
        execution_id: execution_id.clone(),
        status: RunStatus::Succeeded,
        timeline: Timeline::default(),
        variables: BTreeMap::new(),
        jobs: BTreeMap::new(),
        duration: Duration::ZERO,
    };
    for action in &pipeline.actions {
        if let Err(reason) = run_action(pipeline, action, jobs, invoker, options, &mut run).await? {
            run.status = RunStatus::Failed {
                action: action.name.clone(),
                reason,
            };
            break;
        }
    }
    run.duration = started.elapsed();
    Ok(run)
}

/// `Ok(Err(reason))` when the action failed.
async fn run_action<I: Invoker>(
    pipeline: &Pipeline,
    action: &Action,
    jobs: &JobService,
    invoker: &I,
    options: &Options,
    run: &mut Run,
) -> Result<Result<(), String>, Error> {
    run.jobs.entry(action.name.clone()).or_default();
    let user_parameters = match resolve(&action.user_parameters, &run.variables, &run.execution_id)
    {
        Ok(p) => p,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut token: Option<String> = None;
    for round in 1..=options.max_rounds {
        if round > 1 && !options.poll_delay.is_zero() {
            tokio::time::sleep(options.poll_delay).await;
        }
        let job_id = jobs.register_job(JobSpec {
            pipeline_name: pipeline.name.clone(),
            stage: action.stage.clone(),
            action: action.name.clone(),
            execution_id: run.execution_id.clone(),
            function_name: Some(action.function.clone()),
            user_parameters: Some(user_parameters.clone()),
            continuation_token: token.clone(),
        });
        run.jobs
            .entry(action.name.clone())
            .or_default()
            .push(job_id.clone());
        let event = job_event(&JobEventSpec {
            job_id: &job_id,
            function_name: &action.function,
            user_parameters: &user_parameters,
            continuation_token: token.as_deref(),
        });
        let t0 = Instant::now();
        let invoked = invoker.invoke(&action.function, &event).await?;
        let duration = t0.elapsed();
        let outcome = jobs.result_for(&job_id);
        let mut entry = Entry {
            action: action.name.clone(),
            function: action.function.clone(),
            job_id: job_id.clone(),
            round,
            status: Status::Failed,
            summary: String::new(),
            duration,
            variables: BTreeMap::new(),
        };
        let verdict = match outcome {
            None => {
                entry.summary = format!("no result for the job ({})", invoked.status);
                Err(format!(
                    "{} sent no PutJobSuccessResult/PutJobFailureResult for job {job_id}: in CodePipeline the action would hang ({}; {})",
                    action.function,
                    invoked.status,
                    last_line(&invoked.logs)
                ))
            }
            Some(o) if !invoked.ok => {
                entry.summary = o.summary();
                Err(format!(
                    "{} reported {} but the invocation failed ({}): {}",
                    action.function,
                    o.status(),
                    invoked.status,
                    last_line(&invoked.logs)
                ))
            }
            Some(JobOutcome::Failed {
                failure_type,
                message,
                ..
            }) => {
                entry.summary = format!("{failure_type}: {message}");
                Err(format!("{failure_type}: {message}"))
            }
            Some(JobOutcome::Succeeded {
                summary,
                continuation_token: Some(t),
                ..
            }) => {
                entry.status = Status::InProgress;
                entry.summary = summary.unwrap_or_default();
                token = Some(t);
                Ok(false)
            }
            Some(JobOutcome::Succeeded {
                summary,
                output_variables,
                ..
            }) => {
                entry.status = Status::Succeeded;
                entry.summary = summary.unwrap_or_default();
                entry.variables = output_variables.clone();
                run.variables
                    .insert(action.namespace.clone(), output_variables);
                Ok(true)
            }
        };
        run.timeline.entries.push(entry);
        match verdict {
            Ok(true) => return Ok(Ok(())),
            Ok(false) => continue,
            Err(reason) => return Ok(Err(reason)),
        }
    }
    Ok(Err(format!(
        "still in progress after {} jobs (the driver's bound)",
        options.max_rounds
    )))
}

fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
}

/// Resolves `#{Namespace.Variable}` references like CodePipeline: `#{codepipeline.
/// PipelineExecutionId}` is built in; an unknown namespace or variable fails the action.
pub fn resolve(
    template: &str,
    variables: &BTreeMap<String, BTreeMap<String, String>>,
    execution_id: &str,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("#{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "unterminated variable reference {:?} in UserParameters",
                &rest[start..]
            ));
        };
        let reference = &after[..end];
        let value = match reference.split_once('.') {
            Some(("codepipeline", "PipelineExecutionId")) => Some(execution_id),
            Some((ns, key)) => variables
                .get(ns)
                .and_then(|v| v.get(key))
                .map(String::as_str),
            None => None,
        };
        match value {
            Some(v) => out.push_str(v),
            None => {
                let known: Vec<String> = variables
                    .iter()
                    .flat_map(|(ns, v)| v.keys().map(move |k| format!("{ns}.{k}")))
                    .collect();
                return Err(format!(
                    "UserParameters references #{{{reference}}}, which no earlier action produced (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, BTreeMap<String, String>> {
        let mut v = BTreeMap::new();
        v.insert(
            "Snapshot".to_string(),
            BTreeMap::from([("SnapshotId".to_string(), "snap-1".to_string())]),
        );
        v
    }

    #[test]
    fn resolves_variables_and_the_execution_id() {
        let r = resolve(
            r##"{"snapshotId": "#{Snapshot.SnapshotId}", "run": "#{codepipeline.PipelineExecutionId}"}"##,
            &vars(),
            "exec-1",
        )
        .unwrap();
        assert_eq!(r, r#"{"snapshotId": "snap-1", "run": "exec-1"}"#);
        assert_eq!(resolve("no refs", &vars(), "e").unwrap(), "no refs");
    }

    #[test]
    fn unknown_references_name_themselves() {
        let e = resolve("#{Restore.VolumeId}", &vars(), "e").unwrap_err();
        assert!(e.contains("#{Restore.VolumeId}"), "{e}");
        assert!(e.contains("Snapshot.SnapshotId"), "{e}");
        let e = resolve("#{Snapshot.Nope}", &vars(), "e").unwrap_err();
        assert!(e.contains("#{Snapshot.Nope}"), "{e}");
        assert!(resolve("#{Snapshot.SnapshotId", &vars(), "e").is_err());
        assert!(resolve("#{NoDot}", &vars(), "e").is_err());
    }
}
