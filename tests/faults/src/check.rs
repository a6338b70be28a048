//! The checker: reads a run's histories, the sink log, the database dump and the server logs,
//! and judges each guarantee of DESIGN.md that faults could break.
//!
//! Real-time order comes from the monotonic timestamps: if the acknowledgement of `a` was
//! received before `b` was invoked, then `a` happened before `b`. Operations whose outcome is
//! unknown (`info`, or no completion because the process was killed) are never counted as
//! acknowledged, but they may have happened.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::history::{read_jsonl, unhex, Phase, Rec};
use crate::run::{DbEvent, DbExecution, RunInfo};
use crate::sink::SinkEntry;

/// States of `executions.state`.
const RUNNING: i16 = 1;
const COMPLETED: i16 = 2;

/// Keys whose results live for one second: each may have several lives, whose records and
/// history retention deletes, so only the checks that span lives apply to them.
fn short_retention(key: &str) -> bool {
    key.starts_with(crate::worker::RETENTION_PREFIX)
}

/// How many examples of a violation the report keeps.
const EXAMPLES: usize = 12;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Invariant {
    pub name: String,
    pub passed: bool,
    pub counts: BTreeMap<String, u64>,
    pub violations: u64,
    pub examples: Vec<String>,
}

impl Invariant {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    fn count(&mut self, what: &str, n: u64) {
        *self.counts.entry(what.to_owned()).or_default() += n;
    }

    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(what);
        }
    }

    fn done(mut self) -> Self {
        self.passed = self.violations == 0;
        self
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub passed: bool,
    pub invariants: Vec<Invariant>,
    /// Operations by kind and outcome, faults by kind, and other context.
    pub stats: BTreeMap<String, u64>,
}

impl Report {
    #[cfg(test)]
    pub fn invariant(&self, name: &str) -> Option<&Invariant> {
        self.invariants.iter().find(|i| i.name == name)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for i in &self.invariants {
            let counts: Vec<String> = i.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                s,
                "{} {:<40} violations={} {}",
                if i.passed { "PASS" } else { "FAIL" },
                i.name,
                i.violations,
                counts.join(" ")
            );
            for e in &i.examples {
                let _ = writeln!(s, "     - {e}");
            }
        }
        let stats: Vec<String> = self.stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "stats: {}", stats.join(" "));
        let _ = writeln!(
            s,
            "{}",
            if self.passed {
                "CHECK PASSED"
            } else {
                "CHECK FAILED"
            }
        );
        s
    }
}

/// One operation: its invoke, its completion if any, and the notes in between.
#[derive(Clone, Debug)]
struct OpView {
    id: String,
    f: String,
    key: String,
    invoke: Rec,
    end: Option<Rec>,
    notes: Vec<Rec>,
}

impl OpView {
    fn ok(&self) -> Option<&Rec> {
        self.end.as_ref().filter(|e| e.phase == Some(Phase::Ok))
    }
    fn ok_outcome(&self) -> Option<&str> {
        self.ok().and_then(|e| e.outcome.as_deref())
    }
    fn note(&self, outcome: &str) -> Option<&Rec> {
        self.notes
            .iter()
            .find(|n| n.outcome.as_deref() == Some(outcome))
    }
}

/// A fencing token handed out: by a claim (inside `once` or by hand) or a reconcile.
#[derive(Clone, Debug)]
struct Issue {
    key: String,
    token: u64,
    /// Who got it: a claim id, or the operation.
    by: String,
    invoke: u64,
    ack: u64,
}

/// An acknowledged write under a token: a complete or a heartbeat ALIVE.
#[derive(Clone, Debug)]
struct Ack {
    key: String,
    token: u64,
    invoke: u64,
    ack: u64,
    /// The token the server said it stored the outcome under.
    answered: Option<u64>,
    what: String,
}

fn fmt_t(run: &RunInfo, t: u64) -> String {
    format!("{:+.3}s", (t as f64 - run.start_mono as f64) / 1e9)
}

