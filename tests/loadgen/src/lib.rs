//! Load generator for Sentinel.
//!
//! Each scenario runs `--concurrency` callers for a warmup and a measured window and returns a
//! [`Report`]: throughput, latency percentiles, outcome counts, errors, and the scenario's
//! invariants (no key acquired twice under contention, no spurious LOST for live leases).
//! The binary prints it as a table and, with `--json`, as one JSON line for scripts.

pub mod config;
mod driver;
mod scenario;
pub mod stats;

pub use config::{Config, DriverKind, Scenario};
pub use stats::{Latency, Report};

/// Runs one scenario against `config.addr`.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    config.validate()?;
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| format!("loadgen-{:08x}", rand::random::<u32>()));
    match config.scenario {
        Scenario::Fresh => scenario::unary::fresh(config, &namespace).await,
        Scenario::Replay => scenario::unary::replay(config, &namespace).await,
        Scenario::Contention => scenario::unary::contention(config, &namespace).await,
        Scenario::Once => scenario::unary::once(config, &namespace).await,
        Scenario::Heartbeat => scenario::heartbeat::run(config, &namespace).await,
    }
}
