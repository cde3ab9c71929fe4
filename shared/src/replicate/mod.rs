//! Copying artifacts out of a cloud bucket, verified: to an on-premises S3-compatible endpoint
//! (MinIO, FlashBlade, ...), another bucket, or — pull mode, for the CLI on-prem — a local
//! directory. Typically a Sonatype Nexus blob store written in the cloud, copied back.
//!
//! One step ([`step`], in this file):
//! 1. open the run's journal ([`journal`]): the checkpoint of a continued or killed run;
//! 2. list the source and the destination (ListObjectsV2) and decide per object ([`plan`],
//!    [`compare`]) — by default a window of source keys at a time, from the checkpoint's cursor,
//!    merge-joined with the destination's pages ([`window`]); mirror, dry-run and shard modes
//!    list to the end at once: same size and the same ETag (single-part MD5, or multipart
//!    `md5-of-part-md5s-N` with the same parts) is unchanged; otherwise the destination's
//!    `snapstage-source-etag` metadata (the source ETag it was copied from) or `snapstage-sha256`
//!    decide; in a directory, the index or a hash of the file; anything else is copied;
//! 3. copy ([`copy`]): concurrently (`concurrency`), streaming large objects in parts
//!    (`partSizeMiB`, memory bounded by concurrency × part size), in Nexus-safe waves (`.bytes`,
//!    then `.properties`, then `metadata.properties`), each object verified before it counts;
//! 4. mirror mode only ([`mirror`]): delete at the destination what the complete source listing,
//!    and a HeadObject of each key, prove gone — refused above `maxDeleteFraction`;
//! 5. write the manifest (JSON lines: key, size, checksum, action) to the job's output artifact or
//!    the `manifest` location, and report the counters ([`report`]).
//!
//! Near the deadline a step checkpoints and returns `Continue`; the next step (or a re-run with
//! the same execution after a kill) lists from the checkpoint's cursor (the last source key whose
//! window is done), skips what is at the destination, and continues unfinished multipart uploads
//! from the checkpoint. Memory of a streamed run: objects per window × a few hundred bytes, one
//! listing page, and `concurrency × partSizeMiB`; the checkpoint stays a few KB (its manifest
//! lines are chunks beside it, assembled at the end).
//!
//! | module | what |
//! | --- | --- |
//! | [`params`] | `UserParameters`, their validation, the destination's client |
//! | [`source`] | the [`Source`] trait (list, a page of the listing, HEAD, conditional ranged GET) and [`S3Source`], the cloud bucket |
//! | [`sink`] | the [`Sink`] trait (one destination) with [`S3Sink`] and [`DirectorySink`]; [`ResumableUploads`] beside it |
//! | [`object`] | one object's vocabulary: [`Problem`] (retry, source changed, fatal), [`SourceInfo`] |
//! | [`compare`] | what listings and HeadObjects say, the Nexus-safe order, multipart ETag arithmetic |
//! | [`plan`] | each listed object decided: the [`Plan`]; both sides listed whole (mirror, dry run) |
//! | [`window`] | the streamed run: windows of source keys from the cursor, paged listings merge-joined, `metadata.properties` deferred to the end |
//! | [`copy`] | the copier: waves, concurrency, retries, streaming in parts, hashing, the deadline |
//! | [`mirror`] | mirror mode's proven deletions |
//! | [`journal`] | the checkpoint (v3): counters, cursor, open uploads, deferred keys, the window's manifest lines; the manifest chunks; the zip |
//! | [`local`] | pull mode's files: partial names, fsync, read back, rename; the index of ETags |
//! | [`report`] | the manifest's destination, output variables, summaries, the failure of a run |
//! | [`array`](mod@array) | array mode: a volume replicated by FlashArray / Cloud Block Store instead |
//! | [`rehydrate`] | array mode's `rehydrate`: the on-prem Nexus stopped around the copy, refused while anything writes, started and checked healthy |
//! | [`shard`] | shard mode: one batch of a Step Functions Distributed Map, its keys only |
//! | `memory` | tests: an in-memory source and sink, with faults to order |
//!
//! The step is generic over its source and sink, chosen once ([`step`] matches the destination):
//! the copier's hot path is statically dispatched.

