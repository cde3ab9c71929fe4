//! A Kubernetes CSI pipeline as users configure it: snapshot-production and restore-to-staging,
//! the real binaries, run by the pipeline driver against the job-service double, with
//! `backend: "csi"`, the cluster reached through a kubeconfig file, and the stateful Kubernetes
//! API server double (with its simulated snapshot controller) as the cluster.
//!
//! Every request each function sent is then checked against the RBAC that
//! `infra/k8s/rbac.yaml` grants that function's group: what the code needs and what the
//! shipped roles allow must not drift apart (a missing grant is a 403 at 3 a.m.).
//!
//! Needs `.venv` for the double and the function binaries (`make build`); prints SKIP otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use std::path::Path;

use common::bin_dir;
use serde_json::{Value, json};
use snapstage_localenv::invoker::{CliInvoker, Functions};
use snapstage_localenv::jobservice::JobService;
use snapstage_localenv::kube_double::KubeDouble;
use snapstage_localenv::pipeline::{self, Action, Options, Pipeline, RunStatus};

const GIB: u64 = 1 << 30;
/// The namespaces `infra/k8s/rbac.yaml` binds its example roles in.
const PROD: &str = "prod";
const STAGING: &str = "snapstage-staging";
const PVC: &str = "orders-db-data";

fn kubeconfig(dir: &Path, d: &KubeDouble, user: &str) -> String {
    let path = dir.join(format!("{user}.kubeconfig"));
    let doc = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": d.url()}}],
        "users": [{"name": user, "user": {"token": format!("token-of-{user}")}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": user}}],
    });
    std::fs::write(&path, doc.to_string()).unwrap();
    path.display().to_string()
}

/// One request as RBAC sees it: verb, API group, resource, namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Access {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
}

/// `METHOD /api/v1/namespaces/ns/pvcs/name` → the RBAC attributes of that request.
fn access(line: &str) -> Access {
    let (method, path) = line.split_once(' ').unwrap();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest.to_vec()),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest.to_vec()),
        _ => panic!("not a Kubernetes API path: {line}"),
    };
    let (namespace, rest) = match rest.as_slice() {
        ["namespaces", ns, resource, more @ ..] => (Some(ns.to_string()), {
            let mut v = vec![*resource];
            v.extend_from_slice(more);
            v
        }),
        _ => (None, rest),
    };
    // `namespaces/<name>` alone is the namespace object itself (cluster-scoped).
    let (resource, named, namespace) = match rest.as_slice() {
        [] => ("namespaces".to_string(), true, None),
        [resource] => (resource.to_string(), false, namespace),
        [resource, _name, sub @ ..] => {
            let r = match sub {
                [s] => format!("{resource}/{s}"),
                _ => resource.to_string(),
            };
            (r, true, namespace)
        }
    };
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => panic!("unexpected method in {line}"),
    };
    Access {
        verb: verb.into(),
        group,
        resource,
        namespace,
    }
}

/// The rules `rbac.yaml` grants the subject group `subject`, with where each applies: a
/// ClusterRoleBinding everywhere (`None`), a RoleBinding in its namespace only.
fn grants(subject: &str) -> Vec<(Option<String>, Value)> {
    let text =
        std::fs::read_to_string(snapstage_localenv::workspace_root().join("infra/k8s/rbac.yaml"))
            .unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let role = |kind: &str, name: &str| -> Vec<Value> {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} is bound but not defined"))["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let bound = b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "Group" && s["name"] == subject);
        if !bound {
            continue;
        }
        let scope = b["metadata"]["namespace"].as_str().map(String::from);
        let rules = role(
            b["roleRef"]["kind"].as_str().unwrap(),
            b["roleRef"]["name"].as_str().unwrap(),
        );
        out.extend(rules.into_iter().map(|r| (scope.clone(), r)));
    }
    assert!(!out.is_empty(), "rbac.yaml binds nothing to {subject}");
    out
}

fn allowed(grants: &[(Option<String>, Value)], a: &Access) -> bool {
    let has = |v: &Value, want: &str| {
        v.as_array()
            .into_iter()
            .flatten()
            .any(|x| x == want || x == "*")
    };
    grants.iter().any(|(scope, rule)| {
        // A RoleBinding grants namespaced resources in its namespace, nothing cluster-scoped.
        let in_scope = match scope {
            None => true,
            Some(ns) => a.namespace.as_deref() == Some(ns.as_str()),
        };
        in_scope
            && has(&rule["apiGroups"], &a.group)
            && has(&rule["resources"], &a.resource)
            && has(&rule["verbs"], &a.verb)
    })
}

fn assert_granted(function: &str, subject: &str, requests: &[String]) {
    assert!(!requests.is_empty(), "{function} sent no request");
    let g = grants(subject);
    let denied: Vec<&String> = requests
        .iter()
        .filter(|r| !allowed(&g, &access(r)))
        .collect();
    assert!(
        denied.is_empty(),
        "infra/k8s/rbac.yaml does not grant {subject} what {function} sends: {denied:#?}"
    );
}

