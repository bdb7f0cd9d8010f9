/* ------------------------------------------------------------------------
 * Connections and mappings (for the DBA: the caller needs the privileges the
 * work needs, e.g. to create a trigger on a mapped table)
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_create_connection(name text, adapter text DEFAULT 'local',
                                          options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id integer;
    v_options record;
BEGIN
    PERFORM connect_guard.require_not_null(name, 'connection name',
        'Use 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit.');
    PERFORM connect_guard.require_not_null(adapter, 'adapter',
        'Use ''local'' (the consumer reads the local state), ''heroku'' (Heroku Connect API) or ''webhook''.');
    PERFORM connect_guard.require_not_null(options, 'options', 'Pass options as jsonb, for example ''{}''::jsonb.');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_name',
            MESSAGE = format('invalid connection name %s', quote_literal(name)),
            HINT = 'Use 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit.';
    END IF;
    IF adapter NOT IN ('local', 'heroku', 'webhook') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown adapter %s', quote_literal(adapter)),
            HINT = 'Use ''local'' (the consumer reads the local state), ''heroku'' (Heroku Connect API) or ''webhook''.';
    END IF;
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'connection options must be a JSON object',
            HINT = 'Pass options as jsonb, for example ''{}''::jsonb.';
    END IF;
    IF EXISTS (SELECT 1 FROM connect_guard.connection c WHERE c.name = connect_create_connection.name) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('connection "%s" already exists', name),
            HINT = 'Choose another name, or drop the old connection with connect_drop_connection().';
    END IF;

    -- per adapter (18_options.sql); an inline token or key goes to connection_secret, not options
    SELECT * INTO v_options FROM connect_guard.prepare_options(adapter, options);

    INSERT INTO connect_guard.connection (name, adapter, options, last_tick)
    VALUES (name, adapter, v_options.options, (connect_guard.new_tick()).tick_id)
    RETURNING connection_id INTO v_id;
    IF v_options.secret IS NOT NULL THEN
        INSERT INTO connect_guard.connection_secret (connection_id, secret) VALUES (v_id, v_options.secret);
    END IF;
    PERFORM connect_guard.log_event(v_id, 'connection_created',
                                    jsonb_build_object('adapter', adapter,
                                                       'options', connect_guard.redact(v_options.options)));
    RETURN v_id;
END;
$$;

CREATE FUNCTION connect_map_table(connection text, tbl regclass, object_name text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r record;
    v_id integer;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_table(tbl);
    IF btrim(object_name) = '' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'object name must not be empty',
            HINT = 'Pass the Salesforce object''s API name, for example ''Contact'', or NULL for the table''s name.';
    END IF;
    SELECT n.nspname, cl.relname, cl.relkind, cl.relpersistence, cl.relispartition
      INTO r
      FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE cl.oid = tbl;
    IF r.relkind NOT IN ('r', 'p') OR r.relpersistence = 't' OR r.nspname = 'connect_guard' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('cannot map "%s"', tbl),
            DETAIL = 'Only permanent and unlogged tables outside the connect_guard schema can be mapped.',
            HINT = 'Map an ordinary table of the application.';
    END IF;
    IF r.relispartition THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('cannot map "%s" because it is a partition', tbl),
            HINT = 'Map the partitioned table instead; its partitions are captured under its name.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = tbl AND i.indisprimary) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('table "%s" has no primary key', tbl),
            DETAIL = 'The sync service identifies rows by their primary key (the record_id of the trigger log).',
            HINT = format('Add one, for example ALTER TABLE %s ADD PRIMARY KEY (id).', tbl);
    END IF;
    IF EXISTS (SELECT 1 FROM connect_guard.mapping m
                WHERE m.connection_id = c.connection_id
                  AND m.table_schema = r.nspname AND m.table_name = r.relname) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('table "%s" is already mapped by connection "%s"', tbl, c.name),
            HINT = 'See connect_mappings; unmap it first with connect_unmap_table() to map it again.';
    END IF;

    -- which log the table's changes reach (77_connect_schema.sql): Connect's tables get no trigger of ours
    PERFORM connect_guard.check_table_log_source(c, tbl);
    -- one pair of triggers per table, whatever the number of connections mapping it
    IF c.log_schema IS NULL AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                                             WHERE t.tgrelid = tbl AND t.tgname = '_connect_guard_capture') THEN
        EXECUTE format('CREATE TRIGGER _connect_guard_capture AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
                       'FOR EACH ROW EXECUTE FUNCTION connect_guard.capture(%L, %L)',
                       r.nspname, r.relname, r.nspname, r.relname);
        EXECUTE format('CREATE TRIGGER _connect_guard_truncate AFTER TRUNCATE ON %I.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.capture(%L, %L)',
                       r.nspname, r.relname, r.nspname, r.relname);
    END IF;

    INSERT INTO connect_guard.mapping (connection_id, table_schema, table_name, object_name)
    VALUES (c.connection_id, r.nspname, r.relname, coalesce(object_name, r.relname))
    RETURNING mapping_id INTO v_id;
    -- what the table looks like now is what the mapping expects, and its watch (19_table_shape.sql);
    -- what it cannot expect (an inheritance child: its rows are not captured) is reported at once
    PERFORM connect_guard.mapping_init(v_id);
    PERFORM connect_guard.schema_changes_record(ARRAY[v_id], 'map', 'connect_map_table');
    PERFORM connect_guard.fence_refresh();
    PERFORM connect_guard.log_event(c.connection_id, 'table_mapped',
                                    jsonb_build_object('table', format('%I.%I', r.nspname, r.relname),
                                                       'object_name', coalesce(object_name, r.relname)));
    RETURN v_id;
END;
$$;

/*
 * connect_guard.drop_capture_if_unused removes a table's capture triggers
 * once no connection maps it any more.
 */
