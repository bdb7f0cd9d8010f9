/* ------------------------------------------------------------------------
 * Adopting a schema that Heroku Connect manages.  Connect keeps its own
 * trigger log there (_trigger_log, _trigger_log_archive, _hcmeta) and logs
 * every mapped table through its own triggers, hc_<table>_logtrigger
 * (AFTER row, WHEN get_xmlbinary() = 'base64', calling hc_<table>_logger),
 * skipping the writes of its own sessions (xmlbinary = 'hex').  An adopted
 * connection reads that log (15_log_sources.sql), fences the tables,
 * pauses and resumes Connect through its adapter, witnesses the log and
 * asks for reloads; it adds, alters and removes none of Connect's objects:
 * no trigger, column, index, sequence or row.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.connect_schema_problems says what a schema lacks to be
 * Connect's (empty when nothing): the log with Connect's columns and its
 * (state, id) index, the id sequence, the archive and _hcmeta.
 */
CREATE FUNCTION connect_guard.connect_schema_problems(p_schema text)
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_log regclass := to_regclass(format('%I._trigger_log', p_schema));
    v_archive regclass := to_regclass(format('%I._trigger_log_archive', p_schema));
    v_problems text[] := '{}';
    v_wrong text;
BEGIN
    IF v_log IS NULL OR (SELECT relkind FROM pg_class WHERE oid = v_log) NOT IN ('r', 'p') THEN
        v_problems := v_problems || format('no table %I._trigger_log', p_schema);
    ELSE
        SELECT string_agg(format('%s %s', e.name, replace(e.typname, '|', ' or ')), ', ' ORDER BY e.ord) INTO v_wrong
          -- Connect's dumps show the times with and without time zone
          FROM (VALUES (1, 'id', 'int4'), (2, 'txid', 'int8'), (3, 'created_at', 'timestamptz|timestamp'),
                       (4, 'updated_at', 'timestamptz|timestamp'), (5, 'processed_at', 'timestamptz|timestamp'),
                       (6, 'processed_tx', 'int8'), (7, 'state', 'varchar'), (8, 'action', 'varchar'),
                       (9, 'table_name', 'varchar'), (10, 'record_id', 'int4'), (11, 'sfid', 'varchar'),
                       (12, 'old', 'text'), (13, 'values', 'text'), (14, 'sf_result', 'int4'),
                       (15, 'sf_message', 'text')) e(ord, name, typname)
         WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                            WHERE a.attrelid = v_log AND a.attname = e.name AND NOT a.attisdropped
                              AND t.typname = ANY (string_to_array(e.typname, '|')));
        IF v_wrong IS NOT NULL THEN
            v_problems := v_problems || format('%s lacks Connect''s columns %s', v_log, v_wrong);
        ELSIF pg_get_serial_sequence(v_log::text, 'id') IS NULL THEN
            v_problems := v_problems || format('%s.id takes no value from a sequence of its own', v_log);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_index i
                        WHERE i.indrelid = v_log AND i.indnkeyatts >= 2 AND i.indpred IS NULL
                          AND i.indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = v_log AND attname = 'state')
                          AND i.indkey[1] = (SELECT attnum FROM pg_attribute WHERE attrelid = v_log AND attname = 'id')) THEN
            v_problems := v_problems || format('no index on %s (state, id)', v_log);
        END IF;
    END IF;
    IF v_archive IS NULL THEN
        v_problems := v_problems || format('no table %I._trigger_log_archive', p_schema);
    ELSIF EXISTS (SELECT 1 FROM unnest(ARRAY['id', 'state', 'action', 'table_name', 'record_id', 'sfid', 'sf_message',
                                              'created_at', 'updated_at', 'processed_at']) n
                   WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                                      WHERE a.attrelid = v_archive AND a.attname = n AND NOT a.attisdropped)) THEN
        v_problems := v_problems || format('%s lacks Connect''s columns', v_archive);
    END IF;
    IF to_regclass(format('%I._hcmeta', p_schema)) IS NULL THEN
        v_problems := v_problems || format('no table %I._hcmeta', p_schema);
    END IF;
    RETURN v_problems;
END;
$$;

/*
 * connect_guard.connect_logged_tables: the tables of a schema that carry
 * Connect's logger trigger, hc_<table>_logtrigger, a row trigger after the
 * write calling hc_<table>_logger of the same schema.
 */
CREATE FUNCTION connect_guard.connect_logged_tables(p_schema text)
RETURNS TABLE (relid oid, relname name)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT cl.oid, cl.relname
      FROM pg_class cl
      JOIN pg_namespace n ON n.oid = cl.relnamespace
      JOIN pg_trigger tg ON tg.tgrelid = cl.oid
      JOIN pg_proc p ON p.oid = tg.tgfoid
     WHERE n.nspname = p_schema AND cl.relkind IN ('r', 'p')
       AND tg.tgname = left('hc_' || cl.relname || '_logtrigger', 63)
       AND p.proname = left('hc_' || cl.relname || '_logger', 63)
       AND p.pronamespace = n.oid
       AND (tg.tgtype & 1) = 1          -- FOR EACH ROW
       AND (tg.tgtype & (2 | 64)) = 0   -- AFTER
       AND (tg.tgtype & (4 | 8 | 16)) <> 0
     ORDER BY cl.relname;
