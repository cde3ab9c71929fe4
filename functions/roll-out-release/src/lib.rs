//! roll-out-release: the zero-downtime, health-gated, roll-back-able release rollout after
//! staging tests pass. A new AMI goes to a production Auto Scaling group through a new launch
//! template version and an EC2 Auto Scaling instance refresh, followed with continuation tokens;
//! target health and CloudWatch alarms decide, and a failing release is rolled back.
//!
//! | where | what |
//! | --- | --- |
//! | [`params`] | the parameters and the production allow list |
//! | [`fleet`] | what the step needs from AWS, as one small trait |
//! | [`sdk`] | that trait over the AWS SDK (Auto Scaling, EC2, ELBv2, CloudWatch) |
//! | [`step`] | the step: release, health gate, rollback, rollback requests |

pub mod fleet;
pub mod params;
pub mod sdk;
pub mod step;

use snapstage::{Function, Outcome, Result, Step};

pub use params::{ALLOWED_GROUPS_ENV, AllowList, RolloutParams};

/// The function: a [`fleet::Fleet`] and the allow list, read once at start.
pub struct RollOutRelease<F> {
    pub fleet: F,
    pub allow: AllowList,
}

impl<F: fleet::Fleet + 'static> Function for RollOutRelease<F> {
    const NAME: &'static str = "roll-out-release";
    type Params = RolloutParams;

    async fn step(&self, s: Step<RolloutParams>) -> Result<Outcome> {
        step::step(&self.fleet, &self.allow, s).await
    }
}
