//! One conformance suite for every storage backend, as object_store's `integration.rs`: each
//! behaviour is a small function over a backend's [`Fixture`], driven through the two storage
//! steps exactly as the functions run them; each backend's test calls them with its
//! [`Capabilities`] (run where the backend can, refused where it cannot), against
//! - EBS on moto server (EC2 API over a real connection), and
//! - FlashArray on the spec-validating FlashArray double, and
//! - Kubernetes CSI on the Kubernetes API server double (its simulated snapshot controller), and
//! - Kubernetes CSI on the local control plane of real components (`scripts/localkube.sh`: the
//!   real snapshot-controller and csi-snapshotter/csi-provisioner over the host-path driver).
//!
//! Each backend's fixture counts resources through its own independent route (the EC2 API, the
//! double's state, the real `kubectl`), never through the backend under test.
//! Needs `SNAPSTAGE_MOTO_CLOUD` (set by `make test`) for EBS, `.venv` for the doubles and the
//! local control plane for CSI on real parts; each part prints SKIP and returns otherwise (fails
//! under `CI=true`). Runs with a plain `cargo test` (the `tests` crate is a default member).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use serde_json::{Value, json};
use snapstage::interlock::markers::execution_tag;
use snapstage::job::contract::Deadline;
use snapstage::kube::client::ClusterConfig;
use snapstage::storage::csi::{Csi, CsiParams};
use snapstage::storage::ebs::Ebs;
use snapstage::storage::flasharray::FlashArray;
use snapstage::storage::open::FlashArrayParams;
use snapstage::storage::steps::{RestoreParams, SnapshotParams, restore_step, snapshot_step};
use snapstage::storage::{Backend, BackendKind, CopyTarget, Retention};
use snapstage::{Error, Execution, FailureKind, Outcome, Result, Step};
use snapstage_localenv::flasharray_double::Double;
use snapstage_localenv::kube_double::KubeDouble;
use snapstage_localenv::localkube::LocalKube;
use snapstage_localenv::testkit::{self, unique};

/// What the suite needs from a backend's test environment.
trait Fixture {
    type B: Backend;
    fn backend(&self) -> &Self::B;
    fn kind(&self) -> BackendKind;
    /// The backend's parameter section (validated by the steps; the backend itself is given).
    fn section(&self) -> Option<FlashArrayParams> {
        None
    }
    /// The CSI parameter section.
    fn csi_section(&self) -> Option<CsiParams> {
        None
    }
    /// Waits until a snapshot made now is strictly newer, by the backend's clock, than one made
    /// before (moto keeps EC2 start times to the second; the others need no wait).
    async fn tick(&self) {}
    /// A new production source with no snapshots.
    async fn new_source(&self) -> String;
    /// A snapshot of `source` that snapstage did not make, newer than any made so far.
    async fn foreign_snapshot(&self, source: &str) -> String;
    /// Every live snapshot of `source`, by the independent route.
    async fn snapshots(&self, source: &str) -> Vec<String>;
    /// Staging volumes the run made, by the independent route.
    async fn staging_volumes(&self, execution: &Execution) -> Vec<String>;
    /// Restore parameters for this backend.
    fn restore(&self, snapshot: Option<&str>, source: Option<&str>) -> RestoreParams {
        RestoreParams {
            snapshot_id: snapshot.map(String::from),
            source_volume_id: source.map(String::from),
            availability_zone: (self.kind() == BackendKind::Ebs).then(|| "us-east-1a".into()),
            volume_type: None,
            backend: self.kind(),
            flasharray: self.section(),
            csi: self.csi_section(),
            targets: None,
            overwrite: false,
            dry_run: false,
        }
    }
    fn snapshot(&self, sources: &[&str]) -> SnapshotParams {
        SnapshotParams {
            volume_ids: sources.iter().map(|s| s.to_string()).collect(),
            selector: None,
            backend: self.kind(),
            flasharray: self.section(),
            csi: self.csi_section(),
            hooks: None,
            description: None,
            copy_to: None,
            retain: None,
            consistent_group: None,
            dry_run: false,
        }
    }
}

fn execution(key: &str) -> Execution {
    Execution {
        key: key.into(),
        origin: "codepipeline".into(),
        pipeline: Some("shop".into()),
        commit: None,
    }
}

/// Runs a step to completion the way the contract does: each `Continue` state feeds the next
/// invocation. Returns the outputs and how many invocations it took.
async fn drive<P: Clone>(
    f: impl AsyncFn(Step<P>) -> Result<Outcome>,
    params: P,
    key: &str,
) -> Result<(BTreeMap<String, String>, usize)> {
    let mut state: Option<Value> = None;
    for n in 1..=100 {
        let step = Step {
            params: params.clone(),
            execution: execution(key),
            state: state.take(),
            deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(60)),
            artifacts: None,
        };
        match f(step).await? {
            Outcome::Done { outputs, .. } => return Ok((outputs, n)),
            Outcome::Continue { state: s, .. } => state = Some(s),
        }
        // Real controllers take their time: CodePipeline, too, waits between invocations.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{key}: not done after 100 invocations")
}

async fn snapshot<F: Fixture>(fx: &F, p: SnapshotParams, key: &str) -> BTreeMap<String, String> {
    drive(|s| snapshot_step(fx.backend(), s), p, key)
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .0
}

