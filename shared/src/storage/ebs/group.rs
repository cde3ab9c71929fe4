//! [`PointInTime`] for EBS: the volumes of one instance cut at one point in time by one
//! `CreateSnapshots` that excludes every other volume of the instance.

use aws_sdk_ec2::types::{Filter, ResourceType};

use super::client::{Created, TAG_GROUP, create_once_per_try, filter, run_tags_with, single_try};
use super::model::{managed, snapshot_info};
use super::{B, Ebs};
use crate::aws::aws_error;
use crate::error::{Error, Result};
use crate::interlock::BoxFuture;
use crate::interlock::markers::{TAG_EXECUTION, execution_tag};
use crate::job::contract::Execution;
use crate::storage::{
    Backend, FoundGroup, GroupPlan, PointInTime, Retention, SnapshotInfo, SnapshotState,
};

/// Which volumes of an instance a CreateSnapshots of exactly `sources` leaves out: the boot
/// volume unless it is named, and every other attached data volume. Errors when a source is not
/// attached to the instance (any more).
pub(super) fn exclusions(
    instance: &aws_sdk_ec2::types::Instance,
    host: &str,
    sources: &[String],
) -> Result<(bool, Vec<String>)> {
    let root = instance.root_device_name();
    let mut boot = None;
    let mut attached = Vec::new();
    for m in instance.block_device_mappings() {
        let Some(vol) = m.ebs().and_then(|e| e.volume_id()) else {
            continue;
        };
        if root.is_some() && m.device_name() == root {
            boot = Some(vol.to_string());
        } else {
            attached.push(vol.to_string());
        }
    }
    if let Some(v) = sources
        .iter()
        .find(|v| boot.as_ref() != Some(*v) && !attached.contains(v))
    {
        return Err(Error::Backend {
            backend: B,
            message: format!(
                "volume {v} is no longer attached to instance {host}; run the step again to snapshot the volumes where they are now"
            ),
            source: None,
        });
    }
    let exclude_boot = boot.is_none_or(|b| !sources.contains(&b));
    let others = attached
        .into_iter()
        .filter(|v| !sources.contains(v))
        .collect();
    Ok((exclude_boot, others))
}

