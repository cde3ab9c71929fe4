//! `local-pipeline`: runs the demo pipeline (Snapshot → Restore → Deploy → Replicate → Release)
//! locally, against moto, with the real function binaries answering a CodePipeline job service
//! double. The Release stage rolls a new AMI onto a moto Auto Scaling group through the
//! instance-refresh double (moto has no instance refresh API).
//!
//! The function binaries are found beside this one (`<target-dir>/debug/`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use snapstage_localenv::asg;
use snapstage_localenv::hybrid::{
    self, CLOUD, JENKINS_HOME, NEXUS_BLOBS, ONPREM, ONPREM_NAMESPACE, PGROUP, PUBLISHED, Site,
};
use snapstage_localenv::invoker::{
    CliInvoker, Emulator, Functions, Invoker, LambdaInvoker, cargo_lambda,
};
use snapstage_localenv::jobservice::JobService;
use snapstage_localenv::localkube::LocalKube;
use snapstage_localenv::pipeline::{self, Options, Pipeline};
use snapstage_localenv::refresh::RefreshDouble;
use snapstage_localenv::seed::{self, Clients};
use snapstage_localenv::{Error, workspace_root};

const USAGE: &str = "\
local-pipeline — run the snapstage demo pipeline locally

USAGE:
  local-pipeline [--invoker cli|lambda] [--seed] [--poll-delay SECS] [--failing-release]
  local-pipeline --hybrid [--invoker cli|lambda]

OPTIONS:
  --invoker lambda   invoke through the Lambda Runtime API emulator of `cargo lambda watch`
                     (default); set SNAPSTAGE_LAMBDA_EMULATOR=http://127.0.0.1:9000 to use one
                     that is already running
  --invoker cli      run each function as a CLI process (`<function> --event -`)
  --seed             create the demo data first (production volume, Nexus blob store, on-prem bucket)
  --poll-delay SECS  wait between an InProgress result and the next job (default 0)
  --failing-release  the release image fails its load balancer health checks: the Release stage
                     rolls it back and the pipeline fails
  --hybrid           the hybrid Jenkins/Nexus flow instead (make demo-hybrid): two FlashArray
                     doubles (on-prem, Cloud Block Store) and the local Kubernetes control plane;
                     Jenkins and Nexus start in the cloud on restored volumes, the on-prem Nexus
                     is rehydrated with what the cloud published
  -h, --help         this text

ENVIRONMENT:
  AWS_ENDPOINT_URL        the cloud (moto), e.g. http://127.0.0.1:5100
  SNAPSTAGE_MOTO_ONPREM   the on-prem S3 (moto), default http://127.0.0.1:5101
  Start both with: scripts/services.sh start && eval \"$(scripts/services.sh env)\"

EXIT STATUS: 0 the pipeline succeeded, 1 it failed, 2 usage or setup error.
";

struct Args {
    lambda: bool,
    hybrid: bool,
    seed: bool,
    failing_release: bool,
    poll_delay: Duration,
}

fn parse(args: &[String]) -> Result<Option<Args>, String> {
    let mut out = Args {
        lambda: true,
        hybrid: false,
        seed: false,
        failing_release: false,
        poll_delay: Duration::ZERO,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--seed" => out.seed = true,
            "--hybrid" => out.hybrid = true,
            "--failing-release" => out.failing_release = true,
            "--invoker" => match it.next().map(String::as_str) {
                Some("cli") => out.lambda = false,
                Some("lambda") => out.lambda = true,
                other => return Err(format!("--invoker: expected cli or lambda, got {other:?}")),
            },
            "--poll-delay" => {
                let v = it.next().ok_or("--poll-delay needs seconds")?;
                out.poll_delay = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("--poll-delay: expected seconds, got {v:?}"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(out))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("local-pipeline: {e}\nTry 'local-pipeline --help'.");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("local-pipeline: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = if args.hybrid {
        rt.block_on(hybrid(args))
    } else {
        rt.block_on(run(args))
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("local-pipeline: {e}");
            ExitCode::from(2)
        }
    }
}

/// The directory holding this binary and the function binaries.
fn bin_dir() -> Result<PathBuf, Error> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| Error::Setup("cannot tell where this binary is".into()))
}

