-- Holes in the write fence, tried as an ordinary role that owns the mapped
-- tables would try them.  Each attack is a row of a matrix: the SQLSTATE it
-- gets (25006: refused by the fence, 55000: refused because the table is
-- mapped, ok: allowed) and whether what the fenced tables hold is unchanged
-- (their rows, their children's rows, columns, parents, children, names;
-- large objects; the tables of the schema), checked by a digest taken
-- before and after.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE ROLE cg_app;
CREATE SCHEMA app AUTHORIZATION cg_app;
CREATE FOREIGN DATA WRAPPER cg_dummy;
CREATE SERVER cg_nowhere FOREIGN DATA WRAPPER cg_dummy;
GRANT USAGE ON FOREIGN SERVER cg_nowhere TO cg_app;
GRANT pg_read_server_files, pg_execute_server_program TO cg_app;   -- lo_import, COPY FROM PROGRAM
GRANT EXECUTE ON FUNCTION lo_import(text), lo_import(text, oid) TO cg_app;

-- the application's tables, as its role makes them
SET ROLE cg_app;
SET search_path = app, public;
CREATE TABLE person (id int NOT NULL, name text);
CREATE TABLE account (id int PRIMARY KEY);
CREATE TABLE contact (PRIMARY KEY (id), account_id int REFERENCES account) INHERITS (person);  -- mapped
CREATE TABLE child_before () INHERITS (contact);       -- made before the fence
CREATE TABLE stranger (id int NOT NULL, name text, account_id int);
CREATE TABLE lead (id int, region text NOT NULL, PRIMARY KEY (id, region));       -- mapped
CREATE TABLE opportunity (id int, region text NOT NULL, PRIMARY KEY (id, region)); -- mapped, then attached
CREATE TABLE root (id int, region text NOT NULL, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE root_other PARTITION OF root FOR VALUES IN ('other');
CREATE TABLE deal (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);  -- mapped
CREATE TABLE deal_eu PARTITION OF deal FOR VALUES IN ('eu');
CREATE DOMAIN label AS text;
ALTER TABLE lead ADD COLUMN tag label;
CREATE TABLE free (id int PRIMARY KEY);
CREATE TABLE campaign (id int PRIMARY KEY);                                      -- mapped
CREATE RULE free_to_contact AS ON INSERT TO free DO ALSO INSERT INTO contact (id, name) VALUES (NEW.id, 'rule');
CREATE VIEW contact_view AS SELECT id, name FROM contact;
CREATE VIEW contact_trigger_view AS SELECT id, name FROM contact;
CREATE FUNCTION contact_view_insert() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO contact (id, name) VALUES (NEW.id, NEW.name); RETURN NEW; END $$;
CREATE TRIGGER contact_view_insert INSTEAD OF INSERT ON contact_trigger_view
    FOR EACH ROW EXECUTE FUNCTION contact_view_insert();
CREATE MATERIALIZED VIEW contact_names AS SELECT name FROM contact;
CREATE SEQUENCE ticket;
INSERT INTO account VALUES (1);
INSERT INTO contact VALUES (1, 'a', 1), (2, 'b', 1);
INSERT INTO child_before VALUES (10, 'child', 1);
INSERT INTO lead VALUES (1, 'lead');
INSERT INTO opportunity VALUES (1, 'opp');
INSERT INTO root VALUES (1, 'other');
INSERT INTO deal VALUES (1, 'eu');
SELECT lo_from_bytea(0, 'large') > 0 AS large_object;
RESET ROLE;

SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'app.contact');
SELECT connect_map_table('sync', 'app.lead');
SELECT connect_map_table('sync', 'app.opportunity');
SELECT connect_map_table('sync', 'app.deal');
SELECT connect_map_table('sync', 'app.campaign');
ALTER TABLE app.root ATTACH PARTITION app.opportunity FOR VALUES IN ('opp');   -- before any fence

-- fenced_state digests what the attacks must not change
CREATE FUNCTION public.fenced_state() RETURNS text LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog AS $$
    SELECT md5(concat_ws('|',
        (SELECT string_agg(c::text, ',' ORDER BY c::text) FROM app.contact c),
        (SELECT string_agg(l::text, ',' ORDER BY l::text) FROM app.lead l),
        (SELECT string_agg(o::text, ',' ORDER BY o::text) FROM app.opportunity o),
        (SELECT string_agg(d::text, ',' ORDER BY d::text) FROM app.deal d),
        (SELECT string_agg(format('%s.%s:%s', a.attrelid::regclass, a.attname, format_type(a.atttypid, a.atttypmod)),
                           ',' ORDER BY a.attrelid::regclass::text, a.attnum)
           FROM pg_attribute a JOIN pg_class k ON k.oid = a.attrelid
          WHERE k.relnamespace = 'app'::regnamespace AND k.relkind IN ('r', 'p', 'f')
            AND a.attnum > 0 AND NOT a.attisdropped),
        (SELECT string_agg(x, ',' ORDER BY x)
           FROM (SELECT format('%s<%s', i.inhrelid::regclass, i.inhparent::regclass) FROM pg_inherits i) i(x)),
        (SELECT string_agg(format('%s.%s', n.nspname, k.relname), ',' ORDER BY n.nspname, k.relname)
           FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
          WHERE n.nspname LIKE 'app%' AND k.relkind IN ('r', 'p', 'f', 'm')),
        (SELECT string_agg(m.oid::text || '=' || md5(lo_get(m.oid)), ',' ORDER BY m.oid)
           FROM pg_largeobject_metadata m)));
