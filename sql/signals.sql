-- Signals to the sync service: options per adapter, the request queue, the
-- states PAUSING and RESUMING, and secrets that no view, event or
-- non-superuser can see.  The HTTP side runs in the worker and is tested by
-- test/t/005_signals.pl; here the worker's steps (request_take and
-- request_outcome) are driven by hand, inside transactions that roll back,
-- so that a running worker never sees these requests.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE TABLE account (id int PRIMARY KEY, name text);
CREATE TABLE contact (id int PRIMARY KEY, name text);

-- options are checked per adapter; every error says what to write instead
SELECT connect_create_connection('h', 'heroku');
SELECT connect_create_connection('h', 'heroku', '{"regionurl": "https://connect.example.com"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": 5}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "ftp://connect.example.com"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://me:pw@connect.example.com"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://connect.example.com"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://connect.example.com", "connection_id": "my sync"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://connect.example.com", "connection_id": "c-1"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://connect.example.com", "connection_id": "c-1", "token": "a", "token_file": "/x"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://connect.example.com", "connection_id": "c-1", "token": "two words"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://connect.example.com", "connection_id": "c-1", "token_file": "connect.token"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://connect.example.com", "connection_id": "c-1", "token_file": "/nonexistent/connect.token"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://connect.example.com", "connection_id": "c-1", "token_file": "/"}');
SELECT connect_create_connection('h', 'heroku', '{"region_url": "https://connect.example.com", "connection_id": "c-1", "token_file": "/etc/passwd"}');
SELECT connect_create_connection('w', 'webhook', '{"secret": "k"}');
SELECT connect_create_connection('w', 'webhook', '{"url": "https://hooks.example.com/connect"}');
SELECT connect_create_connection('w', 'webhook', '{"url": "https://hooks.example.com/connect", "secret": "k", "token": "t"}');
SELECT count(*) AS connections_left FROM connect_guard.connection;

-- a token file the server can read and nobody else (here: a file of the data directory)
SELECT connect_create_connection('hf', 'heroku',
    jsonb_build_object('region_url', 'https://connect.example.com', 'connection_id', 'c-2',
                       'token_file', current_setting('data_directory') || '/PG_VERSION')) AS hf;
-- an inline token and key go to connect_guard.connection_secret, not to the options
SELECT connect_create_connection('hk', 'heroku',
    '{"region_url": "https://connect.example.com/", "connection_id": "6a1b0f3e-0000-4000-8000-00000000d3e0",
      "token": "tok-SECRET-3f9a"}') AS hk;
SELECT connect_create_connection('wh', 'webhook',
    '{"url": "https://hooks.example.com/connect", "secret": "key-SECRET-77c1", "note": "ops channel"}') AS wh;
SELECT connect_create_connection('loc');
SELECT connect_map_table('hk', 'account', 'Account');
SELECT connect_map_table('loc', 'contact');
SELECT connection, adapter, state, options FROM connect_connections ORDER BY connection;
SELECT c.name, c.options - 'token_file' AS options FROM connect_guard.connection c ORDER BY c.name;
SELECT c.name, s.secret FROM connect_guard.connection_secret s JOIN connect_guard.connection c USING (connection_id)
 ORDER BY c.name;

-- pause of a heroku connection: a request, the state PAUSING, no HTTP in this transaction
BEGIN;
SELECT connect_pause('hk', reason => 'upgrade to PG 16');
SELECT connection, state, paused, paused_because, fenced FROM connect_status WHERE connection = 'hk';
SELECT request_id, connection, action, status, phase, attempts, reason, requested_by = current_user AS by_me
  FROM connect_requests;
SELECT show_error($$SELECT connect_pause('hk')$$);
SELECT show_error($$SELECT connect_wait_state('hk', 'PAUSED', '1 s')$$);
-- what the worker sends: the token is handed to it, and to nothing else
SELECT t_request_id, t_step, t_method, t_url, t_body, t_auth, t_secret IS NOT NULL AS has_secret, t_secret_file
  FROM connect_guard.request_take(8, 60000);
