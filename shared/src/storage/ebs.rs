//! Amazon EBS over the EC2 API: CreateSnapshot with tags, DescribeSnapshots to find and follow
//! it, CreateVolume from a snapshot in the requested AZ with a client token. Several volumes of
//! one instance are snapshotted at one point in time with one CreateSnapshots ([`PointInTime`]).

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use aws_smithy_types::date_time::Format;

use super::{
    Backend, CopyTarget, FoundGroup, GroupPlan, PointInTime, RegionCopy, Retention, SnapshotInfo,
    SnapshotState, VolumeInfo, VolumeSpec, VolumeState, check_id,
};
use crate::error::{Error, Result, aws_error};
use crate::interlock::markers::{
    MANAGED_BY, TAG_EXECUTION, TAG_MANAGED_BY, TAG_ROLE, TAG_SOURCE, execution_tag,
};
use crate::interlock::{BoxFuture, Deletion};
use crate::job::contract::Execution;

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
}

/// The tag that ties a copy to the snapshot it was copied from.
const TAG_COPY_OF: &str = "snapstage:copy-of";
/// The tag that marks the snapshots of one CreateSnapshots call (one point in time): the
/// instance whose volumes they are. (One tag set covers the whole call, so these snapshots carry
/// no `snapstage:source`; their volume id names the source, and lookups go by volume id.)
pub const TAG_GROUP: &str = "snapstage:group";

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn run_tags(
    kind: ResourceType,
    execution: &Execution,
    role: &str,
    source: Option<&str>,
) -> TagSpecification {
    run_tags_with(kind, execution, role, source, &[])
}

fn run_tags_with(
    kind: ResourceType,
    execution: &Execution,
    role: &str,
    source: Option<&str>,
    extra: &[(&str, &str)],
) -> TagSpecification {
    let mut spec = TagSpecification::builder()
        .resource_type(kind)
        .tags(tag(TAG_MANAGED_BY, MANAGED_BY))
        .tags(tag(TAG_EXECUTION, &execution_tag(execution)))
        .tags(tag(TAG_ROLE, role));
    if let Some(s) = source {
        spec = spec.tags(tag(TAG_SOURCE, s));
    }
    if let Some(p) = &execution.pipeline {
        spec = spec.tags(tag("snapstage:pipeline", p));
    }
    if let Some(c) = &execution.commit {
        spec = spec.tags(tag("snapstage:commit", c));
    }
    for (k, v) in extra {
        spec = spec.tags(tag(k, v));
    }
    spec.build()
}

fn snapshot_info(s: &aws_sdk_ec2::types::Snapshot) -> Result<SnapshotInfo> {
    use aws_sdk_ec2::types::SnapshotState as S;
    let id = s.snapshot_id().ok_or_else(|| Error::Backend {
        backend: B,
        message: "snapshot without an id".into(),
    })?;
    let percent = s
        .progress()
        .and_then(|p| p.trim_end_matches('%').parse::<u8>().ok())
        .unwrap_or(0);
    let state = match s.state() {
        Some(S::Completed) => SnapshotState::Ready,
        Some(S::Error) | Some(S::Recoverable) => SnapshotState::Failed(format!(
            "state {}: {}",
            s.state().map(|x| x.as_str()).unwrap_or_default(),
            s.state_message().unwrap_or("no message")
        )),
        _ => SnapshotState::Pending {
            percent: percent.min(99),
        },
    };
    Ok(SnapshotInfo {
        id: id.to_string(),
        source: s.volume_id().unwrap_or_default().to_string(),
        state,
        started: s.start_time().and_then(|t| t.fmt(Format::DateTime).ok()),
        size_gib: s.volume_size().map(i64::from),
    })
}

fn volume_info(v: &aws_sdk_ec2::types::Volume) -> Result<VolumeInfo> {
    use aws_sdk_ec2::types::VolumeState as S;
    let id = v.volume_id().ok_or_else(|| Error::Backend {
        backend: B,
        message: "volume without an id".into(),
    })?;
    let state = match v.state() {
        Some(S::Available) => VolumeState::Available,
        Some(S::InUse) => VolumeState::InUse,
        Some(S::Creating) => VolumeState::Creating,
        Some(other) => VolumeState::Failed(format!("state {}", other.as_str())),
        None => VolumeState::Creating,
    };
    Ok(VolumeInfo {
        id: id.to_string(),
        state,
        zone: v.availability_zone().map(str::to_string),
        snapshot: v
            .snapshot_id()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        size_gib: v.size().map(i64::from),
        tags: v
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().into(),
                    t.value().unwrap_or_default().into(),
                )
            })
            .collect(),
    })
}

fn managed(tags: &[Tag]) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(TAG_MANAGED_BY) && t.value() == Some(MANAGED_BY))
}

/// Tries of a create call in total (each sent once, without the SDK's own retries).
const CREATE_TRIES: u32 = 3;

/// The SDK's retries off for one call: a create is retried by [`Backend`] code that first looks
/// for what an earlier try made.
fn single_try() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default()
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::standard().with_max_attempts(1))
}

/// What a create call sent once per try ([`create_once_per_try`]) ended with.
enum Created<T, R> {
    /// This try's answer.
    Sent(T),
    /// An earlier try had made it: its answer was lost.
    Found(R),
}

