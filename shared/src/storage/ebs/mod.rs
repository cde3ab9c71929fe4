//! Amazon EBS over the EC2 API: CreateSnapshot with tags, DescribeSnapshots to find and follow
//! it, CreateVolume from a snapshot in the requested AZ with a client token. Several volumes of
//! one instance are snapshotted at one point in time with one CreateSnapshots ([`PointInTime`]).
//!
//! | where | what |
//! | --- | --- |
//! | `mod.rs` | [`Ebs`]: [`Backend`] and [`Retention`] |
//! | `client.rs` | the run's tags and filters; create calls sent once per try |
//! | `model.rs` | EC2 snapshots and volumes as [`SnapshotInfo`] / [`VolumeInfo`] |
//! | `group.rs` | [`PointInTime`]: one `CreateSnapshots` for the volumes of one instance |
//! | `region.rs` | [`RegionCopy`]: `CopySnapshot` to another region (`copyTo`) |
//! | `marks.rs` | the production interlock's reads and teardown's deletes of staging volumes |
//! | `targets.rs` | [`NamedTargets`](crate::storage::NamedTargets): a group's snapshots into volumes named by their `Name` tag |
//! | `tests.rs` | unit tests |

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::ResourceType;

use self::client::{Created, client_token, create_once_per_try, filter, run_tags, single_try};
use self::model::{managed, snapshot_info, volume_info};
use super::{
    Backend, PointInTime, RegionCopy, Retention, SnapshotInfo, SnapshotState, VolumeInfo,
    VolumeSpec, VolumeState, check_id,
};
use crate::aws::aws_error;
use crate::error::{Error, Result};
use crate::interlock::BoxFuture;
use crate::interlock::markers::{
    MANAGED_BY, TAG_EXECUTION, TAG_MANAGED_BY, TAG_ROLE, execution_tag,
};
use crate::job::contract::Execution;

mod client;
mod group;
mod marks;
mod model;
mod region;
mod targets;

pub use client::TAG_GROUP;

const B: &str = "ebs";

#[derive(Debug, Clone)]
pub struct Ebs {
    ec2: Client,
}

impl Ebs {
    pub fn new(ec2: Client) -> Self {
        Self { ec2 }
    }

    /// The same client for another region.
    fn in_region(&self, region: &str) -> Client {
        Client::from_conf(
            self.ec2
                .config()
                .to_builder()
                .region(aws_config::Region::new(region.to_string()))
                .build(),
        )
    }

    /// One snapshot as DescribeSnapshots gives it; `NotFound` when it does not exist.
    async fn describe_snapshot(&self, id: &str) -> Result<aws_sdk_ec2::types::Snapshot> {
        let out = self
            .ec2
            .describe_snapshots()
            .snapshot_ids(id)
            .send()
            .await
            .map_err(|e| aws_error(B, "DescribeSnapshots", e))?;
        out.snapshots()
            .first()
            .cloned()
            .ok_or_else(|| Error::NotFound {
                backend: B,
                message: format!("snapshot {id}"),
                source: None,
            })
    }
}

