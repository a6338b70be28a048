//! Heartbeat: the store extends a lease in one fenced statement; when it did not, this
//! explains why from the record as the same statement saw it.

use super::model::*;

/// Why a heartbeat for `token` could not extend the lease of `current` at `now`, read after
/// the fenced update touched no row. `None` when the lease is still live under this token:
/// the row was busy (locked by another transaction), so the lease was neither renewed nor
/// lost, and no answer is the truthful one.
pub fn classify_lost(token: Token, current: Option<&Record>, now: Timestamp) -> Option<LostReason> {
    let reason = classify(token, current, now);
    (reason != LostReason::Fenced || current.is_none_or(|r| r.token != token)).then_some(reason)
}

fn classify(token: Token, current: Option<&Record>, now: Timestamp) -> LostReason {
    let Some(rec) = current else {
        return LostReason::NotFound;
    };
    if rec.token != token {
        return LostReason::Fenced;
    }
    match rec.effective(now) {
        Effective {
            state: State::Uncertain,
            uncertain_reason: Some(UncertainReason::LeaseExpired),
        } => LostReason::LeaseExpired,
        Effective {
            state: State::Uncertain,
            uncertain_reason: Some(UncertainReason::HardDeadline),
        } => LostReason::HardDeadline,
        Effective {
            state: State::Running,
            ..
        } => LostReason::Fenced,
        _ => LostReason::Resolved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests_support::*;

    #[test]
    fn reasons() {
        let now = t0();
        let classify_lost = |t, r, n| classify_lost(t, r, n).expect("a reason");
        assert_eq!(classify_lost(1, None, now), LostReason::NotFound);
        let rec = running(5, now - secs(100), 30);
        assert_eq!(classify_lost(4, Some(&rec), now), LostReason::Fenced);
        assert_eq!(classify_lost(5, Some(&rec), now), LostReason::LeaseExpired);
        let mut capped = running(5, now - secs(100), 30);
        capped.hard_deadline_at = now - secs(1);
        capped.lease_expires_at = capped.hard_deadline_at;
        assert_eq!(
            classify_lost(5, Some(&capped), now),
            LostReason::HardDeadline
        );
        let mut done = running(5, now, 30);
        done.state = State::Completed;
        assert_eq!(classify_lost(5, Some(&done), now), LostReason::Resolved);
    }

    #[test]
    fn a_live_lease_that_was_not_renewed_gets_no_answer() {
        let now = t0();
        let live = running(5, now, 30);
        assert_eq!(super::classify_lost(5, Some(&live), now), None);
        assert_eq!(
            super::classify_lost(4, Some(&live), now),
            Some(LostReason::Fenced)
        );
    }
}
