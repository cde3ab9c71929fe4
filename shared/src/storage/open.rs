//! One factory from configuration: the `backend` parameter names a backend, its own section
//! (`flasharray`, `csi`) says how to reach it. [`AnyBackend`] dispatches the [`Backend`] trait
//! (and its capability accessors) to the one chosen, so the two storage steps are written once.
//!
//! | `backend` | section | credentials |
//! | --- | --- | --- |
//! | `ebs` (default) | none | the function's role |
//! | `flasharray` | `flasharray: {endpoint, apiTokenSecret, caBundle?, protectionGroup?, replicatedFrom?}` | API token from Secrets Manager |
//! | `csi` | `csi: {cluster, namespace, snapshotClass?, groupSnapshotClass?, stagingNamespace?, storageClass?}` | the cluster's (EKS token, kubeconfig, service account) |

use serde::{Deserialize, Serialize};

use super::csi::{Csi, CsiParams};
use super::ebs::Ebs;
use super::flasharray::{
    ApiToken, Client as FaClient, Config as FaConfig, FlashArray, ReplicaSource,
};
use super::{
    Backend, BackendKind, NamedTargets, PointInTime, RegionCopy, RestoreOutputs, Retention,
    Selection, SnapshotInfo, VolumeInfo, VolumeSpec,
};
use crate::error::{Error, Result};
use crate::job::contract::{Execution, Step};

/// How to reach a FlashArray or Cloud Block Store (`flasharray` parameter section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlashArrayParams {
    /// `https://array.example.com`: the array's management address.
    pub endpoint: String,
    /// Secrets Manager secret (name or ARN) holding the API token: the token as plain text, or
    /// JSON `{"apiToken": "..."}`.
    pub api_token_secret: String,
    /// Extra trusted CA certificates (PEM text) for an array with an internal CA. TLS is always
    /// verified.
    #[serde(default)]
    pub ca_bundle: Option<String>,
    /// snapshot-production: snapshot this protection group as one consistent group, replicated
    /// now to its targets (on-prem FlashArray ↔ Cloud Block Store), instead of single volumes.
    #[serde(default)]
    pub protection_group: Option<String>,
    /// restore-to-staging on a replication target: `sourceVolumeId` restores the newest
    /// snapshot replicated from this array's protection group.
    #[serde(default)]
    pub replicated_from: Option<ReplicatedFrom>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplicatedFrom {
    /// The source array's name (as replicated snapshot names show it: `ARRAY:PGROUP.SUFFIX.VOLUME`).
    pub array: String,
    pub protection_group: String,
}

/// The backend a step runs against, opened from its parameters.
pub enum AnyBackend {
    Ebs(Ebs),
    FlashArray(Box<FlashArray>),
    Csi(Box<Csi>),
}

/// The backend part of a storage step's parameters.
#[derive(Debug, Clone, Copy)]
pub struct BackendChoice<'a> {
    pub kind: BackendKind,
    pub flasharray: Option<&'a FlashArrayParams>,
    pub csi: Option<&'a CsiParams>,
}

impl BackendChoice<'_> {
    /// Checks that exactly the section of the chosen backend is given.
    pub fn validate(&self) -> Result<()> {
        let chosen = match self.kind {
            BackendKind::Ebs => "ebs",
            BackendKind::FlashArray => "flasharray",
            BackendKind::Csi => "csi",
        };
        for (section, given) in [
            ("flasharray", self.flasharray.is_some()),
            ("csi", self.csi.is_some()),
        ] {
            if given && section != chosen {
                return Err(Error::parameter(
                    section,
                    format!(
                        "given, but backend is {chosen:?}; set \"backend\": \"{section}\" or remove the section"
                    ),
                ));
            }
        }
        match self.kind {
            BackendKind::Ebs => Ok(()),
            BackendKind::FlashArray => {
                let Some(fa) = self.flasharray else {
                    return Err(Error::parameter(
                        "flasharray",
                        "missing: backend \"flasharray\" needs {\"endpoint\": \"https://array\", \"apiTokenSecret\": \"<secret name or ARN>\"}",
                    ));
                };
                if fa.api_token_secret.trim().is_empty() {
                    return Err(Error::parameter(
                        "flasharray.apiTokenSecret",
                        "expected the name or ARN of a Secrets Manager secret holding the API token",
                    ));
                }
                if let Some(pg) = &fa.protection_group {
                    super::flasharray::check_volume_name("flasharray.protectionGroup", pg)?;
                }
                if let Some(r) = &fa.replicated_from {
                    super::flasharray::check_volume_name(
                        "flasharray.replicatedFrom.array",
                        &r.array,
                    )?;
                    super::flasharray::check_volume_name(
                        "flasharray.replicatedFrom.protectionGroup",
                        &r.protection_group,
                    )?;
                }
                Ok(())
            }
            BackendKind::Csi => match self.csi {
                None => Err(Error::parameter(
                    "csi",
                    "missing: backend \"csi\" needs {\"cluster\": {\"eks\": {\"name\": \"prod\"}}, \"namespace\": \"<production namespace>\"}",
                )),
                Some(csi) => csi.validate(),
            },
        }
    }
}

