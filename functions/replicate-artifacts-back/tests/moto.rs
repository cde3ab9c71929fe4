//! `replicate-artifacts-back` driven as a user drives it: the compiled binary in CLI mode with a
//! direct request on stdin, against two real moto servers — "cloud" (the source bucket, Secrets
//! Manager) and "on-prem" (the destination S3-compatible endpoint). The destination is checked
//! with an independent S3 client.
//!
//! Needs `scripts/services.sh start` and `eval "$(scripts/services.sh env)"`; without
//! SNAPSTAGE_MOTO_CLOUD / SNAPSTAGE_MOTO_ONPREM each test prints "SKIP: ..." and passes.
//! moto's state is shared by every test and run: each test uses buckets of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::process::Command;

use aws_sdk_s3::primitives::ByteStream;
use serde_json::{Value, json};
use sha2::Digest as _;
use snapstage_localenv::testkit::{self, CliRun as Run, Moto, moto, unique};

const BIN: &str = env!("CARGO_BIN_EXE_replicate-artifacts-back");

fn bucket(tag: &str) -> String {
    unique(tag)
}

async fn s3(endpoint: &str) -> aws_sdk_s3::Client {
    let config = testkit::sdk_config(endpoint).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

async fn secrets(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&testkit::sdk_config(endpoint).await)
}

async fn create_bucket(c: &aws_sdk_s3::Client, name: &str) {
    c.create_bucket().bucket(name).send().await.unwrap();
}

async fn put(c: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &[u8]) {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap();
}

async fn get(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    c.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetObject {bucket}/{key}: {e:?}"))
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}

async fn keys(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = c.list_objects_v2().bucket(bucket).send().await.unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// Deterministic, incompressible-looking bytes.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs the binary with `request` on stdin, the cloud moto as the default AWS endpoint.
fn run(m: &Moto, request: &Value, args: &[&str], env: &[(&str, &str)]) -> Run {
    testkit::run_cli(BIN, &m.cloud, request, args, env)
}

fn assert_succeeded(r: &Run) {
    assert_eq!(
        (r.code, r.last()["status"].as_str()),
        (0, Some("Succeeded")),
        "{}\n{}",
        r.last(),
        r.stderr
    );
}

/// A small Nexus blob store.
fn blob_store() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("metadata.properties", b"type=file/1\n".to_vec()),
        ("content/vol-01/chap-07/3f2a.bytes", content(1, 300_000)),
        (
            "content/vol-01/chap-07/3f2a.properties",
            b"size=300000\n".to_vec(),
        ),
        ("content/vol-02/chap-11/9c1e.bytes", content(2, 1)),
        (
            "content/vol-02/chap-11/9c1e.properties",
            b"size=1\n".to_vec(),
        ),
        ("content/vol-03/chap-01/empty.bytes", Vec::new()),
        (
            "content/vol-03/chap-01/empty.properties",
            b"size=0\n".to_vec(),
        ),
    ]
}

