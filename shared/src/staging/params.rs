//! The parameters of `deploy-staging-db`, and their validation into a [`Spec`].
//!
//! Each field's own rules are checked while parsing (so an error names where the value came
//! from: `request.storageSize`, `UserParameters.ttlHours`); rules that tie fields together (the
//! volume id's shape depends on `backend`) are checked by [`Params::validate`] and name the field.

use serde::Deserialize;

use super::engine::Engine;
use super::network::NetworkPolicyParams;
use super::template::{TemplateParam, TemplateText};
use crate::error::{Error, Result};
use crate::interlock::{ArrayAccess, OVERRIDE_PARAM};
use crate::job::contract::Execution;
use crate::kube::client::ClusterConfig;
use crate::kube::names;

pub const DEFAULT_STORAGE_SIZE: &str = "20Gi";
pub const DEFAULT_TTL_HOURS: u16 = 24;
pub const MAX_TTL_HOURS: u16 = 720;
pub const DEFAULT_FIELD_MANAGER: &str = "snapstage-deploy-staging-db";
pub const DEFAULT_READY_TIMEOUT_MINUTES: u16 = 15;
/// CodePipeline gives an action at most 24 hours.
pub const MAX_TIMEOUT_MINUTES: u16 = 1440;
pub const DEFAULT_JOB_TIMEOUT_MINUTES: u16 = 60;

/// What the caller writes (UserParameters JSON, or a direct request's keys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// The restored volume: an EBS volume id (`ebs`), an array volume name (`pure-csi`,
    /// `px-csi`). Not used with `csi`, which restores `snapshotName`.
    #[serde(default)]
    pub volume_id: Option<String>,
    #[serde(default)]
    pub backend: Backend,
    /// `csi` only: the VolumeSnapshot (in the staging namespace) the PVC restores from.
    #[serde(default)]
    pub snapshot_name: Option<String>,
    /// `csi` only, instead of `snapshotName`: a PVC that already exists in the staging namespace
    /// (made by `restore-to-staging`); mounted as it is, no second PVC.
    #[serde(default)]
    pub pvc_name: Option<String>,
    #[serde(default)]
    pub engine: Engine,
    #[serde(default)]
    pub namespace: Option<NamespaceName>,
    #[serde(default)]
    pub storage_size: StorageSize,
    #[serde(default)]
    pub storage_class_name: Option<StorageClassName>,
    /// `ebs` only: pins the PV (and so the pod) to the volume's zone.
    #[serde(default)]
    pub availability_zone: Option<AvailabilityZone>,
    #[serde(default)]
    pub ttl_hours: TtlHours,
    #[serde(default)]
    pub image: Option<Image>,
    #[serde(default)]
    pub field_manager: FieldManager,
    /// `deploy` (default): plan only. `teardown` / `sweep`: report what would be deleted.
    #[serde(default)]
    pub dry_run: bool,
    /// What to do: deploy (default), teardown one staging namespace, or sweep expired ones.
    #[serde(default)]
    pub action: Action,
    /// The cluster to apply to; none means plan mode.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Minutes the database may take to become ready (from the apply).
    #[serde(default)]
    pub ready_timeout_minutes: ReadyTimeout,
    /// What a failed deploy leaves behind.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// A Job that masks the data before the staging database is published.
    #[serde(default)]
    pub masking: Option<JobParams>,
    /// A Job that checks the migrations against the staging data.
    #[serde(default)]
    pub migration: Option<JobParams>,
    /// Reset the database user's password to the generated one before the staging server
    /// starts, and take every other login's production password away (default true: a restored
    /// volume keeps production's passwords). See [`super::reset`].
    #[serde(default)]
    pub reset_credentials: Option<bool>,
    /// No longer used, and refused: the reset needs no production credential (it starts the
    /// engine local-only on the restored data). Kept so that its error says so.
    #[serde(default)]
    pub admin_secret: Option<SecretId>,
    /// The database user the Secret names and whose password is reset (default: the image's
    /// superuser: postgres, root, admin).
    #[serde(default)]
    pub database_user: Option<DatabaseUser>,
    /// The pipeline staging environments belong to, for `onFailure: "rollback"` (default: the
    /// CodePipeline pipeline's name; give it for direct requests and the CLI).
    #[serde(default)]
    pub pipeline: Option<PipelineName>,
    /// The database workload as the user's own YAML (see [`super::template`]).
    #[serde(default)]
    pub template: Option<TemplateParam>,
    /// The production interlock's override: names the volume to import (the same value as
    /// `volumeId`, `pvcName` or `snapshotName`) when it does not carry this run's staging mark.
    /// A production-marked volume is refused even then.
    #[serde(default)]
    pub allow_unmanaged_volume: Option<String>,
    /// `pure-csi` / `px-csi`: the array that holds the volume, so the interlock can read its
    /// tags (and its protection groups'). Without it only the cluster's PVs are checked, and the
    /// volume is imported only when `allowUnmanagedVolume` names it.
    #[serde(default)]
    pub flasharray: Option<ArrayAccess>,
    /// True: without a cluster a deploy (or teardown, sweep) fails with a ConfigurationError
    /// instead of only planning; `dryRun: true` still plans. The stack sets it.
    #[serde(default)]
    pub require_cluster: bool,
    /// The staging namespace's NetworkPolicies: closed until masking succeeded, then open to
    /// `allowFrom` (see [`super::network`]).
    #[serde(default)]
    pub network_policy: Option<NetworkPolicyParams>,
    /// The text of an artifact template, fetched by the step before validation.
    #[serde(skip)]
    pub fetched_template: Option<TemplateText>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Deploy,
    /// Delete one staging namespace (`namespace`), if snapstage made it.
    Teardown,
    /// Delete every snapstage namespace whose `snapstage.io/expires-at` has passed.
    Sweep,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Teardown => "teardown",
            Self::Sweep => "sweep",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Delete the namespace this run created (and its PV objects).
    #[default]
    Teardown,
    /// Leave everything for debugging (it still expires with its TTL).
    Keep,
    /// Delete it as `teardown` does, and name the previous healthy staging database of the same
    /// pipeline, which still stands (the action still fails).
    Rollback,
}

