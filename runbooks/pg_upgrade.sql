-- runbooks/pg_upgrade.sql: upgrade the major version in place with
-- pg_upgrade (Heroku Connect Maintenance Operations, "Upgrading with
-- pg:upgrade:* Commands").  Two phases:
--
--   on the old cluster, before the window's shell steps:
--   psql -v ON_ERROR_STOP=1 -f runbooks/pg_upgrade.sql -d app \
--        -v new_bindir=/usr/lib/postgresql/16/bin -v new_datadir=/var/lib/postgresql/16/main
--   ... then the shell steps it prints (stop, pg_upgrade, copy the fence file, start) ...
--   on the upgraded cluster:
--   psql -v ON_ERROR_STOP=1 -f runbooks/pg_upgrade.sql -d app -v phase=verify -v plan=7
--
-- Variables (defaults in brackets):
--   phase               prepare | verify [prepare]
--   step_timeout        how long each step of the plan may take [10 min]
--   wait_timeout        how long this runbook waits for the plan [30 min]
--   prepare phase, for the shell steps it prints:
--   old_bindir          the old version's programs [this server's BINDIR]
--   new_bindir          the new version's programs [/usr/lib/postgresql/NEXT/bin]
--   new_datadir         the new cluster's data directory, made by the new initdb [/var/lib/postgresql/NEXT/main]
--   old_confdir         where the old cluster's postgresql.conf is [the directory of config_file]
--   new_confdir         where the new cluster's postgresql.conf is [new_datadir]
--   new_logfile         pg_ctl's log file for the new cluster's start [new_datadir.log]
--   pg_upgrade_options  more pg_upgrade options, e.g. '--link --jobs 4' ['']
--   accept              failed preflight checks to go ahead regardless, comma-separated ['']
--   verify phase:
--   plan                the plan to verify [the newest pg_upgrade plan]
--
-- The prepare phase first runs connect_preflight('pg_upgrade') and stops on a failed check
-- (no plan, fence, prepared or long transaction, inactive or logical slot; the sync services
-- IDLE; the witness), unless -v accept names it.
--
-- The seed's steps and what does them here:
--   heroku pg:upgrade:prepare          phase=prepare: connect_prepare_upgrade('pg_upgrade')
--   pause the Connect connection       the plan: every connection PAUSED, the database fenced ('ready')
--   heroku pg:upgrade:run              the printed shell steps (stop, pg_upgrade, fence file, start)
--   resume the connection              the new cluster's worker: it sees the plan under a new system
--                                      identifier, checks the log and the high-water marks, lowers the
--                                      fence, resumes; phase=verify waits for that and shows it
--
-- Stops with exit code 3 when a precondition fails, saying why and what to do.

\set ON_ERROR_STOP on
\ir common.psql

\if :{?phase} \else \set phase prepare \endif
\if :{?step_timeout} \else \set step_timeout '10 min' \endif
\if :{?wait_timeout} \else \set wait_timeout '30 min' \endif
\if :{?accept} \else \set accept '' \endif

SET application_name = 'connect_guard runbook pg_upgrade';

\echo '== pg_upgrade (phase' :phase'): preconditions'
SELECT pg_temp.runbook_require_phase(:'phase', '{prepare,verify}',
    'Pass -v phase=prepare on the old cluster, then -v phase=verify on the upgraded one.') \gset
SELECT pg_temp.runbook_require_primary() \gset
SELECT pg_temp.runbook_require_plan_timeouts(:'step_timeout', :'wait_timeout') \gset
SELECT pg_temp.runbook_require_worker(
    CASE :'phase' WHEN 'prepare'
         THEN 'connect_guard is not in shared_preload_libraries: no worker drives the plan and no fence can be raised'
         ELSE 'connect_guard is not in the upgraded cluster''s shared_preload_libraries: the fence file was not loaded and no worker completes the plan' END,
    CASE :'phase' WHEN 'prepare'
         THEN 'Add connect_guard to shared_preload_libraries and restart, then run the runbook again.'
         ELSE 'Stop this cluster at once (writes are not fenced), add connect_guard to shared_preload_libraries in its postgresql.conf, copy the old cluster''s connect_guard.fences into its data directory again if it is gone, and start it.' END,
    'It drives the plan. See the server log; after CREATE EXTENSION or a start it can take up to 30 s to start.') \gset

