//! Parameters of `replicate-artifacts-back`, their validation, and the destination's client.

use std::path::PathBuf;

use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Default objects copied at once.
pub const DEFAULT_CONCURRENCY: usize = 8;
pub const MAX_CONCURRENCY: usize = 64;
/// Default part size of multipart copies, MiB.
pub const DEFAULT_PART_SIZE_MIB: u64 = 16;
/// S3's smallest part (but the last) is 5 MiB; the largest we buffer is 512 MiB.
pub const MIN_PART_SIZE_MIB: u64 = 5;
pub const MAX_PART_SIZE_MIB: u64 = 512;
/// Default largest object copied with one streamed PutObject, MiB (when its source ETag is its
/// MD5); S3's PutObject takes at most 5 GiB.
pub const DEFAULT_UPLOAD_CUTOFF_MIB: u64 = 64;
pub const MAX_UPLOAD_CUTOFF_MIB: u64 = 5 * 1024;
/// Default share of the destination mirror mode may delete in one run.
pub const DEFAULT_MAX_DELETE_FRACTION: f64 = 0.1;
/// Where checkpoints go by default, under the source bucket (or the destination directory).
pub const CHECKPOINT_PREFIX: &str = ".snapstage/checkpoints/";

/// Parameters of `replicate-artifacts-back`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// The cloud bucket (S3 and pull modes; not used in array mode).
    #[serde(default)]
    pub source_bucket: String,
    #[serde(default)]
    pub source_prefix: String,
    /// The destination bucket; or `destinationDirectory` for pull mode.
    #[serde(default)]
    pub destination_bucket: Option<String>,
    /// Default: the source prefix.
    #[serde(default)]
    pub destination_prefix: Option<String>,
    /// The on-premises S3-compatible endpoint; absent means the normal S3 endpoint.
    #[serde(default)]
    pub destination_endpoint: Option<String>,
    #[serde(default)]
    pub destination_region: Option<String>,
    /// A Secrets Manager secret id whose SecretString is `{"accessKeyId", "secretAccessKey"}`.
    #[serde(default)]
    pub destination_credentials_secret: Option<String>,
    /// Default: true when `destinationEndpoint` is set.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    /// Pull mode: an absolute local directory to copy into (the CLI on-prem).
    #[serde(default)]
    pub destination_directory: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Objects copied at once (1–64, default 8).
    #[serde(default)]
    pub concurrency: Option<Value>,
    /// Part size of multipart copies in MiB (5–512, default 16); objects larger than one part
    /// are streamed in parts.
    #[serde(default, rename = "partSizeMiB")]
    pub part_size_mib: Option<Value>,
    /// Objects up to this size in MiB (0–5120, default 64) whose source ETag is their MD5 go to
    /// an S3 destination as one PutObject streamed straight from the source's GET (no buffer,
    /// no MD5 computed: the destination checks the source's); larger ones in parts. 0: only
    /// objects of at most one part are written whole (buffered).
    #[serde(default, rename = "uploadCutoffMiB")]
    pub upload_cutoff_mib: Option<Value>,
    /// Delete at the destination what is proven gone at the source (default false).
    #[serde(default)]
    pub mirror: bool,
    /// Mirror mode refuses to delete more than this share of the destination (default 0.1).
    #[serde(default)]
    pub max_delete_fraction: Option<Value>,
    /// Where progress is checkpointed: `s3://bucket/prefix/` or an absolute directory.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// Where the manifest goes when the job has no output artifact: `s3://bucket/key`.
    #[serde(default)]
    pub manifest: Option<String>,
    /// Array mode: the volume comes back by FlashArray / Cloud Block Store replication instead
    /// of object copies; the S3 settings are not used.
    #[serde(default)]
    pub array: Option<super::array::ArrayParams>,
    /// Shard mode: the objects of one Distributed Map batch (its `Items`: ListObjectsV2 or S3
    /// Inventory items), copied instead of the whole prefix ([`super::shard`]).
    #[serde(default)]
    pub items: Option<Vec<Value>>,
}

