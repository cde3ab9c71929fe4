//! restore-to-staging with `targets`: several volumes of one group snapshot restored in one
//! action to names the user chose, all or nothing, driven through the step as the function runs
//! it, against
//! - FlashArray / Cloud Block Store on the spec-validating double (two arrays: a protection group
//!   replicated from the on-prem array to the CBS array, restored on CBS), with the fault proxy
//!   in front of CBS for a copy that fails half way, and
//! - EBS on moto (two volumes of one instance snapshotted by one CreateSnapshots through
//!   snapshot-production, restored to `Name`d volumes), with the fault proxy for a CreateVolume
//!   that fails half way.
//!
//! Each part counts what exists through its own route (the double's state, the EC2 API).
//! Needs `.venv` for the double and `SNAPSTAGE_MOTO_CLOUD` for EBS; prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use snapstage::job::contract::Deadline;
use snapstage::storage::Backend;
use snapstage::storage::ebs::Ebs;
use snapstage::storage::flasharray::{
    ApiToken, Client, Config, FlashArray, ReplicaSource, Retry, snapshot_suffix,
};
use snapstage::storage::steps::{RestoreParams, SnapshotParams, restore_step, snapshot_step};
use snapstage::{Error, Execution, FailureKind, Outcome, Result, Step};
use snapstage_localenv::faults::{Fault, FaultProxy, Rule};
use snapstage_localenv::flasharray_double::{Double, TOKEN};
use snapstage_localenv::testkit;

const GIB: u64 = 1 << 30;

fn execution(key: &str) -> Execution {
    Execution {
        key: key.into(),
        origin: "codepipeline".into(),
        pipeline: Some("ci".into()),
        commit: None,
    }
}

