//! restore-to-staging with the CSI backend: content, snapshot and PVC in the staging namespace;
//! the interlock's refusals create nothing.

use super::*;

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