pub mod array;
pub mod compare;
pub mod copy;
pub mod journal;
pub mod local;
#[cfg(test)]
pub(crate) mod memory;
pub mod mirror;
pub mod object;
pub mod params;
pub mod plan;
pub mod rehydrate;
pub mod report;
pub mod shard;
pub mod sink;
pub mod source;
pub mod window;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use compare::{
    DestinationHead, HeadVerdict, Layout, Listed, ListingVerdict, compare_head, compare_listing,
    copy_order, destination_key, is_single_part, multipart_etag, normalize_etag,
};
pub use copy::{Candidate, Copied, DEADLINE_MARGIN};
pub use journal::{Entry, Progress};
pub use object::{Attempt, Problem, SourceInfo};
pub use params::{
    CheckpointLocation, Destination, Params, S3Destination, S3Url, Target, destination_client,
    destination_credentials, parse_credentials,
};
pub use plan::Plan;
pub use report::human_bytes;
pub use sink::{DirectorySink, ResumableUploads, S3Sink, Sink, Upload};
pub use source::{S3Source, Source};

use crate::error::{Error, Result};
use crate::job::contract::{Deadline, JobArtifacts, Outcome, Step};
use copy::Ctx;
use journal::{Journal, Store};
use report::{
    Report, checksum_of_etag, destination_location, failure, human_bytes as human, skipped_entries,
    source_location, throughput, write_manifest,
};

/// Destination metadata: the hex SHA-256 of the content (single-PUT copies).
pub const SHA256_METADATA: &str = "snapstage-sha256";
/// Destination metadata: the source ETag the object was copied from.
pub const SOURCE_ETAG_METADATA: &str = "snapstage-source-etag";
/// The manifest's name inside the output artifact (a zip).
pub const MANIFEST_NAME: &str = "manifest.jsonl";

/// The continuation state: the journal holds the rest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// Where the checkpoint is (for people reading a token).
    checkpoint: String,
    progress: Progress,
}

/// One step of `replicate-artifacts-back`.
pub async fn step(
    source: &Client,
    secrets: &aws_sdk_secretsmanager::Client,
    config: &SdkConfig,
    step: Step<Params>,
) -> Result<Outcome> {
    if step.params.array.is_some() && step.params.items.is_some() {
        return Err(Error::parameter(
            "items",
            "shard mode copies objects; array mode replicates a volume: give one of them",
        ));
    }
    if let Some(a) = &step.params.array {
        return array::step(a, step.params.dry_run, config, &step).await;
    }
    let started = Instant::now();
    let mut params = step.params;
    let items = params.items.take();
    // In shard mode `manifest` is a prefix: each batch writes its own manifest under it.
    let shard_manifest = if items.is_some() {
        params.manifest.take()
    } else {
        None
    };
    let target = params.validate()?;
    let shard = items
        .map(|i| shard::Shard::new(&i, &target, shard_manifest.as_deref(), &step.execution.key))
        .transpose()?;
    let from_token: Option<State> = match step.state {
        None | Some(Value::Null) => None,
        // A token from an older version carries only counters: the destination is the truth.
        Some(v) => serde_json::from_value(v).ok(),
    };
    let run = Run {
        target: &target,
        artifacts: step.artifacts.as_ref(),
        config,
        started,
        execution: &step.execution.key,
        from_token,
        deadline: step.deadline,
        shard: shard.as_ref(),
    };
    let source = S3Source {
        client: source.clone(),
        bucket: target.source_bucket.clone(),
    };
    match &target.destination {
        Destination::S3(d) => {
            let credentials = match &d.credentials_secret {
                Some(id) => Some(destination_credentials(secrets, id).await?),
                None => None,
            };
            let sink = S3Sink::new(destination_client(config, d, credentials)?, d.clone());
            run.go(source, sink).await
        }
        Destination::Directory(root) => {
            let sink = DirectorySink::open(root, target.dry_run).await?;
            run.go(source, sink).await
        }
    }
}

/// What a step runs with, whatever its source and sink.
struct Run<'a> {
    target: &'a Target,
    artifacts: Option<&'a JobArtifacts>,
    config: &'a SdkConfig,
    started: Instant,
    execution: &'a str,
    from_token: Option<State>,
    deadline: Deadline,
    /// Shard mode: one Distributed Map batch.
    shard: Option<&'a shard::Shard>,
}