/// What a backend can do beyond the core [`Backend`], as its test declares it (object_store's
/// capability flags). The suite checks the backend's accessors agree, then runs the behaviours
/// the flags allow and, for the ones they do not, that the step refuses the parameter.
#[derive(Debug, Clone, Copy)]
struct Capabilities {
    /// [`Backend::retention`]: `retain`.
    retention: bool,
    /// [`Backend::point_in_time`]: several volumes in one call.
    point_in_time: bool,
    /// [`Backend::region_copy`]: `copyTo`.
    region_copy: bool,
    /// [`Backend::selection`]: `selector`.
    selection: bool,
    /// [`Backend::restore_outputs`]: outputs besides `VolumeId`.
    restore_outputs: bool,
}

const EBS: Capabilities = Capabilities {
    retention: true,
    point_in_time: true,
    region_copy: true,
    selection: false,
    restore_outputs: false,
};
const FLASHARRAY: Capabilities = Capabilities {
    retention: true,
    point_in_time: false,
    region_copy: false,
    selection: false,
    restore_outputs: false,
};
const CSI: Capabilities = Capabilities {
    retention: true,
    point_in_time: false,
    region_copy: false,
    selection: true,
    restore_outputs: true,
};

/// Every behaviour the backend's capabilities allow (as object_store's backend tests call the
/// `integration` functions they support).
async fn conformance<F: Fixture>(fx: &F, caps: Capabilities) {
    capabilities_are_as_declared(fx, caps);
    snapshot_is_idempotent(fx).await;
    dry_run_changes_nothing(fx).await;
    restore_is_idempotent_and_never_targets_production(fx, caps).await;
    restore_picks_the_newest_snapstage_snapshot(fx).await;
    if caps.retention {
        retention_deletes_only_ours(fx).await;
    }
    if caps.region_copy {
        region_copy(fx).await;
    } else {
        region_copy_is_refused(fx).await;
    }
    if !caps.selection {
        selector_is_refused(fx).await;
    }
    a_missing_snapshot_is_a_configuration_error(fx).await;
    an_id_of_another_shape_is_refused_before_any_call(fx).await;
}

/// The backend's capability accessors say what its test declares.
fn capabilities_are_as_declared<F: Fixture>(fx: &F, caps: Capabilities) {
    let b = fx.backend();
    let name = b.name();
    assert_eq!(b.retention().is_some(), caps.retention, "{name}: retention");
    assert_eq!(
        b.point_in_time().is_some(),
        caps.point_in_time,
        "{name}: point in time"
    );
    assert_eq!(
        b.region_copy().is_some(),
        caps.region_copy,
        "{name}: region copy"
    );
    assert_eq!(b.selection().is_some(), caps.selection, "{name}: selection");
    assert_eq!(
        b.restore_outputs().is_some(),
        caps.restore_outputs,
        "{name}: restore outputs"
    );
}

/// A snapshot is made once per execution: retries and duplicates reuse it. Returns the source
/// and the snapshot.
async fn snapshot_is_idempotent<F: Fixture>(fx: &F) -> (String, String) {
    let name = fx.backend().name();
    let source = fx.new_source().await;
    let run1 = unique("conf-run1");
    let out = snapshot(fx, fx.snapshot(&[&source]), &run1).await;
    let snap1 = out["SnapshotId"].clone();
    assert_eq!(out["Backend"], name);
    assert_eq!(out["SourceVolumeIds"], source);
    for _ in 0..2 {
        let again = snapshot(fx, fx.snapshot(&[&source]), &run1).await;
        assert_eq!(
            again["SnapshotId"], snap1,
            "{name}: a retry reuses the run's snapshot"
        );
    }
    assert_eq!(fx.snapshots(&source).await, vec![snap1.clone()], "{name}");
    (source, snap1)
}

/// Dry run changes nothing and says what it would do.
async fn dry_run_changes_nothing<F: Fixture>(fx: &F) {
    let name = fx.backend().name();
    let source = fx.new_source().await;
    snapshot(fx, fx.snapshot(&[&source]), &unique("conf-before-dry")).await;
    let mut dry = fx.snapshot(&[&source]);
    dry.dry_run = true;
    let out = snapshot(fx, dry, &unique("conf-dry")).await;
    assert_eq!(out["DryRun"], "true");
    assert_eq!(
        fx.snapshots(&source).await.len(),
        1,
        "{name}: dry run made nothing"
    );
}

/// Restore the named snapshot into a staging volume, once per execution, never the production
/// volume; a backend with restore outputs reports them.
async fn restore_is_idempotent_and_never_targets_production<F: Fixture>(
    fx: &F,
    caps: Capabilities,
) {
    let name = fx.backend().name();
    let source = fx.new_source().await;
    let snap1 =
        snapshot(fx, fx.snapshot(&[&source]), &unique("conf-run1")).await["SnapshotId"].clone();
    let r1 = unique("conf-restore");
    let (out, _) = drive(
        |s| restore_step(fx.backend(), s),
        fx.restore(Some(&snap1), None),
        &r1,
    )
    .await
    .unwrap();
    let vol = out["VolumeId"].clone();
    assert_eq!(out["SnapshotId"], snap1);
    assert_ne!(vol, source, "{name}: never the production volume");
    if caps.restore_outputs {
        assert_eq!(out["PvcName"], vol, "{name}: {out:?}");
    }
    drive(
        |s| restore_step(fx.backend(), s),
        fx.restore(Some(&snap1), None),
        &r1,
    )
    .await
    .unwrap();
    assert_eq!(
        fx.staging_volumes(&execution(&r1)).await,
        vec![vol.clone()],
        "{name}: a retried restore reuses its volume"
    );
}

