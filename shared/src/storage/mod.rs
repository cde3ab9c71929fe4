//! Snapshot and volume backends behind one small trait and its capability traits, and the two
//! storage steps (`snapshot-production`, `restore-to-staging`) written once over them.
//!
//! Every resource snapstage makes carries tags/labels that tie it to the run
//! ([`TAG_EXECUTION`](crate::interlock::markers::TAG_EXECUTION)), so a retried or duplicated
//! invocation finds its own work instead of making a second one.
//!
//! | where | what |
//! | --- | --- |
//! | `mod.rs` | the shared types: [`SnapshotInfo`], [`VolumeInfo`], [`CopyTarget`], [`BackendKind`], [`check_id`] |
//! | [`backend`] | the core [`Backend`] trait and the capability traits beside it: [`Retention`], [`PointInTime`], [`RegionCopy`], [`Selection`], [`RestoreOutputs`], [`NamedTargets`] |
//! | [`open`] | one factory from configuration ([`open::open`]), [`open::AnyBackend`], the interlock's volume reads |
//! | [`ebs`] | Amazon EBS over the EC2 API |
//! | [`flasharray`] | Pure FlashArray / Cloud Block Store over REST 2.x |
//! | [`csi`] | Kubernetes VolumeSnapshots, any CSI driver |
//! | [`hooks`] | app-consistent snapshots: commands in the database's pod around creation, whatever the backend |
//! | [`steps`] | the two storage steps: parameters, snapshot, restore |
//!
//! Each backend is a folder of the same shape: `mod.rs` (the type, its [`Backend`] and capability
//! impls), `client.rs`/`api.rs` (the calls to the service), `model.rs` (wire types and their
//! mapping to [`SnapshotInfo`]/[`VolumeInfo`]), `tests.rs` (unit tests), and files for what only
//! it has (EBS `group.rs` and `region.rs`, CSI `restore.rs`, the interlock's `marks.rs`). The
//! conformance suite every backend runs is `tests/tests/conformance.rs`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod backend;
pub mod csi;
pub mod ebs;
pub mod flasharray;
pub mod hooks;
pub mod open;
pub mod steps;

pub use backend::{
    Backend, NamedTargets, PointInTime, RegionCopy, RestoreOutputs, Retention, Selection,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotState {
    Pending { percent: u8 },
    Ready,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub source: String,
    pub state: SnapshotState,
    /// RFC 3339 start time, when the backend reports one.
    pub started: Option<String>,
    pub size_gib: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: String,
    pub state: VolumeState,
    pub zone: Option<String>,
    pub snapshot: Option<String>,
    pub size_gib: Option<i64>,
    pub tags: Vec<(String, String)>,
}

/// Where a snapshot is copied to (`copyTo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CopyTarget {
    /// The destination region, e.g. `us-west-2`.
    pub region: String,
    /// KMS key in the destination region for the copy (the copy is then encrypted with it).
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

impl CopyTarget {
    pub fn validate(&self) -> Result<()> {
        let r = &self.region;
        let parts: Vec<&str> = r.split('-').collect();
        let ok = parts.len() >= 3
            && parts[..parts.len() - 1]
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
            && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
            && !parts[parts.len() - 1].is_empty();
        if !ok {
            return Err(Error::parameter(
                "copyTo.region",
                format!("expected a region like \"us-west-2\", got {r:?}"),
            ));
        }
        if let Some(k) = &self.kms_key_id
            && (k.is_empty() || k.len() > 2048 || k.chars().any(char::is_whitespace))
        {
            return Err(Error::parameter(
                "copyTo.kmsKeyId",
                "expected a KMS key id, alias or ARN in the destination region",
            ));
        }
        Ok(())
    }
}

/// Where and how a staging volume is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub zone: String,
    pub volume_type: String,
}

/// Whether several sources can be cut at one point in time by one call ([`PointInTime::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupPlan {
    /// One call snapshots exactly these sources together: they are all on `host` (EBS: the
    /// instance they are attached to).
    Together { host: String },
    /// Not possible; `why` says which source is where, for the user to act on.
    Apart { why: String },
}

/// What this run already made of a group's sources ([`PointInTime::find`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundGroup {
    /// This run's snapshot of each source, in the order of the sources (`None`: not made yet).
    pub snapshots: Vec<Option<SnapshotInfo>>,
    /// All of them were made by one group call (one point in time).
    pub together: bool,
}

/// A snapshot of several volumes at one point in time, as restore-to-staging's `targets` reads
/// it ([`NamedTargets::group_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// How the group is named again (`snapshotId`, the continuation): a FlashArray protection
    /// group snapshot (`ARRAY:PG.SUFFIX`), an EBS snapshot of the group.
    pub id: String,
    /// What the user reads: `pg snapshot fa-onprem:pg-ci.42`, `EBS snapshot group of i-0abc`.
    pub what: String,
    pub state: SnapshotState,
    /// Each member's source volume (as the user names it) and its snapshot, in a stable order.
    pub members: Vec<(String, SnapshotInfo)>,
}

/// A volume that exists under a target name ([`NamedTargets::target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingTarget {
    /// Its id (the name on an array, `vol-…` on EBS).
    pub id: String,
    /// Its marks: production markers, snapstage's staging mark and run.
    pub marks: crate::interlock::Marks,
    /// Destroyed but not yet eradicated (FlashArray): the name is taken until the array
    /// eradicates it; restoring into it recovers it first.
    pub destroyed: bool,
}

/// The backends a user can name in `backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Ebs,
    #[serde(rename = "flasharray")]
    FlashArray,
    Csi,
}

/// Checks an EBS-style id (`vol-…`, `snap-…`) and names the field when it is wrong.
pub fn check_id(field: &str, value: &str, prefix: &str) -> Result<()> {
    let ok = value.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 32 && rest.chars().all(|c| c.is_ascii_hexdigit())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::parameter(
            field,
            format!("expected an id like \"{prefix}0123456789abcdef0\", got {value:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_with_the_field_name() {
        check_id("volumeIds[0]", "vol-0123abcd", "vol-").unwrap();
        let e = check_id("volumeIds[0]", "42", "vol-").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("volumeIds[0]: expected an id like"),
            "{e}"
        );
        assert!(check_id("snapshotId", "snap-", "snap-").is_err());
        assert!(check_id("snapshotId", "snap-xyz", "snap-").is_err());
    }
}
