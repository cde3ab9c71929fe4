//! The step logic against an in-memory backend whose snapshots and volumes take a few polls to
//! become ready, fail on request, and count what is created.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::error::{Error, Result};
use crate::job::contract::{Deadline, Execution, Outcome, Step};
use crate::storage::hooks::Hooks;
use crate::storage::{
    Backend, BackendKind, Retention, SnapshotInfo, SnapshotState, VolumeInfo, VolumeSpec,
    VolumeState,
};

#[derive(Default)]
struct Slow {
    polls_to_ready: u32,
    fail_snapshots: bool,
    /// Snapshot ids that snapstage did not make (never listed as managed, never deleted).
    foreign: Vec<String>,
    snapshots: Mutex<Vec<(SnapshotInfo, String, u32)>>, // info, execution, polls
    volumes: Mutex<Vec<(VolumeInfo, String, u32)>>,
}

impl Backend for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn retention(&self) -> Option<&dyn Retention> {
        Some(self)
    }
    async fn describe_source(&self, _source: &str) -> Result<Option<i64>> {
        Ok(Some(20))
    }
    async fn find_snapshot(&self, source: &str, ex: &Execution) -> Result<Option<SnapshotInfo>> {
        let s = self.snapshots.lock().unwrap();
        Ok(s.iter()
            .find(|(i, e, _)| i.source == source && *e == ex.key)
            .map(|(i, _, _)| i.clone()))
    }
    async fn create_snapshot(
        &self,
        source: &str,
        ex: &Execution,
        _d: &str,
    ) -> Result<SnapshotInfo> {
        let mut s = self.snapshots.lock().unwrap();
        let info = SnapshotInfo {
            id: format!("snap-{:04x}", s.len()),
            source: source.into(),
            state: SnapshotState::Pending { percent: 0 },
            started: Some("2026-11-21T00:00:00Z".into()),
            size_gib: Some(20),
        };
        s.push((info.clone(), ex.key.clone(), 0));
        Ok(info)
    }
    async fn snapshot(&self, id: &str) -> Result<SnapshotInfo> {
        let mut s = self.snapshots.lock().unwrap();
        let Some((info, _, polls)) = s.iter_mut().find(|(i, _, _)| i.id == id) else {
            return Err(Error::NotFound {
                backend: "slow",
                message: id.into(),
                source: None,
            });
        };
        *polls += 1;
        info.state = if self.fail_snapshots {
            SnapshotState::Failed("disk on fire".into())
        } else if *polls >= self.polls_to_ready {
            SnapshotState::Ready
        } else {
            SnapshotState::Pending {
                percent: u8::try_from(*polls * 100 / self.polls_to_ready).unwrap_or(99),
            }
        };
        Ok(info.clone())
    }
    async fn newest_snapshot(&self, source: &str) -> Result<Option<SnapshotInfo>> {
        let s = self.snapshots.lock().unwrap();
        Ok(s.iter()
            .rev()
            .find(|(i, _, _)| i.source == source && i.state == SnapshotState::Ready)
            .map(|(i, _, _)| i.clone()))
    }
    async fn find_volume(&self, ex: &Execution) -> Result<Option<VolumeInfo>> {
        let v = self.volumes.lock().unwrap();
        Ok(v.iter()
            .find(|(_, e, _)| *e == ex.key)
            .map(|(i, _, _)| i.clone()))
    }
    async fn create_volume(
        &self,
        snap: &SnapshotInfo,
        spec: &VolumeSpec,
        ex: &Execution,
    ) -> Result<VolumeInfo> {
        let mut v = self.volumes.lock().unwrap();
        let info = VolumeInfo {
            id: format!("vol-{:04x}", 0xf000 + v.len()),
            state: VolumeState::Creating,
            zone: Some(spec.zone.clone()),
            snapshot: Some(snap.id.clone()),
            size_gib: Some(20),
            tags: vec![("snapstage:role".into(), "staging".into())],
        };
        v.push((info.clone(), ex.key.clone(), 0));
        Ok(info)
    }
    fn check_source(&self, field: &str, source: &str) -> Result<()> {
        crate::storage::check_id(field, source, "vol-")
    }
    fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()> {
        crate::storage::check_id(field, id, "snap-")
    }
    async fn volume(&self, id: &str) -> Result<VolumeInfo> {
        let mut v = self.volumes.lock().unwrap();
        let Some((info, _, polls)) = v.iter_mut().find(|(i, _, _)| i.id == id) else {
            return Err(Error::NotFound {
                backend: "slow",
                message: id.into(),
                source: None,
            });
        };
        *polls += 1;
        if *polls >= self.polls_to_ready {
            info.state = VolumeState::Available;
        }
        Ok(info.clone())
    }
}

