//! restore-to-staging as a user runs it (the CLI binary) against moto's EC2 API.
//! Needs `SNAPSTAGE_MOTO_CLOUD` (set by `make test`); prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::io::Write as _;
use std::process::{Command, Stdio};

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use serde_json::{Value, json};

fn moto() -> Option<String> {
    let url = std::env::var("SNAPSTAGE_MOTO_CLOUD").ok();
    if url.is_none() {
        eprintln!("SKIP: SNAPSTAGE_MOTO_CLOUD is not set (run `make test`, which starts moto)");
    }
    url
}

fn run(moto: &str, event: &Value) -> (i32, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_restore-to-staging"))
        .args(["--event", "-"])
        .env("AWS_ENDPOINT_URL", moto)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(event.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(last).unwrap_or(Value::Null),
    )
}

async fn ec2(moto: &str) -> aws_sdk_ec2::Client {
    let conf = snapstage::aws::loader()
        .endpoint_url(moto)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&conf)
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{n:x}")
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
