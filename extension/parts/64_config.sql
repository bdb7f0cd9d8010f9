/* ------------------------------------------------------------------------
 * A connection's configuration in Heroku Connect's export format
 * (17_config_format.sql): connect_export_config(), connect_import_config()
 * and, for a heroku connection, connect_wait_config().
 *
 * A connection without a sync service of its own to ask (local, webhook)
 * answers at once: its export is built from its mappings (the
 * configuration each one was given by a file, or derived from its table's
 * columns), and an import maps the tables that exist and keeps the file's
 * configuration on their mappings.
 *
 * A heroku connection's configuration is Connect's: the export is Connect's
 * export endpoint, and an import goes to Connect's import endpoint.  No
 * HTTP call is made in a user's transaction (the worker makes them, 50_requests.sql),
 * so these work as connect_pause() and connect_wait_state() do: the call
 * stores the request and returns a receipt, {"request_id", "status":
 * "pending"}, and once it has committed, connect_wait_config() waits for
 * Connect's answer and returns it (the file, for an export).  In psql,
 * where every statement commits by itself:
 *
 *     SELECT connect_export_config('hc');     -- {"request_id": 12, "status": "pending", ...}
 *     SELECT connect_wait_config('hc');       -- Connect's export file
 *
 * The answer also becomes the configuration of the mappings it names, and
 * is compared with their tables (field drift, 19_table_shape_changes.sql).
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.map_table_problem says why table p_tbl cannot be mapped
 * (connect_map_table's checks, without mapping it), or NULL.
 */
CREATE FUNCTION connect_guard.map_table_problem(p_tbl regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
             WHEN cl.relkind NOT IN ('r', 'p') OR cl.relpersistence = 't' OR n.nspname = 'connect_guard'
                 THEN 'it is no permanent or unlogged table of the application'
             WHEN cl.relispartition THEN 'it is a partition'
             WHEN NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = cl.oid AND i.indisprimary)
                 THEN 'it has no primary key'
           END
      FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE cl.oid = p_tbl
$$;

/*
 * connect_export_config: the connection's configuration in Connect's
 * export format.  heroku: asks Connect for it and returns a receipt; the
 * file comes from connect_wait_config().
 */
