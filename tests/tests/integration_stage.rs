//! The IntegrationTest stage's default command, `snapstage_db_check`, run as CodeBuild runs it:
//! the buildspec's command block is read from `infra/template.yaml` at test time (never a copy)
//! and run under bash, against
//! - a real kube-apiserver (`scripts/localkube.sh`) holding the credentials Secret (base64 `data`,
//!   as Kubernetes stores it), the Service and its Endpoints, read with the token of a
//!   ServiceAccount that may only get those three kinds in that namespace (RBAC decides);
//! - a real PostgreSQL server (Debian's, as the database user uid 999) with a scram password, on
//!   another port than the published Service port (a pod's own port, as a Service may target),
//!   on a test host of its own: a network namespace this test makes, joined to this one by a veth
//!   pair (the API server refuses loopback addresses in Endpoints, and the stage connects to the
//!   pod address the Endpoints name, as CodeBuild in the VPC does);
//! - stand-ins first on `PATH` for what only AWS has: `aws` (EKS `describe-cluster` and
//!   `get-token`, answering only the exact arguments the buildspec must pass) and `dnf` (a no-op
//!   that records what it was asked to install).
//!
//! The plan-mode cases need neither service and always run. The applied cases need the control
//! plane and PostgreSQL: SKIP when absent (a failure under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use snapstage_localenv::localkube::LocalKube;
use snapstage_localenv::testkit::{skip, unique};
use snapstage_localenv::workspace_root;

const CLUSTER: &str = "snapstage-staging-cluster";
const SECRET: &str = "staging-db-credentials";
const SERVICE: &str = "staging-db";
const DB_USER: &str = "staging_app";
/// What deploy-staging-db publishes as `Port` for PostgreSQL: the Service's port.
const PUBLISHED_PORT: u16 = 5432;
/// The official database images' user (scripts/engines.sh makes one with this uid).
const DB_UID: u32 = 999;
const INSTALL: &str =
    "sudo scripts/engines.sh (apt-get install postgresql, and a user with uid 999)";