pub fn check(dir: &Path) -> anyhow::Result<Report> {
    let run: RunInfo = serde_json::from_slice(
        &std::fs::read(dir.join("run.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e} (is this a finished run?)", dir.display()))?,
    )?;
    let mut recs: Vec<Rec> = Vec::new();
    let mut server_logs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("history-") && name.ends_with(".jsonl") {
            recs.extend(read_jsonl::<Rec>(&path)?);
        } else if name.starts_with("server-") && name.ends_with(".log") {
            server_logs.push(path.clone());
        }
    }
    server_logs.sort();
    let sink: Vec<SinkEntry> = read_jsonl(&dir.join("sink.jsonl")).unwrap_or_default();
    let executions: Vec<DbExecution> = read_jsonl(&dir.join("db-executions.jsonl"))?;
    let events: Vec<DbEvent> = read_jsonl(&dir.join("db-events.jsonl"))?;
    let mut logs = Vec::new();
    for p in &server_logs {
        logs.push((
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            std::fs::read_to_string(p)?,
        ));
    }
    Ok(judge(&run, recs, &sink, &executions, &events, &logs))
}

fn build_ops(recs: Vec<Rec>) -> Vec<OpView> {
    let mut ops: HashMap<(String, u64), OpView> = HashMap::new();
    let mut order = Vec::new();
    for r in recs {
        let k = (r.p.clone(), r.op);
        match r.phase {
            Some(Phase::Invoke) => {
                order.push(k.clone());
                ops.insert(
                    k,
                    OpView {
                        id: format!("{}/{}", r.p, r.op),
                        f: r.f.clone(),
                        key: r.key.clone(),
                        invoke: r,
                        end: None,
                        notes: Vec::new(),
                    },
                );
            }
            Some(Phase::Note) => {
                if let Some(o) = ops.get_mut(&k) {
                    o.notes.push(r);
                }
            }
            Some(Phase::Ok | Phase::Fail | Phase::Info) => {
                if let Some(o) = ops.get_mut(&k) {
                    o.end = Some(r);
                }
            }
            None => {}
        }
    }
    let mut out: Vec<OpView> = order.into_iter().filter_map(|k| ops.remove(&k)).collect();
    out.sort_by_key(|o| o.invoke.t);
    out
}

/// The token a stored response was produced under, from its payload:
/// `w:KEY:TOKEN:...` and `f:KEY:TOKEN` by workers, `r:KEY:EXPECTED:...` by a reconcile
/// (which stores it under EXPECTED + 1).
fn response_token(bytes: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let mut parts = s.split(':');
    let kind = parts.next()?;
    let _key = parts.next()?;
    let t: u64 = parts.next()?.parse().ok()?;
    match kind {
        "w" | "f" => Some(t),
        "r" => Some(t + 1),
        _ => None,
    }
}

fn judge(
    run: &RunInfo,
    recs: Vec<Rec>,
    sink: &[SinkEntry],
    executions: &[DbExecution],
    events: &[DbEvent],
    server_logs: &[(String, String)],
) -> Report {
    let ops = build_ops(recs);
    let ns = run.namespace.as_str();
    let events: Vec<&DbEvent> = events.iter().filter(|e| e.namespace == ns).collect();
    let mut stats: BTreeMap<String, u64> = BTreeMap::new();
    for o in &ops {
        let outcome = match &o.end {
            Some(e) if e.phase == Some(Phase::Ok) => e.outcome.clone().unwrap_or("ok".into()),
            Some(e) if e.phase == Some(Phase::Fail) => {
                format!("fail-{}", e.outcome.clone().unwrap_or_default())
            }
            Some(_) => "unknown".to_owned(),
            None => "no-reply".to_owned(),
        };
        *stats.entry(format!("op.{}.{}", o.f, outcome)).or_default() += 1;
    }
    for (k, v) in &run.faults {
        stats.insert(format!("fault.{k}"), *v);
    }
    for e in &events {
        *stats.entry(format!("db.event.{}", e.reason)).or_default() += 1;
    }
    stats.insert("ops".into(), ops.len() as u64);
    stats.insert("keys".into(), run.keys.len() as u64);

    // Every token handed out and acknowledged.
    let mut issues: Vec<Issue> = Vec::new();
    let mut claim_first_invoke: HashMap<String, u64> = HashMap::new();
    for o in &ops {
        if o.f == "claim" {
            if let Some(id) = &o.invoke.claim_id {
                let e = claim_first_invoke.entry(id.clone()).or_insert(o.invoke.t);
                *e = (*e).min(o.invoke.t);
            }
        }
    }
    for o in &ops {
        match o.f.as_str() {
            "once" => {
                if let (Some(n), Some(t)) =
                    (o.note("acquired"), o.note("acquired").and_then(|n| n.token))
                {
                    issues.push(Issue {
                        key: o.key.clone(),
                        token: t,
                        by: o.id.clone(),
                        invoke: o.invoke.t,
                        ack: n.t,
                    });
                }
            }
            "claim" => {
                if let (Some(end), Some("acquired")) = (o.ok(), o.ok_outcome()) {
                    let id = o.invoke.claim_id.clone().unwrap_or_else(|| o.id.clone());
                    issues.push(Issue {
                        key: o.key.clone(),
                        token: end.token.unwrap_or(0),
                        invoke: claim_first_invoke.get(&id).copied().unwrap_or(o.invoke.t),
                        by: id,
                        ack: end.t,
                    });
                }
            }
            "reconcile" => {
                if let Some(end) = o.ok() {
                    issues.push(Issue {
                        key: o.key.clone(),
                        token: end.new_token.unwrap_or(0),
                        by: o.id.clone(),
                        invoke: o.invoke.t,
                        ack: end.t,
                    });
                }
            }
            _ => {}
        }
    }
    let mut issues_by_key: BTreeMap<&str, Vec<&Issue>> = BTreeMap::new();
    for i in &issues {
        issues_by_key.entry(i.key.as_str()).or_default().push(i);
    }
    let db_rows: HashMap<&str, &DbExecution> = executions
        .iter()
        .filter(|e| e.namespace == ns)
        .map(|e| (e.key.as_str(), e))
        .collect();

    let mut invariants = vec![
        tokens_increase(run, &issues_by_key, &events, &db_rows),
        sink_monotonic(sink),
        no_superseded_ack(run, &ops, &issues_by_key),
        one_result(run, &ops, executions, ns),
        durable(run, &ops, &issues, &events, &db_rows),
        stored_result_not_stale(sink, &db_rows),
        recovered(run, &db_rows),
        claim_ids(run, &ops),
        no_panics(run, server_logs),
    ];
    for i in &mut invariants {
        i.passed = i.violations == 0;
    }
    Report {
        passed: invariants.iter().all(|i| i.passed),
        invariants,
        stats,
    }
}

