-- The capture trigger: what each kind of write puts in the trigger log.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never

CREATE TABLE contact (
    id       serial PRIMARY KEY,
    name     text,
    sfid     varchar(18),
    amount   numeric,
    score    float8,
    active   boolean,
    born     date,
    seen     timestamp,
    tags     text[],
    doc      jsonb,
    raw      json
);
SELECT connect_create_connection('sync') AS connection_id;
SELECT connect_map_table('sync', 'contact') AS mapping_id;

-- the trigger pair the mapping installed
SELECT tgname, tgtype, pg_get_triggerdef(oid) LIKE '%connect_guard.capture(''public'', ''contact'')%' AS args_ok
  FROM pg_trigger WHERE tgrelid = 'contact'::regclass ORDER BY tgname;

SET DateStyle = 'SQL, DMY';   -- the log must not depend on the session's DateStyle
INSERT INTO contact (name, sfid, amount, score, active, born, seen, tags, doc, raw)
VALUES ('Ada', '003000000000001AAA', 12.50, 0.25, true, '1815-12-10', '2024-01-02 03:04:05',
        '{x,"y z"}', '{"k": [1, 2]}', '{"a": null}'),
       ('Bob', NULL, 'NaN', 'Infinity', false, NULL, NULL, NULL, NULL, NULL);
RESET DateStyle;
UPDATE contact SET name = 'Ada L.', amount = 13 WHERE id = 1;
UPDATE contact SET name = name WHERE id = 2;          -- a no-op update is still a write
DELETE FROM contact WHERE id = 2;

SELECT id, action, table_schema, table_name, record_id, sfid, state,
       old, "values", processed_at IS NULL AS unprocessed
  FROM connect_guard.trigger_log ORDER BY id;

-- one transaction, one txid; created_at is the transaction's start like now()
BEGIN;
INSERT INTO contact (name) VALUES ('Cy'), ('Di');
SELECT count(DISTINCT txid) AS txids, bool_and(txid = pg_current_xact_id()) AS own_xid,
       bool_and(created_at = now()) AS created_now
  FROM connect_guard.trigger_log WHERE id > 5;
COMMIT;

-- a rolled-back write leaves nothing behind
BEGIN;
INSERT INTO contact (name) VALUES ('Ghost');
ROLLBACK;
SELECT count(*) AS ghosts FROM connect_guard.trigger_log WHERE "values"->>'name' = 'Ghost';

-- savepoints: the entry of a rolled-back subtransaction goes, the rest stays
BEGIN;
INSERT INTO contact (name) VALUES ('Kept');
SAVEPOINT s;
INSERT INTO contact (name) VALUES ('Undone');
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT "values"->>'name' AS name FROM connect_guard.trigger_log WHERE id > 7 ORDER BY id;

TRUNCATE contact;
SELECT action, record_id, old, "values" FROM connect_guard.trigger_log ORDER BY id DESC LIMIT 1;

-- composite primary keys are logged as a JSON array of the key's texts
CREATE TABLE line_item (order_id int, line int, qty int, PRIMARY KEY (order_id, line));
SELECT connect_map_table('sync', 'line_item') AS mapping_id;
INSERT INTO line_item VALUES (7, 1, 3);
UPDATE line_item SET qty = 4;
SELECT action, table_name, record_id, "values" FROM connect_guard.trigger_log
 WHERE table_name = 'line_item' ORDER BY id;

