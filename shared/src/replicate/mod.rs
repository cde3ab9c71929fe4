//! Copying artifacts out of a cloud bucket, verified: to an on-premises S3-compatible endpoint
//! (MinIO, FlashBlade, ...), another bucket, or — pull mode, for the CLI on-prem — a local
//! directory. Typically a Sonatype Nexus blob store written in the cloud, copied back.
//!
//! One step:
//! 1. open the run's journal ([`journal`]): the checkpoint of a continued or killed run;
//! 2. list the source and the destination to the end (ListObjectsV2, paginated) and decide per
//!    object ([`compare`]): same size and the same ETag (single-part MD5, or multipart
//!    `md5-of-part-md5s-N` with the same parts) is unchanged; otherwise the destination's
//!    `snapstage-source-etag` metadata (the source ETag it was copied from) or `snapstage-sha256`
//!    decide; in a directory, the index or a hash of the file; anything else is copied;
//! 3. copy ([`copy`]): concurrently (`concurrency`), streaming large objects in parts
//!    (`partSizeMiB`, memory bounded by concurrency × part size), in Nexus-safe waves (`.bytes`,
//!    then `.properties`, then `metadata.properties`), each object verified before it counts;
//! 4. mirror mode only: delete at the destination what the complete source listing, and a
//!    HeadObject of each key, prove gone — refused above `maxDeleteFraction`;
//! 5. write the manifest (JSON lines: key, size, checksum, action) to the job's output artifact or
//!    the `manifest` location, and report the counters.
//!
//! Near the deadline a step checkpoints and returns `Continue`; the next step (or a re-run with
//! the same execution after a kill) re-lists, skips what is at the destination, and continues
//! unfinished multipart uploads from the checkpoint.

pub mod array;
pub mod compare;
pub mod copy;
pub mod journal;
pub mod local;
pub mod params;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;

pub use compare::{
    DestinationHead, HeadVerdict, Layout, Listed, ListingVerdict, compare_head, compare_listing,
    copy_order, destination_key, is_single_part, multipart_etag, normalize_etag,
};
pub use copy::{Candidate, Copied, DEADLINE_MARGIN};
pub use journal::{Entry, Progress};
pub use params::{
    CheckpointLocation, Destination, Params, S3Destination, S3Url, Target, destination_client,
    destination_credentials, parse_credentials,
};

use crate::error::{Error, Result, aws_error};
use crate::job::codepipeline::ArtifactCredentials;
use crate::job::contract::{JobArtifacts, Outcome, Step};
use copy::{Ctx, Sink};
use journal::{Journal, Store};
use local::Index;

/// Destination metadata: the hex SHA-256 of the content (single-PUT copies).
pub const SHA256_METADATA: &str = "snapstage-sha256";
/// Destination metadata: the source ETag the object was copied from.
pub const SOURCE_ETAG_METADATA: &str = "snapstage-source-etag";
/// The manifest's name inside the output artifact (a zip).
pub const MANIFEST_NAME: &str = "manifest.jsonl";

/// What a step will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub source_objects: u64,
    /// In copy order.
    pub to_copy: Vec<Candidate>,
    /// Unchanged objects (destination keys, with the source's size and ETag).
    pub unchanged: Vec<Listed>,
    /// Mirror mode: destination objects whose source is gone (destination keys), in delete order.
    pub to_delete: Vec<Listed>,
    /// Objects under the destination prefix.
    pub destination_objects: u64,
}

impl Plan {
    pub fn bytes_to_copy(&self) -> u64 {
        self.to_copy.iter().map(|c| c.source.size).sum()
    }

