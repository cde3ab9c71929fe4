//! Renders the staging database as typed Kubernetes objects (k8s-openapi structs, no templates).
//!
//! | object | name | why |
//! | --- | --- | --- |
//! | Namespace | `snapstage-<hash>` or `namespace` | one per run; labelled for cleanup, `expires-at` annotation |
//! | Secret | `staging-db-credentials` | credentials, generated at apply time; rendered without data |
//! | PersistentVolume | `<namespace>-data` | `ebs` / `pure-csi`: binds the restored volume statically |
//! | PersistentVolumeClaim | `staging-db-data` | bound to the PV, or restoring the VolumeSnapshot (`csi`), or importing (`px-csi`); none with `pvcName` (the existing PVC is mounted) |
//! | Service | `staging-db` | ClusterIP on the engine's port |
//! | StatefulSet | `staging-db` | one replica mounting the PVC; first the init container `credentials-reset` ([`crate::staging::render::reset`]) unless `resetCredentials` is false |
//!
//! With a user template ([`crate::staging::render::template`]) the template's objects replace the Service and
//! the StatefulSet.

pub mod jobs;
pub mod network;
pub mod parts;
pub mod reset;
pub mod template;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Container, ContainerPort, EnvVar, ExecAction, Namespace,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PersistentVolumeSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, Service, ServicePort, ServiceSpec,
    TypedLocalObjectReference, Volume, VolumeMount, VolumeNodeAffinity, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use self::parts::common_labels;
use self::template::TemplateObject;
use crate::error::Result;
use crate::kube::labels::{
    ANNOTATION_CREDENTIALS, ANNOTATION_EXECUTION_KEY, ANNOTATION_EXISTING_CLAIM,
    ANNOTATION_EXPIRES_AT, ANNOTATION_PX_PURE_VOLUME, ANNOTATION_SOURCE, ANNOTATION_TTL_HOURS,
    LABEL_HEALTHY, LABEL_PIPELINE,
};
use crate::staging::engine::{Engine, EnvSource};
use crate::staging::objects::{
    CONTAINER_NAME, DATA_VOLUME, EBS_CSI_DRIVER, EBS_ZONE_KEY, PURE_CSI_DRIVER, PVC_NAME,
    SECRET_NAME, SERVICE_NAME, SNAPSHOT_API_GROUP, STATEFULSET_NAME,
};
use crate::staging::params::VolumeSource;
use crate::staging::render::parts::{
    app_labels, persistent_volume_name, restricted_container, secret_env, selector_labels,
};
use crate::staging::spec::Spec;

/// The objects of one staging database, in the order they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub namespace: Namespace,
    /// The database credentials; `None` for an application (Jenkins, Nexus keep their own users).
    pub secret: Option<Secret>,
    pub persistent_volume: Option<PersistentVolume>,
    /// `None` when the database mounts an existing PVC (`pvcName`).
    pub claim: Option<PersistentVolumeClaim>,
    /// The PVC the database mounts.
    pub claim_name: String,
    pub workload: Workload,
    /// Filled by [`crate::staging::plan::Plan::build`] from [`crate::staging::render::network`].
    pub network: NetworkPolicies,
}

/// The staging namespace's NetworkPolicies (see [`crate::staging::render::network`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkPolicies {
    /// Applied with the Namespace.
    pub isolation: Vec<NetworkPolicy>,
    /// Applied once masking succeeded.
    pub access: Option<NetworkPolicy>,
}

