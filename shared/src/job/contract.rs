//! The job contract: every invocation that carries a job id ends with exactly one
//! PutJobSuccessResult or PutJobFailureResult — whatever the payload, the parameters, the backend,
//! a panic, or the deadline do.
//!
//! A function is a [`Function`]: one *step* of work over typed parameters and an optional resume
//! state. [`Contract::handle`] turns a raw payload into that step, runs it under the deadline in
//! its own task (so a panic is caught), and turns what it returns into one [`JobResult`]:
//! - `Outcome::Done` → success with output variables;
//! - `Outcome::Continue` → "in progress" with a versioned continuation token;
//! - an error → a typed failure; a panic → JobFailed;
//! - the deadline → "in progress" with the state the step started from (steps are idempotent), and
//!   JobFailed after [`MAX_STALLS`] invocations in a row that made no progress.
//!
//! A Distributed Map batch (`{"Items", "BatchInput"}`, see [`crate::job::invocation`]) has no
//! caller that could continue it: "in progress" becomes a SystemUnavailable failure (Step
//! Functions' Retry invokes the same batch again, which resumes from the step's checkpoint), and
//! a success answers with the output variables as one flat JSON object ([`batch_answer`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::job::codecommit::TriggerFilter;
use crate::job::codepipeline::{
    Artifact, ArtifactCredentials, EncryptionKey, JobReporter, JobResult, validate_output_variables,
};
use crate::job::continuation::Continuation;
use crate::job::invocation::{self, Invocation};
use crate::job::params::{self, Layer};

/// Invocations in a row that may hit the deadline before the job fails.
pub const MAX_STALLS: u32 = 3;

/// The least time given to reporting a job result, even when the deadline has passed.
pub const MIN_REPORT_TIME: Duration = Duration::from_secs(2);

/// One function of snapstage.
pub trait Function: Send + Sync + 'static {
    /// The function's name (`snapshot-production`), also the issuer of its continuation tokens.
    const NAME: &'static str;
    /// Typed parameters; use `#[serde(deny_unknown_fields, rename_all = "camelCase")]`.
    type Params: DeserializeOwned + Send + 'static;

    /// One step of work. Must be idempotent for the same `execution.key` and `state`.
    fn step(&self, step: Step<Self::Params>) -> impl Future<Output = Result<Outcome>> + Send;
}

/// What a step is given.
#[derive(Debug)]
pub struct Step<P> {
    pub params: P,
    pub execution: Execution,
    /// The state the previous step returned with `Outcome::Continue`, if any.
    pub state: Option<Value>,
    pub deadline: Deadline,
    /// Present for CodePipeline jobs.
    pub artifacts: Option<JobArtifacts>,
}

/// Identifies the run a step belongs to; resources are tagged with `key` so a retry finds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// Stable across retries, duplicates and continuations of the same run.
    pub key: String,
    /// `codepipeline`, `codecommit` or `direct`.
    pub origin: String,
    pub pipeline: Option<String>,
    pub commit: Option<String>,
}

/// A CodePipeline job's artifacts, with the credentials to read/write them.
#[derive(Debug, Clone)]
pub struct JobArtifacts {
    pub inputs: Vec<Artifact>,
    pub outputs: Vec<Artifact>,
    pub credentials: Option<ArtifactCredentials>,
    pub encryption_key: Option<EncryptionKey>,
}

/// When the step must have answered.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub tokio::time::Instant);

impl Deadline {
    pub fn remaining(&self) -> Duration {
        self.0
            .saturating_duration_since(tokio::time::Instant::now())
    }
    /// True when less than `margin` is left: time to checkpoint and return `Continue`.
    pub fn near(&self, margin: Duration) -> bool {
        self.remaining() < margin
    }
}

/// What a step ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done {
        summary: String,
        outputs: BTreeMap<String, String>,
    },
    Continue {
        summary: String,
        percent: u8,
        state: Value,
    },
}