SELECT t_request_id FROM connect_guard.request_take(8, 60000);      -- leased: nothing is due
-- Connect fails: retried after 1 s
SELECT connect_guard.request_outcome(1, 'send', 500, NULL, '{"id": "internal_error", "message": "boom"}');
SELECT status, phase, attempts, last_http_status, last_error, next_attempt_at > clock_timestamp() AS later
  FROM connect_requests;
UPDATE connect_guard.request SET next_attempt_at = clock_timestamp();
SELECT t_step, t_method FROM connect_guard.request_take(8, 60000);
-- Connect accepts (202): then the deep GET until it says PAUSED
SELECT connect_guard.request_outcome(1, 'send', 202, NULL, '');
SELECT t_step, t_method, t_url, t_auth FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(1, 'poll', 200, NULL, '{"state": "POLLING_DB_CHANGES", "mappings": []}');
SELECT state, status, phase, attempts, polls, remote_state FROM connect_requests JOIN connect_status USING (connection);
UPDATE connect_guard.request SET next_attempt_at = clock_timestamp();
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(1, 'poll', 200, NULL,
    '{"state": "PAUSED", "mappings": [{"id": "map-account", "object_name": "ACCOUNT", "state": "DATA_SYNCED"}]}');
-- Connect is paused: now the connection is PAUSED, the fence is up, the mapping has Connect's id
SELECT connection, state, paused_because, fenced, fenced_because FROM connect_status WHERE connection = 'hk';
SELECT status, phase, attempts, polls, last_http_status, last_error, remote_state FROM connect_requests;
SELECT table_name, object_name, remote_id FROM connect_mappings WHERE connection = 'hk';
SELECT show_error($$INSERT INTO account VALUES (1, 'fenced')$$);
SELECT kind, detail - 'took_ms' - 'waited_ms' - 'fence_id' AS detail FROM connect_guard.event
 WHERE connection_name = 'hk' AND kind NOT IN ('connection_created', 'table_mapped') ORDER BY event_id;
-- resume: the fence goes down at once, RESUMING until Connect runs again
SELECT connect_resume('hk');
SELECT connection, state, fenced FROM connect_status WHERE connection = 'hk';
INSERT INTO account VALUES (1, 'not fenced');
SELECT show_error($$SELECT connect_resume('hk')$$);
SELECT t_step, t_method, t_url FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(2, 'send', 202, NULL, '');
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(2, 'poll', 200, NULL, '{"state": "POLLING_DB_CHANGES"}');
SELECT state FROM connect_status WHERE connection = 'hk';
SELECT request_id, action, status, attempts, polls, remote_state FROM connect_requests ORDER BY request_id;
ROLLBACK;

-- as with the local adapter, PAUSED waits for the open batch to be finished
INSERT INTO account VALUES (10, 'before the pause');
BEGIN;
SELECT connect_next_batch('hk') IS NOT NULL AS batch_open;
SELECT connect_pause('hk');
SELECT t_request_id FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(3, 'send', 202, NULL, '');
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(3, 'poll', 200, NULL, '{"state": "PAUSED"}');
SELECT state, status, phase, remote_state, next_attempt_at > clock_timestamp() AS later
  FROM connect_requests JOIN connect_status USING (connection);
SELECT connect_finish_batch(b.batch_id) FROM connect_guard.batch b WHERE b.finished_at IS NULL;
UPDATE connect_guard.request SET next_attempt_at = clock_timestamp();
SELECT t_step, t_method FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(3, 'apply', NULL, NULL, NULL);
SELECT state, fenced, status FROM connect_requests JOIN connect_status USING (connection);
ROLLBACK;

-- a pause that a resume overtakes is not sent any more
BEGIN;
SELECT connect_pause('hk', block_writes => false);
SELECT connect_resume('hk');
SELECT t_request_id, t_step, t_url FROM connect_guard.request_take(8, 60000);
SELECT request_id, action, status, last_error FROM connect_requests ORDER BY request_id;
ROLLBACK;

