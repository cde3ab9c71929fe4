//! [`Fleet`] over the AWS SDK: EC2 Auto Scaling, EC2 (launch templates, images), ELBv2 (target
//! health) and CloudWatch (alarms). Every client comes from the one `SdkConfig`
//! (`snapstage::aws::sdk_config`: endpoints from `AWS_ENDPOINT_URL[_<SERVICE>]`), and every error
//! keeps the service's code and message, classified by `snapstage::aws::aws_error`.

use aws_sdk_autoscaling::error::ProvideErrorMetadata as _;
use aws_sdk_autoscaling::types::{
    AlarmSpecification, DesiredConfiguration, LaunchTemplateSpecification, RefreshPreferences,
};
use snapstage::aws::aws_error;
use snapstage::{Error, Result};

use crate::fleet::{
    AlarmState, Fleet, Group, GroupInstance, Image, Refresh, RefreshRequest, RolledBack, Started,
    TargetState, TemplateRef, TemplateVersion,
};

/// The AWS clients the step uses.
#[derive(Debug, Clone)]
pub struct SdkFleet {
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
}

impl SdkFleet {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            ec2: aws_sdk_ec2::Client::new(config),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
        }
    }
}

/// Pages are bounded: a listing this long is a bug, not a fleet.
const MAX_PAGES: usize = 50;

fn template_version(v: &aws_sdk_ec2::types::LaunchTemplateVersion) -> Option<TemplateVersion> {
    Some(TemplateVersion {
        template_id: v.launch_template_id()?.to_string(),
        template_name: v.launch_template_name().unwrap_or_default().to_string(),
        number: v.version_number()?,
        image_id: v
            .launch_template_data()
            .and_then(|d| d.image_id())
            .map(str::to_string),
        description: v.version_description().map(str::to_string),
        is_default: v.default_version().unwrap_or(false),
    })
}

fn refresh(r: &aws_sdk_autoscaling::types::InstanceRefresh) -> Refresh {
    let lt = r.desired_configuration().and_then(|d| d.launch_template());
    Refresh {
        id: r.instance_refresh_id().unwrap_or_default().to_string(),
        status: r
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        status_reason: r.status_reason().map(str::to_string),
        percentage_complete: r.percentage_complete(),
        instances_to_update: r.instances_to_update(),
        desired_template: lt
            .and_then(|l| l.launch_template_id().or(l.launch_template_name()))
            .map(str::to_string),
        desired_version: lt.and_then(|l| l.version()).map(str::to_string),
        rollback_reason: r
            .rollback_details()
            .and_then(|d| d.rollback_reason())
            .map(str::to_string),
        percentage_complete_on_rollback: r
            .rollback_details()
            .and_then(|d| d.percentage_complete_on_rollback()),
    }
}

