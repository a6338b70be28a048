//! `lock-stall`: a deterministic reproduction of head-of-line blocking behind one row lock.
//!
//! A replica that is partitioned from PostgreSQL (or frozen) in the middle of a transaction
//! keeps that transaction's row locks until PostgreSQL notices the connection is dead, which
//! with default TCP keepalives takes hours. This experiment stands in for it with a direct
//! connection that locks one record (`BEGIN; SELECT ... FOR UPDATE`) and holds it, then
//! measures what a healthy server does meanwhile for *other* keys: fresh claims, and the
//! heartbeats of an unrelated live lease. Exit status 1 when unrelated work stalled.

use std::time::{Duration, Instant};

use anyhow::Context;
use sentinel_client::{ClaimOptions, Client, LeaseLoss, OnceOptions, RetryPolicy};

use crate::procs::{free_port, Postgres, Server};
use crate::run::repo_root;

#[derive(Clone, Debug, clap::Args)]
pub struct StallArgs {
    /// Directory for the cluster and logs (created; must be empty).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// The `sentinel` binary (default: target/debug/sentinel of the repository).
    #[arg(long, env = "SENTINEL_BIN")]
    pub server_bin: Option<std::path::PathBuf>,
    /// How long the row lock is held.
    #[arg(long, default_value = "10s", value_parser = crate::run::parse_duration)]
    pub hold: Duration,
    /// Server pool size (the default of `sentinel serve` on this machine when unset).
    #[arg(long)]
    pub pool_size: Option<usize>,
}

pub async fn run(args: StallArgs) -> anyhow::Result<bool> {
    let root = repo_root(None)?;
    let bin = args
        .server_bin
        .clone()
        .unwrap_or_else(|| root.join("target/debug/sentinel"));
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut pg = Postgres::new(&root, out.join("pg"), free_port()?);
    pg.start().await?;
    let result = experiment(&args, &pg, bin, &out).await;
    let _ = pg.stop().await;
    let _ = std::fs::remove_dir_all(&pg.dir);
    result
}

async fn experiment(
    args: &StallArgs,
    pg: &Postgres,
    bin: std::path::PathBuf,
    out: &std::path::Path,
) -> anyhow::Result<bool> {
    let mut server = Server::new("stall", bin, pg.url(), None, out.to_path_buf())?;
    server.pool_size = args.pool_size;
    server.start().await?;
    let client = Client::builder(server.addr().to_string())
        .namespace("stall")
        .rpc_timeout(Duration::from_secs(1))
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .connect()
        .await?;
    let lease = Duration::from_secs(2);

    // The record that will be locked, and an unrelated lease that must stay alive.
    let claim = |ttl: Duration| ClaimOptions {
        lease_ttl: Some(ttl),
        ..ClaimOptions::default()
    };
    // The holder of `held` heartbeats it like any worker; its lease will be lost (its row is
    // locked), which is fair. The unrelated lease must not be.
    let holder = {
        let client = client.clone();
        tokio::spawn(async move {
            let options = OnceOptions::new().lease_ttl(lease);
            let _ = client
                .once("held", &options, |l| async move {
                    l.cancelled().await;
                    Err::<Vec<u8>, _>(sentinel_client::WorkError::nothing_happened("lost"))
                })
                .await;
        })
    };
    let live = {
        let client = client.clone();
        tokio::spawn(async move {
            let options = OnceOptions::new().lease_ttl(lease);
            let started = Instant::now();
            let outcome = client
                .once("unrelated-live-lease", &options, |l| async move {
                    tokio::select! {
                        _ = l.cancelled() => {
                            let why = format!(
                                "lease lost {:?} after its claim: {}",
                                started.elapsed(),
                                l.loss().unwrap_or(LeaseLoss::DeadlineMissed)
                            );
                            eprintln!("lock-stall: unrelated-live-lease: {why}");
                            Err(sentinel_client::WorkError::nothing_happened(why))
                        }
                        _ = tokio::time::sleep(Duration::from_secs(12)) => Ok::<_, sentinel_client::WorkError>(b"done".to_vec()),
                    }
                })
                .await;
            match outcome {
                Ok(sentinel_client::Outcome::Completed(_)) => None,
                Ok(other) => Some(format!("{other:?}")),
                Err(e) => Some(e.to_string()),
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The stand-in for a partitioned replica's open transaction.
    let mut db = pg.connect().await?;
    let tx = db.transaction().await?;
    tx.execute(
        "SELECT 1 FROM executions WHERE namespace = 'stall' AND key = 'held' FOR UPDATE",
        &[],
    )
    .await?;
    let hold_start = Instant::now();
    eprintln!("lock-stall: row of key `held` locked for {:?}", args.hold);

    // Callers of the locked key retry on timeouts, as clients do.
    let retrying = {
        let client = client.clone();
        let hold = args.hold;
        tokio::spawn(async move {
            let options = ClaimOptions {
                claim_id: Some("retried".into()),
                ..claim(Duration::from_secs(60))
            };
            while hold_start.elapsed() < hold {
                let _ = client.claim("held", &options).await;
            }
        })
    };

    // Meanwhile: claims of fresh, unrelated keys.
    let mut n = 0;
    let mut stalled = 0;
    let mut worst = Duration::ZERO;
    while hold_start.elapsed() < args.hold {
        n += 1;
        let t = Instant::now();
        let r = client
            .claim(&format!("fresh-{n}"), &claim(Duration::from_secs(5)))
            .await;
        let took = t.elapsed();
        worst = worst.max(took);
        if let Err(e) = r {
            stalled += 1;
            eprintln!(
                "lock-stall: claim of unrelated fresh-{n} at +{:.1}s failed after {took:?}: {}",
                hold_start.elapsed().as_secs_f64(),
                e
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tx.rollback().await.context("releasing the lock")?;
    retrying.abort();
    holder.abort();
    let live = live.await?;
    println!(
        "lock-stall: while one row was locked for {:?}: {stalled} of {n} claims of unrelated keys failed (slowest {worst:?}); unrelated live lease: {}",
        args.hold,
        live.as_deref().unwrap_or("kept")
    );
    server.stop().await;
    Ok(stalled == 0 && live.is_none())
}