#[tokio::test]
async fn first_run_copies_every_object_byte_identical() {
    let Some(m) = moto("first_run_copies_every_object_byte_identical") else {
        return;
    };
    let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
    let (src, dst) = (bucket("cloud-nexus"), bucket("onprem-nexus"));
    create_bucket(&cloud, &src).await;
    create_bucket(&onprem, &dst).await;
    for (k, body) in blob_store() {
        put(&cloud, &src, &format!("nexus/blobs/{k}"), &body).await;
    }
    put(
        &cloud,
        &src,
        "elsewhere/not-copied.txt",
        b"outside the prefix",
    )
    .await;
    cloud
        .put_object()
        .bucket(&src)
        .key("nexus/blobs/content/vol-04/chap-01/typed.bytes")
        .content_type("application/java-archive")
        .metadata("built-by", "codebuild")
        .body(ByteStream::from_static(b"PK\x03\x04jar"))
        .send()
        .await
        .unwrap();

    let r = run(
        &m,
        &json!({"sourceBucket": src, "sourcePrefix": "nexus/blobs/", "destinationBucket": dst,
                "destinationPrefix": "restored/", "destinationEndpoint": m.onprem}),
        &[],
        &[],
    );
    assert_succeeded(&r);
    let total_bytes: usize = blob_store().iter().map(|(_, b)| b.len()).sum::<usize>() + 7;
    assert_eq!(r.output("ObjectsCopied"), "8");
    assert_eq!(r.output("ObjectsVerified"), "8");
    assert_eq!(r.output("ObjectsSkipped"), "0");
    assert_eq!(r.output("BytesCopied"), total_bytes.to_string());
    assert_eq!(r.output("DestinationBucket"), dst);
    assert_eq!(r.output("DryRun"), "false");
    let summary = r.last()["summary"].as_str().unwrap();
    assert!(summary.contains("Copied 8 objects"), "{summary}");
    // The copy order, from the log: every .bytes before any .properties, metadata.properties last.
    let order: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("copied and verified"))
        .filter_map(|l| l.split(" key=").nth(1)?.split(' ').next())
        .collect();
    let rank = |k: &str| {
        if k.ends_with("/metadata.properties") {
            2
        } else if k.ends_with(".properties") {
            1
        } else {
            0
        }
    };
    assert_eq!(order.len(), 8, "{}", r.stderr);
    assert!(
        order.windows(2).all(|w| rank(w[0]) <= rank(w[1])),
        "{order:?}"
    );
    assert_eq!(order.last(), Some(&"nexus/blobs/metadata.properties"));

    let mut got = keys(&onprem, &dst).await;
    got.sort();
    let mut want: Vec<String> = blob_store()
        .iter()
        .map(|(k, _)| format!("restored/{k}"))
        .chain(["restored/content/vol-04/chap-01/typed.bytes".to_string()])
        .collect();
    want.sort();
    assert_eq!(got, want, "exactly the prefix, under destinationPrefix");
    for (k, body) in blob_store() {
        let copy = get(&onprem, &dst, &format!("restored/{k}")).await;
        assert!(copy == body, "restored/{k} differs from the source");
        let head = onprem
            .head_object()
            .bucket(&dst)
            .key(format!("restored/{k}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.metadata().unwrap()["snapstage-sha256"],
            hex::encode(sha2::Sha256::digest(&body)),
            "{k}"
        );
    }
    let typed = onprem
        .head_object()
        .bucket(&dst)
        .key("restored/content/vol-04/chap-01/typed.bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(typed.content_type(), Some("application/java-archive"));
    assert_eq!(typed.metadata().unwrap()["built-by"], "codebuild");
}

#[tokio::test]
async fn rerun_skips_unchanged_objects_and_recopies_changed_ones() {
    let Some(m) = moto("rerun_skips_unchanged_objects_and_recopies_changed_ones") else {
        return;
    };
    let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
    let (src, dst) = (bucket("cloud-rerun"), bucket("onprem-rerun"));
    create_bucket(&cloud, &src).await;
    create_bucket(&onprem, &dst).await;
    put(&cloud, &src, "blobs/a.bytes", &content(10, 4096)).await;
    put(&cloud, &src, "blobs/a.properties", b"size=4096\n").await;
    put(&cloud, &src, "blobs/metadata.properties", b"type=file\n").await;
    // A multipart upload: its ETag ("...-2") is not an MD5, so only the metadata can tell.
    let part1 = content(11, 5 * 1024 * 1024);
    let part2 = content(12, 10);
    let up = cloud
        .create_multipart_upload()
        .bucket(&src)
        .key("blobs/big.bytes")
        .send()
        .await
        .unwrap();
    let upload_id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for (n, body) in [(1, &part1), (2, &part2)] {
        let p = cloud
            .upload_part()
            .bucket(&src)
            .key("blobs/big.bytes")
            .upload_id(upload_id)
            .part_number(n)
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap();
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .e_tag(p.e_tag().unwrap())
                .build(),
        );
    }
    let completed = cloud
        .complete_multipart_upload()
        .bucket(&src)
        .key("blobs/big.bytes")
        .upload_id(upload_id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await;
    // moto 5.2 names the response's root element CompleteMultipartUploadResponse, which the SDK
    // refuses to parse; the upload itself completes.
    if let Err(e) = completed {
        assert!(
            format!("{e:?}").contains("CompleteMultipartUploadResponse"),
            "{e:?}"
        );
    }
    let head = cloud
        .head_object()
        .bucket(&src)
        .key("blobs/big.bytes")
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap().ends_with("-2\""),
        "{:?}",
        head.e_tag()
    );
    // Something only the destination has: replication never deletes.
    put(&onprem, &dst, "blobs/onprem-only.txt", b"keep me").await;

    let request = json!({"sourceBucket": src, "sourcePrefix": "blobs/", "destinationBucket": dst,
                         "destinationEndpoint": m.onprem});
    let first = run(&m, &request, &[], &[]);
    assert_succeeded(&first);
    assert_eq!(first.output("ObjectsCopied"), "4");
    let mut big = part1.clone();
    big.extend_from_slice(&part2);
    assert!(get(&onprem, &dst, "blobs/big.bytes").await == big);

    let second = run(&m, &request, &[], &[]);
    assert_succeeded(&second);
    assert_eq!(second.output("ObjectsCopied"), "0");
    assert_eq!(second.output("ObjectsSkipped"), "4");
    assert_eq!(second.output("BytesCopied"), "0");

    // Same size, new content; and a new object.
    let changed = content(13, 4096);
    put(&cloud, &src, "blobs/a.bytes", &changed).await;
    put(&cloud, &src, "blobs/b.bytes", b"new").await;
    let third = run(&m, &request, &[], &[]);
    assert_succeeded(&third);
    assert_eq!(third.output("ObjectsCopied"), "2");
    assert_eq!(third.output("ObjectsSkipped"), "3");
    assert_eq!(third.output("BytesCopied"), (4096 + 3).to_string());
    assert!(get(&onprem, &dst, "blobs/a.bytes").await == changed);
    assert_eq!(get(&onprem, &dst, "blobs/b.bytes").await, b"new");
    assert_eq!(
        get(&onprem, &dst, "blobs/onprem-only.txt").await,
        b"keep me"
    );
}