/// Snapshots of two runs and, newest of all, one someone else made: returns them in that order.
async fn two_runs_and_a_foreign_snapshot<F: Fixture>(fx: &F, source: &str) -> [String; 3] {
    let snap1 =
        snapshot(fx, fx.snapshot(&[source]), &unique("conf-run1")).await["SnapshotId"].clone();
    fx.tick().await;
    let snap2 =
        snapshot(fx, fx.snapshot(&[source]), &unique("conf-run2")).await["SnapshotId"].clone();
    fx.tick().await;
    let foreign = fx.foreign_snapshot(source).await;
    [snap1, snap2, foreign]
}

/// A newer snapshot someone else made is never picked by `sourceVolumeId`.
async fn restore_picks_the_newest_snapstage_snapshot<F: Fixture>(fx: &F) {
    let name = fx.backend().name();
    let source = fx.new_source().await;
    let [_, snap2, foreign] = two_runs_and_a_foreign_snapshot(fx, &source).await;
    let (out, _) = drive(
        |s| restore_step(fx.backend(), s),
        fx.restore(None, Some(&source)),
        &unique("conf-newest"),
    )
    .await
    .unwrap();
    assert_eq!(
        out["SnapshotId"], snap2,
        "{name}: newest snapstage snapshot, not {foreign}"
    );
}

/// Retention: keep 2 → the oldest run's snapshot goes; the next run's, this run's and the
/// foreign one stay. A foreign snapshot is refused by delete, whatever asks.
async fn retention_deletes_only_ours<F: Fixture>(fx: &F) {
    let name = fx.backend().name();
    let source = fx.new_source().await;
    let [snap1, snap2, foreign] = two_runs_and_a_foreign_snapshot(fx, &source).await;
    let mut keep = fx.snapshot(&[&source]);
    keep.retain = Some(2);
    fx.tick().await;
    let out = snapshot(fx, keep, &unique("conf-run3")).await;
    let snap3 = out["SnapshotId"].clone();
    assert_eq!(out["SnapshotsDeleted"], "1", "{name}");
    let mut left = fx.snapshots(&source).await;
    left.sort();
    let mut want = vec![snap2.clone(), snap3.clone(), foreign.clone()];
    want.sort();
    assert_eq!(left, want, "{name}: retention deleted only {snap1}");

    let retention = fx.backend().retention().expect("declared: retention");
    let e = retention.delete_snapshot(&foreign).await.unwrap_err();
    assert!(matches!(e, Error::Refused(_)), "{name}: {e:?}");
}

/// `copyTo`: each snapshot copied to the other region, once per execution.
async fn region_copy<F: Fixture>(fx: &F) {
    let name = fx.backend().name();
    let source = fx.new_source().await;
    let mut p = fx.snapshot(&[&source]);
    p.copy_to = Some(CopyTarget {
        region: "us-west-2".into(),
        kms_key_id: None,
    });
    let run = unique("conf-copy");
    let out = snapshot(fx, p.clone(), &run).await;
    assert_eq!(out["CopyRegion"], "us-west-2", "{name}: {out:?}");
    let copy = out["CopiedSnapshotIds"].clone();
    assert!(!copy.is_empty(), "{name}: {out:?}");
    assert_ne!(
        copy, out["SnapshotId"],
        "{name}: a copy is a snapshot of its own"
    );
    let again = snapshot(fx, p, &run).await;
    assert_eq!(
        again["CopiedSnapshotIds"], copy,
        "{name}: a retry reuses the run's copy"
    );
}

/// `copyTo` on a backend without regions is a configuration error naming the parameter.
async fn region_copy_is_refused<F: Fixture>(fx: &F) {
    let name = fx.backend().name();
    let source = fx.new_source().await;
    let mut p = fx.snapshot(&[&source]);
    p.copy_to = Some(CopyTarget {
        region: "us-west-2".into(),
        kms_key_id: None,
    });
    let e = drive(
        |s| snapshot_step(fx.backend(), s),
        p,
        &unique("conf-nocopy"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.failure_kind(),
        FailureKind::ConfigurationError,
        "{name}: {e}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("copyTo: backend {name:?} cannot copy")),
        "{name}: {e}"
    );
}

/// `selector` on a backend that selects by name only is a configuration error, before any
/// snapshot.
async fn selector_is_refused<F: Fixture>(fx: &F) {
    let name = fx.backend().name();
    let mut p = fx.snapshot(&[]);
    p.selector = Some("app=orders-db".into());
    let e = drive(|s| snapshot_step(fx.backend(), s), p, &unique("conf-nosel"))
        .await
        .unwrap_err();
    assert_eq!(
        e.failure_kind(),
        FailureKind::ConfigurationError,
        "{name}: {e}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "selector: backend {name:?} selects sources by name only"
        )),
        "{name}: {e}"
    );
}

