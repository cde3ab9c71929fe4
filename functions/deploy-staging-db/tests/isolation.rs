//! A copy of production never acts as production, on real engines (Debian's PostgreSQL and
//! MariaDB, see `engines.rs` and `engines_kit`): the restored volume holds production's whole
//! configuration — its WAL archive command, its replication source and the password for it — and
//! the staging server starts on it. The database container's arguments as snapstage renders them
//! (the official images pass arguments that start with `-` to the server) and the credentials
//! reset keep the copy from writing into production's WAL archive, from replicating from
//! production's primary, and from keeping production's replication password.
//!
//! PostgreSQL's hazard is shown first on a control copy started as the image would start it
//! without snapstage's arguments (what the staging server did before), so the test fails without
//! the behaviour it checks. MariaDB: the copy of a replica holds production's replication
//! password until the reset forgets the source (a control copy here did not restart its
//! replication threads by itself, so `skip-slave-start` is asserted as rendered only).

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engines_kit;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use engines_kit::instance::{Mariadb, Postgres};
use engines_kit::staging::{Staging, run};
use engines_kit::{Engines, TempDir, crash_consistent_copy, engines, wait_until};
use serde_json::json;

const ADMIN_PASSWORD: &str = "Pr0d-Admin-7f3k";
const APP_PASSWORD: &str = "Pr0d-App-9q2w";
/// Production's replication user's password: a credential that logs in to production.
const REPL_PASSWORD: &str = "Pr0d-Repl-5t6y";
const WAIT: Duration = Duration::from_secs(60);

fn staging(engine: &str, user: &str) -> Staging {
    Staging::new(
        json!({"volumeId": "vol-0123456789abcdef0", "availabilityZone": "us-east-1a",
                        "engine": engine, "databaseUser": user}),
    )
}

/// The database container's arguments, as rendered.
fn server_options(s: &Staging) -> Vec<String> {
    let (pod, _) = s.database_pod();
    pod.containers[0].args.clone().unwrap_or_default()
}

/// Every file of a directory and its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The files under `dir` (recursively) whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

/// `pg_stat_archiver`'s archived count.
fn archived(pg: &Postgres, user: &str, password: &str) -> i64 {
    pg.sql(
        user,
        password,
        "postgres",
        "SELECT archived_count FROM pg_stat_archiver",
    )
    .unwrap()
    .parse()
    .unwrap()
}

/// A write, then the next WAL segment (the finished one is handed to the archiver).
fn write_and_switch(pg: &Postgres, user: &str, password: &str, n: i32) {
    pg.sql(
        user,
        password,
        "postgres",
        &format!("INSERT INTO orders VALUES ({n}); SELECT pg_switch_wal();"),
    )
    .unwrap();
}

#[test]
fn postgresql_staging_never_writes_into_productions_wal_archive() {
    let Some(e) = engines("postgresql_staging_never_writes_into_productions_wal_archive") else {
        return;
    };
    let root = TempDir::new("isolation-pg");
    let archive = root.dir("production-wal-archive");
    let (prod_vol, staging_vol, control_vol) = (
        root.dir("production"),
        root.dir("staging"),
        root.dir("control"),
    );
    let data = |vol: &Path| vol.join("pgdata");

    // Production archives its WAL with the PostgreSQL documentation's example command.
    let prod = Postgres::init(
        &e,
        &data(&prod_vol),
        ADMIN_PASSWORD,
        &root.dir("production-run"),
    );
    for sql in [
        "ALTER SYSTEM SET archive_mode = on".to_string(),
        format!(
            "ALTER SYSTEM SET archive_command = 'cp %p {}/%f'",
            archive.display()
        ),
    ] {
        prod.sql("admin", ADMIN_PASSWORD, "postgres", &sql).unwrap();
    }
    prod.stop();
    let prod = Postgres::start(
        &e,
        &data(&prod_vol),
        &root.dir("production-run"),
        "production postgres",
    );
    prod.sql(
        "admin",
        ADMIN_PASSWORD,
        "postgres",
        "CREATE TABLE orders (id int)",
    )
    .unwrap();
    let switch_and_archive = |n: i32, what: &str| {
        let before = archived(&prod, "admin", ADMIN_PASSWORD);
        write_and_switch(&prod, "admin", ADMIN_PASSWORD, n);
        wait_until(what, WAIT, || {
            match archived(&prod, "admin", ADMIN_PASSWORD) > before {
                true => Ok(()),
                false => Err("not yet".into()),
            }
        });
    };
    switch_and_archive(1, "production archives a segment");

    // The snapshot, cut while production writes its next segment; production then archives it.
    crash_consistent_copy(&prod.server, &prod_vol, &[&staging_vol, &control_vol]);
    switch_and_archive(2, "production archives the segment of the snapshot");
    let production_archive = files(&archive);

    // The staging server as snapstage runs it: the reset, then the database container.
    let s = staging("postgresql", "admin");
    let options = server_options(&s);
    assert!(
        options.windows(2).any(|w| w == ["-c", "archive_mode=off"]),
        "{options:?}"
    );
    let (pod, reset) = s.database_pod();
    let ran = run(&pod, &reset, &s.world(&e, &staging_vol, &[]));
    assert_eq!(ran.code, 0, "{}", ran.output());
    let st = Postgres::start_with(
        &e,
        &data(&staging_vol),
        &root.dir("staging-run"),
        "staging",
        &options,
    );
    assert_eq!(
        st.sql("admin", &s.password, "postgres", "SHOW archive_mode"),
        Ok("off".into())
    );
    for n in [10, 11] {
        write_and_switch(&st, "admin", &s.password, n);
    }
    // A clean shutdown archives whatever an archiver still has to: nothing may arrive.
    st.stop();
    assert!(
        files(&archive) == production_archive,
        "the staging server changed production's WAL archive"
    );

    // The control: the copy started with production's configuration writes this copy's segment
    // over the one production archived under the same name.
    let control = Postgres::start(&e, &data(&control_vol), &root.dir("control-run"), "control");
    write_and_switch(&control, "admin", ADMIN_PASSWORD, 20);
    wait_until("the control copy archives", WAIT, || {
        match archived(&control, "admin", ADMIN_PASSWORD) >= 1 {
            true => Ok(()),
            false => Err("not yet".into()),
        }
    });
    control.stop();
    let overwritten: Vec<_> = files(&archive)
        .into_iter()
        .filter(|(name, bytes)| production_archive.get(name).is_some_and(|b| b != bytes))
        .map(|(name, _)| name)
        .collect();
    assert!(
        !overwritten.is_empty(),
        "the control copy was expected to overwrite a production segment in the archive"
    );

    // Production itself was never stopped and still takes its own password.
    assert_eq!(
        prod.sql(
            "admin",
            ADMIN_PASSWORD,
            "postgres",
            "SELECT count(*) FROM orders"
        ),
        Ok("2".into())
    );
    prod.stop();
}

