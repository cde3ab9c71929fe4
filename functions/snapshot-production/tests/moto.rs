//! snapshot-production as a user runs it (the CLI binary) against moto's EC2 API.
//! Needs `SNAPSTAGE_MOTO_CLOUD` (set by `make test`); prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use serde_json::{Value, json};
use snapstage_localenv::testkit::{self, unique};

const BIN: &str = env!("CARGO_BIN_EXE_snapshot-production");

fn moto() -> Option<String> {
    testkit::moto("snapshot-production").map(|m| m.cloud)
}

/// Runs the binary with `event` on stdin; returns (exit code, the result JSON).
fn run(moto: &str, event: &Value, extra_env: &[(&str, &str)]) -> (i32, Value) {
    let r = testkit::run_cli(BIN, moto, event, &[], extra_env);
    (r.code, r.last().clone())
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

#[tokio::test]
async fn repeated_runs_reuse_the_snapshot_and_a_new_run_makes_one() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let vol = production_volume(&ec2).await;
    let run_id = unique("run");
    let req = json!({"volumeIds": [vol], "executionId": run_id});

    let (code, first) = run(&url, &req, &[]);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["status"], "Succeeded", "{first}");
    let snap = first["outputVariables"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first["outputVariables"]["SourceVolumeIds"], vol.as_str());
    assert_eq!(first["outputVariables"]["Backend"], "ebs");

    for _ in 0..2 {
        let (code, again) = run(&url, &req, &[]);
        assert_eq!(code, 0);
        assert_eq!(
            again["outputVariables"]["SnapshotId"],
            snap.as_str(),
            "a retry reuses its snapshot"
        );
    }
    assert_eq!(snapshots_of_run(&ec2, &run_id).await, vec![snap.clone()]);

    // The snapshot is of the production volume, and the volume is untouched (still available).
    let s = ec2
        .describe_snapshots()
        .snapshot_ids(&snap)
        .send()
        .await
        .unwrap();
    assert_eq!(s.snapshots()[0].volume_id(), Some(vol.as_str()));
    let v = ec2
        .describe_volumes()
        .volume_ids(&vol)
        .send()
        .await
        .unwrap();
    assert_eq!(
        v.volumes()[0].state().map(|s| s.as_str()),
        Some("available")
    );

    let other = unique("run");
    let (_, second) = run(
        &url,
        &json!({"volumeIds": [vol], "executionId": other}),
        &[],
    );
    assert_ne!(second["outputVariables"]["SnapshotId"], snap.as_str());
    assert_eq!(snapshots_of_run(&ec2, &other).await.len(), 1);
}

#[tokio::test]
async fn unattached_volumes_are_snapshotted_one_by_one_and_the_summary_says_so() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let (a, b) = (production_volume(&ec2).await, production_volume(&ec2).await);
    let run_id = unique("apart");
    let (code, out) = run(
        &url,
        &json!({"volumeIds": [a, b], "executionId": run_id}),
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let ids: Vec<&str> = out["outputVariables"]["SnapshotIds"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(snapshots_of_run(&ec2, &run_id).await.len(), 2);
    assert_eq!(out["outputVariables"]["PointInTime"], "per-volume", "{out}");
    let summary = out["summary"].as_str().unwrap();
    assert!(
        summary.contains("NOT one point in time") && summary.contains("not attached"),
        "{out}"
    );
}

/// An instance with its boot volume and `data` production volumes attached as data volumes:
/// (instance, boot volume, data volumes).
async fn instance_with_volumes(
    ec2: &aws_sdk_ec2::Client,
    data: usize,
) -> (String, String, Vec<String>) {
    let r = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let instance = r.instances()[0].instance_id().unwrap().to_string();
    let mut volumes = Vec::new();
    for device in ["/dev/sdf", "/dev/sdg", "/dev/sdh"].into_iter().take(data) {
        let v = production_volume(ec2).await;
        ec2.attach_volume()
            .volume_id(&v)
            .instance_id(&instance)
            .device(device)
            .send()
            .await
            .unwrap();
        volumes.push(v);
    }
    let d = ec2
        .describe_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    let i = &d.reservations()[0].instances()[0];
    let boot = i
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == i.root_device_name())
        .and_then(|m| m.ebs()?.volume_id())
        .expect("the instance has a boot volume")
        .to_string();
    (instance, boot, volumes)
}

