//! PostgreSQL persistence: one method per operation, each taking a whole batch.
//!
//! Every operation that changes a record runs in one transaction that
//! 1. locks the batch's records in primary-key order (`FOR UPDATE`), then reads the database
//!    clock, so that time spent waiting for a lock cannot make an expired lease look live;
//! 2. lets `core` decide each item against the locked record and that clock;
//! 3. writes new records, fenced updates (`WHERE token = expected`, checked by rows affected)
//!    and history events, one statement per kind for the whole batch;
//! 4. commits, with synchronous commit on, before anyone is answered.
//!
//! A batch that names the same key twice is decided in rounds inside the transaction, each
//! round seeing the writes of the previous one, so duplicates behave exactly as if they had
//! arrived one after the other. Heartbeats need no transaction: one fenced `UPDATE` renews
//! the whole batch (`sql::HEARTBEAT`).

mod migrate;
mod rows;
pub mod sql;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::core::{
    self, ClaimDecision, ClaimOutcome, ClaimRequest, CompleteRequest, CompleteResult, ExecKey,
    ExecutionView, HeartbeatRequest, HeartbeatResult, HistoryEvent, Key, ListRequest,
    ReconcileRequest, ReconcileResult, Rejection, Timestamp, Token,
};
use crate::error::{Error, Result};
use crate::telemetry::metrics::timed;
pub use migrate::{migrate, MIGRATIONS};
use rows::{
    history_from_row, input_position, record_from_row, token_param, EventColumns, RecordColumns,
};

/// A token that this store bumped, so that whoever held the old one is now fenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superseded {
    pub key: ExecKey,
    pub token: Token,
}

/// Results of a batch: one per request, in request order, plus the tokens it superseded.
pub struct BatchResult<T> {
    pub items: Vec<Result<T, Rejection>>,
    pub superseded: Vec<Superseded>,
}

/// Counts of one sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub expired: u64,
    pub deleted: u64,
    /// False when another replica held the sweep lock.
    pub ran: bool,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// The sweeper's position in its walk over the table (see `sql::SWEEP_SLICE`).
    sweep_cursor: std::sync::Arc<std::sync::Mutex<(String, String)>>,
}

/// How many times a batch is retried after a deadlock or serialization failure.
const CONFLICT_RETRIES: usize = 5;

impl Store {
    /// Creates the pool. Connections are opened lazily; see [`Store::check`].
    pub fn connect(database_url: &str, pool_size: usize) -> Result<Store> {
        let mut config = tokio_postgres::Config::from_str(database_url)
            .map_err(|e| Error::DatabaseUnavailable(format!("invalid database URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("sentinel");
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5));
        // Every statement takes arrays of a batch's rows, so a custom plan per call buys
        // nothing and its planning costs a large share of the database's CPU: each prepared
        // statement gets one generic plan. A generic plan made while the table is small must
        // still be right when it is large, so the planner is kept to the plan that is right
        // at every size, primary-key lookups in a nested loop over the batch, by ruling out
        // sequential scans and hash or merge joins where an index path exists.
        let mut options = String::from(
            "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
             -c enable_hashjoin=off -c enable_mergejoin=off",
        );
        // Nothing is acknowledged before it is durable, whatever the database's default: a
        // server configured with synchronous_commit=off would lose acknowledged tokens and
        // completions in a crash.
        options.push_str(" -c synchronous_commit=on");
        // A replica that froze or lost its network mid-transaction must not hold row locks
        // (and so stall every other replica's batches) for long: its session is ended after
        // a short idle time in a transaction and dead peers are found by keepalives; a batch
        // that waits for a lock too long fails as retryable instead of hanging its callers.
        options.push_str(
            " -c lock_timeout=2s -c idle_in_transaction_session_timeout=10s \
             -c statement_timeout=30s -c tcp_keepalives_idle=10 \
             -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
        );
        if negative_control("async-commit") {
            tracing::error!(
                "NEGATIVE CONTROL async-commit: commits are acknowledged before they are durable"
            );
            options.push_str(" -c synchronous_commit=off");
        }
        // Options in the URL come last, so an operator can override any of these (e.g.
        // synchronous_commit=remote_apply).
        if let Some(from_url) = config.get_options() {
            options.push(' ');
            options.push_str(from_url);
        }
        config.options(&options);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| Error::Internal(format!("building the connection pool: {e}")))?;
        Ok(Store {
            pool,
            sweep_cursor: Default::default(),
        })
    }

