-- runbooks/kafka_style_cutover.sql: move the consumers of some tables from
-- one sync target (connection) to another, the two ways of "Apache Kafka on
-- Heroku Add-on Migration": in a maintenance window, or by double-writing
-- and cutting over.  The trigger log is the topic; a connection is one
-- add-on's consumer group with its offset (the high-water mark).
--
--   maintenance window (one run):
--   psql -v ON_ERROR_STOP=1 -f runbooks/kafka_style_cutover.sql -d app -v old=sync -v new=sync2
--   double-write (two runs, hours or days apart):
--   psql -v ON_ERROR_STOP=1 -f runbooks/kafka_style_cutover.sql -d app -v variant=double_write -v old=sync -v new=sync2
--   psql -v ON_ERROR_STOP=1 -f runbooks/kafka_style_cutover.sql -d app -v variant=double_write -v phase=cutover \
--        -v old=sync -v new=sync2
--
-- Variables (defaults in brackets):
--   variant          window | double_write [window]
--   phase            double_write only: start | cutover [start]
--   old              the connection to retire [the only one, when there is exactly one]
--   new              the connection that replaces it (created here, mapping the tables old maps)
--   new_adapter      its adapter [old's adapter]
--   new_options      its options, a JSON object ['{}']
--   new_consumers    the roles that take new's batches (connect_grant_consumer: a role consumes
--                    only the connections granted to it), comma-separated; empty: none, only
--                    superusers then [old's consumers, as connect_consumers lists them]
--   drop_old         on: drop old at the end, as the article destroys the old add-on; off keeps it
--                    PAUSED as a way back (a paused connection holds back retention) [on]
--   reason           shown in the fence's errors [moving OLD to NEW]
--   timeout          how long raising the fence and pausing wait for writers and an open batch [30 s]
--   drain_timeout    window: how long old's sync service has to consume its backlog [5 min]
--   catchup_timeout  double_write cutover: how long new has to consume up to old's mark [5 min]
--   wait_timeout     heroku/webhook adapters: how long to wait for the sync service to pause [5 min]
--
-- window (the article's 7 steps):
--   1 provision the new add-on     new is created at the switch point (step 5), so that its
--                                  high-water mark starts exactly where old's ends
--   2-3 maintenance, stop producers a maintenance fence on the mapped tables (connect_fence)
--   4 consumers fully caught up    wait until old's backlog is 0 (old's sync service keeps running:
--                                  pausing it first would freeze the backlog), then pause old
--   5 switch over                  create new, map the same tables, grant it old's consumers
--   6-7 start producers, exit      lower the fence: writes resume and reach new
--   (destroy the old add-on)       drop_old
-- double_write:
--   start:   new maps the same tables alongside old, and is granted old's consumers: every
--            change reaches both from now on (the double write); old's consumers go on.  New
--            never gets what was written before it existed: load the target first (a reload, an
--            initial sync), as the article waits for the retention time.
--   cutover: new must have finished a batch of every table (DATA_SYNCED); pause old (its mark is
--            final), wait until new's mark has reached old's (compare the high-water marks), drop
--            old.  No fence: writes never stop.  Consumers must handle duplicates idempotently.
--
-- Stops with exit code 3 when a precondition fails, saying why and what to do.

\set ON_ERROR_STOP on
\ir common.psql

\if :{?variant} \else \set variant window \endif
\if :{?phase} \else \set phase start \endif
\if :{?new_options} \else \set new_options '{}' \endif
\if :{?drop_old} \else \set drop_old on \endif
\if :{?timeout} \else \set timeout '30 s' \endif
\if :{?drain_timeout} \else \set drain_timeout '5 min' \endif
\if :{?catchup_timeout} \else \set catchup_timeout '5 min' \endif
\if :{?wait_timeout} \else \set wait_timeout '5 min' \endif

SET application_name = 'connect_guard runbook kafka_style_cutover';

\echo '== kafka_style_cutover (variant' :variant', phase' :phase'): preconditions'
SELECT pg_temp.runbook_require(:'variant' IN ('window', 'double_write'),
    format('unknown variant %s', :'variant'),
    'Pass -v variant=window (a maintenance window) or -v variant=double_write.') \gset
SELECT pg_temp.runbook_require_phase(:'phase', '{start,cutover}',
    'With variant=double_write: -v phase=start, later -v phase=cutover.') \gset
SELECT pg_temp.runbook_require_primary('Connect to the database of the connections (psql -d ...).') \gset
SELECT pg_temp.runbook_require(:'drop_old' ~* '^(on|off|true|false|yes|no|1|0)$',
    format('drop_old must be on or off, not %s', :'drop_old'), 'For example -v drop_old=off.') \gset
SELECT pg_temp.runbook_require(:'timeout' ~ '^[ 0-9a-z.]+$' AND :'drain_timeout' ~ '^[ 0-9a-z.]+$'
                               AND :'catchup_timeout' ~ '^[ 0-9a-z.]+$' AND :'wait_timeout' ~ '^[ 0-9a-z.]+$',
    'the timeouts must be intervals', 'For example -v drain_timeout=''15 min''.') \gset
SELECT pg_temp.runbook_require(pg_temp.is_json_object(:'new_options'),
    format('new_options must be a JSON object, not %s', :'new_options'),
    'For example -v new_options=''{"url": "https://hooks.example.com/connect", "secret_file": "/etc/connect_guard/hook.key"}''.') \gset
SELECT pg_temp.runbook_require_no_plan() \gset

\if :{?old} \else
    SELECT pg_temp.runbook_only_connection('old', 'Pass the connection to retire, e.g. -v old=sync.') AS old \gset
\endif
\if :{?new}
\else
    SELECT pg_temp.runbook_require(false, 'the new connection''s name is needed',
        'Pass -v new=NAME (a connection the runbook creates, mapping the tables old maps).') \gset
\endif
SELECT pg_temp.runbook_require(:'old' <> :'new', 'old and new are the same connection',
    'Pass two different names.') \gset
SELECT pg_temp.runbook_require_connection(:'old', 'old') \gset
SELECT state AS old_state, state IN ('IDLE', 'POLLING_DB_CHANGES') AS old_running, state = 'PAUSED' AS old_paused,
       adapter AS old_adapter
  FROM connect_status WHERE connection = :'old' \gset
\if :{?new_adapter} \else \set new_adapter :old_adapter \endif
\if :{?reason} \else \set reason 'moving ':old' to ':new \endif
SELECT count(*) = 1 AS new_exists FROM connect_connections WHERE connection = :'new' \gset
-- new's consumers: a consumer role is bound to the connections granted to it, so old's would
-- get 42501 from new unless they are granted it too (roles dropped since are left out)
\if :{?new_consumers}
    SELECT pg_temp.runbook_consumer_roles(:'new_consumers', '-v new_consumers', 'new_consumers') AS new_consumers \gset
\else
    SELECT pg_temp.runbook_consumers_of(:'old') AS new_consumers \gset
\endif

\echo
\echo '== the connections'
SELECT s.connection, s.adapter, s.state, s.hwm_id, s.log_head, s.backlog, s.open_batch,
       (SELECT string_agg(format('%s (%s)', m.table_name, m.state), ', ' ORDER BY m.table_name::text)
          FROM connect_mappings m WHERE m.connection = s.connection) AS mappings,
       (SELECT string_agg(k.role, ', ' ORDER BY k.role) FROM connect_consumers k WHERE k.connection = s.connection) AS consumers
  FROM connect_status s WHERE s.connection IN (:'old', :'new') ORDER BY s.connection <> :'old';

SELECT :'variant' = 'window' AS window_variant, :'phase' = 'start' AS starting \gset
\if :window_variant
    -- ================================================================= window
    SELECT pg_temp.runbook_require(NOT :'new_exists'::boolean,
        format('connection "%s" exists already', :'new'),
        'The window variant creates it at the switch point, so that it starts exactly where the old one ends. Drop it (connect_drop_connection), or use -v variant=double_write.') \gset
    SELECT pg_temp.runbook_require(:'old_running'::boolean,
        format('connection "%s" is %s: it must run to drain its backlog', :'old', :'old_state'),
        'Resume it first (runbooks/pause_resume.sql -v action=resume).') \gset
    SELECT pg_temp.runbook_require_no_maintenance_fence(
        'Lower it with SELECT connect_unfence() when its maintenance is over, then run again.') \gset

    -- a trial creation, rolled back: bad new_adapter/new_options stop the runbook before the window
    \set create_error ''
    \set ON_ERROR_STOP off
    BEGIN;
    SELECT connect_create_connection(:'new', :'new_adapter', :'new_options'::jsonb) AS new_id \gset
    \if :ERROR
        \set create_error :LAST_ERROR_MESSAGE
    \else
        SELECT pg_temp.runbook_grant_consumers(:'new', :'new_consumers') AS consumers \gset
        \if :ERROR
            \set create_error :LAST_ERROR_MESSAGE
        \endif
    \endif
    ROLLBACK;
    \set ON_ERROR_STOP on
    SELECT pg_temp.runbook_require(:'create_error' = '',
        format('connection "%s" cannot be created: %s', :'new', :'create_error'),
        'Fix -v new_adapter / -v new_options / -v new_consumers; nothing was changed.') \gset

    \echo
    \echo '== step 1 (enter the maintenance window, stop the producers): fence the mapped tables'
    SELECT connect_fence('mapped', reason => :'reason', timeout => :'timeout'::interval) AS fence_id \gset
    \echo '   fence' :fence_id 'is up: writes are refused, the trigger log head is final'

    \echo '== step 2 (consumers fully caught up): wait up to' :drain_timeout 'until' :old 'has consumed its backlog'
    SELECT pg_temp.runbook_drained(:'old', :'drain_timeout') AS drained \gset
    \if :drained
        \echo '   drained'
    \else
        SELECT connection, hwm_id, log_head, backlog, open_batch, last_batch_at FROM connect_high_water_marks WHERE connection = :'old';
        CALL pg_temp.runbook_unfence_and_stop(format('"%s" did not consume its backlog within %s', :'old', :'drain_timeout'),
            'The fence was lowered again; nothing else changed. Check that its sync service runs, then run again, with a longer -v drain_timeout if needed.');
    \endif

    \echo '== step 3: pause' :old '(its mark is final; the fence keeps the writes out)'
    \set ON_ERROR_STOP off
    CALL pg_temp.runbook_pause(:'old', false, :'timeout', :'reason', :'wait_timeout') \gset
    \set ON_ERROR_STOP on
    \if :ERROR
        CALL pg_temp.runbook_unfence_and_stop(format('could not pause "%s": %s', :'old', :'LAST_ERROR_MESSAGE'),
            'The fence was lowered again. Fix the cause and run again.');
    \endif

    \echo '== step 4 (switch over): create' :new '(adapter' :new_adapter') mapping the tables of' :old', consumed by' :'new_consumers'
    \set create_error ''
    \set ON_ERROR_STOP off
    BEGIN;
    SELECT connect_create_connection(:'new', :'new_adapter', :'new_options'::jsonb) AS new_id \gset
    \if :ERROR
        \set create_error :LAST_ERROR_MESSAGE
    \else
        SELECT count(connect_map_table(:'new', m.table_name, m.object_name)) AS mapped
          FROM connect_mappings m WHERE m.connection = :'old' AND m.table_name IS NOT NULL \gset
        \if :ERROR
            \set create_error :LAST_ERROR_MESSAGE
        \else
            SELECT pg_temp.runbook_grant_consumers(:'new', :'new_consumers') AS consumers \gset
            \if :ERROR
                \set create_error :LAST_ERROR_MESSAGE
            \endif
        \endif
    \endif
    COMMIT;   -- a ROLLBACK when something failed
    \set ON_ERROR_STOP on
    SELECT :'create_error' <> '' AS create_failed \gset
    \if :create_failed
        SELECT connect_resume(:'old') AS resumed \gset
        CALL pg_temp.runbook_unfence_and_stop(format('could not create "%s": %s', :'new', :'create_error'),
            format('"%s" was resumed and the fence lowered: back where it started. Fix new_adapter/new_options/new_consumers and run again.', :'old'));
    \endif
    \echo '   created' :new '(id' :new_id'), mapped' :mapped 'table(s), granted' :consumers 'consumer role(s); its mark starts where' :old 'ends'

    \echo '== step 5 (start the producers, exit the window): lower the fence'
    SELECT connect_unfence() AS lowered \gset

    \if :drop_old
        \echo '== step 6 (destroy the old add-on): drop' :old
        SELECT connect_drop_connection(:'old') AS dropped \gset
    \endif
\else
    -- =========================================================== double_write
    \if :starting
        SELECT pg_temp.runbook_require(NOT :'new_exists'::boolean,
            format('connection "%s" exists already', :'new'),
            'It is double-writing already: go on with -v phase=cutover.') \gset
        \echo
        \echo '== step 1 (provision, create the topics): create' :new '(adapter' :new_adapter') mapping the tables of' :old', consumed by' :'new_consumers'
        BEGIN;
        SELECT connect_create_connection(:'new', :'new_adapter', :'new_options'::jsonb) AS new_id \gset
        SELECT count(connect_map_table(:'new', m.table_name, m.object_name)) AS mapped
          FROM connect_mappings m WHERE m.connection = :'old' AND m.table_name IS NOT NULL \gset
        SELECT pg_temp.runbook_grant_consumers(:'new', :'new_consumers') AS consumers \gset
        COMMIT;
        \echo '   created' :new '(id' :new_id'), mapped' :mapped 'table(s), granted' :consumers 'consumer role(s)'
        \echo '== step 2 (double-write): from now on every change of those tables reaches both connections'
    \else
        SELECT pg_temp.runbook_require(:'new_exists'::boolean,
            format('connection "%s" does not exist', :'new'),
            'Start the double write first: -v phase=start.') \gset
        SELECT pg_temp.runbook_require(count(*) = 0,
            format('"%s" does not map %s, which "%s" maps', :'new', string_agg(o.table_name::text, ', '), :'old'),
            format('Map them: SELECT connect_map_table(%L, ''table'', ''object''); then wait until they are DATA_SYNCED.', :'new'))
          FROM connect_mappings o
         WHERE o.connection = :'old' AND o.table_name IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM connect_mappings n WHERE n.connection = :'new' AND n.table_name = o.table_name) \gset
        SELECT pg_temp.runbook_require(count(*) = 0,
            format('mappings of "%s" not in DATA_SYNCED yet: %s', :'new', string_agg(format('%s (%s)', table_name, state), ', ')),
            'Its sync service has not finished a batch of them: start it, let it run (longer than your retention), then run the cutover again.')
          FROM connect_mappings WHERE connection = :'new' AND state <> 'DATA_SYNCED' \gset
        SELECT pg_temp.runbook_require(state IN ('IDLE', 'POLLING_DB_CHANGES'),
            format('connection "%s" is %s: it takes over, it must run', :'new', state),
            'Resume it (runbooks/pause_resume.sql -v action=resume -v connection=...).')
          FROM connect_status WHERE connection = :'new' \gset
        SELECT pg_temp.runbook_require(:'old_running'::boolean OR :'old_paused'::boolean,
            format('connection "%s" is %s', :'old', :'old_state'),
            'Wait until it is IDLE or PAUSED, then run again.') \gset

        \echo
        \if :old_running
            \echo '== step 1 (switch the consumers): pause' :old '(no fence: writes go on, and reach' :new')'
            CALL pg_temp.runbook_pause(:'old', false, :'timeout', :'reason', :'wait_timeout') \gset
        \else
            \echo '== step 1 (switch the consumers):' :old 'is paused already'
        \endif

        \echo '== step 2: wait up to' :catchup_timeout 'until' :new 'has consumed everything' :old 'has (its mark reaches old''s)'
        SELECT pg_temp.runbook_wait(
                   format('SELECT n.hwm_tick >= o.hwm_tick AND n.open_batch IS NULL
                             FROM connect_high_water_marks n, connect_high_water_marks o
                            WHERE n.connection = %L AND o.connection = %L', :'new', :'old'),
                   :'catchup_timeout'::interval) AS caught_up \gset
        SELECT connection, hwm_tick, hwm_id, hwm_txid, log_head, backlog, open_batch, last_batch_at
          FROM connect_high_water_marks WHERE connection IN (:'old', :'new') ORDER BY connection <> :'old';
        SELECT pg_temp.runbook_require(:'caught_up'::boolean,
            format('"%s" has not reached the mark of "%s" within %s', :'new', :'old', :'catchup_timeout'),
            format('"%s" stays paused (its changes are kept in the log for it). Check that the sync service of "%s" runs, then run the cutover again; or resume "%s" to go back.', :'old', :'new', :'old')) \gset
        \echo '   caught up'

        \if :drop_old
            \echo '== step 3 (stop producing to the old add-on, destroy it): drop' :old
            SELECT connect_drop_connection(:'old') AS dropped \gset
        \endif
    \endif
\endif

\echo
\echo '== after'
SELECT s.connection, s.adapter, s.state, s.fenced, s.hwm_id, s.log_head, s.backlog,
       (SELECT string_agg(format('%s (%s)', m.table_name, m.state), ', ' ORDER BY m.table_name::text)
          FROM connect_mappings m WHERE m.connection = s.connection) AS mappings,
       (SELECT string_agg(k.role, ', ' ORDER BY k.role) FROM connect_consumers k WHERE k.connection = s.connection) AS consumers
  FROM connect_status s WHERE s.connection IN (:'old', :'new') ORDER BY s.connection <> :'old';

\echo
\if :window_variant
    \echo '== next: writes are open again; start the sync service of' :new'. It gets every change made after'
    \echo '   the switch and none made before (':old' delivered those).'
\else
    \if :starting
        \echo '== next: start the sync service of' :new 'alongside the one of' :old'. It gets only the changes made'
        \echo '   from now on: load its target with what existed before (a reload, an initial sync), and let it run'
        \echo '   longer than your retention time. Then cut over:'
        \echo '     psql -v ON_ERROR_STOP=1 -f runbooks/kafka_style_cutover.sql -v variant=double_write -v phase=cutover -v old=':old' -v new=':new
    \else
        \echo '== next:' :new 'has taken over: it has consumed everything' :old 'had, and goes on with every new change.'
    \endif
\endif
\if :window_variant
    \set show_drop true
\else
    SELECT NOT :'starting'::boolean AS show_drop \gset
\endif
\if :show_drop
    \if :drop_old
    \else
        \echo '  ' :old 'stays PAUSED as a way back; it holds back the archiving of the trigger log until you drop it:'
        \echo '     SELECT connect_drop_connection(''':old''');'
    \endif
\endif
