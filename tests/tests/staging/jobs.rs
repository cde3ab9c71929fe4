//! The masking and migration Jobs: started after readiness, before anything is published.

use super::*;

pub(crate) fn masking() -> Value {
    json!({"masking": {"image": "postgres:17", "command": ["psql", "-v", "ON_ERROR_STOP=1", "-f", "/scripts/mask.sql"],
                       "scriptsConfigMap": "mask-sql"}})
}

#[tokio::test]
async fn ready_starts_the_masking_job_before_publishing() {
    let ns = ns();
    let ns2 = ns.clone();
    let exchanges = then(
        ready_exchanges(),
        vec![X::apply(&p_job("staging-db-masking")).body(move |b| {
            assert_eq!(b["kind"], "Job");
            let pod = &b["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            assert_eq!(c["image"], "postgres:17");
            assert_eq!(c["command"][4], "/scripts/mask.sql");
            let env = c["env"].as_array().unwrap();
            let var = |n: &str| env.iter().find(|e| e["name"] == n).unwrap().clone();
            assert_eq!(
                var("DB_HOST")["value"],
                format!("staging-db.{ns2}.svc.cluster.local")
            );
            assert_eq!(
                var("PGPASSWORD")["valueFrom"]["secretKeyRef"]["key"],
                "password"
            );
            assert_eq!(pod["volumes"][0]["configMap"]["name"], "mask-sql");
            assert_eq!(pod["restartPolicy"], "Never");
        })],
    );
    let (r, _) = play(
        request(masking()),
        Some(state("ready", minutes_ago(3), true)),
        exchanges,
    )
    .await;
    let (summary, _, next) = continued(r.unwrap());
    assert_eq!(next, state("masking", now().as_second(), true));
    assert!(
        summary.contains("started Job staging-db-masking"),
        "{summary}"
    );
    assert!(
        summary.starts_with(&format!("masking the staging data in {ns}")),
        "{summary}"
    );
}

#[tokio::test]
async fn masking_job_succeeded_publishes() {
    let ns = ns();
    let exchanges = vec![
        X::get(&p_job("staging-db-masking")).ok(o::job(
            &ns,
            "staging-db-masking",
            vec![
                o::condition(
                    "SuccessCriteriaMet",
                    "True",
                    Some("CompletionsReached"),
                    Some("Reached expected number of succeeded pods"),
                ),
                o::condition(
                    "Complete",
                    "True",
                    Some("CompletionsReached"),
                    Some("Reached expected number of succeeded pods"),
                ),
            ],
            1,
            0,
        )),
        open_access(),
    ];
    let (r, _) = play(
        request(masking()),
        Some(state("masking", minutes_ago(2), true)),
        exchanges,
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["Mode"], "applied");
    assert!(summary.contains("data masked"), "{summary}");
}

#[tokio::test]
async fn masking_job_failed_fails_the_step_with_its_reason() {
    let ns = ns();
    let exchanges = then(
        vec![
            X::get(&p_job("staging-db-masking")).ok(o::job(
                &ns,
                "staging-db-masking",
                vec![
                    o::condition(
                        "FailureTarget",
                        "True",
                        Some("BackoffLimitExceeded"),
                        Some("Job has reached the specified backoff limit"),
                    ),
                    o::condition(
                        "Failed",
                        "True",
                        Some("BackoffLimitExceeded"),
                        Some("Job has reached the specified backoff limit"),
                    ),
                ],
                0,
                2,
            )),
            X::list(
                &format!("/api/v1/namespaces/{ns}/pods"),
                &[(
                    "labelSelector",
                    "batch.kubernetes.io/job-name=staging-db-masking",
                )],
            )
            .ok(o::list(
                "Pod",
                "v1",
                vec![o::job_pod(
                    &ns,
                    "staging-db-masking",
                    3,
                    "Error",
                    "psql:/scripts/mask.sql:12: ERROR:  relation \"customers\" does not exist",
                )],
            )),
        ],
        teardown_exchanges(),
    );
    let (r, _) = play(
        request(masking()),
        Some(state("masking", minutes_ago(2), true)),
        exchanges,
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(msg.contains("the masking Job"), "{msg}");
    assert!(msg.contains("BackoffLimitExceeded: Job has reached the specified backoff limit; exit code 3 (Error): psql:/scripts/mask.sql:12"), "{msg}");
    assert!(
        msg.contains("the staging database is not published"),
        "{msg}"
    );
    assert!(msg.contains("deleted namespace"), "{msg}");
}

pub(crate) fn failed_migration_exchanges(ns: &str) -> Vec<X> {
    vec![
        X::get(&p_job("staging-db-migration")).ok(o::job(
            ns,
            "staging-db-migration",
            vec![o::condition(
                "Failed",
                "True",
                Some("BackoffLimitExceeded"),
                Some("Job has reached the specified backoff limit"),
            )],
            0,
            2,
        )),
        X::list(
            &format!("/api/v1/namespaces/{ns}/pods"),
            &[(
                "labelSelector",
                "batch.kubernetes.io/job-name=staging-db-migration",
            )],
        )
        .ok(o::list(
            "Pod",
            "v1",
            vec![o::job_pod(
                ns,
                "staging-db-migration",
                1,
                "Error",
                "Validate failed: Migrations have failed validation",
            )],
        )),
    ]
}

#[tokio::test]
async fn migration_result_is_reported_and_fails_unless_allowed() {
    let ns = ns();
    let migration = |allow: bool| {
        request(
            json!({"onFailure": "keep", "migration": {"image": "flyway/flyway:10", "command": ["flyway", "validate"], "allowFailure": allow}}),
        )
    };
    let (r, _) = play(
        migration(true),
        Some(state("migration", minutes_ago(1), true)),
        failed_migration_exchanges(&ns),
    )
    .await;
    let (summary, outputs) = done(r.unwrap());
    assert_eq!(outputs["MigrationResult"], "failed");
    assert!(
        summary.contains(
            "migration check failed: Job staging-db-migration failed: BackoffLimitExceeded"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("exit code 1 (Error): Validate failed"),
        "{summary}"
    );

    let (r, _) = play(
        migration(false),
        Some(state("migration", minutes_ago(1), true)),
        failed_migration_exchanges(&ns),
    )
    .await;
    let (kind, msg) = failure(r);
    assert_eq!(kind, FailureKind::JobFailed);
    assert!(
        msg.contains("the migration check Job") && msg.contains("set migration.allowFailure"),
        "{msg}"
    );
}

#[tokio::test]
async fn migration_success_is_an_output() {
    let ns = ns();
    let exchanges = vec![X::get(&p_job("staging-db-migration")).ok(o::job(
        &ns,
        "staging-db-migration",
        vec![o::condition("Complete", "True", None, None)],
        1,
        0,
    ))];
    let req = request(
        json!({"migration": {"image": "flyway/flyway:10", "command": ["flyway", "validate"]}}),
    );
    let (r, _) = play(
        req,
        Some(state("migration", minutes_ago(1), true)),
        exchanges,
    )
    .await;
    let (_, outputs) = done(r.unwrap());
    assert_eq!(outputs["MigrationResult"], "succeeded");
}
