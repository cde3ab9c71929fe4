//! What a run has done, kept where a killed or continued run finds it: the checkpoint.
//!
//! The continuation token (≤ 2048 chars) cannot hold a run's progress, so it lives in a
//! checkpoint object: `<checkpoint prefix><execution hash>.json` in S3 (by default
//! `s3://<sourceBucket>/.snapstage/checkpoints/`) or in a local directory (pull mode). It is keyed
//! by the execution key (stable across Lambda retries, duplicate deliveries and continuations;
//! the CLI's `executionId`), and carries a fingerprint of the parameters: a checkpoint of other
//! parameters is never resumed.
//!
//! Format version 3 (a version-2 checkpoint is ignored with a warning: the run starts over, and
//! what it copied is found unchanged at the destination). A streamed run (the default: not
//! mirror, dry-run or shard mode; see `window.rs`) keeps it small, whatever the number of objects:
//! - the counters, the multipart uploads in flight (at most `concurrency`), the deferred
//!   `metadata.properties` keys (copied last: a handful);
//! - `cursor`: the last source key whose window is completely done (copied and verified, or
//!   unchanged). A resumed step lists the source after it and the destination after its
//!   destination key: nothing before it is listed again;
//! - the manifest lines of the window in progress (at most one window's: `window.rs`'s
//!   `WINDOW_OBJECTS` × ~150 bytes); each completed window's lines are a chunk object beside the
//!   checkpoint (`<checkpoint key without .json>/manifest/000042.jsonl`, or a file in a directory
//!   of that name in pull mode), written before the checkpoint that moves the cursor past them
//!   (a crash between the two writes the same chunk again); `chunks` counts them. The manifest is
//!   assembled from the chunks in order at the end.
//!
//! Mirror, dry-run and shard modes list everything at once and keep every manifest line in the
//! checkpoint (`entries`), as before.
//!
//! It is written when a multipart upload starts (its upload id must survive a kill), at most
//! every [`SAVE_INTERVAL`] as objects complete, after each window, before every `Continue` and
//! after a failure; it and its chunks are deleted when the run is done. The destination stays
//! the truth for what is copied: a run killed between two saves loses only the manifest lines of
//! the objects it copied since the last save: those objects are found unchanged at the
//! destination and reported as skipped, never copied twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use super::compare::Listed;
use super::params::{CheckpointLocation, S3Url};
use crate::aws::aws_error;
use crate::error::{Error, Result};

/// Longest time between two checkpoint saves while objects complete.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(5);
const VERSION: u32 = 3;

/// Counters of the whole run, across steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub copied: u64,
    pub bytes: u64,
    pub verified: u64,
    #[serde(default)]
    pub deleted: u64,
    /// Wall time of the steps so far (for the throughput).
    #[serde(default)]
    pub elapsed_ms: u64,
}

/// A multipart upload that a later step (or a re-run after a kill) continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub upload_id: String,
    pub part_size: u64,
    pub source_etag: String,
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    /// `sha256:<hex>` of what was written, or `etag:<etag>` when the content was not read.
    pub checksum: String,
    /// `copied`, `skipped`, `deleted`, `would-copy`, `would-delete`.
    pub action: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub execution: String,
    pub fingerprint: String,
    pub progress: Progress,
    #[serde(default)]
    pub uploads: BTreeMap<String, Upload>,
    /// Copied and deleted objects, in the order they completed: a streamed run's since its last
    /// chunk (the window in progress), every one otherwise.
    #[serde(default)]
    pub entries: Vec<Entry>,
    /// Streamed: the last source key whose window is done.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Streamed: manifest chunks written (numbered from 0).
    #[serde(default)]
    pub chunks: u64,
    /// Streamed: every window is done; only the deferred keys are left.
    #[serde(default)]
    pub listed: bool,
    /// Streamed: `metadata.properties` source objects to copy after every window.
    #[serde(default)]
    pub deferred: Vec<Listed>,
    /// Streamed: what the completed windows found.
    #[serde(default)]
    pub tally: Tally,
}