    /// Mirror mode's guard: refuses to delete more than `max_fraction` of the destination.
    pub fn check_deletions(&self, max_fraction: f64, destination: &str) -> Result<()> {
        let n = self.to_delete.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let total = self.destination_objects.max(1);
        let fraction = n as f64 / total as f64;
        if fraction <= max_fraction {
            return Ok(());
        }
        let needed = (fraction * 100.0).ceil() / 100.0;
        Err(Error::Refused(format!(
            "mirror would delete {n} of the {total} objects at {destination} ({:.0}%), more than \
             maxDeleteFraction {max_fraction} allows; nothing was copied or deleted. If the source \
             really lost them, list them first with \"dryRun\": true, then run with \
             \"maxDeleteFraction\": {needed} (or higher)",
            fraction * 100.0
        )))
    }
}

async fn list_s3(client: &Client, bucket: &str, prefix: &str, what: &str) -> Result<Vec<Listed>> {
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
        });
    }
    Ok(out)
}

/// Keys of snapstage's own files in the source bucket (checkpoints, the manifest): never copied.
fn own_source_key(target: &Target, key: &str) -> bool {
    let checkpoint = matches!(&target.checkpoint, CheckpointLocation::S3(u)
        if u.bucket == target.source_bucket && key.starts_with(&u.key));
    let manifest = target
        .manifest
        .as_ref()
        .is_some_and(|m| m.bucket == target.source_bucket && m.key == key);
    checkpoint || manifest || key.starts_with(".snapstage/")
}