/// A Job run against the staging database (`masking`, `migration`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobParams {
    pub image: Image,
    /// The container's command (no shell unless you name one).
    pub command: Command,
    /// A ConfigMap mounted read-only at `/scripts`.
    #[serde(default)]
    pub scripts_config_map: Option<ConfigMapName>,
    /// Minutes the Job may run (its `activeDeadlineSeconds`); default 60.
    #[serde(default)]
    pub timeout_minutes: Option<JobTimeout>,
    /// `migration` only: report a failed migration without failing the action.
    #[serde(default)]
    pub allow_failure: bool,
}

impl JobParams {
    pub fn timeout_minutes(&self) -> u16 {
        self.timeout_minutes
            .map_or(DEFAULT_JOB_TIMEOUT_MINUTES, |t| t.0)
    }
}

/// Where the staging database's data comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// A restored EBS volume, bound through a static PV of the EBS CSI driver.
    #[default]
    Ebs,
    /// A CSI VolumeSnapshot restored by a PVC `dataSource` (any CSI driver), or a PVC that
    /// already exists in the staging namespace (`pvcName`).
    Csi,
    /// A FlashArray / Cloud Block Store volume, bound through a static PV of Pure's `pure-csi` (PSO ≥ 5.2).
    PureCsi,
    /// A FlashArray volume imported by PX-CSI from the PVC annotation `portworx.io/pure-volume-name`.
    PxCsi,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ebs => "ebs",
            Self::Csi => "csi",
            Self::PureCsi => "pure-csi",
            Self::PxCsi => "px-csi",
        }
    }
}

/// The validated source of the data volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    Ebs {
        volume_id: String,
        zone: Option<String>,
    },
    CsiSnapshot {
        snapshot: String,
    },
    /// A PVC already in the staging namespace: mounted, never created by deploy.
    ExistingClaim {
        claim: String,
    },
    PureCsi {
        volume: String,
    },
    PxCsi {
        volume: String,
    },
}

impl VolumeSource {
    pub fn backend(&self) -> Backend {
        match self {
            Self::Ebs { .. } => Backend::Ebs,
            Self::CsiSnapshot { .. } | Self::ExistingClaim { .. } => Backend::Csi,
            Self::PureCsi { .. } => Backend::PureCsi,
            Self::PxCsi { .. } => Backend::PxCsi,
        }
    }

    /// The volume or snapshot the data comes from, as the user named it.
    pub fn source_name(&self) -> &str {
        match self {
            Self::Ebs { volume_id, .. } => volume_id,
            Self::CsiSnapshot { snapshot } => snapshot,
            Self::ExistingClaim { claim } => claim,
            Self::PureCsi { volume } | Self::PxCsi { volume } => volume,
        }
    }

    /// True when a static PersistentVolume is rendered (the others are provisioned by the driver).
    pub fn has_static_pv(&self) -> bool {
        matches!(self, Self::Ebs { .. } | Self::PureCsi { .. })
    }

    /// The PVC the database mounts: snapstage's, or the existing one.
    pub fn claim_name(&self) -> &str {
        match self {
            Self::ExistingClaim { claim } => claim,
            _ => super::render::PVC_NAME,
        }
    }