/// A snapshot that does not exist is a configuration error naming the field.
async fn a_missing_snapshot_is_a_configuration_error<F: Fixture>(fx: &F) {
    let name = fx.backend().name();
    let source = fx.new_source().await;
    let missing = match fx.kind() {
        BackendKind::Ebs => "snap-0123456789abcdef0".to_string(),
        _ => format!("{source}.snapstage-0000000000000000"),
    };
    let e = drive(
        |s| restore_step(fx.backend(), s),
        fx.restore(Some(&missing), None),
        &unique("conf-missing"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.failure_kind(),
        FailureKind::ConfigurationError,
        "{name}: {e}"
    );
    assert!(e.to_string().starts_with("snapshotId:"), "{name}: {e}");
}

/// An id of another backend's shape is refused before any call, naming the field.
async fn an_id_of_another_shape_is_refused_before_any_call<F: Fixture>(fx: &F) {
    let name = fx.backend().name();
    let wrong = match fx.kind() {
        BackendKind::Ebs => "db.snapstage-1",
        // "snap-0123" is a valid VolumeSnapshot name: for CSI the wrong shape is a name the API
        // server would refuse.
        BackendKind::Csi => "Snap_0123",
        _ => "snap-0123",
    };
    let e = drive(
        |s| restore_step(fx.backend(), s),
        fx.restore(Some(wrong), None),
        &unique("conf-shape"),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().starts_with("snapshotId:"), "{name}: {e}");
}

// ---- EBS on moto ----

struct EbsFixture {
    ec2: aws_sdk_ec2::Client,
    backend: Ebs,
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

impl EbsFixture {
    /// The backend and the fixture's own EC2 client, both on moto's cloud endpoint.
    async fn on(m: &testkit::Moto) -> Self {
        let sdk = testkit::sdk_config(&m.cloud).await;
        EbsFixture {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            backend: Ebs::new(aws_sdk_ec2::Client::new(&sdk)),
        }
    }
}

impl Fixture for EbsFixture {
    async fn tick(&self) {
        // To the next whole second, and a little past it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1050 - u64::from(now.subsec_millis()))).await;
    }
    type B = Ebs;
    fn backend(&self) -> &Ebs {
        &self.backend
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Ebs
    }
    async fn new_source(&self) -> String {
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Volume)
            .tags(Tag::builder().key("env").value("production").build())
            .build();
        let v = self
            .ec2
            .create_volume()
            .availability_zone("us-east-1a")
            .size(8)
            .tag_specifications(tags)
            .send()
            .await
            .unwrap();
        v.volume_id().unwrap().to_string()
    }
    async fn foreign_snapshot(&self, source: &str) -> String {
        // moto's start times have one-second resolution: make it clearly the newest.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let s = self
            .ec2
            .create_snapshot()
            .volume_id(source)
            .description("made by hand")
            .send()
            .await
            .unwrap();
        s.snapshot_id().unwrap().to_string()
    }
    async fn snapshots(&self, source: &str) -> Vec<String> {
        let out = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter("volume-id", source))
            .send()
            .await
            .unwrap();
        out.snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id().map(String::from))
            .collect()
    }
    async fn staging_volumes(&self, ex: &Execution) -> Vec<String> {
        let out = self
            .ec2
            .describe_volumes()
            .filters(filter("tag:snapstage:execution", &execution_tag(ex)))
            .send()
            .await
            .unwrap();
        out.volumes()
            .iter()
            .filter_map(|v| v.volume_id().map(String::from))
            .collect()
    }
}

#[tokio::test]
async fn ebs_passes_the_suite() {
    let Some(m) = testkit::moto("conformance (ebs)") else {
        return;
    };
    let fx = EbsFixture::on(&m).await;
    conformance(&fx, EBS).await;
}

