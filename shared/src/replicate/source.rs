//! The read side of a copy: a [`Source`] lists, HEADs and reads objects, conditional on the ETag
//! they were listed with; [`S3Source`] is the cloud bucket (aws-sdk-s3). The tests' in-memory
//! source is in `memory.rs`.

use std::future::Future;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::compare::{Listed, etag_is_md5, normalize_etag};
use super::object::{Attempt, Problem, SourceInfo};
use crate::aws::aws_error;
use crate::error::{DisplayChain, Error, Result};

/// What a HeadObject of the source says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceHead {
    /// The object's size (of the part, with `part`).
    pub size: u64,
    pub info: SourceInfo,
}

/// A GET's answer, its body not read yet.
#[derive(Debug)]
pub struct Fetched<B> {
    /// The ETag of the version answered (normalized).
    pub etag: String,
    pub content_length: Option<u64>,
    /// The object's headers, when asked for (a whole-object read).
    pub info: Option<SourceInfo>,
    pub body: B,
}

/// A GET's body, read to the end.
pub trait Body: Send + 'static {
    /// The bytes; `Err`: the read broke off (worth another try).
    fn bytes(self) -> impl Future<Output = std::result::Result<Bytes, String>> + Send;

    /// The body as a request body, read while it is sent (a streamed PutObject).
    fn into_byte_stream(self) -> ByteStream;
}

/// Where objects are copied from.
pub trait Source: Send + Sync + 'static {
    type Body: Body;

    /// `s3://bucket/key`: for messages.
    fn describe(&self, key: &str) -> String;

    /// Every object under `prefix`, to the end of the listing.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<Listed>>> + Send;

    /// One page of the objects under `prefix`, in UTF-8 byte order: the first page of a listing
    /// starts after `start_after` (`token` `None`), the next ones continue from the token the
    /// page before answered. A page without a token is the last.
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<String>,
    ) -> impl Future<Output = Result<Page>> + Send;

    /// The object's headers (of part `part` when given); `None`: it is gone;
    /// [`Problem::SourceChanged`]: its ETag is not `if_match`.
    fn head(
        &self,
        key: &str,
        if_match: Option<&str>,
        part: Option<u64>,
    ) -> impl Future<Output = Attempt<Option<SourceHead>>> + Send;

    /// Reads the object, or the bytes `[start, end)` of it, conditional on `if_match`
    /// ([`Problem::SourceChanged`] when it changed). With `info`, the answer carries the headers.
    fn get(
        &self,
        key: &str,
        if_match: Option<&str>,
        range: Option<(u64, u64)>,
        info: bool,
    ) -> impl Future<Output = Attempt<Fetched<Self::Body>>> + Send;
}

/// One page of a listing (ListObjectsV2), and the token of the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Listed>,
    /// The continuation of the listing; `None`: this page is the last.
    pub next: Option<String>,
}

/// A bucket (and the client that reads it): the cloud side.
#[derive(Debug, Clone)]
pub struct S3Source {
    pub client: Client,
    pub bucket: String,
}

impl Body for ByteStream {
    async fn bytes(self) -> std::result::Result<Bytes, String> {
        self.collect()
            .await
            .map(|b| b.into_bytes())
            .map_err(|e| DisplayChain(&e).to_string())
    }

    fn into_byte_stream(self) -> ByteStream {
        self
    }
}

pub(super) fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

pub(super) fn is_precondition_failed<E: ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "PreconditionFailed")
        || matches!(e, aws_sdk_s3::error::SdkError::ServiceError(se)
            if se.raw().status().as_u16() == 412)
}

impl Source for S3Source {
    type Body = ByteStream;

    fn describe(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        list_s3(&self.client, &self.bucket, prefix, "source").await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<String>,
    ) -> Result<Page> {
        list_page_s3(
            &self.client,
            &self.bucket,
            prefix,
            start_after,
            token,
            "source",
        )
        .await
    }

