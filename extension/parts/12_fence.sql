/* ------------------------------------------------------------------------
 * The write fence.  The fence itself is shared memory kept by fence.c;
 * these functions decide which tables it covers, wait for the writers
 * already in flight, and raise and lower the maintenance window's fence.
 * A connection's pause raises its fence through 54_pause.sql.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_guard.fence_available()
RETURNS boolean LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_available';

CREATE FUNCTION connect_guard.fence_raise(scope text, connection_id integer, connection text,
                                          reason text, relids oid[], relconnections text[])
RETURNS integer LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_fence_raise';

CREATE FUNCTION connect_guard.fence_lower(fence_id integer)
RETURNS boolean LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_lower';

CREATE FUNCTION connect_guard.fence_set_relations(fence_id integer, relids oid[], relconnections text[])
RETURNS boolean LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_set_relations';

CREATE FUNCTION connect_guard.fence_list(
    OUT fence_id integer, OUT scope text, OUT connection_id integer, OUT connection text,
    OUT reason text, OUT since timestamptz, OUT raised_by name, OUT tables integer)
RETURNS SETOF record LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_list';

CREATE FUNCTION connect_guard.fence_relations(OUT fence_id integer, OUT relid oid, OUT connections text)
RETURNS SETOF record LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_relations';

/*
 * connect_guard.require_fence stops a call that would raise a fence where
 * none can be raised, before it changes anything (fence.c raises the same
 * error itself).
 */
CREATE FUNCTION connect_guard.require_fence()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT connect_guard.fence_available() THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'the connect_guard write fence is not available',
            DETAIL = 'connect_guard was not loaded through shared_preload_libraries.',
            HINT = 'Add connect_guard to shared_preload_libraries in postgresql.conf and restart the server.';
    END IF;
END;
$$;

/*
 * connect_guard.fence_targets returns the tables a fence covers: the mapped
 * tables of one connection (or of every connection, for NULL; or of the
 * given mappings only) with all their partitions, each with the names of
 * the connections that map it.
 */
CREATE FUNCTION connect_guard.fence_targets(p_connection_id integer, p_mapping_ids integer[] DEFAULT NULL,
                                            OUT relids oid[], OUT relconnections text[])
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(relid), '{}'), coalesce(array_agg(names), '{}')
      FROM (SELECT t.relid, string_agg(DISTINCT c.name, ', ') AS names
              FROM connect_guard.mapping m
              JOIN connect_guard.connection c USING (connection_id)
              CROSS JOIN LATERAL to_regclass(format('%I.%I', m.table_schema, m.table_name)) root
              -- pg_partition_tree() lists nothing for a table that is not partitioned
              CROSS JOIN LATERAL (SELECT root::oid UNION SELECT p.relid FROM pg_partition_tree(root) p) t(relid)
             WHERE (p_connection_id IS NULL OR m.connection_id = p_connection_id)
               AND (p_mapping_ids IS NULL OR m.mapping_id = ANY (p_mapping_ids))
               AND root IS NOT NULL
             GROUP BY t.relid) targets;
$$;

/*
 * connect_guard.fence_refresh gives every connection and 'mapped' fence of
 * this database the tables it must cover now; map and unmap call it, so a
 * table mapped while its connection is paused is fenced at once.
 */
CREATE FUNCTION connect_guard.fence_refresh()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    t record;
BEGIN
    FOR f IN SELECT * FROM connect_guard.fence_list() WHERE scope IN ('connection', 'mapped') LOOP
        t := connect_guard.fence_targets(CASE WHEN f.scope = 'connection' THEN f.connection_id END);
        PERFORM connect_guard.fence_set_relations(f.fence_id, t.relids, t.relconnections);
    END LOOP;
END;
$$;

CREATE FUNCTION connect_guard.wait_for_lockers(relids oid[])
RETURNS void LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_wait_for_lockers';

/*
 * connect_guard.writers describes the other transactions that hold a write
 * lock on one of p_relids, for error messages, and gives their pids.
 */
