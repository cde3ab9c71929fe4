//! What a step reports: the manifest (to the job's output artifact or the `manifest` location),
//! the output variables, the summaries' wording, and the one error a failed run ends with.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;

use super::MANIFEST_NAME;
use super::compare::Listed;
use super::journal::{self, Entry, Progress};
use super::params::{Destination, Target};
use crate::aws::aws_error;
use crate::error::{Error, Result};
use crate::job::codepipeline::ArtifactCredentials;
use crate::job::contract::JobArtifacts;

/// A manifest checksum for what was not read: `etag:<etag>`, or nothing.
pub(super) fn checksum_of_etag(etag: &str) -> String {
    if etag.is_empty() {
        String::new()
    } else {
        format!("etag:{etag}")
    }
}

pub(super) fn skipped_entries(unchanged: &[Listed]) -> impl Iterator<Item = Entry> + '_ {
    unchanged.iter().map(|l| Entry {
        key: l.key.clone(),
        size: l.size,
        checksum: checksum_of_etag(&l.etag),
        action: "skipped".into(),
    })
}

/// One error naming the failed keys, of the first failure's type.
pub(super) fn failure(failures: &[(String, Error)], checkpoint: &str) -> Error {
    let names: Vec<String> = failures
        .iter()
        .take(5)
        .map(|(k, e)| format!("{k}: {e}"))
        .collect();
    let more = failures.len().saturating_sub(5);
    let message = format!(
        "{} object(s) failed: {}{}; objects copied before are verified and kept, and a re-run \
         resumes from the checkpoint {checkpoint}",
        failures.len(),
        names.join("; "),
        if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        }
    );
    match failures.first().map(|(_, e)| e) {
        Some(Error::Permission { backend, .. }) => Error::Permission {
            backend,
            message,
            source: None,
        },
        Some(Error::Unavailable { backend, .. }) => Error::Unavailable {
            backend,
            message,
            source: None,
        },
        Some(Error::NotFound { .. } | Error::Configuration(_) | Error::Refused(_)) => {
            Error::Configuration(message)
        }
        _ => Error::Backend {
            backend: "s3",
            message,
            source: None,
        },
    }
}

/// Writes the manifest: to the job's first output artifact (a zip, with the job's artifact
/// credentials and KMS key), else to the `manifest` location (the function's credentials).
/// Returns where it went.
pub(super) async fn write_manifest(
    target: &Target,
    artifacts: Option<&JobArtifacts>,
    config: &SdkConfig,
    entries: &[Entry],
) -> Result<Option<String>> {
    let lines = journal::manifest_lines(entries);
    let output = artifacts.and_then(|a| {
        a.outputs
            .first()
            .and_then(|o| o.location.s3_location.clone())
            .map(|l| (l, a.credentials.clone(), a.encryption_key.clone()))
    });
    if let Some((location, credentials, key)) = output {
        let client = artifact_client(config, credentials.as_ref());
        let url = format!("s3://{}/{}", location.bucket_name, location.object_key);
        let mut put = client
            .put_object()
            .bucket(&location.bucket_name)
            .key(&location.object_key)
            .content_type("application/zip")
            .body(ByteStream::from(journal::zip_one(MANIFEST_NAME, &lines)));
        if let Some(k) = key.filter(|k| k.kind.eq_ignore_ascii_case("KMS")) {
            put = put
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(k.id);
        }
        put.send().await.map_err(|e| {
            aws_error(
                "s3",
                &format!("PutObject {url} (the output artifact, manifest)"),
                e,
            )
        })?;
        return Ok(Some(url));
    }
    let Some(m) = &target.manifest else {
        return Ok(None);
    };
    let client = Client::new(config);
    client
        .put_object()
        .bucket(&m.bucket)
        .key(&m.key)
        .content_type("application/x-ndjson")
        .body(ByteStream::from(lines))
        .send()
        .await
        .map_err(|e| aws_error("s3", &format!("PutObject {m} (manifest)"), e))?;
    Ok(Some(m.to_string()))
}

