-- Connect's own trigger log: adopting a schema Heroku Connect manages
-- (test/fixtures/connect_schema.sql builds one), every error of
-- connect_adopt_schema() and of mapping on an adopted connection, the
-- marks read from Connect's log, write errors, the id headroom warning,
-- the reload fence that lets the sync service's sessions write, a
-- rollback's restored entries, and the proof that nothing of Connect's
-- changed.  Processing by Connect is played by hand (UPDATEs of state).
-- The worker ticks the log too: marks are awaited (wait_mark), not raced.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
SET client_min_messages = warning;
\i test/fixtures/connect_schema.sql
SELECT connect_fixture.create_connect_schema('sf2');
SELECT connect_fixture.add_mapped_table('sf2', 'lead');
SELECT connect_fixture.create_connect_schema('noindex');
RESET client_min_messages;
\set ECHO all

-- everything of Connect's in a schema, as one checksum: triggers, columns,
-- indexes, constraints, sequences (and their values), rows
CREATE FUNCTION connect_objects(p_schema text) RETURNS text LANGUAGE sql AS $$
    SELECT md5(string_agg(x, E'\n' ORDER BY x)) FROM (
        SELECT format('trigger %s %s %s', tgrelid::regclass, tgname, pg_get_triggerdef(t.oid)) FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = p_schema::regnamespace
        UNION ALL
        SELECT format('column %s %s %s %s %s', attrelid::regclass, attname, format_type(atttypid, atttypmod), attnotnull,
                      pg_get_expr(d.adbin, d.adrelid))
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = p_schema::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT format('index %s', pg_get_indexdef(i.indexrelid)) FROM pg_index i
          JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = p_schema::regnamespace
        UNION ALL
        SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid)) FROM pg_constraint
         WHERE connamespace = p_schema::regnamespace
        UNION ALL
        SELECT format('sequence %s.%s %s %s', schemaname, sequencename, last_value, max_value) FROM pg_sequences
         WHERE schemaname = p_schema
        UNION ALL
        SELECT format('rows %s %s', c.oid::regclass,
                      (xpath('/row/n/text()', query_to_xml(format('SELECT md5(string_agg(t::text, '','' ORDER BY t::text)) AS n FROM %s t', c.oid::regclass), false, true, '')))[1])
          FROM pg_class c WHERE c.relnamespace = p_schema::regnamespace AND c.relkind = 'r') o(x);
$$;
-- the worker ticks the log every cycle: wait until the mark settles where expected
CREATE FUNCTION wait_mark(p_connection text, p_expected bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. 100 LOOP
        PERFORM connect_guard.log_sources_cycle();
        IF (SELECT hwm_id FROM connect_high_water_marks WHERE connection = p_connection) IS NOT DISTINCT FROM p_expected THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE NOTICE 'mark of %: %, not %', p_connection,
        (SELECT hwm_id FROM connect_high_water_marks WHERE connection = p_connection), p_expected;
    RETURN false;
END;
$$;
CREATE ROLE cg_app;
CREATE ROLE cg_sync;
GRANT USAGE ON SCHEMA salesforce TO cg_app, cg_sync;
GRANT ALL ON ALL TABLES IN SCHEMA salesforce TO cg_app, cg_sync;
GRANT ALL ON ALL SEQUENCES IN SCHEMA salesforce TO cg_app, cg_sync;
CREATE SCHEMA plain;
CREATE TABLE plain.note (id int PRIMARY KEY, body text);
CREATE SCHEMA half;
CREATE TABLE half._trigger_log (id serial PRIMARY KEY, state text, payload jsonb);
CREATE TABLE sf2.sidecar (id int PRIMARY KEY, body text);
DROP INDEX noindex._trigger_log_idx_state_id;
SELECT connect_objects('salesforce') AS salesforce_before \gset

-- not Connect's schema, or not a schema at all: refused, nothing created
SELECT show_error($$SELECT connect_adopt_schema('hc', 'nope')$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', NULL)$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', 'plain')$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', 'half')$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', 'noindex')$$);
-- bad names, adapters and options are refused as connect_create_connection() refuses them
SELECT show_error($$SELECT connect_adopt_schema('bad name', 'salesforce', 'local')$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', 'salesforce', 'kafka')$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', 'salesforce', 'local', '[]')$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', 'salesforce', 'local', '{"sync_role": "nobody_here"}')$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', 'salesforce', 'local', '{"sync_role": 7}')$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', 'salesforce', 'heroku', '{"region_url": "https://connect.example.com"}')$$);
SELECT count(*) AS connections FROM connect_guard.connection;

