//! Copying objects, verified, concurrently and in Nexus-safe order.
//!
//! One object (`copy_object`):
//! - objects of at most one part (`partSizeMiB`) with a single-part source ETag are read whole
//!   and written with one PutObject (`Content-MD5`, `snapstage-sha256`);
//! - larger ones stream: ranged GETs read the parts in order while earlier parts upload
//!   (UploadPart with `Content-MD5`). A multipart source whose part size fits is copied with the
//!   same parts, so the destination's ETag equals the source's (`md5-of-part-md5s-N`);
//! - the body is sent as `UNSIGNED-PAYLOAD`: the signed `Content-MD5` header binds it (the server
//!   refuses a body that does not match, even over plain HTTP), then the ETag is read back.
//!   Signing it as well would hash every byte once more with SHA-256 (SigV4): on a CPU without
//!   SHA-NI that doubled the copier's CPU time in `make bench`;
//! - memory is bounded by a byte semaphore of `concurrency × partSize`: a part's buffer is taken
//!   before its GET and given back when its upload ends, whatever the object sizes;
//! - every read is conditional on the listed ETag (`If-Match`): a source that changes mid-copy is
//!   read again, never mixed. A listing without ETags (s3s-fs, some S3-compatible stores): an
//!   object read whole takes the ETag its GET answers with; a larger one is HEADed first;
//! - before anything counts: the content's MD5 (or part MD5s) against the source ETag, each
//!   part's ETag as the destination answered it, and a HeadObject of the result (size, ETag,
//!   `snapstage-source-etag`). A mismatch is retried once, then fails the run naming the key.
//!
//! Many objects (`run`): up to `concurrency` at once, in three waves — `.bytes` and other files,
//! then `.properties`, then `metadata.properties` — each wave starting only when the one before
//! it is verified, so a `.properties` never lands before its `.bytes`. After a failure nothing
//! new starts. Near the deadline nothing new starts (once the step made progress); a multipart
//! upload stops between parts and its upload id stays in the checkpoint for the next step.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use md5::Digest as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::compare::{
    DestinationHead, Layout, Listed, choose_layout, etag_is_md5, is_single_part, layout_matches,
    meta, multipart_etag, multipart_parts, normalize_etag, rank,
};
use super::journal::{Entry, Journal, Upload};
use super::local::{self, Index, Indexed, PartialFile};
use super::params::S3Destination;
use super::{SHA256_METADATA, SOURCE_ETAG_METADATA};
use crate::error::{DisplayChain, Error, Result, aws_error};
use crate::job::contract::Deadline;

/// Time kept back, between objects and parts, to checkpoint and answer before the deadline.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// Where objects are written.
#[derive(Debug)]
pub enum Sink {
    S3 {
        client: Client,
        destination: S3Destination,
    },
    Directory {
        root: PathBuf,
        index: Arc<Index>,
    },
}

impl Sink {
    pub fn describe_key(&self, key: &str) -> String {
        match self {
            Sink::S3 { destination: d, .. } => format!(
                "s3://{}/{key}{}",
                d.bucket,
                d.endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
            Sink::Directory { root, .. } => root.join(key).display().to_string(),
        }
    }
}

/// Everything a copy worker needs.
#[derive(Debug)]
pub struct Ctx {
    pub source: Client,
    pub source_bucket: String,
    pub sink: Sink,
    pub part_size: u64,
    pub concurrency: usize,
    /// Bytes of part buffers that may exist at once.
    pub memory: Arc<Semaphore>,
    pub journal: Arc<Journal>,
    pub deadline: Deadline,
}

impl Ctx {
    pub fn memory_budget(concurrency: usize, part_size: u64) -> Arc<Semaphore> {
        let bytes = (concurrency as u64).saturating_mul(part_size);
        Arc::new(Semaphore::new(
            usize::try_from(bytes)
                .unwrap_or(Semaphore::MAX_PERMITS)
                .min(Semaphore::MAX_PERMITS),
        ))
    }
}

/// An object to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub source: Listed,
    pub destination_key: String,
    /// The destination's recorded SHA-256: the write is skipped when the source's is the same.
    pub destination_sha256: Option<String>,
}

