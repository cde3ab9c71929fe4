//! The step over an in-memory fleet: what a user of the pipeline would see (the job's result,
//! what changed in the group) for each path of a release and a rollback request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use serde_json::json;
use snapstage::{Deadline, Execution, FailureKind, Outcome, Step};

use super::*;
use crate::fleet::{AlarmState, GroupInstance, Image, TargetState};

const LT: &str = "lt-0123456789abcdef0";
const OLD: &str = "ami-11111111";
const NEW: &str = "ami-22222222";
const TG: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123";

#[derive(Debug, Default)]
struct World {
    group: Option<Group>,
    versions: Vec<TemplateVersion>,
    images: Vec<Image>,
    refreshes: Vec<Refresh>,
    requests: Vec<RefreshRequest>,
    targets: Vec<TargetState>,
    alarms: Vec<AlarmState>,
    calls: Vec<String>,
}

#[derive(Debug, Default)]
struct Fake(Mutex<World>);

impl Fake {
    fn w(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    /// A group of `n` instances on version 1 (image OLD), all healthy in one target group.
    fn new(n: usize) -> Self {
        let f = Fake::default();
        {
            let mut w = f.w();
            w.versions.push(TemplateVersion {
                template_id: LT.into(),
                template_name: "web".into(),
                number: 1,
                image_id: Some(OLD.into()),
                description: None,
                is_default: true,
            });
            w.images = vec![
                Image {
                    id: OLD.into(),
                    state: "available".into(),
                },
                Image {
                    id: NEW.into(),
                    state: "available".into(),
                },
            ];
            let instances: Vec<GroupInstance> = (0..n)
                .map(|i| GroupInstance {
                    id: format!("i-old{i}"),
                    version: Some("1".into()),
                    lifecycle: "InService".into(),
                    health: "Healthy".into(),
                })
                .collect();
            w.targets = instances
                .iter()
                .map(|i| TargetState {
                    target_group: TG.into(),
                    id: i.id.clone(),
                    state: "healthy".into(),
                    reason: None,
                    description: None,
                })
                .collect();
            w.group = Some(Group {
                name: "web-prod".into(),
                template: Some(TemplateRef {
                    id: LT.into(),
                    name: "web".into(),
                    version: "1".into(),
                }),
                mixed_instances: false,
                desired_capacity: n as i32,
                instances,
                target_groups: vec![TG.into()],
            });
        }
        f
    }

    /// Replaces every instance with one on `version`, its target in `state`.
    fn replace_all(&self, version: i64, state: &str) {
        let mut w = self.w();
        let n = w.group.as_ref().unwrap().instances.len();
        let instances: Vec<GroupInstance> = (0..n)
            .map(|i| GroupInstance {
                id: format!("i-v{version}-{i}"),
                version: Some(version.to_string()),
                lifecycle: "InService".into(),
                health: "Healthy".into(),
            })
            .collect();
        w.targets = instances
            .iter()
            .map(|i| TargetState {
                target_group: TG.into(),
                id: i.id.clone(),
                state: state.into(),
                reason: (state == "unhealthy").then(|| "Target.FailedHealthChecks".into()),
                description: None,
            })
            .collect();
        w.group.as_mut().unwrap().instances = instances;
    }

    fn set_status(&self, status: &str) {
        let mut w = self.w();
        let r = w.refreshes.first_mut().unwrap();
        r.status = status.into();
        if status == "Successful" {
            let v = r.desired_version.clone().unwrap();
            w.group.as_mut().unwrap().template.as_mut().unwrap().version = v;
        }
    }

    fn calls(&self, prefix: &str) -> usize {
        self.w()
            .calls
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }
}

impl Fleet for Fake {
    async fn group(&self, name: &str) -> Result<Option<Group>> {
        let w = self.w();
        Ok(w.group.clone().filter(|g| g.name == name))
    }
    async fn versions(
        &self,
        template_id: &str,
        versions: &[String],
    ) -> Result<Vec<TemplateVersion>> {
        let w = self.w();
        let latest = w.versions.iter().map(|v| v.number).max().unwrap_or(0);
        Ok(versions
            .iter()
            .filter_map(|want| {
                let n = match want.as_str() {
                    "$Latest" => latest,
                    "$Default" => 1,
                    s => s.parse().ok()?,
                };
                w.versions
                    .iter()
                    .find(|v| v.template_id == template_id && v.number == n)
                    .cloned()
            })
            .collect())
    }
    async fn find_version(&self, _: &str, marker: &str) -> Result<Option<TemplateVersion>> {
        let w = self.w();
        Ok(w.versions
            .iter()
            .rev()
            .find(|v| v.description.as_deref().is_some_and(|d| d.contains(marker)))
            .cloned())
    }
    async fn create_version(
        &self,
        template_id: &str,
        source: i64,
        image_id: &str,
        description: &str,
    ) -> Result<TemplateVersion> {
        let mut w = self.w();
        w.calls
            .push(format!("CreateLaunchTemplateVersion from {source}"));
        let v = TemplateVersion {
            template_id: template_id.into(),
            template_name: "web".into(),
            number: w.versions.len() as i64 + 1,
            image_id: Some(image_id.into()),
            description: Some(description.into()),
            is_default: false,
        };
        w.versions.push(v.clone());
        Ok(v)
    }
    async fn image(&self, image_id: &str) -> Result<Option<Image>> {
        Ok(self.w().images.iter().find(|i| i.id == image_id).cloned())
    }
    async fn refreshes(&self, _: &str, ids: &[String]) -> Result<Vec<Refresh>> {
        let w = self.w();
        Ok(w.refreshes
            .iter()
            .filter(|r| ids.is_empty() || ids.contains(&r.id))
            .cloned()
            .collect())
    }
    async fn start_refresh(&self, r: &RefreshRequest) -> Result<Started> {
        let mut w = self.w();
        w.calls
            .push(format!("StartInstanceRefresh to {}", r.version));
        if w.refreshes.iter().any(Refresh::is_active) {
            return Ok(Started::AlreadyInProgress {
                message: "An Instance Refresh is already in progress".into(),
            });
        }
        let id = format!("ir-{}", w.refreshes.len() + 1);
        w.refreshes.insert(
            0,
            Refresh {
                id: id.clone(),
                status: "Pending".into(),
                desired_template: Some(r.template_id.clone()),
                desired_version: Some(r.version.to_string()),
                ..Refresh::default()
            },
        );
        w.requests.push(r.clone());
        Ok(Started::Started { id })
    }
    async fn rollback_refresh(&self, _: &str) -> Result<RolledBack> {
        let mut w = self.w();
        w.calls.push("RollbackInstanceRefresh".into());
        match w.refreshes.iter_mut().find(|r| r.can_roll_back()) {
            Some(r) => {
                r.status = "RollbackInProgress".into();
                Ok(RolledBack::RollingBack { id: r.id.clone() })
            }
            None => Ok(RolledBack::Impossible {
                code: "ActiveInstanceRefreshNotFound".into(),
                message: "none".into(),
            }),
        }
    }
    async fn set_group_version(&self, _: &str, _: &str, version: i64) -> Result<()> {
        let mut w = self.w();
        w.calls.push(format!("UpdateAutoScalingGroup to {version}"));
        w.group.as_mut().unwrap().template.as_mut().unwrap().version = version.to_string();
        Ok(())
    }
    async fn target_health(&self, tg: &str) -> Result<Vec<TargetState>> {
        Ok(self
            .w()
            .targets
            .iter()
            .filter(|t| t.target_group == tg)
            .cloned()
            .collect())
    }
    async fn alarms(&self, names: &[String]) -> Result<Vec<AlarmState>> {
        Ok(self
            .w()
            .alarms
            .iter()
            .filter(|a| names.contains(&a.name))
            .cloned()
            .collect())
    }
}

fn allow() -> AllowList {
    AllowList::parse(Some("web-prod"))
}

fn params(v: serde_json::Value) -> RolloutParams {
    let mut base = json!({"autoScalingGroupName": "web-prod"});
    for (k, val) in v.as_object().unwrap() {
        base[k] = val.clone();
    }
    serde_json::from_value(base).unwrap()
}

fn release() -> RolloutParams {
    params(json!({"imageId": NEW}))
}

fn mk_step(p: RolloutParams, state: Option<Value>) -> Step<RolloutParams> {
    Step {
        params: p,
        execution: Execution {
            key: "shop/3f2a1b4c-exec/Release".into(),
            origin: "codepipeline".into(),
            pipeline: Some("shop".into()),
            commit: None,
        },
        state,
        deadline: Deadline(tokio::time::Instant::now() + std::time::Duration::from_secs(60)),
        artifacts: None,
    }
}

async fn run(f: &Fake, p: RolloutParams, state: Option<Value>) -> Result<Outcome> {
    step(f, &allow(), mk_step(p, state)).await
}

fn cont(o: Result<Outcome>) -> Value {
    match o {
        Ok(Outcome::Continue { state, .. }) => state,
        other => panic!("expected InProgress, got {other:?}"),
    }
}

fn done(o: Result<Outcome>) -> BTreeMap<String, String> {
    match o {
        Ok(Outcome::Done { outputs, .. }) => outputs,
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test]
async fn a_release_creates_a_version_refreshes_onto_it_and_succeeds_once_healthy() {
    let f = Fake::new(3);
    let s = cont(run(&f, release(), None).await);
    {
        let w = f.w();
        assert_eq!(w.versions.len(), 2);
        assert_eq!(w.versions[1].image_id.as_deref(), Some(NEW));
        assert_eq!(w.requests.len(), 1);
        let r = &w.requests[0];
        assert_eq!(
            (
                r.version,
                r.min_healthy_percentage,
                r.skip_matching,
                r.auto_rollback
            ),
            (2, Some(90), true, true)
        );
    }
    f.w().refreshes[0].status = "InProgress".into();
    f.w().refreshes[0].percentage_complete = Some(40);
    let o = run(&f, release(), Some(s.clone())).await;
    assert!(
        matches!(o, Ok(Outcome::Continue { percent: 40, .. })),
        "{o:?}"
    );
    f.replace_all(2, "healthy");
    f.set_status("Successful");
    let out = done(run(&f, release(), Some(s)).await);
    assert_eq!(out["LaunchTemplateVersion"], "2");
    assert_eq!(out["PreviousLaunchTemplateVersion"], "1");
    assert_eq!(out["InstanceRefreshId"], "ir-1");
    assert_eq!(out["Status"], "Successful");
    assert_eq!(out["RolledBack"], "false");
    assert_eq!(out["ImageId"], NEW);
    assert_eq!(f.calls("RollbackInstanceRefresh"), 0);
}

#[tokio::test]
async fn a_duplicate_invocation_starts_no_second_refresh_and_no_second_version() {
    let f = Fake::new(2);
    cont(run(&f, release(), None).await);
    cont(run(&f, release(), None).await);
    assert_eq!(f.calls("CreateLaunchTemplateVersion"), 1);
    assert_eq!(f.calls("StartInstanceRefresh"), 1);
    // Even once the refresh is over, a retry follows it instead of starting another.
    f.replace_all(2, "healthy");
    f.set_status("Successful");
    let out = done(run(&f, release(), None).await);
    assert_eq!(out["InstanceRefreshId"], "ir-1");
    assert_eq!(f.calls("StartInstanceRefresh"), 1);
}

#[tokio::test]
async fn unhealthy_new_targets_roll_the_release_back_and_fail_the_job() {
    let f = Fake::new(2);
    let s = cont(run(&f, release(), None).await);
    f.set_status("InProgress");
    f.replace_all(2, "unhealthy");
    let s = cont(run(&f, release(), Some(s)).await);
    assert_eq!(f.calls("RollbackInstanceRefresh"), 1);
    f.set_status("RollbackSuccessful");
    f.replace_all(1, "healthy");
    let e = run(&f, release(), Some(s)).await.unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::JobFailed);
    let m = e.to_string();
    assert!(
        m.contains("health gate")
            && m.contains("rolled back")
            && m.contains("Target.FailedHealthChecks"),
        "{m}"
    );
    assert!(m.contains("version 1 again"), "{m}");
}

#[tokio::test]
async fn unhealthy_targets_within_the_threshold_do_not_stop_the_release() {
    let f = Fake::new(4);
    let p = params(json!({"imageId": NEW, "maxUnhealthyPercent": 25}));
    let s = cont(run(&f, p.clone(), None).await);
    f.set_status("InProgress");
    f.replace_all(2, "healthy");
    f.w().targets[0].state = "unhealthy".into();
    cont(run(&f, p, Some(s)).await);
    assert_eq!(f.calls("RollbackInstanceRefresh"), 0);
}

#[tokio::test]
async fn an_alarm_in_alarm_rolls_the_release_back() {
    let f = Fake::new(2);
    f.w().alarms.push(AlarmState {
        name: "web-5xx".into(),
        state: "OK".into(),
        reason: None,
    });
    let p = params(json!({"imageId": NEW, "alarms": ["web-5xx"]}));
    let s = cont(run(&f, p.clone(), None).await);
    assert_eq!(f.w().requests[0].alarms, vec!["web-5xx".to_string()]);
    f.set_status("InProgress");
    f.w().alarms[0].state = "ALARM".into();
    let s = cont(run(&f, p.clone(), Some(s)).await);
    assert_eq!(f.calls("RollbackInstanceRefresh"), 1);
    f.set_status("RollbackSuccessful");
    let e = run(&f, p, Some(s)).await.unwrap_err().to_string();
    assert!(e.contains("web-5xx") && e.contains("rolled back"), "{e}");
}

#[tokio::test]
async fn an_unknown_alarm_is_a_configuration_error_before_anything_changes() {
    let f = Fake::new(2);
    let e = run(
        &f,
        params(json!({"imageId": NEW, "alarms": ["nope"]})),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    assert!(e.to_string().contains("alarms[0]"), "{e}");
    assert_eq!(f.w().versions.len(), 1);
}

#[tokio::test]
async fn a_refresh_that_auto_scaling_rolled_back_fails_the_job() {
    let f = Fake::new(2);
    let s = cont(run(&f, release(), None).await);
    {
        let mut w = f.w();
        let r = &mut w.refreshes[0];
        r.status = "RollbackSuccessful".into();
        r.rollback_reason = Some("Instance refresh failed: 2 instances failed to launch".into());
    }
    let e = run(&f, release(), Some(s)).await.unwrap_err().to_string();
    assert!(
        e.contains("rolled back") && e.contains("failed to launch"),
        "{e}"
    );
}

#[tokio::test]
async fn a_failed_refresh_without_auto_rollback_is_reverted_to_the_previous_version() {
    let f = Fake::new(2);
    let p = params(json!({"imageId": NEW, "autoRollback": false}));
    let s = cont(run(&f, p.clone(), None).await);
    f.replace_all(2, "healthy");
    f.set_status("Failed");
    let s = cont(run(&f, p.clone(), Some(s)).await);
    assert_eq!(f.calls("UpdateAutoScalingGroup to 1"), 1);
    assert_eq!(f.w().requests.last().unwrap().version, 1);
    f.replace_all(1, "healthy");
    f.set_status("Successful");
    let e = run(&f, p, Some(s)).await.unwrap_err().to_string();
    assert!(e.contains("reverted to launch template version 1"), "{e}");
}

#[tokio::test]
async fn targets_that_never_settle_after_success_revert_the_release() {
    let f = Fake::new(2);
    let p = params(json!({"imageId": NEW, "healthSettleChecks": 2}));
    let s = cont(run(&f, p.clone(), None).await);
    f.replace_all(2, "initial");
    f.set_status("Successful");
    let s = cont(run(&f, p.clone(), Some(s)).await);
    assert_eq!(f.calls("StartInstanceRefresh"), 1, "still waiting");
    cont(run(&f, p, Some(s)).await);
    assert_eq!(f.calls("UpdateAutoScalingGroup to 1"), 1);
    assert_eq!(f.w().refreshes[0].desired_version.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_group_outside_the_allow_list_is_refused_before_any_call() {
    let f = Fake::new(2);
    let e = step(
        &f,
        &AllowList::parse(Some("other")),
        mk_step(release(), None),
    )
    .await
    .unwrap_err();
    assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    assert!(e.to_string().contains("allow list"), "{e}");
    assert!(f.w().calls.is_empty());
}

#[tokio::test]
async fn plan_mode_says_what_would_change_and_changes_nothing() {
    let f = Fake::new(2);
    let o = run(&f, params(json!({"imageId": NEW, "dryRun": true})), None).await;
    let Ok(Outcome::Done { summary, outputs }) = o else {
        panic!("{o:?}")
    };
    assert!(
        summary.contains("plan") && summary.contains(NEW) && summary.contains("web-prod"),
        "{summary}"
    );
    assert_eq!(outputs["DryRun"], "true");
    assert!(f.w().calls.is_empty());
    assert_eq!(f.w().versions.len(), 1);
}

#[tokio::test]
async fn another_refresh_in_progress_starts_nothing() {
    let f = Fake::new(2);
    f.w().refreshes.push(Refresh {
        id: "ir-other".into(),
        status: "InProgress".into(),
        desired_template: Some(LT.into()),
        desired_version: Some("1".into()),
        ..Refresh::default()
    });
    let e = run(&f, release(), None).await.unwrap_err().to_string();
    assert!(
        e.contains("ir-other") && e.contains("started nothing"),
        "{e}"
    );
    assert_eq!(f.calls("StartInstanceRefresh"), 0);
}

#[tokio::test]
async fn a_group_already_on_the_image_has_nothing_to_roll_out() {
    let f = Fake::new(2);
    let out = done(run(&f, params(json!({"imageId": OLD})), None).await);
    assert_eq!(out["Status"], "AlreadyCurrent");
    assert!(f.w().calls.is_empty());
}

#[tokio::test]
async fn a_rollback_request_during_a_refresh_rolls_it_back() {
    let f = Fake::new(2);
    cont(run(&f, release(), None).await);
    f.set_status("InProgress");
    let rb = params(json!({"rollback": {"toVersion": "previous"}}));
    let s = cont(run(&f, rb.clone(), None).await);
    assert_eq!(f.calls("RollbackInstanceRefresh"), 1);
    f.set_status("RollbackSuccessful");
    let out = done(run(&f, rb, Some(s)).await);
    assert_eq!(out["RolledBack"], "true");
    assert_eq!(out["LaunchTemplateVersion"], "1");
    assert_eq!(out["Status"], "RollbackSuccessful");
}

#[tokio::test]
async fn a_rollback_request_after_a_release_refreshes_back_to_the_previous_version() {
    let f = Fake::new(2);
    let s = cont(run(&f, release(), None).await);
    f.replace_all(2, "healthy");
    f.set_status("Successful");
    done(run(&f, release(), Some(s)).await);
    let rb = params(json!({"rollback": {"toVersion": "previous"}}));
    let s = cont(run(&f, rb.clone(), None).await);
    assert_eq!(f.calls("UpdateAutoScalingGroup to 1"), 1);
    assert_eq!(f.w().requests.last().unwrap().version, 1);
    // A duplicate of the request follows the same refresh.
    cont(run(&f, rb.clone(), None).await);
    assert_eq!(f.calls("StartInstanceRefresh"), 2);
    f.replace_all(1, "healthy");
    f.set_status("Successful");
    let out = done(run(&f, rb.clone(), Some(s)).await);
    assert_eq!(out["RolledBack"], "true");
    assert_eq!(out["LaunchTemplateVersion"], "1");
    assert_eq!(out["PreviousLaunchTemplateVersion"], "2");
    // Asked again for that version: already there, nothing started.
    let again = params(json!({"rollback": {"toVersion": 1}}));
    assert_eq!(done(run(&f, again, None).await)["Status"], "AlreadyCurrent");
    assert_eq!(f.calls("StartInstanceRefresh"), 2);
    // "previous" of version 1 does not exist: a clear parameter error.
    let e = run(&f, rb, None).await.unwrap_err().to_string();
    assert!(e.contains("no previous version"), "{e}");
}

#[tokio::test]
async fn a_rollback_to_a_version_that_does_not_exist_names_the_parameter() {
    let f = Fake::new(2);
    let e = run(&f, params(json!({"rollback": {"toVersion": 9}})), None)
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("rollback.toVersion"), "{e}");
}

#[test]
fn the_state_fits_a_continuation_token() {
    let s = State {
        mode: Mode::Release,
        template_id: LT.into(),
        version: 12,
        previous: 11,
        image_id: Some("ami-0123456789abcdef0".into()),
        refresh_id: "08b91cf7-8fa6-48af-b6a6-d227f40f1b9b".into(),
        phase: Phase::Reverting {
            reason: "x".repeat(600),
            refresh_id: "08b91cf7-8fa6-48af-b6a6-d227f40f1b9b".into(),
        },
    };
    let c = snapstage::job::continuation::Continuation {
        function: "roll-out-release".into(),
        execution: "p".repeat(200),
        stalls: 0,
        state: serde_json::to_value(&s).unwrap(),
        started_ms: Some(1),
    };
    let token = c.encode().unwrap();
    let back =
        snapstage::job::continuation::Continuation::decode(&token, "roll-out-release").unwrap();
    assert_eq!(serde_json::from_value::<State>(back.state).unwrap(), s);
}
