//! A cluster from a kubeconfig: stored in Secrets Manager (an on-prem or non-EKS cluster from a
//! Lambda) or in a file (CLI use). The current context is used. Exec plugins (`aws eks
//! get-token`) need their binary, which a Lambda does not have: prefer `token` or client
//! certificates in stored kubeconfigs, or the `eks` access mode.

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{Error, Result};

/// Parses kubeconfig YAML; `source` names it in errors (never its content: it holds credentials).
pub async fn from_yaml(text: &str, source: &str) -> Result<kube::Config> {
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| {
        Error::Configuration(format!("{source}: not a kubeconfig: {}", redacted(&e)))
    })?;
    from_kubeconfig(kubeconfig, source).await
}

async fn from_kubeconfig(kubeconfig: Kubeconfig, source: &str) -> Result<kube::Config> {
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Configuration(format!("{source}: unusable kubeconfig: {e}")))
}

/// Kubeconfig parse errors can quote the input: keep only the kind of error.
fn redacted(e: &kube::config::KubeconfigError) -> String {
    let s = e.to_string();
    s.split(':').next().unwrap_or("invalid").trim().to_string()
}

/// The kubeconfig in a Secrets Manager secret (`SecretString`, YAML or JSON).
pub async fn from_secret(secret_id: &str, sdk: &aws_config::SdkConfig) -> Result<kube::Config> {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let text = crate::aws::secret_string(
        &client,
        secret_id,
        "cluster.kubeconfigSecret",
        "the kubeconfig (YAML or JSON)",
    )
    .await?;
    from_yaml(&text, &format!("cluster.kubeconfigSecret {secret_id}")).await
}

/// The kubeconfig in a file (relative certificate paths resolve against its folder).
pub async fn from_file(path: &str) -> Result<kube::Config> {
    let source = format!("cluster.kubeconfigFile {path}");
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| match e {
        kube::config::KubeconfigError::ReadConfig(io, _) => {
            Error::Configuration(format!("{source}: cannot read it: {io}"))
        }
        other => Error::Configuration(format!("{source}: not a kubeconfig: {}", redacted(&other))),
    })?;
    from_kubeconfig(kubeconfig, &source).await
}
