//! The production interlock on the imported volume (EBS, CSI snapshot or PVC, FlashArray): refused before any Kubernetes request unless it is this run's staging volume or named.

use super::*;

#[tokio::test]
async fn a_missing_existing_pvc_fails_before_anything_is_applied() {
    let ns = "team-a-staging";
    let exchanges = vec![
        X::get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db"
        ))
        .not_found(),
    ];
    let (r, seen) = play(existing_pvc_request(), None, exchanges).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("PVC team-a-staging/restored-db (pvcName) does not exist"),
        "{msg}"
    );
    assert_eq!(seen.len(), 1, "{seen:#?}");
}

#[tokio::test]
async fn an_existing_pvc_without_this_runs_staging_mark_is_refused_unless_named() {
    let ns = "team-a-staging";
    let pvc_path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db");
    let another_runs = restored_claim(ns, "direct/another-run");
    let velero = o::labelled_claim(
        ns,
        "restored-db",
        json!({"app.kubernetes.io/managed-by": "velero"}),
    );
    for (claim, why) in [
        (
            another_runs.clone(),
            "is a snapstage staging volume of another run (direct/another-run)",
        ),
        (
            velero.clone(),
            "does not carry snapstage's staging mark of this run",
        ),
    ] {
        let (r, seen) = play(
            existing_pvc_request(),
            None,
            vec![X::get(&pvc_path).ok(claim)],
        )
        .await;
        let (kind, msg) = failure(r);
        assert_eq!(kind, FailureKind::ConfigurationError);
        assert!(
            msg.starts_with("refused: PVC team-a-staging/restored-db (pvcName)")
                && msg.contains(why)
                && msg.contains("allowUnmanagedVolume: \"restored-db\""),
            "{msg}"
        );
        assert_eq!(seen.len(), 1, "nothing but the PVC is read: {seen:#?}");
    }

    // Labelled production: refused even when the override names it.
    let prod = o::labelled_claim(
        ns,
        "restored-db",
        json!({"app.kubernetes.io/managed-by": "snapstage", "snapstage.io/role": "staging",
               "app.kubernetes.io/environment": "production"}),
    );
    let mut named = existing_pvc_request();
    named["allowUnmanagedVolume"] = json!("restored-db");
    let (r, seen) = play(named.clone(), None, vec![X::get(&pvc_path).ok(prod)]).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("is marked production (label app.kubernetes.io/environment=production)"),
        "{msg}"
    );
    assert_eq!(seen.len(), 1, "{seen:#?}");

    // Named by the override, velero's PVC is mounted (and teardown will leave its namespace).
    let exchanges = vec![
        X::get(&pvc_path).ok(velero),
        X::get(&format!("/api/v1/namespaces/{ns}")).ok(o::staging_namespace(ns, "4e570e", EXPIRES)),
        X::apply(&format!("/api/v1/namespaces/{ns}")),
        X::apply(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-isolation"
        )),
        X::apply(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-egress"
        )),
        X::get(&format!(
            "/api/v1/namespaces/{ns}/secrets/staging-db-credentials"
        ))
        .not_found(),
        X::apply(&format!(
            "/api/v1/namespaces/{ns}/secrets/staging-db-credentials"
        )),
        X::apply(&format!("/api/v1/namespaces/{ns}/services/staging-db")),
        X::apply(&format!(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/staging-db"
        )),
    ];
    let (r, _) = play(named, None, exchanges).await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("not labelled app.kubernetes.io/managed-by=snapstage: teardown will not delete this namespace")
            && summary.contains("imported because allowUnmanagedVolume names it"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_production_ebs_volume_is_refused_before_any_kubernetes_request() {
    let mut prod = this_runs_volume();
    prod.0[0].1.markers.push(Marker::new("tag", "env", "prod"));
    for extra in [
        json!({}),
        json!({"allowUnmanagedVolume": "vol-0123456789abcdef0"}),
        json!({"dryRun": true}),
    ] {
        let (r, seen) = play_on(&prod, request(extra.clone()), None, vec![]).await;
        let (kind, msg) = failure(r);
        assert_eq!(kind, FailureKind::ConfigurationError, "{extra}");
        assert!(
            msg.starts_with(
                "refused: EBS volume vol-0123456789abcdef0 (volumeId) is marked production (tag env=prod)"
            ),
            "{extra}: {msg}"
        );
        assert!(seen.is_empty(), "{extra}: {seen:#?}");
    }
}

#[tokio::test]
async fn another_runs_ebs_volume_is_refused_and_imported_only_when_named() {
    let theirs = KnownVolumes::staging_ebs("vol-0123456789abcdef0", "direct/another-run");
    let (r, seen) = play_on(&theirs, request(json!({})), None, vec![]).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("is a snapstage staging volume of another run (direct/another-run), not of this one (direct/fixture)"),
        "{msg}"
    );
    assert!(seen.is_empty(), "{seen:#?}");
    // A volume EC2 does not know.
    let (r, seen) = play_on(&KnownVolumes::default(), request(json!({})), None, vec![]).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("volumeId \"vol-0123456789abcdef0\" does not exist"),
        "{msg}"
    );
    assert!(seen.is_empty(), "{seen:#?}");

    let mut exchanges = vec![
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
    ];
    exchanges.extend(apply_rest());
    let (r, _) = play_on(
        &theirs,
        request(json!({"allowUnmanagedVolume": "vol-0123456789abcdef0"})),
        None,
        exchanges,
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("interlock: EBS volume vol-0123456789abcdef0 has no staging mark of this run; imported because allowUnmanagedVolume names it"),
        "{summary}"
    );
}

