/* ------------------------------------------------------------------------
 * Schema changes of mapped tables: what differs between a mapped table and
 * what its mapping expects (19_table_shape.sql), and what hid writes from
 * the log.  mapping_findings() says what differs now; schema_changes_record()
 * records what is new as connect_guard.schema_change rows, puts the mapping
 * in SCHEMA_CHANGED (14_states.sql), logs a schema_changed event and raises
 * a WARNING, in the session that made the change (event triggers, the
 * truncate watch) or in the worker's log (its check every cycle, for what
 * event triggers do not see: direct catalog changes).  connect_schema_drift
 * shows them; connect_save_mapping() (66_schema_watch.sql) settles them.
 *
 * Kinds (needs_reload: writes may have reached the table unlogged, or its
 * rows changed without log entries; a reload makes the sync service's copy
 * whole again):
 *   table_dropped           the mapped table is gone                         reload
 *   trigger_missing         a trigger the mapping needs is not there         reload (capture)
 *   trigger_disabled        ALTER TABLE ... DISABLE TRIGGER                  reload (capture)
 *   trigger_replica_only    ENABLE REPLICA TRIGGER: fires only for replicas  reload (capture)
 *   trigger_always          ENABLE ALWAYS TRIGGER: also fires for replicas
 *   trigger_changed         CREATE OR REPLACE TRIGGER with another
 *                           definition (events, function, WHEN, columns)     reload (capture)
 *   inheritance_child       a table inherits from it: its rows are not
 *                           captured                                         reload
 *   column_added, column_dropped                                             -
 *   column_type_changed     ALTER COLUMN ... TYPE: every row rewritten       reload
 *   primary_key_changed     the key the log's record_id is made of           reload
 *   partition_added         attached with rows (an empty one is accepted)    reload
 *   partition_removed       detached or dropped, with its rows               reload
 *   partition_renamed       the same partition under another name: taken in, never recorded
 *   partition_truncated     TRUNCATE of one partition (the truncate watch)   reload
 *   subscription_target     a subscription of this database applies rows
 *                           into it (logical replication's apply runs with
 *                           session_replication_role = replica) and its
 *                           trigger fires only in the origin role: expected
 *                           ENABLE ALWAYS, which is then no trigger_always    reload (capture)
 *   field_without_column    the configuration's field has no column          -
 *   column_without_field    a column no field of the configuration names     -
 *
 * A mapping whose table was never seen complete in this database (it was
 * just restored from a dump: pg_restore creates the triggers and keys after
 * the mapping's rows) is not reported until it is, or for 5 minutes.
 * ------------------------------------------------------------------------ */