/// What runs the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// snapstage's Service and StatefulSet for the engine.
    Builtin(Box<Builtin>),
    /// The objects of the user's template, in apply order.
    Template(Vec<TemplateObject>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Builtin {
    pub service: Service,
    pub stateful_set: StatefulSet,
}

impl Rendered {
    /// snapstage's own Service and StatefulSet, unless a template replaces them.
    pub fn builtin(&self) -> Option<&Builtin> {
        match &self.workload {
            Workload::Builtin(b) => Some(b),
            Workload::Template(_) => None,
        }
    }

    /// The published Service name and port.
    pub fn endpoint(&self, engine: Engine) -> (String, i32) {
        match &self.workload {
            Workload::Builtin(_) => (SERVICE_NAME.to_string(), engine.port()),
            Workload::Template(objects) => template::endpoint(objects)
                .unwrap_or_else(|| (SERVICE_NAME.to_string(), engine.port())),
        }
    }
}

/// Renders every object (and the user's template, checked). `expires_at` is RFC 3339 (now + ttl).
pub fn render(spec: &Spec, expires_at: &str) -> Result<Rendered> {
    let workload = match &spec.template {
        Some(t) => Workload::Template(template::render(t, spec)?),
        None => Workload::Builtin(Box::new(Builtin {
            service: service(spec),
            stateful_set: stateful_set(spec),
        })),
    };
    Ok(Rendered {
        namespace: namespace(spec, expires_at),
        secret: (!spec.engine.is_app()).then(|| secret(spec)),
        persistent_volume: persistent_volume(spec),
        claim: claim(spec),
        claim_name: spec.volume.claim_name().to_string(),
        workload,
        network: NetworkPolicies::default(),
    })
}

fn meta(spec: &Spec, name: &str, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespaced.then(|| spec.namespace.clone()),
        labels: Some(app_labels(spec)),
        ..Default::default()
    }
}

fn namespace(spec: &Spec, expires_at: &str) -> Namespace {
    let mut labels = common_labels(spec);
    // The database pod meets the restricted Pod Security Standard; enforce it.
    labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        "restricted".into(),
    );
    if let Some(p) = &spec.pipeline_label {
        labels.insert(LABEL_PIPELINE.into(), p.clone());
        // Not healthy until this run says so (a reused namespace loses an older run's mark).
        labels.insert(LABEL_HEALTHY.into(), "false".into());
    }
    let mut annotations = BTreeMap::from([
        (ANNOTATION_EXPIRES_AT.to_string(), expires_at.to_string()),
        (ANNOTATION_TTL_HOURS.to_string(), spec.ttl_hours.to_string()),
        (
            ANNOTATION_EXECUTION_KEY.to_string(),
            spec.execution_key.clone(),
        ),
        (ANNOTATION_SOURCE.to_string(), spec.volume.describe()),
    ]);
    if let VolumeSource::ExistingClaim { claim } = &spec.volume {
        annotations.insert(ANNOTATION_EXISTING_CLAIM.to_string(), claim.clone());
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(spec.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn secret(spec: &Spec) -> Secret {
    let mut metadata = meta(spec, SECRET_NAME, true);
    metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_CREDENTIALS.to_string(),
        "generated at apply time; never in outputs or logs".to_string(),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: None,
        string_data: None,
        ..Default::default()
    }
}

fn storage(spec: &Spec) -> BTreeMap<String, Quantity> {
    BTreeMap::from([("storage".to_string(), Quantity(spec.storage_size.clone()))])
}

fn persistent_volume(spec: &Spec) -> Option<PersistentVolume> {
    let (driver, handle, zone) = match &spec.volume {
        VolumeSource::Ebs { volume_id, zone } => (EBS_CSI_DRIVER, volume_id, zone.as_ref()),
        VolumeSource::PureCsi { volume } => (PURE_CSI_DRIVER, volume, None),
        VolumeSource::CsiSnapshot { .. }
        | VolumeSource::ExistingClaim { .. }
        | VolumeSource::PxCsi { .. } => return None,
    };
    let node_affinity = zone.map(|z| VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: EBS_ZONE_KEY.into(),
                    operator: "In".into(),
                    values: Some(vec![z.clone()]),
                }]),
                match_fields: None,
            }],
        }),
    });
    Some(PersistentVolume {
        metadata: meta(spec, &persistent_volume_name(&spec.namespace), false),
        spec: Some(PersistentVolumeSpec {
            capacity: Some(storage(spec)),
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            volume_mode: Some("Filesystem".into()),
            // The restored volume outlives the staging namespace; its owner deletes it.
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(spec.storage_class_name.clone().unwrap_or_default()),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.into(),
                volume_handle: handle.clone(),
                ..Default::default()
            }),
            // Reserved for our claim: no other PVC can bind this volume.
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(spec.namespace.clone()),
                name: Some(PVC_NAME.into()),
                ..Default::default()
            }),
            node_affinity,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn claim(spec: &Spec) -> Option<PersistentVolumeClaim> {
    let mut metadata = meta(spec, PVC_NAME, true);
    let mut claim = PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        volume_mode: Some("Filesystem".into()),
        resources: Some(VolumeResourceRequirements {
            requests: Some(storage(spec)),
            limits: None,
        }),
        storage_class_name: spec.storage_class_name.clone(),
        ..Default::default()
    };
    match &spec.volume {
        VolumeSource::Ebs { .. } | VolumeSource::PureCsi { .. } => {
            claim.volume_name = Some(persistent_volume_name(&spec.namespace));
            // Static binding: the PVC's class must equal the PV's ("" = none, no default class).
            claim.storage_class_name = Some(spec.storage_class_name.clone().unwrap_or_default());
        }
        VolumeSource::CsiSnapshot { snapshot } => {
            claim.data_source = Some(TypedLocalObjectReference {
                api_group: Some(SNAPSHOT_API_GROUP.into()),
                kind: "VolumeSnapshot".into(),
                name: snapshot.clone(),
            });
        }
        VolumeSource::PxCsi { volume } => {
            metadata.annotations = Some(BTreeMap::from([(
                ANNOTATION_PX_PURE_VOLUME.to_string(),
                volume.clone(),
            )]));
        }
        VolumeSource::ExistingClaim { .. } => return None,
    }
    Some(PersistentVolumeClaim {
        metadata,
        spec: Some(claim),
        ..Default::default()
    })
}