    async fn head(
        &self,
        key: &str,
        if_match: Option<&str>,
        part: Option<u64>,
    ) -> Attempt<Option<SourceHead>> {
        let mut req = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_part_number(part.map(|n| i32::try_from(n).unwrap_or(i32::MAX)));
        if let Some(e) = if_match {
            req = req.if_match(quoted(e));
        }
        match req.send().await {
            Ok(h) => Ok(Some(SourceHead {
                size: h
                    .content_length()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
                info: SourceInfo {
                    metadata: h.metadata().cloned().unwrap_or_default(),
                    content_type: h.content_type().map(str::to_string),
                    content_encoding: h.content_encoding().map(str::to_string),
                    content_disposition: h.content_disposition().map(str::to_string),
                    content_language: h.content_language().map(str::to_string),
                    cache_control: h.cache_control().map(str::to_string),
                    etag_is_md5: etag_is_md5(
                        h.server_side_encryption(),
                        h.sse_customer_algorithm(),
                    ),
                    etag: normalize_etag(h.e_tag().unwrap_or_default()),
                },
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) if is_precondition_failed(&e) => Err(Problem::SourceChanged),
            Err(e) => Err(Problem::Fatal(aws_error(
                "s3",
                &format!(
                    "HeadObject s3://{}/{key}{}",
                    self.bucket,
                    part.map(|n| format!(" (part {n})")).unwrap_or_default()
                ),
                e,
            ))),
        }
    }

    async fn get(
        &self,
        key: &str,
        if_match: Option<&str>,
        range: Option<(u64, u64)>,
        info: bool,
    ) -> Attempt<Fetched<ByteStream>> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(e) = if_match {
            req = req.if_match(quoted(e));
        }
        if let Some((start, end)) = range {
            req = req.range(format!("bytes={start}-{}", end.saturating_sub(1)));
        }
        let out = match req.send().await {
            Ok(o) => o,
            // Deleted since the listing: the copier HEADs it again and finds it gone.
            Err(e)
                if is_precondition_failed(&e)
                    || e.as_service_error().is_some_and(|s| s.is_no_such_key()) =>
            {
                return Err(Problem::SourceChanged);
            }
            Err(e) => {
                return Err(Problem::Fatal(aws_error(
                    "s3",
                    &format!("GetObject s3://{}/{key}", self.bucket),
                    e,
                )));
            }
        };
        let etag = normalize_etag(out.e_tag().unwrap_or_default());
        let info = info.then(|| SourceInfo {
            metadata: out.metadata().cloned().unwrap_or_default(),
            content_type: out.content_type().map(str::to_string),
            content_encoding: out.content_encoding().map(str::to_string),
            content_disposition: out.content_disposition().map(str::to_string),
            content_language: out.content_language().map(str::to_string),
            cache_control: out.cache_control().map(str::to_string),
            etag_is_md5: etag_is_md5(out.server_side_encryption(), out.sse_customer_algorithm()),
            etag: etag.clone(),
        });
        Ok(Fetched {
            etag,
            content_length: out.content_length().and_then(|n| u64::try_from(n).ok()),
            info,
            body: out.body,
        })
    }
}

/// ListObjectsV2 to the end; `what` ("source", "destination") names the side in errors.
pub(super) async fn list_s3(
    client: &Client,
    bucket: &str,
    prefix: &str,
    what: &str,
) -> Result<Vec<Listed>> {
    let action = format!("ListObjectsV2 on the {what} s3://{bucket}/{prefix}");
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    let mut complete = false;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws_error("s3", &action, e))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            out.push(Listed {
                key: key.to_string(),
                size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                etag: normalize_etag(o.e_tag().unwrap_or_default()),
            });
        }
        complete = !page.is_truncated().unwrap_or(false);
    }
    // The paginator follows continuation tokens to the end; an answer that still says
    // "truncated" is not a complete listing, and mirror mode must never act on one.
    if !complete && !out.is_empty() {
        return Err(Error::Unavailable {
            backend: "s3",
            message: format!("{action}: the listing ended truncated"),
            source: None,
        });
    }
    Ok(out)
}

/// One ListObjectsV2 page: from after `start_after` (a first page) or from `token`; `what`
/// ("source", "destination") names the side in errors. A page that says it is truncated but
/// names no continuation is an incomplete listing: an error, never taken for the end.
pub(super) async fn list_page_s3(
    client: &Client,
    bucket: &str,
    prefix: &str,
    start_after: Option<&str>,
    token: Option<String>,
    what: &str,
) -> Result<Page> {
    let action = format!("ListObjectsV2 on the {what} s3://{bucket}/{prefix}");
    let mut req = client.list_objects_v2().bucket(bucket).prefix(prefix);
    req = match token {
        Some(t) => req.continuation_token(t),
        None => req.set_start_after(start_after.map(str::to_string)),
    };
    let page = req.send().await.map_err(|e| aws_error("s3", &action, e))?;
    let items = page
        .contents()
        .iter()
        .filter_map(|o| {
            Some(Listed {
                key: o.key()?.to_string(),
                size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                etag: normalize_etag(o.e_tag().unwrap_or_default()),
            })
        })
        .collect();
    let next = if page.is_truncated().unwrap_or(false) {
        match page.next_continuation_token() {
            Some(t) if !t.is_empty() => Some(t.to_string()),
            _ => {
                return Err(Error::Unavailable {
                    backend: "s3",
                    message: format!("{action}: a truncated page without a continuation token"),
                    source: None,
                });
            }
        }
    } else {
        None
    };
    Ok(Page { items, next })
}
