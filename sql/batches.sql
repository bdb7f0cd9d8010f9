-- Batches and high-water marks: what a consumer sees.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
CREATE TABLE account (id int PRIMARY KEY, name text);
CREATE TABLE note (id int PRIMARY KEY, body text);
SELECT connect_create_connection('sync');
SELECT connect_create_connection('audit');
SELECT connect_map_table('sync', 'account');
SELECT connect_map_table('audit', 'account');
SELECT connect_map_table('audit', 'note');

-- nothing written yet: no batch
SELECT connect_next_batch('sync') AS batch;

INSERT INTO account VALUES (1, 'one'), (2, 'two');
INSERT INTO note VALUES (1, 'hello');

SELECT connect_next_batch('sync') AS b1 \gset
SELECT id, action, table_name, record_id FROM connect_batch_events(:b1);
SELECT connection, state FROM connect_connections ORDER BY connection;

-- an unfinished batch is handed out again, with the same entries
SELECT connect_next_batch('sync') = :b1 AS same_batch;
SELECT count(*) AS entries FROM connect_batch_events(:b1);
SELECT deliveries FROM connect_guard.batch WHERE batch_id = :b1;

-- writes after the batch was taken belong to the next one
UPDATE account SET name = 'ONE' WHERE id = 1;
SELECT count(*) AS still_two FROM connect_batch_events(:b1);
SELECT connect_finish_batch(:b1) AS finished_entries;
SELECT connection, state FROM connect_connections WHERE connection = 'sync';
SELECT connection, state FROM connect_mappings ORDER BY connection, table_relname;

SELECT connect_next_batch('sync') AS b2 \gset
SELECT id, action, record_id, "values" FROM connect_batch_events(:b2);
SELECT connect_finish_batch(:b2);
SELECT connect_next_batch('sync') AS nothing_new;

-- 'audit' consumes the same log on its own, with its own high-water mark
SELECT connection, hwm_id, log_head, backlog, open_batch FROM connect_high_water_marks ORDER BY connection;
SELECT connect_next_batch('audit') AS b3 \gset
SELECT id, table_name FROM connect_batch_events(:b3);
SELECT connect_finish_batch(:b3);
SELECT connection, hwm_id, log_head, backlog, open_batch FROM connect_high_water_marks ORDER BY connection;

-- errors: each leaves the batch and the marks as they were
SELECT connect_finish_batch(:b3);
SELECT * FROM connect_batch_events(:b3);
SELECT connect_finish_batch(999999);
SELECT * FROM connect_batch_events(NULL);
SELECT connect_next_batch('nope');

INSERT INTO account VALUES (3, 'three');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT connect_next_batch('sync');
ROLLBACK;

-- a batch taken by one role cannot be finished by another, even a consumer of its connection
CREATE ROLE cg_regress_consumer LOGIN;
CREATE ROLE cg_regress_other LOGIN;
SELECT connect_grant_consumer('sync', 'cg_regress_consumer'), connect_grant_consumer('sync', 'cg_regress_other');
SET SESSION AUTHORIZATION cg_regress_consumer;
SELECT connect_next_batch('sync') AS b4 \gset
SELECT record_id FROM connect_batch_events(:b4);
SET SESSION AUTHORIZATION cg_regress_other;
SELECT connect_finish_batch(:b4);
SET SESSION AUTHORIZATION cg_regress_consumer;
SELECT connect_finish_batch(:b4);
RESET SESSION AUTHORIZATION;
SELECT connection, hwm_id, backlog, open_batch FROM connect_high_water_marks WHERE connection = 'sync';

-- dropping a connection keeps its history in the event log
SELECT connect_drop_connection('audit');
SELECT connection_name, kind, detail FROM connect_guard.event ORDER BY event_id;

DROP TABLE account, note;
DROP EXTENSION connect_guard;
DROP ROLE cg_regress_consumer, cg_regress_other;
