//! The Kubernetes API calls of the CSI backend: create-or-read of this run's objects, the
//! production snapshots behind an id, group snapshot members, and the staging side's checks
//! (namespace, claim, volume state).

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::{
    SnapshotId, VolumeGroupSnapshot, VolumeSnapshot, gib, is_member, parse_id, snapshot_info,
    snapshot_state,
};
use super::names::{label_of, meta};
use super::{B, Csi, FIELD_MANAGER};
use crate::error::{Error, Result};
use crate::job::contract::Execution;
use crate::kube::api;
use crate::kube::client::kube_error;
use crate::kube::labels::MANAGED_BY;
use crate::kube::labels::{LABEL_EXECUTION, LABEL_MANAGED_BY, LABEL_ROLE};
use crate::kube::labels::{ROLE_SNAPSHOT, ROLE_STAGING};
use crate::kube::names::quantity_bytes;
use crate::kube::ownership;
use crate::storage::{SnapshotInfo, SnapshotState, VolumeInfo, VolumeState};

/// POST `obj` (retried when the API server may answer later); when it exists already, read the
/// one there — this run's own create whose answer was lost, or an earlier invocation's — and
/// take it only when it carries this run's execution label: an object of the name from another
/// run, or not labelled at all, is refused rather than adopted.
pub(super) async fn create_or_read<K>(api: &Api<K>, obj: &K) -> Result<(K, bool)>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let what = api::describe::<K>(api.namespace(), &name);
    let params = PostParams::default();
    match api::retrying(|| api.create(&params, obj)).await {
        Ok(k) => {
            tracing::info!(object = %what, "created");
            Ok((k, true))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let k = api::retrying(|| api.get(&name))
                .await
                .map_err(|e| kube_error(&format!("reading {what} (it exists already)"), e))?;
            let mine = ownership::execution_of(obj.meta());
            let theirs = ownership::execution_of(k.meta());
            if ownership::is_managed(k.meta()) && theirs != mine {
                return Err(Error::Refused(format!(
                    "{what} exists and was made by another snapstage run ({LABEL_EXECUTION}={}, this run is {}); it will not be taken over",
                    theirs.unwrap_or("none"),
                    mine.unwrap_or("none")
                )));
            }
            Ok((k, false))
        }
        Err(e) => Err(kube_error(&format!("creating {what}"), e)),
    }
}

impl Csi {
    /// The production VolumeSnapshot behind an id (for a group member: the member the snapshot
    /// controller made, once it exists).
    pub(super) async fn resolve(&self, id: &str) -> Result<Option<VolumeSnapshot>> {
        match parse_id(id) {
            SnapshotId::Single(name) => {
                let s = api::get_opt(&self.snapshots(), name).await?;
                s.map(Some).ok_or_else(|| Error::NotFound {
                    backend: B,
                    message: format!(
                        "VolumeSnapshot {}/{name} does not exist",
                        self.params.namespace
                    ),
                    source: None,
                })
            }
            SnapshotId::Member { group, pvc } => {
                let all = api::list(&self.snapshots(), &ListParams::default()).await?;
                Ok(all.into_iter().find(|s| is_member(s, group, pvc)))
            }
        }
    }

    pub(super) async fn group_info(&self, group: &str, pvc: &str) -> Result<SnapshotInfo> {
        let id = format!("{group}/{pvc}");
        let g = api::get_opt(&self.groups(), group)
            .await?
            .ok_or_else(|| Error::NotFound {
                backend: B,
                message: format!(
                    "VolumeGroupSnapshot {}/{group} does not exist",
                    self.params.namespace
                ),
                source: None,
            })?;
        let status = g.status.as_ref();
        let pending = SnapshotInfo {
            id: id.clone(),
            source: pvc.to_string(),
            state: SnapshotState::Pending { percent: 0 },
            started: status.and_then(|s| s.creation_time.clone()),
            size_gib: None,
        };
        if let Some(e) = status.and_then(|s| s.error.as_ref()) {
            return Ok(SnapshotInfo {
                state: SnapshotState::Failed(format!(
                    "group snapshot {group}: {}",
                    e.message.as_deref().unwrap_or("error")
                )),
                ..pending
            });
        }
        if status.and_then(|s| s.ready_to_use) != Some(true) {
            return Ok(pending);
        }
        match self.resolve(&id).await? {
            Some(member) => Ok(snapshot_info(&id, &member)),
            None => Ok(SnapshotInfo {
                state: SnapshotState::Failed(format!(
                    "group snapshot {group} is ready but has no member snapshot of PVC {pvc}; does the selector pick it?"
                )),
                ..pending
            }),
        }
    }

    /// The members of `source` in the VolumeGroupSnapshots snapstage made in the production
    /// namespace, as `<group>/<pvc>` ids with the group's creation time. A group without a
    /// member of `source` (another selector, or not cut yet) is not one of its snapshots.
    pub(super) async fn managed_group_members(
        &self,
        source: &str,
    ) -> Result<Vec<(Option<Time>, String, SnapshotInfo)>> {
        let groups = api::list(
            &self.groups(),
            &ListParams::default().labels(&format!(
                "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ROLE}={ROLE_SNAPSHOT}"
            )),
        )
        .await?;
        let groups: Vec<VolumeGroupSnapshot> = groups
            .into_iter()
            .filter(|g| ownership::is_managed(&g.metadata))
            .collect();
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let all = api::list(&self.snapshots(), &ListParams::default()).await?;
        Ok(groups
            .into_iter()
            .filter_map(|g| {
                let group = g.metadata.name.clone()?;
                let member = all.iter().find(|s| is_member(s, &group, source))?;
                let id = format!("{group}/{source}");
                let mut info = snapshot_info(&id, member);
                if let Some(e) = g.status.as_ref().and_then(|s| s.error.as_ref()) {
                    info.state = SnapshotState::Failed(format!(
                        "group snapshot {group}: {}",
                        e.message.as_deref().unwrap_or("error")
                    ));
                }
                Some((g.metadata.creation_timestamp, id, info))
            })
            .collect())
    }

