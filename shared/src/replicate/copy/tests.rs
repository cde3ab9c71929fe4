//! The copier over the in-memory source and sink (`memory.rs`): what a user would notice at the
//! destination, in the journal and in the error — no services, no timing assertions (a deadline
//! is reached under tokio's paused clock, by a write that "takes" a minute).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::error::FailureKind;
use crate::job::contract::Deadline;
use crate::replicate::SOURCE_ETAG_METADATA;
use crate::replicate::journal::{Journal, Store};
use crate::replicate::memory::{MemorySink, MemorySource, recorded_sha256};
use crate::replicate::params::{Params, Target};
use crate::replicate::plan::{Plan, plan};

/// Bytes of a part in these tests.
const PART: u64 = 16;

/// A checkpoint directory of its own.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "snapstage-copier-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn store(&self) -> Store {
        Store::File(self.0.join("checkpoint.json"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn far() -> Deadline {
    Deadline(tokio::time::Instant::now() + Duration::from_secs(3600))
}

async fn ctx(
    source: &MemorySource,
    sink: &MemorySink,
    dir: &Dir,
    concurrency: usize,
    deadline: Deadline,
) -> (Arc<Ctx<MemorySource, MemorySink>>, bool) {
    let (journal, resumed) = Journal::open(dir.store(), "execution-1", "fingerprint-1")
        .await
        .unwrap();
    let ctx = Ctx {
        source: source.clone(),
        sink: sink.clone(),
        part_size: PART,
        upload_cutoff: 0,
        concurrency,
        memory: memory_budget(concurrency, PART),
        journal: Arc::new(journal),
        deadline,
    };
    (Arc::new(ctx), resumed)
}

fn target() -> Target {
    serde_json::from_value::<Params>(serde_json::json!({
        "sourceBucket": "cloud-artifacts", "destinationBucket": "onprem-artifacts"
    }))
    .unwrap()
    .validate()
    .unwrap()
}

async fn planned(ctx: &Ctx<MemorySource, MemorySink>) -> Plan {
    plan(ctx, &target()).await.unwrap()
}

/// Deterministic content that differs per seed.
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

fn candidate(l: &crate::replicate::Listed) -> Candidate {
    Candidate {
        source: l.clone(),
        destination_key: l.key.clone(),
        destination_sha256: None,
    }
}

fn copied_keys(ctx: &Ctx<MemorySource, MemorySink>) -> Vec<String> {
    ctx.journal
        .entries()
        .into_iter()
        .filter(|e| e.action == "copied")
        .map(|e| e.key)
        .collect()
}

#[tokio::test]
async fn a_small_object_is_copied_byte_exact_and_its_checksums_verified() {
    let dir = Dir::new("small");
    let (source, sink) = (MemorySource::default(), MemorySink::default());
    let body = content(1, 11);
    let listed = source.put("blobs/a.bytes", &body);
    let (ctx, _) = ctx(&source, &sink, &dir, 4, far()).await;

    let got = copy_object(&ctx, &candidate(&listed)).await.unwrap();

    assert_eq!(got, Copied::Verified { bytes: 11 });
    let kept = sink.object("blobs/a.bytes").expect("written");
    assert_eq!(kept.data.as_ref(), body.as_slice());
    let sha = crate::digest::sha256_hex(&body);
    assert_eq!(recorded_sha256(&kept), Some(sha.as_str()));
    assert_eq!(
        kept.metadata.get(SOURCE_ETAG_METADATA),
        Some(&listed.etag),
        "the source ETag it was copied from"
    );
    // One whole write, then the check of what was written.
    assert_eq!(sink.calls(), ["put blobs/a.bytes", "verify blobs/a.bytes"]);
    let p = ctx.journal.progress();
    assert_eq!((p.copied, p.verified, p.bytes), (1, 1, 11));
    let entries = ctx.journal.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].checksum, format!("sha256:{sha}"));
}

#[tokio::test]
async fn a_corrupted_read_is_caught_by_its_md5_and_read_again() {
    let dir = Dir::new("corrupt-once");
    let (source, sink) = (MemorySource::default(), MemorySink::default());
    let body = content(2, 9);
    let listed = source.put("blobs/b.bytes", &body);
    source.corrupt_reads("blobs/b.bytes", 1);
    let (ctx, _) = ctx(&source, &sink, &dir, 1, far()).await;

    let got = copy_object(&ctx, &candidate(&listed)).await.unwrap();

    assert_eq!(got, Copied::Verified { bytes: 9 });
    assert_eq!(source.reads().len(), 2, "{:?}", source.reads());
    // The corrupted bytes never reached the destination.
    assert_eq!(sink.calls(), ["put blobs/b.bytes", "verify blobs/b.bytes"]);
    assert_eq!(
        sink.object("blobs/b.bytes").unwrap().data.as_ref(),
        &body[..]
    );
}

