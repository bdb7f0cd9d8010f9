-- runbooks/rollback_recovery.sql: reload the mappings after a database was
-- restored or rolled back (Heroku Connect Maintenance Operations,
-- "Recovering Synchronization After a Database Rollback": Connect reads the
-- trigger log up to a high-water mark, so a database that went back in time
-- leaves the sync target with data the database no longer has).
--
--   psql -v ON_ERROR_STOP=1 -f runbooks/rollback_recovery.sql -d app
--   psql -v ON_ERROR_STOP=1 -f runbooks/rollback_recovery.sql -d app -v connection=sync -v force=on
--
-- Variables (defaults in brackets):
--   connection     the connection whose mappings to recover [every connection]
--   force          on: reload every mapping even though nothing was detected [off]
--   wait_timeout   how long to wait for the worker and for the reloads to be acknowledged [30 min]
--
-- The worker compares the database with its witness (a file outside the
-- data directory) on every cycle; on a rollback it puts the mappings in
-- RELOAD_TABLE, asks the sync services (heroku, webhook adapters) for the
-- reloads, moves the trigger log's ids past those the services saw and
-- fences the mapped tables until every reload is acknowledged (an incident
-- in connect_rollback_incidents).  This runbook shows what was found, waits
-- for the worker to act, or, with force=on when the witness could not tell
-- (missing, new, corrupt, disabled), asks for the reloads itself with
-- connect_reload_mapping(); then waits until the reloads are acknowledged.
-- A local consumer has no sync service to do it: the runbook prints what it
-- must do (reload the table, then connect_mapping_reloaded()).  Stops with
-- exit code 3 when a precondition fails, saying why and what to do.

\set ON_ERROR_STOP on
\ir common.psql

\if :{?connection} \else \set connection '' \endif
\if :{?force} \else \set force off \endif
\if :{?wait_timeout} \else \set wait_timeout '30 min' \endif

SET application_name = 'connect_guard runbook rollback_recovery';

\echo '== rollback_recovery: preconditions'
SELECT pg_temp.runbook_require_primary(
    standby_todo => 'Run the runbook on the primary (after the restore, once it is promoted).') \gset
SELECT pg_temp.runbook_require(:'force' ~* '^(on|off|true|false|yes|no|1|0)$',
    format('force must be on or off, not %s', :'force'), 'For example -v force=on.') \gset
SELECT pg_temp.runbook_require(:'wait_timeout' ~ '^[ 0-9a-z.]+$',
    'wait_timeout must be an interval', 'For example -v wait_timeout=''1 hour''.') \gset
SELECT pg_temp.runbook_require(:'connection' = '' OR EXISTS (SELECT 1 FROM connect_connections WHERE connection = :'connection'),
    format('connection "%s" does not exist', :'connection'),
    'See SELECT connection, adapter FROM connect_connections; leave -v connection out for every connection.') \gset
SELECT CASE WHEN :'connection' = '' THEN 'every connection' ELSE format('connection "%s"', :'connection') END AS which,
       clock_timestamp() AS started, EXISTS (SELECT 1 FROM connect_worker) AS worker_runs \gset

-- the mappings of the connection(s); the open incidents that cover them; the reloads still to be acknowledged
CREATE TEMP VIEW rb_mappings AS
SELECT m.connection, c.adapter, m.table_name, m.table_schema, m.table_relname, m.state, m.state_since
  FROM connect_mappings m JOIN connect_connections c USING (connection)
 WHERE :'connection' = '' OR m.connection = :'connection';
CREATE TEMP VIEW rb_incidents AS
SELECT i.* FROM connect_rollback_incidents i
 WHERE i.resolved_at IS NULL
   AND (:'connection' = '' OR EXISTS (SELECT 1 FROM rb_mappings m WHERE m.table_name = ANY (i.tables)));
CREATE TEMP VIEW rb_pending AS
SELECT m.connection, c.adapter, m.table_name, format('%I.%I', m.table_schema, m.table_relname) AS tbl,
       (SELECT r.status FROM connect_requests r
         WHERE r.connection = m.connection AND r.action = 'reload'
           AND r.table_name = format('%I.%I', m.table_schema, m.table_relname)
         ORDER BY r.request_id DESC LIMIT 1) AS request
  FROM connect_mappings m JOIN connect_connections c USING (connection)
 WHERE m.state = 'RELOAD_TABLE'
   AND (:'connection' = '' OR m.connection = :'connection'
        OR EXISTS (SELECT 1 FROM rb_incidents i WHERE m.table_name = ANY (i.tables)));

