//! `restore-to-staging` with `targets`: several volumes of one group snapshot (a FlashArray
//! protection group snapshot, the snapshots of one EBS `CreateSnapshots`), each restored to a
//! name the user chose, in one action, all or nothing.
//!
//! Order: every target is checked first (its name, that its source is a volume of the group, and
//! what already exists under its name: this run's volume is reused, an earlier run's staging
//! volume is overwritten only with `overwrite: true`, anything else is refused). Only then are
//! volumes made; when one fails, the volumes this run made are removed again and the step fails
//! with the original error and what was rolled back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::params::{RestoreParams, RestoreTarget};
use super::resume;
use crate::error::{Error, Result};
use crate::interlock::Deletion;
use crate::interlock::markers::execution_tag;
use crate::job::contract::{Outcome, Step};
use crate::storage::{
    Backend, ExistingTarget, GroupSnapshot, NamedTargets, SnapshotInfo, SnapshotState, VolumeInfo,
    VolumeSpec, VolumeState,
};

/// The state a `targets` run carries from one invocation to the next: the group snapshot, and
/// the volumes made so far (in the order of `targets`; a retry finds them by the run's marks).
#[derive(Debug, Serialize, Deserialize)]
struct TargetsState {
    snapshot: String,
    #[serde(default)]
    volumes: Vec<String>,
}

/// What the step does with one target.
#[derive(Debug)]
enum Plan {
    /// Nothing under the name: a new volume.
    New,
    /// This run's volume (a retry, a duplicate event): used as it is.
    Reuse(ExistingTarget),
    /// This run's volume, destroyed by a rollback of an earlier try: recovered and written again.
    Recover(ExistingTarget),
    /// An earlier run's staging volume, overwritten (`overwrite: true`).
    Overwrite(ExistingTarget),
}

impl Plan {
    fn verb(&self) -> &'static str {
        match self {
            Plan::New => "create",
            Plan::Reuse(_) => "reuse",
            Plan::Recover(_) => "recover and rewrite",
            Plan::Overwrite(_) => "overwrite",
        }
    }
}

/// One step of `restore-to-staging` with `targets` (parameters already validated).
pub(super) async fn restore_targets<B: Backend>(
    backend: &B,
    step: Step<RestoreParams>,
) -> Result<Outcome> {
    let p = &step.params;
    let targets = p.targets.as_deref().unwrap_or_default();
    let nt = backend.named_targets().ok_or_else(|| {
        Error::parameter(
            "targets",
            format!(
                "backend {:?} cannot restore several volumes to chosen names (FlashArray/Cloud Block Store, EBS and CSI can); restore each volume with sourceVolumeId",
                backend.name()
            ),
        )
    })?;
    if let Some(id) = &p.snapshot_id {
        backend.check_snapshot_id("snapshotId", id)?;
    }
    for (i, t) in targets.iter().enumerate() {
        backend.check_source(&format!("targets[{i}].sourceVolumeId"), &t.source_volume_id)?;
        nt.check_target_name(&format!("targets[{i}].name"), &t.name)?;
    }
    let ex = &step.execution;
    let state = resume::<TargetsState>(step.state)?;

    let group = find_group(nt, p, targets, state.as_ref()).await?;
    match &group.state {
        SnapshotState::Failed(why) => {
            return Err(Error::Backend {
                backend: backend.name(),
                message: format!("{} failed: {why}", group.what),
                source: None,
            });
        }
        SnapshotState::Pending { percent } => {
            return Ok(Outcome::Continue {
                summary: format!("waiting for {} ({percent}%)", group.what),
                percent: percent / 2,
                state: serde_json::json!({"snapshot": group.id}),
            });
        }
        SnapshotState::Ready => {}
    }
    let snapshots = members(&group, targets)?;

    // Every target is checked before any volume is made.
    let run = execution_tag(ex);
    let mut plans = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let existing = nt.target(&t.name).await?;
        plans.push(plan(nt, p.overwrite, i, existing, &run)?);
    }

    if p.dry_run {
        let what: Vec<String> = targets
            .iter()
            .zip(&plans)
            .map(|(t, plan)| format!("{} {} from {}", plan.verb(), t.name, t.source_volume_id))
            .collect();
        return Ok(Outcome::Done {
            summary: format!(
                "dry run, nothing changed: from {} would {}",
                group.what,
                what.join(", ")
            ),
            outputs: BTreeMap::from([
                ("DryRun".to_string(), "true".to_string()),
                ("SnapshotId".to_string(), group.id.clone()),
                ("Backend".to_string(), backend.name().to_string()),
            ]),
        });
    }

    let spec = VolumeSpec {
        zone: p.availability_zone.clone().unwrap_or_default(),
        volume_type: p.volume_type().to_string(),
    };
    let mut made: Vec<String> = Vec::new();
    let mut overwritten: Vec<String> = Vec::new();
    let mut volumes: Vec<VolumeInfo> = Vec::with_capacity(targets.len());
    for ((t, plan), snap) in targets.iter().zip(&plans).zip(&snapshots) {
        let result = match plan {
            Plan::Reuse(e) => backend.volume(&e.id).await,
            Plan::New => nt.create_target(snap, &t.name, None, &spec, ex).await,
            Plan::Recover(e) | Plan::Overwrite(e) => {
                nt.create_target(snap, &t.name, Some(e), &spec, ex).await
            }
        };
        match result {
            Ok(v) => {
                tracing::info!(volume = %v.id, name = %t.name, source = %t.source_volume_id, action = plan.verb(), "staging target ready");
                if matches!(plan, Plan::Overwrite(_)) {
                    overwritten.push(v.id.clone());
                } else {
                    made.push(v.id.clone());
                }
                volumes.push(v);
            }
            Err(e) => {
                let note = rollback(nt, &made, &overwritten, &t.name).await;
                return Err(e.noted(&note));
            }
        }
    }

    if let Some((v, why)) = volumes.iter().find_map(|v| match &v.state {
        VolumeState::Failed(why) => Some((v, why)),
        _ => None,
    }) {
        let note = rollback(nt, &made, &overwritten, &v.id).await;
        return Err(Error::Backend {
            backend: backend.name(),
            message: format!("staging volume {} failed ({why}); {note}", v.id),
            source: None,
        });
    }
    let ids: Vec<String> = volumes.iter().map(|v| v.id.clone()).collect();
    if let Some(v) = volumes
        .iter()
        .find(|v| matches!(v.state, VolumeState::Creating))
    {
        return Ok(Outcome::Continue {
            summary: format!(
                "{} staging volumes from {}: {} is being created",
                volumes.len(),
                group.what,
                v.id
            ),
            percent: 75,
            state: serde_json::to_value(TargetsState {
                snapshot: group.id.clone(),
                volumes: ids,
            })
            .map_err(|e| Error::Internal(format!("targets state: {e}")))?,
        });
    }
    Ok(done(backend.name(), &group, targets, &snapshots, &volumes))
}

