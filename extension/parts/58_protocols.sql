/* ------------------------------------------------------------------------
 * The protocols of the sync services: Heroku Connect's API (adapter
 * 'heroku') and signed webhooks (adapter 'webhook').  What each request
 * looks like on the wire (request_wire) and how each answer is read; the
 * options each adapter takes are validated in 18_options.sql.
 *
 * The worker's HTTP client (signals.c, http.c) adds nothing of its own but
 * the transport: TLS (connect_guard.http_ca_file), the timeout
 * (connect_guard.http_timeout), a User-Agent, Accept and Content-Type
 * application/json for a body, and the credential by the auth scheme that
 * request_wire names:
 *   'bearer'  Authorization: Bearer <the API token>
 *   'hmac'    X-Connect-Guard-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the webhook key>
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.request_wire is what one step (p_step: 'send' or 'poll',
 * as request_take() decided) of request r of connection c (for a reload,
 * of mapping m) sends:
 *
 *   heroku   GET  {region_url}/api/v3/connections/{connection_id}?deep=true
 *                 to poll, for a refresh, and before a reload (step
 *                 'lookup': the mapping's id, and how the mapping stood
 *                 before the reload, 59_reload_acknowledgement.sql)
 *            POST {region_url}/api/v3/mappings/{remote_id}/actions/reload
 *            POST {region_url}/api/v3/connections/{connection_id}/actions/{pause|resume}
 *            no body; auth 'bearer' with the token
 *            GET  {region_url}/api/v3/connections/{connection_id}/actions/export
 *            POST {region_url}/api/v3/connections/{connection_id}/actions/import
 *                 with the configuration file (the request's payload) as body
 *   webhook  POST {url}, auth 'hmac' with the key, the body a JSON object:
 *            connection, action, request_id, requested_at (UTC, ISO 8601),
 *            requested_by, database, and when set reason, block_writes,
 *            table, object_name
 *
 * secret_file is the file the options name for the secret (the worker
 * uses it when no secret is stored).
 */
CREATE FUNCTION connect_guard.request_wire(r connect_guard.request, c connect_guard.connection,
                                           m connect_guard.mapping, p_step text,
                                           OUT step text, OUT method text, OUT url text, OUT body text,
                                           OUT auth text, OUT secret_file text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_api text;
BEGIN
    step := p_step;
    IF c.adapter = 'heroku' THEN
        v_api := (c.options ->> 'region_url') || '/api/v3';
        auth := 'bearer';
        secret_file := c.options ->> 'token_file';
        IF p_step = 'poll' OR r.action = 'refresh'
           OR (r.action = 'reload' AND (m.remote_id IS NULL OR NOT r.params ? 'reload_baseline')) THEN
            step := CASE WHEN p_step = 'poll' THEN 'poll' ELSE 'lookup' END;
            method := 'GET';
            url := format('%s/connections/%s?deep=true', v_api, c.options ->> 'connection_id');
        ELSIF r.action = 'reload' THEN
            method := 'POST';
            url := format('%s/mappings/%s/actions/reload', v_api, m.remote_id);
        ELSIF r.action IN ('export', 'import') THEN
            method := CASE r.action WHEN 'export' THEN 'GET' ELSE 'POST' END;
            url := format('%s/connections/%s/actions/%s', v_api, c.options ->> 'connection_id', r.action);
            body := r.payload::text;
        ELSE
            method := 'POST';
            url := format('%s/connections/%s/actions/%s', v_api, c.options ->> 'connection_id', r.action);
        END IF;
    ELSE
        auth := 'hmac';
        secret_file := c.options ->> 'secret_file';
        method := 'POST';
        url := c.options ->> 'url';
        body := jsonb_strip_nulls(jsonb_build_object(
            'connection', c.name,
            'action', r.action,
            'request_id', r.request_id,
            'requested_at', to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'requested_by', r.requested_by,
            'database', current_database(),
            'reason', r.params ->> 'reason',
            'block_writes', (r.params ->> 'block_writes')::boolean,
            'table', r.params ->> 'table',
            'object_name', r.params ->> 'object_name'))::text;
    END IF;
END;
$$;

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
        -- an object name that is only the table's name (adopted schemas) takes Connect's spelling
        UPDATE connect_guard.mapping mp
           SET remote_id = rm.id,
               object_name = CASE WHEN mp.object_name = mp.table_name THEN rm.spelling ELSE mp.object_name END
          FROM (SELECT lower(e ->> 'object_name') AS object_name, min(e ->> 'id') AS id,
                       min(e ->> 'object_name') AS spelling
                  FROM jsonb_array_elements(p_body -> 'mappings') e
                 WHERE e ->> 'id' ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'
                   -- an id that spells a secret is an echo, not an id (16_secrets.sql)
                   AND connect_guard.scrub(e ->> 'id') = e ->> 'id'
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

