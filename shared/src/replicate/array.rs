//! Array mode: the artifacts live on a volume of Cloud Block Store in the cloud (e.g. a Nexus
//! blob store volume); they come back on-prem block by block, by the arrays' own replication:
//!
//! 1. a protection group snapshot on the cloud array with `replicate_now` (one per run: a retry
//!    finds it), answering "in progress" with the transfer's progress until it has arrived;
//! 2. on the on-prem array, that run's replicated snapshot of the volume
//!    (`SOURCE_ARRAY:PGROUP.SUFFIX.VOLUME`) is copied into the on-prem volume
//!    (`POST /volumes?overwrite=true`), which must be confirmed with `overwrite: true` when the
//!    volume exists;
//! 3. the copy is verified: the on-prem volume's source is that snapshot, with its size.
//!
//! With `rehydrate` ([`super::rehydrate`]), the on-prem Nexus that uses the volume is stopped
//! around step 2 and checked healthy after; the copy is refused while anything still uses it.
//!
//! Nothing is deleted; the production (cloud) volume is never written.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::job::contract::{Outcome, Step};
use crate::storage::flasharray::{FlashArray, check_volume_name};
use crate::storage::open::{BackendChoice, FlashArrayParams, open_flasharray};
use crate::storage::{Backend, BackendKind, SnapshotState};

use super::rehydrate::{self, Rehydrate, RehydrateParams};

/// `array` parameter of replicate-artifacts-back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArrayParams {
    /// The cloud array (Cloud Block Store) holding the volume; its `protectionGroup` (required)
    /// contains the volume and replicates to the on-prem array.
    pub source: FlashArrayParams,
    /// The on-prem FlashArray that receives the replica.
    pub target: FlashArrayParams,
    /// The cloud array's name, as replicated snapshot names show it on the target
    /// (`SOURCE_ARRAY:PGROUP.SUFFIX.VOLUME`).
    pub source_array: String,
    /// The volume (in the protection group) to bring back.
    pub volume: String,
    /// The on-prem volume the replica is copied into.
    pub target_volume: String,
    /// Replace `targetVolume` when it exists (its current content is lost). Default false.
    #[serde(default)]
    pub overwrite: bool,
    /// Stop the on-prem workload (Nexus) using `targetVolume` around the copy, refuse while
    /// anything still uses it, start it again and wait until it is healthy.
    #[serde(default)]
    pub rehydrate: Option<RehydrateParams>,
}

impl ArrayParams {
    fn validate(&self) -> Result<(&str, Option<Rehydrate>)> {
        for (field, fa) in [
            ("array.source", &self.source),
            ("array.target", &self.target),
        ] {
            BackendChoice {
                kind: BackendKind::FlashArray,
                flasharray: Some(fa),
                csi: None,
            }
            .validate()
            .map_err(|e| Error::parameter(field, e.to_string()))?;
        }
        let pgroup = self.source.protection_group.as_deref().ok_or_else(|| {
            Error::parameter(
                "array.source.protectionGroup",
                "missing: the protection group on the cloud array that holds the volume and replicates to the on-prem array",
            )
        })?;
        check_volume_name("array.sourceArray", &self.source_array)?;
        check_volume_name("array.volume", &self.volume)?;
        check_volume_name("array.targetVolume", &self.target_volume)?;
        if self.target.protection_group.is_some() || self.source.replicated_from.is_some() {
            return Err(Error::parameter(
                "array",
                "protectionGroup belongs in array.source, and replicatedFrom is not used here",
            ));
        }
        let rehydrate = self.rehydrate.as_ref().map(|r| r.validate()).transpose()?;
        if rehydrate.is_some() && !self.overwrite {
            return Err(Error::parameter(
                "array.overwrite",
                "rehydrate overwrites the on-prem volume: set \"overwrite\": true to confirm",
            ));
        }
        Ok((pgroup, rehydrate))
    }

    /// Checks the parameters without contacting anything.
    pub fn check(&self) -> Result<()> {
        self.validate().map(|_| ())
    }
}

/// One step of array mode.
pub async fn step(
    p: &ArrayParams,
    dry_run: bool,
    sdk: &aws_config::SdkConfig,
    step: &Step<impl Sized>,
) -> Result<Outcome> {
    let (pgroup, rehydrate) = p.validate()?;
    let source = open_flasharray(&p.source, sdk).await?;
    let result = match open_flasharray(&p.target, sdk).await {
        Ok(target) => {
            let run = Run {
                p,
                pgroup,
                rehydrate: rehydrate.as_ref(),
                dry_run,
                sdk,
            };
            let r = run.go(&source, &target, step).await;
            if let Err(e) = target.close().await {
                tracing::warn!(error = %e, "on-prem array logout failed");
            }
            r
        }
        Err(e) => Err(e),
    };
    if let Err(e) = source.close().await {
        tracing::warn!(error = %e, "cloud array logout failed");
    }
    result
}