fn tokens_increase(
    run: &RunInfo,
    issues_by_key: &BTreeMap<&str, Vec<&Issue>>,
    events: &[&DbEvent],
    db_rows: &HashMap<&str, &DbExecution>,
) -> Invariant {
    let mut inv = Invariant::new("tokens-strictly-increase");
    for (key, list) in issues_by_key {
        inv.count("acknowledged-issues", list.len() as u64);
        // One token, one holder.
        let mut by_token: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
        for i in list {
            by_token.entry(i.token).or_default().insert(i.by.as_str());
        }
        for (t, who) in &by_token {
            if who.len() > 1 {
                inv.violation(format!(
                    "key {key}: token {t} was handed to {} holders: {who:?}",
                    who.len()
                ));
            }
        }
        // Real-time order: acknowledged before invoked means a smaller token.
        for a in list {
            for b in list {
                if a.by != b.by && a.ack < b.invoke && a.token >= b.token {
                    inv.violation(format!(
                        "key {key}: token {} (acked {} by {}) then token {} (invoked {} by {})",
                        a.token,
                        fmt_t(run, a.ack),
                        a.by,
                        b.token,
                        fmt_t(run, b.invoke),
                        b.by
                    ));
                }
            }
        }
        // The database ends at or above every token it acknowledged.
        let max = list.iter().map(|i| i.token).max().unwrap_or(0);
        if let Some(row) = db_rows.get(key) {
            if (row.token as u64) < max {
                inv.violation(format!(
                    "key {key}: final token {} is below the acknowledged token {max}",
                    row.token
                ));
            }
        }
    }
    // The history table, per key in commit order: grants strictly increase, nothing goes back.
    let mut last: HashMap<&str, (i64, i64)> = HashMap::new();
    for e in events {
        inv.count("db-events", 1);
        let grant = is_grant(e);
        let (last_any, last_grant) = last.get(e.key.as_str()).copied().unwrap_or((0, 0));
        if e.token < last_any {
            inv.violation(format!(
                "key {}: db event {} ({}) has token {} after token {last_any}",
                e.key, e.id, e.reason, e.token
            ));
        }
        if grant && e.token <= last_grant {
            inv.violation(format!(
                "key {}: db event {} ({}) grants token {} again (last grant {last_grant})",
                e.key, e.id, e.reason, e.token
            ));
        }
        let g = if grant { e.token } else { last_grant };
        last.insert(e.key.as_str(), (last_any.max(e.token), g));
    }
    inv.done()
}

/// An event that hands out a token: a claim of any kind or a reconcile.
fn is_grant(e: &DbEvent) -> bool {
    e.to_state == RUNNING || e.reason.contains("reconcile")
}

