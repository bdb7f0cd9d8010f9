-- The preflight (connect_preflight): every check that one cluster can set
-- up, failing and passing, and that the preflight changes nothing.  A real
-- follower (caught up, down, of another system, lagging, not sharing the
-- witness) and the runbooks' stop are in test/t/023_preflight.pl.  This
-- cluster runs with connect_guard.witness_directory = '' (so the witness
-- check fails throughout) and max_prepared_transactions > 0.
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all

-- the worker of the test before has seen its DROP EXTENSION and gone
-- (pg_stat_clear_snapshot: pg_stat_activity is read once per transaction)
DO $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity
                               WHERE backend_type = 'connect_guard worker' AND datname = current_database());
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT count(*) AS workers FROM pg_stat_activity
 WHERE backend_type = 'connect_guard worker' AND datname = current_database();

-- before the extension commits no worker can run here: the worker check fails
BEGIN;
CREATE EXTENSION connect_guard;
CREATE TABLE account (id int PRIMARY KEY, name text);
CREATE TABLE note (id int PRIMARY KEY, body text);
SELECT connect_create_connection('loc');
SELECT connect_map_table('loc', 'account');
SELECT connect_create_connection('crm');
SELECT connect_map_table('crm', 'note');
-- the checks with their details masked: ages, pids, LSNs, sizes, system identifiers
CREATE FUNCTION preflight(method text DEFAULT 'pg_upgrade', follower text DEFAULT NULL, conn text DEFAULT NULL)
RETURNS TABLE (chk text, ok boolean, detail text, hint text) LANGUAGE sql AS $$
    SELECT p."check", p.ok,
           regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
               split_part(p.detail, E'\n', 1),
               '\m\d+ (s|min|h|days)\M', '<age>', 'g'),
               'pid \d+', 'pid <pid>', 'g'),
               '[0-9A-F]+/[0-9A-F]+', '<lsn>', 'g'),
               '\m\d+ (bytes|kB|MB)\M', '<size>', 'g'),
               '\m\d{12,}\M', '<sysid>', 'g'),
           p.hint
      FROM connect_preflight(method, follower, connection => conn) p;
$$;
-- a conninfo of this very server
SELECT coalesce(nullif(trim(split_part(current_setting('unix_socket_directories'), ',', 1)), ''), '127.0.0.1') AS self_host,
       current_setting('port') AS self_port \gset
SELECT format('host=%s port=%s dbname=%s', :'self_host', :'self_port', current_database()) AS self \gset
CREATE TEMP TABLE first_checks AS SELECT * FROM preflight();
SELECT chk, ok FROM first_checks;
SELECT chk, detail, hint FROM first_checks WHERE ok IS NOT TRUE;
COMMIT;

-- once committed, the worker starts
SELECT connect_guard.wake_launcher() AS woken;
DO $$
BEGIN
    FOR i IN 1 .. 600 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN EXISTS (SELECT 1 FROM connect_worker);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT chk, ok, detail FROM preflight() WHERE chk = 'worker';

-- all clear but the witness; a pause checks one connection and its tables only
SELECT chk, ok FROM preflight() WHERE ok IS NOT TRUE;
SELECT chk, ok, detail FROM preflight('pause', conn => 'loc');
SELECT chk, ok, detail FROM preflight('copy') WHERE chk LIKE 'backlog:%';

-- it changes nothing: no transaction id, no event, no follower status,
-- even when it asks a follower (here: this server, which is no standby)
SELECT count(*) AS events FROM connect_guard.event \gset
BEGIN;
SELECT count(*) > 0 AS checked FROM connect_preflight('follower', :'self');
SELECT pg_current_xact_id_if_assigned() IS NULL AS no_xid,
       (SELECT count(*) FROM connect_guard.event) = :events AS no_event,
       (SELECT count(*) FROM connect_guard.follower_status) AS follower_status;
COMMIT;

-- a plan already open
BEGIN;
SELECT connect_prepare_upgrade('pg_upgrade') > 0 AS prepared;
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
ROLLBACK;

