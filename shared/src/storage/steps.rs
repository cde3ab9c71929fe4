//! The two storage steps, written once over [`Backend`]: `snapshot-production` and
//! `restore-to-staging`. Long waits never sleep: a step starts or checks the work once and returns
//! `Outcome::Continue` with the ids it is waiting for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::csi::CsiParams;
use super::hooks::{HookParams, Hooks};
use super::open::{BackendChoice, FlashArrayParams};
use super::{
    Backend, BackendKind, CopyTarget, GroupPlan, Retention, SnapshotInfo, SnapshotState,
    VolumeSpec, VolumeState,
};
use crate::error::{Error, Result};
use crate::interlock::markers::is_production;
use crate::job::contract::{Execution, Outcome, Step};

/// `snapshot-production` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SnapshotParams {
    /// The production volume(s) to snapshot, as one group: `vol-…` (EBS), array volume names
    /// (FlashArray). Or give `selector`.
    #[serde(default, alias = "volumes")]
    pub volume_ids: Vec<String>,
    /// A label selector that picks the production volumes (backends with labels).
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub backend: BackendKind,
    /// How to reach a FlashArray / Cloud Block Store (`backend: "flasharray"`).
    #[serde(default)]
    pub flasharray: Option<FlashArrayParams>,
    /// The cluster and production namespace (`backend: "csi"`).
    #[serde(default)]
    pub csi: Option<CsiParams>,
    /// Commands run in the database's pod around snapshot creation (app-consistent snapshots).
    #[serde(default)]
    pub hooks: Option<HookParams>,
    /// Several volumes at one point in time. `true`: required; one call cuts them all (EBS:
    /// CreateSnapshots of the one instance they are attached to) or the step fails saying why.
    /// `false`: each volume on its own. Unset: one point in time when the backend can, otherwise
    /// each volume on its own and the summary says so (`PointInTime` output).
    #[serde(default)]
    pub consistent_group: Option<bool>,
    /// Snapshot description; defaults to one naming the run.
    #[serde(default)]
    pub description: Option<String>,
    /// Copy each completed snapshot to another region (EBS), e.g. for a second site.
    #[serde(default)]
    pub copy_to: Option<CopyTarget>,
    /// Keep the newest N snapshots snapstage made of each volume (this run's included) and
    /// delete older ones that carry snapstage's tags. Unset: delete nothing.
    #[serde(default)]
    pub retain: Option<u32>,
    /// Report what would be done; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

pub const MAX_VOLUMES: usize = 16;
pub const MAX_RETAIN: u32 = 1000;