/// Lists both sides and decides what to copy (and, in mirror mode, what to delete).
async fn plan(ctx: &Ctx, target: &Target, index: Option<&Index>) -> Result<Plan> {
    let src: Vec<Listed> = list_s3(
        &ctx.source,
        &target.source_bucket,
        &target.source_prefix,
        "source",
    )
    .await?
    .into_iter()
    .filter(|l| !own_source_key(target, &l.key))
    .collect();
    let (dst_prefix, dst): (String, HashMap<String, Listed>) = match &ctx.sink {
        Sink::S3 {
            client,
            destination,
        } => {
            let listed = list_s3(
                client,
                &destination.bucket,
                &destination.prefix,
                "destination",
            )
            .await?
            .into_iter()
            .filter(|l| !l.key.starts_with(".snapstage/"))
            .map(|l| (l.key.clone(), l))
            .collect();
            (destination.prefix.clone(), listed)
        }
        Sink::Directory { root, .. } => {
            let found = local::list(root.clone(), !target.dry_run).await?;
            let listed = found
                .into_iter()
                .map(|f| {
                    let etag = index.and_then(|i| i.etag(&f)).unwrap_or_default();
                    (
                        f.key.clone(),
                        Listed {
                            key: f.key,
                            size: f.size,
                            etag,
                        },
                    )
                })
                .collect();
            (String::new(), listed)
        }
    };
    let mut plan = Plan {
        source_objects: src.len() as u64,
        destination_objects: dst.len() as u64,
        ..Plan::default()
    };
    let mut wanted = HashSet::new();
    for mut s in src {
        let key = destination_key(&s.key, &target.source_prefix, &dst_prefix);
        if let Sink::Directory { root, .. } = &ctx.sink
            && local::path_of(root, &key).is_none()
        {
            tracing::warn!(key = %s.key, "not a plain relative path (a folder marker, \"..\", an empty segment): not copied to the directory");
            continue;
        }
        wanted.insert(key.clone());
        let d = dst.get(&key);
        // A listing without ETags (s3s-fs, some S3-compatible stores) tells nothing about the
        // content: the source's HeadObject does. An unchanged object then costs a HEAD or two,
        // not a full read, and the candidate carries the version to read.
        if s.etag.is_empty()
            && d.is_some_and(|d| d.size == s.size)
            && !copy::refresh(ctx, &mut s).await?
        {
            tracing::warn!(key = %s.key, "deleted at the source during the run; not copied");
            continue;
        }
        let unchanged = |plan: &mut Plan| {
            plan.unchanged.push(Listed {
                key: key.clone(),
                size: s.size,
                etag: s.etag.clone(),
            })
        };
        let destination_sha256 = match &ctx.sink {
            Sink::Directory { root, index } => match d {
                // Same size and the same known ETag; an empty one (a file not in the index, a
                // source that gave none) proves nothing.
                Some(d) if d.size == s.size && !s.etag.is_empty() && d.etag == s.etag => {
                    unchanged(&mut plan);
                    continue;
                }
                Some(d) if d.size == s.size => {
                    if file_matches(ctx, root, index, &key, &s).await? {
                        unchanged(&mut plan);
                        continue;
                    }
                    None
                }
                _ => None,
            },
            Sink::S3 {
                client,
                destination,
            } => match compare_listing(&s, d) {
                ListingVerdict::Unchanged => {
                    unchanged(&mut plan);
                    continue;
                }
                ListingVerdict::New | ListingVerdict::Changed => None,
                ListingVerdict::NeedsHead => match head(client, destination, &key).await? {
                    None => None,
                    Some(h) => match compare_head(&s, &h) {
                        HeadVerdict::Unchanged => {
                            unchanged(&mut plan);
                            continue;
                        }
                        HeadVerdict::Copy { destination_sha256 } => destination_sha256,
                    },
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
    if target.mirror {
        let mut gone: Vec<Listed> = dst
            .into_values()
            .filter(|d| !wanted.contains(&d.key))
            .collect();
        // Reverse of the copy order: metadata.properties, then .properties, then .bytes.
        gone.sort_by(|a, b| copy_order(&b.key).cmp(&copy_order(&a.key)));
        plan.to_delete = gone;
    }
    Ok(plan)
}

/// Whether a local file of the right size holds the source's content (hashed like its ETag).
async fn file_matches(
    ctx: &Ctx,
    root: &std::path::Path,
    index: &Index,
    key: &str,
    s: &Listed,
) -> Result<bool> {
    let Some(path) = local::path_of(root, key) else {
        return Ok(false);
    };
    let layout = if is_single_part(&s.etag) {
        None
    } else if compare::multipart_parts(&s.etag).is_some() {
        let part = ctx
            .source
            .head_object()
            .bucket(&ctx.source_bucket)
            .key(&s.key)
            .part_number(1)
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    "s3",
                    &format!("HeadObject s3://{}/{} (part 1)", ctx.source_bucket, s.key),
                    e,
                )
            })?
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        if !compare::layout_matches(s.size, &s.etag, part) {
            return Ok(false);
        }
        Some(Layout {
            size: s.size,
            part_size: part,
        })
    } else {
        return Ok(false);
    };
    let etag = local::hash_file(path.clone(), layout).await?;
    if etag != s.etag {
        return Ok(false);
    }
    if let Ok(md) = tokio::fs::metadata(&path).await {
        let mtime_ns = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        index.record(
            key,
            local::Indexed {
                size: md.len(),
                mtime_ns,
                etag,
            },
        );
    }
    Ok(true)
}

/// The destination object's HeadObject; `None` when it is gone.
async fn head(
    client: &Client,
    destination: &S3Destination,
    key: &str,
) -> Result<Option<DestinationHead>> {
    match client
        .head_object()
        .bucket(&destination.bucket)
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
            &format!("HeadObject s3://{}/{key}", destination.bucket),
            e,
        )),
    }
}

