//! Copying artifacts between S3 endpoints, verified: a cloud bucket (e.g. a Sonatype Nexus blob
//! store written in the cloud) back to an on-premises S3-compatible endpoint (MinIO, FlashBlade,
//! ...) or any other bucket.
//!
//! One step:
//! 1. list the source and the destination (ListObjectsV2, paginated, in key order);
//! 2. decide per object ([`compare_listing`], [`compare_head`]): same size and the same
//!    single-part ETag is unchanged; otherwise the destination's `snapstage-source-etag` metadata
//!    (the source ETag it was copied from) or its `snapstage-sha256` decide; anything else is copied;
//! 3. copy what is new or changed in Nexus-safe order ([`copy_order`]: `.bytes` before
//!    `.properties`, `metadata.properties` last), each object read whole, its MD5 checked against
//!    the source ETag, written with `Content-MD5` (the server verifies) and `snapstage-sha256`, then
//!    HeadObject'ed until its ETag is the MD5 we computed;
//! 4. between objects, when the deadline is near, return `Continue`: a re-run lists again and skips
//!    what was already copied, so the state is only counters.
//!
//! Nothing at the destination is ever deleted. Objects larger than [`MAX_BUFFERED_BYTES`] fail the
//! step before anything is copied (multipart streaming is not yet supported).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;

use crate::contract::{Outcome, Step};
use crate::error::{DisplayChain, Error, Result, aws_error};

/// The largest object this version reads into memory.
pub const MAX_BUFFERED_BYTES: u64 = 64 * 1024 * 1024;
/// Destination metadata: the hex SHA-256 of the content.
pub const SHA256_METADATA: &str = "snapstage-sha256";
/// Destination metadata: the source ETag the object was copied from.
pub const SOURCE_ETAG_METADATA: &str = "snapstage-source-etag";
/// Time kept back, between objects, to answer before the deadline.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// Parameters of `replicate-artifacts-back`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    pub source_bucket: String,
    #[serde(default)]
    pub source_prefix: String,
    pub destination_bucket: String,
    /// Default: the source prefix.
    #[serde(default)]
    pub destination_prefix: Option<String>,
    /// The on-premises S3-compatible endpoint; absent means the normal S3 endpoint.
    #[serde(default)]
    pub destination_endpoint: Option<String>,
    #[serde(default)]
    pub destination_region: Option<String>,
    /// A Secrets Manager secret id whose SecretString is `{"accessKeyId", "secretAccessKey"}`.
    #[serde(default)]
    pub destination_credentials_secret: Option<String>,
    /// Default: true when `destinationEndpoint` is set.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Validated parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub source_bucket: String,
    pub source_prefix: String,
    pub destination_bucket: String,
    pub destination_prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials_secret: Option<String>,
    pub force_path_style: bool,
    pub dry_run: bool,
}

impl Params {
    /// Checks the parameters; errors name the field and say what to write instead.
    pub fn validate(self) -> Result<Target> {
        let source_bucket = bucket_name("sourceBucket", &self.source_bucket)?;
        let destination_bucket = bucket_name("destinationBucket", &self.destination_bucket)?;
        let source_prefix = prefix("sourcePrefix", self.source_prefix)?;
        let destination_prefix = match self.destination_prefix {
            Some(p) => prefix("destinationPrefix", p)?,
            None => source_prefix.clone(),
        };
        let endpoint = self
            .destination_endpoint
            .as_deref()
            .map(endpoint_url)
            .transpose()?;
        let region = non_empty("destinationRegion", self.destination_region)?;
        let credentials_secret = non_empty(
            "destinationCredentialsSecret",
            self.destination_credentials_secret,
        )?;
        if endpoint.is_none()
            && source_bucket == destination_bucket
            && (source_prefix.starts_with(&destination_prefix)
                || destination_prefix.starts_with(&source_prefix))
        {
            return Err(Error::parameter(
                "destinationPrefix",
                format!(
                    "s3://{destination_bucket}/{destination_prefix} overlaps the source \
                     s3://{source_bucket}/{source_prefix} on the same endpoint: choose another \
                     destinationBucket or a destinationPrefix outside the source prefix"
                ),
            ));
        }
        Ok(Target {
            force_path_style: self.force_path_style.unwrap_or(endpoint.is_some()),
            source_bucket,
            source_prefix,
            destination_bucket,
            destination_prefix,
            endpoint,
            region,
            credentials_secret,
            dry_run: self.dry_run,
        })
    }
}

fn bucket_name(field: &str, value: &str) -> Result<String> {
    let v = value.trim();
    let problem = if v.is_empty() {
        "expected a bucket name, got an empty string".to_string()
    } else if v.contains("://") {
        format!(
            "expected a bucket name, got the URL {v:?}: write only the bucket name and put the \
             folder in the prefix parameter"
        )
    } else if v.contains('/') {
        format!(
            "expected a bucket name without '/', got {v:?}: put the folder in the prefix parameter"
        )
    } else if v.chars().any(char::is_whitespace) {
        format!("expected a bucket name, got {v:?} (bucket names have no spaces)")
    } else {
        return Ok(v.to_string());
    };
    Err(Error::parameter(field, problem))
}