/// What a streamed run's completed windows found (the counters of what it did are [`Progress`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Source objects listed (snapstage's own left out).
    pub source_objects: u64,
    /// Manifest lines `skipped`.
    pub skipped: u64,
    pub to_copy: u64,
    pub bytes_to_copy: u64,
}

/// A completed window, for [`Journal::complete_window`].
#[derive(Debug, Default)]
pub struct Window {
    /// Its manifest lines (the chunk), sorted by key.
    pub lines: Vec<u8>,
    /// The last source key it covered; `None`: the cursor stays (the deferred keys' window).
    pub cursor: Option<String>,
    /// Lines of the window in progress that belong to a later window (kept).
    pub keep: Vec<Entry>,
    /// Deferred keys found; with `cursor` `None`, they replace the deferred keys (copied).
    pub deferred: Vec<Listed>,
    pub tally: Tally,
}

/// Where the checkpoint is stored.
#[derive(Debug, Clone)]
pub enum Store {
    S3 { client: Client, url: S3Url },
    File(PathBuf),
}

impl Store {
    /// The checkpoint of one execution under `location`.
    pub fn new(location: &CheckpointLocation, client: &Client, execution: &str) -> Self {
        let name = format!(
            "{}.json",
            hex::encode(&crate::digest::sha256(execution.as_bytes())[..12])
        );
        match location {
            CheckpointLocation::S3(u) => Store::S3 {
                client: client.clone(),
                url: S3Url {
                    bucket: u.bucket.clone(),
                    key: format!("{}{name}", u.key),
                },
            },
            CheckpointLocation::Directory(d) => Store::File(d.join(name)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Store::S3 { url, .. } => url.to_string(),
            Store::File(p) => p.display().to_string(),
        }
    }

    /// Where manifest chunk `n` is: beside the checkpoint, in a folder of its name.
    fn chunk(&self, n: u64) -> Store {
        let name = format!("manifest/{n:06}.jsonl");
        match self {
            Store::S3 { client, url } => Store::S3 {
                client: client.clone(),
                url: S3Url {
                    bucket: url.bucket.clone(),
                    key: format!(
                        "{}/{name}",
                        url.key.strip_suffix(".json").unwrap_or(&url.key)
                    ),
                },
            },
            Store::File(p) => Store::File(p.with_extension("").join(name)),
        }
    }

    async fn load(&self) -> Result<Option<Vec<u8>>> {
        match self {
            Store::S3 { client, url } => {
                match client
                    .get_object()
                    .bucket(&url.bucket)
                    .key(&url.key)
                    .send()
                    .await
                {
                    Ok(out) => {
                        let body = out.body.collect().await.map_err(|e| {
                            Error::Unavailable {
                                backend: "s3",
                                message: format!("reading the checkpoint {url}: {e}"),
                                source: None,
                            }
                            .caused_by(e)
                        })?;
                        Ok(Some(body.into_bytes().to_vec()))
                    }
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                    Err(e) => Err(aws_error("s3", &format!("GetObject {url} (checkpoint)"), e)),
                }
            }
            Store::File(p) => match tokio::fs::read(p).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Configuration(format!(
                    "reading the checkpoint {}: {e}",
                    p.display()
                ))),
            },
        }
    }

    async fn save(&self, body: Vec<u8>) -> Result<()> {
        match self {
            Store::S3 { client, url } => {
                client
                    .put_object()
                    .bucket(&url.bucket)
                    .key(&url.key)
                    .content_type("application/json")
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| aws_error("s3", &format!("PutObject {url} (checkpoint)"), e))?;
                Ok(())
            }
            Store::File(p) => {
                if let Some(dir) = p.parent() {
                    tokio::fs::create_dir_all(dir).await.map_err(|e| {
                        Error::Configuration(format!("creating {}: {e}", dir.display()))
                    })?;
                }
                super::local::write_atomically(p, &body).await
            }
        }
    }

    async fn delete(&self) -> Result<()> {
        match self {
            Store::S3 { client, url } => {
                client
                    .delete_object()
                    .bucket(&url.bucket)
                    .key(&url.key)
                    .send()
                    .await
                    .map_err(|e| aws_error("s3", &format!("DeleteObject {url} (checkpoint)"), e))?;
                Ok(())
            }
            Store::File(p) => match tokio::fs::remove_file(p).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Configuration(
                    format!("removing the checkpoint {}: {e}", p.display()),
                )),
                _ => Ok(()),
            },
        }
    }
}

