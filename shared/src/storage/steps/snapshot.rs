//! `snapshot-production`: the sources (named, a selector, a protection group), how they are cut
//! (one point in time or each on its own), the app-consistency hooks around creation, copies to
//! another region, and retention.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::params::{MAX_VOLUMES, SnapshotParams, check_count};
use super::resume;
use crate::error::{Error, Result};
use crate::job::contract::{Execution, Outcome, Step};
use crate::storage::hooks::Hooks;
use crate::storage::{Backend, GroupPlan, Retention, SnapshotInfo, SnapshotState};

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
/// The state a `snapshot-production` run carries from one invocation to the next.
struct SnapshotStepState {
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
    let state = resume::<SnapshotStepState>(step.state)?;

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
            source: None,
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
            state: serde_json::to_value(SnapshotStepState {
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
                source: None,
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
                state: serde_json::to_value(SnapshotStepState {
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
