//! The production interlock of `deploy-staging-db` ([`crate::interlock`]): before anything is
//! applied, and in plan mode too, the volume the deploy imports is read where it lives and
//! refused when it is production-marked, or when it is not this run's staging volume and
//! `allowUnmanagedVolume` does not name it.
//!
//! | source | read |
//! | --- | --- |
//! | `ebs` | the volume's tags (EC2 DescribeVolumes, through [`VolumeMarks`]) |
//! | `pure-csi`, `px-csi` | the array volume's tags and its protection groups' (with `flasharray`), and every PersistentVolume in the cluster that mounts the same array volume (with a cluster) |
//! | `csi` `snapshotName` | the VolumeSnapshot in the staging namespace: labels, `snapstage.io/execution-key` |
//! | `csi` `pvcName` | the PVC in the staging namespace: labels, `snapstage.io/execution-key` |
//!
//! Without a cluster (plan mode) a VolumeSnapshot or PVC cannot be read: the plan says that
//! applying checks it. Everything else is checked in plan mode as when applying.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::interlock::{self, Import, Marker, Marks, VolumeMarks, VolumeRef};
use crate::job::contract::Execution;
use crate::kube::api;
use crate::kube::client::BACKEND;
use crate::kube::labels::{
    ANNOTATION_EXECUTION_KEY, ANNOTATION_PX_PURE_VOLUME, LABEL_EXECUTION, LABEL_ROLE,
};
use crate::kube::ownership;
use crate::staging::objects::{PURE_CSI_DRIVER, PVC_NAME, SNAPSHOT_API_GROUP};
use crate::staging::params::VolumeSource;
use crate::staging::spec::Spec;

/// What the check found: a note for the summary, and the PVC it read (`pvcName`), which the
/// deploy mounts.
#[derive(Debug, Default)]
pub struct Checked {
    pub note: String,
    pub claim: Option<PersistentVolumeClaim>,
}

/// Where the check may read the cluster (read only: get and list).
#[derive(Clone, Copy)]
pub struct ClusterView<'a> {
    pub client: &'a kube::Client,
}

/// Checks the volume `spec` imports. `cluster` is `None` in plan mode without a cluster.
pub async fn check(
    spec: &Spec,
    execution: &Execution,
    volumes: &dyn VolumeMarks,
    cluster: Option<ClusterView<'_>>,
) -> Result<Checked> {
    let allow = spec.allow_unmanaged.as_deref();
    match &spec.volume {
        VolumeSource::Ebs { volume_id, .. } => {
            let marks = volumes.marks(VolumeRef::Ebs(volume_id)).await?;
            let import = Import {
                field: "volumeId",
                id: volume_id,
                allow_unmanaged: allow,
                backend: "ebs",
            };
            decided(import, marks.as_ref(), execution, "")
        }
        VolumeSource::PureCsi { volume } | VolumeSource::PxCsi { volume } => {
            array_volume(spec, volume, execution, volumes, cluster).await
        }
        VolumeSource::CsiSnapshot { snapshot } => {
            let import = Import {
                field: "snapshotName",
                id: snapshot,
                allow_unmanaged: allow,
                backend: BACKEND,
            };
            let Some(view) = cluster else {
                return Ok(unread(&spec.namespace, "VolumeSnapshot", snapshot));
            };
            let api: Api<VolumeSnapshotMeta> =
                Api::namespaced(view.client.clone(), &spec.namespace);
            let found = api::get_opt(&api, snapshot).await?;
            let marks = found.map(|s| {
                object_marks(
                    format!("VolumeSnapshot {}/{snapshot}", spec.namespace),
                    &s.metadata,
                    execution,
                )
            });
            decided(import, marks.as_ref(), execution, "")
        }
        VolumeSource::ExistingClaim { claim } => {
            let Some(view) = cluster else {
                return Ok(unread(&spec.namespace, "PVC", claim));
            };
            let ns = spec.namespace.as_str();
            let api: Api<PersistentVolumeClaim> = Api::namespaced(view.client.clone(), ns);
            let found = api::get_opt(&api, claim).await?;
            let Some(pvc) = found else {
                return Err(Error::NotFound {
                    backend: BACKEND,
                    message: format!(
                        "PVC {ns}/{claim} (pvcName) does not exist: deploy mounts a PVC that restore-to-staging made in the staging namespace; pass its Namespace and PvcName outputs"
                    ),
                    source: None,
                });
            };
            let marks = object_marks(format!("PVC {ns}/{claim}"), &pvc.metadata, execution);
            let import = Import {
                field: "pvcName",
                id: claim,
                allow_unmanaged: allow,
                backend: BACKEND,
            };
            let mut checked = decided(import, Some(&marks), execution, "")?;
            checked.claim = Some(pvc);
            Ok(checked)
        }
    }
}

