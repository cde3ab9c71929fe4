//! The one error type of the core crate, and how each error maps to a CodePipeline failure type.
//!
//! Messages say what to fix and never carry secrets: nothing from an event's
//! `artifactCredentials`, no API token, no presigned URL.

use std::fmt;

/// The cause an [`Error`] keeps: the SDK's, the Kubernetes client's, the HTTP client's or the
/// operating system's error, with its own chain.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with the crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// CodePipeline's `FailureType` (PutJobFailureResult `failureDetails.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FailureKind {
    JobFailed,
    ConfigurationError,
    PermissionError,
    RevisionOutOfSync,
    RevisionUnavailable,
    SystemUnavailable,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobFailed => "JobFailed",
            Self::ConfigurationError => "ConfigurationError",
            Self::PermissionError => "PermissionError",
            Self::RevisionOutOfSync => "RevisionOutOfSync",
            Self::RevisionUnavailable => "RevisionUnavailable",
            Self::SystemUnavailable => "SystemUnavailable",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload is not an event or request this function accepts.
    #[error("{0}")]
    Event(String),

    /// A parameter is missing, unknown or invalid; `field` names it the way the user wrote it.
    #[error("{field}: {message}")]
    Parameter { field: String, message: String },

    /// The configuration (environment, token, templates) is unusable.
    #[error("{0}")]
    Configuration(String),

    /// The function's role lacks a permission.
    #[error("{backend}: permission denied: {message}")]
    Permission {
        backend: &'static str,
        message: String,
        /// What the service, client or system said, kept for logs ([`Error::chain`]).
        #[source]
        source: Option<Source>,
    },

    /// A resource the request names does not exist.
    #[error("{backend}: not found: {message}")]
    NotFound {
        backend: &'static str,
        message: String,
        /// What the service, client or system said, kept for logs ([`Error::chain`]).
        #[source]
        source: Option<Source>,
    },

    /// A safety rule refused the request (e.g. a production target).
    #[error("refused: {0}")]
    Refused(String),

    /// The backend is unreachable or throttling past its retries.
    #[error("{backend}: unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
        /// What the service, client or system said, kept for logs ([`Error::chain`]).
        #[source]
        source: Option<Source>,
    },

    /// Anything else a backend reports.
    #[error("{backend}: {message}")]
    Backend {
        backend: &'static str,
        message: String,
        /// What the service, client or system said, kept for logs ([`Error::chain`]).
        #[source]
        source: Option<Source>,
    },

    /// A bug on our side (a panic, an invariant). Reported as JobFailed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn parameter(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Parameter {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Keeps `cause` as this error's source (backend errors only: the other kinds are said in
    /// the user's terms and have no outside cause).
    pub fn caused_by(mut self, cause: impl Into<Source>) -> Self {
        if let Self::Permission { source, .. }
        | Self::NotFound { source, .. }
        | Self::Unavailable { source, .. }
        | Self::Backend { source, .. } = &mut self
        {
            *source = Some(cause.into());
        }
        self
    }

    /// The same error (kind, failure type and source kept) with `note` added to its message:
    /// what a step did about it (e.g. what it rolled back).
    pub fn noted(self, note: &str) -> Self {
        let add = |m: String| format!("{m}; {note}");
        match self {
            Self::Event(m) => Self::Event(add(m)),
            Self::Parameter { field, message } => Self::Parameter {
                field,
                message: add(message),
            },
            Self::Configuration(m) => Self::Configuration(add(m)),
            Self::Refused(m) => Self::Refused(add(m)),
            Self::Internal(m) => Self::Internal(add(m)),
            Self::Permission {
                backend,
                message,
                source,
            } => Self::Permission {
                backend,
                message: add(message),
                source,
            },
            Self::NotFound {
                backend,
                message,
                source,
            } => Self::NotFound {
                backend,
                message: add(message),
                source,
            },
            Self::Unavailable {
                backend,
                message,
                source,
            } => Self::Unavailable {
                backend,
                message: add(message),
                source,
            },
            Self::Backend {
                backend,
                message,
                source,
            } => Self::Backend {
                backend,
                message: add(message),
                source,
            },
        }
    }

    /// The message and every cause below it, `a: b: c`, each said once (a cause whose text the
    /// message already contains is skipped). For logs; never carries a secret, as no cause
    /// does (SDK, client and OS errors name resources, not credentials).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            let said = s.to_string();
            if !said.is_empty() && !out.contains(&said) {
                out.push_str(": ");
                out.push_str(&said);
            }
            src = s.source();
        }
        out
    }

    /// The CodePipeline failure type this error is reported as.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            Self::Event(_) | Self::Parameter { .. } | Self::Configuration(_) | Self::Refused(_) => {
                FailureKind::ConfigurationError
            }
            Self::NotFound { .. } => FailureKind::ConfigurationError,
            Self::Permission { .. } => FailureKind::PermissionError,
            Self::Unavailable { .. } => FailureKind::SystemUnavailable,
            Self::Backend { .. } | Self::Internal(_) => FailureKind::JobFailed,
        }
    }

    /// Classify an AWS error code (as returned by `ProvideErrorMetadata::code`).
    pub fn from_aws_code(backend: &'static str, code: Option<&str>, message: String) -> Self {
        match code.unwrap_or_default() {
            "AccessDenied"
            | "AccessDeniedException"
            | "UnauthorizedOperation"
            | "AuthFailure"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "SignatureDoesNotMatch" => Self::Permission {
                backend,
                message,
                source: None,
            },
            c if c.ends_with(".NotFound")
                || c == "NoSuchBucket"
                || c == "NoSuchKey"
                || c == "NotFound" =>
            {
                Self::NotFound {
                    backend,
                    message,
                    source: None,
                }
            }
            // The SDK's own throttling and transient codes (aws-smithy-types `retry`), plus
            // EC2's `Unavailable` (HTTP 503, "the server is overloaded").
            "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "ProvisionedThroughputExceededException"
            | "TransactionInProgressException"
            | "RequestLimitExceeded"
            | "BandwidthLimitExceeded"
            | "LimitExceededException"
            | "RequestThrottled"
            | "SlowDown"
            | "PriorRequestNotComplete"
            | "EC2ThrottledException"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "Unavailable"
            | "InternalError"
            | "InternalFailure"
            | "InternalServerError"
            | "RequestTimeout"
            | "RequestTimeoutException" => Self::Unavailable {
                backend,
                message,
                source: None,
            },
            c if c.starts_with("Invalid")
                || c.starts_with("Missing")
                || c == "ValidationException" =>
            {
                Self::Configuration(format!("{backend}: {message}"))
            }
            _ => Self::Backend {
                backend,
                message,
                source: None,
            },
        }
    }
}

