-- Rollback detection: the comparison with a witness, reading and writing
-- witness files, and reloads by hand.  The worker's side (start-up checks,
-- restores, promotions, restarts) is in test/t/012_rollback.pl; this
-- cluster runs with connect_guard.witness_directory = '' so that no worker
-- writes events behind the expected output.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE TABLE account (id int PRIMARY KEY, name text);
CREATE TABLE note (id int PRIMARY KEY, body text);
SELECT connect_create_connection('loc');
SELECT connect_map_table('loc', 'account');
SELECT connect_map_table('loc', 'note');

-- witnessing is off here: said so, and nothing to compare
SELECT connect_guard.witness_path() IS NULL AS witness_off;
SELECT finding, rollback, detail FROM connect_check_rollback();

-- witness files: written atomically with a checksum; a torn, edited or
-- foreign file is told apart and never trusted
-- (in the data directory, which the cluster's removal cleans up; details show it as <data>)
SELECT current_setting('data_directory') || '/cg_regress.witness' AS wpath \gset
CREATE FUNCTION read_witness(path text) RETURNS TABLE (status text, content jsonb, detail text) LANGUAGE sql AS $$
    SELECT status, content, replace(detail, current_setting('data_directory'), '<data>')
      FROM connect_guard.witness_read(path);
$$;
SELECT connect_guard.witness_write(:'wpath', '{"format": 1, "log_head": 7}');
SELECT * FROM read_witness(:'wpath');
COPY (SELECT 'connect_guard witness 1 crc32c=00000000 bytes=99') TO :'wpath';
SELECT * FROM read_witness(:'wpath');
COPY (SELECT 'connect_guard witness 1 crc32c=00000000 bytes=9' UNION ALL SELECT '{"a": 1}') TO :'wpath';
SELECT * FROM read_witness(:'wpath');
COPY (SELECT 'not a witness') TO :'wpath';
SELECT * FROM read_witness(:'wpath');
SELECT status, regexp_replace(detail, ': [^:]*$', ': <errno>') AS detail FROM read_witness(:'wpath' || '.none');

-- the comparison, on a witness made from this database's own state
INSERT INTO account VALUES (1, 'a'), (2, 'b');
SELECT connect_next_batch('loc') AS b \gset
SELECT connect_finish_batch(:b);
CREATE FUNCTION findings(w jsonb) RETURNS TABLE (finding text, severity text, connection text) LANGUAGE sql AS $$
    SELECT finding, severity, connection
      FROM connect_guard.rollback_findings(w, connect_guard.database_state(), NULL);
$$;
SELECT connect_guard.database_state() || '{"lsn": "0/0"}' AS w \gset
SELECT * FROM findings(:'w');
-- a restore: WAL, xids, log head and marks all behind the witness
SELECT * FROM findings(jsonb_set(jsonb_set(jsonb_set(jsonb_set(:'w', '{lsn}', '"FF/0"'),
       '{next_xid}', '99999999'), '{log_head}', '1000'), '{connections,loc,hwm_id}', '999'));
-- an older timeline than the witness's, or one that does not descend from it
SELECT * FROM findings(jsonb_set(:'w', '{timeline}', '9'));
SELECT * FROM findings(jsonb_set(:'w', '{timeline}', '0'));
-- a connection the database does not have, or has anew under its name: nothing to compare
SELECT * FROM findings(jsonb_set(:'w', '{connections,gone}', '{"hwm_id": 1, "last_tick": 1}'));
SELECT * FROM findings(jsonb_set(jsonb_set(:'w', '{connections,loc,hwm_id}', '999'),
                                 '{connections,loc,created_at}', '"2001-01-01T00:00:00+00:00"'));
-- the sync service ahead of the log
SELECT * FROM findings(jsonb_set(:'w', '{connections,loc,remote_hwm}', '500'));
-- the details say what was found and why
SELECT detail FROM connect_guard.rollback_findings(jsonb_set(:'w', '{log_head}', '1000'),
                                                   connect_guard.database_state(), NULL);

-- acting on a rollback: reloads asked for, ids never handed out twice,
-- the tables fenced until every reload is acknowledged
-- (its WARNING names a fence id, which depends on the tests before)
SET client_min_messages = error;
SELECT connect_guard.rollback_act('[{"finding": "lsn_behind_witness", "severity": "rollback", "connection": null, "detail": "test"}]',
                                  jsonb_set(:'w', '{log_head}', '500'), 'manual', false) AS incident;
RESET client_min_messages;
SELECT table_name, state FROM connect_mappings ORDER BY 1;
SELECT scope, fenced_tables FROM connect_fences;
SELECT show_error($$INSERT INTO note VALUES (1, 'during the reload')$$);
SELECT source, findings, tables, reloads_pending, resolved_at IS NULL AS open FROM connect_rollback_incidents;
SELECT detail -> 'log_sequence' AS log_sequence, detail -> 'high_water_marks' AS marks
  FROM connect_guard.event WHERE kind = 'rollback_detected';
SELECT show_error($$INSERT INTO account VALUES (3, 'c')$$) ~ '^25006' AS account_fenced_too;
SELECT connect_mapping_reloaded('loc', 'account');
SELECT count(*) AS fences_still_up FROM connect_fences;
SELECT connect_mapping_reloaded('loc', 'note');
SELECT count(*) AS fences_left FROM connect_fences;
SELECT reloads_pending, resolution FROM connect_rollback_incidents;
INSERT INTO note VALUES (1, 'after the reload');
-- the log went on above every id handed out before
SELECT min(id) > 500 AS new_ids_above_witness FROM connect_guard.trigger_log WHERE table_name = 'note';

-- reloads by hand; the DBA can lift the fence, which closes the incident
SELECT connect_reload_mapping('loc', 'note');
SELECT table_name, state FROM connect_mappings ORDER BY 1;
SELECT scope, fenced_tables FROM connect_fences;
SELECT connect_unfence();
SELECT connect_guard.rollback_release();
SELECT source, reloads_pending, resolution FROM connect_rollback_incidents ORDER BY incident_id;
SELECT show_error($$SELECT connect_mapping_reloaded('loc', 'account')$$);
SELECT connect_reload_mapping('nope', 'account');
CREATE TABLE unmapped (id int);
SELECT connect_reload_mapping('loc', 'unmapped');

-- connection states after a rollback (57_rollback_states.sql): the refresh
-- the worker queues for a heroku connection is answered here by hand, in
-- transactions that roll back, and the recorded state follows Connect's;
-- only the pause's own fence comes down
SELECT connect_create_connection('hk', 'heroku',
    '{"region_url": "https://connect.example.com", "connection_id": "c-1", "token": "tok-SECRET-1"}') > 0 AS created;
CREATE TABLE item (id int PRIMARY KEY);
SELECT connect_map_table('hk', 'item', 'Item') > 0 AS mapped;
SELECT connection_id AS hk FROM connect_guard.connection WHERE name = 'hk' \gset
CREATE FUNCTION reconciled() RETURNS TABLE (recorded text, remote text, state text, changed text, fence_lowered text,
                                            fences_still_up text, left_because text) LANGUAGE sql AS $$
    SELECT detail ->> 'recorded_state', detail ->> 'remote_state', detail ->> 'state', detail ->> 'changed',
           detail ->> 'fence_lowered', (SELECT string_agg(f ->> 'scope', ',') FROM jsonb_array_elements(detail -> 'fences_still_up') f),
           detail ->> 'left_because'
      FROM connect_guard.event WHERE kind = 'connection_state_reconciled' ORDER BY event_id DESC LIMIT 1;
$$;
-- restored PAUSED with its fence up (and a maintenance fence), Connect runs: IDLE, the pause fence down
BEGIN;
SELECT connect_guard.fence_raise('connection', :hk, 'hk', 'paused before the restore point', t.relids, t.relconnections) AS pause_fence
  FROM connect_guard.fence_targets(:hk) t \gset
SELECT connect_guard.connection_goto(:hk, 'PAUSED', NULL, NULL, '{}', 'paused before the restore point', :pause_fence);
SELECT connect_fence('mapped', 'the DBA''s window') > 0 AS maintenance_fence;
SELECT connect_guard.request_enqueue(:hk, 'refresh', NULL, '{"rollback_incident": 7, "held_by_plan": null}') AS request \gset
SELECT t_step, t_method, t_url FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'lookup', 200, NULL, '{"state": "IDLE", "mappings": []}');
SELECT recorded, remote, state, changed, fence_lowered::int = :pause_fence AS pause_fence_lowered, fences_still_up
  FROM reconciled();
