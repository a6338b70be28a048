//! Per-caller recording and the merged report.
//!
//! Every caller task owns a [`Recorder`] (no shared counters or locks on the hot path); the
//! recorders are merged once the run is over. Latencies are kept in microseconds in HDR
//! histograms. Only operations that *finish* inside the measured window count towards
//! throughput and latency; errors count whenever they happen, so a failure during the warmup
//! is never hidden.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{Config, DriverKind, Scenario};

/// The measured window: `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn after(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    pub fn is_over(&self) -> bool {
        Instant::now() >= self.end
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min with 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What one caller saw.
pub struct Recorder {
    /// Latency of a whole operation (a lifecycle for fresh, a claim for replay, ...).
    pub op: Histogram<u64>,
    pub claim: Histogram<u64>,
    pub complete: Histogram<u64>,
    /// Operations finished inside the window.
    pub ops: u64,
    /// RPCs (or heartbeat replies) finished inside the window.
    pub rpcs: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            op: histogram(),
            claim: histogram(),
            complete: histogram(),
            ops: 0,
            rpcs: 0,
            outcomes: BTreeMap::new(),
            errors: BTreeMap::new(),
            first_error: None,
        }
    }
}

impl Recorder {
    pub fn op(&mut self, latency: Duration, rpcs: u64) {
        self.ops += 1;
        self.rpcs += rpcs;
        let _ = self.op.record(micros(latency));
    }

    pub fn claim(&mut self, latency: Duration) {
        let _ = self.claim.record(micros(latency));
    }

    pub fn complete(&mut self, latency: Duration) {
        let _ = self.complete.record(micros(latency));
    }

    pub fn outcome(&mut self, outcome: &str) {
        *self.outcomes.entry(outcome.to_owned()).or_default() += 1;
    }

    /// Counts an error under `kind`; the first message is kept for the report.
    pub fn error(&mut self, kind: &str, message: impl Into<String>) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message.into());
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: Recorder) {
        let _ = self.op.add(&other.op);
        let _ = self.claim.add(&other.claim);
        let _ = self.complete.add(&other.complete);
        self.ops += other.ops;
        self.rpcs += other.rpcs;
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }
}

/// The result of one run; `--json` prints it as one line.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub driver: DriverKind,
    pub namespace: String,
    pub concurrency: usize,
    pub connections: usize,
    /// The measured window, in seconds.
    pub duration_s: f64,
    /// Operations finished in the window: lifecycles (fresh, once), claims (replay,
    /// contention), ALIVE replies (heartbeat).
    pub ops: u64,
    pub ops_per_s: f64,
    pub rpcs: u64,
    pub rpcs_per_s: f64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub outcomes: BTreeMap<String, u64>,
    /// Latency of one operation, as `ops` counts them.
    pub latency_ms: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_latency_ms: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete_latency_ms: Option<Latency>,
    /// Scenario-specific results (heartbeat: lost, unanswered, ...; contention: duplicates).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Invariants that failed: must be empty.
    pub violations: Vec<String>,
}

impl Report {
    pub fn new(config: &Config, namespace: &str, rec: Recorder, window: Duration) -> Report {
        let secs = window.as_secs_f64();
        Report {
            scenario: config.scenario,
            driver: config.driver,
            namespace: namespace.to_owned(),
            concurrency: config.concurrency,
            connections: config.connections,
            duration_s: secs,
            ops: rec.ops,
            ops_per_s: rec.ops as f64 / secs,
            rpcs: rec.rpcs,
            rpcs_per_s: rec.rpcs as f64 / secs,
            errors: rec.error_count(),
            error_kinds: rec.errors.clone(),
            first_error: rec.first_error.clone(),
            outcomes: rec.outcomes.clone(),
            latency_ms: Latency::of(&rec.op),
            claim_latency_ms: Latency::of(&rec.claim),
            complete_latency_ms: Latency::of(&rec.complete),
            extra: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    pub fn extra(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.extra.insert(key.to_owned(), value.into());
    }

    /// The run produced no error and broke no invariant.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.violations.is_empty()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let scenario = serde_json::to_value(self.scenario).unwrap_or_default();
        let driver = serde_json::to_value(self.driver).unwrap_or_default();
        let _ = writeln!(
            out,
            "scenario {}  driver {}  concurrency {}  connections {}  namespace {}",
            scenario.as_str().unwrap_or("?"),
            driver.as_str().unwrap_or("?"),
            self.concurrency,
            self.connections,
            self.namespace
        );
        let _ = writeln!(
            out,
            "window {:.1} s: {} ops, {:.0} ops/s, {:.0} rpcs/s, {} errors",
            self.duration_s, self.ops, self.ops_per_s, self.rpcs_per_s, self.errors
        );
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency", "count", "mean ms", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (name, l) in [
            ("op", &self.latency_ms),
            ("claim", &self.claim_latency_ms),
            ("complete", &self.complete_latency_ms),
        ] {
            if let Some(l) = l {
                let _ = writeln!(
                    out,
                    "{:<10} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    name, l.count, l.mean, l.p50, l.p99, l.p999, l.max
                );
            }
        }
        if !self.outcomes.is_empty() {
            let parts: Vec<String> = self
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(out, "outcomes: {}", parts.join(" "));
        }
        for (k, v) in &self.extra {
            let _ = writeln!(out, "{k}: {v}");
        }
        for (k, v) in &self.error_kinds {
            let _ = writeln!(out, "error {k}: {v}");
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(out, "first error: {e}");
        }
        for v in &self.violations {
            let _ = writeln!(out, "VIOLATION: {v}");
        }
        out
    }
}
