/*
 * Schema of the capture benchmark: five identical tables, one per variant,
 * and the four trigger logs.  Run once per throwaway cluster by run.sh
 * (psql -v extras=0|1 -v nrows=N).
 */
\set ON_ERROR_STOP on
SET client_min_messages = warning;

CREATE EXTENSION hstore;
CREATE EXTENSION pgq;
CREATE EXTENSION connect_guard;

/*
 * (b) Heroku Connect's trigger log and logger, rebuilt from what Connect
 * installs: same column types (hstore kept as text), same indexes, the same
 * work per row (nextval, txid_current, clock_timestamp, hstore of the whole
 * row, the UPDATE diff computed by parsing the old row's text back into an
 * hstore).  One generic function instead of Connect's one per table: the
 * per-row work is identical.
 */
CREATE SCHEMA salesforce;
CREATE TABLE salesforce._trigger_log (
    id              serial PRIMARY KEY,
    txid            bigint,
    created_at      timestamptz DEFAULT now(),
    updated_at      timestamptz DEFAULT now(),
    processed_at    timestamptz,
    processed_tx    bigint,
    state           varchar(8),
    action          varchar(7),
    table_name      varchar(128),
    record_id       integer,
    sfid            varchar(18),
    old             text,
    "values"        text,
    sf_result       integer,
    sf_message      text
);
CREATE INDEX _trigger_log_idx_created_at ON salesforce._trigger_log (created_at);
CREATE INDEX _trigger_log_idx_state_id ON salesforce._trigger_log (state, id);
CREATE INDEX _trigger_log_idx_state_table_name ON salesforce._trigger_log (state, table_name)
    WHERE state = 'NEW' OR state = 'PENDING';

CREATE FUNCTION salesforce.hc_logger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    entry salesforce._trigger_log;
    -- Connect's bookkeeping columns never go to Salesforce
    excluded text[] := ARRAY['_hc_lastop', '_hc_err'];
BEGIN
    entry.id := nextval('salesforce._trigger_log_id_seq');
    entry.action := TG_OP;
    entry.table_name := TG_TABLE_NAME;
    entry.txid := txid_current();
    entry.created_at := clock_timestamp();
    entry.state := 'NEW';
    IF TG_OP = 'INSERT' THEN
        entry.record_id := NEW.id;
        entry."values" := hstore(NEW.*) - excluded;
    ELSIF TG_OP = 'UPDATE' THEN
        entry.record_id := NEW.id;
        entry.old := hstore(OLD.*) - excluded;
        entry."values" := (hstore(NEW.*) - entry.old::hstore) - excluded;
        entry.sfid := OLD.sfid;
    ELSE
        entry.record_id := OLD.id;
        entry.old := hstore(OLD.*) - excluded;
        entry.sfid := OLD.sfid;
    END IF;
    INSERT INTO salesforce._trigger_log VALUES (entry.*);
    RETURN NULL;
END;
$$;

/*
 * Connect also guards its trigger with get_xmlbinary() (a pg_settings scan
 * per row, how it tells its own writes from the application's) and NOTIFYs
 * its worker from a row trigger on the log.  Both are real costs of Connect
 * but not of "writing hstore text", so they are off unless asked for: the
 * default baseline is the cheaper, harder one to beat.
 */
\if :extras
CREATE FUNCTION public.get_xmlbinary() RETURNS varchar
LANGUAGE plpgsql AS $$
DECLARE
    v varchar;
BEGIN
    SELECT setting INTO v FROM pg_settings WHERE name = 'xmlbinary';
    RETURN v;
END;
$$;
CREATE FUNCTION salesforce.tlog_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('salesforce.hc_trigger_log', 'ping');
    RETURN NEW;
END;
$$;
CREATE TRIGGER tlog_insert_trigger AFTER INSERT ON salesforce._trigger_log
    FOR EACH ROW EXECUTE FUNCTION salesforce.tlog_notify();
\endif

-- (c) PgQ
SELECT pgq.create_queue('bench') AS queue_id \gset

/*
 * (d) What a user can write without C: PL/pgSQL statement-level triggers
 * with transition tables, one INSERT ... SELECT per statement into a log
 * shaped like connect_guard's (same columns, jsonb, the same primary key and
 * its own CACHE 1 sequence), with the same content: the new row on INSERT,
 * the old row and only the changed columns on UPDATE, the old row on
 * DELETE, the key's text, sfid.  Transition tables allow one event per
 * trigger, hence three triggers.
 */