/// What copying one candidate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// Written and verified at the destination (and recorded in the journal).
    Verified { bytes: u64 },
    /// The destination already held the same content (same SHA-256).
    Unchanged,
    /// The source object was deleted since the listing.
    Gone,
    /// The deadline came between two parts; the upload continues in the next step.
    Interrupted,
}

/// Why an attempt failed.
enum Problem {
    /// A check failed: worth one more try.
    Retry(String),
    /// The source changed since it was listed (`If-Match` failed).
    SourceChanged,
    Fatal(Error),
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        Problem::Fatal(e)
    }
}

type Attempt<T> = std::result::Result<T, Problem>;

/// Headers of the source object carried to the copy.
#[derive(Debug, Clone, Default)]
struct SourceInfo {
    metadata: HashMap<String, String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    /// False for SSE-KMS / SSE-C sources: the ETag says nothing about the content.
    etag_is_md5: bool,
    /// The ETag of the version read (normalized).
    etag: String,
}

impl SourceInfo {
    /// The destination's metadata: the source's, without our own keys, plus ours.
    fn destination_metadata(
        &self,
        source_etag: &str,
        sha256: Option<&str>,
    ) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = self
            .metadata
            .iter()
            .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("snapstage-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(s) = sha256 {
            m.insert(SHA256_METADATA.into(), s.to_string());
        }
        if !source_etag.is_empty() {
            m.insert(SOURCE_ETAG_METADATA.into(), source_etag.to_string());
        }
        m
    }
}

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

fn is_precondition_failed<E: ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "PreconditionFailed")
        || matches!(e, aws_sdk_s3::error::SdkError::ServiceError(se)
            if se.raw().status().as_u16() == 412)
}

/// Reads the source's headers with HeadObject (optionally of part 1). `None`: the object is gone.
async fn head_source(
    ctx: &Ctx,
    key: &str,
    if_match: Option<&str>,
    part: Option<i32>,
) -> Attempt<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>> {
    let mut req = ctx
        .source
        .head_object()
        .bucket(&ctx.source_bucket)
        .key(key)
        .set_part_number(part);
    if let Some(e) = if_match {
        req = req.if_match(quoted(e));
    }
    match req.send().await {
        Ok(h) => Ok(Some(h)),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
        Err(e) if is_precondition_failed(&e) => Err(Problem::SourceChanged),
        Err(e) => Err(Problem::Fatal(aws_error(
            "s3",
            &format!("HeadObject s3://{}/{key}", ctx.source_bucket),
            e,
        ))),
    }
}

/// Reads part `n` of `layout` (the whole object when it is one part), conditional on the ETag.
async fn read_part(
    ctx: &Ctx,
    src: &Listed,
    layout: Layout,
    n: u64,
) -> Attempt<(bytes::Bytes, Option<SourceInfo>)> {
    let (start, end) = layout.range(n);
    let mut req = ctx
        .source
        .get_object()
        .bucket(&ctx.source_bucket)
        .key(&src.key);
    if !src.etag.is_empty() {
        req = req.if_match(quoted(&src.etag));
    }
    if layout.parts() > 1 {
        req = req.range(format!("bytes={start}-{}", end.saturating_sub(1)));
    }
    let out = match req.send().await {
        Ok(o) => o,
        Err(e) if is_precondition_failed(&e) => return Err(Problem::SourceChanged),
        Err(e) => {
            return Err(Problem::Fatal(aws_error(
                "s3",
                &format!("GetObject s3://{}/{}", ctx.source_bucket, src.key),
                e,
            )));
        }
    };
    let info = (layout.parts() == 1).then(|| SourceInfo {
        metadata: out.metadata().cloned().unwrap_or_default(),
        content_type: out.content_type().map(str::to_string),
        content_encoding: out.content_encoding().map(str::to_string),
        content_disposition: out.content_disposition().map(str::to_string),
        content_language: out.content_language().map(str::to_string),
        cache_control: out.cache_control().map(str::to_string),
        etag_is_md5: etag_is_md5(out.server_side_encryption(), out.sse_customer_algorithm()),
        etag: normalize_etag(out.e_tag().unwrap_or_default()),
    });
    // Without a listed ETag (a whole object read unconditionally) the answer names the version;
    // one whose size is not the listed one was rewritten since: listed again (HEAD) and re-read.
    let changed = if src.etag.is_empty() {
        out.content_length()
            .and_then(|n| u64::try_from(n).ok())
            .is_some_and(|n| n != end - start)
    } else {
        normalize_etag(out.e_tag().unwrap_or_default()) != src.etag
    };
    if changed {
        return Err(Problem::SourceChanged);
    }
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| Problem::Retry(format!("reading part {n} failed: {}", DisplayChain(&e))))?
        .into_bytes();
    if body.len() as u64 != end - start {
        return Err(Problem::Retry(format!(
            "part {n}: read {} bytes, expected {}",
            body.len(),
            end - start
        )));
    }
    Ok((body, info))
}

