//! The FlashArray client and backend when the network between them and the array goes wrong:
//! the FlashArray double (`tests/doubles/flasharray.py`, checked against the official REST 2.56
//! spec) behind the fault-injecting proxy. Its own retry (`Retry`) covers throttling and
//! unavailability, a GET that is reset or never answered is tried again, a POST whose fate is
//! unknown is not blindly re-sent, and a run cut short after any call converges on one snapshot
//! when re-run, counted in the double's state.
//!
//! Needs `.venv/bin/python` with openapi-core and the spec beside the checkout; prints SKIP
//! otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use snapstage::storage::Backend;
use snapstage::storage::flasharray::{
    ApiToken, Client, Config, FlashArray, Retry, snapshot_suffix,
};
use snapstage::{Error, Execution, FailureKind};
use snapstage_localenv::faults::{Crash, Fault, FaultProxy, Rule};

const TOKEN: &str = "snapstage-faults-api-token-7c1d";

struct Double {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Double {
    fn start() -> Option<Double> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = root.join(".venv/bin/python");
        if !python.exists() {
            snapstage_localenv::testkit::skip(&format!(
                "{} is missing (run `make setup`)",
                python.display()
            ));
            return None;
        }
        let mut child = Command::new(&python)
            .arg(root.join("tests/doubles/flasharray.py"))
            .args(["--exit-with-stdin", "--array", "fa=0", "--api-token", TOKEN])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the FlashArray double");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the double's ports");
        if line.trim().is_empty() {
            let status = child.wait().expect("status");
            if status.code() == Some(3) {
                snapstage_localenv::testkit::skip(
                    "the FlashArray double lacks a prerequisite (openapi-core or the spec; run `make setup`)",
                );
                return None;
            }
            panic!("the FlashArray double exited with {status}");
        }
        let doc: Value = serde_json::from_str(&line).expect("ports line");
        let port = doc["arrays"]["fa"].as_u64().expect("port");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Some(Double {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http,
        })
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    async fn seed_volume(&self, name: &str) {
        self.control(
            reqwest::Method::POST,
            "/_double/seed",
            json!({"volumes": [{"name": name, "provisioned": 8u64 << 30}]}),
        )
        .await;
    }

