//! Test harness: a real PostgreSQL database per test (created in the cluster named by
//! `SENTINEL_TEST_DATABASE_URL`, or `SENTINEL_DATABASE_URL`), and a real server on
//! `127.0.0.1:0`, in-process or as a separate `sentinel` process.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use sentinel_proto::v1 as pb;
use sentinel_proto::v1::sentinel_service_client::SentinelServiceClient;
use sentinel_server::config::{ServerConfig, ServerOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub type Client = SentinelServiceClient<Channel>;

fn admin_url() -> String {
    std::env::var("SENTINEL_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("SENTINEL_DATABASE_URL"))
        .expect(
            "set SENTINEL_TEST_DATABASE_URL to a PostgreSQL URL whose user may create databases \
             (the README's test command does this for you)",
        )
}

/// A fresh, empty database for one test.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        TestDb::with_options("").await
    }

    /// A fresh database created with extra `CREATE DATABASE` options (say, another collation).
    pub async fn with_options(options: &str) -> TestDb {
        let admin = admin_url();
        let name = format!("sentinel_t_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name} {options}"))
            .await
            .expect("create test database");
        let mut cfg: tokio_postgres::Config = admin.parse().unwrap();
        cfg.dbname(&name);
        let url = config_to_url(&cfg, &name);
        TestDb { url, name }
    }

    /// A direct connection, for checks that look at the tables themselves.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to test database");
        tokio::spawn(conn);
        client
    }

    /// Rows in (executions, execution_events).
    pub async fn counts(&self) -> (i64, i64) {
        let c = self.connect().await;
        let e: i64 = c
            .query_one("SELECT count(*) FROM executions", &[])
            .await
            .unwrap()
            .get(0);
        let h: i64 = c
            .query_one("SELECT count(*) FROM execution_events", &[])
            .await
            .unwrap()
            .get(0);
        (e, h)
    }
}