impl Retention for Slow {
    fn managed_snapshots<'a>(
        &'a self,
        source: &'a str,
    ) -> crate::interlock::BoxFuture<'a, Result<Vec<SnapshotInfo>>> {
        Box::pin(async move {
            let s = self.snapshots.lock().unwrap();
            Ok(s.iter()
                .rev()
                .filter(|(i, _, _)| i.source == source && !self.foreign.contains(&i.id))
                .map(|(i, _, _)| i.clone())
                .collect())
        })
    }

    fn delete_snapshot<'a>(&'a self, id: &'a str) -> crate::interlock::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.foreign.iter().any(|f| f == id) {
                return Err(Error::Refused(format!("{id} is not snapstage's")));
            }
            self.snapshots
                .lock()
                .unwrap()
                .retain(|(i, _, _)| i.id != id);
            Ok(())
        })
    }
}

fn step<P>(params: P, key: &str, state: Option<Value>) -> Step<P> {
    Step {
        params,
        execution: Execution {
            key: key.into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        },
        state,
        deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(60)),
        artifacts: None,
    }
}

fn snap_params(vols: &[&str]) -> SnapshotParams {
    SnapshotParams {
        volume_ids: vols.iter().map(|s| s.to_string()).collect(),
        selector: None,
        backend: BackendKind::Ebs,
        flasharray: None,
        csi: None,
        hooks: None,
        description: None,
        copy_to: None,
        retain: None,
        consistent_group: None,
        dry_run: false,
    }
}

/// Runs steps until done, feeding each Continue's state into the next; returns outcomes.
async fn drive<P: Clone>(
    f: impl AsyncFn(Step<P>) -> Result<Outcome>,
    params: P,
    key: &str,
) -> Result<Vec<Outcome>> {
    let mut state = None;
    let mut seen = vec![];
    for _ in 0..20 {
        let o = f(step(params.clone(), key, state.take())).await?;
        seen.push(o.clone());
        match o {
            Outcome::Continue { state: s, .. } => state = Some(s),
            Outcome::Done { .. } => return Ok(seen),
        }
    }
    panic!("did not finish in 20 steps")
}

#[tokio::test]
async fn pending_snapshots_continue_with_progress_then_finish() {
    let b = Slow {
        polls_to_ready: 3,
        ..Default::default()
    };
    let seen = drive(
        |s| snapshot_step(&b, s),
        snap_params(&["vol-01", "vol-02"]),
        "run-1",
    )
    .await
    .unwrap();
    assert_eq!(seen.len(), 3);
    assert!(
        matches!(&seen[0], Outcome::Continue { percent: 33, .. }),
        "{:?}",
        seen[0]
    );
    let Outcome::Done { outputs, .. } = &seen[2] else {
        panic!()
    };
    assert_eq!(outputs["SnapshotIds"], "snap-0000,snap-0001");
    assert_eq!(
        b.snapshots.lock().unwrap().len(),
        2,
        "one snapshot per volume, none created while waiting"
    );
}

