//! From parameters to a [`Spec`]: every check that needs more than one field (the volume
//! source for the backend, the template's text, the namespace and its hashes, limits), done
//! once; rendering only reads a `Spec`.

use crate::error::{Error, Result};
use crate::interlock::{ArrayAccess, OVERRIDE_PARAM};
use crate::job::contract::Execution;
use crate::kube::names;
use crate::staging::engine::Engine;
use crate::staging::params::is_ebs_volume_id;
use crate::staging::params::network::NetworkPolicyParams;
use crate::staging::params::template::TemplateText;
use crate::staging::params::{
    DEFAULT_APP_READY_TIMEOUT_MINUTES, DEFAULT_APP_TTL_DAYS, DEFAULT_READY_TIMEOUT_MINUTES,
    DEFAULT_TTL_HOURS, JobParams, NamespaceName, OnFailure, Params, VolumeBackend, VolumeSource,
};

/// Everything rendering needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub volume: VolumeSource,
    pub engine: Engine,
    pub namespace: String,
    /// False when the caller named the namespace.
    pub namespace_derived: bool,
    pub storage_size: String,
    pub storage_class_name: Option<String>,
    pub ttl_hours: u16,
    pub image: String,
    pub field_manager: String,
    pub dry_run: bool,
    /// The run's key (annotation) and its label-safe hash (label).
    pub execution_key: String,
    pub execution_label: String,
    /// The commit that started the run, when known and label-safe.
    pub commit: Option<String>,
    pub ready_timeout_minutes: u16,
    pub on_failure: OnFailure,
    pub masking: Option<JobParams>,
    pub migration: Option<JobParams>,
    /// The user's template, read, or an application's built-in one ([`crate::staging::apps`]);
    /// `None` for snapstage's own Service and StatefulSet of a database.
    pub template: Option<TemplateText>,
    /// True when `template` is snapstage's built-in template of an application (Jenkins,
    /// Nexus): its pods are snapstage's, isolated as a database's are.
    pub builtin_template: bool,
    /// The credentials reset before the server starts (an init container); false when
    /// `resetCredentials` is false.
    pub reset_credentials: bool,
    /// The user the Secret names.
    pub database_user: String,
    /// The `snapstage.io/pipeline` label (a hash of the pipeline's name), when known.
    pub pipeline_label: Option<String>,
    /// `allowUnmanagedVolume`: the volume the interlock may import without this run's mark.
    pub allow_unmanaged: Option<String>,
    /// `flasharray`: where the interlock reads an array volume's tags.
    pub array: Option<ArrayAccess>,
    /// The NetworkPolicies (on unless `networkPolicy.enabled` is false).
    pub network_policy: NetworkPolicyParams,
}

impl Spec {
    /// True when snapstage wrote the workload: its own database StatefulSet, or an
    /// application's built-in template (not a user template, whose pods and ports are the
    /// user's).
    pub fn own_workload(&self) -> bool {
        self.template.is_none() || self.builtin_template
    }
}

impl Params {
    /// The template's text: inline, from a file, or fetched from an artifact by the step.
    fn template_text(&self) -> Result<Option<TemplateText>> {
        if let Some(t) = &self.fetched_template {
            return Ok(Some(t.clone()));
        }
        let Some(param) = &self.template else {
            return Ok(None);
        };
        match param.read_local()? {
            Some(t) => Ok(Some(t)),
            None => Err(Error::parameter(
                "template.artifact",
                "a file inside an input artifact can only be read in a CodePipeline job (it has the artifacts and the credentials to read them); use template.inline or template.file here",
            )),
        }
    }

