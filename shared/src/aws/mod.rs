//! The one place an AWS `SdkConfig` is built: one HTTP client on rustls with the ring provider
//! (no second crypto provider), endpoints from the standard `AWS_ENDPOINT_URL[_<SERVICE>]`
//! variables, credentials and region from the default chain.
//!
//! Retries and timeouts, so an unanswered call never holds a function past its budget:
//! - retries: the SDK's standard mode (3 attempts, exponential backoff with full jitter, a token
//!   bucket; throttling, 5xx, connection and timeout errors are retried). `AWS_MAX_ATTEMPTS` and
//!   `AWS_RETRY_MODE` still override it the standard way.
//! - timeouts: connect 3.1 s; each attempt [`DEFAULT_ATTEMPT_TIMEOUT`] (until the response is
//!   read); the whole operation, retries included, [`DEFAULT_OPERATION_TIMEOUT`]. Override with
//!   `SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS` / `SNAPSTAGE_AWS_OPERATION_TIMEOUT_SECS` (seconds,
//!   fractions allowed), e.g. for an on-prem S3 endpoint behind a slow link.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_smithy_http_client::tls;

pub mod errors;

pub use errors::aws_error;

pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(200);
pub const ATTEMPT_TIMEOUT_ENV: &str = "SNAPSTAGE_AWS_ATTEMPT_TIMEOUT_SECS";
pub const OPERATION_TIMEOUT_ENV: &str = "SNAPSTAGE_AWS_OPERATION_TIMEOUT_SECS";

/// The `SecretString` of a Secrets Manager secret whose id the parameter `field` gave. A missing
/// secret is a ConfigurationError naming the field and the id; a binary secret says to store
/// `expected` as text. Nothing of the value ever reaches an error or a log.
pub async fn secret_string(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
    field: &str,
    expected: &str,
) -> crate::Result<String> {
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception())
            {
                crate::Error::parameter(
                    field,
                    format!("no such secret {id:?} in this account/region"),
                )
            } else {
                match crate::aws::aws_error(
                    "secretsmanager",
                    &format!("GetSecretValue {id:?} ({field})"),
                    e,
                ) {
                    crate::Error::Permission {
                        backend,
                        message,
                        source,
                    } => crate::Error::Permission {
                        backend,
                        message: format!(
                            "{message}; grant the function's role secretsmanager:GetSecretValue \
                             on this secret (and kms:Decrypt on its KMS key), or name a secret it \
                             may read in {field}"
                        ),
                        source,
                    },
                    other => other,
                }
            }
        })?;
    out.secret_string().map(str::to_string).ok_or_else(|| {
        crate::Error::Configuration(format!(
            "{field} {id:?}: the secret has no SecretString (binary secrets are not supported); store {expected}"
        ))
    })
}

/// Loads the shared SDK configuration. Call once per process and build every client from it.
pub async fn sdk_config() -> SdkConfig {
    loader().load().await
}

/// The config loader with snapstage's HTTP client and timeouts, for callers that override more
/// (tests, a second endpoint).
pub fn loader() -> ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts(|k| std::env::var(k).ok()))
}

/// The timeouts, from the environment where set (an unusable value is logged and ignored).
pub fn timeouts(get: impl Fn(&str) -> Option<String>) -> TimeoutConfig {
    let secs = |key: &str, default: Duration| match get(key) {
        None => default,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Duration::from_secs_f64(s),
            _ => {
                tracing::warn!(
                    variable = key,
                    value = %v,
                    default_secs = default.as_secs_f64(),
                    "expected a number of seconds; using the default"
                );
                default
            }
        },
    };
    let attempt = secs(ATTEMPT_TIMEOUT_ENV, DEFAULT_ATTEMPT_TIMEOUT);
    let operation = secs(OPERATION_TIMEOUT_ENV, DEFAULT_OPERATION_TIMEOUT).max(attempt);
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(attempt)
        .operation_timeout(operation)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_config::retry::RetryMode;

    #[test]
    fn timeouts_have_defaults_and_env_overrides() {
        let t = timeouts(|_| None);
        assert_eq!(t.connect_timeout(), Some(CONNECT_TIMEOUT));
        assert_eq!(t.operation_attempt_timeout(), Some(DEFAULT_ATTEMPT_TIMEOUT));
        assert_eq!(t.operation_timeout(), Some(DEFAULT_OPERATION_TIMEOUT));

        let t = timeouts(|k| (k == ATTEMPT_TIMEOUT_ENV).then(|| "1.5".to_string()));
        assert_eq!(
            t.operation_attempt_timeout(),
            Some(Duration::from_millis(1500))
        );
        // The operation is never shorter than one attempt.
        let t = timeouts(|k| Some(if k == ATTEMPT_TIMEOUT_ENV { "90" } else { "5" }.to_string()));
        assert_eq!(t.operation_timeout(), Some(Duration::from_secs(90)));
        for bad in ["", "abc", "-1", "0", "NaN", "inf"] {
            let t = timeouts(|_| Some(bad.to_string()));
            assert_eq!(
                t.operation_attempt_timeout(),
                Some(DEFAULT_ATTEMPT_TIMEOUT),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_sdk_config_retries_in_standard_mode_and_has_timeouts() {
        let config = loader()
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        let retry = config.retry_config().unwrap();
        assert_eq!(retry.mode(), RetryMode::Standard);
        if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
            assert_eq!(retry.max_attempts(), 3);
        }
        assert!(retry.initial_backoff() <= Duration::from_secs(1));
        let t = config.timeout_config().unwrap();
        assert!(t.operation_attempt_timeout().is_some());
        assert!(t.operation_timeout().is_some());
        assert_eq!(t.connect_timeout(), Some(CONNECT_TIMEOUT));
    }
}
