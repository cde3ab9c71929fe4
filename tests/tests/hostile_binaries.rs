//! The hostile-input corpus (`shared/tests/corpus`, derived from events/) through the real
//! function binaries in the local pipeline: the CLI (`--event -`, one process per payload, the
//! five functions in turn) and the `cargo lambda watch` Runtime API emulator (one warm runtime).
//! Each payload with a job id gets exactly one typed result in the CodePipeline job-service
//! double; one without gets a clear answer and exit code and no CodePipeline call; nothing
//! panics or hangs (a generous process timeout turns a hang into a failure); and no credential —
//! the events' artifact credentials or the process's own secret key — shows up in stdout,
//! stderr, the Lambda responses or the results CodePipeline receives.
//!
//! Needs moto (SNAPSTAGE_MOTO_CLOUD, set by `make test`) and the binaries
//! (`cargo build --workspace --bins`); prints SKIP without moto, and without cargo-lambda for
//! the emulator part.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;
#[path = "../../shared/tests/corpus/mod.rs"]
mod corpus;

use std::time::Duration;

use common::{bin_dir, lambda_invoker, moto};
use corpus::{SECRET_KEY, SESSION_TOKEN};
use serde_json::Value;
use snapstage::job::invocation::job_id;
use snapstage_localenv::invoker::{CliInvoker, Functions, Invoked, Invoker};
use snapstage_localenv::jobservice::{JobOutcome, JobService, JobSpec, new_execution_id};

const FUNCTIONS: [&str; 5] = [
    "snapshot-production",
    "restore-to-staging",
    "deploy-staging-db",
    "replicate-artifacts-back",
    "roll-out-release",
];

/// The function processes' own secret key: must never be printed either.
const ENV_SECRET: &str = "FAKEenvSECRETaccessKEYdoNotPrint0123456789";

const FAILURE_TYPES: [&str; 6] = [
    "JobFailed",
    "ConfigurationError",
    "PermissionError",
    "RevisionOutOfSync",
    "RevisionUnavailable",
    "SystemUnavailable",
];

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Every `stride`-th payload of the corpus (at least `min` of them), plus every payload whose
/// job id is a hostile value rather than a job id.
fn sample(min: usize) -> Vec<Value> {
    let all = corpus::corpus();
    assert!(all.len() >= min, "corpus has {} payloads", all.len());
    let stride = (all.len() / min).max(1);
    all.into_iter()
        .enumerate()
        .filter(|(i, raw)| i % stride == 0 || job_id(raw).is_some_and(|id| !is_uuid(id)))
        .map(|(_, raw)| raw)
        .collect()
}

fn functions(jobs: &JobService, cloud: &str) -> Functions {
    let mut f = Functions::new(bin_dir(), &jobs.url)
        .moto(cloud)
        .env("AWS_ACCESS_KEY_ID", "AKIAFAKEHOSTILE00001")
        .env("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS", "10")
        .env("RUST_LOG", "debug,aws_smithy_runtime=info,hyper_util=info");
    // Generous: a payload that takes this long is a hang, and fails the test.
    f.timeout = Duration::from_secs(120);
    f
}

/// Gives a payload's job id a job in the double (CodePipeline only accepts results for jobs it
/// made); ids that are not job ids at all (hostile values) stay as they are.
fn with_registered_job(
    jobs: &JobService,
    mut raw: Value,
    function: &str,
) -> (Value, Option<String>, bool) {
    let Some(id) = job_id(&raw).map(str::to_string) else {
        return (raw, None, false);
    };
    if !is_uuid(&id) {
        return (raw, Some(id), false);
    }
    let fresh = jobs.register_job(JobSpec {
        pipeline_name: "hostile".into(),
        stage: "Data".into(),
        action: function.into(),
        execution_id: new_execution_id(),
        ..JobSpec::default()
    });
    raw["CodePipeline.job"]["id"] = Value::from(fresh.clone());
    (raw, Some(fresh), true)
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET_KEY, SESSION_TOKEN, ENV_SECRET] {
        assert!(
            !text.contains(secret),
            "{what} echoed a credential:\n{text}"
        );
    }
}

/// The last JSON line a CLI run printed.
fn last_line(out: &Invoked) -> Value {
    let line = out
        .output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no result printed ({}):\n{}", out.status, out.logs));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn check_typed_outcome(outcome: &JobOutcome, what: &str) {
    if let JobOutcome::Failed {
        failure_type,
        message,
        ..
    } = outcome
    {
        assert!(
            FAILURE_TYPES.contains(&failure_type.as_str()),
            "{what}: {failure_type}"
        );
        assert!(
            !message.trim().is_empty(),
            "{what}: an empty failure message"
        );
        assert!(!message.contains("panicked"), "{what}: {message}");
    }
}

