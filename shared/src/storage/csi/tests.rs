//! The CSI backend against a Kubernetes API server double (HTTP-level fixtures): the two storage
//! steps driven with [`Csi`] directly, asserting the exact requests (method, path, selectors,
//! bodies) and answering with the JSON the API server and the snapshot controller produce.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::error::FailureKind;
use crate::job::contract::{Deadline, Outcome, Step};
use crate::job::params::{Layer, merge};
use crate::kube::fixture::{Exchange as X, Server, status_json};
use crate::storage::steps::{RestoreParams, SnapshotParams, restore_step, snapshot_step};

const KEY: &str = "direct/csi-fixture";
const PROD: &str = "prod";
const STAGING: &str = "snapstage-staging";
const VS: &str = "/apis/snapshot.storage.k8s.io/v1/namespaces/prod/volumesnapshots";
const VSC: &str = "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents";
const PVCS: &str = "/api/v1/namespaces/prod/persistentvolumeclaims";
const HANDLE: &str = "snap-0a1b2c3d4e5f60718";

fn serve(exchanges: Vec<X>) -> (kube::Client, Server) {
    crate::kube::fixture::serve(FIELD_MANAGER, exchanges)
}

fn ex() -> Execution {
    Execution {
        key: KEY.into(),
        origin: "direct".into(),
        pipeline: None,
        commit: None,
    }
}

fn h() -> String {
    execution_label(KEY)
}

fn snap_name(pvc: &str) -> String {
    format!("{pvc}-snapstage-{}", h())
}

fn staged(pvc: &str) -> String {
    format!("{pvc}-staging-{}", h())
}

fn csi_section(extra: Value) -> Value {
    let mut c = json!({"cluster": "inCluster", "namespace": PROD, "snapshotClass": "csi-aws-vsc",
        "stagingNamespace": STAGING, "storageClass": "gp3-csi"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn params<P: serde::de::DeserializeOwned>(v: Value) -> P {
    let Value::Object(values) = v else { panic!() };
    merge(&[Layer {
        source: "request",
        values,
    }])
    .unwrap()
}

fn step<P>(params: P, state: Option<Value>) -> Step<P> {
    Step {
        params,
        execution: ex(),
        state,
        deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(300)),
        artifacts: None,
    }
}

fn csi(client: kube::Client, extra: Value) -> Csi {
    Csi::new(client, serde_json::from_value(csi_section(extra)).unwrap())
}

fn managed_labels(role: &str, source: Option<&str>) -> Value {
    let mut l = json!({"app.kubernetes.io/managed-by": "snapstage",
        "app.kubernetes.io/part-of": "snapstage", "snapstage.io/execution": h(),
        "snapstage.io/role": role});
    if let Some(s) = source {
        l["snapstage.io/source"] = json!(s);
    }
    l
}

/// A production VolumeSnapshot as the snapshot controller reports it.
fn prod_snapshot(name: &str, pvc: &str, labels: Value, status: Value, created: &str) -> Value {
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": PROD, "uid": format!("uid-{name}"),
            "resourceVersion": "811", "creationTimestamp": created, "labels": labels},
        "spec": {"source": {"persistentVolumeClaimName": pvc}, "volumeSnapshotClassName": "csi-aws-vsc"},
        "status": status
    })
}

fn ready(content: &str) -> Value {
    json!({"boundVolumeSnapshotContentName": content, "creationTime": "2025-06-01T12:00:03Z",
        "readyToUse": true, "restoreSize": "20Gi"})
}

fn pending(content: &str) -> Value {
    json!({"boundVolumeSnapshotContentName": content, "readyToUse": false})
}

fn ours_ready(pvc: &str) -> Value {
    prod_snapshot(
        &snap_name(pvc),
        pvc,
        managed_labels("snapshot", Some(pvc)),
        ready("snapcontent-1111"),
        "2025-06-01T12:00:00Z",
    )
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": api_version,
           "metadata": {"resourceVersion": "90210"}, "items": items})
}

fn pvc(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}},
            "storageClassName": "gp3-csi",
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name}},
        "status": {"phase": "Pending"}})
}

