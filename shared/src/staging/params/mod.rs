//! The parameters of `deploy-staging-db` as the user writes them; [`crate::staging::spec`]
//! checks them together into a [`Spec`](crate::staging::Spec).
//!
//! Each field's own rules are checked while parsing (so an error names where the value came
//! from: `request.storageSize`, `UserParameters.ttlHours`); rules that tie fields together (the
//! volume id's shape depends on `backend`) are checked by [`Params::validate`] and name the field.

pub mod network;
pub mod template;

use serde::Deserialize;

use self::network::NetworkPolicyParams;
use crate::interlock::ArrayAccess;
use crate::kube::client::ClusterConfig;
use crate::kube::names;
use crate::staging::engine::Engine;
use crate::staging::params::template::{TemplateParam, TemplateText};

pub const DEFAULT_STORAGE_SIZE: &str = "20Gi";
/// A database's default lifetime.
pub const DEFAULT_TTL_HOURS: u16 = 24;
/// An application's (Jenkins, Nexus: a CI environment that stays up around quarter end).
pub const DEFAULT_APP_TTL_DAYS: u16 = 14;
/// The longest lifetime of any staging environment: 90 days.
pub const MAX_TTL_DAYS: u16 = 90;
pub const MAX_TTL_HOURS: u16 = MAX_TTL_DAYS * 24;
pub const DEFAULT_FIELD_MANAGER: &str = "snapstage-deploy-staging-db";
pub const DEFAULT_READY_TIMEOUT_MINUTES: u16 = 15;
/// An application's first start: Nexus rebuilds its indexes and checks a large blob store,
/// Jenkins loads every job and build record of its home.
pub const DEFAULT_APP_READY_TIMEOUT_MINUTES: u16 = 30;
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
    pub backend: VolumeBackend,
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
    /// Hours the environment lives (1 to 2160); or `ttlDays`, not both. Default: 24 hours for
    /// a database, 14 days for an application.
    #[serde(default)]
    pub ttl_hours: Option<TtlHours>,
    /// Days the environment lives (1 to 90), instead of `ttlHours`.
    #[serde(default)]
    pub ttl_days: Option<TtlDays>,
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
    /// Minutes the database or application may take to become ready (from the apply); default
    /// 15 for a database, 30 for an application.
    #[serde(default)]
    pub ready_timeout_minutes: Option<ReadyTimeout>,
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
    /// volume keeps production's passwords). See [`crate::staging::render::reset`].
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
    /// The database workload as the user's own YAML (see [`crate::staging::render::template`]).
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
    /// `allowFrom` (see [`crate::staging::render::network`]).
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
pub enum VolumeBackend {
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

impl VolumeBackend {
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
    pub fn backend(&self) -> VolumeBackend {
        match self {
            Self::Ebs { .. } => VolumeBackend::Ebs,
            Self::CsiSnapshot { .. } | Self::ExistingClaim { .. } => VolumeBackend::Csi,
            Self::PureCsi { .. } => VolumeBackend::PureCsi,
            Self::PxCsi { .. } => VolumeBackend::PxCsi,
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
            _ => crate::staging::objects::PVC_NAME,
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

/// `vol-` followed by 8 or 17 lowercase hex digits.
pub fn is_ebs_volume_id(s: &str) -> bool {
    s.strip_prefix("vol-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17)
            && h.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
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
    /// Minutes the database may take to become ready; default 15 (30 for an application).
    ReadyTimeout
);

minutes!(
    /// Minutes a masking or migration Job may run.
    JobTimeout
);

/// Hours the staging namespace lives: 1 to 2160 (90 days).
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

/// Days the staging namespace lives: 1 to 90.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct TtlDays(pub u16);

impl TryFrom<i64> for TtlDays {
    type Error = String;
    fn try_from(d: i64) -> std::result::Result<Self, String> {
        u16::try_from(d)
            .ok()
            .filter(|d| (1..=MAX_TTL_DAYS).contains(d))
            .map(Self)
            .ok_or_else(|| {
                format!("expected a whole number of days from 1 to {MAX_TTL_DAYS}, got {d}")
            })
    }
}
