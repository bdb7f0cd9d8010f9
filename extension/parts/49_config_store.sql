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
