//! Rehydrating the on-prem Nexus: array mode's copy into the on-prem volume, with the Nexus
//! that uses that volume stopped around it and checked healthy after (`array.rehydrate`).
//!
//! In order, each stage resumable (a killed run re-run with the same execution continues):
//! 1. (array mode) the cloud protection group snapshot, replicated now and waited for;
//! 2. the workload's replicas are recorded on it (annotations [`REPLICAS_ANNOTATION`] and
//!    [`EXECUTION_ANNOTATION`]) in the same write that scales it to 0 (one merge patch with the
//!    read `resourceVersion` as precondition: the count recorded is the count replaced); the
//!    step answers "in progress", then waits until no pod of the workload exists;
//! 3. refusal: a pod (of any workload) still using the PersistentVolumeClaim bound to the
//!    volume, or a host connected to the volume on the array, stops the run before anything
//!    is written;
//! 4. the replicated snapshot is copied over the volume (once: a volume whose source is this
//!    run's snapshot is not copied again), verified;
//! 5. the recorded replicas are restored and the annotations removed, in one write;
//! 6. readiness (`readyReplicas` = replicas) and, with `healthUrl`, an HTTP 200 from it, within
//!    `timeoutMinutes`.
//!
//! Any failure between 2 and 5 scales the workload back to the recorded replicas before the
//! step fails, and the error says whether the volume was overwritten. A recorded count left by
//! another (killed) run is the one restored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::job::contract::{Outcome, Step};
use crate::kube::api::{get_opt, list, retrying};
use crate::kube::client::{ClusterConfig, connect, kube_error};
use crate::storage::flasharray::{FlashArray, snapshot_suffix};
use crate::storage::{Backend, SnapshotInfo};

/// The workload's replicas before the run scaled it to 0.
pub const REPLICAS_ANNOTATION: &str = "snapstage.io/rehydrate-replicas";
/// The run (its snapshot suffix) that scaled the workload to 0.
pub const EXECUTION_ANNOTATION: &str = "snapstage.io/rehydrate-execution";
/// Default of `timeoutMinutes`.
pub const DEFAULT_TIMEOUT_MINUTES: u64 = 20;
pub const MAX_TIMEOUT_MINUTES: u64 = 120;
/// How long a host connection may outlive the last pod (a CSI detach in progress) before the
/// run refuses.
const DETACH_GRACE: Duration = Duration::from_secs(12);
/// Polling interval of the in-step waits.
const POLL: Duration = Duration::from_secs(2);
/// The longest in-step wait before the step answers "in progress".
const MAX_IN_STEP_WAIT: Duration = Duration::from_secs(120);
/// Time kept back from the deadline for the answer.
const MARGIN: Duration = Duration::from_secs(20);

/// `array.rehydrate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RehydrateParams {
    /// The on-prem cluster running Nexus.
    pub cluster: ClusterConfig,
    pub namespace: String,
    /// `statefulset/<name>` or `deployment/<name>`.
    pub workload: String,
    /// Nexus's status URL (e.g. `http://nexus.nexus.svc:8081/service/rest/v1/status/writable`):
    /// healthy means HTTP 200.
    #[serde(default)]
    pub health_url: Option<String>,
    /// How long Nexus may take to stop, and to be ready again (default 20, 1–120).
    #[serde(default)]
    pub timeout_minutes: Option<Value>,
}

/// The workload's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    StatefulSet,
    Deployment,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Self::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            Self::Deployment => ApiResource::erase::<Deployment>(&()),
        }
    }
    fn word(self) -> &'static str {
        match self {
            Self::StatefulSet => "statefulset",
            Self::Deployment => "deployment",
        }
    }
}

/// Validated `array.rehydrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rehydrate {
    pub cluster: ClusterConfig,
    pub namespace: String,
    pub kind: Kind,
    pub name: String,
    pub health_url: Option<String>,
    pub timeout: Duration,
}

impl Rehydrate {
    fn workload(&self) -> String {
        format!(
            "{}/{} in namespace {}",
            self.kind.word(),
            self.name,
            self.namespace
        )
    }
}

const FIELD: &str = "array.rehydrate";