#[tokio::test]
async fn hostile_payloads_through_the_cli_binaries_get_one_typed_answer_each() {
    let Some((cloud, _)) = moto("hostile payloads through the binaries") else {
        return;
    };
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(functions(&jobs, &cloud));
    let payloads = sample(220);
    assert!(payloads.len() >= 200, "{}", payloads.len());
    let (mut with_job, mut hostile_ids, mut without) = (0, 0, 0);
    for (i, raw) in payloads.into_iter().enumerate() {
        let function = FUNCTIONS[i % FUNCTIONS.len()];
        let (raw, id, registered) = with_registered_job(&jobs, raw, function);
        let calls_before = jobs.calls().len();
        let out = invoker
            .invoke(function, &raw)
            .await
            .unwrap_or_else(|e| panic!("payload {i} ({function}): {e}"));
        let what = format!("payload {i} ({function}, {})", out.status);
        assert_no_secret(&what, &out.output);
        assert_no_secret(&what, &out.logs);
        assert!(
            !out.logs.contains("panicked at"),
            "{what}: a panic:\n{}",
            out.logs
        );
        let last = last_line(&out);
        match (id, registered) {
            (Some(id), true) => {
                with_job += 1;
                assert!(out.ok, "{what}: the result was delivered:\n{}", out.logs);
                assert_eq!(jobs.result_calls_for(&id), 1, "{what}: exactly one result");
                let outcome = jobs.result_for(&id).unwrap();
                check_typed_outcome(&outcome, &what);
                assert_eq!(last["jobId"], id.as_str(), "{what}");
            }
            (Some(id), false) => {
                // Not a job id CodePipeline would ever send: it refuses the result, and the
                // process says so with exit status 3.
                hostile_ids += 1;
                assert_eq!(
                    out.status.split(' ').nth(2),
                    Some("3"),
                    "{what}: {}",
                    out.output
                );
                assert_eq!(last["reportedToCodePipeline"], false, "{what}");
                assert_eq!(jobs.result_calls_for(&id), 0, "{what}");
            }
            (None, _) => {
                without += 1;
                let status = last["status"].as_str().unwrap_or_default();
                assert!(
                    ["Succeeded", "InProgress", "Failed", "Rejected", "Ignored"].contains(&status),
                    "{what}: {last}"
                );
                if matches!(status, "Failed" | "Rejected") {
                    assert!(!out.ok, "{what}: a failure exits non-zero");
                    let kind = last["failureType"].as_str().unwrap_or_default();
                    assert!(FAILURE_TYPES.contains(&kind), "{what}: {last}");
                    assert!(
                        !last["message"]
                            .as_str()
                            .unwrap_or_default()
                            .trim()
                            .is_empty(),
                        "{what}: {last}"
                    );
                }
                assert_eq!(
                    jobs.calls().len(),
                    calls_before,
                    "{what}: no job id, yet CodePipeline was called"
                );
            }
        }
    }
    for call in jobs.calls() {
        assert_no_secret("a job result", &call.body.to_string());
    }
    eprintln!(
        "hostile payloads through the CLI binaries: {with_job} with a job, {hostile_ids} with a hostile job id, {without} without"
    );
    assert!(
        with_job >= 50 && without >= 50 && hostile_ids >= 1,
        "{with_job} / {hostile_ids} / {without}"
    );
}

#[tokio::test]
async fn hostile_payloads_through_the_runtime_api_emulator_get_one_typed_answer_each() {
    let Some((cloud, _)) = moto("hostile payloads through the Runtime API") else {
        return;
    };
    let jobs = JobService::start().await.unwrap();
    let Some(invoker) = lambda_invoker(functions(&jobs, &cloud), "hostile-lambda").await else {
        return;
    };
    let function = "snapshot-production";
    let payloads: Vec<Value> = sample(60);
    let mut with_job = 0;
    let total = payloads.len();
    for (i, raw) in payloads.into_iter().enumerate() {
        let (raw, id, registered) = with_registered_job(&jobs, raw, function);
        let calls_before = jobs.calls().len();
        let out = invoker
            .invoke(function, &raw)
            .await
            .unwrap_or_else(|e| panic!("payload {i}: {e}"));
        let what = format!("payload {i} ({})", out.status);
        assert!(!out.status.contains("exited"), "{what}: the runtime died");
        assert_no_secret(&what, &out.output);
        match (id, registered) {
            (Some(id), true) => {
                with_job += 1;
                assert!(out.ok, "{what}: {}", out.output);
                assert_eq!(jobs.result_calls_for(&id), 1, "{what}");
                check_typed_outcome(&jobs.result_for(&id).unwrap(), &what);
            }
            (Some(_), false) => {}
            (None, _) => {
                assert!(!out.output.trim().is_empty(), "{what}: an answer");
                assert_eq!(jobs.calls().len(), calls_before, "{what}");
            }
        }
    }
    let log =
        std::fs::read_to_string(common::scratch("hostile-lambda").join(format!("{function}.log")))
            .unwrap_or_default();
    assert!(!log.is_empty(), "the runtime logged");
    assert_no_secret("the runtime's log", &log);
    assert!(!log.contains("panicked at"), "a panic in the runtime log");
    eprintln!("hostile payloads through the Runtime API emulator: {total}, {with_job} with a job");
    assert!(with_job >= 10, "{with_job}");
}
