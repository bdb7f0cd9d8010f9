-- Entries are formed when the trigger fires and written in batches
-- (src/log_writer.c).  Whatever the statement, every change reaches the log
-- exactly once, with ids in the order of the changes, visible to the next
-- statement of its transaction, and gone with its (sub)transaction when that
-- rolls back; the batch's memory is bounded whatever the statement's size.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never

CREATE TABLE account (id int PRIMARY KEY, name text);
CREATE TABLE contact (id int PRIMARY KEY, account_id int REFERENCES account ON DELETE CASCADE, name text);
SELECT connect_create_connection('sync') AS connection_id;
SELECT connect_map_table('sync', 'account') AS mapping_id;
SELECT connect_map_table('sync', 'contact') AS mapping_id;

-- the log since a mark, as table/action/key in id order
CREATE FUNCTION log_since(mark bigint) RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(format('%s %s %s', table_name, action, record_id), ', ' ORDER BY id), '')
      FROM connect_guard.trigger_log WHERE id > mark
$$;
CREATE FUNCTION log_mark() RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(max(id), 0) FROM connect_guard.trigger_log
$$;

-- statements bigger than a batch; reading the log in the transaction;
-- savepoints released and rolled back
BEGIN;
INSERT INTO account SELECT g, 'a' || g FROM generate_series(1, 2500) g;
SELECT count(*) AS seen_in_transaction FROM connect_guard.trigger_log;
SAVEPOINT s1;
UPDATE account SET name = name || '!';
SAVEPOINT s2;
DELETE FROM account WHERE id <= 10;
RELEASE s2;
SELECT count(*) AS before_rollback_to FROM connect_guard.trigger_log;
ROLLBACK TO s1;
SELECT count(*) AS after_rollback_to FROM connect_guard.trigger_log;
INSERT INTO account VALUES (2501, 'after rollback to');
COMMIT;
SELECT count(*) AS entries, count(DISTINCT id) AS ids, count(DISTINCT txid) AS txids,
       array_agg(record_id::int ORDER BY id) = array_append(ARRAY(SELECT generate_series(1, 2500)), 2501)
           AS in_change_order
  FROM connect_guard.trigger_log;

-- a rolled-back transaction leaves nothing, however many batches it wrote
BEGIN;
UPDATE account SET name = 'never';
ROLLBACK;
SELECT count(*) AS never FROM connect_guard.trigger_log WHERE "values"->>'name' = 'never';

-- PL/pgSQL exception blocks: the block's entries go with it, the rest stay
SELECT log_mark() AS mark \gset
CREATE FUNCTION write_some() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO contact VALUES (1, 1, 'kept');
    BEGIN
        INSERT INTO contact VALUES (2, 1, 'undone');
        UPDATE contact SET name = 'undone too' WHERE id = 1;
        RAISE EXCEPTION 'roll back the block';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    INSERT INTO contact VALUES (3, 1, 'kept after');
END
$$;
SELECT write_some();
SELECT log_since(:mark);

-- a trigger that writes to another mapped table, in an exception block that
-- fails for one row: the entries interleave in the order of the changes
SELECT log_mark() AS mark \gset
CREATE FUNCTION account_child() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO contact VALUES (NEW.id * 100, NEW.id, 'child');
        IF NEW.id = 3002 THEN
            RAISE EXCEPTION 'undo this child';
        END IF;
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN NULL;
END
$$;
CREATE TRIGGER zz_child AFTER INSERT ON account FOR EACH ROW EXECUTE FUNCTION account_child();
INSERT INTO account VALUES (3001, 'p1'), (3002, 'p2'), (3003, 'p3');
SELECT log_since(:mark);
DROP TRIGGER zz_child ON account;

-- a later trigger of the same statement fails: the statement's entries go
SELECT log_mark() AS mark \gset
CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = 'boom' THEN
        RAISE EXCEPTION 'boom refused';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER zz_boom AFTER INSERT ON account FOR EACH ROW EXECUTE FUNCTION refuse_boom();
BEGIN;
INSERT INTO account VALUES (4001, 'ok');
SAVEPOINT s;
INSERT INTO account VALUES (4002, 'fine'), (4003, 'boom'), (4004, 'fine');
ROLLBACK TO s;
INSERT INTO account VALUES (4005, 'ok too');
COMMIT;
INSERT INTO account VALUES (4006, 'fine'), (4007, 'boom');
SELECT log_since(:mark);
DROP TRIGGER zz_boom ON account;

-- COPY: the entries are there for the next statement
SELECT log_mark() AS mark \gset
BEGIN;
COPY contact (id, account_id, name) FROM stdin;
11	1	copied
12	1	copied
13	2	copied
\.
SELECT log_since(:mark) AS after_copy;
COMMIT;

-- foreign-key cascades, TRUNCATE after rows in the same transaction
SELECT log_mark() AS mark \gset
DELETE FROM account WHERE id = 1;
SELECT log_since(:mark) AS cascade;
CREATE TABLE scratch (id int PRIMARY KEY);
SELECT connect_map_table('sync', 'scratch') AS mapping_id;
SELECT log_mark() AS mark \gset
BEGIN;
INSERT INTO scratch VALUES (1), (2);
TRUNCATE scratch;
INSERT INTO scratch VALUES (3);
COMMIT;
SELECT log_since(:mark) AS truncate;

-- partitions: routed rows, rows moved between partitions, a partition
-- written directly; all under the parent's name
CREATE TABLE reading (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE reading_eu PARTITION OF reading FOR VALUES IN ('eu');
CREATE TABLE reading_us PARTITION OF reading FOR VALUES IN ('us');
SELECT connect_map_table('sync', 'reading') AS mapping_id;
SELECT log_mark() AS mark \gset
BEGIN;
INSERT INTO reading SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 4) g;
UPDATE reading SET region = 'us' WHERE id = 2;
INSERT INTO reading_eu VALUES (5, 'eu', 5);
COMMIT;
SELECT log_since(:mark) AS partitions;

-- a deferred constraint trigger writes to a mapped table at commit
SELECT log_mark() AS mark \gset
CREATE FUNCTION late_child() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO contact VALUES (NEW.id * 10, NEW.id, 'written at commit');
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER late AFTER INSERT ON account DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION late_child();
BEGIN;
INSERT INTO account VALUES (5001, 'late');
SELECT log_since(:mark) AS before_commit;
COMMIT;
SELECT log_since(:mark) AS after_commit;
DROP TRIGGER late ON account;

-- memory: a statement of 30000 rows keeps at most one batch; the buffer's
-- memory context stays small (30000 of these entries take 10 to 20 MB)
CREATE TABLE bulk (id int PRIMARY KEY, note text);
SELECT connect_map_table('sync', 'bulk') AS mapping_id;
INSERT INTO bulk SELECT g, repeat('x', 100) FROM generate_series(1, 30000) g;
UPDATE bulk SET note = note || 'y';
SELECT count(*) FILTER (WHERE action = 'INSERT') AS inserts, count(*) FILTER (WHERE action = 'UPDATE') AS updates
  FROM connect_guard.trigger_log WHERE table_name = 'bulk';
SELECT total_bytes < 4 * 1024 * 1024 AS buffer_bounded
  FROM pg_backend_memory_contexts WHERE name = 'connect_guard log buffer';

DROP TABLE contact, account, scratch, reading, bulk;
DROP FUNCTION log_since(bigint), log_mark(), write_some(), account_child(), refuse_boom(), late_child();
DROP EXTENSION connect_guard;