/// The layout to copy with and the source's headers (HeadObject, and of part 1 when the source
/// is multipart).
async fn prepare(ctx: &Ctx, src: &Listed) -> Attempt<Option<(Layout, bool, SourceInfo)>> {
    let Some(h) = head_source(ctx, &src.key, Some(&src.etag), None).await? else {
        return Ok(None);
    };
    let info = SourceInfo {
        metadata: h.metadata().cloned().unwrap_or_default(),
        content_type: h.content_type().map(str::to_string),
        content_encoding: h.content_encoding().map(str::to_string),
        content_disposition: h.content_disposition().map(str::to_string),
        content_language: h.content_language().map(str::to_string),
        cache_control: h.cache_control().map(str::to_string),
        etag_is_md5: etag_is_md5(h.server_side_encryption(), h.sse_customer_algorithm()),
        etag: normalize_etag(h.e_tag().unwrap_or_default()),
    };
    let mut source_part = None;
    if multipart_parts(&src.etag).is_some()
        // No If-Match here: moto compares it with the part's ETag; the GETs carry it.
        && let Some(p1) = head_source(ctx, &src.key, None, Some(1)).await?
    {
        let size = p1
            .content_length()
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
        if layout_matches(src.size, &src.etag, size) {
            source_part = Some(size);
        }
    }
    let layout = choose_layout(src.size, source_part, ctx.part_size);
    let mirrored = source_part.is_some_and(|p| p == layout.part_size);
    Ok(Some((layout, mirrored, info)))
}

/// Copies one object and verifies it at the destination; retried once on a failed check.
pub async fn copy_object(ctx: &Ctx, candidate: &Candidate) -> Result<Copied> {
    let mut src = candidate.source.clone();
    let where_ = ctx.sink.describe_key(&candidate.destination_key);
    tracing::debug!(key = %src.key, bytes = src.size, "copying");
    // A listing without ETags (s3s-fs and some other S3-compatible servers) names no version to
    // read. An object read whole takes the version its GET answers with; a larger one is read
    // in ranges, each conditional on one version, so HEAD names it first.
    if src.etag.is_empty() && !whole_read(ctx, &src) && !refresh(ctx, &mut src).await? {
        return Ok(Copied::Gone);
    }
    for attempt in 1..=2 {
        let problem = match attempt_copy(ctx, candidate, &src).await {
            Ok(c) => return Ok(c),
            Err(Problem::Fatal(e)) => return Err(e),
            Err(p) => p,
        };
        let why = match &problem {
            Problem::Retry(why) => why.clone(),
            Problem::SourceChanged => "the source object changed during the copy".to_string(),
            Problem::Fatal(_) => String::new(),
        };
        if attempt == 2 {
            return Err(Error::Backend {
                backend: "s3",
                message: format!(
                    "s3://{}/{} → {where_}: {why} (tried twice); it was not counted as copied",
                    ctx.source_bucket, src.key
                ),
            });
        }
        tracing::warn!(key = %src.key, problem = %why, "copy not verified; trying again");
        if let Problem::SourceChanged = problem
            && !refresh(ctx, &mut src).await?
        {
            return Ok(Copied::Gone);
        }
    }
    Err(Error::Internal(format!("{where_}: no attempt")))
}

