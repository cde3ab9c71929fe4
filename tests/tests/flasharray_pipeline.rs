//! A FlashArray / Cloud Block Store pipeline as users configure it: snapshot-production and
//! restore-to-staging, the real binaries, run by the pipeline driver against the job-service
//! double, with `backend: "flasharray"`, the API token in (moto's) Secrets Manager, and the
//! spec-validating FlashArray double as the array.
//!
//! Needs `SNAPSTAGE_MOTO_CLOUD` (set by `make test`), `.venv` for the double, and the function
//! binaries (`make build`); prints SKIP otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use common::bin_dir;
use serde_json::json;
use snapstage_localenv::flasharray_double::{Double, TOKEN};
use snapstage_localenv::invoker::{CliInvoker, Functions};
use snapstage_localenv::jobservice::JobService;
use snapstage_localenv::pipeline::{self, Action, Options, Pipeline, RunStatus};
use snapstage_localenv::testkit::{self, unique};

const GIB: u64 = 1 << 30;

async fn token_secret(cloud: &str) -> String {
    let sm = aws_sdk_secretsmanager::Client::new(&testkit::sdk_config(cloud).await);
    let name = unique("fa-token");
    sm.create_secret()
        .name(&name)
        .secret_string(json!({"apiToken": TOKEN}).to_string())
        .send()
        .await
        .unwrap();
    name
}

fn flasharray(d: &Double, secret: &str) -> serde_json::Value {
    json!({"endpoint": d.url("fa"), "apiTokenSecret": secret})
}

#[tokio::test]
async fn snapshot_then_restore_on_a_flasharray_through_the_pipeline() {
    let Some(m) = testkit::moto("flasharray pipeline") else {
        return;
    };
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed(
        "fa",
        json!({"volumes": [{"name": "orders-db", "provisioned": 32 * GIB}]}),
    )
    .await;
    let secret = token_secret(&m.cloud).await;
    let fa = flasharray(&d, &secret);
    let snapshot = json!({"backend": "flasharray", "volumeIds": ["orders-db"], "flasharray": fa});
    let restore =
        json!({"backend": "flasharray", "snapshotId": "#{Snapshot.SnapshotId}", "flasharray": fa});
    let p = Pipeline {
        name: "orders".into(),
        actions: vec![
            Action::new(
                "Snapshot",
                "Snapshot",
                "snapshot-production",
                &snapshot.to_string(),
            ),
            Action::new(
                "Restore",
                "Restore",
                "restore-to-staging",
                &restore.to_string(),
            ),
        ],
    };
    let jobs = JobService::start().await.unwrap();
    let functions = Functions::new(bin_dir(), &jobs.url)
        .moto(&m.cloud)
        .env("SNAPSTAGE_FLASHARRAY_ALLOW_HTTP_FOR_TESTS", "1");
    let invoker = CliInvoker::new(functions);
    let run = pipeline::run(&p, &jobs, &invoker, &Options::default())
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);

    let snap = run.variable("Snapshot", "SnapshotId").unwrap().to_string();
    assert!(snap.starts_with("orders-db.snapstage-"), "{snap}");
    assert_eq!(run.variable("Snapshot", "Backend"), Some("flasharray"));
    let vol = run.variable("Restore", "VolumeId").unwrap().to_string();
    assert!(vol.starts_with("orders-db-staging-"), "{vol}");
    assert_eq!(run.variable("Restore", "SnapshotId"), Some(snap.as_str()));
    assert_eq!(run.variable("Restore", "SizeGiB"), Some("32"));

    // On the array: one snapshot, one staging copy, production untouched; every session
    // that logged in logged out.
    let st = d.state("fa").await;
    assert_eq!(st["volume_snapshots"], json!([snap]));
    assert!(st["volumes"][&vol].is_object(), "{st}");
    assert_eq!(st["volumes"]["orders-db"]["overwritten"], 0);
    assert!(st["logins"].as_u64().unwrap() >= 2, "{st}");
    assert_eq!(st["logins"], st["logouts"], "{st}");
    assert_eq!(st["sessions"], 0);

    // The token never shows: not in the results, the variables or the function logs.
    let everything = format!("{:?} {}", jobs.calls(), run.timeline.render());
    assert!(!everything.contains(TOKEN));
    d.assert_no_violations().await;
}

