//! The health gate: target health of the new version's instances and the named CloudWatch alarms.

use super::*;

pub(super) async fn check_alarms_exist<F: Fleet>(fleet: &F, p: &RolloutParams) -> Result<()> {
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

/// What the health gate saw of the new version's instances.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Targets (or instances, for a group without target groups) of the version.
    pub(super) total: usize,
    pub(super) healthy: usize,
    /// `instance (target group): state (reason)` of each unhealthy one.
    pub(super) unhealthy: Vec<String>,
}

pub(super) async fn health<F: Fleet>(fleet: &F, group: &Group, version: i64) -> Result<Health> {
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
pub(super) fn gate(p: &RolloutParams, h: &Health, version: i64) -> Option<String> {
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

pub(super) async fn alarm_firing<F: Fleet>(fleet: &F, p: &RolloutParams) -> Result<Option<String>> {
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