fn pod(name: &str, claim: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": STAGING, "labels": labels},
        "spec": {"containers": [{"name": "db", "image": "postgres:17"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
        "status": {"phase": "Running"}})
}

fn done(o: Outcome) -> (String, BTreeMap<String, String>) {
    match o {
        Outcome::Done { summary, outputs } => (summary, outputs),
        other => panic!("expected Done, got {other:?}"),
    }
}

fn continued(o: Outcome) -> (String, Value) {
    match o {
        Outcome::Continue { summary, state, .. } => (summary, state),
        other => panic!("expected Continue, got {other:?}"),
    }
}

fn failure(r: Result<Outcome>) -> (FailureKind, String) {
    match r {
        Err(e) => (e.failure_kind(), e.to_string()),
        Ok(o) => panic!("expected a failure, got {o:?}"),
    }
}

async fn snap(
    request: Value,
    state: Option<Value>,
    extra: Value,
    exchanges: Vec<X>,
) -> (Result<Outcome>, Vec<String>) {
    let (client, server) = serve(exchanges);
    let b = csi(client, extra);
    let out = snapshot_step(&b, step(params::<SnapshotParams>(request), state)).await;
    drop(b);
    (out, server.finish().await)
}

async fn restore(
    request: Value,
    state: Option<Value>,
    extra: Value,
    exchanges: Vec<X>,
) -> (Result<Outcome>, Vec<String>) {
    let (client, server) = serve(exchanges);
    let b = csi(client, extra);
    let out = restore_step(&b, step(params::<RestoreParams>(request), state)).await;
    drop(b);
    (out, server.finish().await)
}

fn snap_request(extra: Value) -> Value {
    let mut r = json!({"backend": "csi", "csi": csi_section(json!({}))});
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

fn create_snapshot_of(pvc: &'static str) -> X {
    X::create(VS).body(move |b| {
        assert_eq!(b["apiVersion"], "snapshot.storage.k8s.io/v1");
        assert_eq!(b["kind"], "VolumeSnapshot");
        assert_eq!(b["metadata"]["name"], snap_name(pvc));
        assert_eq!(b["metadata"]["namespace"], PROD);
        assert_eq!(
            b["metadata"]["labels"],
            managed_labels("snapshot", Some(pvc))
        );
        assert_eq!(b["metadata"]["annotations"]["snapstage.io/execution-key"], KEY);
        assert_eq!(
            b["spec"],
            json!({"source": {"persistentVolumeClaimName": pvc}, "volumeSnapshotClassName": "csi-aws-vsc"})
        );
        assert!(b.get("status").is_none(), "{b}");
    })
}

#[tokio::test]
async fn snapshot_by_name_is_created_then_followed_until_ready() {
    let name = snap_name("orders-db-data");
    let path = format!("{VS}/{name}");
    let (r, seen) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"]})),
        None,
        json!({}),
        vec![
            X::get(&path).not_found(),
            create_snapshot_of("orders-db-data"),
            X::get(&path).ok(prod_snapshot(
                &name,
                "orders-db-data",
                managed_labels("snapshot", Some("orders-db-data")),
                pending("snapcontent-1111"),
                "2025-06-01T12:00:00Z",
            )),
        ],
    )
    .await;
    let (summary, state) = continued(r.unwrap());
    assert_eq!(seen.iter().filter(|s| s.starts_with("POST")).count(), 1);
    assert!(summary.contains("1 of 1 snapshots pending"), "{summary}");
    assert_eq!(
        state,
        json!({"ids": [name.clone()], "sources": ["orders-db-data"]})
    );

    // Re-invoked with the state: one read, no create.
    let (r, seen) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"]})),
        Some(state),
        json!({}),
        vec![X::get(&path).ok(ours_ready("orders-db-data"))],
    )
    .await;
    assert_eq!(seen, [format!("GET {path}")]);
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["SnapshotId"], name);
    assert_eq!(outputs["SnapshotTime"], "2025-06-01T12:00:03Z");
    assert_eq!(outputs["SourceVolumeIds"], "orders-db-data");
    assert_eq!(outputs["Backend"], "csi");
}

#[tokio::test]
async fn selector_lists_pvcs_sorted_and_snapshots_each() {
    let (a, b) = ("orders-db-data", "orders-db-wal");
    let (r, seen) = snap(
        snap_request(json!({"selector": "app=orders-db"})),
        None,
        json!({}),
        vec![
            X::list(PVCS, &[("labelSelector", "app=orders-db")]).ok(list(
                "PersistentVolumeClaim",
                "v1",
                vec![pvc(PROD, b, json!({})), pvc(PROD, a, json!({}))],
            )),
            X::get(&format!("{VS}/{}", snap_name(a))).not_found(),
            X::get(&format!("{VS}/{}", snap_name(b))).not_found(),
            create_snapshot_of(a),
            create_snapshot_of(b),
            X::get(&format!("{VS}/{}", snap_name(a))).ok(ours_ready(a)),
            X::get(&format!("{VS}/{}", snap_name(b))).ok(ours_ready(b)),
        ],
    )
    .await;
    assert_eq!(seen.len(), 7);
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["SourceVolumeIds"], format!("{a},{b}"));
    assert_eq!(
        outputs["SnapshotIds"],
        format!("{},{}", snap_name(a), snap_name(b))
    );
    assert!(summary.starts_with("2 snapshot(s) ready"), "{summary}");
}

