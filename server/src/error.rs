//! The service-level error: every failure an RPC can report. It is mapped to a gRPC
//! `Status` in exactly one place, `api::status`.

use crate::core::Rejection;

/// A field that failed validation, reported as a `google.rpc.BadRequest` violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub description: String,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The state machine refused the request.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The request is malformed; nothing was written.
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    /// A response or message is over its configured size; nothing was written.
    #[error("{0}")]
    TooLarge(String),
    /// The database could not be reached or refused the work; nothing was committed.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    /// The connection failed while committing: the write may or may not have happened.
    #[error("commit outcome unknown: {0}")]
    CommitUnknown(String),
    /// A broken invariant (a bug); reported as INTERNAL.
    #[error("internal error: {0}")]
    Internal(String),
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
}

impl Error {
    /// A short label for metrics and spans: the `ErrorInfo` reason or the status kind.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Rejected(Rejection::Fenced { .. }) => "FENCED",
            Error::Rejected(Rejection::FingerprintMismatch) => "FINGERPRINT_MISMATCH",
            Error::Rejected(Rejection::AlreadyResolved { .. }) => "ALREADY_RESOLVED",
            Error::Rejected(Rejection::NotReconcilable { .. }) => "NOT_RECONCILABLE",
            Error::Rejected(Rejection::NotFound) => "NOT_FOUND",
            Error::Invalid(_) => "INVALID_ARGUMENT",
            Error::TooLarge(_) => "RESOURCE_EXHAUSTED",
            Error::DatabaseUnavailable(_) => "DATABASE_UNAVAILABLE",
            Error::CommitUnknown(_) => "COMMIT_UNKNOWN",
            Error::Internal(_) => "INTERNAL",
            Error::ShuttingDown => "SHUTTING_DOWN",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
