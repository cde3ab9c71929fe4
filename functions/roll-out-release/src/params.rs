//! `roll-out-release` parameters, their checks, and the production allow list.

use serde::{Deserialize, Deserializer};

use snapstage::{Error, Result};

/// The environment variable naming the Auto Scaling groups this function may change.
pub const ALLOWED_GROUPS_ENV: &str = "SNAPSTAGE_ROLLOUT_ALLOWED_GROUPS";

/// `roll-out-release` parameters (UserParameters JSON, or a direct request's keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutParams {
    /// The Auto Scaling group to roll the release out to (must be in the allow list).
    #[serde(alias = "autoScalingGroup")]
    pub auto_scaling_group_name: String,
    /// The new machine image, e.g. `#{Build.ImageId}`. Required unless `rollback` is given.
    #[serde(default)]
    pub image_id: Option<String>,
    /// The group's launch template, to check the group uses the one you expect: `{"id": "lt-…"}`
    /// or `{"name": "…"}`. Default: whatever the group uses.
    #[serde(default)]
    pub launch_template: Option<TemplateChoice>,
    /// Instance refresh preference: the share of the group kept in service (default 90).
    #[serde(default)]
    pub min_healthy_percentage: Option<i32>,
    /// Instance refresh preference: up to this share of capacity during the refresh (100–200).
    #[serde(default)]
    pub max_healthy_percentage: Option<i32>,
    /// Instance refresh preference: seconds a new instance warms up before it counts.
    #[serde(default)]
    pub instance_warmup: Option<i32>,
    /// Instance refresh preference: pause at these percentages of the group replaced.
    #[serde(default)]
    pub checkpoint_percentages: Vec<i32>,
    /// Instance refresh preference: seconds to wait at each checkpoint.
    #[serde(default)]
    pub checkpoint_delay: Option<i32>,
    /// Instance refresh preference: skip instances already on the new configuration (default true).
    #[serde(default = "yes")]
    pub skip_matching: bool,
    /// Instance refresh preference: Auto Scaling rolls a failed refresh back itself (default true).
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// Instance refresh preference: seconds to wait after the last replacement before success.
    #[serde(default)]
    pub bake_time: Option<i32>,
    /// CloudWatch alarms: any of them in ALARM during the refresh rolls the release back.
    #[serde(default)]
    pub alarms: Vec<String>,
    /// Health gate: the share of the new version's targets allowed to be unhealthy (default 0).
    #[serde(default)]
    pub max_unhealthy_percent: u8,
    /// Health gate: invocations to wait, once the refresh succeeded, for every target to be
    /// healthy (default 20); then the release is rolled back.
    #[serde(default = "settle_checks")]
    pub health_settle_checks: u32,
    /// A rollback request instead of a release: `{"toVersion": N | "previous"}`.
    #[serde(default)]
    pub rollback: Option<RollbackRequest>,
    /// Report what would change; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn yes() -> bool {
    true
}

