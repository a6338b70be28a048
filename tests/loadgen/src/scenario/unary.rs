//! Scenarios made of unary calls: fresh, replay, contention and once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{callers, pause_after_error, run_prefix, Rng};
use crate::config::Config;
use crate::driver::{Claimed, Driver};
use crate::stats::{Recorder, Report, Window};

struct Shared {
    driver: Driver,
    response: Vec<u8>,
    hold: Duration,
}

async fn connect(config: &Config, namespace: &str) -> anyhow::Result<Arc<Shared>> {
    Ok(Arc::new(Shared {
        driver: Driver::connect(config, namespace).await?,
        response: vec![b'r'; config.response_bytes],
        hold: config.hold,
    }))
}

/// Claims a key that nobody has claimed and completes it. Returns the claim and complete
/// latencies, or records the error and returns `None`.
async fn lifecycle(
    s: &Shared,
    caller: usize,
    key: &str,
    rec: &mut Recorder,
) -> Option<(Duration, Duration)> {
    let t0 = Instant::now();
    let token = match s.driver.claim(caller, key).await {
        Ok(Claimed::Acquired { token }) => token,
        Ok(other) => {
            rec.error(
                "unexpected_outcome",
                format!("claim of the new key {key:?} answered {}", other.name()),
            );
            return None;
        }
        Err(e) => {
            rec.error(&e.kind, e.message);
            pause_after_error().await;
            return None;
        }
    };
    let claimed = t0.elapsed();
    if !s.hold.is_zero() {
        tokio::time::sleep(s.hold).await;
    }
    let t1 = Instant::now();
    if let Err(e) = s.driver.complete(caller, key, token, &s.response).await {
        rec.error(&e.kind, e.message);
        pause_after_error().await;
        return None;
    }
    Some((claimed, t1.elapsed()))
}

/// fresh: claim + complete of new keys; one op is one whole lifecycle (two RPCs).
pub async fn fresh(config: &Config, namespace: &str) -> anyhow::Result<Report> {
    let s = connect(config, namespace).await?;
    let prefix = run_prefix('f');
    let window = Window::after(config.warmup, config.duration);
    let rec = callers(config.concurrency, |caller| {
        let s = s.clone();
        let prefix = prefix.clone();
        async move {
            let mut rec = Recorder::default();
            let mut seq = 0u64;
            while !window.is_over() {
                let key = format!("{prefix}{caller}-{seq}");
                seq += 1;
                let t0 = Instant::now();
                if let Some((claim, complete)) = lifecycle(&s, caller, &key, &mut rec).await {
                    let done = Instant::now();
                    if window.contains(done) {
                        rec.op(done - t0, 2);
                        rec.claim(claim);
                        rec.complete(complete);
                        rec.outcome("completed");
                    }
                }
            }
            rec
        }
    })
    .await;
    Ok(Report::new(config, namespace, rec, config.duration))
}

/// once: `Client::once` on new keys; one op is one `once` call.
pub async fn once(config: &Config, namespace: &str) -> anyhow::Result<Report> {
    let s = connect(config, namespace).await?;
    let prefix = run_prefix('o');
    let window = Window::after(config.warmup, config.duration);
    let rec = callers(config.concurrency, |caller| {
        let s = s.clone();
        let prefix = prefix.clone();
        async move {
            let mut rec = Recorder::default();
            let mut seq = 0u64;
            while !window.is_over() {
                let key = format!("{prefix}{caller}-{seq}");
                seq += 1;
                let t0 = Instant::now();
                match s.driver.once(caller, &key, &s.response).await {
                    Ok("completed") => {
                        let done = Instant::now();
                        if window.contains(done) {
                            rec.op(done - t0, 2);
                            rec.outcome("completed");
                        }
                    }
                    Ok(other) => rec.error(
                        "unexpected_outcome",
                        format!("once on the new key {key:?} answered {other}"),
                    ),
                    Err(e) => {
                        rec.error(&e.kind, e.message);
                        pause_after_error().await;
                    }
                }
            }
            rec
        }
    })
    .await;
    Ok(Report::new(config, namespace, rec, config.duration))
}