$$;

-- attempt runs an attack in a subtransaction, as the calling role
CREATE FUNCTION public.attempt(p_attack text, p_stmt text, OUT attack text, OUT outcome text, OUT unchanged boolean)
LANGUAGE plpgsql SET client_min_messages = error AS $$
DECLARE
    v_before text := public.fenced_state();
BEGIN
    attack := p_attack;
    outcome := 'ok';
    BEGIN
        EXECUTE p_stmt;
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE;
    END;
    unchanged := v_before = public.fenced_state();
END;
$$;

-- 1. Writes and DDL through a relative of a fenced table
SELECT connect_pause('sync', reason => 'matrix');
SELECT fenced_tables FROM connect_fences;
SET ROLE cg_app;
SELECT a.* FROM (VALUES
    ('INSERT into a child made before the fence', $$INSERT INTO child_before VALUES (11, 'x', 1)$$),
    ('UPDATE a child', $$UPDATE child_before SET name = 'x'$$),
    ('MERGE into a child', $$MERGE INTO child_before c USING (VALUES (10)) v(id) ON c.id = v.id WHEN MATCHED THEN DELETE$$),
    ('writable CTE on a child', $$WITH w AS (DELETE FROM child_before RETURNING 1) SELECT count(*) FROM w$$),
    ('INSERT ... ON CONFLICT into a child', $$INSERT INTO child_before VALUES (10, 'y', 1) ON CONFLICT DO NOTHING$$),
    ('COPY into a child', $$COPY child_before FROM PROGRAM 'printf "13\tcopy\t1\n"'$$),
    ('CREATE TABLE ... INHERITS (fenced)', $$CREATE TABLE child_new () INHERITS (contact)$$),
    ('CREATE TEMP TABLE ... INHERITS (fenced)', $$CREATE TEMP TABLE child_temp () INHERITS (contact)$$),
    ('CREATE TABLE ... PARTITION OF fenced', $$CREATE TABLE deal_us PARTITION OF deal FOR VALUES IN ('us')$$),
    ('CREATE FOREIGN TABLE ... PARTITION OF fenced', $$CREATE FOREIGN TABLE deal_far PARTITION OF deal FOR VALUES IN ('far') SERVER cg_nowhere$$),
    ('ALTER TABLE other INHERIT fenced', $$ALTER TABLE stranger INHERIT contact$$),
    ('ALTER TABLE fenced NO INHERIT parent', $$ALTER TABLE contact NO INHERIT person$$),
    ('ATTACH a fenced table under an unfenced root', $$ALTER TABLE root ATTACH PARTITION lead FOR VALUES IN ('lead')$$),
    ('DETACH a fenced partition from an unfenced root', $$ALTER TABLE root DETACH PARTITION opportunity$$),
    ('INSERT into the root, routed to a fenced partition', $$INSERT INTO root VALUES (5, 'opp')$$),
    ('INSERT into the root, routed elsewhere', $$INSERT INTO root VALUES (6, 'other')$$),
    ('UPDATE the root, moving a row into a fenced partition', $$UPDATE root SET region = 'opp' WHERE region = 'other'$$),
    ('COPY into the root', $$COPY root FROM PROGRAM 'printf "7\topp\n"'$$),
    ('TRUNCATE the root', $$TRUNCATE root$$),
    ('TRUNCATE an unfenced parent (recurses)', $$TRUNCATE person$$),
    ('TRUNCATE ... CASCADE into a fenced table', $$TRUNCATE account CASCADE$$),
    ('ALTER TYPE ... USING on an unfenced parent', $$ALTER TABLE person ALTER COLUMN name TYPE varchar USING upper(name)$$),
    ('ADD COLUMN on an unfenced parent', $$ALTER TABLE person ADD COLUMN phone text$$),
    ('ADD COLUMN on the unfenced root', $$ALTER TABLE root ADD COLUMN phone text$$),
    ('RENAME COLUMN on an unfenced parent', $$ALTER TABLE person RENAME COLUMN name TO full_name$$),
    ('SET SCHEMA of a child', $$ALTER TABLE child_before SET SCHEMA public$$),
    ('DROP a child', $$DROP TABLE child_before$$),
    ('DROP an unfenced parent CASCADE', $$DROP TABLE person CASCADE$$),
    ('DROP the unfenced root', $$DROP TABLE root$$),
    ('DROP DOMAIN CASCADE (drops a fenced column)', $$DROP DOMAIN label CASCADE$$),
    ('DROP SCHEMA CASCADE', $$DROP SCHEMA app CASCADE$$),
    ('DROP OWNED', $$DROP OWNED BY cg_app$$),
    ('a rule on an unfenced table', $$INSERT INTO free VALUES (1)$$),
    ('an updatable view', $$INSERT INTO contact_view VALUES (20, 'view')$$),
    ('a view with an INSTEAD OF trigger', $$INSERT INTO contact_trigger_view VALUES (21, 'view')$$),
    ('COPY into a view with an INSTEAD OF trigger', $$COPY contact_trigger_view FROM PROGRAM 'printf "22\tcopy\n"'$$),
    ('TRUNCATE ONLY the unfenced parent (allowed)', $$TRUNCATE ONLY person$$),
    ('INSERT into the unfenced partition itself (allowed)', $$INSERT INTO root_other VALUES (8, 'other')$$)
) v(attack, stmt), LATERAL public.attempt(v.attack, v.stmt) a;
RESET ROLE;
-- an extension in the application's schema (tcn: relocatable, one function) and a schema to
-- move it to: ALTER EXTENSION ... ADD TABLE makes a table a member, and ALTER EXTENSION ...
-- SET SCHEMA moves every member without an ALTER TABLE.  Only the owner of every member may
-- move an extension (tcn's function is the superuser's), so these attacks are the superuser's.
CREATE EXTENSION tcn SCHEMA app;
CREATE SCHEMA app_moved;
SELECT * FROM public.attempt('SET SCHEMA of an extension a child was added to',
    $$ALTER EXTENSION tcn ADD TABLE app.child_before; ALTER EXTENSION tcn SET SCHEMA app_moved$$);
