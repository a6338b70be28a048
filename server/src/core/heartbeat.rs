//! Heartbeat: the store extends a lease in one fenced statement; when it did not, this
//! explains why from the record as the same statement saw it.

use super::model::*;

/// Why a heartbeat for `token` could not extend the lease of `current` at `now`.
///
/// Called only when the fenced update touched no row. If the snapshot still looks live the
/// row changed under the update (a concurrent takeover or reconcile), which is a fence.
pub fn classify_lost(token: Token, current: Option<&Record>, now: Timestamp) -> LostReason {
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
}
