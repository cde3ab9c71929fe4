//! Pull mode: a local directory as the destination (the CLI on-prem, e.g. a Jenkins stage
//! writing a Nexus file blob store).
//!
//! A file is written as `.<name>.snapstage-partial` beside its final name, fsync'ed, read back
//! and checked, then renamed over the final name and the directory fsync'ed: a killed run never
//! leaves a half file under the final name. Leftover partial files of a killed run are removed
//! by the next run.
//!
//! A directory has no ETags: `.snapstage/index.json` remembers, per file, the size and
//! modification time it had when it was written or hashed, and the source ETag its content
//! equals. A file whose size and time still match is judged by that ETag; any other file of the
//! right size is hashed (MD5, or MD5 per part for multipart ETags) and compared with the source.
//! The index is only a cache: losing it costs a re-hash, never a wrong skip.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use md5::Digest as _;
use serde::{Deserialize, Serialize};

use super::compare::{Layout, multipart_etag};
use crate::error::{Error, Result};

/// Suffix of files being written.
pub const PARTIAL_SUFFIX: &str = ".snapstage-partial";
/// snapstage's own folder in the destination directory (never listed, mirrored or deleted).
pub const OWN_DIR: &str = ".snapstage";
const INDEX: &str = "index.json";

/// The path of a key under `root`; `None` for keys that are not a plain relative path
/// (`..`, empty segments, a trailing `/` folder marker, our own folder).
pub fn path_of(root: &Path, key: &str) -> Option<PathBuf> {
    if key.is_empty() || key.ends_with('/') || key.contains('\0') {
        return None;
    }
    let mut p = root.to_path_buf();
    for (i, seg) in key.split('/').enumerate() {
        if seg.is_empty() || seg == "." || seg == ".." || (i == 0 && seg == OWN_DIR) {
            return None;
        }
        if seg.ends_with(PARTIAL_SUFFIX) {
            return None;
        }
        p.push(seg);
    }
    // Belt and braces: the result stays under root.
    p.components()
        .all(|c| !matches!(c, Component::ParentDir))
        .then_some(p)
}

fn partial_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{PARTIAL_SUFFIX}"))
}

/// A file found under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: String,
    pub size: u64,
    pub mtime_ns: u128,
}

