//! The state machine of an execution: pure decisions, no SQL and no gRPC.
//!
//! Every operation is a function of the request, the current record (read under a row lock
//! in the same transaction that will write the result) and `now`, read from the database
//! clock. The store persists what these functions decide; they never see a wall clock.
//!
//! Invariants kept here:
//! - every write that leaves a record in a new hands-on state (claim, takeover, reconcile)
//!   bumps the fencing token, so any older holder is fenced;
//! - every write by a worker (heartbeat, complete) requires the record's current token;
//! - a fingerprint, once stored, is checked on every path that reads the record;
//! - an expired lease is never silently re-run: without `RETRY` it is reported UNCERTAIN.

mod claim;
mod complete;
mod heartbeat;
pub mod model;
mod reconcile;

pub use claim::{acquired as acquired_outcome, decide_claim, ClaimDecision};
pub use complete::{completion_effect, decide_complete, CompletionEffect};
pub use heartbeat::classify_lost;
pub use model::*;
pub use reconcile::decide_reconcile;

/// Why the core refused a request. Each maps to one `ErrorInfo` reason.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("token {given} is not the current token {current} (state {state})")]
    Fenced {
        given: Token,
        current: Token,
        state: State,
    },
    #[error("the fingerprint differs from the one stored at the first claim")]
    FingerprintMismatch,
    #[error("the execution was already resolved as {state} with a different outcome")]
    AlreadyResolved { state: State },
    #[error("an execution in state {state} cannot be reconciled{hint}")]
    NotReconcilable { state: State, hint: &'static str },
    #[error("no execution for this namespace and key")]
    NotFound,
}

/// A new or changed record plus the history event that explains it.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// The token the record had when it was read; the store writes only if it still has it.
    pub expected_token: Token,
    pub record: Record,
    pub event: Event,
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::model::*;
    use chrono::{TimeZone, Utc};
    use std::time::Duration;

    pub fn t0() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }
    pub fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }
    pub fn key(k: &str) -> ExecKey {
        ExecKey {
            namespace: Namespace::new_unchecked("ns"),
            key: Key::new_unchecked(k),
        }
    }
    pub fn claim_req(k: &str) -> ClaimRequest {
        ClaimRequest {
            key: key(k),
            lease_ttl: Duration::from_secs(30),
            hard_ttl: Duration::from_secs(3600),
            fingerprint: vec![],
            holder: "w".into(),
            claim_id: "c-new".into(),
            retention: Duration::from_secs(86400),
            on_lease_expiry: LeaseExpiryPolicy::Uncertain,
        }
    }
    /// A record claimed at `claimed_at` with a lease of `ttl` seconds.
    pub fn running(token: Token, claimed_at: Timestamp, ttl: i64) -> Record {
        Record {
            state: State::Running,
            token,
            attempt: 1,
            fingerprint: vec![],
            holder: "w0".into(),
            claim_id: "c-old".into(),
            lease_ttl: Duration::from_secs(ttl as u64),
            lease_expires_at: claimed_at + secs(ttl),
            hard_deadline_at: claimed_at + secs(3600),
            uncertain_reason: None,
            response: None,
            error: None,
            retention: Duration::from_secs(86400),
            retention_until: None,
            created_at: claimed_at,
            updated_at: claimed_at,
        }
    }
}
