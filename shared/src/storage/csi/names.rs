//! The names and labels snapstage gives its objects: per-run snapshot and staging names that
//! stay valid Kubernetes names, the `snapstage.io/*` labels, and selectors as `matchLabels`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::error::{Error, Result};
use crate::job::contract::Execution;
use crate::kube::labels::LABEL_SOURCE;
use crate::kube::labels::MANAGED_BY;
use crate::kube::labels::{
    ANNOTATION_EXECUTION_KEY, LABEL_EXECUTION, LABEL_MANAGED_BY, LABEL_PART_OF, LABEL_ROLE,
};
use crate::kube::names::{MAX_SUBDOMAIN, execution_label};

pub(super) const MAX_LABEL: usize = 63;

/// `<base><tail>`, the base cut so the whole stays a valid name of at most 253 characters.
pub(super) fn name_with_tail(base: &str, tail: &str) -> String {
    let mut b: String = base.chars().take(MAX_SUBDOMAIN - tail.len()).collect();
    while b.ends_with(['-', '.']) {
        b.pop();
    }
    if b.is_empty() {
        b.push_str(MANAGED_BY);
    }
    format!("{b}{tail}")
}

/// The VolumeSnapshot a run makes of `pvc`: `<pvc>-snapstage-<run hash>`.
pub fn snapshot_name(pvc: &str, execution: &Execution) -> String {
    name_with_tail(
        pvc,
        &format!("-snapstage-{}", execution_label(&execution.key)),
    )
}

/// The VolumeGroupSnapshot a run makes: `snapstage-<run hash>`.
pub fn group_snapshot_name(execution: &Execution) -> String {
    format!("snapstage-{}", execution_label(&execution.key))
}

/// The staging VolumeSnapshot and PVC a run makes from a snapshot of `pvc`.
pub fn staging_name(pvc: &str, execution: &Execution) -> String {
    name_with_tail(
        pvc,
        &format!("-staging-{}", execution_label(&execution.key)),
    )
}

/// The cluster-scoped VolumeSnapshotContent bound to the staging VolumeSnapshot `name` in `ns`.
pub fn staging_content_name(ns: &str, name: &str) -> String {
    let h = crate::digest::sha256_hex(format!("{ns}/{name}").as_bytes());
    name_with_tail(&format!("snapstage-{ns}-{name}"), &format!("-{}", &h[..8]))
}

/// The `snapstage.io/source` label value for a PVC: its name, or for a name longer than a label
/// allows, a prefix and a hash.
pub fn source_label(pvc: &str) -> String {
    if pvc.len() <= MAX_LABEL {
        return pvc.to_string();
    }
    let h = crate::digest::sha256_hex(pvc.as_bytes());
    let mut b: String = pvc.chars().take(MAX_LABEL - 17).collect();
    while b.ends_with(['-', '.']) {
        b.pop();
    }
    format!("{b}-{}", &h[..16])
}

pub(super) fn labels(
    execution: &Execution,
    role: &str,
    source: Option<&str>,
) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_PART_OF.to_string(), MANAGED_BY.to_string()),
        (LABEL_EXECUTION.to_string(), execution_label(&execution.key)),
        (LABEL_ROLE.to_string(), role.to_string()),
    ]);
    if let Some(s) = source {
        l.insert(LABEL_SOURCE.to_string(), source_label(s));
    }
    l
}

pub(super) fn meta(
    name: &str,
    namespace: Option<&str>,
    execution: &Execution,
    role: &str,
    source: Option<&str>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels(execution, role, source)),
        annotations: Some(BTreeMap::from([(
            ANNOTATION_EXECUTION_KEY.to_string(),
            execution.key.clone(),
        )])),
        ..Default::default()
    }
}

pub(super) fn label_of<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// An equality-only label selector (`a=b,c==d`) as `matchLabels`, for a VolumeGroupSnapshot.
pub(super) fn match_labels(selector: &str) -> Result<LabelSelector> {
    let mut m = BTreeMap::new();
    for part in selector.split(',').map(str::trim) {
        let (k, v) = part
            .split_once("==")
            .or_else(|| part.split_once('='))
            .filter(|(k, v)| !k.trim().is_empty() && !v.contains(['!', '=']) && !k.contains('!'))
            .ok_or_else(|| {
                Error::parameter(
                    "selector",
                    format!(
                        "with csi.groupSnapshotClass the selector must be label=value pairs (a group snapshot selects by matchLabels), got {selector:?}"
                    ),
                )
            })?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(LabelSelector {
        match_labels: Some(m),
        match_expressions: None,
    })
}
