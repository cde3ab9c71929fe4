//! [`Backend`] for Kubernetes CSI snapshots (`snapshot.storage.k8s.io/v1`): any CSI driver with
//! snapshot support (EBS CSI, Portworx, Pure PX-CSI/PSO, ...), reached through the Kubernetes API
//! only.
//!
//! - A source is a PersistentVolumeClaim in the production namespace (`csi.namespace`); a
//!   selector lists PVCs by label (sorted by name, so a run is stable).
//! - Snapshot: one VolumeSnapshot per PVC, named `<pvc>-snapstage-<run hash>` and labelled with
//!   the run, created with POST (a retry gets 409 AlreadyExists and reads the one it made).
//!   Ready when `status.readyToUse`, failed with `status.error.message`, pending otherwise.
//!   Snapshots taken back to back are crash-consistent *per volume*; with `groupSnapshotClass`
//!   and a `selector`, one `VolumeGroupSnapshot` (`groupsnapshot.storage.k8s.io/v1beta1`, beta:
//!   needs external-snapshotter ≥ 8.0 with its group snapshot feature gate and a driver that
//!   supports it) cuts every selected PVC at one instant; its snapshot ids are
//!   `<group>/<pvc>`.
//! - Restore, the portable cross-namespace path (no alpha `dataSourceRef.namespace`): the
//!   production VolumeSnapshot's bound VolumeSnapshotContent gives the storage snapshot handle and
//!   driver; in the staging namespace snapstage creates a pre-bound VolumeSnapshotContent
//!   (`deletionPolicy: Retain`, so deleting staging never deletes the storage snapshot), a
//!   VolumeSnapshot bound to it, and a PVC restoring from that VolumeSnapshot. The staging
//!   VolumeSnapshot and the PVC share one name, `<source pvc>-staging-<run hash>`.
//! - Production-safety interlock: the staging namespace is never the production namespace nor a
//!   namespace labelled production or not made by snapstage; an existing PVC of the name is
//!   refused unless snapstage made it, and a PVC mounted by a pod that is not a snapstage
//!   staging pod is refused.
//!
//! | where | what |
//! | --- | --- |
//! | `mod.rs` | [`Csi`]: [`Backend`], [`Retention`], [`Selection`], [`RestoreOutputs`] |
//! | `client.rs` | the Kubernetes API calls: create-or-read, snapshot ids to objects, group members, staging checks |
//! | `restore.rs` | the portable cross-namespace restore (content, snapshot and PVC in staging) |
//! | `targets.rs` | [`NamedTargets`](super::NamedTargets): a VolumeGroupSnapshot's members into staging PVCs named by the user |
//! | [`model`] | the snapshot API objects (no CRD crate) and their mapping to [`SnapshotInfo`] |
//! | `names.rs` | per-run names, labels and selectors |
//! | `params.rs` | the `csi` parameter section ([`CsiParams`]) |
//! | `tests/` | the steps against an API server double: snapshot, restore |

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::{Api, ListParams};

use self::client::create_or_read;
use self::model::{
    SNAPSHOT_GROUP, SnapshotId, VolumeGroupSnapshot, VolumeGroupSnapshotSource,
    VolumeGroupSnapshotSpec, VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec, gib,
    parse_id, snapshot_info,
};
use self::names::{label_of, match_labels, meta};
use self::params::check_name;
use super::{
    Backend, RestoreOutputs, Retention, Selection, SnapshotInfo, SnapshotState, VolumeInfo,
    VolumeSpec,
};
use crate::error::{Error, Result};
use crate::interlock::BoxFuture;
use crate::job::contract::Execution;
use crate::kube::api;
use crate::kube::labels::MANAGED_BY;
use crate::kube::labels::{LABEL_EXECUTION, LABEL_MANAGED_BY, LABEL_ROLE};
use crate::kube::labels::{LABEL_SOURCE, ROLE_SNAPSHOT, ROLE_STAGING};
use crate::kube::names::{execution_label, is_dns1123_subdomain, quantity_bytes};
use crate::kube::ownership;

mod client;
pub mod model;
mod names;
mod params;
mod restore;
mod targets;

