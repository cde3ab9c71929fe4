//! App-consistent snapshots: commands run in the database's pod around snapshot creation
//! (`hooks` parameter of snapshot-production, any backend).
//!
//! ```json
//! "hooks": {"pod": "orders-db-0", "container": "postgres",
//!           "pre": ["fsfreeze", "-f", "/data"], "post": ["fsfreeze", "-u", "/data"],
//!           "timeoutSeconds": 30}
//! ```
//!
//! - `pre` runs in each pod (`pod`, or every running pod `podSelector` picks, in name order) by
//!   exec through the API server (`pods/exec`, the Kubernetes exec websocket protocol); its exit
//!   status comes from the status channel. Then the snapshots are created; then `post` runs.
//! - `post` ALWAYS runs in every pod where `pre` was started once `pre` ran — also when creating a
//!   snapshot fails and when `pre` fails partway (then no snapshot is taken). A failing `post` fails
//!   the step and says the application may still be paused.
//! - Hooks run only around snapshot *creation* (the first invocation of a run): a block snapshot
//!   is point-in-time when it is cut, so the later "still pending" invocations run nothing.
//! - Or `session` instead of `pre`/`post`: one exec per pod held open from a confirmed freeze
//!   until the snapshots are cut, for a lock that lives only as long as its session (MySQL's
//!   `FLUSH TABLES WITH READ LOCK`); always released, bounded by `timeoutSeconds` (see [`session`]).
//! - Every command is bounded by `timeoutSeconds` (default 30, at most 300).
//! - The cluster and namespace come from `hooks.cluster` / `hooks.namespace`, else from the `csi`
//!   section.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, ListParams};
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use super::csi::CsiParams;
use crate::error::{Error, Result};
use crate::kube::api;
use crate::kube::client::{ClusterConfig, kube_error};
use crate::kube::names::is_dns1123_subdomain;

const B: &str = "hooks";
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 30;
pub const MAX_TIMEOUT_SECONDS: u32 = 300;
/// Pods a selector may pick.
pub const MAX_PODS: usize = 16;
/// Bytes of a command's output kept for the error message.
const TAIL: usize = 1024;

/// The `hooks` parameter section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HookParams {
    /// The pod to run the commands in.
    #[serde(default)]
    pub pod: Option<String>,
    /// Or a label selector: every running pod it picks.
    #[serde(default)]
    pub pod_selector: Option<String>,
    /// Default: `csi.namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Default: the pod's only container (or its `kubectl.kubernetes.io/default-container`).
    #[serde(default)]
    pub container: Option<String>,
    /// Runs before the snapshots are created, e.g. `["fsfreeze", "-f", "/data"]`.
    #[serde(default)]
    pub pre: Vec<String>,
    /// Runs after, always once `pre` ran, e.g. `["fsfreeze", "-u", "/data"]`.
    #[serde(default)]
    pub post: Vec<String>,
    /// Or one session held open from the freeze until the snapshots are cut (instead of `pre`
    /// and `post`): see [`SessionHook`].
    #[serde(default)]
    pub session: Option<SessionHook>,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// Default: `csi.cluster`.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