fn decided(
    import: Import<'_>,
    marks: Option<&Marks>,
    execution: &Execution,
    extra: &str,
) -> Result<Checked> {
    let accepted = interlock::decide(import, marks, execution)?;
    let marks = marks.cloned().unwrap_or_default();
    let note = format!("interlock: {}{extra}", accepted.describe(&marks));
    tracing::info!(volume = import.id, accepted = ?accepted, "production interlock passed");
    Ok(Checked { note, claim: None })
}

/// A VolumeSnapshot or PVC in plan mode without a cluster.
fn unread(namespace: &str, kind: &str, name: &str) -> Checked {
    Checked {
        note: format!(
            "interlock: {kind} {namespace}/{name} is in the cluster, which plan mode without a cluster cannot read; applying checks it first"
        ),
        claim: None,
    }
}

/// The marks of a Kubernetes object restore-to-staging may have made: its labels, and its
/// staging mark (`managed-by=snapstage`, `snapstage.io/role=staging`, the run in
/// `snapstage.io/execution-key` or, for the same key, `snapstage.io/execution`).
fn object_marks(what: String, meta: &ObjectMeta, execution: &Execution) -> Marks {
    let labels = meta.labels.clone().unwrap_or_default();
    let markers = labels
        .iter()
        .map(|(k, v)| Marker::new("label", k, v))
        .collect();
    let staging = ownership::is_managed(meta)
        && labels.get(LABEL_ROLE).map(String::as_str) == Some("staging");
    let recorded = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_EXECUTION_KEY))
        .cloned()
        .or_else(|| {
            (labels.get(LABEL_EXECUTION)
                == Some(&crate::kube::names::execution_label(&execution.key)))
            .then(|| execution.key.clone())
        });
    Marks {
        what,
        markers,
        staging_run: recorded.filter(|_| staging),
    }
}

/// `pure-csi` / `px-csi`: the array's tags (with `flasharray`), the cluster's PVs of the same
/// array volume (with a cluster).
async fn array_volume(
    spec: &Spec,
    volume: &str,
    execution: &Execution,
    volumes: &dyn VolumeMarks,
    cluster: Option<ClusterView<'_>>,
) -> Result<Checked> {
    let import = Import {
        field: "volumeId",
        id: volume,
        allow_unmanaged: spec.allow_unmanaged.as_deref(),
        backend: "flasharray",
    };
    if spec.array.is_none() && spec.allow_unmanaged.as_deref() != Some(volume) {
        return Err(Error::Refused(format!(
            "FlashArray volume {volume} (volumeId): its staging mark cannot be read without the array; give flasharray {{\"endpoint\", \"apiTokenSecret\"}} (read-only: the volume's tags and its protection groups'), or set {}: {volume:?} if you are sure it is not production",
            interlock::OVERRIDE_PARAM
        )));
    }
    let mut read = Vec::new();
    // A PV snapstage did not make that mounts the same volume: it is in use, maybe by production.
    let mut foreign: Option<String> = None;
    let mut marks = Marks {
        what: format!("FlashArray volume {volume}"),
        ..Marks::default()
    };
    if let Some(access) = &spec.array {
        match volumes
            .marks(VolumeRef::FlashArray { volume, access })
            .await?
        {
            Some(m) => marks.merge(m),
            None => return decided(import, None, execution, ""),
        }
        if marks.production_marker().is_some() {
            return decided(import, Some(&marks), execution, "");
        }
        read.push(format!("the array's tags ({})", access.endpoint));
    }
    if let Some(view) = cluster {
        let pvs = api::list(
            &Api::<PersistentVolume>::all(view.client.clone()),
            &ListParams::default(),
        )
        .await?;
        let ours = format!("{}-data", spec.namespace);
        for pv in pvs.iter().filter(|pv| mounts(pv, volume)) {
            let name = pv.metadata.name.as_deref().unwrap_or_default();
            let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
            let for_our_claim = claim.is_some_and(|c| {
                c.namespace.as_deref() == Some(spec.namespace.as_str())
                    && c.name.as_deref() == Some(PVC_NAME)
            });
            if (name == ours && ownership::is_managed(&pv.metadata)) || for_our_claim {
                continue; // this deploy's own PV (an earlier invocation's, or provisioned for its PVC)
            }
            for (k, v) in pv.metadata.labels.iter().flatten() {
                marks
                    .markers
                    .push(Marker::new(format!("PersistentVolume {name} label"), k, v));
            }
            if foreign.is_none() && !ownership::is_managed(&pv.metadata) {
                foreign = Some(name.to_string());
            }
        }
        read.push("the cluster's PersistentVolumes".into());
    }
    let extra = match read.is_empty() {
        true => " (nothing could be read: no flasharray and no cluster)".to_string(),
        false => format!(" (read {})", read.join(" and ")),
    };
    if marks.production_marker().is_none()
        && let Some(pv) = foreign
    {
        return Err(Error::Refused(format!(
            "FlashArray volume {volume} (volumeId) is mounted by PersistentVolume {pv}, which snapstage did not make: it may be production's; snapstage never imports a volume something else mounts, and {} cannot allow it",
            interlock::OVERRIDE_PARAM
        )));
    }
    decided(import, Some(&marks), execution, &extra)
}

