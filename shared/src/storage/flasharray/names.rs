//! The names snapstage gives on an array and how it recognises its own: the run's snapshot
//! suffix, staging volume names, Purity's name rules, the tags of a staging volume.

use super::model::VolumeSnapshot;
use crate::error::{Error, Result};
use crate::interlock::markers::{
    MANAGED_BY, TAG_EXECUTION, TAG_MANAGED_BY, TAG_ROLE, execution_tag,
};
use crate::job::contract::Execution;
use crate::storage::SnapshotInfo;

/// Every suffix snapstage gives a snapshot starts with this.
pub const SUFFIX_PREFIX: &str = "snapstage-";

/// The tag namespace of the tags snapstage puts on the staging volumes it makes.
pub const TAG_NAMESPACE: &str = "snapstage";

/// Purity names are 1 to 63 characters.
pub(super) const MAX_NAME: usize = 63;

pub(super) fn run_hash(execution: &Execution) -> String {
    crate::digest::sha256_hex(execution.key.as_bytes())
}

/// The snapshot suffix for a run: `snapstage-` and 16 hex digits of the execution key's
/// SHA-256. Valid by Purity's suffix rule (1–63 letters, digits and `-`, starting and ending
/// with a letter or digit) and stable across retries of the same run.
pub fn snapshot_suffix(execution: &Execution) -> String {
    format!("{SUFFIX_PREFIX}{}", &run_hash(execution)[..16])
}

/// The name of the staging volume a run makes from `source`: `<source>-staging-<12 hex>`, the
/// source part shortened so the name stays within 63 characters.
pub fn staging_volume_name(source: &str, execution: &Execution) -> String {
    let base = volume_part(source);
    let tail = format!("-staging-{}", &run_hash(execution)[..12]);
    let cleaned: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(MAX_NAME - tail.len())
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let base = if cleaned.is_empty() {
        "snapstage"
    } else {
        cleaned
    };
    format!("{base}{tail}")
}

/// `db` for `db`, `pod::db`, `vgroup/db` and `array:db`.
pub(super) fn volume_part(name: &str) -> &str {
    let name = name.rsplit("::").next().unwrap_or(name);
    let name = name.rsplit('/').next().unwrap_or(name);
    name.rsplit(':').next().unwrap_or(name)
}

/// Purity's volume name rule: 1–63 letters, digits, `-` and `_`, starting and ending with a
/// letter or digit, with at least one letter, `-` or `_`.
pub fn check_volume_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().any(|c| !c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::parameter(
            field,
            format!(
                "expected a FlashArray volume name (1-63 letters, digits, '-' or '_'), got {name:?}"
            ),
        ))
    }
}

/// The volumes a snapshot was taken of, as bare names: its reported source, and the volume
/// its name carries (`V` in `V.SUFFIX` and in `PGROUP.SUFFIX.V`).
pub(super) fn production_volumes(snapshot: &SnapshotInfo) -> Vec<&str> {
    let mut out = vec![snapshot.source.as_str(), volume_part(&snapshot.source)];
    let parts: Vec<&str> = snapshot.id.split('.').collect();
    match parts.as_slice() {
        [v, _] => out.extend([*v, volume_part(v)]),
        [_, _, v] => out.extend([*v, volume_part(v)]),
        _ => {}
    }
    out.retain(|s| !s.is_empty());
    out
}

/// True when the snapshot's suffix is one snapstage gives.
pub(super) fn made_by_snapstage(s: &VolumeSnapshot) -> bool {
    s.suffix
        .as_deref()
        .or_else(|| s.name.rsplit_once('.').map(|(_, x)| x))
        .is_some_and(|x| x.starts_with(SUFFIX_PREFIX))
}

/// The tags that make a volume this run's staging volume (as on EBS: managed-by, execution,
/// role), not copyable: a copy of it is nobody's staging volume.
pub(super) fn staging_tags(execution: &Execution) -> [(&'static str, String); 3] {
    [
        (TAG_MANAGED_BY, MANAGED_BY.to_string()),
        (TAG_EXECUTION, execution_tag(execution)),
        (TAG_ROLE, "staging".to_string()),
    ]
}