#[tokio::test]
async fn a_read_corrupted_every_time_fails_naming_the_key_and_writes_nothing() {
    let dir = Dir::new("corrupt-always");
    let (source, sink) = (MemorySource::default(), MemorySink::default());
    let listed = source.put("blobs/bad.bytes", &content(3, 10));
    source.corrupt_reads("blobs/bad.bytes", usize::MAX);
    let (ctx, _) = ctx(&source, &sink, &dir, 1, far()).await;

    let e = copy_object(&ctx, &candidate(&listed)).await.unwrap_err();

    let m = e.to_string();
    assert!(m.contains("memory://source/blobs/bad.bytes"), "{m}");
    assert!(m.contains("memory://sink/blobs/bad.bytes"), "{m}");
    assert!(m.contains("tried twice") && m.contains("MD5"), "{m}");
    assert!(sink.keys().is_empty(), "{:?}", sink.keys());
    assert_eq!(ctx.journal.progress().copied, 0);
}

#[tokio::test]
async fn a_large_object_is_split_into_parts_completed_and_verified() {
    let dir = Dir::new("parts");
    let (source, sink) = (MemorySource::default(), MemorySink::resumable());
    let body = content(4, 3 * PART as usize + 5);
    let listed = source.put("blobs/big.bytes", &body);
    let (ctx, _) = ctx(&source, &sink, &dir, 2, far()).await;

    let got = copy_object(&ctx, &candidate(&listed)).await.unwrap();

    assert_eq!(
        got,
        Copied::Verified {
            bytes: body.len() as u64
        }
    );
    assert_eq!(
        sink.calls(),
        [
            "begin blobs/big.bytes",
            "part blobs/big.bytes 1",
            "part blobs/big.bytes 2",
            "part blobs/big.bytes 3",
            "part blobs/big.bytes 4",
            "complete blobs/big.bytes",
        ]
    );
    // Ranged reads, in order, of at most one part each.
    assert_eq!(
        source.reads(),
        [
            "blobs/big.bytes@0-16",
            "blobs/big.bytes@16-32",
            "blobs/big.bytes@32-48",
            "blobs/big.bytes@48-53",
        ]
    );
    assert_eq!(
        sink.object("blobs/big.bytes").unwrap().data.as_ref(),
        &body[..]
    );
    assert!(sink.open_uploads().is_empty());
    assert!(
        ctx.journal.uploads().is_empty(),
        "a completed upload leaves the checkpoint"
    );
    assert_eq!(copied_keys(&ctx), ["blobs/big.bytes"]);
}

#[tokio::test]
async fn a_multipart_source_keeps_its_parts_so_the_etags_agree() {
    let dir = Dir::new("mirrored");
    let (source, sink) = (MemorySource::default(), MemorySink::resumable());
    let body = content(5, 40);
    // 10-byte parts fit the 16-byte part size: copied with the same parts.
    let listed = source.put_multipart("blobs/m.bytes", &body, 10);
    let (ctx, _) = ctx(&source, &sink, &dir, 1, far()).await;

    copy_object(&ctx, &candidate(&listed)).await.unwrap();

    let kept = sink.object("blobs/m.bytes").unwrap();
    assert_eq!(kept.data.as_ref(), &body[..]);
    assert_eq!(kept.etag, listed.etag);
    assert!(listed.etag.ends_with("-4"), "{}", listed.etag);
}

