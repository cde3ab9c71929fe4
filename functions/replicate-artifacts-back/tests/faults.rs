//! replicate-artifacts-back when its S3 calls go wrong: the CLI binary against the two moto
//! servers ("cloud" and "on-prem") through the fault-injecting proxy — in front of the destination
//! (`destinationEndpoint`), the source (`AWS_ENDPOINT_URL_S3`), or both. Throttling, 5xx, reset
//! connections and lost answers are retried and the copy still ends byte-identical; an answer that
//! never comes ends in a typed failure or a continuation, never a hang; and a run cut short after
//! any of its destination calls, then re-run with the same execution, leaves the destination
//! byte-identical to the source with no multipart upload left open (counted with
//! ListMultipartUploads on the on-prem moto, not through snapstage).
//!
//! Needs `SNAPSTAGE_MOTO_CLOUD` / `SNAPSTAGE_MOTO_ONPREM` (set by `make test`); prints SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use common::{MIB, content, get, put, put_multipart, s3};
use std::time::Duration;

use serde_json::{Value, json};
use snapstage_localenv::faults::{Crash, Fault, FaultProxy, Rule};
use snapstage_localenv::testkit::{self, CliRun, Moto, moto, spawn_cli, unique};

const BIN: &str = env!("CARGO_BIN_EXE_replicate-artifacts-back");

async fn keys(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = c.list_objects_v2().bucket(bucket).send().await.unwrap();
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .filter(|k| !k.starts_with(".snapstage/"))
        .collect();
    keys.sort();
    keys
}

/// Multipart uploads still open in `bucket`, straight from the on-prem moto.
async fn open_uploads(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    c.list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .iter()
        .map(|u| format!("{} {}", u.key().unwrap_or(""), u.upload_id().unwrap_or("")))
        .collect()
}

/// The two sides of one test: a source bucket in the cloud moto, a destination bucket on-prem.
struct Sides {
    m: Moto,
    cloud: aws_sdk_s3::Client,
    onprem: aws_sdk_s3::Client,
    src: String,
    dst: String,
}

impl Sides {
    async fn new(m: Moto, tag: &str) -> Self {
        let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
        let (src, dst) = (unique(&format!("{tag}-src")), unique(&format!("{tag}-dst")));
        cloud.create_bucket().bucket(&src).send().await.unwrap();
        onprem.create_bucket().bucket(&dst).send().await.unwrap();
        Self {
            m,
            cloud,
            onprem,
            src,
            dst,
        }
    }

    /// A fresh destination bucket (for a run that must start from nothing).
    async fn new_destination(&mut self, tag: &str) {
        self.dst = unique(&format!("{tag}-dst"));
        self.onprem
            .create_bucket()
            .bucket(&self.dst)
            .send()
            .await
            .unwrap();
    }

    /// A small Nexus-like blob store with `big` multipart-sized objects: one written whole at the
    /// source (copied in 5 MiB parts), one written in 5 MiB parts (its parts mirrored).
    async fn fill(&self, big: bool) {
        let small: [(&str, Vec<u8>); 4] = [
            ("blobs/metadata.properties", b"type=file/1\n".to_vec()),
            ("blobs/content/a.bytes", content(1, 200_000)),
            ("blobs/content/a.properties", b"size=200000\n".to_vec()),
            ("blobs/content/empty.bytes", Vec::new()),
        ];
        for (k, body) in small {
            put(&self.cloud, &self.src, k, &body).await;
        }
        if big {
            put(
                &self.cloud,
                &self.src,
                "blobs/content/whole.bytes",
                &content(2, 6 * MIB + 5),
            )
            .await;
            put_multipart(
                &self.cloud,
                &self.src,
                "blobs/content/parted.bytes",
                &content(3, 5 * MIB + 77),
                5 * MIB,
            )
            .await;
        }
    }

    fn request(&self, destination_endpoint: &str, execution: &str) -> Value {
        json!({"sourceBucket": self.src, "sourcePrefix": "blobs/", "destinationBucket": self.dst,
               "destinationEndpoint": destination_endpoint, "partSizeMiB": 5,
               "executionId": execution})
    }

