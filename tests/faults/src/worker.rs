//! A worker process: runs the workload through `sentinel-client` and performs every side
//! effect as a write of `(key, token, payload)` to the fenced sink.
//!
//! Keys come from a small "hot" window that slides with time, shared by every worker (they
//! share the monotonic clock and the run's start), so that several workers contend for the
//! same keys: a worker that is paused or killed while it holds one is taken over (keys whose
//! policy is RETRY) or found UNCERTAIN and reconciled by another.
//!
//! The mix:
//! - `once` on `k*` keys (most operations), with injected failures of each kind, and workers
//!   that ignore a lost lease and write anyway ("zombies"), so that only the tokens protect
//!   the sink;
//! - manual `claim`/`complete` on `m*` keys with explicit claim ids, retried with the same id
//!   after an unknown outcome (possibly through the other server);
//! - a forced reconcile of a running `k*` key, as an operator would;
//! - heartbeat probes on a raw stream, so that every heartbeat reply is in the history.

use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sentinel_client::{
    ClaimOptions, ClaimOutcome, Client, CompleteOutcome, Error, ExecutionState, LeaseExpiryPolicy,
    OnceOptions, Outcome, ReconcileOptions, Resolution, RetryPolicy, WorkError,
};
use sentinel_proto::v1 as pb;
use sentinel_proto::v1::sentinel_service_client::SentinelServiceClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::history::{mono_ns, History, Op};
use crate::sink::{SinkClient, SinkReply};

/// Everything a worker needs to know about the run.
#[derive(Clone, Debug, clap::Args)]
pub struct WorkerArgs {
    /// Worker number.
    #[arg(long)]
    pub id: u32,
    /// Incarnation (restarts after a SIGKILL).
    #[arg(long, default_value_t = 0)]
    pub inc: u32,
    /// Server addresses (host:port), comma separated.
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Sink address.
    #[arg(long)]
    pub sink: String,
    /// History file to append to.
    #[arg(long)]
    pub history: std::path::PathBuf,
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub seed: u64,
    /// CLOCK_MONOTONIC ns of the start of the run (the origin of the key window).
    #[arg(long)]
    pub start_mono: u64,
    /// CLOCK_MONOTONIC ns after which no operation starts.
    #[arg(long)]
    pub end_mono: u64,
    #[arg(long, default_value_t = 1500)]
    pub lease_ms: u64,
    #[arg(long, default_value_t = 1000)]
    pub key_period_ms: u64,
    #[arg(long, default_value_t = 4)]
    pub hot_keys: u64,
    /// Concurrent operation loops.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u32,
}

/// Keys whose results are kept for one second only.
pub const RETENTION_PREFIX: &str = "r";

/// Manual (`m*`) and short-retention (`r*`) keys slide this many times slower than `k*` keys.
pub const SLOWER: u64 = 4;

/// The index of the newest hot key at `now`: keys `k{c-hot+1}..=k{c}` are hot.
pub fn hot_index(start_mono: u64, now: u64, period_ms: u64) -> u64 {
    now.saturating_sub(start_mono) / (period_ms * 1_000_000)
}

struct Ctx {
    args: WorkerArgs,
    pname: String,
    hist: History,
    clients: Vec<Client>,
    raw: Vec<SentinelServiceClient<Channel>>,
    lease: Duration,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let pname = format!("w{}.{}", args.id, args.inc);
    let hist = History::open(&args.history, &pname)?;
    let mut clients = Vec::new();
    let mut raw = Vec::new();
    for s in &args.servers {
        let client = Client::builder(s.clone())
            .namespace(args.namespace.clone())
            .holder(pname.clone())
            .rpc_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .retry(RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
            })
            .connect_lazy()?;
        clients.push(client);
        let endpoint = Endpoint::from_shared(format!("http://{s}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        raw.push(SentinelServiceClient::new(endpoint.connect_lazy()));
    }
    let ctx = std::sync::Arc::new(Ctx {
        lease: Duration::from_millis(args.lease_ms),
        args: args.clone(),
        pname,
        hist,
        clients,
        raw,
    });
    let mut tasks = Vec::new();
    for lane in 0..args.concurrency {
        let ctx = ctx.clone();
        let seed =
            args.seed ^ (u64::from(args.id) << 32) ^ (u64::from(args.inc) << 16) ^ u64::from(lane);
        tasks.push(tokio::spawn(
            async move { lane_loop(ctx, lane, seed).await },
        ));
    }
    for t in tasks {
        t.await.context("worker lane panicked")?;
    }
    Ok(())
}

async fn lane_loop(ctx: std::sync::Arc<Ctx>, lane: u32, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sink = SinkClient::new(ctx.args.sink.clone());
    let mut n = 0u64;
    while mono_ns() < ctx.args.end_mono {
        n += 1;
        let r: f64 = rng.random();
        if r < 0.65 {
            op_once(&ctx, &mut rng, &mut sink, lane, n, Family::Keep).await;
        } else if r < 0.80 {
            op_once(&ctx, &mut rng, &mut sink, lane, n, Family::ShortRetention).await;
        } else if r < 0.95 {
            op_manual(&ctx, &mut rng, &mut sink, lane, n).await;
        } else {
            op_force_reconcile(&ctx, &mut rng).await;
        }
        // A breath between operations, so that the hot window is shared, not monopolized.
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..60))).await;
    }
}

