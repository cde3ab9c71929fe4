//! Copying objects, verified, concurrently and in Nexus-safe order — from any [`Source`] to any
//! [`Sink`]; what is S3-specific or file-specific is in the sink.
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | many objects ([`run`]): waves, concurrency, the deadline; one object ([`copy_object`]): retries, whole reads |
//! | `stream.rs` | an object larger than one part: ranged reads into the sink's parts, continuing a step's upload |
//! | `hash.rs` | MD5 and SHA-256 of what is read (off the runtime thread when large), the check against the source ETag |
//! | `tests.rs` | the copier over the in-memory source and sink (`memory.rs`) |
//!
//! One object (`copy_object`):
//! - to a sink that [streams](Sink::streams) (S3), an object of at most `uploadCutoffMiB` whose
//!   source ETag is its MD5 goes as one write whose body is its GET as it arrives: nothing held,
//!   no MD5 computed (the source's is the `Content-MD5`, and the ETag the destination answers
//!   must be it), the SHA-256 taken on the way ([`Sink::put_streamed`]). A failure the SDK could
//!   not retry (the body was the source's) is [`Problem::Transient`]: tried again after a pause;
//! - other objects of at most one part (`partSizeMiB`) with a single-part source ETag are read whole
//!   and written with one [`Sink::put`], then [`Sink::verify`];
//! - larger ones stream: ranged GETs read the parts in order while earlier parts are written
//!   ([`Upload::part`](crate::replicate::sink::Upload::part)). A multipart source whose part size
//!   fits is copied with the same parts, so the destination's ETag equals the source's
//!   (`md5-of-part-md5s-N`);
//! - memory is bounded by a byte semaphore of `concurrency × partSize`: a part's buffer is taken
//!   before its GET and given back when it is written, whatever the object sizes;
//! - every read is conditional on the listed ETag (`If-Match`): a source that changes mid-copy is
//!   read again, never mixed. A listing without ETags (s3s-fs, some S3-compatible stores): an
//!   object read whole takes the ETag its GET answers with; a larger one is HEADed first;
//! - before anything counts: the content's MD5 (or part MD5s) against the source ETag, then the
//!   sink's own check of what it wrote (S3: each part's ETag and a HeadObject of the result; a
//!   file: read back). A mismatch is retried once, then fails the run naming the key.
//!
//! Many objects (`run`): up to `concurrency` at once, in three waves — `.bytes` and other files,
//! then `.properties`, then `metadata.properties` — each wave starting only when the one before
//! it is verified, so a `.properties` never lands before its `.bytes`. After a failure nothing
//! new starts. Near the deadline nothing new starts (once the step made progress); an upload a
//! sink can resume stops between parts and its id stays in the checkpoint for the next step.

mod hash;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::compare::{
    Layout, Listed, choose_layout, is_single_part, layout_matches, multipart_parts, rank,
};
use super::journal::{Entry, Journal};
use super::object::{Attempt, Problem, SourceInfo};
use super::sink::{Object, Sink};
use super::source::{Body as _, Source};
use crate::error::{Error, Result};
use crate::job::contract::Deadline;
use hash::{check_source, hash_whole};

/// Tries of a write the SDK could not retry itself (a streamed body) that failed transiently.
const TRANSIENT_TRIES: u32 = 4;
/// The first pause before such a try again; ×4 each time (0.25 s, 1 s, 4 s).
const TRANSIENT_PAUSE: Duration = Duration::from_millis(250);

/// Time kept back, between objects and parts, to checkpoint and answer before the deadline.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// Everything a copy worker needs.
#[derive(Debug)]
pub struct Ctx<R, W> {
    pub source: R,
    pub sink: W,
    pub part_size: u64,
    /// Largest object copied with one streamed write (0: none).
    pub upload_cutoff: u64,
    pub concurrency: usize,
    /// Bytes of part buffers that may exist at once.
    pub memory: Arc<Semaphore>,
    pub journal: Arc<Journal>,
    pub deadline: Deadline,
}

/// The semaphore of a memory budget of `concurrency × part_size` bytes.
pub fn memory_budget(concurrency: usize, part_size: u64) -> Arc<Semaphore> {
    let bytes = (concurrency as u64).saturating_mul(part_size);
    Arc::new(Semaphore::new(
        usize::try_from(bytes)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS),
    ))
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

