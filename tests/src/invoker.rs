//! How the driver runs a function: as a CLI process ([`CliInvoker`]) or through the Lambda Runtime
//! API emulator of `cargo lambda watch` ([`LambdaInvoker`]).
//!
//! Both run the real function binaries (`<target-dir>/debug/<function>`), point them at the job
//! service with `AWS_ENDPOINT_URL_CODEPIPELINE`, and kill whatever they started when dropped.
//! Every wait is bounded.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Error;

/// What one invocation returned (the job's result itself is read from the job service).
#[derive(Debug, Clone)]
pub struct Invoked {
    /// Exit code 0 (CLI) or a response without a function error (Lambda).
    pub ok: bool,
    /// `exit status 3`, `HTTP 200`, ...
    pub status: String,
    /// The function's stdout (CLI) or response payload (Lambda).
    pub output: String,
    /// The function's stderr (CLI) or where its log file is (Lambda).
    pub logs: String,
}

/// Runs one function with one event.
pub trait Invoker {
    /// `cli` or `lambda`.
    fn name(&self) -> &'static str;
    fn invoke(&self, function: &str, event: &Value)
    -> impl Future<Output = Result<Invoked, Error>>;
}

/// The function binaries and the environment they run with.
#[derive(Debug, Clone)]
pub struct Functions {
    /// Where `<function>` binaries are: `<target-dir>/debug`.
    pub bin_dir: PathBuf,
    /// Extra environment (on top of the inherited one).
    pub env: BTreeMap<String, String>,
    /// The longest one invocation may take.
    pub timeout: Duration,
}

impl Functions {
    /// Functions in `bin_dir` that answer the job service at `job_service_url`.
    pub fn new(bin_dir: impl Into<PathBuf>, job_service_url: &str) -> Self {
        let mut env = BTreeMap::new();
        env.insert(
            "AWS_ENDPOINT_URL_CODEPIPELINE".to_string(),
            job_service_url.to_string(),
        );
        // Local services take any credentials; use moto's unless the environment sets some.
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", crate::seed::MOTO_KEY),
            ("AWS_SECRET_ACCESS_KEY", crate::seed::MOTO_KEY),
            ("AWS_REGION", crate::seed::REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            if std::env::var_os(k).is_none() {
                env.insert(k.to_string(), v.to_string());
            }
        }
        Self {
            bin_dir: bin_dir.into(),
            env,
            timeout: Duration::from_secs(900),
        }
    }

    /// Points the functions at a moto cloud (`AWS_ENDPOINT_URL`).
    pub fn moto(self, cloud_endpoint: &str) -> Self {
        self.env("AWS_ENDPOINT_URL", cloud_endpoint)
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// The binary of `function`, or an error that says how to build it.
    pub fn binary(&self, function: &str) -> Result<PathBuf, Error> {
        let path = self.bin_dir.join(function);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Setup(format!(
                "function binary {function} not found at {}: run `cargo build --workspace --bins` first",
                path.display()
            )))
        }
    }

    fn command(&self, function: &str) -> Result<Command, Error> {
        let mut cmd = Command::new(self.binary(function)?);
        // The CLI must not find a Runtime API from an outer environment, and vice versa.
        cmd.env_remove("AWS_LAMBDA_RUNTIME_API");
        cmd.envs(&self.env);
        Ok(cmd)
    }
}

/// `<function> --event -` with the event on stdin; exit 0 = result delivered (even a failure),
/// 3 = the result could not be delivered.
#[derive(Debug, Clone)]
pub struct CliInvoker {
    pub functions: Functions,
}

impl CliInvoker {
    pub fn new(functions: Functions) -> Self {
        Self { functions }
    }
}

