-- Leave free space in every page of the hot table, so that lease renewals and state changes
-- (which touch no indexed column) can be HOT updates in the same page, and vacuum the table
-- more eagerly than the default: it is small and updated constantly.
ALTER TABLE executions SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
