//! Which heartbeat streams of this replica carry which leases, so that a LOST can be pushed
//! the moment this replica supersedes a token (takeover, reconcile), without waiting for
//! the holder's next heartbeat. Other replicas' holders learn at their next heartbeat,
//! which the store fences in any case: this registry is a latency optimisation, never a
//! source of truth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::core::{ExecKey, LostReason, Token};

/// A push to one stream: the lease (key, token) is lost for `reason`.
pub type Push = (ExecKey, Token, LostReason, String);

struct Registration {
    token: Token,
    stream: u64,
    push: mpsc::Sender<Push>,
    /// After this, with no ALIVE since, the registration is pruned.
    valid_until: Instant,
}

#[derive(Default)]
pub struct LeaseRegistry {
    by_key: Mutex<HashMap<ExecKey, Vec<Registration>>>,
}

/// Registrations outlive their last ALIVE by this much before they are pruned.
const GRACE: Duration = Duration::from_secs(5);

impl LeaseRegistry {
    /// Records that `stream` renewed (key, token) until `ttl` from now.
    pub fn alive(
        &self,
        key: &ExecKey,
        token: Token,
        stream: u64,
        push: &mpsc::Sender<Push>,
        ttl: Duration,
    ) {
        let valid_until = Instant::now() + ttl + GRACE;
        let mut map = self.by_key.lock().expect("lease registry poisoned");
        let regs = map.entry(key.clone()).or_default();
        if let Some(r) = regs
            .iter_mut()
            .find(|r| r.stream == stream && r.token == token)
        {
            r.valid_until = valid_until;
        } else {
            regs.push(Registration {
                token,
                stream,
                push: push.clone(),
                valid_until,
            });
        }
    }

    /// Forgets (key, token) on `stream` after it was reported LOST there.
    pub fn forget(&self, key: &ExecKey, token: Token, stream: u64) {
        let mut map = self.by_key.lock().expect("lease registry poisoned");
        if let Some(regs) = map.get_mut(key) {
            regs.retain(|r| !(r.stream == stream && r.token == token));
            if regs.is_empty() {
                map.remove(key);
            }
        }
    }

    /// Forgets every lease of (key, token) on any stream: it was completed.
    pub fn resolved(&self, key: &ExecKey, token: Token) {
        let mut map = self.by_key.lock().expect("lease registry poisoned");
        if let Some(regs) = map.get_mut(key) {
            regs.retain(|r| r.token != token);
            if regs.is_empty() {
                map.remove(key);
            }
        }
    }

    /// The token of `key` is now `new_token`: every stream holding an older one is told.
    pub fn superseded(&self, key: &ExecKey, new_token: Token) {
        let mut map = self.by_key.lock().expect("lease registry poisoned");
        let Some(regs) = map.get_mut(key) else { return };
        regs.retain(|r| {
            if r.token < new_token {
                let detail = format!("token {} is superseded by token {new_token}", r.token);
                // A full or closed stream learns at its next heartbeat instead.
                let _ = r
                    .push
                    .try_send((key.clone(), r.token, LostReason::Fenced, detail));
                false
            } else {
                true
            }
        });
        if regs.is_empty() {
            map.remove(key);
        }
    }

    /// Forgets everything of a stream that ended.
    pub fn stream_closed(&self, stream: u64) {
        let mut map = self.by_key.lock().expect("lease registry poisoned");
        map.retain(|_, regs| {
            regs.retain(|r| r.stream != stream);
            !regs.is_empty()
        });
    }

    /// Drops registrations whose lease ended long ago without a LOST (holders that simply
    /// stopped heartbeating after completing elsewhere).
    pub fn prune(&self) {
        let now = Instant::now();
        let mut map = self.by_key.lock().expect("lease registry poisoned");
        map.retain(|_, regs| {
            regs.retain(|r| r.valid_until > now);
            !regs.is_empty()
        });
    }

    /// Number of leases registered, for the live-leases metric.
    pub fn len(&self) -> usize {
        self.by_key
            .lock()
            .expect("lease registry poisoned")
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
