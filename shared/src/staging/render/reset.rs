//! The credentials reset on restored data, with no production credential anywhere.
//!
//! A restored volume keeps production's users and passwords. Before the staging server starts,
//! an init container of the database pod (`credentials-reset`, the database image itself) starts
//! the engine on the restored data directory **local-only**, with no network listener and no
//! password check, sets the staging user's password to the generated one from the Secret
//! `staging-db-credentials`, takes every other login's production password away, and stops the
//! engine. Only then does the database container start the real server. Nothing of production's
//! is read: no admin secret, no Secrets Manager call, nothing copied into the namespace.
//!
//! | engine | local-only start | on the data |
//! | --- | --- | --- |
//! | PostgreSQL | `postgres -c listen_addresses=` (no TCP), a unix socket in a private `mktemp -d` directory, a temporary `hba_file` with `local all all trust`; no archiving, no replication (as the staging server: [`crate::staging::engine::Engine::server_args`]), statements never logged | `ALTER ROLE <user> LOGIN PASSWORD … VALID UNTIL 'infinity'`; `ALTER ROLE … PASSWORD NULL` for every other login role with a password; `ALTER SYSTEM RESET primary_conninfo, primary_slot_name` |
//! | MySQL / MariaDB | `mysqld --skip-grant-tables --skip-networking`, the socket in a private directory, persisted variables not loaded, no replication thread started | `RESET REPLICA ALL` on a copy of a replica (production's source and its replication password are forgotten); `FLUSH PRIVILEGES` (loads the grant tables, which `ALTER USER` needs), `ALTER USER <user>@<host> IDENTIFIED BY … ACCOUNT UNLOCK` for every host of the user, `ALTER USER … ACCOUNT LOCK` for every other account (system accounts and MariaDB roles excepted) |
//! | MongoDB | `mongod` without `--auth`, bound to the pod's loopback only (nothing else runs in the pod yet) | `updateUser` of the staging user in `admin`; every other user gets a random password nobody knows |
//!
//! The password reaches the engine through the environment (`secretKeyRef`) and the client's
//! stdin, never a command line. The init container runs on every start of the pod: the same
//! password is set again, which changes nothing. It meets the `restricted` Pod Security Standard
//! like the database container (same user, no privilege escalation, capabilities dropped) and
//! its failure is said in the pod's status (`FallbackToLogsOnError`): readiness reports it.
//!
//! Its environment:
//!
//! | variable | value |
//! | --- | --- |
//! | `DB_ENGINE` | `postgresql`, `mysql` or `mongodb` |
//! | `DB_DATA_DIR` | the data directory on the restored volume (PostgreSQL: the database container's `PGDATA`) |
//! | `DB_PORT` | the engine's port (the socket's name; MongoDB's loopback port) |
//! | `DB_RESET_TIMEOUT_SECONDS` | how long the engine may take to start (crash recovery): `readyTimeoutMinutes` |
//! | `DB_USERNAME`, `DB_PASSWORD` | from the Secret `staging-db-credentials` |

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, VolumeMount};

use crate::error::{Error, Result};
use crate::staging::engine::{
    Engine, SECRET_KEY_PASSWORD, SECRET_KEY_USERNAME, mysql_isolation, postgresql_isolation,
};
use crate::staging::objects::SECRET_NAME;
use crate::staging::spec::Spec;

/// The init container's name.
pub const CONTAINER_NAME: &str = "credentials-reset";

/// The reset, as a shell script run by the database image (`sh -c`). It reads every value from
/// the environment; the password goes to the client through stdin (a shell builtin writes it),
/// never an argument.
pub fn script(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgresql => POSTGRESQL,
        Engine::Mysql => MYSQL,
        Engine::Mongodb => MONGODB,
        // Never rendered: the parameters refuse resetCredentials for an application.
        Engine::Jenkins | Engine::Nexus => {
            "echo 'snapstage resets database passwords only' >&2; exit 1"
        }
    }
}