/// Reads the source object's current ETag and size (HEAD) into `src`; `false` when it is gone.
/// A HEAD that fails for a reason worth retrying leaves `src` as it was.
pub async fn refresh(ctx: &Ctx, src: &mut Listed) -> Result<bool> {
    match head_source(ctx, &src.key, None, None).await {
        Ok(Some(h)) => {
            src.etag = normalize_etag(h.e_tag().unwrap_or_default());
            src.size = h
                .content_length()
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0);
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(Problem::Fatal(e)) => Err(e),
        Err(_) => Ok(true),
    }
}

/// Whether `src` is copied with one GET and one write: at most one part, and not a multipart
/// upload at the source (whose parts are mirrored). Without an ETag nothing says it is multipart.
fn whole_read(ctx: &Ctx, src: &Listed) -> bool {
    src.size <= ctx.part_size && (src.etag.is_empty() || is_single_part(&src.etag))
}

async fn attempt_copy(ctx: &Ctx, candidate: &Candidate, src: &Listed) -> Attempt<Copied> {
    if whole_read(ctx, src) {
        return single(ctx, candidate, src).await;
    }
    let Some((layout, mirrored, info)) = prepare(ctx, src).await? else {
        return Ok(Copied::Gone);
    };
    match &ctx.sink {
        Sink::S3 {
            client,
            destination,
        } => {
            multipart(
                ctx,
                client,
                destination,
                candidate,
                src,
                layout,
                mirrored,
                info,
            )
            .await
        }
        Sink::Directory { root, index } => {
            to_file(ctx, root, index, candidate, src, layout, mirrored, info).await
        }
    }
}

/// Bodies at least this large are hashed off the runtime thread.
const OFF_THREAD_MIN: usize = 256 * 1024;

/// Runs `f` (hashing) on the blocking pool when `len` is large. The runtime has one thread
/// (`entry.rs`: cold start), and MD5 + SHA-256 of a 16 MiB part take ~80 ms of CPU: inline they
/// stall every other transfer and keep the hashing of concurrent objects on one core.
async fn off_thread<T: Send + 'static>(
    len: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Attempt<T> {
    if len < OFF_THREAD_MIN {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::Fatal(Error::Internal(format!("hashing task: {e}"))))
}

/// MD5 and SHA-256 of a whole body, off the runtime thread when it is large.
async fn hash_whole(body: &bytes::Bytes) -> Attempt<([u8; 16], String)> {
    let b = body.clone();
    off_thread(b.len(), move || {
        (md5::Md5::digest(&b).into(), crate::digest::sha256_hex(&b))
    })
    .await
}

/// The running hashes of an object read in parts: SHA-256, and the whole MD5 only when the
/// source's ETag is a plain MD5 to compare it with (a multipart source is checked by its part
/// MD5s; a second MD5 pass over every byte would cost about 2 s of CPU per GiB for nothing).
struct Running {
    whole: Option<md5::Md5>,
    sha: crate::digest::Sha256,
}

impl Running {
    fn for_source(src: &Listed) -> Self {
        Running {
            whole: is_single_part(&src.etag).then(md5::Md5::new),
            sha: crate::digest::Sha256::new(),
        }
    }

    /// Adds the next part, off the runtime thread when it is large; returns the part's MD5.
    async fn add(self, data: &bytes::Bytes) -> Attempt<(Self, [u8; 16])> {
        let d = data.clone();
        off_thread(d.len(), move || {
            let mut r = self;
            if let Some(w) = r.whole.as_mut() {
                w.update(&d);
            }
            r.sha.update(&d);
            (r, md5::Md5::digest(&d).into())
        })
        .await
    }

    /// The whole MD5 (empty when not computed: `check_source` does not use it then) and the
    /// SHA-256, hex.
    fn finish(self) -> (String, String) {
        let whole = self
            .whole
            .map(|h| hex::encode(h.finalize()))
            .unwrap_or_default();
        (whole, self.sha.finish_hex())
    }
}

