-- runbooks/field_change.sql: a mapped table changed, or a field definition
-- changed in Salesforce (Heroku Connect Maintenance Operations, "Changing
-- Field Definitions in Salesforce"): show what differs between each mapping
-- and its table, what to do about each difference, and save the mapping
-- (the way out of SCHEMA_CHANGED).
--
--   psql -v ON_ERROR_STOP=1 -f runbooks/field_change.sql -d app                       # show
--   psql -v ON_ERROR_STOP=1 -f runbooks/field_change.sql -d app -v connection=sync \
--        -v table=salesforce.contact -v action=save
--
-- Variables (defaults in brackets):
--   connection     the connection [every connection]
--   table          the mapped table, as schema.table [every mapped table of the connection]
--   action         show | save [show]
--   reload         save: auto (when writes may have been hidden) | on | off [auto]
--   fetch          heroku: on: first fetch Connect's configuration, so that the fields compared
--                  are Connect's current ones [on]
--   wait_timeout   heroku: how long to wait for Connect's export; save: for the reload to be
--                  acknowledged by a heroku or webhook sync service [30 min]
--
-- The seed's way, and this runbook's: Connect does not change a table when a
-- field changes in Salesforce.  After changing a field there, edit the
-- mapping in Connect's dashboard and save it (a simple change, such as a
-- longer field: Edit, Save; a complex one, such as a new type: deselect the
-- field, save, select it again, save: Connect drops the column, adds it and
-- loads its data again).  connect_guard notices the table's change at once
-- (the mapping is SCHEMA_CHANGED, connect_schema_drift says what differs)
-- and compares Connect's fields with the columns; action=save then puts the
-- table's capture triggers back as connect_guard installs them, accepts
-- the table as it is, and asks for a reload when writes may have been
-- hidden (connect_save_mapping()).  Stops with exit code 3 when a
-- precondition fails, saying why and what to do.

\set ON_ERROR_STOP on
\ir common.psql

\if :{?connection} \else \set connection '' \endif
\if :{?table} \else \set table '' \endif
\if :{?action} \else \set action show \endif
\if :{?reload} \else \set reload auto \endif
\if :{?fetch} \else \set fetch on \endif
\if :{?wait_timeout} \else \set wait_timeout '30 min' \endif

SET application_name = 'connect_guard runbook field_change';

\echo '== field_change (action' :action'): preconditions'
SELECT pg_temp.runbook_require_primary('Run the runbook on the primary.') \gset
SELECT pg_temp.runbook_require(:'action' IN ('show', 'save'), format('unknown action %s', :'action'),
    'Pass -v action=show (the default) or -v action=save.') \gset
SELECT pg_temp.runbook_require(:'reload' IN ('auto', 'on', 'off'), format('reload must be auto, on or off, not %s', :'reload'),
    'For example -v reload=on.') \gset
SELECT pg_temp.runbook_require(:'fetch' ~* '^(on|off|true|false|yes|no|1|0)$', format('fetch must be on or off, not %s', :'fetch'),
    'For example -v fetch=off.') \gset
SELECT pg_temp.runbook_require(:'wait_timeout' ~ '^[ 0-9a-z.]+$', 'wait_timeout must be an interval',
    'For example -v wait_timeout=''1 hour''.') \gset
SELECT pg_temp.runbook_require(:'connection' = '' OR EXISTS (SELECT 1 FROM connect_connections WHERE connection = :'connection'),
    format('connection "%s" does not exist', :'connection'),
    'See SELECT connection, adapter FROM connect_connections; leave -v connection out for every connection.') \gset
SELECT pg_temp.runbook_require(:'table' = '' OR EXISTS (SELECT 1 FROM connect_mappings
                                                          WHERE format('%I.%I', table_schema, table_relname) = :'table'
                                                            AND (:'connection' = '' OR connection = :'connection')),
    format('%s is not mapped%s', :'table', CASE WHEN :'connection' = '' THEN '' ELSE format(' by connection "%s"', :'connection') END),
    'Give the table as schema.table, as connect_mappings shows it (table_schema, table_relname).') \gset
SELECT :'action' = 'save' AS saving \gset
\if :saving
    SELECT pg_temp.runbook_require(:'connection' <> '' AND :'table' <> '',
        'saving needs -v connection=NAME and -v table=SCHEMA.TABLE',
        'Save one mapping at a time, after reading what differs (run without -v action first).') \gset
\endif

