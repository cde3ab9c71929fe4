//! The server-side apply requests a plan would send, built with kube-core's request builder: one
//! `PATCH <collection>/<name>?&force=true&fieldManager=<manager>` (kube-core's exact query) per object, body
//! `application/apply-patch+yaml`, in dependency order.

use std::fmt;

use kube::core::Request;
use kube::core::params::{Patch, PatchParams};

use crate::error::{Error, Result};
use crate::kube::object::Object;
use crate::staging::render::template::TemplateObject;
use crate::staging::render::{Rendered, Workload};

/// One request, as it would go to the API server.
///
/// `Display` shows the method and path only. The body of a Secret carries credentials once
/// apply lands: never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApplyRequest {
    pub kind: String,
    /// API group (`""` for core) and resource (plural), as RBAC names them.
    pub group: String,
    pub resource: String,
    pub namespaced: bool,
    pub name: String,
    pub method: String,
    /// Path and query, e.g. `/api/v1/namespaces/snapstage-ab12?&force=true&fieldManager=...`.
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl fmt::Display for ApplyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

impl fmt::Debug for ApplyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplyRequest")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("request", &self.to_string())
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// The server-side apply request for one object, forced, under `field_manager`.
pub fn apply_request<K: Object>(obj: &K, field_manager: &str) -> Result<ApplyRequest> {
    let kind = K::kind(&()).into_owned();
    let meta = obj.meta();
    let name = meta.name.clone().unwrap_or_default();
    let url = K::url_path(&(), meta.namespace.as_deref());
    let params = PatchParams::apply(field_manager).force();
    let req = Request::new(url)
        .patch(&name, &params, &Patch::Apply(obj))
        .map_err(|e| {
            Error::Internal(format!(
                "building the apply request for {kind} {name:?}: {e}"
            ))
        })?;
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let method = req.method().as_str().to_string();
    let path = req.uri().to_string();
    Ok(ApplyRequest {
        kind,
        group: K::group(&()).into_owned(),
        resource: K::plural(&()).into_owned(),
        namespaced: meta.namespace.is_some(),
        name,
        method,
        path,
        content_type,
        body: req.into_body(),
    })
}

/// The requests for every object, in apply order: Namespace, the isolating NetworkPolicies,
/// Secret, PV, PVC, then Service and StatefulSet (or the template's objects), and last the
/// NetworkPolicy that opens the database once masking succeeded.
pub fn apply_requests(r: &Rendered, field_manager: &str) -> Result<Vec<ApplyRequest>> {
    let mut out = vec![apply_request(&r.namespace, field_manager)?];
    for policy in &r.network.isolation {
        out.push(apply_request(policy, field_manager)?);
    }
    if let Some(secret) = &r.secret {
        out.push(apply_request(secret, field_manager)?);
    }
    if let Some(pv) = &r.persistent_volume {
        out.push(apply_request(pv, field_manager)?);
    }
    if let Some(claim) = &r.claim {
        out.push(apply_request(claim, field_manager)?);
    }
    match &r.workload {
        Workload::Builtin(b) => {
            out.push(apply_request(&b.service, field_manager)?);
            out.push(apply_request(&b.stateful_set, field_manager)?);
        }
        Workload::Template(objects) => {
            for o in objects {
                out.push(o.apply_request(field_manager)?);
            }
        }
    }
    // Once masking succeeded (at once without masking).
    if let Some(policy) = &r.network.access {
        out.push(apply_request(policy, field_manager)?);
    }
    Ok(out)
}

