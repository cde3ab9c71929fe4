//! [`NamedTargets`] for an array: the volumes of a protection group snapshot (replicated from
//! another array, or of a local group) copied into volumes named as the user chose.
//!
//! - The group snapshot is `snapshotId` (`PG.SUFFIX`, `SOURCE_ARRAY:PG.SUFFIX` on a replication
//!   target), or the newest complete one snapstage made of `flasharray.replicatedFrom`'s group
//!   (or of the local `flasharray.protectionGroup`). Its members are its volume snapshots
//!   `PG.SUFFIX.VOLUME`.
//! - A target is a copy (`POST /volumes?names=T`, `overwrite=true` only for an existing target the
//!   step allowed), tagged as this run's staging volume as [`Backend::create_volume`] tags one.
//! - A rollback destroys the copies (recoverable until the array eradicates them); a retry of the
//!   same run recovers a destroyed copy of its own and writes it again.

use super::FlashArray;
use super::client::{BACKEND, is_already_exists};
use super::model::volume_snapshot_info;
use super::names::check_volume_name;
use crate::error::{Error, Result};
use crate::interlock::{BoxFuture, Deletion};
use crate::job::contract::Execution;
use crate::storage::{
    ExistingTarget, GroupSnapshot, NamedTargets, SnapshotInfo, VolumeInfo, VolumeSpec,
};

impl FlashArray {
    /// The protection group snapshot `name` and its volume snapshots, or `None` when there is
    /// no such protection group snapshot.
    async fn pgroup_group(&self, name: &str) -> Result<Option<GroupSnapshot>> {
        let Some(p) = self.pgroup_snapshot(name).await? else {
            return Ok(None);
        };
        let state = self.pgroup_state(&p.name).await?;
        let info = self.pgroup_snapshot_info(&p, state);
        let prefix = format!("{}.", p.name);
        let parts = self
            .session()
            .await?
            .volume_snapshots_matching(&format!("name='{prefix}*'"))
            .await?;
        let members = parts
            .iter()
            .filter_map(|v| {
                let volume = v.name.strip_prefix(&prefix)?;
                (!volume.is_empty() && !volume.contains('.'))
                    .then(|| (volume.to_string(), volume_snapshot_info(v)))
            })
            .collect();
        Ok(Some(GroupSnapshot {
            id: p.name.clone(),
            what: format!("pg snapshot {}", p.name),
            state: info.state,
            members,
        }))
    }

    async fn newest_group(&self) -> Result<Option<GroupSnapshot>> {
        let pgroup = match (&self.replica_of, &self.pgroup) {
            (Some(r), _) => format!("{}:{}", r.array, r.pgroup),
            (None, Some(pg)) => pg.clone(),
            (None, None) => {
                return Err(Error::parameter(
                    "snapshotId",
                    "missing: targets restore the volumes of a protection group snapshot; give snapshotId (e.g. \"fa-onprem:pg-ci.snapstage-0123abcd\"), flasharray.replicatedFrom {\"array\", \"protectionGroup\"} on a replication target, or flasharray.protectionGroup",
                ));
            }
        };
        match self.complete_pgroup_snapshots(&pgroup).await?.first() {
            Some(p) => self.pgroup_group(&p.name).await,
            None => Ok(None),
        }
    }

    async fn restore_target(
        &self,
        snapshot: &SnapshotInfo,
        name: &str,
        existing: Option<&ExistingTarget>,
        execution: &Execution,
    ) -> Result<VolumeInfo> {
        if existing.is_some_and(|e| e.destroyed) {
            self.session().await?.recover_volume(name).await?;
            tracing::info!(
                volume = name,
                "recovered the destroyed staging volume to write it again"
            );
        }
        let mut info = match self
            .copy_snapshot_into(snapshot, name, existing.is_some())
            .await
        {
            Ok(v) => v,
            // A retried POST whose first answer was lost: the copy is there, from this snapshot.
            Err(e) if existing.is_none() && is_already_exists(&e) => {
                let v = self
                    .session()
                    .await?
                    .volumes(&[name])
                    .await?
                    .into_iter()
                    .next()
                    .ok_or(e)?;
                let from = v.source.as_ref().and_then(|r| r.name.as_deref());
                if from != Some(snapshot.id.as_str()) {
                    return Err(Error::Refused(format!(
                        "volume {name} appeared meanwhile (a copy of {}); restore-to-staging does not write a volume it did not check: re-run",
                        from.unwrap_or("nothing")
                    )));
                }
                super::model::volume_info(&v, Some(&snapshot.id))
            }
            Err(e) => return Err(e),
        };
        info.tags = self.tag_staging(name, execution).await?;
        Ok(info)
    }
}

impl NamedTargets for FlashArray {
    fn check_target_name(&self, field: &str, name: &str) -> Result<()> {
        check_volume_name(field, name)
    }

    fn group_snapshot<'a>(
        &'a self,
        id: Option<&'a str>,
        _sources: &'a [String],
    ) -> BoxFuture<'a, Result<Option<GroupSnapshot>>> {
        Box::pin(async move {
            let Some(id) = id else {
                return self.newest_group().await;
            };
            if id.split('.').count() != 2 {
                return Err(Error::parameter(
                    "snapshotId",
                    format!(
                        "with targets, name a protection group snapshot (PGROUP.SUFFIX, or SOURCE_ARRAY:PGROUP.SUFFIX on a replication target), not one volume's snapshot; got {id:?}"
                    ),
                ));
            }
            match self.pgroup_group(id).await? {
                Some(g) => Ok(Some(g)),
                None => Err(Error::NotFound {
                    backend: BACKEND,
                    message: format!("protection group snapshot {id}"),
                    source: None,
                }),
            }
        })
    }

    fn target<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ExistingTarget>>> {
        Box::pin(async move {
            Ok(self
                .marks_of(name, true)
                .await?
                .map(|(marks, destroyed)| ExistingTarget {
                    id: name.to_string(),
                    marks,
                    destroyed,
                }))
        })
    }

    fn can_overwrite(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    fn create_target<'a>(
        &'a self,
        snapshot: &'a SnapshotInfo,
        name: &'a str,
        existing: Option<&'a ExistingTarget>,
        _spec: &'a VolumeSpec,
        execution: &'a Execution,
    ) -> BoxFuture<'a, Result<VolumeInfo>> {
        Box::pin(self.restore_target(snapshot, name, existing, execution))
    }

    fn remove_target<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion>> {
        Box::pin(self.delete_staging(id, false))
    }
}