/// Shared by the three scripts (after `sig=<signal that stops the engine cleanly>`):
/// - `fail CODE MESSAGE` exits; the EXIT trap stops the engine first, then says the message,
///   so that it is the last line of the log (the pod's termination message);
/// - `wait_for COMMAND...` waits for the command to succeed while the engine (`$pid`) runs, at
///   most `DB_RESET_TIMEOUT_SECONDS`;
/// - `stop` stops the engine and waits for it.
macro_rules! common {
    () => {
        concat!(
            "msg=\n",
            "pid=\n",
            "run=\n",
            "fail() { code=$1; shift; msg=$*; exit \"$code\"; }\n",
            "stop() {\n",
            "  [ -n \"$pid\" ] || return 0\n",
            "  kill \"-$sig\" \"$pid\" 2>/dev/null || :\n",
            "  code=0; wait \"$pid\" || code=$?; pid=\n",
            "  return \"$code\"\n",
            "}\n",
            "finish() {\n",
            "  stop || :\n",
            "  if [ -n \"$run\" ]; then rm -rf \"$run\"; fi\n",
            "  if [ -n \"$msg\" ]; then echo \"credentials reset: $msg\" >&2; fi\n",
            "}\n",
            "trap finish EXIT\n",
            "wait_for() {\n",
            "  i=0\n",
            "  until \"$@\" >/dev/null 2>&1; do\n",
            "    if ! kill -0 \"$pid\" 2>/dev/null; then\n",
            "      code=0; wait \"$pid\" || code=$?; pid=\n",
            "      fail 4 \"the $DB_ENGINE server stopped while starting on the restored data (exit $code); its log is above\"\n",
            "    fi\n",
            "    i=$((i + 1))\n",
            "    if [ \"$i\" -gt \"$DB_RESET_TIMEOUT_SECONDS\" ]; then\n",
            "      fail 4 \"the $DB_ENGINE server did not accept local connections within $DB_RESET_TIMEOUT_SECONDS s (readyTimeoutMinutes)\"\n",
            "    fi\n",
            "    sleep 1\n",
            "  done\n",
            "}\n",
        )
    };
}

const POSTGRESQL: &str = concat!(
    "set -eu\n",
    "sig=INT\n",
    common!(),
    "data=$DB_DATA_DIR\n",
    "[ -s \"$data/PG_VERSION\" ] || fail 3 \"$data holds no PostgreSQL data directory (no PG_VERSION): the restored volume must hold production's data directory there\"\n",
    // As the image's entrypoint does: the server refuses a data directory with group/other access
    // (fsGroup gives it).
    "chmod 0700 \"$data\" 2>/dev/null || :\n",
    "run=$(mktemp -d)\n",
    "printf 'local all all trust\\n' >\"$run/pg_hba.conf\"\n",
    "export PGHOST=\"$run\" PGPORT=\"$DB_PORT\" PGDATABASE=template1\n",
    // No TCP listener, the socket in a private directory, trust only on that socket; isolated
    // from production as the staging server is (no archiving, no replication), and no statement
    // (they hold the password) is logged.
    "postgres -D \"$data\" -c listen_addresses= -c \"port=$DB_PORT\" -c \"unix_socket_directories=$run\" -c \"hba_file=$run/pg_hba.conf\" \\\n",
    "  -c ssl=off ",
    postgresql_isolation!(),
    " -c log_statement=none -c log_min_error_statement=panic -c log_min_duration_statement=-1 &\n",
    "pid=$!\n",
    "wait_for pg_isready --quiet --username=\"$DB_USERNAME\"\n",
    "sql() { psql --no-psqlrc --quiet --no-password --set=ON_ERROR_STOP=1 \"$@\"; }\n",
    "admin=$(sql --username=\"$DB_USERNAME\" --tuples-only --no-align --command='SELECT rolname FROM pg_roles WHERE rolsuper AND rolcanlogin ORDER BY oid LIMIT 1') ||\n",
    "  fail 3 \"cannot log in as $DB_USERNAME (databaseUser) on the restored data: it must be a PostgreSQL role that can log in\"\n",
    "[ -n \"$admin\" ] || fail 3 'the restored data has no superuser that can log in'\n",
    "msg=\"setting the password of $DB_USERNAME failed (psql's error is above)\"\n",
    "sql --username=\"$admin\" <<'SQL'\n",
    "\\set new_user `printenv DB_USERNAME`\n",
    "\\set new_password `printenv DB_PASSWORD`\n",
    "SELECT coalesce(string_agg(rolname, ', ' ORDER BY rolname), 'none') AS others FROM pg_authid WHERE rolcanlogin AND rolpassword IS NOT NULL AND rolname <> :'new_user' \\gset\n",
    "ALTER ROLE :\"new_user\" WITH LOGIN PASSWORD :'new_password' VALID UNTIL 'infinity';\n",
    "SELECT format('ALTER ROLE %I WITH PASSWORD NULL', rolname) FROM pg_authid WHERE rolcanlogin AND rolpassword IS NOT NULL AND rolname <> :'new_user' \\gexec\n",
    // A copy of a standby: the connection to production's primary (it may hold the replication
    // password) leaves postgresql.auto.conf.
    "ALTER SYSTEM RESET primary_conninfo;\n",
    "ALTER SYSTEM RESET primary_slot_name;\n",
    "\\echo credentials reset: password of :new_user set; production passwords removed from: :others\n",
    "SQL\n",
    "msg='PostgreSQL did not shut down cleanly'\n",
    "stop\n",
    "msg=\n",
);

