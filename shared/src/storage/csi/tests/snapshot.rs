//! snapshot-production with the CSI backend: by name and by selector, followed until ready,
//! reused on retry, refused when not snapstage's, retention, group snapshots.

use super::*;

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