pub use names::{
    group_snapshot_name, snapshot_name, source_label, staging_content_name, staging_name,
};
pub use params::CsiParams;

const B: &str = "csi";
/// The field manager of the server-side applies this backend makes (the staging namespace).
pub const FIELD_MANAGER: &str = "snapstage-restore-to-staging";

/// Kubernetes CSI snapshots through the API server.
pub struct Csi {
    client: kube::Client,
    params: CsiParams,
    /// The selector that picked the sources in this invocation: the group snapshot's selector.
    selector: std::sync::Mutex<Option<String>>,
}

impl Csi {
    pub fn new(client: kube::Client, params: CsiParams) -> Self {
        Self {
            client,
            params,
            selector: std::sync::Mutex::new(None),
        }
    }

    fn snapshots(&self) -> Api<VolumeSnapshot> {
        Api::namespaced(self.client.clone(), &self.params.namespace)
    }

    fn groups(&self) -> Api<VolumeGroupSnapshot> {
        Api::namespaced(self.client.clone(), &self.params.namespace)
    }

    /// The staging namespace, checked against production without the cluster.
    fn staging_namespace(&self) -> Result<&str> {
        let Some(ns) = self.params.staging_namespace.as_deref() else {
            return Err(Error::parameter(
                "csi.stagingNamespace",
                "missing: the namespace restore-to-staging makes the staging PVC in, e.g. \"snapstage-staging\" (never the production namespace)",
            ));
        };
        if ns == self.params.namespace {
            return Err(Error::Refused(format!(
                "staging namespace {ns} is the production namespace (csi.namespace); restore-to-staging never writes into production"
            )));
        }
        Ok(ns)
    }

    fn staging<K>(&self) -> Result<Api<K>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Ok(Api::namespaced(
            self.client.clone(),
            self.staging_namespace()?,
        ))
    }

    fn source_selector(source: &str) -> String {
        format!(
            "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SOURCE}={}",
            source_label(source)
        )
    }
}

