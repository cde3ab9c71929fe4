//! snapshot-production when its external calls go wrong: the CLI binary against moto's EC2 API
//! through the fault-injecting proxy (`snapstage_localenv::faults`), and against the CodePipeline
//! job-service double. What a user notices: transient faults are retried and the step still
//! succeeds; permanent ones end in a typed failure with a clear message; nothing hangs past the
//! budget; and however a run is cut short, re-running it leaves exactly one snapshot, counted
//! through the EC2 API.
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

const BIN: &str = env!("CARGO_BIN_EXE_snapshot-production");
const FN: &str = "snapshot-production";

fn moto() -> Option<String> {
    testkit::moto("snapshot-production faults").map(|m| m.cloud)
}

async fn ec2(moto: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&testkit::sdk_config(moto).await)
}

async fn production_volume(ec2: &aws_sdk_ec2::Client) -> String {
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Volume)
        .tags(Tag::builder().key("env").value("production").build())
        .build();
    let v = ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(8)
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    v.volume_id().unwrap().to_string()
}

/// Snapshots tagged with the run, straight from moto (not through the proxy, not our code).
async fn snapshots_of_run(ec2: &aws_sdk_ec2::Client, execution: &str) -> Vec<String> {
    let out = ec2
        .describe_snapshots()
        .filters(
            Filter::builder()
                .name("tag:snapstage:execution")
                .values(execution)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(String::from))
        .collect()
}

/// Runs the CLI on a blocking thread (the job service and the proxy keep serving).
async fn run(endpoint: &str, event: &Value, args: &[&str], env: &[(&str, &str)]) -> CliRun {
    let (endpoint, event) = (endpoint.to_string(), event.clone());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        testkit::run_cli(BIN, &endpoint, &event, &args, &env)
    })
    .await
    .unwrap()
}

