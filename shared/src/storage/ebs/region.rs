//! [`RegionCopy`] for EBS: `CopySnapshot` into another region, tagged with the run and the
//! snapshot it copies, found again by those tags on a retry.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::ResourceType;

use super::client::{Created, TAG_COPY_OF, create_once_per_try, filter, run_tags_with, single_try};
use super::model::snapshot_info;
use super::{B, Ebs};
use crate::aws::aws_error;
use crate::error::{Error, Result};
use crate::interlock::BoxFuture;
use crate::interlock::markers::{TAG_EXECUTION, execution_tag};
use crate::job::contract::Execution;
use crate::storage::{CopyTarget, RegionCopy, SnapshotInfo, SnapshotState};

/// The copy of `snapshot` this run made in the client's region, if any (a failed one is replaced).
async fn find_copy(
    dst: &Client,
    snapshot: &str,
    execution: &Execution,
) -> Result<Option<SnapshotInfo>> {
    let found = dst
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter(
            &format!("tag:{TAG_EXECUTION}"),
            &execution_tag(execution),
        ))
        .filters(filter(&format!("tag:{TAG_COPY_OF}"), snapshot))
        .send()
        .await
        .map_err(|e| aws_error(B, "DescribeSnapshots (copy region)", e))?;
    Ok(found
        .snapshots()
        .iter()
        .map(snapshot_info)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .find(|s| !matches!(s.state, SnapshotState::Failed(_))))
}

impl RegionCopy for Ebs {
    fn copy_to_region<'a>(
        &'a self,
        snapshot: &'a SnapshotInfo,
        to: &'a CopyTarget,
        execution: &'a Execution,
    ) -> BoxFuture<'a, Result<SnapshotInfo>> {
        Box::pin(async move {
            let dst = self.in_region(&to.region);
            if let Some(copy) = find_copy(&dst, &snapshot.id, execution).await? {
                tracing::info!(copy = %copy.id, region = %to.region, "reusing this run's snapshot copy");
                return Ok(copy);
            }
            let source_region = self
                .ec2
                .config()
                .region()
                .map(|r| r.to_string())
                .ok_or_else(|| {
                    Error::Configuration(
                        "copyTo: the function has no region of its own (AWS_REGION)".into(),
                    )
                })?;
            if source_region == to.region {
                return Err(Error::parameter(
                    "copyTo.region",
                    format!("{source_region} is the snapshot's own region; name another region"),
                ));
            }
            // CopySnapshot takes no client token either: sent once per try, the run's copy looked up
            // before trying again (as CreateSnapshot).
            let (dst, source_region) = (&dst, source_region.as_str());
            let sent = create_once_per_try(
                "CopySnapshot",
                move || async move {
                    dst.copy_snapshot()
                        .source_region(source_region)
                        .source_snapshot_id(&snapshot.id)
                        .description(format!(
                            "snapstage copy of {} from {source_region}",
                            snapshot.id
                        ))
                        .set_encrypted(to.kms_key_id.as_ref().map(|_| true))
                        .set_kms_key_id(to.kms_key_id.clone())
                        .tag_specifications(run_tags_with(
                            ResourceType::Snapshot,
                            execution,
                            "snapshot-copy",
                            Some(&snapshot.source),
                            &[(TAG_COPY_OF, &snapshot.id)],
                        ))
                        .customize()
                        .config_override(single_try())
                        .send()
                        .await
                        .map_err(|e| aws_error(B, "CopySnapshot", e))
                },
                move || async move { find_copy(dst, &snapshot.id, execution).await },
            )
            .await?;
            let out = match sent {
                Created::Sent(out) => out,
                Created::Found(found) => return Ok(found),
            };
            let id = out.snapshot_id().ok_or_else(|| Error::Backend {
                backend: B,
                message: "CopySnapshot returned no id".into(),
                source: None,
            })?;
            tracing::info!(copy = id, snapshot = %snapshot.id, region = %to.region, "copying EBS snapshot");
            self.snapshot_in_region(id, to).await
        })
    }

    fn snapshot_in_region<'a>(
        &'a self,
        id: &'a str,
        to: &'a CopyTarget,
    ) -> BoxFuture<'a, Result<SnapshotInfo>> {
        Box::pin(async move {
            let out = self
                .in_region(&to.region)
                .describe_snapshots()
                .snapshot_ids(id)
                .send()
                .await
                .map_err(|e| aws_error(B, "DescribeSnapshots (copy region)", e))?;
            let s = out.snapshots().first().ok_or_else(|| Error::NotFound {
                backend: B,
                message: format!("snapshot {id} in {}", to.region),
                source: None,
            })?;
            snapshot_info(s)
        })
    }
}