/// moto keeps EC2 start times to the second, so snapshots made within one second tie. Restore's
/// "newest" and retention's order must break the tie the same way, or a restore could pick the
/// snapshot that retention considers older (and deletes first).
#[tokio::test]
async fn ebs_newest_breaks_equal_start_times_as_retention_does() {
    let Some(m) = testkit::moto("conformance (ebs ties)") else {
        return;
    };
    let fx = EbsFixture::on(&m).await;
    let source = fx.new_source().await;
    let mut made = Vec::new();
    for _ in 0..5 {
        fx.tick().await; // at the start of a second: the next two are likely to share it
        for _ in 0..2 {
            let out = snapshot(&fx, fx.snapshot(&[&source]), &unique("conf-tie")).await;
            made.push(out["SnapshotId"].clone());
        }
        let started: Vec<_> = fx
            .ec2
            .describe_snapshots()
            .set_snapshot_ids(Some(made.clone()))
            .send()
            .await
            .unwrap()
            .snapshots()
            .iter()
            .filter_map(|s| s.start_time().copied())
            .collect();
        let latest = started.iter().max().copied();
        if started.iter().filter(|t| Some(**t) == latest).count() >= 2 {
            break; // the newest two tie
        }
    }
    let kept = fx.backend.managed_snapshots(&source).await.unwrap();
    let newest = fx.backend.newest_snapshot(&source).await.unwrap().unwrap();
    assert_eq!(
        newest.id,
        kept[0].id,
        "restore's newest vs retention's order {:?}",
        kept.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
}

// ---- FlashArray on the double ----

struct FlashArrayFixture {
    double: Double,
    backend: FlashArray,
}

const GIB: u64 = 1 << 30;

impl Fixture for FlashArrayFixture {
    type B = FlashArray;
    fn backend(&self) -> &FlashArray {
        &self.backend
    }
    fn kind(&self) -> BackendKind {
        BackendKind::FlashArray
    }
    fn section(&self) -> Option<FlashArrayParams> {
        Some(FlashArrayParams {
            endpoint: self.double.url("fa"),
            api_token_secret: "given-directly-in-this-suite".into(),
            ca_bundle: None,
            protection_group: None,
            replicated_from: None,
        })
    }
    async fn new_source(&self) -> String {
        let name = format!("db-{}", &unique("v").replace(['.', ':'], "-"));
        let name: String = name.chars().take(40).collect();
        let name = name.trim_end_matches('-').to_string();
        self.double
            .seed(
                "fa",
                json!({"volumes": [{"name": name, "provisioned": 8 * GIB}]}),
            )
            .await;
        name
    }
    async fn foreign_snapshot(&self, source: &str) -> String {
        self.double
            .seed(
                "fa",
                json!({"snapshots": [{"source": source, "suffix": "nightly-by-hand"}]}),
            )
            .await;
        format!("{source}.nightly-by-hand")
    }
    async fn snapshots(&self, source: &str) -> Vec<String> {
        let st = self.double.state("fa").await;
        let destroyed: Vec<&str> = st["destroyed_volume_snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        st["volume_snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .filter(|n| n.starts_with(&format!("{source}.")) && !destroyed.contains(n))
            .map(String::from)
            .collect()
    }
    async fn staging_volumes(&self, ex: &Execution) -> Vec<String> {
        let want = snapstage::storage::flasharray::staging_volume_name("x", ex);
        let tail = &want[1..];
        let st = self.double.state("fa").await;
        st["volumes"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|n| n.ends_with(tail))
            .cloned()
            .collect()
    }
}

#[tokio::test]
async fn flasharray_passes_the_suite() {
    let Some(double) = Double::start(&["fa"]) else {
        return;
    };
    let backend = double.backend("fa");
    let fx = FlashArrayFixture { double, backend };
    conformance(&fx, FLASHARRAY).await;
    fx.double.assert_no_violations().await;
}

// ---- Kubernetes CSI on the API server double ----

const PROD_NS: &str = "production";
const STAGING_NS: &str = "snapstage-staging";

struct CsiFixture {
    double: KubeDouble,
    backend: Csi,
    params: CsiParams,
    sources: std::sync::atomic::AtomicU32,
}

impl CsiFixture {
    async fn start() -> Option<Self> {
        let double = KubeDouble::start()?;
        double
            .seed_namespace(PROD_NS, json!({"env": "production"}))
            .await;
        double.seed_default_snapshot_class().await;
        // Snapshots become ready on their second read: the steps go through continuations.
        double.configure(json!({"ready_after_reads": 2})).await;
        let params = csi_params();
        let backend = Csi::new(double.client(), params.clone());
        Some(Self {
            double,
            backend,
            params,
            sources: std::sync::atomic::AtomicU32::new(0),
        })
    }
}

fn csi_params() -> CsiParams {
    CsiParams {
        cluster: ClusterConfig::InCluster,
        namespace: PROD_NS.into(),
        snapshot_class: None,
        group_snapshot_class: None,
        staging_namespace: Some(STAGING_NS.into()),
        storage_class: None,
    }
}

impl Fixture for CsiFixture {
    type B = Csi;
    fn backend(&self) -> &Csi {
        &self.backend
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Csi
    }
    fn csi_section(&self) -> Option<CsiParams> {
        Some(self.params.clone())
    }
    async fn new_source(&self) -> String {
        let n = self
            .sources
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("orders-db-{n}");
        self.double
            .seed_pvc(PROD_NS, &name, 8 * GIB, json!({"app": "orders-db"}))
            .await;
        name
    }
    async fn foreign_snapshot(&self, source: &str) -> String {
        let name = format!("{source}-nightly-by-hand");
        self.double
            .seed(vec![json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": name, "namespace": PROD_NS},
                "spec": {"source": {"persistentVolumeClaimName": source}}
            })])
            .await;
        name
    }
    async fn snapshots(&self, source: &str) -> Vec<String> {
        self.double
            .objects("volumesnapshots", Some(PROD_NS))
            .await
            .iter()
            .filter(|s| s["spec"]["source"]["persistentVolumeClaimName"] == source)
            .filter_map(|s| s["metadata"]["name"].as_str().map(String::from))
            .collect()
    }
    async fn staging_volumes(&self, ex: &Execution) -> Vec<String> {
        let label = snapstage::kube::names::execution_label(&ex.key);
        self.double
            .objects("persistentvolumeclaims", Some(STAGING_NS))
            .await
            .iter()
            .filter(|p| p["metadata"]["labels"]["snapstage.io/execution"] == label.as_str())
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect()
    }
}

#[tokio::test]
async fn csi_passes_the_suite() {
    let Some(fx) = CsiFixture::start().await else {
        return;
    };
    conformance(&fx, CSI).await;
    // Each restore made exactly one pre-bound content, one staging VolumeSnapshot and one PVC,
    // and retention's Delete policy took the deleted snapshot's content with it.
    let staged = fx.double.names("volumesnapshots", Some(STAGING_NS)).await;
    let claims = fx
        .double
        .names("persistentvolumeclaims", Some(STAGING_NS))
        .await;
    assert_eq!(
        staged, claims,
        "one staging VolumeSnapshot per PVC, same name"
    );
    assert_eq!(claims.len(), 2, "two restores (named, newest): {claims:?}");
    let contents = fx.double.objects("volumesnapshotcontents", None).await;
    let prod = fx.double.names("volumesnapshots", Some(PROD_NS)).await;
    let bound_to_prod = contents
        .iter()
        .filter(|c| c["spec"]["volumeSnapshotRef"]["namespace"] == PROD_NS)
        .count();
    assert_eq!(
        bound_to_prod,
        prod.len(),
        "one content per production snapshot"
    );
    for c in contents
        .iter()
        .filter(|c| c["spec"]["volumeSnapshotRef"]["namespace"] == STAGING_NS)
    {
        assert_eq!(c["spec"]["deletionPolicy"], "Retain", "{c}");
    }
}