CREATE SCHEMA stmt;
CREATE SEQUENCE stmt.trigger_log_id_seq CACHE 1;
CREATE TABLE stmt.trigger_log (LIKE connect_guard.trigger_log INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE stmt.trigger_log
    ALTER COLUMN id SET DEFAULT nextval('stmt.trigger_log_id_seq'),
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN updated_at SET DEFAULT now(),
    ALTER COLUMN state SET DEFAULT 'NEW';

CREATE FUNCTION stmt.log_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stmt.trigger_log (txid, action, table_schema, table_name, record_id, sfid, "values")
    SELECT pg_current_xact_id(), 'INSERT', TG_TABLE_SCHEMA, TG_TABLE_NAME, n.id::text, n.sfid, to_jsonb(n)
      FROM new_rows n;
    RETURN NULL;
END;
$$;

/*
 * The UPDATE diff in set-based SQL: to_jsonb(new) minus the keys of the
 * columns that did not change.  Generic diffs (jsonb_each per row, hstore
 * subtraction) cost 2 to 5 times more, so, as Connect does, the function is
 * generated for its table, with one comparison per column.
 */
CREATE FUNCTION stmt.create_update_logger(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $gen$
DECLARE
    unchanged text;
BEGIN
    SELECT string_agg(format('CASE WHEN n.%1$I IS NOT DISTINCT FROM o.%1$I THEN %1$L END', attname), ', '
                      ORDER BY attnum)
      INTO unchanged
      FROM pg_attribute WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped;
    EXECUTE format($f$
        CREATE FUNCTION stmt.log_update() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO stmt.trigger_log (txid, action, table_schema, table_name, record_id, sfid, old, "values")
            SELECT pg_current_xact_id(), 'UPDATE', TG_TABLE_SCHEMA, TG_TABLE_NAME, n.id::text, n.sfid,
                   to_jsonb(o), to_jsonb(n) - ARRAY[%s]::text[]
              FROM new_rows n JOIN old_rows o ON o.id = n.id;
            RETURN NULL;
        END;
        $$;
    $f$, unchanged);
END;
$gen$;

CREATE FUNCTION stmt.log_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stmt.trigger_log (txid, action, table_schema, table_name, record_id, sfid, old)
    SELECT pg_current_xact_id(), 'DELETE', TG_TABLE_SCHEMA, TG_TABLE_NAME, o.id::text, o.sfid, to_jsonb(o)
      FROM old_rows o;
    RETURN NULL;
END;
$$;

-- (e) connect_guard
SELECT connect_create_connection('sync') AS connection_id \gset

/*
 * The tables look like a Connect-synced Salesforce object: serial id,
 * 18-character sfid with its unique index, an index on systemmodstamp (so
 * updates are not HOT, as in Connect), a few typed columns and some text.
 */
DO $$
DECLARE
    variant text;
BEGIN
    FOREACH variant IN ARRAY ARRAY['none', 'plpgsql', 'pgq', 'plpgsql_stmt', 'connect_guard'] LOOP
        EXECUTE format($f$
            CREATE TABLE public.%1$I (
                id              serial PRIMARY KEY,
                sfid            varchar(18),
                name            varchar(255),
                email           varchar(80),
                phone           varchar(40),
                amount          numeric(18,2),
                v               integer NOT NULL DEFAULT 0,
                isdeleted       boolean NOT NULL DEFAULT false,
                systemmodstamp  timestamp,
                createddate     timestamp,
                description     text
            );
            CREATE UNIQUE INDEX ON public.%1$I (sfid);
            CREATE INDEX ON public.%1$I (systemmodstamp);
        $f$, 'bench_' || variant);
    END LOOP;
END;
$$;

/*
 * The rows every run starts from, generated once: reset.sql copies them,
 * which is cheaper than generating them again before each of the ~50 runs.
 */
CREATE TABLE public.bench_seed (LIKE public.bench_none);
INSERT INTO public.bench_seed (id, sfid, name, email, phone, amount, v, isdeleted,
                               systemmodstamp, createddate, description)
SELECT i,
       '003' || lpad(i::text, 15, '0'),
       'Contact ' || i,
       'contact' || i || '@example.com',
       '+1 555 ' || lpad((i % 10000)::text, 4, '0'),
       (i % 100000) / 100.0,
       0,
       false,
       timestamp '2024-01-01' + i * interval '1 second',
       timestamp '2024-01-01' + i * interval '1 second',
       'Lead from campaign ' || md5(i::text)
  FROM generate_series(1, :nrows) i;

\if :extras
CREATE TRIGGER hc_logtrigger AFTER INSERT OR UPDATE OR DELETE ON public.bench_plpgsql
    FOR EACH ROW WHEN (public.get_xmlbinary()::text = 'base64')
    EXECUTE FUNCTION salesforce.hc_logger();
\else
CREATE TRIGGER hc_logtrigger AFTER INSERT OR UPDATE OR DELETE ON public.bench_plpgsql
    FOR EACH ROW EXECUTE FUNCTION salesforce.hc_logger();
\endif

SELECT stmt.create_update_logger('public.bench_plpgsql_stmt');
CREATE TRIGGER stmt_log_insert AFTER INSERT ON public.bench_plpgsql_stmt
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION stmt.log_insert();
CREATE TRIGGER stmt_log_update AFTER UPDATE ON public.bench_plpgsql_stmt
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION stmt.log_update();
CREATE TRIGGER stmt_log_delete AFTER DELETE ON public.bench_plpgsql_stmt
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION stmt.log_delete();

CREATE TRIGGER pgq_logutriga AFTER INSERT OR UPDATE OR DELETE ON public.bench_pgq
    FOR EACH ROW EXECUTE PROCEDURE pgq.logutriga('bench');

SELECT connect_map_table('sync', 'public.bench_connect_guard') AS mapping_id \gset

-- how many rows a variant's log holds, to check that every change was captured
CREATE FUNCTION public.bench_captured(variant text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    events text;
BEGIN
    CASE variant
    WHEN 'none' THEN
        n := 0;
    WHEN 'plpgsql' THEN
        SELECT count(*) INTO n FROM salesforce._trigger_log;
    WHEN 'pgq' THEN
        -- the queue's parent event table: its rotating children inherit from it
        SELECT queue_data_pfx INTO events FROM pgq.queue WHERE queue_name = 'bench';
        EXECUTE format('SELECT count(*) FROM %s', events) INTO n;
    WHEN 'plpgsql_stmt' THEN
        SELECT count(*) INTO n FROM stmt.trigger_log;
    WHEN 'connect_guard' THEN
        SELECT count(*) INTO n FROM connect_guard.trigger_log;
    END CASE;
    RETURN n;
END;
$$;
