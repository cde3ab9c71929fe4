//! Restore for CSI: a production VolumeSnapshot into a staging PVC in another namespace
//! without the alpha `dataSourceRef.namespace`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;

use super::client::create_or_read;
use super::model::{
    SNAPSHOT_GROUP, SnapshotRef, VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotContentSpec,
    VolumeSnapshotSource, VolumeSnapshotSpec,
};
use super::names::{meta, staging_content_name, staging_name};
use super::{B, Csi};
use crate::error::{Error, Result};
use crate::job::contract::Execution;
use crate::kube::api;
use crate::kube::labels::ROLE_STAGING;
use crate::kube::names::execution_label;
use crate::kube::ownership;
use crate::storage::{SnapshotInfo, VolumeInfo};

impl Csi {
    /// A staging PVC restored from `snapshot` by the portable cross-namespace path: a pre-bound
    /// VolumeSnapshotContent (`Retain`) on the production snapshot's storage handle, a staging
    /// VolumeSnapshot bound to it, and a PVC restoring from that. The interlock is checked first:
    /// nothing is created when the target is refused.
    pub(super) async fn restore(
        &self,
        snapshot: &SnapshotInfo,
        execution: &Execution,
    ) -> Result<VolumeInfo> {
        self.restore_into(snapshot, None, execution).await
    }

    /// [`Csi::restore`] into the staging PVC `target` (`targets[].name`), or when `None` into
    /// the per-run name [`staging_name`]. The staging VolumeSnapshot shares the PVC's name.
    pub(super) async fn restore_into(
        &self,
        snapshot: &SnapshotInfo,
        target: Option<&str>,
        execution: &Execution,
    ) -> Result<VolumeInfo> {
        let ns = self.staging_namespace()?.to_string();
        // The production side: the bound content gives the storage snapshot and its driver.
        let prod = self
            .resolve(&snapshot.id)
            .await?
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!("snapshot {} has no VolumeSnapshot yet", snapshot.id),
                source: None,
            })?;
        let prod_name = prod.metadata.name.clone().unwrap_or_default();
        let status = prod.status.clone().unwrap_or_default();
        let content_name = status
            .bound_volume_snapshot_content_name
            .clone()
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!(
                    "VolumeSnapshot {}/{prod_name} is not bound to a VolumeSnapshotContent yet",
                    self.params.namespace
                ),
                source: None,
            })?;
        let contents: Api<VolumeSnapshotContent> = Api::all(self.client.clone());
        let content = api::get_opt(&contents, &content_name)
            .await?
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!(
                    "VolumeSnapshotContent {content_name} (bound to {prod_name}) does not exist"
                ),
                source: None,
            })?;
        let handle = content
            .status
            .as_ref()
            .and_then(|s| s.snapshot_handle.clone())
            .or_else(|| content.spec.source.snapshot_handle.clone())
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!("VolumeSnapshotContent {content_name} has no snapshot handle yet"),
                source: None,
            })?;
        let restore_size = status
            .restore_size
            .clone()
            .or_else(|| {
                content
                    .status
                    .as_ref()
                    .and_then(|s| s.restore_size)
                    .map(|b| b.to_string())
            })
            .ok_or_else(|| Error::Backend {
                backend: B,
                message: format!(
                    "VolumeSnapshot {prod_name} reports no restoreSize; cannot size the staging PVC"
                ),
                source: None,
            })?;

        let source_pvc = if snapshot.source.is_empty() {
            prod_name.clone()
        } else {
            snapshot.source.clone()
        };
        let name = match target {
            Some(t) => t.to_string(),
            None => staging_name(&source_pvc, execution),
        };

        // Interlock first: nothing is created when the target is refused.
        self.ensure_staging_namespace(execution).await?;
        let claims = self.staging::<PersistentVolumeClaim>()?;
        if let Some(existing) = api::get_opt(&claims, &name).await? {
            self.check_claim(&existing).await?;
            let run = execution_label(&execution.key);
            if target.is_some() && ownership::execution_of(&existing.metadata) != Some(run.as_str())
            {
                return Err(Error::Refused(format!(
                    "PersistentVolumeClaim {ns}/{name} appeared meanwhile from another run; restore-to-staging does not take over a PVC it did not check: re-run"
                )));
            }
            return self.volume_info(&existing).await;
        }

        let staged_content_name = staging_content_name(&ns, &name);
        let staged_content = VolumeSnapshotContent {
            api_version: format!("{SNAPSHOT_GROUP}/{}", super::model::SNAPSHOT_VERSION),
            kind: "VolumeSnapshotContent".into(),
            metadata: meta(
                &staged_content_name,
                None,
                execution,
                ROLE_STAGING,
                Some(&source_pvc),
            ),
            spec: VolumeSnapshotContentSpec {
                deletion_policy: "Retain".into(),
                driver: content.spec.driver.clone(),
                source: super::model::ContentSource {
                    snapshot_handle: Some(handle.clone()),
                    volume_handle: None,
                },
                source_volume_mode: content.spec.source_volume_mode.clone(),
                volume_snapshot_class_name: None,
                volume_snapshot_ref: SnapshotRef {
                    api_version: None,
                    kind: Some("VolumeSnapshot".into()),
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                },
            },
            status: None,
        };
        let (c, _) = create_or_read(&contents, &staged_content).await?;
        ownership::require_managed("VolumeSnapshotContent", &c.metadata, "bind")?;
        if c.spec.source.snapshot_handle.as_deref() != Some(handle.as_str()) {
            return Err(Error::Refused(format!(
                "VolumeSnapshotContent {staged_content_name} exists with another snapshot handle; it is not this run's"
            )));
        }

        let staged = VolumeSnapshot {
            api_version: format!("{SNAPSHOT_GROUP}/{}", super::model::SNAPSHOT_VERSION),
            kind: "VolumeSnapshot".into(),
            metadata: meta(&name, Some(&ns), execution, ROLE_STAGING, Some(&source_pvc)),
            spec: VolumeSnapshotSpec {
                source: VolumeSnapshotSource {
                    persistent_volume_claim_name: None,
                    volume_snapshot_content_name: Some(staged_content_name.clone()),
                },
                volume_snapshot_class_name: None,
            },
            status: None,
        };
        let (s, _) = create_or_read(&self.staging::<VolumeSnapshot>()?, &staged).await?;
        ownership::require_managed("VolumeSnapshot", &s.metadata, "restore from")?;

        let claim = PersistentVolumeClaim {
            metadata: meta(&name, Some(&ns), execution, ROLE_STAGING, Some(&source_pvc)),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: self.params.storage_class.clone(),
                volume_mode: content.spec.source_volume_mode.clone(),
                data_source: Some(TypedLocalObjectReference {
                    api_group: Some(SNAPSHOT_GROUP.into()),
                    kind: "VolumeSnapshot".into(),
                    name: name.clone(),
                }),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(restore_size),
                    )])),
                    limits: None,
                }),
                ..Default::default()
            }),
            status: None,
        };
        let (pvc, created) = create_or_read(&claims, &claim).await?;
        if !created {
            self.check_claim(&pvc).await?;
        }
        // The PVC itself may stay Pending under WaitForFirstConsumer until the staging database's
        // pod uses it: the volume counts as available once the staging VolumeSnapshot is ready.
        self.volume_info(&pvc).await
    }
}