-- the way out of each kind of difference (19_table_shape_changes.sql lists the kinds)
CREATE FUNCTION pg_temp.way_out(kind text, adapter text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN kind LIKE 'trigger\_%' THEN 'save: the trigger is put back as connect_guard installs it'
                                      || CASE WHEN kind = 'trigger_always' THEN '' ELSE ', and the table reloaded (writes were not logged)' END
        WHEN kind = 'inheritance_child' THEN 'move the child''s rows into the table, ALTER TABLE child NO INHERIT table (or drop it), then save (reloads)'
        WHEN kind = 'column_type_changed' THEN 'in Connect, edit and save the mapping (a new type: deselect the field, save, select it, save); then save here: the rows were rewritten, it reloads'
        WHEN kind IN ('column_added', 'column_dropped') THEN 'if Connect syncs the column, add or remove the field in the mapping in Connect; then save'
        WHEN kind = 'field_without_column' THEN CASE WHEN adapter = 'heroku'
             THEN 'Connect''s mapping has a field the table lacks: edit and save the mapping in Connect (it adds the column), or add the column; then save'
             ELSE 'the configuration names a field the table lacks: add the column, or save (the fields follow the columns)' END
        WHEN kind = 'column_without_field' THEN CASE WHEN adapter = 'heroku'
             THEN 'a column no field of Connect''s mapping names: add the field in Connect, or drop the column; then save'
             ELSE 'save: the column becomes a field' END
        WHEN kind = 'primary_key_changed' THEN 'put the key back, or save (reloads: the log''s record ids changed meaning)'
        WHEN kind LIKE 'partition\_%' THEN 'save: the table is reloaded (rows came or went without log entries)'
        WHEN kind = 'table_dropped' THEN 'create the table again and save (reloads), or SELECT connect_unmap_dropped_table(connection, table)'
        ELSE 'see connect_schema_drift' END
$$;

-- heroku: compare with Connect's configuration as it is now
SELECT coalesce(string_agg(connection, ' '), '') AS heroku_connections
  FROM connect_connections
 WHERE adapter = 'heroku' AND (:'connection' = '' OR connection = :'connection') AND :'fetch'::boolean \gset
SELECT :'heroku_connections' <> '' AS fetching \gset
\if :fetching
    \echo
    \echo '== step 1: fetch Connect''s configuration of' :heroku_connections '(connect_export_config, connect_wait_config)'
    SELECT count(connect_export_config(c)) AS asked FROM unnest(string_to_array(:'heroku_connections', ' ')) c \gset
    \set ON_ERROR_STOP off
    SELECT count(connect_wait_config(c, :'wait_timeout'::interval)) AS fetched
      FROM unnest(string_to_array(:'heroku_connections', ' ')) c \gset
    \set ON_ERROR_STOP on
    \if :ERROR
        SELECT pg_temp.runbook_require(false, format('could not fetch Connect''s configuration: %s', :'LAST_ERROR_MESSAGE'),
            'Check that the worker reaches Connect (connect_requests), or run with -v fetch=off to compare with the configuration fetched last.') \gset
    \endif
    \echo '   fetched'
\endif

\echo
\echo '== what differs (connect_schema_drift), and the way out'
SELECT d.connection, d.table_name, d.mapping_state AS state, d.kind, d.object, d.expected, d.actual,
       d.needs_reload, d.still_present, d.detected_by, d.detected_at,
       pg_temp.way_out(d.kind, c.adapter) AS way_out
  FROM connect_schema_drift d JOIN connect_connections c USING (connection)
 WHERE (:'connection' = '' OR d.connection = :'connection')
   AND (:'table' = '' OR format('%I.%I', d.table_schema, d.table_relname) = :'table')
 ORDER BY d.connection, d.table_schema, d.table_relname, d.kind, d.object;
SELECT count(*) AS open_changes FROM connect_schema_drift d
 WHERE (:'connection' = '' OR d.connection = :'connection')
   AND (:'table' = '' OR format('%I.%I', d.table_schema, d.table_relname) = :'table') \gset

\if :saving
    SELECT adapter FROM connect_connections WHERE connection = :'connection' \gset
    \echo
    \echo '== step 2: save the mapping of' :table '(connect_save_mapping, reload' :reload')'
    \set ON_ERROR_STOP off
    SELECT connect_save_mapping(:'connection', :'table'::regclass,
                                CASE :'reload' WHEN 'on' THEN true WHEN 'off' THEN false END) AS saved_state \gset
    \set ON_ERROR_STOP on
    \if :ERROR
        SELECT pg_temp.runbook_require(false, format('the mapping of %s cannot be saved yet: %s', :'table', :'LAST_ERROR_MESSAGE'),
            'Nothing was changed. Do what the way_out column above says for what is still present, then run again.') \gset
    \endif
    \echo '   the mapping is' :saved_state
    SELECT :'saved_state' = 'RELOAD_TABLE' AS reloading, :'adapter' IN ('heroku', 'webhook') AS remote \gset
    \if :reloading
        \if :remote
            \echo
            \echo '== step 3: wait up to' :wait_timeout 'for the sync service to acknowledge the reload'
            SELECT pg_temp.runbook_wait(format(
                       'SELECT state = %L FROM connect_mappings WHERE connection = %L AND format(''%%I.%%I'', table_schema, table_relname) = %L',
                       'DATA_SYNCED', :'connection', :'table'), :'wait_timeout'::interval) AS reloaded \gset
            SELECT r.status, r.last_error FROM connect_requests r
             WHERE r.connection = :'connection' AND r.action = 'reload' ORDER BY r.request_id DESC LIMIT 1;
            SELECT pg_temp.runbook_require(:'reloaded'::boolean,
                format('the reload of %s was not acknowledged within %s', :'table', :'wait_timeout'),
                format('See connect_requests; the table refuses writes until the reload is acknowledged (or SELECT connect_unfence()). Ask again with SELECT connect_reload_mapping(%L, %L).',
                       :'connection', :'table')) \gset
            \echo '   reloaded'
        \else
            \echo
            \echo '== next: the connection''s consumer reloads' :table 'whole (writes to it wait meanwhile), then:'
            \echo '     SELECT connect_mapping_reloaded(''':connection''', ''':table''');'
        \endif
    \endif
    \echo
    \echo '== after'
    SELECT connection, table_name, state, state_since FROM connect_mappings
     WHERE connection = :'connection' AND format('%I.%I', table_schema, table_relname) = :'table';
\else
    \echo
    SELECT :'open_changes'::int = 0 AS nothing_open \gset
    \if :nothing_open
        \echo '== nothing differs: every mapping matches its table'
    \else
        \echo '== next: do what way_out says for each, then save each mapping:'
        \echo '     psql -v ON_ERROR_STOP=1 -f runbooks/field_change.sql -v action=save -v connection=NAME -v table=SCHEMA.TABLE'
    \endif
\endif
