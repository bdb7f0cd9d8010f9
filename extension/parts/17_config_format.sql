/* ------------------------------------------------------------------------
 * Heroku Connect's configuration file: the format of its export (Settings,
 * Import/Export Configuration; `heroku connect:export`), which
 * connect_export_config() writes and connect_import_config() reads
 * (64_config.sql):
 *
 *   {"version": 1,
 *    "connection": {"app_name", "organization_id", "exported_at", "features",
 *                   "api_version", "name", "logplex_log_enabled"},
 *    "mappings": [{"object_name": "Account",
 *                  "config": {"access": "read_only" | "read_write",
 *                             "sf_notify_enabled": bool, "sf_polling_seconds": int,
 *                             "sf_max_daily_api_calls": int,
 *                             "fields": {"Name": {}, ...},
 *                             "indexes": {"Id": {"unique": true}, ...},
 *                             "upsert_field": "External__c" (optional)}}]}
 *
 * A file is checked strictly, before anything changes: an unknown key, a
 * value of the wrong type or a reference to a field the mapping does not
 * have is refused, and the error names the key (mappings[0].config.access),
 * so that a DBA finds the mistake in a file of a hundred mappings.  The
 * rules are those the Connect simulator applies (test/simulator/
 * connect_config.py); Connect also checks objects and fields against
 * Salesforce, which only Connect can.
 *
 * Connect names a mapped table's columns after the object's fields, in
 * lower case; the Salesforce Id is the column sfid, and id, _hc_lastop and
 * _hc_err are Connect's own columns, no fields.  Pure functions only.
 * ------------------------------------------------------------------------ */

-- the columns of a Connect table that are no Salesforce field
CREATE FUNCTION connect_guard.config_not_fields()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['id', '_hc_lastop', '_hc_err'] $$;

