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