/// Verifies streamed content against the source ETag: a single-part ETag is the MD5 of the
/// content; a multipart one, with the same parts, the MD5 of the part MD5s.
fn check_source(
    src: &Listed,
    info: &SourceInfo,
    mirrored: bool,
    whole_md5: &str,
    parts_etag: &str,
) -> Attempt<()> {
    if !info.etag_is_md5 {
        return Ok(());
    }
    if is_single_part(&src.etag) && whole_md5 != src.etag {
        return Err(Problem::Retry(format!(
            "the content read has MD5 {whole_md5}, the source ETag is {}",
            src.etag
        )));
    }
    if mirrored && parts_etag != src.etag {
        return Err(Problem::Retry(format!(
            "the parts read hash to {parts_etag}, the source ETag is {}",
            src.etag
        )));
    }
    Ok(())
}

/// One object of at most one part: one GET, one write.
async fn single(ctx: &Ctx, candidate: &Candidate, src: &Listed) -> Attempt<Copied> {
    let layout = Layout {
        size: src.size,
        part_size: src.size.max(1),
    };
    let permit = acquire(ctx, src.size).await?;
    let (body, info) = read_part(ctx, src, layout, 1).await?;
    let info = info.unwrap_or_default();
    // Read without a listed ETag: what was read is the version the GET answered with.
    let adopted;
    let src = if src.etag.is_empty() {
        adopted = Listed {
            etag: info.etag.clone(),
            ..src.clone()
        };
        &adopted
    } else {
        src
    };
    let (md5, sha256) = hash_whole(&body).await?;
    let md5_hex = hex::encode(md5);
    check_source(src, &info, false, &md5_hex, "")?;
    if candidate.destination_sha256.as_deref() == Some(sha256.as_str()) {
        tracing::info!(key = %src.key, "destination already holds the same content (SHA-256)");
        return Ok(Copied::Unchanged);
    }
    let key = &candidate.destination_key;
    let where_ = ctx.sink.describe_key(key);
    match &ctx.sink {
        Sink::S3 {
            client,
            destination,
        } => {
            let put = client
                .put_object()
                .bucket(&destination.bucket)
                .key(key)
                .content_length(i64::try_from(src.size).unwrap_or(i64::MAX))
                .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
                .set_metadata(Some(info.destination_metadata(&src.etag, Some(&sha256))))
                .set_content_type(info.content_type.clone())
                .set_content_encoding(info.content_encoding.clone())
                .set_content_disposition(info.content_disposition.clone())
                .set_content_language(info.content_language.clone())
                .set_cache_control(info.cache_control.clone())
                .body(ByteStream::from(body))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| aws_error("s3", &format!("PutObject {where_}"), e))?;
            drop(permit);
            let expected =
                if etag_is_md5(put.server_side_encryption(), put.sse_customer_algorithm()) {
                    md5_hex.clone()
                } else {
                    // An encrypting destination's ETag is not the MD5: the one PutObject answered must stay.
                    normalize_etag(put.e_tag().unwrap_or_default())
                };
            verify_s3(client, destination, key, src, &expected, &where_).await?;
        }
        Sink::Directory { root, index } => {
            let path = local::path_of(root, key)
                .ok_or_else(|| Error::Internal(format!("{key:?} has no local path")))?;
            let mut f = PartialFile::create(path).await?;
            f.write(&body).await?;
            drop(body);
            drop(permit);
            let (size, mtime_ns) = f.commit(src.size, &sha256).await?.map_err(Problem::Retry)?;
            index.record(
                key,
                Indexed {
                    size,
                    mtime_ns,
                    etag: src.etag.clone(),
                },
            );
        }
    }
    record(ctx, candidate, src, &sha256).await
}

async fn record(ctx: &Ctx, candidate: &Candidate, src: &Listed, sha256: &str) -> Attempt<Copied> {
    tracing::info!(key = %src.key, destination = %candidate.destination_key, bytes = src.size, "copied and verified");
    ctx.journal
        .copied(Entry {
            key: candidate.destination_key.clone(),
            size: src.size,
            checksum: format!("sha256:{sha256}"),
            action: "copied".into(),
        })
        .await?;
    Ok(Copied::Verified { bytes: src.size })
}

