/* ------------------------------------------------------------------------
 * The life of a request once the worker has tried it: retries with
 * backoff, polls of the remote state, the end of a request, and what a
 * request that the sync service carried out does locally (request_apply).
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
            PERFORM connect_guard.connection_note(r.connection_id,
                format('%s request %s failed: %s', r.action, r.request_id, p_error));
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
    -- registered by signals.c; only the worker, which has the library loaded, records outcomes
    v_max integer := current_setting('connect_guard.http_max_attempts')::integer;
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
    v_timeout interval;
    v_deadline timestamptz;
    v_message text;
    v_detail text;
    v_in_flight text;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = r.connection_id FOR NO KEY UPDATE;
    v_timeout := make_interval(secs => coalesce((r.params ->> 'timeout_s')::double precision, 30));

    IF r.action IN ('pause', 'resume')
       AND (connect_guard.latest_state_request(r.connection_id)).request_id <> r.request_id THEN
        PERFORM connect_guard.request_close(r.request_id, 'succeeded');
        RETURN;
    END IF;

    IF r.action = 'pause' THEN
        v_deadline := CASE WHEN r.phase = 'apply' THEN r.deadline ELSE clock_timestamp() + v_timeout END;
        b := connect_guard.connection_open_batch(c.connection_id);
        IF b.batch_id IS NOT NULL THEN
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

        BEGIN
            PERFORM connect_guard.pause_apply(c, (r.params ->> 'block_writes')::boolean, r.params ->> 'reason',
                                              (r.params ->> 'cancel_writers')::boolean, clock_timestamp() + v_timeout,
                                              r.created_at,
                                              jsonb_build_object('request_id', r.request_id, 'adapter', c.adapter));
        EXCEPTION WHEN lock_not_available OR object_not_in_prerequisite_state THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            PERFORM connect_guard.request_close(r.request_id, 'failed',
                format('Connect is paused but the fence could not be raised: %s%s', v_message,
                       CASE WHEN v_detail <> '' THEN ' (' || v_detail || ')' ELSE '' END));
            RETURN;
        END;
    ELSIF r.action = 'resume' THEN
        PERFORM connect_guard.connection_goto(c.connection_id, 'IDLE', NULL, 'resumed',
            jsonb_build_object('request_id', r.request_id, 'adapter', c.adapter,
                               'waited_ms', round(extract(epoch FROM clock_timestamp() - r.created_at) * 1000)));
    ELSIF r.action = 'reload' AND r.mapping_id IS NOT NULL THEN
        PERFORM connect_guard.mappings_goto(c.connection_id, ARRAY[r.mapping_id], 'DATA_SYNCED', ARRAY['RELOAD_TABLE'],
            'table_reloaded', jsonb_build_object('request_id', r.request_id, 'table', r.params ->> 'table',
                                                 'object_name', r.params ->> 'object_name'));
    ELSIF r.action IN ('export', 'import') THEN
        -- Connect's configuration goes onto the mappings (49_config_store.sql)
        v_message := connect_guard.config_answered(c.connection_id, r.action, r.request_id, r.result, r.payload);
        IF v_message IS NOT NULL THEN
            PERFORM connect_guard.request_close(r.request_id, 'failed', v_message);
            RETURN;
        END IF;
    END IF;
    PERFORM connect_guard.request_close(r.request_id, 'succeeded');
    IF r.action = 'reload' THEN
        PERFORM connect_guard.rollback_release();     -- the last acknowledged reload lowers the fence
    END IF;
END;
$$;

