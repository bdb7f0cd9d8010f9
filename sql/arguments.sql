-- NULL and edge arguments of every connect_* function, one row each: the
-- exact error (SQLSTATE, message, hint), or what the documented meaning of
-- the value did.  The rule (README, Reference): NULL is refused with 22004
-- (null_value_not_allowed) before anything changes, except where the
-- reference says what it means; then the privileges of every function.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
-- outcome runs a statement and returns its first value, or its error
CREATE FUNCTION outcome(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_result text; v_state text; v_message text; v_hint text;
BEGIN
    EXECUTE stmt INTO v_result;
    RETURN 'returns ' || coalesce(v_result, 'NULL');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT;
    RETURN format('%s: %s (hint: %s)', v_state, v_message, coalesce(nullif(v_hint, ''), 'none'));
END
$$;
\set ECHO all
CREATE TABLE account (id int PRIMARY KEY, name text);
CREATE TABLE unmapped (id int PRIMARY KEY);
SELECT connect_create_connection('c');
SELECT connect_map_table('c', 'account');

-- every function of the API, so that a new one shows up here and gets its rows
SELECT p.oid::regprocedure AS function, p.proisstrict AS strict
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'connect_guard') AND d.deptype = 'e'
   AND p.proname LIKE 'connect\_%' AND p.pronamespace = 'public'::regnamespace
 ORDER BY p.proname;

