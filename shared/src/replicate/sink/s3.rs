//! [`S3Sink`]: a bucket at any S3 endpoint (S3, an on-prem S3-compatible server, moto), over
//! aws-sdk-s3.
//!
//! - An object up to the upload cutoff whose source ETag is its MD5 is one PutObject streamed
//!   from the source's GET ([`Sink::put_streamed`]): `Content-MD5` the source's, the body hashed
//!   (SHA-256) as it is sent, checked by the ETag PutObject answers (moto and versitygw do not
//!   check `Content-MD5`; the answered ETag is the MD5 of what they stored). A copy that fails the
//!   check is deleted. An answer that shows encryption turns streaming off for the sink.
//! - Otherwise an object of one part is one PutObject with `Content-MD5`, `snapstage-sha256` and
//!   `snapstage-source-etag`; a larger one a multipart upload, each UploadPart with
//!   `Content-MD5`, parts uploading in the background while the next ones are read.
//! - Bodies go as `UNSIGNED-PAYLOAD`: the signed `Content-MD5` header binds them (S3 refuses a
//!   body that does not match, even over plain HTTP; servers that do not check it answer an ETag
//!   that says so). Signing them as well would hash
//!   every byte once more with SHA-256 (SigV4): on a CPU without SHA-NI that doubled the
//!   copier's CPU time in `make bench`.
//! - Verified by what the destination answers: each part's ETag is its MD5, then a HeadObject of
//!   the result (size, ETag, `snapstage-source-etag`).
//! - Resumable ([`ResumableUploads`]): a multipart upload's id is in the checkpoint, ListParts
//!   says which parts a later step need not send again; uploads a run no longer needs are aborted.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use aws_smithy_types::body::SdkBody;
use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::{BoxFuture, Comparison, Object, Parts, ResumableUploads, Sink, Upload};
use crate::aws::aws_error;
use crate::digest::Sha256;
use crate::error::{DisplayChain, Error, Result};
use crate::replicate::SOURCE_ETAG_METADATA;
use crate::replicate::compare::{
    DestinationHead, HeadVerdict, Listed, ListingVerdict, compare_head, compare_listing,
    etag_is_md5, meta, multipart_etag, normalize_etag,
};
use crate::replicate::object::{Attempt, Problem};
use crate::replicate::params::S3Destination;
use crate::replicate::source::{Body, Page, Source, list_page_s3, list_s3, quoted};

/// A bucket (and prefix) at an S3 endpoint.
#[derive(Debug, Clone)]
pub struct S3Sink {
    pub client: Client,
    pub destination: S3Destination,
    /// Learned from an answer: the destination encrypts, its ETags are not MD5s, so no object
    /// is streamed (what it stored cannot be checked by its answer).
    encrypting: Arc<AtomicBool>,
}

/// What a write left for [`Sink::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Written {
    /// The ETag the object must have.
    pub etag: String,
    /// PutObject answered the source's MD5 as the ETag of what it stored: nothing left to check.
    pub answered: bool,
}

impl S3Sink {
    pub fn new(client: Client, destination: S3Destination) -> Self {
        Self {
            client,
            destination,
            encrypting: Arc::new(AtomicBool::new(false)),
        }
    }

    fn bucket(&self) -> &str {
        &self.destination.bucket
    }

    /// The destination object's HeadObject; `None` when it is gone.
    async fn head(&self, key: &str) -> Result<Option<DestinationHead>> {
        match self
            .client
            .head_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some(DestinationHead {
                size: h
                    .content_length()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
                etag: normalize_etag(h.e_tag().unwrap_or_default()),
                etag_is_md5: !matches!(
                    h.server_side_encryption(),
                    Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
                ) && h.sse_customer_algorithm().is_none(),
                metadata: h.metadata().cloned().unwrap_or_default(),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(aws_error(
                "s3",
                &format!("HeadObject s3://{}/{key}", self.bucket()),
                e,
            )),
        }
    }
}

/// The longest prefix all `keys` share (on a character boundary).
fn common_prefix(keys: &[String]) -> &str {
    let Some(first) = keys.first() else {
        return "";
    };
    let mut end = first.len();
    for k in &keys[1..] {
        end = first
            .char_indices()
            .zip(k.chars())
            .take_while(|((_, a), b)| a == b)
            .map(|((i, a), _)| i + a.len_utf8())
            .last()
            .unwrap_or(0)
            .min(end);
    }
    &first[..end]
}

impl Sink for S3Sink {
    type Written = S3Written;
    type Upload = S3Upload;

