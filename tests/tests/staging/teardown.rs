//! Teardown and the TTL sweep: only snapstage's namespaces, their volumes, never production or protected ones.

use super::*;

#[tokio::test]
async fn teardown_leaves_a_namespace_whose_existing_pvc_snapstage_did_not_make() {
    let ns = "team-a-staging";
    let mut namespace = o::staging_namespace(ns, "4e570e", EXPIRES);
    namespace["metadata"]["annotations"]["snapstage.io/existing-claim"] = json!("restored-db");
    let exchanges = vec![
        X::get(&format!("/api/v1/namespaces/{ns}")).ok(namespace.clone()),
        X::get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db"
        ))
        .ok(o::labelled_claim(
            ns,
            "restored-db",
            json!({"app.kubernetes.io/managed-by": "velero"}),
        )),
    ];
    let (r, seen) = play(
        json!({"action": "teardown", "namespace": ns}),
        None,
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("holds PVC restored-db") && msg.contains("snapstage did not make"),
        "{msg}"
    );
    assert!(!seen.iter().any(|s| s.starts_with("DELETE")), "{seen:#?}");

    // The same PVC with snapstage's label: the namespace (and so the PVC) is deleted.
    let exchanges = vec![
        X::get(&format!("/api/v1/namespaces/{ns}")).ok(namespace),
        X::get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/restored-db"
        ))
        .ok(o::labelled_claim(
            ns,
            "restored-db",
            json!({"app.kubernetes.io/managed-by": "snapstage"}),
        )),
        X::list(
            "/api/v1/persistentvolumes",
            &[(
                "labelSelector",
                "app.kubernetes.io/managed-by=snapstage,snapstage.io/execution=4e570e",
            )],
        )
        .ok(o::list("PersistentVolume", "v1", vec![])),
        X::delete(&format!("/api/v1/namespaces/{ns}")),
    ];
    let (r, _) = play(
        json!({"action": "teardown", "namespace": ns}),
        None,
        exchanges,
    )
    .await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["Deleted"], "true");
}

#[tokio::test]
async fn teardown_refuses_a_namespace_snapstage_did_not_make() {
    let exchanges = vec![X::get("/api/v1/namespaces/payments").ok(o::namespace(
        "payments",
        json!({"kubernetes.io/metadata.name": "payments", "app.kubernetes.io/managed-by": "Helm"}),
        json!({}),
    ))];
    let (r, seen) = play(
        json!({"action": "teardown", "namespace": "payments"}),
        None,
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("not labelled app.kubernetes.io/managed-by=snapstage")
            && msg.contains("will not delete it"),
        "{msg}"
    );
    assert!(!seen.iter().any(|s| s.starts_with("DELETE")), "{seen:#?}");
}

/// `teardown_exchanges` with the list of every PV (is the volume mounted elsewhere?) before the
/// PV object is deleted: the staging volume is deleted first, then the PV that records its id.
pub(crate) fn teardown_with_volume_exchanges(others: Vec<Value>) -> Vec<X> {
    let mut x = teardown_exchanges();
    let pv = o::persistent_volume(&format!("{}-data", ns()), &ns(), &label());
    let mut all = vec![pv];
    all.extend(others);
    x.insert(
        3,
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list("PersistentVolume", "v1", all)),
    );
    x
}