fn prefix(field: &str, value: String) -> Result<String> {
    if value.starts_with('/') {
        return Err(Error::parameter(
            field,
            format!(
                "S3 keys do not start with '/': write {:?}",
                value.trim_start_matches('/')
            ),
        ));
    }
    Ok(value)
}

fn non_empty(field: &str, value: Option<String>) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Err(Error::parameter(
            field,
            "expected a non-empty string; leave it out for the default",
        )),
        Some(v) => Ok(Some(v.trim().to_string())),
    }
}

/// Checks an endpoint is an `http(s)://host[:port][/path]` URL without credentials.
fn endpoint_url(value: &str) -> Result<String> {
    const FIELD: &str = "destinationEndpoint";
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &v[8..]
    } else if lower.starts_with("http://") {
        &v[7..]
    } else {
        return Err(Error::parameter(
            FIELD,
            format!(
                "expected an http:// or https:// URL such as \"https://s3.onprem.example:9000\", got {v:?}"
            ),
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(Error::parameter(
            FIELD,
            "the URL must not carry credentials: put them in a Secrets Manager secret named by \
             destinationCredentialsSecret",
        ));
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(Error::parameter(
            FIELD,
            format!("expected a URL with a host, got {v:?}"),
        ));
    }
    if v.chars().any(char::is_whitespace) || rest.contains(['?', '#']) {
        return Err(Error::parameter(
            FIELD,
            format!("expected a plain URL without spaces, query or fragment, got {v:?}"),
        ));
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// Reads the destination credentials from a Secrets Manager secret, with the function's own
/// credentials. Nothing of the secret's value reaches a log or an error.
pub async fn destination_credentials(
    secrets: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<Credentials> {
    let action = format!("GetSecretValue {secret_id:?} (destinationCredentialsSecret)");
    let out = secrets
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception())
            {
                Error::NotFound {
                    backend: "secretsmanager",
                    message: format!("{action}: no such secret"),
                }
            } else {
                aws_error("secretsmanager", &action, e)
            }
        })?;
    let text = out.secret_string().ok_or_else(|| {
        Error::Configuration(format!(
            "destinationCredentialsSecret {secret_id:?}: the secret has no SecretString (binary \
             secrets are not supported); store {EXPECTED_SECRET}"
        ))
    })?;
    parse_credentials(secret_id, text)
}

const EXPECTED_SECRET: &str = "a JSON object {\"accessKeyId\": \"...\", \"secretAccessKey\": \"...\"} (optionally \"sessionToken\")";

/// Parses a secret's `{"accessKeyId", "secretAccessKey", "sessionToken"?}`. Errors never quote it.
pub fn parse_credentials(secret_id: &str, text: &str) -> Result<Credentials> {
    let fail = |what: &str| {
        Error::Configuration(format!(
            "destinationCredentialsSecret {secret_id:?}: {what}; the SecretString must be {EXPECTED_SECRET}"
        ))
    };
    let value: Value = serde_json::from_str(text).map_err(|_| fail("the secret is not JSON"))?;
    let Value::Object(obj) = value else {
        return Err(fail("the secret is JSON but not an object"));
    };
    let field = |name: &str| -> Result<Option<String>> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(_) => Err(fail(&format!("{name} is not a non-empty string"))),
        }
    };
    let access_key = field("accessKeyId")?.ok_or_else(|| fail("accessKeyId is missing"))?;
    let secret_key = field("secretAccessKey")?.ok_or_else(|| fail("secretAccessKey is missing"))?;
    let session_token = field("sessionToken")?;
    Ok(Credentials::new(
        access_key,
        secret_key,
        session_token,
        None,
        "snapstage-destination-secret",
    ))
}

/// The destination client: the shared configuration with the endpoint, path style, region and
/// credentials of the target.
pub fn destination_client(
    config: &SdkConfig,
    target: &Target,
    credentials: Option<Credentials>,
) -> Result<Client> {
    let mut b = aws_sdk_s3::config::Builder::from(config).force_path_style(target.force_path_style);
    if let Some(endpoint) = &target.endpoint {
        // S3-compatible servers differ in their support of the newer flexible checksums;
        // Content-MD5 (always sent) is what every one of them verifies.
        b = b
            .endpoint_url(endpoint)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
    }
    match (&target.region, config.region(), &target.endpoint) {
        (Some(r), _, _) => b = b.region(Region::new(r.clone())),
        (None, Some(_), _) => {}
        // S3-compatible servers accept any region in the signature; us-east-1 is the convention.
        (None, None, Some(_)) => b = b.region(Region::new("us-east-1")),
        (None, None, None) => {
            return Err(Error::parameter(
                "destinationRegion",
                "no region is configured (AWS_REGION): set destinationRegion",
            ));
        }
    }
    if let Some(c) = credentials {
        b = b.credentials_provider(c);
    }
    Ok(Client::from_conf(b.build()))
}

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// Without quotes, lower case.
    pub etag: String,
}

