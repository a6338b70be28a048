//! The one error type of the client, and the one place where a gRPC status becomes it.
//!
//! Callers branch on the variant, which comes from the `google.rpc.ErrorInfo` reason the server
//! attaches (domain `sentinel.v1`), never from message text.

use std::fmt;

use tonic::Code;
use tonic_types::StatusExt;

use crate::model::ExecutionState;

/// The ErrorInfo domain of Sentinel's errors.
pub const ERROR_DOMAIN: &str = "sentinel.v1";

/// A boxed source error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One invalid field of a rejected request (from `google.rpc.BadRequest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field, e.g. `lease_ttl`.
    pub field: String,
    /// Why it is invalid.
    pub description: String,
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Everything that can go wrong talking to Sentinel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token is not the execution's current token: a takeover or a reconcile superseded it.
    #[error("fenced: the token is not current (current token {current_token:?}, state {state:?}): {message}")]
    Fenced {
        /// The execution's current token, when the server said.
        current_token: Option<u64>,
        /// The execution's state, when the server said.
        state: Option<ExecutionState>,
        /// The server's message.
        message: String,
    },
    /// The same key was claimed or completed with a different fingerprint.
    #[error("fingerprint mismatch: {message}")]
    FingerprintMismatch {
        /// The server's message.
        message: String,
    },
    /// A different outcome was reported for an already resolved token.
    #[error("already resolved: {message}")]
    AlreadyResolved {
        /// The server's message.
        message: String,
    },
    /// The execution's state does not allow this reconcile.
    #[error("not reconcilable (state {state:?}): {message}")]
    NotReconcilable {
        /// The execution's state, when the server said.
        state: Option<ExecutionState>,
        /// The server's message.
        message: String,
    },
    /// The request was rejected by validation; nothing was written.
    #[error("invalid argument: {message}{}", fmt_violations(.violations))]
    InvalidArgument {
        /// The server's message.
        message: String,
        /// The invalid fields.
        violations: Vec<FieldViolation>,
    },
    /// The execution does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// The server's message.
        message: String,
    },
    /// A response or message is over the configured size.
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        /// The server's message.
        message: String,
    },
    /// The server or its database is unreachable, or a commit's outcome is unknown. Retryable.
    #[error("unavailable{}: {message}", fmt_reason(.reason))]
    Unavailable {
        /// `DATABASE_UNAVAILABLE`, `COMMIT_UNKNOWN`, or `None` for a transport failure.
        reason: Option<String>,
        /// The server's or the transport's message.
        message: String,
    },
    /// The call did not finish within its deadline (the client's `rpc_timeout` or the
    /// server's); whether it took effect is unknown. Retryable.
    #[error("deadline exceeded: {message}")]
    Timeout {
        /// The status message.
        message: String,
    },
    /// Any other gRPC status.
    #[error("{code:?}{}: {message}", fmt_reason(.reason))]
    Status {
        /// The gRPC status code.
        code: Code,
        /// The ErrorInfo reason, if any.
        reason: Option<String>,
        /// The status message.
        message: String,
    },
    /// The channel could not be set up or connected.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A reply broke the protocol contract (e.g. a missing outcome).
    #[error("protocol violation: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// A replayed response could not be decoded by the codec of `once`.
    #[error("cannot decode the stored response: {source}")]
    Decode {
        /// The exact stored bytes, so nothing is lost.
        response: Vec<u8>,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
}

