//! User templates: the database workload written by the user as Kubernetes YAML with
//! placeholders, instead of snapstage's own Service and StatefulSet. snapstage still makes the
//! Namespace, the Secret with generated credentials and the volume import (PV / PVC); the
//! template brings the rest and must mount the PVC.
//!
//! Where the YAML comes from (`template` parameter, exactly one):
//!
//! | form | what |
//! | --- | --- |
//! | `{"inline": "<yaml>"}` | the YAML itself (SNAPSTAGE_DEFAULTS or a direct request: UserParameters holds 1000 characters) |
//! | `{"file": "/path/db.yaml"}` | a file (the CLI; or a file packaged with the function) |
//! | `{"artifact": {"path": "deploy/db.yaml", "name"?: "SourceOutput"}}` | a file inside a CodePipeline input artifact (the zip in S3, read with the job's artifact credentials); `name` may be left out when the action has one input artifact |
//!
//! Placeholders, `${NAME}` ([`PLACEHOLDERS`]); `$${` writes a literal `${`. Any other `${...}` is
//! an error that names it. Every document is checked before anything is sent:
//! - its kind is one the RBAC in `infra/k8s/rbac.yaml` grants in the staging namespace
//!   ([`ALLOWED_KINDS`]); cluster-scoped objects are refused;
//! - it parses into its k8s-openapi type, and nothing in it is lost doing so (a misspelt field
//!   is an error naming its path);
//! - it lands in the staging namespace (no `metadata.namespace`, or exactly that one);
//! - it gets snapstage's labels (`app.kubernetes.io/managed-by`, `part-of`, `snapstage.io/*`),
//!   workloads on their pod template too;
//! - the template references `${PVC_NAME}` and a workload's container mounts that PVC;
//! - it holds at least one StatefulSet or Deployment (readiness waits for them) and one
//!   Service (its first port is the published `Endpoint` and `Port`);
//! - no object takes the name of snapstage's Secret.
//!
//! Unless `resetCredentials` is false, snapstage adds its credentials reset as the last init
//! container of the workload that mounts the PVC ([`crate::staging::render::reset`]): the image, mount, user,
//! resources and (PostgreSQL) `PGDATA` of the container that mounts it.
//!
//! The namespace enforces the `restricted` Pod Security Standard: pods of a template must meet
//! it (non-root, no privilege escalation, capabilities dropped, seccomp RuntimeDefault), or the
//! API server refuses to create them and readiness times out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::kube::object::{NameRule, Object, check_object};
use crate::staging::engine::{SECRET_KEY_PASSWORD, SECRET_KEY_USERNAME};
use crate::staging::objects::SECRET_NAME;
use crate::staging::params::template::TemplateText;
use crate::staging::spec::Spec;

/// The placeholders a template may use, and what they become.
pub const PLACEHOLDERS: [(&str, &str); 11] = [
    ("NAMESPACE", "the staging namespace"),
    (
        "PVC_NAME",
        "the PVC with the restored data (required: the database must mount it)",
    ),
    (
        "SECRET_NAME",
        "the Secret with the generated credentials (staging-db-credentials)",
    ),
    (
        "SECRET_USERNAME_KEY",
        "its key holding the user name (username)",
    ),
    (
        "SECRET_PASSWORD_KEY",
        "its key holding the password (password)",
    ),
    (
        "IMAGE",
        "the image parameter, or the engine's default image",
    ),
    ("ENGINE", "postgresql, mysql, mongodb, jenkins or nexus"),
    ("PORT", "the engine's port (5432, 3306, 27017, 8080, 8081)"),
    (
        "MOUNT_PATH",
        "the engine's data directory in its official image",
    ),
    (
        "RUN_AS_USER",
        "the official image's user id (999; jenkins 1000, nexus 200)",
    ),
    (
        "EXECUTION",
        "the run's snapstage.io/execution label value (a hash of the execution)",
    ),
];

/// The kinds a template may hold (what the namespaced RBAC grants).
pub const ALLOWED_KINDS: [(&str, &str); 5] = [
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
];

/// Kinds that are cluster-scoped: named as such when a template holds one.
const CLUSTER_SCOPED: [&str; 12] = [
    "Namespace",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "Node",
    "VolumeSnapshotClass",
    "VolumeSnapshotContent",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// One object of a template, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateObject {
    StatefulSet(StatefulSet),
    Deployment(Deployment),
    Service(Service),
    ConfigMap(ConfigMap),
    Secret(Secret),
}