-- failures: an answer no retry can change fails at once, and says why
BEGIN;
SELECT connect_pause('hk');
SELECT t_request_id FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(6, 'send', 404, NULL, '{"id": "not_found", "message": "connection 6a1b0f3e not found"}');
SELECT status, attempts, last_http_status, last_error FROM connect_requests;
SELECT state, paused_because FROM connect_status WHERE connection = 'hk';
SELECT show_error($$SELECT connect_wait_state('hk', 'PAUSED')$$);
-- after a failed pause, connect_pause() may try again
SELECT connect_pause('hk');
-- past connect_guard.http_max_attempts (8) it gives up
UPDATE connect_guard.request SET attempts = 8 WHERE request_id = 7;
SELECT connect_guard.request_outcome(7, 'send', NULL, 'Failed to connect to connect.example.com port 443', NULL);
SELECT request_id, status, attempts, last_http_status, last_error FROM connect_requests ORDER BY request_id;
-- an unreadable token file is a failed attempt, retried (the file may be fixed)
SELECT connect_pause('hk');
SELECT t_request_id FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(8, 'unsent', NULL, 'cannot read the token file "/etc/connect.token": the server cannot open it', NULL);
SELECT status, attempts, last_error FROM connect_requests WHERE request_id = 8;
ROLLBACK;

-- webhooks: a signed JSON POST; any 2xx is done
BEGIN;
SELECT connect_pause('wh', reason => 'maintenance');
SELECT t_step, t_method, t_url, t_auth, t_secret IS NOT NULL AS has_secret, t_body::jsonb - 'requested_at' AS body
  FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(9, 'send', 200, NULL, '{"received": 1}');
SELECT connection, state, fenced FROM connect_status WHERE connection = 'wh';
SELECT connect_resume('wh');
SELECT t_body::jsonb - 'requested_at' AS body FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(10, 'send', 401, NULL, '{"id": "unauthorized", "message": "bad signature"}');
SELECT state, status, attempts, last_error FROM connect_requests JOIN connect_status USING (connection)
 WHERE request_id = 10;
ROLLBACK;