/// Reads part `n` of `layout` (the whole object when it is one part, with its headers),
/// conditional on the ETag.
async fn read_part<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    src: &Listed,
    layout: Layout,
    n: u64,
) -> Attempt<(Bytes, Option<SourceInfo>)> {
    let (start, end) = layout.range(n);
    let whole = layout.parts() == 1;
    let out = ctx
        .source
        .get(
            &src.key,
            (!src.etag.is_empty()).then_some(src.etag.as_str()),
            (!whole).then_some((start, end)),
            whole,
        )
        .await?;
    // Without a listed ETag (a whole object read unconditionally) the answer names the version;
    // one whose size is not the listed one was rewritten since: listed again (HEAD) and re-read.
    let changed = if src.etag.is_empty() {
        out.content_length.is_some_and(|n| n != end - start)
    } else {
        out.etag != src.etag
    };
    if changed {
        return Err(Problem::SourceChanged);
    }
    let body = out
        .body
        .bytes()
        .await
        .map_err(|e| Problem::Retry(format!("reading part {n} failed: {e}")))?;
    if body.len() as u64 != end - start {
        return Err(Problem::Retry(format!(
            "part {n}: read {} bytes, expected {}",
            body.len(),
            end - start
        )));
    }
    Ok((body, out.info))
}

/// The layout to copy with, whether it is the source's own parts, and the source's headers
/// (HeadObject, and of part 1 when the source is multipart).
async fn prepare<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    src: &Listed,
) -> Attempt<Option<(Layout, bool, SourceInfo)>> {
    let Some(h) = ctx.source.head(&src.key, Some(&src.etag), None).await? else {
        return Ok(None);
    };
    let mut source_part = None;
    if multipart_parts(&src.etag).is_some()
        // No If-Match here: moto compares it with the part's ETag; the GETs carry it.
        && let Some(p1) = ctx.source.head(&src.key, None, Some(1)).await?
        && layout_matches(src.size, &src.etag, p1.size)
    {
        source_part = Some(p1.size);
    }
    let layout = choose_layout(src.size, source_part, ctx.part_size);
    let mirrored = source_part.is_some_and(|p| p == layout.part_size);
    Ok(Some((layout, mirrored, h.info)))
}

/// Copies one object and verifies it at the destination; retried once on a failed check.
pub async fn copy_object<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    candidate: &Candidate,
) -> Result<Copied> {
    let mut src = candidate.source.clone();
    tracing::debug!(key = %src.key, bytes = src.size, "copying");
    // A listing without ETags (s3s-fs and some other S3-compatible servers) names no version to
    // read. An object read whole takes the version its GET answers with; a larger one is read
    // in ranges, each conditional on one version, so HEAD names it first.
    if src.etag.is_empty() && !whole_read(ctx, &src) && !refresh(ctx, &mut src).await? {
        return Ok(Copied::Gone);
    }
    let (mut attempt, mut transient) = (1, 0u32);
    loop {
        let problem = match attempt_copy(ctx, candidate, &src).await {
            Ok(c) => return Ok(c),
            Err(Problem::Fatal(e)) => return Err(e),
            Err(Problem::Transient(e)) => {
                transient += 1;
                if transient >= TRANSIENT_TRIES {
                    return Err(e);
                }
                let pause = TRANSIENT_PAUSE * 4u32.pow(transient - 1);
                tracing::warn!(key = %src.key, error = %e, pause_ms = pause.as_millis() as u64, "write failed; trying again");
                tokio::time::sleep(pause).await;
                continue;
            }
            Err(p) => p,
        };
        let why = match &problem {
            Problem::Retry(why) => why.clone(),
            Problem::SourceChanged => "the source object changed during the copy".to_string(),
            Problem::Fatal(_) | Problem::Transient(_) => String::new(),
        };
        if attempt == 2 {
            return Err(Error::Backend {
                backend: "s3",
                message: format!(
                    "{} → {}: {why} (tried twice); it was not counted as copied",
                    ctx.source.describe(&src.key),
                    ctx.sink.describe_key(&candidate.destination_key),
                ),
                source: None,
            });
        }
        attempt += 1;
        tracing::warn!(key = %src.key, problem = %why, "copy not verified; trying again");
        if let Problem::SourceChanged = problem
            && !refresh(ctx, &mut src).await?
        {
            return Ok(Copied::Gone);
        }
    }
}

