-- A connection's configuration in Heroku Connect's export format:
-- connect_export_config(), connect_import_config(), connect_wait_config().
-- Every key of a file is checked; a malformed or inconsistent file changes
-- nothing and the error names the key.  A heroku connection's export and
-- import go through the worker (test/t/019_schema_watch.pl with the
-- simulator); here its steps are driven by hand, in transactions that roll back.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE SCHEMA salesforce;
CREATE TABLE salesforce.account (id serial PRIMARY KEY, sfid varchar(18), name varchar(255), industry text,
                                 systemmodstamp timestamp, _hc_lastop varchar(32), _hc_err text);
CREATE TABLE salesforce.contact (id serial PRIMARY KEY, sfid varchar(18), firstname text, lastname text, email text,
                                 external_id__c text);
CREATE TABLE salesforce.nokey (id int, sfid varchar(18), name text);
CREATE TABLE app_lead (id int PRIMARY KEY, name text, "Status" text);
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'salesforce.account', 'Account');
SELECT connect_map_table('sync', 'app_lead', 'Lead');

-- the export of a connection without a sync service of its own: its mappings, their fields from the columns
SELECT jsonb_pretty(connect_export_config('sync') #- '{connection,exported_at}');
SELECT connect_export_config('sync') #>> '{connection,exported_at}' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$' AS utc;
SELECT show_error($$SELECT connect_export_config('nope')$$);
-- the column "Status" is the field Status (names ignore case): each mapping matches its table
SELECT m.table_name, f.* FROM connect_guard.mapping m, connect_guard.mapping_findings(m) f;

-- a file, and every way it can be wrong: the error names the key, and nothing changes
SELECT '{"version": 1,
         "connection": {"app_name": "acme", "organization_id": "00D000000000001", "exported_at": "2025-06-20T10:00:00Z",
                        "features": {"poll_db_no_merge": true}, "api_version": "58.0", "name": "acme-sync",
                        "logplex_log_enabled": false},
         "mappings": [
           {"object_name": "Account",
            "config": {"access": "read_write", "sf_notify_enabled": true, "sf_polling_seconds": 120,
                       "sf_max_daily_api_calls": 30000,
                       "fields": {"Id": {}, "Name": {}, "Industry": {}, "SystemModstamp": {}},
                       "indexes": {"Id": {"unique": true}, "SystemModstamp": {"unique": false}}}},
           {"object_name": "Contact",
            "config": {"access": "read_write", "fields": {"Id": {}, "FirstName": {}, "LastName": {}, "Email": {},
                                                          "External_Id__c": {}},
                       "upsert_field": "External_Id__c"}},
           {"object_name": "Opportunity", "config": {"access": "read_only", "fields": {"Id": {}, "Name": {}}}}]}'
       AS file \gset