    /// Checks the rules that tie fields together and resolves defaults for this execution.
    pub fn validate(self, execution: &Execution) -> Result<Spec> {
        self.check_app()?;
        let ttl_hours = self.ttl()?;
        if self.admin_secret.is_some() {
            return Err(Error::parameter(
                "adminSecret",
                "no longer used: the credentials reset starts the engine local-only on the restored data before the staging server starts, so no production credential is read or copied into staging; remove adminSecret (and the function's secretsmanager:GetSecretValue on that secret)",
            ));
        }
        let volume = self.volume_source()?;
        if let Some(v) = &self.allow_unmanaged_volume
            && v.trim().is_empty()
        {
            return Err(Error::parameter(
                OVERRIDE_PARAM,
                "expected the volume to import without this run's staging mark (the same value as volumeId, pvcName or snapshotName), got an empty string",
            ));
        }
        if let Some(a) = &self.flasharray {
            if !matches!(
                volume.backend(),
                VolumeBackend::PureCsi | VolumeBackend::PxCsi
            ) {
                return Err(Error::parameter(
                    "flasharray",
                    format!(
                        "only used with backend \"pure-csi\" or \"px-csi\" (the array the volume is on); remove it for backend \"{}\"",
                        volume.backend().as_str()
                    ),
                ));
            }
            if !a.endpoint.starts_with("https://") && !a.endpoint.starts_with("http://") {
                return Err(Error::parameter(
                    "flasharray.endpoint",
                    format!(
                        "expected the array's management URL such as https://array.example.com, got {:?}",
                        a.endpoint
                    ),
                ));
            }
            if a.api_token_secret.trim().is_empty() {
                return Err(Error::parameter(
                    "flasharray.apiTokenSecret",
                    "expected the name or ARN of a Secrets Manager secret holding the API token",
                ));
            }
        }
        let (template, builtin_template) = match self.template_text()? {
            Some(t) => (Some(t), false),
            None => match crate::staging::apps::template(self.engine)? {
                Some(t) => (Some(t), true),
                None => (None, false),
            },
        };
        let network_policy = self.network_policy.clone().unwrap_or_default();
        network_policy.validate()?;
        if self.masking.as_ref().is_some_and(|m| m.allow_failure) {
            return Err(Error::parameter(
                "masking.allowFailure",
                "a failed masking always fails the step: unmasked staging data is never published; remove allowFailure",
            ));
        }
        let (namespace, namespace_derived) = match self.namespace {
            Some(NamespaceName(n)) => (n, false),
            None => (names::derived_namespace(&execution.key), true),
        };
        let commit = execution
            .commit
            .clone()
            .filter(|c| !c.is_empty() && names::is_label_value(c));
        Ok(Spec {
            volume,
            engine: self.engine,
            namespace,
            namespace_derived,
            storage_size: self.storage_size.0,
            storage_class_name: self.storage_class_name.map(|s| s.0),
            ttl_hours,
            image: self
                .image
                .map(|i| i.0)
                .unwrap_or_else(|| self.engine.default_image().to_string()),
            field_manager: self.field_manager.0,
            dry_run: self.dry_run,
            execution_key: execution.key.clone(),
            execution_label: names::execution_label(&execution.key),
            commit,
            ready_timeout_minutes: self.ready_timeout_minutes.map_or(
                if self.engine.is_app() {
                    DEFAULT_APP_READY_TIMEOUT_MINUTES
                } else {
                    DEFAULT_READY_TIMEOUT_MINUTES
                },
                |t| t.0,
            ),
            on_failure: self.on_failure,
            masking: self.masking,
            migration: self.migration,
            template,
            builtin_template,
            reset_credentials: self.reset_credentials.unwrap_or(!self.engine.is_app()),
            pipeline_label: self
                .pipeline
                .map(|p| p.0)
                .or_else(|| execution.pipeline.clone())
                .filter(|p| !p.is_empty())
                .map(|p| names::execution_label(&p)),
            database_user: self
                .database_user
                .map(|u| u.0)
                .unwrap_or_else(|| crate::staging::credentials::username(self.engine).to_string()),
            allow_unmanaged: self.allow_unmanaged_volume,
            array: self.flasharray,
            network_policy,
        })
    }

