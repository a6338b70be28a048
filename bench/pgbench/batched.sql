-- The same work batched by hand: one statement (one commit) claims :batch new keys, one
-- statement completes them all under their tokens (unnest of the claimed arrays). A pgbench
-- "transaction" here is :batch lifecycles.
\set r random(1, 9000000000000000000)
WITH claimed AS (
    INSERT INTO leases (key, state, token, holder, lease_expires_at)
    SELECT 'b' || :r || '-' || g, 'running', nextval('lease_tokens'), 'pgbench', now() + interval '10 seconds'
      FROM generate_series(1, :batch::int) AS g
    ON CONFLICT (key) DO NOTHING
    RETURNING key, token
)
SELECT array_agg(key) AS keys, array_agg(token) AS tokens FROM claimed \gset
UPDATE leases l
   SET state = 'done', response = '\x72727272727272727272727272727272'::bytea, lease_expires_at = now()
  FROM unnest(:keys::text[], :tokens::bigint[]) AS u(key, token)
 WHERE l.key = u.key AND l.token = u.token AND l.state = 'running';