impl Fleet for SdkFleet {
    async fn group(&self, name: &str) -> Result<Option<Group>> {
        let out = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    "autoscaling",
                    &format!("DescribeAutoScalingGroups {name:?}"),
                    e,
                )
            })?;
        let Some(g) = out
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(name))
        else {
            return Ok(None);
        };
        let template = g.launch_template().and_then(|t| {
            Some(TemplateRef {
                id: t.launch_template_id()?.to_string(),
                name: t.launch_template_name().unwrap_or_default().to_string(),
                version: t.version().unwrap_or("$Default").to_string(),
            })
        });
        Ok(Some(Group {
            name: name.to_string(),
            template,
            mixed_instances: g.mixed_instances_policy().is_some(),
            desired_capacity: g.desired_capacity().unwrap_or_default(),
            instances: g
                .instances()
                .iter()
                .map(|i| GroupInstance {
                    id: i.instance_id().unwrap_or_default().to_string(),
                    version: i
                        .launch_template()
                        .and_then(|t| t.version())
                        .map(str::to_string),
                    lifecycle: i
                        .lifecycle_state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    health: i.health_status().unwrap_or_default().to_string(),
                })
                .collect(),
            target_groups: g.target_group_arns().to_vec(),
        }))
    }

    async fn versions(
        &self,
        template_id: &str,
        versions: &[String],
    ) -> Result<Vec<TemplateVersion>> {
        let out = self
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(template_id)
            .set_versions(Some(versions.to_vec()))
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    "ec2",
                    &format!(
                        "DescribeLaunchTemplateVersions {template_id} {}",
                        versions.join(",")
                    ),
                    e,
                )
            })?;
        Ok(out
            .launch_template_versions()
            .iter()
            .filter_map(template_version)
            .collect())
    }

    async fn find_version(
        &self,
        template_id: &str,
        marker: &str,
    ) -> Result<Option<TemplateVersion>> {
        let mut token: Option<String> = None;
        let mut best: Option<TemplateVersion> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .ec2
                .describe_launch_template_versions()
                .launch_template_id(template_id)
                .set_next_token(token.take())
                .max_results(200)
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        "ec2",
                        &format!("DescribeLaunchTemplateVersions {template_id}"),
                        e,
                    )
                })?;
            for v in out
                .launch_template_versions()
                .iter()
                .filter_map(template_version)
            {
                if v.description.as_deref().is_some_and(|d| d.contains(marker))
                    && best.as_ref().is_none_or(|b| v.number > b.number)
                {
                    best = Some(v);
                }
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(best)
    }

    async fn create_version(
        &self,
        template_id: &str,
        source: i64,
        image_id: &str,
        description: &str,
    ) -> Result<TemplateVersion> {
        let out = self
            .ec2
            .create_launch_template_version()
            .launch_template_id(template_id)
            .source_version(source.to_string())
            .version_description(description)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(image_id)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    "ec2",
                    &format!("CreateLaunchTemplateVersion {template_id} from version {source}"),
                    e,
                )
            })?;
        out.launch_template_version()
            .and_then(template_version)
            .ok_or_else(|| Error::Backend {
                backend: "ec2",
                message: format!(
                    "CreateLaunchTemplateVersion {template_id}: the answer names no version"
                ),
                source: None,
            })
    }

    async fn image(&self, image_id: &str) -> Result<Option<Image>> {
        match self.ec2.describe_images().image_ids(image_id).send().await {
            Ok(out) => Ok(out.images().iter().find_map(|i| {
                Some(Image {
                    id: i.image_id()?.to_string(),
                    state: i
                        .state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                })
            })),
            Err(e)
                if e.as_service_error()
                    .and_then(|s| s.code())
                    .is_some_and(|c| c.starts_with("InvalidAMIID")) =>
            {
                Ok(None)
            }
            Err(e) => Err(aws_error("ec2", &format!("DescribeImages {image_id}"), e)),
        }
    }

    async fn refreshes(&self, group: &str, ids: &[String]) -> Result<Vec<Refresh>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .autoscaling
                .describe_instance_refreshes()
                .auto_scaling_group_name(group)
                .set_instance_refresh_ids((!ids.is_empty()).then(|| ids.to_vec()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        "autoscaling",
                        &format!("DescribeInstanceRefreshes {group:?}"),
                        e,
                    )
                })?;
            all.extend(out.instance_refreshes().iter().map(refresh));
            match out.next_token() {
                // The newest come first: a run only looks for recent ones.
                Some(t) if !t.is_empty() && ids.is_empty() && all.len() < 100 => {
                    token = Some(t.to_string())
                }
                _ => break,
            }
        }
        Ok(all)
    }

    async fn start_refresh(&self, r: &RefreshRequest) -> Result<Started> {
        let mut prefs = RefreshPreferences::builder()
            .set_min_healthy_percentage(r.min_healthy_percentage)
            .set_max_healthy_percentage(r.max_healthy_percentage)
            .set_instance_warmup(r.instance_warmup)
            .set_checkpoint_delay(r.checkpoint_delay)
            .set_bake_time(r.bake_time)
            .skip_matching(r.skip_matching)
            .auto_rollback(r.auto_rollback);
        if !r.checkpoint_percentages.is_empty() {
            prefs = prefs.set_checkpoint_percentages(Some(r.checkpoint_percentages.clone()));
        }
        // Auto Scaling watches alarms only with AutoRollback (the API rejects them otherwise);
        // the step checks them itself either way.
        if r.auto_rollback && !r.alarms.is_empty() {
            prefs = prefs.alarm_specification(
                AlarmSpecification::builder()
                    .set_alarms(Some(r.alarms.clone()))
                    .build(),
            );
        }
        let desired = DesiredConfiguration::builder()
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(&r.template_id)
                    .version(r.version.to_string())
                    .build(),
            )
            .build();
        let sent = self
            .autoscaling
            .start_instance_refresh()
            .auto_scaling_group_name(&r.group)
            .strategy(aws_sdk_autoscaling::types::RefreshStrategy::Rolling)
            .desired_configuration(desired)
            .preferences(prefs.build())
            .send()
            .await;
        match sent {
            Ok(out) => out
                .instance_refresh_id()
                .map(|id| Started::Started { id: id.to_string() })
                .ok_or_else(|| Error::Backend {
                    backend: "autoscaling",
                    message: format!(
                        "StartInstanceRefresh {:?}: the answer names no refresh",
                        r.group
                    ),
                    source: None,
                }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.code() == Some("InstanceRefreshInProgress")) =>
            {
                Ok(Started::AlreadyInProgress {
                    message: e
                        .as_service_error()
                        .and_then(|s| s.message())
                        .unwrap_or("an instance refresh is in progress")
                        .to_string(),
                })
            }
            Err(e) => Err(aws_error(
                "autoscaling",
                &format!(
                    "StartInstanceRefresh {:?} to version {}",
                    r.group, r.version
                ),
                e,
            )),
        }
    }

    async fn rollback_refresh(&self, group: &str) -> Result<RolledBack> {
        match self
            .autoscaling
            .rollback_instance_refresh()
            .auto_scaling_group_name(group)
            .send()
            .await
        {
            Ok(out) => Ok(RolledBack::RollingBack {
                id: out.instance_refresh_id().unwrap_or_default().to_string(),
            }),
            Err(e) => {
                let code = e
                    .as_service_error()
                    .and_then(|s| s.code())
                    .map(str::to_string);
                match code.as_deref() {
                    Some(c @ ("ActiveInstanceRefreshNotFound" | "IrreversibleInstanceRefresh")) => {
                        Ok(RolledBack::Impossible {
                            code: c.to_string(),
                            message: e
                                .as_service_error()
                                .and_then(|s| s.message())
                                .unwrap_or_default()
                                .to_string(),
                        })
                    }
                    _ => Err(aws_error(
                        "autoscaling",
                        &format!("RollbackInstanceRefresh {group:?}"),
                        e,
                    )),
                }
            }
        }
    }

    async fn set_group_version(&self, group: &str, template_id: &str, version: i64) -> Result<()> {
        self.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(group)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(template_id)
                    .version(version.to_string())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    "autoscaling",
                    &format!("UpdateAutoScalingGroup {group:?} to {template_id} version {version}"),
                    e,
                )
            })?;
        Ok(())
    }

    async fn target_health(&self, target_group: &str) -> Result<Vec<TargetState>> {
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(target_group)
            .send()
            .await
            .map_err(|e| aws_error("elbv2", &format!("DescribeTargetHealth {target_group}"), e))?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| {
                let h = d.target_health();
                Some(TargetState {
                    target_group: target_group.to_string(),
                    id: d.target()?.id()?.to_string(),
                    state: h
                        .and_then(|h| h.state())
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    reason: h.and_then(|h| h.reason()).map(|r| r.as_str().to_string()),
                    description: h.and_then(|h| h.description()).map(str::to_string),
                })
            })
            .collect())
    }

    async fn alarms(&self, names: &[String]) -> Result<Vec<AlarmState>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .cloudwatch
            .describe_alarms()
            .set_alarm_names(Some(names.to_vec()))
            .alarm_types(aws_sdk_cloudwatch::types::AlarmType::MetricAlarm)
            .alarm_types(aws_sdk_cloudwatch::types::AlarmType::CompositeAlarm)
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    "cloudwatch",
                    &format!("DescribeAlarms {}", names.join(", ")),
                    e,
                )
            })?;
        let state = |s: Option<&aws_sdk_cloudwatch::types::StateValue>| {
            s.map(|s| s.as_str().to_string()).unwrap_or_default()
        };
        let mut all: Vec<AlarmState> = out
            .metric_alarms()
            .iter()
            .filter_map(|a| {
                Some(AlarmState {
                    name: a.alarm_name()?.to_string(),
                    state: state(a.state_value()),
                    reason: a.state_reason().map(str::to_string),
                })
            })
            .collect();
        all.extend(out.composite_alarms().iter().filter_map(|a| {
            Some(AlarmState {
                name: a.alarm_name()?.to_string(),
                state: state(a.state_value()),
                reason: a.state_reason().map(str::to_string),
            })
        }));
        Ok(all)
    }
}