    /// Retention of a group snapshot: the whole VolumeGroupSnapshot, only if snapstage took it.
    pub(super) async fn delete_group(&self, group: &str) -> Result<()> {
        let Some(g) = api::get_opt(&self.groups(), group).await? else {
            return Ok(());
        };
        ownership::require_managed("VolumeGroupSnapshot", &g.metadata, "delete")?;
        if label_of(&g.metadata, LABEL_ROLE) != Some(ROLE_SNAPSHOT) {
            return Err(Error::Refused(format!(
                "VolumeGroupSnapshot {group} is not labelled {LABEL_ROLE}={ROLE_SNAPSHOT}; retention deletes only production snapshots snapstage took"
            )));
        }
        api::delete(&self.groups(), group, g.metadata.uid.clone()).await?;
        tracing::info!(group, "retention: deleted group snapshot and its members");
        Ok(())
    }

    /// A PVC in the staging namespace is usable only if snapstage made it and no pod other than a
    /// snapstage staging pod mounts it.
    pub(super) async fn check_claim(&self, pvc: &PersistentVolumeClaim) -> Result<()> {
        ownership::require_managed("PersistentVolumeClaim", &pvc.metadata, "restore into")?;
        if ownership::is_production(&pvc.metadata) {
            return Err(Error::Refused(format!(
                "PersistentVolumeClaim {} is labelled production; restore-to-staging never writes to production",
                pvc.metadata.name.as_deref().unwrap_or_default()
            )));
        }
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        let pods = api::list(&self.staging::<Pod>()?, &ListParams::default()).await?;
        for pod in pods {
            let mounts = pod
                .spec
                .as_ref()
                .map(|s| s.volumes.iter().flatten())
                .into_iter()
                .flatten()
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == name)
                });
            let staging_pod = ownership::is_managed(&pod.metadata)
                && label_of(&pod.metadata, LABEL_ROLE) == Some(ROLE_STAGING);
            if mounts && !staging_pod {
                return Err(Error::Refused(format!(
                    "PersistentVolumeClaim {name} is mounted by pod {}, which is not a snapstage staging pod ({LABEL_MANAGED_BY}={MANAGED_BY}, {LABEL_ROLE}={ROLE_STAGING}); restore-to-staging will not touch a volume someone else uses",
                    pod.metadata.name.as_deref().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// The staging namespace: refused if it is production or not snapstage's, created (server-
    /// side apply) if missing.
    pub(super) async fn ensure_staging_namespace(&self, execution: &Execution) -> Result<()> {
        let ns = self.staging_namespace()?;
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api::get_opt(&api, ns).await? {
            Some(existing) => {
                if ownership::is_production(&existing.metadata) {
                    return Err(Error::Refused(format!(
                        "staging namespace {ns} is labelled production; restore-to-staging never writes into production"
                    )));
                }
                ownership::require_managed("Namespace", &existing.metadata, "restore into")
            }
            None => {
                let obj = Namespace {
                    metadata: meta(ns, None, execution, ROLE_STAGING, None),
                    ..Default::default()
                };
                api::apply(&api, &obj, FIELD_MANAGER).await?;
                tracing::info!(namespace = ns, "created the staging namespace");
                Ok(())
            }
        }
    }

    pub(super) async fn volume_info(&self, pvc: &PersistentVolumeClaim) -> Result<VolumeInfo> {
        let name = pvc.metadata.name.clone().unwrap_or_default();
        let spec = pvc.spec.as_ref();
        let source = spec
            .and_then(|s| s.data_source.as_ref())
            .map(|d| d.name.clone());
        let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
        let state = if phase == Some("Lost") {
            VolumeState::Failed(format!("PVC {name} is Lost (its volume is gone)"))
        } else {
            match &source {
                Some(snap) => match api::get_opt(&self.staging::<VolumeSnapshot>()?, snap).await? {
                    None => VolumeState::Failed(format!(
                        "the staging VolumeSnapshot {snap} of PVC {name} is gone"
                    )),
                    Some(s) => match snapshot_state(&s) {
                        SnapshotState::Ready => VolumeState::Available,
                        SnapshotState::Pending { .. } => VolumeState::Creating,
                        SnapshotState::Failed(why) => {
                            VolumeState::Failed(format!("staging VolumeSnapshot {snap}: {why}"))
                        }
                    },
                },
                None => VolumeState::Failed(format!("PVC {name} has no dataSource")),
            }
        };
        let size = spec
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| quantity_bytes(&q.0))
            .map(gib);
        Ok(VolumeInfo {
            id: name,
            state,
            zone: None,
            snapshot: source,
            size_gib: size,
            tags: pvc
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}
