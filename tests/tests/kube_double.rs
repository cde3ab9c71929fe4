//! The Kubernetes API server double, proven with an independent client: the official Python
//! client (PyPI `kubernetes`) drives it through typed core/v1 calls and CustomObjectsApi and
//! checks what it sees (`tests/kube_double_client.py`): objects that deserialize into the typed
//! models, ApiException with the API server's status and `Status.reason`, label and field
//! selectors, patches, server-side apply conflicts, delete preconditions, and the simulated
//! snapshot controller (bound content, readyToUse, error, restore into a Bound PVC).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use serde_json::json;
use snapstage_localenv::kube_double::KubeDouble;

#[tokio::test]
async fn the_official_python_client_agrees() {
    let Some(double) = KubeDouble::start() else {
        return;
    };
    let python = snapstage_localenv::workspace_root().join(".venv/bin/python");
    let probe = std::process::Command::new(&python)
        .args(["-c", "import kubernetes"])
        .output()
        .unwrap();
    if !probe.status.success() {
        snapstage_localenv::testkit::skip(
            "the_official_python_client_agrees: the `kubernetes` package is not in .venv (run `make setup`)",
        );
        return;
    }
    double.seed_namespace("prod", json!({})).await;
    double.seed_default_snapshot_class().await;
    double
        .seed_pvc("prod", "orders-db", 8 << 30, json!({"app": "orders"}))
        .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kube_double_client.py");
    let url = double.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(url)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("kubernetes client: all checks passed"),
        "the Python client disagreed with the double:\n{stdout}\n{stderr}"
    );
    // What the client did is what the server holds.
    let ns = double.objects("namespaces", None).await;
    let applied = ns
        .iter()
        .find(|n| n["metadata"]["name"] == "applied")
        .expect("the applied namespace");
    assert_eq!(
        applied["metadata"]["labels"]["a"], "2",
        "the forced apply won"
    );
    let claims = double.names("persistentvolumeclaims", Some("shop")).await;
    assert_eq!(claims, vec!["data-a", "data-b"], "logs was deleted");
}