impl Ctx {
    /// A key of the sliding window of `prefix`, whose newest key changes every
    /// `key_period_ms * slow` ms: mostly one of the newest `hot_keys`, sometimes an older one,
    /// so that a key held by a paused or killed worker is still visited after its lease ends.
    fn hot_key(&self, prefix: &str, slow: u64, rng: &mut StdRng) -> (String, u64) {
        let c = hot_index(
            self.args.start_mono,
            mono_ns(),
            self.args.key_period_ms * slow,
        );
        let hot = self.args.hot_keys;
        let back = if rng.random_bool(0.7) {
            rng.random_range(0..hot)
        } else {
            rng.random_range(0..hot * 8)
        };
        let n = c.saturating_sub(back);
        (format!("{prefix}{n}"), n)
    }

    fn pick(&self, rng: &mut StdRng) -> usize {
        rng.random_range(0..self.clients.len())
    }
}

/// Injected outcome of one unit of work.
#[derive(Clone, Copy, Debug)]
enum Inject {
    Succeed,
    NothingHappened,
    Possible,
    Definite,
}

/// The keys `once` works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// `k*`: results kept for the run (the server's default retention).
    Keep,
    /// `r*`: results kept for one second, after which the key is claimable again and must get
    /// a larger token than in any earlier life (token floors).
    ShortRetention,
}

async fn op_once(
    ctx: &Ctx,
    rng: &mut StdRng,
    sink: &mut SinkClient,
    lane: u32,
    n: u64,
    family: Family,
) {
    let prefix = match family {
        Family::Keep => "k",
        Family::ShortRetention => RETENTION_PREFIX,
    };
    // Short-retention keys stay hot longer, so that each lives several lives.
    let slow = match family {
        Family::Keep => 1,
        Family::ShortRetention => SLOWER,
    };
    let (key, idx) = ctx.hot_key(prefix, slow, rng);
    // Every third key reports expired leases as UNCERTAIN (the server default); the others
    // are taken over.
    let policy = if idx % 3 == 2 {
        LeaseExpiryPolicy::Uncertain
    } else {
        LeaseExpiryPolicy::Retry
    };
    let client = &ctx.clients[ctx.pick(rng)];
    let lease_ms = ctx.lease.as_millis() as u64;
    // Every fifth key has a hard deadline of two leases, and work that sometimes outlasts it.
    let hard_deadline = idx % 5 == 4;
    let longest = if hard_deadline {
        lease_ms * 3
    } else {
        lease_ms
    };
    let work = Duration::from_millis(rng.random_range(lease_ms / 8..longest));
    let roll: f64 = rng.random();
    let inject = if roll < 0.04 {
        Inject::NothingHappened
    } else if roll < 0.07 {
        Inject::Possible
    } else if roll < 0.09 {
        Inject::Definite
    } else {
        Inject::Succeed
    };
    let zombie = rng.random_bool(0.5);
    let probe_server = ctx.pick(rng);
    let mut options = OnceOptions::new()
        .lease_ttl(ctx.lease)
        .on_lease_expiry(policy)
        .wait_in_progress(ctx.lease * 2);
    if family == Family::ShortRetention {
        options = options.retention(Duration::from_secs(1));
    }
    if hard_deadline {
        options = options.hard_ttl(ctx.lease * 2);
    }
    // A holder of its own: a live lease naming it can only come from this call's own claim.
    let holder = format!("{}/{lane}/{n}", ctx.pname);
    options = options.holder(holder.clone());
    let op = ctx.hist.invoke("once", &key, |r| {
        r.detail(format!("{policy:?}")).holder(&holder)
    });
    let payload = format!("w:{key}:{{token}}:{}:{lane}:{n}", ctx.pname);
    let result = client
        .once(&key, &options, |lease| {
            let op = op.clone();
            let key = key.clone();
            async move {
                let token = lease.token();
                op.note(|r| r.outcome("acquired").token(token));
                tokio::time::sleep(work / 2).await;
                probe(ctx, probe_server, &key, token).await;
                tokio::time::sleep(work / 2).await;
                let end = |why: &str| op.note(|r| r.outcome("work_end").token(token).detail(why));
                if lease.is_cancelled() && !zombie {
                    end("lease lost before the side effect");
                    return Err(WorkError::nothing_happened(
                        "lease lost before the side effect",
                    ));
                }
                match inject {
                    Inject::NothingHappened => {
                        end("injected: nothing happened");
                        return Err(WorkError::nothing_happened("injected: nothing happened"));
                    }
                    Inject::Definite => {
                        end("injected: definite failure");
                        return Err(WorkError::definite("injected: definite failure"));
                    }
                    Inject::Succeed | Inject::Possible => {}
                }
                let payload = payload.replace("{token}", &token.to_string());
                match sink_write(&ctx.hist, sink, &key, token, &payload).await {
                    Some(SinkReply::Accepted) => {}
                    Some(SinkReply::Rejected { .. }) => {
                        end("sink rejected the token");
                        return Err(WorkError::nothing_happened("the sink rejected the token"));
                    }
                    None => {
                        end("sink write outcome unknown");
                        return Err(WorkError::possible("the sink write outcome is unknown"));
                    }
                }
                if let Inject::Possible = inject {
                    end("injected: possible side effects");
                    return Err(WorkError::possible("injected: possible side effects"));
                }
                end("ok");
                Ok::<_, WorkError>(payload.into_bytes())
            }
        })
        .await;
    if let Next::Reconcile(token) = record_once(&op, result) {
        if rng.random_bool(0.9) {
            reconcile(ctx, rng, &key, token, false).await;
        }
    }
}

