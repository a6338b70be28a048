//! A TCP fault proxy: forwards connections to one target and, on command, adds latency,
//! blackholes (accepts and reads, but forwards nothing), drops replies (forwards requests, so
//! the far side acts, but discards what it answers: the "commit succeeded, reply lost" case),
//! or resets every connection.
//!
//! Bytes dropped in the middle of a stream leave it unusable for the protocol on top (gRPC or
//! the PostgreSQL wire protocol), so healing a blackhole or a reply drop also resets the
//! connections that lost bytes, as a real network would once TCP gave up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

/// What the proxy does with the bytes it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Latency(Duration),
    Blackhole,
    DropReplies,
}

/// A running proxy; dropping it leaves its task running until the runtime ends.
#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    reset: broadcast::Sender<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let mode = Arc::new(mode);
        let (reset, _) = broadcast::channel(16);
        let proxy = Proxy { addr, mode, reset };
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let p = p.clone();
                tokio::spawn(async move { p.serve(client, target).await });
            }
        });
        Ok(proxy)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Resets every open connection (RST, not FIN).
    pub fn reset_all(&self) {
        let _ = self.reset.send(());
    }

    /// Back to forwarding; connections that lost bytes are reset.
    pub fn heal(&self) {
        let was = self.mode.send_replace(Mode::Pass);
        if matches!(was, Mode::Blackhole | Mode::DropReplies) {
            self.reset_all();
        }
    }

    async fn serve(self, client: TcpStream, target: SocketAddr) {
        let _ = client.set_nodelay(true);
        let mut reset = self.reset.subscribe();
        // A connection opened during a blackhole never reaches the target.
        let server = if *self.mode.borrow() == Mode::Blackhole {
            None
        } else {
            tokio::select! {
                s = TcpStream::connect(target) => s.ok(),
                _ = reset.recv() => None,
            }
        };
        let Some(server) = server else {
            let mut client = client;
            let _ = client.set_zero_linger();
            let mut buf = vec![0u8; 16 * 1024];
            tokio::select! {
                _ = async { while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
                _ = reset.recv() => {}
            }
            return;
        };
        let _ = server.set_nodelay(true);
        let poisoned = Arc::new(AtomicBool::new(false));
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let up = pump(cr, sw, self.mode.subscribe(), false, poisoned.clone());
        let down = pump(sr, cw, self.mode.subscribe(), true, poisoned);
        // The connection ends when both directions end, or at once on a reset. Returning drops
        // both sockets, with linger 0: an RST to both peers.
        tokio::select! {
            _ = reset.recv() => {}
            _ = async { tokio::join!(up, down) } => {}
        }
    }
}

/// Copies one direction until it ends.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
    is_reply: bool,
    poisoned: Arc<AtomicBool>,
) {
    // Linger 0 on both sockets: whenever this connection is torn down it is an RST.
    let _ = from.as_ref().set_zero_linger();
    let _ = to.as_ref().set_zero_linger();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let m = *mode.borrow();
        match m {
            Mode::Blackhole => {
                poisoned.store(true, Ordering::Relaxed);
                continue;
            }
            Mode::DropReplies if is_reply => {
                poisoned.store(true, Ordering::Relaxed);
                continue;
            }
            Mode::Latency(d) => tokio::time::sleep(d).await,
            Mode::Pass | Mode::DropReplies => {}
        }
        if poisoned.load(Ordering::Relaxed) {
            // Bytes were lost earlier: forwarding more would only garble the protocol.
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
