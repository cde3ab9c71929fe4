//! Readiness, one check per invocation: progress, the failures a user must read (crash loop, image pull, unschedulable, pending PVC, timeout), conflicts, tokens, foreign and production namespaces.

use super::*;

#[tokio::test]
async fn rollout_progressing_continues_with_what_is_missing() {
    let ns = ns();
    let exchanges = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
        X::get(&p_in("pods", "staging-db-0")).ok(o::pod(&ns, o::running_pod_status(false))),
    ];
    let s = state("ready", minutes_ago(2), true);
    let (r, _) = play(request(json!({})), Some(s.clone()), exchanges).await;
    let (summary, percent, next) = continued(r.unwrap());
    assert_eq!(next, s, "the state is unchanged while waiting");
    assert!(summary.contains("0/1 replicas ready"), "{summary}");
    assert!(
        summary.contains("readiness probe not passing yet"),
        "{summary}"
    );
    assert!(summary.contains("2m00s of 15m00s"), "{summary}");
    assert!((10..=60).contains(&percent), "{percent}");
}

#[tokio::test]
async fn generation_not_observed_is_not_ready() {
    let ns = ns();
    let exchanges = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 2, 1, 1)),
        X::get(&p_in("pods", "staging-db-0")).ok(o::pod(&ns, o::running_pod_status(true))),
    ];
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(1), true)),
        exchanges,
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("generation 2 not observed yet"),
        "{summary}"
    );
}

/// `staging-db-access`: the database published (after masking, or at once without it).
pub(crate) fn open_access() -> X {
    X::apply(&p_np("staging-db-access")).body(|b| {
        assert_eq!(b["kind"], "NetworkPolicy");
        let rule = &b["spec"]["ingress"][0];
        assert_eq!(rule["ports"][0]["port"], 5432);
        assert!(rule.get("from").is_none(), "from anywhere by default: {b}");
        assert_eq!(
            b["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "database"
        );
    })
}

pub(crate) fn ready_exchanges() -> Vec<X> {
    let ns = ns();
    vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 1)),
        X::get(&p_in("pods", "staging-db-0")).ok(o::pod(&ns, o::running_pod_status(true))),
    ]
}

#[tokio::test]
async fn ready_is_done_with_the_outputs() {
    let ns = ns();
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(3), true)),
        then(ready_exchanges(), vec![open_access()]),
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Mode"], "applied");
    assert_eq!(outputs["NetworkAccess"], "networkpolicy");
    assert!(
        summary.contains(
            "reachable from anywhere in the cluster's network (NetworkPolicy staging-db-access)"
        ),
        "{summary}"
    );
    assert_eq!(outputs["Namespace"], ns);
    assert_eq!(outputs["Service"], "staging-db");
    assert_eq!(
        outputs["Endpoint"],
        format!("staging-db.{ns}.svc.cluster.local:5432")
    );
    assert_eq!(outputs["Port"], "5432");
    assert_eq!(outputs["SecretName"], "staging-db-credentials");
    assert_eq!(outputs["Engine"], "postgresql");
    assert_eq!(outputs["ExpiresAt"], EXPIRES);
    assert!(!outputs.contains_key("MigrationResult"));
    snapstage::job::codepipeline::validate_output_variables(&outputs).unwrap();
    assert!(
        summary.starts_with("staging postgresql ready: staging-db."),
        "{summary}"
    );
}

pub(crate) fn crash_looping_pod(ns: &str) -> Value {
    o::pod(
        ns,
        json!({
            "phase": "Running",
            "conditions": [o::condition("PodScheduled", "True", None, None),
                           o::condition("Ready", "False", Some("ContainersNotReady"), Some("containers with unready status: [db]"))],
            "containerStatuses": [o::container_status("db", "docker.io/library/postgres:17", false, 4,
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container=db pod=staging-db-0_x(uid)"}}),
                json!({"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "FATAL:  database files are incompatible with server",
                    "startedAt": "2025-06-01T12:02:00Z", "finishedAt": "2025-06-01T12:02:01Z"}}))]
        }),
    )
}

