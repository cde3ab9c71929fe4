//! Tests: an in-memory [`Source`] and [`Sink`], with faults to order — reads that return
//! corrupted bytes, parts the destination stores garbled, writes refused, writes that take a
//! while (under tokio's paused clock: a deadline reached mid-run) — and a log of the calls, so a
//! test checks what a user would see at the destination.
//!
//! `MemorySink` behaves like an S3 bucket: ETags are MD5s (or `md5-of-part-md5s-N`), writes
//! carry the source ETag and SHA-256 as metadata, and with `resumable` its uploads are
//! [`ResumableUploads`] that a later step continues.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use md5::Digest as _;
use tokio::sync::OwnedSemaphorePermit;

use super::compare::{
    DestinationHead, HeadVerdict, Listed, ListingVerdict, compare_head, compare_listing, meta,
    multipart_etag,
};
use super::object::{Attempt, Problem, SourceInfo};
use super::sink::{BoxFuture, Comparison, Object, Parts, ResumableUploads, Sink, Upload};
use super::source::{Body, Fetched, Page, Source, SourceHead};
use super::{SHA256_METADATA, SOURCE_ETAG_METADATA};
use crate::error::{Error, Result};

fn md5(data: &[u8]) -> [u8; 16] {
    md5::Md5::digest(data).into()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Flips the first byte.
fn garble(data: &[u8]) -> Bytes {
    let mut v = data.to_vec();
    if let Some(b) = v.first_mut() {
        *b ^= 0xff;
    }
    Bytes::from(v)
}

#[derive(Debug, Clone)]
struct Stored {
    data: Bytes,
    etag: String,
    /// The part size of a multipart object.
    part_size: Option<u64>,
}

#[derive(Debug, Default)]
struct SourceState {
    objects: BTreeMap<String, Stored>,
    /// GETs answered, as `key` or `key@start-end`.
    reads: Vec<String>,
    /// Key → how many more GETs answer corrupted bytes.
    corrupt: HashMap<String, usize>,
    /// The `start_after` of each listing begun with [`Source::list_page`] (a first page).
    listings: Vec<Option<String>>,
}

/// Objects in a page of [`MemorySource::list_page`]: small, so a test's listing has many pages.
pub const MEMORY_PAGE: usize = 7;

/// A bucket in memory.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    state: Arc<Mutex<SourceState>>,
}

impl MemorySource {
    /// Stores `data` as one PutObject would: the ETag is its MD5.
    pub fn put(&self, key: &str, data: &[u8]) -> Listed {
        self.store(key, data, hex::encode(md5(data)), None)
    }

    /// Stores `data` as a multipart upload of `part_size` parts.
    pub fn put_multipart(&self, key: &str, data: &[u8], part_size: usize) -> Listed {
        let md5s: Vec<[u8; 16]> = data.chunks(part_size).map(md5).collect();
        self.store(key, data, multipart_etag(&md5s), Some(part_size as u64))
    }

    fn store(&self, key: &str, data: &[u8], etag: String, part_size: Option<u64>) -> Listed {
        let stored = Stored {
            data: Bytes::copy_from_slice(data),
            etag: etag.clone(),
            part_size,
        };
        lock(&self.state).objects.insert(key.to_string(), stored);
        Listed {
            key: key.to_string(),
            size: data.len() as u64,
            etag,
        }
    }

    /// The next `times` GETs of `key` answer with a corrupted body (a bad disk, a proxy).
    pub fn corrupt_reads(&self, key: &str, times: usize) {
        lock(&self.state).corrupt.insert(key.to_string(), times);
    }

    /// Where each paged listing began (`start_after`), in order.
    pub fn listings(&self) -> Vec<Option<String>> {
        lock(&self.state).listings.clone()
    }

    /// The GETs answered so far.
    pub fn reads(&self) -> Vec<String> {
        lock(&self.state).reads.clone()
    }

    fn info(s: &Stored) -> SourceInfo {
        SourceInfo {
            etag: s.etag.clone(),
            etag_is_md5: true,
            content_type: Some("application/octet-stream".into()),
            ..SourceInfo::default()
        }
    }
}

impl Body for Bytes {
    async fn bytes(self) -> std::result::Result<Bytes, String> {
        Ok(self)
    }

    fn into_byte_stream(self) -> aws_sdk_s3::primitives::ByteStream {
        aws_sdk_s3::primitives::ByteStream::from(self)
    }
}

impl Source for MemorySource {
    type Body = Bytes;

