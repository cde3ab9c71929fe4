//! `deploy-staging-db`: the staging database on Kubernetes. Plan mode for now: renders and
//! validates the manifests and reports the server-side apply requests; no cluster is changed.

use std::process::ExitCode;

use snapstage::entry::About;
use snapstage::staging::{self, Params};
use snapstage::{Function, Outcome, Result, Step};

struct DeployStagingDb;

impl Function for DeployStagingDb {
    const NAME: &'static str = "deploy-staging-db";
    type Params = Params;

    async fn step(&self, step: Step<Params>) -> Result<Outcome> {
        staging::plan_step(step)
    }
}

// Lines are joined with concat! so their indentation survives (a `\` continuation eats it).
const ABOUT: About = About {
    summary: concat!(
        "Deploys a staging database on Kubernetes that mounts the restored volume: a Namespace\n",
        "(labelled, with an expiry), a Secret for generated credentials, a PersistentVolume + PVC bound\n",
        "to the volume, a Service and a one-replica StatefulSet, applied with server-side apply.\n",
        "PLAN MODE ONLY for now: the manifests are rendered and validated and the apply requests are\n",
        "logged; no cluster is contacted and no AWS call is made.",
    ),
    parameters: concat!(
        "  volumeId                the restored volume: an EBS volume id (vol-...) for backend ebs; an array\n",
        "                          volume name ([realm::][pod::]volume) for pure-csi / px-csi; not with csi\n",
        "  backend                 ebs (default; static PV of ebs.csi.aws.com) | csi (the PVC restores\n",
        "                          snapshotName) | pure-csi (static PV of pure-csi) | px-csi (PVC annotation\n",
        "                          portworx.io/pure-volume-name)\n",
        "  snapshotName            csi only: the VolumeSnapshot, in the staging namespace, to restore\n",
        "  engine                  postgresql (default) | mysql | mongodb\n",
        "  namespace               default snapstage-<hash of the execution>; never default or kube-*\n",
        "  storageSize             a Kubernetes quantity such as 20Gi (default) or 500Mi\n",
        "  storageClassName        the StorageClass (static PVs default to \"\": no class)\n",
        "  availabilityZone        ebs only: the volume's zone; pins the PV (topology.ebs.csi.aws.com/zone)\n",
        "  ttlHours                1..720 (default 24): sets the namespace's snapstage.io/expires-at\n",
        "  image                   the database image (default postgres:17, mysql:8.4, mongo:7.0); use\n",
        "                          production's major version\n",
        "  fieldManager            server-side apply field manager (default snapstage-deploy-staging-db)\n",
        "  dryRun                  true | false; plan mode is the only mode for now",
    ),
    outputs: concat!(
        "  Namespace               the staging namespace\n",
        "  Service                 the database Service\n",
        "  Endpoint                <service>.<namespace>.svc.cluster.local:<port>\n",
        "  Port                    5432 | 3306 | 27017\n",
        "  SecretName              the Secret with the credentials (generated at apply time; never output)\n",
        "  Engine                  postgresql | mysql | mongodb\n",
        "  Mode                    plan\n",
        "  ManifestCount           how many objects were rendered and validated\n",
        "  ExpiresAt               RFC 3339 time after which the namespace may be deleted",
    ),
};

fn main() -> ExitCode {
    snapstage::entry::main::<DeployStagingDb>(&ABOUT, |_sdk_config| DeployStagingDb)
}