impl Backend for Csi {
    fn name(&self) -> &'static str {
        B
    }

    fn retention(&self) -> Option<&dyn Retention> {
        Some(self)
    }

    fn selection(&self) -> Option<&dyn Selection> {
        Some(self)
    }

    fn restore_outputs(&self) -> Option<&dyn RestoreOutputs> {
        Some(self)
    }

    fn named_targets(&self) -> Option<&dyn super::NamedTargets> {
        Some(self)
    }

    async fn describe_source(&self, source: &str) -> Result<Option<i64>> {
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &self.params.namespace);
        let pvc = api::get_opt(&api, source)
            .await?
            .ok_or_else(|| Error::NotFound {
                backend: B,
                message: format!(
                    "PersistentVolumeClaim {}/{source} does not exist",
                    self.params.namespace
                ),
                source: None,
            })?;
        let status = pvc.status.as_ref().and_then(|s| s.capacity.as_ref());
        let requested = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref());
        Ok(status
            .or(requested)
            .and_then(|c| c.get("storage"))
            .and_then(|q| quantity_bytes(&q.0))
            .map(gib))
    }

    async fn find_snapshot(
        &self,
        source: &str,
        execution: &Execution,
    ) -> Result<Option<SnapshotInfo>> {
        if self.params.group_snapshot_class.is_some() {
            let group = group_snapshot_name(execution);
            return match api::get_opt(&self.groups(), &group).await? {
                Some(_) => Ok(Some(self.group_info(&group, source).await?)),
                None => Ok(None),
            };
        }
        let name = snapshot_name(source, execution);
        match api::get_opt(&self.snapshots(), &name).await? {
            Some(s) => {
                ownership::require_managed("VolumeSnapshot", &s.metadata, "reuse")?;
                Ok(Some(snapshot_info(&name, &s)))
            }
            None => Ok(None),
        }
    }

    async fn create_snapshot(
        &self,
        source: &str,
        execution: &Execution,
        description: &str,
    ) -> Result<SnapshotInfo> {
        if let Some(class) = &self.params.group_snapshot_class {
            let selector = self
                .selector
                .lock()
                .map_err(|_| Error::Internal("selector lock poisoned".into()))?
                .clone()
                .ok_or_else(|| {
                    Error::parameter(
                        "selector",
                        "missing: csi.groupSnapshotClass snapshots the PVCs a label selector picks as one group; give selector (e.g. \"app=orders-db\") instead of volumeIds",
                    )
                })?;
            let name = group_snapshot_name(execution);
            let mut m = meta(
                &name,
                Some(&self.params.namespace),
                execution,
                ROLE_SNAPSHOT,
                None,
            );
            m.annotations
                .get_or_insert_default()
                .insert("snapstage.io/description".into(), description.into());
            let group = VolumeGroupSnapshot {
                api_version: format!(
                    "{}/{}",
                    model::GROUP_SNAPSHOT_GROUP,
                    model::GROUP_SNAPSHOT_VERSION
                ),
                kind: "VolumeGroupSnapshot".into(),
                metadata: m,
                spec: VolumeGroupSnapshotSpec {
                    source: VolumeGroupSnapshotSource {
                        selector: Some(match_labels(&selector)?),
                        volume_group_snapshot_content_name: None,
                    },
                    volume_group_snapshot_class_name: Some(class.clone()),
                },
                status: None,
            };
            let (g, _) = create_or_read(&self.groups(), &group).await?;
            ownership::require_managed("VolumeGroupSnapshot", &g.metadata, "reuse")?;
            return self.group_info(&name, source).await;
        }
        let name = snapshot_name(source, execution);
        let mut m = meta(
            &name,
            Some(&self.params.namespace),
            execution,
            ROLE_SNAPSHOT,
            Some(source),
        );
        m.annotations
            .get_or_insert_default()
            .insert("snapstage.io/description".into(), description.into());
        let snap = VolumeSnapshot {
            api_version: format!("{SNAPSHOT_GROUP}/{}", model::SNAPSHOT_VERSION),
            kind: "VolumeSnapshot".into(),
            metadata: m,
            spec: VolumeSnapshotSpec {
                source: VolumeSnapshotSource {
                    persistent_volume_claim_name: Some(source.to_string()),
                    volume_snapshot_content_name: None,
                },
                volume_snapshot_class_name: self.params.snapshot_class.clone(),
            },
            status: None,
        };
        let (s, _) = create_or_read(&self.snapshots(), &snap).await?;
        ownership::require_managed("VolumeSnapshot", &s.metadata, "reuse")?;
        Ok(snapshot_info(&name, &s))
    }

    async fn snapshot(&self, id: &str) -> Result<SnapshotInfo> {
        match parse_id(id) {
            SnapshotId::Member { group, pvc } => self.group_info(group, pvc).await,
            SnapshotId::Single(name) => match self.resolve(name).await? {
                Some(s) => Ok(snapshot_info(id, &s)),
                None => Err(Error::NotFound {
                    backend: B,
                    message: format!("VolumeSnapshot {}/{name}", self.params.namespace),
                    source: None,
                }),
            },
        }
    }

    async fn newest_snapshot(&self, source: &str) -> Result<Option<SnapshotInfo>> {
        Ok(self
            .managed_snapshots(source)
            .await?
            .into_iter()
            .find(|s| s.state == SnapshotState::Ready))
    }

    async fn find_volume(&self, execution: &Execution) -> Result<Option<VolumeInfo>> {
        let api = self.staging::<PersistentVolumeClaim>()?;
        let selector = format!(
            "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_EXECUTION}={},{LABEL_ROLE}={ROLE_STAGING}",
            execution_label(&execution.key)
        );
        let mut found = api::list(&api, &ListParams::default().labels(&selector)).await?;
        found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        match found.first() {
            Some(pvc) => {
                self.check_claim(pvc).await?;
                Ok(Some(self.volume_info(pvc).await?))
            }
            None => Ok(None),
        }
    }

    async fn create_volume(
        &self,
        snapshot: &SnapshotInfo,
        _spec: &VolumeSpec,
        execution: &Execution,
    ) -> Result<VolumeInfo> {
        self.restore(snapshot, execution).await
    }

    async fn volume(&self, id: &str) -> Result<VolumeInfo> {
        let api = self.staging::<PersistentVolumeClaim>()?;
        let pvc = api::get_opt(&api, id)
            .await?
            .ok_or_else(|| Error::NotFound {
                backend: B,
                message: format!(
                    "PersistentVolumeClaim {}/{id} does not exist (deleted while restoring?)",
                    self.staging_namespace().unwrap_or_default()
                ),
                source: None,
            })?;
        self.check_claim(&pvc).await?;
        self.volume_info(&pvc).await
    }

    fn check_source(&self, field: &str, source: &str) -> Result<()> {
        check_name(field, source).map_err(|_| {
            Error::parameter(
                field,
                format!(
                    "expected the name of a PersistentVolumeClaim in namespace {} (lowercase letters, digits, '-' and '.'), got {source:?}",
                    self.params.namespace
                ),
            )
        })
    }

    fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()> {
        let ok = match parse_id(id) {
            SnapshotId::Single(name) => is_dns1123_subdomain(name),
            SnapshotId::Member { group, pvc } => {
                is_dns1123_subdomain(group) && is_dns1123_subdomain(pvc)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::parameter(
                field,
                format!(
                    "expected the name of a VolumeSnapshot in namespace {} (or <group snapshot>/<pvc>), got {id:?}",
                    self.params.namespace
                ),
            ))
        }
    }
}

