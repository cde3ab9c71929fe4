//! `replicate-artifacts-back` driven as a user drives it: the compiled binary in CLI mode with a
//! direct request on stdin, against real local servers — moto "cloud" (the source bucket, Secrets
//! Manager) and an on-prem destination. Every test that writes on-prem runs twice: against moto's
//! S3 and against versitygw, a real S3 server on a POSIX file system as on-prem shops run one
//! (`scripts/onprem-s3.sh`). The destination is checked with an independent S3 client.
//!
//! Needs `scripts/services.sh start` and `eval "$(scripts/services.sh env)"`; without
//! SNAPSTAGE_MOTO_CLOUD / SNAPSTAGE_MOTO_ONPREM / SNAPSTAGE_ONPREM_S3 each test prints "SKIP: ..."
//! (under CI=true it fails). The servers' state is shared by every test and run: each test uses
//! buckets of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod common;

use common::{MIB, content, get, put, put_multipart, s3};
use std::process::Command;

use aws_sdk_s3::primitives::ByteStream;
use serde_json::{Value, json};
use sha2::Digest as _;
use snapstage_localenv::testkit::{self, CliRun as Run, Moto, moto, unique};

const BIN: &str = env!("CARGO_BIN_EXE_replicate-artifacts-back");

fn bucket(tag: &str) -> String {
    unique(tag)
}

async fn secrets(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&testkit::sdk_config(endpoint).await)
}

async fn create_bucket(c: &aws_sdk_s3::Client, name: &str) {
    c.create_bucket().bucket(name).send().await.unwrap();
}

