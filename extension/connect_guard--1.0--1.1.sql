/* connect_guard--1.0--1.1.sql: ALTER EXTENSION connect_guard UPDATE from 1.0 to 1.1.
 *
 * Written by hand, append-only: once 1.1 is released this file never
 * changes (databases have run it); a later change ships in
 * connect_guard--1.1--1.2.sql.  A fresh install of 1.1 (the Makefile's
 * connect_guard--1.1.sql, from extension/parts) and 1.0 updated by this
 * script must give the same objects: sql/versions.sql compares every member
 * of the extension, its definition, privileges and comments, and
 * scripts/test.sh runs the pg_regress and isolation suites a second time on
 * installs updated from 1.0.
 *
 * 1.1 adds connect_preflight() (extension/parts/80_preflight.sql, copied
 * below as it is there).  It needs no new C function: it calls lag.c's and
 * remote.c's functions, which 1.0 has.  Then the changeover's waits for
 * events (issue 13, at the end), with C entry points of their own; 1.0's
 * keep their signatures and meaning.  Nothing in 1.0's tables changes.
 */

\echo Use "ALTER EXTENSION connect_guard UPDATE TO '1.1'" to load this file. \quit

/* ------------------------------------------------------------------------
 * The preflight: every blocker an upgrade plan (70_upgrade.sql) or a pause
 * would hit, found before anything changes.  connect_preflight() returns
 * one row per check; ok is false with a hint saying what to do, and NULL
 * for a check that was not made because one it depends on failed (the
 * follower's checks when it cannot be reached).  The runbooks run it first
 * and stop on a failed check the DBA has not accepted.
 *
 * It changes nothing (no row, no event, no transaction id) and makes no
 * HTTP call in the caller's transaction: the sync service's checks read
 * what the worker last saw (the connection's state, its last request and
 * what the service answered to it) and say so.  The follower is asked
 * through libpq, as the plan's own checks ask it: follower_probe (lag.c)
 * and remote_query (remote.c), each call bounded by
 * connect_guard.follower_timeout, at most four calls in all.
 *
 * The checks, in the order they are returned (README, Reference):
 *   primary, shared_preload_libraries, worker, plan, maintenance_fence,
 *   rollback_incident, sync_service:NAME, token_file:NAME, backlog:NAME,
 *   replication_slots, prepared_transactions, long_transactions, witness,
 *   follower_reachable, follower_standby, follower_lag,
 *   follower_connect_guard, follower_witness
 * A plan ('follower', 'pg_upgrade', 'copy') gets all that concern it; a
 * pause ('pause') those of one connection and its mapped tables.
 * ------------------------------------------------------------------------ */

CREATE TYPE connect_guard.preflight_result AS ("check" text, ok boolean, detail text, hint text);

/* a result row; the hint only when the check failed */
CREATE FUNCTION connect_guard.preflight_row(p_check text, p_ok boolean, p_detail text, p_hint text DEFAULT NULL)
RETURNS connect_guard.preflight_result
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ROW(p_check, p_ok, p_detail, CASE WHEN p_ok IS FALSE THEN p_hint END)::connect_guard.preflight_result;
$$;

/* how long ago, for a detail: "12 s", "5 min", "3 h", "2 days" */
CREATE FUNCTION connect_guard.preflight_age(p_since timestamptz)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN s < 120 THEN round(s) || ' s'
                WHEN s < 7200 THEN round(s / 60) || ' min'
                WHEN s < 172800 THEN round(s / 3600) || ' h'
                ELSE round(s / 86400) || ' days' END
      FROM (SELECT greatest(extract(epoch FROM clock_timestamp() - p_since), 0) AS s) a;
$$;

/*
 * primary, shared_preload_libraries, worker: the server can run the plan.
 * p_worker_not_needed says why the worker is not needed (a local
 * connection's pause), NULL when it is.
 */
CREATE FUNCTION connect_guard.preflight_server(p_worker_not_needed text)
RETURNS SETOF connect_guard.preflight_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_libraries text := current_setting('shared_preload_libraries');
    v_listed boolean := v_libraries ~ '(^|[ ,])"?connect_guard"?([ ,]|$)';
    v_loaded boolean := connect_guard.fence_available();
    v_pid integer := connect_guard.worker_pid();
BEGIN
    RETURN NEXT connect_guard.preflight_row('primary', NOT pg_is_in_recovery(),
        CASE WHEN pg_is_in_recovery() THEN 'this server is a standby (in recovery)'
             ELSE 'this server is a primary' END,
        'Run it on the primary: a standby can neither pause, fence nor hold a plan.');
    RETURN NEXT connect_guard.preflight_row('shared_preload_libraries', v_listed AND v_loaded,
        CASE WHEN v_listed AND v_loaded THEN 'connect_guard is preloaded: the write fence and the worker are available'
             WHEN v_listed THEN 'connect_guard is in shared_preload_libraries but was not loaded at start: the server was not restarted since'
             ELSE format('shared_preload_libraries is %L: without connect_guard there is no write fence and no worker', v_libraries) END,
        'Add connect_guard to shared_preload_libraries in postgresql.conf and restart the server.');
    RETURN NEXT connect_guard.preflight_row('worker', v_pid IS NOT NULL OR p_worker_not_needed IS NOT NULL,
        CASE WHEN v_pid IS NOT NULL THEN format('the worker of database %s runs (pid %s)', current_database(), v_pid)
             WHEN p_worker_not_needed IS NOT NULL THEN 'no worker runs, and none is needed: ' || p_worker_not_needed
             ELSE format('no connect_guard worker runs in database %s: it drives the plans and sends the requests to the sync services',
                         current_database()) END,
        'It needs shared_preload_libraries; it starts within 30 s of CREATE EXTENSION (SELECT connect_guard.wake_launcher() asks for it at once), and the server log says why it stopped.');
END;
$$;

/*
 * plan (every method), maintenance_fence and rollback_incident (plans):
 * nothing already holds the connections or the fence the plan needs.
 */
CREATE FUNCTION connect_guard.preflight_plans(p_for_plan boolean)
RETURNS SETOF connect_guard.preflight_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    v_detail text;
    v_hint text;
BEGIN
    -- a failed plan still holds its pauses and fences; a handed-over one means this is an old primary
    SELECT * INTO p FROM connect_guard.upgrade_plan
     WHERE status IN ('running', 'ready', 'failed', 'handed_over') ORDER BY plan_id DESC LIMIT 1;
    IF p.plan_id IS NOT NULL THEN
        v_detail := format('upgrade plan %s (%s) is %s at step %s for %s%s', p.plan_id, p.method, p.status, p.step,
                           connect_guard.preflight_age(p.step_since), coalesce(': ' || p.last_error, ''));
        v_hint := CASE p.status
            WHEN 'failed' THEN format('It still holds what it paused and fenced: SELECT connect_abort_upgrade(%s) lifts its fences and resumes the connections.', p.plan_id)
            WHEN 'handed_over' THEN 'This server is the old primary of that changeover and stays fenced: retire it, and run plans on the new primary.'
            ELSE format('One plan at a time: wait for plan %s, or end it with SELECT connect_abort_upgrade(%s).', p.plan_id, p.plan_id) END;
    END IF;
    RETURN NEXT connect_guard.preflight_row('plan', p.plan_id IS NULL,
        coalesce(v_detail, 'no upgrade plan is open'), v_hint);
    IF NOT p_for_plan THEN
        RETURN;
    END IF;

    SELECT string_agg(format('fence %s (scope %s, raised by %s %s ago: %s)', f.fence_id, f.scope, f.raised_by,
                             connect_guard.preflight_age(f.since), coalesce(f.reason, 'no reason given')), '; ' ORDER BY f.fence_id)
      INTO v_detail
      FROM connect_guard.fence_list() f WHERE f.scope IN ('mapped', 'database');
    RETURN NEXT connect_guard.preflight_row('maintenance_fence', v_detail IS NULL,
        coalesce('a maintenance fence is up: ' || v_detail, 'no maintenance fence is up'),
        'The plan raises its own database-wide fence and cannot while another is up: lower it with SELECT connect_unfence() once its maintenance is over.');

    SELECT string_agg(format('incident %s (%s, %s ago) waits for %s reload(s)%s', i.incident_id, i.source,
                             connect_guard.preflight_age(i.detected_at), i.reloads_pending,
                             CASE WHEN i.fence_id IS NOT NULL THEN ', its tables fenced' ELSE '' END), '; ' ORDER BY i.incident_id)
      INTO v_detail
      FROM @extschema@.connect_rollback_incidents i WHERE i.resolved_at IS NULL;
    RETURN NEXT connect_guard.preflight_row('rollback_incident', v_detail IS NULL,
        coalesce('a rollback recovery is under way: ' || v_detail, 'no rollback incident is open'),
        'Finish the rollback recovery first (runbooks/rollback_recovery.sql): the sync service must have reloaded the tables before the data moves.');
END;
$$;

/*
 * sync_service:NAME, token_file:NAME and (plans) backlog:NAME for every
 * connection, or for p_connection_id only.  No HTTP: what the worker last
 * saw of the sync service.
 */
CREATE FUNCTION connect_guard.preflight_connections(p_method text, p_connection_id integer)
RETURNS SETOF connect_guard.preflight_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- as the alert ConnectGuardBacklogStale (monitoring/alerts.yml): a consumer this far behind has stopped
    c_stale CONSTANT interval := '15 min';
    c connect_guard.connection;
    r connect_guard.request;
    b connect_guard.batch;
    h record;
    v_ok boolean;
    v_seen text;
    v_hint text;
    v_file text;
    v_problem text;
