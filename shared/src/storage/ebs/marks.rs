//! The production interlock's reads and teardown's deletes of EBS volumes
//! ([`crate::interlock::VolumeMarks`], through [`crate::storage::open::ImportMarks`]).

use super::model::managed;
use super::{B, Ebs};
use crate::aws::aws_error;
use crate::error::{Error, Result};
use crate::interlock::Deletion;
use crate::interlock::markers::{TAG_EXECUTION, TAG_ROLE};

impl Ebs {
    /// The production interlock's read of a volume (deploy-staging-db imports it): its tags
    /// from DescribeVolumes; `None` when it does not exist.
    pub async fn marks(&self, id: &str) -> Result<Option<crate::interlock::Marks>> {
        let out = match self.ec2.describe_volumes().volume_ids(id).send().await {
            Ok(out) => out,
            Err(e) => {
                return match aws_error(B, "DescribeVolumes", e) {
                    Error::NotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        Ok(out.volumes().first().map(|v| volume_marks(id, v)))
    }

    /// Teardown's deletion of a staging volume ([`crate::interlock::VolumeMarks::delete_staging`]):
    /// its tags and state read again now; deleted only when [`crate::interlock::deletable`]
    /// allows it and it is `available` (detached). Never waits: an attached volume is
    /// [`Deletion::Waiting`].
    pub async fn delete_staging(&self, id: &str, dry_run: bool) -> Result<Deletion> {
        use aws_sdk_ec2::error::ProvideErrorMetadata;
        use aws_sdk_ec2::types::VolumeState as S;
        let out = match self.ec2.describe_volumes().volume_ids(id).send().await {
            Ok(out) => out,
            Err(e) => {
                return match aws_error(B, "DescribeVolumes", e) {
                    Error::NotFound { .. } => Ok(Deletion::Gone),
                    other => Err(other),
                };
            }
        };
        let Some(v) = out.volumes().first() else {
            return Ok(Deletion::Gone);
        };
        if matches!(v.state(), Some(S::Deleting) | Some(S::Deleted)) {
            return Ok(Deletion::Gone);
        }
        if let Err(why) = crate::interlock::deletable(&volume_marks(id, v)) {
            return Ok(Deletion::Kept(why));
        }
        match v.state() {
            Some(S::Available) | Some(S::Error) => {}
            other => {
                let attached: Vec<String> = v
                    .attachments()
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {}",
                            a.instance_id().unwrap_or("?"),
                            a.state().map(|s| s.as_str()).unwrap_or("attached")
                        )
                    })
                    .collect();
                return Ok(Deletion::Waiting(format!(
                    "{}{}",
                    other.map(|s| s.as_str()).unwrap_or("creating"),
                    if attached.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", attached.join(", "))
                    }
                )));
            }
        }
        if dry_run {
            return Ok(Deletion::WouldDelete);
        }
        match self.ec2.delete_volume().volume_id(id).send().await {
            Ok(_) => {
                tracing::info!(volume = id, "deleted staging EBS volume (teardown)");
                Ok(Deletion::Deleted)
            }
            // Attached again between the read and the delete: a later round deletes it.
            Err(e) if e.code() == Some("VolumeInUse") || e.code() == Some("IncorrectState") => {
                Ok(Deletion::Waiting(format!(
                    "in-use ({})",
                    e.message().unwrap_or("DeleteVolume refused it")
                )))
            }
            Err(e) => match aws_error(B, "DeleteVolume", e) {
                Error::NotFound { .. } => Ok(Deletion::Gone),
                other => Err(other),
            },
        }
    }
}

/// The interlock's marks of an EBS volume: its tags; a staging run when it carries
/// managed-by snapstage and role staging.
pub(super) fn volume_marks(id: &str, v: &aws_sdk_ec2::types::Volume) -> crate::interlock::Marks {
    let tags: Vec<(&str, &str)> = v
        .tags()
        .iter()
        .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
        .collect();
    let tag = |k: &str| tags.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let staging = managed(v.tags()) && tag(TAG_ROLE) == Some("staging");
    crate::interlock::Marks {
        what: format!("EBS volume {id}"),
        markers: tags
            .iter()
            .map(|(k, v)| crate::interlock::Marker::new("tag", *k, *v))
            .collect(),
        staging_run: tag(TAG_EXECUTION).filter(|_| staging).map(str::to_string),
    }
}
