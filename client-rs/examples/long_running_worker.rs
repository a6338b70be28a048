//! A job that runs far longer than its lease: the client's heartbeat stream renews the lease
//! every third of its ttl, and the job stops at once if the lease is lost.
//!
//! Start a server with `sentinel dev`, then:
//!
//! ```text
//! cargo run -p sentinel-client --example long_running_worker [ADDR] [STEPS]
//! ```
//!
//! ADDR defaults to `$SENTINEL_ADDR`, then `127.0.0.1:50051`; STEPS (one second each) to 10.
//! While it runs, an operator can end it with a forced Reconcile (e.g. with grpcurl); the
//! worker then stops within about a heartbeat interval and its result is refused as fenced.

use std::time::Duration;

use sentinel_client::{Client, Error, OnceOptions, Outcome, WorkError};
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .or_else(|| std::env::var("SENTINEL_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let steps: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);

    let client = Client::builder(&addr)
        .namespace("etl-example")
        .holder("etl-worker-1")
        .connect()
        .await?;
    let job = format!("nightly-batch-{}", uuid::Uuid::new_v4().simple());
    let lease_ttl = Duration::from_secs(3);
    println!("connected to {addr}; running {job} for {steps} s under a {lease_ttl:?} lease");

    let options = OnceOptions::new()
        .lease_ttl(lease_ttl)
        .hard_ttl(Duration::from_secs(600));
    let started = Instant::now();
    let result = client
        .once(&job, &options, |lease| async move {
            let mut rows = 0u64;
            for step in 1..=steps {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = lease.cancelled() => {
                        // Some batches were written: say so, so that the execution is
                        // reconciled rather than silently re-run.
                        return Err(WorkError::possible(format!(
                            "stopped after step {}: {}",
                            step - 1,
                            lease.loss().map(|l| l.to_string()).unwrap_or_default()
                        )));
                    }
                }
                rows += 1000;
                let left = lease.deadline().saturating_duration_since(Instant::now());
                println!(
                    "step {step}/{steps}: {rows} rows under token {}; lease good for {left:.1?}",
                    lease.token()
                );
            }
            Ok(format!("{rows} rows loaded").into_bytes())
        })
        .await;

    match result {
        Ok(Outcome::Completed(r)) => println!(
            "completed after {:.1?}: {}",
            started.elapsed(),
            String::from_utf8_lossy(&r.bytes)
        ),
        Ok(Outcome::Uncertain(u)) => println!(
            "uncertain ({:?}): {}; reconcile with token {}",
            u.uncertain.reason,
            u.uncertain.error,
            u.reconcile.token()
        ),
        Ok(other) => println!("outcome: {other:?}"),
        Err(Error::Fenced { current_token, .. }) => {
            println!("the lease was taken away (current token {current_token:?}); result refused")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
