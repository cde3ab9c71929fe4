//! CloudWatch metrics in the embedded metric format (EMF): one JSON document per handled
//! invocation, written as one line. Under Lambda it goes to stdout, which Lambda sends to the
//! function's log group, where CloudWatch Logs extracts the metrics: no API call, no permission.
//!
//! Dimension sets are small and of low cardinality: `[Function]`, `[Function, Outcome]`,
//! `[Function, FailureType]`. Execution and job ids are plain members, for log search, never
//! dimensions. Nothing from the event or the parameters goes in.
//!
//! | metric | unit | dimension sets | emitted |
//! | --- | --- | --- | --- |
//! | `Invocations` | Count | Function; Function, Outcome | every invocation (1) |
//! | `StepDuration` | Milliseconds | Function; Function, Outcome | every invocation |
//! | `RunDuration` | Seconds | Function; Function, Outcome | when a run ends (succeeded or failed): from its first invocation |
//! | `Failures` | Count | Function; Function, FailureType | a failed or rejected invocation (1) |
//! | `ResultsNotDelivered` | Count | Function | a job result CodePipeline did not acknowledge (1) |
//! | `ObjectsCopied`, `ObjectsSkipped`, `ObjectsDeleted` | Count | Function | a run that succeeded with these output variables (replicate-artifacts-back) |
//! | `BytesCopied` | Bytes | Function | likewise |
//!
//! Spec: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::job::codepipeline::{JobResult, truncate};
use crate::job::contract::{Handled, Measured};

/// The namespace unless `SNAPSTAGE_METRICS_NAMESPACE` names another.
pub const DEFAULT_NAMESPACE: &str = "snapstage";

/// Output variables that are also published as metrics, with their unit.
pub const OUTPUT_METRICS: [(&str, Unit); 4] = [
    ("ObjectsCopied", Unit::Count),
    ("ObjectsSkipped", Unit::Count),
    ("ObjectsDeleted", Unit::Count),
    ("BytesCopied", Unit::Bytes),
];

/// The CloudWatch units used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Milliseconds,
    Seconds,
    Bytes,
    Count,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Milliseconds => "Milliseconds",
            Self::Seconds => "Seconds",
            Self::Bytes => "Bytes",
            Self::Count => "Count",
        }
    }
}

/// Where the documents go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Off,
    /// Lambda: CloudWatch Logs extracts the metrics from the function's stdout.
    Stdout,
    /// The CLI: stdout stays the results; a collector (CloudWatch agent, a log shipper) picks
    /// the `{"_aws":...}` lines out of stderr.
    Stderr,
}

/// The metrics configuration, read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub namespace: String,
    pub sink: Sink,
}

impl Metrics {
    /// The default: on under Lambda (stdout), off in the CLI.
    pub fn default_for(lambda: bool) -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.into(),
            sink: if lambda { Sink::Stdout } else { Sink::Off },
        }
    }

    /// `SNAPSTAGE_METRICS`: `emf` (on: stdout under Lambda, stderr in the CLI) or `off`; unset,
    /// on under Lambda and off in the CLI. `SNAPSTAGE_METRICS_NAMESPACE`: the namespace.
    pub fn from_env(lambda: bool, get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut m = Self::default_for(lambda);
        if let Some(v) = get("SNAPSTAGE_METRICS") {
            m.sink = match v.trim().to_ascii_lowercase().as_str() {
                "" => m.sink,
                "emf" if lambda => Sink::Stdout,
                "emf" => Sink::Stderr,
                "off" => Sink::Off,
                _ => {
                    return Err(Error::Configuration(format!(
                        "SNAPSTAGE_METRICS: expected \"emf\" or \"off\", got {v:?}"
                    )));
                }
            };
        }
        if let Some(ns) = get("SNAPSTAGE_METRICS_NAMESPACE") {
            let ns = ns.trim();
            let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c);
            if ns.is_empty() || ns.len() > 255 || ns.starts_with("AWS/") || !ns.chars().all(allowed)
            {
                return Err(Error::Configuration(format!(
                    "SNAPSTAGE_METRICS_NAMESPACE: expected 1-255 letters, digits and . - _ / # : \
                     or space, not starting with \"AWS/\", got {ns:?}"
                )));
            }
            m.namespace = ns.to_string();
        }
        Ok(m)
    }

    /// Writes the document of one handled invocation as one line, if metrics are on. A write
    /// that fails is logged, never the invocation's failure.
    pub fn emit(&self, function: &str, measured: &Measured) {
        let mut line = match self.sink {
            Sink::Off => return,
            Sink::Stdout | Sink::Stderr => {
                document(&self.namespace, function, measured, SystemTime::now()).to_string()
            }
        };
        line.push('\n');
        let written = match self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).and_then(|()| out.flush())
            }
            _ => std::io::stderr().lock().write_all(line.as_bytes()),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not write the metrics");
        }
    }
}

