//! The orchestrator of one run: PostgreSQL, two servers behind fault proxies, the sink, the
//! workers, the nemesis; then healing, completing every key, and dumping the database.
//!
//! ```text
//!  workers ──proxy client-a──▶ server a ──proxy db-a──▶
//!          ──proxy client-b──▶ server b ──proxy db-b──▶  PostgreSQL
//!     └──────────────▶ sink (fenced, logs every attempt)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use sentinel_client::{Client, LeaseExpiryPolicy, OnceOptions, Resolution, WorkError};
use serde::{Deserialize, Serialize};

use crate::history::{hex, mono_ns, History};
use crate::nemesis::{self, Fault, Link, Profile, Shape, Step};
use crate::procs::{Helper, Postgres, Server};
use crate::proxy::{Mode, Proxy};
use crate::sink::{SinkClient, SinkReply};
use crate::worker::{self, hot_index, Next};

/// How long the final phase may take to bring one key to a stored result after healing.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(90);
const HOT_KEYS: u64 = 4;

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Seed of the nemesis schedule and the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long the workload runs under faults (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Directory for every log, history and dump of the run (created; must be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// The `sentinel` binary (default: target/debug/sentinel of the repository).
    #[arg(long, env = "SENTINEL_BIN")]
    pub server_bin: Option<PathBuf>,
    /// Sets SENTINEL_NEGATIVE_CONTROL for the servers (needs a negative-controls build).
    #[arg(long)]
    pub control: Option<String>,
    /// Which faults to inject.
    #[arg(long, value_enum, default_value = "all")]
    pub profile: Profile,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Lease of the workers' `once` calls, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub lease_ms: u64,
    /// How often a new key becomes the hottest, in milliseconds. Default by profile: slow
    /// for `pause` (a paused worker's key is still contended when its lease ends), fast for
    /// `pg-crash` (many fresh completions right before each crash), in between for `all`.
    #[arg(long)]
    pub key_period_ms: Option<u64>,
    /// The repository root (default: found from this crate's location at build time).
    #[arg(long)]
    pub repo_root: Option<PathBuf>,
}

/// What the checker needs to know about a run, saved as `run.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunInfo {
    pub seed: u64,
    pub profile: String,
    pub control: Option<String>,
    pub server_bin: String,
    pub duration_ms: u64,
    pub lease_ms: u64,
    pub key_period_ms: u64,
    pub workers: usize,
    pub namespace: String,
    pub start_mono: u64,
    pub end_mono: u64,
    /// When every fault was healed and the final phase began.
    pub heal_mono: u64,
    pub faults: BTreeMap<String, u64>,
    /// Processes that died without the nemesis killing them.
    pub unexpected_exits: Vec<String>,
    /// Every key of the run, each brought to a stored result by the final phase.
    pub keys: Vec<String>,
    /// Keys the final phase could not resolve within the bound.
    pub unresolved: Vec<String>,
    /// Milliseconds from healing to the stored result, per key.
    pub recovery_ms: BTreeMap<String, u64>,
}

/// A row of `executions`, as dumped after the final phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DbExecution {
    pub namespace: String,
    pub key: String,
    pub state: i16,
    pub token: i64,
    pub attempt: i32,
    pub response: Option<String>,
    pub error: Option<String>,
    pub holder: String,
    pub claim_id: String,
}

/// A row of `execution_events`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DbEvent {
    pub id: i64,
    pub namespace: String,
    pub key: String,
    pub token: i64,
    pub from_state: i16,
    pub to_state: i16,
    pub reason: String,
    pub actor: String,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (ms, s, m, h)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|e| format!("{s:?}: {e}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    }
}

/// The repository root: two levels above this crate, unless given.
pub fn repo_root(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let root = given.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let root = root
        .canonicalize()
        .with_context(|| format!("repository root {}", root.display()))?;
    if !root.join("scripts/pg.sh").exists() {
        bail!("{} has no scripts/pg.sh; pass --repo-root", root.display());
    }
    Ok(root)
}

