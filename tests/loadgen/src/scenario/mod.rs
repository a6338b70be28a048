//! The scenarios. `unary` holds those made of Claim and Complete calls; `heartbeat` holds
//! the live-lease renewal scenario.

pub mod heartbeat;
pub mod unary;

use std::future::Future;
use std::time::Duration;

use crate::stats::Recorder;

/// Runs `n` callers as tasks and merges what they recorded.
pub(crate) async fn callers<F, Fut>(n: usize, caller: F) -> Recorder
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Recorder> + Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(caller(i))).collect();
    let mut total = Recorder::default();
    for h in handles {
        match h.await {
            Ok(rec) => total.merge(rec),
            Err(e) => total.error("panic", format!("a caller task failed: {e}")),
        }
    }
    total
}

/// A prefix unique to this run, so that keys of new executions never collide with those of an
/// earlier run in the same namespace.
pub(crate) fn run_prefix(kind: char) -> String {
    format!("{kind}-{:08x}-", rand::random::<u32>())
}

/// After an error, a caller pauses briefly so that a dead server is not hammered in a loop.
pub(crate) async fn pause_after_error() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// A small, fast, per-caller random number generator (xorshift64*); the quality needed here
/// is "spread the picks over the keys", nothing more.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Rng {
        Rng(rand::random::<u64>() | 1)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}
