//! [`Backend`] for a FlashArray or Cloud Block Store array.
//!
//! - A source is a volume name; a snapshot id is the snapshot's name, `VOLUME.SUFFIX` (or
//!   `PGROUP.SUFFIX.VOLUME` for a volume's part of a protection group snapshot, prefixed
//!   `SOURCE_ARRAY:` on a replication target).
//! - The run is encoded in the suffix, `snapstage-<hash of the execution key>`: a retry asks for
//!   that exact name and finds its own snapshot instead of making a second one.
//! - A FlashArray snapshot is usable at once; a protection group snapshot that is replicating is
//!   `Pending` with the transfer's progress until the transfer completes.
//! - A staging volume is a copy of the snapshot into `<source>-staging-<hash>`
//!   (`POST /volumes?overwrite=true`); the production volume is never a target.

use tokio::sync::OnceCell;

use super::client::{BACKEND, Client, Session, is_already_exists};
use super::model::{ProtectionGroupSnapshot, Tag, TagBatch, Transfer, Volume, VolumeSnapshot};
use crate::error::{Error, Result};
use crate::interlock::markers::{
    MANAGED_BY, TAG_EXECUTION, TAG_MANAGED_BY, TAG_ROLE, execution_tag,
};
use crate::interlock::{BoxFuture, Deletion, Marker, Marks};
use crate::job::contract::Execution;
use crate::storage::{
    Backend, Retention, SnapshotInfo, SnapshotState, VolumeInfo, VolumeSpec, VolumeState,
};

/// Every suffix snapstage gives a snapshot starts with this.
pub const SUFFIX_PREFIX: &str = "snapstage-";
/// The tag namespace of the tags snapstage puts on the staging volumes it makes.
pub const TAG_NAMESPACE: &str = "snapstage";

const GIB: i64 = 1 << 30;
/// Purity names are 1 to 63 characters.
const MAX_NAME: usize = 63;

fn run_hash(execution: &Execution) -> String {
    crate::digest::sha256_hex(execution.key.as_bytes())
}

/// The snapshot suffix for a run: `snapstage-` and 16 hex digits of the execution key's
/// SHA-256. Valid by Purity's suffix rule (1–63 letters, digits and `-`, starting and ending
/// with a letter or digit) and stable across retries of the same run.
pub fn snapshot_suffix(execution: &Execution) -> String {
    format!("{SUFFIX_PREFIX}{}", &run_hash(execution)[..16])
}

/// The name of the staging volume a run makes from `source`: `<source>-staging-<12 hex>`, the
/// source part shortened so the name stays within 63 characters.
pub fn staging_volume_name(source: &str, execution: &Execution) -> String {
    let base = volume_part(source);
    let tail = format!("-staging-{}", &run_hash(execution)[..12]);
    let cleaned: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(MAX_NAME - tail.len())
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let base = if cleaned.is_empty() {
        "snapstage"
    } else {
        cleaned
    };
    format!("{base}{tail}")
}

/// `db` for `db`, `pod::db`, `vgroup/db` and `array:db`.
fn volume_part(name: &str) -> &str {
    let name = name.rsplit("::").next().unwrap_or(name);
    let name = name.rsplit('/').next().unwrap_or(name);
    name.rsplit(':').next().unwrap_or(name)
}

/// Purity's volume name rule: 1–63 letters, digits, `-` and `_`, starting and ending with a
/// letter or digit, with at least one letter, `-` or `_`.
pub fn check_volume_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().any(|c| !c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::parameter(
            field,
            format!(
                "expected a FlashArray volume name (1-63 letters, digits, '-' or '_'), got {name:?}"
            ),
        ))
    }
}

fn rfc3339(ms: Option<i64>) -> Option<String> {
    use aws_smithy_types::date_time::{DateTime, Format};
    ms.and_then(|ms| DateTime::from_millis(ms).fmt(Format::DateTime).ok())
}

fn gib(bytes: Option<i64>) -> Option<i64> {
    bytes.map(|b| (b + GIB - 1) / GIB)
}

