//! One test per guarantee of DESIGN.md, against a real server on a real PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use sentinel_proto::v1 as pb;
use sentinel_proto::v1::claim_response::Outcome;

#[tokio::test]
async fn a_single_winner_among_concurrent_claims_of_one_key() {
    let server = TestServer::start().await;
    let ns = ns();
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let mut c = server.client().await;
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            claim(&mut c, claim_req(&ns, "charge-1")).await
        }));
    }
    let mut acquired = 0;
    let mut in_progress = 0;
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Acquired(a) => {
                acquired += 1;
                assert_eq!((a.token, a.attempt), (1, 1));
            }
            Outcome::InProgress(_) => in_progress += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((acquired, in_progress), (1, 47));
}

#[tokio::test]
async fn completed_result_is_replayed_byte_for_byte() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let a = acquire(&mut c, claim_req(&ns, "k")).await;
    // Not UTF-8, with NULs: the bytes must come back exactly.
    let body: Vec<u8> = (0..=255u8).chain([0, 0, 0xff]).collect();
    let done = c
        .complete(success(&ns, "k", a.token, &body))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, pb::ExecutionState::Completed as i32);
    for _ in 0..3 {
        let mut other = server.client().await;
        match claim(&mut other, claim_req(&ns, "k")).await {
            Outcome::Completed(r) => {
                assert_eq!(r.response, body);
                assert_eq!(r.token, a.token);
            }
            other => panic!("expected a replay, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_stale_token_is_rejected_on_heartbeat_complete_and_reconcile() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let mut req = claim_req(&ns, "k");
    req.lease_ttl = dur(200);
    let old = acquire(&mut c, req.clone()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut take = claim_req(&ns, "k");
    take.on_lease_expiry = pb::LeaseExpiryPolicy::Retry as i32;
    let new = acquire(&mut c, take).await;
    assert_eq!(new.token, old.token + 1);

    let mut beats = Beats::open(&mut c).await;
    let r = beats.beat(&ns, "k", old.token).await;
    assert_eq!(lost_reason(&r), Some(pb::LostReason::Fenced));

    let err = c
        .complete(success(&ns, "k", old.token, b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&err).as_deref(), Some("FENCED"));
    let meta = error_metadata(&err);
    assert_eq!(meta.get("current_token"), Some(&new.token.to_string()));
    assert_eq!(meta.get("state").map(String::as_str), Some("RUNNING"));

    let err = c
        .reconcile(reconcile(&ns, "k", old.token, retry(), true))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("FENCED"));

    // The current holder is unaffected.
    assert!(lost_reason(&beats.beat(&ns, "k", new.token).await).is_none());
}

#[tokio::test]
async fn an_expired_lease_is_reported_uncertain_by_default_and_never_rerun() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let mut req = claim_req(&ns, "k");
    req.lease_ttl = dur(200);
    let a = acquire(&mut c, req).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..2 {
        match claim(&mut c, claim_req(&ns, "k")).await {
            Outcome::Uncertain(u) => {
                assert_eq!(u.reason, pb::UncertainReason::LeaseExpired as i32);
                assert_eq!(u.token, a.token);
                assert_eq!(u.attempt, 1);
                assert_eq!(u.holder, "test-worker");
            }
            other => panic!("expected UNCERTAIN, got {other:?}"),
        }
    }
    // An expired lease is final: a heartbeat does not revive it.
    let mut beats = Beats::open(&mut c).await;
    let r = beats.beat(&ns, "k", a.token).await;
    assert_eq!(lost_reason(&r), Some(pb::LostReason::LeaseExpired));
    let listed = c
        .list_executions(pb::ListExecutionsRequest {
            namespace: ns.clone(),
            state: pb::ExecutionState::Uncertain as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.executions.len(), 1);
    assert_eq!(
        listed.executions[0].uncertain_reason,
        pb::UncertainReason::LeaseExpired as i32
    );
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_under_retry_and_the_old_holder_is_fenced() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let mut req = claim_req(&ns, "k");
    req.lease_ttl = dur(200);
    let old = acquire(&mut c, req).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut take = claim_req(&ns, "k");
    take.on_lease_expiry = pb::LeaseExpiryPolicy::Retry as i32;
    let new = acquire(&mut c, take).await;
    assert_eq!((new.token, new.attempt), (old.token + 1, 2));
    let err = c
        .complete(success(&ns, "k", old.token, b"zombie"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("FENCED"));
    c.complete(success(&ns, "k", new.token, b"fresh"))
        .await
        .unwrap();
    match claim(&mut c, claim_req(&ns, "k")).await {
        Outcome::Completed(r) => assert_eq!(r.response, b"fresh"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_hard_deadline_caps_heartbeats() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let mut req = claim_req(&ns, "k");
    req.lease_ttl = dur(400);
    req.hard_ttl = dur(1200);
    let a = acquire(&mut c, req).await;
    let hard = to_chrono(a.hard_deadline_at.as_ref().unwrap());
    let mut beats = Beats::open(&mut c).await;
    let mut alive = 0;
    let lost = loop {
        match beats.beat(&ns, "k", a.token).await {
            pb::heartbeat_response::Result::Alive(al) => {
                alive += 1;
                assert!(
                    to_chrono(al.lease_expires_at.as_ref().unwrap()) <= hard,
                    "lease extended past the hard deadline"
                );
            }
            pb::heartbeat_response::Result::Lost(l) => break l,
        }
        assert!(
            alive < 100,
            "heartbeats kept the lease alive past its hard deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(alive >= 1);
    assert_eq!(lost.reason, pb::LostReason::HardDeadline as i32);
    match claim(&mut c, claim_req(&ns, "k")).await {
        Outcome::Uncertain(u) => assert_eq!(u.reason, pb::UncertainReason::HardDeadline as i32),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn late_completion_is_accepted_only_while_the_token_is_current() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    for key in ["late-ok", "late-fenced"] {
        let mut req = claim_req(&ns, key);
        req.lease_ttl = dur(150);
        acquire(&mut c, req).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await; // the sweeper has written UNCERTAIN by now
    let done = c
        .complete(success(&ns, "late-ok", 1, b"late"))
        .await
        .unwrap()
        .into_inner();
    assert!(done.late);
    assert_eq!(done.state, pb::ExecutionState::Completed as i32);
    let inspect = c
        .inspect(pb::InspectRequest {
            namespace: ns.clone(),
            key: "late-ok".into(),
            history_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inspect.history[0].reason, "late_complete");

    let mut take = claim_req(&ns, "late-fenced");
    take.on_lease_expiry = pb::LeaseExpiryPolicy::Retry as i32;
    let new = acquire(&mut c, take).await;
    let err = c
        .complete(success(&ns, "late-fenced", 1, b"late"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("FENCED"));
    assert_eq!(new.token, 2);
}

#[tokio::test]
async fn a_fingerprint_mismatch_is_rejected_when_the_record_exists() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let mut req = claim_req(&ns, "k");
    req.fingerprint = b"sha256:aaaa".to_vec();
    let a = acquire(&mut c, req.clone()).await;
    let mut other = claim_req(&ns, "k");
    other.fingerprint = b"sha256:bbbb".to_vec();
    let err = c.claim(other.clone()).await.unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("FINGERPRINT_MISMATCH"));

    let mut done = success(&ns, "k", a.token, b"ok");
    done.fingerprint = b"sha256:bbbb".to_vec();
    let err = c.complete(done.clone()).await.unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("FINGERPRINT_MISMATCH"));
    done.fingerprint = b"sha256:aaaa".to_vec();
    c.complete(done).await.unwrap();

    // On the replay path too.
    let err = c.claim(other).await.unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("FINGERPRINT_MISMATCH"));
    let mut same = claim_req(&ns, "k");
    same.fingerprint = b"sha256:aaaa".to_vec();
    assert!(matches!(claim(&mut c, same).await, Outcome::Completed(_)));
}

#[tokio::test]
async fn a_claim_retried_with_the_same_claim_id_returns_the_same_acquired() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let req = claim_req(&ns, "k");
    let first = acquire(&mut c, req.clone()).await;
    let again = acquire(&mut c, req.clone()).await;
    assert_eq!((again.token, again.attempt), (first.token, first.attempt));
    assert_eq!(again.hard_deadline_at, first.hard_deadline_at);
    // A different claim id is somebody else.
    assert!(matches!(
        claim(&mut c, claim_req(&ns, "k")).await,
        Outcome::InProgress(_)
    ));
    // One claim event only.
    let (records, events) = server.db.counts().await;
    assert_eq!((records, events), (1, 1));
}

#[tokio::test]
async fn a_retryable_failure_without_side_effects_releases_the_key() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let a = acquire(&mut c, claim_req(&ns, "k")).await;
    let r = c
        .complete(failure(&ns, "k", a.token, true, pb::SideEffects::None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, pb::ExecutionState::Released as i32);
    let b = acquire(&mut c, claim_req(&ns, "k")).await;
    assert_eq!((b.token, b.attempt), (a.token + 1, 2));
}

#[tokio::test]
async fn a_definite_failure_is_stored_and_replayed() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let a = acquire(&mut c, claim_req(&ns, "k")).await;
    let r = c
        .complete(failure(&ns, "k", a.token, false, pb::SideEffects::None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, pb::ExecutionState::Failed as i32);
    match claim(&mut c, claim_req(&ns, "k")).await {
        Outcome::Failed(f) => assert_eq!(f.error, "boom"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn possible_side_effects_make_the_execution_uncertain() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let a = acquire(&mut c, claim_req(&ns, "k")).await;
    for side_effects in [pb::SideEffects::Possible, pb::SideEffects::Possible] {
        // The second call repeats the first: accepted again.
        let r = c
            .complete(failure(&ns, "k", a.token, true, side_effects))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.state, pb::ExecutionState::Uncertain as i32);
    }
    match claim(&mut c, claim_req(&ns, "k")).await {
        Outcome::Uncertain(u) => {
            assert_eq!(u.reason, pb::UncertainReason::Reported as i32);
            assert_eq!(u.error, "boom");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn repeating_a_complete_succeeds_and_a_different_outcome_is_already_resolved() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let a = acquire(&mut c, claim_req(&ns, "k")).await;
    c.complete(success(&ns, "k", a.token, b"one"))
        .await
        .unwrap();
    let again = c
        .complete(success(&ns, "k", a.token, b"one"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state, pb::ExecutionState::Completed as i32);
    let err = c
        .complete(success(&ns, "k", a.token, b"two"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("ALREADY_RESOLVED"));
    let err = c
        .complete(failure(&ns, "k", a.token, false, pb::SideEffects::None))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("ALREADY_RESOLVED"));
}

#[tokio::test]
async fn two_concurrent_reconcilers_exactly_one_wins() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let a = acquire(&mut c, claim_req(&ns, "k")).await;
    c.complete(failure(&ns, "k", a.token, false, pb::SideEffects::Possible))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let mut c = server.client().await;
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let res =
                pb::reconcile_request::Resolution::MarkCompleted(pb::ReconcileMarkCompleted {
                    response: vec![i],
                });
            c.reconcile(reconcile(&ns, "k", a.token, res, false)).await
        }));
    }
    let mut wins = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => wins.push(r.into_inner()),
            Err(e) => assert_eq!(reason(&e).as_deref(), Some("FENCED")),
        }
    }
    assert_eq!(wins.len(), 1);
    assert_eq!(wins[0].token, a.token + 1);
    assert_eq!(wins[0].state, pb::ExecutionState::Completed as i32);
}

#[tokio::test]
async fn reconcile_needs_force_for_a_live_lease_and_then_pushes_lost() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let a = acquire(&mut c, claim_req(&ns, "k")).await;
    let mut beats = Beats::open(&mut c).await;
    assert!(lost_reason(&beats.beat(&ns, "k", a.token).await).is_none());

    let err = c
        .reconcile(reconcile(&ns, "k", a.token, retry(), false))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("NOT_RECONCILABLE"));
    let r = c
        .reconcile(reconcile(&ns, "k", a.token, retry(), true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.state, r.token),
        (pb::ExecutionState::Released as i32, a.token + 1)
    );

    // Pushed on the stream without the worker asking, and the stream stays open.
    let pushed = beats.recv().await;
    assert_eq!(pushed.token, a.token);
    assert_eq!(
        lost_reason(pushed.result.as_ref().unwrap()),
        Some(pb::LostReason::Fenced)
    );
    let b = acquire(&mut c, claim_req(&ns, "k")).await;
    assert_eq!(b.token, a.token + 2);
    assert!(lost_reason(&beats.beat(&ns, "k", b.token).await).is_none());
    // Completed executions cannot be reconciled.
    c.complete(success(&ns, "k", b.token, b"x")).await.unwrap();
    let err = c
        .reconcile(reconcile(&ns, "k", b.token, retry(), true))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("NOT_RECONCILABLE"));
}