SELECT show_error($$INSERT INTO app.child_before VALUES (12, 'x', 1)$$);
SELECT show_error($$INSERT INTO app.root VALUES (5, 'opp')$$);
SELECT show_error($$TRUNCATE app.person$$);
SELECT connect_resume('sync');

-- 2. Mapped tables keep their names: renames are refused, fence or not
SET ROLE cg_app;
SELECT a.* FROM (VALUES
    ('RENAME a mapped table', $$ALTER TABLE contact RENAME TO contact_old$$),
    ('RENAME a mapped partitioned table', $$ALTER TABLE deal RENAME TO deal_old$$),
    ('SET SCHEMA of a mapped table', $$ALTER TABLE contact SET SCHEMA public$$),
    ('RENAME the schema of mapped tables', $$ALTER SCHEMA app RENAME TO app_old$$),
    ('RENAME through ALTER VIEW', $$ALTER VIEW lead RENAME TO lead_old$$)
) v(attack, stmt), LATERAL public.attempt(v.attack, v.stmt) a;
SELECT show_error($$ALTER TABLE contact RENAME TO contact_old$$);
SELECT show_error($$ALTER SCHEMA app RENAME TO app_old$$);
-- what is not mapped is free to move
ALTER TABLE free RENAME TO free2;
ALTER TABLE free2 RENAME TO free;
ALTER TABLE deal_eu RENAME TO deal_europe;
RESET ROLE;
-- through an extension the table was added to
SELECT a.* FROM (VALUES
    ('SET SCHEMA of an extension with a mapped table', $$ALTER EXTENSION tcn ADD TABLE app.lead; ALTER EXTENSION tcn SET SCHEMA app_moved$$),
    ('SET SCHEMA of an extension with a mapped partitioned table', $$ALTER EXTENSION tcn ADD TABLE app.deal; ALTER EXTENSION tcn SET SCHEMA app_moved$$)
) v(attack, stmt), LATERAL public.attempt(v.attack, v.stmt) a;
SELECT show_error($$ALTER EXTENSION tcn ADD TABLE app.lead; ALTER EXTENSION tcn SET SCHEMA app_moved$$);
-- an extension whose tables are not mapped moves
ALTER EXTENSION tcn ADD TABLE app.free;
ALTER EXTENSION tcn SET SCHEMA app_moved;
SELECT 'app_moved.free'::regclass AS moved;
ALTER EXTENSION tcn SET SCHEMA app;
ALTER EXTENSION tcn DROP TABLE app.free;
-- while paused too; and the pause fences the mapped tables, no decoy
SELECT connect_pause('sync', reason => 'names');
SET ROLE cg_app;
SELECT * FROM public.attempt('RENAME a mapped table while paused', $$ALTER TABLE lead RENAME TO lead_old$$);
SELECT * FROM public.attempt('RENAME the schema while paused', $$ALTER SCHEMA app RENAME TO app_old$$);
RESET ROLE;
SELECT * FROM public.attempt('SET SCHEMA of an extension with a mapped table, while paused',
    $$ALTER EXTENSION tcn ADD TABLE app.lead; ALTER EXTENSION tcn SET SCHEMA app_moved$$);
