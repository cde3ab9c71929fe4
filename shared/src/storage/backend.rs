//! The storage backend trait and its capability traits (as object_store: a small core every
//! backend has, optional abilities beside it).
//!
//! | trait | what | who |
//! | --- | --- | --- |
//! | [`Backend`] | snapshots of production sources, staging volumes from snapshots, id checks | every backend |
//! | [`Retention`] | the snapshots snapstage made of a source; delete one of them (`retain`) | EBS, FlashArray, CSI |
//! | [`PointInTime`] | several sources cut at one point in time by one call (`consistentGroup`) | EBS |
//! | [`RegionCopy`] | a completed snapshot copied to another region (`copyTo`) | EBS |
//! | [`Selection`] | the sources a label selector picks (`selector`) | CSI |
//! | [`RestoreOutputs`] | output variables of a finished restore besides `VolumeId` | CSI |
//! | [`NamedTargets`] | several volumes of one group snapshot restored to names the user chose (`targets`) | FlashArray, EBS, CSI |
//!
//! A backend offers a capability through its accessor on [`Backend`] (`retention()`,
//! `point_in_time()`, ...), which returns `None` by default. The steps ask before they use one,
//! and refuse a parameter that needs an ability the chosen backend lacks with a
//! `ConfigurationError` naming the parameter.
//!
//! The capability traits return boxed futures so that they can be used as `&dyn` trait objects;
//! [`Backend`] itself is generic (`impl Future`), used as `B: Backend` or through
//! [`super::open::AnyBackend`].

use std::future::Future;

use super::{
    CopyTarget, ExistingTarget, FoundGroup, GroupPlan, GroupSnapshot, SnapshotInfo, VolumeInfo,
    VolumeSpec,
};
use crate::error::Result;
use crate::interlock::{BoxFuture, Deletion};
use crate::job::contract::Execution;

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

    /// Lists and deletes the snapshots snapstage made ([`Retention`]), when the backend can.
    fn retention(&self) -> Option<&dyn Retention> {
        None
    }

    /// Several sources at one point in time with one call, when the backend can ([`PointInTime`]).
    /// Default: it cannot; each source is snapshotted on its own.
    fn point_in_time(&self) -> Option<&dyn PointInTime> {
        None
    }

    /// Copies snapshots to another region ([`RegionCopy`]), when the backend has regions.
    fn region_copy(&self) -> Option<&dyn RegionCopy> {
        None
    }

    /// Picks sources by a label selector ([`Selection`]), when the backend has labels.
    fn selection(&self) -> Option<&dyn Selection> {
        None
    }

    /// Reports output variables of a finished restore besides `VolumeId` ([`RestoreOutputs`]).
    fn restore_outputs(&self) -> Option<&dyn RestoreOutputs> {
        None
    }

    /// Restores several volumes of one group snapshot to names the user chose ([`NamedTargets`]),
    /// when the backend can.
    fn named_targets(&self) -> Option<&dyn NamedTargets> {
        None
    }
}

/// The snapshots snapstage made, for `retain` (keep the newest N of each source).
pub trait Retention: Send + Sync {
    /// Snapshots snapstage made of `source` (carrying its managed-by tag/label), any state,
    /// newest first. Never lists snapshots snapstage did not make.
    fn managed_snapshots<'a>(&'a self, source: &'a str)
    -> BoxFuture<'a, Result<Vec<SnapshotInfo>>>;

    /// Deletes a snapshot snapstage made. Implementations check the tags/labels again right
    /// before deleting and refuse ([`crate::Error::Refused`]) a snapshot snapstage did not make.
    fn delete_snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
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

/// Copies of snapshots in another region (disaster recovery, a second site): `copyTo`.
pub trait RegionCopy: Send + Sync {
    /// Copies a completed snapshot to another region, tagged with the run; a retry finds the
    /// run's copy instead of making a second one.
    fn copy_to_region<'a>(
        &'a self,
        snapshot: &'a SnapshotInfo,
        to: &'a CopyTarget,
        execution: &'a Execution,
    ) -> BoxFuture<'a, Result<SnapshotInfo>>;

    /// A snapshot in the region of `to` (a copy made by [`RegionCopy::copy_to_region`]).
    fn snapshot_in_region<'a>(
        &'a self,
        id: &'a str,
        to: &'a CopyTarget,
    ) -> BoxFuture<'a, Result<SnapshotInfo>>;
}

/// Sources picked by a label selector (backends whose sources have labels: CSI): `selector`.
pub trait Selection: Send + Sync {
    /// The sources `selector` picks, in a stable order.
    fn select_sources<'a>(&'a self, selector: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;
}

/// Output variables a finished restore reports besides `VolumeId` (CSI: `PvcName`,
/// `SnapshotName`, `Namespace`, for `#{Restore.PvcName}` downstream).
pub trait RestoreOutputs: Send + Sync {
    fn outputs(&self, volume: &VolumeInfo) -> Vec<(String, String)>;
}

/// Several volumes of one group snapshot (a FlashArray protection group snapshot, the snapshots
/// of one EBS `CreateSnapshots`) restored to volumes named as the user chose: `targets`. The
/// step checks every target through [`NamedTargets::target`] before it creates any, and removes
/// what it made with [`NamedTargets::remove_target`] when a later one fails (all or nothing).
pub trait NamedTargets: Send + Sync {
    /// Checks a target name as the user gave it (`targets[0].name`): the error names the field.
    fn check_target_name(&self, field: &str, name: &str) -> Result<()>;

    /// The group snapshot named `id` (`snapshotId`, or the one a continuation carries), or when
    /// `id` is `None` the newest complete one the backend's configuration points at (`None`:
    /// there is none yet). Its members are listed by source volume.
    fn group_snapshot<'a>(
        &'a self,
        id: Option<&'a str>,
        sources: &'a [String],
    ) -> BoxFuture<'a, Result<Option<GroupSnapshot>>>;

    /// What exists under target name `name` now, with its marks (`None`: nothing). Creates
    /// nothing.
    fn target<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ExistingTarget>>>;

    /// Whether an existing volume can be overwritten with a snapshot's data (`Err`: why not, for
    /// the user: FlashArray copies with overwrite, an EBS volume cannot be overwritten).
    fn can_overwrite(&self) -> std::result::Result<(), String>;

    /// Restores `snapshot` into volume `name`, tagged as this run's staging volume: a new volume,
    /// or `existing` overwritten (already checked by the step). A retry of the same run finds the
    /// volume it made instead of making a second one.
    fn create_target<'a>(
        &'a self,
        snapshot: &'a SnapshotInfo,
        name: &'a str,
        existing: Option<&'a ExistingTarget>,
        spec: &'a VolumeSpec,
        execution: &'a Execution,
    ) -> BoxFuture<'a, Result<VolumeInfo>>;

    /// Removes a staging volume this run made (the rollback of a failed set): the marks are read
    /// again and only a staging volume snapstage made is removed.
    fn remove_target<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Deletion>>;
}
