//! [`NamedTargets`] for CSI: the members of one VolumeGroupSnapshot snapstage made (with
//! `csi.groupSnapshotClass` and a `selector`) restored into staging PVCs named as the user chose.
//!
//! - The group snapshot is `snapshotId` (the VolumeGroupSnapshot's name, `snapstage-<run hash>`),
//!   or the newest ready one snapstage made in `csi.namespace` that holds every target's source
//!   PVC. Its members are `<group>/<pvc>`, as snapshot-production reports them.
//! - A target is the same objects the single-volume restore makes (a pre-bound
//!   VolumeSnapshotContent with `deletionPolicy: Retain`, a VolumeSnapshot, a PVC restoring from
//!   it), labelled as this run's staging objects; the VolumeSnapshot and the PVC carry the
//!   target's name.
//! - A PVC cannot be overwritten in place: an earlier run's staging PVC under the name is refused.
//! - A rollback deletes the PVC and its staging VolumeSnapshot, each only when it is snapstage's
//!   staging object of the same run; the Retain content stays (nobody deletes contents).

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;

use super::model::{VolumeGroupSnapshot, VolumeSnapshot, snapshot_info};
use super::names::label_of;
use super::params::check_name;
use super::{B, Csi};
use crate::error::{Error, Result};
use crate::interlock::markers::execution_tag;
use crate::interlock::{BoxFuture, Deletion, Marker, Marks};
use crate::job::contract::Execution;
use crate::kube::api;
use crate::kube::labels::{
    ANNOTATION_EXECUTION_KEY, LABEL_MANAGED_BY, LABEL_ROLE, MANAGED_BY, ROLE_SNAPSHOT, ROLE_STAGING,
};
use crate::kube::ownership;
use crate::storage::{
    ExistingTarget, GroupSnapshot, NamedTargets, SnapshotInfo, SnapshotState, VolumeInfo,
    VolumeSpec,
};

/// Whether an object is snapstage's staging object (managed by snapstage, role staging, not
/// labelled production).
fn is_staging(meta: &ObjectMeta) -> bool {
    ownership::is_managed(meta)
        && !ownership::is_production(meta)
        && label_of(meta, LABEL_ROLE) == Some(ROLE_STAGING)
}

impl Csi {
    /// The VolumeGroupSnapshot `name` and its member snapshots (by source PVC), or `None`.
    async fn group(&self, name: &str) -> Result<Option<GroupSnapshot>> {
        let Some(g) = api::get_opt(&self.groups(), name).await? else {
            return Ok(None);
        };
        ownership::require_managed("VolumeGroupSnapshot", &g.metadata, "restore from")?;
        let snapshots = api::list(&self.snapshots(), &ListParams::default()).await?;
        Ok(Some(self.group_of(&g, &snapshots)))
    }

    fn group_of(&self, g: &VolumeGroupSnapshot, snapshots: &[VolumeSnapshot]) -> GroupSnapshot {
        let name = g.metadata.name.clone().unwrap_or_default();
        let status = g.status.as_ref();
        let mut members: Vec<(String, SnapshotInfo)> = snapshots
            .iter()
            .filter_map(|s| {
                let pvc = s.spec.source.persistent_volume_claim_name.as_deref()?;
                super::model::is_member(s, &name, pvc)
                    .then(|| (pvc.to_string(), snapshot_info(&format!("{name}/{pvc}"), s)))
            })
            .collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let state = if let Some(e) = status.and_then(|s| s.error.as_ref()) {
            SnapshotState::Failed(e.message.clone().unwrap_or_else(|| "error".into()))
        } else if status.and_then(|s| s.ready_to_use) == Some(true) {
            match members
                .iter()
                .find(|(_, s)| s.state != SnapshotState::Ready)
            {
                Some((_, s)) => s.state.clone(),
                None => SnapshotState::Ready,
            }
        } else {
            SnapshotState::Pending { percent: 0 }
        };
        GroupSnapshot {
            id: name.clone(),
            what: format!("VolumeGroupSnapshot {}/{name}", self.params.namespace),
            state,
            members,
        }
    }

    /// The newest ready VolumeGroupSnapshot snapstage made that holds every one of `sources`.
    async fn newest_group(&self, sources: &[String]) -> Result<Option<GroupSnapshot>> {
        if self.params.group_snapshot_class.is_none() {
            return Err(Error::parameter(
                "snapshotId",
                "missing: with backend csi, targets restore the members of one VolumeGroupSnapshot snapstage made; give snapshotId (its name, e.g. \"snapstage-0123abcd\") or csi.groupSnapshotClass to use the newest one",
            ));
        }
        let mut groups = api::list(
            &self.groups(),
            &ListParams::default().labels(&format!(
                "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ROLE}={ROLE_SNAPSHOT}"
            )),
        )
        .await?;
        groups.retain(|g| ownership::is_managed(&g.metadata));
        groups.sort_by(|a, b| {
            b.metadata
                .creation_timestamp
                .cmp(&a.metadata.creation_timestamp)
                .then_with(|| b.metadata.name.cmp(&a.metadata.name))
        });
        if groups.is_empty() {
            return Ok(None);
        }
        let snapshots = api::list(&self.snapshots(), &ListParams::default()).await?;
        Ok(groups
            .iter()
            .map(|g| self.group_of(g, &snapshots))
            .find(|g| {
                g.state == SnapshotState::Ready
                    && sources
                        .iter()
                        .all(|s| g.members.iter().any(|(m, _)| m == s))
            }))
    }