#[tokio::test]
async fn dry_run_reports_and_copies_nothing() {
    let Some(m) = moto("dry_run_reports_and_copies_nothing") else {
        return;
    };
    let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
    let (src, dst) = (bucket("cloud-dry"), bucket("onprem-dry"));
    create_bucket(&cloud, &src).await;
    create_bucket(&onprem, &dst).await;
    for (k, body) in blob_store() {
        put(&cloud, &src, k, &body).await;
    }
    let r = run(
        &m,
        &json!({"sourceBucket": src, "destinationBucket": dst, "destinationEndpoint": m.onprem,
                "dryRun": true}),
        &[],
        &[],
    );
    assert_succeeded(&r);
    assert_eq!(r.output("DryRun"), "true");
    assert_eq!(r.output("ObjectsCopied"), "0");
    assert_eq!(r.output("ObjectsToCopy"), blob_store().len().to_string());
    let bytes: usize = blob_store().iter().map(|(_, b)| b.len()).sum();
    assert_eq!(r.output("BytesToCopy"), bytes.to_string());
    let summary = r.last()["summary"].as_str().unwrap();
    assert!(summary.contains("Dry run"), "{summary}");
    assert!(
        keys(&onprem, &dst).await.is_empty(),
        "a dry run wrote objects"
    );
}

#[tokio::test]
async fn missing_source_bucket_is_a_configuration_error_naming_it() {
    let Some(m) = moto("missing_source_bucket_is_a_configuration_error_naming_it") else {
        return;
    };
    let onprem = s3(&m.onprem).await;
    let (src, dst) = (bucket("no-such-source"), bucket("onprem-missing"));
    create_bucket(&onprem, &dst).await;
    let r = run(
        &m,
        &json!({"sourceBucket": src, "destinationBucket": dst, "destinationEndpoint": m.onprem}),
        &[],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.last());
    assert_eq!(r.last()["status"], "Failed");
    assert_eq!(r.last()["failureType"], "ConfigurationError");
    let msg = r.last()["message"].as_str().unwrap();
    assert!(msg.contains(&src), "{msg}");
    assert!(msg.contains("NoSuchBucket"), "{msg}");
}

#[tokio::test]
async fn invalid_parameters_fail_before_any_request() {
    let Some(m) = moto("invalid_parameters_fail_before_any_request") else {
        return;
    };
    let r = run(
        &m,
        &json!({"sourceBucket": "a", "destinationBucket": "b",
                "destinationEndpoint": "onprem-minio:9000"}),
        &[],
        &[],
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.last()["failureType"], "ConfigurationError");
    let msg = r.last()["message"].as_str().unwrap();
    assert!(msg.starts_with("destinationEndpoint:"), "{msg}");
    let r = run(
        &m,
        &json!({"sourceBucket": "a", "destinationBucket": "b", "destinationBuckets": "c"}),
        &[],
        &[],
    );
    assert_eq!(r.code, 1);
    let msg = r.last()["message"].as_str().unwrap();
    assert!(msg.contains("destinationBuckets"), "{msg}");
}

/// Creates an IAM user and access key in the on-prem moto with boto3 (the project's venv);
/// `None` when the venv is missing.
fn onprem_access_key(m: &Moto, user: &str) -> Option<(String, String)> {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python");
    if !std::path::Path::new(python).exists() {
        eprintln!("SKIP: checking which key reached the on-prem endpoint: no {python}");
        return None;
    }
    let script = "import boto3,json,sys\n\
iam=boto3.client('iam',endpoint_url=sys.argv[1],region_name='us-east-1',aws_access_key_id='testing',aws_secret_access_key='testing')\n\
iam.create_user(UserName=sys.argv[2])\n\
k=iam.create_access_key(UserName=sys.argv[2])['AccessKey']\n\
print(json.dumps([k['AccessKeyId'],k['SecretAccessKey']]))\n";
    let out = Command::new(python)
        .args(["-c", script, &m.onprem, user])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: (String, String) = serde_json::from_slice(&out.stdout).unwrap();
    Some(v)
}

