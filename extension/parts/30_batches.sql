/* ------------------------------------------------------------------------
 * The consumer side: snapshot-safe batches and high-water marks.  These run
 * as the extension owner (SECURITY DEFINER) so that the sync service's role
 * needs EXECUTE on them and nothing else; each checks that the role is a
 * consumer of the batch's connection (25_consumers.sql).
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_next_batch(connection text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    t connect_guard.tick;
    v_batch bigint;
BEGIN
    -- Only a consumer of the connection gets further (reading takes no xid).
    -- The tick comes next, before this transaction takes an xid by locking
    -- the connection: a snapshot held back by our own xid would give the
    -- next tick a lower scan_from, and retention would lag one tick more.
    c := connect_guard.require_connection(connection);
    PERFORM connect_guard.require_consumer(c.connection_id);
    t := connect_guard.new_tick();
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_own_log(c, 'connect_next_batch()');

    -- an unfinished batch is handed out again: delivery is at least once; its
    -- taker now finishes it (the role that took it before may have gone for good)
    UPDATE connect_guard.batch b SET deliveries = b.deliveries + 1, taken_by = session_user
     WHERE b.connection_id = c.connection_id AND b.finished_at IS NULL
    RETURNING b.batch_id INTO v_batch;
    IF FOUND THEN
        RETURN v_batch;
    END IF;

    -- paused, or a connect_pause() waits for the connection to be idle (14_states.sql)
    IF c.state IN ('PAUSING', 'PAUSED') OR connect_guard.pause_announced(c.connection_id) THEN
        RETURN NULL;
    END IF;

    IF t.tick_id <= c.last_tick THEN
        -- a concurrent call moved the mark past our tick while we waited for the lock
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM connect_guard.tick_entries(c.connection_id, c.last_tick, t.tick_id)) THEN
        -- nothing new for this connection: move its mark without a batch
        UPDATE connect_guard.connection SET last_tick = t.tick_id
         WHERE connection_id = c.connection_id;
        RETURN NULL;
    END IF;

    INSERT INTO connect_guard.batch (connection_id, prev_tick, cur_tick)
    VALUES (c.connection_id, c.last_tick, t.tick_id)
    RETURNING batch_id INTO v_batch;
    PERFORM connect_guard.connection_goto(c.connection_id, 'POLLING_DB_CHANGES', ARRAY['IDLE']);
    RETURN v_batch;
END;
$$;

/*
 * connect_guard.open_batch returns an unfinished batch, or raises the error
 * that explains why the batch cannot be used.
 */
CREATE FUNCTION connect_guard.open_batch(p_batch_id bigint)
RETURNS connect_guard.batch
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b connect_guard.batch;
BEGIN
    SELECT * INTO b FROM connect_guard.batch WHERE batch_id = p_batch_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('batch %s does not exist', coalesce(p_batch_id::text, 'NULL')),
            HINT = 'Take a batch with connect_next_batch(connection).';
    END IF;
    IF b.finished_at IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('batch %s is already finished', p_batch_id),
            DETAIL = 'Its entries were delivered and the high-water mark has moved past them.',
            HINT = 'Take the next batch with connect_next_batch(connection).';
    END IF;
    RETURN b;
END;
$$;

-- STRICT: no batch (the NULL connect_next_batch returns when nothing is new) has no events
CREATE FUNCTION connect_batch_events(batch_id bigint)
RETURNS SETOF connect_guard.trigger_log
LANGUAGE plpgsql STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b connect_guard.batch;
BEGIN
    b := connect_guard.open_batch(batch_id);
    PERFORM connect_guard.require_consumer(b.connection_id);
    RETURN QUERY SELECT * FROM connect_guard.tick_entries(b.connection_id, b.prev_tick, b.cur_tick);
END;
$$;

-- STRICT: no batch, nothing to finish (NULL)
CREATE FUNCTION connect_finish_batch(batch_id bigint)
RETURNS bigint
LANGUAGE plpgsql STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b connect_guard.batch;
    c connect_guard.connection;
    v_count bigint;
    v_max bigint;
BEGIN
    b := connect_guard.open_batch(batch_id);
    PERFORM connect_guard.require_consumer(b.connection_id);
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = b.connection_id FOR NO KEY UPDATE;
    -- re-read under the connection lock: a concurrent finish may have won
    b := connect_guard.open_batch(batch_id);
    IF b.taken_by <> session_user
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('batch %s belongs to role "%s"', batch_id, b.taken_by),
            DETAIL = format('Only the consumer that took a batch last finishes it; you are "%s".', session_user),
            HINT = 'Finish the batch from the sync service''s own role, take it over with connect_next_batch() (an open batch is handed out again), or finish it as a superuser.';
    END IF;

    SELECT count(*), max(e.id) INTO v_count, v_max
      FROM connect_guard.tick_entries(b.connection_id, b.prev_tick, b.cur_tick) e;
    UPDATE connect_guard.batch SET finished_at = clock_timestamp(), entries = v_count
     WHERE connect_guard.batch.batch_id = b.batch_id;
    UPDATE connect_guard.connection
       SET last_tick = b.cur_tick,
           hwm_id = greatest(hwm_id, coalesce(v_max, 0)),
           last_batch_at = clock_timestamp()
     WHERE connection_id = c.connection_id;
    PERFORM connect_guard.connection_goto(c.connection_id, 'IDLE', ARRAY['POLLING_DB_CHANGES']);
    PERFORM connect_guard.mappings_goto(c.connection_id, NULL, 'DATA_SYNCED', ARRAY['INITIAL']);
    RETURN v_count;
END;
$$;
