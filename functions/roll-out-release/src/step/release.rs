//! Starting a release: this run's launch template version and its instance refresh.

use super::*;

pub(super) fn version_description(
    marker: &str,
    execution: &Execution,
    image: &str,
    from: i64,
) -> String {
    let key: String = execution.key.chars().take(120).collect();
    format!("{marker} ({key}) image {image} from version {from}")
}

pub(super) fn preferences(
    p: &RolloutParams,
    group: &str,
    template_id: &str,
    version: i64,
) -> RefreshRequest {
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

pub(super) async fn start_release<F: Fleet>(
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

pub(super) fn busy(group: &Group, r: &Refresh) -> Error {
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