    /// Every source object is at the destination, byte for byte, nothing else, and no upload is
    /// left open.
    async fn assert_identical(&self, context: &str) {
        let want = keys(&self.cloud, &self.src).await;
        let got = keys(&self.onprem, &self.dst).await;
        assert_eq!(got, want, "{context}: the destination's keys");
        for k in &want {
            assert!(
                get(&self.cloud, &self.src, k).await == get(&self.onprem, &self.dst, k).await,
                "{context}: {k} differs"
            );
        }
        let open = open_uploads(&self.onprem, &self.dst).await;
        assert!(
            open.is_empty(),
            "{context}: multipart uploads left open: {open:?}"
        );
    }
}

/// Runs the binary (cloud moto as the default endpoint) off the async runtime.
async fn run(m: &Moto, request: &Value, args: &[&str], env: &[(&str, &str)]) -> CliRun {
    let (cloud, request) = (m.cloud.clone(), request.clone());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        testkit::run_cli(BIN, &cloud, &request, &args, &env)
    })
    .await
    .unwrap()
}

fn assert_succeeded(r: &CliRun, context: &str) {
    assert_eq!(
        (r.code, r.last()["status"].as_str()),
        (0, Some("Succeeded")),
        "{context}: {}\n{}",
        r.last(),
        r.stderr
    );
}

