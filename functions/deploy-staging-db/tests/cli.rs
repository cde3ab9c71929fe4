//! The compiled `deploy-staging-db` as a user runs it: a direct request on stdin, the result as
//! JSON on stdout, the planned apply requests in the log on stderr. Plan mode makes no AWS call;
//! the AWS variables only let the binary build its SDK configuration.

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn run(request: &str) -> (Output, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy-staging-db"))
        .args(["--event", "-"])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env_remove("SNAPSTAGE_DEFAULTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start deploy-staging-db");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON result ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, result)
}

fn sample(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../events/direct")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn valid_request_prints_the_plan_and_its_outputs() {
    let (out, r) = run(&sample("deploy-staging-db.json"));
    assert!(out.status.success(), "{r}");
    assert_eq!(r["status"], "Succeeded", "{r}");
    assert_eq!(r["function"], "deploy-staging-db");
    let o = &r["outputVariables"];
    assert_eq!(o["Mode"], "plan");
    assert_eq!(o["Engine"], "postgresql");
    assert_eq!(o["Port"], "5432");
    assert_eq!(o["Service"], "staging-db");
    assert_eq!(o["SecretName"], "staging-db-credentials");
    assert_eq!(o["ManifestCount"], "6");
    let ns = o["Namespace"].as_str().unwrap();
    assert!(ns.starts_with("snapstage-") && ns.len() <= 63, "{ns}");
    assert_eq!(
        o["Endpoint"],
        format!("staging-db.{ns}.svc.cluster.local:5432")
    );
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("PLAN ONLY — no cluster changed: 6 manifests rendered and validated"),
        "{summary}"
    );

    // The log lists the server-side apply requests, method and path only.
    let log = String::from_utf8_lossy(&out.stderr);
    for path in [
        format!(
            "PATCH /api/v1/namespaces/{ns}?&force=true&fieldManager=snapstage-deploy-staging-db"
        ),
        format!("PATCH /api/v1/persistentvolumes/{ns}-data?"),
        format!("PATCH /apis/apps/v1/namespaces/{ns}/statefulsets/staging-db?"),
    ] {
        assert!(log.contains(&path), "missing {path} in log:\n{log}");
    }
    assert!(
        !log.contains("\"apiVersion\""),
        "bodies are not logged:\n{log}"
    );

    // The same executionId plans the same namespace: a retry finds its own work.
    let (_, again) = run(&sample("deploy-staging-db.json"));
    assert_eq!(again["outputVariables"]["Namespace"], ns);
}

#[test]
fn mongodb_sample_plans_its_port() {
    let (out, r) = run(&sample("deploy-staging-db-mongodb.json"));
    assert!(out.status.success(), "{r}");
    assert_eq!(r["outputVariables"]["Engine"], "mongodb");
    assert_eq!(r["outputVariables"]["Port"], "27017");
    assert!(
        r["outputVariables"]["Endpoint"]
            .as_str()
            .unwrap()
            .ends_with(":27017")
    );
}

#[test]
fn every_sample_request_succeeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events/direct");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("deploy-staging-db") && name.ends_with(".json")) {
            continue;
        }
        seen += 1;
        let (out, r) = run(&std::fs::read_to_string(&path).unwrap());
        assert!(out.status.success(), "{name}: {r}");
        assert_eq!(r["outputVariables"]["Mode"], "plan", "{name}: {r}");
    }
    assert!(
        seen >= 2,
        "expected the deploy-staging-db samples in {}",
        dir.display()
    );
}

#[test]
fn invalid_engine_is_a_configuration_error_naming_the_field() {
    let (out, r) =
        run(&json!({"volumeId": "vol-0123456789abcdef0", "engine": "oracle"}).to_string());
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["status"], "Failed");
    assert_eq!(r["failureType"], "ConfigurationError");
    let msg = r["message"].as_str().unwrap();
    assert!(msg.starts_with("request.engine"), "{msg}");
    assert!(
        msg.contains("postgresql") && msg.contains("mysql") && msg.contains("mongodb"),
        "{msg}"
    );
}