\echo
\echo '== step 1: what connect_check_rollback() finds against the witness, and the incidents'
SELECT finding, rollback, connection, detail FROM connect_check_rollback();
SELECT incident_id, detected_at, source, findings, tables, reloads_pending, fence_id, resolved_at, resolution
  FROM connect_rollback_incidents
 WHERE resolved_at IS NULL OR incident_id = (SELECT max(incident_id) FROM connect_rollback_incidents)
 ORDER BY incident_id;
SELECT count(*) > 0 AS detected,
       coalesce(string_agg(DISTINCT finding, ', '), '') AS rollback_findings
  FROM connect_check_rollback()
 WHERE rollback AND (connection IS NULL OR :'connection' = '' OR connection = :'connection') \gset
SELECT (SELECT count(*) FROM rb_incidents) > 0 OR (SELECT count(*) FROM rb_pending) > 0 AS acting,
       coalesce((SELECT string_agg(DISTINCT finding, ', ') FROM connect_check_rollback()), 'none') AS findings \gset

\echo
\if :acting
    SELECT coalesce(string_agg(format('%s (%s)', incident_id, source), ', '), 'none') AS incidents FROM rb_incidents \gset
    \echo '== step 2: the worker (or an earlier reload by hand) has acted already; open incidents:' :incidents
    \echo '   the mappings are in RELOAD_TABLE and their reloads asked for: nothing to ask for again'
\elif :detected
    \echo '== step 2: a rollback was found:' :rollback_findings'; the worker acts on it within a cycle'
    SELECT pg_temp.runbook_require(:'worker_runs'::boolean OR :'force'::boolean,
        format('the connect_guard worker of database %s is not running: no one acts on the rollback', current_database()),
        'Start it (connect_guard in shared_preload_libraries; see connect_worker and the server log) and run again: it also moves the trigger log''s ids past those the sync service saw. -v force=on asks for the reloads by hand instead, without that.') \gset
    \if :worker_runs
        \echo '   waiting up to' :wait_timeout 'for its incident'
        SELECT pg_temp.runbook_wait(
                   format('SELECT EXISTS (SELECT 1 FROM connect_rollback_incidents WHERE source = ''worker'' AND (resolved_at IS NULL OR detected_at >= %L))',
                          :'started'),
                   :'wait_timeout'::interval) AS acting \gset
        SELECT pg_temp.runbook_require(:'acting'::boolean,
            format('the worker did not act on the rollback within %s', :'wait_timeout'),
            'See connect_worker and the server log (WARNING: connect_guard: ...); run again, or with -v force=on to ask for the reloads by hand.') \gset
        SELECT coalesce(string_agg(incident_id::text, ', '), 'none') AS incidents FROM rb_incidents \gset
        \echo '   the worker acted: incident' :incidents
    \endif
\endif
\if :acting
\else
    SELECT pg_temp.runbook_require(:'force'::boolean,
        format('nothing was detected for %s: connect_check_rollback() finds no rollback (%s) and no incident is open%s',
               :'which', :'findings',
               (SELECT format(' (the last one, %s, was resolved at %s: %s)', incident_id, resolved_at, resolution)
                  FROM connect_rollback_incidents WHERE resolved_at IS NOT NULL ORDER BY incident_id DESC LIMIT 1)),
        'If this database was restored or rolled back and the witness could not tell (witness_missing, witness_new, witness_disabled, witness_corrupt: see the details above), run again with -v force=on to reload every mapping.') \gset
    SELECT pg_temp.runbook_require(count(*) > 0, format('%s has no mappings to reload', :'which'),
        'See connect_mappings.') FROM rb_mappings WHERE table_name IS NOT NULL \gset
    \echo '== step 2 (force=on): connect_reload_mapping() for every mapping of' :which
    \echo '   each goes to RELOAD_TABLE; its sync service is asked (heroku, webhook); its table is fenced until acknowledged'
    SELECT count(connect_reload_mapping(connection, table_name)) AS requests, count(*) AS reloads
      FROM rb_mappings WHERE table_name IS NOT NULL \gset
    \echo '   asked for' :reloads 'reload(s),' :requests 'of them from a sync service'
    SELECT count(*) > 0 AS dropped FROM rb_mappings WHERE table_name IS NULL \gset
    \if :dropped
        \echo '   not reloaded: mapped tables that no longer exist (unmap them):'
        SELECT connection, format('%I.%I', table_schema, table_relname) AS dropped_table
          FROM rb_mappings WHERE table_name IS NULL;
    \endif
