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
