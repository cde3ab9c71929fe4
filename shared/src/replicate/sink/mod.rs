//! The write side of a copy: a [`Sink`] is one destination — what is there, writing an object
//! whole or in parts, checking what was written, deleting (mirror mode).
//!
//! | implementation | destination |
//! | --- | --- |
//! | [`S3Sink`] (`s3.rs`) | any S3 endpoint over aws-sdk-s3: S3, an on-prem S3-compatible server (versitygw, MinIO, FlashBlade), moto |
//! | [`DirectorySink`] (`directory.rs`) | pull mode: a local directory, files written under a partial name and renamed, with an index of their ETags |
//! | `MemorySink` (`../memory.rs`, tests only) | a map that behaves like a bucket, with faults to order |
//!
//! Optional ability, beside the trait: [`ResumableUploads`] — uploads in parts that a later step
//! continues from the checkpoint (S3 multipart uploads). A sink without it restarts an
//! interrupted object, and the copier never stops it between two parts.
//!
//! Dispatch is static (the copier is generic over its sink, chosen once per step): the hot path —
//! a part read, hashed and written — goes through no box and no lock of ours.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::compare::Listed;
use super::object::{Attempt, Problem, SourceInfo};
use super::source::{Body, Page, Source};
use crate::error::Result;

pub mod directory;
pub mod s3;

pub use directory::DirectorySink;
pub use s3::S3Sink;

/// What the destination holds for a key, when the listings alone could not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// The same content as the source: not copied.
    Unchanged,
    /// Copy; when the destination records a SHA-256, the write is skipped if the source's is
    /// the same.
    Copy { destination_sha256: Option<String> },
}

/// One object being written: its destination key, the source version, the headers to carry.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    pub key: &'a str,
    /// Key, size and ETag of the version read.
    pub source: &'a Listed,
    pub info: &'a SourceInfo,
}

/// Parts already at the destination, by number: (MD5 hex, size).
pub type Parts = HashMap<u64, (String, u64)>;