/// A VolumeSnapshot restore-to-staging made in the staging namespace for run `execution_key`.
pub(crate) fn staging_snapshot(name: &str, execution_key: &str) -> Value {
    json!({
        "kind": "VolumeSnapshot", "apiVersion": "snapshot.storage.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns(), "uid": "uid-vs", "resourceVersion": "77",
                     "labels": {"app.kubernetes.io/managed-by": "snapstage",
                                "snapstage.io/execution": names::execution_label(execution_key),
                                "snapstage.io/role": "staging"},
                     "annotations": {"snapstage.io/execution-key": execution_key}},
        "spec": {"source": {"volumeSnapshotContentName": "snapcontent-staging"}},
        "status": {"readyToUse": true, "restoreSize": "20Gi"}
    })
}

#[tokio::test]
async fn a_volume_snapshot_must_be_this_runs_staging_snapshot() {
    let snap_path = format!(
        "/apis/snapshot.storage.k8s.io/v1/namespaces/{}/volumesnapshots/orders-staging",
        ns()
    );
    let req =
        || json!({"backend": "csi", "snapshotName": "orders-staging", "resetCredentials": false});
    let (r, seen) = play(
        req(),
        None,
        vec![X::get(&snap_path).ok(staging_snapshot("orders-staging", "direct/earlier"))],
    )
    .await;
    let (_, msg) = failure(r);
    assert!(
        msg.starts_with(&format!(
            "refused: VolumeSnapshot {}/orders-staging (snapshotName) is a snapstage staging volume of another run (direct/earlier)",
            ns()
        )),
        "{msg}"
    );
    assert_eq!(seen.len(), 1, "{seen:#?}");

    // This run's: the deploy goes on to its applies (a PVC restoring it; no PV).
    let exchanges = vec![
        X::get(&snap_path).ok(staging_snapshot("orders-staging", KEY)),
        X::get(&p_ns()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
        X::apply(&p_in("persistentvolumeclaims", "staging-db-data")).body(|b| {
            assert_eq!(b["spec"]["dataSource"]["name"], "orders-staging");
        }),
        X::apply(&p_in("services", "staging-db")),
        X::apply(&p_sts()),
    ];
    let (r, _) = play(req(), None, exchanges).await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains(&format!(
            "interlock: VolumeSnapshot {}/orders-staging is this run's staging volume",
            ns()
        )),
        "{summary}"
    );
}

/// A PersistentVolume of pure-csi that mounts array volume `handle`, with `labels`.
pub(crate) fn pure_pv(name: &str, handle: &str, labels: Value) -> Value {
    json!({
        "kind": "PersistentVolume", "apiVersion": "v1",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1",
                     "labels": labels},
        "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain",
                 "csi": {"driver": "pure-csi", "volumeHandle": handle},
                 "claimRef": {"namespace": "orders", "name": "orders-db-data"}},
        "status": {"phase": "Bound"}
    })
}

