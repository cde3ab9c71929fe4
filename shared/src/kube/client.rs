//! Cluster access: which Kubernetes API server to talk to, chosen by configuration, and a
//! `kube::Client` for it. No kubectl, no exec plugins.
//!
//! | `cluster` parameter | how |
//! | --- | --- |
//! | `{"eks": {"name": "...", "region": "..."?}}` | `eks:DescribeCluster` → endpoint + CA; bearer token from [`crate::kube::eks_token::token_for`], new every invocation (private endpoints work from the VPC) |
//! | `{"kubeconfigSecret": "arn-or-name"}` | a kubeconfig (YAML) in Secrets Manager, its current context |
//! | `{"kubeconfigFile": "/path"}` | a kubeconfig file, its current context |
//! | `"inCluster"` | the pod's service account (`KUBERNETES_SERVICE_HOST`) |
//!
//! | module | what |
//! | --- | --- |
//! | [`eks`] | the client configuration from a DescribeCluster answer |
//! | [`kubeconfig`] | the client configuration from a kubeconfig (Secrets Manager or file) |
//! | [`errors`] | Kubernetes API errors as snapstage errors (401 → PermissionError, ...) |
//!
//! One crypto provider: rustls uses ring everywhere (see DESIGN.md); [`install_crypto_provider`]
//! makes it the process default before a client is built.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

pub mod eks;
pub mod errors;
pub mod kubeconfig;

pub use errors::kube_error;

/// The backend name in errors.
pub const BACKEND: &str = "kubernetes";
/// Time to open a connection to the API server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to wait for one API answer: every wait is bounded.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Which cluster to use (the `cluster` parameter).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ClusterConfig {
    /// An EKS cluster by name; the region defaults to the function's.
    Eks(EksCluster),
    /// A kubeconfig stored in Secrets Manager (ARN or name).
    KubeconfigSecret(String),
    /// A kubeconfig file.
    KubeconfigFile(String),
    /// The service account of the pod this runs in.
    InCluster,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EksCluster {
    pub name: String,
    #[serde(default)]
    pub region: Option<String>,
}

impl ClusterConfig {
    /// How the cluster is named in summaries (never a credential).
    pub fn describe(&self) -> String {
        match self {
            Self::Eks(c) => match &c.region {
                Some(r) => format!("EKS cluster {} ({r})", c.name),
                None => format!("EKS cluster {}", c.name),
            },
            Self::KubeconfigSecret(s) => format!("the kubeconfig in secret {s}"),
            Self::KubeconfigFile(p) => format!("the kubeconfig file {p}"),
            Self::InCluster => "the in-cluster service account".into(),
        }
    }
}

/// Makes ring rustls's process-wide crypto provider (once; a provider already installed stays).
pub fn install_crypto_provider() {
    // Err means one is installed already: with our features it can only be ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for the configured cluster. Credentials are fetched now (an EKS token is valid
/// 15 minutes: build a new client every invocation).
pub async fn connect(cluster: &ClusterConfig, sdk: &aws_config::SdkConfig) -> Result<kube::Client> {
    let config = match cluster {
        ClusterConfig::Eks(c) => eks::config(c, sdk).await?,
        ClusterConfig::KubeconfigSecret(id) => kubeconfig::from_secret(id, sdk).await?,
        ClusterConfig::KubeconfigFile(path) => kubeconfig::from_file(path).await?,
        ClusterConfig::InCluster => kube::Config::incluster().map_err(|e| {
            Error::Configuration(format!(
                "cluster \"inCluster\": not running in a pod with a service account ({e})"
            ))
        })?,
    };
    client(config, cluster)
}

/// snapstage's settings on a client configuration: bounded connect and read timeouts, and no
/// retry layer of kube's own. kube 5's default retry (`default_retry`) re-sends 429/503/504 up
/// to 15 times with exponential backoff capped at 1000 s — far past a Lambda's 15 minutes — so
/// it is off: [`crate::kube::api::retrying`] retries instead, a bounded number of times,
/// 5xx and lost connections included.
pub fn tuned(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    config.default_retry = false;
    config
}

/// Builds the client with snapstage's settings ([`tuned`]).
pub fn client(config: kube::Config, cluster: &ClusterConfig) -> Result<kube::Client> {
    install_crypto_provider();
    kube::Client::try_from(tuned(config)).map_err(|e| {
        Error::Configuration(format!(
            "cannot build a Kubernetes client for {}: {e}",
            cluster.describe()
        ))
    })
}

#[cfg(test)]
mod tests;
