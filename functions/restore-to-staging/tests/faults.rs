//! restore-to-staging when its external calls go wrong: the CLI binary against moto's EC2 API
//! through the fault-injecting proxy, and against the CodePipeline job-service double. Transient
//! faults are retried and the restore still succeeds; permanent ones are typed failures with a
//! clear message; a hang is cut by the timeouts; and a run cut short after any call, then
//! re-run, leaves exactly one staging volume, counted through the EC2 API.
//!
//! Needs `SNAPSTAGE_MOTO_CLOUD` (set by `make test`); prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use serde_json::{Value, json};
use snapstage_localenv::event::{JobEventSpec, job_event};
use snapstage_localenv::faults::{Crash, Fault, FaultProxy, Rule};
use snapstage_localenv::jobservice::{JobOutcome, JobService, JobSpec, new_execution_id};
use snapstage_localenv::testkit::{self, CliRun, spawn_cli, unique};

const BIN: &str = env!("CARGO_BIN_EXE_restore-to-staging");
const FN: &str = "restore-to-staging";

fn moto() -> Option<String> {
    testkit::moto("restore-to-staging faults").map(|m| m.cloud)
}

async fn ec2(moto: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&testkit::sdk_config(moto).await)
}

/// A production volume's snapshot, made straight in moto.
async fn production_snapshot(ec2: &aws_sdk_ec2::Client) -> String {
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Volume)
        .tags(Tag::builder().key("env").value("production").build())
        .build();
    let v = ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(10)
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    let s = ec2
        .create_snapshot()
        .volume_id(v.volume_id().unwrap())
        .send()
        .await
        .unwrap();
    s.snapshot_id().unwrap().to_string()
}

/// Staging volumes tagged with the run, straight from moto (not through the proxy).
async fn volumes_of_run(ec2: &aws_sdk_ec2::Client, execution: &str) -> Vec<String> {
    ec2.describe_volumes()
        .filters(
            Filter::builder()
                .name("tag:snapstage:execution")
                .values(execution)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .volumes()
        .iter()
        .filter_map(|v| v.volume_id().map(String::from))
        .collect()
}

async fn run(endpoint: &str, event: &Value, env: &[(&str, &str)]) -> CliRun {
    let (endpoint, event) = (endpoint.to_string(), event.clone());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        testkit::run_cli(BIN, &endpoint, &event, &["--poll-interval", "0.2"], &env)
    })
    .await
    .unwrap()
}

