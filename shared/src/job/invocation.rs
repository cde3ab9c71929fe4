//! The invocation model: what a raw payload is.
//!
//! A function accepts three shapes:
//! 1. a CodePipeline job event (`{"CodePipeline.job": {...}}`);
//! 2. an EventBridge CodeCommit event (`"source": "aws.codecommit"`);
//! 3. a direct request: a JSON object of parameters, plus the reserved keys `executionId` and
//!    `continuationToken` (`aws lambda invoke --payload '{"volumeIds": ["vol-0123"]}'`);
//! 4. a batch: the input of a Step Functions Distributed Map child with an `ItemBatcher`,
//!    `{"Items": [...], "BatchInput": {...}}` — a direct request whose parameters are
//!    `BatchInput` (reserved keys included) plus the parameter `items`, the batch's items. A batch
//!    answers with its result as a plain JSON object, and never with a continuation token (a map
//!    child cannot continue: see [`crate::job::contract`]).
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

/// A Distributed Map child's input: the batch's items.
pub const BATCH_ITEMS: &str = "Items";
/// A Distributed Map child's input: the fixed input of every batch (`ItemBatcher.BatchInput`).
pub const BATCH_INPUT: &str = "BatchInput";
/// The parameter a batch's items are given to.
pub const ITEMS_PARAMETER: &str = "items";

/// A direct request: parameters plus the reserved keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectRequest {
    pub execution_id: Option<String>,
    pub continuation_token: Option<String>,
    pub params: Map<String, Value>,
    /// A Distributed Map child's batch (`{"Items", "BatchInput"}`).
    pub batch: bool,
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
    let batch =
        obj.contains_key(BATCH_ITEMS) && obj.keys().all(|k| k == BATCH_ITEMS || k == BATCH_INPUT);
    let mut params = if batch {
        batch_params(obj)?
    } else {
        obj.clone()
    };
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
        batch,
    }))
}

/// The parameters of a batch: `BatchInput`'s keys, plus `items`.
fn batch_params(obj: &Map<String, Value>) -> Result<Map<String, Value>> {
    let items = match obj.get(BATCH_ITEMS) {
        Some(Value::Array(a)) => a.clone(),
        Some(other) => {
            return Err(Error::Event(format!(
                "a Distributed Map batch's {BATCH_ITEMS} must be an array, got {}",
                kind_of(other)
            )));
        }
        None => Vec::new(),
    };
    let mut params = match obj.get(BATCH_INPUT) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(Error::parameter(
                BATCH_INPUT,
                format!(
                    "expected an object of parameters (ItemBatcher.BatchInput), got {}",
                    kind_of(other)
                ),
            ));
        }
    };
    if params.contains_key(ITEMS_PARAMETER) {
        return Err(Error::parameter(
            format!("{BATCH_INPUT}.{ITEMS_PARAMETER}"),
            format!("a batch's items come from {BATCH_ITEMS}: remove it from BatchInput"),
        ));
    }
    params.insert(ITEMS_PARAMETER.into(), Value::Array(items));
    Ok(params)
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
    fn distributed_map_batches_are_direct_requests_with_items() {
        let raw = json!({
            "Items": [{"Key": "blobs/a.bytes", "Size": 3}],
            "BatchInput": {"sourceBucket": "b", "executionId": "map-run-1"}
        });
        let Invocation::Direct(d) = classify(&raw, &TriggerFilter::default()).unwrap() else {
            panic!()
        };
        assert!(d.batch);
        assert_eq!(d.execution_id.as_deref(), Some("map-run-1"));
        assert_eq!(
            d.params,
            json!({"sourceBucket": "b", "items": [{"Key": "blobs/a.bytes", "Size": 3}]})
                .as_object()
                .unwrap()
                .clone()
        );
        // Without BatchInput: the items alone (defaults may hold the rest).
        let Invocation::Direct(d) =
            classify(&json!({"Items": []}), &TriggerFilter::default()).unwrap()
        else {
            panic!()
        };
        assert!(d.batch && d.params["items"] == json!([]));
        // A request that merely has other keys beside Items is not a batch.
        let Invocation::Direct(d) =
            classify(&json!({"Items": [], "x": 1}), &TriggerFilter::default()).unwrap()
        else {
            panic!()
        };
        assert!(!d.batch);
        for (raw, says) in [
            (json!({"Items": {"Key": "a"}}), "must be an array"),
            (json!({"Items": [], "BatchInput": [1]}), "BatchInput"),
            (
                json!({"Items": [], "BatchInput": {"items": []}}),
                "BatchInput.items",
            ),
        ] {
            let e = classify(&raw, &TriggerFilter::default()).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
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
