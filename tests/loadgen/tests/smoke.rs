//! Smoke test: every scenario runs for about a second against the server at SENTINEL_ADDR
//! and completes operations without errors or broken invariants. No timing is asserted:
//! this checks that the load generator works, not how fast the server is.

use clap::Parser;
use sentinel_loadgen::{run, Config, Report};

fn addr() -> String {
    std::env::var("SENTINEL_ADDR").unwrap_or_else(|_| {
        panic!(
            "SENTINEL_ADDR is not set: run the tests against a server, e.g. \
             `scripts/with-server.sh cargo test -p sentinel-loadgen`"
        )
    })
}

async fn run_scenario(args: &[&str]) -> Report {
    let addr = addr();
    let mut argv = vec!["sentinel-loadgen", "--addr", addr.as_str()];
    // Short and light unless the test says otherwise.
    for (flag, value) in [
        ("--duration", "1s"),
        ("--warmup", "200ms"),
        ("--concurrency", "4"),
        ("--connections", "2"),
    ] {
        if !args.contains(&flag) {
            argv.extend([flag, value]);
        }
    }
    argv.extend_from_slice(args);
    let config = Config::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let report = run(&config).await.expect("the scenario runs");
    assert!(
        report.ok(),
        "{args:?} reported errors or violations:\n{}",
        report.table()
    );
    assert!(
        report.ops > 0,
        "{args:?} completed no operation:\n{}",
        report.table()
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_lifecycles_complete_every_new_key() {
    let r = run_scenario(&["fresh"]).await;
    assert_eq!(r.outcomes.get("completed"), Some(&r.ops));
    assert_eq!(
        r.rpcs,
        2 * r.ops,
        "one claim and one complete per lifecycle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_lifecycles_work_with_the_raw_stubs() {
    let r = run_scenario(&["fresh", "--driver", "raw"]).await;
    assert_eq!(r.outcomes.get("completed"), Some(&r.ops));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_answer_completed_for_every_claim() {
    let r = run_scenario(&["replay", "--keys", "50"]).await;
    assert_eq!(r.outcomes.get("completed"), Some(&r.ops));
    assert_eq!(r.extra["keys"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_never_acquires_a_key_twice() {
    let r = run_scenario(&[
        "contention",
        "--keys",
        "2",
        "--round",
        "50ms",
        "--concurrency",
        "8",
    ])
    .await;
    assert_eq!(r.extra["duplicate_acquires"], 0);
    assert!(r.outcomes.get("acquired").copied().unwrap_or(0) > 0);
    // Eight callers on two keys: the others must have seen the holder or its result.
    let others = r.outcomes.get("in_progress").copied().unwrap_or(0)
        + r.outcomes.get("completed").copied().unwrap_or(0);
    assert!(others > 0, "{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_runs_and_completes_new_keys() {
    let r = run_scenario(&["once"]).await;
    assert_eq!(r.outcomes.get("completed"), Some(&r.ops));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_every_lease_alive() {
    let r = run_scenario(&[
        "heartbeat",
        "--leases",
        "40",
        "--streams",
        "2",
        "--interval",
        "100ms",
        "--lease-ttl",
        "10s",
    ])
    .await;
    assert_eq!(r.extra["spurious_lost"], 0);
    assert_eq!(r.extra["unanswered"], 0);
    assert_eq!(r.extra["leases_completed"], 40);
}

#[test]
fn unknown_scenarios_are_rejected() {
    assert!(Config::try_parse_from(["sentinel-loadgen", "stampede"]).is_err());
}
