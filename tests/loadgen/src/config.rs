//! Command-line options of the load generator.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// What the load consists of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Claim a new key, then complete it: the whole lifecycle of a first execution.
    Fresh,
    /// Claim keys that are already completed: every call is a replay of a stored result.
    Replay,
    /// Many callers on a few keys per round: one acquires, the others see IN_PROGRESS or the
    /// replay. Checks that no key is ever acquired twice.
    Contention,
    /// Hold many live leases and renew each one every `--interval` over a few shared streams.
    /// Any LOST reply is spurious (the leases are valid and long), and so counted as a failure.
    Heartbeat,
    /// `Client::once` with a trivial work function on new keys (claim, lease registration with
    /// the shared heartbeat stream, complete): what an application pays per call.
    Once,
}

/// Which gRPC client issues the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// The workspace crate `sentinel-client`, as an application would use it.
    Client,
    /// The generated tonic stubs of `sentinel-proto`, with no client-side logic at all.
    Raw,
}

/// Drives load against a Sentinel server and reports throughput and latency.
#[derive(Clone, Debug, Parser)]
#[command(name = "sentinel-loadgen", version)]
pub struct Config {
    /// The load to generate.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Server address, `host:port` (plaintext gRPC) or `http://host:port`.
    #[arg(long, env = "SENTINEL_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,

    /// Namespace of every key (default: a new random one, so runs never see each other's keys).
    #[arg(long)]
    pub namespace: Option<String>,

    /// Concurrent callers, each with one call in flight at a time.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub concurrency: usize,

    /// How long the measured window lasts (e.g. 15s, 500ms).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Load before the measured window, not counted (connections, caches, pool warm up).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// gRPC channels (HTTP/2 connections); callers and streams are spread over them.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,

    /// Which client issues unary calls (heartbeat streams always use the raw stubs, so that the
    /// renewal period can be set independently of the lease ttl).
    #[arg(long, value_enum, default_value_t = DriverKind::Client)]
    pub driver: DriverKind,

    /// replay: completed keys to replay (default 10000); contention: keys per round (default 4).
    #[arg(long)]
    pub keys: Option<usize>,

    /// replay: do not complete the keys first; an earlier run with the same `--namespace` and
    /// `--keys` did (e.g. to profile replays alone).
    #[arg(long)]
    pub no_populate: bool,

    /// contention: a new set of keys every ROUND.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub round: Duration,

    /// How long an acquired execution "works" before it completes.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Size of the response stored by each complete.
    #[arg(long, default_value_t = 16)]
    pub response_bytes: usize,

    /// Lease ttl of every claim.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// Hard ttl of every claim.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub hard_ttl: Duration,

    /// heartbeat: live leases held at once.
    #[arg(long, default_value_t = 20_000)]
    pub leases: usize,

    /// heartbeat: heartbeat streams the leases are spread over.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,

    /// heartbeat: how often each lease is renewed.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Also print the report as one JSON line on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

impl Config {
    /// Rejects option combinations that cannot produce a meaningful run.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(self.connections > 0, "--connections must be at least 1");
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        if self.scenario == Scenario::Replay || self.scenario == Scenario::Contention {
            anyhow::ensure!(self.keys() > 0, "--keys must be at least 1");
        }
        if self.scenario == Scenario::Heartbeat {
            anyhow::ensure!(self.leases > 0, "--leases must be at least 1");
            anyhow::ensure!(self.streams > 0, "--streams must be at least 1");
            anyhow::ensure!(!self.interval.is_zero(), "--interval must be positive");
            anyhow::ensure!(
                self.interval < self.lease_ttl,
                "--interval ({:?}) must be shorter than --lease-ttl ({:?}), or every lease expires",
                self.interval,
                self.lease_ttl
            );
        }
        if self.no_populate {
            anyhow::ensure!(
                self.scenario == Scenario::Replay && self.namespace.is_some(),
                "--no-populate is for the replay scenario, with the --namespace of the run that populated it"
            );
        }
        if self.scenario == Scenario::Contention {
            anyhow::ensure!(!self.round.is_zero(), "--round must be positive");
        }
        if self.scenario == Scenario::Once {
            anyhow::ensure!(
                self.driver == DriverKind::Client,
                "the once scenario needs --driver client (once is a client helper)"
            );
        }
        Ok(())
    }

    /// `--keys`, or the scenario's default.
    pub fn keys(&self) -> usize {
        self.keys.unwrap_or(match self.scenario {
            Scenario::Contention => 4,
            _ => 10_000,
        })
    }
}

/// Parses `250ms`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 15s, 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn heartbeats_slower_than_the_lease_are_rejected() {
        let config = Config::try_parse_from([
            "sentinel-loadgen",
            "heartbeat",
            "--interval",
            "10s",
            "--lease-ttl",
            "5s",
        ])
        .unwrap();
        assert!(config.validate().is_err());
    }
}