/// What the contract did with one payload.
#[derive(Debug)]
pub enum Handled {
    /// A CodePipeline job: its one result, and whether it reached CodePipeline.
    Job {
        job_id: String,
        result: JobResult,
        delivered: Result<()>,
    },
    /// A direct or CodeCommit-triggered invocation: the result goes back to the caller.
    Direct {
        execution: String,
        result: JobResult,
        /// A Distributed Map batch: answered with [`batch_answer`].
        batch: bool,
    },
    /// A recognised event that starts nothing.
    Ignored { reason: String },
    /// No job id and not an acceptable payload.
    Rejected(Error),
}

impl Handled {
    /// The JSON the Lambda response / CLI prints. Never includes the event.
    pub fn to_json(&self, function: &str) -> Value {
        let mut v = match self {
            Handled::Job {
                job_id,
                result,
                delivered,
            } => {
                let mut v = serde_json::to_value(result).unwrap_or(Value::Null);
                v["jobId"] = Value::from(job_id.as_str());
                v["reportedToCodePipeline"] = Value::from(delivered.is_ok());
                if let Err(e) = delivered {
                    v["reportError"] = Value::from(e.to_string());
                }
                v
            }
            Handled::Direct {
                execution,
                result:
                    JobResult::Succeeded {
                        summary,
                        output_variables,
                        ..
                    },
                batch: true,
            } => batch_answer(execution, summary, output_variables),
            Handled::Direct {
                execution, result, ..
            } => {
                let mut v = serde_json::to_value(result).unwrap_or(Value::Null);
                v["executionId"] = Value::from(execution.as_str());
                v
            }
            Handled::Ignored { reason } => {
                serde_json::json!({"status": "Ignored", "reason": reason})
            }
            Handled::Rejected(e) => serde_json::json!({
                "status": "Rejected", "failureType": e.failure_kind().as_str(), "message": e.to_string()
            }),
        };
        v["function"] = Value::from(function);
        v
    }
}

/// A handled payload with what the metrics need to know about it ([`crate::job::metrics`]).
#[derive(Debug)]
pub struct Measured {
    pub handled: Handled,
    /// The invocation's wall time, the result's delivery to CodePipeline included.
    pub step: Duration,
    /// When the run's first invocation started (milliseconds since the epoch): this invocation's
    /// start for a new run, the continuation token's for a resumed one; `None` when the token
    /// predates it or could not be read.
    pub run_started_ms: Option<u64>,
}

/// Facts about the invocation that do not come from the payload.
#[derive(Debug, Clone)]
pub struct InvocationMeta {
    /// Lambda's request id (stable across Lambda's async retries), or a fresh id in CLI mode.
    pub request_id: String,
    /// Lambda's deadline, or the CLI's step budget.
    pub deadline: SystemTime,
}

/// Configuration read once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub defaults: Layer,
    pub trigger_filter: TriggerFilter,
    /// Time kept back before the Lambda deadline to answer CodePipeline.
    pub safety_margin: Duration,
}

impl Settings {
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let margin_ms = match get("SNAPSTAGE_DEADLINE_MARGIN_MS") {
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                Error::Configuration(format!(
                    "SNAPSTAGE_DEADLINE_MARGIN_MS: expected milliseconds, got {v:?}"
                ))
            })?,
            None => 10_000,
        };
        Ok(Self {
            defaults: params::env_defaults(&get)?,
            trigger_filter: TriggerFilter::from_env(&get),
            safety_margin: Duration::from_millis(margin_ms),
        })
    }
}

/// Runs functions under the contract.
pub struct Contract<F, R> {
    function: Arc<F>,
    reporter: R,
    /// `Err` when the environment was unusable: every job still gets a ConfigurationError result.
    settings: std::result::Result<Settings, String>,
}

impl<F: Function, R: JobReporter> Contract<F, R> {
    pub fn new(function: F, reporter: R, settings: Result<Settings>) -> Self {
        Self {
            function: Arc::new(function),
            reporter,
            settings: settings.map_err(|e| e.to_string()),
        }
    }

