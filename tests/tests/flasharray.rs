//! The FlashArray backend against the FlashArray double (`tests/doubles/flasharray.py`), which
//! validates every request and every answer against the official REST 2.56 OpenAPI spec with an
//! independent validator (openapi-core). Each test starts its own double (one process, one or
//! two arrays on loopback ports) and ends by asserting the double recorded no spec violation.
//!
//! Needs `.venv/bin/python` with openapi-core (`make setup`) and the spec beside the checkout;
//! without them each test prints `SKIP: <reason>` and returns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use serde_json::{Value, json};
use snapstage::storage::flasharray::{
    ApiToken, Client, FlashArray, snapshot_suffix, staging_volume_name,
};
use snapstage::storage::{Backend, SnapshotState, VolumeSpec, VolumeState};
use snapstage::{Error, Execution, FailureKind};
use snapstage_localenv::flasharray_double::{Double, TOKEN};

fn ex(key: &str) -> Execution {
    Execution {
        key: key.into(),
        origin: "codepipeline".into(),
        pipeline: Some("shop".into()),
        commit: None,
    }
}

fn snapshots_named(state: &Value, prefix: &str) -> Vec<String> {
    state["volume_snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .filter(|s| s.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn requests(state: &Value, key: &str) -> u64 {
    state["requests"][key].as_u64().unwrap_or(0)
}

const GIB: u64 = 1 << 30;

#[tokio::test]
async fn negotiates_the_highest_2x_version_and_logs_in_and_out() {
    let Some(d) = Double::start(&["fa", "older", "legacy"]) else {
        return;
    };
    d.seed(
        "fa",
        json!({"volumes": [{"name": "db", "provisioned": 20 * GIB}]}),
    )
    .await;
    d.configure(
        "older",
        json!({"versions": ["1.17", "2.0", "2.9", "2.10", "2.40"]}),
    )
    .await;
    d.configure("legacy", json!({"versions": ["1.15", "1.16", "1.17"]}))
        .await;

    // The double offers up to 2.60: snapstage stays on the spec it was checked against.
    let fa = d.backend("fa");
    assert_eq!(fa.session().await.unwrap().version().to_string(), "2.56");
    assert_eq!(fa.describe_source("db").await.unwrap(), Some(20));
    fa.close().await.unwrap();
    let st = d.state("fa").await;
    assert_eq!(
        (st["logins"].as_u64(), st["logouts"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(st["sessions"], 0, "the session was ended");
    assert_eq!(requests(&st, "GET /api/2.56/volumes"), 1);

    let older = d.backend("older");
    assert_eq!(older.session().await.unwrap().version().to_string(), "2.40");
    older.close().await.unwrap();
    assert_eq!(d.state("older").await["logouts"], 1);

    let e = d.backend("legacy").session().await.unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("1.17") && msg.contains("2.x"), "{msg}");

    // A backend that never needed the array never logs in.
    d.backend("fa").close().await.unwrap();
    assert_eq!(d.state("fa").await["logins"], 1);
    d.assert_no_violations().await;
}

#[tokio::test]
async fn a_wrong_api_token_is_a_permission_error_that_does_not_echo_the_token() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    let mut cfg = d.config("fa");
    cfg.api_token = ApiToken::new("wrong-secret-0f2e2884");
    let fa = FlashArray::new(Client::new(cfg).unwrap());
    let e = fa.describe_source("db").await.unwrap_err();
    assert!(matches!(e, Error::Permission { .. }), "{e:?}");
    assert_eq!(e.failure_kind(), FailureKind::PermissionError);
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
    assert!(!format!("{e:?}").contains("wrong-secret"));
    assert_eq!(d.state("fa").await["failed_logins"], 1);
    d.assert_no_violations().await;
}

#[tokio::test]
async fn a_401_from_the_array_is_a_permission_error() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed("fa", json!({"volumes": [{"name": "db"}]})).await;
    d.fault("fa", json!({"status": 401, "count": 1, "path": "/volumes"}))
        .await;
    let fa = d.backend("fa");
    let e = fa.describe_source("db").await.unwrap_err();
    assert!(matches!(e, Error::Permission { .. }), "{e:?}");
    assert_eq!(e.failure_kind(), FailureKind::PermissionError);
    let s = fa.session().await.unwrap();
    let dbg = format!("{s:?}");
    assert!(dbg.contains("<redacted>") && !dbg.contains(TOKEN), "{dbg}");
    fa.close().await.unwrap();
    d.assert_no_violations().await;
}

#[tokio::test]
async fn a_snapshot_is_made_once_per_execution_and_found_again_on_retry() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed(
        "fa",
        json!({"volumes": [{"name": "db", "provisioned": 8 * GIB}]}),
    )
    .await;
    let run = ex("shop/0f1e2d3c/Snapshot");
    let suffix = snapshot_suffix(&run);

    // First invocation: nothing yet, so it snapshots.
    let fa = d.backend("fa");
    assert!(fa.find_snapshot("db", &run).await.unwrap().is_none());
    let snap = fa
        .create_snapshot("db", &run, "snapstage run")
        .await
        .unwrap();
    assert_eq!(snap.id, format!("db.{suffix}"));
    assert_eq!(snap.source, "db");
    assert_eq!(
        snap.state,
        SnapshotState::Ready,
        "array snapshots are usable at once"
    );
    assert_eq!(snap.size_gib, Some(8));
    assert!(snap.started.as_deref().is_some_and(|t| t.ends_with('Z')));
    fa.close().await.unwrap();

    // The retried invocation (a new process) finds the same snapshot.
    let again = d.backend("fa");
    let found = again
        .find_snapshot("db", &run)
        .await
        .unwrap()
        .expect("found on retry");
    assert_eq!(found.id, snap.id);
    assert_eq!(
        again.snapshot(&snap.id).await.unwrap().state,
        SnapshotState::Ready
    );
    // A duplicate that raced past find_snapshot gets the same snapshot, not an error.
    let dup = again
        .create_snapshot("db", &run, "snapstage run")
        .await
        .unwrap();
    assert_eq!(dup.id, snap.id);
    // Another run makes its own.
    let other = again
        .create_snapshot("db", &ex("shop/other/Snapshot"), "")
        .await
        .unwrap();
    assert_ne!(other.id, snap.id);
    again.close().await.unwrap();

    let st = d.state("fa").await;
    assert_eq!(
        snapshots_named(&st, &format!("db.{suffix}")),
        vec![snap.id.clone()]
    );
    assert_eq!(snapshots_named(&st, "db.").len(), 2);

    let missing = d.backend("fa");
    let e = missing.snapshot("db.nope").await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = missing.describe_source("nope").await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    missing.close().await.unwrap();
    d.assert_no_violations().await;
}