    fn describe(&self, key: &str) -> String {
        format!("memory://source/{key}")
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        Ok(lock(&self.state)
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| Listed {
                key: k.clone(),
                size: s.data.len() as u64,
                etag: s.etag.clone(),
            })
            .collect())
    }

    /// Pages of [`MEMORY_PAGE`] objects; the token is the last key of the page before.
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<String>,
    ) -> Result<Page> {
        let mut st = lock(&self.state);
        if token.is_none() {
            st.listings.push(start_after.map(str::to_string));
        }
        let after = token.as_deref().or(start_after);
        let items: Vec<Listed> = st
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
            .take(MEMORY_PAGE + 1)
            .map(|(k, s)| Listed {
                key: k.clone(),
                size: s.data.len() as u64,
                etag: s.etag.clone(),
            })
            .collect();
        let more = items.len() > MEMORY_PAGE;
        let items: Vec<Listed> = items.into_iter().take(MEMORY_PAGE).collect();
        let next = more.then(|| items.last().map(|l| l.key.clone())).flatten();
        Ok(Page { items, next })
    }

    async fn head(
        &self,
        key: &str,
        if_match: Option<&str>,
        part: Option<u64>,
    ) -> Attempt<Option<SourceHead>> {
        let st = lock(&self.state);
        let Some(s) = st.objects.get(key) else {
            return Ok(None);
        };
        if if_match.is_some_and(|e| e != s.etag) {
            return Err(Problem::SourceChanged);
        }
        let size = s.data.len() as u64;
        let size = match (part, s.part_size) {
            (Some(n), Some(p)) => (size - (n - 1) * p).min(p),
            _ => size,
        };
        Ok(Some(SourceHead {
            size,
            info: Self::info(s),
        }))
    }

    async fn get(
        &self,
        key: &str,
        if_match: Option<&str>,
        range: Option<(u64, u64)>,
        info: bool,
    ) -> Attempt<Fetched<Bytes>> {
        let mut st = lock(&self.state);
        let Some(s) = st.objects.get(key).cloned() else {
            return Err(Problem::Fatal(Error::NotFound {
                backend: "memory",
                message: format!("GetObject {key}: NoSuchKey"),
                source: None,
            }));
        };
        if if_match.is_some_and(|e| e != s.etag) {
            return Err(Problem::SourceChanged);
        }
        let (start, end) = range.unwrap_or((0, s.data.len() as u64));
        let mut body = s.data.slice(start as usize..end as usize);
        st.reads.push(match range {
            Some((a, b)) => format!("{key}@{a}-{b}"),
            None => key.to_string(),
        });
        if let Some(n) = st.corrupt.get_mut(key).filter(|n| **n > 0) {
            *n -= 1;
            body = garble(&body);
        }
        Ok(Fetched {
            etag: s.etag.clone(),
            content_length: Some(body.len() as u64),
            info: info.then(|| Self::info(&s)),
            body,
        })
    }
}

/// An object at the destination.
#[derive(Debug, Clone)]
pub struct Kept {
    pub data: Bytes,
    pub etag: String,
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct MemoryUploadState {
    key: String,
    parts: BTreeMap<u64, Bytes>,
    metadata: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct SinkState {
    objects: BTreeMap<String, Kept>,
    uploads: BTreeMap<String, MemoryUploadState>,
    next_id: u64,
    /// Calls: `put k`, `verify k`, `begin k`, `part k n`, `complete k`, `abort k`, `delete k`.
    calls: Vec<String>,
    /// (key, part) → how many more times it is stored garbled (part 1 for a put).
    garble: HashMap<(String, u64), usize>,
    /// Keys whose writes are refused.
    refused: HashSet<String>,
    /// (key, part) → how long its write takes.
    slow: HashMap<(String, u64), Duration>,
}

/// A bucket in memory, as the destination.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    state: Arc<Mutex<SinkState>>,
    /// Whether its uploads are [`ResumableUploads`] (like S3's) or restart (like a file's).
    pub resumable: bool,
}

impl MemorySink {
    pub fn resumable() -> Self {
        Self {
            resumable: true,
            ..Self::default()
        }
    }

    /// Stores `data` under `key` as an earlier copy of `source` would have.
    pub fn preload(&self, key: &str, data: &[u8], source: &Listed) {
        let kept = Kept {
            data: Bytes::copy_from_slice(data),
            etag: source.etag.clone(),
            metadata: [(SOURCE_ETAG_METADATA.to_string(), source.etag.clone())]
                .into_iter()
                .collect(),
        };
        lock(&self.state).objects.insert(key.to_string(), kept);
    }

    /// The next `times` writes of part `part` of `key` (1 for a whole object) are stored with a
    /// flipped byte.
    pub fn garble(&self, key: &str, part: u64, times: usize) {
        lock(&self.state)
            .garble
            .insert((key.to_string(), part), times);
    }

