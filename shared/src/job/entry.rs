//! `main` for every function: the same binary serves the Lambda Runtime API (when
//! `AWS_LAMBDA_RUNTIME_API` is set) or handles one event as a CLI (an on-prem Jenkins stage, a
//! CodeBuild step).
//!
//! CLI exit codes: 0 succeeded, ignored, or a job result delivered to CodePipeline (a reported
//! failure counts as delivered); 1 a direct request failed or was rejected; 2 usage error;
//! 3 a job result could not be delivered to CodePipeline.

use std::io::Read as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::job::codepipeline::{CodePipelineReporter, JobResult};
use crate::job::contract::{
    Contract, Function, Handled, InvocationMeta, Settings, deadline_from_epoch_ms,
};
use crate::job::metrics::Metrics;

/// Per-function text for `--help`.
pub struct About {
    /// One paragraph: what the function does.
    pub summary: &'static str,
    /// The parameters, one per line, as they are written in UserParameters / a direct request.
    pub parameters: &'static str,
    /// The output variables.
    pub outputs: &'static str,
}

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNDELIVERED: u8 = 3;

/// Runs a function: builds the runtime, the SDK config and the function once, then serves
/// Lambda or the CLI.
pub fn main<F: Function>(
    about: &About,
    build: impl FnOnce(&aws_config::SdkConfig) -> F,
) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    let cli = if lambda {
        None
    } else {
        match CliArgs::parse(&args) {
            Ok(CliCommand::Help) => {
                print!("{}", help::<F>(about));
                return ExitCode::SUCCESS;
            }
            Ok(CliCommand::Version) => {
                println!("{} {}", F::NAME, env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Ok(CliCommand::Run(a)) => Some(a),
            Err(msg) => {
                eprintln!("{}: {msg}\nTry '{} --help'.", F::NAME, F::NAME);
                return ExitCode::from(EXIT_USAGE);
            }
        }
    };
    init_tracing(lambda);
    // Metrics never stop a job: an unusable setting is logged and the default kept.
    let metrics = Metrics::from_env(lambda, |k| std::env::var(k).ok()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "metrics setting ignored");
        Metrics::default_for(lambda)
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", F::NAME);
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let config = crate::aws::sdk_config().await;
        let function = build(&config);
        let settings = Settings::from_env(|k| std::env::var(k).ok());
        let contract = Arc::new(Contract::new(
            function,
            CodePipelineReporter::new(&config),
            settings,
        ));
        match cli {
            None => serve_lambda(contract, metrics).await,
            Some(a) => run_cli(contract, a, &metrics).await,
        }
    })
}

async fn serve_lambda<F: Function>(
    contract: Arc<Contract<F, CodePipelineReporter>>,
    metrics: Metrics,
) -> ExitCode {
    use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
    let metrics = Arc::new(metrics);
    let handler = service_fn(move |ev: LambdaEvent<Value>| {
        let contract = Arc::clone(&contract);
        let metrics = Arc::clone(&metrics);
        async move {
            let meta = InvocationMeta {
                request_id: ev.context.request_id.clone(),
                deadline: deadline_from_epoch_ms(ev.context.deadline),
            };
            let measured = contract.handle_measured(ev.payload, meta).await;
            // Before the response: Lambda may freeze the process once it has it.
            metrics.emit(F::NAME, &measured);
            let handled = measured.handled;
            let body = handled.to_json(F::NAME);
            match &handled {
                // Lambda retries an async invocation that errors: only when CodePipeline did not
                // get the result, or a direct caller must see the failure.
                Handled::Job {
                    delivered: Err(e), ..
                } => Err(Diagnostic {
                    error_type: "ResultNotDelivered".into(),
                    error_message: e.to_string(),
                }),
                Handled::Direct {
                    result: JobResult::Failed { kind, message, .. },
                    ..
                } => Err(Diagnostic {
                    error_type: kind.as_str().into(),
                    error_message: message.clone(),
                }),
                Handled::Rejected(e) => Err(Diagnostic {
                    error_type: e.failure_kind().as_str().into(),
                    error_message: e.to_string(),
                }),
                _ => Ok(body),
            }
        }
    });
    match lambda_runtime::run(handler).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Lambda runtime stopped");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct CliArgs {
    event: String,
    follow: bool,
    poll: Duration,
    budget: Duration,
}

#[derive(Debug, PartialEq)]
enum CliCommand {
    Help,
    Version,
    Run(CliArgs),
}

