//! What runs inside the database, on real engines (Debian's PostgreSQL and MariaDB, installed by
//! `scripts/engines.sh`): a "production" instance with an admin, an application user, a reporting
//! user and a table of customers (PII-like columns) keeps running while its data directory is
//! copied crash-consistently, as a block snapshot would be (every server process frozen for the
//! copy, never stopped). On the copy, the containers snapstage renders run exactly as rendered
//! (their command, their script, their environment with the Secret's values, their user; see
//! `engines_kit::pod`): the credentials reset init container, then — on the staging server — the
//! masking Job with a `scriptsConfigMap` script and the migration check Job, whose result goes
//! through deploy-staging-db's own reporting.
//!
//! What a user would notice is asserted: on a copy without the reset, production's passwords log
//! in (the problem); after it, none of them does, the staging user logs in with the generated
//! password, the data (including the last write before the snapshot) is there, masked columns are
//! masked, the migration check's result is reported; production is untouched and still takes its
//! own passwords; no production secret is in any staging object.
//!
//! MongoDB is not covered here: no MongoDB-compatible server that opens a `mongod` data directory
//! installs from Debian or PyPI (see the README).
//!
//! Without the engines the tests print `SKIP` with the command that installs them; under
//! `CI=true` a missing engine fails.

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engines_kit;
#[allow(unused_imports)]
#[path = "../../../tests/tests/staging/fixtures/mod.rs"]
mod fixtures;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use engines_kit::instance::{Mariadb, Postgres};
use engines_kit::pod::Ran;
use engines_kit::staging::{Staging, config_map, execution, now, params, run};
use engines_kit::{Engines, TempDir, crash_consistent_copy, engines};
use fixtures::objects as o;
use fixtures::{Exchange as X, serve};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use snapstage::interlock::NoVolumeMarks;
use snapstage::job::contract::{Deadline, Outcome, Step};
use snapstage::staging;
use snapstage::staging::render::jobs::JobKind;

// Production's passwords: none of them may work on staging, or appear in a staging object.
const ADMIN_PASSWORD: &str = "Pr0d-Admin-7f3k";
const APP_PASSWORD: &str = "Pr0d-App-9q2w";
const REPORTING_PASSWORD: &str = "Pr0d-Reporting-4x8z";
const ROOT_PASSWORD: &str = "Pr0d-Root-2m5n";

/// Production's customers: (id, name, email, phone, card_last4).
const CUSTOMERS: [(i32, &str, &str, &str, &str); 3] = [
    (
        1,
        "Ada Lovelace",
        "ada@example.com",
        "+44 20 7946 0001",
        "4242",
    ),
    (
        2,
        "Grace Hopper",
        "grace@example.com",
        "+1 202 555 0102",
        "1881",
    ),
    (
        3,
        "Alan Turing",
        "alan@example.com",
        "+44 20 7946 0003",
        "5555",
    ),
];
/// Written just before the snapshot: in the log only, so the copy must recover it.
const LAST_CUSTOMER: (i32, &str, &str, &str, &str) = (
    4,
    "Katherine Johnson",
    "katherine@example.com",
    "+1 757 555 0104",
    "7777",
);

/// The step deploy-staging-db runs for `request` in `phase` (a continuation), against an API
/// server that answers `exchanges`.
async fn deploy_step(
    request: &Value,
    phase: &str,
    exchanges: Vec<X>,
) -> snapstage::Result<Outcome> {
    let (client, server) = serve(exchanges);
    let expires: Timestamp = "2025-06-02T12:00:00Z".parse().unwrap();
    let state =
        json!({"p": phase, "t": now().as_second() - 60, "x": expires.as_second(), "c": false});
    let step = Step {
        params: params(request),
        execution: execution(),
        state: Some(state),
        deadline: Deadline(tokio::time::Instant::now() + Duration::from_secs(300)),
        artifacts: None,
    };
    // A continuation: the interlock ran on the first invocation, nothing is read here.
    let outcome = staging::run(&client, step, now(), &NoVolumeMarks).await;
    drop(client);
    server.finish().await;
    outcome
}