/// `vol-a on i-1, vol-b not attached` for a user deciding what to do.
pub(super) fn placement(volumes: &[(String, Vec<String>)]) -> String {
    volumes
        .iter()
        .map(|(v, on)| match on.as_slice() {
            [] => format!("{v} is not attached to an instance"),
            [one] => format!("{v} is on instance {one}"),
            many => format!("{v} is on instances {}", many.join(" and ")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Ebs {
    /// Where `sources` are attached: all to one instance, or not.
    async fn group_plan(&self, sources: &[String]) -> Result<GroupPlan> {
        use aws_sdk_ec2::types::VolumeAttachmentState as A;
        let out = self
            .ec2
            .describe_volumes()
            .set_volume_ids(Some(sources.to_vec()))
            .send()
            .await
            .map_err(|e| aws_error(B, "DescribeVolumes", e))?;
        let mut volumes = Vec::with_capacity(sources.len());
        for source in sources {
            let v = out
                .volumes()
                .iter()
                .find(|v| v.volume_id() == Some(source.as_str()))
                .ok_or_else(|| Error::NotFound {
                    backend: B,
                    message: format!("volume {source}"),
                    source: None,
                })?;
            let on: Vec<String> = v
                .attachments()
                .iter()
                .filter(|a| a.state() == Some(&A::Attached))
                .filter_map(|a| a.instance_id().map(str::to_string))
                .collect();
            volumes.push((source.clone(), on));
        }
        // An instance every source is attached to (Multi-Attach volumes may be on several).
        let host = volumes.first().and_then(|(_, on)| {
            on.iter()
                .find(|i| volumes.iter().all(|(_, o)| o.contains(i)))
                .cloned()
        });
        Ok(match host {
            Some(host) => GroupPlan::Together { host },
            None => GroupPlan::Apart {
                why: placement(&volumes),
            },
        })
    }

    /// This run's snapshots of `sources` (one DescribeSnapshots by the run's tag), and whether
    /// they carry one group tag.
    async fn run_snapshots(&self, sources: &[String], execution: &Execution) -> Result<FoundGroup> {
        let mut pages = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter(
                &format!("tag:{TAG_EXECUTION}"),
                &execution_tag(execution),
            ))
            .filters(
                Filter::builder()
                    .name("volume-id")
                    .set_values(Some(sources.to_vec()))
                    .build(),
            )
            .into_paginator()
            .send();
        let mut all = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(B, "DescribeSnapshots", e))?;
            for s in page.snapshots() {
                if !managed(s.tags()) {
                    continue;
                }
                let group = s
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(TAG_GROUP))
                    .and_then(|t| t.value())
                    .map(str::to_string);
                all.push((snapshot_info(s)?, group));
            }
        }
        // A failed snapshot of this run is replaced, not reused (as `find_snapshot`).
        let found: Vec<Option<&(SnapshotInfo, Option<String>)>> = sources
            .iter()
            .map(|v| {
                all.iter()
                    .find(|(i, _)| &i.source == v && !matches!(i.state, SnapshotState::Failed(_)))
            })
            .collect();
        let first_group = found.first().and_then(|f| f.and_then(|(_, g)| g.as_ref()));
        let together = first_group.is_some()
            && found
                .iter()
                .all(|f| f.is_some_and(|(_, g)| g.as_ref() == first_group));
        Ok(FoundGroup {
            snapshots: found
                .into_iter()
                .map(|f| f.map(|(i, _)| i.clone()))
                .collect(),
            together,
        })
    }

    /// One CreateSnapshots of exactly `sources` on instance `host`.
    async fn create_group(
        &self,
        sources: &[String],
        host: &str,
        execution: &Execution,
        description: &str,
    ) -> Result<Vec<SnapshotInfo>> {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(host)
            .send()
            .await
            .map_err(|e| aws_error(B, "DescribeInstances", e))?;
        let instance = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(host))
            .ok_or_else(|| Error::NotFound {
                backend: B,
                message: format!("instance {host} (the volumes' instance)"),
                source: None,
            })?;
        let (exclude_boot, others) = exclusions(instance, host, sources)?;
        let spec = aws_sdk_ec2::types::InstanceSpecification::builder()
            .instance_id(host)
            .exclude_boot_volume(exclude_boot)
            .set_exclude_data_volume_ids((!others.is_empty()).then_some(others))
            .build();
        // CreateSnapshots takes no client token either: sent once per try, the run's group looked
        // up before trying again (as CreateSnapshot).
        let spec = &spec;
        let sent = create_once_per_try(
            "CreateSnapshots",
            move || async move {
                self.ec2
                    .create_snapshots()
                    .instance_specification(spec.clone())
                    .description(description)
                    .tag_specifications(run_tags_with(
                        ResourceType::Snapshot,
                        execution,
                        "snapshot",
                        None,
                        &[(TAG_GROUP, host)],
                    ))
                    .customize()
                    .config_override(single_try())
                    .send()
                    .await
                    .map_err(|e| aws_error(B, "CreateSnapshots", e))
            },
            move || async move {
                let found = self.run_snapshots(sources, execution).await?;
                Ok(found.snapshots.iter().any(Option::is_some).then_some(found))
            },
        )
        .await?;
        let made: Vec<(String, String)> = match sent {
            Created::Found(found) => {
                return found.snapshots.into_iter().zip(sources).map(|(s, v)| {
                    s.ok_or_else(|| Error::Backend {
                        backend: B,
                        message: format!(
                            "CreateSnapshots on {host}: the answer was lost and the run's snapshot of {v} is missing; re-run the pipeline for a new group"
                        ),
                        source: None,
                    })
                }).collect();
            }
            Created::Sent(out) => out
                .snapshots()
                .iter()
                .filter_map(|s| Some((s.volume_id()?.to_string(), s.snapshot_id()?.to_string())))
                .collect(),
        };
        // Exactly the named volumes: a snapshot of any other one (a volume attached meanwhile, or
        // an EC2 that ignored an exclusion) is deleted at once, so retention never counts it.
        for (vol, id) in made.iter().filter(|(v, _)| !sources.contains(v)) {
            tracing::warn!(snapshot = %id, volume = %vol, instance = host, "CreateSnapshots also snapshotted a volume not asked for; deleting it");
            self.delete_snapshot(id).await?;
        }
        let mut snapshots = Vec::with_capacity(sources.len());
        for v in sources {
            let id = made
                .iter()
                .find(|(vol, _)| vol == v)
                .map(|(_, id)| id)
                .ok_or_else(|| Error::Backend {
                    backend: B,
                    message: format!(
                        "CreateSnapshots on {host} made no snapshot of {v} (detached meanwhile?); run the step again"
                    ),
                    source: None,
                })?;
            snapshots.push(self.snapshot(id).await?);
        }
        let ids: Vec<&str> = snapshots.iter().map(|s| s.id.as_str()).collect();
        tracing::info!(snapshots = ?ids, volumes = ?sources, instance = host, "created EBS snapshots at one point in time");
        Ok(snapshots)
    }
}

impl PointInTime for Ebs {
    fn plan<'a>(&'a self, sources: &'a [String]) -> BoxFuture<'a, Result<GroupPlan>> {
        Box::pin(self.group_plan(sources))
    }

    fn find<'a>(
        &'a self,
        sources: &'a [String],
        execution: &'a Execution,
    ) -> BoxFuture<'a, Result<FoundGroup>> {
        Box::pin(self.run_snapshots(sources, execution))
    }

    fn create<'a>(
        &'a self,
        sources: &'a [String],
        host: &'a str,
        execution: &'a Execution,
        description: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SnapshotInfo>>> {
        Box::pin(self.create_group(sources, host, execution, description))
    }
}