#[tokio::test]
async fn crash_looping_fails_with_the_exit_code_and_tears_down() {
    let ns = ns();
    let exchanges = then(
        vec![
            X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
            X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
            X::get(&p_in("pods", "staging-db-0")).ok(crash_looping_pod(&ns)),
        ],
        teardown_exchanges(),
    );
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(4), true)),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(msg.contains("CrashLoopBackOff, 4 restarts"), "{msg}");
    assert!(
        msg.contains("last exit code 1 (Error): FATAL:  database files are incompatible"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("deleted namespace {ns}")) && msg.contains("onFailure: teardown"),
        "{msg}"
    );
}

#[tokio::test]
async fn image_pull_failure_names_the_image_and_keep_leaves_the_namespace() {
    let ns = ns();
    let pod = o::pod(
        &ns,
        json!({
            "phase": "Pending",
            "conditions": [o::condition("PodScheduled", "True", None, None)],
            "containerStatuses": [o::container_status("db", "postgres:99", false, 0,
                json!({"waiting": {"reason": "ImagePullBackOff",
                    "message": "Back-off pulling image \"postgres:99\": ErrImagePull: docker.io/library/postgres:99: not found"}}),
                json!({}))]
        }),
    );
    let exchanges = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
        X::get(&p_in("pods", "staging-db-0")).ok(pod),
    ];
    let (r, _) = play(
        request(json!({"image": "postgres:99", "onFailure": "keep"})),
        Some(state("ready", minutes_ago(1), true)),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.contains("image \"postgres:99\"") && msg.contains("ImagePullBackOff"),
        "{msg}"
    );
    assert!(
        msg.contains("kept for debugging (onFailure: keep)"),
        "{msg}"
    );
}

pub(crate) fn unschedulable_pod(ns: &str) -> Value {
    o::pod(
        ns,
        json!({
            "phase": "Pending",
            "conditions": [o::condition("PodScheduled", "False", Some("Unschedulable"),
                Some("0/3 nodes are available: 1 node(s) had volume node affinity conflict, 2 Insufficient memory. preemption: 0/3 nodes are available"))]
        }),
    )
}

#[tokio::test]
async fn unschedulable_waits_with_the_scheduler_message_then_times_out() {
    let ns = ns();
    let exchanges = || {
        vec![
            X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
            X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
            X::get(&p_in("pods", "staging-db-0")).ok(unschedulable_pod(&ns)),
        ]
    };
    // Autoscaling may still add a node: keep waiting, say why.
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(5), true)),
        exchanges(),
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains("pod staging-db-0 cannot be scheduled (Unschedulable): 0/3 nodes are available: 1 node(s) had volume node affinity conflict"),
        "{summary}"
    );
    // Past readyTimeoutMinutes the same answer fails the step, with the reason.
    let (r, _) = play(
        request(json!({"readyTimeoutMinutes": 10, "onFailure": "keep"})),
        Some(state("ready", minutes_ago(11), true)),
        exchanges(),
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.contains("was not ready after 10 minutes (readyTimeoutMinutes)"),
        "{msg}"
    );
    assert!(msg.contains("2 Insufficient memory"), "{msg}");
}

pub(crate) fn pending_pvc_exchanges(ns: &str) -> Vec<X> {
    vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(ns, "Pending")),
        X::get(&p_sts()).ok(o::stateful_set(ns, 1, 1, 0)),
        X::get(&p_in("pods", "staging-db-0")).ok(o::pod(
            ns,
            json!({"phase": "Pending", "conditions": [o::condition("PodScheduled", "False", Some("Unschedulable"),
                Some("0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."))]}),
        )),
        X::list(
            &format!("/api/v1/namespaces/{ns}/events"),
            &[(
                "fieldSelector",
                "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=staging-db-data",
            )],
        )
        .ok(o::list(
            "Event",
            "v1",
            vec![
                o::event(ns, "PersistentVolumeClaim", "staging-db-data", "Normal", "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding", "2025-06-01T11:58:00Z"),
                o::event(ns, "PersistentVolumeClaim", "staging-db-data", "Warning", "VolumeMismatch",
                    "Cannot bind to requested volume \"snapstage-x-data\": storageClassName does not match", "2025-06-01T11:59:00Z"),
            ],
        )),
    ]
}

#[tokio::test]
async fn pvc_pending_reports_its_warning_events() {
    let ns = ns();
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(3), true)),
        pending_pvc_exchanges(&ns),
    )
    .await;
    let (summary, _, _) = continued(r.unwrap());
    assert!(
        summary.contains(
            "PVC staging-db-data is Pending (VolumeMismatch: Cannot bind to requested volume"
        ),
        "{summary}"
    );
    assert!(
        !summary.contains("WaitForFirstConsumer"),
        "only warnings: {summary}"
    );
}