/// deploy-staging-db's report of a migration Job that ran as `ran` did: the Job's and its pod's
/// status as the Job controller and the kubelet write them.
async fn report_migration(s: &Staging, ran: &Ran) -> snapstage::Result<Outcome> {
    let ns = s.plan.spec.namespace.clone();
    let name = JobKind::Migration.job_name();
    let path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}");
    let mut exchanges = Vec::new();
    if ran.code == 0 {
        exchanges.push(X::get(&path).ok(o::job(
            &ns,
            &name,
            vec![o::condition("Complete", "True", None, None)],
            1,
            0,
        )));
    } else {
        exchanges.push(X::get(&path).ok(o::job(
            &ns,
            &name,
            vec![o::condition(
                "Failed",
                "True",
                Some("BackoffLimitExceeded"),
                Some("Job has reached the specified backoff limit"),
            )],
            0,
            2,
        )));
        exchanges.push(
            X::list(
                &format!("/api/v1/namespaces/{ns}/pods"),
                &[(
                    "labelSelector",
                    &format!("batch.kubernetes.io/job-name={name}"),
                )],
            )
            .ok(o::list(
                "Pod",
                "v1",
                vec![o::job_pod(
                    &ns,
                    &name,
                    ran.code,
                    "Error",
                    &ran.termination_message(),
                )],
            )),
        );
    }
    deploy_step(&s.request, "migration", exchanges).await
}

/// deploy-staging-db's readiness check of a database pod whose init container `credentials-reset`
/// failed as `ran` did (restarted with back-off by the kubelet: CrashLoopBackOff).
async fn report_failed_reset(s: &Staging, ran: &Ran) -> snapstage::Result<Outcome> {
    let ns = s.plan.spec.namespace.clone();
    let mut status = o::running_pod_status(false);
    status["phase"] = json!("Pending");
    status["initContainerStatuses"] = json!([o::container_status(
        "credentials-reset",
        &s.plan.spec.image,
        false,
        3,
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}),
        json!({"terminated": {"exitCode": ran.code, "reason": "Error", "message": ran.termination_message(),
                              "startedAt": "2025-06-01T12:00:50Z", "finishedAt": "2025-06-01T12:00:55Z"}}),
    )]);
    let exchanges = vec![
        X::get(&format!(
            "/api/v1/namespaces/{ns}/persistentvolumeclaims/staging-db-data"
        ))
        .ok(o::claim(&ns, "Bound")),
        X::get(&format!(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/staging-db"
        ))
        .ok(o::stateful_set(&ns, 1, 1, 0)),
        X::get(&format!("/api/v1/namespaces/{ns}/pods/staging-db-0")).ok(o::pod(&ns, status)),
    ];
    deploy_step(&s.request, "ready", exchanges).await
}

fn assert_denied(what: &str, r: Result<String, String>, says: &str) {
    match r {
        Ok(out) => panic!("{what}: logged in (answered {out:?}); it must not"),
        Err(e) => assert!(e.contains(says), "{what}: {e}"),
    }
}

fn request(engine: &str, masking: Value, migration: Value) -> Value {
    json!({"volumeId": "vol-0123456789abcdef0", "availabilityZone": "us-east-1a",
           "engine": engine, "databaseUser": "app",
           "masking": masking, "migration": migration})
}

