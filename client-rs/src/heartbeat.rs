//! One heartbeat stream per client, shared by all of its leases.
//!
//! A single task owns the stream and the table of live leases; `once` talks to it through a
//! command channel (register, unregister). Every lease is renewed every `lease_ttl / 3`, and
//! carries a local monotonic deadline. The deadline only moves when an ALIVE reply arrives, and
//! it is derived from the moment the answered request was *sent*: the server extended the lease
//! after that moment, so `sent_at + ttl_remaining` can only be early, never late. A margin is
//! then taken off, so that the work is told to stop before the server could let anyone else in.
//!
//! When the deadline passes without an ALIVE, the lease's context is cancelled: a stalled or
//! broken stream must never look alive. A LOST reply cancels it at once. A broken stream is
//! re-opened with backoff while leases remain; the leases survive the re-open if their
//! deadlines have not passed.
//!
//! The table is scanned on a tick of `min(lease_ttl) / 20` (5 ms..100 ms) rather than keeping
//! a timer per lease, so a thousand leases cost a thousand comparisons per tick.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use sentinel_proto::v1 as pb;
use sentinel_proto::v1::sentinel_service_client::SentinelServiceClient;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::lease::{Lease, LeaseLoss, LeaseShared};
use crate::model::{opt_duration, LostReason};
use crate::retry::Backoff;

/// Requests buffered towards the stream; a full buffer means the stream is not draining, and
/// the beat is retried on the next tick (the deadline catches a stream that never drains).
const SEND_BUFFER: usize = 8192;
/// Beats of one lease in flight at once; more would only pile up behind a stalled stream.
const MAX_IN_FLIGHT: usize = 4;
/// How long the stream stays open without leases before it is closed.
const IDLE_CLOSE: Duration = Duration::from_secs(30);
const MIN_TICK: Duration = Duration::from_millis(5);
const MAX_TICK: Duration = Duration::from_millis(100);

/// The local deadline of a lease whose server-side expiry is `ttl_remaining` after `sent_at`.
///
/// A fifth of the remaining time is kept as a margin: the work is cancelled before the server
/// expires the lease, so it can stop before a takeover or an operator acts.
pub(crate) fn local_deadline(sent_at: Instant, ttl_remaining: Duration) -> Instant {
    sent_at + ttl_remaining - ttl_remaining / 5
}

type Triple = (Arc<str>, Arc<str>, u64);

enum Command {
    Register(Registration),
    Unregister { triple: Triple, id: u64 },
}

struct Registration {
    id: u64,
    triple: Triple,
    lease_ttl: Duration,
    deadline: Instant,
    shared: Arc<LeaseShared>,
}

/// The client's handle on its heartbeat task; the task starts with the first lease.
pub(crate) struct Heartbeats {
    rpc: SentinelServiceClient<Channel>,
    commands: OnceLock<mpsc::UnboundedSender<Command>>,
    next_id: AtomicU64,
}

impl Heartbeats {
    pub(crate) fn new(rpc: SentinelServiceClient<Channel>) -> Self {
        Self {
            rpc,
            commands: OnceLock::new(),
            next_id: AtomicU64::new(1),
        }
    }

    fn sender(&self) -> &mpsc::UnboundedSender<Command> {
        self.commands.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.rpc.clone(), rx));
            tx
        })
    }

    /// Starts renewing a lease until the returned guard is dropped.
    pub(crate) fn register(
        &self,
        namespace: Arc<str>,
        key: Arc<str>,
        token: u64,
        attempt: u32,
        lease_ttl: Duration,
        deadline: Instant,
    ) -> LeaseGuard {
        let shared = Arc::new(LeaseShared::new(deadline));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let triple: Triple = (namespace.clone(), key.clone(), token);
        let sender = self.sender().clone();
        let registration = Registration {
            id,
            triple: triple.clone(),
            lease_ttl,
            deadline,
            shared: shared.clone(),
        };
        if sender.send(Command::Register(registration)).is_err() {
            // The task is gone (the runtime is shutting down): nobody can keep the lease alive.
            shared.lose(LeaseLoss::DeadlineMissed);
        }
        LeaseGuard {
            lease: Lease::new(namespace, key, token, attempt, shared),
            triple,
            id,
            sender,
        }
    }
}

/// Keeps a lease renewed while it lives.
pub(crate) struct LeaseGuard {
    lease: Lease,
    triple: Triple,
    id: u64,
    sender: mpsc::UnboundedSender<Command>,
}

impl LeaseGuard {
    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let _ = self.sender.send(Command::Unregister {
            triple: self.triple.clone(),
            id: self.id,
        });
    }
}

struct Entry {
    id: u64,
    interval: Duration,
    lease_ttl: Duration,
    next_beat: Instant,
    deadline: Instant,
    /// Send times of the beats not answered yet, oldest first (replies come in order).
    in_flight: VecDeque<Instant>,
    shared: Arc<LeaseShared>,
}