#[tokio::test]
async fn a_snapshot_error_fails_the_step_with_the_controller_message() {
    let name = snap_name("orders-db-data");
    let path = format!("{VS}/{name}");
    let status = json!({"readyToUse": false, "error": {"time": "2025-06-01T12:00:05Z",
        "message": "Failed to create snapshot: error creating snapshot: SnapshotLimitExceeded"}});
    let (r, _) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"]})),
        Some(json!({"ids": [name.clone()], "sources": ["orders-db-data"]})),
        json!({}),
        vec![X::get(&path).ok(prod_snapshot(
            &name,
            "orders-db-data",
            managed_labels("snapshot", Some("orders-db-data")),
            status,
            "2025-06-01T12:00:00Z",
        ))],
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.contains(&format!("snapshot {name} of orders-db-data failed"))
            && msg.contains("SnapshotLimitExceeded"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_retried_invocation_reuses_its_snapshot_and_a_create_race_reads_it() {
    let name = snap_name("orders-db-data");
    let path = format!("{VS}/{name}");
    // A duplicate delivery: the snapshot of this run is found; nothing is created.
    let (r, seen) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"]})),
        None,
        json!({}),
        vec![
            X::get(&path).ok(ours_ready("orders-db-data")),
            X::get(&path).ok(ours_ready("orders-db-data")),
        ],
    )
    .await;
    done(r.unwrap());
    assert_eq!(seen.iter().filter(|s| s.starts_with("POST")).count(), 0);

    // Two deliveries racing: the POST meets 409 AlreadyExists and reads the one there.
    let (r, seen) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"]})),
        None,
        json!({}),
        vec![
            X::get(&path).not_found(),
            create_snapshot_of("orders-db-data").already_exists(),
            X::get(&path).ok(ours_ready("orders-db-data")),
            X::get(&path).ok(ours_ready("orders-db-data")),
        ],
    )
    .await;
    done(r.unwrap());
    assert_eq!(seen.iter().filter(|s| s.starts_with("POST")).count(), 1);
}

#[tokio::test]
async fn a_create_conflict_with_another_runs_object_is_refused_not_adopted() {
    // Regression: a 409 on create used to be read back and taken as this run's whenever it was
    // labelled managed-by=snapstage, whichever run made it.
    let name = snap_name("orders-db-data");
    let path = format!("{VS}/{name}");
    let mut labels = managed_labels("snapshot", Some("orders-db-data"));
    labels["snapstage.io/execution"] = json!("0123456789abcdef");
    let (r, seen) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"]})),
        None,
        json!({}),
        vec![
            X::get(&path).not_found(),
            create_snapshot_of("orders-db-data").already_exists(),
            X::get(&path).ok(prod_snapshot(
                &name,
                "orders-db-data",
                labels,
                ready("snapcontent-1111"),
                "2025-06-01T12:00:00Z",
            )),
        ],
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError, "{msg}");
    assert!(msg.contains("made by another snapstage run"), "{msg}");
    assert_eq!(seen.len(), 3, "nothing after the refusal: {seen:?}");
}

#[tokio::test]
async fn a_throttled_or_failing_api_server_is_retried_then_answers() {
    let name = snap_name("orders-db-data");
    let path = format!("{VS}/{name}");
    let (r, seen) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"]})),
        None,
        json!({}),
        vec![
            X::get(&path).reply(
                429,
                status_json(
                    429,
                    "TooManyRequests",
                    "the server has received too many requests",
                ),
            ),
            X::get(&path).reply(503, status_json(503, "ServiceUnavailable", "etcd is slow")),
            X::get(&path).ok(ours_ready("orders-db-data")),
            X::get(&path).ok(ours_ready("orders-db-data")),
        ],
    )
    .await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["SnapshotId"], name);
    assert_eq!(seen.iter().filter(|s| s.starts_with("POST")).count(), 0);
}

#[tokio::test]
async fn a_snapshot_of_the_run_name_that_is_not_snapstages_is_refused() {
    let name = snap_name("orders-db-data");
    let (r, _) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"]})),
        None,
        json!({}),
        vec![X::get(&format!("{VS}/{name}")).ok(prod_snapshot(
            &name,
            "orders-db-data",
            json!({"team": "dba"}),
            ready("c"),
            "2025-06-01T12:00:00Z",
        ))],
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("is not labelled app.kubernetes.io/managed-by=snapstage"),
        "{msg}"
    );
}

#[tokio::test]
async fn retention_deletes_older_managed_snapshots_with_a_uid_precondition() {
    let name = snap_name("orders-db-data");
    let old = "orders-db-data-snapstage-0000000000000000aaaa";
    let older = "orders-db-data-snapstage-0000000000000000bbbb";
    let selector = "app.kubernetes.io/managed-by=snapstage,snapstage.io/source=orders-db-data";
    let labelled = || managed_labels("snapshot", Some("orders-db-data"));
    let (r, seen) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"], "retain": 2})),
        Some(json!({"ids": [name.clone()], "sources": ["orders-db-data"]})),
        json!({}),
        vec![
            X::get(&format!("{VS}/{name}")).ok(ours_ready("orders-db-data")),
            X::list(VS, &[("labelSelector", selector)]).ok(list(
                "VolumeSnapshot",
                "snapshot.storage.k8s.io/v1",
                vec![
                    prod_snapshot(
                        older,
                        "orders-db-data",
                        labelled(),
                        ready("c2"),
                        "2025-05-30T00:00:00Z",
                    ),
                    ours_ready("orders-db-data"),
                    prod_snapshot(
                        old,
                        "orders-db-data",
                        labelled(),
                        ready("c1"),
                        "2025-05-31T00:00:00Z",
                    ),
                ],
            )),
            X::get(&format!("{VS}/{older}")).ok(prod_snapshot(
                older,
                "orders-db-data",
                labelled(),
                ready("c2"),
                "2025-05-30T00:00:00Z",
            )),
            X::delete(&format!("{VS}/{older}")).body(move |b| {
                assert_eq!(b["preconditions"]["uid"], format!("uid-{older}"));
            }),
        ],
    )
    .await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["SnapshotsDeleted"], "1", "{seen:#?}");
}