/// The run's journal: the checkpoint in memory, shared by the copy workers, saved to the store.
#[derive(Debug)]
pub struct Journal {
    store: Store,
    state: StdMutex<Checkpoint>,
    /// Serializes saves, so the last save holds the newest state.
    saving: tokio::sync::Mutex<Instant>,
    /// Objects this step completed.
    step_done: StdMutex<u64>,
}

impl Journal {
    /// Opens the journal of `execution`: the stored checkpoint when it belongs to these
    /// parameters, else a new one.
    pub async fn open(store: Store, execution: &str, fingerprint: &str) -> Result<(Self, bool)> {
        let mut resumed = false;
        let mut state = Checkpoint {
            version: VERSION,
            execution: execution.to_string(),
            fingerprint: fingerprint.to_string(),
            ..Checkpoint::default()
        };
        if let Some(bytes) = store.load().await? {
            match serde_json::from_slice::<Checkpoint>(&bytes) {
                Ok(c)
                    if c.version == VERSION
                        && c.execution == execution
                        && c.fingerprint == fingerprint =>
                {
                    state = c;
                    resumed = true;
                }
                Ok(_) => tracing::warn!(
                    checkpoint = %store.describe(),
                    "the checkpoint belongs to other parameters or another version; starting over"
                ),
                Err(e) => tracing::warn!(
                    checkpoint = %store.describe(),
                    error = %e,
                    "the checkpoint is unreadable; starting over"
                ),
            }
        }
        Ok((
            Self {
                store,
                state: StdMutex::new(state),
                saving: tokio::sync::Mutex::new(Instant::now()),
                step_done: StdMutex::new(0),
            },
            resumed,
        ))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Checkpoint) -> T) -> T {
        let mut g = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    pub fn progress(&self) -> Progress {
        self.with(|c| c.progress)
    }

    pub fn add_elapsed(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.with(|c| c.progress.elapsed_ms = c.progress.elapsed_ms.saturating_add(ms));
    }

    pub fn upload(&self, key: &str) -> Option<Upload> {
        self.with(|c| c.uploads.get(key).cloned())
    }

    pub fn uploads(&self) -> BTreeMap<String, Upload> {
        self.with(|c| c.uploads.clone())
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.with(|c| c.entries.clone())
    }

    /// Whether this run already copied or deleted `key`.
    pub fn done_keys(&self) -> std::collections::HashSet<String> {
        self.with(|c| c.entries.iter().map(|e| e.key.clone()).collect())
    }

    /// Objects completed in this step.
    pub fn step_done(&self) -> u64 {
        *self
            .step_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a new multipart upload and saves at once: its id must survive a kill.
    pub async fn started_upload(&self, key: &str, upload: Upload) -> Result<()> {
        self.with(|c| c.uploads.insert(key.to_string(), upload));
        self.save().await
    }

    pub fn forget_upload(&self, key: &str) {
        self.with(|c| c.uploads.remove(key));
    }

    /// Records a copied and verified object (and saves when the last save is old).
    pub async fn copied(&self, entry: Entry) -> Result<()> {
        self.with(|c| {
            c.uploads.remove(&entry.key);
            c.progress.copied += 1;
            c.progress.verified += 1;
            c.progress.bytes += entry.size;
            c.entries.push(entry);
        });
        self.completed_one().await
    }

    pub async fn deleted(&self, entry: Entry) -> Result<()> {
        self.with(|c| {
            c.progress.deleted += 1;
            c.entries.push(entry);
        });
        self.completed_one().await
    }

    async fn completed_one(&self) -> Result<()> {
        *self
            .step_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        let due = self.saving.lock().await.elapsed() >= SAVE_INTERVAL;
        if due { self.save().await } else { Ok(()) }
    }

    /// Writes the checkpoint.
    pub async fn save(&self) -> Result<()> {
        let mut last = self.saving.lock().await;
        let body = self
            .with(|c| serde_json::to_vec(c))
            .map_err(|e| Error::Internal(format!("checkpoint: {e}")))?;
        self.store.save(body).await?;
        *last = Instant::now();
        Ok(())
    }

    /// The run is done: the checkpoint goes, then its manifest chunks (a crash between the two
    /// leaves chunks no checkpoint names, under the checkpoint prefix).
    pub async fn finish(&self) -> Result<()> {
        let _last = self.saving.lock().await;
        self.store.delete().await?;
        let chunks = self.with(|c| c.chunks);
        for n in 0..chunks {
            self.store.chunk(n).delete().await?;
        }
        if let Store::File(p) = &self.store
            && chunks > 0
        {
            let _ = tokio::fs::remove_dir_all(p.with_extension("")).await;
        }
        Ok(())
    }

    /// Streamed: where the last completed window ended.
    pub fn cursor(&self) -> Option<String> {
        self.with(|c| c.cursor.clone())
    }

    /// Streamed: whether every window is done.
    pub fn listed(&self) -> bool {
        self.with(|c| c.listed)
    }

    pub fn deferred(&self) -> Vec<Listed> {
        self.with(|c| c.deferred.clone())
    }

    pub fn tally(&self) -> Tally {
        self.with(|c| c.tally)
    }

    pub fn chunks(&self) -> u64 {
        self.with(|c| c.chunks)
    }

    /// The lines of the window in progress, taken out (a streamed run puts them in a chunk).
    pub fn take_entries(&self) -> Vec<Entry> {
        self.with(|c| std::mem::take(&mut c.entries))
    }

    /// Streamed: the last window is done; saved.
    pub async fn set_listed(&self) -> Result<()> {
        self.with(|c| c.listed = true);
        self.save().await
    }

    /// Streamed: writes the window's chunk, then the checkpoint that counts it (with the cursor
    /// past the window). Both are idempotent: a crash between them writes the chunk again.
    pub async fn complete_window(&self, w: Window) -> Result<()> {
        let n = self.with(|c| c.chunks);
        self.store.chunk(n).save(w.lines).await?;
        self.with(|c| {
            c.chunks = n + 1;
            c.entries = w.keep;
            match w.cursor {
                Some(k) => {
                    c.cursor = Some(k);
                    c.deferred.extend(w.deferred);
                }
                None => c.deferred = w.deferred,
            }
            c.tally.source_objects += w.tally.source_objects;
            c.tally.skipped += w.tally.skipped;
            c.tally.to_copy += w.tally.to_copy;
            c.tally.bytes_to_copy += w.tally.bytes_to_copy;
        });
        self.save().await
    }

    /// Streamed: manifest chunk `n` as written.
    pub async fn read_chunk(&self, n: u64) -> Result<Vec<u8>> {
        let chunk = self.store.chunk(n);
        chunk.load().await?.ok_or_else(|| {
            Error::Configuration(format!(
                "the manifest chunk {} of the checkpoint {} is gone: run again with another \
                 execution id to start over (what is copied is found unchanged)",
                chunk.describe(),
                self.describe()
            ))
        })
    }
}

/// The manifest as JSON lines.
pub fn manifest_lines<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if let Ok(line) = serde_json::to_vec(e) {
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
    }
    out
}

