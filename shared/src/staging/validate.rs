//! Checks a rendered plan before anything would be sent: each object round-trips through serde
//! into its k8s-openapi type, names follow the rule of their kind, labels and annotations are
//! valid, and the objects agree with each other (the PV is reserved for the PVC the StatefulSet
//! mounts, the Service selects the pod and targets its port, credentials come from the Secret).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{Error, Result};
use crate::kube::object::{NameRule, check_object};
use crate::staging::render::parts::persistent_volume_name;
use crate::staging::render::{Builtin, Rendered, Workload};

/// Checks every object and how they refer to each other.
pub fn check(rendered: &Rendered) -> Result<()> {
    let r = rendered;
    check_object(&r.namespace, NameRule::Dns1123Label)?;
    if let Some(secret) = &r.secret {
        check_object(secret, NameRule::Dns1123Subdomain)?;
        if secret.data.is_some() || secret.string_data.is_some() {
            return Err(broken(
                "the planned Secret carries data: credentials are generated at apply time".into(),
            ));
        }
    }
    if let Some(pv) = &r.persistent_volume {
        check_object(pv, NameRule::Dns1123Subdomain)?;
    }
    if let Some(claim) = &r.claim {
        check_object(claim, NameRule::Dns1123Subdomain)?;
    }
    check_references(r)?;
    match &r.workload {
        Workload::Builtin(b) => {
            check_object(&b.service, NameRule::Dns1035Label)?;
            // Pod names are `<statefulset>-0`, and the revision label holds the name: keep it a label.
            check_object(&b.stateful_set, NameRule::Dns1123Label)?;
            check_builtin(r, b)
        }
        // Checked object by object, and across objects, as they were rendered.
        Workload::Template(objects) => {
            let ns = r.namespace.metadata.name.as_deref();
            match objects.iter().find(|o| o.meta().namespace.as_deref() != ns) {
                Some(o) => Err(broken(format!(
                    "template {} {} is not in the staging namespace",
                    o.kind(),
                    o.name()
                ))),
                None => Ok(()),
            }
        }
    }
}

fn broken(what: String) -> Error {
    Error::Internal(format!("rendered objects disagree: {what}"))
}

fn check_references(r: &Rendered) -> Result<()> {
    let ns = r.namespace.metadata.name.clone().unwrap_or_default();
    for (kind, meta) in [
        ("Secret", r.secret.as_ref().map(|s| &s.metadata)),
        (
            "PersistentVolumeClaim",
            r.claim.as_ref().map(|c| &c.metadata),
        ),
    ]
    .into_iter()
    .filter_map(|(k, m)| Some((k, m?)))
    {
        if meta.namespace.as_deref() != Some(ns.as_str()) {
            return Err(broken(format!("{kind} is not in namespace {ns:?}")));
        }
    }
    let claim_name = r.claim_name.clone();
    if let Some(claim) = &r.claim
        && claim.metadata.name.as_deref() != Some(claim_name.as_str())
    {
        return Err(broken(format!("the PVC is not named {claim_name}")));
    }
    let claim_spec = r
        .claim
        .as_ref()
        .and_then(|c| c.spec.clone())
        .unwrap_or_default();
    if let Some(pv) = &r.persistent_volume {
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let spec = pv.spec.clone().unwrap_or_default();
        let reserved = spec.claim_ref.as_ref().is_some_and(|c| {
            c.namespace.as_deref() == Some(ns.as_str())
                && c.name.as_deref() == Some(claim_name.as_str())
        });
        if !reserved {
            return Err(broken(format!(
                "PV {pv_name} is not reserved for {ns}/{claim_name}"
            )));
        }
        if claim_spec.volume_name.as_deref() != Some(pv_name.as_str())
            || pv_name != persistent_volume_name(&ns)
        {
            return Err(broken(format!(
                "PVC {claim_name} does not name PV {pv_name}"
            )));
        }
        if claim_spec.storage_class_name != spec.storage_class_name {
            return Err(broken(
                "the PVC's and PV's storageClassName differ: they would never bind".into(),
            ));
        }
    }
    Ok(())
}