impl Invoker for CliInvoker {
    fn name(&self) -> &'static str {
        "cli"
    }

    async fn invoke(&self, function: &str, event: &Value) -> Result<Invoked, Error> {
        let mut cmd = self.functions.command(function)?;
        cmd.args(["--event", "-"]);
        let input = event.to_string().into_bytes();
        let timeout = self.functions.timeout;
        let name = function.to_string();
        // The child runs on a blocking thread so this runtime keeps serving the job service.
        let out = tokio::task::spawn_blocking(move || run_to_end(cmd, input, timeout))
            .await
            .map_err(|e| Error::Invoke(format!("{name}: {e}")))??;
        let code = out.status.code();
        Ok(Invoked {
            ok: out.status.success(),
            status: match code {
                Some(3) => "exit status 3 (the job result could not be delivered)".to_string(),
                Some(c) => format!("exit status {c}"),
                None => format!("{}", out.status),
            },
            output: out.stdout,
            logs: out.stderr,
        })
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a command to its end with `input` on stdin, within `timeout` (then kills it).
fn run_to_end(mut cmd: Command, input: Vec<u8>, timeout: Duration) -> Result<Finished, Error> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(
        cmd.spawn()
            .map_err(|e| Error::Invoke(format!("cannot start {program}: {e}")))?,
    );
    let stdin = child.0.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&input);
        }
    });
    let stdout = child.0.stdout.take().map(reader);
    let stderr = child.0.stderr.take().map(reader);
    let start = Instant::now();
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                return Err(Error::Invoke(format!(
                    "{program} did not finish within {timeout:?}; killed"
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(Error::Invoke(format!("waiting for {program}: {e}"))),
        }
    };
    let _ = writer.join();
    let collect = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Finished {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A child process that is killed (and reaped) when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The Lambda Runtime API emulator of `cargo lambda watch --only-lambda-apis`.
///
/// Routing, as the emulator implements it: an invoke of `POST /2015-03-31/functions/<name>/
/// invocations` is queued for `<name>`; a runtime whose `AWS_LAMBDA_RUNTIME_API` is
/// `http://<addr>/.rt/<name>` receives it from `GET /.rt/<name>/2018-06-01/runtime/invocation/next`.
/// The emulator only accepts names of binaries in its workspace's default members plus the
/// packages passed with `-p` (we pass the crate of the fake test function).
#[derive(Debug)]
pub struct Emulator {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The emulator's own log, when we started it.
    pub log: Option<PathBuf>,
    _child: Option<KillOnDrop>,
}

/// Where `cargo-lambda` is: `$CARGO_LAMBDA`, else the project's venv, else `PATH`.
pub fn cargo_lambda(workspace: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_LAMBDA") {
        return PathBuf::from(p);
    }
    let venv = workspace.join(".venv/bin/cargo-lambda");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("cargo-lambda")
    }
}

impl Emulator {
    /// Starts `cargo-lambda lambda watch --only-lambda-apis --ignore-changes` for `workspace` on
    /// a free loopback port, and waits (at most `wait`) until it accepts connections.
    pub async fn start(
        cargo_lambda: &Path,
        workspace: &Path,
        log_dir: &Path,
        wait: Duration,
    ) -> Result<Self, Error> {
        let port = free_port()?;
        std::fs::create_dir_all(log_dir)
            .map_err(|e| Error::Setup(format!("creating {}: {e}", log_dir.display())))?;
        let log = log_dir.join(format!("cargo-lambda-{port}.log"));
        let file = std::fs::File::create(&log)
            .map_err(|e| Error::Setup(format!("creating {}: {e}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(|e| Error::Setup(format!("{}: {e}", log.display())))?;
        let mut cmd = Command::new(cargo_lambda);
        cmd.args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
            .args(["-A", "127.0.0.1", "-P", &port.to_string()])
            .args(["-p", env!("CARGO_PKG_NAME")])
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        let child = cmd.spawn().map_err(|e| {
            Error::Setup(format!(
                "cannot start {} (install with `pip install cargo-lambda`, or set CARGO_LAMBDA): {e}",
                cargo_lambda.display()
            ))
        })?;
        let mut child = KillOnDrop(child);
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(Error::Setup(format!(
                    "cargo lambda watch exited ({status}):\n{}",
                    text.trim()
                )));
            }
            if start.elapsed() > wait {
                return Err(Error::Setup(format!(
                    "cargo lambda watch did not listen on 127.0.0.1:{port} within {wait:?}; see {}",
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            log: Some(log),
            _child: Some(child),
        })
    }

    /// An emulator somebody else runs (e.g. `cargo lambda watch` in another terminal).
    pub fn existing(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            log: None,
            _child: None,
        }
    }

    /// `AWS_LAMBDA_RUNTIME_API` for a runtime serving `function`.
    pub fn runtime_api(&self, function: &str) -> String {
        format!("{}/.rt/{function}", self.url)
    }

    /// Where an invoke of `function` goes (the Lambda Invoke API path).
    pub fn invoke_url(&self, function: &str) -> String {
        format!("{}/2015-03-31/functions/{function}/invocations", self.url)
    }
}

fn free_port() -> Result<u16, Error> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Setup(format!("no free loopback port: {e}")))
}

/// Invokes through the emulator; each function runs as one long-lived runtime process (a warm
/// Lambda), started on its first invocation.
#[derive(Debug)]
pub struct LambdaInvoker {
    pub functions: Functions,
    pub emulator: Emulator,
    log_dir: PathBuf,
    http: reqwest::Client,
    running: Mutex<BTreeMap<String, KillOnDrop>>,
}

impl LambdaInvoker {
    /// `log_dir` receives one `<function>.log` per runtime process.
    pub fn new(functions: Functions, emulator: Emulator, log_dir: &Path) -> Result<Self, Error> {
        // reqwest is built without a default crypto provider; ring is the project's one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(functions.timeout)
            .build()
            .map_err(|e| Error::Setup(format!("HTTP client: {e}")))?;
        std::fs::create_dir_all(log_dir)
            .map_err(|e| Error::Setup(format!("creating {}: {e}", log_dir.display())))?;
        Ok(Self {
            functions,
            emulator,
            log_dir: log_dir.to_path_buf(),
            http,
            running: Mutex::new(BTreeMap::new()),
        })
    }

