/* ------------------------------------------------------------------------
 * Connect-aware upgrade plans.  Every manual step of Heroku's runbooks
 * (pause Connect, maintenance mode, wait for the follower, upgrade/promote,
 * resume) is a step of a persisted plan that the worker drives, one step
 * per transaction, each step safe to run again after a crash.
 *
 *   follower:   checking -> pausing -> fencing -> fencing_follower -> catching_up -> ready
 *               ... promotion (pg_promote, or switching_over: the HA manager's, 69_ha_managers.sql)
 *               ... the new primary's worker: completing -> completed
 *   pg_upgrade: pausing -> fencing -> ready
 *               ... pg_upgrade ... the new cluster's worker: completing -> completed
 *   copy:       fencing -> draining -> pausing -> ready
 *               ... pg_dump | pg_restore ... connect_complete_upgrade() on the copy
 *
 * The plan row travels with the data (WAL to the follower, pg_upgrade's
 * copy, pg_dump), which is how the new primary knows what was planned and
 * why its system identifier or timeline changed.
 *
 * Network I/O inside a transaction, the one exception to the worker's rule
 * (worker.c: network I/O outside any transaction): a follower changeover
 * talks to its follower through libpq (remote.c) from within a step, in
 * the steps checking, fencing_follower, catching_up and ready
 * (follower_probe, and remote_query to fence the follower), and from
 * connect_abort_upgrade() and connect_promote_follower().  Why: the step
 * must act on the answer atomically with the plan row it holds locked (a
 * fence raised on the follower is recorded in the same commit that moves
 * the plan on; an answer that is lost leaves the step to run again, which
 * finds and reuses that fence).  Bounded: each call waits at most
 * connect_guard.follower_timeout (the catch-up's wait on the follower: a
 * second at most; the promotion: 65 s, its own 60 s and a margin), on the
 * latch, so a cancel or a shutdown ends the wait.  The same
 * holds for the HA manager of a changeover that has one, asked in the steps
 * checking and switching_over (69_ha_managers.sql: libpq to the
 * pg_auto_failover monitor, or HTTP to Patroni, at most 30 s for a
 * switchover, which Patroni answers once done; a shutdown aborts it).  While it
 * waits the worker holds only the plan row (taken SKIP LOCKED, so no other
 * session waits for it) and a snapshot, and this happens only while a
 * changeover is in progress, with the database fenced.
 *
 * The write-blocked window (the fence up here to the first write accepted
 * on the new primary) waits for events, not for polls: the fence on the
 * follower is raised in the fencing step's transaction; the catch-up is one
 * call that waits on the follower until its replay reaches the fence
 * (follower_probe_after_replay, standby.c); the promotion is one call that
 * returns, and wakes the follower's worker (which waits on a standby for
 * its promotion: worker.c), once the follower is out of recovery; every
 * step that commits wakes connect_wait_upgrade() (plan_changed()); and the
 * worker keeps its connection to the follower between the steps (remote.c).
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.upgrade_plan (
    plan_id             serial PRIMARY KEY,
    method              text NOT NULL CHECK (method IN ('pg_upgrade', 'follower', 'copy')),
    follower            text,               -- conninfo: may hold a password, never shown
    max_lag_bytes       bigint NOT NULL,
    step_timeout        interval NOT NULL,
    step                text NOT NULL,
    step_since          timestamptz NOT NULL DEFAULT clock_timestamp(),
    status              text NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'ready', 'completed', 'failed', 'aborted', 'handed_over')),
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by          name NOT NULL DEFAULT session_user,
    finished_at         timestamptz,
    follower_lag_bytes  numeric,
    -- what the database looked like with the fence up
    system_identifier   bigint,
    database_name       text,
    timeline            integer,
    fence_lsn           pg_lsn,
    target_lsn          pg_lsn,
    log_head            bigint,
    high_water_marks    jsonb,
    paused_connections  text[] NOT NULL DEFAULT '{}',
    fence_id            integer,
    follower_fence_id   integer,
    completed_on        bigint,             -- system identifier of the database that completed it
    -- who promotes the follower (69_ha_managers.sql): pg_promote() over libpq, or the HA manager
    promote_with        text NOT NULL DEFAULT 'connect_guard'
                        CHECK (promote_with IN ('connect_guard', 'patroni', 'pg_auto_failover')),
    ha_endpoint         text,               -- Patroni's REST API, or the monitor's conninfo: may hold a password
    ha_member           text,               -- the follower's name there, when given
    ha_target           jsonb NOT NULL DEFAULT '{}'     -- leader, candidate (formation), what was asked and answered
);
-- one plan at a time
CREATE UNIQUE INDEX upgrade_plan_one_active ON connect_guard.upgrade_plan ((true))
    WHERE status IN ('running', 'ready');

CREATE TABLE connect_guard.upgrade_step (
    plan_id     integer NOT NULL REFERENCES connect_guard.upgrade_plan ON DELETE CASCADE,
    step        text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX ON connect_guard.upgrade_step (plan_id, started_at);

SELECT pg_catalog.pg_extension_config_dump('connect_guard.upgrade_plan', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.upgrade_plan_plan_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.upgrade_step', '');

/*
 * connect_guard.upgrade_goto moves a plan to its next step (or ends it),
 * closing the current step of its timeline and opening the next.
 */
