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

    // Restore, then deploy, as two actions of one pipeline execution (deploy-staging-db's
    // interlock takes only the staging PVC restore-to-staging made in this execution). Restore: a
    // new PVC in staging that holds the snapshot's bytes, not production's current ones.
    let restore = json!({"backend": "csi", "snapshotId": snap, "csi": csi("restore-to-staging")});
    // Deploy: the staging database on the restored PVC, scheduled, Ready, published.
    let deploy = json!({"backend": "csi", "pvcName": "#{Restore.PvcName}", "namespace": STAGING,
                        "resetCredentials": false,
                        "cluster": {"kubeconfigFile": k.kubeconfig("deploy-staging-db")}});
    let p = Pipeline {
        name: "orders".into(),
        actions: vec![
            Action::new(
                "Restore",
                "Restore",
                "restore-to-staging",
                &restore.to_string(),
            ),
            Action::new(
                "Deploy",
                "StagingDb",
                "deploy-staging-db",
                &deploy.to_string(),
            ),
        ],
    };
    let run = pipeline::run(&p, &jobs, &invoker, &options())
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);
    assert_eq!(run.variable("Restore", "Namespace"), Some(STAGING));
    let staged = run.variable("Restore", "PvcName").unwrap().to_string();
    let staged_dir = k.pvc_volume_dir(STAGING, &staged);
    assert_ne!(staged_dir, prod_dir, "restore makes a new volume");
    assert_eq!(read(&staged_dir, "orders.dat"), "rows as of the snapshot\n");
    assert_eq!(
        read(&prod_dir, "orders.dat"),
        "rows written after the snapshot\n",
        "production's volume is untouched"
    );
    assert_eq!(run.variable("StagingDb", "Mode"), Some("applied"));
    assert_eq!(
        run.variable("StagingDb", "Endpoint"),
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

/// Masking and the migration check run as real Jobs (the Job controller makes the pods, KWOK
/// completes them) before anything is published, through the deploy function's own RBAC user.
#[tokio::test]
async fn masking_and_migration_run_as_real_jobs_before_the_deploy_succeeds() {
    let Some(k) = LocalKube::get("masking_and_migration_jobs_complete") else {
        return;
    };
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url));
    // A new, empty px-csi volume the host-path driver provisions: no array holds tags to read,
    // so the interlock imports it only because allowUnmanagedVolume names it.
    let deploy = json!({"backend": "px-csi", "volumeId": "orders-data", "storageSize": "1Gi",
        "allowUnmanagedVolume": "orders-data",
        "storageClassName": "snapstage-hostpath", "resetCredentials": false, "ttlHours": 1,
        "masking": {"image": "postgres:17", "command": ["psql", "-f", "/scripts/mask.sql"]},
        "migration": {"image": "flyway/flyway:11", "command": ["flyway", "validate"]},
        "cluster": {"kubeconfigFile": k.kubeconfig("deploy-staging-db")}});
    let run = run_one(&jobs, &invoker, "deploy-staging-db", &deploy).await;
    assert_eq!(run.variable("Step", "MigrationResult"), Some("succeeded"));
    let ns = run.variable("Step", "Namespace").unwrap().to_string();
    // Isolation until masked, as the API server stored it: closed from the first apply, opened
    // only after the Job controller recorded the masking Job complete.
    assert_eq!(run.variable("Step", "NetworkAccess"), Some("networkpolicy"));
    let mut policies: Vec<String> = k
        .list("networkpolicies", Some(&ns))
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    policies.sort();
    assert_eq!(
        policies,
        [
            "staging-db-access",
            "staging-db-egress",
            "staging-db-isolation"
        ]
    );
    let isolation = k
        .get_json("networkpolicy", Some(&ns), "staging-db-isolation")
        .unwrap();
    assert_eq!(isolation["spec"]["podSelector"], json!({}), "{isolation}");
    let namespace = k.get_json("namespace", None, &ns).unwrap();
    let access = k
        .get_json("networkpolicy", Some(&ns), "staging-db-access")
        .unwrap();
    let masking = k.get_json("job", Some(&ns), "staging-db-masking").unwrap();
    let time = |v: &Value| -> k8s_openapi::jiff::Timestamp { v.as_str().unwrap().parse().unwrap() };
    assert!(
        time(&isolation["metadata"]["creationTimestamp"])
            <= time(&masking["metadata"]["creationTimestamp"])
            && time(&namespace["metadata"]["creationTimestamp"])
                <= time(&isolation["metadata"]["creationTimestamp"]),
        "closed before anything ran: {isolation} {masking}"
    );
    assert!(
        time(&access["metadata"]["creationTimestamp"])
            >= time(&masking["status"]["completionTime"]),
        "opened only after masking completed: {access} {masking}"
    );
    assert_eq!(
        access["spec"]["ingress"][0]["ports"][0]["port"], 5432,
        "{access}"
    );
    for job in ["staging-db-masking", "staging-db-migration"] {
        let j = k.get_json("job", Some(&ns), job).unwrap();
        assert_eq!(j["status"]["succeeded"], 1, "{j}");
        // The Job controller's own pod, completed on the node the scheduler chose.
        let pods = k.list("pods", Some(&ns));
        assert!(
            pods.iter().any(
                |p| p["metadata"]["labels"]["batch.kubernetes.io/job-name"] == job
                    && p["status"]["phase"] == "Succeeded"
            ),
            "{job}: {pods:#?}"
        );
    }
}

