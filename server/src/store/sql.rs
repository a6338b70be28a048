//! Every SQL statement of the store, in one place. All of them take arrays (`unnest`) so
//! that one statement serves a whole batch; all of them are prepared once per connection.

/// The columns of `executions`, in the order `rows::record_from_row` reads them.
macro_rules! record_columns {
    () => {
        "namespace, key, state, token, attempt, fingerprint, holder, claim_id, lease_ttl_ms, \
         lease_expires_at, hard_deadline_at, uncertain_reason, response, error, retention_ms, \
         retention_until, created_at, updated_at"
    };
}

/// Locks the records of a batch in primary-key order (so concurrent batches cannot deadlock
/// on each other) and returns them.
pub const LOCK_RECORDS: &str = concat!(
    batch_records!(),
    " ORDER BY e.namespace, e.key FOR UPDATE OF e"
);

/// The records of a batch without locking them: claims that only report (replays, IN_PROGRESS,
/// UNCERTAIN) are answered from this read, with no transaction and no write.
pub const READ_RECORDS: &str = batch_records!();

/// The records named by two arrays `$1` (namespaces) and `$2` (keys).
macro_rules! batch_records {
    () => {
        "SELECT e.namespace, e.key, e.state, e.token, e.attempt, e.fingerprint, e.holder, \
         e.claim_id, e.lease_ttl_ms, e.lease_expires_at, e.hard_deadline_at, \
         e.uncertain_reason, e.response, e.error, e.retention_ms, e.retention_until, \
         e.created_at, e.updated_at
           FROM executions e
           JOIN unnest($1::text[], $2::text[]) AS u(namespace, key)
             ON e.namespace = u.namespace AND e.key = u.key"
    };
}
use batch_records;

/// The database clock, read after the row locks are held so that time spent waiting for a
/// lock never makes an expired lease look live.
pub const CLOCK: &str = "SELECT clock_timestamp()";

/// Inserts new records. The first token of a key continues above any token the key had
/// before retention deleted it (`token_floors`). The floor is read by this statement, which
/// starts after the batch's row locks were taken, so it sees any deletion that raced with it.
/// Rows that another transaction inserted first are skipped and retried by the caller.
/// The first history event of each new record is written by the same statement, since only
/// it knows the token.
pub const INSERT_RECORDS: &str = concat!(
    "WITH ins AS (INSERT INTO executions (",
    record_columns!(),
    ")
     SELECT u.namespace, u.key, u.state, coalesce(f.floor, 0) + 1, u.attempt, u.fingerprint,
            u.holder, u.claim_id, u.lease_ttl_ms, u.lease_expires_at, u.hard_deadline_at,
            u.uncertain_reason, u.response, u.error, u.retention_ms, u.retention_until,
            u.created_at, u.updated_at
       FROM unnest($1::text[], $2::text[], $3::int2[], $4::int8[], $5::int4[], $6::bytea[],
                   $7::text[], $8::text[], $9::int8[], $10::timestamptz[], $11::timestamptz[],
                   $12::int2[], $13::bytea[], $14::text[], $15::int8[], $16::timestamptz[],
                   $17::timestamptz[], $18::timestamptz[])
            AS u(namespace, key, state, token, attempt, fingerprint, holder, claim_id,
                 lease_ttl_ms, lease_expires_at, hard_deadline_at, uncertain_reason, response,
                 error, retention_ms, retention_until, created_at, updated_at)
       LEFT JOIN token_floors f ON f.bucket = sentinel_token_bucket(u.namespace, u.key)
      ORDER BY u.namespace, u.key
     ON CONFLICT (namespace, key) DO NOTHING
     RETURNING namespace, key, token, holder
     ), ev AS (
        INSERT INTO execution_events (namespace, key, token, from_state, to_state, reason, actor, note)
        SELECT namespace, key, token, 0, 1, 'claim', holder, '' FROM ins
     )
     SELECT namespace, key, token FROM ins"
);

/// Writes changed records, fenced: a row is written only if it still has the token it had
/// when it was read. `$4` is that expected token; `token` is the new one.
pub const UPDATE_RECORDS: &str = "
    UPDATE executions e
       SET state = u.state, token = u.token, attempt = u.attempt, fingerprint = u.fingerprint,
           holder = u.holder, claim_id = u.claim_id, lease_ttl_ms = u.lease_ttl_ms,
           lease_expires_at = u.lease_expires_at, hard_deadline_at = u.hard_deadline_at,
           uncertain_reason = u.uncertain_reason, response = u.response, error = u.error,
           retention_ms = u.retention_ms, retention_until = u.retention_until,
           created_at = u.created_at, updated_at = u.updated_at
      FROM unnest($1::text[], $2::text[], $3::int2[], $4::int8[], $5::int4[], $6::bytea[],
                  $7::text[], $8::text[], $9::int8[], $10::timestamptz[], $11::timestamptz[],
                  $12::int2[], $13::bytea[], $14::text[], $15::int8[], $16::timestamptz[],
                  $17::timestamptz[], $18::timestamptz[], $19::int8[])
           AS u(namespace, key, state, token, attempt, fingerprint, holder, claim_id,
                lease_ttl_ms, lease_expires_at, hard_deadline_at, uncertain_reason, response,
                error, retention_ms, retention_until, created_at, updated_at, expected_token)
     WHERE e.namespace = u.namespace AND e.key = u.key AND e.token = u.expected_token
    RETURNING e.namespace, e.key";

