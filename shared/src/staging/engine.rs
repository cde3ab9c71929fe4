//! What each engine needs from Kubernetes: image, port, data directory, user, probe, and which
//! credentials the image reads from the Secret.
//!
//! Two kinds of engine: databases (`postgresql`, `mysql`, `mongodb`: snapstage's own Service and
//! StatefulSet, credentials in a Secret, the credentials reset) and CI applications (`jenkins`,
//! `nexus`: a built-in template, [`crate::staging::render::apps`], probed over HTTP on their
//! health endpoints, no Secret: they keep their own users in their home / blob store).
//!
//! The official images run as uid/gid 999 (`postgres`, `mysql`, `mongodb`), so the pod runs as
//! non-root with that user. Health checks need no credentials: `pg_isready` and `mysqladmin ping`
//! report a running server even when access is denied, and MongoDB's `ping` needs no auth — the
//! restored volume keeps production's users, which the staging Secret does not know.

use serde::Deserialize;

/// The options every PostgreSQL server snapstage starts on a copy of production's data runs with
/// (the database container and the credentials reset), whatever production's `postgresql.conf`
/// and `postgresql.auto.conf` on the restored volume say, so that the copy never acts as
/// production: it archives no WAL (production's `archive_command` would write this copy's
/// segments into production's archive, under the names production is about to use), streams from
/// no primary and holds no primary's slot (a copy of a standby), waits for no synchronous standby
/// (every commit would hang), and runs no logical-replication subscription (it would consume
/// production's slot on the publisher).
macro_rules! postgresql_isolation {
    () => {
        "-c archive_mode=off -c primary_conninfo= -c primary_slot_name= -c synchronous_standby_names= -c max_logical_replication_workers=0"
    };
}
pub(crate) use postgresql_isolation;

/// The same for MySQL and MariaDB (`loose-`: each server ignores the names it does not know —
/// MySQL ≥ 8.0.26 `skip-replica-start`, MariaDB `skip-slave-start`): no replication thread
/// connects to production's primary with the credentials the copy holds, and a member of a
/// group replication group does not rejoin production's group.
macro_rules! mysql_isolation {
    () => {
        "--loose-skip-replica-start --loose-skip-slave-start --loose-group-replication-start-on-boot=OFF"
    };
}
pub(crate) use mysql_isolation;

/// The Secret keys the StatefulSet reads.
pub const SECRET_KEY_USERNAME: &str = "username";
pub const SECRET_KEY_PASSWORD: &str = "password";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    #[serde(alias = "postgres")]
    Postgresql,
    Mysql,
    #[serde(alias = "mongo")]
    Mongodb,
    /// Jenkins controller on its restored `JENKINS_HOME` (a built-in template).
    Jenkins,
    /// Sonatype Nexus Repository on its restored data directory with its blob store (a built-in
    /// template).
    Nexus,
}

