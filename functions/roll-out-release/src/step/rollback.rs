//! Rolling back: the refresh in progress, or the group set back to an earlier version and refreshed onto it.

use super::*;

pub(super) async fn start_rollback<F: Fleet>(
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

pub(super) fn plan_rollback(
    group: &Group,
    template: &TemplateRef,
    what: &str,
    current: i64,
) -> Outcome {
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

pub(super) fn rolled_back_error(group: &Group, s: &State, r: &Refresh, reason: &str) -> Error {
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

pub(super) async fn rolling_back<F: Fleet>(
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

pub(super) async fn roll_back<F: Fleet>(
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
pub(super) async fn revert<F: Fleet>(
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
