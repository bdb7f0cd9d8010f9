/* ------------------------------------------------------------------------
 * Connection states after a rollback.  A restore brings back each
 * connection's state as it was at the point restored to, while the sync
 * service went on: a connection restored PAUSED (its pause fence up, from
 * the fence file of the base backup) may have been resumed since, and Connect
 * runs; or one restored IDLE was paused in Connect since.  When the worker
 * finds a rollback (75_rollback.sql) it asks each heroku connection's
 * Connect for its state (a 'refresh' request, queued before the reloads),
 * and the answer reconciles the recorded state with it here:
 *
 *   recorded PAUSED, PAUSING or RESUMING, Connect runs (IDLE,
 *   POLLING_DB_CHANGES)   -> IDLE; the pause's own fence (scope
 *                            'connection') is lowered.  Every other fence
 *                            stays: a maintenance fence (connect_fence())
 *                            is the DBA's, a reload fence the rollback's
 *   recorded IDLE, Connect PAUSED
 *                         -> PAUSED, with no fence (connect_guard did not
 *                            pause it, and the log keeps what is written)
 *
 * and leaves the state alone when a pause or resume request is under way
 * (it settles the state), an upgrade plan holds the connection, a batch is
 * open, or Connect reports a state of its own.  Either way an event,
 * connection_state_reconciled, says what was recorded, what Connect said,
 * what changed and which fences still hold the connection's tables.
 * Connections without an API to ask (webhook, local) are compared with the
 * witness by rollback_act() and reported, not changed.
 *
 * The fences come back from the base backup's fence file, not from the
 * point restored to: a pause fence that was up when the backup was taken
 * and lowered (connect_resume()) before that point is up again, while the
 * restored connection names no fence and is not paused, so that nothing
 * would ever lower it.  rollback_restored_fences() lowers such a fence of
 * scope 'connection', one that was up before this server started (from the
 * file: a pause in progress now is not one); maintenance, reload and plan
 * fences stay.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.connection_reconcile reconciles connection p_connection_id
 * (locked by the caller) with the state its sync service reported,
 * p_remote_state, as asked by refresh request p_request_id after rollback
 * incident p_incident_id; p_held_by_plan names the upgrade plan that held
 * the connection when the rollback was found (NULL: none).
 */