/// Completes a batch of live leases in one statement, which commits on its own: the fast
/// path of Complete. Each item carries its outcome's effect (`core::completion_effect`), and
/// is written only under exactly the conditions in which `core::decide_complete` takes its
/// plain branch: the record has this token, is RUNNING, matches the fingerprint (when one
/// is given) and its lease is live at a database clock reading taken after the row is
/// locked. Rows are locked in primary-key order, like every other locking statement. Items
/// it does not return (fenced, late, repeated, raced) are decided by the locking path.
/// Items must name distinct keys.
pub const COMPLETE_LIVE: &str = "
    WITH l AS (
        SELECT x.ctid AS row_id, u.ord, u.token, u.state, u.uncertain_reason, u.response,
               u.error, u.starts_retention, u.reason, u.note
          FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::int2[], $6::int2[],
                      $7::bytea[], $8::text[], $9::bool[], $10::text[], $11::text[])
               WITH ORDINALITY
               AS u(namespace, key, token, fingerprint, state, uncertain_reason, response,
                    error, starts_retention, reason, note, ord)
          JOIN executions x
            ON x.namespace = u.namespace AND x.key = u.key AND x.token = u.token
         WHERE x.state = 1 AND (u.fingerprint = '' OR x.fingerprint = u.fingerprint)
         ORDER BY x.namespace, x.key
           FOR UPDATE OF x
    ), c AS (
        -- One clock reading per row, taken after the row lock is held.
        SELECT l.*, clock_timestamp() AS now FROM l
    ), w AS (
        UPDATE executions e
           SET state = c.state, uncertain_reason = c.uncertain_reason,
               response = coalesce(c.response, e.response), error = c.error,
               retention_until = CASE WHEN c.starts_retention
                                      THEN c.now + e.retention_ms * interval '1 millisecond'
                                      ELSE e.retention_until END,
               updated_at = c.now
          FROM c
         WHERE e.ctid = c.row_id AND e.token = c.token AND e.state = 1
           AND e.lease_expires_at > c.now
        RETURNING c.ord, e.namespace, e.key, e.token, e.holder, e.state, c.now, c.reason, c.note
    ), ev AS (
        INSERT INTO execution_events (namespace, key, token, from_state, to_state, reason, actor, note)
        SELECT namespace, key, token, 1, state, reason, holder, note FROM w
    )
    SELECT ord, now FROM w";

/// Appends history events.
pub const INSERT_EVENTS: &str = "
    INSERT INTO execution_events (namespace, key, token, from_state, to_state, reason, actor, note)
    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int2[], $5::int2[], $6::text[],
                         $7::text[], $8::text[])";