fn fmt_reason(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

fn fmt_violations(v: &[FieldViolation]) -> String {
    if v.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = v.iter().map(ToString::to_string).collect();
    format!(" [{}]", parts.join("; "))
}

impl Error {
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::Protocol {
            message: message.into(),
        }
    }

    /// The ErrorInfo reason of the error (`FENCED`, `COMMIT_UNKNOWN`, ...), if it has one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Fenced { .. } => Some("FENCED"),
            Self::FingerprintMismatch { .. } => Some("FINGERPRINT_MISMATCH"),
            Self::AlreadyResolved { .. } => Some("ALREADY_RESOLVED"),
            Self::NotReconcilable { .. } => Some("NOT_RECONCILABLE"),
            Self::Unavailable { reason, .. } | Self::Status { reason, .. } => reason.as_deref(),
            Self::InvalidArgument { .. }
            | Self::NotFound { .. }
            | Self::ResourceExhausted { .. }
            | Self::Timeout { .. }
            | Self::Connect { .. }
            | Self::Protocol { .. }
            | Self::Decode { .. } => None,
        }
    }

    /// Whether retrying the same call (with the same claim id, for a claim) may succeed: the
    /// server was unreachable, or the outcome of the call is unknown.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let info = status
            .get_details_error_info()
            .filter(|i| i.domain == ERROR_DOMAIN || i.domain.is_empty());
        let message = status.message().to_owned();
        let reason = info.as_ref().map(|i| i.reason.clone());
        let meta = |k: &str| info.as_ref().and_then(|i| i.metadata.get(k)).cloned();
        match reason.as_deref() {
            Some("FENCED") => {
                return Self::Fenced {
                    current_token: meta("current_token").and_then(|t| t.trim().parse().ok()),
                    state: meta("state").and_then(|s| ExecutionState::parse(&s)),
                    message,
                }
            }
            Some("FINGERPRINT_MISMATCH") => return Self::FingerprintMismatch { message },
            Some("ALREADY_RESOLVED") => return Self::AlreadyResolved { message },
            Some("NOT_RECONCILABLE") => {
                return Self::NotReconcilable {
                    state: meta("state").and_then(|s| ExecutionState::parse(&s)),
                    message,
                }
            }
            _ => {}
        }
        match status.code() {
            Code::InvalidArgument => Self::InvalidArgument {
                violations: status
                    .get_details_bad_request()
                    .map(|b| {
                        b.field_violations
                            .into_iter()
                            .map(|v| FieldViolation {
                                field: v.field,
                                description: v.description,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                message,
            },
            Code::NotFound => Self::NotFound { message },
            Code::ResourceExhausted => Self::ResourceExhausted { message },
            Code::Unavailable => Self::Unavailable { reason, message },
            // A connection that failed under a call surfaces as UNKNOWN "transport error";
            // for the caller it is the same as UNAVAILABLE: the outcome is unknown, retry.
            Code::Unknown if in_source_chain::<tonic::transport::Error>(&status) => {
                Self::Unavailable { reason, message }
            }
            Code::DeadlineExceeded => Self::Timeout { message },
            Code::Cancelled if in_source_chain::<tonic::TimeoutExpired>(&status) => {
                Self::Timeout { message }
            }
            code => Self::Status {
                code,
                reason,
                message,
            },
        }
    }
}

fn in_source_chain<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    fn status_with(code: Code, reason: &str, meta: &[(&str, &str)]) -> tonic::Status {
        let metadata: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
        tonic::Status::with_error_details(code, "msg", details)
    }

    #[test]
    fn fenced_exposes_the_current_token_and_state() {
        let err = Error::from(status_with(
            Code::FailedPrecondition,
            "FENCED",
            &[("current_token", "42"), ("state", "UNCERTAIN")],
        ));
        match err {
            Error::Fenced {
                current_token,
                state,
                ..
            } => {
                assert_eq!(current_token, Some(42));
                assert_eq!(state, Some(ExecutionState::Uncertain));
            }
            other => panic!("expected Fenced, got {other:?}"),
        }
    }

    #[test]
    fn unavailable_keeps_its_reason_and_is_retryable() {
        let err = Error::from(status_with(Code::Unavailable, "COMMIT_UNKNOWN", &[]));
        assert_eq!(err.reason(), Some("COMMIT_UNKNOWN"));
        assert!(err.is_retryable());
    }

    #[test]
    fn invalid_argument_lists_field_violations() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("lease_ttl", "below 100ms");
        let status = tonic::Status::with_error_details(Code::InvalidArgument, "bad", details);
        match Error::from(status) {
            Error::InvalidArgument { violations, .. } => {
                assert_eq!(violations.len(), 1);
                assert_eq!(violations[0].field, "lease_ttl");
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn foreign_domains_are_not_mistaken_for_sentinel_reasons() {
        let details = ErrorDetails::with_error_info("FENCED", "other.example", HashMap::new());
        let status = tonic::Status::with_error_details(Code::FailedPrecondition, "x", details);
        let err = Error::from(status);
        assert!(
            matches!(
                err,
                Error::Status {
                    code: Code::FailedPrecondition,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