    /// Handles one payload. Never panics; a payload with a job id always yields `Handled::Job`.
    pub async fn handle(&self, raw: Value, meta: InvocationMeta) -> Handled {
        self.handle_measured(raw, meta).await.handled
    }

    /// [`Contract::handle`], timed, with the run's start.
    pub async fn handle_measured(&self, raw: Value, meta: InvocationMeta) -> Measured {
        let clock = std::time::Instant::now();
        let mut run_started_ms = Some(epoch_ms(SystemTime::now()));
        let handled = self.handle_inner(raw, meta, &mut run_started_ms).await;
        Measured {
            handled,
            step: clock.elapsed(),
            run_started_ms,
        }
    }

    async fn handle_inner(
        &self,
        raw: Value,
        meta: InvocationMeta,
        run_started_ms: &mut Option<u64>,
    ) -> Handled {
        let settings = match &self.settings {
            Ok(s) => s.clone(),
            Err(e) => {
                let err = Error::Configuration(e.clone());
                return match invocation::job_id(&raw) {
                    Some(id) => {
                        self.finish_job(id.to_string(), JobResult::failed(&err, id), meta.deadline)
                            .await
                    }
                    None => Handled::Rejected(err),
                };
            }
        };
        let filter = settings.trigger_filter.clone();
        let deadline = deadline_from(meta.deadline, settings.safety_margin);

        if let Some(job_id) = invocation::job_id(&raw).map(str::to_string) {
            let result = self
                .run_job(&job_id, &raw, &settings, deadline, run_started_ms)
                .await;
            return self.finish_job(job_id, result, meta.deadline).await;
        }

        match invocation::classify(&raw, &filter) {
            Err(e) => Handled::Rejected(e),
            Ok(Invocation::Ignored(i)) => Handled::Ignored { reason: i.0 },
            // Job payloads always carry an id (checked above); typed parsing cannot add one.
            Ok(Invocation::Job(_)) => {
                Handled::Rejected(Error::Event("CodePipeline.job.id is missing".into()))
            }
            Ok(Invocation::Trigger(t)) => {
                let execution = Execution {
                    key: format!("codecommit/{}/{}", t.repository, t.commit_id),
                    origin: "codecommit".into(),
                    pipeline: None,
                    commit: Some(t.commit_id.clone()),
                };
                let key = execution.key.clone();
                let result = self
                    .run_parsed(
                        &settings,
                        None,
                        execution,
                        None,
                        None,
                        deadline,
                        run_started_ms,
                    )
                    .await;
                Handled::Direct {
                    execution: key,
                    result,
                    batch: false,
                }
            }
            Ok(Invocation::Direct(d)) => {
                let execution = Execution {
                    key: d
                        .execution_id
                        .clone()
                        .unwrap_or_else(|| format!("direct/{}", meta.request_id)),
                    origin: "direct".into(),
                    pipeline: None,
                    commit: None,
                };
                let layer = Layer {
                    source: "request",
                    values: d.params,
                };
                let key = execution.key.clone();
                let result = self
                    .run_parsed(
                        &settings,
                        Some(layer),
                        execution,
                        d.continuation_token,
                        None,
                        deadline,
                        run_started_ms,
                    )
                    .await;
                Handled::Direct {
                    execution: key,
                    result: if d.batch {
                        batch_result(result)
                    } else {
                        result
                    },
                    batch: d.batch,
                }
            }
        }
    }

