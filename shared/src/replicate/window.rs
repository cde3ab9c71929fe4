//! A streamed run: the source taken a window at a time, so listing, comparison and the
//! checkpoint stay bounded in memory however many objects the bucket holds.
//!
//! - Both sides are listed a page at a time ([`Source::list_page`], [`Sink::list_page`]). S3
//!   lists in UTF-8 byte order, and a destination key is the source key with its prefix swapped,
//!   so both listings are in the same order: each source object is matched by a merge-join
//!   against the destination's pages — never a map of the whole destination. A listing that is
//!   not in order is an error (the cursor would skip objects).
//! - A window is up to [`window_objects`] source keys: decided ([`plan::decide`]), copied in the
//!   Nexus-safe waves ([`copy::run`]) and verified, then written as one manifest chunk and the
//!   checkpoint's `cursor` moved past it ([`Journal::complete_window`]). Window k is complete
//!   before window k+1 starts, so a `.bytes` and its `.properties` on either side of a boundary
//!   keep their order.
//! - `metadata.properties` keys (rank 2) are deferred to the end of the run (kept in the
//!   checkpoint), decided again against the destination then, and copied after every window.
//! - A resumed step lists the source after the cursor and the destination after the cursor's
//!   destination key. A window interrupted (the deadline, a kill) is done again from the cursor:
//!   what it already copied is found unchanged at the destination, never copied twice; its
//!   manifest lines so far are in the checkpoint (`entries`).
//!
//! - The source's window and the destination's next pages (as many objects ahead) are listed
//!   at once, so a run that copies little takes the slower of the two listings, not their sum.
//!
//! Memory: a window of listed objects and its manifest lines (~[`WINDOW_OBJECTS`] × a few hundred
//! bytes), as many destination objects ahead plus a page, and the copier's `concurrency × partSizeMiB`. A
//! directory destination (pull mode) cannot page: its sorted listing is held whole (about 200
//! bytes per file).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::compare::{Listed, destination_key, rank};
use super::copy::{self, Candidate, Ctx, DEADLINE_MARGIN};
#[cfg(test)]
use super::journal::Journal;
use super::journal::{Entry, Tally, Window, manifest_lines};
use super::params::Target;
use super::plan::{self, own_source_key};
use super::report::checksum_of_etag;
use super::sink::Sink;
use super::source::{Page, Source};
use crate::error::{Error, Result};

/// Source objects in a window, by default: with a key of ~100 bytes, a listed object, its
/// candidate and its manifest line take well under 1 KiB — a window a few MiB.
pub const WINDOW_OBJECTS: usize = 5_000;
/// Overrides [`WINDOW_OBJECTS`] (tests cut runs into many windows with it).
pub const WINDOW_ENV: &str = "SNAPSTAGE_REPLICATE_WINDOW";

