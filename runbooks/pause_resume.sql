-- runbooks/pause_resume.sql: pause or resume a connection for a maintenance
-- window (Heroku Connect Maintenance Operations, "Pausing Synchronization").
--
--   psql -v ON_ERROR_STOP=1 -f runbooks/pause_resume.sql -v connection=sync -v action=pause \
--        -v reason='disk replacement' -d app
--   psql -v ON_ERROR_STOP=1 -f runbooks/pause_resume.sql -v connection=sync -v action=resume -d app
--
-- Variables (defaults in brackets):
--   connection       the connection [the only one, when there is exactly one]
--   action           pause | resume [pause]
--   block_writes     on: fence the connection's mapped tables while paused [on]
--   reason           shown in connect_status and in the fence's errors [maintenance window]
--   timeout          how long a pause waits for the open batch and for writers in flight [30 s]
--   cancel_writers   on: terminate transactions still writing to the tables instead of waiting [off]
--   wait_timeout     heroku/webhook adapters: how long to wait for the sync service [5 min]
--   accept           failed preflight checks to pause regardless, comma-separated ['']
--
-- Connect pauses only from IDLE: a batch the consumer holds must be
-- finished first (connect_pause waits up to timeout for it).  While paused,
-- the consumer gets no batches; with block_writes, writes to the mapped
-- tables are refused (SQLSTATE 25006), so the trigger log head is final.
-- Without block_writes, writes go on reaching the trigger log and are
-- delivered after the resume.  A pause first runs connect_preflight('pause')
-- for the connection (its sync service as the worker last saw it and its
-- token file; prepared transactions and long writers on its tables, which
-- the fence would wait for) and stops on a failed check unless -v accept
-- names it.  Stops with exit code 3 when a precondition fails, saying why
-- and what to do.

\set ON_ERROR_STOP on
\ir common.psql

\if :{?action} \else \set action pause \endif
\if :{?block_writes} \else \set block_writes on \endif
\if :{?reason} \else \set reason 'maintenance window' \endif
\if :{?timeout} \else \set timeout '30 s' \endif
\if :{?cancel_writers} \else \set cancel_writers off \endif
\if :{?wait_timeout} \else \set wait_timeout '5 min' \endif
\if :{?accept} \else \set accept '' \endif

SET application_name = 'connect_guard runbook pause_resume';

\echo '== pause_resume: preconditions'
SELECT pg_temp.runbook_require_primary('Connect to the database that holds the connection (psql -d ...).') \gset
SELECT pg_temp.runbook_require(:'action' IN ('pause', 'resume'),
    format('unknown action %s', :'action'),
    'Pass -v action=pause or -v action=resume.') \gset
SELECT pg_temp.runbook_require(
    :'block_writes' ~* '^(on|off|true|false|yes|no|1|0)$' AND :'cancel_writers' ~* '^(on|off|true|false|yes|no|1|0)$',
    format('block_writes and cancel_writers must be on or off, not %s and %s', :'block_writes', :'cancel_writers'),
    'For example -v block_writes=off.') \gset
SELECT pg_temp.runbook_require(:'timeout' ~ '^[ 0-9a-z.]+$' AND :'wait_timeout' ~ '^[ 0-9a-z.]+$',
    'timeout and wait_timeout must be intervals', 'For example -v timeout=''2 min''.') \gset

-- the connection: given, or the only one there is
\if :{?connection} \else
    SELECT pg_temp.runbook_only_connection('connection',
        'Pass the connection to pause or resume, e.g. -v connection=sync.') AS connection \gset
\endif
SELECT pg_temp.runbook_require_connection(:'connection', 'connection') \gset

\echo
\echo '== before'
SELECT connection, adapter, state, state_since, paused_because, fenced, fenced_because, backlog, open_batch
  FROM connect_status WHERE connection = :'connection';