    async fn run_job(
        &self,
        job_id: &str,
        raw: &Value,
        settings: &Settings,
        deadline: tokio::time::Instant,
        run_started_ms: &mut Option<u64>,
    ) -> JobResult {
        let ev = match invocation::classify(raw, &settings.trigger_filter) {
            Ok(Invocation::Job(ev)) => ev,
            Ok(_) => {
                return JobResult::failed(
                    &Error::Event("not a CodePipeline job event".into()),
                    job_id,
                );
            }
            Err(e) => return JobResult::failed(&e, job_id),
        };
        let data = ev.job.data;
        if data.continuation_token.is_some() {
            // Resumed: the run's start is in the token, read once parameters are.
            *run_started_ms = None;
        }
        let layer = match params::user_parameters(
            data.action_configuration
                .configuration
                .user_parameters
                .as_deref(),
        ) {
            Ok(l) => l,
            Err(e) => return JobResult::failed(&e, job_id),
        };
        // The execution key: from the continuation token when resuming, else the pipeline
        // execution (GetJobDetails), else the job id (stable across Lambda's retries).
        let execution = if data.continuation_token.is_some() {
            None
        } else {
            // Bounded by the step's deadline: an unanswered GetJobDetails must not hold the
            // invocation past its budget.
            let context = tokio::time::timeout_at(deadline, self.reporter.pipeline_context(job_id))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Unavailable {
                        backend: "codepipeline",
                        message: "GetJobDetails: no answer before the deadline".into(),
                        source: None,
                    })
                });
            Some(match context {
                Ok(ctx) => match ctx.pipeline_execution_id {
                    Some(exec) => Execution {
                        key: format!(
                            "{}/{exec}/{}",
                            ctx.pipeline_name.clone().unwrap_or_default(),
                            ctx.action.clone().unwrap_or_else(|| F::NAME.to_string())
                        ),
                        origin: "codepipeline".into(),
                        pipeline: ctx.pipeline_name,
                        commit: None,
                    },
                    None => job_execution(job_id),
                },
                // A passing outage: start nothing. Keyed by job id now and by the pipeline
                // execution on the stage's retry, one run could make two snapshots.
                Err(Error::Unavailable {
                    backend,
                    message,
                    source: None,
                }) => {
                    tracing::warn!(job_id, backend, error = %message, "GetJobDetails failed; nothing started");
                    return JobResult::failed(
                        &Error::Unavailable {
                            backend,
                            message: format!(
                                "{message}; nothing was started (the run is keyed by its pipeline execution, which GetJobDetails names): retry the action"
                            ),
                            source: None,
                        },
                        job_id,
                    );
                }
                // Not allowed to ask (no codepipeline:GetJobDetails): every invocation of this
                // job fails the same way, so the job id keys it consistently.
                Err(e) => {
                    tracing::warn!(job_id, error = %e.chain(), "GetJobDetails failed; keying this run by job id");
                    job_execution(job_id)
                }
            })
        };
        let artifacts = JobArtifacts {
            inputs: data.input_artifacts,
            outputs: data.output_artifacts,
            credentials: data.artifact_credentials,
            encryption_key: data.encryption_key,
        };
        let fallback = execution.clone().unwrap_or_else(|| job_execution(job_id));
        self.run_parsed_with(
            settings,
            Some(layer),
            fallback,
            execution.is_none(),
            data.continuation_token,
            Some(artifacts),
            deadline,
            run_started_ms,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_parsed(
        &self,
        settings: &Settings,
        layer: Option<Layer>,
        execution: Execution,
        token: Option<String>,
        artifacts: Option<JobArtifacts>,
        deadline: tokio::time::Instant,
        run_started_ms: &mut Option<u64>,
    ) -> JobResult {
        self.run_parsed_with(
            settings,
            layer,
            execution,
            false,
            token,
            artifacts,
            deadline,
            run_started_ms,
        )
        .await
    }

    /// Parses parameters and token, runs the step in its own task, and shapes the result.
    #[allow(clippy::too_many_arguments)]
    async fn run_parsed_with(
        &self,
        settings: &Settings,
        layer: Option<Layer>,
        execution: Execution,
        execution_from_token: bool,
        token: Option<String>,
        artifacts: Option<JobArtifacts>,
        deadline: tokio::time::Instant,
        run_started_ms: &mut Option<u64>,
    ) -> JobResult {
        if token.is_some() {
            // A resumed run started when its token says (read below); an unreadable token, never.
            *run_started_ms = None;
        }
        let mut layers = vec![settings.defaults.clone()];
        layers.extend(layer);
        let params: F::Params = match params::merge(&layers) {
            Ok(p) => p,
            Err(e) => return JobResult::failed(&e, &execution.key),
        };
        let resume = match token
            .as_deref()
            .map(|t| Continuation::decode(t, F::NAME))
            .transpose()
        {
            Ok(r) => r,
            Err(e) => return JobResult::failed(&e, &execution.key),
        };
        let execution = match &resume {
            Some(c) if execution_from_token || c.execution != execution.key => Execution {
                key: c.execution.clone(),
                ..execution
            },
            _ => execution,
        };
        let stalls = resume.as_ref().map_or(0, |c| c.stalls);
        if let Some(c) = &resume {
            *run_started_ms = c.started_ms;
        }
        let started_ms = *run_started_ms;
        let state = resume.map(|c| c.state);

        let step = Step {
            params,
            execution: execution.clone(),
            state: state.clone(),
            deadline: Deadline(deadline),
            artifacts,
        };
        let function = Arc::clone(&self.function);
        let mut task = tokio::spawn(async move { function.step(step).await });
        let joined = tokio::time::timeout_at(deadline, &mut task).await;
        if joined.is_err() {
            task.abort();
        }
        match joined {
            Ok(Ok(Ok(outcome))) => shape(F::NAME, &execution, started_ms, outcome),
            Ok(Ok(Err(e))) => {
                tracing::warn!(execution = %execution.key, failure = %e.failure_kind(), error = %e.chain(), "step failed");
                JobResult::failed(&e, &execution.key)
            }
            Ok(Err(join)) => {
                let msg = panic_message(join);
                tracing::error!(execution = %execution.key, panic = %msg, "step panicked");
                JobResult::failed(
                    &Error::Internal(format!("the step panicked: {msg}")),
                    &execution.key,
                )
            }
            Err(_elapsed) => {
                let stalls = stalls + 1;
                if stalls >= MAX_STALLS {
                    let e = Error::Backend {
                        backend: "snapstage",
                        message: format!(
                            "no progress in {stalls} invocations in a row: each reached the Lambda deadline"
                        ),
                        source: None,
                    };
                    return JobResult::failed(&e, &execution.key);
                }
                let c = Continuation {
                    function: F::NAME.to_string(),
                    execution: execution.key.clone(),
                    stalls,
                    state: state.unwrap_or(Value::Null),
                    started_ms,
                };
                match c.encode() {
                    Ok(token) => JobResult::InProgress {
                        summary: format!(
                            "{}: deadline reached; resuming in the next invocation",
                            F::NAME
                        ),
                        external_execution_id: execution.key.clone(),
                        percent_complete: 0,
                        continuation_token: token,
                    },
                    Err(e) => JobResult::failed(&e, &execution.key),
                }
            }
        }
    }

    /// Reports the result, within the invocation's own deadline (at least [`MIN_REPORT_TIME`]):
    /// a CodePipeline endpoint that never answers must not hold the function past its budget.
    async fn finish_job(&self, job_id: String, result: JobResult, by: SystemTime) -> Handled {
        tracing::info!(job_id = %job_id, status = result.status(), "reporting job result");
        let left = by
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(MIN_REPORT_TIME);
        let reported = match tokio::time::timeout(left, self.reporter.report(&job_id, &result))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable {
                backend: "codepipeline",
                message: format!(
                    "the job result was not acknowledged within {:.1} s (the invocation's deadline)",
                    left.as_secs_f64()
                ),
                source: None,
            }),
        };
        let delivered = match reported {
            Err(Error::Configuration(m)) | Err(Error::Backend { message: m, .. })
                if m.contains("InvalidJobStateException") =>
            {
                // A duplicate delivery of an event whose job already has its result.
                tracing::info!(job_id = %job_id, "job already has a result (duplicate delivery)");
                Ok(())
            }
            other => other,
        };
        if let Err(e) = &delivered {
            tracing::error!(job_id = %job_id, error = %e.chain(), "could not deliver the job result");
        }
        Handled::Job {
            job_id,
            result,
            delivered,
        }
    }
}