SELECT count(*) AS events_before FROM connect_guard.event \gset
CREATE TABLE good_file AS SELECT :'file'::jsonb AS doc;
-- bad(path, value): the import of the good file with the value at path replaced (or removed, for NULL)
CREATE FUNCTION bad(path text[], value jsonb) RETURNS text LANGUAGE sql AS $$
    SELECT show_error(format('SELECT connect_import_config(%L, %L)', 'sync',
                             CASE WHEN value IS NULL THEN doc #- path ELSE jsonb_set(doc, path, value) END))
      FROM good_file
$$;
SELECT show_error($$SELECT connect_import_config('sync', '[1, 2]')$$);
SELECT show_error($$SELECT connect_import_config('sync', '{"version": 1, "mappings": [], "extra": 1}')$$);
SELECT bad('{version}', NULL);
SELECT bad('{version}', '2');
SELECT bad('{version}', '"1"');
SELECT bad('{connection}', '[]');
SELECT bad('{connection,colour}', '"blue"');
SELECT bad('{connection,logplex_log_enabled}', '"no"');
SELECT bad('{connection,features}', '"all"');
SELECT bad('{mappings}', NULL);
SELECT bad('{mappings}', '{}');
SELECT bad('{mappings,1}', '"Contact"');
SELECT bad('{mappings,1,table}', '"contact"');
SELECT bad('{mappings,1,object_name}', '"Contact Person"');
SELECT bad('{mappings,1,object_name}', '"ACCOUNT"');
SELECT bad('{mappings,1,config}', NULL);
SELECT bad('{mappings,0,config,access}', '"rw"');
SELECT bad('{mappings,0,config,access}', NULL);
SELECT bad('{mappings,0,config,colour}', '"blue"');
SELECT bad('{mappings,0,config,sf_notify_enabled}', '1');
SELECT bad('{mappings,0,config,sf_polling_seconds}', '0');
SELECT bad('{mappings,0,config,sf_polling_seconds}', '1.5');
SELECT bad('{mappings,0,config,sf_max_daily_api_calls}', '-1');
SELECT bad('{mappings,0,config,fields}', '{}');
SELECT bad('{mappings,0,config,fields}', '["Id"]');
SELECT bad('{mappings,0,config,fields,Bad Name}', '{}');
SELECT bad('{mappings,0,config,fields,Name}', 'true');
SELECT bad('{mappings,0,config,fields,NAME}', '{}');
SELECT bad('{mappings,0,config,indexes}', '[]');
SELECT bad('{mappings,0,config,indexes,Phone}', '{"unique": true}');
SELECT bad('{mappings,0,config,indexes,Name}', '{"unique": "yes"}');
SELECT bad('{mappings,0,config,indexes,Name}', '{"sorted": true}');
SELECT bad('{mappings,1,config,upsert_field}', '"Phone"');
SELECT bad('{mappings,2,config,upsert_field}', '"Name"');
-- consistent in itself but not with this database: the object's table cannot be mapped
SELECT show_error(format('SELECT connect_import_config(%L, %L)', 'sync',
    jsonb_set(:'file'::jsonb, '{mappings,2,object_name}', '"NoKey"')));
SELECT show_error($$SELECT connect_import_config('sync', NULL)$$);
SELECT show_error(format('SELECT connect_import_config(%L, %L, schema => NULL)', 'sync', :'file'));
-- a schema that does not exist has no tables: every object not mapped yet is missing
SELECT connect_import_config('sync', :'file', schema => 'nowhere', dry_run => true);
SELECT count(*) - :events_before AS new_events FROM connect_guard.event;
SELECT table_name, object_name, config_source FROM connect_guard.mapping ORDER BY mapping_id;

-- a dry run says what an import would do, and does nothing
SELECT jsonb_pretty(connect_import_config('sync', :'file', dry_run => true));
SELECT count(*) - :events_before AS new_events FROM connect_guard.event;

-- the import: Account is the mapping of that object (its configuration is replaced), Contact is
-- mapped (salesforce.contact), Opportunity has no table here (reported, not created)
SELECT jsonb_pretty(connect_import_config('sync', :'file'));
SELECT table_name, object_name, state, config_source, config -> 'sf_polling_seconds' AS polling
  FROM connect_guard.mapping ORDER BY mapping_id;
SELECT kind, detail - 'schema_changes' AS detail FROM connect_guard.event WHERE kind = 'config_imported';
-- the export gives back what was imported: the connection's part, and each mapping's configuration
SELECT jsonb_pretty(connect_export_config('sync') #- '{connection,exported_at}');
SELECT (connect_export_config('sync') -> 'mappings' -> 0) = (:'file'::jsonb -> 'mappings' -> 0) AS account_as_imported,
       (connect_export_config('sync') -> 'mappings' -> 1) = (:'file'::jsonb -> 'mappings' -> 1) AS contact_as_imported;
-- importing it again changes the configurations only
SELECT connect_import_config('sync', :'file') - 'schema_changes';
SELECT count(*) FROM connect_guard.mapping;

-- a round trip: the export imported into a new connection gives the same configuration
SELECT connect_create_connection('copy');
SELECT connect_import_config('copy', connect_export_config('sync')) - 'schema_changes';
SELECT connect_export_config('copy') -> 'mappings'
       = (SELECT jsonb_agg(m) FROM jsonb_array_elements(connect_export_config('sync') -> 'mappings') m
           WHERE m ->> 'object_name' <> 'Lead') AS same_mappings,
       (connect_export_config('copy') -> 'connection') - 'name' - 'exported_at'
       = (connect_export_config('sync') -> 'connection') - 'name' - 'exported_at' AS same_connection;
SELECT connect_drop_connection('copy');

-- an object name that is no Salesforce API name cannot be exported: the error says which mapping
CREATE TABLE odd (id int PRIMARY KEY, name text);
SELECT connect_map_table('sync', 'odd', 'Odd Object');
SELECT show_error($$SELECT connect_export_config('sync')$$);
SELECT connect_unmap_table('sync', 'odd');

-- heroku: the export and the import are Connect's; the call stores a request, the worker sends it
SELECT connect_create_connection('hk', 'heroku',
    '{"region_url": "https://connect.example.com", "connection_id": "6a1b0f3e-0000-4000-8000-00000000d3e0",
      "token": "tok-SECRET-3f9a"}') AS hk \gset
SELECT connect_map_table('hk', 'salesforce.contact', 'Contact');
SELECT show_error($$SELECT connect_wait_config('hk')$$);
SELECT show_error($$SELECT connect_wait_config('sync')$$);
BEGIN;
SELECT connect_export_config('hk') - 'request_id' AS receipt;
SELECT max(request_id) AS export_request FROM connect_guard.request \gset
SELECT show_error($$SELECT connect_wait_config('hk')$$);
SELECT t_step, t_method, t_url, t_body, t_auth FROM connect_guard.request_take(8, 60000);
-- Connect's export: Contact has a field the table lacks (field drift, 19_table_shape_changes.sql)
SELECT connect_guard.request_outcome(:export_request, 'send', 200, NULL,
    jsonb_set(:'file'::jsonb, '{mappings,1,config,fields,Phone}', '{}')::text);
SELECT action, status, last_http_status, last_error FROM connect_requests WHERE request_id = :export_request;
SELECT table_name, config_source, config -> 'fields' ? 'Phone' AS has_phone FROM connect_guard.mapping
 WHERE connection_id = :hk;
SELECT connection, table_name, mapping_state, kind, object, expected, detected_by, detected_in FROM connect_schema_drift;
SELECT result = jsonb_set(:'file'::jsonb, '{mappings,1,config,fields,Phone}', '{}') AS stored
  FROM connect_guard.request WHERE request_id = :export_request;
ROLLBACK;

BEGIN;
SELECT connect_export_config('hk') - 'request_id' AS receipt;
SELECT max(request_id) AS export_request FROM connect_guard.request \gset
SELECT t_step FROM connect_guard.request_take(8, 60000);
-- an answer that is no export file fails the request, and changes no mapping
SELECT connect_guard.request_outcome(:export_request, 'send', 200, NULL, '{"version": 2, "mappings": []}');
SELECT action, status, last_error FROM connect_requests WHERE request_id = :export_request;
SELECT config_source FROM connect_guard.mapping WHERE connection_id = :hk;
ROLLBACK;

BEGIN;
-- the import maps what exists here, and sends the whole file to Connect
SELECT connect_import_config('hk', :'file') - 'request_id' AS receipt;
SELECT max(request_id) AS import_request FROM connect_guard.request \gset
SELECT table_name, object_name, config_source FROM connect_guard.mapping WHERE connection_id = :hk ORDER BY mapping_id;
SELECT t_step, t_method, t_url, t_body::jsonb = :'file'::jsonb AS body_is_the_file, t_auth
  FROM connect_guard.request_take(8, 60000);
SAVEPOINT sent;
-- Connect refuses it: the request fails with Connect's message, which names the key; nothing is stored
SELECT connect_guard.request_outcome(:import_request, 'send', 400, NULL,
    '{"id": "invalid_params", "message": "invalid import file: mappings[1].config.fields.External_Id__c: no such field on Contact"}');
SELECT action, status, last_http_status, last_error FROM connect_requests WHERE request_id = :import_request;
SELECT config_source FROM connect_guard.mapping WHERE connection_id = :hk ORDER BY mapping_id;
ROLLBACK TO sent;
-- Connect accepts it (202): its configuration of those mappings is now the file's
SELECT connect_guard.request_outcome(:import_request, 'send', 202, NULL, '{"imported": 3, "created": 1, "updated": 2}');
SELECT action, status, last_http_status, result FROM connect_guard.request WHERE request_id = :import_request;
SELECT table_name, config_source, config = (:'file'::jsonb -> 'mappings' -> 0 -> 'config') AS account_as_sent
  FROM connect_guard.mapping WHERE connection_id = :hk ORDER BY mapping_id;
SELECT kind, detail - 'request_id' - 'schema_changes' FROM connect_guard.event
 WHERE connection_name = 'hk' AND kind LIKE 'config%';
ROLLBACK;

-- privileges: nothing of this for PUBLIC
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may
  FROM pg_proc p WHERE p.proname IN ('connect_export_config', 'connect_import_config', 'connect_wait_config')
 ORDER BY 1;

DROP EXTENSION connect_guard CASCADE;
DROP SCHEMA salesforce CASCADE;
DROP TABLE app_lead, odd, good_file;
DROP FUNCTION bad(text[], jsonb), show_error(text);
