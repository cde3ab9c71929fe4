//! The invocation model: what a raw payload is.
//!
//! A function accepts three shapes:
//! 1. a CodePipeline job event (`{"CodePipeline.job": {...}}`);
//! 2. an EventBridge CodeCommit event (`"source": "aws.codecommit"`);
//! 3. a direct request: a JSON object of parameters, plus the reserved keys `executionId` and
//!    `continuationToken` (`aws lambda invoke --payload '{"volumeIds": ["vol-0123"]}'`).
//!
//! The job id is taken from the raw JSON before anything else, so even a payload that fails typed
//! parsing still gets its one CodePipeline result.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::job::codecommit::{self, Ignored, Trigger, TriggerFilter};
use crate::job::codepipeline::JobEvent;
use crate::job::params::kind_of;

pub const JOB_KEY: &str = "CodePipeline.job";
/// Keys of a direct request that are not parameters.
pub const RESERVED_KEYS: [&str; 2] = ["executionId", "continuationToken"];

/// The job id, read from the raw payload without typed parsing.
pub fn job_id(raw: &Value) -> Option<&str> {
    raw.get(JOB_KEY)?
        .get("id")?
        .as_str()
        .filter(|s| !s.trim().is_empty())
}

/// A direct request: parameters plus the reserved keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectRequest {
    pub execution_id: Option<String>,
    pub continuation_token: Option<String>,
    pub params: Map<String, Value>,
}

#[derive(Debug)]
pub enum Invocation {
    Job(Box<JobEvent>),
    Trigger(Trigger),
    Ignored(Ignored),
    Direct(DirectRequest),
}

const EXPECTED: &str = "expected a CodePipeline job event ({\"CodePipeline.job\": ...}), \
an EventBridge CodeCommit event (\"source\": \"aws.codecommit\"), or a direct request (a JSON object of parameters)";

/// Classifies a payload. Errors say which shape was expected.
pub fn classify(raw: &Value, filter: &TriggerFilter) -> Result<Invocation> {
    let Value::Object(obj) = raw else {
        return Err(Error::Event(format!(
            "payload is {}: {EXPECTED}",
            kind_of(raw)
        )));
    };
    if obj.contains_key(JOB_KEY) {
        let ev: JobEvent = serde_path_to_error::deserialize(raw).map_err(|e| {
            Error::Event(format!(
                "malformed CodePipeline job event at {}: {}",
                e.path(),
                e.inner()
            ))
        })?;
        ev.job.validate()?;
        return Ok(Invocation::Job(Box::new(ev)));
    }
    if obj.contains_key("detail-type") || obj.contains_key("source") && obj.contains_key("detail") {
        return Ok(match codecommit::evaluate(raw, filter)? {
            Ok(t) => Invocation::Trigger(t),
            Err(i) => Invocation::Ignored(i),
        });
    }
    if obj.contains_key("Records") {
        return Err(Error::Event(format!(
            "payload looks like an S3/SNS/SQS notification (\"Records\"): {EXPECTED}"
        )));
    }
    let mut params = obj.clone();
    let mut take = |key: &str| -> Result<Option<String>> {
        match params.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
            Some(other) => Err(Error::parameter(
                format!("request.{key}"),
                format!("expected a non-empty string, got {}", kind_of(&other)),
            )),
        }
    };
    let execution_id = take(RESERVED_KEYS[0])?;
    let continuation_token = take(RESERVED_KEYS[1])?;
    Ok(Invocation::Direct(DirectRequest {
        execution_id,
        continuation_token,
        params,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_id_is_read_before_typed_parsing() {
        let raw = json!({"CodePipeline.job": {"id": "job-1", "data": 42}});
        assert_eq!(job_id(&raw), Some("job-1"));
        let e = classify(&raw, &TriggerFilter::default()).unwrap_err();
        assert!(
            e.to_string().contains("malformed CodePipeline job event"),
            "{e}"
        );
        assert_eq!(job_id(&json!({"CodePipeline.job": {"id": ""}})), None);
        assert_eq!(job_id(&json!([1])), None);
    }

    #[test]
    fn direct_requests_split_reserved_keys() {
        let raw =
            json!({"volumeIds": ["vol-1"], "executionId": "build-7", "continuationToken": null});
        let Invocation::Direct(d) = classify(&raw, &TriggerFilter::default()).unwrap() else {
            panic!()
        };
        assert_eq!(d.execution_id.as_deref(), Some("build-7"));
        assert_eq!(d.continuation_token, None);
        assert_eq!(
            d.params,
            json!({"volumeIds": ["vol-1"]}).as_object().unwrap().clone()
        );
        let e = classify(&json!({"executionId": 7}), &TriggerFilter::default()).unwrap_err();
        assert!(e.to_string().starts_with("request.executionId"), "{e}");
    }

    #[test]
    fn other_shapes_name_what_was_expected() {
        for raw in [
            json!("hello"),
            json!([1, 2]),
            json!(null),
            json!({"Records": []}),
        ] {
            let e = classify(&raw, &TriggerFilter::default()).unwrap_err();
            assert!(
                e.to_string().contains("expected a CodePipeline job event"),
                "{e}"
            );
        }
    }
}
