/* ------------------------------------------------------------------------
 * What a mapped table must look like for every write to reach the log:
 * the triggers that capture it, and the shape (columns, primary key,
 * partitions) it had when it was mapped or last saved.  48_schema_changes.sql
 * compares a table with this, event triggers and the worker run the
 * comparison (66_schema_watch.sql), and a difference puts the mapping in
 * SCHEMA_CHANGED.
 *
 * The triggers a mapping needs come from one function,
 * capture_triggers_expected(): the capture triggers of connect_guard's own
 * log, and for a partitioned table the truncate watch (below).  A
 * connection whose log is another one (Connect's own logger triggers on an
 * adopted schema) adds its kind of trigger there, and everything else (the
 * checks, the view, the way out) follows.
 *
 * Why a truncate watch: TRUNCATE of one partition fires no trigger of the
 * partitioned table and no event trigger, so its rows would leave the
 * mapped table unlogged.  A BEFORE TRUNCATE trigger on every partition
 * (truncate_watch.c) notices it, unless the TRUNCATE is of the mapped table
 * itself (whose capture trigger logs it): the table's own BEFORE TRUNCATE
 * trigger marks it for the statement, and its AFTER TRUNCATE trigger
 * unmarks it.
 * ------------------------------------------------------------------------ */

-- the shape the mapping accepted, and its configuration in Connect's format (17_config_format.sql)
ALTER TABLE connect_guard.mapping
    ADD COLUMN shape jsonb,
    ADD COLUMN config jsonb,
    -- where the config comes from: 'columns' (derived at mapping), 'import', 'connect' (Connect's export)
    ADD COLUMN config_source text CHECK (config_source IN ('columns', 'import', 'connect')),
    ADD COLUMN config_at timestamptz;
-- the connection part of the last file imported into a connection without a sync service of its own
ALTER TABLE connect_guard.connection ADD COLUMN config jsonb;

/*
 * A schema change: one difference between a mapped table and what its
 * mapping expects, or one event that hid writes from the log.  Open until
 * connect_save_mapping() (66_schema_watch.sql) settles it; while a mapping
 * has one open, it is SCHEMA_CHANGED (or RELOAD_TABLE, when a reload is
 * under way).
 */
CREATE TABLE connect_guard.schema_change (
    schema_change_id serial PRIMARY KEY,
    mapping_id      integer NOT NULL REFERENCES connect_guard.mapping ON DELETE CASCADE,
    -- what differs: see connect_guard.mapping_findings() (48_schema_changes.sql)
    kind            text NOT NULL,
    -- the column, field, trigger or partition concerned
    object          text NOT NULL,
    expected        text,
    actual          text,
    -- writes may have reached the table unlogged (or rows changed without a log entry): a reload repairs that
    needs_reload    boolean NOT NULL,
    -- 'ddl' (an event trigger), 'truncate' (the truncate watch), 'worker', 'map', 'import', 'export'
    detected_by     text NOT NULL,
    -- the command tag, or the request, that showed it
    detected_in     text,
    detected_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor           name NOT NULL DEFAULT session_user,
    -- the mapping's state when its first open change was found (what saving goes back to)
    state_before    text,
    resolved_at     timestamptz,
    resolution      text
);
CREATE UNIQUE INDEX schema_change_open ON connect_guard.schema_change (mapping_id, kind, object)
    WHERE resolved_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('connect_guard.schema_change', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.schema_change_schema_change_id_seq', '');

/*
 * When a mapping's table was last seen as its mapping expects, in this
 * database (19_table_shape_changes.sql).  Not dumped: a restored database checks
 * its tables afresh, once pg_restore has put their keys and triggers back.
 */
CREATE TABLE connect_guard.mapping_verified (
    mapping_id      integer PRIMARY KEY REFERENCES connect_guard.mapping ON DELETE CASCADE,
    first_checked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    verified_at     timestamptz,
    -- what the worker's last check saw (19_table_shape_changes.sql: mapping_fingerprints)
    fingerprint     text
);

-- the truncate watch's trigger function (truncate_watch.c); fires BEFORE and AFTER TRUNCATE
CREATE FUNCTION connect_guard.truncate_watch()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_truncate_watch';

/*
 * While connect_guard creates or repairs a mapped table's triggers itself,
 * own_ddl(true) tells its event triggers not to report the half-done state
 * (schema_watch.c): a flag of this backend, reset at the end of the
 * (sub)transaction.  own_ddl returns what the flag was.
 */
CREATE FUNCTION connect_guard.own_ddl(p_on boolean)
RETURNS boolean
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'connect_guard_own_ddl';

CREATE FUNCTION connect_guard.in_own_ddl()
RETURNS boolean
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_in_own_ddl';

/*
 * The helpers below run for every DDL command on a mapped table and for
 * every mapping the worker checks again, so they are written to be cheap:
 * the larger ones are PL/pgSQL, whose plans are kept for the session.
 */

-- the table of a mapping, or NULL when it does not exist (any more)
CREATE FUNCTION connect_guard.mapping_relid(m connect_guard.mapping)
RETURNS regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', m.table_schema, m.table_name)) $$;

/*
 * connect_guard.capture_triggers_expected: the triggers mapping m of
 * connection c needs, each with
 *   purpose      'capture' (without it writes are lost: a reload is due
 *                after it was missing) or 'watch' (without it a TRUNCATE of
 *                a partition goes unnoticed)
 *   placement    'table': on the mapped table; a row trigger of a
 *                partitioned table has a clone on every partition, which
 *                must be there and enabled too.  'each_partition': a
 *                trigger of its own on every partition
 *   trigger_type pg_trigger.tgtype; function_oid and arguments (NULL: any);
 *   when_clause  a regular expression the WHEN condition, as
 *                pg_get_triggerdef() prints it, must match; NULL for none
 *   owned_by     'connect_guard': connect_save_mapping() may create it
 *                again; anything else is another's, never touched
 * Every trigger must fire in the origin role (tgenabled 'O'), and ALWAYS
 * ('A') while a subscription applies rows into the table (its apply runs
 * with session_replication_role = replica: 19_table_shape_changes.sql).  A
 * connection that adopted a Connect-managed schema (its log is Connect's,
 * 15_log_sources.sql) expects Connect's logger trigger instead, owned by
 * Connect; another kind of log adds its own rows here, the only place that
 * knows them.
 */
CREATE FUNCTION connect_guard.capture_triggers_expected(c connect_guard.connection, m connect_guard.mapping)
RETURNS TABLE (trigger_name text, purpose text, placement text, trigger_type smallint, function_oid oid,
               arguments text[], when_clause text, owned_by text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- tgtype bits: ROW 1, BEFORE 2, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32
    IF c.log_schema IS NOT NULL THEN
        -- an adopted schema (17_connect_schema.sql): Connect's logger trigger, AFTER INSERT OR UPDATE OR
        -- DELETE FOR EACH ROW WHEN (get_xmlbinary() = 'base64'), calling hc_<table>_logger; Connect's own
        RETURN QUERY
        SELECT left('hc_' || m.table_name || '_logtrigger', 63), 'capture'::text, 'table'::text, 29::smallint,
               to_regprocedure(format('%I.%I()', m.table_schema, left('hc_' || m.table_name || '_logger', 63)))::oid,
               NULL::text[],
               '^\(*(\S+\.)?get_xmlbinary\(\)\)*(::(text|character varying))? = ''base64''::(text|character varying)\)*$'::text,
               'connect'::text;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT x.n, x.p, x.pl, x.t, x.f, x.a, NULL::text, 'connect_guard'::text
      FROM (VALUES ('_connect_guard_capture', 'capture', 'table', 29::smallint,
                    'connect_guard.capture()'::regprocedure::oid, ARRAY[m.table_schema, m.table_name]),
                   ('_connect_guard_truncate', 'capture', 'table', 32::smallint,
                    'connect_guard.capture()'::regprocedure::oid, ARRAY[m.table_schema, m.table_name])) x(n, p, pl, t, f, a);
    -- a partitioned table's partitions are watched for TRUNCATE (the top of this file)
    IF (SELECT cl.relkind FROM pg_class cl WHERE cl.oid = connect_guard.mapping_relid(m)) = 'p' THEN
        RETURN QUERY
        SELECT w.n, 'watch'::text, w.pl, w.t, 'connect_guard.truncate_watch()'::regprocedure::oid, ARRAY[w.arg],
               NULL::text, 'connect_guard'::text
          FROM (VALUES ('_connect_guard_truncate_watch', 'table', 34::smallint, 'root'),
                       ('_connect_guard_truncate_done', 'table', 32::smallint, 'root'),
                       ('_connect_guard_truncate_watch', 'each_partition', 34::smallint, 'partition')) w(n, pl, t, arg);
    END IF;
END;
$$;

-- the partitions of a table at every level (none for a table that is not partitioned)
CREATE FUNCTION connect_guard.partitions_of(p_relid oid)
RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT t.relid FROM pg_catalog.pg_partition_tree(p_relid) t WHERE t.level > 0 $$;

/*
 * connect_guard.table_shape: what a mapped table looks like, by names (so
 * that it survives pg_dump and pg_upgrade): its columns with their types,
 * its primary key, and its partitions (with their oids, which tell a
 * partition renamed from one dropped and another attached).
 */
CREATE FUNCTION connect_guard.table_shape(p_relid oid)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN jsonb_build_object(
        'columns', (SELECT coalesce(jsonb_object_agg(a.attname, format_type(a.atttypid, a.atttypmod)), '{}')
                      FROM pg_attribute a
                     WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped),
        'primary_key', (SELECT coalesce(jsonb_agg(a.attname ORDER BY k.ord), '[]')
                          FROM pg_index i
                          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                         WHERE i.indrelid = p_relid AND i.indisprimary),
        'partitions', (SELECT coalesce(jsonb_agg(t.relid::regclass::text ORDER BY t.relid::regclass::text), '[]')
                         FROM pg_partition_tree(p_relid) t WHERE t.level > 0),
        -- which relation each name was, so that a renamed partition is told from one replaced
        'partition_oids', (SELECT coalesce(jsonb_object_agg(t.relid::regclass::text, t.relid::oid), '{}')
                             FROM pg_partition_tree(p_relid) t WHERE t.level > 0));
END;
$$;

-- a table's columns in order, for its default configuration
CREATE FUNCTION connect_guard.table_columns(p_relid oid)
RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
      FROM pg_catalog.pg_attribute a WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
$$;

/*
 * connect_guard.install_truncate_watch gives a partitioned table, and each
 * of its partitions, the truncate watch's triggers they lack; the caller
 * may create triggers on them (it maps the table, or created a partition).
 */
CREATE FUNCTION connect_guard.install_truncate_watch(p_relid oid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r regclass;
    v_was boolean;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = p_relid) IS DISTINCT FROM 'p' THEN
        RETURN;
    END IF;
    v_was := connect_guard.own_ddl(true);
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = p_relid AND tgname = '_connect_guard_truncate_watch') THEN
        EXECUTE format('CREATE TRIGGER _connect_guard_truncate_watch BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.truncate_watch(''root'')', p_relid::regclass);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = p_relid AND tgname = '_connect_guard_truncate_done') THEN
        EXECUTE format('CREATE TRIGGER _connect_guard_truncate_done AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.truncate_watch(''root'')', p_relid::regclass);
    END IF;
    FOR r IN SELECT p FROM connect_guard.partitions_of(p_relid) p
              WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p AND t.tgname = '_connect_guard_truncate_watch')
    LOOP
        EXECUTE format('CREATE TRIGGER _connect_guard_truncate_watch BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.truncate_watch(''partition'')', r);
    END LOOP;
    PERFORM connect_guard.own_ddl(v_was);