/// A zip archive holding one stored (uncompressed) file: CodePipeline's artifact format.
pub fn zip_one(name: &str, data: &[u8]) -> Vec<u8> {
    let crc = crc32(data);
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut z = zip_head(name, crc, size);
    z.extend_from_slice(data);
    z.extend_from_slice(&zip_tail(name, crc, size));
    z
}

/// 1980-01-01 00:00, the DOS epoch: (time, date).
const DOS_EPOCH: (u16, u16) = (0, (1 << 5) | 1);

fn zip_name(name: &str) -> (&[u8], u16) {
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    (&name.as_bytes()[..usize::from(len)], len)
}

/// The local header of a zip's one stored file of `size` bytes with CRC-32 `crc`, at offset 0:
/// the file's bytes follow it, then [`zip_tail`]. The CRC and the size are in the header (no data
/// descriptor: every zip reader takes that), so a streamed writer reads its data twice.
pub fn zip_head(name: &str, crc: u32, size: u32) -> Vec<u8> {
    let (name, name_len) = zip_name(name);
    let (time, date) = DOS_EPOCH;
    let mut z = Vec::with_capacity(30 + name.len());
    z.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    z.extend_from_slice(&20u16.to_le_bytes()); // version needed
    z.extend_from_slice(&0u16.to_le_bytes()); // flags
    z.extend_from_slice(&0u16.to_le_bytes()); // stored
    z.extend_from_slice(&time.to_le_bytes());
    z.extend_from_slice(&date.to_le_bytes());
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&name_len.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(name);
    z
}