#[tokio::test]
async fn namespaces_are_isolated_even_with_separators_in_keys() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let base = ns();
    let (ns1, ns2) = (format!("{base}a"), format!("{base}a.b"));
    // ("…a", "b:c") and ("…a:b", "c") would collide if the pair were concatenated with ':'.
    let a = acquire(&mut c, claim_req(&ns1, "b:c")).await;
    c.complete(success(&ns1, "b:c", a.token, b"first"))
        .await
        .unwrap();
    let b = acquire(&mut c, claim_req(&ns2, "c")).await;
    assert_eq!(b.token, 1);
    let k = acquire(&mut c, claim_req(&ns1, "b.c")).await;
    assert_eq!(k.token, 1);
    match claim(&mut c, claim_req(&ns2, "c")).await {
        Outcome::InProgress(_) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_end_of_retention_makes_a_key_claimable_with_a_larger_token() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let mut req = claim_req(&ns, "k");
    req.retention = dur(1000);
    let a = acquire(&mut c, req.clone()).await;
    // Bump the token a few times so that "previous + 1" and "starts again at 1" differ.
    c.reconcile(reconcile(&ns, "k", a.token, retry(), true))
        .await
        .unwrap();
    let b = acquire(&mut c, req.clone()).await;
    assert_eq!(b.token, 3);
    c.complete(success(&ns, "k", b.token, b"done"))
        .await
        .unwrap();
    assert!(matches!(
        claim(&mut c, req.clone()).await,
        Outcome::Completed(_)
    ));

    // Wait until the sweeper has deleted the record.
    let db = server.db.connect().await;
    let mut deleted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM executions WHERE namespace = $1",
                &[&ns],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            deleted = true;
            break;
        }
    }
    assert!(
        deleted,
        "the sweeper did not delete the record after retention"
    );
    let err = c
        .inspect(pb::InspectRequest {
            namespace: ns.clone(),
            key: "k".into(),
            history_limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let again = acquire(&mut c, claim_req(&ns, "k")).await;
    assert!(
        again.token > b.token,
        "token {} must exceed {}",
        again.token,
        b.token
    );
    assert_eq!(again.attempt, 1);
}

#[tokio::test]
async fn every_validation_limit_gives_a_clear_error_and_writes_nothing() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let base = claim_req(&ns, "k");
    type Case = (&'static str, Box<dyn Fn(&mut pb::ClaimRequest)>);
    let cases: Vec<Case> = vec![
        ("empty namespace", Box::new(|r| r.namespace.clear())),
        (
            "upper-case namespace",
            Box::new(|r| r.namespace = "Payments".into()),
        ),
        (
            "namespace starting with a dot",
            Box::new(|r| r.namespace = ".x".into()),
        ),
        (
            "namespace of 65 chars",
            Box::new(|r| r.namespace = "a".repeat(65)),
        ),
        ("empty key", Box::new(|r| r.key.clear())),
        ("key of 513 bytes", Box::new(|r| r.key = "k".repeat(513))),
        (
            "key with a control character",
            Box::new(|r| r.key = "a\u{7}b".into()),
        ),
        ("lease under 100 ms", Box::new(|r| r.lease_ttl = dur(99))),
        ("lease over 1 h", Box::new(|r| r.lease_ttl = dur(3_600_001))),
        (
            "negative lease",
            Box::new(|r| {
                r.lease_ttl = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
        ),
        (
            "hard ttl below lease",
            Box::new(|r| {
                r.lease_ttl = dur(10_000);
                r.hard_ttl = dur(5_000);
            }),
        ),
        (
            "hard ttl over 7 days",
            Box::new(|r| r.hard_ttl = dur(7 * 86_400_000 + 1)),
        ),
        (
            "retention over the maximum",
            Box::new(|r| r.retention = dur(31 * 86_400_000)),
        ),
        (
            "fingerprint over 64 bytes",
            Box::new(|r| r.fingerprint = vec![1; 65]),
        ),
        (
            "holder over 256 bytes",
            Box::new(|r| r.holder = "h".repeat(257)),
        ),
        (
            "claim id over 256 bytes",
            Box::new(|r| r.claim_id = "c".repeat(257)),
        ),
        ("unknown policy", Box::new(|r| r.on_lease_expiry = 9)),
    ];
    for (what, mutate) in &cases {
        let mut r = base.clone();
        mutate(&mut r);
        let err = c.claim(r).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        use tonic_types::StatusExt;
        let bad = err
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("{what}: no BadRequest"));
        assert!(!bad.field_violations.is_empty(), "{what}");
    }
    // Limits at the boundary are accepted.
    let mut ok = base.clone();
    ok.namespace = format!("{ns}{}", "x".repeat(64 - ns.len()));
    ok.key = "k".repeat(512);
    ok.lease_ttl = dur(100);
    ok.fingerprint = vec![7; 64];
    let a = acquire(&mut c, ok.clone()).await;

    let big = vec![0u8; (1 << 20) + 1];
    let err = c
        .complete(success(&ok.namespace, &ok.key, a.token, &big))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let mut long_message = failure(
        &ok.namespace,
        &ok.key,
        a.token,
        false,
        pb::SideEffects::None,
    );
    if let Some(pb::complete_request::Outcome::Failure(f)) = long_message.outcome.as_mut() {
        f.message = "m".repeat(4097);
    }
    let err = c.complete(long_message).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let err = c
        .complete(pb::CompleteRequest {
            outcome: None,
            ..success(&ok.namespace, &ok.key, a.token, b"")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .complete(success(&ok.namespace, &ok.key, 0, b""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .reconcile(pb::ReconcileRequest {
            resolution: None,
            ..reconcile(&ok.namespace, &ok.key, a.token, retry(), true)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .list_executions(pb::ListExecutionsRequest {
            namespace: ns.clone(),
            page_token: "%%%".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .complete(success(&ns, "never-claimed", 1, b""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Only the one valid claim wrote anything; the record is still RUNNING.
    let (records, events) = server.db.counts().await;
    assert_eq!((records, events), (1, 1));
}

#[tokio::test]
async fn one_heartbeat_stream_carries_a_thousand_leases_with_a_lost_among_them() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let mut tokens = Vec::new();
    let mut claims = Vec::new();
    for i in 0..1000 {
        let mut c = c.clone();
        let ns = ns.clone();
        claims.push(tokio::spawn(async move {
            acquire(&mut c, claim_req(&ns, &format!("lease-{i}")))
                .await
                .token
        }));
    }
    for t in claims {
        tokens.push(t.await.unwrap());
    }
    // Supersede one lease.
    c.reconcile(reconcile(&ns, "lease-500", tokens[500], retry(), true))
        .await
        .unwrap();

    let mut beats = Beats::open(&mut c).await;
    for round in 0..3 {
        for (i, t) in tokens.iter().enumerate() {
            beats.send(&ns, &format!("lease-{i}"), *t).await;
        }
        let mut alive = 0;
        let mut lost = Vec::new();
        for _ in 0..1000 {
            let r = beats.recv().await;
            match lost_reason(r.result.as_ref().unwrap()) {
                None => alive += 1,
                Some(reason) => lost.push((r.key, reason)),
            }
        }
        assert_eq!(alive, 999, "round {round}");
        assert_eq!(
            lost,
            vec![("lease-500".to_owned(), pb::LostReason::Fenced)],
            "round {round}"
        );
    }
}

#[tokio::test]
async fn inspect_shows_history_newest_first_and_list_pages_by_key() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    for i in 0..5 {
        let a = acquire(&mut c, claim_req(&ns, &format!("k{i}"))).await;
        if i % 2 == 0 {
            c.complete(success(&ns, &format!("k{i}"), a.token, b"ok"))
                .await
                .unwrap();
        }
    }
    let ins = c
        .inspect(pb::InspectRequest {
            namespace: ns.clone(),
            key: "k0".into(),
            history_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let reasons: Vec<_> = ins.history.iter().map(|h| h.reason.as_str()).collect();
    assert_eq!(reasons, ["complete", "claim"]);
    assert_eq!(ins.execution.unwrap().response, b"ok");

    let mut keys = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_executions(pb::ListExecutionsRequest {
                namespace: ns.clone(),
                state: pb::ExecutionState::Completed as i32,
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        keys.extend(page.executions.into_iter().map(|e| e.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(keys, ["k0", "k2", "k4"]);
}

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_service() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "sentinel.v1.SentinelService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"sentinel.v1.SentinelService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_lost_database_gives_retryable_unavailable_and_the_server_recovers() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let db = server.db.name.clone();
    let admin_url = std::env::var("SENTINEL_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("SENTINEL_DATABASE_URL"))
        .unwrap();
    let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let cut = format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = '{db}' AND pid <> pg_backend_pid();"
    );
    admin.batch_execute(&cut).await.unwrap();
    let req = claim_req(&ns, "k");
    let err = c.claim(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("DATABASE_UNAVAILABLE"));

    // Heal, and retry the same claim (same claim id) until it goes through: one acquisition.
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let mut acquired = None;
    for _ in 0..50 {
        match c.claim(req.clone()).await {
            Ok(r) => {
                acquired = Some(r.into_inner());
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    match acquired.expect("server did not recover").outcome.unwrap() {
        Outcome::Acquired(a) => assert_eq!(a.token, 1),
        other => panic!("{other:?}"),
    }
    let again = acquire(&mut c, req).await;
    assert_eq!(again.token, 1);
}

#[tokio::test]
async fn a_row_locked_elsewhere_stalls_neither_unrelated_claims_nor_heartbeats() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let ns = ns();
    let held = acquire(&mut c, claim_req(&ns, "held")).await;
    let other = acquire(&mut c, claim_req(&ns, "other")).await;

    // A transaction that holds the row lock and does nothing, like a frozen replica.
    let mut locker = server.db.connect().await;
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM executions WHERE namespace = $1 AND key = 'held' FOR UPDATE",
        &[&ns],
    )
    .await
    .unwrap();

    // Unrelated claims go through while the lock is held.
    for i in 0..5 {
        acquire(&mut c, claim_req(&ns, &format!("fresh-{i}"))).await;
    }
    // One stream: the locked lease gets no answer (neither renewed nor lost), the other
    // lease is renewed, and the same lease beaten twice gets two answers.
    let mut beats = Beats::open(&mut c).await;
    beats.send(&ns, "held", held.token).await;
    beats.send(&ns, "other", other.token).await;
    beats.send(&ns, "other", other.token).await;
    for _ in 0..2 {
        let r = beats.recv().await;
        assert_eq!((r.key.as_str(), r.token), ("other", other.token));
        assert!(lost_reason(r.result.as_ref().unwrap()).is_none());
    }
    let quiet = tokio::time::timeout(Duration::from_millis(500), beats.rx.message()).await;
    assert!(
        quiet.is_err(),
        "the locked lease must not be answered: {quiet:?}"
    );

    // Once the lock is gone, the held lease renews as usual.
    tx.rollback().await.unwrap();
    assert!(lost_reason(&beats.beat(&ns, "held", held.token).await).is_none());
}
