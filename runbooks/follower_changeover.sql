-- runbooks/follower_changeover.sql: move the database to a follower (Heroku
-- Connect Maintenance Operations, "Upgrading with a Follower Database").
-- Run it on the current primary:
--
--   psql -v ON_ERROR_STOP=1 -f runbooks/follower_changeover.sql -d app \
--        -v follower_conninfo='host=new-db port=5432 dbname=app user=postgres' -v max_lag=16777216
--   ... later, to promote the follower of plan 7 (or pass -v promote=on the first time):
--   psql -v ON_ERROR_STOP=1 -f runbooks/follower_changeover.sql -d app -v plan=7 -v promote=on
--
-- Variables (defaults in brackets):
--   follower           name the follower is registered under (connect_add_follower) [changeover]
--   follower_conninfo  libpq conninfo of the follower, as this server's worker reaches it; it
--                      registers the follower when it is not registered yet [the registered one]
--   max_lag            bytes the follower may lag when the plan starts: the first check here,
--                      then the plan's own check before it pauses [16777216]
--   step_timeout       how long each step of the plan may take before the plan fails [10 min]
--   wait_timeout       how long this runbook waits for the plan to be ready (and, with promote,
--                      for the hand-over and the completion) [30 min]
--   promote            on: promote the follower once the plan is ready, then wait until the new
--                      primary has completed the plan [off]
--   plan               go on with this plan (one this runbook started earlier) instead of starting one
--   accept             failed preflight checks to go ahead regardless, comma-separated, e.g.
--                      follower_witness (see connect_preflight in the README) ['']
--
-- First connect_preflight('follower'): every blocker the plan would hit (the follower reachable,
-- a caught-up standby of this primary with connect_guard and the same witness; the sync services
-- IDLE; no open plan, fence, prepared or long transaction, inactive or logical slot); a failed
-- check stops the runbook before anything changes, unless -v accept names it.
--
-- The seed's steps and what does them here:
--   1. create the follower, let it catch up        (you: a streaming standby; checked here)
--   2. pause Connect, maintenance mode             (the plan: every connection PAUSED, the database fenced)
--   3. wait for the follower to catch up           (the plan: the follower is fenced too, then replays
--                                                   past the fence; the plan is then 'ready')
--   4. upgrade the follower (pg:upgrade:run)       (see the notes printed at the end)
--   5. promote the follower                        (promote=on: connect_promote_follower())
--   6. resume Connect, leave maintenance mode      (the new primary's worker: lifts its fence, resumes
--                                                   the connections; the old primary stays fenced)
--
-- Stops with exit code 3 when a precondition fails, saying why and what to do.

\set ON_ERROR_STOP on
\ir common.psql

\if :{?runbook} \else \set runbook follower_changeover \endif
\if :{?max_lag} \else \set max_lag 16777216 \endif
\if :{?step_timeout} \else \set step_timeout '10 min' \endif
\if :{?wait_timeout} \else \set wait_timeout '30 min' \endif
\if :{?promote} \else \set promote off \endif
\if :{?accept} \else \set accept '' \endif

SET application_name = 'connect_guard runbook follower_changeover';

\echo '==' :runbook': preconditions'
SELECT pg_temp.runbook_require_primary(
    standby_todo => 'Run the changeover on the current primary; it reaches the follower through follower_conninfo.') \gset
SELECT pg_temp.runbook_require(:'promote' ~* '^(on|off|true|false|yes|no|1|0)$',
    format('promote must be on or off, not %s', :'promote'), 'For example -v promote=on.') \gset
SELECT pg_temp.runbook_require(:'max_lag' ~ '^[0-9]+$',
    format('max_lag must be a number of bytes, not %s', :'max_lag'), 'For example -v max_lag=16777216 (16 MB).') \gset
SELECT pg_temp.runbook_require_plan_timeouts(:'step_timeout', :'wait_timeout') \gset
SELECT pg_temp.runbook_require_worker() \gset

