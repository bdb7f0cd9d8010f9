-- Consumers are bound to their connection: a role takes, reads and
-- finishes the batches of the connections it was granted, and nothing
-- else.  And whatever a consumer does (hold the connection's lock, keep
-- taking batches), a pause keeps its timeout.  Each attack is one row:
-- who does what, and the exact outcome.
CREATE EXTENSION connect_guard;
CREATE EXTENSION dblink;
\set SHOW_CONTEXT never
\set ECHO none
-- outcome runs a statement and returns its first value, or its error with
-- times, durations, pids and fence ids masked
CREATE FUNCTION outcome(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_result text; v_state text; v_message text; v_detail text; v_hint text;
BEGIN
    EXECUTE stmt INTO v_result;
    RETURN 'returns ' || coalesce(v_result, 'NULL');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                            v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
    RETURN regexp_replace(regexp_replace(
               format(E'%s: %s\nDETAIL: %s\nHINT: %s', v_state, v_message, v_detail, v_hint),
               '(\d{4}-\d\d-\d\d[ T][0-9:.]+([+-]\d\d(:\d\d)?)?|open for [^,)]+)', '<time>', 'g'),
               '([0-9]+(\.[0-9]+)? s\M|fence [0-9]+|pid [0-9]+)', '<n>', 'g');
END
$$;
-- a second session, through dblink, for the consumer that holds a lock or a pause that waits
CREATE FUNCTION session_open(name text) RETURNS text LANGUAGE sql AS $$
    SELECT dblink_connect(name, format('dbname=%s host=%s port=%s user=%s', current_database(),
                                       current_setting('unix_socket_directories'), current_setting('port'), session_user));
$$;
\set ECHO all
CREATE TABLE account (id int PRIMARY KEY);
CREATE TABLE contact (id int PRIMARY KEY);
SELECT connect_create_connection('a'), connect_create_connection('b');
SELECT connect_map_table('a', 'account'), connect_map_table('b', 'contact');
CREATE ROLE cg_regress_a LOGIN;                       -- a's sync service
CREATE ROLE cg_regress_b LOGIN;                       -- b's
CREATE ROLE cg_regress_old LOGIN;                     -- EXECUTE granted by hand, as before consumers existed
CREATE ROLE cg_regress_member LOGIN IN ROLE cg_regress_a;
CREATE ROLE cg_regress_monitor LOGIN IN ROLE pg_monitor;

-- a superuser grants a role one connection (and the consumer functions with it)
SELECT connect_grant_consumer('a', 'cg_regress_a') AS granted, connect_grant_consumer('a', 'cg_regress_a') AS again;
SELECT connect_grant_consumer('b', 'cg_regress_b');
GRANT EXECUTE ON FUNCTION connect_next_batch(text), connect_batch_events(bigint), connect_finish_batch(bigint)
   TO cg_regress_old;
SELECT connection, role, role_exists, granted_by FROM connect_consumers ORDER BY 1, 2;
SELECT r.rolname, has_function_privilege(r.oid, 'connect_next_batch(text)', 'EXECUTE') AS executes
  FROM pg_roles r WHERE r.rolname LIKE 'cg\_regress\_%' ORDER BY 1;

INSERT INTO account VALUES (1), (2);
INSERT INTO contact VALUES (1);
SET SESSION AUTHORIZATION cg_regress_b;
SELECT connect_next_batch('b') AS b_batch \gset
RESET SESSION AUTHORIZATION;

-- the matrix
CREATE TABLE matrix (row_no serial, who name, call text);
GRANT SELECT ON matrix TO PUBLIC;
INSERT INTO matrix (who, call) VALUES
    ('cg_regress_a', $$SELECT connect_next_batch('b')$$),                        -- takes another connection's batch
    ('cg_regress_a', format('SELECT count(*) FROM connect_batch_events(%s)', :b_batch)),    -- reads it
    ('cg_regress_a', format('SELECT connect_finish_batch(%s)', :b_batch)),       -- moves b's mark
    ('cg_regress_a', $$SELECT connect_grant_consumer('b', 'cg_regress_a')$$),    -- grants itself b
    ('cg_regress_a', $$SELECT connect_revoke_consumer('b', 'cg_regress_b')$$),   -- takes b from its consumer
    ('cg_regress_a', $$SELECT connect_pause('b', timeout => '0')$$),             -- pauses b
    ('cg_regress_a', $$SELECT count(*) FROM connect_guard.consumer$$),           -- reads the grants
    ('cg_regress_a', $$SELECT connect_next_batch('a') > 0$$),                    -- its own: allowed
    ('cg_regress_old', $$SELECT connect_next_batch('a')$$),                      -- EXECUTE alone
    ('cg_regress_member', $$SELECT connect_next_batch('a') > 0$$),               -- a member of a's role: allowed, and takes a's open batch over
    ('cg_regress_a', format('SELECT connect_finish_batch(%s)', :b_batch + 1)),     -- the batch its member took over
    ('cg_regress_member', format('SELECT connect_finish_batch(%s)', :b_batch + 1)),
    ('cg_regress_monitor', $$SELECT string_agg(connection || ':' || role, ',' ORDER BY connection, role) FROM connect_consumers$$),
    ('cg_regress_monitor', $$SELECT connect_next_batch('a')$$);
CREATE FUNCTION run_as(p_role name, p_call text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SET SESSION AUTHORIZATION %I', p_role);
    RETURN outcome(p_call);
END
$$;
SELECT m.row_no, m.who, m.call, run_as(m.who, m.call) AS outcome
  FROM (SELECT * FROM matrix ORDER BY row_no) m;
RESET SESSION AUTHORIZATION;
-- b's mark did not move, its batch is still open; a's moved
SELECT connection, hwm_id, backlog, open_batch IS NOT NULL AS open FROM connect_high_water_marks ORDER BY 1;

-- revoking: the role loses the connection, and EXECUTE with its last one
SELECT connect_revoke_consumer('a', 'cg_regress_a') AS revoked, connect_revoke_consumer('a', 'cg_regress_a') AS again;
SELECT has_function_privilege('cg_regress_a', 'connect_next_batch(text)', 'EXECUTE') AS a_executes,
       has_function_privilege('cg_regress_b', 'connect_next_batch(text)', 'EXECUTE') AS b_executes;
SELECT run_as('cg_regress_member', $$SELECT connect_next_batch('a')$$) AS "member after the revoke";
RESET SESSION AUTHORIZATION;
-- a consumer role cannot be dropped before its grants are revoked (PostgreSQL keeps the EXECUTE grants)
SELECT outcome('DROP ROLE cg_regress_b') AS "drop a consumer role";
SELECT connection_name, kind, detail, actor FROM connect_guard.event WHERE kind LIKE 'consumer%' ORDER BY event_id;

-- A consumer that holds the connection's lock (connect_next_batch in a
-- transaction it does not commit) cannot keep a pause past its timeout,
-- for a local connection or one whose pause is a request to the sync service.
SELECT connect_create_connection('h', 'heroku',
    jsonb_build_object('region_url', 'https://connect.example.com', 'connection_id', 'c-1',
                       'token_file', current_setting('data_directory') || '/PG_VERSION'));
INSERT INTO account VALUES (3);
SELECT session_open('consumer');
SELECT dblink_exec('consumer', 'BEGIN');
SELECT * FROM dblink('consumer', $$SELECT connect_next_batch('a') IS NOT NULL, connect_next_batch('h') IS NULL$$)
    AS t(a_batch_taken boolean, h_nothing_new boolean);
SET statement_timeout = '60s';       -- were the lock waited for, this would be the error
SELECT outcome($$SELECT connect_pause('a', timeout => '1 s')$$) AS "local pause, the consumer holds the lock";
SELECT outcome($$SELECT connect_pause('h', timeout => '1 s')$$) AS "heroku pause, the consumer holds the lock";
RESET statement_timeout;
SELECT dblink_exec('consumer', 'COMMIT');
SELECT connection, state FROM connect_status WHERE connection IN ('a', 'h') ORDER BY 1;

-- A consumer that finishes its batch and takes the next at once cannot
-- keep a pause from ever finding the connection idle: while a pause waits,
-- connect_next_batch opens no new batch (a's batch is open, and there is more).
INSERT INTO account VALUES (4);
SELECT session_open('pauser');
SELECT dblink_send_query('pauser', $$SELECT connect_pause('a', block_writes => false, timeout => '30 s')$$);
DO $$
BEGIN
    FOR i IN 1 .. 3000 LOOP     -- until the pause announces itself
        EXIT WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = connect_guard.pause_lock_class()::oid);
        PERFORM pg_sleep(0.01);
    END LOOP;
END
$$;
BEGIN;
SELECT connect_finish_batch(open_batch) > 0 AS finished FROM connect_high_water_marks WHERE connection = 'a';
SELECT connect_next_batch('a') AS "next batch while a pause waits", state, backlog
  FROM connect_status WHERE connection = 'a';
COMMIT;
SELECT * FROM dblink_get_result('pauser') AS t(state text);
SELECT connection, state, open_batch FROM connect_status WHERE connection = 'a';
SELECT connect_resume('a');
SELECT dblink_disconnect('consumer'), dblink_disconnect('pauser');

SELECT connect_drop_connection(c) FROM unnest(ARRAY['a', 'b', 'h']) c;
DROP TABLE matrix, account, contact;
DROP FUNCTION run_as(name, text), outcome(text), session_open(text);
DROP EXTENSION dblink;
DROP EXTENSION connect_guard;
DROP ROLE cg_regress_a, cg_regress_b, cg_regress_old, cg_regress_member, cg_regress_monitor;
