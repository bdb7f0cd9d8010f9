-- Pause and resume: Connect's states, pending work first, nothing lost.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE TABLE account (id int PRIMARY KEY, name text);
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'account');
INSERT INTO account VALUES (1, 'before');

-- a pause while a batch is open waits for it, then times out naming the batch
SELECT connect_next_batch('sync') AS b \gset
SELECT state FROM connect_status;
SELECT show_error($$SELECT connect_pause('sync', timeout => '200 ms')$$);
SELECT state FROM connect_status;
SELECT connect_finish_batch(:b);

-- paused without blocking writes: writes still reach the log, no batch is handed out
SELECT connect_pause('sync', block_writes => false, reason => 'Salesforce maintenance');
SELECT connection, state, paused, paused_because, fenced FROM connect_status;
INSERT INTO account VALUES (2, 'while paused');
SELECT connect_next_batch('sync') AS while_paused;
SELECT backlog FROM connect_status;

-- invalid transitions
SELECT show_error($$SELECT connect_pause('sync')$$);
SELECT connect_pause('nope');
SELECT connect_resume('nope');

-- resume continues where it left off: the write made while paused arrives
SELECT connect_resume('sync');
SELECT connect_resume('sync');
SELECT connect_next_batch('sync') AS b \gset
SELECT action, record_id, "values"->>'name' AS name FROM connect_batch_events(:b);
SELECT connect_finish_batch(:b);

-- pause with the fence: the mapped table is write-blocked, others are not
CREATE TABLE unmapped (id int PRIMARY KEY);
SELECT connect_pause('sync');
SELECT connection, state, fenced, fenced_because FROM connect_status;
SELECT show_error($$INSERT INTO account VALUES (3, 'blocked')$$);
INSERT INTO unmapped VALUES (1);
SELECT count(*) AS reads_work FROM account;
-- a table mapped while paused is fenced at once
CREATE TABLE late (id int PRIMARY KEY);
SELECT connect_map_table('sync', 'late');
\set VERBOSITY terse
INSERT INTO late VALUES (1);
\set VERBOSITY default
SELECT scope, connection, tables, fenced_tables FROM connect_fences;
SELECT connect_resume('sync');
INSERT INTO account VALUES (3, 'after');
SELECT count(*) AS fences FROM connect_fences;

-- every transition is in the event log, with who asked
SELECT kind, actor = current_user AS by_me, detail - 'waited_ms' - 'paused_for_ms' - 'fence_id' AS detail
  FROM connect_guard.event WHERE kind IN ('paused', 'resumed') ORDER BY event_id;

-- an aborted pause leaves nothing behind
BEGIN;
SELECT connect_pause('sync');
ROLLBACK;
SELECT state, fenced FROM connect_status;
INSERT INTO account VALUES (4, 'not fenced after rollback');

-- pausing needs READ COMMITTED (it must see the consumer finish)
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT connect_pause('sync');
ROLLBACK;

DROP TABLE account, unmapped, late;
DROP EXTENSION connect_guard;
DROP FUNCTION show_error(text);