BEGIN
    FOR c IN SELECT * FROM connect_guard.connection
              WHERE p_connection_id IS NULL OR connection_id = p_connection_id ORDER BY name LOOP
        SELECT * INTO r FROM connect_guard.request q WHERE q.connection_id = c.connection_id
         ORDER BY q.request_id DESC LIMIT 1;
        v_ok := c.state IN ('IDLE', 'POLLING_DB_CHANGES');
        v_hint := CASE
            WHEN c.state = 'RESUMING' THEN format('Wait until it runs again: SELECT connect_wait_state(%L, ''IDLE'').', c.name)
            WHEN NOT v_ok AND p_method = 'pause' THEN format('It is paused already: leave it so, or resume it first (SELECT connect_resume(%L)).', c.name)
            WHEN NOT v_ok THEN format('The plan pauses every connection and resumes them all at its end, this one too: resume it first (SELECT connect_resume(%L)), or leave the plan until it runs again.', c.name)
            END;
        IF c.adapter = 'local' THEN
            v_seen := 'local adapter: its consumer reads the state here';
        ELSE
            v_seen := 'as the worker last saw it (no HTTP call is made here): ' || CASE
                WHEN r.request_id IS NULL THEN 'no request was ever sent to it, so whether it is reachable shows only with the first'
                WHEN r.status = 'succeeded' THEN format('its last request, %s %s, succeeded %s ago (HTTP %s%s)', r.action, r.request_id,
                    connect_guard.preflight_age(r.completed_at), coalesce(r.last_http_status::text, '-'),
                    coalesce(', reported state ' || r.remote_state, ''))
                WHEN r.status = 'failed' THEN format('its last request, %s %s, failed %s ago after %s attempt(s): %s', r.action, r.request_id,
                    connect_guard.preflight_age(r.completed_at), r.attempts, coalesce(r.last_error, 'no error recorded'))
                ELSE format('its request %s (%s) is pending after %s attempt(s)%s', r.request_id, r.action, r.attempts,
                    coalesce('; last error: ' || r.last_error, '')) END;
            IF v_ok AND (r.status = 'failed' OR (r.status = 'pending' AND r.last_error IS NOT NULL)) THEN
                v_ok := false;
                v_hint := format('Fix what the error says (connect_requests has every attempt), then ask again: %sor, if the service is known to be back, accept this check.',
                                 CASE WHEN c.adapter = 'heroku' THEN format('SELECT connect_refresh(%L), and run the preflight once it succeeded; ', c.name) ELSE '' END);
            ELSIF v_ok AND r.status = 'succeeded' AND r.action = 'refresh'
                  AND r.remote_state NOT IN ('IDLE', 'POLLING_DB_CHANGES') THEN
                -- Connect pauses only a connection that runs
                v_ok := false;
                v_hint := 'Connect reports the connection in another state than IDLE: see its dashboard (it may need authentication or be paused there), then SELECT connect_refresh() and run the preflight again.';
            END IF;
        END IF;
        RETURN NEXT connect_guard.preflight_row('sync_service:' || c.name, v_ok,
            format('%s for %s; %s', c.state, connect_guard.preflight_age(c.state_since), v_seen), v_hint);
    END LOOP;

    -- the token (heroku) or webhook key, when the worker reads it from a file
    FOR c IN SELECT * FROM connect_guard.connection
              WHERE adapter <> 'local' AND (p_connection_id IS NULL OR connection_id = p_connection_id) ORDER BY name LOOP
        v_file := c.options ->> CASE c.adapter WHEN 'heroku' THEN 'token_file' ELSE 'secret_file' END;
        BEGIN
            v_problem := CASE WHEN v_file IS NOT NULL THEN connect_guard.secret_file_problem(v_file) END;
        EXCEPTION WHEN insufficient_privilege THEN
            RETURN NEXT connect_guard.preflight_row('token_file:' || c.name, NULL,
                format('not checked: looking at %s needs the rights of pg_read_server_files', v_file));
            CONTINUE;
        END;
        RETURN NEXT connect_guard.preflight_row('token_file:' || c.name, v_problem IS NULL,
            CASE WHEN v_file IS NULL THEN 'the secret is stored in the database (connect_guard.connection_secret)'
                 WHEN v_problem IS NULL THEN format('the server reads %s', v_file)
                 ELSE format('the worker cannot use %s: %s', v_file, v_problem) END,
            'Give the server''s operating-system user the file (owned by it, chmod 600) with the secret on one line: the worker reads it before every request, the plan''s pause included.');
    END LOOP;

    IF p_method = 'pause' THEN
        RETURN;
    END IF;
    FOR h IN SELECT w.connection, w.backlog, w.oldest_pending_at, w.open_batch
               FROM @extschema@.connect_high_water_marks w
               JOIN connect_guard.connection cn ON cn.name = w.connection
              WHERE p_connection_id IS NULL OR cn.connection_id = p_connection_id ORDER BY w.connection LOOP
        SELECT * INTO b FROM connect_guard.batch WHERE batch_id = h.open_batch;
        v_ok := coalesce(h.oldest_pending_at > clock_timestamp() - c_stale, true)
                AND coalesce(b.taken_at > clock_timestamp() - c_stale, true);
        RETURN NEXT connect_guard.preflight_row('backlog:' || h.connection, v_ok,
            format('%s pending entr%s%s%s%s', h.backlog, CASE WHEN h.backlog = 1 THEN 'y' ELSE 'ies' END,
                   CASE WHEN h.oldest_pending_at IS NOT NULL
                        THEN format(', the oldest written %s ago', connect_guard.preflight_age(h.oldest_pending_at)) ELSE '' END,
                   CASE WHEN b.batch_id IS NOT NULL
                        THEN format('; batch %s, taken by %s, open for %s', b.batch_id, b.taken_by, connect_guard.preflight_age(b.taken_at)) ELSE '' END,
                   CASE WHEN p_method = 'copy' THEN '; the copy plan waits until its consumer has consumed them all' ELSE '' END),
            format('Its consumer does not keep up or has stopped (an entry or a batch waits for more than %s min): the plan''s pause waits for the open batch%s. Check the sync service first.',
                   extract(epoch FROM c_stale)::integer / 60, CASE WHEN p_method = 'copy' THEN ' and the drain for the whole backlog' ELSE '' END));
    END LOOP;
END;
$$;

/*
 * replication_slots (plans), prepared_transactions and long_transactions:
 * what would hold WAL, be lost, or make the fence wait.  p_relids are the
 * tables the fence will cover (the plans: every table of the database; a
 * pause: its connection's mapped tables).
 */
CREATE FUNCTION connect_guard.preflight_transactions(p_method text, p_relids oid[])
RETURNS SETOF connect_guard.preflight_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- a writer is long once its transaction has run this long, or sat idle this long
    c_long_open CONSTANT interval := '10 s';
    c_long_idle CONSTANT interval := '1 s';
    v_detail text;
BEGIN
    IF p_method <> 'pause' THEN
        SELECT string_agg(format('%s (%s%s, %s%s)', s.slot_name, s.slot_type, coalesce(' of database ' || s.database, ''),
                                 CASE WHEN s.active THEN 'active' ELSE 'inactive' END,
                                 CASE WHEN s.restart_lsn IS NOT NULL
                                      THEN ', holds ' || pg_size_pretty(pg_wal_lsn_diff(w.lsn, s.restart_lsn)) || ' of WAL' ELSE '' END),
                          '; ' ORDER BY s.slot_name)
          INTO v_detail
          FROM pg_replication_slots s,
               LATERAL (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                    ELSE pg_current_wal_lsn() END AS lsn) w
         -- an inactive slot keeps WAL; a logical one does not survive a promotion, pg_upgrade (before 17) or a copy
         WHERE (NOT s.active AND s.restart_lsn IS NOT NULL) OR s.slot_type = 'logical';
        RETURN NEXT connect_guard.preflight_row('replication_slots', v_detail IS NULL,
            coalesce('slots that would hold WAL during the window or be lost: ' || v_detail,
                     'no inactive or logical replication slot'),
            'Drop slots nobody uses (SELECT pg_drop_replication_slot(name)): an inactive slot keeps the WAL growing while the writes wait. A logical slot does not come along to the new primary: let its consumer catch up, re-create the slot there afterwards, and accept this check.');
    END IF;

    -- pg_upgrade refuses a cluster with any; elsewhere they hold locks (and pg_dump does not copy them)
    SELECT string_agg(format('%s (database %s, owner %s, prepared %s ago)', x.gid, x.database, x.owner,
                             connect_guard.preflight_age(x.prepared)), '; ' ORDER BY x.prepared)
      INTO v_detail
      FROM pg_prepared_xacts x
     WHERE p_method = 'pg_upgrade' OR x.database = current_database();
    RETURN NEXT connect_guard.preflight_row('prepared_transactions', v_detail IS NULL,
        coalesce('prepared transactions: ' || v_detail, 'no prepared transaction'),
        'Finish each with COMMIT PREPARED ''gid'' or ROLLBACK PREPARED ''gid'' (in its database): a prepared transaction keeps its locks, so the fence would wait for it until its timeout, and pg_upgrade refuses a cluster that has one.');

    SELECT string_agg(format('pid %s (%s, %s for %s, transaction open for %s) writes %s', a.pid, a.usename, a.state,
                             connect_guard.preflight_age(a.state_change), connect_guard.preflight_age(a.xact_start),
                             t.tables), '; ' ORDER BY a.xact_start)
      INTO v_detail
      FROM (SELECT l.pid, string_agg(DISTINCT l.relation::regclass::text, ', ') AS tables
              FROM pg_locks l
             WHERE l.locktype = 'relation' AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.relation = ANY (p_relids)
               AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
               AND l.pid <> pg_backend_pid()
             GROUP BY l.pid) t
      JOIN pg_stat_activity a ON a.pid = t.pid
     WHERE a.xact_start < clock_timestamp() - c_long_open
        OR (a.state LIKE 'idle in transaction%' AND a.state_change < clock_timestamp() - c_long_idle);
    RETURN NEXT connect_guard.preflight_row('long_transactions', v_detail IS NULL,
        coalesce('transactions holding write locks on tables the fence covers: ' || v_detail,
                 format('no transaction has held a write lock on the tables the fence covers for %s s (or sat idle holding one for %s s)',
                        extract(epoch FROM c_long_open)::integer, extract(epoch FROM c_long_idle)::integer)),
        format('The fence waits for every transaction that wrote to its tables, and fails at its timeout: let them commit or roll back, or end them (SELECT pg_terminate_backend(pid))%s.',
               CASE WHEN p_method = 'pause' THEN ', or pause with cancel_writers => true' ELSE '' END));
END;
$$;

/*
 * witness (plans): rollback detection keeps working across the plan; the
 * directory is outside the data directory and holds this database's
 * witness.  Whether the follower shares it is preflight_follower's.
 */
CREATE FUNCTION connect_guard.preflight_witness(p_method text)
RETURNS SETOF connect_guard.preflight_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_path text;
    v_error text;
    w record;
    v_setting text := current_setting('connect_guard.witness_directory', true);
    v_note text := '';
