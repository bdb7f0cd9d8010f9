/*
 * Before every run: give the variant's table back the seed rows in a fresh
 * file (no bloat and none of the previous run's inserts), empty all four
 * logs, vacuum and checkpoint, so that every run starts from the same state
 * whatever ran before it.  psql -v tbl=bench_<variant> -v nrows=N.
 */
\set ON_ERROR_STOP on
SET client_min_messages = warning;

-- the reload is not a change to capture: replica mode keeps every trigger
-- quiet, but connect_guard refuses writes to its mapped tables in that role
-- (they would escape its log): its own switch, capture = off, instead
SELECT :'tbl' = 'bench_connect_guard' AS mapped \gset
\if :mapped
SET connect_guard.capture = off;
\else
SET session_replication_role = replica;
\endif
TRUNCATE :"tbl";
INSERT INTO :"tbl" SELECT * FROM bench_seed;
RESET session_replication_role;
RESET connect_guard.capture;
SELECT setval(pg_get_serial_sequence(:'tbl', 'id'), :nrows) \gset

TRUNCATE salesforce._trigger_log, stmt.trigger_log, connect_guard.trigger_log;
SELECT format('TRUNCATE %s', queue_data_pfx) FROM pgq.queue WHERE queue_name = 'bench' \gexec

VACUUM ANALYZE :"tbl";
VACUUM ANALYZE salesforce._trigger_log;
VACUUM ANALYZE stmt.trigger_log;
VACUUM ANALYZE connect_guard.trigger_log;
CHECKPOINT;
