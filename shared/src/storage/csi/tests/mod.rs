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

mod restore;
mod snapshot;

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