    /// Opens one connection and applies pending migrations.
    pub async fn migrate(&self) -> Result<Vec<i32>> {
        let mut client = self.client().await?;
        migrate(&mut client).await
    }

    /// Current pool usage: (size, available).
    pub fn pool_status(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size, s.available)
    }

    pub fn close(&self) {
        self.pool.close();
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::DatabaseUnavailable(format!("no database connection: {e}")))
    }

    /// Claims a batch.
    pub async fn claim(&self, reqs: &[ClaimRequest]) -> Result<BatchResult<ClaimOutcome>> {
        timed(
            "claim",
            reqs.len(),
            retry_conflicts(|| self.claim_once(reqs)),
        )
        .await
    }

    /// A claim batch in two phases. First an unlocked read answers every claim that writes
    /// nothing (a replay, IN_PROGRESS, UNCERTAIN, a rejection): deciding against a committed
    /// snapshot is the same as running just before whatever commits next, and such claims
    /// cost no transaction, no lock and no WAL. Then one transaction inserts the new records
    /// (the insert itself is the lock: a concurrent creator makes it skip the row) and
    /// decides everything else under row locks, in rounds.
    async fn claim_once(&self, reqs: &[ClaimRequest]) -> Result<BatchResult<ClaimOutcome>> {
        let mut items: Vec<Option<Result<ClaimOutcome, Rejection>>> = vec![None; reqs.len()];
        let (now0, seen) = self.read_records(reqs.iter().map(|r| &r.key)).await?;
        let mut writing: HashSet<&ExecKey> = HashSet::new();
        let mut precreate = Vec::new();
        let mut pending = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            // After a write to this key in the batch, later claims of it are decided under
            // the lock, against that write.
            if writing.contains(&req.key) {
                pending.push(i);
                continue;
            }
            match core::decide_claim(req, seen.get(&req.key), now0) {
                ClaimDecision::Reply(outcome) => items[i] = Some(Ok(outcome)),
                ClaimDecision::Reject(r) => items[i] = Some(Err(r)),
                ClaimDecision::Create { record, .. } => {
                    writing.insert(&req.key);
                    precreate.push((i, record));
                }
                ClaimDecision::Acquire(_) => {
                    writing.insert(&req.key);
                    pending.push(i);
                }
            }
        }
        if precreate.is_empty() && pending.is_empty() {
            return Ok(BatchResult {
                items: items
                    .into_iter()
                    .map(|r| r.expect("every item decided"))
                    .collect(),
                superseded: Vec::new(),
            });
        }

        let mut client = self.client().await?;
        // New keys are inserted by one statement that commits on its own: the insert is
        // its own lock (a key created by someone else since the read is skipped, and decided
        // under the lock below).
        let mut created = false;
        if !precreate.is_empty() {
            precreate.sort_by(|a, b| reqs[a.0].key.cmp(&reqs[b.0].key));
            let tokens = insert_records(
                &client,
                precreate.iter().map(|(i, r)| (&reqs[*i].key, r)),
                classify_autocommit,
            )
            .await?;
            for (i, mut record) in precreate {
                match tokens.get(&reqs[i].key) {
                    Some(&token) => {
                        record.token = token;
                        created = true;
                        items[i] = Some(Ok(core::acquired_outcome(&record, now0)));
                    }
                    None => pending.push(i),
                }
            }
        }
        let mut superseded = Vec::new();
        if !pending.is_empty() {
            superseded = Self::claim_locked(&mut client, reqs, pending, &mut items)
                .await
                // The new keys are committed (a retry with the same claim id gets the same
                // token).
                .map_err(|e| if created { after_partial_commit(e) } else { e })?;
        }
        Ok(BatchResult {
            items: items
                .into_iter()
                .map(|r| r.expect("every item decided"))
                .collect(),
            superseded,
        })
    }

    /// Decides claims that may write to an existing record, under row locks, in rounds.
    async fn claim_locked(
        client: &mut deadpool_postgres::Object,
        reqs: &[ClaimRequest],
        mut pending: Vec<usize>,
        items: &mut [Option<Result<ClaimOutcome, Rejection>>],
    ) -> Result<Vec<Superseded>> {
        let tx = client.transaction().await.map_err(classify)?;
        let mut superseded = Vec::new();
        let mut events = EventColumns::default();
        pending.sort_unstable();

        while !pending.is_empty() {
            let (round, mut rest) = split_round(&pending, |i| &reqs[i].key);
            let (now, records) = lock_records(&tx, round.iter().map(|&i| &reqs[i].key)).await?;
            let mut creates = Vec::new();
            let mut updates = RecordColumns::default();
            for &i in &round {
                let req = &reqs[i];
                match core::decide_claim(req, records.get(&req.key), now) {
                    ClaimDecision::Create { record, event } => creates.push((i, record, event)),
                    ClaimDecision::Acquire(w) => {
                        updates.push(&req.key, &w.record, w.expected_token);
                        events.push(&w.event);
                        if w.event.reason == "takeover" {
                            superseded.push(Superseded {
                                key: req.key.clone(),
                                token: w.record.token,
                            });
                        }
                        items[i] = Some(Ok(core::acquired_outcome(&w.record, now)));
                    }
                    ClaimDecision::Reply(outcome) => items[i] = Some(Ok(outcome)),
                    ClaimDecision::Reject(r) => items[i] = Some(Err(r)),
                }
            }
            // The writes of a round are independent statements: send them in one pipeline.
            let (tokens, (), ()) = futures::try_join!(
                insert_records(
                    &tx,
                    creates.iter().map(|(i, r, _)| (&reqs[*i].key, r)),
                    classify
                ),
                write_updates(&tx, &updates),
                insert_events(&tx, &events)
            )?;
            events = EventColumns::default();
            for (i, mut record, _) in creates {
                match tokens.get(&reqs[i].key) {
                    Some(&token) => {
                        record.token = token;
                        items[i] = Some(Ok(core::acquired_outcome(&record, now)));
                    }
                    // Another transaction created it first: decide again next round,
                    // against the record it committed.
                    None => rest.push(i),
                }
            }
            rest.sort_unstable();
            pending = rest;
        }
        commit(tx).await?;
        Ok(superseded)
    }

    /// Reads the records of a batch and the database clock, without a transaction.
    async fn read_records<'a>(
        &self,
        keys: impl Iterator<Item = &'a ExecKey>,
    ) -> Result<(Timestamp, HashMap<ExecKey, core::Record>)> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::READ_RECORDS)
            .await
            .map_err(classify)?;
        let clock = client.prepare_cached(sql::CLOCK).await.map_err(classify)?;
        // The clock is read first, in the same pipeline: decisions then use a time at or
        // before the snapshot, so a lease seen as expired was expired when the snapshot was
        // taken (and an expired lease is final), while a lease renewed just after the clock
        // reading can only look more alive, never expired.
        fetch_records(&**client, &stmt, &clock, ClockAt::Before, keys).await
    }

    /// Completes a batch. Completions of live leases, the common case, are written by one
    /// statement that commits on its own (`sql::COMPLETE_LIVE`); everything it leaves (a
    /// fenced token, a late completion, a repeat, a row that changed under it, a second
    /// completion of the same key in the batch) is decided under row locks in a transaction.
    pub async fn complete(&self, reqs: &[CompleteRequest]) -> Result<BatchResult<CompleteResult>> {
        timed("complete", reqs.len(), self.complete_inner(reqs)).await
    }

    async fn complete_inner(
        &self,
        reqs: &[CompleteRequest],
    ) -> Result<BatchResult<CompleteResult>> {
        let mut items: Vec<Option<Result<CompleteResult, Rejection>>> = vec![None; reqs.len()];
        let mut rest = Vec::new();
        if negative_control("skip-complete-fence") {
            rest.extend(0..reqs.len());
        } else {
            let mut seen = HashSet::with_capacity(reqs.len());
            let (first, dup): (Vec<usize>, Vec<usize>) =
                (0..reqs.len()).partition(|&i| seen.insert(&reqs[i].key));
            for (i, result) in self.complete_live(reqs, &first).await? {
                items[i] = Some(Ok(result));
            }
            rest.extend(first.into_iter().filter(|&i| items[i].is_none()));
            rest.extend(dup);
            rest.sort_unstable();
        }
        if !rest.is_empty() {
            let committed = rest.len() < reqs.len();
            // A retry of a completion already committed is a repeat.
            let decided = retry_conflicts(|| self.complete_locked(reqs, &rest))
                .await
                .map_err(|e| {
                    if committed {
                        after_partial_commit(e)
                    } else {
                        e
                    }
                })?;
            for (&i, item) in rest.iter().zip(decided) {
                items[i] = Some(item);
            }
        }
        Ok(BatchResult {
            items: items
                .into_iter()
                .map(|r| r.expect("every item decided"))
                .collect(),
            superseded: Vec::new(),
        })
    }

    /// The one-statement path for completions of live leases; returns the items it wrote.
    async fn complete_live(
        &self,
        reqs: &[CompleteRequest],
        which: &[usize],
    ) -> Result<Vec<(usize, CompleteResult)>> {
        let n = which.len();
        let mut namespaces = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut fingerprints = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut uncertain = Vec::with_capacity(n);
        let mut responses = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut retains = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut notes = Vec::with_capacity(n);
        let mut resolved = Vec::with_capacity(n);
        for &i in which {
            let req = &reqs[i];
            let effect = core::completion_effect(&req.outcome, false);
            resolved.push(effect.state);
            namespaces.push(req.key.namespace.as_str());
            keys.push(req.key.key.as_str());
            tokens.push(token_param(req.token));
            fingerprints.push(req.fingerprint.as_slice());
            states.push(effect.state.code());
            uncertain.push(effect.uncertain_reason.map_or(0, |u| u.code()));
            responses.push(effect.response);
            errors.push(effect.error);
            retains.push(effect.starts_retention);
            reasons.push(effect.reason);
            notes.push(effect.note);
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::COMPLETE_LIVE)
            .await
            .map_err(classify)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &namespaces,
                    &keys,
                    &tokens,
                    &fingerprints,
                    &states,
                    &uncertain,
                    &responses,
                    &errors,
                    &retains,
                    &reasons,
                    &notes,
                ],
            )
            .await
            .map_err(classify_autocommit)?;
        rows.iter()
            .map(|row| {
                let p = input_position(row, which.len(), "complete")?;
                let now: Timestamp = row.try_get(1).map_err(classify)?;
                let i = which[p];
                let result = CompleteResult {
                    state: resolved[p],
                    token: reqs[i].token,
                    late: false,
                    resolved_at: now,
                };
                Ok((i, result))
            })
            .collect()
    }

    /// Decides completions under row locks, in rounds when a key repeats; returns one result
    /// per item of `which`, in order.
    async fn complete_locked(
        &self,
        reqs: &[CompleteRequest],
        which: &[usize],
    ) -> Result<Vec<Result<CompleteResult, Rejection>>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(classify)?;
        let mut items: Vec<Option<Result<CompleteResult, Rejection>>> = vec![None; reqs.len()];
        let mut events = EventColumns::default();
        let mut pending: Vec<usize> = which.to_vec();
        while !pending.is_empty() {
            let (round, rest) = split_round(&pending, |i| &reqs[i].key);
            let (now, records) = lock_records(&tx, round.iter().map(|&i| &reqs[i].key)).await?;
            let mut updates = RecordColumns::default();
            for &i in &round {
                let mut req = &reqs[i];
                let unfenced;
                if negative_control("skip-complete-fence") {
                    if let Some(rec) = records.get(&req.key) {
                        unfenced = CompleteRequest {
                            token: rec.token,
                            ..req.clone()
                        };
                        req = &unfenced;
                    }
                }
                items[i] = Some(
                    match core::decide_complete(req, records.get(&req.key), now) {
                        Ok((result, write)) => {
                            if let Some(w) = write {
                                updates.push(&req.key, &w.record, w.expected_token);
                                events.push(&w.event);
                            }
                            Ok(result)
                        }
                        Err(r) => Err(r),
                    },
                );
            }
            futures::try_join!(write_updates(&tx, &updates), insert_events(&tx, &events))?;
            events = EventColumns::default();
            pending = rest;
        }
        commit(tx).await?;
        Ok(which
            .iter()
            .map(|&i| items[i].take().expect("every item decided"))
            .collect())
    }

    /// Reconciles one execution.
    pub async fn reconcile(&self, req: &ReconcileRequest) -> Result<BatchResult<ReconcileResult>> {
        timed("reconcile", 1, retry_conflicts(|| self.reconcile_once(req))).await
    }

    async fn reconcile_once(&self, req: &ReconcileRequest) -> Result<BatchResult<ReconcileResult>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(classify)?;
        let (now, records) = lock_records(&tx, std::iter::once(&req.key)).await?;
        let (item, superseded) = match core::decide_reconcile(req, records.get(&req.key), now) {
            Ok((result, w)) => {
                let mut updates = RecordColumns::default();
                updates.push(&req.key, &w.record, w.expected_token);
                write_updates(&tx, &updates).await?;
                let mut events = EventColumns::default();
                events.push(&w.event);
                insert_events(&tx, &events).await?;
                commit(tx).await?;
                let s = Superseded {
                    key: req.key.clone(),
                    token: result.token,
                };
                (Ok(result), vec![s])
            }
            Err(r) => (Err(r), Vec::new()),
        };
        Ok(BatchResult {
            items: vec![item],
            superseded,
        })
    }

    /// Renews a batch of leases in one statement.
    pub async fn heartbeat(&self, reqs: &[HeartbeatRequest]) -> Result<Vec<HeartbeatResult>> {
        timed(
            "heartbeat",
            reqs.len(),
            retry_conflicts(|| self.heartbeat_once(reqs)),
        )
        .await
    }

    async fn heartbeat_once(&self, reqs: &[HeartbeatRequest]) -> Result<Vec<HeartbeatResult>> {
        // The same lease may be beaten twice in one batch: renew it once, answer both.
        let mut unique: Vec<&HeartbeatRequest> = Vec::with_capacity(reqs.len());
        let mut position: HashMap<(&ExecKey, Token), usize> = HashMap::with_capacity(reqs.len());
        let slots: Vec<usize> = reqs
            .iter()
            .map(|r| {
                *position.entry((&r.key, r.token)).or_insert_with(|| {
                    unique.push(r);
                    unique.len() - 1
                })
            })
            .collect();
        let mut namespaces = Vec::with_capacity(unique.len());
        let mut keys = Vec::with_capacity(unique.len());
        let mut tokens = Vec::with_capacity(unique.len());
        for r in &unique {
            namespaces.push(r.key.namespace.as_str());
            keys.push(r.key.key.as_str());
            tokens.push(token_param(r.token));
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::HEARTBEAT)
            .await
            .map_err(classify)?;
        let rows = client
            .query(&stmt, &[&namespaces, &keys, &tokens])
            .await
            .map_err(classify)?;
        drop(client);
        let mut results: Vec<Option<HeartbeatResult>> = vec![None; unique.len()];
        for row in rows {
            let slot = input_position(&row, unique.len(), "heartbeat")?;
            let until: Timestamp = row.try_get(1).map_err(classify)?;
            let now: Timestamp = row.try_get(2).map_err(classify)?;
            results[slot] = Some(HeartbeatResult::Alive {
                lease_expires_at: until,
                ttl_remaining: (until - now).to_std().unwrap_or_default(),
            });
        }
        // Leases that were not renewed: read their records to say why.
        let lost: Vec<usize> = (0..unique.len())
            .filter(|&i| results[i].is_none())
            .collect();
        if !lost.is_empty() {
            let (now, records) = self
                .read_records(lost.iter().map(|&i| &unique[i].key))
                .await?;
            for i in lost {
                let req = unique[i];
                let record = records.get(&req.key);
                let Some(reason) = core::classify_lost(req.token, record, now) else {
                    results[i] = Some(HeartbeatResult::NotRenewed);
                    continue;
                };
                let detail = match record {
                    Some(r) if reason == core::LostReason::Fenced => {
                        format!("token {} is superseded by token {}", req.token, r.token)
                    }
                    Some(r) => format!("execution is {}", r.effective(now).state.name()),
                    None => "no execution for this namespace and key".to_owned(),
                };
                results[i] = Some(HeartbeatResult::Lost { reason, detail });
            }
        }
        Ok(slots
            .into_iter()
            .map(|s| results[s].clone().expect("every lease answered"))
            .collect())
    }

    /// One record and its newest history events.
    pub async fn inspect(
        &self,
        key: &ExecKey,
        history_limit: u32,
    ) -> Result<Option<(ExecutionView, Vec<HistoryEvent>)>> {
        timed("inspect", 1, self.inspect_inner(key, history_limit)).await
    }

    async fn inspect_inner(
        &self,
        key: &ExecKey,
        history_limit: u32,
    ) -> Result<Option<(ExecutionView, Vec<HistoryEvent>)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::GET_RECORD)
            .await
            .map_err(classify)?;
        let row = client
            .query_opt(&stmt, &[&key.namespace.as_str(), &key.key.as_str()])
            .await
            .map_err(classify)?;
        let Some(row) = row else { return Ok(None) };
        let (key, record) = record_from_row(&row, 0)?;
        let now: Timestamp = row.try_get(18).map_err(classify)?;
        if record.retention_over(now) {
            return Ok(None);
        }
        let stmt = client
            .prepare_cached(sql::GET_HISTORY)
            .await
            .map_err(classify)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &key.namespace.as_str(),
                    &key.key.as_str(),
                    &i64::from(history_limit),
                ],
            )
            .await
            .map_err(classify)?;
        let history = rows
            .iter()
            .map(history_from_row)
            .collect::<Result<Vec<_>>>()?;
        let effective = record.effective(now);
        Ok(Some((
            ExecutionView {
                key,
                record,
                effective,
            },
            history,
        )))
    }

    /// One page of a namespace, ordered by key.
    pub async fn list(&self, req: &ListRequest) -> Result<Vec<ExecutionView>> {
        timed("list", 1, self.list_inner(req)).await
    }

    async fn list_inner(&self, req: &ListRequest) -> Result<Vec<ExecutionView>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::LIST_RECORDS)
            .await
            .map_err(classify)?;
        let after = req.after.as_ref().map_or("", Key::as_str);
        let state: i16 = req.state.map_or(0, core::State::code);
        let rows = client
            .query(
                &stmt,
                &[
                    &req.namespace.as_str(),
                    &after,
                    &state,
                    &i64::from(req.page_size),
                ],
            )
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let (key, record) = record_from_row(row, 0)?;
                let now: Timestamp = row.try_get(18).map_err(classify)?;
                let effective = record.effective(now);
                Ok(ExecutionView {
                    key,
                    record,
                    effective,
                })
            })
            .collect()
    }

    /// One bounded sweep: continues a walk over the table in primary-key order, one slice of
    /// `batch` records per transaction and at most `max_batches` slices, marking expired
    /// leases UNCERTAIN and deleting records past retention. A sweep stops early when the walk
    /// reaches the end of the table; the next one starts again from the top. The cost of a
    /// sweep is bounded whatever the size of the table: on a large table a full walk takes
    /// several sweeps (which is harmless: expiry and retention are also judged on every read,
    /// so a record waiting for its slice is already reported as UNCERTAIN or gone). Only one
    /// replica sweeps at a time (a transaction-level advisory lock per slice).
    pub async fn sweep(&self, batch: i64, max_batches: usize) -> Result<SweepStats> {
        timed("sweep", 0, self.sweep_inner(batch, max_batches)).await
    }

    /// (namespace, live leases, uncertain executions) over the whole database.
    pub async fn stats(&self) -> Result<Vec<(String, i64, i64)>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(classify)?;
        tx.batch_execute(sql::FULL_PLANNER)
            .await
            .map_err(classify)?;
        let rows = timed("stats", 0, tx.query(sql::STATS, &[]))
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn sweep_inner(&self, batch: i64, max_batches: usize) -> Result<SweepStats> {
        let mut stats = SweepStats::default();
        let mut client = self.client().await?;
        for _ in 0..max_batches {
            let (lo_ns, lo_key) = self.sweep_cursor().clone();
            let tx = client.transaction().await.map_err(classify)?;
            let locked: bool = tx
                .query_one(sql::SWEEP_LOCK, &[])
                .await
                .map_err(classify)?
                .get(0);
            if !locked {
                return Ok(stats);
            }
            stats.ran = true;
            let stmt = tx
                .prepare_cached(sql::SWEEP_SLICE)
                .await
                .map_err(classify)?;
            let slice = tx
                .query_one(&stmt, &[&lo_ns, &lo_key, &batch])
                .await
                .map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            let seen: i64 = slice.get(0);
            let last: (Option<String>, Option<String>) = (slice.get(1), slice.get(2));
            let (expired, deleted): (i64, i64) = (slice.get(3), slice.get(4));
            stats.expired += expired as u64;
            stats.deleted += deleted as u64;
            match last {
                (Some(hi_ns), Some(hi_key)) if seen >= batch => {
                    *self.sweep_cursor() = (hi_ns, hi_key);
                }
                // Less than a full slice after the cursor: the pass is over, and the next one
                // starts from the top.
                _ => {
                    *self.sweep_cursor() = Default::default();
                    break;
                }
            }
        }
        Ok(stats)
    }

    /// Where the next sweep slice starts: the last (namespace, key) swept, or the start.
    fn sweep_cursor(&self) -> std::sync::MutexGuard<'_, (String, String)> {
        self.sweep_cursor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Splits pending items into a round with the first occurrence of each key (sorted by key,
/// the lock order) and the rest.
fn split_round<'a>(
    pending: &[usize],
    key_of: impl Fn(usize) -> &'a ExecKey,
) -> (Vec<usize>, Vec<usize>) {
    let mut seen = HashSet::with_capacity(pending.len());
    let (mut round, rest): (Vec<usize>, Vec<usize>) =
        pending.iter().partition(|&&i| seen.insert(key_of(i)));
    round.sort_by(|&a, &b| key_of(a).cmp(key_of(b)));
    (round, rest)
}

