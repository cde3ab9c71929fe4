//! [`NamedTargets`] for EBS: the snapshots one `CreateSnapshots` made (one point in time, tagged
//! `snapstage:group=<instance>` and with the run) restored into new volumes whose `Name` tag is
//! the name the user chose. EBS assigns the ids; the step reports them.
//!
//! - The group is the run and instance of `snapshotId` (any snapshot of the group), or the newest
//!   group snapstage made in which every source's snapshot is completed.
//! - A target name is the `Name` tag: a volume with that tag made by this run is reused; any other
//!   volume with it blocks the name (an EBS volume cannot be overwritten with a snapshot).
//! - A rollback deletes the volumes this run made (`DeleteVolume`, after reading their tags
//!   again).

use aws_sdk_ec2::types::{Filter, ResourceType};

use super::client::{
    Created, TAG_GROUP, client_token, create_once_per_try, filter, run_tags_with, single_try,
};
use super::marks::volume_marks;
use super::model::{managed, snapshot_info, volume_info};
use super::{B, Ebs};
use crate::aws::aws_error;
use crate::error::{Error, Result};
use crate::interlock::markers::{TAG_EXECUTION, TAG_MANAGED_BY, execution_tag};
use crate::interlock::{BoxFuture, Deletion};
use crate::job::contract::Execution;
use crate::storage::{
    Backend, ExistingTarget, GroupSnapshot, NamedTargets, SnapshotInfo, SnapshotState, VolumeInfo,
    VolumeSpec, VolumeState, check_id,
};

/// The tag that names an EBS volume in the console and in `targets[].name`.
const TAG_NAME: &str = "Name";

fn tag_of<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// One state for the group: failed if one failed, pending (the least progress) if one is.
fn group_state(members: &[(String, SnapshotInfo)]) -> SnapshotState {
    let mut least: Option<u8> = None;
    for (_, s) in members {
        match &s.state {
            SnapshotState::Failed(why) => {
                return SnapshotState::Failed(format!("snapshot {}: {why}", s.id));
            }
            SnapshotState::Pending { percent } => {
                least = Some(least.map_or(*percent, |l| l.min(*percent)));
            }
            SnapshotState::Ready => {}
        }
    }
    least.map_or(SnapshotState::Ready, |percent| SnapshotState::Pending {
        percent,
    })
}