/// The EMF document of one handled invocation.
pub fn document(namespace: &str, function: &str, m: &Measured, now: SystemTime) -> Value {
    let (outcome, failure, result) = match &m.handled {
        Handled::Job { result, .. } | Handled::Direct { result, .. } => {
            let (outcome, failure) = match result {
                JobResult::Succeeded { .. } => ("succeeded", None),
                JobResult::InProgress { .. } => ("continued", None),
                JobResult::Failed { kind, .. } => ("failed", Some(kind.as_str())),
            };
            (outcome, failure, Some(result))
        }
        Handled::Ignored { .. } => ("ignored", None, None),
        Handled::Rejected(e) => ("rejected", Some(e.failure_kind().as_str()), None),
    };
    let now_ms = ms_since_epoch(now);

    let mut root = Map::new();
    root.insert("Function".into(), function.into());
    root.insert("Outcome".into(), outcome.into());
    let mut by_outcome = vec![
        metric(&mut root, "Invocations", Unit::Count, 1.0),
        metric(
            &mut root,
            "StepDuration",
            Unit::Milliseconds,
            m.step.as_secs_f64() * 1000.0,
        ),
    ];
    let run_ended = matches!(outcome, "succeeded" | "failed") && result.is_some();
    if let (true, Some(started)) = (run_ended, m.run_started_ms) {
        let secs = now_ms.saturating_sub(started) as f64 / 1000.0;
        by_outcome.push(metric(&mut root, "RunDuration", Unit::Seconds, secs));
    }
    let mut directives = vec![directive(
        namespace,
        &[&["Function"], &["Function", "Outcome"]],
        by_outcome,
    )];
    if let Some(kind) = failure {
        root.insert("FailureType".into(), kind.into());
        let failures = vec![metric(&mut root, "Failures", Unit::Count, 1.0)];
        directives.push(directive(
            namespace,
            &[&["Function"], &["Function", "FailureType"]],
            failures,
        ));
    }
    let mut by_function = Vec::new();
    if let Some(JobResult::Succeeded {
        output_variables, ..
    }) = result
    {
        for (name, unit) in OUTPUT_METRICS {
            let value = output_variables
                .get(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite());
            if let Some(v) = value {
                by_function.push(metric(&mut root, name, unit, v));
            }
        }
    }
    match &m.handled {
        Handled::Job {
            job_id, delivered, ..
        } => {
            // A UUID from CodePipeline; cut, should a hostile payload send a huge one.
            root.insert("JobId".into(), truncate(job_id, 100).into());
            if delivered.is_err() {
                by_function.push(metric(&mut root, "ResultsNotDelivered", Unit::Count, 1.0));
            }
        }
        Handled::Direct { .. } | Handled::Ignored { .. } | Handled::Rejected(_) => {}
    }
    if let Some(
        JobResult::Succeeded {
            external_execution_id,
            ..
        }
        | JobResult::InProgress {
            external_execution_id,
            ..
        }
        | JobResult::Failed {
            external_execution_id,
            ..
        },
    ) = result
    {
        root.insert("ExecutionId".into(), external_execution_id.as_str().into());
    }
    if !by_function.is_empty() {
        directives.push(directive(namespace, &[&["Function"]], by_function));
    }
    root.insert(
        "_aws".into(),
        json!({"Timestamp": now_ms, "CloudWatchMetrics": directives}),
    );
    Value::Object(root)
}

/// Sets the metric's value member and returns its definition.
fn metric(root: &mut Map<String, Value>, name: &str, unit: Unit, value: f64) -> Value {
    root.insert(name.into(), json!(value));
    json!({"Name": name, "Unit": unit.as_str()})
}

fn directive(namespace: &str, dimensions: &[&[&str]], metrics: Vec<Value>) -> Value {
    json!({"Namespace": namespace, "Dimensions": dimensions, "Metrics": metrics})
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
