-- Writes in a session with session_replication_role = replica, where a
-- capture trigger enabled in the origin role does not fire.  Each write is
-- a row of a matrix: the SQLSTATE it gets (55000: refused, ok: allowed),
-- whether the mapped tables are unchanged (a digest of their rows taken
-- before and after) and how many log entries it made.  A refused write
-- changes nothing and logs nothing; an allowed one to a mapped table logs
-- each row once, or is the sync service's own (capture off, Connect's
-- xmlbinary = hex), which is never logged.  Then the subscriptions: their
-- apply runs in the replica role too (test/t/024_logical_replication.pl
-- runs a real one).
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE SCHEMA app;
SET search_path = app, public;
CREATE TABLE account (id int PRIMARY KEY);
CREATE TABLE contact (id int PRIMARY KEY, name text, account_id int REFERENCES account);   -- mapped
CREATE TABLE deal (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);  -- mapped
CREATE TABLE deal_eu PARTITION OF deal FOR VALUES IN ('eu');
CREATE TABLE free (id int PRIMARY KEY);
CREATE RULE free_to_contact AS ON INSERT TO free DO ALSO INSERT INTO contact (id, name) VALUES (NEW.id, 'rule');
CREATE TABLE memo (id int PRIMARY KEY);
CREATE VIEW contact_view AS SELECT id, name FROM contact;
CREATE FUNCTION add_contact(p_id int) RETURNS void LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO contact (id, name) VALUES (p_id, 'function'); END $$;
INSERT INTO account VALUES (1);
INSERT INTO contact VALUES (1, 'a', 1), (2, 'b', 1);
INSERT INTO deal VALUES (1, 'eu');
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'app.contact');
SELECT connect_map_table('sync', 'app.deal');
SELECT add_contact(3);      -- its plan is cached in the origin role

-- mapped_state digests what a refused write must not change
CREATE FUNCTION public.mapped_state() RETURNS text LANGUAGE plpgsql AS $$
DECLARE v_adopted text;
BEGIN
    IF to_regclass('salesforce.account') IS NOT NULL THEN
        SELECT string_agg(a::text, ',' ORDER BY a::text) INTO v_adopted FROM salesforce.account a;
    END IF;
    RETURN md5(concat_ws('|',
        (SELECT string_agg(c::text, ',' ORDER BY c::text) FROM app.contact c),
        (SELECT string_agg(d::text, ',' ORDER BY d::text) FROM app.deal d),
        v_adopted));