/// Mirror mode: deletes what is proven gone — absent from the complete source listing and
/// answered 404 by a HeadObject of the source key just before the delete. Waves in reverse copy
/// order. Returns false when the deadline interrupted it.
async fn delete_gone(ctx: &Arc<Ctx>, target: &Target, plan: &Plan) -> Result<bool> {
    let dst_prefix = target.s3().map(|d| d.prefix.clone()).unwrap_or_default();
    let done = ctx.journal.done_keys();
    for wave in [2u8, 1, 0] {
        let mut set: JoinSet<Result<()>> = JoinSet::new();
        for d in plan
            .to_delete
            .iter()
            .filter(|d| compare::rank(&d.key) == wave && !done.contains(&d.key))
        {
            if ctx.deadline.near(DEADLINE_MARGIN) && ctx.journal.step_done() > 0 {
                while let Some(r) = set.join_next().await {
                    r.map_err(|e| Error::Internal(format!("delete task: {e}")))??;
                }
                return Ok(false);
            }
            while set.len() >= ctx.concurrency {
                if let Some(r) = set.join_next().await {
                    r.map_err(|e| Error::Internal(format!("delete task: {e}")))??;
                }
            }
            let ctx = Arc::clone(ctx);
            let d = d.clone();
            let source_key = format!(
                "{}{}",
                target.source_prefix,
                d.key.strip_prefix(&dst_prefix).unwrap_or(&d.key)
            );
            set.spawn(async move { delete_one(&ctx, &source_key, d).await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| Error::Internal(format!("delete task: {e}")))??;
        }
    }
    Ok(true)
}

async fn delete_one(ctx: &Ctx, source_key: &str, d: Listed) -> Result<()> {
    match ctx
        .source
        .head_object()
        .bucket(&ctx.source_bucket)
        .key(source_key)
        .send()
        .await
    {
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
        Ok(_) => {
            tracing::info!(key = %source_key, "back at the source since the listing: not deleted");
            return Ok(());
        }
        Err(e) => {
            return Err(aws_error(
                "s3",
                &format!(
                    "HeadObject s3://{}/{source_key} (proving it gone before a delete)",
                    ctx.source_bucket
                ),
                e,
            ));
        }
    }
    match &ctx.sink {
        Sink::S3 {
            client,
            destination,
        } => {
            client
                .delete_object()
                .bucket(&destination.bucket)
                .key(&d.key)
                .send()
                .await
                .map_err(|e| {
                    aws_error(
                        "s3",
                        &format!("DeleteObject {}", ctx.sink.describe_key(&d.key)),
                        e,
                    )
                })?;
        }
        Sink::Directory { root, index } => {
            local::remove(root, &d.key).await?;
            index.forget(&d.key);
        }
    }
    tracing::info!(key = %d.key, "deleted (gone at the source)");
    ctx.journal
        .deleted(Entry {
            key: d.key.clone(),
            size: d.size,
            checksum: checksum_of_etag(&d.etag),
            action: "deleted".into(),
        })
        .await
}

fn checksum_of_etag(etag: &str) -> String {
    if etag.is_empty() {
        String::new()
    } else {
        format!("etag:{etag}")
    }
}

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
    if let Some(a) = &step.params.array {
        return array::step(a, step.params.dry_run, config, &step).await;
    }
    let started = Instant::now();
    let target = step.params.validate()?;
    let from_token: Option<State> = match step.state {
        None | Some(Value::Null) => None,
        // A token from an older version carries only counters: the destination is the truth.
        Some(v) => serde_json::from_value(v).ok(),
    };
    let (sink, index) = match &target.destination {
        Destination::S3(d) => {
            let credentials = match &d.credentials_secret {
                Some(id) => Some(destination_credentials(secrets, id).await?),
                None => None,
            };
            let client = destination_client(config, d, credentials)?;
            (
                Sink::S3 {
                    client,
                    destination: d.clone(),
                },
                None,
            )
        }
        Destination::Directory(root) => {
            if !target.dry_run {
                tokio::fs::create_dir_all(root).await.map_err(|e| {
                    Error::Configuration(format!(
                        "destinationDirectory {}: cannot create it: {e}",
                        root.display()
                    ))
                })?;
            }
            let index = Arc::new(Index::load(root).await);
            (
                Sink::Directory {
                    root: root.clone(),
                    index: Arc::clone(&index),
                },
                Some(index),
            )
        }
    };
    let store = Store::new(&target.checkpoint, source, &step.execution.key);
    let (journal, resumed) =
        Journal::open(store, &step.execution.key, &target.fingerprint()).await?;
    if resumed {
        tracing::info!(checkpoint = %journal.describe(), progress = ?journal.progress(), "resuming from the checkpoint");
    } else if let Some(s) = &from_token {
        tracing::warn!(checkpoint = %s.checkpoint, "the checkpoint of this run is gone; its counters restart (the destination still shows what is copied)");
    }
    let ctx = Arc::new(Ctx {
        source: source.clone(),
        source_bucket: target.source_bucket.clone(),
        sink,
        part_size: target.part_size,
        concurrency: target.concurrency,
        memory: Ctx::memory_budget(target.concurrency, target.part_size),
        journal: Arc::new(journal),
        deadline: step.deadline,
    });
    let plan = plan(&ctx, &target, index.as_deref()).await?;
    tracing::info!(
        source_objects = plan.source_objects,
        to_copy = plan.to_copy.len(),
        unchanged = plan.unchanged.len(),
        to_delete = plan.to_delete.len(),
        dry_run = target.dry_run,
        "planned"
    );
    let destination = destination_location(&target);
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
        let manifest = write_manifest(&target, step.artifacts.as_ref(), config, &entries).await?;
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
            human_bytes(bytes_to_copy),
            source_location(&target),
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
        return Ok(Outcome::Done {
            summary,
            outputs: report.outputs(&target),
        });
    }

    let before = ctx.journal.progress();
    let run = copy::run(Arc::clone(&ctx), &plan.to_copy).await;
    if let Some(index) = &index {
        index.save().await?;
    }
    ctx.journal.add_elapsed(started.elapsed());
    if !run.failures.is_empty() {
        ctx.journal.save().await?;
        return Err(failure(&run.failures, &ctx.journal.describe()));
    }
    let mut interrupted = run.interrupted;
    if !interrupted && target.mirror {
        interrupted = !delete_gone(&ctx, &target, &plan).await?;
    }
    if interrupted {
        ctx.journal.save().await?;
        let p = ctx.journal.progress();
        let percent =
            (p.copied.saturating_mul(100) / (before.copied + to_copy).max(1)).min(99) as u8;
        let summary = format!(
            "Copied {} objects ({}) so far to {destination}; {} objects ({}) left; continuing.",
            p.copied,
            human_bytes(p.bytes),
            run.not_started,
            human_bytes(bytes_to_copy.saturating_sub(p.bytes - before.bytes)),
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
    if let Sink::S3 {
        client,
        destination,
    } = &ctx.sink
    {
        for (key, u) in ctx.journal.uploads() {
            copy::abort(client, &destination.bucket, &key, &u.upload_id).await;
            ctx.journal.forget_upload(&key);
        }
        // Every object of the plan is now verified at the destination: an upload still open for
        // one of them was started by an attempt whose answer was lost, or by a killed step.
        let ours: HashSet<String> = plan
            .to_copy
            .iter()
            .map(|c| c.destination_key.clone())
            .chain(plan.unchanged.iter().map(|l| l.key.clone()))
            .collect();
        copy::abort_stale_uploads(client, &destination.bucket, &destination.prefix, &ours).await;
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
    let manifest = write_manifest(&target, step.artifacts.as_ref(), config, &entries).await?;
    ctx.journal.finish().await?;

    let mut summary = if p.copied == 0 {
        format!(
            "Nothing to copy: the {} objects of {} are unchanged at {destination}.",
            plan.source_objects,
            source_location(&target),
        )
    } else {
        format!(
            "Copied {} objects ({}) from {} to {destination}, {} verified, at {} MB/s; {skipped} \
             unchanged objects skipped.",
            p.copied,
            human_bytes(p.bytes),
            source_location(&target),
            p.verified,
            throughput(&p),
        )
    };
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
    Ok(Outcome::Done {
        summary,
        outputs: report.outputs(&target),
    })
}

fn skipped_entries(unchanged: &[Listed]) -> impl Iterator<Item = Entry> + '_ {
    unchanged.iter().map(|l| Entry {
        key: l.key.clone(),
        size: l.size,
        checksum: checksum_of_etag(&l.etag),
        action: "skipped".into(),
    })
}

/// One error naming the failed keys, of the first failure's type.
fn failure(failures: &[(String, Error)], checkpoint: &str) -> Error {
    let names: Vec<String> = failures
        .iter()
        .take(5)
        .map(|(k, e)| format!("{k}: {e}"))
        .collect();
    let more = failures.len().saturating_sub(5);
    let message = format!(
        "{} object(s) failed: {}{}; objects copied before are verified and kept, and a re-run \
         resumes from the checkpoint {checkpoint}",
        failures.len(),
        names.join("; "),
        if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        }
    );
    match failures.first().map(|(_, e)| e) {
        Some(Error::Permission { backend, .. }) => Error::Permission { backend, message },
        Some(Error::Unavailable { backend, .. }) => Error::Unavailable { backend, message },
        Some(Error::NotFound { .. } | Error::Configuration(_) | Error::Refused(_)) => {
            Error::Configuration(message)
        }
        _ => Error::Backend {
            backend: "s3",
            message,
        },
    }
}