async fn acquire(ctx: &Ctx, bytes: u64) -> Attempt<tokio::sync::OwnedSemaphorePermit> {
    let n = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
    Arc::clone(&ctx.memory)
        .acquire_many_owned(n)
        .await
        .map_err(|_| Problem::Fatal(Error::Internal("memory budget closed".into())))
}

/// HeadObject of what was written: size, ETag, and the source ETag recorded in the metadata.
async fn verify_s3(
    client: &Client,
    destination: &S3Destination,
    key: &str,
    src: &Listed,
    expected_etag: &str,
    where_: &str,
) -> Attempt<()> {
    let h = client
        .head_object()
        .bucket(&destination.bucket)
        .key(key)
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

/// A part being uploaded, with its buffer's permit.
type PartTask = JoinSet<Attempt<u64>>;

/// Streams a large object into a multipart upload (continuing the journal's upload if any).
#[allow(clippy::too_many_arguments)]
async fn multipart(
    ctx: &Ctx,
    client: &Client,
    destination: &S3Destination,
    candidate: &Candidate,
    src: &Listed,
    layout: Layout,
    mirrored: bool,
    info: SourceInfo,
) -> Attempt<Copied> {
    let key = &candidate.destination_key;
    let where_ = ctx.sink.describe_key(key);
    let bucket = &destination.bucket;

    // Continue our own upload of the same source version and parts, if a step left one.
    let mut uploaded: HashMap<u64, (String, u64)> = HashMap::new();
    let mut upload_id = None;
    if let Some(u) = ctx.journal.upload(key) {
        if u.source_etag == src.etag && u.part_size == layout.part_size {
            match list_parts(client, bucket, key, &u.upload_id).await {
                Ok(parts) => {
                    uploaded = parts;
                    upload_id = Some(u.upload_id);
                }
                Err(e) => {
                    tracing::info!(key = %key, error = %e, "the earlier upload is gone; starting a new one")
                }
            }
        } else {
            abort(client, bucket, key, &u.upload_id).await;
            ctx.journal.forget_upload(key);
        }
    }
    let upload_id = match upload_id {
        Some(id) => {
            tracing::info!(key = %key, parts_already_there = uploaded.len(), "continuing a multipart upload");
            id
        }
        None => {
            let out = client
                .create_multipart_upload()
                .bucket(bucket)
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
                }
                .into());
            }
            ctx.journal
                .started_upload(
                    key,
                    Upload {
                        upload_id: id.clone(),
                        part_size: layout.part_size,
                        source_etag: src.etag.clone(),
                    },
                )
                .await?;
            id
        }
    };

    let result = stream_parts(ctx, client, bucket, key, &upload_id, src, layout, &uploaded).await;
    let (md5s, whole_md5, sha256) = match result {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(Copied::Interrupted),
        Err(p) => {
            if !matches!(p, Problem::Fatal(_)) {
                // A failed check: the next attempt starts a clean upload.
                abort(client, bucket, key, &upload_id).await;
                ctx.journal.forget_upload(key);
            }
            return Err(p);
        }
    };
    let parts_etag = multipart_etag(&md5s);
    if let Err(p) = check_source(src, &info, mirrored, &whole_md5, &parts_etag) {
        abort(client, bucket, key, &upload_id).await;
        ctx.journal.forget_upload(key);
        return Err(p);
    }

    let parts: Vec<CompletedPart> = md5s
        .iter()
        .enumerate()
        .map(|(i, m)| {
            CompletedPart::builder()
                .part_number(i32::try_from(i + 1).unwrap_or(i32::MAX))
                .e_tag(quoted(&hex::encode(m)))
                .build()
        })
        .collect();
    let completed = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
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
        Ok(_) => parts_etag.clone(),
        // A reply with an S3 error code is an answer: the upload did not complete.
        Err(e) if e.as_service_error().and_then(|s| s.code()).is_some() => {
            let err = aws_error("s3", &format!("CompleteMultipartUpload {where_}"), e);
            abort(client, bucket, key, &upload_id).await;
            ctx.journal.forget_upload(key);
            return Err(Problem::Retry(err.to_string()));
        }
        // Some S3-compatible servers answer a completed upload with a body the SDK cannot parse
        // (moto 5.2 names the root element `CompleteMultipartUploadResponse` instead of
        // `CompleteMultipartUploadResult`); a lost connection leaves the outcome unknown too.
        // Neither is trusted nor fatal: the HeadObject below decides, as it does for every
        // write — the object must be there with our size, our md5-of-part-md5s ETag and the
        // source ETag in its metadata, or the copy is retried.
        Err(e) => {
            tracing::info!(key = %key, reply = %DisplayChain(&e), "CompleteMultipartUpload reply unreadable; checking the object itself");
            parts_etag.clone()
        }
    };
    verify_s3(client, destination, key, src, &expected, &where_).await?;
    record(ctx, candidate, src, &sha256).await
}

