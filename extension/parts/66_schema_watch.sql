/* ------------------------------------------------------------------------
 * The schema watch: every change of a mapped table that could hide writes
 * from the log, or that makes it differ from its mapping, is noticed at
 * once (19_table_shape_changes.sql records it: SCHEMA_CHANGED, an event, a
 * WARNING, a row of connect_schema_drift), by
 *
 *   - an event trigger on ddl_command_end (ALTER TABLE of every kind:
 *     DISABLE/ENABLE [REPLICA|ALWAYS] TRIGGER, ALTER COLUMN ... TYPE,
 *     ADD/DROP COLUMN, ATTACH/DETACH PARTITION, INHERIT; CREATE TABLE ...
 *     INHERITS / PARTITION OF; CREATE [OR REPLACE] TRIGGER, ALTER TRIGGER)
 *     on the mapped table, its partitions or its inheritance children;
 *   - an event trigger on sql_drop (DROP TABLE of the table or of one of
 *     its partitions, DROP TRIGGER of a capture trigger, DROP SCHEMA and
 *     DROP OWNED that take them);
 *   - the truncate watch (TRUNCATE of one partition, 19_table_shape.sql);
 *   - the worker, every cycle (schema_watch_cycle), for what event triggers
 *     do not see: a superuser's direct change of the catalog.
 *
 * The event triggers are ENABLE ALWAYS, so that a session with
 * session_replication_role = replica is watched too.  They cost nothing
 * for other commands (WHEN TAG), and little for these: one look at the
 * mapping catalog and the command's relations.  They run as the
 * extension's owner (SECURITY DEFINER), so that any role's DDL is watched
 * without any right on connect_guard's catalog, and they stand aside while
 * the extension is being created or dropped, and while connect_guard
 * changes the triggers of a mapped table itself (own_ddl).  A failure of
 * the watch itself is a WARNING, never the failure of the user's command
 * (the worker's next cycle looks again).
 *
 * The way out is connect_save_mapping() (runbooks/field_change.sql): it
 * repairs connect_guard's own triggers, accepts the table as it is now, and
 * asks for a reload when writes may have been hidden.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.on_ddl_command_end: checks the mappings of the relations a
 * command created or altered, and of the tables whose triggers it changed.
 * Cheap first: a temporary table, or a command on no mapped table, costs
 * one look at the command and one at the mappings.
 */
CREATE FUNCTION connect_guard.on_ddl_command_end()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_relids oid[];
    v_has_parent boolean;
    v_mappings integer[];
    v_message text;
BEGIN
    -- connect_guard changes the table itself, or the extension is being created or dropped (no catalog)
    IF connect_guard.in_own_ddl() OR to_regclass('connect_guard.mapping') IS NULL THEN
        RETURN;
    END IF;
    -- any failure of the watch is a WARNING, never the failure of the user's command
    BEGIN
        -- one query: the relations of the command (not temporary ones), and the mappings of those that
        -- are mapped tables (a LATERAL per relation, by the catalogs' indexes)
        SELECT array_agg(r.relid), array_agg(mp.mapping_id) FILTER (WHERE mp.mapping_id IS NOT NULL),
               bool_or(EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = r.relid))
          INTO v_relids, v_mappings, v_has_parent
          FROM (SELECT CASE WHEN d.classid = 'pg_trigger'::regclass
                            THEN (SELECT tg.tgrelid FROM pg_trigger tg WHERE tg.oid = d.objid)
                            ELSE d.objid END AS relid
                  FROM pg_event_trigger_ddl_commands() d
                 WHERE d.classid IN ('pg_class'::regclass, 'pg_trigger'::regclass)
                   AND d.schema_name IS DISTINCT FROM 'pg_temp') r
          -- OFFSET 0: looked up per relation (a flattened join would start from every mapping)
          LEFT JOIN LATERAL (SELECT n.nspname, cl.relname FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
                              WHERE cl.oid = r.relid OFFSET 0) nm ON true
          LEFT JOIN LATERAL (SELECT m.mapping_id FROM connect_guard.mapping m
                              WHERE m.table_schema = nm.nspname AND m.table_name = nm.relname OFFSET 0) mp ON true
         WHERE r.relid IS NOT NULL;
        IF v_has_parent THEN
            -- a partition or an inheritance child: the mappings of its ancestors
            v_mappings := connect_guard.mappings_of_relations(v_relids);
        END IF;
        IF v_mappings IS NULL THEN
            RETURN;
        END IF;
        PERFORM connect_guard.schema_changes_record(v_mappings, 'ddl', tg_tag);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        RAISE WARNING USING
            MESSAGE = format('connect_guard could not check what %s changed: %s', tg_tag, v_message),
            HINT = 'The command went through; the connect_guard worker checks the mapped tables on its next cycle.';
    END;