fn sink_monotonic(sink: &[SinkEntry]) -> Invariant {
    let mut inv = Invariant::new("sink-never-accepted-a-lower-token");
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for e in sink {
        let h = highest.entry(e.key.as_str()).or_insert(0);
        if e.accepted {
            inv.count("accepted", 1);
            if e.token < *h {
                inv.violation(format!(
                    "key {}: accepted token {} after token {}",
                    e.key, e.token, h
                ));
            }
            *h = (*h).max(e.token);
        } else {
            inv.count("rejected-stale", 1);
            if e.token >= *h {
                inv.violation(format!(
                    "key {}: rejected token {} although the highest was {}",
                    e.key, e.token, h
                ));
            }
        }
    }
    inv.done()
}

/// Completes acknowledged under a token, with when they were invoked and acknowledged.
fn acked_completes(ops: &[OpView]) -> Vec<Ack> {
    let mut out = Vec::new();
    for o in ops {
        match (o.f.as_str(), o.ok()) {
            ("once", Some(end)) => {
                let outcome = end.outcome.as_deref().unwrap_or("");
                if matches!(outcome, "completed" | "reported" | "failed" | "released") {
                    // The complete carried the lease's token; what the server answered is
                    // checked against it separately.
                    let lease_token = o.note("acquired").and_then(|n| n.token);
                    let start = o.note("work_end").or(o.note("acquired"));
                    if let (Some(s), Some(t)) = (start, lease_token) {
                        out.push(Ack {
                            key: o.key.clone(),
                            token: t,
                            invoke: s.t,
                            ack: end.t,
                            answered: end.token,
                            what: format!("complete ({outcome}) by {}", o.id),
                        });
                    }
                }
            }
            ("complete", Some(end)) => out.push(Ack {
                key: o.key.clone(),
                token: o.invoke.token.unwrap_or(0),
                invoke: o.invoke.t,
                ack: end.t,
                answered: end.new_token,
                what: format!("complete by {}", o.id),
            }),
            _ => {}
        }
    }
    out
}

fn no_superseded_ack(
    run: &RunInfo,
    ops: &[OpView],
    issues_by_key: &BTreeMap<&str, Vec<&Issue>>,
) -> Invariant {
    let mut inv = Invariant::new("no-superseded-token-acknowledged");
    let superseded_before = |key: &str, token: u64, t: u64| -> Option<&Issue> {
        issues_by_key
            .get(key)?
            .iter()
            .copied()
            .filter(|i| i.token > token && i.ack < t)
            .min_by_key(|i| i.ack)
    };
    let completes = acked_completes(ops);
    for c in &completes {
        inv.count("completes-acknowledged", 1);
        if c.answered.is_some_and(|a| a != c.token) {
            inv.violation(format!(
                "key {}: {} under token {} was acknowledged as stored under token {:?}",
                c.key, c.what, c.token, c.answered
            ));
        }
        if let Some(i) = superseded_before(&c.key, c.token, c.invoke) {
            inv.violation(format!(
                "key {}: {} under token {} invoked {} acknowledged {}, but token {} was acknowledged at {} ({})",
                c.key, c.what, c.token, fmt_t(run, c.invoke), fmt_t(run, c.ack), i.token, fmt_t(run, i.ack), i.by
            ));
        }
    }
    let mut resolved: HashMap<(&str, u64), u64> = HashMap::new();
    for c in &completes {
        let e = resolved.entry((c.key.as_str(), c.token)).or_insert(c.ack);
        *e = (*e).min(c.ack);
    }
    for o in ops {
        let Some(end) = o.ok() else { continue };
        match o.f.as_str() {
            "heartbeat" => {
                let token = o.invoke.token.unwrap_or(0);
                if end.outcome.as_deref() != Some("alive") {
                    inv.count("heartbeats-lost", 1);
                    continue;
                }
                inv.count("heartbeats-alive", 1);
                if let Some(i) = superseded_before(&o.key, token, o.invoke.t) {
                    inv.violation(format!(
                        "key {}: heartbeat ALIVE for token {token} invoked {} by {}, but token {} was acknowledged at {} ({})",
                        o.key, fmt_t(run, o.invoke.t), o.id, i.token, fmt_t(run, i.ack), i.by
                    ));
                }
                if let Some(&at) = resolved.get(&(o.key.as_str(), token)) {
                    if at < o.invoke.t {
                        inv.violation(format!(
                            "key {}: heartbeat ALIVE for token {token} invoked {} by {}, after its completion was acknowledged at {}",
                            o.key, fmt_t(run, o.invoke.t), o.id, fmt_t(run, at)
                        ));
                    }
                }
            }
            "reconcile" => {
                let token = o.invoke.token.unwrap_or(0);
                inv.count("reconciles-acknowledged", 1);
                if let Some(i) = superseded_before(&o.key, token, o.invoke.t) {
                    inv.violation(format!(
                        "key {}: reconcile expecting token {token} invoked {} by {} was applied, but token {} was acknowledged at {} ({})",
                        o.key, fmt_t(run, o.invoke.t), o.id, i.token, fmt_t(run, i.ack), i.by
                    ));
                }
            }
            _ => {}
        }
    }
    // A complete under a superseded token is rejected, and rejected as FENCED: any other
    // answer means the server judged it against a record it should not have touched.
    for o in ops {
        let Some(e) = o.end.as_ref().filter(|e| e.phase == Some(Phase::Fail)) else {
            continue;
        };
        let outcome = e.outcome.as_deref().unwrap_or("");
        if outcome == "fenced" {
            inv.count("fenced-rejections", 1);
            continue;
        }
        // Retention may have deleted the superseding life too: NOT_FOUND is then right.
        if short_retention(&o.key) {
            continue;
        }
        let (token, invoke) = match o.f.as_str() {
            "once" => match (o.note("acquired"), o.note("work_end")) {
                (Some(a), Some(w)) => (a.token.unwrap_or(0), w.t),
                _ => continue,
            },
            "complete" => (o.invoke.token.unwrap_or(0), o.invoke.t),
            _ => continue,
        };
        if let Some(i) = superseded_before(&o.key, token, invoke) {
            inv.violation(format!(
                "key {}: complete by {} under token {token} superseded by token {} ({}) was rejected as {outcome:?}, not FENCED",
                o.key, o.id, i.token, i.by
            ));
        }
    }
    inv.done()
}