/// The state a protection group snapshot's transfer gives it.
pub fn transfer_state(t: &Transfer) -> SnapshotState {
    if t.destroyed == Some(true) {
        return SnapshotState::Failed(format!("{} was destroyed", t.name));
    }
    if t.completed.is_some() {
        return SnapshotState::Ready;
    }
    match (t.started, t.progress) {
        // Nothing to send (no replication target, or replication not asked for).
        (None, None) => SnapshotState::Ready,
        (_, Some(p)) if p >= 1.0 => SnapshotState::Ready,
        (_, p) => SnapshotState::Pending {
            percent: (p.unwrap_or(0.0).clamp(0.0, 1.0) * 100.0).floor().min(99.0) as u8,
        },
    }
}

fn volume_snapshot_info(s: &VolumeSnapshot) -> SnapshotInfo {
    let source = s
        .source
        .as_ref()
        .and_then(|r| r.name.clone())
        .unwrap_or_else(|| {
            s.name
                .rsplit_once('.')
                .map_or(s.name.clone(), |(v, _)| v.to_string())
        });
    SnapshotInfo {
        id: s.name.clone(),
        source,
        state: if s.destroyed == Some(true) {
            SnapshotState::Failed("destroyed (pending eradication)".into())
        } else {
            SnapshotState::Ready
        },
        started: rfc3339(s.created),
        size_gib: gib(s.provisioned),
    }
}

fn volume_info(v: &Volume, snapshot: Option<&str>) -> VolumeInfo {
    VolumeInfo {
        id: v.name.clone(),
        state: if v.destroyed == Some(true) {
            VolumeState::Failed("destroyed (pending eradication)".into())
        } else {
            VolumeState::Available
        },
        zone: None,
        snapshot: snapshot
            .map(str::to_string)
            .or_else(|| v.source.as_ref().and_then(|s| s.name.clone())),
        size_gib: gib(v.provisioned),
        tags: Vec::new(),
    }
}

/// The volumes a snapshot was taken of, as bare names: its reported source, and the volume
/// its name carries (`V` in `V.SUFFIX` and in `PGROUP.SUFFIX.V`).
fn production_volumes(snapshot: &SnapshotInfo) -> Vec<&str> {
    let mut out = vec![snapshot.source.as_str(), volume_part(&snapshot.source)];
    let parts: Vec<&str> = snapshot.id.split('.').collect();
    match parts.as_slice() {
        [v, _] => out.extend([*v, volume_part(v)]),
        [_, _, v] => out.extend([*v, volume_part(v)]),
        _ => {}
    }
    out.retain(|s| !s.is_empty());
    out
}

/// True when the snapshot's suffix is one snapstage gives.
fn made_by_snapstage(s: &VolumeSnapshot) -> bool {
    s.suffix
        .as_deref()
        .or_else(|| s.name.rsplit_once('.').map(|(_, x)| x))
        .is_some_and(|x| x.starts_with(SUFFIX_PREFIX))
}

/// `(key, value)` of tags, in the order the array listed them.
fn tag_pairs(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .filter_map(|t| Some((t.key.clone()?, t.value.clone().unwrap_or_default())))
        .collect()
}

/// The tags that make a volume this run's staging volume (as on EBS: managed-by, execution,
/// role), not copyable: a copy of it is nobody's staging volume.
fn staging_tags(execution: &Execution) -> [(&'static str, String); 3] {
    [
        (TAG_MANAGED_BY, MANAGED_BY.to_string()),
        (TAG_EXECUTION, execution_tag(execution)),
        (TAG_ROLE, "staging".to_string()),
    ]
}

/// A FlashArray / Cloud Block Store array. Logs in on first use; [`FlashArray::close`] logs out.
#[derive(Debug)]
pub struct FlashArray {
    client: Client,
    session: OnceCell<Session>,
    /// Snapshot this protection group (the source named like it) instead of single volumes.
    pgroup: Option<String>,
    /// On a replication target: restore from snapshots replicated from this array's group.
    replica_of: Option<ReplicaSource>,
}

/// Where replicated snapshots come from, as seen on a replication target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSource {
    pub array: String,
    pub pgroup: String,
}

