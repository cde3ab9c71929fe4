//! The CSI backend when the network between it and the Kubernetes API server goes wrong: the
//! API server double (`tests/doubles/kubernetes.py`, with its simulated snapshot controller)
//! behind the fault-injecting proxy. Throttling (429 with Retry-After), 5xx `Status` answers,
//! bare gateway errors, resets, lost answers, hangs and slow answers are retried with backoff;
//! what cannot succeed ends as a typed failure after a bounded number of tries; and a run cut
//! short after any call converges, when re-run with the same execution, on exactly one
//! VolumeSnapshot and one VolumeSnapshotContent (snapshot) or one content, one staging
//! VolumeSnapshot and one PVC (restore) — counted in the double's state, not by the backend.
//!
//! Needs `.venv/bin/python`; prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use snapstage::job::contract::Deadline;
use snapstage::kube::api::ATTEMPTS;
use snapstage::kube::client::ClusterConfig;
use snapstage::kube::names::execution_label;
use snapstage::storage::BackendKind;
use snapstage::storage::csi::{Csi, CsiParams, snapshot_name};
use snapstage::storage::steps::{RestoreParams, SnapshotParams, restore_step, snapshot_step};
use snapstage::{Execution, FailureKind, Outcome, Result, Step};
use snapstage_localenv::faults::{Crash, Fault, FaultProxy, Rule};
use snapstage_localenv::kube_double::KubeDouble;
use snapstage_localenv::testkit::unique;

const PROD: &str = "production";
const STAGING: &str = "snapstage-staging";
const PVC: &str = "orders-db";
const VS_PATH: &str = "/apis/snapshot.storage.k8s.io/v1/namespaces/production/volumesnapshots";

struct Env {
    double: KubeDouble,
    proxy: FaultProxy,
    backend: Csi,
}

fn params() -> CsiParams {
    CsiParams {
        cluster: ClusterConfig::InCluster,
        namespace: PROD.into(),
        snapshot_class: None,
        group_snapshot_class: None,
        staging_namespace: Some(STAGING.into()),
        storage_class: None,
    }
}

async fn env() -> Option<Env> {
    let double = KubeDouble::start()?;
    double
        .seed_namespace(PROD, json!({"env": "production"}))
        .await;
    double.seed_default_snapshot_class().await;
    double
        .seed_pvc(PROD, PVC, 8 << 30, json!({"app": "orders"}))
        .await;
    // Ready on the second read: every snapshot goes through a continuation.
    double.configure(json!({"ready_after_reads": 2})).await;
    let proxy = FaultProxy::start(&double.url()).unwrap();
    let backend = Csi::new(KubeDouble::client_for(&proxy.url), params());
    Some(Env {
        double,
        proxy,
        backend,
    })
}

fn execution(key: &str) -> Execution {
    Execution {
        key: key.into(),
        origin: "codepipeline".into(),
        pipeline: Some("shop".into()),
        commit: None,
    }
}

fn snapshot_params() -> SnapshotParams {
    SnapshotParams {
        volume_ids: vec![PVC.into()],
        selector: None,
        backend: BackendKind::Csi,
        flasharray: None,
        csi: Some(params()),
        hooks: None,
        description: None,
        copy_to: None,
        retain: None,
        consistent_group: None,
        dry_run: false,
    }
}

fn restore_params(snapshot: &str) -> RestoreParams {
    RestoreParams {
        snapshot_id: Some(snapshot.into()),
        source_volume_id: None,
        availability_zone: None,
        volume_type: None,
        backend: BackendKind::Csi,
        flasharray: None,
        csi: Some(params()),
        targets: None,
        overwrite: false,
        dry_run: false,
    }
}

/// Runs a step to completion as the job contract does (each `Continue` state feeds the next
/// invocation); an error ends the run as a failed invocation would.
async fn drive<P: Clone>(
    f: impl AsyncFn(Step<P>) -> Result<Outcome>,
    params: P,
    key: &str,
) -> Result<BTreeMap<String, String>> {
    let mut state: Option<Value> = None;
    for _ in 0..20 {
        let step = Step {
            params: params.clone(),
            execution: execution(key),
            state: state.take(),
            deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(120)),
            artifacts: None,
        };
        match f(step).await? {
            Outcome::Done { outputs, .. } => return Ok(outputs),
            Outcome::Continue { state: s, .. } => state = Some(s),
        }
    }
    panic!("{key}: not done after 20 invocations")
}

impl Env {
    async fn snapshot(&self, key: &str) -> Result<BTreeMap<String, String>> {
        drive(|s| snapshot_step(&self.backend, s), snapshot_params(), key).await
    }

    async fn restore(&self, snapshot: &str, key: &str) -> Result<BTreeMap<String, String>> {
        drive(
            |s| restore_step(&self.backend, s),
            restore_params(snapshot),
            key,
        )
        .await
    }

