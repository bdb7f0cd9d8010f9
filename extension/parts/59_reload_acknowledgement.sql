/* ------------------------------------------------------------------------
 * When Heroku Connect has done a reload (the 'confirm' phase of a reload
 * request, 62_signals.sql).  Connect answers 202 and queues the reload; it
 * may start it a moment or minutes later.  Until then the deep GET shows
 * the mapping as it was, DATA_SYNCED, and taking that for done would lower
 * the reload fence while the table is about to be overwritten.  So a
 * reload is acknowledged only on a proof that a reload started after the
 * request, and then DATA_SYNCED:
 *
 *   - Connect was seen working on it: RELOAD_TABLE in a deep GET after
 *     the 202;
 *   - or the mapping's reload_started_at (when its last reload started,
 *     Connect's clock) is later than it was in a deep GET taken before the
 *     reload was asked for (the baseline, step 'lookup' of the request):
 *     a reload that started and finished between two polls, never seen
 *     running.  The field is an assumption about Connect's deep GET
 *     (README, the reload acknowledgement): the simulator shows it; where
 *     Connect does not, only the first proof is left.  The two times come
 *     from the same clock, Connect's, so no clock skew enters.
 *
 * Until it is seen working, polls stay at most 2 s apart (request_poll_again),
 * so that a reload is seen running; one never proven ends the request at
 * its timeout, failed, with the mapping in RELOAD_TABLE and the fence up:
 * connect_mapping_reloaded() acknowledges it by hand.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.reload_mapping_entry: the entry of a deep GET (p_body)
 * for the mapping of request r, by its remote id; NULL when there is none.
 */
CREATE FUNCTION connect_guard.reload_mapping_entry(r connect_guard.request, p_body jsonb)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT x
      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_body -> 'mappings') = 'array'
                                     THEN p_body -> 'mappings' ELSE '[]' END) x
      JOIN connect_guard.mapping mp ON mp.mapping_id = r.mapping_id AND mp.remote_id = x ->> 'id'
     LIMIT 1;
$$;

/* a timestamp Connect sent (ISO 8601), or NULL when absent or not one */
CREATE FUNCTION connect_guard.remote_timestamp(p_value jsonb)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF jsonb_typeof(p_value) IS DISTINCT FROM 'string'
       OR p_value #>> '{}' !~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:?\d{2})?)$' THEN
        RETURN NULL;
    END IF;
    RETURN (p_value #>> '{}')::timestamptz;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
    RETURN NULL;
END;
$$;

/*
 * connect_guard.reload_baseline records how the deep GET (p_body) showed
 * the mapping of request p_request_id before its reload is asked for: its
 * state and reload_started_at (null when Connect shows none).
 */
CREATE FUNCTION connect_guard.reload_baseline(p_request_id bigint, p_body jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    v_entry jsonb;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    v_entry := connect_guard.reload_mapping_entry(r, p_body);
    UPDATE connect_guard.request
       SET params = params || jsonb_build_object('reload_baseline', jsonb_build_object(
                                  'state', v_entry ->> 'state',
                                  -- as Connect wrote it, when it is a timestamp
                                  'reload_started_at', CASE WHEN connect_guard.remote_timestamp(v_entry -> 'reload_started_at') IS NOT NULL
                                                            THEN v_entry -> 'reload_started_at' END))
     WHERE request_id = p_request_id;
END;
$$;

/*
 * connect_guard.reload_acknowledged records what a poll showed of a
 * reload's mapping (p_entry, its entry of the deep GET) and says whether
 * the reload is done.
 */
CREATE FUNCTION connect_guard.reload_acknowledged(p_request_id bigint, p_entry jsonb)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    v_state text := p_entry ->> 'state';
    v_started timestamptz := connect_guard.remote_timestamp(p_entry -> 'reload_started_at');
    v_before timestamptz;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    IF v_state = 'RELOAD_TABLE' THEN
        IF NOT r.params ? 'reload_seen_at' THEN
            UPDATE connect_guard.request
               SET params = params || jsonb_build_object('reload_seen_at', clock_timestamp())
             WHERE request_id = p_request_id;
            PERFORM connect_guard.log_event(r.connection_id, 'reload_started',
                jsonb_build_object('request_id', r.request_id, 'table', r.params ->> 'table',
                                   'object_name', r.params ->> 'object_name', 'seen', 'running',
                                   'after_ms', round(extract(epoch FROM clock_timestamp() - r.created_at) * 1000)));
        END IF;
        RETURN false;
    END IF;
    IF v_state IS DISTINCT FROM 'DATA_SYNCED' THEN
        RETURN false;
    END IF;
    IF r.params ? 'reload_seen_at' THEN
        RETURN true;
    END IF;
    -- never seen running: did a reload start after the baseline?  (no baseline: no proof)
    IF NOT r.params ? 'reload_baseline' OR v_started IS NULL THEN
        RETURN false;
    END IF;
    v_before := connect_guard.remote_timestamp(r.params -> 'reload_baseline' -> 'reload_started_at');
    IF v_before IS NOT NULL AND v_started <= v_before THEN
        RETURN false;       -- the reload that had started before the request: not this one
    END IF;
    PERFORM connect_guard.log_event(r.connection_id, 'reload_started',
        jsonb_build_object('request_id', r.request_id, 'table', r.params ->> 'table',
                           'object_name', r.params ->> 'object_name', 'seen', 'finished',
                           'reload_started_at', p_entry -> 'reload_started_at',
                           'before_request', r.params -> 'reload_baseline' -> 'reload_started_at',
                           'after_ms', round(extract(epoch FROM clock_timestamp() - r.created_at) * 1000)));
    RETURN true;
END;
$$;