fn access_key_last_used_service(m: &Moto, key_id: &str) -> String {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python");
    let script = "import boto3,sys\n\
iam=boto3.client('iam',endpoint_url=sys.argv[1],region_name='us-east-1',aws_access_key_id='testing',aws_secret_access_key='testing')\n\
print(iam.get_access_key_last_used(AccessKeyId=sys.argv[2])['AccessKeyLastUsed']['ServiceName'])\n";
    let out = Command::new(python)
        .args(["-c", script, &m.onprem, key_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn destination_credentials_come_from_a_secrets_manager_secret() {
    let Some(m) = moto("destination_credentials_come_from_a_secrets_manager_secret") else {
        return;
    };
    let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
    let sm = secrets(&m.cloud).await;
    let (src, dst) = (bucket("cloud-secret"), bucket("onprem-secret"));
    create_bucket(&cloud, &src).await;
    create_bucket(&onprem, &dst).await;
    put(&cloud, &src, "a.bytes", b"artifact").await;

    let user = bucket("replicator");
    let (key_id, secret_key) = onprem_access_key(&m, &user)
        .unwrap_or_else(|| ("AKIAONPREMFAKE".to_string(), "fake-secret".to_string()));
    let secret_name = format!("snapstage/{user}");
    sm.create_secret()
        .name(&secret_name)
        .secret_string(json!({"accessKeyId": key_id, "secretAccessKey": secret_key}).to_string())
        .send()
        .await
        .unwrap();

    let r = run(
        &m,
        &json!({"sourceBucket": src, "destinationBucket": dst, "destinationEndpoint": m.onprem,
                "destinationCredentialsSecret": secret_name}),
        &[],
        &[],
    );
    assert_succeeded(&r);
    assert_eq!(r.output("ObjectsCopied"), "1");
    assert_eq!(get(&onprem, &dst, "a.bytes").await, b"artifact");
    let everything = format!("{}{}", serde_json::to_string(&r.results).unwrap(), r.stderr);
    assert!(
        !everything.contains(&secret_key),
        "the secret key reached the output"
    );
    if key_id != "AKIAONPREMFAKE" {
        // The on-prem endpoint saw requests signed with the secret's key.
        assert_eq!(access_key_last_used_service(&m, &key_id), "s3");
    }
}

#[tokio::test]
async fn unusable_secrets_are_configuration_errors_that_do_not_leak() {
    let Some(m) = moto("unusable_secrets_are_configuration_errors_that_do_not_leak") else {
        return;
    };
    let sm = secrets(&m.cloud).await;
    let name = format!("snapstage/{}", bucket("broken"));
    sm.create_secret()
        .name(&name)
        .secret_string(r#"{"accessKeyId": "AKIALEAKCHECK", "secret": "s3cr3t-leak-check"}"#)
        .send()
        .await
        .unwrap();
    for (secret, expect) in [
        (name.as_str(), "secretAccessKey is missing"),
        ("snapstage/does-not-exist", "no such secret"),
    ] {
        let r = run(
            &m,
            &json!({"sourceBucket": "a-src", "destinationBucket": "a-dst",
                    "destinationEndpoint": m.onprem, "destinationCredentialsSecret": secret}),
            &[],
            &[],
        );
        assert_eq!(r.code, 1, "{}", r.last());
        assert_eq!(r.last()["failureType"], "ConfigurationError");
        let msg = r.last()["message"].as_str().unwrap();
        assert!(msg.contains(secret) && msg.contains(expect), "{msg}");
        let everything = format!("{}{}", serde_json::to_string(&r.results).unwrap(), r.stderr);
        assert!(!everything.contains("s3cr3t-leak-check"), "{everything}");
        assert!(!everything.contains("AKIALEAKCHECK"), "{everything}");
    }
}

#[tokio::test]
async fn a_run_near_its_deadline_checkpoints_and_resumes() {
    let Some(m) = moto("a_run_near_its_deadline_checkpoints_and_resumes") else {
        return;
    };
    let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
    let (src, dst) = (bucket("cloud-resume"), bucket("onprem-resume"));
    create_bucket(&cloud, &src).await;
    create_bucket(&onprem, &dst).await;
    for (k, body) in blob_store() {
        put(&cloud, &src, k, &body).await;
    }
    // Already at the destination, identical: skipped, not counted as copied.
    put(&onprem, &dst, "metadata.properties", b"type=file/1\n").await;
    let request = json!({"sourceBucket": src, "destinationBucket": dst,
                         "destinationEndpoint": m.onprem});
    // A step budget under the 30 s margin: every step is "near its deadline" after one object.
    let budget = [("SNAPSTAGE_DEADLINE_MARGIN_MS", "0")];

    let one = run(
        &m,
        &request,
        &["--step-budget", "25", "--no-follow"],
        &budget,
    );
    assert_eq!(one.code, 0, "{}", one.last());
    assert_eq!(one.results.len(), 1);
    assert_eq!(one.last()["status"], "InProgress", "{}", one.last());
    assert!(one.last()["continuationToken"].as_str().is_some());
    assert_eq!(keys(&onprem, &dst).await.len(), 2, "one object per step");

    let all = run(
        &m,
        &request,
        &["--step-budget", "25", "--poll-interval", "0"],
        &budget,
    );
    assert_succeeded(&all);
    let steps: Vec<&str> = all
        .results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    let copied = blob_store().len() - 2;
    assert_eq!(steps.len(), copied, "{steps:?}");
    assert!(
        steps[..copied - 1].iter().all(|s| *s == "InProgress"),
        "{steps:?}"
    );
    let percents: Vec<u64> = all.results[..copied - 1]
        .iter()
        .map(|r| r["percentComplete"].as_u64().unwrap())
        .collect();
    assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
    assert_eq!(all.output("ObjectsCopied"), copied.to_string());
    assert_eq!(all.output("ObjectsVerified"), copied.to_string());
    // The object the first run copied and the one already there.
    assert_eq!(all.output("ObjectsSkipped"), "2");
    for (k, body) in blob_store() {
        assert!(get(&onprem, &dst, k).await == body, "{k}");
    }
}

#[tokio::test]
async fn objects_over_64_mib_fail_the_run_and_nothing_is_copied() {
    let Some(m) = moto("objects_over_64_mib_fail_the_run_and_nothing_is_copied") else {
        return;
    };
    let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
    let (src, dst) = (bucket("cloud-large"), bucket("onprem-large"));
    create_bucket(&cloud, &src).await;
    create_bucket(&onprem, &dst).await;
    put(&cloud, &src, "small.bytes", b"small").await;
    put(
        &cloud,
        &src,
        "large.bytes",
        &vec![7u8; 64 * 1024 * 1024 + 1],
    )
    .await;
    let r = run(
        &m,
        &json!({"sourceBucket": src, "destinationBucket": dst, "destinationEndpoint": m.onprem}),
        &[],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.last());
    assert_eq!(r.last()["status"], "Failed");
    let msg = r.last()["message"].as_str().unwrap();
    assert!(msg.contains("large.bytes"), "{msg}");
    assert!(
        msg.contains("multipart streaming is not yet supported"),
        "{msg}"
    );
    assert!(keys(&onprem, &dst).await.is_empty());
}

/// The sample requests in events/ are requests this function accepts (no services needed).
#[test]
fn sample_events_are_valid_requests() {
    use snapstage::invocation::{Invocation, classify};
    use snapstage::params::{Layer, merge, user_parameters};
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events");
    let read = |p: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/{p}")).unwrap()).unwrap()
    };
    let filter = Default::default();
    let mut dry_runs = 0;
    for name in [
        "direct/replicate-artifacts-back.json",
        "direct/replicate-artifacts-back-dry-run.json",
    ] {
        let Invocation::Direct(d) = classify(&read(name), &filter).unwrap() else {
            panic!("{name} is not a direct request")
        };
        let params: snapstage::replicate::Params = merge(&[Layer {
            source: "request",
            values: d.params,
        }])
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let t = params.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.source_bucket, "shop-artifacts", "{name}");
        assert_eq!(t.destination_bucket, "onprem-nexus", "{name}");
        assert_eq!(
            t.endpoint.as_deref(),
            Some("http://127.0.0.1:5101"),
            "{name}"
        );
        dry_runs += usize::from(t.dry_run);
    }
    assert_eq!(dry_runs, 1);
    // The CodePipeline sample's UserParameters too.
    let job = read("codepipeline/replicate-artifacts-back.json");
    let up =
        job["CodePipeline.job"]["data"]["actionConfiguration"]["configuration"]["UserParameters"]
            .as_str()
            .unwrap();
    let params: snapstage::replicate::Params =
        merge(&[user_parameters(Some(up)).unwrap()]).unwrap();
    params.validate().unwrap();
}