impl Ebs {
    /// Every snapshot of the group `group` (an instance) the run tagged `execution` made.
    async fn group_members(
        &self,
        execution: &str,
        group: &str,
    ) -> Result<Vec<(String, SnapshotInfo)>> {
        let mut pages = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter(&format!("tag:{TAG_EXECUTION}"), execution))
            .filters(filter(&format!("tag:{TAG_GROUP}"), group))
            .into_paginator()
            .send();
        let mut members = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(B, "DescribeSnapshots", e))?;
            for s in page.snapshots() {
                if managed(s.tags()) {
                    let info = snapshot_info(s)?;
                    members.push((info.source.clone(), info));
                }
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(members)
    }

    fn group(&self, id: &str, group: &str, members: Vec<(String, SnapshotInfo)>) -> GroupSnapshot {
        let ids: Vec<&str> = members.iter().map(|(_, s)| s.id.as_str()).collect();
        GroupSnapshot {
            id: id.to_string(),
            what: format!(
                "the snapshots of instance {group} taken together ({})",
                ids.join(", ")
            ),
            state: group_state(&members),
            members,
        }
    }

    /// The group snapshot `id` belongs to.
    async fn group_of(&self, id: &str) -> Result<GroupSnapshot> {
        let s = &self.describe_snapshot(id).await?;
        let (Some(run), Some(group), true) = (
            tag_of(s.tags(), TAG_EXECUTION),
            tag_of(s.tags(), TAG_GROUP),
            managed(s.tags()),
        ) else {
            return Err(Error::parameter(
                "snapshotId",
                format!(
                    "{id} is not one of several snapshots taken together by snapstage (no {TAG_GROUP} tag); with targets, name a snapshot snapshot-production made of several volumes of one instance"
                ),
            ));
        };
        let members = self.group_members(run, group).await?;
        Ok(self.group(id, group, members))
    }

    /// The newest group snapstage made in which every one of `sources` has a completed snapshot.
    async fn newest_group(&self, sources: &[String]) -> Result<Option<GroupSnapshot>> {
        let mut pages = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(
                Filter::builder()
                    .name("volume-id")
                    .set_values(Some(sources.to_vec()))
                    .build(),
            )
            .filters(filter(
                &format!("tag:{TAG_MANAGED_BY}"),
                crate::interlock::markers::MANAGED_BY,
            ))
            .filters(filter("tag-key", TAG_GROUP))
            .filters(filter("status", "completed"))
            .into_paginator()
            .send();
        // (run, instance) → (newest start time, the snapshots of `sources` in it)
        let mut groups: Vec<(
            (String, String),
            aws_smithy_types::DateTime,
            Vec<SnapshotInfo>,
        )> = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(B, "DescribeSnapshots", e))?;
            for s in page.snapshots() {
                let (Some(run), Some(group), Some(t)) = (
                    tag_of(s.tags(), TAG_EXECUTION),
                    tag_of(s.tags(), TAG_GROUP),
                    s.start_time(),
                ) else {
                    continue;
                };
                let key = (run.to_string(), group.to_string());
                let info = snapshot_info(s)?;
                match groups.iter_mut().find(|(k, _, _)| *k == key) {
                    Some((_, newest, snaps)) => {
                        if t > newest {
                            *newest = *t;
                        }
                        snaps.push(info);
                    }
                    None => groups.push((key, *t, vec![info])),
                }
            }
        }
        groups.retain(|(_, _, snaps)| {
            sources.iter().all(|v| {
                snaps
                    .iter()
                    .any(|s| &s.source == v && s.state == SnapshotState::Ready)
            })
        });
        groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let Some(((run, group), _, snaps)) = groups.into_iter().next() else {
            return Ok(None);
        };
        let first = sources
            .first()
            .and_then(|v| snaps.iter().find(|s| &s.source == v))
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let members = self.group_members(&run, &group).await?;
        Ok(Some(self.group(&first, &group, members)))
    }

    /// The volumes named `name` (tag `Name`), not being deleted.
    async fn named(&self, name: &str) -> Result<Vec<aws_sdk_ec2::types::Volume>> {
        use aws_sdk_ec2::types::VolumeState as S;
        let mut pages = self
            .ec2
            .describe_volumes()
            .filters(filter(&format!("tag:{TAG_NAME}"), name))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(B, "DescribeVolumes", e))?;
            out.extend(
                page.volumes()
                    .iter()
                    .filter(|v| !matches!(v.state(), Some(S::Deleting) | Some(S::Deleted)))
                    .filter(|v| tag_of(v.tags(), TAG_NAME) == Some(name))
                    .cloned(),
            );
        }
        Ok(out)
    }

    /// This run's volume named `name`, if any.
    async fn run_volume(&self, name: &str, execution: &Execution) -> Result<Option<VolumeInfo>> {
        let run = execution_tag(execution);
        let found = self.named(name).await?;
        found
            .iter()
            .find(|v| tag_of(v.tags(), TAG_EXECUTION) == Some(run.as_str()))
            .map(volume_info)
            .transpose()
            .map(|v| v.filter(|v| !matches!(v.state, VolumeState::Failed(_))))
    }

    async fn restore_named(
        &self,
        snapshot: &SnapshotInfo,
        name: &str,
        spec: &VolumeSpec,
        execution: &Execution,
    ) -> Result<VolumeInfo> {
        let token = client_token(execution, &format!("{}\n{name}", snapshot.id));
        let sent = create_once_per_try(
            "CreateVolume",
            || async {
                self.ec2
                    .create_volume()
                    .snapshot_id(&snapshot.id)
                    .availability_zone(&spec.zone)
                    .volume_type(aws_sdk_ec2::types::VolumeType::from(
                        spec.volume_type.as_str(),
                    ))
                    .client_token(&token)
                    .tag_specifications(run_tags_with(
                        ResourceType::Volume,
                        execution,
                        "staging",
                        Some(&snapshot.id),
                        &[(TAG_NAME, name)],
                    ))
                    .customize()
                    .config_override(single_try())
                    .send()
                    .await
                    .map_err(|e| aws_error(B, "CreateVolume", e))
            },
            || async { self.run_volume(name, execution).await },
        )
        .await?;
        let out = match sent {
            Created::Sent(out) => out,
            Created::Found(found) => return Ok(found),
        };
        let id = out.volume_id().ok_or_else(|| Error::Backend {
            backend: B,
            message: "CreateVolume returned no id".into(),
            source: None,
        })?;
        tracing::info!(volume = id, name, snapshot = %snapshot.id, zone = %spec.zone, "created named staging EBS volume");
        self.volume(id).await
    }
}

