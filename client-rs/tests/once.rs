//! The client contract of `once`, against a real server at SENTINEL_ADDR.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sentinel_client::{
    BoxError, Codec, Error, ExecutionState, Lease, LeaseLoss, ListOptions, LostReason, OnceOptions,
    Outcome, UncertainReason, WorkError, WorkResultExt,
};
use tokio::sync::{oneshot, Barrier, Semaphore};
use tokio::time::Instant;

fn ok(bytes: Vec<u8>) -> Result<Vec<u8>, WorkError> {
    Ok(bytes)
}

/// Work for keys whose outcome is already decided: running it is a bug.
fn must_not_run(lease: Lease) -> std::future::Ready<Result<Vec<u8>, WorkError>> {
    panic!("the work ran again for {lease:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_calls_run_the_work_once_and_return_the_same_bytes() {
    let client = common::client().await;
    let key = common::key("concurrent");
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(20));
    // A value no earlier run could have stored: equal bytes can only come from this run.
    let unique = uuid::Uuid::new_v4().to_string().into_bytes();
    let options = OnceOptions::new()
        .lease_ttl(Duration::from_secs(5))
        .wait_in_progress(Duration::from_secs(60));

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, key, runs, start, unique, options) = (
            client.clone(),
            key.clone(),
            runs.clone(),
            start.clone(),
            unique.clone(),
            options.clone(),
        );
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            client
                .once(&key, &options, |_lease| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    ok(unique)
                })
                .await
        }));
    }
    let mut completed = 0;
    let mut replayed = 0;
    for task in tasks {
        let outcome = task.await.expect("task").expect("once");
        assert_eq!(
            outcome.response_bytes(),
            Some(unique.as_slice()),
            "{outcome:?}"
        );
        match outcome {
            Outcome::Completed(_) => completed += 1,
            Outcome::Replayed(_) => replayed += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the work ran more than once"
    );
    assert_eq!((completed, replayed), (1, 19));
}

