/* ------------------------------------------------------------------------
 * The background worker: how SQL reaches it.
 * ------------------------------------------------------------------------ */

-- wakes this database's worker when the calling transaction commits
CREATE FUNCTION connect_guard.wake_worker()
RETURNS boolean LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_wake_worker';

-- asks the launcher for a worker in this database (CREATE EXTENSION calls it)
CREATE FUNCTION connect_guard.wake_launcher()
RETURNS boolean LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_wake_launcher';

-- the calling transaction moves an upgrade plan: wake connect_wait_upgrade() at commit
CREATE FUNCTION connect_guard.plan_changed()
RETURNS void LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_plan_changed';

-- how many plan moves have committed on this server; waiting for the next one
CREATE FUNCTION connect_guard.plan_generation()
RETURNS bigint LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_plan_generation';

CREATE FUNCTION connect_guard.wait_plan_change(seen bigint, timeout_ms integer)
RETURNS bigint LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_wait_plan_change';

CREATE FUNCTION connect_guard.worker_available()
RETURNS boolean LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'connect_guard_worker_available';

CREATE FUNCTION connect_guard.worker_pid()
RETURNS integer LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_worker_pid';

/*
 * connect_guard.require_worker stops a call that needs the worker when the
 * library was not preloaded, rather than queueing work nobody will do.
 */
CREATE FUNCTION connect_guard.require_worker(p_what text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT connect_guard.worker_available() THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('%s needs the connect_guard background worker', p_what),
            DETAIL = 'connect_guard was not loaded through shared_preload_libraries, so no worker runs.',
            HINT = 'Add connect_guard to shared_preload_libraries in postgresql.conf and restart the server.';
    END IF;
END;
$$;

CREATE VIEW connect_worker AS
SELECT a.pid, a.backend_type, a.state, a.query AS activity, a.backend_start, a.state_change
  FROM pg_stat_activity a
 WHERE a.pid = connect_guard.worker_pid();

/*
 * A CREATE EXTENSION run by a session that loads a dump (pg_restore, psql on
 * a plain dump) is followed by the rows of the extension's tables: the
 * worker writes nothing until that session ends (worker.c), or it would
 * take their keys.
 */
CREATE FUNCTION connect_guard.hold_worker_for_restore()
RETURNS boolean LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_hold_worker_for_restore';
SELECT connect_guard.hold_worker_for_restore();

SELECT connect_guard.wake_launcher();