CREATE FUNCTION connect_guard.upgrade_goto(p_plan integer, p_step text, p_status text DEFAULT 'running',
                                           p_detail jsonb DEFAULT '{}', p_error text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE connect_guard.upgrade_step SET finished_at = clock_timestamp()
     WHERE plan_id = p_plan AND finished_at IS NULL;
    UPDATE connect_guard.upgrade_plan
       SET step = p_step, step_since = clock_timestamp(), status = p_status,
           last_error = coalesce(p_error, CASE WHEN p_status IN ('running', 'ready') THEN NULL ELSE last_error END),
           finished_at = CASE WHEN p_status IN ('completed', 'failed', 'aborted', 'handed_over')
                              THEN clock_timestamp() END
     WHERE plan_id = p_plan;
    INSERT INTO connect_guard.upgrade_step (plan_id, step, detail, finished_at)
    VALUES (p_plan, p_step, p_detail,
            CASE WHEN p_status IN ('completed', 'failed', 'aborted', 'handed_over') THEN clock_timestamp() END);
    PERFORM connect_guard.log_event(NULL, 'upgrade_' || p_step,
        p_detail || jsonb_build_object('plan_id', p_plan, 'status', p_status, 'error', p_error));
    PERFORM connect_guard.plan_changed();      -- connect_wait_upgrade() looks again at commit
END;
$$;

CREATE FUNCTION connect_guard.upgrade_fail(p_plan integer, p_error text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT connect_guard.upgrade_goto(p_plan, (SELECT step FROM connect_guard.upgrade_plan WHERE plan_id = p_plan),
                                      'failed', jsonb_build_object('error', p_error), p_error);
$$;

/*
 * connect_guard.follower_probe checks the plan's follower exactly as the
 * worker's lag checks do (lag.c: is it a standby of this primary, what has
 * it replayed), and returns what it found as jsonb (answered, reachable,
 * error, in_recovery, system_identifier_matches, database, timeline,
 * replay_lsn, lag_bytes); the plan only adds what is its own (the database,
 * the fence position).  Never raises for the follower's problems.
 */
CREATE FUNCTION connect_guard.follower_probe(p_conninfo text)
RETURNS jsonb LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_follower_probe';

/*
 * connect_guard.follower_probe_after_replay is the same check, answered
 * once the follower has replayed up to p_replayed (or after up to a
 * second, follower_timeout / 2 at most), rather than at once.
 */
CREATE FUNCTION connect_guard.follower_probe_after_replay(p_conninfo text, p_replayed pg_lsn)
RETURNS jsonb LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_follower_probe_after_replay';

/*
 * What the old primary asks of its follower (standby.c), there, with CALL:
 * wait until the replay reaches an LSN; promote, wait for the end of the
 * promotion and wake the worker that completes the plan.  Each looks every
 * millisecond, holds no snapshot meanwhile, and gives up after timeout_ms.
 */
CREATE PROCEDURE connect_guard.wait_for_replay(target pg_lsn, timeout_ms integer)
LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_wait_for_replay';

CREATE PROCEDURE connect_guard.promote_standby(timeout_ms integer, OUT promoted boolean)
LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_promote_standby';

/*
 * connect_guard.resume_plan_connections resumes the connections a plan
 * paused that are still paused (or pausing); a connection the DBA resumed
 * or dropped meanwhile is left alone.
 */
CREATE FUNCTION connect_guard.resume_plan_connections(p_names text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT c.name FROM connect_guard.connection c
                   WHERE c.name = ANY (p_names) AND c.state IN ('PAUSED', 'PAUSING') ORDER BY c.name LOOP
        PERFORM @extschema@.connect_resume(v_name);
    END LOOP;
END;
$$;

/*
 * connect_guard.upgrade_complete_here finishes a plan on the database that
 * took over (a promoted follower, an upgraded cluster): it checks that the
 * trigger log and the high-water marks came through intact and that the
 * takeover happened after the fence, then lowers the fence and resumes
 * every connection the plan paused.  Anything unexpected fails the plan and
 * leaves the fence up.
 */
CREATE FUNCTION connect_guard.upgrade_complete_here(p connect_guard.upgrade_plan)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_switch pg_lsn;
    v_marks jsonb := connect_guard.high_water_marks();
BEGIN
    IF p.step NOT IN ('completing') THEN
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'completing', p.status,
            jsonb_build_object('system_identifier', connect_guard.system_identifier(),
                               'timeline', connect_guard.current_timeline()));
    END IF;
    IF p.method = 'follower' AND connect_guard.current_timeline() > 1 THEN
        -- where this server's timeline forked from the old primary's (the history files, 68_database.sql)
        v_switch := connect_guard.timeline_switch_lsn(p.timeline);
        IF v_switch IS NULL OR v_switch < p.fence_lsn THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('this server was promoted at %s, before it had replayed the fence at %s: writes made before the fence may be missing',
                       coalesce(v_switch::text, 'an unknown point'), p.fence_lsn));
            RETURN;
        END IF;
    END IF;
    IF connect_guard.log_head() < p.log_head THEN
        PERFORM connect_guard.upgrade_fail(p.plan_id,
            format('the trigger log ends at entry %s here, but reached %s when the fence went up',
                   connect_guard.log_head(), p.log_head));
        RETURN;
    END IF;
    IF v_marks <> p.high_water_marks THEN
        PERFORM connect_guard.upgrade_fail(p.plan_id,
            format('the high-water marks differ from those recorded at the fence: %s here, %s then',
                   v_marks, p.high_water_marks));
        RETURN;
    END IF;

    IF p.follower_fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(p.follower_fence_id);
    ELSIF p.fence_id IS NOT NULL THEN
        -- pg_upgrade: the fence file was copied into the new cluster by the runbook, or not
        PERFORM connect_guard.fence_lower(p.fence_id);
    END IF;
    PERFORM connect_guard.resume_plan_connections(p.paused_connections);
    UPDATE connect_guard.upgrade_plan SET completed_on = connect_guard.system_identifier()
     WHERE plan_id = p.plan_id;
    PERFORM connect_guard.upgrade_goto(p.plan_id, 'completed', 'completed',
        jsonb_build_object('resumed', p.paused_connections));
END;
$$;

/*
 * connect_guard.plan_pause asks every connection (or, with
 * p_adopted_only, every connection of an adopted Connect schema) that is
 * not PAUSED to pause, without a fence of its own (the plan fences the
 * whole database), and returns those not PAUSED yet (NULL when all are).
 * A local consumer's pause waits a moment per try for the open batch; a
 * sync service gets the step's time to pause and to finish what it is
 * sending; a pause whose request failed is asked again.  The plan records
 * the connections it pauses, to resume them.  A copy pauses the adopted
 * connections before its fence: a copy carries Connect's log as rows,
 * unfinished entries included (Heroku's pg:copy runbook: pause Connect
 * with the maintenance mode), and under the fence Connect's own writes
 * (marking what it sent) would be refused.
 */
CREATE FUNCTION connect_guard.plan_pause(p connect_guard.upgrade_plan, p_adopted_only boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_waiting text;
BEGIN
    UPDATE connect_guard.upgrade_plan
       SET paused_connections = ARRAY(SELECT name FROM connect_guard.connection ORDER BY name)
     WHERE plan_id = p.plan_id AND paused_connections = '{}';
    FOR c IN SELECT * FROM connect_guard.connection cn
              WHERE (NOT p_adopted_only OR cn.log_schema IS NOT NULL)
                AND (cn.state NOT IN ('PAUSED', 'PAUSING')
                     OR (cn.state = 'PAUSING' AND (connect_guard.latest_state_request(cn.connection_id)).status = 'failed'))
              ORDER BY cn.name LOOP
        BEGIN
            PERFORM @extschema@.connect_pause(c.name, block_writes => false,
                                              timeout => CASE WHEN c.adapter = 'local' THEN interval '100 ms' ELSE p.step_timeout END,
                                              reason => format('upgrade plan %s', p.plan_id));
        EXCEPTION WHEN object_not_in_prerequisite_state OR lock_not_available THEN
            NULL;           -- a batch is open, or a consumer holds the connection: try again next time
        END;
    END LOOP;
    SELECT string_agg(format('%s (%s)', name, state), ', ' ORDER BY name) INTO v_waiting
      FROM connect_guard.connection WHERE state <> 'PAUSED' AND (NOT p_adopted_only OR log_schema IS NOT NULL);
    RETURN v_waiting;
END;
$$;

/*
 * connect_guard.plan_fence_follower is the fencing_follower step (p at that
 * step, its row locked): it raises a database-wide fence on the follower,
 * still a standby, so that it comes up fenced however it is promoted, and
 * moves the plan to catching_up.  Returns what upgrade_advance() returns.
 */
CREATE FUNCTION connect_guard.plan_fence_follower(p connect_guard.upgrade_plan, p_overdue boolean)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c_waiting CONSTANT integer := 1;
    c_moved CONSTANT integer := 2;
    v_probe jsonb;
BEGIN
    BEGIN
        -- the follower's fence commits there before this transaction does: a try
        -- whose answer was lost (a timeout, a crash here) left it up, so reuse
        -- it rather than raise a second one that completion would not lower
        v_probe := connect_guard.remote_query(p.follower,
            format('SELECT coalesce((SELECT max(fence_id) FROM connect_guard.fence_list() WHERE scope = %L AND reason = %L),
                                    connect_guard.fence_raise(%L, NULL, NULL, %L, %L, %L)) AS fence_id',
                   'database', format('upgrade plan %s: fenced until the plan completes on this server', p.plan_id),
                   'database', format('upgrade plan %s: fenced until the plan completes on this server', p.plan_id),
                   '{}', '{}'));
    EXCEPTION WHEN connection_failure THEN
        IF p_overdue THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id, 'could not fence the follower: ' || SQLERRM);
            RETURN c_moved;
        END IF;
        RETURN c_waiting;
    END;
    UPDATE connect_guard.upgrade_plan SET follower_fence_id = (v_probe->>'fence_id')::integer
     WHERE plan_id = p.plan_id;
    PERFORM connect_guard.upgrade_goto(p.plan_id, 'catching_up', 'running',
        jsonb_build_object('follower_fence_id', (v_probe->>'fence_id')::integer));
    RETURN c_moved;