$$;

/*
 * connect_guard.check_table_log_source is connect_map_table()'s check of
 * which log a table's changes reach: an adopted connection maps only the
 * tables of its schema that Connect logs (it adds no trigger); a
 * connection with its own log refuses a table Connect logs (its capture
 * trigger would start a second log nobody reads).
 */
CREATE FUNCTION connect_guard.check_table_log_source(c connect_guard.connection, p_tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema text := (SELECT n.nspname FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
                       WHERE cl.oid = p_tbl);
    v_logged boolean := EXISTS (SELECT 1 FROM connect_guard.connect_logged_tables(v_schema) t WHERE t.relid = p_tbl);
    v_adopter text;
BEGIN
    IF c.log_schema IS NOT NULL THEN
        IF v_schema IS DISTINCT FROM c.log_schema THEN
            RAISE EXCEPTION USING
                ERRCODE = 'wrong_object_type',
                MESSAGE = format('cannot map "%s" on connection "%s": it is not in schema %s', p_tbl, c.name, c.log_schema),
                DETAIL = format('Connection "%s" reads Heroku Connect''s log %s, which logs only the tables of its schema.',
                                c.name, connect_guard.log_table(c.log_schema)),
                HINT = 'Map it in Heroku Connect, or on a connection with a log of its own (connect_create_connection).';
        END IF;
        IF NOT v_logged THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('table "%s" has no Heroku Connect logger trigger', p_tbl),
                DETAIL = format('Connect logs a table it maps with the trigger %I calling %I.%I; connect_guard adds no trigger to Connect''s schema.',
                                left('hc_' || (SELECT relname FROM pg_class WHERE oid = p_tbl) || '_logtrigger', 63), v_schema,
                                left('hc_' || (SELECT relname FROM pg_class WHERE oid = p_tbl) || '_logger', 63)),
                HINT = 'Create the mapping in Heroku Connect first; it creates the table''s triggers.';
        END IF;
        RETURN;
    END IF;
    IF v_logged THEN
        SELECT name INTO v_adopter FROM connect_guard.connection WHERE log_schema = v_schema;
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('table "%s" is logged by Heroku Connect''s own trigger', p_tbl),
            DETAIL = format('Connect reads %s; a capture trigger of connect_guard would start a second log that nobody reads.',
                            connect_guard.log_table(v_schema)),
            HINT = CASE WHEN v_adopter IS NOT NULL
                        THEN format('Connection "%s" adopted schema %s and maps its tables; see connect_mappings.', v_adopter, v_schema)
                        ELSE format('Adopt the schema instead: SELECT connect_adopt_schema(''name'', %L).', v_schema) END;
    END IF;
END;
$$;

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
    IF schema IS NULL OR NOT EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = schema) THEN
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
 * connect_guard.reload_fence_writer: the role whose sessions with
 * xmlbinary = 'hex' may write through a reload fence over these mappings
 * (fence.c): the sync role of their adopted connections, as the int4 a
 * fence entry keeps; NULL when none is adopted, or when they disagree
 * (then nobody is let through, and a WARNING says so).
 */
CREATE FUNCTION connect_guard.reload_fence_writer(p_mapping_ids integer[])
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_roles text[];
    v_oid bigint;
BEGIN
    SELECT array_agg(DISTINCT c.sync_role) INTO v_roles
      FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id)
     WHERE m.mapping_id = ANY (p_mapping_ids) AND c.sync_role IS NOT NULL;
    IF cardinality(v_roles) > 1 THEN
        RAISE WARNING USING
            MESSAGE = format('connect_guard: the reload fence lets no sync service write: the adopted connections run as different roles (%s)',
                             array_to_string(v_roles, ', ')),
            HINT = 'Reload the tables of each connection with connect_reload_mapping(), or give them one sync_role.';
        RETURN NULL;
    END IF;
    SELECT r.oid::bigint INTO v_oid FROM pg_roles r WHERE r.rolname = v_roles[1];
    -- an oid above 2^31 keeps its bits
    RETURN CASE WHEN v_oid > 2147483647 THEN v_oid - 4294967296 ELSE v_oid END;
END;
$$;

/*
 * connect_guard.note_restored_entries adds to a rollback incident the
 * entries of each adopted log that the restore brought back unfinished at
 * or below the processed mark the witness had recorded: Connect had sent
 * them already and would send them to Salesforce again.  connect_guard
 * changes none of Connect's rows: the incident, an event and a WARNING
 * list them by id range and count.
 */