/// An ETag without quotes or weak marker, lower case.
pub fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// A single-part upload's ETag (the MD5 of the content, for unencrypted and SSE-S3 objects);
/// multipart ETags end with `-<parts>`.
pub fn is_single_part(etag: &str) -> bool {
    !etag.is_empty() && !etag.contains('-')
}

/// Whether an object's ETag is the MD5 of its content: not with SSE-KMS or SSE-C.
fn etag_is_md5(sse: Option<&ServerSideEncryption>, sse_customer: Option<&str>) -> bool {
    sse_customer.is_none()
        && !matches!(
            sse,
            Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
        )
}

/// What the two listings say about one source object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingVerdict {
    /// Not at the destination.
    New,
    /// A different size at the destination.
    Changed,
    /// Same size and the same single-part ETag.
    Unchanged,
    /// Same size, ETags not comparable or different: the destination's metadata decides.
    NeedsHead,
}

pub fn compare_listing(source: &Listed, destination: Option<&Listed>) -> ListingVerdict {
    match destination {
        None => ListingVerdict::New,
        Some(d) if d.size != source.size => ListingVerdict::Changed,
        Some(d)
            if is_single_part(&source.etag) && is_single_part(&d.etag) && source.etag == d.etag =>
        {
            ListingVerdict::Unchanged
        }
        Some(_) => ListingVerdict::NeedsHead,
    }
}

/// What the destination's HeadObject says, when the listing could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadVerdict {
    Unchanged,
    /// Copy; when the destination carries a SHA-256, the copy is skipped if the source's matches.
    Copy {
        destination_sha256: Option<String>,
    },
}

pub fn compare_head(
    source: &Listed,
    destination_size: u64,
    metadata: &HashMap<String, String>,
) -> HeadVerdict {
    if destination_size != source.size {
        return HeadVerdict::Copy {
            destination_sha256: None,
        };
    }
    let meta = |k: &str| {
        metadata
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim())
    };
    if meta(SOURCE_ETAG_METADATA).is_some_and(|e| normalize_etag(e) == source.etag) {
        return HeadVerdict::Unchanged;
    }
    let destination_sha256 = meta(SHA256_METADATA)
        .filter(|s| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase);
    HeadVerdict::Copy { destination_sha256 }
}

/// The copy order of a key: `.bytes` (and anything else) first, then `.properties`, then a blob
/// store's `metadata.properties`, each group in key order. Nexus never sees a `.properties`
/// whose `.bytes` is missing.
pub fn copy_order(key: &str) -> (u8, &str) {
    let name = key.rsplit('/').next().unwrap_or(key);
    let rank = if name == "metadata.properties" {
        2
    } else if name.ends_with(".properties") {
        1
    } else {
        0
    };
    (rank, key)
}

/// The destination key of a source key.
pub fn destination_key(source_key: &str, source_prefix: &str, destination_prefix: &str) -> String {
    let rest = source_key.strip_prefix(source_prefix).unwrap_or(source_key);
    format!("{destination_prefix}{rest}")
}

/// An object to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub source: Listed,
    pub destination_key: String,
    pub destination_sha256: Option<String>,
}

/// What a step will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub source_objects: u64,
    /// In copy order.
    pub to_copy: Vec<Candidate>,
    pub unchanged: u64,
}

impl Plan {
    pub fn bytes_to_copy(&self) -> u64 {
        self.to_copy.iter().map(|c| c.source.size).sum()
    }

    /// Fails when an object is too large to buffer: before anything is copied, never skipped.
    pub fn check_sizes(&self, source_bucket: &str) -> Result<()> {
        let big: Vec<&Candidate> = self
            .to_copy
            .iter()
            .filter(|c| c.source.size > MAX_BUFFERED_BYTES)
            .collect();
        let Some(first) = big.first() else {
            return Ok(());
        };
        let more = match big.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        Err(Error::Refused(format!(
            "s3://{source_bucket}/{} is {} ({} bytes){more}: this version copies objects of up to \
             {} and multipart streaming is not yet supported; nothing was copied",
            first.source.key,
            human_bytes(first.source.size),
            first.source.size,
            human_bytes(MAX_BUFFERED_BYTES)
        )))
    }
}

async fn list(
    client: &Client,
    bucket: &str,
    prefix: &str,
    side: &str,
    endpoint: Option<&str>,
) -> Result<Vec<Listed>> {
    let at = endpoint.map(|e| format!(" at {e}")).unwrap_or_default();
    let action = format!("ListObjectsV2 on the {side} bucket {bucket:?}{at}");
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut out = Vec::new();
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
    }
    Ok(out)
}

