//! Objects larger than one part: read in ranges, in order, hashed as they come, written in parts
//! while the next ones are read — continuing the upload a step left when the sink can
//! ([`ResumableUploads`](crate::replicate::sink::ResumableUploads)).

use super::hash::{Running, check_source};
use super::{Candidate, Copied, Ctx, DEADLINE_MARGIN, acquire, read_part, record};
use crate::replicate::compare::{Layout, Listed, multipart_etag};
use crate::replicate::journal::Upload as Started;
use crate::replicate::object::{Attempt, SourceInfo};
use crate::replicate::sink::{Object, Parts, Sink, Upload};
use crate::replicate::source::Source;

/// Streams a large object into the sink in parts, checks it against the source, completes and
/// verifies it. `mirrored`: the layout is the source's own parts (the ETags must then agree).
pub(super) async fn streamed<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    candidate: &Candidate,
    src: &Listed,
    layout: Layout,
    mirrored: bool,
    info: SourceInfo,
) -> Attempt<Copied> {
    let key = candidate.destination_key.as_str();
    let object = Object {
        key,
        source: src,
        info: &info,
    };
    let resumable = ctx.sink.resumable();

    // Continue our own upload of the same source version and parts, if a step left one.
    let mut continued = None;
    if let (Some(r), Some(u)) = (resumable, ctx.journal.upload(key)) {
        if u.source_etag == src.etag && u.part_size == layout.part_size {
            match r.resume(key, &u.upload_id).await {
                Ok(found) => continued = Some(found),
                Err(e) => {
                    tracing::info!(key = %key, error = %e, "the earlier upload is gone; starting a new one")
                }
            }
        } else {
            r.abort(key, &u.upload_id).await;
            ctx.journal.forget_upload(key);
        }
    }
    let (mut upload, uploaded) = match continued {
        Some((upload, parts)) => {
            tracing::info!(key = %key, parts_already_there = parts.len(), "continuing a multipart upload");
            (upload, parts)
        }
        None => {
            let upload = ctx.sink.begin(object).await?;
            if let Some(id) = upload.id() {
                ctx.journal
                    .started_upload(
                        key,
                        Started {
                            upload_id: id.to_string(),
                            part_size: layout.part_size,
                            source_etag: src.etag.clone(),
                        },
                    )
                    .await?;
            }
            (upload, Parts::new())
        }
    };

    let interruptible = resumable.is_some();
    let (md5s, whole_md5, sha256) =
        match stream(ctx, &mut upload, src, layout, &uploaded, interruptible).await {
            Ok(Some(r)) => r,
            // The upload stays (its id is in the checkpoint) for the next step.
            Ok(None) => return Ok(Copied::Interrupted),
            Err(p) => {
                // A failed check: the next attempt starts a clean upload. A fatal error keeps a
                // resumable upload for a re-run.
                if !p.is_fatal() || !interruptible {
                    upload.abort().await;
                }
                if !p.is_fatal() {
                    ctx.journal.forget_upload(key);
                }
                return Err(p);
            }
        };
    if let Err(p) = check_source(src, &info, mirrored, &whole_md5, &multipart_etag(&md5s)) {
        upload.abort().await;
        ctx.journal.forget_upload(key);
        return Err(p);
    }
    if let Err(p) = upload.complete(object, &md5s, &sha256).await {
        if !p.is_fatal() {
            ctx.journal.forget_upload(key);
        }
        return Err(p);
    }
    record(ctx, candidate, src, &sha256).await
}

/// Reads the parts in order and writes them as they come. `Ok(None)`: interrupted by the
/// deadline (written parts stay for the next step). Returns the part MD5s, the whole content's
/// MD5 and SHA-256.
async fn stream<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    upload: &mut W::Upload,
    src: &Listed,
    layout: Layout,
    uploaded: &Parts,
    interruptible: bool,
) -> Attempt<Option<(Vec<[u8; 16]>, String, String)>> {
    let mut md5s = Vec::new();
    let mut running = Running::for_source(src);
    let mut progressed = false;
    for n in 1..=layout.parts() {
        if interruptible
            && n > 1
            && ctx.deadline.near(DEADLINE_MARGIN)
            && (progressed || ctx.journal.step_done() > 0)
        {
            upload.flush().await?;
            tracing::info!(key = %src.key, part = n, parts = layout.parts(), "deadline near: the upload continues in the next step");
            return Ok(None);
        }
        let (start, end) = layout.range(n);
        let permit = acquire(ctx, end - start).await?;
        let (data, _) = read_part(ctx, src, layout, n).await?;
        let (r, md5) = running.add(&data).await?;
        running = r;
        md5s.push(md5);
        if uploaded
            .get(&n)
            .is_some_and(|(etag, size)| *size == end - start && *etag == hex::encode(md5))
        {
            continue;
        }
        progressed = true;
        upload.part(n, data, md5, permit).await?;
    }
    upload.flush().await?;
    let (whole_md5, sha256) = running.finish();
    Ok(Some((md5s, whole_md5, sha256)))
}
