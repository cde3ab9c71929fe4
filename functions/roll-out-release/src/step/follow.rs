//! Following a refresh from one invocation to the next until it settles.

use super::*;

pub(super) async fn refresh_by_id<F: Fleet>(fleet: &F, group: &str, id: &str) -> Result<Refresh> {
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

pub(super) fn progress(r: &Refresh) -> String {
    format!(
        "{}%{}",
        r.percentage_complete.unwrap_or(0),
        r.instances_to_update
            .map(|n| format!(", {n} instances to update"))
            .unwrap_or_default()
    )
}

pub(super) async fn follow<F: Fleet>(
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

pub(super) fn clamp(p: Option<i32>) -> u8 {
    u8::try_from(p.unwrap_or(0).clamp(0, 99)).unwrap_or(0)
}

pub(super) async fn refreshing<F: Fleet>(
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

pub(super) async fn settle<F: Fleet>(
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

pub(super) fn done_outputs(
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