async fn run(args: Args) -> Result<bool, Error> {
    let cloud = std::env::var("AWS_ENDPOINT_URL").map_err(|_| {
        Error::Setup(
            "AWS_ENDPOINT_URL is not set: start moto with `scripts/services.sh start` and \
             `eval \"$(scripts/services.sh env)\"`"
                .into(),
        )
    })?;
    let onprem = std::env::var("SNAPSTAGE_MOTO_ONPREM")
        .unwrap_or_else(|_| "http://127.0.0.1:5101".to_string());
    let clients = Clients::new(&cloud, &onprem).await;
    let demo = if args.seed {
        eprintln!("seeding the demo data in {cloud} and {onprem} ...");
        seed::seed(&clients).await?
    } else {
        seed::existing(&clients).await?.ok_or_else(|| {
            Error::Setup(format!(
                "no demo data in {cloud}: run with --seed to create it"
            ))
        })?
    };
    eprintln!(
        "production volume {}, {} artifact objects in s3://{}/{}",
        demo.production_volume_id,
        demo.artifact_keys.len(),
        seed::ARTIFACT_BUCKET,
        seed::ARTIFACT_PREFIX
    );
    // The local control plane (scripts/localkube.sh) when it runs: the deploy is real there.
    let kubeconfig = std::env::var("SNAPSTAGE_KUBECONFIG_DEPLOY_STAGING_DB")
        .ok()
        .filter(|p| Path::new(p).is_file());
    match &kubeconfig {
        Some(k) => {
            eprintln!("deploying the staging database to the local Kubernetes control plane ({k})")
        }
        None => eprintln!(
            "no local Kubernetes control plane (SNAPSTAGE_KUBECONFIG_DEPLOY_STAGING_DB unset): the deploy step only plans (dryRun)"
        ),
    }
    let mut pipeline = seed::demo_pipeline(
        &demo.production_volume_id,
        &demo.onprem_endpoint,
        kubeconfig.as_deref(),
    );
    // The release: a web tier in moto, behind the instance-refresh double.
    let web = asg::seed(
        &asg::Clients::new(&cloud).await,
        seed::WEB_TIER,
        seed::WEB_INSTANCES,
    )
    .await?;
    let refresh = RefreshDouble::start(&cloud)
        .map_err(|e| Error::Setup(format!("instance-refresh double: {e}")))?;
    if args.failing_release {
        refresh.fail_health_checks(&web.release_image).await;
    }
    eprintln!(
        "web tier {} ({} instances, launch template {}): releasing {}{}; instance refreshes answered by {}",
        web.group,
        seed::WEB_INSTANCES,
        web.template_id,
        web.release_image,
        if args.failing_release {
            " (failing its health checks)"
        } else {
            ""
        },
        refresh.url
    );
    pipeline
        .actions
        .push(seed::release_action(&web.group, &web.release_image));

    let jobs = JobService::start()
        .await
        .map_err(|e| Error::Setup(format!("job service: {e}")))?;
    let bin_dir = bin_dir()?;
    let functions = Functions::new(&bin_dir, &jobs.url)
        .moto(&cloud)
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", &refresh.url)
        .env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", &refresh.url)
        .env("SNAPSTAGE_ROLLOUT_ALLOWED_GROUPS", &web.group);
    for a in &pipeline.actions {
        functions.binary(&a.function)?;
    }
    let options = Options {
        poll_delay: args.poll_delay,
        ..Options::default()
    };
    let log_dir = bin_dir.parent().unwrap_or(&bin_dir).join("local-pipeline");
    if args.lambda {
        let emulator = emulator(&log_dir).await?;
        eprintln!(
            "Lambda Runtime API emulator at {}; function logs in {}",
            emulator.url,
            log_dir.display()
        );
        let invoker = LambdaInvoker::new(functions, emulator, &log_dir)?;
        drive(&pipeline, &jobs, &invoker, &options).await
    } else {
        drive(&pipeline, &jobs, &CliInvoker::new(functions), &options).await
    }
}

/// The Lambda Runtime API emulator: `SNAPSTAGE_LAMBDA_EMULATOR`, or `cargo lambda watch` started.
async fn emulator(log_dir: &Path) -> Result<Emulator, Error> {
    match std::env::var("SNAPSTAGE_LAMBDA_EMULATOR") {
        Ok(url) => Ok(Emulator::existing(&url)),
        Err(_) => {
            let root = workspace_root();
            Emulator::start(
                &cargo_lambda(&root),
                &root,
                log_dir,
                Duration::from_secs(60),
            )
            .await
        }
    }
}

