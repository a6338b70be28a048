//! Domain types: what the client accepts and returns instead of the generated protobuf types.
//!
//! Replies are validated once, here, when they are converted (`TryFrom<pb::X>`): a reply that
//! breaks the contract (a missing oneof, an unknown enum value where one is required) becomes
//! [`Error::Protocol`] instead of a half-filled value.

use std::time::{Duration, SystemTime};

use sentinel_proto::v1 as pb;

use crate::error::Error;

/// The state of an execution, as every RPC reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExecutionState {
    /// A worker holds a live lease.
    Running,
    /// The outcome is stored and replayed to every caller.
    Completed,
    /// A definite, non-retryable failure is stored and replayed.
    Failed,
    /// The work may have partly happened; it needs reconciliation.
    Uncertain,
    /// The key is claimable again (retryable failure or reconcile RETRY).
    Released,
}

impl ExecutionState {
    pub(crate) fn to_pb(self) -> pb::ExecutionState {
        match self {
            Self::Running => pb::ExecutionState::Running,
            Self::Completed => pb::ExecutionState::Completed,
            Self::Failed => pb::ExecutionState::Failed,
            Self::Uncertain => pb::ExecutionState::Uncertain,
            Self::Released => pb::ExecutionState::Released,
        }
    }

    fn from_pb(v: i32, what: &str) -> Result<Self, Error> {
        match pb::ExecutionState::try_from(v) {
            Ok(pb::ExecutionState::Running) => Ok(Self::Running),
            Ok(pb::ExecutionState::Completed) => Ok(Self::Completed),
            Ok(pb::ExecutionState::Failed) => Ok(Self::Failed),
            Ok(pb::ExecutionState::Uncertain) => Ok(Self::Uncertain),
            Ok(pb::ExecutionState::Released) => Ok(Self::Released),
            Ok(pb::ExecutionState::Unspecified) | Err(_) => Err(Error::protocol(format!(
                "{what}: execution state {v} is not a state"
            ))),
        }
    }

    /// Like `from_pb`, but UNSPECIFIED (e.g. `from_state` of a first claim) is `None`.
    fn from_pb_opt(v: i32, what: &str) -> Result<Option<Self>, Error> {
        if v == pb::ExecutionState::Unspecified as i32 {
            Ok(None)
        } else {
            Self::from_pb(v, what).map(Some)
        }
    }

    /// Parses the `state` metadata of an error: accepts `UNCERTAIN`, `uncertain` and
    /// `EXECUTION_STATE_UNCERTAIN`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let s = s
            .strip_prefix("EXECUTION_STATE_")
            .or_else(|| s.strip_prefix("execution_state_"))
            .unwrap_or(s);
        match s.to_ascii_uppercase().as_str() {
            "RUNNING" => Some(Self::Running),
            "COMPLETED" => Some(Self::Completed),
            "FAILED" => Some(Self::Failed),
            "UNCERTAIN" => Some(Self::Uncertain),
            "RELEASED" => Some(Self::Released),
            _ => None,
        }
    }
}

/// What a claim does with an execution whose lease expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LeaseExpiryPolicy {
    /// Report the expired execution as UNCERTAIN and never re-run it (the server default).
    #[default]
    Uncertain,
    /// Take the expired execution over with a new token, fencing the old holder.
    Retry,
}

impl LeaseExpiryPolicy {
    fn to_pb(self) -> pb::LeaseExpiryPolicy {
        match self {
            Self::Uncertain => pb::LeaseExpiryPolicy::Uncertain,
            Self::Retry => pb::LeaseExpiryPolicy::Retry,
        }
    }
}

/// Why an execution is UNCERTAIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UncertainReason {
    /// The holder stopped heartbeating before completing.
    LeaseExpired,
    /// The execution ran past the hard deadline set at claim time.
    HardDeadline,
    /// The holder reported a failure with possible side effects.
    Reported,
}

impl UncertainReason {
    fn from_pb(v: i32, what: &str) -> Result<Self, Error> {
        match pb::UncertainReason::try_from(v) {
            Ok(pb::UncertainReason::LeaseExpired) => Ok(Self::LeaseExpired),
            Ok(pb::UncertainReason::HardDeadline) => Ok(Self::HardDeadline),
            Ok(pb::UncertainReason::Reported) => Ok(Self::Reported),
            Ok(pb::UncertainReason::Unspecified) | Err(_) => Err(Error::protocol(format!(
                "{what}: uncertain reason {v} is not a reason"
            ))),
        }
    }
}