/// What the array says about `volume`: this run's staging volume (as restore-to-staging tags it).
pub(crate) fn array_staging(volume: &str) -> KnownVolumes {
    KnownVolumes(vec![(
        volume.to_string(),
        Marks {
            what: format!("FlashArray volume {volume}"),
            markers: vec![Marker::new("tag", "snapstage:role", "staging")],
            staging_run: Some(KEY.to_string()),
        },
    )])
}

#[tokio::test]
async fn an_array_volume_is_read_on_the_array_and_in_the_cluster() {
    let array = json!({"endpoint": "https://fa.example.com", "apiTokenSecret": "fa-token"});
    let pure = |extra: Value| {
        let mut r = json!({"backend": "pure-csi", "volumeId": "orders-db-staging-0a1b",
                           "resetCredentials": false});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let volumes = array_staging("orders-db-staging-0a1b");
    let list_pvs = || X::list("/api/v1/persistentvolumes", &[]);

    // Without the array its mark cannot be read: refused before anything is sent.
    let (r, seen) = play_on(&volumes, pure(json!({})), None, vec![]).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("its staging mark cannot be read without the array; give flasharray"),
        "{msg}"
    );
    assert!(seen.is_empty(), "{seen:#?}");

    // The array says staging of this run, but production's PV in the cluster mounts the same
    // volume: refused, whatever the override says.
    for extra in [
        json!({"flasharray": array}),
        json!({"flasharray": array, "allowUnmanagedVolume": "orders-db-staging-0a1b"}),
    ] {
        let exchanges = vec![list_pvs().ok(o::list(
            "PersistentVolume",
            "v1",
            vec![
                pure_pv("other", "orders-db", json!({"env": "production"})),
                pure_pv(
                    "orders-prod",
                    "orders-db-staging-0a1b",
                    json!({"app.kubernetes.io/environment": "production"}),
                ),
            ],
        ))];
        let (r, seen) = play_on(&volumes, pure(extra), None, exchanges).await;
        let (_, msg) = failure(r);
        assert!(
            msg.contains("is marked production (PersistentVolume orders-prod label app.kubernetes.io/environment=production)"),
            "{msg}"
        );
        assert_eq!(seen.len(), 1, "{seen:#?}");
    }

    // A PV snapstage did not make mounts it (no production label): in use, refused.
    let exchanges = vec![list_pvs().ok(o::list(
        "PersistentVolume",
        "v1",
        vec![pure_pv("legacy", "orders-db-staging-0a1b", json!({}))],
    ))];
    let (r, _) = play_on(
        &volumes,
        pure(json!({"flasharray": array})),
        None,
        exchanges,
    )
    .await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("is mounted by PersistentVolume legacy, which snapstage did not make"),
        "{msg}"
    );

    // The array's own production tag (or its protection group's) refuses it.
    let mut tagged = volumes.clone();
    tagged.0[0].1.markers.push(Marker::new(
        "protection group pg-orders tag",
        "environment",
        "prod",
    ));
    let (r, seen) = play_on(&tagged, pure(json!({"flasharray": array})), None, vec![]).await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("is marked production (protection group pg-orders tag environment=prod)"),
        "{msg}"
    );
    assert!(
        seen.is_empty(),
        "the array is read before the cluster: {seen:#?}"
    );

    // Staging on the array, no other PV in the cluster: applied.
    let ns = ns();
    let exchanges = vec![
        list_pvs().ok(o::list(
            "PersistentVolume",
            "v1",
            vec![pure_pv("other", "orders-db", json!({"env": "production"}))],
        )),
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
        X::apply(&p_pv()).body(|b| {
            assert_eq!(b["spec"]["csi"]["driver"], "pure-csi");
            assert_eq!(b["spec"]["csi"]["volumeHandle"], "orders-db-staging-0a1b");
        }),
        X::apply(&p_in("persistentvolumeclaims", "staging-db-data")),
        X::apply(&p_in("services", "staging-db")),
        X::apply(&p_sts()),
    ];
    let (r, _) = play_on(
        &volumes,
        pure(json!({"flasharray": array})),
        None,
        exchanges,
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("interlock: FlashArray volume orders-db-staging-0a1b is this run's staging volume (read the array's tags (https://fa.example.com) and the cluster's PersistentVolumes)"),
        "{summary}"
    );
    assert!(summary.contains(&format!("in namespace {ns}")), "{summary}");
}