/// `--hybrid`: the hybrid Jenkins/Nexus flow ([`snapstage_localenv::hybrid`]).
async fn hybrid(args: Args) -> Result<bool, Error> {
    let cloud = std::env::var("AWS_ENDPOINT_URL").map_err(|_| {
        Error::Setup(
            "AWS_ENDPOINT_URL is not set: run `make demo-hybrid`, or start the services with \
             `scripts/services.sh start` and `eval \"$(scripts/services.sh env)\"`"
                .into(),
        )
    })?;
    let kube = LocalKube::get("demo-hybrid").ok_or_else(|| {
        Error::Setup("the local Kubernetes control plane is not running (see above)".into())
    })?;
    eprintln!("starting two FlashArray doubles ({ONPREM} on-prem, {CLOUD} Cloud Block Store) ...");
    let site = Site::prepare(&cloud, kube)
        .await?
        .ok_or_else(|| Error::Setup("the FlashArray double cannot start (see above)".into()))?;
    eprintln!(
        "on-prem: {JENKINS_HOME} and {NEXUS_BLOBS} in protection group {PGROUP} replicating to {CLOUD}; \
         Nexus StatefulSet {ONPREM_NAMESPACE}/{} Ready on {NEXUS_BLOBS}",
        site.onprem_nexus
    );
    let jobs = JobService::start()
        .await
        .map_err(|e| Error::Setup(format!("job service: {e}")))?;
    let bin_dir = bin_dir()?;
    let functions = hybrid::functions(&bin_dir, &jobs, &cloud);
    let pipeline = site.pipeline();
    for a in &pipeline.actions {
        functions.binary(&a.function)?;
    }
    let log_dir = bin_dir.parent().unwrap_or(&bin_dir).join("local-pipeline");
    let report = if args.lambda {
        let emulator = emulator(&log_dir).await?;
        eprintln!(
            "Lambda Runtime API emulator at {}; function logs in {}",
            emulator.url,
            log_dir.display()
        );
        let invoker = LambdaInvoker::new(functions.clone(), emulator, &log_dir)?;
        hybrid::run(&site, &jobs, &invoker, &functions).await?
    } else {
        hybrid::run(
            &site,
            &jobs,
            &CliInvoker::new(functions.clone()),
            &functions,
        )
        .await?
    };
    println!();
    print!("{}", report.run.timeline);
    println!();
    println!("{}", report.run.summary_line(pipeline.actions.len()));
    for (what, ns) in [
        ("Jenkins", &report.jenkins_namespace),
        ("Nexus", &report.nexus_namespace),
    ] {
        if let Some(ns) = ns {
            println!("cloud {what}: namespace {ns}, Ready");
        }
    }
    if report.run.succeeded() {
        println!(
            "on-prem rehydrate (the Jenkins stage, CLI): exit {}, {}",
            report.rehydrate_code,
            report.rehydrate["summary"].as_str().unwrap_or("no result")
        );
        println!(
            "on-prem Nexus {ONPREM_NAMESPACE}/{}: {} Ready; volume {NEXUS_BLOBS} {} the cloud-published {PUBLISHED}",
            report.onprem_nexus,
            report.onprem_ready,
            if report.onprem_files.get(PUBLISHED).is_some() {
                "holds"
            } else {
                "does NOT hold"
            }
        );
    }
    site.arrays.assert_no_violations().await;
    Ok(report.succeeded())
}

async fn drive<I: Invoker>(
    pipeline: &Pipeline,
    jobs: &JobService,
    invoker: &I,
    options: &Options,
) -> Result<bool, Error> {
    eprintln!(
        "running pipeline {} ({} actions) with the {} invoker; job service at {}",
        pipeline.name,
        pipeline.actions.len(),
        invoker.name(),
        jobs.url
    );
    let run = pipeline::run(pipeline, jobs, invoker, options).await?;
    println!();
    print!("{}", run.timeline);
    println!();
    let calls = jobs.calls();
    let results = calls.iter().filter(|c| c.is_result()).count();
    let rejected = calls.iter().filter(|c| c.error.is_some()).count();
    println!(
        "job service: {} calls, {results} job results, {rejected} rejected",
        calls.len()
    );
    println!("{}", run.summary_line(pipeline.actions.len()));
    Ok(run.succeeded())
}
