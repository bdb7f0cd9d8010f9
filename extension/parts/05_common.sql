/* ------------------------------------------------------------------------
 * Common helpers: the event log, the connection lock, redaction, and the
 * require_* checks that stop a call with a clear error.  Every later part
 * may use them; they use nothing but the catalog.
 *
 * Arguments: every connect_* function either says what NULL means for an
 * argument (README, Reference), or refuses it with null_value_not_allowed
 * through require_not_null() and its siblings here, before it changes
 * anything.  Timeouts are checked by require_timeout().
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.require_not_null stops a call whose argument p_name is
 * NULL, with a hint that says what to pass instead.
 */
CREATE FUNCTION connect_guard.require_not_null(p_value anyelement, p_name text, p_hint text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('%s must not be NULL', p_name),
            HINT = p_hint;
    END IF;
END;
$$;

/*
 * connect_guard.require_timeout stops a call whose timeout p_name is NULL,
 * negative or longer than 24 days: a deadline that far is no deadline, and
 * the waits are bounded through lock_timeout, whose limit (2^31 - 1 ms) is
 * just above it.
 */
CREATE FUNCTION connect_guard.require_timeout(p_value interval, p_name text, p_example text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM connect_guard.require_not_null(p_value, p_name, format('Pass how long to wait, for example %s.', p_example));
    IF p_value < interval '0' OR p_value > interval '24 days' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s must be from 0 to 24 days, not %s', p_name, p_value),
            HINT = format('Pass how long to wait, for example %s.', p_example);
    END IF;
END;
$$;

/*
 * connect_guard.require_table stops a call whose table argument is NULL or
 * names no relation (an OID such as 0 casts to regclass without a check).
 */
CREATE FUNCTION connect_guard.require_table(p_table regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM connect_guard.require_not_null(p_table, 'table', 'Pass the table as a regclass, for example ''public.contact''.');
    IF NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = p_table) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_table',
            MESSAGE = format('table with OID %s does not exist', p_table::oid),
            HINT = 'Pass the table by name, for example ''public.contact''.';
    END IF;
END;
$$;

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
    PERFORM connect_guard.require_not_null(p_name, 'connection name',
                                           'Pass the name of a connection; see SELECT connection FROM connect_connections.');
    IF p_lock THEN
        SELECT * INTO c FROM connect_guard.connection WHERE name = p_name FOR NO KEY UPDATE;
    ELSE
        SELECT * INTO c FROM connect_guard.connection WHERE name = p_name;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('connection "%s" does not exist', p_name),
            HINT = 'See SELECT connection FROM connect_connections, or create it with connect_create_connection().';
    END IF;
    RETURN c;
END;
$$;

/*
 * connect_guard.connection_for_update returns the connection row, locked so
 * that batches, pauses and drops of one connection happen one at a time.
 * Connection rows are locked FOR NO KEY UPDATE everywhere: those locks
 * exclude each other as FOR UPDATE would, but not the foreign-key checks
 * (FOR KEY SHARE) of rows referring to the connection, so a consumer that
 * keeps its connection locked holds up no request or event of it.
 */
CREATE FUNCTION connect_guard.connection_for_update(p_name text)
RETURNS connect_guard.connection
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM connect_guard.require_connection(p_name, true);
$$;

/*
 * connect_guard.connection_lockers describes the transaction that holds
 * the row lock of a connection (whose id is in its xmax), for errors.
 */
CREATE FUNCTION connect_guard.connection_lockers(p_connection_id integer)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('pid %s (role %s, transaction open for %s%s)', a.pid, a.usename,
                             date_trunc('second', clock_timestamp() - a.xact_start),
                             CASE WHEN a.state = 'idle in transaction' THEN ', idle' ELSE '' END), ', ')
      FROM connect_guard.connection c
      JOIN pg_locks l ON l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
                     AND l.transactionid = c.xmax
      JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE c.connection_id = p_connection_id;
$$;

/*
 * connect_guard.lock_connection locks connection p_connection_id, waiting
 * for the lock until p_deadline at most: a consumer keeps the connection's
 * row locked until it commits, and must not make a pause (or the worker)
 * wait past its timeout.  Past the deadline it fails with
 * lock_not_available, naming the transaction that holds the lock.
 */
CREATE FUNCTION connect_guard.lock_connection(p_connection_id integer, p_deadline timestamptz)
RETURNS connect_guard.connection
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_lock_timeout text := current_setting('lock_timeout');
    v_name text;
BEGIN
    PERFORM set_config('lock_timeout',
                       least(2147483647,
                             greatest(1, ceil(extract(epoch FROM p_deadline - clock_timestamp()) * 1000)))::bigint::text,
                       true);
    BEGIN
        SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id FOR NO KEY UPDATE;
    EXCEPTION WHEN lock_not_available THEN
        SELECT cn.name INTO v_name FROM connect_guard.connection cn WHERE cn.connection_id = p_connection_id;
        RAISE EXCEPTION USING
            ERRCODE = 'lock_not_available',
            MESSAGE = format('timed out waiting for the lock on connection "%s"', v_name),
            DETAIL = format('It is held by %s.', coalesce(connect_guard.connection_lockers(p_connection_id),
                                                           'a transaction that has ended since, or several (see pg_locks)')),
            HINT = 'A consumer must commit right after connect_next_batch() and connect_finish_batch(); end that '
                   'transaction (pg_terminate_backend), or try again with a longer timeout.';
    END;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
    IF c.connection_id IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('connection %s was dropped', p_connection_id),
            HINT = 'The event log says who dropped it (kind connection_dropped).';
    END IF;
    RETURN c;
END;
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