impl HookParams {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
        ))
    }

    /// Checks the section; `csi` supplies the defaults for the cluster and namespace.
    pub fn validate(&self, csi: Option<&CsiParams>) -> Result<()> {
        match (&self.pod, &self.pod_selector) {
            (Some(_), Some(_)) => {
                return Err(Error::parameter(
                    "hooks.podSelector",
                    "give either hooks.pod or hooks.podSelector, not both",
                ));
            }
            (None, None) => {
                return Err(Error::parameter(
                    "hooks.pod",
                    "missing: the pod to run the hooks in (or hooks.podSelector, e.g. \"app=orders-db\")",
                ));
            }
            (Some(p), None) if !is_dns1123_subdomain(p) => {
                return Err(Error::parameter(
                    "hooks.pod",
                    format!("expected a pod name, got {p:?}"),
                ));
            }
            (None, Some(s)) if s.trim().is_empty() || s.len() > 1024 => {
                return Err(Error::parameter(
                    "hooks.podSelector",
                    format!("expected a label selector like \"app=orders-db\", got {s:?}"),
                ));
            }
            _ => {}
        }
        if let Some(session) = &self.session {
            if !self.pre.is_empty() || !self.post.is_empty() {
                return Err(Error::parameter(
                    "hooks.session",
                    "give either hooks.session (one session held open until the snapshots are cut, e.g. a MySQL client holding FLUSH TABLES WITH READ LOCK) or hooks.pre and hooks.post (commands run one by one), not both",
                ));
            }
            session.validate()?;
        } else if self.pre.is_empty() && self.post.is_empty() {
            return Err(Error::parameter(
                "hooks.pre",
                "missing: a command as a list, e.g. [\"fsfreeze\", \"-f\", \"/data\"] (or hooks.session, for a lock that must stay held in one session)",
            ));
        }
        if !self.pre.is_empty() && self.post.is_empty() {
            return Err(Error::parameter(
                "hooks.post",
                "missing: a pre hook (e.g. fsfreeze -f, fsyncLock) needs a post hook that undoes it, e.g. [\"fsfreeze\", \"-u\", \"/data\"]",
            ));
        }
        for (field, cmd) in [("hooks.pre", &self.pre), ("hooks.post", &self.post)] {
            if cmd.first().is_some_and(|c| c.trim().is_empty()) {
                return Err(Error::parameter(
                    field,
                    "the first element is the program to run; it is empty",
                ));
            }
        }
        if let Some(t) = self.timeout_seconds
            && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
        {
            return Err(Error::parameter(
                "hooks.timeoutSeconds",
                format!("expected 1 to {MAX_TIMEOUT_SECONDS} seconds, got {t}"),
            ));
        }
        if let Some(c) = &self.container
            && !crate::kube::names::is_dns1123_label(c)
        {
            return Err(Error::parameter(
                "hooks.container",
                format!("expected a container name, got {c:?}"),
            ));
        }
        match (&self.namespace, csi) {
            (Some(ns), _) if !crate::kube::names::is_dns1123_label(ns) => {
                return Err(Error::parameter(
                    "hooks.namespace",
                    format!("expected a namespace name, got {ns:?}"),
                ));
            }
            (None, None) => {
                return Err(Error::parameter(
                    "hooks.namespace",
                    "missing: the namespace of the pod (or use backend \"csi\", whose csi.namespace is the default)",
                ));
            }
            _ => {}
        }
        if self.cluster.is_none() && csi.is_none() {
            return Err(Error::parameter(
                "hooks.cluster",
                "missing: the cluster that runs the pod, e.g. {\"eks\": {\"name\": \"prod\"}} (or use backend \"csi\", whose csi.cluster is the default)",
            ));
        }
        Ok(())
    }

    /// What the hooks would do, for a dry run.
    pub fn describe(&self, csi: Option<&CsiParams>) -> String {
        let ns = self
            .namespace
            .as_deref()
            .or(csi.map(|c| c.namespace.as_str()))
            .unwrap_or_default();
        let pods = match (&self.pod, &self.pod_selector) {
            (Some(p), _) => format!("pod {ns}/{p}"),
            (_, Some(s)) => format!("the running pods {s:?} selects in {ns}"),
            _ => String::new(),
        };
        match &self.session {
            Some(s) => format!(
                "would hold a session {} in {pods}: freeze {:?} until the snapshots are cut, then thaw {:?} (at most {} s)",
                shown(&s.command),
                s.freeze,
                s.thaw,
                self.timeout().as_secs()
            ),
            None => format!(
                "would run pre {} and post {} in {pods}",
                shown(&self.pre),
                shown(&self.post)
            ),
        }
    }
}

fn shown(cmd: &[String]) -> String {
    format!("{cmd:?}")
}

/// Runs the hooks of one snapshot: a client for the pod's cluster and the checked parameters.
pub struct Hooks {
    client: kube::Client,
    namespace: String,
    params: HookParams,
}

impl Hooks {
    /// `params` must have passed [`HookParams::validate`].
    pub fn new(client: kube::Client, namespace: String, params: HookParams) -> Self {
        Self {
            client,
            namespace,
            params,
        }
    }