const MYSQL: &str = concat!(
    "set -euf\n",
    "sig=TERM\n",
    common!(),
    "case \"$DB_USERNAME$DB_PASSWORD\" in *[!A-Za-z0-9_]*) fail 2 'the user name and password must be letters, digits and _';; esac\n",
    "data=$DB_DATA_DIR\n",
    "[ -d \"$data/mysql\" ] || fail 3 \"$data holds no MySQL data directory (no mysql schema): the restored volume must hold production's data directory there\"\n",
    "run=$(mktemp -d)\n",
    "sock=$run/mysqld.sock\n",
    // No network, no grant tables (no password asked), the socket in a private directory; the
    // persisted variables of the restored data (mysqld-auto.cnf) cannot turn networking back on.
    "mysqld --datadir=\"$data\" --skip-grant-tables --skip-networking --socket=\"$sock\" --pid-file=\"$run/mysqld.pid\" \\\n",
    "  --general-log=0 --loose-mysqlx=OFF --loose-persisted-globals-load=OFF ",
    mysql_isolation!(),
    " &\n",
    "pid=$!\n",
    "sql() { mysql --socket=\"$sock\" --user=root --batch --raw --skip-column-names \"$@\"; }\n",
    "wait_for sql -e 'SELECT 1'\n",
    "msg=\"reading the accounts failed (the mysql client's error is above)\"\n",
    "roles=\n",
    "if [ \"$(sql -e \"SELECT VERSION() LIKE '%MariaDB%'\")\" = 1 ]; then roles=\"AND is_role <> 'Y'\"; fi\n",
    "accounts() { sql -e \"SELECT CONCAT(QUOTE(user), '@', QUOTE(host)) FROM mysql.user WHERE $1 ORDER BY user, host\"; }\n",
    "targets=$(accounts \"user = '$DB_USERNAME'\")\n",
    "[ -n \"$targets\" ] || fail 3 \"the restored data has no MySQL user $DB_USERNAME (databaseUser)\"\n",
    "others=$(accounts \"user <> '$DB_USERNAME' AND user NOT IN ('mysql.sys', 'mysql.session', 'mysql.infoschema', 'mariadb.sys') $roles\")\n",
    // A copy of a replica: its connection to production's source (host, replication user and
    // password, in master.info or mysql.slave_master_info) is forgotten.
    "msg=\"forgetting production's replication source failed (RESET REPLICA ALL needs MySQL 8.0.22 or MariaDB 10.5 and later; the mysql client's error is above)\"\n",
    "source=\n",
    // Its relay logs too: they hold production's statements (CREATE USER … IDENTIFIED BY …), and
    // RESET knows only those named after this server's host, not production's pod.
    "if [ -n \"$(sql -e 'SHOW REPLICA STATUS')\" ]; then\n",
    "  sql -e 'RESET REPLICA ALL'; set +f; rm -f -- \"$data\"/*-relay-bin.[0-9]* \"$data\"/*-relay-bin.index; set -f\n",
    "  source='; replication source and relay logs forgotten'\n",
    "fi\n",
    "IFS='\n'\n",
    "msg=\"setting the password of $DB_USERNAME failed (the mysql client's error is above)\"\n",
    "{\n",
    // The grant tables, loaded now: ALTER USER needs them.
    "  echo 'FLUSH PRIVILEGES;'\n",
    "  for a in $targets; do echo \"ALTER USER $a IDENTIFIED BY '$DB_PASSWORD' ACCOUNT UNLOCK;\"; done\n",
    "  for a in $others; do echo \"ALTER USER $a ACCOUNT LOCK;\"; done\n",
    "} | sql\n",
    "set_on=$(printf '%s, ' $targets)\n",
    "locked=$(printf '%s, ' $others)\n",
    "set_on=${set_on%, }\n",
    "locked=${locked%, }\n",
    "echo \"credentials reset: password of $DB_USERNAME set on $set_on; accounts locked: ${locked:-none}$source\"\n",
    "msg='the MySQL server did not shut down cleanly'\n",
    "stop\n",
    "msg=\n",
);