CREATE TABLE matrix (row_no serial, call text);
INSERT INTO matrix (call) VALUES
    -- connections and mappings
    ($$SELECT connect_create_connection(NULL)$$),
    ($$SELECT connect_create_connection('x', NULL)$$),
    ($$SELECT connect_create_connection('x', 'local', NULL)$$),
    ($$SELECT connect_create_connection('')$$),
    ($$SELECT connect_drop_connection(NULL)$$),
    ($$SELECT connect_map_table(NULL, 'account')$$),
    ($$SELECT connect_map_table('c', NULL)$$),
    ($$SELECT connect_map_table('c', 0)$$),
    ($$SELECT connect_map_table('c', 'unmapped', '')$$),
    ($$SELECT connect_map_table('c', 'unmapped', NULL) > 0$$),        -- NULL: the table's name
    ($$SELECT object_name FROM connect_mappings WHERE table_relname = 'unmapped'$$),
    ($$SELECT connect_unmap_table(NULL, 'unmapped')$$),
    ($$SELECT connect_unmap_table('c', NULL)$$),
    ($$SELECT connect_unmap_table('c', 0)$$),
    ($$SELECT connect_unmap_table('c', 'unmapped')$$),
    ($$SELECT connect_grant_consumer(NULL, 'postgres')$$),
    ($$SELECT connect_grant_consumer('c', NULL)$$),
    ($$SELECT connect_grant_consumer('c', 'no_such_role')$$),
    ($$SELECT connect_revoke_consumer(NULL, 'postgres')$$),
    ($$SELECT connect_revoke_consumer('c', NULL)$$),
    ($$SELECT connect_revoke_consumer('c', 'no_such_role')$$),      -- not a consumer: false
    -- the consumer functions: NULL is "no batch" (what connect_next_batch returns when nothing is new)
    ($$SELECT connect_next_batch(NULL)$$),
    ($$SELECT count(*) FROM connect_batch_events(NULL)$$),
    ($$SELECT connect_finish_batch(NULL)$$),
    ($$SELECT count(*) FROM connect_batch_events(-1)$$),
    ($$SELECT connect_finish_batch(0)$$),
    -- pause, resume, fences
    ($$SELECT connect_pause(NULL)$$),
    ($$SELECT connect_pause('c', NULL)$$),
    ($$SELECT connect_pause('c', timeout => NULL)$$),
    ($$SELECT connect_pause('c', timeout => '1000000 years')$$),
    ($$SELECT connect_pause('c', timeout => '-1 s')$$),
    ($$SELECT connect_pause('c', cancel_writers => NULL)$$),
    ($$SELECT connect_pause('c', reason => NULL, timeout => '0')$$),     -- NULL: no reason given
    ($$SELECT paused_because FROM connect_status WHERE connection = 'c'$$),
    ($$SELECT connect_resume(NULL)$$),
    ($$SELECT connect_resume('c')$$),
    ($$SELECT connect_fence(NULL)$$),
    ($$SELECT connect_fence('mapped', timeout => NULL)$$),
    ($$SELECT connect_fence('mapped', timeout => '1000000 years')$$),
    ($$SELECT connect_fence('mapped', cancel_writers => NULL)$$),
    ($$SELECT connect_fence('mapped', reason => NULL) > 0$$),            -- NULL: 'maintenance window'
    ($$SELECT reason FROM connect_fences$$),
    ($$SELECT connect_unfence()$$),
    ($$SELECT connect_wait_state(NULL, 'IDLE')$$),
    ($$SELECT connect_wait_state('c', NULL)$$),
    ($$SELECT connect_wait_state('c', 'IDLE', NULL)$$),
    ($$SELECT connect_wait_state('c', 'IDLE', '1000000 years')$$),
    ($$SELECT connect_refresh(NULL)$$),
    ($$SELECT connect_set_mapping_remote_id(NULL, 'account', 'm-1')$$),
    ($$SELECT connect_set_mapping_remote_id('c', NULL, 'm-1')$$),
    ($$SELECT connect_set_mapping_remote_id('c', 0, 'm-1')$$),
    ($$SELECT connect_set_mapping_remote_id('c', 'account', '')$$),
    ($$SELECT connect_set_mapping_remote_id('c', 'account', NULL)$$),   -- NULL: forgets the id
    ($$SELECT coalesce(remote_id, 'no remote id') FROM connect_mappings WHERE table_relname = 'account'$$),
    -- reloads
    ($$SELECT connect_reload_mapping(NULL, 'account')$$),
    ($$SELECT connect_reload_mapping('c', NULL)$$),
    ($$SELECT connect_reload_mapping('c', 0)$$),
    ($$SELECT connect_reload_mapping('c', 'account', NULL)$$),
    ($$SELECT connect_reload_mapping('c', 'account', '1000000 years')$$),
    ($$SELECT connect_mapping_reloaded(NULL, 'account')$$),
    ($$SELECT connect_mapping_reloaded('c', NULL)$$),
    -- retention
    ($$SELECT connect_archive_consumed(NULL)$$),
    ($$SELECT connect_archive_consumed(0)$$),
    ($$SELECT connect_purge_archive(NULL)$$),
    ($$SELECT connect_purge_archive('7 days', NULL)$$),
    ($$SELECT connect_purge_archive('7 days', 0)$$),
    ($$SELECT connect_purge_archive('-1 day')$$),
    ($$SELECT connect_purge_archive('1000000 years')$$),                -- older than the calendar: nothing
    -- adopting a Connect-managed schema
    ($$SELECT connect_adopt_schema(NULL)$$),
    ($$SELECT connect_adopt_schema('a', NULL)$$),
    ($$SELECT connect_adopt_schema('a', 'salesforce', NULL)$$),
    ($$SELECT connect_adopt_schema('a', 'salesforce', 'local', NULL)$$),
    ($$SELECT connect_adopt_schema('a', 'no_such_schema', 'local')$$),
    -- configuration in Connect's format
    ($$SELECT connect_export_config(NULL)$$),
    ($$SELECT connect_import_config(NULL, '{"version": 1, "mappings": []}')$$),
    ($$SELECT connect_import_config('c', NULL)$$),
    ($$SELECT connect_import_config('c', '{"version": 1, "mappings": []}', NULL)$$),
    ($$SELECT connect_import_config('c', '{"version": 1, "mappings": []}', dry_run => NULL)$$),
    ($$SELECT connect_wait_config(NULL)$$),
    ($$SELECT connect_wait_config('c', NULL)$$),
    ($$SELECT connect_wait_config('c', '1000000 years')$$),
    -- schema changes
    ($$SELECT connect_save_mapping(NULL, 'account')$$),
    ($$SELECT connect_save_mapping('c', NULL)$$),
    ($$SELECT connect_save_mapping('c', 0)$$),
    ($$SELECT connect_save_mapping('c', 'account', NULL)$$),               -- NULL: reload when a change needs it
    ($$SELECT connect_unmap_dropped_table(NULL, 'public.gone')$$),
    ($$SELECT connect_unmap_dropped_table('c', NULL)$$),
    -- followers
    ($$SELECT connect_add_follower(NULL, 'host=f1')$$),
    ($$SELECT connect_add_follower('f1', NULL)$$),
    ($$SELECT connect_remove_follower(NULL)$$),
    -- upgrade plans (each refused before a plan is stored)
    ($$SELECT connect_prepare_upgrade(NULL)$$),
    ($$SELECT connect_prepare_upgrade('pg_upgrade', max_lag_bytes => NULL)$$),
    ($$SELECT connect_prepare_upgrade('pg_upgrade', timeout => NULL)$$),
    ($$SELECT connect_prepare_upgrade('pg_upgrade', timeout => '1000000 years')$$),
    ($$SELECT connect_prepare_upgrade('pg_upgrade', max_lag_bytes => -1)$$),
    ($$SELECT connect_prepare_upgrade('copy', follower => 'host=f1')$$),
    ($$SELECT connect_prepare_upgrade('follower', follower => 'host=f1', promote_with => NULL)$$),
    ($$SELECT connect_prepare_upgrade('follower', follower => 'host=f1', promote_with => 'patroni', ha_endpoint => NULL)$$),
    ($$SELECT connect_wait_upgrade(NULL, 'ready')$$),
    ($$SELECT connect_wait_upgrade(1, NULL)$$),
    ($$SELECT connect_wait_upgrade(1, 'ready', NULL)$$),
    ($$SELECT connect_wait_upgrade(1, 'ready', '1000000 years')$$),
    ($$SELECT connect_wait_upgrade(1, 'ready')$$),
    ($$SELECT connect_abort_upgrade(NULL)$$),
    ($$SELECT connect_promote_follower(NULL)$$),
    ($$SELECT connect_complete_upgrade(NULL)$$),
    ($$SELECT count(*) FROM connect_upgrade_timeline(NULL)$$),
    -- the preflight (1.1): it changes nothing, whatever it is given
    ($$SELECT count(*) FROM connect_preflight(NULL)$$),
    ($$SELECT count(*) FROM connect_preflight('pg_upgrade', max_lag_bytes => NULL)$$),
    ($$SELECT count(*) FROM connect_preflight('upgrade')$$),
    ($$SELECT count(*) FROM connect_preflight('follower', 'host=f1', max_lag_bytes => -1)$$),
    ($$SELECT count(*) FROM connect_preflight('copy', follower => 'host=f1')$$),
    ($$SELECT count(*) FROM connect_preflight('copy', connection => 'c')$$),
    ($$SELECT count(*) FROM connect_preflight('follower', NULL)$$),           -- NULL: the only registered follower
    ($$SELECT count(*) FROM connect_preflight('follower', 'f1')$$),
    ($$SELECT count(*) FROM connect_preflight('follower', 'host=f1 port')$$),
    ($$SELECT string_agg("check", ',') FROM connect_preflight('pause', connection => NULL)$$),   -- NULL: the only connection
    ($$SELECT count(*) FROM connect_preflight('pause', connection => 'nope')$$),
    ($$SELECT string_agg("check", ',') FROM connect_preflight('copy', NULL, connection => NULL)$$);