#[tokio::test]
async fn a_missing_token_secret_fails_the_action_saying_which_field() {
    let Some(m) = testkit::moto("flasharray pipeline") else {
        return;
    };
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    let missing = unique("no-such-secret");
    let snapshot = json!({"backend": "flasharray", "volumeIds": ["orders-db"],
        "flasharray": flasharray(&d, &missing)});
    let p = Pipeline {
        name: "orders".into(),
        actions: vec![Action::new(
            "Snapshot",
            "Snapshot",
            "snapshot-production",
            &snapshot.to_string(),
        )],
    };
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(
        Functions::new(bin_dir(), &jobs.url)
            .moto(&m.cloud)
            .env("SNAPSTAGE_FLASHARRAY_ALLOW_HTTP_FOR_TESTS", "1"),
    );
    let run = pipeline::run(&p, &jobs, &invoker, &Options::default())
        .await
        .unwrap();
    match &run.status {
        RunStatus::Failed { action, reason } => {
            assert_eq!(action, "Snapshot");
            assert!(reason.contains("ConfigurationError"), "{reason}");
            assert!(
                reason.contains("flasharray.apiTokenSecret") && reason.contains(&missing),
                "{reason}"
            );
        }
        other => panic!("expected a failure, got {other}"),
    }
    let st = d.state("fa").await;
    assert_eq!(st["logins"], 0, "no login without a token");
}

/// The hybrid path: a protection group snapshot on the on-prem FlashArray, replicated now to
/// Cloud Block Store (the action waits through continuations while the transfer runs), then
/// the newest replicated snapshot of one volume restored on Cloud Block Store.
#[tokio::test]
async fn a_protection_group_replicates_to_cloud_block_store_and_restores_there() {
    let Some(m) = testkit::moto("flasharray pipeline") else {
        return;
    };
    let Some(d) = Double::start(&["fa-onprem", "cbs-cloud"]) else {
        return;
    };
    d.seed(
        "fa-onprem",
        json!({
            "volumes": [{"name": "db-data", "provisioned": 4 * GIB}, {"name": "db-log", "provisioned": GIB}],
            "pgroups": [{"name": "pg-db", "volumes": ["db-data", "db-log"], "targets": ["cbs-cloud"]}]
        }),
    )
    .await;
    d.configure("fa-onprem", json!({"transfer_step": 0.25}))
        .await;
    let secret = token_secret(&m.cloud).await;
    let snapshot = json!({"backend": "flasharray",
        "flasharray": {"endpoint": d.url("fa-onprem"), "apiTokenSecret": secret, "protectionGroup": "pg-db"}});
    let restore = json!({"backend": "flasharray", "sourceVolumeId": "db-data",
        "flasharray": {"endpoint": d.url("cbs-cloud"), "apiTokenSecret": secret,
                       "replicatedFrom": {"array": "fa-onprem", "protectionGroup": "pg-db"}}});
    let p = Pipeline {
        name: "orders".into(),
        actions: vec![
            Action::new(
                "Snapshot",
                "Snapshot",
                "snapshot-production",
                &snapshot.to_string(),
            ),
            Action::new(
                "Restore",
                "Restore",
                "restore-to-staging",
                &restore.to_string(),
            ),
        ],
    };
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(
        Functions::new(bin_dir(), &jobs.url)
            .moto(&m.cloud)
            .env("SNAPSTAGE_FLASHARRAY_ALLOW_HTTP_FOR_TESTS", "1"),
    );
    let run = pipeline::run(&p, &jobs, &invoker, &Options::default())
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);

    let snap = run.variable("Snapshot", "SnapshotId").unwrap().to_string();
    assert!(snap.starts_with("pg-db.snapstage-"), "{snap}");
    assert_eq!(run.variable("Snapshot", "SourceVolumeIds"), Some("pg-db"));
    // The action waited for the transfer through continuations, not by sleeping.
    let snapshot_steps = run.jobs["Snapshot"].len();
    assert!(snapshot_steps >= 3, "{}", run.timeline);

    let restored = run.variable("Restore", "SnapshotId").unwrap();
    assert_eq!(restored, format!("fa-onprem:{snap}.db-data"));
    let vol = run.variable("Restore", "VolumeId").unwrap().to_string();
    assert!(vol.starts_with("db-data-staging-"), "{vol}");

    let onprem = d.state("fa-onprem").await;
    assert_eq!(onprem["protection_group_snapshots"], json!([snap]));
    let cbs = d.state("cbs-cloud").await;
    assert!(cbs["volumes"][&vol].is_object(), "{cbs}");
    assert_eq!(cbs["logins"], cbs["logouts"]);
    d.assert_no_violations().await;
}