/// Renews a batch of leases in one statement, fenced by token and judged by the database
/// clock: only a RUNNING record with this token and a lease that has not yet expired is
/// extended, to min(now + lease_ttl, hard deadline). An expired lease is never revived.
/// Returns the position (`ord`, from 1) of each renewed item; the caller reads the records
/// of the others to say why. Items must be distinct (namespace, key, token).
///
/// Rows locked by another transaction are skipped, not waited for: a heartbeat batch must
/// never stall behind a lock (say, one held by a replica that froze mid-transaction), and a
/// skipped lease is simply not renewed this time.
pub const HEARTBEAT: &str = "
    UPDATE executions e
       SET lease_expires_at = least(clock_timestamp() + e.lease_ttl_ms * interval '1 millisecond',
                                    e.hard_deadline_at)
      FROM (SELECT x.ctid AS row_id, u.ord
              FROM unnest($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY
                   AS u(namespace, key, token, ord)
              JOIN executions x
                ON x.namespace = u.namespace AND x.key = u.key AND x.token = u.token
             WHERE x.state = 1 AND x.lease_expires_at > clock_timestamp()
               FOR UPDATE OF x SKIP LOCKED) l
     WHERE e.ctid = l.row_id
    RETURNING l.ord, e.lease_expires_at, clock_timestamp()";

/// The gauges (`STATS`) scan the whole table, every `--stats-interval`: they get the planner's
/// full choice back for their transaction (the pool's sessions rule out sequential scans; see
/// `Store::connect`).
pub const FULL_PLANNER: &str =
    "SET LOCAL enable_seqscan = on; SET LOCAL enable_hashjoin = on; SET LOCAL enable_mergejoin = on";

/// One record, without locking.
pub const GET_RECORD: &str = concat!(
    "SELECT ",
    record_columns!(),
    ", clock_timestamp() FROM executions WHERE namespace = $1 AND key = $2"
);

/// The newest history events of a record.
pub const GET_HISTORY: &str = "
    SELECT at, token, from_state, to_state, reason, actor, note
      FROM execution_events
     WHERE namespace = $1 AND key = $2
     ORDER BY id DESC
     LIMIT $3";

/// One page of a namespace, by key, filtered by the *reported* state (`$3`, 0 for any):
/// an expired RUNNING record is listed as UNCERTAIN, and a record past retention is gone.
pub const LIST_RECORDS: &str = concat!(
    "SELECT ",
    record_columns!(),
    ", now() FROM executions
      WHERE namespace = $1 AND key > $2
        AND NOT (state IN (2, 3) AND retention_until <= now())
        AND ($3::smallint = 0 OR $3::smallint = CASE WHEN state = 1 AND lease_expires_at <= now() THEN 4 ELSE state END)
      ORDER BY key
      LIMIT $4"
);

/// Database-wide gauges, by namespace.
pub const STATS: &str = "
    SELECT namespace,
           count(*) FILTER (WHERE state = 1 AND lease_expires_at > now()),
           count(*) FILTER (WHERE state = 4 OR (state = 1 AND lease_expires_at <= now()))
      FROM executions
     GROUP BY namespace";

/// Only one replica sweeps at a time; the lock is held for one slice transaction.
pub const SWEEP_LOCK: &str = "SELECT pg_try_advisory_xact_lock(1397050964)";

/// One slice of the sweeper's walk over the table in primary-key order: the (at most) `$3`
/// records after the cursor (`$1`, `$2`). Walking in slices keeps the cost of each pass the
/// same however large the table grows (retention keeps every completed key for a day by
/// default). In the slice, it writes UNCERTAIN into RUNNING records whose lease expired (with
/// the same reason rule as `Record::expiry_reason`, and their history events), and deletes
/// records past retention with their history, raising the token floor of their buckets so
/// that the keys continue above their old tokens. Rows locked by a transaction in flight
/// are left for the next pass. Returns the number of records in the slice, the last one
/// (the next cursor), and the counts expired and deleted.
pub const SWEEP_SLICE: &str = "
    WITH s AS (
        SELECT namespace, key, state, lease_expires_at, retention_until
          FROM executions
         WHERE (namespace, key) > ($1, $2)
         ORDER BY namespace, key
         LIMIT $3
    ), x AS (
        SELECT e.namespace, e.key
          FROM s JOIN executions e ON e.namespace = s.namespace AND e.key = s.key
         WHERE s.state = 1 AND s.lease_expires_at <= clock_timestamp()
           FOR UPDATE OF e SKIP LOCKED
    ), u AS (
        UPDATE executions e
           SET state = 4,
               uncertain_reason = CASE WHEN e.lease_expires_at >= e.hard_deadline_at THEN 2 ELSE 1 END,
               updated_at = e.lease_expires_at
          FROM x
         WHERE e.namespace = x.namespace AND e.key = x.key
           AND e.state = 1 AND e.lease_expires_at <= clock_timestamp()
        RETURNING e.namespace, e.key, e.token, e.uncertain_reason, e.holder
    ), ue AS (
        INSERT INTO execution_events (namespace, key, token, from_state, to_state, reason, actor, note)
        SELECT namespace, key, token, 1, 4,
               CASE uncertain_reason WHEN 2 THEN 'hard_deadline' ELSE 'lease_expired' END,
               'sweeper', ''
          FROM u
    ), r AS (
        SELECT e.namespace, e.key
          FROM s JOIN executions e ON e.namespace = s.namespace AND e.key = s.key
         WHERE s.state IN (2, 3) AND s.retention_until <= clock_timestamp()
           FOR UPDATE OF e SKIP LOCKED
    ), d AS (
        DELETE FROM executions e
         USING r
         WHERE e.namespace = r.namespace AND e.key = r.key
           AND e.state IN (2, 3) AND e.retention_until <= clock_timestamp()
        RETURNING e.namespace, e.key, e.token
    ), f AS (
        INSERT INTO token_floors (bucket, floor)
        SELECT sentinel_token_bucket(namespace, key), max(token) FROM d GROUP BY 1
        ON CONFLICT (bucket) DO UPDATE SET floor = greatest(token_floors.floor, excluded.floor)
    ), de AS (
        DELETE FROM execution_events ev
         USING d
         WHERE ev.namespace = d.namespace AND ev.key = d.key AND ev.token <= d.token
    )
    SELECT (SELECT count(*) FROM s),
           (SELECT namespace FROM s ORDER BY namespace DESC, key DESC LIMIT 1),
           (SELECT key FROM s ORDER BY namespace DESC, key DESC LIMIT 1),
           (SELECT count(*) FROM u),
           (SELECT count(*) FROM d)";