-- a Salesforce API name: a letter, then letters, digits and underscores (custom ones end in __c)
CREATE FUNCTION connect_guard.config_is_api_name(p_name text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(p_name ~ '^[A-Za-z][A-Za-z0-9_]{0,79}$', false) $$;

-- the column that holds field p_field of a mapped table
CREATE FUNCTION connect_guard.config_field_column(p_field text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN lower(p_field) = 'id' THEN 'sfid' ELSE lower(p_field) END $$;

/*
 * connect_guard.config_field_name is the field a column holds: Id for
 * sfid, the standard fields in their own case (Connect lower-cases them),
 * others with their first letter in upper case (names ignore case, as
 * Salesforce's do).  NULL for the columns that are no field, or whose name
 * is no API name.
 */
CREATE FUNCTION connect_guard.config_field_name(p_column text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
             WHEN lower(p_column) = ANY (connect_guard.config_not_fields()) THEN NULL
             WHEN lower(p_column) = 'sfid' THEN 'Id'
             WHEN NOT connect_guard.config_is_api_name(p_column) THEN NULL
             ELSE coalesce('{"name": "Name", "systemmodstamp": "SystemModstamp", "isdeleted": "IsDeleted",
                             "createddate": "CreatedDate", "lastmodifieddate": "LastModifiedDate", "ownerid": "OwnerId",
                             "createdbyid": "CreatedById", "lastmodifiedbyid": "LastModifiedById",
                             "accountid": "AccountId", "contactid": "ContactId", "firstname": "FirstName",
                             "lastname": "LastName", "email": "Email", "phone": "Phone", "title": "Title",
                             "description": "Description", "industry": "Industry", "type": "Type", "status": "Status",
                             "amount": "Amount", "stagename": "StageName", "closedate": "CloseDate"}'::jsonb ->> lower(p_column),
                           upper(left(p_column, 1)) || substr(p_column, 2))
           END
$$;

/*
 * connect_guard.config_of_columns is the configuration of a mapping that
 * no file configured: read_write, polled every 10 minutes, the fields of
 * the table's columns, Id indexed (as Connect's defaults).
 */
CREATE FUNCTION connect_guard.config_of_columns(p_columns text[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
               'access', 'read_write',
               'sf_notify_enabled', false,
               'sf_polling_seconds', 600,
               'sf_max_daily_api_calls', 30000,
               'fields', coalesce((SELECT jsonb_object_agg(connect_guard.config_field_name(col), '{}'::jsonb)
                                     FROM unnest(p_columns) col
                                    WHERE connect_guard.config_field_name(col) IS NOT NULL), '{}'),
               'indexes', CASE WHEN 'systemmodstamp' = ANY (p_columns)
                               THEN '{"Id": {"unique": true}, "SystemModstamp": {"unique": false}}'::jsonb
                               ELSE '{"Id": {"unique": true}}'::jsonb END)
$$;

/*
 * connect_guard.config_fields_for: the fields of configuration p_config
 * made to match columns p_columns: the fields that have a column keep their
 * names, the columns that had no field get one, the others go.
 */
CREATE FUNCTION connect_guard.config_fields_for(p_config jsonb, p_columns text[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(coalesce(f.name, connect_guard.config_field_name(col)), coalesce(f.spec, '{}')), '{}')
      FROM unnest(p_columns) col
      LEFT JOIN LATERAL (SELECT e.key AS name, e.value AS spec
                           FROM jsonb_each(CASE WHEN jsonb_typeof(p_config -> 'fields') = 'object'
                                                THEN p_config -> 'fields' ELSE '{}' END) e
                          WHERE connect_guard.config_field_column(e.key) = lower(col) LIMIT 1) f ON true
     WHERE connect_guard.config_field_name(col) IS NOT NULL
$$;

-- how a JSON value is shown in an error: short, as JSON
CREATE FUNCTION connect_guard.config_shown(p_value jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN length(p_value::text) > 60 THEN left(p_value::text, 57) || '...' ELSE coalesce(p_value::text, 'nothing') END $$;

CREATE FUNCTION connect_guard.config_is_integer(p_value jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT jsonb_typeof(p_value) = 'number' AND p_value::text ~ '^-?[0-9]+$' $$;

/*
 * connect_guard.config_mapping_problem checks one mapping's config (at the
 * key p_where) and returns what is wrong with it, as "key: why", or NULL.
 */
CREATE FUNCTION connect_guard.config_mapping_problem(p_config jsonb, p_where text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k text;
    v jsonb;
    v_fields text[] := '{}';
BEGIN
    IF jsonb_typeof(p_config) IS DISTINCT FROM 'object' THEN
        RETURN p_where || ': expected an object';
    END IF;
    SELECT min(key) INTO k FROM jsonb_object_keys(p_config) key
     WHERE key <> ALL (ARRAY['access', 'sf_notify_enabled', 'sf_polling_seconds', 'sf_max_daily_api_calls',
                             'fields', 'indexes', 'upsert_field']);
    IF k IS NOT NULL THEN
        RETURN format('%s.%s: unknown key', p_where, k);
    END IF;
    FOREACH k IN ARRAY ARRAY['access', 'fields'] LOOP
        IF NOT p_config ? k THEN
            RETURN format('%s.%s: missing', p_where, k);
        END IF;
    END LOOP;
    IF p_config -> 'access' NOT IN ('"read_only"', '"read_write"') THEN
        RETURN format('%s.access: must be read_only or read_write, not %s', p_where,
                      connect_guard.config_shown(p_config -> 'access'));
    END IF;
    IF p_config ? 'sf_notify_enabled' AND jsonb_typeof(p_config -> 'sf_notify_enabled') <> 'boolean' THEN
        RETURN format('%s.sf_notify_enabled: expected true or false, not %s', p_where,
                      connect_guard.config_shown(p_config -> 'sf_notify_enabled'));
    END IF;
    IF p_config ? 'sf_polling_seconds' AND NOT (connect_guard.config_is_integer(p_config -> 'sf_polling_seconds')
                                                AND (p_config ->> 'sf_polling_seconds')::numeric >= 1) THEN
        RETURN format('%s.sf_polling_seconds: expected a positive integer, not %s', p_where,
                      connect_guard.config_shown(p_config -> 'sf_polling_seconds'));
    END IF;
    IF p_config ? 'sf_max_daily_api_calls' AND NOT (connect_guard.config_is_integer(p_config -> 'sf_max_daily_api_calls')
                                                    AND (p_config ->> 'sf_max_daily_api_calls')::numeric >= 0) THEN
        RETURN format('%s.sf_max_daily_api_calls: expected an integer >= 0, not %s', p_where,
                      connect_guard.config_shown(p_config -> 'sf_max_daily_api_calls'));
    END IF;

    IF jsonb_typeof(p_config -> 'fields') IS DISTINCT FROM 'object' OR p_config -> 'fields' = '{}' THEN
        RETURN format('%s.fields: expected a non-empty object of field names', p_where);
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(p_config -> 'fields') ORDER BY 1 LOOP
        IF NOT connect_guard.config_is_api_name(k) THEN
            RETURN format('%s.fields.%s: not a Salesforce field name', p_where, k);
        END IF;
        IF jsonb_typeof(v) <> 'object' THEN
            RETURN format('%s.fields.%s: expected an object, not %s', p_where, k, connect_guard.config_shown(v));
        END IF;
        IF lower(k) = ANY (v_fields) THEN
            RETURN format('%s.fields.%s: the same field as %s (field names ignore case)', p_where, k,
                          (SELECT f FROM jsonb_object_keys(p_config -> 'fields') f WHERE lower(f) = lower(k) AND f <> k LIMIT 1));
        END IF;
        v_fields := v_fields || lower(k);
    END LOOP;

    IF p_config ? 'indexes' THEN
        IF jsonb_typeof(p_config -> 'indexes') <> 'object' THEN
            RETURN format('%s.indexes: expected an object', p_where);
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(p_config -> 'indexes') ORDER BY 1 LOOP
            -- Id is always there: Connect indexes sfid whatever the fields say
            IF lower(k) <> ALL (v_fields) AND k <> 'Id' THEN
                RETURN format('%s.indexes.%s: not one of the mapping''s fields', p_where, k);
            END IF;
            IF jsonb_typeof(v) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_object_keys(v) x WHERE x <> 'unique')
               OR (v ? 'unique' AND jsonb_typeof(v -> 'unique') <> 'boolean') THEN
                RETURN format('%s.indexes.%s: expected {"unique": true|false}, not %s', p_where, k,
                              connect_guard.config_shown(v));
            END IF;
        END LOOP;
    END IF;

    IF p_config ? 'upsert_field' THEN
        IF jsonb_typeof(p_config -> 'upsert_field') <> 'string'
           OR lower(p_config ->> 'upsert_field') <> ALL (v_fields) THEN
            RETURN format('%s.upsert_field: not one of the mapping''s fields: %s', p_where,
                          connect_guard.config_shown(p_config -> 'upsert_field'));
        END IF;
        IF p_config ->> 'access' <> 'read_write' THEN
            RETURN format('%s.upsert_field: only a read_write mapping writes to Salesforce', p_where);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

/*
 * connect_guard.config_problem checks a whole file and returns the first
 * problem, as "key: why" (keys in the order Connect's simulator checks
 * them), or NULL when the file is good.
 */
CREATE FUNCTION connect_guard.config_problem(p_doc jsonb)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k text;
    v jsonb;
    m jsonb;
    i integer := 0;
    v_seen text[] := '{}';
    v_problem text;
BEGIN
    IF jsonb_typeof(p_doc) IS DISTINCT FROM 'object' THEN
        RETURN '(top level): expected a JSON object';
    END IF;
    SELECT min(key) INTO k FROM jsonb_object_keys(p_doc) key WHERE key <> ALL (ARRAY['version', 'connection', 'mappings']);
    IF k IS NOT NULL THEN
        RETURN k || ': unknown key';
    END IF;
    IF NOT p_doc ? 'version' THEN
        RETURN 'version: missing';
    END IF;
    IF (p_doc -> 'version')::text <> '1' THEN
        RETURN format('version: must be 1, not %s', connect_guard.config_shown(p_doc -> 'version'));
    END IF;

    IF p_doc ? 'connection' THEN
        IF jsonb_typeof(p_doc -> 'connection') <> 'object' THEN
            RETURN 'connection: expected an object';
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(p_doc -> 'connection') ORDER BY 1 LOOP
            IF k <> ALL (ARRAY['app_name', 'organization_id', 'exported_at', 'features', 'api_version', 'name',
                                'logplex_log_enabled']) THEN
                RETURN format('connection.%s: unknown key', k);
            END IF;
            IF jsonb_typeof(v) <> 'null' AND jsonb_typeof(v) <> (CASE k WHEN 'features' THEN 'object'
                                                                        WHEN 'logplex_log_enabled' THEN 'boolean'
                                                                        ELSE 'string' END) THEN
                RETURN format('connection.%s: expected %s, not %s', k,
                              CASE k WHEN 'features' THEN 'an object' WHEN 'logplex_log_enabled' THEN 'true or false'
                                     ELSE 'a string' END, connect_guard.config_shown(v));
            END IF;
        END LOOP;
    END IF;

    IF NOT p_doc ? 'mappings' THEN
        RETURN 'mappings: missing';
    END IF;
    IF jsonb_typeof(p_doc -> 'mappings') <> 'array' THEN
        RETURN 'mappings: expected a list';
    END IF;
    FOR m IN SELECT e FROM jsonb_array_elements(p_doc -> 'mappings') e LOOP
        IF jsonb_typeof(m) <> 'object' THEN
            RETURN format('mappings[%s]: expected an object', i);
        END IF;
        SELECT min(key) INTO k FROM jsonb_object_keys(m) key WHERE key <> ALL (ARRAY['object_name', 'config']);
        IF k IS NOT NULL THEN
            RETURN format('mappings[%s].%s: unknown key', i, k);
        END IF;
        IF jsonb_typeof(m -> 'object_name') IS DISTINCT FROM 'string'
           OR NOT connect_guard.config_is_api_name(m ->> 'object_name') THEN
            RETURN format('mappings[%s].object_name: expected a Salesforce object name, not %s', i,
                          connect_guard.config_shown(m -> 'object_name'));
        END IF;
        IF lower(m ->> 'object_name') = ANY (v_seen) THEN
            RETURN format('mappings[%s].object_name: %s is mapped twice (also mappings[%s])', i, m ->> 'object_name',
                          array_position(v_seen, lower(m ->> 'object_name')) - 1);
        END IF;
        v_seen := v_seen || lower(m ->> 'object_name');
        IF NOT m ? 'config' THEN
            RETURN format('mappings[%s].config: missing', i);
        END IF;
        v_problem := connect_guard.config_mapping_problem(m -> 'config', format('mappings[%s].config', i));
        IF v_problem IS NOT NULL THEN
            RETURN v_problem;
        END IF;
        i := i + 1;
    END LOOP;
    RETURN NULL;
END;
$$;

/*
 * connect_guard.config_require_valid raises the error that names the bad
 * key of a file (p_what says whose file it is), or returns.
 */
CREATE FUNCTION connect_guard.config_require_valid(p_doc jsonb, p_what text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_problem text := connect_guard.config_problem(p_doc);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid configuration: %s', v_problem),
            DETAIL = format('%s is not a valid Heroku Connect configuration file; nothing was changed.', p_what),
            HINT = 'The format is Connect''s export: {"version": 1, "connection": {...}, "mappings": [{"object_name", "config": {"access", "fields", ...}}]}, as connect_export_config() writes it.';
    END IF;
END;
$$;
