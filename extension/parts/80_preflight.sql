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
 *   mappings:NAME, replication_slots, prepared_transactions, long_transactions, witness,
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
 * mappings:NAME (plans): every mapping of every connection is INITIAL or
 * DATA_SYNCED and has no open schema change.
 * A plan carries the tables over as they are: a capture trigger disabled or
 * missing goes on hiding writes from the log on the new primary, and a
 * table the sync service must reload (RELOAD_TABLE, or a change that needs
 * a reload) is reloaded from wherever the data is then.  Failed, not
 * passed with a note: the preflight has no warnings, a DBA who has weighed
 * it accepts the check.  What is recorded is read (the event triggers
 * record a change at once, the worker's check every cycle), not looked for
 * again.  A pause does not get it: pausing is how such a table is mended
 * (runbooks/field_change.sql).
 */
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