fn dns_name(field: &str, v: &str) -> Result<String> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(v.to_string())
    } else {
        Err(Error::parameter(
            field,
            format!("expected a Kubernetes name (lower case letters, digits, '-'), got {v:?}"),
        ))
    }
}

impl RehydrateParams {
    pub fn validate(&self) -> Result<Rehydrate> {
        let namespace = dns_name(&format!("{FIELD}.namespace"), self.namespace.trim())?;
        let field = format!("{FIELD}.workload");
        let (kind, name) = self.workload.trim().split_once('/').ok_or_else(|| {
            Error::parameter(
                &field,
                format!(
                    "expected \"statefulset/<name>\" or \"deployment/<name>\", got {:?}",
                    self.workload
                ),
            )
        })?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "statefulset" | "statefulsets" | "sts" => Kind::StatefulSet,
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            other => {
                return Err(Error::parameter(
                    &field,
                    format!("expected statefulset/<name> or deployment/<name>, not a {other:?}"),
                ));
            }
        };
        let name = dns_name(&field, name)?;
        let health_url = match self.health_url.as_deref().map(str::trim) {
            None => None,
            Some(u) => {
                let parsed = reqwest::Url::parse(u).map_err(|e| {
                    Error::parameter(
                        format!("{FIELD}.healthUrl"),
                        format!("expected an http(s) URL such as \"http://nexus.nexus.svc:8081/service/rest/v1/status/writable\", got {u:?} ({e})"),
                    )
                })?;
                if !matches!(parsed.scheme(), "http" | "https")
                    || parsed.host_str().is_none_or(str::is_empty)
                    || !parsed.username().is_empty()
                    || parsed.password().is_some()
                {
                    return Err(Error::parameter(
                        format!("{FIELD}.healthUrl"),
                        format!(
                            "expected an http(s) URL with a host and no credentials, got {u:?}"
                        ),
                    ));
                }
                Some(u.to_string())
            }
        };
        let minutes = match &self.timeout_minutes {
            None => DEFAULT_TIMEOUT_MINUTES,
            Some(v) => v
                .as_u64()
                .filter(|m| (1..=MAX_TIMEOUT_MINUTES).contains(m))
                .ok_or_else(|| {
                    Error::parameter(
                        format!("{FIELD}.timeoutMinutes"),
                        format!("expected a whole number of minutes from 1 to {MAX_TIMEOUT_MINUTES}, got {v}"),
                    )
                })?,
        };
        if let ClusterConfig::Eks(c) = &self.cluster
            && c.name.trim().is_empty()
        {
            return Err(Error::parameter(
                format!("{FIELD}.cluster.eks.name"),
                "expected the EKS cluster's name",
            ));
        }
        Ok(Rehydrate {
            cluster: self.cluster.clone(),
            namespace,
            kind,
            name,
            health_url,
            timeout: Duration::from_secs(minutes * 60),
        })
    }
}

/// The continuation state of a rehydration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    stage: String,
    /// Seconds since the epoch when the current wait began.
    #[serde(default)]
    since: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// What the workload looks like now.
#[derive(Debug, Clone)]
struct Seen {
    replicas: i32,
    ready: i32,
    generation: i64,
    observed: i64,
    resource_version: Option<String>,
    /// `(replicas, execution)` recorded by a run that scaled it to 0.
    recorded: Option<(i32, String)>,
    selector: String,
}

/// The workload, through the dynamic API (both kinds have the same fields we use).
struct Workload<'a> {
    api: Api<DynamicObject>,
    r: &'a Rehydrate,
}

impl<'a> Workload<'a> {
    fn new(client: kube::Client, r: &'a Rehydrate) -> Self {
        Self {
            api: Api::namespaced_with(client, &r.namespace, &r.kind.resource()),
            r,
        }
    }