SELECT :'phase' = 'prepare' AS preparing \gset
\if :preparing
    -- ================================================================ prepare
    SELECT pg_temp.runbook_require_no_plan('upgrade plan %s is already %s (step %s)',
        'Wait for it, or end it with SELECT connect_abort_upgrade(%1$s).') \gset

    -- the shell steps' paths
    SELECT current_setting('data_directory') AS old_datadir,
           current_setting('server_version_num')::int / 10000 AS old_major,
           current_setting('server_version_num')::int / 10000 + 1 AS next_major \gset
    \if :{?old_bindir} \else
        SELECT coalesce((SELECT setting FROM pg_config WHERE name = 'BINDIR'),
                        format('/usr/lib/postgresql/%s/bin', :'old_major')) AS old_bindir \gset
    \endif
    \if :{?old_confdir} \else
        SELECT regexp_replace(current_setting('config_file'), '/[^/]*$', '') AS old_confdir \gset
    \endif
    \if :{?new_bindir} \else \set new_bindir /usr/lib/postgresql/:next_major/bin \endif
    \if :{?new_datadir} \else \set new_datadir /var/lib/postgresql/:next_major/main \endif
    \if :{?new_confdir} \else \set new_confdir :new_datadir \endif
    \if :{?new_logfile} \else \set new_logfile :new_datadir.log \endif
    \if :{?pg_upgrade_options} \else \set pg_upgrade_options '' \endif
    SELECT pg_temp.runbook_require(:'new_datadir' <> :'old_datadir',
        'new_datadir is the old cluster''s data directory',
        'Pass the data directory the new version''s initdb made: -v new_datadir=...') \gset

    \echo '== preflight (connect_preflight): what the plan would hit'
    SELECT pg_temp.runbook_preflight('pg_upgrade', NULL, NULL, NULL, :'accept') \gset
    SELECT "check", result, detail FROM pg_temp.preflight ORDER BY n;
    SELECT pg_temp.runbook_require_preflight() \gset

    \echo '== the connections the plan will pause (an open batch delays the pause until its consumer finishes it)'
    SELECT connection, adapter, state, backlog, open_batch FROM connect_status ORDER BY connection;
    SELECT count(*) AS standbys, count(*) > 0 AS has_standbys FROM pg_stat_replication \gset

    \echo
    \echo '== step 1: prepare the plan (the worker drives it: pausing -> fencing -> ready)'
    SELECT connect_prepare_upgrade('pg_upgrade', timeout => :'step_timeout'::interval) AS plan \gset
    \echo '   plan' :plan 'prepared'

    \echo '== step 2: wait until plan' :plan 'is ready (every connection paused, the database fenced)'
    \set wait_for ready
    \set wait_failed_todo 'Do not run pg_upgrade. SELECT connect_abort_upgrade(%1$s) lowers the fence and resumes the connections; fix the cause (an open batch, writers that do not finish) and start again.'
    \ir wait_for_plan.psql

    \echo
    \echo '== plan' :plan 'timeline'
    SELECT step, started_at, duration, detail FROM connect_upgrade_timeline(:'plan');
    SELECT connection, state, paused_because, fenced, fenced_because, hwm_id, log_head, backlog
      FROM connect_status ORDER BY connection;
    SELECT fence_id, scope, reason, since FROM connect_fences;

    \echo
    \echo '== next: plan' :plan 'is ready; writes to every table of this database are refused until the new'
    \echo '   cluster completes the plan. Before the window: the new version is initdb''ed (same locale and'
    \echo '   encoding), connect_guard is installed for it, its postgresql.conf has'
    \echo '   shared_preload_libraries = ''connect_guard'', and "pg_upgrade --check" passed.'
    \echo '   The fence file is copied AFTER pg_upgrade and before the first start: the schema restore of'
    \echo '   pg_upgrade runs DROP EXTENSION IF EXISTS connect_guard, which would lower a fence copied before.'
    \if :has_standbys
        \echo '   This server has' :standbys 'standby(s): upgrade them as the pg_upgrade documentation says (rsync),'
        \echo '   or rebuild them from the new cluster.'
    \endif
    \echo
    \pset format unaligned
    \pset tuples_only on
    SELECT concat_ws(E'\n',
        format('# ---- shell steps for plan %s: run them as the operating-system user that owns both clusters ----', :'plan'),
        'set -e',
        'OLD_BINDIR=' || pg_temp.sh(:'old_bindir'),
        'NEW_BINDIR=' || pg_temp.sh(:'new_bindir'),
        'OLD_PGDATA=' || pg_temp.sh(:'old_datadir'),
        'NEW_PGDATA=' || pg_temp.sh(:'new_datadir'),
        'OLD_CONFDIR=' || pg_temp.sh(:'old_confdir'),
        'NEW_CONFDIR=' || pg_temp.sh(:'new_confdir'),
        '# 1. stop the old cluster (on Debian: pg_ctlcluster ' || :'old_major' || ' main stop); it stays fenced if started again',
        '"$OLD_BINDIR/pg_ctl" -D "$OLD_CONFDIR" -m fast -w stop',
        '# 2. upgrade; pg_upgrade writes its scripts in the current directory',
        'cd "$(dirname "$NEW_PGDATA")"',
        trim('"$NEW_BINDIR/pg_upgrade" -b "$OLD_BINDIR" -B "$NEW_BINDIR" -d "$OLD_CONFDIR" -D "$NEW_CONFDIR" ' || :'pg_upgrade_options'),
        '# 3. carry the fence over: after pg_upgrade, before the first start of the new cluster',
        'cp -p "$OLD_PGDATA/connect_guard.fences" "$NEW_PGDATA/connect_guard.fences"',
        format('# 4. start the new cluster: it comes up fenced, and its worker completes plan %s', :'plan'),
        '"$NEW_BINDIR/pg_ctl" -D "$NEW_CONFDIR" -l ' || pg_temp.sh(:'new_logfile') || ' -w start',
        '# ---- end of shell steps ----');
    \pset tuples_only off
    \pset format aligned
    \echo
    \echo '   Then, on the new cluster:'
    \echo '     psql -v ON_ERROR_STOP=1 -f runbooks/pg_upgrade.sql -v phase=verify -v plan=':plan' -d' :DBNAME
    \echo '   To call the window off instead (before pg_upgrade): SELECT connect_abort_upgrade(':plan');'
