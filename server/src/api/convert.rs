//! Validation at the boundary, once: protobuf messages in, domain types out (and back).
//! Every violation of a request is collected, so a client sees all of them at once.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use sentinel_proto::v1 as pb;

use crate::config::Limits;
use crate::core::{
    ClaimOutcome, ClaimRequest, CompleteRequest, CompleteResult, ExecKey, ExecutionView,
    HeartbeatRequest, HistoryEvent, Key, LeaseExpiryPolicy, ListRequest, LostReason, Namespace,
    Outcome, ReconcileRequest, ReconcileResult, Resolution, SideEffects, State, UncertainReason,
};
use crate::error::{Error, FieldViolation};

const DEFAULT_HISTORY: u32 = 50;
const MAX_HISTORY: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Collects violations; `finish` turns them into one `Error::Invalid` or `Error::TooLarge`.
#[derive(Default)]
struct Violations {
    invalid: Vec<FieldViolation>,
    too_large: Vec<String>,
}

impl Violations {
    fn add(&mut self, field: &'static str, description: impl Into<String>) {
        self.invalid.push(FieldViolation {
            field,
            description: description.into(),
        });
    }

    fn size(&mut self, field: &'static str, len: usize, max: usize) {
        if len > max {
            self.too_large.push(format!(
                "{field} is {len} bytes, over the limit of {max} bytes"
            ));
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Error> {
        // Malformed input is reported before size, so that a client fixes both in one go
        // only when the request is otherwise well-formed.
        if !self.invalid.is_empty() {
            Err(Error::Invalid(self.invalid))
        } else if !self.too_large.is_empty() {
            Err(Error::TooLarge(self.too_large.join("; ")))
        } else {
            Ok(value)
        }
    }
}

fn namespace(v: &mut Violations, limits: &Limits, s: &str) -> Namespace {
    let n = s.chars().count();
    if n == 0 {
        v.add("namespace", "must not be empty");
    } else if n > limits.max_namespace_len {
        v.add(
            "namespace",
            format!(
                "is {n} characters, over the limit of {}",
                limits.max_namespace_len
            ),
        );
    } else if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        v.add("namespace", "may contain only a-z, 0-9, '.', '_' and '-'");
    } else if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        v.add("namespace", "must start with a letter or a digit");
    }
    Namespace::new_unchecked(s)
}

fn key(v: &mut Violations, limits: &Limits, s: &str) -> Key {
    if s.is_empty() {
        v.add("key", "must not be empty");
    } else if s.len() > limits.max_key_bytes {
        v.add(
            "key",
            format!(
                "is {} bytes, over the limit of {}",
                s.len(),
                limits.max_key_bytes
            ),
        );
    } else if s.chars().any(char::is_control) {
        v.add("key", "must not contain control characters");
    }
    Key::new_unchecked(s)
}

fn exec_key(v: &mut Violations, limits: &Limits, ns: &str, k: &str) -> ExecKey {
    ExecKey {
        namespace: namespace(v, limits, ns),
        key: key(v, limits, k),
    }
}

fn name(v: &mut Violations, limits: &Limits, field: &'static str, s: &str) -> String {
    if s.len() > limits.max_name_bytes {
        v.add(
            field,
            format!(
                "is {} bytes, over the limit of {}",
                s.len(),
                limits.max_name_bytes
            ),
        );
    }
    s.to_owned()
}