-- partitions of a mapped partitioned table log under the parent's name
CREATE TABLE reading (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE reading_eu PARTITION OF reading FOR VALUES IN ('eu');
SELECT connect_map_table('sync', 'reading') AS mapping_id;
CREATE TABLE reading_us PARTITION OF reading FOR VALUES IN ('us');
INSERT INTO reading VALUES (1, 'eu', 10), (2, 'us', 20);
SELECT table_name, record_id, "values" FROM connect_guard.trigger_log
 WHERE table_name LIKE 'reading%' ORDER BY id;

-- a table mapped by two connections is logged once
SELECT connect_create_connection('other') AS connection_id;
SELECT connect_map_table('other', 'contact') AS mapping_id;
SELECT count(*) AS capture_triggers FROM pg_trigger
 WHERE tgrelid = 'contact'::regclass AND tgname = '_connect_guard_capture';
INSERT INTO contact (name) VALUES ('Once');
SELECT count(*) AS entries FROM connect_guard.trigger_log WHERE "values"->>'name' = 'Once';

-- schema changes are picked up by the next write
ALTER TABLE contact ADD COLUMN phone text;
ALTER TABLE contact DROP COLUMN raw;
INSERT INTO contact (name, phone) VALUES ('Eve', '555');
SELECT "values" FROM connect_guard.trigger_log ORDER BY id DESC LIMIT 1;

-- the sync service's own session can skip capture (superuser here; see privileges)
SET connect_guard.capture = off;
INSERT INTO contact (name) VALUES ('From Salesforce');
RESET connect_guard.capture;
SELECT count(*) AS skipped FROM connect_guard.trigger_log WHERE "values"->>'name' = 'From Salesforce';

-- the trigger function refuses to be misused
SELECT connect_guard.capture();
CREATE TABLE stray (id int PRIMARY KEY);
CREATE TRIGGER stray_before BEFORE INSERT ON stray FOR EACH ROW EXECUTE FUNCTION connect_guard.capture('public', 'stray');
INSERT INTO stray VALUES (1);
DROP TRIGGER stray_before ON stray;
CREATE TRIGGER stray_noargs AFTER INSERT ON stray FOR EACH ROW EXECUTE FUNCTION connect_guard.capture();
INSERT INTO stray VALUES (1);
DROP TABLE stray;

-- a log whose definition was changed is refused, saying why (and nothing is written)
\set ECHO none
\i sql/show_error.psql
\set ECHO all
BEGIN;
ALTER TABLE connect_guard.trigger_log ADD COLUMN extra int;
SELECT show_error($$INSERT INTO contact (name) VALUES ('refused')$$);
ROLLBACK;
BEGIN;
ALTER TABLE connect_guard.trigger_log RENAME COLUMN sfid TO sf_id;
SELECT show_error($$INSERT INTO contact (name) VALUES ('refused')$$);
ROLLBACK;
BEGIN;
ALTER TABLE connect_guard.trigger_log ALTER COLUMN record_id TYPE varchar;
SELECT show_error($$INSERT INTO contact (name) VALUES ('refused')$$);
ROLLBACK;
BEGIN;
CREATE INDEX trigger_log_lower ON connect_guard.trigger_log (lower(table_name));
SELECT show_error($$INSERT INTO contact (name) VALUES ('refused')$$);
ROLLBACK;
-- an index on plain columns is maintained
BEGIN;
CREATE INDEX trigger_log_table ON connect_guard.trigger_log (table_name, id);
INSERT INTO contact (name) VALUES ('indexed');
SET LOCAL enable_seqscan = off;
SELECT count(*) AS found_by_index FROM connect_guard.trigger_log
 WHERE table_name = 'contact' AND "values"->>'name' = 'indexed';
ROLLBACK;
-- an error while capturing says that connect_guard refused the write
\set SHOW_CONTEXT errors
BEGIN;
ALTER TABLE connect_guard.trigger_log DROP COLUMN sf_message;
INSERT INTO contact (name) VALUES ('refused');
ROLLBACK;
\set SHOW_CONTEXT never
SELECT count(*) AS refused_writes FROM contact WHERE name IN ('refused', 'indexed');
DROP FUNCTION show_error(text);

-- unmapping the last mapping removes the triggers; nothing is captured after
SELECT connect_unmap_table('sync', 'contact');
SELECT count(*) AS triggers_while_other_maps FROM pg_trigger WHERE tgrelid = 'contact'::regclass;
SELECT connect_unmap_table('other', 'contact');
SELECT count(*) AS triggers_after_unmap FROM pg_trigger WHERE tgrelid = 'contact'::regclass;
INSERT INTO contact (name) VALUES ('Unmapped');
SELECT count(*) AS captured_after_unmap FROM connect_guard.trigger_log WHERE "values"->>'name' = 'Unmapped';

DROP TABLE contact, line_item, reading;
DROP EXTENSION connect_guard;