    async fn get(&self) -> Result<Seen> {
        let what = format!("reading {}", self.r.workload());
        let obj = retrying(|| self.api.get_opt(&self.r.name))
            .await
            .map_err(|e| kube_error(&what, e))?
            .ok_or_else(|| {
                Error::Configuration(format!(
                    "{FIELD}.workload: {} does not exist (kubectl -n {} get {})",
                    self.r.workload(),
                    self.r.namespace,
                    self.r.kind.word()
                ))
            })?;
        let int = |v: &Value| v.as_i64().unwrap_or(0);
        let annotations = obj.metadata.annotations.clone().unwrap_or_default();
        let recorded = match annotations.get(REPLICAS_ANNOTATION) {
            None => None,
            Some(v) => Some((
                v.trim().parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    Error::Configuration(format!(
                        "{} carries {REPLICAS_ANNOTATION}={v:?}, not a replica count: set it to the replicas Nexus should run with (or remove it and scale the workload yourself)",
                        self.r.workload()
                    ))
                })?,
                annotations
                    .get(EXECUTION_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
            )),
        };
        Ok(Seen {
            replicas: int(&obj.data["spec"]["replicas"]) as i32,
            ready: int(&obj.data["status"]["readyReplicas"]) as i32,
            generation: obj.metadata.generation.unwrap_or(0),
            observed: int(&obj.data["status"]["observedGeneration"]),
            resource_version: obj.metadata.resource_version.clone(),
            recorded,
            selector: selector(&obj.data["spec"]["selector"]).ok_or_else(|| {
                Error::Configuration(format!(
                    "{} has no spec.selector this step understands",
                    self.r.workload()
                ))
            })?,
        })
    }

    async fn patch(&self, body: &Value) -> std::result::Result<(), kube::Error> {
        let params = PatchParams::default();
        let patch = Patch::Merge(body);
        retrying(|| self.api.patch(&self.r.name, &params, &patch))
            .await
            .map(|_| ())
    }

    /// Records the replicas (unless a run recorded them already) and scales to 0, in one write
    /// conditional on the version read. Returns the recorded count.
    async fn scale_down(&self, tag: &str) -> Result<i32> {
        for _ in 0..5 {
            let seen = self.get().await?;
            let recorded = match &seen.recorded {
                Some((n, by)) => {
                    if by != tag {
                        tracing::warn!(workload = %self.r.workload(), recorded = n, by = %by, "another run scaled this workload to 0 and did not finish: its recorded replicas are the ones restored");
                    }
                    *n
                }
                None => seen.replicas,
            };
            if seen.replicas == 0 && seen.recorded.as_ref().is_some_and(|(_, by)| by == tag) {
                return Ok(recorded);
            }
            let body = json!({
                "metadata": {
                    "resourceVersion": seen.resource_version,
                    "annotations": {REPLICAS_ANNOTATION: recorded.to_string(), EXECUTION_ANNOTATION: tag},
                },
                "spec": {"replicas": 0},
            });
            match self.patch(&body).await {
                Ok(()) => {
                    tracing::info!(workload = %self.r.workload(), recorded, "recorded the replicas and scaled to 0");
                    return Ok(recorded);
                }
                // Changed since it was read: read again.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => {
                    return Err(kube_error(
                        &format!("scaling {} to 0", self.r.workload()),
                        e,
                    ));
                }
            }
        }
        Err(Error::Backend {
            backend: crate::kube::client::BACKEND,
            message: format!(
                "{} kept changing while snapstage tried to record its replicas and scale it to 0; nothing was scaled",
                self.r.workload()
            ),
            source: None,
        })
    }

    /// Restores `replicas` and removes the record, in one write.
    async fn restore(&self, replicas: i32) -> Result<()> {
        let body = json!({
            "metadata": {"annotations": {REPLICAS_ANNOTATION: null, EXECUTION_ANNOTATION: null}},
            "spec": {"replicas": replicas},
        });
        self.patch(&body).await.map_err(|e| {
            kube_error(
                &format!(
                    "scaling {} back to {replicas} replicas (do it by hand: kubectl -n {} scale {}/{} --replicas={replicas})",
                    self.r.workload(),
                    self.r.namespace,
                    self.r.kind.word(),
                    self.r.name
                ),
                e,
            )
        })?;
        tracing::info!(workload = %self.r.workload(), replicas, "scaled back");
        Ok(())
    }
}

