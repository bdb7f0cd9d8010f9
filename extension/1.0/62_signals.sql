/* ------------------------------------------------------------------------
 * Signals to the sync service: Heroku Connect's API (adapter 'heroku') and
 * signed webhooks (adapter 'webhook').
 *
 * A user's call never makes an HTTP request: connect_pause(),
 * connect_resume(), connect_reload_mapping() and connect_refresh() store a
 * request in connect_guard.request and wake the background worker at
 * commit.  The worker (signals.c) takes due requests in a short transaction,
 * sends them with no transaction open, and records each outcome through
 * connect_guard.request_outcome(), which moves the request and the local
 * state along:
 *
 *   phase 'send'     POST the action (heroku: expect 202; webhook: any 2xx),
 *                    retried with backoff (1 s doubling, at most 60 s) up to
 *                    connect_guard.http_max_attempts.  A webhook answers a
 *                    reload with 200 when it has reloaded, or 202 when it
 *                    will, and then calls connect_mapping_reloaded()
 *   phase 'confirm'  heroku only: GET the connection (deep) until Connect
 *                    reports the state the action leads to, for at most
 *                    the request's timeout_s
 *   phase 'apply'    finish locally: a pause waits for the open batch, then
 *                    raises the fence and waits for the writers in flight
 *
 * Per connection, requests are sent one at a time, oldest first (but
 * reloads of different mappings together); a pause
 * or resume that a newer one replaced is not sent any more, and once done
 * it leaves the local state to the newer one.
 *
 * Secrets: a token or webhook key given inline is kept in
 * connect_guard.connection_secret (superusers only) and replaced in the
 * connection's options by "********"; token_file/secret_file name a file the
 * worker reads before every attempt (so a rotated token is picked up), and
 * keep the secret out of SQL text and so out of statement logs.  Neither
 * the events, the views, nor last_error ever hold a secret.
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.connection_secret (
    connection_id   integer PRIMARY KEY REFERENCES connect_guard.connection ON DELETE CASCADE,
    -- the Connect API token (heroku) or the HMAC key (webhook)
    secret          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
REVOKE ALL ON connect_guard.connection_secret FROM PUBLIC;
COMMENT ON TABLE connect_guard.connection_secret IS
    'connect_guard: secrets given inline to connect_create_connection(); readable by superusers only';

CREATE TABLE connect_guard.request (
    request_id      bigserial PRIMARY KEY,
    connection_id   integer NOT NULL REFERENCES connect_guard.connection ON DELETE CASCADE,
    -- the mapping a reload is for (its table and object name are also in params)
    mapping_id      integer REFERENCES connect_guard.mapping ON DELETE SET NULL,
    action          text NOT NULL CHECK (action IN ('pause', 'resume', 'reload', 'refresh')),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    phase           text NOT NULL DEFAULT 'send' CHECK (phase IN ('send', 'confirm', 'apply')),
    -- block_writes, cancel_writers, reason, timeout_s (how long to wait for the remote state), ...
    params          jsonb NOT NULL DEFAULT '{}',
    -- HTTP tries to deliver the action, and GETs polling its effect
    attempts        integer NOT NULL DEFAULT 0,
    polls           integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- until when the confirm or apply phase may go on
    deadline        timestamptz,
    last_http_status integer,
    -- the last failure, kept after a later success
    last_error      text,
    -- the last state Connect reported (of the connection, or of the mapping for a reload)
    remote_state    text,
    requested_by    name NOT NULL DEFAULT session_user,
    -- lets connect_wait_state() refuse to wait for a request its own transaction made
    created_xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at    timestamptz
);
CREATE INDEX request_pending ON connect_guard.request (connection_id, request_id) WHERE status = 'pending';
CREATE INDEX ON connect_guard.request (connection_id, request_id);

SELECT pg_catalog.pg_extension_config_dump('connect_guard.connection_secret', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.request', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.request_request_id_seq', '');

/*
 * connect_guard.secret_file_problem says why the worker could not use path
 * as a token or key file (NULL when it can), without its content.  Naming
 * a file the server reads needs the rights of pg_read_server_files: the
 * worker sends the file's line to the sync service's URL.
 */
CREATE FUNCTION connect_guard.secret_file_problem(path text)
RETURNS text LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_secret_file_problem';

/*
 * connect_guard.check_url refuses what is not an http(s) URL, and URLs with
 * credentials in them (they would show in the views and the event log).
 */
