//! The `snapshot.storage.k8s.io/v1` and `groupsnapshot.storage.k8s.io/v1beta1` objects snapstage
//! reads and writes, as plain serde structs with a hand-written [`kube::Resource`] (no CRD crate,
//! no schema generation). Only the fields snapstage uses; unknown fields are ignored on read and
//! never sent.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::{Deserialize, Serialize};

use crate::kube::names::quantity_bytes;
use crate::storage::{SnapshotInfo, SnapshotState};

pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
pub const SNAPSHOT_VERSION: &str = "v1";
pub const GROUP_SNAPSHOT_GROUP: &str = "groupsnapshot.storage.k8s.io";
/// VolumeGroupSnapshot is beta: `v1beta1` is served by external-snapshotter 8.0–8.2 (Kubernetes
/// 1.32/1.33); 8.3+ (Kubernetes 1.34) adds `v1beta2` and still serves `v1beta1`.
pub const GROUP_SNAPSHOT_VERSION: &str = "v1beta1";

macro_rules! resource {
    ($t:ty, $kind:literal, $plural:literal, $group:expr, $version:expr, $scope:ty) => {
        impl kube::Resource for $t {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// `VolumeSnapshot` (namespaced).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshot {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeSnapshotSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeSnapshotStatus>,
}
resource!(
    VolumeSnapshot,
    "VolumeSnapshot",
    "volumesnapshots",
    SNAPSHOT_GROUP,
    SNAPSHOT_VERSION,
    NamespaceResourceScope
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    #[serde(default)]
    pub source: VolumeSnapshotSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// Exactly one of the two: a PVC to snapshot, or a pre-provisioned content to bind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    /// RFC 3339: when the storage system cut the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// A quantity (`10Gi`): the smallest volume the snapshot restores into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SnapshotError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// `VolumeSnapshotContent` (cluster-scoped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContent {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeSnapshotContentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeSnapshotContentStatus>,
}
resource!(
    VolumeSnapshotContent,
    "VolumeSnapshotContent",
    "volumesnapshotcontents",
    SNAPSHOT_GROUP,
    SNAPSHOT_VERSION,
    ClusterResourceScope
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSpec {
    /// `Delete` or `Retain`: what happens to the storage snapshot when this object goes.
    #[serde(default)]
    pub deletion_policy: String,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub source: ContentSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_volume_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    #[serde(default)]
    pub volume_snapshot_ref: SnapshotRef,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
}

/// The VolumeSnapshot a content is bound (or pre-bound) to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SnapshotError>,
}

/// `VolumeGroupSnapshot` (namespaced, beta): one crash-consistent cut of every PVC the selector
/// picks; the snapshot controller makes one member VolumeSnapshot per PVC, owned by the group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshot {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeGroupSnapshotSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeGroupSnapshotStatus>,
}
resource!(
    VolumeGroupSnapshot,
    "VolumeGroupSnapshot",
    "volumegroupsnapshots",
    GROUP_SNAPSHOT_GROUP,
    GROUP_SNAPSHOT_VERSION,
    NamespaceResourceScope
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotSpec {
    #[serde(default)]
    pub source: VolumeGroupSnapshotSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_class_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_content_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_group_snapshot_content_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SnapshotError>,
}

// ---- as the backend's types ----

pub(super) const GIB: f64 = 1_073_741_824.0;

pub(super) fn gib(bytes: f64) -> i64 {
    (bytes / GIB).ceil() as i64
}

/// The state a VolumeSnapshot's status gives.
pub(super) fn snapshot_state(s: &VolumeSnapshot) -> SnapshotState {
    let status = s.status.as_ref();
    if let Some(e) = status.and_then(|s| s.error.as_ref()) {
        return SnapshotState::Failed(
            e.message
                .clone()
                .unwrap_or_else(|| "the snapshot controller reported an error".into()),
        );
    }
    if status.and_then(|s| s.ready_to_use) == Some(true) {
        SnapshotState::Ready
    } else {
        SnapshotState::Pending { percent: 0 }
    }
}

pub(super) fn snapshot_info(id: &str, s: &VolumeSnapshot) -> SnapshotInfo {
    let status = s.status.as_ref();
    SnapshotInfo {
        id: id.to_string(),
        source: s
            .spec
            .source
            .persistent_volume_claim_name
            .clone()
            .unwrap_or_default(),
        state: snapshot_state(s),
        started: status.and_then(|s| s.creation_time.clone()).or_else(|| {
            s.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
        }),
        size_gib: status
            .and_then(|s| s.restore_size.as_deref())
            .and_then(quantity_bytes)
            .map(gib),
    }
}

/// Whether `s` is the member VolumeSnapshot the snapshot controller made of `pvc` for the
/// VolumeGroupSnapshot `group` (named in its status or its owner reference).
pub(super) fn is_member(s: &VolumeSnapshot, group: &str, pvc: &str) -> bool {
    let of_group = s
        .status
        .as_ref()
        .and_then(|st| st.volume_group_snapshot_name.as_deref())
        == Some(group)
        || s.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "VolumeGroupSnapshot" && o.name == group);
    of_group && s.spec.source.persistent_volume_claim_name.as_deref() == Some(pvc)
}

/// A snapshot id: a VolumeSnapshot name, or `<group>/<pvc>` for a member of a group snapshot.
pub(super) enum SnapshotId<'a> {
    Single(&'a str),
    Member { group: &'a str, pvc: &'a str },
}

pub(super) fn parse_id(id: &str) -> SnapshotId<'_> {
    match id.split_once('/') {
        Some((group, pvc)) => SnapshotId::Member { group, pvc },
        None => SnapshotId::Single(id),
    }
}
