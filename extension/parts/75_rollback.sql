/* ------------------------------------------------------------------------
 * Rollback detection (Heroku's "Recovering Synchronization After a
 * Database Rollback", done by the worker).  A database restored to an
 * earlier point forgets writes the sync service already copied, and hands
 * out the same log ids again for new writes, which the service then skips
 * as already seen.  On every cycle the worker compares the database with
 * its witness (74_witness.sql), acts on a rollback (52_reloads.sql), and
 * writes the witness anew.
 *
 *   rollback:  same system, same timeline, LSN below the witnessed one
 *              timeline that left the witnessed one before the witnessed LSN
 *              timeline that does not descend from the witnessed one
 *              older timeline than the witness's (and not a handed-over primary)
 *              next xid, log head or a high-water mark below the witnessed one
 *              the sync service has consumed past the log head
 *   not:       a restart or a crash (WAL replay reaches the flushed LSN)
 *              a promoted follower that had replayed past the witnessed LSN,
 *              or past the fence of a follower changeover plan
 *              a new system identifier announced by an upgrade plan that came
 *              with the data (pg_upgrade, copy): compared with the witness of
 *              the old system, marks and log head only
 *              a former primary whose timeline the witness's descends from
 *              (failed over by an HA manager: 72_failovers.sql)
 *
 * Acting: the affected mappings go to RELOAD_TABLE and their reloads are
 * requested through the connection's adapter; the log's id sequence moves
 * past every id the service may have seen; the high-water marks are held to
 * what the database has; with connect_guard.fence_on_rollback the mapped
 * tables are fenced (scope 'reload') until every reload is acknowledged;
 * each affected connection's restored state is checked against the sync
 * service's (57_rollback_states.sql): a heroku connection's Connect is
 * asked first, a webhook or local connection is compared with the
 * witness and reported.  Each incident is a row of
 * connect_guard.rollback_incident.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.rollback_findings compares the database (d, from
 * database_state()) with a witness (w; NULL when there is none to trust)
 * and says what it finds: severity 'rollback' (acted upon), 'warning'
 * (reported) or 'info'.
 */
