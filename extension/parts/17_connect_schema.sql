/* ------------------------------------------------------------------------
 * What makes a schema Heroku Connect's, and what that allows: Connect
 * keeps its own trigger log there (_trigger_log, _trigger_log_archive,
 * _hcmeta) and logs every mapped table through its own triggers,
 * hc_<table>_logtrigger (AFTER row, WHEN get_xmlbinary() = 'base64',
 * calling hc_<table>_logger), skipping the writes of its own sessions
 * (xmlbinary = 'hex').  A connection that adopts such a schema
 * (connect_adopt_schema, 77_adopt_schema.sql) reads that log
 * (15_log_sources.sql) and adds no trigger to it; a connection with a log
 * of its own keeps away from the tables Connect logs.
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