impl FlashArray {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            session: OnceCell::new(),
            pgroup: None,
            replica_of: None,
        }
    }

    /// Snapshots of the source named `pgroup` are protection group snapshots, replicated to
    /// the group's targets at once.
    pub fn with_protection_group(mut self, pgroup: impl Into<String>) -> Self {
        self.pgroup = Some(pgroup.into());
        self
    }

    /// The newest snapshot of a volume is the newest one replicated from `source`.
    pub fn replicated_from(mut self, source: ReplicaSource) -> Self {
        self.replica_of = Some(source);
        self
    }

    fn is_pgroup(&self, source: &str) -> bool {
        self.pgroup.as_deref() == Some(source)
    }

    /// The session, logging in on first use.
    pub async fn session(&self) -> Result<&Session> {
        self.session.get_or_try_init(|| self.client.login()).await
    }

    /// Logs out if a session was opened.
    pub async fn close(self) -> Result<()> {
        match self.session.into_inner() {
            Some(s) => s.logout().await,
            None => Ok(()),
        }
    }

    async fn volume_snapshot(&self, name: &str) -> Result<Option<VolumeSnapshot>> {
        match self.session().await?.volume_snapshots(&[name]).await {
            Ok(v) => Ok(v.into_iter().next()),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn pgroup_snapshot(&self, name: &str) -> Result<Option<ProtectionGroupSnapshot>> {
        match self.session().await?.pgroup_snapshots(&[name]).await {
            Ok(v) => Ok(v.into_iter().next()),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The replication state of protection group snapshot `name`.
    async fn pgroup_state(&self, name: &str) -> Result<SnapshotState> {
        let t = self.session().await?.pgroup_transfers(&[name]).await?;
        Ok(t.first().map_or(SnapshotState::Ready, transfer_state))
    }

    fn pgroup_snapshot_info(
        &self,
        s: &ProtectionGroupSnapshot,
        state: SnapshotState,
    ) -> SnapshotInfo {
        SnapshotInfo {
            id: s.name.clone(),
            source: s
                .source
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default(),
            state: if s.destroyed == Some(true) {
                SnapshotState::Failed("destroyed (pending eradication)".into())
            } else {
                state
            },
            started: rfc3339(s.created),
            size_gib: None,
        }
    }

    /// Snapshots protection group `pgroup` for this run, replicating it to the group's targets
    /// now (`replicate_now=true&apply_retention=true`); a retry finds the run's snapshot. The
    /// answer is `Pending` with the transfer's progress until replication completes.
    pub async fn snapshot_pgroup(
        &self,
        pgroup: &str,
        execution: &Execution,
    ) -> Result<SnapshotInfo> {
        let suffix = snapshot_suffix(execution);
        let name = format!("{pgroup}.{suffix}");
        let snap = match self.pgroup_snapshot(&name).await? {
            Some(s) => {
                tracing::info!(snapshot = %name, "reusing this run's protection group snapshot");
                s
            }
            None => {
                let s = self.session().await?;
                match s.create_pgroup_snapshot(pgroup, &suffix, true).await {
                    Ok(created) => {
                        tracing::info!(snapshot = %created.name, "created protection group snapshot, replicating now");
                        created
                    }
                    Err(e) if is_already_exists(&e) => {
                        self.pgroup_snapshot(&name).await?.ok_or(e)?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let state = self.pgroup_state(&snap.name).await?;
        Ok(self.pgroup_snapshot_info(&snap, state))
    }

    /// On a replication target: the newest completely replicated snapshot of `volume` in
    /// protection group `pgroup` of array `source_array`, made by snapstage
    /// (`SOURCE_ARRAY:PGROUP.snapstage-….VOLUME`).
    pub async fn newest_replicated_snapshot(
        &self,
        source_array: &str,
        pgroup: &str,
        volume: &str,
    ) -> Result<Option<SnapshotInfo>> {
        let replica = format!("{source_array}:{pgroup}");
        let s = self.session().await?;
        let filter = format!("suffix='{SUFFIX_PREFIX}*'");
        let snaps = match s.pgroup_snapshots_of(&replica, Some(&filter), 20).await {
            Ok(v) => v,
            // Nothing replicated yet: the replica group does not exist on this array.
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let snaps: Vec<_> = snaps
            .into_iter()
            .filter(|p| {
                p.destroyed != Some(true)
                    && p.suffix
                        .as_deref()
                        .is_some_and(|x| x.starts_with(SUFFIX_PREFIX))
            })
            .collect();
        if snaps.is_empty() {
            return Ok(None);
        }
        let names: Vec<&str> = snaps.iter().map(|p| p.name.as_str()).collect();
        let transfers = s.pgroup_transfers(&names).await?;
        for p in &snaps {
            let done = transfers
                .iter()
                .find(|t| t.name == p.name)
                .is_none_or(|t| transfer_state(t) == SnapshotState::Ready);
            if !done {
                continue;
            }
            let vol_snap = format!("{}.{volume}", p.name);
            if let Some(v) = self.volume_snapshot(&vol_snap).await? {
                return Ok(Some(volume_snapshot_info(&v)));
            }
        }
        Ok(None)
    }

    /// Copies `snapshot` into volume `target`, overwriting a previous copy. Refuses to write
    /// to the snapshot's own source volume.
    pub async fn copy_snapshot(&self, snapshot: &SnapshotInfo, target: &str) -> Result<VolumeInfo> {
        check_volume_name("targetVolume", target)?;
        if production_volumes(snapshot).contains(&target) {
            return Err(Error::Refused(format!(
                "{target} is the source of snapshot {}; snapstage copies snapshots into staging volumes only, never over the production volume",
                snapshot.id
            )));
        }
        let v = self
            .session()
            .await?
            .copy_volume(target, &snapshot.id, true)
            .await?;
        tracing::info!(volume = %v.name, snapshot = %snapshot.id, "copied snapshot into staging volume");
        Ok(volume_info(&v, Some(&snapshot.id)))
    }
}

impl FlashArray {
    /// Tags `volume` as this run's staging volume (`PUT /volumes/tags/batch`, idempotent) unless
    /// it already is; returns its tags.
    async fn tag_staging(
        &self,
        volume: &str,
        execution: &Execution,
    ) -> Result<Vec<(String, String)>> {
        let s = self.session().await?;
        let mut tags = tag_pairs(&s.volume_tags(&[volume]).await?);
        let want = staging_tags(execution);
        let missing = want
            .iter()
            .any(|(k, v)| !tags.iter().any(|(tk, tv)| tk == k && tv == v));
        if missing {
            let batch: Vec<TagBatch> = want
                .iter()
                .map(|(k, v)| TagBatch {
                    key: k,
                    value: v,
                    namespace: TAG_NAMESPACE,
                    copyable: false,
                })
                .collect();
            s.put_volume_tags(volume, &batch).await?;
            tracing::info!(volume, "tagged the staging volume with this run");
            tags.retain(|(k, _)| !want.iter().any(|(w, _)| w == k));
            tags.extend(want.iter().map(|(k, v)| (k.to_string(), v.clone())));
        }
        Ok(tags)
    }

    /// The production interlock's read of `volume` (deploy-staging-db imports it): its tags
    /// and the tags of every protection group that holds it. `None` when it does not exist or
    /// is destroyed.
    pub async fn marks(&self, volume: &str) -> Result<Option<Marks>> {
        let s = self.session().await?;
        let found = match s.volumes(&[volume]).await {
            Ok(v) => v,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !found
            .iter()
            .any(|v| v.name == volume && v.destroyed != Some(true))
        {
            return Ok(None);
        }
        let tags = tag_pairs(&s.volume_tags(&[volume]).await?);
        let mut markers: Vec<Marker> = tags.iter().map(|(k, v)| Marker::new("tag", k, v)).collect();
        let groups: Vec<String> = s
            .pgroups_of_volume(volume)
            .await?
            .into_iter()
            .filter_map(|m| m.group.and_then(|g| g.name))
            .collect();
        if !groups.is_empty() {
            let names: Vec<&str> = groups.iter().map(String::as_str).collect();
            for t in s.pgroup_tags(&names).await? {
                let group = t
                    .resource
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default();
                if let Some(k) = t.key {
                    markers.push(Marker::new(
                        format!("protection group {group} tag"),
                        k,
                        t.value.unwrap_or_default(),
                    ));
                }
            }
        }
        let tag = |k: &str| {
            tags.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let staging = tag(TAG_MANAGED_BY).as_deref() == Some(MANAGED_BY)
            && tag(TAG_ROLE).as_deref() == Some("staging");
        Ok(Some(Marks {
            what: format!("FlashArray volume {volume}"),
            markers,
            staging_run: tag(TAG_EXECUTION).filter(|_| staging),
        }))
    }

    /// Teardown's deletion of a staging volume ([`crate::interlock::VolumeMarks::delete_staging`]):
    /// its tags (and its protection groups') read again now; destroyed only when
    /// [`crate::interlock::deletable`] allows it and no host is connected. Destroyed, not
    /// eradicated: the array eradicates it after its own delay (recoverable until then).
    pub async fn delete_staging(&self, volume: &str, dry_run: bool) -> Result<Deletion> {
        let s = self.session().await?;
        let found = match s.volumes(&[volume]).await {
            Ok(v) => v,
            Err(Error::NotFound { .. }) => return Ok(Deletion::Gone),
            Err(e) => return Err(e),
        };
        let Some(v) = found
            .into_iter()
            .find(|v| v.name == volume && v.destroyed != Some(true))
        else {
            return Ok(Deletion::Gone);
        };
        let Some(marks) = self.marks(volume).await? else {
            return Ok(Deletion::Gone);
        };
        if let Err(why) = crate::interlock::deletable(&marks) {
            return Ok(Deletion::Kept(why));
        }
        if let Some(n) = v.connection_count.filter(|n| *n > 0) {
            return Ok(Deletion::Waiting(format!(
                "connected to {n} host(s) or host group(s)"
            )));
        }
        if dry_run {
            return Ok(Deletion::WouldDelete);
        }
        s.destroy_volume(volume).await?;
        tracing::info!(
            volume,
            "destroyed staging FlashArray volume (teardown; recoverable until the array eradicates it)"
        );
        Ok(Deletion::Deleted)
    }
}

impl Backend for FlashArray {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn retention(&self) -> Option<&dyn Retention> {
        Some(self)
    }

    async fn describe_source(&self, source: &str) -> Result<Option<i64>> {
        if self.is_pgroup(source) {
            return Ok(None);
        }
        let v = self
            .session()
            .await?
            .volumes(&[source])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound {
                backend: BACKEND,
                message: format!("volume {source}"),
            })?;
        if v.destroyed == Some(true) {
            return Err(Error::NotFound {
                backend: BACKEND,
                message: format!("volume {source} is destroyed (pending eradication)"),
            });
        }
        Ok(gib(v.provisioned))
    }

    async fn find_snapshot(
        &self,
        source: &str,
        execution: &Execution,
    ) -> Result<Option<SnapshotInfo>> {
        let name = format!("{source}.{}", snapshot_suffix(execution));
        if self.is_pgroup(source) {
            return match self.pgroup_snapshot(&name).await? {
                Some(p) => {
                    let state = self.pgroup_state(&p.name).await?;
                    Ok(Some(self.pgroup_snapshot_info(&p, state)))
                }
                None => Ok(None),
            };
        }
        Ok(self
            .volume_snapshot(&name)
            .await?
            .as_ref()
            .map(volume_snapshot_info))
    }

    async fn create_snapshot(
        &self,
        source: &str,
        execution: &Execution,
        description: &str,
    ) -> Result<SnapshotInfo> {
        if self.is_pgroup(source) {
            return self.snapshot_pgroup(source, execution).await;
        }
        let suffix = snapshot_suffix(execution);
        let s = self.session().await?;
        match s.create_volume_snapshot(source, &suffix).await {
            Ok(snap) => {
                tracing::info!(snapshot = %snap.name, volume = source, description, "created FlashArray snapshot");
                Ok(volume_snapshot_info(&snap))
            }
            // A duplicate invocation got there first: that snapshot is this run's.
            Err(e) if is_already_exists(&e) => {
                let name = format!("{source}.{suffix}");
                let snap = self.volume_snapshot(&name).await?.ok_or(e)?;
                Ok(volume_snapshot_info(&snap))
            }
            Err(e) => Err(e),
        }
    }

    async fn snapshot(&self, id: &str) -> Result<SnapshotInfo> {
        let not_found = || Error::NotFound {
            backend: BACKEND,
            message: format!("snapshot {id}"),
        };
        match id.split('.').count() {
            // VOLUME.SUFFIX, or a protection group snapshot PGROUP.SUFFIX.
            2 => {
                if let Some(v) = self.volume_snapshot(id).await? {
                    return Ok(volume_snapshot_info(&v));
                }
                let p = self.pgroup_snapshot(id).await?.ok_or_else(not_found)?;
                let state = self.pgroup_state(&p.name).await?;
                Ok(self.pgroup_snapshot_info(&p, state))
            }
            // PGROUP.SUFFIX.VOLUME: usable once its protection group snapshot has arrived.
            3 => {
                let v = self.volume_snapshot(id).await?.ok_or_else(not_found)?;
                let mut info = volume_snapshot_info(&v);
                if info.state == SnapshotState::Ready
                    && let Some((pg, _)) = id.rsplit_once('.')
                {
                    info.state = self.pgroup_state(pg).await?;
                }
                Ok(info)
            }
            _ => Err(not_found()),
        }
    }

    async fn newest_snapshot(&self, source: &str) -> Result<Option<SnapshotInfo>> {
        if let Some(r) = &self.replica_of {
            return self
                .newest_replicated_snapshot(&r.array, &r.pgroup, source)
                .await;
        }
        Ok(self.managed_snapshots(source).await?.into_iter().next())
    }

    async fn find_volume(&self, execution: &Execution) -> Result<Option<VolumeInfo>> {
        let tail = &staging_volume_name("x", execution)[1..];
        let vols = self
            .session()
            .await?
            .volumes_matching(&format!("name='*{tail}'"))
            .await?;
        let Some(v) = vols
            .iter()
            .find(|v| v.name.ends_with(tail) && v.destroyed != Some(true))
        else {
            return Ok(None);
        };
        // A run cut short between the copy and its tags: tag it now.
        let mut info = volume_info(v, None);
        info.tags = self.tag_staging(&v.name, execution).await?;
        Ok(Some(info))
    }

    async fn create_volume(
        &self,
        snapshot: &SnapshotInfo,
        _spec: &VolumeSpec,
        execution: &Execution,
    ) -> Result<VolumeInfo> {
        // A zone and a volume type mean nothing on an array: the copy lands on the array that
        // holds the snapshot, with the snapshot's size.
        let source = if snapshot.source.is_empty() {
            snapshot.id.rsplit('.').next().unwrap_or_default()
        } else {
            snapshot.source.as_str()
        };
        let target = staging_volume_name(source, execution);
        let mut info = self.copy_snapshot(snapshot, &target).await?;
        info.tags = self.tag_staging(&target, execution).await?;
        Ok(info)
    }

    fn check_source(&self, field: &str, source: &str) -> Result<()> {
        check_volume_name(field, volume_part(source))
    }

    fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()> {
        let parts: Vec<&str> = id.split('.').collect();
        let ok = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| {
                let p = p.rsplit(':').next().unwrap_or(p);
                !p.is_empty()
                    && p.len() <= MAX_NAME
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if ok {
            Ok(())
        } else {
            Err(Error::parameter(
                field,
                format!(
                    "expected a snapshot name like \"db.snapstage-0123abcd\" (VOLUME.SUFFIX or PGROUP.SUFFIX.VOLUME), got {id:?}"
                ),
            ))
        }
    }

    async fn volume(&self, id: &str) -> Result<VolumeInfo> {
        let v = self
            .session()
            .await?
            .volumes(&[id])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound {
                backend: BACKEND,
                message: format!("volume {id}"),
            })?;
        Ok(volume_info(&v, None))
    }
}

impl Retention for FlashArray {
    fn managed_snapshots<'a>(
        &'a self,
        source: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SnapshotInfo>>> {
        Box::pin(async move {
            if self.is_pgroup(source) {
                return Err(Error::parameter(
                    "retain",
                    format!(
                        "protection group {source} keeps snapshots by its own retention policy (snapstage snapshots it with apply_retention); remove retain"
                    ),
                ));
            }
            let filter = format!("suffix='{SUFFIX_PREFIX}*'");
            let snaps = self
                .session()
                .await?
                .volume_snapshots_of(source, Some(&filter))
                .await?;
            // Newest first (the client sorts); the suffix is checked again here.
            Ok(snaps
                .iter()
                .filter(|s| s.destroyed != Some(true) && made_by_snapstage(s))
                .map(volume_snapshot_info)
                .collect())
        })
    }

    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(snap) = self.volume_snapshot(id).await? else {
                return Ok(());
            };
            if snap.destroyed == Some(true) {
                return Ok(());
            }
            if !made_by_snapstage(&snap) {
                return Err(Error::Refused(format!(
                    "snapshot {id} has no {SUFFIX_PREFIX}* suffix; snapstage destroys only snapshots it made"
                )));
            }
            self.session().await?.destroy_volume_snapshot(id).await?;
            tracing::info!(
                snapshot = id,
                "destroyed FlashArray snapshot (retention; recoverable until eradicated)"
            );
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(k: &str) -> Execution {
        Execution {
            key: k.into(),
            origin: "codepipeline".into(),
            pipeline: None,
            commit: None,
        }
    }

    fn is_valid_suffix(s: &str) -> bool {
        (1..=63).contains(&s.len())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().any(|c| c.is_ascii_alphabetic() || c == '-')
    }

    #[test]
    fn suffix_is_stable_per_run_and_valid() {
        let a = snapshot_suffix(&ex("shop/0f1e2d3c/Snapshot"));
        assert_eq!(a, snapshot_suffix(&ex("shop/0f1e2d3c/Snapshot")));
        assert_ne!(a, snapshot_suffix(&ex("shop/0f1e2d3d/Snapshot")));
        assert!(a.starts_with(SUFFIX_PREFIX));
        assert_eq!(a.len(), SUFFIX_PREFIX.len() + 16);
        assert!(is_valid_suffix(&a), "{a}");
        // Any key, however long or odd, gives a valid suffix.
        assert!(is_valid_suffix(&snapshot_suffix(&ex(&"ü/ ".repeat(500)))));
    }

    #[test]
    fn staging_names_are_valid_and_never_the_source() {
        let e = ex("run-1");
        let n = staging_volume_name("db-prod", &e);
        assert!(n.starts_with("db-prod-staging-"), "{n}");
        check_volume_name("t", &n).unwrap();
        assert_ne!(n, "db-prod");
        let long = staging_volume_name(&"v".repeat(63), &e);
        assert!(long.len() <= 63, "{long}");
        check_volume_name("t", &long).unwrap();
        assert!(staging_volume_name("pod1::db", &e).starts_with("db-staging-"));
        assert!(staging_volume_name("fa-1:db", &e).starts_with("db-staging-"));
        assert!(staging_volume_name("---", &e).starts_with("snapstage-staging-"));
        // The name ends with the run's hash: find_volume looks for it.
        assert_eq!(
            &staging_volume_name("a", &e)[1..],
            &staging_volume_name("b", &e)[1..]
        );
    }

    #[test]
    fn volume_names_follow_purity_rules() {
        check_volume_name("t", "db_staging-1").unwrap();
        for bad in ["", "-db", "db-", "db.snap", "12345", &"x".repeat(64), "a b"] {
            assert!(check_volume_name("t", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transfer_progress_maps_to_pending_then_ready() {
        let t = |progress: Option<f64>, started: Option<i64>, completed: Option<i64>| Transfer {
            name: "pg.snapstage-1".into(),
            destroyed: Some(false),
            progress,
            started,
            completed,
            data_transferred: None,
        };
        assert_eq!(
            transfer_state(&t(Some(0.0), Some(1), None)),
            SnapshotState::Pending { percent: 0 }
        );
        assert_eq!(
            transfer_state(&t(Some(0.666), Some(1), None)),
            SnapshotState::Pending { percent: 66 }
        );
        assert_eq!(
            transfer_state(&t(Some(0.9999), Some(1), None)),
            SnapshotState::Pending { percent: 99 }
        );
        assert_eq!(
            transfer_state(&t(Some(1.0), Some(1), Some(2))),
            SnapshotState::Ready
        );
        assert_eq!(transfer_state(&t(None, None, None)), SnapshotState::Ready);
        let mut d = t(Some(0.5), Some(1), None);
        d.destroyed = Some(true);
        assert!(matches!(transfer_state(&d), SnapshotState::Failed(_)));
    }

    #[test]
    fn snapshot_times_are_rfc3339_and_sizes_round_up() {
        assert_eq!(
            rfc3339(Some(1_700_000_000_123)).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(gib(Some(1)), Some(1));
        assert_eq!(gib(Some(10 * GIB)), Some(10));
        assert_eq!(gib(None), None);
    }
}
