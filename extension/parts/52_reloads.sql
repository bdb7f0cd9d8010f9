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
