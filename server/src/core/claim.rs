//! Claim: acquire, replay, or report who holds the key.

use std::time::Duration;

use super::model::*;
use super::{Rejection, Write};

/// What a claim does, given the record it found.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimDecision {
    /// No record (or only one past retention that the store will replace): insert this one.
    /// The store assigns its token, above any token the key ever had.
    Create {
        record: Record,
        event: Event,
    },
    /// Acquire an existing record: after a release, a takeover or the end of retention.
    Acquire(Write),
    /// Report without writing.
    Reply(ClaimOutcome),
    Reject(Rejection),
}

fn fresh_lease(req: &ClaimRequest, now: Timestamp) -> (Timestamp, Timestamp) {
    let hard = now + to_chrono(req.hard_ttl);
    let lease = (now + to_chrono(req.lease_ttl)).min(hard);
    (lease, hard)
}

pub(crate) fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Acquired outcome for a record that the caller now holds.
pub fn acquired(record: &Record, now: Timestamp) -> ClaimOutcome {
    ClaimOutcome::Acquired {
        token: record.token,
        attempt: record.attempt,
        lease_expires_at: record.lease_expires_at,
        hard_deadline_at: record.hard_deadline_at,
        ttl_remaining: record.ttl_remaining(now),
    }
}

/// Decides a claim against the current record (read under a row lock) at database time `now`.
pub fn decide_claim(req: &ClaimRequest, current: Option<&Record>, now: Timestamp) -> ClaimDecision {
    let (lease_expires_at, hard_deadline_at) = fresh_lease(req, now);
    let new_holder =
        |token: Token, attempt: u32, fingerprint: Vec<u8>, created_at: Timestamp| Record {
            state: State::Running,
            token,
            attempt,
            fingerprint,
            holder: req.holder.clone(),
            claim_id: req.claim_id.clone(),
            lease_ttl: req.lease_ttl,
            lease_expires_at,
            hard_deadline_at,
            uncertain_reason: None,
            response: None,
            error: None,
            retention: req.retention,
            retention_until: None,
            created_at,
            updated_at: now,
        };
    let event = |token: Token, from: Option<State>, reason: &'static str| Event {
        key: req.key.clone(),
        token,
        from,
        to: State::Running,
        reason,
        actor: req.holder.clone(),
        note: String::new(),
    };

    let Some(rec) = current else {
        return ClaimDecision::Create {
            record: new_holder(0, 1, req.fingerprint.clone(), now),
            event: event(0, None, "claim"),
        };
    };

    // A record past retention is forgotten: a new execution starts, with a fresh fingerprint,
    // but its token still continues above the old one.
    if rec.retention_over(now) {
        let token = rec.token + 1;
        return ClaimDecision::Acquire(Write {
            expected_token: rec.token,
            record: new_holder(token, 1, req.fingerprint.clone(), now),
            event: event(token, None, "claim_after_retention"),
        });
    }

    // The fingerprint is checked on every path, including replays (Powertools skipped it).
    if rec.fingerprint != req.fingerprint {
        return ClaimDecision::Reject(Rejection::FingerprintMismatch);
    }

    let eff = rec.effective(now);
    let takeover = |reason: &'static str| {
        let token = rec.token + 1;
        ClaimDecision::Acquire(Write {
            expected_token: rec.token,
            record: new_holder(
                token,
                rec.attempt + 1,
                rec.fingerprint.clone(),
                rec.created_at,
            ),
            event: event(token, Some(eff.state), reason),
        })
    };
    let uncertain = |reason: UncertainReason, since: Timestamp| {
        ClaimDecision::Reply(ClaimOutcome::Uncertain {
            reason,
            token: rec.token,
            holder: rec.holder.clone(),
            attempt: rec.attempt,
            error: rec.error.clone().unwrap_or_default(),
            since,
        })
    };

    match eff.state {
        State::Released => takeover("claim_after_release"),
        State::Completed => ClaimDecision::Reply(ClaimOutcome::Completed {
            response: rec.response.clone().unwrap_or_default(),
            token: rec.token,
            completed_at: rec.updated_at,
        }),
        State::Failed => ClaimDecision::Reply(ClaimOutcome::Failed {
            error: rec.error.clone().unwrap_or_default(),
            token: rec.token,
            failed_at: rec.updated_at,
        }),
        State::Running => {
            // The same claim retried (timeout, dropped connection): same answer as the first try.
            if !req.claim_id.is_empty() && req.claim_id == rec.claim_id {
                ClaimDecision::Reply(acquired(rec, now))
            } else {
                ClaimDecision::Reply(ClaimOutcome::InProgress {
                    holder: rec.holder.clone(),
                    attempt: rec.attempt,
                    lease_expires_at: rec.lease_expires_at,
                    ttl_remaining: rec.ttl_remaining(now),
                })
            }
        }
        State::Uncertain => {
            let reason = eff.uncertain_reason.unwrap_or(UncertainReason::Reported);
            if reason.is_expiry() && req.on_lease_expiry == LeaseExpiryPolicy::Retry {
                return takeover("takeover");
            }
            // An expired lease became uncertain when it expired, not when it was noticed.
            let since = if rec.state == State::Running {
                match reason {
                    UncertainReason::HardDeadline => rec.hard_deadline_at,
                    _ => rec.lease_expires_at,
                }
            } else {
                rec.updated_at
            };
            uncertain(reason, since)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests_support::*;

    #[test]
    fn absent_record_is_created() {
        let now = t0();
        let d = decide_claim(&claim_req("k"), None, now);
        assert!(matches!(d, ClaimDecision::Create { ref record, .. } if record.attempt == 1));
    }

    #[test]
    fn live_lease_is_in_progress_and_same_claim_id_is_acquired_again() {
        let now = t0();
        let rec = running(7, now, 30);
        let mut req = claim_req("k");
        assert!(matches!(
            decide_claim(&req, Some(&rec), now),
            ClaimDecision::Reply(ClaimOutcome::InProgress { .. })
        ));
        req.claim_id = rec.claim_id.clone();
        assert!(matches!(
            decide_claim(&req, Some(&rec), now),
            ClaimDecision::Reply(ClaimOutcome::Acquired { token: 7, .. })
        ));
    }

    #[test]
    fn expired_lease_is_uncertain_unless_retry() {
        let now = t0();
        let rec = running(7, now - secs(60), 30);
        let mut req = claim_req("k");
        assert!(matches!(
            decide_claim(&req, Some(&rec), now),
            ClaimDecision::Reply(ClaimOutcome::Uncertain {
                reason: UncertainReason::LeaseExpired,
                token: 7,
                ..
            })
        ));
        req.on_lease_expiry = LeaseExpiryPolicy::Retry;
        match decide_claim(&req, Some(&rec), now) {
            ClaimDecision::Acquire(w) => {
                assert_eq!(w.record.token, 8);
                assert_eq!(w.record.attempt, 2);
                assert_eq!(w.expected_token, 7);
            }
            other => panic!("expected takeover, got {other:?}"),
        }
    }

    #[test]
    fn fingerprint_checked_on_replay() {
        let now = t0();
        let mut rec = running(3, now, 30);
        rec.state = State::Completed;
        rec.retention_until = Some(now + secs(100));
        let mut req = claim_req("k");
        req.fingerprint = b"other".to_vec();
        assert_eq!(
            decide_claim(&req, Some(&rec), now),
            ClaimDecision::Reject(Rejection::FingerprintMismatch)
        );
    }

    #[test]
    fn retention_end_makes_key_claimable_with_larger_token() {
        let now = t0();
        let mut rec = running(3, now - secs(1000), 30);
        rec.state = State::Completed;
        rec.retention_until = Some(now - secs(1));
        match decide_claim(&claim_req("k"), Some(&rec), now) {
            ClaimDecision::Acquire(w) => assert_eq!((w.record.token, w.record.attempt), (4, 1)),
            other => panic!("expected acquire, got {other:?}"),
        }
    }
}
