//! Raw event bytes → the job id (read before typed parsing) and the invocation's shape.
//! Invariants: never panics; a payload classified as a CodePipeline job has a job id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapstage::job::codecommit::TriggerFilter;
use snapstage::job::invocation::{Invocation, classify, job_id};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let id = job_id(&raw).map(str::to_string);
    let filters = [
        TriggerFilter::default(),
        TriggerFilter::from_env(|k| match k {
            "SNAPSTAGE_TRIGGER_BRANCHES" => Some("main,release/*".into()),
            "SNAPSTAGE_TRIGGER_REPOSITORIES" => Some("shop".into()),
            _ => None,
        }),
    ];
    for filter in &filters {
        match classify(&raw, filter) {
            Ok(Invocation::Job(ev)) => {
                assert!(id.is_some(), "a job event without a job id");
                assert_eq!(Some(ev.job.id.as_str()), id.as_deref());
            }
            Ok(_) => {}
            Err(e) => {
                let _ = e.failure_kind();
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