    /// Writes of `key` are refused (AccessDenied).
    pub fn refuse(&self, key: &str) {
        lock(&self.state).refused.insert(key.to_string());
    }

    /// Writing part `part` of `key` (1 for a whole object) takes `d`.
    pub fn slow(&self, key: &str, part: u64, d: Duration) {
        lock(&self.state).slow.insert((key.to_string(), part), d);
    }

    pub fn object(&self, key: &str) -> Option<Kept> {
        lock(&self.state).objects.get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        lock(&self.state).objects.keys().cloned().collect()
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// Keys of the uploads still open.
    pub fn open_uploads(&self) -> Vec<String> {
        lock(&self.state)
            .uploads
            .values()
            .map(|u| u.key.clone())
            .collect()
    }

    fn call(&self, c: String) {
        lock(&self.state).calls.push(c);
    }

    /// Applies the faults ordered for (key, part): the delay, a refusal, the bytes stored.
    async fn write(state: &Mutex<SinkState>, key: &str, part: u64, data: &Bytes) -> Attempt<Bytes> {
        let delay = lock(state).slow.get(&(key.to_string(), part)).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut st = lock(state);
        if st.refused.contains(key) {
            return Err(Problem::Fatal(Error::Permission {
                backend: "memory",
                message: format!("writing {key}: AccessDenied"),
                source: None,
            }));
        }
        Ok(match st.garble.get_mut(&(key.to_string(), part)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                garble(data)
            }
            _ => data.clone(),
        })
    }

    fn head(&self, key: &str) -> Option<DestinationHead> {
        lock(&self.state).objects.get(key).map(|k| DestinationHead {
            size: k.data.len() as u64,
            etag: k.etag.clone(),
            etag_is_md5: true,
            metadata: k.metadata.clone(),
        })
    }

    /// What S3's HeadObject check does: size, ETag, recorded source ETag.
    fn check(&self, object: Object<'_>, expected_etag: &str) -> Attempt<()> {
        let Some(h) = self.head(object.key) else {
            return Err(Problem::Retry(format!("{} is not there", object.key)));
        };
        let recorded = meta(&h.metadata, SOURCE_ETAG_METADATA);
        if h.size != object.source.size
            || h.etag != expected_etag
            || recorded != Some(object.source.etag.as_str())
        {
            return Err(Problem::Retry(format!(
                "not verified after the write: ETag {:?}, expected {expected_etag:?}",
                h.etag
            )));
        }
        Ok(())
    }
}

impl Sink for MemorySink {
    type Written = String;
    type Upload = MemoryUpload;

    fn describe_key(&self, key: &str) -> String {
        format!("memory://sink/{key}")
    }

    fn prefix(&self) -> &str {
        ""
    }

    async fn list(&self, _clean: bool) -> Result<Vec<Listed>> {
        Ok(lock(&self.state)
            .objects
            .iter()
            .map(|(k, o)| Listed {
                key: k.clone(),
                size: o.data.len() as u64,
                etag: o.etag.clone(),
            })
            .collect())
    }

    async fn compare<R: Source>(
        &self,
        _source: &R,
        key: &str,
        src: &Listed,
        listed: Option<&Listed>,
    ) -> Result<Comparison> {
        let copy = Comparison::Copy {
            destination_sha256: None,
        };
        Ok(match compare_listing(src, listed) {
            ListingVerdict::Unchanged => Comparison::Unchanged,
            ListingVerdict::New | ListingVerdict::Changed => copy,
            ListingVerdict::NeedsHead => match self.head(key).map(|h| compare_head(src, &h)) {
                Some(HeadVerdict::Unchanged) => Comparison::Unchanged,
                Some(HeadVerdict::Copy { destination_sha256 }) => {
                    Comparison::Copy { destination_sha256 }
                }
                None => copy,
            },
        })
    }

    async fn put(
        &self,
        object: Object<'_>,
        body: Bytes,
        md5_: [u8; 16],
        sha256: &str,
    ) -> Attempt<String> {
        self.call(format!("put {}", object.key));
        let stored = Self::write(&self.state, object.key, 1, &body).await?;
        let kept = Kept {
            etag: hex::encode(md5(&stored)),
            data: stored,
            metadata: object
                .info
                .destination_metadata(&object.source.etag, Some(sha256)),
        };
        lock(&self.state)
            .objects
            .insert(object.key.to_string(), kept);
        Ok(hex::encode(md5_))
    }

    async fn verify(&self, object: Object<'_>, expected_etag: String) -> Attempt<()> {
        self.call(format!("verify {}", object.key));
        self.check(object, &expected_etag)
    }

