/* ------------------------------------------------------------------------
 * Applying a pause, the same for every adapter: connect_pause() applies it
 * at once for a local consumer; request_apply() (56_request_states.sql)
 * applies it once a remote sync service has paused.  A connection pauses
 * only when no batch is open, as Connect pauses only when idle; then its
 * mapped tables are fenced (block_writes) and the writers in flight have
 * ended, so that the trigger log head is final.
 * ------------------------------------------------------------------------ */

-- connect_guard.connection_open_batch: the unfinished batch of a connection, or NULL
CREATE FUNCTION connect_guard.connection_open_batch(p_connection_id integer)
RETURNS connect_guard.batch
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM connect_guard.batch WHERE connection_id = p_connection_id AND finished_at IS NULL;
$$;

/*
 * connect_guard.require_no_open_batch raises, with
 * object_not_in_prerequisite_state, when the connection has an open batch:
 * the pause waits for its consumer to finish it.
 */
CREATE FUNCTION connect_guard.require_no_open_batch(p_connection_id integer, p_connection text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b connect_guard.batch := connect_guard.connection_open_batch(p_connection_id);
BEGIN
    IF b.batch_id IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('cannot pause connection "%s": batch %s has been open for %s s',
                             p_connection, b.batch_id,
                             round(extract(epoch FROM clock_timestamp() - b.taken_at)::numeric, 1)),
            DETAIL = format('Connect pauses only when idle: the batch taken by "%s" at %s must be finished first.',
                            b.taken_by, b.taken_at),
            HINT = 'Let the consumer call connect_finish_batch(), or call connect_pause() with a longer timeout.';
    END IF;
END;
$$;

/*
 * connect_guard.pause_apply pauses connection c, which the caller has
 * locked with no batch open: with p_block_writes it raises the
 * connection's fence (unless one is up) and waits for the writers in
 * flight until p_deadline (terminating them with p_cancel_writers), then
 * moves the connection to PAUSED and logs 'paused' with p_detail and the
 * time since p_started.  Returns the fence id.  On an error the fence it
 * raised is lowered before the error goes on: a fence is shared memory,
 * which a rolled back subtransaction of the caller would not lower.
 */
CREATE FUNCTION connect_guard.pause_apply(c connect_guard.connection, p_block_writes boolean, p_reason text,
                                          p_cancel_writers boolean, p_deadline timestamptz,
                                          p_started timestamptz, p_detail jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    v_fence integer;
BEGIN
    IF p_block_writes AND c.fence_id IS NULL THEN
        t := connect_guard.fence_targets(c.connection_id);
        BEGIN
            v_fence := connect_guard.fence_raise('connection', c.connection_id, c.name,
                                                 coalesce(p_reason, format('connection "%s" paused for maintenance', c.name)),
                                                 t.relids, t.relconnections);
            PERFORM connect_guard.wait_for_writers(t.relids, p_deadline, coalesce(p_cancel_writers, false));
        EXCEPTION WHEN OTHERS THEN
            IF v_fence IS NOT NULL THEN
                PERFORM connect_guard.fence_lower(v_fence);
            END IF;
            RAISE;
        END;
    END IF;
    PERFORM connect_guard.connection_goto(c.connection_id, 'PAUSED', NULL, 'paused',
        p_detail || jsonb_build_object('block_writes', p_block_writes, 'fence_id', coalesce(v_fence, c.fence_id),
                                       'reason', p_reason,
                                       'waited_ms', round(extract(epoch FROM clock_timestamp() - p_started) * 1000)),
        coalesce(p_reason, 'paused for maintenance'), v_fence);
    RETURN coalesce(v_fence, c.fence_id);
END;
$$;