impl Backend for Ebs {
    fn name(&self) -> &'static str {
        B
    }

    fn retention(&self) -> Option<&dyn Retention> {
        Some(self)
    }

    fn point_in_time(&self) -> Option<&dyn PointInTime> {
        Some(self)
    }

    fn region_copy(&self) -> Option<&dyn RegionCopy> {
        Some(self)
    }

    fn named_targets(&self) -> Option<&dyn crate::storage::NamedTargets> {
        Some(self)
    }

    async fn describe_source(&self, source: &str) -> Result<Option<i64>> {
        let out = self
            .ec2
            .describe_volumes()
            .volume_ids(source)
            .send()
            .await
            .map_err(|e| aws_error(B, "DescribeVolumes", e))?;
        let v = out.volumes().first().ok_or_else(|| Error::NotFound {
            backend: B,
            message: format!("volume {source}"),
            source: None,
        })?;
        Ok(v.size().map(i64::from))
    }

    async fn find_snapshot(
        &self,
        source: &str,
        execution: &Execution,
    ) -> Result<Option<SnapshotInfo>> {
        let out = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter(
                &format!("tag:{TAG_EXECUTION}"),
                &execution_tag(execution),
            ))
            .filters(filter("volume-id", source))
            .send()
            .await
            .map_err(|e| aws_error(B, "DescribeSnapshots", e))?;
        // Prefer one that did not fail: a failed snapshot of this run is replaced, not reused.
        let mut found: Vec<SnapshotInfo> = out
            .snapshots()
            .iter()
            .map(snapshot_info)
            .collect::<Result<_>>()?;
        found.sort_by_key(|s| matches!(s.state, SnapshotState::Failed(_)));
        Ok(found
            .into_iter()
            .find(|s| !matches!(s.state, SnapshotState::Failed(_))))
    }

    async fn create_snapshot(
        &self,
        source: &str,
        execution: &Execution,
        description: &str,
    ) -> Result<SnapshotInfo> {
        // CreateSnapshot takes no client token: an SDK retry after a lost answer would make a
        // second snapshot. Each try is sent once; after a transient failure the run's tag is
        // looked up before the next try.
        let sent = create_once_per_try(
            "CreateSnapshot",
            move || async move {
                self.ec2
                    .create_snapshot()
                    .volume_id(source)
                    .description(description)
                    .tag_specifications(run_tags(
                        ResourceType::Snapshot,
                        execution,
                        "snapshot",
                        Some(source),
                    ))
                    .customize()
                    .config_override(single_try())
                    .send()
                    .await
                    .map_err(|e| aws_error(B, "CreateSnapshot", e))
            },
            move || async move { self.find_snapshot(source, execution).await },
        )
        .await?;
        let out = match sent {
            Created::Sent(out) => out,
            Created::Found(found) => return Ok(found),
        };
        let id = out.snapshot_id().ok_or_else(|| Error::Backend {
            backend: B,
            message: "CreateSnapshot returned no id".into(),
            source: None,
        })?;
        tracing::info!(snapshot = id, volume = source, "created EBS snapshot");
        self.snapshot(id).await
    }

    async fn snapshot(&self, id: &str) -> Result<SnapshotInfo> {
        snapshot_info(&self.describe_snapshot(id).await?)
    }

    async fn newest_snapshot(&self, source: &str) -> Result<Option<SnapshotInfo>> {
        let mut pages = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter("volume-id", source))
            .filters(filter(&format!("tag:{TAG_MANAGED_BY}"), MANAGED_BY))
            .filters(filter("status", "completed"))
            .into_paginator()
            .send();
        // Newest by start time, then by id: the order retention keeps (`managed_snapshots`), so
        // two snapshots started in the same instant resolve the same way in both.
        let mut newest: Option<(aws_smithy_types::DateTime, SnapshotInfo)> = None;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(B, "DescribeSnapshots", e))?;
            for s in page.snapshots() {
                let Some(t) = s.start_time() else { continue };
                let info = snapshot_info(s)?;
                if newest
                    .as_ref()
                    .is_none_or(|(best, b)| (t, &info.id) > (best, &b.id))
                {
                    newest = Some((*t, info));
                }
            }
        }
        Ok(newest.map(|(_, s)| s))
    }

    async fn find_volume(&self, execution: &Execution) -> Result<Option<VolumeInfo>> {
        let out = self
            .ec2
            .describe_volumes()
            .filters(filter(
                &format!("tag:{TAG_EXECUTION}"),
                &execution_tag(execution),
            ))
            .filters(filter(&format!("tag:{TAG_ROLE}"), "staging"))
            .send()
            .await
            .map_err(|e| aws_error(B, "DescribeVolumes", e))?;
        let vols: Vec<VolumeInfo> = out
            .volumes()
            .iter()
            .map(volume_info)
            .collect::<Result<_>>()?;
        Ok(vols
            .into_iter()
            .find(|v| !matches!(v.state, VolumeState::Failed(_))))
    }

    async fn create_volume(
        &self,
        snapshot: &SnapshotInfo,
        spec: &VolumeSpec,
        execution: &Execution,
    ) -> Result<VolumeInfo> {
        // The client token makes a repeated CreateVolume return the same volume on AWS; the
        // lookup by tag after a transient failure keeps that true where tokens are not honoured
        // (moto and other emulators), exactly as for snapshots.
        let sent = create_once_per_try(
            "CreateVolume",
            move || async move {
                self.ec2
                    .create_volume()
                    .snapshot_id(&snapshot.id)
                    .availability_zone(&spec.zone)
                    .volume_type(aws_sdk_ec2::types::VolumeType::from(
                        spec.volume_type.as_str(),
                    ))
                    .client_token(client_token(execution, &snapshot.id))
                    .tag_specifications(run_tags(
                        ResourceType::Volume,
                        execution,
                        "staging",
                        Some(&snapshot.id),
                    ))
                    .customize()
                    .config_override(single_try())
                    .send()
                    .await
                    .map_err(|e| aws_error(B, "CreateVolume", e))
            },
            move || async move { self.find_volume(execution).await },
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
        tracing::info!(volume = id, snapshot = %snapshot.id, zone = %spec.zone, "created staging EBS volume");
        self.volume(id).await
    }

    fn check_source(&self, field: &str, source: &str) -> Result<()> {
        check_id(field, source, "vol-")
    }

    fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()> {
        check_id(field, id, "snap-")
    }

    async fn volume(&self, id: &str) -> Result<VolumeInfo> {
        let out = self
            .ec2
            .describe_volumes()
            .volume_ids(id)
            .send()
            .await
            .map_err(|e| aws_error(B, "DescribeVolumes", e))?;
        let v = out.volumes().first().ok_or_else(|| Error::NotFound {
            backend: B,
            message: format!("volume {id}"),
            source: None,
        })?;
        volume_info(v)
    }
}