impl CliArgs {
    fn parse(args: &[String]) -> Result<CliCommand, String> {
        let mut event = None;
        let mut follow = true;
        let mut poll = Duration::from_secs(15);
        let mut budget = Duration::from_secs(840);
        let mut it = args.iter();
        let secs = |flag: &str, v: Option<&String>| -> Result<Duration, String> {
            let v = v.ok_or_else(|| format!("{flag} needs a number of seconds"))?;
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{flag}: expected seconds, got {v:?}"))
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "-h" | "--help" => return Ok(CliCommand::Help),
                "-V" | "--version" => return Ok(CliCommand::Version),
                "-e" | "--event" => {
                    event = Some(
                        it.next()
                            .ok_or("--event needs a file path or '-' for stdin")?
                            .clone(),
                    )
                }
                "--no-follow" => follow = false,
                "--poll-interval" => poll = secs(a, it.next())?,
                "--step-budget" => budget = secs(a, it.next())?,
                other => {
                    if let Some(v) = other.strip_prefix("--event=") {
                        event = Some(v.to_string());
                    } else {
                        return Err(format!("unknown argument {other:?}"));
                    }
                }
            }
        }
        let event = event.ok_or("--event FILE (or '-' for stdin) is required outside Lambda")?;
        Ok(CliCommand::Run(CliArgs {
            event,
            follow,
            poll,
            budget,
        }))
    }
}

async fn run_cli<F: Function>(
    contract: Arc<Contract<F, CodePipelineReporter>>,
    args: CliArgs,
    metrics: &Metrics,
) -> ExitCode {
    let text = match read_event(&args.event) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("{}: {msg}", F::NAME);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut raw: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            let rejected = Handled::Rejected(crate::Error::Event(format!(
                "{}: not JSON: {e}",
                args.event
            )));
            println!("{}", rejected.to_json(F::NAME));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let request_id = cli_request_id();
    loop {
        let meta = InvocationMeta {
            request_id: request_id.clone(),
            deadline: SystemTime::now() + args.budget,
        };
        let measured = contract.handle_measured(raw.clone(), meta).await;
        metrics.emit(F::NAME, &measured);
        let handled = measured.handled;
        let out = handled.to_json(F::NAME);
        println!("{out}");
        match handled {
            Handled::Job {
                delivered: Ok(()), ..
            }
            | Handled::Ignored { .. } => return ExitCode::SUCCESS,
            Handled::Job {
                delivered: Err(_), ..
            } => return ExitCode::from(EXIT_UNDELIVERED),
            Handled::Rejected(_) => return ExitCode::from(EXIT_FAILED),
            Handled::Direct {
                result, execution, ..
            } => match result {
                JobResult::Succeeded { .. } => return ExitCode::SUCCESS,
                JobResult::Failed { .. } => return ExitCode::from(EXIT_FAILED),
                JobResult::InProgress {
                    continuation_token, ..
                } => {
                    if !args.follow {
                        return ExitCode::SUCCESS;
                    }
                    // Outside Lambda nothing bills by the millisecond: wait, then take the next step.
                    tokio::time::sleep(args.poll).await;
                    let mut next = serde_json::Map::new();
                    if let Value::Object(m) = &raw {
                        next = m.clone();
                    }
                    next.insert("continuationToken".into(), Value::from(continuation_token));
                    next.insert("executionId".into(), Value::from(execution));
                    raw = Value::Object(next);
                }
            },
        }
    }
}

fn read_event(path: &str) -> Result<String, String> {
    if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading the event from stdin: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("reading the event from {path}: {e}"))
    }
}

/// A fresh id per CLI run (direct requests without `executionId` are keyed by it).
fn cli_request_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("cli-{nanos:x}-{}", std::process::id())
}

/// Targets that log an invocation's whole raw event at TRACE: `lambda_runtime` writes the
/// payload ("raw JSON event received from Lambda"), CodePipeline's artifact credentials
/// included, to CloudWatch Logs. Capped at DEBUG whatever `RUST_LOG` asks for: the event is
/// never logged.
const EVENT_LOGGING_TARGETS: [&str; 1] = ["lambda_runtime::layers::api_response"];

/// The log filter: `RUST_LOG` (default: info, the SDK at warn), with the event-logging targets
/// capped.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let filter = rust_log
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| {
            EnvFilter::new(
                "info,aws_config=warn,aws_smithy_runtime=warn,aws_smithy_runtime_api=warn",
            )
        });
    EVENT_LOGGING_TARGETS.iter().fold(filter, |f, target| {
        match format!("{target}=debug").parse() {
            Ok(d) => f.add_directive(d),
            Err(_) => f,
        }
    })
}

