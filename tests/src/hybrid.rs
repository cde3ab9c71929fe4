//! The hybrid Jenkins/Nexus flow (`make demo-hybrid`, `tests/tests/hybrid.rs`): Pure's hybrid
//! CI/CD scenario, end to end, with the real function binaries.
//!
//! | where | what runs | against |
//! | --- | --- | --- |
//! | CodePipeline (the job service double and the pipeline driver) | Snapshot: one protection-group snapshot of Jenkins home and the Nexus blob store on the on-prem array, replicated now to Cloud Block Store | FlashArray double `fa-onprem` |
//! | | Restore: the newest replicated group snapshot into two staging volumes named by the user, in one action | FlashArray double `cbs-cloud` |
//! | | DeployJenkins, DeployNexus: Jenkins and Nexus on those volumes (PSO CSI static PVs), Ready | the local Kubernetes control plane (real kube-apiserver, controllers, KWOK) |
//! | the cloud build | publishes an artifact to the cloud Nexus (written into its blob store volume) | `cbs-cloud` |
//! | on-prem Jenkins stage (the CLI) | rehydrate: the cloud blob store replicated back, the on-prem Nexus scaled to 0, its volume overwritten, scaled back, Ready | `cbs-cloud` → `fa-onprem`, the control plane |
//!
//! The two arrays are the FlashArray double (every request checked against the official REST
//! 2.x spec; a volume's content is an opaque file map that snapshots, copies and replication
//! carry). One control plane plays both clusters: the cloud CI environment's namespaces and the
//! on-prem Nexus in namespace [`ONPREM_NAMESPACE`].

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::Error;
use crate::flasharray_double::{Double, TOKEN};
use crate::invoker::{Functions, Invoker};
use crate::jobservice::JobService;
use crate::localkube::LocalKube;
use crate::pipeline::{self, Action, Options, Pipeline, Run};
use crate::testkit::{sdk_config, unique};

/// The on-prem array and the Cloud Block Store array.
pub const ONPREM: &str = "fa-onprem";
pub const CLOUD: &str = "cbs-cloud";
/// On-prem: the protection group replicated to the cloud, and its volumes.
pub const PGROUP: &str = "pg-ci";
pub const JENKINS_HOME: &str = "jenkins-home";
pub const NEXUS_BLOBS: &str = "nexus-blobs";
/// Cloud: the staging volumes' names (chosen, stable from one quarter to the next).
pub const CLOUD_JENKINS: &str = "ci-jenkins-home";
pub const CLOUD_NEXUS: &str = "ci-nexus-blobs";
/// Cloud: the protection group that brings the Nexus blob store back on-prem.
pub const BACK_PGROUP: &str = "pg-nexus-back";
/// The on-prem Nexus's namespace (the one `infra/k8s/rbac.yaml` grants the rehydrate user).
pub const ONPREM_NAMESPACE: &str = "nexus";
/// What the cloud build publishes to the cloud Nexus.
pub const PUBLISHED: &str = "blobs/default/content/vol-42/chap-07/shop-web-2.4.0.bytes";

const READY: Duration = Duration::from_secs(120);

/// How the flow went: the pipeline run and what the on-prem side looks like after.
#[derive(Debug)]
pub struct Report {
    pub run: Run,
    /// The rehydrate CLI's exit status and its last result.
    pub rehydrate_code: i32,
    pub rehydrate: Value,
    /// The on-prem Nexus StatefulSet's name, and its Ready replicas after the run.
    pub onprem_nexus: String,
    pub onprem_ready: u64,
    /// The on-prem Nexus volume's content after the run.
    pub onprem_files: Value,
    /// The cloud namespaces Jenkins and Nexus run in.
    pub jenkins_namespace: Option<String>,
    pub nexus_namespace: Option<String>,
}

impl Report {
    /// The flow did what it is for: the pipeline succeeded, the rehydrate stage succeeded, the
    /// on-prem Nexus is back and its volume holds the artifact published in the cloud.
    pub fn succeeded(&self) -> bool {
        self.run.succeeded()
            && self.rehydrate_code == 0
            && self.onprem_ready == 1
            && self.onprem_files.get(PUBLISHED).is_some()
    }
}

/// The arrays, the control plane, the token secret and the on-prem Nexus: what the platform team
/// has before the first quarter end.
pub struct Site {
    pub arrays: Double,
    pub kube: LocalKube,
    pub cloud_endpoint: String,
    pub secret: String,
    /// The on-prem Nexus StatefulSet (and its claim and PV), unique per run: PVs are cluster-wide.
    pub onprem_nexus: String,
}

