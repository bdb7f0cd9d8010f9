-- When a Heroku Connect reload counts as done: only a 202 queues it, and
-- only a proof that a reload started after the request, then DATA_SYNCED,
-- acknowledges it: Connect seen working on it (RELOAD_TABLE after the 202),
-- or a reload_started_at later than the one the deep GET showed before the
-- reload was asked for (a reload over between two polls); the DATA_SYNCED
-- the mapping had before the reload started does not.  The worker's steps
-- (request_take, request_outcome) are driven by hand in transactions that
-- roll back, so that the running worker never sees these requests.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE TABLE account (id int PRIMARY KEY, name text);
SELECT connect_create_connection('hk', 'heroku',
    '{"region_url": "https://connect.example.com", "connection_id": "6a1b0f3e-0000-4000-8000-00000000d3e0",
      "token": "tok-SECRET-1"}') > 0 AS created;
SELECT connect_map_table('hk', 'account', 'Account') > 0 AS mapped;
SELECT connect_set_mapping_remote_id('hk', 'account', 'map-account');

-- an answer other than 202 does not say the reload was queued: the request fails, the table stays fenced
BEGIN;
SELECT connect_reload_mapping('hk', 'account') AS request \gset
-- first a look at the mapping as it stands before the reload is asked for
SELECT t_step, t_method, t_url FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'lookup', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED"}]}');
SELECT params -> 'reload_baseline' AS baseline FROM connect_guard.request WHERE request_id = :request;
SELECT t_step, t_method, t_url FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'send', 200, NULL, '{}');
SELECT status, attempts, last_http_status, last_error FROM connect_requests WHERE request_id = :request;
SELECT state FROM connect_mappings WHERE connection = 'hk';
SELECT scope, fenced_tables FROM connect_fences;
ROLLBACK;

-- 202, then the mapping still shows the DATA_SYNCED it had: not done, polled again within 2 s
BEGIN;
SELECT connect_reload_mapping('hk', 'account') AS request \gset
SELECT t_request_id = :request AS taken FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'lookup', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED"}]}');
SELECT t_request_id = :request AS taken FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'send', 202, NULL, '');
SELECT t_step, t_method, t_url FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED"}]}');
SELECT status, phase, polls, remote_state, next_attempt_at <= clock_timestamp() + interval '2 s' AS soon
  FROM connect_requests WHERE request_id = :request;
SELECT state FROM connect_mappings WHERE connection = 'hk';
SELECT show_error($$INSERT INTO account VALUES (1, 'during the reload')$$);
-- polls that find it still queued stay at most 2 s apart
UPDATE connect_guard.request SET polls = 20, next_attempt_at = clock_timestamp() WHERE request_id = :request;
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED"}]}');
SELECT next_attempt_at <= clock_timestamp() + interval '2 s' AS soon FROM connect_requests WHERE request_id = :request;
-- Connect works on it
UPDATE connect_guard.request SET next_attempt_at = clock_timestamp() WHERE request_id = :request;
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "RELOAD_TABLE"}]}');
SELECT status, phase, remote_state FROM connect_requests WHERE request_id = :request;
SELECT kind, detail - 'after_ms' AS detail FROM connect_guard.event WHERE kind = 'reload_started';
-- and is done: acknowledged, the fence comes down
UPDATE connect_guard.request SET next_attempt_at = clock_timestamp() WHERE request_id = :request;
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED"}]}');
SELECT status, phase, remote_state FROM connect_requests WHERE request_id = :request;
SELECT state FROM connect_mappings WHERE connection = 'hk';
SELECT count(*) AS fences FROM connect_fences;
INSERT INTO account VALUES (1, 'after the reload');
ROLLBACK;

-- a reload over between two polls, never seen running: its reload_started_at, later than the
-- one the mapping showed before the request, proves it ran (Connect's clock on both sides)
BEGIN;
SELECT connect_reload_mapping('hk', 'account') AS request \gset
SELECT t_request_id = :request AS taken FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'lookup', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED",
      "reload_started_at": "2024-03-01T10:00:00.000000+00:00", "reload_finished_at": "2024-03-01T10:05:00.000000+00:00"}]}');
SELECT params -> 'reload_baseline' AS baseline FROM connect_guard.request WHERE request_id = :request;
SELECT t_request_id = :request AS taken FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'send', 202, NULL, '');
-- the last reload the mapping shows is the one from before the request: not done
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED",
      "reload_started_at": "2024-03-01T10:00:00Z", "reload_finished_at": "2024-03-01T10:05:00Z"}]}');
SELECT status, phase, remote_state FROM connect_requests WHERE request_id = :request;
-- nor one that is older, nor a value that is no timestamp
UPDATE connect_guard.request SET next_attempt_at = clock_timestamp() WHERE request_id = :request;
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED",
      "reload_started_at": "2024-02-29T23:59:59Z"}]}');
UPDATE connect_guard.request SET next_attempt_at = clock_timestamp() WHERE request_id = :request;
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED",
      "reload_started_at": "yesterday"}]}');
SELECT status, phase, remote_state FROM connect_requests WHERE request_id = :request;
SELECT count(*) AS fences FROM connect_fences;
-- a reload that started after it, and is over: acknowledged without ever being seen running
UPDATE connect_guard.request SET next_attempt_at = clock_timestamp() WHERE request_id = :request;
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED",
      "reload_started_at": "2024-03-01T11:00:00.250000+01:00", "reload_finished_at": "2024-03-01T10:00:00.300000Z"}]}');
SELECT status, phase, remote_state FROM connect_requests WHERE request_id = :request;
SELECT kind, detail - 'after_ms' - 'request_id' AS detail FROM connect_guard.event WHERE kind = 'reload_started';
SELECT state FROM connect_mappings WHERE connection = 'hk';
SELECT count(*) AS fences FROM connect_fences;
ROLLBACK;

-- a mapping that had never been reloaded (no reload_started_at before): the first one is the proof
BEGIN;
SELECT connect_reload_mapping('hk', 'account') AS request \gset
SELECT t_request_id = :request AS taken FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'lookup', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED",
      "reload_started_at": null}]}');
SELECT t_request_id = :request AS taken FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'send', 202, NULL, '');
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED",
      "reload_started_at": "2024-03-01T10:00:00Z"}]}');
SELECT status, remote_state FROM connect_requests WHERE request_id = :request;
ROLLBACK;

-- never seen working on it before the timeout (and Connect shows no reload_started_at): failed,
-- the mapping stays RELOAD_TABLE and fenced
BEGIN;
SELECT connect_reload_mapping('hk', 'account', timeout => '1 min') AS request \gset
SELECT t_request_id = :request AS taken FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'lookup', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED"}]}');
SELECT t_request_id = :request AS taken FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'send', 202, NULL, '');
UPDATE connect_guard.request SET deadline = clock_timestamp() - interval '1 s', next_attempt_at = clock_timestamp()
 WHERE request_id = :request;
SELECT t_step FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(:request, 'poll', 200, NULL,
    '{"state": "IDLE", "mappings": [{"id": "map-account", "object_name": "Account", "state": "DATA_SYNCED"}]}');
SELECT status, last_error FROM connect_requests WHERE request_id = :request;
SELECT state FROM connect_mappings WHERE connection = 'hk';
SELECT scope, fenced_tables FROM connect_fences;
-- the DBA who checked acknowledges it by hand
SELECT connect_mapping_reloaded('hk', 'account');
SELECT count(*) AS fences FROM connect_fences;
ROLLBACK;

SELECT connect_drop_connection('hk');
DROP TABLE account;
DROP EXTENSION connect_guard;
DROP FUNCTION show_error(text);