/// Writes the manifest: to the job's first output artifact (a zip, with the job's artifact
/// credentials and KMS key), else to the `manifest` location (the function's credentials).
/// Returns where it went.
async fn write_manifest(
    target: &Target,
    artifacts: Option<&JobArtifacts>,
    config: &SdkConfig,
    entries: &[Entry],
) -> Result<Option<String>> {
    let lines = journal::manifest_lines(entries);
    let output = artifacts.and_then(|a| {
        a.outputs
            .first()
            .and_then(|o| o.location.s3_location.clone())
            .map(|l| (l, a.credentials.clone(), a.encryption_key.clone()))
    });
    if let Some((location, credentials, key)) = output {
        let client = artifact_client(config, credentials.as_ref());
        let url = format!("s3://{}/{}", location.bucket_name, location.object_key);
        let mut put = client
            .put_object()
            .bucket(&location.bucket_name)
            .key(&location.object_key)
            .content_type("application/zip")
            .body(ByteStream::from(journal::zip_one(MANIFEST_NAME, &lines)));
        if let Some(k) = key.filter(|k| k.kind.eq_ignore_ascii_case("KMS")) {
            put = put
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(k.id);
        }
        put.send().await.map_err(|e| {
            aws_error(
                "s3",
                &format!("PutObject {url} (the output artifact, manifest)"),
                e,
            )
        })?;
        return Ok(Some(url));
    }
    let Some(m) = &target.manifest else {
        return Ok(None);
    };
    let client = Client::new(config);
    client
        .put_object()
        .bucket(&m.bucket)
        .key(&m.key)
        .content_type("application/x-ndjson")
        .body(ByteStream::from(lines))
        .send()
        .await
        .map_err(|e| aws_error("s3", &format!("PutObject {m} (manifest)"), e))?;
    Ok(Some(m.to_string()))
}

