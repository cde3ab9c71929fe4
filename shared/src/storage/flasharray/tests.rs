//! Unit tests of the FlashArray backend and its client: names, state mapping, version
//! negotiation, error mapping, token redaction, TLS and endpoint checks, backoff.

use super::client::*;
use super::model::*;
use super::names::*;
use std::time::Duration;

use crate::FailureKind;
use crate::error::Error;
use crate::job::contract::Execution;
use crate::storage::SnapshotState;

// ---- names and states ----

fn ex(k: &str) -> Execution {
    Execution {
        key: k.into(),
        origin: "codepipeline".into(),
        pipeline: None,
        commit: None,
    }
}

fn is_valid_suffix(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().any(|c| c.is_ascii_alphabetic() || c == '-')
}

#[test]
fn suffix_is_stable_per_run_and_valid() {
    let a = snapshot_suffix(&ex("shop/0f1e2d3c/Snapshot"));
    assert_eq!(a, snapshot_suffix(&ex("shop/0f1e2d3c/Snapshot")));
    assert_ne!(a, snapshot_suffix(&ex("shop/0f1e2d3d/Snapshot")));
    assert!(a.starts_with(SUFFIX_PREFIX));
    assert_eq!(a.len(), SUFFIX_PREFIX.len() + 16);
    assert!(is_valid_suffix(&a), "{a}");
    // Any key, however long or odd, gives a valid suffix.
    assert!(is_valid_suffix(&snapshot_suffix(&ex(&"ü/ ".repeat(500)))));
}

#[test]
fn staging_names_are_valid_and_never_the_source() {
    let e = ex("run-1");
    let n = staging_volume_name("db-prod", &e);
    assert!(n.starts_with("db-prod-staging-"), "{n}");
    check_volume_name("t", &n).unwrap();
    assert_ne!(n, "db-prod");
    let long = staging_volume_name(&"v".repeat(63), &e);
    assert!(long.len() <= 63, "{long}");
    check_volume_name("t", &long).unwrap();
    assert!(staging_volume_name("pod1::db", &e).starts_with("db-staging-"));
    assert!(staging_volume_name("fa-1:db", &e).starts_with("db-staging-"));
    assert!(staging_volume_name("---", &e).starts_with("snapstage-staging-"));
    // The name ends with the run's hash: find_volume looks for it.
    assert_eq!(
        &staging_volume_name("a", &e)[1..],
        &staging_volume_name("b", &e)[1..]
    );
}