async fn lock_records<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    keys: impl Iterator<Item = &'a ExecKey>,
) -> Result<(Timestamp, HashMap<ExecKey, core::Record>)> {
    let stmt = tx
        .prepare_cached(sql::LOCK_RECORDS)
        .await
        .map_err(classify)?;
    let clock = tx.prepare_cached(sql::CLOCK).await.map_err(classify)?;
    // The clock runs after the locking query has finished, so it is read with every lock
    // held: time spent waiting for a lock never makes an expired lease look live.
    fetch_records(&**tx, &stmt, &clock, ClockAt::After, keys).await
}

/// When the clock is read relative to the records, in one pipeline (no extra round trip).
enum ClockAt {
    Before,
    After,
}

/// Runs a records statement (`sql::READ_RECORDS` or `sql::LOCK_RECORDS`) and the clock.
async fn fetch_records<'a>(
    client: &impl tokio_postgres::GenericClient,
    stmt: &tokio_postgres::Statement,
    clock: &tokio_postgres::Statement,
    at: ClockAt,
    keys: impl Iterator<Item = &'a ExecKey>,
) -> Result<(Timestamp, HashMap<ExecKey, core::Record>)> {
    let (namespaces, keys): (Vec<&str>, Vec<&str>) =
        keys.map(|k| (k.namespace.as_str(), k.key.as_str())).unzip();
    let records = async {
        client
            .query(stmt, &[&namespaces, &keys])
            .await
            .map_err(classify)
    };
    let now = async { client.query_one(clock, &[]).await.map_err(classify) };
    // tokio-postgres sends pipelined queries in the order they are first polled.
    let (rows, clock_row) = match at {
        ClockAt::Before => {
            let (c, r) = futures::try_join!(now, records)?;
            (r, c)
        }
        ClockAt::After => futures::try_join!(records, now)?,
    };
    let now: Timestamp = clock_row.get(0);
    let mut out = HashMap::with_capacity(rows.len());
    for row in &rows {
        let (key, record) = record_from_row(row, 0)?;
        out.insert(key, record);
    }
    Ok((now, out))
}