/// Opens the chosen backend: reads the secrets it needs, builds its client.
pub async fn open(choice: BackendChoice<'_>, sdk: &aws_config::SdkConfig) -> Result<AnyBackend> {
    choice.validate()?;
    if let (BackendKind::Csi, Some(csi)) = (choice.kind, choice.csi) {
        let client = crate::kube::client::connect(&csi.cluster, sdk).await?;
        return Ok(AnyBackend::Csi(Box::new(Csi::new(client, csi.clone()))));
    }
    match (choice.kind, choice.flasharray) {
        (BackendKind::Ebs, _) => Ok(AnyBackend::Ebs(Ebs::new(aws_sdk_ec2::Client::new(sdk)))),
        (BackendKind::FlashArray, Some(fa)) => {
            Ok(AnyBackend::FlashArray(open_flasharray(fa, sdk).await?))
        }
        (BackendKind::FlashArray, None) => Err(Error::parameter("flasharray", "missing")),
        (BackendKind::Csi, _) => Err(Error::parameter("csi", "missing")),
    }
}

/// Step parameters that name a storage backend (`backend`, `flasharray`, `csi`).
pub trait ChoosesBackend {
    fn choice(&self) -> BackendChoice<'_>;
}

/// The open → step → close sequence of every storage function: opens the backend the step's
/// parameters choose, runs `work` on it, and closes it (a FlashArray session is logged out)
/// whatever `work` returns.
pub async fn with_backend<P: ChoosesBackend, T>(
    step: Step<P>,
    sdk: &aws_config::SdkConfig,
    work: impl AsyncFnOnce(&AnyBackend, Step<P>) -> Result<T>,
) -> Result<T> {
    let backend = open(step.params.choice(), sdk).await?;
    let result = work(&backend, step).await;
    backend.close().await;
    result
}

/// Opens a FlashArray / Cloud Block Store backend alone: reads its API token, builds its client.
/// (Array mode of replicate-artifacts-back calls this, not [`open`]: a binary that never opens a
/// cluster or EBS then links neither the Kubernetes client nor EC2.)
pub async fn open_flasharray(
    fa: &FlashArrayParams,
    sdk: &aws_config::SdkConfig,
) -> Result<Box<FlashArray>> {
    let token = api_token(sdk, &fa.api_token_secret).await?;
    let mut cfg = FaConfig::new(fa.endpoint.clone(), token);
    cfg.ca_bundle = fa.ca_bundle.as_ref().map(|p| p.as_bytes().to_vec());
    cfg.allow_insecure_http_for_tests =
        std::env::var_os("SNAPSTAGE_FLASHARRAY_ALLOW_HTTP_FOR_TESTS").is_some();
    let mut array = FlashArray::new(FaClient::new(cfg)?);
    if let Some(pg) = &fa.protection_group {
        array = array.with_protection_group(pg);
    }
    if let Some(r) = &fa.replicated_from {
        array = array.replicated_from(ReplicaSource {
            array: r.array.clone(),
            pgroup: r.protection_group.clone(),
        });
    }
    Ok(Box::new(array))
}

/// The API token in a Secrets Manager secret: plain text, or JSON with `apiToken`.
async fn api_token(sdk: &aws_config::SdkConfig, secret_id: &str) -> Result<ApiToken> {
    let field = "flasharray.apiTokenSecret";
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let expected = "the API token, or JSON {\"apiToken\": \"...\"}";
    let text = crate::aws::secret_string(&client, secret_id, field, expected).await?;
    let text = text.trim();
    let token = if text.starts_with('{') {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.get("apiToken")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            })
    } else {
        Some(text.to_string())
    };
    match token.filter(|t| !t.is_empty()) {
        Some(t) => Ok(ApiToken::new(t)),
        None => Err(Error::Configuration(format!(
            "{field} {secret_id:?}: expected {expected} as the SecretString"
        ))),
    }
}

impl AnyBackend {
    /// Ends the backend's session (FlashArray logs out). Errors are logged, not returned: the
    /// step's result is what matters.
    pub async fn close(self) {
        if let Self::FlashArray(fa) = self
            && let Err(e) = (*fa).close().await
        {
            tracing::warn!(error = %e, "FlashArray logout failed; the session expires on its own");
        }
    }
}

macro_rules! each {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Ebs($b) => $e,
            AnyBackend::FlashArray($b) => $e,
            AnyBackend::Csi($b) => $e,
        }
    };
}