    /// Objects of `plural` in `ns` (None: cluster-scoped) labelled with the run, by the double.
    async fn of_run(&self, plural: &str, ns: Option<&str>, key: &str) -> Vec<Value> {
        let label = execution_label(key);
        self.double
            .objects(plural, ns)
            .await
            .into_iter()
            .filter(|o| o["metadata"]["labels"]["snapstage.io/execution"] == label.as_str())
            .collect()
    }

    /// The run's production VolumeSnapshots and the contents bound to them.
    async fn snapshot_counts(&self, key: &str) -> (usize, usize) {
        let snaps = self.of_run("volumesnapshots", Some(PROD), key).await;
        let names: Vec<&str> = snaps
            .iter()
            .filter_map(|s| s["metadata"]["name"].as_str())
            .collect();
        let contents = self
            .double
            .objects("volumesnapshotcontents", None)
            .await
            .into_iter()
            .filter(|c| {
                c["spec"]["volumeSnapshotRef"]["namespace"] == PROD
                    && names.contains(&c["spec"]["volumeSnapshotRef"]["name"].as_str().unwrap())
            })
            .count();
        (snaps.len(), contents)
    }

    /// The run's staged contents, staging VolumeSnapshots and staging PVCs.
    async fn restore_counts(&self, key: &str) -> (usize, usize, usize) {
        (
            self.of_run("volumesnapshotcontents", None, key).await.len(),
            self.of_run("volumesnapshots", Some(STAGING), key)
                .await
                .len(),
            self.of_run("persistentvolumeclaims", Some(STAGING), key)
                .await
                .len(),
        )
    }

    fn faults_applied(&self) -> usize {
        self.proxy
            .seen()
            .iter()
            .filter(|s| s.fault.is_some())
            .count()
    }
}

fn transient_faults() -> Vec<Fault> {
    vec![
        Fault::kubernetes_too_many_requests(1),
        Fault::kubernetes(
            500,
            "InternalError",
            "Internal error occurred: etcdserver: leader changed",
        ),
        Fault::kubernetes(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
        Fault::kubernetes(
            504,
            "Timeout",
            "the server was unable to return a response in the time allotted",
        ),
        Fault::status(502),
        Fault::Reset,
        Fault::LoseAnswer,
        Fault::Hang,
        Fault::Slow(Duration::from_millis(300)),
    ]
}

#[tokio::test]
async fn transient_faults_at_every_snapshot_call_are_retried() {
    let Some(env) = env().await else {
        return;
    };
    // A snapshot of a named PVC: find the run's VolumeSnapshot, create it, follow it.
    let ops = [format!("GET {VS_PATH}/"), format!("POST {VS_PATH}")];
    for fault in transient_faults() {
        for op in &ops {
            let key = unique("csi-transient");
            env.proxy.heal();
            let before = env.faults_applied();
            // Two in a row: still within the retry budget.
            env.proxy.add(Rule::new(op, fault.clone(), 2));
            let out = env
                .snapshot(&key)
                .await
                .unwrap_or_else(|e| panic!("{fault:?} at {op}: {e}"));
            assert_eq!(out["SnapshotId"], snapshot_name(PVC, &execution(&key)));
            // A slow answer is an answer: the one POST is not repeated.
            let met = if matches!(fault, Fault::Slow(_)) && op.starts_with("POST") {
                1
            } else {
                2
            };
            assert_eq!(
                env.faults_applied() - before,
                met,
                "{fault:?} at {op}: {:#?}",
                env.proxy.seen()
            );
            assert_eq!(
                env.snapshot_counts(&key).await,
                (1, 1),
                "{fault:?} at {op}: one VolumeSnapshot, one content"
            );
        }
    }
}

#[tokio::test]
async fn transient_faults_at_every_restore_create_are_retried() {
    let Some(env) = env().await else {
        return;
    };
    let snap = env.snapshot(&unique("csi-restore-src")).await.unwrap()["SnapshotId"].clone();
    let ops = [
        "PATCH /api/v1/namespaces/snapstage-staging",
        "POST /apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents",
        "POST /apis/snapshot.storage.k8s.io/v1/namespaces/snapstage-staging/volumesnapshots",
        "POST /api/v1/namespaces/snapstage-staging/persistentvolumeclaims",
        "GET /api/v1/namespaces/snapstage-staging/pods",
    ];
    for fault in [
        Fault::LoseAnswer,
        Fault::Reset,
        Fault::kubernetes(503, "ServiceUnavailable", "unavailable"),
        Fault::kubernetes_too_many_requests(1),
    ] {
        for op in ops {
            let key = unique("csi-restore-transient");
            env.proxy.heal();
            env.proxy.add(Rule::new(op, fault.clone(), 2));
            let out = env
                .restore(&snap, &key)
                .await
                .unwrap_or_else(|e| panic!("{fault:?} at {op}: {e}"));
            assert_eq!(out["SnapshotId"], snap);
            assert_eq!(
                env.restore_counts(&key).await,
                (1, 1, 1),
                "{fault:?} at {op}: one content, one staging VolumeSnapshot, one PVC"
            );
        }
    }
}

#[tokio::test]
async fn what_cannot_succeed_fails_typed_after_bounded_tries() {
    let Some(env) = env().await else {
        return;
    };
    let post = format!("POST {VS_PATH}");
    let cases = [
        (
            Fault::kubernetes(503, "ServiceUnavailable", "unavailable"),
            FailureKind::SystemUnavailable,
            ATTEMPTS as usize,
        ),
        (
            Fault::kubernetes_too_many_requests(1),
            FailureKind::SystemUnavailable,
            ATTEMPTS as usize,
        ),
        (
            Fault::Reset,
            FailureKind::SystemUnavailable,
            ATTEMPTS as usize,
        ),
        (
            Fault::kubernetes(
                403,
                "Forbidden",
                "volumesnapshots.snapshot.storage.k8s.io is forbidden: User \"snapstage\" cannot create resource",
            ),
            FailureKind::PermissionError,
            1,
        ),
        (
            Fault::kubernetes(401, "Unauthorized", "Unauthorized"),
            FailureKind::PermissionError,
            1,
        ),
        (
            Fault::kubernetes(
                422,
                "Invalid",
                "VolumeSnapshot.snapshot.storage.k8s.io \"x\" is invalid",
            ),
            FailureKind::ConfigurationError,
            1,
        ),
    ];
    for (fault, kind, tries) in cases {
        let key = unique("csi-fails");
        env.proxy.heal();
        env.proxy.add(Rule::always(&post, fault.clone()));
        let before = env.proxy.count(&post);
        let e = env.snapshot(&key).await.unwrap_err();
        assert_eq!(e.failure_kind(), kind, "{fault:?}: {e}");
        assert_eq!(env.proxy.count(&post) - before, tries, "{fault:?}: tries");
        assert_eq!(env.snapshot_counts(&key).await, (0, 0), "{fault:?}");
    }
    // An API server that never answers: bounded by the client's read timeout and the tries.
    let key = unique("csi-hang");
    env.proxy.heal();
    env.proxy.add(Rule::always("GET", Fault::Hang));
    let e = env.snapshot(&key).await.unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::SystemUnavailable, "{e}");
    env.proxy.heal();
}