/// Lists both sides and decides what to copy.
pub async fn plan(source: &Client, destination: &Client, target: &Target) -> Result<Plan> {
    let src = list(
        source,
        &target.source_bucket,
        &target.source_prefix,
        "source",
        None,
    )
    .await?;
    let dst: HashMap<String, Listed> = list(
        destination,
        &target.destination_bucket,
        &target.destination_prefix,
        "destination",
        target.endpoint.as_deref(),
    )
    .await?
    .into_iter()
    .map(|l| (l.key.clone(), l))
    .collect();
    let mut plan = Plan {
        source_objects: src.len() as u64,
        ..Plan::default()
    };
    for s in src {
        let key = destination_key(&s.key, &target.source_prefix, &target.destination_prefix);
        let destination_sha256 = match compare_listing(&s, dst.get(&key)) {
            ListingVerdict::Unchanged => {
                plan.unchanged += 1;
                continue;
            }
            ListingVerdict::New | ListingVerdict::Changed => None,
            ListingVerdict::NeedsHead => match head(destination, target, &key).await? {
                None => None,
                Some((size, metadata)) => match compare_head(&s, size, &metadata) {
                    HeadVerdict::Unchanged => {
                        plan.unchanged += 1;
                        continue;
                    }
                    HeadVerdict::Copy { destination_sha256 } => destination_sha256,
                },
            },
        };
        plan.to_copy.push(Candidate {
            source: s,
            destination_key: key,
            destination_sha256,
        });
    }
    plan.to_copy
        .sort_by(|a, b| copy_order(&a.source.key).cmp(&copy_order(&b.source.key)));
    Ok(plan)
}

/// The destination object's size and metadata; `None` when it is gone.
async fn head(
    destination: &Client,
    target: &Target,
    key: &str,
) -> Result<Option<(u64, HashMap<String, String>)>> {
    match destination
        .head_object()
        .bucket(&target.destination_bucket)
        .key(key)
        .send()
        .await
    {
        Ok(h) => Ok(Some((
            h.content_length()
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            h.metadata().cloned().unwrap_or_default(),
        ))),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
        Err(e) => Err(aws_error(
            "s3",
            &format!(
                "HeadObject s3://{}/{key}{}",
                target.destination_bucket,
                at(target)
            ),
            e,
        )),
    }
}

fn at(target: &Target) -> String {
    target
        .endpoint
        .as_deref()
        .map(|e| format!(" at {e}"))
        .unwrap_or_default()
}

/// What copying one candidate did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// Written and verified at the destination.
    Verified { bytes: u64 },
    /// The destination already held the same content (same SHA-256).
    Unchanged,
}

/// A source object read whole, with its digests.
struct Fetched {
    body: bytes::Bytes,
    etag: String,
    md5: Vec<u8>,
    sha256: String,
    metadata: HashMap<String, String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
}

/// Reads a source object. `Ok(Err(problem))` is a read that did not match what S3 announced;
/// worth one more try.
async fn fetch(
    source: &Client,
    bucket: &str,
    key: &str,
) -> Result<std::result::Result<Fetched, String>> {
    let out = source
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| aws_error("s3", &format!("GetObject s3://{bucket}/{key}"), e))?;
    let announced = out.content_length().and_then(|s| u64::try_from(s).ok());
    if let Some(n) = announced.filter(|n| *n > MAX_BUFFERED_BYTES) {
        return Err(Error::Refused(format!(
            "s3://{bucket}/{key} is now {} ({n} bytes): this version copies objects of up to {} \
             and multipart streaming is not yet supported",
            human_bytes(n),
            human_bytes(MAX_BUFFERED_BYTES)
        )));
    }
    let etag = normalize_etag(out.e_tag().unwrap_or_default());
    let md5_is_etag = etag_is_md5(out.server_side_encryption(), out.sse_customer_algorithm());
    let metadata = out.metadata().cloned().unwrap_or_default();
    let text = |v: Option<&str>| v.map(str::to_string);
    let content_type = text(out.content_type());
    let content_encoding = text(out.content_encoding());
    let content_disposition = text(out.content_disposition());
    let content_language = text(out.content_language());
    let cache_control = text(out.cache_control());
    let body = match out.body.collect().await {
        Ok(b) => b.into_bytes(),
        Err(e) => {
            return Ok(Err(format!(
                "reading the body failed: {}",
                DisplayChain(&e)
            )));
        }
    };
    if let Some(n) = announced.filter(|n| *n != body.len() as u64) {
        return Ok(Err(format!(
            "read {} bytes where GetObject announced {n}",
            body.len()
        )));
    }
    let md5 = md5::Md5::digest(&body).to_vec();
    if md5_is_etag && is_single_part(&etag) && hex::encode(&md5) != etag {
        return Ok(Err(format!(
            "the content's MD5 {} does not match its ETag {etag}",
            hex::encode(&md5)
        )));
    }
    let sha256 = hex::encode(sha2::Sha256::digest(&body));
    Ok(Ok(Fetched {
        body,
        etag,
        md5,
        sha256,
        metadata,
        content_type,
        content_encoding,
        content_disposition,
        content_language,
        cache_control,
    }))
}