#[tokio::test]
async fn a_replay_is_marked_cached_and_does_not_run_the_work() {
    let client = common::client().await;
    let key = common::key("replay");
    let options = OnceOptions::new();

    let first = client
        .once(&key, &options, |lease| async move {
            ok(format!("receipt for token {}", lease.token()).into_bytes())
        })
        .await
        .expect("first once");
    assert!(!first.cached());
    let Outcome::Completed(done) = &first else {
        panic!("expected Completed, got {first:?}");
    };
    assert!(!done.late);

    let second = client
        .once(&key, &options, must_not_run)
        .await
        .expect("second once");
    assert!(second.cached(), "{second:?}");
    assert!(matches!(second, Outcome::Replayed(_)), "{second:?}");
    assert_eq!(second.response_bytes(), first.response_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_reconcile_cancels_the_work_and_its_complete_is_fenced() {
    let client = common::client().await;
    let operator = client.clone();
    let key = common::key("forced");
    let lease_ttl = Duration::from_secs(3);
    let interval = lease_ttl / 3;
    let (started_tx, started_rx) = oneshot::channel();
    let (cancelled_tx, cancelled_rx) = oneshot::channel();

    let options = OnceOptions::new().lease_ttl(lease_ttl);
    let work_key = key.clone();
    let worker = tokio::spawn(async move {
        client
            .once(&work_key, &options, |lease| async move {
                started_tx.send(lease.token()).expect("test alive");
                lease.cancelled().await;
                cancelled_tx
                    .send((Instant::now(), lease.loss()))
                    .expect("test alive");
                ok(b"done after the reconcile".to_vec())
            })
            .await
    });

    let token = started_rx.await.expect("the work started");
    let reconciled = operator
        .reconcile(
            &key,
            token,
            &sentinel_client::Resolution::Retry,
            &sentinel_client::ReconcileOptions {
                note: "forced by the test".into(),
                force: true,
                ..Default::default()
            },
        )
        .await
        .expect("forced reconcile");
    let reconciled_at = Instant::now();
    assert!(reconciled.token > token);

    let (cancelled_at, loss) = tokio::time::timeout(lease_ttl * 2, cancelled_rx)
        .await
        .expect("the work was not cancelled")
        .expect("cancel signal");
    let waited = cancelled_at.saturating_duration_since(reconciled_at);
    eprintln!("work cancelled {waited:?} after the forced reconcile");
    // One heartbeat interval, plus slack for a loaded machine; still well under the lease.
    assert!(
        waited <= interval + Duration::from_millis(800),
        "cancelled {waited:?} after the reconcile (heartbeat interval {interval:?})"
    );
    assert!(
        matches!(
            loss,
            Some(LeaseLoss::Lost {
                reason: LostReason::Fenced,
                ..
            })
        ),
        "{loss:?}"
    );

    let result = worker.await.expect("task");
    match result {
        Err(Error::Fenced { current_token, .. }) => {
            assert_eq!(current_token, Some(reconciled.token));
        }
        other => panic!("expected the complete to be fenced, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_connection_cancels_the_work_before_the_lease_ends() {
    let direct = common::client().await;
    let proxy = common::Proxy::start(common::addr()).await;
    let through_proxy = common::lazy_client(&proxy.addr.to_string(), direct.namespace());
    let key = common::key("cut");
    let lease_ttl = Duration::from_secs(3);
    let (started_tx, started_rx) = oneshot::channel();
    let (cancelled_tx, cancelled_rx) = oneshot::channel();

    let options = OnceOptions::new().lease_ttl(lease_ttl);
    let work_key = key.clone();
    let worker = tokio::spawn(async move {
        through_proxy
            .once(&work_key, &options, |lease| async move {
                started_tx.send(()).expect("test alive");
                lease.cancelled().await;
                let _ = cancelled_tx.send((Instant::now(), lease.loss()));
                ok(b"finished blind".to_vec())
            })
            .await
    });

    started_rx.await.expect("the work started");
    // Let a couple of heartbeats through first, so the lease is known to be renewed.
    tokio::time::sleep(lease_ttl / 2).await;
    let cut_at = Instant::now();
    proxy.cut().await;

    let (cancelled_at, loss) = tokio::time::timeout(lease_ttl * 2, cancelled_rx)
        .await
        .expect("the work was not cancelled after the connection was cut")
        .expect("cancel signal");
    // Right after the cancel, the server must still hold the lease: the worker was told to
    // stop before anyone else could have been let in.
    let seen = direct.inspect(&key).await.expect("inspect").execution;
    assert_eq!(loss, Some(LeaseLoss::DeadlineMissed));
    assert_eq!(
        seen.state,
        ExecutionState::Running,
        "the lease had already ended when the work was cancelled: {seen:?}"
    );
    let waited = cancelled_at.saturating_duration_since(cut_at);
    eprintln!(
        "work cancelled {waited:?} after the cut; the server still had it {:?}",
        seen.state
    );
    assert!(waited < lease_ttl, "cancelled {waited:?} after the cut");

    // The outcome cannot be reported through a dead proxy; the caller is told so.
    let result = worker.await.expect("task");
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_does_not_look_alive() {
    let direct = common::client().await;
    let proxy = common::Proxy::start(common::addr()).await;
    let through_proxy = common::lazy_client(&proxy.addr.to_string(), direct.namespace());
    let key = common::key("stall");
    let lease_ttl = Duration::from_secs(3);
    let (started_tx, started_rx) = oneshot::channel();
    let (cancelled_tx, cancelled_rx) = oneshot::channel();

    let options = OnceOptions::new().lease_ttl(lease_ttl);
    let work_key = key.clone();
    let worker = tokio::spawn(async move {
        through_proxy
            .once(&work_key, &options, |lease| async move {
                started_tx.send(()).expect("test alive");
                lease.cancelled().await;
                let _ = cancelled_tx.send((Instant::now(), lease.loss()));
                ok(b"finished blind".to_vec())
            })
            .await
    });

    started_rx.await.expect("the work started");
    tokio::time::sleep(lease_ttl / 2).await;
    // The connection stays up but nothing flows: no error will ever arrive on the stream.
    let frozen_at = Instant::now();
    proxy.freeze();

    let (cancelled_at, loss) = tokio::time::timeout(lease_ttl * 2, cancelled_rx)
        .await
        .expect("a stalled stream kept the work running")
        .expect("cancel signal");
    let seen = direct.inspect(&key).await.expect("inspect").execution;
    let waited = cancelled_at.saturating_duration_since(frozen_at);
    eprintln!(
        "work cancelled {waited:?} after the stall; the server still had it {:?}",
        seen.state
    );
    assert_eq!(loss, Some(LeaseLoss::DeadlineMissed));
    assert_eq!(
        seen.state,
        ExecutionState::Running,
        "cancelled too late: {seen:?}"
    );
    assert!(waited < lease_ttl, "cancelled {waited:?} after the stall");

    proxy.cut().await;
    let result = worker.await.expect("task");
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn nothing_happened_releases_the_key_and_the_next_call_runs_again() {
    let client = common::client().await;
    let key = common::key("released");
    let options = OnceOptions::new();

    let first = client
        .once(&key, &options, |_lease| async move {
            Err::<Vec<u8>, _>(std::io::Error::other("gateway said 503")).nothing_happened()
        })
        .await
        .expect("first once");
    let Outcome::Failed(failure) = &first else {
        panic!("expected Failed, got {first:?}");
    };
    assert!(failure.released && !failure.cached, "{failure:?}");
    assert!(failure.message.contains("gateway said 503"));
    let first_token = failure.token;

    let runs = AtomicUsize::new(0);
    let second = client
        .once(&key, &options, |lease| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(lease.token() > first_token, "the token must increase");
                assert_eq!(lease.attempt(), 2);
                ok(b"second attempt".to_vec())
            }
        })
        .await
        .expect("second once");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(matches!(second, Outcome::Completed(_)), "{second:?}");
}

#[tokio::test]
async fn an_unmarked_error_is_uncertain_and_the_reconcile_handle_releases_it() {
    let client = common::client().await;
    let key = common::key("possible");
    let options = OnceOptions::new();

    let outcome = client
        .once(&key, &options, |_lease| async move {
            // A plain error: the charge may have gone through.
            Err::<Vec<u8>, _>(std::io::Error::other("timeout after sending the charge"))?;
            ok(vec![])
        })
        .await
        .expect("once");
    let uncertain = outcome.uncertain().expect("uncertain").clone();
    assert_eq!(uncertain.reason, UncertainReason::Reported);
    assert!(uncertain.error.contains("timeout after sending"));

    // Every later caller is told it is uncertain; nobody runs it silently.
    let again = client
        .once(&key, &options, must_not_run)
        .await
        .expect("second once");
    assert_eq!(again.uncertain().map(|u| u.token), Some(uncertain.token));

    let handle = again.reconcile().expect("reconcile handle");
    let reconciled = handle
        .retry("checked with the PSP: not charged")
        .await
        .expect("retry");
    assert_eq!(reconciled.state, ExecutionState::Released);

    let third = client
        .once(&key, &options, |_lease| async move {
            ok(b"ran after reconcile".to_vec())
        })
        .await
        .expect("third once");
    assert_eq!(third.response_bytes(), Some(&b"ran after reconcile"[..]));
}

#[tokio::test]
async fn a_definite_failure_is_stored_and_replayed() {
    let client = common::client().await;
    let key = common::key("definite");
    let options = OnceOptions::new();
    let first = client
        .once(&key, &options, |_lease| async move {
            Err::<Vec<u8>, _>(WorkError::definite("card declined"))
        })
        .await
        .expect("first once");
    let Outcome::Failed(f) = &first else {
        panic!("expected Failed, got {first:?}");
    };
    assert!(!f.released && !f.cached);

    let second = client
        .once(&key, &options, must_not_run)
        .await
        .expect("second once");
    let Outcome::Failed(f) = &second else {
        panic!("expected a replayed failure, got {second:?}");
    };
    assert!(f.cached && f.message.contains("card declined"), "{f:?}");
}

/// A codec that cannot encode anything, standing in for a response serde refuses.
struct Unencodable;

impl Codec for Unencodable {
    type Value = String;

    fn encode(&self, _: &String) -> Result<Vec<u8>, BoxError> {
        Err("this value has no encoding".into())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, BoxError> {
        Ok(String::from_utf8(bytes.to_vec())?)
    }
}

#[tokio::test]
async fn a_result_that_cannot_be_encoded_is_reported_as_possible_side_effects() {
    let client = common::client().await;
    let key = common::key("unencodable");
    let options = OnceOptions::new().codec(Unencodable);
    let outcome = client
        .once(&key, &options, |_lease| async move {
            Ok::<_, WorkError>("the side effect happened".to_owned())
        })
        .await
        .expect("once");
    let u = outcome.uncertain().expect("uncertain, not lost");
    assert_eq!(u.reason, UncertainReason::Reported);
    assert!(u.error.contains("could not be encoded"), "{u:?}");
    let seen = client.inspect(&key).await.expect("inspect").execution;
    assert_eq!(seen.state, ExecutionState::Uncertain);
}

#[tokio::test]
async fn a_response_over_the_size_limit_is_reported_as_possible_side_effects() {
    let client = common::client().await;
    let key = common::key("too-large");
    // Over the server's default 1 MiB response limit.
    let huge = vec![7u8; 3 * 1024 * 1024 / 2];
    let outcome = client
        .once(&key, &OnceOptions::new(), |_lease| async move { ok(huge) })
        .await
        .expect("once");
    let u = outcome.uncertain().expect("uncertain, not lost");
    assert_eq!(u.reason, UncertainReason::Reported);
    assert!(u.error.contains("could not be stored"), "{u:?}");
}

#[tokio::test]
async fn a_running_execution_is_reported_in_progress() {
    let client = common::client().await;
    let key = common::key("in-progress");
    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let holder = client.clone();
    let holder_key = key.clone();
    let running = tokio::spawn(async move {
        holder
            .once(
                &holder_key,
                &OnceOptions::new().holder("the-holder"),
                |_l| async move {
                    started_tx.send(()).expect("test alive");
                    release_rx.await.expect("release");
                    ok(b"x".to_vec())
                },
            )
            .await
    });
    started_rx.await.expect("started");
    let outcome = client
        .once(&key, &OnceOptions::new(), |_l| async move { ok(vec![]) })
        .await
        .expect("once");
    assert!(outcome.execution_alive(), "{outcome:?}");
    let Outcome::InProgress(p) = outcome else {
        unreachable!()
    };
    assert_eq!(p.holder, "the-holder");
    release_tx.send(()).expect("holder alive");
    assert!(matches!(
        running.await.expect("task").expect("once"),
        Outcome::Completed(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_heartbeat_stream_carries_a_thousand_leases() {
    const LEASES: usize = 1000;
    let client = common::client().await;
    let lease_ttl = Duration::from_secs(3);
    let options = OnceOptions::new().lease_ttl(lease_ttl);
    let acquired = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    // Bounds the claims in flight; each holder gives its permit back once it holds the lease.
    let claims = Arc::new(Semaphore::new(100));

    let mut tasks = Vec::with_capacity(LEASES);
    for i in 0..LEASES {
        let (client, options, acquired, lost, claims) = (
            client.clone(),
            options.clone(),
            acquired.clone(),
            lost.clone(),
            claims.clone(),
        );
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = claims.acquire_owned().await.expect("semaphore");
            client
                .once(&format!("lease-{i:04}"), &options, |lease| async move {
                    drop(permit);
                    acquired.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = release.wait_for(|r| *r) => {}
                        _ = lease.cancelled() => {
                            lost.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    if let Some(loss) = lease.loss() {
                        eprintln!(
                            "lease-{i:04} token {}: {loss} (deadline {:?} ago)",
                            lease.token(),
                            lease.deadline().elapsed()
                        );
                    }
                    ok(format!("held {i}").into_bytes())
                })
                .await
        }));
    }

    let all_acquired = Instant::now() + Duration::from_secs(120);
    while acquired.load(Ordering::SeqCst) < LEASES {
        assert!(
            Instant::now() < all_acquired,
            "only {} of {LEASES} leases acquired",
            acquired.load(Ordering::SeqCst)
        );
        assert_eq!(
            lost.load(Ordering::SeqCst),
            0,
            "a lease was lost while claiming"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several heartbeat rounds (one every ttl/3), longer than the lease itself: without the
    // shared stream every lease would have expired by now.
    let held_from = Instant::now();
    eprintln!(
        "{LEASES} leases acquired; holding them for {:?}",
        lease_ttl * 2
    );
    tokio::time::sleep(lease_ttl * 2).await;
    assert_eq!(lost.load(Ordering::SeqCst), 0, "leases were lost");
    let page = client
        .list_executions(&ListOptions {
            state: Some(ExecutionState::Running),
            page_size: Some(1000),
            page_token: None,
        })
        .await
        .expect("list");
    assert_eq!(
        page.executions.len(),
        LEASES,
        "the server does not see them all running"
    );

    eprintln!(
        "all {} still running after {:?}",
        page.executions.len(),
        held_from.elapsed()
    );
    let released_at = Instant::now();
    release_tx.send(true).expect("holders alive");
    let mut late = 0;
    for task in tasks {
        let outcome = task.await.expect("task").expect("once");
        match outcome {
            Outcome::Completed(r) => {
                if r.late {
                    eprintln!("late completion under token {}", r.token);
                    late += 1;
                }
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    eprintln!(
        "{LEASES} completed in {:?} ({late} late)",
        released_at.elapsed()
    );
}

#[cfg(feature = "json")]
#[tokio::test]
async fn the_json_codec_replays_the_same_value() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    struct Receipt {
        id: String,
        amount_cents: u64,
    }
    let client = common::client().await;
    let key = common::key("json");
    let options = OnceOptions::new().codec(sentinel_client::Json::<Receipt>::new());
    let receipt = Receipt {
        id: "ch_1".into(),
        amount_cents: 1234,
    };
    let r = receipt.clone();
    let first = client
        .once(&key, &options, |_l| async move { Ok::<_, WorkError>(r) })
        .await
        .expect("first");
    let second = client
        .once(&key, &options, |_l| async move {
            Ok::<_, WorkError>(Receipt {
                id: "never".into(),
                amount_cents: 0,
            })
        })
        .await
        .expect("second");
    assert_eq!(first.response(), Some(&receipt));
    assert_eq!(second.response(), Some(&receipt));
    assert!(second.cached());
}
