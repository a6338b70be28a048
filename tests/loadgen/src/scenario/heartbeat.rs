//! heartbeat: `--leases` live leases spread over `--streams` heartbeat streams, each lease
//! renewed every `--interval`.
//!
//! Leases are claimed by `--concurrency` callers; each acquired lease is handed at once to its
//! stream's task, which renews it every interval from then on (so the first leases are kept
//! alive while the others are still being claimed, as a real worker fleet would). Renewals of
//! one stream are spread evenly over the interval. The measured window starts when every lease
//! is held. After it, the streams stop sending, wait for the outstanding replies, and every
//! lease is completed.
//!
//! Every lease is valid and long (ttl ≫ interval), so any LOST reply is spurious. The report
//! also gives the longest time any lease went without an ALIVE (it must stay below the ttl)
//! and beats that were never answered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use sentinel_proto::v1 as pb;
use sentinel_proto::v1::sentinel_service_client::SentinelServiceClient;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{callers, pause_after_error, run_prefix};
use crate::config::Config;
use crate::driver::{raw_channels, Claimed, Driver};
use crate::stats::{Recorder, Report, Window};

/// How long the streams wait for outstanding replies after the window.
const DRAIN: Duration = Duration::from_secs(5);
/// How often a stream task looks for due renewals.
const TICK: Duration = Duration::from_millis(5);

/// A lease handed to a stream task: its index (key `{prefix}{index}`), token and claim time.
struct Held {
    index: usize,
    token: u64,
    at: Instant,
}

struct LeaseState {
    index: usize,
    token: u64,
    next_beat: Instant,
    last_alive: Instant,
    in_flight: VecDeque<Instant>,
    lost: bool,
}

#[derive(Default)]
struct StreamResult {
    rec: Recorder,
    beats_sent: u64,
    alive_total: u64,
    lost: u64,
    lost_reasons: BTreeMap<String, u64>,
    first_lost: Option<String>,
    unanswered: u64,
    max_gap: Duration,
    /// Leases still held at the end: (index, token).
    live: Vec<(usize, u64)>,
}