\if :{?plan}
    -- ---------------------------------------------------- go on with a plan
    SELECT pg_temp.runbook_require_plan(:'plan', 'follower', '{running,ready,handed_over}',
        missing_todo => 'See SELECT * FROM connect_upgrade_status.',
        wrong_todo => 'Pass the plan of a follower changeover that is still going on.',
        failed_todo => format('End it with SELECT connect_abort_upgrade(%s) (lifts the fences, resumes), fix the cause and start again.', :'plan')) \gset
    \if :{?follower_conninfo}
    \else
        -- the conninfo the plan uses (it may hold a password: never printed)
        SELECT follower AS follower_conninfo FROM connect_guard.upgrade_plan WHERE plan_id::text = :'plan' \gset
    \endif
    \if :{?follower} \else
        -- the name the plan's follower is registered under, if it is
        SELECT coalesce(min(f.name), '') AS follower
          FROM connect_guard.follower f JOIN connect_guard.upgrade_plan p ON p.follower = f.conninfo
         WHERE p.plan_id::text = :'plan' \gset
    \endif
    \echo 'going on with plan' :plan
\else
    -- ------------------------------------------------------- a new plan
    \if :{?follower} \else \set follower changeover \endif
    SELECT pg_temp.runbook_require_no_plan('upgrade plan %s is already %s (step %s)',
        'Go on with it: -v plan=%1$s, or end it with SELECT connect_abort_upgrade(%1$s).') \gset

    -- the follower: registered, or registered now (in the same transaction
    -- as its check, so that a follower that fails the check is not kept)
    SELECT EXISTS (SELECT 1 FROM connect_follower_lag WHERE source = 'libpq' AND name = :'follower') AS registered \gset
    BEGIN;
    \if :registered
        \if :{?follower_conninfo}
            SELECT pg_temp.runbook_require(f.conninfo = :'follower_conninfo',
                format('follower "%s" is registered with another conninfo (%s)', f.name,
                       (SELECT conninfo FROM connect_follower_lag WHERE source = 'libpq' AND name = f.name)),
                format('Use that one (leave out follower_conninfo), pick another name (-v follower=...), or SELECT connect_remove_follower(%L) first.', f.name))
              FROM connect_guard.follower f WHERE f.name = :'follower' \gset
        \else
            -- the worker's conninfo (it may hold a password: never printed)
            SELECT conninfo AS follower_conninfo FROM connect_guard.follower WHERE name = :'follower' \gset
        \endif
        \echo 'follower' :follower 'is registered'
    \else
        \if :{?follower_conninfo}
        \else
            SELECT pg_temp.runbook_require(false, format('follower "%s" is not registered', :'follower'),
                'Pass its conninfo: -v follower_conninfo=''host=... port=... dbname=... user=...'' (or -v follower=NAME of a registered one).') \gset
        \endif
        \echo 'registering follower' :follower
        SELECT connect_add_follower(:'follower', :'follower_conninfo') \gset
    \endif

    \echo
    \echo '== step 1: preflight (connect_preflight): what the plan would hit, the follower included'
    SELECT pg_temp.runbook_preflight('follower', :'follower_conninfo', :'max_lag'::bigint, NULL, :'accept') \gset
    SELECT "check", result, detail FROM pg_temp.preflight ORDER BY n;
    SELECT pg_temp.runbook_require_preflight() \gset
    -- recorded for connect_follower_lag (the worker checks it every cycle too)
    SELECT count(*) AS checked FROM connect_check_followers() \gset
    COMMIT;
    SELECT name, conninfo, in_recovery, timeline, replay_lsn, lag_bytes, lag_seconds, checked_at
      FROM connect_follower_lag WHERE source = 'libpq' AND name = :'follower';

    \echo '== the connections the plan will pause (an open batch delays the pause until its consumer finishes it)'
    SELECT connection, adapter, state, backlog, open_batch FROM connect_status ORDER BY connection;

    \echo
    \echo '== step 2: prepare the plan (the worker drives it: pausing -> fencing -> fencing_follower -> catching_up -> ready)'
    SELECT connect_prepare_upgrade('follower', follower => :'follower_conninfo',
                                   max_lag_bytes => :'max_lag'::bigint,
                                   timeout => :'step_timeout'::interval) AS plan \gset
    \echo '   plan' :plan 'prepared; if this runbook is interrupted, go on with -v plan=':plan
\endif

\echo
\echo '== step 3: wait until plan' :plan 'is ready (every connection paused, this database and the follower fenced, the follower past the fence)'
\set wait_for ready
\set wait_failed_todo 'If it still runs, wait again with -v plan=%1$s. To go back: SELECT connect_abort_upgrade(%1$s) lowers the fences (the follower''s too) and resumes the connections.'
\ir wait_for_plan.psql

