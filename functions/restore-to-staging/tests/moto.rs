//! restore-to-staging as a user runs it (the CLI binary) against moto's EC2 API.
//! Needs `SNAPSTAGE_MOTO_CLOUD` (set by `make test`); prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use serde_json::{Value, json};
use snapstage_localenv::testkit::{self, unique};

const BIN: &str = env!("CARGO_BIN_EXE_restore-to-staging");

fn moto() -> Option<String> {
    testkit::moto("restore-to-staging").map(|m| m.cloud)
}

/// Runs the binary with `event` on stdin; returns (exit code, the result JSON).
fn run(moto: &str, event: &Value) -> (i32, Value) {
    let r = testkit::run_cli(BIN, moto, event, &[], &[]);
    (r.code, r.last().clone())
}

async fn ec2(moto: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&testkit::sdk_config(moto).await)
}

/// A production volume and a snapshot of it (tagged as snapshot-production tags its own).
async fn production_snapshot(ec2: &aws_sdk_ec2::Client, managed: bool) -> (String, String) {
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Volume)
        .tags(Tag::builder().key("env").value("production").build())
        .build();
    let v = ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(12)
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    let vol = v.volume_id().unwrap().to_string();
    let mut snap = ec2.create_snapshot().volume_id(&vol);
    if managed {
        snap = snap.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .tags(
                    Tag::builder()
                        .key("snapstage:managed-by")
                        .value("snapstage")
                        .build(),
                )
                .build(),
        );
    }
    let s = snap.send().await.unwrap();
    (vol, s.snapshot_id().unwrap().to_string())
}

async fn volumes_of_run(
    ec2: &aws_sdk_ec2::Client,
    execution: &str,
) -> Vec<aws_sdk_ec2::types::Volume> {
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
        .to_vec()
}

#[tokio::test]
async fn restores_a_new_staging_volume_once_per_run() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let (prod, snap) = production_snapshot(&ec2, false).await;
    let run_id = unique("restore");
    let req = json!({"snapshotId": snap, "availabilityZone": "us-east-1b", "executionId": run_id});

    let (code, out) = run(&url, &req);
    assert_eq!(code, 0, "{out}");
    let vol = out["outputVariables"]["VolumeId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(vol, prod, "never the production volume");
    assert_eq!(out["outputVariables"]["AvailabilityZone"], "us-east-1b");
    assert_eq!(out["outputVariables"]["SizeGiB"], "12");

    let (_, again) = run(&url, &req);
    assert_eq!(
        again["outputVariables"]["VolumeId"],
        vol.as_str(),
        "a retry reuses the staging volume"
    );
    let vols = volumes_of_run(&ec2, &run_id).await;
    assert_eq!(vols.len(), 1);
    let v = &vols[0];
    assert_eq!(v.snapshot_id(), Some(snap.as_str()));
    assert_eq!(v.availability_zone(), Some("us-east-1b"));
    let role = v
        .tags()
        .iter()
        .find(|t| t.key() == Some("snapstage:role"))
        .and_then(|t| t.value());
    assert_eq!(role, Some("staging"));
}

#[tokio::test]
async fn newest_snapstage_snapshot_of_a_source_is_restored() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let (prod, snap) = production_snapshot(&ec2, true).await;
    let (code, out) = run(
        &url,
        &json!({"sourceVolumeId": prod, "availabilityZone": "us-east-1a"}),
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["outputVariables"]["SnapshotId"], snap.as_str());
}

#[tokio::test]
async fn snapshots_not_made_by_snapstage_are_not_picked_as_newest() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let (prod, _unmanaged) = production_snapshot(&ec2, false).await;
    let (code, out) = run(
        &url,
        &json!({"sourceVolumeId": prod, "availabilityZone": "us-east-1a"}),
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["failureType"], "ConfigurationError");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("run snapshot-production first"),
        "{out}"
    );
}

#[tokio::test]
async fn an_unknown_snapshot_is_named_in_the_error() {
    let Some(url) = moto() else { return };
    let (code, out) = run(
        &url,
        &json!({"snapshotId": "snap-00000000000000000", "availabilityZone": "us-east-1a"}),
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["failureType"], "ConfigurationError");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("snap-00000000000000000"),
        "{out}"
    );
}
