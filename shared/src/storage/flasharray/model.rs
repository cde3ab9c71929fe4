//! The few FlashArray REST 2.x shapes snapstage reads and sends, named as in the official spec
//! (`components/schemas`). Responses keep only the fields we use; unknown fields are ignored,
//! and every field the spec marks optional is optional here.

use serde::{Deserialize, Serialize};

use crate::storage::{SnapshotInfo, SnapshotState, VolumeInfo, VolumeState};

/// `Api_versionResponse`: `GET /api/api_version`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiVersions {
    #[serde(default)]
    pub version: Vec<String>,
}

/// A list response (`VolumeGetResponse`, `VolumeSnapshotGetResponse`, ...): `items` plus the
/// `PageInfo` fields. The next page's token also arrives in the `x-next-token` header.
#[derive(Debug, Clone, Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
pub struct Items<T> {
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
    #[serde(default)]
    pub continuation_token: Option<String>,
    #[serde(default)]
    pub more_items_remaining: Option<bool>,
}

/// `_errorContextResponse`: the body of an error (and of a 207 partial success).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorResponse {
    #[serde(default)]
    pub errors: Vec<ErrorItem>,
}

/// `_errorcontextresponseErrors`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorItem {
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// `_fixedReference` / `_reference`: `{id, name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Reference {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            id: None,
            name: Some(name.into()),
        }
    }
}

/// `Volume` (the fields we read).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Volume {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// Milliseconds since the UNIX epoch.
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub destroyed: Option<bool>,
    /// Virtual size in bytes.
    #[serde(default)]
    pub provisioned: Option<i64>,
    #[serde(default)]
    pub serial: Option<String>,
    /// Hosts and host groups connected to it (a connected volume cannot be destroyed).
    #[serde(default)]
    pub connection_count: Option<i64>,
    /// The originating volume or snapshot of a copy.
    #[serde(default)]
    pub source: Option<Reference>,
}

/// `VolumeSnapshot` (the fields we read). Its name is `VOLUME.SUFFIX`, or
/// `PGROUP.SUFFIX.VOLUME` for a volume's part of a protection group snapshot (`ARRAY:PGROUP...`
/// on a replication target).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VolumeSnapshot {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub destroyed: Option<bool>,
    #[serde(default)]
    pub provisioned: Option<i64>,
    #[serde(default)]
    pub source: Option<Reference>,
    #[serde(default)]
    pub suffix: Option<String>,
}

/// `ProtectionGroupSnapshot` (the fields we read). On a replication target its name is
/// `SOURCE_ARRAY:PGROUP.SUFFIX` and its `source` is the replica group `SOURCE_ARRAY:PGROUP`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProtectionGroupSnapshot {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub destroyed: Option<bool>,
    #[serde(default)]
    pub source: Option<Reference>,
    #[serde(default)]
    pub suffix: Option<String>,
}

/// `ProtectionGroupSnapshotTransfer`: replication progress of a protection group snapshot.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Transfer {
    pub name: String,
    #[serde(default)]
    pub destroyed: Option<bool>,
    /// A fraction, 0.0 to 1.0 ("displayed in decimal format", e.g. 0.66).
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub started: Option<i64>,
    #[serde(default)]
    pub completed: Option<i64>,
    #[serde(default)]
    pub data_transferred: Option<i64>,
}

/// `VolumeSnapshotPost`.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeSnapshotPost<'a> {
    pub suffix: &'a str,
}

/// `ProtectionGroupSnapshotPost`.
#[derive(Debug, Clone, Serialize)]
pub struct ProtectionGroupSnapshotPost<'a> {
    pub suffix: &'a str,
}

/// `VolumePost` for a copy: `{"source": {"name": "VOL.SNAP"}}`.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeCopyPost {
    pub source: Reference,
}

/// `Tag`: a key/value (in a namespace) on a volume or protection group (`resource`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Tag {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub resource: Option<Reference>,
}

/// `TagBatch`: a tag to create or update (`PUT /volumes/tags/batch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagBatch<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub namespace: &'a str,
    /// False for snapstage's tags: a copy of a staging volume is not that run's staging volume.
    pub copyable: bool,
}

/// `ProtectionGroupsVolumes`: one protection group that holds one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ProtectionGroupMember {
    #[serde(default)]
    pub group: Option<Reference>,
    #[serde(default)]
    pub member: Option<Reference>,
}

// ---- as the backend's types ----

pub(super) const GIB: i64 = 1 << 30;

pub(super) fn rfc3339(ms: Option<i64>) -> Option<String> {
    use aws_smithy_types::date_time::{DateTime, Format};
    ms.and_then(|ms| DateTime::from_millis(ms).fmt(Format::DateTime).ok())
}

pub(super) fn gib(bytes: Option<i64>) -> Option<i64> {
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

pub(super) fn volume_snapshot_info(s: &VolumeSnapshot) -> SnapshotInfo {
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

pub(super) fn volume_info(v: &Volume, snapshot: Option<&str>) -> VolumeInfo {
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

/// `(key, value)` of tags, in the order the array listed them.
pub(super) fn tag_pairs(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .filter_map(|t| Some((t.key.clone()?, t.value.clone().unwrap_or_default())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_responses_parse_with_missing_and_unknown_fields() {
        let page: Items<VolumeSnapshot> = serde_json::from_str(
            r#"{"items": [{"name": "db.snapstage-1", "created": 5, "source": {"name": "db"},
                "space": {"total_physical": 1}}], "more_items_remaining": true,
                "total_item_count": null}"#,
        )
        .unwrap();
        assert_eq!(page.items[0].name, "db.snapstage-1");
        assert_eq!(
            page.items[0].source.as_ref().unwrap().name.as_deref(),
            Some("db")
        );
        assert_eq!(page.more_items_remaining, Some(true));
        let empty: Items<Volume> = serde_json::from_str("{}").unwrap();
        assert!(empty.items.is_empty());
    }

    #[test]
    fn copy_body_is_the_spec_shape() {
        let body = VolumeCopyPost {
            source: Reference::named("db.snapstage-1"),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"source":{"name":"db.snapstage-1"}}"#
        );
    }
}
