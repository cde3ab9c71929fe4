//! Secret hygiene through the real binaries: each of the five functions runs as a CLI with
//! recognisable fake secrets wherever a user puts secrets — the FlashArray API token and the
//! replication credentials and the kubeconfig in (moto's) Secrets Manager (deploy-staging-db reads
//! no database admin password any more: its reset runs inside the staging pod), the artifact credentials of a CodePipeline job event, the process's own AWS
//! secret key and session token — with the most verbose logging the binaries honour
//! (`RUST_LOG=trace`, every crate), on a success and a failure path each. stdout, stderr and
//! every job result CodePipeline receives are scanned for every secret.
//!
//! The same job events also go through one warm runtime behind the `cargo lambda watch` Runtime
//! API emulator, its log (what CloudWatch would keep) scanned the same way.
//!
//! Needs `SNAPSTAGE_MOTO_CLOUD` / `SNAPSTAGE_MOTO_ONPREM` (set by `make test`), `.venv` for the
//! FlashArray double and the binaries (`cargo build --workspace --bins`); prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use common::{bin_dir, lambda_invoker};
use serde_json::{Value, json};
use snapstage_localenv::event::{JobEventSpec, job_event};
use snapstage_localenv::flasharray_double::{Double, TOKEN as FLASHARRAY_TOKEN};
use snapstage_localenv::invoker::{Functions, Invoker};
use snapstage_localenv::jobservice::{JobService, JobSpec, new_execution_id};
use snapstage_localenv::testkit::{self, CliRun, unique};

const GIB: u64 = 1 << 30;
const REPLICATION_SECRET_KEY: &str = "HYGIENEreplicationSECRETkey0123456789abcd";
const KUBE_TOKEN: &str = "hygiene-kubeconfig-bearer-token-5e6f7a8b";
const ARTIFACT_SECRET_KEY: &str = "HYGIENEartifactSECRETkey0123456789abcdef";
const ARTIFACT_SESSION_TOKEN: &str = "HYGIENEartifactSESSIONtoken0123456789abcdef";
const ENV_SECRET_KEY: &str = "HYGIENEprocessSECRETkey0123456789abcdefgh";
const ENV_SESSION_TOKEN: &str = "HYGIENEprocessSESSIONtoken0123456789abcdefg";

const SECRETS: [&str; 7] = [
    FLASHARRAY_TOKEN,
    REPLICATION_SECRET_KEY,
    KUBE_TOKEN,
    ARTIFACT_SECRET_KEY,
    ARTIFACT_SESSION_TOKEN,
    ENV_SECRET_KEY,
    ENV_SESSION_TOKEN,
];

