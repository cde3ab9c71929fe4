//! Snapshot and volume backends behind one small trait, and the two storage steps
//! (`snapshot-production`, `restore-to-staging`) written once over it.
//!
//! Every resource snapstage makes carries tags/labels that tie it to the run ([`TAG_EXECUTION`]),
//! so a retried or duplicated invocation finds its own work instead of making a second one.
//!
//! Backends: [`ebs`] (EC2 API), [`flasharray`] (FlashArray / Cloud Block Store REST 2.x),
//! [`csi`] (Kubernetes VolumeSnapshots, any CSI driver), chosen by [`open`] from the step's
//! parameters. [`hooks`] makes a snapshot app-consistent by running commands in the database's
//! pod around its creation, whatever the backend.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::interlock::BoxFuture;
use crate::job::contract::Execution;

pub mod csi;
pub mod ebs;
pub mod flasharray;
pub mod hooks;
pub mod open;
pub mod steps;

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

/// A backend that can snapshot several of its sources at one point in time with one call (EBS:
/// `CreateSnapshots` of the volumes of one instance). Reached through [`Backend::point_in_time`];
/// backends that cut groups their own way (a FlashArray protection group, a CSI
/// VolumeGroupSnapshot) or not at all do not implement it.
pub trait PointInTime: Send + Sync {
    /// Whether `sources` can be snapshotted together, and where they are.
    fn plan<'a>(&'a self, sources: &'a [String]) -> BoxFuture<'a, Result<GroupPlan>>;

    /// The snapshots this run already made of `sources` (by its tags), and whether they are one
    /// group.
    fn find<'a>(
        &'a self,
        sources: &'a [String],
        execution: &'a Execution,
    ) -> BoxFuture<'a, Result<FoundGroup>>;

    /// Snapshots exactly `sources` (all on `host`) with one call, tagged with the run as
    /// [`Backend::create_snapshot`] tags a snapshot; returns them in the order of `sources`. A
    /// retried try finds the run's group instead of making a second one.
    fn create<'a>(
        &'a self,
        sources: &'a [String],
        host: &'a str,
        execution: &'a Execution,
        description: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SnapshotInfo>>>;
}

/// A storage backend: snapshots of production sources, staging volumes from snapshots.
pub trait Backend: Send + Sync {
    /// `ebs`, `csi`, `flasharray`: reported as the `Backend` output variable.
    fn name(&self) -> &'static str;

    /// Checks a production source exists; returns its size in GiB when known.
    fn describe_source(&self, source: &str) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// The snapshot this run already made of `source`, if any.
    fn find_snapshot(
        &self,
        source: &str,
        execution: &Execution,
    ) -> impl Future<Output = Result<Option<SnapshotInfo>>> + Send;

    fn create_snapshot(
        &self,
        source: &str,
        execution: &Execution,
        description: &str,
    ) -> impl Future<Output = Result<SnapshotInfo>> + Send;

    fn snapshot(&self, id: &str) -> impl Future<Output = Result<SnapshotInfo>> + Send;

    /// The newest completed snapshot of `source` that snapstage made.
    fn newest_snapshot(
        &self,
        source: &str,
    ) -> impl Future<Output = Result<Option<SnapshotInfo>>> + Send;

    /// The staging volume this run already made, if any.
    fn find_volume(
        &self,
        execution: &Execution,
    ) -> impl Future<Output = Result<Option<VolumeInfo>>> + Send;

    fn create_volume(
        &self,
        snapshot: &SnapshotInfo,
        spec: &VolumeSpec,
        execution: &Execution,
    ) -> impl Future<Output = Result<VolumeInfo>> + Send;

    fn volume(&self, id: &str) -> impl Future<Output = Result<VolumeInfo>> + Send;

    /// Checks a source as the user named it (`volumeIds[0]`, ...): the error names the field and
    /// shows the expected form.
    fn check_source(&self, field: &str, source: &str) -> Result<()>;

    /// Checks a snapshot id as the user named it.
    fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()>;

    /// The sources a label selector picks (backends that have labels: CSI). The default refuses.
    fn select_sources(&self, selector: &str) -> impl Future<Output = Result<Vec<String>>> + Send {
        let name = self.name();
        let selector = selector.to_string();
        async move {
            Err(Error::parameter(
                "selector",
                format!(
                    "backend {name:?} selects sources by name only; list them in volumeIds instead of selector {selector:?}"
                ),
            ))
        }
    }

    /// Snapshots snapstage made of `source` (carrying its managed-by tag/label), any state,
    /// newest first. Used for retention; never lists snapshots snapstage did not make.
    fn managed_snapshots(
        &self,
        source: &str,
    ) -> impl Future<Output = Result<Vec<SnapshotInfo>>> + Send;

    /// Copies a completed snapshot to another region (disaster recovery, a second site), tagged
    /// with the run; a retry finds the run's copy instead of making a second one. The default
    /// refuses: only backends with regions copy.
    fn copy_to_region(
        &self,
        snapshot: &SnapshotInfo,
        to: &CopyTarget,
        execution: &Execution,
    ) -> impl Future<Output = Result<SnapshotInfo>> + Send {
        let _ = (snapshot, execution);
        let (name, region) = (self.name(), to.region.clone());
        async move {
            Err(Error::parameter(
                "copyTo",
                format!("backend {name:?} cannot copy snapshots to region {region}; remove copyTo"),
            ))
        }
    }

    /// A snapshot in the region of `to` (a copy made by [`Backend::copy_to_region`]).
    fn snapshot_in_region(
        &self,
        id: &str,
        to: &CopyTarget,
    ) -> impl Future<Output = Result<SnapshotInfo>> + Send {
        let _ = id;
        let (name, region) = (self.name(), to.region.clone());
        async move {
            Err(Error::parameter(
                "copyTo",
                format!("backend {name:?} has no snapshots in region {region}"),
            ))
        }
    }

    /// Deletes a snapshot snapstage made. Implementations check the tags/labels again right
    /// before deleting and refuse ([`Error::Refused`]) a snapshot snapstage did not make.
    fn delete_snapshot(&self, id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Several sources at one point in time with one call, when the backend can ([`PointInTime`]).
    /// Default: it cannot; each source is snapshotted on its own.
    fn point_in_time(&self) -> Option<&dyn PointInTime> {
        None
    }

    /// Output variables a finished restore reports besides `VolumeId` (CSI: `PvcName`,
    /// `SnapshotName`, `Namespace`, for `#{Restore.PvcName}` downstream). Default: none.
    fn restore_outputs(&self, volume: &VolumeInfo) -> Vec<(String, String)> {
        let _ = volume;
        Vec::new()
    }
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
