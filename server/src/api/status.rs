//! The one place where service errors become gRPC statuses. Clients branch on the
//! `google.rpc.ErrorInfo` reason (domain `sentinel.v1`), never on message text.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::core::Rejection;
use crate::error::Error;

pub const DOMAIN: &str = "sentinel.v1";

fn info(code: Code, message: String, reason: &str, metadata: HashMap<String, String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e {
            Error::Rejected(r) => match r {
                Rejection::Fenced {
                    given,
                    current,
                    state,
                } => info(
                    Code::FailedPrecondition,
                    message,
                    "FENCED",
                    HashMap::from([
                        ("token".to_owned(), given.to_string()),
                        ("current_token".to_owned(), current.to_string()),
                        ("state".to_owned(), state.name().to_owned()),
                    ]),
                ),
                Rejection::FingerprintMismatch => info(
                    Code::FailedPrecondition,
                    message,
                    "FINGERPRINT_MISMATCH",
                    HashMap::new(),
                ),
                Rejection::AlreadyResolved { state } => info(
                    Code::FailedPrecondition,
                    message,
                    "ALREADY_RESOLVED",
                    HashMap::from([("state".to_owned(), state.name().to_owned())]),
                ),
                Rejection::NotReconcilable { state, .. } => info(
                    Code::FailedPrecondition,
                    message,
                    "NOT_RECONCILABLE",
                    HashMap::from([("state".to_owned(), state.name().to_owned())]),
                ),
                Rejection::NotFound => Status::not_found(message),
            },
            Error::Invalid(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::TooLarge(_) => Status::resource_exhausted(message),
            Error::DatabaseUnavailable(_) => info(
                Code::Unavailable,
                message,
                "DATABASE_UNAVAILABLE",
                HashMap::new(),
            ),
            Error::CommitUnknown(_) => {
                info(Code::Unavailable, message, "COMMIT_UNKNOWN", HashMap::new())
            }
            Error::ShuttingDown => Status::unavailable(message),
            Error::Internal(_) => Status::internal(message),
        }
    }
}