BEGIN
    BEGIN
        v_path := connect_guard.witness_path(NULL);
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT;
        RETURN NEXT connect_guard.preflight_row('witness', false, v_error,
            'Set connect_guard.witness_directory to a directory outside the data directory and reload: a restore rewinds whatever is inside it.');
        RETURN;
    END;
    IF v_path IS NULL THEN
        RETURN NEXT connect_guard.preflight_row('witness', false,
            'rollback detection by witness is off (connect_guard.witness_directory is empty): a restore, or a follower promoted before it caught up, would go unnoticed',
            'Set connect_guard.witness_directory to storage outside the data directory that followers, restores and upgrade targets share, and reload; or accept this check.');
        RETURN;
    END IF;
    SELECT * INTO w FROM connect_guard.witness_read(v_path);
    IF p_method = 'pg_upgrade' THEN
        v_note := '; the upgraded cluster finds it only if its connect_guard.witness_directory names this directory'
                  || CASE WHEN v_setting !~ '^/' THEN format(' (%L is relative to the data directory: give both clusters the absolute path)', v_setting) ELSE '' END;
    ELSIF p_method = 'copy' THEN
        v_note := '; the copy finds it only if its server reads the same directory';
    END IF;
    RETURN NEXT connect_guard.preflight_row('witness', w.status = 'ok',
        CASE w.status WHEN 'ok' THEN format('%s, written %s ago', v_path, connect_guard.preflight_age((w.content ->> 'written_at')::timestamptz)) || v_note
                      WHEN 'missing' THEN format('no witness at %s yet', v_path)
                      ELSE format('the witness at %s is %s: %s', v_path, w.status, w.detail) END,
        CASE w.status WHEN 'missing' THEN 'The worker writes it on its first cycle: check that it runs and can write the directory (connect_check_rollback() says why).'
                      ELSE 'The worker replaces it on its next cycle; connect_check_rollback() and the server log say why it is not valid.' END);
END;
$$;

/*
 * follower_reachable, follower_standby, follower_lag,
 * follower_connect_guard, follower_witness: the follower of a changeover,
 * asked as the plan's checking step asks it (follower_probe), then through
 * its own connect_guard functions (remote_query).  Each libpq call waits at
 * most connect_guard.follower_timeout.
 */
CREATE FUNCTION connect_guard.preflight_follower(p_conninfo text, p_max_lag_bytes bigint)
RETURNS SETOF connect_guard.preflight_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_masked text := connect_guard.conninfo_masked(p_conninfo, false);
    v_probe jsonb := connect_guard.follower_probe(p_conninfo);
    v_problem text;
    v_hint text;
    v_remote jsonb;
    v_ours jsonb;
    v_theirs jsonb;
    v_ours_path text;
    v_ok boolean;
    v_detail text;
    v_lag numeric;
BEGIN
    IF NOT (v_probe ->> 'answered')::boolean THEN
        RETURN NEXT connect_guard.preflight_row('follower_reachable', false,
            format('%s: %s', v_masked, v_probe ->> 'error'),
            'Check the conninfo, that the follower runs and that it accepts this server''s connections (pg_hba.conf); each try waits at most connect_guard.follower_timeout.');
        RETURN NEXT connect_guard.preflight_row('follower_standby', NULL, 'not checked: the follower did not answer');
        RETURN NEXT connect_guard.preflight_row('follower_lag', NULL, 'not checked: the follower did not answer');
        RETURN NEXT connect_guard.preflight_row('follower_connect_guard', NULL, 'not checked: the follower did not answer');
        RETURN NEXT connect_guard.preflight_row('follower_witness', NULL, 'not checked: the follower did not answer');
        RETURN;
    END IF;
    RETURN NEXT connect_guard.preflight_row('follower_reachable', true, format('%s answered', v_masked));

    -- a standby of this primary: the lag check's verdict (lag.c), and the database the plan fences there
    IF NOT (v_probe ->> 'system_identifier_matches')::boolean THEN
        BEGIN
            v_remote := connect_guard.remote_query(p_conninfo,
                'SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system())::text AS system_identifier');
        EXCEPTION WHEN connection_failure THEN
            v_remote := NULL;
        END;
        v_problem := format('its system identifier is %s, this primary''s %s: it was made from another cluster',
                            coalesce(v_remote ->> 'system_identifier', 'another'), connect_guard.system_identifier());
        v_hint := 'Point the conninfo at a streaming standby of this primary (pg_basebackup -R from it).';
    ELSIF NOT (v_probe ->> 'in_recovery')::boolean THEN
        v_problem := 'it is not in recovery: a primary, or a standby promoted already';
        v_hint := 'Point the conninfo at a streaming standby of this primary (pg_basebackup -R from it), not at a primary.';
    ELSIF v_probe ->> 'database' IS DISTINCT FROM current_database() THEN
        v_problem := format('the conninfo reaches database %s, not %s', v_probe ->> 'database', current_database());
        v_hint := format('Add dbname=%s to the conninfo: the plan fences the follower and completes in that database.', current_database());
    ELSIF v_probe ->> 'error' IS NOT NULL THEN
        v_problem := v_probe ->> 'error';
        v_hint := 'Wait until it replays this primary''s WAL, or rebuild it from a new base backup of this primary.';
    END IF;
    RETURN NEXT connect_guard.preflight_row('follower_standby', v_problem IS NULL,
        coalesce(v_problem, format('in recovery on timeline %s, system identifier %s (this primary''s), database %s',
                                   v_probe ->> 'timeline', connect_guard.system_identifier(), v_probe ->> 'database')),
        v_hint);
    IF v_problem IS NOT NULL THEN
        RETURN NEXT connect_guard.preflight_row('follower_lag', NULL, 'not checked: the follower is not a standby of this primary');
        RETURN NEXT connect_guard.preflight_row('follower_connect_guard', NULL, 'not checked: the follower is not a standby of this primary');
        RETURN NEXT connect_guard.preflight_row('follower_witness', NULL, 'not checked: the follower is not a standby of this primary');
        RETURN;
    END IF;

    v_lag := (v_probe ->> 'lag_bytes')::numeric;
    RETURN NEXT connect_guard.preflight_row('follower_lag', v_lag <= p_max_lag_bytes,
        format('%s bytes behind (max_lag_bytes %s), replayed up to %s', v_lag, p_max_lag_bytes, v_probe ->> 'replay_lsn'),
        'Let it catch up (connect_follower_lag shows how far it is), or allow more with max_lag_bytes: the plan''s checking step waits until it is within the limit.');

    -- fenced while a standby, and completed by its own worker once promoted: both need the library there
    BEGIN
        v_remote := connect_guard.remote_query(p_conninfo,
            'SELECT connect_guard.fence_available()::text AS loaded, pg_catalog.current_setting(''shared_preload_libraries'') AS libraries');
        v_ok := v_remote ->> 'loaded' = 'true';
        v_detail := CASE WHEN v_ok THEN 'connect_guard is preloaded there: it can be fenced as a standby, and its worker completes the plan once it is promoted'
                         ELSE format('connect_guard is not preloaded there (shared_preload_libraries = %L): it cannot be fenced, and nothing would complete the plan after its promotion',
                                     v_remote ->> 'libraries') END;
    EXCEPTION WHEN connection_failure THEN
        GET STACKED DIAGNOSTICS v_detail = MESSAGE_TEXT;
        v_ok := false;
    END;
    RETURN NEXT connect_guard.preflight_row('follower_connect_guard', v_ok, v_detail,
        'Install connect_guard on the follower, add it to its shared_preload_libraries and restart it; the conninfo''s role must be allowed to call connect_guard''s functions (a superuser, as for the plan).');

    -- after its promotion the follower compares itself with the witness it finds: it must be this one's
    BEGIN
        v_ours_path := connect_guard.witness_path(NULL);
    EXCEPTION WHEN invalid_parameter_value THEN
        v_ours_path := NULL;            -- inside the data directory: the witness check says so
    END;
    v_ours := (connect_guard.witness_read(v_ours_path)).content;
    IF v_ours IS NULL THEN
        RETURN NEXT connect_guard.preflight_row('follower_witness', NULL, 'not checked: this server has no valid witness (see the witness check)');
        RETURN;
    END IF;
    BEGIN
        v_remote := connect_guard.remote_query(p_conninfo,
            'SELECT w.path, r.status, r.content::text AS content, r.detail'
            || ' FROM (SELECT connect_guard.witness_path(NULL) AS path) w'
            || ' LEFT JOIN LATERAL connect_guard.witness_read(w.path) r ON true');
    EXCEPTION WHEN connection_failure THEN
        GET STACKED DIAGNOSTICS v_detail = MESSAGE_TEXT;
        v_remote := NULL;
    END;
    v_theirs := (v_remote ->> 'content')::jsonb;
    v_ok := coalesce(v_remote ->> 'status' = 'ok'
                     -- the worker may have rewritten it between the two reads: read ours again
                     AND (v_theirs = v_ours OR v_theirs = (connect_guard.witness_read(v_ours_path)).content), false);
    RETURN NEXT connect_guard.preflight_row('follower_witness', v_ok,
        CASE WHEN v_remote IS NULL THEN v_detail
             WHEN v_ok THEN format('the follower reads this server''s witness (%s)', v_remote ->> 'path')
             WHEN v_remote ->> 'path' IS NULL THEN 'witnessing is off on the follower (its connect_guard.witness_directory is empty)'
             WHEN v_remote ->> 'status' <> 'ok'
             THEN format('the follower finds no witness at %s (%s): it does not read this server''s directory (%s)',
                         v_remote ->> 'path', v_remote ->> 'status', v_ours_path)
             ELSE format('the follower reads another file at %s (written at %s; this server''s at %s)',
                         v_remote ->> 'path', v_theirs ->> 'written_at', v_ours ->> 'written_at') END,
        'Point connect_guard.witness_directory of both servers at one directory they share, outside their data directories, and reload; or accept this check: the promoted follower then starts a witness of its own, and until then only the sync service''s mark can reveal a rollback.');
END;
$$;

/*
 * connect_preflight: the checks of a plan ('follower', 'pg_upgrade',
 * 'copy') or of a pause ('pause' of one connection), without changing
 * anything.  follower: a registered follower's name or a conninfo
 * (default: the only registered follower).
 */
CREATE FUNCTION connect_preflight(method text DEFAULT 'follower', follower text DEFAULT NULL,
                                  max_lag_bytes bigint DEFAULT 16777216, connection text DEFAULT NULL)