#[tokio::test]
async fn teardown_deletes_a_snapstage_namespace_and_its_volumes() {
    let ns = ns();
    let (r, _) = play(
        json!({"action": "teardown", "namespace": ns}),
        None,
        teardown_with_volume_exchanges(vec![]),
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Deleted"], "true");
    assert_eq!(outputs["PersistentVolumesDeleted"], "1");
    assert_eq!(outputs["VolumesDeleted"], "1");
    assert_eq!(outputs["Namespace"], ns);
    assert!(
        summary.contains("deleted EBS volume vol-0123456789abcdef0"),
        "{summary}"
    );
}

#[tokio::test]
async fn teardown_keeps_a_production_or_protected_volume_and_one_mounted_elsewhere() {
    let ns = ns();
    let staging = this_runs_volume().0.remove(0).1;
    let with = |key: &str, value: &str| {
        let mut m = staging.clone();
        m.markers.push(Marker::new("tag", key, value));
        KnownVolumes(vec![("vol-0123456789abcdef0".into(), m)])
    };
    for (volumes, why) in [
        (
            with("Environment", "Production"),
            "it is marked production (tag Environment=Production)",
        ),
        (
            with("snapstage:deletion-protection", "true"),
            "deletion-protected (tag snapstage:deletion-protection=true)",
        ),
    ] {
        let (r, _) = play_on(
            &volumes,
            json!({"action": "teardown", "namespace": ns}),
            None,
            teardown_with_volume_exchanges(vec![]),
        )
        .await;
        let (summary, outputs) = done(r.unwrap());
        assert_eq!(outputs["VolumesDeleted"], "0", "{summary}");
        assert_eq!(outputs["VolumesKept"], "1", "{summary}");
        assert!(
            summary.contains(&format!("kept EBS volume vol-0123456789abcdef0: {why}")),
            "{summary}"
        );
    }
    // Another PV (here: one snapstage did not make) mounts the same EBS volume: kept.
    let mut foreign = o::persistent_volume("orders-db", "shop", "x");
    foreign["metadata"]["labels"] = json!({"app": "orders"});
    let (r, _) = play(
        json!({"action": "teardown", "namespace": ns}),
        None,
        teardown_with_volume_exchanges(vec![foreign]),
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["VolumesKept"], "1", "{summary}");
    assert!(
        summary.contains(
            "kept EBS volume vol-0123456789abcdef0: PersistentVolume orders-db mounts it too"
        ),
        "{summary}"
    );
}

/// EC2 as it answers while the staging volume is still attached to the node.
struct Attached(KnownVolumes);

impl VolumeMarks for Attached {
    fn marks<'a>(
        &'a self,
        volume: snapstage::interlock::VolumeRef<'a>,
    ) -> snapstage::interlock::BoxFuture<'a, Result<Option<Marks>>> {
        self.0.marks(volume)
    }

    fn delete_staging<'a>(
        &'a self,
        _: snapstage::interlock::VolumeRef<'a>,
        _: bool,
    ) -> snapstage::interlock::BoxFuture<'a, Result<Deletion>> {
        Box::pin(async { Ok(Deletion::Waiting("in-use: i-0abc attached".into())) })
    }
}

#[tokio::test]
async fn teardown_continues_while_the_volume_is_attached_keeping_its_pv_object() {
    let ns = ns();
    let mut exchanges = teardown_with_volume_exchanges(vec![]);
    exchanges.pop(); // no DELETE of the PV: it records the volume's id until the volume is deleted
    let (r, seen) = play_on(
        &Attached(this_runs_volume()),
        json!({"action": "teardown", "namespace": ns}),
        None,
        exchanges,
    )
    .await;
    let (summary, _, state) = continued(r.unwrap());
    assert!(
        summary.contains(
            "waiting for EBS volume vol-0123456789abcdef0 to be detached (in-use: i-0abc attached)"
        ),
        "{summary}"
    );
    assert_eq!(state["waitingSince"], NOW);
    assert!(
        !seen
            .iter()
            .any(|s| s.contains("DELETE /api/v1/persistentvolumes")),
        "{seen:#?}"
    );
    // Half an hour later the namespace is gone and the volume still attached: teardown finishes
    // and leaves the volume and its PV object to the sweep.
    let leftover = vec![
        X::get(&p_ns()).not_found(),
        X::list(
            "/api/v1/persistentvolumes",
            &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
        )
        .ok(o::list(
            "PersistentVolume",
            "v1",
            vec![o::persistent_volume(&format!("{ns}-data"), &ns, &label())],
        )),
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list(
            "PersistentVolume",
            "v1",
            vec![o::persistent_volume(&format!("{ns}-data"), &ns, &label())],
        )),
    ];
    let (r, _) = play_on(
        &Attached(this_runs_volume()),
        json!({"action": "teardown", "namespace": ns}),
        Some(json!({"waitingSince": "2025-06-01T11:29:00Z"})),
        leftover,
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["VolumesWaiting"], "1");
    assert!(
        summary.contains(
            "still attached after 30 min: the sweep deletes vol-0123456789abcdef0 once detached"
        ),
        "{summary}"
    );
}

