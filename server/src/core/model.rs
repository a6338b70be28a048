//! Domain types. Values of these types are valid by construction: the API layer builds them
//! from protobuf messages (see `api::convert`) and everything after that trusts them.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A database timestamp. Every expiry is judged against one of these, read from PostgreSQL.
pub type Timestamp = DateTime<Utc>;

/// A fencing token: per record, strictly increasing over the key's whole life.
pub type Token = u64;

/// The application or tenant scope of a record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// Wraps a namespace that the caller has already validated.
    pub fn new_unchecked(s: impl Into<String>) -> Self {
        Namespace(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The key of a record inside its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Wraps a key that the caller has already validated.
    pub fn new_unchecked(s: impl Into<String>) -> Self {
        Key(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The identity of a record: a composite of namespace and key, never a concatenation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecKey {
    pub namespace: Namespace,
    pub key: Key,
}

impl fmt::Display for ExecKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.namespace.as_str(), self.key.as_str())
    }
}

/// The stored state of a record. `Running` with an expired lease is *reported* as
/// `Uncertain`; see [`Record::effective`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Running,
    Completed,
    Failed,
    Uncertain,
    Released,
}

impl State {
    /// The code stored in the `state` column.
    pub fn code(self) -> i16 {
        match self {
            State::Running => 1,
            State::Completed => 2,
            State::Failed => 3,
            State::Uncertain => 4,
            State::Released => 5,
        }
    }

    pub fn from_code(code: i16) -> Option<State> {
        Some(match code {
            1 => State::Running,
            2 => State::Completed,
            3 => State::Failed,
            4 => State::Uncertain,
            5 => State::Released,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Running => "RUNNING",
            State::Completed => "COMPLETED",
            State::Failed => "FAILED",
            State::Uncertain => "UNCERTAIN",
            State::Released => "RELEASED",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a record is uncertain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UncertainReason {
    LeaseExpired,
    HardDeadline,
    Reported,
}

impl UncertainReason {
    pub fn code(self) -> i16 {
        match self {
            UncertainReason::LeaseExpired => 1,
            UncertainReason::HardDeadline => 2,
            UncertainReason::Reported => 3,
        }
    }

    pub fn from_code(code: i16) -> Option<UncertainReason> {
        Some(match code {
            1 => UncertainReason::LeaseExpired,
            2 => UncertainReason::HardDeadline,
            3 => UncertainReason::Reported,
            _ => return None,
        })
    }

    /// True when the uncertainty comes from an expired lease, which a RETRY claim may take over.
    pub fn is_expiry(self) -> bool {
        matches!(
            self,
            UncertainReason::LeaseExpired | UncertainReason::HardDeadline
        )
    }
}

/// What a claim does with an execution whose lease expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LeaseExpiryPolicy {
    #[default]
    Uncertain,
    Retry,
}

/// Whether a failed attempt may have changed the outside world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideEffects {
    None,
    Possible,
}

/// One execution record, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub state: State,
    pub token: Token,
    pub attempt: u32,
    pub fingerprint: Vec<u8>,
    pub holder: String,
    pub claim_id: String,
    pub lease_ttl: Duration,
    pub lease_expires_at: Timestamp,
    pub hard_deadline_at: Timestamp,
    pub uncertain_reason: Option<UncertainReason>,
    pub response: Option<Vec<u8>>,
    pub error: Option<String>,
    pub retention: Duration,
    pub retention_until: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The state of a record as every RPC, metric and listing reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub state: State,
    pub uncertain_reason: Option<UncertainReason>,
}

impl Record {
    /// The reported state at `now`: a RUNNING record whose lease or hard deadline has passed
    /// *is* UNCERTAIN, whether or not the sweeper has written that yet.
    pub fn effective(&self, now: Timestamp) -> Effective {
        if self.state == State::Running {
            if let Some(reason) = self.expiry_reason(now) {
                return Effective {
                    state: State::Uncertain,
                    uncertain_reason: Some(reason),
                };
            }
        }
        Effective {
            state: self.state,
            uncertain_reason: self.uncertain_reason,
        }
    }

    /// Why a lease is over at `now`, if it is.
    ///
    /// The reason does not depend on when the expiry is noticed: it is HARD_DEADLINE when the
    /// last lease had been capped by the hard deadline, LEASE_EXPIRED otherwise. The sweeper
    /// (`store::sql::SWEEP_EXPIRED`) applies the same rule.
    pub fn expiry_reason(&self, now: Timestamp) -> Option<UncertainReason> {
        if now < self.lease_expires_at {
            None
        } else if self.lease_expires_at >= self.hard_deadline_at {
            Some(UncertainReason::HardDeadline)
        } else {
            Some(UncertainReason::LeaseExpired)
        }
    }

