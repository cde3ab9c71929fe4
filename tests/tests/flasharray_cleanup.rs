//! Teardown's deletion of FlashArray staging volumes, against the FlashArray double
//! (`tests/doubles/flasharray.py`, every request and answer checked against the REST 2.56 spec):
//! the staging volume restore-to-staging made is destroyed (`PATCH /volumes` `destroyed=true`,
//! never eradicated) once no host is connected; production's volume, a staging volume in a
//! production protection group and a deletion-protected one never get a PATCH.
//!
//! Needs `.venv/bin/python` with openapi-core (`make setup`) and the spec beside the checkout;
//! without them the test prints `SKIP: <reason>` and returns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use serde_json::json;
use snapstage::Execution;
use snapstage::interlock::Deletion;
use snapstage::storage::flasharray::model::TagBatch;
use snapstage::storage::{Backend, VolumeSpec};
use snapstage_localenv::flasharray_double::Double;

fn ex(key: &str) -> Execution {
    Execution {
        key: key.into(),
        origin: "codepipeline".into(),
        pipeline: Some("shop".into()),
        commit: None,
    }
}

#[tokio::test]
async fn teardown_destroys_the_staging_volume_and_never_production_s() {
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed(
        "fa",
        json!({
            "volumes": [{"name": "db", "tags": [{"key": "environment", "value": "Production"}]},
                        {"name": "ledger"}],
            "pgroups": [{"name": "pg-ledger", "volumes": ["ledger"], "targets": [],
                         "tags": [{"key": "env", "value": "prod"}]}]
        }),
    )
    .await;
    let fa = d.backend("fa");
    let spec = VolumeSpec {
        zone: "ignored".into(),
        volume_type: "ignored".into(),
    };
    // Four staging volumes, as restore-to-staging makes them (tagged with their run).
    let mut staged = Vec::new();
    for (source, run) in [
        ("db", "shop/1/RestoreToStaging"),
        ("db", "shop/2/RestoreToStaging"),
        ("db", "shop/3/RestoreToStaging"),
        ("ledger", "shop/4/RestoreToStaging"),
    ] {
        let run = ex(run);
        let snap = fa.create_snapshot(source, &run, "").await.unwrap();
        staged.push(fa.create_volume(&snap, &spec, &run).await.unwrap().id);
    }
    let (plain, connected, protected, ledger) = (&staged[0], &staged[1], &staged[2], &staged[3]);
    d.seed(
        "fa",
        json!({"pgroups": [{"name": "pg-ledger", "volumes": ["ledger", ledger], "targets": [],
                            "tags": [{"key": "env", "value": "prod"}]}]}),
    )
    .await;
    // Someone protects one staging volume; another is still connected to a host.
    let protection = TagBatch {
        key: "snapstage:deletion-protection",
        value: "true",
        namespace: "snapstage",
        copyable: false,
    };
    fa.session()
        .await
        .unwrap()
        .put_volume_tags(protected, &[protection])
        .await
        .unwrap();
    d.control(
        "fa",
        reqwest::Method::POST,
        "/_double/connections",
        json!({"volume": connected, "count": 1}),
    )
    .await;

    // A dry run destroys nothing.
    assert_eq!(
        fa.delete_staging(plain, true).await.unwrap(),
        Deletion::WouldDelete
    );
    // Production and anything production or protected: kept, no PATCH.
    for (volume, why) in [
        ("db", "marked production (tag environment=Production)"),
        (
            ledger.as_str(),
            "marked production (protection group pg-ledger tag env=prod)",
        ),
        (
            protected.as_str(),
            "deletion-protected (tag snapstage:deletion-protection=true)",
        ),
        ("ledger", "marked production"),
    ] {
        match fa.delete_staging(volume, false).await.unwrap() {
            Deletion::Kept(reason) => assert!(reason.contains(why), "{volume}: {reason}"),
            other => panic!("{volume}: {other:?}"),
        }
    }
    // Still connected to a host: waits, no PATCH.
    match fa.delete_staging(connected, false).await.unwrap() {
        Deletion::Waiting(how) => assert!(how.contains("connected to 1 host"), "{how}"),
        other => panic!("{other:?}"),
    }
    let st = d.state("fa").await;
    assert_eq!(
        st["requests"]["PATCH /api/2.56/volumes"]
            .as_u64()
            .unwrap_or(0),
        0,
        "{st}"
    );

    // The staging volume: destroyed once, then gone; kept recoverable (not eradicated).
    assert_eq!(
        fa.delete_staging(plain, false).await.unwrap(),
        Deletion::Deleted
    );
    assert_eq!(
        fa.delete_staging(plain, false).await.unwrap(),
        Deletion::Gone
    );
    // Disconnected: the next teardown round destroys it.
    d.control(
        "fa",
        reqwest::Method::POST,
        "/_double/connections",
        json!({"volume": connected, "count": 0}),
    )
    .await;
    assert_eq!(
        fa.delete_staging(connected, false).await.unwrap(),
        Deletion::Deleted
    );
    let st = d.state("fa").await;
    let mut destroyed: Vec<&str> = st["destroyed_volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    destroyed.sort_unstable();
    let mut want = vec![plain.as_str(), connected.as_str()];
    want.sort_unstable();
    assert_eq!(destroyed, want, "{st}");
    assert!(
        st["volumes"][plain].is_object(),
        "destroyed, not eradicated: {st}"
    );
    assert_eq!(st["requests"]["PATCH /api/2.56/volumes"], 2, "{st}");
    assert_eq!(st["volumes"]["db"]["destroyed"], false);
    fa.close().await.unwrap();
    d.assert_no_violations().await;
}
