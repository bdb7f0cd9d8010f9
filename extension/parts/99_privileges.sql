/* ------------------------------------------------------------------------
 * Privileges: nothing for PUBLIC; monitoring roles may read the views
 * (which redact secrets); connect_grant_consumer() grants the consumer
 * functions to the sync service's role, for one connection at a time.
 * ------------------------------------------------------------------------ */

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid FROM pg_proc p
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
         WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'connect_guard')
    LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);     -- functions and procedures
    END LOOP;
END;
$$;

GRANT SELECT ON connect_connections, connect_mappings, connect_high_water_marks, connect_fences, connect_status,
      connect_worker, connect_upgrade_status, connect_rollback_incidents, connect_write_errors,
      connect_consumers, connect_schema_drift TO pg_monitor;
-- the views call these with the reader's rights (log_status, write_errors and schema_change_present are
-- SECURITY DEFINER: they read Connect's log, or the mapped tables' catalog, for the monitoring role, which may not)
GRANT EXECUTE ON FUNCTION connect_guard.redact(jsonb), connect_guard.fence_list(),
      connect_guard.fence_relations(), connect_guard.worker_pid(), connect_guard.log_status(integer),
      connect_guard.write_errors(), connect_guard.mapping_relid(connect_guard.mapping),
      connect_guard.schema_change_present(integer) TO pg_monitor;