impl NamedTargets for Ebs {
    fn check_target_name(&self, field: &str, name: &str) -> Result<()> {
        // A Name tag value: up to 255 characters; no leading/trailing blanks, no control
        // characters, so the name reads the same in the console and in the outputs.
        if name.is_empty()
            || name.len() > 255
            || name.trim() != name
            || name.chars().any(char::is_control)
        {
            return Err(Error::parameter(
                field,
                format!(
                    "expected a volume name (its Name tag: 1-255 characters, no leading or trailing blanks), got {name:?}"
                ),
            ));
        }
        if check_id(field, name, "vol-").is_ok() {
            return Err(Error::parameter(
                field,
                format!(
                    "{name:?} looks like a volume id; EBS assigns ids, the name is the volume's Name tag (e.g. \"ci-jenkins-home\")"
                ),
            ));
        }
        Ok(())
    }

    fn group_snapshot<'a>(
        &'a self,
        id: Option<&'a str>,
        sources: &'a [String],
    ) -> BoxFuture<'a, Result<Option<GroupSnapshot>>> {
        Box::pin(async move {
            match id {
                Some(id) => self.group_of(id).await.map(Some),
                None => self.newest_group(sources).await,
            }
        })
    }

    fn target<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ExistingTarget>>> {
        Box::pin(async move {
            let found = self.named(name).await?;
            // Several volumes may carry one Name: the one that blocks most decides (production,
            // then not snapstage's, then any staging volume).
            let mut best: Option<(u8, ExistingTarget)> = None;
            for v in &found {
                let id = v.volume_id().unwrap_or_default();
                let marks = volume_marks(id, v);
                let rank = if marks.production_marker().is_some() {
                    3
                } else if marks.staging_run.is_none() {
                    2
                } else {
                    1
                };
                if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                    best = Some((
                        rank,
                        ExistingTarget {
                            id: id.to_string(),
                            marks,
                            destroyed: false,
                        },
                    ));
                }
            }
            Ok(best.map(|(_, t)| t))
        })
    }

    fn can_overwrite(&self) -> std::result::Result<(), String> {
        Err("an EBS volume cannot be overwritten with a snapshot: delete it (teardown deletes staging volumes) or pick another name".into())
    }

    fn create_target<'a>(
        &'a self,
        snapshot: &'a SnapshotInfo,
        name: &'a str,
        existing: Option<&'a ExistingTarget>,
        spec: &'a VolumeSpec,
        execution: &'a Execution,
    ) -> BoxFuture<'a, Result<VolumeInfo>> {
        Box::pin(async move {
            if let Some(e) = existing {
                return Err(Error::Refused(format!(
                    "{} exists under the name {name}; an EBS volume cannot be overwritten",
                    e.id
                )));
            }
            self.restore_named(snapshot, name, spec, execution).await
        })
    }

    fn remove_target<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion>> {
        Box::pin(self.delete_staging(id, false))
    }
}
