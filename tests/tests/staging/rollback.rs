//! Pipeline labels, healthy marks, and rolling back to the previous healthy environment.

use super::*;

pub(crate) const PIPELINE: &str = "shop-api-staging";

pub(crate) fn pipeline_label() -> String {
    names::execution_label(PIPELINE)
}

/// A continuation state of a run whose pipeline is known.
pub(crate) fn pipeline_state(phase: &str, since: i64) -> Value {
    let mut s = state(phase, since, true);
    s["pl"] = json!(pipeline_label());
    s
}

#[tokio::test]
async fn a_known_pipeline_labels_the_namespace_not_healthy_until_published() {
    let mut exchanges = vec![
        X::get(&p_ns()).not_found(),
        X::get(&p_pv()).not_found(),
        X::apply(&p_ns()).body(|b| {
            let labels = &b["metadata"]["labels"];
            assert_eq!(labels["snapstage.io/pipeline"], pipeline_label());
            assert_eq!(labels["snapstage.io/healthy"], "false");
        }),
        X::apply(&p_np("staging-db-isolation")),
        X::apply(&p_np("staging-db-egress")),
        X::apply(&p_in("secrets", "staging-db-credentials")),
    ];
    exchanges.extend(apply_rest());
    let (r, _) = play(request(json!({"pipeline": PIPELINE})), None, exchanges).await;
    let (_, _, state) = continued(r.unwrap());
    assert_eq!(
        state["pl"],
        pipeline_label(),
        "carried to the continuations"
    );

    // Published: the namespace is marked healthy with what it published.
    let ns = ns();
    let exchanges = then(
        ready_exchanges(),
        vec![
            open_access(),
            X::merge(&p_ns()).body(move |b| {
                assert_eq!(
                    b["metadata"]["labels"],
                    json!({"snapstage.io/healthy": "true"})
                );
                let ann = &b["metadata"]["annotations"];
                assert_eq!(ann["snapstage.io/healthy-at"], NOW);
                let published: Value =
                    serde_json::from_str(ann["snapstage.io/outputs"].as_str().unwrap()).unwrap();
                assert_eq!(
                    published,
                    json!({"Namespace": ns, "Service": "staging-db", "Port": "5432",
                       "Endpoint": format!("staging-db.{ns}.svc.cluster.local:5432"),
                       "SecretName": "staging-db-credentials"})
                );
            }),
        ],
    );
    let (r, _) = play(
        request(json!({})),
        Some(pipeline_state("ready", minutes_ago(3))),
        exchanges,
    )
    .await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["Mode"], "applied");
}

pub(crate) fn healthy_namespace(name: &str, healthy_at: &str, expires: &str) -> Value {
    let mut n = o::staging_namespace(name, "0123456789abcdef0123", expires);
    n["metadata"]["labels"]["snapstage.io/pipeline"] = json!(pipeline_label());
    n["metadata"]["labels"]["snapstage.io/healthy"] = json!("true");
    n["metadata"]["annotations"]["snapstage.io/healthy-at"] = json!(healthy_at);
    n["metadata"]["annotations"]["snapstage.io/outputs"] = json!(
        json!({
        "Namespace": name, "Service": "staging-db", "Port": "5432",
        "Endpoint": format!("staging-db.{name}.svc.cluster.local:5432"),
        "SecretName": "staging-db-credentials"})
        .to_string()
    );
    n
}

#[tokio::test]
async fn rollback_deletes_the_failed_database_and_names_the_previous_healthy_one() {
    let ns = ns();
    let previous = "snapstage-aaaaaaaaaa";
    let older = "snapstage-bbbbbbbbbb";
    let expired = "snapstage-cccccccccc";
    let prod = "snapstage-dddddddddd";
    let mut production = healthy_namespace(prod, "2025-06-01T11:00:00Z", "2025-06-02T00:00:00Z");
    production["metadata"]["labels"]["env"] = json!("production");
    let mut failed_itself = healthy_namespace(&ns, "2025-06-01T11:30:00Z", EXPIRES);
    failed_itself["metadata"]["labels"]["snapstage.io/healthy"] = json!("true");
    let selector = format!(
        "app.kubernetes.io/managed-by=snapstage,snapstage.io/pipeline={},snapstage.io/healthy=true",
        pipeline_label()
    );
    let exchanges = then(
        vec![
            X::get(&p_in("persistentvolumeclaims", "staging-db-data")).ok(o::claim(&ns, "Bound")),
            X::get(&p_sts()).ok(o::stateful_set(&ns, 1, 1, 0)),
            X::get(&p_in("pods", "staging-db-0")).ok(crash_looping_pod(&ns)),
        ],
        then(
            teardown_exchanges(),
            vec![
                X::list(
                    "/api/v1/namespaces",
                    &[("labelSelector", selector.as_str())],
                )
                .ok(o::list(
                    "Namespace",
                    "v1",
                    vec![
                        healthy_namespace(older, "2025-05-31T09:00:00Z", "2025-06-01T20:00:00Z"),
                        healthy_namespace(previous, "2025-06-01T08:00:00Z", "2025-06-02T08:00:00Z"),
                        healthy_namespace(expired, "2025-06-01T09:00:00Z", "2025-06-01T11:59:00Z"),
                        production,
                        failed_itself,
                    ],
                )),
            ],
        ),
    );
    let (r, seen) = play(
        request(json!({"onFailure": "rollback"})),
        Some(pipeline_state("ready", minutes_ago(4))),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(
        kind,
        FailureKind::JobFailed,
        "the new database is not healthy"
    );
    assert!(msg.contains("CrashLoopBackOff"), "{msg}");
    assert!(
        msg.contains(&format!("deleted namespace {ns} and deleted PersistentVolume object(s) {ns}-data (Retain: the volumes stay) (onFailure: rollback)")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "rolled back to the previous healthy staging database of this pipeline (healthy since 2025-06-01T08:00:00Z, expires 2025-06-02T08:00:00Z), which still stands: Namespace={previous}, Service=staging-db, Endpoint=staging-db.{previous}.svc.cluster.local:5432, Port=5432, SecretName=staging-db-credentials"
        )),
        "{msg}"
    );
    assert_eq!(
        seen.iter().filter(|s| s.starts_with("DELETE")).count(),
        2,
        "only the failed namespace and its PV: {seen:#?}"
    );
}

#[tokio::test]
async fn rollback_without_a_known_pipeline_says_there_is_nothing_to_roll_back_to() {
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
        request(json!({"onFailure": "rollback"})),
        Some(state("ready", minutes_ago(4), true)),
        exchanges,
    )
    .await;
    let (_, msg) = failure(r);
    assert!(msg.contains("no pipeline is known"), "{msg}");
}