/// A label selector string from a `LabelSelector` object.
fn selector(sel: &Value) -> Option<String> {
    let mut terms = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            terms.push(format!("{k}={}", v.as_str()?));
        }
    }
    if let Some(exprs) = sel["matchExpressions"].as_array() {
        for e in exprs {
            let key = e["key"].as_str()?;
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            terms.push(match e["operator"].as_str()? {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                "DoesNotExist" => format!("!{key}"),
                _ => return None,
            });
        }
    }
    (!terms.is_empty()).then(|| terms.join(","))
}

fn running(p: &Pod) -> bool {
    !matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_name(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// `Connection` of `GET /connections` (the fields we read).
#[derive(Debug, Clone, Default, Deserialize)]
struct Connection {
    #[serde(default)]
    host: Option<NameRef>,
    #[serde(default)]
    host_group: Option<NameRef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct NameRef {
    #[serde(default)]
    name: Option<String>,
}

/// The hosts (and host groups) connected to `volume` on the array.
async fn host_connections(array: &FlashArray, volume: &str) -> Result<Vec<String>> {
    let conns: Vec<Connection> = array
        .session()
        .await?
        .get_all("/connections", &vec![("volume_names", volume.to_string())])
        .await?;
    Ok(conns
        .iter()
        .filter_map(|c| {
            match (
                c.host.as_ref().and_then(|h| h.name.clone()),
                c.host_group.as_ref().and_then(|h| h.name.clone()),
            ) {
                (Some(h), _) => Some(format!("host {h}")),
                (None, Some(g)) => Some(format!("host group {g}")),
                (None, None) => None,
            }
        })
        .collect())
}

/// True when PV `pv` is the array volume `volume` (a CSI volume handle naming it: Pure CSI
/// uses the volume name, PX-CSI `<realm>::<pod>::<volume>`).
fn pv_is_volume(pv: &PersistentVolume, volume: &str) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .is_some_and(|c| {
            c.volume_handle == volume
                || c.volume_handle
                    .rsplit_once("::")
                    .is_some_and(|(_, v)| v == volume)
        })
}

/// Who still uses `volume`: pods mounting the claim bound to it, hosts connected to it.
async fn writers(client: &kube::Client, array: &FlashArray, volume: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let pvs: Vec<PersistentVolume> = list(
        &Api::<PersistentVolume>::all(client.clone()),
        &ListParams::default(),
    )
    .await?;
    let mut claims = Vec::new();
    for pv in pvs.iter().filter(|pv| pv_is_volume(pv, volume)) {
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let Some(claim) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
            continue;
        };
        let (Some(ns), Some(name)) = (claim.namespace.clone(), claim.name.clone()) else {
            continue;
        };
        let pvc: Option<PersistentVolumeClaim> = get_opt(
            &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns),
            &name,
        )
        .await?;
        let bound = pvc
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.volume_name.as_deref())
            == Some(pv_name.as_str());
        if bound {
            claims.push((ns, name, pv_name));
        }
    }
    if claims.is_empty() {
        tracing::info!(
            volume,
            "no PersistentVolumeClaim of the cluster is bound to this volume"
        );
    }
    for (ns, claim, pv) in &claims {
        let pods: Vec<Pod> = list(
            &Api::<Pod>::namespaced(client.clone(), ns),
            &ListParams::default(),
        )
        .await?;
        for p in pods.iter().filter(|p| running(p)) {
            let mounts = p
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| &c.claim_name == claim)
                    })
                });
            if mounts {
                out.push(format!(
                    "pod {} mounts PersistentVolumeClaim {ns}/{claim} (PersistentVolume {pv})",
                    pod_name(p)
                ));
            }
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    // No pod: a host connection that stays past a CSI detach is a writer outside Kubernetes.
    let started = tokio::time::Instant::now();
    loop {
        let hosts = host_connections(array, volume).await?;
        if hosts.is_empty() {
            return Ok(out);
        }
        if started.elapsed() >= DETACH_GRACE {
            out.extend(
                hosts
                    .into_iter()
                    .map(|h| format!("{h} is connected to volume {volume} on the on-prem array")),
            );
            return Ok(out);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long an in-step wait may last.
fn wait_budget(step: &Step<impl Sized>) -> Duration {
    step.deadline
        .remaining()
        .saturating_sub(MARGIN)
        .min(MAX_IN_STEP_WAIT)
}

/// Polls `probe` until it says done, or the in-step budget is spent (false).
async fn wait_until<F, Fut>(budget: Duration, mut probe: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let end = tokio::time::Instant::now() + budget;
    loop {
        if probe().await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() + POLL > end {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn health_client() -> Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(Vec::new(), provider.clone())
            .map_err(|e| Error::Configuration(format!("TLS trust roots: {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Configuration(format!("TLS: {e}")))?
        .dangerous() // a custom verifier, not less verification: the platform verifier
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("snapstage/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Configuration(format!("health check HTTP client: {e}")))
}

/// One look at the health URL: `Ok(None)` on 200, else what it answered.
async fn health(http: &reqwest::Client, url: &str) -> Option<String> {
    match http.get(url).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::OK => None,
        Ok(r) => Some(format!("HTTP {}", r.status())),
        Err(e) => Some(format!("no answer ({e})")),
    }
}

fn refused_or_failed(
    e: Error,
    r: &Rehydrate,
    replicas: i32,
    overwritten: bool,
    restored: Result<()>,
) -> Error {
    let volume = if overwritten {
        "the volume WAS overwritten with the replica"
    } else {
        "the volume was NOT overwritten"
    };
    let nexus = match &restored {
        Ok(()) => format!("{} scaled back to {replicas} replicas", r.workload()),
        Err(err) => format!(
            "scaling {} back to {replicas} replicas FAILED ({err}): scale it by hand",
            r.workload()
        ),
    };
    e.noted(&format!("{volume}; {nexus}"))
}

/// Whether `volume` holds `replica` now (its source is that snapshot).
async fn holds(array: &FlashArray, volume: &str, replica: &str) -> Result<bool> {
    Ok(array.volume(volume).await?.snapshot.as_deref() == Some(replica))
}

fn set(slot: &std::sync::Mutex<String>, value: String) {
    if let Ok(mut l) = slot.lock() {
        *l = value;
    }
}

/// What a dry run says about the workload.
pub async fn dry_run(r: &Rehydrate, sdk: &aws_config::SdkConfig) -> Result<String> {
    let client = connect(&r.cluster, sdk).await?;
    let seen = Workload::new(client, r).get().await?;
    Ok(format!(
        "then scale {} (now {} replicas) to 0, check nothing else uses the volume, overwrite it, scale back and wait until it is ready{}",
        r.workload(),
        seen.recorded.as_ref().map_or(seen.replicas, |(n, _)| *n),
        if r.health_url.is_some() {
            " and healthy"
        } else {
            ""
        }
    ))
}

/// Stages 2–6, once the replica `replica` of this run is on the on-prem array.
pub async fn run(
    r: &Rehydrate,
    target: &FlashArray,
    volume: &str,
    replica: &SnapshotInfo,
    sdk: &aws_config::SdkConfig,
    step: &Step<impl Sized>,
    mut outputs: BTreeMap<String, String>,
) -> Result<Outcome> {
    let client = connect(&r.cluster, sdk).await?;
    let w = Workload::new(client.clone(), r);
    let tag = snapshot_suffix(&step.execution);
    let state: State = step
        .state
        .clone()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let seen = w.get().await?;
    outputs.insert("RehydratedVolume".into(), volume.to_string());
    outputs.insert("Snapshot".into(), replica.id.clone());

    let replicas = match &seen.recorded {
        // Stage 6 of a run that restored the workload already: never overwrite again.
        None if holds(target, volume, &replica.id).await? => seen.replicas,
        None => {
            let n = w.scale_down(&tag).await?;
            return Ok(Outcome::Continue {
                summary: format!(
                    "recorded {n} replicas on {} and scaled it to 0; waiting for its pods to stop before {volume} is overwritten with {}",
                    r.workload(),
                    replica.id
                ),
                percent: 40,
                state: json!({"stage": "stopping", "since": now_secs()}),
            });
        }
        Some(_) => {
            let n = w.scale_down(&tag).await?;
            let since = if state.stage == "stopping" && state.since > 0 {
                state.since
            } else {
                now_secs()
            };
            let mut overwritten = false;
            let guarded = async {
                let pods_api = Api::<Pod>::namespaced(client.clone(), &r.namespace);
                let params = ListParams::default().labels(&seen.selector);
                let gone = wait_until(wait_budget(step), || async {
                    let pods: Vec<Pod> = list(&pods_api, &params).await?;
                    Ok(pods.is_empty())
                })
                .await?;
                if !gone {
                    if now_secs().saturating_sub(since) > r.timeout.as_secs() {
                        let pods: Vec<Pod> = list(&pods_api, &params).await?;
                        let names: Vec<String> = pods.iter().map(pod_name).collect();
                        return Err(Error::Backend {
                            backend: crate::kube::client::BACKEND,
                            message: format!(
                                "the pods of {} did not stop within {} minutes ({})",
                                r.workload(),
                                r.timeout.as_secs() / 60,
                                names.join(", ")
                            ),
                            source: None,
                        });
                    }
                    return Ok(false);
                }
                let who = writers(&client, target, volume).await?;
                if !who.is_empty() {
                    return Err(Error::Refused(format!(
                        "{volume} is still in use, so it is not overwritten while Nexus is stopped: {}",
                        who.join("; ")
                    )));
                }
                if holds(target, volume, &replica.id).await? {
                    tracing::info!(volume, replica = %replica.id, "the volume holds this run's replica already: not copied again");
                } else {
                    let res = target.copy_snapshot(replica, volume).await;
                    overwritten = holds(target, volume, &replica.id).await.unwrap_or(false);
                    res?;
                    if !overwritten {
                        return Err(Error::Backend {
                            backend: "flasharray",
                            message: format!(
                                "{volume} does not show {} as its source after the copy",
                                replica.id
                            ),
                            source: None,
                        });
                    }
                }
                Ok(true)
            };
            match guarded.await {
                Ok(true) => {}
                Ok(false) => {
                    return Ok(Outcome::Continue {
                        summary: format!(
                            "{} is scaled to 0 (recorded {n} replicas); waiting for its pods to stop",
                            r.workload()
                        ),
                        percent: 50,
                        state: json!({"stage": "stopping", "since": since}),
                    });
                }
                Err(e) => {
                    let was =
                        overwritten || holds(target, volume, &replica.id).await.unwrap_or(false);
                    let restored = w.restore(n).await;
                    return Err(refused_or_failed(e, r, n, was, restored));
                }
            }
            w.restore(n).await?;
            n
        }
    };

    // Stage 6: ready, and healthy.
    outputs.insert("Replicas".into(), replicas.to_string());
    if replicas == 0 {
        outputs.insert("Healthy".into(), "false".into());
        return Ok(Outcome::Done {
            summary: format!(
                "{volume} overwritten with {} (verified); {} had 0 replicas and stays at 0: nothing to check",
                replica.id,
                r.workload()
            ),
            outputs,
        });
    }
    let since = if state.stage == "starting" && state.since > 0 {
        state.since
    } else {
        now_secs()
    };
    let http = health_client()?;
    let last = std::sync::Mutex::new(String::new());
    let healthy = wait_until(wait_budget(step), || async {
        let seen = w.get().await?;
        if seen.observed < seen.generation || seen.ready < replicas || seen.replicas != replicas {
            set(
                &last,
                format!(
                    "{} of {replicas} replicas ready",
                    seen.ready.min(seen.replicas)
                ),
            );
            return Ok(false);
        }
        if let Some(url) = &r.health_url
            && let Some(said) = health(&http, url).await
        {
            set(&last, format!("{url}: {said}"));
            return Ok(false);
        }
        Ok(true)
    })
    .await?;
    let last = last.into_inner().unwrap_or_else(|e| e.into_inner());
    if !healthy {
        if now_secs().saturating_sub(since) > r.timeout.as_secs() {
            return Err(Error::Backend {
                backend: crate::kube::client::BACKEND,
                message: format!(
                    "{volume} was overwritten with {} and {} scaled back to {replicas} replicas, but it is not healthy within {} minutes: {last}",
                    replica.id,
                    r.workload(),
                    r.timeout.as_secs() / 60
                ),
                source: None,
            });
        }
        return Ok(Outcome::Continue {
            summary: format!(
                "{volume} overwritten with {}; {} scaled back to {replicas}; waiting until it is healthy ({last})",
                replica.id,
                r.workload()
            ),
            percent: 90,
            state: json!({"stage": "starting", "since": since}),
        });
    }
    outputs.insert("Healthy".into(), "true".into());
    Ok(Outcome::Done {
        summary: format!(
            "{volume} overwritten with {} (verified) while {} was stopped; scaled back to {replicas} replicas, ready{}",
            replica.id,
            r.workload(),
            if r.health_url.is_some() {
                " and healthy"
            } else {
                ""
            }
        ),
        outputs,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn params(v: Value) -> Result<Rehydrate> {
        serde_json::from_value::<RehydrateParams>(v)
            .map_err(|e| Error::parameter(FIELD, e.to_string()))?
            .validate()
    }

    #[test]
    fn parameters_are_checked_naming_the_field() {
        let r = params(json!({"cluster": {"kubeconfigFile": "/k"}, "namespace": "nexus",
            "workload": "statefulset/nexus", "healthUrl": "http://nexus.nexus.svc:8081/service/rest/v1/status/writable"}))
        .unwrap();
        assert_eq!((r.kind, r.name.as_str()), (Kind::StatefulSet, "nexus"));
        assert_eq!(r.timeout, Duration::from_secs(20 * 60));
        let r = params(json!({"cluster": "inCluster", "namespace": "ci",
            "workload": "deployment/nexus3", "timeoutMinutes": 5}))
        .unwrap();
        assert_eq!(r.kind, Kind::Deployment);
        assert_eq!(r.timeout, Duration::from_secs(300));
        for (bad, field) in [
            (json!({"workload": "nexus"}), "array.rehydrate.workload"),
            (
                json!({"workload": "daemonset/nexus"}),
                "array.rehydrate.workload",
            ),
            (
                json!({"workload": "statefulset/Nexus"}),
                "array.rehydrate.workload",
            ),
            (json!({"namespace": "Nexus"}), "array.rehydrate.namespace"),
            (
                json!({"healthUrl": "nexus:8081"}),
                "array.rehydrate.healthUrl",
            ),
            (
                json!({"healthUrl": "ftp://nexus/x"}),
                "array.rehydrate.healthUrl",
            ),
            (
                json!({"healthUrl": "http://u:p@nexus/x"}),
                "array.rehydrate.healthUrl",
            ),
            (
                json!({"timeoutMinutes": 0}),
                "array.rehydrate.timeoutMinutes",
            ),
            (
                json!({"timeoutMinutes": "20"}),
                "array.rehydrate.timeoutMinutes",
            ),
        ] {
            let mut v = json!({"cluster": "inCluster", "namespace": "nexus", "workload": "statefulset/nexus"});
            for (k, x) in bad.as_object().unwrap() {
                v[k] = x.clone();
            }
            match params(v) {
                Err(Error::Parameter { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn selectors_become_label_selector_strings() {
        assert_eq!(
            selector(&json!({"matchLabels": {"app": "nexus"}})).as_deref(),
            Some("app=nexus")
        );
        assert_eq!(
            selector(
                &json!({"matchLabels": {"app": "nexus"}, "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"}]})
            )
            .as_deref(),
            Some("app=nexus,tier in (a,b),!canary")
        );
        assert_eq!(selector(&json!({})), None);
    }

    #[test]
    fn a_csi_volume_handle_names_the_array_volume() {
        let pv = |handle: &str| -> PersistentVolume {
            serde_json::from_value(json!({"metadata": {"name": "pv"}, "spec": {"csi": {"driver": "pure-csi", "volumeHandle": handle}}})).unwrap()
        };
        assert!(pv_is_volume(&pv("nexus-onprem"), "nexus-onprem"));
        assert!(pv_is_volume(
            &pv("realm::pod::nexus-onprem"),
            "nexus-onprem"
        ));
        assert!(!pv_is_volume(&pv("nexus-onprem-2"), "nexus-onprem"));
    }
}