impl Run<'_> {
    /// Opens the journal, then plans, copies (and deletes), reports.
    async fn go<W: Sink>(self, source: S3Source, sink: W) -> Result<Outcome> {
        let Run {
            target,
            artifacts,
            config,
            started,
            execution,
            from_token,
            deadline,
            shard,
        } = self;
        let run_key = shard.map_or(execution, |s| s.run_key.as_str());
        let store = Store::new(&target.checkpoint, &source.client, run_key);
        let (journal, resumed) = Journal::open(store, run_key, &target.fingerprint()).await?;
        if resumed {
            tracing::info!(checkpoint = %journal.describe(), progress = ?journal.progress(), "resuming from the checkpoint");
        } else if let Some(s) = &from_token {
            tracing::warn!(checkpoint = %s.checkpoint, "the checkpoint of this run is gone; its counters restart (the destination still shows what is copied)");
        }
        let ctx = Arc::new(Ctx {
            source,
            sink,
            part_size: target.part_size,
            upload_cutoff: target.upload_cutoff,
            concurrency: target.concurrency,
            memory: copy::memory_budget(target.concurrency, target.part_size),
            journal: Arc::new(journal),
            deadline,
        });
        if shard.is_none() && !target.mirror && !target.dry_run {
            return streamed(&ctx, target, artifacts, config, started).await;
        }
        let (plan, mut missing) = match shard {
            Some(s) => s.plan(&ctx, target).await?,
            None => (plan::plan(&ctx, target).await?, Vec::new()),
        };
        tracing::info!(
            source_objects = plan.source_objects,
            to_copy = plan.to_copy.len(),
            unchanged = plan.unchanged.len(),
            to_delete = plan.to_delete.len(),
            dry_run = target.dry_run,
            "planned"
        );
        let destination = destination_location(target);
        if target.mirror && !target.dry_run {
            plan.check_deletions(target.max_delete_fraction, &destination)?;
        }
        let to_copy = plan.to_copy.len() as u64;
        let bytes_to_copy = plan.bytes_to_copy();

        if target.dry_run {
            let mut entries: Vec<Entry> = plan
                .to_copy
                .iter()
                .map(|c| Entry {
                    key: c.destination_key.clone(),
                    size: c.source.size,
                    checksum: checksum_of_etag(&c.source.etag),
                    action: "would-copy".into(),
                })
                .collect();
            entries.extend(plan.to_delete.iter().map(|d| Entry {
                key: d.key.clone(),
                size: d.size,
                checksum: checksum_of_etag(&d.etag),
                action: "would-delete".into(),
            }));
            entries.extend(skipped_entries(&plan.unchanged));
            entries.extend(missing_entries(&missing));
            let manifest = manifest_to(target, artifacts, config, shard, &entries).await?;
            let deletions = if target.mirror {
                let verdict = match plan.check_deletions(target.max_delete_fraction, &destination) {
                    Ok(()) => "within maxDeleteFraction".to_string(),
                    Err(e) => format!("refused without a higher maxDeleteFraction: {e}"),
                };
                format!(" mirror would delete {} ({verdict});", plan.to_delete.len())
            } else {
                String::new()
            };
            let summary = format!(
                "Dry run: would copy {to_copy} of {} objects ({}) from {} to {destination}; {} \
                 unchanged;{deletions} nothing was copied or deleted.",
                plan.source_objects,
                human(bytes_to_copy),
                source_location(target),
                plan.unchanged.len(),
            );
            let report = Report {
                progress: Progress::default(),
                skipped: plan.unchanged.len() as u64,
                to_copy,
                bytes_to_copy,
                to_delete: plan.to_delete.len() as u64,
                manifest,
            };
            let outputs = match shard {
                Some(_) => shard_outputs(&report, &missing, target),
                None => report.outputs(target),
            };
            return Ok(Outcome::Done { summary, outputs });
        }

        let before = ctx.journal.progress();
        let run = copy::run(Arc::clone(&ctx), &plan.to_copy).await;
        ctx.sink.save().await?;
        ctx.journal.add_elapsed(started.elapsed());
        if !run.failures.is_empty() {
            ctx.journal.save().await?;
            return Err(failure(&run.failures, &ctx.journal.describe()));
        }
        let mut interrupted = run.interrupted;
        if !interrupted && target.mirror {
            interrupted = !mirror::delete_gone(&ctx, target, &plan).await?;
        }
        if interrupted {
            ctx.journal.save().await?;
            let p = ctx.journal.progress();
            let percent =
                (p.copied.saturating_mul(100) / (before.copied + to_copy).max(1)).min(99) as u8;
            let summary = format!(
                "Copied {} objects ({}) so far to {destination}; {} objects ({}) left; continuing.",
                p.copied,
                human(p.bytes),
                run.not_started,
                human(bytes_to_copy.saturating_sub(p.bytes - before.bytes)),
            );
            let state = State {
                checkpoint: ctx.journal.describe(),
                progress: p,
            };
            return Ok(Outcome::Continue {
                summary,
                percent,
                state: serde_json::to_value(state)
                    .map_err(|e| Error::Internal(format!("continuation state: {e}")))?,
            });
        }

        // Uploads a step left that this run no longer needs (the object changed back, or was
        // copied whole): abort them.
        if let Some(r) = ctx.sink.resumable() {
            for (key, u) in ctx.journal.uploads() {
                r.abort(&key, &u.upload_id).await;
                ctx.journal.forget_upload(&key);
            }
            // Every object of the plan is now verified at the destination: an upload still open for
            // one of them was started by an attempt whose answer was lost, or by a killed step.
            // A shard's companions are not its own: the neighbour shard may be uploading them.
            let theirs: HashSet<String> = shard
                .map(|s| {
                    s.objects
                        .iter()
                        .filter(|i| i.companion)
                        .map(|i| destination_key(&i.key, &target.source_prefix, ctx.sink.prefix()))
                        .collect()
                })
                .unwrap_or_default();
            let ours: HashSet<String> = plan
                .to_copy
                .iter()
                .map(|c| c.destination_key.clone())
                .chain(plan.unchanged.iter().map(|l| l.key.clone()))
                .filter(|k| !theirs.contains(k))
                .collect();
            r.abort_stale(&ours).await;
        }

        let p = ctx.journal.progress();
        let mut entries = ctx.journal.entries();
        let done: HashSet<String> = entries.iter().map(|e| e.key.clone()).collect();
        let unchanged_now: Vec<Listed> = plan
            .unchanged
            .iter()
            .filter(|l| !done.contains(&l.key))
            .cloned()
            .chain(run.unchanged.iter().map(|c| Listed {
                key: c.destination_key.clone(),
                size: c.source.size,
                etag: c.source.etag.clone(),
            }))
            .collect();
        let skipped = unchanged_now.len() as u64;
        entries.extend(skipped_entries(&unchanged_now));
        if let Some(s) = shard {
            missing.extend(run.gone.iter().filter(|k| s.is_item(k)).cloned());
        }
        entries.extend(missing_entries(&missing));
        let manifest = manifest_to(target, artifacts, config, shard, &entries).await?;
        ctx.journal.finish().await?;
        if let Some(s) = shard
            && !missing.is_empty()
        {
            return Err(s.missing_error(&missing, manifest.as_deref().unwrap_or_default()));
        }

        let mut summary = done_summary(&p, plan.source_objects, skipped, target, &destination);
        if target.mirror {
            summary.push_str(&format!(
                " Mirror: {} objects gone at the source deleted.",
                p.deleted
            ));
        }
        let report = Report {
            progress: p,
            skipped,
            to_copy: p.copied + (to_copy - (p.copied - before.copied).min(to_copy)),
            bytes_to_copy: p.bytes.max(before.bytes + bytes_to_copy),
            to_delete: plan.to_delete.len() as u64,
            manifest,
        };
        let outputs = match shard {
            Some(_) => shard_outputs(&report, &missing, target),
            None => report.outputs(target),
        };
        Ok(Outcome::Done { summary, outputs })
    }
}