#[tokio::test]
async fn a_repeated_run_reuses_its_snapshots_a_new_run_makes_new_ones() {
    let b = Slow {
        polls_to_ready: 1,
        ..Default::default()
    };
    for _ in 0..3 {
        drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-1")
            .await
            .unwrap();
    }
    assert_eq!(b.snapshots.lock().unwrap().len(), 1);
    drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-2")
        .await
        .unwrap();
    assert_eq!(b.snapshots.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_failed_snapshot_fails_the_step_naming_it() {
    let b = Slow {
        polls_to_ready: 1,
        fail_snapshots: true,
        ..Default::default()
    };
    let e = drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-1")
        .await
        .unwrap_err();
    assert_eq!(e.failure_kind(), crate::error::FailureKind::JobFailed);
    assert!(
        e.to_string().contains("snap-0000") && e.to_string().contains("disk on fire"),
        "{e}"
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_and_never_touches_foreign_snapshots() {
    let mut b = Slow {
        polls_to_ready: 1,
        ..Default::default()
    };
    for run in ["run-1", "run-2", "run-3"] {
        drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), run)
            .await
            .unwrap();
    }
    // snap-0000 is marked as made by someone else: retention must leave it alone.
    b.foreign = vec!["snap-0000".into()];
    let mut p = snap_params(&["vol-01"]);
    p.retain = Some(2);
    let seen = drive(|s| snapshot_step(&b, s), p.clone(), "run-4")
        .await
        .unwrap();
    let Outcome::Done { outputs, summary } = seen.last().unwrap() else {
        panic!()
    };
    assert_eq!(outputs["SnapshotsDeleted"], "1", "{summary}");
    let left: Vec<String> = b
        .snapshots
        .lock()
        .unwrap()
        .iter()
        .map(|(i, _, _)| i.id.clone())
        .collect();
    // run-4's (snap-0003) and run-3's (snap-0002) kept; run-2's deleted; foreign kept.
    assert_eq!(left, ["snap-0000", "snap-0002", "snap-0003"]);
    // A retry of the same run deletes nothing more.
    let seen = drive(|s| snapshot_step(&b, s), p, "run-4").await.unwrap();
    let Outcome::Done { outputs, .. } = seen.last().unwrap() else {
        panic!()
    };
    assert_eq!(outputs["SnapshotsDeleted"], "0");
    assert_eq!(b.snapshots.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_selector_on_a_backend_without_labels_is_refused_clearly() {
    let b = Slow::default();
    let mut p = snap_params(&[]);
    p.selector = Some("app=db".into());
    let e = drive(|s| snapshot_step(&b, s), p, "run-1")
        .await
        .unwrap_err();
    assert_eq!(
        e.failure_kind(),
        crate::error::FailureKind::ConfigurationError
    );
    assert!(
        e.to_string().starts_with("selector: backend \"slow\""),
        "{e}"
    );
    assert!(b.snapshots.lock().unwrap().is_empty());
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let b = Slow::default();
    let mut p = snap_params(&["vol-01"]);
    p.dry_run = true;
    let seen = drive(|s| snapshot_step(&b, s), p, "run-1").await.unwrap();
    let Outcome::Done { outputs, .. } = &seen[0] else {
        panic!()
    };
    assert_eq!(outputs["DryRun"], "true");
    assert!(b.snapshots.lock().unwrap().is_empty());
}

#[tokio::test]
async fn several_volumes_cut_one_by_one_say_so_and_consistent_group_refuses_them() {
    let b = Slow {
        polls_to_ready: 1,
        ..Default::default()
    };
    let seen = drive(
        |s| snapshot_step(&b, s),
        snap_params(&["vol-01", "vol-02"]),
        "run-1",
    )
    .await
    .unwrap();
    let Outcome::Done { outputs, summary } = seen.last().unwrap() else {
        panic!()
    };
    assert_eq!(outputs["PointInTime"], "per-volume");
    assert!(summary.contains("NOT one point in time"), "{summary}");

    let mut p = snap_params(&["vol-03", "vol-04"]);
    p.consistent_group = Some(true);
    let e = drive(|s| snapshot_step(&b, s), p, "run-2")
        .await
        .unwrap_err();
    assert_eq!(
        e.failure_kind(),
        crate::error::FailureKind::ConfigurationError
    );
    assert!(e.to_string().starts_with("consistentGroup: "), "{e}");
    assert_eq!(b.snapshots.lock().unwrap().len(), 2, "nothing more made");

    let seen = drive(|s| snapshot_step(&b, s), snap_params(&["vol-05"]), "run-3")
        .await
        .unwrap();
    let Outcome::Done { outputs, .. } = seen.last().unwrap() else {
        panic!()
    };
    assert_eq!(outputs["PointInTime"], "single");
}

#[test]
fn consistent_group_names_the_way_each_backend_cuts_a_group() {
    let parse = |v: serde_json::Value| serde_json::from_value::<SnapshotParams>(v).unwrap();
    let fa = serde_json::json!({"endpoint": "https://fa", "apiTokenSecret": "s"});
    let e = parse(
        serde_json::json!({"backend": "flasharray", "flasharray": fa,
        "volumeIds": ["a", "b"], "consistentGroup": true}),
    )
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("flasharray.protectionGroup"), "{e}");
    let mut with_pg = fa.clone();
    with_pg["protectionGroup"] = "pg-orders".into();
    parse(
        serde_json::json!({"backend": "flasharray", "flasharray": with_pg,
        "consistentGroup": true}),
    )
    .validate()
    .unwrap();
    let e = parse(
        serde_json::json!({"backend": "flasharray", "flasharray": with_pg,
        "consistentGroup": false}),
    )
    .validate()
    .unwrap_err();
    assert!(e.to_string().starts_with("consistentGroup: false"), "{e}");
    parse(serde_json::json!({"volumeIds": ["vol-01", "vol-02"], "consistentGroup": true}))
        .validate()
        .unwrap();
}

fn hooked(vols: &[&str]) -> SnapshotParams {
    let mut p = snap_params(vols);
    p.hooks = Some(
        serde_json::from_value(serde_json::json!({"pod": "db-0", "namespace": "prod",
            "cluster": "inCluster", "pre": ["fsfreeze", "-f", "/data"],
            "post": ["fsfreeze", "-u", "/data"]}))
        .unwrap(),
    );
    p
}

#[tokio::test]
async fn hooks_run_once_around_creation_never_while_pending() {
    use crate::storage::hooks::exec_server::{ExecServer, Script};
    let server =
        ExecServer::start("v5.channel.k8s.io", vec![Script::Exit(0), Script::Exit(0)]).await;
    let b = Slow {
        polls_to_ready: 3,
        ..Default::default()
    };
    let p = hooked(&["vol-01", "vol-02"]);
    let h = Hooks::new(server.client(), "prod".into(), p.hooks.clone().unwrap());
    let seen = drive(
        |s| snapshot_step_with_hooks(&b, needs_hooks(&s).then_some(&h), s),
        p,
        "run-1",
    )
    .await
    .unwrap();
    assert_eq!(seen.len(), 3, "two pending invocations, then done");
    let execs = server.seen();
    assert_eq!(execs.len(), 2, "pre and post once: {execs:#?}");
    assert!(execs[0].ends_with("command=fsfreeze&command=-f&command=%2Fdata"));
    assert!(execs[1].ends_with("command=fsfreeze&command=-u&command=%2Fdata"));
    let Outcome::Continue { state, .. } = &seen[0] else {
        panic!()
    };
    assert_eq!(state["hooks"], true);
    let Outcome::Done { outputs, summary } = &seen[2] else {
        panic!()
    };
    assert_eq!(outputs["AppConsistent"], "true");
    assert!(summary.contains("app-consistent"), "{summary}");
    assert_eq!(b.snapshots.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_failing_pre_hook_creates_no_snapshot_and_still_runs_post() {
    use crate::storage::hooks::exec_server::{ExecServer, Script};
    let server =
        ExecServer::start("v4.channel.k8s.io", vec![Script::Exit(1), Script::Exit(0)]).await;
    let b = Slow::default();
    let p = hooked(&["vol-01"]);
    let h = Hooks::new(server.client(), "prod".into(), p.hooks.clone().unwrap());
    let e = drive(
        |s| snapshot_step_with_hooks(&b, needs_hooks(&s).then_some(&h), s),
        p,
        "run-1",
    )
    .await
    .unwrap_err();
    assert_eq!(e.failure_kind(), crate::error::FailureKind::JobFailed);
    assert!(e.to_string().contains("no snapshot was taken"), "{e}");
    assert!(b.snapshots.lock().unwrap().is_empty());
    assert_eq!(server.seen().len(), 2, "post ran after the failed pre");
}

#[tokio::test]
async fn hooks_configured_but_not_opened_is_an_error_not_a_silent_crash_consistent_snapshot() {
    let b = Slow::default();
    let e = drive(|s| snapshot_step(&b, s), hooked(&["vol-01"]), "run-1")
        .await
        .unwrap_err();
    assert_eq!(e.failure_kind(), crate::error::FailureKind::JobFailed);
    assert!(b.snapshots.lock().unwrap().is_empty());
}

fn restore_params(snapshot: Option<&str>, source: Option<&str>) -> RestoreParams {
    RestoreParams {
        snapshot_id: snapshot.map(String::from),
        source_volume_id: source.map(String::from),
        availability_zone: Some("us-east-1a".into()),
        volume_type: None,
        backend: BackendKind::Ebs,
        flasharray: None,
        csi: None,
        targets: None,
        overwrite: false,
        dry_run: false,
    }
}

#[tokio::test]
async fn restore_waits_for_the_volume_and_reuses_it_on_retry() {
    let b = Slow {
        polls_to_ready: 2,
        ..Default::default()
    };
    drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-1")
        .await
        .unwrap();
    let seen = drive(
        |s| restore_step(&b, s),
        restore_params(None, Some("vol-01")),
        "run-1",
    )
    .await
    .unwrap();
    assert!(matches!(seen[0], Outcome::Continue { .. }));
    let Outcome::Done { outputs, .. } = seen.last().unwrap() else {
        panic!()
    };
    assert_eq!(outputs["SnapshotId"], "snap-0000");
    let vol = outputs["VolumeId"].clone();
    drive(
        |s| restore_step(&b, s),
        restore_params(None, Some("vol-01")),
        "run-1",
    )
    .await
    .unwrap();
    assert_eq!(b.volumes.lock().unwrap().len(), 1, "a retry reuses {vol}");
}

#[tokio::test]
async fn restore_without_any_snapshot_says_what_to_do() {
    let b = Slow::default();
    let e = drive(
        |s| restore_step(&b, s),
        restore_params(None, Some("vol-01")),
        "r",
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("run snapshot-production first"),
        "{e}"
    );
    let e = drive(
        |s| restore_step(&b, s),
        restore_params(Some("snap-0bad"), None),
        "r",
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("snapshotId: snap-0bad does not exist"),
        "{e}"
    );
}

#[tokio::test]
async fn restore_refuses_a_volume_tagged_production() {
    let b = Slow {
        polls_to_ready: 1,
        ..Default::default()
    };
    drive(|s| snapshot_step(&b, s), snap_params(&["vol-01"]), "run-1")
        .await
        .unwrap();
    drive(
        |s| restore_step(&b, s),
        restore_params(Some("snap-0000"), None),
        "run-1",
    )
    .await
    .unwrap();
    b.volumes.lock().unwrap()[0]
        .0
        .tags
        .push(("Environment".into(), "Production".into()));
    let e = drive(
        |s| restore_step(&b, s),
        restore_params(Some("snap-0000"), None),
        "run-1",
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.failure_kind(),
        crate::error::FailureKind::ConfigurationError
    );
    assert!(e.to_string().contains("tagged as production"), "{e}");
}

#[tokio::test]
async fn targets_on_a_backend_that_cannot_name_volumes_is_a_configuration_error() {
    let b = Slow::default();
    let mut p = restore_params(None, None);
    p.targets = Some(vec![RestoreTarget {
        source_volume_id: "vol-01".into(),
        name: "ci-home".into(),
        output: None,
    }]);
    let e = drive(|s| restore_step(&b, s), p, "r").await.unwrap_err();
    assert_eq!(
        e.failure_kind(),
        crate::error::FailureKind::ConfigurationError
    );
    assert!(
        e.to_string().starts_with(
            "targets: backend \"slow\" cannot restore several volumes to chosen names"
        ),
        "{e}"
    );
    assert!(b.volumes.lock().unwrap().is_empty());
}