type OpenFuture =
    BoxFuture<'static, Result<tonic::Response<Streaming<pb::HeartbeatResponse>>, tonic::Status>>;

enum Stream {
    /// No stream, none wanted (no leases).
    Idle,
    /// Broken; re-open at this instant.
    Backoff(Instant),
    /// Waiting for the server to accept the stream; beats are already queued in `tx`.
    Opening {
        tx: mpsc::Sender<pb::HeartbeatRequest>,
        open: OpenFuture,
    },
    Open {
        tx: mpsc::Sender<pb::HeartbeatRequest>,
        rx: Box<Streaming<pb::HeartbeatResponse>>,
    },
}

impl Stream {
    fn sender(&self) -> Option<&mpsc::Sender<pb::HeartbeatRequest>> {
        match self {
            Self::Opening { tx, .. } | Self::Open { tx, .. } => Some(tx),
            Self::Idle | Self::Backoff(_) => None,
        }
    }
}

struct Task {
    rpc: SentinelServiceClient<Channel>,
    leases: HashMap<Triple, Entry>,
    stream: Stream,
    backoff: Backoff,
    empty_since: Option<Instant>,
    /// The shortest lease ttl as of the last command; leases lost in between only make it
    /// shorter than needed (a faster tick, a stricter stall check), never longer.
    min_ttl: Option<Duration>,
}

async fn run(rpc: SentinelServiceClient<Channel>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut task = Task {
        rpc,
        leases: HashMap::new(),
        stream: Stream::Idle,
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
        empty_since: None,
        min_ttl: None,
    };
    let mut tick_period = MAX_TICK;
    let mut ticker = tokio::time::interval(tick_period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let wanted = task.tick_period();
        if wanted != tick_period {
            tick_period = wanted;
            ticker = tokio::time::interval(tick_period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => task.command(command),
                // Every client handle and lease guard is gone.
                None => return,
            },
            _ = ticker.tick() => task.tick(Instant::now()),
            event = stream_event(&mut task.stream) => match event {
                StreamEvent::Opened(result) => task.opened(*result),
                StreamEvent::Message(message) => task.received(message),
            },
        }
    }
}

enum StreamEvent {
    Opened(Box<Result<tonic::Response<Streaming<pb::HeartbeatResponse>>, tonic::Status>>),
    Message(Option<Result<pb::HeartbeatResponse, tonic::Status>>),
}

/// The next thing the stream has to say; never resolves while there is no stream.
async fn stream_event(stream: &mut Stream) -> StreamEvent {
    match stream {
        Stream::Opening { open, .. } => StreamEvent::Opened(Box::new(open.await)),
        Stream::Open { rx, .. } => StreamEvent::Message(rx.next().await),
        Stream::Idle | Stream::Backoff(_) => std::future::pending().await,
    }
}

impl Task {
    fn tick_period(&self) -> Duration {
        self.min_ttl
            .map_or(MAX_TICK, |ttl| ttl / 20)
            .clamp(MIN_TICK, MAX_TICK)
    }

