-- runbooks/pg_copy.sql: move the database into a new one with pg_dump |
-- pg_restore (Heroku's pg:copy: for Essential-tier databases, which cannot
-- have a follower, or into a server of another major version).  Two phases:
--
--   on the old database:
--   psql -v ON_ERROR_STOP=1 -f runbooks/pg_copy.sql -d app -v target='host=new-db dbname=app'
--   ... the pg_dump | pg_restore command it prints ...
--   on the new database:
--   psql -v ON_ERROR_STOP=1 -f runbooks/pg_copy.sql -d 'host=new-db dbname=app' -v phase=complete -v plan=7
--
-- Variables (defaults in brackets):
--   phase             prepare | complete [prepare]
--   step_timeout      how long each step of the plan may take, the drain included [10 min]
--   wait_timeout      how long this runbook waits for the plan to be ready [30 min]
--   prepare phase, for the command it prints:
--   source            conninfo of this database for pg_dump [this session's host, port, dbname, user]
--   target            conninfo of the new, empty database for pg_restore [host=NEW-HOST dbname=NEW-DB]
--   restore_options   more pg_restore options, e.g. '--no-owner' (not --jobs: pg_restore reads a pipe) ['']
--   accept            failed preflight checks to go ahead regardless, comma-separated ['']
--   complete phase:
--   plan              the plan to complete [the newest ready copy plan]
--
-- The seed: "Pause Heroku Connect at the same time as you put your
-- application into maintenance mode, and resume it again when you
-- reactivate your application."  Here the plan fences the database first
-- (the application's maintenance mode, enforced), lets the sync service
-- drain the trigger log, pauses every connection ('ready'); the copy then
-- holds a log every connection has consumed, and phase=complete in the new
-- database starts the connections there from a fresh point and resumes them.
-- The old database stays fenced.  The prepare phase first runs
-- connect_preflight('copy') and stops on a failed check (no plan, fence,
-- prepared or long transaction, inactive or logical slot; the sync services
-- IDLE and consuming; the witness), unless -v accept names it.
--
-- Stops with exit code 3 when a precondition fails, saying why and what to do.

\set ON_ERROR_STOP on
\ir common.psql

\if :{?phase} \else \set phase prepare \endif
\if :{?step_timeout} \else \set step_timeout '10 min' \endif
\if :{?wait_timeout} \else \set wait_timeout '30 min' \endif
\if :{?target} \else \set target 'host=NEW-HOST dbname=NEW-DB' \endif
\if :{?restore_options} \else \set restore_options '' \endif
\if :{?accept} \else \set accept '' \endif

SET application_name = 'connect_guard runbook pg_copy';

\echo '== pg_copy (phase' :phase'): preconditions'
SELECT pg_temp.runbook_require_phase(:'phase', '{prepare,complete}',
    'Pass -v phase=prepare on the old database, then -v phase=complete on the new one.') \gset
SELECT pg_temp.runbook_require_primary(
    CASE :'phase' WHEN 'prepare' THEN 'Connect to the database that holds the connections (psql -d ...).'
         ELSE 'Connect to the new database after pg_restore (the dump creates the extension and its catalog).' END,
    'Run the runbook on a primary.') \gset
SELECT pg_temp.runbook_require_plan_timeouts(:'step_timeout', :'wait_timeout') \gset

SELECT :'phase' = 'prepare' AS preparing \gset
\if :preparing
    -- ================================================================ prepare
    SELECT pg_temp.runbook_require_worker() \gset
    SELECT pg_temp.runbook_require_no_plan('upgrade plan %s is already %s (step %s)',
        'Wait for it, or end it with SELECT connect_abort_upgrade(%1$s).') \gset
    \if :{?source} \else
        SELECT concat_ws(' ', 'host=' || pg_temp.ci(:'HOST'), 'port=' || pg_temp.ci(:'PORT'),
                         'dbname=' || pg_temp.ci(:'DBNAME'), 'user=' || pg_temp.ci(:'USER')) AS source \gset
    \endif

    \echo '== preflight (connect_preflight): what the plan would hit'
    SELECT pg_temp.runbook_preflight('copy', NULL, NULL, NULL, :'accept') \gset
    SELECT "check", result, detail FROM pg_temp.preflight ORDER BY n;
    SELECT pg_temp.runbook_require_preflight() \gset

    \echo '== the connections: the plan waits until each has consumed its backlog, so keep the sync service running'
    SELECT connection, adapter, state, hwm_id, log_head, backlog, open_batch FROM connect_status ORDER BY connection;

    \echo
    \echo '== step 1: prepare the plan (the worker drives it: fencing -> draining -> pausing -> ready)'
    SELECT connect_prepare_upgrade('copy', timeout => :'step_timeout'::interval) AS plan \gset
    \echo '   plan' :plan 'prepared'

    \echo '== step 2: wait until plan' :plan 'is ready (the database fenced, the trigger log drained, every connection paused)'
    \set wait_for ready
    \set wait_failed_todo 'Do not copy. SELECT connect_abort_upgrade(%1$s) lowers the fence and resumes the connections; let the sync service drain (or raise step_timeout) and start again.'
    \ir wait_for_plan.psql

    \echo
    \echo '== plan' :plan 'timeline'
    SELECT step, started_at, duration, detail FROM connect_upgrade_timeline(:'plan');
    SELECT connection, state, fenced, hwm_id, log_head, backlog FROM connect_status ORDER BY connection;

    \echo
    \echo '== next: plan' :plan 'is ready; every table of this database refuses writes, every connection is paused'
    \echo '   and has consumed the whole trigger log. The new database must exist and be empty, on a server'
    \echo '   where connect_guard is installed and in shared_preload_libraries. Copy:'
    \echo
    \pset format unaligned
    \pset tuples_only on
    SELECT concat_ws(E'\n',
        format('# ---- copy for plan %s (Heroku: heroku pg:copy) ----', :'plan'),
        'set -o pipefail',
        trim(format('pg_dump --format=custom --dbname=%s | pg_restore --exit-on-error --dbname=%s %s',
                    pg_temp.sh(:'source'), pg_temp.sh(:'target'), :'restore_options')),
        '# ---- end of copy ----');
    \pset tuples_only off
    \pset format aligned
    \echo
    \echo '   Then, in the new database (before any application writes there):'
    \echo '     psql -v ON_ERROR_STOP=1 -f runbooks/pg_copy.sql -v phase=complete -v plan=':plan' -d <the new database>'
    \echo '   To call the copy off instead: SELECT connect_abort_upgrade(':plan');   -- here: lowers the fence, resumes'
\else
    -- =============================================================== complete
    \if :{?plan} \else
        SELECT coalesce(max(plan)::text, '') AS plan FROM connect_upgrade_status
         WHERE method = 'copy' AND status IN ('ready', 'completed') \gset
    \endif
    SELECT pg_temp.runbook_require_plan(:'plan', 'copy', '{ready,completed}',
        missing_todo => 'Run phase=complete in the new database after pg_restore of a database whose copy plan was ready.',
        wrong_todo => 'Pass the copy plan that was ready when the database was dumped: -v plan=N.') \gset
    -- connect_complete_upgrade() would also "complete" the plan in the old
    -- database, resuming its connections under its fence: the old database
    -- is the one that still has the plan's fence up
    SELECT pg_temp.runbook_require(NOT EXISTS (SELECT 1 FROM connect_fences WHERE reason = format('upgrade plan %s (copy)', :'plan')),
        format('this is the database plan %s was prepared on (its fence "upgrade plan %s (copy)" is up here), not the copy', :'plan', :'plan'),
        'Run phase=complete in the new database (psql -d ...), after pg_restore.') \gset

    SELECT status = 'completed' AS already_completed FROM connect_upgrade_status WHERE plan::text = :'plan' \gset
    \if :already_completed
        \echo '== plan' :plan 'was completed in this database already'
    \else
        \echo
        \echo '== step 1: complete plan' :plan 'here: check the copied log, archive it (every connection consumed it),'
        \echo '   start every connection from a fresh point, resume them'
        SELECT connect_complete_upgrade(:'plan') AS result \gset
        \echo '  ' :result
    \endif

    \echo
    \echo '== plan' :plan 'timeline'
    SELECT step, started_at, duration, detail FROM connect_upgrade_timeline(:'plan');
    SELECT connection, state, fenced, hwm_id, log_head, backlog FROM connect_status ORDER BY connection;
    SELECT connection, table_name, object_name, state FROM connect_mappings ORDER BY connection, table_name;
    SELECT current_setting('shared_preload_libraries') ~ '(^|[ ,])"?connect_guard"?([ ,]|$)' AS preloaded \gset

    \echo
    \echo '== next: point the application and the sync service at this database and leave maintenance mode;'
    \echo '   the connections deliver what is written from now on.'
    \echo '   The old database stays fenced with plan' :plan 'ready: drop it when you no longer need it'
    \echo '   (SELECT connect_abort_upgrade(':plan') there would reopen it for writes: only to go back).'
    \if :preloaded
    \else
        \echo '   WARNING: connect_guard is not in this server''s shared_preload_libraries: no fences and no worker'
        \echo '   here until it is added and the server restarted.'
    \endif
\endif
