//! The compiled `deploy-staging-db` as a user runs it: a direct request on stdin, the result as
//! JSON on stdout, the planned apply requests in the log on stderr. A request rejected before
//! any call runs without AWS; a plan reads the imported volume's tags (the production
//! interlock), so those tests run against moto's EC2 API (`SNAPSTAGE_MOTO_CLOUD`, set by
//! `make test`; SKIP otherwise), with volumes tagged as restore-to-staging tags its own.

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use serde_json::{Value, json};
use snapstage_localenv::testkit::{self, unique};

/// Runs the binary without an AWS endpoint: only for requests that fail, or plan, before any
/// AWS call.
fn run(request: &str) -> (Output, Value) {
    run_with(request, &[])
}

/// [`run`] with extra environment variables (`AWS_ENDPOINT_URL` for moto, `SNAPSTAGE_DEFAULTS`).
fn run_with(request: &str, env: &[(&str, &str)]) -> (Output, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy-staging-db"))
        .args(["--event", "-"])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("SNAPSTAGE_DEFAULTS")
        .env_remove("SNAPSTAGE_PRODUCTION_MARKERS")
        .envs(env.iter().copied())
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

/// moto's EC2, where the tests make the volumes a deploy imports.
struct Ec2 {
    url: String,
    client: aws_sdk_ec2::Client,
}

impl Ec2 {
    async fn connect(test: &str) -> Option<Self> {
        let url = testkit::moto(test)?.cloud;
        let client = aws_sdk_ec2::Client::new(&testkit::sdk_config(&url).await);
        Some(Self { url, client })
    }

    /// A new volume with these tags; its id.
    async fn volume(&self, tags: &[(&str, &str)]) -> String {
        let mut spec = TagSpecification::builder().resource_type(ResourceType::Volume);
        for (k, v) in tags {
            spec = spec.tags(Tag::builder().key(*k).value(*v).build());
        }
        let mut create = self
            .client
            .create_volume()
            .availability_zone("us-east-1a")
            .size(1);
        if !tags.is_empty() {
            create = create.tag_specifications(spec.build());
        }
        create
            .send()
            .await
            .unwrap()
            .volume_id()
            .unwrap()
            .to_string()
    }

    /// A staging volume as restore-to-staging tags the one it makes for run `execution`.
    async fn staging_volume(&self, execution: &str) -> String {
        self.volume(&staging_tags(execution)).await
    }

    /// Runs the binary against moto.
    fn run(&self, request: &Value) -> (Output, Value) {
        self.run_env(request, &[])
    }

    fn run_env(&self, request: &Value, env: &[(&str, &str)]) -> (Output, Value) {
        let mut all = vec![("AWS_ENDPOINT_URL", self.url.as_str())];
        all.extend_from_slice(env);
        run_with(&request.to_string(), &all)
    }
}

/// The tags restore-to-staging puts on the staging volume of run `execution`
/// (`shared/src/storage/ebs/client.rs`).
fn staging_tags(execution: &str) -> Vec<(&str, &str)> {
    vec![
        ("snapstage:managed-by", "snapstage"),
        ("snapstage:execution", execution),
        ("snapstage:role", "staging"),
        ("snapstage:source", "snap-0123456789abcdef0"),
    ]
}

/// A sample request with its volumeId replaced by `volume`.
fn sample_on(name: &str, volume: &str) -> Value {
    let mut v: Value = serde_json::from_str(&sample(name)).unwrap();
    v["volumeId"] = json!(volume);
    v
}

fn refused(out: &Output, r: &Value) -> String {
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["status"], "Failed", "{r}");
    assert_eq!(r["failureType"], "ConfigurationError", "{r}");
    r["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn valid_request_prints_the_plan_and_its_outputs() {
    let Some(ec2) = Ec2::connect("deploy-staging-db plan").await else {
        return;
    };
    // The sample's executionId is the run restore-to-staging tagged the volume with (a direct
    // request, e.g. a Jenkins stage, passes the same executionId to every step).
    let request: Value = serde_json::from_str(&sample("deploy-staging-db.json")).unwrap();
    let volume = ec2
        .staging_volume(request["executionId"].as_str().unwrap())
        .await;
    let (out, r) = ec2.run(&sample_on("deploy-staging-db.json", &volume));
    assert!(out.status.success(), "{r}");
    assert_eq!(r["status"], "Succeeded", "{r}");
    assert_eq!(r["function"], "deploy-staging-db");
    let o = &r["outputVariables"];
    assert_eq!(o["Mode"], "plan");
    assert_eq!(o["Engine"], "postgresql");
    assert_eq!(o["Port"], "5432");
    assert_eq!(o["Service"], "staging-db");
    assert_eq!(o["SecretName"], "staging-db-credentials");
    // Namespace, Secret, PV, PVC, Service, StatefulSet and the three NetworkPolicies:
    // the namespace closed until masked, the database's egress, the access opened after.
    assert_eq!(o["ManifestCount"], "9");
    let ns = o["Namespace"].as_str().unwrap();
    assert!(ns.starts_with("snapstage-") && ns.len() <= 63, "{ns}");
    assert_eq!(
        o["Endpoint"],
        format!("staging-db.{ns}.svc.cluster.local:5432")
    );
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("PLAN ONLY — no cluster changed: 9 manifests rendered and validated"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!(
            "interlock: EBS volume {volume} is this run's staging volume"
        )),
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
        format!(
            "PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-isolation?"
        ),
        format!(
            "PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-access?"
        ),
    ] {
        assert!(log.contains(&path), "missing {path} in log:\n{log}");
    }
    assert!(
        !log.contains("\"apiVersion\""),
        "bodies are not logged:\n{log}"
    );

    // The same executionId plans the same namespace: a retry finds its own work.
    let (_, again) = ec2.run(&sample_on("deploy-staging-db.json", &volume));
    assert_eq!(again["outputVariables"]["Namespace"], ns);
}

