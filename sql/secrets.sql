-- Secrets: a sync service that echoes the token, in any encoding, gets
-- every form of it scrubbed from everything stored (scrub.c has the rule);
-- a URL that would carry it in clear is refused.  Each row is one attack
-- and its exact outcome.  The worker holds the secrets while it records an
-- outcome; here connect_guard.scrub_hold() does the same in this backend,
-- and the worker's steps (request_take, request_outcome) are driven by
-- hand inside a transaction that rolls back (as in sql/signals.sql).
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
\i sql/show_error.psql
\set ECHO all
CREATE TABLE account (id int PRIMARY KEY, name text);

-- nothing held: nothing is scrubbed (this is every backend but the worker)
SELECT connect_guard.scrub('TOPSECRET-abc123') AS nothing_held;

-- the rule, form by form
SELECT connect_guard.scrub_hold(ARRAY['TOPSECRET-abc123', 'k/ey+V4l=ue.42']);
CREATE TEMP TABLE forms (row_no serial, form text, answer text);
INSERT INTO forms (form, answer) VALUES
    ('as sent',                 'token TOPSECRET-abc123 is not valid'),
    ('JSON \u escape',          'token TOPSECRET\u002dabc123 is not valid'),
    ('JSON, upper-case hex',    'token TOPSECRET\u002Dabc123 is not valid'),
    ('JSON, every character',   (SELECT string_agg(format('\u%s', lpad(to_hex(ascii(c)), 4, '0')), '')
                                   FROM regexp_split_to_table('TOPSECRET-abc123', '') c)),
    ('JSON \/ escape',          'key k\/ey+V4l=ue.42 refused'),
    ('C \x escape',             'TOPSECRET\x2dabc123'),
    ('percent-encoded',         'token=TOPSECRET%2Dabc123&x=1'),
    ('percent, every byte',     (SELECT string_agg(format('%%%s', upper(to_hex(ascii(c)))), '')
                                   FROM regexp_split_to_table('TOPSECRET-abc123', '') c)),
    ('percent in JSON',         'TOPSECRET\u00252Dabc123'),
    ('escaped twice',           'TOPSECRET\\u002dabc123'),
    ('HTML, decimal',           '<p>TOPSECRET&#45;abc123</p>'),
    ('HTML, hex',               'TOPSECRET&#x2d;abc123'),
    ('HTML entity',             'k/ey+V4l=ue.42&amp;'),
    ('other case',              'token topsecret-ABC123 is not valid'),
    ('base64',                  'got ' || encode('TOPSECRET-abc123', 'base64')),
    ('base64 Basic credential', 'Authorization: Basic ' || encode('sync:TOPSECRET-abc123', 'base64')),
    ('base64url',               translate(encode('xx:k/ey+V4l=ue.42', 'base64'), '+/', '-_')),
    ('base64, no separator',    'tok' || encode('TOPSECRET-abc123', 'base64')),
    ('hex',                     'key 0x' || encode('TOPSECRET-abc123', 'hex')),
    ('first 8 characters',      'token TOPSECRE... is not valid'),
    ('8 from the middle',       'ends in RET-abc1'),
    ('7 characters: kept',      'token TOPSECR... is not valid'),
    ('twice',                   'TOPSECRET-abc123 and TOPSECRET\u002dabc123'),
    ('nothing of it',           'HTTP 401: unauthorized (request 7)');
SELECT row_no, form, answer, connect_guard.scrub(answer) AS stored
  FROM (SELECT * FROM forms ORDER BY row_no) f;

-- Everything stored from an answer goes through the scrubber, whoever
-- writes it: a heroku pause whose answer echoes the token, JSON-escaped
SELECT connect_create_connection('hk', 'heroku',
    jsonb_build_object('region_url', 'https://connect.example.com', 'connection_id', 'c-1',
                       'token_file', current_setting('data_directory') || '/PG_VERSION'));
