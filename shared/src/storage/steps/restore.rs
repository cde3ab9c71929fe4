//! `restore-to-staging`: the named or newest snapshot into a new staging volume, reused by a
//! retry of the run; never a volume marked production.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::params::RestoreParams;
use super::resume;
use crate::error::{Error, Result};
use crate::interlock::markers::is_production;
use crate::job::contract::{Outcome, Step};
use crate::storage::{Backend, SnapshotState, VolumeSpec, VolumeState};

#[derive(Debug, Serialize, Deserialize)]
/// The state a `restore-to-staging` run carries from one invocation to the next.
struct RestoreStepState {
    snapshot: String,
    #[serde(default)]
    volume: Option<String>,
}

/// One step of `restore-to-staging`. Only ever creates a new volume tagged `staging`; refuses to
/// report a volume that is marked production.
pub async fn restore_step<B: Backend>(backend: &B, step: Step<RestoreParams>) -> Result<Outcome> {
    let p = &step.params;
    p.validate()?;
    if p.targets.is_some() {
        return super::targets::restore_targets(backend, step).await;
    }
    if let Some(id) = &p.snapshot_id {
        backend.check_snapshot_id("snapshotId", id)?;
    } else if let Some(v) = &p.source_volume_id {
        backend.check_source("sourceVolumeId", v)?;
    }
    let ex = &step.execution;
    let state = resume::<RestoreStepState>(step.state)?;

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
                source: None,
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
            source: None,
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