/// Where objects are copied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    S3(S3Destination),
    /// Pull mode: a local directory.
    Directory(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Destination {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials_secret: Option<String>,
    pub force_path_style: bool,
}

/// An S3 location `s3://bucket/key-or-prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Where checkpoints are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointLocation {
    /// A prefix, written with the source's (the function's) credentials.
    S3(S3Url),
    Directory(PathBuf),
}

/// Validated parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub source_bucket: String,
    pub source_prefix: String,
    pub destination: Destination,
    pub dry_run: bool,
    pub concurrency: usize,
    pub part_size: u64,
    /// Largest object copied with one streamed PutObject, bytes (0: none).
    pub upload_cutoff: u64,
    pub mirror: bool,
    pub max_delete_fraction: f64,
    pub checkpoint: CheckpointLocation,
    pub manifest: Option<S3Url>,
}

impl Target {
    /// The destination's S3 settings; `None` in pull mode.
    pub fn s3(&self) -> Option<&S3Destination> {
        match &self.destination {
            Destination::S3(d) => Some(d),
            Destination::Directory(_) => None,
        }
    }

    /// A fingerprint of what the run copies: a checkpoint of other parameters is not resumed.
    pub fn fingerprint(&self) -> String {
        let text = format!(
            "{}|{}|{:?}|{}|{}",
            self.source_bucket, self.source_prefix, self.destination, self.part_size, self.mirror
        );
        hex::encode(&crate::digest::sha256(text.as_bytes())[..8])
    }
}

impl Params {
    /// Checks the parameters of either mode (array mode when `array` is set) without contacting
    /// anything.
    pub fn check(self) -> Result<()> {
        match &self.array {
            Some(a) => a.check(),
            None => self.validate().map(|_| ()),
        }
    }

