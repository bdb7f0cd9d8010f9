/* ------------------------------------------------------------------------
 * Log sources: the one place that knows how to read a connection's trigger
 * log.  A connection reads one of two kinds:
 *
 *   own      connect_guard.trigger_log, written by the capture trigger and
 *            consumed in batches (connect_next_batch); its mark is the
 *            connection's high-water mark (tick, entry id)
 *   connect  <log_schema>._trigger_log of a schema Heroku Connect manages
 *            (connect_adopt_schema, 77_connect_schema.sql), written by
 *            Connect's own logger triggers and read and updated by Connect
 *            itself; its mark is Connect's processed mark (below)
 *
 * Views, the witness, the rollback checks, upgrade plans and retention ask
 * these functions and never read a log table themselves.  Nothing here
 * writes to Connect's objects: it reads them, by Connect's own indexes.
 *
 * Connect's processed mark is the highest id at or below which every entry
 * is final (SUCCESS, FAILED, IGNORED, MERGED, READONLY, REQUEUED: Connect
 * will not send it again) or archived.  Ids commit out of order: an entry
 * whose transaction is still open is invisible, and the gap it leaves must
 * not be jumped.  So each worker cycle records a log tick (Connect's id
 * sequence read first, then the next xid to be assigned), as the own log's
 * ticks do (10_ticks.sql, tick.c): Connect's logger triggers run after the
 * row they log is written, so the writer holds its xid before it takes a
 * log id, and every id at or below a tick's last_id belongs to a
 * transaction below its xid_bound.  A snapshot whose xmin is at or past
 * that bound sees every one of those ids settled.  The mark is then
 *   least(last_id of the newest settled tick, first unfinished id - 1)
 * where the first unfinished id is the lowest id in any state but the
 * final ones (NEW, PENDING, REQUEUE, NULL, and any state Connect may add:
 * unknown means not done).
 * ------------------------------------------------------------------------ */

-- which log a connection reads; NULL log_schema: connect_guard's own
ALTER TABLE connect_guard.connection
    ADD COLUMN log_schema text,
    -- adopted schemas: the role Connect's sessions run as (the reload fence lets it through)
    ADD COLUMN sync_role text,
    -- when the id headroom warning was given (cleared when the ids are back below the threshold)
    ADD COLUMN log_ids_warned_at timestamptz,
    ADD CONSTRAINT connection_sync_role_with_log CHECK (sync_role IS NULL OR log_schema IS NOT NULL);
-- a schema is adopted by one connection
CREATE UNIQUE INDEX connection_log_schema ON connect_guard.connection (log_schema);

/*
 * Log ticks of the adopted logs.  Not dumped: a copy has other xids, and a
 * fresh tick on the next cycle is all it needs.
 */