/// Lists the regular files under `root` (keys use `/`); with `clean`, removes partial files of
/// killed runs (a dry run leaves them).
pub async fn list(root: PathBuf, clean: bool) -> Result<Vec<Found>> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        if !root.exists() {
            return Ok(out);
        }
        let mut stack = vec![(root.clone(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| io("listing", &dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io("listing", &dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                let ft = entry.file_type().map_err(|e| io("listing", &path, e))?;
                if prefix.is_empty() && name == OWN_DIR {
                    continue;
                }
                if ft.is_dir() {
                    stack.push((path, format!("{prefix}{name}/")));
                } else if ft.is_file() {
                    if name.ends_with(PARTIAL_SUFFIX) {
                        if !clean {
                            continue;
                        }
                        tracing::info!(file = %path.display(), "removing a partial file of an earlier run");
                        std::fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
                        continue;
                    }
                    let md = entry.metadata().map_err(|e| io("reading", &path, e))?;
                    out.push(Found {
                        key: format!("{prefix}{name}"),
                        size: md.len(),
                        mtime_ns: mtime_ns(&md),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    })
    .await
    .map_err(|e| Error::Internal(format!("listing task: {e}")))?
}

fn mtime_ns(md: &std::fs::Metadata) -> u128 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    let message = format!("{what} {}: {e}", path.display());
    let classified = match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::Permission {
            backend: "filesystem",
            message,
            source: None,
        },
        _ => Error::Backend {
            backend: "filesystem",
            message,
            source: None,
        },
    };
    classified.caused_by(e)
}

/// What the index remembers of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indexed {
    pub size: u64,
    pub mtime_ns: u128,
    /// The source ETag the content equals.
    pub etag: String,
}

/// The directory's index (see the module docs).
#[derive(Debug, Default)]
pub struct Index {
    path: PathBuf,
    entries: std::sync::Mutex<HashMap<String, Indexed>>,
}

impl Index {
    pub async fn load(root: &Path) -> Self {
        let path = root.join(OWN_DIR).join(INDEX);
        let entries = match tokio::fs::read(&path).await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => HashMap::new(),
        };
        Self {
            path,
            entries: std::sync::Mutex::new(entries),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Indexed>) -> T) -> T {
        let mut g = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// The source ETag a file equals, when the index still describes it.
    pub fn etag(&self, f: &Found) -> Option<String> {
        self.with(|m| {
            m.get(&f.key)
                .filter(|i| i.size == f.size && i.mtime_ns == f.mtime_ns)
                .map(|i| i.etag.clone())
        })
    }

    pub fn record(&self, key: &str, entry: Indexed) {
        self.with(|m| m.insert(key.to_string(), entry));
    }

    pub fn forget(&self, key: &str) {
        self.with(|m| m.remove(key));
    }

    pub async fn save(&self) -> Result<()> {
        let body = self
            .with(|m| serde_json::to_vec(m))
            .map_err(|e| Error::Internal(format!("index: {e}")))?;
        write_atomically(&self.path, &body).await
    }
}

/// The ETag-equivalent of a local file, hashed the way the source's ETag was made: a plain MD5
/// for single-part ETags, the MD5 of part MD5s for `layout` otherwise.
pub async fn hash_file(path: PathBuf, layout: Option<Layout>) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path).map_err(|e| io("reading", &path, e))?;
        let mut buf = vec![0u8; 1024 * 1024];
        match layout {
            None => {
                let mut h = md5::Md5::new();
                loop {
                    let n = f.read(&mut buf).map_err(|e| io("reading", &path, e))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                Ok(hex::encode(h.finalize()))
            }
            Some(l) => {
                let mut parts = Vec::new();
                for n in 1..=l.parts() {
                    let (start, end) = l.range(n);
                    let mut left = end - start;
                    let mut h = md5::Md5::new();
                    while left > 0 {
                        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                        let got = f
                            .read(&mut buf[..want])
                            .map_err(|e| io("reading", &path, e))?;
                        if got == 0 {
                            break;
                        }
                        h.update(&buf[..got]);
                        left -= got as u64;
                    }
                    parts.push(h.finalize().into());
                }
                Ok(multipart_etag(&parts))
            }
        }
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

/// A file being written under its partial name.
pub struct PartialFile {
    final_path: PathBuf,
    partial: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
}

impl PartialFile {
    pub async fn create(final_path: PathBuf) -> Result<Self> {
        if let Some(parent) = final_path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io("creating", parent, e))?;
        }
        let partial = partial_of(&final_path);
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| io("creating", &partial, e))?;
        Ok(Self {
            final_path,
            partial,
            file: Some(file),
            written: 0,
        })
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt as _;
        let Some(f) = self.file.as_mut() else {
            return Err(Error::Internal("write after finish".into()));
        };
        f.write_all(data)
            .await
            .map_err(|e| io("writing", &self.partial, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// fsync, read back and compare with `sha256`, rename over the final name, fsync the
    /// directory. Returns the final file's (size, mtime) for the index. `Ok(Err(problem))`: the
    /// file read back differs (removed; worth another try).
    pub async fn commit(
        mut self,
        size: u64,
        sha256: &str,
    ) -> Result<std::result::Result<(u64, u128), String>> {
        let Some(mut f) = self.file.take() else {
            return Err(Error::Internal("commit twice".into()));
        };
        use tokio::io::AsyncWriteExt as _;
        f.flush()
            .await
            .map_err(|e| io("writing", &self.partial, e))?;
        f.sync_all()
            .await
            .map_err(|e| io("syncing", &self.partial, e))?;
        drop(f);
        let partial = self.partial.clone();
        let read_back = tokio::task::spawn_blocking(move || -> Result<(u64, String)> {
            let mut f = std::fs::File::open(&partial).map_err(|e| io("reading", &partial, e))?;
            let mut h = crate::digest::Sha256::new();
            let mut buf = vec![0u8; 1024 * 1024];
            let mut n_total = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(|e| io("reading", &partial, e))?;
                if n == 0 {
                    break;
                }
                n_total += n as u64;
                h.update(&buf[..n]);
            }
            Ok((n_total, h.finish_hex()))
        })
        .await
        .map_err(|e| Error::Internal(format!("verify task: {e}")))??;
        if read_back != (size, sha256.to_string()) {
            let _ = tokio::fs::remove_file(&self.partial).await;
            return Ok(Err(format!(
                "{}: read back {} bytes with SHA-256 {}, expected {size} bytes with {sha256}",
                self.partial.display(),
                read_back.0,
                read_back.1
            )));
        }
        tokio::fs::rename(&self.partial, &self.final_path)
            .await
            .map_err(|e| io("renaming", &self.partial, e))?;
        sync_dir(&self.final_path).await?;
        let md = tokio::fs::metadata(&self.final_path)
            .await
            .map_err(|e| io("reading", &self.final_path, e))?;
        Ok(Ok((md.len(), mtime_ns(&md))))
    }

    pub async fn discard(mut self) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}

async fn sync_dir(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        let dir = tokio::fs::File::open(parent)
            .await
            .map_err(|e| io("opening", parent, e))?;
        dir.sync_all().await.map_err(|e| io("syncing", parent, e))?;
    }
    Ok(())
}