END;
$$;

/*
 * connect_guard.upgrade_advance runs one step of the active plan, if there
 * is one, and returns 0 when there is no plan to drive, 1 when the plan
 * waits (poll again soon), 2 when it moved (run again at once).  The worker
 * calls it in a transaction of its own; every step can run again after a
 * crash without doing its work twice.
 */
CREATE FUNCTION connect_guard.upgrade_advance()
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- what this returns, as the worker reads it (enum UpgradeAdvance, include/worker.h)
    c_no_plan CONSTANT integer := 0;
    c_waiting CONSTANT integer := 1;
    c_moved CONSTANT integer := 2;
    p connect_guard.upgrade_plan;
    c connect_guard.connection;
    v_probe jsonb;
    v_lag numeric;
    v_waiting text;
    v_fid integer;
    v_overdue boolean;
    v_target pg_lsn;
BEGIN
    SELECT * INTO p FROM connect_guard.upgrade_plan
     WHERE status IN ('running', 'ready') FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN c_no_plan;
    END IF;
    v_overdue := clock_timestamp() > p.step_since + p.step_timeout;

    -- a database other than the one the plan was prepared on: the one that took over
    IF p.system_identifier IS NOT NULL
       AND (connect_guard.system_identifier() <> p.system_identifier
            OR connect_guard.current_timeline() <> p.timeline) THEN
        IF p.method = 'copy' THEN
            RETURN c_no_plan;           -- finished by connect_complete_upgrade(), by hand
        END IF;
        -- Not on a server that pg_upgrade itself started (postgres -b): pg_upgrade
        -- starts the new cluster with the data in place at its end, before the
        -- runbook has copied the fence file in; completing there would resume the
        -- connections and leave the fence copied afterwards up for good.
        IF connect_guard.in_binary_upgrade() THEN
            RETURN c_no_plan;
        END IF;
        PERFORM connect_guard.upgrade_complete_here(p);
        RETURN c_moved;
    END IF;

    CASE p.step
    WHEN 'checking' THEN
        v_probe := connect_guard.follower_probe(p.follower);
        IF NOT (v_probe->>'answered')::boolean THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                'the follower is unreachable: could not query the other server: ' || (v_probe->>'error'));
            RETURN c_moved;
        END IF;
        IF NOT (v_probe->>'in_recovery')::boolean THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id, 'the follower is not a standby (it is not in recovery)');
            RETURN c_moved;
        END IF;
        IF NOT (v_probe->>'system_identifier_matches')::boolean THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id, 'the follower is not a standby of this primary (different system identifier)');
            RETURN c_moved;
        END IF;
        IF v_probe->>'database' <> current_database() THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('the follower conninfo names database %s, but the plan is for %s', v_probe->>'database', current_database()));
            RETURN c_moved;
        END IF;
        -- any other verdict of the lag check (a newer timeline, nothing replayed yet) is waited out
        IF v_probe->>'error' IS NOT NULL THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id, 'the follower is not a caught-up standby: ' || (v_probe->>'error'));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        v_lag := (v_probe->>'lag_bytes')::numeric;
        UPDATE connect_guard.upgrade_plan SET follower_lag_bytes = v_lag WHERE plan_id = p.plan_id;
        IF v_lag > p.max_lag_bytes THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    format('the follower stayed %s bytes behind, more than max_lag_bytes = %s', v_lag, p.max_lag_bytes));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        IF p.promote_with <> 'connect_guard' THEN
            -- the HA manager must agree before anything is paused or fenced (69_ha_managers.sql)
            v_probe := connect_guard.ha_check(p.promote_with, p.ha_endpoint, p.ha_member, p.follower);
            IF NOT (v_probe->>'ok')::boolean THEN
                IF (v_probe->>'retry')::boolean AND NOT v_overdue THEN
                    UPDATE connect_guard.upgrade_plan SET last_error = v_probe->>'error' WHERE plan_id = p.plan_id;
                    RETURN c_waiting;
                END IF;
                PERFORM connect_guard.upgrade_fail(p.plan_id, v_probe->>'error');
                RETURN c_moved;
            END IF;
            UPDATE connect_guard.upgrade_plan SET ha_target = v_probe->'target', last_error = NULL
             WHERE plan_id = p.plan_id;
        END IF;
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'pausing', 'running',
            jsonb_build_object('follower_lag_bytes', v_lag) || coalesce(v_probe->'target', '{}'));
        RETURN c_moved;

    WHEN 'pausing' THEN
        v_waiting := connect_guard.plan_pause(p, false);
        IF v_waiting IS NOT NULL THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    format('not every connection reached PAUSED within %s: %s', p.step_timeout, v_waiting));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        PERFORM connect_guard.upgrade_goto(p.plan_id,
            CASE p.method WHEN 'copy' THEN 'ready' ELSE 'fencing' END,
            CASE p.method WHEN 'copy' THEN 'ready' ELSE 'running' END);
        RETURN c_moved;

    WHEN 'fencing' THEN
        -- a copy carries Connect's log as rows: Connect pauses first (plan_pause)
        IF p.method = 'copy' AND p.fence_id IS NULL THEN
            v_waiting := connect_guard.plan_pause(p, true);
            IF v_waiting IS NOT NULL THEN
                IF v_overdue THEN
                    PERFORM connect_guard.upgrade_fail(p.plan_id,
                        format('not every adopted connection reached PAUSED within %s: %s', p.step_timeout, v_waiting));
                    RETURN c_moved;
                END IF;
                RETURN c_waiting;
            END IF;
        END IF;
        -- A fence is saved to the fence file when it is raised, not at commit, so a
        -- crash while this step waited for the writers in flight leaves the fence up
        -- (restored from the file) but not in the plan, whose update never
        -- committed: adopt it (and wait for the writers again), or every later try
        -- fails with "a maintenance fence is already up".
        v_fid := p.fence_id;
        IF v_fid IS NULL THEN
            SELECT f.fence_id INTO v_fid FROM connect_guard.fence_list() f
             WHERE f.scope = 'database' AND f.reason = format('upgrade plan %s (%s)', p.plan_id, p.method);
        END IF;
        IF v_fid IS NOT NULL THEN
            PERFORM connect_guard.wait_for_writers(connect_guard.database_tables(),
                                                   clock_timestamp() + p.step_timeout, false);
        ELSIF v_overdue THEN
            -- The last try failed (connect_fence() timed out waiting for the writers
            -- in flight, or another maintenance fence is up): its error ended the
            -- worker's transaction, which lowered its fence.  Fail rather than retry
            -- forever with nothing in last_error.
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('could not fence the database within %s: writers still in flight, or another maintenance fence is up (the server log has the last try''s error)',
                       p.step_timeout));
            RETURN c_moved;
        ELSE
            v_fid := @extschema@.connect_fence('database', format('upgrade plan %s (%s)', p.plan_id, p.method),
                                   timeout => p.step_timeout);
        END IF;
        UPDATE connect_guard.upgrade_plan
           SET fence_id = v_fid,
               system_identifier = connect_guard.system_identifier(),
               database_name = current_database(),
               timeline = connect_guard.current_timeline(),
               fence_lsn = pg_current_wal_insert_lsn(),
               log_head = connect_guard.log_head(),
               high_water_marks = connect_guard.high_water_marks()
         WHERE plan_id = p.plan_id;
        PERFORM connect_guard.upgrade_goto(p.plan_id,
            CASE p.method WHEN 'follower' THEN 'fencing_follower'
                          WHEN 'copy' THEN 'draining' ELSE 'ready' END,
            CASE p.method WHEN 'pg_upgrade' THEN 'ready' ELSE 'running' END,
            jsonb_build_object('fence_id', v_fid, 'fence_lsn', pg_current_wal_insert_lsn(),
                               'log_head', connect_guard.log_head()));
        IF p.method = 'follower' THEN
            -- The follower's fence in the same transaction: one commit fewer while writes
            -- are blocked.  Nor does this commit wait for its own flush: catching_up
            -- flushes past it before it asks the follower (follower_probe_after_replay),
            -- and a crash before then only runs this step again (it adopts both fences).
            PERFORM set_config('synchronous_commit', 'off', true);
            RETURN connect_guard.plan_fence_follower(connect_guard.require_plan(p.plan_id), false);
        END IF;
        RETURN c_moved;

    WHEN 'fencing_follower' THEN
        RETURN connect_guard.plan_fence_follower(p, v_overdue);

    WHEN 'catching_up' THEN
        -- Everything up to here, the plan's own rows included, must be on the follower:
        -- the steps before committed, so the insert position is past them.  The
        -- follower waits for its replay to get there, and answers then (or after a
        -- second: the worker asks again).  A try that ends without the answer leaves
        -- the step to run again, with a later target.
        v_target := pg_current_wal_insert_lsn();
        v_probe := connect_guard.follower_probe_after_replay(p.follower, v_target);
        IF NOT (v_probe->>'answered')::boolean THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    'the follower is unreachable: could not query the other server: ' || (v_probe->>'error'));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        -- replay_lsn is NULL when the lag check found another cluster's server: never caught up
        v_lag := CASE WHEN v_probe->>'replay_lsn' IS NULL THEN pg_wal_lsn_diff(v_target, '0/0')
                      ELSE greatest(pg_wal_lsn_diff(v_target, (v_probe->>'replay_lsn')::pg_lsn), 0) END;
        UPDATE connect_guard.upgrade_plan SET follower_lag_bytes = v_lag, target_lsn = v_target
         WHERE plan_id = p.plan_id;
        IF v_lag > 0 THEN
            IF NOT (v_probe->>'in_recovery')::boolean THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    'the follower was promoted before it had replayed the fence; the old primary stays fenced');
                RETURN c_moved;
            END IF;
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    format('the follower is still %s bytes short of the fence after %s', v_lag, p.step_timeout));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'ready', 'ready',
            jsonb_build_object('replay_lsn', v_probe->>'replay_lsn', 'target_lsn', v_target));
        RETURN c_moved;

    WHEN 'draining' THEN
        SELECT string_agg(format('%s (%s entries)', connection, backlog), ', ') INTO v_waiting
          FROM @extschema@.connect_high_water_marks
         WHERE (backlog > 0 OR open_batch IS NOT NULL) AND log_kind = 'own';     -- Connect's log goes with the copy
        IF v_waiting IS NOT NULL THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    format('the consumers did not drain the trigger log within %s: %s', p.step_timeout, v_waiting));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        UPDATE connect_guard.upgrade_plan
           SET log_head = connect_guard.log_head(), high_water_marks = connect_guard.high_water_marks()
         WHERE plan_id = p.plan_id;
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'pausing');
        RETURN c_moved;

    WHEN 'switching_over' THEN
        -- the HA manager promotes the follower and stops this server (69_ha_managers.sql);
        -- if this server still runs when the follower is out of recovery, it was handed over
        v_probe := connect_guard.follower_probe(p.follower);
        IF (v_probe->>'answered')::boolean AND NOT (v_probe->>'in_recovery')::boolean THEN
            PERFORM connect_guard.upgrade_goto(p.plan_id, 'handed_over', 'handed_over',
                jsonb_build_object('note', format('%s promoted the follower; this server stays fenced', p.promote_with)));
            RETURN c_moved;
        END IF;
        -- once a second: each try asks the HA manager over the network
        IF (p.ha_target->>'tried_at')::timestamptz > clock_timestamp() - interval '1 s' THEN
            RETURN c_waiting;
        END IF;
        v_probe := connect_guard.ha_request(p.promote_with, p.ha_endpoint, p.ha_target);
        UPDATE connect_guard.upgrade_plan
           SET ha_target = ha_target || jsonb_build_object('tried_at', clock_timestamp(), 'answer', v_probe->>'detail')
                           || CASE WHEN v_probe->>'outcome' = 'requested'
                                   THEN jsonb_build_object('requested_at', clock_timestamp()) ELSE '{}' END,
               last_error = CASE WHEN v_probe->>'outcome' = 'retry' THEN v_probe->>'detail' END
         WHERE plan_id = p.plan_id;
        IF v_probe->>'outcome' = 'requested' THEN
            -- (Patroni answers once it has stopped this server: then this never commits)
            PERFORM connect_guard.log_event(NULL, 'upgrade_switchover_requested',
                jsonb_build_object('plan_id', p.plan_id, 'promote_with', p.promote_with, 'target', p.ha_target,
                                   'answer', v_probe->>'detail'));
        ELSIF v_probe->>'outcome' = 'refused' THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('%s refused the switchover to %s: %s', p.promote_with, p.ha_target->>'candidate', v_probe->>'detail'));
            RETURN c_moved;
        END IF;
        IF v_overdue THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('%s did not promote %s within %s (last: %s)', p.promote_with, p.ha_target->>'candidate',
                       p.step_timeout, v_probe->>'detail'));
            RETURN c_moved;
        END IF;
        RETURN c_waiting;

    WHEN 'ready' THEN
        IF p.method = 'follower' THEN
            -- the old primary learns that the follower took over; it stays fenced
            v_probe := connect_guard.follower_probe(p.follower);
            IF (v_probe->>'answered')::boolean AND NOT (v_probe->>'in_recovery')::boolean THEN
                PERFORM connect_guard.upgrade_goto(p.plan_id, 'handed_over', 'handed_over',
                    jsonb_build_object('note', 'the follower was promoted; this server stays fenced'));
                RETURN c_moved;
            END IF;
        END IF;
        RETURN c_waiting;

    ELSE
        RETURN c_waiting;
    END CASE;
