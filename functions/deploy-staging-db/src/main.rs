//! `deploy-staging-db`: the staging database on Kubernetes. Applies the manifests to the
//! configured cluster, waits (through continuations) until the database is ready, runs the
//! credentials reset and the optional masking and migration Jobs, and publishes the endpoint; or
//! deletes staging namespaces (teardown, TTL sweep). Without a cluster, or with dryRun, it only
//! plans.

use std::process::ExitCode;

use snapstage::job::entry::About;
use snapstage::staging::{self, Params};
use snapstage::storage::open::ImportMarks;
use snapstage::{Function, Outcome, Result, Step};

struct DeployStagingDb {
    sdk: aws_config::SdkConfig,
    /// The production interlock's reads of the imported volume (EBS and FlashArray tags).
    volumes: ImportMarks,
}

impl Function for DeployStagingDb {
    const NAME: &'static str = "deploy-staging-db";
    type Params = Params;

    async fn step(&self, step: Step<Params>) -> Result<Outcome> {
        staging::step(&self.sdk, &self.volumes, step).await
    }
}

// Lines are joined with concat! so their indentation survives (a `\` continuation eats it).
const ABOUT: About = About {
    summary: concat!(
        "Deploys a staging database on Kubernetes that mounts the restored volume: a Namespace\n",
        "(labelled, with an expiry), a Secret with generated credentials (made once, never output), a\n",
        "PersistentVolume + PVC bound to the volume (or the PVC restore-to-staging made: pvcName), and a\n",
        "Service + one-replica StatefulSet or the user's own template, applied with server-side apply.\n",
        "Before the server starts, an init container starts the engine local-only on the restored data\n",
        "and sets the database user's password to the generated one (no production credential is read).\n",
        "Waits until the PVC is Bound and the pods Ready (failing early on image pull errors and crash\n",
        "loops), runs the optional masking and migration-check Jobs, then publishes the endpoint.\n",
        "A failure deletes the namespace it created, or keeps it, or rolls back to the\n",
        "previous healthy database of the pipeline (onFailure). action teardown / sweep delete one\n",
        "staging namespace / every expired one, only if snapstage made it, with its PV objects and the\n",
        "staging volumes behind them: only volumes with snapstage's staging tags, no production marker\n",
        "and no snapstage:deletion-protection=true (EBS once detached; FlashArray destroyed, not\n",
        "eradicated; an attached one: teardown continues, the sweep retries next run).\n",
        "PLAN MODE when no cluster is configured or dryRun is true: the manifests are rendered and\n",
        "validated and the apply requests are logged; no cluster is changed (requireCluster: true makes a\n",
        "missing cluster an error instead, unless dryRun is true).\n",
        "PRODUCTION INTERLOCK, in plan mode too: before anything is applied the imported volume is read\n",
        "(EBS tags; FlashArray tags with flasharray; the PVC / VolumeSnapshot labels and the PVs of the\n",
        "same array volume in the cluster) and refused when it is marked production, or when it is not\n",
        "the staging volume restore-to-staging made for this run and allowUnmanagedVolume does not name it.",
    ),
    parameters: concat!(
        "  action                  deploy (default) | teardown (needs namespace) | sweep (expired ones)\n",
        "  cluster                 {\"eks\": {\"name\": \"...\", \"region\": \"...\"}} | {\"kubeconfigSecret\": \"arn or\n",
        "                          name\"} | {\"kubeconfigFile\": \"/path\"} | \"inCluster\"; none: plan mode\n",
        "  volumeId                the restored volume: an EBS volume id (vol-...) for backend ebs; an array\n",
        "                          volume name ([realm::][pod::]volume) for pure-csi / px-csi; not with csi\n",
        "  backend                 ebs (default; static PV of ebs.csi.aws.com) | csi (the PVC restores\n",
        "                          snapshotName, or pvcName is mounted) | pure-csi (static PV of pure-csi)\n",
        "                          | px-csi (PVC annotation portworx.io/pure-volume-name)\n",
        "  snapshotName            csi only: the VolumeSnapshot, in the staging namespace, to restore\n",
        "  pvcName                 csi only, instead of snapshotName: a PVC restore-to-staging made in the\n",
        "                          staging namespace (its PvcName / Namespace outputs); no second PVC;\n",
        "                          teardown deletes it only if it is labelled managed-by=snapstage\n",
        "  engine                  postgresql (default) | mysql | mongodb | jenkins | nexus (CI\n",
        "                          applications: a built-in template on the restored JENKINS_HOME /\n",
        "                          /nexus-data, probed on GET /login / /service/rest/v1/status/writable;\n",
        "                          no credentials Secret; Jenkins starts in quiet-down)\n",
        "  namespace               default snapstage-<hash of the execution>; never default or kube-*; an\n",
        "                          existing one must be labelled app.kubernetes.io/managed-by=snapstage\n",
        "  storageSize             a Kubernetes quantity such as 20Gi (default) or 500Mi\n",
        "  storageClassName        the StorageClass (static PVs default to \"\": no class)\n",
        "  availabilityZone        ebs only: the volume's zone; pins the PV (topology.ebs.csi.aws.com/zone)\n",
        "  ttlHours                1..2160 (default 24; jenkins / nexus 336): sets the namespace's\n",
        "                          snapstage.io/expires-at, which the sweep deletes after\n",
        "  ttlDays                 1..90, instead of ttlHours (not both): weeks for a CI environment\n",
        "  image                   the image (default postgres:17, mysql:8.4, mongo:7.0,\n",
        "                          jenkins/jenkins:2.479.3-lts-jdk17, sonatype/nexus3:3.75.1); use\n",
        "                          production's version\n",
        "  readyTimeoutMinutes     1..1440 (default 15; jenkins / nexus 30): how long it may take to be ready\n",
        "  onFailure               teardown (default: delete the namespace this run created) | keep |\n",
        "                          rollback (teardown, and name the previous healthy database of the same\n",
        "                          pipeline, which still stands, in the failure: Namespace, Endpoint, ...)\n",
        "  pipeline                the pipeline environments belong to, for rollback (default: the\n",
        "                          CodePipeline pipeline's name; set it for direct requests and the CLI)\n",
        "  resetCredentials        true (default): an init container (the database image) starts the\n",
        "                          engine on the restored data with no network and no password check, sets\n",
        "                          databaseUser's password to the generated one and takes every other\n",
        "                          login's production password away, before the server starts;\n",
        "                          jenkins / nexus: false (true is refused: they keep their own users)\n",
        "  adminSecret             no longer used (refused): the reset needs no production credential\n",
        "  databaseUser            the user the Secret names and the reset changes (default postgres | root\n",
        "                          | admin)\n",
        "  template                the workload as your own YAML instead of snapstage's Service +\n",
        "                          StatefulSet: {\"inline\": \"...\"} | {\"file\": \"/path\"} | {\"artifact\": {\"path\":\n",
        "                          \"deploy/db.yaml\", \"name\"?: \"SourceOutput\"}} (a file in an input artifact)\n",
        "                          Placeholders: ${NAMESPACE} ${PVC_NAME} (required) ${SECRET_NAME}\n",
        "                          ${SECRET_USERNAME_KEY} ${SECRET_PASSWORD_KEY} ${IMAGE} ${ENGINE} ${PORT}\n",
        "                          ${MOUNT_PATH} ${RUN_AS_USER} ${EXECUTION}; $${ is a literal ${. Kinds:\n",
        "                          StatefulSet, Deployment, Service, ConfigMap, Secret, in the staging\n",
        "                          namespace; its first Service is published\n",
        "  masking                 {\"image\", \"command\": [...], \"scriptsConfigMap\"?, \"timeoutMinutes\"?}: a\n",
        "                          Job run after readiness, before anything is published; env DB_HOST,\n",
        "                          DB_PORT, DB_USERNAME, DB_PASSWORD (+ PG* / MYSQL_*); scripts at /scripts\n",
        "  migration               {\"image\", \"command\": [...], \"allowFailure\"?, ...}: a migration check\n",
        "                          Job; its failure fails the action unless allowFailure is true\n",
        "  allowUnmanagedVolume    the interlock's override: the exact volumeId / pvcName / snapshotName to\n",
        "                          import although it is not this run's staging volume (never a volume\n",
        "                          marked production: env/environment/stage/role=prod*, SNAPSTAGE_PRODUCTION_MARKERS)\n",
        "  flasharray              pure-csi / px-csi: {\"endpoint\", \"apiTokenSecret\", \"caBundle\"?}, the array\n",
        "                          whose volume tags the interlock reads (read-only); without it only\n",
        "                          allowUnmanagedVolume imports an array volume\n",
        "  requireCluster          true: no cluster is a ConfigurationError, not plan mode (dryRun still\n",
        "                          plans); the SAM stack sets it\n",
        "  fieldManager            server-side apply field manager (default snapstage-deploy-staging-db)\n",
        "  dryRun                  true: deploy only plans; teardown / sweep report what they would delete",
    ),
    outputs: concat!(
        "  Namespace               the staging namespace\n",
        "  Service                 the database Service (a template's first Service; jenkins | nexus)\n",
        "  Endpoint                <service>.<namespace>.svc.cluster.local:<port>\n",
        "  Port                    5432 | 3306 | 27017 | 8080 | 8081\n",
        "  Url                     jenkins / nexus: http://<service>.<namespace>.svc.cluster.local:<port>/\n",
        "  SecretName              the Secret with the credentials (generated at apply time; never output);\n",
        "                          none for jenkins / nexus\n",
        "  Engine                  postgresql | mysql | mongodb | jenkins | nexus\n",
        "  Mode                    applied | plan (teardown / sweep: applied | dry-run | plan)\n",
        "  ManifestCount           how many objects were rendered and validated\n",
        "  ExpiresAt               RFC 3339 time after which the namespace may be deleted\n",
        "  CredentialsReset        true | false: the password of databaseUser was reset\n",
        "  MigrationResult         succeeded | failed (with migration)\n",
        "  Action, Deleted, ...    teardown / sweep: what was deleted",
    ),
};

fn main() -> ExitCode {
    snapstage::job::entry::main::<DeployStagingDb>(&ABOUT, |sdk| DeployStagingDb {
        sdk: sdk.clone(),
        volumes: ImportMarks::new(sdk),
    })
}
