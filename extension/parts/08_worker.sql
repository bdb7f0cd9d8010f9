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

SELECT connect_guard.wake_launcher();