/// Why the server says a lease is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// The token is no longer the execution's current token (takeover or reconcile).
    Fenced,
    /// The lease expired before the heartbeat arrived; expiry is final.
    LeaseExpired,
    /// The hard deadline has passed.
    HardDeadline,
    /// The execution under this token was already completed, failed or released.
    Resolved,
    /// No execution exists for the namespace and key.
    NotFound,
    /// A reason this client does not know (a newer server); treated as lost all the same.
    Unknown(i32),
}

impl LostReason {
    pub(crate) fn from_pb(v: i32) -> Self {
        match pb::LostReason::try_from(v) {
            Ok(pb::LostReason::Fenced) => Self::Fenced,
            Ok(pb::LostReason::LeaseExpired) => Self::LeaseExpired,
            Ok(pb::LostReason::HardDeadline) => Self::HardDeadline,
            Ok(pb::LostReason::Resolved) => Self::Resolved,
            Ok(pb::LostReason::NotFound) => Self::NotFound,
            Ok(pb::LostReason::Unspecified) | Err(_) => Self::Unknown(v),
        }
    }
}

/// Whether a failed attempt may have changed the outside world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SideEffects {
    /// Nothing happened: the attempt can safely be retried.
    None,
    /// The work may have partly happened: the execution becomes UNCERTAIN.
    Possible,
}

impl SideEffects {
    fn to_pb(self) -> pb::SideEffects {
        match self {
            Self::None => pb::SideEffects::None,
            Self::Possible => pb::SideEffects::Possible,
        }
    }
}

/// Options of one claim. Unset fields take the server defaults (lease 30 s, hard ttl 1 h,
/// retention 24 h, expired leases reported as UNCERTAIN).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimOptions {
    /// How long the lease lives without a heartbeat (100 ms..1 h).
    pub lease_ttl: Option<Duration>,
    /// Cap on the whole execution from the claim; heartbeats never extend past it.
    pub hard_ttl: Option<Duration>,
    /// Identifies the request payload (e.g. a hash); a different one for the same key is rejected.
    pub fingerprint: Option<Vec<u8>>,
    /// Names the worker for operators and other callers; the client's holder when unset.
    pub holder: Option<String>,
    /// Id of this claim attempt; generated when unset. Reuse it only to retry the same claim.
    pub claim_id: Option<String>,
    /// How long a completed or failed outcome is kept and replayed.
    pub retention: Option<Duration>,
    /// What to do with an execution whose lease expired.
    pub on_lease_expiry: LeaseExpiryPolicy,
}

impl ClaimOptions {
    pub(crate) fn to_pb(
        &self,
        namespace: &str,
        key: &str,
        holder: &str,
        claim_id: &str,
    ) -> Result<pb::ClaimRequest, Error> {
        Ok(pb::ClaimRequest {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            lease_ttl: self
                .lease_ttl
                .map(|d| duration_to_pb(d, "lease_ttl"))
                .transpose()?,
            hard_ttl: self
                .hard_ttl
                .map(|d| duration_to_pb(d, "hard_ttl"))
                .transpose()?,
            fingerprint: self.fingerprint.clone().unwrap_or_default(),
            holder: self.holder.as_deref().unwrap_or(holder).to_owned(),
            claim_id: claim_id.to_owned(),
            retention: self
                .retention
                .map(|d| duration_to_pb(d, "retention"))
                .transpose()?,
            on_lease_expiry: self.on_lease_expiry.to_pb() as i32,
        })
    }
}

/// What a claim found or did: exactly one of the five outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller now holds the lease and must do the work.
    Acquired(Acquired),
    /// Another worker holds a live lease; nothing was written.
    InProgress(InProgress),
    /// Replay of a finished execution.
    Completed(Replayed),
    /// Replay of a stored definite failure.
    Failed(FailedReplay),
    /// The work may have partly happened and needs reconciliation.
    Uncertain(Uncertain),
}

/// A lease granted to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquired {
    /// The fencing token to carry on every heartbeat, complete and downstream write.
    pub token: u64,
    /// Counts the acquisitions of this execution, starting at 1.
    pub attempt: u32,
    /// When the lease ends unless renewed, by the database clock.
    pub lease_expires_at: SystemTime,
    /// The absolute end of the execution, by the database clock.
    pub hard_deadline_at: SystemTime,
    /// The lease time left when the reply was made (for a local monotonic deadline).
    pub ttl_remaining: Duration,
}

/// The live lease of another worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InProgress {
    /// The holder named by the worker that holds the lease.
    pub holder: String,
    /// The attempt number of the running execution.
    pub attempt: u32,
    /// When the current lease ends unless renewed.
    pub lease_expires_at: Option<SystemTime>,
    /// The lease time left when the reply was made.
    pub ttl_remaining: Option<Duration>,
}