/// The window size: [`WINDOW_ENV`] when it is a positive number, else [`WINDOW_OBJECTS`].
pub fn window_objects() -> usize {
    std::env::var(WINDOW_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(WINDOW_OBJECTS)
}

/// How a streamed step ended.
#[derive(Debug)]
pub enum Streamed {
    /// Every window and the deferred keys are done: the manifest's chunks are complete.
    Done,
    /// The deadline: the checkpoint is saved; `left` objects of the window in progress (and the
    /// deferred ones) were not started.
    Interrupted { left: u64 },
    /// Objects failed (source key, error); nothing new started after the first.
    Failed(Vec<(String, Error)>),
}

/// A listing read a page at a time, checked to be in order.
struct Pages {
    buf: VecDeque<Listed>,
    token: Option<String>,
    start_after: Option<String>,
    started: bool,
    done: bool,
    last: Option<String>,
    what: &'static str,
}

impl Pages {
    fn after(start_after: Option<String>, what: &'static str) -> Self {
        Self {
            buf: VecDeque::new(),
            token: None,
            last: start_after.clone(),
            start_after,
            started: false,
            done: false,
            what,
        }
    }

    fn needs_page(&self) -> bool {
        self.buf.is_empty() && !self.done
    }

    /// The first page starts after the cursor, the next ones continue from the token.
    fn request(&self) -> (Option<&str>, Option<String>) {
        if self.started {
            (None, self.token.clone())
        } else {
            (self.start_after.as_deref(), None)
        }
    }

    fn take(&mut self, page: Page) -> Result<()> {
        for l in &page.items {
            if self
                .last
                .as_deref()
                .is_some_and(|last| l.key.as_str() <= last)
            {
                return Err(Error::Unavailable {
                    backend: "s3",
                    message: format!(
                        "the {} listing is not in UTF-8 byte order ({:?} after {:?}): a run \
                         streamed by windows cannot resume from it",
                        self.what, l.key, self.last
                    ),
                    source: None,
                });
            }
            self.last = Some(l.key.clone());
        }
        self.started = true;
        self.done = page.next.is_none();
        self.token = page.next;
        self.buf.extend(page.items);
        Ok(())
    }

    async fn next_source<R: Source>(&mut self, source: &R, prefix: &str) -> Result<Option<Listed>> {
        while self.needs_page() {
            let (after, token) = self.request();
            let page = source.list_page(prefix, after, token).await?;
            self.take(page)?;
        }
        Ok(self.buf.pop_front())
    }

    /// Lists pages ahead until `ahead` objects wait in the buffer (or the listing ends). Bounded:
    /// at most `ahead` plus one page.
    async fn prefetch<W: Sink>(&mut self, sink: &W, ahead: usize, clean: bool) -> Result<()> {
        while !self.done && self.buf.len() < ahead {
            let (after, token) = self.request();
            let page = sink.list_page(after, token, clean).await?;
            self.take(page)?;
        }
        Ok(())
    }

    /// The destination object `key`, if listed; what sorts before it is passed over.
    async fn find<W: Sink>(&mut self, sink: &W, key: &str, clean: bool) -> Result<Option<Listed>> {
        loop {
            while self.needs_page() {
                let (after, token) = self.request();
                let page = sink.list_page(after, token, clean).await?;
                self.take(page)?;
            }
            match self.buf.front() {
                Some(d) if d.key.as_str() < key => {
                    self.buf.pop_front();
                }
                Some(d) if d.key == key => return Ok(self.buf.pop_front()),
                _ => return Ok(None),
            }
        }
    }
}

/// Copies a window's candidates; `Err` is how the step stops when they did not all complete (the
/// checkpoint saved): failures, or the deadline with `pending` objects on top of those not started.
async fn copy_window<R: Source, W: Sink>(
    ctx: &Arc<Ctx<R, W>>,
    candidates: &[Candidate],
    pending: u64,
) -> Result<std::result::Result<copy::RunReport, Streamed>> {
    let report = copy::run(Arc::clone(ctx), candidates).await;
    ctx.sink.save().await?;
    if !report.failures.is_empty() {
        ctx.journal.save().await?;
        return Ok(Err(Streamed::Failed(report.failures)));
    }
    if report.interrupted {
        ctx.journal.save().await?;
        return Ok(Err(Streamed::Interrupted {
            left: report.not_started as u64 + pending,
        }));
    }
    Ok(Ok(report))
}

/// Copies windows from the checkpoint's cursor to the end of the source, then the deferred keys.
pub async fn run<R: Source, W: Sink>(
    ctx: &Arc<Ctx<R, W>>,
    target: &Target,
    window: usize,
) -> Result<Streamed> {
    let journal = &ctx.journal;
    let dst_prefix = ctx.sink.prefix().to_string();
    let mut windows = 0u64;
    if !journal.listed() {
        let cursor = journal.cursor();
        let dst_after = cursor
            .as_deref()
            .map(|c| destination_key(c, &target.source_prefix, &dst_prefix));
        if let Some(c) = &cursor {
            tracing::info!(cursor = %c, "listing from the checkpoint's cursor");
        }
        let mut src = Pages::after(cursor, "source");
        let mut dst = Pages::after(dst_after, "destination");
        loop {
            // The source's window and the destination's pages ahead are listed at once: a run
            // that copies little is bound by the two listings, now by the slower one.
            let list_window = async {
                let mut batch = Vec::new();
                let mut last = None;
                while batch.len() < window {
                    let Some(l) = src.next_source(&ctx.source, &target.source_prefix).await? else {
                        break;
                    };
                    last = Some(l.key.clone());
                    if !own_source_key(target, &l.key) {
                        batch.push(l);
                    }
                }
                Ok::<_, Error>((batch, last))
            };
            let ((batch, last), ()) =
                tokio::try_join!(list_window, dst.prefetch(&ctx.sink, window, true))?;
            let Some(last) = last else { break };
            // Every step progresses: a window at least, or the copier's one object.
            if windows > 0 && ctx.deadline.near(DEADLINE_MARGIN) {
                return Ok(Streamed::Interrupted {
                    left: batch.len() as u64,
                });
            }
            let mut found = HashMap::new();
            for s in &batch {
                let key = destination_key(&s.key, &target.source_prefix, &dst_prefix);
                if let Some(d) = dst.find(&ctx.sink, &key, true).await? {
                    found.insert(key, d);
                }
            }
            let source_objects = batch.len() as u64;
            let plan = plan::decide(ctx, target, batch, found).await?;
            let (deferred, now): (Vec<Candidate>, Vec<Candidate>) = plan
                .to_copy
                .into_iter()
                .partition(|c| rank(&c.source.key) == 2);
            let pending = deferred.len() as u64 + journal.deferred().len() as u64;
            let report = match copy_window(ctx, &now, pending).await? {
                Ok(r) => r,
                Err(stop) => return Ok(stop),
            };
            abort_stale(ctx, &now, &plan.unchanged).await;
            let bound = destination_key(&last, &target.source_prefix, &dst_prefix);
            let (lines, keep, skipped) = window_lines(
                journal.take_entries(),
                Some(&bound),
                &plan.unchanged,
                &report.unchanged,
            );
            journal
                .complete_window(Window {
                    lines,
                    cursor: Some(last),
                    keep,
                    deferred: deferred.into_iter().map(|c| c.source).collect(),
                    tally: Tally {
                        source_objects,
                        skipped,
                        to_copy: now.len() as u64,
                        bytes_to_copy: now.iter().map(|c| c.source.size).sum(),
                    },
                })
                .await?;
            windows += 1;
        }
        journal.set_listed().await?;
    }
    let deferred = journal.deferred();
    if deferred.is_empty() {
        return Ok(Streamed::Done);
    }
    if windows > 0 && ctx.deadline.near(DEADLINE_MARGIN) {
        return Ok(Streamed::Interrupted {
            left: deferred.len() as u64,
        });
    }
    // Decided again: a step that copied some of them before a kill finds them unchanged.
    let found = plan::at_destination(ctx, target, &deferred).await?;
    let plan = plan::decide(ctx, target, deferred, found).await?;
    tracing::info!(
        to_copy = plan.to_copy.len(),
        "every window is done: the deferred metadata.properties last"
    );
    let report = match copy_window(ctx, &plan.to_copy, 0).await? {
        Ok(r) => r,
        Err(stop) => return Ok(stop),
    };
    abort_stale(ctx, &plan.to_copy, &plan.unchanged).await;
    let (lines, _, skipped) = window_lines(
        journal.take_entries(),
        None,
        &plan.unchanged,
        &report.unchanged,
    );
    journal
        .complete_window(Window {
            lines,
            cursor: None,
            keep: Vec::new(),
            deferred: Vec::new(),
            tally: Tally {
                source_objects: 0,
                skipped,
                to_copy: plan.to_copy.len() as u64,
                bytes_to_copy: plan.bytes_to_copy(),
            },
        })
        .await?;
    Ok(Streamed::Done)
}

/// Once a window's objects are verified: uploads still open for them are leftovers of lost
/// answers and killed steps (see [`super::sink::ResumableUploads::abort_stale`]).
async fn abort_stale<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    copied: &[Candidate],
    unchanged: &[Listed],
) {
    if let Some(r) = ctx.sink.resumable() {
        let keys: HashSet<String> = copied
            .iter()
            .map(|c| c.destination_key.clone())
            .chain(unchanged.iter().map(|l| l.key.clone()))
            .collect();
        if !keys.is_empty() {
            r.abort_stale(&keys).await;
        }
    }
}

