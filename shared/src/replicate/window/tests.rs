//! Streamed runs over the in-memory source and sink: where a resumed step starts listing, what
//! the checkpoint holds, the manifest's chunks, the deferred `metadata.properties`.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::job::contract::Deadline;
use crate::replicate::copy::memory_budget;
use crate::replicate::journal::Store;
use crate::replicate::memory::{MemorySink, MemorySource};
use crate::replicate::params::Params;

/// A checkpoint directory of its own.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "snapstage-window-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.json")
    }

    /// Every file under the directory.
    fn files(&self) -> Vec<String> {
        fn walk(d: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p.display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &mut out);
        out
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn target() -> Target {
    serde_json::from_value::<Params>(serde_json::json!({
        "sourceBucket": "cloud-artifacts", "destinationBucket": "onprem-artifacts"
    }))
    .unwrap()
    .validate()
    .unwrap()
}

async fn ctx(
    source: &MemorySource,
    sink: &MemorySink,
    dir: &Dir,
    deadline: Deadline,
) -> Arc<Ctx<MemorySource, MemorySink>> {
    let (journal, _) = Journal::open(Store::File(dir.checkpoint()), "execution-1", "fp-1")
        .await
        .unwrap();
    Arc::new(Ctx {
        source: source.clone(),
        sink: sink.clone(),
        part_size: 1024,
        upload_cutoff: 0,
        concurrency: 4,
        memory: memory_budget(4, 1024),
        journal: Arc::new(journal),
        deadline,
    })
}

fn in_secs(s: u64) -> Deadline {
    Deadline(tokio::time::Instant::now() + Duration::from_secs(s))
}

/// A blob store of `n` blobs (`.bytes` and `.properties`) and its `metadata.properties`, which
/// sorts in the middle of the keys.
fn blob_store(n: usize) -> MemorySource {
    let source = MemorySource::default();
    for i in 0..n {
        let dir = if i % 2 == 0 { "content" } else { "zz-content" };
        source.put(
            &format!("{dir}/vol-{i:05}/b.bytes"),
            format!("blob {i}").as_bytes(),
        );
        source.put(&format!("{dir}/vol-{i:05}/b.properties"), b"size=6\n");
    }
    source.put("metadata.properties", b"type=file/1\n");
    source
}

/// The manifest's lines: (key, action).
fn lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().to_string(),
                v["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Keys written by a `put` at the destination, in order.
fn puts(sink: &MemorySink) -> Vec<String> {
    sink.calls()
        .iter()
        .filter_map(|c| c.strip_prefix("put ").map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_run_cut_into_steps_lists_from_its_cursor_and_copies_each_object_once() {
    let source = blob_store(10);
    let sink = MemorySink::resumable();
    let dir = Dir::new("cut");
    let mut cursors = Vec::new();
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 100, "no end");
        // Nearer than the copier's margin: one object, or one window, per step.
        let ctx = ctx(&source, &sink, &dir, in_secs(1)).await;
        let cursor = ctx.journal.cursor();
        let listed = ctx.journal.listed();
        let listings = source.listings().len();
        let r = run(&ctx, &target(), 6).await.unwrap();
        // The step's first listing starts after the checkpoint's cursor: nothing before it again
        // (and once every window is done, the source is not listed again).
        let first = source.listings().get(listings).cloned();
        assert_eq!(first, (!listed).then(|| cursor.clone()), "step {steps}");
        cursors.push(cursor);
        // What the checkpoint holds between steps stays small: at most one window's lines.
        let size = std::fs::metadata(dir.checkpoint()).map_or(0, |m| m.len());
        assert!(size < 2048, "step {steps}: a checkpoint of {size} bytes");
        match r {
            Streamed::Done => break,
            Streamed::Interrupted { .. } => {}
            Streamed::Failed(f) => panic!("{f:?}"),
        }
    }
    let cursors: Vec<String> = cursors.into_iter().flatten().collect();
    assert!(cursors.len() > 10, "resumed from a cursor: {cursors:?}");
    assert!(cursors.windows(2).all(|w| w[0] <= w[1]), "{cursors:?}");

    // Every object copied once, nothing twice.
    let written = puts(&sink);
    assert_eq!(written.len(), 21, "{written:?}");
    let mut once = written.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), 21, "copied twice: {written:?}");
    assert_eq!(sink.keys(), once);
    // The manifest from the chunks: every key exactly once, copied.
    let ctx = ctx(&source, &sink, &dir, in_secs(3600)).await;
    let manifest = lines(&manifest_text(&ctx.journal).await);
    assert_eq!(manifest.len(), 21, "{manifest:?}");
    assert!(manifest.iter().all(|(_, a)| a == "copied"), "{manifest:?}");
    let mut keys: Vec<&String> = manifest.iter().map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 21);
}

