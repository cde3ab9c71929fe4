//! Whose object is it: snapstage only changes or deletes what it made
//! (`app.kubernetes.io/managed-by=snapstage`) and never anything labelled production.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::{Error, Result};
use crate::kube::labels::MANAGED_BY;
use crate::kube::labels::{LABEL_EXECUTION, LABEL_MANAGED_BY};

/// True when any label marks the object as production (`env=production`,
/// `snapstage.io/role=prod`, `app.kubernetes.io/environment=Production`, ...).
pub fn is_production(meta: &ObjectMeta) -> bool {
    crate::interlock::markers::is_production(
        labels(meta).iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

/// True when snapstage made the object.
pub fn is_managed(meta: &ObjectMeta) -> bool {
    labels(meta).get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
}

/// The object's `snapstage.io/execution` label.
pub fn execution_of(meta: &ObjectMeta) -> Option<&str> {
    labels(meta).get(LABEL_EXECUTION).map(String::as_str)
}

fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

/// Refuses an existing object snapstage may not take over or delete. `doing` is what would
/// happen to it ("deploy into", "delete").
pub fn check(kind: &str, meta: &ObjectMeta, doing: &str) -> Result<()> {
    if is_production(meta) {
        let name = meta.name.as_deref().unwrap_or_default();
        return Err(Error::Refused(format!(
            "{kind} {name} is labelled production; snapstage never touches production objects (will not {doing} it)"
        )));
    }
    require_managed(kind, meta, doing)
}

/// Refuses an existing object that snapstage did not make (`doing` as in [`check`]).
pub fn require_managed(kind: &str, meta: &ObjectMeta, doing: &str) -> Result<()> {
    if is_managed(meta) {
        return Ok(());
    }
    let name = meta.name.as_deref().unwrap_or_default();
    let ns = meta
        .namespace
        .as_deref()
        .map(|n| format!("{n}/"))
        .unwrap_or_default();
    Err(Error::Refused(format!(
        "{kind} {ns}{name} exists and is not labelled {LABEL_MANAGED_BY}={MANAGED_BY}: snapstage only touches what it created, so it will not {doing} it; choose another name or delete it yourself"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("x".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn production_labels_are_recognised_whatever_the_prefix_or_case() {
        for (k, v) in [
            ("env", "production"),
            ("environment", "Prod"),
            ("app.kubernetes.io/environment", "PRD"),
            ("snapstage.io/role", "production"),
            ("stage", "prod"),
        ] {
            assert!(is_production(&meta(&[(k, v)])), "{k}={v}");
        }
        for (k, v) in [
            ("env", "staging"),
            ("snapstage.io/role", "staging"),
            ("product", "prod"),
        ] {
            assert!(!is_production(&meta(&[(k, v)])), "{k}={v}");
        }
    }

    #[test]
    fn only_managed_non_production_objects_pass() {
        let ours = meta(&[(LABEL_MANAGED_BY, MANAGED_BY)]);
        check("Namespace", &ours, "delete").unwrap();
        let e = check("Namespace", &meta(&[]), "delete").unwrap_err();
        assert!(
            e.to_string()
                .contains("not labelled app.kubernetes.io/managed-by=snapstage"),
            "{e}"
        );
        assert_eq!(
            e.failure_kind(),
            crate::error::FailureKind::ConfigurationError
        );
        let e = check(
            "Namespace",
            &meta(&[(LABEL_MANAGED_BY, MANAGED_BY), ("env", "production")]),
            "delete",
        )
        .unwrap_err();
        assert!(e.to_string().contains("labelled production"), "{e}");
        let helm = meta(&[(LABEL_MANAGED_BY, "Helm")]);
        assert!(check("Namespace", &helm, "deploy into").is_err());
    }
}