#[tokio::test]
async fn the_newest_snapstage_snapshot_ignores_other_snapshots() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed(
        "fa",
        json!({
            "volumes": [{"name": "db"}, {"name": "other"}],
            "snapshots": [
                {"source": "db", "suffix": "snapstage-aaaa", "created": 1_700_000_001_000_i64},
                {"source": "db", "suffix": "snapstage-bbbb", "created": 1_700_000_003_000_i64},
                {"source": "db", "suffix": "daily-1", "created": 1_700_000_009_000_i64},
                {"source": "db", "suffix": "nightly", "created": 1_700_000_008_000_i64},
                {"source": "other", "suffix": "snapstage-cccc", "created": 1_700_000_010_000_i64}
            ]
        }),
    )
    .await;
    let fa = d.backend("fa");
    let newest = fa
        .newest_snapshot("db")
        .await
        .unwrap()
        .expect("a snapstage snapshot");
    assert_eq!(newest.id, "db.snapstage-bbbb");
    assert_eq!(newest.started.as_deref(), Some("2023-11-14T22:13:23Z"));
    d.seed("fa", json!({"volumes": [{"name": "bare"}], "snapshots": [{"source": "bare", "suffix": "manual"}]}))
        .await;
    assert!(fa.newest_snapshot("bare").await.unwrap().is_none());
    fa.close().await.unwrap();
    d.assert_no_violations().await;
}

