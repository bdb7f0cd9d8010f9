/* ------------------------------------------------------------------------
 * Ticks: points in the commit order that batches run between (see the
 * tick table in 00_catalog.sql).
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_guard.next_xid()
RETURNS xid8 LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_next_xid';

/*
 * connect_guard.new_tick records a tick.  The sequence must be read before
 * the snapshot is taken, which is why these are two statements: in READ
 * COMMITTED each statement of a volatile function takes a new snapshot.
 * A longer isolation level would hand back the transaction's first snapshot
 * and break the bound, so it is refused.
 */
CREATE FUNCTION connect_guard.new_tick()
RETURNS connect_guard.tick
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_last_id bigint;
    v_xid_bound xid8;
    v_snapshot pg_snapshot;
    t connect_guard.tick;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_next_batch()');
    -- in this order: the id, then the xid bound, then the snapshot
    v_last_id := coalesce(pg_sequence_last_value('connect_guard.trigger_log_id_seq'), 0);
    v_xid_bound := connect_guard.next_xid();
    v_snapshot := pg_current_snapshot();
    -- scan_from: the newest last_id (this tick's own included) whose writers
    -- had all ended when the snapshot was taken
    INSERT INTO connect_guard.tick (snapshot, last_id, xid_bound, scan_from)
    SELECT v_snapshot, v_last_id, v_xid_bound,
           CASE WHEN v_xid_bound <= pg_snapshot_xmin(v_snapshot) THEN v_last_id
                ELSE coalesce((SELECT p.last_id FROM connect_guard.tick p
                                WHERE p.xid_bound <= pg_snapshot_xmin(v_snapshot)
                                ORDER BY p.tick_id DESC LIMIT 1), 0)
           END
    RETURNING * INTO t;
    RETURN t;
END;
$$;

/*
 * connect_guard.tick_entries is the heart of the batch method: the entries
 * of a connection's mapped tables that became visible between two ticks.
 */
CREATE FUNCTION connect_guard.tick_entries(p_connection_id integer, p_prev_tick bigint,
                                           p_cur_tick bigint)
RETURNS SETOF connect_guard.trigger_log
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.*
      FROM connect_guard.tick p, connect_guard.tick c, connect_guard.trigger_log l
     WHERE p.tick_id = p_prev_tick
       AND c.tick_id = p_cur_tick
       AND l.id > p.scan_from
       AND pg_visible_in_snapshot(l.txid, c.snapshot)
       AND NOT pg_visible_in_snapshot(l.txid, p.snapshot)
       AND EXISTS (SELECT 1 FROM connect_guard.mapping m
                    WHERE m.connection_id = p_connection_id
                      AND m.table_schema = l.table_schema
                      AND m.table_name = l.table_name)
     ORDER BY l.id;
$$;

-- the first tick, so that every connection has a high-water mark to start from
SELECT connect_guard.new_tick();
