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