RETURNS TABLE ("check" text, ok boolean, detail text, hint text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_conninfo text;
    c connect_guard.connection;
    v_plan boolean := connect_preflight.method IN ('follower', 'pg_upgrade', 'copy');
BEGIN
    IF connect_preflight.method IS NULL OR connect_preflight.method NOT IN ('follower', 'pg_upgrade', 'copy', 'pause') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown preflight method %s', coalesce(quote_literal(connect_preflight.method), 'NULL')),
            HINT = 'Use a plan''s method, ''follower'', ''pg_upgrade'' or ''copy'', or ''pause'' for the pause of one connection.';
    END IF;
    IF connect_preflight.follower IS NOT NULL AND connect_preflight.method <> 'follower' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('method %s takes no follower', connect_preflight.method),
            HINT = 'Pass follower => ... with method => ''follower'' only.';
    END IF;
    IF connect_preflight.connection IS NOT NULL AND connect_preflight.method <> 'pause' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('method %s takes no connection: a plan checks every connection', connect_preflight.method),
            HINT = 'Pass connection => ... with method => ''pause'' only.';
    END IF;
    IF connect_preflight.max_lag_bytes IS NULL OR connect_preflight.max_lag_bytes < 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'max_lag_bytes must be 0 or more',
            HINT = 'Pass the max_lag_bytes the plan will get, e.g. max_lag_bytes => 16 * 1024 * 1024.';
    END IF;

    IF connect_preflight.method = 'follower' THEN
        IF connect_preflight.follower IS NULL THEN
            SELECT min(f.conninfo) INTO v_conninfo FROM connect_guard.follower f
            HAVING count(*) = 1;
            IF v_conninfo IS NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'invalid_parameter_value',
                    MESSAGE = 'a follower changeover needs its follower',
                    DETAIL = format('%s followers are registered.', (SELECT count(*) FROM connect_guard.follower)),
                    HINT = 'Pass follower => the name of a registered follower, or its conninfo (''host=... port=... dbname=... user=...'').';
            END IF;
        ELSE
            SELECT f.conninfo INTO v_conninfo FROM connect_guard.follower f WHERE f.name = connect_preflight.follower;
            IF v_conninfo IS NULL AND connect_preflight.follower ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'undefined_object',
                    MESSAGE = format('follower "%s" is not registered', connect_preflight.follower),
                    HINT = 'Pass a registered name (SELECT name FROM connect_follower_lag WHERE source = ''libpq'') or a conninfo.';
            END IF;
            -- a conninfo: libpq must parse it (the error says why not)
            v_conninfo := coalesce(v_conninfo, connect_preflight.follower);
            PERFORM connect_guard.conninfo_masked(v_conninfo);
        END IF;
    END IF;

    IF connect_preflight.method = 'pause' THEN
        IF connect_preflight.connection IS NULL THEN
            SELECT * INTO c FROM connect_guard.connection
             WHERE (SELECT count(*) FROM connect_guard.connection) = 1;
            IF c.connection_id IS NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'invalid_parameter_value',
                    MESSAGE = 'a pause''s preflight needs its connection',
                    DETAIL = format('This database has %s connections.', (SELECT count(*) FROM connect_guard.connection)),
                    HINT = 'Pass connection => the name of the connection to pause.';
            END IF;
        ELSE
            c := connect_guard.require_connection(connect_preflight.connection);
        END IF;
    END IF;

    RETURN QUERY SELECT * FROM connect_guard.preflight_server(
        CASE WHEN c.adapter = 'local' THEN format('connection %s is local (its consumer reads the state here)', c.name) END);
    RETURN QUERY SELECT * FROM connect_guard.preflight_plans(v_plan);
    RETURN QUERY SELECT * FROM connect_guard.preflight_connections(connect_preflight.method, c.connection_id);
    RETURN QUERY SELECT * FROM connect_guard.preflight_transactions(connect_preflight.method,
        CASE WHEN v_plan THEN connect_guard.database_tables() ELSE (connect_guard.fence_targets(c.connection_id)).relids END);
    IF v_plan THEN
        RETURN QUERY SELECT * FROM connect_guard.preflight_witness(connect_preflight.method);
    END IF;
    IF connect_preflight.method = 'follower' THEN
        RETURN QUERY SELECT * FROM connect_guard.preflight_follower(v_conninfo, connect_preflight.max_lag_bytes);
    END IF;
END;
$$;

/*
 * Privileges, as a fresh install's 99_privileges.sql gives them: nothing for
 * PUBLIC.  Its loop over the extension's functions runs only in the install
 * script, not on an update, so each new function is named here.
 */
REVOKE ALL ON FUNCTION connect_guard.preflight_row(text, boolean, text, text),
                       connect_guard.preflight_age(timestamptz),
                       connect_guard.preflight_server(text),
                       connect_guard.preflight_plans(boolean),
                       connect_guard.preflight_connections(text, integer),
                       connect_guard.preflight_transactions(text, oid[]),
                       connect_guard.preflight_witness(text),
                       connect_guard.preflight_follower(text, bigint),
                       connect_preflight(text, text, bigint, text)
    FROM PUBLIC;

/* ------------------------------------------------------------------------
 * A follower changeover's write-blocked window waits for events, not for
 * polls (extension/parts/70_upgrade.sql's header, README "Upgrade plans"):
 * connect_wait_upgrade() sleeps until a plan step commits
 * (08_worker.sql's plan_changed, plan_generation, wait_plan_change); the
 * follower waits for its own replay and its own promotion
 * (follower_probe_after_replay, the procedures wait_for_replay and
 * promote_standby: standby.c); the fencing step raises the follower's fence
 * in its own transaction (plan_fence_follower).  New C entry points only:
 * 1.0's keep their signatures and meaning.  The functions whose bodies
 * changed are replaced as they are in the parts.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_guard.plan_changed()
RETURNS void LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_plan_changed';

CREATE FUNCTION connect_guard.plan_generation()
RETURNS bigint LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_plan_generation';

CREATE FUNCTION connect_guard.wait_plan_change(seen bigint, timeout_ms integer)
RETURNS bigint LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_wait_plan_change';

CREATE FUNCTION connect_guard.follower_probe_after_replay(p_conninfo text, p_replayed pg_lsn)
RETURNS jsonb LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_follower_probe_after_replay';

CREATE PROCEDURE connect_guard.wait_for_replay(target pg_lsn, timeout_ms integer)
LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_wait_for_replay';

CREATE PROCEDURE connect_guard.promote_standby(timeout_ms integer, OUT promoted boolean)
LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_promote_standby';

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

CREATE OR REPLACE FUNCTION connect_guard.upgrade_goto(p_plan integer, p_step text, p_status text DEFAULT 'running',
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

CREATE OR REPLACE FUNCTION connect_guard.upgrade_advance()
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

CREATE OR REPLACE FUNCTION connect_wait_upgrade(plan bigint, step text, timeout interval DEFAULT '10 min')
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

CREATE OR REPLACE FUNCTION connect_promote_follower(plan bigint)
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

REVOKE ALL ON FUNCTION connect_guard.plan_changed(),
                       connect_guard.plan_generation(),
                       connect_guard.wait_plan_change(bigint, integer),
                       connect_guard.follower_probe_after_replay(text, pg_lsn),
                       connect_guard.plan_fence_follower(connect_guard.upgrade_plan, boolean)
    FROM PUBLIC;
REVOKE ALL ON PROCEDURE connect_guard.wait_for_replay(pg_lsn, integer),
                        connect_guard.promote_standby(integer)
    FROM PUBLIC;

/* ------------------------------------------------------------------------
 * The preflight's mappings:NAME check (plans: a mapping in SCHEMA_CHANGED
 * or RELOAD_TABLE, or with an open schema change, fails it), and
 * connect_preflight() refusing a NULL method or max_lag_bytes with 22004
 * (null_value_not_allowed), as every function does, instead of 22023.
 * As in extension/parts/80_preflight.sql.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_guard.preflight_mappings()
RETURNS SETOF connect_guard.preflight_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_mappings bigint;
    v_detail text;
    v_save text;
    v_reload boolean;
BEGIN
    FOR c IN SELECT * FROM connect_guard.connection ORDER BY name LOOP
        SELECT count(*),
               string_agg(format('%I.%I is %s for %s%s%s', m.table_schema, m.table_name, m.state,
                                 connect_guard.preflight_age(m.state_since), coalesce(': ' || s.changes, ''),
                                 CASE WHEN s.needs_reload
                                      THEN ' (writes may have reached it without a log entry: it needs a reload)' ELSE '' END),
                          '; ' ORDER BY m.table_schema, m.table_name)
                   FILTER (WHERE m.state NOT IN ('INITIAL', 'DATA_SYNCED') OR s.changes IS NOT NULL),
               string_agg(format('SELECT connect_save_mapping(%L, %L);', c.name, format('%I.%I', m.table_schema, m.table_name)),
                          ' ' ORDER BY m.table_schema, m.table_name)
                   FILTER (WHERE m.state = 'SCHEMA_CHANGED' OR s.changes IS NOT NULL),
               coalesce(bool_or(m.state = 'RELOAD_TABLE' OR s.needs_reload), false)
          INTO v_mappings, v_detail, v_save, v_reload
          FROM connect_guard.mapping m
          LEFT JOIN LATERAL (
              SELECT string_agg(connect_guard.schema_change_text(x.kind, x.object, x.expected, x.actual), ', '
                                ORDER BY x.schema_change_id) AS changes,
                     bool_or(x.needs_reload) AS needs_reload
                FROM connect_guard.schema_change x
               WHERE x.mapping_id = m.mapping_id AND x.resolved_at IS NULL) s ON true
         WHERE m.connection_id = c.connection_id;
        RETURN NEXT connect_guard.preflight_row('mappings:' || c.name, v_detail IS NULL,
            coalesce(v_detail, CASE WHEN v_mappings = 0 THEN 'no mapped table'
                                    ELSE format('%s mapped table%s, INITIAL or DATA_SYNCED, no open schema change',
                                                v_mappings, CASE WHEN v_mappings > 1 THEN 's' ELSE '' END) END),
            concat_ws(' ',
                'Settle the mappings before the data moves.',
                CASE WHEN v_save IS NOT NULL THEN 'Mend each changed table, or accept it as it is (runbooks/field_change.sql shows what differs and saves; saving asks for the reload a change needs): ' || v_save END,
                CASE WHEN v_reload THEN 'Then let the sync service reload the tables (a local consumer acknowledges with connect_mapping_reloaded(); connect_requests shows the others).' END,
                'Or accept this check: the plan carries the tables over as they are.'));
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION connect_preflight(method text DEFAULT 'follower', follower text DEFAULT NULL,
                                  max_lag_bytes bigint DEFAULT 16777216, connection text DEFAULT NULL)
RETURNS TABLE ("check" text, ok boolean, detail text, hint text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_conninfo text;
    c connect_guard.connection;
    v_plan boolean := connect_preflight.method IN ('follower', 'pg_upgrade', 'copy');
BEGIN
    -- NULL where a value is needed: 22004, before any other check (follower and connection: NULL is the default)
    PERFORM connect_guard.require_not_null(connect_preflight.method, 'method',
        'Pass a plan''s method, ''follower'', ''pg_upgrade'' or ''copy'', or ''pause'' for the pause of one connection.');
    PERFORM connect_guard.require_not_null(connect_preflight.max_lag_bytes, 'max_lag_bytes',
        'Pass the max_lag_bytes the plan will get, e.g. max_lag_bytes => 16 * 1024 * 1024 (the default).');
    IF connect_preflight.method NOT IN ('follower', 'pg_upgrade', 'copy', 'pause') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown preflight method %L', connect_preflight.method),
            HINT = 'Use a plan''s method, ''follower'', ''pg_upgrade'' or ''copy'', or ''pause'' for the pause of one connection.';
    END IF;
    IF connect_preflight.follower IS NOT NULL AND connect_preflight.method <> 'follower' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('method %s takes no follower', connect_preflight.method),
            HINT = 'Pass follower => ... with method => ''follower'' only.';
    END IF;
    IF connect_preflight.connection IS NOT NULL AND connect_preflight.method <> 'pause' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('method %s takes no connection: a plan checks every connection', connect_preflight.method),
            HINT = 'Pass connection => ... with method => ''pause'' only.';
    END IF;
    IF connect_preflight.max_lag_bytes < 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'max_lag_bytes must be 0 or more',
            HINT = 'Pass the max_lag_bytes the plan will get, e.g. max_lag_bytes => 16 * 1024 * 1024.';
    END IF;

    IF connect_preflight.method = 'follower' THEN
        IF connect_preflight.follower IS NULL THEN
            SELECT min(f.conninfo) INTO v_conninfo FROM connect_guard.follower f
            HAVING count(*) = 1;
            IF v_conninfo IS NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'invalid_parameter_value',
                    MESSAGE = 'a follower changeover needs its follower',
                    DETAIL = format('%s followers are registered.', (SELECT count(*) FROM connect_guard.follower)),
                    HINT = 'Pass follower => the name of a registered follower, or its conninfo (''host=... port=... dbname=... user=...'').';
            END IF;
        ELSE
            SELECT f.conninfo INTO v_conninfo FROM connect_guard.follower f WHERE f.name = connect_preflight.follower;
            IF v_conninfo IS NULL AND connect_preflight.follower ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'undefined_object',
                    MESSAGE = format('follower "%s" is not registered', connect_preflight.follower),
                    HINT = 'Pass a registered name (SELECT name FROM connect_follower_lag WHERE source = ''libpq'') or a conninfo.';
            END IF;
            -- a conninfo: libpq must parse it (the error says why not)
            v_conninfo := coalesce(v_conninfo, connect_preflight.follower);
            PERFORM connect_guard.conninfo_masked(v_conninfo);
        END IF;
    END IF;

    IF connect_preflight.method = 'pause' THEN
        IF connect_preflight.connection IS NULL THEN
            SELECT * INTO c FROM connect_guard.connection
             WHERE (SELECT count(*) FROM connect_guard.connection) = 1;
            IF c.connection_id IS NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'invalid_parameter_value',
                    MESSAGE = 'a pause''s preflight needs its connection',
                    DETAIL = format('This database has %s connections.', (SELECT count(*) FROM connect_guard.connection)),
                    HINT = 'Pass connection => the name of the connection to pause.';
            END IF;
        ELSE
            c := connect_guard.require_connection(connect_preflight.connection);
        END IF;
    END IF;

    RETURN QUERY SELECT * FROM connect_guard.preflight_server(
        CASE WHEN c.adapter = 'local' THEN format('connection %s is local (its consumer reads the state here)', c.name) END);
    RETURN QUERY SELECT * FROM connect_guard.preflight_plans(v_plan);
    RETURN QUERY SELECT * FROM connect_guard.preflight_connections(connect_preflight.method, c.connection_id);
    IF v_plan THEN
        RETURN QUERY SELECT * FROM connect_guard.preflight_mappings();
    END IF;
    RETURN QUERY SELECT * FROM connect_guard.preflight_transactions(connect_preflight.method,
        CASE WHEN v_plan THEN connect_guard.database_tables() ELSE (connect_guard.fence_targets(c.connection_id)).relids END);
    IF v_plan THEN
        RETURN QUERY SELECT * FROM connect_guard.preflight_witness(connect_preflight.method);
    END IF;
    IF connect_preflight.method = 'follower' THEN
        RETURN QUERY SELECT * FROM connect_guard.preflight_follower(v_conninfo, connect_preflight.max_lag_bytes);
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION connect_guard.preflight_mappings() FROM PUBLIC;

/* ------------------------------------------------------------------------
 * Writes that session_replication_role = replica would hide from the log,
 * and logical replication into mapped tables (replica_writes.c,
 * subscription_watch.c): the schema watch's new kind subscription_target
 * (19_table_shape_changes.sql), connect_save_mapping() enabling
 * connect_guard's own triggers ALWAYS for a table a subscription writes into
 * (66_schema_watch.sql), and the subscription watch
 * (67_subscription_watch.sql), copied as they are there.
 * ------------------------------------------------------------------------ */
/*
 * connect_guard.subscriptions_into: the subscriptions of this database
 * (pg_subscription_rel is per database) that apply rows into p_rel or one
 * of its partitions, by name, or NULL.  Their apply workers run with
 * session_replication_role = replica: only triggers enabled REPLICA or
 * ALWAYS fire for the rows they write.
 */
CREATE FUNCTION connect_guard.subscriptions_into(p_rel regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(DISTINCT quote_ident(s.subname), ', ')
      FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid
     WHERE sr.srrelid IN (SELECT p_rel UNION ALL SELECT p FROM connect_guard.partitions_of(p_rel) p)
$$;

/*
 * connect_guard.mapping_findings: what differs now between mapping m's
 * table and what the mapping expects (see the kinds above).  With
 * p_look_at_rows false, partitions added are not read (whether they hold
 * rows needs SELECT on them): actual says 'not examined'.
 */
CREATE OR REPLACE FUNCTION connect_guard.mapping_findings(m connect_guard.mapping, p_look_at_rows boolean DEFAULT true)
RETURNS TABLE (kind text, object text, expected text, actual text, needs_reload boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_rel regclass := connect_guard.mapping_relid(m);
    v_now jsonb;
    v_rows boolean;
    v_reported text[] := '{}';
    v_subscribed text;
    k text;
BEGIN
    IF v_rel IS NULL THEN
        RETURN QUERY SELECT 'table_dropped'::text, format('%I.%I', m.table_schema, m.table_name), 'the mapped table'::text,
                            'no such table'::text, true;
        RETURN;
    END IF;
    SELECT * INTO c FROM connect_guard.connection cn WHERE cn.connection_id = m.connection_id;
    -- a table that logical replication writes into needs its triggers ENABLE ALWAYS
    v_subscribed := connect_guard.subscriptions_into(v_rel);

    -- the triggers that capture its writes (and watch its partitions), on it and on its partitions
    RETURN QUERY
    WITH e AS (SELECT * FROM connect_guard.capture_triggers_expected(c, m)),
    targets AS (
        SELECT e.*, v_rel::oid AS relid FROM e WHERE e.placement = 'table'
        UNION ALL
        SELECT e.*, p::oid FROM e, connect_guard.partitions_of(v_rel) p
         WHERE e.placement = 'each_partition' OR (e.placement = 'table' AND e.trigger_type & 1 = 1)),
    present AS (
        SELECT x.*, t.oid AS tgoid, t.tgenabled,
               t.tgtype <> x.trigger_type OR t.tgfoid <> coalesce(x.function_oid, t.tgfoid)
               OR (x.arguments IS NOT NULL
                   AND CASE WHEN t.tgnargs = 0 THEN '{}'::text[]
                            ELSE string_to_array(left(encode(t.tgargs, 'escape'), -4), '\000') END
                       IS DISTINCT FROM x.arguments)
               OR CASE WHEN t.tgqual IS NULL THEN x.when_clause IS NOT NULL
                       WHEN x.when_clause IS NULL THEN true
                       ELSE NOT coalesce(substring(pg_get_triggerdef(t.oid) FROM ' WHEN \((.*)\) EXECUTE ')
                                         ~ x.when_clause, false) END
               OR cardinality(t.tgattr::int2[]) > 0 OR t.tgconstraint <> 0 AS changed
          FROM targets x LEFT JOIN pg_trigger t ON t.tgrelid = x.relid AND t.tgname = x.trigger_name)
    SELECT CASE WHEN f.tgoid IS NULL THEN 'trigger_missing' WHEN f.changed THEN 'trigger_changed'
                WHEN f.tgenabled = 'D' THEN 'trigger_disabled' WHEN f.tgenabled = 'R' THEN 'trigger_replica_only'
                WHEN f.tgenabled = 'O' THEN 'subscription_target'
                ELSE 'trigger_always' END,
           format('%I on %s', f.trigger_name, f.relid::regclass),
           CASE WHEN f.tgoid IS NULL THEN f.purpose || ' trigger'
                WHEN f.changed THEN format('%s trigger as %s defines it', f.purpose,
                                           CASE f.owned_by WHEN 'connect' THEN 'Heroku Connect' ELSE f.owned_by END)
                WHEN f.tgenabled = 'O' THEN format('ENABLE ALWAYS: subscription %s applies rows into the table',
                                                   v_subscribed)
                ELSE 'enabled' END,
           CASE WHEN f.tgoid IS NULL THEN 'no such trigger'
                WHEN f.changed THEN pg_get_triggerdef(f.tgoid)
                WHEN f.tgenabled = 'D' THEN 'disabled'
                WHEN f.tgenabled = 'R' THEN 'ENABLE REPLICA: fires only when session_replication_role = replica'
                WHEN f.tgenabled = 'O' THEN 'enabled in the origin role: silent for the rows logical replication applies'
                ELSE 'ENABLE ALWAYS: fires also when session_replication_role = replica' END,
           f.purpose = 'capture' AND NOT (f.tgoid IS NOT NULL AND NOT f.changed AND f.tgenabled = 'A')
      FROM present f
     WHERE f.tgoid IS NULL OR f.changed
        OR CASE WHEN v_subscribed IS NULL THEN f.tgenabled <> 'O' ELSE f.tgenabled <> 'A' END
     ORDER BY f.relid, f.trigger_name;

    -- inheritance children: rows of the table that no trigger of it captures (a partitioned table has none)
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class cl ON cl.oid = i.inhrelid
                WHERE i.inhparent = v_rel AND NOT cl.relispartition) THEN
        RETURN QUERY
        WITH RECURSIVE down(relid, parent) AS (
            SELECT i.inhrelid, i.inhparent FROM pg_inherits i WHERE i.inhparent = v_rel
            UNION ALL
            SELECT i.inhrelid, i.inhparent FROM pg_inherits i JOIN down d ON i.inhparent = d.relid)
        SELECT 'inheritance_child'::text, d.relid::regclass::text, 'no inheritance children'::text,
               format('inherits from %s', d.parent::regclass), true
          FROM down d JOIN pg_class cl ON cl.oid = d.relid
         WHERE NOT cl.relispartition;
    END IF;

    -- the shape it was mapped (or saved) with
    v_now := connect_guard.table_shape(v_rel);
    IF m.shape IS NOT NULL THEN
        SELECT coalesce(array_agg(coalesce(o.k, n.k)), '{}') INTO v_reported
          FROM jsonb_each_text(m.shape -> 'columns') o(k, v) FULL JOIN jsonb_each_text(v_now -> 'columns') n(k, v) ON n.k = o.k
         WHERE o.v IS DISTINCT FROM n.v;
        RETURN QUERY
        SELECT CASE WHEN n.v IS NULL THEN 'column_dropped' WHEN o.v IS NULL THEN 'column_added'
                    ELSE 'column_type_changed' END,
               coalesce(o.k, n.k), o.v, n.v, o.v IS NOT NULL AND n.v IS NOT NULL
          FROM jsonb_each_text(m.shape -> 'columns') o(k, v) FULL JOIN jsonb_each_text(v_now -> 'columns') n(k, v) ON n.k = o.k
         WHERE o.v IS DISTINCT FROM n.v
        UNION ALL
        SELECT 'primary_key_changed', 'primary key', coalesce(m.shape ->> 'primary_key', 'none'), v_now ->> 'primary_key', true
         WHERE (m.shape -> 'primary_key') IS DISTINCT FROM (v_now -> 'primary_key')
        UNION ALL
        -- a partition renamed: the same relation under another name (nothing left the table)
        SELECT 'partition_renamed', o.name, o.name, n.name, false
          FROM jsonb_each_text(coalesce(m.shape -> 'partition_oids', '{}')) o(name, relid)
          JOIN jsonb_each_text(v_now -> 'partition_oids') n(name, relid) ON n.relid = o.relid AND n.name <> o.name
         WHERE m.shape -> 'partitions' ? o.name AND NOT v_now -> 'partitions' ? o.name
        UNION ALL
        SELECT 'partition_removed', gone.p, format('a partition of %s', v_rel),
               CASE WHEN to_regclass(gone.p) IS NULL THEN 'dropped' ELSE 'detached' END, true
          FROM (SELECT jsonb_array_elements_text(m.shape -> 'partitions')
                EXCEPT SELECT jsonb_array_elements_text(v_now -> 'partitions')) gone(p)
         WHERE NOT EXISTS (SELECT 1 FROM jsonb_each_text(v_now -> 'partition_oids') n(name, relid)
                            WHERE n.relid = m.shape -> 'partition_oids' ->> gone.p);
        FOR k IN SELECT jsonb_array_elements_text(v_now -> 'partitions')
                 EXCEPT SELECT jsonb_array_elements_text(m.shape -> 'partitions')
                 EXCEPT SELECT n.name FROM jsonb_each_text(v_now -> 'partition_oids') n(name, relid)
                         WHERE EXISTS (SELECT 1 FROM jsonb_each_text(coalesce(m.shape -> 'partition_oids', '{}')) o(name, relid)
                                        WHERE o.relid = n.relid AND m.shape -> 'partitions' ? o.name) LOOP
            IF p_look_at_rows THEN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', k::regclass) INTO v_rows;
            END IF;
            RETURN QUERY SELECT 'partition_added'::text, k, 'no new partition with rows'::text,
                                CASE WHEN NOT p_look_at_rows THEN 'not examined'
                                     WHEN v_rows THEN 'attached with rows' ELSE 'empty' END,
                                coalesce(v_rows, false);
        END LOOP;
    END IF;

    -- the configuration's fields against the columns (a column already reported above is not again);
    -- names ignore case, as Salesforce's do (Connect's columns are lower case)
    IF jsonb_typeof(m.config -> 'fields') = 'object' THEN
        RETURN QUERY
        WITH cols AS (SELECT k.col, lower(k.col) AS lcol, k.col = ANY (v_reported) AS reported
                        FROM jsonb_object_keys(v_now -> 'columns') k(col)),
        fields AS (SELECT f AS field, connect_guard.config_field_column(f) AS lcol
                     FROM jsonb_object_keys(m.config -> 'fields') f)
        SELECT 'field_without_column'::text, f.field, f.lcol, NULL::text, false
          FROM fields f
         WHERE NOT EXISTS (SELECT 1 FROM cols x WHERE x.lcol = f.lcol)
           AND NOT EXISTS (SELECT 1 FROM unnest(v_reported) r WHERE lower(r) = f.lcol)
        UNION ALL
        SELECT 'column_without_field'::text, x.col, NULL::text, connect_guard.config_field_name(x.col), false
          FROM cols x
         WHERE NOT x.reported AND connect_guard.config_field_name(x.col) IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM fields f WHERE f.lcol = x.lcol)
         ORDER BY 1, 2;
    END IF;