/// A batch's result: "in progress" cannot be continued by a Distributed Map, so it is a failure
/// Step Functions retries (the retry resumes from the step's checkpoint).
fn batch_result(result: JobResult) -> JobResult {
    match result {
        JobResult::InProgress {
            summary,
            external_execution_id,
            ..
        } => JobResult::Failed {
            kind: crate::error::FailureKind::SystemUnavailable,
            message: crate::job::codepipeline::truncate(
                &format!(
                    "the batch did not finish within this invocation ({summary}); a Distributed \
                     Map child cannot continue with a token: its checkpoint keeps the progress, \
                     and a retry of the same batch resumes it. Smaller batches \
                     (ItemBatcher.MaxItemsPerBatch / MaxInputBytesPerBatch) finish in one invocation"
                ),
                2000,
            ),
            external_execution_id,
        },
        other => other,
    }
}

/// A batch's successful answer: `status`, `summary`, `executionId`, and each output variable
/// under its name with the first letter in lower case (`ObjectsCopied` → `objectsCopied`), its
/// value as JSON when it is a JSON number, boolean, array or object, else as the string.
pub fn batch_answer(execution: &str, summary: &str, outputs: &BTreeMap<String, String>) -> Value {
    let mut v = serde_json::json!({"status": "Succeeded", "summary": summary});
    for (k, raw) in outputs {
        let mut name = k.clone();
        if let Some(first) = name.get(..1) {
            name.replace_range(..1, &first.to_ascii_lowercase());
        }
        let typed = match serde_json::from_str::<Value>(raw) {
            Ok(j @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_))) => j,
            _ => Value::from(raw.as_str()),
        };
        v[name] = typed;
    }
    v["executionId"] = Value::from(execution);
    v
}