    fn log_path(&self, function: &str) -> PathBuf {
        self.log_dir.join(format!("{function}.log"))
    }

    /// Starts the runtime process of `function` unless it is running.
    fn ensure_running(&self, function: &str) -> Result<(), Error> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = running.get_mut(function) {
            if let Ok(None) = p.0.try_wait() {
                return Ok(());
            }
            running.remove(function);
        }
        let log = self.log_path(function);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::Setup(format!("opening {}: {e}", log.display())))?;
        // stdout too, as Lambda sends both streams to the log group: the metrics (EMF) are there.
        let stdout = file
            .try_clone()
            .map_err(|e| Error::Setup(format!("opening {}: {e}", log.display())))?;
        let mut cmd = self.functions.command(function)?;
        cmd.env(
            "AWS_LAMBDA_RUNTIME_API",
            self.emulator.runtime_api(function),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(file);
        let child = cmd
            .spawn()
            .map_err(|e| Error::Invoke(format!("cannot start {function}: {e}")))?;
        running.insert(function.to_string(), KillOnDrop(child));
        Ok(())
    }

    /// The exit status of `function`'s runtime if it has stopped.
    fn exited(&self, function: &str) -> Option<ExitStatus> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        running
            .get_mut(function)
            .and_then(|p| p.0.try_wait().ok().flatten())
    }
}

impl Invoker for LambdaInvoker {
    fn name(&self) -> &'static str {
        "lambda"
    }

    async fn invoke(&self, function: &str, event: &Value) -> Result<Invoked, Error> {
        self.ensure_running(function)?;
        let logs = format!("runtime log: {}", self.log_path(function).display());
        let request = self
            .http
            .post(self.emulator.invoke_url(function))
            .json(event)
            .send();
        tokio::pin!(request);
        // Answered, or the runtime died (then nothing would ever answer): whichever comes first.
        let resp = loop {
            tokio::select! {
                r = &mut request => break r,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Some(status) = self.exited(function) {
                        return Ok(Invoked {
                            ok: false,
                            status: format!("the {function} runtime exited ({status})"),
                            output: String::new(),
                            logs,
                        });
                    }
                }
            }
        };
        let resp = resp.map_err(|e| {
            Error::Invoke(format!(
                "invoking {function} through {}: {e}",
                self.emulator.url
            ))
        })?;
        let status = resp.status();
        let function_error = resp.headers().get("x-amz-function-error").is_some();
        let output = resp
            .text()
            .await
            .map_err(|e| Error::Invoke(format!("reading {function}'s response: {e}")))?;
        Ok(Invoked {
            ok: status.is_success() && !function_error,
            status: format!("HTTP {}", status.as_u16()),
            output,
            logs,
        })
    }
}