impl Retention for Ebs {
    fn managed_snapshots<'a>(
        &'a self,
        source: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SnapshotInfo>>> {
        Box::pin(async move {
            let mut pages = self
                .ec2
                .describe_snapshots()
                .owner_ids("self")
                .filters(filter("volume-id", source))
                .filters(filter(&format!("tag:{TAG_MANAGED_BY}"), MANAGED_BY))
                .into_paginator()
                .send();
            let mut found = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| aws_error(B, "DescribeSnapshots", e))?;
                for s in page.snapshots() {
                    // The filter is the server's; the tag is checked again here.
                    if managed(s.tags()) && s.volume_id() == Some(source) {
                        found.push((s.start_time().copied(), snapshot_info(s)?));
                    }
                }
            }
            found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.id.cmp(&a.1.id)));
            Ok(found.into_iter().map(|(_, s)| s).collect())
        })
    }

    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let out = self
                .ec2
                .describe_snapshots()
                .snapshot_ids(id)
                .send()
                .await
                .map_err(|e| aws_error(B, "DescribeSnapshots", e))?;
            let Some(s) = out.snapshots().first() else {
                return Ok(()); // already gone
            };
            if !managed(s.tags()) {
                return Err(Error::Refused(format!(
                    "snapshot {id} does not carry {TAG_MANAGED_BY}={MANAGED_BY}; snapstage deletes only snapshots it made"
                )));
            }
            match self.ec2.delete_snapshot().snapshot_id(id).send().await {
                Ok(_) => {
                    tracing::info!(snapshot = id, "deleted EBS snapshot (retention)");
                    Ok(())
                }
                Err(e) => match aws_error(B, "DeleteSnapshot", e) {
                    Error::NotFound { .. } => Ok(()),
                    other => Err(other),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests;