/// Stops the cluster even if the run fails half-way.
struct PgGuard {
    script: PathBuf,
    dir: PathBuf,
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

struct Cluster {
    pg: Postgres,
    db_proxies: Vec<Proxy>,
    client_proxies: Vec<Proxy>,
    servers: Vec<Server>,
    workers: Vec<Helper>,
    nemesis: History,
    unexpected: Vec<String>,
    end_mono: u64,
}

pub async fn run(args: RunArgs) -> anyhow::Result<RunInfo> {
    let root = repo_root(args.repo_root.clone())?;
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => root.join("target/debug/sentinel"),
    };
    if !bin.exists() {
        bail!(
            "no server binary at {} (build it with `cargo build -p sentinel-server`, or pass --server-bin)",
            bin.display()
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    if std::fs::read_dir(&out)?.next().is_some() {
        bail!("{} is not empty", out.display());
    }
    // PostgreSQL runs as `postgres` when we are root, and must reach its data directory.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755))?;
    }
    let namespace = format!("faults-{}", args.seed);
    let key_period = args.key_period_ms.unwrap_or(match args.profile {
        Profile::Pause => 1500,
        Profile::All => 500,
        Profile::PgCrash | Profile::None => 300,
    });
    let shape = Shape {
        workers: args.workers,
        servers: 2,
        lease_millis: args.lease_ms,
    };
    let steps = nemesis::schedule(args.seed, args.profile, args.duration, &shape);
    std::fs::write(
        out.join("schedule.json"),
        serde_json::to_vec_pretty(&steps)?,
    )?;

    let mut pg = Postgres::new(&root, out.join("pg"), crate::procs::free_port()?);
    let _guard = PgGuard {
        script: root.join("scripts/pg.sh"),
        dir: pg.dir.clone(),
    };
    pg.start().await.context("starting PostgreSQL")?;
    // Synchronous commits flush the WAL at every commit whatever this says; asynchronous ones
    // are flushed by the WAL writer. Its longest delay widens the window in which an
    // acknowledged but unflushed commit dies with an immediate stop, so that a server that
    // commits asynchronously (the async-commit control) is caught every time, not sometimes.
    {
        let db = pg.connect().await?;
        for sql in [
            "ALTER SYSTEM SET wal_writer_delay = '10s'",
            "SELECT pg_reload_conf()",
        ] {
            db.batch_execute(sql)
                .await
                .context("configuring PostgreSQL")?;
        }
    }
    eprintln!("faults: PostgreSQL on {}", pg.url());

    let mut db_proxies = Vec::new();
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let proxy = Proxy::start(pg.addr()).await?;
        let url = format!("postgres://postgres@{}/postgres", proxy.addr);
        let mut server = Server::new(name, bin.clone(), url, args.control.clone(), out.clone())?;
        // One at a time: the first one applies the migrations.
        server.start().await?;
        db_proxies.push(proxy);
        servers.push(server);
    }
    let mut client_proxies = Vec::new();
    for s in &servers {
        client_proxies.push(Proxy::start(s.addr()).await?);
    }
    eprintln!(
        "faults: servers on {} and {}, behind {} and {}",
        servers[0].addr(),
        servers[1].addr(),
        client_proxies[0].addr,
        client_proxies[1].addr
    );

    let mut sink = Helper::new(
        "sink",
        vec![
            "sink".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--log".into(),
            out.join("sink.jsonl").display().to_string(),
        ],
        out.clone(),
    );
    let sink_addr = sink
        .start(Some("sink listening on "))
        .await?
        .context("the sink printed no address")?;

    let start_mono = mono_ns();
    let end_mono = start_mono + args.duration.as_nanos() as u64;
    let servers_arg = client_proxies
        .iter()
        .map(|p| p.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let mut w = Helper::new(
            &format!("worker-{i}"),
            vec![
                "worker".into(),
                "--id".into(),
                i.to_string(),
                "--inc".into(),
                "{inc}".into(),
                "--servers".into(),
                servers_arg.clone(),
                "--sink".into(),
                sink_addr.clone(),
                "--history".into(),
                out.join(format!("history-w{i}.jsonl"))
                    .display()
                    .to_string(),
                "--namespace".into(),
                namespace.clone(),
                "--seed".into(),
                args.seed.to_string(),
                "--start-mono".into(),
                start_mono.to_string(),
                "--end-mono".into(),
                end_mono.to_string(),
                "--lease-ms".into(),
                args.lease_ms.to_string(),
                "--key-period-ms".into(),
                key_period.to_string(),
                "--hot-keys".into(),
                HOT_KEYS.to_string(),
            ],
            out.clone(),
        );
        w.start(None).await?;
        workers.push(w);
    }
    let mut cluster = Cluster {
        pg,
        db_proxies,
        client_proxies,
        servers,
        workers,
        nemesis: History::open(&out.join("history-nemesis.jsonl"), "nemesis")?,
        unexpected: Vec::new(),
        end_mono,
    };
    eprintln!(
        "faults: seed {} profile {:?}{}: {} workers for {:?}, {} faults scheduled",
        args.seed,
        args.profile,
        args.control
            .as_deref()
            .map(|c| format!(" control {c}"))
            .unwrap_or_default(),
        args.workers,
        args.duration,
        steps.len()
    );

    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    for step in &steps {
        let at = start_mono + step.at_millis * 1_000_000;
        sleep_until_mono(at).await;
        cluster.watch().await;
        apply(&mut cluster, step).await;
        *faults.entry(step.fault.kind().to_owned()).or_default() += 1;
    }
    sleep_until_mono(end_mono).await;