    /// The marks of a staging PVC: its labels, and the run it records when it is snapstage's
    /// staging PVC.
    fn claim_marks(&self, pvc: &PersistentVolumeClaim, ns: &str) -> Marks {
        let meta = &pvc.metadata;
        let markers = meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| Marker::new("label", k, v))
            .collect();
        let staging =
            ownership::is_managed(meta) && label_of(meta, LABEL_ROLE) == Some(ROLE_STAGING);
        let run = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_EXECUTION_KEY))
            .map(|key| {
                execution_tag(&Execution {
                    key: key.clone(),
                    origin: String::new(),
                    pipeline: None,
                    commit: None,
                })
            })
            .or_else(|| ownership::execution_of(meta).map(str::to_string));
        Marks {
            what: format!("PVC {ns}/{}", meta.name.as_deref().unwrap_or_default()),
            markers,
            staging_run: run.filter(|_| staging),
        }
    }

    /// Deletes the staging PVC `name` and its VolumeSnapshot, each only when it is snapstage's
    /// staging object of the PVC's run. The Retain VolumeSnapshotContent stays.
    async fn delete_target(&self, name: &str) -> Result<Deletion> {
        let ns = self.staging_namespace()?.to_string();
        let claims = self.staging::<PersistentVolumeClaim>()?;
        let Some(pvc) = api::get_opt(&claims, name).await? else {
            return Ok(Deletion::Gone);
        };
        if !is_staging(&pvc.metadata) {
            return Ok(Deletion::Kept(format!(
                "PVC {ns}/{name} is not snapstage's staging PVC"
            )));
        }
        let run = ownership::execution_of(&pvc.metadata).map(str::to_string);
        let same_run =
            |m: &ObjectMeta| is_staging(m) && ownership::execution_of(m) == run.as_deref();
        let snap_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.data_source.as_ref())
            .map(|d| d.name.clone());
        api::delete(&claims, name, pvc.metadata.uid.clone()).await?;
        tracing::info!(pvc = name, namespace = %ns, "rollback: deleted the staging PVC");
        let Some(snap_name) = snap_name else {
            return Ok(Deletion::Deleted);
        };
        let snaps = self.staging::<VolumeSnapshot>()?;
        if let Some(s) = api::get_opt(&snaps, &snap_name).await?
            && same_run(&s.metadata)
        {
            api::delete(&snaps, &snap_name, s.metadata.uid.clone()).await?;
        }
        // The staging VolumeSnapshotContent (deletionPolicy Retain) stays: deleting it would need
        // a cluster-wide delete on contents, which may hold production's snapshots; left, it is
        // an API object only (its storage snapshot is production's, kept by Retain anyway).
        Ok(Deletion::Deleted)
    }
}

impl NamedTargets for Csi {
    fn check_target_name(&self, field: &str, name: &str) -> Result<()> {
        check_name(field, name).map_err(|_| {
            Error::parameter(
                field,
                format!(
                    "expected the name of the staging PersistentVolumeClaim to make in {} (lowercase letters, digits, '-' and '.', at most 253), got {name:?}",
                    self.params
                        .staging_namespace
                        .as_deref()
                        .unwrap_or("csi.stagingNamespace")
                ),
            )
        })
    }

    fn group_snapshot<'a>(
        &'a self,
        id: Option<&'a str>,
        sources: &'a [String],
    ) -> BoxFuture<'a, Result<Option<GroupSnapshot>>> {
        Box::pin(async move {
            let Some(id) = id else {
                return self.newest_group(sources).await;
            };
            if id.contains('/') {
                return Err(Error::parameter(
                    "snapshotId",
                    format!(
                        "with targets, name a VolumeGroupSnapshot (e.g. \"snapstage-0123abcd\"), not one member <group>/<pvc>; got {id:?}"
                    ),
                ));
            }
            match self.group(id).await? {
                Some(g) => Ok(Some(g)),
                None => Err(Error::NotFound {
                    backend: B,
                    message: format!("VolumeGroupSnapshot {}/{id}", self.params.namespace),
                    source: None,
                }),
            }
        })
    }

    fn target<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ExistingTarget>>> {
        Box::pin(async move {
            let ns = self.staging_namespace()?.to_string();
            let claims = self.staging::<PersistentVolumeClaim>()?;
            Ok(api::get_opt(&claims, name)
                .await?
                .map(|pvc| ExistingTarget {
                    id: name.to_string(),
                    marks: self.claim_marks(&pvc, &ns),
                    destroyed: false,
                }))
        })
    }

    fn can_overwrite(&self) -> std::result::Result<(), String> {
        Err("a PVC cannot be overwritten in place: delete it (kubectl delete pvc) or choose another name".into())
    }

    fn create_target<'a>(
        &'a self,
        snapshot: &'a SnapshotInfo,
        name: &'a str,
        _existing: Option<&'a ExistingTarget>,
        _spec: &'a VolumeSpec,
        execution: &'a Execution,
    ) -> BoxFuture<'a, Result<VolumeInfo>> {
        Box::pin(self.restore_into(snapshot, Some(name), execution))
    }

    fn remove_target<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion>> {
        Box::pin(self.delete_target(id))
    }
}
