//! The instance-refresh double's wire format, proven against an independent client: boto3
//! (botocore parses the awsQuery XML answers and error codes with the real Auto Scaling service
//! model, and validates every request it sends) drives StartInstanceRefresh,
//! DescribeInstanceRefreshes, RollbackInstanceRefresh and CancelInstanceRefresh against the
//! double in front of moto, and what the group is afterwards is read from moto (EC2 images of
//! the instances), not from the double.
//!
//! Needs SNAPSTAGE_MOTO_CLOUD and the repo's .venv (boto3); prints SKIP otherwise (a failure
//! under CI=true).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use serde_json::Value;
use snapstage_localenv::asg::{self, Clients};
use snapstage_localenv::refresh::RefreshDouble;
use snapstage_localenv::testkit::{self, unique};
use snapstage_localenv::workspace_root;

const SCRIPT: &str = r#"
import json, sys
import boto3
from botocore.exceptions import ClientError

endpoint, group, template, new_version = sys.argv[1:5]
asg = boto3.client("autoscaling", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
out = {}

def code(call, **kw):
    try:
        call(**kw)
        return None
    except ClientError as e:
        return e.response["Error"]["Code"]

def follow(refresh_id, done, limit=20):
    for _ in range(limit):
        r = asg.describe_instance_refreshes(AutoScalingGroupName=group, InstanceRefreshIds=[refresh_id])["InstanceRefreshes"][0]
        if r["Status"] in done:
            return r
    return r

started = asg.start_instance_refresh(
    AutoScalingGroupName=group, Strategy="Rolling",
    DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": template, "Version": new_version}},
    Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 30, "CheckpointPercentages": [50, 100],
                 "CheckpointDelay": 60, "SkipMatching": True, "AutoRollback": True,
                 "AlarmSpecification": {"Alarms": ["web-5xx"]}})
rid = started["InstanceRefreshId"]
first = asg.describe_instance_refreshes(AutoScalingGroupName=group)["InstanceRefreshes"][0]
out["first"] = {k: first.get(k) for k in ["InstanceRefreshId", "Status", "PercentageComplete", "InstancesToUpdate"]}
out["preferences"] = first["Preferences"]
out["desired"] = first["DesiredConfiguration"]
out["start_time_type"] = type(first["StartTime"]).__name__
out["second_start"] = code(asg.start_instance_refresh, AutoScalingGroupName=group,
    DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": template, "Version": new_version}})
out["rollback"] = asg.rollback_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"] == rid
rolled = follow(rid, ["RollbackSuccessful", "RollbackFailed"])
out["rolled"] = {"Status": rolled["Status"], "Reason": rolled["RollbackDetails"]["RollbackReason"],
                 "Percent": rolled["RollbackDetails"]["PercentageCompleteOnRollback"]}
out["rollback_again"] = code(asg.rollback_instance_refresh, AutoScalingGroupName=group)
out["cancel_none"] = code(asg.cancel_instance_refresh, AutoScalingGroupName=group)
plain = asg.start_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"]
out["irreversible"] = code(asg.rollback_instance_refresh, AutoScalingGroupName=group)
out["cancel"] = asg.cancel_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"] == plain
out["cancelled"] = follow(plain, ["Cancelled"])["Status"]
again = asg.start_instance_refresh(AutoScalingGroupName=group,
    DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": template, "Version": new_version}},
    Preferences={"MinHealthyPercentage": 100, "SkipMatching": True})["InstanceRefreshId"]
out["final"] = follow(again, ["Successful", "Failed"])["Status"]
g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
out["group_version"] = g["LaunchTemplate"]["Version"]
out["instance_versions"] = sorted({i["LaunchTemplate"]["Version"] for i in g["Instances"]})
out["listed"] = len(asg.describe_instance_refreshes(AutoScalingGroupName=group)["InstanceRefreshes"])
out["validation"] = code(asg.start_instance_refresh, AutoScalingGroupName=group,
    Preferences={"AutoRollback": True})
print(json.dumps(out))
"#;

#[tokio::test]
async fn boto3_drives_the_instance_refresh_double_and_the_group_really_changes() {
    let Some(m) = testkit::moto("instance-refresh double under boto3") else {
        return;
    };
    let python = workspace_root().join(".venv/bin/python");
    if !python.is_file() {
        testkit::skip(
            "instance-refresh double under boto3: .venv/bin/python missing (run scripts/setup.sh)",
        );
        return;
    }
    let clients = Clients::new(&m.cloud).await;
    let tier = asg::seed(&clients, &unique("rd"), 2).await.unwrap();
    let v2 = clients
        .ec2
        .create_launch_template_version()
        .launch_template_id(&tier.template_id)
        .source_version("1")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(&tier.release_image)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .launch_template_version()
        .unwrap()
        .version_number()
        .unwrap();
    let double = RefreshDouble::start(&m.cloud).unwrap();
    let url = double.url.clone();
    let (group, template) = (tier.group.clone(), tier.template_id.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", SCRIPT, &url, &group, &template, &v2.to_string()])
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "boto3 failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(v["first"]["Status"], "InProgress", "{v}");
    assert_eq!(v["first"]["InstancesToUpdate"], 2, "{v}");
    assert_eq!(
        v["start_time_type"], "datetime",
        "botocore parsed StartTime"
    );
    let p = &v["preferences"];
    assert_eq!(p["MinHealthyPercentage"], 50, "{p}");
    assert_eq!(p["InstanceWarmup"], 30, "{p}");
    assert_eq!(
        p["CheckpointPercentages"],
        serde_json::json!([50, 100]),
        "{p}"
    );
    assert_eq!(p["SkipMatching"], true, "{p}");
    assert_eq!(p["AutoRollback"], true, "{p}");
    assert_eq!(
        p["AlarmSpecification"]["Alarms"],
        serde_json::json!(["web-5xx"]),
        "{p}"
    );
    assert_eq!(
        v["desired"]["LaunchTemplate"]["LaunchTemplateId"],
        tier.template_id.as_str()
    );
    assert_eq!(v["desired"]["LaunchTemplate"]["Version"], v2.to_string());
    assert_eq!(v["second_start"], "InstanceRefreshInProgress");
    assert_eq!(v["rollback"], true);
    assert_eq!(v["rolled"]["Status"], "RollbackSuccessful", "{v}");
    assert_eq!(v["rolled"]["Percent"], 100, "{v}");
    assert_eq!(v["rollback_again"], "ActiveInstanceRefreshNotFound");
    assert_eq!(v["cancel_none"], "ActiveInstanceRefreshNotFound");
    assert_eq!(v["irreversible"], "IrreversibleInstanceRefresh");
    assert_eq!(v["cancel"], true);
    assert_eq!(v["cancelled"], "Cancelled");
    assert_eq!(v["final"], "Successful", "{v}");
    assert_eq!(v["group_version"], v2.to_string());
    assert_eq!(v["instance_versions"], serde_json::json!([v2.to_string()]));
    assert_eq!(v["listed"], 3);
    assert_eq!(v["validation"], "ValidationError");

    // What moto itself says, without the double: the group launches version 2 and every
    // instance runs the release image.
    let seen = asg::observe(&clients, &tier.group).await.unwrap();
    assert_eq!(seen.version, v2.to_string());
    assert_eq!(seen.images.len(), 2);
    assert!(
        seen.images.iter().all(|i| i == &tier.release_image),
        "{seen:?}"
    );
}