/// Generous: a run this long is a hang.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The `- |` command block of the IntegrationTest project's BuildSpec, as CodeBuild gets it: the
/// BuildSpec literal cut out of the template by its indentation, then parsed as the YAML it is.
fn command_block() -> String {
    let path = workspace_root().join("infra/template.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim_end() != "  IntegrationTestProject:")
        .skip_while(|l| l.trim() != "BuildSpec: |");
    let head = lines
        .next()
        .expect("IntegrationTestProject has no `BuildSpec: |` in infra/template.yaml");
    let indent = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .collect();
    let strip = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap();
    let buildspec: String = body
        .iter()
        .map(|l| format!("{}\n", l.get(strip..).unwrap_or("")))
        .collect();
    let spec: Value = serde_yaml_ng::from_str(&buildspec).unwrap();
    assert_eq!(spec["env"]["shell"], "bash", "{buildspec}");
    let commands = spec["phases"]["build"]["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 1, "one command block: {buildspec}");
    let block = commands[0].as_str().unwrap().to_string();
    assert!(block.contains("snapstage_db_check() ("), "{block}");
    block
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(unique(tag));
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_exe(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
}

/// What the cluster side of the stage sees: the API server's URL, its CA (base64) and a token.
struct Cluster {
    api: String,
    ca_base64: String,
    token: String,
}

/// The stand-ins for `aws` and `dnf` in `dir/bin`; each records its arguments (one call a line,
/// each argument followed by `|`) in `dir/aws.calls` and `dir/dnf.calls`.
fn stubs(dir: &Path, cluster: &Cluster) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let calls = |name: &str| dir.join(format!("{name}.calls")).display().to_string();
    write_exe(
        &bin.join("aws"),
        &format!(
            r#"#!/bin/bash
printf '%s|' "$@" >>'{calls}'; echo >>'{calls}'
if [ "$*" = "eks describe-cluster --name {CLUSTER} --query cluster.[endpoint,certificateAuthority.data] --output text" ]; then
  printf '%s\t%s\n' '{api}' '{ca}'
elif [ "$*" = "eks get-token --cluster-name {CLUSTER} --query status.token --output text" ]; then
  printf '%s\n' '{token}'
else
  echo "aws (test stand-in): unexpected arguments: $*" >&2; exit 252
fi
"#,
            calls = calls("aws"),
            api = cluster.api,
            ca = cluster.ca_base64,
            token = cluster.token,
        ),
    );
    write_exe(
        &bin.join("dnf"),
        &format!(
            "#!/bin/bash\nprintf '%s|' \"$@\" >>'{c}'; echo >>'{c}'\n",
            c = calls("dnf")
        ),
    );
    bin
}

fn recorded(dir: &Path, name: &str) -> Vec<String> {
    fs::read_to_string(dir.join(format!("{name}.calls")))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// One run of the stage: its exit code and everything it printed (stdout then stderr, as the
/// CodeBuild log shows both).
struct Stage {
    code: i32,
    output: String,
}

/// Runs the command block under bash with only `env` (plus the stand-ins first on `PATH`), as
/// CodeBuild runs the build phase, with the default `INTEGRATION_TEST_COMMAND`.
fn run_stage(dir: &Path, bin: &Path, env: &[(&str, String)]) -> Stage {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(command_block())
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("LANG", "C.UTF-8")
        .env("INTEGRATION_TEST_COMMAND", "snapstage_db_check")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("stdout")).unwrap())
        .stderr(fs::File::create(dir.join("stderr")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the stage did not finish within {RUN_LIMIT:?} (a hang): {}",
                fs::read_to_string(dir.join("stdout")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = fs::read_to_string(dir.join("stdout")).unwrap()
        + &fs::read_to_string(dir.join("stderr")).unwrap();
    Stage {
        code: status.code().unwrap_or(-1),
        output,
    }
}

/// The variables the pipeline gives the stage from the deploy-staging-db action's outputs.
fn stage_env(
    mode: &str,
    plan_only: &str,
    port: &str,
    secret: &str,
    ns: &str,
) -> Vec<(&'static str, String)> {
    [
        ("STAGING_DB_MODE", mode),
        ("STAGING_DB_ENGINE", "postgresql"),
        (
            "STAGING_DB_ENDPOINT",
            &format!("{SERVICE}.{ns}.svc.cluster.local:{port}"),
        ),
        ("STAGING_DB_PORT", port),
        ("STAGING_DB_SERVICE", SERVICE),
        ("STAGING_DB_NAMESPACE", ns),
        ("STAGING_DB_SECRET", secret),
        ("STAGING_DB_PLAN_ONLY", plan_only),
        ("EKS_CLUSTER_NAME", CLUSTER),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect()
}

#[test]
fn plan_mode_fails_unless_plan_only_and_then_says_skipped() {
    let dir = TempDir::new("itest-plan");
    let nowhere = Cluster {
        api: "https://127.0.0.1:9".into(),
        ca_base64: String::new(),
        token: "unused".into(),
    };
    let bin = stubs(&dir.0, &nowhere);

    let run = run_stage(
        &dir.0,
        &bin,
        &stage_env("plan", "false", "5432", SECRET, "staging"),
    );
    assert_ne!(run.code, 0, "{}", run.output);
    assert!(
        run.output
            .contains("FAILED: deploy-staging-db reported Mode=plan"),
        "{}",
        run.output
    );

    let run = run_stage(
        &dir.0,
        &bin,
        &stage_env("plan", "true", "5432", SECRET, "staging"),
    );
    assert_eq!(run.code, 0, "{}", run.output);
    assert!(run.output.contains("SKIPPED"), "{}", run.output);
    assert!(!run.output.contains("PASSED"), "{}", run.output);

    // Neither run went near the cluster or installed anything.
    assert_eq!(recorded(&dir.0, "aws"), Vec::<String>::new());
    assert_eq!(recorded(&dir.0, "dnf"), Vec::<String>::new());
}

/// Debian's PostgreSQL server binaries, or `None` after printing SKIP (a failure under CI=true).
fn postgres_bin(test: &str) -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    let uid_999 = Command::new("getent")
        .args(["passwd", &DB_UID.to_string()])
        .output()
        .is_ok_and(|o| o.status.success());
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let psql = Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let why = match (found.pop(), uid_999, root, psql) {
        (None, ..) => "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb)",
        (_, false, ..) => "no user has uid 999 (the database images' user)",
        (_, _, false, _) => "the server runs as uid 999 (setpriv): run the test as root",
        (_, _, _, false) => "psql is not on PATH",
        (Some((_, bin)), true, true, true) => return Some(bin),
    };
    skip(&format!("{test}: {why} (install with: {INSTALL})"));
    None
}

/// A PostgreSQL server of its own, as uid 999: `initdb` into a temporary directory with `DB_USER`
/// and a scram password, listening on the test host's address on a free port, reachable from this
/// namespace's end of the veth pair only. Killed when dropped.
struct Postgres {
    child: Child,
    port: u16,
    _dir: TempDir,
}

fn as_db_user(program: &Path) -> Command {
    db_user_command(Command::new("setpriv"), program)
}

/// [`as_db_user`] on the test host `netns`.
fn as_db_user_on(netns: &str, program: &Path) -> Command {
    let mut ip = Command::new(IP);
    ip.args(["netns", "exec", netns, "setpriv"]);
    db_user_command(ip, program)
}

/// `setpriv`'s arguments to run `program` as the database user, with a clean environment.
fn db_user_command(mut c: Command, program: &Path) -> Command {
    c.args([
        format!("--reuid={DB_UID}"),
        format!("--regid={DB_UID}"),
        "--clear-groups".into(),
        "--".into(),
    ])
    .arg(program)
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("LANG", "C.UTF-8")
    .current_dir("/")
    .stdin(Stdio::null());
    c
}

impl Postgres {
    fn start(bin: &Path, password: &str, host: &TestHost) -> Self {
        let (netns, peer, host) = (
            host.name.as_str(),
            host.peer.as_str(),
            host.address.as_str(),
        );
        let dir = TempDir::new("itest-pg");
        let owner = |p: &Path| std::os::unix::fs::chown(p, Some(DB_UID), Some(DB_UID)).unwrap();
        owner(&dir.0);
        let data = dir.0.join("data");
        let pwfile = dir.0.join("pw");
        fs::write(&pwfile, password).unwrap();
        owner(&pwfile);
        let out = as_db_user(&bin.join("initdb"))
            .arg(format!("--pgdata={}", data.display()))
            .arg(format!("--username={DB_USER}"))
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::remove_file(&pwfile).unwrap();
        // The stage connects to the Endpoints address, from this namespace's end of the pair.
        let mut hba = fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut hba,
            format!("host all all {peer}/32 scram-sha-256\n").as_bytes(),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = fs::File::create(dir.0.join("postgres.log")).unwrap();
        // `ip netns exec` execs the server in the test host's namespace: its pid is the server's.
        let mut cmd = as_db_user_on(netns, &bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-c", &format!("listen_addresses={host}")])
            .args(["-c", &format!("port={port}")])
            .args([
                "-c",
                &format!("unix_socket_directories={}", dir.0.display()),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let mut pg = Self {
            child: cmd.spawn().unwrap(),
            port,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            assert!(
                pg.child.try_wait().unwrap().is_none(),
                "postgres exited: {}",
                fs::read_to_string(pg._dir.0.join("postgres.log")).unwrap_or_default()
            );
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", host, "-p", &port.to_string()])
                .status()
                .unwrap();
            if ready.success() {
                break pg;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "postgres not ready within 120 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: a fast shutdown (its backends end with it); bounded, then SIGKILL.
        let _ = Command::new("kill")
            .args(["-s", "INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `ip` from iproute2.
const IP: &str = "/usr/sbin/ip";

/// A test host: a network namespace of this test's own, joined to this one by a veth pair; the
/// database listens there on `address`, the stage connects from `peer` (this namespace's end).
/// The namespace (and with it the pair) is deleted when dropped.
struct TestHost {
    name: String,
    address: String,
    peer: String,
}

impl TestHost {
    /// `None` after printing SKIP when `ip` is missing (a failure under CI=true).
    fn new(test: &str) -> Option<Self> {
        if !Path::new(IP).exists() {
            skip(&format!(
                "{test}: no {IP} for the test host's network namespace (install with: apt-get install iproute2)"
            ));
            return None;
        }
        let id = std::process::id() % 10_000;
        let subnet = 100 + std::process::id() % 150;
        let host = Self {
            name: format!("snapstage-itest-{id}"),
            address: format!("10.213.{subnet}.2"),
            peer: format!("10.213.{subnet}.1"),
        };
        let (outside, inside) = (format!("ssit{id}h"), format!("ssit{id}n"));
        let ns = host.name.as_str();
        for args in [
            vec!["netns", "add", ns],
            vec![
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ],
            vec!["link", "set", &inside, "netns", ns],
            vec!["addr", "add", &format!("{}/30", host.peer), "dev", &outside],
            vec!["link", "set", &outside, "up"],
            vec![
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/30", host.address),
                "dev",
                &inside,
            ],
            vec!["-n", ns, "link", "set", &inside, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
        ] {
            let out = Command::new(IP).args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(host)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = Command::new(IP).args(["netns", "del", &self.name]).status();
    }
}

/// The namespace the deploy made, as the admin: the credentials Secret (its password `password`),
/// a second Secret with a wrong password, `SERVICE` and its Endpoints (`host:port`), and a
/// ServiceAccount that may only get Secrets, Services and Endpoints there. Returns its token.
fn staging_namespace(k: &LocalKube, ns: &str, password: &str, host: &str, port: u16) -> String {
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string(),
    );
    for (name, pw) in [
        (SECRET, password),
        ("wrong-credentials", "not-the-password"),
    ] {
        // kubectl stores the literals base64-encoded in `data`, as the deploy's Secret has them.
        k.kubectl(
            &[
                "create",
                "secret",
                "generic",
                name,
                "-n",
                ns,
                &format!("--from-literal=username={DB_USER}"),
                &format!("--from-literal=password={pw}"),
            ],
            None,
        );
    }
    let secret = k.get_json("secret", Some(ns), SECRET).unwrap();
    assert!(secret["data"]["password"].is_string(), "{secret}");
    // The deploy's Service publishes the engine's port (the Port output); its target is the pod's
    // port, here the server's real one. No selector: its Endpoints are the ones below (the pod
    // address a CodeBuild project in the VPC connects to), named after the Service port.
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": ns},
            "spec": {"ports": [{"name": "postgresql", "port": PUBLISHED_PORT,
                                "targetPort": port, "protocol": "TCP"}]}})
        .to_string(),
    );
    k.apply(
        &json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": SERVICE, "namespace": ns},
            "subsets": [{"addresses": [{"ip": host}],
                         "ports": [{"name": "postgresql", "port": port, "protocol": "TCP"}]}]})
        .to_string(),
    );
    k.apply(
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "integration-test", "namespace": ns}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "integration-test", "namespace": ns},
             "rules": [{"apiGroups": [""], "resources": ["secrets", "services", "endpoints"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "integration-test", "namespace": ns},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "integration-test"},
             "subjects": [{"kind": "ServiceAccount", "name": "integration-test", "namespace": ns}]}]})
        .to_string(),
    );
    k.kubectl(
        &[
            "create",
            "token",
            "integration-test",
            "-n",
            ns,
            "--duration",
            "10m",
        ],
        None,
    )
    .trim()
    .to_string()
}

#[test]
fn applied_mode_queries_the_staging_postgres_with_the_secrets_credentials() {
    const TEST: &str = "integration_stage applied";
    let Some(k) = LocalKube::get(TEST) else {
        return;
    };
    let Some(pg_bin) = postgres_bin(TEST) else {
        return;
    };
    let Some(test_host) = TestHost::new(TEST) else {
        return;
    };
    let host = test_host.address.clone();
    let password = unique("pw-Staging_DB");
    let pg = Postgres::start(&pg_bin, &password, &test_host);
    let ns = unique("itest");
    let token = staging_namespace(&k, &ns, &password, &host, pg.port);

    let kubeconfig: Value =
        serde_yaml_ng::from_str(&fs::read_to_string(k.admin_kubeconfig()).unwrap()).unwrap();
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let cluster = Cluster {
        api: cluster["server"].as_str().unwrap().into(),
        ca_base64: cluster["certificate-authority-data"]
            .as_str()
            .unwrap()
            .into(),
        token,
    };
    let dir = TempDir::new("itest-applied");
    let bin = stubs(&dir.0, &cluster);
    let port = PUBLISHED_PORT.to_string();

    // The deploy's Secret: the server answers, and nothing secret is printed.
    let run = run_stage(
        &dir.0,
        &bin,
        &stage_env("applied", "false", &port, SECRET, &ns),
    );
    assert_eq!(run.code, 0, "{}", run.output);
    // `select version()` answers "PostgreSQL <version> ...", the version the server reports.
    let version = Command::new(pg_bin.join("postgres"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version.split_whitespace().nth(2).unwrap();
    assert!(
        run.output.contains(&format!("PostgreSQL {version} ")),
        "{}",
        run.output
    );
    assert!(run.output.contains("PASSED"), "{}", run.output);
    assert!(
        run.output
            .contains(&format!("connecting to {host}:{} as {DB_USER}", pg.port)),
        "{}",
        run.output
    );
    assert!(!run.output.contains(&password), "the password was printed");
    assert!(
        !run.output.contains(&cluster.token),
        "the token was printed"
    );
    assert_eq!(
        recorded(&dir.0, "aws"),
        [
            format!(
                "eks|describe-cluster|--name|{CLUSTER}|--query|cluster.[endpoint,certificateAuthority.data]|--output|text|"
            ),
            format!("eks|get-token|--cluster-name|{CLUSTER}|--query|status.token|--output|text|"),
        ]
    );
    assert_eq!(recorded(&dir.0, "dnf"), ["install|-y|-q|postgresql15|"]);

    // A Secret with the wrong password: psql's own authentication error fails the stage.
    let run = run_stage(
        &dir.0,
        &bin,
        &stage_env("applied", "false", &port, "wrong-credentials", &ns),
    );
    assert_ne!(run.code, 0, "{}", run.output);
    assert!(
        run.output.contains("password authentication failed"),
        "{}",
        run.output
    );
    assert!(!run.output.contains("PASSED"), "{}", run.output);

    k.kubectl(&["delete", "namespace", &ns, "--wait=false"], None);
}