    fn describe_key(&self, key: &str) -> String {
        let d = &self.destination;
        format!(
            "s3://{}/{key}{}",
            d.bucket,
            d.endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        )
    }

    fn prefix(&self) -> &str {
        &self.destination.prefix
    }

    async fn list(&self, _clean: bool) -> Result<Vec<Listed>> {
        Ok(list_s3(
            &self.client,
            self.bucket(),
            &self.destination.prefix,
            "destination",
        )
        .await?
        .into_iter()
        .filter(|l| !l.key.starts_with(".snapstage/"))
        .collect())
    }

    async fn list_page(
        &self,
        start_after: Option<&str>,
        token: Option<String>,
        _clean: bool,
    ) -> Result<Page> {
        let mut page = list_page_s3(
            &self.client,
            self.bucket(),
            &self.destination.prefix,
            start_after,
            token,
            "destination",
        )
        .await?;
        page.items.retain(|l| !l.key.starts_with(".snapstage/"));
        Ok(page)
    }

    /// ListObjectsV2 of the keys' range only: their common prefix, from just before the first
    /// key to the last — a shard costs a page per thousand of its keys, whatever the prefix holds.
    async fn list_keys(&self, keys: &[String]) -> Result<Vec<Listed>> {
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            return Ok(Vec::new());
        };
        let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
        let prefix = common_prefix(keys);
        // StartAfter is exclusive: the first key without its last character sorts before it.
        let mut start_after: String = first.clone();
        start_after.pop();
        let action = format!(
            "ListObjectsV2 on the destination s3://{}/{prefix} from {first} to {last}",
            self.bucket()
        );
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(prefix);
        if start_after.len() > prefix.len() {
            req = req.start_after(start_after);
        }
        let mut pages = req.into_paginator().send();
        let mut out = Vec::new();
        'pages: while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("s3", &action, e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                if key > last.as_str() {
                    break 'pages;
                }
                if wanted.contains(key) {
                    out.push(Listed {
                        key: key.to_string(),
                        size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                        etag: normalize_etag(o.e_tag().unwrap_or_default()),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn compare<R: Source>(
        &self,
        _source: &R,
        key: &str,
        src: &Listed,
        listed: Option<&Listed>,
    ) -> Result<Comparison> {
        let copy = Comparison::Copy {
            destination_sha256: None,
        };
        Ok(match compare_listing(src, listed) {
            ListingVerdict::Unchanged => Comparison::Unchanged,
            ListingVerdict::New | ListingVerdict::Changed => copy,
            ListingVerdict::NeedsHead => match self.head(key).await? {
                None => copy,
                Some(h) => match compare_head(src, &h) {
                    HeadVerdict::Unchanged => Comparison::Unchanged,
                    HeadVerdict::Copy { destination_sha256 } => {
                        Comparison::Copy { destination_sha256 }
                    }
                },
            },
        })
    }

    async fn put(
        &self,
        object: Object<'_>,
        body: Bytes,
        md5: [u8; 16],
        sha256: &str,
    ) -> Attempt<S3Written> {
        let put = self
            .put_request(object, md5, Some(sha256))
            .body(ByteStream::from(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    "s3",
                    &format!("PutObject {}", self.describe_key(object.key)),
                    e,
                )
            })?;
        Ok(S3Written {
            etag: if etag_is_md5(put.server_side_encryption(), put.sse_customer_algorithm()) {
                hex::encode(md5)
            } else {
                // An encrypting destination's ETag is not the MD5: the one PutObject answered must stay.
                normalize_etag(put.e_tag().unwrap_or_default())
            },
            answered: false,
        })
    }

    fn streams(&self) -> bool {
        !self.encrypting.load(Ordering::Relaxed)
    }

    async fn put_streamed<B: Body>(
        &self,
        object: Object<'_>,
        body: B,
        md5: [u8; 16],
    ) -> Attempt<(S3Written, String)> {
        let where_ = self.describe_key(object.key);
        let seen = Arc::new(StdMutex::new(Seen {
            sha: Some(Sha256::new()),
            broke: None,
        }));
        let hashing = Hashing {
            inner: body.into_byte_stream().into_inner(),
            seen: Arc::clone(&seen),
        };
        let put = self
            .put_request(object, md5, None)
            .body(ByteStream::new(SdkBody::from_body_1_x(hashing)))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| {
                let broke = seen.lock().ok().and_then(|mut s| s.broke.take());
                match broke {
                    // The source's body failed (a reset, the SDK's response checksum): read again.
                    Some(why) => Problem::Retry(format!("reading the source broke off: {why}")),
                    None => streamed_put_problem(e, &where_),
                }
            })?;
        let sha256 = seen
            .lock()
            .ok()
            .and_then(|mut s| s.sha.take())
            .map(Sha256::finish_hex)
            .ok_or_else(|| {
                Problem::Fatal(Error::Internal(format!(
                    "{where_}: no hash of the body sent"
                )))
            })?;
        let expected = hex::encode(md5);
        if !etag_is_md5(put.server_side_encryption(), put.sse_customer_algorithm()) {
            // An encrypting destination: its ETags say nothing of the content, so this object
            // and every later one are copied the buffered way, their MD5 computed here.
            self.encrypting.store(true, Ordering::Relaxed);
            return Err(Problem::Retry(format!(
                "{where_}: the destination encrypts (its ETag is not the MD5); copying it again with \
                 the MD5 computed here"
            )));
        }
        let got = normalize_etag(put.e_tag().unwrap_or_default());
        if got != expected {
            // Not the source's content (read corrupted on the way): removed, never left to be
            // read under the object's name. The key was this run's to write either way.
            if let Err(e) = self.delete(object.key).await {
                tracing::warn!(key = %object.key, error = %DisplayChain(&e), "could not remove a copy that failed its check; the next run replaces it");
            }
            return Err(Problem::Retry(format!(
                "{where_}: the destination stored content with MD5 (ETag) {got:?}, the source's is \
                 {expected}"
            )));
        }
        Ok((
            S3Written {
                etag: expected,
                answered: true,
            },
            sha256,
        ))
    }

    async fn verify(&self, object: Object<'_>, written: S3Written) -> Attempt<()> {
        if written.answered {
            // PutObject answered the MD5 of what it stored, and it is the source's.
            return Ok(());
        }
        verify(
            &self.client,
            self.bucket(),
            object,
            &written.etag,
            &self.describe_key(object.key),
        )
        .await
    }

    async fn begin(&self, object: Object<'_>) -> Attempt<S3Upload> {
        let (key, src, info) = (object.key, object.source, object.info);
        let where_ = self.describe_key(key);
        let out = self
            .client
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(key)
            .set_metadata(Some(info.destination_metadata(&src.etag, None)))
            .set_content_type(info.content_type.clone())
            .set_content_encoding(info.content_encoding.clone())
            .set_content_disposition(info.content_disposition.clone())
            .set_content_language(info.content_language.clone())
            .set_cache_control(info.cache_control.clone())
            .send()
            .await
            .map_err(|e| aws_error("s3", &format!("CreateMultipartUpload {where_}"), e))?;
        let id = out.upload_id().unwrap_or_default().to_string();
        if id.is_empty() {
            return Err(Error::Backend {
                backend: "s3",
                message: format!("CreateMultipartUpload {where_}: no upload id in the answer"),
                source: None,
            }
            .into());
        }
        Ok(self.upload(key, id))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
            .map_err(|e| aws_error("s3", &format!("DeleteObject {}", self.describe_key(key)), e))?;
        Ok(())
    }

    fn resumable(&self) -> Option<&dyn ResumableUploads<S3Upload>> {
        Some(self)
    }
}

impl S3Sink {
    /// A PutObject of `object` whole: its length, `Content-MD5`, the source's headers and our
    /// metadata (`sha256` when known before the body is sent).
    fn put_request(
        &self,
        object: Object<'_>,
        md5: [u8; 16],
        sha256: Option<&str>,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let (src, info) = (object.source, object.info);
        self.client
            .put_object()
            .bucket(self.bucket())
            .key(object.key)
            .content_length(i64::try_from(src.size).unwrap_or(i64::MAX))
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .set_metadata(Some(info.destination_metadata(&src.etag, sha256)))
            .set_content_type(info.content_type.clone())
            .set_content_encoding(info.content_encoding.clone())
            .set_content_disposition(info.content_disposition.clone())
            .set_content_language(info.content_language.clone())
            .set_cache_control(info.cache_control.clone())
    }