    // Heal: every link back, every process running, every worker let go.
    cluster.watch().await;
    for p in cluster.client_proxies.iter().chain(&cluster.db_proxies) {
        p.heal();
    }
    for w in &mut cluster.workers {
        let _ = w.resume();
    }
    if !cluster.pg.is_running() {
        cluster.pg.start().await?;
    }
    for s in &mut cluster.servers {
        if !s.is_running() {
            s.start().await?;
        }
    }
    let linger = Duration::from_millis(args.lease_ms * 4) + Duration::from_secs(15);
    for w in &mut cluster.workers {
        if !w.wait_exit(linger).await {
            cluster
                .unexpected
                .push(format!("{} did not exit cleanly at the end", w.name));
        }
    }
    let heal_mono = mono_ns();
    eprintln!(
        "faults: healed {:.1}s after the end of the workload; completing every key",
        (heal_mono.saturating_sub(end_mono)) as f64 / 1e9
    );

    let mut keys: BTreeSet<String> = BTreeSet::new();
    for n in 0..=hot_index(start_mono, end_mono, key_period) {
        keys.insert(format!("k{n}"));
    }
    for n in 0..=hot_index(start_mono, end_mono, key_period * worker::SLOWER) {
        keys.insert(format!("m{n}"));
        keys.insert(format!("{}{n}", worker::RETENTION_PREFIX));
    }
    let db = cluster.pg.connect().await?;
    for row in db
        .query(
            "SELECT key FROM executions WHERE namespace = $1",
            &[&namespace],
        )
        .await?
    {
        keys.insert(row.get(0));
    }
    let keys: Vec<String> = keys.into_iter().collect();
    let final_client = Client::builder(cluster.servers[0].addr().to_string())
        .namespace(namespace.clone())
        .holder("final")
        .rpc_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let final_history = History::open(&out.join("history-final.jsonl"), "final")?;
    let recovery = resolve_all(
        &final_client,
        &final_history,
        &sink_addr,
        &keys,
        heal_mono,
        args.lease_ms,
    )
    .await;
    let mut recovery_ms = BTreeMap::new();
    let mut unresolved = Vec::new();
    for (key, r) in recovery {
        match r {
            Some(ms) => {
                recovery_ms.insert(key, ms);
            }
            None => unresolved.push(key),
        }
    }

    eprintln!(
        "faults: final phase done in {:.1}s ({} keys, {} unresolved)",
        (mono_ns() - heal_mono) as f64 / 1e9,
        keys.len(),
        unresolved.len()
    );
    dump(&db, &out).await?;
    drop(db);
    for s in &mut cluster.servers {
        s.stop().await;
    }
    sink.kill9().await;
    cluster.pg.stop().await?;
    // The dumps hold what the checker needs; the cluster itself is only kept for its log.
    let _ = std::fs::copy(cluster.pg.dir.join("server.log"), out.join("postgres.log"));
    let _ = std::fs::remove_dir_all(&cluster.pg.dir);

    let info = RunInfo {
        seed: args.seed,
        profile: format!("{:?}", args.profile).to_lowercase(),
        control: args.control.clone(),
        server_bin: bin.display().to_string(),
        duration_ms: args.duration.as_millis() as u64,
        lease_ms: args.lease_ms,
        key_period_ms: key_period,
        workers: args.workers,
        namespace,
        start_mono,
        end_mono,
        heal_mono,
        faults,
        unexpected_exits: cluster.unexpected.clone(),
        keys,
        unresolved,
        recovery_ms,
    };
    std::fs::write(out.join("run.json"), serde_json::to_vec_pretty(&info)?)?;
    Ok(info)
}