/// The group snapshot: the one a continuation carries, `snapshotId`, or the newest complete one.
async fn find_group(
    nt: &dyn NamedTargets,
    p: &RestoreParams,
    targets: &[RestoreTarget],
    state: Option<&TargetsState>,
) -> Result<GroupSnapshot> {
    let mut sources: Vec<String> = Vec::new();
    for t in targets {
        if !sources.contains(&t.source_volume_id) {
            sources.push(t.source_volume_id.clone());
        }
    }
    let id = state
        .map(|s| s.snapshot.as_str())
        .or(p.snapshot_id.as_deref());
    match nt.group_snapshot(id, &sources).await {
        Ok(Some(g)) => Ok(g),
        Ok(None) => match id {
            Some(id) => Err(Error::parameter(
                "snapshotId",
                format!("{id} does not exist (or is not a snapshot of several volumes)"),
            )),
            None => Err(Error::parameter(
                "snapshotId",
                format!(
                    "no complete group snapshot made by snapstage holds {}; run snapshot-production first or pass snapshotId",
                    sources.join(", ")
                ),
            )),
        },
        Err(Error::NotFound { message, .. }) if state.is_none() && id.is_some() => Err(
            Error::parameter("snapshotId", format!("{message} does not exist")),
        ),
        Err(e) => Err(e),
    }
}

/// Each target's snapshot in the group; a target whose source is not a volume of the group, or
/// whose name is one of the group's volumes, is refused naming it.
fn members(group: &GroupSnapshot, targets: &[RestoreTarget]) -> Result<Vec<SnapshotInfo>> {
    let listed = || {
        group
            .members
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let Some((_, snap)) = group.members.iter().find(|(s, _)| *s == t.source_volume_id) else {
            return Err(Error::parameter(
                format!("targets[{i}].sourceVolumeId"),
                format!(
                    "{} is not a volume of {}; its volumes are: {}",
                    t.source_volume_id,
                    group.what,
                    listed()
                ),
            ));
        };
        if let Some((s, _)) = group
            .members
            .iter()
            .find(|(s, snap)| *s == t.name || snap.source == t.name)
        {
            return Err(Error::Refused(format!(
                "targets[{i}].name: {} is the source volume {s} of {}; restore-to-staging never writes over a source",
                t.name, group.what
            )));
        }
        out.push(snap.clone());
    }
    Ok(out)
}