#[tokio::test]
async fn retention_never_deletes_a_snapshot_snapstage_did_not_make() {
    let foreign = "orders-db-data-nightly";
    let path = format!("{VS}/{foreign}");
    let (client, server) = serve(vec![X::get(&path).ok(prod_snapshot(
        foreign,
        "orders-db-data",
        json!({"app.kubernetes.io/managed-by": "velero"}),
        ready("c"),
        "2025-05-30T00:00:00Z",
    ))]);
    let b = csi(client, json!({}));
    let e = b.delete_snapshot(foreign).await.unwrap_err();
    drop(b);
    let seen = server.finish().await;
    assert_eq!(seen, [format!("GET {path}")], "no DELETE is sent");
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    assert!(
        e.to_string().starts_with(
            "refused: VolumeSnapshot prod/orders-db-data-nightly exists and is not labelled"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn an_expired_token_is_a_permission_error() {
    let name = snap_name("orders-db-data");
    let (r, _) = snap(
        snap_request(json!({"volumeIds": ["orders-db-data"]})),
        None,
        json!({}),
        vec![
            X::get(&format!("{VS}/{name}"))
                .reply(401, status_json(401, "Unauthorized", "Unauthorized")),
        ],
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::PermissionError);
    assert!(msg.contains("401 Unauthorized"), "{msg}");
}

#[tokio::test]
async fn a_group_snapshot_cuts_the_selected_pvcs_together() {
    let (a, b) = ("orders-db-data", "orders-db-wal");
    let group = format!("snapstage-{}", h());
    let groups = "/apis/groupsnapshot.storage.k8s.io/v1beta1/namespaces/prod/volumegroupsnapshots";
    let g_path = format!("{groups}/{group}");
    let group_obj = |status: Value| {
        json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta1", "kind": "VolumeGroupSnapshot",
            "metadata": {"name": group.clone(), "namespace": PROD, "uid": "uid-g",
                "labels": managed_labels("snapshot", None)},
            "spec": {"volumeGroupSnapshotClassName": "csi-group", "source": {"selector": {"matchLabels": {"app": "orders-db"}}}},
            "status": status})
    };
    let request = || {
        let mut r = snap_request(json!({"selector": "app=orders-db"}));
        r["csi"]["groupSnapshotClass"] = json!("csi-group");
        r
    };
    let extra = json!({"groupSnapshotClass": "csi-group"});
    let (r, seen) = snap(
        request(),
        None,
        extra.clone(),
        vec![
            X::list(PVCS, &[("labelSelector", "app=orders-db")]).ok(list(
                "PersistentVolumeClaim",
                "v1",
                vec![pvc(PROD, a, json!({})), pvc(PROD, b, json!({}))],
            )),
            X::get(&g_path).not_found(),
            X::get(&g_path).not_found(),
            X::create(groups).body({
                let group = group.clone();
                move |body| {
                    assert_eq!(body["apiVersion"], "groupsnapshot.storage.k8s.io/v1beta1");
                    assert_eq!(body["metadata"]["name"], group);
                    assert_eq!(body["metadata"]["labels"], managed_labels("snapshot", None));
                    assert_eq!(
                        body["spec"],
                        json!({"volumeGroupSnapshotClassName": "csi-group",
                            "source": {"selector": {"matchLabels": {"app": "orders-db"}}}})
                    );
                }
            }),
            X::get(&g_path).ok(group_obj(json!({"readyToUse": false}))),
            // The second PVC: the group exists already (one group for all of them).
            X::create(groups).already_exists(),
            X::get(&g_path).ok(group_obj(json!({"readyToUse": false}))),
            X::get(&g_path).ok(group_obj(json!({"readyToUse": false}))),
            X::get(&g_path).ok(group_obj(json!({"readyToUse": false}))),
            X::get(&g_path).ok(group_obj(json!({"readyToUse": false}))),
        ],
    )
    .await;
    assert_eq!(seen.iter().filter(|s| s.starts_with("POST")).count(), 2);
    let (_, state) = continued(r.unwrap());
    let ids = json!([format!("{group}/{a}"), format!("{group}/{b}")]);
    assert_eq!(state["ids"], ids);

    // Ready: each id resolves to the member VolumeSnapshot the controller made for its PVC.
    let member = |pvc: &str, name: &str| {
        let mut m = prod_snapshot(name, pvc, json!({}), ready("c"), "2025-06-01T12:00:01Z");
        m["metadata"]["ownerReferences"] = json!([{"apiVersion": "groupsnapshot.storage.k8s.io/v1beta1",
            "kind": "VolumeGroupSnapshot", "name": group.clone(), "uid": "uid-g"}]);
        m
    };
    let members = list(
        "VolumeSnapshot",
        "snapshot.storage.k8s.io/v1",
        vec![member(b, "snapshot-2b2b"), member(a, "snapshot-1a1a")],
    );
    let ready_group =
        group_obj(json!({"readyToUse": true, "creationTime": "2025-06-01T12:00:01Z"}));
    let (r, _) = snap(
        request(),
        Some(state),
        extra,
        vec![
            X::get(&g_path).ok(ready_group.clone()),
            X::list(VS, &[]).ok(members.clone()),
            X::get(&g_path).ok(ready_group),
            X::list(VS, &[]).ok(members),
        ],
    )
    .await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["SnapshotIds"], format!("{group}/{a},{group}/{b}"));
    assert_eq!(outputs["SnapshotTime"], "2025-06-01T12:00:03Z");
}

