//! The roll-out step over [`Fleet`]: one release (or one rollback request) per run, followed
//! with continuation tokens, never with sleeps.
//!
//! A release:
//! 1. checks the group against the allow list, its launch template, the image and the alarms;
//! 2. finds this run's launch template version (its description carries the run's marker) or
//!    creates it from the group's current version with the new image;
//! 3. finds this run's instance refresh (the one whose `DesiredConfiguration` is that version) or
//!    starts it (MinHealthyPercentage, warm-up, checkpoints, skip matching, auto rollback);
//! 4. on each later invocation reads the refresh, the named alarms and the target health of the
//!    new version's instances; an alarm in ALARM or unhealthy targets past `maxUnhealthyPercent`
//!    roll the refresh back (RollbackInstanceRefresh), and the job fails saying why;
//! 5. succeeds once the refresh is `Successful`, the group launches the new version, every
//!    instance runs it, and every target is healthy.
//!
//! A rollback request (`rollback: {toVersion}`) rolls back the refresh in progress, or sets the
//! group to the version asked for and refreshes it onto that version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use snapstage::{Error, Execution, Outcome, Result, Step};

use crate::fleet::{
    Fleet, Group, Refresh, RefreshRequest, RolledBack, Started, TemplateRef, TemplateVersion,
};
use crate::params::{AllowList, RolloutParams, ToVersion};

mod follow;
mod health;
mod release;
mod rollback;

use follow::*;
use health::*;
use release::*;
use rollback::*;

/// What a release or a rollback request is doing between invocations (the continuation state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub mode: Mode,
    pub template_id: String,
    /// The version the run moves the group to.
    pub version: i64,
    /// The version the group was on before the run.
    pub previous: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    pub refresh_id: String,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    Release,
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    /// The run's instance refresh is replacing instances.
    Refreshing,
    /// The refresh is being rolled back (by this function or by Auto Scaling).
    RollingBack { reason: String },
    /// A refresh back to `previous`, after a refresh that could not be rolled back.
    Reverting { reason: String, refresh_id: String },
    /// The refresh succeeded; waiting for every target of the new version to be healthy.
    Settling { checks: u32 },
}

/// The marker a run's launch template version carries in its description.
pub fn run_marker(execution: &Execution) -> String {
    let hash = snapstage::digest::sha256_hex(execution.key.as_bytes());
    format!("snapstage run {}", &hash[..16])
}

/// The version a snapstage-made version was created from (`... from version 3`).
pub fn source_version(v: &TemplateVersion) -> Option<i64> {
    let d = v.description.as_deref()?;
    if !d.starts_with("snapstage run ") {
        return None;
    }
    d.rsplit_once(" from version ")?.1.trim().parse().ok()
}

/// One step of roll-out-release.
pub async fn step<F: Fleet>(
    fleet: &F,
    allow: &AllowList,
    step: Step<RolloutParams>,
) -> Result<Outcome> {
    let p = &step.params;
    p.validate()?;
    allow.check(&p.auto_scaling_group_name)?;
    let state: Option<State> = match step.state.clone().filter(|v| !v.is_null()) {
        Some(v) => Some(serde_json::from_value(v).map_err(|e| {
            Error::Configuration(format!("continuationToken: state unreadable: {e}"))
        })?),
        None => None,
    };
    let (group, template) = group_and_template(fleet, p).await?;
    if let Some(state) = state {
        if state.template_id != template.id {
            return Err(Error::Configuration(format!(
                "continuationToken: the run rolls out launch template {}, but group {} now uses {}; start a new run",
                state.template_id, group.name, template.id
            )));
        }
        return follow(fleet, p, &group, state).await;
    }
    check_alarms_exist(fleet, p).await?;
    match &p.rollback {
        Some(r) => start_rollback(fleet, p, &group, &template, r.to_version).await,
        None => start_release(fleet, p, &step.execution, &group, &template).await,
    }
}

async fn group_and_template<F: Fleet>(
    fleet: &F,
    p: &RolloutParams,
) -> Result<(Group, TemplateRef)> {
    let name = &p.auto_scaling_group_name;
    let group = fleet.group(name).await?.ok_or_else(|| {
        Error::parameter(
            "autoScalingGroupName",
            format!("no Auto Scaling group {name:?} in this account and region"),
        )
    })?;
    if group.mixed_instances {
        return Err(Error::parameter(
            "autoScalingGroupName",
            format!(
                "group {name:?} launches from a mixed instances policy; roll-out-release rolls out groups that name one launch template"
            ),
        ));
    }
    let template = group.template.clone().ok_or_else(|| {
        Error::parameter(
            "autoScalingGroupName",
            format!("group {name:?} uses a launch configuration, not a launch template; move it to a launch template first"),
        )
    })?;
    if let Some(want) = &p.launch_template {
        let matches = want.id.as_deref() == Some(template.id.as_str())
            || want.name.as_deref() == Some(template.name.as_str());
        if !matches {
            return Err(Error::parameter(
                "launchTemplate",
                format!(
                    "group {name:?} launches from {} ({}), not {}",
                    template.id,
                    template.name,
                    want.id
                        .as_deref()
                        .or(want.name.as_deref())
                        .unwrap_or_default()
                ),
            ));
        }
    }
    Ok((group, template))
}

async fn resolve<F: Fleet>(fleet: &F, template_id: &str, version: &str) -> Result<TemplateVersion> {
    fleet
        .versions(template_id, &[version.to_string()])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NotFound {
            backend: "ec2",
            message: format!("launch template {template_id} has no version {version}"),
            source: None,
        })
}

fn on_version(group: &Group, version: i64) -> (usize, usize) {
    let v = version.to_string();
    let live: Vec<_> = group
        .instances
        .iter()
        .filter(|i| !i.lifecycle.starts_with("Terminat") && !i.lifecycle.starts_with("Detach"))
        .collect();
    let on = live
        .iter()
        .filter(|i| i.version.as_deref() == Some(v.as_str()))
        .count();
    (on, live.len())
}

fn outputs(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// A reason as the continuation state keeps it (the token holds at most 2048 characters).
fn short(reason: &str) -> String {
    snapstage::job::codepipeline::truncate(reason, 400)
}

fn to_value(state: &State) -> Result<Value> {
    serde_json::to_value(state).map_err(|e| Error::Internal(format!("continuation state: {e}")))
}

#[cfg(test)]
mod tests;