fn init_tracing(lambda: bool) {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if lambda {
        // CloudWatch gets one JSON object per line; Lambda adds the request id.
        builder
            .json()
            .with_current_span(false)
            .without_time()
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}

fn help<F: Function>(about: &About) -> String {
    format!(
        "{name} {version} — snapstage

{summary}

USAGE:
  {name} --event FILE|-  [--no-follow] [--poll-interval SECS] [--step-budget SECS]

Under AWS Lambda (AWS_LAMBDA_RUNTIME_API set) the binary serves the Runtime API instead.

OPTIONS:
  -e, --event FILE|-      the event to handle: a CodePipeline job event, a CodeCommit EventBridge
                          event, or a direct request (a JSON object of parameters); '-' reads stdin
      --no-follow         for a direct request in progress, print its continuationToken and stop
                          (default: wait --poll-interval and continue until it finishes)
      --poll-interval S   seconds between steps when following (default 15)
      --step-budget S     time one step may take before it checkpoints (default 840)
  -h, --help              this text
  -V, --version           the version

PARAMETERS (UserParameters JSON, or the direct request's keys; unknown keys are rejected):
{parameters}
  executionId       (direct only) idempotency key: a re-run with the same id reuses its resources
  continuationToken (direct only) resume a run that answered InProgress

Defaults come from SNAPSTAGE_DEFAULTS (a JSON object); UserParameters / the request override them.
CodeCommit events start work for SNAPSTAGE_TRIGGER_BRANCHES (default main) of
SNAPSTAGE_TRIGGER_REPOSITORIES (default any).

OUTPUT VARIABLES:
{outputs}

The result is printed on stdout as JSON; logs go to stderr (RUST_LOG sets the level).
Metrics: SNAPSTAGE_METRICS=emf writes one CloudWatch embedded-metric-format line per step to
stderr (under Lambda they are on by default, on stdout; SNAPSTAGE_METRICS=off turns them off);
SNAPSTAGE_METRICS_NAMESPACE sets the namespace (default snapstage).
AWS endpoints: AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE> (e.g. AWS_ENDPOINT_URL_CODEPIPELINE).

EXIT STATUS:
  0  succeeded, ignored, or the job result was delivered to CodePipeline (a reported failure too)
  1  a direct request failed or the event was rejected
  2  usage error
  3  the job result could not be delivered to CodePipeline
",
        name = F::NAME,
        version = env!("CARGO_PKG_VERSION"),
        summary = about.summary,
        parameters = about.parameters,
        outputs = about.outputs,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_raw_event_is_never_logged_whatever_rust_log_says() {
        for rust_log in [
            None,
            Some("trace"),
            Some("lambda_runtime=trace"),
            Some("lambda_runtime::layers::api_response=trace"),
            Some("warn,lambda_runtime::layers::api_response=trace,snapstage=trace"),
        ] {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(super::log_filter(rust_log))
                .with_writer(std::io::sink)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                assert!(
                    !tracing::enabled!(
                        target: "lambda_runtime::layers::api_response",
                        tracing::Level::TRACE
                    ),
                    "{rust_log:?}: lambda_runtime would log the raw event"
                );
                if rust_log.is_some_and(|l| l.contains("trace")) {
                    assert!(
                        tracing::enabled!(target: "snapstage::job::contract", tracing::Level::TRACE)
                            || rust_log.is_some_and(|l| !l.contains("snapstage") && l != "trace"),
                        "{rust_log:?}: everything else keeps its level"
                    );
                }
            });
        }
    }

    use super::*;

    fn args(a: &[&str]) -> Result<CliCommand, String> {
        CliArgs::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn cli_arguments() {
        assert_eq!(args(&["--help"]), Ok(CliCommand::Help));
        let CliCommand::Run(a) =
            args(&["--event", "-", "--no-follow", "--poll-interval", "0.5"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(a.event, "-");
        assert!(!a.follow);
        assert_eq!(a.poll, Duration::from_millis(500));
        assert!(args(&[]).unwrap_err().contains("--event"));
        assert!(args(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(args(&["--event"]).is_err());
        assert!(args(&["--event", "x", "--poll-interval", "-1"]).is_err());
    }
}