#[tokio::test]
async fn listing_walks_every_page() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    let snaps: Vec<Value> = (0..11)
        .map(|i| json!({"source": "db", "suffix": format!("snapstage-{i:04}"), "created": 1_700_000_000_000_i64 + i * 1000}))
        .collect();
    d.seed(
        "fa",
        json!({"volumes": [{"name": "db"}], "snapshots": snaps}),
    )
    .await;
    let mut cfg = d.config("fa");
    cfg.page_size = 3;
    let fa = FlashArray::new(Client::new(cfg).unwrap());
    let newest = fa.newest_snapshot("db").await.unwrap().unwrap();
    assert_eq!(
        newest.id, "db.snapstage-0010",
        "the newest is on the last page"
    );
    fa.close().await.unwrap();
    let st = d.state("fa").await;
    assert_eq!(
        requests(&st, "GET /api/2.56/volume-snapshots"),
        4,
        "11 items, 3 a page"
    );

    // The page budget is a bound, not a hang.
    let mut cfg = d.config("fa");
    cfg.page_size = 2;
    cfg.max_pages = 3;
    let fa = FlashArray::new(Client::new(cfg).unwrap());
    let e = fa.newest_snapshot("db").await.unwrap_err();
    assert!(e.to_string().contains("more than 3 pages"), "{e}");
    fa.close().await.unwrap();
    d.assert_no_violations().await;
}

#[tokio::test]
async fn a_staging_volume_is_a_copy_with_overwrite_and_never_the_production_volume() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed(
        "fa",
        json!({"volumes": [{"name": "db", "provisioned": 16 * GIB}]}),
    )
    .await;
    let run = ex("shop/0f1e2d3c/Restore");
    let fa = d.backend("fa");
    let snap = fa.create_snapshot("db", &run, "").await.unwrap();
    assert!(fa.find_volume(&run).await.unwrap().is_none());

    let spec = VolumeSpec {
        zone: "ignored".into(),
        volume_type: "ignored".into(),
    };
    let vol = fa.create_volume(&snap, &spec, &run).await.unwrap();
    assert_eq!(vol.id, staging_volume_name("db", &run));
    assert_ne!(vol.id, "db");
    assert_eq!(vol.state, VolumeState::Available);
    assert_eq!(vol.snapshot.as_deref(), Some(snap.id.as_str()));
    assert_eq!(vol.size_gib, Some(16));
    let found = fa
        .find_volume(&run)
        .await
        .unwrap()
        .expect("found by the run");
    assert_eq!(found.id, vol.id);
    assert_eq!(
        fa.volume(&vol.id).await.unwrap().state,
        VolumeState::Available
    );

    // Repeating the copy refreshes the same staging volume (overwrite), no second volume.
    let again = fa.create_volume(&snap, &spec, &run).await.unwrap();
    assert_eq!(again.id, vol.id);

    // The production volume is never a target.
    for target in ["db"] {
        let e = fa.copy_snapshot(&snap, target).await.unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{e:?}");
        assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    }
    fa.close().await.unwrap();

    let st = d.state("fa").await;
    let vols = st["volumes"].as_object().unwrap();
    assert_eq!(vols.len(), 2, "production and one staging volume: {vols:?}");
    assert_eq!(vols[&vol.id]["overwritten"], 1);
    assert_eq!(vols["db"]["overwritten"], 0);
    assert!(
        vols["db"].get("source").is_none(),
        "production was not written"
    );
    d.assert_no_violations().await;
}