SELECT state, paused, paused_because FROM connect_status WHERE connection = 'hk';
SELECT scope, reason FROM connect_fences ORDER BY fence_id;
SELECT status FROM connect_requests WHERE request_id = :request;
ROLLBACK;
-- restored IDLE, Connect paused since: PAUSED, with no fence (connect_guard did not pause it)
BEGIN;
SELECT connect_guard.connection_reconcile(:hk, 'PAUSED', NULL, 7, NULL);
SELECT * FROM reconciled();
SELECT state, paused_because, fenced FROM connect_status WHERE connection = 'hk';
ROLLBACK;
-- the same on both sides: nothing changes
BEGIN;
SELECT connect_guard.connection_reconcile(:hk, 'IDLE', NULL, 7, NULL);
SELECT * FROM reconciled();
ROLLBACK;
-- left alone: a resume under way, a plan that holds it, a state Connect calls otherwise, an open batch
BEGIN;
SELECT connect_guard.connection_goto(:hk, 'RESUMING');
SELECT connect_guard.request_enqueue(:hk, 'resume') > 0 AS resume_queued;
SELECT connect_guard.connection_reconcile(:hk, 'IDLE', NULL, 7, NULL);
SELECT recorded, state, regexp_replace(left_because, '\d+', 'N') AS left_because FROM reconciled();
ROLLBACK;
BEGIN;
SELECT connect_guard.connection_goto(:hk, 'PAUSED');
SELECT connect_guard.connection_reconcile(:hk, 'IDLE', NULL, 7, 3);
SELECT recorded, state, left_because FROM reconciled();
SELECT connect_guard.connection_reconcile(:hk, 'MAINTENANCE', NULL, 7, NULL);
SELECT recorded, state, left_because FROM reconciled();
ROLLBACK;
INSERT INTO item VALUES (1);
BEGIN;
SELECT connect_next_batch('hk') > 0 AS batch_open;
SELECT connect_guard.connection_reconcile(:hk, 'PAUSED', NULL, 7, NULL);
SELECT recorded, state, left_because ~ '^batch \d+ is open$' AS batch_is_open FROM reconciled();
ROLLBACK;
SELECT connect_drop_connection('hk');

DROP FUNCTION findings(jsonb), read_witness(text), reconciled();
DROP TABLE account, note, unmapped, item;
DROP EXTENSION connect_guard;
DROP FUNCTION show_error(text);