async fn requests(d: &KubeDouble) -> Vec<String> {
    d.state().await["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn snapshot_then_restore_on_kubernetes_through_the_pipeline_within_the_shipped_rbac() {
    let Some(d) = KubeDouble::start() else {
        return;
    };
    d.seed_namespace(PROD, json!({"env": "production"})).await;
    d.seed_default_snapshot_class().await;
    d.seed_pvc(PROD, PVC, 20 * GIB, json!({"app": "orders-db"}))
        .await;
    // A snapshot someone else took: retention must never touch it.
    d.seed(vec![json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "orders-db-nightly", "namespace": PROD,
            "labels": {"app.kubernetes.io/managed-by": "velero"}},
        "spec": {"source": {"persistentVolumeClaimName": PVC}},
        "status": {"readyToUse": true}
    })])
    .await;

    let dir = std::env::temp_dir().join(snapstage_localenv::testkit::unique("csi-pipeline"));
    std::fs::create_dir_all(&dir).unwrap();
    let csi = |user: &str| {
        json!({"cluster": {"kubeconfigFile": kubeconfig(&dir, &d, user)}, "namespace": PROD,
            "stagingNamespace": STAGING})
    };
    let snapshot = json!({"backend": "csi", "selector": "app=orders-db", "retain": 2,
        "csi": csi("snapshot-production")});
    let restore = |snap: &str| json!({"backend": "csi", "snapshotId": snap, "csi": csi("restore-to-staging")});
    let jobs = JobService::start().await.unwrap();
    let invoker = CliInvoker::new(Functions::new(bin_dir(), &jobs.url));

    // Three executions of each action; the requests of each are told apart by their order.
    let mut sent = std::collections::BTreeMap::<&str, Vec<String>>::new();
    let mut snapshots = Vec::new();
    for _ in 0..3 {
        let before = requests(&d).await.len();
        let snap_only = Pipeline {
            name: "orders".into(),
            actions: vec![Action::new(
                "Snapshot",
                "Snapshot",
                "snapshot-production",
                &snapshot.to_string(),
            )],
        };
        let run = pipeline::run(&snap_only, &jobs, &invoker, &Options::default())
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);
        let snap = run.variable("Snapshot", "SnapshotId").unwrap().to_string();
        assert!(snap.starts_with("orders-db-data-snapstage-"), "{snap}");
        assert_eq!(run.variable("Snapshot", "Backend"), Some("csi"));
        let all = requests(&d).await;
        sent.entry("snapshot-production")
            .or_default()
            .extend(all[before..].iter().cloned());

        let before = all.len();
        let restore_only = Pipeline {
            name: "orders".into(),
            actions: vec![Action::new(
                "Restore",
                "Restore",
                "restore-to-staging",
                &restore(&snap).to_string(),
            )],
        };
        let run = pipeline::run(&restore_only, &jobs, &invoker, &Options::default())
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{}", run.timeline);
        assert_eq!(run.variable("Restore", "Namespace"), Some(STAGING));
        let pvc = run.variable("Restore", "PvcName").unwrap().to_string();
        assert!(pvc.starts_with("orders-db-data-staging-"), "{pvc}");
        sent.entry("restore-to-staging")
            .or_default()
            .extend(requests(&d).await[before..].iter().cloned());
        snapshots.push(snap);
    }

    // Production: the two newest snapstage snapshots and the foreign one; the PVC untouched.
    let mut left = d.names("volumesnapshots", Some(PROD)).await;
    left.sort();
    let mut want = vec![
        snapshots[1].clone(),
        snapshots[2].clone(),
        "orders-db-nightly".to_string(),
    ];
    want.sort();
    assert_eq!(
        left, want,
        "retain 2 keeps the newest two and never the foreign one"
    );
    assert_eq!(d.names("persistentvolumeclaims", Some(PROD)).await, [PVC]);
    // Staging: one PVC per execution, each from its own run's snapshot, all Bound.
    let staged = d.objects("persistentvolumeclaims", Some(STAGING)).await;
    assert_eq!(staged.len(), 3, "{staged:#?}");
    assert!(
        staged.iter().all(|p| p["status"]["phase"] == "Bound"),
        "{staged:#?}"
    );

    // What each function sent, against what rbac.yaml grants its group.
    assert_granted(
        "snapshot-production",
        "snapstage:snapshot-production",
        &sent["snapshot-production"],
    );
    assert_granted(
        "restore-to-staging",
        "snapstage:restore-to-staging",
        &sent["restore-to-staging"],
    );
    // Retention deleted through the snapshot function's grant, never the restore one.
    assert!(
        sent["snapshot-production"]
            .iter()
            .any(|r| r.starts_with("DELETE "))
    );
    assert!(
        !sent["restore-to-staging"]
            .iter()
            .any(|r| r.starts_with("DELETE "))
    );

    // And the check itself refuses what is not granted.
    let g = grants("snapstage:restore-to-staging");
    assert!(!allowed(
        &g,
        &access(&format!(
            "DELETE /apis/snapshot.storage.k8s.io/v1/namespaces/{PROD}/volumesnapshots/x"
        ))
    ));
    assert!(!allowed(
        &g,
        &access(&format!(
            "POST /api/v1/namespaces/{PROD}/persistentvolumeclaims"
        ))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