impl TemplateObject {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::StatefulSet(_) => "StatefulSet",
            Self::Deployment(_) => "Deployment",
            Self::Service(_) => "Service",
            Self::ConfigMap(_) => "ConfigMap",
            Self::Secret(_) => "Secret",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Self::StatefulSet(o) => &o.metadata,
            Self::Deployment(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::ConfigMap(o) => &o.metadata,
            Self::Secret(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// Apply order: configuration first, then the Service, then the workloads.
    fn rank(&self) -> u8 {
        match self {
            Self::ConfigMap(_) | Self::Secret(_) => 0,
            Self::Service(_) => 1,
            Self::StatefulSet(_) | Self::Deployment(_) => 2,
        }
    }

    /// The pod template and selector of a workload.
    pub fn workload(&self) -> Option<(&PodTemplateSpec, &LabelSelector)> {
        match self {
            Self::StatefulSet(o) => o.spec.as_ref().map(|s| (&s.template, &s.selector)),
            Self::Deployment(o) => o.spec.as_ref().map(|s| (&s.template, &s.selector)),
            _ => None,
        }
    }

    fn pod_template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
        match self {
            Self::StatefulSet(o) => o.spec.as_mut().map(|s| &mut s.template),
            Self::Deployment(o) => o.spec.as_mut().map(|s| &mut s.template),
            _ => None,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::StatefulSet(o) => &mut o.metadata,
            Self::Deployment(o) => &mut o.metadata,
            Self::Service(o) => &mut o.metadata,
            Self::ConfigMap(o) => &mut o.metadata,
            Self::Secret(o) => &mut o.metadata,
        }
    }

    /// Checks it as [`check_object`] does for snapstage's own objects.
    pub fn check(&self) -> Result<()> {
        match self {
            Self::StatefulSet(o) => check_object(o, NameRule::Dns1123Label),
            Self::Deployment(o) => check_object(o, NameRule::Dns1123Subdomain),
            Self::Service(o) => check_object(o, NameRule::Dns1035Label),
            Self::ConfigMap(o) => check_object(o, NameRule::Dns1123Subdomain),
            Self::Secret(o) => check_object(o, NameRule::Dns1123Subdomain),
        }
    }

    /// Applies it (server-side, forced) in its namespace.
    pub async fn apply(&self, client: &kube::Client, field_manager: &str) -> Result<()> {
        use crate::kube::api::apply;
        use kube::Api;
        let ns = self.meta().namespace.as_deref().unwrap_or_default();
        match self {
            Self::StatefulSet(o) => apply(&Api::namespaced(client.clone(), ns), o, field_manager)
                .await
                .map(|_| ()),
            Self::Deployment(o) => apply(&Api::namespaced(client.clone(), ns), o, field_manager)
                .await
                .map(|_| ()),
            Self::Service(o) => apply(&Api::namespaced(client.clone(), ns), o, field_manager)
                .await
                .map(|_| ()),
            Self::ConfigMap(o) => apply(&Api::namespaced(client.clone(), ns), o, field_manager)
                .await
                .map(|_| ()),
            Self::Secret(o) => apply(&Api::namespaced(client.clone(), ns), o, field_manager)
                .await
                .map(|_| ()),
        }
    }

    /// The YAML document of this object.
    pub fn to_yaml(&self) -> Result<String> {
        let y = match self {
            Self::StatefulSet(o) => serde_yaml_ng::to_string(o),
            Self::Deployment(o) => serde_yaml_ng::to_string(o),
            Self::Service(o) => serde_yaml_ng::to_string(o),
            Self::ConfigMap(o) => serde_yaml_ng::to_string(o),
            Self::Secret(o) => serde_yaml_ng::to_string(o),
        };
        y.map_err(|e| Error::Internal(format!("rendering YAML: {e}")))
    }
}

/// The placeholder values for `spec`.
pub fn values(spec: &Spec) -> BTreeMap<&'static str, String> {
    let engine = spec.engine;
    BTreeMap::from([
        ("NAMESPACE", spec.namespace.clone()),
        ("PVC_NAME", spec.volume.claim_name().to_string()),
        ("SECRET_NAME", SECRET_NAME.to_string()),
        ("SECRET_USERNAME_KEY", SECRET_KEY_USERNAME.to_string()),
        ("SECRET_PASSWORD_KEY", SECRET_KEY_PASSWORD.to_string()),
        ("IMAGE", spec.image.clone()),
        ("ENGINE", engine.as_str().to_string()),
        ("PORT", engine.port().to_string()),
        ("MOUNT_PATH", engine.mount_path().to_string()),
        ("RUN_AS_USER", engine.user_id().to_string()),
        ("EXECUTION", spec.execution_label.clone()),
    ])
}

fn template_error(source: &str, what: impl std::fmt::Display) -> Error {
    Error::parameter("template", format!("{source}: {what}"))
}

