/* ------------------------------------------------------------------------
 * HA managers.  Where Patroni or pg_auto_failover manages the cluster, a
 * promotion behind its back makes it fight the change (Patroni demotes a
 * primary that does not hold its leader key; pg_auto_failover's monitor
 * has its own idea of who is primary).  So a follower changeover can hand
 * the promotion to the HA manager (connect_prepare_upgrade(...,
 * promote_with => 'patroni' | 'pg_auto_failover')):
 *
 *   checking          also asks the HA manager whether this server leads and
 *                     the follower may take over (before anything changes)
 *   pausing ... ready as for every follower changeover (70_upgrade.sql)
 *   switching_over    connect_promote_follower() moves the plan here; the
 *                     worker asks Patroni's REST API for a switchover
 *                     (POST /switchover, leader and candidate) or the
 *                     monitor for a promotion (pgautofailover.perform_promotion
 *                     over libpq); the HA manager stops this server, and the
 *                     new primary's worker completes the plan as always
 *
 * An unplanned failover (no plan) is told from a rollback by the witness:
 * the new primary's timeline left the old one at or after the witnessed
 * LSN ('promoted', 75_rollback.sql); the witness records the timeline
 * history of the server that writes it, so a former primary that runs
 * again on the older timeline sees that a descendant timeline took over
 * ('failed_over'): it fences its mapped tables, asks for no reloads and
 * leaves the witness alone, rather than take itself for a rolled-back copy.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_guard.ha_http(method text, url text, body text DEFAULT NULL, timeout_ms integer DEFAULT NULL,
                                      OUT status integer, OUT answer text, OUT error text)
RETURNS record LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_ha_http';

/* one request to Patroni's REST API; the answer's body as jsonb (a JSON string when it is plain text) */
CREATE FUNCTION connect_guard.ha_patroni(p_method text, p_endpoint text, p_path text, p_body jsonb DEFAULT NULL,
                                         p_timeout_ms integer DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    v_body jsonb;
BEGIN
    SELECT * INTO r FROM connect_guard.ha_http(p_method, rtrim(p_endpoint, '/') || p_path, p_body::text, p_timeout_ms);
    BEGIN
        v_body := r.answer::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        v_body := to_jsonb(left(r.answer, 500));
    END;
    RETURN jsonb_build_object('status', r.status, 'body', v_body, 'error', r.error);
END;
$$;

/* what the HA manager said, in a line for last_error */
CREATE FUNCTION connect_guard.ha_answer_text(p_answer jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN (p_answer ->> 'status')::integer = 0 THEN 'no answer: ' || (p_answer ->> 'error')
                ELSE format('HTTP %s: %s', p_answer ->> 'status',
                            CASE jsonb_typeof(p_answer -> 'body') WHEN 'string' THEN p_answer ->> 'body'
                                 ELSE left((p_answer -> 'body')::text, 300) END) END;
$$;

/*
 * connect_guard.ha_validate refuses a promote_with, ha_endpoint, ha_member
 * that do not go together, before the plan is stored.
 */
CREATE FUNCTION connect_guard.ha_validate(p_method text, p_promote_with text, p_endpoint text, p_member text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_detail text;
BEGIN
    IF p_promote_with IS NULL OR p_promote_with NOT IN ('connect_guard', 'patroni', 'pg_auto_failover') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown promote_with %s', coalesce(quote_literal(p_promote_with), 'NULL')),
            HINT = 'Use ''connect_guard'' (pg_promote() on the follower, the default), ''patroni'' (a switchover through Patroni''s REST API) or ''pg_auto_failover'' (a promotion through the monitor).';
    END IF;
    IF p_promote_with = 'connect_guard' THEN
        IF p_endpoint IS NOT NULL OR p_member IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'promote_with => ''connect_guard'' takes no ha_endpoint nor ha_member',
                HINT = 'Pass promote_with => ''patroni'' or ''pg_auto_failover'' to hand the promotion to an HA manager.';
        END IF;
        RETURN;
    END IF;
    IF p_method IS DISTINCT FROM 'follower' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('promote_with => %L applies to follower changeovers only', p_promote_with),
            HINT = 'A pg_upgrade or copy plan promotes no follower: leave promote_with out.';
    END IF;
    IF p_endpoint IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('promote_with => %L needs ha_endpoint', p_promote_with),
            HINT = CASE p_promote_with
                       WHEN 'patroni' THEN 'Pass the base URL of Patroni''s REST API on this server, e.g. ha_endpoint => ''http://127.0.0.1:8008''.'
                       ELSE 'Pass the monitor''s conninfo, e.g. ha_endpoint => ''postgres://autoctl_node@monitor:5432/pg_auto_failover''.' END;
    END IF;
    IF p_promote_with = 'patroni' AND p_endpoint !~* '^https?://[^/?#\s]+/?$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'ha_endpoint must be the base URL of Patroni''s REST API',
            HINT = 'For example ''http://127.0.0.1:8008'' (http:// or https://, a host and port, no path; user:password@ for restapi.authentication).';
    END IF;
    IF p_promote_with = 'pg_auto_failover' THEN
        BEGIN
            PERFORM connect_guard.conninfo_masked(p_endpoint);
        EXCEPTION WHEN invalid_parameter_value THEN
            GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'ha_endpoint must be the pg_auto_failover monitor''s conninfo',
                DETAIL = v_detail,
                HINT = 'Use libpq''s key=value form or a URI, e.g. ''postgres://autoctl_node@monitor:5432/pg_auto_failover''.';
        END;
    END IF;
    IF p_member IS NOT NULL AND p_member !~ '^[^\s]{1,200}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid ha_member %s', quote_literal(p_member)),
            HINT = 'Pass the follower''s name in the HA manager (Patroni''s member name, pg_auto_failover''s node name), or leave it out to find it by the follower''s port.';
    END IF;
END;
$$;

/*
 * connect_guard.ha_follower_port is the port the follower's server listens
 * on: members and nodes are matched by it when ha_member is not given.
 */
CREATE FUNCTION connect_guard.ha_follower_port(p_follower text)
RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (connect_guard.remote_query(p_follower, 'SELECT current_setting(''port'') AS port', 5000) ->> 'port')::integer;
$$;

/* the nodes the pg_auto_failover monitor knows, as a jsonb array */
CREATE FUNCTION connect_guard.ha_monitor_nodes(p_monitor text)
RETURNS jsonb
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((connect_guard.remote_query(p_monitor,
        $q$SELECT json_agg(json_build_object('formation', formationid, 'group', groupid, 'name', nodename,
                                             'host', nodehost, 'port', nodeport, 'system_identifier', sysidentifier::text,
                                             'goal', goalstate, 'reported', reportedstate,
                                             'candidate_priority', candidatepriority) ORDER BY nodeid)::text AS nodes
             FROM pgautofailover.node$q$, 5000) ->> 'nodes')::jsonb, '[]');
$$;

/*
 * connect_guard.ha_check asks the plan's HA manager whether this server
 * leads and the follower may take over, and records who is who in the
 * plan's ha_target.  Returns {"ok": true} or {"ok": false, "retry": ...,
 * "error": ...}: retry when the answer may change (no answer, a member
 * still starting), not when the plan names the wrong cluster or member.
 */
CREATE FUNCTION connect_guard.ha_check(p connect_guard.upgrade_plan)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_port integer;
    v_our_port integer := current_setting('port')::integer;
    v_answer jsonb;
    v_members jsonb;
    v_leader jsonb;
    v_candidates jsonb;
    v_candidate jsonb;
    v_target jsonb;
BEGIN
    BEGIN
        v_port := connect_guard.ha_follower_port(p.follower);
    EXCEPTION WHEN connection_failure THEN
        RETURN jsonb_build_object('ok', false, 'retry', true, 'error', 'the follower is unreachable: ' || SQLERRM);
    END;

    IF p.promote_with = 'patroni' THEN
        v_answer := connect_guard.ha_patroni('GET', p.ha_endpoint, '/cluster');
        IF (v_answer ->> 'status')::integer <> 200 OR jsonb_typeof(v_answer #> '{body,members}') IS DISTINCT FROM 'array' THEN
            RETURN jsonb_build_object('ok', false, 'retry', true,
                'error', 'Patroni''s REST API did not list the cluster (GET /cluster): ' || connect_guard.ha_answer_text(v_answer));
        END IF;
        v_members := v_answer #> '{body,members}';
        SELECT m INTO v_leader FROM jsonb_array_elements(v_members) m WHERE m ->> 'role' IN ('leader', 'master') LIMIT 1;
        IF v_leader IS NULL THEN
            RETURN jsonb_build_object('ok', false, 'retry', true, 'error', 'Patroni reports no leader in its cluster');
        END IF;
        IF (v_leader ->> 'port')::integer IS DISTINCT FROM v_our_port THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', format('Patroni''s leader is member %s at %s:%s, not this server (port %s): ha_endpoint belongs to another cluster',
                                v_leader ->> 'name', v_leader ->> 'host', v_leader ->> 'port', v_our_port));
        END IF;
        SELECT coalesce(jsonb_agg(m), '[]') INTO v_candidates FROM jsonb_array_elements(v_members) m
         WHERE m ->> 'name' IS DISTINCT FROM v_leader ->> 'name'
           AND CASE WHEN p.ha_member IS NOT NULL THEN m ->> 'name' = p.ha_member
                    ELSE (m ->> 'port')::integer = v_port END;
        IF jsonb_array_length(v_candidates) <> 1 THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', CASE WHEN p.ha_member IS NOT NULL
                              THEN format('Patroni''s cluster has no replica named %s (members: %s)', p.ha_member,
                                          (SELECT string_agg(m ->> 'name', ', ') FROM jsonb_array_elements(v_members) m))
                              ELSE format('%s of Patroni''s replicas listen on port %s, the follower''s: name the follower''s member with ha_member',
                                          jsonb_array_length(v_candidates), v_port) END);
        END IF;
        v_candidate := v_candidates -> 0;
        IF (v_candidate #>> '{tags,nofailover}') = 'true' THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', format('Patroni''s member %s is tagged nofailover: Patroni would not switch over to it', v_candidate ->> 'name'));
        END IF;
        IF v_candidate ->> 'role' NOT IN ('replica', 'sync_standby') OR v_candidate ->> 'state' NOT IN ('running', 'streaming') THEN
            RETURN jsonb_build_object('ok', false, 'retry', true,
                'error', format('Patroni''s member %s is %s and %s: not a running replica that can take over',
                                v_candidate ->> 'name', v_candidate ->> 'role', v_candidate ->> 'state'));
        END IF;
        v_target := jsonb_build_object('leader', v_leader ->> 'name', 'candidate', v_candidate ->> 'name');
    ELSE
        BEGIN
            v_members := connect_guard.ha_monitor_nodes(p.ha_endpoint);
        EXCEPTION WHEN connection_failure THEN
            RETURN jsonb_build_object('ok', false, 'retry', true,
                'error', 'the pg_auto_failover monitor did not list its nodes: ' || SQLERRM);
        END;
        SELECT coalesce(jsonb_agg(n), '[]') INTO v_candidates FROM jsonb_array_elements(v_members) n
         WHERE n ->> 'system_identifier' = connect_guard.system_identifier()::text
           AND CASE WHEN p.ha_member IS NOT NULL THEN n ->> 'name' = p.ha_member
                    ELSE (n ->> 'port')::integer = v_port AND (n ->> 'port')::integer <> v_our_port END;
        IF jsonb_array_length(v_candidates) <> 1 THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', CASE WHEN p.ha_member IS NOT NULL
                              THEN format('the monitor knows no node named %s of this cluster (nodes: %s)', p.ha_member,
                                          (SELECT coalesce(string_agg(n ->> 'name', ', '), 'none') FROM jsonb_array_elements(v_members) n))
                              ELSE format('%s of the monitor''s nodes of this cluster listen on port %s, the follower''s: name the follower''s node with ha_member',
                                          jsonb_array_length(v_candidates), v_port) END);
        END IF;
        v_candidate := v_candidates -> 0;
        SELECT n INTO v_leader FROM jsonb_array_elements(v_members) n
         WHERE n ->> 'formation' = v_candidate ->> 'formation' AND n -> 'group' = v_candidate -> 'group'
           AND n ->> 'reported' IN ('primary', 'wait_primary', 'single') LIMIT 1;
        IF v_leader IS NULL OR (v_leader ->> 'port')::integer <> v_our_port THEN
            RETURN jsonb_build_object('ok', false, 'retry', v_leader IS NULL,
                'error', CASE WHEN v_leader IS NULL THEN format('the monitor reports no primary in formation %s', v_candidate ->> 'formation')
                              ELSE format('the monitor''s primary is node %s at %s:%s, not this server (port %s)',
                                          v_leader ->> 'name', v_leader ->> 'host', v_leader ->> 'port', v_our_port) END);
        END IF;
        IF (v_candidate ->> 'candidate_priority')::integer = 0 THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', format('node %s has candidate priority 0: the monitor would never promote it', v_candidate ->> 'name'));
        END IF;
        IF v_candidate ->> 'reported' <> 'secondary' OR v_candidate ->> 'goal' <> 'secondary' THEN
            RETURN jsonb_build_object('ok', false, 'retry', true,
                'error', format('node %s reports state %s and is assigned %s: the monitor promotes only a secondary',
                                v_candidate ->> 'name', v_candidate ->> 'reported', v_candidate ->> 'goal'));
        END IF;
        v_target := jsonb_build_object('formation', v_candidate ->> 'formation', 'leader', v_leader ->> 'name',
                                       'candidate', v_candidate ->> 'name');
    END IF;
    UPDATE connect_guard.upgrade_plan SET ha_target = v_target WHERE plan_id = p.plan_id;
    RETURN jsonb_build_object('ok', true, 'target', v_target);
