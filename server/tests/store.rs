//! The store's batch operations called directly, against a real PostgreSQL: what a batch
//! decides must be what the core decides one request at a time, whichever path (the
//! one-statement path for live leases, or the locking path) writes it.

mod common;

use std::time::Duration;

use common::TestDb;
use sentinel_server::core::{
    self, ClaimOutcome, ClaimRequest, CompleteRequest, ExecKey, Key, LeaseExpiryPolicy,
    ListRequest, Namespace, Outcome, Record, Rejection, SideEffects, State, Token,
};
use sentinel_server::store::{Store, MIGRATIONS};

async fn store() -> (Store, TestDb) {
    let db = TestDb::new().await;
    let store = Store::connect(&db.url, 4).expect("pool");
    store.migrate().await.expect("migrate");
    (store, db)
}

fn key(k: &str) -> ExecKey {
    ExecKey {
        namespace: Namespace::new_unchecked("store-test"),
        key: Key::new_unchecked(k),
    }
}

fn claim_req(k: &str, lease_ttl: Duration) -> ClaimRequest {
    ClaimRequest {
        key: key(k),
        lease_ttl,
        hard_ttl: Duration::from_secs(3600),
        fingerprint: b"fp".to_vec(),
        holder: format!("worker-{k}"),
        claim_id: format!("claim-{k}"),
        retention: Duration::from_secs(86_400),
        on_lease_expiry: LeaseExpiryPolicy::Uncertain,
    }
}

async fn acquire(store: &Store, k: &str, lease_ttl: Duration) -> Token {
    let out = store.claim(&[claim_req(k, lease_ttl)]).await.unwrap();
    match &out.items[0] {
        Ok(ClaimOutcome::Acquired { token, .. }) => *token,
        other => panic!("claim of {k}: {other:?}"),
    }
}

fn success(k: &str, token: Token, body: &[u8]) -> CompleteRequest {
    CompleteRequest {
        key: key(k),
        token,
        outcome: Outcome::Success {
            response: body.to_vec(),
        },
        fingerprint: Vec::new(),
    }
}

fn failure(k: &str, token: Token, retryable: bool, side_effects: SideEffects) -> CompleteRequest {
    CompleteRequest {
        key: key(k),
        token,
        outcome: Outcome::Failure {
            message: format!("failed {k}"),
            retryable,
            side_effects,
        },
        fingerprint: b"fp".to_vec(),
    }
}

async fn record(store: &Store, k: &str) -> Record {
    store.inspect(&key(k), 10).await.unwrap().unwrap().0.record
}

async fn reasons(store: &Store, k: &str) -> Vec<String> {
    let (_, history) = store.inspect(&key(k), 10).await.unwrap().unwrap();
    history.into_iter().rev().map(|h| h.reason).collect()
}

#[tokio::test]
async fn every_completion_of_a_live_lease_writes_exactly_what_the_core_decides() {
    let (store, _db) = store().await;
    let cases = [
        ("ok", None),
        ("release", Some((true, SideEffects::None))),
        ("fail", Some((false, SideEffects::None))),
        ("uncertain", Some((true, SideEffects::Possible))),
    ];
    for (k, failure_kind) in cases {
        let token = acquire(&store, k, Duration::from_secs(60)).await;
        let req = match failure_kind {
            None => success(k, token, b"result bytes"),
            Some((retryable, side_effects)) => failure(k, token, retryable, side_effects),
        };
        let before = record(&store, k).await;
        let out = store.complete(std::slice::from_ref(&req)).await.unwrap();
        let result = out.items[0].clone().unwrap();
        assert!(!result.late, "{k}");
        assert_eq!(result.token, token, "{k}");

        // The core, deciding against the record as it was and the database time the
        // store reports, must produce the stored record, result and history event.
        let (expected, write) =
            core::decide_complete(&req, Some(&before), result.resolved_at).unwrap();
        let write = write.expect("a completion of a live lease writes");
        assert_eq!(result.state, expected.state, "{k}");
        assert_eq!(result.resolved_at, expected.resolved_at, "{k}");
        assert_eq!(record(&store, k).await, write.record, "{k}");
        let (_, history) = store.inspect(&key(k), 1).await.unwrap().unwrap();
        let event = &history[0];
        assert_eq!(
            (
                event.reason.as_str(),
                event.actor.as_str(),
                event.note.as_str()
            ),
            (
                write.event.reason,
                write.event.actor.as_str(),
                write.event.note.as_str()
            ),
            "{k}"
        );
        assert_eq!(
            (event.from, event.to, event.token),
            (write.event.from, write.event.to, token),
            "{k}"
        );
    }
}