/// A boxed future, for the object-safe capability trait (called once per object or step, never
/// per part).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One destination.
pub trait Sink: Send + Sync + 'static {
    /// An object written by [`Sink::put`], for [`Sink::verify`].
    type Written: Send;
    /// An object being written in parts.
    type Upload: Upload;

    /// `s3://bucket/key at endpoint`, or the file's path: for messages.
    fn describe_key(&self, key: &str) -> String;

    /// The key prefix objects land under ("" for a directory).
    fn prefix(&self) -> &str;

    /// Whether `key` can be written here (a directory refuses `..`, empty segments, folder
    /// markers).
    fn accepts(&self, _key: &str) -> bool {
        true
    }

    /// Everything under the prefix, ETags where known, snapstage's own objects left out. With
    /// `clean`, leftovers of killed runs (partial files) are removed.
    fn list(&self, clean: bool) -> impl Future<Output = Result<Vec<Listed>>> + Send;

    /// One page of [`Sink::list`] in UTF-8 byte order, after `start_after` (a first page,
    /// `token` `None`) or from `token` (see [`Source::list_page`]). By default the whole listing,
    /// sorted, as one page: a sink that cannot page (a directory) holds its listing in memory.
    fn list_page(
        &self,
        start_after: Option<&str>,
        token: Option<String>,
        clean: bool,
    ) -> impl Future<Output = Result<Page>> + Send {
        async move {
            let _ = token;
            let mut items = self.list(clean).await?;
            items.retain(|l| start_after.is_none_or(|a| l.key.as_str() > a));
            items.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(Page { items, next: None })
        }
    }

    /// What the destination holds of `keys` (sorted): shard mode's view, instead of the whole
    /// prefix. By default the whole listing, filtered.
    fn list_keys(&self, keys: &[String]) -> impl Future<Output = Result<Vec<Listed>>> + Send {
        async move {
            let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
            Ok(self
                .list(false)
                .await?
                .into_iter()
                .filter(|l| wanted.contains(l.key.as_str()))
                .collect())
        }
    }

    /// Whether `key`, listed as `listed` (or absent), holds `src`'s content: what the listing
    /// says, else what the destination (or a hash of the file) says.
    fn compare<R: Source>(
        &self,
        source: &R,
        key: &str,
        src: &Listed,
        listed: Option<&Listed>,
    ) -> impl Future<Output = Result<Comparison>> + Send;

    /// Writes an object of at most one part whole (`Content-MD5` `md5`; `sha256` recorded).
    fn put(
        &self,
        object: Object<'_>,
        body: Bytes,
        md5: [u8; 16],
        sha256: &str,
    ) -> impl Future<Output = Attempt<Self::Written>> + Send;

    /// Whether [`Sink::put_streamed`] writes without holding the body and checks what it wrote
    /// by what the destination answers (S3, while its ETags are MD5s).
    fn streams(&self) -> bool {
        false
    }

    /// Writes a whole object straight from the source's body as it is read, no copy held. `md5`
    /// is known beforehand (the source's ETag, sent as `Content-MD5`); what the destination
    /// answers is checked against it. Returns what [`Sink::verify`] needs and the SHA-256 of
    /// what went through. The copier calls it only when [`Sink::streams`]; by default the body is
    /// read whole and [`Sink::put`].
    fn put_streamed<B: Body>(
        &self,
        object: Object<'_>,
        body: B,
        md5: [u8; 16],
    ) -> impl Future<Output = Attempt<(Self::Written, String)>> + Send {
        async move {
            let data = body
                .bytes()
                .await
                .map_err(|e| Problem::Retry(format!("reading the source broke off: {e}")))?;
            let sha256 = crate::digest::sha256_hex(&data);
            let written = self.put(object, data, md5, &sha256).await?;
            Ok((written, sha256))
        }
    }

    /// Checks what [`Sink::put`] wrote (size, checksum, the recorded source ETag) and makes it
    /// final; a mismatch is [`Problem::Retry`](super::object::Problem::Retry).
    fn verify(
        &self,
        object: Object<'_>,
        written: Self::Written,
    ) -> impl Future<Output = Attempt<()>> + Send;

    /// Starts writing an object in parts.
    fn begin(&self, object: Object<'_>) -> impl Future<Output = Attempt<Self::Upload>> + Send;

    /// Deletes `key` (mirror mode); one already gone is fine.
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + Send;

    /// After a step's copies: saves what the sink keeps beside the objects (a directory's index).
    fn save(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Its resumable uploads, when it has them.
    fn resumable(&self) -> Option<&dyn ResumableUploads<Self::Upload>> {
        None
    }
}

/// An object being written in parts, in order. Parts may be written in the background: an error
/// of one surfaces from a later call.
pub trait Upload: Send + 'static {
    /// The id a later step continues it with ([`ResumableUploads::resume`]); `None` when it
    /// cannot be continued.
    fn id(&self) -> Option<&str>;

    /// Writes part `n` (1-based) with its MD5. `permit` is its buffer's share of the memory
    /// budget, given back when the part is written.
    fn part(
        &mut self,
        n: u64,
        data: Bytes,
        md5: [u8; 16],
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = Attempt<()>> + Send;

    /// Waits for the parts in flight; the first failure.
    fn flush(&mut self) -> impl Future<Output = Attempt<()>> + Send;

    /// Every part is written and the content checked against the source: completes the object
    /// and verifies it at the destination. On a failure nothing is left under the key's name
    /// that counts as copied.
    fn complete(
        self,
        object: Object<'_>,
        part_md5s: &[[u8; 16]],
        sha256: &str,
    ) -> impl Future<Output = Attempt<()>> + Send;

    /// Removes what was written (failures are logged: a lifecycle rule, or the next run's
    /// listing, cleans what is left).
    fn abort(self) -> impl Future<Output = ()> + Send;
}

/// Optional: uploads a later step continues (S3 multipart uploads; their ids are in the
/// checkpoint).
pub trait ResumableUploads<U>: Send + Sync {
    /// The upload `id` of `key` again, with the parts already there; `Err`: it is gone.
    fn resume<'a>(&'a self, key: &'a str, id: &'a str) -> BoxFuture<'a, Result<(U, Parts)>>;

    /// Aborts the upload `id` of `key`; failures are logged.
    fn abort<'a>(&'a self, key: &'a str, id: &'a str) -> BoxFuture<'a, ()>;

    /// Aborts the uploads still open for `keys` (leftovers of lost answers and killed runs, once
    /// every one of those objects is verified); returns how many.
    fn abort_stale<'a>(&'a self, keys: &'a HashSet<String>) -> BoxFuture<'a, usize>;
}
