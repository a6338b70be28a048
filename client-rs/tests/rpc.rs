//! One method per RPC, typed errors and claim retries, against a real server at SENTINEL_ADDR.

mod common;

use std::time::Duration;

use sentinel_client::{
    ClaimOptions, ClaimOutcome, CompleteOutcome, Error, ExecutionState, ListOptions,
    ReconcileOptions, Resolution, SideEffects,
};

fn acquired(outcome: ClaimOutcome) -> sentinel_client::Acquired {
    match outcome {
        ClaimOutcome::Acquired(a) => a,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn success(bytes: &[u8]) -> CompleteOutcome {
    CompleteOutcome::Success {
        response: bytes.to_vec(),
    }
}

#[tokio::test]
async fn claim_complete_inspect_round_trip() {
    let client = common::client().await;
    let key = common::key("round-trip");
    let a = acquired(
        client
            .claim(
                &key,
                &ClaimOptions {
                    lease_ttl: Some(Duration::from_secs(5)),
                    ..Default::default()
                },
            )
            .await
            .expect("claim"),
    );
    assert_eq!(a.attempt, 1);
    assert!(a.ttl_remaining <= Duration::from_secs(5) && a.ttl_remaining > Duration::ZERO);

    let done = client
        .complete(&key, a.token, &success(b"\x00\xffexact"), None)
        .await
        .expect("complete");
    assert_eq!(done.state, ExecutionState::Completed);
    assert_eq!(done.token, a.token);
    // Repeating the same complete is safe.
    let again = client
        .complete(&key, a.token, &success(b"\x00\xffexact"), None)
        .await
        .expect("repeated complete");
    assert_eq!(again.state, ExecutionState::Completed);

    let seen = client.inspect(&key).await.expect("inspect");
    assert_eq!(seen.execution.state, ExecutionState::Completed);
    assert_eq!(seen.execution.response, b"\x00\xffexact");
    assert_eq!(seen.execution.holder, "client-rs-tests");
    assert!(!seen.history.is_empty());
    assert_eq!(seen.history[0].to_state, Some(ExecutionState::Completed));

    match client
        .claim(&key, &ClaimOptions::default())
        .await
        .expect("replay")
    {
        ClaimOutcome::Completed(r) => assert_eq!(r.response, b"\x00\xffexact"),
        other => panic!("expected a replay, got {other:?}"),
    }
}

#[tokio::test]
async fn a_claim_retried_with_the_same_claim_id_gets_the_same_lease() {
    let client = common::client().await;
    let key = common::key("claim-id");
    let options = ClaimOptions {
        claim_id: Some(uuid::Uuid::new_v4().to_string()),
        ..Default::default()
    };
    let first = acquired(client.claim(&key, &options).await.expect("claim"));
    let retried = acquired(client.claim(&key, &options).await.expect("retried claim"));
    assert_eq!(first.token, retried.token);
    // A different claim id is somebody else.
    let other = client
        .claim(&key, &ClaimOptions::default())
        .await
        .expect("claim");
    assert!(matches!(other, ClaimOutcome::InProgress(_)), "{other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_retried_while_the_server_is_unavailable() {
    let direct = common::client().await;
    // An address with nothing behind it yet: every try fails as UNAVAILABLE.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = sentinel_client::Client::builder(addr.to_string())
        .namespace(direct.namespace())
        .retry(sentinel_client::RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        })
        .connect_lazy()
        .expect("lazy client");
    let key = common::key("unavailable");
    let claim = tokio::spawn({
        let (client, key) = (client.clone(), key.clone());
        async move { client.claim(&key, &ClaimOptions::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let proxy = common::Proxy::serve(listener, common::addr());
    let outcome = claim.await.expect("task").expect("claim after retries");
    assert!(matches!(outcome, ClaimOutcome::Acquired(_)), "{outcome:?}");
    proxy.cut().await;

    // And a server that stays away is reported as such, after the bounded retries.
    let gone = common::lazy_client(&addr.to_string(), direct.namespace());
    let err = gone
        .claim(&common::key("gone"), &ClaimOptions::default())
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_different_fingerprint_is_rejected() {
    let client = common::client().await;
    let key = common::key("fingerprint");
    let with = |fp: &[u8]| ClaimOptions {
        fingerprint: Some(fp.to_vec()),
        ..Default::default()
    };
    let a = acquired(
        client
            .claim(&key, &with(b"payload-1"))
            .await
            .expect("claim"),
    );
    let err = client
        .claim(&key, &with(b"payload-2"))
        .await
        .expect_err("mismatch");
    assert!(matches!(err, Error::FingerprintMismatch { .. }), "{err:?}");
    assert_eq!(err.reason(), Some("FINGERPRINT_MISMATCH"));
    let err = client
        .complete(&key, a.token, &success(b"r"), Some(b"payload-2"))
        .await
        .expect_err("mismatch on complete");
    assert!(matches!(err, Error::FingerprintMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn invalid_input_lists_the_bad_fields() {
    let client = common::client().await;
    let err = client
        .claim(
            &common::key("ttl"),
            &ClaimOptions {
                lease_ttl: Some(Duration::from_millis(1)),
                ..Default::default()
            },
        )
        .await
        .expect_err("lease_ttl below the minimum");
    match &err {
        Error::InvalidArgument { violations, .. } => {
            assert!(
                violations.iter().any(|v| v.field == "lease_ttl"),
                "{violations:?}"
            );
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let bad_namespace = client.with_namespace("Not A Namespace!");
    let err = bad_namespace
        .claim("k", &ClaimOptions::default())
        .await
        .expect_err("bad namespace");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
}

#[tokio::test]
async fn unknown_executions_are_not_found() {
    let client = common::client().await;
    let err = client
        .inspect(&common::key("nothing"))
        .await
        .expect_err("unknown");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn stale_tokens_are_fenced_with_the_current_token() {
    let client = common::client().await;
    let key = common::key("fenced");
    let a = acquired(
        client
            .claim(&key, &ClaimOptions::default())
            .await
            .expect("claim"),
    );
    let err = client
        .complete(&key, a.token + 7, &success(b"r"), None)
        .await
        .expect_err("wrong token");
    match err {
        Error::Fenced {
            current_token,
            state,
            ..
        } => {
            assert_eq!(current_token, Some(a.token));
            assert_eq!(state, Some(ExecutionState::Running));
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
}

#[tokio::test]
async fn a_different_outcome_for_a_resolved_token_is_already_resolved() {
    let client = common::client().await;
    let key = common::key("resolved");
    let a = acquired(
        client
            .claim(&key, &ClaimOptions::default())
            .await
            .expect("claim"),
    );
    client
        .complete(&key, a.token, &success(b"first"), None)
        .await
        .expect("complete");
    let err = client
        .complete(&key, a.token, &success(b"second"), None)
        .await
        .expect_err("different outcome");
    assert!(matches!(err, Error::AlreadyResolved { .. }), "{err:?}");
}

#[tokio::test]
async fn reconcile_resolves_uncertain_and_refuses_what_it_cannot() {
    let client = common::client().await;
    let key = common::key("reconcile");
    let a = acquired(
        client
            .claim(&key, &ClaimOptions::default())
            .await
            .expect("claim"),
    );

    // A live execution cannot be reconciled without force.
    let err = client
        .reconcile(
            &key,
            a.token,
            &Resolution::Retry,
            &ReconcileOptions::default(),
        )
        .await
        .expect_err("live execution");
    match err {
        Error::NotReconcilable { state, .. } => assert_eq!(state, Some(ExecutionState::Running)),
        other => panic!("expected NotReconcilable, got {other:?}"),
    }

    let failure = CompleteOutcome::Failure {
        message: "partial".into(),
        retryable: false,
        side_effects: SideEffects::Possible,
    };
    let c = client
        .complete(&key, a.token, &failure, None)
        .await
        .expect("complete");
    assert_eq!(c.state, ExecutionState::Uncertain);

    let listed = client
        .list_executions(&ListOptions {
            state: Some(ExecutionState::Uncertain),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.executions.len(), 1);
    assert_eq!(listed.executions[0].key, key);

    let r = client
        .reconcile(
            &key,
            a.token,
            &Resolution::MarkCompleted {
                response: b"reconciled".to_vec(),
            },
            &ReconcileOptions {
                operator: Some("ops".into()),
                note: "verified by hand".into(),
                force: false,
            },
        )
        .await
        .expect("reconcile");
    assert_eq!(r.state, ExecutionState::Completed);
    assert!(r.token > a.token);

    // The second of two reconcilers holds a stale token.
    let err = client
        .reconcile(
            &key,
            a.token,
            &Resolution::Retry,
            &ReconcileOptions::default(),
        )
        .await
        .expect_err("stale reconcile");
    assert!(matches!(err, Error::Fenced { .. }), "{err:?}");
}

#[tokio::test]
async fn listing_pages_through_a_namespace_in_key_order() {
    let client = common::client().await;
    for i in 0..5 {
        client
            .claim(&format!("page-{i}"), &ClaimOptions::default())
            .await
            .expect("claim");
    }
    let mut keys = Vec::new();
    let mut page_token = None;
    loop {
        let page = client
            .list_executions(&ListOptions {
                state: None,
                page_size: Some(2),
                page_token: page_token.take(),
            })
            .await
            .expect("list");
        assert!(page.executions.len() <= 2);
        keys.extend(page.executions.into_iter().map(|e| e.key));
        match page.next_page_token {
            Some(t) => page_token = Some(t),
            None => break,
        }
    }
    assert_eq!(keys, ["page-0", "page-1", "page-2", "page-3", "page-4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_outlives_its_deadline_is_a_timeout() {
    let direct = common::client().await;
    let proxy = common::Proxy::start(common::addr()).await;
    let client = sentinel_client::Client::builder(proxy.addr.to_string())
        .namespace(direct.namespace())
        .rpc_timeout(Duration::from_millis(300))
        .retry(sentinel_client::RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        })
        .connect()
        .await
        .expect("connect through the proxy");
    proxy.freeze();
    let err = client
        .claim(&common::key("frozen"), &ClaimOptions::default())
        .await
        .expect_err("nothing gets through a frozen proxy");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    proxy.cut().await;
}