fn customers_sql() -> String {
    CUSTOMERS
        .iter()
        .map(|(id, n, e, p, c)| format!("({id}, '{n}', '{e}', '{p}', '{c}')"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn last_customer_sql() -> String {
    let (id, n, e, p, c) = LAST_CUSTOMER;
    format!("INSERT INTO customers VALUES ({id}, '{n}', '{e}', '{p}', '{c}')")
}

/// The emails production holds, one per line in id order.
fn production_emails() -> String {
    CUSTOMERS
        .iter()
        .map(|c| c.2)
        .chain([LAST_CUSTOMER.2])
        .collect::<Vec<_>>()
        .join("\n")
}

fn pg_controldata_state(e: &Engines, data: &Path) -> String {
    let out = Command::new(e.pg_bin.join("pg_controldata"))
        .arg(data)
        .env("LANG", "C")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

const PG_MASK: &str = "\
UPDATE customers SET name = 'Customer ' || id, email = 'customer' || id || '@example.invalid',
                     phone = NULL, card_last4 = '0000';
";

fn pg_check(version: &str) -> String {
    format!(
        "DO $$BEGIN\n  IF NOT EXISTS (SELECT 1 FROM schema_migrations WHERE version = '{version}') THEN\n    RAISE EXCEPTION 'migration {version} is not applied to the staging data';\n  END IF;\nEND$$;\nSELECT 'schema at ' || max(version) FROM schema_migrations;\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_reset_masking_and_migration_check_on_a_crash_consistent_copy() {
    let Some(e) =
        engines("postgresql_reset_masking_and_migration_check_on_a_crash_consistent_copy")
    else {
        return;
    };
    let root = TempDir::new("engines-pg");
    let (prod_vol, control_vol, staging_vol) = (
        root.dir("production"),
        root.dir("control"),
        root.dir("staging"),
    );
    let (prod_run, control_run, staging_run) = (
        root.dir("production-run"),
        root.dir("control-run"),
        root.dir("staging-run"),
    );

    // Production: an admin (the superuser), the application, a reporting user, customers.
    let prod = Postgres::init(&e, &prod_vol.join("pgdata"), ADMIN_PASSWORD, &prod_run);
    for sql in [
        format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"),
        format!("CREATE ROLE reporting LOGIN PASSWORD '{REPORTING_PASSWORD}'"),
        "CREATE DATABASE shop OWNER app".into(),
    ] {
        prod.sql("admin", ADMIN_PASSWORD, "postgres", &sql).unwrap();
    }
    prod.sql("app", APP_PASSWORD, "shop", &format!(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text, card_last4 text);
         INSERT INTO customers VALUES {};
         CREATE TABLE schema_migrations (version text PRIMARY KEY);
         INSERT INTO schema_migrations VALUES ('2025_05_01'), ('2025_06_01');
         GRANT SELECT ON customers TO reporting;", customers_sql())).unwrap();
    prod.sql("admin", ADMIN_PASSWORD, "postgres", "CHECKPOINT")
        .unwrap();
    // After the checkpoint: only in the write-ahead log when the snapshot is cut.
    prod.sql("app", APP_PASSWORD, "shop", &last_customer_sql())
        .unwrap();

    crash_consistent_copy(&prod.server, &prod_vol, &[&control_vol, &staging_vol]);
    assert_eq!(
        pg_controldata_state(&e, &staging_vol.join("pgdata")),
        "in production",
        "the copy is crash-consistent: never shut down, recovery needed"
    );

    let masking = json!({"image": "postgres:17", "scriptsConfigMap": "masking-sql",
        "command": ["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "--dbname=shop", "-f", "/scripts/mask.sql"]});
    let migration = json!({"image": "postgres:17", "scriptsConfigMap": "migration-sql", "allowFailure": true,
        "command": ["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "--dbname=shop", "-f", "/scripts/check.sql"]});
    let s = Staging::new(request("postgresql", masking, migration));
    assert!(
        !s.every_object().contains(ADMIN_PASSWORD)
            && !s.every_object().contains(APP_PASSWORD)
            && !s.every_object().contains(REPORTING_PASSWORD)
            && !s.every_object().contains("staging-db-admin"),
        "no production secret in any staging object"
    );

    // Without the reset (the problem): the copy takes production's passwords, not the generated one.
    let control = Postgres::start(
        &e,
        &control_vol.join("pgdata"),
        &control_run,
        "staging without the reset",
    );
    assert_eq!(
        control.sql(
            "admin",
            ADMIN_PASSWORD,
            "shop",
            "SELECT count(*) FROM customers"
        ),
        Ok("4".into())
    );
    assert!(control.sql("app", APP_PASSWORD, "shop", "SELECT 1").is_ok());
    assert_denied(
        "the generated password without the reset",
        control.sql("app", &s.password, "shop", "SELECT 1"),
        "password authentication failed",
    );
    control.stop();

    // The reset: the init container exactly as rendered, on the crash-consistent copy.
    let (db_pod, reset) = s.database_pod();
    let world = s.world(&e, &staging_vol, &[]);
    let ran = run(&db_pod, &reset, &world);
    assert_eq!(ran.code, 0, "{}", ran.output());
    assert!(
        ran.stdout.contains("credentials reset: password of app set; production passwords removed from: admin, reporting"),
        "{}",
        ran.output()
    );
    assert!(
        ran.stderr.contains("automatic recovery in progress"),
        "{}",
        ran.output()
    );
    assert!(
        ran.stderr.contains("listening on Unix socket") && !ran.stderr.contains("listening on IPv"),
        "the reset's server listens on no network: {}",
        ran.output()
    );
    assert!(
        !ran.output().contains(&s.password),
        "the password is never logged"
    );
    assert_eq!(
        fs::read_to_string(staging_vol.join("pgdata/pg_hba.conf")).unwrap(),
        fs::read_to_string(prod_vol.join("pgdata/pg_hba.conf")).unwrap(),
        "the reset's trust rule lived outside the data directory"
    );
    assert_eq!(
        pg_controldata_state(&e, &staging_vol.join("pgdata")),
        "shut down"
    );

    // The staging server (the database container) on the reset copy.
    let staging = Postgres::start(&e, &staging_vol.join("pgdata"), &staging_run, "staging");
    for (user, password) in [
        ("admin", ADMIN_PASSWORD),
        ("app", APP_PASSWORD),
        ("reporting", REPORTING_PASSWORD),
    ] {
        assert_denied(
            &format!("{user} with production's password on staging"),
            staging.sql(user, password, "shop", "SELECT 1"),
            "password authentication failed",
        );
    }
    assert_eq!(
        staging.sql(
            "app",
            &s.password,
            "shop",
            "SELECT string_agg(email, E'\\n' ORDER BY id) FROM customers"
        ),
        Ok(production_emails()),
        "the staging user logs in with the generated password; the data, the last write included, is there"
    );

    // Masking: the Job as rendered, its script from the ConfigMap.
    let mask = config_map(&root, "masking-sql", &[("mask.sql", PG_MASK)]);
    let check_dir = config_map(
        &root,
        "migration-sql",
        &[("check.sql", &pg_check("2025_06_01"))],
    );
    let world = s.with_service(
        s.world(
            &e,
            &staging_vol,
            &[("masking-sql", &mask), ("migration-sql", &check_dir)],
        ),
        staging.port,
    );
    let (job_pod, masking_job) = s.job(JobKind::Masking);
    let ran = run(&job_pod, &masking_job, &world);
    assert_eq!(ran.code, 0, "{}", ran.output());
    let masked = staging
        .sql("app", &s.password, "shop", "SELECT string_agg(concat_ws(',', name, email, coalesce(phone, 'NULL'), card_last4), ';' ORDER BY id) FROM customers")
        .unwrap();
    assert_eq!(
        masked,
        "Customer 1,customer1@example.invalid,NULL,0000;Customer 2,customer2@example.invalid,NULL,0000;\
Customer 3,customer3@example.invalid,NULL,0000;Customer 4,customer4@example.invalid,NULL,0000"
    );
    for (_, name, email, phone, _) in CUSTOMERS.iter().chain([&LAST_CUSTOMER]) {
        assert!(
            !masked.contains(name) && !masked.contains(email) && !masked.contains(phone),
            "{masked}"
        );
    }

    // The migration check: the staging data is at the version the check expects, then it is not.
    let (job_pod, migration_job) = s.job(JobKind::Migration);
    let ran = run(&job_pod, &migration_job, &world);
    assert_eq!(ran.code, 0, "{}", ran.output());
    assert!(
        ran.stdout.contains("schema at 2025_06_01"),
        "{}",
        ran.output()
    );
    let Outcome::Done { summary, outputs } = report_migration(&s, &ran).await.unwrap() else {
        panic!("the last Job finishes the deploy")
    };
    assert_eq!(outputs["MigrationResult"], "succeeded", "{summary}");
    assert_eq!(outputs["CredentialsReset"], "true");
    assert!(summary.contains("data masked"), "{summary}");

    fs::write(check_dir.join("check.sql"), pg_check("2025_07_01")).unwrap();
    let ran = run(&job_pod, &migration_job, &world);
    assert_eq!(
        ran.code,
        3,
        "psql's exit code for a failed script: {}",
        ran.output()
    );
    let Outcome::Done { summary, outputs } = report_migration(&s, &ran).await.unwrap() else {
        panic!("allowFailure reports a failed check without failing")
    };
    assert_eq!(outputs["MigrationResult"], "failed", "{summary}");
    assert!(
        summary.contains("migration check failed: Job staging-db-migration failed")
            && summary.contains("exit code 3 (Error)")
            && summary.contains("migration 2025_07_01 is not applied to the staging data"),
        "{summary}"
    );
    staging.stop();

    // A databaseUser the restored data lacks: the reset fails, says why, leaves nothing running;
    // deploy-staging-db's readiness reports it.
    let wrong = Staging::new(
        json!({"volumeId": "vol-0123456789abcdef0", "engine": "postgresql", "databaseUser": "shop_owner"}),
    );
    let (db_pod, reset) = wrong.database_pod();
    let ran = run(&db_pod, &reset, &wrong.world(&e, &control_vol, &[]));
    assert_eq!(ran.code, 3, "{}", ran.output());
    assert_eq!(
        pg_controldata_state(&e, &control_vol.join("pgdata")),
        "shut down",
        "the failed reset stopped its server cleanly"
    );
    let said = "credentials reset: cannot log in as shop_owner (databaseUser) on the restored data";
    assert!(
        ran.termination_message()
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with(said),
        "{}",
        ran.output()
    );
    let err = report_failed_reset(&wrong, &ran)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("container credentials-reset is crash-looping")
            && err.contains("last exit code 3")
            && err.contains(said),
        "{err}"
    );

    // Production: untouched, still running, its own passwords still work, its data unmasked.
    assert!(prod.server.pid() > 0);
    for (user, password) in [
        ("admin", ADMIN_PASSWORD),
        ("app", APP_PASSWORD),
        ("reporting", REPORTING_PASSWORD),
    ] {
        assert!(
            prod.sql(user, password, "shop", "SELECT 1").is_ok(),
            "{user} on production"
        );
    }
    assert_eq!(
        prod.sql(
            "app",
            APP_PASSWORD,
            "shop",
            "SELECT string_agg(email, E'\\n' ORDER BY id) FROM customers"
        ),
        Ok(production_emails())
    );
    prod.stop();
}

fn mysql_check(version: &str) -> String {
    format!(
        "set -eu\nv=$(mysql --user=\"$DB_USERNAME\" --database=shop --batch --skip-column-names -e 'SELECT max(version) FROM schema_migrations')\n\
         if [ \"$v\" != '{version}' ]; then echo \"migration {version} is not applied to the staging data (schema at $v)\" >&2; exit 1; fi\n\
         echo \"schema at $v\"\n"
    )
}

const MYSQL_MASK: &str = "\
UPDATE customers SET name = CONCAT('Customer ', id), email = CONCAT('customer', id, '@example.invalid'),
                     phone = NULL, card_last4 = '0000';
";

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_reset_masking_and_migration_check_on_a_crash_consistent_copy() {
    let Some(e) = engines("mariadb_reset_masking_and_migration_check_on_a_crash_consistent_copy")
    else {
        return;
    };
    let root = TempDir::new("engines-mariadb");
    let (prod_vol, control_vol, staging_vol) = (
        root.dir("production"),
        root.dir("control"),
        root.dir("staging"),
    );
    let (prod_run, control_run, staging_run) = (
        root.dir("production-run"),
        root.dir("control-run"),
        root.dir("staging-run"),
    );

    // Production: root and an admin, the application on two hosts, a reporting user, a role.
    let prod = Mariadb::init(&e, &prod_vol, &prod_run);
    let extra_roots = prod
        .sql_root("SELECT CONCAT(QUOTE(user), '@', QUOTE(host)) FROM mysql.user WHERE user = 'root' AND host <> 'localhost'")
        .unwrap();
    for r in extra_roots.lines() {
        prod.sql_root(&format!("DROP USER {r}")).unwrap();
    }
    prod.sql_root(&format!(
        "CREATE USER 'admin'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}';
         GRANT ALL ON *.* TO 'admin'@'%' WITH GRANT OPTION;
         CREATE USER 'app'@'%' IDENTIFIED BY '{APP_PASSWORD}';
         CREATE USER 'app'@'localhost' IDENTIFIED BY '{APP_PASSWORD}';
         CREATE USER 'reporting'@'%' IDENTIFIED BY '{REPORTING_PASSWORD}';
         CREATE ROLE analyst;
         CREATE DATABASE shop;
         GRANT ALL ON shop.* TO 'app'@'%';
         GRANT ALL ON shop.* TO 'app'@'localhost';
         GRANT SELECT ON shop.* TO 'reporting'@'%';
         GRANT SELECT ON shop.* TO analyst;
         ALTER USER 'root'@'localhost' IDENTIFIED BY '{ROOT_PASSWORD}';"
    ))
    .unwrap();
    prod.sql("app", APP_PASSWORD, "shop", &format!(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text, card_last4 text);
         INSERT INTO customers VALUES {};
         CREATE TABLE schema_migrations (version varchar(32) PRIMARY KEY);
         INSERT INTO schema_migrations VALUES ('2025_05_01'), ('2025_06_01');", customers_sql())).unwrap();
    prod.sql("app", APP_PASSWORD, "shop", &last_customer_sql())
        .unwrap();

    crash_consistent_copy(&prod.server, &prod_vol, &[&control_vol, &staging_vol]);

    let masking = json!({"image": "mysql:8.4", "scriptsConfigMap": "masking-sql",
        "command": ["sh", "-c", "mysql --user=\"$DB_USERNAME\" --database=shop < /scripts/mask.sql"]});
    let migration = json!({"image": "mysql:8.4", "scriptsConfigMap": "migration-sql", "allowFailure": true,
        "command": ["sh", "/scripts/check.sh"]});
    let s = Staging::new(request("mysql", masking, migration));
    for p in [
        ADMIN_PASSWORD,
        APP_PASSWORD,
        REPORTING_PASSWORD,
        ROOT_PASSWORD,
        "staging-db-admin",
    ] {
        assert!(
            !s.every_object().contains(p),
            "no production secret in any staging object"
        );
    }

    // Without the reset (the problem): production's passwords log in on the copy.
    let control = Mariadb::start(&e, &control_vol, &control_run, "staging without the reset");
    assert_eq!(
        control.sql(
            "admin",
            ADMIN_PASSWORD,
            "shop",
            "SELECT count(*) FROM customers"
        ),
        Ok("4".into())
    );
    assert!(control.sql("app", APP_PASSWORD, "shop", "SELECT 1").is_ok());
    assert_denied(
        "the generated password without the reset",
        control.sql("app", &s.password, "shop", "SELECT 1"),
        "Access denied",
    );
    control.stop();

    // The reset: the init container exactly as rendered, on the crash-consistent copy.
    let (db_pod, reset) = s.database_pod();
    let world = s.world(&e, &staging_vol, &[]);
    let ran = run(&db_pod, &reset, &world);
    assert_eq!(ran.code, 0, "{}", ran.output());
    assert!(
        ran.stdout.contains("credentials reset: password of app set on 'app'@'%', 'app'@'localhost'; accounts locked: 'admin'@'%', 'reporting'@'%', 'root'@'localhost'"),
        "{}",
        ran.output()
    );
    assert!(
        ran.stderr.contains("InnoDB: Starting crash recovery") && ran.stderr.contains("port: 0"),
        "the copy's recovery, on a server without networking: {}",
        ran.output()
    );
    assert!(
        !ran.output().contains(&s.password),
        "the password is never logged"
    );

    // The staging server (the database container) on the reset copy.
    let staging = Mariadb::start(&e, &staging_vol, &staging_run, "staging");
    assert!(
        !staging.server.log_text().contains("crash recovery"),
        "the reset shut its server down cleanly: {}",
        staging.server.log_text()
    );
    for (user, password) in [
        ("admin", ADMIN_PASSWORD),
        ("app", APP_PASSWORD),
        ("reporting", REPORTING_PASSWORD),
        ("root", ROOT_PASSWORD),
    ] {
        assert_denied(
            &format!("{user} with production's password on staging"),
            staging.sql(user, password, "", "SELECT 1"),
            "denied",
        );
    }
    assert_eq!(
        staging.sql(
            "app",
            &s.password,
            "shop",
            "SELECT GROUP_CONCAT(email ORDER BY id SEPARATOR '\\n') FROM customers"
        ),
        Ok(production_emails().replace('\n', "\\n")),
        "the staging user logs in with the generated password; the data, the last write included, is there"
    );

    // Masking: the Job as rendered, its script from the ConfigMap.
    let mask = config_map(&root, "masking-sql", &[("mask.sql", MYSQL_MASK)]);
    let check_dir = config_map(
        &root,
        "migration-sql",
        &[("check.sh", &mysql_check("2025_06_01"))],
    );
    let world = s.with_service(
        s.world(
            &e,
            &staging_vol,
            &[("masking-sql", &mask), ("migration-sql", &check_dir)],
        ),
        staging.port,
    );
    let (job_pod, masking_job) = s.job(JobKind::Masking);
    let ran = run(&job_pod, &masking_job, &world);
    assert_eq!(ran.code, 0, "{}", ran.output());
    let masked = staging
        .sql("app", &s.password, "shop", "SELECT GROUP_CONCAT(CONCAT_WS(',', name, email, IFNULL(phone, 'NULL'), card_last4) ORDER BY id SEPARATOR ';') FROM customers")
        .unwrap();
    assert_eq!(
        masked,
        "Customer 1,customer1@example.invalid,NULL,0000;Customer 2,customer2@example.invalid,NULL,0000;\
Customer 3,customer3@example.invalid,NULL,0000;Customer 4,customer4@example.invalid,NULL,0000"
    );

    // The migration check, passing and then failing, through deploy-staging-db's report.
    let (job_pod, migration_job) = s.job(JobKind::Migration);
    let ran = run(&job_pod, &migration_job, &world);
    assert_eq!(ran.code, 0, "{}", ran.output());
    assert!(
        ran.stdout.contains("schema at 2025_06_01"),
        "{}",
        ran.output()
    );
    let Outcome::Done { outputs, summary } = report_migration(&s, &ran).await.unwrap() else {
        panic!("the last Job finishes the deploy")
    };
    assert_eq!(outputs["MigrationResult"], "succeeded", "{summary}");
    fs::write(check_dir.join("check.sh"), mysql_check("2025_07_01")).unwrap();
    let ran = run(&job_pod, &migration_job, &world);
    assert_eq!(ran.code, 1, "{}", ran.output());
    let Outcome::Done { summary, outputs } = report_migration(&s, &ran).await.unwrap() else {
        panic!("allowFailure reports a failed check without failing")
    };
    assert_eq!(outputs["MigrationResult"], "failed", "{summary}");
    assert!(
        summary.contains("exit code 1 (Error): migration 2025_07_01 is not applied to the staging data (schema at 2025_06_01)"),
        "{summary}"
    );
    staging.stop();

    // A databaseUser the restored data lacks.
    let wrong = Staging::new(
        json!({"volumeId": "vol-0123456789abcdef0", "engine": "mysql", "databaseUser": "shop_owner"}),
    );
    let (db_pod, reset) = wrong.database_pod();
    let ran = run(&db_pod, &reset, &wrong.world(&e, &control_vol, &[]));
    assert_eq!(ran.code, 3, "{}", ran.output());
    let said = "credentials reset: the restored data has no MySQL user shop_owner (databaseUser)";
    assert_eq!(
        ran.termination_message().trim_end().lines().last(),
        Some(said),
        "{}",
        ran.output()
    );
    let err = report_failed_reset(&wrong, &ran)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("container credentials-reset is crash-looping") && err.contains(said),
        "{err}"
    );

    // Production: untouched, still running, its own passwords still work, its data unmasked.
    for (user, password) in [
        ("admin", ADMIN_PASSWORD),
        ("app", APP_PASSWORD),
        ("reporting", REPORTING_PASSWORD),
        ("root", ROOT_PASSWORD),
    ] {
        assert!(
            prod.sql(user, password, "", "SELECT 1").is_ok(),
            "{user} on production"
        );
    }
    assert_eq!(
        prod.sql(
            "app",
            APP_PASSWORD,
            "shop",
            "SELECT GROUP_CONCAT(email ORDER BY id SEPARATOR '\\n') FROM customers"
        ),
        Ok(production_emails().replace('\n', "\\n"))
    );
    prod.stop();
}
