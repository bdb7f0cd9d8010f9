-- The table owner can hide writes from the log: each way is noticed at once
-- (event triggers on ddl_command_end and sql_drop, the truncate watch, the
-- worker's check): the mapping goes to SCHEMA_CHANGED, with a
-- schema_changed event, a WARNING, a row of connect_schema_drift and
-- connect_status.schema_changes.  One block per attack; connect_save_mapping()
-- is the way out.  The worker's own cycle is tested by test/t/019_schema_watch.pl;
-- here its check runs by hand, in transactions that roll back.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE TABLE account (id int PRIMARY KEY, name text, sfid varchar(18));
CREATE TABLE unmapped (id int PRIMARY KEY, name text);
CREATE TABLE root (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE root_1 PARTITION OF root FOR VALUES FROM (0) TO (10);
CREATE TABLE root_2 PARTITION OF root FOR VALUES FROM (10) TO (20);
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'account', 'Account');
SELECT connect_map_table('sync', 'root', 'Root__c');

-- what is open now, and the events it made
CREATE FUNCTION changes() RETURNS TABLE (tbl regclass, state text, kind text, object text, expected text, actual text,
                                         needs_reload boolean, still_present boolean, detected_by text, detected_in text)
LANGUAGE sql AS $$
    SELECT table_name, mapping_state, kind, object, expected, actual, needs_reload, still_present, detected_by, detected_in
      FROM connect_schema_drift ORDER BY table_relname, kind, object
$$;
CREATE FUNCTION events_since(since bigint) RETURNS TABLE (kind text, detail jsonb)
LANGUAGE sql AS $$
    SELECT kind, detail - 'context' - 'took_ms' - 'fence_id' FROM connect_guard.event WHERE event_id > since ORDER BY event_id
$$;
-- accept whatever changed, without the WARNING and the reload
CREATE FUNCTION settle(tbl regclass) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    SET LOCAL client_min_messages = error;
    RETURN connect_save_mapping('sync', tbl, reload => false);
END
$$;
SELECT max(event_id) AS ev FROM connect_guard.event \gset

-- the capture trigger and its partition watch, as mapping installs them
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger WHERE tgname LIKE '\_connect\_guard%' ORDER BY 1, 2;
SELECT table_name, state, shape - 'partition_oids' AS shape FROM connect_guard.mapping ORDER BY mapping_id;

-- DDL of a table no one maps: no WARNING, no event
ALTER TABLE unmapped ADD COLUMN note text;
ALTER TABLE unmapped DISABLE TRIGGER ALL;
CREATE TABLE unmapped_child () INHERITS (unmapped);
DROP TABLE unmapped_child;
CREATE TEMP TABLE scratch (id int);
SELECT * FROM events_since(:ev);

-- 1. ALTER TABLE ... DISABLE TRIGGER on the capture trigger (the full message once)
ALTER TABLE account DISABLE TRIGGER _connect_guard_capture;
SELECT * FROM changes();
SELECT connection, state, schema_changes FROM connect_status;
SELECT * FROM events_since(:ev);
SELECT settle('account');
\set VERBOSITY terse

-- 2. DISABLE TRIGGER ALL: both capture triggers
ALTER TABLE account DISABLE TRIGGER ALL;
SELECT * FROM changes();
SELECT settle('account');

-- 3. ENABLE REPLICA: the trigger fires only for session_replication_role = replica
ALTER TABLE account ENABLE REPLICA TRIGGER _connect_guard_capture;
SELECT * FROM changes();
SELECT settle('account');

-- 4. ENABLE ALWAYS: nothing is hidden, but the trigger is not as installed
ALTER TABLE account ENABLE ALWAYS TRIGGER _connect_guard_capture;
SELECT * FROM changes();
SELECT settle('account');

-- 5. DROP TRIGGER, and ALTER TRIGGER ... RENAME
DROP TRIGGER _connect_guard_truncate ON account;
ALTER TRIGGER _connect_guard_capture ON account RENAME TO renamed;
SELECT * FROM changes();
DROP TRIGGER renamed ON account;
SELECT settle('account');

-- 6. CREATE OR REPLACE TRIGGER with other events, or logging under another table's name
CREATE OR REPLACE TRIGGER _connect_guard_capture AFTER INSERT ON account
    FOR EACH ROW EXECUTE FUNCTION connect_guard.capture('public', 'account');
SELECT kind, object, actual FROM changes();
SELECT settle('account');
CREATE OR REPLACE TRIGGER _connect_guard_capture AFTER INSERT OR UPDATE OR DELETE ON account
    FOR EACH ROW EXECUTE FUNCTION connect_guard.capture('public', 'unmapped');
SELECT kind, object, actual FROM changes();
SELECT settle('account');
-- a WHEN condition that skips rows
CREATE OR REPLACE TRIGGER _connect_guard_capture AFTER INSERT OR UPDATE OR DELETE ON account
    FOR EACH ROW WHEN (pg_trigger_depth() > 5) EXECUTE FUNCTION connect_guard.capture('public', 'account');
SELECT kind, object, actual FROM changes();
SELECT settle('account');

-- 7. a session with session_replication_role = replica is watched too (the event triggers are ENABLE ALWAYS)
SET session_replication_role = replica;
ALTER TABLE account DISABLE TRIGGER _connect_guard_capture;
RESET session_replication_role;
SELECT kind, object FROM changes();
SELECT settle('account');

-- 8. TRUNCATE of one partition: its rows leave the mapped table without a log entry
INSERT INTO root VALUES (1, 1, 'a'), (2, 15, 'b');
TRUNCATE root_1;
SELECT * FROM changes();
SELECT settle('root');
-- TRUNCATE of the mapped table is logged (one TRUNCATE entry), and its partitions are fine
SELECT count(*) AS truncates_before FROM connect_guard.trigger_log WHERE action = 'TRUNCATE' AND table_name = 'root' \gset
TRUNCATE root;
SELECT count(*) - :truncates_before AS truncates_logged FROM connect_guard.trigger_log
 WHERE action = 'TRUNCATE' AND table_name = 'root';
SELECT * FROM changes();
-- the mark lasts one statement: a partition truncated later in the same transaction is noticed
BEGIN;
TRUNCATE root;
INSERT INTO root VALUES (3, 3, 'c');
TRUNCATE root_1;
COMMIT;
SELECT kind, object FROM changes();
SELECT settle('root');
-- a session that is not captured (the sync service's own, connect_guard.capture off) is not watched either
SET connect_guard.capture = off;
TRUNCATE root_2;
RESET connect_guard.capture;
SELECT * FROM changes();

-- 9. partitions: DISABLE of a partition's clone, DETACH, DROP, ATTACH with rows; an empty one is accepted
ALTER TABLE root_2 DISABLE TRIGGER _connect_guard_capture;
SELECT kind, object FROM changes();
SELECT settle('root');
ALTER TABLE root DETACH PARTITION root_2;
CREATE TABLE root_3 PARTITION OF root FOR VALUES FROM (20) TO (30);
SELECT tgname FROM pg_trigger WHERE tgrelid = 'root_3'::regclass ORDER BY 1;
CREATE TABLE loaded (id int, k int, v text, PRIMARY KEY (id, k));
INSERT INTO loaded VALUES (7, 35, 'loaded elsewhere');
ALTER TABLE root ATTACH PARTITION loaded FOR VALUES FROM (30) TO (40);
DROP TABLE root_1;
SELECT kind, object, actual, needs_reload FROM changes();
SELECT settle('root');
SELECT shape -> 'partitions' AS partitions FROM connect_guard.mapping WHERE table_name = 'root';
-- a partition renamed is the same partition: nothing to report, the shape follows
ALTER TABLE root_3 RENAME TO root_three;
SELECT * FROM changes();
SELECT shape -> 'partitions' AS partitions FROM connect_guard.mapping WHERE table_name = 'root';
-- the detached table keeps no watch
SELECT tgname FROM pg_trigger WHERE tgrelid = 'root_2'::regclass;

-- 10. ALTER COLUMN ... TYPE ... USING rewrites every row without a log entry
INSERT INTO account VALUES (1, 'ada', NULL);
SELECT count(*) AS entries_before FROM connect_guard.trigger_log WHERE table_name = 'account' \gset
ALTER TABLE account ALTER COLUMN name TYPE varchar(100) USING upper(name);
SELECT count(*) - :entries_before AS entries_logged FROM connect_guard.trigger_log WHERE table_name = 'account';
SELECT kind, object, expected, actual, needs_reload FROM changes();
SELECT settle('account');

-- 11. an inheritance child: its rows are the table's, and no trigger of the table fires for them
CREATE TABLE account_child () INHERITS (account);
INSERT INTO account_child VALUES (100, 'hidden', NULL);
UPDATE account SET name = 'touched' WHERE id = 100;
SELECT count(*) AS child_entries FROM connect_guard.trigger_log WHERE record_id = '100';
SELECT kind, object, actual, needs_reload FROM changes();
SELECT show_error($$SELECT connect_save_mapping('sync', 'account')$$);
DROP TABLE account_child;
CREATE TABLE adopted (id int PRIMARY KEY, name varchar(100), sfid varchar(18));
ALTER TABLE adopted INHERIT account;
SELECT kind, object FROM changes();
ALTER TABLE adopted NO INHERIT account;
SELECT settle('account');
-- a table with inheritance children is mapped, and reported at once
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE parent_child () INHERITS (parent);
SELECT connect_map_table('sync', 'parent') > 0 AS mapped;
SELECT tbl, state, kind, object, detected_by, detected_in FROM changes() WHERE tbl = 'parent'::regclass;
SELECT connect_unmap_table('sync', 'parent');

-- 12. the table owner, an ordinary role with no right on connect_guard, is watched the same
CREATE ROLE ddl_watch_owner;
ALTER TABLE account OWNER TO ddl_watch_owner;
ALTER TABLE root_three OWNER TO ddl_watch_owner;
SET ROLE ddl_watch_owner;
ALTER TABLE account DISABLE TRIGGER _connect_guard_capture;
-- the truncate watch reports through a function the role may not call itself
TRUNCATE root_three;
SELECT count(*) FROM connect_guard.schema_change;
SELECT connect_guard.note_partition_truncated('root_three'::regclass);
RESET ROLE;
SELECT kind, object FROM changes();
SELECT settle('account');
SELECT settle('root');

-- 13. a superuser's change of the catalog: no event trigger sees it; the worker's check does
BEGIN;
UPDATE pg_trigger SET tgenabled = 'D' WHERE tgrelid = 'account'::regclass AND tgname = '_connect_guard_capture';
SELECT connect_guard.schema_watch_cycle() AS new_findings;
SELECT kind, object, detected_by FROM changes();
SELECT connect_guard.schema_watch_cycle() AS again;
ROLLBACK;

-- 14. a table never seen whole in this database (restored from a dump: pg_restore adds keys and
-- triggers after the mapping's rows) is not reported at once
BEGIN;
DELETE FROM connect_guard.mapping_verified WHERE mapping_id = 1;
ALTER TABLE account DISABLE TRIGGER _connect_guard_capture;
SELECT count(*) FROM connect_schema_drift;
SELECT connect_guard.schema_watch_cycle() AS within_five_minutes;
UPDATE connect_guard.mapping_verified SET first_checked_at = now() - interval '6 min' WHERE mapping_id = 1;
SELECT connect_guard.schema_watch_cycle() AS after_five_minutes;
ROLLBACK;

-- 15. DROP TABLE of the mapped table
CREATE TABLE lead (id int PRIMARY KEY, name text);
SELECT connect_map_table('sync', 'lead', 'Lead');
DROP TABLE lead;
SELECT kind, object, actual FROM changes();
SELECT show_error($$SELECT connect_unmap_dropped_table('sync', 'public.account')$$);
SELECT show_error($$SELECT connect_unmap_dropped_table('sync', 'no such')$$);
SELECT connect_unmap_dropped_table('sync', 'public.lead');
SELECT * FROM changes();

-- the way out: connect_save_mapping() puts the triggers back, accepts the table and asks for the reload
\set VERBOSITY default
SELECT max(event_id) AS ev FROM connect_guard.event \gset
ALTER TABLE account DISABLE TRIGGER _connect_guard_capture;
DROP TRIGGER _connect_guard_truncate ON account;
SELECT connect_save_mapping('sync', 'account');
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'account'::regclass ORDER BY 1;
SELECT table_relname, state FROM connect_mappings ORDER BY 1;
SELECT scope, reason, fenced_tables FROM connect_fences;
SELECT * FROM changes();
SELECT connect_mapping_reloaded('sync', 'account');
SELECT * FROM events_since(:ev);
SELECT kind, object, resolution FROM connect_guard.schema_change ORDER BY schema_change_id DESC LIMIT 3;
SELECT show_error($$SELECT connect_save_mapping('sync', NULL)$$);
-- nothing to save is fine; reload => false says what it skips
SELECT connect_save_mapping('sync', 'account');
ALTER TABLE account DISABLE TRIGGER _connect_guard_capture;
SELECT connect_save_mapping('sync', 'account', reload => false);

-- an adopted schema (its log is Connect's): the capture trigger to expect is Connect's logger trigger;
-- it is watched the same, and never repaired (connect_guard does not change Connect's objects)
\set VERBOSITY terse
SET client_min_messages = warning;
\set ECHO none
\i test/fixtures/connect_schema.sql
\set ECHO all
RESET client_min_messages;
SELECT connect_adopt_schema('hc', 'salesforce', 'local') > 0 AS adopted;
SELECT m.table_name, e.trigger_name, e.purpose, e.owned_by
  FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id),
       connect_guard.capture_triggers_expected(c, m) e
 WHERE c.name = 'hc' ORDER BY 1;
SELECT count(*) AS adopted_changes FROM connect_schema_drift WHERE connection = 'hc';
ALTER TABLE salesforce.account DISABLE TRIGGER hc_account_logtrigger;
SELECT tbl, state, kind, object, needs_reload FROM changes() WHERE tbl::text LIKE 'salesforce.%';
SELECT show_error($$SELECT connect_save_mapping('hc', 'salesforce.account')$$);
ALTER TABLE salesforce.account ENABLE TRIGGER hc_account_logtrigger;
SELECT connect_save_mapping('hc', 'salesforce.account', reload => false);
CREATE OR REPLACE TRIGGER hc_contact_logtrigger AFTER INSERT OR UPDATE OR DELETE ON salesforce.contact
    FOR EACH ROW WHEN (false) EXECUTE FUNCTION salesforce.hc_contact_logger();
SELECT tbl, kind, object, actual FROM changes() WHERE tbl::text LIKE 'salesforce.%';
SELECT connect_drop_connection('hc');
SET client_min_messages = warning;
DROP SCHEMA salesforce, connect_fixture CASCADE;
DROP EXTENSION hstore;
RESET client_min_messages;
\set VERBOSITY default

-- the worker's check holds no lock for long, and none of another transaction stops it
SELECT proconfig FROM pg_proc WHERE proname = 'schema_watch_cycle';
-- the event triggers fire in every session, whatever its session_replication_role
SELECT evtname, evtevent, evtenabled, evttags FROM pg_event_trigger ORDER BY 1;

-- DROP EXTENSION with mapped tables: the event triggers stand aside and go with it
DROP EXTENSION connect_guard CASCADE;
SELECT count(*) FROM pg_event_trigger;
SELECT count(*) FROM pg_trigger WHERE tgname LIKE '\_connect\_guard%';
DROP TABLE account, unmapped, root, root_2, loaded, adopted, parent CASCADE;
DROP ROLE ddl_watch_owner;
DROP FUNCTION changes(), events_since(bigint), settle(regclass), show_error(text);