/// A streamed step ([`window`]): windows from the checkpoint's cursor, then the deferred keys; the
/// manifest assembled from the chunks at the end.
async fn streamed<R: Source, W: Sink>(
    ctx: &Arc<Ctx<R, W>>,
    target: &Target,
    artifacts: Option<&JobArtifacts>,
    config: &SdkConfig,
    started: Instant,
) -> Result<Outcome> {
    let result = window::run(ctx, target, window::window_objects()).await;
    ctx.journal.add_elapsed(started.elapsed());
    let destination = destination_location(target);
    let left = match result? {
        window::Streamed::Failed(failures) => {
            ctx.journal.save().await?;
            return Err(failure(&failures, &ctx.journal.describe()));
        }
        window::Streamed::Interrupted { left } => left,
        window::Streamed::Done => {
            // Uploads a step left that this run no longer needs (the object changed back, or was
            // copied whole): abort them.
            if let Some(r) = ctx.sink.resumable() {
                for (key, u) in ctx.journal.uploads() {
                    r.abort(&key, &u.upload_id).await;
                    ctx.journal.forget_upload(&key);
                }
            }
            let manifest =
                report::write_manifest_chunks(target, artifacts, config, &ctx.journal).await?;
            ctx.journal.finish().await?;
            let p = ctx.journal.progress();
            let tally = ctx.journal.tally();
            let summary = done_summary(
                &p,
                tally.source_objects,
                tally.skipped,
                target,
                &destination,
            );
            let report = Report {
                progress: p,
                skipped: tally.skipped,
                // Windows done over several steps count what was left to copy in the last.
                to_copy: tally.to_copy.max(p.copied),
                bytes_to_copy: tally.bytes_to_copy.max(p.bytes),
                to_delete: 0,
                manifest,
            };
            return Ok(Outcome::Done {
                summary,
                outputs: report.outputs(target),
            });
        }
    };
    ctx.journal.save().await?;
    let p = ctx.journal.progress();
    // Of the window in progress: the total is not known before the listing ends.
    let percent = (p.copied.saturating_mul(100) / (p.copied + left).max(1)).min(99) as u8;
    let summary = format!(
        "Copied {} objects ({}) so far to {destination}; listed up to {}; continuing.",
        p.copied,
        human(p.bytes),
        ctx.journal.cursor().map_or_else(
            || "the start".to_string(),
            |c| format!("s3://{}/{c}", target.source_bucket)
        ),
    );
    let state = State {
        checkpoint: ctx.journal.describe(),
        progress: p,
    };
    Ok(Outcome::Continue {
        summary,
        percent,
        state: serde_json::to_value(state)
            .map_err(|e| Error::Internal(format!("continuation state: {e}")))?,
    })
}