const GROUPS: &str =
    "/apis/groupsnapshot.storage.k8s.io/v1beta1/namespaces/prod/volumegroupsnapshots";

fn group_snapshot(name: &str, labels: Value, created: &str) -> Value {
    json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta1", "kind": "VolumeGroupSnapshot",
        "metadata": {"name": name, "namespace": PROD, "uid": format!("uid-{name}"),
            "creationTimestamp": created, "labels": labels},
        "spec": {"volumeGroupSnapshotClassName": "csi-group",
            "source": {"selector": {"matchLabels": {"app": "orders-db"}}}},
        "status": {"readyToUse": true, "creationTime": created}})
}

/// A member VolumeSnapshot the snapshot controller made for a group (no snapstage labels).
fn member_of(group: &str, pvc: &str, created: &str) -> Value {
    let mut m = prod_snapshot(
        &format!("snapshot-{group}-{pvc}"),
        pvc,
        json!({}),
        ready("c"),
        created,
    );
    m["metadata"]["ownerReferences"] = json!([{"apiVersion": "groupsnapshot.storage.k8s.io/v1beta1",
        "kind": "VolumeGroupSnapshot", "name": group, "uid": format!("uid-{group}")}]);
    m
}

#[tokio::test]
async fn group_snapshots_count_for_retention_and_are_deleted_whole_only_if_snapstages() {
    let (a, b) = ("orders-db-data", "orders-db-wal");
    let (new, old) = (
        "snapstage-00000000000000000002",
        "snapstage-00000000000000000001",
    );
    let single = "orders-db-data-snapstage-0000000000000000aaaa";
    let selector = "app.kubernetes.io/managed-by=snapstage,snapstage.io/source=orders-db-data";
    let ours = "app.kubernetes.io/managed-by=snapstage,snapstage.io/role=snapshot";
    let labelled = || managed_labels("snapshot", None);
    let (client, server) = serve(vec![
        // managed_snapshots(a): its own VolumeSnapshots, then snapstage's groups and their members.
        X::list(VS, &[("labelSelector", selector)]).ok(list(
            "VolumeSnapshot",
            "snapshot.storage.k8s.io/v1",
            vec![prod_snapshot(
                single,
                a,
                managed_labels("snapshot", Some(a)),
                ready("c0"),
                "2025-05-01T00:00:00Z",
            )],
        )),
        X::list(GROUPS, &[("labelSelector", ours)]).ok(list(
            "VolumeGroupSnapshot",
            "groupsnapshot.storage.k8s.io/v1beta1",
            vec![
                group_snapshot(old, labelled(), "2025-05-15T00:00:00Z"),
                group_snapshot(new, labelled(), "2025-06-01T00:00:00Z"),
            ],
        )),
        X::list(VS, &[]).ok(list(
            "VolumeSnapshot",
            "snapshot.storage.k8s.io/v1",
            vec![
                member_of(new, a, "2025-06-01T00:00:01Z"),
                member_of(new, b, "2025-06-01T00:00:01Z"),
                member_of(old, a, "2025-05-15T00:00:01Z"),
                member_of(old, b, "2025-05-15T00:00:01Z"),
            ],
        )),
        // Deleting a member deletes its group, with the group's uid as precondition.
        X::get(&format!("{GROUPS}/{old}")).ok(group_snapshot(
            old,
            labelled(),
            "2025-05-15T00:00:00Z",
        )),
        X::delete(&format!("{GROUPS}/{old}")).body(move |body| {
            assert_eq!(body["preconditions"]["uid"], format!("uid-{old}"));
        }),
        // The other member of the same group: already gone, nothing to do.
        X::get(&format!("{GROUPS}/{old}")).not_found(),
        // A group someone else took is never deleted.
        X::get(&format!("{GROUPS}/nightly")).ok(group_snapshot(
            "nightly",
            json!({"app.kubernetes.io/managed-by": "velero"}),
            "2025-04-01T00:00:00Z",
        )),
    ]);
    let backend = csi(client, json!({"groupSnapshotClass": "csi-group"}));
    let managed = backend.managed_snapshots(a).await.unwrap();
    let ids: Vec<&str> = managed.iter().map(|s| s.id.as_str()).collect();
    let (new_a, old_a, old_b) = (
        format!("{new}/{a}"),
        format!("{old}/{a}"),
        format!("{old}/{b}"),
    );
    assert_eq!(
        ids,
        [new_a.as_str(), old_a.as_str(), single],
        "newest first"
    );
    assert!(
        managed
            .iter()
            .all(|s| s.state == SnapshotState::Ready && s.source == a)
    );
    backend.delete_snapshot(&old_a).await.unwrap();
    backend.delete_snapshot(&old_b).await.unwrap();
    let e = backend
        .delete_snapshot(&format!("nightly/{a}"))
        .await
        .unwrap_err();
    drop(backend);
    let seen = server.finish().await;
    assert_eq!(
        seen.iter().filter(|s| s.starts_with("DELETE")).count(),
        1,
        "{seen:#?}"
    );
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    assert!(
        e.to_string()
            .contains("VolumeGroupSnapshot prod/nightly exists and is not labelled"),
        "{e}"
    );
}