fn request(snap: &str, run_id: &str) -> Value {
    json!({"snapshotId": snap, "availabilityZone": "us-east-1b", "executionId": run_id})
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_faults_are_retried_and_one_volume_is_made() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let snap = production_snapshot(&ec2).await;
    let run_id = unique("restore-transient");
    let proxy = FaultProxy::start(&url).unwrap();
    proxy
        .add(Rule::new(
            "DescribeSnapshots",
            Fault::ec2(500, "InternalError", "An internal error has occurred"),
            1,
        ))
        .add(Rule::new("DescribeVolumes", Fault::Reset, 1))
        .add(Rule::new(
            "CreateVolume",
            Fault::ec2_request_limit_exceeded(),
            1,
        ))
        .add(Rule::new("CreateVolume", Fault::status(502), 1))
        .add(Rule::new(
            "DescribeVolumes",
            Fault::Slow(Duration::from_millis(500)),
            1,
        ));
    let r = run(&proxy.url, &request(&snap, &run_id), &[]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    let vols = volumes_of_run(&ec2, &run_id).await;
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(r.output("VolumeId"), vols[0]);
    assert_eq!(proxy.count("CreateVolume"), 3, "{:?}", proxy.seen());
}

/// moto does not honour CreateVolume's client token (AWS does): a lost answer retried by the SDK
/// made a second volume there. The create is sent once per try and the run's tag looked up first.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_create_answer_does_not_make_a_second_volume() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let snap = production_snapshot(&ec2).await;
    let run_id = unique("restore-lost");
    let proxy = FaultProxy::start(&url).unwrap();
    proxy.add(Rule::new("CreateVolume", Fault::LoseAnswer, 1));
    let r = run(&proxy.url, &request(&snap, &run_id), &[]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    let vols = volumes_of_run(&ec2, &run_id).await;
    assert_eq!(vols.len(), 1, "{vols:?}");
}

async fn job(jobs: &JobService, snap: &str) -> (String, Value) {
    let job = jobs.register_job(JobSpec {
        pipeline_name: "shop".into(),
        stage: "Staging".into(),
        action: "Restore".into(),
        execution_id: new_execution_id(),
        ..JobSpec::default()
    });
    let up = json!({"snapshotId": snap, "availabilityZone": "us-east-1a"}).to_string();
    let event = job_event(&JobEventSpec {
        job_id: &job,
        function_name: FN,
        user_parameters: &up,
        continuation_token: None,
    });
    (job, event)
}

fn failure(jobs: &JobService, job: &str) -> (String, String) {
    assert_eq!(jobs.result_calls_for(job), 1, "{:?}", jobs.calls());
    match jobs.result_for(job).unwrap() {
        JobOutcome::Failed {
            failure_type,
            message,
            ..
        } => (failure_type, message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permission_error_reaches_codepipeline_as_permission_error() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let snap = production_snapshot(&ec2).await;
    let jobs = JobService::start().await.unwrap();
    let proxy = FaultProxy::start(&url).unwrap();
    proxy.add(Rule::always(
        "CreateVolume",
        Fault::ec2(
            403,
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
        ),
    ));
    let (job, event) = job(&jobs, &snap).await;
    let r = run(
        &proxy.url,
        &event,
        &[("AWS_ENDPOINT_URL_CODEPIPELINE", &jobs.url)],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (kind, message) = failure(&jobs, &job);
    assert_eq!(kind, "PermissionError", "{message}");
    assert!(
        message.contains("CreateVolume") && message.contains("UnauthorizedOperation"),
        "{message}"
    );
    assert_eq!(proxy.count("CreateVolume"), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_ec2_is_system_unavailable_within_the_timeouts() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let snap = production_snapshot(&ec2).await;
    let jobs = JobService::start().await.unwrap();
    let proxy = FaultProxy::start(&url).unwrap();
    proxy.add(Rule::always("DescribeSnapshots", Fault::Hang));
    let (job, event) = job(&jobs, &snap).await;
    let r = run(
        &proxy.url,
        &event,
        &[
            ("AWS_ENDPOINT_URL_CODEPIPELINE", &jobs.url),
            ("SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS", "1"),
            ("SNAPSTAGE_AWS_OPERATION_TIMEOUT_SECS", "4"),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (kind, message) = failure(&jobs, &job);
    assert_eq!(kind, "SystemUnavailable", "{message}");
    assert!(
        message.contains("DescribeSnapshots") && message.to_lowercase().contains("timeout"),
        "{message}"
    );
    assert!(
        proxy.count("DescribeSnapshots") >= 2,
        "retried before giving up"
    );
}

async fn calls_of_a_clean_run(url: &str, ec2: &aws_sdk_ec2::Client) -> usize {
    let snap = production_snapshot(ec2).await;
    let proxy = FaultProxy::start(url).unwrap();
    let r = run(&proxy.url, &request(&snap, &unique("count")), &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    proxy.seen().len()
}

/// A run cut short after each of its external calls in turn, then re-run with the same
/// execution: exactly one staging volume carries the run's tag.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_cut_short_after_any_call_converges_to_one_volume() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let calls = calls_of_a_clean_run(&url, &ec2).await;
    assert!(calls >= 3, "{calls}");
    for crash in [Crash::LoseAnswer, Crash::HangAfter] {
        for n in 1..=calls {
            let snap = production_snapshot(&ec2).await;
            let run_id = unique("restore-crash");
            let req = request(&snap, &run_id);
            let proxy = FaultProxy::start(&url).unwrap();
            proxy.crash_after(n, crash);
            match crash {
                Crash::LoseAnswer => {
                    let r = run(&proxy.url, &req, &[("AWS_MAX_ATTEMPTS", "2")]).await;
                    assert_ne!(r.code, 0, "call {n} lost: the run cannot succeed");
                }
                Crash::HangAfter => {
                    let mut child = spawn_cli(BIN, &proxy.url, &req, &[], &[]);
                    for _ in 0..6000 {
                        if proxy.seen().len() > n || child.exited() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    child.kill();
                }
            }
            proxy.heal();
            let r = run(&proxy.url, &req, &[]).await;
            assert_eq!(
                r.code, 0,
                "re-run after {crash:?} at call {n}: {}",
                r.stderr
            );
            let vols = volumes_of_run(&ec2, &run_id).await;
            assert_eq!(
                vols.len(),
                1,
                "{crash:?} after call {n}: exactly one volume, got {vols:?}"
            );
            assert_eq!(r.output("VolumeId"), vols[0]);
        }
    }
}