-- a maintenance fence up
SELECT connect_fence('mapped', 'regress window') > 0 AS fenced;
SELECT chk, regexp_replace(detail, 'fence \d+', 'fence <n>') AS detail, hint
  FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
SELECT connect_unfence();

-- a rollback recovery under way (a reload by hand, its tables fenced)
BEGIN;
SELECT connect_reload_mapping('loc', 'account') IS NULL AS local_reload;
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
ROLLBACK;

-- mapped tables that drifted: a capture trigger disabled (writes hidden from
-- the log) and a column retyped, both SCHEMA_CHANGED; a plan fails
-- mappings:NAME (the tables would cross as they are), a pause does not check
-- it (pausing is how they are mended)
BEGIN;
ALTER TABLE account DISABLE TRIGGER _connect_guard_capture;
ALTER TABLE note ALTER COLUMN body TYPE varchar(200);
SELECT connection, table_relname, state FROM connect_mappings ORDER BY connection;
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
SELECT chk, ok FROM preflight('copy') WHERE chk LIKE 'mappings:%';
SELECT count(*) AS mapping_checks FROM preflight('pause', conn => 'loc') WHERE chk LIKE 'mappings%';
ROLLBACK;
-- a column added (no reload needed), then saved: settled, the check passes
BEGIN;
ALTER TABLE note ADD COLUMN extra int;
SELECT chk, ok, detail FROM preflight() WHERE chk = 'mappings:crm';
SELECT connect_save_mapping('crm', 'note');
SELECT chk, ok, detail FROM preflight() WHERE chk = 'mappings:crm';
ROLLBACK;

-- a connection paused already: the plan would resume it at its end
SELECT connect_pause('loc', block_writes => false, reason => 'by hand');
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
SELECT chk, detail, hint FROM preflight('pause', conn => 'loc') WHERE ok IS NOT TRUE;
SELECT connect_resume('loc');

-- a backlog its consumer has left for an hour
BEGIN;
INSERT INTO account VALUES (1, 'a');
UPDATE connect_guard.trigger_log SET created_at = now() - interval '1 hour';
SELECT chk, detail, hint FROM preflight('copy') WHERE ok IS NOT TRUE AND chk <> 'witness';
ROLLBACK;

-- a prepared transaction: pg_upgrade refuses it, the fence would wait for it
BEGIN;
INSERT INTO note VALUES (1, 'prepared');
PREPARE TRANSACTION 'cg_regress_preflight';
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
SELECT chk, ok FROM preflight('pause', conn => 'crm') WHERE chk = 'prepared_transactions';
ROLLBACK PREPARED 'cg_regress_preflight';

-- an inactive replication slot that holds WAL
SELECT slot_name FROM pg_create_physical_replication_slot('cg_regress_idle', true);
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
SELECT pg_drop_replication_slot('cg_regress_idle');
SELECT chk, ok FROM preflight() WHERE chk = 'replication_slots';

-- a transaction idle with a write lock on a mapped table: the fence would
-- wait for it; a pause of the connection that does not map it would not
CREATE EXTENSION dblink;
INSERT INTO account VALUES (1, 'a');
SELECT dblink_connect('cg_regress_writer', :'self');
SELECT dblink_exec('cg_regress_writer', 'BEGIN');
SELECT dblink_exec('cg_regress_writer', 'UPDATE account SET name = ''b'' WHERE id = 1');
SELECT pg_sleep(1.2);
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
SELECT chk, ok, hint FROM preflight('pause', conn => 'loc') WHERE chk = 'long_transactions';
SELECT chk, ok FROM preflight('pause', conn => 'crm') WHERE chk = 'long_transactions';
SELECT dblink_exec('cg_regress_writer', 'ROLLBACK');
SELECT dblink_disconnect('cg_regress_writer');
DROP EXTENSION dblink;
SELECT chk, ok FROM preflight() WHERE chk = 'long_transactions';

