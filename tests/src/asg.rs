//! A production web tier in moto for roll-out-release: a VPC and subnet, a launch template on a
//! base AMI, an Auto Scaling group of N instances registered with an ELB target group, and a
//! "built" AMI (an image made from an instance, as Packer would) to roll out.
//!
//! Seeding is idempotent by name: a second call finds the group, template and images.

use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use aws_sdk_ec2::types::{Filter, RequestLaunchTemplateData};

use crate::Error;

/// What [`seed`] made or found.
#[derive(Debug, Clone)]
pub struct WebTier {
    pub group: String,
    pub template_id: String,
    pub target_group_arn: String,
    /// The AMI the group runs now (launch template version 1).
    pub base_image: String,
    /// An AMI built from it: the release to roll out.
    pub release_image: String,
}

/// Clients for one moto endpoint.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
}

impl Clients {
    /// Clients straight to moto at `endpoint` (never through a double).
    pub async fn new(endpoint: &str) -> Self {
        let config = crate::seed::moto_config(endpoint).await;
        Self {
            ec2: aws_sdk_ec2::Client::new(&config),
            autoscaling: aws_sdk_autoscaling::Client::new(&config),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
        }
    }
}

fn err<E: std::error::Error>(what: &str, e: E) -> Error {
    Error::Seed(format!(
        "{what}: {}",
        aws_sdk_ec2::error::DisplayErrorContext(e)
    ))
}

/// The web tier `name` with `instances` instances: found, or created.
pub async fn seed(c: &Clients, name: &str, instances: i32) -> Result<WebTier, Error> {
    let base_image = base_image(c).await?;
    let group = format!("{name}-asg");
    let lt_name = format!("{name}-lt");
    // The launch template.
    let found = c
        .ec2
        .describe_launch_templates()
        .filters(
            Filter::builder()
                .name("launch-template-name")
                .values(&lt_name)
                .build(),
        )
        .send()
        .await
        .map_err(|e| err("DescribeLaunchTemplates", e))?;
    let template_id = match found
        .launch_templates()
        .first()
        .and_then(|t| t.launch_template_id())
    {
        Some(id) => id.to_string(),
        None => c
            .ec2
            .create_launch_template()
            .launch_template_name(&lt_name)
            .version_description("base image")
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id(&base_image)
                    .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err("CreateLaunchTemplate", e))?
            .launch_template()
            .and_then(|t| t.launch_template_id())
            .ok_or_else(|| Error::Seed("CreateLaunchTemplate: no id".into()))?
            .to_string(),
    };
    let release_image = release_image(c, name, &base_image).await?;
    // The group, behind a target group.
    let existing = c
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&group)
        .send()
        .await
        .map_err(|e| err("DescribeAutoScalingGroups", e))?;
    if let Some(g) = existing.auto_scaling_groups().first() {
        return Ok(WebTier {
            group,
            template_id,
            target_group_arn: g.target_group_arns().first().cloned().unwrap_or_default(),
            base_image,
            release_image,
        });
    }
    let vpc = c
        .ec2
        .create_vpc()
        .cidr_block("10.20.0.0/16")
        .send()
        .await
        .map_err(|e| err("CreateVpc", e))?
        .vpc()
        .and_then(|v| v.vpc_id())
        .ok_or_else(|| Error::Seed("CreateVpc: no id".into()))?
        .to_string();
    let subnet = c
        .ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.20.1.0/24")
        .availability_zone(crate::seed::AVAILABILITY_ZONE)
        .send()
        .await
        .map_err(|e| err("CreateSubnet", e))?
        .subnet()
        .and_then(|s| s.subnet_id())
        .ok_or_else(|| Error::Seed("CreateSubnet: no id".into()))?
        .to_string();
    let tg_name: String = format!("{name}-tg").chars().take(32).collect();
    let target_group_arn = c
        .elb
        .create_target_group()
        .name(tg_name.trim_end_matches('-'))
        .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http)
        .port(80)
        .vpc_id(&vpc)
        .target_type(aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum::Instance)
        .send()
        .await
        .map_err(|e| err("CreateTargetGroup", e))?
        .target_groups()
        .first()
        .and_then(|t| t.target_group_arn())
        .ok_or_else(|| Error::Seed("CreateTargetGroup: no arn".into()))?
        .to_string();
    c.autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(&group)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(&template_id)
                .version("1")
                .build(),
        )
        .min_size(instances)
        .max_size(instances * 2)
        .desired_capacity(instances)
        .vpc_zone_identifier(&subnet)
        .target_group_arns(&target_group_arn)
        .health_check_type("ELB")
        .send()
        .await
        .map_err(|e| err("CreateAutoScalingGroup", e))?;
    Ok(WebTier {
        group,
        template_id,
        target_group_arn,
        base_image,
        release_image,
    })
}

/// moto's first public AMI: the group's base image.
async fn base_image(c: &Clients) -> Result<String, Error> {
    let out = c
        .ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .map_err(|e| err("DescribeImages", e))?;
    let mut ids: Vec<&str> = out.images().iter().filter_map(|i| i.image_id()).collect();
    ids.sort_unstable();
    ids.first()
        .map(|s| s.to_string())
        .ok_or_else(|| Error::Seed("moto lists no AMI".into()))
}

/// The release AMI `<name>-release`: an image of an instance of the base image, as a Packer
/// build in CodeBuild makes it.
async fn release_image(c: &Clients, name: &str, base: &str) -> Result<String, Error> {
    let image_name = format!("{name}-release");
    let found = c
        .ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(&image_name).build())
        .send()
        .await
        .map_err(|e| err("DescribeImages", e))?;
    if let Some(id) = found.images().first().and_then(|i| i.image_id()) {
        return Ok(id.to_string());
    }
    let builder = c
        .ec2
        .run_instances()
        .image_id(base)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .map_err(|e| err("RunInstances", e))?;
    let instance = builder
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .ok_or_else(|| Error::Seed("RunInstances: no instance".into()))?
        .to_string();
    let image = c
        .ec2
        .create_image()
        .instance_id(&instance)
        .name(&image_name)
        .description("built by Packer (demo)")
        .send()
        .await
        .map_err(|e| err("CreateImage", e))?
        .image_id()
        .ok_or_else(|| Error::Seed("CreateImage: no id".into()))?
        .to_string();
    c.ec2
        .terminate_instances()
        .instance_ids(&instance)
        .send()
        .await
        .map_err(|e| err("TerminateInstances", e))?;
    Ok(image)
}

/// What moto says the group is: its launch template version and each instance's image (read
/// from EC2, not from Auto Scaling: independent of any double in front of Auto Scaling).
#[derive(Debug, Clone)]
pub struct Observed {
    pub version: String,
    pub images: Vec<String>,
}

pub async fn observe(c: &Clients, group: &str) -> Result<Observed, Error> {
    let out = c
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|e| err("DescribeAutoScalingGroups", e))?;
    let g = out
        .auto_scaling_groups()
        .first()
        .ok_or_else(|| Error::Seed(format!("no group {group}")))?;
    let version = g
        .launch_template()
        .and_then(|t| t.version())
        .unwrap_or_default()
        .to_string();
    let ids: Vec<String> = g
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    let mut images = Vec::new();
    if !ids.is_empty() {
        let d = c
            .ec2
            .describe_instances()
            .set_instance_ids(Some(ids))
            .send()
            .await
            .map_err(|e| err("DescribeInstances", e))?;
        images = d
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.image_id().map(str::to_string))
            .collect();
    }
    Ok(Observed { version, images })
}
