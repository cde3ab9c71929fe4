//! Pure Storage FlashArray and Cloud Block Store over REST 2.x: [`Backend`] for an array,
//! protection group replication.
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
//!
//! | where | what |
//! | --- | --- |
//! | `mod.rs` | [`FlashArray`]: [`Backend`], [`Retention`], protection group snapshots and replication |
//! | [`client`] | TLS, version negotiation, login/logout, paging, retries |
//! | `api.rs` | the operations snapstage uses on a [`Session`] |
//! | [`model`] | the response and request shapes we use, named as in the official spec, and their mapping to [`SnapshotInfo`] / [`VolumeInfo`] |
//! | `names.rs` | snapshot suffixes, staging volume names, Purity's name rules |
//! | `marks.rs` | the production interlock's reads and teardown's deletes of staging volumes |
//! | `targets.rs` | [`NamedTargets`](crate::storage::NamedTargets): a protection group snapshot's volumes copied to chosen names |
//! | `tests.rs` | unit tests |
//!
//! The client is checked against the official OpenAPI spec by the FlashArray double
//! (`tests/doubles/flasharray.py`, driven by `tests/tests/flasharray.rs`).

use tokio::sync::OnceCell;

use self::client::{BACKEND, is_already_exists};
use self::model::{
    ProtectionGroupSnapshot, VolumeSnapshot, gib, rfc3339, transfer_state, volume_info,
    volume_snapshot_info,
};
use self::names::{MAX_NAME, made_by_snapstage, production_volumes, volume_part};
use crate::error::{Error, Result};
use crate::interlock::BoxFuture;
use crate::job::contract::Execution;
use crate::storage::{Backend, Retention, SnapshotInfo, SnapshotState, VolumeInfo, VolumeSpec};

mod api;
pub mod client;
mod marks;
pub mod model;
mod names;
mod targets;

pub use client::{ApiToken, ApiVersion, Client, Config, Retry, Session};
pub use names::{
    SUFFIX_PREFIX, TAG_NAMESPACE, check_volume_name, snapshot_suffix, staging_volume_name,
};

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
        for p in self.complete_pgroup_snapshots(&replica).await? {
            let vol_snap = format!("{}.{volume}", p.name);
            if let Some(v) = self.volume_snapshot(&vol_snap).await? {
                return Ok(Some(volume_snapshot_info(&v)));
            }
        }
        Ok(None)
    }

    /// The snapshots snapstage made of protection group `pgroup` (`SOURCE_ARRAY:PGROUP` for a
    /// replica on a target) that are complete here (not destroyed, transfer done), newest first.
    pub(super) async fn complete_pgroup_snapshots(
        &self,
        pgroup: &str,
    ) -> Result<Vec<ProtectionGroupSnapshot>> {
        let s = self.session().await?;
        let filter = format!("suffix='{SUFFIX_PREFIX}*'");
        let snaps = match s.pgroup_snapshots_of(pgroup, Some(&filter), 20).await {
            Ok(v) => v,
            // Nothing replicated yet: the replica group does not exist on this array.
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
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
            return Ok(snaps);
        }
        let names: Vec<&str> = snaps.iter().map(|p| p.name.as_str()).collect();
        let transfers = s.pgroup_transfers(&names).await?;
        Ok(snaps
            .into_iter()
            .filter(|p| {
                transfers
                    .iter()
                    .find(|t| t.name == p.name)
                    .is_none_or(|t| transfer_state(t) == SnapshotState::Ready)
            })
            .collect())
    }

    /// Copies `snapshot` into volume `target`, overwriting a previous copy. Refuses to write
    /// to the snapshot's own source volume.
    pub async fn copy_snapshot(&self, snapshot: &SnapshotInfo, target: &str) -> Result<VolumeInfo> {
        self.copy_snapshot_into(snapshot, target, true).await
    }

    /// [`FlashArray::copy_snapshot`], overwriting an existing `target` only when `overwrite`.
    pub(super) async fn copy_snapshot_into(
        &self,
        snapshot: &SnapshotInfo,
        target: &str,
        overwrite: bool,
    ) -> Result<VolumeInfo> {
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
            .copy_volume(target, &snapshot.id, overwrite)
            .await?;
        tracing::info!(volume = %v.name, snapshot = %snapshot.id, "copied snapshot into staging volume");
        Ok(volume_info(&v, Some(&snapshot.id)))
    }
}

impl Backend for FlashArray {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn retention(&self) -> Option<&dyn Retention> {
        Some(self)
    }

    fn named_targets(&self) -> Option<&dyn crate::storage::NamedTargets> {
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
                source: None,
            })?;
        if v.destroyed == Some(true) {
            return Err(Error::NotFound {
                backend: BACKEND,
                message: format!("volume {source} is destroyed (pending eradication)"),
                source: None,
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
            source: None,
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
                source: None,
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
mod tests;