END;
$$;

/*
 * connect_guard.mapping_fingerprints: for each mapping, a digest of
 * everything its check reads (its table's triggers, columns, key,
 * partitions and inheritance children, the subscriptions that write into
 * it, its shape and configuration), in
 * one query: the worker checks again only the mappings whose digest moved.
 */
CREATE OR REPLACE FUNCTION connect_guard.mapping_fingerprints()
RETURNS TABLE (mapping_id integer, fingerprint text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT m.mapping_id,
           md5(concat_ws('|', m.shape::text, m.config::text, rel::oid::text,
               (WITH RECURSIVE tree(relid) AS (
                    SELECT rel::oid
                    UNION ALL
                    SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.relid)
                SELECT string_agg(concat_ws(',', tr.relid, cl.relname, cl.relnamespace, cl.relkind, cl.relispartition,
                                            (SELECT string_agg(concat_ws(':', t.oid, t.tgname, t.tgenabled, t.tgtype, t.tgfoid,
                                                                         encode(t.tgargs, 'hex'), t.tgqual::text,
                                                                         t.tgattr::text, t.tgconstraint), ';' ORDER BY t.tgname)
                                               FROM pg_trigger t WHERE t.tgrelid = tr.relid)), '/' ORDER BY tr.relid)
                  FROM tree tr JOIN pg_class cl ON cl.oid = tr.relid),
               (SELECT string_agg(concat_ws(',', a.attname, a.atttypid, a.atttypmod), ';' ORDER BY a.attnum)
                  FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped),
               (SELECT i.indkey::text FROM pg_index i WHERE i.indrelid = rel AND i.indisprimary),
               connect_guard.subscriptions_into(rel)))
      FROM connect_guard.mapping m CROSS JOIN LATERAL connect_guard.mapping_relid(m) rel;
END;
$$;

/*
 * connect_guard.repair_triggers puts connect_guard's own triggers of
 * mapping m back as it installs them: created again where missing or
 * changed, enabled in the origin role where disabled, REPLICA or ALWAYS;
 * ENABLE ALWAYS while a subscription applies rows into the table (its apply
 * runs with session_replication_role = replica, where triggers enabled in
 * the origin role stay silent).  Returns the triggers of others (Connect's)
 * that are not as expected: connect_guard never touches those.
 */
CREATE OR REPLACE FUNCTION connect_guard.repair_triggers(c connect_guard.connection, m connect_guard.mapping)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel regclass := connect_guard.mapping_relid(m);
    e record;
    r regclass;
    t pg_trigger;
    v_not_ours text[] := '{}';
    v_enabled "char" := CASE WHEN connect_guard.subscriptions_into(v_rel) IS NULL THEN 'O' ELSE 'A' END;
    v_was boolean := connect_guard.own_ddl(true);
BEGIN
    FOR e IN SELECT * FROM connect_guard.capture_triggers_expected(c, m) ORDER BY placement DESC LOOP
        FOR r IN
            SELECT v_rel WHERE e.placement = 'table'
            UNION ALL
            SELECT p FROM connect_guard.partitions_of(v_rel) p
             WHERE e.placement = 'each_partition' OR (e.placement = 'table' AND e.trigger_type & 1 = 1)
        LOOP
            SELECT * INTO t FROM pg_trigger tg WHERE tg.tgrelid = r AND tg.tgname = e.trigger_name;
            IF EXISTS (SELECT 1 FROM connect_guard.mapping_findings(m, false) f
                        WHERE (f.kind LIKE 'trigger\_%' OR f.kind = 'subscription_target')
                          AND f.object = format('%I on %s', e.trigger_name, r)) THEN
                IF e.owned_by <> 'connect_guard' THEN
                    v_not_ours := v_not_ours || format('%I on %s', e.trigger_name, r);
                ELSIF t.oid IS NULL OR t.tgtype <> e.trigger_type OR t.tgfoid <> e.function_oid
                      OR connect_guard.trigger_arguments(t) IS DISTINCT FROM e.arguments
                      OR t.tgqual IS NOT NULL OR cardinality(t.tgattr::int2[]) > 0 THEN
                    -- a partition's clone is put back (created again) with its table's trigger
                    EXECUTE connect_guard.trigger_sql(e.trigger_name, e.trigger_type, e.function_oid, e.arguments,
                                                      CASE WHEN e.placement = 'table' THEN v_rel ELSE r END);
                END IF;
                SELECT * INTO t FROM pg_trigger tg WHERE tg.tgrelid = r AND tg.tgname = e.trigger_name;
                IF e.owned_by = 'connect_guard' AND t.tgenabled IS DISTINCT FROM v_enabled AND t.oid IS NOT NULL THEN
                    EXECUTE format('ALTER TABLE %s ENABLE %s TRIGGER %I', r,
                                   CASE v_enabled WHEN 'A' THEN 'ALWAYS' ELSE '' END, e.trigger_name);
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    PERFORM connect_guard.own_ddl(v_was);
    RETURN v_not_ours;
END;
$$;

/*
 * connect_save_mapping is the way out of SCHEMA_CHANGED, as saving the
 * mapping is in Connect's dashboard: it puts connect_guard's own capture
 * triggers back, accepts the table's shape as it is now, and (for a
 * connection whose configuration is its own: local, webhook) takes the
 * table's columns as the mapping's fields.  What it cannot mend stops it,
 * with what to do: an inheritance child, a trigger of Connect's, fields of
 * Connect's configuration that the table lacks.  When a change may have
 * hidden writes (needs_reload), the mapping is reloaded
 * (connect_reload_mapping: RELOAD_TABLE, then DATA_SYNCED once the sync
 * service has reloaded it); reload => false skips that, reload => true
 * reloads anyway.  Returns the mapping's state.
 */
CREATE OR REPLACE FUNCTION connect_save_mapping(connection text, tbl regclass, reload boolean DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
    v_not_ours text[];
    v_left text;
    v_needs_reload boolean;
    v_reload boolean;
    v_state_before text;
    v_changes jsonb;
    v_request bigint;
    v_reloading boolean;
    v_gone regclass;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_table(tbl);
    m := connect_guard.mapping_of(c, tbl);

    v_not_ours := connect_guard.repair_triggers(c, m);
    IF cardinality(v_not_ours) > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('cannot save the mapping of %s: triggers that are not connect_guard''s are not as expected: %s',
                             tbl, array_to_string(v_not_ours, ', ')),
            DETAIL = 'connect_guard never changes the sync service''s own objects.',
            HINT = CASE WHEN connect_guard.subscriptions_into(tbl) IS NOT NULL
                        THEN format('Subscription %s applies rows into %s, with session_replication_role = replica: '
                                    'ENABLE ALWAYS the trigger (ALTER TABLE %s ENABLE ALWAYS TRIGGER ...) so that they '
                                    'are logged, or leave the table out of the subscription; then call '
                                    'connect_save_mapping() again.', connect_guard.subscriptions_into(tbl), tbl, tbl)
                        ELSE 'Edit and save the mapping in Heroku Connect''s dashboard, so that Connect puts its trigger back; then call connect_save_mapping() again.' END;
    END IF;

    -- a connection that owns its configuration takes the table's columns as fields
    IF c.adapter <> 'heroku' OR m.config_source IS DISTINCT FROM 'connect' THEN
        UPDATE connect_guard.mapping mp
           SET config = (SELECT (coalesce(mp.config, connect_guard.config_of_columns('{}')) - 'indexes' - 'upsert_field')
                                || jsonb_build_object('fields', d.fields)
                                -- indexes and the upsert field of fields that are gone go with them
                                || jsonb_build_object('indexes', coalesce(
                                       (SELECT jsonb_object_agg(i.key, i.value) FROM jsonb_each(mp.config -> 'indexes') i
                                         WHERE i.key = 'Id' OR EXISTS (SELECT 1 FROM jsonb_object_keys(d.fields) f
                                                                        WHERE lower(f) = lower(i.key))),
                                       '{"Id": {"unique": true}}'))
                                || coalesce((SELECT jsonb_build_object('upsert_field', mp.config -> 'upsert_field')
                                               WHERE EXISTS (SELECT 1 FROM jsonb_object_keys(d.fields) f
                                                              WHERE lower(f) = lower(mp.config ->> 'upsert_field'))), '{}')
                           FROM (SELECT connect_guard.config_fields_for(mp.config, connect_guard.table_columns(tbl)) AS fields) d),
               config_at = clock_timestamp()
         WHERE mp.mapping_id = m.mapping_id;
    END IF;
    -- a partition that left the table keeps no truncate watch of ours
    PERFORM connect_guard.own_ddl(true);
    FOR v_gone IN SELECT to_regclass(p) FROM jsonb_array_elements_text(m.shape -> 'partitions') p
                   WHERE p <> ALL (SELECT x::text FROM connect_guard.partitions_of(tbl) x) LOOP
        IF v_gone IS NOT NULL AND NOT (SELECT relispartition FROM pg_class WHERE oid = v_gone) THEN
            EXECUTE format('DROP TRIGGER IF EXISTS _connect_guard_truncate_watch ON %s', v_gone);
        END IF;
    END LOOP;
    PERFORM connect_guard.own_ddl(false);
    UPDATE connect_guard.mapping mp SET shape = connect_guard.table_shape(tbl) WHERE mp.mapping_id = m.mapping_id
    RETURNING * INTO m;

    -- what is left cannot be accepted
    SELECT string_agg(connect_guard.schema_change_text(f.kind, f.object, f.expected, f.actual), '; ') INTO v_left
      FROM connect_guard.mapping_findings(m) f;
    IF v_left IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('cannot save the mapping of %s: %s', tbl, v_left),
            DETAIL = 'Nothing was changed.',
            HINT = CASE WHEN v_left LIKE '%inheritance_child%'
                        THEN format('Move the child''s rows into %s and detach it (ALTER TABLE child NO INHERIT %s), then save again.', tbl, tbl)
                        ELSE 'The fields are Connect''s: edit the mapping in Heroku Connect (or change the table) so that they match, fetch its configuration again (connect_export_config(), connect_wait_config()), then save again.' END;
    END IF;

    SELECT coalesce(bool_or(s.needs_reload), false), min(s.state_before),
           coalesce(jsonb_agg(jsonb_build_object('kind', s.kind, 'object', s.object, 'needs_reload', s.needs_reload)
                              ORDER BY s.schema_change_id), '[]')
      INTO v_needs_reload, v_state_before, v_changes
      FROM connect_guard.schema_change s WHERE s.mapping_id = m.mapping_id AND s.resolved_at IS NULL;
    v_reload := coalesce(reload, v_needs_reload);
    v_reloading := EXISTS (SELECT 1 FROM connect_guard.request r
                            WHERE r.mapping_id = m.mapping_id AND r.action = 'reload' AND r.status = 'pending');
    UPDATE connect_guard.schema_change s
       SET resolved_at = clock_timestamp(),
           resolution = format('saved by %s%s', session_user,
                               CASE WHEN v_reload THEN ', reloaded'
                                    WHEN v_needs_reload THEN ', without the reload it needed' ELSE '' END)
     WHERE s.mapping_id = m.mapping_id AND s.resolved_at IS NULL;
    INSERT INTO connect_guard.mapping_verified (mapping_id, verified_at) VALUES (m.mapping_id, clock_timestamp())
    ON CONFLICT (mapping_id) DO UPDATE SET verified_at = excluded.verified_at;

    IF v_reload AND NOT v_reloading THEN
        v_request := @extschema@.connect_reload_mapping(c.name, tbl);
    ELSIF m.state = 'SCHEMA_CHANGED' THEN
        PERFORM connect_guard.mappings_goto(c.connection_id, ARRAY[m.mapping_id],
                                            CASE WHEN v_reloading THEN 'RELOAD_TABLE'
                                                 ELSE coalesce(v_state_before, 'DATA_SYNCED') END,
                                            ARRAY['SCHEMA_CHANGED']);
    END IF;
    PERFORM connect_guard.log_event(c.connection_id, 'mapping_saved', jsonb_build_object(
        'table', format('%I.%I', m.table_schema, m.table_name), 'object_name', m.object_name,
        'resolved', v_changes, 'needed_reload', v_needs_reload, 'reload', v_reload OR v_reloading,
        'request_id', v_request));
    IF v_needs_reload AND NOT v_reload THEN
        RAISE WARNING USING
            MESSAGE = format('the mapping of %s is saved without the reload it needed', tbl),
            DETAIL = 'Writes may have reached the table without a log entry; the sync service''s copy may differ from it.',
            HINT = format('Reload it when you can: SELECT connect_reload_mapping(%L, %L).', c.name, tbl::text);
    END IF;
    RETURN (SELECT mp.state FROM connect_guard.mapping mp WHERE mp.mapping_id = m.mapping_id);
END;
$$;

/*
 * connect_guard.subscription_unlogged: the triggers of the mapped tables
 * subscription p_subid writes into that would not fire for its rows, as
 * "trigger on table" separated by commas ('' for none).  SECURITY DEFINER:
 * the subscription's owner need not read connect_guard's catalog.  A
 * failure of the check itself is a WARNING (the worker's cycle looks
 * again), never the failure of the command.
 */
CREATE FUNCTION connect_guard.subscription_unlogged(p_subid oid)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_unlogged text;
    v_message text;
BEGIN
    IF to_regclass('connect_guard.mapping') IS NULL THEN
        RETURN '';
    END IF;
    BEGIN
        SELECT string_agg(DISTINCT f.object, ', ') INTO v_unlogged
          FROM connect_guard.mapping m
         CROSS JOIN LATERAL connect_guard.mapping_findings(m, false) f
         WHERE m.mapping_id = ANY (connect_guard.mappings_of_relations(
                   ARRAY(SELECT sr.srrelid FROM pg_subscription_rel sr WHERE sr.srsubid = p_subid)))
           AND f.kind IN ('subscription_target', 'trigger_disabled', 'trigger_missing');
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        RAISE WARNING USING
            MESSAGE = format('connect_guard could not check the tables of subscription %s: %s', p_subid, v_message),
            HINT = 'The command went through; the connect_guard worker checks the mapped tables on its next cycle.';
        RETURN '';
    END;
    RETURN coalesce(v_unlogged, '');
END;
$$;

-- the event trigger's function (subscription_watch.c)
CREATE FUNCTION connect_guard.on_subscription_change()
RETURNS event_trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_subscription_watch';

CREATE EVENT TRIGGER connect_guard_subscription_watch ON ddl_command_end
    WHEN TAG IN ('CREATE SUBSCRIPTION', 'ALTER SUBSCRIPTION')
    EXECUTE FUNCTION connect_guard.on_subscription_change();
-- also in sessions with session_replication_role = replica
ALTER EVENT TRIGGER connect_guard_subscription_watch ENABLE ALWAYS;

REVOKE ALL ON FUNCTION connect_guard.subscriptions_into(regclass),
                       connect_guard.subscription_unlogged(oid),
                       connect_guard.on_subscription_change()
    FROM PUBLIC;

/* ------------------------------------------------------------------------
 * A role that consumes no connection any more loses EXECUTE on the consumer
 * functions also when its grant goes with a dropped connection (a trigger
 * on connect_guard.consumer instead of a step of connect_revoke_consumer),
 * as in extension/parts/25_consumers.sql.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.consumer_rights_follow: a role that consumes no connection
 * any more loses EXECUTE on the consumer functions (which alone would give
 * it nothing).  A trigger rather than a step of connect_revoke_consumer:
 * grants also go when their connection is dropped (ON DELETE CASCADE), and
 * a role left with EXECUTE but no grant row could be dropped only after a
 * REVOKE by hand that nothing would tell the DBA about.
 */
CREATE FUNCTION connect_guard.consumer_rights_follow()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT DISTINCT gone.role_name FROM gone
         WHERE NOT EXISTS (SELECT 1 FROM connect_guard.consumer k WHERE k.role_name = gone.role_name)
           AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = gone.role_name)
         ORDER BY 1
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s, %s, %s FROM %I',
                       '@extschema@.connect_next_batch(text)'::regprocedure,
                       '@extschema@.connect_batch_events(bigint)'::regprocedure,
                       '@extschema@.connect_finish_batch(bigint)'::regprocedure, v_role);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER consumer_rights_follow
    AFTER DELETE ON connect_guard.consumer
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.consumer_rights_follow();

