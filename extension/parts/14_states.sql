/* ------------------------------------------------------------------------
 * The states of connections and mappings, and their transitions.  Every
 * change of connection.state or mapping.state goes through the functions
 * of this file, which also write the event of the transition, so that a
 * new state, or a new source of transitions (the sync service's own log),
 * is added here and nowhere else.
 *
 *   connection (the states of Heroku Connect):
 *     IDLE -> POLLING_DB_CHANGES -> IDLE   a batch is taken, then finished (30_batches.sql)
 *     any -> PAUSING                       a pause is sent to the sync service (62_signals.sql)
 *     IDLE, POLLING_DB_CHANGES, PAUSING
 *       -> PAUSED                          the pause is applied (54_pause.sql)
 *     PAUSED, PAUSING, RESUMING
 *       -> RESUMING                        a resume is sent to the sync service
 *       -> IDLE                            resumed
 *   state_reason says why a connection is paused, fence_id which fence its
 *   pause raised; leaving the pause clears both.
 *
 *   mapping:
 *     INITIAL -> DATA_SYNCED               its first batch is finished
 *     any -> RELOAD_TABLE -> DATA_SYNCED   a reload is asked for, then done (52_reloads.sql)
 *     INITIAL, DATA_SYNCED
 *       -> SCHEMA_CHANGED                  its table changed, or writes were hidden (19_table_shape_changes.sql)
 *     SCHEMA_CHANGED -> RELOAD_TABLE,
 *       INITIAL, DATA_SYNCED               saved (connect_save_mapping, 66_schema_watch.sql)
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.connection_goto moves a connection to p_state when it is in
 * one of p_from (in any state for NULL), and then logs p_event (when given)
 * with p_detail.  p_reason and p_fence_id, when given, record why it is
 * paused and the fence of its pause.  Returns whether it moved.  The caller
 * holds the connection's lock.
 */
CREATE FUNCTION connect_guard.connection_goto(p_connection_id integer, p_state text,
                                              p_from text[] DEFAULT NULL,
                                              p_event text DEFAULT NULL, p_detail jsonb DEFAULT '{}',
                                              p_reason text DEFAULT NULL, p_fence_id integer DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_leaves_pause boolean;
BEGIN
    UPDATE connect_guard.connection c
       SET state = p_state, state_since = clock_timestamp(),
           state_reason = CASE WHEN p_state IN ('IDLE', 'RESUMING') AND c.state IN ('PAUSING', 'PAUSED', 'RESUMING')
                               THEN NULL ELSE coalesce(p_reason, c.state_reason) END,
           fence_id = CASE WHEN p_state IN ('IDLE', 'RESUMING') AND c.state IN ('PAUSING', 'PAUSED', 'RESUMING')
                           THEN NULL ELSE coalesce(p_fence_id, c.fence_id) END
     WHERE c.connection_id = p_connection_id AND (p_from IS NULL OR c.state = ANY (p_from));
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_event IS NOT NULL THEN
        PERFORM connect_guard.log_event(p_connection_id, p_event, p_detail);
    END IF;
    RETURN true;
END;
$$;

/*
 * connect_guard.connection_note says why a connection stays where it is
 * (a failed pause or resume request), without a transition.  It never
 * waits: when another transaction (a consumer) holds the connection's lock
 * the note is left out; the request and the event log say it all the same.
 */
CREATE FUNCTION connect_guard.connection_note(p_connection_id integer, p_reason text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE connect_guard.connection SET state_reason = left(p_reason, 2000)
     WHERE connection_id = (SELECT c.connection_id FROM connect_guard.connection c
                             WHERE c.connection_id = p_connection_id FOR NO KEY UPDATE SKIP LOCKED);
$$;

/*
 * A local connect_pause() waits for the open batch in its own transaction,
 * so its PAUSING could not be seen before it commits.  Instead it holds a
 * transaction-scoped advisory lock, (pause_lock_class(), connection id),
 * while it waits, and connect_next_batch() opens no new batch while that
 * lock is held: a consumer that finishes a batch and takes the next at
 * once cannot keep a pause from ever finding the connection idle.
 */
CREATE FUNCTION connect_guard.pause_lock_class()
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1128747091 $$;     -- 'CGPS'

-- connect_guard.pause_announce: takes the lock, unless another pause of the connection holds it
CREATE FUNCTION connect_guard.pause_announce(p_connection_id integer)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_try_advisory_xact_lock(connect_guard.pause_lock_class(), p_connection_id);
$$;

-- connect_guard.pause_announced: whether a pause of the connection waits (the lock is held)
CREATE FUNCTION connect_guard.pause_announced(p_connection_id integer)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_try_advisory_lock_shared(connect_guard.pause_lock_class(), p_connection_id) THEN
        PERFORM pg_advisory_unlock_shared(connect_guard.pause_lock_class(), p_connection_id);
        RETURN false;
    END IF;
    RETURN true;
END;
$$;

/*
 * connect_guard.mappings_goto moves the mappings p_mapping_ids (every
 * mapping of p_connection_id for NULL) that are in one of p_from (any
 * state for NULL) to p_state, logs p_event (when given) with p_detail
 * against p_connection_id, and returns the mappings it moved.
 */
CREATE FUNCTION connect_guard.mappings_goto(p_connection_id integer, p_mapping_ids integer[], p_state text,
                                            p_from text[] DEFAULT NULL,
                                            p_event text DEFAULT NULL, p_detail jsonb DEFAULT '{}')
RETURNS SETOF connect_guard.mapping
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    UPDATE connect_guard.mapping m SET state = p_state, state_since = clock_timestamp()
     WHERE (p_connection_id IS NULL OR m.connection_id = p_connection_id)
       AND (p_mapping_ids IS NULL OR m.mapping_id = ANY (p_mapping_ids))
       AND (p_from IS NULL OR m.state = ANY (p_from))
    RETURNING m.*;
    IF p_event IS NOT NULL THEN
        PERFORM connect_guard.log_event(p_connection_id, p_event, p_detail);
    END IF;
END;
$$;
