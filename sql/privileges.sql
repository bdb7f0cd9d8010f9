-- Privileges: nothing for PUBLIC; applications are captured but cannot
-- touch the log; the sync service needs only what it is granted.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
CREATE ROLE cg_regress_app LOGIN;
CREATE ROLE cg_regress_sync LOGIN;
CREATE TABLE account (id int PRIMARY KEY, name text);
GRANT SELECT, INSERT, UPDATE, DELETE ON account TO cg_regress_app, cg_regress_sync;
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'account');

-- no function of the extension is executable by PUBLIC
SELECT p.oid::regprocedure AS executable_by_public
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'connect_guard')
   AND d.deptype = 'e'
   AND has_function_privilege('public', p.oid, 'EXECUTE');

-- the application's writes are captured, but it cannot read or forge the log
SET SESSION AUTHORIZATION cg_regress_app;
INSERT INTO account VALUES (1, 'app');
UPDATE account SET name = 'app2';
SELECT count(*) FROM connect_guard.trigger_log;
INSERT INTO connect_guard.trigger_log (txid, action, table_schema, table_name) VALUES ('1', 'INSERT', 'public', 'account');
DELETE FROM connect_guard.trigger_log;
SELECT connect_next_batch('sync');
SELECT connect_map_table('sync', 'account');
-- and it cannot switch capture off to hide its writes
SET connect_guard.capture = off;
DELETE FROM account;
RESET SESSION AUTHORIZATION;
SELECT action, record_id FROM connect_guard.trigger_log ORDER BY id;

-- the sync service: a consumer of its connection (connect_grant_consumer
-- grants it the consumer functions) with the right to skip capture of its
-- own writes, nothing else (sql/consumers.sql has the rest)
SELECT connect_grant_consumer('sync', 'cg_regress_sync');
GRANT SET ON PARAMETER connect_guard.capture TO cg_regress_sync;
SET SESSION AUTHORIZATION cg_regress_sync;
SELECT connect_next_batch('sync') AS b \gset
SELECT action, record_id FROM connect_batch_events(:b);
SELECT connect_finish_batch(:b);
SET connect_guard.capture = off;
INSERT INTO account VALUES (2, 'from salesforce');
RESET connect_guard.capture;
SELECT connect_next_batch('sync') AS nothing_echoed;
SELECT connect_drop_connection('sync');
RESET SESSION AUTHORIZATION;

-- monitoring roles may read the views
SELECT has_table_privilege('pg_monitor', 'connect_high_water_marks', 'SELECT') AS monitor_reads,
       has_table_privilege('public', 'connect_high_water_marks', 'SELECT') AS public_reads;

REVOKE SET ON PARAMETER connect_guard.capture FROM cg_regress_sync;
DROP TABLE account;
DROP EXTENSION connect_guard;
DROP ROLE cg_regress_app, cg_regress_sync;