impl Backend for AnyBackend {
    fn name(&self) -> &'static str {
        each!(self, b => b.name())
    }
    async fn describe_source(&self, source: &str) -> Result<Option<i64>> {
        each!(self, b => b.describe_source(source).await)
    }
    async fn find_snapshot(&self, source: &str, ex: &Execution) -> Result<Option<SnapshotInfo>> {
        each!(self, b => b.find_snapshot(source, ex).await)
    }
    async fn create_snapshot(
        &self,
        source: &str,
        ex: &Execution,
        description: &str,
    ) -> Result<SnapshotInfo> {
        each!(self, b => b.create_snapshot(source, ex, description).await)
    }
    async fn snapshot(&self, id: &str) -> Result<SnapshotInfo> {
        each!(self, b => b.snapshot(id).await)
    }
    async fn newest_snapshot(&self, source: &str) -> Result<Option<SnapshotInfo>> {
        each!(self, b => b.newest_snapshot(source).await)
    }
    async fn find_volume(&self, ex: &Execution) -> Result<Option<VolumeInfo>> {
        each!(self, b => b.find_volume(ex).await)
    }
    async fn create_volume(
        &self,
        snapshot: &SnapshotInfo,
        spec: &VolumeSpec,
        ex: &Execution,
    ) -> Result<VolumeInfo> {
        each!(self, b => b.create_volume(snapshot, spec, ex).await)
    }
    async fn volume(&self, id: &str) -> Result<VolumeInfo> {
        each!(self, b => b.volume(id).await)
    }
    fn check_source(&self, field: &str, source: &str) -> Result<()> {
        each!(self, b => b.check_source(field, source))
    }
    fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()> {
        each!(self, b => b.check_snapshot_id(field, id))
    }
    fn retention(&self) -> Option<&dyn Retention> {
        each!(self, b => b.retention())
    }
    fn region_copy(&self) -> Option<&dyn RegionCopy> {
        each!(self, b => b.region_copy())
    }
    fn selection(&self) -> Option<&dyn Selection> {
        each!(self, b => b.selection())
    }
    fn restore_outputs(&self) -> Option<&dyn RestoreOutputs> {
        each!(self, b => b.restore_outputs())
    }
    fn point_in_time(&self) -> Option<&dyn PointInTime> {
        each!(self, b => b.point_in_time())
    }
    fn named_targets(&self) -> Option<&dyn NamedTargets> {
        each!(self, b => b.named_targets())
    }
}

/// The production interlock's reads for deploy-staging-db ([`crate::interlock::VolumeMarks`]):
/// an EBS volume's tags with the function's role; an array volume's tags (and its protection
/// groups') with the API token `flasharray` names, logged in and out for the one read. Teardown
/// and the sweep delete staging volumes through the same access.
pub struct ImportMarks {
    sdk: aws_config::SdkConfig,
}

impl ImportMarks {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self { sdk: sdk.clone() }
    }
}

impl crate::interlock::VolumeMarks for ImportMarks {
    fn marks<'a>(
        &'a self,
        volume: crate::interlock::VolumeRef<'a>,
    ) -> crate::interlock::BoxFuture<'a, Result<Option<crate::interlock::Marks>>> {
        use crate::interlock::VolumeRef;
        Box::pin(async move {
            match volume {
                VolumeRef::Ebs(id) => {
                    Ebs::new(aws_sdk_ec2::Client::new(&self.sdk))
                        .marks(id)
                        .await
                }
                VolumeRef::FlashArray { volume, access } => {
                    let array = open_flasharray(&array_params(access), &self.sdk).await?;
                    let marks = array.marks(volume).await;
                    if let Err(e) = (*array).close().await {
                        tracing::warn!(error = %e, "FlashArray logout failed; the session expires on its own");
                    }
                    marks
                }
            }
        })
    }

    fn delete_staging<'a>(
        &'a self,
        volume: crate::interlock::VolumeRef<'a>,
        dry_run: bool,
    ) -> crate::interlock::BoxFuture<'a, Result<crate::interlock::Deletion>> {
        use crate::interlock::VolumeRef;
        Box::pin(async move {
            match volume {
                VolumeRef::Ebs(id) => {
                    Ebs::new(aws_sdk_ec2::Client::new(&self.sdk))
                        .delete_staging(id, dry_run)
                        .await
                }
                VolumeRef::FlashArray { volume, access } => {
                    let array = open_flasharray(&array_params(access), &self.sdk).await?;
                    let deleted = array.delete_staging(volume, dry_run).await;
                    if let Err(e) = (*array).close().await {
                        tracing::warn!(error = %e, "FlashArray logout failed; the session expires on its own");
                    }
                    deleted
                }
            }
        })
    }
}

/// The `flasharray` section of deploy-staging-db as the backend's parameters.
fn array_params(access: &crate::interlock::ArrayAccess) -> FlashArrayParams {
    FlashArrayParams {
        endpoint: access.endpoint.clone(),
        api_token_secret: access.api_token_secret.clone(),
        ca_bundle: access.ca_bundle.clone(),
        protection_group: None,
        replicated_from: None,
    }
}
