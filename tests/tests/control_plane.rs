//! snapstage on a real Kubernetes control plane (`scripts/localkube.sh`: kube-apiserver with
//! token users and RBAC, etcd, kube-controller-manager, kube-scheduler, KWOK nodes, the real
//! snapshot-controller, csi-provisioner and csi-snapshotter over snapstage's host-path CSI
//! driver). The real function binaries run through the pipeline driver, each with its own
//! Kubernetes user bound by `infra/k8s/rbac.yaml` exactly as shipped, so the API server (not our
//! checker) decides what each may do. Setup and every check go through the real `kubectl` as the
//! cluster admin, and the bytes of a restored volume are read from the driver's own storage.
//!
//! Needs the control plane (`make test` starts it) and the function binaries (`make build`);
//! prints SKIP otherwise (a failure under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::path::Path;
use std::time::Duration;

use common::bin_dir;
use serde_json::{Value, json};
use snapstage_localenv::invoker::{CliInvoker, Functions};
use snapstage_localenv::jobservice::JobService;
use snapstage_localenv::localkube::LocalKube;
use snapstage_localenv::pipeline::{self, Action, Options, Pipeline, Run, RunStatus};
use snapstage_localenv::testkit::unique;

/// The namespaces `infra/k8s/rbac.yaml` binds its roles in (`scripts/localkube.sh` makes them
/// and applies the RBAC as shipped, as a platform admin would).
const PROD: &str = "prod";
const STAGING: &str = "snapstage-staging";
const WAIT: Duration = Duration::from_secs(90);

/// A production PVC on the default StorageClass (the host-path driver), Bound, holding `data`
/// in `orders.dat`, as the database would have written it.
fn production_pvc(k: &LocalKube, name: &str, app: &str, data: &str) -> std::path::PathBuf {
    k.apply(
        &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": PROD, "labels": {"app": app}},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}})
        .to_string(),
    );
    let dir = k.pvc_volume_dir(PROD, name);
    std::fs::write(dir.join("orders.dat"), data).unwrap();
    dir
}

fn options() -> Options {
    Options {
        max_rounds: 400,
        poll_delay: Duration::from_millis(250),
    }
}

async fn run_one(jobs: &JobService, invoker: &CliInvoker, function: &str, params: &Value) -> Run {
    let p = Pipeline {
        name: "orders".into(),
        actions: vec![Action::new("Step", "Step", function, &params.to_string())],
    };
    let run = pipeline::run(&p, jobs, invoker, &options()).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);
    run
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[tokio::test]
async fn restored_data_reaches_a_ready_staging_database_on_a_real_api_server() {
    let Some(k) = LocalKube::get("restored_data_reaches_a_ready_staging_database") else {
        return;
    };
    let app = unique("orders");
    let pvc = format!("{app}-data");
    let prod_dir = production_pvc(&k, &pvc, &app, "rows as of the snapshot\n");

    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url));
    let csi = |function: &str| {
        json!({"cluster": {"kubeconfigFile": k.kubeconfig(function)}, "namespace": PROD,
               "stagingNamespace": STAGING})
    };

    // Snapshot: a VolumeSnapshot the real snapshot-controller and csi-snapshotter make ready.
    let snapshot = json!({"backend": "csi", "selector": format!("app={app}"), "retain": 1,
                          "csi": csi("snapshot-production")});
    let run = run_one(&jobs, &invoker, "snapshot-production", &snapshot).await;
    let snap = run.variable("Step", "SnapshotId").unwrap().to_string();
    let vs = k.get_json("volumesnapshot", Some(PROD), &snap).unwrap();
    assert_eq!(vs["status"]["readyToUse"], true, "{vs}");
    assert_eq!(
        vs["spec"]["source"]["persistentVolumeClaimName"],
        pvc.as_str()
    );

    // Production goes on writing after the snapshot.
    std::fs::write(
        prod_dir.join("orders.dat"),
        "rows written after the snapshot\n",
    )
    .unwrap();

    // Restore: a new PVC in staging that holds the snapshot's bytes, not production's current ones.
    let restore = json!({"backend": "csi", "snapshotId": snap, "csi": csi("restore-to-staging")});
    let run = run_one(&jobs, &invoker, "restore-to-staging", &restore).await;
    assert_eq!(run.variable("Step", "Namespace"), Some(STAGING));
    let staged = run.variable("Step", "PvcName").unwrap().to_string();
    let staged_dir = k.pvc_volume_dir(STAGING, &staged);
    assert_ne!(staged_dir, prod_dir, "restore makes a new volume");
    assert_eq!(read(&staged_dir, "orders.dat"), "rows as of the snapshot\n");
    assert_eq!(
        read(&prod_dir, "orders.dat"),
        "rows written after the snapshot\n",
        "production's volume is untouched"
    );

    // Deploy: the staging database on the restored PVC, scheduled, Ready, published.
    let deploy = json!({"backend": "csi", "pvcName": staged, "namespace": STAGING,
                        "resetCredentials": false,
                        "cluster": {"kubeconfigFile": k.kubeconfig("deploy-staging-db")}});
    let run = run_one(&jobs, &invoker, "deploy-staging-db", &deploy).await;
    assert_eq!(run.variable("Step", "Mode"), Some("applied"));
    assert_eq!(
        run.variable("Step", "Endpoint"),
        Some(format!("staging-db.{STAGING}.svc.cluster.local:5432").as_str())
    );
    let pods = k.list("pods", Some(STAGING));
    let db = pods
        .iter()
        .find(|p| {
            p["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["persistentVolumeClaim"]["claimName"] == staged.as_str())
        })
        .unwrap_or_else(|| panic!("no pod mounts {staged}: {pods:#?}"));
    assert!(ready(db), "{db:#}");
    assert_eq!(
        db["spec"]["nodeName"], "kwok-node-0",
        "scheduled by kube-scheduler"
    );
    let secret = k
        .get_json("secret", Some(STAGING), "staging-db-credentials")
        .unwrap();
    assert!(secret["data"]["password"].is_string(), "{secret}");

    // A second snapshot with retain 1: the controller deletes the first one and its content.
    let run = run_one(&jobs, &invoker, "snapshot-production", &snapshot).await;
    let second = run.variable("Step", "SnapshotId").unwrap().to_string();
    assert_ne!(second, snap);
    k.eventually("the older snapshot deleted by retention", WAIT, || {
        k.get_json("volumesnapshot", Some(PROD), &snap)
            .is_none()
            .then_some(())
    });
    // The restored PVC is independent of the deleted snapshot.
    assert_eq!(read(&staged_dir, "orders.dat"), "rows as of the snapshot\n");
}