-- a connection with a log of its own refuses a table Connect logs: a second log nobody reads
SELECT connect_create_connection('own');
SELECT show_error($$SELECT connect_map_table('own', 'salesforce.account')$$);
-- a table of Connect's schema that Connect does not log may be mapped, but the schema cannot be adopted then
SELECT connect_map_table('own', 'sf2.sidecar');
SELECT show_error($$SELECT connect_adopt_schema('hc2', 'sf2', 'local')$$);
SELECT connect_unmap_table('own', 'sf2.sidecar');
SELECT count(*) AS capture_triggers_left FROM pg_trigger WHERE tgrelid = 'sf2.sidecar'::regclass;

-- adopted: the connection reads salesforce._trigger_log and maps every table Connect logs
SELECT connect_adopt_schema('hc', 'salesforce', 'local', '{"sync_role": "cg_sync"}') > 0 AS adopted;
SELECT connection, table_name, object_name, state FROM connect_mappings WHERE connection = 'hc' ORDER BY 2;
SELECT name, adapter, log_schema, sync_role FROM connect_guard.connection WHERE name = 'hc';
SELECT kind, detail - 'log' AS detail FROM connect_guard.event WHERE kind = 'schema_adopted';
-- once per schema and name
SELECT show_error($$SELECT connect_adopt_schema('hc_again', 'salesforce', 'local')$$);
SELECT show_error($$SELECT connect_adopt_schema('hc', 'sf2', 'local')$$);

-- mapping on an adopted connection adds no trigger, and takes only tables Connect logs in its schema
SELECT show_error($$SELECT connect_map_table('hc', 'plain.note')$$);
SELECT show_error($$SELECT connect_map_table('hc', 'salesforce._hcmeta')$$);
SELECT show_error($$SELECT connect_map_table('hc', 'salesforce.account')$$);
SELECT connect_unmap_table('hc', 'salesforce.contact');
SELECT connect_map_table('hc', 'salesforce.contact', 'Contact') > 0 AS mapped_again;
SELECT count(*) AS triggers_of_ours FROM pg_trigger WHERE tgname LIKE '\_connect\_guard%';
-- nothing of Connect's changed by adopting and mapping
SELECT connect_objects('salesforce') = :'salesforce_before' AS untouched_by_adoption;
-- batches are the own log's: Connect reads its log itself
SELECT show_error($$SELECT connect_next_batch('hc')$$);