/// Writes a small file atomically (partial name, fsync, rename, fsync the directory).
pub async fn write_atomically(path: &Path, body: &[u8]) -> Result<()> {
    let mut p = PartialFile::create(path.to_path_buf()).await?;
    p.write(body).await?;
    let sha = crate::digest::sha256_hex(body);
    match p.commit(body.len() as u64, &sha).await? {
        Ok(_) => Ok(()),
        Err(problem) => Err(Error::Backend {
            backend: "filesystem",
            message: problem,
            source: None,
        }),
    }
}

/// Removes a file of the destination and fsyncs its directory.
pub async fn remove(root: &Path, key: &str) -> Result<()> {
    let Some(path) = path_of(root, key) else {
        return Ok(());
    };
    match tokio::fs::remove_file(&path).await {
        Ok(()) => sync_dir(&path).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_paths_under_the_root_or_nothing() {
        let root = Path::new("/var/nexus/blobs");
        assert_eq!(
            path_of(root, "content/vol-01/a.bytes"),
            Some(PathBuf::from("/var/nexus/blobs/content/vol-01/a.bytes"))
        );
        for bad in [
            "",
            "../etc/passwd",
            "a/../../b",
            "a//b",
            "./a",
            "dir/",
            ".snapstage/index.json",
            "a/.b.bytes.snapstage-partial",
            "a\0b",
        ] {
            assert_eq!(path_of(root, bad), None, "{bad:?}");
        }
        // Only the root's .snapstage is ours.
        assert!(path_of(root, "x/.snapstage/y").is_some());
    }

    #[tokio::test]
    async fn files_land_whole_or_not_at_all() {
        let dir = std::env::temp_dir().join(format!("snapstage-local-{}", std::process::id()));
        let path = dir.join("content/a.bytes");
        let body = b"hello blob".to_vec();
        let mut p = PartialFile::create(path.clone()).await.unwrap();
        p.write(&body[..5]).await.unwrap();
        // Half written: nothing under the final name, the partial file is listed away.
        assert!(!path.exists());
        drop(p);
        let listed = list(dir.clone(), true).await.unwrap();
        assert!(listed.is_empty(), "{listed:?}");
        // A whole write lands; a wrong checksum does not.
        let sha = crate::digest::sha256_hex(&body);
        let mut p = PartialFile::create(path.clone()).await.unwrap();
        p.write(&body).await.unwrap();
        assert!(
            p.commit(body.len() as u64, &"0".repeat(64))
                .await
                .unwrap()
                .is_err()
        );
        assert!(!path.exists());
        let mut p = PartialFile::create(path.clone()).await.unwrap();
        p.write(&body).await.unwrap();
        p.commit(body.len() as u64, &sha).await.unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        let listed = list(dir.clone(), true).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "content/a.bytes");
        assert_eq!(
            hash_file(path.clone(), None).await.unwrap(),
            hex::encode(md5::Md5::digest(&body))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