END
$$;
-- log_entries: connect_guard's log and, once there is one, the adopted schema's (Connect's)
CREATE FUNCTION public.log_entries() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v_connect bigint := 0;
BEGIN
    IF to_regclass('salesforce._trigger_log') IS NOT NULL THEN
        SELECT count(*) INTO v_connect FROM salesforce._trigger_log;
    END IF;
    RETURN (SELECT count(*) FROM connect_guard.trigger_log) + v_connect;
END
$$;

-- attempt runs a write in a subtransaction with the given session_replication_role
CREATE FUNCTION public.attempt(p_write text, p_stmt text, p_role text DEFAULT 'replica',
                               OUT write text, OUT role text, OUT outcome text, OUT unchanged boolean,
                               OUT logged bigint)
LANGUAGE plpgsql SET client_min_messages = error AS $$
DECLARE
    v_before text := public.mapped_state();
    v_entries bigint := public.log_entries();
BEGIN
    write := p_write;
    role := p_role;
    outcome := 'ok';
    BEGIN
        PERFORM set_config('session_replication_role', p_role, true);
        EXECUTE p_stmt;
        PERFORM set_config('session_replication_role', 'origin', true);
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE;
    END;
    unchanged := v_before = public.mapped_state();
    logged := public.log_entries() - v_entries;
END;
$$;

-- 1. Every way to write a mapped table, in the replica role: refused, nothing changed, nothing logged
SELECT a.* FROM (VALUES
    ('INSERT', $$INSERT INTO contact VALUES (10, 'x', 1)$$),
    ('UPDATE', $$UPDATE contact SET name = 'x'$$),
    ('DELETE', $$DELETE FROM contact WHERE id = 1$$),
    ('MERGE', $$MERGE INTO contact c USING (VALUES (1)) v(id) ON c.id = v.id WHEN MATCHED THEN DELETE$$),
    ('INSERT ... ON CONFLICT DO UPDATE', $$INSERT INTO contact VALUES (1, 'y', 1) ON CONFLICT (id) DO UPDATE SET name = 'y'$$),
    ('writable CTE', $$WITH w AS (DELETE FROM contact RETURNING 1) SELECT count(*) FROM w$$),
    ('COPY FROM', $$COPY contact FROM PROGRAM 'printf "11\tcopy\t1\n"'$$),
    ('TRUNCATE', $$TRUNCATE contact$$),
    ('TRUNCATE ... CASCADE into it', $$TRUNCATE account CASCADE$$),
    ('INSERT into the partitioned table', $$INSERT INTO deal VALUES (2, 'eu')$$),
    ('INSERT into its partition', $$INSERT INTO deal_eu VALUES (3, 'eu')$$),
    ('UPDATE the partitioned table', $$UPDATE deal SET id = 4$$),
    ('COPY into the partitioned table', $$COPY deal FROM PROGRAM 'printf "5\teu\n"'$$),
    ('TRUNCATE the partitioned table', $$TRUNCATE deal$$),
    ('TRUNCATE one partition (truncate watch)', $$TRUNCATE deal_eu$$),
    ('an updatable view', $$INSERT INTO contact_view VALUES (13, 'view')$$),
    ('a PL/pgSQL function (plan cached in the origin role)', $$SELECT add_contact(14)$$),
    ('with connect_guard.fence_bypass on', $$SET LOCAL connect_guard.fence_bypass = on; INSERT INTO contact VALUES (15, 'x', 1)$$)
) v(write, stmt), LATERAL public.attempt(v.write, v.stmt) a;
SELECT show_error($$SET LOCAL session_replication_role = replica; INSERT INTO app.contact VALUES (10, 'x', 1)$$);
SELECT show_error($$SET LOCAL session_replication_role = replica; INSERT INTO app.deal VALUES (2, 'eu')$$);
SELECT show_error($$SET LOCAL session_replication_role = replica; TRUNCATE app.deal_eu$$);

-- 2. What goes through: writes the replica role does not hide, and the sync service's own
SELECT a.* FROM (VALUES
    ('INSERT into an unmapped table', $$INSERT INTO memo VALUES (1)$$, 'replica'),
    ('a rule writing it (rules enabled in the origin role do not fire)', $$INSERT INTO free VALUES (12)$$, 'replica'),
    ('SELECT', $$SELECT count(*) FROM contact$$, 'replica'),
    ('EXPLAIN INSERT (not run)', $$EXPLAIN INSERT INTO contact VALUES (20, 'x', 1)$$, 'replica'),
    ('INSERT in the origin role', $$INSERT INTO contact VALUES (21, 'x', 1)$$, 'origin'),
    ('INSERT in the local role', $$INSERT INTO contact VALUES (22, 'x', 1)$$, 'local'),
    ('INSERT with capture off (the sync service)', $$SET LOCAL connect_guard.capture = off; INSERT INTO contact VALUES (23, 'x', 1)$$, 'replica')
) v(write, stmt, role), LATERAL public.attempt(v.write, v.stmt, v.role) a;
-- a capture trigger enabled ALWAYS (or REPLICA) fires in the replica role: each row logged once
SET client_min_messages = error;        -- the schema watch's WARNING: trigger_always
ALTER TABLE contact ENABLE ALWAYS TRIGGER _connect_guard_capture, ENABLE ALWAYS TRIGGER _connect_guard_truncate;
ALTER TABLE deal ENABLE ALWAYS TRIGGER _connect_guard_capture;
RESET client_min_messages;
SELECT a.* FROM (VALUES
    ('INSERT, capture trigger ALWAYS', $$INSERT INTO contact VALUES (30, 'x', 1), (31, 'y', 1)$$),
    ('UPDATE, capture trigger ALWAYS', $$UPDATE contact SET name = 'z' WHERE id IN (30, 31)$$),
    ('COPY FROM, capture trigger ALWAYS', $$COPY contact FROM PROGRAM 'printf "32\tcopy\t1\n"'$$),
    ('INSERT into the partitioned table, ALWAYS', $$INSERT INTO deal VALUES (6, 'eu')$$),
    ('TRUNCATE one partition, its watch still origin', $$TRUNCATE deal_eu$$)
) v(write, stmt), LATERAL public.attempt(v.write, v.stmt) a;
SET client_min_messages = error;
ALTER TABLE contact ENABLE REPLICA TRIGGER _connect_guard_capture;
RESET client_min_messages;
SELECT * FROM public.attempt('INSERT, capture trigger REPLICA', $$INSERT INTO contact VALUES (33, 'x', 1)$$);
SELECT connect_save_mapping('sync', 'app.contact', reload => false) IS NOT NULL AS saved;
SELECT connect_save_mapping('sync', 'app.deal', reload => false) IS NOT NULL AS saved;
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger
 WHERE tgrelid IN ('app.contact'::regclass, 'app.deal'::regclass, 'app.deal_eu'::regclass) AND NOT tgisinternal
 ORDER BY 1, 2;

-- 3. An adopted Connect schema: Connect's logger trigger skips xmlbinary = hex (Connect's own sessions)
\set VERBOSITY terse
SET client_min_messages = warning;
\set ECHO none
\i test/fixtures/connect_schema.sql
\set ECHO all
RESET client_min_messages;
\set VERBOSITY default
SELECT connect_adopt_schema('hc', 'salesforce', 'local') > 0 AS adopted;
SELECT a.* FROM (VALUES
    ('INSERT, Connect''s logger, xmlbinary base64', $$INSERT INTO salesforce.account (name) VALUES ('x')$$),
    ('INSERT, Connect''s logger, xmlbinary hex (Connect)', $$SET LOCAL xmlbinary = hex; INSERT INTO salesforce.account (name) VALUES ('x')$$)
) v(write, stmt), LATERAL public.attempt(v.write, v.stmt) a;
SELECT show_error($$SET LOCAL session_replication_role = replica; UPDATE salesforce.account SET name = 'y'$$);
SELECT connect_drop_connection('hc');
SET client_min_messages = warning;
DROP SCHEMA salesforce, connect_fixture CASCADE;
DROP EXTENSION hstore;
RESET client_min_messages;

