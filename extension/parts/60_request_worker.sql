/* ------------------------------------------------------------------------
 * The worker's side of the requests.  signals.c calls request_take() and
 * request_outcome(), and nothing else here.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.request_taker_alive says whether the process that took a
 * request (request_take) still runs: the same pid with the same backend
 * start.  A crash restart, a kill -9 or the end of the worker ends it; a pid
 * used again by a later process does not count.  When the pid runs but its
 * start cannot be read, it counts as alive (its lease then holds: the safe
 * side).  Called by the worker, a superuser, which sees every backend.
 */
CREATE FUNCTION connect_guard.request_taker_alive(p_pid integer, p_started timestamptz)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_stat_get_activity(p_pid) a
                    WHERE a.pid = p_pid
                      AND (a.backend_start IS NULL OR p_started IS NULL OR a.backend_start = p_started));
$$;

/*
 * connect_guard.request_take hands the worker the requests that are due:
 * per connection the oldest pending one, locked, with what to send.  Each
 * is leased (next_attempt_at moves past the HTTP timeout) and marked with
 * its taker (request_taker, 50_requests.sql) until its outcome is recorded:
 * while the taker lives nobody else takes it, so it is never sent twice at
 * once; a request whose taker is gone (killed while it waited for the sync
 * service, a crash restart, a worker stopped mid-round) is due at once, not
 * at the end of its lease, and is sent again (at least once; a
 * request_taker_gone event says so).  A taker on another timeline was
 * another server's worker (a promoted follower took over): its lease holds.  Steps: 'send' (the action), 'lookup' (a deep GET to find
 * mapping ids, for a refresh, or to see a mapping before its reload), 'poll' (a deep GET to see the effect),
 * 'apply' (nothing to send).  What is sent is the adapter's
 * (request_wire, 58_protocols.sql); secret is the connection's stored
 * token or key, and with secret NULL the worker reads secret_file.
 * signals.c reads these columns by name.
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
    w record;
    t connect_guard.request_taker;
    v_started timestamptz := (SELECT a.backend_start FROM pg_stat_get_activity(pg_backend_pid()) a);
    -- the timeline this server writes on, as connect_guard.current_timeline() (68_database.sql) reads it
    v_timeline integer := ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::integer;
BEGIN
    -- the takers of requests closed meanwhile (superseded, dropped) are of no more use
    DELETE FROM connect_guard.request_taker k
     USING connect_guard.request q
     WHERE q.request_id = k.request_id AND q.status <> 'pending';
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
         WHERE q.status = 'pending'
           AND (q.next_attempt_at <= clock_timestamp()
                OR EXISTS (SELECT 1 FROM connect_guard.request_taker k
                            WHERE k.request_id = q.request_id AND k.timeline = v_timeline
                              AND NOT connect_guard.request_taker_alive(k.pid, k.backend_start)))
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
        SELECT * INTO t FROM connect_guard.request_taker k WHERE k.request_id = r.request_id;
        IF t.request_id IS NOT NULL AND r.next_attempt_at > clock_timestamp() THEN
            PERFORM connect_guard.log_event(r.connection_id, 'request_taker_gone',
                jsonb_build_object('request_id', r.request_id, 'action', r.action, 'phase', r.phase,
                                   'attempts', r.attempts, 'taken_by_pid', t.pid,
                                   'taken_by_start', t.backend_start, 'lease_until', r.next_attempt_at));
        END IF;
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
            SELECT * INTO w FROM connect_guard.request_wire(r, c, m, t_step);
            t_step := w.step; t_method := w.method; t_url := w.url; t_body := w.body;
            t_auth := w.auth; t_secret_file := w.secret_file;
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
        INSERT INTO connect_guard.request_taker AS k (request_id, pid, backend_start, timeline)
        VALUES (r.request_id, pg_backend_pid(), v_started, v_timeline)
        ON CONFLICT (request_id) DO UPDATE
            SET pid = EXCLUDED.pid, backend_start = EXCLUDED.backend_start, timeline = EXCLUDED.timeline;
        RETURN NEXT;
    END LOOP;
END;
$$;

/*
 * connect_guard.request_defer records what it can of a successful step
 * (or an 'apply') when the connection's lock is not to be had (a
 * consumer's transaction holds it): what the worker sent and the sync
 * service accepted is not sent again (a heroku action goes on to
 * 'confirm', a webhook's to 'apply'); a poll, a lookup or an apply is
 * tried again a second later, and a request past its deadline fails, as
 * it would with the lock.  p_why says who holds it.  The caller has
 * locked the request.
 */