/// CSI only: one VolumeGroupSnapshot cuts every PVC the selector picks at one instant (the
/// double's controller makes the member snapshots as external-snapshotter 8.x does); a retry
/// reuses the group; a member restores into a staging PVC.
#[tokio::test]
async fn csi_group_snapshot_cuts_the_selected_pvcs_together() {
    let Some(fx) = CsiFixture::start().await else {
        return;
    };
    fx.double
        .seed(vec![json!({
            "apiVersion": "groupsnapshot.storage.k8s.io/v1beta1", "kind": "VolumeGroupSnapshotClass",
            "metadata": {"name": "double-group"},
            "driver": snapstage_localenv::kube_double::DRIVER, "deletionPolicy": "Delete"
        })])
        .await;
    for pvc in ["shop-data", "shop-wal"] {
        fx.double
            .seed_pvc(PROD_NS, pvc, 4 * GIB, json!({"app": "shop-db"}))
            .await;
    }
    fx.double
        .seed_pvc(PROD_NS, "other-db", 4 * GIB, json!({"app": "other"}))
        .await;
    // Several reads per invocation (a create per selected PVC): ready only on a later one.
    fx.double.configure(json!({"ready_after_reads": 8})).await;
    let mut params = csi_params();
    params.group_snapshot_class = Some("double-group".into());
    let backend = Csi::new(fx.double.client(), params.clone());
    let mut p = fx.snapshot(&[]);
    p.volume_ids.clear();
    p.selector = Some("app=shop-db".into());
    p.csi = Some(params.clone());
    let key = unique("conf-group");
    let (out, invocations) = drive(|s| snapshot_step(&backend, s), p.clone(), &key)
        .await
        .unwrap();
    assert!(invocations > 1, "followed until ready");
    let group = snapstage::storage::csi::group_snapshot_name(&execution(&key));
    let ids: Vec<&str> = out["SnapshotIds"].split(',').collect();
    assert_eq!(
        ids,
        [format!("{group}/shop-data"), format!("{group}/shop-wal")],
        "{out:?}"
    );
    // A retried run reuses the group.
    drive(|s| snapshot_step(&backend, s), p, &key)
        .await
        .unwrap();
    assert_eq!(
        fx.double.names("volumegroupsnapshots", Some(PROD_NS)).await,
        vec![group.clone()]
    );
    let mut members: Vec<String> = fx
        .double
        .objects("volumesnapshots", Some(PROD_NS))
        .await
        .iter()
        .filter(|s| s["metadata"]["ownerReferences"][0]["name"] == group.as_str())
        .map(|s| {
            s["spec"]["source"]["persistentVolumeClaimName"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Member names are the controller's (`snapshot-<hash>`): their order says nothing.
    members.sort();
    assert_eq!(
        members,
        ["shop-data", "shop-wal"],
        "one member per selected PVC"
    );

    // A member restores like any snapshot.
    let r = unique("conf-group-restore");
    let mut rp = fx.restore(Some(ids[1]), None);
    rp.csi = Some(params);
    let (out, _) = drive(|s| restore_step(&backend, s), rp, &r).await.unwrap();
    assert_eq!(out["SnapshotId"], ids[1]);
    assert_eq!(
        fx.staging_volumes(&execution(&r)).await,
        vec![out["VolumeId"].clone()]
    );
}

/// CSI `targets`: two members of one VolumeGroupSnapshot snapstage made restore into staging
/// PVCs named as the user chose, labelled as the run's; a retry reuses them; a name held by a
/// PVC snapstage did not make is refused before anything is created.
#[tokio::test]
async fn csi_targets_restore_group_members_to_chosen_pvc_names() {
    use snapstage::storage::steps::RestoreTarget;
    let Some(fx) = CsiFixture::start().await else {
        return;
    };
    fx.double
        .seed(vec![json!({
            "apiVersion": "groupsnapshot.storage.k8s.io/v1beta1", "kind": "VolumeGroupSnapshotClass",
            "metadata": {"name": "double-group"},
            "driver": snapstage_localenv::kube_double::DRIVER, "deletionPolicy": "Delete"
        })])
        .await;
    for pvc in ["ci-home", "ci-cache"] {
        fx.double
            .seed_pvc(PROD_NS, pvc, 4 * GIB, json!({"app": "ci"}))
            .await;
    }
    let mut params = csi_params();
    params.group_snapshot_class = Some("double-group".into());
    let backend = Csi::new(fx.double.client(), params.clone());
    let mut p = fx.snapshot(&[]);
    p.volume_ids.clear();
    p.selector = Some("app=ci".into());
    p.csi = Some(params.clone());
    let key = unique("conf-targets-snap");
    drive(|s| snapshot_step(&backend, s), p, &key)
        .await
        .unwrap();
    let group = snapstage::storage::csi::group_snapshot_name(&execution(&key));

    let target = |source: &str, name: &str, output: Option<&str>| RestoreTarget {
        source_volume_id: source.into(),
        name: name.into(),
        output: output.map(String::from),
    };
    let mut rp = fx.restore(None, None);
    rp.csi = Some(params.clone());
    rp.targets = Some(vec![
        target("ci-home", "staging-home", Some("Home")),
        target("ci-cache", "staging-cache", None),
    ]);
    let r = unique("conf-targets-restore");
    let (out, _) = drive(|s| restore_step(&backend, s), rp.clone(), &r)
        .await
        .unwrap();
    assert_eq!(
        out["SnapshotId"], group,
        "the newest group snapstage made: {out:?}"
    );
    assert_eq!(out["VolumeIds"], "staging-home,staging-cache", "{out:?}");
    assert_eq!(out["HomeVolumeId"], "staging-home", "{out:?}");
    let run = snapstage::kube::names::execution_label(&r);
    let claims = fx
        .double
        .objects("persistentvolumeclaims", Some(STAGING_NS))
        .await;
    let mut names: Vec<&str> = claims
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["staging-cache", "staging-home"]);
    for c in &claims {
        let labels = &c["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "snapstage", "{c}");
        assert_eq!(labels["snapstage.io/role"], "staging", "{c}");
        assert_eq!(labels["snapstage.io/execution"], run.as_str(), "{c}");
        assert_eq!(c["spec"]["dataSource"]["kind"], "VolumeSnapshot", "{c}");
    }
    for c in fx
        .double
        .objects("volumesnapshotcontents", None)
        .await
        .iter()
        .filter(|c| c["spec"]["volumeSnapshotRef"]["namespace"] == STAGING_NS)
    {
        assert_eq!(c["spec"]["deletionPolicy"], "Retain", "{c}");
    }
    let before = (
        fx.double
            .names("persistentvolumeclaims", Some(STAGING_NS))
            .await,
        fx.double.names("volumesnapshots", Some(STAGING_NS)).await,
        fx.double.names("volumesnapshotcontents", None).await,
    );

    // A retry of the run reuses its PVCs.
    let (again, _) = drive(|s| restore_step(&backend, s), rp.clone(), &r)
        .await
        .unwrap();
    assert_eq!(again["VolumeIds"], out["VolumeIds"]);
    let after = (
        fx.double
            .names("persistentvolumeclaims", Some(STAGING_NS))
            .await,
        fx.double.names("volumesnapshots", Some(STAGING_NS)).await,
        fx.double.names("volumesnapshotcontents", None).await,
    );
    assert_eq!(after, before, "a retry makes nothing new");

    // Another run into the same names: a PVC is not overwritten in place.
    let e = drive(
        |s| restore_step(&backend, s),
        rp.clone(),
        &unique("conf-targets-other"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError, "{e}");
    assert!(
        e.to_string().contains("cannot be overwritten in place"),
        "{e}"
    );

    // All or nothing: the second target's VolumeSnapshotContent name is held by another run's
    // object, so its restore fails; the first target's PVC and VolumeSnapshot are deleted again
    // (its Retain content stays: nobody deletes contents), and the other run's content stays.
    let held = snapstage::storage::csi::staging_content_name(STAGING_NS, "roll-second");
    fx.double
        .seed(vec![json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": held, "labels": {
                "app.kubernetes.io/managed-by": "snapstage", "snapstage.io/role": "staging",
                "snapstage.io/execution": "another-run"}},
            "spec": {"deletionPolicy": "Retain", "driver": snapstage_localenv::kube_double::DRIVER,
                     "source": {"snapshotHandle": "elsewhere"},
                     "volumeSnapshotRef": {"kind": "VolumeSnapshot", "name": "x", "namespace": "other"}}
        })])
        .await;
    let before = (
        fx.double
            .names("persistentvolumeclaims", Some(STAGING_NS))
            .await,
        fx.double.names("volumesnapshots", Some(STAGING_NS)).await,
        fx.double.names("volumesnapshotcontents", None).await,
    );
    let mut roll = rp.clone();
    roll.targets = Some(vec![
        target("ci-home", "roll-first", None),
        target("ci-cache", "roll-second", None),
    ]);
    let e = drive(
        |s| restore_step(&backend, s),
        roll,
        &unique("conf-targets-roll"),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("rolled back"), "{e}");
    assert!(e.to_string().contains("roll-first"), "{e}");
    let after = (
        fx.double
            .names("persistentvolumeclaims", Some(STAGING_NS))
            .await,
        fx.double.names("volumesnapshots", Some(STAGING_NS)).await,
        fx.double.names("volumesnapshotcontents", None).await,
    );
    assert_eq!(
        (&after.0, &after.1),
        (&before.0, &before.1),
        "the failed set's PVC and VolumeSnapshot are rolled back"
    );
    let first_content = snapstage::storage::csi::staging_content_name(STAGING_NS, "roll-first");
    assert!(
        after.2.contains(&held) && after.2.contains(&first_content),
        "contents are never deleted: the other run's and the rolled-back target's stay: {:?}",
        after.2
    );

    // A name held by a PVC snapstage did not make: refused, nothing created.
    fx.double
        .seed_pvc(STAGING_NS, "someones-pvc", GIB, json!({"team": "qa"}))
        .await;
    let before = (
        fx.double
            .names("persistentvolumeclaims", Some(STAGING_NS))
            .await,
        fx.double.names("volumesnapshots", Some(STAGING_NS)).await,
        fx.double.names("volumesnapshotcontents", None).await,
    );
    let mut foreign = rp.clone();
    foreign.snapshot_id = Some(group.clone());
    foreign.targets = Some(vec![
        target("ci-home", "fresh-home", None),
        target("ci-cache", "someones-pvc", None),
    ]);
    let e = drive(
        |s| restore_step(&backend, s),
        foreign,
        &unique("conf-targets-foreign"),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("does not carry snapstage's staging mark"),
        "{e}"
    );
    let after = (
        fx.double
            .names("persistentvolumeclaims", Some(STAGING_NS))
            .await,
        fx.double.names("volumesnapshots", Some(STAGING_NS)).await,
        fx.double.names("volumesnapshotcontents", None).await,
    );
    assert_eq!(after, before, "nothing created when a target is refused");
}