/// A template workload: `pod_security` is its pod-level securityContext, `cpu` its request.
fn template(pod_security: &str, cpu: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: "${{NAMESPACE}}"}}
spec: {{selector: {{app: db}}, ports: [{{port: 5432}}]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: "${{NAMESPACE}}"}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      securityContext: {pod_security}
      containers:
      - name: db
        image: "${{IMAGE}}"
        resources: {{requests: {{cpu: "{cpu}"}}}}
        securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
        volumeMounts: [{{name: data, mountPath: "${{MOUNT_PATH}}"}}]
      volumes:
      - name: data
        persistentVolumeClaim: {{claimName: "${{PVC_NAME}}"}}
"#
    )
}

/// Deploys `template` with a one-minute readiness limit; the failure reason.
async fn deploy_failure(k: &LocalKube, template: &str) -> String {
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url));
    // A file (UserParameters holds at most 1000 characters).
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("template")));
    std::fs::write(&file, template).unwrap();
    // A new, empty px-csi volume (no array to read tags from): named by allowUnmanagedVolume.
    let deploy = json!({"backend": "px-csi", "volumeId": "orders-data", "storageSize": "1Gi",
        "allowUnmanagedVolume": "orders-data",
        "storageClassName": "snapstage-hostpath", "resetCredentials": false, "ttlHours": 1,
        "readyTimeoutMinutes": 1, "template": {"file": file},
        "cluster": {"kubeconfigFile": k.kubeconfig("deploy-staging-db")}});
    let p = Pipeline {
        name: "orders".into(),
        actions: vec![Action::new(
            "Step",
            "Step",
            "deploy-staging-db",
            &deploy.to_string(),
        )],
    };
    let run = pipeline::run(&p, &jobs, &invoker, &options())
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    match run.status {
        RunStatus::Failed { reason, .. } => reason,
        RunStatus::Succeeded => panic!("this database cannot be ready: {}", run.timeline),
    }
}

/// A pod the scheduler cannot place: the deploy fails at its limit in the scheduler's words.
#[tokio::test]
async fn an_unschedulable_database_reports_the_scheduler_s_reason() {
    let Some(k) = LocalKube::get("an_unschedulable_database_reports_the_scheduler_s_reason") else {
        return;
    };
    let restricted = "{runAsNonRoot: true, runAsUser: 999, seccompProfile: {type: RuntimeDefault}}";
    let reason = deploy_failure(&k, &template(restricted, "64")).await;
    assert!(
        reason.contains("Insufficient cpu"),
        "the scheduler's reason: {reason}"
    );
}

/// A pod PodSecurity admission refuses never exists: the deploy says so (the StatefulSet's
/// FailedCreate event), not only "no pods yet".
#[tokio::test]
async fn a_pod_the_restricted_standard_refuses_is_reported_with_admission_s_reason() {
    let Some(k) = LocalKube::get("a_pod_the_restricted_standard_refuses") else {
        return;
    };
    let reason = deploy_failure(&k, &template("{}", "100m")).await;
    assert!(
        reason.contains("FailedCreate") && reason.contains("violates PodSecurity"),
        "admission's reason: {reason}"
    );
}
