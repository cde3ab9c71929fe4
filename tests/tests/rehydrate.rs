//! Rehydrating the on-prem Nexus (replicate-artifacts-back, array mode with `rehydrate`), run as
//! a Jenkins stage runs it: the real binary as a CLI with a direct event in a file, against two
//! arrays of the spec-validating FlashArray double (Cloud Block Store and the on-prem array) and
//! the local control plane of real components, where a Nexus StatefulSet (made Ready by KWOK)
//! mounts a claim bound to a static PersistentVolume of the on-prem volume. The CLI uses the
//! `rehydrate` user of `infra/k8s/rbac.yaml`, so the API server enforces exactly those rights.
//!
//! Needs moto (Secrets Manager for the array tokens), the control plane, `.venv` for the double
//! and the function binaries (`make build`); prints SKIP otherwise (a failure under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{bin_dir, scratch};
use serde_json::{Value, json};
use snapstage_localenv::flasharray_double::{Double, TOKEN};
use snapstage_localenv::localkube::LocalKube;
use snapstage_localenv::testkit::{self, unique};

const GIB: u64 = 1 << 30;
/// The namespace `infra/k8s/rbac.yaml` grants the rehydrate user (localkube.sh makes it).
const NS: &str = "nexus";
const WAIT: Duration = Duration::from_secs(90);
const REPLICAS: &str = "snapstage.io/rehydrate-replicas";

fn cloud_files() -> Value {
    json!({
        "blobs/default/content/vol-01/chap-01/4f1c.bytes": "sha256:c10d0001",
        "blobs/default/content/vol-01/chap-01/4f1c.properties": "sha256:c10d0002",
        "blobs/default/metadata.properties": "sha256:c10d0003"
    })
}

fn onprem_files() -> Value {
    json!({"blobs/default/content/vol-09/old.bytes": "sha256:01d00001"})
}

/// A Nexus status endpoint on loopback answering 200, counting the requests.
fn health_server() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/service/rest/v1/status/writable",
        l.local_addr().unwrap()
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            h.fetch_add(1, Ordering::SeqCst);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, hits)
}

struct Setup {
    k: LocalKube,
    d: Double,
    moto: String,
    secret: String,
    /// The StatefulSet, its claim, its PV and the on-prem volume all carry this name.
    name: String,
    health: String,
    hits: Arc<AtomicUsize>,
}

async fn setup(test: &str, replicas: u32) -> Option<Setup> {
    let m = testkit::moto(test)?;
    let k = LocalKube::get(test)?;
    let d = Double::start(&["cbs-cloud", "fa-onprem"])?;
    // Unique per test: PVs are cluster-wide and found by the volume they name.
    let name = unique("nx").replace('_', "-");
    d.seed(
        "cbs-cloud",
        json!({
            "volumes": [{"name": "nexus-blobs", "provisioned": 8 * GIB, "files": cloud_files()}],
            "pgroups": [{"name": "pg-nexus", "volumes": ["nexus-blobs"], "targets": ["fa-onprem"]}]
        }),
    )
    .await;
    d.seed(
        "fa-onprem",
        json!({"volumes": [{"name": name, "provisioned": 8 * GIB, "files": onprem_files()}]}),
    )
    .await;
    d.configure("cbs-cloud", json!({"transfer_step": 0.5}))
        .await;
    let sm = aws_sdk_secretsmanager::Client::new(&testkit::sdk_config(&m.cloud).await);
    let secret = unique("fa-token");
    sm.create_secret()
        .name(&secret)
        .secret_string(json!({"apiToken": TOKEN}).to_string())
        .send()
        .await
        .unwrap();

    // What the platform team runs: a static PV of the array volume (Pure CSI names it by its
    // volume handle), the claim bound to it, and Nexus mounting the claim.
    k.apply(
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
             "spec": {"capacity": {"storage": "8Gi"}, "accessModes": ["ReadWriteOnce"],
                      "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                      "csi": {"driver": "pure-csi", "volumeHandle": name},
                      "claimRef": {"namespace": NS, "name": name}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": name, "namespace": NS},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": name,
                      "resources": {"requests": {"storage": "8Gi"}}}},
            {"apiVersion": "apps/v1", "kind": "StatefulSet",
             "metadata": {"name": name, "namespace": NS},
             "spec": {"replicas": replicas, "serviceName": name,
                      "selector": {"matchLabels": {"app": name}},
                      "template": {"metadata": {"labels": {"app": name}},
                                   "spec": {"containers": [{"name": "nexus", "image": "sonatype/nexus3:3.80.0",
                                                            "volumeMounts": [{"name": "data", "mountPath": "/nexus-data"}]}],
                                            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}]}}}}
        ]})
        .to_string(),
    );
    let s = Setup {
        k,
        d,
        moto: m.cloud,
        secret,
        name,
        health: String::new(),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    s.wait_ready(replicas);
    let (health, hits) = health_server();
    Some(Setup { health, hits, ..s })
}