/// An environment variable of the database container: a literal, or a key of the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    Value(&'static str),
    SecretKey(&'static str),
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgresql => "postgresql",
            Self::Mysql => "mysql",
            Self::Mongodb => "mongodb",
            Self::Jenkins => "jenkins",
            Self::Nexus => "nexus",
        }
    }

    /// Every engine, databases first.
    pub const ALL: [Engine; 5] = [
        Self::Postgresql,
        Self::Mysql,
        Self::Mongodb,
        Self::Jenkins,
        Self::Nexus,
    ];

    /// True for the CI applications (Jenkins, Nexus): a built-in template, no database
    /// credentials, weeks of lifetime by default.
    pub fn is_app(self) -> bool {
        matches!(self, Self::Jenkins | Self::Nexus)
    }

    /// What it is, in messages: "database" or "application".
    pub fn kind(self) -> &'static str {
        if self.is_app() {
            "application"
        } else {
            "database"
        }
    }

    /// The `app.kubernetes.io/component` label of its pod.
    pub fn component(self) -> &'static str {
        if self.is_app() {
            "application"
        } else {
            "database"
        }
    }

    /// The HTTP path its readiness probe asks (applications only; databases are probed with
    /// a command, [`Engine::probe_command`]).
    ///
    /// - Jenkins: `GET /login` answers 200 once Jenkins is fully up (during start-up every page
    ///   answers 503 "Jenkins is getting ready to work"), without authentication.
    /// - Nexus: `GET /service/rest/v1/status/writable` ("ready for write operations", Nexus
    ///   ≥ 3.16, no authentication; 200 on success, 503 on failure), Sonatype's documented
    ///   health check (<https://support.sonatype.com/hc/en-us/articles/226254487>); the liveness
    ///   probe asks `/service/rest/v1/status` ("ready for read operations").
    pub fn health_path(self) -> Option<&'static str> {
        match self {
            Self::Jenkins => Some("/login"),
            Self::Nexus => Some("/service/rest/v1/status/writable"),
            _ => None,
        }
    }

    /// The image used unless `image` overrides it. Its major version must be able to open the
    /// restored data files: set `image` to production's version.
    pub fn default_image(self) -> &'static str {
        match self {
            Self::Postgresql => "postgres:17",
            Self::Mysql => "mysql:8.4",
            Self::Mongodb => "mongo:7.0",
            Self::Jenkins => "jenkins/jenkins:2.479.3-lts-jdk17",
            Self::Nexus => "sonatype/nexus3:3.75.1",
        }
    }

    pub fn port(self) -> i32 {
        match self {
            Self::Postgresql => 5432,
            Self::Mysql => 3306,
            Self::Mongodb => 27017,
            Self::Jenkins => 8080,
            Self::Nexus => 8081,
        }
    }

    /// Where the data volume is mounted (the image's data directory).
    pub fn mount_path(self) -> &'static str {
        match self {
            Self::Postgresql => "/var/lib/postgresql/data",
            Self::Mysql => "/var/lib/mysql",
            Self::Mongodb => "/data/db",
            Self::Jenkins => "/var/jenkins_home",
            Self::Nexus => "/nexus-data",
        }
    }

    /// The image's user (uid and gid): 999 in the database images, `jenkins` (1000) in
    /// jenkins/jenkins, `nexus` (200) in sonatype/nexus3.
    pub fn user_id(self) -> i64 {
        match self {
            Self::Jenkins => 1000,
            Self::Nexus => 200,
            _ => 999,
        }
    }

    /// The health check of a database, run in the container (exec, no shell, no credentials);
    /// empty for an application (probed over HTTP: [`Engine::health_path`]).
    pub fn probe_command(self) -> Vec<String> {
        let port = self.port().to_string();
        let cmd: Vec<&str> = match self {
            Self::Postgresql => vec!["pg_isready", "--host=127.0.0.1", "--port", &port, "--quiet"],
            Self::Mysql => vec![
                "mysqladmin",
                "ping",
                "--host=127.0.0.1",
                "--port",
                &port,
                "--silent",
            ],
            Self::Mongodb => vec![
                "mongosh",
                "--quiet",
                "--norc",
                "--port",
                &port,
                "--eval",
                "quit(db.adminCommand({ ping: 1 }).ok ? 0 : 1)",
            ],
            Self::Jenkins | Self::Nexus => vec![],
        };
        cmd.into_iter().map(String::from).collect()
    }

    /// The database container's arguments: the server options that keep a copy of production
    /// from acting as production (see `postgresql_isolation`, `mysql_isolation`). The
    /// official images take options as arguments (`docker-entrypoint.sh`: an argument that
    /// starts with `-` is an option of the server). MongoDB's image starts a standalone `mongod`
    /// (no `--replSet`): a copy of a replica set member joins no set.
    pub fn server_args(self) -> Vec<String> {
        let options: &str = match self {
            Self::Postgresql => postgresql_isolation!(),
            Self::Mysql => mysql_isolation!(),
            Self::Mongodb | Self::Jenkins | Self::Nexus => "",
        };
        options.split_whitespace().map(String::from).collect()
    }

    /// The container's environment. Credentials only ever come from the Secret.
    pub fn env(self) -> Vec<(&'static str, EnvSource)> {
        use EnvSource::{SecretKey, Value};
        match self {
            Self::Postgresql => vec![
                ("POSTGRES_USER", SecretKey(SECRET_KEY_USERNAME)),
                ("POSTGRES_PASSWORD", SecretKey(SECRET_KEY_PASSWORD)),
                // A subdirectory, as the image documents for mount points (lost+found).
                ("PGDATA", Value("/var/lib/postgresql/data/pgdata")),
            ],
            Self::Mysql => vec![("MYSQL_ROOT_PASSWORD", SecretKey(SECRET_KEY_PASSWORD))],
            Self::Mongodb => vec![
                ("MONGO_INITDB_ROOT_USERNAME", SecretKey(SECRET_KEY_USERNAME)),
                ("MONGO_INITDB_ROOT_PASSWORD", SecretKey(SECRET_KEY_PASSWORD)),
            ],
            // Their own template sets their environment; no credentials.
            Self::Jenkins | Self::Nexus => vec![],
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_engine_has_its_port_and_probe() {
        assert_eq!(Engine::Postgresql.port(), 5432);
        assert_eq!(Engine::Mysql.port(), 3306);
        assert_eq!(Engine::Mongodb.port(), 27017);
        assert_eq!(Engine::Postgresql.probe_command()[0], "pg_isready");
        assert_eq!(Engine::Mysql.probe_command()[..2], ["mysqladmin", "ping"]);
        let mongo = Engine::Mongodb.probe_command();
        assert_eq!(mongo[0], "mongosh");
        assert!(
            mongo.last().is_some_and(|e| e.contains("ping")),
            "{mongo:?}"
        );
        for e in [Engine::Postgresql, Engine::Mysql, Engine::Mongodb] {
            assert!(e.probe_command().contains(&e.port().to_string()), "{e}");
        }
    }

    #[test]
    fn passwords_come_only_from_the_secret() {
        for e in [Engine::Postgresql, Engine::Mysql, Engine::Mongodb] {
            for (name, source) in e.env() {
                if name.contains("PASSWORD") {
                    assert_eq!(
                        source,
                        EnvSource::SecretKey(SECRET_KEY_PASSWORD),
                        "{e} {name}"
                    );
                }
            }
            assert!(e.env().iter().any(|(n, _)| n.contains("PASSWORD")), "{e}");
        }
    }

    #[test]
    fn applications_are_probed_over_http_on_their_own_port_and_user() {
        for (e, port, uid, path) in [
            (Engine::Jenkins, 8080, 1000, "/login"),
            (Engine::Nexus, 8081, 200, "/service/rest/v1/status/writable"),
        ] {
            assert!(e.is_app() && e.kind() == "application", "{e}");
            assert_eq!(
                (e.port(), e.user_id(), e.health_path()),
                (port, uid, Some(path))
            );
            assert!(e.probe_command().is_empty() && e.env().is_empty(), "{e}");
        }
        for e in [Engine::Postgresql, Engine::Mysql, Engine::Mongodb] {
            assert!(!e.is_app() && e.health_path().is_none(), "{e}");
        }
        let e: Engine = serde_json::from_str("\"jenkins\"").unwrap();
        assert_eq!(e, Engine::Jenkins);
        let e: Engine = serde_json::from_str("\"nexus\"").unwrap();
        assert_eq!(e, Engine::Nexus);
    }

    #[test]
    fn aliases_are_accepted() {
        let e: Engine = serde_json::from_str("\"postgres\"").unwrap();
        assert_eq!(e, Engine::Postgresql);
        let e: Engine = serde_json::from_str("\"mongo\"").unwrap();
        assert_eq!(e, Engine::Mongodb);
    }
}