END;
$$;

/*
 * connect_guard.on_sql_drop: checks the mappings whose table, partition or
 * trigger a command dropped.
 */
CREATE FUNCTION connect_guard.on_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_dropped text[];
    v_extension boolean;
    v_mappings integer[];
    v_message text;
BEGIN
    IF connect_guard.in_own_ddl() THEN
        RETURN;
    END IF;
    BEGIN
        -- schema.table of each table dropped, or whose trigger was; none when the extension itself goes
        SELECT array_agg(format('%I.%I', d.address_names[1], d.address_names[2]))
               FILTER (WHERE d.object_type IN ('table', 'trigger') AND NOT d.is_temporary),
               bool_or(d.object_type = 'extension' AND d.object_identity = 'connect_guard')
          INTO v_dropped, v_extension
          FROM pg_event_trigger_dropped_objects() d;
        IF v_dropped IS NULL OR v_extension OR to_regclass('connect_guard.mapping') IS NULL THEN
            RETURN;
        END IF;
        SELECT array_agg(m.mapping_id) INTO v_mappings
          FROM connect_guard.mapping m
         WHERE format('%I.%I', m.table_schema, m.table_name) = ANY (v_dropped)
            OR m.shape -> 'partitions' ?| v_dropped;
        IF v_mappings IS NULL THEN
            RETURN;
        END IF;
        PERFORM connect_guard.schema_changes_record(v_mappings, 'ddl', tg_tag);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        RAISE WARNING USING
            MESSAGE = format('connect_guard could not check what %s dropped: %s', tg_tag, v_message),
            HINT = 'The command went through; the connect_guard worker checks the mapped tables on its next cycle.';
    END;
END;
$$;

CREATE EVENT TRIGGER connect_guard_ddl_watch ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE TRIGGER', 'ALTER TRIGGER')
    EXECUTE FUNCTION connect_guard.on_ddl_command_end();
CREATE EVENT TRIGGER connect_guard_drop_watch ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP TRIGGER', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION connect_guard.on_sql_drop();
-- also in sessions with session_replication_role = replica (pg_restore --disable-triggers, by hand)
ALTER EVENT TRIGGER connect_guard_ddl_watch ENABLE ALWAYS;
ALTER EVENT TRIGGER connect_guard_drop_watch ENABLE ALWAYS;

/*
 * connect_guard.schema_watch_cycle is the worker's check of every mapped
 * table, every cycle, for what the event triggers cannot see (a superuser
 * changing pg_trigger by hand).  One query digests what each check would
 * read (mapping_fingerprints); only the mappings whose digest moved since
 * the last cycle, or whose table was never seen whole, are checked.  A
 * mapping whose rows or table another transaction holds is left for the
 * next cycle (lock_timeout).  A mapping that a reload moved back to
 * DATA_SYNCED while its changes are still open goes back to
 * SCHEMA_CHANGED: a reload alone does not accept a changed table.  Returns
 * the number of new findings.
 */
CREATE FUNCTION connect_guard.schema_watch_cycle()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '100ms'
AS $$
DECLARE
    v_new integer := 0;
    m connect_guard.mapping;
    f record;