    async fn begin(&self, object: Object<'_>) -> Attempt<MemoryUpload> {
        self.call(format!("begin {}", object.key));
        let mut st = lock(&self.state);
        if st.refused.contains(object.key) {
            return Err(Problem::Fatal(Error::Permission {
                backend: "memory",
                message: format!("CreateMultipartUpload {}: AccessDenied", object.key),
                source: None,
            }));
        }
        st.next_id += 1;
        let id = format!("upload-{}", st.next_id);
        st.uploads.insert(
            id.clone(),
            MemoryUploadState {
                key: object.key.to_string(),
                metadata: object.info.destination_metadata(&object.source.etag, None),
                ..MemoryUploadState::default()
            },
        );
        drop(st);
        Ok(self.upload(object.key, id))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.call(format!("delete {key}"));
        lock(&self.state).objects.remove(key);
        Ok(())
    }

    fn resumable(&self) -> Option<&dyn ResumableUploads<MemoryUpload>> {
        if self.resumable { Some(self) } else { None }
    }
}

impl MemorySink {
    fn upload(&self, key: &str, id: String) -> MemoryUpload {
        MemoryUpload {
            sink: self.clone(),
            key: key.to_string(),
            id,
        }
    }
}

impl ResumableUploads<MemoryUpload> for MemorySink {
    fn resume<'a>(
        &'a self,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(MemoryUpload, Parts)>> {
        Box::pin(async move {
            let parts: Parts = {
                let st = lock(&self.state);
                let u = st.uploads.get(id).ok_or_else(|| Error::NotFound {
                    backend: "memory",
                    message: format!("ListParts {key}: NoSuchUpload"),
                    source: None,
                })?;
                u.parts
                    .iter()
                    .map(|(n, d)| (*n, (hex::encode(md5(d)), d.len() as u64)))
                    .collect()
            };
            self.call(format!("resume {key}"));
            Ok((self.upload(key, id.to_string()), parts))
        })
    }

    fn abort<'a>(&'a self, key: &'a str, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.call(format!("abort {key}"));
            lock(&self.state).uploads.remove(id);
        })
    }

    fn abort_stale<'a>(&'a self, keys: &'a HashSet<String>) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let mut st = lock(&self.state);
            let before = st.uploads.len();
            st.uploads.retain(|_, u| !keys.contains(&u.key));
            before - st.uploads.len()
        })
    }
}

/// An upload into [`MemorySink`].
#[derive(Debug)]
pub struct MemoryUpload {
    sink: MemorySink,
    key: String,
    id: String,
}

impl Upload for MemoryUpload {
    fn id(&self) -> Option<&str> {
        self.sink.resumable.then_some(self.id.as_str())
    }

    async fn part(
        &mut self,
        n: u64,
        data: Bytes,
        md5_: [u8; 16],
        permit: OwnedSemaphorePermit,
    ) -> Attempt<()> {
        self.sink.call(format!("part {} {n}", self.key));
        let stored = MemorySink::write(&self.sink.state, &self.key, n, &data).await?;
        drop(permit);
        let answered = md5(&stored);
        if let Some(u) = lock(&self.sink.state).uploads.get_mut(&self.id) {
            u.parts.insert(n, stored);
        }
        if answered != md5_ {
            return Err(Problem::Retry(format!(
                "part {n} of {}: the destination answered ETag {}, the part's MD5 is {}",
                self.key,
                hex::encode(answered),
                hex::encode(md5_)
            )));
        }
        Ok(())
    }

    async fn flush(&mut self) -> Attempt<()> {
        Ok(())
    }

    async fn complete(self, object: Object<'_>, part_md5s: &[[u8; 16]], _: &str) -> Attempt<()> {
        self.sink.call(format!("complete {}", self.key));
        {
            let mut st = lock(&self.sink.state);
            let Some(u) = st.uploads.remove(&self.id) else {
                return Err(Problem::Retry(format!("{}: NoSuchUpload", self.key)));
            };
            let md5s: Vec<[u8; 16]> = u.parts.values().map(|d| md5(d)).collect();
            let data: Vec<u8> = u.parts.values().flat_map(|d| d.iter().copied()).collect();
            st.objects.insert(
                u.key,
                Kept {
                    data: Bytes::from(data),
                    etag: multipart_etag(&md5s),
                    metadata: u.metadata,
                },
            );
        }
        self.sink.check(object, &multipart_etag(part_md5s))
    }

    async fn abort(self) {
        self.sink.call(format!("abort {}", self.key));
        lock(&self.sink.state).uploads.remove(&self.id);
    }
}

/// The SHA-256 the destination records for a whole-object write.
pub fn recorded_sha256(k: &Kept) -> Option<&str> {
    meta(&k.metadata, SHA256_METADATA)
}