/// How many calls a clean run of `run` makes through the proxy.
async fn calls_of(env: &Env, run: impl AsyncFnOnce() -> Result<BTreeMap<String, String>>) -> usize {
    env.proxy.heal();
    let before = env.proxy.seen().len();
    run().await.unwrap();
    env.proxy.seen().len() - before
}

#[tokio::test]
async fn a_snapshot_cut_short_after_any_call_converges_on_one_snapshot() {
    let Some(env) = env().await else {
        return;
    };
    let count_key = unique("csi-count");
    let n_calls = calls_of(&env, || env.snapshot(&count_key)).await;
    assert!(n_calls >= 4, "a snapshot makes several calls ({n_calls})");
    for n in 1..=n_calls {
        let key = unique("csi-crash");
        env.proxy.heal();
        env.proxy.crash_after(n, Crash::LoseAnswer);
        assert!(
            env.snapshot(&key).await.is_err(),
            "crash after call {n}: the run was cut short"
        );
        env.proxy.heal();
        let out = env
            .snapshot(&key)
            .await
            .unwrap_or_else(|e| panic!("re-run after a crash at call {n}: {e}"));
        assert_eq!(out["SnapshotId"], snapshot_name(PVC, &execution(&key)));
        assert_eq!(
            env.snapshot_counts(&key).await,
            (1, 1),
            "crash after call {n}: one VolumeSnapshot, one content"
        );
    }
}

#[tokio::test]
async fn a_restore_cut_short_after_any_call_converges_on_one_pvc() {
    let Some(env) = env().await else {
        return;
    };
    let snap = env.snapshot(&unique("csi-crash-src")).await.unwrap()["SnapshotId"].clone();
    // The first restore also creates the staging namespace: count a later one.
    env.restore(&snap, &unique("csi-warm")).await.unwrap();
    let count_key = unique("csi-count");
    let n_calls = calls_of(&env, || env.restore(&snap, &count_key)).await;
    assert!(n_calls >= 8, "a restore makes several calls ({n_calls})");
    let mut volumes = Vec::new();
    for n in 1..=n_calls {
        let key = unique("csi-crash-restore");
        env.proxy.heal();
        env.proxy.crash_after(n, Crash::LoseAnswer);
        assert!(
            env.restore(&snap, &key).await.is_err(),
            "crash after call {n}: the run was cut short"
        );
        env.proxy.heal();
        let out = env
            .restore(&snap, &key)
            .await
            .unwrap_or_else(|e| panic!("re-run after a crash at call {n}: {e}"));
        assert_eq!(
            env.restore_counts(&key).await,
            (1, 1, 1),
            "crash after call {n}: one content, one staging VolumeSnapshot, one PVC"
        );
        volumes.push(out["VolumeId"].clone());
    }
    volumes.dedup();
    assert_eq!(volumes.len(), n_calls, "each run restored into its own PVC");
}
