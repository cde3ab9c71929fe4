//! Jenkins and Nexus (engine `jenkins`, `nexus`) on the local Kubernetes control plane
//! (`scripts/localkube.sh`: real kube-apiserver with RBAC and Pod Security admission, controllers,
//! scheduler, KWOK nodes that make pods Running and Ready): deploy-staging-db's step runs as its
//! own RBAC user (`infra/k8s/rbac.yaml` as shipped), every check reads back through `kubectl` as
//! the admin. Prints SKIP without the control plane (a failure under CI=true).

use std::time::Duration;

use serde_json::{Value, json};
use snapstage::interlock::{KnownVolumes, VolumeMarks};
use snapstage::job::contract::{Deadline, Execution, Outcome, Step};
use snapstage::job::params::{Layer, merge};
use snapstage::kube::names;
use snapstage::staging::{self, Params};
use snapstage_localenv::localkube::LocalKube;
use snapstage_localenv::testkit::unique;

fn app_step(request: &Value, key: &str, state: Option<Value>) -> Step<Params> {
    let Value::Object(values) = request.clone() else {
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
        deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(60)),
        artifacts: None,
    }
}

/// Runs the step, continuation after continuation, until it finishes (at most ~3 minutes).
async fn run_to_end(
    request: &Value,
    key: &str,
    volumes: &dyn VolumeMarks,
) -> std::collections::BTreeMap<String, String> {
    let sdk = aws_config::SdkConfig::builder().build();
    let mut state = None;
    for _ in 0..360 {
        match staging::step(&sdk, volumes, app_step(request, key, state.take()))
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"))
        {
            Outcome::Done { outputs, .. } => return outputs,
            Outcome::Continue { state: s, .. } => state = Some(s),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{key}: not done in 3 minutes")
}

fn cluster(k: &LocalKube) -> Value {
    json!({"kubeconfigFile": k.kubeconfig("deploy-staging-db")})
}

/// Deploys `engine` from `source` and checks what the API server holds; the namespace.
async fn deploy_app(
    k: &LocalKube,
    engine: &str,
    source: Value,
    volumes: &dyn VolumeMarks,
) -> String {
    let key = format!("direct/{}", unique(engine));
    let ns = names::derived_namespace(&key);
    let mut request = source;
    request["engine"] = json!(engine);
    request["storageSize"] = json!("1Gi");
    request["cluster"] = cluster(k);
    let outputs = run_to_end(&request, &key, volumes).await;
    let (svc, port, path) = match engine {
        "jenkins" => ("jenkins", 8080, "/login"),
        _ => ("nexus", 8081, "/service/rest/v1/status/writable"),
    };
    assert_eq!(outputs["Mode"], "applied", "{outputs:?}");
    assert_eq!(outputs["Engine"], engine);
    assert_eq!(outputs["Port"], port.to_string());
    assert_eq!(
        outputs["Url"],
        format!("http://{svc}.{ns}.svc.cluster.local:{port}/")
    );
    assert!(!outputs.contains_key("SecretName"), "{outputs:?}");

    // The StatefulSet as the API server stored it: probes on the real health endpoints.
    let sts = k.get_json("statefulset", Some(&ns), svc).unwrap();
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], path, "{c}");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http", "{c}");
    assert_eq!(c["ports"][0]["containerPort"], port, "{c}");
    assert!(c["startupProbe"]["httpGet"]["path"].is_string(), "{c}");
    // Admitted under the namespace's restricted Pod Security, scheduled, Ready.
    let namespace = k.get_json("namespace", None, &ns).unwrap();
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let pod = k.get_json("pod", Some(&ns), &format!("{svc}-0")).unwrap();
    assert!(
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{pod:#}"
    );
    assert_eq!(pod["spec"]["nodeName"], "kwok-node-0");
    let claim = &pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"];
    let pvc = k
        .get_json("pvc", Some(&ns), claim.as_str().unwrap())
        .unwrap();
    assert_eq!(pvc["status"]["phase"], "Bound", "{pvc}");
    // No database credentials for an application.
    assert!(
        k.get_json("secret", Some(&ns), "staging-db-credentials")
            .is_none()
    );
    // The copy reaches nothing but DNS: the egress policy selects the application's pod.
    let egress = k
        .get_json("networkpolicy", Some(&ns), "staging-db-egress")
        .unwrap();
    for (label, value) in egress["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&pod["metadata"]["labels"][label], value, "{label}");
    }
    ns
}

fn expires(k: &LocalKube, ns: &str) -> k8s_openapi::jiff::Timestamp {
    let namespace = k.get_json("namespace", None, ns).unwrap();
    namespace["metadata"]["annotations"]["snapstage.io/expires-at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn days_left(k: &LocalKube, ns: &str) -> i64 {
    let left = expires(k, ns).as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
    (left + 3600) / 86_400
}

#[tokio::test]
async fn jenkins_and_nexus_come_up_from_a_pure_csi_static_pv() {
    let Some(k) = LocalKube::get("jenkins_and_nexus_from_pure_csi") else {
        return;
    };
    // A FlashArray volume (PSO's pure-csi driver): a static PV the PV controller binds; the
    // array holds no tags here, so allowUnmanagedVolume names it.
    for engine in ["jenkins", "nexus"] {
        let volume = unique(&format!("{engine}-home"));
        let source = json!({"backend": "pure-csi", "volumeId": volume,
                            "allowUnmanagedVolume": volume});
        let ns = deploy_app(&k, engine, source, &KnownVolumes::default()).await;
        let pv = k.get_json("pv", None, &format!("{ns}-data")).unwrap();
        assert_eq!(pv["spec"]["csi"]["driver"], "pure-csi");
        assert_eq!(pv["spec"]["csi"]["volumeHandle"], volume.as_str());
        assert_eq!(
            days_left(&k, &ns),
            14,
            "an application lives two weeks by default"
        );
        if engine == "jenkins" {
            let cm = k
                .get_json("configmap", Some(&ns), "jenkins-quiet-start")
                .unwrap();
            assert!(
                cm["data"]["snapstage-quiet-start.groovy.override"]
                    .as_str()
                    .unwrap()
                    .contains("doQuietDown()")
            );
        }
        k.kubectl(&["delete", "namespace", &ns, "--wait=false"], None);
        k.kubectl(
            &["delete", "pv", &format!("{ns}-data"), "--wait=false"],
            None,
        );
    }
}

#[tokio::test]
async fn jenkins_and_nexus_come_up_from_a_px_csi_import_and_jenkins_from_ebs() {
    let Some(k) = LocalKube::get("jenkins_and_nexus_from_px_csi") else {
        return;
    };
    // PX-CSI imports by the PVC annotation; here the host-path driver provisions the claim.
    for engine in ["jenkins", "nexus"] {
        let volume = unique(&format!("{engine}-px"));
        let source = json!({"backend": "px-csi", "volumeId": volume,
                            "allowUnmanagedVolume": volume,
                            "storageClassName": "snapstage-hostpath", "ttlDays": 21});
        let ns = deploy_app(&k, engine, source, &KnownVolumes::default()).await;
        let pvc = k.get_json("pvc", Some(&ns), "staging-db-data").unwrap();
        assert_eq!(
            pvc["metadata"]["annotations"]["portworx.io/pure-volume-name"],
            volume.as_str()
        );
        assert_eq!(days_left(&k, &ns), 21);
        k.kubectl(&["delete", "namespace", &ns, "--wait=false"], None);
    }
    // EBS CSI: a static PV of the restored EBS volume, tagged for this run.
    let key_volume = "vol-0a1b2c3d4e5f60718";
    let key = format!("direct/{}", unique("jenkins-ebs"));
    let ns = names::derived_namespace(&key);
    let request = json!({"engine": "jenkins", "volumeId": key_volume, "storageSize": "1Gi",
                         "cluster": cluster(&k)});
    let outputs = run_to_end(&request, &key, &KnownVolumes::staging_ebs(key_volume, &key)).await;
    assert_eq!(outputs["Service"], "jenkins");
    let pv = k.get_json("pv", None, &format!("{ns}-data")).unwrap();
    assert_eq!(pv["spec"]["csi"]["driver"], "ebs.csi.aws.com");
    assert_eq!(pv["spec"]["csi"]["volumeHandle"], key_volume);
    let pod = k.get_json("pod", Some(&ns), "jenkins-0").unwrap();
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 1000);
    k.kubectl(&["delete", "namespace", &ns, "--wait=false"], None);
    k.kubectl(
        &["delete", "pv", &format!("{ns}-data"), "--wait=false"],
        None,
    );
}

#[tokio::test]
async fn the_sweep_removes_an_expired_jenkins_and_keeps_one_with_weeks_left() {
    let Some(k) = LocalKube::get("the_sweep_and_jenkins") else {
        return;
    };
    let mut namespaces = Vec::new();
    for tag in ["expired", "weeks-left"] {
        let volume = unique(&format!("jenkins-{tag}"));
        let source = json!({"backend": "px-csi", "volumeId": volume,
                            "allowUnmanagedVolume": volume,
                            "storageClassName": "snapstage-hostpath", "ttlDays": 28});
        namespaces.push(deploy_app(&k, "jenkins", source, &KnownVolumes::default()).await);
    }
    let (expired, kept) = (&namespaces[0], &namespaces[1]);
    // The first one's four weeks are over (as the annotation says: the sweep trusts nothing else).
    k.kubectl(
        &[
            "annotate",
            "namespace",
            expired,
            "--overwrite",
            "snapstage.io/expires-at=2025-01-01T00:00:00Z",
        ],
        None,
    );
    let sweep = json!({"action": "sweep", "cluster": cluster(&k)});
    let outputs = run_to_end(
        &sweep,
        &format!("direct/{}", unique("sweep")),
        &KnownVolumes::default(),
    )
    .await;
    assert!(!outputs.is_empty());
    let gone = |ns: &str| {
        k.get_json("namespace", None, ns)
            .is_none_or(|n| n["status"]["phase"] == "Terminating")
    };
    assert!(gone(expired), "the expired Jenkins environment is swept");
    assert!(!gone(kept), "one with weeks left stays");
    assert_eq!(days_left(&k, kept), 28);
    k.kubectl(&["delete", "namespace", kept, "--wait=false"], None);
}
