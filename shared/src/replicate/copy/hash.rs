//! Hashing what is read, and checking it against the source's ETag.

use md5::Digest as _;

use crate::error::Error;
use crate::replicate::compare::{Listed, is_single_part};
use crate::replicate::object::{Attempt, Problem, SourceInfo};

/// Bodies at least this large are hashed off the runtime thread.
const OFF_THREAD_MIN: usize = 256 * 1024;

/// Runs `f` (hashing) on the blocking pool when `len` is large. The runtime has one thread
/// (`entry.rs`: cold start), and MD5 + SHA-256 of a 16 MiB part take ~80 ms of CPU: inline they
/// stall every other transfer and keep the hashing of concurrent objects on one core.
async fn off_thread<T: Send + 'static>(
    len: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Attempt<T> {
    if len < OFF_THREAD_MIN {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::Fatal(Error::Internal(format!("hashing task: {e}"))))
}

/// MD5 and SHA-256 of a whole body, off the runtime thread when it is large.
pub(super) async fn hash_whole(body: &bytes::Bytes) -> Attempt<([u8; 16], String)> {
    let b = body.clone();
    off_thread(b.len(), move || {
        (md5::Md5::digest(&b).into(), crate::digest::sha256_hex(&b))
    })
    .await
}

/// The running hashes of an object read in parts: SHA-256, and the whole MD5 only when the
/// source's ETag is a plain MD5 to compare it with (a multipart source is checked by its part
/// MD5s; a second MD5 pass over every byte would cost about 2 s of CPU per GiB for nothing).
pub(super) struct Running {
    whole: Option<md5::Md5>,
    sha: crate::digest::Sha256,
}

impl Running {
    pub(super) fn for_source(src: &Listed) -> Self {
        Running {
            whole: is_single_part(&src.etag).then(md5::Md5::new),
            sha: crate::digest::Sha256::new(),
        }
    }

    /// Adds the next part, off the runtime thread when it is large; returns the part's MD5.
    pub(super) async fn add(self, data: &bytes::Bytes) -> Attempt<(Self, [u8; 16])> {
        let d = data.clone();
        off_thread(d.len(), move || {
            let mut r = self;
            if let Some(w) = r.whole.as_mut() {
                w.update(&d);
            }
            r.sha.update(&d);
            (r, md5::Md5::digest(&d).into())
        })
        .await
    }

    /// The whole MD5 (empty when not computed: `check_source` does not use it then) and the
    /// SHA-256, hex.
    pub(super) fn finish(self) -> (String, String) {
        let whole = self
            .whole
            .map(|h| hex::encode(h.finalize()))
            .unwrap_or_default();
        (whole, self.sha.finish_hex())
    }
}

/// Verifies content read against the source ETag: a single-part ETag is the MD5 of the content;
/// a multipart one, when the parts are the source's (`mirrored`), the MD5 of the part MD5s.
pub(super) fn check_source(
    src: &Listed,
    info: &SourceInfo,
    mirrored: bool,
    whole_md5: &str,
    parts_etag: &str,
) -> Attempt<()> {
    if !info.etag_is_md5 {
        return Ok(());
    }
    if is_single_part(&src.etag) && whole_md5 != src.etag {
        return Err(Problem::Retry(format!(
            "the content read has MD5 {whole_md5}, the source ETag is {}",
            src.etag
        )));
    }
    if mirrored && parts_etag != src.etag {
        return Err(Problem::Retry(format!(
            "the parts read hash to {parts_etag}, the source ETag is {}",
            src.etag
        )));
    }
    Ok(())
}