impl TemplateObject {
    /// Its server-side apply request.
    pub fn apply_request(&self, field_manager: &str) -> Result<ApplyRequest> {
        match self {
            Self::StatefulSet(o) => apply_request(o, field_manager),
            Self::Deployment(o) => apply_request(o, field_manager),
            Self::Service(o) => apply_request(o, field_manager),
            Self::ConfigMap(o) => apply_request(o, field_manager),
            Self::Secret(o) => apply_request(o, field_manager),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::kube::names::derived_namespace;
    use crate::staging::fixtures::plan_for;
    use serde_json::json;

    #[test]
    fn ssa_requests_carry_field_manager_and_force() {
        let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0"}));
        let ns = derived_namespace("direct/fixture");
        let lines: Vec<String> = p.requests.iter().map(ToString::to_string).collect();
        // kube-core's form serializer starts the query with '&' after '?'; the API server ignores it.
        let q = "?&force=true&fieldManager=snapstage-deploy-staging-db";
        assert_eq!(
            lines,
            [
                format!("PATCH /api/v1/namespaces/{ns}{q}"),
                format!(
                    "PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-isolation{q}"
                ),
                format!(
                    "PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-egress{q}"
                ),
                format!("PATCH /api/v1/namespaces/{ns}/secrets/staging-db-credentials{q}"),
                format!("PATCH /api/v1/persistentvolumes/{ns}-data{q}"),
                format!("PATCH /api/v1/namespaces/{ns}/persistentvolumeclaims/staging-db-data{q}"),
                format!("PATCH /api/v1/namespaces/{ns}/services/staging-db{q}"),
                format!("PATCH /apis/apps/v1/namespaces/{ns}/statefulsets/staging-db{q}"),
                // Applied once masking succeeded.
                format!(
                    "PATCH /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/staging-db-access{q}"
                ),
            ]
        );
        for r in &p.requests {
            assert_eq!(r.content_type, "application/apply-patch+yaml");
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["kind"], r.kind.as_str());
            assert_eq!(body["metadata"]["name"], r.name.as_str());
        }
    }

    /// infra/k8s/rbac.yaml grants exactly what a plan would apply, and is valid RBAC.
    #[test]
    fn rbac_example_allows_every_planned_request() {
        use k8s_openapi::api::rbac::v1::{
            ClusterRole, ClusterRoleBinding, PolicyRule, RoleBinding,
        };
        let binds_deploy = |subjects: Option<&[k8s_openapi::api::rbac::v1::Subject]>| {
            subjects
                .unwrap_or_default()
                .iter()
                .any(|s| s.name == "snapstage:deploy-staging-db")
        };
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/k8s/rbac.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut roles = std::collections::BTreeMap::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            match v["kind"].as_str().unwrap() {
                "ClusterRole" => {
                    let role: ClusterRole = serde_json::from_value(v).unwrap();
                    roles.insert(
                        role.metadata.name.clone().unwrap(),
                        role.rules.unwrap_or_default(),
                    );
                }
                // Bindings of deploy-staging-db's group; the storage functions' groups (CSI
                // backend, hooks) have their own roles further down the file.
                "ClusterRoleBinding" => {
                    let b: ClusterRoleBinding = serde_json::from_value(v).unwrap();
                    if binds_deploy(b.subjects.as_deref()) {
                        assert_eq!(
                            b.role_ref.name, "snapstage-deploy-staging-db-cluster",
                            "only the cluster-scoped role is bound cluster-wide"
                        );
                    } else {
                        assert!(!b.role_ref.name.starts_with("snapstage-deploy"));
                    }
                }
                "RoleBinding" => {
                    let b: RoleBinding = serde_json::from_value(v).unwrap();
                    if binds_deploy(b.subjects.as_deref()) {
                        assert_eq!(b.role_ref.name, "snapstage-deploy-staging-db-namespaced");
                    }
                }
                "Role" => {}
                other => panic!("unexpected kind {other} in rbac.yaml"),
            }
        }
        let allows = |rules: &Vec<PolicyRule>, group: &str, resource: &str, verb: &str| {
            rules.iter().any(|r| {
                r.api_groups.iter().flatten().any(|g| g == group)
                    && r.resources.iter().flatten().any(|x| x == resource)
                    && r.verbs.iter().any(|v| v == verb)
            })
        };
        let cluster = &roles["snapstage-deploy-staging-db-cluster"];
        let namespaced = &roles["snapstage-deploy-staging-db-namespaced"];
        // A user template with every kind a template may hold.
        let template = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
---
apiVersion: v1
kind: Secret
metadata: {name: extra}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: x, volumeMounts: [{name: d, mountPath: /d}]}]
      volumes: [{name: d, persistentVolumeClaim: {claimName: "${PVC_NAME}"}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tools}
spec:
  selector: {matchLabels: {app: tools}}
  template:
    metadata: {labels: {app: tools}}
    spec: {containers: [{name: t, image: x}]}
"#;
        for (_, kind) in crate::staging::render::template::ALLOWED_KINDS {
            assert!(template.contains(&format!("kind: {kind}\n")), "{kind}");
        }
        for request in [
            json!({"volumeId": "vol-0123456789abcdef0"}),
            json!({"backend": "csi", "snapshotName": "s"}),
            json!({"backend": "csi", "pvcName": "p", "template": {"inline": template}}),
        ] {
            for r in plan_for(request).requests {
                let rules = if r.namespaced { namespaced } else { cluster };
                for verb in ["get", "create", "patch"] {
                    assert!(
                        allows(rules, &r.group, &r.resource, verb),
                        "{verb} {}/{} not granted",
                        r.group,
                        r.resource
                    );
                }
            }
        }
        assert!(allows(
            namespaced,
            "snapshot.storage.k8s.io",
            "volumesnapshots",
            "get"
        ));
        // Least privilege: no wildcard verbs; deploy-staging-db deletes (teardown, sweep) only
        // whole staging namespaces and their PersistentVolume objects; the storage functions
        // delete only VolumeSnapshots and VolumeGroupSnapshots (retention of the ones snapstage
        // made), and restore-to-staging, in the staging namespace, the PVCs of a failed
        // `targets` set; nobody deletes a VolumeSnapshotContent.
        for (name, rules) in &roles {
            let allowed: &[&str] = if name.starts_with("snapstage-deploy-staging-db") {
                &["namespaces", "persistentvolumes"]
            } else if name == "snapstage-restore-to-staging-namespaced" {
                &["volumesnapshots", "persistentvolumeclaims"]
            } else {
                &["volumesnapshots", "volumegroupsnapshots"]
            };
            for r in rules {
                assert!(!r.verbs.iter().any(|v| v == "*"), "wildcard verb: {r:?}");
                if r.verbs.iter().any(|v| v == "delete") {
                    assert!(
                        r.resources
                            .iter()
                            .flatten()
                            .all(|x| allowed.contains(&x.as_str())),
                        "{name}: delete granted beyond {allowed:?}: {r:?}"
                    );
                }
            }
        }
        assert!(
            !allows(cluster, "", "secrets", "get"),
            "Secrets are never granted cluster-wide"
        );
    }

    #[test]
    fn field_manager_is_url_encoded() {
        let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "fieldManager": "team a/ci"}));
        assert!(
            p.requests[0]
                .path
                .ends_with("?&force=true&fieldManager=team+a%2Fci"),
            "{}",
            p.requests[0]
        );
    }
}