/// Every response a caller was given as the stored result of a key.
fn observed_results(ops: &[OpView]) -> Vec<(&str, Vec<u8>, String)> {
    let mut out = Vec::new();
    for o in ops {
        let Some(end) = o.ok() else { continue };
        let outcome = end.outcome.as_deref().unwrap_or("");
        let bytes = match (o.f.as_str(), outcome) {
            ("once", "completed" | "replayed") | ("claim", "replayed") => end.response.as_deref(),
            ("complete", "completed") | ("reconcile", "completed") => o.invoke.response.as_deref(),
            _ => None,
        };
        if let Some(b) = bytes.and_then(unhex) {
            out.push((o.key.as_str(), b, format!("{} {outcome} by {}", o.f, o.id)));
        }
    }
    out
}

fn one_result(run: &RunInfo, ops: &[OpView], executions: &[DbExecution], ns: &str) -> Invariant {
    let _ = run;
    let mut inv = Invariant::new("one-result-per-key-replays-identical");
    let mut rows: HashMap<&str, u64> = HashMap::new();
    for e in executions.iter().filter(|e| e.namespace == ns) {
        *rows.entry(e.key.as_str()).or_default() += 1;
    }
    for (k, n) in &rows {
        if *n > 1 {
            inv.violation(format!("key {k}: {n} rows in executions"));
        }
    }
    let mut by_key: BTreeMap<&str, Vec<(Vec<u8>, String)>> = BTreeMap::new();
    for (k, b, who) in observed_results(ops) {
        if short_retention(k) {
            continue;
        }
        inv.count("results-observed", 1);
        by_key.entry(k).or_default().push((b, who));
    }
    for (k, list) in &by_key {
        let first = &list[0];
        if let Some(other) = list.iter().find(|(b, _)| *b != first.0) {
            inv.violation(format!(
                "key {k}: {:?} ({}) but also {:?} ({})",
                String::from_utf8_lossy(&first.0),
                first.1,
                String::from_utf8_lossy(&other.0),
                other.1
            ));
        }
    }
    inv.done()
}

