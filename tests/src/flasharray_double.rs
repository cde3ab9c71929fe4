//! The FlashArray double (`tests/doubles/flasharray.py`) from Rust tests: start it with some
//! arrays on loopback ports, seed and configure it, read its state and its spec-violation log.
//! The double validates every request and answer against the official REST 2.56 OpenAPI spec
//! with an independent validator (openapi-core), so a test that ends with
//! [`Double::assert_no_violations`] proves the client spoke the spec.
//!
//! Needs `.venv/bin/python` with openapi-core (`make setup`) and the spec beside the checkout;
//! without them [`Double::start`] prints `SKIP: <reason>` and returns `None`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is a test failure

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use snapstage::storage::flasharray::{ApiToken, Client, Config, FlashArray, Retry};

use crate::testkit::skip;

/// The API token every array of the double accepts.
pub const TOKEN: &str = "snapstage-test-api-token";

pub struct Double {
    child: Child,
    pub ports: BTreeMap<String, u16>,
    pub http: reqwest::Client,
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Double {
    /// Starts the double with the named arrays, or prints why it cannot and returns None.
    pub fn start(arrays: &[&str]) -> Option<Double> {
        let root = crate::workspace_root();
        let python = root.join(".venv/bin/python");
        if !python.exists() {
            skip(&format!(
                "{} is missing (run `make setup`); FlashArray double not started",
                python.display()
            ));
            return None;
        }
        let mut cmd = Command::new(&python);
        cmd.arg(root.join("tests/doubles/flasharray.py"))
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for a in arrays {
            cmd.arg("--array").arg(format!("{a}=0"));
        }
        let mut child = cmd.spawn().expect("starting the FlashArray double");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the double's ports");
        if line.trim().is_empty() {
            let status = child.wait().expect("double status");
            if status.code() == Some(3) {
                skip(
                    "the FlashArray double lacks a prerequisite (its message is above: openapi-core or the spec)",
                );
                return None;
            }
            panic!("the FlashArray double exited with {status} before it was ready");
        }
        let doc: Value = serde_json::from_str(&line).expect("ports line");
        let ports = doc["arrays"]
            .as_object()
            .expect("arrays")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("port") as u16))
            .collect();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("control client");
        Some(Double { child, ports, http })
    }

    pub fn url(&self, array: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[array])
    }

    pub fn config(&self, array: &str) -> Config {
        let mut cfg = Config::new(self.url(array), ApiToken::new(TOKEN));
        cfg.allow_insecure_http_for_tests = true;
        cfg.retry = Retry {
            attempts: 4,
            base: Duration::from_millis(2),
            max: Duration::from_millis(20),
        };
        cfg.timeout = Duration::from_secs(20);
        cfg
    }

    pub fn backend(&self, array: &str) -> FlashArray {
        FlashArray::new(Client::new(self.config(array)).expect("client"))
    }

    pub async fn control(
        &self,
        array: &str,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url(array)))
            .json(&body)
            .send()
            .await
            .expect("control request");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.expect("control answer")
    }

    pub async fn seed(&self, array: &str, body: Value) {
        self.control(array, reqwest::Method::POST, "/_double/seed", body)
            .await;
    }

    pub async fn configure(&self, array: &str, body: Value) {
        self.control(array, reqwest::Method::POST, "/_double/config", body)
            .await;
    }

    pub async fn fault(&self, array: &str, body: Value) {
        self.control(array, reqwest::Method::POST, "/_double/faults", body)
            .await;
    }

    /// Replaces the content of `volume` on `array` (an opaque map, e.g. path -> SHA-256): what a
    /// snapshot, a copy or a replication of it carries. Not visible through the REST API.
    pub async fn write_files(&self, array: &str, volume: &str, files: Value) {
        self.control(
            array,
            reqwest::Method::POST,
            "/_double/files",
            json!({"array": array, "volume": volume, "files": files}),
        )
        .await;
    }

    /// The content of `volume` on `array` (see [`Double::write_files`]).
    pub async fn files(&self, array: &str, volume: &str) -> Value {
        self.control(
            array,
            reqwest::Method::GET,
            "/_double/files",
            json!({"array": array, "volume": volume}),
        )
        .await["files"]
            .clone()
    }

    /// Connects `hosts` to `volume` on `array` (an empty list disconnects them all): listed by
    /// `GET /connections`, and a connected volume cannot be destroyed.
    pub async fn connect_hosts(&self, array: &str, volume: &str, hosts: &[&str]) {
        self.control(
            array,
            reqwest::Method::POST,
            "/_double/connections",
            json!({"array": array, "volume": volume, "hosts": hosts}),
        )
        .await;
    }

    pub async fn state(&self, array: &str) -> Value {
        let all = self
            .control(array, reqwest::Method::GET, "/_double/state", json!({}))
            .await;
        all["arrays"][array].clone()
    }

    /// Every request and answer matched the spec.
    pub async fn assert_no_violations(&self) {
        let first = self.ports.keys().next().expect("an array").clone();
        let v = self
            .control(
                &first,
                reqwest::Method::GET,
                "/_double/violations",
                json!({}),
            )
            .await;
        assert_eq!(
            v["violations"],
            json!([]),
            "the double recorded spec violations"
        );
    }
}
