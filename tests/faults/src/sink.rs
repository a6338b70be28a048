//! The fenced sink: the "outside world" that the workers' side effects land in.
//!
//! It plays the downstream system of DESIGN.md's vocabulary (a database or a payment
//! provider that checks fencing tokens): for each key it keeps the highest token it has seen,
//! accepts a write whose token is at least that, rejects any lower one, and logs every attempt,
//! accepted or rejected, in the order it decided them. It runs as a process of its own, so the
//! faults injected into workers, servers and PostgreSQL never touch it.
//!
//! Line protocol over TCP, one request per line:
//!   `W <key> <token> <payload>`  ->  `OK` | `REJECTED <highest>`
//! Keys and payloads contain no whitespace.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::history::mono_ns;

/// One attempt, as the sink logs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkEntry {
    pub t: u64,
    pub key: String,
    pub token: u64,
    pub payload: String,
    pub accepted: bool,
    /// The highest token accepted for the key before this attempt (0: none).
    pub highest_before: u64,
}

struct State {
    highest: HashMap<String, u64>,
    log: std::fs::File,
}

/// Serves until killed. Prints `sink listening on ADDR` once ready.
pub async fn serve(listen: &str, log: &Path) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let state = Arc::new(Mutex::new(State {
        highest: HashMap::new(),
        log: file,
    }));
    println!("sink listening on {}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let _ = serve_conn(socket, state).await;
        });
    }
}

async fn serve_conn(socket: TcpStream, state: Arc<Mutex<State>>) -> anyhow::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match parse(&line) {
            Ok((key, token, payload)) => decide(&state, key, token, payload)?,
            Err(e) => format!("ERR {e}\n"),
        };
        write.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

fn parse(line: &str) -> anyhow::Result<(&str, u64, &str)> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("W"), Some(key), Some(token), Some(payload)) if parts.next().is_none() => {
            Ok((key, token.parse()?, payload))
        }
        _ => bail!("expected `W <key> <token> <payload>`"),
    }
}

/// Decides and logs under one lock, so the log order is the decision order.
fn decide(state: &Mutex<State>, key: &str, token: u64, payload: &str) -> anyhow::Result<String> {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let highest_before = s.highest.get(key).copied().unwrap_or(0);
    let accepted = token >= highest_before;
    if accepted {
        s.highest.insert(key.to_owned(), token);
    }
    let entry = SinkEntry {
        t: mono_ns(),
        key: key.to_owned(),
        token,
        payload: payload.to_owned(),
        accepted,
        highest_before,
    };
    let mut line = serde_json::to_vec(&entry)?;
    line.push(b'\n');
    s.log.write_all(&line)?;
    Ok(if accepted {
        "OK\n".to_owned()
    } else {
        format!("REJECTED {highest_before}\n")
    })
}

/// A connection to the sink, re-opened after any error.
pub struct SinkClient {
    addr: String,
    conn: Option<(
        tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
        tokio::net::tcp::OwnedWriteHalf,
    )>,
}

/// What the sink said about a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkReply {
    Accepted,
    Rejected { highest: u64 },
}

impl SinkClient {
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            conn: None,
        }
    }

    /// Writes `(key, token, payload)`. An error means the outcome is unknown.
    pub async fn write(
        &mut self,
        key: &str,
        token: u64,
        payload: &str,
    ) -> anyhow::Result<SinkReply> {
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            self.write_inner(key, token, payload),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("sink write timed out")));
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn write_inner(
        &mut self,
        key: &str,
        token: u64,
        payload: &str,
    ) -> anyhow::Result<SinkReply> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            self.conn = Some((BufReader::new(r).lines(), w));
        }
        let (lines, w) = self.conn.as_mut().expect("connected above");
        w.write_all(format!("W {key} {token} {payload}\n").as_bytes())
            .await?;
        let line = lines
            .next_line()
            .await?
            .context("the sink closed the connection")?;
        if line == "OK" {
            Ok(SinkReply::Accepted)
        } else if let Some(h) = line.strip_prefix("REJECTED ") {
            Ok(SinkReply::Rejected {
                highest: h.parse()?,
            })
        } else {
            bail!("unexpected sink reply {line:?}")
        }
    }
}
