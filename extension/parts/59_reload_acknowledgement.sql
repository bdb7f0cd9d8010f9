/* ------------------------------------------------------------------------
 * When Heroku Connect has done a reload (the 'confirm' phase of a reload
 * request, 62_signals.sql).  Connect answers 202 and queues the reload; it
 * may start it a moment or minutes later.  Until then the deep GET shows
 * the mapping as it was, DATA_SYNCED, and taking that for done would lower
 * the reload fence while the table is about to be overwritten.  So a
 * reload is acknowledged only once Connect was seen working on it
 * (RELOAD_TABLE in a deep GET after the 202) and then reports DATA_SYNCED.
 * Until it is seen working, polls stay at most 2 s apart (request_poll_again),
 * so that a reload is not over between two polls; one that still was ends
 * the request at its timeout, failed, with the mapping in RELOAD_TABLE and
 * the fence up: connect_mapping_reloaded() acknowledges it by hand.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.reload_acknowledged records what a poll showed of a
 * reload's mapping (p_state) and says whether the reload is done.
 */
CREATE FUNCTION connect_guard.reload_acknowledged(p_request_id bigint, p_state text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    IF p_state = 'RELOAD_TABLE' THEN
        IF NOT r.params ? 'reload_seen_at' THEN
            UPDATE connect_guard.request
               SET params = params || jsonb_build_object('reload_seen_at', clock_timestamp())
             WHERE request_id = p_request_id;
            PERFORM connect_guard.log_event(r.connection_id, 'reload_started',
                jsonb_build_object('request_id', r.request_id, 'table', r.params ->> 'table',
                                   'object_name', r.params ->> 'object_name',
                                   'after_ms', round(extract(epoch FROM clock_timestamp() - r.created_at) * 1000)));
        END IF;
        RETURN false;
    END IF;
    RETURN p_state = 'DATA_SYNCED' AND r.params ? 'reload_seen_at';
END;
$$;