/// Sends a create call without the SDK's own retries (a lost answer must not make a second
/// resource); after a transient failure waits with backoff, then asks `made` whether an earlier
/// try made the resource before sending again.
async fn create_once_per_try<T, R, SendFut, MadeFut>(
    call: &str,
    mut send: impl FnMut() -> SendFut,
    mut made: impl FnMut() -> MadeFut,
) -> Result<Created<T, R>>
where
    SendFut: std::future::Future<Output = Result<T>>,
    MadeFut: std::future::Future<Output = Result<Option<R>>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match send().await {
            Ok(out) => return Ok(Created::Sent(out)),
            Err(e) if retry_create(&e, tries) => {
                tracing::warn!(call, error = %e, tries, "create failed; checking whether it was made before trying again");
                tokio::time::sleep(create_backoff(tries)).await;
                if let Some(found) = made().await? {
                    tracing::info!(call, "the resource was made: its answer was lost");
                    return Ok(Created::Found(found));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Transient failures (throttling, 5xx, a lost connection, a timeout) are tried again.
fn retry_create(e: &Error, tries: u32) -> bool {
    matches!(e, Error::Unavailable { .. }) && tries < CREATE_TRIES
}

/// Exponential backoff from 1 s with "equal jitter" (half fixed, half random), at most 8 s. The
/// first wait also gives EC2's eventually consistent Describe calls time to see a new resource.
fn create_backoff(tries: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let exp = std::time::Duration::from_secs(1u64 << tries.saturating_sub(1).min(3));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(tries);
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    exp / 2 + exp.mul_f64(fraction / 2.0)
}

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

/// A stable client token for CreateVolume (≤ 64 ASCII chars): a retry with the same token
/// returns the same volume instead of a second one.
fn client_token(execution: &Execution, snapshot: &str) -> String {
    let d = crate::digest::sha256(format!("{}\n{snapshot}", execution.key).as_bytes());
    format!("snapstage-{}", &hex::encode(d)[..40])
}

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
fn volume_marks(id: &str, v: &aws_sdk_ec2::types::Volume) -> crate::interlock::Marks {
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

/// Which volumes of an instance a CreateSnapshots of exactly `sources` leaves out: the boot
/// volume unless it is named, and every other attached data volume. Errors when a source is not
/// attached to the instance (any more).
fn exclusions(
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
fn placement(volumes: &[(String, Vec<String>)]) -> String {
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
        })?;
        tracing::info!(snapshot = id, volume = source, "created EBS snapshot");
        self.snapshot(id).await
    }

    async fn snapshot(&self, id: &str) -> Result<SnapshotInfo> {
        let out = self
            .ec2
            .describe_snapshots()
            .snapshot_ids(id)
            .send()
            .await
            .map_err(|e| aws_error(B, "DescribeSnapshots", e))?;
        let s = out.snapshots().first().ok_or_else(|| Error::NotFound {
            backend: B,
            message: format!("snapshot {id}"),
        })?;
        snapshot_info(s)
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
            })?;
            snapshot_info(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_token_is_stable_per_run_and_snapshot() {
        let ex = |k: &str| Execution {
            key: k.into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        };
        let a = client_token(&ex("run-1"), "snap-1");
        assert_eq!(a, client_token(&ex("run-1"), "snap-1"));
        assert_ne!(a, client_token(&ex("run-2"), "snap-1"));
        assert_ne!(a, client_token(&ex("run-1"), "snap-2"));
        assert!(a.len() <= 64 && a.is_ascii());
    }

    #[test]
    fn a_group_call_excludes_every_volume_not_named_the_boot_volume_too() {
        use aws_sdk_ec2::types::{EbsInstanceBlockDevice, Instance, InstanceBlockDeviceMapping};
        let mapping = |dev: &str, vol: &str| {
            InstanceBlockDeviceMapping::builder()
                .device_name(dev)
                .ebs(EbsInstanceBlockDevice::builder().volume_id(vol).build())
                .build()
        };
        let instance = Instance::builder()
            .instance_id("i-1")
            .root_device_name("/dev/xvda")
            .block_device_mappings(mapping("/dev/xvda", "vol-boot"))
            .block_device_mappings(mapping("/dev/sdf", "vol-a"))
            .block_device_mappings(mapping("/dev/sdg", "vol-b"))
            .block_device_mappings(mapping("/dev/sdh", "vol-c"))
            .build();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            exclusions(&instance, "i-1", &names(&["vol-a", "vol-b"])).unwrap(),
            (true, names(&["vol-c"]))
        );
        // The boot volume is snapshotted only when named (and never listed as a data volume).
        assert_eq!(
            exclusions(&instance, "i-1", &names(&["vol-boot", "vol-c"])).unwrap(),
            (false, names(&["vol-a", "vol-b"]))
        );
        let e = exclusions(&instance, "i-1", &names(&["vol-a", "vol-x"])).unwrap_err();
        assert!(
            e.to_string()
                .contains("vol-x is no longer attached to instance i-1"),
            "{e}"
        );
    }

    #[test]
    fn placement_names_each_volume_and_where_it_is() {
        let p = placement(&[
            ("vol-a".into(), vec!["i-1".into()]),
            ("vol-b".into(), vec!["i-2".into()]),
            ("vol-c".into(), vec![]),
        ]);
        assert_eq!(
            p,
            "vol-a is on instance i-1, vol-b is on instance i-2, vol-c is not attached to an instance"
        );
    }

    #[test]
    fn snapshot_states_map_with_progress() {
        use aws_sdk_ec2::types::{Snapshot, SnapshotState as S};
        let s = Snapshot::builder()
            .snapshot_id("snap-1")
            .volume_id("vol-1")
            .state(S::Pending)
            .progress("42%")
            .build();
        assert_eq!(
            snapshot_info(&s).unwrap().state,
            SnapshotState::Pending { percent: 42 }
        );
        let s = Snapshot::builder()
            .snapshot_id("snap-1")
            .state(S::Error)
            .state_message("KMS key disabled")
            .build();
        match snapshot_info(&s).unwrap().state {
            SnapshotState::Failed(m) => assert!(m.contains("KMS key disabled")),
            other => panic!("{other:?}"),
        }
    }
}