#[tokio::test]
async fn the_checkpoint_stays_small_the_manifest_is_ordered_and_metadata_comes_last() {
    let source = blob_store(1500);
    let sink = MemorySink::resumable();
    // Already there: found unchanged, a `skipped` line.
    let l = source.put("content/vol-00000/b.bytes", b"blob 0");
    sink.preload("content/vol-00000/b.bytes", b"blob 0", &l);
    let dir = Dir::new("small");
    let ctx = ctx(&source, &sink, &dir, in_secs(3600)).await;
    let r = run(&ctx, &target(), 500).await.unwrap();
    assert!(matches!(r, Streamed::Done), "{r:?}");

    // 3,001 objects copied: the checkpoint holds counters and a cursor, not their lines.
    let size = std::fs::metadata(dir.checkpoint()).unwrap().len();
    assert!(size < 1024, "a checkpoint of {size} bytes");
    assert_eq!(ctx.journal.progress().copied, 3000);
    assert_eq!(ctx.journal.tally().skipped, 1);
    // Seven windows of 500 (the last one short), then the deferred metadata.properties.
    assert_eq!(ctx.journal.chunks(), 8);

    let manifest = lines(&manifest_text(&ctx.journal).await);
    assert_eq!(manifest.len(), 3001);
    let (last, rest) = manifest.split_last().unwrap();
    assert_eq!(
        last,
        &("metadata.properties".to_string(), "copied".to_string())
    );
    assert!(rest.windows(2).all(|w| w[0].0 < w[1].0), "not in key order");
    assert!(
        rest.iter()
            .all(|(k, a)| (a == "skipped") == (k == "content/vol-00000/b.bytes")),
        "{:?}",
        &rest[..3]
    );

    // metadata.properties is written after every .bytes and .properties of every window, and each
    // .properties after its .bytes.
    let written = puts(&sink);
    assert_eq!(
        written.last().map(String::as_str),
        Some("metadata.properties")
    );
    let at: HashMap<&str, usize> = written
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    for (k, i) in &at {
        if let Some(stem) = k.strip_suffix(".properties")
            && *k != "metadata.properties"
            && let Some(b) = at.get(format!("{stem}.bytes").as_str())
        {
            assert!(b < i, "{k} before its .bytes");
        }
    }

    // Done: the checkpoint and its chunks go.
    ctx.journal.finish().await.unwrap();
    assert_eq!(dir.files(), Vec::<String>::new());
}

#[tokio::test]
async fn a_version_2_checkpoint_is_ignored_and_the_run_starts_over() {
    let source = blob_store(3);
    let sink = MemorySink::default();
    let dir = Dir::new("v2");
    let v2 = serde_json::json!({"version": 2, "execution": "execution-1", "fingerprint": "fp-1",
        "progress": {"copied": 40, "bytes": 9, "verified": 40},
        "entries": [{"key": "old", "size": 1, "checksum": "", "action": "copied"}]});
    std::fs::write(dir.checkpoint(), v2.to_string()).unwrap();
    let (journal, resumed) = Journal::open(Store::File(dir.checkpoint()), "execution-1", "fp-1")
        .await
        .unwrap();
    assert!(!resumed);
    assert_eq!(journal.progress().copied, 0);
    let ctx = ctx(&source, &sink, &dir, in_secs(3600)).await;
    assert!(matches!(
        run(&ctx, &target(), 4).await.unwrap(),
        Streamed::Done
    ));
    assert_eq!(ctx.journal.progress().copied, 7);
    assert_eq!(lines(&manifest_text(&ctx.journal).await).len(), 7);
}
