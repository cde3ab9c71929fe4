//! The demo's Release stage through the pipeline driver, the way CodePipeline runs it: the real
//! roll-out-release binary answers the CodePipeline job-service double, continuation by
//! continuation, against a moto Auto Scaling group behind the instance-refresh double. A good
//! AMI ends on every instance and the run succeeds with the stage's variables; an AMI that fails
//! its health checks is rolled back and the run fails at Release, the group on the old image.
//!
//! Needs SNAPSTAGE_MOTO_CLOUD and the binaries (`cargo build --workspace --bins`); SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use common::{bin_dir, moto};
use snapstage_localenv::asg::{self, Clients};
use snapstage_localenv::invoker::{CliInvoker, Functions};
use snapstage_localenv::jobservice::JobService;
use snapstage_localenv::pipeline::{self, Options, Pipeline, RunStatus};
use snapstage_localenv::refresh::RefreshDouble;
use snapstage_localenv::seed;
use snapstage_localenv::testkit::unique;
use snapstage_localenv::timeline::Status;

async fn release_run(failing: bool) -> Option<(pipeline::Run, asg::WebTier, asg::Observed)> {
    let (cloud, _) = moto("the Release stage in the pipeline")?;
    if !bin_dir().join("roll-out-release").is_file() {
        snapstage_localenv::testkit::skip(
            "the Release stage: roll-out-release is not built (cargo build --workspace --bins)",
        );
        return None;
    }
    let clients = Clients::new(&cloud).await;
    let web = asg::seed(&clients, &unique("rp"), seed::WEB_INSTANCES)
        .await
        .unwrap();
    let refresh = RefreshDouble::start(&cloud).unwrap();
    if failing {
        refresh.fail_health_checks(&web.release_image).await;
    }
    let jobs = JobService::start().await.unwrap();
    let functions = Functions::new(bin_dir(), &jobs.url)
        .moto(&cloud)
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", &refresh.url)
        .env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", &refresh.url)
        .env("SNAPSTAGE_ROLLOUT_ALLOWED_GROUPS", &web.group);
    let p = Pipeline {
        name: "shop-release".into(),
        actions: vec![seed::release_action(&web.group, &web.release_image)],
    };
    let run = pipeline::run(&p, &jobs, &CliInvoker::new(functions), &Options::default())
        .await
        .unwrap();
    let seen = asg::observe(&clients, &web.group).await.unwrap();
    Some((run, web, seen))
}

#[tokio::test]
async fn the_release_stage_rolls_the_new_ami_onto_the_group() {
    let Some((run, web, seen)) = release_run(false).await else {
        return;
    };
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);
    let statuses: Vec<Status> = run.timeline.entries.iter().map(|e| e.status).collect();
    assert!(
        statuses.len() >= 3,
        "followed with continuations: {}",
        run.timeline
    );
    assert_eq!(statuses.last(), Some(&Status::Succeeded));
    assert_eq!(
        run.variable("Release", "ImageId"),
        Some(web.release_image.as_str())
    );
    assert_eq!(run.variable("Release", "LaunchTemplateVersion"), Some("2"));
    assert_eq!(
        run.variable("Release", "PreviousLaunchTemplateVersion"),
        Some("1")
    );
    assert_eq!(run.variable("Release", "Status"), Some("Successful"));
    assert_eq!(seen.version, "2");
    assert_eq!(seen.images.len(), seed::WEB_INSTANCES as usize);
    assert!(
        seen.images.iter().all(|i| i == &web.release_image),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_failing_health_gate_rolls_the_release_back_and_fails_the_pipeline() {
    let Some((run, web, seen)) = release_run(true).await else {
        return;
    };
    let RunStatus::Failed { action, reason } = &run.status else {
        panic!("the run should fail at Release: {}", run.timeline);
    };
    assert_eq!(action, "Release");
    assert!(reason.starts_with("JobFailed"), "{reason}");
    assert!(
        reason.contains("health gate") && reason.contains("rolled back"),
        "{reason}"
    );
    assert_eq!(seen.version, "1", "the group launches the previous version");
    assert!(seen.images.iter().all(|i| i == &web.base_image), "{seen:?}");
}