/// What to do after a `once`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// This call stored the key's result.
    Done,
    /// The key's stored result was replayed.
    Replayed,
    /// The execution needs a reconcile at this token.
    Reconcile(u64),
    /// Try again later.
    Again,
}

/// Records the outcome of a `once` and says what it calls for.
pub fn record_once(op: &Op, result: Result<Outcome<Vec<u8>>, Error>) -> Next {
    match result {
        Ok(Outcome::Completed(r)) => {
            op.ok(|x| {
                x.outcome("completed")
                    .token(r.token)
                    .response(&r.bytes)
                    .late(r.late)
            });
            Next::Done
        }
        Ok(Outcome::Replayed(r)) => {
            op.ok(|x| x.outcome("replayed").token(r.token).response(&r.bytes));
            Next::Replayed
        }
        Ok(Outcome::InProgress(p)) => {
            op.ok(|x| x.outcome("in_progress").detail(p.holder));
            Next::Again
        }
        Ok(Outcome::Uncertain(u)) => {
            let token = u.uncertain.token;
            // With the work's own error, this call's Complete made it uncertain.
            let what = if u.error.is_some() {
                "reported"
            } else {
                "uncertain"
            };
            op.ok(|x| {
                x.outcome(what)
                    .token(token)
                    .detail(format!("{:?}", u.uncertain.reason))
            });
            Next::Reconcile(token)
        }
        Ok(Outcome::Failed(f)) => {
            let what = if f.cached {
                "failed_replay"
            } else if f.released {
                "released"
            } else {
                "failed"
            };
            op.ok(|x| x.outcome(what).token(f.token).detail(f.message.clone()));
            // A stored failure is sometimes retried by a reconciler.
            if f.cached {
                Next::Reconcile(f.token)
            } else {
                Next::Again
            }
        }
        Err(e) => {
            record_error(op, &e);
            Next::Again
        }
    }
}

pub fn record_error(op: &Op, e: &Error) {
    match e {
        Error::Fenced { current_token, .. } => op.fail(|x| {
            let x = x.outcome("fenced").detail(e.to_string());
            match current_token {
                Some(t) => x.new_token(*t),
                None => x,
            }
        }),
        e if e.is_retryable() => op.info(|x| x.outcome("unknown").detail(e.to_string())),
        Error::Protocol { .. } => op.fail(|x| x.outcome("protocol_error").detail(e.to_string())),
        Error::Connect { .. } => op.fail(|x| x.outcome("connect").detail(e.to_string())),
        e => op.fail(|x| {
            x.outcome(e.reason().unwrap_or("error"))
                .detail(e.to_string())
        }),
    }
}