const SLAVE_RUNNING: &str = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'Slave_running'";

/// The replicas connected to `primary` (its binlog dump threads).
fn replicas_of(primary: &Mariadb) -> usize {
    primary
        .sql_root(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'",
        )
        .unwrap()
        .parse()
        .unwrap()
}

fn mariadb(e: &Engines, root: &TempDir, name: &str, options: &[&str]) -> Mariadb {
    let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    Mariadb::init_with(
        e,
        &root.dir(name),
        &root.dir(&format!("{name}-run")),
        name,
        &options,
    )
}

#[test]
fn mariadb_copy_of_a_replica_never_replicates_from_production() {
    let Some(e) = engines("mariadb_copy_of_a_replica_never_replicates_from_production") else {
        return;
    };
    let root = TempDir::new("isolation-mariadb");

    // Production: a primary and a replica of it; the snapshot is of the replica's volume.
    let primary = mariadb(
        &e,
        &root,
        "primary",
        &["--server-id=100", "--log-bin=mysql-bin"],
    );
    let replica = mariadb(&e, &root, "replica", &["--server-id=2"]);
    primary
        .sql_root(&format!(
            "CREATE USER 'repl'@'%' IDENTIFIED BY '{REPL_PASSWORD}';
             GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
             CREATE USER 'app'@'%' IDENTIFIED BY '{APP_PASSWORD}';
             CREATE DATABASE shop;
             GRANT ALL ON shop.* TO 'app'@'%';
             GRANT REPLICATION CLIENT, SLAVE MONITOR ON *.* TO 'app'@'%';
             CREATE TABLE shop.orders (id int PRIMARY KEY);
             INSERT INTO shop.orders VALUES (1), (2), (3);"
        ))
        .unwrap();
    replica
        .sql_root(&format!(
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'repl',
                 MASTER_PASSWORD = '{REPL_PASSWORD}', MASTER_USE_GTID = slave_pos;
             START SLAVE;",
            primary.port
        ))
        .unwrap();
    wait_until("the replica catches up", WAIT, || {
        match replica.sql_root("SELECT COUNT(*) FROM shop.orders") {
            Ok(n) if n == "3" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(replicas_of(&primary), 1);

    let (staging_vol, args_vol, control_vol) = (
        root.dir("staging"),
        root.dir("args-only"),
        root.dir("control"),
    );
    crash_consistent_copy(
        &replica.server,
        &replica.data,
        &[&staging_vol, &args_vol, &control_vol],
    );
    assert!(
        !files_holding(&staging_vol, REPL_PASSWORD).is_empty(),
        "the copy of a replica holds production's replication password"
    );

    // The database container's arguments (what the reset and the staging server run with).
    let s = staging("mysql", "app");
    let options = server_options(&s);
    assert!(
        options.iter().any(|o| o == "--loose-skip-slave-start"),
        "{options:?}"
    );

    // The reset forgets production's source and its password; the staging server has none.
    let (pod, reset) = s.database_pod();
    let ran = run(&pod, &reset, &s.world(&e, &staging_vol, &[]));
    assert_eq!(ran.code, 0, "{}", ran.output());
    assert!(
        ran.stdout
            .contains("; replication source and relay logs forgotten"),
        "{}",
        ran.output()
    );
    assert_eq!(
        files_holding(&staging_vol, REPL_PASSWORD),
        Vec::<String>::new(),
        "production's replication password is gone from the staging volume"
    );
    let st = Mariadb::start_with(
        &e,
        &staging_vol,
        &root.dir("staging-run"),
        "staging",
        &options,
    );
    // (Every account but the staging user is locked now: app asks.)
    let app = |sql: &str| st.sql("app", &s.password, "shop", sql);
    assert_eq!(app("SHOW SLAVE STATUS"), Ok(String::new()));
    assert_eq!(app(SLAVE_RUNNING), Ok("OFF".into()));
    assert_eq!(
        app("SELECT COUNT(*) FROM orders"),
        Ok("3".into()),
        "the staging user logs in with the generated password and finds the data"
    );
    st.stop();

    // Production's replica still replicates.
    primary
        .sql_root("INSERT INTO shop.orders VALUES (4)")
        .unwrap();
    wait_until(
        "production's replica still replicates",
        WAIT,
        || match replica.sql_root("SELECT COUNT(*) FROM shop.orders") {
            Ok(n) if n == "4" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    replica.stop();
    primary.stop();
}