CREATE FUNCTION connect_guard.drop_capture_if_unused(p_schema text, p_table text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- a table of an adopted schema has none (and DROP TRIGGER would lock it for nothing)
    IF NOT EXISTS (SELECT 1 FROM connect_guard.mapping m
                    WHERE m.table_schema = p_schema AND m.table_name = p_table)
       AND EXISTS (SELECT 1 FROM pg_trigger t
                    WHERE t.tgrelid = to_regclass(format('%I.%I', p_schema, p_table))
                      AND t.tgname IN ('_connect_guard_capture', '_connect_guard_truncate')) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS _connect_guard_capture ON %I.%I', p_schema, p_table);
        EXECUTE format('DROP TRIGGER IF EXISTS _connect_guard_truncate ON %I.%I', p_schema, p_table);
        PERFORM connect_guard.drop_truncate_watch(format('%I.%I', p_schema, p_table)::regclass);
    END IF;
END;
$$;

-- connect_guard.mapping_of returns the mapping of tbl by a connection, or raises the error
CREATE FUNCTION connect_guard.mapping_of(c connect_guard.connection, tbl regclass)
RETURNS connect_guard.mapping
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m connect_guard.mapping;
BEGIN
    PERFORM connect_guard.require_table(tbl);
    SELECT mp.* INTO m
      FROM connect_guard.mapping mp
      JOIN pg_class cl ON cl.oid = tbl
      JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE mp.connection_id = c.connection_id AND mp.table_schema = n.nspname AND mp.table_name = cl.relname
       FOR UPDATE OF mp;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('table "%s" is not mapped by connection "%s"', tbl, c.name),
            HINT = 'See connect_mappings for the tables each connection maps.';
    END IF;
    RETURN m;
END;
$$;

CREATE FUNCTION connect_unmap_table(connection text, tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
BEGIN
    c := connect_guard.connection_for_update(connection);
    m := connect_guard.mapping_of(c, tbl);
    DELETE FROM connect_guard.mapping WHERE mapping_id = m.mapping_id;
    PERFORM connect_guard.drop_capture_if_unused(m.table_schema, m.table_name);
    PERFORM connect_guard.fence_refresh();
    PERFORM connect_guard.log_event(c.connection_id, 'table_unmapped',
                                    jsonb_build_object('table', format('%I.%I', m.table_schema, m.table_name)));
END;
$$;

CREATE FUNCTION connect_drop_connection(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
BEGIN
    c := connect_guard.connection_for_update(name);
    FOR m IN DELETE FROM connect_guard.mapping mp WHERE mp.connection_id = c.connection_id RETURNING mp.* LOOP
        PERFORM connect_guard.drop_capture_if_unused(m.table_schema, m.table_name);
    END LOOP;
    IF c.fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(c.fence_id);
    END IF;
    PERFORM connect_guard.fence_refresh();
    PERFORM connect_guard.log_event(c.connection_id, 'connection_dropped');
    DELETE FROM connect_guard.connection WHERE connection_id = c.connection_id;
END;
$$;
