//! The CloudWatch metrics (embedded metric format) of the compiled binary in CLI mode with
//! `SNAPSTAGE_METRICS=emf`: one `{"_aws": ...}` line per step on stderr, stdout untouched. What a
//! dashboard or an alarm would see: a bad UserParameters counts one ConfigurationError failure
//! (the failure type CodePipeline got); a replication counts the objects and bytes it copied, and
//! a re-run with nothing to copy counts none.
//!
//! The job test needs nothing outside the process (the job-service double); the replication test
//! needs SNAPSTAGE_MOTO_CLOUD / SNAPSTAGE_MOTO_ONPREM and prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use common::{content, put, s3};
use serde_json::{Value, json};
use snapstage_localenv::event::{JobEventSpec, job_event};
use snapstage_localenv::jobservice::{JobOutcome, JobService, JobSpec, new_execution_id};
use snapstage_localenv::testkit::{self, CliRun, moto, unique};

const BIN: &str = env!("CARGO_BIN_EXE_replicate-artifacts-back");
const FN: &str = "replicate-artifacts-back";

/// Runs the binary off the runtime's thread: the job-service double serves on it meanwhile.
async fn run(endpoint: &str, event: &Value, env: &[(&str, &str)]) -> CliRun {
    let (endpoint, event) = (endpoint.to_string(), event.clone());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        testkit::run_cli(BIN, &endpoint, &event, &[], &env)
    })
    .await
    .unwrap()
}

/// The EMF documents a run wrote to stderr, each checked to be one standalone JSON object whose
/// every declared metric has a number and every dimension a string value.
fn emf(r: &CliRun) -> Vec<Value> {
    for result in &r.results {
        assert!(result.get("_aws").is_none(), "stdout holds results only");
    }
    r.stderr
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| {
            let doc: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a standalone JSON line ({e}): {l}"));
            for d in doc["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
                assert_eq!(d["Namespace"], "snapstage");
                for set in d["Dimensions"].as_array().unwrap() {
                    for dim in set.as_array().unwrap() {
                        assert!(doc[dim.as_str().unwrap()].is_string(), "{dim}: {l}");
                    }
                }
                for m in d["Metrics"].as_array().unwrap() {
                    assert!(doc[m["Name"].as_str().unwrap()].is_number(), "{m}: {l}");
                }
            }
            doc
        })
        .collect()
}

#[tokio::test]
async fn bad_user_parameters_count_one_configuration_error() {
    let jobs = JobService::start().await.unwrap();
    let job = jobs.register_job(JobSpec {
        pipeline_name: "shop".into(),
        stage: "Release".into(),
        action: "Replicate".into(),
        execution_id: new_execution_id(),
        ..JobSpec::default()
    });
    let event = job_event(&JobEventSpec {
        job_id: &job,
        function_name: FN,
        user_parameters: "sourceBucket=artifacts",
        continuation_token: None,
    });
    let env = [
        ("AWS_ENDPOINT_URL_CODEPIPELINE", jobs.url.as_str()),
        ("SNAPSTAGE_METRICS", "emf"),
    ];
    let r = run(&jobs.url, &event, &env).await;
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    assert!(
        matches!(
            jobs.result_for(&job),
            Some(JobOutcome::Failed { ref failure_type, .. }) if failure_type == "ConfigurationError"
        ),
        "{:?}",
        jobs.result_for(&job)
    );

    let docs = emf(&r);
    assert_eq!(docs.len(), 1, "one document per invocation: {docs:?}");
    let d = &docs[0];
    assert_eq!(d["Function"], FN);
    assert_eq!(d["Outcome"], "failed");
    assert_eq!(d["Failures"], 1.0);
    assert_eq!(d["FailureType"], "ConfigurationError");
    assert_eq!(d["JobId"], job.as_str());
    assert!(d["StepDuration"].as_f64().unwrap() >= 0.0);

    // Off by default outside Lambda: the same job prints no metrics.
    let job = jobs.register_job(JobSpec {
        execution_id: new_execution_id(),
        ..JobSpec::default()
    });
    let event = job_event(&JobEventSpec {
        job_id: &job,
        function_name: FN,
        user_parameters: "sourceBucket=artifacts",
        continuation_token: None,
    });
    let env = [
        ("AWS_ENDPOINT_URL_CODEPIPELINE", jobs.url.as_str()),
        ("SNAPSTAGE_METRICS", ""),
    ];
    let r = run(&jobs.url, &event, &env).await;
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    assert!(emf(&r).is_empty(), "{}", r.stderr);
}

#[tokio::test]
async fn a_replication_counts_the_objects_and_bytes_it_copied() {
    let Some(m) = moto("a_replication_counts_the_objects_and_bytes_it_copied") else {
        return;
    };
    let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
    let (src, dst) = (unique("cloud-metrics"), unique("onprem-metrics"));
    cloud.create_bucket().bucket(&src).send().await.unwrap();
    onprem.create_bucket().bucket(&dst).send().await.unwrap();
    let sizes = [4096, 10, 70_000];
    for (i, size) in sizes.iter().enumerate() {
        let key = format!("blobs/{i}.bytes");
        put(&cloud, &src, &key, &content(i as u64, *size)).await;
    }
    let total: usize = sizes.iter().sum();
    let request = json!({"sourceBucket": src, "sourcePrefix": "blobs/", "destinationBucket": dst,
                         "destinationEndpoint": m.onprem});
    let env = [("SNAPSTAGE_METRICS", "emf")];

    let first = run(&m.cloud, &request, &env).await;
    assert_eq!(first.last()["status"], "Succeeded", "{}", first.stderr);
    let docs = emf(&first);
    assert_eq!(docs.len(), first.results.len(), "one document per step");
    let d = docs.last().unwrap();
    assert_eq!(
        (&d["Function"], &d["Outcome"]),
        (&json!(FN), &json!("succeeded"))
    );
    assert_eq!(d["ObjectsCopied"], 3.0);
    assert_eq!(d["BytesCopied"], total as f64);
    assert_eq!(d["ObjectsSkipped"], 0.0);
    assert!(d["RunDuration"].as_f64().unwrap() >= 0.0);
    assert!(d.get("Failures").is_none());

    // Nothing changed: the re-run counts nothing copied, everything skipped.
    let again = run(&m.cloud, &request, &env).await;
    assert_eq!(again.last()["status"], "Succeeded", "{}", again.stderr);
    let docs = emf(&again);
    let d = docs.last().unwrap();
    assert_eq!(d["ObjectsCopied"], 0.0);
    assert_eq!(d["BytesCopied"], 0.0);
    assert_eq!(d["ObjectsSkipped"], 3.0);
}