fn duration(
    v: &mut Violations,
    field: &'static str,
    d: Option<&prost_types::Duration>,
) -> Option<Duration> {
    let d = d?;
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        v.add(field, "must be a non-negative duration");
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn token(v: &mut Violations, field: &'static str, t: u64) -> u64 {
    if t == 0 || t > i64::MAX as u64 {
        v.add(field, "must be a token returned by the server");
    }
    t
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn claim_request(limits: &Limits, r: pb::ClaimRequest) -> Result<ClaimRequest, Error> {
    let mut v = Violations::default();
    let key = exec_key(&mut v, limits, &r.namespace, &r.key);
    let lease_ttl =
        duration(&mut v, "lease_ttl", r.lease_ttl.as_ref()).unwrap_or(limits.default_lease_ttl);
    if lease_ttl < limits.min_lease_ttl || lease_ttl > limits.max_lease_ttl {
        v.add(
            "lease_ttl",
            format!(
                "must be between {} and {}",
                show(limits.min_lease_ttl),
                show(limits.max_lease_ttl)
            ),
        );
    }
    let hard_ttl = duration(&mut v, "hard_ttl", r.hard_ttl.as_ref())
        .unwrap_or_else(|| limits.default_hard_ttl.max(lease_ttl));
    if hard_ttl < lease_ttl || hard_ttl > limits.max_hard_ttl {
        v.add(
            "hard_ttl",
            format!(
                "must be between lease_ttl and {}",
                show(limits.max_hard_ttl)
            ),
        );
    }
    let retention =
        duration(&mut v, "retention", r.retention.as_ref()).unwrap_or(limits.retention_default);
    if retention < Duration::from_secs(1) || retention > limits.retention_max {
        v.add(
            "retention",
            format!("must be between 1s and {}", show(limits.retention_max)),
        );
    }
    if r.fingerprint.len() > limits.max_fingerprint_bytes {
        v.add(
            "fingerprint",
            format!(
                "is {} bytes, over the limit of {}",
                r.fingerprint.len(),
                limits.max_fingerprint_bytes
            ),
        );
    }
    let holder = name(&mut v, limits, "holder", &r.holder);
    let claim_id = name(&mut v, limits, "claim_id", &r.claim_id);
    let on_lease_expiry = match pb::LeaseExpiryPolicy::try_from(r.on_lease_expiry) {
        Ok(pb::LeaseExpiryPolicy::Unspecified | pb::LeaseExpiryPolicy::Uncertain) => {
            LeaseExpiryPolicy::Uncertain
        }
        Ok(pb::LeaseExpiryPolicy::Retry) => LeaseExpiryPolicy::Retry,
        Err(_) => {
            v.add("on_lease_expiry", "unknown policy");
            LeaseExpiryPolicy::Uncertain
        }
    };
    v.finish(ClaimRequest {
        key,
        lease_ttl,
        hard_ttl,
        fingerprint: r.fingerprint,
        holder,
        claim_id,
        retention,
        on_lease_expiry,
    })
}

pub fn complete_request(limits: &Limits, r: pb::CompleteRequest) -> Result<CompleteRequest, Error> {
    use pb::complete_request::Outcome as O;
    let mut v = Violations::default();
    let key = exec_key(&mut v, limits, &r.namespace, &r.key);
    let token = token(&mut v, "token", r.token);
    if r.fingerprint.len() > limits.max_fingerprint_bytes {
        v.add("fingerprint", "is over the fingerprint limit");
    }
    let outcome = match r.outcome {
        Some(O::Success(s)) => {
            v.size(
                "success.response",
                s.response.len(),
                limits.max_response_bytes,
            );
            Outcome::Success {
                response: s.response,
            }
        }
        Some(O::Failure(f)) => {
            v.size("failure.message", f.message.len(), limits.max_message_bytes);
            let side_effects = match pb::SideEffects::try_from(f.side_effects) {
                Ok(pb::SideEffects::None) => SideEffects::None,
                // Unspecified is the safe assumption: it may have happened.
                Ok(pb::SideEffects::Unspecified | pb::SideEffects::Possible) => {
                    SideEffects::Possible
                }
                Err(_) => {
                    v.add("failure.side_effects", "unknown value");
                    SideEffects::Possible
                }
            };
            Outcome::Failure {
                message: f.message,
                retryable: f.retryable,
                side_effects,
            }
        }
        None => {
            v.add("outcome", "must be success or failure");
            Outcome::Success { response: vec![] }
        }
    };
    v.finish(CompleteRequest {
        key,
        token,
        outcome,
        fingerprint: r.fingerprint,
    })
}

/// A heartbeat that cannot be valid cannot name a live lease: it is answered LOST NOT_FOUND
/// on the stream, rather than failing the stream that carries other leases.
pub fn heartbeat_request(
    limits: &Limits,
    r: &pb::HeartbeatRequest,
) -> Result<HeartbeatRequest, String> {
    let mut v = Violations::default();
    let key = exec_key(&mut v, limits, &r.namespace, &r.key);
    let token = token(&mut v, "token", r.token);
    v.finish(HeartbeatRequest { key, token })
        .map_err(|e| e.to_string())
}

pub fn reconcile_request(
    limits: &Limits,
    r: pb::ReconcileRequest,
) -> Result<ReconcileRequest, Error> {
    use pb::reconcile_request::Resolution as R;
    let mut v = Violations::default();
    let key = exec_key(&mut v, limits, &r.namespace, &r.key);
    let expected_token = token(&mut v, "expected_token", r.expected_token);
    let operator = name(&mut v, limits, "operator", &r.operator);
    v.size("note", r.note.len(), limits.max_message_bytes);
    let resolution = match r.resolution {
        Some(R::MarkCompleted(c)) => {
            v.size(
                "mark_completed.response",
                c.response.len(),
                limits.max_response_bytes,
            );
            Resolution::MarkCompleted {
                response: c.response,
            }
        }
        Some(R::Retry(_)) => Resolution::Retry,
        Some(R::MarkFailed(f)) => {
            v.size(
                "mark_failed.message",
                f.message.len(),
                limits.max_message_bytes,
            );
            Resolution::MarkFailed { message: f.message }
        }
        None => {
            v.add("resolution", "must be mark_completed, retry or mark_failed");
            Resolution::Retry
        }
    };
    v.finish(ReconcileRequest {
        key,
        expected_token,
        resolution,
        operator,
        note: r.note,
        force: r.force,
    })
}

pub fn inspect_request(limits: &Limits, r: &pb::InspectRequest) -> Result<(ExecKey, u32), Error> {
    let mut v = Violations::default();
    let key = exec_key(&mut v, limits, &r.namespace, &r.key);
    let limit = match r.history_limit {
        0 => DEFAULT_HISTORY,
        n => n.min(MAX_HISTORY),
    };
    v.finish((key, limit))
}

pub fn list_request(limits: &Limits, r: &pb::ListExecutionsRequest) -> Result<ListRequest, Error> {
    let mut v = Violations::default();
    let namespace = namespace(&mut v, limits, &r.namespace);
    let state = match pb::ExecutionState::try_from(r.state) {
        Ok(s) => state_from_pb(s),
        Err(_) => {
            v.add("state", "unknown state");
            None
        }
    };
    let after = if r.page_token.is_empty() {
        None
    } else {
        match URL_SAFE_NO_PAD
            .decode(&r.page_token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(k) => Some(Key::new_unchecked(k)),
            None => {
                v.add("page_token", "is not a page token returned by this server");
                None
            }
        }
    };
    let page_size = match r.page_size {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    v.finish(ListRequest {
        namespace,
        state,
        page_size,
        after,
    })
}

pub fn page_token(last: &Key) -> String {
    URL_SAFE_NO_PAD.encode(last.as_str())
}

fn state_from_pb(s: pb::ExecutionState) -> Option<State> {
    match s {
        pb::ExecutionState::Unspecified => None,
        pb::ExecutionState::Running => Some(State::Running),
        pb::ExecutionState::Completed => Some(State::Completed),
        pb::ExecutionState::Failed => Some(State::Failed),
        pb::ExecutionState::Uncertain => Some(State::Uncertain),
        pb::ExecutionState::Released => Some(State::Released),
    }
}

pub fn state_to_pb(s: State) -> pb::ExecutionState {
    match s {
        State::Running => pb::ExecutionState::Running,
        State::Completed => pb::ExecutionState::Completed,
        State::Failed => pb::ExecutionState::Failed,
        State::Uncertain => pb::ExecutionState::Uncertain,
        State::Released => pb::ExecutionState::Released,
    }
}

fn reason_to_pb(r: UncertainReason) -> pb::UncertainReason {
    match r {
        UncertainReason::LeaseExpired => pb::UncertainReason::LeaseExpired,
        UncertainReason::HardDeadline => pb::UncertainReason::HardDeadline,
        UncertainReason::Reported => pb::UncertainReason::Reported,
    }
}

pub fn lost_to_pb(r: LostReason) -> pb::LostReason {
    match r {
        LostReason::Fenced => pb::LostReason::Fenced,
        LostReason::LeaseExpired => pb::LostReason::LeaseExpired,
        LostReason::HardDeadline => pb::LostReason::HardDeadline,
        LostReason::Resolved => pb::LostReason::Resolved,
        LostReason::NotFound => pb::LostReason::NotFound,
    }
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn duration_to_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn claim_response(o: ClaimOutcome) -> pb::ClaimResponse {
    use pb::claim_response::Outcome as O;
    let outcome = match o {
        ClaimOutcome::Acquired {
            token,
            attempt,
            lease_expires_at,
            hard_deadline_at,
            ttl_remaining,
        } => O::Acquired(pb::ClaimAcquired {
            token,
            attempt,
            lease_expires_at: Some(timestamp(lease_expires_at)),
            hard_deadline_at: Some(timestamp(hard_deadline_at)),
            ttl_remaining: Some(duration_to_pb(ttl_remaining)),
        }),
        ClaimOutcome::InProgress {
            holder,
            attempt,
            lease_expires_at,
            ttl_remaining,
        } => O::InProgress(pb::ClaimInProgress {
            holder,
            attempt,
            lease_expires_at: Some(timestamp(lease_expires_at)),
            ttl_remaining: Some(duration_to_pb(ttl_remaining)),
        }),
        ClaimOutcome::Completed {
            response,
            token,
            completed_at,
        } => O::Completed(pb::ClaimCompleted {
            response,
            token,
            completed_at: Some(timestamp(completed_at)),
        }),
        ClaimOutcome::Failed {
            error,
            token,
            failed_at,
        } => O::Failed(pb::ClaimFailed {
            error,
            token,
            failed_at: Some(timestamp(failed_at)),
        }),
        ClaimOutcome::Uncertain {
            reason,
            token,
            holder,
            attempt,
            error,
            since,
        } => O::Uncertain(pb::ClaimUncertain {
            reason: reason_to_pb(reason) as i32,
            token,
            holder,
            attempt,
            error,
            since: Some(timestamp(since)),
        }),
    };
    pb::ClaimResponse {
        outcome: Some(outcome),
    }
}

pub fn complete_response(r: CompleteResult) -> pb::CompleteResponse {
    pb::CompleteResponse {
        state: state_to_pb(r.state) as i32,
        token: r.token,
        late: r.late,
        resolved_at: Some(timestamp(r.resolved_at)),
    }
}

pub fn reconcile_response(r: ReconcileResult) -> pb::ReconcileResponse {
    pb::ReconcileResponse {
        state: state_to_pb(r.state) as i32,
        token: r.token,
    }
}

pub fn execution(v: ExecutionView) -> pb::Execution {
    let r = v.record;
    pb::Execution {
        namespace: v.key.namespace.as_str().to_owned(),
        key: v.key.key.as_str().to_owned(),
        state: state_to_pb(v.effective.state) as i32,
        token: r.token,
        attempt: r.attempt,
        holder: r.holder,
        fingerprint: r.fingerprint,
        uncertain_reason: v
            .effective
            .uncertain_reason
            .filter(|_| v.effective.state == State::Uncertain)
            .map_or(pb::UncertainReason::Unspecified, reason_to_pb)
            as i32,
        response: r.response.unwrap_or_default(),
        error: r.error.unwrap_or_default(),
        lease_expires_at: Some(timestamp(r.lease_expires_at)),
        hard_deadline_at: Some(timestamp(r.hard_deadline_at)),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        retention_until: r.retention_until.map(timestamp),
    }
}

pub fn history_event(e: HistoryEvent) -> pb::HistoryEvent {
    pb::HistoryEvent {
        at: Some(timestamp(e.at)),
        token: e.token,
        from_state: e.from.map_or(pb::ExecutionState::Unspecified, state_to_pb) as i32,
        to_state: state_to_pb(e.to) as i32,
        reason: e.reason,
        actor: e.actor,
        note: e.note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ns: &str, key: &str) -> pb::ClaimRequest {
        pb::ClaimRequest {
            namespace: ns.into(),
            key: key.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_applied() {
        let r = claim_request(&Limits::default(), claim("payments", "k")).unwrap();
        assert_eq!(r.lease_ttl, Duration::from_secs(30));
        assert_eq!(r.hard_ttl, Duration::from_secs(3600));
        assert_eq!(r.retention, Duration::from_secs(86400));
    }

    #[test]
    fn namespace_rules() {
        let l = Limits::default();
        for bad in ["", "Upper", "-start", "has space", &"a".repeat(65)] {
            assert!(
                matches!(claim_request(&l, claim(bad, "k")), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
        for good in ["a", "0.x_y-z", &"a".repeat(64)] {
            assert!(claim_request(&l, claim(good, "k")).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn key_rules() {
        let l = Limits::default();
        for bad in ["", "tab\there", &"k".repeat(513)] {
            assert!(
                matches!(claim_request(&l, claim("ns", bad)), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(claim_request(&l, claim("ns", "ünïcode:with/separators")).is_ok());
    }

    #[test]
    fn hard_ttl_defaults_to_at_least_lease() {
        let limits = Limits {
            default_hard_ttl: Duration::from_secs(60),
            ..Limits::default()
        };
        let mut r = claim("ns", "k");
        r.lease_ttl = Some(duration_to_pb(Duration::from_secs(120)));
        let c = claim_request(&limits, r).unwrap();
        assert_eq!(c.hard_ttl, Duration::from_secs(120));
    }
}