/// An S3 client with the job's artifact credentials (never logged: `ArtifactCredentials`' Debug
/// is redacted, and the SDK's `Credentials` too).
fn artifact_client(config: &SdkConfig, credentials: Option<&ArtifactCredentials>) -> Client {
    let mut b = aws_sdk_s3::config::Builder::from(config);
    if let Some(c) = credentials {
        b = b.credentials_provider(aws_sdk_s3::config::Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            Some(c.session_token.clone()),
            None,
            "codepipeline-artifact-credentials",
        ));
    }
    Client::from_conf(b.build())
}

pub(super) fn throughput(p: &Progress) -> String {
    let secs = p.elapsed_ms as f64 / 1000.0;
    if secs <= 0.0 {
        return "0.0".into();
    }
    format!("{:.1}", p.bytes as f64 / 1_000_000.0 / secs)
}

pub(super) struct Report {
    pub progress: Progress,
    pub skipped: u64,
    pub to_copy: u64,
    pub bytes_to_copy: u64,
    pub to_delete: u64,
    pub manifest: Option<String>,
}

impl Report {
    pub fn outputs(&self, target: &Target) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = [
            ("ObjectsCopied", self.progress.copied.to_string()),
            ("ObjectsSkipped", self.skipped.to_string()),
            ("ObjectsVerified", self.progress.verified.to_string()),
            ("ObjectsDeleted", self.progress.deleted.to_string()),
            ("BytesCopied", self.progress.bytes.to_string()),
            ("ThroughputMBps", throughput(&self.progress)),
            ("ObjectsToCopy", self.to_copy.to_string()),
            ("BytesToCopy", self.bytes_to_copy.to_string()),
            ("ObjectsToDelete", self.to_delete.to_string()),
            ("DryRun", target.dry_run.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        match &target.destination {
            Destination::S3(d) => out.insert("DestinationBucket".into(), d.bucket.clone()),
            Destination::Directory(p) => {
                out.insert("DestinationDirectory".into(), p.display().to_string())
            }
        };
        if let Some(m) = &self.manifest {
            out.insert("Manifest".into(), m.clone());
        }
        out
    }
}

pub(super) fn source_location(t: &Target) -> String {
    format!("s3://{}/{}", t.source_bucket, t.source_prefix)
}

pub(super) fn destination_location(t: &Target) -> String {
    match &t.destination {
        Destination::S3(d) => format!(
            "s3://{}/{}{}",
            d.bucket,
            d.prefix,
            d.endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        ),
        Destination::Directory(p) => p.display().to_string(),
    }
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureKind;

    #[test]
    fn failures_name_every_key_up_to_five() {
        let fails: Vec<(String, Error)> = (0..7)
            .map(|i| {
                (
                    format!("blobs/{i}.bytes"),
                    Error::Backend {
                        backend: "s3",
                        message: "not verified".into(),
                        source: None,
                    },
                )
            })
            .collect();
        let e = failure(&fails, "s3://src/.snapstage/checkpoints/x.json");
        let m = e.to_string();
        assert!(m.contains("7 object(s) failed"), "{m}");
        assert!(
            m.contains("blobs/0.bytes") && m.contains("blobs/4.bytes"),
            "{m}"
        );
        assert!(m.contains("and 2 more"), "{m}");
        assert_eq!(e.failure_kind(), FailureKind::JobFailed);
        let perm = failure(
            &[(
                "k".into(),
                Error::Permission {
                    backend: "s3",
                    message: "AccessDenied".into(),
                    source: None,
                },
            )],
            "c",
        );
        assert_eq!(perm.failure_kind(), FailureKind::PermissionError);
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 * 1024 * 1024), "64.0 MiB");
        let p = Progress {
            bytes: 50_000_000,
            elapsed_ms: 2_000,
            ..Progress::default()
        };
        assert_eq!(throughput(&p), "25.0");
    }
}
