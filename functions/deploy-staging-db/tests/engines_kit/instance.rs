//! Database instances: "production" made from scratch with users and data, and the staging server
//! started on a copy of its data directory (what the database container does). Clients log in over
//! TCP on loopback with a password, as an application would.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Engines, Server, chown_db, free_port, wait_until};

/// A running PostgreSQL server.
pub struct Postgres {
    pub server: Server,
    pub port: u16,
    pub data: PathBuf,
    bin: PathBuf,
}

impl Postgres {
    /// `initdb` of a new cluster in `data` (a subdirectory of the volume, as the images'
    /// `PGDATA` is), with the superuser `admin` and password authentication on TCP.
    pub fn init(e: &Engines, data: &Path, admin_password: &str, scratch: &Path) -> Self {
        let pwfile = scratch.join("initdb-password");
        fs::write(&pwfile, admin_password).unwrap();
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600)).unwrap();
        chown_db(&pwfile);
        let log = scratch.join("initdb.log");
        let mut initdb = Server::spawn(
            "initdb",
            &e.pg_bin.join("initdb"),
            &[
                format!("--pgdata={}", data.display()),
                "--username=admin".into(),
                format!("--pwfile={}", pwfile.display()),
                "--auth-local=scram-sha-256".into(),
                "--auth-host=scram-sha-256".into(),
                "--encoding=UTF8".into(),
                "--no-instructions".into(),
            ],
            &[
                ("PATH", e.image_path()),
                ("HOME", "/".into()),
                ("LANG", "C.UTF-8".into()),
            ],
            log,
        );
        wait_until("initdb", Duration::from_secs(120), || {
            match initdb.running() {
                true => Err("running".into()),
                false => Ok(()),
            }
        });
        let _ = fs::remove_file(&pwfile);
        assert!(
            data.join("PG_VERSION").exists(),
            "initdb failed: {}",
            initdb.log_text()
        );
        Self::start(e, data, scratch, "production postgres")
    }

    /// Starts the server of `data` on a free loopback port (its socket in `scratch`).
    pub fn start(e: &Engines, data: &Path, scratch: &Path, name: &str) -> Self {
        Self::start_with(e, data, scratch, name, &[])
    }

    /// [`Postgres::start`] with `options` last, as the official image's entrypoint passes a
    /// container's arguments that start with `-` to the server (`postgres "$@"`).
    pub fn start_with(
        e: &Engines,
        data: &Path,
        scratch: &Path,
        name: &str,
        options: &[String],
    ) -> Self {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "-D".into(),
            data.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            format!("port={port}"),
            "-c".into(),
            format!("unix_socket_directories={}", scratch.display()),
        ];
        args.extend(options.iter().cloned());
        let server = Server::spawn(
            name,
            &e.pg_bin.join("postgres"),
            &args,
            &[("PATH", e.image_path()), ("LANG", "C.UTF-8".into())],
            scratch.join(format!("{}.log", name.replace(' ', "-"))),
        );
        let pg = Self {
            server,
            port,
            data: data.to_path_buf(),
            bin: e.pg_bin.clone(),
        };
        let isready = e.pg_bin.join("pg_isready");
        let mut pg = pg;
        wait_until(name, Duration::from_secs(120), || {
            if !pg.server.running() {
                panic!("{name} stopped: {}", pg.server.log_text());
            }
            let ok = Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .map_err(|e| e.to_string())?;
            ok.success().then_some(()).ok_or_else(|| "not ready".into())
        });
        pg
    }

    /// Runs `sql` as `user` with `password` in `db` over TCP: its output, or psql's error.
    pub fn sql(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", db, "-c", sql])
            .env_clear()
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .map_err(|e| e.to_string())?;
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        }
    }

    /// Stops the server as `pg_ctl stop -m fast` does (SIGINT).
    pub fn stop(mut self) {
        self.server.stop("INT");
    }
}

/// A running MariaDB server.
pub struct Mariadb {
    pub server: Server,
    pub port: u16,
    pub socket: PathBuf,
    pub data: PathBuf,
}