CREATE FUNCTION connect_export_config(connection text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_id bigint;
    v_doc jsonb;
    v_problem text;
    v_tables text[];
BEGIN
    c := connect_guard.require_connection(connection);
    IF c.adapter = 'heroku' THEN
        v_id := connect_guard.request_enqueue(c.connection_id, 'export');
        RAISE NOTICE USING
            MESSAGE = format('Heroku Connect''s configuration of connection "%s" is requested (request %s)', c.name, v_id),
            HINT = format('The worker asks Connect once this transaction commits; then SELECT connect_wait_config(%L) returns the file.',
                          c.name);
        RETURN jsonb_build_object('request_id', v_id, 'action', 'export', 'status', 'pending',
                                  'wait', format('SELECT connect_wait_config(%L)', c.name));
    END IF;

    SELECT coalesce(jsonb_agg(jsonb_build_object(
                        'object_name', m.object_name,
                        'config', coalesce(m.config, connect_guard.config_of_columns(
                                                         connect_guard.table_columns(connect_guard.mapping_relid(m)))))
                    ORDER BY lower(m.object_name), m.mapping_id), '[]'),
           array_agg(format('%I.%I', m.table_schema, m.table_name) ORDER BY lower(m.object_name), m.mapping_id)
      INTO v_doc, v_tables
      FROM connect_guard.mapping m WHERE m.connection_id = c.connection_id;
    v_doc := jsonb_build_object(
        'version', 1,
        'connection', jsonb_build_object('app_name', NULL, 'organization_id', NULL, 'features', '{}'::jsonb,
                                         'api_version', NULL, 'logplex_log_enabled', false)
                      || coalesce(c.config, '{}')
                      || jsonb_build_object('name', c.name,
                                            'exported_at', to_char(clock_timestamp() AT TIME ZONE 'UTC',
                                                                   'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
        'mappings', v_doc);
    v_problem := connect_guard.config_problem(v_doc);
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('connection "%s" cannot be exported in Connect''s format: %s', c.name, v_problem),
            DETAIL = format('The mappings in the file''s order: %s.',
                            (SELECT string_agg(format('mappings[%s] %s', i - 1, t), ', ')
                               FROM unnest(v_tables) WITH ORDINALITY u(t, i))),
            HINT = 'Object names must be Salesforce API names (letters, digits and "_"), one per object: map the table again with another object_name, or import a configuration for it.';
    END IF;
    RETURN v_doc;
END;
$$;

/*
 * connect_import_config: gives a connection the configuration of a file in
 * Connect's export format.  The file is checked first, whole: a malformed
 * or inconsistent file changes nothing, and the error names the key.  Each
 * of its objects is the connection's mapping of that object, or the table
 * schema.<object in lower case> (Connect's naming), which is mapped; a
 * table that does not exist is reported ("missing"), not created.  A local
 * or webhook connection keeps each mapping's configuration; a heroku
 * connection also sends the file to Connect (the configuration is Connect's
 * once Connect has accepted it: connect_wait_config()).  dry_run only
 * checks and says what it would do.  Returns the report.
 */
CREATE FUNCTION connect_import_config(connection text, config jsonb, schema text DEFAULT 'salesforce',
                                      dry_run boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    e jsonb;
    i integer := 0;
    v_existing connect_guard.mapping;
    v_tbl regclass;
    v_problem text;
    v_owner text;
    v_map jsonb := '[]';
    v_update jsonb := '[]';
    v_missing jsonb := '[]';
    v_report jsonb;
    v_id bigint;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_not_null(connect_import_config.config, 'config',
        'Pass the file as jsonb, for example pg_read_file(''/path/export.json'')::jsonb, or psql''s \set with :''file''.');
    PERFORM connect_guard.require_not_null(schema, 'schema',
        'Pass the schema of the mapped tables (Connect''s is salesforce by default).');
    PERFORM connect_guard.require_not_null(dry_run, 'dry_run', 'Pass true to only check the file, false to import it.');
    PERFORM connect_guard.config_require_valid(connect_import_config.config, 'The file');

    -- what each mapping of the file is here; nothing changes before every one is known to be possible
    FOR e IN SELECT x FROM jsonb_array_elements(connect_import_config.config -> 'mappings') x LOOP
        SELECT * INTO v_existing FROM connect_guard.mapping mp
         WHERE mp.connection_id = c.connection_id AND lower(mp.object_name) = lower(e ->> 'object_name');
        IF FOUND THEN
            v_update := v_update || to_jsonb(format('%I.%I', v_existing.table_schema, v_existing.table_name));
        ELSE
            v_tbl := to_regclass(format('%I.%I', schema, lower(e ->> 'object_name')));
            IF v_tbl IS NULL THEN
                v_missing := v_missing || jsonb_build_object('object_name', e ->> 'object_name',
                                                             'table', format('%I.%I', schema, lower(e ->> 'object_name')));
            ELSE
                SELECT mp.object_name INTO v_owner FROM connect_guard.mapping mp
                  JOIN pg_class cl ON cl.oid = v_tbl JOIN pg_namespace n ON n.oid = cl.relnamespace
                 WHERE mp.connection_id = c.connection_id AND mp.table_schema = n.nspname AND mp.table_name = cl.relname;
                v_problem := CASE WHEN v_owner IS NOT NULL
                                  THEN format('connection "%s" maps it as object %s', c.name, v_owner)
                                  ELSE connect_guard.map_table_problem(v_tbl) END;
                IF v_problem IS NOT NULL THEN
                    RAISE EXCEPTION USING
                        ERRCODE = 'invalid_parameter_value',
                        MESSAGE = format('invalid configuration: mappings[%s].object_name: table %s cannot be mapped: %s',
                                         i, v_tbl, v_problem),
                        DETAIL = 'The file''s object would be that table; nothing was imported.',
                        HINT = 'Fix the table (connect_map_table() says what it needs) or leave the object out of the file.';
                END IF;
                v_map := v_map || jsonb_build_object('object_name', e ->> 'object_name', 'table', v_tbl::text);
            END IF;
        END IF;
        i := i + 1;
    END LOOP;

    v_report := jsonb_build_object('mapped', (SELECT coalesce(jsonb_agg(x -> 'table'), '[]') FROM jsonb_array_elements(v_map) x),
                                   'updated', v_update, 'missing', v_missing);
    IF dry_run THEN
        RETURN jsonb_build_object('status', 'dry_run') || v_report;
    END IF;

    FOR e IN SELECT x FROM jsonb_array_elements(v_map) x LOOP
        PERFORM @extschema@.connect_map_table(c.name, (e ->> 'table')::regclass, e ->> 'object_name');
    END LOOP;
    IF jsonb_array_length(v_missing) > 0 THEN
        RAISE NOTICE USING
            MESSAGE = format('%s object(s) of the file have no table here: %s', jsonb_array_length(v_missing),
                             (SELECT string_agg(format('%s (%s)', x ->> 'object_name', x ->> 'table'), ', ')
                                FROM jsonb_array_elements(v_missing) x)),
            HINT = CASE WHEN c.adapter = 'heroku' THEN 'Connect creates the tables of new mappings; map them with connect_map_table() once they exist.'
                        ELSE 'Create them, then import the file again (the objects mapped already are updated).' END;
    END IF;

    IF c.adapter = 'heroku' THEN
        v_id := connect_guard.request_enqueue(c.connection_id, 'import', NULL,
                                              jsonb_build_object('mappings', jsonb_array_length(connect_import_config.config -> 'mappings')));
        UPDATE connect_guard.request SET payload = connect_import_config.config WHERE request_id = v_id;
        RAISE NOTICE USING
            MESSAGE = format('the configuration goes to Heroku Connect as import request %s', v_id),
            HINT = format('The worker sends it once this transaction commits; then SELECT connect_wait_config(%L) waits for Connect''s answer.',
                          c.name);
        RETURN jsonb_build_object('request_id', v_id, 'action', 'import', 'status', 'pending',
                                  'wait', format('SELECT connect_wait_config(%L)', c.name)) || v_report;
    END IF;

    UPDATE connect_guard.connection cn SET config = connect_import_config.config -> 'connection'
     WHERE cn.connection_id = c.connection_id;
    v_report := v_report || jsonb_build_object('schema_changes',
        (connect_guard.config_store(c.connection_id, connect_import_config.config, 'import', 'import',
                                    'connect_import_config') -> 'schema_changes'));
    PERFORM connect_guard.log_event(c.connection_id, 'config_imported',
        jsonb_build_object('mappings', jsonb_array_length(connect_import_config.config -> 'mappings')) || v_report);
    RETURN jsonb_build_object('status', 'imported') || v_report;
END;
$$;

/*
 * connect_wait_config waits for the answer to the newest export or import
 * request of a heroku connection (made in an earlier transaction) and
 * returns it: Connect's export file, or its answer to the import.  It
 * fails at once when Connect refused the request, with Connect's message
 * (which names the key of the file at fault), and at the timeout.
 */
CREATE FUNCTION connect_wait_config(connection text, timeout interval DEFAULT '2 min')
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r connect_guard.request;
    v_deadline timestamptz;
BEGIN
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''2 min''');
    v_deadline := clock_timestamp() + timeout;
    PERFORM connect_guard.require_read_committed('connect_wait_config()');
    c := connect_guard.require_connection(connection);
    IF c.adapter <> 'heroku' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" has no configuration request to wait for', c.name),
            DETAIL = format('Its adapter is %s: connect_export_config() and connect_import_config() answer at once.', c.adapter),
            HINT = 'Only heroku connections ask Connect, through the worker.';
    END IF;
    SELECT * INTO r FROM connect_guard.request q
     WHERE q.connection_id = c.connection_id AND q.action IN ('export', 'import')
     ORDER BY q.request_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('no export or import was requested for connection "%s"', c.name),
            HINT = 'Call connect_export_config() or connect_import_config() first, and commit.';
    END IF;
    IF r.status = 'pending' AND r.created_xid = pg_current_xact_id_if_assigned() THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_transaction_state',
            MESSAGE = 'connect_wait_config() cannot wait for a request made in its own transaction',
            DETAIL = 'The worker sends a request only once the transaction that made it has committed.',
            HINT = 'Commit after connect_export_config() or connect_import_config(), then call connect_wait_config().';
    END IF;

    LOOP
        -- each statement sees what has committed since the last one (READ COMMITTED)
        SELECT * INTO r FROM connect_guard.request WHERE request_id = r.request_id;
        IF r.status = 'succeeded' THEN
            RETURN r.result;
        ELSIF r.status = 'failed' THEN
            RAISE EXCEPTION USING
                ERRCODE = CASE WHEN r.action = 'import' AND r.last_http_status IN (400, 422)
                               THEN 'invalid_parameter_value' ELSE 'object_not_in_prerequisite_state' END,
                MESSAGE = format('the %s of connection "%s" failed: %s', r.action, c.name, r.last_error),
                DETAIL = format('Request %s, after %s attempt%s.', r.request_id, r.attempts,
                                CASE WHEN r.attempts = 1 THEN '' ELSE 's' END),
                HINT = CASE WHEN r.action = 'import' AND r.last_http_status IN (400, 422)
                            THEN 'Connect refused the file and changed nothing: fix the key it names and import again.'
                            ELSE 'Fix the cause (connect_requests and the event log have the details), then ask again.' END;
        END IF;
        IF clock_timestamp() > v_deadline THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('timed out after %s s waiting for the %s of connection "%s"',
                                 round(extract(epoch FROM timeout)::numeric, 1), r.action, c.name),
                DETAIL = format('Request %s is %s after %s attempt%s%s.', r.request_id, r.status, r.attempts,
                                CASE WHEN r.attempts = 1 THEN '' ELSE 's' END,
                                CASE WHEN r.last_error IS NOT NULL THEN '; last error: ' || r.last_error ELSE '' END),
                HINT = 'See connect_requests; check that the connect_guard worker runs and reaches Connect. connect_wait_config() may be called again.';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END;
$$;
