//! The `csi` parameter section and its checks without the cluster.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kube::client::ClusterConfig;
use crate::kube::names::is_dns1123_subdomain;

/// How to reach the cluster and where things are (`csi` parameter section).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CsiParams {
    /// The cluster that runs production (`{"eks": {"name": "prod"}}`, `{"kubeconfigSecret":
    /// "..."}`, `{"kubeconfigFile": "..."}` or `"inCluster"`).
    pub cluster: ClusterConfig,
    /// The production namespace: its PVCs are the sources, its VolumeSnapshots the snapshots.
    pub namespace: String,
    /// VolumeSnapshotClass of the snapshots (default: the cluster's default class for the driver).
    #[serde(default)]
    pub snapshot_class: Option<String>,
    /// VolumeGroupSnapshotClass: snapshot the PVCs a `selector` picks as one group (beta API).
    /// Also give it to restore-to-staging to restore the newest group member by
    /// `sourceVolumeId`; retention (`retain`) then counts and deletes whole group snapshots.
    #[serde(default)]
    pub group_snapshot_class: Option<String>,
    /// restore-to-staging: the namespace the staging PVC is made in (created if missing).
    #[serde(default)]
    pub staging_namespace: Option<String>,
    /// restore-to-staging: StorageClass of the staging PVC (default: the cluster's default; it
    /// must use the same CSI driver as the snapshot).
    #[serde(default)]
    pub storage_class: Option<String>,
}

impl CsiParams {
    /// Checks names and the production/staging split without the cluster.
    pub fn validate(&self) -> Result<()> {
        check_label_name("csi.namespace", &self.namespace)?;
        for (field, v) in [
            ("csi.snapshotClass", &self.snapshot_class),
            ("csi.groupSnapshotClass", &self.group_snapshot_class),
            ("csi.storageClass", &self.storage_class),
        ] {
            if let Some(v) = v {
                check_name(field, v)?;
            }
        }
        if let Some(s) = &self.staging_namespace {
            check_label_name("csi.stagingNamespace", s)?;
            if *s == self.namespace {
                return Err(Error::parameter(
                    "csi.stagingNamespace",
                    format!(
                        "{s:?} is the production namespace (csi.namespace); restore-to-staging never writes into production: name a separate staging namespace"
                    ),
                ));
            }
        }
        Ok(())
    }
}

pub(super) fn check_name(field: &str, value: &str) -> Result<()> {
    if is_dns1123_subdomain(value) {
        Ok(())
    } else {
        Err(Error::parameter(
            field,
            format!(
                "expected a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253), got {value:?}"
            ),
        ))
    }
}

pub(super) fn check_label_name(field: &str, value: &str) -> Result<()> {
    if crate::kube::names::is_dns1123_label(value) {
        Ok(())
    } else {
        Err(Error::parameter(
            field,
            format!(
                "expected a namespace name (lowercase letters, digits and '-', at most 63), got {value:?}"
            ),
        ))
    }
}