impl Mariadb {
    /// `mariadb-install-db` of a new data directory, started; root is reachable on the socket
    /// without a password until [`Mariadb::sql_root`]'s setup gives it one.
    pub fn init(e: &Engines, data: &Path, scratch: &Path) -> Self {
        Self::init_with(e, data, scratch, "production mariadb", &[])
    }

    /// [`Mariadb::init`], the server started as `name` with `options`.
    pub fn init_with(
        e: &Engines,
        data: &Path,
        scratch: &Path,
        name: &str,
        options: &[String],
    ) -> Self {
        let log = scratch.join(format!("install-db-{}.log", name.replace(' ', "-")));
        let mut install = Server::spawn(
            "mariadb-install-db",
            Path::new("/usr/bin/mariadb-install-db"),
            &[
                format!("--datadir={}", data.display()),
                "--auth-root-authentication-method=normal".into(),
                "--skip-test-db".into(),
            ],
            &[("PATH", e.image_path()), ("HOME", "/".into())],
            log,
        );
        wait_until(
            "mariadb-install-db",
            Duration::from_secs(120),
            || match install.running() {
                true => Err("running".into()),
                false => Ok(()),
            },
        );
        assert!(
            data.join("mysql").is_dir(),
            "mariadb-install-db failed: {}",
            install.log_text()
        );
        Self::start_with(e, data, scratch, name, options)
    }

    /// Starts the server of `data` on a free loopback port, with the machine's configuration (as
    /// the image's), its socket in `scratch`.
    pub fn start(e: &Engines, data: &Path, scratch: &Path, name: &str) -> Self {
        Self::start_with(e, data, scratch, name, &[])
    }

    /// [`Mariadb::start`] with `options` last, as the official image's entrypoint passes a
    /// container's arguments that start with `-` to the server (`mariadbd "$@"`).
    pub fn start_with(
        e: &Engines,
        data: &Path,
        scratch: &Path,
        name: &str,
        options: &[String],
    ) -> Self {
        let port = free_port();
        let slug = name.replace(' ', "-");
        let socket = scratch.join(format!("{slug}.sock"));
        let mut args = vec![
            format!("--datadir={}", data.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={}", socket.display()),
            format!(
                "--pid-file={}",
                scratch.join(format!("{slug}.pid")).display()
            ),
        ];
        args.extend(options.iter().cloned());
        let server = Server::spawn(
            name,
            &e.mysql_sbin.join("mariadbd"),
            &args,
            &[("PATH", e.image_path()), ("HOME", "/".into())],
            scratch.join(format!("{slug}.log")),
        );
        let mut m = Self {
            server,
            port,
            socket,
            data: data.to_path_buf(),
        };
        let sock = m.socket.clone();
        wait_until(name, Duration::from_secs(120), || {
            if !m.server.running() {
                panic!("{name} stopped: {}", m.server.log_text());
            }
            match sock.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                true => Ok(()),
                false => Err("not listening".into()),
            }
        });
        m
    }

    fn client(&self) -> Command {
        let mut c = Command::new("/usr/bin/mysql");
        c.arg("--no-defaults")
            .args(["--batch", "--skip-column-names", "--connect-timeout=10"])
            .env_clear();
        c
    }

    /// Runs `sql` as `user` with `password` over TCP (`db` may be empty): its output, or the
    /// client's error.
    pub fn sql(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String, String> {
        let mut c = self.client();
        c.args([
            "--protocol=TCP",
            "-h",
            "127.0.0.1",
            "-P",
            &self.port.to_string(),
        ])
        .arg(format!("--user={user}"))
        .env("MYSQL_PWD", password);
        if !db.is_empty() {
            c.arg(format!("--database={db}"));
        }
        run(c.args(["-e", sql]))
    }

    /// Runs `sql` as root on the socket, before root has a password (setting up production).
    pub fn sql_root(&self, sql: &str) -> Result<String, String> {
        let mut c = self.client();
        c.arg(format!("--socket={}", self.socket.display()))
            .arg("--user=root");
        run(c.args(["-e", sql]))
    }

    /// Stops the server (SIGTERM: a clean shutdown).
    pub fn stop(mut self) {
        self.server.stop("TERM");
    }
}

fn run(c: &mut Command) -> Result<String, String> {
    let out = c.output().map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}
