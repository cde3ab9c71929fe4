//! deploy-staging-db against a real Kubernetes API server: plan → apply into a throwaway
//! namespace → followed until the database is ready → teardown; then the same with the user
//! template in `infra/k8s/templates/postgresql.yaml`.
//!
//! The cluster is the one `KUBECONFIG` names when set (kind, minikube, a test EKS: opt-in), else
//! the local control plane of real components `make test` starts (`scripts/localkube.sh`); with
//! neither it prints SKIP (a failure under CI=true).
//!
//! The throwaway database uses backend `px-csi` with the cluster's default StorageClass, so the
//! PVC gets a new, empty volume (no Portworx needed: locally the host-path CSI driver provisions
//! it); nothing outside the namespace `snapstage-it-*` and its objects is touched.

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use serde_json::{Value, json};
use snapstage::interlock::NoVolumeMarks;
use snapstage::job::contract::{Deadline, Execution, Outcome, Step};
use snapstage::job::params::{Layer, merge};
use snapstage::kube::client::{self, ClusterConfig};
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

/// Continues a deploy until it is done (bounded: 5 minutes), its outputs.
async fn follow(
    client: &kube::Client,
    request: Value,
    key: &str,
    mut state: Value,
) -> std::collections::BTreeMap<String, String> {
    let end = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        match staging::run(
            client,
            step(request.clone(), key, Some(state)),
            Timestamp::now(),
            &NoVolumeMarks,
        )
        .await
        {
            Ok(Outcome::Done { outputs, .. }) => return outputs,
            Ok(Outcome::Continue {
                state: next,
                summary,
                ..
            }) => {
                assert!(
                    std::time::Instant::now() < end,
                    "not ready within 5 minutes: {summary}"
                );
                state = next;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("readiness check failed: {e}"),
        }
    }
}

#[tokio::test]
async fn plan_apply_check_teardown_on_a_real_cluster() {
    let from_env = std::env::var_os("KUBECONFIG")
        .map(|p| {
            p.to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|p| !p.is_empty());
    let path = match from_env {
        Some(p) => p,
        None => match snapstage_localenv::localkube::LocalKube::get("real_cluster") {
            Some(k) => k.admin_kubeconfig(),
            None => return,
        },
    };
    let config = client::kubeconfig::from_file(&path).await.unwrap();
    let client = client::client(config, &ClusterConfig::KubeconfigFile(path.clone())).unwrap();

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
        "resetCredentials": false,
        // No array to read its tags from: the test names it (a test volume, not production).
        "allowUnmanagedVolume": "it-volume"
    });

    // Plan: nothing is sent.
    let mut planned = request.clone();
    planned["dryRun"] = json!(true);
    let Outcome::Done { outputs, .. } = staging::run(
        &client,
        step(planned, &key, None),
        Timestamp::now(),
        &NoVolumeMarks,
    )
    .await
    .unwrap() else {
        panic!("a plan finishes in one step")
    };
    assert_eq!(outputs["Mode"], "plan");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(&namespace).await.unwrap().is_none());

    // Apply.
    let outcome = staging::run(
        &client,
        step(request.clone(), &key, None),
        Timestamp::now(),
        &NoVolumeMarks,
    )
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
    staging::run(
        &client,
        step(request.clone(), &key, None),
        Timestamp::now(),
        &NoVolumeMarks,
    )
    .await
    .unwrap();
    let again: Secret = Api::namespaced(client.clone(), &namespace)
        .get("staging-db-credentials")
        .await
        .unwrap();
    assert_eq!(again.data.unwrap()["password"], password);

    // Followed until ready: published with its endpoint; never a failure on a healthy cluster.
    let outputs = follow(&client, request, &key, state).await;
    assert_eq!(outputs["Mode"], "applied");
    assert_eq!(
        outputs["Endpoint"],
        format!("staging-db.{namespace}.svc.cluster.local:5432")
    );

    // Teardown.
    let outcome = staging::run(
        &client,
        step(
            json!({"action": "teardown", "namespace": namespace}),
            &key,
            None,
        ),
        Timestamp::now(),
        &NoVolumeMarks,
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
        "allowUnmanagedVolume": "it-volume", "template": {"inline": template}
    });
    let outcome = staging::run(
        &client,
        step(request.clone(), &key, None),
        Timestamp::now(),
        &NoVolumeMarks,
    )
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
    let outputs = follow(&client, request, &key, state).await;
    assert_eq!(outputs["Service"], "postgres");
    let outcome = staging::run(
        &client,
        step(
            json!({"action": "teardown", "namespace": namespace}),
            &key,
            None,
        ),
        Timestamp::now(),
        &NoVolumeMarks,
    )
    .await
    .unwrap();
    let Outcome::Done { outputs, .. } = outcome else {
        panic!("teardown is one step")
    };
    assert_eq!(outputs["Deleted"], "true");
}