impl SnapshotParams {
    /// Checks what can be checked without the backend (ids are checked by the backend).
    pub fn validate(&self) -> Result<()> {
        self.choice().validate()?;
        match (&self.selector, self.volume_ids.is_empty()) {
            (Some(_), false) => {
                return Err(Error::parameter(
                    "selector",
                    "give either volumeIds or selector, not both",
                ));
            }
            (Some(sel), true) => {
                if sel.trim().is_empty() || sel.len() > 1024 {
                    return Err(Error::parameter(
                        "selector",
                        format!("expected a label selector like \"app=orders-db\", got {sel:?}"),
                    ));
                }
            }
            (None, true) if self.protection_group().is_some() => {
                if self.retain.is_some() {
                    return Err(Error::parameter(
                        "retain",
                        "a protection group keeps snapshots by its own retention policy; remove retain or snapshot volumes",
                    ));
                }
            }
            (None, false) if self.protection_group().is_some() => {
                return Err(Error::parameter(
                    "volumeIds",
                    "give either volumeIds or flasharray.protectionGroup (which snapshots all of its volumes as one group), not both",
                ));
            }
            (None, _) => check_count(self.volume_ids.len())?,
        }
        for (i, v) in self.volume_ids.iter().enumerate() {
            if self.volume_ids[..i].contains(v) {
                return Err(Error::parameter(
                    format!("volumeIds[{i}]"),
                    format!("{v} is listed twice"),
                ));
            }
        }
        if let Some(d) = &self.description
            && d.len() > 255
        {
            return Err(Error::parameter("description", "at most 255 characters"));
        }
        if let Some(c) = &self.copy_to {
            c.validate()?;
        }
        if let Some(n) = self.retain
            && !(1..=MAX_RETAIN).contains(&n)
        {
            return Err(Error::parameter(
                "retain",
                format!("expected 1 to {MAX_RETAIN} snapshots to keep per volume, got {n}"),
            ));
        }
        if let Some(csi) = &self.csi
            && csi.group_snapshot_class.is_some()
            && self.selector.is_none()
        {
            return Err(Error::parameter(
                "selector",
                "missing: csi.groupSnapshotClass snapshots the PVCs a label selector picks as one group; give selector (e.g. \"app=orders-db\") instead of volumeIds",
            ));
        }
        if let Some(h) = &self.hooks {
            h.validate(self.csi.as_ref())?;
        }
        match (self.consistent_group, self.native_group()) {
            (Some(false), Some(group)) => {
                return Err(Error::parameter(
                    "consistentGroup",
                    format!(
                        "false asks for one snapshot per volume, but {group} snapshots as one group; remove one of them"
                    ),
                ));
            }
            (Some(true), None) if self.backend == BackendKind::FlashArray => {
                return Err(Error::parameter(
                    "consistentGroup",
                    "backend \"flasharray\" cuts several volumes at one point in time through a protection group: give flasharray.protectionGroup instead of volumeIds",
                ));
            }
            (Some(true), None) if self.backend == BackendKind::Csi => {
                return Err(Error::parameter(
                    "consistentGroup",
                    "backend \"csi\" cuts several PVCs at one point in time with a VolumeGroupSnapshot: give csi.groupSnapshotClass and a selector instead of volumeIds",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    pub fn choice(&self) -> BackendChoice<'_> {
        BackendChoice {
            kind: self.backend,
            flasharray: self.flasharray.as_ref(),
            csi: self.csi.as_ref(),
        }
    }

    fn protection_group(&self) -> Option<&str> {
        self.flasharray.as_ref()?.protection_group.as_deref()
    }

    /// The parameter that makes the backend cut its own group (one point in time), if any.
    fn native_group(&self) -> Option<&'static str> {
        if self.protection_group().is_some() {
            Some("flasharray.protectionGroup")
        } else if self
            .csi
            .as_ref()
            .is_some_and(|c| c.group_snapshot_class.is_some())
        {
            Some("csi.groupSnapshotClass")
        } else {
            None
        }
    }
}

/// `PointInTime` output: several volumes cut by one call.
const GROUP: &str = "group";
/// `PointInTime` output: several volumes, each snapshotted on its own.
const PER_VOLUME: &str = "per-volume";
/// `PointInTime` output: one volume.
const SINGLE: &str = "single";

/// What the parameters alone imply: the backend's own group, one volume, or (also for tokens
/// from before the `PointInTime` output) one by one.
fn implied_point_in_time(p: &SnapshotParams, sources: &[String]) -> &'static str {
    if p.native_group().is_some() {
        GROUP
    } else if sources.len() == 1 {
        SINGLE
    } else {
        PER_VOLUME
    }
}

/// How a run cuts its snapshots, and what an earlier try of it already made.
struct Cut {
    /// This run's snapshot of each source already made, in the order of the sources.
    found: Vec<Option<SnapshotInfo>>,
    /// One call of the backend's [`super::PointInTime`] on this host makes the missing ones.
    host: Option<String>,
    /// [`GROUP`], [`PER_VOLUME`] or [`SINGLE`].
    point_in_time: &'static str,
    /// Why several volumes are not one point in time ([`PER_VOLUME`]).
    why: Option<String>,
}

/// Decides how this run cuts `sources` (reads only): one group call when the backend can and
/// `consistentGroup` is not false; otherwise one snapshot per source. What an earlier try of
/// the run made is reused; a partial set is completed one by one, or refused when
/// `consistentGroup` is true (its snapshots would not be one point in time).
async fn cut<B: Backend>(
    backend: &B,
    p: &SnapshotParams,
    sources: &[String],
    ex: &Execution,
) -> Result<Cut> {
    let required = p.consistent_group == Some(true);
    let group_call = backend.point_in_time().filter(|_| {
        sources.len() > 1 && p.consistent_group != Some(false) && p.native_group().is_none()
    });
    let Some(group_call) = group_call else {
        let mut found = Vec::with_capacity(sources.len());
        for v in sources {
            found.push(backend.find_snapshot(v, ex).await?);
        }
        let implied = implied_point_in_time(p, sources);
        let (point_in_time, why) = if implied != PER_VOLUME {
            (implied, None)
        } else if required {
            return Err(Error::parameter(
                "consistentGroup",
                format!(
                    "backend {:?} cannot snapshot several volumes at one point in time; snapshot one volume per step or set consistentGroup false",
                    backend.name()
                ),
            ));
        } else if p.consistent_group == Some(false) {
            (PER_VOLUME, Some("consistentGroup is false".to_string()))
        } else {
            (
                PER_VOLUME,
                Some(format!(
                    "backend {:?} snapshots each volume on its own",
                    backend.name()
                )),
            )
        };
        return Ok(Cut {
            found,
            host: None,
            point_in_time,
            why,
        });
    };
    let found = group_call.find(sources, ex).await?;
    let made: Vec<&str> = sources
        .iter()
        .zip(&found.snapshots)
        .filter(|(_, s)| s.is_some())
        .map(|(v, _)| v.as_str())
        .collect();
    let apart = |why: String| -> Result<Cut> {
        if required {
            return Err(Error::Refused(format!(
                "consistentGroup is true, but {why}: they are not one point in time; start a new pipeline run (a new execution) for a new group"
            )));
        }
        Ok(Cut {
            found: found.snapshots.clone(),
            host: None,
            point_in_time: PER_VOLUME,
            why: Some(why),
        })
    };
    if made.len() == sources.len() {
        if found.together {
            return Ok(Cut {
                found: found.snapshots,
                host: None,
                point_in_time: GROUP,
                why: None,
            });
        }
        return apart("an earlier try of this run snapshotted the volumes one by one".into());
    }
    if !made.is_empty() {
        return apart(format!(
            "an earlier try of this run made the snapshots of {} only",
            made.join(", ")
        ));
    }
    match group_call.plan(sources).await? {
        GroupPlan::Together { host } => Ok(Cut {
            found: found.snapshots,
            host: Some(host),
            point_in_time: GROUP,
            why: None,
        }),
        GroupPlan::Apart { why } if required => Err(Error::parameter(
            "consistentGroup",
            format!(
                "true needs all of volumeIds cut at one point in time, but {why}; snapshot the volumes of each instance in a step of its own, or set consistentGroup false to accept snapshots that are not one point in time"
            ),
        )),
        GroupPlan::Apart { why } => Ok(Cut {
            found: found.snapshots,
            host: None,
            point_in_time: PER_VOLUME,
            why: Some(why),
        }),
    }
}

fn check_count(n: usize) -> Result<()> {
    if n == 0 || n > MAX_VOLUMES {
        return Err(Error::parameter(
            "volumeIds",
            format!("expected 1 to {MAX_VOLUMES} volume ids (or a selector), got {n}"),
        ));
    }
    Ok(())
}

/// The sources a run snapshots: the named ones, or what the selector picks; each checked by
/// the backend.
async fn sources<B: Backend>(backend: &B, p: &SnapshotParams) -> Result<Vec<String>> {
    let sources = match &p.selector {
        Some(sel) => {
            let Some(selection) = backend.selection() else {
                return Err(Error::parameter(
                    "selector",
                    format!(
                        "backend {:?} selects sources by name only; list them in volumeIds instead of selector {sel:?}",
                        backend.name()
                    ),
                ));
            };
            let found = selection.select_sources(sel).await?;
            if found.is_empty() {
                return Err(Error::parameter(
                    "selector",
                    format!("{sel:?} selects no volume; check the labels and the namespace"),
                ));
            }
            check_count(found.len()).map_err(|_| {
                Error::parameter(
                    "selector",
                    format!(
                        "{sel:?} selects {} volumes; at most {MAX_VOLUMES}",
                        found.len()
                    ),
                )
            })?;
            found
        }
        None => match p.protection_group() {
            Some(pg) if p.volume_ids.is_empty() => vec![pg.to_string()],
            _ => p.volume_ids.clone(),
        },
    };
    for (i, v) in sources.iter().enumerate() {
        backend.check_source(&format!("volumeIds[{i}]"), v)?;
    }
    Ok(sources)
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotState_ {
    /// Snapshot ids, in the order of `sources`.
    ids: Vec<String>,
    /// The sources snapshotted (what a selector picked stays fixed for the run).
    #[serde(default)]
    sources: Vec<String>,
    /// Copies in the `copyTo` region, in the order of `ids`, once started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    copies: Vec<String>,
    /// The app-consistency hooks ran around creation (they never run again for the run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    hooks: bool,
    /// `group`, `per-volume` or `single` (the `PointInTime` output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    point_in_time: Option<String>,
    /// Why several volumes are not one point in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

fn resume<T: for<'de> Deserialize<'de>>(state: Option<Value>) -> Result<Option<T>> {
    state
        .filter(|v| !v.is_null())
        .map(|v| {
            serde_json::from_value(v).map_err(|e| {
                Error::Configuration(format!("continuationToken: state unreadable: {e}"))
            })
        })
        .transpose()
}

/// One step of `snapshot-production` without hooks.
pub async fn snapshot_step<B: Backend>(backend: &B, step: Step<SnapshotParams>) -> Result<Outcome> {
    snapshot_step_with_hooks(backend, None, step).await
}

/// Whether a step needs the hooks opened: they run only around creation, on the first
/// invocation of a run, never in a dry run.
pub fn needs_hooks(step: &Step<SnapshotParams>) -> bool {
    step.params.hooks.is_some()
        && !step.params.dry_run
        && step.state.as_ref().is_none_or(Value::is_null)
}

/// One step of `snapshot-production`; `hooks` (from `hooks` parameters, opened when
/// [`needs_hooks`]) run around the creation of the snapshots.
pub async fn snapshot_step_with_hooks<B: Backend>(
    backend: &B,
    hooks: Option<&Hooks>,
    step: Step<SnapshotParams>,
) -> Result<Outcome> {
    let p = &step.params;
    p.validate()?;
    if needs_hooks(&step) && hooks.is_none() {
        return Err(Error::Internal(
            "hooks are configured but were not opened for the first invocation".into(),
        ));
    }
    let ex = &step.execution;
    let state = resume::<SnapshotState_>(step.state)?;

    if p.dry_run {
        let sources = sources(backend, p).await?;
        let mut lines = Vec::new();
        let cut = cut(backend, p, &sources, ex).await?;
        lines.push(match (&cut.host, &cut.why) {
            (Some(host), _) => format!(
                "would snapshot {} together at one point in time (one call on {host})",
                sources.join(", ")
            ),
            (None, Some(why)) => {
                format!("would snapshot each volume on its own, NOT at one point in time ({why})")
            }
            (None, None) => format!("point in time: {}", cut.point_in_time),
        });
        for (v, existing) in sources.iter().zip(cut.found) {
            let size = backend.describe_source(v).await?;
            lines.push(match existing {
                Some(s) => format!("{v}: would reuse {} made by this run", s.id),
                None => format!(
                    "{v}: would snapshot ({} GiB)",
                    size.map_or("?".into(), |s| s.to_string())
                ),
            });
            if let Some(n) = p.retain {
                let old =
                    retention_victims(retention(backend)?.managed_snapshots(v).await?, n, None);
                if !old.is_empty() {
                    lines.push(format!(
                        "{v}: would delete {} older snapstage snapshot(s): {}",
                        old.len(),
                        old.join(", ")
                    ));
                }
            }
        }
        let outputs = BTreeMap::from([
            ("DryRun".to_string(), "true".to_string()),
            ("Backend".to_string(), backend.name().to_string()),
            ("SourceVolumeIds".to_string(), sources.join(",")),
            ("PointInTime".to_string(), cut.point_in_time.to_string()),
        ]);
        if let Some(h) = &p.hooks {
            lines.push(h.describe(p.csi.as_ref()));
        }
        return Ok(Outcome::Done {
            summary: format!("dry run, nothing changed: {}", lines.join("; ")),
            outputs,
        });
    }

    let (sources, ids, copies, hooks_ran, point_in_time, why) = match state {
        Some(s) => {
            let sources = if s.sources.is_empty() {
                p.volume_ids.clone()
            } else {
                s.sources
            };
            if s.ids.len() != sources.len() {
                return Err(Error::Configuration(
                    "continuationToken: volume list changed since the run started".into(),
                ));
            }
            (sources, s.ids, s.copies, s.hooks, s.point_in_time, s.why)
        }
        None => {
            let sources = sources(backend, p).await?;
            let description = p
                .description
                .clone()
                .unwrap_or_else(|| format!("snapstage {}", ex.key));
            // What this run made already (a retry): reused, and no hooks for it.
            let Cut {
                found,
                host,
                point_in_time,
                why,
            } = cut(backend, p, &sources, ex).await?;
            for (v, s) in sources.iter().zip(&found) {
                if let Some(s) = s {
                    tracing::info!(snapshot = %s.id, volume = %v, "reusing this run's snapshot");
                }
            }
            let missing = found.iter().any(Option::is_none);
            let create = async {
                if let (Some(host), Some(group_call)) = (&host, backend.point_in_time()) {
                    let made = group_call.create(&sources, host, ex, &description).await?;
                    return Ok(made.into_iter().map(|s| s.id).collect());
                }
                let mut ids = Vec::with_capacity(sources.len());
                for (v, existing) in sources.iter().zip(found) {
                    let snap = match existing {
                        Some(s) => s,
                        None => backend.create_snapshot(v, ex, &description).await?,
                    };
                    ids.push(snap.id);
                }
                Ok::<_, Error>(ids)
            };
            let (ids, ran) = match hooks {
                Some(h) if missing => (h.around(create).await?, true),
                _ => (create.await?, false),
            };
            // Kept in the state only when it is not what the parameters imply.
            let point_in_time = (point_in_time != implied_point_in_time(p, &sources))
                .then(|| point_in_time.to_string());
            (sources, ids, Vec::new(), ran, point_in_time, why)
        }
    };

    let mut snaps: Vec<SnapshotInfo> = Vec::with_capacity(ids.len());
    for id in &ids {
        snaps.push(backend.snapshot(id).await?);
    }
    if let Some((failed, why)) = snaps.iter().find_map(|s| match &s.state {
        SnapshotState::Failed(why) => Some((s, why)),
        _ => None,
    }) {
        return Err(Error::Backend {
            backend: backend.name(),
            message: format!(
                "snapshot {} of {} failed ({why}); a re-run of the pipeline makes a new one",
                failed.id, failed.source
            ),
        });
    }
    let pending = snaps
        .iter()
        .filter(|s| matches!(s.state, SnapshotState::Pending { .. }))
        .count();
    if pending > 0 {
        let total: u32 = snaps
            .iter()
            .map(|s| match s.state {
                SnapshotState::Pending { percent } => u32::from(percent),
                _ => 100,
            })
            .sum();
        let percent = u8::try_from(total / snaps.len().max(1) as u32).unwrap_or(99);
        return Ok(Outcome::Continue {
            summary: format!(
                "{pending} of {} snapshots pending ({percent}%): {}",
                snaps.len(),
                ids.join(", ")
            ),
            percent,
            state: serde_json::to_value(SnapshotState_ {
                ids,
                sources,
                copies,
                hooks: hooks_ran,
                point_in_time,
                why,
            })
            .map_err(|e| Error::Internal(e.to_string()))?,
        });
    }

    // Copies to another region start once every snapshot is complete (a pending snapshot
    // cannot be copied), and are waited for the same way.
    let mut copied = Vec::new();
    if let Some(to) = &p.copy_to {
        let Some(copier) = backend.region_copy() else {
            return Err(Error::parameter(
                "copyTo",
                format!(
                    "backend {:?} cannot copy snapshots to region {}; remove copyTo",
                    backend.name(),
                    to.region
                ),
            ));
        };
        let mut copies = copies;
        if copies.len() != snaps.len() {
            copies.clear();
            for s in &snaps {
                copies.push(copier.copy_to_region(s, to, ex).await?.id);
            }
        }
        for id in &copies {
            copied.push(copier.snapshot_in_region(id, to).await?);
        }
        if let Some((c, why)) = copied.iter().find_map(|c| match &c.state {
            SnapshotState::Failed(why) => Some((c, why)),
            _ => None,
        }) {
            return Err(Error::Backend {
                backend: backend.name(),
                message: format!(
                    "copy {} in {} failed ({why}); a re-run of the pipeline makes a new one",
                    c.id, to.region
                ),
            });
        }
        let waiting = copied
            .iter()
            .filter(|c| matches!(c.state, SnapshotState::Pending { .. }))
            .count();
        if waiting > 0 {
            let total: u32 = copied
                .iter()
                .map(|c| match c.state {
                    SnapshotState::Pending { percent } => u32::from(percent),
                    _ => 100,
                })
                .sum();
            let percent = u8::try_from(50 + total / copied.len().max(1) as u32 / 2).unwrap_or(99);
            return Ok(Outcome::Continue {
                summary: format!(
                    "snapshots ready; {waiting} of {} copies to {} pending: {}",
                    copied.len(),
                    to.region,
                    copies.join(", ")
                ),
                percent: percent.min(99),
                state: serde_json::to_value(SnapshotState_ {
                    ids,
                    sources,
                    copies,
                    hooks: hooks_ran,
                    point_in_time,
                    why,
                })
                .map_err(|e| Error::Internal(e.to_string()))?,
            });
        }
    }

    let mut summary = format!("{} snapshot(s) ready: {}", snaps.len(), ids.join(", "));
    let mut deleted = Vec::new();
    if let Some(n) = p.retain {
        let retention = retention(backend)?;
        let mut problems = Vec::new();
        for v in &sources {
            let old = retention_victims(retention.managed_snapshots(v).await?, n, Some(&ids));
            for id in old {
                match retention.delete_snapshot(&id).await {
                    Ok(()) => deleted.push(id),
                    Err(e) => {
                        tracing::warn!(snapshot = %id, error = %e, "retention: not deleted");
                        problems.push(format!("{id}: {e}"));
                    }
                }
            }
        }
        summary.push_str(&format!(
            "; retention (keep {n}): deleted {}",
            deleted.len()
        ));
        if !problems.is_empty() {
            summary.push_str(&format!(", not deleted: {}", problems.join("; ")));
        }
    }
    let first = &snaps[0];
    let mut outputs = BTreeMap::from([
        ("SnapshotId".to_string(), first.id.clone()),
        ("SnapshotIds".to_string(), ids.join(",")),
        (
            "SnapshotTime".to_string(),
            first.started.clone().unwrap_or_default(),
        ),
        ("SourceVolumeIds".to_string(), sources.join(",")),
        ("Backend".to_string(), backend.name().to_string()),
    ]);
    if p.retain.is_some() {
        outputs.insert("SnapshotsDeleted".into(), deleted.len().to_string());
    }
    if let Some(to) = &p.copy_to {
        let ids: Vec<&str> = copied.iter().map(|c| c.id.as_str()).collect();
        outputs.insert("CopiedSnapshotIds".into(), ids.join(","));
        outputs.insert("CopyRegion".into(), to.region.clone());
        summary.push_str(&format!("; copied to {}: {}", to.region, ids.join(", ")));
    }
    if hooks_ran {
        outputs.insert("AppConsistent".into(), "true".into());
        summary.push_str("; app-consistent (hooks ran around creation)");
    }
    let point_in_time =
        point_in_time.unwrap_or_else(|| implied_point_in_time(p, &sources).to_string());
    match (point_in_time.as_str(), &why) {
        (GROUP, _) if sources.len() > 1 => {
            summary.push_str("; one point in time for all volumes (snapshotted together)");
        }
        (PER_VOLUME, why) => summary.push_str(&format!(
            "; NOT one point in time: each volume was snapshotted on its own{}",
            why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
        )),
        _ => {}
    }
    outputs.insert("PointInTime".into(), point_in_time);
    let outputs = outputs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    Ok(Outcome::Done { summary, outputs })
}

/// The backend's [`Retention`], or the refusal of `retain` when the backend cannot list the
/// snapshots it made.
fn retention<B: Backend>(backend: &B) -> Result<&dyn Retention> {
    backend.retention().ok_or_else(|| {
        Error::parameter(
            "retain",
            format!(
                "backend {:?} cannot list the snapshots snapstage made; remove retain",
                backend.name()
            ),
        )
    })
}

/// What retention deletes from `managed` (newest first): everything after the newest `keep`,
/// never a snapshot of this run (`current`) and never one still pending.
fn retention_victims(
    managed: Vec<SnapshotInfo>,
    keep: u32,
    current: Option<&[String]>,
) -> Vec<String> {
    let is_current = |id: &str| current.is_some_and(|c| c.iter().any(|x| x == id));
    // This run's snapshot counts as one of the kept ones even if the listing lags behind.
    let listed_current = managed.iter().any(|s| is_current(&s.id));
    let keep = keep as usize - usize::from(current.is_some() && !listed_current);
    managed
        .into_iter()
        .skip(keep)
        .filter(|s| !is_current(&s.id) && !matches!(s.state, SnapshotState::Pending { .. }))
        .map(|s| s.id)
        .collect()
}

/// `restore-to-staging` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreParams {
    /// The snapshot to restore (e.g. `#{Snapshot.SnapshotId}`); or give `sourceVolumeId`.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Restore the newest completed snapstage snapshot of this production volume.
    #[serde(default)]
    pub source_volume_id: Option<String>,
    /// EBS: where the staging volume is made (must match the staging nodes' zone).
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// EBS: the staging volume's type (default gp3).
    #[serde(default)]
    pub volume_type: Option<String>,
    #[serde(default)]
    pub backend: BackendKind,
    #[serde(default)]
    pub flasharray: Option<FlashArrayParams>,
    /// The cluster, production namespace and staging namespace (`backend: "csi"`).
    #[serde(default)]
    pub csi: Option<CsiParams>,
    #[serde(default)]
    pub dry_run: bool,
}

const VOLUME_TYPES: [&str; 6] = ["gp3", "gp2", "io1", "io2", "st1", "sc1"];

impl RestoreParams {
    /// Checks what can be checked without the backend (ids are checked by the backend).
    pub fn validate(&self) -> Result<()> {
        self.choice().validate()?;
        if self.snapshot_id.is_none() && self.source_volume_id.is_none() {
            return Err(Error::parameter(
                "snapshotId",
                "missing: give snapshotId (e.g. \"#{Snapshot.SnapshotId}\") or sourceVolumeId to restore its newest snapshot",
            ));
        }
        if let Some(csi) = &self.csi
            && self.backend == BackendKind::Csi
            && csi.staging_namespace.is_none()
        {
            return Err(Error::parameter(
                "csi.stagingNamespace",
                "missing: the namespace restore-to-staging makes the staging PVC in, e.g. \"snapstage-staging\" (never the production namespace)",
            ));
        }
        if self.backend != BackendKind::Ebs {
            for (field, given) in [
                ("availabilityZone", self.availability_zone.is_some()),
                ("volumeType", self.volume_type.is_some()),
            ] {
                if given {
                    return Err(Error::parameter(
                        field,
                        "only for backend \"ebs\"; an array volume lands on the array that holds the snapshot",
                    ));
                }
            }
            return Ok(());
        }
        let Some(az) = &self.availability_zone else {
            return Err(Error::parameter(
                "availabilityZone",
                "missing: the zone of the staging nodes, e.g. \"us-east-1a\" (required for backend \"ebs\")",
            ));
        };
        if az.len() < 4
            || !az
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Error::parameter(
                "availabilityZone",
                format!("expected a zone like \"us-east-1a\", got {az:?}"),
            ));
        }
        if !VOLUME_TYPES.contains(&self.volume_type()) {
            return Err(Error::parameter(
                "volumeType",
                format!(
                    "expected one of {}, got {:?}",
                    VOLUME_TYPES.join(", "),
                    self.volume_type()
                ),
            ));
        }
        Ok(())
    }

    pub fn volume_type(&self) -> &str {
        self.volume_type.as_deref().unwrap_or("gp3")
    }

    pub fn choice(&self) -> BackendChoice<'_> {
        BackendChoice {
            kind: self.backend,
            flasharray: self.flasharray.as_ref(),
            csi: self.csi.as_ref(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct RestoreState {
    snapshot: String,
    #[serde(default)]
    volume: Option<String>,
}

/// One step of `restore-to-staging`. Only ever creates a new volume tagged `staging`; refuses to
/// report a volume that is marked production.
pub async fn restore_step<B: Backend>(backend: &B, step: Step<RestoreParams>) -> Result<Outcome> {
    let p = &step.params;
    p.validate()?;
    if let Some(id) = &p.snapshot_id {
        backend.check_snapshot_id("snapshotId", id)?;
    } else if let Some(v) = &p.source_volume_id {
        backend.check_source("sourceVolumeId", v)?;
    }
    let ex = &step.execution;
    let state = resume::<RestoreState>(step.state)?;

    let snapshot = match &state {
        Some(s) => backend.snapshot(&s.snapshot).await?,
        None => match (&p.snapshot_id, &p.source_volume_id) {
            (Some(id), _) => backend.snapshot(id).await.map_err(|e| match e {
                Error::NotFound { .. } => Error::parameter("snapshotId", format!("{id} does not exist in this account/region")),
                other => other,
            })?,
            (None, Some(v)) => backend.newest_snapshot(v).await?.ok_or_else(|| {
                Error::parameter(
                    "sourceVolumeId",
                    format!("no completed snapshot of {v} made by snapstage; run snapshot-production first or pass snapshotId"),
                )
            })?,
            (None, None) => return Err(Error::parameter("snapshotId", "missing")),
        },
    };
    match &snapshot.state {
        SnapshotState::Failed(why) => {
            return Err(Error::Backend {
                backend: backend.name(),
                message: format!("snapshot {} failed: {why}", snapshot.id),
            });
        }
        SnapshotState::Pending { percent } => {
            return Ok(Outcome::Continue {
                summary: format!("waiting for snapshot {} ({percent}%)", snapshot.id),
                percent: percent / 2,
                state: serde_json::json!({"snapshot": snapshot.id}),
            });
        }
        SnapshotState::Ready => {}
    }

    let spec = VolumeSpec {
        zone: p.availability_zone.clone().unwrap_or_default(),
        volume_type: p.volume_type().to_string(),
    };
    let existing = match state.as_ref().and_then(|s| s.volume.as_deref()) {
        Some(id) => Some(backend.volume(id).await?),
        None => backend.find_volume(ex).await?,
    };
    if let Some(v) = &existing
        && is_production(v.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        return Err(Error::Refused(format!(
            "volume {} is tagged as production; restore-to-staging never writes to or reports a production volume",
            v.id
        )));
    }

    if p.dry_run {
        let what = match &existing {
            Some(v) => format!("would reuse staging volume {} made by this run", v.id),
            None => match &p.availability_zone {
                Some(az) => format!(
                    "would create a {} volume in {az} from {}",
                    p.volume_type(),
                    snapshot.id
                ),
                None => format!("would copy {} into a new staging volume", snapshot.id),
            },
        };
        let outputs = BTreeMap::from([
            ("DryRun".to_string(), "true".to_string()),
            ("SnapshotId".to_string(), snapshot.id.clone()),
            ("Backend".to_string(), backend.name().to_string()),
        ]);
        return Ok(Outcome::Done {
            summary: format!("dry run, nothing changed: {what}"),
            outputs,
        });
    }

    let volume = match existing {
        Some(v) => {
            tracing::info!(volume = %v.id, "reusing this run's staging volume");
            v
        }
        None => backend.create_volume(&snapshot, &spec, ex).await?,
    };
    match &volume.state {
        VolumeState::Failed(why) => Err(Error::Backend {
            backend: backend.name(),
            message: format!(
                "staging volume {} failed ({why}); a re-run makes a new one",
                volume.id
            ),
        }),
        VolumeState::Creating => Ok(Outcome::Continue {
            summary: format!(
                "staging volume {} is being created from {}",
                volume.id, snapshot.id
            ),
            percent: 75,
            state: serde_json::json!({"snapshot": snapshot.id, "volume": volume.id}),
        }),
        VolumeState::Available | VolumeState::InUse => {
            let mut outputs = BTreeMap::from([
                ("VolumeId".to_string(), volume.id.clone()),
                ("SnapshotId".to_string(), snapshot.id.clone()),
                (
                    "AvailabilityZone".to_string(),
                    volume
                        .zone
                        .clone()
                        .or_else(|| p.availability_zone.clone())
                        .unwrap_or_default(),
                ),
                (
                    "SizeGiB".to_string(),
                    volume.size_gib.map(|s| s.to_string()).unwrap_or_default(),
                ),
                ("Backend".to_string(), backend.name().to_string()),
            ]);
            if let Some(extra) = backend.restore_outputs() {
                outputs.extend(extra.outputs(&volume));
            }
            Ok(Outcome::Done {
                summary: format!(
                    "staging volume {} ready from {}{}",
                    volume.id,
                    snapshot.id,
                    volume
                        .zone
                        .as_deref()
                        .or(p.availability_zone.as_deref())
                        .map(|z| format!(" in {z}"))
                        .unwrap_or_default()
                ),
                outputs: outputs.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::params::{Layer, merge};
    use serde_json::json;

    fn parse<P: serde::de::DeserializeOwned>(v: Value) -> Result<P> {
        let Value::Object(values) = v else { panic!() };
        merge(&[Layer {
            source: "UserParameters",
            values,
        }])
    }

    #[test]
    fn snapshot_params_are_checked_with_field_names() {
        let p: SnapshotParams = parse(json!({"volumeIds": ["vol-0abc"]})).unwrap();
        p.validate().unwrap();
        let p: SnapshotParams = parse(json!({"volumeIds": []})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("volumeIds:")
        );
        let p: SnapshotParams = parse(json!({"volumeIds": ["vol-0abc", "vol-0abc"]})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["vol-1"], "backend": "netapp"}))
            .unwrap_err();
        assert!(e.to_string().starts_with("UserParameters.backend"), "{e}");
    }

    #[test]
    fn backend_sections_and_retention_are_checked() {
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["db"], "backend": "flasharray"}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().starts_with("flasharray: missing"), "{e}");
        let p: SnapshotParams = parse(json!({"volumeIds": ["db"], "backend": "flasharray",
            "flasharray": {"endpoint": "https://fa", "apiTokenSecret": "fa-token"}}))
        .unwrap();
        p.validate().unwrap();
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["vol-1"],
            "flasharray": {"endpoint": "https://fa", "apiTokenSecret": "t"}}))
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("backend is \"ebs\""), "{e}");
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["vol-1"], "retain": 0}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().starts_with("retain:"), "{e}");
        let e = parse::<SnapshotParams>(json!({"volumeIds": ["vol-1"], "selector": "app=db"}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        // An array restore has no zone; an EBS-only field is refused, naming it.
        let e = parse::<RestoreParams>(
            json!({"snapshotId": "db.snapstage-1", "backend": "flasharray",
            "availabilityZone": "us-east-1a",
            "flasharray": {"endpoint": "https://fa", "apiTokenSecret": "t"}}),
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("availabilityZone: only for backend"),
            "{e}"
        );
    }

    #[test]
    fn restore_needs_a_snapshot_or_a_source_and_a_zone() {
        let p: RestoreParams = parse(json!({"availabilityZone": "us-east-1a"})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("snapshotId: missing")
        );
        let p: RestoreParams =
            parse(json!({"snapshotId": "snap-0abc", "availabilityZone": "US EAST"})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("availabilityZone")
        );
        let p: RestoreParams =
            parse(json!({"sourceVolumeId": "vol-0abc", "availabilityZone": "us-east-1a"})).unwrap();
        p.validate().unwrap();
        assert_eq!(p.volume_type(), "gp3");
        let p: RestoreParams = parse(json!({"snapshotId": "snap-0abc"})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("availabilityZone: missing"),
        );
        let p: RestoreParams =
            parse(json!({"snapshotId": "snap-0abc", "availabilityZone": "us-east-1a", "volumeType": "standard"})).unwrap();
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("volumeType")
        );
    }
}