/// Copies one object and verifies it at the destination.
pub async fn copy_object(
    source: &Client,
    destination: &Client,
    target: &Target,
    candidate: &Candidate,
) -> Result<Copied> {
    let key = &candidate.source.key;
    let bucket = &target.source_bucket;
    let mut fetched = None;
    for attempt in 1..=2 {
        match fetch(source, bucket, key).await? {
            Ok(f) => {
                fetched = Some(f);
                break;
            }
            Err(problem) if attempt == 1 => {
                tracing::warn!(key = %key, problem = %problem, "source read did not verify; reading it again");
            }
            Err(problem) => {
                return Err(Error::Backend {
                    backend: "s3",
                    message: format!(
                        "s3://{bucket}/{key}: {problem} (read twice); nothing was written for it"
                    ),
                });
            }
        }
    }
    let Some(f) = fetched else {
        return Err(Error::Internal(format!("s3://{bucket}/{key}: no read")));
    };
    if candidate.destination_sha256.as_deref() == Some(f.sha256.as_str()) {
        tracing::info!(key = %key, "destination already holds the same content (SHA-256)");
        return Ok(Copied::Unchanged);
    }

    let len = f.body.len() as u64;
    let md5_hex = hex::encode(&f.md5);
    let mut metadata: HashMap<String, String> = f
        .metadata
        .into_iter()
        .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("snapstage-"))
        .collect();
    metadata.insert(SHA256_METADATA.into(), f.sha256.clone());
    if !f.etag.is_empty() {
        metadata.insert(SOURCE_ETAG_METADATA.into(), f.etag.clone());
    }
    let dest_key = &candidate.destination_key;
    let where_ = format!(
        "s3://{}/{dest_key}{}",
        target.destination_bucket,
        at(target)
    );
    let put = destination
        .put_object()
        .bucket(&target.destination_bucket)
        .key(dest_key)
        .content_length(i64::try_from(len).unwrap_or(i64::MAX))
        .content_md5(base64::engine::general_purpose::STANDARD.encode(&f.md5))
        .set_metadata(Some(metadata))
        .set_content_type(f.content_type)
        .set_content_encoding(f.content_encoding)
        .set_content_disposition(f.content_disposition)
        .set_content_language(f.content_language)
        .set_cache_control(f.cache_control)
        .body(ByteStream::from(f.body))
        .send()
        .await
        .map_err(|e| aws_error("s3", &format!("PutObject {where_}"), e))?;

    // The server checked Content-MD5; check what it now holds.
    let h = destination
        .head_object()
        .bucket(&target.destination_bucket)
        .key(dest_key)
        .send()
        .await
        .map_err(|e| aws_error("s3", &format!("HeadObject {where_}"), e))?;
    let expected_etag = if etag_is_md5(put.server_side_encryption(), put.sse_customer_algorithm()) {
        md5_hex.clone()
    } else {
        // An encrypting destination's ETag is not the MD5: the one PutObject answered must stay.
        normalize_etag(put.e_tag().unwrap_or_default())
    };
    let got_etag = normalize_etag(h.e_tag().unwrap_or_default());
    let got_len = h.content_length().and_then(|s| u64::try_from(s).ok());
    if got_etag != expected_etag || got_len != Some(len) {
        return Err(Error::Backend {
            backend: "s3",
            message: format!(
                "{where_}: not verified after PutObject: the destination holds ETag {got_etag:?} \
                 and {} bytes, expected ETag {expected_etag:?} (MD5 {md5_hex}) and {len} bytes",
                got_len.map_or("an unknown number of".to_string(), |n| n.to_string())
            ),
        });
    }
    tracing::info!(key = %key, destination = %dest_key, bytes = len, "copied and verified");
    Ok(Copied::Verified { bytes: len })
}

/// Counters carried from one step to the next (objects already copied are skipped on re-listing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub copied: u64,
    pub bytes: u64,
    pub verified: u64,
}