/// The central directory and its end record, after [`zip_head`] and the file's `size` bytes.
pub fn zip_tail(name: &str, crc: u32, size: u32) -> Vec<u8> {
    let (name_bytes, name_len) = zip_name(name);
    let (time, date) = DOS_EPOCH;
    let local = 0u32;
    let central = (30 + name_bytes.len() as u32).saturating_add(size);
    let mut z = Vec::with_capacity(46 + 22 + name_bytes.len());
    z.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    z.extend_from_slice(&20u16.to_le_bytes()); // version made by
    z.extend_from_slice(&20u16.to_le_bytes()); // version needed
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(&time.to_le_bytes());
    z.extend_from_slice(&date.to_le_bytes());
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&name_len.to_le_bytes());
    z.extend_from_slice(&[0u8; 8]); // extra, comment lengths, disk start, internal attrs
    z.extend_from_slice(&0u32.to_le_bytes()); // external attrs
    z.extend_from_slice(&local.to_le_bytes());
    z.extend_from_slice(name_bytes);
    let central_len = z.len() as u32;
    z.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    z.extend_from_slice(&[0u8; 4]); // disk numbers
    z.extend_from_slice(&1u16.to_le_bytes());
    z.extend_from_slice(&1u16.to_le_bytes());
    z.extend_from_slice(&central_len.to_le_bytes());
    z.extend_from_slice(&central.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

/// CRC-32 (IEEE), as zip uses it.
pub fn crc32(data: &[u8]) -> u32 {
    !crc32_update(!0u32, data)
}

/// CRC-32 over data given in pieces: start from `!0`, invert the end.
pub fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            !crc32_update(crc32_update(!0, b"1234"), b"56789"),
            0xCBF4_3926
        );
    }

    #[test]
    fn zips_hold_the_file_where_readers_look() {
        let z = zip_one("manifest.jsonl", b"{\"key\":\"a\"}\n");
        assert_eq!(&z[..4], b"PK\x03\x04");
        let eocd = z.len() - 22;
        assert_eq!(&z[eocd..eocd + 4], b"PK\x05\x06");
        let cd = u32::from_le_bytes([z[eocd + 16], z[eocd + 17], z[eocd + 18], z[eocd + 19]]);
        assert_eq!(&z[cd as usize..cd as usize + 4], b"PK\x01\x02");
        // The central directory is one 46-byte header and the name, ending where the EOCD starts.
        let cd_len = u32::from_le_bytes([z[eocd + 12], z[eocd + 13], z[eocd + 14], z[eocd + 15]]);
        assert_eq!(cd_len as usize, 46 + "manifest.jsonl".len());
        assert_eq!(cd as usize + cd_len as usize, eocd);
        assert!(z.windows(14).any(|w| w == b"manifest.jsonl"));
    }

    #[test]
    fn manifest_lines_are_one_json_object_each() {
        let e = Entry {
            key: "a.bytes".into(),
            size: 3,
            checksum: "sha256:00".into(),
            action: "copied".into(),
        };
        let text = String::from_utf8(manifest_lines(&[e.clone(), e])).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["action"], "copied");
    }
}