pub async fn sink_write(
    hist: &History,
    sink: &mut SinkClient,
    key: &str,
    token: u64,
    payload: &str,
) -> Option<SinkReply> {
    let op = hist.invoke("sink", key, |r| r.token(token).detail(payload));
    match sink.write(key, token, payload).await {
        Ok(SinkReply::Accepted) => {
            op.ok(|r| r.outcome("accepted"));
            Some(SinkReply::Accepted)
        }
        Ok(SinkReply::Rejected { highest }) => {
            op.ok(|r| r.outcome("rejected").new_token(highest));
            Some(SinkReply::Rejected { highest })
        }
        Err(e) => {
            op.info(|r| r.detail(e.to_string()));
            None
        }
    }
}

/// One heartbeat on a raw stream of its own, so that its reply is in the history.
async fn probe(ctx: &Ctx, server: usize, key: &str, token: u64) {
    let op = ctx.hist.invoke("heartbeat", key, |r| r.token(token));
    let mut raw = ctx.raw[server].clone();
    let request = pb::HeartbeatRequest {
        namespace: ctx.args.namespace.clone(),
        key: key.to_owned(),
        token,
    };
    let result = tokio::time::timeout(Duration::from_secs(2), async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(request).await?;
        let mut inbound = raw.heartbeat(ReceiverStream::new(rx)).await?.into_inner();
        while let Some(m) = inbound.message().await? {
            if m.key == key && m.token == token {
                drop(tx);
                return Ok(m.result);
            }
        }
        anyhow::bail!("the heartbeat stream ended without a reply")
    })
    .await;
    match result {
        Ok(Ok(Some(pb::heartbeat_response::Result::Alive(_)))) => op.ok(|r| r.outcome("alive")),
        Ok(Ok(Some(pb::heartbeat_response::Result::Lost(l)))) => op.ok(|r| {
            let reason = pb::LostReason::try_from(l.reason)
                .map(|r| r.as_str_name().to_owned())
                .unwrap_or_else(|_| l.reason.to_string());
            r.outcome("lost").detail(reason)
        }),
        Ok(Ok(None)) => op.fail(|r| r.outcome("protocol_error").detail("reply without result")),
        Ok(Err(e)) => op.info(|r| r.detail(e.to_string())),
        Err(_) => op.info(|r| r.detail("timed out")),
    }
}

/// Resolves an uncertain (or failed) execution, as a reconciler would.
async fn reconcile(ctx: &Ctx, rng: &mut StdRng, key: &str, expected: u64, force: bool) {
    let roll: f64 = rng.random();
    let resolution = if force || roll < 0.45 {
        Resolution::Retry
    } else if roll < 0.9 {
        Resolution::MarkCompleted {
            response: format!("r:{key}:{expected}:{}", ctx.pname).into_bytes(),
        }
    } else {
        Resolution::MarkFailed {
            message: "reconciled as failed".to_owned(),
        }
    };
    let client = &ctx.clients[ctx.pick(rng)];
    do_reconcile(&ctx.hist, client, key, expected, &resolution, force).await;
}

/// One logged reconcile; returns the new token when it was applied.
pub async fn do_reconcile(
    hist: &History,
    client: &Client,
    key: &str,
    expected: u64,
    resolution: &Resolution,
    force: bool,
) -> Option<u64> {
    let op = hist.invoke("reconcile", key, |r| {
        let r = r.token(expected);
        match resolution {
            Resolution::MarkCompleted { response } => r.detail("mark_completed").response(response),
            Resolution::Retry if force => r.detail("force_retry"),
            Resolution::Retry => r.detail("retry"),
            Resolution::MarkFailed { .. } => r.detail("mark_failed"),
        }
    });
    let options = ReconcileOptions {
        operator: None,
        note: "sentinel-faults".to_owned(),
        force,
    };
    match client.reconcile(key, expected, resolution, &options).await {
        Ok(r) => {
            op.ok(|x| x.outcome(state_name(r.state)).new_token(r.token));
            Some(r.token)
        }
        Err(e) => {
            record_error(&op, &e);
            None
        }
    }
}

pub fn state_name(s: ExecutionState) -> &'static str {
    match s {
        ExecutionState::Running => "running",
        ExecutionState::Completed => "completed",
        ExecutionState::Failed => "failed",
        ExecutionState::Uncertain => "uncertain",
        ExecutionState::Released => "released",
    }
}

/// An operator ends a running execution by force: its holder must then be fenced.
async fn op_force_reconcile(ctx: &Ctx, rng: &mut StdRng) {
    let (key, _) = ctx.hot_key("k", 1, rng);
    let client = &ctx.clients[ctx.pick(rng)];
    let Ok(inspection) = client.inspect(&key).await else {
        return;
    };
    if inspection.execution.state == ExecutionState::Running {
        reconcile(ctx, rng, &key, inspection.execution.token, true).await;
    }
}

