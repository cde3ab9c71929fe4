//! What a run has done, kept where a killed or continued run finds it: the checkpoint.
//!
//! The continuation token (≤ 2048 chars) cannot hold a run's manifest or its in-flight multipart
//! uploads, so they live in a checkpoint object: `<checkpoint prefix><execution hash>.json` in S3
//! (by default `s3://<sourceBucket>/.snapstage/checkpoints/`) or in a local directory (pull mode).
//! It is keyed by the execution key (stable across Lambda retries, duplicate deliveries and
//! continuations; the CLI's `executionId`), and carries a fingerprint of the parameters: a
//! checkpoint of other parameters is never resumed.
//!
//! It is written when a multipart upload starts (its upload id must survive a kill), at most
//! every [`SAVE_INTERVAL`] as objects complete, before every `Continue` and after a failure; it
//! is deleted when the run is done. The destination stays the truth for what is copied: the
//! checkpoint adds the counters, the manifest lines and the upload ids. A run killed between two
//! saves loses only the manifest lines of the objects it copied since the last save: those
//! objects are found unchanged at the destination and reported as skipped, never copied twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use super::params::{CheckpointLocation, S3Url};
use crate::aws::aws_error;
use crate::error::{Error, Result};

/// Longest time between two checkpoint saves while objects complete.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(5);
const VERSION: u32 = 2;

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
    /// Copied and deleted objects, in the order they completed.
    #[serde(default)]
    pub entries: Vec<Entry>,
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
            Store::File(p) => super::local::write_atomically(p, &body).await,
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

    /// The run is done: the checkpoint goes.
    pub async fn finish(&self) -> Result<()> {
        let _last = self.saving.lock().await;
        self.store.delete().await
    }
}

/// The manifest as JSON lines.
pub fn manifest_lines(entries: &[Entry]) -> Vec<u8> {
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
    let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let name = &name.as_bytes()[..usize::from(name_len)];
    // 1980-01-01 00:00, the DOS epoch.
    let (time, date) = (0u16, (1u16 << 5) | 1);
    let mut z = Vec::with_capacity(data.len() + 200);
    let local = z.len() as u32;
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
    z.extend_from_slice(data);
    let central = z.len() as u32;
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
    z.extend_from_slice(name);
    let central_len = z.len() as u32 - central;
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
    let mut crc = !0u32;
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
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
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