/*
 * connect_revoke_consumer takes the connection away from a role; a role
 * that consumes no connection any more also loses EXECUTE on the consumer
 * functions (consumer_rights_follow).  A batch it holds stays open and is
 * handed to the next consumer that asks.  Returns false when the role was
 * no consumer of the connection.
 */
CREATE OR REPLACE FUNCTION connect_revoke_consumer(connection text, role name)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_not_null(role, 'role', 'Pass the name of the role, as connect_consumers shows it.');
    DELETE FROM connect_guard.consumer k WHERE k.connection_id = c.connection_id AND k.role_name = role;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM connect_guard.log_event(c.connection_id, 'consumer_revoked', jsonb_build_object('role', role));
    RETURN true;
END;
$$;

REVOKE ALL ON FUNCTION connect_guard.consumer_rights_follow() FROM PUBLIC;

/* ------------------------------------------------------------------------
 * connect_pause() of a local connection takes the connection's lock only
 * once it sees no batch open: taking it on every try could keep the
 * consumer's connect_finish_batch() waiting until the pause's deadline on
 * a busy machine.  As in extension/parts/62_signals.sql.
 * ------------------------------------------------------------------------ */

CREATE OR REPLACE FUNCTION connect_pause(connection text, block_writes boolean DEFAULT true,
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

/* ------------------------------------------------------------------------
 * A request whose taker is gone is sent again at once (helper w1).  A
 * worker killed while it waited for the sync service (kill -9, the crash
 * restart that follows, a worker stopped mid-round) used to leave its
 * request leased for http_timeout + 10 s.  request_take() now records the
 * taker (pid and backend start, in connect_guard.request_taker) until
 * request_outcome() records what came of it, and takes a leased request
 * whose taker no longer runs at once; while the taker lives, nobody else
 * takes it (50_requests.sql, 60_request_worker.sql).
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.request_taker (
    request_id      bigint PRIMARY KEY REFERENCES connect_guard.request ON DELETE CASCADE,
    pid             integer NOT NULL,
    backend_start   timestamptz,
    timeline        integer NOT NULL
);

CREATE FUNCTION connect_guard.request_taker_alive(p_pid integer, p_started timestamptz)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_stat_get_activity(p_pid) a
                    WHERE a.pid = p_pid
                      AND (a.backend_start IS NULL OR p_started IS NULL OR a.backend_start = p_started));
$$;

CREATE OR REPLACE FUNCTION connect_guard.request_take(p_limit integer, p_lease_ms integer)
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

CREATE OR REPLACE FUNCTION connect_guard.request_outcome(p_request_id bigint, p_step text, p_http_status integer,
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

REVOKE ALL ON FUNCTION connect_guard.request_taker_alive(integer, timestamptz) FROM PUBLIC;

/* ------------------------------------------------------------------------
 * Connection states after a rollback (helper w1, 57_rollback_states.sql).
 * A restore brings back each connection's state as it was at the point
 * restored to, and the fences of the base backup's fence file: PAUSED with
 * its fence up, say, while Connect has been resumed since.  On a rollback
 * the worker now asks each heroku connection's Connect for its state (a
 * refresh queued before the reloads) and reconciles the recorded state
 * with the answer, lowering only the pause's own fence; webhook and local
 * connections are compared with the witness, which now records whether
 * each connection was paused, and reported; a pause fence from the fence
 * file that no restored connection holds is lowered.  Events say what was
 * found and done.
 * ------------------------------------------------------------------------ */

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

CREATE OR REPLACE FUNCTION connect_guard.request_outcome(p_request_id bigint, p_step text, p_http_status integer,
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

CREATE OR REPLACE FUNCTION connect_guard.database_state()
RETURNS jsonb
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'format', 1,
        'system_identifier', connect_guard.system_identifier()::text,
        'database', current_database(),
        'installation', (SELECT i.installation_id FROM connect_guard.installation i
                          ORDER BY i.installed_at LIMIT 1),
        'timeline', connect_guard.current_timeline(),
        -- where this timeline's history left each ancestor: a former primary on one of them
        -- learns that it was failed over, not rolled back (72_failovers.sql)
        'history', connect_guard.timeline_ancestry(),
        'next_xid', pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
        'log_head', connect_guard.log_sequence_head(),
        -- each connection's position in its log, own or Connect's (15_log_sources.sql)
        'connections', coalesce((
            SELECT jsonb_object_agg(c.name, jsonb_build_object('created_at', c.created_at, 'remote_hwm', c.remote_hwm,
                                                               -- a restore may bring back a pause since lifted
                                                               -- (57_rollback_states.sql)
                                                               'paused', c.state IN ('PAUSED', 'PAUSING'))
                                            || connect_guard.log_witness_marks(c.connection_id))
              FROM connect_guard.connection c), '{}'));
$$;

CREATE OR REPLACE FUNCTION connect_guard.rollback_act(p_findings jsonb, p_witness jsonb, p_source text, p_first_cycle boolean)
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

REVOKE ALL ON FUNCTION connect_guard.connection_reconcile(integer, text, bigint, integer, bigint),
                       connect_guard.rollback_restored_fences(integer)
    FROM PUBLIC;

/* ------------------------------------------------------------------------
 * Connection rows are locked FOR NO KEY UPDATE, not FOR UPDATE: the locks
 * serialise batches, pauses and drops among themselves just the same, but
 * no longer block the foreign-key checks (FOR KEY SHARE) of rows that refer
 * to the connection.  With FOR UPDATE, a consumer holding its connection
 * locked made the worker wait for it wherever a transaction updated a
 * request row a second time (an updated row's key is checked again).
 * As in extension/parts/05_common.sql, 14_states.sql, 30_batches.sql and
 * 56_request_states.sql.
 * ------------------------------------------------------------------------ */

CREATE OR REPLACE FUNCTION connect_guard.require_connection(p_name text, p_lock boolean DEFAULT false)
RETURNS connect_guard.connection
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    PERFORM connect_guard.require_not_null(p_name, 'connection name',
                                           'Pass the name of a connection; see SELECT connection FROM connect_connections.');
    IF p_lock THEN
        SELECT * INTO c FROM connect_guard.connection WHERE name = p_name FOR NO KEY UPDATE;
    ELSE
        SELECT * INTO c FROM connect_guard.connection WHERE name = p_name;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('connection "%s" does not exist', p_name),
            HINT = 'See SELECT connection FROM connect_connections, or create it with connect_create_connection().';
    END IF;
    RETURN c;
END;
$$;

CREATE OR REPLACE FUNCTION connect_guard.lock_connection(p_connection_id integer, p_deadline timestamptz)
RETURNS connect_guard.connection
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_lock_timeout text := current_setting('lock_timeout');
    v_name text;
BEGIN
    PERFORM set_config('lock_timeout',
                       least(2147483647,
                             greatest(1, ceil(extract(epoch FROM p_deadline - clock_timestamp()) * 1000)))::bigint::text,
                       true);
    BEGIN
        SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id FOR NO KEY UPDATE;
    EXCEPTION WHEN lock_not_available THEN
        SELECT cn.name INTO v_name FROM connect_guard.connection cn WHERE cn.connection_id = p_connection_id;
        RAISE EXCEPTION USING
            ERRCODE = 'lock_not_available',
            MESSAGE = format('timed out waiting for the lock on connection "%s"', v_name),
            DETAIL = format('It is held by %s.', coalesce(connect_guard.connection_lockers(p_connection_id),
                                                           'a transaction that has ended since, or several (see pg_locks)')),
            HINT = 'A consumer must commit right after connect_next_batch() and connect_finish_batch(); end that '
                   'transaction (pg_terminate_backend), or try again with a longer timeout.';
    END;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
    IF c.connection_id IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('connection %s was dropped', p_connection_id),
            HINT = 'The event log says who dropped it (kind connection_dropped).';
    END IF;
    RETURN c;
END;
$$;

CREATE OR REPLACE FUNCTION connect_guard.connection_note(p_connection_id integer, p_reason text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE connect_guard.connection SET state_reason = left(p_reason, 2000)
     WHERE connection_id = (SELECT c.connection_id FROM connect_guard.connection c
                             WHERE c.connection_id = p_connection_id FOR NO KEY UPDATE SKIP LOCKED);
$$;

CREATE OR REPLACE FUNCTION connect_finish_batch(batch_id bigint)
RETURNS bigint
LANGUAGE plpgsql STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b connect_guard.batch;
    c connect_guard.connection;
    v_count bigint;
    v_max bigint;
BEGIN
    b := connect_guard.open_batch(batch_id);
    PERFORM connect_guard.require_consumer(b.connection_id);
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = b.connection_id FOR NO KEY UPDATE;
    -- re-read under the connection lock: a concurrent finish may have won
    b := connect_guard.open_batch(batch_id);
    IF b.taken_by <> session_user
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('batch %s belongs to role "%s"', batch_id, b.taken_by),
            DETAIL = format('Only the consumer that took a batch last finishes it; you are "%s".', session_user),
            HINT = 'Finish the batch from the sync service''s own role, take it over with connect_next_batch() (an open batch is handed out again), or finish it as a superuser.';
    END IF;

    SELECT count(*), max(e.id) INTO v_count, v_max
      FROM connect_guard.tick_entries(b.connection_id, b.prev_tick, b.cur_tick) e;
    UPDATE connect_guard.batch SET finished_at = clock_timestamp(), entries = v_count
     WHERE connect_guard.batch.batch_id = b.batch_id;
    UPDATE connect_guard.connection
       SET last_tick = b.cur_tick,
           hwm_id = greatest(hwm_id, coalesce(v_max, 0)),
           last_batch_at = clock_timestamp()
     WHERE connection_id = c.connection_id;
    PERFORM connect_guard.connection_goto(c.connection_id, 'IDLE', ARRAY['POLLING_DB_CHANGES']);
    PERFORM connect_guard.mappings_goto(c.connection_id, NULL, 'DATA_SYNCED', ARRAY['INITIAL']);
    RETURN v_count;
END;
$$;

CREATE OR REPLACE FUNCTION connect_guard.request_apply(p_request_id bigint)
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
