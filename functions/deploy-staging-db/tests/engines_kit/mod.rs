//! Real database engines for `engines.rs`: Debian's PostgreSQL and MariaDB (installed by
//! `scripts/engines.sh`), started on loopback and unix sockets in a temporary directory as the user
//! the official database images run as (uid/gid 999); a crash-consistent copy of a running
//! instance's data directory, taken as a block snapshot would be; and snapstage's rendered
//! containers run as Kubernetes would run them ([`pod`]).
//!
//! Every wait is bounded, every server is stopped (its whole process group) and every directory
//! removed when its guard drops, also when a test fails.

#![allow(dead_code)]

pub mod instance;
pub mod pod;
pub mod staging;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The official images' database user (`postgres`, `mysql`, `mongodb`): the pods' runAsUser.
pub const DB_UID: u32 = 999;

/// How the engines get installed.
pub const INSTALL: &str = "scripts/engines.sh (as root: apt-get install postgresql mariadb-server mariadb-client, and a user with uid 999)";

/// Where the installed engines are.
#[derive(Debug, Clone)]
pub struct Engines {
    /// PostgreSQL's server binaries (`initdb`, `postgres`, `pg_isready`, `psql`).
    pub pg_bin: PathBuf,
    /// The directory of `mariadbd` (and Debian's `mysqld` link to it).
    pub mysql_sbin: PathBuf,
}

impl Engines {
    /// The `PATH` of a container of the engine's image: its binaries first, as the official
    /// images' `ENV PATH` has them.
    pub fn image_path(&self) -> String {
        format!(
            "{}:{}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            self.pg_bin.display(),
            self.mysql_sbin.display()
        )
    }
}

/// The installed engines, or `None` after printing why the test is skipped. Under `CI=true` a
/// missing engine is a failure, never a skip.
pub fn engines(test: &str) -> Option<Engines> {
    match find() {
        Ok(e) => Some(e),
        Err(why) => {
            snapstage_localenv::testkit::skip(&format!("{test}: {why} (install with: {INSTALL})"));
            None
        }
    }
}