#[test]
fn invalid_values_say_what_to_fix() {
    for (request, field) in [
        (
            json!({"volumeId": "vol-0123456789abcdef0", "storageSize": "lots"}),
            "request.storageSize: expected a Kubernetes quantity",
        ),
        (
            json!({"volumeId": "vol-0123456789abcdef0", "ttlHours": 0}),
            "request.ttlHours: expected a whole number of hours from 1 to 720",
        ),
        (
            json!({"volumeId": "snap-0123456789abcdef0"}),
            "volumeId: expected an EBS volume id",
        ),
        (
            json!({"volumeId": "vol-0123456789abcdef0", "namespace": "kube-system"}),
            "request.namespace: expected a dedicated staging namespace",
        ),
    ] {
        let (out, r) = run(&request.to_string());
        assert_eq!(out.status.code(), Some(1), "{r}");
        assert_eq!(r["failureType"], "ConfigurationError", "{r}");
        let msg = r["message"].as_str().unwrap();
        assert!(msg.starts_with(field), "{msg}");
    }
}

#[test]
fn without_a_cluster_the_summary_says_so() {
    let (out, r) = run(&json!({"volumeId": "vol-0123456789abcdef0"}).to_string());
    assert!(out.status.success(), "{r}");
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.contains("no cluster is configured: set the cluster parameter"),
        "{summary}"
    );
    assert_eq!(r["outputVariables"]["Mode"], "plan");
}

#[test]
fn dry_run_with_a_cluster_plans_without_contacting_it() {
    // The kubeconfig does not exist: a plan never reads it.
    let (out, r) = run(&json!({
        "volumeId": "vol-0123456789abcdef0", "dryRun": true,
        "cluster": {"kubeconfigFile": "/nonexistent/kubeconfig"}
    })
    .to_string());
    assert!(out.status.success(), "{r}");
    assert!(
        r["summary"].as_str().unwrap().contains("(dryRun is true)"),
        "{r}"
    );
}

#[test]
fn an_unreadable_kubeconfig_is_a_configuration_error() {
    let (out, r) = run(&json!({
        "volumeId": "vol-0123456789abcdef0",
        "cluster": {"kubeconfigFile": "/nonexistent/kubeconfig"}
    })
    .to_string());
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["failureType"], "ConfigurationError");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("cluster.kubeconfigFile /nonexistent/kubeconfig: cannot read it"),
        "{r}"
    );
}

#[test]
fn an_unreachable_api_server_is_system_unavailable() {
    let dir = std::env::temp_dir().join(format!("snapstage-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    // Port 9 on loopback (discard): nothing listens there.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"http://127.0.0.1:9\"}\n\
users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    let (out, r) = run(&json!({
        "volumeId": "vol-0123456789abcdef0",
        "resetCredentials": false,
        "cluster": {"kubeconfigFile": kubeconfig.to_string_lossy()}
    })
    .to_string());
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["failureType"], "SystemUnavailable", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("reading Namespace snapstage-") && msg.contains("cannot reach the API server"),
        "{msg}"
    );
}

#[test]
fn unknown_cluster_kinds_list_the_supported_ones() {
    let (out, r) = run(&json!({
        "volumeId": "vol-0123456789abcdef0",
        "cluster": {"gke": {"name": "x"}}
    })
    .to_string());
    assert_eq!(out.status.code(), Some(1), "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.starts_with("request.cluster: unknown variant `gke`")
            && msg.contains("kubeconfigSecret"),
        "{msg}"
    );
}

#[test]
fn teardown_without_a_cluster_only_plans() {
    let (out, r) = run(&sample("deploy-staging-db-teardown.json"));
    assert!(out.status.success(), "{r}");
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("PLAN ONLY — no cluster changed")
            && summary.contains("teardown would delete namespace snapstage-1a2b3c4d5e"),
        "{summary}"
    );
    assert_eq!(r["outputVariables"]["Action"], "teardown");
}

#[test]
fn a_template_sample_plans_the_template_s_objects_on_the_existing_pvc() {
    let (out, r) = run(&sample("deploy-staging-db-template.json"));
    assert!(out.status.success(), "{r}");
    let o = &r["outputVariables"];
    assert_eq!(o["Mode"], "plan");
    assert_eq!(o["Service"], "postgres");
    assert_eq!(o["Namespace"], "snapstage-demo-template");
    assert_eq!(
        o["Endpoint"],
        "postgres.snapstage-demo-template.svc.cluster.local:5432"
    );
    assert_eq!(
        o["ManifestCount"], "4",
        "Namespace, Secret, Service, StatefulSet"
    );
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.contains("from csi restored-db")
            && summary.contains("workload from template.inline"),
        "{summary}"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(
            "PATCH /apis/apps/v1/namespaces/snapstage-demo-template/statefulsets/postgres"
        ),
        "{log}"
    );
    assert!(
        !log.contains("persistentvolumeclaims/"),
        "no second PVC: {log}"
    );
}