CREATE TABLE connect_guard.log_tick (
    log_tick_id     bigserial PRIMARY KEY,
    connection_id   integer NOT NULL REFERENCES connect_guard.connection ON DELETE CASCADE,
    last_id         bigint NOT NULL,
    xid_bound       xid8 NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON connect_guard.log_tick (connection_id, log_tick_id);

-- the states after which Connect never sends an entry again
CREATE FUNCTION connect_guard.connect_final_states()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['SUCCESS', 'FAILED', 'IGNORED', 'IGNORE', 'MERGED', 'READONLY', 'REQUEUED'] $$;

-- 'own' or 'connect'
CREATE FUNCTION connect_guard.log_kind(p_log_schema text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN p_log_schema IS NULL THEN 'own' ELSE 'connect' END $$;

-- the log table a connection reads, as text
CREATE FUNCTION connect_guard.log_table(p_log_schema text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_log_schema IS NULL THEN 'connect_guard.trigger_log'
                ELSE format('%I._trigger_log', p_log_schema) END
$$;

-- the id sequence of a log (Connect's: the serial of _trigger_log.id)
CREATE FUNCTION connect_guard.log_sequence(p_log_schema text)
RETURNS regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_log_schema IS NULL THEN 'connect_guard.trigger_log_id_seq'::regclass
                ELSE pg_get_serial_sequence(format('%I._trigger_log', p_log_schema), 'id')::regclass END
$$;

/*
 * connect_guard.log_sequence_head: the last id a log's sequence handed out
 * (0 before the first); unlike max(id), archiving cannot lower it.  Not
 * transactional: it sees ids of transactions still open.
 */
CREATE FUNCTION connect_guard.log_sequence_head(p_log_schema text)
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(pg_sequence_last_value(connect_guard.log_sequence(p_log_schema)), 0)
$$;

-- how many ids the sequence has left, and the share used (the own log's is bigint, Connect's int4)
CREATE FUNCTION connect_guard.log_id_headroom(p_log_schema text, OUT ids_left bigint, OUT ids_used_pct numeric)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.seqmax - h.head, round(100.0 * h.head / s.seqmax, 2)
      FROM pg_sequence s, connect_guard.log_sequence_head(p_log_schema) h(head)
     WHERE s.seqrelid = connect_guard.log_sequence(p_log_schema)
$$;

/*
 * connect_guard.log_tick records a tick of an adopted log: the sequence
 * first, then the next xid (see the top of this file), and forgets the
 * ticks older than the newest settled one.
 */
CREATE FUNCTION connect_guard.log_tick(p_connection_id integer, p_log_schema text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_last bigint;
    v_bound xid8;
BEGIN
    -- in this order, two statements
    v_last := connect_guard.log_sequence_head(p_log_schema);
    v_bound := connect_guard.next_xid();
    INSERT INTO connect_guard.log_tick (connection_id, last_id, xid_bound)
    VALUES (p_connection_id, v_last, v_bound);
    DELETE FROM connect_guard.log_tick t
     WHERE t.connection_id = p_connection_id
       AND t.log_tick_id < (SELECT max(s.log_tick_id) FROM connect_guard.log_tick s
                             WHERE s.connection_id = p_connection_id
                               AND s.xid_bound <= pg_snapshot_xmin(pg_current_snapshot()));
END;
$$;

/* the highest id every entry at or below which has settled (committed or gone), NULL before the first tick settles */
CREATE FUNCTION connect_guard.log_settled_id(p_connection_id integer)
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.last_id FROM connect_guard.log_tick t
     WHERE t.connection_id = p_connection_id
       AND t.xid_bound <= pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY t.log_tick_id DESC LIMIT 1
$$;

/*
 * connect_guard.connect_log_unfinished gives, per state that is not final,
 * the lowest id of an adopted log in it: the distinct states come from a
 * skip scan of Connect's (state, id) index, a few index probes however
 * long the log is.
 */
CREATE FUNCTION connect_guard.connect_log_unfinished(p_log_schema text, OUT state text, OUT first_id bigint)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'WITH RECURSIVE states(state) AS (
             (SELECT l.state::text FROM %1$I._trigger_log l WHERE l.state IS NOT NULL ORDER BY l.state LIMIT 1)
             UNION ALL
             SELECT (SELECT l.state::text FROM %1$I._trigger_log l WHERE l.state > s.state ORDER BY l.state LIMIT 1)
               FROM states s WHERE s.state IS NOT NULL)
         SELECT s.state, (SELECT min(l.id) FROM %1$I._trigger_log l WHERE l.state = s.state)::bigint
           FROM states s
          WHERE s.state IS NOT NULL AND s.state <> ALL (connect_guard.connect_final_states())
         UNION ALL
         SELECT NULL, (SELECT min(l.id) FROM %1$I._trigger_log l WHERE l.state IS NULL)::bigint',
        p_log_schema);
END;
$$;

/*
 * connect_guard.log_marks: a connection's log head and mark, cheaply (a
 * few index probes): what the witness records every cycle.
 *   own:     head = the sequence; mark = the connection's hwm_id
 *   connect: head = Connect's sequence; mark = Connect's processed mark
 */
CREATE FUNCTION connect_guard.log_marks(p_connection_id integer,
                                        OUT log_kind text, OUT log_table text,
                                        OUT log_head bigint, OUT mark bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    log_kind := connect_guard.log_kind(c.log_schema);
    log_table := connect_guard.log_table(c.log_schema);
    log_head := connect_guard.log_sequence_head(c.log_schema);
    IF c.log_schema IS NULL THEN
        mark := c.hwm_id;
    ELSE
        -- no mark before the first tick has settled (least() would skip the NULL)
        SELECT CASE WHEN s.settled IS NOT NULL THEN least(s.settled, min(u.first_id) - 1) END INTO mark
          FROM connect_guard.log_settled_id(p_connection_id) s(settled),
               connect_guard.connect_log_unfinished(c.log_schema) u
         GROUP BY s.settled;
    END IF;
END;
$$;

/*
 * connect_guard.log_witness_marks: what the witness keeps of a
 * connection's position (74_witness.sql).  An own-log connection's
 * consumed position (last_tick, hwm_id, consumed_xid) is compared with
 * the database after a restore; an adopted log's head is, and its
 * processed mark tells which entries a restore brought back (Connect's
 * mark may go back on its own when a failed entry is retried, so it is
 * not compared).
 */
CREATE FUNCTION connect_guard.log_witness_marks(p_connection_id integer)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m record;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF c.log_schema IS NULL THEN
        RETURN jsonb_build_object('last_tick', c.last_tick, 'hwm_id', c.hwm_id,
                                  'consumed_xid', (SELECT t.xid_bound::text::bigint FROM connect_guard.tick t
                                                    WHERE t.tick_id = c.last_tick));
    END IF;
    m := connect_guard.log_marks(p_connection_id);
    RETURN jsonb_build_object('log', m.log_table, 'log_head', m.log_head, 'processed_mark', m.mark);
END;
$$;

/*
 * connect_guard.log_position: what an upgrade plan records with its fence
 * up and checks on the database that takes over (70_upgrade.sql): values
 * that hold still while the connection is paused and its tables fenced.
 *   own:     the high-water mark (tick and entry id)
 *   connect: the highest id the log and its archive hold (not the
 *            sequence, which a standby sees up to 32 ids ahead), the
 *            first unfinished id and how many entries are unfinished
 */
CREATE FUNCTION connect_guard.log_position(p_connection_id integer)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_max bigint;
    v_first bigint;
    v_unfinished bigint;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF c.log_schema IS NULL THEN
        RETURN jsonb_build_object('last_tick', c.last_tick, 'hwm_id', c.hwm_id);
    END IF;
    EXECUTE format('SELECT greatest((SELECT max(id) FROM %1$I._trigger_log), (SELECT max(id) FROM %1$I._trigger_log_archive))',
                   c.log_schema) INTO v_max;
    SELECT min(u.first_id) INTO v_first FROM connect_guard.connect_log_unfinished(c.log_schema) u;
    EXECUTE format('SELECT count(*) FROM %I._trigger_log WHERE state IS NULL OR state::text <> ALL (connect_guard.connect_final_states())',
                   c.log_schema) INTO v_unfinished;
    RETURN jsonb_build_object('log', connect_guard.log_table(c.log_schema), 'max_id', coalesce(v_max, 0),
                              'first_unfinished_id', v_first, 'unfinished', v_unfinished);
END;
$$;

/*
 * connect_guard.log_status: everything the views show of a connection's
 * log.  SECURITY DEFINER: monitoring roles read the views, and Connect's
 * log is not theirs to read; it gives counts and ids, never entries.
 *   hwm_tick, hwm_txid, open_batch   own log only (batches)
 *   hwm_id       own: the consumed high-water mark; connect: Connect's processed mark
 *   backlog      own: entries of the connection's tables not consumed yet;
 *                connect: NEW and PENDING entries
 *   oldest_pending_at  own: when the oldest entry of the backlog was logged;
 *                connect: when the first entry of the backlog (the lowest id) was
 *   hwm_at       since when the mark has not moved: own: the time of the tick the
 *                connection stands on; connect: with a backlog, oldest_pending_at
 *                (the mark waits below it), else the newest settled log tick
 *   failed       connect: FAILED entries in the log (the archive's are in connect_write_errors)
 */
CREATE FUNCTION connect_guard.log_status(p_connection_id integer,
                                         OUT log_kind text, OUT log_table text,
                                         OUT hwm_tick bigint, OUT hwm_id bigint, OUT hwm_txid xid8,
                                         OUT log_head bigint, OUT backlog bigint, OUT oldest_pending_at timestamptz,
                                         OUT hwm_at timestamptz, OUT failed bigint, OUT ids_left bigint,
                                         OUT ids_used_pct numeric)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    t connect_guard.tick;
    v_first bigint;
    m record;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    log_kind := connect_guard.log_kind(c.log_schema);
    log_table := connect_guard.log_table(c.log_schema);
    SELECT h.ids_left, h.ids_used_pct INTO ids_left, ids_used_pct FROM connect_guard.log_id_headroom(c.log_schema) h;

    IF c.log_schema IS NULL THEN
        SELECT * INTO t FROM connect_guard.tick WHERE tick_id = c.last_tick;
        hwm_tick := c.last_tick;
        hwm_id := c.hwm_id;
        hwm_txid := pg_snapshot_xmin(t.snapshot);
        hwm_at := t.created_at;
        log_head := greatest((SELECT max(l.id) FROM connect_guard.trigger_log l),
                             (SELECT max(a.id) FROM connect_guard.trigger_log_archive a));
        SELECT count(*), min(l.created_at) INTO backlog, oldest_pending_at
          FROM connect_guard.trigger_log l
         WHERE l.id > t.scan_from
           AND NOT pg_visible_in_snapshot(l.txid, t.snapshot)
           AND EXISTS (SELECT 1 FROM connect_guard.mapping mp
                        WHERE mp.connection_id = c.connection_id
                          AND mp.table_schema = l.table_schema
                          AND mp.table_name = l.table_name);
        RETURN;
    END IF;

    m := connect_guard.log_marks(p_connection_id);
    hwm_id := m.mark;
    log_head := m.log_head;
    -- the partial index (state, table_name) WHERE state IN ('NEW', 'PENDING') counts them
    EXECUTE format('SELECT count(*) FROM %I._trigger_log WHERE state IN (''NEW'', ''PENDING'')', c.log_schema)
       INTO backlog;
    EXECUTE format('SELECT least((SELECT min(id) FROM %1$I._trigger_log WHERE state = ''NEW''),
                                 (SELECT min(id) FROM %1$I._trigger_log WHERE state = ''PENDING''))', c.log_schema)
       INTO v_first;
    IF v_first IS NOT NULL THEN
        EXECUTE format('SELECT created_at FROM %I._trigger_log WHERE id = $1', c.log_schema)
           INTO oldest_pending_at USING v_first;
    END IF;
    hwm_at := coalesce(oldest_pending_at,
                       (SELECT lt.taken_at FROM connect_guard.log_tick lt
                         WHERE lt.connection_id = p_connection_id
                           AND lt.xid_bound <= pg_snapshot_xmin(pg_current_snapshot())
                         ORDER BY lt.log_tick_id DESC LIMIT 1));
    EXECUTE format('SELECT count(*) FROM %I._trigger_log WHERE state = ''FAILED''', c.log_schema) INTO failed;
END;
$$;

/*
 * connect_guard.log_restored_entries: after a restore, the unfinished
 * entries at or below the processed mark the witness had recorded: Connect
 * had already sent them, and would send them again.
 */
CREATE FUNCTION connect_guard.log_restored_entries(p_connection_id integer, p_witnessed_mark bigint,
                                                   OUT first_id bigint, OUT last_id bigint, OUT entries bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF c.log_schema IS NULL OR p_witnessed_mark IS NULL THEN
        entries := 0;
        RETURN;
    END IF;
    EXECUTE format('SELECT min(id), max(id), count(*) FROM %I._trigger_log
                     WHERE id <= $1 AND (state IS NULL OR state::text <> ALL (connect_guard.connect_final_states()))',
                   c.log_schema)
       INTO first_id, last_id, entries USING p_witnessed_mark;
END;
$$;

/*
 * connect_guard.log_sends_in_flight: what the sync service is still
 * sending of an adopted log (PENDING entries: Connect takes them, sends
 * them, then marks them), or NULL when nothing; NULL for the own log, whose
 * work in flight is the open batch.  A pause waits for it before the fence
 * goes up, or Connect's marking of what it sent would be fenced.
 */
CREATE FUNCTION connect_guard.log_sends_in_flight(p_connection_id integer)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r record;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF c.log_schema IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) AS n, min(id) AS first_id, max(id) AS last_id FROM %I._trigger_log WHERE state = ''PENDING''',
                   c.log_schema) INTO r;
    IF r.n = 0 THEN
        RETURN NULL;
    END IF;
    RETURN format('%s entries of %s are PENDING (ids %s to %s): Connect is still sending them',
                  r.n, connect_guard.log_table(c.log_schema), r.first_id, r.last_id);
END;
$$;

/*
 * connect_guard.log_positions_differ compares the adopted logs with the
 * positions a plan recorded (log_position), for a copy: NULL when each is
 * as it was, else what differs.
 */
CREATE FUNCTION connect_guard.log_positions_differ(p_recorded jsonb)
RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('connection "%s": %s here, %s then', r.key,
                             coalesce(connect_guard.log_position(c.connection_id)::text, 'nothing'), r.value), '; '
                      ORDER BY r.key)
      FROM jsonb_each(coalesce(p_recorded, '{}')) r
      LEFT JOIN connect_guard.connection c ON c.name = r.key
     WHERE r.value ? 'log'
       AND connect_guard.log_position(c.connection_id) IS DISTINCT FROM r.value;
$$;

/*
 * connect_guard.require_own_log refuses what only the own log has
 * (batches) on a connection that reads Connect's log.
 */
CREATE FUNCTION connect_guard.require_own_log(c connect_guard.connection, p_what text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF c.log_schema IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('%s does not apply to connection "%s": it reads Heroku Connect''s log %s',
                             p_what, c.name, connect_guard.log_table(c.log_schema)),
            DETAIL = 'Connect reads and updates its own trigger log; connect_guard hands out no batches of it.',
            HINT = 'See connect_high_water_marks for Connect''s processed mark and backlog.';
    END IF;
END;
$$;

/*
 * connect_guard.log_sources_cycle is the worker's step for the adopted
 * logs, before the witness is written: a tick per log, and the id
 * headroom warning (Connect's ids are int4: at 75 % of 2^31 an event and a
 * WARNING, once until the ids are back below).  Returns the ticks taken.
 */
CREATE FUNCTION connect_guard.log_sources_cycle()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    h record;
    v_ticks bigint := 0;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN 0;
    END IF;
    FOR c IN SELECT * FROM connect_guard.connection WHERE log_schema IS NOT NULL ORDER BY connection_id LOOP
        IF connect_guard.log_sequence(c.log_schema) IS NULL THEN
            CONTINUE;       -- the schema was dropped or changed: the views say so (NULL marks)
        END IF;
        PERFORM connect_guard.log_tick(c.connection_id, c.log_schema);
        v_ticks := v_ticks + 1;
        h := connect_guard.log_id_headroom(c.log_schema);
        IF h.ids_used_pct >= 75 AND c.log_ids_warned_at IS NULL THEN
            -- once: a concurrent call (connect_guard.log_sources_cycle() by hand) may have warned
            UPDATE connect_guard.connection SET log_ids_warned_at = clock_timestamp()
             WHERE connection_id = c.connection_id AND log_ids_warned_at IS NULL;
            CONTINUE WHEN NOT FOUND;
            PERFORM connect_guard.log_event(c.connection_id, 'log_ids_running_out',
                jsonb_build_object('log', connect_guard.log_table(c.log_schema), 'ids_used_pct', h.ids_used_pct,
                                   'ids_left', h.ids_left));
            RAISE WARNING USING
                MESSAGE = format('connect_guard: the ids of %s are %s %% used: %s left',
                                 connect_guard.log_table(c.log_schema), h.ids_used_pct, h.ids_left),
                DETAIL = 'Its id is an int4 serial: when the sequence reaches 2147483647, every write to a mapped table fails.',
                HINT = 'Plan with Heroku support how to widen or restart the log''s ids before they run out; connect_high_water_marks shows ids_left.';
        ELSIF h.ids_used_pct < 75 AND c.log_ids_warned_at IS NOT NULL THEN
            UPDATE connect_guard.connection SET log_ids_warned_at = NULL WHERE connection_id = c.connection_id;
        END IF;
    END LOOP;
    RETURN v_ticks;
END;
$$;