/// True when `pv` mounts the array volume `volume`: pure-csi's `volumeHandle`, or a
/// `portworx.io/pure-volume-name` / `pure_vol_name` that names it.
fn mounts(pv: &PersistentVolume, volume: &str) -> bool {
    let names = |v: &str| v == volume;
    let csi = pv.spec.as_ref().and_then(|s| s.csi.as_ref());
    let handle = csi.is_some_and(|c| c.driver == PURE_CSI_DRIVER && names(&c.volume_handle));
    let attributes = csi
        .and_then(|c| c.volume_attributes.as_ref())
        .is_some_and(|a| {
            a.iter()
                .any(|(k, v)| (k == "pure_vol_name" || k == ANNOTATION_PX_PURE_VOLUME) && names(v))
        });
    let annotated = pv.metadata.annotations.as_ref().is_some_and(|a| {
        a.get(ANNOTATION_PX_PURE_VOLUME)
            .or_else(|| a.get("pure_vol_name"))
            .is_some_and(|v| names(v))
    });
    handle || attributes || annotated
}

/// A VolumeSnapshot's metadata: all the interlock reads of it.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct VolumeSnapshotMeta {
    metadata: ObjectMeta,
}

impl kube::Resource for VolumeSnapshotMeta {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "VolumeSnapshot".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        SNAPSHOT_API_GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "volumesnapshots".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(handle: &str, driver: &str) -> PersistentVolume {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pv"},
            "spec": {"csi": {"driver": driver, "volumeHandle": handle}}
        }))
        .unwrap()
    }

    #[test]
    fn pvs_of_the_same_array_volume_are_found() {
        assert!(mounts(&pv("orders-db", "pure-csi"), "orders-db"));
        assert!(mounts(
            &pv("pod1::orders-db", "pure-csi"),
            "pod1::orders-db"
        ));
        assert!(!mounts(&pv("orders-db", "ebs.csi.aws.com"), "orders-db"));
        assert!(!mounts(&pv("orders-db-2", "pure-csi"), "orders-db"));
        let px: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pv", "annotations": {"portworx.io/pure-volume-name": "realm::pod::orders"}},
            "spec": {}
        }))
        .unwrap();
        assert!(mounts(&px, "realm::pod::orders"));
        assert!(!mounts(&px, "realm::pod::orders2"));
    }

    #[test]
    fn staging_marks_need_managed_by_role_and_the_run() {
        let ex = Execution {
            key: "direct/x".into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        };
        let meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "p",
            "labels": {"app.kubernetes.io/managed-by": "snapstage", "snapstage.io/role": "staging"},
            "annotations": {"snapstage.io/execution-key": "direct/x"}
        }))
        .unwrap();
        assert_eq!(
            object_marks("PVC p".into(), &meta, &ex)
                .staging_run
                .as_deref(),
            Some("direct/x")
        );
        let mut snapshot_role = meta.clone();
        snapshot_role
            .labels
            .as_mut()
            .unwrap()
            .insert("snapstage.io/role".into(), "snapshot".into());
        assert_eq!(
            object_marks("PVC p".into(), &snapshot_role, &ex).staging_run,
            None
        );
        let mut velero = meta;
        velero
            .labels
            .as_mut()
            .unwrap()
            .insert("app.kubernetes.io/managed-by".into(), "velero".into());
        assert_eq!(object_marks("PVC p".into(), &velero, &ex).staging_run, None);
    }
}