#[tokio::test]
async fn a_part_stored_wrong_fails_the_object_aborts_its_uploads_and_stops_the_run() {
    let dir = Dir::new("bad-part");
    let (source, sink) = (MemorySource::default(), MemorySink::resumable());
    let big = source.put("blobs/big.bytes", &content(6, 50));
    let props = source.put("blobs/big.properties", b"size=50\n");
    // Part 2 arrives garbled at the destination on both attempts.
    sink.garble("blobs/big.bytes", 2, 2);
    let (ctx, _) = ctx(&source, &sink, &dir, 1, far()).await;

    let report = run(Arc::clone(&ctx), &[candidate(&big), candidate(&props)]).await;

    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let (key, e) = &report.failures[0];
    assert_eq!(key, "blobs/big.bytes");
    let m = e.to_string();
    assert!(m.contains("blobs/big.bytes") && m.contains("part 2"), "{m}");
    assert!(m.contains("not counted as copied"), "{m}");
    assert!(!report.interrupted);
    // Nothing half-written is left or counted: both uploads aborted, never completed.
    let calls = sink.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| *c == "abort blobs/big.bytes")
            .count(),
        2,
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("complete")),
        "{calls:?}"
    );
    assert!(sink.open_uploads().is_empty());
    assert!(sink.keys().is_empty(), "{:?}", sink.keys());
    assert_eq!(ctx.journal.progress().copied, 0);
    assert!(ctx.journal.uploads().is_empty());
    // Nexus order: the .properties of a .bytes that failed never starts.
    assert_eq!(report.not_started, 1);
    assert!(
        !calls.iter().any(|c| c.contains("big.properties")),
        "{calls:?}"
    );
    // The run's error names the key and says the run can be resumed.
    let failed = crate::replicate::report::failure(&report.failures, &ctx.journal.describe());
    let m = failed.to_string();
    assert!(m.contains("blobs/big.bytes") && m.contains("re-run"), "{m}");
    assert_eq!(failed.failure_kind(), FailureKind::JobFailed);
}

#[tokio::test]
async fn a_refused_write_is_a_permission_error_naming_the_key() {
    let dir = Dir::new("refused");
    let (source, sink) = (MemorySource::default(), MemorySink::default());
    let a = source.put("blobs/a.bytes", b"aaaa");
    let b = source.put("blobs/b.bytes", b"bbbb");
    sink.refuse("blobs/a.bytes");
    let (ctx, _) = ctx(&source, &sink, &dir, 1, far()).await;

    let report = run(Arc::clone(&ctx), &[candidate(&a), candidate(&b)]).await;

    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].0, "blobs/a.bytes");
    let failed = crate::replicate::report::failure(&report.failures, "c");
    assert_eq!(failed.failure_kind(), FailureKind::PermissionError);
    assert!(failed.to_string().contains("blobs/a.bytes"), "{failed}");
    // After a failure nothing new starts.
    assert_eq!(sink.keys(), Vec::<String>::new());
}

#[tokio::test]
async fn identical_objects_are_skipped_and_a_second_run_copies_nothing() {
    let dir = Dir::new("incremental");
    let (source, sink) = (MemorySource::default(), MemorySink::default());
    let same = source.put("blobs/same.bytes", b"unchanged content");
    sink.preload("blobs/same.bytes", b"unchanged content", &same);
    source.put("blobs/new.bytes", b"new content");
    // Same size, other content: copied again.
    let changed = source.put("blobs/changed.bytes", b"content v2");
    sink.preload("blobs/changed.bytes", b"content v1", &{
        let mut old = changed.clone();
        old.etag = hex::encode(<md5::Md5 as md5::Digest>::digest(b"content v1"));
        old
    });
    let (ctx, _) = ctx(&source, &sink, &dir, 2, far()).await;

    let first = planned(&ctx).await;
    let to_copy: Vec<&str> = first
        .to_copy
        .iter()
        .map(|c| c.destination_key.as_str())
        .collect();
    assert_eq!(to_copy, ["blobs/changed.bytes", "blobs/new.bytes"]);
    assert_eq!(first.unchanged.len(), 1);
    assert_eq!(first.unchanged[0].key, "blobs/same.bytes");
    let report = run(Arc::clone(&ctx), &first.to_copy).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        sink.object("blobs/changed.bytes").unwrap().data.as_ref(),
        b"content v2"
    );

    let writes = sink.calls().len();
    let second = planned(&ctx).await;
    assert!(second.to_copy.is_empty(), "{:?}", second.to_copy);
    assert_eq!(second.unchanged.len(), 3);
    assert_eq!(sink.calls().len(), writes, "a second plan writes nothing");
}

#[tokio::test]
async fn the_same_content_recorded_at_the_destination_is_not_written_again() {
    let dir = Dir::new("same-sha");
    let (source, sink) = (MemorySource::default(), MemorySink::default());
    let body = b"same bytes".to_vec();
    let listed = source.put("blobs/s.bytes", &body);
    let (ctx, _) = ctx(&source, &sink, &dir, 1, far()).await;
    let c = Candidate {
        destination_sha256: Some(crate::digest::sha256_hex(&body)),
        ..candidate(&listed)
    };

    assert_eq!(copy_object(&ctx, &c).await.unwrap(), Copied::Unchanged);
    assert!(sink.calls().is_empty(), "{:?}", sink.calls());
}