fn port_name(engine: Engine) -> String {
    engine.as_str().to_string()
}

fn service(spec: &Spec) -> Service {
    Service {
        metadata: meta(spec, SERVICE_NAME, true),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(spec.engine)),
            ports: Some(vec![ServicePort {
                name: Some(port_name(spec.engine)),
                port: spec.engine.port(),
                target_port: Some(IntOrString::String(port_name(spec.engine))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn probe(engine: Engine, period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(engine.probe_command()),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

fn container(spec: &Spec) -> Container {
    let engine = spec.engine;
    let env = engine
        .env()
        .into_iter()
        .map(|(name, source)| match source {
            EnvSource::Value(v) => EnvVar {
                name: name.into(),
                value: Some(v.into()),
                value_from: None,
            },
            EnvSource::SecretKey(key) => secret_env(name, SECRET_NAME, key),
        })
        .collect();
    let args = engine.server_args();
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(spec.image.clone()),
        args: (!args.is_empty()).then_some(args),
        image_pull_policy: Some("IfNotPresent".into()),
        ports: Some(vec![ContainerPort {
            name: Some(port_name(engine)),
            container_port: engine.port(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(env),
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: engine.mount_path().into(),
            ..Default::default()
        }]),
        // A crash-consistent copy replays its log on first start: give it up to 15 minutes.
        startup_probe: Some(probe(engine, 10, 90)),
        readiness_probe: Some(probe(engine, 10, 3)),
        liveness_probe: Some(probe(engine, 20, 6)),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "250m"), ("memory", "512Mi")])),
            limits: Some(quantities(&[("cpu", "2"), ("memory", "2Gi")])),
            ..Default::default()
        }),
        security_context: Some(restricted_container()),
        ..Default::default()
    }
}

