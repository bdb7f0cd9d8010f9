/* connect_guard--1.0.sql: connect_guard 1.0 as released.  Frozen: never edit this file.
 * Made by scripts/freeze_release.sh from extension/parts at git tree 1a7576bd844b22f75de6ea9f9e531612ec66b9fc,
 * parts left out: 80_preflight.sql.
 * Later changes ship as upgrade scripts (connect_guard--1.0--NEXT.sql). */

\echo Use "CREATE EXTENSION connect_guard" to load this file. \quit

/*
 * Everything private lives in the schema connect_guard; the functions and
 * views a DBA or a runbook calls are named connect_* and live in the
 * extension's schema (public unless CREATE EXTENSION ... SCHEMA says other),
 * so that they work without schema qualification.
 */
CREATE SCHEMA connect_guard;
COMMENT ON SCHEMA connect_guard IS 'connect_guard: private catalog and trigger log; use the connect_* functions and views';

/*
 * Ticks.  A tick is a point in the commit order: the snapshot taken when it
 * was made.  A batch is what became visible between two ticks, the method of
 * PgQ: an entry belongs to batch (t1, t2] when its transaction is visible in
 * t2's snapshot and not in t1's.  Ids handed out by a sequence commit out of
 * order, snapshots do not, so no entry is skipped and none is delivered in
 * two batches.
 *
 * last_id is the log sequence's value read before the snapshot was taken,
 * and xid_bound the next xid to be assigned, read right after last_id.
 * Every entry with id <= last_id was written by a transaction whose xid is
 * below xid_bound (see tick.c).  So for a later tick T whose snapshot's xmin
 * is >= this tick's xid_bound, every entry with id <= last_id is settled
 * (committed or gone) as T sees it: that is T.scan_from, the id below which
 * a batch starting at T never needs to look, and below which retention may
 * archive once every connection has passed T.
 */
CREATE TABLE connect_guard.tick (
    tick_id     bigserial PRIMARY KEY,
    snapshot    pg_snapshot NOT NULL,
    last_id     bigint NOT NULL,
    xid_bound   xid8 NOT NULL,
    scan_from   bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE connect_guard.connection (
    connection_id   serial PRIMARY KEY,
    name            text NOT NULL UNIQUE
                    CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    adapter         text NOT NULL CHECK (adapter IN ('local', 'heroku', 'webhook')),
    options         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
    state           text NOT NULL DEFAULT 'IDLE'
                    CHECK (state IN ('IDLE', 'POLLING_DB_CHANGES', 'PAUSING', 'PAUSED', 'RESUMING')),
    state_since     timestamptz NOT NULL DEFAULT clock_timestamp(),
    state_reason    text,
    -- the write fence raised by connect_pause(block_writes => true)
    fence_id        integer,
    -- high-water mark: the tick up to which the connection has consumed the log
    last_tick       bigint NOT NULL,
    hwm_id          bigint NOT NULL DEFAULT 0,
    last_batch_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- the sync service's own high-water mark, as it last reported it (75_rollback.sql)
    remote_hwm      bigint,
    remote_hwm_at   timestamptz
);

CREATE TABLE connect_guard.mapping (
    mapping_id      serial PRIMARY KEY,
    connection_id   integer NOT NULL REFERENCES connect_guard.connection ON DELETE CASCADE,
    -- by name, as the capture trigger logs it: stable across pg_dump and pg_upgrade
    table_schema    text NOT NULL,
    table_name      text NOT NULL,
    object_name     text NOT NULL,
    state           text NOT NULL DEFAULT 'INITIAL'
                    CHECK (state IN ('INITIAL', 'DATA_SYNCED', 'RELOAD_TABLE', 'SCHEMA_CHANGED')),
    state_since     timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- the sync service's own id for the mapping (Connect's mapping id)
    remote_id       text,
    UNIQUE (connection_id, table_schema, table_name)
);
CREATE INDEX ON connect_guard.mapping (table_schema, table_name);

CREATE TABLE connect_guard.batch (
    batch_id        bigserial PRIMARY KEY,
    connection_id   integer NOT NULL REFERENCES connect_guard.connection ON DELETE CASCADE,
    prev_tick       bigint NOT NULL,
    cur_tick        bigint NOT NULL,
    taken_by        name NOT NULL DEFAULT session_user,
    taken_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    deliveries      integer NOT NULL DEFAULT 1,
    finished_at     timestamptz,
    entries         bigint
);
-- at most one open batch per connection: it is handed out again until finished
CREATE UNIQUE INDEX batch_one_open ON connect_guard.batch (connection_id) WHERE finished_at IS NULL;

CREATE TABLE connect_guard.event (
    event_id        bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    connection_id   integer,
    connection_name text,
    kind            text NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}',
    actor           name NOT NULL DEFAULT session_user
);
CREATE INDEX ON connect_guard.event (connection_id, at);

/*
 * The trigger log.  Column names follow Heroku Connect's _trigger_log, with
 * a bigint id, xid8 transaction ids (so that pg_visible_in_snapshot applies
 * directly) and table_schema added.  The C trigger writes rows straight into
 * the heap in exactly this column order and checks it: add columns only at
 * the end, with the C code.  The sequence must keep CACHE 1 (see tick).
 */
CREATE SEQUENCE connect_guard.trigger_log_id_seq CACHE 1;
CREATE TABLE connect_guard.trigger_log (
    id              bigint NOT NULL DEFAULT nextval('connect_guard.trigger_log_id_seq') PRIMARY KEY,
    txid            xid8 NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz,
    processed_tx    xid8,
    state           text NOT NULL DEFAULT 'NEW'
                    CHECK (state IN ('NEW', 'PENDING', 'SUCCESS', 'FAILED', 'IGNORED')),
    action          text NOT NULL CHECK (action IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    table_schema    text NOT NULL,
    table_name      text NOT NULL,
    record_id       text,
    sfid            text,
    old             jsonb,
    "values"        jsonb,
    sf_result       integer,
    sf_message      text
);
ALTER SEQUENCE connect_guard.trigger_log_id_seq OWNED BY connect_guard.trigger_log.id;

-- entries every connection has consumed, moved out of the hot log by connect_archive_consumed()
CREATE TABLE connect_guard.trigger_log_archive (LIKE connect_guard.trigger_log INCLUDING CONSTRAINTS);
ALTER TABLE connect_guard.trigger_log_archive ADD PRIMARY KEY (id);
CREATE INDEX ON connect_guard.trigger_log_archive (processed_at);

-- pg_dump of the database keeps the connections, mappings and the log
SELECT pg_catalog.pg_extension_config_dump('connect_guard.connection', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.connection_connection_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.mapping', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.mapping_mapping_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.tick', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.tick_tick_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.batch', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.batch_batch_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.event', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.event_event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.trigger_log', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.trigger_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.trigger_log_archive', '');

CREATE FUNCTION connect_guard.capture()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_capture';
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
        SELECT * INTO c FROM connect_guard.connection WHERE name = p_name FOR UPDATE;
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
        SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id FOR UPDATE;
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

/* ------------------------------------------------------------------------
 * The background worker: how SQL reaches it.
 * ------------------------------------------------------------------------ */

-- wakes this database's worker when the calling transaction commits
CREATE FUNCTION connect_guard.wake_worker()
RETURNS boolean LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_wake_worker';

-- asks the launcher for a worker in this database (CREATE EXTENSION calls it)
CREATE FUNCTION connect_guard.wake_launcher()
RETURNS boolean LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_wake_launcher';

CREATE FUNCTION connect_guard.worker_available()
RETURNS boolean LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'connect_guard_worker_available';

CREATE FUNCTION connect_guard.worker_pid()
RETURNS integer LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_worker_pid';

/*
 * connect_guard.require_worker stops a call that needs the worker when the
 * library was not preloaded, rather than queueing work nobody will do.
 */
CREATE FUNCTION connect_guard.require_worker(p_what text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT connect_guard.worker_available() THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('%s needs the connect_guard background worker', p_what),
            DETAIL = 'connect_guard was not loaded through shared_preload_libraries, so no worker runs.',
            HINT = 'Add connect_guard to shared_preload_libraries in postgresql.conf and restart the server.';
    END IF;
END;
$$;

CREATE VIEW connect_worker AS
SELECT a.pid, a.backend_type, a.state, a.query AS activity, a.backend_start, a.state_change
  FROM pg_stat_activity a
 WHERE a.pid = connect_guard.worker_pid();

/*
 * A CREATE EXTENSION run by a session that loads a dump (pg_restore, psql on
 * a plain dump) is followed by the rows of the extension's tables: the
 * worker writes nothing until that session ends (worker.c), or it would
 * take their keys.
 */
CREATE FUNCTION connect_guard.hold_worker_for_restore()
RETURNS boolean LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_hold_worker_for_restore';
SELECT connect_guard.hold_worker_for_restore();

SELECT connect_guard.wake_launcher();
/* ------------------------------------------------------------------------
 * Ticks: points in the commit order that batches run between (see the
 * tick table in 00_catalog.sql).
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_guard.next_xid()
RETURNS xid8 LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_next_xid';

/*
 * connect_guard.new_tick records a tick.  The sequence must be read before
 * the snapshot is taken, which is why these are two statements: in READ
 * COMMITTED each statement of a volatile function takes a new snapshot.
 * A longer isolation level would hand back the transaction's first snapshot
 * and break the bound, so it is refused.
 */
CREATE FUNCTION connect_guard.new_tick()
RETURNS connect_guard.tick
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_last_id bigint;
    v_xid_bound xid8;
    v_snapshot pg_snapshot;
    t connect_guard.tick;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_next_batch()');
    -- in this order: the id, then the xid bound, then the snapshot
    v_last_id := coalesce(pg_sequence_last_value('connect_guard.trigger_log_id_seq'), 0);
    v_xid_bound := connect_guard.next_xid();
    v_snapshot := pg_current_snapshot();
    -- scan_from: the newest last_id (this tick's own included) whose writers
    -- had all ended when the snapshot was taken
    INSERT INTO connect_guard.tick (snapshot, last_id, xid_bound, scan_from)
    SELECT v_snapshot, v_last_id, v_xid_bound,
           CASE WHEN v_xid_bound <= pg_snapshot_xmin(v_snapshot) THEN v_last_id
                ELSE coalesce((SELECT p.last_id FROM connect_guard.tick p
                                WHERE p.xid_bound <= pg_snapshot_xmin(v_snapshot)
                                ORDER BY p.tick_id DESC LIMIT 1), 0)
           END
    RETURNING * INTO t;
    RETURN t;
END;
$$;

/*
 * connect_guard.tick_entries is the heart of the batch method: the entries
 * of a connection's mapped tables that became visible between two ticks.
 */
CREATE FUNCTION connect_guard.tick_entries(p_connection_id integer, p_prev_tick bigint,
                                           p_cur_tick bigint)
RETURNS SETOF connect_guard.trigger_log
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.*
      FROM connect_guard.tick p, connect_guard.tick c, connect_guard.trigger_log l
     WHERE p.tick_id = p_prev_tick
       AND c.tick_id = p_cur_tick
       AND l.id > p.scan_from
       AND pg_visible_in_snapshot(l.txid, c.snapshot)
       AND NOT pg_visible_in_snapshot(l.txid, p.snapshot)
       AND EXISTS (SELECT 1 FROM connect_guard.mapping m
                    WHERE m.connection_id = p_connection_id
                      AND m.table_schema = l.table_schema
                      AND m.table_name = l.table_name)
     ORDER BY l.id;
$$;

-- the first tick, so that every connection has a high-water mark to start from
SELECT connect_guard.new_tick();
/* ------------------------------------------------------------------------
 * The write fence.  The fence itself is shared memory kept by fence.c;
 * these functions decide which tables it covers, wait for the writers
 * already in flight, and raise and lower the maintenance window's fence.
 * A connection's pause raises its fence through 54_pause.sql.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_guard.fence_available()
RETURNS boolean LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_available';

CREATE FUNCTION connect_guard.fence_raise(scope text, connection_id integer, connection text,
                                          reason text, relids oid[], relconnections text[])
RETURNS integer LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_fence_raise';

CREATE FUNCTION connect_guard.fence_lower(fence_id integer)
RETURNS boolean LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_lower';

CREATE FUNCTION connect_guard.fence_set_relations(fence_id integer, relids oid[], relconnections text[])
RETURNS boolean LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_set_relations';

CREATE FUNCTION connect_guard.fence_list(
    OUT fence_id integer, OUT scope text, OUT connection_id integer, OUT connection text,
    OUT reason text, OUT since timestamptz, OUT raised_by name, OUT tables integer)
RETURNS SETOF record LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_list';

CREATE FUNCTION connect_guard.fence_relations(OUT fence_id integer, OUT relid oid, OUT connections text)
RETURNS SETOF record LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_fence_relations';

/*
 * connect_guard.require_fence stops a call that would raise a fence where
 * none can be raised, before it changes anything (fence.c raises the same
 * error itself).
 */
CREATE FUNCTION connect_guard.require_fence()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT connect_guard.fence_available() THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'the connect_guard write fence is not available',
            DETAIL = 'connect_guard was not loaded through shared_preload_libraries.',
            HINT = 'Add connect_guard to shared_preload_libraries in postgresql.conf and restart the server.';
    END IF;
END;
$$;

/*
 * connect_guard.fence_targets returns the tables a fence covers: the mapped
 * tables of one connection (or of every connection, for NULL; or of the
 * given mappings only) with all their partitions, each with the names of
 * the connections that map it.
 */
CREATE FUNCTION connect_guard.fence_targets(p_connection_id integer, p_mapping_ids integer[] DEFAULT NULL,
                                            OUT relids oid[], OUT relconnections text[])
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(relid), '{}'), coalesce(array_agg(names), '{}')
      FROM (SELECT t.relid, string_agg(DISTINCT c.name, ', ') AS names
              FROM connect_guard.mapping m
              JOIN connect_guard.connection c USING (connection_id)
              CROSS JOIN LATERAL to_regclass(format('%I.%I', m.table_schema, m.table_name)) root
              -- pg_partition_tree() lists nothing for a table that is not partitioned
              CROSS JOIN LATERAL (SELECT root::oid UNION SELECT p.relid FROM pg_partition_tree(root) p) t(relid)
             WHERE (p_connection_id IS NULL OR m.connection_id = p_connection_id)
               AND (p_mapping_ids IS NULL OR m.mapping_id = ANY (p_mapping_ids))
               AND root IS NOT NULL
             GROUP BY t.relid) targets;
$$;

/*
 * connect_guard.fence_refresh gives every connection and 'mapped' fence of
 * this database the tables it must cover now; map and unmap call it, so a
 * table mapped while its connection is paused is fenced at once.
 */
CREATE FUNCTION connect_guard.fence_refresh()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    t record;
BEGIN
    FOR f IN SELECT * FROM connect_guard.fence_list() WHERE scope IN ('connection', 'mapped') LOOP
        t := connect_guard.fence_targets(CASE WHEN f.scope = 'connection' THEN f.connection_id END);
        PERFORM connect_guard.fence_set_relations(f.fence_id, t.relids, t.relconnections);
    END LOOP;
END;
$$;

CREATE FUNCTION connect_guard.wait_for_lockers(relids oid[])
RETURNS void LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_wait_for_lockers';

/*
 * connect_guard.writers describes the other transactions that hold a write
 * lock on one of p_relids, for error messages, and gives their pids.
 */
CREATE FUNCTION connect_guard.writers(p_relids oid[], OUT pids integer[], OUT description text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT array_agg(DISTINCT l.pid) FILTER (WHERE l.pid IS NOT NULL),
           string_agg(DISTINCT coalesce('pid ' || l.pid || ' (transaction open for '
                                        || date_trunc('second', clock_timestamp() - a.xact_start) || ')',
                                        'prepared transaction ' || l.virtualtransaction), ', ')
      FROM pg_locks l
      LEFT JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'relation'
       AND l.granted
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.relation = ANY (p_relids)
       AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
       AND l.pid IS DISTINCT FROM pg_backend_pid();
$$;

/*
 * connect_guard.database_tables: what a database-wide fence waits for, every
 * ordinary table but temporary ones and our own catalog.
 */
CREATE FUNCTION connect_guard.database_tables()
RETURNS oid[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(c.oid), '{}') FROM pg_class c
     WHERE c.oid >= 16384 AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
       AND c.relnamespace <> 'connect_guard'::regnamespace;
$$;

/*
 * connect_guard.wait_for_writers returns once no other transaction holds a
 * write lock on the fenced tables, so that the trigger log head is final.
 * Such a transaction wrote before the fence went up (new writes are already
 * refused).  With p_cancel the writers are terminated instead of waited
 * for; past p_deadline the call fails, names them, and (by aborting) lowers
 * the fence it was raising.
 */
CREATE FUNCTION connect_guard.wait_for_writers(p_relids oid[], p_deadline timestamptz, p_cancel boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w record;
    v_lock_timeout text := current_setting('lock_timeout');
BEGIN
    IF p_cancel THEN
        LOOP
            w := connect_guard.writers(p_relids);
            EXIT WHEN w.pids IS NULL OR clock_timestamp() > p_deadline;
            PERFORM pg_terminate_backend(pid) FROM unnest(w.pids) pid;
            PERFORM pg_sleep(0.01);
        END LOOP;
    END IF;
    PERFORM set_config('lock_timeout',
                       greatest(1, ceil(extract(epoch FROM p_deadline - clock_timestamp()) * 1000))::bigint::text,
                       true);
    BEGIN
        PERFORM connect_guard.wait_for_lockers(p_relids);
    EXCEPTION WHEN lock_not_available THEN
        w := connect_guard.writers(p_relids);
        RAISE EXCEPTION USING
            ERRCODE = 'lock_not_available',
            MESSAGE = 'timed out waiting for transactions that write to fenced tables',
            DETAIL = format('Still writing: %s. The fence was not raised.', coalesce(w.description, 'none left')),
            HINT = 'Let those transactions finish and try again with a longer timeout, or pass cancel_writers => true to terminate them.';
    END;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
END;
$$;

/*
 * connect_fence: a maintenance window's fence, over the mapped tables of
 * every connection ('mapped') or every table of the database ('database').
 */
CREATE FUNCTION connect_fence(scope text DEFAULT 'mapped', reason text DEFAULT NULL,
                              timeout interval DEFAULT '30 s', cancel_writers boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    v_relids oid[];
    v_connections text[] := '{}';
    v_fence integer;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_fence()');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''30 s''');
    PERFORM connect_guard.require_not_null(cancel_writers, 'cancel_writers',
        'Pass false (the default) to wait for the writers in flight, or true to terminate them.');
    PERFORM connect_guard.require_not_null(scope, 'scope',
        'Use ''mapped'' (the tables of every connection) or ''database'' (every table of this database).');
    IF scope NOT IN ('mapped', 'database') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown fence scope %s', quote_literal(scope)),
            HINT = 'Use ''mapped'' (the tables of every connection) or ''database'' (every table of this database).';
    END IF;
    SELECT * INTO f FROM connect_guard.fence_list() l WHERE l.scope IN ('mapped', 'database');
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('a maintenance fence is already up (fence %s, scope %s)', f.fence_id, f.scope),
            DETAIL = format('Raised by %s at %s: %s.', f.raised_by, f.since, coalesce(f.reason, 'no reason given')),
            HINT = 'Lower it with connect_unfence() before raising another.';
    END IF;

    IF scope = 'mapped' THEN
        SELECT * INTO v_relids, v_connections FROM connect_guard.fence_targets(NULL);
    END IF;
    v_fence := connect_guard.fence_raise(scope, NULL, NULL, coalesce(reason, 'maintenance window'),
                                         coalesce(v_relids, '{}'), v_connections);
    PERFORM connect_guard.wait_for_writers(coalesce(v_relids, connect_guard.database_tables()),
                                           clock_timestamp() + timeout, cancel_writers);
    PERFORM connect_guard.log_event(NULL, 'fence_raised',
        jsonb_build_object('fence_id', v_fence, 'scope', scope, 'reason', reason));
    RETURN v_fence;
END;
$$;

CREATE FUNCTION connect_unfence()
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    v_lowered integer := 0;
BEGIN
    FOR f IN SELECT * FROM connect_guard.fence_list() l WHERE l.scope IN ('mapped', 'database', 'reload') LOOP
        PERFORM connect_guard.fence_lower(f.fence_id);
        PERFORM connect_guard.log_event(NULL, 'fence_lowered',
            jsonb_build_object('fence_id', f.fence_id, 'scope', f.scope,
                               'fenced_for_ms', round(extract(epoch FROM clock_timestamp() - f.since) * 1000)));
        v_lowered := v_lowered + 1;
    END LOOP;
    IF v_lowered = 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'no maintenance fence is up',
            HINT = 'See connect_fences; a paused connection''s fence is lowered by connect_resume().';
    END IF;
    RETURN v_lowered;
END;
$$;
/* ------------------------------------------------------------------------
 * The states of connections and mappings, and their transitions.  Every
 * change of connection.state or mapping.state goes through the functions
 * of this file, which also write the event of the transition, so that a
 * new state, or a new source of transitions (the sync service's own log),
 * is added here and nowhere else.
 *
 *   connection (the states of Heroku Connect):
 *     IDLE -> POLLING_DB_CHANGES -> IDLE   a batch is taken, then finished (30_batches.sql)
 *     any -> PAUSING                       a pause is sent to the sync service (62_signals.sql)
 *     IDLE, POLLING_DB_CHANGES, PAUSING
 *       -> PAUSED                          the pause is applied (54_pause.sql)
 *     PAUSED, PAUSING, RESUMING
 *       -> RESUMING                        a resume is sent to the sync service
 *       -> IDLE                            resumed
 *   state_reason says why a connection is paused, fence_id which fence its
 *   pause raised; leaving the pause clears both.
 *
 *   mapping:
 *     INITIAL -> DATA_SYNCED               its first batch is finished
 *     any -> RELOAD_TABLE -> DATA_SYNCED   a reload is asked for, then done (52_reloads.sql)
 *     INITIAL, DATA_SYNCED
 *       -> SCHEMA_CHANGED                  its table changed, or writes were hidden (19_table_shape_changes.sql)
 *     SCHEMA_CHANGED -> RELOAD_TABLE,
 *       INITIAL, DATA_SYNCED               saved (connect_save_mapping, 66_schema_watch.sql)
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.connection_goto moves a connection to p_state when it is in
 * one of p_from (in any state for NULL), and then logs p_event (when given)
 * with p_detail.  p_reason and p_fence_id, when given, record why it is
 * paused and the fence of its pause.  Returns whether it moved.  The caller
 * holds the connection's lock.
 */
CREATE FUNCTION connect_guard.connection_goto(p_connection_id integer, p_state text,
                                              p_from text[] DEFAULT NULL,
                                              p_event text DEFAULT NULL, p_detail jsonb DEFAULT '{}',
                                              p_reason text DEFAULT NULL, p_fence_id integer DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_leaves_pause boolean;
BEGIN
    UPDATE connect_guard.connection c
       SET state = p_state, state_since = clock_timestamp(),
           state_reason = CASE WHEN p_state IN ('IDLE', 'RESUMING') AND c.state IN ('PAUSING', 'PAUSED', 'RESUMING')
                               THEN NULL ELSE coalesce(p_reason, c.state_reason) END,
           fence_id = CASE WHEN p_state IN ('IDLE', 'RESUMING') AND c.state IN ('PAUSING', 'PAUSED', 'RESUMING')
                           THEN NULL ELSE coalesce(p_fence_id, c.fence_id) END
     WHERE c.connection_id = p_connection_id AND (p_from IS NULL OR c.state = ANY (p_from));
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_event IS NOT NULL THEN
        PERFORM connect_guard.log_event(p_connection_id, p_event, p_detail);
    END IF;
    RETURN true;
END;
$$;

/*
 * connect_guard.connection_note says why a connection stays where it is
 * (a failed pause or resume request), without a transition.  It never
 * waits: when another transaction (a consumer) holds the connection's lock
 * the note is left out; the request and the event log say it all the same.
 */
CREATE FUNCTION connect_guard.connection_note(p_connection_id integer, p_reason text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE connect_guard.connection SET state_reason = left(p_reason, 2000)
     WHERE connection_id = (SELECT c.connection_id FROM connect_guard.connection c
                             WHERE c.connection_id = p_connection_id FOR UPDATE SKIP LOCKED);
$$;

/*
 * A local connect_pause() waits for the open batch in its own transaction,
 * so its PAUSING could not be seen before it commits.  Instead it holds a
 * transaction-scoped advisory lock, (pause_lock_class(), connection id),
 * while it waits, and connect_next_batch() opens no new batch while that
 * lock is held: a consumer that finishes a batch and takes the next at
 * once cannot keep a pause from ever finding the connection idle.
 */
CREATE FUNCTION connect_guard.pause_lock_class()
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 1128747091 $$;     -- 'CGPS'

-- connect_guard.pause_announce: takes the lock, unless another pause of the connection holds it
CREATE FUNCTION connect_guard.pause_announce(p_connection_id integer)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_try_advisory_xact_lock(connect_guard.pause_lock_class(), p_connection_id);
$$;

-- connect_guard.pause_announced: whether a pause of the connection waits (the lock is held)
CREATE FUNCTION connect_guard.pause_announced(p_connection_id integer)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_try_advisory_lock_shared(connect_guard.pause_lock_class(), p_connection_id) THEN
        PERFORM pg_advisory_unlock_shared(connect_guard.pause_lock_class(), p_connection_id);
        RETURN false;
    END IF;
    RETURN true;
END;
$$;

/*
 * connect_guard.mappings_goto moves the mappings p_mapping_ids (every
 * mapping of p_connection_id for NULL) that are in one of p_from (any
 * state for NULL) to p_state, logs p_event (when given) with p_detail
 * against p_connection_id, and returns the mappings it moved.
 */
CREATE FUNCTION connect_guard.mappings_goto(p_connection_id integer, p_mapping_ids integer[], p_state text,
                                            p_from text[] DEFAULT NULL,
                                            p_event text DEFAULT NULL, p_detail jsonb DEFAULT '{}')
RETURNS SETOF connect_guard.mapping
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    UPDATE connect_guard.mapping m SET state = p_state, state_since = clock_timestamp()
     WHERE (p_connection_id IS NULL OR m.connection_id = p_connection_id)
       AND (p_mapping_ids IS NULL OR m.mapping_id = ANY (p_mapping_ids))
       AND (p_from IS NULL OR m.state = ANY (p_from))
    RETURNING m.*;
    IF p_event IS NOT NULL THEN
        PERFORM connect_guard.log_event(p_connection_id, p_event, p_detail);
    END IF;
END;
$$;
/* ------------------------------------------------------------------------
 * Log sources: the one place that knows how to read a connection's trigger
 * log.  A connection reads one of two kinds:
 *
 *   own      connect_guard.trigger_log, written by the capture trigger and
 *            consumed in batches (connect_next_batch); its mark is the
 *            connection's high-water mark (tick, entry id)
 *   connect  <log_schema>._trigger_log of a schema Heroku Connect manages
 *            (connect_adopt_schema, 77_connect_schema.sql), written by
 *            Connect's own logger triggers and read and updated by Connect
 *            itself; its mark is Connect's processed mark (below)
 *
 * Views, the witness, the rollback checks, upgrade plans and retention ask
 * these functions and never read a log table themselves.  Nothing here
 * writes to Connect's objects: it reads them, by Connect's own indexes.
 *
 * Connect's processed mark is the highest id at or below which every entry
 * is final (SUCCESS, FAILED, IGNORED, MERGED, READONLY, REQUEUED: Connect
 * will not send it again) or archived.  Ids commit out of order: an entry
 * whose transaction is still open is invisible, and the gap it leaves must
 * not be jumped.  So each worker cycle records a log tick (Connect's id
 * sequence read first, then the next xid to be assigned), as the own log's
 * ticks do (10_ticks.sql, tick.c): Connect's logger triggers run after the
 * row they log is written, so the writer holds its xid before it takes a
 * log id, and every id at or below a tick's last_id belongs to a
 * transaction below its xid_bound.  A snapshot whose xmin is at or past
 * that bound sees every one of those ids settled.  The mark is then
 *   least(last_id of the newest settled tick, first unfinished id - 1)
 * where the first unfinished id is the lowest id in any state but the
 * final ones (NEW, PENDING, REQUEUE, NULL, and any state Connect may add:
 * unknown means not done).
 * ------------------------------------------------------------------------ */

-- which log a connection reads; NULL log_schema: connect_guard's own
ALTER TABLE connect_guard.connection
    ADD COLUMN log_schema text,
    -- adopted schemas: the role Connect's sessions run as (the reload fence lets it through)
    ADD COLUMN sync_role text,
    -- when the id headroom warning was given (cleared when the ids are back below the threshold)
    ADD COLUMN log_ids_warned_at timestamptz,
    ADD CONSTRAINT connection_sync_role_with_log CHECK (sync_role IS NULL OR log_schema IS NOT NULL);
-- a schema is adopted by one connection
CREATE UNIQUE INDEX connection_log_schema ON connect_guard.connection (log_schema);

/*
 * Log ticks of the adopted logs.  Not dumped: a copy has other xids, and a
 * fresh tick on the next cycle is all it needs.
 */
CREATE TABLE connect_guard.log_tick (
    log_tick_id     bigserial PRIMARY KEY,
    connection_id   integer NOT NULL REFERENCES connect_guard.connection ON DELETE CASCADE,
    last_id         bigint NOT NULL,
    xid_bound       xid8 NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON connect_guard.log_tick (connection_id, log_tick_id);

-- the states after which Connect never sends an entry again
CREATE FUNCTION connect_guard.connect_final_states()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['SUCCESS', 'FAILED', 'IGNORED', 'IGNORE', 'MERGED', 'READONLY', 'REQUEUED'] $$;

-- 'own' or 'connect'
CREATE FUNCTION connect_guard.log_kind(p_log_schema text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN p_log_schema IS NULL THEN 'own' ELSE 'connect' END $$;

-- the log table a connection reads, as text
CREATE FUNCTION connect_guard.log_table(p_log_schema text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_log_schema IS NULL THEN 'connect_guard.trigger_log'
                ELSE format('%I._trigger_log', p_log_schema) END
$$;

-- the id sequence of a log (Connect's: the serial of _trigger_log.id)
CREATE FUNCTION connect_guard.log_sequence(p_log_schema text)
RETURNS regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_log_schema IS NULL THEN 'connect_guard.trigger_log_id_seq'::regclass
                ELSE pg_get_serial_sequence(format('%I._trigger_log', p_log_schema), 'id')::regclass END
$$;

/*
 * connect_guard.log_sequence_head: the last id a log's sequence handed out
 * (0 before the first); unlike max(id), archiving cannot lower it.  Not
 * transactional: it sees ids of transactions still open.
 */
CREATE FUNCTION connect_guard.log_sequence_head(p_log_schema text)
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(pg_sequence_last_value(connect_guard.log_sequence(p_log_schema)), 0)
$$;

-- how many ids the sequence has left, and the share used (the own log's is bigint, Connect's int4)
CREATE FUNCTION connect_guard.log_id_headroom(p_log_schema text, OUT ids_left bigint, OUT ids_used_pct numeric)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.seqmax - h.head, round(100.0 * h.head / s.seqmax, 2)
      FROM pg_sequence s, connect_guard.log_sequence_head(p_log_schema) h(head)
     WHERE s.seqrelid = connect_guard.log_sequence(p_log_schema)
$$;

/*
 * connect_guard.log_tick records a tick of an adopted log: the sequence
 * first, then the next xid (see the top of this file), and forgets the
 * ticks older than the newest settled one.
 */
CREATE FUNCTION connect_guard.log_tick(p_connection_id integer, p_log_schema text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_last bigint;
    v_bound xid8;
BEGIN
    -- in this order, two statements
    v_last := connect_guard.log_sequence_head(p_log_schema);
    v_bound := connect_guard.next_xid();
    INSERT INTO connect_guard.log_tick (connection_id, last_id, xid_bound)
    VALUES (p_connection_id, v_last, v_bound);
    DELETE FROM connect_guard.log_tick t
     WHERE t.connection_id = p_connection_id
       AND t.log_tick_id < (SELECT max(s.log_tick_id) FROM connect_guard.log_tick s
                             WHERE s.connection_id = p_connection_id
                               AND s.xid_bound <= pg_snapshot_xmin(pg_current_snapshot()));
END;
$$;

/* the highest id every entry at or below which has settled (committed or gone), NULL before the first tick settles */
CREATE FUNCTION connect_guard.log_settled_id(p_connection_id integer)
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.last_id FROM connect_guard.log_tick t
     WHERE t.connection_id = p_connection_id
       AND t.xid_bound <= pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY t.log_tick_id DESC LIMIT 1
$$;

/*
 * connect_guard.connect_log_unfinished gives, per state that is not final,
 * the lowest id of an adopted log in it: the distinct states come from a
 * skip scan of Connect's (state, id) index, a few index probes however
 * long the log is.
 */
CREATE FUNCTION connect_guard.connect_log_unfinished(p_log_schema text, OUT state text, OUT first_id bigint)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'WITH RECURSIVE states(state) AS (
             (SELECT l.state::text FROM %1$I._trigger_log l WHERE l.state IS NOT NULL ORDER BY l.state LIMIT 1)
             UNION ALL
             SELECT (SELECT l.state::text FROM %1$I._trigger_log l WHERE l.state > s.state ORDER BY l.state LIMIT 1)
               FROM states s WHERE s.state IS NOT NULL)
         SELECT s.state, (SELECT min(l.id) FROM %1$I._trigger_log l WHERE l.state = s.state)::bigint
           FROM states s
          WHERE s.state IS NOT NULL AND s.state <> ALL (connect_guard.connect_final_states())
         UNION ALL
         SELECT NULL, (SELECT min(l.id) FROM %1$I._trigger_log l WHERE l.state IS NULL)::bigint',
        p_log_schema);
END;
$$;

/*
 * connect_guard.log_marks: a connection's log head and mark, cheaply (a
 * few index probes): what the witness records every cycle.
 *   own:     head = the sequence; mark = the connection's hwm_id
 *   connect: head = Connect's sequence; mark = Connect's processed mark
 */
CREATE FUNCTION connect_guard.log_marks(p_connection_id integer,
                                        OUT log_kind text, OUT log_table text,
                                        OUT log_head bigint, OUT mark bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    log_kind := connect_guard.log_kind(c.log_schema);
    log_table := connect_guard.log_table(c.log_schema);
    log_head := connect_guard.log_sequence_head(c.log_schema);
    IF c.log_schema IS NULL THEN
        mark := c.hwm_id;
    ELSE
        -- no mark before the first tick has settled (least() would skip the NULL)
        SELECT CASE WHEN s.settled IS NOT NULL THEN least(s.settled, min(u.first_id) - 1) END INTO mark
          FROM connect_guard.log_settled_id(p_connection_id) s(settled),
               connect_guard.connect_log_unfinished(c.log_schema) u
         GROUP BY s.settled;
    END IF;
END;
$$;

/*
 * connect_guard.log_witness_marks: what the witness keeps of a
 * connection's position (74_witness.sql).  An own-log connection's
 * consumed position (last_tick, hwm_id, consumed_xid) is compared with
 * the database after a restore; an adopted log's head is, and its
 * processed mark tells which entries a restore brought back (Connect's
 * mark may go back on its own when a failed entry is retried, so it is
 * not compared).
 */
CREATE FUNCTION connect_guard.log_witness_marks(p_connection_id integer)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m record;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF c.log_schema IS NULL THEN
        RETURN jsonb_build_object('last_tick', c.last_tick, 'hwm_id', c.hwm_id,
                                  'consumed_xid', (SELECT t.xid_bound::text::bigint FROM connect_guard.tick t
                                                    WHERE t.tick_id = c.last_tick));
    END IF;
    m := connect_guard.log_marks(p_connection_id);
    RETURN jsonb_build_object('log', m.log_table, 'log_head', m.log_head, 'processed_mark', m.mark);
END;
$$;

/*
 * connect_guard.log_position: what an upgrade plan records with its fence
 * up and checks on the database that takes over (70_upgrade.sql): values
 * that hold still while the connection is paused and its tables fenced.
 *   own:     the high-water mark (tick and entry id)
 *   connect: the highest id the log and its archive hold (not the
 *            sequence, which a standby sees up to 32 ids ahead), the
 *            first unfinished id and how many entries are unfinished
 */
CREATE FUNCTION connect_guard.log_position(p_connection_id integer)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_max bigint;
    v_first bigint;
    v_unfinished bigint;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF c.log_schema IS NULL THEN
        RETURN jsonb_build_object('last_tick', c.last_tick, 'hwm_id', c.hwm_id);
    END IF;
    EXECUTE format('SELECT greatest((SELECT max(id) FROM %1$I._trigger_log), (SELECT max(id) FROM %1$I._trigger_log_archive))',
                   c.log_schema) INTO v_max;
    SELECT min(u.first_id) INTO v_first FROM connect_guard.connect_log_unfinished(c.log_schema) u;
    EXECUTE format('SELECT count(*) FROM %I._trigger_log WHERE state IS NULL OR state::text <> ALL (connect_guard.connect_final_states())',
                   c.log_schema) INTO v_unfinished;
    RETURN jsonb_build_object('log', connect_guard.log_table(c.log_schema), 'max_id', coalesce(v_max, 0),
                              'first_unfinished_id', v_first, 'unfinished', v_unfinished);
END;
$$;

/*
 * connect_guard.log_status: everything the views show of a connection's
 * log.  SECURITY DEFINER: monitoring roles read the views, and Connect's
 * log is not theirs to read; it gives counts and ids, never entries.
 *   hwm_tick, hwm_txid, open_batch   own log only (batches)
 *   hwm_id       own: the consumed high-water mark; connect: Connect's processed mark
 *   backlog      own: entries of the connection's tables not consumed yet;
 *                connect: NEW and PENDING entries
 *   oldest_pending_at  own: when the oldest entry of the backlog was logged;
 *                connect: when the first entry of the backlog (the lowest id) was
 *   hwm_at       since when the mark has not moved: own: the time of the tick the
 *                connection stands on; connect: with a backlog, oldest_pending_at
 *                (the mark waits below it), else the newest settled log tick
 *   failed       connect: FAILED entries in the log (the archive's are in connect_write_errors)
 */
CREATE FUNCTION connect_guard.log_status(p_connection_id integer,
                                         OUT log_kind text, OUT log_table text,
                                         OUT hwm_tick bigint, OUT hwm_id bigint, OUT hwm_txid xid8,
                                         OUT log_head bigint, OUT backlog bigint, OUT oldest_pending_at timestamptz,
                                         OUT hwm_at timestamptz, OUT failed bigint, OUT ids_left bigint,
                                         OUT ids_used_pct numeric)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    t connect_guard.tick;
    v_first bigint;
    m record;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    log_kind := connect_guard.log_kind(c.log_schema);
    log_table := connect_guard.log_table(c.log_schema);
    SELECT h.ids_left, h.ids_used_pct INTO ids_left, ids_used_pct FROM connect_guard.log_id_headroom(c.log_schema) h;

    IF c.log_schema IS NULL THEN
        SELECT * INTO t FROM connect_guard.tick WHERE tick_id = c.last_tick;
        hwm_tick := c.last_tick;
        hwm_id := c.hwm_id;
        hwm_txid := pg_snapshot_xmin(t.snapshot);
        hwm_at := t.created_at;
        log_head := greatest((SELECT max(l.id) FROM connect_guard.trigger_log l),
                             (SELECT max(a.id) FROM connect_guard.trigger_log_archive a));
        SELECT count(*), min(l.created_at) INTO backlog, oldest_pending_at
          FROM connect_guard.trigger_log l
         WHERE l.id > t.scan_from
           AND NOT pg_visible_in_snapshot(l.txid, t.snapshot)
           AND EXISTS (SELECT 1 FROM connect_guard.mapping mp
                        WHERE mp.connection_id = c.connection_id
                          AND mp.table_schema = l.table_schema
                          AND mp.table_name = l.table_name);
        RETURN;
    END IF;

    m := connect_guard.log_marks(p_connection_id);
    hwm_id := m.mark;
    log_head := m.log_head;
    -- the partial index (state, table_name) WHERE state IN ('NEW', 'PENDING') counts them
    EXECUTE format('SELECT count(*) FROM %I._trigger_log WHERE state IN (''NEW'', ''PENDING'')', c.log_schema)
       INTO backlog;
    EXECUTE format('SELECT least((SELECT min(id) FROM %1$I._trigger_log WHERE state = ''NEW''),
                                 (SELECT min(id) FROM %1$I._trigger_log WHERE state = ''PENDING''))', c.log_schema)
       INTO v_first;
    IF v_first IS NOT NULL THEN
        EXECUTE format('SELECT created_at FROM %I._trigger_log WHERE id = $1', c.log_schema)
           INTO oldest_pending_at USING v_first;
    END IF;
    hwm_at := coalesce(oldest_pending_at,
                       (SELECT lt.taken_at FROM connect_guard.log_tick lt
                         WHERE lt.connection_id = p_connection_id
                           AND lt.xid_bound <= pg_snapshot_xmin(pg_current_snapshot())
                         ORDER BY lt.log_tick_id DESC LIMIT 1));
    EXECUTE format('SELECT count(*) FROM %I._trigger_log WHERE state = ''FAILED''', c.log_schema) INTO failed;
END;
$$;

/*
 * connect_guard.log_restored_entries: after a restore, the unfinished
 * entries at or below the processed mark the witness had recorded: Connect
 * had already sent them, and would send them again.
 */
CREATE FUNCTION connect_guard.log_restored_entries(p_connection_id integer, p_witnessed_mark bigint,
                                                   OUT first_id bigint, OUT last_id bigint, OUT entries bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF c.log_schema IS NULL OR p_witnessed_mark IS NULL THEN
        entries := 0;
        RETURN;
    END IF;
    EXECUTE format('SELECT min(id), max(id), count(*) FROM %I._trigger_log
                     WHERE id <= $1 AND (state IS NULL OR state::text <> ALL (connect_guard.connect_final_states()))',
                   c.log_schema)
       INTO first_id, last_id, entries USING p_witnessed_mark;
END;
$$;

/*
 * connect_guard.log_sends_in_flight: what the sync service is still
 * sending of an adopted log (PENDING entries: Connect takes them, sends
 * them, then marks them), or NULL when nothing; NULL for the own log, whose
 * work in flight is the open batch.  A pause waits for it before the fence
 * goes up, or Connect's marking of what it sent would be fenced.
 */
CREATE FUNCTION connect_guard.log_sends_in_flight(p_connection_id integer)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r record;
BEGIN
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = p_connection_id;
    IF c.log_schema IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) AS n, min(id) AS first_id, max(id) AS last_id FROM %I._trigger_log WHERE state = ''PENDING''',
                   c.log_schema) INTO r;
    IF r.n = 0 THEN
        RETURN NULL;
    END IF;
    RETURN format('%s entries of %s are PENDING (ids %s to %s): Connect is still sending them',
                  r.n, connect_guard.log_table(c.log_schema), r.first_id, r.last_id);
END;
$$;

/*
 * connect_guard.log_positions_differ compares the adopted logs with the
 * positions a plan recorded (log_position), for a copy: NULL when each is
 * as it was, else what differs.
 */
CREATE FUNCTION connect_guard.log_positions_differ(p_recorded jsonb)
RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('connection "%s": %s here, %s then', r.key,
                             coalesce(connect_guard.log_position(c.connection_id)::text, 'nothing'), r.value), '; '
                      ORDER BY r.key)
      FROM jsonb_each(coalesce(p_recorded, '{}')) r
      LEFT JOIN connect_guard.connection c ON c.name = r.key
     WHERE r.value ? 'log'
       AND connect_guard.log_position(c.connection_id) IS DISTINCT FROM r.value;
$$;

/*
 * connect_guard.require_own_log refuses what only the own log has
 * (batches) on a connection that reads Connect's log.
 */
CREATE FUNCTION connect_guard.require_own_log(c connect_guard.connection, p_what text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF c.log_schema IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('%s does not apply to connection "%s": it reads Heroku Connect''s log %s',
                             p_what, c.name, connect_guard.log_table(c.log_schema)),
            DETAIL = 'Connect reads and updates its own trigger log; connect_guard hands out no batches of it.',
            HINT = 'See connect_high_water_marks for Connect''s processed mark and backlog.';
    END IF;
END;
$$;

/*
 * connect_guard.log_sources_cycle is the worker's step for the adopted
 * logs, before the witness is written: a tick per log, and the id
 * headroom warning (Connect's ids are int4: at 75 % of 2^31 an event and a
 * WARNING, once until the ids are back below).  Returns the ticks taken.
 */
CREATE FUNCTION connect_guard.log_sources_cycle()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    h record;
    v_ticks bigint := 0;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN 0;
    END IF;
    FOR c IN SELECT * FROM connect_guard.connection WHERE log_schema IS NOT NULL ORDER BY connection_id LOOP
        IF connect_guard.log_sequence(c.log_schema) IS NULL THEN
            CONTINUE;       -- the schema was dropped or changed: the views say so (NULL marks)
        END IF;
        PERFORM connect_guard.log_tick(c.connection_id, c.log_schema);
        v_ticks := v_ticks + 1;
        h := connect_guard.log_id_headroom(c.log_schema);
        IF h.ids_used_pct >= 75 AND c.log_ids_warned_at IS NULL THEN
            -- once: a concurrent call (connect_guard.log_sources_cycle() by hand) may have warned
            UPDATE connect_guard.connection SET log_ids_warned_at = clock_timestamp()
             WHERE connection_id = c.connection_id AND log_ids_warned_at IS NULL;
            CONTINUE WHEN NOT FOUND;
            PERFORM connect_guard.log_event(c.connection_id, 'log_ids_running_out',
                jsonb_build_object('log', connect_guard.log_table(c.log_schema), 'ids_used_pct', h.ids_used_pct,
                                   'ids_left', h.ids_left));
            RAISE WARNING USING
                MESSAGE = format('connect_guard: the ids of %s are %s %% used: %s left',
                                 connect_guard.log_table(c.log_schema), h.ids_used_pct, h.ids_left),
                DETAIL = 'Its id is an int4 serial: when the sequence reaches 2147483647, every write to a mapped table fails.',
                HINT = 'Plan with Heroku support how to widen or restart the log''s ids before they run out; connect_high_water_marks shows ids_left.';
        ELSIF h.ids_used_pct < 75 AND c.log_ids_warned_at IS NOT NULL THEN
            UPDATE connect_guard.connection SET log_ids_warned_at = NULL WHERE connection_id = c.connection_id;
        END IF;
    END LOOP;
    RETURN v_ticks;
END;
$$;
/* ------------------------------------------------------------------------
 * Secrets: a token or webhook key given inline is kept in
 * connect_guard.connection_secret (superusers only) and replaced in the
 * connection's options by "********"; but the SQL text that gave it shows
 * in statement logs (log_statement = all, log_min_error_statement) and in
 * pg_stat_activity while it runs.  token_file/secret_file name a file the
 * worker reads before every attempt (so a rotated token is picked up), and
 * keep the secret out of SQL text altogether: prefer them.
 *
 * A sync service may echo the secret in an answer, in any encoding: the
 * worker scrubs every form of it (scrub.c has the rule) from the answers
 * it hands to SQL, and the trigger scrub_stored scrubs again every value
 * written to a column that can hold an answer's words, whoever writes it:
 * connection.state_reason and event.detail here, request.last_error and
 * remote_state in 50_requests.sql.
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.connection_secret (
    connection_id   integer PRIMARY KEY REFERENCES connect_guard.connection ON DELETE CASCADE,
    -- the Connect API token (heroku) or the HMAC key (webhook)
    secret          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
REVOKE ALL ON connect_guard.connection_secret FROM PUBLIC;
COMMENT ON TABLE connect_guard.connection_secret IS
    'connect_guard: secrets given inline to connect_create_connection(); readable by superusers only';
SELECT pg_catalog.pg_extension_config_dump('connect_guard.connection_secret', '');

/*
 * connect_guard.secret_file_problem says why the worker could not use path
 * as a token or key file (NULL when it can), without its content.  Naming
 * a file the server reads needs the rights of pg_read_server_files: the
 * worker sends the file's line to the sync service's URL.
 */
CREATE FUNCTION connect_guard.secret_file_problem(path text)
RETURNS text LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_secret_file_problem';


/*
 * connect_guard.scrub returns its text with every form of the secrets the
 * worker holds right now taken out (in any other backend: unchanged).
 */
CREATE FUNCTION connect_guard.scrub(text)
RETURNS text LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_scrub';

-- for the regression tests: hold secrets in this backend as the worker does, and forget them
CREATE FUNCTION connect_guard.scrub_hold(secrets text[])
RETURNS void LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_scrub_hold';
CREATE FUNCTION connect_guard.scrub_release()
RETURNS void LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_scrub_release';

/*
 * connect_guard.scrub_stored(column, ...) is a BEFORE INSERT OR UPDATE row
 * trigger that scrubs the named text and jsonb columns (a jsonb's strings,
 * not its keys) the same way.  It costs nothing where no secret is held.
 */
CREATE FUNCTION connect_guard.scrub_stored()
RETURNS trigger LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_scrub_stored';

CREATE TRIGGER scrub_stored BEFORE INSERT OR UPDATE OF state_reason ON connect_guard.connection
    FOR EACH ROW WHEN (NEW.state_reason IS NOT NULL)
    EXECUTE FUNCTION connect_guard.scrub_stored('state_reason');
CREATE TRIGGER scrub_stored BEFORE INSERT OR UPDATE ON connect_guard.event
    FOR EACH ROW EXECUTE FUNCTION connect_guard.scrub_stored('detail');
/* ------------------------------------------------------------------------
 * Heroku Connect's configuration file: the format of its export (Settings,
 * Import/Export Configuration; `heroku connect:export`), which
 * connect_export_config() writes and connect_import_config() reads
 * (64_config.sql):
 *
 *   {"version": 1,
 *    "connection": {"app_name", "organization_id", "exported_at", "features",
 *                   "api_version", "name", "logplex_log_enabled"},
 *    "mappings": [{"object_name": "Account",
 *                  "config": {"access": "read_only" | "read_write",
 *                             "sf_notify_enabled": bool, "sf_polling_seconds": int,
 *                             "sf_max_daily_api_calls": int,
 *                             "fields": {"Name": {}, ...},
 *                             "indexes": {"Id": {"unique": true}, ...},
 *                             "upsert_field": "External__c" (optional)}}]}
 *
 * A file is checked strictly, before anything changes: an unknown key, a
 * value of the wrong type or a reference to a field the mapping does not
 * have is refused, and the error names the key (mappings[0].config.access),
 * so that a DBA finds the mistake in a file of a hundred mappings.  The
 * rules are those the Connect simulator applies (test/simulator/
 * connect_config.py); Connect also checks objects and fields against
 * Salesforce, which only Connect can.
 *
 * Connect names a mapped table's columns after the object's fields, in
 * lower case; the Salesforce Id is the column sfid, and id, _hc_lastop and
 * _hc_err are Connect's own columns, no fields.  Pure functions only.
 * ------------------------------------------------------------------------ */

-- the columns of a Connect table that are no Salesforce field
CREATE FUNCTION connect_guard.config_not_fields()
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['id', '_hc_lastop', '_hc_err'] $$;

-- a Salesforce API name: a letter, then letters, digits and underscores (custom ones end in __c)
CREATE FUNCTION connect_guard.config_is_api_name(p_name text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(p_name ~ '^[A-Za-z][A-Za-z0-9_]{0,79}$', false) $$;

-- the column that holds field p_field of a mapped table
CREATE FUNCTION connect_guard.config_field_column(p_field text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN lower(p_field) = 'id' THEN 'sfid' ELSE lower(p_field) END $$;

/*
 * connect_guard.config_field_name is the field a column holds: Id for
 * sfid, the standard fields in their own case (Connect lower-cases them),
 * others with their first letter in upper case (names ignore case, as
 * Salesforce's do).  NULL for the columns that are no field, or whose name
 * is no API name.
 */
CREATE FUNCTION connect_guard.config_field_name(p_column text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
             WHEN lower(p_column) = ANY (connect_guard.config_not_fields()) THEN NULL
             WHEN lower(p_column) = 'sfid' THEN 'Id'
             WHEN NOT connect_guard.config_is_api_name(p_column) THEN NULL
             ELSE coalesce('{"name": "Name", "systemmodstamp": "SystemModstamp", "isdeleted": "IsDeleted",
                             "createddate": "CreatedDate", "lastmodifieddate": "LastModifiedDate", "ownerid": "OwnerId",
                             "createdbyid": "CreatedById", "lastmodifiedbyid": "LastModifiedById",
                             "accountid": "AccountId", "contactid": "ContactId", "firstname": "FirstName",
                             "lastname": "LastName", "email": "Email", "phone": "Phone", "title": "Title",
                             "description": "Description", "industry": "Industry", "type": "Type", "status": "Status",
                             "amount": "Amount", "stagename": "StageName", "closedate": "CloseDate"}'::jsonb ->> lower(p_column),
                           upper(left(p_column, 1)) || substr(p_column, 2))
           END
$$;

/*
 * connect_guard.config_of_columns is the configuration of a mapping that
 * no file configured: read_write, polled every 10 minutes, the fields of
 * the table's columns, Id indexed (as Connect's defaults).
 */
CREATE FUNCTION connect_guard.config_of_columns(p_columns text[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
               'access', 'read_write',
               'sf_notify_enabled', false,
               'sf_polling_seconds', 600,
               'sf_max_daily_api_calls', 30000,
               'fields', coalesce((SELECT jsonb_object_agg(connect_guard.config_field_name(col), '{}'::jsonb)
                                     FROM unnest(p_columns) col
                                    WHERE connect_guard.config_field_name(col) IS NOT NULL), '{}'),
               'indexes', CASE WHEN 'systemmodstamp' = ANY (p_columns)
                               THEN '{"Id": {"unique": true}, "SystemModstamp": {"unique": false}}'::jsonb
                               ELSE '{"Id": {"unique": true}}'::jsonb END)
$$;

/*
 * connect_guard.config_fields_for: the fields of configuration p_config
 * made to match columns p_columns: the fields that have a column keep their
 * names, the columns that had no field get one, the others go.
 */
CREATE FUNCTION connect_guard.config_fields_for(p_config jsonb, p_columns text[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(coalesce(f.name, connect_guard.config_field_name(col)), coalesce(f.spec, '{}')), '{}')
      FROM unnest(p_columns) col
      LEFT JOIN LATERAL (SELECT e.key AS name, e.value AS spec
                           FROM jsonb_each(CASE WHEN jsonb_typeof(p_config -> 'fields') = 'object'
                                                THEN p_config -> 'fields' ELSE '{}' END) e
                          WHERE connect_guard.config_field_column(e.key) = lower(col) LIMIT 1) f ON true
     WHERE connect_guard.config_field_name(col) IS NOT NULL
$$;

-- how a JSON value is shown in an error: short, as JSON
CREATE FUNCTION connect_guard.config_shown(p_value jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN length(p_value::text) > 60 THEN left(p_value::text, 57) || '...' ELSE coalesce(p_value::text, 'nothing') END $$;

CREATE FUNCTION connect_guard.config_is_integer(p_value jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT jsonb_typeof(p_value) = 'number' AND p_value::text ~ '^-?[0-9]+$' $$;

/*
 * connect_guard.config_mapping_problem checks one mapping's config (at the
 * key p_where) and returns what is wrong with it, as "key: why", or NULL.
 */
CREATE FUNCTION connect_guard.config_mapping_problem(p_config jsonb, p_where text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k text;
    v jsonb;
    v_fields text[] := '{}';
BEGIN
    IF jsonb_typeof(p_config) IS DISTINCT FROM 'object' THEN
        RETURN p_where || ': expected an object';
    END IF;
    SELECT min(key) INTO k FROM jsonb_object_keys(p_config) key
     WHERE key <> ALL (ARRAY['access', 'sf_notify_enabled', 'sf_polling_seconds', 'sf_max_daily_api_calls',
                             'fields', 'indexes', 'upsert_field']);
    IF k IS NOT NULL THEN
        RETURN format('%s.%s: unknown key', p_where, k);
    END IF;
    FOREACH k IN ARRAY ARRAY['access', 'fields'] LOOP
        IF NOT p_config ? k THEN
            RETURN format('%s.%s: missing', p_where, k);
        END IF;
    END LOOP;
    IF p_config -> 'access' NOT IN ('"read_only"', '"read_write"') THEN
        RETURN format('%s.access: must be read_only or read_write, not %s', p_where,
                      connect_guard.config_shown(p_config -> 'access'));
    END IF;
    IF p_config ? 'sf_notify_enabled' AND jsonb_typeof(p_config -> 'sf_notify_enabled') <> 'boolean' THEN
        RETURN format('%s.sf_notify_enabled: expected true or false, not %s', p_where,
                      connect_guard.config_shown(p_config -> 'sf_notify_enabled'));
    END IF;
    IF p_config ? 'sf_polling_seconds' AND NOT (connect_guard.config_is_integer(p_config -> 'sf_polling_seconds')
                                                AND (p_config ->> 'sf_polling_seconds')::numeric >= 1) THEN
        RETURN format('%s.sf_polling_seconds: expected a positive integer, not %s', p_where,
                      connect_guard.config_shown(p_config -> 'sf_polling_seconds'));
    END IF;
    IF p_config ? 'sf_max_daily_api_calls' AND NOT (connect_guard.config_is_integer(p_config -> 'sf_max_daily_api_calls')
                                                    AND (p_config ->> 'sf_max_daily_api_calls')::numeric >= 0) THEN
        RETURN format('%s.sf_max_daily_api_calls: expected an integer >= 0, not %s', p_where,
                      connect_guard.config_shown(p_config -> 'sf_max_daily_api_calls'));
    END IF;

    IF jsonb_typeof(p_config -> 'fields') IS DISTINCT FROM 'object' OR p_config -> 'fields' = '{}' THEN
        RETURN format('%s.fields: expected a non-empty object of field names', p_where);
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(p_config -> 'fields') ORDER BY 1 LOOP
        IF NOT connect_guard.config_is_api_name(k) THEN
            RETURN format('%s.fields.%s: not a Salesforce field name', p_where, k);
        END IF;
        IF jsonb_typeof(v) <> 'object' THEN
            RETURN format('%s.fields.%s: expected an object, not %s', p_where, k, connect_guard.config_shown(v));
        END IF;
        IF lower(k) = ANY (v_fields) THEN
            RETURN format('%s.fields.%s: the same field as %s (field names ignore case)', p_where, k,
                          (SELECT f FROM jsonb_object_keys(p_config -> 'fields') f WHERE lower(f) = lower(k) AND f <> k LIMIT 1));
        END IF;
        v_fields := v_fields || lower(k);
    END LOOP;

    IF p_config ? 'indexes' THEN
        IF jsonb_typeof(p_config -> 'indexes') <> 'object' THEN
            RETURN format('%s.indexes: expected an object', p_where);
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(p_config -> 'indexes') ORDER BY 1 LOOP
            -- Id is always there: Connect indexes sfid whatever the fields say
            IF lower(k) <> ALL (v_fields) AND k <> 'Id' THEN
                RETURN format('%s.indexes.%s: not one of the mapping''s fields', p_where, k);
            END IF;
            IF jsonb_typeof(v) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_object_keys(v) x WHERE x <> 'unique')
               OR (v ? 'unique' AND jsonb_typeof(v -> 'unique') <> 'boolean') THEN
                RETURN format('%s.indexes.%s: expected {"unique": true|false}, not %s', p_where, k,
                              connect_guard.config_shown(v));
            END IF;
        END LOOP;
    END IF;

    IF p_config ? 'upsert_field' THEN
        IF jsonb_typeof(p_config -> 'upsert_field') <> 'string'
           OR lower(p_config ->> 'upsert_field') <> ALL (v_fields) THEN
            RETURN format('%s.upsert_field: not one of the mapping''s fields: %s', p_where,
                          connect_guard.config_shown(p_config -> 'upsert_field'));
        END IF;
        IF p_config ->> 'access' <> 'read_write' THEN
            RETURN format('%s.upsert_field: only a read_write mapping writes to Salesforce', p_where);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

/*
 * connect_guard.config_problem checks a whole file and returns the first
 * problem, as "key: why" (keys in the order Connect's simulator checks
 * them), or NULL when the file is good.
 */
CREATE FUNCTION connect_guard.config_problem(p_doc jsonb)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k text;
    v jsonb;
    m jsonb;
    i integer := 0;
    v_seen text[] := '{}';
    v_problem text;
BEGIN
    IF jsonb_typeof(p_doc) IS DISTINCT FROM 'object' THEN
        RETURN '(top level): expected a JSON object';
    END IF;
    SELECT min(key) INTO k FROM jsonb_object_keys(p_doc) key WHERE key <> ALL (ARRAY['version', 'connection', 'mappings']);
    IF k IS NOT NULL THEN
        RETURN k || ': unknown key';
    END IF;
    IF NOT p_doc ? 'version' THEN
        RETURN 'version: missing';
    END IF;
    IF (p_doc -> 'version')::text <> '1' THEN
        RETURN format('version: must be 1, not %s', connect_guard.config_shown(p_doc -> 'version'));
    END IF;

    IF p_doc ? 'connection' THEN
        IF jsonb_typeof(p_doc -> 'connection') <> 'object' THEN
            RETURN 'connection: expected an object';
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(p_doc -> 'connection') ORDER BY 1 LOOP
            IF k <> ALL (ARRAY['app_name', 'organization_id', 'exported_at', 'features', 'api_version', 'name',
                                'logplex_log_enabled']) THEN
                RETURN format('connection.%s: unknown key', k);
            END IF;
            IF jsonb_typeof(v) <> 'null' AND jsonb_typeof(v) <> (CASE k WHEN 'features' THEN 'object'
                                                                        WHEN 'logplex_log_enabled' THEN 'boolean'
                                                                        ELSE 'string' END) THEN
                RETURN format('connection.%s: expected %s, not %s', k,
                              CASE k WHEN 'features' THEN 'an object' WHEN 'logplex_log_enabled' THEN 'true or false'
                                     ELSE 'a string' END, connect_guard.config_shown(v));
            END IF;
        END LOOP;
    END IF;

    IF NOT p_doc ? 'mappings' THEN
        RETURN 'mappings: missing';
    END IF;
    IF jsonb_typeof(p_doc -> 'mappings') <> 'array' THEN
        RETURN 'mappings: expected a list';
    END IF;
    FOR m IN SELECT e FROM jsonb_array_elements(p_doc -> 'mappings') e LOOP
        IF jsonb_typeof(m) <> 'object' THEN
            RETURN format('mappings[%s]: expected an object', i);
        END IF;
        SELECT min(key) INTO k FROM jsonb_object_keys(m) key WHERE key <> ALL (ARRAY['object_name', 'config']);
        IF k IS NOT NULL THEN
            RETURN format('mappings[%s].%s: unknown key', i, k);
        END IF;
        IF jsonb_typeof(m -> 'object_name') IS DISTINCT FROM 'string'
           OR NOT connect_guard.config_is_api_name(m ->> 'object_name') THEN
            RETURN format('mappings[%s].object_name: expected a Salesforce object name, not %s', i,
                          connect_guard.config_shown(m -> 'object_name'));
        END IF;
        IF lower(m ->> 'object_name') = ANY (v_seen) THEN
            RETURN format('mappings[%s].object_name: %s is mapped twice (also mappings[%s])', i, m ->> 'object_name',
                          array_position(v_seen, lower(m ->> 'object_name')) - 1);
        END IF;
        v_seen := v_seen || lower(m ->> 'object_name');
        IF NOT m ? 'config' THEN
            RETURN format('mappings[%s].config: missing', i);
        END IF;
        v_problem := connect_guard.config_mapping_problem(m -> 'config', format('mappings[%s].config', i));
        IF v_problem IS NOT NULL THEN
            RETURN v_problem;
        END IF;
        i := i + 1;
    END LOOP;
    RETURN NULL;
END;
$$;

/*
 * connect_guard.config_require_valid raises the error that names the bad
 * key of a file (p_what says whose file it is), or returns.
 */
CREATE FUNCTION connect_guard.config_require_valid(p_doc jsonb, p_what text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_problem text := connect_guard.config_problem(p_doc);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid configuration: %s', v_problem),
            DETAIL = format('%s is not a valid Heroku Connect configuration file; nothing was changed.', p_what),
            HINT = 'The format is Connect''s export: {"version": 1, "connection": {...}, "mappings": [{"object_name", "config": {"access", "fields", ...}}]}, as connect_export_config() writes it.';
    END IF;
END;
$$;
/* ------------------------------------------------------------------------
 * What makes a schema Heroku Connect's, and what that allows: Connect
 * keeps its own trigger log there (_trigger_log, _trigger_log_archive,
 * _hcmeta) and logs every mapped table through its own triggers,
 * hc_<table>_logtrigger (AFTER row, WHEN get_xmlbinary() = 'base64',
 * calling hc_<table>_logger), skipping the writes of its own sessions
 * (xmlbinary = 'hex').  A connection that adopts such a schema
 * (connect_adopt_schema, 77_adopt_schema.sql) reads that log
 * (15_log_sources.sql) and adds no trigger to it; a connection with a log
 * of its own keeps away from the tables Connect logs.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.connect_schema_problems says what a schema lacks to be
 * Connect's (empty when nothing): the log with Connect's columns and its
 * (state, id) index, the id sequence, the archive and _hcmeta.
 */
CREATE FUNCTION connect_guard.connect_schema_problems(p_schema text)
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_log regclass := to_regclass(format('%I._trigger_log', p_schema));
    v_archive regclass := to_regclass(format('%I._trigger_log_archive', p_schema));
    v_problems text[] := '{}';
    v_wrong text;
BEGIN
    IF v_log IS NULL OR (SELECT relkind FROM pg_class WHERE oid = v_log) NOT IN ('r', 'p') THEN
        v_problems := v_problems || format('no table %I._trigger_log', p_schema);
    ELSE
        SELECT string_agg(format('%s %s', e.name, replace(e.typname, '|', ' or ')), ', ' ORDER BY e.ord) INTO v_wrong
          -- Connect's dumps show the times with and without time zone
          FROM (VALUES (1, 'id', 'int4'), (2, 'txid', 'int8'), (3, 'created_at', 'timestamptz|timestamp'),
                       (4, 'updated_at', 'timestamptz|timestamp'), (5, 'processed_at', 'timestamptz|timestamp'),
                       (6, 'processed_tx', 'int8'), (7, 'state', 'varchar'), (8, 'action', 'varchar'),
                       (9, 'table_name', 'varchar'), (10, 'record_id', 'int4'), (11, 'sfid', 'varchar'),
                       (12, 'old', 'text'), (13, 'values', 'text'), (14, 'sf_result', 'int4'),
                       (15, 'sf_message', 'text')) e(ord, name, typname)
         WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                            WHERE a.attrelid = v_log AND a.attname = e.name AND NOT a.attisdropped
                              AND t.typname = ANY (string_to_array(e.typname, '|')));
        IF v_wrong IS NOT NULL THEN
            v_problems := v_problems || format('%s lacks Connect''s columns %s', v_log, v_wrong);
        ELSIF pg_get_serial_sequence(v_log::text, 'id') IS NULL THEN
            v_problems := v_problems || format('%s.id takes no value from a sequence of its own', v_log);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_index i
                        WHERE i.indrelid = v_log AND i.indnkeyatts >= 2 AND i.indpred IS NULL
                          AND i.indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = v_log AND attname = 'state')
                          AND i.indkey[1] = (SELECT attnum FROM pg_attribute WHERE attrelid = v_log AND attname = 'id')) THEN
            v_problems := v_problems || format('no index on %s (state, id)', v_log);
        END IF;
    END IF;
    IF v_archive IS NULL THEN
        v_problems := v_problems || format('no table %I._trigger_log_archive', p_schema);
    ELSIF EXISTS (SELECT 1 FROM unnest(ARRAY['id', 'state', 'action', 'table_name', 'record_id', 'sfid', 'sf_message',
                                              'created_at', 'updated_at', 'processed_at']) n
                   WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                                      WHERE a.attrelid = v_archive AND a.attname = n AND NOT a.attisdropped)) THEN
        v_problems := v_problems || format('%s lacks Connect''s columns', v_archive);
    END IF;
    IF to_regclass(format('%I._hcmeta', p_schema)) IS NULL THEN
        v_problems := v_problems || format('no table %I._hcmeta', p_schema);
    END IF;
    RETURN v_problems;
END;
$$;

/*
 * connect_guard.connect_logged_tables: the tables of a schema that carry
 * Connect's logger trigger, hc_<table>_logtrigger, a row trigger after the
 * write calling hc_<table>_logger of the same schema.
 */
CREATE FUNCTION connect_guard.connect_logged_tables(p_schema text)
RETURNS TABLE (relid oid, relname name)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT cl.oid, cl.relname
      FROM pg_class cl
      JOIN pg_namespace n ON n.oid = cl.relnamespace
      JOIN pg_trigger tg ON tg.tgrelid = cl.oid
      JOIN pg_proc p ON p.oid = tg.tgfoid
     WHERE n.nspname = p_schema AND cl.relkind IN ('r', 'p')
       AND tg.tgname = left('hc_' || cl.relname || '_logtrigger', 63)
       AND p.proname = left('hc_' || cl.relname || '_logger', 63)
       AND p.pronamespace = n.oid
       AND (tg.tgtype & 1) = 1          -- FOR EACH ROW
       AND (tg.tgtype & (2 | 64)) = 0   -- AFTER
       AND (tg.tgtype & (4 | 8 | 16)) <> 0
     ORDER BY cl.relname;
$$;

/*
 * connect_guard.check_table_log_source is connect_map_table()'s check of
 * which log a table's changes reach: an adopted connection maps only the
 * tables of its schema that Connect logs (it adds no trigger); a
 * connection with its own log refuses a table Connect logs (its capture
 * trigger would start a second log nobody reads).
 */
CREATE FUNCTION connect_guard.check_table_log_source(c connect_guard.connection, p_tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema text := (SELECT n.nspname FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
                       WHERE cl.oid = p_tbl);
    v_logged boolean := EXISTS (SELECT 1 FROM connect_guard.connect_logged_tables(v_schema) t WHERE t.relid = p_tbl);
    v_adopter text;
BEGIN
    IF c.log_schema IS NOT NULL THEN
        IF v_schema IS DISTINCT FROM c.log_schema THEN
            RAISE EXCEPTION USING
                ERRCODE = 'wrong_object_type',
                MESSAGE = format('cannot map "%s" on connection "%s": it is not in schema %s', p_tbl, c.name, c.log_schema),
                DETAIL = format('Connection "%s" reads Heroku Connect''s log %s, which logs only the tables of its schema.',
                                c.name, connect_guard.log_table(c.log_schema)),
                HINT = 'Map it in Heroku Connect, or on a connection with a log of its own (connect_create_connection).';
        END IF;
        IF NOT v_logged THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('table "%s" has no Heroku Connect logger trigger', p_tbl),
                DETAIL = format('Connect logs a table it maps with the trigger %I calling %I.%I; connect_guard adds no trigger to Connect''s schema.',
                                left('hc_' || (SELECT relname FROM pg_class WHERE oid = p_tbl) || '_logtrigger', 63), v_schema,
                                left('hc_' || (SELECT relname FROM pg_class WHERE oid = p_tbl) || '_logger', 63)),
                HINT = 'Create the mapping in Heroku Connect first; it creates the table''s triggers.';
        END IF;
        RETURN;
    END IF;
    IF v_logged THEN
        SELECT name INTO v_adopter FROM connect_guard.connection WHERE log_schema = v_schema;
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('table "%s" is logged by Heroku Connect''s own trigger', p_tbl),
            DETAIL = format('Connect reads %s; a capture trigger of connect_guard would start a second log that nobody reads.',
                            connect_guard.log_table(v_schema)),
            HINT = CASE WHEN v_adopter IS NOT NULL
                        THEN format('Connection "%s" adopted schema %s and maps its tables; see connect_mappings.', v_adopter, v_schema)
                        ELSE format('Adopt the schema instead: SELECT connect_adopt_schema(''name'', %L).', v_schema) END;
    END IF;
END;
$$;

/*
 * connect_guard.reload_fence_writer: the role whose sessions with
 * xmlbinary = 'hex' may write through a reload fence over these mappings
 * (fence.c): the sync role of their adopted connections, as the int4 a
 * fence entry keeps; NULL when none is adopted, or when they disagree
 * (then nobody is let through, and a WARNING says so).
 */
CREATE FUNCTION connect_guard.reload_fence_writer(p_mapping_ids integer[])
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_roles text[];
    v_oid bigint;
BEGIN
    SELECT array_agg(DISTINCT c.sync_role) INTO v_roles
      FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id)
     WHERE m.mapping_id = ANY (p_mapping_ids) AND c.sync_role IS NOT NULL;
    IF cardinality(v_roles) > 1 THEN
        RAISE WARNING USING
            MESSAGE = format('connect_guard: the reload fence lets no sync service write: the adopted connections run as different roles (%s)',
                             array_to_string(v_roles, ', ')),
            HINT = 'Reload the tables of each connection with connect_reload_mapping(), or give them one sync_role.';
        RETURN NULL;
    END IF;
    SELECT r.oid::bigint INTO v_oid FROM pg_roles r WHERE r.rolname = v_roles[1];
    -- an oid above 2^31 keeps its bits
    RETURN CASE WHEN v_oid > 2147483647 THEN v_oid - 4294967296 ELSE v_oid END;
END;
$$;
/* ------------------------------------------------------------------------
 * Connection options: what each adapter needs to reach its sync service,
 * validated when the connection is created.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.check_url refuses what is not an http(s) URL, URLs with
 * credentials in them (they would show in the views and the event log),
 * and plain http:// (every request of the heroku and webhook adapters
 * carries the token or a signature), unless it goes to a loopback address
 * and connect_guard.http_allow_insecure_loopback is on, for tests.  The
 * worker checks again before every request (signals.c).
 */
CREATE FUNCTION connect_guard.url_transport_problem(url text)
RETURNS text LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_url_transport_problem';

CREATE FUNCTION connect_guard.check_url(p_adapter text, p_key text, p_url text, p_example text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_problem text;
BEGIN
    IF p_url IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('a %s connection needs the option "%s"', p_adapter, p_key),
            HINT = format('For example: %s.', p_example);
    END IF;
    IF p_url !~ '^https?://[^/\s?#@]+(/[^\s?#@]*)?$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('option "%s" is not an http:// or https:// URL: %s', p_key, p_url),
            DETAIL = 'The URL must start with http:// or https://, hold no spaces, no query string and no user name or password.',
            HINT = format('For example: %s.', p_example);
    END IF;
    v_problem := connect_guard.url_transport_problem(p_url);
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('option "%s" must be an https:// URL: %s', p_key, p_url),
            DETAIL = v_problem || '.',
            HINT = 'Use https://. For tests against a simulator on this machine, connect_guard.http_allow_insecure_loopback = on '
                   '(postgresql.conf) allows http:// to 127.0.0.1, ::1 or localhost.';
    END IF;
    RETURN rtrim(p_url, '/');
END;
$$;

/*
 * connect_guard.prepare_options validates a connection's options for its
 * adapter and splits off an inline secret, which the caller stores in
 * connect_guard.connection_secret.
 */
CREATE FUNCTION connect_guard.prepare_options(p_adapter text, p_options jsonb,
                                              OUT options jsonb, OUT secret text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_allowed text[];
    v_inline text;
    v_file text;
    v_what text;
    v_example text;
    v_problem text;
    k text;
BEGIN
    options := p_options;
    IF p_adapter = 'local' THEN
        RETURN;
    ELSIF p_adapter = 'heroku' THEN
        v_allowed := ARRAY['region_url', 'connection_id', 'token_file', 'token', 'note'];
        v_inline := 'token';
        v_file := 'token_file';
        v_what := 'API token';
        v_example := '{"region_url": "https://connect.example.com", "connection_id": "<the id heroku connect:info shows>", '
                     '"token_file": "/etc/connect_guard/connect.token"}';
    ELSE
        v_allowed := ARRAY['url', 'secret_file', 'secret', 'note'];
        v_inline := 'secret';
        v_file := 'secret_file';
        v_what := 'webhook key';
        v_example := '{"url": "https://hooks.example.com/connect", "secret_file": "/etc/connect_guard/hook.key"}';
    END IF;

    FOR k IN SELECT jsonb_object_keys(p_options) LOOP
        IF NOT k = ANY (v_allowed) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('unknown option "%s" for a %s connection', k, p_adapter),
                HINT = format('The options of a %s connection are %s.', p_adapter, array_to_string(v_allowed, ', '));
        END IF;
        IF jsonb_typeof(p_options -> k) <> 'string' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('option "%s" must be a JSON string', k),
                HINT = format('For example: %s.', v_example);
        END IF;
    END LOOP;

    IF p_adapter = 'heroku' THEN
        options := jsonb_set(options, '{region_url}',
                             to_jsonb(connect_guard.check_url(p_adapter, 'region_url', p_options ->> 'region_url', v_example)));
        IF coalesce(p_options ->> 'connection_id', '') !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = CASE WHEN p_options ? 'connection_id'
                               THEN format('option "connection_id" is not a Connect connection id: %s', p_options ->> 'connection_id')
                               ELSE 'a heroku connection needs the option "connection_id"' END,
                DETAIL = 'It is the id of the connection in Heroku Connect (a UUID), not its name.',
                HINT = format('For example: %s.', v_example);
        END IF;
    ELSE
        options := jsonb_set(options, '{url}',
                             to_jsonb(connect_guard.check_url(p_adapter, 'url', p_options ->> 'url', v_example)));
    END IF;

    IF (p_options ? v_inline) = (p_options ? v_file) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('a %s connection needs exactly one of the options "%s" and "%s"', p_adapter, v_file, v_inline),
            DETAIL = format('"%s" names a file the server reads the %s from; "%s" gives it inline, and it is then kept where only superusers can read it.',
                            v_file, v_what, v_inline),
            HINT = format('Prefer "%s": a secret written in SQL text shows up in statement logs.', v_file);
    END IF;
    IF p_options ? v_inline THEN
        secret := p_options ->> v_inline;
        IF secret !~ '^[!-~]+$' OR length(secret) > 4096 THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('option "%s" is not a valid %s', v_inline, v_what),
                DETAIL = 'It must be 1 to 4096 printable ASCII characters, without spaces.',
                HINT = format('Check the value, or use "%s".', v_file);
        END IF;
        options := jsonb_set(options, ARRAY[v_inline], '"********"');
        RAISE WARNING USING
            MESSAGE = format('the %s given inline (option "%s") is in the text of this statement', v_what, v_inline),
            DETAIL = 'It is stored where only superusers can read it, but the statement''s text reaches the server log '
                     'with log_statement = all, or when the statement fails or runs slow (log_min_error_statement, '
                     'log_min_duration_statement), and shows in pg_stat_activity while it runs.',
            HINT = format('Write it to a file that only the server can read (chmod 600) and give "%s" instead.', v_file);
    ELSE
        v_problem := connect_guard.secret_file_problem(p_options ->> v_file);
        IF v_problem IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('cannot use "%s" as the %s file', p_options ->> v_file, v_what),
                DETAIL = v_problem || '.',
                HINT = format('Give the absolute path of a file that the server''s operating system user can read and other users cannot (chmod 600), holding the %s on one line.', v_what);
        END IF;
    END IF;
END;
$$;

/* ------------------------------------------------------------------------
 * What a mapped table must look like for every write to reach the log:
 * the triggers that capture it, and the shape (columns, primary key,
 * partitions) it had when it was mapped or last saved.  48_schema_changes.sql
 * compares a table with this, event triggers and the worker run the
 * comparison (66_schema_watch.sql), and a difference puts the mapping in
 * SCHEMA_CHANGED.
 *
 * The triggers a mapping needs come from one function,
 * capture_triggers_expected(): the capture triggers of connect_guard's own
 * log, and for a partitioned table the truncate watch (below).  A
 * connection whose log is another one (Connect's own logger triggers on an
 * adopted schema) adds its kind of trigger there, and everything else (the
 * checks, the view, the way out) follows.
 *
 * Why a truncate watch: TRUNCATE of one partition fires no trigger of the
 * partitioned table and no event trigger, so its rows would leave the
 * mapped table unlogged.  A BEFORE TRUNCATE trigger on every partition
 * (truncate_watch.c) notices it, unless the TRUNCATE is of the mapped table
 * itself (whose capture trigger logs it): the table's own BEFORE TRUNCATE
 * trigger marks it for the statement, and its AFTER TRUNCATE trigger
 * unmarks it.
 * ------------------------------------------------------------------------ */

-- the shape the mapping accepted, and its configuration in Connect's format (17_config_format.sql)
ALTER TABLE connect_guard.mapping
    ADD COLUMN shape jsonb,
    ADD COLUMN config jsonb,
    -- where the config comes from: 'columns' (derived at mapping), 'import', 'connect' (Connect's export)
    ADD COLUMN config_source text CHECK (config_source IN ('columns', 'import', 'connect')),
    ADD COLUMN config_at timestamptz;
-- the connection part of the last file imported into a connection without a sync service of its own
ALTER TABLE connect_guard.connection ADD COLUMN config jsonb;

/*
 * A schema change: one difference between a mapped table and what its
 * mapping expects, or one event that hid writes from the log.  Open until
 * connect_save_mapping() (66_schema_watch.sql) settles it; while a mapping
 * has one open, it is SCHEMA_CHANGED (or RELOAD_TABLE, when a reload is
 * under way).
 */
CREATE TABLE connect_guard.schema_change (
    schema_change_id serial PRIMARY KEY,
    mapping_id      integer NOT NULL REFERENCES connect_guard.mapping ON DELETE CASCADE,
    -- what differs: see connect_guard.mapping_findings() (48_schema_changes.sql)
    kind            text NOT NULL,
    -- the column, field, trigger or partition concerned
    object          text NOT NULL,
    expected        text,
    actual          text,
    -- writes may have reached the table unlogged (or rows changed without a log entry): a reload repairs that
    needs_reload    boolean NOT NULL,
    -- 'ddl' (an event trigger), 'truncate' (the truncate watch), 'worker', 'map', 'import', 'export'
    detected_by     text NOT NULL,
    -- the command tag, or the request, that showed it
    detected_in     text,
    detected_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor           name NOT NULL DEFAULT session_user,
    -- the mapping's state when its first open change was found (what saving goes back to)
    state_before    text,
    resolved_at     timestamptz,
    resolution      text
);
CREATE UNIQUE INDEX schema_change_open ON connect_guard.schema_change (mapping_id, kind, object)
    WHERE resolved_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('connect_guard.schema_change', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.schema_change_schema_change_id_seq', '');

/*
 * When a mapping's table was last seen as its mapping expects, in this
 * database (19_table_shape_changes.sql).  Not dumped: a restored database checks
 * its tables afresh, once pg_restore has put their keys and triggers back.
 */
CREATE TABLE connect_guard.mapping_verified (
    mapping_id      integer PRIMARY KEY REFERENCES connect_guard.mapping ON DELETE CASCADE,
    first_checked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    verified_at     timestamptz,
    -- what the worker's last check saw (19_table_shape_changes.sql: mapping_fingerprints)
    fingerprint     text
);

-- the truncate watch's trigger function (truncate_watch.c); fires BEFORE and AFTER TRUNCATE
CREATE FUNCTION connect_guard.truncate_watch()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_truncate_watch';

/*
 * While connect_guard creates or repairs a mapped table's triggers itself,
 * own_ddl(true) tells its event triggers not to report the half-done state
 * (schema_watch.c): a flag of this backend, reset at the end of the
 * (sub)transaction.  own_ddl returns what the flag was.
 */
CREATE FUNCTION connect_guard.own_ddl(p_on boolean)
RETURNS boolean
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'connect_guard_own_ddl';

CREATE FUNCTION connect_guard.in_own_ddl()
RETURNS boolean
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_in_own_ddl';

/*
 * The helpers below run for every DDL command on a mapped table and for
 * every mapping the worker checks again, so they are written to be cheap:
 * the larger ones are PL/pgSQL, whose plans are kept for the session.
 */

-- the table of a mapping, or NULL when it does not exist (any more)
CREATE FUNCTION connect_guard.mapping_relid(m connect_guard.mapping)
RETURNS regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', m.table_schema, m.table_name)) $$;

/*
 * connect_guard.capture_triggers_expected: the triggers mapping m of
 * connection c needs, each with
 *   purpose      'capture' (without it writes are lost: a reload is due
 *                after it was missing) or 'watch' (without it a TRUNCATE of
 *                a partition goes unnoticed)
 *   placement    'table': on the mapped table; a row trigger of a
 *                partitioned table has a clone on every partition, which
 *                must be there and enabled too.  'each_partition': a
 *                trigger of its own on every partition
 *   trigger_type pg_trigger.tgtype; function_oid and arguments (NULL: any);
 *   when_clause  a regular expression the WHEN condition, as
 *                pg_get_triggerdef() prints it, must match; NULL for none
 *   owned_by     'connect_guard': connect_save_mapping() may create it
 *                again; anything else is another's, never touched
 * Every trigger must fire in the origin role (tgenabled 'O').  A
 * connection that adopted a Connect-managed schema (its log is Connect's,
 * 15_log_sources.sql) expects Connect's logger trigger instead, owned by
 * Connect; another kind of log adds its own rows here, the only place that
 * knows them.
 */
CREATE FUNCTION connect_guard.capture_triggers_expected(c connect_guard.connection, m connect_guard.mapping)
RETURNS TABLE (trigger_name text, purpose text, placement text, trigger_type smallint, function_oid oid,
               arguments text[], when_clause text, owned_by text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- tgtype bits: ROW 1, BEFORE 2, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32
    IF c.log_schema IS NOT NULL THEN
        -- an adopted schema (17_connect_schema.sql): Connect's logger trigger, AFTER INSERT OR UPDATE OR
        -- DELETE FOR EACH ROW WHEN (get_xmlbinary() = 'base64'), calling hc_<table>_logger; Connect's own
        RETURN QUERY
        SELECT left('hc_' || m.table_name || '_logtrigger', 63), 'capture'::text, 'table'::text, 29::smallint,
               to_regprocedure(format('%I.%I()', m.table_schema, left('hc_' || m.table_name || '_logger', 63)))::oid,
               NULL::text[],
               '^\(*(\S+\.)?get_xmlbinary\(\)\)*(::(text|character varying))? = ''base64''::(text|character varying)\)*$'::text,
               'connect'::text;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT x.n, x.p, x.pl, x.t, x.f, x.a, NULL::text, 'connect_guard'::text
      FROM (VALUES ('_connect_guard_capture', 'capture', 'table', 29::smallint,
                    'connect_guard.capture()'::regprocedure::oid, ARRAY[m.table_schema, m.table_name]),
                   ('_connect_guard_truncate', 'capture', 'table', 32::smallint,
                    'connect_guard.capture()'::regprocedure::oid, ARRAY[m.table_schema, m.table_name])) x(n, p, pl, t, f, a);
    -- a partitioned table's partitions are watched for TRUNCATE (the top of this file)
    IF (SELECT cl.relkind FROM pg_class cl WHERE cl.oid = connect_guard.mapping_relid(m)) = 'p' THEN
        RETURN QUERY
        SELECT w.n, 'watch'::text, w.pl, w.t, 'connect_guard.truncate_watch()'::regprocedure::oid, ARRAY[w.arg],
               NULL::text, 'connect_guard'::text
          FROM (VALUES ('_connect_guard_truncate_watch', 'table', 34::smallint, 'root'),
                       ('_connect_guard_truncate_done', 'table', 32::smallint, 'root'),
                       ('_connect_guard_truncate_watch', 'each_partition', 34::smallint, 'partition')) w(n, pl, t, arg);
    END IF;
END;
$$;

-- the partitions of a table at every level (none for a table that is not partitioned)
CREATE FUNCTION connect_guard.partitions_of(p_relid oid)
RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT t.relid FROM pg_catalog.pg_partition_tree(p_relid) t WHERE t.level > 0 $$;

/*
 * connect_guard.table_shape: what a mapped table looks like, by names (so
 * that it survives pg_dump and pg_upgrade): its columns with their types,
 * its primary key, and its partitions (with their oids, which tell a
 * partition renamed from one dropped and another attached).
 */
CREATE FUNCTION connect_guard.table_shape(p_relid oid)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN jsonb_build_object(
        'columns', (SELECT coalesce(jsonb_object_agg(a.attname, format_type(a.atttypid, a.atttypmod)), '{}')
                      FROM pg_attribute a
                     WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped),
        'primary_key', (SELECT coalesce(jsonb_agg(a.attname ORDER BY k.ord), '[]')
                          FROM pg_index i
                          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                         WHERE i.indrelid = p_relid AND i.indisprimary),
        'partitions', (SELECT coalesce(jsonb_agg(t.relid::regclass::text ORDER BY t.relid::regclass::text), '[]')
                         FROM pg_partition_tree(p_relid) t WHERE t.level > 0),
        -- which relation each name was, so that a renamed partition is told from one replaced
        'partition_oids', (SELECT coalesce(jsonb_object_agg(t.relid::regclass::text, t.relid::oid), '{}')
                             FROM pg_partition_tree(p_relid) t WHERE t.level > 0));
END;
$$;

-- a table's columns in order, for its default configuration
CREATE FUNCTION connect_guard.table_columns(p_relid oid)
RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
      FROM pg_catalog.pg_attribute a WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
$$;

/*
 * connect_guard.install_truncate_watch gives a partitioned table, and each
 * of its partitions, the truncate watch's triggers they lack; the caller
 * may create triggers on them (it maps the table, or created a partition).
 */
CREATE FUNCTION connect_guard.install_truncate_watch(p_relid oid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r regclass;
    v_was boolean;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = p_relid) IS DISTINCT FROM 'p' THEN
        RETURN;
    END IF;
    v_was := connect_guard.own_ddl(true);
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = p_relid AND tgname = '_connect_guard_truncate_watch') THEN
        EXECUTE format('CREATE TRIGGER _connect_guard_truncate_watch BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.truncate_watch(''root'')', p_relid::regclass);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = p_relid AND tgname = '_connect_guard_truncate_done') THEN
        EXECUTE format('CREATE TRIGGER _connect_guard_truncate_done AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.truncate_watch(''root'')', p_relid::regclass);
    END IF;
    FOR r IN SELECT p FROM connect_guard.partitions_of(p_relid) p
              WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p AND t.tgname = '_connect_guard_truncate_watch')
    LOOP
        EXECUTE format('CREATE TRIGGER _connect_guard_truncate_watch BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.truncate_watch(''partition'')', r);
    END LOOP;
    PERFORM connect_guard.own_ddl(v_was);
END;
$$;

-- connect_guard.drop_truncate_watch removes them again (the table is unmapped)
CREATE FUNCTION connect_guard.drop_truncate_watch(p_relid oid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    v_was boolean := connect_guard.own_ddl(true);
BEGIN
    FOR t IN SELECT tg.tgname, tg.tgrelid::regclass AS rel FROM pg_trigger tg
              WHERE tg.tgrelid IN (SELECT p_relid UNION ALL SELECT p FROM connect_guard.partitions_of(p_relid) p)
                AND tg.tgname IN ('_connect_guard_truncate_watch', '_connect_guard_truncate_done')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
    END LOOP;
    PERFORM connect_guard.own_ddl(v_was);
END;
$$;

/*
 * connect_guard.mapping_init records what a new mapping expects of its
 * table: its shape now, and a configuration derived from its columns
 * (until a file or Connect's export gives one); and gives the table the
 * watch triggers its kind of mapping needs (capture_triggers_expected:
 * the truncate watch of a partitioned table).  Called when a table is
 * mapped; a mapping made another way gets it on its first check.
 */
CREATE FUNCTION connect_guard.mapping_init(p_mapping_id integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m connect_guard.mapping;
    c connect_guard.connection;
    v_rel regclass;
BEGIN
    SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = p_mapping_id;
    v_rel := connect_guard.mapping_relid(m);
    IF v_rel IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = m.connection_id;
    IF EXISTS (SELECT 1 FROM connect_guard.capture_triggers_expected(c, m) e
                WHERE e.purpose = 'watch' AND e.owned_by = 'connect_guard') THEN
        PERFORM connect_guard.install_truncate_watch(v_rel);
    END IF;
    UPDATE connect_guard.mapping mp
       SET shape = connect_guard.table_shape(v_rel),
           config = coalesce(mp.config, connect_guard.config_of_columns(connect_guard.table_columns(v_rel))),
           config_source = coalesce(mp.config_source, 'columns'),
           config_at = coalesce(mp.config_at, clock_timestamp())
     WHERE mp.mapping_id = p_mapping_id;
    INSERT INTO connect_guard.mapping_verified (mapping_id, verified_at) VALUES (p_mapping_id, clock_timestamp())
    ON CONFLICT (mapping_id) DO UPDATE SET verified_at = excluded.verified_at;
END;
$$;
/* ------------------------------------------------------------------------
 * Schema changes of mapped tables: what differs between a mapped table and
 * what its mapping expects (19_table_shape.sql), and what hid writes from
 * the log.  mapping_findings() says what differs now; schema_changes_record()
 * records what is new as connect_guard.schema_change rows, puts the mapping
 * in SCHEMA_CHANGED (14_states.sql), logs a schema_changed event and raises
 * a WARNING, in the session that made the change (event triggers, the
 * truncate watch) or in the worker's log (its check every cycle, for what
 * event triggers do not see: direct catalog changes).  connect_schema_drift
 * shows them; connect_save_mapping() (66_schema_watch.sql) settles them.
 *
 * Kinds (needs_reload: writes may have reached the table unlogged, or its
 * rows changed without log entries; a reload makes the sync service's copy
 * whole again):
 *   table_dropped           the mapped table is gone                         reload
 *   trigger_missing         a trigger the mapping needs is not there         reload (capture)
 *   trigger_disabled        ALTER TABLE ... DISABLE TRIGGER                  reload (capture)
 *   trigger_replica_only    ENABLE REPLICA TRIGGER: fires only for replicas  reload (capture)
 *   trigger_always          ENABLE ALWAYS TRIGGER: also fires for replicas
 *   trigger_changed         CREATE OR REPLACE TRIGGER with another
 *                           definition (events, function, WHEN, columns)     reload (capture)
 *   inheritance_child       a table inherits from it: its rows are not
 *                           captured                                         reload
 *   column_added, column_dropped                                             -
 *   column_type_changed     ALTER COLUMN ... TYPE: every row rewritten       reload
 *   primary_key_changed     the key the log's record_id is made of           reload
 *   partition_added         attached with rows (an empty one is accepted)    reload
 *   partition_removed       detached or dropped, with its rows               reload
 *   partition_renamed       the same partition under another name: taken in, never recorded
 *   partition_truncated     TRUNCATE of one partition (the truncate watch)   reload
 *   field_without_column    the configuration's field has no column          -
 *   column_without_field    a column no field of the configuration names     -
 *
 * A mapping whose table was never seen complete in this database (it was
 * just restored from a dump: pg_restore creates the triggers and keys after
 * the mapping's rows) is not reported until it is, or for 5 minutes.
 * ------------------------------------------------------------------------ */

-- the kinds whose cause cannot be seen afterwards: only the moment told
CREATE FUNCTION connect_guard.schema_change_is_event(p_kind text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT p_kind IN ('partition_truncated') $$;

-- one line about a schema change, for WARNINGs and events
CREATE FUNCTION connect_guard.schema_change_text(p_kind text, p_object text, p_expected text, p_actual text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p_kind || ': ' || p_object
           || CASE WHEN p_expected IS NOT NULL OR p_actual IS NOT NULL
                   THEN format(' (expected %s, found %s)', coalesce(p_expected, 'nothing'), coalesce(p_actual, 'nothing'))
                   ELSE '' END
$$;

/*
 * connect_guard.trigger_arguments: a trigger's arguments as text[]
 * (pg_trigger keeps them NUL-separated in a bytea).
 */
CREATE FUNCTION connect_guard.trigger_arguments(t pg_trigger)
RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN t.tgnargs = 0 THEN '{}'::text[]
                ELSE string_to_array(left(encode(t.tgargs, 'escape'), -4), '\000') END
$$;

/*
 * connect_guard.mapping_findings: what differs now between mapping m's
 * table and what the mapping expects (see the kinds above).  With
 * p_look_at_rows false, partitions added are not read (whether they hold
 * rows needs SELECT on them): actual says 'not examined'.
 */
CREATE FUNCTION connect_guard.mapping_findings(m connect_guard.mapping, p_look_at_rows boolean DEFAULT true)
RETURNS TABLE (kind text, object text, expected text, actual text, needs_reload boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_rel regclass := connect_guard.mapping_relid(m);
    v_now jsonb;
    v_rows boolean;
    v_reported text[] := '{}';
    k text;
BEGIN
    IF v_rel IS NULL THEN
        RETURN QUERY SELECT 'table_dropped'::text, format('%I.%I', m.table_schema, m.table_name), 'the mapped table'::text,
                            'no such table'::text, true;
        RETURN;
    END IF;
    SELECT * INTO c FROM connect_guard.connection cn WHERE cn.connection_id = m.connection_id;

    -- the triggers that capture its writes (and watch its partitions), on it and on its partitions
    RETURN QUERY
    WITH e AS (SELECT * FROM connect_guard.capture_triggers_expected(c, m)),
    targets AS (
        SELECT e.*, v_rel::oid AS relid FROM e WHERE e.placement = 'table'
        UNION ALL
        SELECT e.*, p::oid FROM e, connect_guard.partitions_of(v_rel) p
         WHERE e.placement = 'each_partition' OR (e.placement = 'table' AND e.trigger_type & 1 = 1)),
    present AS (
        SELECT x.*, t.oid AS tgoid, t.tgenabled,
               t.tgtype <> x.trigger_type OR t.tgfoid <> coalesce(x.function_oid, t.tgfoid)
               OR (x.arguments IS NOT NULL
                   AND CASE WHEN t.tgnargs = 0 THEN '{}'::text[]
                            ELSE string_to_array(left(encode(t.tgargs, 'escape'), -4), '\000') END
                       IS DISTINCT FROM x.arguments)
               OR CASE WHEN t.tgqual IS NULL THEN x.when_clause IS NOT NULL
                       WHEN x.when_clause IS NULL THEN true
                       ELSE NOT coalesce(substring(pg_get_triggerdef(t.oid) FROM ' WHEN \((.*)\) EXECUTE ')
                                         ~ x.when_clause, false) END
               OR cardinality(t.tgattr::int2[]) > 0 OR t.tgconstraint <> 0 AS changed
          FROM targets x LEFT JOIN pg_trigger t ON t.tgrelid = x.relid AND t.tgname = x.trigger_name)
    SELECT CASE WHEN f.tgoid IS NULL THEN 'trigger_missing' WHEN f.changed THEN 'trigger_changed'
                WHEN f.tgenabled = 'D' THEN 'trigger_disabled' WHEN f.tgenabled = 'R' THEN 'trigger_replica_only'
                ELSE 'trigger_always' END,
           format('%I on %s', f.trigger_name, f.relid::regclass),
           CASE WHEN f.tgoid IS NULL THEN f.purpose || ' trigger'
                WHEN f.changed THEN format('%s trigger as %s defines it', f.purpose,
                                           CASE f.owned_by WHEN 'connect' THEN 'Heroku Connect' ELSE f.owned_by END)
                ELSE 'enabled' END,
           CASE WHEN f.tgoid IS NULL THEN 'no such trigger'
                WHEN f.changed THEN pg_get_triggerdef(f.tgoid)
                WHEN f.tgenabled = 'D' THEN 'disabled'
                WHEN f.tgenabled = 'R' THEN 'ENABLE REPLICA: fires only when session_replication_role = replica'
                ELSE 'ENABLE ALWAYS: fires also when session_replication_role = replica' END,
           f.purpose = 'capture' AND NOT (f.tgoid IS NOT NULL AND NOT f.changed AND f.tgenabled = 'A')
      FROM present f
     WHERE f.tgoid IS NULL OR f.changed OR f.tgenabled <> 'O'
     ORDER BY f.relid, f.trigger_name;

    -- inheritance children: rows of the table that no trigger of it captures (a partitioned table has none)
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class cl ON cl.oid = i.inhrelid
                WHERE i.inhparent = v_rel AND NOT cl.relispartition) THEN
        RETURN QUERY
        WITH RECURSIVE down(relid, parent) AS (
            SELECT i.inhrelid, i.inhparent FROM pg_inherits i WHERE i.inhparent = v_rel
            UNION ALL
            SELECT i.inhrelid, i.inhparent FROM pg_inherits i JOIN down d ON i.inhparent = d.relid)
        SELECT 'inheritance_child'::text, d.relid::regclass::text, 'no inheritance children'::text,
               format('inherits from %s', d.parent::regclass), true
          FROM down d JOIN pg_class cl ON cl.oid = d.relid
         WHERE NOT cl.relispartition;
    END IF;

    -- the shape it was mapped (or saved) with
    v_now := connect_guard.table_shape(v_rel);
    IF m.shape IS NOT NULL THEN
        SELECT coalesce(array_agg(coalesce(o.k, n.k)), '{}') INTO v_reported
          FROM jsonb_each_text(m.shape -> 'columns') o(k, v) FULL JOIN jsonb_each_text(v_now -> 'columns') n(k, v) ON n.k = o.k
         WHERE o.v IS DISTINCT FROM n.v;
        RETURN QUERY
        SELECT CASE WHEN n.v IS NULL THEN 'column_dropped' WHEN o.v IS NULL THEN 'column_added'
                    ELSE 'column_type_changed' END,
               coalesce(o.k, n.k), o.v, n.v, o.v IS NOT NULL AND n.v IS NOT NULL
          FROM jsonb_each_text(m.shape -> 'columns') o(k, v) FULL JOIN jsonb_each_text(v_now -> 'columns') n(k, v) ON n.k = o.k
         WHERE o.v IS DISTINCT FROM n.v
        UNION ALL
        SELECT 'primary_key_changed', 'primary key', coalesce(m.shape ->> 'primary_key', 'none'), v_now ->> 'primary_key', true
         WHERE (m.shape -> 'primary_key') IS DISTINCT FROM (v_now -> 'primary_key')
        UNION ALL
        -- a partition renamed: the same relation under another name (nothing left the table)
        SELECT 'partition_renamed', o.name, o.name, n.name, false
          FROM jsonb_each_text(coalesce(m.shape -> 'partition_oids', '{}')) o(name, relid)
          JOIN jsonb_each_text(v_now -> 'partition_oids') n(name, relid) ON n.relid = o.relid AND n.name <> o.name
         WHERE m.shape -> 'partitions' ? o.name AND NOT v_now -> 'partitions' ? o.name
        UNION ALL
        SELECT 'partition_removed', gone.p, format('a partition of %s', v_rel),
               CASE WHEN to_regclass(gone.p) IS NULL THEN 'dropped' ELSE 'detached' END, true
          FROM (SELECT jsonb_array_elements_text(m.shape -> 'partitions')
                EXCEPT SELECT jsonb_array_elements_text(v_now -> 'partitions')) gone(p)
         WHERE NOT EXISTS (SELECT 1 FROM jsonb_each_text(v_now -> 'partition_oids') n(name, relid)
                            WHERE n.relid = m.shape -> 'partition_oids' ->> gone.p);
        FOR k IN SELECT jsonb_array_elements_text(v_now -> 'partitions')
                 EXCEPT SELECT jsonb_array_elements_text(m.shape -> 'partitions')
                 EXCEPT SELECT n.name FROM jsonb_each_text(v_now -> 'partition_oids') n(name, relid)
                         WHERE EXISTS (SELECT 1 FROM jsonb_each_text(coalesce(m.shape -> 'partition_oids', '{}')) o(name, relid)
                                        WHERE o.relid = n.relid AND m.shape -> 'partitions' ? o.name) LOOP
            IF p_look_at_rows THEN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', k::regclass) INTO v_rows;
            END IF;
            RETURN QUERY SELECT 'partition_added'::text, k, 'no new partition with rows'::text,
                                CASE WHEN NOT p_look_at_rows THEN 'not examined'
                                     WHEN v_rows THEN 'attached with rows' ELSE 'empty' END,
                                coalesce(v_rows, false);
        END LOOP;
    END IF;

    -- the configuration's fields against the columns (a column already reported above is not again);
    -- names ignore case, as Salesforce's do (Connect's columns are lower case)
    IF jsonb_typeof(m.config -> 'fields') = 'object' THEN
        RETURN QUERY
        WITH cols AS (SELECT k.col, lower(k.col) AS lcol, k.col = ANY (v_reported) AS reported
                        FROM jsonb_object_keys(v_now -> 'columns') k(col)),
        fields AS (SELECT f AS field, connect_guard.config_field_column(f) AS lcol
                     FROM jsonb_object_keys(m.config -> 'fields') f)
        SELECT 'field_without_column'::text, f.field, f.lcol, NULL::text, false
          FROM fields f
         WHERE NOT EXISTS (SELECT 1 FROM cols x WHERE x.lcol = f.lcol)
           AND NOT EXISTS (SELECT 1 FROM unnest(v_reported) r WHERE lower(r) = f.lcol)
        UNION ALL
        SELECT 'column_without_field'::text, x.col, NULL::text, connect_guard.config_field_name(x.col), false
          FROM cols x
         WHERE NOT x.reported AND connect_guard.config_field_name(x.col) IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM fields f WHERE f.lcol = x.lcol)
         ORDER BY 1, 2;
    END IF;
END;
$$;

/*
 * connect_guard.schema_changes_note records findings (a jsonb array of
 * {kind, object, expected, actual, needs_reload}) of mapping m that are not
 * open already; for the new ones it puts the mapping in SCHEMA_CHANGED
 * (unless a reload is under way: the reload overwrites the table, and the
 * worker moves it on once the reload is done), logs a schema_changed event
 * and raises a WARNING.  Returns how many were new.
 */
CREATE FUNCTION connect_guard.schema_changes_note(m connect_guard.mapping, p_findings jsonb, p_source text,
                                                  p_context text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f jsonb;
    v_new jsonb := '[]';
    v_state_before text;
    v_connection text;
BEGIN
    SELECT coalesce(min(s.state_before), m.state) INTO v_state_before
      FROM connect_guard.schema_change s WHERE s.mapping_id = m.mapping_id AND s.resolved_at IS NULL;
    IF v_state_before IN ('SCHEMA_CHANGED', 'RELOAD_TABLE') THEN
        v_state_before := 'DATA_SYNCED';
    END IF;
    FOR f IN SELECT * FROM jsonb_array_elements(p_findings) LOOP
        INSERT INTO connect_guard.schema_change (mapping_id, kind, object, expected, actual, needs_reload,
                                                 detected_by, detected_in, state_before)
        VALUES (m.mapping_id, f ->> 'kind', f ->> 'object', f ->> 'expected', f ->> 'actual',
                (f ->> 'needs_reload')::boolean, p_source, p_context, v_state_before)
        ON CONFLICT (mapping_id, kind, object) WHERE resolved_at IS NULL DO NOTHING;
        IF FOUND THEN
            v_new := v_new || f;
        END IF;
    END LOOP;
    IF jsonb_array_length(v_new) = 0 THEN
        RETURN 0;
    END IF;

    PERFORM connect_guard.mappings_goto(m.connection_id, ARRAY[m.mapping_id], 'SCHEMA_CHANGED',
                                        ARRAY['INITIAL', 'DATA_SYNCED']);
    PERFORM connect_guard.log_event(m.connection_id, 'schema_changed', jsonb_build_object(
        'table', format('%I.%I', m.table_schema, m.table_name), 'object_name', m.object_name,
        'source', p_source, 'context', p_context, 'changes', v_new,
        'needs_reload', EXISTS (SELECT 1 FROM jsonb_array_elements(v_new) x WHERE (x ->> 'needs_reload')::boolean)));
    SELECT cn.name INTO v_connection FROM connect_guard.connection cn WHERE cn.connection_id = m.connection_id;
    RAISE WARNING USING
        MESSAGE = format('mapped table %I.%I of connection "%s" changed: %s', m.table_schema, m.table_name, v_connection,
                         (SELECT string_agg(connect_guard.schema_change_text(x ->> 'kind', x ->> 'object',
                                                                             x ->> 'expected', x ->> 'actual'), '; ')
                            FROM jsonb_array_elements(v_new) x)),
        DETAIL = CASE WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(v_new) x WHERE (x ->> 'needs_reload')::boolean)
                      THEN 'Writes may have reached the table without a log entry: the sync service''s copy needs a reload.'
                      ELSE 'The table no longer matches its mapping.' END,
        HINT = 'The mapping is SCHEMA_CHANGED; see connect_schema_drift, and runbooks/field_change.sql for the way out (connect_save_mapping()).';
    RETURN jsonb_array_length(v_new);
END;
$$;

/*
 * connect_guard.schema_changes_check checks mapping m and records what is
 * new (schema_changes_note).  p_source says who looks ('ddl', 'worker',
 * 'map', 'import', 'export'), p_context what showed it (a command tag, a
 * request).  An empty partition that appeared is accepted into the shape
 * (and given its truncate watch when p_source is 'ddl': the session that
 * made it may create triggers on it).  Returns the number of new findings.
 */
CREATE FUNCTION connect_guard.schema_changes_check(m connect_guard.mapping, p_source text, p_context text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel regclass := connect_guard.mapping_relid(m);
    v_findings jsonb;
    v_now jsonb;
    v_verified connect_guard.mapping_verified;
BEGIN
    -- One check of a mapping at a time, and none across a save: what is compared is read after the
    -- lock (each statement sees what has committed), so a check that started before a save cannot
    -- record what the save has just settled.
    SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = m.mapping_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;               -- unmapped meanwhile
    END IF;
    IF m.shape IS NULL AND v_rel IS NOT NULL THEN
        -- a mapping made without connect_map_table(): what its table is now is what it expects
        PERFORM connect_guard.mapping_init(m.mapping_id);
        SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = m.mapping_id;
    END IF;
    SELECT * INTO v_verified FROM connect_guard.mapping_verified WHERE mapping_id = m.mapping_id;
    -- a new partition gets its watch at once; not while a restore recreates the table (it has its own)
    IF p_source = 'ddl' AND v_rel IS NOT NULL AND v_verified.verified_at IS NOT NULL
       AND EXISTS (SELECT 1 FROM connect_guard.connection c, connect_guard.capture_triggers_expected(c, m) e
                    WHERE c.connection_id = m.connection_id AND e.purpose = 'watch' AND e.owned_by = 'connect_guard') THEN
        PERFORM connect_guard.install_truncate_watch(v_rel);
    END IF;

    SELECT coalesce(jsonb_agg(to_jsonb(f) ORDER BY f.kind, f.object), '[]') INTO v_findings
      FROM connect_guard.mapping_findings(m) f;
    -- an empty new partition, or a partition renamed, is part of the table as it is now, and nothing was
    -- hidden: the shape takes it in (new names, with their oids)
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(v_findings) x
                WHERE (x ->> 'kind' = 'partition_added' AND x ->> 'actual' = 'empty') OR x ->> 'kind' = 'partition_renamed') THEN
        v_now := connect_guard.table_shape(v_rel);
        WITH benign AS (
            SELECT x ->> 'kind' AS kind, x ->> 'object' AS old_name,
                   CASE x ->> 'kind' WHEN 'partition_renamed' THEN x ->> 'actual' ELSE x ->> 'object' END AS new_name
              FROM jsonb_array_elements(v_findings) x
             WHERE (x ->> 'kind' = 'partition_added' AND x ->> 'actual' = 'empty') OR x ->> 'kind' = 'partition_renamed')
        UPDATE connect_guard.mapping mp
           SET shape = mp.shape
                       || jsonb_build_object('partitions',
                              (SELECT jsonb_agg(p ORDER BY p)
                                 FROM (SELECT jsonb_array_elements_text(mp.shape -> 'partitions')
                                       EXCEPT SELECT b.old_name FROM benign b WHERE b.kind = 'partition_renamed'
                                       UNION SELECT b.new_name FROM benign b) ps(p)))
                       || jsonb_build_object('partition_oids',
                              (coalesce(mp.shape -> 'partition_oids', '{}')
                               - (SELECT coalesce(array_agg(b.old_name), '{}') FROM benign b WHERE b.kind = 'partition_renamed'))
                              || (SELECT coalesce(jsonb_object_agg(b.new_name, v_now -> 'partition_oids' -> b.new_name), '{}')
                                    FROM benign b))
         WHERE mp.mapping_id = m.mapping_id;
        SELECT coalesce(jsonb_agg(x), '[]') INTO v_findings FROM jsonb_array_elements(v_findings) x
         WHERE NOT ((x ->> 'kind' = 'partition_added' AND x ->> 'actual' = 'empty') OR x ->> 'kind' = 'partition_renamed');
    END IF;

    -- a table never seen complete here may be in the middle of a restore
    IF jsonb_array_length(v_findings) = 0 THEN
        IF v_verified.verified_at IS NULL THEN
            INSERT INTO connect_guard.mapping_verified (mapping_id, verified_at) VALUES (m.mapping_id, clock_timestamp())
            ON CONFLICT (mapping_id) DO UPDATE SET verified_at = excluded.verified_at;
        END IF;
        RETURN 0;
    END IF;
    IF v_verified.verified_at IS NULL THEN
        IF v_verified.mapping_id IS NULL THEN
            INSERT INTO connect_guard.mapping_verified (mapping_id) VALUES (m.mapping_id) ON CONFLICT DO NOTHING;
            RETURN 0;
        ELSIF v_verified.first_checked_at > clock_timestamp() - interval '5 min' THEN
            RETURN 0;
        END IF;
        UPDATE connect_guard.mapping_verified SET verified_at = clock_timestamp() WHERE mapping_id = m.mapping_id;
    END IF;
    RETURN connect_guard.schema_changes_note(m, v_findings, p_source, p_context);
END;
$$;

/*
 * connect_guard.schema_changes_record checks the given mappings (all for
 * NULL; schema_changes_check).  Returns the number of new findings.
 */
CREATE FUNCTION connect_guard.schema_changes_record(p_mapping_ids integer[], p_source text, p_context text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m connect_guard.mapping;
    v_count integer := 0;
BEGIN
    FOR m IN SELECT * FROM connect_guard.mapping mp
              WHERE p_mapping_ids IS NULL OR mp.mapping_id = ANY (p_mapping_ids)
              ORDER BY mp.mapping_id
    LOOP
        v_count := v_count + connect_guard.schema_changes_check(m, p_source, p_context);
    END LOOP;
    RETURN v_count;
END;
$$;

/*
 * connect_guard.mapping_fingerprints: for each mapping, a digest of
 * everything its check reads (its table's triggers, columns, key,
 * partitions and inheritance children, its shape and configuration), in
 * one query: the worker checks again only the mappings whose digest moved.
 */
CREATE FUNCTION connect_guard.mapping_fingerprints()
RETURNS TABLE (mapping_id integer, fingerprint text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT m.mapping_id,
           md5(concat_ws('|', m.shape::text, m.config::text, rel::oid::text,
               (WITH RECURSIVE tree(relid) AS (
                    SELECT rel::oid
                    UNION ALL
                    SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.relid)
                SELECT string_agg(concat_ws(',', tr.relid, cl.relname, cl.relnamespace, cl.relkind, cl.relispartition,
                                            (SELECT string_agg(concat_ws(':', t.oid, t.tgname, t.tgenabled, t.tgtype, t.tgfoid,
                                                                         encode(t.tgargs, 'hex'), t.tgqual::text,
                                                                         t.tgattr::text, t.tgconstraint), ';' ORDER BY t.tgname)
                                               FROM pg_trigger t WHERE t.tgrelid = tr.relid)), '/' ORDER BY tr.relid)
                  FROM tree tr JOIN pg_class cl ON cl.oid = tr.relid),
               (SELECT string_agg(concat_ws(',', a.attname, a.atttypid, a.atttypmod), ';' ORDER BY a.attnum)
                  FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped),
               (SELECT i.indkey::text FROM pg_index i WHERE i.indrelid = rel AND i.indisprimary)))
      FROM connect_guard.mapping m CROSS JOIN LATERAL connect_guard.mapping_relid(m) rel;
END;
$$;

/*
 * connect_guard.mappings_of_relations: the mappings whose table is one of
 * p_relids or, unless p_with_ancestors is false (none of them has a
 * parent), an ancestor of one (the partitioned table of a partition, the
 * parent of an inheritance child).  PL/pgSQL, so that its plans are kept
 * for the session: the event triggers call it for every command of their
 * tags.  One relation at a time, by the catalogs' and the mappings'
 * indexes (a plan for an array of them scans pg_class).
 */
CREATE FUNCTION connect_guard.mappings_of_relations(p_relids oid[], p_with_ancestors boolean DEFAULT true)
RETURNS integer[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rels oid[] := p_relids;
    v_parents oid[];
    v_rel oid;
    v_nsp name;
    v_name name;
    v_ids integer[] := '{}';
BEGIN
    -- the ancestors, a level at a time (by pg_inherits' index on inhrelid; most tables have none)
    WHILE p_with_ancestors LOOP
        SELECT array_agg(DISTINCT i.inhparent) INTO v_parents
          FROM unnest(v_rels) r(relid) JOIN pg_inherits i ON i.inhrelid = r.relid
         WHERE i.inhparent <> ALL (v_rels);
        EXIT WHEN v_parents IS NULL;
        v_rels := v_rels || v_parents;
    END LOOP;
    FOREACH v_rel IN ARRAY v_rels LOOP
        SELECT n.nspname, cl.relname INTO v_nsp, v_name
          FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = v_rel;
        v_ids := v_ids || ARRAY(SELECT m.mapping_id FROM connect_guard.mapping m
                                 WHERE m.table_schema = v_nsp AND m.table_name = v_name);
    END LOOP;
    RETURN CASE WHEN cardinality(v_ids) > 0 THEN ARRAY(SELECT DISTINCT unnest(v_ids)) END;
END;
$$;

/*
 * connect_guard.note_partition_truncated is called by the truncate watch
 * (truncate_watch.c) when one partition of a mapped table is truncated on
 * its own: its rows left the mapped table without a log entry.  SECURITY
 * DEFINER: the truncating role has no right on the catalog; the C trigger
 * calls it through fmgr, and nobody else may.
 */
CREATE FUNCTION connect_guard.note_partition_truncated(p_relid oid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m connect_guard.mapping;
BEGIN
    FOR m IN SELECT * FROM connect_guard.mapping
              WHERE mapping_id = ANY (connect_guard.mappings_of_relations(ARRAY[p_relid])) ORDER BY mapping_id LOOP
        PERFORM connect_guard.schema_changes_note(m, jsonb_build_array(jsonb_build_object(
            'kind', 'partition_truncated', 'object', p_relid::regclass::text, 'expected', 'its rows deleted with a log entry',
            'actual', 'TRUNCATE of the partition alone', 'needs_reload', true)), 'truncate', 'TRUNCATE');
    END LOOP;
END;
$$;

/*
 * connect_guard.schema_change_present: is the cause of an open schema
 * change still there (NULL for an event: there is nothing to look at)?
 * SECURITY DEFINER, so that the monitoring roles that read
 * connect_schema_drift need no right on the catalog; it reads no row of the
 * application's tables.
 */
CREATE FUNCTION connect_guard.schema_change_present(p_schema_change_id integer)
RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN connect_guard.schema_change_is_event(s.kind) THEN NULL
                ELSE EXISTS (SELECT 1 FROM connect_guard.mapping_findings(m, false) f
                              WHERE f.kind = s.kind AND f.object = s.object) END
      FROM connect_guard.schema_change s JOIN connect_guard.mapping m USING (mapping_id)
     WHERE s.schema_change_id = p_schema_change_id
$$;

CREATE VIEW connect_schema_drift AS
SELECT c.name AS connection,
       connect_guard.mapping_relid(m) AS table_name,
       m.table_schema,
       m.table_name AS table_relname,
       m.object_name,
       m.state AS mapping_state,
       s.kind,
       s.object,
       s.expected,
       s.actual,
       s.needs_reload,
       connect_guard.schema_change_present(s.schema_change_id) AS still_present,
       s.detected_by,
       s.detected_in,
       s.detected_at,
       s.actor
  FROM connect_guard.schema_change s
  JOIN connect_guard.mapping m USING (mapping_id)
  JOIN connect_guard.connection c ON c.connection_id = m.connection_id
 WHERE s.resolved_at IS NULL;
/* ------------------------------------------------------------------------
 * Connections and mappings (for the DBA: the caller needs the privileges the
 * work needs, e.g. to create a trigger on a mapped table)
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_create_connection(name text, adapter text DEFAULT 'local',
                                          options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id integer;
    v_options record;
BEGIN
    PERFORM connect_guard.require_not_null(name, 'connection name',
        'Use 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit.');
    PERFORM connect_guard.require_not_null(adapter, 'adapter',
        'Use ''local'' (the consumer reads the local state), ''heroku'' (Heroku Connect API) or ''webhook''.');
    PERFORM connect_guard.require_not_null(options, 'options', 'Pass options as jsonb, for example ''{}''::jsonb.');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_name',
            MESSAGE = format('invalid connection name %s', quote_literal(name)),
            HINT = 'Use 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit.';
    END IF;
    IF adapter NOT IN ('local', 'heroku', 'webhook') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown adapter %s', quote_literal(adapter)),
            HINT = 'Use ''local'' (the consumer reads the local state), ''heroku'' (Heroku Connect API) or ''webhook''.';
    END IF;
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'connection options must be a JSON object',
            HINT = 'Pass options as jsonb, for example ''{}''::jsonb.';
    END IF;
    IF EXISTS (SELECT 1 FROM connect_guard.connection c WHERE c.name = connect_create_connection.name) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('connection "%s" already exists', name),
            HINT = 'Choose another name, or drop the old connection with connect_drop_connection().';
    END IF;

    -- per adapter (18_options.sql); an inline token or key goes to connection_secret, not options
    SELECT * INTO v_options FROM connect_guard.prepare_options(adapter, options);

    INSERT INTO connect_guard.connection (name, adapter, options, last_tick)
    VALUES (name, adapter, v_options.options, (connect_guard.new_tick()).tick_id)
    RETURNING connection_id INTO v_id;
    IF v_options.secret IS NOT NULL THEN
        INSERT INTO connect_guard.connection_secret (connection_id, secret) VALUES (v_id, v_options.secret);
    END IF;
    PERFORM connect_guard.log_event(v_id, 'connection_created',
                                    jsonb_build_object('adapter', adapter,
                                                       'options', connect_guard.redact(v_options.options)));
    RETURN v_id;
END;
$$;

CREATE FUNCTION connect_map_table(connection text, tbl regclass, object_name text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r record;
    v_id integer;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_table(tbl);
    IF btrim(object_name) = '' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'object name must not be empty',
            HINT = 'Pass the Salesforce object''s API name, for example ''Contact'', or NULL for the table''s name.';
    END IF;
    SELECT n.nspname, cl.relname, cl.relkind, cl.relpersistence, cl.relispartition
      INTO r
      FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE cl.oid = tbl;
    IF r.relkind NOT IN ('r', 'p') OR r.relpersistence = 't' OR r.nspname = 'connect_guard' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('cannot map "%s"', tbl),
            DETAIL = 'Only permanent and unlogged tables outside the connect_guard schema can be mapped.',
            HINT = 'Map an ordinary table of the application.';
    END IF;
    IF r.relispartition THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('cannot map "%s" because it is a partition', tbl),
            HINT = 'Map the partitioned table instead; its partitions are captured under its name.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = tbl AND i.indisprimary) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('table "%s" has no primary key', tbl),
            DETAIL = 'The sync service identifies rows by their primary key (the record_id of the trigger log).',
            HINT = format('Add one, for example ALTER TABLE %s ADD PRIMARY KEY (id).', tbl);
    END IF;
    IF EXISTS (SELECT 1 FROM connect_guard.mapping m
                WHERE m.connection_id = c.connection_id
                  AND m.table_schema = r.nspname AND m.table_name = r.relname) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('table "%s" is already mapped by connection "%s"', tbl, c.name),
            HINT = 'See connect_mappings; unmap it first with connect_unmap_table() to map it again.';
    END IF;

    -- which log the table's changes reach (77_connect_schema.sql): Connect's tables get no trigger of ours
    PERFORM connect_guard.check_table_log_source(c, tbl);
    -- one pair of triggers per table, whatever the number of connections mapping it
    IF c.log_schema IS NULL AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                                             WHERE t.tgrelid = tbl AND t.tgname = '_connect_guard_capture') THEN
        EXECUTE format('CREATE TRIGGER _connect_guard_capture AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
                       'FOR EACH ROW EXECUTE FUNCTION connect_guard.capture(%L, %L)',
                       r.nspname, r.relname, r.nspname, r.relname);
        EXECUTE format('CREATE TRIGGER _connect_guard_truncate AFTER TRUNCATE ON %I.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION connect_guard.capture(%L, %L)',
                       r.nspname, r.relname, r.nspname, r.relname);
    END IF;

    INSERT INTO connect_guard.mapping (connection_id, table_schema, table_name, object_name)
    VALUES (c.connection_id, r.nspname, r.relname, coalesce(object_name, r.relname))
    RETURNING mapping_id INTO v_id;
    -- what the table looks like now is what the mapping expects, and its watch (19_table_shape.sql);
    -- what it cannot expect (an inheritance child: its rows are not captured) is reported at once
    PERFORM connect_guard.mapping_init(v_id);
    PERFORM connect_guard.schema_changes_record(ARRAY[v_id], 'map', 'connect_map_table');
    PERFORM connect_guard.fence_refresh();
    PERFORM connect_guard.log_event(c.connection_id, 'table_mapped',
                                    jsonb_build_object('table', format('%I.%I', r.nspname, r.relname),
                                                       'object_name', coalesce(object_name, r.relname)));
    RETURN v_id;
END;
$$;

/*
 * connect_guard.drop_capture_if_unused removes a table's capture triggers
 * once no connection maps it any more.
 */
CREATE FUNCTION connect_guard.drop_capture_if_unused(p_schema text, p_table text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- a table of an adopted schema has none (and DROP TRIGGER would lock it for nothing)
    IF NOT EXISTS (SELECT 1 FROM connect_guard.mapping m
                    WHERE m.table_schema = p_schema AND m.table_name = p_table)
       AND EXISTS (SELECT 1 FROM pg_trigger t
                    WHERE t.tgrelid = to_regclass(format('%I.%I', p_schema, p_table))
                      AND t.tgname IN ('_connect_guard_capture', '_connect_guard_truncate')) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS _connect_guard_capture ON %I.%I', p_schema, p_table);
        EXECUTE format('DROP TRIGGER IF EXISTS _connect_guard_truncate ON %I.%I', p_schema, p_table);
        PERFORM connect_guard.drop_truncate_watch(format('%I.%I', p_schema, p_table)::regclass);
    END IF;
END;
$$;

-- connect_guard.mapping_of returns the mapping of tbl by a connection, or raises the error
CREATE FUNCTION connect_guard.mapping_of(c connect_guard.connection, tbl regclass)
RETURNS connect_guard.mapping
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m connect_guard.mapping;
BEGIN
    PERFORM connect_guard.require_table(tbl);
    SELECT mp.* INTO m
      FROM connect_guard.mapping mp
      JOIN pg_class cl ON cl.oid = tbl
      JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE mp.connection_id = c.connection_id AND mp.table_schema = n.nspname AND mp.table_name = cl.relname
       FOR UPDATE OF mp;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('table "%s" is not mapped by connection "%s"', tbl, c.name),
            HINT = 'See connect_mappings for the tables each connection maps.';
    END IF;
    RETURN m;
END;
$$;

CREATE FUNCTION connect_unmap_table(connection text, tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
BEGIN
    c := connect_guard.connection_for_update(connection);
    m := connect_guard.mapping_of(c, tbl);
    DELETE FROM connect_guard.mapping WHERE mapping_id = m.mapping_id;
    PERFORM connect_guard.drop_capture_if_unused(m.table_schema, m.table_name);
    PERFORM connect_guard.fence_refresh();
    PERFORM connect_guard.log_event(c.connection_id, 'table_unmapped',
                                    jsonb_build_object('table', format('%I.%I', m.table_schema, m.table_name)));
END;
$$;

CREATE FUNCTION connect_drop_connection(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
BEGIN
    c := connect_guard.connection_for_update(name);
    FOR m IN DELETE FROM connect_guard.mapping mp WHERE mp.connection_id = c.connection_id RETURNING mp.* LOOP
        PERFORM connect_guard.drop_capture_if_unused(m.table_schema, m.table_name);
    END LOOP;
    IF c.fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(c.fence_id);
    END IF;
    PERFORM connect_guard.fence_refresh();
    PERFORM connect_guard.log_event(c.connection_id, 'connection_dropped');
    DELETE FROM connect_guard.connection WHERE connection_id = c.connection_id;
END;
$$;
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
 * connect_revoke_consumer takes the connection away from a role; a role
 * that consumes no connection any more also loses EXECUTE on the consumer
 * functions (which alone would give it nothing).  A batch it holds stays
 * open and is handed to the next consumer that asks.  Returns false when
 * the role was no consumer of the connection.
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
    IF NOT EXISTS (SELECT 1 FROM connect_guard.consumer k WHERE k.role_name = role)
       AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role) THEN
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s, %s, %s FROM %I',
                       '@extschema@.connect_next_batch(text)'::regprocedure,
                       '@extschema@.connect_batch_events(bigint)'::regprocedure,
                       '@extschema@.connect_finish_batch(bigint)'::regprocedure, role);
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
/* ------------------------------------------------------------------------
 * The consumer side: snapshot-safe batches and high-water marks.  These run
 * as the extension owner (SECURITY DEFINER) so that the sync service's role
 * needs EXECUTE on them and nothing else; each checks that the role is a
 * consumer of the batch's connection (25_consumers.sql).
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_next_batch(connection text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    t connect_guard.tick;
    v_batch bigint;
BEGIN
    -- Only a consumer of the connection gets further (reading takes no xid).
    -- The tick comes next, before this transaction takes an xid by locking
    -- the connection: a snapshot held back by our own xid would give the
    -- next tick a lower scan_from, and retention would lag one tick more.
    c := connect_guard.require_connection(connection);
    PERFORM connect_guard.require_consumer(c.connection_id);
    t := connect_guard.new_tick();
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_own_log(c, 'connect_next_batch()');

    -- an unfinished batch is handed out again: delivery is at least once; its
    -- taker now finishes it (the role that took it before may have gone for good)
    UPDATE connect_guard.batch b SET deliveries = b.deliveries + 1, taken_by = session_user
     WHERE b.connection_id = c.connection_id AND b.finished_at IS NULL
    RETURNING b.batch_id INTO v_batch;
    IF FOUND THEN
        RETURN v_batch;
    END IF;

    -- paused, or a connect_pause() waits for the connection to be idle (14_states.sql)
    IF c.state IN ('PAUSING', 'PAUSED') OR connect_guard.pause_announced(c.connection_id) THEN
        RETURN NULL;
    END IF;

    IF t.tick_id <= c.last_tick THEN
        -- a concurrent call moved the mark past our tick while we waited for the lock
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM connect_guard.tick_entries(c.connection_id, c.last_tick, t.tick_id)) THEN
        -- nothing new for this connection: move its mark without a batch
        UPDATE connect_guard.connection SET last_tick = t.tick_id
         WHERE connection_id = c.connection_id;
        RETURN NULL;
    END IF;

    INSERT INTO connect_guard.batch (connection_id, prev_tick, cur_tick)
    VALUES (c.connection_id, c.last_tick, t.tick_id)
    RETURNING batch_id INTO v_batch;
    PERFORM connect_guard.connection_goto(c.connection_id, 'POLLING_DB_CHANGES', ARRAY['IDLE']);
    RETURN v_batch;
END;
$$;

/*
 * connect_guard.open_batch returns an unfinished batch, or raises the error
 * that explains why the batch cannot be used.
 */
CREATE FUNCTION connect_guard.open_batch(p_batch_id bigint)
RETURNS connect_guard.batch
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b connect_guard.batch;
BEGIN
    SELECT * INTO b FROM connect_guard.batch WHERE batch_id = p_batch_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('batch %s does not exist', coalesce(p_batch_id::text, 'NULL')),
            HINT = 'Take a batch with connect_next_batch(connection).';
    END IF;
    IF b.finished_at IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('batch %s is already finished', p_batch_id),
            DETAIL = 'Its entries were delivered and the high-water mark has moved past them.',
            HINT = 'Take the next batch with connect_next_batch(connection).';
    END IF;
    RETURN b;
END;
$$;

-- STRICT: no batch (the NULL connect_next_batch returns when nothing is new) has no events
CREATE FUNCTION connect_batch_events(batch_id bigint)
RETURNS SETOF connect_guard.trigger_log
LANGUAGE plpgsql STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b connect_guard.batch;
BEGIN
    b := connect_guard.open_batch(batch_id);
    PERFORM connect_guard.require_consumer(b.connection_id);
    RETURN QUERY SELECT * FROM connect_guard.tick_entries(b.connection_id, b.prev_tick, b.cur_tick);
END;
$$;

-- STRICT: no batch, nothing to finish (NULL)
CREATE FUNCTION connect_finish_batch(batch_id bigint)
RETURNS bigint
LANGUAGE plpgsql STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b connect_guard.batch;
    c connect_guard.connection;
    v_count bigint;
    v_max bigint;
BEGIN
    b := connect_guard.open_batch(batch_id);
    PERFORM connect_guard.require_consumer(b.connection_id);
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = b.connection_id FOR UPDATE;
    -- re-read under the connection lock: a concurrent finish may have won
    b := connect_guard.open_batch(batch_id);
    IF b.taken_by <> session_user
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('batch %s belongs to role "%s"', batch_id, b.taken_by),
            DETAIL = format('Only the consumer that took a batch last finishes it; you are "%s".', session_user),
            HINT = 'Finish the batch from the sync service''s own role, take it over with connect_next_batch() (an open batch is handed out again), or finish it as a superuser.';
    END IF;

    SELECT count(*), max(e.id) INTO v_count, v_max
      FROM connect_guard.tick_entries(b.connection_id, b.prev_tick, b.cur_tick) e;
    UPDATE connect_guard.batch SET finished_at = clock_timestamp(), entries = v_count
     WHERE connect_guard.batch.batch_id = b.batch_id;
    UPDATE connect_guard.connection
       SET last_tick = b.cur_tick,
           hwm_id = greatest(hwm_id, coalesce(v_max, 0)),
           last_batch_at = clock_timestamp()
     WHERE connection_id = c.connection_id;
    PERFORM connect_guard.connection_goto(c.connection_id, 'IDLE', ARRAY['POLLING_DB_CHANGES']);
    PERFORM connect_guard.mappings_goto(c.connection_id, NULL, 'DATA_SYNCED', ARRAY['INITIAL']);
    RETURN v_count;
END;
$$;
/* ------------------------------------------------------------------------
 * Retention
 * ------------------------------------------------------------------------ */

/*
 * connect_archive_consumed moves up to max_rows entries that every
 * connection has consumed into trigger_log_archive (state SUCCESS unless a
 * consumer recorded otherwise), and forgets ticks and batches nobody needs.
 * It takes only row locks; call it repeatedly, one transaction each, until
 * it returns 0 (the worker does).
 */
CREATE FUNCTION connect_archive_consumed(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_bound bigint;
    v_moved bigint;
    v_keep_tick bigint;
BEGIN
    PERFORM connect_guard.require_not_null(max_rows, 'max_rows', 'Pass the number of entries to move in this call, for example 10000.');
    IF max_rows < 1 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('max_rows must be at least 1, not %s', max_rows),
            HINT = 'Pass the number of entries to move in this call, for example 10000.';
    END IF;

    -- every entry with id <= scan_from of the oldest high-water mark is consumed by all
    -- (connections with a log of their own: Connect archives its log itself, 15_log_sources.sql)
    SELECT min(t.scan_from) INTO v_bound
      FROM connect_guard.connection c JOIN connect_guard.tick t ON t.tick_id = c.last_tick
     WHERE c.log_schema IS NULL;
    IF v_bound IS NULL THEN
        v_bound := (connect_guard.new_tick()).scan_from;
    END IF;

    WITH moved AS (
        DELETE FROM connect_guard.trigger_log l
         WHERE l.id IN (SELECT id FROM connect_guard.trigger_log
                         WHERE id <= v_bound ORDER BY id LIMIT max_rows)
        RETURNING l.*
    )
    INSERT INTO connect_guard.trigger_log_archive
    SELECT id, txid, created_at, clock_timestamp(), clock_timestamp(), pg_current_xact_id(),
           CASE WHEN state IN ('NEW', 'PENDING') THEN 'SUCCESS' ELSE state END,
           action, table_schema, table_name, record_id, sfid, old, "values", sf_result, sf_message
      FROM moved;
    GET DIAGNOSTICS v_moved = ROW_COUNT;

    -- keep every tick a connection stands on, and the newest tick settled
    -- for every snapshot to come (new ticks compute scan_from from it)
    SELECT least((SELECT min(last_tick) FROM connect_guard.connection WHERE log_schema IS NULL),
                 (SELECT max(tick_id) FROM connect_guard.tick
                   WHERE xid_bound <= pg_snapshot_xmin(pg_current_snapshot())))
      INTO v_keep_tick;
    IF v_keep_tick IS NOT NULL THEN
        DELETE FROM connect_guard.tick WHERE tick_id < v_keep_tick;
    END IF;
    DELETE FROM connect_guard.batch
     WHERE finished_at < clock_timestamp() - interval '7 days';
    RETURN v_moved;
END;
$$;

CREATE FUNCTION connect_purge_archive(older_than interval DEFAULT '7 days',
                                      max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_purged bigint;
    v_cutoff timestamptz;
BEGIN
    PERFORM connect_guard.require_not_null(older_than, 'older_than', 'Pass how long archived entries are kept, for example ''7 days''.');
    PERFORM connect_guard.require_not_null(max_rows, 'max_rows', 'Pass the number of entries to delete in this call, for example 10000.');
    IF older_than < interval '0' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'older_than must be a non-negative interval',
            HINT = 'Pass how long archived entries are kept, for example ''7 days''.';
    END IF;
    IF max_rows < 1 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('max_rows must be at least 1, not %s', max_rows),
            HINT = 'Pass the number of entries to delete in this call, for example 10000.';
    END IF;
    BEGIN
        v_cutoff := clock_timestamp() - older_than;
    EXCEPTION WHEN datetime_field_overflow THEN
        v_cutoff := '-infinity';        -- older than the calendar goes back: nothing is
    END;
    DELETE FROM connect_guard.trigger_log_archive a
     WHERE a.id IN (SELECT id FROM connect_guard.trigger_log_archive
                     WHERE processed_at < v_cutoff
                     ORDER BY id LIMIT max_rows);
    GET DIAGNOSTICS v_purged = ROW_COUNT;
    RETURN v_purged;
END;
$$;
/* ------------------------------------------------------------------------
 * Views
 * ------------------------------------------------------------------------ */

CREATE VIEW connect_connections AS
SELECT c.name AS connection,
       c.adapter,
       c.state,
       c.state_since,
       (SELECT count(*) FROM connect_guard.mapping m WHERE m.connection_id = c.connection_id) AS mappings,
       connect_guard.redact(c.options) AS options,
       c.created_at
  FROM connect_guard.connection c;

CREATE VIEW connect_mappings AS
SELECT c.name AS connection,
       to_regclass(format('%I.%I', m.table_schema, m.table_name)) AS table_name,
       m.table_schema,
       m.table_name AS table_relname,
       m.object_name,
       m.state,
       m.state_since,
       m.remote_id
  FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id);

-- what each connection's log says, own or Connect's (15_log_sources.sql)
CREATE VIEW connect_high_water_marks AS
SELECT c.name AS connection,
       s.hwm_tick,
       s.hwm_id,
       s.hwm_txid,
       s.log_head,
       s.backlog,
       (SELECT b.batch_id FROM connect_guard.batch b
         WHERE b.connection_id = c.connection_id AND b.finished_at IS NULL) AS open_batch,
       c.last_batch_at,
       c.remote_hwm AS sync_service_hwm,
       c.remote_hwm_at AS sync_service_hwm_at,
       -- for monitoring: how long the oldest entry of the backlog has waited,
       -- and since when the mark has not moved (a consumer that stopped polling)
       s.oldest_pending_at,
       s.hwm_at,
       s.log_kind,
       s.log_table,
       s.failed,
       s.ids_left,
       s.ids_used_pct
  FROM connect_guard.connection c CROSS JOIN LATERAL connect_guard.log_status(c.connection_id) s;

CREATE VIEW connect_fences AS
SELECT f.fence_id,
       f.scope,
       f.connection,
       f.reason,
       f.since,
       f.raised_by,
       f.tables,
       (SELECT array_agg(r.relid::regclass ORDER BY r.relid::regclass::text)
          FROM connect_guard.fence_relations() r WHERE r.fence_id = f.fence_id) AS fenced_tables
  FROM connect_guard.fence_list() f;

CREATE VIEW connect_status AS
SELECT c.name AS connection,
       c.adapter,
       c.state,
       c.state_since,
       c.state IN ('PAUSING', 'PAUSED') AS paused,
       c.state_reason AS paused_because,
       f.fence_id IS NOT NULL OR m.fence_id IS NOT NULL AS fenced,
       coalesce(f.reason, m.reason) AS fenced_because,
       coalesce(f.since, m.since) AS fenced_since,
       h.hwm_id,
       h.log_head,
       h.backlog,
       h.open_batch,
       h.last_batch_at,
       h.log_table,
       h.oldest_pending_at,
       h.failed,
       h.ids_used_pct,
       -- open schema changes of its mappings: connect_schema_drift (19_table_shape_changes.sql) says what
       (SELECT count(*) FROM connect_guard.schema_change s JOIN connect_guard.mapping mp USING (mapping_id)
         WHERE mp.connection_id = c.connection_id AND s.resolved_at IS NULL) AS schema_changes
  FROM connect_guard.connection c
  JOIN connect_high_water_marks h ON h.connection = c.name
  LEFT JOIN connect_guard.fence_list() f ON f.fence_id = c.fence_id
  LEFT JOIN LATERAL (SELECT * FROM connect_guard.fence_list() l
                      WHERE l.scope IN ('mapped', 'database', 'reload') ORDER BY l.fence_id LIMIT 1) m ON true;
/* ------------------------------------------------------------------------
 * Mapping configurations from files and from Connect: a configuration in
 * Connect's export format (17_config_format.sql) is kept on each mapping it
 * names (mapping.config), and compared with the table at once
 * (19_table_shape_changes.sql): a field the table has no column for, or a column
 * no field names, is a schema change.  An imported file is stored by
 * connect_import_config() (64_config.sql); Connect's own configuration when
 * the worker brings its export, or Connect accepted an import (the request
 * side, 56_request_states.sql, calls config_answered()).
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.config_store puts the configuration of each mapping of
 * p_doc (a valid file) on connection p_connection_id's mapping of that
 * object (object names ignore case, as in Salesforce), notes where it came
 * from (p_source: 'import', 'connect') and checks those mappings.  Returns
 * {"stored": [tables], "not_mapped_here": [objects], "schema_changes": n}.
 */
CREATE FUNCTION connect_guard.config_store(p_connection_id integer, p_doc jsonb, p_source text,
                                           p_detected_by text, p_context text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids integer[];
    v_stored jsonb;
    v_missing jsonb;
BEGIN
    WITH file AS (
        SELECT e ->> 'object_name' AS object_name, e -> 'config' AS config
          FROM jsonb_array_elements(p_doc -> 'mappings') e),
    stored AS (
        UPDATE connect_guard.mapping mp
           SET config = f.config, config_source = p_source, config_at = clock_timestamp()
          FROM file f
         WHERE mp.connection_id = p_connection_id AND lower(mp.object_name) = lower(f.object_name)
        RETURNING mp.mapping_id, format('%I.%I', mp.table_schema, mp.table_name) AS tbl)
    SELECT array_agg(mapping_id), coalesce(jsonb_agg(tbl ORDER BY tbl), '[]') INTO v_ids, v_stored FROM stored;
    SELECT coalesce(jsonb_agg(e ->> 'object_name' ORDER BY e ->> 'object_name'), '[]') INTO v_missing
      FROM jsonb_array_elements(p_doc -> 'mappings') e
     WHERE NOT EXISTS (SELECT 1 FROM connect_guard.mapping mp
                        WHERE mp.connection_id = p_connection_id AND lower(mp.object_name) = lower(e ->> 'object_name'));
    RETURN jsonb_build_object('stored', v_stored, 'not_mapped_here', v_missing,
                              'schema_changes', CASE WHEN v_ids IS NULL THEN 0
                                                     ELSE connect_guard.schema_changes_record(v_ids, p_detected_by, p_context) END);
END;
$$;

/*
 * connect_guard.config_answered is what an export or import request does
 * locally once Connect answered it (p_result: its answer; p_payload: the
 * file sent): an export's file becomes the configuration of the mappings
 * it names, and so does an imported file that Connect accepted.  Returns
 * NULL, or why the answer cannot be used (the request then fails with it).
 */
CREATE FUNCTION connect_guard.config_answered(p_connection_id integer, p_action text, p_request_id bigint,
                                              p_result jsonb, p_payload jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_problem text;
    v_report jsonb;
BEGIN
    IF p_action = 'export' THEN
        v_problem := connect_guard.config_problem(p_result);
        IF v_problem IS NOT NULL THEN
            RETURN format('Connect''s export is not a configuration file connect_guard can read: %s', v_problem);
        END IF;
        v_report := connect_guard.config_store(p_connection_id, p_result, 'connect', 'export',
                                               format('export request %s', p_request_id));
        PERFORM connect_guard.log_event(p_connection_id, 'config_exported', jsonb_build_object(
            'request_id', p_request_id, 'mappings', jsonb_array_length(p_result -> 'mappings')) || v_report);
    ELSIF p_action = 'import' THEN
        v_report := connect_guard.config_store(p_connection_id, p_payload, 'connect', 'import',
                                               format('import request %s', p_request_id));
        PERFORM connect_guard.log_event(p_connection_id, 'config_imported', jsonb_build_object(
            'request_id', p_request_id, 'mappings', jsonb_array_length(p_payload -> 'mappings'),
            'connect_answer', p_result) || v_report);
    END IF;
    RETURN NULL;
END;
$$;
/* ------------------------------------------------------------------------
 * Signals to the sync service: Heroku Connect's API (adapter 'heroku') and
 * signed webhooks (adapter 'webhook').
 *
 * A user's call never makes an HTTP request: connect_pause(),
 * connect_resume(), connect_reload_mapping() and connect_refresh() store a
 * request in connect_guard.request and wake the background worker at
 * commit.  The worker (signals.c) takes due requests in a short transaction,
 * sends them with no transaction open, and records each outcome through
 * connect_guard.request_outcome(), which moves the request and the local
 * state along:
 *
 *   phase 'send'     POST the action (heroku: expect 202; webhook: any 2xx),
 *                    retried with backoff (1 s doubling, at most 60 s) up to
 *                    connect_guard.http_max_attempts.  A webhook answers a
 *                    reload with 200 when it has reloaded, or 202 when it
 *                    will, and then calls connect_mapping_reloaded()
 *   phase 'confirm'  heroku only: GET the connection (deep) until Connect
 *                    reports the state the action leads to, for at most
 *                    the request's timeout_s
 *   phase 'apply'    finish locally: a pause waits for the open batch, then
 *                    raises the fence and waits for the writers in flight
 *
 * Per connection, requests are sent one at a time, oldest first (but
 * reloads of different mappings together); a pause
 * or resume that a newer one replaced is not sent any more, and once done
 * it leaves the local state to the newer one.
 *
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.request (
    request_id      bigserial PRIMARY KEY,
    connection_id   integer NOT NULL REFERENCES connect_guard.connection ON DELETE CASCADE,
    -- the mapping a reload is for (its table and object name are also in params)
    mapping_id      integer REFERENCES connect_guard.mapping ON DELETE SET NULL,
    action          text NOT NULL CHECK (action IN ('pause', 'resume', 'reload', 'refresh', 'export', 'import')),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    phase           text NOT NULL DEFAULT 'send' CHECK (phase IN ('send', 'confirm', 'apply')),
    -- block_writes, cancel_writers, reason, timeout_s (how long to wait for the remote state), ...
    params          jsonb NOT NULL DEFAULT '{}',
    -- HTTP tries to deliver the action, and GETs polling its effect
    attempts        integer NOT NULL DEFAULT 0,
    polls           integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- until when the confirm or apply phase may go on
    deadline        timestamptz,
    last_http_status integer,
    -- the last failure, kept after a later success
    last_error      text,
    -- the last state Connect reported (of the connection, or of the mapping for a reload)
    remote_state    text,
    -- what an import sends (the configuration file), and the answer to an export or import (64_config.sql)
    payload         jsonb,
    result          jsonb,
    requested_by    name NOT NULL DEFAULT session_user,
    -- lets connect_wait_state() refuse to wait for a request its own transaction made
    created_xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at    timestamptz
);
CREATE INDEX request_pending ON connect_guard.request (connection_id, request_id) WHERE status = 'pending';
CREATE INDEX ON connect_guard.request (connection_id, request_id);
-- what the sync service answered, and what was made of it, holds no secret (16_secrets.sql)
CREATE TRIGGER scrub_stored BEFORE INSERT OR UPDATE OF last_error, remote_state ON connect_guard.request
    FOR EACH ROW WHEN (NEW.last_error IS NOT NULL OR NEW.remote_state IS NOT NULL)
    EXECUTE FUNCTION connect_guard.scrub_stored('last_error', 'remote_state');

SELECT pg_catalog.pg_extension_config_dump('connect_guard.request', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.request_request_id_seq', '');

/*
 * connect_guard.request_enqueue stores a request for the worker and wakes
 * it at commit; the entry point for other modules too (e.g. a reload after
 * a rollback).
 */
CREATE FUNCTION connect_guard.request_enqueue(p_connection_id integer, p_action text,
                                              p_mapping_id integer DEFAULT NULL,
                                              p_params jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
    v_adapter text;
BEGIN
    SELECT c.adapter INTO v_adapter FROM connect_guard.connection c WHERE c.connection_id = p_connection_id;
    IF v_adapter IS DISTINCT FROM 'heroku' AND v_adapter IS DISTINCT FROM 'webhook' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection %s has no sync service to send a %s request to', p_connection_id, p_action),
            DETAIL = format('Its adapter is %s.', coalesce(v_adapter, 'unknown: the connection does not exist')),
            HINT = 'Requests go to heroku and webhook connections only; a local consumer reads the local state.';
    END IF;
    -- without the worker nobody would send it (08_worker.sql)
    PERFORM connect_guard.require_worker(format('sending a %s request to the sync service', p_action));
    INSERT INTO connect_guard.request (connection_id, mapping_id, action, params)
    VALUES (p_connection_id, p_mapping_id, p_action, coalesce(p_params, '{}'))
    RETURNING request_id INTO v_id;
    PERFORM connect_guard.log_event(p_connection_id, 'request_queued',
                                    jsonb_build_object('request_id', v_id, 'action', p_action) || coalesce(p_params, '{}'));
    PERFORM connect_guard.wake_worker();     -- at commit: the worker must see the row
    RETURN v_id;
END;
$$;

-- connect_guard.latest_state_request: the newest pause or resume of a connection
CREATE FUNCTION connect_guard.latest_state_request(p_connection_id integer)
RETURNS connect_guard.request
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM connect_guard.request r
     WHERE r.connection_id = p_connection_id AND r.action IN ('pause', 'resume')
     ORDER BY r.request_id DESC LIMIT 1;
$$;

CREATE VIEW connect_requests AS
SELECT r.request_id,
       c.name AS connection,
       c.adapter,
       r.action,
       r.params ->> 'table' AS table_name,
       r.status,
       r.phase,
       r.attempts,
       r.polls,
       CASE WHEN r.status = 'pending' THEN r.next_attempt_at END AS next_attempt_at,
       r.last_http_status,
       r.last_error,
       r.remote_state,
       r.params ->> 'reason' AS reason,
       r.requested_by,
       r.created_at,
       r.updated_at,
       r.completed_at
  FROM connect_guard.request r JOIN connect_guard.connection c USING (connection_id);

GRANT SELECT ON connect_requests TO pg_monitor;
/* ------------------------------------------------------------------------
 * Mapping reloads: what a detected rollback (75_rollback.sql) and
 * connect_reload_mapping() do.  A mapping goes to RELOAD_TABLE, its sync
 * service is asked to reload it, and with connect_guard.fence_on_rollback
 * its tables are fenced (scope 'reload') until every reload of the
 * incident is acknowledged: Connect's deep GET shows DATA_SYNCED, a
 * webhook answers 200, or a local consumer (or a webhook that answered
 * 202) calls connect_mapping_reloaded().  A reload overwrites the table,
 * so a write made meanwhile would be lost.
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.rollback_incident (
    incident_id     serial PRIMARY KEY,
    detected_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    source          text NOT NULL CHECK (source IN ('worker', 'manual')),
    findings        jsonb NOT NULL,
    mapping_ids     integer[] NOT NULL,
    fence_id        integer,
    reload_requests bigint[] NOT NULL DEFAULT '{}',
    -- entries of Connect's logs the restore brought back unfinished though processed (77_connect_schema.sql)
    restored_as_new jsonb NOT NULL DEFAULT '[]',
    resolved_at     timestamptz,
    resolution      text
);
SELECT pg_catalog.pg_extension_config_dump('connect_guard.rollback_incident', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.rollback_incident_incident_id_seq', '');

/*
 * connect_guard.reload_fence raises a 'reload' fence over the given
 * mappings' tables, or returns NULL when fence_on_rollback is off, the
 * fence is unavailable, or a maintenance fence already covers them.
 */
CREATE FUNCTION connect_guard.reload_fence(p_mapping_ids integer[], p_reason text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    -- fence_available() first: calling it loads the library, which registers fence_on_rollback (witness.c)
    IF NOT connect_guard.fence_available() THEN
        RETURN NULL;
    END IF;
    IF NOT current_setting('connect_guard.fence_on_rollback')::boolean
       OR EXISTS (SELECT 1 FROM connect_guard.fence_list() f WHERE f.scope = 'database') THEN
        RETURN NULL;
    END IF;
    t := connect_guard.fence_targets(NULL, p_mapping_ids);
    IF cardinality(t.relids) = 0 THEN
        RETURN NULL;
    END IF;
    -- for a reload fence the connection id is the role whose sessions with xmlbinary = 'hex' write through
    -- (the sync service's reload, fence.c; 77_connect_schema.sql)
    RETURN connect_guard.fence_raise('reload', connect_guard.reload_fence_writer(p_mapping_ids), NULL, p_reason,
                                     t.relids, t.relconnections);
END;
$$;

/*
 * connect_guard.reload_mappings puts mappings in RELOAD_TABLE and asks each
 * one's sync service for the reload (a local consumer reads the state and
 * acknowledges with connect_mapping_reloaded()); returns the request ids.
 */
CREATE FUNCTION connect_guard.reload_mappings(p_mapping_ids integer[], p_reason text, p_timeout interval)
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m record;
    v_ids bigint[] := '{}';
BEGIN
    FOR m IN
        SELECT mp.*, c.adapter
          FROM connect_guard.mappings_goto(NULL, p_mapping_ids, 'RELOAD_TABLE') mp
          JOIN connect_guard.connection c USING (connection_id)
    LOOP
        IF m.adapter IN ('heroku', 'webhook')
           AND NOT EXISTS (SELECT 1 FROM connect_guard.request r
                            WHERE r.mapping_id = m.mapping_id AND r.action = 'reload' AND r.status = 'pending') THEN
            v_ids := v_ids || connect_guard.request_enqueue(m.connection_id, 'reload', m.mapping_id,
                jsonb_build_object('table', format('%I.%I', m.table_schema, m.table_name),
                                   'object_name', m.object_name, 'reason', p_reason,
                                   'timeout_s', extract(epoch FROM p_timeout)::double precision));
        END IF;
    END LOOP;
    RETURN v_ids;
END;
$$;

/*
 * connect_guard.rollback_release closes the incidents whose reloads are all
 * acknowledged, and lowers their fences; an incident whose fence the DBA
 * lowered by hand is closed too.  Called when a reload completes and on
 * every worker cycle.
 */
CREATE FUNCTION connect_guard.rollback_release()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    i connect_guard.rollback_incident;
    v_fence_up boolean;
    v_resolution text;
BEGIN
    FOR i IN SELECT * FROM connect_guard.rollback_incident WHERE resolved_at IS NULL ORDER BY incident_id FOR UPDATE LOOP
        v_fence_up := i.fence_id IS NOT NULL
                      AND EXISTS (SELECT 1 FROM connect_guard.fence_list() f WHERE f.fence_id = i.fence_id);
        IF NOT EXISTS (SELECT 1 FROM connect_guard.mapping m
                        WHERE m.mapping_id = ANY (i.mapping_ids) AND m.state = 'RELOAD_TABLE') THEN
            v_resolution := 'every reload was acknowledged';
            IF v_fence_up THEN
                PERFORM connect_guard.fence_lower(i.fence_id);
            END IF;
        ELSIF i.fence_id IS NOT NULL AND NOT v_fence_up THEN
            v_resolution := 'the fence was lowered by hand before every reload was acknowledged';
        ELSE
            CONTINUE;
        END IF;
        UPDATE connect_guard.rollback_incident SET resolved_at = clock_timestamp(), resolution = v_resolution
         WHERE incident_id = i.incident_id;
        PERFORM connect_guard.log_event(NULL, 'rollback_resolved', jsonb_build_object(
            'incident_id', i.incident_id, 'resolution', v_resolution, 'fence_id', i.fence_id,
            'took_ms', round(extract(epoch FROM clock_timestamp() - i.detected_at) * 1000)));
    END LOOP;
END;
$$;

/*
 * connect_reload_mapping asks for one table to be reloaded, as a detected
 * rollback does for every table: the mapping goes to RELOAD_TABLE, the
 * sync service is asked (heroku, webhook) or the local consumer reads the
 * state, and with fence_on_rollback the table is fenced until the reload
 * is acknowledged.  Returns the request id (NULL for a local connection).
 */
CREATE FUNCTION connect_reload_mapping(connection text, tbl regclass, timeout interval DEFAULT '1 day')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
    v_requests bigint[];
    v_fence integer;
BEGIN
    c := connect_guard.connection_for_update(connection);
    m := connect_guard.mapping_of(c, tbl);
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''1 day''');
    IF EXISTS (SELECT 1 FROM connect_guard.request r
                WHERE r.mapping_id = m.mapping_id AND r.action = 'reload' AND r.status = 'pending') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('table %s of connection "%s" is already being reloaded', tbl, c.name),
            DETAIL = format('Its mapping has been %s since %s, and its reload request is pending.', m.state, m.state_since),
            HINT = 'See connect_requests; a failed reload can be asked for again.';
    END IF;
    v_requests := connect_guard.reload_mappings(ARRAY[m.mapping_id], 'requested by hand', timeout);
    -- a table an open incident already fences keeps that one fence
    IF NOT EXISTS (SELECT 1 FROM connect_guard.rollback_incident i
                    WHERE i.resolved_at IS NULL AND i.fence_id IS NOT NULL AND m.mapping_id = ANY (i.mapping_ids)) THEN
        v_fence := connect_guard.reload_fence(ARRAY[m.mapping_id],
            format('connection "%s" reloads this table (connect_reload_mapping)', c.name));
    END IF;
    IF v_fence IS NOT NULL THEN
        INSERT INTO connect_guard.rollback_incident (source, findings, mapping_ids, fence_id, reload_requests)
        VALUES ('manual', '[]', ARRAY[m.mapping_id], v_fence, v_requests);
    END IF;
    PERFORM connect_guard.log_event(c.connection_id, 'reload_requested', jsonb_build_object(
        'table', format('%I.%I', m.table_schema, m.table_name), 'object_name', m.object_name,
        'request_id', v_requests[1], 'fence_id', v_fence));
    RETURN v_requests[1];
END;
$$;

/*
 * connect_mapping_reloaded is how a local consumer acknowledges that it
 * has reloaded a table: the mapping is DATA_SYNCED again, and the reload
 * fence comes down once nothing else it covers is still being reloaded.
 */
CREATE FUNCTION connect_mapping_reloaded(connection text, tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
BEGIN
    c := connect_guard.connection_for_update(connection);
    m := connect_guard.mapping_of(c, tbl);
    IF m.state <> 'RELOAD_TABLE' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('table %s of connection "%s" is not being reloaded', tbl, c.name),
            DETAIL = format('Its mapping is %s.', m.state),
            HINT = 'Only a mapping in RELOAD_TABLE (see connect_mappings) can be acknowledged.';
    END IF;
    PERFORM connect_guard.mappings_goto(c.connection_id, ARRAY[m.mapping_id], 'DATA_SYNCED', NULL,
        'table_reloaded', jsonb_build_object(
            'table', format('%I.%I', m.table_schema, m.table_name), 'object_name', m.object_name,
            'acknowledged_by', session_user));
    PERFORM connect_guard.rollback_release();
END;
$$;

CREATE VIEW connect_rollback_incidents AS
SELECT i.incident_id,
       i.detected_at,
       i.source,
       (SELECT array_agg(f ->> 'finding') FROM jsonb_array_elements(i.findings) f) AS findings,
       (SELECT array_agg(to_regclass(format('%I.%I', m.table_schema, m.table_name)) ORDER BY m.mapping_id)
          FROM connect_guard.mapping m WHERE m.mapping_id = ANY (i.mapping_ids)) AS tables,
       CASE WHEN i.resolved_at IS NULL
            THEN (SELECT count(*) FROM connect_guard.mapping m
                   WHERE m.mapping_id = ANY (i.mapping_ids) AND m.state = 'RELOAD_TABLE') END AS reloads_pending,
       i.fence_id,
       i.resolved_at,
       i.resolution,
       i.restored_as_new
  FROM connect_guard.rollback_incident i;
/* ------------------------------------------------------------------------
 * Applying a pause, the same for every adapter: connect_pause() applies it
 * at once for a local consumer; request_apply() (56_request_states.sql)
 * applies it once a remote sync service has paused.  A connection pauses
 * only when no batch is open, as Connect pauses only when idle; then its
 * mapped tables are fenced (block_writes) and the writers in flight have
 * ended, so that the trigger log head is final.
 * ------------------------------------------------------------------------ */

-- connect_guard.connection_open_batch: the unfinished batch of a connection, or NULL
CREATE FUNCTION connect_guard.connection_open_batch(p_connection_id integer)
RETURNS connect_guard.batch
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM connect_guard.batch WHERE connection_id = p_connection_id AND finished_at IS NULL;
$$;

/*
 * connect_guard.require_no_open_batch raises, with
 * object_not_in_prerequisite_state, when the connection has an open batch:
 * the pause waits for its consumer to finish it.
 */
CREATE FUNCTION connect_guard.require_no_open_batch(p_connection_id integer, p_connection text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b connect_guard.batch := connect_guard.connection_open_batch(p_connection_id);
BEGIN
    IF b.batch_id IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('cannot pause connection "%s": batch %s has been open for %s s',
                             p_connection, b.batch_id,
                             round(extract(epoch FROM clock_timestamp() - b.taken_at)::numeric, 1)),
            DETAIL = format('Connect pauses only when idle: the batch taken by "%s" at %s must be finished first.',
                            b.taken_by, b.taken_at),
            HINT = 'Let the consumer call connect_finish_batch(), or call connect_pause() with a longer timeout.';
    END IF;
END;
$$;

/*
 * connect_guard.pause_apply pauses connection c, which the caller has
 * locked with no batch open: with p_block_writes it raises the
 * connection's fence (unless one is up) and waits for the writers in
 * flight until p_deadline (terminating them with p_cancel_writers), then
 * moves the connection to PAUSED and logs 'paused' with p_detail and the
 * time since p_started.  Returns the fence id.  On an error the fence it
 * raised is lowered before the error goes on: a fence is shared memory,
 * which a rolled back subtransaction of the caller would not lower.
 */
CREATE FUNCTION connect_guard.pause_apply(c connect_guard.connection, p_block_writes boolean, p_reason text,
                                          p_cancel_writers boolean, p_deadline timestamptz,
                                          p_started timestamptz, p_detail jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    v_fence integer;
BEGIN
    IF p_block_writes AND c.fence_id IS NULL THEN
        t := connect_guard.fence_targets(c.connection_id);
        BEGIN
            v_fence := connect_guard.fence_raise('connection', c.connection_id, c.name,
                                                 coalesce(p_reason, format('connection "%s" paused for maintenance', c.name)),
                                                 t.relids, t.relconnections);
            PERFORM connect_guard.wait_for_writers(t.relids, p_deadline, coalesce(p_cancel_writers, false));
        EXCEPTION WHEN OTHERS THEN
            IF v_fence IS NOT NULL THEN
                PERFORM connect_guard.fence_lower(v_fence);
            END IF;
            RAISE;
        END;
    END IF;
    PERFORM connect_guard.connection_goto(c.connection_id, 'PAUSED', NULL, 'paused',
        p_detail || jsonb_build_object('block_writes', p_block_writes, 'fence_id', coalesce(v_fence, c.fence_id),
                                       'reason', p_reason,
                                       'waited_ms', round(extract(epoch FROM clock_timestamp() - p_started) * 1000)),
        coalesce(p_reason, 'paused for maintenance'), v_fence);
    RETURN coalesce(v_fence, c.fence_id);
END;
$$;
/* ------------------------------------------------------------------------
 * The life of a request once the worker has tried it: retries with
 * backoff, polls of the remote state, the end of a request, and what a
 * request that the sync service carried out does locally (request_apply).
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.request_close ends a request; a failed pause or resume
 * that is the connection's last one also says why in its state_reason.
 */
CREATE FUNCTION connect_guard.request_close(p_request_id bigint, p_status text, p_error text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
BEGIN
    UPDATE connect_guard.request q
       SET status = p_status, completed_at = clock_timestamp(), updated_at = clock_timestamp(),
           last_error = coalesce(p_error, q.last_error)
     WHERE q.request_id = p_request_id
    RETURNING q.* INTO r;
    IF p_status = 'failed' THEN
        PERFORM connect_guard.log_event(r.connection_id, 'request_failed',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempts', r.attempts,
                               'polls', r.polls, 'http_status', r.last_http_status, 'error', p_error));
        IF r.action IN ('pause', 'resume')
           AND (connect_guard.latest_state_request(r.connection_id)).request_id = r.request_id THEN
            PERFORM connect_guard.connection_note(r.connection_id,
                format('%s request %s failed: %s', r.action, r.request_id, p_error));
        END IF;
    ELSE
        PERFORM connect_guard.log_event(r.connection_id, 'request_succeeded',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempts', r.attempts,
                               'polls', r.polls, 'http_status', r.last_http_status, 'remote_state', r.remote_state,
                               'took_ms', round(extract(epoch FROM r.completed_at - r.created_at) * 1000)));
    END IF;
END;
$$;

/*
 * connect_guard.request_retry records a failed try to deliver the action
 * and schedules the next one (1 s doubling, at most 60 s), or fails the
 * request after connect_guard.http_max_attempts tries or at once for an
 * answer that no retry can change.
 */
CREATE FUNCTION connect_guard.request_retry(p_request_id bigint, p_http_status integer, p_error text,
                                            p_permanent boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    -- registered by signals.c; only the worker, which has the library loaded, records outcomes
    v_max integer := current_setting('connect_guard.http_max_attempts')::integer;
    v_delay double precision;
BEGIN
    UPDATE connect_guard.request q
       SET last_http_status = p_http_status, last_error = p_error, updated_at = clock_timestamp()
     WHERE q.request_id = p_request_id
    RETURNING q.* INTO r;
    IF p_permanent THEN
        PERFORM connect_guard.request_close(r.request_id, 'failed', p_error);
    ELSIF r.attempts >= v_max THEN
        PERFORM connect_guard.request_close(r.request_id, 'failed',
            format('%s (gave up after %s attempts)', p_error, r.attempts));
    ELSE
        v_delay := least(60, power(2, greatest(r.attempts, 1) - 1));
        UPDATE connect_guard.request q
           SET next_attempt_at = clock_timestamp() + make_interval(secs => v_delay)
         WHERE q.request_id = r.request_id;
        PERFORM connect_guard.log_event(r.connection_id, 'request_retry',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempt', r.attempts,
                               'http_status', p_http_status, 'error', p_error, 'retry_in_s', v_delay));
    END IF;
END;
$$;

/*
 * connect_guard.request_poll_again schedules the next look at Connect's
 * state (0.5 s growing to 10 s), or fails the request past its deadline.
 */
CREATE FUNCTION connect_guard.request_poll_again(p_request_id bigint, p_expected text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    IF clock_timestamp() > r.deadline THEN
        PERFORM connect_guard.request_close(r.request_id, 'failed',
            format('Connect accepted the %s but did not report %s within %s s (last reported: %s%s)',
                   r.action, p_expected, coalesce(r.params ->> 'timeout_s', '300'), coalesce(r.remote_state, 'nothing'),
                   CASE WHEN r.last_error IS NOT NULL THEN '; last error: ' || r.last_error ELSE '' END));
    ELSE
        UPDATE connect_guard.request q
           SET next_attempt_at = clock_timestamp()
                                 + make_interval(secs => least(CASE WHEN r.action = 'reload' AND NOT r.params ? 'reload_seen_at'
                                                                    THEN 2 ELSE 10 END,
                                                               0.5 * power(1.5, r.polls))),
               updated_at = clock_timestamp()
         WHERE q.request_id = r.request_id;
    END IF;
END;
$$;

/*
 * connect_guard.request_apply finishes a request locally, once the sync
 * service has done its part.  A pause waits for the open batch (as the
 * local pause does), then raises the fence and waits for the writers in
 * flight, each within the request's timeout; the fence goes up only now,
 * after Connect has finished its own pending writes.  A pause or resume
 * that a newer one follows leaves the local state alone.
 */
CREATE FUNCTION connect_guard.request_apply(p_request_id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    c connect_guard.connection;
    b connect_guard.batch;
    v_timeout interval;
    v_deadline timestamptz;
    v_message text;
    v_detail text;
    v_in_flight text;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    SELECT * INTO c FROM connect_guard.connection WHERE connection_id = r.connection_id FOR UPDATE;
    v_timeout := make_interval(secs => coalesce((r.params ->> 'timeout_s')::double precision, 30));

    IF r.action IN ('pause', 'resume')
       AND (connect_guard.latest_state_request(r.connection_id)).request_id <> r.request_id THEN
        PERFORM connect_guard.request_close(r.request_id, 'succeeded');
        RETURN;
    END IF;

    IF r.action = 'pause' THEN
        v_deadline := CASE WHEN r.phase = 'apply' THEN r.deadline ELSE clock_timestamp() + v_timeout END;
        b := connect_guard.connection_open_batch(c.connection_id);
        IF b.batch_id IS NOT NULL THEN
            IF clock_timestamp() > v_deadline THEN
                PERFORM connect_guard.request_close(r.request_id, 'failed',
                    format('batch %s, taken by "%s", has been open for %s s: the connection pauses only when idle',
                           b.batch_id, b.taken_by, round(extract(epoch FROM clock_timestamp() - b.taken_at)::numeric, 1)));
            ELSE
                UPDATE connect_guard.request q
                   SET phase = 'apply', deadline = v_deadline, updated_at = clock_timestamp(),
                       next_attempt_at = clock_timestamp() + interval '200 ms'
                 WHERE q.request_id = r.request_id;
            END IF;
            RETURN;
        END IF;
        -- an adopted log: Connect's entries still being sent (15_log_sources.sql)
        v_in_flight := connect_guard.log_sends_in_flight(c.connection_id);
        IF v_in_flight IS NOT NULL THEN
            IF clock_timestamp() > v_deadline THEN
                PERFORM connect_guard.request_close(r.request_id, 'failed',
                    format('Connect reports PAUSED, but %s', v_in_flight));
            ELSE
                UPDATE connect_guard.request q
                   SET phase = 'apply', deadline = v_deadline, updated_at = clock_timestamp(),
                       next_attempt_at = clock_timestamp() + interval '200 ms'
                 WHERE q.request_id = r.request_id;
            END IF;
            RETURN;
        END IF;

        BEGIN
            PERFORM connect_guard.pause_apply(c, (r.params ->> 'block_writes')::boolean, r.params ->> 'reason',
                                              (r.params ->> 'cancel_writers')::boolean, clock_timestamp() + v_timeout,
                                              r.created_at,
                                              jsonb_build_object('request_id', r.request_id, 'adapter', c.adapter));
        EXCEPTION WHEN lock_not_available OR object_not_in_prerequisite_state THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            PERFORM connect_guard.request_close(r.request_id, 'failed',
                format('Connect is paused but the fence could not be raised: %s%s', v_message,
                       CASE WHEN v_detail <> '' THEN ' (' || v_detail || ')' ELSE '' END));
            RETURN;
        END;
    ELSIF r.action = 'resume' THEN
        PERFORM connect_guard.connection_goto(c.connection_id, 'IDLE', NULL, 'resumed',
            jsonb_build_object('request_id', r.request_id, 'adapter', c.adapter,
                               'waited_ms', round(extract(epoch FROM clock_timestamp() - r.created_at) * 1000)));
    ELSIF r.action = 'reload' AND r.mapping_id IS NOT NULL THEN
        PERFORM connect_guard.mappings_goto(c.connection_id, ARRAY[r.mapping_id], 'DATA_SYNCED', ARRAY['RELOAD_TABLE'],
            'table_reloaded', jsonb_build_object('request_id', r.request_id, 'table', r.params ->> 'table',
                                                 'object_name', r.params ->> 'object_name'));
    ELSIF r.action IN ('export', 'import') THEN
        -- Connect's configuration goes onto the mappings (49_config_store.sql)
        v_message := connect_guard.config_answered(c.connection_id, r.action, r.request_id, r.result, r.payload);
        IF v_message IS NOT NULL THEN
            PERFORM connect_guard.request_close(r.request_id, 'failed', v_message);
            RETURN;
        END IF;
    END IF;
    PERFORM connect_guard.request_close(r.request_id, 'succeeded');
    IF r.action = 'reload' THEN
        PERFORM connect_guard.rollback_release();     -- the last acknowledged reload lowers the fence
    END IF;
END;
$$;

/* ------------------------------------------------------------------------
 * The protocols of the sync services: Heroku Connect's API (adapter
 * 'heroku') and signed webhooks (adapter 'webhook').  What each request
 * looks like on the wire (request_wire) and how each answer is read; the
 * options each adapter takes are validated in 18_options.sql.
 *
 * The worker's HTTP client (signals.c, http.c) adds nothing of its own but
 * the transport: TLS (connect_guard.http_ca_file), the timeout
 * (connect_guard.http_timeout), a User-Agent, Accept and Content-Type
 * application/json for a body, and the credential by the auth scheme that
 * request_wire names:
 *   'bearer'  Authorization: Bearer <the API token>
 *   'hmac'    X-Connect-Guard-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the webhook key>
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.request_wire is what one step (p_step: 'send' or 'poll',
 * as request_take() decided) of request r of connection c (for a reload,
 * of mapping m) sends:
 *
 *   heroku   GET  {region_url}/api/v3/connections/{connection_id}?deep=true
 *                 to poll, for a refresh, and before a reload (step
 *                 'lookup': the mapping's id, and how the mapping stood
 *                 before the reload, 59_reload_acknowledgement.sql)
 *            POST {region_url}/api/v3/mappings/{remote_id}/actions/reload
 *            POST {region_url}/api/v3/connections/{connection_id}/actions/{pause|resume}
 *            no body; auth 'bearer' with the token
 *            GET  {region_url}/api/v3/connections/{connection_id}/actions/export
 *            POST {region_url}/api/v3/connections/{connection_id}/actions/import
 *                 with the configuration file (the request's payload) as body
 *   webhook  POST {url}, auth 'hmac' with the key, the body a JSON object:
 *            connection, action, request_id, requested_at (UTC, ISO 8601),
 *            requested_by, database, and when set reason, block_writes,
 *            table, object_name
 *
 * secret_file is the file the options name for the secret (the worker
 * uses it when no secret is stored).
 */
CREATE FUNCTION connect_guard.request_wire(r connect_guard.request, c connect_guard.connection,
                                           m connect_guard.mapping, p_step text,
                                           OUT step text, OUT method text, OUT url text, OUT body text,
                                           OUT auth text, OUT secret_file text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_api text;
BEGIN
    step := p_step;
    IF c.adapter = 'heroku' THEN
        v_api := (c.options ->> 'region_url') || '/api/v3';
        auth := 'bearer';
        secret_file := c.options ->> 'token_file';
        IF p_step = 'poll' OR r.action = 'refresh'
           OR (r.action = 'reload' AND (m.remote_id IS NULL OR NOT r.params ? 'reload_baseline')) THEN
            step := CASE WHEN p_step = 'poll' THEN 'poll' ELSE 'lookup' END;
            method := 'GET';
            url := format('%s/connections/%s?deep=true', v_api, c.options ->> 'connection_id');
        ELSIF r.action = 'reload' THEN
            method := 'POST';
            url := format('%s/mappings/%s/actions/reload', v_api, m.remote_id);
        ELSIF r.action IN ('export', 'import') THEN
            method := CASE r.action WHEN 'export' THEN 'GET' ELSE 'POST' END;
            url := format('%s/connections/%s/actions/%s', v_api, c.options ->> 'connection_id', r.action);
            body := r.payload::text;
        ELSE
            method := 'POST';
            url := format('%s/connections/%s/actions/%s', v_api, c.options ->> 'connection_id', r.action);
        END IF;
    ELSE
        auth := 'hmac';
        secret_file := c.options ->> 'secret_file';
        method := 'POST';
        url := c.options ->> 'url';
        body := jsonb_strip_nulls(jsonb_build_object(
            'connection', c.name,
            'action', r.action,
            'request_id', r.request_id,
            'requested_at', to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'requested_by', r.requested_by,
            'database', current_database(),
            'reason', r.params ->> 'reason',
            'block_writes', (r.params ->> 'block_writes')::boolean,
            'table', r.params ->> 'table',
            'object_name', r.params ->> 'object_name'))::text;
    END IF;
END;
$$;

/*
 * connect_guard.request_http_error describes an HTTP failure for
 * last_error and the event log, and says whether retrying can help.
 * p_body is the answer (already cleaned of the secret by the worker).
 */
CREATE FUNCTION connect_guard.request_http_error(p_adapter text, p_action text, p_http_status integer,
                                                 p_error text, p_body text,
                                                 OUT message text, OUT permanent boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_who text := CASE p_adapter WHEN 'heroku' THEN 'Connect' ELSE 'the webhook' END;
    v_said text;
    v_json jsonb;
BEGIN
    permanent := false;
    IF p_http_status IS NULL THEN
        message := format('no answer from %s: %s', v_who, coalesce(p_error, 'unknown error'));
        RETURN;
    END IF;
    BEGIN
        v_json := p_body::jsonb;
        v_said := v_json ->> 'message';
    EXCEPTION WHEN OTHERS THEN
        v_said := NULL;
    END;
    v_said := left(regexp_replace(coalesce(v_said, p_body, ''), '\s+', ' ', 'g'), 200);
    message := format('HTTP %s from %s%s', p_http_status, v_who, CASE WHEN v_said <> '' THEN ': ' || v_said ELSE '' END);
    IF p_http_status IN (401, 403) THEN
        message := message || CASE p_adapter WHEN 'heroku'
            THEN ' (check the API token; a token_file is read again before every attempt)'
            ELSE ' (check the webhook key; a secret_file is read again before every attempt)' END;
    ELSIF p_http_status = 404 AND p_adapter = 'heroku' THEN
        message := message || CASE WHEN p_action = 'reload'
            THEN ' (Connect knows no mapping with this id: see connect_set_mapping_remote_id())'
            ELSE ' (Connect knows no connection with this id: check the option connection_id)' END;
    END IF;
    -- answers that the same request will always get
    permanent := p_http_status IN (400, 404, 405, 410, 422);
END;
$$;

/*
 * connect_guard.remote_ids_from fills in the remote id of the mappings
 * that have none from a deep GET of the connection, by object name
 * (ignoring case, as Salesforce does), when the name is unambiguous.
 */
CREATE FUNCTION connect_guard.remote_ids_from(p_connection_id integer, p_body jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m record;
BEGIN
    IF jsonb_typeof(p_body -> 'mappings') IS DISTINCT FROM 'array' THEN
        RETURN;
    END IF;
    FOR m IN
        -- an object name that is only the table's name (adopted schemas) takes Connect's spelling
        UPDATE connect_guard.mapping mp
           SET remote_id = rm.id,
               object_name = CASE WHEN mp.object_name = mp.table_name THEN rm.spelling ELSE mp.object_name END
          FROM (SELECT lower(e ->> 'object_name') AS object_name, min(e ->> 'id') AS id,
                       min(e ->> 'object_name') AS spelling
                  FROM jsonb_array_elements(p_body -> 'mappings') e
                 WHERE e ->> 'id' ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'
                   -- an id that spells a secret is an echo, not an id (16_secrets.sql)
                   AND connect_guard.scrub(e ->> 'id') = e ->> 'id'
                 GROUP BY 1 HAVING count(*) = 1) rm
         WHERE mp.connection_id = p_connection_id AND mp.remote_id IS NULL
           AND lower(mp.object_name) = rm.object_name
        RETURNING mp.table_schema, mp.table_name, mp.object_name, mp.remote_id
    LOOP
        PERFORM connect_guard.log_event(p_connection_id, 'mapping_remote_id',
            jsonb_build_object('table', format('%I.%I', m.table_schema, m.table_name),
                               'object_name', m.object_name, 'remote_id', m.remote_id, 'source', 'connect'));
    END LOOP;
END;
$$;

/*
 * connect_guard.note_remote_hwm records the high-water mark the sync
 * service reports (top-level "high_water_mark" of Connect's deep GET, or of
 * a webhook's answer): the witness keeps it, and a service that consumed
 * past the log head proves a rollback.
 */
CREATE FUNCTION connect_guard.note_remote_hwm(p_connection_id integer, p_body jsonb)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE connect_guard.connection
       SET remote_hwm = (p_body ->> 'high_water_mark')::bigint, remote_hwm_at = clock_timestamp()
     WHERE connection_id = p_connection_id
       AND jsonb_typeof(p_body -> 'high_water_mark') = 'number'
       AND (p_body ->> 'high_water_mark') ~ '^[0-9]{1,18}$';
$$;

/* ------------------------------------------------------------------------
 * When Heroku Connect has done a reload (the 'confirm' phase of a reload
 * request, 62_signals.sql).  Connect answers 202 and queues the reload; it
 * may start it a moment or minutes later.  Until then the deep GET shows
 * the mapping as it was, DATA_SYNCED, and taking that for done would lower
 * the reload fence while the table is about to be overwritten.  So a
 * reload is acknowledged only on a proof that a reload started after the
 * request, and then DATA_SYNCED:
 *
 *   - Connect was seen working on it: RELOAD_TABLE in a deep GET after
 *     the 202;
 *   - or the mapping's reload_started_at (when its last reload started,
 *     Connect's clock) is later than it was in a deep GET taken before the
 *     reload was asked for (the baseline, step 'lookup' of the request):
 *     a reload that started and finished between two polls, never seen
 *     running.  The field is an assumption about Connect's deep GET
 *     (README, the reload acknowledgement): the simulator shows it; where
 *     Connect does not, only the first proof is left.  The two times come
 *     from the same clock, Connect's, so no clock skew enters.
 *
 * Until it is seen working, polls stay at most 2 s apart (request_poll_again),
 * so that a reload is seen running; one never proven ends the request at
 * its timeout, failed, with the mapping in RELOAD_TABLE and the fence up:
 * connect_mapping_reloaded() acknowledges it by hand.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.reload_mapping_entry: the entry of a deep GET (p_body)
 * for the mapping of request r, by its remote id; NULL when there is none.
 */
CREATE FUNCTION connect_guard.reload_mapping_entry(r connect_guard.request, p_body jsonb)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT x
      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_body -> 'mappings') = 'array'
                                     THEN p_body -> 'mappings' ELSE '[]' END) x
      JOIN connect_guard.mapping mp ON mp.mapping_id = r.mapping_id AND mp.remote_id = x ->> 'id'
     LIMIT 1;
$$;

/* a timestamp Connect sent (ISO 8601), or NULL when absent or not one */
CREATE FUNCTION connect_guard.remote_timestamp(p_value jsonb)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF jsonb_typeof(p_value) IS DISTINCT FROM 'string'
       OR p_value #>> '{}' !~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:?\d{2})?)$' THEN
        RETURN NULL;
    END IF;
    RETURN (p_value #>> '{}')::timestamptz;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
    RETURN NULL;
END;
$$;

/*
 * connect_guard.reload_baseline records how the deep GET (p_body) showed
 * the mapping of request p_request_id before its reload is asked for: its
 * state and reload_started_at (null when Connect shows none).
 */
CREATE FUNCTION connect_guard.reload_baseline(p_request_id bigint, p_body jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    v_entry jsonb;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    v_entry := connect_guard.reload_mapping_entry(r, p_body);
    UPDATE connect_guard.request
       SET params = params || jsonb_build_object('reload_baseline', jsonb_build_object(
                                  'state', v_entry ->> 'state',
                                  -- as Connect wrote it, when it is a timestamp
                                  'reload_started_at', CASE WHEN connect_guard.remote_timestamp(v_entry -> 'reload_started_at') IS NOT NULL
                                                            THEN v_entry -> 'reload_started_at' END))
     WHERE request_id = p_request_id;
END;
$$;

/*
 * connect_guard.reload_acknowledged records what a poll showed of a
 * reload's mapping (p_entry, its entry of the deep GET) and says whether
 * the reload is done.
 */
CREATE FUNCTION connect_guard.reload_acknowledged(p_request_id bigint, p_entry jsonb)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    v_state text := p_entry ->> 'state';
    v_started timestamptz := connect_guard.remote_timestamp(p_entry -> 'reload_started_at');
    v_before timestamptz;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    IF v_state = 'RELOAD_TABLE' THEN
        IF NOT r.params ? 'reload_seen_at' THEN
            UPDATE connect_guard.request
               SET params = params || jsonb_build_object('reload_seen_at', clock_timestamp())
             WHERE request_id = p_request_id;
            PERFORM connect_guard.log_event(r.connection_id, 'reload_started',
                jsonb_build_object('request_id', r.request_id, 'table', r.params ->> 'table',
                                   'object_name', r.params ->> 'object_name', 'seen', 'running',
                                   'after_ms', round(extract(epoch FROM clock_timestamp() - r.created_at) * 1000)));
        END IF;
        RETURN false;
    END IF;
    IF v_state IS DISTINCT FROM 'DATA_SYNCED' THEN
        RETURN false;
    END IF;
    IF r.params ? 'reload_seen_at' THEN
        RETURN true;
    END IF;
    -- never seen running: did a reload start after the baseline?  (no baseline: no proof)
    IF NOT r.params ? 'reload_baseline' OR v_started IS NULL THEN
        RETURN false;
    END IF;
    v_before := connect_guard.remote_timestamp(r.params -> 'reload_baseline' -> 'reload_started_at');
    IF v_before IS NOT NULL AND v_started <= v_before THEN
        RETURN false;       -- the reload that had started before the request: not this one
    END IF;
    PERFORM connect_guard.log_event(r.connection_id, 'reload_started',
        jsonb_build_object('request_id', r.request_id, 'table', r.params ->> 'table',
                           'object_name', r.params ->> 'object_name', 'seen', 'finished',
                           'reload_started_at', p_entry -> 'reload_started_at',
                           'before_request', r.params -> 'reload_baseline' -> 'reload_started_at',
                           'after_ms', round(extract(epoch FROM clock_timestamp() - r.created_at) * 1000)));
    RETURN true;
END;
$$;
/* ------------------------------------------------------------------------
 * The worker's side of the requests.  signals.c calls request_take() and
 * request_outcome(), and nothing else here.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.request_take hands the worker the requests that are due:
 * per connection the oldest pending one, locked, with what to send.  Each
 * is leased (next_attempt_at moves past the HTTP timeout) so that a worker
 * that dies in the middle does not leave it stuck, nor have it sent twice
 * at once.  Steps: 'send' (the action), 'lookup' (a deep GET to find
 * mapping ids, for a refresh, or to see a mapping before its reload), 'poll' (a deep GET to see the effect),
 * 'apply' (nothing to send).  What is sent is the adapter's
 * (request_wire, 58_protocols.sql); secret is the connection's stored
 * token or key, and with secret NULL the worker reads secret_file.
 * signals.c reads these columns by name.
 */
CREATE FUNCTION connect_guard.request_take(p_limit integer, p_lease_ms integer)
RETURNS TABLE (t_request_id bigint, t_step text, t_method text, t_url text, t_body text,
               t_auth text, t_secret text, t_secret_file text, t_description text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    c connect_guard.connection;
    m connect_guard.mapping;
    s record;
    w record;
BEGIN
    -- a pause or resume that a newer one replaced is not sent any more
    FOR s IN
        UPDATE connect_guard.request o
           SET status = 'failed', completed_at = clock_timestamp(), updated_at = clock_timestamp(),
               last_error = format('superseded by %s request %s before it completed', l.action, l.request_id)
          FROM (SELECT DISTINCT ON (q.connection_id) q.connection_id, q.request_id, q.action
                  FROM connect_guard.request q
                 WHERE q.status = 'pending' AND q.action IN ('pause', 'resume')
                 ORDER BY q.connection_id, q.request_id DESC) l
         WHERE o.connection_id = l.connection_id AND o.status = 'pending'
           AND o.action IN ('pause', 'resume') AND o.request_id < l.request_id
        RETURNING o.connection_id, o.request_id, o.action, l.request_id AS by_request
    LOOP
        PERFORM connect_guard.log_event(s.connection_id, 'request_superseded',
            jsonb_build_object('request_id', s.request_id, 'action', s.action, 'by_request', s.by_request));
    END LOOP;

    FOR r IN
        SELECT q.* FROM connect_guard.request q
         WHERE q.status = 'pending' AND q.next_attempt_at <= clock_timestamp()
           AND NOT EXISTS (SELECT 1 FROM connect_guard.request o
                            WHERE o.connection_id = q.connection_id AND o.status = 'pending'
                              AND o.request_id < q.request_id
                              -- reloads of different mappings go out together: after a
                              -- rollback, N tables must not take N reload times
                              AND NOT (o.action = 'reload' AND q.action = 'reload'))
         ORDER BY q.request_id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        SELECT * INTO c FROM connect_guard.connection WHERE connection_id = r.connection_id;
        m := NULL;
        IF r.mapping_id IS NOT NULL THEN
            SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = r.mapping_id;
        END IF;
        IF r.action = 'reload' AND m.mapping_id IS NULL THEN
            PERFORM connect_guard.request_close(r.request_id, 'failed',
                'the table was unmapped before the reload was sent');
            CONTINUE;
        END IF;

        t_request_id := r.request_id;
        t_step := CASE r.phase WHEN 'apply' THEN 'apply' WHEN 'confirm' THEN 'poll' ELSE 'send' END;
        t_method := NULL; t_url := NULL; t_body := NULL; t_auth := NULL; t_secret := NULL; t_secret_file := NULL;
        t_description := format('connect_guard: %s request %s of connection "%s"', r.action, r.request_id, c.name);
        IF t_step <> 'apply' THEN
            SELECT * INTO w FROM connect_guard.request_wire(r, c, m, t_step);
            t_step := w.step; t_method := w.method; t_url := w.url; t_body := w.body;
            t_auth := w.auth; t_secret_file := w.secret_file;
            SELECT cs.secret INTO t_secret FROM connect_guard.connection_secret cs
             WHERE cs.connection_id = c.connection_id;
            IF t_secret IS NOT NULL THEN
                t_secret_file := NULL;
            END IF;
        END IF;

        UPDATE connect_guard.request q
           SET attempts = q.attempts + CASE WHEN t_step IN ('send', 'lookup') THEN 1 ELSE 0 END,
               polls = q.polls + CASE WHEN t_step = 'poll' THEN 1 ELSE 0 END,
               next_attempt_at = clock_timestamp() + make_interval(secs => p_lease_ms / 1000.0),
               updated_at = clock_timestamp()
         WHERE q.request_id = r.request_id;
        RETURN NEXT;
    END LOOP;
END;
$$;

/*
 * connect_guard.request_defer records what it can of a successful step
 * (or an 'apply') when the connection's lock is not to be had (a
 * consumer's transaction holds it): what the worker sent and the sync
 * service accepted is not sent again (a heroku action goes on to
 * 'confirm', a webhook's to 'apply'); a poll, a lookup or an apply is
 * tried again a second later, and a request past its deadline fails, as
 * it would with the lock.  p_why says who holds it.  The caller has
 * locked the request.
 */
CREATE FUNCTION connect_guard.request_defer(p_request_id bigint, p_step text, p_http_status integer, p_why text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    v_adapter text;
    v_timeout interval;
BEGIN
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id;
    SELECT c.adapter INTO v_adapter FROM connect_guard.connection c WHERE c.connection_id = r.connection_id;
    v_timeout := make_interval(secs => coalesce((r.params ->> 'timeout_s')::double precision,
                                                CASE WHEN v_adapter = 'heroku' THEN 300 ELSE 30 END));
    IF p_step = 'send' AND p_http_status BETWEEN 200 AND 299 THEN
        PERFORM connect_guard.log_event(r.connection_id, 'request_accepted',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempt', r.attempts,
                               'http_status', p_http_status));
        IF v_adapter = 'webhook' AND r.action = 'reload' AND p_http_status = 202 THEN
            UPDATE connect_guard.request SET last_http_status = p_http_status, remote_state = 'RELOAD_TABLE'
             WHERE request_id = r.request_id;
            PERFORM connect_guard.request_close(r.request_id, 'succeeded');
            RETURN;
        END IF;
        UPDATE connect_guard.request q
           SET last_http_status = p_http_status, last_error = p_why, updated_at = clock_timestamp(),
               phase = CASE WHEN v_adapter = 'heroku' AND r.action IN ('pause', 'resume', 'reload') THEN 'confirm'
                            ELSE 'apply' END,
               deadline = clock_timestamp() + v_timeout,
               next_attempt_at = clock_timestamp() + interval '1 s'
         WHERE q.request_id = r.request_id;
    ELSIF r.deadline IS NOT NULL AND clock_timestamp() > r.deadline THEN
        PERFORM connect_guard.request_close(r.request_id, 'failed',
            format('the %s could not be completed within its timeout: %s', r.action, p_why));
    ELSE
        UPDATE connect_guard.request q
           SET last_error = p_why, updated_at = clock_timestamp(), next_attempt_at = clock_timestamp() + interval '1 s'
         WHERE q.request_id = r.request_id;
    END IF;
END;
$$;

/*
 * connect_guard.request_outcome records what one step of a request gave
 * and moves the request and the local state along (see the top of this
 * file).  p_step is what request_take() said; or 'unsent' when the worker
 * could not send it (e.g. an unreadable token file), or 'error' when it
 * failed recording an outcome (p_error says why).
 */
CREATE FUNCTION connect_guard.request_outcome(p_request_id bigint, p_step text, p_http_status integer,
                                              p_error text, p_body text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r connect_guard.request;
    c connect_guard.connection;
    e record;
    v_json jsonb;
    v_entry jsonb;
    v_ok boolean := coalesce(p_http_status BETWEEN 200 AND 299, false);
    v_state text;
    v_expected text;
    v_error text;
    v_connection_id integer;
    v_message text;
    v_detail text;
    v_busy text;            -- why the connection's lock was not to be had
BEGIN
    -- The connection first, then the request: the order the user's calls
    -- lock in.  A consumer's transaction may hold the connection's lock:
    -- the worker waits a second at most, records what needs no lock (a
    -- failure), and defers the rest (request_defer).
    SELECT q.connection_id INTO v_connection_id FROM connect_guard.request q WHERE q.request_id = p_request_id;
    IF NOT FOUND THEN
        RETURN;                 -- dropped with its connection while it was sent
    END IF;
    BEGIN
        c := connect_guard.lock_connection(v_connection_id, clock_timestamp() + interval '1 s');
    EXCEPTION WHEN lock_not_available THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
        v_busy := v_message || ': ' || v_detail;
        SELECT * INTO c FROM connect_guard.connection WHERE connection_id = v_connection_id;
    END;
    SELECT * INTO r FROM connect_guard.request WHERE request_id = p_request_id FOR UPDATE;
    IF NOT FOUND OR r.status <> 'pending' THEN
        RETURN;                 -- dropped or superseded while it was sent
    END IF;

    IF p_step IN ('error', 'unsent') THEN
        v_error := CASE p_step WHEN 'error' THEN 'the worker failed: ' || p_error ELSE p_error END;
        IF r.phase = 'send' THEN
            PERFORM connect_guard.request_retry(r.request_id, NULL, v_error, false);
        ELSIF r.phase = 'confirm' THEN
            UPDATE connect_guard.request SET last_error = v_error WHERE request_id = r.request_id;
            PERFORM connect_guard.request_poll_again(r.request_id, 'the new state');
        ELSE
            PERFORM connect_guard.request_close(r.request_id, 'failed', v_error);
        END IF;
        RETURN;
    END IF;

    IF p_step = 'apply' THEN
        IF v_busy IS NOT NULL THEN
            PERFORM connect_guard.request_defer(r.request_id, p_step, p_http_status, v_busy);
        ELSE
            PERFORM connect_guard.request_apply(r.request_id);
        END IF;
        RETURN;
    END IF;

    IF NOT v_ok THEN
        SELECT * INTO e FROM connect_guard.request_http_error(c.adapter, r.action, p_http_status, p_error, p_body);
        IF p_step = 'poll' THEN
            UPDATE connect_guard.request
               SET last_http_status = p_http_status, last_error = e.message, updated_at = clock_timestamp()
             WHERE request_id = r.request_id;
            PERFORM connect_guard.request_poll_again(r.request_id, 'the new state');
        ELSE
            PERFORM connect_guard.request_retry(r.request_id, p_http_status, e.message, e.permanent);
        END IF;
        RETURN;
    END IF;

    -- what the sync service did is applied under the connection's lock
    IF v_busy IS NOT NULL THEN
        PERFORM connect_guard.request_defer(r.request_id, p_step, p_http_status, v_busy);
        RETURN;
    END IF;

    UPDATE connect_guard.request SET last_http_status = p_http_status, updated_at = clock_timestamp()
     WHERE request_id = r.request_id;

    IF p_step = 'send' THEN
        BEGIN
            v_json := p_body::jsonb;
        EXCEPTION WHEN OTHERS THEN
            v_json := NULL;
        END;
        -- the answer is the result of an export (Connect's configuration file) or an import
        IF r.action IN ('export', 'import') THEN
            UPDATE connect_guard.request SET result = v_json WHERE request_id = r.request_id;
        END IF;
        -- a webhook may answer with its own high-water mark, as Connect's deep GET does
        IF c.adapter = 'webhook' THEN
            IF jsonb_typeof(v_json) = 'object' THEN
                PERFORM connect_guard.note_remote_hwm(c.connection_id, v_json);
            END IF;
        END IF;
        IF c.adapter = 'heroku' AND r.action = 'reload' AND p_http_status <> 202 THEN
            -- only 202 Accepted says Connect queued the reload (59_reload_acknowledgement.sql)
            PERFORM connect_guard.request_retry(r.request_id, p_http_status,
                format('Connect answered HTTP %s to the reload, not 202 Accepted: it is not known to have queued it',
                       p_http_status), true);
            RETURN;
        END IF;
        PERFORM connect_guard.log_event(c.connection_id, 'request_accepted',
            jsonb_build_object('request_id', r.request_id, 'action', r.action, 'attempt', r.attempts,
                               'http_status', p_http_status));
        IF c.adapter = 'webhook' AND r.action = 'reload' AND p_http_status = 202 THEN
            -- 202 Accepted: the receiver reloads later and acknowledges with connect_mapping_reloaded()
            UPDATE connect_guard.request SET remote_state = 'RELOAD_TABLE' WHERE request_id = r.request_id;
            PERFORM connect_guard.request_close(r.request_id, 'succeeded');
        ELSIF c.adapter = 'heroku' AND r.action IN ('pause', 'resume', 'reload') THEN
            UPDATE connect_guard.request
               SET phase = 'confirm', next_attempt_at = clock_timestamp(),
                   deadline = clock_timestamp() + make_interval(secs => coalesce((params ->> 'timeout_s')::double precision, 300))
             WHERE request_id = r.request_id;
        ELSE
            PERFORM connect_guard.request_apply(r.request_id);
        END IF;
        RETURN;
    END IF;

    -- 'lookup' and 'poll': a deep GET of the connection
    BEGIN
        v_json := p_body::jsonb;
    EXCEPTION WHEN OTHERS THEN
        v_json := NULL;
    END;
    IF jsonb_typeof(v_json) IS DISTINCT FROM 'object' THEN
        SELECT * INTO e FROM connect_guard.request_http_error(c.adapter, r.action, p_http_status, NULL, p_body);
        IF p_step = 'poll' THEN
            UPDATE connect_guard.request SET last_error = 'Connect answered without a JSON object: ' || e.message
             WHERE request_id = r.request_id;
            PERFORM connect_guard.request_poll_again(r.request_id, 'the new state');
        ELSE
            PERFORM connect_guard.request_retry(r.request_id, p_http_status,
                                                'Connect answered without a JSON object: ' || e.message, false);
        END IF;
        RETURN;
    END IF;
    PERFORM connect_guard.remote_ids_from(c.connection_id, v_json);
    PERFORM connect_guard.note_remote_hwm(c.connection_id, v_json);

    IF p_step = 'lookup' THEN
        UPDATE connect_guard.request SET remote_state = v_json ->> 'state' WHERE request_id = r.request_id;
        IF r.action = 'refresh' THEN
            PERFORM connect_guard.log_event(c.connection_id, 'refreshed',
                jsonb_build_object('request_id', r.request_id, 'remote_state', v_json ->> 'state',
                                   'mappings', (SELECT jsonb_agg(jsonb_build_object('id', x ->> 'id',
                                                                                    'object_name', x ->> 'object_name',
                                                                                    'state', x ->> 'state'))
                                                  FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v_json -> 'mappings') = 'array'
                                                                                 THEN v_json -> 'mappings' ELSE '[]' END) x)));
            PERFORM connect_guard.request_close(r.request_id, 'succeeded');
        ELSIF EXISTS (SELECT 1 FROM connect_guard.mapping WHERE mapping_id = r.mapping_id AND remote_id IS NOT NULL) THEN
            -- how the mapping stood before its reload is asked for (59_reload_acknowledgement.sql)
            PERFORM connect_guard.reload_baseline(r.request_id, v_json);
            UPDATE connect_guard.request SET next_attempt_at = clock_timestamp() WHERE request_id = r.request_id;
        ELSE
            PERFORM connect_guard.request_close(r.request_id, 'failed',
                format('Connect lists no mapping for object %s on connection %s: set its id with connect_set_mapping_remote_id()',
                       r.params ->> 'object_name', c.options ->> 'connection_id'));
        END IF;
        RETURN;
    END IF;

    -- 'poll': has Connect done it?
    IF r.action = 'reload' THEN
        v_entry := connect_guard.reload_mapping_entry(r, v_json);
        v_state := v_entry ->> 'state';
        v_expected := 'a reload started after the request (RELOAD_TABLE, or a later reload_started_at) and then DATA_SYNCED';
    ELSE
        v_state := v_json ->> 'state';
        v_expected := CASE r.action WHEN 'pause' THEN 'PAUSED' ELSE 'IDLE' END;
    END IF;
    UPDATE connect_guard.request SET remote_state = v_state WHERE request_id = r.request_id;
    -- a reload is done once it is proven to have started after the request (59_reload_acknowledgement.sql)
    IF (CASE WHEN r.action = 'reload' THEN connect_guard.reload_acknowledged(r.request_id, v_entry)
             ELSE v_state = v_expected OR (r.action = 'resume' AND v_state = 'POLLING_DB_CHANGES') END) THEN
        PERFORM connect_guard.request_apply(r.request_id);
    ELSE
        PERFORM connect_guard.request_poll_again(r.request_id, v_expected);
    END IF;
END;
$$;

/* ------------------------------------------------------------------------
 * Followers: servers (standbys, the new primary of a follower changeover)
 * whose lag the worker measures through libpq, because pg_stat_replication
 * only shows the walsenders of this server.  The checks are in lag.c;
 * connect_follower_lag shows both.
 *
 * A conninfo may hold a password: only the owner reads the table; the view
 * and the event log show it with its secrets masked.
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.follower (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    conninfo    text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
SELECT pg_catalog.pg_extension_config_dump('connect_guard.follower', '');

/*
 * The last check of each follower, written by the worker and by
 * connect_check_followers().  The CHECKs are the promise of lag.c: a
 * follower with a problem (down, wrong password, another cluster, not a
 * standby) is never reported with a lag, so never as caught up.  Not
 * dumped: it is measured again after a restore.
 */
CREATE TABLE connect_guard.follower_status (
    name            text PRIMARY KEY REFERENCES connect_guard.follower ON DELETE CASCADE,
    checked_at      timestamptz NOT NULL,
    reachable       boolean NOT NULL,
    error           text,
    in_recovery     boolean,
    system_identifier_matches boolean,
    timeline        integer,
    replay_lsn      pg_lsn,
    receive_lsn     pg_lsn,
    lag_bytes       numeric CHECK (lag_bytes >= 0),
    lag_seconds     double precision CHECK (lag_seconds >= 0),
    CONSTRAINT unreachable_has_error CHECK (reachable OR error IS NOT NULL),
    CONSTRAINT no_lag_with_error CHECK (error IS NULL OR (lag_bytes IS NULL AND lag_seconds IS NULL))
);

CREATE FUNCTION connect_guard.conninfo_masked(conninfo text, raise_error boolean DEFAULT true)
RETURNS text LANGUAGE C STRICT STABLE
AS 'MODULE_PATHNAME', 'connect_guard_conninfo_masked';

CREATE FUNCTION connect_add_follower(name text, conninfo text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_masked text;
BEGIN
    PERFORM connect_guard.require_not_null(name, 'follower name',
        'Use 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit.');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_name',
            MESSAGE = format('invalid follower name %s', quote_literal(name)),
            DETAIL = 'The name identifies the follower in connect_follower_lag and in the runbooks.',
            HINT = 'Use 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit.';
    END IF;
    PERFORM connect_guard.require_not_null(conninfo, 'conninfo',
        'Pass a libpq connection string, e.g. ''host=standby.example.com port=5432 dbname=app user=monitor''.');
    -- rejects a conninfo libpq cannot parse, with libpq's message
    v_masked := connect_guard.conninfo_masked(conninfo);

    INSERT INTO connect_guard.follower AS f (name, conninfo)
    VALUES (connect_add_follower.name, connect_add_follower.conninfo)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('follower "%s" already exists', name),
            DETAIL = format('It connects with %s.',
                            (SELECT connect_guard.conninfo_masked(f.conninfo, false)
                               FROM connect_guard.follower f WHERE f.name = connect_add_follower.name)),
            HINT = 'Choose another name, or remove the old follower first with connect_remove_follower().';
    END IF;
    PERFORM connect_guard.log_event(NULL, 'follower_added',
                                    jsonb_build_object('name', name, 'conninfo', v_masked));
END;
$$;

CREATE FUNCTION connect_remove_follower(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_conninfo text;
BEGIN
    PERFORM connect_guard.require_not_null(name, 'follower name',
        'Pass the name given to connect_add_follower(); see SELECT name FROM connect_follower_lag WHERE source = ''libpq''.');
    -- its status row goes with it (ON DELETE CASCADE)
    DELETE FROM connect_guard.follower f WHERE f.name = connect_remove_follower.name
    RETURNING f.conninfo INTO v_conninfo;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('follower "%s" does not exist', name),
            DETAIL = 'Only followers added with connect_add_follower() can be removed.',
            HINT = 'See SELECT name FROM connect_follower_lag WHERE source = ''libpq''.';
    END IF;
    PERFORM connect_guard.log_event(NULL, 'follower_removed',
                                    jsonb_build_object('name', name,
                                                       'conninfo', connect_guard.conninfo_masked(v_conninfo, false)));
END;
$$;

/*
 * connect_check_followers checks every follower now, records and returns
 * the results; the worker does the same every cycle.  Inside the caller's
 * transaction: for runbooks and tests, not for a busy loop.
 */
CREATE FUNCTION connect_check_followers()
RETURNS SETOF connect_guard.follower_status
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'connect_guard_check_followers';

/*
 * connect_follower_lag: the standbys streaming from this server, as
 * pg_stat_replication sees them, and the registered followers, as their
 * last check saw them (checked_at NULL: not checked yet).  lag_bytes is
 * measured from this server's current WAL position (its replay position
 * when it is itself a standby); lag_seconds is 0 when lag_bytes is 0, as
 * pg_stat_replication's replay_lag goes NULL once a standby is idle and
 * caught up.
 */
CREATE VIEW connect_follower_lag AS
SELECT 'pg_stat_replication'::text AS source,
       r.application_name AS name,
       r.client_addr,
       NULL::text AS conninfo,
       r.state,
       true AS reachable,
       NULL::text AS error,
       NULL::boolean AS in_recovery,
       NULL::integer AS timeline,
       r.sent_lsn,
       r.write_lsn,
       r.flush_lsn,
       r.replay_lsn,
       greatest(pg_wal_lsn_diff(w.lsn, r.replay_lsn), 0) AS lag_bytes,
       CASE WHEN r.replay_lsn >= w.lsn THEN 0
            ELSE extract(epoch FROM r.replay_lag)::double precision END AS lag_seconds,
       r.reply_time AS checked_at
  FROM pg_stat_replication r,
       LATERAL (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                            ELSE pg_current_wal_lsn() END AS lsn) w
UNION ALL
SELECT 'libpq',
       f.name,
       NULL::inet,
       connect_guard.conninfo_masked(f.conninfo, false),
       NULL::text,
       s.reachable,
       s.error,
       s.in_recovery,
       s.timeline,
       NULL::pg_lsn,
       NULL::pg_lsn,
       NULL::pg_lsn,
       s.replay_lsn,
       s.lag_bytes,
       s.lag_seconds,
       s.checked_at
  FROM connect_guard.follower f
  LEFT JOIN connect_guard.follower_status s USING (name);

GRANT SELECT ON connect_follower_lag TO pg_monitor;
-- a view calls its functions with the reader's rights, and 99_privileges revokes them from PUBLIC
GRANT EXECUTE ON FUNCTION connect_guard.conninfo_masked(text, boolean) TO pg_monitor;

/*
 * connect_guard.remote_query: one query on another server (remote.c), for
 * the upgrade plans (70_upgrade.sql) and the HA managers' monitor
 * (69_ha_managers.sql).  With timeout_ms NULL, remote.c waits at most
 * connect_guard.follower_timeout.
 */
CREATE FUNCTION connect_guard.remote_query(conninfo text, sql text, timeout_ms integer DEFAULT NULL)
RETURNS jsonb LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_remote_query';
/* ------------------------------------------------------------------------
 * Pause, resume and the other signals to the sync service: the user's
 * calls.  A local consumer reads the local state, so its pause is applied
 * at once (54_pause.sql); a heroku or webhook connection's sync service is
 * asked by the worker first (50_requests.sql), and these return PAUSING or
 * RESUMING.
 * ------------------------------------------------------------------------ */

/*
 * connect_pause: Connect's Pause.  Pending work completes first: an open
 * batch must be finished by its consumer within the timeout.  Then the
 * connection is PAUSED (connect_next_batch hands out nothing), and with
 * block_writes its mapped tables are fenced and the writers in flight have
 * ended, so the trigger log head is final when this returns.
 */
CREATE FUNCTION connect_pause(connection text, block_writes boolean DEFAULT true,
                              timeout interval DEFAULT '30 s', reason text DEFAULT NULL,
                              cancel_writers boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_deadline timestamptz;
    v_started timestamptz := clock_timestamp();
    v_announced boolean := false;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_pause()');
    c := connect_guard.require_connection(connection);
    PERFORM connect_guard.require_not_null(block_writes, 'block_writes',
        'Pass true (the default) to fence the mapped tables while paused, or false to let writes reach the log.');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''30 s''');
    PERFORM connect_guard.require_not_null(cancel_writers, 'cancel_writers',
        'Pass false (the default) to wait for the writers in flight, or true to terminate them.');
    v_deadline := clock_timestamp() + timeout;
    IF c.adapter <> 'local' THEN
        -- a remote sync service is asked by the worker; this returns PAUSING (request_pause below)
        RETURN connect_guard.request_pause(connection, block_writes, timeout, reason, cancel_writers);
    END IF;
    IF c.state IN ('PAUSED', 'PAUSING') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is already paused', connection),
            DETAIL = format('It has been %s since %s.', c.state, c.state_since),
            HINT = 'Resume it with connect_resume() first, or leave it paused.';
    END IF;
    IF block_writes THEN
        PERFORM connect_guard.require_fence();
    END IF;

    -- Wait for the open batch without holding the connection's lock (its
    -- consumer needs the lock to finish it): each try locks the connection
    -- in a subtransaction, which require_no_open_batch's error rolls back.
    -- Neither the lock nor the batch is waited for past the deadline, and
    -- while this waits, connect_next_batch() opens no new batch.
    LOOP
        IF NOT v_announced THEN
            v_announced := connect_guard.pause_announce(c.connection_id);
        END IF;
        BEGIN
            c := connect_guard.lock_connection(c.connection_id, v_deadline);
            PERFORM connect_guard.require_no_open_batch(c.connection_id, connection);
            EXIT;
        EXCEPTION WHEN object_not_in_prerequisite_state THEN
            IF clock_timestamp() > v_deadline THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.02);
        END;
    END LOOP;
    -- under the lock: another pause may have committed while this one waited
    IF c.state IN ('PAUSED', 'PAUSING') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is already paused', connection),
            DETAIL = format('It has been %s since %s.', c.state, c.state_since),
            HINT = 'Resume it with connect_resume() first, or leave it paused.';
    END IF;

    PERFORM connect_guard.pause_apply(c, block_writes, reason, cancel_writers, v_deadline, v_started);
    RETURN 'PAUSED';
END;
$$;

CREATE FUNCTION connect_resume(connection text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    c := connect_guard.connection_for_update(connection);
    IF c.adapter <> 'local' THEN
        -- lowers the fence now, asks the sync service through the worker; returns RESUMING (request_resume below)
        RETURN connect_guard.request_resume(connection);
    END IF;
    IF c.state NOT IN ('PAUSED', 'PAUSING') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is not paused', connection),
            DETAIL = format('It is %s.', c.state),
            HINT = 'Only a paused connection can be resumed; see connect_status.';
    END IF;
    IF c.fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(c.fence_id);
    END IF;
    PERFORM connect_guard.connection_goto(c.connection_id, 'IDLE', NULL, 'resumed',
        jsonb_build_object('paused_for_ms', round(extract(epoch FROM clock_timestamp() - c.state_since) * 1000),
                           'fence_id', c.fence_id));
    RETURN 'IDLE';
END;
$$;

/*
 * connect_guard.request_pause is connect_pause() for a connection with a
 * remote sync service: the request is stored, the state is PAUSING, and the
 * worker does the rest (see the top of this file).
 */
CREATE FUNCTION connect_guard.request_pause(p_connection text, p_block_writes boolean, p_timeout interval,
                                            p_reason text, p_cancel_writers boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r connect_guard.request;
    v_id bigint;
BEGIN
    -- a consumer holding the connection's lock must not keep this waiting past the pause's timeout
    c := connect_guard.require_connection(p_connection);
    c := connect_guard.lock_connection(c.connection_id, clock_timestamp() + p_timeout);
    r := connect_guard.latest_state_request(c.connection_id);
    IF c.state = 'PAUSED' OR (c.state = 'PAUSING' AND r.action IS DISTINCT FROM 'pause')
       OR (c.state = 'PAUSING' AND r.status <> 'failed') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is already paused', p_connection),
            DETAIL = format('It has been %s since %s.%s', c.state, c.state_since,
                            CASE WHEN c.state = 'PAUSING' AND r.status = 'pending'
                                 THEN format(' Pause request %s is on its way to the sync service.', r.request_id) ELSE '' END),
            HINT = 'Resume it with connect_resume() first, or leave it paused; connect_wait_state() waits for PAUSED.';
    END IF;
    IF p_block_writes THEN
        PERFORM connect_guard.require_fence();
    END IF;
    v_id := connect_guard.request_enqueue(c.connection_id, 'pause', NULL,
        jsonb_build_object('block_writes', p_block_writes,
                           'cancel_writers', p_cancel_writers,
                           'reason', p_reason,
                           'timeout_s', extract(epoch FROM p_timeout)::double precision));
    PERFORM connect_guard.connection_goto(c.connection_id, 'PAUSING', NULL, 'pausing',
        jsonb_build_object('request_id', v_id, 'adapter', c.adapter, 'block_writes', p_block_writes,
                           'reason', p_reason),
        coalesce(p_reason, 'paused for maintenance'));
    RETURN 'PAUSING';
END;
$$;

/*
 * connect_guard.request_resume is connect_resume() for a connection with a
 * remote sync service: the fence goes down at once, the state is RESUMING
 * until the sync service says it runs again.
 */
CREATE FUNCTION connect_guard.request_resume(p_connection text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r connect_guard.request;
    v_id bigint;
BEGIN
    c := connect_guard.connection_for_update(p_connection);
    r := connect_guard.latest_state_request(c.connection_id);
    IF NOT (c.state IN ('PAUSED', 'PAUSING')
            OR (c.state = 'RESUMING' AND r.action = 'resume' AND r.status = 'failed')) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" is not paused', p_connection),
            DETAIL = format('It is %s.%s', c.state,
                            CASE WHEN c.state = 'RESUMING' AND r.status = 'pending'
                                 THEN format(' Resume request %s is on its way to the sync service.', r.request_id) ELSE '' END),
            HINT = 'Only a paused connection can be resumed; see connect_status, and connect_wait_state() to wait for IDLE.';
    END IF;
    IF c.fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(c.fence_id);
    END IF;
    v_id := connect_guard.request_enqueue(c.connection_id, 'resume', NULL, jsonb_build_object('timeout_s', 300));
    PERFORM connect_guard.connection_goto(c.connection_id, 'RESUMING', NULL, 'resuming',
        jsonb_build_object('request_id', v_id, 'adapter', c.adapter, 'fence_id', c.fence_id,
                           'paused_for_ms', round(extract(epoch FROM clock_timestamp() - c.state_since) * 1000)));
    RETURN 'RESUMING';
END;
$$;

/*
 * connect_refresh asks Connect for the connection's state and fills in the
 * remote id of every mapping that has none, by object name.  Returns the
 * request id.
 */
CREATE FUNCTION connect_refresh(connection text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
BEGIN
    c := connect_guard.connection_for_update(connection);
    IF c.adapter <> 'heroku' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" cannot be refreshed from Heroku Connect', c.name),
            DETAIL = format('Its adapter is %s, which has no API to read the state from.', c.adapter),
            HINT = 'Only heroku connections can be refreshed.';
    END IF;
    RETURN connect_guard.request_enqueue(c.connection_id, 'refresh');
END;
$$;

/*
 * connect_set_mapping_remote_id records Connect's id of a mapping (NULL
 * forgets it); reloads are sent to that id.
 */
CREATE FUNCTION connect_set_mapping_remote_id(connection text, tbl regclass, remote_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
BEGIN
    c := connect_guard.connection_for_update(connection);
    m := connect_guard.mapping_of(c, tbl);
    IF remote_id !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid remote mapping id %s', quote_literal(remote_id)),
            DETAIL = 'A mapping id is 1 to 128 letters, digits, "_", ".", ":" or "-".',
            HINT = 'Copy the id Heroku Connect shows for the mapping, or call connect_refresh() to fill it in by object name.';
    END IF;
    UPDATE connect_guard.mapping mp SET remote_id = connect_set_mapping_remote_id.remote_id
     WHERE mp.mapping_id = m.mapping_id;
    PERFORM connect_guard.log_event(c.connection_id, 'mapping_remote_id',
        jsonb_build_object('table', format('%I.%I', m.table_schema, m.table_name),
                           'object_name', m.object_name, 'remote_id', remote_id, 'previous', m.remote_id,
                           'source', 'connect_set_mapping_remote_id'));
END;
$$;

/*
 * connect_wait_state returns once the connection is in the given state
 * ('IDLE' also accepts POLLING_DB_CHANGES: both mean it runs), for
 * runbooks.  It fails at the timeout, or at once when the connection's last
 * pause or resume request failed, since then nothing will change the state
 * until someone acts; the error says why.
 */
CREATE FUNCTION connect_wait_state(connection text, state text, timeout interval DEFAULT '5 min')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r connect_guard.request;
    v_deadline timestamptz;
    v_targets text[];
    v_last text;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_wait_state()');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''5 min''');
    v_deadline := clock_timestamp() + timeout;
    PERFORM connect_guard.require_not_null(state, 'state', 'Wait for PAUSED (after connect_pause) or IDLE (after connect_resume).');
    IF state NOT IN ('IDLE', 'POLLING_DB_CHANGES', 'PAUSING', 'PAUSED', 'RESUMING') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown connection state %s', quote_literal(state)),
            HINT = 'Wait for PAUSED (after connect_pause) or IDLE (after connect_resume).';
    END IF;
    v_targets := CASE WHEN state = 'IDLE' THEN ARRAY['IDLE', 'POLLING_DB_CHANGES'] ELSE ARRAY[state] END;
    c := connect_guard.require_connection(connection);
    IF EXISTS (SELECT 1 FROM connect_guard.request q
                WHERE q.connection_id = c.connection_id AND q.status = 'pending'
                  AND q.created_xid = pg_current_xact_id_if_assigned()) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_transaction_state',
            MESSAGE = 'connect_wait_state() cannot wait for a request made in its own transaction',
            DETAIL = 'The worker sends a request only once the transaction that made it has committed.',
            HINT = 'Commit after connect_pause() or connect_resume(), then call connect_wait_state().';
    END IF;

    LOOP
        -- each statement sees what has committed since the last one (READ COMMITTED)
        SELECT * INTO c FROM connect_guard.connection WHERE connection_id = c.connection_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING
                ERRCODE = 'undefined_object',
                MESSAGE = format('connection "%s" was dropped while waiting for it to be %s', connection, state),
                HINT = 'The event log says who dropped it (kind connection_dropped); there is nothing left to wait for.';
        END IF;
        IF c.state = ANY (v_targets) THEN
            RETURN c.state;
        END IF;
        r := connect_guard.latest_state_request(c.connection_id);
        v_last := CASE WHEN r.request_id IS NULL THEN ''
                       ELSE format(' Its last request, %s %s, %s after %s attempt%s%s.', r.action, r.request_id,
                                   CASE r.status WHEN 'pending' THEN 'is pending' ELSE r.status END,
                                   r.attempts, CASE WHEN r.attempts = 1 THEN '' ELSE 's' END,
                                   CASE WHEN r.last_error IS NOT NULL THEN '; last error: ' || r.last_error ELSE '' END) END;
        IF r.status = 'failed' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('connection "%s" will not become %s: its %s request %s failed', connection, state,
                                 r.action, r.request_id),
                DETAIL = format('It is %s since %s.%s', c.state, c.state_since, v_last),
                HINT = format('Fix the cause, then call %s again; connect_requests and the event log have the details.',
                              CASE r.action WHEN 'pause' THEN 'connect_pause()' ELSE 'connect_resume()' END);
        END IF;
        IF clock_timestamp() > v_deadline THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('timed out after %s s waiting for connection "%s" to be %s',
                                 round(extract(epoch FROM timeout)::numeric, 1), connection, state),
                DETAIL = format('It is %s since %s.%s', c.state, c.state_since, v_last),
                HINT = 'See connect_requests; check that the connect_guard worker runs (shared_preload_libraries) and reaches the sync service.';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END;
$$;

/* ------------------------------------------------------------------------
 * A connection's configuration in Heroku Connect's export format
 * (17_config_format.sql): connect_export_config(), connect_import_config()
 * and, for a heroku connection, connect_wait_config().
 *
 * A connection without a sync service of its own to ask (local, webhook)
 * answers at once: its export is built from its mappings (the
 * configuration each one was given by a file, or derived from its table's
 * columns), and an import maps the tables that exist and keeps the file's
 * configuration on their mappings.
 *
 * A heroku connection's configuration is Connect's: the export is Connect's
 * export endpoint, and an import goes to Connect's import endpoint.  No
 * HTTP call is made in a user's transaction (the worker makes them, 50_requests.sql),
 * so these work as connect_pause() and connect_wait_state() do: the call
 * stores the request and returns a receipt, {"request_id", "status":
 * "pending"}, and once it has committed, connect_wait_config() waits for
 * Connect's answer and returns it (the file, for an export).  In psql,
 * where every statement commits by itself:
 *
 *     SELECT connect_export_config('hc');     -- {"request_id": 12, "status": "pending", ...}
 *     SELECT connect_wait_config('hc');       -- Connect's export file
 *
 * The answer also becomes the configuration of the mappings it names, and
 * is compared with their tables (field drift, 19_table_shape_changes.sql).
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.map_table_problem says why table p_tbl cannot be mapped
 * (connect_map_table's checks, without mapping it), or NULL.
 */
CREATE FUNCTION connect_guard.map_table_problem(p_tbl regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
             WHEN cl.relkind NOT IN ('r', 'p') OR cl.relpersistence = 't' OR n.nspname = 'connect_guard'
                 THEN 'it is no permanent or unlogged table of the application'
             WHEN cl.relispartition THEN 'it is a partition'
             WHEN NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = cl.oid AND i.indisprimary)
                 THEN 'it has no primary key'
           END
      FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE cl.oid = p_tbl
$$;

/*
 * connect_export_config: the connection's configuration in Connect's
 * export format.  heroku: asks Connect for it and returns a receipt; the
 * file comes from connect_wait_config().
 */
CREATE FUNCTION connect_export_config(connection text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_id bigint;
    v_doc jsonb;
    v_problem text;
    v_tables text[];
BEGIN
    c := connect_guard.require_connection(connection);
    IF c.adapter = 'heroku' THEN
        v_id := connect_guard.request_enqueue(c.connection_id, 'export');
        RAISE NOTICE USING
            MESSAGE = format('Heroku Connect''s configuration of connection "%s" is requested (request %s)', c.name, v_id),
            HINT = format('The worker asks Connect once this transaction commits; then SELECT connect_wait_config(%L) returns the file.',
                          c.name);
        RETURN jsonb_build_object('request_id', v_id, 'action', 'export', 'status', 'pending',
                                  'wait', format('SELECT connect_wait_config(%L)', c.name));
    END IF;

    SELECT coalesce(jsonb_agg(jsonb_build_object(
                        'object_name', m.object_name,
                        'config', coalesce(m.config, connect_guard.config_of_columns(
                                                         connect_guard.table_columns(connect_guard.mapping_relid(m)))))
                    ORDER BY lower(m.object_name), m.mapping_id), '[]'),
           array_agg(format('%I.%I', m.table_schema, m.table_name) ORDER BY lower(m.object_name), m.mapping_id)
      INTO v_doc, v_tables
      FROM connect_guard.mapping m WHERE m.connection_id = c.connection_id;
    v_doc := jsonb_build_object(
        'version', 1,
        'connection', jsonb_build_object('app_name', NULL, 'organization_id', NULL, 'features', '{}'::jsonb,
                                         'api_version', NULL, 'logplex_log_enabled', false)
                      || coalesce(c.config, '{}')
                      || jsonb_build_object('name', c.name,
                                            'exported_at', to_char(clock_timestamp() AT TIME ZONE 'UTC',
                                                                   'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
        'mappings', v_doc);
    v_problem := connect_guard.config_problem(v_doc);
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('connection "%s" cannot be exported in Connect''s format: %s', c.name, v_problem),
            DETAIL = format('The mappings in the file''s order: %s.',
                            (SELECT string_agg(format('mappings[%s] %s', i - 1, t), ', ')
                               FROM unnest(v_tables) WITH ORDINALITY u(t, i))),
            HINT = 'Object names must be Salesforce API names (letters, digits and "_"), one per object: map the table again with another object_name, or import a configuration for it.';
    END IF;
    RETURN v_doc;
END;
$$;

/*
 * connect_import_config: gives a connection the configuration of a file in
 * Connect's export format.  The file is checked first, whole: a malformed
 * or inconsistent file changes nothing, and the error names the key.  Each
 * of its objects is the connection's mapping of that object, or the table
 * schema.<object in lower case> (Connect's naming), which is mapped; a
 * table that does not exist is reported ("missing"), not created.  A local
 * or webhook connection keeps each mapping's configuration; a heroku
 * connection also sends the file to Connect (the configuration is Connect's
 * once Connect has accepted it: connect_wait_config()).  dry_run only
 * checks and says what it would do.  Returns the report.
 */
CREATE FUNCTION connect_import_config(connection text, config jsonb, schema text DEFAULT 'salesforce',
                                      dry_run boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    e jsonb;
    i integer := 0;
    v_existing connect_guard.mapping;
    v_tbl regclass;
    v_problem text;
    v_owner text;
    v_map jsonb := '[]';
    v_update jsonb := '[]';
    v_missing jsonb := '[]';
    v_report jsonb;
    v_id bigint;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_not_null(connect_import_config.config, 'config',
        'Pass the file as jsonb, for example pg_read_file(''/path/export.json'')::jsonb, or psql''s \set with :''file''.');
    PERFORM connect_guard.require_not_null(schema, 'schema',
        'Pass the schema of the mapped tables (Connect''s is salesforce by default).');
    PERFORM connect_guard.require_not_null(dry_run, 'dry_run', 'Pass true to only check the file, false to import it.');
    PERFORM connect_guard.config_require_valid(connect_import_config.config, 'The file');

    -- what each mapping of the file is here; nothing changes before every one is known to be possible
    FOR e IN SELECT x FROM jsonb_array_elements(connect_import_config.config -> 'mappings') x LOOP
        SELECT * INTO v_existing FROM connect_guard.mapping mp
         WHERE mp.connection_id = c.connection_id AND lower(mp.object_name) = lower(e ->> 'object_name');
        IF FOUND THEN
            v_update := v_update || to_jsonb(format('%I.%I', v_existing.table_schema, v_existing.table_name));
        ELSE
            v_tbl := to_regclass(format('%I.%I', schema, lower(e ->> 'object_name')));
            IF v_tbl IS NULL THEN
                v_missing := v_missing || jsonb_build_object('object_name', e ->> 'object_name',
                                                             'table', format('%I.%I', schema, lower(e ->> 'object_name')));
            ELSE
                SELECT mp.object_name INTO v_owner FROM connect_guard.mapping mp
                  JOIN pg_class cl ON cl.oid = v_tbl JOIN pg_namespace n ON n.oid = cl.relnamespace
                 WHERE mp.connection_id = c.connection_id AND mp.table_schema = n.nspname AND mp.table_name = cl.relname;
                v_problem := CASE WHEN v_owner IS NOT NULL
                                  THEN format('connection "%s" maps it as object %s', c.name, v_owner)
                                  ELSE connect_guard.map_table_problem(v_tbl) END;
                IF v_problem IS NOT NULL THEN
                    RAISE EXCEPTION USING
                        ERRCODE = 'invalid_parameter_value',
                        MESSAGE = format('invalid configuration: mappings[%s].object_name: table %s cannot be mapped: %s',
                                         i, v_tbl, v_problem),
                        DETAIL = 'The file''s object would be that table; nothing was imported.',
                        HINT = 'Fix the table (connect_map_table() says what it needs) or leave the object out of the file.';
                END IF;
                v_map := v_map || jsonb_build_object('object_name', e ->> 'object_name', 'table', v_tbl::text);
            END IF;
        END IF;
        i := i + 1;
    END LOOP;

    v_report := jsonb_build_object('mapped', (SELECT coalesce(jsonb_agg(x -> 'table'), '[]') FROM jsonb_array_elements(v_map) x),
                                   'updated', v_update, 'missing', v_missing);
    IF dry_run THEN
        RETURN jsonb_build_object('status', 'dry_run') || v_report;
    END IF;

    FOR e IN SELECT x FROM jsonb_array_elements(v_map) x LOOP
        PERFORM @extschema@.connect_map_table(c.name, (e ->> 'table')::regclass, e ->> 'object_name');
    END LOOP;
    IF jsonb_array_length(v_missing) > 0 THEN
        RAISE NOTICE USING
            MESSAGE = format('%s object(s) of the file have no table here: %s', jsonb_array_length(v_missing),
                             (SELECT string_agg(format('%s (%s)', x ->> 'object_name', x ->> 'table'), ', ')
                                FROM jsonb_array_elements(v_missing) x)),
            HINT = CASE WHEN c.adapter = 'heroku' THEN 'Connect creates the tables of new mappings; map them with connect_map_table() once they exist.'
                        ELSE 'Create them, then import the file again (the objects mapped already are updated).' END;
    END IF;

    IF c.adapter = 'heroku' THEN
        v_id := connect_guard.request_enqueue(c.connection_id, 'import', NULL,
                                              jsonb_build_object('mappings', jsonb_array_length(connect_import_config.config -> 'mappings')));
        UPDATE connect_guard.request SET payload = connect_import_config.config WHERE request_id = v_id;
        RAISE NOTICE USING
            MESSAGE = format('the configuration goes to Heroku Connect as import request %s', v_id),
            HINT = format('The worker sends it once this transaction commits; then SELECT connect_wait_config(%L) waits for Connect''s answer.',
                          c.name);
        RETURN jsonb_build_object('request_id', v_id, 'action', 'import', 'status', 'pending',
                                  'wait', format('SELECT connect_wait_config(%L)', c.name)) || v_report;
    END IF;

    UPDATE connect_guard.connection cn SET config = connect_import_config.config -> 'connection'
     WHERE cn.connection_id = c.connection_id;
    v_report := v_report || jsonb_build_object('schema_changes',
        (connect_guard.config_store(c.connection_id, connect_import_config.config, 'import', 'import',
                                    'connect_import_config') -> 'schema_changes'));
    PERFORM connect_guard.log_event(c.connection_id, 'config_imported',
        jsonb_build_object('mappings', jsonb_array_length(connect_import_config.config -> 'mappings')) || v_report);
    RETURN jsonb_build_object('status', 'imported') || v_report;
END;
$$;

/*
 * connect_wait_config waits for the answer to the newest export or import
 * request of a heroku connection (made in an earlier transaction) and
 * returns it: Connect's export file, or its answer to the import.  It
 * fails at once when Connect refused the request, with Connect's message
 * (which names the key of the file at fault), and at the timeout.
 */
CREATE FUNCTION connect_wait_config(connection text, timeout interval DEFAULT '2 min')
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    r connect_guard.request;
    v_deadline timestamptz;
BEGIN
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''2 min''');
    v_deadline := clock_timestamp() + timeout;
    PERFORM connect_guard.require_read_committed('connect_wait_config()');
    c := connect_guard.require_connection(connection);
    IF c.adapter <> 'heroku' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('connection "%s" has no configuration request to wait for', c.name),
            DETAIL = format('Its adapter is %s: connect_export_config() and connect_import_config() answer at once.', c.adapter),
            HINT = 'Only heroku connections ask Connect, through the worker.';
    END IF;
    SELECT * INTO r FROM connect_guard.request q
     WHERE q.connection_id = c.connection_id AND q.action IN ('export', 'import')
     ORDER BY q.request_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('no export or import was requested for connection "%s"', c.name),
            HINT = 'Call connect_export_config() or connect_import_config() first, and commit.';
    END IF;
    IF r.status = 'pending' AND r.created_xid = pg_current_xact_id_if_assigned() THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_transaction_state',
            MESSAGE = 'connect_wait_config() cannot wait for a request made in its own transaction',
            DETAIL = 'The worker sends a request only once the transaction that made it has committed.',
            HINT = 'Commit after connect_export_config() or connect_import_config(), then call connect_wait_config().';
    END IF;

    LOOP
        -- each statement sees what has committed since the last one (READ COMMITTED)
        SELECT * INTO r FROM connect_guard.request WHERE request_id = r.request_id;
        IF r.status = 'succeeded' THEN
            RETURN r.result;
        ELSIF r.status = 'failed' THEN
            RAISE EXCEPTION USING
                ERRCODE = CASE WHEN r.action = 'import' AND r.last_http_status IN (400, 422)
                               THEN 'invalid_parameter_value' ELSE 'object_not_in_prerequisite_state' END,
                MESSAGE = format('the %s of connection "%s" failed: %s', r.action, c.name, r.last_error),
                DETAIL = format('Request %s, after %s attempt%s.', r.request_id, r.attempts,
                                CASE WHEN r.attempts = 1 THEN '' ELSE 's' END),
                HINT = CASE WHEN r.action = 'import' AND r.last_http_status IN (400, 422)
                            THEN 'Connect refused the file and changed nothing: fix the key it names and import again.'
                            ELSE 'Fix the cause (connect_requests and the event log have the details), then ask again.' END;
        END IF;
        IF clock_timestamp() > v_deadline THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('timed out after %s s waiting for the %s of connection "%s"',
                                 round(extract(epoch FROM timeout)::numeric, 1), r.action, c.name),
                DETAIL = format('Request %s is %s after %s attempt%s%s.', r.request_id, r.status, r.attempts,
                                CASE WHEN r.attempts = 1 THEN '' ELSE 's' END,
                                CASE WHEN r.last_error IS NOT NULL THEN '; last error: ' || r.last_error ELSE '' END),
                HINT = 'See connect_requests; check that the connect_guard worker runs and reaches Connect. connect_wait_config() may be called again.';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END;
$$;
/* ------------------------------------------------------------------------
 * The schema watch: every change of a mapped table that could hide writes
 * from the log, or that makes it differ from its mapping, is noticed at
 * once (19_table_shape_changes.sql records it: SCHEMA_CHANGED, an event, a
 * WARNING, a row of connect_schema_drift), by
 *
 *   - an event trigger on ddl_command_end (ALTER TABLE of every kind:
 *     DISABLE/ENABLE [REPLICA|ALWAYS] TRIGGER, ALTER COLUMN ... TYPE,
 *     ADD/DROP COLUMN, ATTACH/DETACH PARTITION, INHERIT; CREATE TABLE ...
 *     INHERITS / PARTITION OF; CREATE [OR REPLACE] TRIGGER, ALTER TRIGGER)
 *     on the mapped table, its partitions or its inheritance children;
 *   - an event trigger on sql_drop (DROP TABLE of the table or of one of
 *     its partitions, DROP TRIGGER of a capture trigger, DROP SCHEMA and
 *     DROP OWNED that take them);
 *   - the truncate watch (TRUNCATE of one partition, 19_table_shape.sql);
 *   - the worker, every cycle (schema_watch_cycle), for what event triggers
 *     do not see: a superuser's direct change of the catalog.
 *
 * The event triggers are ENABLE ALWAYS, so that a session with
 * session_replication_role = replica is watched too.  They cost nothing
 * for other commands (WHEN TAG), and little for these: one look at the
 * mapping catalog and the command's relations.  They run as the
 * extension's owner (SECURITY DEFINER), so that any role's DDL is watched
 * without any right on connect_guard's catalog, and they stand aside while
 * the extension is being created or dropped, and while connect_guard
 * changes the triggers of a mapped table itself (own_ddl).  A failure of
 * the watch itself is a WARNING, never the failure of the user's command
 * (the worker's next cycle looks again).
 *
 * The way out is connect_save_mapping() (runbooks/field_change.sql): it
 * repairs connect_guard's own triggers, accepts the table as it is now, and
 * asks for a reload when writes may have been hidden.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.on_ddl_command_end: checks the mappings of the relations a
 * command created or altered, and of the tables whose triggers it changed.
 * Cheap first: a temporary table, or a command on no mapped table, costs
 * one look at the command and one at the mappings.
 */
CREATE FUNCTION connect_guard.on_ddl_command_end()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_relids oid[];
    v_has_parent boolean;
    v_mappings integer[];
    v_message text;
BEGIN
    -- connect_guard changes the table itself, or the extension is being created or dropped (no catalog)
    IF connect_guard.in_own_ddl() OR to_regclass('connect_guard.mapping') IS NULL THEN
        RETURN;
    END IF;
    -- any failure of the watch is a WARNING, never the failure of the user's command
    BEGIN
        -- one query: the relations of the command (not temporary ones), and the mappings of those that
        -- are mapped tables (a LATERAL per relation, by the catalogs' indexes)
        SELECT array_agg(r.relid), array_agg(mp.mapping_id) FILTER (WHERE mp.mapping_id IS NOT NULL),
               bool_or(EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = r.relid))
          INTO v_relids, v_mappings, v_has_parent
          FROM (SELECT CASE WHEN d.classid = 'pg_trigger'::regclass
                            THEN (SELECT tg.tgrelid FROM pg_trigger tg WHERE tg.oid = d.objid)
                            ELSE d.objid END AS relid
                  FROM pg_event_trigger_ddl_commands() d
                 WHERE d.classid IN ('pg_class'::regclass, 'pg_trigger'::regclass)
                   AND d.schema_name IS DISTINCT FROM 'pg_temp') r
          -- OFFSET 0: looked up per relation (a flattened join would start from every mapping)
          LEFT JOIN LATERAL (SELECT n.nspname, cl.relname FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
                              WHERE cl.oid = r.relid OFFSET 0) nm ON true
          LEFT JOIN LATERAL (SELECT m.mapping_id FROM connect_guard.mapping m
                              WHERE m.table_schema = nm.nspname AND m.table_name = nm.relname OFFSET 0) mp ON true
         WHERE r.relid IS NOT NULL;
        IF v_has_parent THEN
            -- a partition or an inheritance child: the mappings of its ancestors
            v_mappings := connect_guard.mappings_of_relations(v_relids);
        END IF;
        IF v_mappings IS NULL THEN
            RETURN;
        END IF;
        PERFORM connect_guard.schema_changes_record(v_mappings, 'ddl', tg_tag);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        RAISE WARNING USING
            MESSAGE = format('connect_guard could not check what %s changed: %s', tg_tag, v_message),
            HINT = 'The command went through; the connect_guard worker checks the mapped tables on its next cycle.';
    END;
END;
$$;

/*
 * connect_guard.on_sql_drop: checks the mappings whose table, partition or
 * trigger a command dropped.
 */
CREATE FUNCTION connect_guard.on_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_dropped text[];
    v_extension boolean;
    v_mappings integer[];
    v_message text;
BEGIN
    IF connect_guard.in_own_ddl() THEN
        RETURN;
    END IF;
    BEGIN
        -- schema.table of each table dropped, or whose trigger was; none when the extension itself goes
        SELECT array_agg(format('%I.%I', d.address_names[1], d.address_names[2]))
               FILTER (WHERE d.object_type IN ('table', 'trigger') AND NOT d.is_temporary),
               bool_or(d.object_type = 'extension' AND d.object_identity = 'connect_guard')
          INTO v_dropped, v_extension
          FROM pg_event_trigger_dropped_objects() d;
        IF v_dropped IS NULL OR v_extension OR to_regclass('connect_guard.mapping') IS NULL THEN
            RETURN;
        END IF;
        SELECT array_agg(m.mapping_id) INTO v_mappings
          FROM connect_guard.mapping m
         WHERE format('%I.%I', m.table_schema, m.table_name) = ANY (v_dropped)
            OR m.shape -> 'partitions' ?| v_dropped;
        IF v_mappings IS NULL THEN
            RETURN;
        END IF;
        PERFORM connect_guard.schema_changes_record(v_mappings, 'ddl', tg_tag);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        RAISE WARNING USING
            MESSAGE = format('connect_guard could not check what %s dropped: %s', tg_tag, v_message),
            HINT = 'The command went through; the connect_guard worker checks the mapped tables on its next cycle.';
    END;
END;
$$;

CREATE EVENT TRIGGER connect_guard_ddl_watch ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE TRIGGER', 'ALTER TRIGGER')
    EXECUTE FUNCTION connect_guard.on_ddl_command_end();
CREATE EVENT TRIGGER connect_guard_drop_watch ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP TRIGGER', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION connect_guard.on_sql_drop();
-- also in sessions with session_replication_role = replica (pg_restore --disable-triggers, by hand)
ALTER EVENT TRIGGER connect_guard_ddl_watch ENABLE ALWAYS;
ALTER EVENT TRIGGER connect_guard_drop_watch ENABLE ALWAYS;

/*
 * connect_guard.schema_watch_cycle is the worker's check of every mapped
 * table, every cycle, for what the event triggers cannot see (a superuser
 * changing pg_trigger by hand).  One query digests what each check would
 * read (mapping_fingerprints); only the mappings whose digest moved since
 * the last cycle, or whose table was never seen whole, are checked.  A
 * mapping whose rows or table another transaction holds is left for the
 * next cycle (lock_timeout).  A mapping that a reload moved back to
 * DATA_SYNCED while its changes are still open goes back to
 * SCHEMA_CHANGED: a reload alone does not accept a changed table.  Returns
 * the number of new findings.
 */
CREATE FUNCTION connect_guard.schema_watch_cycle()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '100ms'
AS $$
DECLARE
    v_new integer := 0;
    m connect_guard.mapping;
    f record;
BEGIN
    FOR f IN
        SELECT fp.mapping_id, fp.fingerprint
          FROM connect_guard.mapping_fingerprints() fp
          LEFT JOIN connect_guard.mapping_verified v USING (mapping_id)
         WHERE v.verified_at IS NULL OR v.fingerprint IS DISTINCT FROM fp.fingerprint
         ORDER BY fp.mapping_id
    LOOP
        BEGIN
            SELECT * INTO m FROM connect_guard.mapping WHERE mapping_id = f.mapping_id;
            v_new := v_new + connect_guard.schema_changes_check(m, 'worker', 'the worker''s check');
            UPDATE connect_guard.mapping_verified SET fingerprint = f.fingerprint WHERE mapping_id = f.mapping_id;
        EXCEPTION WHEN lock_not_available THEN
            NULL;       -- another transaction holds the mapping or its table: next cycle
        END;
    END LOOP;
    FOR m IN
        SELECT mp.* FROM connect_guard.mapping mp
         WHERE mp.state IN ('INITIAL', 'DATA_SYNCED')
           AND EXISTS (SELECT 1 FROM connect_guard.schema_change s
                        WHERE s.mapping_id = mp.mapping_id AND s.resolved_at IS NULL)
    LOOP
        PERFORM connect_guard.mappings_goto(m.connection_id, ARRAY[m.mapping_id], 'SCHEMA_CHANGED',
            ARRAY['INITIAL', 'DATA_SYNCED'], 'schema_changed', jsonb_build_object(
                'table', format('%I.%I', m.table_schema, m.table_name), 'object_name', m.object_name,
                'source', 'worker',
                'context', 'its schema changes are still open: a reload does not settle them, connect_save_mapping() does'));
    END LOOP;
    RETURN v_new;
END;
$$;

/*
 * connect_guard.trigger_sql: the statement that creates (or puts back)
 * expected trigger e on relation p_rel.
 */
CREATE FUNCTION connect_guard.trigger_sql(p_name text, p_type smallint, p_function oid, p_arguments text[],
                                          p_rel regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('CREATE OR REPLACE TRIGGER %I %s %s ON %s FOR EACH %s EXECUTE FUNCTION %s(%s)',
                  p_name, CASE WHEN p_type & 2 = 2 THEN 'BEFORE' ELSE 'AFTER' END,
                  array_to_string(ARRAY[CASE WHEN p_type & 4 = 4 THEN 'INSERT' END,
                                        CASE WHEN p_type & 16 = 16 THEN 'UPDATE' END,
                                        CASE WHEN p_type & 8 = 8 THEN 'DELETE' END,
                                        CASE WHEN p_type & 32 = 32 THEN 'TRUNCATE' END], ' OR '),
                  p_rel, CASE WHEN p_type & 1 = 1 THEN 'ROW' ELSE 'STATEMENT' END,
                  p_function::regproc,
                  (SELECT coalesce(string_agg(quote_literal(a), ', ' ORDER BY i), '')
                     FROM unnest(p_arguments) WITH ORDINALITY u(a, i)))
$$;

/*
 * connect_guard.repair_triggers puts connect_guard's own triggers of
 * mapping m back as it installs them: created again where missing or
 * changed, enabled in the origin role where disabled, REPLICA or ALWAYS.
 * Returns the triggers of others (Connect's) that are not as expected:
 * connect_guard never touches those.
 */
CREATE FUNCTION connect_guard.repair_triggers(c connect_guard.connection, m connect_guard.mapping)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel regclass := connect_guard.mapping_relid(m);
    e record;
    r regclass;
    t pg_trigger;
    v_not_ours text[] := '{}';
    v_was boolean := connect_guard.own_ddl(true);
BEGIN
    FOR e IN SELECT * FROM connect_guard.capture_triggers_expected(c, m) ORDER BY placement DESC LOOP
        FOR r IN
            SELECT v_rel WHERE e.placement = 'table'
            UNION ALL
            SELECT p FROM connect_guard.partitions_of(v_rel) p
             WHERE e.placement = 'each_partition' OR (e.placement = 'table' AND e.trigger_type & 1 = 1)
        LOOP
            SELECT * INTO t FROM pg_trigger tg WHERE tg.tgrelid = r AND tg.tgname = e.trigger_name;
            IF EXISTS (SELECT 1 FROM connect_guard.mapping_findings(m, false) f
                        WHERE f.kind LIKE 'trigger\_%' AND f.object = format('%I on %s', e.trigger_name, r)) THEN
                IF e.owned_by <> 'connect_guard' THEN
                    v_not_ours := v_not_ours || format('%I on %s', e.trigger_name, r);
                ELSIF t.oid IS NULL OR t.tgtype <> e.trigger_type OR t.tgfoid <> e.function_oid
                      OR connect_guard.trigger_arguments(t) IS DISTINCT FROM e.arguments
                      OR t.tgqual IS NOT NULL OR cardinality(t.tgattr::int2[]) > 0 THEN
                    -- a partition's clone is put back (created again) with its table's trigger
                    EXECUTE connect_guard.trigger_sql(e.trigger_name, e.trigger_type, e.function_oid, e.arguments,
                                                      CASE WHEN e.placement = 'table' THEN v_rel ELSE r END);
                END IF;
                SELECT * INTO t FROM pg_trigger tg WHERE tg.tgrelid = r AND tg.tgname = e.trigger_name;
                IF e.owned_by = 'connect_guard' AND t.tgenabled IS DISTINCT FROM 'O' AND t.oid IS NOT NULL THEN
                    EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', r, e.trigger_name);
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    PERFORM connect_guard.own_ddl(v_was);
    RETURN v_not_ours;
END;
$$;

/*
 * connect_save_mapping is the way out of SCHEMA_CHANGED, as saving the
 * mapping is in Connect's dashboard: it puts connect_guard's own capture
 * triggers back, accepts the table's shape as it is now, and (for a
 * connection whose configuration is its own: local, webhook) takes the
 * table's columns as the mapping's fields.  What it cannot mend stops it,
 * with what to do: an inheritance child, a trigger of Connect's, fields of
 * Connect's configuration that the table lacks.  When a change may have
 * hidden writes (needs_reload), the mapping is reloaded
 * (connect_reload_mapping: RELOAD_TABLE, then DATA_SYNCED once the sync
 * service has reloaded it); reload => false skips that, reload => true
 * reloads anyway.  Returns the mapping's state.
 */
CREATE FUNCTION connect_save_mapping(connection text, tbl regclass, reload boolean DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
    v_not_ours text[];
    v_left text;
    v_needs_reload boolean;
    v_reload boolean;
    v_state_before text;
    v_changes jsonb;
    v_request bigint;
    v_reloading boolean;
    v_gone regclass;
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_table(tbl);
    m := connect_guard.mapping_of(c, tbl);

    v_not_ours := connect_guard.repair_triggers(c, m);
    IF cardinality(v_not_ours) > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('cannot save the mapping of %s: triggers that are not connect_guard''s are not as expected: %s',
                             tbl, array_to_string(v_not_ours, ', ')),
            DETAIL = 'connect_guard never changes the sync service''s own objects.',
            HINT = 'Edit and save the mapping in Heroku Connect''s dashboard, so that Connect puts its trigger back; then call connect_save_mapping() again.';
    END IF;

    -- a connection that owns its configuration takes the table's columns as fields
    IF c.adapter <> 'heroku' OR m.config_source IS DISTINCT FROM 'connect' THEN
        UPDATE connect_guard.mapping mp
           SET config = (SELECT (coalesce(mp.config, connect_guard.config_of_columns('{}')) - 'indexes' - 'upsert_field')
                                || jsonb_build_object('fields', d.fields)
                                -- indexes and the upsert field of fields that are gone go with them
                                || jsonb_build_object('indexes', coalesce(
                                       (SELECT jsonb_object_agg(i.key, i.value) FROM jsonb_each(mp.config -> 'indexes') i
                                         WHERE i.key = 'Id' OR EXISTS (SELECT 1 FROM jsonb_object_keys(d.fields) f
                                                                        WHERE lower(f) = lower(i.key))),
                                       '{"Id": {"unique": true}}'))
                                || coalesce((SELECT jsonb_build_object('upsert_field', mp.config -> 'upsert_field')
                                               WHERE EXISTS (SELECT 1 FROM jsonb_object_keys(d.fields) f
                                                              WHERE lower(f) = lower(mp.config ->> 'upsert_field'))), '{}')
                           FROM (SELECT connect_guard.config_fields_for(mp.config, connect_guard.table_columns(tbl)) AS fields) d),
               config_at = clock_timestamp()
         WHERE mp.mapping_id = m.mapping_id;
    END IF;
    -- a partition that left the table keeps no truncate watch of ours
    PERFORM connect_guard.own_ddl(true);
    FOR v_gone IN SELECT to_regclass(p) FROM jsonb_array_elements_text(m.shape -> 'partitions') p
                   WHERE p <> ALL (SELECT x::text FROM connect_guard.partitions_of(tbl) x) LOOP
        IF v_gone IS NOT NULL AND NOT (SELECT relispartition FROM pg_class WHERE oid = v_gone) THEN
            EXECUTE format('DROP TRIGGER IF EXISTS _connect_guard_truncate_watch ON %s', v_gone);
        END IF;
    END LOOP;
    PERFORM connect_guard.own_ddl(false);
    UPDATE connect_guard.mapping mp SET shape = connect_guard.table_shape(tbl) WHERE mp.mapping_id = m.mapping_id
    RETURNING * INTO m;

    -- what is left cannot be accepted
    SELECT string_agg(connect_guard.schema_change_text(f.kind, f.object, f.expected, f.actual), '; ') INTO v_left
      FROM connect_guard.mapping_findings(m) f;
    IF v_left IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('cannot save the mapping of %s: %s', tbl, v_left),
            DETAIL = 'Nothing was changed.',
            HINT = CASE WHEN v_left LIKE '%inheritance_child%'
                        THEN format('Move the child''s rows into %s and detach it (ALTER TABLE child NO INHERIT %s), then save again.', tbl, tbl)
                        ELSE 'The fields are Connect''s: edit the mapping in Heroku Connect (or change the table) so that they match, fetch its configuration again (connect_export_config(), connect_wait_config()), then save again.' END;
    END IF;

    SELECT coalesce(bool_or(s.needs_reload), false), min(s.state_before),
           coalesce(jsonb_agg(jsonb_build_object('kind', s.kind, 'object', s.object, 'needs_reload', s.needs_reload)
                              ORDER BY s.schema_change_id), '[]')
      INTO v_needs_reload, v_state_before, v_changes
      FROM connect_guard.schema_change s WHERE s.mapping_id = m.mapping_id AND s.resolved_at IS NULL;
    v_reload := coalesce(reload, v_needs_reload);
    v_reloading := EXISTS (SELECT 1 FROM connect_guard.request r
                            WHERE r.mapping_id = m.mapping_id AND r.action = 'reload' AND r.status = 'pending');
    UPDATE connect_guard.schema_change s
       SET resolved_at = clock_timestamp(),
           resolution = format('saved by %s%s', session_user,
                               CASE WHEN v_reload THEN ', reloaded'
                                    WHEN v_needs_reload THEN ', without the reload it needed' ELSE '' END)
     WHERE s.mapping_id = m.mapping_id AND s.resolved_at IS NULL;
    INSERT INTO connect_guard.mapping_verified (mapping_id, verified_at) VALUES (m.mapping_id, clock_timestamp())
    ON CONFLICT (mapping_id) DO UPDATE SET verified_at = excluded.verified_at;

    IF v_reload AND NOT v_reloading THEN
        v_request := @extschema@.connect_reload_mapping(c.name, tbl);
    ELSIF m.state = 'SCHEMA_CHANGED' THEN
        PERFORM connect_guard.mappings_goto(c.connection_id, ARRAY[m.mapping_id],
                                            CASE WHEN v_reloading THEN 'RELOAD_TABLE'
                                                 ELSE coalesce(v_state_before, 'DATA_SYNCED') END,
                                            ARRAY['SCHEMA_CHANGED']);
    END IF;
    PERFORM connect_guard.log_event(c.connection_id, 'mapping_saved', jsonb_build_object(
        'table', format('%I.%I', m.table_schema, m.table_name), 'object_name', m.object_name,
        'resolved', v_changes, 'needed_reload', v_needs_reload, 'reload', v_reload OR v_reloading,
        'request_id', v_request));
    IF v_needs_reload AND NOT v_reload THEN
        RAISE WARNING USING
            MESSAGE = format('the mapping of %s is saved without the reload it needed', tbl),
            DETAIL = 'Writes may have reached the table without a log entry; the sync service''s copy may differ from it.',
            HINT = format('Reload it when you can: SELECT connect_reload_mapping(%L, %L).', c.name, tbl::text);
    END IF;
    RETURN (SELECT mp.state FROM connect_guard.mapping mp WHERE mp.mapping_id = m.mapping_id);
END;
$$;

/*
 * connect_unmap_dropped_table unmaps a mapped table that was dropped (a
 * regclass cannot name it, so connect_unmap_table() cannot): table_name is
 * schema.table as connect_mappings shows it.
 */
CREATE FUNCTION connect_unmap_dropped_table(connection text, table_name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    m connect_guard.mapping;
    v_name text[];
BEGIN
    c := connect_guard.connection_for_update(connection);
    PERFORM connect_guard.require_not_null(table_name, 'table_name',
        'Give it as schema.table, as connect_mappings shows it (table_schema, table_relname).');
    BEGIN
        v_name := parse_ident(table_name);
    EXCEPTION WHEN invalid_parameter_value THEN
        v_name := NULL;
    END;
    IF cardinality(v_name) IS DISTINCT FROM 2 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid table name %s', coalesce(quote_literal(table_name), 'NULL')),
            HINT = 'Give it as schema.table, as connect_mappings shows it (table_schema, table_relname).';
    END IF;
    SELECT * INTO m FROM connect_guard.mapping mp
     WHERE mp.connection_id = c.connection_id AND mp.table_schema = v_name[1] AND mp.table_name = v_name[2]
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('table %s is not mapped by connection "%s"', table_name, c.name),
            HINT = 'See connect_mappings for the tables each connection maps.';
    END IF;
    IF connect_guard.mapping_relid(m) IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('table %s still exists', table_name),
            HINT = 'Unmap it with connect_unmap_table().';
    END IF;
    DELETE FROM connect_guard.mapping WHERE mapping_id = m.mapping_id;
    PERFORM connect_guard.fence_refresh();
    PERFORM connect_guard.log_event(c.connection_id, 'table_unmapped',
                                    jsonb_build_object('table', format('%I.%I', m.table_schema, m.table_name),
                                                       'dropped', true));
END;
$$;
/* ------------------------------------------------------------------------
 * What identifies this database and how far it has come: its system, its
 * timeline, the log head and the high-water marks.  Upgrade plans record
 * them at the fence; the rollback witness compares them.
 * ------------------------------------------------------------------------ */

/* the timeline this server writes on, read from the WAL file name: pg_control lags after promotion */
CREATE FUNCTION connect_guard.current_timeline()
RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::integer;
$$;

CREATE FUNCTION connect_guard.system_identifier()
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT system_identifier FROM pg_control_system(); $$;

/* the highest entry id the database holds, hot log or archive */
CREATE FUNCTION connect_guard.log_head()
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(greatest((SELECT max(id) FROM connect_guard.trigger_log),
                             (SELECT max(id) FROM connect_guard.trigger_log_archive)), 0);
$$;

-- each connection's position in its log, own or Connect's (15_log_sources.sql)
CREATE FUNCTION connect_guard.high_water_marks()
RETURNS jsonb
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(name, connect_guard.log_position(connection_id)), '{}')
      FROM connect_guard.connection;
$$;

CREATE FUNCTION connect_guard.timeline_switch_lsn(ancestor integer)
RETURNS pg_lsn LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_timeline_switch_lsn';


-- whether this server is one that pg_upgrade started (postgres -b)
CREATE FUNCTION connect_guard.in_binary_upgrade()
RETURNS boolean LANGUAGE C STRICT STABLE
AS 'MODULE_PATHNAME', 'connect_guard_in_binary_upgrade';
/* ------------------------------------------------------------------------
 * HA managers.  Where Patroni or pg_auto_failover manages the cluster, a
 * promotion behind its back makes it fight the change (Patroni demotes a
 * primary that does not hold its leader key; pg_auto_failover's monitor
 * has its own idea of who is primary).  So a follower changeover can hand
 * the promotion to the HA manager (connect_prepare_upgrade(...,
 * promote_with => 'patroni' | 'pg_auto_failover'), 70_upgrade.sql):
 *
 *   checking          also asks the HA manager whether this server leads and
 *                     the follower may take over, before anything changes
 *                     (ha_check)
 *   pausing ... ready as for every follower changeover
 *   switching_over    connect_promote_follower() moves the plan there; the
 *                     worker asks Patroni's REST API for a switchover
 *                     (POST /switchover, leader and candidate) or the
 *                     monitor for a promotion (pgautofailover.perform_promotion
 *                     over libpq) until it acts (ha_request); the HA manager
 *                     stops this server, and the new primary's worker
 *                     completes the plan as always
 *
 * This part only talks to the HA managers and says what they answered; the
 * plan acts on it (70_upgrade.sql).  Unplanned failovers: 72_failovers.sql.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_guard.ha_http(method text, url text, body text DEFAULT NULL, timeout_ms integer DEFAULT NULL,
                                      OUT status integer, OUT answer text, OUT error text)
RETURNS record LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_ha_http';

/* one request to Patroni's REST API; the answer's body as jsonb (a JSON string when it is plain text) */
CREATE FUNCTION connect_guard.ha_patroni(p_method text, p_endpoint text, p_path text, p_body jsonb DEFAULT NULL,
                                         p_timeout_ms integer DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    v_body jsonb;
BEGIN
    SELECT * INTO r FROM connect_guard.ha_http(p_method, rtrim(p_endpoint, '/') || p_path, p_body::text, p_timeout_ms);
    BEGIN
        v_body := r.answer::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        v_body := to_jsonb(left(r.answer, 500));
    END;
    RETURN jsonb_build_object('status', r.status, 'body', v_body, 'error', r.error);
END;
$$;

/* what the HA manager said, in a line for last_error */
CREATE FUNCTION connect_guard.ha_answer_text(p_answer jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN (p_answer ->> 'status')::integer = 0 THEN 'no answer: ' || (p_answer ->> 'error')
                ELSE format('HTTP %s: %s', p_answer ->> 'status',
                            CASE jsonb_typeof(p_answer -> 'body') WHEN 'string' THEN p_answer ->> 'body'
                                 ELSE left((p_answer -> 'body')::text, 300) END) END;
$$;

/*
 * connect_guard.ha_validate refuses a promote_with, ha_endpoint, ha_member
 * that do not go together, before the plan is stored.
 */
CREATE FUNCTION connect_guard.ha_validate(p_method text, p_promote_with text, p_endpoint text, p_member text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_detail text;
BEGIN
    IF p_promote_with IS NULL OR p_promote_with NOT IN ('connect_guard', 'patroni', 'pg_auto_failover') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown promote_with %s', coalesce(quote_literal(p_promote_with), 'NULL')),
            HINT = 'Use ''connect_guard'' (pg_promote() on the follower, the default), ''patroni'' (a switchover through Patroni''s REST API) or ''pg_auto_failover'' (a promotion through the monitor).';
    END IF;
    IF p_promote_with = 'connect_guard' THEN
        IF p_endpoint IS NOT NULL OR p_member IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'promote_with => ''connect_guard'' takes no ha_endpoint nor ha_member',
                HINT = 'Pass promote_with => ''patroni'' or ''pg_auto_failover'' to hand the promotion to an HA manager.';
        END IF;
        RETURN;
    END IF;
    IF p_method IS DISTINCT FROM 'follower' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('promote_with => %L applies to follower changeovers only', p_promote_with),
            HINT = 'A pg_upgrade or copy plan promotes no follower: leave promote_with out.';
    END IF;
    IF p_endpoint IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('promote_with => %L needs ha_endpoint', p_promote_with),
            HINT = CASE p_promote_with
                       WHEN 'patroni' THEN 'Pass the base URL of Patroni''s REST API on this server, e.g. ha_endpoint => ''http://127.0.0.1:8008''.'
                       ELSE 'Pass the monitor''s conninfo, e.g. ha_endpoint => ''postgres://autoctl_node@monitor:5432/pg_auto_failover''.' END;
    END IF;
    IF p_promote_with = 'patroni' AND p_endpoint !~* '^https?://[^/?#\s]+/?$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'ha_endpoint must be the base URL of Patroni''s REST API',
            HINT = 'For example ''http://127.0.0.1:8008'' (http:// or https://, a host and port, no path; user:password@ for restapi.authentication).';
    END IF;
    IF p_promote_with = 'pg_auto_failover' THEN
        BEGIN
            PERFORM connect_guard.conninfo_masked(p_endpoint);
        EXCEPTION WHEN invalid_parameter_value THEN
            GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'ha_endpoint must be the pg_auto_failover monitor''s conninfo',
                DETAIL = v_detail,
                HINT = 'Use libpq''s key=value form or a URI, e.g. ''postgres://autoctl_node@monitor:5432/pg_auto_failover''.';
        END;
    END IF;
    IF p_member IS NOT NULL AND p_member !~ '^[^\s]{1,200}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid ha_member %s', quote_literal(p_member)),
            HINT = 'Pass the follower''s name in the HA manager (Patroni''s member name, pg_auto_failover''s node name), or leave it out to find it by the follower''s port.';
    END IF;
END;
$$;

/*
 * connect_guard.ha_follower_port is the port the follower's server listens
 * on: members and nodes are matched by it when ha_member is not given.
 */
CREATE FUNCTION connect_guard.ha_follower_port(p_follower text)
RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (connect_guard.remote_query(p_follower, 'SELECT current_setting(''port'') AS port', 5000) ->> 'port')::integer;
$$;

/* the nodes the pg_auto_failover monitor knows, as a jsonb array */
CREATE FUNCTION connect_guard.ha_monitor_nodes(p_monitor text)
RETURNS jsonb
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((connect_guard.remote_query(p_monitor,
        $q$SELECT json_agg(json_build_object('formation', formationid, 'group', groupid, 'name', nodename,
                                             'host', nodehost, 'port', nodeport, 'system_identifier', sysidentifier::text,
                                             'goal', goalstate, 'reported', reportedstate,
                                             'candidate_priority', candidatepriority) ORDER BY nodeid)::text AS nodes
             FROM pgautofailover.node$q$, 5000) ->> 'nodes')::jsonb, '[]');
$$;

/*
 * connect_guard.ha_check asks the HA manager whether this server leads and
 * the follower may take over.  Returns {"ok": true, "target": {leader,
 * candidate[, formation]}} or {"ok": false, "retry": ..., "error": ...}:
 * retry when the answer may change (no answer, a member still starting),
 * not when the plan names the wrong cluster or member.
 */
CREATE FUNCTION connect_guard.ha_check(p_promote_with text, p_endpoint text, p_member text, p_follower text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_port integer;
    v_our_port integer := current_setting('port')::integer;
    v_answer jsonb;
    v_members jsonb;
    v_leader jsonb;
    v_candidates jsonb;
    v_candidate jsonb;
    v_target jsonb;
BEGIN
    BEGIN
        v_port := connect_guard.ha_follower_port(p_follower);
    EXCEPTION WHEN connection_failure THEN
        RETURN jsonb_build_object('ok', false, 'retry', true, 'error', 'the follower is unreachable: ' || SQLERRM);
    END;

    IF p_promote_with = 'patroni' THEN
        v_answer := connect_guard.ha_patroni('GET', p_endpoint, '/cluster');
        IF (v_answer ->> 'status')::integer <> 200 OR jsonb_typeof(v_answer #> '{body,members}') IS DISTINCT FROM 'array' THEN
            RETURN jsonb_build_object('ok', false, 'retry', true,
                'error', 'Patroni''s REST API did not list the cluster (GET /cluster): ' || connect_guard.ha_answer_text(v_answer));
        END IF;
        v_members := v_answer #> '{body,members}';
        SELECT m INTO v_leader FROM jsonb_array_elements(v_members) m WHERE m ->> 'role' IN ('leader', 'master') LIMIT 1;
        IF v_leader IS NULL THEN
            RETURN jsonb_build_object('ok', false, 'retry', true, 'error', 'Patroni reports no leader in its cluster');
        END IF;
        IF (v_leader ->> 'port')::integer IS DISTINCT FROM v_our_port THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', format('Patroni''s leader is member %s at %s:%s, not this server (port %s): ha_endpoint belongs to another cluster',
                                v_leader ->> 'name', v_leader ->> 'host', v_leader ->> 'port', v_our_port));
        END IF;
        SELECT coalesce(jsonb_agg(m), '[]') INTO v_candidates FROM jsonb_array_elements(v_members) m
         WHERE m ->> 'name' IS DISTINCT FROM v_leader ->> 'name'
           AND CASE WHEN p_member IS NOT NULL THEN m ->> 'name' = p_member
                    ELSE (m ->> 'port')::integer = v_port END;
        IF jsonb_array_length(v_candidates) <> 1 THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', CASE WHEN p_member IS NOT NULL
                              THEN format('Patroni''s cluster has no replica named %s (members: %s)', p_member,
                                          (SELECT string_agg(m ->> 'name', ', ') FROM jsonb_array_elements(v_members) m))
                              ELSE format('%s of Patroni''s replicas listen on port %s, the follower''s: name the follower''s member with ha_member',
                                          jsonb_array_length(v_candidates), v_port) END);
        END IF;
        v_candidate := v_candidates -> 0;
        IF (v_candidate #>> '{tags,nofailover}') = 'true' THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', format('Patroni''s member %s is tagged nofailover: Patroni would not switch over to it', v_candidate ->> 'name'));
        END IF;
        IF v_candidate ->> 'role' NOT IN ('replica', 'sync_standby') OR v_candidate ->> 'state' NOT IN ('running', 'streaming') THEN
            RETURN jsonb_build_object('ok', false, 'retry', true,
                'error', format('Patroni''s member %s is %s and %s: not a running replica that can take over',
                                v_candidate ->> 'name', v_candidate ->> 'role', v_candidate ->> 'state'));
        END IF;
        v_target := jsonb_build_object('leader', v_leader ->> 'name', 'candidate', v_candidate ->> 'name');
    ELSE
        BEGIN
            v_members := connect_guard.ha_monitor_nodes(p_endpoint);
        EXCEPTION WHEN connection_failure THEN
            RETURN jsonb_build_object('ok', false, 'retry', true,
                'error', 'the pg_auto_failover monitor did not list its nodes: ' || SQLERRM);
        END;
        SELECT coalesce(jsonb_agg(n), '[]') INTO v_candidates FROM jsonb_array_elements(v_members) n
         WHERE n ->> 'system_identifier' = connect_guard.system_identifier()::text
           AND CASE WHEN p_member IS NOT NULL THEN n ->> 'name' = p_member
                    ELSE (n ->> 'port')::integer = v_port AND (n ->> 'port')::integer <> v_our_port END;
        IF jsonb_array_length(v_candidates) <> 1 THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', CASE WHEN p_member IS NOT NULL
                              THEN format('the monitor knows no node named %s of this cluster (nodes: %s)', p_member,
                                          (SELECT coalesce(string_agg(n ->> 'name', ', '), 'none') FROM jsonb_array_elements(v_members) n))
                              ELSE format('%s of the monitor''s nodes of this cluster listen on port %s, the follower''s: name the follower''s node with ha_member',
                                          jsonb_array_length(v_candidates), v_port) END);
        END IF;
        v_candidate := v_candidates -> 0;
        SELECT n INTO v_leader FROM jsonb_array_elements(v_members) n
         WHERE n ->> 'formation' = v_candidate ->> 'formation' AND n -> 'group' = v_candidate -> 'group'
           AND n ->> 'reported' IN ('primary', 'wait_primary', 'single') LIMIT 1;
        IF v_leader IS NULL OR (v_leader ->> 'port')::integer <> v_our_port THEN
            RETURN jsonb_build_object('ok', false, 'retry', v_leader IS NULL,
                'error', CASE WHEN v_leader IS NULL THEN format('the monitor reports no primary in formation %s', v_candidate ->> 'formation')
                              ELSE format('the monitor''s primary is node %s at %s:%s, not this server (port %s)',
                                          v_leader ->> 'name', v_leader ->> 'host', v_leader ->> 'port', v_our_port) END);
        END IF;
        IF (v_candidate ->> 'candidate_priority')::integer = 0 THEN
            RETURN jsonb_build_object('ok', false, 'retry', false,
                'error', format('node %s has candidate priority 0: the monitor would never promote it', v_candidate ->> 'name'));
        END IF;
        IF v_candidate ->> 'reported' <> 'secondary' OR v_candidate ->> 'goal' <> 'secondary' THEN
            RETURN jsonb_build_object('ok', false, 'retry', true,
                'error', format('node %s reports state %s and is assigned %s: the monitor promotes only a secondary',
                                v_candidate ->> 'name', v_candidate ->> 'reported', v_candidate ->> 'goal'));
        END IF;
        v_target := jsonb_build_object('formation', v_candidate ->> 'formation', 'leader', v_leader ->> 'name',
                                       'candidate', v_candidate ->> 'name');
    END IF;
    RETURN jsonb_build_object('ok', true, 'target', v_target);
END;
$$;

/*
 * connect_guard.ha_request asks the HA manager once for the switchover that
 * ha_check's target describes (or finds it under way; a request less than
 * 30 s old, requested_at in the target, is not sent again) and says what
 * came of it: 'requested', 'under_way', 'retry' (no answer, or one that may
 * change) or 'refused', with a detail.
 */
CREATE FUNCTION connect_guard.ha_request(p_promote_with text, p_endpoint text, p_target jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_answer jsonb;
    v_leader text;
    v_nodes jsonb;
    v_node jsonb;
    v_result jsonb;
    v_recent boolean := (p_target ->> 'requested_at')::timestamptz > clock_timestamp() - interval '30 s';
BEGIN
    IF p_promote_with = 'patroni' THEN
        v_answer := connect_guard.ha_patroni('GET', p_endpoint, '/cluster');
        IF (v_answer ->> 'status')::integer <> 200 THEN
            RETURN jsonb_build_object('outcome', 'retry', 'detail', 'GET /cluster: ' || connect_guard.ha_answer_text(v_answer));
        END IF;
        SELECT m ->> 'name' INTO v_leader FROM jsonb_array_elements(v_answer #> '{body,members}') m
         WHERE m ->> 'role' IN ('leader', 'master') LIMIT 1;
        IF v_leader = p_target ->> 'candidate' THEN
            RETURN jsonb_build_object('outcome', 'under_way', 'detail', format('member %s leads the cluster now', v_leader));
        END IF;
        IF v_leader IS DISTINCT FROM p_target ->> 'leader' THEN
            RETURN jsonb_build_object('outcome', CASE WHEN v_leader IS NULL THEN 'retry' ELSE 'refused' END,
                'detail', format('Patroni''s leader is %s, not %s as when the plan checked',
                                 coalesce(v_leader, 'nobody'), p_target ->> 'leader'));
        END IF;
        IF v_recent THEN
            RETURN jsonb_build_object('outcome', 'under_way', 'detail', 'switchover requested at ' || (p_target ->> 'requested_at'));
        END IF;
        -- Patroni answers when the switchover is done (or after ~15 s); by then it
        -- has stopped this server, and this worker with it
        v_answer := connect_guard.ha_patroni('POST', p_endpoint, '/switchover',
            jsonb_build_object('leader', p_target ->> 'leader', 'candidate', p_target ->> 'candidate'), 30000);
        RETURN jsonb_build_object(
            'outcome', CASE WHEN (v_answer ->> 'status')::integer IN (200, 202) THEN 'requested'
                            WHEN (v_answer ->> 'status')::integer BETWEEN 400 AND 499 THEN 'refused'
                            ELSE 'retry' END,
            'detail', 'POST /switchover: ' || connect_guard.ha_answer_text(v_answer));
    END IF;

    -- pg_auto_failover: the monitor orchestrates; the keepers follow its goal states
    BEGIN
        v_nodes := connect_guard.ha_monitor_nodes(p_endpoint);
    EXCEPTION WHEN connection_failure THEN
        RETURN jsonb_build_object('outcome', 'retry', 'detail', SQLERRM);
    END;
    SELECT n INTO v_node FROM jsonb_array_elements(v_nodes) n
     WHERE n ->> 'formation' = p_target ->> 'formation' AND n ->> 'name' = p_target ->> 'candidate';
    IF v_node IS NULL THEN
        RETURN jsonb_build_object('outcome', 'refused',
            'detail', format('the monitor no longer knows node %s', p_target ->> 'candidate'));
    END IF;
    IF v_node ->> 'reported' IN ('primary', 'wait_primary', 'single')
       OR v_node ->> 'goal' IN ('prepare_promotion', 'stop_replication', 'wait_primary', 'primary') THEN
        RETURN jsonb_build_object('outcome', 'under_way',
            'detail', format('node %s reports %s and is assigned %s', v_node ->> 'name', v_node ->> 'reported', v_node ->> 'goal'));
    END IF;
    IF v_recent THEN
        RETURN jsonb_build_object('outcome', 'under_way', 'detail', 'promotion requested at ' || (p_target ->> 'requested_at'));
    END IF;
    BEGIN
        v_result := connect_guard.remote_query(p_endpoint,
            format('SELECT pgautofailover.perform_promotion(%L, %L) AS promoted',
                   p_target ->> 'formation', p_target ->> 'candidate'), 10000);
    EXCEPTION WHEN connection_failure THEN
        -- the monitor answered with an error (a state that forbids it): that is a refusal
        RETURN jsonb_build_object('outcome', CASE WHEN SQLERRM LIKE '%ERROR:%' THEN 'refused' ELSE 'retry' END,
                                  'detail', 'perform_promotion: ' || SQLERRM);
    END;
    RETURN jsonb_build_object('outcome', CASE WHEN v_result ->> 'promoted' = 't' THEN 'requested' ELSE 'refused' END,
        'detail', CASE WHEN v_result ->> 'promoted' = 't' THEN format('the monitor promotes node %s', p_target ->> 'candidate')
                       ELSE format('the monitor started no promotion of node %s (already a primary?)', p_target ->> 'candidate') END);
END;
$$;
/* ------------------------------------------------------------------------
 * Connect-aware upgrade plans.  Every manual step of Heroku's runbooks
 * (pause Connect, maintenance mode, wait for the follower, upgrade/promote,
 * resume) is a step of a persisted plan that the worker drives, one step
 * per transaction, each step safe to run again after a crash.
 *
 *   follower:   checking -> pausing -> fencing -> fencing_follower -> catching_up -> ready
 *               ... promotion (pg_promote, or switching_over: the HA manager's, 69_ha_managers.sql)
 *               ... the new primary's worker: completing -> completed
 *   pg_upgrade: pausing -> fencing -> ready
 *               ... pg_upgrade ... the new cluster's worker: completing -> completed
 *   copy:       fencing -> draining -> pausing -> ready
 *               ... pg_dump | pg_restore ... connect_complete_upgrade() on the copy
 *
 * The plan row travels with the data (WAL to the follower, pg_upgrade's
 * copy, pg_dump), which is how the new primary knows what was planned and
 * why its system identifier or timeline changed.
 *
 * Network I/O inside a transaction, the one exception to the worker's rule
 * (worker.c: network I/O outside any transaction): a follower changeover
 * talks to its follower through libpq (remote.c) from within a step, in
 * the steps checking, fencing_follower, catching_up and ready
 * (follower_probe, and remote_query to fence the follower), and from
 * connect_abort_upgrade() and connect_promote_follower().  Why: the step
 * must act on the answer atomically with the plan row it holds locked (a
 * fence raised on the follower is recorded in the same commit that moves
 * the plan on; an answer that is lost leaves the step to run again, which
 * finds and reuses that fence).  Bounded: each call waits at most
 * connect_guard.follower_timeout (pg_promote: 65 s, its own 60 s and a
 * margin), on the latch, so a cancel or a shutdown ends the wait.  The same
 * holds for the HA manager of a changeover that has one, asked in the steps
 * checking and switching_over (69_ha_managers.sql: libpq to the
 * pg_auto_failover monitor, or HTTP to Patroni, at most 30 s for a
 * switchover, which Patroni answers once done; a shutdown aborts it).  While it
 * waits the worker holds only the plan row (taken SKIP LOCKED, so no other
 * session waits for it) and a snapshot, and this happens only while a
 * changeover is in progress, with the database fenced.
 * ------------------------------------------------------------------------ */

CREATE TABLE connect_guard.upgrade_plan (
    plan_id             serial PRIMARY KEY,
    method              text NOT NULL CHECK (method IN ('pg_upgrade', 'follower', 'copy')),
    follower            text,               -- conninfo: may hold a password, never shown
    max_lag_bytes       bigint NOT NULL,
    step_timeout        interval NOT NULL,
    step                text NOT NULL,
    step_since          timestamptz NOT NULL DEFAULT clock_timestamp(),
    status              text NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'ready', 'completed', 'failed', 'aborted', 'handed_over')),
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by          name NOT NULL DEFAULT session_user,
    finished_at         timestamptz,
    follower_lag_bytes  numeric,
    -- what the database looked like with the fence up
    system_identifier   bigint,
    database_name       text,
    timeline            integer,
    fence_lsn           pg_lsn,
    target_lsn          pg_lsn,
    log_head            bigint,
    high_water_marks    jsonb,
    paused_connections  text[] NOT NULL DEFAULT '{}',
    fence_id            integer,
    follower_fence_id   integer,
    completed_on        bigint,             -- system identifier of the database that completed it
    -- who promotes the follower (69_ha_managers.sql): pg_promote() over libpq, or the HA manager
    promote_with        text NOT NULL DEFAULT 'connect_guard'
                        CHECK (promote_with IN ('connect_guard', 'patroni', 'pg_auto_failover')),
    ha_endpoint         text,               -- Patroni's REST API, or the monitor's conninfo: may hold a password
    ha_member           text,               -- the follower's name there, when given
    ha_target           jsonb NOT NULL DEFAULT '{}'     -- leader, candidate (formation), what was asked and answered
);
-- one plan at a time
CREATE UNIQUE INDEX upgrade_plan_one_active ON connect_guard.upgrade_plan ((true))
    WHERE status IN ('running', 'ready');

CREATE TABLE connect_guard.upgrade_step (
    plan_id     integer NOT NULL REFERENCES connect_guard.upgrade_plan ON DELETE CASCADE,
    step        text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX ON connect_guard.upgrade_step (plan_id, started_at);

SELECT pg_catalog.pg_extension_config_dump('connect_guard.upgrade_plan', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.upgrade_plan_plan_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('connect_guard.upgrade_step', '');

/*
 * connect_guard.upgrade_goto moves a plan to its next step (or ends it),
 * closing the current step of its timeline and opening the next.
 */
CREATE FUNCTION connect_guard.upgrade_goto(p_plan integer, p_step text, p_status text DEFAULT 'running',
                                           p_detail jsonb DEFAULT '{}', p_error text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE connect_guard.upgrade_step SET finished_at = clock_timestamp()
     WHERE plan_id = p_plan AND finished_at IS NULL;
    UPDATE connect_guard.upgrade_plan
       SET step = p_step, step_since = clock_timestamp(), status = p_status,
           last_error = coalesce(p_error, CASE WHEN p_status IN ('running', 'ready') THEN NULL ELSE last_error END),
           finished_at = CASE WHEN p_status IN ('completed', 'failed', 'aborted', 'handed_over')
                              THEN clock_timestamp() END
     WHERE plan_id = p_plan;
    INSERT INTO connect_guard.upgrade_step (plan_id, step, detail, finished_at)
    VALUES (p_plan, p_step, p_detail,
            CASE WHEN p_status IN ('completed', 'failed', 'aborted', 'handed_over') THEN clock_timestamp() END);
    PERFORM connect_guard.log_event(NULL, 'upgrade_' || p_step,
        p_detail || jsonb_build_object('plan_id', p_plan, 'status', p_status, 'error', p_error));
END;
$$;

CREATE FUNCTION connect_guard.upgrade_fail(p_plan integer, p_error text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT connect_guard.upgrade_goto(p_plan, (SELECT step FROM connect_guard.upgrade_plan WHERE plan_id = p_plan),
                                      'failed', jsonb_build_object('error', p_error), p_error);
$$;

/*
 * connect_guard.follower_probe checks the plan's follower exactly as the
 * worker's lag checks do (lag.c: is it a standby of this primary, what has
 * it replayed), and returns what it found as jsonb (answered, reachable,
 * error, in_recovery, system_identifier_matches, database, timeline,
 * replay_lsn, lag_bytes); the plan only adds what is its own (the database,
 * the fence position).  Never raises for the follower's problems.
 */
CREATE FUNCTION connect_guard.follower_probe(p_conninfo text)
RETURNS jsonb LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'connect_guard_follower_probe';

/*
 * connect_guard.resume_plan_connections resumes the connections a plan
 * paused that are still paused (or pausing); a connection the DBA resumed
 * or dropped meanwhile is left alone.
 */
CREATE FUNCTION connect_guard.resume_plan_connections(p_names text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT c.name FROM connect_guard.connection c
                   WHERE c.name = ANY (p_names) AND c.state IN ('PAUSED', 'PAUSING') ORDER BY c.name LOOP
        PERFORM @extschema@.connect_resume(v_name);
    END LOOP;
END;
$$;

/*
 * connect_guard.upgrade_complete_here finishes a plan on the database that
 * took over (a promoted follower, an upgraded cluster): it checks that the
 * trigger log and the high-water marks came through intact and that the
 * takeover happened after the fence, then lowers the fence and resumes
 * every connection the plan paused.  Anything unexpected fails the plan and
 * leaves the fence up.
 */
CREATE FUNCTION connect_guard.upgrade_complete_here(p connect_guard.upgrade_plan)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_switch pg_lsn;
    v_marks jsonb := connect_guard.high_water_marks();
BEGIN
    IF p.step NOT IN ('completing') THEN
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'completing', p.status,
            jsonb_build_object('system_identifier', connect_guard.system_identifier(),
                               'timeline', connect_guard.current_timeline()));
    END IF;
    IF p.method = 'follower' AND connect_guard.current_timeline() > 1 THEN
        -- where this server's timeline forked from the old primary's (the history files, 68_database.sql)
        v_switch := connect_guard.timeline_switch_lsn(p.timeline);
        IF v_switch IS NULL OR v_switch < p.fence_lsn THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('this server was promoted at %s, before it had replayed the fence at %s: writes made before the fence may be missing',
                       coalesce(v_switch::text, 'an unknown point'), p.fence_lsn));
            RETURN;
        END IF;
    END IF;
    IF connect_guard.log_head() < p.log_head THEN
        PERFORM connect_guard.upgrade_fail(p.plan_id,
            format('the trigger log ends at entry %s here, but reached %s when the fence went up',
                   connect_guard.log_head(), p.log_head));
        RETURN;
    END IF;
    IF v_marks <> p.high_water_marks THEN
        PERFORM connect_guard.upgrade_fail(p.plan_id,
            format('the high-water marks differ from those recorded at the fence: %s here, %s then',
                   v_marks, p.high_water_marks));
        RETURN;
    END IF;

    IF p.follower_fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(p.follower_fence_id);
    ELSIF p.fence_id IS NOT NULL THEN
        -- pg_upgrade: the fence file was copied into the new cluster by the runbook, or not
        PERFORM connect_guard.fence_lower(p.fence_id);
    END IF;
    PERFORM connect_guard.resume_plan_connections(p.paused_connections);
    UPDATE connect_guard.upgrade_plan SET completed_on = connect_guard.system_identifier()
     WHERE plan_id = p.plan_id;
    PERFORM connect_guard.upgrade_goto(p.plan_id, 'completed', 'completed',
        jsonb_build_object('resumed', p.paused_connections));
END;
$$;

/*
 * connect_guard.plan_pause asks every connection (or, with
 * p_adopted_only, every connection of an adopted Connect schema) that is
 * not PAUSED to pause, without a fence of its own (the plan fences the
 * whole database), and returns those not PAUSED yet (NULL when all are).
 * A local consumer's pause waits a moment per try for the open batch; a
 * sync service gets the step's time to pause and to finish what it is
 * sending; a pause whose request failed is asked again.  The plan records
 * the connections it pauses, to resume them.  A copy pauses the adopted
 * connections before its fence: a copy carries Connect's log as rows,
 * unfinished entries included (Heroku's pg:copy runbook: pause Connect
 * with the maintenance mode), and under the fence Connect's own writes
 * (marking what it sent) would be refused.
 */
CREATE FUNCTION connect_guard.plan_pause(p connect_guard.upgrade_plan, p_adopted_only boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_waiting text;
BEGIN
    UPDATE connect_guard.upgrade_plan
       SET paused_connections = ARRAY(SELECT name FROM connect_guard.connection ORDER BY name)
     WHERE plan_id = p.plan_id AND paused_connections = '{}';
    FOR c IN SELECT * FROM connect_guard.connection cn
              WHERE (NOT p_adopted_only OR cn.log_schema IS NOT NULL)
                AND (cn.state NOT IN ('PAUSED', 'PAUSING')
                     OR (cn.state = 'PAUSING' AND (connect_guard.latest_state_request(cn.connection_id)).status = 'failed'))
              ORDER BY cn.name LOOP
        BEGIN
            PERFORM @extschema@.connect_pause(c.name, block_writes => false,
                                              timeout => CASE WHEN c.adapter = 'local' THEN interval '100 ms' ELSE p.step_timeout END,
                                              reason => format('upgrade plan %s', p.plan_id));
        EXCEPTION WHEN object_not_in_prerequisite_state OR lock_not_available THEN
            NULL;           -- a batch is open, or a consumer holds the connection: try again next time
        END;
    END LOOP;
    SELECT string_agg(format('%s (%s)', name, state), ', ' ORDER BY name) INTO v_waiting
      FROM connect_guard.connection WHERE state <> 'PAUSED' AND (NOT p_adopted_only OR log_schema IS NOT NULL);
    RETURN v_waiting;
END;
$$;

/*
 * connect_guard.upgrade_advance runs one step of the active plan, if there
 * is one, and returns 0 when there is no plan to drive, 1 when the plan
 * waits (poll again soon), 2 when it moved (run again at once).  The worker
 * calls it in a transaction of its own; every step can run again after a
 * crash without doing its work twice.
 */
CREATE FUNCTION connect_guard.upgrade_advance()
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- what this returns, as the worker reads it (enum UpgradeAdvance, include/worker.h)
    c_no_plan CONSTANT integer := 0;
    c_waiting CONSTANT integer := 1;
    c_moved CONSTANT integer := 2;
    p connect_guard.upgrade_plan;
    c connect_guard.connection;
    v_probe jsonb;
    v_lag numeric;
    v_waiting text;
    v_fid integer;
    v_overdue boolean;
BEGIN
    SELECT * INTO p FROM connect_guard.upgrade_plan
     WHERE status IN ('running', 'ready') FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN c_no_plan;
    END IF;
    v_overdue := clock_timestamp() > p.step_since + p.step_timeout;

    -- a database other than the one the plan was prepared on: the one that took over
    IF p.system_identifier IS NOT NULL
       AND (connect_guard.system_identifier() <> p.system_identifier
            OR connect_guard.current_timeline() <> p.timeline) THEN
        IF p.method = 'copy' THEN
            RETURN c_no_plan;           -- finished by connect_complete_upgrade(), by hand
        END IF;
        -- Not on a server that pg_upgrade itself started (postgres -b): pg_upgrade
        -- starts the new cluster with the data in place at its end, before the
        -- runbook has copied the fence file in; completing there would resume the
        -- connections and leave the fence copied afterwards up for good.
        IF connect_guard.in_binary_upgrade() THEN
            RETURN c_no_plan;
        END IF;
        PERFORM connect_guard.upgrade_complete_here(p);
        RETURN c_moved;
    END IF;

    CASE p.step
    WHEN 'checking' THEN
        v_probe := connect_guard.follower_probe(p.follower);
        IF NOT (v_probe->>'answered')::boolean THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                'the follower is unreachable: could not query the other server: ' || (v_probe->>'error'));
            RETURN c_moved;
        END IF;
        IF NOT (v_probe->>'in_recovery')::boolean THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id, 'the follower is not a standby (it is not in recovery)');
            RETURN c_moved;
        END IF;
        IF NOT (v_probe->>'system_identifier_matches')::boolean THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id, 'the follower is not a standby of this primary (different system identifier)');
            RETURN c_moved;
        END IF;
        IF v_probe->>'database' <> current_database() THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('the follower conninfo names database %s, but the plan is for %s', v_probe->>'database', current_database()));
            RETURN c_moved;
        END IF;
        -- any other verdict of the lag check (a newer timeline, nothing replayed yet) is waited out
        IF v_probe->>'error' IS NOT NULL THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id, 'the follower is not a caught-up standby: ' || (v_probe->>'error'));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        v_lag := (v_probe->>'lag_bytes')::numeric;
        UPDATE connect_guard.upgrade_plan SET follower_lag_bytes = v_lag WHERE plan_id = p.plan_id;
        IF v_lag > p.max_lag_bytes THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    format('the follower stayed %s bytes behind, more than max_lag_bytes = %s', v_lag, p.max_lag_bytes));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        IF p.promote_with <> 'connect_guard' THEN
            -- the HA manager must agree before anything is paused or fenced (69_ha_managers.sql)
            v_probe := connect_guard.ha_check(p.promote_with, p.ha_endpoint, p.ha_member, p.follower);
            IF NOT (v_probe->>'ok')::boolean THEN
                IF (v_probe->>'retry')::boolean AND NOT v_overdue THEN
                    UPDATE connect_guard.upgrade_plan SET last_error = v_probe->>'error' WHERE plan_id = p.plan_id;
                    RETURN c_waiting;
                END IF;
                PERFORM connect_guard.upgrade_fail(p.plan_id, v_probe->>'error');
                RETURN c_moved;
            END IF;
            UPDATE connect_guard.upgrade_plan SET ha_target = v_probe->'target', last_error = NULL
             WHERE plan_id = p.plan_id;
        END IF;
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'pausing', 'running',
            jsonb_build_object('follower_lag_bytes', v_lag) || coalesce(v_probe->'target', '{}'));
        RETURN c_moved;

    WHEN 'pausing' THEN
        v_waiting := connect_guard.plan_pause(p, false);
        IF v_waiting IS NOT NULL THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    format('not every connection reached PAUSED within %s: %s', p.step_timeout, v_waiting));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        PERFORM connect_guard.upgrade_goto(p.plan_id,
            CASE p.method WHEN 'copy' THEN 'ready' ELSE 'fencing' END,
            CASE p.method WHEN 'copy' THEN 'ready' ELSE 'running' END);
        RETURN c_moved;

    WHEN 'fencing' THEN
        -- a copy carries Connect's log as rows: Connect pauses first (plan_pause)
        IF p.method = 'copy' AND p.fence_id IS NULL THEN
            v_waiting := connect_guard.plan_pause(p, true);
            IF v_waiting IS NOT NULL THEN
                IF v_overdue THEN
                    PERFORM connect_guard.upgrade_fail(p.plan_id,
                        format('not every adopted connection reached PAUSED within %s: %s', p.step_timeout, v_waiting));
                    RETURN c_moved;
                END IF;
                RETURN c_waiting;
            END IF;
        END IF;
        -- A fence is saved to the fence file when it is raised, not at commit, so a
        -- crash while this step waited for the writers in flight leaves the fence up
        -- (restored from the file) but not in the plan, whose update never
        -- committed: adopt it (and wait for the writers again), or every later try
        -- fails with "a maintenance fence is already up".
        v_fid := p.fence_id;
        IF v_fid IS NULL THEN
            SELECT f.fence_id INTO v_fid FROM connect_guard.fence_list() f
             WHERE f.scope = 'database' AND f.reason = format('upgrade plan %s (%s)', p.plan_id, p.method);
        END IF;
        IF v_fid IS NOT NULL THEN
            PERFORM connect_guard.wait_for_writers(connect_guard.database_tables(),
                                                   clock_timestamp() + p.step_timeout, false);
        ELSIF v_overdue THEN
            -- The last try failed (connect_fence() timed out waiting for the writers
            -- in flight, or another maintenance fence is up): its error ended the
            -- worker's transaction, which lowered its fence.  Fail rather than retry
            -- forever with nothing in last_error.
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('could not fence the database within %s: writers still in flight, or another maintenance fence is up (the server log has the last try''s error)',
                       p.step_timeout));
            RETURN c_moved;
        ELSE
            v_fid := @extschema@.connect_fence('database', format('upgrade plan %s (%s)', p.plan_id, p.method),
                                   timeout => p.step_timeout);
        END IF;
        UPDATE connect_guard.upgrade_plan
           SET fence_id = v_fid,
               system_identifier = connect_guard.system_identifier(),
               database_name = current_database(),
               timeline = connect_guard.current_timeline(),
               fence_lsn = pg_current_wal_insert_lsn(),
               log_head = connect_guard.log_head(),
               high_water_marks = connect_guard.high_water_marks()
         WHERE plan_id = p.plan_id;
        PERFORM connect_guard.upgrade_goto(p.plan_id,
            CASE p.method WHEN 'follower' THEN 'fencing_follower'
                          WHEN 'copy' THEN 'draining' ELSE 'ready' END,
            CASE p.method WHEN 'pg_upgrade' THEN 'ready' ELSE 'running' END,
            jsonb_build_object('fence_id', v_fid, 'fence_lsn', pg_current_wal_insert_lsn(),
                               'log_head', connect_guard.log_head()));
        RETURN c_moved;

    WHEN 'fencing_follower' THEN
        -- fenced while still a standby, so that it comes up fenced however it is promoted
        BEGIN
            -- the follower's fence commits there before this transaction does: a try
            -- whose answer was lost (a timeout, a crash here) left it up, so reuse
            -- it rather than raise a second one that completion would not lower
            v_probe := connect_guard.remote_query(p.follower,
                format('SELECT coalesce((SELECT max(fence_id) FROM connect_guard.fence_list() WHERE scope = %L AND reason = %L),
                                        connect_guard.fence_raise(%L, NULL, NULL, %L, %L, %L)) AS fence_id',
                       'database', format('upgrade plan %s: fenced until the plan completes on this server', p.plan_id),
                       'database', format('upgrade plan %s: fenced until the plan completes on this server', p.plan_id),
                       '{}', '{}'));
        EXCEPTION WHEN connection_failure THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id, 'could not fence the follower: ' || SQLERRM);
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END;
        UPDATE connect_guard.upgrade_plan SET follower_fence_id = (v_probe->>'fence_id')::integer
         WHERE plan_id = p.plan_id;
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'catching_up', 'running',
            jsonb_build_object('follower_fence_id', (v_probe->>'fence_id')::integer));
        RETURN c_moved;

    WHEN 'catching_up' THEN
        IF p.target_lsn IS NULL THEN
            -- everything up to here, the plan's own rows included, must be on the follower
            UPDATE connect_guard.upgrade_plan SET target_lsn = pg_current_wal_insert_lsn()
             WHERE plan_id = p.plan_id;
            RETURN c_moved;
        END IF;
        v_probe := connect_guard.follower_probe(p.follower);
        IF NOT (v_probe->>'answered')::boolean THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    'the follower is unreachable: could not query the other server: ' || (v_probe->>'error'));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        -- replay_lsn is NULL when the lag check found another cluster's server: never caught up
        v_lag := CASE WHEN v_probe->>'replay_lsn' IS NULL THEN pg_wal_lsn_diff(p.target_lsn, '0/0')
                      ELSE greatest(pg_wal_lsn_diff(p.target_lsn, (v_probe->>'replay_lsn')::pg_lsn), 0) END;
        UPDATE connect_guard.upgrade_plan SET follower_lag_bytes = v_lag WHERE plan_id = p.plan_id;
        IF v_lag > 0 THEN
            IF NOT (v_probe->>'in_recovery')::boolean THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    'the follower was promoted before it had replayed the fence; the old primary stays fenced');
                RETURN c_moved;
            END IF;
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    format('the follower is still %s bytes short of the fence after %s', v_lag, p.step_timeout));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'ready', 'ready',
            jsonb_build_object('replay_lsn', v_probe->>'replay_lsn'));
        RETURN c_moved;

    WHEN 'draining' THEN
        SELECT string_agg(format('%s (%s entries)', connection, backlog), ', ') INTO v_waiting
          FROM @extschema@.connect_high_water_marks
         WHERE (backlog > 0 OR open_batch IS NOT NULL) AND log_kind = 'own';     -- Connect's log goes with the copy
        IF v_waiting IS NOT NULL THEN
            IF v_overdue THEN
                PERFORM connect_guard.upgrade_fail(p.plan_id,
                    format('the consumers did not drain the trigger log within %s: %s', p.step_timeout, v_waiting));
                RETURN c_moved;
            END IF;
            RETURN c_waiting;
        END IF;
        UPDATE connect_guard.upgrade_plan
           SET log_head = connect_guard.log_head(), high_water_marks = connect_guard.high_water_marks()
         WHERE plan_id = p.plan_id;
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'pausing');
        RETURN c_moved;

    WHEN 'switching_over' THEN
        -- the HA manager promotes the follower and stops this server (69_ha_managers.sql);
        -- if this server still runs when the follower is out of recovery, it was handed over
        v_probe := connect_guard.follower_probe(p.follower);
        IF (v_probe->>'answered')::boolean AND NOT (v_probe->>'in_recovery')::boolean THEN
            PERFORM connect_guard.upgrade_goto(p.plan_id, 'handed_over', 'handed_over',
                jsonb_build_object('note', format('%s promoted the follower; this server stays fenced', p.promote_with)));
            RETURN c_moved;
        END IF;
        -- once a second: each try asks the HA manager over the network
        IF (p.ha_target->>'tried_at')::timestamptz > clock_timestamp() - interval '1 s' THEN
            RETURN c_waiting;
        END IF;
        v_probe := connect_guard.ha_request(p.promote_with, p.ha_endpoint, p.ha_target);
        UPDATE connect_guard.upgrade_plan
           SET ha_target = ha_target || jsonb_build_object('tried_at', clock_timestamp(), 'answer', v_probe->>'detail')
                           || CASE WHEN v_probe->>'outcome' = 'requested'
                                   THEN jsonb_build_object('requested_at', clock_timestamp()) ELSE '{}' END,
               last_error = CASE WHEN v_probe->>'outcome' = 'retry' THEN v_probe->>'detail' END
         WHERE plan_id = p.plan_id;
        IF v_probe->>'outcome' = 'requested' THEN
            -- (Patroni answers once it has stopped this server: then this never commits)
            PERFORM connect_guard.log_event(NULL, 'upgrade_switchover_requested',
                jsonb_build_object('plan_id', p.plan_id, 'promote_with', p.promote_with, 'target', p.ha_target,
                                   'answer', v_probe->>'detail'));
        ELSIF v_probe->>'outcome' = 'refused' THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('%s refused the switchover to %s: %s', p.promote_with, p.ha_target->>'candidate', v_probe->>'detail'));
            RETURN c_moved;
        END IF;
        IF v_overdue THEN
            PERFORM connect_guard.upgrade_fail(p.plan_id,
                format('%s did not promote %s within %s (last: %s)', p.promote_with, p.ha_target->>'candidate',
                       p.step_timeout, v_probe->>'detail'));
            RETURN c_moved;
        END IF;
        RETURN c_waiting;

    WHEN 'ready' THEN
        IF p.method = 'follower' THEN
            -- the old primary learns that the follower took over; it stays fenced
            v_probe := connect_guard.follower_probe(p.follower);
            IF (v_probe->>'answered')::boolean AND NOT (v_probe->>'in_recovery')::boolean THEN
                PERFORM connect_guard.upgrade_goto(p.plan_id, 'handed_over', 'handed_over',
                    jsonb_build_object('note', 'the follower was promoted; this server stays fenced'));
                RETURN c_moved;
            END IF;
        END IF;
        RETURN c_waiting;

    ELSE
        RETURN c_waiting;
    END CASE;
END;
$$;

/* ------------------------------------------------------------------------
 * The DBA's and the runbooks' calls
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_prepare_upgrade(method text DEFAULT 'pg_upgrade', follower text DEFAULT NULL,
                                        max_lag_bytes bigint DEFAULT 0, timeout interval DEFAULT '10 min',
                                        promote_with text DEFAULT 'connect_guard', ha_endpoint text DEFAULT NULL,
                                        ha_member text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_plan integer;
    v_active connect_guard.upgrade_plan;
BEGIN
    PERFORM connect_guard.require_worker('connect_prepare_upgrade()');
    PERFORM connect_guard.require_not_null(method, 'method',
        'Use ''pg_upgrade'' (in place), ''follower'' (changeover to a promoted follower) or ''copy'' (pg_dump into a new database).');
    PERFORM connect_guard.require_not_null(max_lag_bytes, 'max_lag_bytes', 'For example max_lag_bytes => 16 * 1024 * 1024.');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''10 min''');
    IF method IS NULL OR method NOT IN ('pg_upgrade', 'follower', 'copy') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown upgrade method %s', coalesce(quote_literal(method), 'NULL')),
            HINT = 'Use ''pg_upgrade'' (in place), ''follower'' (changeover to a promoted follower) or ''copy'' (pg_dump into a new database).';
    END IF;
    IF (method = 'follower') <> (follower IS NOT NULL) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = CASE WHEN method = 'follower' THEN 'a follower changeover needs the follower''s conninfo'
                           ELSE format('method %s takes no follower', method) END,
            HINT = 'Pass follower => ''host=... port=... dbname=... user=...'' with method => ''follower'' only.';
    END IF;
    IF follower IS NOT NULL THEN
        PERFORM connect_guard.conninfo_masked(follower);     -- rejects a malformed conninfo
    END IF;
    PERFORM connect_guard.ha_validate(method, promote_with, ha_endpoint, ha_member);
    IF max_lag_bytes IS NULL OR max_lag_bytes < 0 OR timeout IS NULL OR timeout <= interval '0' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'max_lag_bytes must be 0 or more and timeout positive',
            HINT = 'For example max_lag_bytes => 16 * 1024 * 1024, timeout => ''10 min''.';
    END IF;
    SELECT * INTO v_active FROM connect_guard.upgrade_plan WHERE status IN ('running', 'ready');
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s is already %s (step %s)', v_active.plan_id, v_active.status, v_active.step),
            HINT = 'Wait for it, or end it with connect_abort_upgrade().';
    END IF;

    INSERT INTO connect_guard.upgrade_plan (method, follower, max_lag_bytes, step_timeout, step,
                                            promote_with, ha_endpoint, ha_member)
    VALUES (method, follower, max_lag_bytes, timeout,
            CASE method WHEN 'follower' THEN 'checking' WHEN 'copy' THEN 'fencing' ELSE 'pausing' END,
            promote_with, ha_endpoint, ha_member)
    RETURNING plan_id INTO v_plan;
    INSERT INTO connect_guard.upgrade_step (plan_id, step)
    SELECT v_plan, step FROM connect_guard.upgrade_plan WHERE plan_id = v_plan;
    PERFORM connect_guard.log_event(NULL, 'upgrade_prepared',
        jsonb_build_object('plan_id', v_plan, 'method', method, 'max_lag_bytes', max_lag_bytes, 'timeout', timeout,
                           'promote_with', promote_with));
    PERFORM connect_guard.wake_worker();
    RETURN v_plan;
END;
$$;

/*
 * connect_guard.require_plan returns the upgrade plan p_plan (locked with
 * p_lock), or raises the error that says it does not exist.
 */
CREATE FUNCTION connect_guard.require_plan(p_plan bigint, p_lock boolean DEFAULT false)
RETURNS connect_guard.upgrade_plan
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
BEGIN
    PERFORM connect_guard.require_not_null(p_plan, 'plan', 'Pass the plan id connect_prepare_upgrade() returned; see connect_upgrade_status.');
    IF p_lock THEN
        SELECT * INTO p FROM connect_guard.upgrade_plan WHERE plan_id = p_plan FOR UPDATE;
    ELSE
        SELECT * INTO p FROM connect_guard.upgrade_plan WHERE plan_id = p_plan;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('upgrade plan %s does not exist', p_plan),
            HINT = 'See connect_upgrade_status for the plans.';
    END IF;
    RETURN p;
END;
$$;

CREATE FUNCTION connect_guard.plan_for_update(p_plan bigint)
RETURNS connect_guard.upgrade_plan
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM connect_guard.require_plan(p_plan, true);
$$;

/*
 * connect_wait_upgrade waits until the plan reaches a step (or a later
 * status: 'ready' is reached when the plan is ready), for runbooks.  A
 * plan that fails or is aborted meanwhile is an error that says why.
 */
CREATE FUNCTION connect_wait_upgrade(plan bigint, step text, timeout interval DEFAULT '10 min')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    v_deadline timestamptz;
BEGIN
    PERFORM connect_guard.require_read_committed('connect_wait_upgrade()');
    PERFORM connect_guard.require_not_null(step, 'step', 'Pass a step or status of the plan, for example ''ready''.');
    PERFORM connect_guard.require_timeout(timeout, 'timeout', '''10 min''');
    v_deadline := clock_timestamp() + timeout;
    LOOP
        p := connect_guard.require_plan(plan);
        IF p.step = connect_wait_upgrade.step OR p.status = connect_wait_upgrade.step
           OR EXISTS (SELECT 1 FROM connect_guard.upgrade_step s
                       WHERE s.plan_id = p.plan_id AND s.step = connect_wait_upgrade.step) THEN
            -- read again: the condition ran on a newer snapshot than p, and may have seen the
            -- step's timeline row whose plan row p predates (both are written in one transaction)
            RETURN (connect_guard.require_plan(plan)).step;
        END IF;
        IF p.status IN ('failed', 'aborted') THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('upgrade plan %s %s at step %s', p.plan_id, p.status, p.step),
                DETAIL = coalesce(p.last_error, 'No reason was recorded.'),
                HINT = 'See connect_upgrade_status and connect_upgrade_timeline(); connect_abort_upgrade() lifts the fence and resumes.';
        END IF;
        IF clock_timestamp() > v_deadline THEN
            RAISE EXCEPTION USING
                ERRCODE = 'query_canceled',
                MESSAGE = format('upgrade plan %s did not reach %s within %s', p.plan_id, step, timeout),
                DETAIL = format('It is %s at step %s since %s.', p.status, p.step, p.step_since),
                HINT = 'The plan goes on; wait again, or end it with connect_abort_upgrade().';
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
END;
$$;

/*
 * connect_abort_upgrade ends a plan on the database it was prepared on:
 * lowers its fences (the follower's too, when it can be reached), resumes
 * the connections it paused, and records why.
 */
CREATE FUNCTION connect_abort_upgrade(plan bigint, reason text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    v_note text := NULL;
BEGIN
    p := connect_guard.plan_for_update(plan);
    IF p.status IN ('completed', 'aborted', 'handed_over') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s is already %s', p.plan_id, p.status),
            HINT = 'Only a running, ready or failed plan can be aborted.';
    END IF;
    IF p.follower_fence_id IS NOT NULL THEN
        BEGIN
            PERFORM connect_guard.remote_query(p.follower,
                format('SELECT connect_guard.fence_lower(%s)', p.follower_fence_id));
        EXCEPTION WHEN connection_failure THEN
            v_note := 'the follower could not be reached: its fence stays up until connect_unfence() there';
        END;
    END IF;
    IF p.fence_id IS NOT NULL THEN
        PERFORM connect_guard.fence_lower(p.fence_id);
    END IF;
    PERFORM connect_guard.resume_plan_connections(p.paused_connections);
    PERFORM connect_guard.upgrade_goto(p.plan_id, 'aborted', 'aborted',
        jsonb_build_object('reason', reason, 'note', v_note),
        coalesce(reason, 'aborted by ' || session_user));
    RETURN coalesce(v_note, 'aborted');
END;
$$;

/*
 * connect_promote_follower promotes the follower of a ready changeover
 * through libpq (pg_promote waits until it is done); its own worker then
 * completes the plan there.  A plan whose promotion belongs to an HA
 * manager moves to switching_over instead: the worker asks the HA manager
 * (over HTTP, which a user's transaction never does), and the HA manager
 * stops this server.
 */
CREATE FUNCTION connect_promote_follower(plan bigint)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    v_result jsonb;
BEGIN
    p := connect_guard.require_plan(plan);
    IF p.method <> 'follower' OR p.status <> 'ready' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s is not a ready follower changeover', p.plan_id),
            DETAIL = format('It is a %s plan, %s at step %s.', p.method, p.status, p.step),
            HINT = 'Wait with connect_wait_upgrade(plan, ''ready''); promote only a caught-up follower.';
    END IF;
    IF p.promote_with <> 'connect_guard' THEN
        IF p.step = 'switching_over' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('upgrade plan %s has already asked %s for the switchover', p.plan_id, p.promote_with),
                DETAIL = format('Since %s; last answer: %s.', p.step_since, coalesce(p.ha_target->>'answer', 'none yet')),
                HINT = 'Wait on the follower with connect_wait_upgrade(plan, ''completed''); see connect_upgrade_status.';
        END IF;
        PERFORM connect_guard.upgrade_goto(p.plan_id, 'switching_over', 'ready',
            jsonb_build_object('promote_with', p.promote_with, 'leader', p.ha_target->>'leader',
                               'candidate', p.ha_target->>'candidate'));
        PERFORM connect_guard.wake_worker();
        RETURN 'switchover requested';
    END IF;
    v_result := connect_guard.remote_query(p.follower, 'SELECT pg_promote(true, 60) AS promoted', 65000);
    IF NOT (v_result->>'promoted')::boolean THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'the follower did not finish its promotion within 60 s',
            HINT = 'Check the follower''s log; the plan stays ready and this server stays fenced.';
    END IF;
    PERFORM connect_guard.log_event(NULL, 'upgrade_follower_promoted', jsonb_build_object('plan_id', p.plan_id));
    RETURN 'promoted';
END;
$$;

/*
 * connect_complete_upgrade finishes a 'copy' plan on the copy: the trigger
 * log was drained before the copy, so every entry in it is consumed; the
 * ticks (snapshots of the old database's transaction ids) mean nothing
 * here, so the consumed entries go to the archive and every connection
 * starts from a fresh tick.
 */
CREATE FUNCTION connect_complete_upgrade(plan bigint)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    v_tick bigint;
BEGIN
    p := connect_guard.plan_for_update(plan);
    IF p.method <> 'copy' OR p.status NOT IN ('ready') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s is not a ready copy', p.plan_id),
            DETAIL = format('It is a %s plan, %s at step %s.', p.method, p.status, p.step),
            HINT = 'Run this in the new database, after the copy of a plan that reached ready.';
    END IF;
    IF connect_guard.system_identifier() = p.system_identifier AND current_database() = p.database_name THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('upgrade plan %s was prepared in this database: complete it in the copy', p.plan_id),
            HINT = 'Connect to the database the data was copied into and call connect_complete_upgrade() there.';
    END IF;
    IF connect_guard.log_head() <> p.log_head THEN
        RAISE EXCEPTION USING
            ERRCODE = 'data_corrupted',
            MESSAGE = format('the copied trigger log ends at entry %s, not at %s as when the copy began',
                             connect_guard.log_head(), p.log_head),
            HINT = 'Copy again from the fenced database; nothing was resumed.';
    END IF;
    IF connect_guard.log_positions_differ(p.high_water_marks) IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'data_corrupted',
            MESSAGE = 'the copied Heroku Connect trigger log differs from the one the copy began with',
            DETAIL = connect_guard.log_positions_differ(p.high_water_marks) || '.',
            HINT = 'Copy again from the fenced database; nothing was resumed.';
    END IF;
    PERFORM connect_guard.upgrade_goto(p.plan_id, 'completing', 'ready');
    WITH moved AS (DELETE FROM connect_guard.trigger_log RETURNING *)
    INSERT INTO connect_guard.trigger_log_archive
    SELECT id, txid, created_at, clock_timestamp(), clock_timestamp(), NULL,
           CASE WHEN state IN ('NEW', 'PENDING') THEN 'SUCCESS' ELSE state END,
           action, table_schema, table_name, record_id, sfid, old, "values", sf_result, sf_message
      FROM moved;
    DELETE FROM connect_guard.batch WHERE finished_at IS NULL;
    DELETE FROM connect_guard.tick;
    v_tick := (connect_guard.new_tick()).tick_id;
    UPDATE connect_guard.connection SET last_tick = v_tick, fence_id = NULL;
    PERFORM connect_guard.resume_plan_connections(p.paused_connections);
    UPDATE connect_guard.upgrade_plan SET completed_on = connect_guard.system_identifier()
     WHERE plan_id = p.plan_id;
    PERFORM connect_guard.upgrade_goto(p.plan_id, 'completed', 'completed',
        jsonb_build_object('resumed', p.paused_connections, 'database', current_database()));
    RETURN 'completed';
END;
$$;

CREATE VIEW connect_upgrade_status AS
SELECT p.plan_id AS plan,
       p.method,
       p.status,
       p.step,
       p.step_since,
       CASE WHEN p.follower IS NOT NULL THEN connect_guard.conninfo_masked(p.follower) END AS follower,
       p.follower_lag_bytes,
       p.fence_lsn,
       p.log_head,
       p.last_error,
       coalesce(p.finished_at, clock_timestamp()) - p.created_at AS elapsed,
       p.created_at,
       p.created_by,
       p.promote_with,
       CASE p.promote_with
           WHEN 'patroni' THEN regexp_replace(p.ha_endpoint, '^(https?://)[^/@]*@', '\1********@')
           WHEN 'pg_auto_failover' THEN connect_guard.conninfo_masked(p.ha_endpoint, false)
       END AS ha_endpoint,
       coalesce(p.ha_target->>'candidate', p.ha_member) AS ha_member
  FROM connect_guard.upgrade_plan p;

CREATE FUNCTION connect_upgrade_timeline(plan bigint)
RETURNS TABLE (step text, started_at timestamptz, finished_at timestamptz, duration interval, detail jsonb)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.step, s.started_at, s.finished_at, s.finished_at - s.started_at, s.detail
      FROM connect_guard.upgrade_step s
     WHERE s.plan_id = plan
     ORDER BY s.started_at, s.ctid;
$$;
/* ------------------------------------------------------------------------
 * Unplanned failovers (an HA manager's, or a promotion by hand, with no
 * upgrade plan).  The new primary tells one from a rollback by the witness:
 * its timeline left the old one at or after the witnessed LSN ('promoted',
 * 75_rollback.sql).  The witness also records the timeline history of the
 * server that writes it (timeline_ancestry, in database_state(),
 * 74_witness.sql), so a former primary that runs again on the older
 * timeline sees that a descendant timeline took over ('failed_over'): it
 * fences its mapped tables, asks for no reloads and leaves the witness
 * alone, rather than take itself for a rolled-back copy.  Once such a
 * server leads again (its HA manager brought it back as a replica, then
 * promoted it), the fences it kept as a former primary come down.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.timeline_ancestry maps every timeline this server's
 * history descends from to the LSN where it left it ({"1": "0/3000188"});
 * empty on timeline 1 and in recovery.
 */
CREATE FUNCTION connect_guard.timeline_ancestry()
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tli integer := connect_guard.current_timeline();
    v_history jsonb := '{}';
    v_switch pg_lsn;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN v_history;
    END IF;
    FOR i IN 1 .. v_tli - 1 LOOP
        v_switch := connect_guard.timeline_switch_lsn(i);
        IF v_switch IS NOT NULL THEN
            v_history := v_history || jsonb_build_object(i::text, v_switch::text);
        END IF;
    END LOOP;
    RETURN v_history;
END;
$$;

/*
 * connect_guard.failed_over_detail says, for a server on an older timeline
 * than its witness (w), whether the witness's timeline descends from this
 * one: then another server took over (a failover) and this one is a former
 * primary, not a rolled-back copy.  NULL when the witness's history does
 * not show it (or the witness predates the history it records).
 */
CREATE FUNCTION connect_guard.failed_over_detail(w jsonb, d jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_switch pg_lsn := (w -> 'history' ->> (d ->> 'timeline'));
    v_here pg_lsn := pg_current_wal_lsn();
BEGIN
    IF v_switch IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN format('timeline %s, on which the witness was written at %s, left this server''s timeline %s at %s: another server was promoted without an upgrade plan (a failover), and this one is a former primary. Its mapped tables are fenced (its writes would reach no sync service), it requests no reloads and leaves the witness to the new timeline%s',
                  w ->> 'timeline', w ->> 'written_at', d ->> 'timeline', v_switch,
                  CASE WHEN v_here > v_switch
                       THEN format('; the %s bytes of WAL it holds past %s are on no timeline the sync service follows (a transaction committed there is lost to it)',
                                   pg_wal_lsn_diff(v_here, v_switch), v_switch)
                       ELSE '' END);
END;
$$;

/*
 * connect_guard.failover_fence is the worker's act on a 'failed_over'
 * finding: a maintenance fence over the mapped tables, unless one is up
 * already.  On a server that the witness shows current again (an old
 * primary that an HA manager brought back as a replica, then promoted),
 * the fences it kept as a former primary come down: its own failover
 * fence, and the database fence of a changeover it was the old primary of
 * (the plan completed on the server that took over, and this server now
 * writes on a later timeline than the plan's).
 */
CREATE FUNCTION connect_guard.failover_fence(p_findings jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    t record;
    v_fence integer;
    v_tli integer := connect_guard.current_timeline();
BEGIN
    IF p_findings @> '[{"finding": "failed_over"}]' THEN
        -- its standbys follow the new primary now: under synchronous replication the
        -- worker's commits (this one records the finding) would wait for them for
        -- ever.  For the session: a SET LOCAL would end with this function.
        PERFORM set_config('synchronous_commit', 'local', false);
    END IF;
    IF NOT connect_guard.fence_available() THEN
        RETURN;
    END IF;
    IF p_findings @> '[{"finding": "failed_over"}]' THEN
        IF EXISTS (SELECT 1 FROM connect_guard.fence_list() l WHERE l.scope IN ('mapped', 'database')) THEN
            RETURN;
        END IF;
        t := connect_guard.fence_targets(NULL);
        IF cardinality(t.relids) = 0 THEN
            RETURN;
        END IF;
        v_fence := connect_guard.fence_raise('mapped', NULL, NULL,
            format('former primary of timeline %s: another server took over in a failover, and writes here would reach no sync service',
                   v_tli),
            t.relids, t.relconnections);
        PERFORM connect_guard.log_event(NULL, 'fence_raised',
            jsonb_build_object('fence_id', v_fence, 'scope', 'mapped', 'reason', 'failed_over', 'timeline', v_tli));
        RETURN;
    END IF;
    IF p_findings @> '[{"severity": "rollback"}]' OR p_findings @> '[{"finding": "superseded"}]' THEN
        RETURN;
    END IF;
    FOR f IN SELECT l.fence_id, l.scope, 'failed_over' AS why FROM connect_guard.fence_list() l
              WHERE l.scope = 'mapped' AND l.reason ~ '^former primary of timeline [0-9]+:'
                AND substring(l.reason FROM '^former primary of timeline ([0-9]+):')::integer < v_tli
             UNION ALL
             SELECT l.fence_id, l.scope, format('upgrade plan %s', u.plan_id) FROM connect_guard.fence_list() l
               JOIN connect_guard.upgrade_plan u ON l.reason = format('upgrade plan %s (%s)', u.plan_id, u.method)
              WHERE l.scope = 'database' AND u.method = 'follower' AND u.status = 'completed' AND u.timeline < v_tli
    LOOP
        PERFORM connect_guard.fence_lower(f.fence_id);
        PERFORM connect_guard.log_event(NULL, 'fence_lowered',
            jsonb_build_object('fence_id', f.fence_id, 'scope', f.scope, 'reason', f.why,
                               'note', format('this former primary leads again, on timeline %s', v_tli)));
    END LOOP;
END;
$$;
/* ------------------------------------------------------------------------
 * What a restore does to an adopted Connect log (75_rollback.sql acts on a
 * rollback): entries Connect had processed come back unfinished, and
 * Connect would send them to Salesforce again.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.note_restored_entries adds to a rollback incident the
 * entries of each adopted log that the restore brought back unfinished at
 * or below the processed mark the witness had recorded: Connect had sent
 * them already and would send them to Salesforce again.  connect_guard
 * changes none of Connect's rows: the incident, an event and a WARNING
 * list them by id range and count.
 */
CREATE FUNCTION connect_guard.note_restored_entries(p_incident integer, p_mapping_ids integer[], p_witness jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    w jsonb;
    r record;
    v_found jsonb := '[]';
BEGIN
    FOR c IN SELECT DISTINCT cn.* FROM connect_guard.connection cn JOIN connect_guard.mapping m USING (connection_id)
              WHERE m.mapping_id = ANY (p_mapping_ids) AND cn.log_schema IS NOT NULL ORDER BY cn.connection_id LOOP
        w := p_witness -> 'connections' -> c.name;
        IF w IS NULL OR w -> 'created_at' IS DISTINCT FROM to_jsonb(c.created_at) THEN
            CONTINUE;
        END IF;
        r := connect_guard.log_restored_entries(c.connection_id, (w ->> 'processed_mark')::bigint);
        IF r.entries > 0 THEN
            v_found := v_found || jsonb_build_object('connection', c.name, 'log', connect_guard.log_table(c.log_schema),
                                                     'first_id', r.first_id, 'last_id', r.last_id, 'entries', r.entries,
                                                     'witnessed_mark', (w ->> 'processed_mark')::bigint);
            RAISE WARNING USING
                MESSAGE = format('connect_guard: the restore brought back %s entries of %s (ids %s to %s) that Connect had already processed',
                                 r.entries, connect_guard.log_table(c.log_schema), r.first_id, r.last_id),
                DETAIL = format('Connect had processed every entry up to id %s; these are unfinished again, and Connect would send them to Salesforce a second time.',
                                w ->> 'processed_mark'),
                HINT = format('See connect_rollback_incidents (incident %s); before Connect sends them, mark those it must not send again, e.g. UPDATE %s SET state = ''IGNORED'' WHERE id BETWEEN %s AND %s AND state = ''NEW''.',
                              p_incident, connect_guard.log_table(c.log_schema), r.first_id, r.last_id);
        END IF;
    END LOOP;
    IF jsonb_array_length(v_found) > 0 THEN
        UPDATE connect_guard.rollback_incident SET restored_as_new = v_found WHERE incident_id = p_incident;
        PERFORM connect_guard.log_event(NULL, 'entries_restored_as_new',
                                        jsonb_build_object('incident_id', p_incident, 'logs', v_found));
    END IF;
    RETURN v_found;
END;
$$;
/* ------------------------------------------------------------------------
 * The rollback witness (the checks: 75_rollback.sql).
 *
 * Connect remembers how far it has read the trigger log.  A restore
 * rewinds every record inside the database, the log and the high-water
 * marks included, so the proof of how far the database had come is kept
 * outside it (witness.c writes the file): the system identifier, the
 * timeline, a flushed LSN, the next xid, the log head, each connection's
 * high-water mark, and what the sync service last said its own mark was.
 * The worker writes it anew whenever any of that but the LSN and the xid
 * moved, and at least once a minute.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_guard.witness_path(system_identifier bigint DEFAULT NULL)
RETURNS text LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_witness_path';

CREATE FUNCTION connect_guard.witness_read(path text, OUT status text, OUT content jsonb, OUT detail text)
RETURNS record LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_witness_read';

CREATE FUNCTION connect_guard.witness_write(path text, content jsonb)
RETURNS void LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'connect_guard_witness_write';

CREATE FUNCTION connect_guard.witness_flush_lsn()
RETURNS pg_lsn LANGUAGE C
AS 'MODULE_PATHNAME', 'connect_guard_witness_flush_lsn';

/*
 * Which installation of the extension this is: a witness written before a
 * DROP EXTENSION describes a log and marks that are gone on purpose.  The
 * row travels with pg_upgrade and pg_dump (a restore into a new
 * installation keeps the oldest row), so an upgrade keeps its identity.
 */
CREATE TABLE connect_guard.installation (
    installation_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    installed_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO connect_guard.installation DEFAULT VALUES;
SELECT pg_catalog.pg_extension_config_dump('connect_guard.installation', '');

-- the witness files this database has written, and the findings last reported about each
CREATE TABLE connect_guard.witness (
    path            text PRIMARY KEY,
    first_written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    reported        jsonb NOT NULL DEFAULT '[]'
);

/* the last id the own trigger log's sequence handed out: unlike max(id), retention cannot lower it */
CREATE FUNCTION connect_guard.log_sequence_head()
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT connect_guard.log_sequence_head(NULL::text);     -- 15_log_sources.sql
$$;

/*
 * connect_guard.database_state is what the witness records of this
 * database now, but the LSN (which the writer adds after a WAL flush).
 * Ids and xids go as numbers, the system identifier as text (it does not
 * fit a double).
 */
CREATE FUNCTION connect_guard.database_state()
RETURNS jsonb
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'format', 1,
        'system_identifier', connect_guard.system_identifier()::text,
        'database', current_database(),
        'installation', (SELECT i.installation_id FROM connect_guard.installation i
                          ORDER BY i.installed_at LIMIT 1),
        'timeline', connect_guard.current_timeline(),
        -- where this timeline's history left each ancestor: a former primary on one of them
        -- learns that it was failed over, not rolled back (72_failovers.sql)
        'history', connect_guard.timeline_ancestry(),
        'next_xid', pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
        'log_head', connect_guard.log_sequence_head(),
        -- each connection's position in its log, own or Connect's (15_log_sources.sql)
        'connections', coalesce((
            SELECT jsonb_object_agg(c.name, jsonb_build_object('created_at', c.created_at, 'remote_hwm', c.remote_hwm)
                                            || connect_guard.log_witness_marks(c.connection_id))
              FROM connect_guard.connection c), '{}'));
$$;

/*
 * connect_guard.witness_load finds the witness to compare with: this
 * cluster's, or, when there is none yet, that of the cluster an upgrade
 * plan in this database came from (pg_upgrade and copy change the system
 * identifier; the plan row came along with the data and announces it).
 */
CREATE FUNCTION connect_guard.witness_load(OUT path text, OUT status text, OUT content jsonb, OUT detail text,
                                           OUT predecessor integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p connect_guard.upgrade_plan;
    r record;
BEGIN
    path := connect_guard.witness_path(NULL);
    IF path IS NULL THEN
        status := 'disabled';
        RETURN;
    END IF;
    SELECT * INTO r FROM connect_guard.witness_read(path);
    status := r.status; content := r.content; detail := r.detail;
    IF status = 'missing' THEN
        SELECT * INTO p FROM connect_guard.upgrade_plan u
         WHERE u.system_identifier <> connect_guard.system_identifier()
           AND u.method IN ('pg_upgrade', 'copy') AND u.status IN ('ready', 'completed')
           AND (u.completed_on IS NULL OR u.completed_on = connect_guard.system_identifier())
         ORDER BY u.plan_id DESC LIMIT 1;
        IF FOUND THEN
            SELECT * INTO r FROM connect_guard.witness_read(connect_guard.witness_path(p.system_identifier));
            IF r.status = 'ok' THEN
                status := 'ok'; content := r.content; predecessor := p.plan_id;
            END IF;
        END IF;
    END IF;
    -- a body that does not describe this database is as untrustworthy as a torn one
    IF status = 'ok' AND (jsonb_typeof(content) IS DISTINCT FROM 'object'
                          OR content ->> 'format' IS DISTINCT FROM '1'
                          OR content ->> 'database' IS DISTINCT FROM current_database()
                          OR (predecessor IS NULL
                              AND content ->> 'system_identifier' IS DISTINCT FROM connect_guard.system_identifier()::text)
                          OR jsonb_typeof(content -> 'connections') IS DISTINCT FROM 'object'
                          OR NOT content ?& ARRAY['timeline', 'lsn', 'next_xid', 'log_head']) THEN
        status := 'corrupt';
        detail := format('"%s" has a valid checksum but does not describe database %s of system %s: it was copied from elsewhere',
                         path, current_database(), connect_guard.system_identifier());
        content := NULL;
    END IF;
END;
$$;

/*
 * connect_guard.witness_refresh writes the witness when what it records
 * changed (the LSN and next xid alone do not count: only ever higher, they
 * matter when the rest moves) or once a minute, so that written_at shows
 * the worker is alive.  A write failure becomes a finding, not an error.
 */
CREATE FUNCTION connect_guard.witness_refresh(p_path text, p_old jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_new jsonb := connect_guard.database_state();
    v_volatile text[] := ARRAY['lsn', 'next_xid', 'written_at'];
    v_message text;
BEGIN
    IF p_old IS NOT NULL AND (p_old - v_volatile) = (v_new - v_volatile)
       AND (p_old ->> 'written_at')::timestamptz > clock_timestamp() - interval '1 minute' THEN
        RETURN NULL;
    END IF;
    v_new := v_new || jsonb_build_object('lsn', connect_guard.witness_flush_lsn()::text,
                                         'written_at', clock_timestamp());
    BEGIN
        PERFORM connect_guard.witness_write(p_path, v_new);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        RETURN jsonb_build_object('finding', 'witness_unwritable', 'severity', 'warning', 'connection', NULL,
                                  'detail', v_message || '; rollbacks cannot be detected until it is written');
    END;
    IF NOT EXISTS (SELECT 1 FROM connect_guard.witness w WHERE w.path = p_path) THEN
        INSERT INTO connect_guard.witness (path) VALUES (p_path);
        PERFORM connect_guard.log_event(NULL, 'witness_created', jsonb_build_object('path', p_path));
    END IF;
    RETURN NULL;
END;
$$;
/* ------------------------------------------------------------------------
 * Rollback detection (Heroku's "Recovering Synchronization After a
 * Database Rollback", done by the worker).  A database restored to an
 * earlier point forgets writes the sync service already copied, and hands
 * out the same log ids again for new writes, which the service then skips
 * as already seen.  On every cycle the worker compares the database with
 * its witness (74_witness.sql), acts on a rollback (52_reloads.sql), and
 * writes the witness anew.
 *
 *   rollback:  same system, same timeline, LSN below the witnessed one
 *              timeline that left the witnessed one before the witnessed LSN
 *              timeline that does not descend from the witnessed one
 *              older timeline than the witness's (and not a handed-over primary)
 *              next xid, log head or a high-water mark below the witnessed one
 *              the sync service has consumed past the log head
 *   not:       a restart or a crash (WAL replay reaches the flushed LSN)
 *              a promoted follower that had replayed past the witnessed LSN,
 *              or past the fence of a follower changeover plan
 *              a new system identifier announced by an upgrade plan that came
 *              with the data (pg_upgrade, copy): compared with the witness of
 *              the old system, marks and log head only
 *              a former primary whose timeline the witness's descends from
 *              (failed over by an HA manager: 72_failovers.sql)
 *
 * Acting: the affected mappings go to RELOAD_TABLE and their reloads are
 * requested through the connection's adapter; the log's id sequence moves
 * past every id the service may have seen; the high-water marks are held to
 * what the database has; with connect_guard.fence_on_rollback the mapped
 * tables are fenced (scope 'reload') until every reload is acknowledged.
 * Each incident is a row of connect_guard.rollback_incident.
 * ------------------------------------------------------------------------ */

/*
 * connect_guard.rollback_findings compares the database (d, from
 * database_state()) with a witness (w; NULL when there is none to trust)
 * and says what it finds: severity 'rollback' (acted upon), 'warning'
 * (reported) or 'info'.
 */
CREATE FUNCTION connect_guard.rollback_findings(w jsonb, d jsonb, p_predecessor integer)
RETURNS TABLE (finding text, severity text, connection text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_wtli integer := (w ->> 'timeline')::integer;
    v_dtli integer := (d ->> 'timeline')::integer;
    v_wlsn pg_lsn := (w ->> 'lsn')::pg_lsn;
    v_dlsn pg_lsn := pg_current_wal_lsn();
    v_dhead bigint := (d ->> 'log_head')::bigint;
    v_switch pg_lsn;
    v_protected pg_lsn;
    v_old_primary_went_on boolean := false;
    p connect_guard.upgrade_plan;
    c record;
BEGIN
    IF w IS NOT NULL AND p_predecessor IS NOT NULL THEN
        SELECT * INTO p FROM connect_guard.upgrade_plan WHERE plan_id = p_predecessor;
        RETURN QUERY SELECT 'upgraded', 'info', NULL::text,
            format('the witness is that of system %s, which upgrade plan %s (%s) moved here: its marks and log head are compared, not its WAL',
                   w ->> 'system_identifier', p.plan_id, p.method);
    ELSIF w IS NOT NULL THEN
        IF v_dtli = v_wtli THEN
            IF v_dlsn < v_wlsn THEN
                RETURN QUERY SELECT 'lsn_behind_witness', 'rollback', NULL::text,
                    format('the database is at WAL %s on timeline %s, below %s that the witness recorded at %s: it was restored from an earlier copy',
                           v_dlsn, v_dtli, v_wlsn, w ->> 'written_at');
            END IF;
        ELSIF v_dtli > v_wtli THEN
            v_switch := connect_guard.timeline_switch_lsn(v_wtli);
            IF v_switch IS NULL THEN
                RETURN QUERY SELECT 'timeline_not_descendant', 'rollback', NULL::text,
                    format('this server''s timeline %s does not descend from timeline %s that the witness recorded at %s',
                           v_dtli, v_wtli, w ->> 'written_at');
            ELSE
                v_protected := v_wlsn;
                -- a follower changeover fenced the old primary and paused its connections:
                -- what it wrote after its fence never reached a consumer
                SELECT * INTO p FROM connect_guard.upgrade_plan u
                 WHERE u.method = 'follower' AND u.timeline = v_wtli AND u.fence_lsn <= v_switch
                   AND u.system_identifier::text = d ->> 'system_identifier'
                 ORDER BY u.plan_id DESC LIMIT 1;
                IF FOUND AND p.fence_lsn < v_protected THEN
                    v_protected := p.fence_lsn;
                    v_old_primary_went_on := true;
                END IF;
                IF v_switch < v_protected THEN
                    RETURN QUERY SELECT 'timeline_forked_before_witness', 'rollback', NULL::text,
                        format('this server''s timeline %s left timeline %s at %s, before %s that the witness recorded at %s: a point-in-time restore, or a follower promoted before it had caught up',
                               v_dtli, v_wtli, v_switch, v_protected, w ->> 'written_at');
                ELSE
                    RETURN QUERY SELECT 'promoted', 'info', NULL::text,
                        format('timeline %s left timeline %s at %s, at or after %s that the witness recorded%s',
                               v_dtli, v_wtli, v_switch, v_protected,
                               CASE WHEN p.plan_id IS NOT NULL THEN format(' (the fence of plan %s)', p.plan_id)
                                    ELSE ' (no upgrade plan: a failover, by an HA manager or by hand)' END);
                END IF;
            END IF;
        ELSIF EXISTS (SELECT 1 FROM connect_guard.upgrade_plan u
                       WHERE u.method = 'follower' AND u.timeline = v_dtli
                         AND u.status IN ('ready', 'handed_over', 'failed', 'aborted') AND u.fence_lsn IS NOT NULL) THEN
            RETURN QUERY SELECT 'superseded', 'warning', NULL::text,
                format('a server on timeline %s, a follower promoted after this server (timeline %s) fenced itself for a changeover, writes the witness now: this server leaves it alone',
                       v_wtli, v_dtli);
            -- the new primary's log and marks have moved on; this server is not behind, it is retired
            RETURN;
        ELSIF connect_guard.failed_over_detail(w, d) IS NOT NULL THEN
            RETURN QUERY SELECT 'failed_over', 'warning', NULL::text, connect_guard.failed_over_detail(w, d);
            -- as for a superseded primary: the new timeline's log and marks have moved on
            RETURN;
        ELSE
            RETURN QUERY SELECT 'timeline_behind_witness', 'rollback', NULL::text,
                format('this server is on timeline %s, but the witness was written on timeline %s at %s: it is a copy from before a promotion',
                       v_dtli, v_wtli, w ->> 'written_at');
        END IF;
        -- (xids the fenced old primary used after its fence are no one's concern)
        IF (d ->> 'next_xid')::bigint < (w ->> 'next_xid')::bigint AND NOT v_old_primary_went_on THEN
            RETURN QUERY SELECT 'txid_behind_witness', 'rollback', NULL::text,
                format('the next transaction id is %s, below %s that the witness recorded: transaction ids will be handed out again',
                       d ->> 'next_xid', w ->> 'next_xid');
        END IF;
    END IF;

    IF w IS NOT NULL THEN
        IF v_dhead < (w ->> 'log_head')::bigint THEN
            RETURN QUERY SELECT 'log_head_behind_witness', 'rollback', NULL::text,
                format('the trigger log''s ids reach %s here but had reached %s: ids the sync service has seen would be handed out again',
                       v_dhead, w ->> 'log_head');
        END IF;
        FOR c IN
            SELECT e.key AS name, e.value AS was, dc.value AS now
              FROM jsonb_each(w -> 'connections') e
              LEFT JOIN jsonb_each(d -> 'connections') dc ON dc.key = e.key
             ORDER BY e.key
        LOOP
            -- a connection dropped, or dropped and created again under its name
            -- (recreate_connection.sql), starts afresh: nothing of it to compare
            IF c.now IS NULL OR c.now -> 'created_at' IS DISTINCT FROM c.was -> 'created_at' THEN
                RETURN QUERY SELECT 'connection_replaced', 'info', c.name,
                    format('the witness knows connection "%s" created at %s, which this database %s',
                           c.name, c.was ->> 'created_at',
                           CASE WHEN c.now IS NULL THEN 'does not have (dropped, or created after the point it was restored to)'
                                ELSE format('has as one created at %s', c.now ->> 'created_at') END);
            ELSIF (c.now ->> 'hwm_id')::bigint < (c.was ->> 'hwm_id')::bigint
                  OR (c.now ->> 'last_tick')::bigint < (c.was ->> 'last_tick')::bigint THEN
                RETURN QUERY SELECT 'hwm_behind_witness', 'rollback', c.name,
                    format('connection "%s" has consumed up to entry %s (tick %s) here, but had consumed up to entry %s (tick %s)',
                           c.name, c.now ->> 'hwm_id', c.now ->> 'last_tick', c.was ->> 'hwm_id', c.was ->> 'last_tick');
            ELSIF (c.now ->> 'log_head')::bigint < (c.was ->> 'log_head')::bigint THEN
                -- an adopted log (15_log_sources.sql): Connect's sequence went back
                RETURN QUERY SELECT 'log_head_behind_witness', 'rollback', c.name,
                    format('Heroku Connect''s log %s hands out ids from %s here, but had reached %s',
                           c.now ->> 'log', c.now ->> 'log_head', c.was ->> 'log_head');
            ELSIF p_predecessor IS NULL AND (d ->> 'next_xid')::bigint < (c.was ->> 'consumed_xid')::bigint THEN
                RETURN QUERY SELECT 'txid_behind_witness', 'rollback', c.name,
                    format('connection "%s" had consumed transactions up to xid %s, beyond the next xid %s here',
                           c.name, c.was ->> 'consumed_xid', d ->> 'next_xid');
            END IF;
        END LOOP;
    END IF;

    -- the sync service's own mark needs no witness
    FOR c IN
        SELECT dc.key AS name,
               -- an adopted connection's service counts in the ids of Connect's log
               coalesce((dc.value ->> 'log_head')::bigint, v_dhead) AS head,
               greatest((dc.value ->> 'remote_hwm')::bigint,
                        CASE WHEN w #> ARRAY['connections', dc.key, 'created_at'] = dc.value -> 'created_at'
                             THEN (w #>> ARRAY['connections', dc.key, 'remote_hwm'])::bigint END) AS remote
          FROM jsonb_each(d -> 'connections') dc ORDER BY dc.key
    LOOP
        IF c.remote > c.head THEN
            RETURN QUERY SELECT 'sync_service_ahead', 'rollback', c.name,
                format('the sync service of connection "%s" reports it has consumed up to entry %s, but the trigger log''s ids reach %s here',
                       c.name, c.remote, c.head);
        END IF;
    END LOOP;
END;
$$;

/*
 * connect_guard.rollback_check loads the witness and compares: the one
 * place both connect_check_rollback() and the worker get their findings.
 * write says whether this server may write the witness (not a superseded
 * old primary; not when the path itself is unusable).
 */
CREATE FUNCTION connect_guard.rollback_check(OUT path text, OUT witness jsonb, OUT findings jsonb, OUT write boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    l record;
    v_message text;
    v_state jsonb := connect_guard.database_state();
BEGIN
    write := true;
    BEGIN
        SELECT * INTO l FROM connect_guard.witness_load();
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
        -- a bare ROW() would lose the field names that the rest reads
        SELECT NULL::text AS path, 'unusable'::text AS status, NULL::jsonb AS content,
               v_message AS detail, NULL::integer AS predecessor
          INTO l;
    END;
    path := l.path;
    IF l.status = 'ok' AND l.content ->> 'installation' IS DISTINCT FROM v_state ->> 'installation' THEN
        l.status := 'reinstalled';
        l.detail := format('"%s" was written by installation %s of connect_guard, which was dropped; this is installation %s',
                           l.path, coalesce(l.content ->> 'installation', 'unknown'), v_state ->> 'installation');
        l.content := NULL;
    END IF;
    witness := l.content;
    SELECT coalesce(jsonb_agg(jsonb_build_object('finding', f.finding, 'severity', f.severity,
                                                 'connection', f.connection, 'detail', f.detail)), '[]')
      INTO findings
      FROM connect_guard.rollback_findings(witness, v_state, l.predecessor) f;
    IF l.status <> 'ok' THEN
        findings := jsonb_build_array(jsonb_build_object(
            'finding', CASE l.status
                         WHEN 'missing' THEN CASE WHEN EXISTS (SELECT 1 FROM connect_guard.witness WHERE witness.path = l.path)
                                                  THEN 'witness_missing' ELSE 'witness_new' END
                         WHEN 'unusable' THEN 'witness_unwritable'
                         ELSE 'witness_' || l.status END,
            'severity', CASE WHEN l.status IN ('disabled', 'reinstalled')
                               OR (l.status = 'missing' AND NOT EXISTS (SELECT 1 FROM connect_guard.witness WHERE witness.path = l.path))
                             THEN 'info' ELSE 'warning' END,
            'connection', NULL,
            'detail', CASE l.status
                        WHEN 'reinstalled' THEN l.detail || '; it is replaced'
                        WHEN 'disabled' THEN 'connect_guard.witness_directory is empty: rollbacks are detected only from what the sync service reports'
                        WHEN 'missing' THEN format('there is no witness at "%s"%s; a new one is written, and nothing is compared until then',
                                                   l.path, CASE WHEN EXISTS (SELECT 1 FROM connect_guard.witness WHERE witness.path = l.path)
                                                                THEN ', though this database wrote one there before (deleted, or the directory is not the same storage)'
                                                                ELSE '' END)
                        ELSE format('%s; it is not trusted and is replaced', l.detail) END)) || findings;
    END IF;
    write := l.status NOT IN ('disabled', 'unusable')
             AND NOT findings @> '[{"finding": "superseded"}]'
             AND NOT findings @> '[{"finding": "failed_over"}]';
END;
$$;

/*
 * connect_guard.rollback_act does what a rollback calls for (see the top
 * of this file) and records the incident.  A finding that names a
 * connection affects that connection's mappings; one that names none (the
 * whole database went back) affects every mapping.
 */
CREATE FUNCTION connect_guard.rollback_act(p_findings jsonb, p_witness jsonb, p_source text, p_first_cycle boolean)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rollbacks jsonb;
    v_mappings integer[];
    v_head bigint := connect_guard.log_sequence_head();
    v_seen bigint;
    v_marks jsonb;
    v_requests bigint[];
    v_fence integer;
    v_incident integer;
BEGIN
    SELECT jsonb_agg(f) INTO v_rollbacks FROM jsonb_array_elements(p_findings) f WHERE f ->> 'severity' = 'rollback';
    IF v_rollbacks IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(array_agg(m.mapping_id ORDER BY m.mapping_id), '{}') INTO v_mappings
      FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id)
     WHERE v_rollbacks @> '[{"connection": null}]'
        OR v_rollbacks @> jsonb_build_array(jsonb_build_object('connection', c.name));

    -- every id the sync service may have seen stays spent: new writes get new ids
    -- (of connections with a log of their own: Connect's ids are its log's, whose sequence is Connect's)
    SELECT greatest(max((w.value ->> 'hwm_id')::bigint), max((w.value ->> 'remote_hwm')::bigint) FILTER (WHERE NOT w.value ? 'log'),
                    (p_witness ->> 'log_head')::bigint,
                    (SELECT max(remote_hwm) FROM connect_guard.connection WHERE log_schema IS NULL))
      INTO v_seen
      FROM jsonb_each(coalesce(p_witness -> 'connections', '{}')) w;
    IF v_seen > v_head THEN
        PERFORM setval('connect_guard.trigger_log_id_seq', v_seen);
    END IF;

    -- the marks are what this database holds: never past its own log and ticks
    WITH held AS (
        UPDATE connect_guard.connection c
           SET hwm_id = least(c.hwm_id, v_head),
               last_tick = least(c.last_tick, (SELECT max(t.tick_id) FROM connect_guard.tick t))
         WHERE c.connection_id IN (SELECT m.connection_id FROM connect_guard.mapping m WHERE m.mapping_id = ANY (v_mappings))
        RETURNING c.name, c.hwm_id, c.last_tick)
    SELECT coalesce(jsonb_object_agg(h.name, jsonb_build_object(
               'hwm_id', h.hwm_id, 'last_tick', h.last_tick,
               'witnessed_hwm_id', p_witness #> ARRAY['connections', h.name, 'hwm_id'])), '{}')
      INTO v_marks FROM held h;

    v_requests := connect_guard.reload_mappings(v_mappings, 'rollback detected', interval '1 day');
    v_fence := connect_guard.reload_fence(v_mappings,
        'a rollback was detected; the sync service reloads the mapped tables (see connect_check_rollback)');
    INSERT INTO connect_guard.rollback_incident (source, findings, mapping_ids, fence_id, reload_requests)
    VALUES (p_source, v_rollbacks, v_mappings, v_fence, v_requests)
    RETURNING incident_id INTO v_incident;
    -- entries of Connect's logs the restore made unfinished again (77_connect_schema.sql)
    PERFORM connect_guard.note_restored_entries(v_incident, v_mappings, p_witness);
    PERFORM connect_guard.log_event(NULL, 'rollback_detected', jsonb_build_object(
        'incident_id', v_incident, 'source', p_source, 'first_cycle', p_first_cycle,
        'findings', v_rollbacks,
        'witness', jsonb_build_object('written_at', p_witness ->> 'written_at', 'lsn', p_witness ->> 'lsn',
                                      'timeline', p_witness -> 'timeline', 'log_head', p_witness -> 'log_head'),
        'mappings', cardinality(v_mappings), 'reload_requests', to_jsonb(v_requests), 'fence_id', v_fence,
        'log_sequence', jsonb_build_object('was', v_head, 'now', greatest(v_head, v_seen)),
        'high_water_marks', v_marks));
    RAISE WARNING USING
        MESSAGE = format('connect_guard: rollback detected in database %s: %s', current_database(),
                         (SELECT string_agg(f ->> 'detail', '; ') FROM jsonb_array_elements(v_rollbacks) f)),
        DETAIL = format('%s mapping(s) set to RELOAD_TABLE, %s reload request(s) queued%s.', cardinality(v_mappings),
                        cardinality(v_requests), CASE WHEN v_fence IS NOT NULL
                                                      THEN format(', fence %s up until they are acknowledged', v_fence)
                                                      ELSE '' END),
        HINT = 'See connect_rollback_incidents and connect_requests.';
    RETURN v_incident;
END;
$$;

/*
 * connect_guard.rollback_cycle is the worker's step: check, act on a
 * rollback, release what is acknowledged, write the witness, and report
 * problems with the witness once each (event and server log) rather than on
 * every cycle.  Returns the incident id, 0 when there was no rollback.
 */
CREATE FUNCTION connect_guard.rollback_cycle(p_first_cycle boolean)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record;
    v_incident integer;
    v_problem jsonb;
    v_report jsonb;
    f jsonb;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN 0;
    END IF;
    k := connect_guard.rollback_check();
    v_incident := connect_guard.rollback_act(k.findings, k.witness, 'worker', p_first_cycle);
    PERFORM connect_guard.failover_fence(k.findings);
    PERFORM connect_guard.rollback_release();
    IF k.write THEN
        v_problem := connect_guard.witness_refresh(k.path,
                                                   CASE WHEN v_incident IS NULL THEN k.witness END);
        IF v_problem IS NOT NULL THEN
            k.findings := k.findings || v_problem;
        END IF;
    END IF;

    -- warnings, and the crossing of a promotion or an upgrade, go to the event log
    IF k.path IS NOT NULL THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object('finding', x ->> 'finding', 'connection', x ->> 'connection')), '[]')
          INTO v_report
          FROM jsonb_array_elements(k.findings) x
         WHERE x ->> 'severity' = 'warning' OR x ->> 'finding' IN ('promoted', 'upgraded');
        IF v_report IS DISTINCT FROM (SELECT w.reported FROM connect_guard.witness w WHERE w.path = k.path) THEN
            FOR f IN SELECT x FROM jsonb_array_elements(k.findings) x
                      WHERE x ->> 'severity' = 'warning' OR x ->> 'finding' IN ('promoted', 'upgraded') LOOP
                PERFORM connect_guard.log_event(NULL,
                    CASE WHEN f ->> 'finding' LIKE 'witness\_%' THEN f ->> 'finding' ELSE 'witness_' || (f ->> 'finding') END,
                    jsonb_build_object('path', k.path, 'connection', f ->> 'connection', 'detail', f ->> 'detail'));
                IF f ->> 'severity' = 'warning' THEN
                    RAISE WARNING USING
                        MESSAGE = format('connect_guard: %s', f ->> 'detail'),
                        HINT = 'See connect_check_rollback() and the connect_guard.witness_directory setting.';
                END IF;
            END LOOP;
            UPDATE connect_guard.witness w SET reported = v_report WHERE w.path = k.path;
        END IF;
    END IF;
    RETURN coalesce(v_incident, 0);
END;
$$;

/*
 * connect_check_rollback says what the database looks like against its
 * witness, and why, without acting: the worker acts on the same findings.
 */
CREATE FUNCTION connect_check_rollback()
RETURNS TABLE (finding text, rollback boolean, connection text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN QUERY SELECT 'in_recovery', false, NULL::text,
            'a server in recovery is not compared with the witness; its worker does so when it is promoted';
        RETURN;
    END IF;
    k := connect_guard.rollback_check();
    RETURN QUERY
        SELECT f ->> 'finding', f ->> 'severity' = 'rollback', f ->> 'connection', f ->> 'detail'
          FROM jsonb_array_elements(k.findings) f;
    IF k.witness IS NOT NULL AND NOT k.findings @> '[{"severity": "rollback"}]'
       AND NOT k.findings @> '[{"severity": "warning"}]' THEN
        RETURN QUERY SELECT 'no_rollback', false, NULL::text,
            format('the database is at or beyond the witness "%s" written at %s (WAL %s, timeline %s, log head %s)',
                   k.path, k.witness ->> 'written_at', k.witness ->> 'lsn', k.witness ->> 'timeline',
                   k.witness ->> 'log_head');
    END IF;
END;
$$;
/* ------------------------------------------------------------------------
 * Adopting a schema that Heroku Connect manages (17_connect_schema.sql
 * says what that is), and the write errors Connect records there.  An
 * adopted connection reads Connect's log (15_log_sources.sql), fences the
 * tables, pauses and resumes Connect through its adapter, witnesses the
 * log and asks for reloads; it adds, alters and removes none of Connect's
 * objects: no trigger, column, index, sequence or row.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION connect_adopt_schema(connection text, schema text DEFAULT 'salesforce', adapter text DEFAULT 'heroku',
                                     options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_problems text[];
    v_adopter text;
    v_captured text;
    v_role text;
    v_id integer;
    t record;
    v_tables text[] := '{}';
BEGIN
    -- every argument is checked before anything is read or created
    PERFORM connect_guard.require_not_null(connection, 'connection name',
        'Name the new connection: 1 to 63 letters, digits, "_", "." or "-".');
    PERFORM connect_guard.require_not_null(schema, 'schema',
        'Pass the schema Heroku Connect writes to (heroku connect:info shows it; salesforce by default).');
    PERFORM connect_guard.require_not_null(adapter, 'adapter',
        'Use ''heroku'' (the default: Connect''s API), ''webhook'' or ''local''.');
    PERFORM connect_guard.require_not_null(options, 'options', 'Pass options as jsonb, for example ''{}''::jsonb.');
    IF NOT EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = schema) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_schema_name',
            MESSAGE = format('schema %s does not exist', coalesce(quote_ident(schema), 'NULL')),
            HINT = 'Pass the schema Heroku Connect writes to (heroku connect:info shows it; salesforce by default).';
    END IF;
    v_problems := connect_guard.connect_schema_problems(schema);
    IF cardinality(v_problems) > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('schema %s is not managed by Heroku Connect', quote_ident(schema)),
            DETAIL = format('It is not laid out as Connect lays out its schema: %s.', array_to_string(v_problems, '; ')),
            HINT = 'Adopt the schema Connect writes to; to sync tables of your own, use connect_create_connection() and connect_map_table().';
    END IF;
    SELECT c.name INTO v_adopter FROM connect_guard.connection c WHERE c.log_schema = schema;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('schema %s is already adopted by connection "%s"', quote_ident(schema), v_adopter),
            HINT = 'See connect_connections; drop that connection with connect_drop_connection() to adopt the schema again.';
    END IF;
    -- a capture trigger of connect_guard on a table of Connect's: a second log, undone by unmapping
    SELECT string_agg(DISTINCT format('%s (connection "%s")', to_regclass(format('%I.%I', m.table_schema, m.table_name)), c.name), ', ')
      INTO v_captured
      FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id)
     WHERE m.table_schema = schema AND c.log_schema IS NULL;
    IF v_captured IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('tables of schema %s are mapped by a connection with a log of its own', quote_ident(schema)),
            DETAIL = format('Mapped: %s. Their capture triggers feed connect_guard.trigger_log, a second log next to Connect''s.', v_captured),
            HINT = 'Unmap them with connect_unmap_table() (which drops the capture triggers), then adopt the schema.';
    END IF;
    IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'connection options must be a JSON object',
            HINT = 'Pass options as jsonb, for example ''{}''::jsonb.';
    END IF;
    -- the role Connect's sessions run as: by default the owner of its log, which Connect created
    IF options ? 'sync_role' THEN
        v_role := options ->> 'sync_role';
        IF jsonb_typeof(options -> 'sync_role') <> 'string'
           OR NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = v_role) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('option "sync_role" must name an existing role, not %s', options -> 'sync_role'),
                DETAIL = 'It is the role Heroku Connect''s sessions log in as: the reload fence lets its sessions with xmlbinary = ''hex'' write.',
                HINT = 'Leave it out to use the owner of the schema''s _trigger_log.';
        END IF;
    ELSE
        SELECT r.rolname INTO v_role FROM pg_class cl JOIN pg_roles r ON r.oid = cl.relowner
         WHERE cl.oid = format('%I._trigger_log', schema)::regclass;
    END IF;

    v_id := @extschema@.connect_create_connection(connection, adapter, options - 'sync_role');
    UPDATE connect_guard.connection SET log_schema = schema, sync_role = v_role WHERE connection_id = v_id;
    FOR t IN SELECT * FROM connect_guard.connect_logged_tables(schema) LOOP
        -- named by the table; the worker's refresh takes Connect's spelling and mapping id from the deep GET
        PERFORM @extschema@.connect_map_table(connection, t.relid::regclass);
        v_tables := v_tables || format('%I.%I', schema, t.relname);
    END LOOP;
    PERFORM connect_guard.log_tick(v_id, schema);
    PERFORM connect_guard.log_event(v_id, 'schema_adopted',
        jsonb_build_object('schema', schema, 'log', connect_guard.log_table(schema), 'sync_role', v_role,
                           'tables', to_jsonb(v_tables)));
    IF adapter = 'heroku' THEN
        PERFORM @extschema@.connect_refresh(connection);
    END IF;
    RETURN v_id;
END;
$$;

/*
 * connect_guard.write_errors: the FAILED entries of every adopted log and
 * its archive (Connect's CLI shows only the last 24 hours).  SECURITY
 * DEFINER: it reads Connect's tables for roles granted the view.
 */
CREATE FUNCTION connect_guard.write_errors()
RETURNS TABLE (connection text, table_name text, record_id bigint, sfid text, action text, sf_message text,
               failed_at timestamptz, entry_id bigint, archived boolean, created_at timestamptz)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c connect_guard.connection;
    v_table text;
BEGIN
    FOR c IN SELECT * FROM connect_guard.connection WHERE log_schema IS NOT NULL ORDER BY name LOOP
        IF connect_guard.log_sequence(c.log_schema) IS NULL THEN
            CONTINUE;
        END IF;
        -- Connect's indexes: (state, id) on the log, (state, table_name) WHERE state = 'FAILED' on the archive
        FOREACH v_table IN ARRAY ARRAY['_trigger_log', '_trigger_log_archive'] LOOP
            RETURN QUERY EXECUTE format(
                'SELECT %1$L::text, format(''%%I.%%I'', %2$L, l.table_name), l.record_id::bigint, l.sfid::text,
                        l.action::text, l.sf_message, coalesce(l.processed_at, l.updated_at)::timestamptz, l.id::bigint,
                        %3$L::boolean, l.created_at::timestamptz
                   FROM %2$I.%4$I l WHERE l.state = ''FAILED''',
                c.name, c.log_schema, v_table = '_trigger_log_archive', v_table);
        END LOOP;
    END LOOP;
END;
$$;

CREATE VIEW connect_write_errors AS
SELECT * FROM connect_guard.write_errors();
/* ------------------------------------------------------------------------
 * Privileges: nothing for PUBLIC; monitoring roles may read the views
 * (which redact secrets); connect_grant_consumer() grants the consumer
 * functions to the sync service's role, for one connection at a time.
 * ------------------------------------------------------------------------ */

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid FROM pg_proc p
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
         WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'connect_guard')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END;
$$;

GRANT SELECT ON connect_connections, connect_mappings, connect_high_water_marks, connect_fences, connect_status,
      connect_worker, connect_upgrade_status, connect_rollback_incidents, connect_write_errors,
      connect_consumers, connect_schema_drift TO pg_monitor;
-- the views call these with the reader's rights (log_status, write_errors and schema_change_present are
-- SECURITY DEFINER: they read Connect's log, or the mapped tables' catalog, for the monitoring role, which may not)
GRANT EXECUTE ON FUNCTION connect_guard.redact(jsonb), connect_guard.fence_list(),
      connect_guard.fence_relations(), connect_guard.worker_pid(), connect_guard.log_status(integer),
      connect_guard.write_errors(), connect_guard.mapping_relid(connect_guard.mapping),
      connect_guard.schema_change_present(integer) TO pg_monitor;