async fn keys(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = c.list_objects_v2().bucket(bucket).send().await.unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// The on-prem destinations a test runs against, in turn: moto's S3, then versitygw. Each says
/// which it is on stderr, so a failure names the server.
fn onprem_servers(test: &str) -> impl Iterator<Item = Moto> {
    let moto = moto(test);
    let versitygw = moto.as_ref().and_then(|m| {
        testkit::onprem_s3(test).map(|onprem| Moto {
            onprem,
            ..m.clone()
        })
    });
    let test = test.to_string();
    moto.map(|m| ("moto", m))
        .into_iter()
        .chain(versitygw.map(|v| ("versitygw", v)))
        .map(move |(name, m)| {
            eprintln!("{test}: on-prem S3 is {name} at {}", m.onprem);
            m
        })
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
    for m in onprem_servers("first_run_copies_every_object_byte_identical") {
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
            // Each went as one PutObject streamed from its GET (all are under uploadCutoffMiB):
            // stored with the source's MD5 as its ETag, the source ETag recorded beside it.
            let md5 = hex::encode(md5::Md5::digest(&body));
            assert_eq!(head.e_tag(), Some(format!("\"{md5}\"").as_str()), "{k}");
            assert_eq!(
                head.metadata().unwrap()["snapstage-source-etag"],
                md5,
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
}

#[tokio::test]
async fn rerun_skips_unchanged_objects_and_recopies_changed_ones() {
    for m in onprem_servers("rerun_skips_unchanged_objects_and_recopies_changed_ones") {
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
}

#[tokio::test]
async fn dry_run_reports_and_copies_nothing() {
    for m in onprem_servers("dry_run_reports_and_copies_nothing") {
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
}

#[tokio::test]
async fn missing_source_bucket_is_a_configuration_error_naming_it() {
    for m in onprem_servers("missing_source_bucket_is_a_configuration_error_naming_it") {
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
        snapstage_localenv::testkit::skip(&format!(
            "checking which key reached the on-prem endpoint: no {python} (run `make setup`)"
        ));
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
    for m in onprem_servers("a_run_near_its_deadline_checkpoints_and_resumes") {
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
}

async fn etag(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> String {
    c.head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_string()
}

async fn open_uploads(c: &aws_sdk_s3::Client, bucket: &str) -> usize {
    c.list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

/// Every source object under `prefix` is at the destination, byte for byte, and nothing else.
async fn assert_identical(
    cloud: &aws_sdk_s3::Client,
    src: &str,
    onprem: &aws_sdk_s3::Client,
    dst: &str,
) {
    let mut want: Vec<String> = keys(cloud, src)
        .await
        .into_iter()
        .filter(|k| !k.starts_with(".snapstage/"))
        .collect();
    let mut got = keys(onprem, dst).await;
    want.sort();
    got.sort();
    assert_eq!(got, want);
    for k in &want {
        assert!(
            get(cloud, src, k).await == get(onprem, dst, k).await,
            "{k} differs"
        );
    }
}

#[tokio::test]
async fn large_objects_stream_in_parts_and_reruns_compare_multipart_etags() {
    for m in onprem_servers("large_objects_stream_in_parts_and_reruns_compare_multipart_etags") {
        let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
        let (src, dst) = (bucket("cloud-mp"), bucket("onprem-mp"));
        create_bucket(&cloud, &src).await;
        create_bucket(&onprem, &dst).await;
        // 13 MiB uploaded in 5 MiB parts (ETag "...-3"), 11 MiB uploaded whole (a plain MD5).
        let parted = content(40, 13 * MIB + 17);
        let whole = content(41, 11 * MIB);
        put_multipart(&cloud, &src, "blobs/parted.bytes", &parted, 5 * MIB).await;
        put(&cloud, &src, "blobs/whole.bytes", &whole).await;
        put(&cloud, &src, "blobs/small.bytes", b"small").await;
        let request = json!({"sourceBucket": src, "destinationBucket": dst,
        "destinationEndpoint": m.onprem, "partSizeMiB": 5, "uploadCutoffMiB": 5, "concurrency": 3});

        let first = run(&m, &request, &[], &[]);
        assert_succeeded(&first);
        assert_eq!(first.output("ObjectsCopied"), "3");
        assert_eq!(first.output("ObjectsVerified"), "3");
        assert_eq!(
            first.output("BytesCopied"),
            (parted.len() + whole.len() + 5).to_string()
        );
        assert!(first.output("ThroughputMBps").parse::<f64>().unwrap() > 0.0);
        assert!(get(&onprem, &dst, "blobs/parted.bytes").await == parted);
        assert!(get(&onprem, &dst, "blobs/whole.bytes").await == whole);
        // The multipart source was copied with its own parts: the same md5-of-part-md5s ETag.
        assert_eq!(
            etag(&onprem, &dst, "blobs/parted.bytes").await,
            etag(&cloud, &src, "blobs/parted.bytes").await
        );
        // The single-part source became 3 parts; the metadata says what it was copied from.
        let dest_etag = etag(&onprem, &dst, "blobs/whole.bytes").await;
        assert!(dest_etag.ends_with("-3\""), "{dest_etag}");
        let head = onprem
            .head_object()
            .bucket(&dst)
            .key("blobs/whole.bytes")
            .send()
            .await
            .unwrap();
        assert_eq!(
            format!("\"{}\"", head.metadata().unwrap()["snapstage-source-etag"]),
            etag(&cloud, &src, "blobs/whole.bytes").await
        );
        assert_eq!(
            open_uploads(&onprem, &dst).await,
            0,
            "an upload was left open"
        );

        let second = run(&m, &request, &[], &[]);
        assert_succeeded(&second);
        assert_eq!(second.output("ObjectsCopied"), "0");
        assert_eq!(second.output("ObjectsSkipped"), "3");
        assert!(
            !second.stderr.contains("copied and verified"),
            "{}",
            second.stderr
        );

        // A changed large object is copied again.
        let changed = content(42, 13 * MIB + 17);
        put_multipart(&cloud, &src, "blobs/parted.bytes", &changed, 5 * MIB).await;
        let third = run(&m, &request, &[], &[]);
        assert_succeeded(&third);
        assert_eq!(third.output("ObjectsCopied"), "1");
        assert!(get(&onprem, &dst, "blobs/parted.bytes").await == changed);
    }
}

/// A TCP proxy in front of the cloud moto that flips one byte in the body of the responses to
/// `GET` requests naming `marker`, for the first `times` of them.
async fn corrupting_proxy(upstream: &str, marker: &'static str, times: usize) -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let budget = Arc::new(AtomicUsize::new(times));
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            let budget = Arc::clone(&budget);
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let arm = Arc::clone(&armed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if text.starts_with("GET ")
                            && text.lines().next().is_some_and(|l| l.contains(marker))
                            && budget
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                                    b.checked_sub(1)
                                })
                                .is_ok()
                        {
                            arm.store(true, Ordering::SeqCst);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                let mut head = Vec::new();
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if armed.load(Ordering::SeqCst) {
                        let start = head.len();
                        head.extend_from_slice(&buf[..n]);
                        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            let body_at = end + 4 + 3;
                            if body_at >= start && body_at < start + n {
                                buf[body_at - start] ^= 0xff;
                                armed.store(false, Ordering::SeqCst);
                                head.clear();
                            }
                        }
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn corrupted_reads_are_retried_and_then_fail_naming_the_key() {
    for m in onprem_servers("corrupted_reads_are_retried_and_then_fail_naming_the_key") {
        let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
        let (src, dst) = (bucket("cloud-corrupt"), bucket("onprem-corrupt"));
        create_bucket(&cloud, &src).await;
        create_bucket(&onprem, &dst).await;
        let once = content(50, 100_000);
        let always = content(51, 100_000);
        put(&cloud, &src, "blobs/flaky-once.bytes", &once).await;
        put(&cloud, &src, "blobs/bad-always.bytes", &always).await;
        put(
            &cloud,
            &src,
            "blobs/bad-always.properties",
            b"size=100000\n",
        )
        .await;
        let request = json!({"sourceBucket": src, "destinationBucket": dst,
        "destinationEndpoint": m.onprem});

        // One corrupted read: retried, verified, copied.
        let proxy = corrupting_proxy(&m.cloud, "flaky-once.bytes", 1).await;
        let only_flaky = json!({"sourceBucket": src, "sourcePrefix": "blobs/flaky",
        "destinationBucket": dst, "destinationEndpoint": m.onprem});
        let cloud_via_proxy = proxy.clone();
        let r = tokio::task::spawn_blocking(move || {
            testkit::run_cli(BIN, &cloud_via_proxy, &only_flaky, &[], &[])
        })
        .await
        .unwrap();
        assert_succeeded(&r);
        // Caught by the SDK's response checksum or by our MD5 against the ETag: either way retried.
        assert!(
            r.stderr.contains("not verified; trying again"),
            "{}",
            r.stderr
        );
        assert!(get(&onprem, &dst, "blobs/flaky-once.bytes").await == once);

        // Every read corrupted: the run fails naming the key; its .properties is not copied.
        let proxy = corrupting_proxy(&m.cloud, "bad-always.bytes", usize::MAX).await;
        let r =
            tokio::task::spawn_blocking(move || testkit::run_cli(BIN, &proxy, &request, &[], &[]))
                .await
                .unwrap();
        assert_eq!(r.code, 1, "{}", r.last());
        assert_eq!(r.last()["status"], "Failed");
        let msg = r.last()["message"].as_str().unwrap();
        assert!(msg.contains("blobs/bad-always.bytes"), "{msg}");
        assert!(msg.contains("tried twice"), "{msg}");
        let there = keys(&onprem, &dst).await;
        assert!(
            !there.contains(&"blobs/bad-always.bytes".to_string()),
            "{there:?}"
        );
        assert!(
            !there.contains(&"blobs/bad-always.properties".to_string()),
            "a .properties landed without its .bytes: {there:?}"
        );
    }
}

/// A corrupted destination object (same size, other content) is found and replaced.
#[tokio::test]
async fn a_corrupted_destination_object_is_replaced() {
    for m in onprem_servers("a_corrupted_destination_object_is_replaced") {
        let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
        let (src, dst) = (bucket("cloud-dcor"), bucket("onprem-dcor"));
        create_bucket(&cloud, &src).await;
        create_bucket(&onprem, &dst).await;
        let body = content(60, 50_000);
        put(&cloud, &src, "a.bytes", &body).await;
        let request = json!({"sourceBucket": src, "destinationBucket": dst,
        "destinationEndpoint": m.onprem});
        assert_succeeded(&run(&m, &request, &[], &[]));
        // Overwritten on-prem with other bytes of the same size, even keeping our metadata.
        let head = onprem
            .head_object()
            .bucket(&dst)
            .key("a.bytes")
            .send()
            .await
            .unwrap();
        onprem
            .put_object()
            .bucket(&dst)
            .key("a.bytes")
            .set_metadata(head.metadata().cloned())
            .body(ByteStream::from(content(61, 50_000)))
            .send()
            .await
            .unwrap();
        let r = run(&m, &request, &[], &[]);
        assert_succeeded(&r);
        assert_eq!(r.output("ObjectsCopied"), "1");
        assert!(get(&onprem, &dst, "a.bytes").await == body);
    }
}

/// A destination that encrypts with KMS answers ETags that are not MD5s, so a streamed write
/// cannot be checked by its answer: the run copies the buffered way instead (MD5 computed here,
/// then a HeadObject), and still every object lands byte-identical and verified.
#[tokio::test]
async fn an_encrypting_destination_is_copied_the_buffered_way_and_verified() {
    let Some(m) = moto("an_encrypting_destination_is_copied_the_buffered_way") else {
        return;
    };
    let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
    let (src, dst) = (bucket("cloud-kms"), bucket("onprem-kms"));
    create_bucket(&cloud, &src).await;
    create_bucket(&onprem, &dst).await;
    use aws_sdk_s3::types::{
        ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
        ServerSideEncryptionRule,
    };
    onprem
        .put_bucket_encryption()
        .bucket(&dst)
        .server_side_encryption_configuration(
            ServerSideEncryptionConfiguration::builder()
                .rules(
                    ServerSideEncryptionRule::builder()
                        .apply_server_side_encryption_by_default(
                            ServerSideEncryptionByDefault::builder()
                                .sse_algorithm(ServerSideEncryption::AwsKms)
                                .kms_master_key_id("alias/onprem-artifacts")
                                .build()
                                .unwrap(),
                        )
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    for (i, k) in ["a.bytes", "b.bytes", "c.bytes"].iter().enumerate() {
        put(&cloud, &src, k, &content(70 + i as u64, 30_000 + i)).await;
    }
    let request = json!({"sourceBucket": src, "destinationBucket": dst,
        "destinationEndpoint": m.onprem, "concurrency": 1});
    let r = run(&m, &request, &[], &[]);
    assert_succeeded(&r);
    assert_eq!(r.output("ObjectsVerified"), "3");
    assert!(
        r.stderr.contains("the destination encrypts"),
        "{}",
        r.stderr
    );
    assert_identical(&cloud, &src, &onprem, &dst).await;
    // What the buffered way records: the SHA-256 beside the source ETag.
    let head = onprem
        .head_object()
        .bucket(&dst)
        .key("b.bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata().unwrap()["snapstage-sha256"],
        hex::encode(sha2::Sha256::digest(content(71, 30_001)))
    );
}

/// The environment `testkit::run_cli` gives the binary, for a run this test may kill.
fn spawn(m: &Moto, request: &Value, args: &[&str]) -> std::process::Child {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(BIN)
        .args(["--event", "-"])
        .args(args)
        .env("AWS_ENDPOINT_URL", &m.cloud)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("SNAPSTAGE_DEFAULTS")
        .env_remove("SNAPSTAGE_DEADLINE_MARGIN_MS")
        .env(WINDOW.0, WINDOW.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    child
}

/// Small windows: a run of the kill test is many windows, chunks and cursors.
const WINDOW: (&str, &str) = ("SNAPSTAGE_REPLICATE_WINDOW", "5");

/// xorshift: reproducible "random" kill points from a printed seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn killed_and_cut_runs_resume_to_a_byte_identical_copy() {
    for m in onprem_servers("killed_and_cut_runs_resume_to_a_byte_identical_copy") {
        let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
        let (src, dst) = (bucket("cloud-kill"), bucket("onprem-kill"));
        create_bucket(&cloud, &src).await;
        create_bucket(&onprem, &dst).await;
        for (k, body) in blob_store() {
            put(&cloud, &src, &format!("blobs/{k}"), &body).await;
        }
        for i in 0..12u64 {
            put(
                &cloud,
                &src,
                &format!("blobs/content/x/{i}.bytes"),
                &content(70 + i, 40_000),
            )
            .await;
            put(
                &cloud,
                &src,
                &format!("blobs/content/x/{i}.properties"),
                b"size=40000\n",
            )
            .await;
        }
        put_multipart(
            &cloud,
            &src,
            "blobs/content/big/a.bytes",
            &content(90, 16 * MIB),
            5 * MIB,
        )
        .await;
        put(
            &cloud,
            &src,
            "blobs/content/big/b.bytes",
            &content(91, 7 * MIB),
        )
        .await;
        let reports = bucket("cloud-reports");
        create_bucket(&cloud, &reports).await;
        let execution = unique("kill-resume");
        let request = json!({"sourceBucket": src, "sourcePrefix": "blobs/", "destinationBucket": dst,
        "destinationPrefix": "blobs/", "destinationEndpoint": m.onprem, "partSizeMiB": 5,
        "concurrency": 3, "executionId": execution,
        "manifest": format!("s3://{reports}/kill.jsonl")});

        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("kill points seed: {seed}");
        let mut rng = Rng(seed);
        // Killed at random points (SIGKILL: no chance to checkpoint) ...
        for _ in 0..4 {
            let mut child = spawn(&m, &request, &[]);
            tokio::time::sleep(std::time::Duration::from_millis(100 + rng.below(900))).await;
            let _ = child.kill();
            let _ = child.wait();
        }
        // ... and cut by a step budget (every step near its deadline: a Continue after each object or part).
        let cut = run(
            &m,
            &request,
            &["--step-budget", "25", "--no-follow"],
            &[("SNAPSTAGE_DEADLINE_MARGIN_MS", "0"), WINDOW],
        );
        assert_eq!(cut.code, 0, "{}", cut.last());
        let mut child = spawn(&m, &request, &[]);
        tokio::time::sleep(std::time::Duration::from_millis(100 + rng.below(500))).await;
        let _ = child.kill();
        let _ = child.wait();

        let last = run(&m, &request, &[], &[WINDOW]);
        assert_succeeded(&last);
        assert_identical(&cloud, &src, &onprem, &dst).await;
        // The manifest, assembled from the windows' chunks: every object exactly once, the
        // deferred metadata.properties last.
        let manifest = String::from_utf8(get(&cloud, &reports, "kill.jsonl").await).unwrap();
        let mut listed: Vec<String> = manifest
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["key"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            listed.last().map(String::as_str),
            Some("blobs/metadata.properties")
        );
        listed.sort();
        let mut there = keys(&onprem, &dst).await;
        there.sort();
        assert_eq!(listed, there, "{manifest}");
        // No multipart upload a killed step started is left open at the destination.
        assert_eq!(open_uploads(&onprem, &dst).await, 0, "uploads left open");
        // Nothing counted twice: the run's objects are its copies plus what it found done.
        let copied: u64 = last.output("ObjectsCopied").parse().unwrap();
        let skipped: u64 = last.output("ObjectsSkipped").parse().unwrap();
        assert_eq!(
            copied + skipped,
            keys(&onprem, &dst).await.len() as u64,
            "{}",
            last.last()
        );
        // The checkpoint is gone once the run is done.
        assert!(
            keys(&cloud, &src)
                .await
                .iter()
                .all(|k| !k.starts_with(".snapstage/")),
            "the checkpoint was left behind"
        );
    }
}

#[tokio::test]
async fn nexus_order_holds_under_concurrency() {
    for m in onprem_servers("nexus_order_holds_under_concurrency") {
        let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
        let (src, dst) = (bucket("cloud-order"), bucket("onprem-order"));
        create_bucket(&cloud, &src).await;
        create_bucket(&onprem, &dst).await;
        for i in 0..30u64 {
            // Large .bytes and tiny .properties: without the waves the .properties would finish first.
            put(
                &cloud,
                &src,
                &format!("content/vol-{i:02}/b.bytes"),
                &content(i, 200_000),
            )
            .await;
            put(
                &cloud,
                &src,
                &format!("content/vol-{i:02}/b.properties"),
                b"size=200000\n",
            )
            .await;
        }
        put(&cloud, &src, "metadata.properties", b"type=file/1\n").await;
        let r = run(
            &m,
            &json!({"sourceBucket": src, "destinationBucket": dst, "destinationEndpoint": m.onprem,
                "concurrency": 16}),
            &[],
            // Windows of 7 keys: a .bytes and its .properties may sit on either side of a boundary,
            // and metadata.properties waits for every window.
            &[
                ("RUST_LOG", "info,snapstage::replicate::copy=debug"),
                ("SNAPSTAGE_REPLICATE_WINDOW", "7"),
            ],
        );
        assert_succeeded(&r);
        assert_eq!(r.output("ObjectsCopied"), "61");
        // Log lines in order: when each object started and when it was verified.
        let mut verified = std::collections::HashSet::new();
        let mut starts = 0;
        for line in r.stderr.lines() {
            let key = || {
                line.split(" key=")
                    .nth(1)?
                    .split(' ')
                    .next()
                    .map(str::to_string)
            };
            if line.contains("copied and verified") {
                verified.insert(key().unwrap());
            } else if line.contains("copying") {
                starts += 1;
                let k = key().unwrap();
                if let Some(stem) = k.strip_suffix(".properties") {
                    if k == "metadata.properties" {
                        assert_eq!(verified.len(), 60, "metadata.properties started early");
                    } else {
                        assert!(
                            verified.contains(&format!("{stem}.bytes")),
                            "{k} started before its .bytes was verified"
                        );
                    }
                }
            }
        }
        assert_eq!(starts, 61, "{}", r.stderr);
    }
}

#[tokio::test]
async fn mirror_deletes_only_what_is_gone_and_guards_large_deletions() {
    for m in onprem_servers("mirror_deletes_only_what_is_gone_and_guards_large_deletions") {
        let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
        let (src, dst) = (bucket("cloud-mirror"), bucket("onprem-mirror"));
        create_bucket(&cloud, &src).await;
        create_bucket(&onprem, &dst).await;
        for i in 0..8 {
            put(&cloud, &src, &format!("blobs/{i}.bytes"), &content(i, 100)).await;
        }
        put(&onprem, &dst, "blobs/gone.bytes", b"deleted in the cloud").await;
        put(&onprem, &dst, "blobs/gone.properties", b"size=20").await;
        put(&onprem, &dst, "elsewhere/keep.txt", b"outside the prefix").await;
        let base = json!({"sourceBucket": src, "sourcePrefix": "blobs/", "destinationBucket": dst,
        "destinationEndpoint": m.onprem});
        let with = |extra: Value| {
            let mut r = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                r[k] = v.clone();
            }
            r
        };

        // Without mirror: nothing is deleted.
        let plain = run(&m, &base, &[], &[]);
        assert_succeeded(&plain);
        assert_eq!(plain.output("ObjectsDeleted"), "0");
        assert_eq!(keys(&onprem, &dst).await.len(), 11);

        // 2 of 10 (20%) is above the default 10%: refused, naming the count and the override.
        put(&cloud, &src, "blobs/new.bytes", b"new").await;
        let refused = run(&m, &with(json!({"mirror": true})), &[], &[]);
        assert_eq!(refused.code, 1, "{}", refused.last());
        assert_eq!(refused.last()["failureType"], "ConfigurationError");
        let msg = refused.last()["message"].as_str().unwrap();
        assert!(msg.contains("delete 2 of the 10 objects"), "{msg}");
        assert!(msg.contains("\"maxDeleteFraction\": 0.2"), "{msg}");
        assert_eq!(
            keys(&onprem, &dst).await.len(),
            11,
            "refused, yet something changed"
        );

        // A dry run lists the deletions in the manifest.
        let manifest = format!("s3://{src}/reports/mirror-dry.jsonl");
        let dry = run(
            &m,
            &with(json!({"mirror": true, "dryRun": true, "manifest": manifest})),
            &[],
            &[],
        );
        assert_succeeded(&dry);
        assert_eq!(dry.output("ObjectsToDelete"), "2");
        let lines = String::from_utf8(get(&cloud, &src, "reports/mirror-dry.jsonl").await).unwrap();
        let would: Vec<Value> = lines
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["action"] == "would-delete")
            .collect();
        assert_eq!(would.len(), 2, "{lines}");
        assert_eq!(keys(&onprem, &dst).await.len(), 11);

        // Allowed: the .properties goes before its .bytes; the rest stays.
        let r = run(
            &m,
            &with(json!({"mirror": true, "maxDeleteFraction": 0.2})),
            &[],
            &[],
        );
        assert_succeeded(&r);
        assert_eq!(r.output("ObjectsDeleted"), "2");
        assert_eq!(r.output("ObjectsCopied"), "1");
        let mut left = keys(&onprem, &dst).await;
        left.sort();
        assert!(!left.iter().any(|k| k.contains("gone")), "{left:?}");
        assert!(left.contains(&"elsewhere/keep.txt".to_string()));
        assert_eq!(left.len(), 10);
        let deleted: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.contains("deleted (gone at the source)"))
            .filter_map(|l| l.split(" key=").nth(1))
            .collect();
        assert_eq!(deleted.len(), 2, "{}", r.stderr);
        assert!(
            deleted[0].starts_with("blobs/gone.properties"),
            "{deleted:?}"
        );
    }
}

#[tokio::test]
async fn pull_mode_copies_into_a_directory_verified_and_incremental() {
    let Some(m) = moto("pull_mode_copies_into_a_directory_verified_and_incremental") else {
        return;
    };
    let cloud = s3(&m.cloud).await;
    let src = bucket("cloud-pull");
    create_bucket(&cloud, &src).await;
    for (k, body) in blob_store() {
        put(&cloud, &src, &format!("nexus/{k}"), &body).await;
    }
    let big = content(80, 11 * MIB + 3);
    put_multipart(&cloud, &src, "nexus/content/big/c.bytes", &big, 5 * MIB).await;
    let dir = std::env::temp_dir().join(unique("pull"));
    let request = json!({"sourceBucket": src, "sourcePrefix": "nexus/",
        "destinationDirectory": dir.to_str().unwrap(), "partSizeMiB": 5,
        "manifest": format!("s3://{src}/reports/pull.jsonl")});

    let first = run(&m, &request, &[], &[]);
    assert_succeeded(&first);
    assert_eq!(first.output("ObjectsCopied"), "8");
    assert_eq!(first.output("DestinationDirectory"), dir.to_str().unwrap());
    for (k, body) in blob_store() {
        assert!(std::fs::read(dir.join(k)).unwrap() == body, "{k}");
    }
    assert!(std::fs::read(dir.join("content/big/c.bytes")).unwrap() == big);
    let files = walk(&dir);
    assert!(
        files.iter().all(|f| !f.contains("snapstage-partial")),
        "{files:?}"
    );
    // The manifest: every copied file with the SHA-256 of its content.
    let lines = String::from_utf8(get(&cloud, &src, "reports/pull.jsonl").await).unwrap();
    let entry = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["key"] == "content/big/c.bytes")
        .unwrap();
    assert_eq!(entry["action"], "copied");
    assert_eq!(entry["size"], big.len());
    assert_eq!(
        entry["checksum"],
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&big)))
    );

    let second = run(&m, &request, &[], &[]);
    assert_succeeded(&second);
    assert_eq!(second.output("ObjectsCopied"), "0");
    assert_eq!(second.output("ObjectsSkipped"), "8");

    // Without the index, files are hashed (MD5, or per part) and still found unchanged; a
    // file changed locally (same size) is copied again.
    std::fs::remove_file(dir.join(".snapstage/index.json")).unwrap();
    let mut tampered = std::fs::read(dir.join("content/vol-01/chap-07/3f2a.bytes")).unwrap();
    tampered[10] ^= 1;
    std::fs::write(dir.join("content/vol-01/chap-07/3f2a.bytes"), &tampered).unwrap();
    let third = run(&m, &request, &[], &[]);
    assert_succeeded(&third);
    assert_eq!(third.output("ObjectsCopied"), "1");
    assert_eq!(third.output("ObjectsSkipped"), "7");
    assert!(
        std::fs::read(dir.join("content/vol-01/chap-07/3f2a.bytes")).unwrap() == blob_store()[1].1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// The sample requests in events/ are requests this function accepts (no services needed).
#[test]
fn sample_events_are_valid_requests() {
    use snapstage::job::invocation::{Invocation, classify};
    use snapstage::job::params::{Layer, merge, user_parameters};
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
        let d = t.s3().unwrap();
        assert_eq!(d.bucket, "onprem-nexus", "{name}");
        assert_eq!(
            d.endpoint.as_deref(),
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

/// As a CodePipeline action with an output artifact: the manifest is the artifact (a zip that
/// Python's zipfile reads), written with the job's artifact credentials, which never show.
#[tokio::test]
async fn the_manifest_is_the_jobs_output_artifact() {
    use snapstage_localenv::jobservice::{JobOutcome, JobService, JobSpec};
    for m in onprem_servers("the_manifest_is_the_jobs_output_artifact") {
        let (cloud, onprem) = (s3(&m.cloud).await, s3(&m.onprem).await);
        let (src, dst, store) = (
            bucket("cloud-art"),
            bucket("onprem-art"),
            bucket("pipeline-store"),
        );
        create_bucket(&cloud, &src).await;
        create_bucket(&cloud, &store).await;
        create_bucket(&onprem, &dst).await;
        put(&cloud, &src, "blobs/a.bytes", b"artifact-a").await;
        put(&cloud, &src, "blobs/a.properties", b"size=10\n").await;
        put(&onprem, &dst, "blobs/a.properties", b"size=10\n").await;

        let jobs = JobService::start().await.unwrap();
        let user_parameters = json!({"sourceBucket": src, "sourcePrefix": "blobs/",
        "destinationBucket": dst, "destinationEndpoint": m.onprem})
        .to_string();
        let job = jobs.register_job(JobSpec {
            pipeline_name: "shop".into(),
            stage: "Release".into(),
            action: "ReplicateBack".into(),
            execution_id: unique("pipeline-exec"),
            function_name: Some("replicate-artifacts-back".into()),
            user_parameters: Some(user_parameters.clone()),
            continuation_token: None,
        });
        let event = json!({"CodePipeline.job": {"id": job, "accountId": "123456789012", "data": {
        "actionConfiguration": {"configuration": {"FunctionName": "replicate-artifacts-back",
            "UserParameters": user_parameters}},
        "inputArtifacts": [],
        "outputArtifacts": [{"name": "ReplicationManifest", "revision": null, "location": {
            "type": "S3", "s3Location": {"bucketName": store, "objectKey": "shop/Replicat/abc.zip"}}}],
        "artifactCredentials": {"accessKeyId": "ASIAARTIFACTKEY", "secretAccessKey":
            "artifact-s3cr3t", "sessionToken": "artifact-session-token"}}}});
        let (cloud_url, jobs_url) = (m.cloud.clone(), jobs.url.clone());
        let r = tokio::task::spawn_blocking(move || {
            testkit::run_cli(
                BIN,
                &cloud_url,
                &event,
                &[],
                &[("AWS_ENDPOINT_URL_CODEPIPELINE", &jobs_url)],
            )
        })
        .await
        .unwrap();
        assert_eq!(r.code, 0, "{}\n{}", r.last(), r.stderr);
        let Some(JobOutcome::Succeeded {
            output_variables, ..
        }) = jobs.result_for(&job)
        else {
            panic!("{:?}\n{}", jobs.result_for(&job), r.stderr);
        };
        assert_eq!(output_variables["ObjectsCopied"], "1");
        assert_eq!(output_variables["ObjectsSkipped"], "1");
        assert_eq!(
            output_variables["Manifest"],
            format!("s3://{store}/shop/Replicat/abc.zip")
        );
        let everything = format!("{}{}", serde_json::to_string(&r.results).unwrap(), r.stderr);
        for secret in ["artifact-s3cr3t", "artifact-session-token"] {
            assert!(!everything.contains(secret), "{secret} leaked");
        }

        // An independent reader: Python's zipfile.
        let zip = get(&cloud, &store, "shop/Replicat/abc.zip").await;
        let path = std::env::temp_dir().join(unique("manifest.zip"));
        std::fs::write(&path, &zip).unwrap();
        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python");
        let text = if std::path::Path::new(python).exists() {
            let out = Command::new(python)
                .args([
                    "-c",
                    "import sys,zipfile;z=zipfile.ZipFile(sys.argv[1]);assert z.testzip() is None;\
                 print(z.namelist());sys.stdout.write(z.read('manifest.jsonl').decode())",
                    path.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        } else {
            testkit::skip("reading the zip with Python: no .venv");
            String::new()
        };
        let _ = std::fs::remove_file(&path);
        if !text.is_empty() {
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("['manifest.jsonl']"));
            let entries: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(entries.len(), 2, "{text}");
            let a = entries
                .iter()
                .find(|e| e["key"] == "blobs/a.bytes")
                .unwrap();
            assert_eq!(a["action"], "copied");
            assert_eq!(a["size"], 10);
            assert_eq!(
                a["checksum"],
                format!(
                    "sha256:{}",
                    hex::encode(sha2::Sha256::digest(b"artifact-a"))
                )
            );
            let p = entries
                .iter()
                .find(|e| e["key"] == "blobs/a.properties")
                .unwrap();
            assert_eq!(p["action"], "skipped");
        }
    }
}