// ---- Kubernetes CSI on the local control plane of real components ----

/// Real VolumeSnapshots of real PVCs (provisioned by csi-provisioner), made ready by the real
/// snapshot-controller and csi-snapshotter; counted through `kubectl`.
struct LocalCsiFixture {
    kube: LocalKube,
    client: kube::Client,
    backend: Csi,
    params: CsiParams,
    app: String,
}

/// The production namespace `scripts/localkube.sh` makes (labelled env=production).
const LOCAL_PROD_NS: &str = "prod";

impl LocalCsiFixture {
    async fn start(test: &str) -> Option<Self> {
        let kube = LocalKube::get(test)?;
        let path = kube.admin_kubeconfig();
        let config = snapstage::kube::client::kubeconfig::from_file(&path)
            .await
            .unwrap();
        let client =
            snapstage::kube::client::client(config, &ClusterConfig::KubeconfigFile(path)).unwrap();
        let mut params = csi_params();
        params.namespace = LOCAL_PROD_NS.into();
        let backend = Csi::new(client.clone(), params.clone());
        Some(Self {
            kube,
            client,
            backend,
            params,
            app: unique("conf-app"),
        })
    }

    fn pvc(&self, name: &str, app: &str) {
        self.kube.apply(
            &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": LOCAL_PROD_NS, "labels": {"app": app}},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}})
            .to_string(),
        );
        self.kube.pvc_volume_dir(LOCAL_PROD_NS, name);
    }
}

