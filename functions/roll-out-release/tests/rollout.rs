//! roll-out-release through its real binary (CLI, event on stdin) against moto (EC2 images and
//! launch templates, Auto Scaling, ELBv2, CloudWatch) behind the instance-refresh double
//! (`snapstage_localenv::refresh`), which answers the instance-refresh API moto lacks by really
//! replacing the group's instances in moto. What each test checks is read from moto directly:
//! the group's launch template version and the image of every instance (EC2 DescribeInstances),
//! never from the double.
//!
//! Needs SNAPSTAGE_MOTO_CLOUD (set by `make test`); prints SKIP without it (a failure under CI=true).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use serde_json::{Value, json};
use snapstage_localenv::asg::{self, Clients, WebTier};
use snapstage_localenv::faults::{Fault, FaultProxy, Rule};
use snapstage_localenv::refresh::RefreshDouble;
use snapstage_localenv::testkit::{self, CliRun, unique};

const BIN: &str = env!("CARGO_BIN_EXE_roll-out-release");

struct Env {
    moto: String,
    double: RefreshDouble,
    clients: Clients,
    tier: WebTier,
}

async fn setup(test: &str, instances: i32) -> Option<Env> {
    let m = testkit::moto(test)?;
    let clients = Clients::new(&m.cloud).await;
    let name = unique("ro").replace('_', "-");
    let tier = asg::seed(&clients, &name, instances).await.unwrap();
    let double = RefreshDouble::start(&m.cloud).unwrap();
    Some(Env {
        moto: m.cloud,
        double,
        clients,
        tier,
    })
}

/// Runs the binary with every AWS call through `endpoint` (the double, or a fault proxy in
/// front of it), the group allowed.
async fn run(env: &Env, endpoint: &str, event: Value, args: &[&str], allowed: &str) -> CliRun {
    let endpoint = endpoint.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let allowed = allowed.to_string();
    let _ = &env.moto;
    tokio::task::spawn_blocking(move || {
        let mut a: Vec<&str> = vec!["--poll-interval", "0"];
        a.extend(args.iter().map(String::as_str));
        testkit::run_cli(
            BIN,
            &endpoint,
            &event,
            &a,
            &[
                ("SNAPSTAGE_ROLLOUT_ALLOWED_GROUPS", allowed.as_str()),
                ("SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS", "20"),
            ],
        )
    })
    .await
    .unwrap()
}

fn release(env: &Env, execution: &str) -> Value {
    json!({
        "autoScalingGroupName": env.tier.group,
        "imageId": env.tier.release_image,
        "minHealthyPercentage": 50,
        "instanceWarmup": 60,
        "executionId": execution,
    })
}

async fn observe(env: &Env) -> asg::Observed {
    asg::observe(&env.clients, &env.tier.group).await.unwrap()
}

fn all(images: &[String], image: &str) -> bool {
    !images.is_empty() && images.iter().all(|i| i == image)
}

#[tokio::test]
async fn a_release_rolls_the_new_ami_onto_every_instance_and_succeeds() {
    let Some(env) = setup("roll-out-release on moto", 3).await else {
        return;
    };
    let before = observe(&env).await;
    assert_eq!(before.version, "1");
    assert!(all(&before.images, &env.tier.base_image), "{before:?}");

    let r = run(
        &env,
        &env.double.url,
        release(&env, &unique("rel")),
        &[],
        &env.tier.group,
    )
    .await;
    assert_eq!(r.code, 0, "{:?}\n{}", r.results, r.stderr);
    assert_eq!(r.last()["status"], "Succeeded", "{}", r.last());
    assert_eq!(r.output("LaunchTemplateVersion"), "2");
    assert_eq!(r.output("PreviousLaunchTemplateVersion"), "1");
    assert_eq!(r.output("RolledBack"), "false");
    assert_eq!(r.output("ImageId"), env.tier.release_image);
    assert!(!r.output("InstanceRefreshId").is_empty());
    // Followed with continuation tokens, percent complete rising.
    let percents: Vec<i64> = r
        .results
        .iter()
        .filter(|v| v["status"] == "InProgress")
        .filter_map(|v| v["percentComplete"].as_i64())
        .collect();
    assert!(percents.len() >= 2, "{:?}", r.results);
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");

    let after = observe(&env).await;
    assert_eq!(after.version, "2", "the group launches the new version");
    assert_eq!(after.images.len(), 3);
    assert!(all(&after.images, &env.tier.release_image), "{after:?}");
    // The new version is the old one with the new image.
    let v = env
        .clients
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(&env.tier.template_id)
        .versions("2")
        .send()
        .await
        .unwrap();
    let v = &v.launch_template_versions()[0];
    // (moto does not copy the source version's other data into a new version; AWS does.)
    let data = v.launch_template_data().unwrap();
    assert_eq!(data.image_id(), Some(env.tier.release_image.as_str()));
    assert!(
        v.version_description()
            .unwrap()
            .starts_with("snapstage run ")
    );
}