// ---- restore ----

fn restore_request() -> Value {
    json!({"backend": "csi", "csi": csi_section(json!({})), "snapshotId": snap_name("orders-db-data")})
}

fn prod_content() -> Value {
    json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": "snapcontent-1111", "uid": "uid-c"},
        "spec": {"deletionPolicy": "Delete", "driver": "ebs.csi.aws.com",
            "source": {"volumeHandle": "vol-0123456789abcdef0"}, "sourceVolumeMode": "Filesystem",
            "volumeSnapshotClassName": "csi-aws-vsc",
            "volumeSnapshotRef": {"kind": "VolumeSnapshot", "name": snap_name("orders-db-data"),
                "namespace": PROD, "uid": "uid-vs"}},
        "status": {"snapshotHandle": HANDLE, "readyToUse": true, "restoreSize": 21474836480_i64,
            "creationTime": 1748779203000000000_i64}})
}

fn staging_selector() -> String {
    format!(
        "app.kubernetes.io/managed-by=snapstage,snapstage.io/execution={},snapstage.io/role=staging",
        h()
    )
}

fn p_staging(resource: &str, name: &str) -> String {
    match resource {
        "volumesnapshots" => {
            format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{STAGING}/volumesnapshots/{name}")
        }
        _ => format!("/api/v1/namespaces/{STAGING}/{resource}/{name}"),
    }
}

fn staged_snapshot(ready_to_use: bool) -> Value {
    let name = staged("orders-db-data");
    json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": STAGING,
            "labels": managed_labels("staging", Some("orders-db-data"))},
        "spec": {"source": {"volumeSnapshotContentName": staging_content_name(STAGING, &name)}},
        "status": {"readyToUse": ready_to_use, "restoreSize": "20Gi"}})
}

/// The reads a fresh restore starts with: the production snapshot (twice: the step, then the
/// backend resolving its content), no PVC of this run yet, the bound content.
fn restore_reads() -> Vec<X> {
    let prod = format!("{VS}/{}", snap_name("orders-db-data"));
    vec![
        X::get(&prod).ok(ours_ready("orders-db-data")),
        X::list(
            &format!("/api/v1/namespaces/{STAGING}/persistentvolumeclaims"),
            &[("labelSelector", staging_selector().as_str())],
        )
        .ok(list("PersistentVolumeClaim", "v1", vec![])),
        X::get(&prod).ok(ours_ready("orders-db-data")),
        X::get(&format!("{VSC}/snapcontent-1111")).ok(prod_content()),
    ]
}

#[tokio::test]
async fn restore_creates_content_snapshot_and_pvc_in_staging_then_waits() {
    let name = staged("orders-db-data");
    let content = staging_content_name(STAGING, &name);
    let mut exchanges = restore_reads();
    exchanges.extend([
        X::get(&format!("/api/v1/namespaces/{STAGING}")).not_found(),
        X::apply(&format!("/api/v1/namespaces/{STAGING}")).body(|b| {
            assert_eq!(b["kind"], "Namespace");
            assert_eq!(b["metadata"]["labels"], managed_labels("staging", None));
        }),
        X::get(&p_staging("persistentvolumeclaims", &name)).not_found(),
        X::create(VSC).body({
            let (name, content) = (name.clone(), content.clone());
            move |b| {
                assert_eq!(
                    b,
                    &json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                        "metadata": {"name": content,
                            "labels": managed_labels("staging", Some("orders-db-data")),
                            "annotations": {"snapstage.io/execution-key": KEY}},
                        "spec": {"deletionPolicy": "Retain", "driver": "ebs.csi.aws.com",
                            "source": {"snapshotHandle": HANDLE}, "sourceVolumeMode": "Filesystem",
                            "volumeSnapshotRef": {"kind": "VolumeSnapshot", "name": name, "namespace": STAGING}}})
                );
            }
        }),
        X::create(&format!(
            "/apis/snapshot.storage.k8s.io/v1/namespaces/{STAGING}/volumesnapshots"
        ))
        .body({
            let (name, content) = (name.clone(), content.clone());
            move |b| {
                assert_eq!(
                    b,
                    &json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                        "metadata": {"name": name, "namespace": STAGING,
                            "labels": managed_labels("staging", Some("orders-db-data")),
                            "annotations": {"snapstage.io/execution-key": KEY}},
                        "spec": {"source": {"volumeSnapshotContentName": content}}})
                );
            }
        }),
        X::create(&format!("/api/v1/namespaces/{STAGING}/persistentvolumeclaims")).body({
            let name = name.clone();
            move |b| {
                assert_eq!(b["metadata"]["labels"], managed_labels("staging", Some("orders-db-data")));
                assert_eq!(
                    b["spec"],
                    json!({"accessModes": ["ReadWriteOnce"],
                        "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name},
                        "resources": {"requests": {"storage": "20Gi"}},
                        "storageClassName": "gp3-csi", "volumeMode": "Filesystem"})
                );
            }
        }),
        X::get(&p_staging("volumesnapshots", &name)).ok(staged_snapshot(false)),
    ]);
    let (r, seen) = restore(restore_request(), None, json!({}), exchanges).await;
    assert_eq!(seen.iter().filter(|s| s.starts_with("POST")).count(), 3);
    let (summary, state) = continued(r.unwrap());
    assert!(
        summary.contains(&format!("staging volume {name} is being created")),
        "{summary}"
    );
    assert_eq!(
        state,
        json!({"snapshot": snap_name("orders-db-data"), "volume": name})
    );

    // Next invocation: the staging snapshot is ready (the PVC may stay Pending until the database
    // pod uses it under WaitForFirstConsumer: that is fine).
    let (r, seen) = restore(
        restore_request(),
        Some(state),
        json!({}),
        vec![
            X::get(&format!("{VS}/{}", snap_name("orders-db-data")))
                .ok(ours_ready("orders-db-data")),
            X::get(&p_staging("persistentvolumeclaims", &name)).ok(pvc(
                STAGING,
                &name,
                managed_labels("staging", Some("orders-db-data")),
            )),
            X::list(&format!("/api/v1/namespaces/{STAGING}/pods"), &[]).ok(list(
                "Pod",
                "v1",
                vec![],
            )),
            X::get(&p_staging("volumesnapshots", &name)).ok(staged_snapshot(true)),
        ],
    )
    .await;
    assert!(!seen.iter().any(|s| s.starts_with("POST")), "{seen:#?}");
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["VolumeId"], name);
    assert_eq!(outputs["PvcName"], name);
    assert_eq!(outputs["SnapshotName"], name);
    assert_eq!(outputs["Namespace"], STAGING);
    assert_eq!(outputs["SnapshotId"], snap_name("orders-db-data"));
    assert_eq!(outputs["SizeGiB"], "20");
    assert_eq!(outputs["Backend"], "csi");
}