impl Setup {
    fn sts(&self) -> Value {
        self.k
            .get_json("statefulset", Some(NS), &self.name)
            .unwrap()
    }

    fn wait_ready(&self, replicas: u32) {
        self.k
            .eventually(&format!("{} Ready", self.name), WAIT, || {
                let s = self.sts();
                (s["status"]["readyReplicas"] == json!(replicas)).then_some(())
            });
    }

    fn event(&self, execution: &str) -> Value {
        json!({
            "executionId": execution,
            "array": {
                "source": {"endpoint": self.d.url("cbs-cloud"), "apiTokenSecret": self.secret, "protectionGroup": "pg-nexus"},
                "target": {"endpoint": self.d.url("fa-onprem"), "apiTokenSecret": self.secret},
                "sourceArray": "cbs-cloud", "volume": "nexus-blobs", "targetVolume": self.name,
                "overwrite": true,
                "rehydrate": {
                    "cluster": {"kubeconfigFile": self.k.kubeconfig("rehydrate")},
                    "namespace": NS, "workload": format!("statefulset/{}", self.name),
                    "healthUrl": self.health, "timeoutMinutes": 3
                }
            }
        })
    }

    /// Runs the CLI as a Jenkins stage would: `replicate-artifacts-back --event rehydrate.json`.
    /// Returns the exit code and the last result line.
    fn cli(&self, event: &Value, extra: &[&str]) -> (i32, Value) {
        let file = scratch("rehydrate").join(format!("{}.json", unique("event")));
        std::fs::write(&file, event.to_string()).unwrap();
        let mut cmd = Command::new(bin_dir().join("replicate-artifacts-back"));
        cmd.env_remove("AWS_LAMBDA_RUNTIME_API")
            .env("AWS_ENDPOINT_URL", &self.moto)
            .env("SNAPSTAGE_FLASHARRAY_ALLOW_HTTP_FOR_TESTS", "1")
            .arg("--event")
            .arg(&file)
            .args(["--poll-interval", "0.5"])
            .args(extra);
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", snapstage_localenv::seed::MOTO_KEY),
            ("AWS_SECRET_ACCESS_KEY", snapstage_localenv::seed::MOTO_KEY),
            ("AWS_REGION", snapstage_localenv::seed::REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            if std::env::var_os(k).is_none() {
                cmd.env(k, v);
            }
        }
        let out = cmd
            .output()
            .expect("run replicate-artifacts-back (make build)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or_else(|| panic!("no result line; stderr:\n{stderr}"));
        let result: Value = serde_json::from_str(last).unwrap();
        assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
        (out.status.code().unwrap_or(-1), result)
    }

    async fn assert_untouched(&self) {
        assert_eq!(
            self.d.files("fa-onprem", &self.name).await,
            onprem_files(),
            "the volume keeps its content"
        );
        let st = self.d.state("fa-onprem").await;
        assert_eq!(st["volumes"][&self.name]["overwritten"], 0, "{st}");
    }

    /// Nexus runs again with `replicas`, Ready, and carries no rehydration record.
    fn assert_back(&self, replicas: u32) {
        self.wait_ready(replicas);
        let s = self.sts();
        assert_eq!(s["spec"]["replicas"], json!(replicas), "{s}");
        assert!(s["metadata"]["annotations"][REPLICAS].is_null(), "{s}");
    }
}

#[tokio::test]
async fn rehydration_overwrites_the_volume_while_nexus_is_stopped_and_brings_it_back_healthy() {
    let Some(s) = setup("rehydrate full run", 1).await else {
        return;
    };
    let execution = unique("jenkins-nexus-rehydrate");
    let (code, result) = s.cli(&s.event(&execution), &[]);
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["status"], "Succeeded", "{result}");
    let out = &result["outputVariables"];
    assert_eq!(out["RehydratedVolume"], json!(s.name));
    assert_eq!(out["Replicas"], "1");
    assert_eq!(out["Healthy"], "true");
    let snap = out["SnapshotId"].as_str().unwrap();
    assert_eq!(
        out["Snapshot"],
        json!(format!("cbs-cloud:{snap}.nexus-blobs"))
    );