-- the kinds whose cause cannot be seen afterwards: only the moment told
CREATE FUNCTION connect_guard.schema_change_is_event(p_kind text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT p_kind IN ('partition_truncated') $$;

-- one line about a schema change, for WARNINGs and events
CREATE FUNCTION connect_guard.schema_change_text(p_kind text, p_object text, p_expected text, p_actual text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p_kind || ': ' || p_object
           || CASE WHEN p_expected IS NOT NULL OR p_actual IS NOT NULL
                   THEN format(' (expected %s, found %s)', coalesce(p_expected, 'nothing'), coalesce(p_actual, 'nothing'))
                   ELSE '' END
$$;

/*
 * connect_guard.trigger_arguments: a trigger's arguments as text[]
 * (pg_trigger keeps them NUL-separated in a bytea).
 */
CREATE FUNCTION connect_guard.trigger_arguments(t pg_trigger)
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN t.tgnargs = 0 THEN '{}'::text[]
                ELSE string_to_array(left(encode(t.tgargs, 'escape'), -4), '\000') END
$$;

/*
 * connect_guard.subscriptions_into: the subscriptions of this database
 * (pg_subscription_rel is per database) that apply rows into p_rel or one
 * of its partitions, by name, or NULL.  Their apply workers run with
 * session_replication_role = replica: only triggers enabled REPLICA or
 * ALWAYS fire for the rows they write.
 */
CREATE FUNCTION connect_guard.subscriptions_into(p_rel regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(DISTINCT quote_ident(s.subname), ', ')
      FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid
     WHERE sr.srrelid IN (SELECT p_rel UNION ALL SELECT p FROM connect_guard.partitions_of(p_rel) p)
$$;

/*
 * connect_guard.mapping_findings: what differs now between mapping m's
 * table and what the mapping expects (see the kinds above).  With
 * p_look_at_rows false, partitions added are not read (whether they hold
 * rows needs SELECT on them): actual says 'not examined'.
 */
CREATE FUNCTION connect_guard.mapping_findings(m connect_guard.mapping, p_look_at_rows boolean DEFAULT true)
RETURNS TABLE (kind text, object text, expected text, actual text, needs_reload boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_rel regclass := connect_guard.mapping_relid(m);
    v_now jsonb;
    v_rows boolean;
    v_reported text[] := '{}';
    v_subscribed text;
    k text;
BEGIN
    IF v_rel IS NULL THEN
        RETURN QUERY SELECT 'table_dropped'::text, format('%I.%I', m.table_schema, m.table_name), 'the mapped table'::text,
                            'no such table'::text, true;
        RETURN;
    END IF;
    SELECT * INTO c FROM connect_guard.connection cn WHERE cn.connection_id = m.connection_id;
    -- a table that logical replication writes into needs its triggers ENABLE ALWAYS
    v_subscribed := connect_guard.subscriptions_into(v_rel);

    -- the triggers that capture its writes (and watch its partitions), on it and on its partitions
    RETURN QUERY
    WITH e AS (SELECT * FROM connect_guard.capture_triggers_expected(c, m)),
    targets AS (
        SELECT e.*, v_rel::oid AS relid FROM e WHERE e.placement = 'table'
        UNION ALL
        SELECT e.*, p::oid FROM e, connect_guard.partitions_of(v_rel) p
         WHERE e.placement = 'each_partition' OR (e.placement = 'table' AND e.trigger_type & 1 = 1)),
    present AS (
        SELECT x.*, t.oid AS tgoid, t.tgenabled,
               t.tgtype <> x.trigger_type OR t.tgfoid <> coalesce(x.function_oid, t.tgfoid)
               OR (x.arguments IS NOT NULL
                   AND CASE WHEN t.tgnargs = 0 THEN '{}'::text[]
                            ELSE string_to_array(left(encode(t.tgargs, 'escape'), -4), '\000') END
                       IS DISTINCT FROM x.arguments)
               OR CASE WHEN t.tgqual IS NULL THEN x.when_clause IS NOT NULL
                       WHEN x.when_clause IS NULL THEN true
                       ELSE NOT coalesce(substring(pg_get_triggerdef(t.oid) FROM ' WHEN \((.*)\) EXECUTE ')
                                         ~ x.when_clause, false) END
               OR cardinality(t.tgattr::int2[]) > 0 OR t.tgconstraint <> 0 AS changed
          FROM targets x LEFT JOIN pg_trigger t ON t.tgrelid = x.relid AND t.tgname = x.trigger_name)
    SELECT CASE WHEN f.tgoid IS NULL THEN 'trigger_missing' WHEN f.changed THEN 'trigger_changed'
                WHEN f.tgenabled = 'D' THEN 'trigger_disabled' WHEN f.tgenabled = 'R' THEN 'trigger_replica_only'
                WHEN f.tgenabled = 'O' THEN 'subscription_target'
                ELSE 'trigger_always' END,
           format('%I on %s', f.trigger_name, f.relid::regclass),
           CASE WHEN f.tgoid IS NULL THEN f.purpose || ' trigger'
                WHEN f.changed THEN format('%s trigger as %s defines it', f.purpose,
                                           CASE f.owned_by WHEN 'connect' THEN 'Heroku Connect' ELSE f.owned_by END)
                WHEN f.tgenabled = 'O' THEN format('ENABLE ALWAYS: subscription %s applies rows into the table',
                                                   v_subscribed)
                ELSE 'enabled' END,
           CASE WHEN f.tgoid IS NULL THEN 'no such trigger'
                WHEN f.changed THEN pg_get_triggerdef(f.tgoid)
                WHEN f.tgenabled = 'D' THEN 'disabled'
                WHEN f.tgenabled = 'R' THEN 'ENABLE REPLICA: fires only when session_replication_role = replica'
                WHEN f.tgenabled = 'O' THEN 'enabled in the origin role: silent for the rows logical replication applies'
                ELSE 'ENABLE ALWAYS: fires also when session_replication_role = replica' END,
           f.purpose = 'capture' AND NOT (f.tgoid IS NOT NULL AND NOT f.changed AND f.tgenabled = 'A')
      FROM present f
     WHERE f.tgoid IS NULL OR f.changed
        OR CASE WHEN v_subscribed IS NULL THEN f.tgenabled <> 'O' ELSE f.tgenabled <> 'A' END
     ORDER BY f.relid, f.trigger_name;

    -- inheritance children: rows of the table that no trigger of it captures (a partitioned table has none)
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class cl ON cl.oid = i.inhrelid
                WHERE i.inhparent = v_rel AND NOT cl.relispartition) THEN
        RETURN QUERY
        WITH RECURSIVE down(relid, parent) AS (
            SELECT i.inhrelid, i.inhparent FROM pg_inherits i WHERE i.inhparent = v_rel
            UNION ALL
            SELECT i.inhrelid, i.inhparent FROM pg_inherits i JOIN down d ON i.inhparent = d.relid)
        SELECT 'inheritance_child'::text, d.relid::regclass::text, 'no inheritance children'::text,
               format('inherits from %s', d.parent::regclass), true
          FROM down d JOIN pg_class cl ON cl.oid = d.relid
         WHERE NOT cl.relispartition;
    END IF;

    -- the shape it was mapped (or saved) with
    v_now := connect_guard.table_shape(v_rel);
    IF m.shape IS NOT NULL THEN
        SELECT coalesce(array_agg(coalesce(o.k, n.k)), '{}') INTO v_reported
          FROM jsonb_each_text(m.shape -> 'columns') o(k, v) FULL JOIN jsonb_each_text(v_now -> 'columns') n(k, v) ON n.k = o.k
         WHERE o.v IS DISTINCT FROM n.v;
        RETURN QUERY
        SELECT CASE WHEN n.v IS NULL THEN 'column_dropped' WHEN o.v IS NULL THEN 'column_added'
                    ELSE 'column_type_changed' END,
               coalesce(o.k, n.k), o.v, n.v, o.v IS NOT NULL AND n.v IS NOT NULL
          FROM jsonb_each_text(m.shape -> 'columns') o(k, v) FULL JOIN jsonb_each_text(v_now -> 'columns') n(k, v) ON n.k = o.k
         WHERE o.v IS DISTINCT FROM n.v
        UNION ALL
        SELECT 'primary_key_changed', 'primary key', coalesce(m.shape ->> 'primary_key', 'none'), v_now ->> 'primary_key', true
         WHERE (m.shape -> 'primary_key') IS DISTINCT FROM (v_now -> 'primary_key')
        UNION ALL
        -- a partition renamed: the same relation under another name (nothing left the table)
        SELECT 'partition_renamed', o.name, o.name, n.name, false
          FROM jsonb_each_text(coalesce(m.shape -> 'partition_oids', '{}')) o(name, relid)
          JOIN jsonb_each_text(v_now -> 'partition_oids') n(name, relid) ON n.relid = o.relid AND n.name <> o.name
         WHERE m.shape -> 'partitions' ? o.name AND NOT v_now -> 'partitions' ? o.name
        UNION ALL
        SELECT 'partition_removed', gone.p, format('a partition of %s', v_rel),
               CASE WHEN to_regclass(gone.p) IS NULL THEN 'dropped' ELSE 'detached' END, true
          FROM (SELECT jsonb_array_elements_text(m.shape -> 'partitions')
                EXCEPT SELECT jsonb_array_elements_text(v_now -> 'partitions')) gone(p)
         WHERE NOT EXISTS (SELECT 1 FROM jsonb_each_text(v_now -> 'partition_oids') n(name, relid)
                            WHERE n.relid = m.shape -> 'partition_oids' ->> gone.p);
        FOR k IN SELECT jsonb_array_elements_text(v_now -> 'partitions')
                 EXCEPT SELECT jsonb_array_elements_text(m.shape -> 'partitions')
                 EXCEPT SELECT n.name FROM jsonb_each_text(v_now -> 'partition_oids') n(name, relid)
                         WHERE EXISTS (SELECT 1 FROM jsonb_each_text(coalesce(m.shape -> 'partition_oids', '{}')) o(name, relid)
                                        WHERE o.relid = n.relid AND m.shape -> 'partitions' ? o.name) LOOP
            IF p_look_at_rows THEN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', k::regclass) INTO v_rows;
            END IF;
            RETURN QUERY SELECT 'partition_added'::text, k, 'no new partition with rows'::text,
                                CASE WHEN NOT p_look_at_rows THEN 'not examined'
                                     WHEN v_rows THEN 'attached with rows' ELSE 'empty' END,
                                coalesce(v_rows, false);
        END LOOP;
    END IF;

    -- the configuration's fields against the columns (a column already reported above is not again);
    -- names ignore case, as Salesforce's do (Connect's columns are lower case)
    IF jsonb_typeof(m.config -> 'fields') = 'object' THEN
        RETURN QUERY
        WITH cols AS (SELECT k.col, lower(k.col) AS lcol, k.col = ANY (v_reported) AS reported
                        FROM jsonb_object_keys(v_now -> 'columns') k(col)),
        fields AS (SELECT f AS field, connect_guard.config_field_column(f) AS lcol
                     FROM jsonb_object_keys(m.config -> 'fields') f)
        SELECT 'field_without_column'::text, f.field, f.lcol, NULL::text, false
          FROM fields f
         WHERE NOT EXISTS (SELECT 1 FROM cols x WHERE x.lcol = f.lcol)
           AND NOT EXISTS (SELECT 1 FROM unnest(v_reported) r WHERE lower(r) = f.lcol)
        UNION ALL
        SELECT 'column_without_field'::text, x.col, NULL::text, connect_guard.config_field_name(x.col), false
          FROM cols x
         WHERE NOT x.reported AND connect_guard.config_field_name(x.col) IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM fields f WHERE f.lcol = x.lcol)
         ORDER BY 1, 2;
    END IF;
END;
$$;

/*
 * connect_guard.schema_changes_note records findings (a jsonb array of
 * {kind, object, expected, actual, needs_reload}) of mapping m that are not
 * open already; for the new ones it puts the mapping in SCHEMA_CHANGED
 * (unless a reload is under way: the reload overwrites the table, and the
 * worker moves it on once the reload is done), logs a schema_changed event
 * and raises a WARNING.  Returns how many were new.
 */
CREATE FUNCTION connect_guard.schema_changes_note(m connect_guard.mapping, p_findings jsonb, p_source text,
                                                  p_context text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f jsonb;
    v_new jsonb := '[]';
    v_state_before text;
    v_connection text;
BEGIN
    SELECT coalesce(min(s.state_before), m.state) INTO v_state_before
      FROM connect_guard.schema_change s WHERE s.mapping_id = m.mapping_id AND s.resolved_at IS NULL;
    IF v_state_before IN ('SCHEMA_CHANGED', 'RELOAD_TABLE') THEN
        v_state_before := 'DATA_SYNCED';
    END IF;
    FOR f IN SELECT * FROM jsonb_array_elements(p_findings) LOOP
        INSERT INTO connect_guard.schema_change (mapping_id, kind, object, expected, actual, needs_reload,
                                                 detected_by, detected_in, state_before)
        VALUES (m.mapping_id, f ->> 'kind', f ->> 'object', f ->> 'expected', f ->> 'actual',
                (f ->> 'needs_reload')::boolean, p_source, p_context, v_state_before)
        ON CONFLICT (mapping_id, kind, object) WHERE resolved_at IS NULL DO NOTHING;
        IF FOUND THEN
            v_new := v_new || f;
        END IF;
    END LOOP;
    IF jsonb_array_length(v_new) = 0 THEN
        RETURN 0;
    END IF;

    PERFORM connect_guard.mappings_goto(m.connection_id, ARRAY[m.mapping_id], 'SCHEMA_CHANGED',
                                        ARRAY['INITIAL', 'DATA_SYNCED']);
    PERFORM connect_guard.log_event(m.connection_id, 'schema_changed', jsonb_build_object(
        'table', format('%I.%I', m.table_schema, m.table_name), 'object_name', m.object_name,
        'source', p_source, 'context', p_context, 'changes', v_new,
        'needs_reload', EXISTS (SELECT 1 FROM jsonb_array_elements(v_new) x WHERE (x ->> 'needs_reload')::boolean)));
    SELECT cn.name INTO v_connection FROM connect_guard.connection cn WHERE cn.connection_id = m.connection_id;
    RAISE WARNING USING
        MESSAGE = format('mapped table %I.%I of connection "%s" changed: %s', m.table_schema, m.table_name, v_connection,
                         (SELECT string_agg(connect_guard.schema_change_text(x ->> 'kind', x ->> 'object',
                                                                             x ->> 'expected', x ->> 'actual'), '; ')
                            FROM jsonb_array_elements(v_new) x)),
        DETAIL = CASE WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(v_new) x WHERE (x ->> 'needs_reload')::boolean)
                      THEN 'Writes may have reached the table without a log entry: the sync service''s copy needs a reload.'
                      ELSE 'The table no longer matches its mapping.' END,
        HINT = 'The mapping is SCHEMA_CHANGED; see connect_schema_drift, and runbooks/field_change.sql for the way out (connect_save_mapping()).';
    RETURN jsonb_array_length(v_new);
END;
$$;

/*
 * connect_guard.schema_changes_check checks mapping m and records what is
 * new (schema_changes_note).  p_source says who looks ('ddl', 'worker',
 * 'map', 'import', 'export'), p_context what showed it (a command tag, a
 * request).  An empty partition that appeared is accepted into the shape
 * (and given its truncate watch when p_source is 'ddl': the session that
 * made it may create triggers on it).  Returns the number of new findings.
 */
CREATE FUNCTION connect_guard.schema_changes_check(m connect_guard.mapping, p_source text, p_context text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel regclass := connect_guard.mapping_relid(m);
    v_findings jsonb;
    v_now jsonb;
    v_verified connect_guard.mapping_verified;
BEGIN
    -- One check of a mapping at a time, and none across a save: what is compared is read after the
    -- lock (each statement sees what has committed), so a check that started before a save cannot
    -- record what the save has just settled.
    SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = m.mapping_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;               -- unmapped meanwhile
    END IF;
    IF m.shape IS NULL AND v_rel IS NOT NULL THEN
        -- a mapping made without connect_map_table(): what its table is now is what it expects
        PERFORM connect_guard.mapping_init(m.mapping_id);
        SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = m.mapping_id;
    END IF;
    SELECT * INTO v_verified FROM connect_guard.mapping_verified WHERE mapping_id = m.mapping_id;
    -- a new partition gets its watch at once; not while a restore recreates the table (it has its own)
    IF p_source = 'ddl' AND v_rel IS NOT NULL AND v_verified.verified_at IS NOT NULL
       AND EXISTS (SELECT 1 FROM connect_guard.connection c, connect_guard.capture_triggers_expected(c, m) e
                    WHERE c.connection_id = m.connection_id AND e.purpose = 'watch' AND e.owned_by = 'connect_guard') THEN
        PERFORM connect_guard.install_truncate_watch(v_rel);
    END IF;

    SELECT coalesce(jsonb_agg(to_jsonb(f) ORDER BY f.kind, f.object), '[]') INTO v_findings
      FROM connect_guard.mapping_findings(m) f;
    -- an empty new partition, or a partition renamed, is part of the table as it is now, and nothing was
    -- hidden: the shape takes it in (new names, with their oids)
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(v_findings) x
                WHERE (x ->> 'kind' = 'partition_added' AND x ->> 'actual' = 'empty') OR x ->> 'kind' = 'partition_renamed') THEN
        v_now := connect_guard.table_shape(v_rel);
        WITH benign AS (
            SELECT x ->> 'kind' AS kind, x ->> 'object' AS old_name,
                   CASE x ->> 'kind' WHEN 'partition_renamed' THEN x ->> 'actual' ELSE x ->> 'object' END AS new_name
              FROM jsonb_array_elements(v_findings) x
             WHERE (x ->> 'kind' = 'partition_added' AND x ->> 'actual' = 'empty') OR x ->> 'kind' = 'partition_renamed')
        UPDATE connect_guard.mapping mp
           SET shape = mp.shape
                       || jsonb_build_object('partitions',
                              (SELECT jsonb_agg(p ORDER BY p)
                                 FROM (SELECT jsonb_array_elements_text(mp.shape -> 'partitions')
                                       EXCEPT SELECT b.old_name FROM benign b WHERE b.kind = 'partition_renamed'
                                       UNION SELECT b.new_name FROM benign b) ps(p)))
                       || jsonb_build_object('partition_oids',
                              (coalesce(mp.shape -> 'partition_oids', '{}')
                               - (SELECT coalesce(array_agg(b.old_name), '{}') FROM benign b WHERE b.kind = 'partition_renamed'))
                              || (SELECT coalesce(jsonb_object_agg(b.new_name, v_now -> 'partition_oids' -> b.new_name), '{}')
                                    FROM benign b))
         WHERE mp.mapping_id = m.mapping_id;
        SELECT coalesce(jsonb_agg(x), '[]') INTO v_findings FROM jsonb_array_elements(v_findings) x
         WHERE NOT ((x ->> 'kind' = 'partition_added' AND x ->> 'actual' = 'empty') OR x ->> 'kind' = 'partition_renamed');
    END IF;

    -- a table never seen complete here may be in the middle of a restore
    IF jsonb_array_length(v_findings) = 0 THEN
        IF v_verified.verified_at IS NULL THEN
            INSERT INTO connect_guard.mapping_verified (mapping_id, verified_at) VALUES (m.mapping_id, clock_timestamp())
            ON CONFLICT (mapping_id) DO UPDATE SET verified_at = excluded.verified_at;
        END IF;
        RETURN 0;
    END IF;
    IF v_verified.verified_at IS NULL THEN
        IF v_verified.mapping_id IS NULL THEN
            INSERT INTO connect_guard.mapping_verified (mapping_id) VALUES (m.mapping_id) ON CONFLICT DO NOTHING;
            RETURN 0;
        ELSIF v_verified.first_checked_at > clock_timestamp() - interval '5 min' THEN
            RETURN 0;
        END IF;
        UPDATE connect_guard.mapping_verified SET verified_at = clock_timestamp() WHERE mapping_id = m.mapping_id;
    END IF;
    RETURN connect_guard.schema_changes_note(m, v_findings, p_source, p_context);
END;
$$;

/*
 * connect_guard.schema_changes_record checks the given mappings (all for
 * NULL; schema_changes_check).  Returns the number of new findings.
 */
CREATE FUNCTION connect_guard.schema_changes_record(p_mapping_ids integer[], p_source text, p_context text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m connect_guard.mapping;
    v_count integer := 0;
BEGIN
    FOR m IN SELECT * FROM connect_guard.mapping mp
              WHERE p_mapping_ids IS NULL OR mp.mapping_id = ANY (p_mapping_ids)
              ORDER BY mp.mapping_id
    LOOP
        v_count := v_count + connect_guard.schema_changes_check(m, p_source, p_context);
    END LOOP;
    RETURN v_count;
END;
$$;

/*
 * connect_guard.mapping_fingerprints: for each mapping, a digest of
 * everything its check reads (its table's triggers, columns, key,
 * partitions and inheritance children, the subscriptions that write into
 * it, its shape and configuration), in
 * one query: the worker checks again only the mappings whose digest moved.
 */
CREATE FUNCTION connect_guard.mapping_fingerprints()
RETURNS TABLE (mapping_id integer, fingerprint text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT m.mapping_id,
           md5(concat_ws('|', m.shape::text, m.config::text, rel::oid::text,
               (WITH RECURSIVE tree(relid) AS (
                    SELECT rel::oid
                    UNION ALL
                    SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.relid)
                SELECT string_agg(concat_ws(',', tr.relid, cl.relname, cl.relnamespace, cl.relkind, cl.relispartition,
                                            (SELECT string_agg(concat_ws(':', t.oid, t.tgname, t.tgenabled, t.tgtype, t.tgfoid,
                                                                         encode(t.tgargs, 'hex'), t.tgqual::text,
                                                                         t.tgattr::text, t.tgconstraint), ';' ORDER BY t.tgname)
                                               FROM pg_trigger t WHERE t.tgrelid = tr.relid)), '/' ORDER BY tr.relid)
                  FROM tree tr JOIN pg_class cl ON cl.oid = tr.relid),
               (SELECT string_agg(concat_ws(',', a.attname, a.atttypid, a.atttypmod), ';' ORDER BY a.attnum)
                  FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped),
               (SELECT i.indkey::text FROM pg_index i WHERE i.indrelid = rel AND i.indisprimary),
               connect_guard.subscriptions_into(rel)))
      FROM connect_guard.mapping m CROSS JOIN LATERAL connect_guard.mapping_relid(m) rel;
END;
$$;

/*
 * connect_guard.mappings_of_relations: the mappings whose table is one of
 * p_relids or, unless p_with_ancestors is false (none of them has a
 * parent), an ancestor of one (the partitioned table of a partition, the
 * parent of an inheritance child).  PL/pgSQL, so that its plans are kept
 * for the session: the event triggers call it for every command of their
 * tags.  One relation at a time, by the catalogs' and the mappings'
 * indexes (a plan for an array of them scans pg_class).
 */
CREATE FUNCTION connect_guard.mappings_of_relations(p_relids oid[], p_with_ancestors boolean DEFAULT true)
RETURNS integer[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rels oid[] := p_relids;
    v_parents oid[];
    v_rel oid;
    v_nsp name;
    v_name name;
    v_ids integer[] := '{}';
BEGIN
    -- the ancestors, a level at a time (by pg_inherits' index on inhrelid; most tables have none)
    WHILE p_with_ancestors LOOP
        SELECT array_agg(DISTINCT i.inhparent) INTO v_parents
          FROM unnest(v_rels) r(relid) JOIN pg_inherits i ON i.inhrelid = r.relid
         WHERE i.inhparent <> ALL (v_rels);
        EXIT WHEN v_parents IS NULL;
        v_rels := v_rels || v_parents;
    END LOOP;
    FOREACH v_rel IN ARRAY v_rels LOOP
        SELECT n.nspname, cl.relname INTO v_nsp, v_name
          FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = v_rel;
        v_ids := v_ids || ARRAY(SELECT m.mapping_id FROM connect_guard.mapping m
                                 WHERE m.table_schema = v_nsp AND m.table_name = v_name);
    END LOOP;
    RETURN CASE WHEN cardinality(v_ids) > 0 THEN ARRAY(SELECT DISTINCT unnest(v_ids)) END;
END;
$$;

/*
 * connect_guard.note_partition_truncated is called by the truncate watch
 * (truncate_watch.c) when one partition of a mapped table is truncated on
 * its own: its rows left the mapped table without a log entry.  SECURITY
 * DEFINER: the truncating role has no right on the catalog; the C trigger
 * calls it through fmgr, and nobody else may.
 */
CREATE FUNCTION connect_guard.note_partition_truncated(p_relid oid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m connect_guard.mapping;
BEGIN
    FOR m IN SELECT * FROM connect_guard.mapping
              WHERE mapping_id = ANY (connect_guard.mappings_of_relations(ARRAY[p_relid])) ORDER BY mapping_id LOOP
        PERFORM connect_guard.schema_changes_note(m, jsonb_build_array(jsonb_build_object(
            'kind', 'partition_truncated', 'object', p_relid::regclass::text, 'expected', 'its rows deleted with a log entry',
            'actual', 'TRUNCATE of the partition alone', 'needs_reload', true)), 'truncate', 'TRUNCATE');
    END LOOP;
END;
$$;

/*
 * connect_guard.schema_change_present: is the cause of an open schema
 * change still there (NULL for an event: there is nothing to look at)?
 * SECURITY DEFINER, so that the monitoring roles that read
 * connect_schema_drift need no right on the catalog; it reads no row of the
 * application's tables.
 */
CREATE FUNCTION connect_guard.schema_change_present(p_schema_change_id integer)
RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN connect_guard.schema_change_is_event(s.kind) THEN NULL
                ELSE EXISTS (SELECT 1 FROM connect_guard.mapping_findings(m, false) f
                              WHERE f.kind = s.kind AND f.object = s.object) END
      FROM connect_guard.schema_change s JOIN connect_guard.mapping m USING (mapping_id)
     WHERE s.schema_change_id = p_schema_change_id
$$;

CREATE VIEW connect_schema_drift AS
SELECT c.name AS connection,
       connect_guard.mapping_relid(m) AS table_name,
       m.table_schema,
       m.table_name AS table_relname,
       m.object_name,
       m.state AS mapping_state,
       s.kind,
       s.object,
       s.expected,
       s.actual,
       s.needs_reload,
       connect_guard.schema_change_present(s.schema_change_id) AS still_present,
       s.detected_by,
       s.detected_in,
       s.detected_at,
       s.actor
  FROM connect_guard.schema_change s
  JOIN connect_guard.mapping m USING (mapping_id)
  JOIN connect_guard.connection c ON c.connection_id = m.connection_id
 WHERE s.resolved_at IS NULL;