CREATE FUNCTION connect_guard.rollback_findings(w jsonb, d jsonb, p_predecessor integer)
RETURNS TABLE (finding text, severity text, connection text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_wtli integer := (w ->> 'timeline')::integer;
    v_dtli integer := (d ->> 'timeline')::integer;
    v_wlsn pg_lsn := (w ->> 'lsn')::pg_lsn;
    v_dlsn pg_lsn := pg_current_wal_lsn();
    v_dhead bigint := (d ->> 'log_head')::bigint;
    v_switch pg_lsn;
    v_protected pg_lsn;
    v_old_primary_went_on boolean := false;
    p connect_guard.upgrade_plan;
    c record;
BEGIN
    IF w IS NOT NULL AND p_predecessor IS NOT NULL THEN
        SELECT * INTO p FROM connect_guard.upgrade_plan WHERE plan_id = p_predecessor;
        RETURN QUERY SELECT 'upgraded', 'info', NULL::text,
            format('the witness is that of system %s, which upgrade plan %s (%s) moved here: its marks and log head are compared, not its WAL',
                   w ->> 'system_identifier', p.plan_id, p.method);
    ELSIF w IS NOT NULL THEN
        IF v_dtli = v_wtli THEN
            IF v_dlsn < v_wlsn THEN
                RETURN QUERY SELECT 'lsn_behind_witness', 'rollback', NULL::text,
                    format('the database is at WAL %s on timeline %s, below %s that the witness recorded at %s: it was restored from an earlier copy',
                           v_dlsn, v_dtli, v_wlsn, w ->> 'written_at');
            END IF;
        ELSIF v_dtli > v_wtli THEN
            v_switch := connect_guard.timeline_switch_lsn(v_wtli);
            IF v_switch IS NULL THEN
                RETURN QUERY SELECT 'timeline_not_descendant', 'rollback', NULL::text,
                    format('this server''s timeline %s does not descend from timeline %s that the witness recorded at %s',
                           v_dtli, v_wtli, w ->> 'written_at');
            ELSE
                v_protected := v_wlsn;
                -- a follower changeover fenced the old primary and paused its connections:
                -- what it wrote after its fence never reached a consumer
                SELECT * INTO p FROM connect_guard.upgrade_plan u
                 WHERE u.method = 'follower' AND u.timeline = v_wtli AND u.fence_lsn <= v_switch
                   AND u.system_identifier::text = d ->> 'system_identifier'
                 ORDER BY u.plan_id DESC LIMIT 1;
                IF FOUND AND p.fence_lsn < v_protected THEN
                    v_protected := p.fence_lsn;
                    v_old_primary_went_on := true;
                END IF;
                IF v_switch < v_protected THEN
                    RETURN QUERY SELECT 'timeline_forked_before_witness', 'rollback', NULL::text,
                        format('this server''s timeline %s left timeline %s at %s, before %s that the witness recorded at %s: a point-in-time restore, or a follower promoted before it had caught up',
                               v_dtli, v_wtli, v_switch, v_protected, w ->> 'written_at');
                ELSE
                    RETURN QUERY SELECT 'promoted', 'info', NULL::text,
                        format('timeline %s left timeline %s at %s, at or after %s that the witness recorded%s',
                               v_dtli, v_wtli, v_switch, v_protected,
                               CASE WHEN p.plan_id IS NOT NULL THEN format(' (the fence of plan %s)', p.plan_id)
                                    ELSE ' (no upgrade plan: a failover, by an HA manager or by hand)' END);
                END IF;
            END IF;
        ELSIF EXISTS (SELECT 1 FROM connect_guard.upgrade_plan u
                       WHERE u.method = 'follower' AND u.timeline = v_dtli
                         AND u.status IN ('ready', 'handed_over', 'failed', 'aborted') AND u.fence_lsn IS NOT NULL) THEN
            RETURN QUERY SELECT 'superseded', 'warning', NULL::text,
                format('a server on timeline %s, a follower promoted after this server (timeline %s) fenced itself for a changeover, writes the witness now: this server leaves it alone',
                       v_wtli, v_dtli);
            -- the new primary's log and marks have moved on; this server is not behind, it is retired
            RETURN;
        ELSIF connect_guard.failed_over_detail(w, d) IS NOT NULL THEN
            RETURN QUERY SELECT 'failed_over', 'warning', NULL::text, connect_guard.failed_over_detail(w, d);
            -- as for a superseded primary: the new timeline's log and marks have moved on
            RETURN;
        ELSE
            RETURN QUERY SELECT 'timeline_behind_witness', 'rollback', NULL::text,
                format('this server is on timeline %s, but the witness was written on timeline %s at %s: it is a copy from before a promotion',
                       v_dtli, v_wtli, w ->> 'written_at');
        END IF;
        -- (xids the fenced old primary used after its fence are no one's concern)
        IF (d ->> 'next_xid')::bigint < (w ->> 'next_xid')::bigint AND NOT v_old_primary_went_on THEN
            RETURN QUERY SELECT 'txid_behind_witness', 'rollback', NULL::text,
                format('the next transaction id is %s, below %s that the witness recorded: transaction ids will be handed out again',
                       d ->> 'next_xid', w ->> 'next_xid');
        END IF;
    END IF;

    IF w IS NOT NULL THEN
        IF v_dhead < (w ->> 'log_head')::bigint THEN
            RETURN QUERY SELECT 'log_head_behind_witness', 'rollback', NULL::text,
                format('the trigger log''s ids reach %s here but had reached %s: ids the sync service has seen would be handed out again',
                       v_dhead, w ->> 'log_head');
        END IF;
        FOR c IN
            SELECT e.key AS name, e.value AS was, dc.value AS now
              FROM jsonb_each(w -> 'connections') e
              LEFT JOIN jsonb_each(d -> 'connections') dc ON dc.key = e.key
             ORDER BY e.key
        LOOP
            -- a connection dropped, or dropped and created again under its name
            -- (recreate_connection.sql), starts afresh: nothing of it to compare
            IF c.now IS NULL OR c.now -> 'created_at' IS DISTINCT FROM c.was -> 'created_at' THEN
                RETURN QUERY SELECT 'connection_replaced', 'info', c.name,
                    format('the witness knows connection "%s" created at %s, which this database %s',
                           c.name, c.was ->> 'created_at',
                           CASE WHEN c.now IS NULL THEN 'does not have (dropped, or created after the point it was restored to)'
                                ELSE format('has as one created at %s', c.now ->> 'created_at') END);
            ELSIF (c.now ->> 'hwm_id')::bigint < (c.was ->> 'hwm_id')::bigint
                  OR (c.now ->> 'last_tick')::bigint < (c.was ->> 'last_tick')::bigint THEN
                RETURN QUERY SELECT 'hwm_behind_witness', 'rollback', c.name,
                    format('connection "%s" has consumed up to entry %s (tick %s) here, but had consumed up to entry %s (tick %s)',
                           c.name, c.now ->> 'hwm_id', c.now ->> 'last_tick', c.was ->> 'hwm_id', c.was ->> 'last_tick');
            ELSIF (c.now ->> 'log_head')::bigint < (c.was ->> 'log_head')::bigint THEN
                -- an adopted log (15_log_sources.sql): Connect's sequence went back
                RETURN QUERY SELECT 'log_head_behind_witness', 'rollback', c.name,
                    format('Heroku Connect''s log %s hands out ids from %s here, but had reached %s',
                           c.now ->> 'log', c.now ->> 'log_head', c.was ->> 'log_head');
            ELSIF p_predecessor IS NULL AND (d ->> 'next_xid')::bigint < (c.was ->> 'consumed_xid')::bigint THEN
                RETURN QUERY SELECT 'txid_behind_witness', 'rollback', c.name,
                    format('connection "%s" had consumed transactions up to xid %s, beyond the next xid %s here',
                           c.name, c.was ->> 'consumed_xid', d ->> 'next_xid');
            END IF;
        END LOOP;
    END IF;

    -- the sync service's own mark needs no witness
    FOR c IN
        SELECT dc.key AS name,
               -- an adopted connection's service counts in the ids of Connect's log
               coalesce((dc.value ->> 'log_head')::bigint, v_dhead) AS head,
               greatest((dc.value ->> 'remote_hwm')::bigint,
                        CASE WHEN w #> ARRAY['connections', dc.key, 'created_at'] = dc.value -> 'created_at'
                             THEN (w #>> ARRAY['connections', dc.key, 'remote_hwm'])::bigint END) AS remote
          FROM jsonb_each(d -> 'connections') dc ORDER BY dc.key
    LOOP
        IF c.remote > c.head THEN
            RETURN QUERY SELECT 'sync_service_ahead', 'rollback', c.name,
                format('the sync service of connection "%s" reports it has consumed up to entry %s, but the trigger log''s ids reach %s here',
                       c.name, c.remote, c.head);
        END IF;
    END LOOP;
END;
$$;

/*
 * connect_guard.rollback_check loads the witness and compares: the one
 * place both connect_check_rollback() and the worker get their findings.
 * write says whether this server may write the witness (not a superseded
 * old primary; not when the path itself is unusable).
 */
CREATE FUNCTION connect_guard.rollback_check(OUT path text, OUT witness jsonb, OUT findings jsonb, OUT write boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    l record;
    v_message text;
    v_state jsonb := connect_guard.database_state();
BEGIN
    write := true;
    BEGIN
        SELECT * INTO l FROM connect_guard.witness_load();
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        -- a bare ROW() would lose the field names that the rest reads
        SELECT NULL::text AS path, 'unusable'::text AS status, NULL::jsonb AS content,
               v_message AS detail, NULL::integer AS predecessor
          INTO l;
    END;
    path := l.path;
    IF l.status = 'ok' AND l.content ->> 'installation' IS DISTINCT FROM v_state ->> 'installation' THEN
        l.status := 'reinstalled';
        l.detail := format('"%s" was written by installation %s of connect_guard, which was dropped; this is installation %s',
                           l.path, coalesce(l.content ->> 'installation', 'unknown'), v_state ->> 'installation');
        l.content := NULL;
    END IF;
    witness := l.content;
    SELECT coalesce(jsonb_agg(jsonb_build_object('finding', f.finding, 'severity', f.severity,
                                                 'connection', f.connection, 'detail', f.detail)), '[]')
      INTO findings
      FROM connect_guard.rollback_findings(witness, v_state, l.predecessor) f;
    IF l.status <> 'ok' THEN
        findings := jsonb_build_array(jsonb_build_object(
            'finding', CASE l.status
                         WHEN 'missing' THEN CASE WHEN EXISTS (SELECT 1 FROM connect_guard.witness WHERE witness.path = l.path)
                                                  THEN 'witness_missing' ELSE 'witness_new' END
                         WHEN 'unusable' THEN 'witness_unwritable'
                         ELSE 'witness_' || l.status END,
            'severity', CASE WHEN l.status IN ('disabled', 'reinstalled')
                               OR (l.status = 'missing' AND NOT EXISTS (SELECT 1 FROM connect_guard.witness WHERE witness.path = l.path))
                             THEN 'info' ELSE 'warning' END,
            'connection', NULL,
            'detail', CASE l.status
                        WHEN 'reinstalled' THEN l.detail || '; it is replaced'
                        WHEN 'disabled' THEN 'connect_guard.witness_directory is empty: rollbacks are detected only from what the sync service reports'
                        WHEN 'missing' THEN format('there is no witness at "%s"%s; a new one is written, and nothing is compared until then',
                                                   l.path, CASE WHEN EXISTS (SELECT 1 FROM connect_guard.witness WHERE witness.path = l.path)
                                                                THEN ', though this database wrote one there before (deleted, or the directory is not the same storage)'
                                                                ELSE '' END)
                        ELSE format('%s; it is not trusted and is replaced', l.detail) END)) || findings;
    END IF;
    write := l.status NOT IN ('disabled', 'unusable')
             AND NOT findings @> '[{"finding": "superseded"}]'
             AND NOT findings @> '[{"finding": "failed_over"}]';
END;
$$;

/*
 * connect_guard.rollback_act does what a rollback calls for (see the top
 * of this file) and records the incident.  A finding that names a
 * connection affects that connection's mappings; one that names none (the
 * whole database went back) affects every mapping.
 */
CREATE FUNCTION connect_guard.rollback_act(p_findings jsonb, p_witness jsonb, p_source text, p_first_cycle boolean)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rollbacks jsonb;
    v_mappings integer[];
    v_head bigint := connect_guard.log_sequence_head();
    v_seen bigint;
    v_marks jsonb;
    v_requests bigint[];
    v_fence integer;
    v_incident integer;
    v_refreshes bigint[] := '{}';
    v_stale jsonb := '[]';
    v_restored_fences jsonb;
    v_conn record;
BEGIN
    SELECT jsonb_agg(f) INTO v_rollbacks FROM jsonb_array_elements(p_findings) f WHERE f ->> 'severity' = 'rollback';
    IF v_rollbacks IS NULL THEN
        RETURN NULL;
    END IF;
    v_incident := nextval(pg_get_serial_sequence('connect_guard.rollback_incident', 'incident_id'));
    SELECT coalesce(array_agg(m.mapping_id ORDER BY m.mapping_id), '{}') INTO v_mappings
      FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id)
     WHERE v_rollbacks @> '[{"connection": null}]'
        OR v_rollbacks @> jsonb_build_array(jsonb_build_object('connection', c.name));

    -- pause fences the fence file brought back that no restored connection holds
    -- (57_rollback_states.sql)
    v_restored_fences := connect_guard.rollback_restored_fences(v_incident);
    -- the restored state of each affected connection against the sync service's
    -- (57_rollback_states.sql): Connect is asked before the reloads are sent
    FOR v_conn IN
        SELECT k.connection_id, k.name, k.adapter, k.state,
               (SELECT u.plan_id FROM connect_guard.upgrade_plan u
                 WHERE u.status IN ('running', 'ready', 'failed') AND k.name = ANY (u.paused_connections)
                 ORDER BY u.plan_id DESC LIMIT 1) AS plan_id,
               CASE WHEN p_witness #> ARRAY['connections', k.name, 'created_at'] = to_jsonb(k.created_at)
                    THEN (p_witness #>> ARRAY['connections', k.name, 'paused'])::boolean END AS witnessed_paused
          FROM connect_guard.connection k
         WHERE v_rollbacks @> '[{"connection": null}]'
            OR v_rollbacks @> jsonb_build_array(jsonb_build_object('connection', k.name))
         ORDER BY k.connection_id
    LOOP
        IF v_conn.adapter = 'heroku' THEN
            v_refreshes := v_refreshes || connect_guard.request_enqueue(v_conn.connection_id, 'refresh', NULL,
                jsonb_build_object('rollback_incident', v_incident, 'held_by_plan', v_conn.plan_id));
        ELSIF v_conn.witnessed_paused IS DISTINCT FROM (v_conn.state IN ('PAUSED', 'PAUSING')) AND v_conn.witnessed_paused IS NOT NULL THEN
            -- no API to ask: what the witness saw last is reported, the state is left to the DBA
            v_stale := v_stale || jsonb_build_object('connection', v_conn.name, 'adapter', v_conn.adapter, 'state', v_conn.state,
                                                     'witnessed_paused', v_conn.witnessed_paused);
            PERFORM connect_guard.log_event(v_conn.connection_id, 'connection_state_stale', jsonb_build_object(
                'incident_id', v_incident, 'adapter', v_conn.adapter, 'state', v_conn.state,
                'witnessed_paused', v_conn.witnessed_paused, 'witness_written_at', p_witness ->> 'written_at',
                'hint', CASE WHEN v_conn.witnessed_paused
                             THEN 'it was paused when the witness was written: connect_pause() pauses it again'
                             ELSE 'it was running when the witness was written: connect_resume() resumes it' END));
            RAISE WARNING USING
                MESSAGE = format('connect_guard: connection "%s" was restored %s, but it was %s when the witness was last written (%s)',
                                 v_conn.name, v_conn.state, CASE WHEN v_conn.witnessed_paused THEN 'paused' ELSE 'running' END,
                                 p_witness ->> 'written_at'),
                DETAIL = format('A %s connection has no API to ask for its state; connect_guard leaves it as restored.', v_conn.adapter),
                HINT = CASE WHEN v_conn.witnessed_paused THEN 'If the sync service is still paused, call connect_pause().'
                            ELSE 'If the sync service runs, call connect_resume().' END;
        END IF;
    END LOOP;

    -- every id the sync service may have seen stays spent: new writes get new ids
    -- (of connections with a log of their own: Connect's ids are its log's, whose sequence is Connect's)
    SELECT greatest(max((w.value ->> 'hwm_id')::bigint), max((w.value ->> 'remote_hwm')::bigint) FILTER (WHERE NOT w.value ? 'log'),
                    (p_witness ->> 'log_head')::bigint,
                    (SELECT max(remote_hwm) FROM connect_guard.connection WHERE log_schema IS NULL))
      INTO v_seen
      FROM jsonb_each(coalesce(p_witness -> 'connections', '{}')) w;
    IF v_seen > v_head THEN
        PERFORM setval('connect_guard.trigger_log_id_seq', v_seen);
    END IF;

    -- the marks are what this database holds: never past its own log and ticks
    WITH held AS (
        UPDATE connect_guard.connection c
           SET hwm_id = least(c.hwm_id, v_head),
               last_tick = least(c.last_tick, (SELECT max(t.tick_id) FROM connect_guard.tick t))
         WHERE c.connection_id IN (SELECT m.connection_id FROM connect_guard.mapping m WHERE m.mapping_id = ANY (v_mappings))
        RETURNING c.name, c.hwm_id, c.last_tick)
    SELECT coalesce(jsonb_object_agg(h.name, jsonb_build_object(
               'hwm_id', h.hwm_id, 'last_tick', h.last_tick,
               'witnessed_hwm_id', p_witness #> ARRAY['connections', h.name, 'hwm_id'])), '{}')
      INTO v_marks FROM held h;

    v_requests := connect_guard.reload_mappings(v_mappings, 'rollback detected', interval '1 day');
    v_fence := connect_guard.reload_fence(v_mappings,
        'a rollback was detected; the sync service reloads the mapped tables (see connect_check_rollback)');
    INSERT INTO connect_guard.rollback_incident (incident_id, source, findings, mapping_ids, fence_id, reload_requests)
    VALUES (v_incident, p_source, v_rollbacks, v_mappings, v_fence, v_requests);
    -- entries of Connect's logs the restore made unfinished again (77_connect_schema.sql)
    PERFORM connect_guard.note_restored_entries(v_incident, v_mappings, p_witness);
    PERFORM connect_guard.log_event(NULL, 'rollback_detected', jsonb_build_object(
        'incident_id', v_incident, 'source', p_source, 'first_cycle', p_first_cycle,
        'findings', v_rollbacks,
        'witness', jsonb_build_object('written_at', p_witness ->> 'written_at', 'lsn', p_witness ->> 'lsn',
                                      'timeline', p_witness -> 'timeline', 'log_head', p_witness -> 'log_head'),
        'mappings', cardinality(v_mappings), 'reload_requests', to_jsonb(v_requests), 'fence_id', v_fence,
        'log_sequence', jsonb_build_object('was', v_head, 'now', greatest(v_head, v_seen)),
        'high_water_marks', v_marks,
        'state_refresh_requests', to_jsonb(v_refreshes), 'states_stale', v_stale,
        'restored_fences_lowered', v_restored_fences));
    RAISE WARNING USING
        MESSAGE = format('connect_guard: rollback detected in database %s: %s', current_database(),
                         (SELECT string_agg(f ->> 'detail', '; ') FROM jsonb_array_elements(v_rollbacks) f)),
        DETAIL = format('%s mapping(s) set to RELOAD_TABLE, %s reload request(s) queued%s.', cardinality(v_mappings),
                        cardinality(v_requests), CASE WHEN v_fence IS NOT NULL
                                                      THEN format(', fence %s up until they are acknowledged', v_fence)
                                                      ELSE '' END),
        HINT = 'See connect_rollback_incidents and connect_requests.';
    RETURN v_incident;
END;
$$;

/*
 * connect_guard.rollback_cycle is the worker's step: check, act on a
 * rollback, release what is acknowledged, write the witness, and report
 * problems with the witness once each (event and server log) rather than on
 * every cycle.  Returns the incident id, 0 when there was no rollback.
 */
CREATE FUNCTION connect_guard.rollback_cycle(p_first_cycle boolean)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record;
    v_incident integer;
    v_problem jsonb;
    v_report jsonb;
    f jsonb;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN 0;
    END IF;
    k := connect_guard.rollback_check();
    v_incident := connect_guard.rollback_act(k.findings, k.witness, 'worker', p_first_cycle);
    PERFORM connect_guard.failover_fence(k.findings);
    PERFORM connect_guard.rollback_release();
    IF k.write THEN
        v_problem := connect_guard.witness_refresh(k.path,
                                                   CASE WHEN v_incident IS NULL THEN k.witness END);
        IF v_problem IS NOT NULL THEN
            k.findings := k.findings || v_problem;
        END IF;
    END IF;

    -- warnings, and the crossing of a promotion or an upgrade, go to the event log
    IF k.path IS NOT NULL THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object('finding', x ->> 'finding', 'connection', x ->> 'connection')), '[]')
          INTO v_report
          FROM jsonb_array_elements(k.findings) x
         WHERE x ->> 'severity' = 'warning' OR x ->> 'finding' IN ('promoted', 'upgraded');
        IF v_report IS DISTINCT FROM (SELECT w.reported FROM connect_guard.witness w WHERE w.path = k.path) THEN
            FOR f IN SELECT x FROM jsonb_array_elements(k.findings) x
                      WHERE x ->> 'severity' = 'warning' OR x ->> 'finding' IN ('promoted', 'upgraded') LOOP
                PERFORM connect_guard.log_event(NULL,
                    CASE WHEN f ->> 'finding' LIKE 'witness\_%' THEN f ->> 'finding' ELSE 'witness_' || (f ->> 'finding') END,
                    jsonb_build_object('path', k.path, 'connection', f ->> 'connection', 'detail', f ->> 'detail'));
                IF f ->> 'severity' = 'warning' THEN
                    RAISE WARNING USING
                        MESSAGE = format('connect_guard: %s', f ->> 'detail'),
                        HINT = 'See connect_check_rollback() and the connect_guard.witness_directory setting.';
                END IF;
            END LOOP;
            UPDATE connect_guard.witness w SET reported = v_report WHERE w.path = k.path;
        END IF;
    END IF;
    RETURN coalesce(v_incident, 0);
END;
$$;

/*
 * connect_check_rollback says what the database looks like against its
 * witness, and why, without acting: the worker acts on the same findings.
 */
CREATE FUNCTION connect_check_rollback()
RETURNS TABLE (finding text, rollback boolean, connection text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN QUERY SELECT 'in_recovery', false, NULL::text,
            'a server in recovery is not compared with the witness; its worker does so when it is promoted';
        RETURN;
    END IF;
    k := connect_guard.rollback_check();
    RETURN QUERY
        SELECT f ->> 'finding', f ->> 'severity' = 'rollback', f ->> 'connection', f ->> 'detail'
          FROM jsonb_array_elements(k.findings) f;
    IF k.witness IS NOT NULL AND NOT k.findings @> '[{"severity": "rollback"}]'
       AND NOT k.findings @> '[{"severity": "warning"}]' THEN
        RETURN QUERY SELECT 'no_rollback', false, NULL::text,
            format('the database is at or beyond the witness "%s" written at %s (WAL %s, timeline %s, log head %s)',
                   k.path, k.witness ->> 'written_at', k.witness ->> 'lsn', k.witness ->> 'timeline',
                   k.witness ->> 'log_head');
    END IF;
END;
$$;
