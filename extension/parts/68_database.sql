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