struct Run<'a> {
    p: &'a ArrayParams,
    pgroup: &'a str,
    rehydrate: Option<&'a Rehydrate>,
    dry_run: bool,
    sdk: &'a aws_config::SdkConfig,
}

impl Run<'_> {
    async fn go(
        &self,
        source: &FlashArray,
        target: &FlashArray,
        step: &Step<impl Sized>,
    ) -> Result<Outcome> {
        let Run {
            p,
            pgroup,
            rehydrate,
            dry_run,
            sdk,
        } = *self;
        let existing = match target.volume(&p.target_volume).await {
            Ok(v) => Some(v),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if existing.is_some() && !p.overwrite {
            return Err(Error::parameter(
                "array.overwrite",
                format!(
                    "on-prem volume {} exists; set \"overwrite\": true to replace its content with the replica of {}",
                    p.target_volume, p.volume
                ),
            ));
        }
        if existing.is_none()
            && let Some(r) = rehydrate
        {
            return Err(Error::parameter(
                "array.targetVolume",
                format!(
                    "on-prem volume {} does not exist: rehydrate overwrites the volume {} uses",
                    p.target_volume, r.name
                ),
            ));
        }
        if dry_run {
            let then = match rehydrate {
                Some(r) => format!("; {}", rehydrate::dry_run(r, sdk).await?),
                None => String::new(),
            };
            return Ok(Outcome::Done {
                summary: format!(
                    "dry run, nothing changed: would snapshot protection group {pgroup} with replicate_now, then copy {}:{pgroup}.<run>.{} into {} ({}){then}",
                    p.source_array,
                    p.volume,
                    p.target_volume,
                    if existing.is_some() {
                        "overwriting it"
                    } else {
                        "a new volume"
                    }
                ),
                outputs: BTreeMap::from([
                    ("DryRun".into(), "true".into()),
                    ("Mode".into(), "array".into()),
                ]),
            });
        }

        let snap = source.snapshot_pgroup(pgroup, &step.execution).await?;
        match &snap.state {
            SnapshotState::Failed(why) => {
                return Err(Error::Backend {
                    backend: "flasharray",
                    message: format!("protection group snapshot {} failed: {why}", snap.id),
                    source: None,
                });
            }
            SnapshotState::Pending { percent } => {
                return Ok(Outcome::Continue {
                    summary: format!("replicating {} to the on-prem array: {percent}%", snap.id),
                    percent: (*percent).min(95),
                    state: serde_json::json!({"snapshot": snap.id}),
                });
            }
            SnapshotState::Ready => {}
        }

        let replica_id = format!("{}:{}.{}", p.source_array, snap.id, p.volume);
        let replica = match target.snapshot(&replica_id).await {
            Ok(s) => s,
            Err(Error::NotFound { .. }) => {
                return Err(Error::Configuration(format!(
                    "the transfer of {} completed but the on-prem array has no {replica_id}: is array.sourceArray the cloud array's name, and is {} in {pgroup}?",
                    snap.id, p.volume
                )));
            }
            Err(e) => return Err(e),
        };
        if let Some(r) = rehydrate {
            let outputs = BTreeMap::from([
                ("Mode".to_string(), "array".to_string()),
                ("SnapshotId".to_string(), snap.id.clone()),
                ("ReplicaSnapshotId".to_string(), replica.id.clone()),
                ("TargetVolume".to_string(), p.target_volume.clone()),
            ]);
            return rehydrate::run(r, target, &p.target_volume, &replica, sdk, step, outputs).await;
        }
        let copied = target.copy_snapshot(&replica, &p.target_volume).await?;
        // Verified: the on-prem volume now holds exactly that snapshot.
        let check = target.volume(&copied.id).await?;
        if check.snapshot.as_deref() != Some(replica.id.as_str()) {
            return Err(Error::Backend {
                backend: "flasharray",
                message: format!(
                    "{} does not show {} as its source after the copy (it shows {:?}); nothing is reported as copied",
                    check.id, replica.id, check.snapshot
                ),
                source: None,
            });
        }
        let mut outputs = BTreeMap::from([
            ("Mode".to_string(), "array".to_string()),
            ("SnapshotId".to_string(), snap.id.clone()),
            ("ReplicaSnapshotId".to_string(), replica.id.clone()),
            ("TargetVolume".to_string(), check.id.clone()),
        ]);
        if let Some(size) = check.size_gib {
            outputs.insert("SizeGiB".into(), size.to_string());
        }
        Ok(Outcome::Done {
            summary: format!(
                "{} replicated on-prem and copied into {} (verified)",
                replica.id, check.id
            ),
            outputs,
        })
    }
}
