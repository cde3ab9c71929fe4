//! How snapstage calls EC2: the run's tags and filters, and create calls sent once per try (a
//! lost answer must never make a second snapshot, volume or copy).

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use crate::error::{Error, Result};
use crate::interlock::markers::{
    MANAGED_BY, TAG_EXECUTION, TAG_MANAGED_BY, TAG_ROLE, TAG_SOURCE, execution_tag,
};
use crate::job::contract::Execution;

/// The tag that ties a copy to the snapshot it was copied from.
pub(super) const TAG_COPY_OF: &str = "snapstage:copy-of";

/// The tag that marks the snapshots of one CreateSnapshots call (one point in time): the
/// instance whose volumes they are. (One tag set covers the whole call, so these snapshots carry
/// no `snapstage:source`; their volume id names the source, and lookups go by volume id.)
pub const TAG_GROUP: &str = "snapstage:group";

pub(super) fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

pub(super) fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

pub(super) fn run_tags(
    kind: ResourceType,
    execution: &Execution,
    role: &str,
    source: Option<&str>,
) -> TagSpecification {
    run_tags_with(kind, execution, role, source, &[])
}

pub(super) fn run_tags_with(
    kind: ResourceType,
    execution: &Execution,
    role: &str,
    source: Option<&str>,
    extra: &[(&str, &str)],
) -> TagSpecification {
    let mut spec = TagSpecification::builder()
        .resource_type(kind)
        .tags(tag(TAG_MANAGED_BY, MANAGED_BY))
        .tags(tag(TAG_EXECUTION, &execution_tag(execution)))
        .tags(tag(TAG_ROLE, role));
    if let Some(s) = source {
        spec = spec.tags(tag(TAG_SOURCE, s));
    }
    if let Some(p) = &execution.pipeline {
        spec = spec.tags(tag("snapstage:pipeline", p));
    }
    if let Some(c) = &execution.commit {
        spec = spec.tags(tag("snapstage:commit", c));
    }
    for (k, v) in extra {
        spec = spec.tags(tag(k, v));
    }
    spec.build()
}

/// Tries of a create call in total (each sent once, without the SDK's own retries).
const CREATE_TRIES: u32 = 3;

/// The SDK's retries off for one call: a create is retried by the backend that first looks
/// for what an earlier try made.
pub(super) fn single_try() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default()
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::standard().with_max_attempts(1))
}

/// What a create call sent once per try ([`create_once_per_try`]) ended with.
pub(super) enum Created<T, R> {
    /// This try's answer.
    Sent(T),
    /// An earlier try had made it: its answer was lost.
    Found(R),
}

/// Sends a create call without the SDK's own retries (a lost answer must not make a second
/// resource); after a transient failure waits with backoff, then asks `made` whether an earlier
/// try made the resource before sending again.
pub(super) async fn create_once_per_try<T, R, SendFut, MadeFut>(
    call: &str,
    mut send: impl FnMut() -> SendFut,
    mut made: impl FnMut() -> MadeFut,
) -> Result<Created<T, R>>
where
    SendFut: std::future::Future<Output = Result<T>>,
    MadeFut: std::future::Future<Output = Result<Option<R>>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match send().await {
            Ok(out) => return Ok(Created::Sent(out)),
            Err(e) if retry_create(&e, tries) => {
                tracing::warn!(call, error = %e, tries, "create failed; checking whether it was made before trying again");
                tokio::time::sleep(create_backoff(tries)).await;
                if let Some(found) = made().await? {
                    tracing::info!(call, "the resource was made: its answer was lost");
                    return Ok(Created::Found(found));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Transient failures (throttling, 5xx, a lost connection, a timeout) are tried again.
fn retry_create(e: &Error, tries: u32) -> bool {
    matches!(e, Error::Unavailable { .. }) && tries < CREATE_TRIES
}

/// Exponential backoff from 1 s with "equal jitter" (half fixed, half random), at most 8 s. The
/// first wait also gives EC2's eventually consistent Describe calls time to see a new resource.
fn create_backoff(tries: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let exp = std::time::Duration::from_secs(1u64 << tries.saturating_sub(1).min(3));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(tries);
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    exp / 2 + exp.mul_f64(fraction / 2.0)
}

/// A stable client token for CreateVolume (≤ 64 ASCII chars): a retry with the same token
/// returns the same volume instead of a second one.
pub(super) fn client_token(execution: &Execution, snapshot: &str) -> String {
    let d = crate::digest::sha256(format!("{}\n{snapshot}", execution.key).as_bytes());
    format!("snapstage-{}", &hex::encode(d)[..40])
}