/// One step of `replicate-artifacts-back`.
pub async fn step(
    source: &Client,
    secrets: &aws_sdk_secretsmanager::Client,
    config: &SdkConfig,
    step: Step<Params>,
) -> Result<Outcome> {
    let target = step.params.validate()?;
    let before: Progress = match step.state {
        None | Some(Value::Null) => Progress::default(),
        Some(v) => serde_json::from_value(v)
            .map_err(|e| Error::Internal(format!("continuation state: {e}")))?,
    };
    let credentials = match &target.credentials_secret {
        Some(id) => Some(destination_credentials(secrets, id).await?),
        None => None,
    };
    let destination = destination_client(config, &target, credentials)?;
    let plan = plan(source, &destination, &target).await?;
    tracing::info!(
        source_objects = plan.source_objects,
        to_copy = plan.to_copy.len(),
        unchanged = plan.unchanged,
        dry_run = target.dry_run,
        "planned"
    );
    plan.check_sizes(&target.source_bucket)?;
    let to_copy = plan.to_copy.len() as u64;
    let bytes_to_copy = plan.bytes_to_copy();

    if target.dry_run {
        let summary = format!(
            "Dry run: would copy {to_copy} of {} objects ({}) from {} to {}; {} unchanged; \
             nothing was copied.",
            plan.source_objects,
            human_bytes(bytes_to_copy),
            source_location(&target),
            destination_location(&target),
            plan.unchanged
        );
        let report = Report {
            progress: Progress::default(),
            skipped: plan.unchanged,
            to_copy,
            bytes_to_copy,
        };
        return Ok(Outcome::Done {
            summary,
            outputs: report.outputs(&target),
        });
    }

    let mut now = Progress::default();
    let mut unchanged = plan.unchanged;
    for (i, candidate) in plan.to_copy.iter().enumerate() {
        // Between objects, and only once this step has copied something: every step progresses.
        if now.copied > 0 && step.deadline.near(DEADLINE_MARGIN) {
            let total = before.add(now);
            let percent = (total.copied * 100 / (before.copied + to_copy).max(1)).min(99) as u8;
            let summary = format!(
                "Copied {} objects ({}) so far to {}; {} left in this pass; continuing.",
                total.copied,
                human_bytes(total.bytes),
                destination_location(&target),
                plan.to_copy.len() - i
            );
            return Ok(Outcome::Continue {
                summary,
                percent,
                state: serde_json::to_value(total)
                    .map_err(|e| Error::Internal(format!("continuation state: {e}")))?,
            });
        }
        match copy_object(source, &destination, &target, candidate).await? {
            Copied::Verified { bytes } => {
                now.copied += 1;
                now.verified += 1;
                now.bytes += bytes;
            }
            Copied::Unchanged => unchanged += 1,
        }
    }

    let total = before.add(now);
    // Objects an earlier step copied were listed as unchanged by this one.
    let skipped = unchanged.saturating_sub(before.copied);
    let summary = if total.copied == 0 {
        format!(
            "Nothing to copy: the {} objects of {} are unchanged at {}.",
            plan.source_objects,
            source_location(&target),
            destination_location(&target)
        )
    } else {
        format!(
            "Copied {} objects ({}) from {} to {}, {} verified; {skipped} unchanged objects skipped.",
            total.copied,
            human_bytes(total.bytes),
            source_location(&target),
            destination_location(&target),
            total.verified
        )
    };
    let report = Report {
        progress: total,
        skipped,
        to_copy: before.copied + to_copy,
        bytes_to_copy: before.bytes + bytes_to_copy,
    };
    Ok(Outcome::Done {
        summary,
        outputs: report.outputs(&target),
    })
}

impl Progress {
    fn add(self, other: Progress) -> Progress {
        Progress {
            copied: self.copied + other.copied,
            bytes: self.bytes + other.bytes,
            verified: self.verified + other.verified,
        }
    }
}

struct Report {
    progress: Progress,
    skipped: u64,
    to_copy: u64,
    bytes_to_copy: u64,
}

