//! Reconcile: an operator or a reconciler resolves an execution by compare-and-set.

use super::claim::to_chrono;
use super::model::*;
use super::{Rejection, Write};

/// Decides a reconcile. Every accepted reconcile bumps the token, fencing any zombie worker.
pub fn decide_reconcile(
    req: &ReconcileRequest,
    current: Option<&Record>,
    now: Timestamp,
) -> Result<(ReconcileResult, Write), Rejection> {
    let rec = current
        .filter(|r| !r.retention_over(now))
        .ok_or(Rejection::NotFound)?;
    let eff = rec.effective(now);
    if rec.token != req.expected_token {
        return Err(Rejection::Fenced {
            given: req.expected_token,
            current: rec.token,
            state: eff.state,
        });
    }
    let forced = match eff.state {
        State::Uncertain | State::Failed => false,
        State::Running if req.force => true,
        State::Running => {
            return Err(Rejection::NotReconcilable {
                state: State::Running,
                hint: " without force: the lease is live",
            })
        }
        state @ (State::Completed | State::Released) => {
            return Err(Rejection::NotReconcilable { state, hint: "" })
        }
    };

    let mut next = rec.clone();
    next.token = rec.token + 1;
    next.updated_at = now;
    next.uncertain_reason = None;
    match &req.resolution {
        Resolution::MarkCompleted { response } => {
            next.state = State::Completed;
            next.response = Some(response.clone());
            next.retention_until = Some(now + to_chrono(rec.retention));
        }
        Resolution::Retry => {
            next.state = State::Released;
            next.retention_until = None;
        }
        Resolution::MarkFailed { message } => {
            next.state = State::Failed;
            next.error = Some(message.clone());
            next.retention_until = Some(now + to_chrono(rec.retention));
        }
    }
    let event = Event {
        key: req.key.clone(),
        token: next.token,
        from: Some(eff.state),
        to: next.state,
        reason: if forced {
            "forced_reconcile"
        } else {
            "reconcile"
        },
        actor: req.operator.clone(),
        note: req.note.clone(),
    };
    Ok((
        ReconcileResult {
            state: next.state,
            token: next.token,
        },
        Write {
            expected_token: rec.token,
            record: next,
            event,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests_support::*;

    fn req(token: Token, force: bool) -> ReconcileRequest {
        ReconcileRequest {
            key: key("k"),
            expected_token: token,
            resolution: Resolution::Retry,
            operator: "op".into(),
            note: String::new(),
            force,
        }
    }

    #[test]
    fn live_lease_needs_force_and_token_bumps() {
        let now = t0();
        let rec = running(5, now, 30);
        assert!(matches!(
            decide_reconcile(&req(5, false), Some(&rec), now),
            Err(Rejection::NotReconcilable { .. })
        ));
        let (res, _) = decide_reconcile(&req(5, true), Some(&rec), now).unwrap();
        assert_eq!((res.state, res.token), (State::Released, 6));
        assert!(matches!(
            decide_reconcile(&req(4, true), Some(&rec), now),
            Err(Rejection::Fenced { .. })
        ));
    }
}