/// The production interlock's read of an array volume (deploy-staging-db with pure-csi / px-csi):
/// restore-to-staging tags the staging volume with its run; production's volume and protection
/// group carry their own tags; every request is the spec's.
#[tokio::test]
async fn staging_volumes_carry_the_run_and_the_interlock_reads_the_array_s_tags() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed(
        "fa",
        json!({
            "volumes": [{"name": "db", "provisioned": 16 * GIB,
                         "tags": [{"key": "environment", "value": "Production"}]},
                        {"name": "scratch"}],
            "pgroups": [{"name": "pg-orders", "volumes": ["db", "logs"], "targets": [],
                         "tags": [{"key": "tier", "value": "critical"},
                                  {"key": "stage", "value": "prd", "namespace": "ops"}]}]
        }),
    )
    .await;
    let restore = ex("shop/0f1e2d3c/RestoreToStaging");
    let deploy = ex("shop/0f1e2d3c/DeployStagingDb");
    let fa = d.backend("fa");
    let snap = fa.create_snapshot("db", &restore, "").await.unwrap();
    let spec = VolumeSpec {
        zone: "ignored".into(),
        volume_type: "ignored".into(),
    };
    let vol = fa.create_volume(&snap, &spec, &restore).await.unwrap();
    let st = d.state("fa").await;
    let tags = &st["volume_tags"][&vol.id];
    assert_eq!(tags["snapstage/snapstage:managed-by"], "snapstage", "{st}");
    assert_eq!(tags["snapstage/snapstage:role"], "staging");
    assert_eq!(
        tags["snapstage/snapstage:execution"],
        "shop/0f1e2d3c/RestoreToStaging"
    );
    assert!(
        vol.tags
            .iter()
            .any(|(k, v)| k == "snapstage:role" && v == "staging"),
        "{:?}",
        vol.tags
    );

    // deploy-staging-db, the next action of the same pipeline execution, accepts it.
    let marks = fa.marks(&vol.id).await.unwrap().expect("the volume exists");
    assert_eq!(
        snapstage::interlock::decide(
            snapstage::interlock::Import {
                field: "volumeId",
                id: &vol.id,
                allow_unmanaged: None,
                backend: "flasharray",
            },
            Some(&marks),
            &deploy,
        )
        .unwrap(),
        snapstage::interlock::Accepted::ThisRun
    );

    // The production volume: its own tag and its protection group's are read.
    let prod = fa.marks("db").await.unwrap().expect("db exists");
    let seen: Vec<(String, String, String)> = prod
        .markers
        .iter()
        .map(|m| (m.on.clone(), m.key.clone(), m.value.clone()))
        .collect();
    for want in [
        ("tag", "environment", "Production"),
        ("protection group pg-orders tag", "tier", "critical"),
        ("protection group pg-orders tag", "stage", "prd"),
    ] {
        assert!(
            seen.iter()
                .any(|(o, k, v)| (o.as_str(), k.as_str(), v.as_str()) == want),
            "{want:?} in {seen:?}"
        );
    }
    let e = snapstage::interlock::decide(
        snapstage::interlock::Import {
            field: "volumeId",
            id: "db",
            allow_unmanaged: Some("db"),
            backend: "flasharray",
        },
        Some(&prod),
        &deploy,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("is marked production (tag environment=Production)"),
        "{e}"
    );
    // An untagged volume outside any group carries nothing; a missing one is None.
    let scratch = fa.marks("scratch").await.unwrap().expect("scratch exists");
    assert!(
        scratch.markers.is_empty() && scratch.staging_run.is_none(),
        "{scratch:?}"
    );
    assert!(fa.marks("no-such-volume").await.unwrap().is_none());
    fa.close().await.unwrap();
    d.assert_no_violations().await;
}