SELECT fenced_tables FROM connect_fences;
SELECT connect_resume('sync');
-- the way the hint gives: unmap, rename, map again
SELECT connect_unmap_table('sync', 'app.campaign');
ALTER TABLE app.campaign RENAME TO drive;
SELECT connect_map_table('sync', 'app.drive') > 0 AS mapped;
SELECT table_schema, table_relname FROM connect_mappings ORDER BY 2;
DROP EXTENSION tcn;
DROP SCHEMA app_moved;

-- 3. A database-wide fence: large objects, new tables, materialized views
SELECT connect_fence('database', 'matrix') > 0 AS fenced;
SET ROLE cg_app;
SELECT oid AS lo FROM pg_largeobject_metadata \gset
SELECT a.* FROM (VALUES
    ('lo_create', $$SELECT lo_create(0)$$),
    ('lo_creat', $$SELECT lo_creat(-1)$$),
    ('lo_from_bytea', $$SELECT lo_from_bytea(0, 'x')$$),
    ('lo_import', $$SELECT lo_import('/dev/null')$$),
    ('lo_import with an oid', $$SELECT lo_import('/dev/null', 424242)$$),
    ('lo_put', format($$SELECT lo_put(%s, 0, 'x')$$, :lo)),
    ('lowrite', format($$SELECT lowrite(lo_open(%s, 131072), 'x')$$, :lo)),
    ('lo_truncate', format($$SELECT lo_truncate(lo_open(%s, 131072), 0)$$, :lo)),
    ('lo_truncate64', format($$SELECT lo_truncate64(lo_open(%s, 131072), 0)$$, :lo)),
    ('lo_unlink', format($$SELECT lo_unlink(%s)$$, :lo)),
    ('DROP OWNED (owns a large object)', $$DROP OWNED BY cg_app$$),
    ('CREATE TABLE AS', $$CREATE TABLE copied AS SELECT * FROM free$$),
    ('SELECT INTO', $$SELECT * INTO copied FROM free$$),
    ('CREATE TABLE AS VALUES', $$CREATE TABLE copied AS VALUES (1)$$),
    ('EXPLAIN ANALYZE CREATE TABLE AS', $$EXPLAIN ANALYZE CREATE TABLE copied AS SELECT 1$$),
    ('CREATE MATERIALIZED VIEW', $$CREATE MATERIALIZED VIEW names2 AS SELECT 1$$),
    ('REFRESH MATERIALIZED VIEW', $$REFRESH MATERIALIZED VIEW contact_names$$),
    ('CREATE TEMP TABLE ... INHERITS (fenced)', $$CREATE TEMP TABLE free_temp () INHERITS (free)$$),
    ('INSERT into an unmapped table', $$INSERT INTO free VALUES (2)$$),
    ('CREATE TEMP TABLE AS (allowed)', $$CREATE TEMP TABLE scratch AS SELECT 1 AS one$$),
    ('nextval (allowed)', $$SELECT nextval('ticket')$$)
) v(attack, stmt), LATERAL public.attempt(v.attack, v.stmt) a;
SELECT show_error($$SELECT lo_from_bytea(0, 'x')$$);
SELECT show_error($$CREATE TABLE copied AS SELECT 1$$);
\set VERBOSITY terse
\lo_unlink :lo
\set VERBOSITY default
RESET ROLE;
SELECT count(*) AS large_objects FROM pg_largeobject_metadata;
SELECT connect_unfence();

-- 4. Fence changes are transactional, and a prepared transaction cannot hold one
BEGIN;
SELECT connect_fence('mapped', 'rolled back') > 0 AS fenced;
ROLLBACK;
SELECT count(*) AS fences FROM connect_fences;
SELECT connect_fence('mapped', 'kept') > 0 AS fenced;
BEGIN;
SELECT connect_unfence();
ROLLBACK;
SELECT reason FROM connect_fences;
BEGIN;
SELECT connect_unfence();
PREPARE TRANSACTION 'cg_fence';
SELECT reason FROM connect_fences;
SELECT connect_unfence();

SET client_min_messages = warning;
DROP SCHEMA app CASCADE;
DROP OWNED BY cg_app;
RESET client_min_messages;
DROP FUNCTION public.attempt(text, text), public.fenced_state(), show_error(text);
DROP EXTENSION connect_guard;
DROP SERVER cg_nowhere;
DROP FOREIGN DATA WRAPPER cg_dummy;
DROP ROLE cg_app;
