//! Complete: store the outcome of the work done under a token.

use super::claim::to_chrono;
use super::model::*;
use super::{Rejection, Write};

/// Decides a completion. `Ok((result, None))` is an idempotent repeat that writes nothing.
pub fn decide_complete(
    req: &CompleteRequest,
    current: Option<&Record>,
    now: Timestamp,
) -> Result<(CompleteResult, Option<Write>), Rejection> {
    // A record past retention is forgotten, even before the sweeper deletes it.
    let rec = current
        .filter(|r| !r.retention_over(now))
        .ok_or(Rejection::NotFound)?;
    if !req.fingerprint.is_empty() && req.fingerprint != rec.fingerprint {
        return Err(Rejection::FingerprintMismatch);
    }
    let eff = rec.effective(now);
    // Fencing: only the current token may write. A takeover or a reconcile bumped it.
    if rec.token != req.token {
        return Err(Rejection::Fenced {
            given: req.token,
            current: rec.token,
            state: eff.state,
        });
    }

    let late = match (eff.state, eff.uncertain_reason) {
        (State::Running, _) => false,
        // Late completion: the lease expired, but nobody took over or reconciled since (the
        // token is still current), so nobody else can have acted on this execution.
        (State::Uncertain, Some(r)) if r.is_expiry() => true,
        (state, reason) => {
            return if repeats_resolution(rec, state, reason, &req.outcome) {
                Ok((
                    CompleteResult {
                        state,
                        token: rec.token,
                        late: false,
                        resolved_at: rec.updated_at,
                    },
                    None,
                ))
            } else {
                Err(Rejection::AlreadyResolved { state })
            };
        }
    };

    let mut next = rec.clone();
    next.updated_at = now;
    next.uncertain_reason = None;
    let reason: &'static str;
    let mut note = String::new();
    match &req.outcome {
        Outcome::Success { response } => {
            next.state = State::Completed;
            next.response = Some(response.clone());
            next.error = None;
            next.retention_until = Some(now + to_chrono(rec.retention));
            reason = if late { "late_complete" } else { "complete" };
        }
        Outcome::Failure {
            message,
            retryable,
            side_effects,
        } => {
            next.error = Some(message.clone());
            note = message.clone();
            match (side_effects, retryable) {
                (SideEffects::None, true) => {
                    next.state = State::Released;
                    reason = if late { "late_release" } else { "release" };
                }
                (SideEffects::None, false) => {
                    next.state = State::Failed;
                    next.retention_until = Some(now + to_chrono(rec.retention));
                    reason = if late { "late_fail" } else { "fail" };
                }
                (SideEffects::Possible, _) => {
                    next.state = State::Uncertain;
                    next.uncertain_reason = Some(UncertainReason::Reported);
                    reason = if late {
                        "late_report_uncertain"
                    } else {
                        "report_uncertain"
                    };
                }
            }
        }
    }
    let result = CompleteResult {
        state: next.state,
        token: rec.token,
        late,
        resolved_at: now,
    };
    let event = Event {
        key: req.key.clone(),
        token: rec.token,
        from: Some(eff.state),
        to: next.state,
        reason,
        actor: rec.holder.clone(),
        note,
    };
    Ok((
        result,
        Some(Write {
            expected_token: rec.token,
            record: next,
            event,
        }),
    ))
}

/// Whether `outcome` is exactly the outcome already stored under this token.
fn repeats_resolution(
    rec: &Record,
    state: State,
    reason: Option<UncertainReason>,
    outcome: &Outcome,
) -> bool {
    let same_error = |m: &String| rec.error.as_deref() == Some(m.as_str());
    match (state, outcome) {
        (State::Completed, Outcome::Success { response }) => {
            rec.response.as_deref() == Some(response.as_slice())
        }
        (
            State::Failed,
            Outcome::Failure {
                message,
                side_effects: SideEffects::None,
                retryable: false,
            },
        ) => same_error(message),
        (
            State::Released,
            Outcome::Failure {
                message,
                side_effects: SideEffects::None,
                retryable: true,
            },
        ) => same_error(message),
        (
            State::Uncertain,
            Outcome::Failure {
                message,
                side_effects: SideEffects::Possible,
                ..
            },
        ) => reason == Some(UncertainReason::Reported) && same_error(message),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests_support::*;

    fn success(token: Token, body: &[u8]) -> CompleteRequest {
        CompleteRequest {
            key: key("k"),
            token,
            outcome: Outcome::Success {
                response: body.to_vec(),
            },
            fingerprint: vec![],
        }
    }

    #[test]
    fn stale_token_is_fenced() {
        let now = t0();
        let rec = running(5, now, 30);
        assert!(matches!(
            decide_complete(&success(4, b"x"), Some(&rec), now),
            Err(Rejection::Fenced {
                given: 4,
                current: 5,
                ..
            })
        ));
    }

    #[test]
    fn late_completion_while_token_current() {
        let now = t0();
        let rec = running(5, now - secs(100), 30);
        let (res, write) = decide_complete(&success(5, b"x"), Some(&rec), now).unwrap();
        assert!(res.late);
        assert_eq!(res.state, State::Completed);
        assert_eq!(write.unwrap().event.reason, "late_complete");
    }

    #[test]
    fn repeat_is_idempotent_and_different_outcome_rejected() {
        let now = t0();
        let rec = running(5, now, 30);
        let (_, write) = decide_complete(&success(5, b"x"), Some(&rec), now).unwrap();
        let done = write.unwrap().record;
        let (res, w2) = decide_complete(&success(5, b"x"), Some(&done), now).unwrap();
        assert!(w2.is_none());
        assert_eq!(res.state, State::Completed);
        assert_eq!(
            decide_complete(&success(5, b"y"), Some(&done), now),
            Err(Rejection::AlreadyResolved {
                state: State::Completed
            })
        );
    }

    #[test]
    fn failure_kinds() {
        let now = t0();
        let rec = running(5, now, 30);
        let fail = |retryable, side_effects| CompleteRequest {
            key: key("k"),
            token: 5,
            outcome: Outcome::Failure {
                message: "m".into(),
                retryable,
                side_effects,
            },
            fingerprint: vec![],
        };
        let state = |r: CompleteRequest| decide_complete(&r, Some(&rec), now).unwrap().0.state;
        assert_eq!(state(fail(true, SideEffects::None)), State::Released);
        assert_eq!(state(fail(false, SideEffects::None)), State::Failed);
        assert_eq!(state(fail(true, SideEffects::Possible)), State::Uncertain);
    }
}