fn durable(
    run: &RunInfo,
    ops: &[OpView],
    issues: &[Issue],
    events: &[&DbEvent],
    db_rows: &HashMap<&str, &DbExecution>,
) -> Invariant {
    let mut inv = Invariant::new("acknowledged-writes-survive-restarts");
    for (key, bytes, who) in observed_results(ops) {
        // Replays are checked by one-result; here, what was acknowledged as written.
        if who.starts_with("once replayed")
            || who.starts_with("claim replayed")
            || short_retention(key)
        {
            continue;
        }
        inv.count("completions-acknowledged", 1);
        match db_rows.get(key) {
            Some(row)
                if row.state == COMPLETED
                    && row.response.as_deref().and_then(unhex).as_deref() == Some(&bytes[..]) => {}
            Some(row) => inv.violation(format!(
                "key {key}: {who} acknowledged {:?}, but the database has state {} response {:?}",
                String::from_utf8_lossy(&bytes),
                row.state,
                row.response
                    .as_deref()
                    .and_then(unhex)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            )),
            None => inv.violation(format!(
                "key {key}: {who} acknowledged a completion, but the key is not in the database"
            )),
        }
    }
    // Every acknowledged token is in the history table: it was durable before anyone saw it.
    let granted: BTreeSet<(&str, i64)> = events
        .iter()
        .filter(|e| is_grant(e))
        .map(|e| (e.key.as_str(), e.token))
        .collect();
    for i in issues.iter().filter(|i| !short_retention(&i.key)) {
        inv.count("tokens-acknowledged", 1);
        if !granted.contains(&(i.key.as_str(), i.token as i64)) {
            inv.violation(format!(
                "key {}: token {} acknowledged at {} ({}) is not in the history table",
                i.key,
                i.token,
                fmt_t(run, i.ack),
                i.by
            ));
        }
    }
    inv.done()
}