END;
$$;

/* ------------------------------------------------------------------------
 * The DBA's and the runbooks' calls
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_prepare_upgrade(method text DEFAULT 'pg_upgrade', follower text DEFAULT NULL,
                                        max_lag_bytes bigint DEFAULT 0, timeout interval DEFAULT '10 min',
                                        promote_with text DEFAULT 'connect_guard', ha_endpoint text DEFAULT NULL,
                                        ha_member text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_plan integer;
    v_active connect_guard.upgrade_plan;
BEGIN
    PERFORM connect_guard.require_worker('connect_prepare_upgrade()');
    PERFORM connect_guard.require_not_null(method, 'method',
        'Use ''pg_upgrade'' (in place), ''follower'' (changeover to a promoted follower) or ''copy'' (pg_dump into a new database).');
    PERFORM connect_guard.require_not_null(max_lag_bytes, 'max_lag_bytes', 'For example max_lag_bytes => 16 * 1024 * 1024.');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''10 min''');
    IF method IS NULL OR method NOT IN ('pg_upgrade', 'follower', 'copy') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown upgrade method %s', coalesce(quote_literal(method), 'NULL')),
            HINT = 'Use ''pg_upgrade'' (in place), ''follower'' (changeover to a promoted follower) or ''copy'' (pg_dump into a new database).';
    END IF;
    IF (method = 'follower') <> (follower IS NOT NULL) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = CASE WHEN method = 'follower' THEN 'a follower changeover needs the follower''s conninfo'
                           ELSE format('method %s takes no follower', method) END,
            HINT = 'Pass follower => ''host=... port=... dbname=... user=...'' with method => ''follower'' only.';
    END IF;
    IF follower IS NOT NULL THEN
        PERFORM connect_guard.conninfo_masked(follower);     -- rejects a malformed conninfo
    END IF;
    PERFORM connect_guard.ha_validate(method, promote_with, ha_endpoint, ha_member);
    IF max_lag_bytes IS NULL OR max_lag_bytes < 0 OR timeout IS NULL OR timeout <= interval '0' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'max_lag_bytes must be 0 or more and timeout positive',
            HINT = 'For example max_lag_bytes => 16 * 1024 * 1024, timeout => ''10 min''.';
    END IF;
    SELECT * INTO v_active FROM connect_guard.upgrade_plan WHERE status IN ('running', 'ready');
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s is already %s (step %s)', v_active.plan_id, v_active.status, v_active.step),
            HINT = 'Wait for it, or end it with connect_abort_upgrade().';
    END IF;

    INSERT INTO connect_guard.upgrade_plan (method, follower, max_lag_bytes, step_timeout, step,
                                            promote_with, ha_endpoint, ha_member)
    VALUES (method, follower, max_lag_bytes, timeout,
            CASE method WHEN 'follower' THEN 'checking' WHEN 'copy' THEN 'fencing' ELSE 'pausing' END,
            promote_with, ha_endpoint, ha_member)
    RETURNING plan_id INTO v_plan;
    INSERT INTO connect_guard.upgrade_step (plan_id, step)
    SELECT v_plan, step FROM connect_guard.upgrade_plan WHERE plan_id = v_plan;
    PERFORM connect_guard.log_event(NULL, 'upgrade_prepared',
        jsonb_build_object('plan_id', v_plan, 'method', method, 'max_lag_bytes', max_lag_bytes, 'timeout', timeout,
                           'promote_with', promote_with));
    PERFORM connect_guard.wake_worker();
    RETURN v_plan;
END;
$$;

/*
 * connect_guard.require_plan returns the upgrade plan p_plan (locked with
 * p_lock), or raises the error that says it does not exist.
 */