-- marks: head (Connect's sequence), processed mark, backlog, failed
INSERT INTO salesforce.account (name) SELECT 'a' || g FROM generate_series(1, 5) g;
INSERT INTO salesforce.contact (name) VALUES ('c1'), ('c2');
UPDATE salesforce.account SET name = 'a1 again' WHERE id = 1;
SELECT id, state, action, table_name, record_id FROM salesforce._trigger_log ORDER BY id;
SELECT wait_mark('hc', 0);
SELECT connection, hwm_tick, hwm_id, hwm_txid, log_head, backlog, open_batch, log_kind, log_table,
       oldest_pending_at IS NOT NULL AS has_oldest_pending, failed, ids_left, ids_used_pct
  FROM connect_high_water_marks WHERE connection = 'hc';
-- Connect sends 1-3 and fails 4; 5 is PENDING (being sent); 6-8 are NEW
UPDATE salesforce._trigger_log SET state = 'SUCCESS', processed_at = now() WHERE id <= 3;
UPDATE salesforce._trigger_log SET state = 'FAILED', sf_result = 400,
       sf_message = 'REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]' WHERE id = 4;
UPDATE salesforce._trigger_log SET state = 'PENDING' WHERE id = 5;
SELECT wait_mark('hc', 4);
SELECT hwm_id, log_head, backlog, failed FROM connect_high_water_marks WHERE connection = 'hc';
-- a state Connect may add is taken as not done: the mark stays
UPDATE salesforce._trigger_log SET state = 'SUCCESS' WHERE id = 5;
UPDATE salesforce._trigger_log SET state = 'WEIRD' WHERE id = 6;
SELECT wait_mark('hc', 5);
UPDATE salesforce._trigger_log SET state = 'SUCCESS' WHERE id IN (6, 7);
SELECT wait_mark('hc', 7);
SELECT connection, state, hwm_id, log_head, backlog, log_table, failed, ids_used_pct FROM connect_status WHERE connection = 'hc';
-- what a plan records, and compares after a copy
SELECT connect_guard.high_water_marks() -> 'hc' AS plan_position;
SELECT connect_guard.log_positions_differ(connect_guard.high_water_marks()) AS differs;
SELECT connect_guard.log_positions_differ(jsonb_set(connect_guard.high_water_marks(), '{hc,max_id}', '99')) AS differs;
-- what the witness records
SELECT (connect_guard.database_state() -> 'connections' -> 'hc') - 'created_at' AS witnessed;
-- a monitoring role reads the marks, not the log
SET ROLE pg_monitor;
SELECT connection, hwm_id, backlog, failed FROM connect_high_water_marks WHERE connection = 'hc';
SELECT connection, table_name, record_id, action FROM connect_write_errors;
SELECT show_error($$SELECT count(*) FROM salesforce._trigger_log$$);
RESET ROLE;

-- write errors: FAILED entries of the log and of the archive, whatever their age
INSERT INTO salesforce._trigger_log_archive (id, txid, created_at, updated_at, processed_at, state, action, table_name,
                                             record_id, sfid, sf_result, sf_message)
VALUES (-1, 1, '2026-01-01 10:00', '2026-01-01 10:01', '2026-01-01 10:01', 'FAILED', 'UPDATE', 'contact', 9, '003000000000009AAA',
        400, 'FIELD_CUSTOM_VALIDATION_EXCEPTION: no');
SELECT connection, table_name, record_id, sfid, action, sf_message, failed_at IS NOT NULL AS has_time, entry_id, archived
  FROM connect_write_errors ORDER BY entry_id;
DELETE FROM salesforce._trigger_log_archive WHERE id = -1;

-- the id headroom: Connect's ids are int4; past 75 % an event and a WARNING, once
BEGIN;
SELECT 1 FROM connect_guard.connection WHERE name = 'hc' FOR UPDATE;   -- the worker waits for this transaction
SELECT setval('salesforce._trigger_log_id_seq', 1700000000) > 0 AS moved;
SELECT connect_guard.log_sources_cycle() > 0 AS ticked;
SELECT connect_guard.log_sources_cycle() > 0 AS ticked_again;
COMMIT;
SELECT ids_left, ids_used_pct FROM connect_high_water_marks WHERE connection = 'hc';
SELECT kind, detail FROM connect_guard.event WHERE kind = 'log_ids_running_out';
SELECT setval('salesforce._trigger_log_id_seq', 8) > 0 AS back;
SELECT connect_guard.log_sources_cycle() > 0 AS ticked;
SELECT log_ids_warned_at IS NULL AS warning_cleared FROM connect_guard.connection WHERE name = 'hc';

-- the rollback checks on an adopted log: Connect's sequence behind the witness, and its service ahead
SELECT connect_guard.database_state() AS d \gset
SELECT finding, severity, connection, detail
  FROM connect_guard.rollback_findings(jsonb_set(:'d'::jsonb, '{connections,hc,log_head}', '500'), :'d'::jsonb, NULL);
UPDATE connect_guard.connection SET remote_hwm = 600 WHERE name = 'hc';
SELECT finding, severity, connection, detail FROM connect_guard.rollback_findings(:'d'::jsonb, connect_guard.database_state(), NULL);
UPDATE connect_guard.connection SET remote_hwm = NULL WHERE name = 'hc';

-- a rollback: the incident lists the entries the restore brought back unfinished below Connect's
-- processed mark (here the witness says Connect had processed up to 8; 8 is NEW, 6 'WEIRD' was set back)
BEGIN;
UPDATE salesforce._trigger_log SET state = 'NEW' WHERE id = 6;
SET client_min_messages = error;     -- its WARNING names a fence id that depends on the tests before
SELECT connect_guard.rollback_act('[{"finding": "lsn_behind_witness", "severity": "rollback", "connection": null, "detail": "a test"}]',
                                  jsonb_set(:'d'::jsonb, '{connections,hc,processed_mark}', '8'), 'manual', false) AS incident \gset
RESET client_min_messages;
SELECT source, findings, tables, reloads_pending, fence_id IS NOT NULL AS fenced, restored_as_new
  FROM connect_rollback_incidents;
SELECT detail -> 'logs' AS logs FROM connect_guard.event WHERE kind = 'entries_restored_as_new';
-- what the server log said (the same note again)
SELECT connect_guard.note_restored_entries(:incident, (SELECT array_agg(mapping_id) FROM connect_guard.mapping),
                                           jsonb_set(:'d'::jsonb, '{connections,hc,processed_mark}', '8')) IS NOT NULL AS noted;
ROLLBACK;

-- the reload fence lets the sync service's own reload writes through: its role, with xmlbinary = 'hex'
SELECT connect_reload_mapping('hc', 'salesforce.account');
SELECT scope, fenced_tables FROM connect_fences;
SET ROLE cg_app;
SELECT show_error($$INSERT INTO salesforce.account (name) VALUES ('app')$$);
SET xmlbinary = 'hex';
SELECT show_error($$INSERT INTO salesforce.account (name) VALUES ('app imitating Connect, not its role')$$);
RESET ROLE;
SET ROLE cg_sync;
RESET xmlbinary;
SELECT show_error($$INSERT INTO salesforce.account (name) VALUES ('the sync role, as an application')$$);
SET xmlbinary = 'hex';
SELECT show_error($$DELETE FROM salesforce.account WHERE id = 2$$);
SELECT show_error($$INSERT INTO salesforce.account (id, name, sfid) VALUES (2, 'reloaded', '001000000000002AAA')$$);
SELECT show_error($$TRUNCATE salesforce.account$$);
RESET xmlbinary;
RESET ROLE;
-- a pause fence over the same table still stops it
SELECT connect_pause('hc', reason => 'disk swap');
SET ROLE cg_sync;
SET xmlbinary = 'hex';
SELECT show_error($$UPDATE salesforce.account SET name = 'during a pause' WHERE id = 2$$);
RESET xmlbinary;
RESET ROLE;
SELECT connect_resume('hc');
-- nothing the sync service wrote was logged; the reload is acknowledged by hand (local adapter)
SELECT count(*) AS logged_since FROM salesforce._trigger_log WHERE id > 8;
SELECT connect_mapping_reloaded('hc', 'salesforce.account');
SELECT count(*) AS fences_left FROM connect_fences;
SELECT count(*) AS rows_after_the_reload FROM salesforce.account;

-- the connection goes; Connect's objects stay as they were (the rows the test wrote aside)
SELECT connect_drop_connection('hc');
SELECT connect_drop_connection('own');
SET xmlbinary = 'hex';
DELETE FROM salesforce.account;
DELETE FROM salesforce.contact;
DELETE FROM salesforce._trigger_log;
RESET xmlbinary;
SELECT setval('salesforce._trigger_log_id_seq', 1, false) IS NOT NULL AS reset,
       setval('salesforce.account_id_seq', 1, false) IS NOT NULL AS reset,
       setval('salesforce.contact_id_seq', 1, false) IS NOT NULL AS reset;
SELECT connect_objects('salesforce') = :'salesforce_before' AS connect_objects_unchanged;

DROP FUNCTION connect_objects(text), wait_mark(text, bigint);
SET client_min_messages = warning;
DROP SCHEMA salesforce, sf2, noindex, plain, half, connect_fixture CASCADE;
DROP OWNED BY cg_app, cg_sync;
DROP ROLE cg_app, cg_sync;
DROP EXTENSION connect_guard;
DROP EXTENSION hstore;
DROP FUNCTION show_error(text);