fn stored_result_not_stale(sink: &[SinkEntry], db_rows: &HashMap<&str, &DbExecution>) -> Invariant {
    let mut inv = Invariant::new("stored-result-not-older-than-side-effects");
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for e in sink.iter().filter(|e| e.accepted) {
        let h = highest.entry(e.key.as_str()).or_insert(0);
        *h = (*h).max(e.token);
    }
    for (key, row) in db_rows {
        if row.state != COMPLETED {
            continue;
        }
        let Some(bytes) = row.response.as_deref().and_then(unhex) else {
            continue;
        };
        let Some(t) = response_token(&bytes) else {
            continue;
        };
        inv.count("results-checked", 1);
        if let Some(&h) = highest.get(key) {
            if h > t {
                inv.violation(format!(
                    "key {key}: the stored result {:?} was produced under token {t}, but the sink accepted token {h}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
        }
    }
    inv.done()
}

fn recovered(run: &RunInfo, db_rows: &HashMap<&str, &DbExecution>) -> Invariant {
    let mut inv = Invariant::new("every-key-completed-after-healing");
    inv.count("keys", run.keys.len() as u64);
    inv.count(
        "max-recovery-ms",
        run.recovery_ms.values().copied().max().unwrap_or(0),
    );
    for k in &run.unresolved {
        inv.violation(format!(
            "key {k}: no stored result within {:?} of healing",
            crate::run::RECOVERY_BOUND
        ));
    }
    for k in &run.keys {
        match db_rows.get(k.as_str()) {
            Some(r) if r.state == COMPLETED => {}
            Some(r) => inv.violation(format!("key {k}: state {} after the final phase", r.state)),
            None => inv.violation(format!("key {k}: absent after the final phase")),
        }
    }
    inv.done()
}

fn claim_ids(run: &RunInfo, ops: &[OpView]) -> Invariant {
    let mut inv = Invariant::new("claim-retries-resolve-to-one-outcome");
    // Claims by hand hold a lease of 4 x lease_ms (worker::op_manual): within it, every reply
    // to the same claim id must be the same ACQUIRED.
    let window = run.lease_ms * 4 * 1_000_000;
    let mut by_id: BTreeMap<&str, Vec<&OpView>> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.f == "claim") {
        if let Some(id) = o.invoke.claim_id.as_deref() {
            by_id.entry(id).or_default().push(o);
        }
    }
    for (id, list) in &by_id {
        let first_invoke = list.iter().map(|o| o.invoke.t).min().unwrap_or(0);
        let acquired: Vec<&OpView> = list
            .iter()
            .copied()
            .filter(|o| o.ok_outcome() == Some("acquired"))
            .collect();
        let Some(first) = acquired.first() else {
            continue;
        };
        let replies = list.iter().filter(|o| o.ok().is_some()).count() as u64;
        if replies > 1 {
            inv.count("claim-ids-answered-more-than-once", 1);
        }
        let token = first.ok().and_then(|e| e.token);
        for o in list {
            let Some(end) = o.ok() else { continue };
            if end.t >= first_invoke + window {
                continue;
            }
            let same = end.outcome.as_deref() == Some("acquired") && end.token == token;
            if !same {
                inv.violation(format!(
                    "claim id {id} on key {}: ACQUIRED token {token:?}, but {} answered {:?} token {:?} at {}",
                    o.key,
                    o.id,
                    end.outcome,
                    end.token,
                    fmt_t(run, end.t)
                ));
            }
        }
    }
    inv.count("claim-ids", by_id.len() as u64);
    // `once` retries its claim with one claim id and names a holder of its own: a live lease
    // held by that holder is its own, and must have been answered ACQUIRED.
    for o in ops.iter().filter(|o| o.f == "once") {
        let Some(end) = o.ok() else { continue };
        if end.outcome.as_deref() == Some("in_progress")
            && o.invoke.holder.is_some()
            && end.detail == o.invoke.holder
        {
            inv.violation(format!(
                "key {}: {} was told IN_PROGRESS by its own holder {:?}: its retried claim was not recognized",
                o.key,
                o.id,
                end.detail.as_deref().unwrap_or("")
            ));
        }
    }
    inv.done()
}

fn no_panics(run: &RunInfo, server_logs: &[(String, String)]) -> Invariant {
    let mut inv = Invariant::new("no-server-panics-or-crashes");
    inv.count("server-logs", server_logs.len() as u64);
    for (name, text) in server_logs {
        for line in text.lines().filter(|l| l.contains("panicked")) {
            inv.violation(format!("{name}: {line}"));
        }
    }
    for e in &run.unexpected_exits {
        inv.violation(e.clone());
    }
    inv.done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::hex;

    fn rec(t: u64, p: &str, op: u64, f: &str, phase: Phase, key: &str) -> Rec {
        Rec {
            t,
            p: p.into(),
            op,
            f: f.into(),
            phase: Some(phase),
            key: key.into(),
            ..Rec::default()
        }
    }

    fn run_info() -> RunInfo {
        RunInfo {
            namespace: "ns".into(),
            lease_ms: 1000,
            ..RunInfo::default()
        }
    }

    fn event(id: i64, key: &str, token: i64, to: i16, reason: &str) -> DbEvent {
        DbEvent {
            id,
            namespace: "ns".into(),
            key: key.into(),
            token,
            from_state: 0,
            to_state: to,
            reason: reason.into(),
            actor: "x".into(),
        }
    }

    fn row(key: &str, state: i16, token: i64, response: &[u8]) -> DbExecution {
        DbExecution {
            namespace: "ns".into(),
            key: key.into(),
            state,
            token,
            attempt: 1,
            response: Some(hex(response)),
            error: None,
            holder: "x".into(),
            claim_id: "c".into(),
        }
    }

    /// A once that acquired `token` at t+1 and completed it at t+3.
    fn once_completed(t: u64, p: &str, key: &str, token: u64, resp: &[u8]) -> Vec<Rec> {
        vec![
            rec(t, p, 1, "once", Phase::Invoke, key),
            rec(t + 1, p, 1, "once", Phase::Note, key)
                .outcome("acquired")
                .token(token),
            rec(t + 2, p, 1, "once", Phase::Note, key)
                .outcome("work_end")
                .token(token),
            rec(t + 3, p, 1, "once", Phase::Ok, key)
                .outcome("completed")
                .token(token)
                .response(resp),
        ]
    }

    #[test]
    fn a_clean_history_passes() {
        let mut recs = once_completed(10, "a", "k", 1, b"w:k:1:a");
        recs.extend(vec![
            rec(20, "b", 1, "once", Phase::Invoke, "k"),
            rec(21, "b", 1, "once", Phase::Ok, "k")
                .outcome("replayed")
                .token(1)
                .response(b"w:k:1:a"),
        ]);
        let sink = vec![SinkEntry {
            t: 11,
            key: "k".into(),
            token: 1,
            payload: "w:k:1:a".into(),
            accepted: true,
            highest_before: 0,
        }];
        let mut run = run_info();
        run.keys = vec!["k".into()];
        let r = judge(
            &run,
            recs,
            &sink,
            &[row("k", COMPLETED, 1, b"w:k:1:a")],
            &[
                event(1, "k", 1, RUNNING, "claim"),
                event(2, "k", 1, COMPLETED, "complete"),
            ],
            &[],
        );
        assert!(r.passed, "{}", r.render());
    }

    #[test]
    fn a_stale_complete_after_a_takeover_is_a_violation() {
        // a acquires 1; b takes over with 2 (acked at 31); a's complete of 1 is invoked at
        // 40 and acknowledged.
        let mut recs = vec![
            rec(10, "a", 1, "once", Phase::Invoke, "k"),
            rec(11, "a", 1, "once", Phase::Note, "k")
                .outcome("acquired")
                .token(1),
            rec(40, "a", 1, "once", Phase::Note, "k")
                .outcome("work_end")
                .token(1),
            rec(41, "a", 1, "once", Phase::Ok, "k")
                .outcome("completed")
                .token(1)
                .response(b"w:k:1:a"),
        ];
        recs.extend(once_completed(30, "b", "k", 2, b"w:k:2:b"));
        let mut run = run_info();
        run.keys = vec!["k".into()];
        let r = judge(
            &run,
            recs,
            &[],
            &[row("k", COMPLETED, 2, b"w:k:1:a")],
            &[
                event(1, "k", 1, RUNNING, "claim"),
                event(2, "k", 2, RUNNING, "takeover"),
            ],
            &[],
        );
        assert!(!r.passed);
        assert!(
            !r.invariant("no-superseded-token-acknowledged")
                .unwrap()
                .passed,
            "{}",
            r.render()
        );
        assert!(
            !r.invariant("one-result-per-key-replays-identical")
                .unwrap()
                .passed
        );
    }

    #[test]
    fn a_lost_acknowledged_completion_is_a_violation() {
        let recs = once_completed(10, "a", "k", 1, b"w:k:1:a");
        let mut run = run_info();
        run.keys = vec!["k".into()];
        // The database lost the claim and the completion; the final phase re-ran it.
        let r = judge(
            &run,
            recs,
            &[],
            &[row("k", COMPLETED, 1, b"f:k:1")],
            &[event(1, "k", 1, RUNNING, "claim")],
            &[],
        );
        assert!(
            !r.invariant("acknowledged-writes-survive-restarts")
                .unwrap()
                .passed,
            "{}",
            r.render()
        );
    }

    #[test]
    fn a_token_handed_out_twice_is_a_violation() {
        let mut recs = once_completed(10, "a", "k", 1, b"w:k:1:a");
        recs.extend(vec![
            rec(20, "b", 1, "once", Phase::Invoke, "k"),
            rec(21, "b", 1, "once", Phase::Note, "k")
                .outcome("acquired")
                .token(1),
        ]);
        let run = run_info();
        let r = judge(&run, recs, &[], &[], &[], &[]);
        assert!(
            !r.invariant("tokens-strictly-increase").unwrap().passed,
            "{}",
            r.render()
        );
    }

    #[test]
    fn the_sink_log_is_checked() {
        let e = |t, token, accepted| SinkEntry {
            t,
            key: "k".into(),
            token,
            payload: String::new(),
            accepted,
            highest_before: 0,
        };
        assert!(sink_monotonic(&[e(1, 2, true), e(2, 1, false), e(3, 3, true)]).passed);
        assert!(!sink_monotonic(&[e(1, 2, true), e(2, 1, true)]).passed);
    }

    #[test]
    fn a_claim_id_answered_differently_within_its_lease_is_a_violation() {
        let c = |t, op, phase, outcome: Option<(&str, u64)>| {
            let r = rec(t, "a", op, "claim", phase, "m").claim_id("c1");
            match outcome {
                Some((o, tok)) => r.outcome(o).token(tok),
                None => r,
            }
        };
        let recs = vec![
            c(10, 1, Phase::Invoke, None),
            c(11, 1, Phase::Ok, Some(("acquired", 5))),
            c(12, 2, Phase::Invoke, None),
            c(13, 2, Phase::Ok, Some(("in_progress", 0))),
        ];
        let r = judge(&run_info(), recs, &[], &[], &[], &[]);
        assert!(
            !r.invariant("claim-retries-resolve-to-one-outcome")
                .unwrap()
                .passed,
            "{}",
            r.render()
        );
    }

    #[test]
    fn panics_in_server_logs_are_found() {
        let logs = vec![(
            "server-a.1.log".to_owned(),
            "thread 'tokio' panicked at src/x.rs".to_owned(),
        )];
        assert!(!no_panics(&run_info(), &logs).passed);
    }

    #[test]
    fn response_tokens_parse() {
        assert_eq!(response_token(b"w:k1:7:w0.0:1:2"), Some(7));
        assert_eq!(response_token(b"r:k1:7:w0.0"), Some(8));
        assert_eq!(response_token(b"f:k1:9"), Some(9));
        assert_eq!(response_token(b"junk"), None);
    }
}