#[tokio::test]
async fn teardown_of_a_missing_namespace_is_done() {
    let (r, _) = play(
        json!({"action": "teardown", "namespace": "snapstage-0000000000"}),
        None,
        vec![
            X::get("/api/v1/namespaces/snapstage-0000000000").not_found(),
            // PVs an earlier teardown left for a volume that was still attached: none.
            X::list(
                "/api/v1/persistentvolumes",
                &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
            )
            .ok(o::list("PersistentVolume", "v1", vec![])),
        ],
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Deleted"], "false");
    assert!(summary.contains("does not exist"), "{summary}");
}

#[tokio::test]
async fn sweep_deletes_only_expired_snapstage_namespaces() {
    let expired = "snapstage-aaaaaaaaaa";
    let fresh = "snapstage-bbbbbbbbbb";
    let prod = "snapstage-cccccccccc";
    let mut production = o::staging_namespace(prod, "c0ffee", "2025-05-01T00:00:00Z");
    production["metadata"]["labels"]["env"] = json!("production");
    let exchanges = vec![
        X::list(
            "/api/v1/namespaces",
            &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
        )
        .ok(o::list(
            "Namespace",
            "v1",
            vec![
                o::staging_namespace(expired, "a11ce", "2025-06-01T11:00:00Z"),
                o::staging_namespace(fresh, "b0b", "2025-06-01T13:00:00Z"),
                production,
            ],
        )),
        X::list(
            "/api/v1/persistentvolumes",
            &[(
                "labelSelector",
                "app.kubernetes.io/managed-by=snapstage,snapstage.io/execution=a11ce",
            )],
        )
        .ok(o::list(
            "PersistentVolume",
            "v1",
            vec![
                o::persistent_volume(&format!("{expired}-data"), expired, "a11ce"),
                // Same execution label but reserved for a claim elsewhere: not this namespace's.
                o::persistent_volume("other-data", "elsewhere", "a11ce"),
            ],
        )),
        X::delete(&format!("/api/v1/namespaces/{expired}"))
            .body(move |b| assert_eq!(b["preconditions"]["uid"], format!("uid-{expired}"))),
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list(
            "PersistentVolume",
            "v1",
            vec![o::persistent_volume(
                &format!("{expired}-data"),
                expired,
                "a11ce",
            )],
        )),
        X::delete(&format!("/api/v1/persistentvolumes/{expired}-data")),
        // Then the PVs whose namespace is gone: this one's namespace is being deleted.
        X::list(
            "/api/v1/persistentvolumes",
            &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
        )
        .ok(o::list(
            "PersistentVolume",
            "v1",
            vec![o::persistent_volume(
                &format!("{expired}-data"),
                expired,
                "a11ce",
            )],
        )),
        X::get(&format!("/api/v1/namespaces/{expired}")).ok(o::staging_namespace(
            expired,
            "a11ce",
            "2025-06-01T11:00:00Z",
        )),
    ];
    let (r, _) = play(json!({"action": "sweep"}), None, exchanges).await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Deleted"], "1");
    // This run's volume (the scripted one): deleted with its namespace.
    assert_eq!(outputs["VolumesDeleted"], "1", "{summary}");
    assert_eq!(outputs["Kept"], "1");
    assert_eq!(outputs["Namespaces"], expired);
    assert!(
        summary.contains(&format!("skipped {prod} (not deletable by snapstage)")),
        "{summary}"
    );
}

#[tokio::test]
async fn sweep_dry_run_deletes_nothing() {
    let expired = "snapstage-aaaaaaaaaa";
    let exchanges = vec![
        X::list(
            "/api/v1/namespaces",
            &[("labelSelector", "app.kubernetes.io/managed-by=snapstage")],
        )
        .ok(o::list(
            "Namespace",
            "v1",
            vec![o::staging_namespace(
                expired,
                "a11ce",
                "2025-06-01T11:00:00Z",
            )],
        )),
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list("PersistentVolume", "v1", vec![])),
        X::list("/api/v1/persistentvolumes", &[]).ok(o::list("PersistentVolume", "v1", vec![])),
    ];
    let (r, _) = play(json!({"action": "sweep", "dryRun": true}), None, exchanges).await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Mode"], "dry-run");
    assert!(
        summary.contains("would delete 1 expired staging namespace(s)"),
        "{summary}"
    );
}

#[test]
fn teardown_needs_a_namespace() {
    let p = step(json!({"action": "teardown"}), None).params;
    let e: Error = staging::teardown::plan_only(&p).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("namespace: expected the staging namespace to delete"),
        "{e}"
    );
}
