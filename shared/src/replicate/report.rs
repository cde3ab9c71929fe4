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
    let output = output_artifact(artifacts);
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

/// Bytes of each part when a streamed manifest is uploaded in parts; up to this size it is one
/// PutObject. Memory while assembling: this buffer plus one chunk (one window's lines).
const MANIFEST_PART: usize = 8 * 1024 * 1024;

/// Writes a streamed run's manifest, assembled from its chunks in order ([`write_manifest`]'s
/// destinations). The zip's header holds the CRC and size of the data, so the chunks are read
/// twice (once for them); a manifest over 4 GiB (zip64) is refused for the output artifact —
/// about 25 million objects: give a `manifest` location instead.
pub(super) async fn write_manifest_chunks(
    target: &Target,
    artifacts: Option<&JobArtifacts>,
    config: &SdkConfig,
    journal: &journal::Journal,
) -> Result<Option<String>> {
    let chunks = journal.chunks();
    let output = output_artifact(artifacts);
    if let Some((location, credentials, key)) = output {
        let url = format!("s3://{}/{}", location.bucket_name, location.object_key);
        let (mut crc, mut size) = (!0u32, 0u64);
        for n in 0..chunks {
            let c = journal.read_chunk(n).await?;
            crc = journal::crc32_update(crc, &c);
            size += c.len() as u64;
        }
        let crc = !crc;
        let size = u32::try_from(size).map_err(|_| {
            Error::Configuration(format!(
                "the manifest is {size} bytes, more than a zip without zip64 holds: give a \
                 \"manifest\" location (s3://bucket/key) for it instead of the output artifact {url}"
            ))
        })?;
        let mut out = Out {
            client: artifact_client(config, credentials.as_ref()),
            bucket: location.bucket_name.clone(),
            key: location.object_key.clone(),
            content_type: "application/zip",
            kms: key
                .filter(|k| k.kind.eq_ignore_ascii_case("KMS"))
                .map(|k| k.id),
            what: format!("{url} (the output artifact, manifest)"),
            buf: journal::zip_head(MANIFEST_NAME, crc, size),
            upload: None,
            parts: Vec::new(),
        };
        for n in 0..chunks {
            out.write(&journal.read_chunk(n).await?).await?;
        }
        out.write(&journal::zip_tail(MANIFEST_NAME, crc, size))
            .await?;
        out.finish().await?;
        return Ok(Some(url));
    }
    let Some(m) = &target.manifest else {
        return Ok(None);
    };
    let mut out = Out {
        client: Client::new(config),
        bucket: m.bucket.clone(),
        key: m.key.clone(),
        content_type: "application/x-ndjson",
        kms: None,
        what: format!("{m} (manifest)"),
        buf: Vec::new(),
        upload: None,
        parts: Vec::new(),
    };
    for n in 0..chunks {
        out.write(&journal.read_chunk(n).await?).await?;
    }
    out.finish().await?;
    Ok(Some(m.to_string()))
}

/// An object written as it is assembled: one PutObject when it fits in [`MANIFEST_PART`], else a
/// multipart upload of such parts (aborted on a failure).
struct Out {
    client: Client,
    bucket: String,
    key: String,
    content_type: &'static str,
    /// SSE-KMS key id.
    kms: Option<String>,
    what: String,
    buf: Vec<u8>,
    upload: Option<String>,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
}

impl Out {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= MANIFEST_PART {
            let rest = self.buf.split_off(MANIFEST_PART);
            let part = std::mem::replace(&mut self.buf, rest);
            if let Err(e) = self.part(part).await {
                self.abort().await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn part(&mut self, data: Vec<u8>) -> Result<()> {
        let id = match &self.upload {
            Some(id) => id.clone(),
            None => {
                let mut req = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .content_type(self.content_type);
                if let Some(k) = &self.kms {
                    req = req
                        .server_side_encryption(ServerSideEncryption::AwsKms)
                        .ssekms_key_id(k);
                }
                let out = req.send().await.map_err(|e| {
                    aws_error("s3", &format!("CreateMultipartUpload {}", self.what), e)
                })?;
                let id = out.upload_id().unwrap_or_default().to_string();
                self.upload = Some(id.clone());
                id
            }
        };
        let n = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| aws_error("s3", &format!("UploadPart {n} of {}", self.what), e))?;
        self.parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }

    async fn abort(&self) {
        if let Some(id) = &self.upload {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(id)
                .send()
                .await;
        }
    }

    async fn finish(mut self) -> Result<()> {
        if self.upload.is_none() {
            let mut put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type(self.content_type)
                .body(ByteStream::from(std::mem::take(&mut self.buf)));
            if let Some(k) = &self.kms {
                put = put
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .ssekms_key_id(k);
            }
            put.send()
                .await
                .map_err(|e| aws_error("s3", &format!("PutObject {}", self.what), e))?;
            return Ok(());
        }
        let last = std::mem::take(&mut self.buf);
        if !last.is_empty()
            && let Err(e) = self.part(last).await
        {
            self.abort().await;
            return Err(e);
        }
        let id = self.upload.clone().unwrap_or_default();
        let done = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .set_parts(Some(std::mem::take(&mut self.parts)))
            .build();
        if let Err(e) = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&id)
            .multipart_upload(done)
            .send()
            .await
        {
            self.abort().await;
            return Err(aws_error(
                "s3",
                &format!("CompleteMultipartUpload {}", self.what),
                e,
            ));
        }
        Ok(())
    }
}

/// An S3 client with the job's artifact credentials (never logged: `ArtifactCredentials`' Debug
/// is redacted, and the SDK's `Credentials` too).
/// The job's first output artifact: where it goes, the credentials to write it, its KMS key.
fn output_artifact(
    artifacts: Option<&JobArtifacts>,
) -> Option<(
    crate::job::codepipeline::S3Location,
    Option<ArtifactCredentials>,
    Option<crate::job::codepipeline::EncryptionKey>,
)> {
    artifacts.and_then(|a| {
        a.outputs
            .first()
            .and_then(|o| o.location.s3_location.clone())
            .map(|l| (l, a.credentials.clone(), a.encryption_key.clone()))
    })
}

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
