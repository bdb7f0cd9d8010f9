-- The write fence: every kind of write to a fenced table is blocked with
-- SQLSTATE 25006; reads and unfenced tables are not touched.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE TABLE contact (id int PRIMARY KEY, name text);
CREATE TABLE contact_part (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE contact_part_eu PARTITION OF contact_part FOR VALUES IN ('eu');
CREATE TABLE note (id int PRIMARY KEY, contact_id int REFERENCES contact ON DELETE CASCADE);
CREATE TABLE free (id int PRIMARY KEY);
INSERT INTO contact VALUES (1, 'a'), (2, 'b');
INSERT INTO note VALUES (1, 1);
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'contact');
SELECT connect_map_table('sync', 'contact_part');

CREATE FUNCTION write_contact(i int) RETURNS void LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO contact VALUES (i, 'plpgsql'); END $$;
CREATE FUNCTION free_to_contact() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO contact VALUES (NEW.id, 'trigger'); RETURN NEW; END $$;
CREATE TRIGGER free_to_contact AFTER INSERT ON free FOR EACH ROW WHEN (NEW.id > 100)
    EXECUTE FUNCTION free_to_contact();
PREPARE ins(int) AS INSERT INTO contact VALUES ($1, 'prepared');
SELECT write_contact(10);          -- caches the plan before the fence goes up
EXECUTE ins(11);

SELECT connect_fence('mapped', 'Postgres upgrade') > 0 AS fenced;
SELECT scope, connection, reason, raised_by = current_user AS by_me, tables, fenced_tables
  FROM connect_fences;

SELECT show_error($$INSERT INTO contact VALUES (3, 'c')$$);
\set VERBOSITY terse
UPDATE contact SET name = 'x';
DELETE FROM contact;
MERGE INTO contact c USING (VALUES (1)) v(id) ON c.id = v.id WHEN MATCHED THEN UPDATE SET name = 'm';
WITH w AS (INSERT INTO contact VALUES (4, 'cte') RETURNING id) SELECT * FROM w;
COPY contact FROM stdin;
5	copy
\.
TRUNCATE contact;
ALTER TABLE contact ADD COLUMN phone text;
ALTER TABLE contact RENAME TO contact2;
DROP TABLE contact;
SELECT write_contact(12);          -- cached PL/pgSQL plan
EXECUTE ins(13);                   -- prepared statement
INSERT INTO free VALUES (101);     -- through a trigger on an unfenced table
DELETE FROM note;                  -- unfenced table: allowed
INSERT INTO contact_part VALUES (1, 'eu');      -- partitioned parent
INSERT INTO contact_part_eu VALUES (2, 'eu');   -- straight into the partition
CREATE TABLE contact_part_us PARTITION OF contact_part FOR VALUES IN ('us');  -- no new partition (fence_holes.sql: relatives)
\set VERBOSITY default

-- reads and unfenced tables are untouched; temp tables too
SELECT count(*) AS contacts FROM contact;
SELECT count(*) AS locked FROM (SELECT * FROM contact FOR UPDATE) l;
INSERT INTO free VALUES (1);
CREATE TEMP TABLE scratch (id int);
INSERT INTO scratch VALUES (1);
EXPLAIN (COSTS OFF) INSERT INTO contact VALUES (9, 'explain only');

-- the consumer keeps draining while fenced
SELECT connect_next_batch('sync') IS NOT NULL AS batch_while_fenced;
SELECT connect_finish_batch(batch_id) > 0 AS finished
  FROM connect_guard.batch WHERE finished_at IS NULL;

-- a second maintenance fence is refused; scope must be known
SELECT show_error('SELECT connect_fence()');
SELECT connect_fence('everything');

-- the runbook's own session may pass; an ordinary role may neither pass nor lift
SET connect_guard.fence_bypass = on;
INSERT INTO contact VALUES (20, 'runbook');
RESET connect_guard.fence_bypass;
CREATE ROLE cg_regress_writer;
GRANT ALL ON contact TO cg_regress_writer;
SET ROLE cg_regress_writer;
SET connect_guard.fence_bypass = on;
\set VERBOSITY terse
INSERT INTO contact VALUES (21, 'sneaky');
\set VERBOSITY default
SELECT connect_unfence();
SELECT connect_guard.fence_lower(fence_id) FROM connect_fences;
RESET ROLE;

-- a database-wide fence blocks every table but temp tables and our catalog
SELECT connect_unfence();
SELECT connect_fence('database', 'plan change') > 0 AS fenced;
SELECT show_error('INSERT INTO free VALUES (2)');
\set VERBOSITY terse
INSERT INTO contact VALUES (22, 'x');
\set VERBOSITY default
INSERT INTO scratch VALUES (2);
SELECT scope, reason, tables, fenced_tables FROM connect_fences;
SELECT connect_unfence();
INSERT INTO free VALUES (3);
SELECT connect_unfence();

-- raising the fence waits for writers in flight, or gives up naming them
-- (see the isolation spec for the race); here: dropping the extension
-- lowers what it left up
SELECT connect_fence('mapped', 'left up') > 0 AS fenced;
SET client_min_messages = warning;
DROP EXTENSION connect_guard CASCADE;
RESET client_min_messages;
INSERT INTO contact VALUES (30, 'after drop');

DROP TABLE note, contact, contact_part, free;
DROP FUNCTION write_contact(int), free_to_contact(), show_error(text);
DROP ROLE cg_regress_writer;
