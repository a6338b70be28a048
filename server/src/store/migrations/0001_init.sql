-- The execution records. The hot table is indexed by its primary key only, so that lease
-- renewals (which touch no indexed column) stay HOT updates.
CREATE TABLE executions (
    namespace        text        NOT NULL,
    key              text        NOT NULL,
    -- 1 RUNNING, 2 COMPLETED, 3 FAILED, 4 UNCERTAIN, 5 RELEASED
    state            smallint    NOT NULL,
    token            bigint      NOT NULL CHECK (token > 0),
    attempt          integer     NOT NULL,
    fingerprint      bytea       NOT NULL,
    holder           text        NOT NULL,
    claim_id         text        NOT NULL,
    lease_ttl_ms     bigint      NOT NULL,
    lease_expires_at timestamptz NOT NULL,
    hard_deadline_at timestamptz NOT NULL,
    -- 0 none, 1 LEASE_EXPIRED, 2 HARD_DEADLINE, 3 REPORTED
    uncertain_reason smallint    NOT NULL DEFAULT 0,
    response         bytea,
    error            text,
    retention_ms     bigint      NOT NULL,
    retention_until  timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (namespace, key)
);

-- Every transition, appended in the transaction that makes it.
CREATE TABLE execution_events (
    id         bigserial   PRIMARY KEY,
    namespace  text        NOT NULL,
    key        text        NOT NULL,
    token      bigint      NOT NULL,
    from_state smallint    NOT NULL,  -- 0 for the first claim
    to_state   smallint    NOT NULL,
    reason     text        NOT NULL,
    actor      text        NOT NULL,
    note       text        NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX execution_events_by_record ON execution_events (namespace, key, id);

-- When retention deletes a record, the highest token it had is remembered here, per hash
-- bucket of (namespace, key), so that a key claimed again later continues above it.
CREATE TABLE token_floors (
    bucket integer PRIMARY KEY,
    floor  bigint  NOT NULL
);

-- The bucket of a record; the separator cannot occur in a namespace or a key.
CREATE FUNCTION sentinel_token_bucket(ns text, k text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (hashtextextended(ns || E'\x1f' || k, 0) & 4095)::integer $$;
