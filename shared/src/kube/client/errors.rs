//! Kubernetes API errors as snapstage errors, each saying what was being done and what to fix.
//!
//! | answer | error | CodePipeline failure |
//! | --- | --- | --- |
//! | 401 | `Permission` (token expired or for another cluster) | PermissionError |
//! | 403 | `Permission` (RBAC / EKS access entry) | PermissionError |
//! | 404 | `NotFound` | ConfigurationError |
//! | 409 | `Backend` (conflict: changed by someone else while applying) | JobFailed |
//! | 400, 422 | `Configuration` (the API server rejected an object) | ConfigurationError |
//! | 429, 5xx, no connection | `Unavailable` | SystemUnavailable |

use super::BACKEND;
use crate::error::{DisplayChain, Error};

/// Classifies a kube client error; `action` says what was being done ("applying StatefulSet
/// ns/staging-db").
pub fn kube_error(action: &str, err: kube::Error) -> Error {
    let classified = match &err {
        kube::Error::Api(status) => {
            let code = status.code;
            let reason = if status.reason.is_empty() {
                "error".to_string()
            } else {
                status.reason.clone()
            };
            let detail = if status.message.is_empty() {
                String::new()
            } else {
                format!(": {}", status.message)
            };
            let said = format!("{action}: {code} {reason}{detail}");
            match code {
                401 => Error::Permission {
                    backend: BACKEND,
                    message: format!(
                        "{said} — the API server rejected the credentials (an EKS token is valid 15 minutes and made fresh each invocation; check the cluster and the function's access entry)"
                    ),
                    source: None,
                },
                403 => Error::Permission {
                    backend: BACKEND,
                    message: format!(
                        "{said} — grant it in the function's RBAC (infra/k8s/rbac.yaml) or EKS access entry"
                    ),
                    source: None,
                },
                404 => Error::NotFound {
                    backend: BACKEND,
                    message: said,
                    source: None,
                },
                409 => Error::Backend {
                    backend: BACKEND,
                    message: format!(
                        "{said} — conflict: the object was changed or is owned by someone else while snapstage applied it; re-run the action"
                    ),
                    source: None,
                },
                400 | 422 => Error::Configuration(format!("{BACKEND}: {said}")),
                429 | 500..=599 => Error::Unavailable {
                    backend: BACKEND,
                    message: said,
                    source: None,
                },
                _ => Error::Backend {
                    backend: BACKEND,
                    message: said,
                    source: None,
                },
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => Error::Unavailable {
            backend: BACKEND,
            message: format!(
                "{action}: cannot reach the API server: {}",
                DisplayChain(&err)
            ),
            source: None,
        },
        kube::Error::Auth(_) => Error::Permission {
            backend: BACKEND,
            message: format!("{action}: no usable credentials: {}", DisplayChain(&err)),
            source: None,
        },
        other => Error::Backend {
            backend: BACKEND,
            message: format!("{action}: {}", DisplayChain(other)),
            source: None,
        },
    };
    classified.caused_by(err)
}