    fn upload(&self, key: &str, upload_id: String) -> S3Upload {
        S3Upload {
            client: self.client.clone(),
            bucket: self.destination.bucket.clone(),
            key: key.to_string(),
            where_: self.describe_key(key),
            upload_id,
            tasks: JoinSet::new(),
        }
    }
}

impl ResumableUploads<S3Upload> for S3Sink {
    fn resume<'a>(&'a self, key: &'a str, id: &'a str) -> BoxFuture<'a, Result<(S3Upload, Parts)>> {
        Box::pin(async move {
            let parts = list_parts(&self.client, self.bucket(), key, id).await?;
            Ok((self.upload(key, id.to_string()), parts))
        })
    }

    fn abort<'a>(&'a self, key: &'a str, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(abort(&self.client, self.bucket(), key, id))
    }

    fn abort_stale<'a>(&'a self, keys: &'a HashSet<String>) -> BoxFuture<'a, usize> {
        Box::pin(abort_stale_uploads(
            &self.client,
            self.bucket(),
            &self.destination.prefix,
            keys,
        ))
    }
}

/// A multipart upload: parts upload in background tasks, each holding its buffer's permit.
#[derive(Debug)]
pub struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    where_: String,
    upload_id: String,
    tasks: JoinSet<Attempt<u64>>,
}

