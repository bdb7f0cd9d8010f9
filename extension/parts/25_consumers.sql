/* ------------------------------------------------------------------------
 * Consumers: which roles take, read and finish the batches of which
 * connection.  The consumer functions (30_batches.sql) run as the
 * extension's owner, so EXECUTE on them alone would let a role consume any
 * connection, and move another connection's high-water mark (its sync
 * service would then never see those entries).  So a role consumes a
 * connection only once connect_grant_consumer() named it for that
 * connection; superusers consume any.  A grant is kept by role name, as a
 * dump keeps GRANTs: it survives pg_dump, pg_upgrade and followers.
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.consumer (
    connection_id   integer NOT NULL REFERENCES connect_guard.connection ON DELETE CASCADE,
    role_name       name NOT NULL,
    granted_by      name NOT NULL DEFAULT session_user,
    granted_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (connection_id, role_name)
);
SELECT pg_catalog.pg_extension_config_dump('connect_guard.consumer', '');

/*
 * connect_guard.is_consumer: whether the session's role (session_user: the
 * consumer functions run as their owner) may consume the connection, as a
 * superuser or as a member of a role granted it.
 */
CREATE FUNCTION connect_guard.is_consumer(p_connection_id integer)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user), false)
        OR EXISTS (SELECT 1 FROM connect_guard.consumer k JOIN pg_roles r ON r.rolname = k.role_name
                    WHERE k.connection_id = p_connection_id AND pg_has_role(session_user, r.oid, 'MEMBER'));
$$;

/*
 * connect_guard.require_consumer stops a consumer function called by a
 * role that may not consume the connection.
 */
CREATE FUNCTION connect_guard.require_consumer(p_connection_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text;
BEGIN
    IF NOT connect_guard.is_consumer(p_connection_id) THEN
        SELECT c.name INTO v_name FROM connect_guard.connection c WHERE c.connection_id = p_connection_id;
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('role "%s" is not a consumer of connection "%s"', session_user, v_name),
            DETAIL = 'EXECUTE on the consumer functions is not enough: each connection names the roles that take, '
                     'read and finish its batches.',
            HINT = format('A superuser grants it with SELECT connect_grant_consumer(%L, %L).', v_name, session_user);
    END IF;
END;
$$;

-- connect_guard.require_role: the role named p_role, or the error that says it does not exist
CREATE FUNCTION connect_guard.require_role(p_role name)
RETURNS oid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_oid oid;
BEGIN
    PERFORM connect_guard.require_not_null(p_role, 'role', 'Pass the name of the sync service''s role.');
    SELECT r.oid INTO v_oid FROM pg_roles r WHERE r.rolname = p_role;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('role "%s" does not exist', p_role),
            HINT = 'Create the sync service''s role first (CREATE ROLE ... LOGIN).';
    END IF;
    RETURN v_oid;
END;
$$;

/*
 * connect_grant_consumer lets a role (and its members) take, read and
 * finish the batches of one connection, and grants it EXECUTE on the three
 * consumer functions.  Returns false when the role was a consumer already.
 */
CREATE FUNCTION connect_grant_consumer(connection text, role name)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_role(role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s, %s, %s TO %I',
                   '@extschema@.connect_next_batch(text)'::regprocedure,
                   '@extschema@.connect_batch_events(bigint)'::regprocedure,
                   '@extschema@.connect_finish_batch(bigint)'::regprocedure, role);
    INSERT INTO connect_guard.consumer (connection_id, role_name) VALUES (c.connection_id, role)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM connect_guard.log_event(c.connection_id, 'consumer_granted', jsonb_build_object('role', role));
    RETURN true;
END;
$$;

/*
 * connect_guard.consumer_rights_follow: a role that consumes no connection
 * any more loses EXECUTE on the consumer functions (which alone would give
 * it nothing).  A trigger rather than a step of connect_revoke_consumer:
 * grants also go when their connection is dropped (ON DELETE CASCADE), and
 * a role left with EXECUTE but no grant row could be dropped only after a
 * REVOKE by hand that nothing would tell the DBA about.
 */
CREATE FUNCTION connect_guard.consumer_rights_follow()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT DISTINCT gone.role_name FROM gone
         WHERE NOT EXISTS (SELECT 1 FROM connect_guard.consumer k WHERE k.role_name = gone.role_name)
           AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = gone.role_name)
         ORDER BY 1
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s, %s, %s FROM %I',
                       '@extschema@.connect_next_batch(text)'::regprocedure,
                       '@extschema@.connect_batch_events(bigint)'::regprocedure,
                       '@extschema@.connect_finish_batch(bigint)'::regprocedure, v_role);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER consumer_rights_follow
    AFTER DELETE ON connect_guard.consumer
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.consumer_rights_follow();

/*
 * connect_revoke_consumer takes the connection away from a role; a role
 * that consumes no connection any more also loses EXECUTE on the consumer
 * functions (consumer_rights_follow).  A batch it holds stays open and is
 * handed to the next consumer that asks.  Returns false when the role was
 * no consumer of the connection.
 */
CREATE FUNCTION connect_revoke_consumer(connection text, role name)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_not_null(role, 'role', 'Pass the name of the role, as connect_consumers shows it.');
    DELETE FROM connect_guard.consumer k WHERE k.connection_id = c.connection_id AND k.role_name = role;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM connect_guard.log_event(c.connection_id, 'consumer_revoked', jsonb_build_object('role', role));
    RETURN true;
END;
$$;

CREATE VIEW connect_consumers AS
SELECT c.name AS connection,
       k.role_name AS role,
       EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = k.role_name) AS role_exists,
       k.granted_by,
       k.granted_at
  FROM connect_guard.consumer k JOIN connect_guard.connection c USING (connection_id);