/// replicate-artifacts-back in array mode: the Nexus volume on Cloud Block Store comes back
/// on-prem by the arrays' own replication, waited for through continuations, then copied into
/// the on-prem volume (only with `overwrite: true`) and verified.
#[tokio::test]
async fn array_mode_brings_the_nexus_volume_back_on_prem() {
    let Some(m) = testkit::moto("flasharray pipeline") else {
        return;
    };
    let Some(d) = Double::start(&["cbs-cloud", "fa-onprem"]) else {
        return;
    };
    d.seed(
        "cbs-cloud",
        json!({
            "volumes": [{"name": "nexus-blobs", "provisioned": 8 * GIB}],
            "pgroups": [{"name": "pg-nexus", "volumes": ["nexus-blobs"], "targets": ["fa-onprem"]}]
        }),
    )
    .await;
    d.seed(
        "fa-onprem",
        json!({"volumes": [{"name": "nexus-onprem", "provisioned": 8 * GIB}]}),
    )
    .await;
    d.configure("cbs-cloud", json!({"transfer_step": 0.5}))
        .await;
    let secret = token_secret(&m.cloud).await;
    let params = |overwrite: bool| {
        json!({"array": {
            "source": {"endpoint": d.url("cbs-cloud"), "apiTokenSecret": secret, "protectionGroup": "pg-nexus"},
            "target": {"endpoint": d.url("fa-onprem"), "apiTokenSecret": secret},
            "sourceArray": "cbs-cloud", "volume": "nexus-blobs", "targetVolume": "nexus-onprem",
            "overwrite": overwrite}})
        .to_string()
    };
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(
        Functions::new(bin_dir(), &jobs.url)
            .moto(&m.cloud)
            .env("SNAPSTAGE_FLASHARRAY_ALLOW_HTTP_FOR_TESTS", "1"),
    );
    let pipeline_with = |params: String| Pipeline {
        name: "nexus".into(),
        actions: vec![Action::new(
            "Replicate",
            "Replicate",
            "replicate-artifacts-back",
            &params,
        )],
    };

    // Without overwrite the existing on-prem volume is left alone, and the action says why.
    let run = pipeline::run(
        &pipeline_with(params(false)),
        &jobs,
        &invoker,
        &Options::default(),
    )
    .await
    .unwrap();
    match &run.status {
        RunStatus::Failed { reason, .. } => {
            assert!(reason.contains("array.overwrite"), "{reason}")
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(
        d.state("cbs-cloud").await["protection_group_snapshots"],
        json!([])
    );

    let run = pipeline::run(
        &pipeline_with(params(true)),
        &jobs,
        &invoker,
        &Options::default(),
    )
    .await
    .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);
    assert!(
        run.jobs["Replicate"].len() >= 2,
        "waited for the transfer: {}",
        run.timeline
    );
    let snap = run.variable("Replicate", "SnapshotId").unwrap().to_string();
    assert!(snap.starts_with("pg-nexus.snapstage-"), "{snap}");
    assert_eq!(
        run.variable("Replicate", "ReplicaSnapshotId"),
        Some(format!("cbs-cloud:{snap}.nexus-blobs").as_str())
    );
    assert_eq!(
        run.variable("Replicate", "TargetVolume"),
        Some("nexus-onprem")
    );

    let onprem = d.state("fa-onprem").await;
    assert_eq!(
        onprem["volumes"]["nexus-onprem"]["overwritten"], 1,
        "{onprem}"
    );
    let cloud = d.state("cbs-cloud").await;
    assert_eq!(
        cloud["volumes"]["nexus-blobs"]["overwritten"], 0,
        "the cloud volume is never written"
    );
    assert_eq!(cloud["logins"], cloud["logouts"]);
    assert_eq!(onprem["logins"], onprem["logouts"]);
    d.assert_no_violations().await;
}