/// How snapstage's own Service and StatefulSet refer to the PVC, the pod and the Secret.
fn check_builtin(r: &Rendered, b: &Builtin) -> Result<()> {
    let ns = r.namespace.metadata.name.clone().unwrap_or_default();
    let claim_name = r.claim_name.clone();
    for (kind, meta) in [
        ("Service", &b.service.metadata),
        ("StatefulSet", &b.stateful_set.metadata),
    ] {
        if meta.namespace.as_deref() != Some(ns.as_str()) {
            return Err(broken(format!("{kind} is not in namespace {ns:?}")));
        }
    }
    let sts = b.stateful_set.spec.clone().unwrap_or_default();
    let pod = sts.template.spec.clone().unwrap_or_default();
    let pod_labels = sts
        .template
        .metadata
        .clone()
        .unwrap_or_default()
        .labels
        .unwrap_or_default();
    let subset = |sel: &BTreeMap<String, String>| {
        !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    if !subset(&sts.selector.match_labels.clone().unwrap_or_default()) {
        return Err(broken(
            "the StatefulSet selector does not match its pod template".into(),
        ));
    }
    let service = b.service.spec.clone().unwrap_or_default();
    if !subset(&service.selector.clone().unwrap_or_default()) {
        return Err(broken(
            "the Service selector does not match the database pod".into(),
        ));
    }
    if sts.service_name.as_deref() != b.service.metadata.name.as_deref() {
        return Err(broken(
            "the StatefulSet's serviceName is not the Service".into(),
        ));
    }
    let mounts_claim = pod.volumes.iter().flatten().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == claim_name)
            && pod
                .containers
                .iter()
                .any(|c| c.volume_mounts.iter().flatten().any(|m| m.name == v.name))
    });
    if !mounts_claim {
        return Err(broken(format!(
            "the database container does not mount PVC {claim_name}"
        )));
    }
    let container_ports: Vec<_> = pod
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    for p in service.ports.iter().flatten() {
        let targets = container_ports.iter().any(|cp| match &p.target_port {
            Some(IntOrString::String(n)) => cp.name.as_deref() == Some(n.as_str()),
            Some(IntOrString::Int(i)) => cp.container_port == *i,
            None => cp.container_port == p.port,
        });
        if !targets {
            return Err(broken(format!(
                "Service port {} targets no container port",
                p.port
            )));
        }
    }
    let secret_name = r
        .secret
        .as_ref()
        .and_then(|s| s.metadata.name.clone())
        .unwrap_or_default();
    for c in &pod.containers {
        for e in c.env.iter().flatten() {
            if let Some(sel) = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                && sel.name != secret_name
            {
                return Err(broken(format!(
                    "env {} reads Secret {}, not {secret_name}",
                    e.name, sel.name
                )));
            }
            let credential = ["PASSWORD", "USER"].iter().any(|w| e.name.contains(w));
            if credential && e.value.is_some() {
                return Err(broken(format!("env {} holds a literal credential", e.name)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::object::round_trip;
    use crate::staging::fixtures::plan_for;
    use serde_json::json;

    fn rendered() -> Rendered {
        plan_for(json!({"volumeId": "vol-0123456789abcdef0", "availabilityZone": "us-east-1a"}))
            .rendered
    }

    #[test]
    fn every_backend_and_engine_validates() {
        for backend in [
            json!({"volumeId": "vol-0123456789abcdef0"}),
            json!({"backend": "csi", "snapshotName": "snap"}),
            json!({"backend": "pure-csi", "volumeId": "v"}),
            json!({"backend": "px-csi", "volumeId": "v"}),
        ] {
            for engine in ["postgresql", "mysql", "mongodb"] {
                let mut req = backend.clone();
                req["engine"] = json!(engine);
                check(&plan_for(req).rendered).unwrap();
            }
        }
    }

    #[test]
    fn round_trip_returns_the_wire_json() {
        let r = rendered();
        let v = round_trip(&r.b().stateful_set).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["kind"], "StatefulSet");
        assert_eq!(v["spec"]["replicas"], 1);
        let v = round_trip(&r.persistent_volume.unwrap()).unwrap();
        assert_eq!(v["spec"]["csi"]["volumeHandle"], "vol-0123456789abcdef0");
    }

    #[test]
    fn bad_names_and_labels_are_caught() {
        let mut r = rendered();
        r.b_mut().service.metadata.name = Some("0db".into());
        let e = check(&r).unwrap_err().to_string();
        assert!(e.contains("Service") && e.contains("Dns1035Label"), "{e}");

        let mut r = rendered();
        r.namespace.metadata.name = Some("Snapstage_X".into());
        assert!(check(&r).is_err());

        let mut r = rendered();
        r.claim
            .as_mut()
            .unwrap()
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("snapstage.io/commit".into(), "x".repeat(64));
        let e = check(&r).unwrap_err().to_string();
        assert!(e.contains("label \"snapstage.io/commit\""), "{e}");
    }

    #[test]
    fn broken_references_are_caught() {
        let mut r = rendered();
        r.claim.as_mut().unwrap().spec.as_mut().unwrap().volume_name =
            Some("someone-elses-pv".into());
        assert!(
            check(&r)
                .unwrap_err()
                .to_string()
                .contains("does not name PV")
        );

        let mut r = rendered();
        r.persistent_volume
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .claim_ref
            .as_mut()
            .unwrap()
            .name = Some("other".into());
        assert!(
            check(&r)
                .unwrap_err()
                .to_string()
                .contains("is not reserved")
        );

        let mut r = rendered();
        r.b_mut()
            .service
            .spec
            .as_mut()
            .unwrap()
            .selector
            .as_mut()
            .unwrap()
            .insert("app.kubernetes.io/name".into(), "redis".into());
        assert!(
            check(&r)
                .unwrap_err()
                .to_string()
                .contains("Service selector")
        );

        let mut r = rendered();
        r.b_mut()
            .service
            .spec
            .as_mut()
            .unwrap()
            .ports
            .as_mut()
            .unwrap()[0]
            .target_port = Some(IntOrString::Int(1));
        assert!(
            check(&r)
                .unwrap_err()
                .to_string()
                .contains("targets no container port")
        );

        let mut r = rendered();
        r.secret.as_mut().unwrap().string_data =
            Some(BTreeMap::from([("password".into(), "hunter2".into())]));
        let e = check(&r).unwrap_err().to_string();
        assert!(e.contains("carries data") && !e.contains("hunter2"), "{e}");
    }
}
