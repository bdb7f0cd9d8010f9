-- Field-definition drift (Heroku's "Changing Field Definitions in
-- Salesforce"): a mapping's configuration (its fields) against its table's
-- columns, and any ALTER TABLE of a mapped table against the shape it was
-- mapped with.  What differs puts the mapping in SCHEMA_CHANGED and shows in
-- connect_schema_drift; connect_save_mapping() is the way out
-- (runbooks/field_change.sql).
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE SCHEMA salesforce;
CREATE TABLE salesforce.contact (id serial PRIMARY KEY, sfid varchar(18), firstname varchar(40), lastname varchar(80),
                                 email text, external_id__c text, _hc_lastop varchar(32), _hc_err text);
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'salesforce.contact', 'Contact');
CREATE FUNCTION drift() RETURNS TABLE (state text, kind text, object text, expected text, actual text,
                                       needs_reload boolean, still_present boolean, detected_by text)
LANGUAGE sql AS $$
    SELECT mapping_state, kind, object, expected, actual, needs_reload, still_present, detected_by
      FROM connect_schema_drift ORDER BY kind, object
$$;

-- a mapping's configuration is derived from its columns until a file or Connect gives one
SELECT config_source, config FROM connect_guard.mapping;
SELECT * FROM drift();

-- the seed's simple case: a field's length changed in Salesforce, and the column is widened to match.
-- The rows are rewritten (a reload brings the values Salesforce has)
ALTER TABLE salesforce.contact ALTER COLUMN firstname TYPE varchar(80);
SELECT * FROM drift();
SELECT connection, state, schema_changes FROM connect_status;
-- saving accepts the table as it is and asks for the reload it needs (a local consumer acknowledges it)
SELECT connect_save_mapping('sync', 'salesforce.contact');
SELECT connect_mapping_reloaded('sync', 'salesforce.contact');
SELECT table_relname, state FROM connect_mappings;
SELECT shape -> 'columns' -> 'firstname' AS firstname FROM connect_guard.mapping;

\set VERBOSITY terse
-- the complex case: the field's type changed; Connect drops the column and adds it again
ALTER TABLE salesforce.contact DROP COLUMN email;
ALTER TABLE salesforce.contact ADD COLUMN email varchar(255);
SELECT * FROM drift();
-- a rename is a field gone and a field added
ALTER TABLE salesforce.contact RENAME COLUMN external_id__c TO ext_id__c;
SELECT kind, object, expected, actual FROM drift();
-- a new primary key changes what the log's record_id means
ALTER TABLE salesforce.contact DROP CONSTRAINT contact_pkey, ADD PRIMARY KEY (id, sfid);
SELECT kind, object, expected, actual, needs_reload FROM drift() WHERE kind = 'primary_key_changed';
-- saving takes the columns as the fields: names kept where the column is there, new ones added,
-- the gone ones dropped with their indexes and upsert field
UPDATE connect_guard.mapping
   SET config = config || jsonb_build_object('upsert_field', 'External_id__c',
                                             'indexes', '{"Id": {"unique": true}, "External_id__c": {"unique": true}}'::jsonb);
SELECT config -> 'fields' AS fields, config -> 'indexes' AS indexes, config -> 'upsert_field' AS upsert_field
  FROM connect_guard.mapping;
SELECT connect_save_mapping('sync', 'salesforce.contact', reload => false);
SELECT config -> 'fields' AS fields, config -> 'indexes' AS indexes, config ? 'upsert_field' AS has_upsert
  FROM connect_guard.mapping;
SELECT * FROM drift();
ALTER TABLE salesforce.contact DROP CONSTRAINT contact_pkey, ADD PRIMARY KEY (id);
SELECT connect_save_mapping('sync', 'salesforce.contact', reload => false);

-- an imported configuration whose fields the table does not have, or which lacks a column
SELECT connect_import_config('sync', '{"version": 1, "mappings": [{"object_name": "Contact", "config": {
    "access": "read_write", "fields": {"Id": {}, "FirstName": {}, "LastName": {}, "Email": {}, "Phone": {}}}}]}')
       - 'mapped' - 'missing';
SELECT kind, object, expected, actual, detected_by FROM drift();
-- the table is the truth for a connection that owns its configuration: saving makes the fields match
SELECT connect_save_mapping('sync', 'salesforce.contact');
SELECT config -> 'fields' AS fields FROM connect_guard.mapping;
SELECT * FROM drift();

-- a heroku connection's fields are Connect's: saving cannot change them, Connect must
\set VERBOSITY default
SELECT connect_create_connection('hk', 'heroku',
    '{"region_url": "https://connect.example.com", "connection_id": "c-1", "token": "tok-1"}');
SELECT connect_map_table('hk', 'salesforce.contact', 'Contact');
BEGIN;
SELECT connect_export_config('hk') ->> 'status' AS export;
SELECT max(request_id) AS export_request FROM connect_guard.request \gset
SELECT t_method, t_url FROM connect_guard.request_take(8, 60000);
-- the field was made longer in Salesforce, and deselected and added again in Connect with another name
SELECT connect_guard.request_outcome(:export_request, 'send', 200, NULL,
    '{"version": 1, "mappings": [{"object_name": "Contact", "config": {"access": "read_write",
      "fields": {"Id": {}, "FirstName": {}, "LastName": {}, "Email": {}, "Ext_Id__c": {}, "MobilePhone": {}}}}]}');
SELECT connection, kind, object, expected, actual, detected_by FROM connect_schema_drift WHERE connection = 'hk';
SELECT show_error($$SELECT connect_save_mapping('hk', 'salesforce.contact')$$);
-- the table gets the column Connect wants (Connect creates it when the mapping is saved there)
ALTER TABLE salesforce.contact ADD COLUMN mobilephone varchar(40);
SELECT connection, kind, object, still_present FROM connect_schema_drift WHERE connection = 'hk' ORDER BY 2, 3;
SELECT connect_save_mapping('hk', 'salesforce.contact', reload => false);
SELECT connection, table_relname, state FROM connect_mappings ORDER BY 1;
-- the local connection saw the same ALTER TABLE
SELECT connection, kind, object FROM connect_schema_drift;
ROLLBACK;

DROP EXTENSION connect_guard CASCADE;
DROP SCHEMA salesforce CASCADE;
DROP FUNCTION drift(), show_error(text);
