//! Opt-in: deploy-staging-db against a real cluster named by `KUBECONFIG` (kind, minikube, a
//! test EKS): plan → apply into a throwaway namespace → one readiness check → teardown; then the
//! same with the user template in `infra/k8s/templates/postgresql.yaml`.
//! Without `KUBECONFIG` it prints `SKIP: KUBECONFIG not set` and passes.
//!
//! The throwaway database uses backend `px-csi` with the cluster's default StorageClass, so on a
//! plain cluster the PVC gets a new, empty volume (no Portworx needed); nothing outside the
//! namespace `snapstage-it-*` and its objects is touched.

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use serde_json::{Value, json};
use snapstage::cluster::{self, ClusterConfig};
use snapstage::contract::{Deadline, Execution, Outcome, Step};
use snapstage::params::{Layer, merge};
use snapstage::staging::{self, Params};

fn step(request: Value, key: &str, state: Option<Value>) -> Step<Params> {
    let Value::Object(values) = request else {
        panic!("not an object")
    };
    Step {
        params: merge(&[Layer {
            source: "request",
            values,
        }])
        .unwrap(),
        execution: Execution {
            key: key.into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        },
        state,
        deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(120)),
        artifacts: None,
    }
}

#[tokio::test]
async fn plan_apply_check_teardown_on_a_real_cluster() {
    let Some(path) = std::env::var_os("KUBECONFIG")
        .map(|p| {
            p.to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|p| !p.is_empty())
    else {
        // A direct write: seen even when the harness captures output.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIP: KUBECONFIG not set (opt-in test against a real cluster)\n",
        );
        return;
    };
    let config = cluster::kubeconfig::from_file(&path).await.unwrap();
    let client = cluster::client(config, &ClusterConfig::KubeconfigFile(path.clone())).unwrap();

    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let namespace = format!("snapstage-it-{stamp}");
    let key = format!("it/{stamp}");
    let request = json!({
        "backend": "px-csi", "volumeId": "it-volume", "namespace": namespace,
        "storageSize": "1Gi", "ttlHours": 1, "onFailure": "keep",
        // A new, empty volume: the image sets the generated credentials itself.
        "resetCredentials": false
    });

    // Plan: nothing is sent.
    let mut planned = request.clone();
    planned["dryRun"] = json!(true);
    let Outcome::Done { outputs, .. } =
        staging::run(&client, step(planned, &key, None), Timestamp::now())
            .await
            .unwrap()
    else {
        panic!("a plan finishes in one step")
    };
    assert_eq!(outputs["Mode"], "plan");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(&namespace).await.unwrap().is_none());

    // Apply.
    let outcome = staging::run(&client, step(request.clone(), &key, None), Timestamp::now())
        .await
        .unwrap();
    let Outcome::Continue { state, .. } = outcome else {
        panic!("apply waits for readiness: {outcome:?}")
    };
    let ns = namespaces.get(&namespace).await.unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "snapstage"
    );
    let secret: Secret = Api::namespaced(client.clone(), &namespace)
        .get("staging-db-credentials")
        .await
        .unwrap();
    let password = secret.data.unwrap()["password"].clone();
    assert_eq!(password.0.len(), 32);
    let _: StatefulSet = Api::namespaced(client.clone(), &namespace)
        .get("staging-db")
        .await
        .unwrap();

    // A second apply (a retry) keeps the credentials.
    staging::run(&client, step(request.clone(), &key, None), Timestamp::now())
        .await
        .unwrap();
    let again: Secret = Api::namespaced(client.clone(), &namespace)
        .get("staging-db-credentials")
        .await
        .unwrap();
    assert_eq!(again.data.unwrap()["password"], password);

    // One readiness check: still coming up, or ready; never a failure on a healthy cluster.
    match staging::run(&client, step(request, &key, Some(state)), Timestamp::now()).await {
        Ok(o) => eprintln!("readiness check: {o:?}"),
        Err(e) => panic!("readiness check failed: {e}"),
    }

    // Teardown.
    let outcome = staging::run(
        &client,
        step(
            json!({"action": "teardown", "namespace": namespace}),
            &key,
            None,
        ),
        Timestamp::now(),
    )
    .await
    .unwrap();
    let Outcome::Done { outputs, .. } = outcome else {
        panic!("teardown is one step")
    };
    assert_eq!(outputs["Deleted"], "true");
    let gone = namespaces.get_opt(&namespace).await.unwrap();
    assert!(
        gone.is_none_or(|n| n.status.and_then(|s| s.phase).as_deref() == Some("Terminating")),
        "namespace {namespace} is deleted"
    );

    // A user template: the API server accepts every rendered object (server-side apply
    // validates them against the cluster's own schema), labelled and in the namespace.
    let namespace = format!("snapstage-it-{stamp}-tpl");
    let key = format!("it/{stamp}/template");
    let template = include_str!("../../../infra/k8s/templates/postgresql.yaml");
    let request = json!({
        "backend": "px-csi", "volumeId": "it-volume", "namespace": namespace,
        "storageSize": "1Gi", "ttlHours": 1, "onFailure": "keep", "resetCredentials": false,
        "template": {"inline": template}
    });
    let outcome = staging::run(&client, step(request.clone(), &key, None), Timestamp::now())
        .await
        .unwrap();
    let Outcome::Continue { state, summary, .. } = outcome else {
        panic!("apply waits for readiness: {outcome:?}")
    };
    assert!(
        summary.contains("Service postgres, StatefulSet postgres"),
        "{summary}"
    );
    let sts: StatefulSet = Api::namespaced(client.clone(), &namespace)
        .get("postgres")
        .await
        .unwrap();
    assert_eq!(
        sts.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "snapstage"
    );
    match staging::run(&client, step(request, &key, Some(state)), Timestamp::now()).await {
        Ok(o) => eprintln!("template readiness check: {o:?}"),
        Err(e) => panic!("template readiness check failed: {e}"),
    }
    let outcome = staging::run(
        &client,
        step(
            json!({"action": "teardown", "namespace": namespace}),
            &key,
            None,
        ),
        Timestamp::now(),
    )
    .await
    .unwrap();
    let Outcome::Done { outputs, .. } = outcome else {
        panic!("teardown is one step")
    };
    assert_eq!(outputs["Deleted"], "true");
}