CREATE FUNCTION connect_guard.connection_reconcile(p_connection_id integer, p_remote_state text,
                                                   p_request_id bigint, p_incident_id integer,
                                                   p_held_by_plan bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r connect_guard.request := connect_guard.latest_state_request(p_connection_id);
    b connect_guard.batch := connect_guard.connection_open_batch(p_connection_id);
    v_remote_runs boolean := CASE WHEN p_remote_state IN ('IDLE', 'POLLING_DB_CHANGES') THEN true
                                  WHEN p_remote_state = 'PAUSED' THEN false END;
    v_pause_fence_up boolean;
    v_left text;
    v_now text;
    v_lowered integer;
    v_detail jsonb;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_pause_fence_up := c.fence_id IS NOT NULL
                        AND EXISTS (SELECT 1 FROM connect_guard.fence_list() f
                                     WHERE f.fence_id = c.fence_id AND f.scope = 'connection'
                                       AND f.connection_id = c.connection_id);
    v_left := CASE
        WHEN r.status = 'pending' THEN format('%s request %s is under way and settles the state', r.action, r.request_id)
        WHEN p_held_by_plan IS NOT NULL THEN format('upgrade plan %s holds the connection', p_held_by_plan)
        WHEN v_remote_runs IS NULL THEN format('Connect reports %s, neither running nor paused',
                                               coalesce(p_remote_state, 'no state'))
        WHEN NOT v_remote_runs AND c.state IN ('IDLE', 'POLLING_DB_CHANGES') AND b.batch_id IS NOT NULL
            THEN format('batch %s is open', b.batch_id)
        WHEN NOT v_remote_runs AND c.state NOT IN ('IDLE', 'POLLING_DB_CHANGES', 'PAUSED')
            THEN format('it is %s: connect_pause() or connect_resume() settles it', c.state)
    END;
    v_now := c.state;
    IF v_left IS NULL AND v_remote_runs AND c.state IN ('PAUSED', 'PAUSING', 'RESUMING') THEN
        IF v_pause_fence_up THEN
            PERFORM connect_guard.fence_lower(c.fence_id);
            v_lowered := c.fence_id;
        END IF;
        v_now := 'IDLE';
    ELSIF v_left IS NULL AND NOT v_remote_runs AND c.state IN ('IDLE', 'POLLING_DB_CHANGES') THEN
        v_now := 'PAUSED';
    END IF;

    v_detail := jsonb_build_object(
        'incident_id', p_incident_id, 'request_id', p_request_id,
        'recorded_state', c.state, 'remote_state', p_remote_state, 'state', v_now, 'changed', v_now <> c.state,
        'pause_fence', c.fence_id, 'pause_fence_was_up', v_pause_fence_up, 'fence_lowered', v_lowered,
        'left_because', v_left,
        -- what still holds the connection's tables: never lowered here
        'fences_still_up', (SELECT coalesce(jsonb_agg(jsonb_build_object('fence_id', f.fence_id, 'scope', f.scope,
                                                                          'reason', f.reason) ORDER BY f.fence_id), '[]')
                              FROM connect_guard.fence_list() f
                             WHERE f.fence_id IS DISTINCT FROM v_lowered
                               AND (f.scope <> 'connection' OR f.connection_id = c.connection_id)));
    IF v_now = 'IDLE' AND c.state <> 'IDLE' THEN
        PERFORM connect_guard.connection_goto(c.connection_id, 'IDLE', NULL, 'connection_state_reconciled', v_detail);
    ELSIF v_now = 'PAUSED' AND c.state <> 'PAUSED' THEN
        PERFORM connect_guard.connection_goto(c.connection_id, 'PAUSED', NULL, 'connection_state_reconciled', v_detail,
            format('Heroku Connect reported PAUSED after the rollback of incident %s: connect_guard did not pause it and raised no fence',
                   p_incident_id));
    ELSE
        PERFORM connect_guard.log_event(c.connection_id, 'connection_state_reconciled', v_detail);
    END IF;
END;
$$;

/*
 * connect_guard.rollback_restored_fences lowers the pause fences (scope
 * 'connection') that the fence file brought back and that no restored
 * connection holds: up since before this server started, while their
 * connection is gone, not paused, or paused under another fence.  Each is
 * logged (restored_fence_lowered, for rollback incident p_incident_id);
 * returns what it lowered.
 */
CREATE FUNCTION connect_guard.rollback_restored_fences(p_incident_id integer)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    v_lowered jsonb := '[]';
    v_entry jsonb;
BEGIN
    FOR f IN
        SELECT l.fence_id, l.connection_id, l.connection, l.reason, l.since, c.state, c.fence_id AS holds
          FROM connect_guard.fence_list() l
          LEFT JOIN connect_guard.connection c ON c.connection_id = l.connection_id
         WHERE l.scope = 'connection' AND l.since < pg_postmaster_start_time()
           AND (c.connection_id IS NULL OR c.state NOT IN ('PAUSED', 'PAUSING')
                OR c.fence_id IS DISTINCT FROM l.fence_id)
         ORDER BY l.fence_id
    LOOP
        PERFORM connect_guard.fence_lower(f.fence_id);
        v_entry := jsonb_build_object('fence_id', f.fence_id, 'connection', f.connection, 'reason', f.reason,
                                      'since', f.since, 'connection_state', f.state, 'connection_fence', f.holds);
        v_lowered := v_lowered || v_entry;
        PERFORM connect_guard.log_event(f.connection_id, 'restored_fence_lowered',
            v_entry || jsonb_build_object('incident_id', p_incident_id,
                'why', 'the fence file came from the base backup; at the point restored to the connection '
                       || CASE WHEN f.state IS NULL THEN 'did not exist'
                               ELSE format('was %s%s', f.state, CASE WHEN f.holds IS NOT NULL
                                                                     THEN format(' under fence %s', f.holds) ELSE '' END) END));
    END LOOP;
    RETURN v_lowered;
END;
$$;