impl Report {
    fn outputs(&self, target: &Target) -> BTreeMap<String, String> {
        [
            ("ObjectsCopied", self.progress.copied.to_string()),
            ("ObjectsSkipped", self.skipped.to_string()),
            ("ObjectsVerified", self.progress.verified.to_string()),
            ("BytesCopied", self.progress.bytes.to_string()),
            ("ObjectsToCopy", self.to_copy.to_string()),
            ("BytesToCopy", self.bytes_to_copy.to_string()),
            ("DestinationBucket", target.destination_bucket.clone()),
            ("DryRun", target.dry_run.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

fn source_location(t: &Target) -> String {
    format!("s3://{}/{}", t.source_bucket, t.source_prefix)
}

fn destination_location(t: &Target) -> String {
    format!(
        "s3://{}/{}{}",
        t.destination_bucket,
        t.destination_prefix,
        at(t)
    )
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureKind;
    use serde_json::json;

    fn params(v: Value) -> Result<Target> {
        crate::params::merge::<Params>(&[crate::params::Layer {
            source: "request",
            values: v.as_object().unwrap().clone(),
        }])?
        .validate()
    }

    fn listed(key: &str, size: u64, etag: &str) -> Listed {
        Listed {
            key: key.into(),
            size,
            etag: normalize_etag(etag),
        }
    }

    #[test]
    fn defaults_follow_the_source_and_the_endpoint() {
        let t = params(
            json!({"sourceBucket": "shop-artifacts", "sourcePrefix": "nexus/blobs/",
            "destinationBucket": "onprem-nexus", "destinationEndpoint": "http://127.0.0.1:5101/"}),
        )
        .unwrap();
        assert_eq!(t.destination_prefix, "nexus/blobs/");
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:5101"));
        assert!(t.force_path_style);
        assert!(!t.dry_run);

        let t = params(json!({"sourceBucket": "a", "destinationBucket": "b",
            "destinationPrefix": "copy/", "forcePathStyle": false, "dryRun": true}))
        .unwrap();
        assert_eq!(t.source_prefix, "");
        assert_eq!(t.destination_prefix, "copy/");
        assert_eq!(t.endpoint, None);
        assert!(!t.force_path_style);
        assert!(t.dry_run);
    }

    #[test]
    fn invalid_parameters_name_the_field() {
        let field = |v: Value| match params(v).unwrap_err() {
            Error::Parameter { field, message } => (field, message),
            other => panic!("{other:?}"),
        };
        let (f, m) = field(json!({"sourceBucket": "", "destinationBucket": "b"}));
        assert_eq!(f, "sourceBucket");
        assert!(m.contains("empty"), "{m}");
        let (f, m) = field(json!({"sourceBucket": "s3://a/x", "destinationBucket": "b"}));
        assert_eq!(f, "sourceBucket");
        assert!(m.contains("URL"), "{m}");
        let (f, _) = field(json!({"sourceBucket": "a", "destinationBucket": "b/blobs"}));
        assert_eq!(f, "destinationBucket");
        for bad in [
            "ftp://host",
            "127.0.0.1:5101",
            "http://",
            "http://:9000",
            "https://h/x?y",
        ] {
            let (f, m) = field(
                json!({"sourceBucket": "a", "destinationBucket": "b", "destinationEndpoint": bad}),
            );
            assert_eq!(f, "destinationEndpoint", "{bad}");
            assert!(m.contains(bad) || m.contains("URL"), "{m}");
        }
        let (f, m) = field(json!({"sourceBucket": "a", "destinationBucket": "b",
            "destinationEndpoint": "https://AKIA:secret@minio:9000"}));
        assert_eq!(f, "destinationEndpoint");
        assert!(!m.contains("secret@"), "{m}");
        let (f, _) = field(json!({"sourceBucket": "a", "destinationBucket": "a"}));
        assert_eq!(f, "destinationPrefix");
        let (f, _) = field(json!({"sourceBucket": "a", "sourcePrefix": "/nexus",
            "destinationBucket": "b"}));
        assert_eq!(f, "sourcePrefix");
        let (f, _) =
            field(json!({"sourceBucket": "a", "destinationBucket": "b", "destinationRegion": " "}));
        assert_eq!(f, "destinationRegion");
        let (f, m) = field(json!({"sourceBucket": "a", "destinationBucket": "b", "bucket": "c"}));
        assert_eq!(f, "request.bucket");
        assert!(m.contains("unknown field"), "{m}");
        let (f, _) = field(json!({"destinationBucket": "b"}));
        assert_eq!(f, "parameters.sourceBucket");
        // The same bucket is fine on another endpoint, or under disjoint prefixes.
        assert!(
            params(json!({"sourceBucket": "a", "destinationBucket": "a",
            "destinationEndpoint": "https://minio:9000"}))
            .is_ok()
        );
        assert!(
            params(json!({"sourceBucket": "a", "sourcePrefix": "x/",
            "destinationBucket": "a", "destinationPrefix": "y/"}))
            .is_ok()
        );
    }

    #[test]
    fn nexus_blob_stores_are_copied_bytes_first_metadata_last() {
        let mut keys = vec![
            "metadata.properties",
            "content/vol-01/chap-02/b.properties",
            "content/vol-01/chap-02/b.bytes",
            "content/vol-01/chap-01/a.properties",
            "content/vol-01/chap-01/a.bytes",
            "content/directpath/x.bytes",
            "other/readme.txt",
        ];
        keys.sort_by(|a, b| copy_order(a).cmp(&copy_order(b)));
        assert_eq!(
            keys,
            [
                "content/directpath/x.bytes",
                "content/vol-01/chap-01/a.bytes",
                "content/vol-01/chap-02/b.bytes",
                "other/readme.txt",
                "content/vol-01/chap-01/a.properties",
                "content/vol-01/chap-02/b.properties",
                "metadata.properties",
            ]
        );
        let pos = |k: &str| keys.iter().position(|x| *x == k).unwrap();
        for stem in ["content/vol-01/chap-01/a", "content/vol-01/chap-02/b"] {
            assert!(pos(&format!("{stem}.bytes")) < pos(&format!("{stem}.properties")));
        }
        // A nested "metadata.properties" of a blob store under a prefix is last too.
        assert_eq!(copy_order("nexus/blobs/metadata.properties").0, 2);
    }

    #[test]
    fn listings_compare_by_size_and_single_part_etags() {
        let s = listed("k", 10, "\"0cc175b9c0f1b6a831c399e269772661\"");
        assert_eq!(compare_listing(&s, None), ListingVerdict::New);
        assert_eq!(
            compare_listing(
                &s,
                Some(&listed("k", 11, "\"0cc175b9c0f1b6a831c399e269772661\""))
            ),
            ListingVerdict::Changed
        );
        assert_eq!(
            compare_listing(
                &s,
                Some(&listed("k", 10, "\"0CC175B9C0F1B6A831C399E269772661\""))
            ),
            ListingVerdict::Unchanged
        );
        // Same size, different content.
        assert_eq!(
            compare_listing(
                &s,
                Some(&listed("k", 10, "\"92eb5ffee6ae2fec3ad71c777531578f\""))
            ),
            ListingVerdict::NeedsHead
        );
        // A multipart source is never compared by ETag, even with an equal string.
        let mp = listed("k", 10, "\"d41d8cd98f00b204e9800998ecf8427e-2\"");
        assert_eq!(
            compare_listing(
                &mp,
                Some(&listed("k", 10, "\"d41d8cd98f00b204e9800998ecf8427e-2\""))
            ),
            ListingVerdict::NeedsHead
        );
        assert!(!is_single_part(""));
    }

    #[test]
    fn destination_metadata_decides_what_listings_cannot() {
        let mp = listed("k", 10, "\"d41d8cd98f00b204e9800998ecf8427e-2\"");
        let meta = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            compare_head(
                &mp,
                10,
                &meta(&[(SOURCE_ETAG_METADATA, "d41d8cd98f00b204e9800998ecf8427e-2")])
            ),
            HeadVerdict::Unchanged
        );
        let sha = "a".repeat(64);
        assert_eq!(
            compare_head(
                &mp,
                10,
                &meta(&[
                    (SOURCE_ETAG_METADATA, "ffff-2"),
                    ("Snapstage-Sha256", &sha.to_uppercase())
                ])
            ),
            HeadVerdict::Copy {
                destination_sha256: Some(sha.clone())
            }
        );
        assert_eq!(
            compare_head(&mp, 10, &meta(&[(SHA256_METADATA, "not-a-digest")])),
            HeadVerdict::Copy {
                destination_sha256: None
            }
        );
        // A size that changed since the listing always copies.
        assert_eq!(
            compare_head(
                &mp,
                11,
                &meta(&[(SOURCE_ETAG_METADATA, "d41d8cd98f00b204e9800998ecf8427e-2")])
            ),
            HeadVerdict::Copy {
                destination_sha256: None
            }
        );
    }

    #[test]
    fn keys_map_from_the_source_prefix_to_the_destination_prefix() {
        assert_eq!(
            destination_key("nexus/blobs/content/a.bytes", "nexus/blobs/", "backup/"),
            "backup/content/a.bytes"
        );
        assert_eq!(destination_key("a.bytes", "", "x/"), "x/a.bytes");
        assert_eq!(destination_key("nexus/a", "nexus/", "nexus/"), "nexus/a");
    }

    #[test]
    fn too_large_objects_fail_the_step_before_any_copy() {
        let c = |key: &str, size| Candidate {
            source: listed(key, size, "e"),
            destination_key: key.into(),
            destination_sha256: None,
        };
        let plan = Plan {
            source_objects: 3,
            to_copy: vec![
                c("small.bytes", 10),
                c("big.bytes", MAX_BUFFERED_BYTES + 1),
                c("huge.bytes", 10 * MAX_BUFFERED_BYTES),
            ],
            unchanged: 0,
        };
        let e = plan.check_sizes("shop").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("s3://shop/big.bytes"), "{m}");
        assert!(
            m.contains("multipart streaming is not yet supported"),
            "{m}"
        );
        assert!(m.contains("and 1 more"), "{m}");
        assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
        let ok = Plan {
            to_copy: vec![c("max.bytes", MAX_BUFFERED_BYTES)],
            ..Plan::default()
        };
        assert!(ok.check_sizes("shop").is_ok());
    }

    #[test]
    fn secrets_parse_without_quoting_their_value() {
        let c = parse_credentials(
            "onprem/s3",
            r#"{"accessKeyId": "AKIAONPREM", "secretAccessKey": "s3cr3t-value", "other": 1}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AKIAONPREM");
        assert_eq!(c.secret_access_key(), "s3cr3t-value");
        assert_eq!(c.session_token(), None);
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        for bad in [
            r#"s3cr3t-value"#,
            r#"["s3cr3t-value"]"#,
            r#"{"accessKeyId": "AKIAONPREM"}"#,
            r#"{"accessKeyId": "", "secretAccessKey": "s3cr3t-value"}"#,
            r#"{"access_key": "AKIAONPREM", "secretAccessKey": "s3cr3t-value"}"#,
            r#"{"accessKeyId": "AKIAONPREM", "secretAccessKey": 42}"#,
        ] {
            let e = parse_credentials("onprem/s3", bad).unwrap_err();
            let m = e.to_string();
            assert_eq!(e.failure_kind(), FailureKind::ConfigurationError, "{m}");
            assert!(m.contains("\"onprem/s3\""), "{m}");
            assert!(
                !m.contains("s3cr3t-value") && !m.contains("AKIAONPREM"),
                "{m}"
            );
        }
    }

    #[test]
    fn etags_normalize_and_encryption_makes_them_opaque() {
        assert_eq!(normalize_etag("W/\"ABC\""), "abc");
        assert!(etag_is_md5(None, None));
        assert!(etag_is_md5(Some(&ServerSideEncryption::Aes256), None));
        assert!(!etag_is_md5(Some(&ServerSideEncryption::AwsKms), None));
        assert!(!etag_is_md5(None, Some("AES256")));
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(MAX_BUFFERED_BYTES), "64.0 MiB");
    }
}