/// The step logic against an in-memory backend whose snapshots and volumes take a few polls to
/// become ready, fail on request, and count what is created.
#[cfg(test)]
mod step_tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::job::contract::{Deadline, Execution};
    use crate::storage::{SnapshotInfo, VolumeInfo};

    #[derive(Default)]
    struct Slow {
        polls_to_ready: u32,
        fail_snapshots: bool,
        /// Snapshot ids that snapstage did not make (never listed as managed, never deleted).
        foreign: Vec<String>,
        snapshots: Mutex<Vec<(SnapshotInfo, String, u32)>>, // info, execution, polls
        volumes: Mutex<Vec<(VolumeInfo, String, u32)>>,
    }

    impl Backend for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn retention(&self) -> Option<&dyn Retention> {
            Some(self)
        }
        async fn describe_source(&self, _source: &str) -> Result<Option<i64>> {
            Ok(Some(20))
        }
        async fn find_snapshot(
            &self,
            source: &str,
            ex: &Execution,
        ) -> Result<Option<SnapshotInfo>> {
            let s = self.snapshots.lock().unwrap();
            Ok(s.iter()
                .find(|(i, e, _)| i.source == source && *e == ex.key)
                .map(|(i, _, _)| i.clone()))
        }
        async fn create_snapshot(
            &self,
            source: &str,
            ex: &Execution,
            _d: &str,
        ) -> Result<SnapshotInfo> {
            let mut s = self.snapshots.lock().unwrap();
            let info = SnapshotInfo {
                id: format!("snap-{:04x}", s.len()),
                source: source.into(),
                state: SnapshotState::Pending { percent: 0 },
                started: Some("2026-11-21T00:00:00Z".into()),
                size_gib: Some(20),
            };
            s.push((info.clone(), ex.key.clone(), 0));
            Ok(info)
        }
        async fn snapshot(&self, id: &str) -> Result<SnapshotInfo> {
            let mut s = self.snapshots.lock().unwrap();
            let Some((info, _, polls)) = s.iter_mut().find(|(i, _, _)| i.id == id) else {
                return Err(Error::NotFound {
                    backend: "slow",
                    message: id.into(),
                });
            };
            *polls += 1;
            info.state = if self.fail_snapshots {
                SnapshotState::Failed("disk on fire".into())
            } else if *polls >= self.polls_to_ready {
                SnapshotState::Ready
            } else {
                SnapshotState::Pending {
                    percent: u8::try_from(*polls * 100 / self.polls_to_ready).unwrap_or(99),
                }
            };
            Ok(info.clone())
        }
        async fn newest_snapshot(&self, source: &str) -> Result<Option<SnapshotInfo>> {
            let s = self.snapshots.lock().unwrap();
            Ok(s.iter()
                .rev()
                .find(|(i, _, _)| i.source == source && i.state == SnapshotState::Ready)
                .map(|(i, _, _)| i.clone()))
        }
        async fn find_volume(&self, ex: &Execution) -> Result<Option<VolumeInfo>> {
            let v = self.volumes.lock().unwrap();
            Ok(v.iter()
                .find(|(_, e, _)| *e == ex.key)
                .map(|(i, _, _)| i.clone()))
        }
        async fn create_volume(
            &self,
            snap: &SnapshotInfo,
            spec: &VolumeSpec,
            ex: &Execution,
        ) -> Result<VolumeInfo> {
            let mut v = self.volumes.lock().unwrap();
            let info = VolumeInfo {
                id: format!("vol-{:04x}", 0xf000 + v.len()),
                state: VolumeState::Creating,
                zone: Some(spec.zone.clone()),
                snapshot: Some(snap.id.clone()),
                size_gib: Some(20),
                tags: vec![("snapstage:role".into(), "staging".into())],
            };
            v.push((info.clone(), ex.key.clone(), 0));
            Ok(info)
        }
        fn check_source(&self, field: &str, source: &str) -> Result<()> {
            crate::storage::check_id(field, source, "vol-")
        }
        fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()> {
            crate::storage::check_id(field, id, "snap-")
        }
        async fn volume(&self, id: &str) -> Result<VolumeInfo> {
            let mut v = self.volumes.lock().unwrap();
            let Some((info, _, polls)) = v.iter_mut().find(|(i, _, _)| i.id == id) else {
                return Err(Error::NotFound {
                    backend: "slow",
                    message: id.into(),
                });
            };
            *polls += 1;
            if *polls >= self.polls_to_ready {
                info.state = VolumeState::Available;
            }
            Ok(info.clone())
        }
    }

    impl Retention for Slow {
        fn managed_snapshots<'a>(
            &'a self,
            source: &'a str,
        ) -> crate::interlock::BoxFuture<'a, Result<Vec<SnapshotInfo>>> {
            Box::pin(async move {
                let s = self.snapshots.lock().unwrap();
                Ok(s.iter()
                    .rev()
                    .filter(|(i, _, _)| i.source == source && !self.foreign.contains(&i.id))
                    .map(|(i, _, _)| i.clone())
                    .collect())
            })
        }

        fn delete_snapshot<'a>(
            &'a self,
            id: &'a str,
        ) -> crate::interlock::BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                if self.foreign.iter().any(|f| f == id) {
                    return Err(Error::Refused(format!("{id} is not snapstage's")));
                }
                self.snapshots
                    .lock()
                    .unwrap()
                    .retain(|(i, _, _)| i.id != id);
                Ok(())
            })
        }
    }

    fn step<P>(params: P, key: &str, state: Option<Value>) -> Step<P> {
        Step {
            params,
            execution: Execution {
                key: key.into(),
                origin: "direct".into(),
                pipeline: None,
                commit: None,
            },
            state,
            deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(60)),
            artifacts: None,
        }
    }

    fn snap_params(vols: &[&str]) -> SnapshotParams {
        SnapshotParams {
            volume_ids: vols.iter().map(|s| s.to_string()).collect(),
            selector: None,
            backend: BackendKind::Ebs,
            flasharray: None,
            csi: None,
            hooks: None,
            description: None,
            copy_to: None,
            retain: None,
            consistent_group: None,
            dry_run: false,
        }
    }

    /// Runs steps until done, feeding each Continue's state into the next; returns outcomes.
    async fn drive<P: Clone>(
        f: impl AsyncFn(Step<P>) -> Result<Outcome>,
        params: P,
        key: &str,
    ) -> Result<Vec<Outcome>> {
        let mut state = None;
        let mut seen = vec![];
        for _ in 0..20 {
            let o = f(step(params.clone(), key, state.take())).await?;
            seen.push(o.clone());
            match o {
                Outcome::Continue { state: s, .. } => state = Some(s),
                Outcome::Done { .. } => return Ok(seen),
            }
        }
        panic!("did not finish in 20 steps")
    }

    #[tokio::test]
    async fn pending_snapshots_continue_with_progress_then_finish() {
        let b = Slow {
            polls_to_ready: 3,
            ..Default::default()
        };
        let seen = drive(
            |s| snapshot_step(&b, s),
            snap_params(&["vol-01", "vol-02"]),
            "run-1",
        )
        .await
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            matches!(&seen[0], Outcome::Continue { percent: 33, .. }),
            "{:?}",
            seen[0]
        );
        let Outcome::Done { outputs, .. } = &seen[2] else {
            panic!()
        };
        assert_eq!(outputs["SnapshotIds"], "snap-0000,snap-0001");
        assert_eq!(
            b.snapshots.lock().unwrap().len(),
            2,
            "one snapshot per volume, none created while waiting"
        );
    }

    #[tokio::test]
    async fn a_repeated_run_reuses_its_snapshots_a_new_run_makes_new_ones() {
        let b = Slow {
            polls_to_ready: 1,
            ..Default::default()
        };
        for _ in 0..3 {
            drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-1")
                .await
                .unwrap();
        }
        assert_eq!(b.snapshots.lock().unwrap().len(), 1);
        drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-2")
            .await
            .unwrap();
        assert_eq!(b.snapshots.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_snapshot_fails_the_step_naming_it() {
        let b = Slow {
            polls_to_ready: 1,
            fail_snapshots: true,
            ..Default::default()
        };
        let e = drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-1")
            .await
            .unwrap_err();
        assert_eq!(e.failure_kind(), crate::error::FailureKind::JobFailed);
        assert!(
            e.to_string().contains("snap-0000") && e.to_string().contains("disk on fire"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_and_never_touches_foreign_snapshots() {
        let mut b = Slow {
            polls_to_ready: 1,
            ..Default::default()
        };
        for run in ["run-1", "run-2", "run-3"] {
            drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), run)
                .await
                .unwrap();
        }
        // snap-0000 is marked as made by someone else: retention must leave it alone.
        b.foreign = vec!["snap-0000".into()];
        let mut p = snap_params(&["vol-01"]);
        p.retain = Some(2);
        let seen = drive(|s| snapshot_step(&b, s), p.clone(), "run-4")
            .await
            .unwrap();
        let Outcome::Done { outputs, summary } = seen.last().unwrap() else {
            panic!()
        };
        assert_eq!(outputs["SnapshotsDeleted"], "1", "{summary}");
        let left: Vec<String> = b
            .snapshots
            .lock()
            .unwrap()
            .iter()
            .map(|(i, _, _)| i.id.clone())
            .collect();
        // run-4's (snap-0003) and run-3's (snap-0002) kept; run-2's deleted; foreign kept.
        assert_eq!(left, ["snap-0000", "snap-0002", "snap-0003"]);
        // A retry of the same run deletes nothing more.
        let seen = drive(|s| snapshot_step(&b, s), p, "run-4").await.unwrap();
        let Outcome::Done { outputs, .. } = seen.last().unwrap() else {
            panic!()
        };
        assert_eq!(outputs["SnapshotsDeleted"], "0");
        assert_eq!(b.snapshots.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_selector_on_a_backend_without_labels_is_refused_clearly() {
        let b = Slow::default();
        let mut p = snap_params(&[]);
        p.selector = Some("app=db".into());
        let e = drive(|s| snapshot_step(&b, s), p, "run-1")
            .await
            .unwrap_err();
        assert_eq!(
            e.failure_kind(),
            crate::error::FailureKind::ConfigurationError
        );
        assert!(
            e.to_string().starts_with("selector: backend \"slow\""),
            "{e}"
        );
        assert!(b.snapshots.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn dry_run_changes_nothing() {
        let b = Slow::default();
        let mut p = snap_params(&["vol-01"]);
        p.dry_run = true;
        let seen = drive(|s| snapshot_step(&b, s), p, "run-1").await.unwrap();
        let Outcome::Done { outputs, .. } = &seen[0] else {
            panic!()
        };
        assert_eq!(outputs["DryRun"], "true");
        assert!(b.snapshots.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn several_volumes_cut_one_by_one_say_so_and_consistent_group_refuses_them() {
        let b = Slow {
            polls_to_ready: 1,
            ..Default::default()
        };
        let seen = drive(
            |s| snapshot_step(&b, s),
            snap_params(&["vol-01", "vol-02"]),
            "run-1",
        )
        .await
        .unwrap();
        let Outcome::Done { outputs, summary } = seen.last().unwrap() else {
            panic!()
        };
        assert_eq!(outputs["PointInTime"], "per-volume");
        assert!(summary.contains("NOT one point in time"), "{summary}");

        let mut p = snap_params(&["vol-03", "vol-04"]);
        p.consistent_group = Some(true);
        let e = drive(|s| snapshot_step(&b, s), p, "run-2")
            .await
            .unwrap_err();
        assert_eq!(
            e.failure_kind(),
            crate::error::FailureKind::ConfigurationError
        );
        assert!(e.to_string().starts_with("consistentGroup: "), "{e}");
        assert_eq!(b.snapshots.lock().unwrap().len(), 2, "nothing more made");

        let seen = drive(|s| snapshot_step(&b, s), snap_params(&["vol-05"]), "run-3")
            .await
            .unwrap();
        let Outcome::Done { outputs, .. } = seen.last().unwrap() else {
            panic!()
        };
        assert_eq!(outputs["PointInTime"], "single");
    }

    #[test]
    fn consistent_group_names_the_way_each_backend_cuts_a_group() {
        let parse = |v: serde_json::Value| serde_json::from_value::<SnapshotParams>(v).unwrap();
        let fa = serde_json::json!({"endpoint": "https://fa", "apiTokenSecret": "s"});
        let e = parse(
            serde_json::json!({"backend": "flasharray", "flasharray": fa,
            "volumeIds": ["a", "b"], "consistentGroup": true}),
        )
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("flasharray.protectionGroup"), "{e}");
        let mut with_pg = fa.clone();
        with_pg["protectionGroup"] = "pg-orders".into();
        parse(
            serde_json::json!({"backend": "flasharray", "flasharray": with_pg,
            "consistentGroup": true}),
        )
        .validate()
        .unwrap();
        let e = parse(
            serde_json::json!({"backend": "flasharray", "flasharray": with_pg,
            "consistentGroup": false}),
        )
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("consistentGroup: false"), "{e}");
        parse(serde_json::json!({"volumeIds": ["vol-01", "vol-02"], "consistentGroup": true}))
            .validate()
            .unwrap();
    }

    fn hooked(vols: &[&str]) -> SnapshotParams {
        let mut p = snap_params(vols);
        p.hooks = Some(
            serde_json::from_value(serde_json::json!({"pod": "db-0", "namespace": "prod",
                "cluster": "inCluster", "pre": ["fsfreeze", "-f", "/data"],
                "post": ["fsfreeze", "-u", "/data"]}))
            .unwrap(),
        );
        p
    }

    #[tokio::test]
    async fn hooks_run_once_around_creation_never_while_pending() {
        use crate::storage::hooks::exec_server::{ExecServer, Script};
        let server =
            ExecServer::start("v5.channel.k8s.io", vec![Script::Exit(0), Script::Exit(0)]).await;
        let b = Slow {
            polls_to_ready: 3,
            ..Default::default()
        };
        let p = hooked(&["vol-01", "vol-02"]);
        let h = Hooks::new(server.client(), "prod".into(), p.hooks.clone().unwrap());
        let seen = drive(
            |s| snapshot_step_with_hooks(&b, needs_hooks(&s).then_some(&h), s),
            p,
            "run-1",
        )
        .await
        .unwrap();
        assert_eq!(seen.len(), 3, "two pending invocations, then done");
        let execs = server.seen();
        assert_eq!(execs.len(), 2, "pre and post once: {execs:#?}");
        assert!(execs[0].ends_with("command=fsfreeze&command=-f&command=%2Fdata"));
        assert!(execs[1].ends_with("command=fsfreeze&command=-u&command=%2Fdata"));
        let Outcome::Continue { state, .. } = &seen[0] else {
            panic!()
        };
        assert_eq!(state["hooks"], true);
        let Outcome::Done { outputs, summary } = &seen[2] else {
            panic!()
        };
        assert_eq!(outputs["AppConsistent"], "true");
        assert!(summary.contains("app-consistent"), "{summary}");
        assert_eq!(b.snapshots.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_failing_pre_hook_creates_no_snapshot_and_still_runs_post() {
        use crate::storage::hooks::exec_server::{ExecServer, Script};
        let server =
            ExecServer::start("v4.channel.k8s.io", vec![Script::Exit(1), Script::Exit(0)]).await;
        let b = Slow::default();
        let p = hooked(&["vol-01"]);
        let h = Hooks::new(server.client(), "prod".into(), p.hooks.clone().unwrap());
        let e = drive(
            |s| snapshot_step_with_hooks(&b, needs_hooks(&s).then_some(&h), s),
            p,
            "run-1",
        )
        .await
        .unwrap_err();
        assert_eq!(e.failure_kind(), crate::error::FailureKind::JobFailed);
        assert!(e.to_string().contains("no snapshot was taken"), "{e}");
        assert!(b.snapshots.lock().unwrap().is_empty());
        assert_eq!(server.seen().len(), 2, "post ran after the failed pre");
    }

    #[tokio::test]
    async fn hooks_configured_but_not_opened_is_an_error_not_a_silent_crash_consistent_snapshot() {
        let b = Slow::default();
        let e = drive(|s| snapshot_step(&b, s), hooked(&["vol-01"]), "run-1")
            .await
            .unwrap_err();
        assert_eq!(e.failure_kind(), crate::error::FailureKind::JobFailed);
        assert!(b.snapshots.lock().unwrap().is_empty());
    }

    fn restore_params(snapshot: Option<&str>, source: Option<&str>) -> RestoreParams {
        RestoreParams {
            snapshot_id: snapshot.map(String::from),
            source_volume_id: source.map(String::from),
            availability_zone: Some("us-east-1a".into()),
            volume_type: None,
            backend: BackendKind::Ebs,
            flasharray: None,
            csi: None,
            dry_run: false,
        }
    }

    #[tokio::test]
    async fn restore_waits_for_the_volume_and_reuses_it_on_retry() {
        let b = Slow {
            polls_to_ready: 2,
            ..Default::default()
        };
        drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-1")
            .await
            .unwrap();
        let seen = drive(
            |s| restore_step(&b, s),
            restore_params(None, Some("vol-01")),
            "run-1",
        )
        .await
        .unwrap();
        assert!(matches!(seen[0], Outcome::Continue { .. }));
        let Outcome::Done { outputs, .. } = seen.last().unwrap() else {
            panic!()
        };
        assert_eq!(outputs["SnapshotId"], "snap-0000");
        let vol = outputs["VolumeId"].clone();
        drive(
            |s| restore_step(&b, s),
            restore_params(None, Some("vol-01")),
            "run-1",
        )
        .await
        .unwrap();
        assert_eq!(b.volumes.lock().unwrap().len(), 1, "a retry reuses {vol}");
    }

    #[tokio::test]
    async fn restore_without_any_snapshot_says_what_to_do() {
        let b = Slow::default();
        let e = drive(
            |s| restore_step(&b, s),
            restore_params(None, Some("vol-01")),
            "r",
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("run snapshot-production first"),
            "{e}"
        );
        let e = drive(
            |s| restore_step(&b, s),
            restore_params(Some("snap-0bad"), None),
            "r",
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("snapshotId: snap-0bad does not exist"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn restore_refuses_a_volume_tagged_production() {
        let b = Slow {
            polls_to_ready: 1,
            ..Default::default()
        };
        drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-1")
            .await
            .unwrap();
        drive(
            |s| restore_step(&b, s),
            restore_params(Some("snap-0000"), None),
            "run-1",
        )
        .await
        .unwrap();
        b.volumes.lock().unwrap()[0]
            .0
            .tags
            .push(("Environment".into(), "Production".into()));
        let e = drive(
            |s| restore_step(&b, s),
            restore_params(Some("snap-0000"), None),
            "run-1",
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.failure_kind(),
            crate::error::FailureKind::ConfigurationError
        );
        assert!(e.to_string().contains("tagged as production"), "{e}");
    }
}