/// The run's snapshots: (snapshot id, volume id, `snapstage:group` tag).
async fn run_snapshots(
    ec2: &aws_sdk_ec2::Client,
    execution: &str,
) -> Vec<(String, String, Option<String>)> {
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
    let mut found: Vec<_> = out
        .snapshots()
        .iter()
        .map(|s| {
            let group = s
                .tags()
                .iter()
                .find(|t| t.key() == Some("snapstage:group"))
                .and_then(|t| t.value().map(String::from));
            (
                s.snapshot_id().unwrap().to_string(),
                s.volume_id().unwrap().to_string(),
                group,
            )
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn volumes_of_one_instance_are_snapshotted_at_one_point_in_time() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    // Three data volumes and the boot volume; the database is on two of them.
    let (instance, boot, data) = instance_with_volumes(&ec2, 3).await;
    let (a, b, other) = (&data[0], &data[1], &data[2]);
    let run_id = unique("pit");
    let req = json!({"volumeIds": [a, b], "executionId": run_id});

    // The dry run says which way it would go, and makes nothing.
    let dry = json!({"volumeIds": [a, b], "executionId": run_id, "dryRun": true});
    let (code, out) = run(&url, &dry, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["outputVariables"]["PointInTime"], "group", "{out}");
    assert!(
        out["summary"].as_str().unwrap().contains(&format!(
            "together at one point in time (one call on {instance})"
        )),
        "{out}"
    );
    assert!(run_snapshots(&ec2, &run_id).await.is_empty());

    let (code, first) = run(&url, &req, &[]);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["status"], "Succeeded", "{first}");
    let outputs = &first["outputVariables"];
    assert_eq!(outputs["PointInTime"], "group", "{first}");
    assert!(
        first["summary"]
            .as_str()
            .unwrap()
            .contains("one point in time for all volumes"),
        "{first}"
    );
    let ids: Vec<String> = outputs["SnapshotIds"]
        .as_str()
        .unwrap()
        .split(',')
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 2, "{first}");

    // Exactly the two named volumes, one snapshot each, marked as one group of the instance:
    // neither the boot volume nor the third data volume.
    let made = run_snapshots(&ec2, &run_id).await;
    let mut volumes: Vec<&str> = made.iter().map(|(_, v, _)| v.as_str()).collect();
    volumes.sort();
    let mut expected = vec![a.as_str(), b.as_str()];
    expected.sort();
    assert_eq!(volumes, expected, "{made:?}");
    assert!(!volumes.contains(&boot.as_str()) && !volumes.contains(&other.as_str()));
    assert!(
        made.iter()
            .all(|(_, _, g)| g.as_deref() == Some(instance.as_str())),
        "{made:?}"
    );
    let mut made_ids: Vec<String> = made.iter().map(|(id, _, _)| id.clone()).collect();
    made_ids.sort();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(made_ids, sorted);

    // A retry of the same run reuses the group: no second set.
    let (code, again) = run(&url, &req, &[]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(
        again["outputVariables"]["SnapshotIds"],
        outputs["SnapshotIds"]
    );
    assert_eq!(again["outputVariables"]["PointInTime"], "group", "{again}");
    assert_eq!(run_snapshots(&ec2, &run_id).await, made);

    // restore-to-staging's `sourceVolumeId` picks the group's snapshot of each volume.
    use snapstage::storage::Backend;
    let ebs = snapstage::storage::ebs::Ebs::new(ec2.clone());
    for (i, v) in [a, b].into_iter().enumerate() {
        let newest = ebs.newest_snapshot(v).await.unwrap().expect("a snapshot");
        assert_eq!(newest.id, ids[i], "{v}");
    }
}

#[tokio::test]
async fn volumes_on_two_instances_are_refused_when_a_consistent_group_is_required() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let (first_instance, _, a) = instance_with_volumes(&ec2, 1).await;
    let (second_instance, _, b) = instance_with_volumes(&ec2, 1).await;
    let (a, b) = (&a[0], &b[0]);
    let run_id = unique("pit-apart");
    let req = json!({"volumeIds": [a, b], "executionId": run_id, "consistentGroup": true});

    let (code, out) = run(&url, &req, &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["failureType"], "ConfigurationError", "{out}");
    let message = out["message"].as_str().unwrap();
    assert!(message.starts_with("consistentGroup: "), "{out}");
    for name in [a, b, &first_instance, &second_instance] {
        assert!(message.contains(name.as_str()), "{name} in {out}");
    }
    assert!(
        run_snapshots(&ec2, &run_id).await.is_empty(),
        "nothing made"
    );

    // Not required: one snapshot per volume, and the step says they are not one point in time.
    let req = json!({"volumeIds": [a, b], "executionId": run_id});
    let (code, out) = run(&url, &req, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["outputVariables"]["PointInTime"], "per-volume", "{out}");
    let summary = out["summary"].as_str().unwrap();
    assert!(
        summary.contains("NOT one point in time") && summary.contains(&second_instance),
        "{out}"
    );
    assert_eq!(run_snapshots(&ec2, &run_id).await.len(), 2);
}