-- 4. Subscriptions: a mapped table among a subscription's tables (pg_subscription_rel) with a
-- trigger enabled in the origin role.  Without a publisher here, the table is put among them by hand,
-- in a transaction that is rolled back (the worker must not see it).
SET client_min_messages = warning;
CREATE SUBSCRIPTION cg_sub CONNECTION 'dbname=cg_nowhere' PUBLICATION cg_pub WITH (connect = false);
RESET client_min_messages;
BEGIN;
INSERT INTO pg_subscription_rel (srsubid, srrelid, srsubstate, srsublsn)
SELECT oid, 'app.contact'::regclass, 'r', NULL FROM pg_subscription WHERE subname = 'cg_sub';
SELECT kind, object, expected, actual, needs_reload
  FROM connect_guard.mapping m, connect_guard.mapping_findings(m) f
 WHERE m.table_name = 'contact' ORDER BY 2;
SELECT connect_guard.mapping_fingerprints() IS NOT NULL AS fingerprint_reads_it;
-- enabling the subscription would start its apply: refused
SELECT show_error($$ALTER SUBSCRIPTION cg_sub ENABLE$$);
SELECT subenabled FROM pg_subscription WHERE subname = 'cg_sub';
-- the schema watch reports it (as the worker's cycle would), and saving enables the triggers ALWAYS
SET client_min_messages = error;
SELECT connect_guard.schema_changes_record(NULL, 'worker', 'the worker''s check') AS findings;
RESET client_min_messages;
SELECT kind, object, needs_reload, detected_by FROM connect_schema_drift ORDER BY object;
SELECT state FROM connect_mappings WHERE table_relname = 'contact';
SELECT connect_save_mapping('sync', 'app.contact', reload => false) AS state;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'app.contact'::regclass AND NOT tgisinternal ORDER BY 1;
SELECT count(*) AS findings FROM connect_guard.mapping m, connect_guard.mapping_findings(m) f
 WHERE m.table_name = 'contact';
-- with the triggers ALWAYS, the subscription may apply: its rows are logged
ALTER SUBSCRIPTION cg_sub ENABLE;
ALTER SUBSCRIPTION cg_sub DISABLE;
ROLLBACK;
-- without the table among its tables, the subscription is none of the watch's business
SELECT count(*) AS findings FROM connect_guard.mapping m, connect_guard.mapping_findings(m) f;
ALTER SUBSCRIPTION cg_sub SET (slot_name = NONE);
DROP SUBSCRIPTION cg_sub;
-- the event triggers, ALWAYS: also in sessions with session_replication_role = replica
SELECT evtname, evtevent, evtenabled, evttags FROM pg_event_trigger WHERE evtname LIKE '%subscription%';

SET client_min_messages = error;       -- the schema watch's WARNINGs: table_dropped
DROP SCHEMA app CASCADE;
RESET client_min_messages;
RESET search_path;
DROP FUNCTION public.attempt(text, text, text), public.mapped_state(), public.log_entries(), show_error(text);
DROP EXTENSION connect_guard;
