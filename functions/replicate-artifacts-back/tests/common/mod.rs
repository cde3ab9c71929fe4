//! Helpers shared by the replicate tests: S3 clients for moto, objects in and out, test content.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use aws_sdk_s3::primitives::ByteStream;
use snapstage_localenv::testkit;

pub const MIB: usize = 1024 * 1024;

pub async fn s3(endpoint: &str) -> aws_sdk_s3::Client {
    let config = testkit::sdk_config(endpoint).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

pub async fn put(c: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &[u8]) {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap();
}

pub async fn get(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
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

/// Deterministic, incompressible-looking bytes.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
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

/// Uploads `body` as a multipart upload of `part` bytes per part. moto 5.2's
/// CompleteMultipartUpload reply does not parse in the SDK (see `copy::multipart`); the upload
/// completes, which the HeadObject below checks.
pub async fn put_multipart(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: &[u8],
    part: usize,
) {
    let up = c
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for (i, chunk) in body.chunks(part).enumerate() {
        let n = i as i32 + 1;
        let p = c
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
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
    let _ = c
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await;
    let head = c
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(body.len() as i64));
}