/// Reads the source object's current ETag and size (HEAD) into `src`; `false` when it is gone.
/// A HEAD that fails for a reason worth retrying leaves `src` as it was.
pub async fn refresh<R: Source, W: Sink>(ctx: &Ctx<R, W>, src: &mut Listed) -> Result<bool> {
    match ctx.source.head(&src.key, None, None).await {
        Ok(Some(h)) => {
            src.etag = h.info.etag;
            src.size = h.size;
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(Problem::Fatal(e)) => Err(e),
        Err(_) => Ok(true),
    }
}

/// Whether `src` is copied with one GET and one write: at most one part, and not a multipart
/// upload at the source (whose parts are mirrored). Without an ETag nothing says it is multipart.
fn whole_read<R, W>(ctx: &Ctx<R, W>, src: &Listed) -> bool {
    src.size <= ctx.part_size && (src.etag.is_empty() || is_single_part(&src.etag))
}

async fn attempt_copy<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    candidate: &Candidate,
    src: &Listed,
) -> Attempt<Copied> {
    if streams(ctx, candidate, src)
        && let Some(copied) = streamed_single(ctx, candidate, src).await?
    {
        return Ok(copied);
    }
    if whole_read(ctx, src) {
        return single(ctx, candidate, src).await;
    }
    let Some((layout, mirrored, info)) = prepare(ctx, src).await? else {
        return Ok(Copied::Gone);
    };
    stream::streamed(ctx, candidate, src, layout, mirrored, info).await
}

/// Whether `src` may go as one write streamed from its GET: the sink streams, the object is at
/// most the upload cutoff, its source ETag (listed, or answered by the GET when the listing has
/// none) can be its MD5, and no recorded SHA-256 asks to compare the content before writing.
fn streams<R, W: Sink>(ctx: &Ctx<R, W>, candidate: &Candidate, src: &Listed) -> bool {
    ctx.sink.streams()
        && src.size <= ctx.upload_cutoff
        && candidate.destination_sha256.is_none()
        && (src.etag.is_empty() || is_single_part(&src.etag))
}

/// One GET streamed into one write, nothing held: the source's ETag is its MD5, sent as
/// `Content-MD5`, and the sink checks what the destination answers against it; the SHA-256 is
/// taken on the way. `None`: the GET says the ETag is not an MD5 (an encrypted source, a
/// multipart one the listing did not show): copied the other ways.
async fn streamed_single<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    candidate: &Candidate,
    src: &Listed,
) -> Attempt<Option<Copied>> {
    let out = ctx
        .source
        .get(
            &src.key,
            (!src.etag.is_empty()).then_some(src.etag.as_str()),
            None,
            true,
        )
        .await?;
    if (!src.etag.is_empty() && out.etag != src.etag)
        || out.content_length.is_some_and(|n| n != src.size)
    {
        return Err(Problem::SourceChanged);
    }
    let info = out.info.unwrap_or_default();
    let Some(md5) = md5_of_etag(&out.etag).filter(|_| info.etag_is_md5) else {
        return Ok(None);
    };
    // Read without a listed ETag: what is read is the version the GET answered with.
    let read = Listed {
        etag: out.etag.clone(),
        ..src.clone()
    };
    let object = Object {
        key: &candidate.destination_key,
        source: &read,
        info: &info,
    };
    let (written, sha256) = ctx.sink.put_streamed(object, out.body, md5).await?;
    ctx.sink.verify(object, written).await?;
    record(ctx, candidate, &read, &sha256).await.map(Some)
}

/// The MD5 a single-part ETag names (32 hex digits).
fn md5_of_etag(etag: &str) -> Option<[u8; 16]> {
    let mut md5 = [0u8; 16];
    hex::decode_to_slice(etag, &mut md5).ok()?;
    Some(md5)
}

/// One object of at most one part: one GET, one write.
async fn single<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    candidate: &Candidate,
    src: &Listed,
) -> Attempt<Copied> {
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
    check_source(src, &info, false, &hex::encode(md5), "")?;
    if candidate.destination_sha256.as_deref() == Some(sha256.as_str()) {
        tracing::info!(key = %src.key, "destination already holds the same content (SHA-256)");
        return Ok(Copied::Unchanged);
    }
    let object = Object {
        key: &candidate.destination_key,
        source: src,
        info: &info,
    };
    let written = ctx.sink.put(object, body, md5, &sha256).await?;
    drop(permit);
    ctx.sink.verify(object, written).await?;
    record(ctx, candidate, src, &sha256).await
}

async fn record<R, W>(
    ctx: &Ctx<R, W>,
    candidate: &Candidate,
    src: &Listed,
    sha256: &str,
) -> Attempt<Copied> {
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

async fn acquire<R, W>(ctx: &Ctx<R, W>, bytes: u64) -> Attempt<tokio::sync::OwnedSemaphorePermit> {
    let n = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
    Arc::clone(&ctx.memory)
        .acquire_many_owned(n)
        .await
        .map_err(|_| Problem::Fatal(Error::Internal("memory budget closed".into())))
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
pub async fn run<R: Source, W: Sink>(ctx: Arc<Ctx<R, W>>, candidates: &[Candidate]) -> RunReport {
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