\echo
\echo '== plan' :plan 'timeline'
SELECT step, started_at, duration, detail FROM connect_upgrade_timeline(:'plan');
SELECT plan, method, status, step, follower, follower_lag_bytes, fence_lsn, log_head, elapsed
  FROM connect_upgrade_status WHERE plan::text = :'plan';
SELECT connection, state, paused_because, fenced, fenced_because FROM connect_status ORDER BY connection;

\if :promote
    SELECT status = 'handed_over' AS already_promoted FROM connect_upgrade_status WHERE plan::text = :'plan' \gset
    \if :already_promoted
        \echo '== step 4: the follower was promoted already'
    \else
        \echo
        \echo '== step 4: promote the follower (pg_promote through libpq)'
        SELECT connect_promote_follower(:'plan') AS promoted \gset
        \echo '   ' :promoted
    \endif

    \echo '== step 5: wait until this server sees the hand-over (it stays fenced)'
    SELECT connect_wait_upgrade(:'plan', 'handed_over', :'wait_timeout'::interval) AS reached \gset
    SELECT count(*) AS followers_removed
      FROM (SELECT connect_remove_follower(name) FROM connect_follower_lag
             WHERE source = 'libpq' AND name = :'follower') r \gset

    \echo '== step 6: on the new primary: wait until its worker has completed the plan (fence lifted, connections resumed)'
    \c :follower_conninfo
    \set QUIET on
    SET application_name = 'connect_guard runbook follower_changeover';
    -- a new session: the helpers again
    \ir common.psql
    \set wait_for completed
    \set wait_failed_why 'the new primary did not complete the plan: '
    \set wait_failed_todo 'Its fence stays up (connect_fences). Fix the cause shown in last_error; SELECT connect_unfence() and connect_resume() there end the window by hand.'
    \ir wait_for_plan.psql
    -- the new primary has the follower's registration too (it came through WAL): it is itself now
    SELECT count(*) AS followers_removed
      FROM (SELECT connect_remove_follower(name) FROM connect_follower_lag
             WHERE source = 'libpq' AND name = :'follower') r \gset

    \echo
    \echo '== the new primary: plan' :plan 'timeline'
    SELECT step, started_at, duration, detail FROM connect_upgrade_timeline(:'plan');
    SELECT connection, state, fenced, hwm_id, log_head, backlog FROM connect_status ORDER BY connection;
    SELECT count(*) AS fences_left FROM connect_fences;

    \echo
    \echo '== next:'
    \echo '   - Point the application and the sync service at the new primary (DATABASE_URL, or the custom'
    \echo '     database URL in the sync service''s settings), then leave maintenance mode.'
    \echo '   - The old primary stays fenced (plan' :plan 'handed_over there): shut it down and retire it; do not'
    \echo '     unfence it, or writes could land on both servers.'
    SELECT :'runbook' = 'plan_change' AS is_plan_change \gset
    \if :is_plan_change
    \else
        \echo '   - A streaming follower runs the primary''s major version: to move to a new major version, run'
        \echo '     runbooks/pg_upgrade.sql on the new primary now (a second, short window), or use runbooks/pg_copy.sql'
        \echo '     into a server of the new version instead of a follower.'
    \endif
\else
    \echo
    \echo '== next: plan' :plan 'is ready. This database and the follower are fenced; every connection is PAUSED.'
    \echo '   Heroku''s step 4 (pg:upgrade:run on the follower) has no in-place equivalent for a streaming'
    \echo '   standby, which must run the primary''s major version: promote it, then run runbooks/pg_upgrade.sql'
    \echo '   on the new primary for a new major version (or use runbooks/pg_copy.sql into a new-version server).'
    \echo '   Promote when the application is in maintenance mode:'
    \echo '     psql -v ON_ERROR_STOP=1 -f runbooks/follower_changeover.sql -v plan=':plan' -v promote=on -d ...'
    \echo '   or by hand: SELECT connect_promote_follower(':plan');'
    \echo '   To go back instead: SELECT connect_abort_upgrade(':plan');   -- lowers both fences, resumes'
\endif
