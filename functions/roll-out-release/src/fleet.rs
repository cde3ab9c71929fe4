//! What the roll-out step needs from AWS, as one small trait: the group, its launch template
//! versions, the image, instance refreshes, target health and alarms. [`crate::sdk::SdkFleet`]
//! implements it with the AWS SDK; the step's unit tests with an in-memory fake.

use std::future::Future;

use snapstage::Result;

/// An Auto Scaling group, as far as a release cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// The group's launch template; `None` for a launch configuration.
    pub template: Option<TemplateRef>,
    /// The group launches from a mixed instances policy (not supported).
    pub mixed_instances: bool,
    pub desired_capacity: i32,
    pub instances: Vec<GroupInstance>,
    /// The ELB target groups the group registers its instances with.
    pub target_groups: Vec<String>,
}

/// A launch template as a group or an instance names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub id: String,
    pub name: String,
    /// A number, `$Latest` or `$Default`.
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInstance {
    pub id: String,
    /// The launch template version the instance was launched from.
    pub version: Option<String>,
    /// `InService`, `Pending`, `Terminating`, ...
    pub lifecycle: String,
    /// `Healthy` or `Unhealthy`.
    pub health: String,
}

/// One launch template version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVersion {
    pub template_id: String,
    pub template_name: String,
    pub number: i64,
    pub image_id: Option<String>,
    pub description: Option<String>,
    pub is_default: bool,
}

/// An AMI's state (`available`, `pending`, `failed`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub state: String,
}

/// What StartInstanceRefresh is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshRequest {
    pub group: String,
    pub template_id: String,
    pub version: i64,
    pub min_healthy_percentage: Option<i32>,
    pub max_healthy_percentage: Option<i32>,
    pub instance_warmup: Option<i32>,
    pub checkpoint_percentages: Vec<i32>,
    pub checkpoint_delay: Option<i32>,
    pub skip_matching: bool,
    pub auto_rollback: bool,
    pub bake_time: Option<i32>,
    pub alarms: Vec<String>,
}

/// One instance refresh, as DescribeInstanceRefreshes tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refresh {
    pub id: String,
    /// `Pending`, `InProgress`, `Successful`, `Failed`, `Cancelling`, `Cancelled`,
    /// `RollbackInProgress`, `RollbackFailed`, `RollbackSuccessful`, `Baking`.
    pub status: String,
    pub status_reason: Option<String>,
    pub percentage_complete: Option<i32>,
    pub instances_to_update: Option<i32>,
    /// `DesiredConfiguration.LaunchTemplate`: (id or name, version).
    pub desired_template: Option<String>,
    pub desired_version: Option<String>,
    pub rollback_reason: Option<String>,
    pub percentage_complete_on_rollback: Option<i32>,
}

impl Refresh {
    /// Still running: the group may not start another.
    pub fn is_active(&self) -> bool {
        matches!(
            self.status.as_str(),
            "Pending" | "InProgress" | "Cancelling" | "RollbackInProgress" | "Baking"
        )
    }

    /// Can be rolled back with RollbackInstanceRefresh.
    pub fn can_roll_back(&self) -> bool {
        matches!(self.status.as_str(), "Pending" | "InProgress" | "Baking")
    }

    /// True when the refresh asked for `version` of `template` (id or name).
    pub fn targets(&self, template: &TemplateVersion, version: i64) -> bool {
        let t = self.desired_template.as_deref();
        (t == Some(template.template_id.as_str()) || t == Some(template.template_name.as_str()))
            && self.desired_version.as_deref() == Some(version.to_string().as_str())
    }
}

/// What StartInstanceRefresh answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    Started {
        id: String,
    },
    /// `InstanceRefreshInProgress`: the group has an active refresh.
    AlreadyInProgress {
        message: String,
    },
}

/// What RollbackInstanceRefresh answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolledBack {
    RollingBack {
        id: String,
    },
    /// `ActiveInstanceRefreshNotFound` or `IrreversibleInstanceRefresh`: why it cannot.
    Impossible {
        code: String,
        message: String,
    },
}

/// One target of an ELB target group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetState {
    pub target_group: String,
    pub id: String,
    /// `initial`, `healthy`, `unhealthy`, `unused`, `draining`, `unavailable`, ...
    pub state: String,
    pub reason: Option<String>,
    pub description: Option<String>,
}

/// A CloudWatch alarm's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmState {
    pub name: String,
    /// `OK`, `ALARM`, `INSUFFICIENT_DATA`.
    pub state: String,
    pub reason: Option<String>,
}

/// Everything the roll-out step asks of AWS.
pub trait Fleet: Send + Sync {
    /// DescribeAutoScalingGroups for one group; `None` when there is no such group.
    fn group(&self, name: &str) -> impl Future<Output = Result<Option<Group>>> + Send;

    /// DescribeLaunchTemplateVersions: the named versions (`"3"`, `"$Latest"`, `"$Default"`).
    fn versions(
        &self,
        template_id: &str,
        versions: &[String],
    ) -> impl Future<Output = Result<Vec<TemplateVersion>>> + Send;

    /// The newest version whose description contains `marker`, if any (all pages).
    fn find_version(
        &self,
        template_id: &str,
        marker: &str,
    ) -> impl Future<Output = Result<Option<TemplateVersion>>> + Send;

    /// CreateLaunchTemplateVersion from `source` with `image_id`.
    fn create_version(
        &self,
        template_id: &str,
        source: i64,
        image_id: &str,
        description: &str,
    ) -> impl Future<Output = Result<TemplateVersion>> + Send;

    /// DescribeImages for one image; `None` when it does not exist (or is not shared with us).
    fn image(&self, image_id: &str) -> impl Future<Output = Result<Option<Image>>> + Send;

    /// DescribeInstanceRefreshes of a group, newest first; only `ids` when not empty.
    fn refreshes(
        &self,
        group: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Refresh>>> + Send;

    fn start_refresh(
        &self,
        request: &RefreshRequest,
    ) -> impl Future<Output = Result<Started>> + Send;

    fn rollback_refresh(&self, group: &str) -> impl Future<Output = Result<RolledBack>> + Send;

    /// UpdateAutoScalingGroup: the group launches `version` of its template from now on.
    fn set_group_version(
        &self,
        group: &str,
        template_id: &str,
        version: i64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// DescribeTargetHealth of one target group.
    fn target_health(
        &self,
        target_group: &str,
    ) -> impl Future<Output = Result<Vec<TargetState>>> + Send;

    /// DescribeAlarms by name (metric and composite alarms).
    fn alarms(&self, names: &[String]) -> impl Future<Output = Result<Vec<AlarmState>>> + Send;
}
