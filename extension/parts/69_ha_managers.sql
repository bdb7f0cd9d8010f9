/* ------------------------------------------------------------------------
 * HA managers.  Where Patroni or pg_auto_failover manages the cluster, a
 * promotion behind its back makes it fight the change (Patroni demotes a
 * primary that does not hold its leader key; pg_auto_failover's monitor
 * has its own idea of who is primary).  So a follower changeover can hand
 * the promotion to the HA manager (connect_prepare_upgrade(...,
 * promote_with => 'patroni' | 'pg_auto_failover'), 70_upgrade.sql):
 *
 *   checking          also asks the HA manager whether this server leads and
 *                     the follower may take over, before anything changes
 *                     (ha_check)
 *   pausing ... ready as for every follower changeover
 *   switching_over    connect_promote_follower() moves the plan there; the
 *                     worker asks Patroni's REST API for a switchover
 *                     (POST /switchover, leader and candidate) or the
 *                     monitor for a promotion (pgautofailover.perform_promotion
 *                     over libpq) until it acts (ha_request); the HA manager
 *                     stops this server, and the new primary's worker
 *                     completes the plan as always
 *
 * This part only talks to the HA managers and says what they answered; the
 * plan acts on it (70_upgrade.sql).  Unplanned failovers: 72_failovers.sql.
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
 * connect_guard.ha_check asks the HA manager whether this server leads and
 * the follower may take over.  Returns {"ok": true, "target": {leader,
 * candidate[, formation]}} or {"ok": false, "retry": ..., "error": ...}:
 * retry when the answer may change (no answer, a member still starting),
 * not when the plan names the wrong cluster or member.
 */