/// Runs a step to completion the way the contract does (each `Continue` state feeds the next
/// invocation); returns the summary and the outputs.
async fn drive<B: Backend>(
    backend: &B,
    params: &RestoreParams,
    key: &str,
) -> Result<(String, BTreeMap<String, String>)> {
    let mut state: Option<Value> = None;
    for _ in 0..50 {
        let step = Step {
            params: params.clone(),
            execution: execution(key),
            state: state.take(),
            deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(60)),
            artifacts: None,
        };
        match restore_step(backend, step).await? {
            Outcome::Done { summary, outputs } => return Ok((summary, outputs)),
            Outcome::Continue { state: s, .. } => state = Some(s),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{key}: not done after 50 invocations")
}

fn params(v: Value) -> RestoreParams {
    let p: RestoreParams = serde_json::from_value(v).unwrap();
    p.validate().unwrap();
    p
}

// ---- FlashArray / Cloud Block Store ----

const ONPREM: &str = "fa-onprem";
const CBS: &str = "cbs-cloud";

fn cbs_config(url: &str) -> Config {
    let mut cfg = Config::new(url.to_string(), ApiToken::new(TOKEN));
    cfg.allow_insecure_http_for_tests = true;
    cfg.retry = Retry {
        attempts: 4,
        base: Duration::from_millis(2),
        max: Duration::from_millis(20),
    };
    cfg.timeout = Duration::from_secs(20);
    cfg
}

/// The CBS array as restore-to-staging opens it with `replicatedFrom`.
fn cbs_at(url: &str) -> FlashArray {
    FlashArray::new(Client::new(cbs_config(url)).unwrap()).replicated_from(ReplicaSource {
        array: ONPREM.into(),
        pgroup: "pg-ci".into(),
    })
}

fn fa_restore(d: &Double, targets: Value, extra: Value) -> RestoreParams {
    let mut v = json!({
        "backend": "flasharray",
        "flasharray": {"endpoint": d.url(CBS), "apiTokenSecret": "given-directly",
                       "replicatedFrom": {"array": ONPREM, "protectionGroup": "pg-ci"}},
        "targets": targets,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    params(v)
}

/// Two arrays; `jenkins-home` and `nexus-blobs` in `pg-ci`, replicated to CBS by one
/// snapshot-production run (driven until the transfer completes). Returns the pg snapshot's name
/// on CBS.
async fn replicated_pg(d: &Double, run: &str) -> String {
    d.seed(
        ONPREM,
        json!({
            "volumes": [{"name": "jenkins-home", "provisioned": 8 * GIB},
                        {"name": "nexus-blobs", "provisioned": 32 * GIB},
                        {"name": "build-cache"}],
            "pgroups": [{"name": "pg-ci", "volumes": ["jenkins-home", "nexus-blobs"],
                         "targets": [CBS]}]
        }),
    )
    .await;
    d.configure(ONPREM, json!({"transfer_step": 0.5})).await;
    let onprem = d.backend(ONPREM).with_protection_group("pg-ci");
    let p: SnapshotParams = serde_json::from_value(json!({
        "backend": "flasharray",
        "flasharray": {"endpoint": d.url(ONPREM), "apiTokenSecret": "given-directly",
                       "protectionGroup": "pg-ci"},
    }))
    .unwrap();
    let mut state = None;
    for _ in 0..20 {
        let step = Step {
            params: p.clone(),
            execution: execution(run),
            state: state.take(),
            deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(60)),
            artifacts: None,
        };
        match snapshot_step(&onprem, step).await.unwrap() {
            Outcome::Done { .. } => break,
            Outcome::Continue { state: s, .. } => state = Some(s),
        }
    }
    onprem.close().await.unwrap();
    format!("{ONPREM}:pg-ci.{}", snapshot_suffix(&execution(run)))
}

fn jenkins_and_nexus() -> Value {
    json!([
        {"sourceVolumeId": "jenkins-home", "name": "ci-jenkins-home", "output": "Jenkins"},
        {"sourceVolumeId": "nexus-blobs", "name": "ci-nexus-blobs", "output": "Nexus"}
    ])
}

fn requests(st: &Value, key: &str) -> u64 {
    st["requests"][key].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn flasharray_restores_a_replicated_pg_snapshot_to_chosen_names_once() {
    let Some(d) = Double::start(&[ONPREM, CBS]) else {
        return;
    };
    let pg = replicated_pg(&d, "ci/q1/Snapshot").await;
    let cbs = cbs_at(&d.url(CBS));
    let p = fa_restore(&d, jenkins_and_nexus(), json!({}));

    let (summary, out) = drive(&cbs, &p, "ci/q1/Restore").await.unwrap();
    assert_eq!(
        summary,
        format!(
            "2 staging volumes ready from pg snapshot {pg}: jenkins-home → ci-jenkins-home, nexus-blobs → ci-nexus-blobs"
        )
    );
    assert_eq!(out["VolumeIds"], "ci-jenkins-home,ci-nexus-blobs");
    assert_eq!(out["JenkinsVolumeId"], "ci-jenkins-home");
    assert_eq!(out["NexusVolumeId"], "ci-nexus-blobs");
    assert_eq!(out["SnapshotId"], pg);
    assert_eq!(
        out["SnapshotIds"],
        format!("{pg}.jenkins-home,{pg}.nexus-blobs")
    );
    assert_eq!(out["Backend"], "flasharray");

    // On CBS: two copies of the group's volume snapshots, tagged with the run.
    let st = d.state(CBS).await;
    let vols = st["volumes"].as_object().unwrap();
    assert_eq!(vols.len(), 2, "{vols:?}");
    assert_eq!(
        vols["ci-jenkins-home"]["source"]["name"],
        format!("{pg}.jenkins-home")
    );
    assert_eq!(vols["ci-nexus-blobs"]["provisioned"], 32 * GIB);
    for v in ["ci-jenkins-home", "ci-nexus-blobs"] {
        assert_eq!(
            st["volume_tags"][v]["snapstage/snapstage:execution"],
            "ci/q1/Restore"
        );
        assert_eq!(st["volume_tags"][v]["snapstage/snapstage:role"], "staging");
    }
    let copies = requests(&st, "POST /api/2.56/volumes");
    assert_eq!(copies, 2);

    // A retry of the same run (a redelivered event, no continuation) reuses both: no copy.
    let (again, out2) = drive(&cbs, &p, "ci/q1/Restore").await.unwrap();
    assert_eq!(again, summary);
    assert_eq!(out2, out);
    let st = d.state(CBS).await;
    assert_eq!(requests(&st, "POST /api/2.56/volumes"), copies);
    assert_eq!(st["volumes"]["ci-jenkins-home"]["overwritten"], 0);

    // The same pg snapshot named by snapshotId restores the same way (dry run: nothing changes).
    let dry = fa_restore(
        &d,
        jenkins_and_nexus(),
        json!({"snapshotId": pg, "dryRun": true}),
    );
    let (s, o) = drive(&cbs, &dry, "ci/q1/Restore").await.unwrap();
    assert!(
        s.starts_with("dry run, nothing changed")
            && s.contains("reuse ci-jenkins-home from jenkins-home"),
        "{s}"
    );
    assert_eq!(o["SnapshotId"], pg);
    assert_eq!(
        requests(&d.state(CBS).await, "POST /api/2.56/volumes"),
        copies
    );

    // A volume the group does not hold is refused, naming the group's volumes.
    let e = drive(
        &cbs,
        &fa_restore(
            &d,
            json!([{"sourceVolumeId": "build-cache", "name": "ci-cache"}]),
            json!({}),
        ),
        "ci/q1/Restore",
    )
    .await
    .unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    assert_eq!(
        e.to_string(),
        format!(
            "targets[0].sourceVolumeId: build-cache is not a volume of pg snapshot {pg}; its volumes are: jenkins-home, nexus-blobs"
        )
    );
    // A target named like a volume of the group is refused.
    let e = drive(
        &cbs,
        &fa_restore(
            &d,
            json!([{"sourceVolumeId": "jenkins-home", "name": "nexus-blobs"}]),
            json!({}),
        ),
        "ci/q1/Restore",
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Refused(_)), "{e:?}");
    assert!(e.to_string().contains("never writes over a source"), "{e}");
    // A volume snapshot's name is not a group: said so.
    let e = drive(
        &cbs,
        &fa_restore(
            &d,
            jenkins_and_nexus(),
            json!({"snapshotId": format!("{pg}.jenkins-home")}),
        ),
        "ci/q1/Restore",
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("snapshotId: with targets, name a protection group snapshot"),
        "{e}"
    );
    let e = drive(
        &cbs,
        &fa_restore(
            &d,
            jenkins_and_nexus(),
            json!({"snapshotId": format!("{ONPREM}:pg-ci.no-such")}),
        ),
        "ci/q1/Restore",
    )
    .await
    .unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    assert!(e.to_string().starts_with("snapshotId:"), "{e}");
    assert_eq!(d.state(CBS).await["volumes"].as_object().unwrap().len(), 2);
    cbs.close().await.unwrap();
    d.assert_no_violations().await;
}

#[tokio::test]
async fn flasharray_overwrites_an_earlier_runs_targets_only_when_asked_and_never_foreign_ones() {
    let Some(d) = Double::start(&[ONPREM, CBS]) else {
        return;
    };
    let pg = replicated_pg(&d, "ci/q1/Snapshot").await;
    let cbs = cbs_at(&d.url(CBS));
    drive(
        &cbs,
        &fa_restore(&d, jenkins_and_nexus(), json!({})),
        "ci/q1/Restore",
    )
    .await
    .unwrap();

    // Next quarter's run: the names hold the last run's staging volumes.
    let e = drive(
        &cbs,
        &fa_restore(&d, jenkins_and_nexus(), json!({})),
        "ci/q2/Restore",
    )
    .await
    .unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "targets[0].name: FlashArray volume ci-jenkins-home exists, a staging volume of an earlier run (ci/q1/Restore)"
        ) && msg.contains("\"overwrite\": true"),
        "{msg}"
    );
    // A dry run with overwrite says what it would do and does it not.
    let (s, _) = drive(
        &cbs,
        &fa_restore(
            &d,
            jenkins_and_nexus(),
            json!({"overwrite": true, "dryRun": true}),
        ),
        "ci/q2/Restore",
    )
    .await
    .unwrap();
    assert!(
        s.contains("overwrite ci-jenkins-home from jenkins-home, overwrite ci-nexus-blobs"),
        "{s}"
    );
    assert_eq!(
        d.state(CBS).await["volumes"]["ci-jenkins-home"]["overwritten"],
        0
    );
    let (s, out) = drive(
        &cbs,
        &fa_restore(&d, jenkins_and_nexus(), json!({"overwrite": true})),
        "ci/q2/Restore",
    )
    .await
    .unwrap();
    assert!(s.starts_with("2 staging volumes ready"), "{s}");
    assert_eq!(out["VolumeIds"], "ci-jenkins-home,ci-nexus-blobs");
    let st = d.state(CBS).await;
    for v in ["ci-jenkins-home", "ci-nexus-blobs"] {
        assert_eq!(st["volumes"][v]["overwritten"], 1, "{v}");
        assert_eq!(
            st["volume_tags"][v]["snapstage/snapstage:execution"],
            "ci/q2/Restore"
        );
    }

    // A volume without snapstage's mark, and one marked production, are never written, even with
    // overwrite; every target is checked first, so the first (new) one is not made either.
    d.seed(
        CBS,
        json!({"volumes": [
            {"name": "someones-volume"},
            {"name": "prod-nexus", "tags": [{"key": "environment", "value": "production"}]},
            {"name": "tagged-prod", "tags": [
                {"key": "snapstage:managed-by", "value": "snapstage", "namespace": "snapstage"},
                {"key": "snapstage:role", "value": "staging", "namespace": "snapstage"},
                {"key": "snapstage:execution", "value": "ci/q0/Restore", "namespace": "snapstage"},
                {"key": "env", "value": "prod"}]}
        ]}),
    )
    .await;
    for (name, why) in [
        ("someones-volume", "does not carry snapstage's staging mark"),
        (
            "prod-nexus",
            "is marked production (tag environment=production)",
        ),
        ("tagged-prod", "is marked production (tag env=prod)"),
    ] {
        let e = drive(
            &cbs,
            &fa_restore(
                &d,
                json!([{"sourceVolumeId": "jenkins-home", "name": "ci3-jenkins"},
                       {"sourceVolumeId": "nexus-blobs", "name": name}]),
                json!({"overwrite": true}),
            ),
            "ci/q3/Restore",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{e:?}");
        assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
        assert!(
            e.to_string().contains(&format!(
                "targets[1].name: FlashArray volume {name} exists and {why}"
            )),
            "{e}"
        );
    }
    let st = d.state(CBS).await;
    assert!(st["volumes"].get("ci3-jenkins").is_none(), "{st}");
    for name in ["someones-volume", "prod-nexus", "tagged-prod"] {
        assert_eq!(st["volumes"][name]["overwritten"], 0);
    }
    let _ = pg;
    cbs.close().await.unwrap();
    d.assert_no_violations().await;
}

#[tokio::test]
async fn flasharray_a_failed_second_copy_rolls_back_the_first_and_the_retry_completes_the_set() {
    let Some(d) = Double::start(&[ONPREM, CBS]) else {
        return;
    };
    replicated_pg(&d, "ci/q1/Snapshot").await;
    let proxy = FaultProxy::start(&d.url(CBS)).unwrap();
    // The first copy goes through, the second is refused by the array.
    proxy.add(
        Rule::new(
            "POST /api/2.56/volumes",
            Fault::flasharray(400, "Volume creation failed: out of space.", None),
            1,
        )
        .after(1),
    );
    let cbs = cbs_at(&proxy.url);
    let p = fa_restore(&d, jenkins_and_nexus(), json!({}));
    let e = drive(&cbs, &p, "ci/q1/Restore").await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("out of space"), "the original error: {msg}");
    assert!(
        msg.contains("stopped at target ci-nexus-blobs; rolled back (removed) the staging volumes this run made: ci-jenkins-home"),
        "{msg}"
    );
    let st = d.state(CBS).await;
    assert_eq!(
        st["destroyed_volumes"],
        json!(["ci-jenkins-home"]),
        "no half set: {st}"
    );
    assert!(st["volumes"].get("ci-nexus-blobs").is_none());

    // The retry of the run (Lambda retries the failed invocation): the destroyed copy is its own,
    // recovered and written again; the set completes.
    proxy.heal();
    let (summary, out) = drive(&cbs, &p, "ci/q1/Restore").await.unwrap();
    assert!(summary.starts_with("2 staging volumes ready"), "{summary}");
    assert_eq!(out["VolumeIds"], "ci-jenkins-home,ci-nexus-blobs");
    let st = d.state(CBS).await;
    assert_eq!(st["destroyed_volumes"], json!([]), "{st}");
    assert_eq!(st["volumes"].as_object().unwrap().len(), 2);
    cbs.close().await.unwrap();
    d.assert_no_violations().await;
}