/// replay: completes `--keys` keys first, then claims them at random; every claim must be
/// answered COMPLETED. One op is one claim.
pub async fn replay(config: &Config, namespace: &str) -> anyhow::Result<Report> {
    let s = connect(config, namespace).await?;
    let keys = config.keys();
    let populate_started = Instant::now();
    let next = Arc::new(AtomicUsize::new(if config.no_populate { keys } else { 0 }));
    let populated = callers(config.concurrency, |caller| {
        let s = s.clone();
        let next = next.clone();
        async move {
            let mut rec = Recorder::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    break rec;
                }
                lifecycle(&s, caller, &format!("r-{k}"), &mut rec).await;
            }
        }
    })
    .await;
    let populate_s = populate_started.elapsed().as_secs_f64();
    if populated.error_count() > 0 {
        anyhow::bail!(
            "completing the {keys} keys to replay failed {} times; first error: {}",
            populated.error_count(),
            populated.first_error.unwrap_or_default()
        );
    }

    let window = Window::after(config.warmup, config.duration);
    let rec = callers(config.concurrency, |caller| {
        let s = s.clone();
        async move {
            let mut rec = Recorder::default();
            let mut rng = Rng::new();
            while !window.is_over() {
                let key = format!("r-{}", rng.below(keys));
                let t0 = Instant::now();
                match s.driver.claim(caller, &key).await {
                    Ok(Claimed::Completed) => {
                        let done = Instant::now();
                        if window.contains(done) {
                            rec.op(done - t0, 1);
                            rec.outcome("completed");
                        }
                    }
                    Ok(other) => rec.error(
                        "unexpected_outcome",
                        format!(
                            "claim of the completed key {key:?} answered {}",
                            other.name()
                        ),
                    ),
                    Err(e) => {
                        rec.error(&e.kind, e.message);
                        pause_after_error().await;
                    }
                }
            }
            rec
        }
    })
    .await;
    let mut report = Report::new(config, namespace, rec, config.duration);
    report.extra("keys", keys);
    report.extra("populate_s", (populate_s * 100.0).round() / 100.0);
    Ok(report)
}

/// contention: every caller claims one of `--keys` keys of the current round (a new set every
/// `--round`); whoever acquires holds it for `--hold` and completes it. One op is one claim.
/// Invariant: no key is acquired twice (nothing is ever released or expires here).
pub async fn contention(config: &Config, namespace: &str) -> anyhow::Result<Report> {
    let s = connect(config, namespace).await?;
    let keys = config.keys();
    let round = config.round;
    let prefix = run_prefix('c');
    let origin = Instant::now();
    let window = Window::after(config.warmup, config.duration);
    let acquired = Arc::new(std::sync::Mutex::new(HashMap::<String, u32>::new()));
    let rec = callers(config.concurrency, |caller| {
        let s = s.clone();
        let acquired = acquired.clone();
        let prefix = prefix.clone();
        async move {
            let mut rec = Recorder::default();
            let mut mine = Vec::new();
            let mut rng = Rng::new();
            while !window.is_over() {
                let r = origin.elapsed().as_nanos() / round.as_nanos();
                let key = format!("{prefix}{r}-{}", rng.below(keys));
                let t0 = Instant::now();
                let claimed = match s.driver.claim(caller, &key).await {
                    Ok(c) => c,
                    Err(e) => {
                        rec.error(&e.kind, e.message);
                        pause_after_error().await;
                        continue;
                    }
                };
                let claim_done = Instant::now();
                let mut rpcs = 1;
                if let Claimed::Acquired { token } = claimed {
                    mine.push(key.clone());
                    if !s.hold.is_zero() {
                        tokio::time::sleep(s.hold).await;
                    }
                    let t1 = Instant::now();
                    if let Err(e) = s.driver.complete(caller, &key, token, &s.response).await {
                        rec.error(&e.kind, e.message);
                        pause_after_error().await;
                        continue;
                    }
                    if window.contains(Instant::now()) {
                        rec.complete(t1.elapsed());
                    }
                    rpcs = 2;
                }
                if window.contains(claim_done) {
                    rec.op(claim_done - t0, rpcs);
                    rec.outcome(claimed.name());
                }
            }
            let mut all = acquired.lock().unwrap_or_else(|e| e.into_inner());
            for key in mine {
                *all.entry(key).or_default() += 1;
            }
            rec
        }
    })
    .await;
    let acquired = acquired.lock().unwrap_or_else(|e| e.into_inner());
    let duplicates: Vec<&String> = acquired
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(k, _)| k)
        .collect();
    let mut report = Report::new(config, namespace, rec, config.duration);
    report.extra("keys_per_round", keys);
    report.extra("keys_acquired", acquired.len());
    report.extra("duplicate_acquires", duplicates.len());
    if !duplicates.is_empty() {
        report.violations.push(format!(
            "{} keys were acquired more than once, e.g. {:?}",
            duplicates.len(),
            duplicates[0]
        ));
    }
    Ok(report)
}