SELECT connect_map_table('hk', 'account', 'Account');
BEGIN;
SELECT connect_pause('hk', reason => 'window');
SELECT t_request_id, t_step FROM connect_guard.request_take(8, 60000);
-- 400 cannot change with a retry: the request fails at once, and says why
SELECT connect_guard.request_outcome(1, 'send', 400, NULL,
    '{"id": "unauthorized", "message": "token TOPSECRET\u002dabc123 is not valid for this connection"}');
SELECT status, last_error FROM connect_requests;
SELECT state, paused_because FROM connect_status WHERE connection = 'hk';
SELECT kind, detail ->> 'error' AS error FROM connect_guard.event WHERE kind = 'request_failed';
SELECT show_error($$SELECT connect_wait_state('hk', 'PAUSED')$$);
-- a retried failure, a poll's error and its remote state, an error of the worker itself
SELECT connect_pause('hk');
SELECT t_request_id FROM connect_guard.request_take(8, 60000);
SELECT connect_guard.request_outcome(2, 'send', 503, NULL, '{"message": "upstream saw Bearer%20TOPSECRET%2Dabc123"}');
SELECT last_error FROM connect_requests WHERE request_id = 2;
SELECT kind, detail ->> 'error' AS error FROM connect_guard.event WHERE kind = 'request_retry';
SELECT connect_guard.request_outcome(2, 'send', 202, NULL, '');
SELECT connect_guard.request_outcome(2, 'poll', 200, NULL,
    '{"state": "TOPSECRET-abc123", "mappings": [{"id": "TOPSECRET-abc123", "object_name": "Account"}]}');
SELECT remote_state FROM connect_requests WHERE request_id = 2;
SELECT remote_id FROM connect_mappings WHERE connection = 'hk';     -- an id that spells the token is no id
SELECT connect_guard.request_outcome(2, 'error', NULL, 'invalid input syntax for type json: "TOPSECRET\u002dabc123"', NULL);
SELECT last_error FROM connect_requests WHERE request_id = 2;
-- and no stored text anywhere holds the token, in any form the rule knows
SELECT count(*) AS rows_holding_the_token
  FROM (SELECT last_error AS t FROM connect_guard.request UNION ALL SELECT remote_state FROM connect_guard.request
        UNION ALL SELECT state_reason FROM connect_guard.connection UNION ALL SELECT detail::text FROM connect_guard.event
        UNION ALL SELECT remote_id FROM connect_guard.mapping) s
 WHERE t IS NOT NULL AND connect_guard.scrub(t) <> t;
ROLLBACK;
SELECT connect_guard.scrub_release();
SELECT connect_guard.scrub('TOPSECRET-abc123') AS released;

-- URLs: every request of heroku and webhook carries the token or a
-- signature, so plain http:// is refused (connect_guard.http_allow_insecure_loopback
-- is off here; test/t/013_secrets.pl has it on, for the simulator)
CREATE TEMP TABLE urls (row_no serial, adapter text, url text);
INSERT INTO urls (adapter, url) VALUES
    ('heroku', 'http://connect.example.com'),
    ('heroku', 'http://127.0.0.1:8080'),
    ('heroku', 'http://[::1]:8080'),
    ('heroku', 'http://localhost:8080/api'),
    ('heroku', 'HTTP://connect.example.com'),
    ('heroku', 'https://connect.example.com'),
    ('webhook', 'http://hooks.example.com/connect'),
    ('webhook', 'http://127.0.0.2/hook'),
    ('webhook', 'https://127.0.0.1/hook');
SELECT row_no, adapter, url,
       show_error(format('SELECT connect_create_connection(%L, %L, %L)', 'u' || row_no, adapter,
                         CASE adapter WHEN 'heroku'
                              THEN jsonb_build_object('region_url', url, 'connection_id', 'c-1',
                                                      'token_file', current_setting('data_directory') || '/PG_VERSION')
                              ELSE jsonb_build_object('url', url,
                                                      'secret_file', current_setting('data_directory') || '/PG_VERSION') END))
  FROM (SELECT * FROM urls ORDER BY row_no) u;
SELECT connection, adapter FROM connect_connections ORDER BY 1;

SELECT connect_drop_connection(connection) FROM connect_connections;
DROP TABLE account;
DROP FUNCTION show_error(text);
DROP EXTENSION connect_guard;
