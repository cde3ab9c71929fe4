//! The vocabulary of one object copy, shared by the source, the sinks and the copier: why an
//! attempt failed ([`Problem`]) and the source headers carried to the copy ([`SourceInfo`]).

use std::collections::HashMap;

use super::{SHA256_METADATA, SOURCE_ETAG_METADATA};
use crate::error::Error;

/// Why an attempt at one object failed.
#[derive(Debug)]
pub enum Problem {
    /// A check failed (a checksum, a short read, what the destination answered): worth one more
    /// try, then the object fails with this text.
    Retry(String),
    /// The source changed since it was listed (`If-Match` failed): read again.
    SourceChanged,
    /// A call failed in a way another try may not (a 5xx, throttling, a reset, a timeout) and
    /// the SDK could not retry it itself (its body was streamed from the source): tried again
    /// after a pause a few times, then the object fails with this error, its type kept.
    Transient(Error),
    /// Not worth retrying: the object fails with this error.
    Fatal(Error),
}

impl Problem {
    pub fn is_fatal(&self) -> bool {
        matches!(self, Problem::Fatal(_))
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        Problem::Fatal(e)
    }
}

/// The result of one step of an attempt.
pub type Attempt<T> = std::result::Result<T, Problem>;

/// Headers of the source object carried to the copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceInfo {
    pub metadata: HashMap<String, String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    /// False for SSE-KMS / SSE-C sources: the ETag says nothing about the content.
    pub etag_is_md5: bool,
    /// The ETag of the version read (normalized).
    pub etag: String,
}

impl SourceInfo {
    /// The destination's metadata: the source's, without our own keys, plus ours.
    pub fn destination_metadata(
        &self,
        source_etag: &str,
        sha256: Option<&str>,
    ) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = self
            .metadata
            .iter()
            .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("snapstage-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(s) = sha256 {
            m.insert(SHA256_METADATA.into(), s.to_string());
        }
        if !source_etag.is_empty() {
            m.insert(SOURCE_ETAG_METADATA.into(), source_etag.to_string());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_metadata_keeps_the_sources_but_not_its_snapstage_keys() {
        let info = SourceInfo {
            metadata: [
                ("owner".to_string(), "nexus".to_string()),
                ("Snapstage-SHA256".to_string(), "stale".to_string()),
            ]
            .into_iter()
            .collect(),
            ..SourceInfo::default()
        };
        let m = info.destination_metadata("abc", Some("00ff"));
        assert_eq!(m.get("owner").map(String::as_str), Some("nexus"));
        assert_eq!(m.get(SHA256_METADATA).map(String::as_str), Some("00ff"));
        assert_eq!(m.get(SOURCE_ETAG_METADATA).map(String::as_str), Some("abc"));
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(
            !info
                .destination_metadata("", None)
                .contains_key(SOURCE_ETAG_METADATA)
        );
    }
}