    // The on-prem volume holds what the cloud Nexus published; Nexus is back, Ready and healthy.
    assert_eq!(s.d.files("fa-onprem", &s.name).await, cloud_files());
    s.assert_back(1);
    assert!(
        s.hits.load(Ordering::SeqCst) >= 1,
        "the health URL was checked"
    );
    let onprem = s.d.state("fa-onprem").await;
    assert_eq!(onprem["volumes"][&s.name]["overwritten"], 1, "{onprem}");
    let cloud = s.d.state("cbs-cloud").await;
    assert_eq!(cloud["volumes"]["nexus-blobs"]["overwritten"], 0);
    assert_eq!(onprem["logins"], onprem["logouts"]);
    assert_eq!(cloud["logins"], cloud["logouts"]);

    // The same execution again (a retried Jenkins stage): done already, never a second overwrite
    // of a Nexus that has run since.
    s.d.write_files(
        "fa-onprem",
        &s.name,
        json!({"written-by-nexus-since": "sha256:ab"}),
    )
    .await;
    let (code, result) = s.cli(&s.event(&execution), &[]);
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["outputVariables"]["Healthy"], "true");
    assert_eq!(
        s.d.files("fa-onprem", &s.name).await,
        json!({"written-by-nexus-since": "sha256:ab"})
    );
    assert_eq!(
        s.d.state("fa-onprem").await["volumes"][&s.name]["overwritten"],
        1
    );
    s.d.assert_no_violations().await;
}

#[tokio::test]
async fn a_pod_still_mounting_the_claim_refuses_and_nexus_is_scaled_back() {
    let Some(s) = setup("rehydrate refused by a pod", 1).await else {
        return;
    };
    // A backup job's pod mounting Nexus's claim, outside the StatefulSet.
    let other = format!("{}-backup", s.name);
    s.k.apply(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": other, "namespace": NS},
            "spec": {"containers": [{"name": "backup", "image": "busybox:1.37",
                                      "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": s.name}}]}})
        .to_string(),
    );
    let (code, result) = s.cli(&s.event(&unique("jenkins")), &[]);
    assert_eq!(code, 1, "{result}");
    assert_eq!(result["status"], "Failed", "{result}");
    let msg = result["message"].as_str().unwrap();
    assert!(msg.contains("refused"), "{msg}");
    assert!(msg.contains(&format!("pod {NS}/{other}")), "{msg}");
    assert!(msg.contains("NOT overwritten"), "{msg}");
    assert!(msg.contains("scaled back to 1"), "{msg}");
    s.assert_untouched().await;
    s.assert_back(1);
    s.d.assert_no_violations().await;
}

#[tokio::test]
async fn a_host_connected_to_the_volume_refuses() {
    let Some(s) = setup("rehydrate refused by a host", 1).await else {
        return;
    };
    s.d.connect_hosts("fa-onprem", &s.name, &["esx-07"]).await;
    let (code, result) = s.cli(&s.event(&unique("jenkins")), &[]);
    assert_eq!(code, 1, "{result}");
    let msg = result["message"].as_str().unwrap();
    assert!(msg.contains("host esx-07"), "{msg}");
    assert!(msg.contains("NOT overwritten"), "{msg}");
    s.assert_untouched().await;
    s.assert_back(1);
    s.d.assert_no_violations().await;
}

#[tokio::test]
async fn a_run_killed_after_scale_down_restores_the_recorded_replicas() {
    let Some(s) = setup("rehydrate killed after scale-down", 2).await else {
        return;
    };
    // Replication completes at the first look, so the first step ends right after scale-down.
    s.d.configure("cbs-cloud", json!({"transfer_step": 1.0}))
        .await;
    let execution = unique("jenkins");
    let (code, result) = s.cli(&s.event(&execution), &["--no-follow"]);
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["status"], "InProgress", "{result}");
    let sts = s.sts();
    assert_eq!(sts["spec"]["replicas"], 0, "{sts}");
    assert_eq!(sts["metadata"]["annotations"][REPLICAS], "2", "{sts}");
    s.assert_untouched().await;

    // The process is gone with its continuation token; the stage is re-run with the same
    // execution. It finds the record, not the current 0 replicas.
    let (code, result) = s.cli(&s.event(&execution), &[]);
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["outputVariables"]["Replicas"], "2", "{result}");
    assert_eq!(s.d.files("fa-onprem", &s.name).await, cloud_files());
    s.assert_back(2);
    s.d.assert_no_violations().await;
}
