//! `sentinel-faults`: proves Sentinel's guarantees under faults, in the manner of Jepsen's
//! analyses and etcd's robustness suite, on one machine without containers.
//!
//! `run` starts PostgreSQL, two servers behind fault proxies, a fenced sink and worker
//! processes, injects a seeded schedule of faults, heals, completes every key and dumps the
//! database; `check` judges the histories against the invariants; `soak` does both for many
//! seeds. `worker` and `sink` are the child processes `run` starts.
//! See docs/reliability.md.

mod check;
mod history;
mod nemesis;
mod procs;
mod proxy;
mod run;
mod sink;
mod stall;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sentinel-faults",
    about = "Fault injection and invariant checking for Sentinel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run under a seeded nemesis, then the check (exit 1 if it fails).
    Run {
        #[command(flatten)]
        args: run::RunArgs,
        /// Only run; do not check.
        #[arg(long)]
        no_check: bool,
    },
    /// Checks a finished run directory; exit 1 if any invariant is violated.
    Check { dir: PathBuf },
    /// Runs and checks one seed after another, e.g. `--seeds 1..20 --duration 5m`.
    Soak {
        /// Seeds, as `A..B` (inclusive) or a comma-separated list.
        #[arg(long)]
        seeds: String,
        #[command(flatten)]
        args: run::RunArgs,
    },
    /// Reproduces head-of-line blocking: one locked row stalls a healthy server's other
    /// keys (exit 1 when it does).
    LockStall(stall::StallArgs),
    /// A worker process (started by `run`).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// The fenced sink (started by `run`).
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        log: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = rt.block_on(async move {
        // On SIGINT or SIGTERM the run is dropped, which stops what it started: children
        // are killed on drop and PostgreSQL is stopped by its guard.
        let work = async move {
            match cli.command {
                Command::Run { args, no_check } => {
                    let out = args.out.clone();
                    run::run(args).await?;
                    if no_check {
                        return Ok(true);
                    }
                    check_dir(&out)
                }
                Command::Check { dir } => check_dir(&dir),
                Command::Soak { seeds, args } => soak(&seeds, args).await,
                Command::LockStall(args) => stall::run(args).await,
                Command::Worker(args) => worker::run(args).await.map(|()| true),
                Command::Sink { listen, log } => sink::serve(&listen, &log).await.map(|()| true),
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sentinel-faults: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check_dir(dir: &std::path::Path) -> anyhow::Result<bool> {
    let report = check::check(dir)?;
    std::fs::write(dir.join("check.json"), serde_json::to_vec_pretty(&report)?)?;
    print!("{}", report.render());
    Ok(report.passed)
}

fn parse_seeds(s: &str) -> anyhow::Result<Vec<u64>> {
    if let Some((a, b)) = s.split_once("..") {
        let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
        anyhow::ensure!(a <= b, "empty seed range {s}");
        return Ok((a..=b).collect());
    }
    s.split(',')
        .map(|x| x.trim().parse().map_err(Into::into))
        .collect()
}

/// Every seed in its own directory under `--out`; a summary line per seed.
async fn soak(seeds: &str, args: run::RunArgs) -> anyhow::Result<bool> {
    let seeds = parse_seeds(seeds)?;
    let mut all = true;
    let mut summary = Vec::new();
    for seed in seeds {
        let mut a = args.clone();
        a.seed = seed;
        a.out = args.out.join(format!("seed-{seed}"));
        let out = a.out.clone();
        let line = match run::run(a).await {
            Ok(_) => match check::check(&out) {
                Ok(report) => {
                    std::fs::write(out.join("check.json"), serde_json::to_vec_pretty(&report)?)?;
                    let failed: Vec<&str> = report
                        .invariants
                        .iter()
                        .filter(|i| !i.passed)
                        .map(|i| i.name.as_str())
                        .collect();
                    all &= report.passed;
                    if report.passed {
                        format!(
                            "seed {seed}: PASS ({} ops)",
                            report.stats.get("ops").unwrap_or(&0)
                        )
                    } else {
                        print!("{}", report.render());
                        format!("seed {seed}: FAIL {failed:?}")
                    }
                }
                Err(e) => {
                    all = false;
                    format!("seed {seed}: CHECK ERROR {e:#}")
                }
            },
            Err(e) => {
                all = false;
                format!("seed {seed}: RUN ERROR {e:#}")
            }
        };
        println!("{line}");
        summary.push(line);
    }
    println!("--- soak summary ---\n{}", summary.join("\n"));
    Ok(all)
}
