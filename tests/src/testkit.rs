//! Helpers for the functions' integration tests, so each test file keeps only what it checks:
//! the moto endpoints (or a printed SKIP), SDK configuration for a local endpoint, running a
//! function binary the way a user does (CLI, event on stdin), and names no other run uses.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use serde_json::Value;

/// The two local moto servers `make test` starts (`scripts/services.sh`).
#[derive(Debug, Clone)]
pub struct Moto {
    /// EC2/EBS, S3, STS, Secrets Manager, SSM: the cloud account.
    pub cloud: String,
    /// S3 standing in for the on-prem endpoint.
    pub onprem: String,
}

/// The moto endpoints from `SNAPSTAGE_MOTO_CLOUD` / `SNAPSTAGE_MOTO_ONPREM`, or `None` after
/// printing why the test is skipped.
pub fn moto(test: &str) -> Option<Moto> {
    match (
        std::env::var("SNAPSTAGE_MOTO_CLOUD"),
        std::env::var("SNAPSTAGE_MOTO_ONPREM"),
    ) {
        (Ok(cloud), Ok(onprem)) if !cloud.is_empty() && !onprem.is_empty() => {
            Some(Moto { cloud, onprem })
        }
        _ => {
            skip(&format!(
                "{test}: SNAPSTAGE_MOTO_CLOUD / SNAPSTAGE_MOTO_ONPREM are not set \
                 (run `make test`, or scripts/services.sh start; eval \"$(scripts/services.sh env)\")"
            ));
            None
        }
    }
}

/// The real on-prem S3 server `make test` starts beside moto (versitygw, `scripts/onprem-s3.sh`):
/// its endpoint from `SNAPSTAGE_ONPREM_S3`, or `None` after printing why it is skipped (a
/// failure under `CI=true`). Its root user's keys are the tests' `testing` / `testing`.
pub fn onprem_s3(test: &str) -> Option<String> {
    match std::env::var("SNAPSTAGE_ONPREM_S3") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            skip(&format!(
                "{test} on versitygw: SNAPSTAGE_ONPREM_S3 is not set \
                 (run `make test`, or scripts/services.sh start; eval \"$(scripts/services.sh env)\")"
            ));
            None
        }
    }
}

/// Prints `SKIP: <why>` where it is seen even when the test harness captures output (a direct
/// write to stderr, not `eprintln!`): a skipped test is never silent. Under `CI=true` a missing
/// service is a failure, never a skip: this panics there.
pub fn skip(why: &str) {
    assert!(
        !in_ci(),
        "{why}; under CI=true a missing service fails the run (.ci/run installs and starts every service)"
    );
    let _ = writeln!(std::io::stderr(), "SKIP: {why}");
}

/// True under `CI=true` (CI's own setting), where nothing may be skipped for want of a service.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// SDK configuration for a local endpoint with test credentials, over snapstage's HTTP client.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    snapstage::aws::loader()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await
}

/// What a CLI run printed and returned.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    /// One JSON result per step, as printed on stdout.
    pub results: Vec<Value>,
    pub stderr: String,
}

impl CliRun {
    /// The final result.
    pub fn last(&self) -> &Value {
        self.results
            .last()
            .unwrap_or_else(|| panic!("no result printed; stderr:\n{}", self.stderr))
    }

    /// An output variable of the final result.
    pub fn output(&self, name: &str) -> &str {
        self.last()["outputVariables"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no output {name} in {}", self.last()))
    }
}

/// Runs a function binary with `event` on stdin (`--event -` plus `args`), `cloud` as the default
/// AWS endpoint, test credentials, and nothing inherited that would change its behaviour.
/// A run that takes longer than [`CLI_TIMEOUT`] is killed and fails the test.
pub fn run_cli(
    bin: &str,
    cloud: &str,
    event: &Value,
    args: &[&str],
    env: &[(&str, &str)],
) -> CliRun {
    spawn_cli(bin, cloud, event, args, env).wait_within(CLI_TIMEOUT)
}

/// Generous: a run this long is a hang, not a slow machine.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(600);

/// A function binary started by [`spawn_cli`]: wait for it, or kill it (a crash).
#[derive(Debug)]
pub struct RunningCli {
    bin: String,
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl RunningCli {
    /// Waits for the end of the run; a run still going after `timeout` is killed and the test
    /// fails with what it printed.
    pub fn wait_within(mut self, timeout: Duration) -> CliRun {
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > timeout => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let (out, err) = self.output();
                    panic!(
                        "{} did not finish within {timeout:?} (a hang); killed.\nstdout:\n{out}\nstderr:\n{err}",
                        self.bin
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for {}: {e}", self.bin),
            }
        };
        let (stdout, stderr) = self.output();
        let results = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}\n{stderr}"))
            })
            .collect();
        CliRun {
            code: status.code().unwrap_or(-1),
            results,
            stderr,
        }
    }

    /// Kills the process (SIGKILL: no cleanup, as a crash or a Lambda timeout ends it) and
    /// returns what it had printed.
    pub fn kill(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn output(&mut self) -> (String, String) {
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        (join(self.stdout.take()), join(self.stderr.take()))
    }
}

/// Starts a function binary the way [`run_cli`] does and returns at once.
pub fn spawn_cli(
    bin: &str,
    cloud: &str,
    event: &Value,
    args: &[&str],
    env: &[(&str, &str)],
) -> RunningCli {
    let mut cmd = Command::new(bin);
    cmd.args(["--event", "-"])
        .args(args)
        .env("AWS_ENDPOINT_URL", cloud)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("AWS_ENDPOINT_URL_SECRETS_MANAGER")
        .env_remove("AWS_ENDPOINT_URL_CODEPIPELINE")
        .env_remove("AWS_MAX_ATTEMPTS")
        .env_remove("SNAPSTAGE_DEFAULTS")
        .env_remove("SNAPSTAGE_DEADLINE_MARGIN_MS")
        .env_remove(snapstage::aws::ATTEMPT_TIMEOUT_ENV)
        .env_remove(snapstage::aws::OPERATION_TIMEOUT_ENV)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(event.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("writing the event: {e}"));
    }
    let reader = |r: Option<Box<dyn Read + Send>>| {
        r.map(|mut r| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    RunningCli {
        bin: bin.to_string(),
        child,
        stdout,
        stderr,
    }
}

/// A name (bucket, execution id) no other test or earlier run uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{tag}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
