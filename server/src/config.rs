//! Configuration: command-line flags, each with a `SENTINEL_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// Validation limits and defaults (DESIGN.md, "Errors" and "Defaults").
#[derive(Clone, Debug, Args)]
pub struct Limits {
    /// Maximum namespace length in characters.
    #[arg(long, env = "SENTINEL_MAX_NAMESPACE_LEN", default_value_t = 64)]
    pub max_namespace_len: usize,
    /// Maximum key length in bytes.
    #[arg(long, env = "SENTINEL_MAX_KEY_BYTES", default_value_t = 512)]
    pub max_key_bytes: usize,
    /// Shortest lease a claim may ask for.
    #[arg(long, env = "SENTINEL_MIN_LEASE_TTL", default_value = "100ms", value_parser = parse_duration)]
    pub min_lease_ttl: Duration,
    /// Longest lease a claim may ask for.
    #[arg(long, env = "SENTINEL_MAX_LEASE_TTL", default_value = "1h", value_parser = parse_duration)]
    pub max_lease_ttl: Duration,
    /// Lease used when a claim does not set one.
    #[arg(long, env = "SENTINEL_DEFAULT_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub default_lease_ttl: Duration,
    /// Hard deadline used when a claim does not set one (never below its lease).
    #[arg(long, env = "SENTINEL_DEFAULT_HARD_TTL", default_value = "1h", value_parser = parse_duration)]
    pub default_hard_ttl: Duration,
    /// Longest hard deadline a claim may ask for.
    #[arg(long, env = "SENTINEL_MAX_HARD_TTL", default_value = "7d", value_parser = parse_duration)]
    pub max_hard_ttl: Duration,
    /// Retention of completed and failed outcomes when a claim does not set one.
    #[arg(long, env = "SENTINEL_RETENTION_DEFAULT", default_value = "24h", value_parser = parse_duration)]
    pub retention_default: Duration,
    /// Longest retention a claim may ask for.
    #[arg(long, env = "SENTINEL_RETENTION_MAX", default_value = "30d", value_parser = parse_duration)]
    pub retention_max: Duration,
    /// Largest stored response, in bytes.
    #[arg(long, env = "SENTINEL_MAX_RESPONSE_BYTES", default_value_t = 1 << 20)]
    pub max_response_bytes: usize,
    /// Largest fingerprint, in bytes.
    #[arg(long, env = "SENTINEL_MAX_FINGERPRINT_BYTES", default_value_t = 64)]
    pub max_fingerprint_bytes: usize,
    /// Largest holder, operator or claim id, in bytes.
    #[arg(long, env = "SENTINEL_MAX_NAME_BYTES", default_value_t = 256)]
    pub max_name_bytes: usize,
    /// Largest failure message or reconcile note, in bytes.
    #[arg(long, env = "SENTINEL_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_namespace_len: 64,
            max_key_bytes: 512,
            min_lease_ttl: Duration::from_millis(100),
            max_lease_ttl: Duration::from_secs(3600),
            default_lease_ttl: Duration::from_secs(30),
            default_hard_ttl: Duration::from_secs(3600),
            max_hard_ttl: Duration::from_secs(7 * 86400),
            retention_default: Duration::from_secs(86400),
            retention_max: Duration::from_secs(30 * 86400),
            max_response_bytes: 1 << 20,
            max_fingerprint_bytes: 64,
            max_name_bytes: 256,
            max_message_bytes: 4096,
        }
    }
}

/// Everything `serve` and `dev` share.
#[derive(Clone, Debug, Args)]
pub struct ServerOptions {
    /// Maximum PostgreSQL connections of this replica.
    #[arg(long, env = "SENTINEL_POOL_SIZE", default_value_t = default_pool_size())]
    pub pool_size: usize,
    /// How long a shutdown waits for in-flight requests before it stops anyway.
    #[arg(long, env = "SENTINEL_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How often the sweeper marks expired leases UNCERTAIN and deletes records past retention.
    #[arg(long, env = "SENTINEL_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// Records per sweeper transaction.
    #[arg(long, env = "SENTINEL_SWEEP_BATCH", default_value_t = 1000)]
    pub sweep_batch: i64,
    /// Address for Prometheus metrics at /metrics (off when unset).
    #[arg(long, env = "SENTINEL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How often the database-wide gauges (live leases, uncertain executions) are refreshed;
    /// each refresh scans the executions table once. 0s turns them off.
    #[arg(long, env = "SENTINEL_STATS_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// Largest number of requests coalesced into one statement.
    #[arg(long, env = "SENTINEL_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,
    #[command(flatten)]
    pub limits: Limits,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            pool_size: default_pool_size(),
            drain_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(1),
            sweep_batch: 1000,
            max_batch: 512,
            metrics_listen: None,
            stats_interval: Duration::from_secs(15),
            limits: Limits::default(),
        }
    }
}

/// A pool sized to the machine: batching keeps the number of busy connections low, so a
/// few per core are enough.
pub fn default_pool_size() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 4).clamp(4, 32)
}

/// The full configuration of a serving replica.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    pub options: ServerOptions,
}

/// Parses "250ms", "30s", "1h", "7d" (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}