pub async fn run(config: &Config, namespace: &str) -> anyhow::Result<Report> {
    let driver = Arc::new(Driver::connect(config, namespace).await?);
    let channels = raw_channels(&config.addr, config.connections.min(config.streams)).await?;
    let window: Arc<OnceLock<Window>> = Arc::new(OnceLock::new());
    let prefix: Arc<str> = run_prefix('h').into();

    let mut senders = Vec::with_capacity(config.streams);
    let mut tasks = Vec::with_capacity(config.streams);
    for s in 0..config.streams {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let stub = SentinelServiceClient::new(channels[s % channels.len()].clone());
        tasks.push(tokio::spawn(stream_task(
            stub,
            namespace.to_owned(),
            prefix.clone(),
            config.interval,
            rx,
            window.clone(),
        )));
    }

    // Claim every lease; each goes to its stream as soon as it is held.
    let claim_started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let senders = Arc::new(senders);
    let leases = config.leases;
    let streams = config.streams;
    let claimed = callers(config.concurrency, |caller| {
        let driver = driver.clone();
        let next = next.clone();
        let senders = senders.clone();
        let prefix = prefix.clone();
        async move {
            let mut rec = Recorder::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= leases {
                    break rec;
                }
                let key = format!("{prefix}{index}");
                match driver.claim(caller, &key).await {
                    Ok(Claimed::Acquired { token }) => {
                        let held = Held {
                            index,
                            token,
                            at: Instant::now(),
                        };
                        if senders[index % streams].send(held).is_err() {
                            rec.error("stream_gone", "a heartbeat stream task ended early");
                        }
                    }
                    Ok(other) => rec.error(
                        "unexpected_outcome",
                        format!("claim of the new key {key:?} answered {}", other.name()),
                    ),
                    Err(e) => {
                        rec.error(&e.kind, e.message);
                        pause_after_error().await;
                    }
                }
            }
        }
    })
    .await;
    let claim_phase = claim_started.elapsed();
    // No more leases: the stream tasks see their registration channels close.
    drop(senders);
    let _ = window.set(Window::after(config.warmup, config.duration));

    let mut total = StreamResult::default();
    total.rec.merge(claimed);
    for task in tasks {
        match task.await {
            Ok(r) => {
                total.rec.merge(r.rec);
                total.beats_sent += r.beats_sent;
                total.alive_total += r.alive_total;
                total.lost += r.lost;
                for (k, v) in r.lost_reasons {
                    *total.lost_reasons.entry(k).or_default() += v;
                }
                total.first_lost = total.first_lost.or(r.first_lost);
                total.unanswered += r.unanswered;
                total.max_gap = total.max_gap.max(r.max_gap);
                total.live.extend(r.live);
            }
            Err(e) => total
                .rec
                .error("panic", format!("a heartbeat stream task failed: {e}")),
        }
    }

    // Complete every lease still held, so nothing is left to expire into UNCERTAIN.
    let live = Arc::new(std::mem::take(&mut total.live));
    let next = Arc::new(AtomicUsize::new(0));
    let response = vec![b'h'; config.response_bytes];
    let cleanup = callers(config.concurrency, |caller| {
        let driver = driver.clone();
        let live = live.clone();
        let next = next.clone();
        let response = response.clone();
        let prefix = prefix.clone();
        async move {
            let mut rec = Recorder::default();
            while let Some(&(index, token)) = live.get(next.fetch_add(1, Ordering::Relaxed)) {
                let key = format!("{prefix}{index}");
                if let Err(e) = driver.complete(caller, &key, token, &response).await {
                    rec.error(
                        &e.kind,
                        format!("completing {key:?} after the run: {}", e.message),
                    );
                }
            }
            rec
        }
    })
    .await;
    total.rec.merge(cleanup);

    let mut report = Report::new(config, namespace, total.rec, config.duration);
    let expected = leases as f64 / config.interval.as_secs_f64();
    report.extra("leases", leases);
    report.extra("streams", streams);
    report.extra("interval_s", config.interval.as_secs_f64());
    report.extra("lease_ttl_s", config.lease_ttl.as_secs_f64());
    report.extra("claim_phase_s", round2(claim_phase.as_secs_f64()));
    report.extra(
        "claims_per_s",
        round2(leases as f64 / claim_phase.as_secs_f64()),
    );
    report.extra("expected_renewals_per_s", round2(expected));
    report.extra("beats_sent", total.beats_sent);
    report.extra("alive_total", total.alive_total);
    report.extra("spurious_lost", total.lost);
    report.extra(
        "lost_reasons",
        serde_json::to_value(&total.lost_reasons).unwrap_or_default(),
    );
    report.extra("unanswered", total.unanswered);
    report.extra("max_gap_ms", round2(total.max_gap.as_secs_f64() * 1000.0));
    report.extra("leases_completed", live.len());

    if total.lost > 0 {
        report.violations.push(format!(
            "{} spurious LOST for live leases; first: {}",
            total.lost,
            total.first_lost.unwrap_or_default()
        ));
    }
    if total.unanswered > 0 {
        report.violations.push(format!(
            "{} heartbeats were never answered (waited {DRAIN:?} after the window)",
            total.unanswered
        ));
    }
    if total.max_gap >= config.lease_ttl {
        report.violations.push(format!(
            "a lease went {:?} without an ALIVE, longer than its ttl {:?}",
            total.max_gap, config.lease_ttl
        ));
    }
    // Throughput, not correctness: reported for the benchmark to judge, never a violation
    // (a slow machine renews late, which the max gap above bounds).
    report.extra("renewal_rate_ratio", round2(report.ops_per_s / expected));
    Ok(report)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One heartbeat stream: renews the leases handed to it until the window is over.
