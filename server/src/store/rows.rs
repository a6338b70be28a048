//! Conversion between database rows and domain records. Row layouts live here and in
//! `sql.rs`; the rest of the server sees only `core` types.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use crate::core::{Event, ExecKey, HistoryEvent, Key, Namespace, Record, State, UncertainReason};
use crate::error::Error;

fn bad_row(what: &str) -> Error {
    Error::Internal(format!("unexpected value in database column {what}"))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reads `record_columns!()` starting at column `at`.
pub fn record_from_row(row: &Row, at: usize) -> Result<(ExecKey, Record), Error> {
    let key = ExecKey {
        namespace: Namespace::new_unchecked(row.try_get::<_, String>(at).map_err(db)?),
        key: Key::new_unchecked(row.try_get::<_, String>(at + 1).map_err(db)?),
    };
    let state =
        State::from_code(row.try_get(at + 2).map_err(db)?).ok_or_else(|| bad_row("state"))?;
    let token: i64 = row.try_get(at + 3).map_err(db)?;
    let attempt: i32 = row.try_get(at + 4).map_err(db)?;
    let lease_ttl_ms: i64 = row.try_get(at + 8).map_err(db)?;
    let reason_code: i16 = row.try_get(at + 11).map_err(db)?;
    let retention_ms: i64 = row.try_get(at + 14).map_err(db)?;
    let record = Record {
        state,
        token: u64::try_from(token).map_err(|_| bad_row("token"))?,
        attempt: u32::try_from(attempt).map_err(|_| bad_row("attempt"))?,
        fingerprint: row.try_get(at + 5).map_err(db)?,
        holder: row.try_get(at + 6).map_err(db)?,
        claim_id: row.try_get(at + 7).map_err(db)?,
        lease_ttl: Duration::from_millis(
            u64::try_from(lease_ttl_ms).map_err(|_| bad_row("lease_ttl_ms"))?,
        ),
        lease_expires_at: row.try_get(at + 9).map_err(db)?,
        hard_deadline_at: row.try_get(at + 10).map_err(db)?,
        uncertain_reason: UncertainReason::from_code(reason_code),
        response: row.try_get(at + 12).map_err(db)?,
        error: row.try_get(at + 13).map_err(db)?,
        retention: Duration::from_millis(
            u64::try_from(retention_ms).map_err(|_| bad_row("retention_ms"))?,
        ),
        retention_until: row.try_get(at + 15).map_err(db)?,
        created_at: row.try_get(at + 16).map_err(db)?,
        updated_at: row.try_get(at + 17).map_err(db)?,
    };
    Ok((key, record))
}

/// The 0-based position in a statement's input arrays of a row whose column 0 is the input's
/// `WITH ORDINALITY` number (1-based). `len` is the number of inputs; `statement` names the
/// statement in the error for a number out of range.
pub fn input_position(row: &Row, len: usize, statement: &str) -> Result<usize, Error> {
    let ord: i64 = row.try_get(0).map_err(db)?;
    usize::try_from(ord - 1)
        .ok()
        .filter(|&p| p < len)
        .ok_or_else(|| Error::Internal(format!("{statement} returned position {ord}")))
}

pub fn history_from_row(row: &Row) -> Result<HistoryEvent, Error> {
    let token: i64 = row.try_get(1).map_err(db)?;
    let from: i16 = row.try_get(2).map_err(db)?;
    let to: i16 = row.try_get(3).map_err(db)?;
    Ok(HistoryEvent {
        at: row.try_get(0).map_err(db)?,
        token: u64::try_from(token).map_err(|_| bad_row("token"))?,
        from: State::from_code(from),
        to: State::from_code(to).ok_or_else(|| bad_row("to_state"))?,
        reason: row.try_get(4).map_err(db)?,
        actor: row.try_get(5).map_err(db)?,
        note: row.try_get(6).map_err(db)?,
    })
}

fn db(e: tokio_postgres::Error) -> Error {
    Error::Internal(format!("reading a row: {e}"))
}

/// A batch of records laid out as one array per column, for `INSERT_RECORDS` and
/// `UPDATE_RECORDS`.
#[derive(Default)]
pub struct RecordColumns {
    pub namespace: Vec<String>,
    pub key: Vec<String>,
    pub state: Vec<i16>,
    pub token: Vec<i64>,
    pub attempt: Vec<i32>,
    pub fingerprint: Vec<Vec<u8>>,
    pub holder: Vec<String>,
    pub claim_id: Vec<String>,
    pub lease_ttl_ms: Vec<i64>,
    pub lease_expires_at: Vec<DateTime<Utc>>,
    pub hard_deadline_at: Vec<DateTime<Utc>>,
    pub uncertain_reason: Vec<i16>,
    pub response: Vec<Option<Vec<u8>>>,
    pub error: Vec<Option<String>>,
    pub retention_ms: Vec<i64>,
    pub retention_until: Vec<Option<DateTime<Utc>>>,
    pub created_at: Vec<DateTime<Utc>>,
    pub updated_at: Vec<DateTime<Utc>>,
    pub expected_token: Vec<i64>,
}

pub fn token_param(t: u64) -> i64 {
    // Tokens start at 1 and grow by one per claim or reconcile: they never reach i64::MAX.
    i64::try_from(t).unwrap_or(i64::MAX)
}

impl RecordColumns {
    pub fn push(&mut self, key: &ExecKey, r: &Record, expected_token: u64) {
        self.namespace.push(key.namespace.as_str().to_owned());
        self.key.push(key.key.as_str().to_owned());
        self.state.push(r.state.code());
        self.token.push(token_param(r.token));
        self.attempt
            .push(i32::try_from(r.attempt).unwrap_or(i32::MAX));
        self.fingerprint.push(r.fingerprint.clone());
        self.holder.push(r.holder.clone());
        self.claim_id.push(r.claim_id.clone());
        self.lease_ttl_ms.push(millis(r.lease_ttl));
        self.lease_expires_at.push(r.lease_expires_at);
        self.hard_deadline_at.push(r.hard_deadline_at);
        self.uncertain_reason
            .push(r.uncertain_reason.map_or(0, |u| u.code()));
        self.response.push(r.response.clone());
        self.error.push(r.error.clone());
        self.retention_ms.push(millis(r.retention));
        self.retention_until.push(r.retention_until);
        self.created_at.push(r.created_at);
        self.updated_at.push(r.updated_at);
        self.expected_token.push(token_param(expected_token));
    }

    pub fn is_empty(&self) -> bool {
        self.namespace.is_empty()
    }

    /// The 18 record columns, in `record_columns!()` order.
    pub fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        vec![
            &self.namespace,
            &self.key,
            &self.state,
            &self.token,
            &self.attempt,
            &self.fingerprint,
            &self.holder,
            &self.claim_id,
            &self.lease_ttl_ms,
            &self.lease_expires_at,
            &self.hard_deadline_at,
            &self.uncertain_reason,
            &self.response,
            &self.error,
            &self.retention_ms,
            &self.retention_until,
            &self.created_at,
            &self.updated_at,
        ]
    }
}

/// History events laid out as one array per column, for `INSERT_EVENTS`.
#[derive(Default)]
pub struct EventColumns {
    namespace: Vec<String>,
    key: Vec<String>,
    token: Vec<i64>,
    from: Vec<i16>,
    to: Vec<i16>,
    reason: Vec<String>,
    actor: Vec<String>,
    note: Vec<String>,
}

impl EventColumns {
    pub fn push(&mut self, e: &Event) {
        self.namespace.push(e.key.namespace.as_str().to_owned());
        self.key.push(e.key.key.as_str().to_owned());
        self.token.push(token_param(e.token));
        self.from.push(e.from.map_or(0, State::code));
        self.to.push(e.to.code());
        self.reason.push(e.reason.to_owned());
        self.actor.push(e.actor.clone());
        self.note.push(e.note.clone());
    }

    pub fn is_empty(&self) -> bool {
        self.namespace.is_empty()
    }

    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            &self.namespace,
            &self.key,
            &self.token,
            &self.from,
            &self.to,
            &self.reason,
            &self.actor,
            &self.note,
        ]
    }
}
