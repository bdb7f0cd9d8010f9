/*
 * Before every run: give the variant's table back its first 100k rows in a
 * fresh file (no bloat or grown inserts from the previous run), empty all
 * three logs, vacuum and checkpoint, so every run starts from the same
 * state whatever ran before it.  psql -v tbl=bench_<variant> -v nrows=N.
 */
\set ON_ERROR_STOP on
SET client_min_messages = warning;

-- the reload is not a change to capture: replica mode keeps every trigger quiet
SET session_replication_role = replica;
TRUNCATE :"tbl" RESTART IDENTITY;
INSERT INTO :"tbl" (sfid, name, email, phone, amount, systemmodstamp, createddate, description)
SELECT '003' || lpad(i::text, 15, '0'),
       'Contact ' || i,
       'contact' || i || '@example.com',
       '+1 555 ' || lpad((i % 10000)::text, 4, '0'),
       (i % 100000) / 100.0,
       timestamp '2024-01-01' + i * interval '1 second',
       timestamp '2024-01-01' + i * interval '1 second',
       'Lead from campaign ' || md5(i::text)
  FROM generate_series(1, :nrows) i;
RESET session_replication_role;

TRUNCATE salesforce._trigger_log, connect_guard.trigger_log;
SELECT format('TRUNCATE %s', queue_data_pfx) FROM pgq.queue WHERE queue_name = 'bench' \gexec

VACUUM ANALYZE :"tbl";
VACUUM ANALYZE salesforce._trigger_log;
VACUUM ANALYZE connect_guard.trigger_log;
CHECKPOINT;