    /// Checks the parameters; errors name the field and say what to write instead.
    pub fn validate(self) -> Result<Target> {
        let source_bucket = bucket_name("sourceBucket", &self.source_bucket)?;
        let source_prefix = prefix("sourcePrefix", self.source_prefix)?;
        let destination = match (self.destination_bucket, self.destination_directory) {
            (Some(_), Some(_)) => {
                return Err(Error::parameter(
                    "destinationDirectory",
                    "give either destinationBucket (S3) or destinationDirectory (a local \
                     directory, pull mode), not both",
                ));
            }
            (None, None) => {
                return Err(Error::parameter(
                    "destinationBucket",
                    "missing: give destinationBucket (S3) or destinationDirectory (a local \
                     directory, pull mode)",
                ));
            }
            (None, Some(dir)) => {
                for (field, set) in [
                    ("destinationPrefix", self.destination_prefix.is_some()),
                    ("destinationEndpoint", self.destination_endpoint.is_some()),
                    ("destinationRegion", self.destination_region.is_some()),
                    (
                        "destinationCredentialsSecret",
                        self.destination_credentials_secret.is_some(),
                    ),
                    ("forcePathStyle", self.force_path_style.is_some()),
                ] {
                    if set {
                        return Err(Error::parameter(
                            field,
                            "only applies to an S3 destination; with destinationDirectory put \
                             any subfolder in the directory path",
                        ));
                    }
                }
                Destination::Directory(directory("destinationDirectory", &dir)?)
            }
            (Some(bucket), None) => {
                let bucket = bucket_name("destinationBucket", &bucket)?;
                let destination_prefix = match self.destination_prefix {
                    Some(p) => prefix("destinationPrefix", p)?,
                    None => source_prefix.clone(),
                };
                let endpoint = self
                    .destination_endpoint
                    .as_deref()
                    .map(endpoint_url)
                    .transpose()?;
                let region = non_empty("destinationRegion", self.destination_region)?;
                let credentials_secret = non_empty(
                    "destinationCredentialsSecret",
                    self.destination_credentials_secret,
                )?;
                if endpoint.is_none()
                    && source_bucket == bucket
                    && (source_prefix.starts_with(&destination_prefix)
                        || destination_prefix.starts_with(&source_prefix))
                {
                    return Err(Error::parameter(
                        "destinationPrefix",
                        format!(
                            "s3://{bucket}/{destination_prefix} overlaps the source \
                             s3://{source_bucket}/{source_prefix} on the same endpoint: choose \
                             another destinationBucket or a destinationPrefix outside the source prefix"
                        ),
                    ));
                }
                Destination::S3(S3Destination {
                    force_path_style: self.force_path_style.unwrap_or(endpoint.is_some()),
                    bucket,
                    prefix: destination_prefix,
                    endpoint,
                    region,
                    credentials_secret,
                })
            }
        };
        let concurrency = integer(
            "concurrency",
            self.concurrency.as_ref(),
            DEFAULT_CONCURRENCY as u64,
            1,
            MAX_CONCURRENCY as u64,
        )? as usize;
        let part_size = integer(
            "partSizeMiB",
            self.part_size_mib.as_ref(),
            DEFAULT_PART_SIZE_MIB,
            MIN_PART_SIZE_MIB,
            MAX_PART_SIZE_MIB,
        )? * 1024
            * 1024;
        let upload_cutoff = integer(
            "uploadCutoffMiB",
            self.upload_cutoff_mib.as_ref(),
            DEFAULT_UPLOAD_CUTOFF_MIB,
            0,
            MAX_UPLOAD_CUTOFF_MIB,
        )? * 1024
            * 1024;
        let max_delete_fraction = match &self.max_delete_fraction {
            None => DEFAULT_MAX_DELETE_FRACTION,
            Some(v) => v
                .as_f64()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| {
                    Error::parameter(
                        "maxDeleteFraction",
                        format!("expected a number from 0 to 1 (0.25 = a quarter), got {v}"),
                    )
                })?,
        };
        if self.max_delete_fraction.is_some() && !self.mirror {
            return Err(Error::parameter(
                "maxDeleteFraction",
                "only applies with \"mirror\": true (nothing is deleted otherwise)",
            ));
        }
        let checkpoint = match self.checkpoint {
            Some(c) if c.trim().starts_with("s3://") => {
                let mut url = s3_url("checkpoint", &c)?;
                if !url.key.is_empty() && !url.key.ends_with('/') {
                    url.key.push('/');
                }
                CheckpointLocation::S3(url)
            }
            Some(c) => CheckpointLocation::Directory(directory("checkpoint", &c)?),
            None => match &destination {
                Destination::Directory(d) => {
                    CheckpointLocation::Directory(d.join(CHECKPOINT_PREFIX))
                }
                Destination::S3(_) => CheckpointLocation::S3(S3Url {
                    bucket: source_bucket.clone(),
                    key: CHECKPOINT_PREFIX.to_string(),
                }),
            },
        };
        let manifest = self
            .manifest
            .as_deref()
            .map(|m| s3_url("manifest", m))
            .transpose()?;
        if manifest
            .as_ref()
            .is_some_and(|m| m.key.is_empty() || m.key.ends_with('/'))
        {
            return Err(Error::parameter(
                "manifest",
                "expected s3://bucket/key of the manifest object, e.g. s3://ci-reports/replicate/manifest.jsonl",
            ));
        }
        Ok(Target {
            source_bucket,
            source_prefix,
            destination,
            dry_run: self.dry_run,
            concurrency,
            part_size,
            upload_cutoff,
            mirror: self.mirror,
            max_delete_fraction,
            checkpoint,
            manifest,
        })
    }
}