/// A stored successful outcome, replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The exact bytes stored by the completion.
    pub response: Vec<u8>,
    /// The token under which the execution completed.
    pub token: u64,
    /// When the outcome was stored.
    pub completed_at: Option<SystemTime>,
}

/// A stored definite failure, replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedReplay {
    /// The failure message stored by the worker or the reconciler.
    pub error: String,
    /// The token under which the failure was stored.
    pub token: u64,
    /// When the failure was stored.
    pub failed_at: Option<SystemTime>,
}

/// Everything a reconciler needs about an uncertain execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uncertain {
    /// Why the execution is uncertain.
    pub reason: UncertainReason,
    /// The current fencing token: the `expected_token` for a reconcile.
    pub token: u64,
    /// The holder of the attempt that became uncertain.
    pub holder: String,
    /// The attempt number that became uncertain.
    pub attempt: u32,
    /// The failure message reported by the worker, if any.
    pub error: String,
    /// When the execution became uncertain.
    pub since: Option<SystemTime>,
}

impl TryFrom<pb::ClaimResponse> for ClaimOutcome {
    type Error = Error;

    fn try_from(r: pb::ClaimResponse) -> Result<Self, Error> {
        use pb::claim_response::Outcome as O;
        Ok(match r.outcome {
            Some(O::Acquired(a)) => Self::Acquired(Acquired {
                token: a.token,
                attempt: a.attempt,
                lease_expires_at: required_ts(a.lease_expires_at, "acquired.lease_expires_at")?,
                hard_deadline_at: required_ts(a.hard_deadline_at, "acquired.hard_deadline_at")?,
                ttl_remaining: required_duration(a.ttl_remaining, "acquired.ttl_remaining")?,
            }),
            Some(O::InProgress(p)) => Self::InProgress(InProgress {
                holder: p.holder,
                attempt: p.attempt,
                lease_expires_at: opt_ts(p.lease_expires_at),
                ttl_remaining: opt_duration(p.ttl_remaining),
            }),
            Some(O::Completed(c)) => Self::Completed(Replayed {
                response: c.response,
                token: c.token,
                completed_at: opt_ts(c.completed_at),
            }),
            Some(O::Failed(f)) => Self::Failed(FailedReplay {
                error: f.error,
                token: f.token,
                failed_at: opt_ts(f.failed_at),
            }),
            Some(O::Uncertain(u)) => Self::Uncertain(Uncertain {
                reason: UncertainReason::from_pb(u.reason, "claim uncertain")?,
                token: u.token,
                holder: u.holder,
                attempt: u.attempt,
                error: u.error,
                since: opt_ts(u.since),
            }),
            None => return Err(Error::protocol("claim response without an outcome")),
        })
    }
}

/// The outcome a holder reports with `complete`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// The work succeeded; the response is stored and replayed as exact bytes.
    Success {
        /// The response bytes (up to 1 MiB by default).
        response: Vec<u8>,
    },
    /// The work failed.
    Failure {
        /// Describes the failure (up to 4 KiB by default).
        message: String,
        /// A later attempt may succeed; with no side effects the key is released.
        retryable: bool,
        /// Whether the attempt may have changed the outside world.
        side_effects: SideEffects,
    },
}

impl CompleteOutcome {
    pub(crate) fn to_pb(&self) -> pb::complete_request::Outcome {
        use pb::complete_request::Outcome as O;
        match self {
            Self::Success { response } => O::Success(pb::CompleteSuccess {
                response: response.clone(),
            }),
            Self::Failure {
                message,
                retryable,
                side_effects,
            } => O::Failure(pb::CompleteFailure {
                message: message.clone(),
                retryable: *retryable,
                side_effects: side_effects.to_pb() as i32,
            }),
        }
    }
}

/// The state an execution reached by a complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// COMPLETED, FAILED, UNCERTAIN or RELEASED.
    pub state: ExecutionState,
    /// The token the outcome was stored under.
    pub token: u64,
    /// The lease had expired but the token was still current, so the outcome was accepted.
    pub late: bool,
    /// When the outcome was stored.
    pub resolved_at: Option<SystemTime>,
}

impl TryFrom<pb::CompleteResponse> for Completion {
    type Error = Error;

    fn try_from(r: pb::CompleteResponse) -> Result<Self, Error> {
        Ok(Self {
            state: ExecutionState::from_pb(r.state, "complete response")?,
            token: r.token,
            late: r.late,
            resolved_at: opt_ts(r.resolved_at),
        })
    }
}