impl Fixture for LocalCsiFixture {
    type B = Csi;
    fn backend(&self) -> &Csi {
        &self.backend
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Csi
    }
    fn csi_section(&self) -> Option<CsiParams> {
        Some(self.params.clone())
    }
    /// creationTimestamp has whole seconds: the next snapshot must be in a later one.
    async fn tick(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let rest = Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos()));
        tokio::time::sleep(rest + Duration::from_millis(50)).await;
    }
    async fn new_source(&self) -> String {
        let name = unique("conf-src");
        self.pvc(&name, &self.app);
        name
    }
    async fn foreign_snapshot(&self, source: &str) -> String {
        let name = format!("{source}-by-hand");
        self.kube.apply(
            &json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": name, "namespace": LOCAL_PROD_NS},
                "spec": {"source": {"persistentVolumeClaimName": source}}})
            .to_string(),
        );
        self.kube.eventually(
            "the hand-made snapshot ready",
            Duration::from_secs(60),
            || {
                let vs = self
                    .kube
                    .get_json("volumesnapshot", Some(LOCAL_PROD_NS), &name)?;
                (vs["status"]["readyToUse"] == true).then_some(())
            },
        );
        name
    }
    async fn snapshots(&self, source: &str) -> Vec<String> {
        self.kube
            .list("volumesnapshots", Some(LOCAL_PROD_NS))
            .iter()
            .filter(|s| s["spec"]["source"]["persistentVolumeClaimName"] == source)
            .filter(|s| s["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|s| s["metadata"]["name"].as_str().map(String::from))
            .collect()
    }
    async fn staging_volumes(&self, ex: &Execution) -> Vec<String> {
        let label = snapstage::kube::names::execution_label(&ex.key);
        self.kube
            .list("persistentvolumeclaims", Some(STAGING_NS))
            .iter()
            .filter(|p| p["metadata"]["labels"]["snapstage.io/execution"] == label.as_str())
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect()
    }
}

#[tokio::test]
async fn csi_on_the_local_control_plane_passes_the_suite() {
    let Some(fx) = LocalCsiFixture::start("csi_on_the_local_control_plane_passes_the_suite").await
    else {
        return;
    };
    conformance(&fx, CSI).await;
}

/// One VolumeGroupSnapshot by the real controllers: its members are the driver's snapshots of
/// every selected PVC, and a member restores into a staging PVC Bound by csi-provisioner.
#[tokio::test]
async fn csi_group_snapshot_on_the_local_control_plane() {
    let Some(fx) = LocalCsiFixture::start("csi_group_snapshot_on_the_local_control_plane").await
    else {
        return;
    };
    let app = unique("shop");
    let (data, wal) = (format!("{app}-data"), format!("{app}-wal"));
    fx.pvc(&data, &app);
    fx.pvc(&wal, &app);
    let mut params = fx.params.clone();
    params.group_snapshot_class = Some("snapstage-hostpath".into());
    let mut p = fx.snapshot(&[]);
    p.selector = Some(format!("app={app}"));
    p.csi = Some(params.clone());
    let backend = Csi::new(fx.client.clone(), params.clone());
    let key = unique("conf-group");
    let (out, _) = drive(|s| snapshot_step(&backend, s), p, &key)
        .await
        .unwrap();
    let group = snapstage::storage::csi::group_snapshot_name(&execution(&key));
    let ids: Vec<&str> = out["SnapshotIds"].split(',').collect();
    assert_eq!(
        ids,
        [format!("{group}/{data}"), format!("{group}/{wal}")],
        "{out:?}"
    );
    let vgs = fx
        .kube
        .get_json("volumegroupsnapshot", Some(LOCAL_PROD_NS), &group)
        .unwrap();
    assert_eq!(vgs["status"]["readyToUse"], true, "{vgs}");
    let r = unique("conf-group-restore");
    let mut rp = fx.restore(Some(ids[1]), None);
    rp.csi = Some(params);
    let (out, _) = drive(|s| restore_step(&fx.backend, s), rp, &r)
        .await
        .unwrap();
    assert_eq!(
        fx.staging_volumes(&execution(&r)).await,
        vec![out["VolumeId"].clone()]
    );
    fx.kube.pvc_volume_dir(STAGING_NS, &out["VolumeId"]);
}
