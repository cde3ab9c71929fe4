//! [`DirectorySink`]: pull mode, a local directory (the CLI on-prem, e.g. a Jenkins stage
//! writing a Nexus file blob store). The file mechanics — partial names, fsync, read back,
//! rename, the index of ETags — are in [`crate::replicate::local`].
//!
//! - A key is a path under the root; keys that are not a plain relative path (`..`, empty
//!   segments, folder markers) are not copied.
//! - A file of the source's size is unchanged when the index still knows its ETag and it is the
//!   source's, else when a hash of it (MD5, or MD5 per part for a multipart ETag) equals it.
//! - Written whole or in parts, in order, into the partial file; made final by
//!   `PartialFile::commit` (read back against the SHA-256, renamed); recorded in the index.
//! - No resumable uploads: an interrupted file is written again by the next run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::{Comparison, Object, Sink, Upload};
use crate::error::{Error, Result};
use crate::replicate::compare::{self, Layout, Listed, is_single_part};
use crate::replicate::local::{self, Index, Indexed, PartialFile};
use crate::replicate::object::{Attempt, Problem};
use crate::replicate::source::Source;

/// A local directory and its index.
#[derive(Debug)]
pub struct DirectorySink {
    root: PathBuf,
    index: Arc<Index>,
}

impl DirectorySink {
    /// The directory `root` (created unless `dry_run`) with its index.
    pub async fn open(root: &Path, dry_run: bool) -> Result<Self> {
        if !dry_run {
            tokio::fs::create_dir_all(root).await.map_err(|e| {
                Error::Configuration(format!(
                    "destinationDirectory {}: cannot create it: {e}",
                    root.display()
                ))
            })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            index: Arc::new(Index::load(root).await),
        })
    }

    fn path(&self, key: &str) -> Attempt<PathBuf> {
        local::path_of(&self.root, key)
            .ok_or_else(|| Error::Internal(format!("{key:?} has no local path")).into())
    }

    fn record(&self, key: &str, size: u64, mtime_ns: u128, etag: &str) {
        self.index.record(
            key,
            Indexed {
                size,
                mtime_ns,
                etag: etag.to_string(),
            },
        );
    }

    /// Whether a local file of the right size holds the source's content (hashed like its ETag).
    async fn file_matches<R: Source>(&self, source: &R, key: &str, s: &Listed) -> Result<bool> {
        let Some(path) = local::path_of(&self.root, key) else {
            return Ok(false);
        };
        let layout = if is_single_part(&s.etag) {
            None
        } else if compare::multipart_parts(&s.etag).is_some() {
            let part = match source.head(&s.key, None, Some(1)).await {
                Ok(h) => h.map_or(0, |h| h.size),
                Err(Problem::Fatal(e)) => return Err(e),
                Err(_) => 0,
            };
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
            self.record(key, md.len(), mtime_ns, &etag);
        }
        Ok(true)
    }
}

impl Sink for DirectorySink {
    /// The file under its partial name, and the SHA-256 it must read back with.
    type Written = (PartialFile, String);
    type Upload = FileUpload;

    fn describe_key(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    fn prefix(&self) -> &str {
        ""
    }

    fn accepts(&self, key: &str) -> bool {
        local::path_of(&self.root, key).is_some()
    }

    async fn list(&self, clean: bool) -> Result<Vec<Listed>> {
        let found = local::list(self.root.clone(), clean).await?;
        Ok(found
            .into_iter()
            .map(|f| {
                let etag = self.index.etag(&f).unwrap_or_default();
                Listed {
                    key: f.key,
                    size: f.size,
                    etag,
                }
            })
            .collect())
    }

    async fn compare<R: Source>(
        &self,
        source: &R,
        key: &str,
        s: &Listed,
        listed: Option<&Listed>,
    ) -> Result<Comparison> {
        let copy = Comparison::Copy {
            destination_sha256: None,
        };
        Ok(match listed {
            // Same size and the same known ETag; an empty one (a file not in the index, a
            // source that gave none) proves nothing.
            Some(d) if d.size == s.size && !s.etag.is_empty() && d.etag == s.etag => {
                Comparison::Unchanged
            }
            Some(d) if d.size == s.size => {
                if self.file_matches(source, key, s).await? {
                    Comparison::Unchanged
                } else {
                    copy
                }
            }
            _ => copy,
        })
    }

    async fn put(
        &self,
        object: Object<'_>,
        body: Bytes,
        _md5: [u8; 16],
        sha256: &str,
    ) -> Attempt<Self::Written> {
        let mut f = PartialFile::create(self.path(object.key)?).await?;
        f.write(&body).await?;
        Ok((f, sha256.to_string()))
    }

    async fn verify(&self, object: Object<'_>, (f, sha256): Self::Written) -> Attempt<()> {
        let src = object.source;
        let (size, mtime_ns) = f.commit(src.size, &sha256).await?.map_err(Problem::Retry)?;
        self.record(object.key, size, mtime_ns, &src.etag);
        Ok(())
    }

    async fn begin(&self, object: Object<'_>) -> Attempt<FileUpload> {
        Ok(FileUpload {
            file: PartialFile::create(self.path(object.key)?).await?,
            index: Arc::clone(&self.index),
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        local::remove(&self.root, key).await?;
        self.index.forget(key);
        Ok(())
    }

    async fn save(&self) -> Result<()> {
        self.index.save().await
    }
}

/// A file written part after part under its partial name.
pub struct FileUpload {
    file: PartialFile,
    index: Arc<Index>,
}

impl Upload for FileUpload {
    fn id(&self) -> Option<&str> {
        None
    }

    async fn part(
        &mut self,
        _n: u64,
        data: Bytes,
        _md5: [u8; 16],
        permit: OwnedSemaphorePermit,
    ) -> Attempt<()> {
        self.file.write(&data).await?;
        drop(permit);
        Ok(())
    }

    async fn flush(&mut self) -> Attempt<()> {
        Ok(())
    }

    async fn complete(self, object: Object<'_>, _: &[[u8; 16]], sha256: &str) -> Attempt<()> {
        let src = object.source;
        let (size, mtime_ns) = self
            .file
            .commit(src.size, sha256)
            .await?
            .map_err(Problem::Retry)?;
        self.index.record(
            object.key,
            Indexed {
                size,
                mtime_ns,
                etag: src.etag.clone(),
            },
        );
        Ok(())
    }

    async fn abort(self) {
        self.file.discard().await;
    }
}