fn stateful_set(spec: &Spec) -> StatefulSet {
    let uid = spec.engine.user_id();
    let mut template_labels = app_labels(spec);
    template_labels.extend(selector_labels(spec.engine));
    let db = container(spec);
    // The credentials reset runs first, on the same volume (see `crate::staging::render::reset`).
    let init_containers = match (spec.reset_credentials, db.volume_mounts.as_deref()) {
        (true, Some([mount, ..])) => Some(vec![crate::staging::render::reset::init_container(
            spec, &db, mount,
        )]),
        _ => None,
    };
    StatefulSet {
        metadata: meta(spec, STATEFULSET_NAME, true),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(SERVICE_NAME.into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(spec.engine)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    init_containers,
                    containers: vec![db],
                    volumes: Some(vec![Volume {
                        name: DATA_VOLUME.into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: spec.volume.claim_name().into(),
                            read_only: Some(false),
                        }),
                        ..Default::default()
                    }]),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(60),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(uid),
                        run_as_group: Some(uid),
                        fs_group: Some(uid),
                        // Large restored volumes: change ownership only when the root differs.
                        fs_group_change_policy: Some("OnRootMismatch".into()),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
impl Rendered {
    /// snapstage's Service and StatefulSet; a test failure for a template.
    pub(crate) fn b(&self) -> &Builtin {
        self.builtin().expect("snapstage's own workload")
    }

    pub(crate) fn b_mut(&mut self) -> &mut Builtin {
        match &mut self.workload {
            Workload::Builtin(b) => b,
            Workload::Template(_) => panic!("a template, not snapstage's own workload"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::staging::fixtures::plan_for;
    use serde_json::json;

    fn ebs() -> Rendered {
        plan_for(json!({"volumeId": "vol-0123456789abcdef0", "availabilityZone": "us-east-1a"}))
            .rendered
    }

    #[test]
    fn ebs_pv_binds_the_restored_volume_to_the_pvc_the_database_mounts() {
        let r = ebs();
        let pv = r.persistent_volume.clone().unwrap();
        let spec = pv.spec.clone().unwrap();
        let csi = spec.csi.clone().unwrap();
        assert_eq!(csi.driver, "ebs.csi.aws.com");
        assert_eq!(csi.volume_handle, "vol-0123456789abcdef0");
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
        let claim_ref = spec.claim_ref.clone().unwrap();
        let ns = r.namespace.metadata.name.clone().unwrap();
        assert_eq!(claim_ref.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(claim_ref.name.as_deref(), Some(PVC_NAME));
        assert_eq!(
            r.claim.clone().unwrap().metadata.name.as_deref(),
            Some(PVC_NAME)
        );
        assert_eq!(
            r.claim.clone().unwrap().spec.unwrap().volume_name,
            pv.metadata.name
        );
        // The StatefulSet mounts that PVC at the engine's data directory.
        let pod = r
            .b()
            .stateful_set
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap();
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.persistent_volume_claim.is_some())
            .unwrap();
        assert_eq!(vol.persistent_volume_claim.unwrap().claim_name, PVC_NAME);
        let mount = &pod.containers[0].volume_mounts.clone().unwrap()[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            (vol.name.as_str(), "/var/lib/postgresql/data")
        );
        // Static binding: both sides say "no class", so no default class is injected.
        assert_eq!(spec.storage_class_name.as_deref(), Some(""));
        assert_eq!(
            r.claim.unwrap().spec.unwrap().storage_class_name.as_deref(),
            Some("")
        );
    }

    #[test]
    fn ebs_zone_pins_the_pv() {
        let spec = ebs().persistent_volume.unwrap().spec.unwrap();
        let term = &spec
            .node_affinity
            .unwrap()
            .required
            .unwrap()
            .node_selector_terms[0];
        let req = &term.match_expressions.clone().unwrap()[0];
        assert_eq!(req.key, "topology.ebs.csi.aws.com/zone");
        assert_eq!(req.operator, "In");
        assert_eq!(req.values.clone().unwrap(), ["us-east-1a"]);
        let no_zone = plan_for(json!({"volumeId": "vol-0123456789abcdef0"})).rendered;
        assert!(
            no_zone
                .persistent_volume
                .unwrap()
                .spec
                .unwrap()
                .node_affinity
                .is_none()
        );
    }

    #[test]
    fn other_backends_source_the_claim_their_way() {
        let csi = plan_for(
            json!({"backend": "csi", "snapshotName": "prod-snap", "storageClassName": "px-db"}),
        )
        .rendered;
        assert!(csi.persistent_volume.is_none());
        let spec = csi.claim.unwrap().spec.unwrap();
        let ds = spec.data_source.unwrap();
        assert_eq!(
            (ds.api_group.as_deref(), ds.kind.as_str(), ds.name.as_str()),
            (
                Some("snapshot.storage.k8s.io"),
                "VolumeSnapshot",
                "prod-snap"
            )
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("px-db"));
        assert_eq!(spec.volume_name, None);

        let pure = plan_for(json!({"backend": "pure-csi", "volumeId": "staging-db-01"})).rendered;
        let csi_src = pure.persistent_volume.unwrap().spec.unwrap().csi.unwrap();
        assert_eq!(
            (csi_src.driver.as_str(), csi_src.volume_handle.as_str()),
            ("pure-csi", "staging-db-01")
        );

        let px = plan_for(json!({"backend": "px-csi", "volumeId": "realm::pod::vol"})).rendered;
        assert!(px.persistent_volume.is_none());
        let ann = px.claim.clone().unwrap().metadata.annotations.unwrap();
        assert_eq!(ann["portworx.io/pure-volume-name"], "realm::pod::vol");
        assert_eq!(
            px.claim.unwrap().spec.unwrap().storage_class_name,
            None,
            "the cluster's default class"
        );
    }

    #[test]
    fn an_existing_pvc_is_mounted_and_never_rendered() {
        let p = plan_for(json!({"backend": "csi", "pvcName": "restored-db"}));
        let r = &p.rendered;
        assert!(r.claim.is_none() && r.persistent_volume.is_none());
        assert_eq!(
            p.manifest_count(),
            7,
            "Namespace, 2 NetworkPolicies, Secret, Service, StatefulSet, the access NetworkPolicy"
        );
        let pod = r
            .b()
            .stateful_set
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap();
        let claim = pod.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(claim.claim_name, "restored-db");
        let ann = r.namespace.metadata.annotations.clone().unwrap();
        assert_eq!(ann["snapstage.io/existing-claim"], "restored-db");
        assert_eq!(ann["snapstage.io/source"], "csi-pvc:restored-db");
        assert!(
            p.summary("x").contains("from csi restored-db"),
            "{}",
            p.summary("x")
        );
    }

    #[test]
    fn namespace_carries_ownership_execution_and_expiry() {
        let p = plan_for(json!({"volumeId": "vol-0123456789abcdef0"}));
        let meta = &p.rendered.namespace.metadata;
        let labels = meta.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "snapstage");
        assert_eq!(labels["snapstage.io/role"], "staging");
        assert_eq!(
            labels["snapstage.io/execution"],
            crate::kube::names::execution_label("direct/fixture")
        );
        assert!(
            !labels.contains_key("snapstage.io/commit"),
            "no commit known for a direct request"
        );
        let ann = meta.annotations.clone().unwrap();
        assert_eq!(ann["snapstage.io/expires-at"], "2025-06-02T12:00:00Z");
        assert_eq!(ann["snapstage.io/execution-key"], "direct/fixture");
        // Every object of the run carries the run's labels.
        let r = &p.rendered;
        for m in [
            &r.secret.as_ref().unwrap().metadata,
            &r.claim.as_ref().unwrap().metadata,
            &r.b().service.metadata,
            &r.b().stateful_set.metadata,
        ] {
            let l = m.labels.clone().unwrap();
            assert_eq!(
                l["snapstage.io/execution"],
                labels["snapstage.io/execution"]
            );
            assert_eq!(l["app.kubernetes.io/instance"], "staging-db");
            assert_eq!(l["app.kubernetes.io/name"], "postgresql");
        }
    }

    #[test]
    fn commit_is_labelled_when_known() {
        let mut spec = plan_for(json!({"volumeId": "vol-0123456789abcdef0"})).spec;
        spec.commit = Some("0123456789abcdef0123456789abcdef01234567".into());
        let r = render(&spec, "2025-06-02T12:00:00Z").unwrap();
        assert_eq!(
            r.namespace.metadata.labels.clone().unwrap()["snapstage.io/commit"],
            "0123456789abcdef0123456789abcdef01234567"
        );
        crate::staging::validate::check(&r).unwrap();
    }

    #[test]
    fn each_engine_gets_its_port_probes_and_service() {
        for (engine, port, probe) in [
            ("postgresql", 5432, "pg_isready"),
            ("mysql", 3306, "mysqladmin"),
            ("mongodb", 27017, "mongosh"),
        ] {
            let r =
                plan_for(json!({"volumeId": "vol-0123456789abcdef0", "engine": engine})).rendered;
            let svc = r.b().service.spec.clone().unwrap();
            assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
            let sp = &svc.ports.unwrap()[0];
            assert_eq!(sp.port, port, "{engine}");
            let sts = r.b().stateful_set.spec.clone().unwrap();
            assert_eq!(sts.replicas, Some(1));
            let c = &sts.template.spec.unwrap().containers[0];
            assert_eq!(c.ports.clone().unwrap()[0].container_port, port);
            assert_eq!(
                sp.target_port,
                Some(IntOrString::String(
                    c.ports.clone().unwrap()[0].name.clone().unwrap()
                ))
            );
            for p in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe] {
                let cmd = p.clone().unwrap().exec.unwrap().command.unwrap();
                assert_eq!(cmd[0], probe, "{engine}");
            }
            assert!(c.image.as_deref().is_some_and(|i| !i.is_empty()));
        }
    }

    #[test]
    fn the_database_container_keeps_the_copy_from_acting_as_production() {
        for (engine, options, reset_has) in [
            (
                "postgresql",
                vec![
                    "archive_mode=off",
                    "primary_conninfo=",
                    "primary_slot_name=",
                    "synchronous_standby_names=",
                    "max_logical_replication_workers=0",
                ],
                "-c archive_mode=off -c primary_conninfo=",
            ),
            (
                "mysql",
                vec![
                    "--loose-skip-replica-start",
                    "--loose-skip-slave-start",
                    "--loose-group-replication-start-on-boot=OFF",
                ],
                "--loose-skip-replica-start --loose-skip-slave-start",
            ),
        ] {
            let r =
                plan_for(json!({"volumeId": "vol-0123456789abcdef0", "engine": engine})).rendered;
            let pod = r
                .b()
                .stateful_set
                .spec
                .clone()
                .unwrap()
                .template
                .spec
                .unwrap();
            let args = pod.containers[0].args.clone().unwrap();
            // The images' entrypoints pass arguments that start with `-` to the server; no
            // command override (the entrypoint still runs).
            assert!(
                pod.containers[0].command.is_none() && args[0].starts_with('-'),
                "{args:?}"
            );
            for o in options {
                assert!(args.iter().any(|a| a == o), "{engine}: {o} in {args:?}");
            }
            let reset = &pod.init_containers.unwrap()[0];
            assert!(
                reset.command.as_ref().unwrap()[2].contains(reset_has),
                "the reset's local-only server is isolated too"
            );
        }
        let r =
            plan_for(json!({"volumeId": "vol-0123456789abcdef0", "engine": "mongodb"})).rendered;
        let c = &r
            .b()
            .stateful_set
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0];
        assert_eq!(
            c.args, None,
            "mongod starts standalone: it joins no replica set"
        );
    }

    #[test]
    fn database_pod_is_non_root_with_limits_and_secret_credentials() {
        let r = plan_for(json!({"volumeId": "vol-0123456789abcdef0", "engine": "mysql", "image": "registry.example.com/mysql:8.0.36"})).rendered;
        let pod = r
            .b()
            .stateful_set
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(
            (psc.run_as_non_root, psc.run_as_user, psc.fs_group),
            (Some(true), Some(999), Some(999))
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example.com/mysql:8.0.36")
        );
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        let res = c.resources.clone().unwrap();
        assert!(
            res.requests.unwrap().contains_key("memory")
                && res.limits.unwrap().contains_key("memory")
        );
        let env = c.env.clone().unwrap();
        let pw = env
            .iter()
            .find(|e| e.name == "MYSQL_ROOT_PASSWORD")
            .unwrap();
        assert_eq!(pw.value, None);
        let sel = pw.value_from.clone().unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (sel.name.as_str(), sel.key.as_str()),
            (SECRET_NAME, "password")
        );
    }

    #[test]
    fn secret_is_planned_without_data() {
        let s = ebs().secret.unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some(SECRET_NAME));
        assert_eq!((s.data, s.string_data), (None, None));
        assert!(
            s.metadata.annotations.unwrap()[ANNOTATION_CREDENTIALS]
                .contains("generated at apply time")
        );
    }
}