SELECT :'action' = 'pause' AS pausing \gset
\if :pausing
    -- ------------------------------------------------------------------ pause
    SELECT pg_temp.runbook_require(state IN ('IDLE', 'POLLING_DB_CHANGES'),
        format('connection "%s" is already %s (since %s, because: %s)', :'connection', state, state_since,
               coalesce(paused_because, 'no reason given')),
        CASE WHEN state = 'RESUMING' THEN 'It is resuming: wait for IDLE (connect_wait_state()), then pause again.'
             ELSE 'Leave it paused, or resume it first with -v action=resume.' END)
      FROM connect_status WHERE connection = :'connection' \gset
    SELECT pg_temp.runbook_require_no_plan() \gset
    \echo '== preflight (connect_preflight): what the pause would hit'
    -- without block_writes there is no fence: nothing to wait for, no library needed for it
    SELECT pg_temp.runbook_preflight('pause', NULL, NULL, :'connection', :'accept',
        CASE WHEN :'block_writes'::boolean THEN '{}'
             ELSE '{shared_preload_libraries,prepared_transactions,long_transactions}' END::text[]) \gset
    SELECT "check", result, detail FROM pg_temp.preflight ORDER BY n;
    SELECT pg_temp.runbook_require_preflight() \gset
    SELECT open_batch IS NOT NULL AS has_open_batch, coalesce(open_batch::text, '') AS open_batch
      FROM connect_status WHERE connection = :'connection' \gset
    \if :has_open_batch
        \echo 'batch' :open_batch 'is open: Connect pauses only when idle, so the pause waits up to' :timeout 'for the consumer to finish it'
    \endif

    \echo
    \echo '== step 1: pause' :connection '(block_writes' :block_writes', reason:' :reason')'
    \echo '   waits for the open batch, stops handing out batches, fences the mapped tables and waits for the writers in flight'
    SELECT s AS pause_state, s = 'PAUSING' AS remote
      FROM connect_pause(:'connection', block_writes => :'block_writes'::boolean, timeout => :'timeout'::interval,
                         reason => :'reason', cancel_writers => :'cancel_writers'::boolean) s \gset
    \echo '   connect_pause() returned' :pause_state
    \if :remote
        \echo '== step 2: the worker asks the sync service to pause; waiting up to' :wait_timeout 'for PAUSED'
        SELECT connect_wait_state(:'connection', 'PAUSED', :'wait_timeout'::interval) AS pause_state \gset
        \echo '   the connection is' :pause_state
    \endif
\else
    -- ----------------------------------------------------------------- resume
    SELECT pg_temp.runbook_require(state IN ('PAUSED', 'PAUSING')
                                   OR (state = 'RESUMING' AND adapter <> 'local'),
        format('connection "%s" is not paused: it is %s since %s', :'connection', state, state_since),
        'Nothing to resume; see connect_status.')
      FROM connect_status WHERE connection = :'connection' \gset
    SELECT pg_temp.runbook_require_no_plan('upgrade plan %s is %s (step %s) and paused the connections itself',
        'Resuming by hand would let the sync service run in the middle of the upgrade. Let the plan complete (it resumes the connections), or end it with SELECT connect_abort_upgrade(plan).') \gset

    \echo
    \echo '== step 1: resume' :connection
    \echo '   lifts the fence of the connection; the consumer gets the backlog in its next batches'
    SELECT s AS resume_state, s = 'RESUMING' AS remote FROM connect_resume(:'connection') s \gset
    \echo '   connect_resume() returned' :resume_state
    \if :remote
        \echo '== step 2: the worker asks the sync service to resume; waiting up to' :wait_timeout 'for IDLE'
        SELECT connect_wait_state(:'connection', 'IDLE', :'wait_timeout'::interval) AS resume_state \gset
        \echo '   the connection is' :resume_state
    \endif
\endif

\echo
\echo '== after'
SELECT connection, adapter, state, state_since, paused_because, fenced, fenced_because, backlog, open_batch
  FROM connect_status WHERE connection = :'connection';
SELECT fence_id, scope, connection, reason, since, fenced_tables
  FROM connect_fences WHERE connection = :'connection' OR scope <> 'connection';

\echo
\if :pausing
    SELECT :'block_writes'::boolean AS fenced \gset
    \echo '== next: the connection is paused; the sync service takes no batches.'
    \if :fenced
        \echo '   Writes to its mapped tables are refused (SQLSTATE 25006) until the resume; reads work.'
    \else
        \echo '   Writes still reach the trigger log; they are delivered after the resume.'
    \endif
    \echo '   Do the maintenance, then resume:'
    \echo '     psql -v ON_ERROR_STOP=1 -f runbooks/pause_resume.sql -v connection=':connection' -v action=resume'
\else
    SELECT count(*) > 0 AS still_fenced FROM connect_fences WHERE scope IN ('mapped', 'database') \gset
    \echo '== next: the connection runs again; the backlog above is delivered by the consumer''s next batches.'
    \if :still_fenced
        \echo '   A maintenance fence (connect_fences, scope mapped or database) is still up: writes stay blocked'
        \echo '   until SELECT connect_unfence(), when the maintenance is over.'
    \endif
\endif