/// Displays an error with its sources, `a: b: c`.
pub struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_codes_map_to_failure_types() {
        let kind = |c| Error::from_aws_code("ec2", Some(c), "m".into()).failure_kind();
        assert_eq!(kind("UnauthorizedOperation"), FailureKind::PermissionError);
        assert_eq!(kind("AccessDenied"), FailureKind::PermissionError);
        assert_eq!(
            kind("InvalidVolume.NotFound"),
            FailureKind::ConfigurationError
        );
        assert_eq!(kind("RequestLimitExceeded"), FailureKind::SystemUnavailable);
        assert_eq!(kind("Unavailable"), FailureKind::SystemUnavailable);
        assert_eq!(kind("ThrottlingException"), FailureKind::SystemUnavailable);
        assert_eq!(
            kind("InvalidParameterValue"),
            FailureKind::ConfigurationError
        );
        assert_eq!(kind("SomethingElse"), FailureKind::JobFailed);
    }

    #[test]
    fn parameter_errors_name_the_field() {
        let e = Error::parameter(
            "UserParameters.volumeIds[0]",
            "expected a volume id, got 42",
        );
        assert_eq!(
            e.to_string(),
            "UserParameters.volumeIds[0]: expected a volume id, got 42"
        );
        assert_eq!(e.failure_kind(), FailureKind::ConfigurationError);
    }

    #[test]
    fn a_backend_error_keeps_its_cause_and_logs_say_it_once() {
        let io = std::io::Error::other("no space left on device");
        let e = Error::Backend {
            backend: "filesystem",
            message: "writing /srv/nexus/blobs/a.bytes".into(),
            source: None,
        }
        .caused_by(io);
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("no space left on device"));
        assert_eq!(
            e.chain(),
            "filesystem: writing /srv/nexus/blobs/a.bytes: no space left on device"
        );
        // What the user reads (the failure detail) stays the message alone.
        assert_eq!(
            e.to_string(),
            "filesystem: writing /srv/nexus/blobs/a.bytes"
        );

        // A cause the message already says is not said twice.
        let said = Error::Unavailable {
            backend: "s3",
            message: "GetObject: connection refused".into(),
            source: None,
        }
        .caused_by(std::io::Error::other("connection refused"));
        assert_eq!(
            said.chain(),
            "s3: unavailable: GetObject: connection refused"
        );
    }

    #[test]
    fn errors_in_the_users_terms_have_no_outside_cause() {
        let e = Error::parameter("volumeIds", "expected a list")
            .caused_by(std::io::Error::other("unrelated"));
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(e.chain(), "volumeIds: expected a list");
    }
}