#[tokio::test]
async fn a_failing_health_gate_rolls_the_release_back_and_fails_the_job() {
    let Some(env) = setup("roll-out-release health gate on moto", 3).await else {
        return;
    };
    // The new image boots, but its instances fail the load balancer's health checks.
    env.double.fail_health_checks(&env.tier.release_image).await;
    let r = run(
        &env,
        &env.double.url,
        release(&env, &unique("bad")),
        &[],
        &env.tier.group,
    )
    .await;
    assert_eq!(r.code, 1, "{:?}\n{}", r.results, r.stderr);
    let last = r.last();
    assert_eq!(last["status"], "Failed", "{last}");
    assert_eq!(last["failureType"], "JobFailed", "{last}");
    let msg = last["message"].as_str().unwrap();
    assert!(msg.contains("health gate"), "{msg}");
    assert!(msg.contains("Target.FailedHealthChecks"), "{msg}");
    assert!(msg.contains("rolled back"), "{msg}");
    let after = observe(&env).await;
    assert_eq!(
        after.version, "1",
        "the group still launches the previous version"
    );
    assert_eq!(after.images.len(), 3);
    assert!(
        all(&after.images, &env.tier.base_image),
        "every instance is back on the old image: {after:?}"
    );
    assert_eq!(env.double.count("RollbackInstanceRefresh").await, 1);
}

#[tokio::test]
async fn an_alarm_in_alarm_during_the_refresh_rolls_the_release_back() {
    let Some(env) = setup("roll-out-release alarm on moto", 2).await else {
        return;
    };
    let alarm = unique("web-5xx");
    env.clients
        .cloudwatch
        .put_metric_alarm()
        .alarm_name(&alarm)
        .namespace("AWS/ApplicationELB")
        .metric_name("HTTPCode_Target_5XX_Count")
        .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
        .period(60)
        .evaluation_periods(1)
        .threshold(10.0)
        .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .unwrap();
    env.double.hold(true).await;
    let mut event = release(&env, &unique("alarm"));
    event["alarms"] = json!([alarm]);
    let r = run(
        &env,
        &env.double.url,
        event.clone(),
        &["--no-follow"],
        &env.tier.group,
    )
    .await;
    assert_eq!(r.last()["status"], "InProgress", "{}", r.last());
    let token = r.last()["continuationToken"].as_str().unwrap().to_string();
    // The refresh replaces one instance; then the 5xx alarm fires.
    env.double.advance(&env.tier.group).await.unwrap();
    env.double.advance(&env.tier.group).await.unwrap();
    env.clients
        .cloudwatch
        .set_alarm_state()
        .alarm_name(&alarm)
        .state_value(aws_sdk_cloudwatch::types::StateValue::Alarm)
        .state_reason("Threshold Crossed: 42 5xx answers")
        .send()
        .await
        .unwrap();
    env.double.hold(false).await;
    event["continuationToken"] = json!(token);
    let r = run(&env, &env.double.url, event, &[], &env.tier.group).await;
    assert_eq!(r.code, 1, "{:?}\n{}", r.results, r.stderr);
    let msg = r.last()["message"].as_str().unwrap().to_string();
    assert!(msg.contains(&alarm) && msg.contains("rolled back"), "{msg}");
    let after = observe(&env).await;
    assert_eq!(after.version, "1");
    assert!(all(&after.images, &env.tier.base_image), "{after:?}");
}

#[tokio::test]
async fn a_refresh_that_fails_is_rolled_back_by_auto_scaling_and_the_job_fails() {
    let Some(env) = setup("roll-out-release failed refresh on moto", 2).await else {
        return;
    };
    env.double.hold(true).await;
    let event = release(&env, &unique("fail"));
    let r = run(
        &env,
        &env.double.url,
        event.clone(),
        &["--no-follow"],
        &env.tier.group,
    )
    .await;
    let token = r.last()["continuationToken"].as_str().unwrap().to_string();
    env.double.advance(&env.tier.group).await.unwrap();
    env.double.advance(&env.tier.group).await.unwrap();
    assert!(
        env.double
            .fail(
                &env.tier.group,
                "1 instance failed to launch: InsufficientInstanceCapacity"
            )
            .await
    );
    env.double.hold(false).await;
    let mut event = event;
    event["continuationToken"] = json!(token);
    let r = run(&env, &env.double.url, event, &[], &env.tier.group).await;
    assert_eq!(r.code, 1, "{:?}\n{}", r.results, r.stderr);
    let msg = r.last()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("InsufficientInstanceCapacity") && msg.contains("rolled back"),
        "{msg}"
    );
    assert!(all(&observe(&env).await.images, &env.tier.base_image));
}