// ---- EBS on moto ----

const AZ: &str = "us-east-1a";

struct Ec2 {
    ec2: aws_sdk_ec2::Client,
}

impl Ec2 {
    /// A volume named `name`; a production one carries `env=production`.
    async fn volume(&self, size: i32, name: &str, production: bool) -> String {
        let mut tags = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Volume);
        if production {
            tags = tags.tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("env")
                    .value("production")
                    .build(),
            );
        }
        let tags = tags
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("Name")
                    .value(name)
                    .build(),
            )
            .build();
        self.ec2
            .create_volume()
            .availability_zone(AZ)
            .size(size)
            .tag_specifications(tags)
            .send()
            .await
            .unwrap()
            .volume_id()
            .unwrap()
            .to_string()
    }

    /// An instance with `volumes` attached (the CI server).
    async fn instance(&self, volumes: &[&str]) -> String {
        let id = self
            .ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(1)
            .max_count(1)
            .placement(
                aws_sdk_ec2::types::Placement::builder()
                    .availability_zone(AZ)
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .instances()[0]
            .instance_id()
            .unwrap()
            .to_string();
        for (v, dev) in volumes.iter().zip(["/dev/sdf", "/dev/sdg", "/dev/sdh"]) {
            self.ec2
                .attach_volume()
                .volume_id(*v)
                .instance_id(&id)
                .device(dev)
                .send()
                .await
                .unwrap();
        }
        id
    }

    /// Volumes carrying `Name=name` (not deleted).
    async fn named(&self, name: &str) -> Vec<String> {
        let out = self
            .ec2
            .describe_volumes()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag:Name")
                    .values(name)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        out.volumes()
            .iter()
            .filter(|v| {
                !matches!(
                    v.state(),
                    Some(aws_sdk_ec2::types::VolumeState::Deleting)
                        | Some(aws_sdk_ec2::types::VolumeState::Deleted)
                )
            })
            .filter_map(|v| v.volume_id().map(String::from))
            .collect()
    }
}

