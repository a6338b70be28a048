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

pub type Result<T, E = Error> = std::result::Result<T, E>;