/// What may be done with what exists under a target's name.
fn plan(
    nt: &dyn NamedTargets,
    overwrite: bool,
    i: usize,
    existing: Option<ExistingTarget>,
    run: &str,
) -> Result<Plan> {
    let Some(e) = existing else {
        return Ok(Plan::New);
    };
    let field = format!("targets[{i}].name");
    if let Some(m) = e.marks.production_marker() {
        return Err(Error::Refused(format!(
            "{field}: {} exists and is marked production ({} {}={}); restore-to-staging never writes to it",
            e.marks.what, m.on, m.key, m.value
        )));
    }
    match e.marks.staging_run.as_deref() {
        None => Err(Error::Refused(format!(
            "{field}: {} exists and does not carry snapstage's staging mark (snapstage:managed-by=snapstage, snapstage:role=staging); restore-to-staging writes only volumes it made: pick another name",
            e.marks.what
        ))),
        Some(r) if r == run => Ok(if e.destroyed {
            Plan::Recover(e)
        } else {
            Plan::Reuse(e)
        }),
        Some(other) => {
            if let Err(why) = nt.can_overwrite() {
                return Err(Error::parameter(
                    field,
                    format!(
                        "{} exists, a staging volume of an earlier run ({other}); {why}",
                        e.marks.what
                    ),
                ));
            }
            if !overwrite {
                return Err(Error::parameter(
                    field,
                    format!(
                        "{} exists, a staging volume of an earlier run ({other}); set \"overwrite\": true to overwrite it with this snapshot, or pick another name",
                        e.marks.what
                    ),
                ));
            }
            Ok(Plan::Overwrite(e))
        }
    }
}

/// Removes the volumes this run made (in reverse order); says what was rolled back, what could
/// not be, and that overwritten volumes keep the new data.
async fn rollback(
    nt: &dyn NamedTargets,
    made: &[String],
    overwritten: &[String],
    failed: &str,
) -> String {
    let mut removed = Vec::new();
    let mut left = Vec::new();
    for id in made.iter().rev() {
        match nt.remove_target(id).await {
            Ok(Deletion::Deleted | Deletion::Gone | Deletion::WouldDelete) => {
                removed.push(id.clone())
            }
            Ok(Deletion::Waiting(why) | Deletion::Kept(why)) => {
                left.push(format!("{id} ({why})"));
            }
            Err(e) => {
                tracing::warn!(volume = %id, error = %e.chain(), "rollback: could not remove a staging volume");
                left.push(format!("{id} ({e})"));
            }
        }
    }
    let mut note = format!("stopped at target {failed}");
    if made.is_empty() {
        note.push_str("; no volume was made, nothing to roll back");
    } else if !removed.is_empty() {
        note.push_str(&format!(
            "; rolled back (removed) the staging volumes this run made: {}",
            removed.join(", ")
        ));
    }
    if !left.is_empty() {
        note.push_str(&format!(
            "; could not remove {}: delete them by hand or re-run",
            left.join(", ")
        ));
    }
    if !overwritten.is_empty() {
        note.push_str(&format!(
            "; already overwritten (an overwrite cannot be undone): {}",
            overwritten.join(", ")
        ));
    }
    note
}

fn done(
    backend: &str,
    group: &GroupSnapshot,
    targets: &[RestoreTarget],
    snapshots: &[SnapshotInfo],
    volumes: &[VolumeInfo],
) -> Outcome {
    let ids: Vec<&str> = volumes.iter().map(|v| v.id.as_str()).collect();
    let mut outputs = BTreeMap::from([
        ("VolumeIds".to_string(), ids.join(",")),
        ("SnapshotId".to_string(), group.id.clone()),
        (
            "SnapshotIds".to_string(),
            snapshots
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("Backend".to_string(), backend.to_string()),
    ]);
    for (t, v) in targets.iter().zip(volumes) {
        if let Some(o) = &t.output {
            outputs.insert(format!("{o}VolumeId"), v.id.clone());
        }
    }
    let pairs: Vec<String> = targets
        .iter()
        .zip(volumes)
        .map(|(t, v)| {
            if v.id == t.name {
                format!("{} → {}", t.source_volume_id, t.name)
            } else {
                format!("{} → {} ({})", t.source_volume_id, t.name, v.id)
            }
        })
        .collect();
    Outcome::Done {
        summary: format!(
            "{} staging volume{} ready from {}: {}",
            volumes.len(),
            if volumes.len() == 1 { "" } else { "s" },
            group.what,
            pairs.join(", ")
        ),
        outputs,
    }
}