    fn command(&mut self, command: Command) {
        self.apply(command);
        self.min_ttl = self.leases.values().map(|e| e.lease_ttl).min();
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Register(r) => {
                let now = Instant::now();
                let interval = (r.lease_ttl / 3).max(Duration::from_millis(1));
                self.leases.insert(
                    r.triple,
                    Entry {
                        id: r.id,
                        interval,
                        lease_ttl: r.lease_ttl,
                        // The claim has just granted a full lease.
                        next_beat: now + interval,
                        deadline: r.deadline,
                        in_flight: VecDeque::new(),
                        shared: r.shared,
                    },
                );
                self.empty_since = None;
                if matches!(self.stream, Stream::Idle) {
                    self.open(now);
                }
            }
            Command::Unregister { triple, id } => {
                if self.leases.get(&triple).is_some_and(|e| e.id == id) {
                    self.leases.remove(&triple);
                }
                if self.leases.is_empty() {
                    self.empty_since = Some(Instant::now());
                }
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        // Deadlines first: a lease past its deadline is lost whatever the stream's state.
        self.leases.retain(|(ns, key, token), e| {
            if now < e.deadline {
                return true;
            }
            tracing::warn!(namespace = %ns, key = %key, token, "no heartbeat reply before the lease deadline; cancelling the work");
            e.shared.lose(LeaseLoss::DeadlineMissed);
            false
        });
        if self.leases.is_empty() {
            let since = *self.empty_since.get_or_insert(now);
            if now.duration_since(since) >= IDLE_CLOSE {
                self.stream = Stream::Idle;
            }
            if matches!(self.stream, Stream::Backoff(_)) {
                self.stream = Stream::Idle;
            }
            return;
        }
        match self.stream {
            Stream::Idle => self.open(now),
            Stream::Backoff(at) if now >= at => self.open(now),
            Stream::Backoff(_) => return,
            Stream::Opening { .. } | Stream::Open { .. } => {}
        }
        if self.stalled(now) {
            tracing::warn!("heartbeat stream stalled; re-opening it");
            self.broken(now);
            return;
        }
        self.send_due(now);
    }

    /// A beat unanswered for a whole lease ttl means the stream is stuck: the leases that
    /// waited for it have been cancelled by their deadlines already, and a fresh stream gives
    /// the others a chance. It is not sooner, because dropping a stream that is merely slow
    /// (an overloaded server) throws away the replies it was about to deliver.
    fn stalled(&self, now: Instant) -> bool {
        let Some(limit) = self.min_ttl else {
            return false;
        };
        self.leases
            .values()
            .filter_map(|e| e.in_flight.front())
            .any(|sent| now.duration_since(*sent) > limit)
    }

    fn send_due(&mut self, now: Instant) {
        let Some(tx) = self.stream.sender().cloned() else {
            return;
        };
        for ((ns, key, token), e) in self.leases.iter_mut() {
            if now < e.next_beat || e.in_flight.len() >= MAX_IN_FLIGHT {
                continue;
            }
            let request = pb::HeartbeatRequest {
                namespace: ns.to_string(),
                key: key.to_string(),
                token: *token,
            };
            match tx.try_send(request) {
                Ok(()) => {
                    e.in_flight.push_back(now);
                    e.next_beat = now + e.interval;
                }
                // Not draining: try again next tick; the deadline decides if it never does.
                Err(mpsc::error::TrySendError::Full(_)) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.broken(now);
                    return;
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        for e in self.leases.values_mut() {
            // Beats sent on an older stream will never be answered.
            e.in_flight.clear();
            e.next_beat = now;
        }
        let mut rpc = self.rpc.clone();
        let open: OpenFuture =
            Box::pin(async move { rpc.heartbeat(ReceiverStream::new(rx)).await });
        self.stream = Stream::Opening { tx, open };
        // Queue a beat for every lease now, so a server that waits for the first message
        // before answering the call still answers.
        self.send_due(now);
    }

    fn opened(
        &mut self,
        result: Result<tonic::Response<Streaming<pb::HeartbeatResponse>>, tonic::Status>,
    ) {
        let tx = match std::mem::replace(&mut self.stream, Stream::Idle) {
            Stream::Opening { tx, .. } => tx,
            other => {
                self.stream = other;
                return;
            }
        };
        match result {
            Ok(response) => {
                self.stream = Stream::Open {
                    tx,
                    rx: Box::new(response.into_inner()),
                };
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot open the heartbeat stream");
                self.broken(Instant::now());
            }
        }
    }

    fn received(&mut self, message: Option<Result<pb::HeartbeatResponse, tonic::Status>>) {
        let now = Instant::now();
        match message {
            Some(Ok(reply)) => {
                self.backoff.reset();
                self.reply(reply);
            }
            Some(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "heartbeat stream broke");
                self.broken(now);
            }
            None => {
                tracing::debug!("heartbeat stream ended by the server");
                self.broken(now);
            }
        }
    }

    fn reply(&mut self, reply: pb::HeartbeatResponse) {
        let triple: Triple = (reply.namespace.into(), reply.key.into(), reply.token);
        let Some(e) = self.leases.get_mut(&triple) else {
            // A lease that already ended (completed, dropped): nothing to do.
            return;
        };
        let sent_at = e.in_flight.pop_front();
        match reply.result {
            Some(pb::heartbeat_response::Result::Alive(alive)) => {
                let Some(ttl_remaining) = opt_duration(alive.ttl_remaining) else {
                    tracing::warn!("ALIVE without ttl_remaining; ignored");
                    return;
                };
                // An ALIVE we did not ask for has no send time to bound its age, so it cannot
                // safely move the deadline.
                let Some(sent_at) = sent_at else {
                    return;
                };
                let deadline = local_deadline(sent_at, ttl_remaining);
                e.deadline = deadline;
                e.shared.set_deadline(deadline);
            }
            Some(pb::heartbeat_response::Result::Lost(lost)) => {
                let reason = LostReason::from_pb(lost.reason);
                tracing::info!(namespace = %triple.0, key = %triple.1, token = triple.2, ?reason, detail = %lost.detail, "lease lost");
                e.shared.lose(LeaseLoss::Lost {
                    reason,
                    detail: lost.detail,
                });
                self.leases.remove(&triple);
            }
            None => tracing::warn!("heartbeat reply without a result; ignored"),
        }
    }

    fn broken(&mut self, now: Instant) {
        for e in self.leases.values_mut() {
            e.in_flight.clear();
        }
        self.stream = if self.leases.is_empty() {
            Stream::Idle
        } else {
            Stream::Backoff(now + self.backoff.next_delay())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_deadline_keeps_a_margin_before_the_server_expiry() {
        let sent = Instant::now();
        let d = local_deadline(sent, Duration::from_secs(10));
        assert_eq!(d, sent + Duration::from_secs(8));
        assert_eq!(local_deadline(sent, Duration::ZERO), sent);
    }
}