#[tokio::test]
async fn restore_refuses_a_production_or_foreign_staging_namespace_creating_nothing() {
    let ns_path = format!("/api/v1/namespaces/{STAGING}");
    for (labels, why) in [
        (
            json!({"env": "production", "app.kubernetes.io/managed-by": "snapstage"}),
            "labelled production",
        ),
        (
            json!({"team": "payments"}),
            "is not labelled app.kubernetes.io/managed-by=snapstage",
        ),
    ] {
        let mut exchanges = restore_reads();
        exchanges.push(
            X::get(&ns_path).ok(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": STAGING, "labels": labels}})),
        );
        let (r, seen) = restore(restore_request(), None, json!({}), exchanges).await;
        let (kind, msg) = failure(r);
        assert_eq!(kind, FailureKind::ConfigurationError);
        assert!(msg.starts_with("refused:") && msg.contains(why), "{msg}");
        assert!(!seen.iter().any(|s| !s.starts_with("GET")), "{seen:#?}");
    }
}

#[tokio::test]
async fn restore_never_uses_the_production_namespace_as_staging() {
    // Refused by the parameters...
    let mut req = restore_request();
    req["csi"]["stagingNamespace"] = json!(PROD);
    let (r, seen) = restore(req, None, json!({}), vec![]).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.starts_with("csi.stagingNamespace: \"prod\" is the production namespace"),
        "{msg}"
    );
    assert!(seen.is_empty());
    // ...and by the backend itself, before any request.
    let (client, server) = serve(vec![]);
    let b = csi(client, json!({"stagingNamespace": PROD}));
    let e = b.find_volume(&ex()).await.unwrap_err();
    drop(b);
    assert!(server.finish().await.is_empty());
    assert!(
        e.to_string()
            .starts_with("refused: staging namespace prod is the production namespace"),
        "{e}"
    );
}

#[tokio::test]
async fn restore_refuses_a_pvc_of_that_name_it_did_not_make() {
    let name = staged("orders-db-data");
    let mut exchanges = restore_reads();
    exchanges.extend([
        X::get(&format!("/api/v1/namespaces/{STAGING}"))
            .ok(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": STAGING, "labels": managed_labels("staging", None)}})),
        X::get(&p_staging("persistentvolumeclaims", &name)).ok(pvc(
            STAGING,
            &name,
            json!({"app": "billing"}),
        )),
    ]);
    let (r, seen) = restore(restore_request(), None, json!({}), exchanges).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.starts_with(&format!(
            "refused: PersistentVolumeClaim {STAGING}/{name} exists and is not labelled"
        )),
        "{msg}"
    );
    assert!(!seen.iter().any(|s| s.starts_with("POST")));
}

