//! What a step will do: both sides listed to the end, each source object decided — unchanged,
//! to copy, or (mirror mode) what the destination holds that the source lost.

use std::collections::{HashMap, HashSet};

use super::compare::{Listed, copy_order, destination_key};
use super::copy::{Candidate, Ctx, refresh};
use super::params::{CheckpointLocation, Target};
use super::sink::{Comparison, Sink};
use super::source::Source;
use crate::error::{Error, Result};

/// What a step will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub source_objects: u64,
    /// In copy order.
    pub to_copy: Vec<Candidate>,
    /// Unchanged objects (destination keys, with the source's size and ETag).
    pub unchanged: Vec<Listed>,
    /// Mirror mode: destination objects whose source is gone (destination keys), in delete order.
    pub to_delete: Vec<Listed>,
    /// Objects under the destination prefix.
    pub destination_objects: u64,
}

impl Plan {
    pub fn bytes_to_copy(&self) -> u64 {
        self.to_copy.iter().map(|c| c.source.size).sum()
    }

    /// Mirror mode's guard: refuses to delete more than `max_fraction` of the destination.
    pub fn check_deletions(&self, max_fraction: f64, destination: &str) -> Result<()> {
        let n = self.to_delete.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let total = self.destination_objects.max(1);
        let fraction = n as f64 / total as f64;
        if fraction <= max_fraction {
            return Ok(());
        }
        let needed = (fraction * 100.0).ceil() / 100.0;
        Err(Error::Refused(format!(
            "mirror would delete {n} of the {total} objects at {destination} ({:.0}%), more than \
             maxDeleteFraction {max_fraction} allows; nothing was copied or deleted. If the source \
             really lost them, list them first with \"dryRun\": true, then run with \
             \"maxDeleteFraction\": {needed} (or higher)",
            fraction * 100.0
        )))
    }
}

/// Keys of snapstage's own files in the source bucket (checkpoints, the manifest): never copied.
pub(super) fn own_source_key(target: &Target, key: &str) -> bool {
    let checkpoint = matches!(&target.checkpoint, CheckpointLocation::S3(u)
        if u.bucket == target.source_bucket && key.starts_with(&u.key));
    let manifest = target
        .manifest
        .as_ref()
        .is_some_and(|m| m.bucket == target.source_bucket && m.key == key);
    checkpoint || manifest || key.starts_with(".snapstage/")
}

/// Lists both sides and decides what to copy (and, in mirror mode, what to delete).
pub async fn plan<R: Source, W: Sink>(ctx: &Ctx<R, W>, target: &Target) -> Result<Plan> {
    let src: Vec<Listed> = ctx
        .source
        .list(&target.source_prefix)
        .await?
        .into_iter()
        .filter(|l| !own_source_key(target, &l.key))
        .collect();
    let dst: HashMap<String, Listed> = ctx
        .sink
        .list(!target.dry_run)
        .await?
        .into_iter()
        .map(|l| (l.key.clone(), l))
        .collect();
    decide(ctx, target, src, dst).await
}

/// What the destination holds of the listed source objects `src` (by destination key): a lookup
/// of those keys only ([`Sink::list_keys`]), not a listing of the whole prefix.
pub(super) async fn at_destination<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    target: &Target,
    src: &[Listed],
) -> Result<HashMap<String, Listed>> {
    let dst_prefix = ctx.sink.prefix();
    let mut keys: Vec<String> = src
        .iter()
        .map(|s| destination_key(&s.key, &target.source_prefix, dst_prefix))
        .collect();
    keys.sort();
    keys.dedup();
    Ok(ctx
        .sink
        .list_keys(&keys)
        .await?
        .into_iter()
        .map(|l| (l.key.clone(), l))
        .collect())
}

/// Decides each listed source object against what the destination holds (`dst`, by destination
/// key): unchanged or to copy; in mirror mode, what `dst` holds that no source object wants.
pub(super) async fn decide<R: Source, W: Sink>(
    ctx: &Ctx<R, W>,
    target: &Target,
    src: Vec<Listed>,
    dst: HashMap<String, Listed>,
) -> Result<Plan> {
    let dst_prefix = ctx.sink.prefix();
    let mut plan = Plan {
        source_objects: src.len() as u64,
        destination_objects: dst.len() as u64,
        ..Plan::default()
    };
    let mut wanted = HashSet::new();
    for mut s in src {
        let key = destination_key(&s.key, &target.source_prefix, dst_prefix);
        if !ctx.sink.accepts(&key) {
            tracing::warn!(key = %s.key, "not a plain relative path (a folder marker, \"..\", an empty segment): not copied to the directory");
            continue;
        }
        wanted.insert(key.clone());
        let d = dst.get(&key);
        // A listing without ETags (s3s-fs, some S3-compatible stores) tells nothing about the
        // content: the source's HeadObject does. An unchanged object then costs a HEAD or two,
        // not a full read, and the candidate carries the version to read.
        if s.etag.is_empty() && d.is_some_and(|d| d.size == s.size) && !refresh(ctx, &mut s).await?
        {
            tracing::warn!(key = %s.key, "deleted at the source during the run; not copied");
            continue;
        }
        match ctx.sink.compare(&ctx.source, &key, &s, d).await? {
            Comparison::Unchanged => plan.unchanged.push(Listed {
                key,
                size: s.size,
                etag: s.etag,
            }),
            Comparison::Copy { destination_sha256 } => plan.to_copy.push(Candidate {
                source: s,
                destination_key: key,
                destination_sha256,
            }),
        }
    }
    plan.to_copy
        .sort_by(|a, b| copy_order(&a.source.key).cmp(&copy_order(&b.source.key)));
    if target.mirror {
        let mut gone: Vec<Listed> = dst
            .into_values()
            .filter(|d| !wanted.contains(&d.key))
            .collect();
        // Reverse of the copy order: metadata.properties, then .properties, then .bytes.
        gone.sort_by(|a, b| copy_order(&b.key).cmp(&copy_order(&a.key)));
        plan.to_delete = gone;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureKind;

    fn listed(key: &str) -> Listed {
        Listed {
            key: key.into(),
            size: 1,
            etag: String::new(),
        }
    }

    #[test]
    fn the_deletion_guard_says_how_many_and_how_to_override() {
        let plan = Plan {
            to_delete: (0..3).map(|i| listed(&format!("k{i}"))).collect(),
            destination_objects: 10,
            ..Plan::default()
        };
        assert!(plan.check_deletions(0.3, "s3://b/").is_ok());
        let e = plan.check_deletions(0.1, "s3://b/").unwrap_err();
        let m = e.to_string();
        assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
        assert!(
            m.contains("delete 3 of the 10 objects at s3://b/ (30%)"),
            "{m}"
        );
        assert!(m.contains("\"maxDeleteFraction\": 0.3"), "{m}");
        assert!(m.contains("dryRun"), "{m}");
        assert!(Plan::default().check_deletions(0.0, "x").is_ok());
    }
}