/// Inserts new records (and their first history event); returns the token of each record
/// inserted. A key that another transaction created first is absent from the result.
async fn insert_records<'a>(
    client: &impl deadpool_postgres::GenericClient,
    creates: impl Iterator<Item = (&'a ExecKey, &'a core::Record)>,
    on_error: fn(tokio_postgres::Error) -> Error,
) -> Result<HashMap<ExecKey, Token>> {
    let mut cols = RecordColumns::default();
    for (key, record) in creates {
        cols.push(key, record, 0);
    }
    if cols.is_empty() {
        return Ok(HashMap::new());
    }
    let stmt = client
        .prepare_cached(sql::INSERT_RECORDS)
        .await
        .map_err(classify)?;
    let rows = client
        .query(&stmt, &cols.params())
        .await
        .map_err(on_error)?;
    let mut tokens = HashMap::with_capacity(rows.len());
    for row in rows {
        let key = ExecKey {
            namespace: core::Namespace::new_unchecked(row.get::<_, String>(0)),
            key: Key::new_unchecked(row.get::<_, String>(1)),
        };
        let token: i64 = row.get(2);
        tokens.insert(key, token as u64);
    }
    Ok(tokens)
}

async fn write_updates(
    tx: &deadpool_postgres::Transaction<'_>,
    updates: &RecordColumns,
) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(sql::UPDATE_RECORDS)
        .await
        .map_err(classify)?;
    let mut params = updates.params();
    params.push(&updates.expected_token);
    let rows = tx.query(&stmt, &params).await.map_err(classify)?;
    // We hold the row locks, so every fenced update must hit: anything else is a bug, and
    // the transaction is abandoned rather than committed half-written.
    if rows.len() != updates.namespace.len() {
        return Err(Error::Internal(format!(
            "fenced update wrote {} of {} locked records",
            rows.len(),
            updates.namespace.len()
        )));
    }
    Ok(())
}