END;
$$;

/*
 * connect_guard.ha_request asks the HA manager once for the switchover (or
 * finds it under way) and says what came of it: 'requested', 'under_way',
 * 'retry' (no answer, or one that may change) or 'refused', with a detail.
 */
CREATE FUNCTION connect_guard.ha_request(p connect_guard.upgrade_plan)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_answer jsonb;
    v_leader text;
    v_nodes jsonb;
    v_node jsonb;
    v_result jsonb;
    v_recent boolean := (p.ha_target ->> 'requested_at')::timestamptz > clock_timestamp() - interval '30 s';
BEGIN
    IF p.promote_with = 'patroni' THEN
        v_answer := connect_guard.ha_patroni('GET', p.ha_endpoint, '/cluster');
        IF (v_answer ->> 'status')::integer <> 200 THEN
            RETURN jsonb_build_object('outcome', 'retry', 'detail', 'GET /cluster: ' || connect_guard.ha_answer_text(v_answer));
        END IF;
        SELECT m ->> 'name' INTO v_leader FROM jsonb_array_elements(v_answer #> '{body,members}') m
         WHERE m ->> 'role' IN ('leader', 'master') LIMIT 1;
        IF v_leader = p.ha_target ->> 'candidate' THEN
            RETURN jsonb_build_object('outcome', 'under_way', 'detail', format('member %s leads the cluster now', v_leader));
        END IF;
        IF v_leader IS DISTINCT FROM p.ha_target ->> 'leader' THEN
            RETURN jsonb_build_object('outcome', CASE WHEN v_leader IS NULL THEN 'retry' ELSE 'refused' END,
                'detail', format('Patroni''s leader is %s, not %s as when the plan checked',
                                 coalesce(v_leader, 'nobody'), p.ha_target ->> 'leader'));
        END IF;
        IF v_recent THEN
            RETURN jsonb_build_object('outcome', 'under_way', 'detail', 'switchover requested at ' || (p.ha_target ->> 'requested_at'));
        END IF;
        -- Patroni answers when the switchover is done (or after ~15 s); by then it
        -- has stopped this server, and this worker with it
        v_answer := connect_guard.ha_patroni('POST', p.ha_endpoint, '/switchover',
            jsonb_build_object('leader', p.ha_target ->> 'leader', 'candidate', p.ha_target ->> 'candidate'), 30000);
        RETURN jsonb_build_object(
            'outcome', CASE WHEN (v_answer ->> 'status')::integer IN (200, 202) THEN 'requested'
                            WHEN (v_answer ->> 'status')::integer BETWEEN 400 AND 499 THEN 'refused'
                            ELSE 'retry' END,
            'detail', 'POST /switchover: ' || connect_guard.ha_answer_text(v_answer));
    END IF;

    -- pg_auto_failover: the monitor orchestrates; the keepers follow its goal states
    BEGIN
        v_nodes := connect_guard.ha_monitor_nodes(p.ha_endpoint);
    EXCEPTION WHEN connection_failure THEN
        RETURN jsonb_build_object('outcome', 'retry', 'detail', SQLERRM);
    END;
    SELECT n INTO v_node FROM jsonb_array_elements(v_nodes) n
     WHERE n ->> 'formation' = p.ha_target ->> 'formation' AND n ->> 'name' = p.ha_target ->> 'candidate';
    IF v_node IS NULL THEN
        RETURN jsonb_build_object('outcome', 'refused',
            'detail', format('the monitor no longer knows node %s', p.ha_target ->> 'candidate'));
    END IF;
    IF v_node ->> 'reported' IN ('primary', 'wait_primary', 'single')
       OR v_node ->> 'goal' IN ('prepare_promotion', 'stop_replication', 'wait_primary', 'primary') THEN
        RETURN jsonb_build_object('outcome', 'under_way',
            'detail', format('node %s reports %s and is assigned %s', v_node ->> 'name', v_node ->> 'reported', v_node ->> 'goal'));
    END IF;
    IF v_recent THEN
        RETURN jsonb_build_object('outcome', 'under_way', 'detail', 'promotion requested at ' || (p.ha_target ->> 'requested_at'));
    END IF;
    BEGIN
        v_result := connect_guard.remote_query(p.ha_endpoint,
            format('SELECT pgautofailover.perform_promotion(%L, %L) AS promoted',
                   p.ha_target ->> 'formation', p.ha_target ->> 'candidate'), 10000);
    EXCEPTION WHEN connection_failure THEN
        -- the monitor answered with an error (a state that forbids it): that is a refusal
        RETURN jsonb_build_object('outcome', CASE WHEN SQLERRM LIKE '%ERROR:%' THEN 'refused' ELSE 'retry' END,
                                  'detail', 'perform_promotion: ' || SQLERRM);
    END;
    RETURN jsonb_build_object('outcome', CASE WHEN v_result ->> 'promoted' = 't' THEN 'requested' ELSE 'refused' END,
        'detail', CASE WHEN v_result ->> 'promoted' = 't' THEN format('the monitor promotes node %s', p.ha_target ->> 'candidate')
                       ELSE format('the monitor started no promotion of node %s (already a primary?)', p.ha_target ->> 'candidate') END);
END;
$$;

/*
 * connect_guard.ha_switchover_step is the plan's switching_over step on
 * the old primary (returns as upgrade_advance does): ask, then wait for the
 * HA manager to stop this server.  If this server is still up when the
 * follower is out of recovery, it learns it was handed over (as a plan
 * promoted by pg_promote does); a refusal, or no promotion within the
 * plan's timeout, fails the plan and leaves everything fenced.
 */
CREATE FUNCTION connect_guard.ha_switchover_step(p connect_guard.upgrade_plan)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_probe jsonb;
    v_result jsonb;
    v_overdue boolean := clock_timestamp() > p.step_since + p.step_timeout;
BEGIN
    BEGIN
        v_probe := connect_guard.follower_probe(p.follower);
        IF NOT (v_probe ->> 'in_recovery')::boolean THEN
            PERFORM connect_guard.upgrade_goto(p.plan_id, 'handed_over', 'handed_over',
                jsonb_build_object('note', format('%s promoted the follower; this server stays fenced', p.promote_with)));
            RETURN 2;
        END IF;
    EXCEPTION WHEN connection_failure THEN
        NULL;
    END;
    -- once a second: each try asks the HA manager over the network
    IF (p.ha_target ->> 'tried_at')::timestamptz > clock_timestamp() - interval '1 s' THEN
        RETURN 1;
    END IF;
    v_result := connect_guard.ha_request(p);
    UPDATE connect_guard.upgrade_plan
       SET ha_target = ha_target || jsonb_build_object('tried_at', clock_timestamp(), 'answer', v_result ->> 'detail')
                       || CASE WHEN v_result ->> 'outcome' = 'requested'
                               THEN jsonb_build_object('requested_at', clock_timestamp()) ELSE '{}' END,
           last_error = CASE WHEN v_result ->> 'outcome' = 'retry' THEN v_result ->> 'detail' END
     WHERE plan_id = p.plan_id;
    IF v_result ->> 'outcome' = 'requested' THEN
        PERFORM connect_guard.log_event(NULL, 'upgrade_switchover_requested',
            jsonb_build_object('plan_id', p.plan_id, 'promote_with', p.promote_with, 'target', p.ha_target,
                               'answer', v_result ->> 'detail'));
    END IF;
    IF v_result ->> 'outcome' = 'refused' THEN
        PERFORM connect_guard.upgrade_fail(p.plan_id,
            format('%s refused the switchover to %s: %s', p.promote_with, p.ha_target ->> 'candidate', v_result ->> 'detail'));
        RETURN 2;
    END IF;
    IF v_overdue THEN
        PERFORM connect_guard.upgrade_fail(p.plan_id,
            format('%s did not promote %s within %s (last: %s)', p.promote_with, p.ha_target ->> 'candidate',
                   p.step_timeout, v_result ->> 'detail'));
        RETURN 2;
    END IF;
    RETURN 1;
END;
$$;

/* ------------------------------------------------------------------------
 * Unplanned failovers: the timeline history the witness records, and a
 * former primary's view of it
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.timeline_ancestry maps every timeline this server's
 * history descends from to the LSN where it left it ({"1": "0/3000188"});
 * empty on timeline 1 and in recovery.
 */
CREATE FUNCTION connect_guard.timeline_ancestry()
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tli integer := connect_guard.current_timeline();
    v_history jsonb := '{}';
    v_switch pg_lsn;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN v_history;
    END IF;
    FOR i IN 1 .. v_tli - 1 LOOP
        v_switch := connect_guard.timeline_switch_lsn(i);
        IF v_switch IS NOT NULL THEN
            v_history := v_history || jsonb_build_object(i::text, v_switch::text);
        END IF;
    END LOOP;
    RETURN v_history;
END;
$$;

/*
 * connect_guard.failed_over_detail says, for a server on an older timeline
 * than its witness (w), whether the witness's timeline descends from this
 * one: then another server took over (a failover) and this one is a former
 * primary, not a rolled-back copy.  NULL when the witness's history does
 * not show it (or the witness predates the history it records).
 */
CREATE FUNCTION connect_guard.failed_over_detail(w jsonb, d jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_switch pg_lsn := (w -> 'history' ->> (d ->> 'timeline'));
    v_here pg_lsn := pg_current_wal_lsn();
BEGIN
    IF v_switch IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN format('timeline %s, on which the witness was written at %s, left this server''s timeline %s at %s: another server was promoted without an upgrade plan (a failover), and this one is a former primary. Its mapped tables are fenced (its writes would reach no sync service), it requests no reloads and leaves the witness to the new timeline%s',
                  w ->> 'timeline', w ->> 'written_at', d ->> 'timeline', v_switch,
                  CASE WHEN v_here > v_switch
                       THEN format('; the %s bytes of WAL it holds past %s are on no timeline the sync service follows (a transaction committed there is lost to it)',
                                   pg_wal_lsn_diff(v_here, v_switch), v_switch)
                       ELSE '' END);
END;
$$;

/*
 * connect_guard.failover_fence is the worker's act on a 'failed_over'
 * finding: a maintenance fence over the mapped tables, unless one is up
 * already.  On a server that the witness shows current again (an old
 * primary that an HA manager brought back as a replica, then promoted),
 * the fences it kept as a former primary come down: its own failover
 * fence, and the database fence of a changeover it was the old primary of
 * (the plan completed on the server that took over, and this server now
 * writes on a later timeline than the plan's).
 */
CREATE FUNCTION connect_guard.failover_fence(p_findings jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    t record;
    v_fence integer;
    v_tli integer := connect_guard.current_timeline();
BEGIN
    IF p_findings @> '[{"finding": "failed_over"}]' THEN
        -- its standbys follow the new primary now: under synchronous replication the
        -- worker's commits (this one records the finding) would wait for them for
        -- ever.  For the session: a SET LOCAL would end with this function.
        PERFORM set_config('synchronous_commit', 'local', false);
    END IF;
    IF NOT connect_guard.fence_available() THEN
        RETURN;
    END IF;
    IF p_findings @> '[{"finding": "failed_over"}]' THEN
        IF EXISTS (SELECT 1 FROM connect_guard.fence_list() l WHERE l.scope IN ('mapped', 'database')) THEN
            RETURN;
        END IF;
        t := connect_guard.fence_targets(NULL);
        IF cardinality(t.relids) = 0 THEN
            RETURN;
        END IF;
        v_fence := connect_guard.fence_raise('mapped', NULL, NULL,
            format('former primary of timeline %s: another server took over in a failover, and writes here would reach no sync service',
                   v_tli),
            t.relids, t.relconnections);
        PERFORM connect_guard.log_event(NULL, 'fence_raised',
            jsonb_build_object('fence_id', v_fence, 'scope', 'mapped', 'reason', 'failed_over', 'timeline', v_tli));
        RETURN;
    END IF;
    IF p_findings @> '[{"severity": "rollback"}]' OR p_findings @> '[{"finding": "superseded"}]' THEN
        RETURN;
    END IF;
    FOR f IN SELECT l.fence_id, l.scope, 'failed_over' AS why FROM connect_guard.fence_list() l
              WHERE l.scope = 'mapped' AND l.reason ~ '^former primary of timeline [0-9]+:'
                AND substring(l.reason FROM '^former primary of timeline ([0-9]+):')::integer < v_tli
             UNION ALL
             SELECT l.fence_id, l.scope, format('upgrade plan %s', u.plan_id) FROM connect_guard.fence_list() l
               JOIN connect_guard.upgrade_plan u ON l.reason = format('upgrade plan %s (%s)', u.plan_id, u.method)
              WHERE l.scope = 'database' AND u.method = 'follower' AND u.status = 'completed' AND u.timeline < v_tli
    LOOP
        PERFORM connect_guard.fence_lower(f.fence_id);
        PERFORM connect_guard.log_event(NULL, 'fence_lowered',
            jsonb_build_object('fence_id', f.fence_id, 'scope', f.scope, 'reason', f.why,
                               'note', format('this former primary leads again, on timeline %s', v_tli)));
    END LOOP;
END;
$$;
