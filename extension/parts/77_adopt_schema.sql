/* ------------------------------------------------------------------------
 * Adopting a schema that Heroku Connect manages (17_connect_schema.sql
 * says what that is), and the write errors Connect records there.  An
 * adopted connection reads Connect's log (15_log_sources.sql), fences the
 * tables, pauses and resumes Connect through its adapter, witnesses the
 * log and asks for reloads; it adds, alters and removes none of Connect's
 * objects: no trigger, column, index, sequence or row.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_adopt_schema(connection text, schema text DEFAULT 'salesforce', adapter text DEFAULT 'heroku',
                                     options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_problems text[];
    v_adopter text;
    v_captured text;
    v_role text;
    v_id integer;
    t record;
    v_tables text[] := '{}';
BEGIN
    -- every argument is checked before anything is read or created
    PERFORM connect_guard.require_not_null(connection, 'connection name',
        'Name the new connection: 1 to 63 letters, digits, "_", "." or "-".');
    PERFORM connect_guard.require_not_null(schema, 'schema',
        'Pass the schema Heroku Connect writes to (heroku connect:info shows it; salesforce by default).');
    PERFORM connect_guard.require_not_null(adapter, 'adapter',
        'Use ''heroku'' (the default: Connect''s API), ''webhook'' or ''local''.');
    PERFORM connect_guard.require_not_null(options, 'options', 'Pass options as jsonb, for example ''{}''::jsonb.');
    IF NOT EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = schema) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_schema_name',
            MESSAGE = format('schema %s does not exist', coalesce(quote_ident(schema), 'NULL')),
            HINT = 'Pass the schema Heroku Connect writes to (heroku connect:info shows it; salesforce by default).';
    END IF;
    v_problems := connect_guard.connect_schema_problems(schema);
    IF cardinality(v_problems) > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('schema %s is not managed by Heroku Connect', quote_ident(schema)),
            DETAIL = format('It is not laid out as Connect lays out its schema: %s.', array_to_string(v_problems, '; ')),
            HINT = 'Adopt the schema Connect writes to; to sync tables of your own, use connect_create_connection() and connect_map_table().';
    END IF;
    SELECT c.name INTO v_adopter FROM connect_guard.connection c WHERE c.log_schema = schema;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('schema %s is already adopted by connection "%s"', quote_ident(schema), v_adopter),
            HINT = 'See connect_connections; drop that connection with connect_drop_connection() to adopt the schema again.';
    END IF;
    -- a capture trigger of connect_guard on a table of Connect's: a second log, undone by unmapping
    SELECT string_agg(DISTINCT format('%s (connection "%s")', to_regclass(format('%I.%I', m.table_schema, m.table_name)), c.name), ', ')
      INTO v_captured
      FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id)
     WHERE m.table_schema = schema AND c.log_schema IS NULL;
    IF v_captured IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('tables of schema %s are mapped by a connection with a log of its own', quote_ident(schema)),
            DETAIL = format('Mapped: %s. Their capture triggers feed connect_guard.trigger_log, a second log next to Connect''s.', v_captured),
            HINT = 'Unmap them with connect_unmap_table() (which drops the capture triggers), then adopt the schema.';
    END IF;
    IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'connection options must be a JSON object',
            HINT = 'Pass options as jsonb, for example ''{}''::jsonb.';
    END IF;
    -- the role Connect's sessions run as: by default the owner of its log, which Connect created
    IF options ? 'sync_role' THEN
        v_role := options ->> 'sync_role';
        IF jsonb_typeof(options -> 'sync_role') <> 'string'
           OR NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = v_role) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('option "sync_role" must name an existing role, not %s', options -> 'sync_role'),
                DETAIL = 'It is the role Heroku Connect''s sessions log in as: the reload fence lets its sessions with xmlbinary = ''hex'' write.',
                HINT = 'Leave it out to use the owner of the schema''s _trigger_log.';
        END IF;
    ELSE
        SELECT r.rolname INTO v_role FROM pg_class cl JOIN pg_roles r ON r.oid = cl.relowner
         WHERE cl.oid = format('%I._trigger_log', schema)::regclass;
    END IF;

    v_id := @extschema@.connect_create_connection(connection, adapter, options - 'sync_role');
    UPDATE connect_guard.connection SET log_schema = schema, sync_role = v_role WHERE connection_id = v_id;
    FOR t IN SELECT * FROM connect_guard.connect_logged_tables(schema) LOOP
        -- named by the table; the worker's refresh takes Connect's spelling and mapping id from the deep GET
        PERFORM @extschema@.connect_map_table(connection, t.relid::regclass);
        v_tables := v_tables || format('%I.%I', schema, t.relname);
    END LOOP;
    PERFORM connect_guard.log_tick(v_id, schema);
    PERFORM connect_guard.log_event(v_id, 'schema_adopted',
        jsonb_build_object('schema', schema, 'log', connect_guard.log_table(schema), 'sync_role', v_role,
                           'tables', to_jsonb(v_tables)));
    IF adapter = 'heroku' THEN
        PERFORM @extschema@.connect_refresh(connection);
    END IF;
    RETURN v_id;
END;
$$;

/*
 * connect_guard.write_errors: the FAILED entries of every adopted log and
 * its archive (Connect's CLI shows only the last 24 hours).  SECURITY
 * DEFINER: it reads Connect's tables for roles granted the view.
 */
CREATE FUNCTION connect_guard.write_errors()
RETURNS TABLE (connection text, table_name text, record_id bigint, sfid text, action text, sf_message text,
               failed_at timestamptz, entry_id bigint, archived boolean, created_at timestamptz)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_table text;
BEGIN
    FOR c IN SELECT * FROM connect_guard.connection WHERE log_schema IS NOT NULL ORDER BY name LOOP
        IF connect_guard.log_sequence(c.log_schema) IS NULL THEN
            CONTINUE;
        END IF;
        -- Connect's indexes: (state, id) on the log, (state, table_name) WHERE state = 'FAILED' on the archive
        FOREACH v_table IN ARRAY ARRAY['_trigger_log', '_trigger_log_archive'] LOOP
            RETURN QUERY EXECUTE format(
                'SELECT %1$L::text, format(''%%I.%%I'', %2$L, l.table_name), l.record_id::bigint, l.sfid::text,
                        l.action::text, l.sf_message, coalesce(l.processed_at, l.updated_at)::timestamptz, l.id::bigint,
                        %3$L::boolean, l.created_at::timestamptz
                   FROM %2$I.%4$I l WHERE l.state = ''FAILED''',
                c.name, c.log_schema, v_table = '_trigger_log_archive', v_table);
        END LOOP;
    END LOOP;
END;
$$;

CREATE VIEW connect_write_errors AS
SELECT * FROM connect_guard.write_errors();
