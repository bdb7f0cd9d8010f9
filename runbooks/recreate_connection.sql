-- runbooks/recreate_connection.sql: delete a connection and create it again
-- from its exported configuration (Heroku Connect Maintenance Operations,
-- "Recreating a Connection": a reloaded sandbox org, a move off an
-- Essential-tier database).  Two phases:
--
--   psql -v ON_ERROR_STOP=1 -f runbooks/recreate_connection.sql -d app -v connection=sync \
--        -v file=/root/sync.json
--   ... recreate the sync service's side (Heroku: addons:destroy, addons:create, connect:sf:auth) ...
--   psql -v ON_ERROR_STOP=1 -f runbooks/recreate_connection.sql -d app -v phase=import \
--        -v file=/root/sync.json [-v options='{"token_file": "/etc/connect_guard/new.token"}']
--
-- Variables (defaults in brackets):
--   phase          export | import [export]
--   file           the JSON configuration, written by export, read by import [connect_CONNECTION.json]
--   export phase:
--   connection     the connection [the only one, when there is exactly one]
--   reason         shown in the fences' errors [recreating connection CONNECTION]
--   timeout        how long raising a fence and pausing wait for writers and an open batch [30 s]
--   drain_timeout  how long the sync service has to consume the backlog [5 min]
--   wait_timeout   heroku/webhook adapters: how long to wait for the sync service to pause, and
--                  heroku: for Connect's export and import of the configuration [5 min]
--   import phase:
--   connection     the name of the new connection [the name in the file]
--   options        a JSON object merged into the exported options; needed for the values the
--                  views redact ("********": tokens, secrets and their files) ['{}']
--   consumers      the roles that take the new connection's batches (connect_grant_consumer: a
--                  role consumes only the connections granted to it), comma-separated; empty:
--                  none, only superusers then [the exported consumers, and when the paused
--                  connection of that name is replaced, the roles granted it since the export]
--
-- export: checks that every mapping is DATA_SYNCED (all data reached the
-- sync target), stops writes to the mapped tables (a maintenance fence),
-- lets the sync service consume the whole backlog, pauses the connection
-- with its own fence and lowers the maintenance fence, then writes the
-- configuration: adapter, options (secrets redacted by connect_connections),
-- mappings (table, object name, state, remote id), high-water mark, the
-- roles that consume it (connect_consumers), and under connect_config the
-- mappings' configuration in Connect's export format (connect_export_config():
-- a heroku connection's is Connect's own, fetched through the worker, as
-- `heroku connect:export` does).
-- import: checks connect_config key by key first; in one transaction, locks
-- the mapped tables against writers, drops the paused connection of that
-- name (if this database has it), creates the connection, maps every table,
-- grants it to the consumer roles (a consumer role is bound to the
-- connections granted to it: the sync service's role would get 42501 from
-- the new one otherwise; a role that does not exist here stops the import
-- before anything changes) and gives the mappings their configuration
-- (connect_import_config()), so that no write falls between the old
-- connection and the new one and its sync service consumes it at once; the
-- new high-water mark starts there.  A heroku connection then sends the
-- configuration to Connect's import endpoint and waits for its answer (the
-- seed's `heroku connect:import`).  Stops with exit code 3 when a
-- precondition fails.

\set ON_ERROR_STOP on
\ir common.psql

\if :{?phase} \else \set phase export \endif
\if :{?timeout} \else \set timeout '30 s' \endif
\if :{?drain_timeout} \else \set drain_timeout '5 min' \endif
\if :{?wait_timeout} \else \set wait_timeout '5 min' \endif
\if :{?options} \else \set options '{}' \endif

SET application_name = 'connect_guard runbook recreate_connection';

\echo '== recreate_connection (phase' :phase'): preconditions'
SELECT pg_temp.runbook_require_phase(:'phase', '{export,import}',
    'Pass -v phase=export (the default), then -v phase=import.') \gset
SELECT pg_temp.runbook_require_primary('Connect to the database of the connection (psql -d ...).') \gset
SELECT pg_temp.runbook_require(:'timeout' ~ '^[ 0-9a-z.]+$' AND :'drain_timeout' ~ '^[ 0-9a-z.]+$'
                               AND :'wait_timeout' ~ '^[ 0-9a-z.]+$',
    'timeout, drain_timeout and wait_timeout must be intervals', 'For example -v drain_timeout=''15 min''.') \gset
SELECT pg_temp.runbook_require_no_plan() \gset

