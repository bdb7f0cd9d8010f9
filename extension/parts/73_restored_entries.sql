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