#[tokio::test]
async fn one_batch_mixing_live_late_fenced_and_repeated_completions() {
    let (store, _db) = store().await;
    let live = acquire(&store, "live", Duration::from_secs(60)).await;
    let late = acquire(&store, "late", Duration::from_millis(100)).await;
    let fenced = acquire(&store, "fenced", Duration::from_secs(60)).await;
    let twice = acquire(&store, "twice", Duration::from_secs(60)).await;
    let wrong_fp = acquire(&store, "wrong-fp", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut mismatched = success("wrong-fp", wrong_fp, b"x");
    mismatched.fingerprint = b"other".to_vec();
    let batch = [
        success("twice", twice, b"same"),
        success("late", late, b"late result"),
        success("live", live, b"live result"),
        success("fenced", fenced + 1, b"x"),
        success("twice", twice, b"same"),
        mismatched,
        success("twice", twice, b"different"),
        success("absent", 1, b"x"),
    ];
    let out = store.complete(&batch).await.unwrap();
    let items = out.items;

    let first = items[0].clone().unwrap();
    assert_eq!((first.state, first.late), (State::Completed, false));
    let l = items[1].clone().unwrap();
    assert_eq!((l.state, l.late), (State::Completed, true));
    let v = items[2].clone().unwrap();
    assert_eq!((v.state, v.late), (State::Completed, false));
    assert!(
        matches!(items[3], Err(Rejection::Fenced { given, current, .. }) if given == fenced + 1 && current == fenced),
        "{:?}",
        items[3]
    );
    // The repeat is answered with the first completion's result.
    assert_eq!(items[4].clone().unwrap(), first);
    assert_eq!(items[5], Err(Rejection::FingerprintMismatch));
    assert_eq!(
        items[6],
        Err(Rejection::AlreadyResolved {
            state: State::Completed
        })
    );
    assert_eq!(items[7], Err(Rejection::NotFound));

    assert_eq!(reasons(&store, "live").await, ["claim", "complete"]);
    assert_eq!(reasons(&store, "late").await, ["claim", "late_complete"]);
    assert_eq!(reasons(&store, "twice").await, ["claim", "complete"]);
    assert_eq!(reasons(&store, "fenced").await, ["claim"]);
    assert_eq!(reasons(&store, "wrong-fp").await, ["claim"]);
    assert_eq!(
        record(&store, "twice").await.response.as_deref(),
        Some(&b"same"[..])
    );
    assert_eq!(record(&store, "fenced").await.state, State::Running);
}

#[tokio::test]
async fn new_keys_and_existing_keys_in_one_claim_batch() {
    let (store, _db) = store().await;
    let old = acquire(&store, "old", Duration::from_secs(60)).await;
    store
        .complete(&[success("old", old, b"done")])
        .await
        .unwrap();
    let held = acquire(&store, "held", Duration::from_secs(60)).await;

    let mut again = claim_req("new", Duration::from_secs(60));
    again.claim_id = "another-claim".into();
    let mut other_holder = claim_req("held", Duration::from_secs(60));
    other_holder.claim_id = "another-claim".into();
    let batch = [
        claim_req("new", Duration::from_secs(60)),
        claim_req("old", Duration::from_secs(60)),
        again,
        other_holder,
        claim_req("new", Duration::from_secs(60)),
    ];
    let out = store.claim(&batch).await.unwrap();
    let token = match &out.items[0] {
        Ok(ClaimOutcome::Acquired { token, .. }) => *token,
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(&out.items[1], Ok(ClaimOutcome::Completed { token: t, response, .. }) if *t == old && response == b"done"),
        "{:?}",
        out.items[1]
    );
    // Another claim of the key created earlier in this batch sees it in progress; the
    // same claim id again is the same acquisition.
    assert!(
        matches!(&out.items[2], Ok(ClaimOutcome::InProgress { .. })),
        "{:?}",
        out.items[2]
    );
    assert!(
        matches!(&out.items[3], Ok(ClaimOutcome::InProgress { .. })),
        "{:?}",
        out.items[3]
    );
    assert!(
        matches!(&out.items[4], Ok(ClaimOutcome::Acquired { token: t, .. }) if *t == token),
        "{:?}",
        out.items[4]
    );
    assert_eq!(reasons(&store, "new").await, ["claim"]);
    assert_eq!(record(&store, "held").await.token, held);
}

#[tokio::test]
async fn the_sweeper_walks_the_table_in_bounded_slices() {
    let (store, _db) = store().await;
    // k0..k6 in key order: three completed with a retention that is over at once, two
    // leases that expire, two live leases.
    for k in ["k0", "k3", "k5"] {
        let mut req = claim_req(k, Duration::from_secs(60));
        req.retention = Duration::from_millis(1);
        let token = match &store.claim(&[req]).await.unwrap().items[0] {
            Ok(ClaimOutcome::Acquired { token, .. }) => *token,
            other => panic!("{other:?}"),
        };
        store.complete(&[success(k, token, b"x")]).await.unwrap();
    }
    for k in ["k1", "k4"] {
        acquire(&store, k, Duration::from_millis(50)).await;
    }
    for k in ["k2", "k6"] {
        acquire(&store, k, Duration::from_secs(60)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // One slice of two records per sweep: no sweep touches more than two, and the walk
    // covers the seven records in four sweeps, then starts again from the top.
    let mut totals = (0, 0);
    for _ in 0..4 {
        let s = store.sweep(2, 1).await.unwrap();
        assert!(s.ran);
        assert!(s.expired + s.deleted <= 2, "{s:?}");
        totals = (totals.0 + s.expired, totals.1 + s.deleted);
    }
    assert_eq!(totals, (2, 3));
    for k in ["k1", "k4"] {
        let r = record(&store, k).await;
        assert_eq!(r.state, State::Uncertain, "{k}");
        assert_eq!(reasons(&store, k).await, ["claim", "lease_expired"]);
    }
    for k in ["k2", "k6"] {
        assert_eq!(record(&store, k).await.state, State::Running, "{k}");
    }
    for k in ["k0", "k3", "k5"] {
        assert!(store.inspect(&key(k), 1).await.unwrap().is_none(), "{k}");
    }
    // A whole pass over what is left finds nothing more to do.
    let s = store.sweep(10, 10).await.unwrap();
    assert_eq!((s.expired, s.deleted), (0, 0));
}

/// Namespaces and keys compare byte by byte whatever the database's default collation
/// (migration 3), and upgrading a database that holds records keeps them. The database here
/// sorts text the ICU English way ("a" before "B"); the records are written under the
/// schema of migration 2, the upgrade is applied, and the listing is then in byte order.
#[tokio::test]
async fn keys_compare_as_bytes_whatever_the_database_collation_and_the_upgrade_keeps_records() {
    let db =
        TestDb::with_options("TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'").await;
    let c = db.connect().await;
    let english: bool = c.query_one("SELECT 'a' < 'B'", &[]).await.unwrap().get(0);
    assert!(
        english,
        "the test database should sort text the English way"
    );

    // The schema as a server of migration 2 left it.
    c.execute(
        "CREATE TABLE sentinel_migrations (version integer PRIMARY KEY, \
         name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        &[],
    )
    .await
    .unwrap();
    for (version, name, sql) in &MIGRATIONS[..2] {
        c.batch_execute(sql).await.unwrap();
        c.execute(
            "INSERT INTO sentinel_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .unwrap();
    }
    let store = Store::connect(&db.url, 4).expect("pool");
    let keys = ["b", "B", "a", "A", "é", "Z"];
    let mut tokens = Vec::new();
    for k in keys {
        tokens.push(acquire(&store, k, Duration::from_secs(60)).await);
    }
    let done = store
        .complete(&[success("a", tokens[2], b"kept")])
        .await
        .unwrap();
    assert!(done.items[0].is_ok(), "{:?}", done.items[0]);

    assert_eq!(store.migrate().await.unwrap(), vec![3]);
    let listed: Vec<String> = store
        .list(&ListRequest {
            namespace: key("x").namespace,
            state: None,
            page_size: 100,
            after: None,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.key.key.as_str().to_owned())
        .collect();
    let mut by_bytes: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    by_bytes.sort();
    assert_eq!(listed, by_bytes);
    assert_eq!(listed, ["A", "B", "Z", "a", "b", "é"]);

    // Nothing was lost: records, results and history read back through the new keys.
    let a = record(&store, "a").await;
    assert_eq!(a.state, State::Completed);
    assert_eq!(a.response.as_deref(), Some(&b"kept"[..]));
    assert_eq!(reasons(&store, "a").await, ["claim", "complete"]);
    for (k, t) in keys.iter().zip(&tokens) {
        assert_eq!(record(&store, k).await.token, *t, "{k}");
    }
    let history_key: String = c
        .query_one(
            "SELECT string_agg(a.attname, ',' ORDER BY k.ord)
               FROM pg_index i
               CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = 'execution_events'::regclass AND i.indisprimary",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(history_key, "namespace,key,id");
}