BEGIN
    FOR f IN
        SELECT fp.mapping_id, fp.fingerprint
          FROM connect_guard.mapping_fingerprints() fp
          LEFT JOIN connect_guard.mapping_verified v USING (mapping_id)
         WHERE v.verified_at IS NULL OR v.fingerprint IS DISTINCT FROM fp.fingerprint
         ORDER BY fp.mapping_id
    LOOP
        BEGIN
            SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = f.mapping_id;
            v_new := v_new + connect_guard.schema_changes_check(m, 'worker', 'the worker''s check');
            UPDATE connect_guard.mapping_verified SET fingerprint = f.fingerprint WHERE mapping_id = f.mapping_id;
        EXCEPTION WHEN lock_not_available THEN
            NULL;       -- another transaction holds the mapping or its table: next cycle
        END;
    END LOOP;
    FOR m IN
        SELECT mp.* FROM connect_guard.mapping mp
         WHERE mp.state IN ('INITIAL', 'DATA_SYNCED')
           AND EXISTS (SELECT 1 FROM connect_guard.schema_change s
                        WHERE s.mapping_id = mp.mapping_id AND s.resolved_at IS NULL)
    LOOP
        PERFORM connect_guard.mappings_goto(m.connection_id, ARRAY[m.mapping_id], 'SCHEMA_CHANGED',
            ARRAY['INITIAL', 'DATA_SYNCED'], 'schema_changed', jsonb_build_object(
                'table', format('%I.%I', m.table_schema, m.table_name), 'object_name', m.object_name,
                'source', 'worker',
                'context', 'its schema changes are still open: a reload does not settle them, connect_save_mapping() does'));
    END LOOP;
    RETURN v_new;
END;
$$;

/*
 * connect_guard.trigger_sql: the statement that creates (or puts back)
 * expected trigger e on relation p_rel.
 */