CREATE FUNCTION connect_guard.ha_check(p_promote_with text, p_endpoint text, p_member text, p_follower text)
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
        v_port := connect_guard.ha_follower_port(p_follower);
    EXCEPTION WHEN connection_failure THEN
        RETURN jsonb_build_object('ok', false, 'retry', true, 'error', 'the follower is unreachable: ' || SQLERRM);
    END;

    IF p_promote_with = 'patroni' THEN
        v_answer := connect_guard.ha_patroni('GET', p_endpoint, '/cluster');
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
           AND CASE WHEN p_member IS NOT NULL THEN m ->> 'name' = p_member
                    ELSE (m ->> 'port')::integer = v_port END;
        IF jsonb_array_length(v_candidates) <> 1 THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', CASE WHEN p_member IS NOT NULL
                              THEN format('Patroni''s cluster has no replica named %s (members: %s)', p_member,
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
            v_members := connect_guard.ha_monitor_nodes(p_endpoint);
        EXCEPTION WHEN connection_failure THEN
            RETURN jsonb_build_object('ok', false, 'retry', true,
                'error', 'the pg_auto_failover monitor did not list its nodes: ' || SQLERRM);
        END;
        SELECT coalesce(jsonb_agg(n), '[]') INTO v_candidates FROM jsonb_array_elements(v_members) n
         WHERE n ->> 'system_identifier' = connect_guard.system_identifier()::text
           AND CASE WHEN p_member IS NOT NULL THEN n ->> 'name' = p_member
                    ELSE (n ->> 'port')::integer = v_port AND (n ->> 'port')::integer <> v_our_port END;
        IF jsonb_array_length(v_candidates) <> 1 THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', CASE WHEN p_member IS NOT NULL
                              THEN format('the monitor knows no node named %s of this cluster (nodes: %s)', p_member,
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
    RETURN jsonb_build_object('ok', true, 'target', v_target);
END;
$$;

/*
 * connect_guard.ha_request asks the HA manager once for the switchover that
 * ha_check's target describes (or finds it under way; a request less than
 * 30 s old, requested_at in the target, is not sent again) and says what
 * came of it: 'requested', 'under_way', 'retry' (no answer, or one that may
 * change) or 'refused', with a detail.
 */
CREATE FUNCTION connect_guard.ha_request(p_promote_with text, p_endpoint text, p_target jsonb)
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
    v_recent boolean := (p_target ->> 'requested_at')::timestamptz > clock_timestamp() - interval '30 s';
BEGIN
    IF p_promote_with = 'patroni' THEN
        v_answer := connect_guard.ha_patroni('GET', p_endpoint, '/cluster');
        IF (v_answer ->> 'status')::integer <> 200 THEN
            RETURN jsonb_build_object('outcome', 'retry', 'detail', 'GET /cluster: ' || connect_guard.ha_answer_text(v_answer));
        END IF;
        SELECT m ->> 'name' INTO v_leader FROM jsonb_array_elements(v_answer #> '{body,members}') m
         WHERE m ->> 'role' IN ('leader', 'master') LIMIT 1;
        IF v_leader = p_target ->> 'candidate' THEN
            RETURN jsonb_build_object('outcome', 'under_way', 'detail', format('member %s leads the cluster now', v_leader));
        END IF;
        IF v_leader IS DISTINCT FROM p_target ->> 'leader' THEN
            RETURN jsonb_build_object('outcome', CASE WHEN v_leader IS NULL THEN 'retry' ELSE 'refused' END,
                'detail', format('Patroni''s leader is %s, not %s as when the plan checked',
                                 coalesce(v_leader, 'nobody'), p_target ->> 'leader'));
        END IF;
        IF v_recent THEN
            RETURN jsonb_build_object('outcome', 'under_way', 'detail', 'switchover requested at ' || (p_target ->> 'requested_at'));
        END IF;
        -- Patroni answers when the switchover is done (or after ~15 s); by then it
        -- has stopped this server, and this worker with it
        v_answer := connect_guard.ha_patroni('POST', p_endpoint, '/switchover',
            jsonb_build_object('leader', p_target ->> 'leader', 'candidate', p_target ->> 'candidate'), 30000);
        RETURN jsonb_build_object(
            'outcome', CASE WHEN (v_answer ->> 'status')::integer IN (200, 202) THEN 'requested'
                            WHEN (v_answer ->> 'status')::integer BETWEEN 400 AND 499 THEN 'refused'
                            ELSE 'retry' END,
            'detail', 'POST /switchover: ' || connect_guard.ha_answer_text(v_answer));
    END IF;

    -- pg_auto_failover: the monitor orchestrates; the keepers follow its goal states
    BEGIN
        v_nodes := connect_guard.ha_monitor_nodes(p_endpoint);
    EXCEPTION WHEN connection_failure THEN
        RETURN jsonb_build_object('outcome', 'retry', 'detail', SQLERRM);
    END;
    SELECT n INTO v_node FROM jsonb_array_elements(v_nodes) n
     WHERE n ->> 'formation' = p_target ->> 'formation' AND n ->> 'name' = p_target ->> 'candidate';
    IF v_node IS NULL THEN
        RETURN jsonb_build_object('outcome', 'refused',
            'detail', format('the monitor no longer knows node %s', p_target ->> 'candidate'));
    END IF;
    IF v_node ->> 'reported' IN ('primary', 'wait_primary', 'single')
       OR v_node ->> 'goal' IN ('prepare_promotion', 'stop_replication', 'wait_primary', 'primary') THEN
        RETURN jsonb_build_object('outcome', 'under_way',
            'detail', format('node %s reports %s and is assigned %s', v_node ->> 'name', v_node ->> 'reported', v_node ->> 'goal'));
    END IF;
    IF v_recent THEN
        RETURN jsonb_build_object('outcome', 'under_way', 'detail', 'promotion requested at ' || (p_target ->> 'requested_at'));
    END IF;
    BEGIN
        v_result := connect_guard.remote_query(p_endpoint,
            format('SELECT pgautofailover.perform_promotion(%L, %L) AS promoted',
                   p_target ->> 'formation', p_target ->> 'candidate'), 10000);
    EXCEPTION WHEN connection_failure THEN
        -- the monitor answered with an error (a state that forbids it): that is a refusal
        RETURN jsonb_build_object('outcome', CASE WHEN SQLERRM LIKE '%ERROR:%' THEN 'refused' ELSE 'retry' END,
                                  'detail', 'perform_promotion: ' || SQLERRM);
    END;
    RETURN jsonb_build_object('outcome', CASE WHEN v_result ->> 'promoted' = 't' THEN 'requested' ELSE 'refused' END,
        'detail', CASE WHEN v_result ->> 'promoted' = 't' THEN format('the monitor promotes node %s', p_target ->> 'candidate')
                       ELSE format('the monitor started no promotion of node %s (already a primary?)', p_target ->> 'candidate') END);
END;
$$;