async fn insert_events(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &EventColumns,
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(sql::INSERT_EVENTS)
        .await
        .map_err(classify)?;
    tx.execute(&stmt, &events.params())
        .await
        .map_err(classify)?;
    Ok(())
}

/// Commits; see `classify_autocommit`.
async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Result<()> {
    tx.commit().await.map_err(classify_autocommit)
}

/// Maps the error of a statement that commits (a COMMIT, or a statement outside an explicit
/// transaction, which commits on its own): a connection lost while it ran leaves its outcome
/// unknown, and callers must be told so (they retry the claim with the same claim id or the
/// same completion, or inspect).
fn classify_autocommit(e: tokio_postgres::Error) -> Error {
    if e.code().is_some() {
        classify(e)
    } else {
        Error::CommitUnknown(e.to_string())
    }
}

/// An error after part of a batch was already committed: its callers must not be told that
/// nothing happened.
fn after_partial_commit(e: Error) -> Error {
    match e {
        Error::DatabaseUnavailable(m) => Error::CommitUnknown(m),
        e => e,
    }
}

/// Whether an error is a deadlock or serialization failure, which is safe to retry: the
/// transaction was rolled back.
fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::DatabaseUnavailable(m) if m.starts_with("conflict:"))
}

async fn retry_conflicts<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if is_conflict(&e) && attempt < CONFLICT_RETRIES => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "retrying batch after a conflict");
                tokio::time::sleep(Duration::from_millis(
                    rand::random_range(1..10) * attempt as u64,
                ))
                .await;
            }
            other => return other,
        }
    }
}

