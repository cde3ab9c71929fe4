//! EC2's snapshots and volumes as the backend's [`SnapshotInfo`] and [`VolumeInfo`].

use aws_sdk_ec2::types::Tag;
use aws_smithy_types::date_time::Format;

use super::B;
use crate::error::{Error, Result};
use crate::interlock::markers::{MANAGED_BY, TAG_MANAGED_BY};
use crate::storage::{SnapshotInfo, SnapshotState, VolumeInfo, VolumeState};

pub(super) fn snapshot_info(s: &aws_sdk_ec2::types::Snapshot) -> Result<SnapshotInfo> {
    use aws_sdk_ec2::types::SnapshotState as S;
    let id = s.snapshot_id().ok_or_else(|| Error::Backend {
        backend: B,
        message: "snapshot without an id".into(),
        source: None,
    })?;
    let percent = s
        .progress()
        .and_then(|p| p.trim_end_matches('%').parse::<u8>().ok())
        .unwrap_or(0);
    let state = match s.state() {
        Some(S::Completed) => SnapshotState::Ready,
        Some(S::Error) | Some(S::Recoverable) => SnapshotState::Failed(format!(
            "state {}: {}",
            s.state().map(|x| x.as_str()).unwrap_or_default(),
            s.state_message().unwrap_or("no message")
        )),
        _ => SnapshotState::Pending {
            percent: percent.min(99),
        },
    };
    Ok(SnapshotInfo {
        id: id.to_string(),
        source: s.volume_id().unwrap_or_default().to_string(),
        state,
        started: s.start_time().and_then(|t| t.fmt(Format::DateTime).ok()),
        size_gib: s.volume_size().map(i64::from),
    })
}

pub(super) fn volume_info(v: &aws_sdk_ec2::types::Volume) -> Result<VolumeInfo> {
    use aws_sdk_ec2::types::VolumeState as S;
    let id = v.volume_id().ok_or_else(|| Error::Backend {
        backend: B,
        message: "volume without an id".into(),
        source: None,
    })?;
    let state = match v.state() {
        Some(S::Available) => VolumeState::Available,
        Some(S::InUse) => VolumeState::InUse,
        Some(S::Creating) => VolumeState::Creating,
        Some(other) => VolumeState::Failed(format!("state {}", other.as_str())),
        None => VolumeState::Creating,
    };
    Ok(VolumeInfo {
        id: id.to_string(),
        state,
        zone: v.availability_zone().map(str::to_string),
        snapshot: v
            .snapshot_id()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        size_gib: v.size().map(i64::from),
        tags: v
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().into(),
                    t.value().unwrap_or_default().into(),
                )
            })
            .collect(),
    })
}

pub(super) fn managed(tags: &[Tag]) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(TAG_MANAGED_BY) && t.value() == Some(MANAGED_BY))
}