/// The summary of a finished run.
fn done_summary(
    p: &Progress,
    source_objects: u64,
    skipped: u64,
    target: &Target,
    destination: &str,
) -> String {
    if p.copied == 0 {
        format!(
            "Nothing to copy: the {source_objects} objects of {} are unchanged at {destination}.",
            source_location(target),
        )
    } else {
        format!(
            "Copied {} objects ({}) from {} to {destination}, {} verified, at {} MB/s; {skipped} \
             unchanged objects skipped.",
            p.copied,
            human(p.bytes),
            source_location(target),
            p.verified,
            throughput(p),
        )
    }
}

/// Writes the manifest: a shard's own, else the run's ([`write_manifest`]).
async fn manifest_to(
    target: &Target,
    artifacts: Option<&JobArtifacts>,
    config: &SdkConfig,
    shard: Option<&shard::Shard>,
    entries: &[Entry],
) -> Result<Option<String>> {
    match shard {
        Some(s) => s.write_manifest(config, entries).await.map(Some),
        None => write_manifest(target, artifacts, config, entries).await,
    }
}

/// Manifest lines of a batch's items gone at the source.
fn missing_entries(missing: &[String]) -> impl Iterator<Item = Entry> + '_ {
    missing.iter().map(|k| Entry {
        key: k.clone(),
        size: 0,
        checksum: String::new(),
        action: "missing".into(),
    })
}

/// A batch's result (answered as `{"objectsCopied", "bytesCopied", "objectsSkipped",
/// "objectsVerified", "manifest", "failedKeys", "dryRun"}`: see [`crate::job::contract::batch_answer`]).
fn shard_outputs(
    report: &Report,
    missing: &[String],
    target: &Target,
) -> std::collections::BTreeMap<String, String> {
    let mut out: std::collections::BTreeMap<String, String> = [
        ("ObjectsCopied", report.progress.copied.to_string()),
        ("BytesCopied", report.progress.bytes.to_string()),
        ("ObjectsSkipped", report.skipped.to_string()),
        ("ObjectsVerified", report.progress.verified.to_string()),
        ("ObjectsToCopy", report.to_copy.to_string()),
        ("BytesToCopy", report.bytes_to_copy.to_string()),
        (
            "FailedKeys",
            serde_json::to_string(missing).unwrap_or_else(|_| "[]".into()),
        ),
        ("DryRun", target.dry_run.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(m) = &report.manifest {
        out.insert("Manifest".into(), m.clone());
    }
    out
}
