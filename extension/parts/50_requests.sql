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
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.request (
    request_id      bigserial PRIMARY KEY,
    connection_id   integer NOT NULL REFERENCES connect_guard.connection ON DELETE CASCADE,
    -- the mapping a reload is for (its table and object name are also in params)
    mapping_id      integer REFERENCES connect_guard.mapping ON DELETE SET NULL,
    action          text NOT NULL CHECK (action IN ('pause', 'resume', 'reload', 'refresh', 'export', 'import')),
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
    -- what an import sends (the configuration file), and the answer to an export or import (64_config.sql)
    payload         jsonb,
    result          jsonb,
    requested_by    name NOT NULL DEFAULT session_user,
    -- lets connect_wait_state() refuse to wait for a request its own transaction made
    created_xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at    timestamptz
);
CREATE INDEX request_pending ON connect_guard.request (connection_id, request_id) WHERE status = 'pending';
CREATE INDEX ON connect_guard.request (connection_id, request_id);
-- what the sync service answered, and what was made of it, holds no secret (16_secrets.sql)
CREATE TRIGGER scrub_stored BEFORE INSERT OR UPDATE OF last_error, remote_state ON connect_guard.request
    FOR EACH ROW WHEN (NEW.last_error IS NOT NULL OR NEW.remote_state IS NOT NULL)
    EXECUTE FUNCTION connect_guard.scrub_stored('last_error', 'remote_state');

SELECT pg_catalog.pg_extension_config_dump('connect_guard.request', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.request_request_id_seq', '');

/*
 * The worker that took a request and has not yet recorded what came of it
 * (request_take, request_outcome: 60_request_worker.sql), by pid and
 * backend start, which tell it from a later process with the same pid, on
 * the timeline it wrote: while it lives, the request's lease holds; once it
 * is gone (killed, a crash restart, a stopped worker) the request is due at
 * once.  A taker on another timeline (a promoted follower, a restore took
 * over) was another server's worker, which may still be sending: the lease
 * holds for it, so that no request is sent twice at once.  A table of
 * its own rather than columns of request: request_outcome may find the
 * connection locked by a consumer, and a second update of the request row
 * in one transaction would check its foreign key against that locked row,
 * and wait for the consumer.  Not dumped: a taker means nothing elsewhere.
 */
CREATE TABLE connect_guard.request_taker (
    request_id      bigint PRIMARY KEY REFERENCES connect_guard.request ON DELETE CASCADE,
    pid             integer NOT NULL,
    backend_start   timestamptz,
    timeline        integer NOT NULL
);

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
    -- without the worker nobody would send it (08_worker.sql)
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