/// Replaces every `${NAME}`; `$${` is a literal `${`. Unknown and malformed placeholders are
/// errors that name them all.
pub fn substitute(
    text: &str,
    values: &BTreeMap<&'static str, String>,
    source: &str,
) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            // `$${`: an escaped, literal `${`.
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let line = || text[..=text.len() - rest.len() + at].lines().count().max(1);
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if end == 0 || !after[end..].starts_with('}') {
            return Err(template_error(
                source,
                format!(
                    "line {}: \"${{\" does not start a placeholder ${{NAME}} (letters, digits and _, then \"}}\"); write $${{ for a literal ${{",
                    line()
                ),
            ));
        }
        let name = &after[..end];
        match values.get(name) {
            Some(v) => out.push_str(v),
            None => {
                unknown.insert(name.to_string());
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if !unknown.is_empty() {
        let names: Vec<String> = unknown.iter().map(|n| format!("${{{n}}}")).collect();
        let known: Vec<String> = PLACEHOLDERS
            .iter()
            .map(|(n, _)| format!("${{{n}}}"))
            .collect();
        return Err(template_error(
            source,
            format!(
                "unknown placeholder(s) {}; the placeholders are {} (write $${{ for a literal ${{)",
                names.join(", "),
                known.join(", ")
            ),
        ));
    }
    Ok(out)
}

/// Fields of `input` that are not in `typed` (what the typed parse dropped), as paths.
fn lost_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    Some(tv) => lost_fields(v, tv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            for (n, (iv, tv)) in i.iter().zip(t).enumerate() {
                lost_fields(iv, tv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Parses `doc` into `K`, refusing anything the type does not know.
fn typed<K: Object>(doc: &Value, what: &str, source: &str) -> Result<K> {
    let obj: K = serde_json::from_value(doc.clone()).map_err(|e| {
        template_error(
            source,
            format!(
                "{what} does not match the Kubernetes type {}/{}: {e}",
                K::api_version(&()),
                K::kind(&())
            ),
        )
    })?;
    let back = serde_json::to_value(&obj)
        .map_err(|e| Error::Internal(format!("serializing {what}: {e}")))?;
    let mut lost = Vec::new();
    lost_fields(doc, &back, "", &mut lost);
    if !lost.is_empty() {
        lost.truncate(5);
        return Err(template_error(
            source,
            format!(
                "{what}: unknown field(s) {} (not in the Kubernetes {} type; misspelt?)",
                lost.join(", "),
                K::kind(&())
            ),
        ));
    }
    Ok(obj)
}

fn add_labels(meta: &mut ObjectMeta, labels: &BTreeMap<String, String>) {
    let mine = meta.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in labels {
        mine.insert(k.clone(), v.clone());
    }
}

/// Renders and checks a template for `spec`: the typed objects in apply order.
pub fn render(t: &TemplateText, spec: &Spec) -> Result<Vec<TemplateObject>> {
    let source = t.source.as_str();
    if !t.text.contains("${PVC_NAME}") {
        return Err(template_error(
            source,
            "does not reference ${PVC_NAME}: the database must mount the PVC that holds the restored data",
        ));
    }
    let text = substitute(&t.text, &values(spec), source)?;
    let ns = spec.namespace.as_str();
    let labels = template_labels(spec);
    let mut objects = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let n = i + 1;
        let mut doc = Value::deserialize(de)
            .map_err(|e| template_error(source, format!("document {n} is not YAML: {e}")))?;
        if doc.is_null() {
            continue;
        }
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let what = format!("document {n} ({kind} {name:?})");
        if kind.is_empty() || api_version.is_empty() {
            return Err(template_error(
                source,
                format!("document {n} is not a Kubernetes object: it needs apiVersion and kind"),
            ));
        }
        if CLUSTER_SCOPED.contains(&kind.as_str()) {
            return Err(template_error(
                source,
                format!(
                    "{what}: {kind} is cluster-scoped; a template holds only objects in the staging namespace"
                ),
            ));
        }
        if !ALLOWED_KINDS.contains(&(api_version.as_str(), kind.as_str())) {
            let allowed: Vec<String> = ALLOWED_KINDS
                .iter()
                .map(|(a, k)| format!("{k} ({a})"))
                .collect();
            return Err(template_error(
                source,
                format!(
                    "{what}: {api_version} {kind} is not allowed; a template may hold {} (what snapstage's RBAC grants in the staging namespace)",
                    allowed.join(", ")
                ),
            ));
        }
        match doc.pointer("/metadata/namespace") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == ns => {}
            Some(other) => {
                return Err(template_error(
                    source,
                    format!(
                        "{what}: metadata.namespace is {other}, not the staging namespace {ns:?}; leave it out or write ${{NAMESPACE}}"
                    ),
                ));
            }
        }
        if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String(ns.to_string()));
        }
        let mut obj = match kind.as_str() {
            "StatefulSet" => TemplateObject::StatefulSet(typed(&doc, &what, source)?),
            "Deployment" => TemplateObject::Deployment(typed(&doc, &what, source)?),
            "Service" => TemplateObject::Service(typed(&doc, &what, source)?),
            "ConfigMap" => TemplateObject::ConfigMap(typed(&doc, &what, source)?),
            _ => TemplateObject::Secret(typed(&doc, &what, source)?),
        };
        if matches!(obj, TemplateObject::Secret(_)) && obj.name() == SECRET_NAME {
            return Err(template_error(
                source,
                format!(
                    "{what}: the Secret {SECRET_NAME} is snapstage's (generated credentials); reference it with ${{SECRET_NAME}} instead"
                ),
            ));
        }
        if !seen.insert((obj.kind(), obj.name().to_string())) {
            return Err(template_error(
                source,
                format!("{what}: a second {kind} named {name:?}"),
            ));
        }
        add_labels(obj.meta_mut(), &labels);
        if let Some(pod) = obj.pod_template_mut() {
            add_labels(
                pod.metadata.get_or_insert_with(ObjectMeta::default),
                &labels,
            );
        }
        obj.check()
            .map_err(|e| template_error(source, format!("{what}: {e}")))?;
        objects.push(obj);
    }
    check_objects(&objects, spec, source)?;
    if spec.reset_credentials {
        add_reset(&mut objects, spec)?;
    }
    objects.sort_by_key(TemplateObject::rank);
    Ok(objects)
}