fn integer(field: &str, value: Option<&Value>, default: u64, min: u64, max: u64) -> Result<u64> {
    let Some(v) = value else {
        return Ok(default);
    };
    v.as_u64()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            Error::parameter(
                field,
                format!("expected a whole number from {min} to {max}, got {v}"),
            )
        })
}

fn directory(field: &str, value: &str) -> Result<PathBuf> {
    let v = value.trim();
    let p = PathBuf::from(v);
    if v.is_empty() || !p.is_absolute() {
        return Err(Error::parameter(
            field,
            format!("expected an absolute directory such as \"/var/nexus/blobs\", got {v:?}"),
        ));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::parameter(
            field,
            format!("expected a path without \"..\", got {v:?}"),
        ));
    }
    Ok(p)
}

pub(super) fn s3_url(field: &str, value: &str) -> Result<S3Url> {
    let v = value.trim();
    let rest = v.strip_prefix("s3://").ok_or_else(|| {
        Error::parameter(field, format!("expected an s3://bucket/key URL, got {v:?}"))
    })?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket = bucket_name(field, bucket)?;
    Ok(S3Url {
        bucket,
        key: key.to_string(),
    })
}

fn bucket_name(field: &str, value: &str) -> Result<String> {
    let v = value.trim();
    let problem = if v.is_empty() {
        "expected a bucket name, got an empty string".to_string()
    } else if v.contains("://") {
        format!(
            "expected a bucket name, got the URL {v:?}: write only the bucket name and put the \
             folder in the prefix parameter"
        )
    } else if v.contains('/') {
        format!(
            "expected a bucket name without '/', got {v:?}: put the folder in the prefix parameter"
        )
    } else if v.chars().any(char::is_whitespace) {
        format!("expected a bucket name, got {v:?} (bucket names have no spaces)")
    } else {
        return Ok(v.to_string());
    };
    Err(Error::parameter(field, problem))
}

fn prefix(field: &str, value: String) -> Result<String> {
    if value.starts_with('/') {
        return Err(Error::parameter(
            field,
            format!(
                "S3 keys do not start with '/': write {:?}",
                value.trim_start_matches('/')
            ),
        ));
    }
    Ok(value)
}

fn non_empty(field: &str, value: Option<String>) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Err(Error::parameter(
            field,
            "expected a non-empty string; leave it out for the default",
        )),
        Some(v) => Ok(Some(v.trim().to_string())),
    }
}