    /// Snapshots in the array whose name starts with `prefix` (the double's own state).
    async fn snapshots(&self, prefix: &str) -> Vec<String> {
        let st = self
            .control(reqwest::Method::GET, "/_double/state", json!({}))
            .await;
        st["arrays"]["fa"]["volume_snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| s.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    async fn assert_no_violations(&self) {
        let v = self
            .control(reqwest::Method::GET, "/_double/violations", json!({}))
            .await;
        assert_eq!(v["violations"], json!([]), "spec violations");
    }
}

/// A backend reaching the array through `proxy`, with a small, fast retry budget and a short
/// per-request timeout.
fn backend(proxy: &FaultProxy) -> FlashArray {
    let mut cfg = Config::new(&proxy.url, ApiToken::new(TOKEN));
    cfg.allow_insecure_http_for_tests = true;
    cfg.retry = Retry {
        attempts: 4,
        base: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    cfg.timeout = Duration::from_secs(2);
    FlashArray::new(Client::new(cfg).unwrap())
}

fn run(key: &str) -> Execution {
    Execution {
        key: key.into(),
        origin: "direct".into(),
        pipeline: None,
        commit: None,
    }
}

/// What a snapshot step does against the array: check the source, reuse or make the run's
/// snapshot, read it back, log out.
async fn snapshot_flow(fa: FlashArray, volume: &str, ex: &Execution) -> Result<String, Error> {
    let out = async {
        fa.describe_source(volume).await?;
        let snap = match fa.find_snapshot(volume, ex).await? {
            Some(s) => s,
            None => fa.create_snapshot(volume, ex, "snapstage").await?,
        };
        fa.snapshot(&snap.id).await.map(|s| s.id)
    }
    .await;
    let closed = fa.close().await;
    let id = out?;
    closed?;
    Ok(id)
}

#[tokio::test]
async fn resets_hangs_and_busy_answers_are_retried_and_the_snapshot_is_made() {
    let Some(d) = Double::start() else { return };
    d.seed_volume("db").await;
    let proxy = FaultProxy::start(&d.url).unwrap();
    proxy
        .add(Rule::new("GET /api/api_version", Fault::Reset, 1))
        .add(Rule::new("POST /api/2.56/login", Fault::status(503), 1))
        .add(Rule::new("GET /api/2.56/volumes", Fault::Hang, 1))
        .add(Rule::new(
            "GET /api/2.56/volume-snapshots",
            Fault::flasharray(429, "Too many requests.", Some(0)),
            2,
        ))
        .add(Rule::new(
            "POST /api/2.56/volume-snapshots",
            Fault::flasharray(503, "Service unavailable.", None),
            1,
        ))
        .add(Rule::new(
            "POST /api/2.56/volume-snapshots",
            Fault::Slow(Duration::from_millis(300)),
            1,
        ));
    let ex = run("shop/faults/Snapshot");
    let id = snapshot_flow(backend(&proxy), "db", &ex).await.unwrap();
    assert_eq!(
        d.snapshots(&format!("db.{}", snapshot_suffix(&ex))).await,
        vec![id]
    );
    // The hung GET was cut by the request timeout and sent again.
    assert_eq!(
        proxy.count("GET /api/2.56/volumes"),
        2,
        "{:?}",
        proxy.seen()
    );
    d.assert_no_violations().await;
}

#[tokio::test]
async fn a_post_whose_answer_is_lost_is_not_resent_and_the_rerun_finds_its_snapshot() {
    let Some(d) = Double::start() else { return };
    d.seed_volume("db").await;
    let proxy = FaultProxy::start(&d.url).unwrap();
    proxy.add(Rule::new(
        "POST /api/2.56/volume-snapshots",
        Fault::LoseAnswer,
        1,
    ));
    let ex = run("shop/lost/Snapshot");
    let e = snapshot_flow(backend(&proxy), "db", &ex).await.unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::SystemUnavailable, "{e}");
    assert!(
        e.to_string().contains("POST /api/2.56/volume-snapshots"),
        "{e}"
    );
    assert_eq!(
        proxy.count("POST /api/2.56/volume-snapshots"),
        1,
        "a POST with an unknown outcome is not sent again blindly"
    );
    let id = snapshot_flow(backend(&proxy), "db", &ex).await.unwrap();
    assert_eq!(
        d.snapshots(&format!("db.{}", snapshot_suffix(&ex))).await,
        vec![id]
    );
    d.assert_no_violations().await;
}

#[tokio::test]
async fn a_post_that_never_answers_is_cut_by_the_timeout_and_typed() {
    let Some(d) = Double::start() else { return };
    d.seed_volume("db").await;
    let proxy = FaultProxy::start(&d.url).unwrap();
    proxy.add(Rule::always("POST /api/2.56/volume-snapshots", Fault::Hang));
    let e = snapshot_flow(backend(&proxy), "db", &run("shop/hang/Snapshot"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
}

#[tokio::test]
async fn a_403_is_a_permission_error_without_retries() {
    let Some(d) = Double::start() else { return };
    d.seed_volume("db").await;
    let proxy = FaultProxy::start(&d.url).unwrap();
    proxy.add(Rule::always(
        "POST /api/2.56/volume-snapshots",
        Fault::flasharray(403, "Insufficient privileges.", None),
    ));
    let e = snapshot_flow(backend(&proxy), "db", &run("shop/denied/Snapshot"))
        .await
        .unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::PermissionError, "{e}");
    assert!(e.to_string().contains("Insufficient privileges"), "{e}");
    assert_eq!(proxy.count("POST /api/2.56/volume-snapshots"), 1);
}

#[tokio::test]
async fn a_run_cut_short_after_any_call_converges_to_one_snapshot() {
    let Some(d) = Double::start() else { return };
    d.seed_volume("db").await;
    let counting = FaultProxy::start(&d.url).unwrap();
    snapshot_flow(backend(&counting), "db", &run("shop/count/Snapshot"))
        .await
        .unwrap();
    let calls = counting.seen().len();
    assert!(
        calls >= 6,
        "version, login, source, find, create, read, logout: {calls}"
    );
    for n in 1..=calls {
        let ex = run(&format!("shop/crash-{n}/Snapshot"));
        let proxy = FaultProxy::start(&d.url).unwrap();
        proxy.crash_after(n, Crash::LoseAnswer);
        let _ = snapshot_flow(backend(&proxy), "db", &ex).await;
        proxy.heal();
        let id = snapshot_flow(backend(&proxy), "db", &ex)
            .await
            .unwrap_or_else(|e| panic!("re-run after a crash at call {n}: {e}"));
        let snaps = d.snapshots(&format!("db.{}", snapshot_suffix(&ex))).await;
        assert_eq!(snaps, vec![id], "crash after call {n}");
    }
    d.assert_no_violations().await;
}