    /// Connects to the hooks' cluster (`hooks.cluster`, else `csi.cluster`).
    pub async fn open(
        params: &HookParams,
        csi: Option<&CsiParams>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self> {
        params.validate(csi)?;
        let cluster = params
            .cluster
            .as_ref()
            .or(csi.map(|c| &c.cluster))
            .ok_or_else(|| Error::parameter("hooks.cluster", "missing"))?;
        let namespace = params
            .namespace
            .clone()
            .or(csi.map(|c| c.namespace.clone()))
            .ok_or_else(|| Error::parameter("hooks.namespace", "missing"))?;
        let client = crate::kube::client::connect(cluster, sdk).await?;
        Ok(Self::new(client, namespace, params.clone()))
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The pods the hooks run in, in name order.
    pub async fn pods(&self) -> Result<Vec<String>> {
        if let Some(p) = &self.params.pod {
            return Ok(vec![p.clone()]);
        }
        let selector = self.params.pod_selector.clone().unwrap_or_default();
        let pods = api::list(&self.pods_api(), &ListParams::default().labels(&selector)).await?;
        let mut names: Vec<String> = pods
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(Error::parameter(
                "hooks.podSelector",
                format!(
                    "{selector:?} selects no running pod in namespace {}",
                    self.namespace
                ),
            ));
        }
        if names.len() > MAX_PODS {
            return Err(Error::parameter(
                "hooks.podSelector",
                format!(
                    "{selector:?} selects {} pods; at most {MAX_PODS}",
                    names.len()
                ),
            ));
        }
        Ok(names)
    }

    /// Runs `pre` in every pod, then `work` (only if every `pre` succeeded), then `post` in every
    /// pod where `pre` was started — whatever `pre` and `work` did. With `session`, holds a
    /// session in every pod from its confirmed freeze until `work` is done, then releases them
    /// (see [`session`]).
    pub async fn around<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        if let Some(spec) = &self.params.session {
            return self.around_session(spec, work).await;
        }
        let pods = self.pods().await?;
        let mut started: Vec<&str> = Vec::new();
        let mut pre_failed = None;
        if self.params.pre.is_empty() {
            started = pods.iter().map(String::as_str).collect();
        } else {
            for pod in &pods {
                started.push(pod);
                if let Err(e) = self.exec(pod, &self.params.pre, "pre").await {
                    pre_failed = Some(e);
                    break;
                }
            }
        }
        let result = match pre_failed {
            Some(e) => Err(e.noted("no snapshot was taken")),
            None => work.await,
        };
        let mut post_failures = Vec::new();
        if !self.params.post.is_empty() {
            for pod in started {
                if let Err(e) = self.exec(pod, &self.params.post, "post").await {
                    tracing::error!(pod, error = %e, "post hook failed");
                    post_failures.push(e.to_string());
                }
            }
        }
        if post_failures.is_empty() {
            return result.map_err(|e| {
                if self.params.post.is_empty() {
                    e
                } else {
                    e.noted("the post hook ran")
                }
            });
        }
        let post = format!(
            "the post hook failed ({}): the application may still be paused (e.g. a frozen filesystem or a held lock) — check it now",
            post_failures.join("; ")
        );
        match result {
            Ok(_) => Err(Error::Backend {
                backend: B,
                message: format!("snapshot(s) created, but {post}"),
                source: None,
            }),
            Err(e) => Err(e.noted(&post)),
        }
    }

    /// Runs `cmd` in `pod` and waits (bounded) for its exit status.
    async fn exec(&self, pod: &str, cmd: &[String], phase: &str) -> Result<()> {
        let what = format!(
            "{phase} hook {} in pod {}/{pod}",
            shown(cmd),
            self.namespace
        );
        let mut ap = AttachParams::default().stdout(true).stderr(true);
        if let Some(c) = &self.params.container {
            ap = ap.container(c.clone());
        }
        let api = self.pods_api();
        let run = async {
            let mut proc = api
                .exec(pod, cmd.to_vec(), &ap)
                .await
                .map_err(|e| kube_error(&format!("starting the {what}"), e))?;
            let status = proc.take_status();
            let (out, err) = (proc.stdout(), proc.stderr());
            let (status, out, err) = tokio::join!(
                async {
                    match status {
                        Some(s) => s.await,
                        None => None,
                    }
                },
                tail(out),
                tail(err)
            );
            let joined = proc.join().await;
            Ok::<_, Error>((status, out, err, joined))
        };
        let (status, out, err, joined) = tokio::time::timeout(self.params.timeout(), run)
            .await
            .map_err(|_| Error::Backend {
            backend: B,
            message: format!(
                "{what} did not finish within {} s (hooks.timeoutSeconds)",
                self.params.timeout().as_secs()
            ),
            source: None,
        })??;
        if !out.is_empty() {
            tracing::debug!(pod, phase, stdout = %out, "hook output");
        }
        match status {
            Some(s) if s.status.as_deref() == Some("Success") => {
                tracing::info!(pod, phase, "hook succeeded");
                Ok(())
            }
            Some(s) => Err(Error::Backend {
                backend: B,
                message: format!(
                    "{what} failed: {}{}",
                    exit_reason(&s),
                    if err.is_empty() {
                        String::new()
                    } else {
                        format!("; stderr: {}", err.trim())
                    }
                ),
                source: None,
            }),
            None => Err(Error::Backend {
                backend: B,
                message: format!(
                    "{what}: the connection ended without an exit status{}",
                    match joined {
                        Err(e) => format!(" ({e})"),
                        Ok(()) => String::new(),
                    }
                ),
                source: None,
            }),
        }
    }
}

/// `exit code 1` from a `NonZeroExitCode` status, else the status's message.
fn exit_reason(s: &Status) -> String {
    let code = s
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.clone());
    match code {
        Some(c) => format!("exit code {c}"),
        None => s
            .message
            .clone()
            .unwrap_or_else(|| "the command failed".into()),
    }
}

/// The last [`TAIL`] bytes a stream carried, as text.
async fn tail(reader: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let Some(mut r) = reader else {
        return String::new();
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > TAIL {
                    kept.drain(..kept.len() - TAIL);
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

pub mod session;
pub use session::SessionHook;

#[cfg(test)]
pub(crate) mod exec_server;
#[cfg(test)]
mod mariadb_tests;
#[cfg(test)]
mod tests;
