-- Consumers are bound to their connection: a role takes, reads and
-- finishes the batches of the connections it was granted, and nothing
-- else.  Each attack is one row: who does what, and the exact outcome.
-- (That a pause keeps its timeout whatever a consumer does takes two
-- sessions: test/t/014_consumer_lock.pl.)
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set ECHO none
-- outcome runs a statement and returns its first value, or its error
CREATE FUNCTION outcome(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_result text; v_state text; v_message text; v_detail text; v_hint text;
BEGIN
    EXECUTE stmt INTO v_result;
    RETURN 'returns ' || coalesce(v_result, 'NULL');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                            v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
    RETURN format(E'%s: %s\nDETAIL: %s\nHINT: %s', v_state, v_message, v_detail, v_hint);
END
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

-- a grant that goes with its connection takes EXECUTE with it, when it was the role's last one:
-- c's consumer also consumes b, and keeps EXECUTE until b goes too; then the role can be dropped
SELECT connect_create_connection('c');
SELECT connect_grant_consumer('c', 'cg_regress_b');
SELECT connect_drop_connection('c');
SELECT has_function_privilege('cg_regress_b', 'connect_next_batch(text)', 'EXECUTE') AS b_executes_with_b_left,
       (SELECT count(*) FROM connect_consumers WHERE role = 'cg_regress_b') AS b_grants;
SELECT connect_drop_connection(c) FROM unnest(ARRAY['a', 'b']) c;
SELECT has_function_privilege('cg_regress_b', 'connect_next_batch(text)', 'EXECUTE') AS b_executes_with_none_left,
       (SELECT count(*) FROM connect_consumers) AS grants_left;
DROP ROLE cg_regress_b;                                -- nothing of it left behind
DROP TABLE matrix, account, contact;
DROP FUNCTION run_as(name, text), outcome(text);
DROP EXTENSION connect_guard;
DROP ROLE cg_regress_a, cg_regress_old, cg_regress_member, cg_regress_monitor;
