use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn pod(status: Value) -> Pod {
    from(json!({"metadata": {"name": "staging-db-0"}, "status": status}))
}

fn waiting(reason: &str, message: &str) -> Value {
    json!({"name": "db", "image": "postgres:99", "imageID": "", "ready": false, "restartCount": 0,
           "state": {"waiting": {"reason": reason, "message": message}}})
}

fn failed(h: Health) -> String {
    match h {
        Health::Failed(m) => m,
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn wait(h: Health) -> String {
    match h {
        Health::Waiting(m) => m,
        other => panic!("expected Waiting, got {other:?}"),
    }
}

#[test]
fn claims() {
    let pvc = |phase: &str| -> PersistentVolumeClaim {
        from(
            json!({"metadata": {"name": "staging-db-data"}, "spec": {"volumeName": "pv-1"}, "status": {"phase": phase}}),
        )
    };
    assert_eq!(claim_health(&pvc("Bound")), Health::Ready);
    assert_eq!(
        wait(claim_health(&pvc("Pending"))),
        "PVC staging-db-data is Pending"
    );
    assert!(failed(claim_health(&pvc("Lost"))).contains("PersistentVolume pv-1 is gone"));
}

#[test]
fn stateful_sets_are_ready_only_when_current() {
    let sts = |generation: i64, status: Value| -> StatefulSet {
        from(
            json!({"metadata": {"name": "staging-db", "generation": generation},
                    "spec": {"replicas": 1, "selector": {}, "serviceName": "staging-db", "template": {}},
                    "status": status}),
        )
    };
    let current = json!({"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                         "currentRevision": "r2", "updateRevision": "r2"});
    assert_eq!(stateful_set_health(&sts(2, current.clone())), Health::Ready);
    assert!(wait(stateful_set_health(&sts(3, current))).contains("generation 3 not observed yet"));
    let not_ready = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1});
    assert!(wait(stateful_set_health(&sts(1, not_ready))).contains("0/1 replicas ready"));
    let rolling = json!({"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 0,
                         "currentRevision": "r1", "updateRevision": "r2"});
    assert!(wait(stateful_set_health(&sts(2, rolling))).contains("rolling out"));
}

#[test]
fn image_and_config_failures_fail_at_once() {
    for reason in ["ImagePullBackOff", "ErrImagePull", "InvalidImageName"] {
        let m = failed(pod_health(&pod(json!({"phase": "Pending",
            "containerStatuses": [waiting(reason, "manifest unknown")]}))));
        assert!(
            m.contains("image \"postgres:99\"")
                && m.contains(reason)
                && m.contains("manifest unknown"),
            "{m}"
        );
    }
    let m = failed(pod_health(&pod(json!({"phase": "Pending",
        "containerStatuses": [waiting("CreateContainerConfigError", "secret \"staging-db-credentials\" not found")]}))));
    assert!(
        m.contains("cannot be created (CreateContainerConfigError: secret"),
        "{m}"
    );
    // ContainerCreating is normal: wait.
    let m = wait(pod_health(&pod(json!({"phase": "Pending",
        "containerStatuses": [waiting("ContainerCreating", "")]}))));
    assert!(m.contains("container db is ContainerCreating"), "{m}");
}

#[test]
fn crash_loops_report_the_last_termination() {
    let mut c = waiting(
        "CrashLoopBackOff",
        "back-off 40s restarting failed container",
    );
    c["restartCount"] = json!(3);
    c["lastState"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
    let m = failed(pod_health(&pod(
        json!({"phase": "Running", "containerStatuses": [c]}),
    )));
    assert_eq!(
        m,
        "pod staging-db-0: container db is crash-looping (CrashLoopBackOff, 3 restarts); last exit code 137 (OOMKilled)"
    );
}

#[test]
fn scheduling_and_probes_are_waits() {
    let m = wait(pod_health(&pod(json!({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/2 nodes are available: 2 node(s) had volume node affinity conflict."}]}))));
    assert_eq!(
        m,
        "pod staging-db-0 cannot be scheduled (Unschedulable): 0/2 nodes are available: 2 node(s) had volume node affinity conflict."
    );
    let running = |ready: &str| {
        pod(json!({"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": ready}],
            "containerStatuses": [{"name": "db", "image": "postgres:17", "imageID": "", "ready": ready == "True",
                                   "restartCount": 0, "state": {"running": {}}}]}))
    };
    assert_eq!(pod_health(&running("True")), Health::Ready);
    assert!(wait(pod_health(&running("False"))).contains("readiness probe not passing yet"));
}

#[test]
fn jobs() {
    let job = |status: Value| -> Job { from(json!({"metadata": {"name": "j"}, "status": status})) };
    assert_eq!(
        job_health(&job(
            json!({"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1})
        )),
        JobHealth::Succeeded
    );
    assert_eq!(
        job_health(&job(
            json!({"conditions": [{"type": "Failed", "status": "True",
            "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]})
        )),
        JobHealth::Failed("DeadlineExceeded: Job was active longer than specified deadline".into())
    );
    assert_eq!(job_health(&job(json!({"active": 1}))), JobHealth::Running);
    assert_eq!(
        job_health(&job(
            json!({"conditions": [{"type": "Suspended", "status": "True"}]})
        )),
        JobHealth::Running
    );
}

#[test]
fn last_exit_takes_the_newest_failed_container() {
    let p = |code: i32, at: &str, msg: &str| -> Pod {
        from(
            json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [
            {"name": "masking", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": code, "reason": "Error", "message": msg, "finishedAt": at}}}]}}),
        )
    };
    let pods = [
        p(2, "2025-06-01T12:00:00Z", "first try"),
        p(3, "2025-06-01T12:01:00Z", "second try"),
    ];
    assert_eq!(last_exit(&pods).unwrap(), "exit code 3 (Error): second try");
    assert_eq!(last_exit(&[p(0, "2025-06-01T12:00:00Z", "")]), None);
}

#[test]
fn warnings_are_newest_first_distinct_and_bounded() {
    let ev = |type_: &str, reason: &str, msg: &str, at: &str| -> Event {
        from(
            json!({"metadata": {"name": "e"}, "involvedObject": {}, "type": type_, "reason": reason,
                    "message": msg, "lastTimestamp": at}),
        )
    };
    let events = [
        ev(
            "Warning",
            "ProvisioningFailed",
            "old",
            "2025-06-01T11:00:00Z",
        ),
        ev("Normal", "Provisioning", "started", "2025-06-01T11:59:00Z"),
        ev(
            "Warning",
            "ProvisioningFailed",
            "newest",
            "2025-06-01T11:58:00Z",
        ),
        ev(
            "Warning",
            "ProvisioningFailed",
            "newest",
            "2025-06-01T11:57:00Z",
        ),
        ev(
            "Warning",
            "ExternalExpanding",
            "middle",
            "2025-06-01T11:30:00Z",
        ),
    ];
    assert_eq!(
        warnings(&events, 2).unwrap(),
        "ProvisioningFailed: newest; ExternalExpanding: middle"
    );
    assert_eq!(warnings(&events[1..2], 2), None);
}

#[test]
fn deployments_are_ready_when_every_replica_is_updated_and_available() {
    let d = |generation: i64, status: Value| -> Deployment {
        from(
            json!({"metadata": {"name": "db", "generation": generation}, "spec": {"replicas": 1,
            "selector": {"matchLabels": {"app": "db"}}, "template": {}}, "status": status}),
        )
    };
    assert_eq!(
        wait(deployment_health(&d(2, json!({"observedGeneration": 1})))),
        "Deployment db: generation 2 not observed yet (observed 1)"
    );
    assert_eq!(
        wait(deployment_health(&d(
            1,
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1})
        ))),
        "Deployment db: 1 old replica(s) still terminating"
    );
    assert_eq!(
        wait(deployment_health(&d(
            1,
            json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1})
        ))),
        "Deployment db: 0/1 replicas available"
    );
    assert_eq!(
        deployment_health(&d(
            1,
            json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1})
        )),
        Health::Ready
    );
    let stuck = d(
        1,
        json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": "ReplicaSet \"db-5d8f\" has timed out progressing."}]}),
    );
    assert_eq!(
        failed(deployment_health(&stuck)),
        "Deployment db exceeded its progress deadline (ProgressDeadlineExceeded): ReplicaSet \"db-5d8f\" has timed out progressing."
    );
}

#[test]
fn a_terminated_container_is_reported_with_the_end_of_its_log() {
    let noise = "LOG:  database system is shut down\n".repeat(20);
    let said = "credentials reset: the restored data has no MySQL user app (databaseUser)";
    let words = last_words(Some(&format!("{noise}\n{said}\n")));
    assert!(words.ends_with(said), "{words}");
    assert!(words.starts_with(": …"), "cut at the front: {words}");
    assert!(words.chars().count() <= MAX_DETAIL + 2, "{words}");
    assert_eq!(last_words(Some("a\n\nb")), ": a | b");
    assert_eq!(last_words(Some("  ")), "");
}