/// A restore cut short between the copy and its tags: the retry finds the volume by name and
/// tags it, so the deploy that follows accepts it.
#[tokio::test]
async fn a_staging_volume_copied_but_not_yet_tagged_is_tagged_by_the_retry() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed("fa", json!({"volumes": [{"name": "db"}]})).await;
    let run = ex("shop/0f1e2d3c/RestoreToStaging");
    let fa = d.backend("fa");
    let snap = fa.create_snapshot("db", &run, "").await.unwrap();
    // The copy alone, as a restore killed right after it leaves it.
    let copied = fa
        .copy_snapshot(&snap, &staging_volume_name("db", &run))
        .await
        .unwrap();
    assert!(d.state("fa").await["volume_tags"].get(&copied.id).is_none());
    let found = fa.find_volume(&run).await.unwrap().expect("found by name");
    assert_eq!(found.id, copied.id);
    let st = d.state("fa").await;
    assert_eq!(
        st["volume_tags"][&copied.id]["snapstage/snapstage:execution"],
        "shop/0f1e2d3c/RestoreToStaging"
    );
    // Found again: already tagged, nothing is written twice.
    fa.find_volume(&run).await.unwrap();
    assert_eq!(
        requests(&d.state("fa").await, "PUT /api/2.56/volumes/tags/batch"),
        1
    );
    fa.close().await.unwrap();
    d.assert_no_violations().await;
}

#[tokio::test]
async fn a_protection_group_snapshot_replicates_with_rising_progress_then_restores_on_the_target() {
    let Some(d) = Double::start(&["fa-onprem", "cbs-cloud"]) else {
        return;
    };
    d.seed(
        "fa-onprem",
        json!({
            "volumes": [{"name": "db-data", "provisioned": 4 * GIB}, {"name": "db-log", "provisioned": GIB}],
            "pgroups": [{"name": "pg-db", "volumes": ["db-data", "db-log"], "targets": ["cbs-cloud"]}]
        }),
    )
    .await;
    let run = ex("shop/0f1e2d3c/Snapshot");
    let onprem = d.backend("fa-onprem");
    let cbs = d.backend("cbs-cloud");
    let suffix = snapshot_suffix(&run);

    let snap = onprem.snapshot_pgroup("pg-db", &run).await.unwrap();
    assert_eq!(snap.id, format!("pg-db.{suffix}"));
    assert_eq!(snap.source, "pg-db");
    let mut percents = Vec::new();
    let mut state = snap.state.clone();
    for _ in 0..10 {
        match state {
            SnapshotState::Pending { percent } => percents.push(percent),
            SnapshotState::Ready => break,
            SnapshotState::Failed(why) => panic!("{why}"),
        }
        // Not on the target until the transfer completes.
        assert!(
            cbs.newest_replicated_snapshot("fa-onprem", "pg-db", "db-data")
                .await
                .unwrap()
                .is_none()
        );
        state = onprem.snapshot(&snap.id).await.unwrap().state;
    }
    assert_eq!(
        state,
        SnapshotState::Ready,
        "replication completed: {percents:?}"
    );
    assert!(percents.len() >= 2, "{percents:?}");
    assert!(
        percents.windows(2).all(|w| w[0] < w[1]),
        "progress rises: {percents:?}"
    );

    // A retry of the step finds the run's snapshot: one protection group snapshot.
    let again = onprem.snapshot_pgroup("pg-db", &run).await.unwrap();
    assert_eq!(
        (again.id.as_str(), again.state),
        (snap.id.as_str(), SnapshotState::Ready)
    );
    let st = d.state("fa-onprem").await;
    assert_eq!(st["protection_group_snapshots"], json!([snap.id]));
    // The volume's part of it is a snapshot of the volume, and usable.
    let part = onprem
        .snapshot(&format!("{}.db-data", snap.id))
        .await
        .unwrap();
    assert_eq!(
        (part.source.as_str(), part.state),
        ("db-data", SnapshotState::Ready)
    );
    onprem.close().await.unwrap();

    // On Cloud Block Store: the newest replicated snapshot, copied into a staging volume.
    let replica = cbs
        .newest_replicated_snapshot("fa-onprem", "pg-db", "db-data")
        .await
        .unwrap()
        .expect("replicated");
    assert_eq!(replica.id, format!("fa-onprem:pg-db.{suffix}.db-data"));
    assert_eq!(
        cbs.snapshot(&replica.id).await.unwrap().state,
        SnapshotState::Ready
    );
    let restore = ex("shop/0f1e2d3c/Restore");
    let spec = VolumeSpec {
        zone: String::new(),
        volume_type: String::new(),
    };
    let vol = cbs.create_volume(&replica, &spec, &restore).await.unwrap();
    assert_eq!(vol.id, staging_volume_name("db-data", &restore));
    assert_eq!(vol.size_gib, Some(4));
    let e = cbs.copy_snapshot(&replica, "db-data").await.unwrap_err();
    assert!(matches!(e, Error::Refused(_)), "{e:?}");
    cbs.close().await.unwrap();
    let st = d.state("cbs-cloud").await;
    assert_eq!(st["volumes"].as_object().unwrap().len(), 1);
    d.assert_no_violations().await;
}

