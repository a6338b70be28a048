-- A hand-rolled lease table: the least a service needs to claim a key with a fencing token
-- and a lease expiry, and to store the result under that token. No history table, no extra
-- indexes, no checks: the cheapest honest baseline for the same claim and complete writes.
DROP TABLE IF EXISTS leases;
DROP SEQUENCE IF EXISTS lease_tokens;
CREATE SEQUENCE lease_tokens;
CREATE TABLE leases (
    key              text        PRIMARY KEY,
    state            text        NOT NULL,
    token            bigint      NOT NULL,
    holder           text        NOT NULL,
    lease_expires_at timestamptz NOT NULL,
    response         bytea
);
