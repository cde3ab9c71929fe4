//! restore-to-staging: the newest (or a named) snapshot becomes a new, writable staging volume.
//! Never writes to a production volume.

use std::process::ExitCode;

use snapstage::job::entry::About;
use snapstage::storage::open::with_backend;
use snapstage::storage::steps::{RestoreParams, restore_step};
use snapstage::{Function, Outcome, Result, Step};

const ABOUT: About = About {
    summary: "Creates a new staging volume from a snapshot (a named one, or the newest completed snapshot
snapstage made of a production volume), tagged/labelled snapstage role staging and with the pipeline run.
EBS: a volume in the given availability zone. FlashArray: a copy of the snapshot into a staging volume.
CSI: in csi.stagingNamespace a VolumeSnapshotContent pre-bound to the production snapshot's handle
(deletionPolicy Retain), a VolumeSnapshot bound to it and a PVC restoring it (it may stay Pending until a
pod uses it under WaitForFirstConsumer). Only ever creates new volumes; refuses anything production: a
volume tagged production, the production namespace or one labelled production as staging, a PVC snapstage
did not make or one mounted by a pod that is not a snapstage staging pod.",
    parameters: "  snapshotId        the snapshot to restore, e.g. \"#{Snapshot.SnapshotId}\" (or sourceVolumeId)
  sourceVolumeId    restore the newest completed snapstage snapshot of this volume / PVC
  targets           several volumes of one group snapshot in one action, all or nothing, instead of
                    sourceVolumeId: [{\"sourceVolumeId\", \"name\", \"output\"?}] (1-16); flasharray: the
                    pg snapshot (snapshotId \"fa-onprem:pg-ci.SUFFIX\", or the newest of replicatedFrom /
                    protectionGroup) copied to each name; ebs: the snapshots of one CreateSnapshots
                    (snapshotId: any of them, or the newest complete group) into volumes tagged Name;
                    csi: the members of one VolumeGroupSnapshot (snapshotId \"snapstage-HASH\", or the
                    newest snapstage made with groupSnapshotClass) into staging PVCs named \"name\"
  overwrite         with targets: true overwrites a name holding an earlier run's staging volume
                    (flasharray only; a csi PVC cannot be overwritten); a volume without snapstage's
                    staging mark or marked production is never written
  availabilityZone  ebs: zone of the staging nodes, e.g. \"us-east-1a\" (required for ebs)
  volumeType        ebs: gp3 (default), gp2, io1, io2, st1, sc1
  backend           \"ebs\" (default), \"flasharray\", \"csi\"
  flasharray        {endpoint, apiTokenSecret, caBundle?, replicatedFrom?, protectionGroup?}: the token is read from
                    Secrets Manager; replicatedFrom {\"array\", \"protectionGroup\"}: on a replication
                    target, sourceVolumeId restores the newest snapshot replicated from that group
  csi               {cluster, namespace (production), stagingNamespace (required), storageClass?}
  dryRun            true: report what would be done, change nothing",
    outputs: "  VolumeId  SnapshotId  AvailabilityZone (ebs)  SizeGiB  Backend
  with targets: VolumeIds (comma-joined, in targets order)  SnapshotId (the group)  SnapshotIds
  Backend  <output>VolumeId for each target with an output label
  csi also: PvcName  SnapshotName (the staging VolumeSnapshot)  Namespace  (DryRun when dryRun)",
};

struct RestoreToStaging {
    sdk: aws_config::SdkConfig,
}

impl Function for RestoreToStaging {
    const NAME: &'static str = "restore-to-staging";
    type Params = RestoreParams;

    async fn step(&self, step: Step<RestoreParams>) -> Result<Outcome> {
        with_backend(step, &self.sdk, async |backend, step| {
            restore_step(backend, step).await
        })
        .await
    }
}

fn main() -> ExitCode {
    snapstage::job::entry::main(&ABOUT, |sdk| RestoreToStaging { sdk: sdk.clone() })
}