fn ebs_restore(targets: Value, extra: Value) -> RestoreParams {
    let mut v = json!({"availabilityZone": AZ, "targets": targets});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    params(v)
}

#[tokio::test]
async fn ebs_restores_the_snapshots_of_one_createsnapshots_to_named_volumes_all_or_nothing() {
    let Some(m) = testkit::moto("restore targets on EBS") else {
        return;
    };
    let sdk = testkit::sdk_config(&m.cloud).await;
    let fx = Ec2 {
        ec2: aws_sdk_ec2::Client::new(&sdk),
    };
    let tag = testkit::unique("t").replace(['.', ':'], "-");
    let jenkins = fx.volume(8, &format!("jenkins-home-{tag}"), true).await;
    let nexus = fx.volume(32, &format!("nexus-blobs-{tag}"), true).await;
    fx.instance(&[&jenkins, &nexus]).await;
    let ebs = Ebs::new(aws_sdk_ec2::Client::new(&sdk));

    // snapshot-production cuts both with one CreateSnapshots.
    let sp: SnapshotParams = serde_json::from_value(json!({
        "volumeIds": [jenkins, nexus], "consistentGroup": true}))
    .unwrap();
    let snap_key = format!("ci/{tag}/Snapshot");
    let mut state = None;
    let snap_out = loop {
        let step = Step {
            params: sp.clone(),
            execution: execution(&snap_key),
            state: state.take(),
            deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(60)),
            artifacts: None,
        };
        match snapshot_step(&ebs, step).await.unwrap() {
            Outcome::Done { outputs, .. } => break outputs,
            Outcome::Continue { state: s, .. } => state = Some(s),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(snap_out["PointInTime"], "group", "{snap_out:?}");

    let jn = format!("ci-jenkins-home-{tag}");
    let nn = format!("ci-nexus-blobs-{tag}");
    let targets = json!([
        {"sourceVolumeId": jenkins, "name": jn, "output": "Jenkins"},
        {"sourceVolumeId": nexus, "name": nn, "output": "Nexus"}
    ]);

    // A target name already held by a volume that is not snapstage's: refused before anything is
    // made (the first target is not created).
    let foreign = format!("someones-{tag}");
    fx.volume(1, &foreign, false).await;
    let e = drive(
        &ebs,
        &ebs_restore(
            json!([{"sourceVolumeId": jenkins, "name": jn},
                   {"sourceVolumeId": nexus, "name": foreign}]),
            json!({}),
        ),
        &format!("ci/{tag}/Refused"),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Refused(_)), "{e:?}");
    assert!(
        e.to_string().contains("targets[1].name: EBS volume vol-")
            && e.to_string()
                .contains("does not carry snapstage's staging mark"),
        "{e}"
    );
    assert!(fx.named(&jn).await.is_empty(), "nothing was made");

    // A CreateVolume that fails half way: the first volume is deleted again.
    let proxy = FaultProxy::start(&m.cloud).unwrap();
    proxy.add(
        Rule::new(
            "CreateVolume",
            Fault::ec2(
                400,
                "VolumeLimitExceeded",
                "You have exceeded your maximum gp3 storage limit.",
            ),
            1,
        )
        .after(1),
    );
    let via_proxy = Ebs::new(aws_sdk_ec2::Client::new(
        &testkit::sdk_config(&proxy.url).await,
    ));
    let key = format!("ci/{tag}/Restore");
    let p = ebs_restore(targets.clone(), json!({}));
    let e = drive(&via_proxy, &p, &key).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("maximum gp3 storage limit"), "{msg}");
    assert!(
        msg.contains(&format!(
            "stopped at target {nn}; rolled back (removed) the staging volumes this run made: vol-"
        )),
        "{msg}"
    );
    assert!(fx.named(&jn).await.is_empty(), "rolled back");
    assert!(fx.named(&nn).await.is_empty());

    // The retry completes the set; a second retry reuses it.
    proxy.heal();
    let (summary, out) = drive(&ebs, &p, &key).await.unwrap();
    let ids: Vec<&str> = out["VolumeIds"].split(',').collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(fx.named(&jn).await, vec![ids[0].to_string()]);
    assert_eq!(fx.named(&nn).await, vec![ids[1].to_string()]);
    assert_eq!(out["JenkinsVolumeId"], ids[0]);
    assert_eq!(out["NexusVolumeId"], ids[1]);
    assert!(
        summary.starts_with("2 staging volumes ready from the snapshots of instance i-")
            && summary.contains(&format!(
                "{jenkins} → {jn} ({}), {nexus} → {nn} ({})",
                ids[0], ids[1]
            )),
        "{summary}"
    );
    let snaps: Vec<&str> = out["SnapshotIds"].split(',').collect();
    for (v, s) in ids.iter().zip(&snaps) {
        let d = fx
            .ec2
            .describe_volumes()
            .volume_ids(*v)
            .send()
            .await
            .unwrap();
        assert_eq!(d.volumes()[0].snapshot_id(), Some(*s));
        assert_eq!(d.volumes()[0].availability_zone(), Some(AZ));
    }
    let (_, again) = drive(&ebs, &p, &key).await.unwrap();
    assert_eq!(again, out);
    assert_eq!(fx.named(&jn).await.len(), 1);

    // The same group named by snapshotId, another run: the names hold this run's volumes, and an
    // EBS volume cannot be overwritten, even when asked.
    let e = drive(
        &ebs,
        &ebs_restore(
            targets.clone(),
            json!({"snapshotId": snaps[1], "overwrite": true}),
        ),
        &format!("ci/{tag}/Later"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    assert!(e.to_string().contains("cannot be overwritten"), "{e}");
    // A volume that is not in the group.
    let other = fx.volume(1, &format!("other-{tag}"), true).await;
    let e = drive(
        &ebs,
        &ebs_restore(
            json!([{"sourceVolumeId": other, "name": format!("x-{tag}")}]),
            json!({"snapshotId": snaps[0]}),
        ),
        &format!("ci/{tag}/Other"),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "targets[0].sourceVolumeId: {other} is not a volume of the snapshots of instance i-"
        )),
        "{e}"
    );
}