/// Claim and complete by hand, with an explicit claim id retried after unknown outcomes.
async fn op_manual(ctx: &Ctx, rng: &mut StdRng, sink: &mut SinkClient, lane: u32, n: u64) {
    let (key, _) = ctx.hot_key("m", SLOWER, rng);
    let claim_id = uuid::Uuid::new_v4().to_string();
    // No heartbeats here: the lease must outlast the retries and the work.
    let lease = ctx.lease * 4;
    let options = ClaimOptions {
        lease_ttl: Some(lease),
        claim_id: Some(claim_id.clone()),
        on_lease_expiry: LeaseExpiryPolicy::Retry,
        ..ClaimOptions::default()
    };
    let started = tokio::time::Instant::now();
    let mut token = None;
    let mut attempts = 0;
    while token.is_none() && attempts < 4 && started.elapsed() < lease / 2 {
        attempts += 1;
        let client = &ctx.clients[ctx.pick(rng)];
        let op = ctx.hist.invoke("claim", &key, |r| r.claim_id(&claim_id));
        match client.claim(&key, &options).await {
            Ok(ClaimOutcome::Acquired(a)) => {
                op.ok(|r| r.outcome("acquired").token(a.token));
                token = Some(a.token);
            }
            Ok(other) => {
                let reconcile_token = record_claim_reply(&op, &other);
                if let Some(t) = reconcile_token {
                    if rng.random_bool(0.9) {
                        reconcile(ctx, rng, &key, t, false).await;
                    }
                }
                return;
            }
            Err(e) if e.is_retryable() => {
                op.info(|r| r.outcome("unknown").detail(e.to_string()));
            }
            Err(e) => {
                record_error(&op, &e);
                return;
            }
        }
    }
    let Some(token) = token else { return };
    // Sometimes repeat the acquired claim on purpose (e.g. through the other server): the same
    // claim id must get the same lease back.
    if rng.random_bool(0.3) {
        let client = &ctx.clients[ctx.pick(rng)];
        let op = ctx
            .hist
            .invoke("claim", &key, |r| r.claim_id(&claim_id).detail("repeat"));
        match client.claim(&key, &options).await {
            Ok(ClaimOutcome::Acquired(a)) => op.ok(|r| r.outcome("acquired").token(a.token)),
            Ok(other) => {
                record_claim_reply(&op, &other);
            }
            Err(e) => record_error(&op, &e),
        }
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
    probe(ctx, ctx.pick(rng), &key, token).await;
    let payload = format!("w:{key}:{token}:{}:{lane}:{n}", ctx.pname);
    match sink_write(&ctx.hist, sink, &key, token, &payload).await {
        Some(SinkReply::Accepted) => {}
        Some(SinkReply::Rejected { .. }) | None => return,
    }
    let outcome = CompleteOutcome::Success {
        response: payload.clone().into_bytes(),
    };
    for _ in 0..3 {
        let client = &ctx.clients[ctx.pick(rng)];
        let op = ctx.hist.invoke("complete", &key, |r| {
            r.token(token).response(payload.as_bytes())
        });
        match client.complete(&key, token, &outcome, None).await {
            Ok(c) => {
                op.ok(|r| {
                    r.outcome(state_name(c.state))
                        .new_token(c.token)
                        .late(c.late)
                });
                return;
            }
            Err(e) if e.is_retryable() => op.info(|r| r.outcome("unknown").detail(e.to_string())),
            Err(e) => {
                record_error(&op, &e);
                return;
            }
        }
    }
}

/// Records a claim reply other than ACQUIRED; returns the token to reconcile, if any.
fn record_claim_reply(op: &Op, outcome: &ClaimOutcome) -> Option<u64> {
    match outcome {
        ClaimOutcome::Acquired(a) => {
            op.ok(|r| r.outcome("acquired").token(a.token));
            None
        }
        ClaimOutcome::InProgress(p) => {
            op.ok(|r| r.outcome("in_progress").detail(p.holder.clone()));
            None
        }
        ClaimOutcome::Completed(c) => {
            op.ok(|r| r.outcome("replayed").token(c.token).response(&c.response));
            None
        }
        ClaimOutcome::Failed(f) => {
            op.ok(|r| r.outcome("failed_replay").token(f.token));
            Some(f.token)
        }
        ClaimOutcome::Uncertain(u) => {
            op.ok(|r| r.outcome("uncertain").token(u.token));
            Some(u.token)
        }
    }
}
