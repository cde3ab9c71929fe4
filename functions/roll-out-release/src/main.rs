//! roll-out-release: rolls a new AMI out to a production Auto Scaling group with an instance
//! refresh, health-gated and rolled back on failure. Waits through continuation tokens, never
//! sleeps.

use std::process::ExitCode;

use roll_out_release::sdk::SdkFleet;
use roll_out_release::{AllowList, RollOutRelease};
use snapstage::job::entry::About;

const ABOUT: About = About {
    summary: "Rolls a new machine image (AMI) out to a production EC2 Auto Scaling group with zero downtime:
creates a launch template version from the group's current one with the new image, starts an instance
refresh (MinHealthyPercentage, warm-up, checkpoints, skip matching, auto rollback) and follows it with
continuation tokens, percent complete in the console. Target health in the group's ELB target groups and
the named CloudWatch alarms decide: unhealthy targets past maxUnhealthyPercent or an alarm in ALARM roll
the release back to the previous launch template version and fail the job saying what happened. It
succeeds once the group launches the new version, every instance runs it and every target is healthy.
A retried or duplicated invocation finds the run's version (its description names the run) and refresh
instead of starting another. Only groups in SNAPSTAGE_ROLLOUT_ALLOWED_GROUPS are touched.",
    parameters: "  autoScalingGroupName  the group (must be in SNAPSTAGE_ROLLOUT_ALLOWED_GROUPS: names, or prefix*)
  imageId        the AMI to roll out, e.g. \"#{Build.ImageId}\" (not with rollback)
  launchTemplate {\"id\": \"lt-…\"} | {\"name\": …}: fail unless the group uses this template
  minHealthyPercentage  instance refresh: share kept in service (default 90)
  maxHealthyPercentage  instance refresh: 100-200, replace above capacity
  instanceWarmup        instance refresh: seconds before a new instance counts
  checkpointPercentages [20, 50, 100]: pause points; checkpointDelay seconds at each
  skipMatching   instance refresh: skip instances already on the new version (default true)
  autoRollback   instance refresh: Auto Scaling rolls a failed refresh back (default true)
  bakeTime       instance refresh: seconds to wait after the last replacement
  alarms         CloudWatch alarm names: one in ALARM during the refresh rolls the release back
  maxUnhealthyPercent  health gate: share of the new version's targets that may be unhealthy (default 0)
  healthSettleChecks   health gate: invocations to wait after the refresh for all targets healthy (20)
  rollback       {\"toVersion\": N | \"previous\"}: instead of a release, roll back the refresh in
                 progress, or set the group to version N (previous: the version the current one was
                 made from) and refresh its instances onto it
  dryRun         true: report what would change, change nothing",
    outputs: "  AutoScalingGroupName  LaunchTemplateId  LaunchTemplateVersion  PreviousLaunchTemplateVersion
  ImageId  InstanceRefreshId  Status (Successful, RollbackSuccessful, AlreadyCurrent, Planned)
  RolledBack (true for a rollback request)  DryRun (with dryRun)
  A release that was rolled back fails the job (JobFailed) with what happened.",
};

fn main() -> ExitCode {
    snapstage::job::entry::main(&ABOUT, |sdk| RollOutRelease {
        fleet: SdkFleet::new(sdk),
        allow: AllowList::from_env(|k| std::env::var(k).ok()),
    })
}