impl Site {
    /// Seeds the arrays, stores the API token in Secrets Manager and starts the on-prem Nexus.
    /// `None` (after a printed SKIP, a failure under CI=true) without the double.
    pub async fn prepare(cloud_endpoint: &str, kube: LocalKube) -> Result<Option<Site>, Error> {
        let Some(arrays) = Double::start(&[ONPREM, CLOUD]) else {
            return Ok(None);
        };
        const GIB: u64 = 1 << 30;
        arrays
            .seed(
                ONPREM,
                json!({
                    "volumes": [
                        {"name": JENKINS_HOME, "provisioned": 20 * GIB, "files": {
                            "config.xml": "sha256:j0001", "jobs/shop-web/config.xml": "sha256:j0002"}},
                        {"name": NEXUS_BLOBS, "provisioned": 50 * GIB, "files": {
                            "blobs/default/metadata.properties": "sha256:n0001",
                            "blobs/default/content/vol-01/chap-01/shop-web-2.3.0.bytes": "sha256:n0002"}}
                    ],
                    "pgroups": [{"name": PGROUP, "volumes": [JENKINS_HOME, NEXUS_BLOBS], "targets": [CLOUD]}]
                }),
            )
            .await;
        arrays
            .configure(ONPREM, json!({"transfer_step": 0.5}))
            .await;
        arrays.configure(CLOUD, json!({"transfer_step": 0.5})).await;

        let sm = aws_sdk_secretsmanager::Client::new(&sdk_config(cloud_endpoint).await);
        let secret = unique("snapstage-fa-token");
        sm.create_secret()
            .name(&secret)
            .secret_string(json!({ "apiToken": TOKEN }).to_string())
            .send()
            .await
            .map_err(|e| Error::Seed(format!("storing the array token in Secrets Manager: {e}")))?;

        // The on-prem Nexus: a static PV of the array volume (Pure CSI names it by its handle),
        // the claim bound to it, one replica mounting the claim.
        let name = unique("nexus").replace('_', "-");
        kube.apply(
            &json!({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                 "spec": {"capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteOnce"],
                          "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                          "csi": {"driver": "pure-csi", "volumeHandle": NEXUS_BLOBS},
                          "claimRef": {"namespace": ONPREM_NAMESPACE, "name": name}}},
                {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": name, "namespace": ONPREM_NAMESPACE},
                 "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": name,
                          "resources": {"requests": {"storage": "50Gi"}}}},
                {"apiVersion": "apps/v1", "kind": "StatefulSet",
                 "metadata": {"name": name, "namespace": ONPREM_NAMESPACE},
                 "spec": {"replicas": 1, "serviceName": name,
                          "selector": {"matchLabels": {"app": name}},
                          "template": {"metadata": {"labels": {"app": name}},
                                       "spec": {"containers": [{"name": "nexus", "image": "sonatype/nexus3:3.75.1",
                                                                "volumeMounts": [{"name": "data", "mountPath": "/nexus-data"}]}],
                                                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}]}}}}
            ]})
            .to_string(),
        );
        let site = Site {
            arrays,
            kube,
            cloud_endpoint: cloud_endpoint.to_string(),
            secret,
            onprem_nexus: name,
        };
        site.kube.eventually("the on-prem Nexus Ready", READY, || {
            (site.onprem_ready() == 1).then_some(())
        });
        Ok(Some(site))
    }

    fn array(&self, array: &str) -> Value {
        json!({"endpoint": self.arrays.url(array), "apiTokenSecret": self.secret})
    }

    /// The CodePipeline side: Snapshot → Restore → DeployJenkins → DeployNexus.
    pub fn pipeline(&self) -> Pipeline {
        let mut onprem = self.array(ONPREM);
        onprem["protectionGroup"] = json!(PGROUP);
        let snapshot = json!({"backend": "flasharray", "flasharray": onprem});
        let mut cloud = self.array(CLOUD);
        cloud["replicatedFrom"] = json!({"array": ONPREM, "protectionGroup": PGROUP});
        let restore = json!({"backend": "flasharray", "flasharray": cloud, "overwrite": true,
        "targets": [
            {"sourceVolumeId": JENKINS_HOME, "name": CLOUD_JENKINS, "output": "Jenkins"},
            {"sourceVolumeId": NEXUS_BLOBS, "name": CLOUD_NEXUS, "output": "Nexus"}
        ]});
        let deploy = |engine: &str, volume: &str| {
            json!({"engine": engine, "backend": "pure-csi", "volumeId": volume,
                   "flasharray": self.array(CLOUD), "ttlDays": 42,
                   "cluster": {"kubeconfigFile": self.kube.kubeconfig("deploy-staging-db")}})
            .to_string()
        };
        Pipeline {
            name: "ci-quarter-end".to_string(),
            actions: vec![
                Action::new(
                    "Snapshot",
                    "Snapshot",
                    "snapshot-production",
                    &snapshot.to_string(),
                ),
                Action::new(
                    "Restore",
                    "Restore",
                    "restore-to-staging",
                    &restore.to_string(),
                ),
                Action::new(
                    "DeployJenkins",
                    "Jenkins",
                    "deploy-staging-db",
                    &deploy("jenkins", "#{Restore.JenkinsVolumeId}"),
                ),
                Action::new(
                    "DeployNexus",
                    "Nexus",
                    "deploy-staging-db",
                    &deploy("nexus", "#{Restore.NexusVolumeId}"),
                ),
            ],
        }
    }

    /// The on-prem Jenkins stage's event: array mode with `rehydrate`.
    pub fn rehydrate_event(&self, execution: &str) -> Value {
        let mut source = self.array(CLOUD);
        source["protectionGroup"] = json!(BACK_PGROUP);
        json!({
            "executionId": execution,
            "array": {
                "source": source,
                "target": self.array(ONPREM),
                "sourceArray": CLOUD, "volume": CLOUD_NEXUS, "targetVolume": NEXUS_BLOBS,
                "overwrite": true,
                "rehydrate": {
                    "cluster": {"kubeconfigFile": self.kube.kubeconfig("rehydrate")},
                    "namespace": ONPREM_NAMESPACE,
                    "workload": format!("statefulset/{}", self.onprem_nexus),
                    "timeoutMinutes": 5
                }
            }
        })
    }

    /// Ready replicas of the on-prem Nexus.
    pub fn onprem_ready(&self) -> u64 {
        self.kube
            .get_json("statefulset", Some(ONPREM_NAMESPACE), &self.onprem_nexus)
            .and_then(|s| s["status"]["readyReplicas"].as_u64())
            .unwrap_or(0)
    }
}

