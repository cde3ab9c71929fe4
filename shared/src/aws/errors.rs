//! AWS SDK errors as snapstage errors: the service's code classified into a failure type
//! ([`Error::from_aws_code`]), an answer without a code by its HTTP status, a transport failure
//! as unavailable; the SDK's error kept as the cause.

use crate::error::{DisplayChain, Error};

/// Turn any AWS SDK error into a classified [`Error`], keeping the service's code and message,
/// and the SDK's error as its source.
/// An answer without an error code (a load balancer's 502, a proxy's 503) is classified by its
/// HTTP status: 429 and 5xx are [`Error::Unavailable`].
pub fn aws_error<E>(
    backend: &'static str,
    action: &str,
    err: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_s3::error::SdkError;
    let classified = match &err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let status = se.raw().status().as_u16();
            let code = e.code();
            let msg = format!(
                "{action}: {}{}",
                code.map_or_else(|| format!("HTTP {status}"), str::to_string),
                e.message().map(|m| format!(": {m}")).unwrap_or_default()
            );
            match Error::from_aws_code(backend, code, msg) {
                Error::Backend {
                    backend, message, ..
                } if status == 429 || status >= 500 => Error::Unavailable {
                    backend,
                    message,
                    source: None,
                },
                other => other,
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Error::Unavailable {
                backend,
                message: format!("{action}: {}", DisplayChain(&err)),
                source: None,
            }
        }
        _ => Error::Backend {
            backend,
            message: format!("{action}: {}", DisplayChain(&err)),
            source: None,
        },
    };
    // The modeled error (code and message) as the cause, not the SDK's "service error" wrapper;
    // a transport failure keeps the whole SDK error and its chain.
    match err {
        SdkError::ServiceError(se) => classified.caused_by(se.into_err()),
        other => classified.caused_by(other),
    }
}