/// Faults applied, by name, for the failure messages.
fn applied(p: &FaultProxy) -> Vec<String> {
    p.seen()
        .into_iter()
        .filter_map(|s| s.fault.map(|f| format!("{} → {f}", s.op)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_and_5xx_on_reads_and_writes_are_retried_to_a_byte_identical_copy() {
    let Some(m) = moto("throttling_and_5xx_are_retried") else {
        return;
    };
    let sides = Sides::new(m, "throttle").await;
    sides.fill(true).await;
    let source = FaultProxy::start(&sides.m.cloud).unwrap();
    source
        .add(Rule::new("ListObjectsV2", Fault::s3_slow_down(), 1))
        .add(Rule::new(
            "GetObject /",
            Fault::s3(500, "InternalError", "We encountered an internal error."),
            2,
        ))
        .add(Rule::new("HeadObject /", Fault::s3_slow_down(), 1));
    let destination = FaultProxy::start(&sides.m.onprem).unwrap();
    destination
        .add(Rule::new("PutObject", Fault::s3_slow_down(), 2))
        .add(Rule::new(
            "UploadPart",
            Fault::s3(500, "InternalError", "We encountered an internal error."),
            2,
        ))
        .add(Rule::new("CreateMultipartUpload", Fault::status(503), 1))
        .add(Rule::new(
            "PutObject",
            Fault::s3(
                400,
                "RequestTimeout",
                "Your socket connection to the server was not read from or written to within the timeout period.",
            ),
            1,
        ))
        .add(Rule::new("HeadObject", Fault::status(502), 1));
    let r = run(
        &sides.m,
        &sides.request(&destination.url, &unique("throttle")),
        &[],
        &[("AWS_ENDPOINT_URL_S3", &source.url)],
    )
    .await;
    assert_succeeded(&r, "throttled and 5xx");
    assert_eq!(r.output("ObjectsCopied"), "6", "{}", r.last());
    sides.assert_identical("throttled and 5xx").await;
    // Every scripted fault was met (the test exercised what it says).
    let (src_faults, dst_faults) = (applied(&source), applied(&destination));
    assert_eq!(src_faults.len(), 4, "{src_faults:?}");
    assert_eq!(dst_faults.len(), 7, "{dst_faults:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_continued_run_lists_the_source_from_its_checkpoint_cursor() {
    let Some(m) = moto("a_continued_run_lists_the_source_from_its_checkpoint_cursor") else {
        return;
    };
    let sides = Sides::new(m, "cursor").await;
    sides.fill(false).await;
    let source = FaultProxy::start(&sides.m.cloud).unwrap();
    let request = sides.request(&sides.m.onprem, &unique("cursor"));
    // Windows of one key, every step near its deadline: a step copies one window.
    let env = [
        ("AWS_ENDPOINT_URL_S3", source.url.as_str()),
        ("SNAPSTAGE_REPLICATE_WINDOW", "1"),
        ("SNAPSTAGE_DEADLINE_MARGIN_MS", "0"),
    ];
    let args = ["--step-budget", "25", "--no-follow"];
    let first_listing = |from: usize| {
        source.seen()[from..]
            .iter()
            .find(|s| s.op.starts_with("ListObjectsV2"))
            .and_then(|s| s.query.clone())
            .unwrap_or_default()
    };
    let one = run(&sides.m, &request, &args, &env).await;
    assert_eq!(one.last()["status"], "InProgress", "{}", one.stderr);
    assert!(
        !first_listing(0).contains("start-after"),
        "{}",
        first_listing(0)
    );
    // The next invocation lists after the first window's key: not from the start.
    let seen = source.seen().len();
    let two = run(&sides.m, &request, &args, &env).await;
    assert_eq!(two.last()["status"], "InProgress", "{}", two.stderr);
    let query = first_listing(seen);
    assert!(
        query.contains("start-after=blobs%2Fcontent%2Fa.bytes"),
        "{query}"
    );
    let rest = run(&sides.m, &request, &[], &env[..2]).await;
    assert_succeeded(&rest, "the rest");
    assert_eq!(rest.output("ObjectsCopied"), "4", "{}", rest.last());
    sides.assert_identical("continued from its cursor").await;
}

/// Extra environment for one scenario.
type Env<'a> = &'a [(&'a str, &'a str)];

#[tokio::test(flavor = "multi_thread")]
async fn resets_and_lost_answers_on_writes_converge_with_no_upload_left_open() {
    let Some(m) = moto("resets_and_lost_answers_converge") else {
        return;
    };
    let mut sides = Sides::new(m, "lost").await;
    sides.fill(true).await;
    // One fault at a time (each its own run into an empty destination), then all at once.
    let faults: Vec<Vec<Rule>> = vec![
        vec![Rule::new("PutObject", Fault::Reset, 1)],
        vec![Rule::new("PutObject", Fault::LoseAnswer, 1)],
        vec![Rule::new("CreateMultipartUpload", Fault::LoseAnswer, 1)],
        vec![Rule::new("UploadPart", Fault::Reset, 1)],
        vec![Rule::new("UploadPart", Fault::LoseAnswer, 1)],
        vec![Rule::new("CompleteMultipartUpload", Fault::LoseAnswer, 1)],
        vec![Rule::new("CompleteMultipartUpload", Fault::Reset, 1)],
        vec![Rule::new("HeadObject", Fault::Reset, 1)],
        vec![
            Rule::new("PutObject", Fault::LoseAnswer, 2),
            Rule::new("CreateMultipartUpload", Fault::LoseAnswer, 2),
            Rule::new("UploadPart", Fault::LoseAnswer, 2),
            Rule::new("CompleteMultipartUpload", Fault::LoseAnswer, 1),
            Rule::new("*", Fault::Reset, 2),
        ],
    ];
    let mut scenarios: Vec<(Vec<Rule>, Env)> = faults.into_iter().map(|r| (r, &[][..])).collect();
    // A PutObject answered after the attempt timeout: applied, its answer too late (as lost).
    scenarios.push((
        vec![Rule::new(
            "PutObject /",
            Fault::Slow(Duration::from_secs(6)),
            1,
        )],
        &[("SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS", "3")],
    ));
    for (rules, env) in scenarios {
        let context = format!("{rules:?}");
        sides.new_destination("lost").await;
        let destination = FaultProxy::start(&sides.m.onprem).unwrap();
        for rule in rules {
            destination.add(rule);
        }
        let request = sides.request(&destination.url, &unique("lost"));
        let r = run(&sides.m, &request, &[], env).await;
        assert!(
            !applied(&destination).is_empty(),
            "{context}: no fault applied"
        );
        if r.code != 0 {
            // A write whose outcome stayed unknown may fail the run (typed, naming the key); the
            // re-run with the same execution must then finish the copy.
            assert_eq!(r.code, 1, "{context}: {}", r.stderr);
            destination.heal();
            let again = run(&sides.m, &request, &[], env).await;
            assert_succeeded(&again, &context);
        } else {
            assert_succeeded(&r, &context);
        }
        sides.assert_identical(&context).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_call_ends_in_a_typed_failure_or_a_continuation_never_a_hang() {
    let Some(m) = moto("an_unanswered_call_never_hangs") else {
        return;
    };
    let mut sides = Sides::new(m, "hang").await;
    sides.fill(true).await;

    // Short SDK timeouts: every PutObject unanswered is a typed failure naming the object.
    let destination = FaultProxy::start(&sides.m.onprem).unwrap();
    destination.add(Rule::always("PutObject /", Fault::Hang));
    let execution = unique("hang");
    let r = spawn_cli(
        BIN,
        &sides.m.cloud,
        &sides.request(&destination.url, &execution),
        &[],
        &[
            ("SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS", "1"),
            ("SNAPSTAGE_AWS_OPERATION_TIMEOUT_SECS", "3"),
        ],
    )
    .wait_within(Duration::from_secs(120));
    assert_eq!(r.code, 1, "{}\n{}", r.last(), r.stderr);
    assert_eq!(r.last()["failureType"], "SystemUnavailable", "{}", r.last());
    let message = r.last()["message"].as_str().unwrap();
    assert!(
        message.contains("blobs/content/a.bytes") && message.contains("re-run"),
        "{message}"
    );
    // The same execution, healed, completes.
    destination.heal();
    let again = run(
        &sides.m,
        &sides.request(&destination.url, &execution),
        &[],
        &[],
    )
    .await;
    assert_succeeded(&again, "after the timeouts");
    sides.assert_identical("after the timeouts").await;

    // Default SDK timeouts (60 s per attempt) and a step budget of 20 s: the unanswered
    // UploadPart is cut by the step's deadline, which answers "in progress", not a hang.
    sides.new_destination("hang").await;
    let destination = FaultProxy::start(&sides.m.onprem).unwrap();
    destination.add(Rule::always("UploadPart", Fault::Hang));
    let execution = unique("hang-deadline");
    let r = spawn_cli(
        BIN,
        &sides.m.cloud,
        &sides.request(&destination.url, &execution),
        &["--step-budget", "20", "--no-follow"],
        &[],
    )
    .wait_within(Duration::from_secs(120));
    assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
    assert_eq!(r.last()["status"], "InProgress", "{}", r.last());
    let token = r.last()["continuationToken"].as_str().unwrap().to_string();
    destination.heal();
    let mut request = sides.request(&destination.url, &execution);
    request["continuationToken"] = Value::String(token);
    let again = run(&sides.m, &request, &[], &[]).await;
    assert_succeeded(&again, "after the deadline");
    sides.assert_identical("after the deadline").await;
}

/// How many destination calls one clean run makes.
async fn destination_calls_of_a_clean_run(sides: &mut Sides) -> usize {
    sides.new_destination("count").await;
    let proxy = FaultProxy::start(&sides.m.onprem).unwrap();
    let r = run(
        &sides.m,
        &json!({"sourceBucket": sides.src, "sourcePrefix": "blobs/", "destinationBucket": sides.dst,
                "destinationEndpoint": proxy.url, "partSizeMiB": 5, "concurrency": 1,
                "executionId": unique("count")}),
        &[],
        &[],
    )
    .await;
    assert_succeeded(&r, "clean run");
    proxy.seen().len()
}

/// A run cut short after each of its destination calls in turn — the call's answer lost and
/// nothing after it getting through, or the process killed while it waits for the next answer —
/// then re-run with the same execution: byte-identical, nothing lost, no upload left open.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_cut_short_after_any_destination_call_converges_with_no_open_upload() {
    let Some(m) = moto("a_run_cut_short_converges") else {
        return;
    };
    let mut sides = Sides::new(m, "crash").await;
    sides.fill(true).await;
    let calls = destination_calls_of_a_clean_run(&mut sides).await;
    assert!(calls >= 12, "list, 6 objects written and checked: {calls}");
    for crash in [Crash::LoseAnswer, Crash::HangAfter] {
        for n in 1..=calls {
            let context = format!("{crash:?} after destination call {n} of {calls}");
            sides.new_destination("crash").await;
            let execution = unique("crash");
            let proxy = FaultProxy::start(&sides.m.onprem).unwrap();
            let mut request = sides.request(&proxy.url, &execution);
            request["concurrency"] = json!(1);
            proxy.crash_after(n, crash);
            match crash {
                Crash::LoseAnswer => {
                    let r = run(&sides.m, &request, &[], &[("AWS_MAX_ATTEMPTS", "2")]).await;
                    if r.code == 0 {
                        // Only a last call whose outcome does not matter (the sweep of
                        // leftover uploads) can be lost and the run still succeed.
                        assert!(n == calls, "{context}: succeeded with calls lost");
                        sides.assert_identical(&context).await;
                    }
                }
                Crash::HangAfter => {
                    let mut child = spawn_cli(BIN, &sides.m.cloud, &request, &[], &[]);
                    for _ in 0..6000 {
                        if proxy.seen().len() > n || child.exited() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    child.kill();
                }
            }
            proxy.heal();
            let r = run(&sides.m, &request, &[], &[]).await;
            assert_succeeded(&r, &context);
            sides.assert_identical(&context).await;
        }
    }
}

/// The same, cut short after each of its *source* calls (listing, reads, and the checkpoint
/// saves, which go to the source bucket by default): the re-run converges as well.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_cut_short_after_any_source_call_converges_with_no_open_upload() {
    let Some(m) = moto("a_run_cut_short_after_any_source_call") else {
        return;
    };
    let mut sides = Sides::new(m, "srccrash").await;
    sides.fill(true).await;
    sides.new_destination("srccount").await;
    let counter = FaultProxy::start(&sides.m.cloud).unwrap();
    let mut request = sides.request(&sides.m.onprem, &unique("srccount"));
    request["concurrency"] = json!(1);
    let env = [("AWS_ENDPOINT_URL_S3", counter.url.as_str())];
    assert_succeeded(&run(&sides.m, &request, &[], &env).await, "clean run");
    let calls = counter.seen().len();
    assert!(calls >= 8, "list, reads, checkpoint: {calls}");
    for crash in [Crash::LoseAnswer, Crash::HangAfter] {
        for n in 1..=calls {
            let context = format!("{crash:?} after source call {n} of {calls}");
            sides.new_destination("srccrash").await;
            let source = FaultProxy::start(&sides.m.cloud).unwrap();
            let mut request = sides.request(&sides.m.onprem, &unique("srccrash"));
            request["concurrency"] = json!(1);
            let env = [
                ("AWS_ENDPOINT_URL_S3", source.url.as_str()),
                ("AWS_MAX_ATTEMPTS", "2"),
            ];
            source.crash_after(n, crash);
            match crash {
                Crash::LoseAnswer => {
                    let r = run(&sides.m, &request, &[], &env).await;
                    if r.code == 0 {
                        // The last checkpoint call (its removal) may be lost: the copy is done.
                        sides.assert_identical(&context).await;
                    }
                }
                Crash::HangAfter => {
                    let mut child = spawn_cli(BIN, &sides.m.cloud, &request, &[], &env);
                    for _ in 0..6000 {
                        if source.seen().len() > n || child.exited() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    child.kill();
                }
            }
            source.heal();
            let r = run(&sides.m, &request, &[], &env).await;
            assert_succeeded(&r, &context);
            sides.assert_identical(&context).await;
        }
    }
}

/// Pull mode (a local directory) with the source failing: reads reset, answers lost, a crash
/// after any source read. A file is either absent or complete under its final name; no partial
/// file is left once the run is done.
#[tokio::test(flavor = "multi_thread")]
async fn pull_mode_under_source_faults_leaves_no_partial_file() {
    let Some(m) = moto("pull_mode_under_source_faults") else {
        return;
    };
    let sides = Sides::new(m, "pull").await;
    sides.fill(true).await;
    let want = keys(&sides.cloud, &sides.src).await;
    let mut bodies = Vec::new();
    for k in &want {
        bodies.push((
            k.trim_start_matches("blobs/").to_string(),
            get(&sides.cloud, &sides.src, k).await,
        ));
    }
    // Every file under its final name is complete; with `done`, every file is there and no
    // other file (partial or not) is.
    let check = |dir: &std::path::Path, done: bool, context: &str| {
        let files = walk(dir);
        for (k, body) in &bodies {
            match std::fs::read(dir.join(k)) {
                Ok(got) => assert!(got == *body, "{context}: {k} is not the source's bytes"),
                Err(e) => assert!(!done, "{context}: {k} missing: {e}"),
            }
        }
        if done {
            let mut others: Vec<&String> = files
                .iter()
                .filter(|f| !f.contains("/.snapstage/"))
                .filter(|f| !bodies.iter().any(|(k, _)| dir.join(k).to_str() == Some(f)))
                .collect();
            others.sort();
            assert!(others.is_empty(), "{context}: files left: {others:?}");
        }
    };
    let scenarios: Vec<(&str, Vec<Rule>)> = vec![
        ("get reset", vec![Rule::new("GetObject", Fault::Reset, 2)]),
        (
            "get answer lost",
            vec![Rule::new("GetObject", Fault::LoseAnswer, 2)],
        ),
        (
            "throttled",
            vec![
                Rule::new("GetObject", Fault::s3_slow_down(), 2),
                Rule::new("HeadObject", Fault::s3(500, "InternalError", "internal"), 1),
            ],
        ),
        (
            "source gone mid-run",
            vec![Rule::always("GetObject", Fault::Reset).after(3)],
        ),
    ];
    for (what, rules) in scenarios {
        let dir = std::env::temp_dir().join(unique("pull-faults"));
        let source = FaultProxy::start(&sides.m.cloud).unwrap();
        for rule in rules {
            source.add(rule);
        }
        let execution = unique("pull");
        let request = json!({"sourceBucket": sides.src, "sourcePrefix": "blobs/",
            "destinationDirectory": dir.to_str().unwrap(), "partSizeMiB": 5,
            "executionId": execution});
        let env = [
            ("AWS_ENDPOINT_URL_S3", source.url.as_str()),
            ("AWS_MAX_ATTEMPTS", "2"),
        ];
        let r = run(&sides.m, &request, &[], &env).await;
        assert!(!applied(&source).is_empty(), "{what}: no fault applied");
        check(&dir, r.code == 0, what);
        if r.code != 0 {
            assert_eq!(r.code, 1, "{what}: {}", r.stderr);
            source.heal();
            let again = run(&sides.m, &request, &[], &env).await;
            assert_succeeded(&again, what);
        }
        check(&dir, true, what);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // A crash after each source call in turn, then the same execution again.
    let dir = std::env::temp_dir().join(unique("pull-count"));
    let counter = FaultProxy::start(&sides.m.cloud).unwrap();
    let request = |dir: &std::path::Path, execution: &str| {
        json!({"sourceBucket": sides.src, "sourcePrefix": "blobs/",
            "destinationDirectory": dir.to_str().unwrap(), "partSizeMiB": 5, "concurrency": 1,
            "executionId": execution})
    };
    let r = run(
        &sides.m,
        &request(&dir, &unique("pull-count")),
        &[],
        &[("AWS_ENDPOINT_URL_S3", &counter.url)],
    )
    .await;
    assert_succeeded(&r, "clean pull");
    let calls = counter.seen().len();
    let _ = std::fs::remove_dir_all(&dir);
    for n in 1..=calls {
        let context = format!("pull: crash after source call {n} of {calls}");
        let dir = std::env::temp_dir().join(unique("pull-crash"));
        let source = FaultProxy::start(&sides.m.cloud).unwrap();
        source.crash_after(n, Crash::LoseAnswer);
        let req = request(&dir, &unique("pull-crash"));
        let env = [
            ("AWS_ENDPOINT_URL_S3", source.url.as_str()),
            ("AWS_MAX_ATTEMPTS", "2"),
        ];
        let r = run(&sides.m, &req, &[], &env).await;
        check(&dir, false, &context);
        source.heal();
        if r.code != 0 {
            let again = run(&sides.m, &req, &[], &env).await;
            assert_succeeded(&again, &context);
        }
        check(&dir, true, &context);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// Secrets Manager (`destinationCredentialsSecret`, read through `aws::secret_string`, the one
/// reader every function uses) behind the proxy: throttling and 5xx are retried and the copy
/// uses the secret; a missing secret, a denied read, persistent throttling and an unanswered
/// read are typed failures naming the parameter to fix — never a hang, never the secret's value.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_manager_faults_are_retried_or_typed_and_name_the_field() {
    let Some(m) = moto("secrets_manager_faults") else {
        return;
    };
    let mut sides = Sides::new(m, "secret").await;
    put(&sides.cloud, &sides.src, "blobs/a.bytes", b"artifact").await;
    let sm = aws_sdk_secretsmanager::Client::new(&testkit::sdk_config(&sides.m.cloud).await);
    let secret = unique("snapstage/onprem");
    let secret_key = "fault-test-s3cr3t-9d1c";
    sm.create_secret()
        .name(&secret)
        .secret_string(
            json!({"accessKeyId": "AKIAFAULTTEST", "secretAccessKey": secret_key}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let proxy = FaultProxy::start(&sides.m.cloud).unwrap();
    let no_leak = |r: &CliRun, context: &str| {
        let everything = format!("{}{}", serde_json::to_string(&r.results).unwrap(), r.stderr);
        assert!(
            !everything.contains(secret_key),
            "{context}: the secret reached the output"
        );
    };
    let go = |sides: &Sides, env: &[(&str, &str)]| {
        let mut request = sides.request(&sides.m.onprem, &unique("secret"));
        request["destinationCredentialsSecret"] = json!(secret);
        let mut all = vec![("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.url.as_str())];
        all.extend_from_slice(env);
        spawn_cli(BIN, &sides.m.cloud, &request, &[], &all).wait_within(Duration::from_secs(120))
    };

    // Transient: throttled, then a 500 and a bare 503: retried (3 attempts), the copy completes.
    for (what, fault) in [
        (
            "throttled",
            Fault::aws_json(400, "ThrottlingException", "Rate exceeded"),
        ),
        (
            "500",
            Fault::aws_json(500, "InternalServiceError", "internal error"),
        ),
        ("503", Fault::status(503)),
    ] {
        sides.new_destination("secret").await;
        proxy.heal();
        proxy.add(Rule::new("GetSecretValue", fault, 2));
        let before = proxy.count("GetSecretValue");
        let r = go(&sides, &[]);
        assert_succeeded(&r, what);
        assert_eq!(
            proxy.count("GetSecretValue") - before,
            3,
            "{what}: two faults, then the answer"
        );
        assert_eq!(
            get(&sides.onprem, &sides.dst, "blobs/a.bytes").await,
            b"artifact"
        );
        no_leak(&r, what);
    }

    // Permanent or persistent: one typed failure each, naming the parameter and the secret.
    for (what, fault, kind, says) in [
        (
            "not found",
            Fault::aws_json(
                400,
                "ResourceNotFoundException",
                "Secrets Manager can't find the specified secret.",
            ),
            "ConfigurationError",
            "no such secret",
        ),
        (
            "denied",
            Fault::aws_json(
                400,
                "AccessDeniedException",
                "User is not authorized to perform: secretsmanager:GetSecretValue",
            ),
            "PermissionError",
            "grant the function's role secretsmanager:GetSecretValue",
        ),
        (
            "throttled throughout",
            Fault::aws_json(400, "ThrottlingException", "Rate exceeded"),
            "SystemUnavailable",
            "ThrottlingException",
        ),
        (
            "unanswered",
            Fault::Hang,
            "SystemUnavailable",
            "GetSecretValue",
        ),
    ] {
        proxy.heal();
        proxy.add(Rule::always("GetSecretValue", fault));
        let before = proxy.count("GetSecretValue");
        let r = go(
            &sides,
            &[
                ("SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS", "1"),
                ("SNAPSTAGE_AWS_OPERATION_TIMEOUT_SECS", "4"),
            ],
        );
        assert_eq!(r.code, 1, "{what}: {}\n{}", r.last(), r.stderr);
        assert_eq!(r.last()["failureType"], kind, "{what}: {}", r.last());
        let message = r.last()["message"].as_str().unwrap();
        assert!(
            message.contains("destinationCredentialsSecret")
                && message.contains(&secret)
                && message.contains(says),
            "{what}: {message}"
        );
        let tries = proxy.count("GetSecretValue") - before;
        if kind == "SystemUnavailable" {
            assert!(
                (2..=3).contains(&tries),
                "{what}: retried, bounded: {tries}"
            );
        } else {
            assert_eq!(tries, 1, "{what}: not retried");
        }
        no_leak(&r, what);
    }
}

/// Object requests named like `op` that the proxy forwarded (snapstage's own `.snapstage/`
/// checkpoint files aside).
fn forwarded(p: &FaultProxy, op: &str) -> usize {
    p.seen()
        .iter()
        .filter(|s| s.forwarded && s.op.starts_with(op) && !s.op.contains("/.snapstage/"))
        .count()
}

/// Stores that list without ETags (s3s-fs, some S3-compatible servers): both listings lose their
/// `<ETag>` on the way. The copy reads each object once, as it does when the listing carries
/// ETags, and a re-run with nothing changed reads no object and writes none.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_listing_without_etags_is_read_once_and_a_rerun_reads_nothing() {
    let Some(m) = moto("a_store_listing_without_etags") else {
        return;
    };
    let mut sides = Sides::new(m, "noetag").await;
    sides.fill(true).await;

    // The reads of a copy whose listing carries ETags: the yardstick.
    let plain = FaultProxy::start(&sides.m.cloud).unwrap();
    let request = sides.request(&sides.m.onprem, &unique("noetag-plain"));
    let env = [("AWS_ENDPOINT_URL_S3", plain.url.as_str())];
    assert_succeeded(
        &run(&sides.m, &request, &[], &env).await,
        "listing with ETags",
    );
    let reads_with_etags = forwarded(&plain, "GetObject");
    assert!(reads_with_etags >= 6, "reads: {reads_with_etags}");

    sides.new_destination("noetag").await;
    let source = FaultProxy::start(&sides.m.cloud).unwrap();
    let destination = FaultProxy::start(&sides.m.onprem).unwrap();
    for p in [&source, &destination] {
        p.add(Rule::always("ListObjectsV2", Fault::DropXml("ETag".into())));
    }
    let env = [("AWS_ENDPOINT_URL_S3", source.url.as_str())];
    let request = sides.request(&destination.url, &unique("noetag"));
    let r = run(&sides.m, &request, &[], &env).await;
    assert_succeeded(&r, "first run");
    sides.assert_identical("first run").await;
    assert_eq!(
        forwarded(&source, "GetObject"),
        reads_with_etags,
        "each object is read once: {:?}",
        source.seen()
    );
    assert!(
        source.seen().iter().any(|s| s.fault.is_some()),
        "the source listing lost its ETags"
    );
    // An object read whole needs no HEAD to name its version; the two read in ranges do.
    assert!(
        forwarded(&source, "HeadObject") <= forwarded(&plain, "HeadObject") + 2,
        "source HEADs: {} without ETags, {} with: {:?}",
        forwarded(&source, "HeadObject"),
        forwarded(&plain, "HeadObject"),
        source.seen()
    );

    // Nothing changed: listing and HEADs, no read, no write.
    let (source_before, destination_before) = (source.seen().len(), destination.seen().len());
    let request = sides.request(&destination.url, &unique("noetag-rerun"));
    let r = run(&sides.m, &request, &[], &env).await;
    assert_succeeded(&r, "re-run");
    assert_eq!(
        (r.output("ObjectsCopied"), r.output("ObjectsSkipped")),
        ("0", "6"),
        "{}",
        r.last()
    );
    let later = |p: &FaultProxy, from: usize| -> Vec<String> {
        p.seen()[from..].iter().map(|s| s.op.clone()).collect()
    };
    let (src_ops, dst_ops) = (
        later(&source, source_before),
        later(&destination, destination_before),
    );
    assert!(
        !src_ops
            .iter()
            .any(|o| o.starts_with("GetObject") && !o.contains("/.snapstage/")),
        "the re-run read objects: {src_ops:?}"
    );
    assert!(
        !dst_ops.iter().any(|o| o.starts_with("PutObject")
            || o.starts_with("UploadPart")
            || o.starts_with("CreateMultipartUpload")),
        "the re-run wrote objects: {dst_ops:?}"
    );

    // A changed object of the same size is still found and copied.
    put(
        &sides.cloud,
        &sides.src,
        "blobs/content/a.bytes",
        &content(9, 200_000),
    )
    .await;
    let request = sides.request(&destination.url, &unique("noetag-changed"));
    let r = run(&sides.m, &request, &[], &env).await;
    assert_succeeded(&r, "changed object");
    assert_eq!(r.output("ObjectsCopied"), "1", "{}", r.last());
    sides.assert_identical("changed object").await;
}