CREATE FUNCTION connect_guard.note_restored_entries(p_incident integer, p_mapping_ids integer[], p_witness jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    w jsonb;
    r record;
    v_found jsonb := '[]';
BEGIN
    FOR c IN SELECT DISTINCT cn.* FROM connect_guard.connection cn JOIN connect_guard.mapping m USING (connection_id)
              WHERE m.mapping_id = ANY (p_mapping_ids) AND cn.log_schema IS NOT NULL ORDER BY cn.connection_id LOOP
        w := p_witness -> 'connections' -> c.name;
        IF w IS NULL OR w -> 'created_at' IS DISTINCT FROM to_jsonb(c.created_at) THEN
            CONTINUE;
        END IF;
        r := connect_guard.log_restored_entries(c.connection_id, (w ->> 'processed_mark')::bigint);
        IF r.entries > 0 THEN
            v_found := v_found || jsonb_build_object('connection', c.name, 'log', connect_guard.log_table(c.log_schema),
                                                     'first_id', r.first_id, 'last_id', r.last_id, 'entries', r.entries,
                                                     'witnessed_mark', (w ->> 'processed_mark')::bigint);
            RAISE WARNING USING
                MESSAGE = format('connect_guard: the restore brought back %s entries of %s (ids %s to %s) that Connect had already processed',
                                 r.entries, connect_guard.log_table(c.log_schema), r.first_id, r.last_id),
                DETAIL = format('Connect had processed every entry up to id %s; these are unfinished again, and Connect would send them to Salesforce a second time.',
                                w ->> 'processed_mark'),
                HINT = format('See connect_rollback_incidents (incident %s); before Connect sends them, mark those it must not send again, e.g. UPDATE %s SET state = ''IGNORED'' WHERE id BETWEEN %s AND %s AND state = ''NEW''.',
                              p_incident, connect_guard.log_table(c.log_schema), r.first_id, r.last_id);
        END IF;
    END LOOP;
    IF jsonb_array_length(v_found) > 0 THEN
        UPDATE connect_guard.rollback_incident SET restored_as_new = v_found WHERE incident_id = p_incident;
        PERFORM connect_guard.log_event(NULL, 'entries_restored_as_new',
                                        jsonb_build_object('incident_id', p_incident, 'logs', v_found));
    END IF;
    RETURN v_found;
END;
$$;

/*
 * connect_guard.plan_pause_adopted: a copy carries Connect's log as rows,
 * unfinished entries included, so Connect pauses before the copy's fence
 * goes up (Heroku's pg:copy runbook: pause Connect with the maintenance
 * mode) rather than drain under it, where its own writes would be fenced.
 * Asks for the pauses and returns the adopted connections not PAUSED yet
 * (NULL when all are).  The plan resumes them as it resumes the others.
 */
CREATE FUNCTION connect_guard.plan_pause_adopted(p connect_guard.upgrade_plan)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_waiting text;
BEGIN
    UPDATE connect_guard.upgrade_plan
       SET paused_connections = ARRAY(SELECT name FROM connect_guard.connection ORDER BY name)
     WHERE plan_id = p.plan_id AND paused_connections = '{}';
    -- as the plan's pausing step does (70_upgrade.sql)
    FOR c IN SELECT * FROM connect_guard.connection cn
              WHERE cn.log_schema IS NOT NULL
                AND (cn.state NOT IN ('PAUSED', 'PAUSING')
                     OR (cn.state = 'PAUSING' AND (connect_guard.latest_state_request(cn.connection_id)).status = 'failed'))
              ORDER BY cn.name LOOP
        BEGIN
            PERFORM @extschema@.connect_pause(c.name, block_writes => false,
                                              timeout => CASE WHEN c.adapter = 'local' THEN interval '100 ms' ELSE p.step_timeout END,
                                              reason => format('upgrade plan %s', p.plan_id));
        EXCEPTION WHEN object_not_in_prerequisite_state THEN
            NULL;
        END;
    END LOOP;
    SELECT string_agg(format('%s (%s)', name, state), ', ' ORDER BY name) INTO v_waiting
      FROM connect_guard.connection WHERE log_schema IS NOT NULL AND state <> 'PAUSED';
    RETURN v_waiting;
END;
$$;

/*
 * connect_guard.log_positions_differ compares the adopted logs with the
 * positions a plan recorded (log_position), for a copy: NULL when each is
 * as it was, else what differs.
 */
CREATE FUNCTION connect_guard.log_positions_differ(p_recorded jsonb)
RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('connection "%s": %s here, %s then', r.key,
                             coalesce(connect_guard.log_position(c.connection_id)::text, 'nothing'), r.value), '; '
                      ORDER BY r.key)
      FROM jsonb_each(coalesce(p_recorded, '{}')) r
      LEFT JOIN connect_guard.connection c ON c.name = r.key
     WHERE r.value ? 'log'
       AND connect_guard.log_position(c.connection_id) IS DISTINCT FROM r.value;
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