\else
    -- ================================================================= verify
    \if :{?plan} \else
        SELECT coalesce(max(plan)::text, '') AS plan FROM connect_upgrade_status WHERE method = 'pg_upgrade' \gset
    \endif
    SELECT pg_temp.runbook_require_plan(:'plan', 'pg_upgrade', '{ready,completed}',
        missing_todo => 'Run phase=verify in the upgraded database of the cluster whose plan reached ready (see connect_upgrade_status).',
        wrong_todo => 'Pass the pg_upgrade plan that reached ready on the old cluster: -v plan=N.',
        failed_todo => 'The fence stays up. Fix the cause in last_error; then SELECT connect_unfence() and connect_resume(connection) end the window by hand.') \gset
    -- the plan records the old cluster's system identifier (connect_upgrade_status does not show it)
    SELECT pg_temp.runbook_require(p.system_identifier IS DISTINCT FROM s.system_identifier,
        'this is the cluster plan ' || :'plan' || ' was prepared on (same system identifier), not the upgraded one',
        'Run the shell steps the prepare phase printed, then phase=verify on the new cluster.')
      FROM connect_guard.upgrade_plan p, pg_control_system() s WHERE p.plan_id::text = :'plan' \gset

    \echo
    \echo '== step 1: wait until the worker of this cluster has completed plan' :plan '(log and high-water marks checked, fence lowered, connections resumed)'
    \set wait_for completed
    \set wait_failed_why 'the upgraded cluster did not complete the plan: '
    \set wait_failed_todo 'The fence stays up (connect_fences). Fix the cause in last_error; SELECT connect_unfence() and connect_resume(connection) end the window by hand.'
    \ir wait_for_plan.psql

    \echo
    \echo '== plan' :plan 'timeline'
    SELECT step, started_at, duration, detail FROM connect_upgrade_timeline(:'plan');
    SELECT connection, state, fenced, hwm_id, log_head, backlog FROM connect_status ORDER BY connection;
    SELECT count(*) AS fences_left FROM connect_fences;
    SELECT current_setting('server_version') AS server_version;

    \echo
    \echo '== next: the upgrade is complete; the connections run again and deliver what was captured before.'
    \echo '   Leave maintenance mode. Then: vacuumdb --all --analyze-in-stages (pg_upgrade does not carry'
    \echo '   statistics over), and remove the old cluster when you no longer need it (delete_old_cluster.sh).'
\endif