/// An S3 client with the job's artifact credentials (never logged: `ArtifactCredentials`' Debug
/// is redacted, and the SDK's `Credentials` too).
fn artifact_client(config: &SdkConfig, credentials: Option<&ArtifactCredentials>) -> Client {
    let mut b = aws_sdk_s3::config::Builder::from(config);
    if let Some(c) = credentials {
        b = b.credentials_provider(aws_sdk_s3::config::Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            Some(c.session_token.clone()),
            None,
            "codepipeline-artifact-credentials",
        ));
    }
    Client::from_conf(b.build())
}

fn throughput(p: &Progress) -> String {
    let secs = p.elapsed_ms as f64 / 1000.0;
    if secs <= 0.0 {
        return "0.0".into();
    }
    format!("{:.1}", p.bytes as f64 / 1_000_000.0 / secs)
}

struct Report {
    progress: Progress,
    skipped: u64,
    to_copy: u64,
    bytes_to_copy: u64,
    to_delete: u64,
    manifest: Option<String>,
}

impl Report {
    fn outputs(&self, target: &Target) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = [
            ("ObjectsCopied", self.progress.copied.to_string()),
            ("ObjectsSkipped", self.skipped.to_string()),
            ("ObjectsVerified", self.progress.verified.to_string()),
            ("ObjectsDeleted", self.progress.deleted.to_string()),
            ("BytesCopied", self.progress.bytes.to_string()),
            ("ThroughputMBps", throughput(&self.progress)),
            ("ObjectsToCopy", self.to_copy.to_string()),
            ("BytesToCopy", self.bytes_to_copy.to_string()),
            ("ObjectsToDelete", self.to_delete.to_string()),
            ("DryRun", target.dry_run.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        match &target.destination {
            Destination::S3(d) => out.insert("DestinationBucket".into(), d.bucket.clone()),
            Destination::Directory(p) => {
                out.insert("DestinationDirectory".into(), p.display().to_string())
            }
        };
        if let Some(m) = &self.manifest {
            out.insert("Manifest".into(), m.clone());
        }
        out
    }
}

fn source_location(t: &Target) -> String {
    format!("s3://{}/{}", t.source_bucket, t.source_prefix)
}

fn destination_location(t: &Target) -> String {
    match &t.destination {
        Destination::S3(d) => format!(
            "s3://{}/{}{}",
            d.bucket,
            d.prefix,
            d.endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        ),
        Destination::Directory(p) => p.display().to_string(),
    }
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

    fn listed(key: &str) -> Listed {
        Listed {
            key: key.into(),
            size: 1,
            etag: String::new(),
        }
    }

    #[test]
    fn the_deletion_guard_says_how_many_and_how_to_override() {
        let plan = Plan {
            to_delete: (0..3).map(|i| listed(&format!("k{i}"))).collect(),
            destination_objects: 10,
            ..Plan::default()
        };
        assert!(plan.check_deletions(0.3, "s3://b/").is_ok());
        let e = plan.check_deletions(0.1, "s3://b/").unwrap_err();
        let m = e.to_string();
        assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
        assert!(
            m.contains("delete 3 of the 10 objects at s3://b/ (30%)"),
            "{m}"
        );
        assert!(m.contains("\"maxDeleteFraction\": 0.3"), "{m}");
        assert!(m.contains("dryRun"), "{m}");
        assert!(Plan::default().check_deletions(0.0, "x").is_ok());
    }

    #[test]
    fn failures_name_every_key_up_to_five() {
        let fails: Vec<(String, Error)> = (0..7)
            .map(|i| {
                (
                    format!("blobs/{i}.bytes"),
                    Error::Backend {
                        backend: "s3",
                        message: "not verified".into(),
                    },
                )
            })
            .collect();
        let e = failure(&fails, "s3://src/.snapstage/checkpoints/x.json");
        let m = e.to_string();
        assert!(m.contains("7 object(s) failed"), "{m}");
        assert!(
            m.contains("blobs/0.bytes") && m.contains("blobs/4.bytes"),
            "{m}"
        );
        assert!(m.contains("and 2 more"), "{m}");
        assert_eq!(e.failure_kind(), FailureKind::JobFailed);
        let perm = failure(
            &[(
                "k".into(),
                Error::Permission {
                    backend: "s3",
                    message: "AccessDenied".into(),
                },
            )],
            "c",
        );
        assert_eq!(perm.failure_kind(), FailureKind::PermissionError);
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 * 1024 * 1024), "64.0 MiB");
        let p = Progress {
            bytes: 50_000_000,
            elapsed_ms: 2_000,
            ..Progress::default()
        };
        assert_eq!(throughput(&p), "25.0");
    }
}