CREATE FUNCTION connect_guard.writers(p_relids oid[], OUT pids integer[], OUT description text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT array_agg(DISTINCT l.pid) FILTER (WHERE l.pid IS NOT NULL),
           string_agg(DISTINCT coalesce('pid ' || l.pid || ' (transaction open for '
                                        || date_trunc('second', clock_timestamp() - a.xact_start) || ')',
                                        'prepared transaction ' || l.virtualtransaction), ', ')
      FROM pg_locks l
      LEFT JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'relation'
       AND l.granted
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.relation = ANY (p_relids)
       AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
       AND l.pid IS DISTINCT FROM pg_backend_pid();
$$;

/*
 * connect_guard.database_tables: what a database-wide fence waits for, every
 * ordinary table but temporary ones and our own catalog.
 */
CREATE FUNCTION connect_guard.database_tables()
RETURNS oid[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(c.oid), '{}') FROM pg_class c
     WHERE c.oid >= 16384 AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
       AND c.relnamespace <> 'connect_guard'::regnamespace;
$$;

/*
 * connect_guard.wait_for_writers returns once no other transaction holds a
 * write lock on the fenced tables, so that the trigger log head is final.
 * Such a transaction wrote before the fence went up (new writes are already
 * refused).  With p_cancel the writers are terminated instead of waited
 * for; past p_deadline the call fails, names them, and (by aborting) lowers
 * the fence it was raising.
 */
CREATE FUNCTION connect_guard.wait_for_writers(p_relids oid[], p_deadline timestamptz, p_cancel boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w record;
    v_lock_timeout text := current_setting('lock_timeout');
BEGIN
    IF p_cancel THEN
        LOOP
            w := connect_guard.writers(p_relids);
            EXIT WHEN w.pids IS NULL OR clock_timestamp() > p_deadline;
            PERFORM pg_terminate_backend(pid) FROM unnest(w.pids) pid;
            PERFORM pg_sleep(0.01);
        END LOOP;
    END IF;
    PERFORM set_config('lock_timeout',
                       greatest(1, ceil(extract(epoch FROM p_deadline - clock_timestamp()) * 1000))::bigint::text,
                       true);
    BEGIN
        PERFORM connect_guard.wait_for_lockers(p_relids);
    EXCEPTION WHEN lock_not_available THEN
        w := connect_guard.writers(p_relids);
        RAISE EXCEPTION USING
            ERRCODE = 'lock_not_available',
            MESSAGE = 'timed out waiting for transactions that write to fenced tables',
            DETAIL = format('Still writing: %s. The fence was not raised.', coalesce(w.description, 'none left')),
            HINT = 'Let those transactions finish and try again with a longer timeout, or pass cancel_writers => true to terminate them.';
    END;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
END;
$$;

/*
 * connect_fence: a maintenance window's fence, over the mapped tables of
 * every connection ('mapped') or every table of the database ('database').
 */
CREATE FUNCTION connect_fence(scope text DEFAULT 'mapped', reason text DEFAULT NULL,
                              timeout interval DEFAULT '30 s', cancel_writers boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    v_relids oid[];
    v_connections text[] := '{}';
    v_fence integer;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_fence()');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''30 s''');
    PERFORM connect_guard.require_not_null(cancel_writers, 'cancel_writers',
        'Pass false (the default) to wait for the writers in flight, or true to terminate them.');
    PERFORM connect_guard.require_not_null(scope, 'scope',
        'Use ''mapped'' (the tables of every connection) or ''database'' (every table of this database).');
    IF scope NOT IN ('mapped', 'database') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown fence scope %s', quote_literal(scope)),
            HINT = 'Use ''mapped'' (the tables of every connection) or ''database'' (every table of this database).';
    END IF;
    SELECT * INTO f FROM connect_guard.fence_list() l WHERE l.scope IN ('mapped', 'database');
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('a maintenance fence is already up (fence %s, scope %s)', f.fence_id, f.scope),
            DETAIL = format('Raised by %s at %s: %s.', f.raised_by, f.since, coalesce(f.reason, 'no reason given')),
            HINT = 'Lower it with connect_unfence() before raising another.';
    END IF;

    IF scope = 'mapped' THEN
        SELECT * INTO v_relids, v_connections FROM connect_guard.fence_targets(NULL);
    END IF;
    v_fence := connect_guard.fence_raise(scope, NULL, NULL, coalesce(reason, 'maintenance window'),
                                         coalesce(v_relids, '{}'), v_connections);
    PERFORM connect_guard.wait_for_writers(coalesce(v_relids, connect_guard.database_tables()),
                                           clock_timestamp() + timeout, cancel_writers);
    PERFORM connect_guard.log_event(NULL, 'fence_raised',
        jsonb_build_object('fence_id', v_fence, 'scope', scope, 'reason', reason));
    RETURN v_fence;
END;
$$;

CREATE FUNCTION connect_unfence()
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    v_lowered integer := 0;
BEGIN
    FOR f IN SELECT * FROM connect_guard.fence_list() l WHERE l.scope IN ('mapped', 'database', 'reload') LOOP
        PERFORM connect_guard.fence_lower(f.fence_id);
        PERFORM connect_guard.log_event(NULL, 'fence_lowered',
            jsonb_build_object('fence_id', f.fence_id, 'scope', f.scope,
                               'fenced_for_ms', round(extract(epoch FROM clock_timestamp() - f.since) * 1000)));
        v_lowered := v_lowered + 1;
    END LOOP;
    IF v_lowered = 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'no maintenance fence is up',
            HINT = 'See connect_fences; a paused connection''s fence is lowered by connect_resume().';
    END IF;
    RETURN v_lowered;
END;
$$;