#[tokio::test]
async fn mongodb_sample_plans_its_port() {
    let Some(ec2) = Ec2::connect("deploy-staging-db mongodb plan").await else {
        return;
    };
    let request: Value = serde_json::from_str(&sample("deploy-staging-db-mongodb.json")).unwrap();
    let volume = ec2
        .staging_volume(request["executionId"].as_str().unwrap())
        .await;
    let (out, r) = ec2.run(&sample_on("deploy-staging-db-mongodb.json", &volume));
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

/// Every deploy sample plans. A sample that imports an EBS volume gets one in moto, tagged as
/// restore-to-staging tags the one it makes for the sample's executionId (its own volumeId is a
/// placeholder), unless the sample names its volume in allowUnmanagedVolume (then it gets an
/// untagged volume of that id's role).
#[tokio::test]
async fn every_sample_request_succeeds() {
    let Some(ec2) = Ec2::connect("deploy-staging-db samples").await else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events/direct");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("deploy-staging-db") && name.ends_with(".json")) {
            continue;
        }
        seen += 1;
        let mut request: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let ebs = request.get("backend").is_none_or(|b| b == "ebs");
        if ebs && request.get("volumeId").is_some() {
            let volume = match (
                request.get("allowUnmanagedVolume"),
                request["executionId"].as_str(),
            ) {
                (Some(_), _) => ec2.volume(&[("team", "qa")]).await,
                (None, Some(run)) => ec2.staging_volume(run).await,
                (None, None) => {
                    panic!("{name}: a sample that imports a volume needs an executionId")
                }
            };
            if request.get("allowUnmanagedVolume").is_some() {
                request["allowUnmanagedVolume"] = json!(volume);
            }
            request["volumeId"] = json!(volume);
        }
        let (out, r) = ec2.run(&request);
        assert!(out.status.success(), "{name}: {r}");
        assert_eq!(r["outputVariables"]["Mode"], "plan", "{name}: {r}");
    }
    assert!(
        seen >= 2,
        "expected the deploy-staging-db samples in {}",
        dir.display()
    );
}

