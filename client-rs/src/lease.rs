//! The lease context handed to the work of `once`: its fencing token and its cancellation.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::LostReason;

/// Why a lease was lost. The work's context is cancelled at the same moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseLoss {
    /// The server said the lease is gone (fenced by a reconcile or a takeover, expired, ...).
    Lost {
        /// The server's reason.
        reason: LostReason,
        /// The server's human-readable explanation.
        detail: String,
    },
    /// No ALIVE arrived before the local monotonic deadline: the stream stalled, broke, or the
    /// server is unreachable. The lease may still be alive on the server, but this worker can
    /// no longer prove it, so it must stop before someone else may take over.
    DeadlineMissed,
}

impl fmt::Display for LeaseLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lost { reason, detail } if detail.is_empty() => {
                write!(f, "lease lost: {reason:?}")
            }
            Self::Lost { reason, detail } => write!(f, "lease lost: {reason:?} ({detail})"),
            Self::DeadlineMissed => {
                f.write_str("lease lost: no heartbeat reply before the deadline")
            }
        }
    }
}

/// State shared between a [`Lease`] and the heartbeat task.
#[derive(Debug)]
pub(crate) struct LeaseShared {
    cancel: CancellationToken,
    loss: OnceLock<LeaseLoss>,
    deadline: Mutex<Instant>,
}

impl LeaseShared {
    pub(crate) fn new(deadline: Instant) -> Self {
        Self {
            cancel: CancellationToken::new(),
            loss: OnceLock::new(),
            deadline: Mutex::new(deadline),
        }
    }

    /// Records the first loss and cancels; later losses are ignored.
    pub(crate) fn lose(&self, loss: LeaseLoss) {
        let _ = self.loss.set(loss);
        self.cancel.cancel();
    }

    pub(crate) fn set_deadline(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }
}

/// The context of one acquired execution, handed to the work of [`Client::once`].
///
/// Pass [`token`](Lease::token) to downstream writes so they can fence stale workers, and stop
/// when [`cancelled`](Lease::cancelled) resolves: the lease is lost (or cannot be proven alive)
/// and whatever the work does next may race with another worker or an operator.
///
/// [`Client::once`]: crate::Client::once
#[derive(Clone)]
pub struct Lease {
    namespace: Arc<str>,
    key: Arc<str>,
    token: u64,
    attempt: u32,
    shared: Arc<LeaseShared>,
}

impl Lease {
    pub(crate) fn new(
        namespace: Arc<str>,
        key: Arc<str>,
        token: u64,
        attempt: u32,
        shared: Arc<LeaseShared>,
    ) -> Self {
        Self {
            namespace,
            key,
            token,
            attempt,
            shared,
        }
    }

    /// The fencing token of this lease.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The attempt number of the execution, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The namespace of the execution.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key of the execution.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Resolves when the lease is lost or can no longer be proven alive. Cancellation-safe.
    pub async fn cancelled(&self) {
        self.shared.cancel.cancelled().await
    }

    /// Whether the lease is lost.
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// A token cancelled when the lease is lost, for code built on `tokio_util`. Cancelling it
    /// yourself does not affect the lease.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.shared.cancel.child_token()
    }

    /// Why the lease was lost, once it was.
    pub fn loss(&self) -> Option<LeaseLoss> {
        self.shared.loss.get().cloned()
    }

    /// The local monotonic deadline: if no heartbeat reply extends the lease before it, the
    /// context is cancelled. It is kept a margin ahead of the server's expiry.
    pub fn deadline(&self) -> Instant {
        *self
            .shared
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("namespace", &self.namespace)
            .field("key", &self.key)
            .field("token", &self.token)
            .field("attempt", &self.attempt)
            .field("loss", &self.shared.loss.get())
            .finish()
    }
}
