//! Histories: every process appends its operations, as JSON lines, to a file of its own.
//!
//! An operation is an `invoke` followed by at most one of `ok` (it happened, with this
//! result), `fail` (it certainly did not happen) or `info` (unknown: a timeout, a lost
//! connection, or the process was killed before it learned). `note` lines carry facts learned
//! in the middle of an operation (e.g. the token acquired inside `once`).
//!
//! Timestamps are CLOCK_MONOTONIC nanoseconds, which every process of one machine shares, so
//! the histories of different processes can be merged into one real-time order (Jepsen's
//! "invoke/complete" model).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Nanoseconds of CLOCK_MONOTONIC: comparable across the processes of one machine.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which lives on this stack.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The phase of an operation a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Invoke,
    Ok,
    Fail,
    Info,
    Note,
}

/// One line of a history file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rec {
    /// CLOCK_MONOTONIC nanoseconds.
    pub t: u64,
    /// The process (e.g. `w2.1`: worker 2, second incarnation; `final`; `nemesis`).
    pub p: String,
    /// The operation id, unique within the process.
    pub op: u64,
    /// The operation: once, claim, heartbeat, complete, reconcile, sink, inspect, resolve,
    /// or a nemesis action.
    pub f: String,
    #[serde(rename = "type")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
    /// The holder named in a claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// A short result: acquired, completed, replayed, alive, lost, fenced, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Response bytes, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Rec {
    pub fn token(mut self, token: u64) -> Self {
        self.token = Some(token);
        self
    }
    pub fn claim_id(mut self, id: &str) -> Self {
        self.claim_id = Some(id.to_owned());
        self
    }
    pub fn holder(mut self, h: &str) -> Self {
        self.holder = Some(h.to_owned());
        self
    }
    pub fn outcome(mut self, o: &str) -> Self {
        self.outcome = Some(o.to_owned());
        self
    }
    pub fn response(mut self, bytes: &[u8]) -> Self {
        self.response = Some(hex(bytes));
        self
    }
    pub fn new_token(mut self, t: u64) -> Self {
        self.new_token = Some(t);
        self
    }
    pub fn late(mut self, late: bool) -> Self {
        self.late = Some(late);
        self
    }
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
}

/// Appends records to one history file. Each record is one `write(2)` on an `O_APPEND` file,
/// so a SIGKILL loses at most the record being written, never a half of an earlier one.
#[derive(Clone)]
pub struct History {
    inner: Arc<HistoryInner>,
}

struct HistoryInner {
    file: Mutex<File>,
    process: String,
    next_op: AtomicU64,
}

/// An operation in flight: its records share the operation id.
#[derive(Clone)]
pub struct Op {
    history: History,
    id: u64,
    f: &'static str,
    key: String,
}

impl History {
    pub fn open(path: &Path, process: &str) -> anyhow::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            inner: Arc::new(HistoryInner {
                file: Mutex::new(file),
                process: process.to_owned(),
                next_op: AtomicU64::new(1),
            }),
        })
    }

    fn write(&self, rec: &Rec) {
        let mut line = serde_json::to_vec(rec).expect("records serialize");
        line.push(b'\n');
        let mut f = self.inner.file.lock().unwrap_or_else(|e| e.into_inner());
        // A history that cannot be written makes the whole run meaningless.
        f.write_all(&line).expect("writing the history");
    }

    /// Starts an operation: writes its `invoke` record (built by `fill`) and returns it.
    pub fn invoke(&self, f: &'static str, key: &str, fill: impl FnOnce(Rec) -> Rec) -> Op {
        let id = self.inner.next_op.fetch_add(1, Ordering::Relaxed);
        let op = Op {
            history: self.clone(),
            id,
            f,
            key: key.to_owned(),
        };
        op.record(Phase::Invoke, fill);
        op
    }
}

impl Op {
    fn record(&self, phase: Phase, fill: impl FnOnce(Rec) -> Rec) {
        let rec = fill(Rec {
            t: mono_ns(),
            p: self.history.inner.process.clone(),
            op: self.id,
            f: self.f.to_owned(),
            phase: Some(phase),
            key: self.key.clone(),
            ..Rec::default()
        });
        self.history.write(&rec);
    }

    pub fn ok(&self, fill: impl FnOnce(Rec) -> Rec) {
        self.record(Phase::Ok, fill)
    }
    pub fn fail(&self, fill: impl FnOnce(Rec) -> Rec) {
        self.record(Phase::Fail, fill)
    }
    pub fn info(&self, fill: impl FnOnce(Rec) -> Rec) {
        self.record(Phase::Info, fill)
    }
    pub fn note(&self, fill: impl FnOnce(Rec) -> Rec) {
        self.record(Phase::Note, fill)
    }
}

/// Reads a JSON-lines file; a torn last line (the writer was killed) is skipped.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file =
        File::open(path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let mut out = Vec::new();
    let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>()?;
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == n => {}
            Err(e) => anyhow::bail!("{}:{}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let b = vec![0u8, 1, 0xab, 0xff, b'k'];
        assert_eq!(unhex(&hex(&b)).unwrap(), b);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = mono_ns();
        let b = mono_ns();
        assert!(b >= a);
        assert!(a > 0);
    }
}