/// How a reconcile resolves an execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Store a response as if the work had completed.
    MarkCompleted {
        /// Stored and replayed as exact bytes.
        response: Vec<u8>,
    },
    /// Release the key: the next claim runs the work again.
    Retry,
    /// Store a definite failure.
    MarkFailed {
        /// Stored and replayed as the failure.
        message: String,
    },
}

impl Resolution {
    fn to_pb(&self) -> pb::reconcile_request::Resolution {
        use pb::reconcile_request::Resolution as R;
        match self {
            Self::MarkCompleted { response } => R::MarkCompleted(pb::ReconcileMarkCompleted {
                response: response.clone(),
            }),
            Self::Retry => R::Retry(pb::ReconcileRetry {}),
            Self::MarkFailed { message } => R::MarkFailed(pb::ReconcileMarkFailed {
                message: message.clone(),
            }),
        }
    }
}

/// Who resolves an execution and why, for its history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Names who resolved it (up to 256 bytes); the client's holder when unset.
    pub operator: Option<String>,
    /// Explains the resolution (up to 4 KiB).
    pub note: String,
    /// Allows ending a live RUNNING execution; its holder is fenced.
    pub force: bool,
}

impl ReconcileOptions {
    pub(crate) fn to_pb(
        &self,
        namespace: &str,
        key: &str,
        expected_token: u64,
        resolution: &Resolution,
        default_operator: &str,
    ) -> pb::ReconcileRequest {
        pb::ReconcileRequest {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            expected_token,
            resolution: Some(resolution.to_pb()),
            operator: self
                .operator
                .as_deref()
                .unwrap_or(default_operator)
                .to_owned(),
            note: self.note.clone(),
            force: self.force,
        }
    }
}

/// The state an execution reached by a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconciled {
    /// COMPLETED, FAILED or RELEASED.
    pub state: ExecutionState,
    /// The new current token; the previous holder is fenced.
    pub token: u64,
}

impl TryFrom<pb::ReconcileResponse> for Reconciled {
    type Error = Error;

    fn try_from(r: pb::ReconcileResponse) -> Result<Self, Error> {
        Ok(Self {
            state: ExecutionState::from_pb(r.state, "reconcile response")?,
            token: r.token,
        })
    }
}

/// The record of one `(namespace, key)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    /// Namespace of the execution.
    pub namespace: String,
    /// Key of the execution.
    pub key: String,
    /// The state; a RUNNING execution whose lease expired is reported UNCERTAIN.
    pub state: ExecutionState,
    /// The current fencing token.
    pub token: u64,
    /// Counts the acquisitions of this execution.
    pub attempt: u32,
    /// The holder of the current or last attempt.
    pub holder: String,
    /// The fingerprint stored at the first claim (empty when none).
    pub fingerprint: Vec<u8>,
    /// Set when the state is UNCERTAIN.
    pub uncertain_reason: Option<UncertainReason>,
    /// The stored response when the state is COMPLETED.
    pub response: Vec<u8>,
    /// The stored failure message, if any.
    pub error: String,
    /// When the current lease ends.
    pub lease_expires_at: Option<SystemTime>,
    /// The absolute end of the current attempt.
    pub hard_deadline_at: Option<SystemTime>,
    /// When the execution was first claimed.
    pub created_at: Option<SystemTime>,
    /// When the execution last changed.
    pub updated_at: Option<SystemTime>,
    /// When a COMPLETED or FAILED execution is forgotten.
    pub retention_until: Option<SystemTime>,
}

impl TryFrom<pb::Execution> for Execution {
    type Error = Error;

    fn try_from(e: pb::Execution) -> Result<Self, Error> {
        let uncertain_reason = if e.uncertain_reason == pb::UncertainReason::Unspecified as i32 {
            None
        } else {
            Some(UncertainReason::from_pb(e.uncertain_reason, "execution")?)
        };
        Ok(Self {
            state: ExecutionState::from_pb(e.state, "execution")?,
            namespace: e.namespace,
            key: e.key,
            token: e.token,
            attempt: e.attempt,
            holder: e.holder,
            fingerprint: e.fingerprint,
            uncertain_reason,
            response: e.response,
            error: e.error,
            lease_expires_at: opt_ts(e.lease_expires_at),
            hard_deadline_at: opt_ts(e.hard_deadline_at),
            created_at: opt_ts(e.created_at),
            updated_at: opt_ts(e.updated_at),
            retention_until: opt_ts(e.retention_until),
        })
    }
}