fn message(r: &CliRun) -> String {
    r.last()["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_5xx_and_resets_are_retried_and_one_snapshot_is_made() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let vol = production_volume(&ec2).await;
    let run_id = unique("faults-transient");
    let proxy = FaultProxy::start(&url).unwrap();
    proxy
        .add(Rule::new(
            "DescribeSnapshots",
            Fault::ec2_request_limit_exceeded(),
            1,
        ))
        .add(Rule::new(
            "DescribeSnapshots",
            Fault::ec2(500, "InternalError", "An internal error has occurred"),
            1,
        ))
        .add(Rule::new(
            "CreateSnapshot",
            Fault::ec2(400, "Throttling", "Rate exceeded"),
            1,
        ))
        .add(Rule::new(
            "CreateSnapshot",
            Fault::ec2(503, "Unavailable", "The server is overloaded"),
            1,
        ))
        .add(Rule::new("DescribeSnapshots", Fault::Reset, 1).after(1))
        .add(Rule::new(
            "DescribeSnapshots",
            Fault::Slow(Duration::from_millis(700)),
            1,
        ));

    let r = run(
        &proxy.url,
        &json!({"volumeIds": [vol], "executionId": run_id}),
        &[],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    assert_eq!(r.last()["status"], "Succeeded", "{}", r.last());
    let snaps = snapshots_of_run(&ec2, &run_id).await;
    assert_eq!(snaps.len(), 1, "exactly one snapshot: {snaps:?}");
    assert_eq!(r.output("SnapshotId"), snaps[0]);
    // Each faulted call was tried again: two refusals, then the one that made the snapshot.
    assert_eq!(proxy.count("CreateSnapshot"), 3, "{:?}", proxy.seen());
}

/// The finding fault injection turned up: CreateSnapshot has no client token, and the SDK
/// retried it after a lost answer, making a second snapshot. It is now sent once per try, and
/// the run's tag is looked up before the next try.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_create_answer_does_not_make_a_second_snapshot() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let vol = production_volume(&ec2).await;
    let run_id = unique("faults-lost");
    let proxy = FaultProxy::start(&url).unwrap();
    proxy.add(Rule::new("CreateSnapshot", Fault::LoseAnswer, 1));

    let r = run(
        &proxy.url,
        &json!({"volumeIds": [vol], "executionId": run_id}),
        &[],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    let snaps = snapshots_of_run(&ec2, &run_id).await;
    assert_eq!(
        snaps.len(),
        1,
        "one snapshot after a lost answer: {snaps:?}"
    );
    assert_eq!(r.output("SnapshotId"), snaps[0]);
}

/// The same for CreateSnapshots (several volumes of one instance at one point in time): no
/// client token either, so a lost answer must not make a second group.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_group_create_answer_does_not_make_a_second_group() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let r = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let instance = r.instances()[0].instance_id().unwrap().to_string();
    let mut vols = Vec::new();
    for device in ["/dev/sdf", "/dev/sdg"] {
        let v = production_volume(&ec2).await;
        ec2.attach_volume()
            .volume_id(&v)
            .instance_id(&instance)
            .device(device)
            .send()
            .await
            .unwrap();
        vols.push(v);
    }
    let run_id = unique("faults-lost-group");
    let proxy = FaultProxy::start(&url).unwrap();
    proxy.add(Rule::new("CreateSnapshots", Fault::LoseAnswer, 1));

    let r = run(
        &proxy.url,
        &json!({"volumeIds": vols, "executionId": run_id, "consistentGroup": true}),
        &[],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    assert_eq!(proxy.count("CreateSnapshots"), 1, "{:?}", proxy.seen());
    assert_eq!(r.output("PointInTime"), "group");
    let mut snaps = snapshots_of_run(&ec2, &run_id).await;
    snaps.sort();
    let mut reported: Vec<String> = r
        .output("SnapshotIds")
        .split(',')
        .map(String::from)
        .collect();
    reported.sort();
    assert_eq!(snaps, reported, "one group after a lost answer");
    assert_eq!(snaps.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_never_comes_is_cut_by_the_attempt_timeout_and_retried() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let vol = production_volume(&ec2).await;
    let run_id = unique("faults-hang-once");
    let proxy = FaultProxy::start(&url).unwrap();
    proxy.add(Rule::new("DescribeSnapshots", Fault::Hang, 1));
    let r = run(
        &proxy.url,
        &json!({"volumeIds": [vol], "executionId": run_id}),
        &[],
        &[("SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS", "2")],
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    assert_eq!(snapshots_of_run(&ec2, &run_id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permission_error_is_reported_once_as_permission_error_without_retries() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let vol = production_volume(&ec2).await;
    let jobs = JobService::start().await.unwrap();
    let proxy = FaultProxy::start(&url).unwrap();
    proxy.add(Rule::always(
        "CreateSnapshot",
        Fault::ec2(
            403,
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
        ),
    ));
    let job = jobs.register_job(JobSpec {
        pipeline_name: "shop".into(),
        stage: "Data".into(),
        action: "Snapshot".into(),
        execution_id: new_execution_id(),
        ..JobSpec::default()
    });
    let up = json!({"volumeIds": [vol]}).to_string();
    let event = job_event(&JobEventSpec {
        job_id: &job,
        function_name: FN,
        user_parameters: &up,
        continuation_token: None,
    });
    let r = run(
        &proxy.url,
        &event,
        &[],
        &[("AWS_ENDPOINT_URL_CODEPIPELINE", &jobs.url)],
    )
    .await;
    assert_eq!(r.code, 0, "a delivered failure exits 0: {}", r.stderr);
    assert_eq!(jobs.result_calls_for(&job), 1);
    match jobs.result_for(&job).unwrap() {
        JobOutcome::Failed {
            failure_type,
            message,
            ..
        } => {
            assert_eq!(failure_type, "PermissionError", "{message}");
            assert!(
                message.contains("CreateSnapshot") && message.contains("UnauthorizedOperation"),
                "the message names the call and the code: {message}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(
        proxy.count("CreateSnapshot"),
        1,
        "a permission error is not retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_throttling_is_system_unavailable_after_bounded_retries() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let vol = production_volume(&ec2).await;
    let run_id = unique("faults-throttled");
    let proxy = FaultProxy::start(&url).unwrap();
    proxy.add(Rule::always(
        "CreateSnapshot",
        Fault::ec2_request_limit_exceeded(),
    ));
    let r = run(
        &proxy.url,
        &json!({"volumeIds": [vol], "executionId": run_id}),
        &[],
        &[],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.last());
    assert_eq!(r.last()["failureType"], "SystemUnavailable", "{}", r.last());
    let msg = message(&r);
    assert!(
        msg.contains("CreateSnapshot") && msg.contains("RequestLimitExceeded"),
        "{msg}"
    );
    assert!(snapshots_of_run(&ec2, &run_id).await.is_empty());
    assert_eq!(
        proxy.count("CreateSnapshot"),
        3,
        "bounded: {:?}",
        proxy.seen()
    );
}

/// Everything hangs: EC2 and CodePipeline. The step is cut at its budget, the report at the
/// invocation's deadline, and the CLI says the result was not delivered (exit 3). When the
/// services come back, the same job (Lambda's retry) gets exactly one result.
#[tokio::test(flavor = "multi_thread")]
async fn an_unresponsive_service_never_holds_the_function_past_its_budget() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let vol = production_volume(&ec2).await;
    let jobs = JobService::start().await.unwrap();
    let cloud = FaultProxy::start(&url).unwrap();
    let pipeline = FaultProxy::start(&jobs.url).unwrap();
    cloud.add(Rule::always("*", Fault::Hang));
    pipeline.add(Rule::always("*", Fault::Hang));
    let job = jobs.register_job(JobSpec {
        pipeline_name: "shop".into(),
        stage: "Data".into(),
        action: "Snapshot".into(),
        execution_id: new_execution_id(),
        ..JobSpec::default()
    });
    let up = json!({"volumeIds": [vol]}).to_string();
    let event = job_event(&JobEventSpec {
        job_id: &job,
        function_name: FN,
        user_parameters: &up,
        continuation_token: None,
    });
    let env = [
        ("AWS_ENDPOINT_URL_CODEPIPELINE", pipeline.url.as_str()),
        ("SNAPSTAGE_DEADLINE_MARGIN_MS", "3000"),
    ];
    // The process timeout of run_cli (minutes) is the hang detector; the budget is 8 s.
    let r = run(&cloud.url, &event, &["--step-budget", "8"], &env).await;
    assert_eq!(r.code, 3, "{}\n{}", r.last(), r.stderr);
    assert_eq!(r.last()["reportedToCodePipeline"], false);
    assert!(
        r.last()["reportError"]
            .as_str()
            .unwrap_or_default()
            .contains("not acknowledged"),
        "{}",
        r.last()
    );
    assert_eq!(jobs.result_calls_for(&job), 0);

    cloud.heal();
    pipeline.heal();
    let r = run(&cloud.url, &event, &["--step-budget", "60"], &env).await;
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    assert_eq!(jobs.result_calls_for(&job), 1);
    let outcome = jobs.result_for(&job).unwrap();
    assert_ne!(outcome.status(), "Failed", "{outcome:?}");
}

/// How many external calls one clean run makes (through a proxy that only counts).
async fn calls_of_a_clean_run(url: &str, ec2: &aws_sdk_ec2::Client) -> usize {
    let vol = production_volume(ec2).await;
    let proxy = FaultProxy::start(url).unwrap();
    let r = run(
        &proxy.url,
        &json!({"volumeIds": [vol], "executionId": unique("count")}),
        &[],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    proxy.seen().len()
}

/// A run cut short after each of its external calls in turn — its answer lost and nothing after
/// it reaching EC2, or the process killed while it waits for the next answer — then re-run with
/// the same execution: exactly one snapshot carries the run's tag.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_cut_short_after_any_call_converges_to_one_snapshot() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let calls = calls_of_a_clean_run(&url, &ec2).await;
    assert!(calls >= 3, "find, create, describe: {calls}");
    for crash in [Crash::LoseAnswer, Crash::HangAfter] {
        for n in 1..=calls {
            let vol = production_volume(&ec2).await;
            let run_id = unique("crash");
            let req = json!({"volumeIds": [vol], "executionId": run_id});
            let proxy = FaultProxy::start(&url).unwrap();
            proxy.crash_after(n, crash);
            match crash {
                Crash::LoseAnswer => {
                    let r = run(&proxy.url, &req, &[], &[("AWS_MAX_ATTEMPTS", "2")]).await;
                    assert_ne!(r.code, 0, "call {n} lost: the run cannot succeed");
                }
                Crash::HangAfter => {
                    let mut child = spawn_cli(BIN, &proxy.url, &req, &[], &[]);
                    // Bounded: the run either reaches call n+1 (and hangs there) or ends.
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
            let r = run(&proxy.url, &req, &[], &[]).await;
            assert_eq!(
                r.code, 0,
                "re-run after {crash:?} at call {n}: {}",
                r.stderr
            );
            let snaps = snapshots_of_run(&ec2, &run_id).await;
            assert_eq!(
                snaps.len(),
                1,
                "{crash:?} after call {n}: exactly one snapshot, got {snaps:?}"
            );
            assert_eq!(r.output("SnapshotId"), snaps[0]);
        }
    }
}

/// The cluster CA of `shared/src/kube/client/tests.rs`, base64 of PEM as DescribeCluster gives it.
const CA_BASE64: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJnVENDQVNlZ0F3SUJBZ0lVZDZmZVVQNGE2d3phVmtQVWJ5UHl6SGVIdUtZd0NnWUlLb1pJemowRUF3SXcKRlRFVE1CRUdBMVVFQXd3S2EzVmlaWEp1WlhSbGN6QWdGdzB5TmpFeE1qRXlNekF5TVRGYUdBOHlNVEkyTVRBeQpPREl6TURJeE1Wb3dGVEVUTUJFR0ExVUVBd3dLYTNWaVpYSnVaWFJsY3pCWk1CTUdCeXFHU000OUFnRUdDQ3FHClNNNDlBd0VIQTBJQUJMeTk0cEVoelZFR2EvSmZrQlRsMVMvdjhmY1F4MndIM1h5L1dKK2RaRVZTOUx3Y1llanIKcXlBbllVVStkdHZRcFh3ckErU1NDd29FZmtneGkrZjFEd3lqVXpCUk1CMEdBMVVkRGdRV0JCU3NTUXpJbWRUQQpOdHdOTGJBNkl5MlZENDZNdmpBZkJnTlZIU01FR0RBV2dCU3NTUXpJbWRUQU50d05MYkE2SXkyVkQ0Nk12akFQCkJnTlZIUk1CQWY4RUJUQURBUUgvTUFvR0NDcUdTTTQ5QkFNQ0EwZ0FNRVVDSVFDNXdUY3pKWFRZTk1ONUR5T2EKclNNQ05ZelczdkhYbTdrSit2OGZsc3d2MXdJZ2NydTVZd0tlWVdON3EvVjRMMkNRUjN4cllJK0hqNGlyVG9zYQpCYkFSWWdjPQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==";

/// EKS `DescribeCluster` (the CSI backend's way to an EKS cluster) behind the proxy, through
/// the real binary: throttling and 5xx are retried until the answer comes (the run then goes on
/// to the cluster the answer names — a closed port here — and fails there, not at EKS); a missing
/// cluster and a denied call are typed failures naming `cluster.eks.name`; persistent throttling
/// and an unanswered call are `SystemUnavailable` after bounded tries, never a hang.
#[tokio::test(flavor = "multi_thread")]
async fn eks_describe_cluster_faults_are_retried_or_typed() {
    let Some(url) = moto() else { return };
    let proxy = FaultProxy::start(&url).unwrap();
    // An API server address nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let answer = Fault::Respond {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: json!({"cluster": {"name": "prod", "status": "ACTIVE",
            "endpoint": format!("https://127.0.0.1:{closed}"),
            "certificateAuthority": {"data": CA_BASE64}}})
        .to_string(),
    };
    let request = |cluster: &str| {
        json!({"backend": "csi", "volumeIds": ["orders-db-data"], "executionId": unique("eks"),
               "csi": {"cluster": {"eks": {"name": cluster}}, "namespace": "orders"}})
    };
    let go = |cluster: &str| {
        spawn_cli(
            BIN,
            &url,
            &request(cluster),
            &["--no-follow"],
            &[
                ("AWS_ENDPOINT_URL_EKS", proxy.url.as_str()),
                ("SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS", "1"),
                ("SNAPSTAGE_AWS_OPERATION_TIMEOUT_SECS", "4"),
            ],
        )
        .wait_within(Duration::from_secs(180))
    };

    for (what, fault) in [
        (
            "throttled",
            Fault::aws_json(400, "ThrottlingException", "Rate exceeded"),
        ),
        (
            "500",
            Fault::aws_json(500, "ServerException", "internal error"),
        ),
        ("503", Fault::status(503)),
    ] {
        proxy.heal();
        proxy.add(Rule::new("DescribeCluster", fault, 2));
        proxy.add(Rule::new("DescribeCluster", answer.clone(), 1));
        let before = proxy.count("DescribeCluster");
        let r = go("prod");
        assert_eq!(
            proxy.count("DescribeCluster") - before,
            3,
            "{what}: two faults, then the answer\n{}",
            r.stderr
        );
        assert_ne!(r.code, 0, "{what}: the cluster is unreachable");
        let message = r.last()["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("DescribeCluster"),
            "{what}: the run got past EKS: {message}"
        );
    }

    for (what, fault, kind, says) in [
        (
            "not found",
            Fault::aws_json(
                404,
                "ResourceNotFoundException",
                "No cluster found for name: prod.",
            ),
            "ConfigurationError",
            "no EKS cluster named prod",
        ),
        (
            "denied",
            Fault::aws_json(
                403,
                "AccessDeniedException",
                "User is not authorized to perform: eks:DescribeCluster",
            ),
            "PermissionError",
            "AccessDeniedException",
        ),
        (
            "throttled throughout",
            Fault::aws_json(400, "ThrottlingException", "Rate exceeded"),
            "SystemUnavailable",
            "ThrottlingException",
        ),
        (
            "unanswered",
            Fault::Hang,
            "SystemUnavailable",
            "DescribeCluster",
        ),
    ] {
        proxy.heal();
        proxy.add(Rule::always("DescribeCluster", fault));
        let before = proxy.count("DescribeCluster");
        let r = go("prod");
        assert_eq!(r.code, 1, "{what}: {}\n{}", r.last(), r.stderr);
        assert_eq!(r.last()["failureType"], kind, "{what}: {}", r.last());
        let message = r.last()["message"].as_str().unwrap();
        assert!(
            message.contains("cluster.eks.name") && message.contains(says),
            "{what}: {message}"
        );
        let tries = proxy.count("DescribeCluster") - before;
        if kind == "SystemUnavailable" {
            assert!(
                (2..=3).contains(&tries),
                "{what}: retried, bounded: {tries}"
            );
        } else {
            assert_eq!(tries, 1, "{what}: not retried");
        }
    }
}