#[tokio::test]
async fn duplicate_invocations_and_a_lost_answer_start_one_refresh() {
    let Some(env) = setup("roll-out-release duplicates on moto", 2).await else {
        return;
    };
    env.double.hold(true).await;
    // StartInstanceRefresh happens, its answer is lost: the SDK retries and hears
    // InstanceRefreshInProgress; the run finds its own refresh.
    let proxy = FaultProxy::start(&env.double.url).unwrap();
    proxy.add(Rule::new("StartInstanceRefresh", Fault::LoseAnswer, 1));
    let event = release(&env, &unique("dup"));
    let first = run(
        &env,
        &proxy.url,
        event.clone(),
        &["--no-follow"],
        &env.tier.group,
    )
    .await;
    assert_eq!(
        first.last()["status"],
        "InProgress",
        "{}\n{}",
        first.last(),
        first.stderr
    );
    // The same event again (a duplicate delivery), from the start.
    let second = run(
        &env,
        &env.double.url,
        event.clone(),
        &["--no-follow"],
        &env.tier.group,
    )
    .await;
    assert_eq!(second.last()["status"], "InProgress", "{}", second.last());
    assert_eq!(
        env.double.refreshes(&env.tier.group).await.len(),
        1,
        "one refresh"
    );
    let versions = env
        .clients
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(&env.tier.template_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        versions.launch_template_versions().len(),
        2,
        "one new version"
    );
    env.double.hold(false).await;
    let r = run(&env, &env.double.url, event, &[], &env.tier.group).await;
    assert_eq!(r.code, 0, "{:?}\n{}", r.results, r.stderr);
    assert_eq!(env.double.refreshes(&env.tier.group).await.len(), 1);
    assert!(all(&observe(&env).await.images, &env.tier.release_image));
}

#[tokio::test]
async fn a_rollback_request_from_the_cli_returns_the_group_to_the_previous_version() {
    let Some(env) = setup("roll-out-release rollback request on moto", 2).await else {
        return;
    };
    let r = run(
        &env,
        &env.double.url,
        release(&env, &unique("rel")),
        &[],
        &env.tier.group,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(all(&observe(&env).await.images, &env.tier.release_image));
    let request = json!({
        "autoScalingGroupName": env.tier.group,
        "rollback": {"toVersion": "previous"},
    });
    let r = run(&env, &env.double.url, request, &[], &env.tier.group).await;
    assert_eq!(r.code, 0, "{:?}\n{}", r.results, r.stderr);
    assert_eq!(r.output("RolledBack"), "true");
    assert_eq!(r.output("LaunchTemplateVersion"), "1");
    assert_eq!(r.output("PreviousLaunchTemplateVersion"), "2");
    let after = observe(&env).await;
    assert_eq!(after.version, "1");
    assert!(all(&after.images, &env.tier.base_image), "{after:?}");
}

#[tokio::test]
async fn a_group_outside_the_allow_list_is_refused_and_nothing_changes() {
    let Some(env) = setup("roll-out-release allow list on moto", 2).await else {
        return;
    };
    let r = run(
        &env,
        &env.double.url,
        release(&env, &unique("deny")),
        &[],
        "some-other-group",
    )
    .await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.last()["failureType"],
        "ConfigurationError",
        "{}",
        r.last()
    );
    assert!(
        r.last()["message"]
            .as_str()
            .unwrap()
            .contains("SNAPSTAGE_ROLLOUT_ALLOWED_GROUPS")
    );
    assert!(env.double.seen().await.is_empty(), "no AWS call at all");
    assert_eq!(observe(&env).await.version, "1");
}

#[tokio::test]
async fn plan_mode_reports_the_release_and_changes_nothing() {
    let Some(env) = setup("roll-out-release plan on moto", 2).await else {
        return;
    };
    let mut event = release(&env, &unique("plan"));
    event["dryRun"] = json!(true);
    let r = run(&env, &env.double.url, event, &[], &env.tier.group).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.output("DryRun"), "true");
    let summary = r.last()["summary"].as_str().unwrap();
    assert!(
        summary.contains(&env.tier.release_image) && summary.contains(&env.tier.group),
        "{summary}"
    );
    assert_eq!(env.double.count("StartInstanceRefresh").await, 0);
    assert_eq!(env.double.count("CreateLaunchTemplateVersion").await, 0);
    assert_eq!(observe(&env).await.version, "1");
}