#[tokio::test(start_paused = true)]
async fn a_deadline_mid_run_returns_a_continuation_and_loses_nothing() {
    let dir = Dir::new("deadline");
    let (source, sink) = (MemorySource::default(), MemorySink::default());
    let keys: Vec<String> = (0..5).map(|i| format!("blobs/{i}.bytes")).collect();
    for (i, k) in keys.iter().enumerate() {
        source.put(k, &content(i as u8, 8));
    }
    // The second object's write takes a minute: the deadline comes while it runs.
    sink.slow("blobs/1.bytes", 1, Duration::from_secs(60));
    let deadline =
        Deadline(tokio::time::Instant::now() + DEADLINE_MARGIN + Duration::from_secs(10));
    let (ctx, _) = ctx(&source, &sink, &dir, 1, deadline).await;
    let plan = planned(&ctx).await;

    let report = run(Arc::clone(&ctx), &plan.to_copy).await;

    assert!(report.interrupted, "{report:?}");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.not_started, 3);
    // The object that was being written when the deadline came is finished and counted.
    assert_eq!(copied_keys(&ctx), ["blobs/0.bytes", "blobs/1.bytes"]);
    assert_eq!(sink.keys(), ["blobs/0.bytes", "blobs/1.bytes"]);
    ctx.journal.save().await.unwrap();

    // The next step: a new deadline, the same checkpoint.
    let (next, resumed) = self::ctx(&source, &sink, &dir, 1, far()).await;
    assert!(resumed);
    assert_eq!(next.journal.progress().copied, 2);
    let plan = planned(&next).await;
    assert_eq!(plan.unchanged.len(), 2);
    let report = run(Arc::clone(&next), &plan.to_copy).await;
    assert!(!report.interrupted && report.failures.is_empty());
    assert_eq!(sink.keys(), keys);
    assert_eq!(next.journal.progress().copied, 5);
    let puts = sink.calls().iter().filter(|c| c.starts_with("put")).count();
    assert_eq!(puts, 5, "every object written once: {:?}", sink.calls());
}

#[tokio::test(start_paused = true)]
async fn a_resumed_run_continues_its_upload_from_the_journal_without_resending_parts() {
    let dir = Dir::new("resume");
    let (source, sink) = (MemorySource::default(), MemorySink::resumable());
    let small = source.put("blobs/a.bytes", b"small");
    let body = content(7, 4 * PART as usize);
    let big = source.put("blobs/big.bytes", &body);
    // Part 2 takes a minute: the deadline comes between parts 2 and 3.
    sink.slow("blobs/big.bytes", 2, Duration::from_secs(60));
    let deadline =
        Deadline(tokio::time::Instant::now() + DEADLINE_MARGIN + Duration::from_secs(10));
    let (ctx, _) = ctx(&source, &sink, &dir, 1, deadline).await;

    let report = run(Arc::clone(&ctx), &[candidate(&small), candidate(&big)]).await;

    assert!(
        report.interrupted && report.failures.is_empty(),
        "{report:?}"
    );
    assert_eq!(copied_keys(&ctx), ["blobs/a.bytes"]);
    assert!(
        sink.object("blobs/big.bytes").is_none(),
        "nothing half-written under the key"
    );
    let upload = ctx
        .journal
        .upload("blobs/big.bytes")
        .expect("in the checkpoint");
    assert_eq!(upload.source_etag, big.etag);
    ctx.journal.save().await.unwrap();

    let (next, resumed) = self::ctx(&source, &sink, &dir, 1, far()).await;
    assert!(resumed);
    let plan = planned(&next).await;
    let to_copy: Vec<&str> = plan
        .to_copy
        .iter()
        .map(|c| c.destination_key.as_str())
        .collect();
    assert_eq!(to_copy, ["blobs/big.bytes"], "a.bytes is not copied again");
    let report = run(Arc::clone(&next), &plan.to_copy).await;
    assert!(
        !report.interrupted && report.failures.is_empty(),
        "{report:?}"
    );

    assert_eq!(
        sink.object("blobs/big.bytes").unwrap().data.as_ref(),
        &body[..]
    );
    let calls = sink.calls();
    let count = |c: &str| calls.iter().filter(|x| *x == c).count();
    assert_eq!(count("begin blobs/big.bytes"), 1, "{calls:?}");
    assert_eq!(count("resume blobs/big.bytes"), 1, "{calls:?}");
    for n in 1..=4 {
        assert_eq!(
            count(&format!("part blobs/big.bytes {n}")),
            1,
            "part {n}: {calls:?}"
        );
    }
    assert_eq!(count("put blobs/a.bytes"), 1, "{calls:?}");
    assert_eq!(next.journal.progress().copied, 2);
    assert!(next.journal.uploads().is_empty());
}