const MONGODB: &str = concat!(
    "set -eu\n",
    "sig=TERM\n",
    common!(),
    "data=$DB_DATA_DIR\n",
    "run=$(mktemp -d)\n",
    // Without --auth, on the pod's loopback only: the database container has not started, so
    // nothing else in the pod can connect.
    "mongod --dbpath \"$data\" --bind_ip 127.0.0.1 --port \"$DB_PORT\" --unixSocketPrefix \"$run\" &\n",
    "pid=$!\n",
    "wait_for mongosh --quiet --norc --port \"$DB_PORT\" --eval 'quit(db.adminCommand({ ping: 1 }).ok ? 0 : 1)'\n",
    "msg=\"setting the password of $DB_USERNAME failed (mongosh's error is above)\"\n",
    "mongosh --quiet --norc --port \"$DB_PORT\" --eval '\n",
    "const e = process.env;\n",
    "const admin = db.getSiblingDB(\"admin\");\n",
    "if (!admin.system.users.findOne({ user: e.DB_USERNAME, db: \"admin\" })) {\n",
    "  print(`the restored data has no MongoDB user ${e.DB_USERNAME} in admin (databaseUser)`);\n",
    "  quit(3);\n",
    "}\n",
    "admin.updateUser(e.DB_USERNAME, { pwd: e.DB_PASSWORD });\n",
    "const others = admin.system.users.find({ $nor: [{ user: e.DB_USERNAME, db: \"admin\" }] }).toArray();\n",
    "for (const u of others) {\n",
    "  db.getSiblingDB(u.db).updateUser(u.user, { pwd: require(\"crypto\").randomBytes(32).toString(\"hex\") });\n",
    "}\n",
    "print(`credentials reset: password of ${e.DB_USERNAME} set; random passwords for: ${others.map((u) => u.db + \".\" + u.user).join(\", \") || \"none\"}`);\n",
    "'\n",
    "msg='mongod did not shut down cleanly'\n",
    "stop\n",
    "msg=\n",
);

fn literal(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

/// The data directory the server of `db` uses on the volume mounted at `mount`: PostgreSQL's
/// `PGDATA` when the container sets it, otherwise the mount itself.
fn data_dir(engine: Engine, db: &Container, mount: &VolumeMount) -> String {
    let pgdata = db
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "PGDATA")
        .and_then(|e| e.value.clone())
        .filter(|v| !v.is_empty());
    match (engine, pgdata) {
        (Engine::Postgresql, Some(p)) => p,
        _ => mount.mount_path.clone(),
    }
}

