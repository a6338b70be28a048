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

    let res = completion_effect(&req.outcome, late);
    let mut next = rec.clone();
    next.updated_at = now;
    next.state = res.state;
    next.uncertain_reason = res.uncertain_reason;
    if let Some(response) = res.response {
        next.response = Some(response.to_vec());
    }
    next.error = res.error.map(str::to_owned);
    if res.starts_retention {
        next.retention_until = Some(now + to_chrono(rec.retention));
    }
    let reason = res.reason;
    let note = res.note.to_owned();
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

/// What a completion writes over its record, as a function of the outcome alone.
///
/// `decide_complete` applies it to the record it read; the store's one-statement path for
/// live leases (`store::sql::COMPLETE_LIVE`) sends it with the request and applies it in the
/// database, guarded by exactly the conditions under which `decide_complete` would take
/// the non-late branch (current token, RUNNING, lease live at the database clock, matching
/// fingerprint).
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionEffect<'a> {
    pub state: State,
    pub uncertain_reason: Option<UncertainReason>,
    /// The response to store; `None` leaves the stored one as it is.
    pub response: Option<&'a [u8]>,
    pub error: Option<&'a str>,
    /// COMPLETED and FAILED start their retention at the completion time.
    pub starts_retention: bool,
    /// The history event's reason.
    pub reason: &'static str,
    pub note: &'a str,
}

pub fn completion_effect(outcome: &Outcome, late: bool) -> CompletionEffect<'_> {
    let pick = |on_time, when_late| if late { when_late } else { on_time };
    match outcome {
        Outcome::Success { response } => CompletionEffect {
            state: State::Completed,
            uncertain_reason: None,
            response: Some(response),
            error: None,
            starts_retention: true,
            reason: pick("complete", "late_complete"),
            note: "",
        },
        Outcome::Failure {
            message,
            retryable,
            side_effects,
        } => {
            let (state, uncertain_reason, starts_retention, reason) =
                match (side_effects, retryable) {
                    (SideEffects::None, true) => (
                        State::Released,
                        None,
                        false,
                        pick("release", "late_release"),
                    ),
                    (SideEffects::None, false) => {
                        (State::Failed, None, true, pick("fail", "late_fail"))
                    }
                    (SideEffects::Possible, _) => (
                        State::Uncertain,
                        Some(UncertainReason::Reported),
                        false,
                        pick("report_uncertain", "late_report_uncertain"),
                    ),
                };
            CompletionEffect {
                state,
                uncertain_reason,
                response: None,
                error: Some(message),
                starts_retention,
                reason,
                note: message,
            }
        }
    }
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
