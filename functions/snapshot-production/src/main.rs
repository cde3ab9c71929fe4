//! snapshot-production: a crash-consistent, block-level snapshot of the production volume(s),
//! production never interrupted. Waits through continuation tokens, never sleeps.

use std::process::ExitCode;

use snapstage::entry::About;
use snapstage::storage::open::open;
use snapstage::storage::steps::{SnapshotParams, snapshot_step};
use snapstage::{Function, Outcome, Result, Step};

const ABOUT: About = About {
    summary: "Takes a block-level snapshot of the production database volume(s) as one group, tagged with the
pipeline run so a retried or duplicated invocation reuses it. Production I/O is never paused (EBS and
FlashArray snapshots are online and crash-consistent). Answers InProgress with a continuation token until
every snapshot completes; optionally keeps only the newest N snapshots it made.",
    parameters: "  volumeIds      1–16 production volumes, snapshotted as one group (required):
                   \"vol-…\" (ebs), array volume names (flasharray)
  backend        \"ebs\" (default) | \"flasharray\" (FlashArray / Cloud Block Store, REST 2.x)
  flasharray     {\"endpoint\": \"https://array\", \"apiTokenSecret\": \"<Secrets Manager name or ARN>\",
                  \"caBundle\": \"<PEM>\"?, \"protectionGroup\": \"pg\"?}  (required for backend flasharray;
                 the token is never a parameter; protectionGroup instead of volumeIds snapshots the
                 group as one, replicated now to its targets, e.g. on-prem FlashArray → Cloud Block Store)
  description    snapshot description (default: \"snapstage <execution>\")
  copyTo         ebs: {\"region\": \"us-west-2\", \"kmsKeyId\": \"…\"?}: copy each snapshot to another region
                 once complete (waited for the same way; a retry reuses the run's copy)
  retain         keep the newest N snapstage snapshots per volume, delete older ones snapstage made
  dryRun         true: report what would be done, change nothing",
    outputs: "  SnapshotId  SnapshotIds  SnapshotTime  SourceVolumeIds  Backend  (CopiedSnapshotIds CopyRegion with
  copyTo, SnapshotsDeleted with retain,
  DryRun when dryRun)",
};

struct SnapshotProduction {
    sdk: aws_config::SdkConfig,
}

impl Function for SnapshotProduction {
    const NAME: &'static str = "snapshot-production";
    type Params = SnapshotParams;

    async fn step(&self, step: Step<SnapshotParams>) -> Result<Outcome> {
        let backend = open(step.params.choice(), &self.sdk).await?;
        let result = snapshot_step(&backend, step).await;
        backend.close().await;
        result
    }
}

fn main() -> ExitCode {
    snapstage::entry::main(&ABOUT, |config| SnapshotProduction {
        sdk: config.clone(),
    })
}