/// snapstage's labels on every template object (its own `app.kubernetes.io/name`,
/// `instance` and `component` are kept).
fn template_labels(spec: &Spec) -> BTreeMap<String, String> {
    let mut l = crate::staging::render::parts::app_labels(spec);
    for k in [
        crate::kube::labels::LABEL_NAME,
        crate::kube::labels::LABEL_INSTANCE,
        crate::kube::labels::LABEL_COMPONENT,
    ] {
        l.remove(k);
    }
    l
}

/// True when a container of `pod` mounts a volume backed by PVC `claim`.
fn mounts_claim(pod: &PodSpec, claim: &str) -> bool {
    pod.volumes.iter().flatten().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == claim)
            && pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
                .any(|c| c.volume_mounts.iter().flatten().any(|m| m.name == v.name))
    })
}

/// Adds the credentials reset ([`crate::staging::render::reset`]) as the last init container of the first
/// workload that mounts the PVC.
fn add_reset(objects: &mut [TemplateObject], spec: &Spec) -> Result<()> {
    let claim = spec.volume.claim_name();
    for o in objects.iter_mut() {
        let what = format!("{} {}", o.kind(), o.name());
        let Some(pod) = o.pod_template_mut().and_then(|t| t.spec.as_mut()) else {
            continue;
        };
        if mounts_claim(pod, claim) {
            return crate::staging::render::reset::add_to(spec, pod, claim, &what);
        }
    }
    Ok(())
}

/// The rules across a template's objects.
fn check_objects(objects: &[TemplateObject], spec: &Spec, source: &str) -> Result<()> {
    let claim = spec.volume.claim_name();
    let workloads: Vec<&TemplateObject> =
        objects.iter().filter(|o| o.workload().is_some()).collect();
    if workloads.is_empty() {
        return Err(template_error(
            source,
            "holds no StatefulSet or Deployment: the database needs a workload (readiness waits for it)",
        ));
    }
    let mounted = workloads.iter().any(|w| {
        w.workload()
            .and_then(|(t, _)| t.spec.as_ref())
            .is_some_and(|p| mounts_claim(p, claim))
    });
    if !mounted {
        return Err(template_error(
            source,
            format!(
                "no container mounts the PVC {claim} (${{PVC_NAME}}): add a volume with persistentVolumeClaim.claimName: ${{PVC_NAME}} and a volumeMount of it"
            ),
        ));
    }
    for w in &workloads {
        let Some((template, selector)) = w.workload() else {
            continue;
        };
        let pod_labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let want = selector.match_labels.clone().unwrap_or_default();
        if want.is_empty() || !want.iter().all(|(k, v)| pod_labels.get(k) == Some(v)) {
            return Err(template_error(
                source,
                format!(
                    "{} {}: spec.selector.matchLabels must be set and match the pod template's labels",
                    w.kind(),
                    w.name()
                ),
            ));
        }
    }
    let first_service = objects.iter().find_map(|o| match o {
        TemplateObject::Service(s) => Some(s),
        _ => None,
    });
    let has_port = first_service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty());
    if !has_port {
        return Err(template_error(
            source,
            "holds no Service with a port: its first Service's first port is published as Endpoint and Port",
        ));
    }
    Ok(())
}

/// The published Service name and port of a rendered template.
pub fn endpoint(objects: &[TemplateObject]) -> Option<(String, i32)> {
    objects.iter().find_map(|o| match o {
        TemplateObject::Service(s) => {
            let port = s.spec.as_ref()?.ports.as_ref()?.first()?.port;
            Some((s.metadata.name.clone()?, port))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests;