#[tokio::test]
async fn a_production_volume_is_refused_in_plan_mode_even_when_named() {
    let Some(ec2) = Ec2::connect("deploy-staging-db production interlock").await else {
        return;
    };
    let run = unique("interlock-prod");
    // Production's tag wins over snapstage's own staging tags of this very run.
    let mut tags = staging_tags(&run);
    tags.push(("Environment", "Production"));
    let prod = ec2.volume(&tags).await;
    for extra in [
        json!({}),
        json!({"dryRun": true}),
        json!({"allowUnmanagedVolume": prod}),
        json!({"dryRun": true, "allowUnmanagedVolume": prod,
               "cluster": {"kubeconfigFile": "/nonexistent/kubeconfig"}}),
    ] {
        let mut request = json!({"executionId": run, "volumeId": prod});
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        let (out, r) = ec2.run(&request);
        let msg = refused(&out, &r);
        assert!(
            msg.starts_with(&format!(
                "refused: EBS volume {prod} (volumeId) is marked production (tag Environment=Production)"
            )) && msg.contains("allowUnmanagedVolume cannot allow it"),
            "{extra}: {msg}"
        );
        assert!(r.get("outputVariables").is_none(), "{r}");
    }

    // An organisation's own marker (SNAPSTAGE_PRODUCTION_MARKERS) refuses the same way.
    let critical = ec2
        .volume(&[("tier", "critical"), ("snapstage:role", "staging")])
        .await;
    let request = json!({"executionId": run, "volumeId": critical,
                         "allowUnmanagedVolume": critical});
    let (out, r) = ec2.run(&request);
    assert!(
        out.status.success(),
        "without the marker it is only unmanaged: {r}"
    );
    let (out, r) = ec2.run_env(
        &request,
        &[("SNAPSTAGE_PRODUCTION_MARKERS", "tier=critical")],
    );
    let msg = refused(&out, &r);
    assert!(
        msg.contains("is marked production (tag tier=critical)"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_untagged_volume_is_imported_only_when_the_override_names_it() {
    let Some(ec2) = Ec2::connect("deploy-staging-db unmanaged volume").await else {
        return;
    };
    let run = unique("interlock-bare");
    let bare = ec2.volume(&[]).await;
    let other = ec2.volume(&[("Name", "orders-db-copy")]).await;
    for volume in [&bare, &other] {
        for dry in [false, true] {
            let (out, r) = ec2.run(&json!({"executionId": run, "volumeId": volume, "dryRun": dry}));
            let msg = refused(&out, &r);
            assert!(
                msg.starts_with(&format!("refused: EBS volume {volume} (volumeId) does not carry snapstage's staging mark of this run ({run}"))
                    && msg.contains(&format!("set allowUnmanagedVolume: \"{volume}\"")),
                "{msg}"
            );
        }
    }
    // The override names exactly the volume it allows.
    let (out, r) =
        ec2.run(&json!({"executionId": run, "volumeId": bare, "allowUnmanagedVolume": other}));
    let msg = refused(&out, &r);
    assert!(
        msg.starts_with(&format!(
            "allowUnmanagedVolume: names \"{other}\", but the volume to import is \"{bare}\""
        )),
        "{msg}"
    );
    let (out, r) =
        ec2.run(&json!({"executionId": run, "volumeId": bare, "allowUnmanagedVolume": bare}));
    assert!(out.status.success(), "{r}");
    assert_eq!(r["outputVariables"]["Mode"], "plan");
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("interlock: EBS volume {bare} has no staging mark of this run; imported because allowUnmanagedVolume names it")),
        "{summary}"
    );
}

#[tokio::test]
async fn only_this_runs_staging_volume_is_accepted() {
    let Some(ec2) = Ec2::connect("deploy-staging-db this run").await else {
        return;
    };
    let run = unique("interlock-run");
    let earlier = unique("interlock-earlier");
    let ours = ec2.staging_volume(&run).await;
    let theirs = ec2.staging_volume(&earlier).await;
    let (out, r) = ec2.run(&json!({"executionId": run, "volumeId": ours}));
    assert!(out.status.success(), "{r}");
    let (out, r) = ec2.run(&json!({"executionId": run, "volumeId": theirs, "dryRun": true}));
    let msg = refused(&out, &r);
    assert!(
        msg.contains(&format!(
            "is a snapstage staging volume of another run ({earlier}), not of this one ({run})"
        )),
        "{msg}"
    );
    // A volume that carries the run but not the staging role (a snapshot's source, say) is not
    // a staging volume.
    let not_staging = ec2
        .volume(&[
            ("snapstage:managed-by", "snapstage"),
            ("snapstage:execution", &run),
            ("snapstage:role", "snapshot"),
        ])
        .await;
    let (out, r) = ec2.run(&json!({"executionId": run, "volumeId": not_staging}));
    assert!(
        refused(&out, &r).contains("does not carry snapstage's staging mark"),
        "{r}"
    );
}

#[tokio::test]
async fn a_volume_that_does_not_exist_is_a_configuration_error() {
    let Some(ec2) = Ec2::connect("deploy-staging-db missing volume").await else {
        return;
    };
    let (out, r) = ec2.run(&json!({"volumeId": "vol-0123456789abcdef0",
                                   "allowUnmanagedVolume": "vol-0123456789abcdef0"}));
    let msg = refused(&out, &r);
    assert!(
        msg.contains("volumeId \"vol-0123456789abcdef0\" does not exist"),
        "{msg}"
    );
}

#[tokio::test]
async fn with_require_cluster_no_cluster_fails_unless_a_plan_is_asked_for() {
    let Some(ec2) = Ec2::connect("deploy-staging-db requireCluster").await else {
        return;
    };
    let run = unique("interlock-require");
    let volume = ec2.staging_volume(&run).await;
    // As the stack configures the function: requireCluster in SNAPSTAGE_DEFAULTS.
    let defaults = [("SNAPSTAGE_DEFAULTS", r#"{"requireCluster": true}"#)];
    let (out, r) = ec2.run_env(&json!({"executionId": run, "volumeId": volume}), &defaults);
    let msg = refused(&out, &r);
    assert!(
        msg.starts_with("no cluster is configured, and requireCluster is true")
            && msg.contains("EksClusterName")
            && msg.contains("dryRun: true"),
        "{msg}"
    );
    // Teardown and sweep without a cluster would only plan: refused the same way.
    for request in [
        json!({"action": "teardown", "namespace": "snapstage-1a2b3c4d5e"}),
        json!({"action": "sweep"}),
    ] {
        let (out, r) = run_with(&request.to_string(), &defaults);
        assert!(
            refused(&out, &r).starts_with("no cluster is configured, and requireCluster is true"),
            "{request}: {r}"
        );
    }
    let (out, r) = ec2.run_env(
        &json!({"executionId": run, "volumeId": volume, "dryRun": true}),
        &defaults,
    );
    assert!(out.status.success(), "{r}");
    assert_eq!(r["outputVariables"]["Mode"], "plan", "{r}");
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
            "request.ttlHours: expected a whole number of hours from 1 to 2160",
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

#[tokio::test]
async fn without_a_cluster_the_summary_says_so() {
    let Some(ec2) = Ec2::connect("deploy-staging-db no cluster").await else {
        return;
    };
    let run = unique("no-cluster");
    let volume = ec2.staging_volume(&run).await;
    let (out, r) = ec2.run(&json!({"executionId": run, "volumeId": volume}));
    assert!(out.status.success(), "{r}");
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.contains("no cluster is configured: set the cluster parameter"),
        "{summary}"
    );
    assert_eq!(r["outputVariables"]["Mode"], "plan");
}

#[tokio::test]
async fn dry_run_with_a_cluster_plans_without_contacting_it() {
    let Some(ec2) = Ec2::connect("deploy-staging-db dry run").await else {
        return;
    };
    let run = unique("dry-run");
    let volume = ec2.staging_volume(&run).await;
    // The kubeconfig does not exist: a plan of an EBS volume never reads it.
    let (out, r) = ec2.run(&json!({
        "executionId": run, "volumeId": volume, "dryRun": true,
        "cluster": {"kubeconfigFile": "/nonexistent/kubeconfig"}
    }));
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

#[tokio::test]
async fn an_unreachable_api_server_is_system_unavailable() {
    let Some(ec2) = Ec2::connect("deploy-staging-db unreachable cluster").await else {
        return;
    };
    let run = unique("unreachable");
    // The interlock passes (this run's staging volume); then the cluster is out of reach.
    let volume = ec2.staging_volume(&run).await;
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
    let (out, r) = ec2.run(&json!({
        "executionId": run, "volumeId": volume,
        "resetCredentials": false,
        "cluster": {"kubeconfigFile": kubeconfig.to_string_lossy()}
    }));
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
        o["ManifestCount"], "6",
        "Namespace, Secret, Service, StatefulSet, the isolation and access NetworkPolicies"
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
    // The PVC is in the cluster, which a plan without one cannot read: the plan says so.
    assert!(
        summary.contains("interlock: PVC snapstage-demo-template/restored-db is in the cluster, which plan mode without a cluster cannot read; applying checks it first"),
        "{summary}"
    );
}
