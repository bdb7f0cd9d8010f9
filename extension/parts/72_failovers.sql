/* ------------------------------------------------------------------------
 * Unplanned failovers (an HA manager's, or a promotion by hand, with no
 * upgrade plan).  The new primary tells one from a rollback by the witness:
 * its timeline left the old one at or after the witnessed LSN ('promoted',
 * 75_rollback.sql).  The witness also records the timeline history of the
 * server that writes it (timeline_ancestry, in database_state(),
 * 74_witness.sql), so a former primary that runs again on the older
 * timeline sees that a descendant timeline took over ('failed_over'): it
 * fences its mapped tables, asks for no reloads and leaves the witness
 * alone, rather than take itself for a rolled-back copy.  Once such a
 * server leads again (its HA manager brought it back as a replica, then
 * promoted it), the fences it kept as a former primary come down.
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