/// One transition of an execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEvent {
    /// When the transition was committed, by the database clock.
    pub at: Option<SystemTime>,
    /// The fencing token after the transition.
    pub token: u64,
    /// The state before the transition (`None` for the first claim).
    pub from_state: Option<ExecutionState>,
    /// The state after the transition.
    pub to_state: Option<ExecutionState>,
    /// A machine-readable cause, e.g. "claim", "takeover", "late_complete".
    pub reason: String,
    /// The holder or operator that caused the transition.
    pub actor: String,
    /// The operator's note or the failure message.
    pub note: String,
}

impl TryFrom<pb::HistoryEvent> for HistoryEvent {
    type Error = Error;

    fn try_from(h: pb::HistoryEvent) -> Result<Self, Error> {
        Ok(Self {
            at: opt_ts(h.at),
            token: h.token,
            from_state: ExecutionState::from_pb_opt(h.from_state, "history from_state")?,
            to_state: ExecutionState::from_pb_opt(h.to_state, "history to_state")?,
            reason: h.reason,
            actor: h.actor,
            note: h.note,
        })
    }
}

/// One execution and its recent history, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// The record.
    pub execution: Execution,
    /// Its transitions, newest first.
    pub history: Vec<HistoryEvent>,
}

impl TryFrom<pb::InspectResponse> for Inspection {
    type Error = Error;

    fn try_from(r: pb::InspectResponse) -> Result<Self, Error> {
        let execution = r
            .execution
            .ok_or_else(|| Error::protocol("inspect response without an execution"))?;
        Ok(Self {
            execution: execution.try_into()?,
            history: r
                .history
                .into_iter()
                .map(HistoryEvent::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Which executions of a namespace to list, one page at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only executions in this state; every state when unset.
    pub state: Option<ExecutionState>,
    /// Executions per page (server default 100, at most 1000).
    pub page_size: Option<u32>,
    /// Continues from a previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// One page of executions, ordered by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionPage {
    /// The executions on this page.
    pub executions: Vec<Execution>,
    /// Continues the listing; `None` when there is no more.
    pub next_page_token: Option<String>,
}

impl TryFrom<pb::ListExecutionsResponse> for ExecutionPage {
    type Error = Error;

    fn try_from(r: pb::ListExecutionsResponse) -> Result<Self, Error> {
        Ok(Self {
            executions: r
                .executions
                .into_iter()
                .map(Execution::try_from)
                .collect::<Result<_, _>>()?,
            next_page_token: Some(r.next_page_token).filter(|t| !t.is_empty()),
        })
    }
}

pub(crate) fn duration_to_pb(d: Duration, field: &str) -> Result<prost_types::Duration, Error> {
    prost_types::Duration::try_from(d).map_err(|_| Error::InvalidArgument {
        message: format!("{field} is too large"),
        violations: vec![crate::error::FieldViolation {
            field: field.to_owned(),
            description: "duration out of range".to_owned(),
        }],
    })
}

/// A negative duration (clock skew on the server) is read as zero: it only shortens deadlines.
pub(crate) fn opt_duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.map(|d| Duration::try_from(d).unwrap_or(Duration::ZERO))
}

pub(crate) fn required_duration(
    d: Option<prost_types::Duration>,
    what: &str,
) -> Result<Duration, Error> {
    opt_duration(d).ok_or_else(|| Error::protocol(format!("{what} is missing")))
}

fn opt_ts(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

fn required_ts(t: Option<prost_types::Timestamp>, what: &str) -> Result<SystemTime, Error> {
    opt_ts(t).ok_or_else(|| Error::protocol(format!("{what} is missing or out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_metadata_parses_every_spelling() {
        assert_eq!(
            ExecutionState::parse("EXECUTION_STATE_UNCERTAIN"),
            Some(ExecutionState::Uncertain)
        );
        assert_eq!(
            ExecutionState::parse("completed"),
            Some(ExecutionState::Completed)
        );
        assert_eq!(
            ExecutionState::parse("RUNNING"),
            Some(ExecutionState::Running)
        );
        assert_eq!(ExecutionState::parse("bogus"), None);
    }

    #[test]
    fn claim_response_without_outcome_is_a_protocol_error() {
        let err = ClaimOutcome::try_from(pb::ClaimResponse { outcome: None }).unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    }

    #[test]
    fn acquired_without_ttl_remaining_is_rejected() {
        let now = prost_types::Timestamp::from(SystemTime::now());
        let r = pb::ClaimResponse {
            outcome: Some(pb::claim_response::Outcome::Acquired(pb::ClaimAcquired {
                token: 1,
                attempt: 1,
                lease_expires_at: Some(now),
                hard_deadline_at: Some(now),
                ttl_remaining: None,
            })),
        };
        assert!(matches!(
            ClaimOutcome::try_from(r),
            Err(Error::Protocol { .. })
        ));
    }
}