END;
$$;

-- connect_guard.drop_truncate_watch removes them again (the table is unmapped)
CREATE FUNCTION connect_guard.drop_truncate_watch(p_relid oid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    v_was boolean := connect_guard.own_ddl(true);
BEGIN
    FOR t IN SELECT tg.tgname, tg.tgrelid::regclass AS rel FROM pg_trigger tg
              WHERE tg.tgrelid IN (SELECT p_relid UNION ALL SELECT p FROM connect_guard.partitions_of(p_relid) p)
                AND tg.tgname IN ('_connect_guard_truncate_watch', '_connect_guard_truncate_done')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
    END LOOP;
    PERFORM connect_guard.own_ddl(v_was);
END;
$$;

/*
 * connect_guard.mapping_init records what a new mapping expects of its
 * table: its shape now, and a configuration derived from its columns
 * (until a file or Connect's export gives one); and gives the table the
 * watch triggers its kind of mapping needs (capture_triggers_expected:
 * the truncate watch of a partitioned table).  Called when a table is
 * mapped; a mapping made another way gets it on its first check.
 */
CREATE FUNCTION connect_guard.mapping_init(p_mapping_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m connect_guard.mapping;
    c connect_guard.connection;
    v_rel regclass;
BEGIN
    SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = p_mapping_id;
    v_rel := connect_guard.mapping_relid(m);
    IF v_rel IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = m.connection_id;
    IF EXISTS (SELECT 1 FROM connect_guard.capture_triggers_expected(c, m) e
                WHERE e.purpose = 'watch' AND e.owned_by = 'connect_guard') THEN
        PERFORM connect_guard.install_truncate_watch(v_rel);
    END IF;
    UPDATE connect_guard.mapping mp
       SET shape = connect_guard.table_shape(v_rel),
           config = coalesce(mp.config, connect_guard.config_of_columns(connect_guard.table_columns(v_rel))),
           config_source = coalesce(mp.config_source, 'columns'),
           config_at = coalesce(mp.config_at, clock_timestamp())
     WHERE mp.mapping_id = p_mapping_id;
    INSERT INTO connect_guard.mapping_verified (mapping_id, verified_at) VALUES (p_mapping_id, clock_timestamp())
    ON CONFLICT (mapping_id) DO UPDATE SET verified_at = excluded.verified_at;
END;
$$;