SELECT :'phase' = 'export' AS exporting \gset
\if :exporting
    -- ================================================================= export
    \if :{?connection} \else
        SELECT pg_temp.runbook_only_connection('connection',
            'Pass the connection to export, e.g. -v connection=sync.') AS connection \gset
    \endif
    SELECT pg_temp.runbook_require_connection(:'connection', 'connection') \gset
    \if :{?file} \else \set file connect_:connection.json \endif
    \if :{?reason} \else \set reason 'recreating connection ':connection \endif

    \echo
    \echo '== step 1: every mapping of' :connection 'must be DATA_SYNCED (all its data reached the sync target)'
    SELECT connection, table_name, object_name, state, state_since, remote_id
      FROM connect_mappings WHERE connection = :'connection' ORDER BY table_name;
    SELECT pg_temp.runbook_require(count(*) = 0,
        format('mappings not in DATA_SYNCED: %s', string_agg(format('%s (%s)', coalesce(table_name::text, table_schema || '.' || table_relname), state), ', ')),
        'Wait until the sync service has synced them (a first finished batch sets DATA_SYNCED; a reload ends in it; SCHEMA_CHANGED: runbooks/field_change.sql), or unmap the ones you give up, then run again.')
      FROM connect_mappings WHERE connection = :'connection' AND state <> 'DATA_SYNCED' \gset
    SELECT pg_temp.runbook_require(count(*) = 0,
        format('mapped tables that no longer exist: %s', string_agg(table_schema || '.' || table_relname, ', ')),
        format('Unmap them first (their mapping would not import): see connect_mappings where table_name IS NULL.'))
      FROM connect_mappings WHERE connection = :'connection' AND table_name IS NULL \gset

    SELECT state AS state, state IN ('IDLE', 'POLLING_DB_CHANGES') AS running, state = 'PAUSED' AS paused
      FROM connect_status WHERE connection = :'connection' \gset
    SELECT pg_temp.runbook_require(:'running'::boolean OR :'paused'::boolean,
        format('connection "%s" is %s', :'connection', :'state'),
        'Wait until it is PAUSED or IDLE (connect_wait_state()), then run again.') \gset
    \if :running
        SELECT pg_temp.runbook_require_no_maintenance_fence(
            'This runbook raises its own while the backlog drains: lower that one with SELECT connect_unfence() when its maintenance is over, then run again.') \gset

        \echo
        \echo '== step 2: stop the writes to the mapped tables (a maintenance fence); the sync service keeps consuming'
        SELECT connect_fence('mapped', reason => :'reason', timeout => :'timeout'::interval) AS fence_id \gset
        \echo '   fence' :fence_id 'is up: the trigger log head is final'

        \echo '== step 3: wait up to' :drain_timeout 'for the sync service to consume the backlog of' :connection
        SELECT pg_temp.runbook_drained(:'connection', :'drain_timeout') AS drained \gset
        \if :drained
            \echo '   drained'
        \else
            SELECT backlog, open_batch FROM connect_high_water_marks WHERE connection = :'connection';
            CALL pg_temp.runbook_unfence_and_stop(
                format('the sync service did not consume the backlog of "%s" within %s', :'connection', :'drain_timeout'),
                'The maintenance fence was lowered again; nothing else changed. Check that the sync service runs (connect_status: last_batch_at), then run again, with a longer -v drain_timeout if needed.');
        \endif

        \echo '== step 4: pause' :connection 'with its own fence, then lower the maintenance fence'
        \set ON_ERROR_STOP off
        CALL pg_temp.runbook_pause(:'connection', true, :'timeout', :'reason', :'wait_timeout') \gset
        \set ON_ERROR_STOP on
        \if :ERROR
            CALL pg_temp.runbook_unfence_and_stop(format('could not pause "%s": %s', :'connection', :'LAST_ERROR_MESSAGE'),
                'The maintenance fence was lowered again. Fix the cause and run again.');
        \endif
        SELECT connect_unfence() AS lowered \gset
        \echo '   the connection is' :pause_state
    \else
        \echo
        \echo '== steps 2-4:' :connection 'is paused already: its backlog must be empty and its tables fenced'
        SELECT pg_temp.runbook_require(backlog = 0 AND open_batch IS NULL,
            format('connection "%s" is paused with %s entries it has not consumed', :'connection', backlog),
            'Those changes would be lost with it. Resume it (runbooks/pause_resume.sql -v action=resume) and run the export again: it drains the backlog before it pauses.')
          FROM connect_status WHERE connection = :'connection' \gset
        SELECT pg_temp.runbook_require(fenced,
            format('connection "%s" is paused without a fence: writes to its tables still reach the log', :'connection'),
            'Resume it (runbooks/pause_resume.sql -v action=resume) and run the export again: it pauses with block_writes.')
          FROM connect_status WHERE connection = :'connection' \gset
    \endif

    \echo
    \echo '== step 5: export the configuration to' :file
    \echo '   the mappings'' configuration in Connect''s export format (connect_export_config)'
    SELECT connect_export_config(:'connection') AS connect_config \gset
    SELECT :'connect_config'::jsonb ? 'request_id' AS asked_connect,
           coalesce(:'connect_config'::jsonb ->> 'request_id', '') AS export_request \gset
    \if :asked_connect
        \echo '   asked Heroku Connect for its export (request' :export_request'); waiting up to' :wait_timeout
        \set ON_ERROR_STOP off
        SELECT connect_wait_config(:'connection', :'wait_timeout'::interval) AS connect_config \gset
        \set ON_ERROR_STOP on
        \if :ERROR
            SELECT pg_temp.runbook_require(false,
                format('could not fetch Connect''s configuration of "%s": %s', :'connection', :'LAST_ERROR_MESSAGE'),
                'The connection stays paused and fenced; nothing else changed. Fix the cause (connect_requests), then run the export again: it goes on from the paused connection.') \gset
        \endif
    \endif
    SELECT jsonb_array_length(:'connect_config'::jsonb -> 'mappings') AS configured \gset
    \echo '  ' :configured 'mapping(s) configured'
    \pset format unaligned
    \pset tuples_only on
    SELECT jsonb_pretty(jsonb_build_object(
               'format', 'connect_guard connection 1',
               'exported_at', clock_timestamp(),
               'database', current_database(),
               'connection', c.connection,
               'adapter', c.adapter,
               'options', c.options,
               'mappings', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                       'table_schema', m.table_schema, 'table_name', m.table_relname,
                                       'object_name', m.object_name, 'state', m.state, 'remote_id', m.remote_id)
                                   ORDER BY m.table_schema, m.table_relname), '[]')
                              FROM connect_mappings m WHERE m.connection = c.connection),
               'high_water_mark', (SELECT jsonb_build_object('hwm_id', h.hwm_id, 'log_head', h.log_head)
                                     FROM connect_high_water_marks h WHERE h.connection = c.connection),
               'consumers', to_jsonb(string_to_array(pg_temp.runbook_consumers_of(c.connection), ',')),
               'connect_config', :'connect_config'::jsonb))
      FROM connect_connections c WHERE c.connection = :'connection' \g :file
    \pset tuples_only off
    \pset format aligned
    SELECT connection, state, paused_because, fenced, hwm_id, log_head, backlog FROM connect_status WHERE connection = :'connection';

    \echo
    \echo '== next:' :connection 'is paused and its tables refuse writes; its configuration is in' :file
    \echo '   Values shown as "********" were redacted: have them ready for the import (-v options=...).'
    \echo '   Recreate the sync service''s side (Heroku: heroku addons:destroy / addons:create herokuconnect /'
    \echo '   connect:sf:auth), then import, in this database (drops the paused connection and creates the new'
    \echo '   one in one transaction) or in the new one:'
    \echo '     psql -v ON_ERROR_STOP=1 -f runbooks/recreate_connection.sql -v phase=import -v file=':file