fn find() -> Result<Engines, String> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "PostgreSQL is not installed (no /usr/lib/postgresql)".to_string())?
        .filter_map(|e| {
            let e = e.ok()?;
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    let (_, pg_bin) = versions
        .pop()
        .ok_or("PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb)")?;
    let mysql_sbin = ["/usr/sbin", "/usr/local/sbin", "/usr/bin"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("mariadbd").exists())
        .ok_or("MariaDB's server is not installed (no mariadbd)")?;
    for (tool, dirs) in [
        ("mysqld", vec![mysql_sbin.clone()]),
        (
            "mariadb-install-db",
            vec!["/usr/bin".into(), mysql_sbin.clone()],
        ),
        ("mysql", vec!["/usr/bin".into()]),
        ("psql", vec![pg_bin.clone()]),
    ] {
        if !dirs.iter().any(|d: &PathBuf| d.join(tool).exists()) {
            return Err(format!("{tool} is not installed"));
        }
    }
    let uid = Command::new("getent")
        .args(["passwd", &DB_UID.to_string()])
        .output()
        .map_err(|e| format!("getent: {e}"))?;
    if !uid.status.success() {
        return Err(format!(
            "no user has uid {DB_UID} (the database images' user)"
        ));
    }
    let me = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("id: {e}"))?;
    let me = String::from_utf8_lossy(&me.stdout).trim().to_string();
    if me != "0" {
        return Err(format!(
            "the test runs each engine in a PID namespace of its own (unshare) as uid {DB_UID}: run it as root (uid {me} now)"
        ));
    }
    for tool in ["/usr/bin/unshare", "/usr/bin/setpriv"] {
        if !Path::new(tool).exists() {
            return Err(format!("{tool} (util-linux) is not installed"));
        }
    }
    Ok(Engines { pg_bin, mysql_sbin })
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

static NEXT: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    /// A new directory, owned by the database user (mode 0755).
    pub fn new(what: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "snapstage-{what}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        chown_db(&path);
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A subdirectory, owned by the database user.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::create_dir_all(&p).unwrap();
        chown_db(&p);
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Gives `path` to the database user (a no-op when the test runs as that user).
pub fn chown_db(path: &Path) {
    let _ = std::os::unix::fs::chown(path, Some(DB_UID), Some(DB_UID));
}

/// A free TCP port on loopback (released again: the server binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `ready` says yes, at most `limit`; panics with `what` and the last answer.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match ready() {
            Ok(()) => return,
            Err(e) if start.elapsed() > limit => {
                panic!("{what}: not ready after {limit:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Sends `signal` to a process group.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// `argv` as process 1 of a new PID namespace, as user and group `uid`/`gid`: what a container
/// is on a machine of its own (production's pids mean nothing there: a copied `postmaster.pid`
/// names production's process 1, which is the container's own process or its parent, as in a
/// pod). When process 1 exits, the kernel ends whatever it left running, as a pod's end does.
/// The command runs in a process group of its own; `env` is all its environment.
pub fn contained(argv: &[String], uid: u32, gid: u32, env: &[(String, String)]) -> Command {
    let mut c = Command::new("/usr/bin/unshare");
    c.args(["--pid", "--fork", "--kill-child", "--"])
        .arg("/usr/bin/setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
            "--".into(),
        ])
        .args(argv)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null());
    c
}

/// A server process (process 1 of its own PID namespace, see [`contained`]) running as the
/// database user; its output goes to `log`. Dropping it kills it.
pub struct Server {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Server {
    /// Starts `program args` as the database user with only `env` in its environment.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: PathBuf,
    ) -> Self {
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut argv = vec![program.display().to_string()];
        argv.extend(args.iter().cloned());
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let child = contained(&argv, DB_UID, DB_UID, &env)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {}: {e}", program.display()));
        Self {
            name: name.into(),
            child,
            log,
        }
    }

    /// The server's own process (outside its namespace): the namespace's process 1.
    pub fn pid(&self) -> u32 {
        let wrapper = self.child.id();
        let children = format!("/proc/{wrapper}/task/{wrapper}/children");
        let mut found = None;
        wait_until(
            &format!("{} started", self.name),
            Duration::from_secs(10),
            || {
                let text = fs::read_to_string(&children).map_err(|e| e.to_string())?;
                found = text.split_whitespace().next().and_then(|p| p.parse().ok());
                found.map(|_| ()).ok_or_else(|| "no child yet".to_string())
            },
        );
        found.unwrap_or(wrapper)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the server runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Freezes every process of the server (SIGSTOP to its group) until the guard drops
    /// (SIGCONT): what a block snapshot sees of a running server, which is never stopped.
    pub fn freeze(&self) -> Frozen {
        let main = self.pid();
        signal_group(self.child.id(), "STOP");
        let stat = format!("/proc/{main}/stat");
        wait_until(
            &format!("{} frozen", self.name),
            Duration::from_secs(5),
            || {
                let s = fs::read_to_string(&stat).map_err(|e| e.to_string())?;
                // pid (comm) STATE ...: the state after the last ')'.
                match s.rsplit(')').next().map(str::trim_start) {
                    Some(rest) if rest.starts_with('T') => Ok(()),
                    other => Err(format!("state {other:?}")),
                }
            },
        );
        Frozen(self.child.id())
    }

    /// Stops the server with `sig` (to its main process, as `pg_ctl stop` or a container
    /// runtime would) and waits for it (at most 60 s, then SIGKILL and a failed test).
    pub fn stop(&mut self, sig: &str) {
        if !self.running() {
            return;
        }
        signal(self.pid(), sig);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_group(self.child.id(), "KILL");
        let _ = self.child.wait();
        panic!(
            "{} did not stop within 60 s after SIG{sig}; killed",
            self.name
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running() {
            signal_group(self.child.id(), "KILL");
            let _ = self.child.wait();
        }
    }
}

/// A frozen server; thawed when dropped.
pub struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal_group(self.0, "CONT");
    }
}

/// Copies the directory `from` into each of `to` as a block snapshot would: with the server that
/// writes it frozen for the copy, never stopped. `cp -a` keeps owners and modes.
pub fn crash_consistent_copy(server: &Server, from: &Path, to: &[&Path]) {
    let _frozen = server.freeze();
    for t in to {
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(t)
            .status()
            .unwrap();
        assert!(status.success(), "cp -a {} {}", from.display(), t.display());
    }
}