CREATE FUNCTION connect_guard.require_plan(p_plan bigint, p_lock boolean DEFAULT false)
RETURNS connect_guard.upgrade_plan
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
BEGIN
    PERFORM connect_guard.require_not_null(p_plan, 'plan', 'Pass the plan id connect_prepare_upgrade() returned; see connect_upgrade_status.');
    IF p_lock THEN
        SELECT * INTO p FROM connect_guard.upgrade_plan WHERE plan_id = p_plan FOR UPDATE;
    ELSE
        SELECT * INTO p FROM connect_guard.upgrade_plan WHERE plan_id = p_plan;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('upgrade plan %s does not exist', p_plan),
            HINT = 'See connect_upgrade_status for the plans.';
    END IF;
    RETURN p;
END;
$$;

CREATE FUNCTION connect_guard.plan_for_update(p_plan bigint)
RETURNS connect_guard.upgrade_plan
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM connect_guard.require_plan(p_plan, true);
$$;

/*
 * connect_wait_upgrade waits until the plan reaches a step (or a later
 * status: 'ready' is reached when the plan is ready), for runbooks.  A
 * plan that fails or is aborted meanwhile is an error that says why.
 */
CREATE FUNCTION connect_wait_upgrade(plan bigint, step text, timeout interval DEFAULT '10 min')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    v_deadline timestamptz;
    v_generation bigint;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_wait_upgrade()');
    PERFORM connect_guard.require_not_null(step, 'step', 'Pass a step or status of the plan, for example ''ready''.');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''10 min''');
    v_deadline := clock_timestamp() + timeout;
    LOOP
        -- read before the plan: a step that commits after this read wakes the wait below
        v_generation := connect_guard.plan_generation();
        p := connect_guard.require_plan(plan);
        IF p.step = connect_wait_upgrade.step OR p.status = connect_wait_upgrade.step
           OR EXISTS (SELECT 1 FROM connect_guard.upgrade_step s
                       WHERE s.plan_id = p.plan_id AND s.step = connect_wait_upgrade.step) THEN
            -- read again: the condition ran on a newer snapshot than p, and may have seen the
            -- step's timeline row whose plan row p predates (both are written in one transaction)
            RETURN (connect_guard.require_plan(plan)).step;
        END IF;
        IF p.status IN ('failed', 'aborted') THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('upgrade plan %s %s at step %s', p.plan_id, p.status, p.step),
                DETAIL = coalesce(p.last_error, 'No reason was recorded.'),
                HINT = 'See connect_upgrade_status and connect_upgrade_timeline(); connect_abort_upgrade() lifts the fence and resumes.';
        END IF;
        IF clock_timestamp() > v_deadline THEN
            RAISE EXCEPTION USING
                ERRCODE = 'query_canceled',
                MESSAGE = format('upgrade plan %s did not reach %s within %s', p.plan_id, step, timeout),
                DETAIL = format('It is %s at step %s since %s.', p.status, p.step, p.step_since),
                HINT = 'The plan goes on; wait again, or end it with connect_abort_upgrade().';
        END IF;
        -- woken when a step commits here; a plan that moves by WAL replay (on a standby) is looked at every 50 ms
        PERFORM connect_guard.wait_plan_change(v_generation,
            least(50, ceil(extract(epoch FROM v_deadline - clock_timestamp()) * 1000))::integer);
    END LOOP;
END;
$$;

/*
 * connect_abort_upgrade ends a plan on the database it was prepared on:
 * lowers its fences (the follower's too, when it can be reached), resumes
 * the connections it paused, and records why.
 */
CREATE FUNCTION connect_abort_upgrade(plan bigint, reason text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    v_note text := NULL;
BEGIN
    p := connect_guard.plan_for_update(plan);
    IF p.status IN ('completed', 'aborted', 'handed_over') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s is already %s', p.plan_id, p.status),
            HINT = 'Only a running, ready or failed plan can be aborted.';
    END IF;
    IF p.follower_fence_id IS NOT NULL THEN
        BEGIN
            PERFORM connect_guard.remote_query(p.follower,
                format('SELECT connect_guard.fence_lower(%s)', p.follower_fence_id));
        EXCEPTION WHEN connection_failure THEN
            v_note := 'the follower could not be reached: its fence stays up until connect_unfence() there';
        END;
    END IF;
    IF p.fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(p.fence_id);
    END IF;
    PERFORM connect_guard.resume_plan_connections(p.paused_connections);
    PERFORM connect_guard.upgrade_goto(p.plan_id, 'aborted', 'aborted',
        jsonb_build_object('reason', reason, 'note', v_note),
        coalesce(reason, 'aborted by ' || session_user));
    RETURN coalesce(v_note, 'aborted');
END;
$$;

/*
 * connect_promote_follower promotes the follower of a ready changeover
 * through libpq, and returns once it is out of recovery (its
 * promote_standby() looks every millisecond, where pg_promote(wait =>
 * true) would look every 100) and its own worker, woken then, completes the
 * plan there.  A plan whose promotion belongs to an HA
 * manager moves to switching_over instead: the worker asks the HA manager
 * (over HTTP, which a user's transaction never does), and the HA manager
 * stops this server.
 */
CREATE FUNCTION connect_promote_follower(plan bigint)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    v_result jsonb;
BEGIN
    p := connect_guard.require_plan(plan);
    IF p.method <> 'follower' OR p.status <> 'ready' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s is not a ready follower changeover', p.plan_id),
            DETAIL = format('It is a %s plan, %s at step %s.', p.method, p.status, p.step),
            HINT = 'Wait with connect_wait_upgrade(plan, ''ready''); promote only a caught-up follower.';
    END IF;
    IF p.promote_with <> 'connect_guard' THEN
        IF p.step = 'switching_over' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('upgrade plan %s has already asked %s for the switchover', p.plan_id, p.promote_with),
                DETAIL = format('Since %s; last answer: %s.', p.step_since, coalesce(p.ha_target->>'answer', 'none yet')),
                HINT = 'Wait on the follower with connect_wait_upgrade(plan, ''completed''); see connect_upgrade_status.';
        END IF;
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'switching_over', 'ready',
            jsonb_build_object('promote_with', p.promote_with, 'leader', p.ha_target->>'leader',
                               'candidate', p.ha_target->>'candidate'));
        PERFORM connect_guard.wake_worker();
        RETURN 'switchover requested';
    END IF;
    v_result := connect_guard.remote_query(p.follower, 'CALL connect_guard.promote_standby(60000, NULL)', 65000);
    IF NOT (v_result->>'promoted')::boolean THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'the follower did not finish its promotion within 60 s',
            HINT = 'Check the follower''s log; the plan stays ready and this server stays fenced.';
    END IF;
    PERFORM connect_guard.log_event(NULL, 'upgrade_follower_promoted', jsonb_build_object('plan_id', p.plan_id));
    PERFORM connect_guard.wake_worker();       -- this server's worker sees the hand-over at once
    RETURN 'promoted';
END;
$$;

/*
 * connect_complete_upgrade finishes a 'copy' plan on the copy: the trigger
 * log was drained before the copy, so every entry in it is consumed; the
 * ticks (snapshots of the old database's transaction ids) mean nothing
 * here, so the consumed entries go to the archive and every connection
 * starts from a fresh tick.
 */
CREATE FUNCTION connect_complete_upgrade(plan bigint)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    v_tick bigint;
BEGIN
    p := connect_guard.plan_for_update(plan);
    IF p.method <> 'copy' OR p.status NOT IN ('ready') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s is not a ready copy', p.plan_id),
            DETAIL = format('It is a %s plan, %s at step %s.', p.method, p.status, p.step),
            HINT = 'Run this in the new database, after the copy of a plan that reached ready.';
    END IF;
    IF connect_guard.system_identifier() = p.system_identifier AND current_database() = p.database_name THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s was prepared in this database: complete it in the copy', p.plan_id),
            HINT = 'Connect to the database the data was copied into and call connect_complete_upgrade() there.';
    END IF;
    IF connect_guard.log_head() <> p.log_head THEN
        RAISE EXCEPTION USING
            ERRCODE = 'data_corrupted',
            MESSAGE = format('the copied trigger log ends at entry %s, not at %s as when the copy began',
                             connect_guard.log_head(), p.log_head),
            HINT = 'Copy again from the fenced database; nothing was resumed.';
    END IF;
    IF connect_guard.log_positions_differ(p.high_water_marks) IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'data_corrupted',
            MESSAGE = 'the copied Heroku Connect trigger log differs from the one the copy began with',
            DETAIL = connect_guard.log_positions_differ(p.high_water_marks) || '.',
            HINT = 'Copy again from the fenced database; nothing was resumed.';
    END IF;
    PERFORM connect_guard.upgrade_goto(p.plan_id, 'completing', 'ready');
    WITH moved AS (DELETE FROM connect_guard.trigger_log RETURNING *)
    INSERT INTO connect_guard.trigger_log_archive
    SELECT id, txid, created_at, clock_timestamp(), clock_timestamp(), NULL,
           CASE WHEN state IN ('NEW', 'PENDING') THEN 'SUCCESS' ELSE state END,
           action, table_schema, table_name, record_id, sfid, old, "values", sf_result, sf_message
      FROM moved;
    DELETE FROM connect_guard.batch WHERE finished_at IS NULL;
    DELETE FROM connect_guard.tick;
    v_tick := (connect_guard.new_tick()).tick_id;
    UPDATE connect_guard.connection SET last_tick = v_tick, fence_id = NULL;
    PERFORM connect_guard.resume_plan_connections(p.paused_connections);
    UPDATE connect_guard.upgrade_plan SET completed_on = connect_guard.system_identifier()
     WHERE plan_id = p.plan_id;
    PERFORM connect_guard.upgrade_goto(p.plan_id, 'completed', 'completed',
        jsonb_build_object('resumed', p.paused_connections, 'database', current_database()));
    RETURN 'completed';
END;
$$;

CREATE VIEW connect_upgrade_status AS
SELECT p.plan_id AS plan,
       p.method,
       p.status,
       p.step,
       p.step_since,
       CASE WHEN p.follower IS NOT NULL THEN connect_guard.conninfo_masked(p.follower) END AS follower,
       p.follower_lag_bytes,
       p.fence_lsn,
       p.log_head,
       p.last_error,
       coalesce(p.finished_at, clock_timestamp()) - p.created_at AS elapsed,
       p.created_at,
       p.created_by,
       p.promote_with,
       CASE p.promote_with
           WHEN 'patroni' THEN regexp_replace(p.ha_endpoint, '^(https?://)[^/@]*@', '\1********@')
           WHEN 'pg_auto_failover' THEN connect_guard.conninfo_masked(p.ha_endpoint, false)
       END AS ha_endpoint,
       coalesce(p.ha_target->>'candidate', p.ha_member) AS ha_member
  FROM connect_guard.upgrade_plan p;

CREATE FUNCTION connect_upgrade_timeline(plan bigint)
RETURNS TABLE (step text, started_at timestamptz, finished_at timestamptz, duration interval, detail jsonb)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.step, s.started_at, s.finished_at, s.finished_at - s.started_at, s.detail
      FROM connect_guard.upgrade_step s
     WHERE s.plan_id = plan
     ORDER BY s.started_at, s.ctid;
$$;