fn job_execution(job_id: &str) -> Execution {
    Execution {
        key: format!("job/{job_id}"),
        origin: "codepipeline".into(),
        pipeline: None,
        commit: None,
    }
}

fn shape(
    function: &str,
    execution: &Execution,
    started_ms: Option<u64>,
    outcome: Outcome,
) -> JobResult {
    match outcome {
        Outcome::Done { summary, outputs } => match validate_output_variables(&outputs) {
            Ok(()) => JobResult::Succeeded {
                summary,
                external_execution_id: execution.key.clone(),
                output_variables: outputs,
            },
            Err(e) => JobResult::failed(&e, &execution.key),
        },
        Outcome::Continue {
            summary,
            percent,
            state,
        } => {
            let c = Continuation {
                function: function.to_string(),
                execution: execution.key.clone(),
                stalls: 0,
                state,
                started_ms,
            };
            match c.encode() {
                Ok(token) => JobResult::InProgress {
                    summary,
                    external_execution_id: execution.key.clone(),
                    percent_complete: percent.min(99),
                    continuation_token: token,
                },
                Err(e) => JobResult::failed(&e, &execution.key),
            }
        }
    }
}

fn panic_message(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return "the step was cancelled".into();
    }
    let payload = join.into_panic();
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    crate::job::codepipeline::truncate(&msg, 500)
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn deadline_from(at: SystemTime, margin: Duration) -> tokio::time::Instant {
    let now_sys = SystemTime::now();
    let left = at
        .duration_since(now_sys)
        .unwrap_or(Duration::ZERO)
        .saturating_sub(margin);
    tokio::time::Instant::now() + left
}

/// Lambda's `Lambda-Runtime-Deadline-Ms` (`Context::deadline`) → `SystemTime`.
///
/// Lambda sends milliseconds since the epoch. The `cargo lambda watch` emulator sends a budget
/// instead (`600000`): read as a date that is 1970, and every step would stall at once. A value
/// before 2001 (< 10^12 ms) is therefore taken as milliseconds from now.
pub fn deadline_from_epoch_ms(ms: u64) -> SystemTime {
    const EPOCH_MS_2001: u64 = 1_000_000_000_000;
    if ms < EPOCH_MS_2001 {
        SystemTime::now() + Duration::from_millis(ms)
    } else {
        UNIX_EPOCH + Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests;
