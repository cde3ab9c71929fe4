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

fn version_description(marker: &str, execution: &Execution, image: &str, from: i64) -> String {
    let key: String = execution.key.chars().take(120).collect();
    format!("{marker} ({key}) image {image} from version {from}")
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

async fn check_alarms_exist<F: Fleet>(fleet: &F, p: &RolloutParams) -> Result<()> {
    if p.alarms.is_empty() {
        return Ok(());
    }
    let found = fleet.alarms(&p.alarms).await?;
    for (i, name) in p.alarms.iter().enumerate() {
        if !found.iter().any(|a| &a.name == name) {
            return Err(Error::parameter(
                format!("alarms[{i}]"),
                format!("no CloudWatch alarm named {name:?} in this account and region"),
            ));
        }
    }
    Ok(())
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

fn preferences(p: &RolloutParams, group: &str, template_id: &str, version: i64) -> RefreshRequest {
    RefreshRequest {
        group: group.to_string(),
        template_id: template_id.to_string(),
        version,
        min_healthy_percentage: Some(p.min_healthy_percentage.unwrap_or(90)),
        max_healthy_percentage: p.max_healthy_percentage,
        instance_warmup: p.instance_warmup,
        checkpoint_percentages: p.checkpoint_percentages.clone(),
        checkpoint_delay: p.checkpoint_delay,
        skip_matching: p.skip_matching,
        auto_rollback: p.auto_rollback,
        bake_time: p.bake_time,
        alarms: p.alarms.clone(),
    }
}

async fn start_release<F: Fleet>(
    fleet: &F,
    p: &RolloutParams,
    execution: &Execution,
    group: &Group,
    template: &TemplateRef,
) -> Result<Outcome> {
    let image = p.image_id.clone().unwrap_or_default();
    match fleet.image(&image).await? {
        None => {
            return Err(Error::parameter(
                "imageId",
                format!("no AMI {image} in this region (or it is not shared with this account)"),
            ));
        }
        Some(i) if i.state != "available" => {
            return Err(Error::parameter(
                "imageId",
                format!(
                    "AMI {image} is {:?}, not available yet; roll it out once it is",
                    i.state
                ),
            ));
        }
        Some(_) => {}
    }
    let current = resolve(fleet, &template.id, &template.version).await?;
    let marker = run_marker(execution);
    let existing = fleet.find_version(&template.id, &marker).await?;
    let (on_current, live) = on_version(group, current.number);

    if existing.is_none()
        && current.image_id.as_deref() == Some(image.as_str())
        && on_current == live
    {
        let summary = format!(
            "group {} already runs {image}: launch template {} version {} on all {live} instances; nothing to roll out",
            group.name, template.id, current.number
        );
        return Ok(Outcome::Done {
            summary,
            outputs: outputs(&[
                ("AutoScalingGroupName", group.name.clone()),
                ("LaunchTemplateId", template.id.clone()),
                ("LaunchTemplateVersion", current.number.to_string()),
                ("PreviousLaunchTemplateVersion", current.number.to_string()),
                ("ImageId", image),
                ("Status", "AlreadyCurrent".into()),
                ("RolledBack", "false".into()),
            ]),
        });
    }

    if p.dry_run {
        let what = match &existing {
            Some(v) => format!("reuse this run's launch template version {}", v.number),
            None => format!(
                "create launch template {} version {} from version {} (image {} -> {image})",
                template.id,
                "N+1",
                current.number,
                current.image_id.as_deref().unwrap_or("none")
            ),
        };
        let req = preferences(p, &group.name, &template.id, 0);
        let summary = format!(
            "plan (dryRun, nothing changed): {what}; start an instance refresh of group {} ({live} instances, {on_current} on version {}) with MinHealthyPercentage {}{}{}, SkipMatching {}, AutoRollback {}; roll back if {}{}",
            group.name,
            current.number,
            req.min_healthy_percentage.unwrap_or(90),
            p.instance_warmup
                .map(|w| format!(", InstanceWarmup {w}s"))
                .unwrap_or_default(),
            if p.checkpoint_percentages.is_empty() {
                String::new()
            } else {
                format!(", checkpoints at {:?}%", p.checkpoint_percentages)
            },
            p.skip_matching,
            p.auto_rollback,
            format_args!(
                "more than {}% of the new targets are unhealthy",
                p.max_unhealthy_percent
            ),
            if p.alarms.is_empty() {
                String::new()
            } else {
                format!(" or an alarm of {} is in ALARM", p.alarms.join(", "))
            },
        );
        return Ok(Outcome::Done {
            summary,
            outputs: outputs(&[
                ("AutoScalingGroupName", group.name.clone()),
                ("LaunchTemplateId", template.id.clone()),
                ("PreviousLaunchTemplateVersion", current.number.to_string()),
                ("ImageId", image),
                ("Status", "Planned".into()),
                ("DryRun", "true".into()),
            ]),
        });
    }

    let (version, previous) = match existing {
        Some(v) => {
            let previous = source_version(&v).unwrap_or(current.number);
            (v, previous)
        }
        None => {
            let description = version_description(&marker, execution, &image, current.number);
            let v = fleet
                .create_version(&template.id, current.number, &image, &description)
                .await?;
            tracing::info!(template = %template.id, version = v.number, from = current.number, image = %image, "launch template version created");
            (v, current.number)
        }
    };
    let state = |refresh_id: String| State {
        mode: Mode::Release,
        template_id: template.id.clone(),
        version: version.number,
        previous,
        image_id: Some(image.clone()),
        refresh_id,
        phase: Phase::Refreshing,
    };
    let refreshes = fleet.refreshes(&group.name, &[]).await?;
    if let Some(r) = refreshes
        .iter()
        .find(|r| r.targets(&version, version.number))
    {
        tracing::info!(refresh = %r.id, status = %r.status, "this run's instance refresh found");
        return follow(fleet, p, group, state(r.id.clone())).await;
    }
    if let Some(r) = refreshes.iter().find(|r| r.is_active()) {
        return Err(busy(group, r));
    }
    let req = preferences(p, &group.name, &template.id, version.number);
    match fleet.start_refresh(&req).await? {
        Started::Started { id } => {
            tracing::info!(refresh = %id, version = version.number, "instance refresh started");
            Ok(Outcome::Continue {
                summary: format!(
                    "instance refresh {id} started: group {} to launch template {} version {} ({image}), from version {previous}",
                    group.name, template.id, version.number
                ),
                percent: 0,
                state: to_value(&state(id))?,
            })
        }
        Started::AlreadyInProgress { message } => {
            let refreshes = fleet.refreshes(&group.name, &[]).await?;
            match refreshes
                .iter()
                .find(|r| r.targets(&version, version.number))
            {
                Some(r) => follow(fleet, p, group, state(r.id.clone())).await,
                None => Err(Error::Backend {
                    backend: "autoscaling",
                    message: format!(
                        "group {}: {message}; another instance refresh is in progress, so this run started none (its launch template version {} is kept for a retry)",
                        group.name, version.number
                    ),
                    source: None,
                }),
            }
        }
    }
}

fn busy(group: &Group, r: &Refresh) -> Error {
    Error::Backend {
        backend: "autoscaling",
        message: format!(
            "group {} has instance refresh {} {} (to {} version {}) that this run did not start; this run started nothing: wait for it to end or cancel it, then retry",
            group.name,
            r.id,
            r.status,
            r.desired_template
                .as_deref()
                .unwrap_or("its current configuration"),
            r.desired_version.as_deref().unwrap_or("-")
        ),
        source: None,
    }
}

/// A reason as the continuation state keeps it (the token holds at most 2048 characters).
fn short(reason: &str) -> String {
    snapstage::job::codepipeline::truncate(reason, 400)
}

fn to_value(state: &State) -> Result<Value> {
    serde_json::to_value(state).map_err(|e| Error::Internal(format!("continuation state: {e}")))
}

async fn start_rollback<F: Fleet>(
    fleet: &F,
    p: &RolloutParams,
    group: &Group,
    template: &TemplateRef,
    to: ToVersion,
) -> Result<Outcome> {
    let current = resolve(fleet, &template.id, &template.version).await?;
    let refreshes = fleet.refreshes(&group.name, &[]).await?;
    let active = refreshes.iter().find(|r| r.is_active());
    // With a refresh under way, the group's configuration is still the one before it: rolling
    // the refresh back returns every instance to it.
    let target = match (to, active) {
        (ToVersion::Number(n), _) => {
            resolve(fleet, &template.id, &n.to_string())
                .await
                .map_err(|_| {
                    Error::parameter(
                        "rollback.toVersion",
                        format!("launch template {} has no version {n}", template.id),
                    )
                })?
        }
        (ToVersion::Previous, Some(a)) if a.can_roll_back() || a.status == "RollbackInProgress" => {
            current.clone()
        }
        (ToVersion::Previous, _) => {
            let previous = source_version(&current).unwrap_or(current.number - 1);
            if previous < 1 {
                return Err(Error::parameter(
                    "rollback.toVersion",
                    format!(
                        "group {} is on launch template {} version {}, which has no previous version",
                        group.name, template.id, current.number
                    ),
                ));
            }
            resolve(fleet, &template.id, &previous.to_string()).await?
        }
    };
    let state = |refresh_id: String, phase: Phase, version: i64, previous: i64| State {
        mode: Mode::Rollback,
        template_id: template.id.clone(),
        version,
        previous,
        image_id: target.image_id.clone(),
        refresh_id,
        phase,
    };
    if let Some(a) = active {
        if a.targets(&target, target.number) {
            // A duplicate of this request: follow the refresh it started.
            let s = state(
                a.id.clone(),
                Phase::Refreshing,
                target.number,
                current.number,
            );
            return follow(fleet, p, group, s).await;
        }
        if a.status == "RollbackInProgress" {
            let prior = a
                .desired_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(current.number);
            let s = state(
                a.id.clone(),
                Phase::RollingBack {
                    reason: "requested".into(),
                },
                current.number,
                prior,
            );
            return follow(fleet, p, group, s).await;
        }
        if !a.can_roll_back() {
            return Err(busy(group, a));
        }
        if target.number != current.number {
            return Err(Error::parameter(
                "rollback.toVersion",
                format!(
                    "instance refresh {} is {} to version {}; rolling it back returns group {} to version {} (its configuration before the refresh): ask for toVersion {} or \"previous\", or wait for the refresh to end",
                    a.id,
                    a.status,
                    a.desired_version.as_deref().unwrap_or("-"),
                    group.name,
                    current.number,
                    current.number
                ),
            ));
        }
        let prior = a
            .desired_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(current.number);
        if p.dry_run {
            return Ok(plan_rollback(
                group,
                template,
                &format!(
                    "roll back instance refresh {} ({} {}%), returning every instance to version {}",
                    a.id,
                    a.status,
                    a.percentage_complete.unwrap_or(0),
                    current.number
                ),
                current.number,
            ));
        }
        return match fleet.rollback_refresh(&group.name).await? {
            RolledBack::RollingBack { .. } => Ok(Outcome::Continue {
                summary: format!(
                    "rolling back instance refresh {} of group {} to launch template version {}",
                    a.id, group.name, current.number
                ),
                percent: 0,
                state: to_value(&state(
                    a.id.clone(),
                    Phase::RollingBack {
                        reason: "requested".into(),
                    },
                    current.number,
                    prior,
                ))?,
            }),
            RolledBack::Impossible { code, message } => Err(Error::Backend {
                backend: "autoscaling",
                message: format!(
                    "RollbackInstanceRefresh of group {} refused: {code}: {message}",
                    group.name
                ),
                source: None,
            }),
        };
    }
    let (on, live) = on_version(group, target.number);
    if current.number == target.number && on == live {
        return Ok(Outcome::Done {
            summary: format!(
                "group {} is already on launch template {} version {} (all {live} instances); nothing to roll back",
                group.name, template.id, target.number
            ),
            outputs: outputs(&[
                ("AutoScalingGroupName", group.name.clone()),
                ("LaunchTemplateId", template.id.clone()),
                ("LaunchTemplateVersion", target.number.to_string()),
                ("PreviousLaunchTemplateVersion", current.number.to_string()),
                ("Status", "AlreadyCurrent".into()),
                ("RolledBack", "false".into()),
            ]),
        });
    }
    if p.dry_run {
        return Ok(plan_rollback(
            group,
            template,
            &format!(
                "set group {} to launch template {} version {} (now {}) and refresh its {live} instances onto it",
                group.name, template.id, target.number, current.number
            ),
            current.number,
        ));
    }
    fleet
        .set_group_version(&group.name, &template.id, target.number)
        .await?;
    let req = preferences(p, &group.name, &template.id, target.number);
    match fleet.start_refresh(&req).await? {
        Started::Started { id } => Ok(Outcome::Continue {
            summary: format!(
                "rolling group {} back to launch template {} version {} (from {}): instance refresh {id} started",
                group.name, template.id, target.number, current.number
            ),
            percent: 0,
            state: to_value(&state(id, Phase::Refreshing, target.number, current.number))?,
        }),
        Started::AlreadyInProgress { message } => Err(Error::Backend {
            backend: "autoscaling",
            message: format!(
                "group {}: {message}; the rollback started no refresh: retry",
                group.name
            ),
            source: None,
        }),
    }
}

fn plan_rollback(group: &Group, template: &TemplateRef, what: &str, current: i64) -> Outcome {
    Outcome::Done {
        summary: format!("plan (dryRun, nothing changed): {what}"),
        outputs: outputs(&[
            ("AutoScalingGroupName", group.name.clone()),
            ("LaunchTemplateId", template.id.clone()),
            ("PreviousLaunchTemplateVersion", current.to_string()),
            ("Status", "Planned".into()),
            ("DryRun", "true".into()),
        ]),
    }
}

async fn refresh_by_id<F: Fleet>(fleet: &F, group: &str, id: &str) -> Result<Refresh> {
    fleet
        .refreshes(group, &[id.to_string()])
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| Error::NotFound {
            backend: "autoscaling",
            message: format!("group {group} has no instance refresh {id} (any more)"),
            source: None,
        })
}

/// What the health gate saw of the new version's instances.
#[derive(Debug, Default)]
struct Health {
    /// Targets (or instances, for a group without target groups) of the version.
    total: usize,
    healthy: usize,
    /// `instance (target group): state (reason)` of each unhealthy one.
    unhealthy: Vec<String>,
}

async fn health<F: Fleet>(fleet: &F, group: &Group, version: i64) -> Result<Health> {
    let v = version.to_string();
    let ours: Vec<_> = group
        .instances
        .iter()
        .filter(|i| {
            i.version.as_deref() == Some(v.as_str()) && !i.lifecycle.starts_with("Terminat")
        })
        .collect();
    let mut h = Health::default();
    for i in &ours {
        if i.health.eq_ignore_ascii_case("unhealthy") {
            h.unhealthy
                .push(format!("{}: Auto Scaling health Unhealthy", i.id));
        }
    }
    if group.target_groups.is_empty() {
        h.total = ours.len();
        h.healthy = ours.len() - h.unhealthy.len();
        return Ok(h);
    }
    for tg in &group.target_groups {
        let short = tg.rsplit(':').next().unwrap_or(tg);
        for t in fleet.target_health(tg).await? {
            if !ours.iter().any(|i| i.id == t.id) {
                continue;
            }
            h.total += 1;
            match t.state.as_str() {
                "healthy" => h.healthy += 1,
                "unhealthy" | "unavailable" => h.unhealthy.push(format!(
                    "{} ({short}): {}{}",
                    t.id,
                    t.state,
                    t.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                )),
                _ => {}
            }
        }
    }
    Ok(h)
}

/// Why the health gate fails, if it does.
fn gate(p: &RolloutParams, h: &Health, version: i64) -> Option<String> {
    let bad = h.unhealthy.len();
    if bad == 0 {
        return None;
    }
    let total = h.total.max(bad);
    if bad * 100 <= usize::from(p.max_unhealthy_percent) * total {
        return None;
    }
    Some(format!(
        "health gate: {bad} of {total} targets of launch template version {version} unhealthy (more than {}%): {}",
        p.max_unhealthy_percent,
        h.unhealthy.join("; ")
    ))
}

async fn alarm_firing<F: Fleet>(fleet: &F, p: &RolloutParams) -> Result<Option<String>> {
    let firing: Vec<String> = fleet
        .alarms(&p.alarms)
        .await?
        .into_iter()
        .filter(|a| a.state == "ALARM")
        .map(|a| {
            format!(
                "{}{}",
                a.name,
                a.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            )
        })
        .collect();
    Ok((!firing.is_empty())
        .then(|| format!("alarm in ALARM during the refresh: {}", firing.join("; "))))
}

fn rolled_back_error(group: &Group, s: &State, r: &Refresh, reason: &str) -> Error {
    Error::Backend {
        backend: "autoscaling",
        message: format!(
            "release {} of group {} rolled back: {reason}; instance refresh {} {}: the group is on launch template version {} again",
            s.image_id.as_deref().unwrap_or("-"),
            group.name,
            r.id,
            r.status,
            s.previous
        ),
        source: None,
    }
}

fn progress(r: &Refresh) -> String {
    format!(
        "{}%{}",
        r.percentage_complete.unwrap_or(0),
        r.instances_to_update
            .map(|n| format!(", {n} instances to update"))
            .unwrap_or_default()
    )
}

async fn follow<F: Fleet>(
    fleet: &F,
    p: &RolloutParams,
    group: &Group,
    state: State,
) -> Result<Outcome> {
    match state.phase.clone() {
        Phase::Refreshing => refreshing(fleet, p, group, state).await,
        Phase::RollingBack { reason } => rolling_back(fleet, group, state, reason).await,
        Phase::Reverting { reason, refresh_id } => {
            let r = refresh_by_id(fleet, &group.name, &refresh_id).await?;
            match r.status.as_str() {
                "Successful" => Err(Error::Backend {
                    backend: "autoscaling",
                    message: format!(
                        "release {} of group {} rolled back: {reason}; reverted to launch template version {} by instance refresh {} (Successful)",
                        state.image_id.as_deref().unwrap_or("-"),
                        group.name,
                        state.previous,
                        r.id
                    ),
                    source: None,
                }),
                s if r.is_active() => Ok(Outcome::Continue {
                    summary: format!(
                        "reverting group {} to launch template version {} (instance refresh {} {s}, {}): {reason}",
                        group.name,
                        state.previous,
                        r.id,
                        progress(&r)
                    ),
                    percent: clamp(r.percentage_complete),
                    state: to_value(&state)?,
                }),
                s => Err(Error::Backend {
                    backend: "autoscaling",
                    message: format!(
                        "{reason}; the refresh back to version {} ({}) ended {s} ({}): request {{\"rollback\": {{\"toVersion\": {}}}}}",
                        state.previous,
                        r.id,
                        r.status_reason.as_deref().unwrap_or("no reason given"),
                        state.previous
                    ),
                    source: None,
                }),
            }
        }
        Phase::Settling { checks } => settle(fleet, p, group, state, checks).await,
    }
}

async fn rolling_back<F: Fleet>(
    fleet: &F,
    group: &Group,
    state: State,
    reason: String,
) -> Result<Outcome> {
    let r = refresh_by_id(fleet, &group.name, &state.refresh_id).await?;
    match (r.status.as_str(), state.mode) {
        ("RollbackSuccessful", Mode::Release) => Err(rolled_back_error(group, &state, &r, &reason)),
        ("RollbackSuccessful", Mode::Rollback) => Ok(Outcome::Done {
            summary: format!(
                "instance refresh {} of group {} rolled back: the group is on launch template {} version {}",
                r.id, group.name, state.template_id, state.version
            ),
            outputs: done_outputs(group, &state, &r, true),
        }),
        ("RollbackFailed", _) => Err(Error::Backend {
            backend: "autoscaling",
            message: format!(
                "{reason}; the rollback of instance refresh {} failed ({}): group {} may run both versions {} and {}; request {{\"rollback\": {{\"toVersion\": {}}}}}",
                r.id,
                r.status_reason.as_deref().unwrap_or("no reason given"),
                group.name,
                state.version,
                state.previous,
                if state.mode == Mode::Release {
                    state.previous
                } else {
                    state.version
                }
            ),
            source: None,
        }),
        (s, _) if r.is_active() => Ok(Outcome::Continue {
            summary: format!(
                "rolling back instance refresh {} of group {} ({s}, {}% rolled back): {reason}",
                r.id,
                group.name,
                r.percentage_complete_on_rollback.unwrap_or(0)
            ),
            percent: clamp(r.percentage_complete_on_rollback),
            state: to_value(&state)?,
        }),
        (s, _) => Err(Error::Backend {
            backend: "autoscaling",
            message: format!(
                "{reason}; instance refresh {} ended {s} instead of rolling back ({})",
                r.id,
                r.status_reason.as_deref().unwrap_or("no reason given")
            ),
            source: None,
        }),
    }
}

fn clamp(p: Option<i32>) -> u8 {
    u8::try_from(p.unwrap_or(0).clamp(0, 99)).unwrap_or(0)
}

async fn refreshing<F: Fleet>(
    fleet: &F,
    p: &RolloutParams,
    group: &Group,
    state: State,
) -> Result<Outcome> {
    let r = refresh_by_id(fleet, &group.name, &state.refresh_id).await?;
    let release = state.mode == Mode::Release;
    match r.status.as_str() {
        "Pending" | "InProgress" | "Baking" => {
            if release {
                if let Some(reason) = alarm_firing(fleet, p).await? {
                    return roll_back(fleet, p, group, state, &r, reason).await;
                }
                let h = health(fleet, group, state.version).await?;
                if let Some(reason) = gate(p, &h, state.version) {
                    return roll_back(fleet, p, group, state, &r, reason).await;
                }
            }
            Ok(Outcome::Continue {
                summary: format!(
                    "instance refresh {} of group {} {}: {} to launch template version {}",
                    r.id,
                    group.name,
                    r.status,
                    progress(&r),
                    state.version
                ),
                percent: clamp(r.percentage_complete),
                state: to_value(&state)?,
            })
        }
        "Successful" if release => settle(fleet, p, group, state, 0).await,
        "Successful" => Ok(Outcome::Done {
            summary: format!(
                "group {} rolled back to launch template {} version {} (from {}) by instance refresh {}",
                group.name, state.template_id, state.version, state.previous, r.id
            ),
            outputs: done_outputs(group, &state, &r, true),
        }),
        "RollbackInProgress" | "RollbackSuccessful" | "RollbackFailed" => {
            let reason = format!(
                "instance refresh {} was rolled back by Auto Scaling: {}",
                r.id,
                r.rollback_reason
                    .as_deref()
                    .or(r.status_reason.as_deref())
                    .unwrap_or("no reason given")
            );
            let s = State {
                phase: Phase::RollingBack {
                    reason: short(&reason),
                },
                ..state
            };
            if release {
                rolling_back(fleet, group, s, reason).await
            } else {
                Err(Error::Backend {
                    backend: "autoscaling",
                    message: format!(
                        "the rollback of group {} to version {} failed and was rolled back ({}): {}",
                        group.name,
                        s.version,
                        r.status,
                        r.rollback_reason.as_deref().unwrap_or("no reason given")
                    ),
                    source: None,
                })
            }
        }
        "Cancelling" => Ok(Outcome::Continue {
            summary: format!(
                "instance refresh {} of group {} is being cancelled",
                r.id, group.name
            ),
            percent: clamp(r.percentage_complete),
            state: to_value(&state)?,
        }),
        status @ ("Failed" | "Cancelled") => {
            let reason = format!(
                "instance refresh {} {status}: {}",
                r.id,
                r.status_reason.as_deref().unwrap_or("no reason given")
            );
            let (on_new, _) = on_version(group, state.version);
            if release && on_new > 0 {
                revert(fleet, p, group, state, reason).await
            } else {
                Err(Error::Backend {
                    backend: "autoscaling",
                    message: format!(
                        "{reason}; group {} still launches version {} ({on_new} instances on version {})",
                        group.name, state.previous, state.version
                    ),
                    source: None,
                })
            }
        }
        other => Ok(Outcome::Continue {
            summary: format!(
                "instance refresh {} of group {} is {other}",
                r.id, group.name
            ),
            percent: clamp(r.percentage_complete),
            state: to_value(&state)?,
        }),
    }
}

async fn roll_back<F: Fleet>(
    fleet: &F,
    p: &RolloutParams,
    group: &Group,
    state: State,
    r: &Refresh,
    reason: String,
) -> Result<Outcome> {
    tracing::warn!(group = %group.name, refresh = %r.id, %reason, "rolling the release back");
    match fleet.rollback_refresh(&group.name).await? {
        RolledBack::RollingBack { .. } => Ok(Outcome::Continue {
            summary: format!(
                "rolling back instance refresh {} of group {} to launch template version {}: {reason}",
                r.id, group.name, state.previous
            ),
            percent: 0,
            state: to_value(&State {
                phase: Phase::RollingBack {
                    reason: short(&reason),
                },
                ..state
            })?,
        }),
        RolledBack::Impossible { code, message } => {
            // Ended meanwhile (ActiveInstanceRefreshNotFound) or not reversible: refresh back.
            let reason = format!("{reason} (RollbackInstanceRefresh: {code}: {message})");
            let now = refresh_by_id(fleet, &group.name, &r.id).await?;
            if now.is_active() {
                return Err(Error::Backend {
                    backend: "autoscaling",
                    message: format!(
                        "{reason}; instance refresh {} is still {}: cancel it, then request {{\"rollback\": {{\"toVersion\": {}}}}}",
                        r.id, now.status, state.previous
                    ),
                    source: None,
                });
            }
            revert(fleet, p, group, state, reason).await
        }
    }
}

/// Sets the group back to the previous version and refreshes onto it (for a refresh that
/// succeeded or failed and so cannot be rolled back).
async fn revert<F: Fleet>(
    fleet: &F,
    p: &RolloutParams,
    group: &Group,
    state: State,
    reason: String,
) -> Result<Outcome> {
    tracing::warn!(group = %group.name, to = state.previous, %reason, "reverting the release");
    fleet
        .set_group_version(&group.name, &state.template_id, state.previous)
        .await?;
    let req = RefreshRequest {
        auto_rollback: false,
        alarms: Vec::new(),
        ..preferences(p, &group.name, &state.template_id, state.previous)
    };
    let id = match fleet.start_refresh(&req).await? {
        Started::Started { id } => id,
        Started::AlreadyInProgress { message } => {
            let target = TemplateVersion {
                template_id: state.template_id.clone(),
                template_name: String::new(),
                number: state.previous,
                image_id: None,
                description: None,
                is_default: false,
            };
            match fleet
                .refreshes(&group.name, &[])
                .await?
                .into_iter()
                .find(|r| r.is_active() && r.targets(&target, state.previous))
            {
                Some(r) => r.id,
                None => {
                    return Err(Error::Backend {
                        backend: "autoscaling",
                        message: format!(
                            "{reason}; group {} is set to version {} again, but its instances could not be refreshed onto it: {message}",
                            group.name, state.previous
                        ),
                        source: None,
                    });
                }
            }
        }
    };
    Ok(Outcome::Continue {
        summary: format!(
            "reverting group {} to launch template version {} (instance refresh {id}): {reason}",
            group.name, state.previous
        ),
        percent: 0,
        state: to_value(&State {
            phase: Phase::Reverting {
                reason: short(&reason),
                refresh_id: id,
            },
            ..state
        })?,
    })
}

async fn settle<F: Fleet>(
    fleet: &F,
    p: &RolloutParams,
    group: &Group,
    state: State,
    checks: u32,
) -> Result<Outcome> {
    let r = refresh_by_id(fleet, &group.name, &state.refresh_id).await?;
    if let Some(reason) = alarm_firing(fleet, p).await? {
        return revert(fleet, p, group, state, reason).await;
    }
    let h = health(fleet, group, state.version).await?;
    if let Some(reason) = gate(p, &h, state.version) {
        return revert(fleet, p, group, state, reason).await;
    }
    let launches = group
        .template
        .as_ref()
        .map(|t| t.version.clone())
        .unwrap_or_default();
    let launches_new = launches == state.version.to_string()
        || (launches.starts_with('$')
            && resolve(fleet, &state.template_id, &launches).await?.number == state.version);
    let (on, live) = on_version(group, state.version);
    if launches_new && on == live && live > 0 && h.healthy == h.total {
        return Ok(Outcome::Done {
            summary: format!(
                "released {} to group {}: launch template {} version {} on all {live} instances, {} of {} targets healthy (instance refresh {})",
                state.image_id.as_deref().unwrap_or("-"),
                group.name,
                state.template_id,
                state.version,
                h.healthy,
                h.total,
                r.id
            ),
            outputs: done_outputs(group, &state, &r, false),
        });
    }
    let waiting = format!(
        "instance refresh {} Successful; waiting for group {}: launches version {launches}, {on} of {live} instances on version {}, {} of {} targets healthy",
        r.id, group.name, state.version, h.healthy, h.total
    );
    if checks + 1 >= p.health_settle_checks {
        return revert(
            fleet,
            p,
            group,
            state,
            format!(
                "health gate: not settled after {} checks: {waiting}",
                checks + 1
            ),
        )
        .await;
    }
    Ok(Outcome::Continue {
        summary: waiting,
        percent: 99,
        state: to_value(&State {
            phase: Phase::Settling { checks: checks + 1 },
            ..state
        })?,
    })
}

fn done_outputs(
    group: &Group,
    s: &State,
    r: &Refresh,
    rolled_back: bool,
) -> BTreeMap<String, String> {
    let mut o = outputs(&[
        ("AutoScalingGroupName", group.name.clone()),
        ("LaunchTemplateId", s.template_id.clone()),
        ("LaunchTemplateVersion", s.version.to_string()),
        ("PreviousLaunchTemplateVersion", s.previous.to_string()),
        ("InstanceRefreshId", r.id.clone()),
        ("Status", r.status.clone()),
        ("RolledBack", rolled_back.to_string()),
    ]);
    if let Some(i) = &s.image_id {
        o.insert("ImageId".into(), i.clone());
    }
    o
}

#[cfg(test)]
mod tests;