-- a sync service: what the worker last saw of it, and its token file
SELECT connect_create_connection('hf', 'heroku',
    jsonb_build_object('region_url', 'https://connect.example.com', 'connection_id', 'c-2',
                       'token_file', current_setting('data_directory') || '/PG_VERSION')) > 0 AS created;
SELECT chk, ok, replace(detail, current_setting('data_directory'), '<data>') AS detail
  FROM preflight() WHERE chk LIKE '%:hf';
BEGIN;
UPDATE connect_guard.connection SET options = jsonb_set(options, '{token_file}', '"/nonexistent/connect.token"')
 WHERE name = 'hf';
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
ROLLBACK;
-- its last request failed (the worker's steps, by hand, rolled back before it sees them)
BEGIN;
SELECT connect_guard.request_close(connect_guard.request_enqueue(connection_id, 'refresh'), 'failed',
                                   'HTTP 503 from Connect (gave up after 8 attempts)')
  FROM connect_guard.connection WHERE name = 'hf';
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
ROLLBACK;
-- Connect answered the last refresh, with a connection that does not run
BEGIN;
SELECT connect_guard.request_enqueue(connection_id, 'refresh') AS refresh FROM connect_guard.connection WHERE name = 'hf' \gset
UPDATE connect_guard.request SET remote_state = 'NEEDS_AUTH', last_http_status = 200 WHERE request_id = :refresh;
SELECT connect_guard.request_close(:refresh, 'succeeded');
SELECT chk, detail, hint FROM preflight() WHERE ok IS NOT TRUE AND chk <> 'witness';
ROLLBACK;
SELECT connect_drop_connection('hf');

-- followers: one that is down (nothing listens on port 1), and this server,
-- which answers but is no standby; the checks that depend on them are not made
SELECT chk, ok, detail, hint FROM preflight('follower', 'host=127.0.0.1 port=1 dbname=app') WHERE chk LIKE 'follower%';
SELECT chk, ok, replace(replace(detail, :'self_host', '<host>'), 'port=' || :'self_port', 'port=<port>') AS detail, hint
  FROM preflight('follower', :'self') WHERE chk LIKE 'follower%';
-- by its registered name, or the only one registered
SELECT connect_add_follower('self', :'self');
SELECT chk, ok FROM preflight('follower', 'self') WHERE chk = 'follower_standby';
SELECT chk, ok FROM preflight('follower') WHERE chk = 'follower_standby';
SELECT connect_remove_follower('self');

-- bad arguments: an error that says what to pass, before any check
SELECT show_error($$SELECT * FROM connect_preflight('upgrade')$$);
SELECT show_error($$SELECT * FROM connect_preflight(NULL)$$);
SELECT show_error($$SELECT * FROM connect_preflight('pg_upgrade', 'host=x')$$);
SELECT show_error($$SELECT * FROM connect_preflight('copy', connection => 'loc')$$);
SELECT show_error($$SELECT * FROM connect_preflight('follower', 'host=x', max_lag_bytes => -1)$$);
SELECT show_error($$SELECT * FROM connect_preflight('follower', 'host=x', max_lag_bytes => NULL)$$);
SELECT show_error($$SELECT * FROM connect_preflight(NULL, max_lag_bytes => NULL)$$);
SELECT show_error($$SELECT * FROM connect_preflight('follower')$$);
SELECT show_error($$SELECT * FROM connect_preflight('follower', 'standby1')$$);
SELECT show_error($$SELECT * FROM connect_preflight('follower', 'host=x port')$$);
SELECT show_error($$SELECT * FROM connect_preflight('pause')$$);
SELECT show_error($$SELECT * FROM connect_preflight('pause', connection => 'nope')$$);

-- for the DBA only
SELECT has_function_privilege('public', 'connect_preflight(text, text, bigint, text)', 'EXECUTE') AS public_may_run;

DROP FUNCTION preflight(text, text, text);
DROP FUNCTION show_error(text);
DROP TABLE account, note;
DROP EXTENSION connect_guard;