    /// A COMPLETED or FAILED record past its retention is gone: the key is claimable again.
    pub fn retention_over(&self, now: Timestamp) -> bool {
        matches!(self.state, State::Completed | State::Failed)
            && self.retention_until.is_some_and(|until| now >= until)
    }

    /// Time left on the lease at `now` (zero when expired).
    pub fn ttl_remaining(&self, now: Timestamp) -> Duration {
        (self.lease_expires_at - now).to_std().unwrap_or_default()
    }
}

/// One transition, appended to the history in the same transaction as the write.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub key: ExecKey,
    pub token: Token,
    pub from: Option<State>,
    pub to: State,
    pub reason: &'static str,
    pub actor: String,
    pub note: String,
}

/// A stored history event, as Inspect returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEvent {
    pub at: Timestamp,
    pub token: Token,
    pub from: Option<State>,
    pub to: State,
    pub reason: String,
    pub actor: String,
    pub note: String,
}

/// A request to claim an execution.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub key: ExecKey,
    pub lease_ttl: Duration,
    pub hard_ttl: Duration,
    pub fingerprint: Vec<u8>,
    pub holder: String,
    /// Empty when the client did not supply one: then retries are not recognised.
    pub claim_id: String,
    pub retention: Duration,
    pub on_lease_expiry: LeaseExpiryPolicy,
}

/// The five outcomes of a claim.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimOutcome {
    Acquired {
        token: Token,
        attempt: u32,
        lease_expires_at: Timestamp,
        hard_deadline_at: Timestamp,
        ttl_remaining: Duration,
    },
    InProgress {
        holder: String,
        attempt: u32,
        lease_expires_at: Timestamp,
        ttl_remaining: Duration,
    },
    Completed {
        response: Vec<u8>,
        token: Token,
        completed_at: Timestamp,
    },
    Failed {
        error: String,
        token: Token,
        failed_at: Timestamp,
    },
    Uncertain {
        reason: UncertainReason,
        token: Token,
        holder: String,
        attempt: u32,
        error: String,
        since: Timestamp,
    },
}

/// What the worker reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Success {
        response: Vec<u8>,
    },
    Failure {
        message: String,
        retryable: bool,
        side_effects: SideEffects,
    },
}

#[derive(Clone, Debug)]
pub struct CompleteRequest {
    pub key: ExecKey,
    pub token: Token,
    pub outcome: Outcome,
    /// Empty when not supplied; otherwise it must match the stored fingerprint.
    pub fingerprint: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CompleteResult {
    pub state: State,
    pub token: Token,
    pub late: bool,
    pub resolved_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct HeartbeatRequest {
    pub key: ExecKey,
    pub token: Token,
}

/// Why a heartbeat did not extend a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    Fenced,
    LeaseExpired,
    HardDeadline,
    Resolved,
    NotFound,
}

impl LostReason {
    pub fn name(self) -> &'static str {
        match self {
            LostReason::Fenced => "FENCED",
            LostReason::LeaseExpired => "LEASE_EXPIRED",
            LostReason::HardDeadline => "HARD_DEADLINE",
            LostReason::Resolved => "RESOLVED",
            LostReason::NotFound => "NOT_FOUND",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum HeartbeatResult {
    Alive {
        lease_expires_at: Timestamp,
        ttl_remaining: Duration,
    },
    Lost {
        reason: LostReason,
        detail: String,
    },
    /// Neither renewed nor lost (the record was busy): the lease keeps its expiry, and the
    /// holder's next heartbeat tries again.
    NotRenewed,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    MarkCompleted { response: Vec<u8> },
    Retry,
    MarkFailed { message: String },
}

#[derive(Clone, Debug)]
pub struct ReconcileRequest {
    pub key: ExecKey,
    pub expected_token: Token,
    pub resolution: Resolution,
    pub operator: String,
    pub note: String,
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReconcileResult {
    pub state: State,
    pub token: Token,
}

/// A record as listings and Inspect report it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionView {
    pub key: ExecKey,
    pub record: Record,
    pub effective: Effective,
}

#[derive(Clone, Debug)]
pub struct ListRequest {
    pub namespace: Namespace,
    pub state: Option<State>,
    pub page_size: u32,
    /// The last key of the previous page.
    pub after: Option<Key>,
}