fn settle_checks() -> u32 {
    20
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TemplateChoice {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollbackRequest {
    pub to_version: ToVersion,
}

/// `"previous"` or a launch template version number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToVersion {
    Previous,
    Number(i64),
}

impl<'de> Deserialize<'de> for ToVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let v = serde_json::Value::deserialize(d)?;
        let bad = || {
            D::Error::custom(format!(
                "expected \"previous\" or a launch template version number (1, 2, …), got {v}"
            ))
        };
        match &v {
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("previous") => {
                Ok(Self::Previous)
            }
            serde_json::Value::String(s) => s
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Self::Number)
                .ok_or_else(bad),
            serde_json::Value::Number(n) => n
                .as_i64()
                .filter(|n| *n >= 1)
                .map(Self::Number)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

impl RolloutParams {
    /// Checks what can be checked without AWS.
    pub fn validate(&self) -> Result<()> {
        let g = &self.auto_scaling_group_name;
        if g.trim().is_empty() || g.len() > 255 || g.contains(':') {
            return Err(Error::parameter(
                "autoScalingGroupName",
                format!(
                    "expected an Auto Scaling group name (1-255 characters, no ':'), got {g:?}"
                ),
            ));
        }
        match (&self.image_id, &self.rollback) {
            (Some(_), Some(_)) => {
                return Err(Error::parameter(
                    "rollback",
                    "a rollback request rolls back to a launch template version: remove imageId",
                ));
            }
            (None, None) => {
                return Err(Error::parameter(
                    "imageId",
                    "missing: the AMI to roll out, e.g. \"#{Build.ImageId}\" (or give rollback: {\"toVersion\": \"previous\"})",
                ));
            }
            (Some(ami), None) if !is_image_id(ami) => {
                return Err(Error::parameter(
                    "imageId",
                    format!("expected an AMI id like \"ami-0123456789abcdef0\", got {ami:?}"),
                ));
            }
            _ => {}
        }
        if let Some(t) = &self.launch_template {
            match (&t.id, &t.name) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(Error::parameter(
                        "launchTemplate",
                        "give one of {\"id\": \"lt-…\"} or {\"name\": \"…\"}",
                    ));
                }
                (Some(id), None) if !id.starts_with("lt-") => {
                    return Err(Error::parameter(
                        "launchTemplate.id",
                        format!(
                            "expected a launch template id like \"lt-0123456789abcdef0\", got {id:?}"
                        ),
                    ));
                }
                _ => {}
            }
        }
        let range = |field: &str, v: Option<i32>, lo: i32, hi: i32| -> Result<()> {
            match v {
                Some(n) if !(lo..=hi).contains(&n) => Err(Error::parameter(
                    field,
                    format!("expected {lo} to {hi}, got {n}"),
                )),
                _ => Ok(()),
            }
        };
        range("minHealthyPercentage", self.min_healthy_percentage, 0, 100)?;
        range(
            "maxHealthyPercentage",
            self.max_healthy_percentage,
            100,
            200,
        )?;
        range("instanceWarmup", self.instance_warmup, 0, 86_400)?;
        range("checkpointDelay", self.checkpoint_delay, 0, 172_800)?;
        range("bakeTime", self.bake_time, 0, 172_800)?;
        if let (Some(min), Some(max)) = (self.min_healthy_percentage, self.max_healthy_percentage)
            && max - min > 100
        {
            return Err(Error::parameter(
                "maxHealthyPercentage",
                format!("at most 100 above minHealthyPercentage ({min}), got {max}"),
            ));
        }
        let mut last = 0;
        for (i, p) in self.checkpoint_percentages.iter().enumerate() {
            if !(1..=100).contains(p) || *p <= last {
                return Err(Error::parameter(
                    format!("checkpointPercentages[{i}]"),
                    format!("expected ascending percentages from 1 to 100, got {p}"),
                ));
            }
            last = *p;
        }
        if self.checkpoint_delay.is_some() && self.checkpoint_percentages.is_empty() {
            return Err(Error::parameter(
                "checkpointDelay",
                "needs checkpointPercentages (the points to pause at)",
            ));
        }
        if self.max_unhealthy_percent > 100 {
            return Err(Error::parameter(
                "maxUnhealthyPercent",
                format!("expected 0 to 100, got {}", self.max_unhealthy_percent),
            ));
        }
        if self.alarms.len() > 10 {
            return Err(Error::parameter(
                "alarms",
                format!("at most 10 alarms, got {}", self.alarms.len()),
            ));
        }
        for (i, a) in self.alarms.iter().enumerate() {
            if a.trim().is_empty() || a.len() > 255 {
                return Err(Error::parameter(
                    format!("alarms[{i}]"),
                    format!("expected a CloudWatch alarm name, got {a:?}"),
                ));
            }
        }
        if !(1..=1000).contains(&self.health_settle_checks) {
            return Err(Error::parameter(
                "healthSettleChecks",
                format!("expected 1 to 1000, got {}", self.health_settle_checks),
            ));
        }
        Ok(())
    }
}

/// `ami-` and 8 or 17 hex digits.
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("ami-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The groups this function may change, from [`ALLOWED_GROUPS_ENV`]: names separated by
/// commas or whitespace; a name ending in `*` allows every group that starts with the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<String>,
    /// The raw setting, for error messages (`None`: unset).
    raw: Option<String>,
}