/// The init container for the database container `db`, which mounts the restored data with
/// `mount`: the same image, user, resources and mount.
pub fn init_container(spec: &Spec, db: &Container, mount: &VolumeMount) -> Container {
    let engine = spec.engine;
    let env = vec![
        literal("DB_ENGINE", engine.as_str().into()),
        literal("DB_DATA_DIR", data_dir(engine, db, mount)),
        literal("DB_PORT", engine.port().to_string()),
        literal(
            "DB_RESET_TIMEOUT_SECONDS",
            (u32::from(spec.ready_timeout_minutes) * 60).to_string(),
        ),
        crate::staging::render::parts::secret_env("DB_USERNAME", SECRET_NAME, SECRET_KEY_USERNAME),
        crate::staging::render::parts::secret_env("DB_PASSWORD", SECRET_NAME, SECRET_KEY_PASSWORD),
    ];
    Container {
        name: CONTAINER_NAME.into(),
        image: db.image.clone().or_else(|| Some(spec.image.clone())),
        image_pull_policy: db.image_pull_policy.clone(),
        command: Some(vec!["sh".into(), "-c".into(), script(engine).into()]),
        env: Some(env),
        volume_mounts: Some(vec![mount.clone()]),
        resources: db.resources.clone(),
        security_context: Some(
            db.security_context
                .clone()
                .unwrap_or_else(crate::staging::render::parts::restricted_container),
        ),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// Adds the reset as the last init container of `pod`, for the first container that mounts
/// PVC `claim`. `what` names the workload in errors.
pub fn add_to(spec: &Spec, pod: &mut PodSpec, claim: &str, what: &str) -> Result<()> {
    let volumes: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == claim)
        })
        .map(|v| v.name.as_str())
        .collect();
    let found = pod.containers.iter().find_map(|c| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| volumes.contains(&m.name.as_str()))
            .map(|m| (c, m))
    });
    let Some((db, mount)) = found else {
        return Err(Error::parameter(
            "resetCredentials",
            format!(
                "{what}: no container mounts the PVC {claim}; the credentials reset runs as an init container beside the database container that mounts it (or set resetCredentials to false)"
            ),
        ));
    };
    let reset = init_container(spec, db, mount);
    let inits = pod.init_containers.get_or_insert_with(Vec::new);
    if inits.iter().any(|c| c.name == CONTAINER_NAME) {
        return Err(Error::parameter(
            "resetCredentials",
            format!(
                "{what}: an init container is already named {CONTAINER_NAME}, the name of snapstage's credentials reset; rename it"
            ),
        ));
    }
    inits.push(reset);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::staging::fixtures::plan_for;
    use serde_json::json;

    fn reset_of(engine: &str) -> (Container, Container) {
        let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "engine": engine}));
        let pod = p
            .rendered
            .b()
            .stateful_set
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap();
        let inits = pod.init_containers.unwrap();
        assert_eq!(inits.len(), 1, "{engine}");
        (inits[0].clone(), pod.containers[0].clone())
    }

    #[test]
    fn the_reset_runs_before_the_server_with_the_generated_credentials_only() {
        for (engine, local_only, data) in [
            (
                "postgresql",
                "-c listen_addresses= ",
                "/var/lib/postgresql/data/pgdata",
            ),
            (
                "mysql",
                "--skip-grant-tables --skip-networking",
                "/var/lib/mysql",
            ),
            ("mongodb", "--bind_ip 127.0.0.1", "/data/db"),
        ] {
            let (reset, db) = reset_of(engine);
            assert_eq!(reset.name, "credentials-reset");
            assert_eq!(reset.image, db.image, "{engine}: the database image");
            assert_eq!(reset.volume_mounts, db.volume_mounts, "{engine}");
            assert_eq!(reset.security_context, db.security_context, "{engine}");
            assert_eq!(
                reset.termination_message_policy.as_deref(),
                Some("FallbackToLogsOnError")
            );
            let cmd = reset.command.unwrap();
            assert_eq!(cmd[..2], ["sh", "-c"]);
            assert!(cmd[2].contains(local_only), "{engine}: {}", cmd[2]);
            let env = reset.env.unwrap();
            let get = |n: &str| env.iter().find(|e| e.name == n).unwrap().clone();
            assert_eq!(get("DB_DATA_DIR").value.as_deref(), Some(data), "{engine}");
            assert_eq!(
                get("DB_RESET_TIMEOUT_SECONDS").value.as_deref(),
                Some("900")
            );
            for (name, key) in [("DB_USERNAME", "username"), ("DB_PASSWORD", "password")] {
                let v = get(name);
                assert_eq!(v.value, None, "{name} is never literal");
                let r = v.value_from.unwrap().secret_key_ref.unwrap();
                assert_eq!((r.name.as_str(), r.key.as_str()), (SECRET_NAME, key));
            }
            // Only the generated credentials: no other Secret, no admin.
            assert!(
                env.iter()
                    .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
                    .all(|r| r.name == SECRET_NAME),
                "{engine}: {env:?}"
            );
            assert!(!cmd[2].contains("ADMIN"), "{engine}");
        }
    }

    #[test]
    fn no_reset_no_init_container() {
        let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "resetCredentials": false}));
        let pod = p
            .rendered
            .b()
            .stateful_set
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(pod.init_containers, None);
    }

    #[test]
    fn postgresql_takes_the_data_directory_from_pgdata() {
        let mount = VolumeMount {
            name: "data".into(),
            mount_path: "/pg".into(),
            ..Default::default()
        };
        let mut db = Container::default();
        assert_eq!(data_dir(Engine::Postgresql, &db, &mount), "/pg");
        db.env = Some(vec![literal("PGDATA", "/pg/main".into())]);
        assert_eq!(data_dir(Engine::Postgresql, &db, &mount), "/pg/main");
        assert_eq!(data_dir(Engine::Mysql, &db, &mount), "/pg");
    }
}
