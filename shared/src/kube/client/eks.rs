//! An EKS cluster's client configuration: `eks:DescribeCluster` gives the endpoint and the CA
//! (base64 PEM), [`crate::kube::eks_token::token_for`] the bearer token. The pieces are assembled as an
//! in-memory kubeconfig so kube parses the CA exactly as it would from a file.

use aws_sdk_eks::operation::describe_cluster::DescribeClusterError;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::EksCluster;
use crate::aws::aws_error;
use crate::error::{Error, Result};

/// What DescribeCluster says about reaching the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    /// `https://<id>.<zone>.<region>.eks.amazonaws.com` (resolves privately inside the VPC for
    /// private endpoints).
    pub url: String,
    /// `certificateAuthority.data`: the cluster CA, base64 of PEM.
    pub certificate_authority: String,
}

/// Reads endpoint and CA from a DescribeCluster answer.
pub fn endpoint_of(name: &str, cluster: &aws_sdk_eks::types::Cluster) -> Result<Endpoint> {
    let status = cluster
        .status()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    let url = cluster
        .endpoint()
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Error::Unavailable {
            backend: "eks",
            message: format!(
                "cluster {name} has no API endpoint yet (status {status:?}); retry when it is ACTIVE"
            ),
            source: None,
        })?;
    if !url.starts_with("https://") {
        return Err(Error::Configuration(format!(
            "EKS cluster {name}: expected an https:// endpoint, got {url:?}"
        )));
    }
    let certificate_authority = cluster
        .certificate_authority()
        .and_then(|c| c.data())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            Error::Configuration(format!(
                "EKS cluster {name}: DescribeCluster returned no certificateAuthority.data"
            ))
        })?;
    Ok(Endpoint {
        name: name.to_string(),
        url: url.to_string(),
        certificate_authority: certificate_authority.to_string(),
    })
}

/// The client configuration for `endpoint` with `token` (a `k8s-aws-v1.` bearer token).
pub async fn config_from(endpoint: &Endpoint, token: &str) -> Result<kube::Config> {
    let name = &endpoint.name;
    let kubeconfig: Kubeconfig = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": endpoint.url,
            "certificate-authority-data": endpoint.certificate_authority,
        }}],
        "users": [{"name": "snapstage", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "snapstage"}}],
        "current-context": name,
    }))
    .map_err(|e| Error::Internal(format!("EKS kubeconfig for {name}: {e}")))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| {
            Error::Configuration(format!(
                "EKS cluster {name}: unusable endpoint or CA from DescribeCluster: {e}"
            ))
        })
}

/// DescribeCluster + a fresh token → the client configuration.
pub async fn config(cluster: &EksCluster, sdk: &aws_config::SdkConfig) -> Result<kube::Config> {
    if cluster.name.trim().is_empty() {
        return Err(Error::parameter(
            "cluster.eks.name",
            "expected the EKS cluster name, got \"\"",
        ));
    }
    let sdk = match &cluster.region {
        Some(r) => sdk
            .to_builder()
            .region(aws_config::Region::new(r.clone()))
            .build(),
        None => sdk.clone(),
    };
    let client = aws_sdk_eks::Client::new(&sdk);
    let answer = client
        .describe_cluster()
        .name(&cluster.name)
        .send()
        .await
        .map_err(|e| match e.as_service_error() {
            Some(DescribeClusterError::ResourceNotFoundException(_)) => Error::NotFound {
                backend: "eks",
                message: format!(
                    "no EKS cluster named {} in {} (cluster.eks.name / cluster.eks.region)",
                    cluster.name,
                    sdk.region().map_or("the function's region", |r| r.as_ref())
                ),
                source: None,
            },
            _ => aws_error(
                "eks",
                &format!("DescribeCluster {} (cluster.eks.name)", cluster.name),
                e,
            ),
        })?;
    let described = answer.cluster().ok_or_else(|| Error::Backend {
        backend: "eks",
        message: format!("DescribeCluster {}: no cluster in the answer", cluster.name),
        source: None,
    })?;
    let endpoint = endpoint_of(&cluster.name, described)?;
    let token = crate::kube::eks_token::token_for(&sdk, &cluster.name).await?;
    config_from(&endpoint, &token).await
}
