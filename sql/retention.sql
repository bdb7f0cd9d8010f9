-- Retention: only what every connection consumed leaves the hot log.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
CREATE TABLE account (id int PRIMARY KEY, name text);
SELECT connect_create_connection('fast');
SELECT connect_create_connection('slow');
SELECT connect_map_table('fast', 'account');
SELECT connect_map_table('slow', 'account');
INSERT INTO account SELECT g, 'n' || g FROM generate_series(1, 10) g;

SELECT connect_finish_batch(connect_next_batch('fast'));
-- 'slow' has consumed nothing: nothing may move
SELECT connect_archive_consumed() AS moved;
SELECT count(*) AS hot FROM connect_guard.trigger_log;

-- 'slow' takes a batch but does not finish it: still nothing
SELECT connect_next_batch('slow') AS b \gset
SELECT connect_archive_consumed() AS moved;
SELECT connect_finish_batch(:b);

-- both consumed: everything up to their marks moves, in chunks of max_rows,
-- and a change made since stays
UPDATE account SET name = 'later' WHERE id = 1;
SELECT connect_archive_consumed(4) AS moved;
SELECT connect_archive_consumed(100) AS moved;
SELECT connect_archive_consumed(100) AS moved;
SELECT count(*) AS hot, min(action) AS action FROM connect_guard.trigger_log;
SELECT count(*) AS archived, min(state) AS state, bool_and(processed_at IS NOT NULL) AS processed
  FROM connect_guard.trigger_log_archive;

-- the change is still delivered to both after the archiving
SELECT connect_next_batch('fast') AS b \gset
SELECT action, record_id FROM connect_batch_events(:b);
SELECT connect_finish_batch(:b);
SELECT connect_next_batch('slow') AS b \gset
SELECT action, record_id FROM connect_batch_events(:b);
SELECT connect_archive_consumed() AS moved_while_slow_is_open;
SELECT connect_finish_batch(:b);
SELECT connect_archive_consumed() AS moved_after_both;
SELECT connection, hwm_id, log_head, backlog FROM connect_high_water_marks ORDER BY 1;

-- ticks nobody needs are forgotten
SELECT count(*) <= 3 AS few_ticks FROM connect_guard.tick;

-- the archive is purged by age
SELECT connect_purge_archive('1 hour') AS purged;
SELECT connect_purge_archive('0') AS purged;
SELECT connect_purge_archive('-1 day');
SELECT connect_archive_consumed(0);

DROP TABLE account;
DROP EXTENSION connect_guard;
