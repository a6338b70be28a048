-- One transaction per request: the claim of a new random key, then its complete, each an
-- autocommitted statement (so two commits per lifecycle, like Claim and Complete RPCs).
-- The key is random over 2^63: a collision (which would abort the client) is negligible.
\set r random(1, 9000000000000000000)
INSERT INTO leases (key, state, token, holder, lease_expires_at)
VALUES ('k' || :r, 'running', nextval('lease_tokens'), 'pgbench', now() + interval '10 seconds')
ON CONFLICT (key) DO NOTHING
RETURNING token \gset
UPDATE leases
   SET state = 'done', response = '\x72727272727272727272727272727272'::bytea, lease_expires_at = now()
 WHERE key = 'k' || :r AND token = :token AND state = 'running';