    /// What the namespace's `snapstage.io/source` annotation says: `csi:<snapshot>`,
    /// `csi-pvc:<claim>`, `ebs:<volume>`, ...
    pub fn describe(&self) -> String {
        match self {
            Self::ExistingClaim { claim } => format!("csi-pvc:{claim}"),
            other => format!("{}:{}", other.backend().as_str(), other.source_name()),
        }
    }
}

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
    /// The user's template, read; `None` for snapstage's own Service and StatefulSet.
    pub template: Option<TemplateText>,
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
            if !matches!(volume.backend(), Backend::PureCsi | Backend::PxCsi) {
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
        let template = self.template_text()?;
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
            ttl_hours: self.ttl_hours.0,
            image: self
                .image
                .map(|i| i.0)
                .unwrap_or_else(|| self.engine.default_image().to_string()),
            field_manager: self.field_manager.0,
            dry_run: self.dry_run,
            execution_key: execution.key.clone(),
            execution_label: names::execution_label(&execution.key),
            commit,
            ready_timeout_minutes: self.ready_timeout_minutes.0,
            on_failure: self.on_failure,
            masking: self.masking,
            migration: self.migration,
            template,
            reset_credentials: self.reset_credentials.unwrap_or(true),
            pipeline_label: self
                .pipeline
                .map(|p| p.0)
                .or_else(|| execution.pipeline.clone())
                .filter(|p| !p.is_empty())
                .map(|p| names::execution_label(&p)),
            database_user: self
                .database_user
                .map(|u| u.0)
                .unwrap_or_else(|| super::credentials::username(self.engine).to_string()),
            allow_unmanaged: self.allow_unmanaged_volume,
            array: self.flasharray,
            network_policy,
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
        if backend != Backend::Csi
            && let Some(s) = &self.snapshot_name
        {
            return Err(only_for("snapshotName", "csi", s));
        }
        if backend != Backend::Csi
            && let Some(c) = &self.pvc_name
        {
            return Err(only_for("pvcName", "csi", c));
        }
        if backend != Backend::Ebs
            && let Some(z) = &self.availability_zone
        {
            return Err(only_for("availabilityZone", "ebs", &z.0));
        }
        let volume_id = self.volume_id.as_deref();
        Ok(match backend {
            Backend::Ebs => {
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
            Backend::Csi => {
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
            Backend::PureCsi => {
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
            Backend::PxCsi => {
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

fn require_volume<'a>(v: Option<&'a str>, backend: Backend, what: &str) -> Result<&'a str> {
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

/// `vol-` followed by 8 or 17 lowercase hex digits.
pub fn is_ebs_volume_id(s: &str) -> bool {
    s.strip_prefix("vol-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17)
            && h.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
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

/// Defines a string parameter checked while parsing.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(pub String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> std::result::Result<Self, String> {
                let check: fn(&str) -> std::result::Result<(), String> = $check;
                check(&s).map(|()| Self(s))
            }
        }
    };
}

checked_string!(
    /// A namespace for the staging database: a DNS-1123 label, never a system namespace.
    NamespaceName,
    |s| {
        if !names::is_dns1123_label(s) {
            return Err(format!("expected a namespace name (a DNS-1123 label: lowercase letters, digits and '-', at most 63), got {s:?}"));
        }
        if s == "default" || s.starts_with("kube-") {
            return Err(format!("expected a dedicated staging namespace (it is deleted when its TTL expires), got the system namespace {s:?}"));
        }
        Ok(())
    }
);

checked_string!(
    /// A storage size as a Kubernetes quantity (`20Gi`, `500Mi`).
    StorageSize,
    |s| match names::quantity_bytes(s) {
        Some(b) if b >= 1.0 => Ok(()),
        _ => Err(format!("expected a Kubernetes quantity such as 10Gi or 500Mi, got {s:?}")),
    }
);

impl Default for StorageSize {
    fn default() -> Self {
        Self(DEFAULT_STORAGE_SIZE.to_string())
    }
}

checked_string!(
    /// A StorageClass name; `""` asks for no class (static binding only).
    StorageClassName,
    |s| {
        if s.is_empty() || names::is_dns1123_subdomain(s) {
            Ok(())
        } else {
            Err(format!("expected a StorageClass name (lowercase letters, digits, '-' and '.') or \"\", got {s:?}"))
        }
    }
);

checked_string!(
    /// An AWS availability zone name (`us-east-1a`, `us-west-2-lax-1a`).
    AvailabilityZone,
    |s| {
        let ok = s.len() <= names::MAX_LABEL
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.contains('-')
            && s.chars().any(|c| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok { Ok(()) } else { Err(format!("expected an availability zone name such as us-east-1a, got {s:?}")) }
    }
);

checked_string!(
    /// A container image reference.
    Image,
    |s| {
        let ok = !s.is_empty()
            && s.len() <= 512
            && !s.starts_with(['-', ':', '@', '/'])
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok { Ok(()) } else { Err(format!("expected a container image such as postgres:17 or registry.example.com/db/postgres@sha256:..., got {s:?}")) }
    }
);

checked_string!(
    /// The server-side apply field manager: 1–128 printable characters.
    FieldManager,
    |s| {
        if !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control) {
            Ok(())
        } else {
            Err(format!("expected a field manager name of 1 to 128 printable characters, got {s:?}"))
        }
    }
);

impl Default for FieldManager {
    fn default() -> Self {
        Self(DEFAULT_FIELD_MANAGER.to_string())
    }
}

checked_string!(
    /// A pipeline name: 1 to 100 printable characters.
    PipelineName,
    |s| {
        if !s.is_empty() && s.len() <= 100 && !s.chars().any(char::is_control) {
            Ok(())
        } else {
            Err(format!("expected a pipeline name of 1 to 100 printable characters, got {s:?}"))
        }
    }
);

checked_string!(
    /// A Secrets Manager secret id: a name or an ARN.
    SecretId,
    |s| {
        if !s.is_empty() && s.len() <= 2048 && !s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Ok(())
        } else {
            Err(format!("expected a Secrets Manager secret name or ARN, got {s:?}"))
        }
    }
);

checked_string!(
    /// A database user name, safe to write into SQL and shell: letters, digits and `_`.
    DatabaseUser,
    |s| {
        let ok = s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok { Ok(()) } else { Err(format!("expected a database user name of letters, digits and _ (at most 63, not starting with a digit), got {s:?}")) }
    }
);

checked_string!(
    /// A ConfigMap name (DNS-1123 subdomain).
    ConfigMapName,
    |s| {
        if names::is_dns1123_subdomain(s) {
            Ok(())
        } else {
            Err(format!("expected a ConfigMap name (lowercase letters, digits, '-' and '.'), got {s:?}"))
        }
    }
);

/// A container command: 1 to 64 arguments, the first not empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Command(pub Vec<String>);

impl TryFrom<Vec<String>> for Command {
    type Error = String;
    fn try_from(v: Vec<String>) -> std::result::Result<Self, String> {
        let ok = !v.is_empty()
            && v.len() <= 64
            && !v[0].trim().is_empty()
            && v.iter().all(|a| a.len() <= 4096);
        if ok {
            Ok(Self(v))
        } else {
            Err(format!(
                "expected a command as an array of 1 to 64 strings such as [\"psql\", \"-f\", \"/scripts/mask.sql\"], got {} argument(s)",
                v.len()
            ))
        }
    }
}

/// Defines a whole-minutes parameter in `1..=MAX_TIMEOUT_MINUTES`.
macro_rules! minutes {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "i64")]
        pub struct $name(pub u16);

        impl TryFrom<i64> for $name {
            type Error = String;
            fn try_from(m: i64) -> std::result::Result<Self, String> {
                u16::try_from(m)
                    .ok()
                    .filter(|m| (1..=MAX_TIMEOUT_MINUTES).contains(m))
                    .map(Self)
                    .ok_or_else(|| {
                        format!("expected a whole number of minutes from 1 to {MAX_TIMEOUT_MINUTES}, got {m}")
                    })
            }
        }
    };
}

minutes!(
    /// Minutes the database may take to become ready; default 15.
    ReadyTimeout
);

impl Default for ReadyTimeout {
    fn default() -> Self {
        Self(DEFAULT_READY_TIMEOUT_MINUTES)
    }
}

minutes!(
    /// Minutes a masking or migration Job may run.
    JobTimeout
);

/// Hours the staging namespace lives: 1 to 720.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct TtlHours(pub u16);

impl TryFrom<i64> for TtlHours {
    type Error = String;
    fn try_from(h: i64) -> std::result::Result<Self, String> {
        u16::try_from(h)
            .ok()
            .filter(|h| (1..=MAX_TTL_HOURS).contains(h))
            .map(Self)
            .ok_or_else(|| {
                format!("expected a whole number of hours from 1 to {MAX_TTL_HOURS}, got {h}")
            })
    }
}

impl Default for TtlHours {
    fn default() -> Self {
        Self(DEFAULT_TTL_HOURS)
    }
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
        for ttl in [json!(0), json!(721), json!(-5)] {
            let e = with("ttlHours", ttl.clone());
            assert!(
                e.starts_with("request.ttlHours: expected a whole number of hours from 1 to 720"),
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
