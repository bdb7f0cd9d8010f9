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
            SELECT jsonb_object_agg(c.name, jsonb_build_object('created_at', c.created_at, 'remote_hwm', c.remote_hwm,
                                                               -- a restore may bring back a pause since lifted
                                                               -- (57_rollback_states.sql)
                                                               'paused', c.state IN ('PAUSED', 'PAUSING'))
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
