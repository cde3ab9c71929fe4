//! snapshot-production: a crash-consistent (or, with hooks, app-consistent), block-level snapshot
//! of the production volume(s), production never interrupted. Waits through continuation tokens,
//! never sleeps.

use std::process::ExitCode;

use snapstage::job::entry::About;
use snapstage::storage::hooks::Hooks;
use snapstage::storage::open::with_backend;
use snapstage::storage::steps::{SnapshotParams, needs_hooks, snapshot_step_with_hooks};
use snapstage::{Function, Outcome, Result, Step};

const ABOUT: About = About {
    summary: "Takes a block-level snapshot of the production database volume(s), tagged/labelled with the
pipeline run so a retried or duplicated invocation reuses it. Production I/O is never paused: EBS and CSI
snapshots are online and crash-consistent (per volume, unless one call cuts them at one point in time:
EBS CreateSnapshots of one instance's volumes, a FlashArray protection group, a CSI VolumeGroupSnapshot); optional hooks make them app-consistent by running a command in
the database's pod before creation (fsfreeze -f, fsyncLock) and always its undo after. Answers InProgress
with a continuation token until every snapshot completes.",
    parameters: "  volumeIds      1-16 production volumes: [\"vol-…\"] (ebs), array volume names (flasharray),
                 PVC names in csi.namespace (csi)
  selector       csi: a label selector picking the PVCs instead of volumeIds, e.g. \"app=orders-db\"
  backend        \"ebs\" (default), \"flasharray\", \"csi\"
  flasharray     {endpoint, apiTokenSecret (Secrets Manager), caBundle?, protectionGroup?}: protectionGroup
                 instead of volumeIds snapshots the group as one, replicated now to its targets
                 (e.g. on-prem FlashArray → Cloud Block Store)
  csi            {cluster: {\"eks\": {\"name\": …}} | {\"kubeconfigSecret\": …} | \"inCluster\",
                  namespace, snapshotClass?, groupSnapshotClass? (with selector: one VolumeGroupSnapshot)}
  hooks          {pod | podSelector, namespace?, container?, pre: [\"fsfreeze\",\"-f\",\"/data\"],
                  post: [\"fsfreeze\",\"-u\",\"/data\"] | session: {command, freeze, thaw, marker?}
                  (one exec held open from the confirmed freeze until the snapshots are cut, e.g.
                  FLUSH TABLES WITH READ LOCK), timeoutSeconds? (30), cluster? (default csi.cluster)}
  consistentGroup  several volumes at one point in time: true = required (else a ConfigurationError
                 saying why, e.g. EBS volumes on two instances), false = one snapshot per volume,
                 unset = one point in time when possible, else per volume and the summary says so
  description    snapshot description (default: \"snapstage <execution>\")
  copyTo         ebs: {\"region\": \"us-west-2\", \"kmsKeyId\": \"…\"?}: copy each snapshot to another region
                 once complete (waited for the same way; a retry reuses the run's copy)
  retain         keep the newest N snapstage snapshots per volume, delete older ones snapstage made
  dryRun         true: report what would be done, change nothing",
    outputs: "  SnapshotId  SnapshotIds  SnapshotTime  SourceVolumeIds  Backend
  PointInTime (group: one point in time for all volumes; per-volume: not; single: one volume)
  (CopiedSnapshotIds CopyRegion with copyTo; SnapshotsDeleted with retain; AppConsistent when hooks ran;
  DryRun when dryRun)",
};

struct SnapshotProduction {
    sdk: aws_config::SdkConfig,
}

impl Function for SnapshotProduction {
    const NAME: &'static str = "snapshot-production";
    type Params = SnapshotParams;

    async fn step(&self, step: Step<SnapshotParams>) -> Result<Outcome> {
        // Hooks run around creation only: no cluster connection on the "still pending" re-invocations.
        let hooks = match (&step.params.hooks, needs_hooks(&step)) {
            (Some(h), true) => Some(Hooks::open(h, step.params.csi.as_ref(), &self.sdk).await?),
            _ => None,
        };
        with_backend(step, &self.sdk, async |backend, step| {
            snapshot_step_with_hooks(backend, hooks.as_ref(), step).await
        })
        .await
    }
}

fn main() -> ExitCode {
    snapstage::job::entry::main(&ABOUT, |sdk| SnapshotProduction { sdk: sdk.clone() })
}
