-- Namespaces and keys are opaque identifiers: compare them byte by byte (collation "C"),
-- whatever the database's default collation is. Every index lookup and every ordered lock
-- then compares bytes instead of calling the C library's locale-aware comparison, the order
-- is the one clients see when they sort bytes, and an upgrade of the C library (new
-- collation rules) cannot silently invalidate the primary key. The column type does not
-- change, so the tables are not rewritten; their indexes are rebuilt.
ALTER TABLE executions
    ALTER COLUMN namespace TYPE text COLLATE "C",
    ALTER COLUMN key TYPE text COLLATE "C";
ALTER TABLE execution_events
    ALTER COLUMN namespace TYPE text COLLATE "C",
    ALTER COLUMN key TYPE text COLLATE "C";

-- History is only ever read and deleted by record: key it by (namespace, key, id) and drop
-- the separate primary key on id, one index insertion less per event.
ALTER TABLE execution_events DROP CONSTRAINT execution_events_pkey;
DROP INDEX execution_events_by_record;
ALTER TABLE execution_events ADD PRIMARY KEY (namespace, key, id);
