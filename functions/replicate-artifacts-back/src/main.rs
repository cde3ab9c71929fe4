//! `replicate-artifacts-back`: copies the build artifacts created in the cloud (e.g. a Sonatype
//! Nexus blob store in S3) back to on-premises S3-compatible storage, verified and resumable.
//! The logic is in [`snapstage::replicate`]; this file wires the clients.

use std::process::ExitCode;

use snapstage::entry::About;
use snapstage::replicate;
use snapstage::{Function, Outcome, Result, Step};

const ABOUT: About = About {
    summary: "Copies the objects under a prefix of a cloud S3 bucket (e.g. a Sonatype Nexus blob store)
to an on-premises S3-compatible endpoint (MinIO, FlashBlade, ...) or another bucket.
- Incremental: an object is skipped when the destination has the same size and ETag, or the
  source ETag / SHA-256 recorded when it was copied.
- Verified: the content's MD5 is checked against the source ETag, sent as Content-MD5 (the server
  verifies it) with the SHA-256 in the metadata (snapstage-sha256), and the destination's ETag is
  checked after the write.
- Blob-store order: .bytes before .properties, metadata.properties last.
- Never deletes at the destination.
- Resumable: near the deadline it checkpoints and continues; a re-run skips what is copied.
- Objects over 64 MiB fail the run before anything is copied (multipart streaming is not yet
  supported).",
    parameters: "  sourceBucket                  (required) the cloud bucket to copy from
  sourcePrefix                  key prefix to copy (default \"\": the whole bucket), e.g. \"nexus/blobs/\"
  destinationBucket             (required) the bucket to copy to
  destinationPrefix             key prefix at the destination (default: the sourcePrefix)
  destinationEndpoint           http(s) URL of the on-prem S3-compatible endpoint
                                (default: the normal S3 endpoint)
  destinationRegion             region for the destination (default: AWS_REGION; us-east-1 with an endpoint)
  destinationCredentialsSecret  Secrets Manager secret id whose SecretString is
                                {\"accessKeyId\": \"...\", \"secretAccessKey\": \"...\"}; read with the
                                function's own credentials (default: the function's own credentials)
  forcePathStyle                path-style bucket addressing (default: true with destinationEndpoint)
  dryRun                        list and report what would be copied; copy nothing (default false)",
    outputs: "  ObjectsCopied      objects written to the destination
  ObjectsSkipped     objects already at the destination, unchanged
  ObjectsVerified    copied objects whose destination was checked after the write (ETag = MD5)
  BytesCopied        bytes written
  ObjectsToCopy      objects that were new or changed (in a dry run: what would be copied)
  BytesToCopy        their size in bytes
  DestinationBucket  the destination bucket
  DryRun             \"true\" or \"false\"",
};

struct ReplicateArtifactsBack {
    s3: aws_sdk_s3::Client,
    secrets: aws_sdk_secretsmanager::Client,
    config: aws_config::SdkConfig,
}

impl Function for ReplicateArtifactsBack {
    const NAME: &'static str = "replicate-artifacts-back";
    type Params = replicate::Params;

    async fn step(&self, step: Step<Self::Params>) -> Result<Outcome> {
        replicate::step(&self.s3, &self.secrets, &self.config, step).await
    }
}

fn main() -> ExitCode {
    snapstage::entry::main(&ABOUT, |config| ReplicateArtifactsBack {
        s3: aws_sdk_s3::Client::new(config),
        secrets: aws_sdk_secretsmanager::Client::new(config),
        config: config.clone(),
    })
}