impl AllowList {
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        Self::parse(get(ALLOWED_GROUPS_ENV).as_deref())
    }

    pub fn parse(raw: Option<&str>) -> Self {
        let entries = raw
            .unwrap_or_default()
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "*")
            .map(str::to_string)
            .collect();
        Self {
            entries,
            raw: raw.map(str::to_string),
        }
    }

    pub fn allows(&self, group: &str) -> bool {
        self.entries.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => !prefix.is_empty() && group.starts_with(prefix),
            None => e == group,
        })
    }

    /// `Ok` when `group` may be changed; else a ConfigurationError that says how to allow it.
    pub fn check(&self, group: &str) -> Result<()> {
        if self.allows(group) {
            return Ok(());
        }
        let setting = match &self.raw {
            None => "is not set".to_string(),
            Some(r) if self.entries.is_empty() => format!("is {r:?}, which allows no group"),
            Some(r) => format!("is {r:?}"),
        };
        Err(Error::Refused(format!(
            "autoScalingGroupName {group:?} is not in the production allow list: {ALLOWED_GROUPS_ENV} {setting}; \
             add the group to the stack's RolloutAllowedGroups parameter (or the variable) to let this function change it"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use snapstage::FailureKind;

    fn parse(v: serde_json::Value) -> Result<RolloutParams> {
        let layer = snapstage::job::params::Layer {
            source: "UserParameters",
            values: v.as_object().cloned().unwrap(),
        };
        let p: RolloutParams = snapstage::job::params::merge(&[layer])?;
        p.validate()?;
        Ok(p)
    }

    #[test]
    fn a_release_needs_a_group_and_an_image() {
        let p = parse(
            serde_json::json!({"autoScalingGroupName": "web", "imageId": "ami-0123456789abcdef0"}),
        )
        .unwrap();
        assert!(p.skip_matching && p.auto_rollback);
        assert_eq!(p.max_unhealthy_percent, 0);
        let e = parse(serde_json::json!({"autoScalingGroupName": "web"})).unwrap_err();
        assert!(e.to_string().starts_with("imageId: missing"), "{e}");
        let e = parse(
            serde_json::json!({"autoScalingGroupName": "web", "imageId": "#{Build.ImageId}"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("expected an AMI id"), "{e}");
        let e = parse(serde_json::json!({"imageId": "ami-12345678"})).unwrap_err();
        assert!(e.to_string().contains("autoScalingGroupName"), "{e}");
        let e = parse(serde_json::json!({"autoScalingGroupName": "web", "imageId": "ami-12345678", "bogus": 1}))
            .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn rollback_requests_name_a_version_or_previous() {
        let p = parse(serde_json::json!({"autoScalingGroupName": "web", "rollback": {"toVersion": "previous"}}))
            .unwrap();
        assert_eq!(p.rollback.unwrap().to_version, ToVersion::Previous);
        for v in [serde_json::json!(3), serde_json::json!("3")] {
            let p = parse(
                serde_json::json!({"autoScalingGroupName": "web", "rollback": {"toVersion": v}}),
            )
            .unwrap();
            assert_eq!(p.rollback.unwrap().to_version, ToVersion::Number(3));
        }
        for bad in [
            serde_json::json!(0),
            serde_json::json!("latest"),
            serde_json::json!(1.5),
        ] {
            let e = parse(
                serde_json::json!({"autoScalingGroupName": "web", "rollback": {"toVersion": bad}}),
            )
            .unwrap_err();
            assert!(e.to_string().contains("rollback.toVersion"), "{e}");
        }
        let e = parse(
            serde_json::json!({"autoScalingGroupName": "web", "imageId": "ami-12345678",
            "rollback": {"toVersion": 2}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("remove imageId"), "{e}");
    }

    #[test]
    fn refresh_preferences_are_checked_against_the_api_limits() {
        let base = serde_json::json!({"autoScalingGroupName": "web", "imageId": "ami-12345678"});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            parse(b)
        };
        assert!(with("minHealthyPercentage", serde_json::json!(101)).is_err());
        assert!(with("maxHealthyPercentage", serde_json::json!(99)).is_err());
        assert!(with("checkpointPercentages", serde_json::json!([50, 20])).is_err());
        assert!(with("checkpointPercentages", serde_json::json!([20, 50, 100])).is_ok());
        assert!(with("checkpointDelay", serde_json::json!(60)).is_err());
        assert!(with("maxUnhealthyPercent", serde_json::json!(101)).is_err());
        assert!(with("alarms", serde_json::json!([""])).is_err());
        assert!(with("launchTemplate", serde_json::json!({"id": "x"})).is_err());
        assert!(with("launchTemplate", serde_json::json!({"name": "web"})).is_ok());
    }

    #[test]
    fn the_allow_list_refuses_what_it_does_not_name() {
        let a = AllowList::parse(Some("web-prod, api-*"));
        assert!(a.allows("web-prod"));
        assert!(a.allows("api-blue"));
        assert!(!a.allows("web-prod-2"));
        assert!(!a.allows("db"));
        let e = a.check("db").unwrap_err();
        assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
        assert!(e.to_string().contains(ALLOWED_GROUPS_ENV), "{e}");
        let none = AllowList::parse(None);
        assert!(!none.allows("web-prod"));
        assert!(
            none.check("web")
                .unwrap_err()
                .to_string()
                .contains("is not set")
        );
        // A lone "*" is not a way to allow everything.
        assert!(!AllowList::parse(Some("*")).allows("web"));
    }

    #[test]
    fn image_ids() {
        assert!(is_image_id("ami-12345678"));
        assert!(is_image_id("ami-0123456789abcdef0"));
        assert!(!is_image_id("ami-123"));
        assert!(!is_image_id("snap-12345678"));
    }
}
