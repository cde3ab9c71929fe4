//! The one place an AWS `SdkConfig` is built: one HTTP client on rustls with the ring provider
//! (no second crypto provider), endpoints from the standard `AWS_ENDPOINT_URL[_<SERVICE>]`
//! variables, credentials and region from the default chain.

use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_smithy_http_client::tls;

/// Loads the shared SDK configuration. Call once per process and build every client from it.
pub async fn sdk_config() -> SdkConfig {
    loader().load().await
}

/// The config loader with snapstage's HTTP client, for callers that override more (tests, a
/// second endpoint).
pub fn loader() -> ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest()).http_client(http)
}