async fn stream_task(
    mut stub: SentinelServiceClient<Channel>,
    namespace: String,
    prefix: Arc<str>,
    interval: Duration,
    mut incoming: mpsc::UnboundedReceiver<Held>,
    window: Arc<OnceLock<Window>>,
) -> StreamResult {
    let mut out = StreamResult::default();
    let (tx, rx) = mpsc::channel::<pb::HeartbeatRequest>(65_536);
    let opened = tokio::time::timeout(
        Duration::from_secs(10),
        stub.heartbeat(ReceiverStream::new(rx)),
    )
    .await;
    let mut replies = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            out.rec.error(
                "stream_open",
                format!("cannot open a heartbeat stream: {status}"),
            );
            return out;
        }
        Err(_) => {
            out.rec
                .error("stream_open", "opening a heartbeat stream took over 10 s");
            return out;
        }
    };

    let mut leases: Vec<LeaseState> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    // Slots in the order of their next beat: every lease has the same interval and joins with
    // a first beat one interval after its claim, so pushing to the back keeps the order.
    let mut due: VecDeque<usize> = VecDeque::new();
    let mut registering = true;
    let mut stopped_at: Option<Instant> = None;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            held = incoming.recv(), if registering => match held {
                Some(h) => {
                    let slot = leases.len();
                    by_key.insert(format!("{prefix}{}", h.index), slot);
                    leases.push(LeaseState {
                        index: h.index,
                        token: h.token,
                        next_beat: h.at + interval,
                        last_alive: h.at,
                        in_flight: VecDeque::new(),
                        lost: false,
                    });
                    due.push_back(slot);
                }
                None => registering = false,
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                let over = window.get().is_some_and(|w| now >= w.end);
                if over && stopped_at.is_none() {
                    stopped_at = Some(now);
                }
                if let Some(stopped) = stopped_at {
                    let outstanding = leases.iter().any(|l| !l.in_flight.is_empty());
                    if !outstanding || now.duration_since(stopped) >= DRAIN {
                        break;
                    }
                    continue;
                }
                while let Some(&slot) = due.front() {
                    let lease = &mut leases[slot];
                    if lease.lost {
                        due.pop_front();
                        continue;
                    }
                    if lease.next_beat > now {
                        break;
                    }
                    let beat = pb::HeartbeatRequest {
                        namespace: namespace.clone(),
                        key: format!("{prefix}{}", lease.index),
                        token: lease.token,
                    };
                    match tx.try_send(beat) {
                        Ok(()) => {
                            lease.in_flight.push_back(now);
                            // Keep the schedule (not "now + interval"), so a late tick does
                            // not slowly stretch the period.
                            lease.next_beat += interval;
                            out.beats_sent += 1;
                            due.pop_front();
                            due.push_back(slot);
                        }
                        // The stream is not draining; the next tick tries again.
                        Err(mpsc::error::TrySendError::Full(_)) => break,
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            out.rec.error("stream_broken", "the heartbeat request stream closed");
                            return finish(out, leases);
                        }
                    }
                }
            },
            reply = replies.next() => match reply {
                Some(Ok(reply)) => on_reply(&mut out, &mut leases, &by_key, &namespace, reply, &window),
                Some(Err(status)) => {
                    out.rec.error("stream_broken", format!("the heartbeat stream failed: {status}"));
                    return finish(out, leases);
                }
                None => {
                    out.rec.error("stream_broken", "the server ended the heartbeat stream");
                    return finish(out, leases);
                }
            },
        }
    }
    drop(tx);
    finish(out, leases)
}

fn on_reply(
    out: &mut StreamResult,
    leases: &mut [LeaseState],
    by_key: &HashMap<String, usize>,
    namespace: &str,
    reply: pb::HeartbeatResponse,
    window: &OnceLock<Window>,
) {
    let now = Instant::now();
    let lease = match by_key.get(&reply.key) {
        Some(&slot) if reply.namespace == namespace && reply.token == leases[slot].token => {
            &mut leases[slot]
        }
        _ => {
            out.rec.error(
                "unknown_reply",
                format!(
                    "a heartbeat reply for a lease this stream does not hold: {}/{} token {}",
                    reply.namespace, reply.key, reply.token
                ),
            );
            return;
        }
    };
    let sent = lease.in_flight.pop_front();
    match reply.result {
        Some(pb::heartbeat_response::Result::Alive(_)) => {
            out.alive_total += 1;
            out.max_gap = out.max_gap.max(now - lease.last_alive);
            lease.last_alive = now;
            match sent {
                Some(sent) if window.get().is_some_and(|w| w.contains(now)) => {
                    out.rec.op(now - sent, 1);
                    out.rec.outcome("alive");
                }
                Some(_) => {}
                None => out
                    .rec
                    .error("unsolicited_alive", "an ALIVE for a beat never sent"),
            }
        }
        Some(pb::heartbeat_response::Result::Lost(lost)) => {
            let reason = pb::LostReason::try_from(lost.reason)
                .map_or_else(|_| lost.reason.to_string(), |r| r.as_str_name().to_owned());
            out.lost += 1;
            *out.lost_reasons.entry(reason.clone()).or_default() += 1;
            if out.first_lost.is_none() {
                out.first_lost = Some(format!("{}: {reason} ({})", reply.key, lost.detail));
            }
            lease.lost = true;
            lease.in_flight.clear();
        }
        None => out
            .rec
            .error("protocol", "a heartbeat reply without a result"),
    }
}

fn finish(mut out: StreamResult, leases: Vec<LeaseState>) -> StreamResult {
    for l in leases {
        out.unanswered += l.in_flight.len() as u64;
        if !l.lost {
            out.live.push((l.index, l.token));
        }
    }
    out
}