CREATE FUNCTION connect_guard.trigger_sql(p_name text, p_type smallint, p_function oid, p_arguments text[],
                                          p_rel regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('CREATE OR REPLACE TRIGGER %I %s %s ON %s FOR EACH %s EXECUTE FUNCTION %s(%s)',
                  p_name, CASE WHEN p_type & 2 = 2 THEN 'BEFORE' ELSE 'AFTER' END,
                  array_to_string(ARRAY[CASE WHEN p_type & 4 = 4 THEN 'INSERT' END,
                                        CASE WHEN p_type & 16 = 16 THEN 'UPDATE' END,
                                        CASE WHEN p_type & 8 = 8 THEN 'DELETE' END,
                                        CASE WHEN p_type & 32 = 32 THEN 'TRUNCATE' END], ' OR '),
                  p_rel, CASE WHEN p_type & 1 = 1 THEN 'ROW' ELSE 'STATEMENT' END,
                  p_function::regproc,
                  (SELECT coalesce(string_agg(quote_literal(a), ', ' ORDER BY i), '')
                     FROM unnest(p_arguments) WITH ORDINALITY u(a, i)))
$$;

/*
 * connect_guard.repair_triggers puts connect_guard's own triggers of
 * mapping m back as it installs them: created again where missing or
 * changed, enabled in the origin role where disabled, REPLICA or ALWAYS;
 * ENABLE ALWAYS while a subscription applies rows into the table (its apply
 * runs with session_replication_role = replica, where triggers enabled in
 * the origin role stay silent).  Returns the triggers of others (Connect's)
 * that are not as expected: connect_guard never touches those.
 */
CREATE FUNCTION connect_guard.repair_triggers(c connect_guard.connection, m connect_guard.mapping)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel regclass := connect_guard.mapping_relid(m);
    e record;
    r regclass;
    t pg_trigger;
    v_not_ours text[] := '{}';
    v_enabled "char" := CASE WHEN connect_guard.subscriptions_into(v_rel) IS NULL THEN 'O' ELSE 'A' END;
    v_was boolean := connect_guard.own_ddl(true);
BEGIN
    FOR e IN SELECT * FROM connect_guard.capture_triggers_expected(c, m) ORDER BY placement DESC LOOP
        FOR r IN
            SELECT v_rel WHERE e.placement = 'table'
            UNION ALL
            SELECT p FROM connect_guard.partitions_of(v_rel) p
             WHERE e.placement = 'each_partition' OR (e.placement = 'table' AND e.trigger_type & 1 = 1)
        LOOP
            SELECT * INTO t FROM pg_trigger tg WHERE tg.tgrelid = r AND tg.tgname = e.trigger_name;
            IF EXISTS (SELECT 1 FROM connect_guard.mapping_findings(m, false) f
                        WHERE (f.kind LIKE 'trigger\_%' OR f.kind = 'subscription_target')
                          AND f.object = format('%I on %s', e.trigger_name, r)) THEN
                IF e.owned_by <> 'connect_guard' THEN
                    v_not_ours := v_not_ours || format('%I on %s', e.trigger_name, r);
                ELSIF t.oid IS NULL OR t.tgtype <> e.trigger_type OR t.tgfoid <> e.function_oid
                      OR connect_guard.trigger_arguments(t) IS DISTINCT FROM e.arguments
                      OR t.tgqual IS NOT NULL OR cardinality(t.tgattr::int2[]) > 0 THEN
                    -- a partition's clone is put back (created again) with its table's trigger
                    EXECUTE connect_guard.trigger_sql(e.trigger_name, e.trigger_type, e.function_oid, e.arguments,
                                                      CASE WHEN e.placement = 'table' THEN v_rel ELSE r END);
                END IF;
                SELECT * INTO t FROM pg_trigger tg WHERE tg.tgrelid = r AND tg.tgname = e.trigger_name;
                IF e.owned_by = 'connect_guard' AND t.tgenabled IS DISTINCT FROM v_enabled AND t.oid IS NOT NULL THEN
                    EXECUTE format('ALTER TABLE %s ENABLE %s TRIGGER %I', r,
                                   CASE v_enabled WHEN 'A' THEN 'ALWAYS' ELSE '' END, e.trigger_name);
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    PERFORM connect_guard.own_ddl(v_was);
    RETURN v_not_ours;
END;
$$;

/*
 * connect_save_mapping is the way out of SCHEMA_CHANGED, as saving the
 * mapping is in Connect's dashboard: it puts connect_guard's own capture
 * triggers back, accepts the table's shape as it is now, and (for a
 * connection whose configuration is its own: local, webhook) takes the
 * table's columns as the mapping's fields.  What it cannot mend stops it,
 * with what to do: an inheritance child, a trigger of Connect's, fields of
 * Connect's configuration that the table lacks.  When a change may have
 * hidden writes (needs_reload), the mapping is reloaded
 * (connect_reload_mapping: RELOAD_TABLE, then DATA_SYNCED once the sync
 * service has reloaded it); reload => false skips that, reload => true
 * reloads anyway.  Returns the mapping's state.
 */
CREATE FUNCTION connect_save_mapping(connection text, tbl regclass, reload boolean DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
    v_not_ours text[];
    v_left text;
    v_needs_reload boolean;
    v_reload boolean;
    v_state_before text;
    v_changes jsonb;
    v_request bigint;
    v_reloading boolean;
    v_gone regclass;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_table(tbl);
    m := connect_guard.mapping_of(c, tbl);

    v_not_ours := connect_guard.repair_triggers(c, m);
    IF cardinality(v_not_ours) > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('cannot save the mapping of %s: triggers that are not connect_guard''s are not as expected: %s',
                             tbl, array_to_string(v_not_ours, ', ')),
            DETAIL = 'connect_guard never changes the sync service''s own objects.',
            HINT = CASE WHEN connect_guard.subscriptions_into(tbl) IS NOT NULL
                        THEN format('Subscription %s applies rows into %s, with session_replication_role = replica: '
                                    'ENABLE ALWAYS the trigger (ALTER TABLE %s ENABLE ALWAYS TRIGGER ...) so that they '
                                    'are logged, or leave the table out of the subscription; then call '
                                    'connect_save_mapping() again.', connect_guard.subscriptions_into(tbl), tbl, tbl)
                        ELSE 'Edit and save the mapping in Heroku Connect''s dashboard, so that Connect puts its trigger back; then call connect_save_mapping() again.' END;
    END IF;

    -- a connection that owns its configuration takes the table's columns as fields
    IF c.adapter <> 'heroku' OR m.config_source IS DISTINCT FROM 'connect' THEN
        UPDATE connect_guard.mapping mp
           SET config = (SELECT (coalesce(mp.config, connect_guard.config_of_columns('{}')) - 'indexes' - 'upsert_field')
                                || jsonb_build_object('fields', d.fields)
                                -- indexes and the upsert field of fields that are gone go with them
                                || jsonb_build_object('indexes', coalesce(
                                       (SELECT jsonb_object_agg(i.key, i.value) FROM jsonb_each(mp.config -> 'indexes') i
                                         WHERE i.key = 'Id' OR EXISTS (SELECT 1 FROM jsonb_object_keys(d.fields) f
                                                                        WHERE lower(f) = lower(i.key))),
                                       '{"Id": {"unique": true}}'))
                                || coalesce((SELECT jsonb_build_object('upsert_field', mp.config -> 'upsert_field')
                                               WHERE EXISTS (SELECT 1 FROM jsonb_object_keys(d.fields) f
                                                              WHERE lower(f) = lower(mp.config ->> 'upsert_field'))), '{}')
                           FROM (SELECT connect_guard.config_fields_for(mp.config, connect_guard.table_columns(tbl)) AS fields) d),
               config_at = clock_timestamp()
         WHERE mp.mapping_id = m.mapping_id;
    END IF;
    -- a partition that left the table keeps no truncate watch of ours
    PERFORM connect_guard.own_ddl(true);
    FOR v_gone IN SELECT to_regclass(p) FROM jsonb_array_elements_text(m.shape -> 'partitions') p
                   WHERE p <> ALL (SELECT x::text FROM connect_guard.partitions_of(tbl) x) LOOP
        IF v_gone IS NOT NULL AND NOT (SELECT relispartition FROM pg_class WHERE oid = v_gone) THEN
            EXECUTE format('DROP TRIGGER IF EXISTS _connect_guard_truncate_watch ON %s', v_gone);
        END IF;
    END LOOP;
    PERFORM connect_guard.own_ddl(false);
    UPDATE connect_guard.mapping mp SET shape = connect_guard.table_shape(tbl) WHERE mp.mapping_id = m.mapping_id
    RETURNING * INTO m;

    -- what is left cannot be accepted
    SELECT string_agg(connect_guard.schema_change_text(f.kind, f.object, f.expected, f.actual), '; ') INTO v_left
      FROM connect_guard.mapping_findings(m) f;
    IF v_left IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('cannot save the mapping of %s: %s', tbl, v_left),
            DETAIL = 'Nothing was changed.',
            HINT = CASE WHEN v_left LIKE '%inheritance_child%'
                        THEN format('Move the child''s rows into %s and detach it (ALTER TABLE child NO INHERIT %s), then save again.', tbl, tbl)
                        ELSE 'The fields are Connect''s: edit the mapping in Heroku Connect (or change the table) so that they match, fetch its configuration again (connect_export_config(), connect_wait_config()), then save again.' END;
    END IF;

    SELECT coalesce(bool_or(s.needs_reload), false), min(s.state_before),
           coalesce(jsonb_agg(jsonb_build_object('kind', s.kind, 'object', s.object, 'needs_reload', s.needs_reload)
                              ORDER BY s.schema_change_id), '[]')
      INTO v_needs_reload, v_state_before, v_changes
      FROM connect_guard.schema_change s WHERE s.mapping_id = m.mapping_id AND s.resolved_at IS NULL;
    v_reload := coalesce(reload, v_needs_reload);
    v_reloading := EXISTS (SELECT 1 FROM connect_guard.request r
                            WHERE r.mapping_id = m.mapping_id AND r.action = 'reload' AND r.status = 'pending');
    UPDATE connect_guard.schema_change s
       SET resolved_at = clock_timestamp(),
           resolution = format('saved by %s%s', session_user,
                               CASE WHEN v_reload THEN ', reloaded'
                                    WHEN v_needs_reload THEN ', without the reload it needed' ELSE '' END)
     WHERE s.mapping_id = m.mapping_id AND s.resolved_at IS NULL;
    INSERT INTO connect_guard.mapping_verified (mapping_id, verified_at) VALUES (m.mapping_id, clock_timestamp())
    ON CONFLICT (mapping_id) DO UPDATE SET verified_at = excluded.verified_at;

    IF v_reload AND NOT v_reloading THEN
        v_request := @extschema@.connect_reload_mapping(c.name, tbl);
    ELSIF m.state = 'SCHEMA_CHANGED' THEN
        PERFORM connect_guard.mappings_goto(c.connection_id, ARRAY[m.mapping_id],
                                            CASE WHEN v_reloading THEN 'RELOAD_TABLE'
                                                 ELSE coalesce(v_state_before, 'DATA_SYNCED') END,
                                            ARRAY['SCHEMA_CHANGED']);
    END IF;
    PERFORM connect_guard.log_event(c.connection_id, 'mapping_saved', jsonb_build_object(
        'table', format('%I.%I', m.table_schema, m.table_name), 'object_name', m.object_name,
        'resolved', v_changes, 'needed_reload', v_needs_reload, 'reload', v_reload OR v_reloading,
        'request_id', v_request));
    IF v_needs_reload AND NOT v_reload THEN
        RAISE WARNING USING
            MESSAGE = format('the mapping of %s is saved without the reload it needed', tbl),
            DETAIL = 'Writes may have reached the table without a log entry; the sync service''s copy may differ from it.',
            HINT = format('Reload it when you can: SELECT connect_reload_mapping(%L, %L).', c.name, tbl::text);
    END IF;
    RETURN (SELECT mp.state FROM connect_guard.mapping mp WHERE mp.mapping_id = m.mapping_id);
END;
$$;

/*
 * connect_unmap_dropped_table unmaps a mapped table that was dropped (a
 * regclass cannot name it, so connect_unmap_table() cannot): table_name is
 * schema.table as connect_mappings shows it.
 */
CREATE FUNCTION connect_unmap_dropped_table(connection text, table_name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
    v_name text[];
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_not_null(table_name, 'table_name',
        'Give it as schema.table, as connect_mappings shows it (table_schema, table_relname).');
    BEGIN
        v_name := parse_ident(table_name);
    EXCEPTION WHEN invalid_parameter_value THEN
        v_name := NULL;
    END;
    IF cardinality(v_name) IS DISTINCT FROM 2 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid table name %s', coalesce(quote_literal(table_name), 'NULL')),
            HINT = 'Give it as schema.table, as connect_mappings shows it (table_schema, table_relname).';
    END IF;
    SELECT * INTO m FROM connect_guard.mapping mp
     WHERE mp.connection_id = c.connection_id AND mp.table_schema = v_name[1] AND mp.table_name = v_name[2]
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('table %s is not mapped by connection "%s"', table_name, c.name),
            HINT = 'See connect_mappings for the tables each connection maps.';
    END IF;
    IF connect_guard.mapping_relid(m) IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('table %s still exists', table_name),
            HINT = 'Unmap it with connect_unmap_table().';
    END IF;
    DELETE FROM connect_guard.mapping WHERE mapping_id = m.mapping_id;
    PERFORM connect_guard.fence_refresh();
    PERFORM connect_guard.log_event(c.connection_id, 'table_unmapped',
                                    jsonb_build_object('table', format('%I.%I', m.table_schema, m.table_name),
                                                       'dropped', true));
END;
$$;