CREATE FUNCTION connect_guard.check_url(p_adapter text, p_key text, p_url text, p_example text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_url IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('a %s connection needs the option "%s"', p_adapter, p_key),
            HINT = format('For example: %s.', p_example);
    END IF;
    IF p_url !~ '^https?://[^/\s?#@]+(/[^\s?#@]*)?$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('option "%s" is not an http:// or https:// URL: %s', p_key, p_url),
            DETAIL = 'The URL must start with http:// or https://, hold no spaces, no query string and no user name or password.',
            HINT = format('For example: %s.', p_example);
    END IF;
    RETURN rtrim(p_url, '/');
END;
$$;

/*
 * connect_guard.prepare_options validates a connection's options for its
 * adapter and splits off an inline secret, which the caller stores in
 * connect_guard.connection_secret.
 */
CREATE FUNCTION connect_guard.prepare_options(p_adapter text, p_options jsonb,
                                              OUT options jsonb, OUT secret text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_allowed text[];
    v_inline text;
    v_file text;
    v_what text;
    v_example text;
    v_problem text;
    k text;
BEGIN
    options := p_options;
    IF p_adapter = 'local' THEN
        RETURN;
    ELSIF p_adapter = 'heroku' THEN
        v_allowed := ARRAY['region_url', 'connection_id', 'token_file', 'token', 'note'];
        v_inline := 'token';
        v_file := 'token_file';
        v_what := 'API token';
        v_example := '{"region_url": "https://connect.example.com", "connection_id": "<the id heroku connect:info shows>", '
                     '"token_file": "/etc/connect_guard/connect.token"}';
    ELSE
        v_allowed := ARRAY['url', 'secret_file', 'secret', 'note'];
        v_inline := 'secret';
        v_file := 'secret_file';
        v_what := 'webhook key';
        v_example := '{"url": "https://hooks.example.com/connect", "secret_file": "/etc/connect_guard/hook.key"}';
    END IF;

    FOR k IN SELECT jsonb_object_keys(p_options) LOOP
        IF NOT k = ANY (v_allowed) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('unknown option "%s" for a %s connection', k, p_adapter),
                HINT = format('The options of a %s connection are %s.', p_adapter, array_to_string(v_allowed, ', '));
        END IF;
        IF jsonb_typeof(p_options -> k) <> 'string' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('option "%s" must be a JSON string', k),
                HINT = format('For example: %s.', v_example);
        END IF;
    END LOOP;

    IF p_adapter = 'heroku' THEN
        options := jsonb_set(options, '{region_url}',
                             to_jsonb(connect_guard.check_url(p_adapter, 'region_url', p_options ->> 'region_url', v_example)));
        IF coalesce(p_options ->> 'connection_id', '') !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = CASE WHEN p_options ? 'connection_id'
                               THEN format('option "connection_id" is not a Connect connection id: %s', p_options ->> 'connection_id')
                               ELSE 'a heroku connection needs the option "connection_id"' END,
                DETAIL = 'It is the id of the connection in Heroku Connect (a UUID), not its name.',
                HINT = format('For example: %s.', v_example);
        END IF;
    ELSE
        options := jsonb_set(options, '{url}',
                             to_jsonb(connect_guard.check_url(p_adapter, 'url', p_options ->> 'url', v_example)));
    END IF;

    IF (p_options ? v_inline) = (p_options ? v_file) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('a %s connection needs exactly one of the options "%s" and "%s"', p_adapter, v_file, v_inline),
            DETAIL = format('"%s" names a file the server reads the %s from; "%s" gives it inline, and it is then kept where only superusers can read it.',
                            v_file, v_what, v_inline),
            HINT = format('Prefer "%s": a secret written in SQL text shows up in statement logs.', v_file);
    END IF;
    IF p_options ? v_inline THEN
        secret := p_options ->> v_inline;
        IF secret !~ '^[!-~]+$' OR length(secret) > 4096 THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('option "%s" is not a valid %s', v_inline, v_what),
                DETAIL = 'It must be 1 to 4096 printable ASCII characters, without spaces.',
                HINT = format('Check the value, or use "%s".', v_file);
        END IF;
        options := jsonb_set(options, ARRAY[v_inline], '"********"');
    ELSE
        v_problem := connect_guard.secret_file_problem(p_options ->> v_file);
        IF v_problem IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('cannot use "%s" as the %s file', p_options ->> v_file, v_what),
                DETAIL = v_problem || '.',
                HINT = format('Give the absolute path of a file that the server''s operating system user can read and other users cannot (chmod 600), holding the %s on one line.', v_what);
        END IF;
    END IF;
END;
$$;

/*
 * connect_guard.request_enqueue stores a request for the worker and wakes
 * it at commit; the entry point for other modules too (e.g. a reload after
 * a rollback).
 */
CREATE FUNCTION connect_guard.request_enqueue(p_connection_id integer, p_action text,
                                              p_mapping_id integer DEFAULT NULL,
                                              p_params jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
    v_adapter text;
BEGIN
    SELECT c.adapter INTO v_adapter FROM connect_guard.connection c WHERE c.connection_id = p_connection_id;
    IF v_adapter IS DISTINCT FROM 'heroku' AND v_adapter IS DISTINCT FROM 'webhook' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection %s has no sync service to send a %s request to', p_connection_id, p_action),
            DETAIL = format('Its adapter is %s.', coalesce(v_adapter, 'unknown: the connection does not exist')),
            HINT = 'Requests go to heroku and webhook connections only; a local consumer reads the local state.';
    END IF;
    -- without the worker nobody would send it (60_worker.sql)
    PERFORM connect_guard.require_worker(format('sending a %s request to the sync service', p_action));
    INSERT INTO connect_guard.request (connection_id, mapping_id, action, params)
    VALUES (p_connection_id, p_mapping_id, p_action, coalesce(p_params, '{}'))
    RETURNING request_id INTO v_id;
    PERFORM connect_guard.log_event(p_connection_id, 'request_queued',
                                    jsonb_build_object('request_id', v_id, 'action', p_action) || coalesce(p_params, '{}'));
    PERFORM connect_guard.wake_worker();     -- at commit: the worker must see the row
    RETURN v_id;
END;
$$;

-- connect_guard.latest_state_request: the newest pause or resume of a connection
CREATE FUNCTION connect_guard.latest_state_request(p_connection_id integer)
RETURNS connect_guard.request
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM connect_guard.request r
     WHERE r.connection_id = p_connection_id AND r.action IN ('pause', 'resume')
     ORDER BY r.request_id DESC LIMIT 1;
$$;

/*
 * connect_guard.request_pause is connect_pause() for a connection with a
 * remote sync service: the request is stored, the state is PAUSING, and the
 * worker does the rest (see the top of this file).
 */
CREATE FUNCTION connect_guard.request_pause(p_connection text, p_block_writes boolean, p_timeout interval,
                                            p_reason text, p_cancel_writers boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r connect_guard.request;
    v_id bigint;
BEGIN
    c := connect_guard.connection_for_update(p_connection);
    r := connect_guard.latest_state_request(c.connection_id);
    IF c.state = 'PAUSED' OR (c.state = 'PAUSING' AND r.action IS DISTINCT FROM 'pause')
       OR (c.state = 'PAUSING' AND r.status <> 'failed') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is already paused', p_connection),
            DETAIL = format('It has been %s since %s.%s', c.state, c.state_since,
                            CASE WHEN c.state = 'PAUSING' AND r.status = 'pending'
                                 THEN format(' Pause request %s is on its way to the sync service.', r.request_id) ELSE '' END),
            HINT = 'Resume it with connect_resume() first, or leave it paused; connect_wait_state() waits for PAUSED.';
    END IF;
    IF p_block_writes AND NOT connect_guard.fence_available() THEN
        PERFORM connect_guard.fence_raise('connection', NULL, NULL, NULL, '{}', '{}');   -- raises the error
    END IF;
    v_id := connect_guard.request_enqueue(c.connection_id, 'pause', NULL,
        jsonb_build_object('block_writes', coalesce(p_block_writes, false),
                           'cancel_writers', coalesce(p_cancel_writers, false),
                           'reason', p_reason,
                           'timeout_s', extract(epoch FROM coalesce(p_timeout, '30 s'))::double precision));
    UPDATE connect_guard.connection
       SET state = 'PAUSING', state_since = clock_timestamp(),
           state_reason = coalesce(p_reason, 'paused for maintenance')
     WHERE connection_id = c.connection_id;
    PERFORM connect_guard.log_event(c.connection_id, 'pausing',
        jsonb_build_object('request_id', v_id, 'adapter', c.adapter, 'block_writes', coalesce(p_block_writes, false),
                           'reason', p_reason));
    RETURN 'PAUSING';
END;
$$;

/*
 * connect_guard.request_resume is connect_resume() for a connection with a
 * remote sync service: the fence goes down at once, the state is RESUMING
 * until the sync service says it runs again.
 */
CREATE FUNCTION connect_guard.request_resume(p_connection text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r connect_guard.request;
    v_id bigint;
BEGIN
    c := connect_guard.connection_for_update(p_connection);
    r := connect_guard.latest_state_request(c.connection_id);
    IF NOT (c.state IN ('PAUSED', 'PAUSING')
            OR (c.state = 'RESUMING' AND r.action = 'resume' AND r.status = 'failed')) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is not paused', p_connection),
            DETAIL = format('It is %s.%s', c.state,
                            CASE WHEN c.state = 'RESUMING' AND r.status = 'pending'
                                 THEN format(' Resume request %s is on its way to the sync service.', r.request_id) ELSE '' END),
            HINT = 'Only a paused connection can be resumed; see connect_status, and connect_wait_state() to wait for IDLE.';
    END IF;
    IF c.fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(c.fence_id);
    END IF;
    v_id := connect_guard.request_enqueue(c.connection_id, 'resume', NULL, jsonb_build_object('timeout_s', 300));
    UPDATE connect_guard.connection
       SET state = 'RESUMING', state_since = clock_timestamp(), state_reason = NULL, fence_id = NULL
     WHERE connection_id = c.connection_id;
    PERFORM connect_guard.log_event(c.connection_id, 'resuming',
        jsonb_build_object('request_id', v_id, 'adapter', c.adapter, 'fence_id', c.fence_id,
                           'paused_for_ms', round(extract(epoch FROM clock_timestamp() - c.state_since) * 1000)));
    RETURN 'RESUMING';
END;
$$;

/*
 * connect_refresh asks Connect for the connection's state and fills in the
 * remote id of every mapping that has none, by object name.  Returns the
 * request id.
 */
CREATE FUNCTION connect_refresh(connection text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    c := connect_guard.connection_for_update(connection);
    IF c.adapter <> 'heroku' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" cannot be refreshed from Heroku Connect', c.name),
            DETAIL = format('Its adapter is %s, which has no API to read the state from.', c.adapter),
            HINT = 'Only heroku connections can be refreshed.';
    END IF;
    RETURN connect_guard.request_enqueue(c.connection_id, 'refresh');
END;
$$;

/*
 * connect_set_mapping_remote_id records Connect's id of a mapping (NULL
 * forgets it); reloads are sent to that id.
 */
CREATE FUNCTION connect_set_mapping_remote_id(connection text, tbl regclass, remote_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
BEGIN
    c := connect_guard.connection_for_update(connection);
    m := connect_guard.mapping_of(c, tbl);
    IF remote_id !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid remote mapping id %s', quote_literal(remote_id)),
            DETAIL = 'A mapping id is 1 to 128 letters, digits, "_", ".", ":" or "-".',
            HINT = 'Copy the id Heroku Connect shows for the mapping, or call connect_refresh() to fill it in by object name.';
    END IF;
    UPDATE connect_guard.mapping mp SET remote_id = connect_set_mapping_remote_id.remote_id
     WHERE mp.mapping_id = m.mapping_id;
    PERFORM connect_guard.log_event(c.connection_id, 'mapping_remote_id',
        jsonb_build_object('table', format('%I.%I', m.table_schema, m.table_name),
                           'object_name', m.object_name, 'remote_id', remote_id, 'previous', m.remote_id,
                           'source', 'connect_set_mapping_remote_id'));
END;
$$;

/*
 * connect_wait_state returns once the connection is in the given state
 * ('IDLE' also accepts POLLING_DB_CHANGES: both mean it runs), for
 * runbooks.  It fails at the timeout, or at once when the connection's last
 * pause or resume request failed, since then nothing will change the state
 * until someone acts; the error says why.
 */
CREATE FUNCTION connect_wait_state(connection text, state text, timeout interval DEFAULT '5 min')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r connect_guard.request;
    v_deadline timestamptz := clock_timestamp() + coalesce(timeout, '5 min');
    v_targets text[];
    v_last text;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_wait_state()');
    IF state IS NULL OR state NOT IN ('IDLE', 'POLLING_DB_CHANGES', 'PAUSING', 'PAUSED', 'RESUMING') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown connection state %s', coalesce(quote_literal(state), 'NULL')),
            HINT = 'Wait for PAUSED (after connect_pause) or IDLE (after connect_resume).';
    END IF;
    v_targets := CASE WHEN state = 'IDLE' THEN ARRAY['IDLE', 'POLLING_DB_CHANGES'] ELSE ARRAY[state] END;
    SELECT * INTO c FROM connect_guard.connection WHERE name = connect_wait_state.connection;
    IF NOT FOUND THEN
        PERFORM connect_guard.connection_for_update(connection);   -- raises the error
    END IF;
    IF EXISTS (SELECT 1 FROM connect_guard.request q
                WHERE q.connection_id = c.connection_id AND q.status = 'pending'
                  AND q.created_xid = pg_current_xact_id_if_assigned()) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_transaction_state',
            MESSAGE = 'connect_wait_state() cannot wait for a request made in its own transaction',
            DETAIL = 'The worker sends a request only once the transaction that made it has committed.',
            HINT = 'Commit after connect_pause() or connect_resume(), then call connect_wait_state().';
    END IF;

    LOOP
        -- each statement sees what has committed since the last one (READ COMMITTED)
        SELECT * INTO c FROM connect_guard.connection WHERE connection_id = c.connection_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING
                ERRCODE = 'undefined_object',
                MESSAGE = format('connection "%s" was dropped while waiting for it to be %s', connection, state);
        END IF;
        IF c.state = ANY (v_targets) THEN
            RETURN c.state;
        END IF;
        r := connect_guard.latest_state_request(c.connection_id);
        v_last := CASE WHEN r.request_id IS NULL THEN ''
                       ELSE format(' Its last request, %s %s, %s after %s attempt%s%s.', r.action, r.request_id,
                                   CASE r.status WHEN 'pending' THEN 'is pending' ELSE r.status END,
                                   r.attempts, CASE WHEN r.attempts = 1 THEN '' ELSE 's' END,
                                   CASE WHEN r.last_error IS NOT NULL THEN '; last error: ' || r.last_error ELSE '' END) END;
        IF r.status = 'failed' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('connection "%s" will not become %s: its %s request %s failed', connection, state,
                                 r.action, r.request_id),
                DETAIL = format('It is %s since %s.%s', c.state, c.state_since, v_last),
                HINT = format('Fix the cause, then call %s again; connect_requests and the event log have the details.',
                              CASE r.action WHEN 'pause' THEN 'connect_pause()' ELSE 'connect_resume()' END);
        END IF;
        IF clock_timestamp() > v_deadline THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('timed out after %s s waiting for connection "%s" to be %s',
                                 round(extract(epoch FROM coalesce(timeout, '5 min'))::numeric, 1), connection, state),
                DETAIL = format('It is %s since %s.%s', c.state, c.state_since, v_last),
                HINT = 'See connect_requests; check that the connect_guard worker runs (shared_preload_libraries) and reaches the sync service.';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END;
$$;

/* ------------------------------------------------------------------------
 * The worker's side.  signals.c calls request_take() and request_outcome();
 * everything else here is theirs.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.request_close ends a request; a failed pause or resume
 * that is the connection's last one also says why in its state_reason.
 */
CREATE FUNCTION connect_guard.request_close(p_request_id bigint, p_status text, p_error text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
BEGIN
    UPDATE connect_guard.request q
       SET status = p_status, completed_at = clock_timestamp(), updated_at = clock_timestamp(),
           last_error = coalesce(p_error, q.last_error)
     WHERE q.request_id = p_request_id
    RETURNING q.* INTO r;
    IF p_status = 'failed' THEN
        PERFORM connect_guard.log_event(r.connection_id, 'request_failed',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempts', r.attempts,
                               'polls', r.polls, 'http_status', r.last_http_status, 'error', p_error));
        IF r.action IN ('pause', 'resume')
           AND (connect_guard.latest_state_request(r.connection_id)).request_id = r.request_id THEN
            UPDATE connect_guard.connection
               SET state_reason = left(format('%s request %s failed: %s', r.action, r.request_id, p_error), 2000)
             WHERE connection_id = r.connection_id;
        END IF;
    ELSE
        PERFORM connect_guard.log_event(r.connection_id, 'request_succeeded',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempts', r.attempts,
                               'polls', r.polls, 'http_status', r.last_http_status, 'remote_state', r.remote_state,
                               'took_ms', round(extract(epoch FROM r.completed_at - r.created_at) * 1000)));
    END IF;
END;
$$;

/*
 * connect_guard.request_retry records a failed try to deliver the action
 * and schedules the next one (1 s doubling, at most 60 s), or fails the
 * request after connect_guard.http_max_attempts tries or at once for an
 * answer that no retry can change.
 */
CREATE FUNCTION connect_guard.request_retry(p_request_id bigint, p_http_status integer, p_error text,
                                            p_permanent boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    v_max integer := greatest(1, coalesce(nullif(current_setting('connect_guard.http_max_attempts', true), '')::integer, 8));
    v_delay double precision;
BEGIN
    UPDATE connect_guard.request q
       SET last_http_status = p_http_status, last_error = p_error, updated_at = clock_timestamp()
     WHERE q.request_id = p_request_id
    RETURNING q.* INTO r;
    IF p_permanent THEN
        PERFORM connect_guard.request_close(r.request_id, 'failed', p_error);
    ELSIF r.attempts >= v_max THEN
        PERFORM connect_guard.request_close(r.request_id, 'failed',
            format('%s (gave up after %s attempts)', p_error, r.attempts));
    ELSE
        v_delay := least(60, power(2, greatest(r.attempts, 1) - 1));
        UPDATE connect_guard.request q
           SET next_attempt_at = clock_timestamp() + make_interval(secs => v_delay)
         WHERE q.request_id = r.request_id;
        PERFORM connect_guard.log_event(r.connection_id, 'request_retry',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempt', r.attempts,
                               'http_status', p_http_status, 'error', p_error, 'retry_in_s', v_delay));
    END IF;
END;
$$;

/*
 * connect_guard.request_poll_again schedules the next look at Connect's
 * state (0.5 s growing to 10 s), or fails the request past its deadline.
 */
CREATE FUNCTION connect_guard.request_poll_again(p_request_id bigint, p_expected text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    IF clock_timestamp() > r.deadline THEN
        PERFORM connect_guard.request_close(r.request_id, 'failed',
            format('Connect accepted the %s but did not report %s within %s s (last reported: %s%s)',
                   r.action, p_expected, coalesce(r.params ->> 'timeout_s', '300'), coalesce(r.remote_state, 'nothing'),
                   CASE WHEN r.last_error IS NOT NULL THEN '; last error: ' || r.last_error ELSE '' END));
    ELSE
        UPDATE connect_guard.request q
           SET next_attempt_at = clock_timestamp()
                                 + make_interval(secs => least(CASE WHEN r.action = 'reload' AND NOT r.params ? 'reload_seen_at'
                                                                    THEN 2 ELSE 10 END,
                                                               0.5 * power(1.5, r.polls))),
               updated_at = clock_timestamp()
         WHERE q.request_id = r.request_id;
    END IF;
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
 * connect_guard.request_apply finishes a request locally, once the sync
 * service has done its part.  A pause waits for the open batch (as the
 * local pause does), then raises the fence and waits for the writers in
 * flight, each within the request's timeout; the fence goes up only now,
 * after Connect has finished its own pending writes.  A pause or resume
 * that a newer one follows leaves the local state alone.
 */
CREATE FUNCTION connect_guard.request_apply(p_request_id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    c connect_guard.connection;
    b connect_guard.batch;
    t record;
    v_timeout interval;
    v_deadline timestamptz;
    v_fence integer;
    v_reason text;
    v_message text;
    v_detail text;
    v_in_flight text;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = r.connection_id FOR UPDATE;
    v_timeout := make_interval(secs => coalesce((r.params ->> 'timeout_s')::double precision, 30));

    IF r.action IN ('pause', 'resume')
       AND (connect_guard.latest_state_request(r.connection_id)).request_id <> r.request_id THEN
        PERFORM connect_guard.request_close(r.request_id, 'succeeded');
        RETURN;
    END IF;

    IF r.action = 'pause' THEN
        v_deadline := CASE WHEN r.phase = 'apply' THEN r.deadline ELSE clock_timestamp() + v_timeout END;
        SELECT * INTO b FROM connect_guard.batch WHERE connection_id = c.connection_id AND finished_at IS NULL;
        IF FOUND THEN
            IF clock_timestamp() > v_deadline THEN
                PERFORM connect_guard.request_close(r.request_id, 'failed',
                    format('batch %s, taken by "%s", has been open for %s s: the connection pauses only when idle',
                           b.batch_id, b.taken_by, round(extract(epoch FROM clock_timestamp() - b.taken_at)::numeric, 1)));
            ELSE
                UPDATE connect_guard.request q
                   SET phase = 'apply', deadline = v_deadline, updated_at = clock_timestamp(),
                       next_attempt_at = clock_timestamp() + interval '200 ms'
                 WHERE q.request_id = r.request_id;
            END IF;
            RETURN;
        END IF;
        -- an adopted log: Connect's entries still being sent (15_log_sources.sql)
        v_in_flight := connect_guard.log_sends_in_flight(c.connection_id);
        IF v_in_flight IS NOT NULL THEN
            IF clock_timestamp() > v_deadline THEN
                PERFORM connect_guard.request_close(r.request_id, 'failed',
                    format('Connect reports PAUSED, but %s', v_in_flight));
            ELSE
                UPDATE connect_guard.request q
                   SET phase = 'apply', deadline = v_deadline, updated_at = clock_timestamp(),
                       next_attempt_at = clock_timestamp() + interval '200 ms'
                 WHERE q.request_id = r.request_id;
            END IF;
            RETURN;
        END IF;

        IF (r.params ->> 'block_writes')::boolean AND c.fence_id IS NULL THEN
            v_reason := coalesce(r.params ->> 'reason', format('connection "%s" paused for maintenance', c.name));
            t := connect_guard.fence_targets(c.connection_id);
            BEGIN
                v_fence := connect_guard.fence_raise('connection', c.connection_id, c.name, v_reason,
                                                     t.relids, t.relconnections);
                UPDATE connect_guard.connection SET fence_id = v_fence WHERE connection_id = c.connection_id;
                PERFORM connect_guard.wait_for_writers(t.relids, clock_timestamp() + v_timeout,
                                                       coalesce((r.params ->> 'cancel_writers')::boolean, false));
            EXCEPTION WHEN lock_not_available OR object_not_in_prerequisite_state THEN
                GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
                -- the fence is shared memory: a rolled back subtransaction does not lower it
                IF v_fence IS NOT NULL THEN
                    PERFORM connect_guard.fence_lower(v_fence);
                END IF;
                PERFORM connect_guard.request_close(r.request_id, 'failed',
                    format('Connect is paused but the fence could not be raised: %s%s', v_message,
                           CASE WHEN v_detail <> '' THEN ' (' || v_detail || ')' ELSE '' END));
                RETURN;
            END;
            c.fence_id := v_fence;
        END IF;
        UPDATE connect_guard.connection SET state = 'PAUSED', state_since = clock_timestamp()
         WHERE connection_id = c.connection_id;
        PERFORM connect_guard.log_event(c.connection_id, 'paused',
            jsonb_build_object('request_id', r.request_id, 'adapter', c.adapter,
                               'block_writes', (r.params ->> 'block_writes')::boolean, 'fence_id', c.fence_id,
                               'reason', r.params ->> 'reason',
                               'waited_ms', round(extract(epoch FROM clock_timestamp() - r.created_at) * 1000)));
    ELSIF r.action = 'resume' THEN
        UPDATE connect_guard.connection SET state = 'IDLE', state_since = clock_timestamp(), state_reason = NULL
         WHERE connection_id = c.connection_id;
        PERFORM connect_guard.log_event(c.connection_id, 'resumed',
            jsonb_build_object('request_id', r.request_id, 'adapter', c.adapter,
                               'waited_ms', round(extract(epoch FROM clock_timestamp() - r.created_at) * 1000)));
    ELSIF r.action = 'reload' AND r.mapping_id IS NOT NULL THEN
        UPDATE connect_guard.mapping SET state = 'DATA_SYNCED', state_since = clock_timestamp()
         WHERE mapping_id = r.mapping_id AND state = 'RELOAD_TABLE';
        PERFORM connect_guard.log_event(c.connection_id, 'table_reloaded',
            jsonb_build_object('request_id', r.request_id, 'table', r.params ->> 'table',
                               'object_name', r.params ->> 'object_name'));
    END IF;
    PERFORM connect_guard.request_close(r.request_id, 'succeeded');
    IF r.action = 'reload' THEN
        PERFORM connect_guard.rollback_release();     -- the last acknowledged reload lowers the fence
    END IF;
END;
$$;

/*
 * connect_guard.request_take hands the worker the requests that are due:
 * per connection the oldest pending one, locked, with what to send.  Each
 * is leased (next_attempt_at moves past the HTTP timeout) so that a worker
 * that dies in the middle does not leave it stuck, nor have it sent twice
 * at once.  Steps: 'send' (the action), 'lookup' (a deep GET to find
 * mapping ids, or for a refresh), 'poll' (a deep GET to see the effect),
 * 'apply' (nothing to send).  auth is 'bearer' (secret is the token) or
 * 'hmac' (secret is the key to sign body with); with secret NULL the worker
 * reads secret_file.
 */
CREATE FUNCTION connect_guard.request_take(p_limit integer, p_lease_ms integer)
RETURNS TABLE (t_request_id bigint, t_step text, t_method text, t_url text, t_body text,
               t_auth text, t_secret text, t_secret_file text, t_description text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    c connect_guard.connection;
    m connect_guard.mapping;
    s record;
    v_api text;
BEGIN
    -- a pause or resume that a newer one replaced is not sent any more
    FOR s IN
        UPDATE connect_guard.request o
           SET status = 'failed', completed_at = clock_timestamp(), updated_at = clock_timestamp(),
               last_error = format('superseded by %s request %s before it completed', l.action, l.request_id)
          FROM (SELECT DISTINCT ON (q.connection_id) q.connection_id, q.request_id, q.action
                  FROM connect_guard.request q
                 WHERE q.status = 'pending' AND q.action IN ('pause', 'resume')
                 ORDER BY q.connection_id, q.request_id DESC) l
         WHERE o.connection_id = l.connection_id AND o.status = 'pending'
           AND o.action IN ('pause', 'resume') AND o.request_id < l.request_id
        RETURNING o.connection_id, o.request_id, o.action, l.request_id AS by_request
    LOOP
        PERFORM connect_guard.log_event(s.connection_id, 'request_superseded',
            jsonb_build_object('request_id', s.request_id, 'action', s.action, 'by_request', s.by_request));
    END LOOP;

    FOR r IN
        SELECT q.* FROM connect_guard.request q
         WHERE q.status = 'pending' AND q.next_attempt_at <= clock_timestamp()
           AND NOT EXISTS (SELECT 1 FROM connect_guard.request o
                            WHERE o.connection_id = q.connection_id AND o.status = 'pending'
                              AND o.request_id < q.request_id
                              -- reloads of different mappings go out together: after a
                              -- rollback, N tables must not take N reload times
                              AND NOT (o.action = 'reload' AND q.action = 'reload'))
         ORDER BY q.request_id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        SELECT * INTO c FROM connect_guard.connection WHERE connection_id = r.connection_id;
        m := NULL;
        IF r.mapping_id IS NOT NULL THEN
            SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = r.mapping_id;
        END IF;
        IF r.action = 'reload' AND m.mapping_id IS NULL THEN
            PERFORM connect_guard.request_close(r.request_id, 'failed',
                'the table was unmapped before the reload was sent');
            CONTINUE;
        END IF;

        t_request_id := r.request_id;
        t_step := CASE r.phase WHEN 'apply' THEN 'apply' WHEN 'confirm' THEN 'poll' ELSE 'send' END;
        t_method := NULL; t_url := NULL; t_body := NULL; t_auth := NULL; t_secret := NULL; t_secret_file := NULL;
        t_description := format('connect_guard: %s request %s of connection "%s"', r.action, r.request_id, c.name);
        IF t_step <> 'apply' THEN
            IF c.adapter = 'heroku' THEN
                v_api := (c.options ->> 'region_url') || '/api/v3';
                t_auth := 'bearer';
                t_secret_file := c.options ->> 'token_file';
                IF t_step = 'poll' OR r.action = 'refresh' OR (r.action = 'reload' AND m.remote_id IS NULL) THEN
                    t_step := CASE WHEN t_step = 'poll' THEN 'poll' ELSE 'lookup' END;
                    t_method := 'GET';
                    t_url := format('%s/connections/%s?deep=true', v_api, c.options ->> 'connection_id');
                ELSIF r.action = 'reload' THEN
                    t_method := 'POST';
                    t_url := format('%s/mappings/%s/actions/reload', v_api, m.remote_id);
                ELSE
                    t_method := 'POST';
                    t_url := format('%s/connections/%s/actions/%s', v_api, c.options ->> 'connection_id', r.action);
                END IF;
            ELSE
                t_auth := 'hmac';
                t_secret_file := c.options ->> 'secret_file';
                t_method := 'POST';
                t_url := c.options ->> 'url';
                t_body := jsonb_strip_nulls(jsonb_build_object(
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
            SELECT cs.secret INTO t_secret FROM connect_guard.connection_secret cs
             WHERE cs.connection_id = c.connection_id;
            IF t_secret IS NOT NULL THEN
                t_secret_file := NULL;
            END IF;
        END IF;

        UPDATE connect_guard.request q
           SET attempts = q.attempts + CASE WHEN t_step IN ('send', 'lookup') THEN 1 ELSE 0 END,
               polls = q.polls + CASE WHEN t_step = 'poll' THEN 1 ELSE 0 END,
               next_attempt_at = clock_timestamp() + make_interval(secs => p_lease_ms / 1000.0),
               updated_at = clock_timestamp()
         WHERE q.request_id = r.request_id;
        RETURN NEXT;
    END LOOP;
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
 * connect_guard.request_outcome records what one step of a request gave
 * and moves the request and the local state along (see the top of this
 * file).  p_step is what request_take() said; or 'unsent' when the worker
 * could not send it (e.g. an unreadable token file), or 'error' when it
 * failed recording an outcome (p_error says why).
 */
CREATE FUNCTION connect_guard.request_outcome(p_request_id bigint, p_step text, p_http_status integer,
                                              p_error text, p_body text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    c connect_guard.connection;
    e record;
    v_json jsonb;
    v_ok boolean := coalesce(p_http_status BETWEEN 200 AND 299, false);
    v_state text;
    v_expected text;
    v_error text;
BEGIN
    -- the connection first, then the request: the order the user's calls lock in
    SELECT cn.* INTO c FROM connect_guard.connection cn
     WHERE cn.connection_id = (SELECT q.connection_id FROM connect_guard.request q WHERE q.request_id = p_request_id)
       FOR UPDATE;
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id FOR UPDATE;
    IF NOT FOUND OR r.status <> 'pending' THEN
        RETURN;                 -- dropped or superseded while it was sent
    END IF;

    IF p_step IN ('error', 'unsent') THEN
        v_error := CASE p_step WHEN 'error' THEN 'the worker failed: ' || p_error ELSE p_error END;
        IF r.phase = 'send' THEN
            PERFORM connect_guard.request_retry(r.request_id, NULL, v_error, false);
        ELSIF r.phase = 'confirm' THEN
            UPDATE connect_guard.request SET last_error = v_error WHERE request_id = r.request_id;
            PERFORM connect_guard.request_poll_again(r.request_id, 'the new state');
        ELSE
            PERFORM connect_guard.request_close(r.request_id, 'failed', v_error);
        END IF;
        RETURN;
    END IF;

    IF p_step = 'apply' THEN
        PERFORM connect_guard.request_apply(r.request_id);
        RETURN;
    END IF;

    IF NOT v_ok THEN
        SELECT * INTO e FROM connect_guard.request_http_error(c.adapter, r.action, p_http_status, p_error, p_body);
        IF p_step = 'poll' THEN
            UPDATE connect_guard.request
               SET last_http_status = p_http_status, last_error = e.message, updated_at = clock_timestamp()
             WHERE request_id = r.request_id;
            PERFORM connect_guard.request_poll_again(r.request_id, 'the new state');
        ELSE
            PERFORM connect_guard.request_retry(r.request_id, p_http_status, e.message, e.permanent);
        END IF;
        RETURN;
    END IF;

    UPDATE connect_guard.request SET last_http_status = p_http_status, updated_at = clock_timestamp()
     WHERE request_id = r.request_id;

    IF p_step = 'send' THEN
        -- a webhook may answer with its own high-water mark, as Connect's deep GET does
        IF c.adapter = 'webhook' THEN
            BEGIN
                v_json := p_body::jsonb;
            EXCEPTION WHEN OTHERS THEN
                v_json := NULL;
            END;
            IF jsonb_typeof(v_json) = 'object' THEN
                PERFORM connect_guard.note_remote_hwm(c.connection_id, v_json);
            END IF;
        END IF;
        IF c.adapter = 'heroku' AND r.action = 'reload' AND p_http_status <> 202 THEN
            -- only 202 Accepted says Connect queued the reload (63_reload_acknowledgement.sql)
            PERFORM connect_guard.request_retry(r.request_id, p_http_status,
                format('Connect answered HTTP %s to the reload, not 202 Accepted: it is not known to have queued it',
                       p_http_status), true);
            RETURN;
        END IF;
        PERFORM connect_guard.log_event(c.connection_id, 'request_accepted',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempt', r.attempts,
                               'http_status', p_http_status));
        IF c.adapter = 'webhook' AND r.action = 'reload' AND p_http_status = 202 THEN
            -- 202 Accepted: the receiver reloads later and acknowledges with connect_mapping_reloaded()
            UPDATE connect_guard.request SET remote_state = 'RELOAD_TABLE' WHERE request_id = r.request_id;
            PERFORM connect_guard.request_close(r.request_id, 'succeeded');
        ELSIF c.adapter = 'heroku' AND r.action IN ('pause', 'resume', 'reload') THEN
            UPDATE connect_guard.request
               SET phase = 'confirm', next_attempt_at = clock_timestamp(),
                   deadline = clock_timestamp() + make_interval(secs => coalesce((params ->> 'timeout_s')::double precision, 300))
             WHERE request_id = r.request_id;
        ELSE
            PERFORM connect_guard.request_apply(r.request_id);
        END IF;
        RETURN;
    END IF;

    -- 'lookup' and 'poll': a deep GET of the connection
    BEGIN
        v_json := p_body::jsonb;
    EXCEPTION WHEN OTHERS THEN
        v_json := NULL;
    END;
    IF jsonb_typeof(v_json) IS DISTINCT FROM 'object' THEN
        SELECT * INTO e FROM connect_guard.request_http_error(c.adapter, r.action, p_http_status, NULL, p_body);
        IF p_step = 'poll' THEN
            UPDATE connect_guard.request SET last_error = 'Connect answered without a JSON object: ' || e.message
             WHERE request_id = r.request_id;
            PERFORM connect_guard.request_poll_again(r.request_id, 'the new state');
        ELSE
            PERFORM connect_guard.request_retry(r.request_id, p_http_status,
                                                'Connect answered without a JSON object: ' || e.message, false);
        END IF;
        RETURN;
    END IF;
    PERFORM connect_guard.remote_ids_from(c.connection_id, v_json);
    PERFORM connect_guard.note_remote_hwm(c.connection_id, v_json);

    IF p_step = 'lookup' THEN
        UPDATE connect_guard.request SET remote_state = v_json ->> 'state' WHERE request_id = r.request_id;
        IF r.action = 'refresh' THEN
            PERFORM connect_guard.log_event(c.connection_id, 'refreshed',
                jsonb_build_object('request_id', r.request_id, 'remote_state', v_json ->> 'state',
                                   'mappings', (SELECT jsonb_agg(jsonb_build_object('id', x ->> 'id',
                                                                                    'object_name', x ->> 'object_name',
                                                                                    'state', x ->> 'state'))
                                                  FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v_json -> 'mappings') = 'array'
                                                                                 THEN v_json -> 'mappings' ELSE '[]' END) x)));
            PERFORM connect_guard.request_close(r.request_id, 'succeeded');
        ELSIF EXISTS (SELECT 1 FROM connect_guard.mapping WHERE mapping_id = r.mapping_id AND remote_id IS NOT NULL) THEN
            UPDATE connect_guard.request SET next_attempt_at = clock_timestamp() WHERE request_id = r.request_id;
        ELSE
            PERFORM connect_guard.request_close(r.request_id, 'failed',
                format('Connect lists no mapping for object %s on connection %s: set its id with connect_set_mapping_remote_id()',
                       r.params ->> 'object_name', c.options ->> 'connection_id'));
        END IF;
        RETURN;
    END IF;

    -- 'poll': has Connect done it?
    IF r.action = 'reload' THEN
        SELECT x ->> 'state' INTO v_state
          FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v_json -> 'mappings') = 'array'
                                         THEN v_json -> 'mappings' ELSE '[]' END) x
          JOIN connect_guard.mapping mp ON mp.mapping_id = r.mapping_id AND mp.remote_id = x ->> 'id';
        v_expected := 'RELOAD_TABLE and then DATA_SYNCED';
    ELSE
        v_state := v_json ->> 'state';
        v_expected := CASE r.action WHEN 'pause' THEN 'PAUSED' ELSE 'IDLE' END;
    END IF;
    UPDATE connect_guard.request SET remote_state = v_state WHERE request_id = r.request_id;
    -- a reload is done once Connect was seen working on it (63_reload_acknowledgement.sql)
    IF (CASE WHEN r.action = 'reload' THEN connect_guard.reload_acknowledged(r.request_id, v_state)
             ELSE v_state = v_expected OR (r.action = 'resume' AND v_state = 'POLLING_DB_CHANGES') END) THEN
        PERFORM connect_guard.request_apply(r.request_id);
    ELSE
        PERFORM connect_guard.request_poll_again(r.request_id, v_expected);
    END IF;
END;
$$;

CREATE VIEW connect_requests AS
SELECT r.request_id,
       c.name AS connection,
       c.adapter,
       r.action,
       r.params ->> 'table' AS table_name,
       r.status,
       r.phase,
       r.attempts,
       r.polls,
       CASE WHEN r.status = 'pending' THEN r.next_attempt_at END AS next_attempt_at,
       r.last_http_status,
       r.last_error,
       r.remote_state,
       r.params ->> 'reason' AS reason,
       r.requested_by,
       r.created_at,
       r.updated_at,
       r.completed_at
  FROM connect_guard.request r JOIN connect_guard.connection c USING (connection_id);

GRANT SELECT ON connect_requests TO pg_monitor;
