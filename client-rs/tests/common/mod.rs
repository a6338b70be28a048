//! Test harness: a client for the server at `SENTINEL_ADDR` in a namespace of its own, and a
//! TCP proxy that can cut the connection between client and server.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sentinel_client::{Client, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// The server under test. Tests never skip silently: without a server they fail.
pub fn addr() -> String {
    std::env::var("SENTINEL_ADDR").unwrap_or_else(|_| {
        panic!(
            "SENTINEL_ADDR is not set: these tests need a running Sentinel server \
             (run them with scripts/with-server.sh client-rs/test.sh, or export \
             SENTINEL_ADDR=host:port of `sentinel dev`)"
        )
    })
}

/// A namespace no other test (or test run) uses.
pub fn namespace() -> String {
    format!("rs-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// A unique key.
pub fn key(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A client of the server under test in a fresh namespace.
pub async fn client() -> Client {
    client_to(&addr()).await
}

pub async fn client_to(addr: &str) -> Client {
    Client::builder(addr)
        .namespace(namespace())
        .holder("client-rs-tests")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the Sentinel server at {addr}: {e}"))
}

/// A lazily connected client that retries quickly, for endpoints that come and go.
pub fn lazy_client(addr: &str, namespace: &str) -> Client {
    Client::builder(addr)
        .namespace(namespace)
        .holder("client-rs-tests")
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        })
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
        .expect("valid endpoint")
}

/// A TCP proxy to the server. `freeze` stops forwarding bytes but keeps every connection
/// open (a stalled network); `cut` closes the listener and every connection through it.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Arc<Notify>,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Self::serve(listener, upstream)
    }

    /// Proxies on an already bound listener (to bring a known address up later).
    pub fn serve(listener: TcpListener, upstream: String) -> Self {
        let addr = listener.local_addr().expect("proxy address");
        let stop = Arc::new(Notify::new());
        let (frozen, frozen_rx) = watch::channel(false);
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            // Dropping the set aborts every connection: both sockets close at once.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.notified() => return,
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { return };
                        let upstream = upstream.clone();
                        let frozen = frozen_rx.clone();
                        connections.spawn(async move {
                            let Ok(outbound) = TcpStream::connect(&upstream).await else { return };
                            let (in_read, in_write) = inbound.into_split();
                            let (out_read, out_write) = outbound.into_split();
                            tokio::join!(
                                pump(in_read, out_write, frozen.clone()),
                                pump(out_read, in_write, frozen),
                            );
                        });
                    }
                }
            }
        });
        Self {
            addr,
            stop,
            frozen,
            task,
        }
    }

    /// Stops forwarding in both directions, keeping the sockets open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub async fn cut(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

/// Copies `from` to `to` until EOF, or until frozen; then holds both ends open, silent.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *frozen.borrow() {
            break;
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if *frozen.borrow() {
                        break;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = frozen.changed() => {}
        }
    }
    std::future::pending::<()>().await;
    drop((from, to));
}