    /// What an application (Jenkins, Nexus) refuses: everything about database credentials.
    fn check_app(&self) -> Result<()> {
        let engine = self.engine;
        if !engine.is_app() {
            return Ok(());
        }
        if self.reset_credentials == Some(true) {
            return Err(Error::parameter(
                "resetCredentials",
                format!(
                    "engine {engine} keeps its own users in its restored data directory, and snapstage resets database passwords only (an application gets no credentials Secret); remove resetCredentials, or set it to false"
                ),
            ));
        }
        if let Some(u) = &self.database_user {
            return Err(Error::parameter(
                "databaseUser",
                format!(
                    "engine {engine} has no database user (an application gets no credentials Secret); remove databaseUser, got {:?}",
                    u.0
                ),
            ));
        }
        for (field, set) in [
            ("masking", self.masking.is_some()),
            ("migration", self.migration.is_some()),
        ] {
            if set {
                return Err(Error::parameter(
                    field,
                    format!(
                        "a {field} Job connects to a database with the credentials Secret (DB_HOST, DB_USERNAME, DB_PASSWORD); engine {engine} is an application and gets no Secret; remove {field}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Hours the namespace lives: `ttlHours` or `ttlDays` (not both), else the engine's default.
    fn ttl(&self) -> Result<u16> {
        Ok(match (self.ttl_hours, self.ttl_days) {
            (Some(h), Some(d)) => {
                return Err(Error::parameter(
                    "ttlDays",
                    format!(
                        "give exactly one of ttlHours and ttlDays, got both: ttlHours {}, ttlDays {}",
                        h.0, d.0
                    ),
                ));
            }
            (Some(h), None) => h.0,
            (None, Some(d)) => d.0 * 24,
            (None, None) if self.engine.is_app() => DEFAULT_APP_TTL_DAYS * 24,
            (None, None) => DEFAULT_TTL_HOURS,
        })
    }

    fn volume_source(&self) -> Result<VolumeSource> {
        let backend = self.backend;
        let only_for = |field: &str, for_backend: &str, value: &str| {
            Error::parameter(
                field,
                format!(
                    "only used with backend \"{for_backend}\"; remove it for backend \"{}\", got {value:?}",
                    backend.as_str()
                ),
            )
        };
        if backend != VolumeBackend::Csi
            && let Some(s) = &self.snapshot_name
        {
            return Err(only_for("snapshotName", "csi", s));
        }
        if backend != VolumeBackend::Csi
            && let Some(c) = &self.pvc_name
        {
            return Err(only_for("pvcName", "csi", c));
        }
        if backend != VolumeBackend::Ebs
            && let Some(z) = &self.availability_zone
        {
            return Err(only_for("availabilityZone", "ebs", &z.0));
        }
        let volume_id = self.volume_id.as_deref();
        Ok(match backend {
            VolumeBackend::Ebs => {
                let id = require_volume(
                    volume_id,
                    backend,
                    "an EBS volume id such as vol-0123456789abcdef0",
                )?;
                if !is_ebs_volume_id(id) {
                    return Err(Error::parameter(
                        "volumeId",
                        format!(
                            "expected an EBS volume id such as vol-0123456789abcdef0 (vol- and 8 or 17 hex digits), got {id:?}"
                        ),
                    ));
                }
                VolumeSource::Ebs {
                    volume_id: id.to_string(),
                    zone: self.availability_zone.clone().map(|z| z.0),
                }
            }
            VolumeBackend::Csi => {
                if let Some(v) = volume_id {
                    return Err(Error::parameter(
                        "volumeId",
                        format!(
                            "backend \"csi\" restores the VolumeSnapshot named by snapshotName; remove volumeId, got {v:?}"
                        ),
                    ));
                }
                let snapshot = match (self.snapshot_name.as_deref(), self.pvc_name.as_deref()) {
                    (Some(s), Some(c)) => {
                        return Err(Error::parameter(
                            "pvcName",
                            format!(
                                "give exactly one of snapshotName (restore a VolumeSnapshot into a new PVC) and pvcName (mount an existing PVC), got both: snapshotName {s:?}, pvcName {c:?}"
                            ),
                        ));
                    }
                    (None, Some(claim)) => {
                        if !names::is_dns1123_subdomain(claim) {
                            return Err(Error::parameter(
                                "pvcName",
                                format!(
                                    "expected a PVC name (a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253), got {claim:?}"
                                ),
                            ));
                        }
                        return Ok(VolumeSource::ExistingClaim {
                            claim: claim.to_string(),
                        });
                    }
                    (Some(s), None) => s,
                    (None, None) => {
                        return Err(Error::parameter(
                            "snapshotName",
                            "expected the name of a VolumeSnapshot in the staging namespace, or pvcName for a PVC restore-to-staging made there (one is required for backend \"csi\"), got nothing",
                        ));
                    }
                };
                if !names::is_dns1123_subdomain(snapshot) {
                    return Err(Error::parameter(
                        "snapshotName",
                        format!(
                            "expected a VolumeSnapshot name (lowercase letters, digits, '-' and '.', at most 253), got {snapshot:?}"
                        ),
                    ));
                }
                VolumeSource::CsiSnapshot {
                    snapshot: snapshot.to_string(),
                }
            }
            VolumeBackend::PureCsi => {
                let v = require_volume(
                    volume_id,
                    backend,
                    "a FlashArray volume name such as staging-db-01",
                )?;
                check_array_volume(
                    v,
                    2,
                    "a FlashArray volume name such as staging-db-01 or pod::volume",
                )?;
                VolumeSource::PureCsi {
                    volume: v.to_string(),
                }
            }
            VolumeBackend::PxCsi => {
                let v = require_volume(
                    volume_id,
                    backend,
                    "a FlashArray volume name, optionally <realm>::<pod>::<volume>",
                )?;
                check_array_volume(
                    v,
                    3,
                    "a FlashArray volume name, optionally <realm>::<pod>::<volume>",
                )?;
                VolumeSource::PxCsi {
                    volume: v.to_string(),
                }
            }
        })
    }
}

fn require_volume<'a>(v: Option<&'a str>, backend: VolumeBackend, what: &str) -> Result<&'a str> {
    v.ok_or_else(|| {
        Error::parameter(
            "volumeId",
            format!(
                "expected {what} (required for backend \"{}\"), got nothing",
                backend.as_str()
            ),
        )
    })
}

/// Purity names: 1–63 letters, digits, '-' or '_', starting with a letter or digit; pods and
/// realms are `::`-separated prefixes.
fn check_array_volume(v: &str, max_parts: usize, what: &str) -> Result<()> {
    let parts: Vec<&str> = v.split("::").collect();
    let part_ok = |p: &&str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if parts.len() > max_parts || !parts.iter().all(part_ok) {
        return Err(Error::parameter(
            "volumeId",
            format!("expected {what}, got {v:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::params::{Layer, merge};
    use serde_json::{Value, json};

    fn parse(v: Value) -> Result<Params> {
        let Value::Object(values) = v else {
            panic!("not an object")
        };
        merge(&[Layer {
            source: "request",
            values,
        }])
    }

    fn exec(key: &str) -> Execution {
        Execution {
            key: key.into(),
            origin: "direct".into(),
            pipeline: None,
            commit: None,
        }
    }

    fn spec(v: Value) -> Result<Spec> {
        parse(v)?.validate(&exec("direct/test-1"))
    }

    fn err(v: Value) -> String {
        spec(v).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = spec(json!({"volumeId": "vol-0123456789abcdef0"})).unwrap();
        assert_eq!(
            s.volume,
            VolumeSource::Ebs {
                volume_id: "vol-0123456789abcdef0".into(),
                zone: None
            }
        );
        assert_eq!(s.engine, Engine::Postgresql);
        assert_eq!(s.storage_size, "20Gi");
        assert_eq!(s.ttl_hours, 24);
        assert_eq!(s.field_manager, "snapstage-deploy-staging-db");
        assert_eq!(s.image, Engine::Postgresql.default_image());
        assert!(s.namespace_derived);
        assert_eq!(s.namespace, names::derived_namespace("direct/test-1"));
        assert!(!s.dry_run);
    }

    #[test]
    fn every_field_is_read() {
        let s = spec(json!({
            "volumeId": "vol-0123abcd", "backend": "ebs", "engine": "mysql", "namespace": "team-a-staging",
            "storageSize": "500Mi", "storageClassName": "gp3", "availabilityZone": "eu-west-1b",
            "ttlHours": 720, "image": "registry.example.com/mysql:8.4.2", "fieldManager": "ci", "dryRun": true
        }))
        .unwrap();
        assert_eq!(
            s.volume,
            VolumeSource::Ebs {
                volume_id: "vol-0123abcd".into(),
                zone: Some("eu-west-1b".into())
            }
        );
        assert_eq!(
            (s.engine, s.namespace.as_str(), s.namespace_derived),
            (Engine::Mysql, "team-a-staging", false)
        );
        assert_eq!(
            (s.storage_size.as_str(), s.storage_class_name.as_deref()),
            ("500Mi", Some("gp3"))
        );
        assert_eq!(
            (
                s.ttl_hours,
                s.image.as_str(),
                s.field_manager.as_str(),
                s.dry_run
            ),
            (720, "registry.example.com/mysql:8.4.2", "ci", true)
        );
    }

    #[test]
    fn invalid_values_name_the_field_and_what_is_expected() {
        let base = || json!({"volumeId": "vol-0123456789abcdef0"});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            err(b)
        };
        let e = with("storageSize", json!("ten gigs"));
        assert!(
            e.starts_with("request.storageSize: expected a Kubernetes quantity such as 10Gi"),
            "{e}"
        );
        assert!(e.contains("\"ten gigs\""), "{e}");
        assert!(with("storageSize", json!("0Gi")).starts_with("request.storageSize:"));
        let e = with("engine", json!("oracle"));
        assert!(
            e.starts_with("request.engine: unknown variant `oracle`"),
            "{e}"
        );
        assert!(e.contains("postgresql") && e.contains("mongodb"), "{e}");
        for ttl in [json!(0), json!(2161), json!(-5)] {
            let e = with("ttlHours", ttl.clone());
            assert!(
                e.starts_with("request.ttlHours: expected a whole number of hours from 1 to 2160"),
                "{e}"
            );
            assert!(e.ends_with(&format!("got {ttl}")), "{e}");
        }
        assert!(with("ttlHours", json!("24")).starts_with("request.ttlHours: invalid type"));
        let e = with("backend", json!("nfs"));
        assert!(
            e.starts_with("request.backend: unknown variant `nfs`") && e.contains("pure-csi"),
            "{e}"
        );
        let e = with("namespace", json!("Staging_DB"));
        assert!(
            e.starts_with("request.namespace: expected a namespace name"),
            "{e}"
        );
        for system in ["default", "kube-system"] {
            let e = with("namespace", json!(system));
            assert!(
                e.starts_with("request.namespace: expected a dedicated staging namespace"),
                "{e}"
            );
        }
        assert!(
            with("availabilityZone", json!("US East"))
                .starts_with("request.availabilityZone: expected an availability zone")
        );
        assert!(with("storageClassName", json!("GP3!")).starts_with("request.storageClassName:"));
        assert!(
            with("image", json!("postgres 17"))
                .starts_with("request.image: expected a container image")
        );
        assert!(
            with("fieldManager", json!(""))
                .starts_with("request.fieldManager: expected a field manager")
        );
        assert!(with("fieldManager", json!("x".repeat(129))).starts_with("request.fieldManager:"));
        assert!(
            with("volumeIds", json!(["vol-1"])).starts_with("request.volumeIds: unknown field")
        );
    }

    #[test]
    fn volume_rules_depend_on_the_backend() {
        let e = err(json!({}));
        assert!(e.starts_with("volumeId: expected an EBS volume id such as vol-0123456789abcdef0 (required for backend \"ebs\"), got nothing"), "{e}");
        let e = err(json!({"volumeId": "snap-0123456789abcdef0"}));
        assert!(
            e.starts_with("volumeId: expected an EBS volume id")
                && e.contains("snap-0123456789abcdef0"),
            "{e}"
        );
        assert!(err(json!({"volumeId": "vol-0123456789ABCDEF0"})).starts_with("volumeId:"));

        let s = spec(json!({"backend": "csi", "snapshotName": "prod-db-2024-06-01"})).unwrap();
        assert_eq!(
            s.volume,
            VolumeSource::CsiSnapshot {
                snapshot: "prod-db-2024-06-01".into()
            }
        );
        assert!(
            err(json!({"backend": "csi"}))
                .starts_with("snapshotName: expected the name of a VolumeSnapshot")
        );
        assert!(
            err(json!({"backend": "csi", "snapshotName": "Bad_Name"})).starts_with("snapshotName:")
        );
        assert!(
            err(json!({"backend": "csi", "snapshotName": "s", "volumeId": "vol-0123abcd"}))
                .starts_with("volumeId: backend \"csi\" restores")
        );
        let e = err(json!({"volumeId": "vol-0123abcd", "snapshotName": "s"}));
        assert!(
            e.starts_with("snapshotName: only used with backend \"csi\""),
            "{e}"
        );

        let s = spec(json!({"backend": "pure-csi", "volumeId": "pod1::staging-db"})).unwrap();
        assert_eq!(
            s.volume,
            VolumeSource::PureCsi {
                volume: "pod1::staging-db".into()
            }
        );
        let s = spec(json!({"backend": "px-csi", "volumeId": "realm::pod::vol_1"})).unwrap();
        assert_eq!(
            s.volume,
            VolumeSource::PxCsi {
                volume: "realm::pod::vol_1".into()
            }
        );
        assert!(
            err(json!({"backend": "px-csi", "volumeId": "a::b::c::d"}))
                .starts_with("volumeId: expected a FlashArray volume name")
        );
        assert!(
            err(json!({"backend": "pure-csi", "volumeId": "has space"})).starts_with("volumeId:")
        );
        assert!(err(json!({"backend": "pure-csi"})).contains("required for backend \"pure-csi\""));
        let e =
            err(json!({"backend": "px-csi", "volumeId": "v", "availabilityZone": "us-east-1a"}));
        assert!(
            e.starts_with("availabilityZone: only used with backend \"ebs\""),
            "{e}"
        );
    }

    #[test]
    fn csi_takes_exactly_one_of_snapshot_name_and_pvc_name() {
        let s = spec(json!({"backend": "csi", "pvcName": "staging-db-restored"})).unwrap();
        assert_eq!(
            s.volume,
            VolumeSource::ExistingClaim {
                claim: "staging-db-restored".into()
            }
        );
        assert_eq!(s.volume.claim_name(), "staging-db-restored");
        let e = err(json!({"backend": "csi", "snapshotName": "s", "pvcName": "p"}));
        assert!(
            e.starts_with("pvcName: give exactly one of snapshotName") && e.contains("got both"),
            "{e}"
        );
        let e = err(json!({"backend": "csi", "pvcName": "Restored_PVC"}));
        assert!(
            e.starts_with("pvcName: expected a PVC name (a DNS-1123 subdomain")
                && e.contains("\"Restored_PVC\""),
            "{e}"
        );
        let e = err(json!({"volumeId": "vol-0123abcd", "pvcName": "p"}));
        assert!(
            e.starts_with("pvcName: only used with backend \"csi\""),
            "{e}"
        );
        let e = err(json!({"backend": "csi"}));
        assert!(e.contains("or pvcName"), "{e}");
    }

    #[test]
    fn the_interlock_parameters_are_checked_where_they_are_written() {
        let s = spec(
            json!({"volumeId": "vol-0123abcd", "allowUnmanagedVolume": "vol-0123abcd",
                            "requireCluster": true}),
        )
        .unwrap();
        assert_eq!(s.allow_unmanaged.as_deref(), Some("vol-0123abcd"));
        assert_eq!(s.array, None);
        let e = err(json!({"volumeId": "vol-0123abcd", "allowUnmanagedVolume": " "}));
        assert!(
            e.starts_with("allowUnmanagedVolume: expected the volume"),
            "{e}"
        );
        let array = json!({"endpoint": "https://fa.example.com", "apiTokenSecret": "fa-ro"});
        let s =
            spec(json!({"backend": "px-csi", "volumeId": "r::p::v", "flasharray": array})).unwrap();
        assert_eq!(s.array.unwrap().endpoint, "https://fa.example.com");
        let e = err(json!({"volumeId": "vol-0123abcd", "flasharray": array}));
        assert!(
            e.starts_with("flasharray: only used with backend \"pure-csi\" or \"px-csi\""),
            "{e}"
        );
        let e = err(json!({"backend": "pure-csi", "volumeId": "v",
                           "flasharray": {"endpoint": "fa.example.com", "apiTokenSecret": "x"}}));
        assert!(
            e.starts_with("flasharray.endpoint: expected the array's management URL"),
            "{e}"
        );
        let e = err(json!({"backend": "pure-csi", "volumeId": "v",
                           "flasharray": {"endpoint": "https://fa", "apiTokenSecret": "x", "protectionGroup": "pg"}}));
        assert!(
            e.starts_with("request.flasharray.protectionGroup: unknown field"),
            "{e}"
        );
        assert!(
            err(json!({"volumeId": "vol-0123abcd", "requireCluster": "yes"}))
                .starts_with("request.requireCluster: invalid type")
        );
    }

    #[test]
    fn commit_label_only_when_label_safe() {
        let p = || parse(json!({"volumeId": "vol-0123abcd"})).unwrap();
        let mut x = exec("codecommit/repo/abc");
        x.commit = Some("0123456789abcdef0123456789abcdef01234567".into());
        assert_eq!(
            p().validate(&x).unwrap().commit.as_deref(),
            x.commit.as_deref()
        );
        x.commit = Some("not a commit/ref".into());
        assert_eq!(p().validate(&x).unwrap().commit, None);
    }
    #[test]
    fn deploy_options_are_checked_where_they_are_written() {
        let base = || json!({"volumeId": "vol-0123456789abcdef0"});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            spec(b)
        };
        let s = spec(base()).unwrap();
        assert_eq!(
            (
                s.ready_timeout_minutes,
                s.on_failure,
                s.masking,
                s.migration
            ),
            (15, OnFailure::Teardown, None, None)
        );
        assert_eq!(
            with("onFailure", json!("keep")).unwrap().on_failure,
            OnFailure::Keep
        );
        let e = with("onFailure", json!("delete")).unwrap_err().to_string();
        assert!(
            e.starts_with("request.onFailure: unknown variant `delete`") && e.contains("keep"),
            "{e}"
        );
        for bad in [json!(0), json!(1441)] {
            let e = with("readyTimeoutMinutes", bad).unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "request.readyTimeoutMinutes: expected a whole number of minutes from 1 to 1440"
                ),
                "{e}"
            );
        }
        let e = with("masking", json!({"image": "postgres:17", "command": []}))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("request.masking.command: expected a command"),
            "{e}"
        );
        let e = with(
            "masking",
            json!({"image": "postgres:17", "command": ["psql"], "allowFailure": true}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("masking.allowFailure: a failed masking always fails the step"),
            "{e}"
        );
        let e = with(
            "migration",
            json!({"image": "flyway", "command": ["flyway"], "retries": 3}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("request.migration.retries: unknown field"),
            "{e}"
        );
        let m = with("migration", json!({"image": "flyway/flyway:10", "command": ["flyway", "validate"], "timeoutMinutes": 5, "allowFailure": true}))
            .unwrap()
            .migration
            .unwrap();
        assert_eq!((m.timeout_minutes(), m.allow_failure), (5, true));
        let e = with("action", json!("destroy")).unwrap_err().to_string();
        assert!(
            e.contains("deploy") && e.contains("teardown") && e.contains("sweep"),
            "{e}"
        );
    }
}
