//! The session form against a real MariaDB (Debian's, installed by `scripts/engines.sh`): the
//! hooks exec through the exec test server, which runs each command as a local process, as a
//! kubelet's streaming server does; "creating the snapshots" writes from another connection with
//! `lock_wait_timeout=1`, so a held `FLUSH TABLES WITH READ LOCK` refuses the write.
//!
//! The server runs as the database images' user (uid 999) in a PID namespace of its own, as
//! `functions/deploy-staging-db/tests/engines_kit` starts them; killed and removed when the test
//! ends, also when it fails. Skipped with the install command when MariaDB is missing; under
//! `CI=true` that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::exec_server::{ExecServer, Script};
use super::*;

/// The official images' database user.
const DB_UID: u32 = 999;
const INSTALL: &str = "scripts/engines.sh (as root: apt-get install mariadb-server mariadb-client, and a user with uid 999)";
const CLIENT: &str = "/usr/bin/mariadb";

/// `mariadbd`, or `None` after printing why the test is skipped (a failure under `CI=true`).
fn mariadbd(test: &str) -> Option<PathBuf> {
    let found = (|| {
        let server = ["/usr/sbin", "/usr/local/sbin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join("mariadbd"))
            .find(|p| p.exists())
            .ok_or("MariaDB's server is not installed (no mariadbd)")?;
        for tool in [
            "/usr/bin/mariadb-install-db",
            CLIENT,
            "/usr/bin/unshare",
            "/usr/bin/setpriv",
        ] {
            if !Path::new(tool).exists() {
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
            .map_err(|e| e.to_string())?;
        let me = String::from_utf8_lossy(&me.stdout).trim().to_string();
        if me != "0" {
            return Err(format!(
                "the server runs as uid {DB_UID} in a PID namespace of its own (unshare): run the test as root (uid {me} now)"
            ));
        }
        Ok::<_, String>(server)
    })();
    match found {
        Ok(s) => Some(s),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "{test}: {why}; CI=true, so this is a failure, not a skip (install with: {INSTALL})"
            )
        }
        Err(why) => {
            eprintln!("SKIP: {test}: {why} (install with: {INSTALL})");
            None
        }
    }
}

/// `argv` as uid/gid 999, process 1 of a new PID namespace, in a process group of its own.
fn contained(argv: &[String], log: &Path) -> Command {
    let out = fs::File::create(log).unwrap();
    let mut c = Command::new("/usr/bin/unshare");
    c.args(["--pid", "--fork", "--kill-child", "--", "/usr/bin/setpriv"])
        .args([
            format!("--reuid={DB_UID}"),
            format!("--regid={DB_UID}"),
            "--clear-groups".into(),
            "--".into(),
        ])
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    c
}

/// A running MariaDB on a unix socket in a scratch directory; root logs in there without a
/// password. Killed and removed when dropped.
struct Mariadb {
    dir: PathBuf,
    socket: PathBuf,
    server: Child,
}

impl Mariadb {
    fn start(mariadbd: &Path) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "snapstage-hooks-mariadb-{}-{nanos}",
            std::process::id()
        ));
        let data = dir.join("data");
        fs::create_dir_all(&data).unwrap();
        for d in [&dir, &data] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(d, Some(DB_UID), Some(DB_UID)).unwrap();
        }
        let install = contained(
            &[
                "/usr/bin/mariadb-install-db".into(),
                "--no-defaults".into(),
                format!("--datadir={}", data.display()),
                "--auth-root-authentication-method=normal".into(),
                "--skip-test-db".into(),
            ],
            &dir.join("install.log"),
        )
        .status()
        .unwrap();
        let socket = dir.join("mariadb.sock");
        let server = contained(
            &[
                mariadbd.display().to_string(),
                "--no-defaults".into(),
                format!("--datadir={}", data.display()),
                "--skip-networking".into(),
                format!("--socket={}", socket.display()),
                format!("--pid-file={}", dir.join("mariadb.pid").display()),
            ],
            &dir.join("server.log"),
        )
        .spawn()
        .unwrap();
        let mut db = Self {
            dir,
            socket,
            server,
        };
        let log = |name: &str| fs::read_to_string(db.dir.join(name)).unwrap_or_default();
        assert!(
            install.success(),
            "mariadb-install-db: {}",
            log("install.log")
        );
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = db.server.try_wait() {
                panic!("mariadbd stopped ({status}): {}", log("server.log"));
            }
            if db.socket.exists() && db.sql("SELECT 1").is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "mariadbd not ready after 120 s: {}",
                log("server.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        db
    }

    /// The client's arguments for root on the socket.
    fn client_args(&self) -> Vec<String> {
        vec![
            CLIENT.into(),
            "--no-defaults".into(),
            format!("--socket={}", self.socket.display()),
            "--user=root".into(),
            "--batch".into(),
            "--skip-column-names".into(),
        ]
    }

    fn client(&self, sql: &str) -> Command {
        let args = self.client_args();
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]).args(["-e", sql]).env_clear();
        c
    }

    fn sql(&self, sql: &str) -> Result<String, String> {
        output(self.client(sql).output().map_err(|e| e.to_string())?)
    }

    /// A write from another connection, waiting at most 1 s for a lock (the session's
    /// `FLUSH TABLES WITH READ LOCK`): its error when refused.
    async fn write(&self, v: &str) -> Result<String, String> {
        let sql = format!("SET SESSION lock_wait_timeout=1; INSERT INTO app.t (v) VALUES ('{v}')");
        let out = tokio::process::Command::from(self.client(&sql))
            .output()
            .await
            .map_err(|e| e.to_string())?;
        output(out)
    }

    /// [`Mariadb::write`] until it succeeds, at most 10 times: for a lock released by a
    /// connection's end, which the server notices a moment later.
    async fn write_once_released(&self, v: &str) -> Result<String, String> {
        let mut last = Err(String::new());
        for _ in 0..10 {
            last = self.write(v).await;
            if last.is_ok() {
                break;
            }
        }
        last
    }

    /// A hook that runs the client with `args` in "the pod".
    fn hooks(&self, server: &ExecServer, timeout: u32, form: serde_json::Value) -> Hooks {
        let mut p = json!({"pod": "orders-db-0", "namespace": "prod", "cluster": "inCluster",
            "timeoutSeconds": timeout});
        for (k, v) in form.as_object().unwrap() {
            p[k] = v.clone();
        }
        let p: HookParams = serde_json::from_value(p).unwrap();
        p.validate(None).unwrap();
        Hooks::new(server.client(), "prod".into(), p)
    }

    /// The session form, the client held open (`--unbuffered`, `--skip-reconnect`).
    fn session(&self, freeze: &str) -> serde_json::Value {
        let mut command = self.client_args();
        command.extend(["--unbuffered".into(), "--skip-reconnect".into()]);
        json!({"session": {"command": command, "freeze": freeze, "thaw": "UNLOCK TABLES;"}})
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.server.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.server.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn output(out: std::process::Output) -> Result<String, String> {
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

const FTWRL: &str = "FLUSH TABLES WITH READ LOCK;";
const REFUSED: &str = "Lock wait timeout exceeded";

#[tokio::test]
async fn a_session_hook_holds_flush_tables_with_read_lock_until_the_snapshot_is_cut() {
    let test = "a_session_hook_holds_flush_tables_with_read_lock_until_the_snapshot_is_cut";
    let Some(mariadbd) = mariadbd(test) else {
        return;
    };
    let db = Mariadb::start(&mariadbd);
    db.sql("CREATE DATABASE app; CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT)")
        .unwrap();
    db.write("before").await.unwrap();

    // The failure mode: the same freeze as a plain `pre` exec ends with its exec, and so does
    // its lock: production is written to while the snapshot is cut.
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Spawn, Script::Spawn]).await;
    let mut pre = db.client_args();
    pre.extend(["-e".into(), FTWRL.into()]);
    let mut post = db.client_args();
    post.extend(["-e".into(), "UNLOCK TABLES;".into()]);
    let h = db.hooks(&server, 10, json!({"pre": pre, "post": post}));
    let during = h.around(async { Ok(db.write("pre").await) }).await.unwrap();
    assert_eq!(during, Ok(String::new()), "a plain pre exec holds no lock");

    // The session form: the write is refused while the snapshot is cut, and succeeds after.
    for protocol in ["v5.channel.k8s.io", "v4.channel.k8s.io"] {
        let server = ExecServer::start(protocol, vec![Script::Spawn]).await;
        let h = db.hooks(&server, 10, db.session(FTWRL));
        let during = h
            .around(async { Ok(db.write("session").await) })
            .await
            .unwrap();
        let refused = during.unwrap_err();
        assert!(refused.contains(REFUSED), "{protocol}: {refused}");
        db.write("after").await.unwrap();
        assert_eq!(server.seen().len(), 1, "one exec holds the session");
    }

    // Creating the snapshots fails: the lock is released, and the error says so.
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Spawn]).await;
    let h = db.hooks(&server, 10, db.session(FTWRL));
    let e = h
        .around(async {
            assert!(db.write("failing").await.unwrap_err().contains(REFUSED));
            Err::<(), _>(Error::Backend {
                backend: "ebs",
                message: "CreateSnapshot: InternalError".into(),
                source: None,
            })
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("ebs: CreateSnapshot: InternalError; the lock was released (thaw confirmed in pod prod/orders-db-0)"),
        "{e}"
    );
    db.write("after a failed snapshot").await.unwrap();

    // Creating the snapshots hangs: cut short at timeoutSeconds, the lock released.
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Spawn]).await;
    let h = db.hooks(&server, 3, db.session(FTWRL));
    let e = h
        .around(std::future::pending::<Result<()>>())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("creating the snapshots did not finish within 3 s (hooks.timeoutSeconds) of the freeze and was cut short to release the lock"),
        "{e}"
    );
    assert!(
        e.contains("the lock was released (thaw confirmed in pod prod/orders-db-0)"),
        "{e}"
    );
    db.write("after a hung snapshot").await.unwrap();

    // The step itself is cut short while it holds the lock (the Lambda's deadline drops its
    // future): dropping the session closes its exec, and the lock goes with it.
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Spawn]).await;
    let h = db.hooks(&server, 30, db.session(FTWRL));
    let (held, cut) = tokio::sync::oneshot::channel::<()>();
    tokio::select! {
        _ = h.around(async {
            assert!(db.write("held").await.unwrap_err().contains(REFUSED));
            held.send(()).unwrap();
            std::future::pending::<Result<()>>().await
        }) => unreachable!("the work never ends"),
        _ = cut => {}
    }
    db.write_once_released("after a dropped step")
        .await
        .unwrap();

    // The freeze fails: no snapshot, and the message says why.
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Spawn]).await;
    let h = db.hooks(&server, 10, db.session("LOCK TABLES app.nosuch READ;"));
    let mut ran = false;
    let e = h
        .around(async {
            ran = true;
            Ok(())
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(!ran, "no snapshot without a confirmed freeze");
    assert!(
        e.contains("ended before its freeze was confirmed: exit code 1; stderr: ")
            && e.contains("ERROR 1146 (42S02) at line 1: Table 'app.nosuch' doesn't exist")
            && e.ends_with("no snapshot was taken"),
        "{e}"
    );

    // The session is killed while the snapshots are cut: its lock is gone, so the snapshots are
    // not known to be app-consistent, and the step fails.
    let server = ExecServer::start("v5.channel.k8s.io", vec![Script::Spawn]).await;
    let h = db.hooks(&server, 10, db.session(FTWRL));
    let e = h
        .around(async {
            let id = db
                .sql("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND USER = 'root' AND COMMAND = 'Sleep'")
                .unwrap();
            db.sql(&format!("KILL {id}")).unwrap();
            Ok(())
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("hooks: snapshot(s) created, but they are not known to be app-consistent: the session in pod prod/orders-db-0 ended before its thaw"),
        "{e}"
    );
    db.write_once_released("after a killed session")
        .await
        .unwrap();
}