/// Runs the whole flow: the pipeline through `invoker`, the cloud build's publish, the admin's
/// protection group for the way back, and the on-prem rehydrate stage as a CLI.
pub async fn run<I: Invoker>(
    site: &Site,
    jobs: &JobService,
    invoker: &I,
    functions: &Functions,
) -> Result<Report, Error> {
    let pipeline = site.pipeline();
    let run = pipeline::run(&pipeline, jobs, invoker, &Options::default()).await?;
    let namespace = |ns: &str| run.variable(ns, "Namespace").map(String::from);
    let mut report = Report {
        jenkins_namespace: namespace("Jenkins"),
        nexus_namespace: namespace("Nexus"),
        run,
        rehydrate_code: -1,
        rehydrate: Value::Null,
        onprem_nexus: site.onprem_nexus.clone(),
        onprem_ready: site.onprem_ready(),
        onprem_files: Value::Null,
    };
    if !report.run.succeeded() {
        return Ok(report);
    }

    // The cloud build publishes to the cloud Nexus: a new blob in its blob store volume.
    let mut files = site.arrays.files(CLOUD, CLOUD_NEXUS).await;
    files[PUBLISHED] = json!("sha256:c10d2400");
    site.arrays.write_files(CLOUD, CLOUD_NEXUS, files).await;
    // Once, by the array admin: the cloud Nexus volume replicates back in its own group.
    site.arrays
        .seed(
            CLOUD,
            json!({"pgroups": [{"name": BACK_PGROUP, "volumes": [CLOUD_NEXUS], "targets": [ONPREM]}]}),
        )
        .await;

    // On-prem, a Jenkins stage: `replicate-artifacts-back --event rehydrate.json`.
    let event = site.rehydrate_event(&unique("rehydrate"));
    let (code, last) = cli(functions, "replicate-artifacts-back", &event)?;
    report.rehydrate_code = code;
    report.rehydrate = last;
    report.onprem_ready = site.onprem_ready();
    report.onprem_files = site.arrays.files(ONPREM, NEXUS_BLOBS).await;
    Ok(report)
}

/// Runs `function --event <file>` as a Jenkins stage does, following it to the end: the exit
/// status and the last result it printed.
fn cli(functions: &Functions, function: &str, event: &Value) -> Result<(i32, Value), Error> {
    let dir = std::env::temp_dir().join(unique("snapstage-hybrid"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Setup(format!("creating {}: {e}", dir.display())))?;
    let file = dir.join("rehydrate.json");
    std::fs::write(&file, event.to_string())
        .map_err(|e| Error::Setup(format!("writing {}: {e}", file.display())))?;
    let out = Command::new(functions.binary(function)?)
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .envs(&functions.env)
        .arg("--event")
        .arg(&file)
        .args(["--poll-interval", "0.5"])
        .output()
        .map_err(|e| Error::Invoke(format!("running {function}: {e}")))?;
    let _ = std::fs::remove_dir_all(&dir);
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    Ok((out.status.code().unwrap_or(-1), last))
}

/// The function binaries with what the flow needs: moto for Secrets Manager, plain HTTP to the
/// array doubles.
pub fn functions(bin_dir: &Path, jobs: &JobService, cloud_endpoint: &str) -> Functions {
    Functions::new(bin_dir, &jobs.url)
        .moto(cloud_endpoint)
        .env("SNAPSTAGE_FLASHARRAY_ALLOW_HTTP_FOR_TESTS", "1")
}