impl Retention for Csi {
    fn managed_snapshots<'a>(
        &'a self,
        source: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SnapshotInfo>>> {
        Box::pin(async move {
            let found = api::list(
                &self.snapshots(),
                &ListParams::default().labels(&Self::source_selector(source)),
            )
            .await?;
            let mut found: Vec<(Option<Time>, String, SnapshotInfo)> = found
                .into_iter()
                .filter(|s| {
                    ownership::is_managed(&s.metadata)
                        && s.spec.source.persistent_volume_claim_name.as_deref() == Some(source)
                })
                .map(|s| {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    let info = snapshot_info(&name, &s);
                    (s.metadata.creation_timestamp, name, info)
                })
                .collect();
            if self.params.group_snapshot_class.is_some() {
                found.extend(self.managed_group_members(source).await?);
            }
            found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
            Ok(found.into_iter().map(|(_, _, info)| info).collect())
        })
    }

    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let name = match parse_id(id) {
                SnapshotId::Single(name) => name,
                // A member goes with its group: the snapshot controller refuses to delete a member
                // on its own, and deletes the members (owned by the group) with the group.
                SnapshotId::Member { group, .. } => return self.delete_group(group).await,
            };
            let Some(s) = api::get_opt(&self.snapshots(), name).await? else {
                return Ok(());
            };
            ownership::require_managed("VolumeSnapshot", &s.metadata, "delete")?;
            if label_of(&s.metadata, LABEL_ROLE) != Some(ROLE_SNAPSHOT) {
                return Err(Error::Refused(format!(
                    "VolumeSnapshot {name} is not labelled {LABEL_ROLE}={ROLE_SNAPSHOT}; retention deletes only production snapshots snapstage took"
                )));
            }
            api::delete(&self.snapshots(), name, s.metadata.uid.clone()).await?;
            tracing::info!(snapshot = name, "retention: deleted");
            Ok(())
        })
    }
}

impl Selection for Csi {
    fn select_sources<'a>(&'a self, selector: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            if self.params.group_snapshot_class.is_some() {
                match_labels(selector)?;
            }
            if let Ok(mut s) = self.selector.lock() {
                *s = Some(selector.to_string());
            }
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), &self.params.namespace);
            let found = api::list(&api, &ListParams::default().labels(selector)).await?;
            let mut names: Vec<String> =
                found.into_iter().filter_map(|p| p.metadata.name).collect();
            names.sort();
            Ok(names)
        })
    }
}

impl RestoreOutputs for Csi {
    fn outputs(&self, volume: &VolumeInfo) -> Vec<(String, String)> {
        vec![
            ("PvcName".into(), volume.id.clone()),
            (
                "SnapshotName".into(),
                volume.snapshot.clone().unwrap_or_default(),
            ),
            (
                "Namespace".into(),
                self.params.staging_namespace.clone().unwrap_or_default(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests;
