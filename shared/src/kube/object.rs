//! Checks on one typed Kubernetes object before it is sent: it survives a serde round trip into
//! its k8s-openapi type, and its name, namespace, labels and annotations follow the API
//! server's rules.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::kube::names;

/// A Kubernetes object type snapstage renders.
pub trait Object:
    kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned + PartialEq + Clone
{
}
impl<K> Object for K where
    K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned + PartialEq + Clone
{
}

/// How a kind's `metadata.name` is checked by the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// Namespaces.
    Dns1123Label,
    /// Services.
    Dns1035Label,
    /// Most other objects.
    Dns1123Subdomain,
}

fn invalid(kind: &str, name: &str, what: String) -> Error {
    Error::Internal(format!("rendered {kind} {name:?} is invalid: {what}"))
}

/// Serializes `obj`, parses it back into its type and checks nothing was lost; returns the JSON.
pub fn round_trip<K: Object>(obj: &K) -> Result<Value> {
    let kind = K::kind(&());
    let name = obj.meta().name.clone().unwrap_or_default();
    let json = serde_json::to_value(obj)
        .map_err(|e| invalid(&kind, &name, format!("does not serialize: {e}")))?;
    for (field, want) in [
        ("apiVersion", K::api_version(&()).into_owned()),
        ("kind", kind.to_string()),
    ] {
        if json.get(field).and_then(Value::as_str) != Some(want.as_str()) {
            return Err(invalid(&kind, &name, format!("{field} is not {want:?}")));
        }
    }
    let back: K = serde_json::from_value(json.clone())
        .map_err(|e| invalid(&kind, &name, format!("does not parse back: {e}")))?;
    if &back != obj {
        return Err(invalid(
            &kind,
            &name,
            "changes in a serde round trip".into(),
        ));
    }
    Ok(json)
}

/// Checks one object: round trip, name, namespace, labels, annotations.
pub fn check_object<K: Object>(obj: &K, rule: NameRule) -> Result<()> {
    round_trip(obj)?;
    let kind = K::kind(&());
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    let name_ok = match rule {
        NameRule::Dns1123Label => names::is_dns1123_label(name),
        NameRule::Dns1035Label => names::is_dns1035_label(name),
        NameRule::Dns1123Subdomain => names::is_dns1123_subdomain(name),
    };
    if !name_ok {
        return Err(invalid(
            &kind,
            name,
            format!("the name is not a valid {rule:?}"),
        ));
    }
    if let Some(ns) = &meta.namespace
        && !names::is_dns1123_label(ns)
    {
        return Err(invalid(
            &kind,
            name,
            format!("namespace {ns:?} is not a DNS-1123 label"),
        ));
    }
    for (k, v) in meta.labels.iter().flatten() {
        if !names::is_qualified_name(k) || !names::is_label_value(v) {
            return Err(invalid(
                &kind,
                name,
                format!(
                    "label {k:?}={v:?} is not a valid label (key: [prefix/]name; value: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends)"
                ),
            ));
        }
    }
    for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
        if !names::is_qualified_name(k) {
            return Err(invalid(
                &kind,
                name,
                format!("annotation key {k:?} is not valid"),
            ));
        }
    }
    Ok(())
}