#[tokio::test]
async fn timeout_fails_with_the_reason_and_deletes_the_namespace() {
    let ns = ns();
    let exchanges = then(pending_pvc_exchanges(&ns), teardown_exchanges());
    let (r, seen) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(16), true)),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(msg.contains("was not ready after 15 minutes"), "{msg}");
    assert!(
        msg.contains("PVC staging-db-data is Pending (VolumeMismatch"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "deleted namespace {ns} and deleted PersistentVolume object(s) {ns}-data"
        )),
        "{msg}"
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with("DELETE /api/v1/namespaces/")),
        "{seen:#?}"
    );
}

#[tokio::test]
async fn namespace_from_an_earlier_run_is_never_deleted_on_failure() {
    let ns = ns();
    let exchanges = vec![
        X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
        X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
        X::get(&p_in("pods", "staging-db-0")).ok(crash_looping_pod(&ns)),
    ];
    let (r, _) = play(
        request(json!({})),
        Some(state("ready", minutes_ago(2), false)),
        exchanges,
    )
    .await;
    let (_, msg) = failure(r);
    assert!(
        msg.contains("existed before this run and is left as it is"),
        "{msg}"
    );
}

#[tokio::test]
async fn conflict_on_apply_is_reported_clearly_and_cleaned_up() {
    let ns = ns();
    let mut exchanges = vec![
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
        X::apply(&p_pv()),
        X::apply(&p_in("persistentvolumeclaims", "staging-db-data")),
        X::apply(&p_in("services", "staging-db")),
        X::apply(&p_sts()).reply(
            409,
            fixtures::status_json(
                409,
                "Conflict",
                "Operation cannot be fulfilled on statefulsets.apps \"staging-db\": the object has been modified; please apply your changes to the latest version and try again",
            ),
        ),
    ];
    exchanges.extend(teardown_exchanges());
    let (r, _) = play(request(json!({})), None, exchanges).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.starts_with(&format!("kubernetes: applying StatefulSet {ns}/staging-db: 409 Conflict: Operation cannot be fulfilled")),
        "{msg}"
    );
    assert!(
        msg.contains("conflict: the object was changed or is owned by someone else"),
        "{msg}"
    );
    assert!(msg.contains(&format!("deleted namespace {ns}")), "{msg}");
}

#[tokio::test]
async fn expired_token_is_a_permission_error() {
    let exchanges = vec![X::get(&p_ns()).reply(
        401,
        fixtures::status_json(401, "Unauthorized", "Unauthorized"),
    )];
    let (r, seen) = play(request(json!({})), None, exchanges).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::PermissionError);
    assert!(
        msg.contains(&format!("reading Namespace {}: 401 Unauthorized", ns())),
        "{msg}"
    );
    assert!(msg.contains("rejected the credentials"), "{msg}");
    assert_eq!(seen.len(), 1, "nothing is applied or deleted: {seen:#?}");
}

#[tokio::test]
async fn foreign_namespace_is_refused() {
    let exchanges = vec![X::get("/api/v1/namespaces/team-a-staging").ok(o::namespace(
        "team-a-staging",
        json!({"kubernetes.io/metadata.name": "team-a-staging", "team": "a"}),
        json!({}),
    ))];
    let (r, seen) = play(
        request(json!({"namespace": "team-a-staging"})),
        None,
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(
        msg.contains("Namespace team-a-staging exists and is not labelled app.kubernetes.io/managed-by=snapstage"),
        "{msg}"
    );
    assert!(msg.contains("will not deploy into it"), "{msg}");
    assert_eq!(seen.len(), 1, "{seen:#?}");
}

#[tokio::test]
async fn production_namespace_is_refused_even_if_snapstage_labelled() {
    let exchanges = vec![X::get("/api/v1/namespaces/db").ok(o::namespace(
        "db",
        json!({"app.kubernetes.io/managed-by": "snapstage", "environment": "production"}),
        json!({}),
    ))];
    let (r, _) = play(request(json!({"namespace": "db"})), None, exchanges).await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::ConfigurationError);
    assert!(msg.contains("labelled production"), "{msg}");
}