\endif

\echo
\echo '== step 3: waiting up to' :wait_timeout 'for the sync services to acknowledge the reloads'
SELECT pg_temp.runbook_wait(
           'SELECT NOT EXISTS (SELECT 1 FROM rb_pending WHERE adapter <> ''local'' AND request = ''pending'')',
           :'wait_timeout'::interval) AS waited \gset
SELECT count(*) FILTER (WHERE adapter <> 'local') AS remote_left, count(*) FILTER (WHERE adapter = 'local') AS local_left,
       count(*) FILTER (WHERE adapter <> 'local' AND request = 'pending') AS remote_waiting
  FROM rb_pending \gset
SELECT :remote_left > 0 AS remote_failed, :local_left > 0 AS local_waiting \gset
\if :remote_failed
    \echo '   reload requests not acknowledged:'
    SELECT r.request_id, r.connection, r.table_name, r.status, r.phase, r.attempts, r.last_http_status, r.last_error,
           r.remote_state, r.created_at, r.updated_at
      FROM connect_requests r JOIN rb_pending p ON p.connection = r.connection AND r.table_name = p.tbl
     WHERE r.action = 'reload' ORDER BY r.request_id;
\elif :local_waiting
    \echo '   only local connections are left: they have no sync service; their consumer acknowledges'
\else
    \echo '   every reload was acknowledged'
\endif

\echo
\echo '== after'
SELECT connection, adapter, state, fenced, fenced_because, hwm_id, log_head, backlog
  FROM connect_status WHERE :'connection' = '' OR connection = :'connection' ORDER BY connection;
SELECT connection, table_name, object_name, state, state_since
  FROM connect_mappings WHERE :'connection' = '' OR connection = :'connection' ORDER BY connection, table_name;
SELECT incident_id, source, tables, reloads_pending, fence_id, resolved_at, resolution
  FROM connect_rollback_incidents WHERE resolved_at IS NULL OR resolved_at >= :'started' ORDER BY incident_id;

\echo
\if :local_waiting
    \echo '== next: the consumer of each local connection must reload these tables (read each one whole again and'
    \echo '   replace what it holds), then acknowledge; the tables refuse writes (SQLSTATE 25006) until then:'
    \pset format unaligned
    \pset tuples_only on
    SELECT format('     SELECT connect_mapping_reloaded(%L, %L);', connection, tbl)
      FROM rb_pending WHERE adapter = 'local' ORDER BY connection, tbl;
    \pset tuples_only off
    \pset format aligned
\endif
\if :remote_failed
    SELECT pg_temp.runbook_require(:remote_waiting = 0,
        format('%s reload(s) were not acknowledged within %s', :remote_waiting, :'wait_timeout'),
        'The tables stay fenced until they are. Check the sync service (connect_requests above); run this runbook again to go on waiting.') \gset
    SELECT pg_temp.runbook_require(false,
        format('%s reload request(s) failed or are missing: %s', :remote_left,
               (SELECT string_agg(format('%s %s (%s)', connection, tbl, coalesce(request, 'no request')), ', ') FROM rb_pending
                 WHERE adapter <> 'local')),
        (SELECT 'Fix the cause (last_error above), then ask again: '
                || string_agg(format('SELECT connect_reload_mapping(%L, %L);', connection, tbl), ' ' ORDER BY connection, tbl)
                || ' Then run this runbook again to wait.' FROM rb_pending WHERE adapter <> 'local')) \gset
\endif
\if :local_waiting
    \echo '   The last acknowledgement of an incident resolves it and lowers its fence (connect_rollback_incidents,'
    \echo '   connect_fences); run this runbook again to see what is left.'
\else
    \echo '== next: every reload is acknowledged: the mappings are DATA_SYNCED, the incident is resolved and its fence'
    \echo '   is down: writes work again. Once the worker has written its witness again (every cycle after a'
    \echo '   change), SELECT * FROM connect_check_rollback() says no_rollback.'
\endif