#[tokio::test]
async fn restore_refuses_a_pvc_mounted_by_a_pod_that_is_not_a_staging_pod() {
    let name = staged("orders-db-data");
    let ours = managed_labels("staging", Some("orders-db-data"));
    let (r, _) = restore(
        restore_request(),
        Some(json!({"snapshot": snap_name("orders-db-data"), "volume": name})),
        json!({}),
        vec![
            X::get(&format!("{VS}/{}", snap_name("orders-db-data")))
                .ok(ours_ready("orders-db-data")),
            X::get(&p_staging("persistentvolumeclaims", &name)).ok(pvc(
                STAGING,
                &name,
                ours.clone(),
            )),
            X::list(&format!("/api/v1/namespaces/{STAGING}/pods"), &[]).ok(list(
                "Pod",
                "v1",
                vec![
                    pod("staging-db-0", &name, ours),
                    pod("debug-shell", &name, json!({"run": "debug-shell"})),
                ],
            )),
        ],
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("is mounted by pod debug-shell, which is not a snapstage staging pod"),
        "{msg}"
    );
}

#[tokio::test]
async fn restore_conflicts_reuse_what_this_run_made() {
    // Another delivery of the same run created the objects between our read and our POSTs.
    let name = staged("orders-db-data");
    let content = staging_content_name(STAGING, &name);
    let ours = managed_labels("staging", Some("orders-db-data"));
    let mut exchanges = restore_reads();
    exchanges.extend([
        X::get(&format!("/api/v1/namespaces/{STAGING}")).ok(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": STAGING, "labels": managed_labels("staging", None)}})),
        X::get(&p_staging("persistentvolumeclaims", &name)).not_found(),
        X::create(VSC).already_exists(),
        X::get(&format!("{VSC}/{content}")).ok(json!({"apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent", "metadata": {"name": content, "labels": ours.clone()},
            "spec": {"deletionPolicy": "Retain", "driver": "ebs.csi.aws.com", "source": {"snapshotHandle": HANDLE},
                "volumeSnapshotRef": {"name": name, "namespace": STAGING}}})),
        X::create(&format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{STAGING}/volumesnapshots")).already_exists(),
        X::get(&p_staging("volumesnapshots", &name)).ok(staged_snapshot(false)),
        X::create(&format!("/api/v1/namespaces/{STAGING}/persistentvolumeclaims")).already_exists(),
        X::get(&p_staging("persistentvolumeclaims", &name)).ok(pvc(STAGING, &name, ours)),
        X::list(&format!("/api/v1/namespaces/{STAGING}/pods"), &[]).ok(list("Pod", "v1", vec![])),
        X::get(&p_staging("volumesnapshots", &name)).ok(staged_snapshot(true)),
    ]);
    let (r, _) = restore(restore_request(), None, json!({}), exchanges).await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["PvcName"], name);
}

#[test]
fn names_are_valid_stable_and_bounded() {
    let n = snapshot_name("orders-db-data", &ex());
    assert_eq!(n, format!("orders-db-data-snapstage-{}", h()));
    assert!(is_dns1123_subdomain(&n));
    let long = "a".repeat(250);
    let n = snapshot_name(&long, &ex());
    assert!(n.len() <= 253 && is_dns1123_subdomain(&n), "{n}");
    let c = staging_content_name(STAGING, &staged("orders-db-data"));
    assert!(c.len() <= 253 && is_dns1123_subdomain(&c), "{c}");
    assert_eq!(source_label("db"), "db");
    let l = source_label(&long);
    assert!(
        l.len() <= 63 && crate::kube::names::is_label_value(&l),
        "{l}"
    );
    assert!(
        !is_dns1123_subdomain("Bad_Name")
            && !is_dns1123_subdomain("a..b")
            && !is_dns1123_subdomain("-a")
    );
}

#[test]
fn csi_parameters_are_checked_with_field_names() {
    let p: SnapshotParams = params(json!({"backend": "csi", "volumeIds": ["db"],
        "csi": {"cluster": {"eks": {"name": "prod"}}, "namespace": "prod"}}));
    p.validate().unwrap();
    let err = |v: Value| {
        let p: SnapshotParams = params(v);
        p.validate().unwrap_err().to_string()
    };
    assert!(err(json!({"backend": "csi", "volumeIds": ["db"]})).starts_with("csi: missing"));
    assert!(
        err(json!({"volumeIds": ["vol-0abc"], "csi": {"cluster": "inCluster", "namespace": "p"}}))
            .starts_with("csi: given, but backend is \"ebs\"")
    );
    assert!(
        err(json!({"backend": "csi", "volumeIds": ["db"], "csi": {"cluster": "inCluster", "namespace": "Prod"}}))
            .starts_with("csi.namespace:")
    );
    assert!(
        err(json!({"backend": "csi", "volumeIds": ["db"],
            "csi": {"cluster": "inCluster", "namespace": "p", "groupSnapshotClass": "g"}}))
        .starts_with("selector: missing: csi.groupSnapshotClass")
    );
    let e = merge::<SnapshotParams>(&[Layer {
        source: "UserParameters",
        values: json!({"backend": "csi", "volumeIds": ["db"],
            "csi": {"cluster": "inCluster", "namespace": "p", "snapshotclass": "x"}})
        .as_object()
        .unwrap()
        .clone(),
    }])
    .unwrap_err();
    assert!(e.to_string().starts_with("UserParameters.csi"), "{e}");
    let r: RestoreParams = params(json!({"backend": "csi", "snapshotId": "s",
        "csi": {"cluster": "inCluster", "namespace": "p"}}));
    assert!(
        r.validate()
            .unwrap_err()
            .to_string()
            .starts_with("csi.stagingNamespace: missing")
    );
}