SELECT m.row_no, m.call, outcome(m.call) FROM (SELECT * FROM matrix ORDER BY row_no) m;

-- nothing above left a trace: no plan, no follower, the one connection, no fence
SELECT (SELECT count(*) FROM connect_guard.upgrade_plan) AS plans,
       (SELECT count(*) FROM connect_guard.follower) AS followers,
       (SELECT string_agg(connection, ',') FROM connect_connections) AS connections,
       (SELECT count(*) FROM connect_fences) AS fences;

-- Privileges.  No function is executable by PUBLIC; pg_monitor executes
-- only what the views it reads call; only the three consumer functions run
-- with their owner's rights (each checks connect_consumers).
SELECT p.oid::regprocedure AS function,
       string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, ', ') AS executable_by
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
  CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'connect_guard') AND d.deptype = 'e'
   AND a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
 GROUP BY p.oid ORDER BY p.oid::regprocedure::text;
SELECT p.oid::regprocedure AS security_definer, p.proconfig AS settings
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'connect_guard') AND d.deptype = 'e'
   AND p.prosecdef
 ORDER BY p.oid::regprocedure::text;
-- and every function pins its search_path, or is C (which resolves no names)
SELECT p.oid::regprocedure AS search_path_not_pinned
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'connect_guard') AND d.deptype = 'e'
   AND p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'c')
   AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
 ORDER BY p.oid::regprocedure::text;

DROP TABLE matrix;
SELECT connect_drop_connection('c');
DROP TABLE account, unmapped;
DROP FUNCTION outcome(text);
DROP EXTENSION connect_guard;
