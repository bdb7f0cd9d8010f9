/* ------------------------------------------------------------------------
 * The protocols of the sync services: Heroku Connect's API (adapter
 * 'heroku') and signed webhooks (adapter 'webhook').  What each request
 * looks like on the wire and how each answer is read.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.request_http_error describes an HTTP failure for
 * last_error and the event log, and says whether retrying can help.
 * p_body is the answer (already cleaned of the secret by the worker).
 */
CREATE FUNCTION connect_guard.request_http_error(p_adapter text, p_action text, p_http_status integer,
                                                 p_error text, p_body text,
                                                 OUT message text, OUT permanent boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_who text := CASE p_adapter WHEN 'heroku' THEN 'Connect' ELSE 'the webhook' END;
    v_said text;
    v_json jsonb;
BEGIN
    permanent := false;
    IF p_http_status IS NULL THEN
        message := format('no answer from %s: %s', v_who, coalesce(p_error, 'unknown error'));
        RETURN;
    END IF;
    BEGIN
        v_json := p_body::jsonb;
        v_said := v_json ->> 'message';
    EXCEPTION WHEN OTHERS THEN
        v_said := NULL;
    END;
    v_said := left(regexp_replace(coalesce(v_said, p_body, ''), '\s+', ' ', 'g'), 200);
    message := format('HTTP %s from %s%s', p_http_status, v_who, CASE WHEN v_said <> '' THEN ': ' || v_said ELSE '' END);
    IF p_http_status IN (401, 403) THEN
        message := message || CASE p_adapter WHEN 'heroku'
            THEN ' (check the API token; a token_file is read again before every attempt)'
            ELSE ' (check the webhook key; a secret_file is read again before every attempt)' END;
    ELSIF p_http_status = 404 AND p_adapter = 'heroku' THEN
        message := message || CASE WHEN p_action = 'reload'
            THEN ' (Connect knows no mapping with this id: see connect_set_mapping_remote_id())'
            ELSE ' (Connect knows no connection with this id: check the option connection_id)' END;
    END IF;
    -- answers that the same request will always get
    permanent := p_http_status IN (400, 404, 405, 410, 422);
END;
$$;

/*
 * connect_guard.remote_ids_from fills in the remote id of the mappings
 * that have none from a deep GET of the connection, by object name
 * (ignoring case, as Salesforce does), when the name is unambiguous.
 */
CREATE FUNCTION connect_guard.remote_ids_from(p_connection_id integer, p_body jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m record;
BEGIN
    IF jsonb_typeof(p_body -> 'mappings') IS DISTINCT FROM 'array' THEN
        RETURN;
    END IF;
    FOR m IN
        UPDATE connect_guard.mapping mp SET remote_id = rm.id
          FROM (SELECT lower(e ->> 'object_name') AS object_name, min(e ->> 'id') AS id
                  FROM jsonb_array_elements(p_body -> 'mappings') e
                 WHERE e ->> 'id' ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'
                 GROUP BY 1 HAVING count(*) = 1) rm
         WHERE mp.connection_id = p_connection_id AND mp.remote_id IS NULL
           AND lower(mp.object_name) = rm.object_name
        RETURNING mp.table_schema, mp.table_name, mp.object_name, mp.remote_id
    LOOP
        PERFORM connect_guard.log_event(p_connection_id, 'mapping_remote_id',
            jsonb_build_object('table', format('%I.%I', m.table_schema, m.table_name),
                               'object_name', m.object_name, 'remote_id', m.remote_id, 'source', 'connect'));
    END LOOP;
END;
$$;

/*
 * connect_guard.note_remote_hwm records the high-water mark the sync
 * service reports (top-level "high_water_mark" of Connect's deep GET, or of
 * a webhook's answer): the witness keeps it, and a service that consumed
 * past the log head proves a rollback.
 */
CREATE FUNCTION connect_guard.note_remote_hwm(p_connection_id integer, p_body jsonb)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE connect_guard.connection
       SET remote_hwm = (p_body ->> 'high_water_mark')::bigint, remote_hwm_at = clock_timestamp()
     WHERE connection_id = p_connection_id
       AND jsonb_typeof(p_body -> 'high_water_mark') = 'number'
       AND (p_body ->> 'high_water_mark') ~ '^[0-9]{1,18}$';
$$;