fn config_to_url(cfg: &tokio_postgres::Config, db: &str) -> String {
    use tokio_postgres::config::Host;
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[allow(unreachable_patterns)]
        Some(Host::Unix(p)) => p.display().to_string(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    format!("host={host} port={port} user={user} dbname={db}")
}

/// Options tuned for tests: a fast sweeper.
pub fn test_options() -> ServerOptions {
    ServerOptions {
        pool_size: 8,
        sweep_interval: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    }
}

/// A server running inside the test process.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub metrics: Option<std::net::SocketAddr>,
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(test_options()).await
    }

    pub async fn start_with(options: ServerOptions) -> TestServer {
        let db = TestDb::new().await;
        Self::start_on(db, options).await
    }

    pub async fn start_on(db: TestDb, options: ServerOptions) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let config = ServerConfig {
            listen: addr,
            database_url: db.url.clone(),
            options,
        };
        let task = tokio::spawn(async move {
            sentinel_server::server::run(
                config,
                listener,
                async {
                    let _ = stopped.await;
                },
                move |ready| {
                    let _ = ready_tx.send(ready);
                },
            )
            .await
        });
        let ready = ready_rx.await.expect("server failed to start");
        TestServer {
            addr,
            metrics: ready.metrics,
            db,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        connect(self.addr).await
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server gracefully and returns its database.
    pub async fn stop(mut self) -> TestDb {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        std::mem::replace(
            &mut self.db,
            TestDb {
                url: String::new(),
                name: String::new(),
            },
        )
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to server");
    SentinelServiceClient::new(channel)
}

/// A `sentinel serve` process.
pub struct ServerProcess {
    pub addr: std::net::SocketAddr,
    /// The metrics URL, when started with `--metrics-listen`.
    pub metrics_url: Option<String>,
    child: tokio::process::Child,
}

impl ServerProcess {
    pub async fn start(database_url: &str) -> ServerProcess {
        Self::start_with(database_url, &[], &[]).await
    }

    pub async fn start_with(
        database_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
            ])
            .args(["--sweep-interval", "200ms", "--pool-size", "4"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start sentinel");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("sentinel did not announce its address")
            .unwrap()
            .expect("sentinel exited");
        let addr = line
            .strip_prefix("sentinel listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        let metrics_url = if args.contains(&"--metrics-listen") {
            let line = lines.next_line().await.unwrap().expect("metrics line");
            Some(
                line.strip_prefix("sentinel metrics on ")
                    .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                    .to_owned(),
            )
        } else {
            None
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ServerProcess {
            addr,
            metrics_url,
            child,
        }
    }

    pub async fn client(&self) -> Client {
        connect(self.addr).await
    }

    /// SIGKILL: no graceful anything.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("sentinel did not exit after SIGTERM")
            .unwrap()
    }
}

/// A unique namespace per test, so tests never see each other's records.
pub fn ns() -> String {
    format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub fn dur(ms: u64) -> Option<prost_types::Duration> {
    let d = Duration::from_millis(ms);
    Some(prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

pub fn claim_req(ns: &str, key: &str) -> pb::ClaimRequest {
    pb::ClaimRequest {
        namespace: ns.into(),
        key: key.into(),
        holder: "test-worker".into(),
        claim_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    }
}

pub async fn claim(c: &mut Client, req: pb::ClaimRequest) -> pb::claim_response::Outcome {
    c.claim(req)
        .await
        .expect("claim")
        .into_inner()
        .outcome
        .expect("an outcome")
}

/// Claims and expects ACQUIRED.
pub async fn acquire(c: &mut Client, req: pb::ClaimRequest) -> pb::ClaimAcquired {
    match claim(c, req).await {
        pb::claim_response::Outcome::Acquired(a) => a,
        other => panic!("expected ACQUIRED, got {other:?}"),
    }
}

pub fn success(ns: &str, key: &str, token: u64, response: &[u8]) -> pb::CompleteRequest {
    pb::CompleteRequest {
        namespace: ns.into(),
        key: key.into(),
        token,
        outcome: Some(pb::complete_request::Outcome::Success(
            pb::CompleteSuccess {
                response: response.to_vec(),
            },
        )),
        fingerprint: vec![],
    }
}

pub fn failure(
    ns: &str,
    key: &str,
    token: u64,
    retryable: bool,
    side_effects: pb::SideEffects,
) -> pb::CompleteRequest {
    pb::CompleteRequest {
        namespace: ns.into(),
        key: key.into(),
        token,
        outcome: Some(pb::complete_request::Outcome::Failure(
            pb::CompleteFailure {
                message: "boom".into(),
                retryable,
                side_effects: side_effects as i32,
            },
        )),
        fingerprint: vec![],
    }
}

pub fn reconcile(
    ns: &str,
    key: &str,
    expected: u64,
    resolution: pb::reconcile_request::Resolution,
    force: bool,
) -> pb::ReconcileRequest {
    pb::ReconcileRequest {
        namespace: ns.into(),
        key: key.into(),
        expected_token: expected,
        resolution: Some(resolution),
        operator: "ops@example".into(),
        note: "checked the ledger".into(),
        force,
    }
}

pub fn retry() -> pb::reconcile_request::Resolution {
    pb::reconcile_request::Resolution::Retry(pb::ReconcileRetry {})
}

/// The `ErrorInfo` reason of a status, if any.
pub fn reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|i| {
        assert_eq!(i.domain, "sentinel.v1");
        i.reason
    })
}

pub fn error_metadata(status: &tonic::Status) -> std::collections::HashMap<String, String> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.metadata)
        .unwrap_or_default()
}

/// A heartbeat stream: send requests, receive replies.
pub struct Beats {
    pub tx: tokio::sync::mpsc::Sender<pb::HeartbeatRequest>,
    pub rx: tonic::Streaming<pb::HeartbeatResponse>,
}

impl Beats {
    pub async fn open(c: &mut Client) -> Beats {
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let resp = c
            .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("open heartbeat stream");
        Beats {
            tx,
            rx: resp.into_inner(),
        }
    }

    pub async fn send(&self, ns: &str, key: &str, token: u64) {
        self.tx
            .send(pb::HeartbeatRequest {
                namespace: ns.into(),
                key: key.into(),
                token,
            })
            .await
            .unwrap();
    }

    pub async fn recv(&mut self) -> pb::HeartbeatResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("no heartbeat reply within 10 s")
            .expect("heartbeat stream failed")
            .expect("heartbeat stream closed")
    }

    /// One round trip for one lease.
    pub async fn beat(
        &mut self,
        ns: &str,
        key: &str,
        token: u64,
    ) -> pb::heartbeat_response::Result {
        self.send(ns, key, token).await;
        let r = self.recv().await;
        assert_eq!(
            (r.namespace.as_str(), r.key.as_str(), r.token),
            (ns, key, token)
        );
        r.result.expect("a result")
    }
}

pub fn lost_reason(r: &pb::heartbeat_response::Result) -> Option<pb::LostReason> {
    match r {
        pb::heartbeat_response::Result::Lost(l) => {
            Some(pb::LostReason::try_from(l.reason).unwrap())
        }
        pb::heartbeat_response::Result::Alive(_) => None,
    }
}

pub fn to_chrono(t: &prost_types::Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
}