fn joined(r: std::result::Result<Attempt<u64>, tokio::task::JoinError>) -> Attempt<u64> {
    r.map_err(|e| Problem::Fatal(Error::Internal(format!("part upload task: {e}"))))?
}

impl Upload for S3Upload {
    fn id(&self) -> Option<&str> {
        Some(&self.upload_id)
    }

    async fn part(
        &mut self,
        n: u64,
        data: Bytes,
        md5: [u8; 16],
        permit: OwnedSemaphorePermit,
    ) -> Attempt<()> {
        let len = data.len();
        let md5_hex = hex::encode(md5);
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(i32::try_from(n).unwrap_or(i32::MAX))
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .body(ByteStream::from(data))
            .customize()
            .disable_payload_signing();
        let what = format!("UploadPart {n} of s3://{}/{}", self.bucket, self.key);
        self.tasks.spawn(async move {
            let out = req.send().await.map_err(|e| aws_error("s3", &what, e))?;
            drop(permit);
            let got = normalize_etag(out.e_tag().unwrap_or_default());
            if etag_is_md5(out.server_side_encryption(), out.sse_customer_algorithm())
                && got != md5_hex
            {
                return Err(Problem::Retry(format!(
                    "{what}: the destination answered ETag {got:?}, the part's MD5 is {md5_hex}"
                )));
            }
            Ok(n)
        });
        // Surface a failed part early.
        while let Some(done) = self.tasks.try_join_next() {
            joined(done)?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Attempt<()> {
        let mut first = None;
        while let Some(done) = self.tasks.join_next().await {
            if let Err(p) = joined(done) {
                first.get_or_insert(p);
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn complete(self, object: Object<'_>, part_md5s: &[[u8; 16]], _: &str) -> Attempt<()> {
        let parts_etag = multipart_etag(part_md5s);
        let parts: Vec<CompletedPart> = part_md5s
            .iter()
            .enumerate()
            .map(|(i, m)| {
                CompletedPart::builder()
                    .part_number(i32::try_from(i + 1).unwrap_or(i32::MAX))
                    .e_tag(quoted(&hex::encode(m)))
                    .build()
            })
            .collect();
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        let expected = match completed {
            Ok(out) if !etag_is_md5(out.server_side_encryption(), None) => {
                normalize_etag(out.e_tag().unwrap_or_default())
            }
            Ok(_) => parts_etag,
            // A reply with an S3 error code is an answer: the upload did not complete.
            Err(e) if e.as_service_error().and_then(|s| s.code()).is_some() => {
                let err = aws_error("s3", &format!("CompleteMultipartUpload {}", self.where_), e);
                self.abort().await;
                return Err(Problem::Retry(err.to_string()));
            }
            // Some S3-compatible servers answer a completed upload with a body the SDK cannot
            // parse (moto 5.2 names the root element `CompleteMultipartUploadResponse` instead
            // of `CompleteMultipartUploadResult`); a lost connection leaves the outcome unknown
            // too. Neither is trusted nor fatal: the HeadObject below decides, as it does for
            // every write — the object must be there with our size, our md5-of-part-md5s ETag
            // and the source ETag in its metadata, or the copy is retried.
            Err(e) => {
                tracing::info!(key = %self.key, reply = %DisplayChain(&e), "CompleteMultipartUpload reply unreadable; checking the object itself");
                parts_etag
            }
        };
        verify(&self.client, &self.bucket, object, &expected, &self.where_).await
    }

    async fn abort(self) {
        abort(&self.client, &self.bucket, &self.key, &self.upload_id).await;
    }
}

/// HeadObject of what was written: size, ETag, and the source ETag recorded in the metadata.
async fn verify(
    client: &Client,
    bucket: &str,
    object: Object<'_>,
    expected_etag: &str,
    where_: &str,
) -> Attempt<()> {
    let src = object.source;
    let h = client
        .head_object()
        .bucket(bucket)
        .key(object.key)
        .send()
        .await;
    let h = match h {
        Ok(h) => h,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
            return Err(Problem::Retry(format!(
                "{where_} is not there after the write"
            )));
        }
        Err(e) => return Err(aws_error("s3", &format!("HeadObject {where_}"), e).into()),
    };
    let got = DestinationHead {
        size: h
            .content_length()
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
        etag: normalize_etag(h.e_tag().unwrap_or_default()),
        etag_is_md5: etag_is_md5(h.server_side_encryption(), h.sse_customer_algorithm()),
        metadata: h.metadata().cloned().unwrap_or_default(),
    };
    let recorded = meta(&got.metadata, SOURCE_ETAG_METADATA).map(normalize_etag);
    let etag_ok = !got.etag_is_md5 || expected_etag.is_empty() || got.etag == expected_etag;
    // A source that names no ETag at all has none to record.
    let recorded_ok = src.etag.is_empty() || recorded.as_deref() == Some(src.etag.as_str());
    if got.size != src.size || !etag_ok || !recorded_ok {
        return Err(Problem::Retry(format!(
            "not verified after the write: the destination holds {} bytes, ETag {:?}, source ETag \
             {:?}; expected {} bytes, ETag {expected_etag:?}, source ETag {:?}",
            got.size, got.etag, recorded, src.size, src.etag
        )));
    }
    Ok(())
}

async fn list_parts(client: &Client, bucket: &str, key: &str, upload_id: &str) -> Result<Parts> {
    let mut out = Parts::new();
    let mut pages = client
        .list_parts()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| aws_error("s3", &format!("ListParts s3://{bucket}/{key}"), e))?;
        for p in page.parts() {
            if let (Some(n), Some(etag)) = (p.part_number(), p.e_tag()) {
                out.insert(
                    u64::try_from(n).unwrap_or(0),
                    (
                        normalize_etag(etag),
                        p.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    ),
                );
            }
        }
    }
    Ok(out)
}

/// Most ListMultipartUploads pages read by [`abort_stale_uploads`] (1000 uploads a page).
const STALE_UPLOAD_PAGES: usize = 100;

/// Aborts the multipart uploads still open under `prefix` for keys in `keys`: once the run has
/// verified every one of those objects at the destination, an upload still open for one of them
/// is a leftover of this run — a CreateMultipartUpload whose answer was lost (the SDK's retry
/// started a second upload) or a run killed before its checkpoint held the upload id. Nothing
/// else knows their ids, so without this they stay (and are billed) until a lifecycle rule
/// removes them. Uploads for other keys are left alone. Failures are logged, not fatal: the
/// copy itself is verified. Returns how many were aborted.
pub async fn abort_stale_uploads(
    client: &Client,
    bucket: &str,
    prefix: &str,
    keys: &HashSet<String>,
) -> usize {
    let mut aborted = 0;
    let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
    for _ in 0..STALE_UPLOAD_PAGES {
        let page = match client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker.clone())
            .set_upload_id_marker(id_marker.clone())
            .send()
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(bucket = %bucket, error = %DisplayChain(&e), "ListMultipartUploads failed; uploads a lost answer or a killed run left open stay until the bucket's lifecycle rule removes them");
                return aborted;
            }
        };
        for u in page.uploads() {
            if let (Some(key), Some(id)) = (u.key(), u.upload_id())
                && keys.contains(key)
            {
                tracing::info!(key = %key, "aborting a multipart upload an earlier attempt left open");
                abort(client, bucket, key, id).await;
                aborted += 1;
            }
        }
        if !page.is_truncated().unwrap_or(false) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        id_marker = page.next_upload_id_marker().map(str::to_string);
        if key_marker.is_none() && id_marker.is_none() {
            break;
        }
    }
    aborted
}