#[tokio::test]
async fn a_run_that_already_snapshotted_some_volumes_never_calls_the_rest_a_group() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let (_, _, data) = instance_with_volumes(&ec2, 2).await;
    let (a, b) = (&data[0], &data[1]);
    let run_id = unique("pit-partial");
    // An earlier try of the run snapshotted `a` alone.
    let (code, out) = run(&url, &json!({"volumeIds": [a], "executionId": run_id}), &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["outputVariables"]["PointInTime"], "single", "{out}");

    let required = json!({"volumeIds": [a, b], "executionId": run_id, "consistentGroup": true});
    let (code, out) = run(&url, &required, &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["failureType"], "ConfigurationError", "{out}");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("not one point in time"),
        "{out}"
    );
    assert_eq!(
        run_snapshots(&ec2, &run_id).await.len(),
        1,
        "nothing more made"
    );

    let (code, out) = run(
        &url,
        &json!({"volumeIds": [a, b], "executionId": run_id}),
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["outputVariables"]["PointInTime"], "per-volume", "{out}");
    let made = run_snapshots(&ec2, &run_id).await;
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(made.iter().all(|(_, _, g)| g.is_none()), "{made:?}");
}

#[tokio::test]
async fn dry_run_creates_nothing() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let vol = production_volume(&ec2).await;
    let run_id = unique("dry");
    let (code, out) = run(
        &url,
        &json!({"volumeIds": [vol], "executionId": run_id, "dryRun": true}),
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["outputVariables"]["DryRun"], "true");
    assert!(
        out["summary"].as_str().unwrap().contains("would snapshot"),
        "{out}"
    );
    assert!(snapshots_of_run(&ec2, &run_id).await.is_empty());
}

#[tokio::test]
async fn a_missing_volume_is_a_configuration_error_naming_it() {
    let Some(url) = moto() else { return };
    let (code, out) = run(&url, &json!({"volumeIds": ["vol-00000000000000000"]}), &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out["failureType"], "ConfigurationError", "{out}");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("vol-00000000000000000"),
        "{out}"
    );
}

#[tokio::test]
async fn bad_parameters_fail_before_any_aws_call() {
    let Some(url) = moto() else { return };
    let (code, out) = run(&url, &json!({"volumeIds": ["disk-1"]}), &[]);
    assert_eq!(code, 1);
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .starts_with("volumeIds[0]: expected an id like"),
        "{out}"
    );
    let (_, out) = run(&url, &json!({"volumeId": "vol-0abc"}), &[]);
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .starts_with("request.volumeId: unknown field"),
        "{out}"
    );
}

#[tokio::test]
async fn a_job_result_that_cannot_be_delivered_exits_3() {
    let Some(url) = moto() else { return };
    let event: Value = serde_json::from_str(include_str!(
        "../../../events/codepipeline/snapshot-production.json"
    ))
    .unwrap();
    // Nothing listens on port 9 (discard): CodePipeline is unreachable.
    let (code, out) = run(
        &url,
        &event,
        &[
            ("AWS_ENDPOINT_URL_CODEPIPELINE", "http://127.0.0.1:9"),
            ("AWS_MAX_ATTEMPTS", "1"),
        ],
    );
    assert_eq!(code, 3, "{out}");
    assert_eq!(out["reportedToCodePipeline"], false);
}

#[tokio::test]
async fn copy_to_another_region_makes_one_copy_per_run() {
    let Some(url) = moto() else { return };
    let ec2 = ec2(&url).await;
    let vol = production_volume(&ec2).await;
    let run_id = unique("run-copy");
    let req = json!({"volumeIds": [vol], "executionId": run_id, "copyTo": {"region": "us-west-2"}});

    let (code, first) = run(&url, &req, &[]);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["status"], "Succeeded", "{first}");
    let out = &first["outputVariables"];
    assert_eq!(out["CopyRegion"], "us-west-2");
    let snap = out["SnapshotId"].as_str().unwrap().to_string();
    let copy = out["CopiedSnapshotIds"].as_str().unwrap().to_string();
    assert!(copy.starts_with("snap-") && copy != snap, "{out}");

    // The copy lives in the other region, tied to the run and to the snapshot it copies.
    let west = aws_sdk_ec2::Client::from_conf(
        ec2.config()
            .to_builder()
            .region(aws_config::Region::new("us-west-2"))
            .build(),
    );
    let copies = |client: aws_sdk_ec2::Client, snap: String| async move {
        client
            .describe_snapshots()
            .filters(
                Filter::builder()
                    .name("tag:snapstage:copy-of")
                    .values(snap)
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id().map(String::from))
            .collect::<Vec<_>>()
    };
    assert_eq!(copies(west.clone(), snap.clone()).await, vec![copy.clone()]);
    assert!(
        copies(ec2.clone(), snap.clone()).await.is_empty(),
        "not in the source region"
    );

    // A retry of the same run reuses both the snapshot and the copy.
    let (code, again) = run(&url, &req, &[]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["outputVariables"]["CopiedSnapshotIds"], copy.as_str());
    assert_eq!(copies(west, snap).await.len(), 1);

    // The snapshot's own region is refused, naming the field.
    let same = json!({"volumeIds": [vol], "executionId": unique("run-copy"), "copyTo": {"region": "us-east-1"}});
    let (code, refused) = run(&url, &same, &[]);
    assert_eq!(code, 1, "{refused}");
    assert_eq!(refused["failureType"], "ConfigurationError", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("copyTo.region: us-east-1 is the snapshot's own region"),
        "{refused}"
    );
}
