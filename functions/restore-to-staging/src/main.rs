//! restore-to-staging: the newest (or a named) snapshot becomes a new, writable staging volume.
//! Never writes to a production volume.

use std::process::ExitCode;

use snapstage::entry::About;
use snapstage::storage::open::open;
use snapstage::storage::steps::{RestoreParams, restore_step};
use snapstage::{Function, Outcome, Result, Step};

const ABOUT: About = About {
    summary: "Creates a new staging volume from a snapshot (a named one, or the newest completed snapshot
snapstage made of a production volume), tied to the pipeline run so a retry reuses it: an EBS volume
tagged snapstage:role=staging in the given zone, or a copy on the array named <volume>-staging-<run>.
Only ever creates new volumes; refuses any volume tagged as production.",
    parameters: "  snapshotId        snapshot to restore, e.g. \"#{Snapshot.SnapshotId}\" (or sourceVolumeId)
  sourceVolumeId    restore the newest completed snapstage snapshot of this production volume
  backend           \"ebs\" (default) | \"flasharray\"
  availabilityZone  ebs: zone of the staging nodes, e.g. \"us-east-1a\" (required for ebs)
  volumeType        ebs: gp3 (default), gp2, io1, io2, st1, sc1
  flasharray        {\"endpoint\", \"apiTokenSecret\", \"caBundle\"?, \"replicatedFrom\"?} (required for flasharray);
                    replicatedFrom {\"array\", \"protectionGroup\"}: on a replication target,
                    sourceVolumeId restores the newest snapshot replicated from that group
  dryRun            true: report what would be done, change nothing",
    outputs: "  VolumeId  SnapshotId  AvailabilityZone (ebs)  SizeGiB  Backend  (DryRun when dryRun)",
};

struct RestoreToStaging {
    sdk: aws_config::SdkConfig,
}

impl Function for RestoreToStaging {
    const NAME: &'static str = "restore-to-staging";
    type Params = RestoreParams;

    async fn step(&self, step: Step<RestoreParams>) -> Result<Outcome> {
        let backend = open(step.params.choice(), &self.sdk).await?;
        let result = restore_step(&backend, step).await;
        backend.close().await;
        result
    }
}

fn main() -> ExitCode {
    snapstage::entry::main(&ABOUT, |config| RestoreToStaging {
        sdk: config.clone(),
    })
}