/// Maps a driver error to the service error: connection trouble and server shutdowns are
/// UNAVAILABLE (retryable, nothing committed), everything else is a bug.
fn classify(e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(code)
            if *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE =>
        {
            Error::DatabaseUnavailable(format!("conflict: {e}"))
        }
        // A lock held too long (lock_timeout) or a statement cancelled by its timeout: nothing
        // was committed, and a retry may well succeed.
        Some(code)
            if *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT =>
        {
            Error::DatabaseUnavailable(e.to_string())
        }
        Some(code) => {
            let class = &code.code()[..2];
            // 08 connection, 53 resources, 57 operator intervention (shutdown), 58 system.
            if matches!(class, "08" | "53" | "57" | "58") {
                Error::DatabaseUnavailable(e.to_string())
            } else {
                Error::Internal(format!("database error: {e}"))
            }
        }
        // No SQLSTATE: the connection broke (unavailable) or we sent something the driver
        // could not encode (a bug).
        None => {
            use std::error::Error as _;
            let io = e.source().is_some_and(|s| s.is::<std::io::Error>());
            if e.is_closed() || io {
                Error::DatabaseUnavailable(e.to_string())
            } else {
                Error::Internal(format!("database driver: {e}"))
            }
        }
    }
}

/// Test-only deliberate defects for the fault-injection checker's negative controls
/// (`tests/faults`). Compiled only with the `negative-controls` feature.
#[cfg(feature = "negative-controls")]
fn negative_control(name: &str) -> bool {
    std::env::var("SENTINEL_NEGATIVE_CONTROL").is_ok_and(|v| v == name)
}

#[cfg(not(feature = "negative-controls"))]
#[inline(always)]
fn negative_control(_name: &str) -> bool {
    false
}