#[tokio::test]
async fn throttling_and_unavailability_are_retried_then_succeed() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed("fa", json!({"volumes": [{"name": "db"}]})).await;
    d.fault("fa", json!({"status": 429, "count": 2, "path": "/volume-snapshots", "method": "POST", "retry_after": 0}))
        .await;
    d.fault("fa", json!({"status": 503, "count": 1, "path": "/volumes"}))
        .await;
    d.fault("fa", json!({"status": 503, "count": 1, "path": "/login"}))
        .await;
    let fa = d.backend("fa");
    assert_eq!(fa.describe_source("db").await.unwrap(), Some(10));
    let run = ex("shop/throttled/Snapshot");
    let snap = fa.create_snapshot("db", &run, "").await.unwrap();
    fa.close().await.unwrap();
    let st = d.state("fa").await;
    assert_eq!(requests(&st, "POST /api/2.56/volume-snapshots"), 3);
    assert_eq!(requests(&st, "GET /api/2.56/volumes"), 2);
    assert_eq!(requests(&st, "POST /api/2.56/login"), 2);
    assert_eq!(snapshots_named(&st, "db."), vec![snap.id]);
    d.assert_no_violations().await;
}

#[tokio::test]
async fn a_persistent_503_is_system_unavailable_after_bounded_retries() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed("fa", json!({"volumes": [{"name": "db"}]})).await;
    d.fault(
        "fa",
        json!({"status": 503, "count": 1000, "path": "/volumes"}),
    )
    .await;
    let fa = d.backend("fa");
    let e = fa.describe_source("db").await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert_eq!(e.failure_kind(), FailureKind::SystemUnavailable);
    assert!(e.to_string().contains("after 4 attempts"), "{e}");
    fa.close().await.unwrap();
    let st = d.state("fa").await;
    assert_eq!(
        requests(&st, "GET /api/2.56/volumes"),
        4,
        "the retry budget"
    );
    d.assert_no_violations().await;
}

/// The double is not a rubber stamp: a request outside the spec is refused with the rule it
/// broke, and recorded.
#[tokio::test]
async fn the_double_refuses_requests_outside_the_spec() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed("fa", json!({"volumes": [{"name": "db"}]})).await;
    let base = d.url("fa");
    let login = d
        .http
        .post(format!("{base}/api/2.56/login"))
        .header("api-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let auth = login.headers()["x-auth-token"]
        .to_str()
        .unwrap()
        .to_string();

    let bad = d
        .http
        .post(format!(
            "{base}/api/2.56/volume-snapshots?source_names=db&bogus=1"
        ))
        .header("x-auth-token", &auth)
        .json(&json!({"sufix": "snapstage-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("body.sufix") && msg.contains("'bogus'"),
        "{msg}"
    );

    let unauthenticated = d
        .http
        .get(format!("{base}/api/2.56/volumes?names=db"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unauthenticated.status(),
        400,
        "no session token: outside the spec's security"
    );

    let v = d
        .control("fa", reqwest::Method::GET, "/_double/violations", json!({}))
        .await;
    let rules: Vec<&str> = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert!(rules.iter().any(|r| r.contains("Security")), "{rules:?}");
    d.http
        .post(format!("{base}/api/2.56/logout"))
        .header("x-auth-token", &auth)
        .send()
        .await
        .unwrap();
}