/// Aborts an upload of ours; failures are logged (a lifecycle rule cleans what is left).
pub async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        tracing::warn!(key = %key, error = %DisplayChain(&e), "AbortMultipartUpload failed; the bucket's lifecycle rule for incomplete uploads removes it");
    }
}

/// A request body hashing (SHA-256) what goes through it: the manifest's checksum of a streamed
/// PutObject, the bytes hashed once, as they are sent.
struct Hashing {
    inner: SdkBody,
    seen: Arc<StdMutex<Seen>>,
}

/// What a [`Hashing`] body saw.
struct Seen {
    sha: Option<Sha256>,
    /// The source's body failed: why.
    broke: Option<String>,
}

impl http_body::Body for Hashing {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(result)) = &polled
            && let Ok(mut seen) = self.seen.lock()
        {
            match result {
                Ok(frame) => {
                    if let (Some(data), Some(h)) = (frame.data_ref(), seen.sha.as_mut()) {
                        h.update(data);
                    }
                }
                Err(e) => seen.broke = Some(DisplayChain(e.as_ref()).to_string()),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// Why a streamed PutObject failed: throttling, a 5xx, a reset or a timeout (the SDK cannot
/// retry a body read from the source) is [`Problem::Transient`]; a refused checksum
/// (`BadDigest`, `InvalidDigest`: what was read is not the source's content) is worth another
/// read; anything else fails the object.
fn streamed_put_problem(
    e: aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::put_object::PutObjectError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
    where_: &str,
) -> Problem {
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .unwrap_or_default();
    if matches!(code, "BadDigest" | "InvalidDigest") {
        return Problem::Retry(format!(
            "{where_}: the destination refused the content ({code}): what was read is not the \
             source's MD5"
        ));
    }
    match aws_error("s3", &format!("PutObject {where_}"), e) {
        e @ Error::Unavailable { .. } => Problem::Transient(e),
        e => Problem::Fatal(e),
    }
}
