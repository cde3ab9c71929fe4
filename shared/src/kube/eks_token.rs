//! EKS access without kubectl: the bearer token `aws eks get-token` makes.
//!
//! Token = `"k8s-aws-v1." + base64url_nopad(URL)`, where URL is
//! `https://sts.<region>.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15` presigned with
//! SigV4 in the query string (service `sts`, `X-Amz-Expires=60`, signed headers
//! `host;x-k8s-aws-id` with `x-k8s-aws-id: <cluster name>`, plus `X-Amz-Security-Token` for
//! temporary credentials). EKS accepts it for 15 minutes: make a new one every invocation.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};

pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
const CLUSTER_HEADER: &str = "x-k8s-aws-id";

/// A bearer token for `cluster`, signed with `credentials` at `time`.
pub fn token(
    credentials: &Credentials,
    region: &str,
    cluster: &str,
    time: SystemTime,
) -> Result<String> {
    if cluster.is_empty() || region.is_empty() {
        return Err(Error::Configuration(
            "EKS token: cluster name and region are required".into(),
        ));
    }
    let host = format!("sts.{region}.amazonaws.com");
    let url = format!("https://{host}/?Action=GetCallerIdentity&Version=2011-06-15");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(60));
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| Error::Internal(format!("EKS token signing parameters: {e}")))?
        .into();
    let headers = [("host", host.as_str()), (CLUSTER_HEADER, cluster)];
    let signable = SignableRequest::new("GET", &url, headers.into_iter(), SignableBody::Bytes(&[]))
        .map_err(|e| Error::Internal(format!("EKS token request: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| Error::Internal(format!("EKS token signing: {e}")))?
        .into_parts();
    let (_headers, query) = instructions.into_parts();
    let mut presigned = url;
    for (k, v) in query {
        presigned.push('&');
        presigned.push_str(k);
        presigned.push('=');
        presigned.push_str(&encode_query_value(&v));
    }
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(presigned)
    ))
}

/// A token from the process's credentials (the Lambda role), signed now.
pub async fn token_for(config: &aws_config::SdkConfig, cluster: &str) -> Result<String> {
    use aws_credential_types::provider::ProvideCredentials as _;
    let provider = config
        .credentials_provider()
        .ok_or_else(|| Error::Configuration("EKS token: no AWS credentials provider".into()))?;
    let creds = provider.provide_credentials().await.map_err(|e| {
        Error::Permission {
            backend: "eks",
            message: format!("no AWS credentials for the EKS token: {e}"),
            source: None,
        }
        .caused_by(e)
    })?;
    let region = config
        .region()
        .map(|r| r.as_ref().to_string())
        .ok_or_else(|| Error::Configuration("EKS token: AWS_REGION is not set".into()))?;
    token(&creds, &region, cluster, SystemTime::now())
}

/// RFC 3986 unreserved characters stay; everything else is %-encoded (SigV4's canonical form).
fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
