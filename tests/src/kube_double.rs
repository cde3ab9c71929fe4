//! The Kubernetes API server double (`tests/doubles/kubernetes.py`) from Rust tests: start it on a
//! loopback port, get a `kube::Client` for it (plain http, optionally through a
//! [`crate::faults::FaultProxy`]), seed objects and read its state by its own control route
//! (`/_double/...`, which never advances the simulated snapshot controller).
//!
//! Needs `.venv/bin/python` (`make setup`); without it [`KubeDouble::start`] prints
//! `SKIP: <reason>` and returns `None`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is a test failure

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::testkit::skip;

/// The CSI driver of the double's default VolumeSnapshotClass.
pub const DRIVER: &str = "csi.double.snapstage.io";
/// The double's default VolumeSnapshotClass.
pub const SNAPSHOT_CLASS: &str = "double-snapclass";

pub struct KubeDouble {
    child: Child,
    pub port: u16,
    pub http: reqwest::Client,
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl KubeDouble {
    /// Starts the double, or prints why it cannot and returns None.
    pub fn start() -> Option<KubeDouble> {
        let root = crate::workspace_root();
        let python = root.join(".venv/bin/python");
        if !python.exists() {
            skip(&format!(
                "{} is missing (run `make setup`); Kubernetes API server double not started",
                python.display()
            ));
            return None;
        }
        let mut child = Command::new(&python)
            .arg(root.join("tests/doubles/kubernetes.py"))
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the Kubernetes double");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the double's port");
        if line.trim().is_empty() {
            let status = child.wait().expect("double status");
            panic!("the Kubernetes double exited with {status} before it was ready");
        }
        let doc: Value = serde_json::from_str(&line).expect("port line");
        let port = doc["port"].as_u64().expect("port") as u16;
        snapstage::kube::client::install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("control client");
        Some(KubeDouble { child, port, http })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kube client for `url` (the double, or a fault proxy in front of it), default namespace
    /// `default`, configured as snapstage's clients are ([`snapstage::kube::client::tuned`]) but with
    /// short timeouts so a hang costs a test seconds, not minutes.
    pub fn client_for(url: &str) -> kube::Client {
        snapstage::kube::client::install_crypto_provider();
        let mut config =
            snapstage::kube::client::tuned(kube::Config::new(url.parse().expect("url")));
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(2));
        config.write_timeout = Some(Duration::from_secs(2));
        kube::Client::try_from(config).expect("kube client")
    }

    /// A kube client straight to the double.
    pub fn client(&self) -> kube::Client {
        Self::client_for(&self.url())
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url()))
            .json(&body)
            .send()
            .await
            .expect("control request");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.expect("control answer")
    }

    /// Stores `objects` as given (status included), the way a cluster already holds them.
    pub async fn seed(&self, objects: Vec<Value>) -> Vec<Value> {
        let out = self
            .control(
                reqwest::Method::POST,
                "/_double/seed",
                json!({ "objects": objects }),
            )
            .await;
        out["objects"].as_array().cloned().unwrap_or_default()
    }

    /// A Bound PVC of `size` bytes (and its PV) in `namespace`.
    pub async fn seed_pvc(&self, namespace: &str, name: &str, size: u64, labels: Value) {
        self.control(
            reqwest::Method::POST,
            "/_double/seed",
            json!({"pvcs": [{"namespace": namespace, "name": name, "size": size, "labels": labels}]}),
        )
        .await;
    }

    /// A namespace, labelled as given.
    pub async fn seed_namespace(&self, name: &str, labels: Value) {
        self.seed(vec![json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}
        })])
        .await;
    }

    /// The default VolumeSnapshotClass ([`SNAPSHOT_CLASS`], driver [`DRIVER`], policy Delete).
    pub async fn seed_default_snapshot_class(&self) {
        self.seed(vec![json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": SNAPSHOT_CLASS, "annotations": {
                "snapshot.storage.kubernetes.io/is-default-class": "true"}},
            "driver": DRIVER, "deletionPolicy": "Delete"
        })])
        .await;
    }

    /// `{"ready_after_reads": n, "fail": {"<pvc or snapshot>": "message"}}`.
    pub async fn configure(&self, body: Value) {
        self.control(reqwest::Method::POST, "/_double/config", body)
            .await;
    }

    /// Everything the double holds: `{"objects": {plural: [..]}, "requests": [..], "rv": n}`.
    pub async fn state(&self) -> Value {
        self.control(reqwest::Method::GET, "/_double/state", json!({}))
            .await
    }

    /// The stored objects of `plural` (`volumesnapshots`, `persistentvolumeclaims`, ...), in
    /// `namespace` when given; objects being deleted (finalizers pending) are left out.
    pub async fn objects(&self, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let st = self.state().await;
        st["objects"][plural]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|o| {
                namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns)
                    && o["metadata"]["deletionTimestamp"].is_null()
            })
            .collect()
    }

    /// Names of [`Self::objects`].
    pub async fn names(&self, plural: &str, namespace: Option<&str>) -> Vec<String> {
        self.objects(plural, namespace)
            .await
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
            .collect()
    }
}