CREATE FUNCTION connect_guard.request_defer(p_request_id bigint, p_step text, p_http_status integer, p_why text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    v_adapter text;
    v_timeout interval;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    SELECT c.adapter INTO v_adapter FROM connect_guard.connection c WHERE c.connection_id = r.connection_id;
    v_timeout := make_interval(secs => coalesce((r.params ->> 'timeout_s')::double precision,
                                                CASE WHEN v_adapter = 'heroku' THEN 300 ELSE 30 END));
    IF p_step = 'send' AND p_http_status BETWEEN 200 AND 299 THEN
        PERFORM connect_guard.log_event(r.connection_id, 'request_accepted',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempt', r.attempts,
                               'http_status', p_http_status));
        IF v_adapter = 'webhook' AND r.action = 'reload' AND p_http_status = 202 THEN
            UPDATE connect_guard.request SET last_http_status = p_http_status, remote_state = 'RELOAD_TABLE'
             WHERE request_id = r.request_id;
            PERFORM connect_guard.request_close(r.request_id, 'succeeded');
            RETURN;
        END IF;
        UPDATE connect_guard.request q
           SET last_http_status = p_http_status, last_error = p_why, updated_at = clock_timestamp(),
               phase = CASE WHEN v_adapter = 'heroku' AND r.action IN ('pause', 'resume', 'reload') THEN 'confirm'
                            ELSE 'apply' END,
               deadline = clock_timestamp() + v_timeout,
               next_attempt_at = clock_timestamp() + interval '1 s'
         WHERE q.request_id = r.request_id;
    ELSIF r.deadline IS NOT NULL AND clock_timestamp() > r.deadline THEN
        PERFORM connect_guard.request_close(r.request_id, 'failed',
            format('the %s could not be completed within its timeout: %s', r.action, p_why));
    ELSE
        UPDATE connect_guard.request q
           SET last_error = p_why, updated_at = clock_timestamp(), next_attempt_at = clock_timestamp() + interval '1 s'
         WHERE q.request_id = r.request_id;
    END IF;
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
    v_entry jsonb;
    v_ok boolean := coalesce(p_http_status BETWEEN 200 AND 299, false);
    v_state text;
    v_expected text;
    v_error text;
    v_connection_id integer;
    v_message text;
    v_detail text;
    v_busy text;            -- why the connection's lock was not to be had
BEGIN
    -- The connection first, then the request: the order the user's calls
    -- lock in.  A consumer's transaction may hold the connection's lock:
    -- the worker waits a second at most, records what needs no lock (a
    -- failure), and defers the rest (request_defer).
    SELECT q.connection_id INTO v_connection_id FROM connect_guard.request q WHERE q.request_id = p_request_id;
    IF NOT FOUND THEN
        RETURN;                 -- dropped with its connection while it was sent
    END IF;
    BEGIN
        c := connect_guard.lock_connection(v_connection_id, clock_timestamp() + interval '1 s');
    EXCEPTION WHEN lock_not_available THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
        v_busy := v_message || ': ' || v_detail;
        SELECT * INTO c FROM connect_guard.connection WHERE connection_id = v_connection_id;
    END;
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id FOR UPDATE;
    IF NOT FOUND OR r.status <> 'pending' THEN
        RETURN;                 -- dropped or superseded while it was sent
    END IF;
    -- its taker has done with it: what follows schedules it (request_take)
    DELETE FROM connect_guard.request_taker k WHERE k.request_id = r.request_id;

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
        IF v_busy IS NOT NULL THEN
            PERFORM connect_guard.request_defer(r.request_id, p_step, p_http_status, v_busy);
        ELSE
            PERFORM connect_guard.request_apply(r.request_id);
        END IF;
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

    -- what the sync service did is applied under the connection's lock
    IF v_busy IS NOT NULL THEN
        PERFORM connect_guard.request_defer(r.request_id, p_step, p_http_status, v_busy);
        RETURN;
    END IF;

    UPDATE connect_guard.request SET last_http_status = p_http_status, updated_at = clock_timestamp()
     WHERE request_id = r.request_id;

    IF p_step = 'send' THEN
        BEGIN
            v_json := p_body::jsonb;
        EXCEPTION WHEN OTHERS THEN
            v_json := NULL;
        END;
        -- the answer is the result of an export (Connect's configuration file) or an import
        IF r.action IN ('export', 'import') THEN
            UPDATE connect_guard.request SET result = v_json WHERE request_id = r.request_id;
        END IF;
        -- a webhook may answer with its own high-water mark, as Connect's deep GET does
        IF c.adapter = 'webhook' THEN
            IF jsonb_typeof(v_json) = 'object' THEN
                PERFORM connect_guard.note_remote_hwm(c.connection_id, v_json);
            END IF;
        END IF;
        IF c.adapter = 'heroku' AND r.action = 'reload' AND p_http_status <> 202 THEN
            -- only 202 Accepted says Connect queued the reload (59_reload_acknowledgement.sql)
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
            -- asked after a rollback: the restored state against Connect's (57_rollback_states.sql)
            IF r.params ? 'rollback_incident' THEN
                PERFORM connect_guard.connection_reconcile(c.connection_id, v_json ->> 'state', r.request_id,
                                                           (r.params ->> 'rollback_incident')::integer,
                                                           (r.params ->> 'held_by_plan')::bigint);
            END IF;
            PERFORM connect_guard.request_close(r.request_id, 'succeeded');
        ELSIF EXISTS (SELECT 1 FROM connect_guard.mapping WHERE mapping_id = r.mapping_id AND remote_id IS NOT NULL) THEN
            -- how the mapping stood before its reload is asked for (59_reload_acknowledgement.sql)
            PERFORM connect_guard.reload_baseline(r.request_id, v_json);
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
        v_entry := connect_guard.reload_mapping_entry(r, v_json);
        v_state := v_entry ->> 'state';
        v_expected := 'a reload started after the request (RELOAD_TABLE, or a later reload_started_at) and then DATA_SYNCED';
    ELSE
        v_state := v_json ->> 'state';
        v_expected := CASE r.action WHEN 'pause' THEN 'PAUSED' ELSE 'IDLE' END;
    END IF;
    UPDATE connect_guard.request SET remote_state = v_state WHERE request_id = r.request_id;
    -- a reload is done once it is proven to have started after the request (59_reload_acknowledgement.sql)
    IF (CASE WHEN r.action = 'reload' THEN connect_guard.reload_acknowledged(r.request_id, v_entry)
             ELSE v_state = v_expected OR (r.action = 'resume' AND v_state = 'POLLING_DB_CHANGES') END) THEN
        PERFORM connect_guard.request_apply(r.request_id);
    ELSE
        PERFORM connect_guard.request_poll_again(r.request_id, v_expected);
    END IF;
END;
$$;