/// Runs `function` with `event` on stdin, trace logging, the process's own fake secrets.
async fn run(function: &str, cloud: &str, event: Value, env: Vec<(String, String)>) -> CliRun {
    let bin = bin_dir().join(function);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins`",
        bin.display()
    );
    let cloud = cloud.to_string();
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<(&str, &str)> = vec![
            ("RUST_LOG", "trace"),
            ("AWS_SECRET_ACCESS_KEY", ENV_SECRET_KEY),
            ("AWS_SESSION_TOKEN", ENV_SESSION_TOKEN),
            ("SNAPSTAGE_FLASHARRAY_ALLOW_HTTP_FOR_TESTS", "1"),
            ("SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS", "5"),
            ("SNAPSTAGE_AWS_OPERATION_TIMEOUT_SECS", "15"),
        ];
        all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        testkit::run_cli(bin.to_str().unwrap(), &cloud, &event, &[], &all)
    })
    .await
    .unwrap()
}

/// What each run printed and what CodePipeline received, for the final scan.
#[derive(Default)]
struct Seen {
    runs: Vec<(String, String)>,
}

impl Seen {
    fn add(&mut self, what: &str, r: &CliRun) {
        let text = format!(
            "{}\n{}",
            serde_json::to_string(&r.results).unwrap(),
            r.stderr
        );
        self.runs.push((what.to_string(), text));
    }

    fn add_text(&mut self, what: &str, text: String) {
        self.runs.push((what.to_string(), text));
    }

    fn assert_clean(&self) {
        let mut leaks = Vec::new();
        for (what, text) in &self.runs {
            for secret in SECRETS {
                if let Some(at) = text.find(secret) {
                    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                    let line: String = text[line_start..line_end].chars().take(600).collect();
                    leaks.push(format!("{what}: {secret:?} in: {line}"));
                }
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

async fn secret(sm: &aws_sdk_secretsmanager::Client, tag: &str, value: &str) -> String {
    let name = unique(&format!("snapstage/hygiene-{tag}"));
    sm.create_secret()
        .name(&name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
    name
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn no_secret_reaches_a_log_output_or_result_of_any_function() {
    let Some(m) = testkit::moto("secret hygiene") else {
        return;
    };
    let Some(d) = Double::start(&["fa"]) else {
        return;
    };
    d.seed(
        "fa",
        json!({"volumes": [{"name": "orders-db", "provisioned": 8 * GIB}]}),
    )
    .await;
    let config = testkit::sdk_config(&m.cloud).await;
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let onprem = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&testkit::sdk_config(&m.onprem).await)
            .force_path_style(true)
            .build(),
    );
    let fa_secret = secret(
        &sm,
        "fa",
        &json!({"apiToken": FLASHARRAY_TOKEN}).to_string(),
    )
    .await;
    let replication = secret(
        &sm,
        "replication",
        &json!({"accessKeyId": "AKIAHYGIENEREPLICATE", "secretAccessKey": REPLICATION_SECRET_KEY})
            .to_string(),
    )
    .await;
    let closed = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let kubeconfig = secret(
        &sm,
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: staging\n  cluster:\n    server: \
             https://127.0.0.1:{closed}\n    insecure-skip-tls-verify: true\nusers:\n- name: \
             deployer\n  user:\n    token: {KUBE_TOKEN}\ncontexts:\n- name: staging\n  \
             context:\n    cluster: staging\n    user: deployer\ncurrent-context: staging\n"
        ),
    )
    .await;
    let mut seen = Seen::default();
    let fa = json!({"endpoint": d.url("fa"), "apiTokenSecret": fa_secret});

    // snapshot-production on the FlashArray: success, then a volume that is not there.
    let r = run(
        "snapshot-production",
        &m.cloud,
        json!({"backend": "flasharray", "volumeIds": ["orders-db"], "flasharray": fa,
               "executionId": unique("hygiene")}),
        vec![],
    )
    .await;
    assert_eq!(
        r.last()["status"],
        "Succeeded",
        "{}\n{}",
        r.last(),
        r.stderr
    );
    assert!(
        r.stderr.contains("TRACE"),
        "trace logging is on (the scan reads the most verbose logs)"
    );
    let snapshot = r.last()["outputVariables"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_string();
    seen.add("snapshot-production success", &r);
    let r = run(
        "snapshot-production",
        &m.cloud,
        json!({"backend": "flasharray", "volumeIds": ["no-such-volume"], "flasharray": fa,
               "executionId": unique("hygiene")}),
        vec![],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.last());
    seen.add("snapshot-production failure", &r);

    // restore-to-staging on the FlashArray: the snapshot just made, then one that is not there.
    let r = run(
        "restore-to-staging",
        &m.cloud,
        json!({"backend": "flasharray", "snapshotId": snapshot, "flasharray": fa,
               "executionId": unique("hygiene")}),
        vec![],
    )
    .await;
    assert_eq!(
        r.last()["status"],
        "Succeeded",
        "{}\n{}",
        r.last(),
        r.stderr
    );
    seen.add("restore-to-staging success", &r);
    let r = run(
        "restore-to-staging",
        &m.cloud,
        json!({"backend": "flasharray", "snapshotId": "orders-db.no-such-snapshot",
               "flasharray": fa, "executionId": unique("hygiene")}),
        vec![],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.last());
    seen.add("restore-to-staging failure", &r);

    // deploy-staging-db: the plan (success), then a real deploy whose kubeconfig (from Secrets
    // Manager, with a bearer token) names an API server nothing answers on. The volume is the
    // staging volume restore-to-staging made for the run (its tags), so the interlock passes
    // and the deploy goes on to the cluster.
    let execution = unique("hygiene");
    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    let volume = aws_sdk_ec2::Client::new(&config)
        .create_volume()
        .availability_zone("us-east-1a")
        .size(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Volume)
                .tags(tag("snapstage:managed-by", "snapstage"))
                .tags(tag("snapstage:role", "staging"))
                .tags(tag("snapstage:execution", &execution))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .volume_id()
        .unwrap()
        .to_string();
    let deploy = json!({"cluster": {"kubeconfigSecret": kubeconfig}, "volumeId": volume,
        "availabilityZone": "us-east-1a", "engine": "postgresql",
        "executionId": execution});
    let mut plan = deploy.clone();
    plan["dryRun"] = json!(true);
    let r = run("deploy-staging-db", &m.cloud, plan, vec![]).await;
    assert_eq!(
        r.last()["status"],
        "Succeeded",
        "{}\n{}",
        r.last(),
        r.stderr
    );
    seen.add("deploy-staging-db plan", &r);
    let r = run("deploy-staging-db", &m.cloud, deploy, vec![]).await;
    assert_eq!(r.code, 1, "{}", r.last());
    seen.add("deploy-staging-db failure", &r);

    // replicate-artifacts-back with the replication credentials from Secrets Manager, as a
    // CodePipeline job (artifact credentials in the event): success, then a missing bucket.
    let (src, dst) = (unique("hygiene-src"), unique("hygiene-dst"));
    s3.create_bucket().bucket(&src).send().await.unwrap();
    onprem.create_bucket().bucket(&dst).send().await.unwrap();
    s3.put_object()
        .bucket(&src)
        .key("blobs/a.bytes")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"artifact"))
        .send()
        .await
        .unwrap();
    let jobs = JobService::start().await.unwrap();
    for (what, source) in [
        ("success", src.as_str()),
        ("failure", "hygiene-no-such-bucket"),
    ] {
        let job = jobs.register_job(JobSpec {
            pipeline_name: "shop".into(),
            stage: "Artifacts".into(),
            action: "ReplicateBack".into(),
            execution_id: new_execution_id(),
            ..JobSpec::default()
        });
        let up = json!({"sourceBucket": source, "destinationBucket": dst,
            "destinationEndpoint": m.onprem, "destinationCredentialsSecret": replication})
        .to_string();
        let mut event = job_event(&JobEventSpec {
            job_id: &job,
            function_name: "replicate-artifacts-back",
            user_parameters: &up,
            continuation_token: None,
        });
        event["CodePipeline.job"]["data"]["artifactCredentials"] = json!({
            "accessKeyId": "ASIAHYGIENEARTIFACT0",
            "secretAccessKey": ARTIFACT_SECRET_KEY,
            "sessionToken": ARTIFACT_SESSION_TOKEN,
        });
        let r = run(
            "replicate-artifacts-back",
            &m.cloud,
            event,
            env(&[("AWS_ENDPOINT_URL_CODEPIPELINE", &jobs.url)]),
        )
        .await;
        assert_eq!(r.code, 0, "the result was delivered: {}", r.stderr);
        let outcome = jobs.result_for(&job).unwrap();
        assert_eq!(
            outcome.status(),
            if what == "success" {
                "Succeeded"
            } else {
                "Failed"
            },
            "{outcome:?}\n{}",
            r.stderr
        );
        seen.add(&format!("replicate-artifacts-back {what}"), &r);
        seen.add_text(
            &format!("replicate-artifacts-back {what}: the job result"),
            format!("{outcome:?}"),
        );
    }

    // roll-out-release as a CodePipeline job (artifact credentials in the event) on a moto web
    // tier behind the instance-refresh double: a release that succeeds, then a group that is not
    // there.
    let web = snapstage_localenv::asg::seed(
        &snapstage_localenv::asg::Clients::new(&m.cloud).await,
        &unique("hy"),
        2,
    )
    .await
    .unwrap();
    let refresh = snapstage_localenv::refresh::RefreshDouble::start(&m.cloud).unwrap();
    for (what, group) in [
        ("success", web.group.as_str()),
        ("failure", "hygiene-no-such-group"),
    ] {
        let job = jobs.register_job(JobSpec {
            pipeline_name: "shop".into(),
            stage: "Release".into(),
            action: "Release".into(),
            execution_id: new_execution_id(),
            ..JobSpec::default()
        });
        let up = json!({"autoScalingGroupName": group, "imageId": web.release_image}).to_string();
        let mut event = job_event(&JobEventSpec {
            job_id: &job,
            function_name: "roll-out-release",
            user_parameters: &up,
            continuation_token: None,
        });
        event["CodePipeline.job"]["data"]["artifactCredentials"] = json!({
            "accessKeyId": "ASIAHYGIENEARTIFACT0",
            "secretAccessKey": ARTIFACT_SECRET_KEY,
            "sessionToken": ARTIFACT_SESSION_TOKEN,
        });
        let allowed = format!("{},hygiene-no-such-group", web.group);
        let r = run(
            "roll-out-release",
            &m.cloud,
            event,
            env(&[
                ("AWS_ENDPOINT_URL_CODEPIPELINE", &jobs.url),
                ("AWS_ENDPOINT_URL_AUTO_SCALING", &refresh.url),
                ("SNAPSTAGE_ROLLOUT_ALLOWED_GROUPS", &allowed),
            ]),
        )
        .await;
        assert_eq!(r.code, 0, "the result was delivered: {}", r.stderr);
        let outcome = jobs.result_for(&job).unwrap();
        // The first step of a release starts the refresh and answers in progress.
        let want = if what == "success" {
            "InProgress"
        } else {
            "Failed"
        };
        assert_eq!(outcome.status(), want, "{outcome:?}\n{}", r.stderr);
        seen.add(&format!("roll-out-release {what}"), &r);
        seen.add_text(
            &format!("roll-out-release {what}: the job result"),
            format!("{outcome:?}"),
        );
    }
    seen.assert_clean();
}

/// In Lambda (the Runtime API emulator, one warm runtime per function), with `RUST_LOG=trace`:
/// a job event's artifact credentials never reach the function's log — CloudWatch Logs keeps it.
#[tokio::test]
async fn no_secret_reaches_the_lambda_log_at_trace_level() {
    let Some(m) = testkit::moto("secret hygiene in Lambda") else {
        return;
    };
    // Logs of earlier runs would be scanned too: start from none.
    let _ = std::fs::remove_dir_all(common::scratch("hygiene-lambda"));
    let jobs = JobService::start().await.unwrap();
    let functions = Functions::new(bin_dir(), &jobs.url)
        .moto(&m.cloud)
        .env("AWS_ACCESS_KEY_ID", "AKIAHYGIENELAMBDA001")
        .env("AWS_SECRET_ACCESS_KEY", ENV_SECRET_KEY)
        .env("AWS_SESSION_TOKEN", ENV_SESSION_TOKEN)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("RUST_LOG", "trace");
    let Some(invoker) = lambda_invoker(functions, "hygiene-lambda").await else {
        return;
    };
    let mut seen = Seen::default();
    for (function, up) in [
        (
            "snapshot-production",
            json!({"volumeIds": ["vol-0123456789abcdef0"]}),
        ),
        (
            "restore-to-staging",
            json!({"snapshotId": "snap-0123456789abcdef0"}),
        ),
        (
            "deploy-staging-db",
            json!({"volumeId": "vol-0123456789abcdef0", "availabilityZone": "us-east-1a",
                   "engine": "postgresql", "dryRun": true}),
        ),
        (
            "replicate-artifacts-back",
            json!({"sourceBucket": "hygiene-no-such-bucket", "destinationBucket": "x",
                   "destinationEndpoint": m.onprem}),
        ),
        (
            "roll-out-release",
            json!({"autoScalingGroupName": "hygiene-web", "imageId": "ami-0123456789abcdef0",
                   "dryRun": true}),
        ),
    ] {
        let job = jobs.register_job(JobSpec {
            pipeline_name: "shop".into(),
            stage: "Data".into(),
            action: "Hygiene".into(),
            execution_id: new_execution_id(),
            ..JobSpec::default()
        });
        let up = up.to_string();
        let mut event = job_event(&JobEventSpec {
            job_id: &job,
            function_name: function,
            user_parameters: &up,
            continuation_token: None,
        });
        event["CodePipeline.job"]["data"]["artifactCredentials"] = json!({
            "accessKeyId": "ASIAHYGIENEARTIFACT0",
            "secretAccessKey": ARTIFACT_SECRET_KEY,
            "sessionToken": ARTIFACT_SESSION_TOKEN,
        });
        let out = invoker.invoke(function, &event).await.unwrap();
        assert!(out.ok, "{function}: {}", out.output);
        assert_eq!(jobs.result_calls_for(&job), 1, "{function}: one result");
        seen.add_text(&format!("{function} in Lambda: the response"), out.output);
        seen.add_text(
            &format!("{function} in Lambda: the job result"),
            format!("{:?}", jobs.result_for(&job)),
        );
        let log = std::fs::read_to_string(
            common::scratch("hygiene-lambda").join(format!("{function}.log")),
        )
        .unwrap_or_default();
        assert!(
            log.contains("TRACE"),
            "{function}: the runtime logs at trace level:\n{log}"
        );
        seen.add_text(&format!("{function} in Lambda: its log"), log);
    }
    seen.assert_clean();
}
