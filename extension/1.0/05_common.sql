/* ------------------------------------------------------------------------
 * Common helpers: the event log, the connection lock, redaction, and the
 * require_* checks that stop a call with a clear error.  Every later part
 * may use them; they use nothing but the catalog.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.log_event appends to the event log; every state change goes
 * through it, so the log tells who did what and when.
 */
CREATE FUNCTION connect_guard.log_event(p_connection_id integer, p_kind text,
                                        p_detail jsonb DEFAULT '{}')
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO connect_guard.event (connection_id, connection_name, kind, detail)
    SELECT p_connection_id,
           (SELECT c.name FROM connect_guard.connection c WHERE c.connection_id = p_connection_id),
           p_kind, p_detail;
$$;

/*
 * connect_guard.require_connection returns the connection named p_name
 * (locked with p_lock), or raises the error that says it does not exist.
 */
CREATE FUNCTION connect_guard.require_connection(p_name text, p_lock boolean DEFAULT false)
RETURNS connect_guard.connection
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    IF p_lock THEN
        SELECT * INTO c FROM connect_guard.connection WHERE name = p_name FOR UPDATE;
    ELSE
        SELECT * INTO c FROM connect_guard.connection WHERE name = p_name;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('connection "%s" does not exist', p_name),
            HINT = 'See SELECT name FROM connect_connections, or create it with connect_create_connection().';
    END IF;
    RETURN c;
END;
$$;

/*
 * connect_guard.connection_for_update returns the connection row, locked so
 * that batches, pauses and drops of one connection happen one at a time.
 */
CREATE FUNCTION connect_guard.connection_for_update(p_name text)
RETURNS connect_guard.connection
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM connect_guard.require_connection(p_name, true);
$$;

/*
 * connect_guard.require_read_committed refuses to run p_what in a longer
 * isolation level: what it does depends on seeing other sessions' commits
 * as they happen.
 */
CREATE FUNCTION connect_guard.require_read_committed(p_what text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_transaction_state',
            MESSAGE = format('%s must run in a READ COMMITTED transaction', p_what),
            DETAIL = 'It must see what other sessions commit while it runs.',
            HINT = 'Call it outside REPEATABLE READ and SERIALIZABLE transactions.';
    END IF;
END;
$$;

CREATE FUNCTION connect_guard.redact(p_options jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(key,
                        CASE WHEN key ~* '(token|secret|password|key)' THEN '"********"'::jsonb
                             ELSE value END), '{}')
      FROM jsonb_each(p_options);
$$;