/// Checks an endpoint is an `http(s)://host[:port][/path]` URL without credentials.
fn endpoint_url(value: &str) -> Result<String> {
    const FIELD: &str = "destinationEndpoint";
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &v[8..]
    } else if lower.starts_with("http://") {
        &v[7..]
    } else {
        return Err(Error::parameter(
            FIELD,
            format!(
                "expected an http:// or https:// URL such as \"https://s3.onprem.example:9000\", got {v:?}"
            ),
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(Error::parameter(
            FIELD,
            "the URL must not carry credentials: put them in a Secrets Manager secret named by \
             destinationCredentialsSecret",
        ));
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(Error::parameter(
            FIELD,
            format!("expected a URL with a host, got {v:?}"),
        ));
    }
    if v.chars().any(char::is_whitespace) || rest.contains(['?', '#']) {
        return Err(Error::parameter(
            FIELD,
            format!("expected a plain URL without spaces, query or fragment, got {v:?}"),
        ));
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// Reads the destination credentials from a Secrets Manager secret, with the function's own
/// credentials. Nothing of the secret's value reaches a log or an error.
pub async fn destination_credentials(
    secrets: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<Credentials> {
    let text = crate::aws::secret_string(
        secrets,
        secret_id,
        "destinationCredentialsSecret",
        EXPECTED_SECRET,
    )
    .await?;
    parse_credentials(secret_id, &text)
}

const EXPECTED_SECRET: &str = "a JSON object {\"accessKeyId\": \"...\", \"secretAccessKey\": \"...\"} (optionally \"sessionToken\")";

/// Parses a secret's `{"accessKeyId", "secretAccessKey", "sessionToken"?}`. Errors never quote it.
pub fn parse_credentials(secret_id: &str, text: &str) -> Result<Credentials> {
    let fail = |what: &str| {
        Error::Configuration(format!(
            "destinationCredentialsSecret {secret_id:?}: {what}; the SecretString must be {EXPECTED_SECRET}"
        ))
    };
    let value: Value = serde_json::from_str(text).map_err(|_| fail("the secret is not JSON"))?;
    let Value::Object(obj) = value else {
        return Err(fail("the secret is JSON but not an object"));
    };
    let field = |name: &str| -> Result<Option<String>> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(_) => Err(fail(&format!("{name} is not a non-empty string"))),
        }
    };
    let access_key = field("accessKeyId")?.ok_or_else(|| fail("accessKeyId is missing"))?;
    let secret_key = field("secretAccessKey")?.ok_or_else(|| fail("secretAccessKey is missing"))?;
    let session_token = field("sessionToken")?;
    Ok(Credentials::new(
        access_key,
        secret_key,
        session_token,
        None,
        "snapstage-destination-secret",
    ))
}

/// The destination client: the shared configuration with the endpoint, path style, region and
/// credentials of the target.
pub fn destination_client(
    config: &SdkConfig,
    target: &S3Destination,
    credentials: Option<Credentials>,
) -> Result<Client> {
    let mut b = aws_sdk_s3::config::Builder::from(config).force_path_style(target.force_path_style);
    if let Some(endpoint) = &target.endpoint {
        // S3-compatible servers differ in their support of the newer flexible checksums;
        // Content-MD5 (always sent) is what every one of them verifies.
        b = b
            .endpoint_url(endpoint)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
    }
    match (&target.region, config.region(), &target.endpoint) {
        (Some(r), _, _) => b = b.region(Region::new(r.clone())),
        (None, Some(_), _) => {}
        // S3-compatible servers accept any region in the signature; us-east-1 is the convention.
        (None, None, Some(_)) => b = b.region(Region::new("us-east-1")),
        (None, None, None) => {
            return Err(Error::parameter(
                "destinationRegion",
                "no region is configured (AWS_REGION): set destinationRegion",
            ));
        }
    }
    if let Some(c) = credentials {
        b = b.credentials_provider(c);
    }
    Ok(Client::from_conf(b.build()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureKind;
    use serde_json::json;

    fn params(v: Value) -> Result<Target> {
        crate::job::params::merge::<Params>(&[crate::job::params::Layer {
            source: "request",
            values: v.as_object().unwrap().clone(),
        }])?
        .validate()
    }

    fn field(v: Value) -> (String, String) {
        match params(v).unwrap_err() {
            Error::Parameter { field, message } => (field, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_source_and_the_endpoint() {
        let t = params(
            json!({"sourceBucket": "shop-artifacts", "sourcePrefix": "nexus/blobs/",
            "destinationBucket": "onprem-nexus", "destinationEndpoint": "http://127.0.0.1:5101/"}),
        )
        .unwrap();
        let d = t.s3().unwrap();
        assert_eq!(d.prefix, "nexus/blobs/");
        assert_eq!(d.endpoint.as_deref(), Some("http://127.0.0.1:5101"));
        assert!(d.force_path_style);
        assert!(!t.dry_run && !t.mirror);
        assert_eq!(t.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(t.part_size, 16 * 1024 * 1024);
        assert_eq!(t.upload_cutoff, 64 * 1024 * 1024);
        assert_eq!(
            t.checkpoint,
            CheckpointLocation::S3(S3Url {
                bucket: "shop-artifacts".into(),
                key: ".snapstage/checkpoints/".into()
            })
        );

        let t = params(json!({"sourceBucket": "a", "destinationBucket": "b",
            "destinationPrefix": "copy/", "forcePathStyle": false, "dryRun": true,
            "concurrency": 64, "partSizeMiB": 5, "mirror": true, "maxDeleteFraction": 0.5,
            "uploadCutoffMiB": 0,
            "checkpoint": "s3://ops/ckpt", "manifest": "s3://ops/m.jsonl"}))
        .unwrap();
        let d = t.s3().unwrap();
        assert_eq!((d.prefix.as_str(), d.endpoint.as_deref()), ("copy/", None));
        assert!(!d.force_path_style && t.dry_run && t.mirror);
        assert_eq!((t.concurrency, t.part_size), (64, 5 * 1024 * 1024));
        assert_eq!(t.upload_cutoff, 0, "0: nothing streamed as one PutObject");
        assert_eq!(t.max_delete_fraction, 0.5);
        assert_eq!(
            t.checkpoint,
            CheckpointLocation::S3(S3Url {
                bucket: "ops".into(),
                key: "ckpt/".into()
            })
        );
        assert_eq!(t.manifest.unwrap().to_string(), "s3://ops/m.jsonl");
    }

    #[test]
    fn pull_mode_takes_an_absolute_directory() {
        let t = params(json!({"sourceBucket": "a", "destinationDirectory": "/var/nexus/blobs"}))
            .unwrap();
        assert_eq!(
            t.destination,
            Destination::Directory(PathBuf::from("/var/nexus/blobs"))
        );
        assert_eq!(
            t.checkpoint,
            CheckpointLocation::Directory(PathBuf::from(
                "/var/nexus/blobs/.snapstage/checkpoints/"
            ))
        );
        let (f, _) = field(json!({"sourceBucket": "a", "destinationDirectory": "nexus/blobs"}));
        assert_eq!(f, "destinationDirectory");
        let (f, _) = field(json!({"sourceBucket": "a", "destinationDirectory": "/var/../etc"}));
        assert_eq!(f, "destinationDirectory");
        let (f, _) = field(json!({"sourceBucket": "a", "destinationDirectory": "/x",
            "destinationBucket": "b"}));
        assert_eq!(f, "destinationDirectory");
        let (f, m) = field(json!({"sourceBucket": "a", "destinationDirectory": "/x",
            "destinationEndpoint": "http://h"}));
        assert_eq!(f, "destinationEndpoint");
        assert!(m.contains("S3 destination"), "{m}");
        let (f, m) = field(json!({"sourceBucket": "a"}));
        assert_eq!(f, "destinationBucket");
        assert!(m.contains("destinationDirectory"), "{m}");
    }

    #[test]
    fn invalid_parameters_name_the_field() {
        let (f, m) = field(json!({"sourceBucket": "", "destinationBucket": "b"}));
        assert_eq!(f, "sourceBucket");
        assert!(m.contains("empty"), "{m}");
        let (f, m) = field(json!({"sourceBucket": "s3://a/x", "destinationBucket": "b"}));
        assert_eq!(f, "sourceBucket");
        assert!(m.contains("URL"), "{m}");
        let (f, _) = field(json!({"sourceBucket": "a", "destinationBucket": "b/blobs"}));
        assert_eq!(f, "destinationBucket");
        for bad in [
            "ftp://host",
            "127.0.0.1:5101",
            "http://",
            "http://:9000",
            "https://h/x?y",
        ] {
            let (f, m) = field(
                json!({"sourceBucket": "a", "destinationBucket": "b", "destinationEndpoint": bad}),
            );
            assert_eq!(f, "destinationEndpoint", "{bad}");
            assert!(m.contains(bad) || m.contains("URL"), "{m}");
        }
        let (f, m) = field(json!({"sourceBucket": "a", "destinationBucket": "b",
            "destinationEndpoint": "https://AKIA:secret@minio:9000"}));
        assert_eq!(f, "destinationEndpoint");
        assert!(!m.contains("secret@"), "{m}");
        let (f, _) = field(json!({"sourceBucket": "a", "destinationBucket": "a"}));
        assert_eq!(f, "destinationPrefix");
        let (f, _) = field(json!({"sourceBucket": "a", "sourcePrefix": "/nexus",
            "destinationBucket": "b"}));
        assert_eq!(f, "sourcePrefix");
        let (f, _) =
            field(json!({"sourceBucket": "a", "destinationBucket": "b", "destinationRegion": " "}));
        assert_eq!(f, "destinationRegion");
        let (f, m) = field(json!({"sourceBucket": "a", "destinationBucket": "b", "bucket": "c"}));
        assert_eq!(f, "request.bucket");
        assert!(m.contains("unknown field"), "{m}");
        for (k, v) in [
            ("concurrency", json!(0)),
            ("concurrency", json!(65)),
            ("concurrency", json!("8")),
            ("partSizeMiB", json!(4)),
            ("partSizeMiB", json!(513)),
            ("partSizeMiB", json!(5.5)),
            ("uploadCutoffMiB", json!(5121)),
            ("uploadCutoffMiB", json!(-1)),
        ] {
            let mut req = json!({"sourceBucket": "a", "destinationBucket": "b"});
            req[k] = v.clone();
            let (f, m) = field(req);
            assert_eq!(f, k, "{v}");
            assert!(m.contains("whole number from"), "{m}");
        }
        let (f, _) = field(json!({"sourceBucket": "a", "destinationBucket": "b",
            "mirror": true, "maxDeleteFraction": 1.5}));
        assert_eq!(f, "maxDeleteFraction");
        let (f, m) = field(json!({"sourceBucket": "a", "destinationBucket": "b",
            "maxDeleteFraction": 0.5}));
        assert_eq!(f, "maxDeleteFraction");
        assert!(m.contains("mirror"), "{m}");
        let (f, _) = field(json!({"sourceBucket": "a", "destinationBucket": "b",
            "manifest": "s3://ops/"}));
        assert_eq!(f, "manifest");
        let (f, _) = field(json!({"sourceBucket": "a", "destinationBucket": "b",
            "checkpoint": "ckpt/"}));
        assert_eq!(f, "checkpoint");
        // The same bucket is fine on another endpoint, or under disjoint prefixes.
        assert!(
            params(json!({"sourceBucket": "a", "destinationBucket": "a",
            "destinationEndpoint": "https://minio:9000"}))
            .is_ok()
        );
        assert!(
            params(json!({"sourceBucket": "a", "sourcePrefix": "x/",
            "destinationBucket": "a", "destinationPrefix": "y/"}))
            .is_ok()
        );
    }

    #[test]
    fn secrets_parse_without_quoting_their_value() {
        let c = parse_credentials(
            "onprem/s3",
            r#"{"accessKeyId": "AKIAONPREM", "secretAccessKey": "s3cr3t-value", "other": 1}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AKIAONPREM");
        assert_eq!(c.secret_access_key(), "s3cr3t-value");
        assert_eq!(c.session_token(), None);
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        for bad in [
            r#"s3cr3t-value"#,
            r#"["s3cr3t-value"]"#,
            r#"{"accessKeyId": "AKIAONPREM"}"#,
            r#"{"accessKeyId": "", "secretAccessKey": "s3cr3t-value"}"#,
            r#"{"access_key": "AKIAONPREM", "secretAccessKey": "s3cr3t-value"}"#,
            r#"{"accessKeyId": "AKIAONPREM", "secretAccessKey": 42}"#,
        ] {
            let e = parse_credentials("onprem/s3", bad).unwrap_err();
            let m = e.to_string();
            assert_eq!(e.failure_kind(), FailureKind::ConfigurationError, "{m}");
            assert!(m.contains("\"onprem/s3\""), "{m}");
            assert!(
                !m.contains("s3cr3t-value") && !m.contains("AKIAONPREM"),
                "{m}"
            );
        }
    }
}