/// A window's manifest chunk, sorted by key, each key once: the lines of its copies (`carried`:
/// the journal's, up to `bound`; the rest are returned, for a later window), then `skipped` for
/// what was found unchanged and not copied by an earlier attempt. Returns (chunk, kept, skipped).
fn window_lines(
    carried: Vec<Entry>,
    bound: Option<&str>,
    unchanged: &[Listed],
    same: &[Candidate],
) -> (Vec<u8>, Vec<Entry>, u64) {
    let mut lines: BTreeMap<String, Entry> = BTreeMap::new();
    let mut keep = Vec::new();
    for e in carried {
        if bound.is_none_or(|b| e.key.as_str() <= b) {
            lines.insert(e.key.clone(), e);
        } else {
            keep.push(e);
        }
    }
    let same = same.iter().map(|c| Listed {
        key: c.destination_key.clone(),
        size: c.source.size,
        etag: c.source.etag.clone(),
    });
    for l in unchanged.iter().cloned().chain(same) {
        lines.entry(l.key.clone()).or_insert_with(|| Entry {
            checksum: checksum_of_etag(&l.etag),
            key: l.key,
            size: l.size,
            action: "skipped".into(),
        });
    }
    let skipped = lines.values().filter(|e| e.action == "skipped").count() as u64;
    (manifest_lines(lines.values()), keep, skipped)
}

/// Reads the run's manifest back from its chunks, in order (tests).
#[cfg(test)]
pub(super) async fn manifest_text(journal: &Journal) -> String {
    let mut out = Vec::new();
    for n in 0..journal.chunks() {
        out.extend(journal.read_chunk(n).await.unwrap());
    }
    String::from_utf8(out).unwrap()
}

#[cfg(test)]
mod tests;