#[test]
fn volume_names_follow_purity_rules() {
    check_volume_name("t", "db_staging-1").unwrap();
    for bad in ["", "-db", "db-", "db.snap", "12345", &"x".repeat(64), "a b"] {
        assert!(check_volume_name("t", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn transfer_progress_maps_to_pending_then_ready() {
    let t = |progress: Option<f64>, started: Option<i64>, completed: Option<i64>| Transfer {
        name: "pg.snapstage-1".into(),
        destroyed: Some(false),
        progress,
        started,
        completed,
        data_transferred: None,
    };
    assert_eq!(
        transfer_state(&t(Some(0.0), Some(1), None)),
        SnapshotState::Pending { percent: 0 }
    );
    assert_eq!(
        transfer_state(&t(Some(0.666), Some(1), None)),
        SnapshotState::Pending { percent: 66 }
    );
    assert_eq!(
        transfer_state(&t(Some(0.9999), Some(1), None)),
        SnapshotState::Pending { percent: 99 }
    );
    assert_eq!(
        transfer_state(&t(Some(1.0), Some(1), Some(2))),
        SnapshotState::Ready
    );
    assert_eq!(transfer_state(&t(None, None, None)), SnapshotState::Ready);
    let mut d = t(Some(0.5), Some(1), None);
    d.destroyed = Some(true);
    assert!(matches!(transfer_state(&d), SnapshotState::Failed(_)));
}

#[test]
fn snapshot_times_are_rfc3339_and_sizes_round_up() {
    assert_eq!(
        rfc3339(Some(1_700_000_000_123)).as_deref(),
        Some("2023-11-14T22:13:20.123Z")
    );
    assert_eq!(gib(Some(1)), Some(1));
    assert_eq!(gib(Some(10 * GIB)), Some(10));
    assert_eq!(gib(None), None);
}

// ---- the client ----

fn v(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn picks_the_highest_2x_at_most_the_spec_version() {
    let offered = v(&["1.0", "1.19", "2.0", "2.9", "2.10", "2.36"]);
    assert_eq!(
        pick_version(&offered),
        Some(ApiVersion {
            major: 2,
            minor: 36
        })
    );
    // 2.10 > 2.9: numeric, not string, order.
    assert_eq!(
        pick_version(&v(&["2.9", "2.10"])).unwrap().to_string(),
        "2.10"
    );
    // Newer arrays: stay on the version we were checked against.
    assert_eq!(
        pick_version(&v(&["2.55", "2.56", "2.57", "2.60", "3.0"])).unwrap(),
        MAX_VERSION
    );
    assert_eq!(pick_version(&v(&["1.0", "1.17", "junk"])), None);
    assert_eq!(pick_version(&[]), None);
}

#[test]
fn array_errors_map_to_failure_types() {
    let body = br#"{"errors": [{"context": "db", "message": "Volume does not exist."}]}"#;
    let e = api_error(400, "GET /api/2.56/volumes", body);
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "flasharray: not found: GET /api/2.56/volumes: HTTP 400: db: Volume does not exist."
    );
    assert_eq!(
        api_error(401, "op", b"").failure_kind(),
        FailureKind::PermissionError
    );
    assert_eq!(
        api_error(403, "op", br#"{"errors":[{"message":"no"}]}"#).failure_kind(),
        FailureKind::PermissionError
    );
    assert_eq!(
        api_error(429, "op", b"").failure_kind(),
        FailureKind::SystemUnavailable
    );
    assert_eq!(
        api_error(503, "op", b"<html>").failure_kind(),
        FailureKind::SystemUnavailable
    );
    let e = api_error(
        400,
        "POST /api/2.56/volume-snapshots",
        br#"{"errors": [{"context": "db.snapstage-1", "message": "Snapshot already exists."}]}"#,
    );
    assert_eq!(e.failure_kind(), FailureKind::JobFailed);
    assert!(is_already_exists(&e));
    assert!(
        api_error(500, "op", b"")
            .to_string()
            .contains("Internal Server Error")
    );
}

#[test]
fn tokens_are_redacted_in_debug() {
    let cfg = Config::new("https://array", ApiToken::new("0f2e2884-secret"));
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("0f2e2884"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
}

#[test]
fn endpoints_must_be_https_unless_a_test_allows_http() {
    let token = || ApiToken::new("t");
    let e = Client::new(Config::new("http://127.0.0.1:1", token())).unwrap_err();
    assert!(matches!(e, Error::Configuration(_)));
    assert!(e.to_string().contains("https://"), "{e}");
    let mut cfg = Config::new("http://127.0.0.1:1", token());
    cfg.allow_insecure_http_for_tests = true;
    Client::new(cfg).unwrap();
    Client::new(Config::new("https://array.example.com", token())).unwrap();
    for bad in [
        "array.example.com",
        "https://user:pw@array",
        "https://array/?x=1",
        "ftp://a",
    ] {
        assert!(
            Client::new(Config::new(bad, token())).is_err(),
            "{bad} should be refused"
        );
    }
}

#[test]
fn a_ca_bundle_must_hold_certificates() {
    let mut cfg = Config::new("https://array", ApiToken::new("t"));
    cfg.ca_bundle = Some(b"not a pem".to_vec());
    let e = Client::new(cfg).unwrap_err();
    assert!(e.to_string().starts_with("caBundle:"), "{e}");
}

#[test]
fn backoff_is_bounded_and_jittered() {
    let r = Retry {
        attempts: 5,
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    for n in 0..20 {
        let d = r.delay(n, None);
        assert!(d <= r.max, "{d:?}");
        let exp = (r.base * 2u32.pow(n.min(16))).min(r.max);
        assert!(d >= exp / 2, "{d:?} < half of {exp:?}");
    }
    assert_eq!(r.delay(0, Some(Duration::from_secs(60))), r.max);
    assert!(r.delay(0, Some(Duration::from_millis(700))) >= Duration::from_millis(700));
}