\else
    -- ================================================================= import
    SELECT pg_temp.runbook_require(:'options' <> '' AND pg_temp.is_json_object(:'options'),
        format('options must be a JSON object, not %s', :'options'),
        'For example -v options=''{"token_file": "/etc/connect_guard/connect.token"}''.') \gset
    \if :{?file}
    \else
        SELECT pg_temp.runbook_require(false, 'the import needs -v file=PATH',
            'Pass the JSON file the export phase wrote.') \gset
    \endif
    \set file_readable `test -r :'file' && echo true || echo false`
    SELECT pg_temp.runbook_require(:'file_readable'::boolean, format('cannot read %s', :'file'),
        'Pass the path of the JSON file the export wrote (psql reads it, on the machine it runs on).') \gset
    \set config `cat :'file'`
    SELECT pg_temp.runbook_require(pg_temp.is_json_object(:'config'),
        format('%s does not hold a JSON object', :'file'), 'Pass the JSON file the export wrote.') \gset
    SELECT pg_temp.runbook_require(
        (:'config'::jsonb ->> 'format') = 'connect_guard connection 1'
        AND jsonb_typeof(:'config'::jsonb -> 'mappings') = 'array'
        AND (:'config'::jsonb ->> 'adapter') IS NOT NULL AND (:'config'::jsonb ->> 'connection') IS NOT NULL,
        format('%s is not a connection exported by this runbook', :'file'),
        'Pass the JSON file phase=export wrote (format "connect_guard connection 1").') \gset
    \if :{?connection} \else
        SELECT :'config'::jsonb ->> 'connection' AS connection \gset
    \endif
    -- the mappings' configuration in Connect's format (exports from before it was added have none)
    SELECT :'config'::jsonb ? 'connect_config' AS has_connect_config \gset
    \if :has_connect_config
        SELECT pg_temp.runbook_require(connect_guard.config_problem(:'config'::jsonb -> 'connect_config') IS NULL,
            format('%s: connect_config: %s', :'file', connect_guard.config_problem(:'config'::jsonb -> 'connect_config')),
            'The file was changed since the export: fix the key named (the format is Connect''s export file), then import again.') \gset
    \endif

    \echo
    \echo '== step 1: the configuration in' :file
    SELECT :'config'::jsonb ->> 'connection' AS exported_connection, :'config'::jsonb ->> 'adapter' AS adapter,
           :'config'::jsonb -> 'options' AS options, :'config'::jsonb ->> 'exported_at' AS exported_at,
           :'config'::jsonb ->> 'database' AS database;
    SELECT m ->> 'table_schema' AS table_schema, m ->> 'table_name' AS table_name, m ->> 'object_name' AS object_name,
           m ->> 'state' AS exported_state
      FROM jsonb_array_elements(:'config'::jsonb -> 'mappings') m;

    -- the options: as exported, without the redacted values, with -v options on top
    SELECT (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}') FROM jsonb_each(:'config'::jsonb -> 'options') e
             WHERE e.value <> '"********"') || :'options'::jsonb AS new_options,
           coalesce((SELECT string_agg(e.key, ', ' ORDER BY e.key) FROM jsonb_each(:'config'::jsonb -> 'options') e
                      WHERE e.value = '"********"'
                        AND NOT EXISTS (SELECT 1 FROM jsonb_object_keys(:'options'::jsonb) o
                                         WHERE regexp_replace(o, '_file$', '') = regexp_replace(e.key, '_file$', ''))),
                    '') AS missing_secrets \gset
    SELECT pg_temp.runbook_require(:'missing_secrets' = '',
        format('the export has redacted values ("********") for: %s', :'missing_secrets'),
        'Give them with -v options, e.g. -v options=''{"token_file": "/etc/connect_guard/connect.token"}'' (a file the server reads; or the inline "token"/"secret").') \gset
    SELECT pg_temp.runbook_require(count(*) = 0,
        format('tables of the export that this database lacks, or that have no primary key: %s',
               string_agg(format('%I.%I', m ->> 'table_schema', m ->> 'table_name'), ', ')),
        'Create or restore them first (runbooks/pg_copy.sql copies a whole database), then import.')
      FROM jsonb_array_elements(:'config'::jsonb -> 'mappings') m
     WHERE NOT EXISTS (SELECT 1 FROM pg_index i
                        WHERE i.indisprimary
                          AND i.indrelid = to_regclass(format('%I.%I', m ->> 'table_schema', m ->> 'table_name'))) \gset

    -- the consumer roles: the export's, and those granted the paused connection this import
    -- replaces since the export (a role that does not exist here stops: its sync service would
    -- get 42501); -v consumers names others
    \if :{?consumers}
        SELECT pg_temp.runbook_consumer_roles(:'consumers', '-v consumers', 'consumers') AS consumer_roles \gset
    \else
        SELECT pg_temp.runbook_consumer_roles(
                   concat_ws(',', (SELECT string_agg(r, ',') FROM jsonb_array_elements_text(
                                       CASE WHEN jsonb_typeof(:'config'::jsonb -> 'consumers') = 'array'
                                            THEN :'config'::jsonb -> 'consumers' ELSE '[]' END) r),
                             pg_temp.runbook_consumers_of(:'connection')),
                   format('the export (%s)', :'file'), 'consumers') AS consumer_roles \gset
    \endif

    SELECT count(*) = 1 AS replacing, coalesce(min(state), '') AS old_state, coalesce(bool_or(fenced), false) AS old_fenced
      FROM connect_status WHERE connection = :'connection' \gset
    \if :replacing
        SELECT pg_temp.runbook_require(:'old_state' = 'PAUSED',
            format('connection "%s" exists here and is %s', :'connection', :'old_state'),
            'The import replaces only a PAUSED connection (phase=export pauses it); or import under another name: -v connection=NEW_NAME.') \gset
        \echo
        \echo '== step 2: in one transaction: lock the mapped tables against writers, drop the paused' :connection','
        \echo '   create it again, map its tables, grant it to its consumers (its new high-water mark starts here)'
    \else
        \echo
        \echo '== step 2: in one transaction: lock the mapped tables against writers, create' :connection', map its tables,'
        \echo '   grant it to its consumers'
    \endif
    BEGIN;
    SELECT format('LOCK TABLE %s IN SHARE MODE', string_agg(format('%I.%I', m ->> 'table_schema', m ->> 'table_name'), ', '))
      FROM jsonb_array_elements(:'config'::jsonb -> 'mappings') m HAVING count(*) > 0 \gexec
    \if :replacing
        SELECT connect_drop_connection(:'connection') AS dropped \gset
        \echo '   dropped the old' :connection
    \endif
    SELECT connect_create_connection(:'connection', :'config'::jsonb ->> 'adapter', :'new_options'::jsonb) AS connection_id \gset
    \echo '   created' :connection '(id' :connection_id')'
    SELECT count(connect_map_table(:'connection', format('%I.%I', m ->> 'table_schema', m ->> 'table_name')::regclass,
                                   m ->> 'object_name')) AS mapped
      FROM jsonb_array_elements(:'config'::jsonb -> 'mappings') m \gset
    \echo '   mapped' :mapped 'table(s)'
    -- its consumers take its batches from the commit on
    SELECT pg_temp.runbook_grant_consumers(:'connection', :'consumer_roles') AS granted \gset
    \echo '   granted it to' :granted 'consumer role(s) (':consumer_roles')'
    \if :has_connect_config
        SELECT connect_import_config(:'connection', :'config'::jsonb -> 'connect_config') AS import_report \gset
        SELECT coalesce(:'import_report'::jsonb ->> 'request_id', '') AS import_request,
               jsonb_array_length(:'import_report'::jsonb -> 'updated') AS configured \gset
        \echo '   gave' :configured 'mapping(s) their configuration'
    \endif
    COMMIT;
    \if :has_connect_config
        SELECT :'import_request' <> '' AS importing_to_connect \gset
        \if :importing_to_connect
            \echo
            \echo '== step 3: Heroku Connect imports the configuration (import request' :import_request'); waiting up to' :wait_timeout
            \set ON_ERROR_STOP off
            SELECT connect_wait_config(:'connection', :'wait_timeout'::interval) AS connect_answer \gset
            \set ON_ERROR_STOP on
            \if :ERROR
                SELECT pg_temp.runbook_require(false,
                    format('Heroku Connect did not import the configuration: %s', :'LAST_ERROR_MESSAGE'),
                    format('The connection %s runs here with its tables mapped; only Connect''s side is missing. Fix what the error names, then SELECT connect_import_config(%L, <the connect_config of %s>) and connect_wait_config(%L).',
                           :'connection', :'connection', :'file', :'connection')) \gset
            \endif
            \echo '   Connect answered' :connect_answer
        \endif
    \endif

    \echo
    \echo '== after'
    SELECT connection, adapter, state, mappings, options,
           (SELECT string_agg(k.role, ', ' ORDER BY k.role) FROM connect_consumers k WHERE k.connection = c.connection) AS consumers
      FROM connect_connections c WHERE connection = :'connection';
    SELECT connection, table_name, object_name, state FROM connect_mappings WHERE connection = :'connection' ORDER BY table_name;
    SELECT connection, state, fenced, hwm_id, log_head, backlog FROM connect_status WHERE connection = :'connection';

    \echo
    \echo '== next: the sync service consumes' :connection 'from now on; its mappings are INITIAL until its first'
    \echo '   finished batch (DATA_SYNCED). Writes to the tables are open again (the old fence went with the old'
    \echo '   connection).'
    SELECT (:'config'::jsonb ->> 'adapter') = 'heroku' AS is_heroku \gset
    \if :is_heroku
        \echo '   heroku adapter: connection_id must be the NEW Connect connection''s id (pass it in -v options if'
        \echo '   the add-on was recreated); SELECT connect_refresh(''':connection''') fills in the mappings'' remote ids.'
    \endif
\endif
