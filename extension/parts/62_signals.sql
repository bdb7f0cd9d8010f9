/* ------------------------------------------------------------------------
 * Pause, resume and the other signals to the sync service: the user's
 * calls.  A local consumer reads the local state, so its pause is applied
 * at once (54_pause.sql); a heroku or webhook connection's sync service is
 * asked by the worker first (50_requests.sql), and these return PAUSING or
 * RESUMING.
 * ------------------------------------------------------------------------ */

/*
 * connect_pause: Connect's Pause.  Pending work completes first: an open
 * batch must be finished by its consumer within the timeout.  Then the
 * connection is PAUSED (connect_next_batch hands out nothing), and with
 * block_writes its mapped tables are fenced and the writers in flight have
 * ended, so the trigger log head is final when this returns.
 */
CREATE FUNCTION connect_pause(connection text, block_writes boolean DEFAULT true,
                              timeout interval DEFAULT '30 s', reason text DEFAULT NULL,
                              cancel_writers boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_deadline timestamptz;
    v_started timestamptz := clock_timestamp();
    v_announced boolean := false;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_pause()');
    c := connect_guard.require_connection(connection);
    PERFORM connect_guard.require_not_null(block_writes, 'block_writes',
        'Pass true (the default) to fence the mapped tables while paused, or false to let writes reach the log.');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''30 s''');
    PERFORM connect_guard.require_not_null(cancel_writers, 'cancel_writers',
        'Pass false (the default) to wait for the writers in flight, or true to terminate them.');
    v_deadline := clock_timestamp() + timeout;
    IF c.adapter <> 'local' THEN
        -- a remote sync service is asked by the worker; this returns PAUSING (request_pause below)
        RETURN connect_guard.request_pause(connection, block_writes, timeout, reason, cancel_writers);
    END IF;
    IF c.state IN ('PAUSED', 'PAUSING') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is already paused', connection),
            DETAIL = format('It has been %s since %s.', c.state, c.state_since),
            HINT = 'Resume it with connect_resume() first, or leave it paused.';
    END IF;
    IF block_writes THEN
        PERFORM connect_guard.require_fence();
    END IF;

    -- Wait for the open batch without holding the connection's lock (its
    -- consumer needs the lock to finish it).  The lock is taken only once no
    -- batch is seen open (or at the deadline, for the error), in a
    -- subtransaction that require_no_open_batch's error rolls back: taking
    -- it on every try would leave the consumer's connect_finish_batch(),
    -- woken as each try ends, to find it taken again by the next one, and
    -- on a busy machine to wait so until the deadline.  Neither the lock nor
    -- the batch is waited for past the deadline, and while this waits,
    -- connect_next_batch() opens no new batch.
    LOOP
        IF NOT v_announced THEN
            v_announced := connect_guard.pause_announce(c.connection_id);
        END IF;
        IF (connect_guard.connection_open_batch(c.connection_id)).batch_id IS NULL
           OR clock_timestamp() > v_deadline THEN
            BEGIN
                c := connect_guard.lock_connection(c.connection_id, v_deadline);
                PERFORM connect_guard.require_no_open_batch(c.connection_id, connection);
                EXIT;
            EXCEPTION WHEN object_not_in_prerequisite_state THEN
                IF clock_timestamp() > v_deadline THEN
                    RAISE;
                END IF;
            END;
        END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
    -- under the lock: another pause may have committed while this one waited
    IF c.state IN ('PAUSED', 'PAUSING') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is already paused', connection),
            DETAIL = format('It has been %s since %s.', c.state, c.state_since),
            HINT = 'Resume it with connect_resume() first, or leave it paused.';
    END IF;

    PERFORM connect_guard.pause_apply(c, block_writes, reason, cancel_writers, v_deadline, v_started);
    RETURN 'PAUSED';
END;
$$;

CREATE FUNCTION connect_resume(connection text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    c := connect_guard.connection_for_update(connection);
    IF c.adapter <> 'local' THEN
        -- lowers the fence now, asks the sync service through the worker; returns RESUMING (request_resume below)
        RETURN connect_guard.request_resume(connection);
    END IF;
    IF c.state NOT IN ('PAUSED', 'PAUSING') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is not paused', connection),
            DETAIL = format('It is %s.', c.state),
            HINT = 'Only a paused connection can be resumed; see connect_status.';
    END IF;
    IF c.fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(c.fence_id);
    END IF;
    PERFORM connect_guard.connection_goto(c.connection_id, 'IDLE', NULL, 'resumed',
        jsonb_build_object('paused_for_ms', round(extract(epoch FROM clock_timestamp() - c.state_since) * 1000),
                           'fence_id', c.fence_id));
    RETURN 'IDLE';
END;
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
    -- a consumer holding the connection's lock must not keep this waiting past the pause's timeout
    c := connect_guard.require_connection(p_connection);
    c := connect_guard.lock_connection(c.connection_id, clock_timestamp() + p_timeout);
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
    IF p_block_writes THEN
        PERFORM connect_guard.require_fence();
    END IF;
    v_id := connect_guard.request_enqueue(c.connection_id, 'pause', NULL,
        jsonb_build_object('block_writes', p_block_writes,
                           'cancel_writers', p_cancel_writers,
                           'reason', p_reason,
                           'timeout_s', extract(epoch FROM p_timeout)::double precision));
    PERFORM connect_guard.connection_goto(c.connection_id, 'PAUSING', NULL, 'pausing',
        jsonb_build_object('request_id', v_id, 'adapter', c.adapter, 'block_writes', p_block_writes,
                           'reason', p_reason),
        coalesce(p_reason, 'paused for maintenance'));
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
    PERFORM connect_guard.connection_goto(c.connection_id, 'RESUMING', NULL, 'resuming',
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
    v_deadline timestamptz;
    v_targets text[];
    v_last text;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_wait_state()');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''5 min''');
    v_deadline := clock_timestamp() + timeout;
    PERFORM connect_guard.require_not_null(state, 'state', 'Wait for PAUSED (after connect_pause) or IDLE (after connect_resume).');
    IF state NOT IN ('IDLE', 'POLLING_DB_CHANGES', 'PAUSING', 'PAUSED', 'RESUMING') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown connection state %s', quote_literal(state)),
            HINT = 'Wait for PAUSED (after connect_pause) or IDLE (after connect_resume).';
    END IF;
    v_targets := CASE WHEN state = 'IDLE' THEN ARRAY['IDLE', 'POLLING_DB_CHANGES'] ELSE ARRAY[state] END;
    c := connect_guard.require_connection(connection);
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
                MESSAGE = format('connection "%s" was dropped while waiting for it to be %s', connection, state),
                HINT = 'The event log says who dropped it (kind connection_dropped); there is nothing left to wait for.';
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
                                 round(extract(epoch FROM timeout)::numeric, 1), connection, state),
                DETAIL = format('It is %s since %s.%s', c.state, c.state_since, v_last),
                HINT = 'See connect_requests; check that the connect_guard worker runs (shared_preload_libraries) and reaches the sync service.';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END;
$$;

