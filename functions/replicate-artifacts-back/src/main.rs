//! `replicate-artifacts-back`: copies the build artifacts created in the cloud (e.g. a Sonatype
//! Nexus blob store in S3) back to on-premises S3-compatible storage or a local directory,
//! verified, parallel, streaming and resumable.
//! The logic is in [`snapstage::replicate`]; this file wires the clients.

use std::process::ExitCode;

use snapstage::job::entry::About;
use snapstage::replicate;
use snapstage::{Function, Outcome, Result, Step};

const ABOUT: About = About {
    summary: "Copies the objects under a prefix of a cloud S3 bucket (e.g. a Sonatype Nexus blob store)
to an on-premises S3-compatible endpoint (MinIO, FlashBlade, ...), another bucket, or - pull mode,
for the CLI on-prem - a local directory.
- Incremental: an object is skipped when the destination has the same size and ETag (a plain MD5,
  or the multipart md5-of-part-md5s-N of the same parts), or records the source ETag / SHA-256 it
  was copied from; in a directory, an index of size/mtime/ETag or a hash of the file decides.
- Streaming and parallel: objects larger than one part are copied in parts (ranged GETs, parts
  uploaded while the next ones are read; a multipart source keeps its own parts), up to
  `concurrency` objects at once; memory stays under concurrency x part size.
- Verified before it counts: MD5 against the source ETag, Content-MD5 on every write, each part's
  ETag, and a HeadObject of the result (size, ETag, source ETag); a mismatch is retried once, then
  the run fails naming the key. Files are written under a partial name, fsync'ed, read back and
  renamed.
- Blob-store order: every .bytes is verified before any .properties starts, metadata.properties
  last (deletions in the reverse order).
- Resumable: near the deadline, or after a kill, the run continues from its checkpoint (counters,
  manifest, open multipart uploads) without copying anything twice.
- Never deletes unless \"mirror\": true, and then only what the complete source listing and a
  HeadObject prove gone, at most maxDeleteFraction of the destination.
- Writes a manifest (JSON lines: key, size, checksum, action) as the job's output artifact, or to
  the manifest location.",
    parameters: "  sourceBucket                  (required) the cloud bucket to copy from
  sourcePrefix                  key prefix to copy (default \"\": the whole bucket), e.g. \"nexus/blobs/\"
  destinationBucket             the bucket to copy to (this or destinationDirectory is required)
  destinationPrefix             key prefix at the destination (default: the sourcePrefix)
  destinationEndpoint           http(s) URL of the on-prem S3-compatible endpoint
                                (default: the normal S3 endpoint)
  destinationRegion             region for the destination (default: AWS_REGION; us-east-1 with an endpoint)
  destinationCredentialsSecret  Secrets Manager secret id whose SecretString is
                                {\"accessKeyId\": \"...\", \"secretAccessKey\": \"...\"}; read with the
                                function's own credentials (default: the function's own credentials)
  forcePathStyle                path-style bucket addressing (default: true with destinationEndpoint)
  destinationDirectory          pull mode: an absolute local directory to copy into, e.g.
                                \"/var/nexus/blobs\" (the CLI on-prem; keys map to paths under it)
  concurrency                   objects copied at once, 1-64 (default 8)
  partSizeMiB                   part size of multipart copies, 5-512 (default 16); memory stays
                                under concurrency x partSizeMiB
  uploadCutoffMiB               objects up to this size whose source ETag is their MD5 go to an S3
                                destination as one PutObject streamed from the GET, nothing held,
                                checked by the ETag the destination answers; larger ones in parts,
                                resumable across steps. 0-5120 (default 64; 0: never)
  mirror                        delete at the destination what is gone at the source (default false)
  maxDeleteFraction             mirror mode refuses to delete more than this share of the
                                destination, 0-1 (default 0.1)
  checkpoint                    where progress is checkpointed: s3://bucket/prefix/ or an absolute
                                directory (default s3://<sourceBucket>/.snapstage/checkpoints/, or
                                <destinationDirectory>/.snapstage/checkpoints/ in pull mode)
  manifest                      s3://bucket/key for the manifest when the job has no output
                                artifact (default: none); in shard mode a prefix, under which
                                the shard writes shard-<id>.jsonl (default
                                s3://<sourceBucket>/.snapstage/manifests/<executionId>/)
  dryRun                        list and report what would be copied and deleted; change nothing
                                (default false)
  array                         array mode instead of object copies (the S3 settings are not used):
                                {\"source\": {endpoint, apiTokenSecret, protectionGroup} (Cloud Block Store),
                                 \"target\": {endpoint, apiTokenSecret} (on-prem FlashArray),
                                 \"sourceArray\": \"<cloud array name>\", \"volume\": \"nexus-blobs\",
                                 \"targetVolume\": \"nexus-onprem\", \"overwrite\": true}: a protection group
                                snapshot replicated now, waited for, then copied into targetVolume
                                (overwrite must be true when it exists) and verified
  array.rehydrate               rehydrate the on-prem Nexus around the copy (requires overwrite: true):
                                {\"cluster\": {\"kubeconfigFile\": \"/path\"} | {\"kubeconfigSecret\": \"id\"} |
                                 {\"eks\": {\"name\": \"...\"}} | \"inCluster\",
                                 \"namespace\": \"nexus\", \"workload\": \"statefulset/nexus\" (or deployment/<name>),
                                 \"healthUrl\": \"http://nexus.nexus.svc:8081/service/rest/v1/status/writable\" (optional),
                                 \"timeoutMinutes\": 20 (1-120, to stop and to become healthy)}:
                                records the replicas (annotation snapstage.io/rehydrate-replicas) and
                                scales the workload to 0, waits for its pods to go, REFUSES while a pod
                                mounts the volume's claim or a host is connected to the volume, copies,
                                scales back, waits for readyReplicas and HTTP 200 from healthUrl; any
                                failure scales it back first and says whether the volume was overwritten
  items                         shard mode: the objects to copy instead of the whole prefix, as a
                                Step Functions Distributed Map batch gives them - the input
                                {\"Items\": [...], \"BatchInput\": {parameters}} sets it: ListObjectsV2
                                items {\"Key\", \"Size\", \"Etag\"} or S3 Inventory items {\"Bucket\",
                                \"Key\", \"Size\"}; keys under sourcePrefix, the bucket sourceBucket.
                                Answers {objectsCopied, bytesCopied, objectsSkipped, manifest,
                                failedKeys}; an item gone at the source fails the shard; no mirror",
    outputs: "  ObjectsCopied        objects written to the destination (and verified)
  ObjectsSkipped       objects already at the destination, unchanged
  ObjectsVerified      copied objects checked at the destination after the write
  ObjectsDeleted       objects deleted because they are gone at the source (mirror mode)
  BytesCopied          bytes written
  ThroughputMBps       BytesCopied / the steps' wall time, in MB/s
  ObjectsToCopy        objects that were new or changed (in a dry run: what would be copied)
  BytesToCopy          their size in bytes
  ObjectsToDelete      mirror mode: objects gone at the source (in a dry run: what would be deleted)
  DestinationBucket    the destination bucket (S3)
  DestinationDirectory the destination directory (pull mode)
  Manifest             where the manifest was written, when it was
  DryRun               \"true\" or \"false\"
  array mode: Mode=array  SnapshotId  ReplicaSnapshotId  TargetVolume  SizeGiB
  with rehydrate: RehydratedVolume  Snapshot (the replicated snapshot copied)  Replicas  Healthy",
};

struct ReplicateArtifactsBack {
    s3: aws_sdk_s3::Client,
    secrets: aws_sdk_secretsmanager::Client,
    sdk: aws_config::SdkConfig,
}

impl Function for ReplicateArtifactsBack {
    const NAME: &'static str = "replicate-artifacts-back";
    type Params = replicate::Params;

    async fn step(&self, step: Step<Self::Params>) -> Result<Outcome> {
        replicate::step(&self.s3, &self.secrets, &self.sdk, step).await
    }
}

fn main() -> ExitCode {
    snapstage::job::entry::main(&ABOUT, |sdk| ReplicateArtifactsBack {
        s3: aws_sdk_s3::Client::new(sdk),
        secrets: aws_sdk_secretsmanager::Client::new(sdk),
        sdk: sdk.clone(),
    })
}
