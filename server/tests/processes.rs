//! Guarantees that involve whole `sentinel` processes: replicas on one database, restarts,
//! and the shutdown sequence.

mod common;

use std::time::Duration;

use common::*;
use sentinel_proto::v1 as pb;
use sentinel_proto::v1::claim_response::Outcome;

#[tokio::test]
async fn two_server_processes_on_one_database_behave_as_one() {
    let db = TestDb::new().await;
    let a = ServerProcess::start(&db.url).await;
    let b = ServerProcess::start(&db.url).await;
    let ns = ns();

    // Concurrent claims spread over both replicas: one winner.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = if i % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            claim(&mut c, claim_req(&ns, "shared")).await
        }));
    }
    let mut winner = None;
    for t in tasks {
        if let Outcome::Acquired(acq) = t.await.unwrap() {
            assert!(winner.replace(acq.token).is_none(), "two winners");
        }
    }
    let token = winner.expect("one winner");

    // Complete on A, replay on B; a heartbeat on B for A's lease works; reconcile on B fences A.
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    ca.complete(success(&ns, "shared", token, b"from-a"))
        .await
        .unwrap();
    match claim(&mut cb, claim_req(&ns, "shared")).await {
        Outcome::Completed(r) => assert_eq!(r.response, b"from-a"),
        other => panic!("{other:?}"),
    }
    let lease = acquire(&mut ca, claim_req(&ns, "other")).await;
    let mut beats_b = Beats::open(&mut cb).await;
    assert!(lost_reason(&beats_b.beat(&ns, "other", lease.token).await).is_none());
    cb.reconcile(reconcile(&ns, "other", lease.token, retry(), true))
        .await
        .unwrap();
    let mut beats_a = Beats::open(&mut ca).await;
    assert_eq!(
        lost_reason(&beats_a.beat(&ns, "other", lease.token).await),
        Some(pb::LostReason::Fenced)
    );
    a.terminate().await;
    b.terminate().await;
}

#[tokio::test]
async fn a_server_restart_loses_nothing_that_was_acknowledged() {
    let db = TestDb::new().await;
    let server = ServerProcess::start(&db.url).await;
    let ns = ns();
    let mut c = server.client().await;
    let mut acked = Vec::new();
    for i in 0..50 {
        let key = format!("k{i}");
        let a = acquire(&mut c, claim_req(&ns, &key)).await;
        let body = format!("result-{i}").into_bytes();
        c.complete(success(&ns, &key, a.token, &body))
            .await
            .unwrap();
        acked.push((key, body));
    }
    let running = acquire(&mut c, claim_req(&ns, "running")).await;
    let uncertain = acquire(&mut c, claim_req(&ns, "uncertain")).await;
    c.complete(failure(
        &ns,
        "uncertain",
        uncertain.token,
        false,
        pb::SideEffects::Possible,
    ))
    .await
    .unwrap();
    server.kill().await;

    let server = ServerProcess::start(&db.url).await;
    let mut c = server.client().await;
    for (key, body) in &acked {
        match claim(&mut c, claim_req(&ns, key)).await {
            Outcome::Completed(r) => assert_eq!(&r.response, body),
            other => panic!("{key}: {other:?}"),
        }
    }
    assert!(matches!(
        claim(&mut c, claim_req(&ns, "running")).await,
        Outcome::InProgress(_)
    ));
    assert!(matches!(
        claim(&mut c, claim_req(&ns, "uncertain")).await,
        Outcome::Uncertain(_)
    ));
    // The lease granted before the crash is still the holder's.
    let mut beats = Beats::open(&mut c).await;
    assert!(lost_reason(&beats.beat(&ns, "running", running.token).await).is_none());
    c.complete(success(&ns, "running", running.token, b"after-restart"))
        .await
        .unwrap();
    server.terminate().await;
}

#[tokio::test]
async fn shutdown_reports_not_serving_ends_heartbeat_streams_and_exits_cleanly() {
    let db = TestDb::new().await;
    let server = ServerProcess::start(&db.url).await;
    let mut c = server.client().await;
    let ns = ns();
    let lease = acquire(&mut c, claim_req(&ns, "k")).await;
    let mut beats = Beats::open(&mut c).await;
    assert!(lost_reason(&beats.beat(&ns, "k", lease.token).await).is_none());
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    // The stream ended (cleanly or with an error), it did not hang.
    let end = tokio::time::timeout(Duration::from_secs(5), beats.rx.message()).await;
    assert!(
        matches!(end, Ok(Ok(None)) | Ok(Err(_))),
        "stream still open: {end:?}"
    );
}

async fn migrate(url: &str) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["migrate", "--database-url", url])
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn migrate_applies_every_version_once_and_refuses_a_newer_schema() {
    let db = TestDb::new().await;
    let first = migrate(&db.url).await;
    assert!(first.status.success(), "{first:?}");
    let out = String::from_utf8_lossy(&first.stdout);
    let expected = sentinel_server::store::MIGRATIONS.len();
    assert!(
        out.contains(&format!("{expected} migration(s) applied")),
        "{out}"
    );
    let again = migrate(&db.url).await;
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 migration(s) applied"));

    let c = db.connect().await;
    let versions: Vec<i32> = c
        .query(
            "SELECT version FROM sentinel_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=expected as i32).collect::<Vec<_>>());
    c.execute(
        "INSERT INTO sentinel_migrations (version, name) VALUES (9999, 'from the future')",
        &[],
    )
    .await
    .unwrap();
    let refused = migrate(&db.url).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("newer than this binary"));
}

#[tokio::test]
async fn dev_mode_starts_its_own_postgres_serves_and_stops_it_cleanly() {
    let dir = std::env::temp_dir().join(format!(
        "sentinel-dev-test-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("dev mode did not start")
        .unwrap()
        .expect("dev mode exited");
    let addr = line
        .strip_prefix("sentinel listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let mut c = connect(addr).await;
    let ns = ns();
    let a = acquire(&mut c, claim_req(&ns, "k")).await;
    c.complete(success(&ns, "k", a.token, b"dev"))
        .await
        .unwrap();
    assert!(dir.join("pgdata").join("postmaster.pid").exists());

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("dev mode did not stop")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !dir.join("pgdata").join("postmaster.pid").exists(),
        "PostgreSQL was not stopped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