-- reload and refresh; Connect's mapping ids (a local reload: sql/rollback.sql)
SELECT connect_reload_mapping('hk', 'contact');
SELECT connect_refresh('wh');
SELECT connect_set_mapping_remote_id('hk', 'account', 'no spaces please');
BEGIN;
SELECT connect_reload_mapping('hk', 'account', timeout => '1 hour');
SELECT table_name, state FROM connect_mappings WHERE connection = 'hk';
-- the table is fenced while Connect reloads it
SELECT scope, fenced_tables FROM connect_fences;
SELECT show_error($$SELECT connect_reload_mapping('hk', 'account')$$);
-- no remote id yet: the worker looks it up first
SELECT t_step, t_method, t_url FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(11, 'lookup', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED"}]}');
SELECT t_step, t_method, t_url FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(11, 'send', 202, NULL, '');
-- done once Connect was seen reloading (sql/reload_acknowledgement.sql)
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(11, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "RELOAD_TABLE"}]}');
UPDATE connect_guard.request SET next_attempt_at = clock_timestamp() WHERE request_id = 11;
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(11, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED"}]}');
SELECT table_name, state, remote_id FROM connect_mappings WHERE connection = 'hk';
SELECT action, table_name, status, attempts, polls, remote_state FROM connect_requests;
SELECT count(*) AS fences_left FROM connect_fences;
SELECT source, reloads_pending, resolution FROM connect_rollback_incidents;
ROLLBACK;
BEGIN;
SELECT connect_refresh('hk');
SELECT t_step, t_method, t_url FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(12, 'lookup', 200, NULL,
    '{"state": "IDLE", "high_water_mark": 42, "mappings": [{"id": "map-account", "object_name": "account", "state": "DATA_SYNCED"}]}');
SELECT status, remote_state FROM connect_requests;
-- Connect's own high-water mark is kept (the rollback checks compare it with the log)
SELECT connection, sync_service_hwm, sync_service_hwm_at IS NOT NULL AS dated FROM connect_high_water_marks
 WHERE connection = 'hk';
SELECT detail - 'request_id' AS detail FROM connect_guard.event WHERE kind = 'refreshed';
ROLLBACK;
SELECT connect_set_mapping_remote_id('hk', 'account', 'map-account');
SELECT table_name, remote_id FROM connect_mappings WHERE connection = 'hk';

-- connect_wait_state: an unknown state, a local connection that does not get there in time
SELECT connect_wait_state('hk', 'SLEEPING');
SELECT connect_wait_state('nope', 'IDLE');
SELECT connect_wait_state('loc', 'IDLE');
SELECT show_error($$SELECT connect_wait_state('loc', 'PAUSED', '200 ms')$$);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT connect_wait_state('loc', 'IDLE');
ROLLBACK;

-- the local adapter keeps its synchronous pause: no request, PAUSED at once
SELECT connect_pause('loc', block_writes => false);
SELECT connect_resume('loc');
SELECT count(*) AS requests FROM connect_guard.request;

-- secrets: never in a view or an event, and out of reach of other roles
SELECT count(*) AS views_with_secrets FROM (
    SELECT c::text FROM connect_connections c UNION ALL SELECT s::text FROM connect_status s
    UNION ALL SELECT r::text FROM connect_requests r UNION ALL SELECT m::text FROM connect_mappings m) v(t)
 WHERE t ~ 'SECRET';
SELECT count(*) AS events_with_secrets FROM connect_guard.event e WHERE e::text ~ 'SECRET';
SELECT count(*) AS options_with_secrets FROM connect_guard.connection c WHERE c::text ~ 'SECRET';
CREATE ROLE regress_signals_monitor IN ROLE pg_monitor;
SET ROLE regress_signals_monitor;
SELECT count(*) AS requests_seen FROM connect_requests;
SELECT * FROM connect_guard.connection_secret;
RESET ROLE;
GRANT USAGE ON SCHEMA connect_guard TO regress_signals_monitor;
SET ROLE regress_signals_monitor;
SELECT * FROM connect_guard.connection_secret;
SELECT * FROM connect_guard.request_take(8, 60000);
RESET ROLE;
-- naming a file the server reads needs pg_read_server_files
GRANT EXECUTE ON FUNCTION connect_guard.secret_file_problem(text) TO regress_signals_monitor;
SET ROLE regress_signals_monitor;
SELECT connect_guard.secret_file_problem('/etc/passwd');
RESET ROLE;
REVOKE ALL ON SCHEMA connect_guard FROM regress_signals_monitor;
REVOKE ALL ON FUNCTION connect_guard.secret_file_problem(text) FROM regress_signals_monitor;
DROP ROLE regress_signals_monitor;

-- a request being sent is leased to its taker (request_taker): nobody else
-- takes it while the taker lives; once it is gone (here a pid no process
-- has) it is due at once, unless it was taken on another timeline (the
-- worker of a server a promoted follower replaced, which may still be sending)
BEGIN;
SELECT connect_pause('hk', block_writes => false);
SELECT t_request_id AS request FROM connect_guard.request_take(8, 60000) \gset
SELECT pid = pg_backend_pid() AS taken_by_me, timeline = connect_guard.current_timeline() AS on_this_timeline
  FROM connect_guard.request_taker WHERE request_id = :request;
SELECT count(*) AS taken_again FROM connect_guard.request_take(8, 60000);
UPDATE connect_guard.request_taker SET pid = 0, timeline = timeline + 1;
SELECT count(*) AS taken_again FROM connect_guard.request_take(8, 60000);
UPDATE connect_guard.request_taker SET timeline = timeline - 1;
SELECT t_request_id = :request AS taken_again, t_step FROM connect_guard.request_take(8, 60000);
SELECT detail ->> 'action' AS action, detail ->> 'taken_by_pid' AS taken_by_pid, detail ->> 'attempts' AS attempts
  FROM connect_guard.event WHERE kind = 'request_taker_gone';
SELECT attempts FROM connect_requests WHERE request_id = :request;
-- the outcome recorded, the request has no taker
SELECT connect_guard.request_outcome(:request, 'send', 500, NULL, '{}');
SELECT count(*) AS takers FROM connect_guard.request_taker;
ROLLBACK;

-- dropping a connection drops its secret and its requests
SELECT connect_drop_connection('hk');
SELECT connect_drop_connection('wh');
SELECT count(*) AS secrets_left FROM connect_guard.connection_secret;
DROP TABLE account, contact;
DROP EXTENSION connect_guard;