/// Reads the parts in order and uploads them as they come. `Ok(None)`: interrupted by the
/// deadline (uploaded parts stay for the next step). Returns the part MD5s, the whole content's
/// MD5 and SHA-256.
#[allow(clippy::too_many_arguments)]
async fn stream_parts(
    ctx: &Ctx,
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    src: &Listed,
    layout: Layout,
    uploaded: &HashMap<u64, (String, u64)>,
) -> Attempt<Option<(Vec<[u8; 16]>, String, String)>> {
    let mut tasks: PartTask = JoinSet::new();
    let mut md5s = Vec::new();
    let mut running = Running::for_source(src);
    let mut progressed = false;
    for n in 1..=layout.parts() {
        if n > 1
            && ctx.deadline.near(DEADLINE_MARGIN)
            && (progressed || ctx.journal.step_done() > 0)
        {
            join_parts(&mut tasks).await?;
            tracing::info!(key = %key, part = n, parts = layout.parts(), "deadline near: the upload continues in the next step");
            return Ok(None);
        }
        let (start, end) = layout.range(n);
        let permit = acquire(ctx, end - start).await?;
        let (data, _) = read_part(ctx, src, layout, n).await?;
        let (r, md5) = running.add(&data).await?;
        running = r;
        md5s.push(md5);
        let md5_hex = hex::encode(md5);
        if uploaded.get(&n) == Some(&(md5_hex.clone(), end - start)) {
            continue;
        }
        progressed = true;
        let req = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(i32::try_from(n).unwrap_or(i32::MAX))
            .content_length(i64::try_from(end - start).unwrap_or(i64::MAX))
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .body(ByteStream::from(data))
            .customize()
            .disable_payload_signing();
        let what = format!("UploadPart {n} of s3://{bucket}/{key}");
        tasks.spawn(async move {
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
        while let Some(done) = tasks.try_join_next() {
            joined(done)?;
        }
    }
    join_parts(&mut tasks).await?;
    let (whole_md5, sha256) = running.finish();
    Ok(Some((md5s, whole_md5, sha256)))
}

fn joined(r: std::result::Result<Attempt<u64>, tokio::task::JoinError>) -> Attempt<u64> {
    r.map_err(|e| Problem::Fatal(Error::Internal(format!("part upload task: {e}"))))?
}

async fn join_parts(tasks: &mut PartTask) -> Attempt<()> {
    let mut first = None;
    while let Some(done) = tasks.join_next().await {
        if let Err(p) = joined(done) {
            first.get_or_insert(p);
        }
    }
    first.map_or(Ok(()), Err)
}

async fn list_parts(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<HashMap<u64, (String, u64)>> {
    let mut out = HashMap::new();
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
    keys: &std::collections::HashSet<String>,
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

/// Streams a large object into a local file: parts read in order, written under the partial
/// name, checked, renamed.
#[allow(clippy::too_many_arguments)]
async fn to_file(
    ctx: &Ctx,
    root: &std::path::Path,
    index: &Index,
    candidate: &Candidate,
    src: &Listed,
    layout: Layout,
    mirrored: bool,
    info: SourceInfo,
) -> Attempt<Copied> {
    let key = &candidate.destination_key;
    let path = local::path_of(root, key)
        .ok_or_else(|| Error::Internal(format!("{key:?} has no local path")))?;
    let mut f = PartialFile::create(path).await?;
    let mut md5s = Vec::new();
    let mut running = Running::for_source(src);
    for n in 1..=layout.parts() {
        let (start, end) = layout.range(n);
        let permit = acquire(ctx, end - start).await?;
        let data = match read_part(ctx, src, layout, n).await {
            Ok((d, _)) => d,
            Err(p) => {
                f.discard().await;
                return Err(p);
            }
        };
        let (r, md5) = running.add(&data).await?;
        running = r;
        md5s.push(md5);
        f.write(&data).await?;
        drop(permit);
    }
    let (whole_md5, sha256) = running.finish();
    if let Err(p) = check_source(src, &info, mirrored, &whole_md5, &multipart_etag(&md5s)) {
        f.discard().await;
        return Err(p);
    }
    let (size, mtime_ns) = f.commit(src.size, &sha256).await?.map_err(Problem::Retry)?;
    index.record(
        key,
        Indexed {
            size,
            mtime_ns,
            etag: src.etag.clone(),
        },
    );
    record(ctx, candidate, src, &sha256).await
}

/// What a run of copies did in this step.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Objects found identical by SHA-256 (not written).
    pub unchanged: Vec<Candidate>,
    pub gone: Vec<String>,
    /// Stopped by the deadline: a next step continues.
    pub interrupted: bool,
    /// Failed objects (source key, error); nothing new started after the first.
    pub failures: Vec<(String, Error)>,
    /// Candidates not started.
    pub not_started: usize,
}

/// Copies `candidates` (in copy order) in the three Nexus-safe waves, `concurrency` at a time.
pub async fn run(ctx: Arc<Ctx>, candidates: &[Candidate]) -> RunReport {
    let mut report = RunReport::default();
    let mut started = 0usize;
    for wave in 0..=2u8 {
        let items: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| rank(&c.source.key) == wave)
            .collect();
        let mut next = items.into_iter().peekable();
        let mut set: JoinSet<(Candidate, Result<Copied>)> = JoinSet::new();
        let mut stop = false;
        loop {
            while !stop && set.len() < ctx.concurrency && next.peek().is_some() {
                // Every step progresses: near the deadline, one object until one completes.
                if ctx.deadline.near(DEADLINE_MARGIN)
                    && (ctx.journal.step_done() > 0 || !set.is_empty())
                {
                    report.interrupted = true;
                    stop = true;
                    break;
                }
                let Some(c) = next.next() else { break };
                started += 1;
                let c = c.clone();
                let ctx = Arc::clone(&ctx);
                set.spawn(async move {
                    let r = copy_object(&ctx, &c).await;
                    (c, r)
                });
            }
            let Some(done) = set.join_next().await else {
                break;
            };
            match done {
                Ok((_, Ok(Copied::Verified { .. }))) => {}
                Ok((c, Ok(Copied::Unchanged))) => report.unchanged.push(c),
                Ok((c, Ok(Copied::Gone))) => {
                    tracing::warn!(key = %c.source.key, "deleted at the source during the run; not copied");
                    report.gone.push(c.source.key);
                }
                Ok((_, Ok(Copied::Interrupted))) => {
                    report.interrupted = true;
                    stop = true;
                }
                Ok((c, Err(e))) => {
                    tracing::warn!(key = %c.source.key, error = %e, "copy failed");
                    report.failures.push((c.source.key, e));
                    stop = true;
                }
                Err(join) => {
                    report.failures.push((
                        String::from("(a copy task)"),
                        Error::Internal(format!("copy task: {join}")),
                    ));
                    stop = true;
                }
            }
        }
        if stop {
            break;
        }
    }
    report.not_started = candidates.len() - started;
    if !report.failures.is_empty() {
        report.interrupted = false;
    }
    report
}