async fn sleep_until_mono(t: u64) {
    let now = mono_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

impl Cluster {
    fn proxy(&self, link: Link) -> &Proxy {
        match link {
            Link::Client(n) => &self.client_proxies[n],
            Link::Database(n) => &self.db_proxies[n],
        }
    }

    /// Notices processes that died on their own (a server crash is a finding) and restarts
    /// them, so that one crash does not end the run.
    async fn watch(&mut self) {
        for s in &mut self.servers {
            if let Some(status) = s.exited() {
                let what = format!("server {} exited by itself: {status}", s.name);
                eprintln!("faults: {what}");
                self.nemesis
                    .invoke("unexpected-exit", "", |r| r.detail(what.clone()))
                    .ok(|r| r);
                self.unexpected.push(what);
                if let Err(e) = s.start().await {
                    eprintln!("faults: restarting server {}: {e:#}", s.name);
                }
            }
        }
        for w in &mut self.workers {
            if !w.paused && !w.is_running() && mono_ns() < self.end_mono && w.pid().is_some() {
                let what = format!("{} exited by itself", w.name);
                self.nemesis
                    .invoke("unexpected-exit", "", |r| r.detail(what.clone()))
                    .ok(|r| r);
                self.unexpected.push(what);
                let _ = w.start(None).await;
            }
        }
    }
}

async fn apply(c: &mut Cluster, step: &Step) {
    let op = c
        .nemesis
        .invoke(step.fault.kind(), "", |r| r.detail(step.fault.to_string()));
    let result: anyhow::Result<()> = async {
        match &step.fault {
            Fault::PauseWorker { worker, millis } => {
                let w = &mut c.workers[*worker];
                if !w.is_running() {
                    return Ok(());
                }
                w.pause()?;
                tokio::time::sleep(Duration::from_millis(*millis)).await;
                c.workers[*worker].resume()?;
            }
            Fault::KillWorker { worker } => {
                let w = &mut c.workers[*worker];
                w.kill9().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                if mono_ns() < c.end_mono {
                    w.start(None).await?;
                }
            }
            Fault::KillServer {
                server,
                down_millis,
            } => {
                let s = &mut c.servers[*server];
                s.kill9().await;
                tokio::time::sleep(Duration::from_millis(*down_millis)).await;
                s.start().await?;
            }
            Fault::PauseServer { server, millis } => {
                let s = &c.servers[*server];
                s.freeze(true)?;
                tokio::time::sleep(Duration::from_millis(*millis)).await;
                c.servers[*server].freeze(false)?;
            }
            Fault::PgImmediateRestart { down_millis } => {
                c.pg.stop_immediate().await?;
                tokio::time::sleep(Duration::from_millis(*down_millis)).await;
                c.pg.start().await?;
            }
            Fault::PgTerminateBackends => {
                let db = c.pg.connect().await?;
                let n: i64 = db
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE application_name = 'sentinel' AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await?
                    .get(0);
                op.note(|r| r.detail(format!("terminated {n} backends")));
            }
            Fault::Latency {
                link,
                delay_millis,
                millis,
            } => {
                let p = c.proxy(*link).clone();
                p.set(Mode::Latency(Duration::from_millis(*delay_millis)));
                tokio::time::sleep(Duration::from_millis(*millis)).await;
                p.heal();
            }
            Fault::Blackhole { link, millis } => {
                let p = c.proxy(*link).clone();
                p.set(Mode::Blackhole);
                tokio::time::sleep(Duration::from_millis(*millis)).await;
                p.heal();
            }
            Fault::DropReplies { link, millis } => {
                let p = c.proxy(*link).clone();
                p.set(Mode::DropReplies);
                tokio::time::sleep(Duration::from_millis(*millis)).await;
                p.heal();
            }
            Fault::ResetConnections { link } => c.proxy(*link).reset_all(),
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => op.ok(|r| r),
        Err(e) => {
            eprintln!("faults: {} failed: {e:#}", step.fault);
            op.fail(|r| r.detail(format!("{e:#}")));
        }
    }
}

/// Brings every key to a stored result: runs it if claimable, reconciles it (RETRY, with
/// its current token) if uncertain or failed, waits if a lease is still live. Returns, per
/// key, the milliseconds from `heal_mono` to its result (`None`: not within the bound).
async fn resolve_all(
    client: &Client,
    history: &History,
    sink_addr: &str,
    keys: &[String],
    heal_mono: u64,
    lease_ms: u64,
) -> Vec<(String, Option<u64>)> {
    futures::stream::iter(keys.iter().cloned())
        .map(|key| async move {
            let mut sink = SinkClient::new(sink_addr.to_owned());
            let r = resolve_key(client, history, &mut sink, &key, heal_mono, lease_ms).await;
            (key, r)
        })
        .buffer_unordered(32)
        .collect()
        .await
}

async fn resolve_key(
    client: &Client,
    history: &History,
    sink: &mut SinkClient,
    key: &str,
    heal_mono: u64,
    lease_ms: u64,
) -> Option<u64> {
    let deadline = heal_mono + RECOVERY_BOUND.as_nanos() as u64;
    let options = OnceOptions::new()
        .lease_ttl(Duration::from_millis(lease_ms * 2))
        .on_lease_expiry(LeaseExpiryPolicy::Retry)
        .wait_in_progress(Duration::from_millis(lease_ms * 4));
    while mono_ns() < deadline {
        let op = history.invoke("once", key, |r| r.detail("final"));
        let result = client
            .once(key, &options, |lease| {
                let op = op.clone();
                let sink = &mut *sink;
                async move {
                    let token = lease.token();
                    op.note(|r| r.outcome("acquired").token(token));
                    let payload = format!("f:{key}:{token}");
                    let reply = worker::sink_write(history, sink, key, token, &payload).await;
                    op.note(|r| r.outcome("work_end").token(token));
                    match reply {
                        Some(SinkReply::Accepted) => Ok(payload.into_bytes()),
                        Some(SinkReply::Rejected { .. }) => {
                            Err(WorkError::nothing_happened("the sink rejected the token"))
                        }
                        None => Err(WorkError::possible("the sink write outcome is unknown")),
                    }
                }
            })
            .await;
        match worker::record_once(&op, result) {
            Next::Done => return Some((mono_ns().saturating_sub(heal_mono)) / 1_000_000),
            // A short-retention result may be deleted before the dump: wait for it to expire
            // and store one with the default retention.
            Next::Replayed if key.starts_with(worker::RETENTION_PREFIX) => {
                tokio::time::sleep(Duration::from_millis(300)).await
            }
            Next::Replayed => return Some((mono_ns().saturating_sub(heal_mono)) / 1_000_000),
            Next::Reconcile(token) => {
                worker::do_reconcile(history, client, key, token, &Resolution::Retry, false).await;
            }
            Next::Again => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

/// Writes `db-executions.jsonl` and `db-events.jsonl`.
async fn dump(db: &tokio_postgres::Client, out: &Path) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for row in db
        .query(
            "SELECT namespace, key, state, token, attempt, response, error, holder, claim_id \
             FROM executions ORDER BY namespace, key",
            &[],
        )
        .await?
    {
        let response: Option<Vec<u8>> = row.get(5);
        let e = DbExecution {
            namespace: row.get(0),
            key: row.get(1),
            state: row.get(2),
            token: row.get(3),
            attempt: row.get(4),
            response: response.map(|r| hex(&r)),
            error: row.get(6),
            holder: row.get(7),
            claim_id: row.get(8),
        };
        lines.push(serde_json::to_string(&e)?);
    }
    std::fs::write(out.join("db-executions.jsonl"), lines.join("\n") + "\n")?;
    let mut lines = Vec::new();
    for row in db
        .query(
            "SELECT id, namespace, key, token, from_state, to_state, reason, actor \
             FROM execution_events ORDER BY id",
            &[],
        )
        .await?
    {
        let e = DbEvent {
            id: row.get(0),
            namespace: row.get(1),
            key: row.get(2),
            token: row.get(3),
            from_state: row.get(4),
            to_state: row.get(5),
            reason: row.get(6),
            actor: row.get(7),
        };
        lines.push(serde_json::to_string(&e)?);
    }
    std::fs::write(out.join("db-events.jsonl"), lines.join("\n") + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
