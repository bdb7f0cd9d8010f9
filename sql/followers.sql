-- Followers: registering them is checked; a follower that is down, or that
-- is not a standby of this primary, is reported as such and never with a
-- lag (so never as caught up); a password never shows.  Real standbys are
-- in test/t/004_follower_lag.pl.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
SHOW connect_guard.follower_timeout;

-- nothing listens on port 1
SELECT connect_add_follower('down', 'host=127.0.0.1 port=1 user=cg_monitor password=s3cr3t dbname=app');
SELECT connect_add_follower('down', 'host=127.0.0.1 port=2');
SELECT connect_add_follower('bad name', 'host=127.0.0.1');
SELECT connect_add_follower(NULL, 'host=127.0.0.1');
SELECT connect_add_follower('nulls', NULL);
-- malformed: libpq's own message, and a hint
SELECT connect_add_follower('malformed', 'host=127.0.0.1 port');
SELECT connect_add_follower('malformed', 'hots=127.0.0.1');
SELECT connect_add_follower('malformed', 'postgresql://cg_monitor:s3cr3t@[::1/app');
SELECT connect_add_follower('malformed', 'host=''127.0.0.1');
SELECT connect_remove_follower('nope');
SELECT connect_remove_follower(NULL);
-- a URI, and quoting, survive the masking
SELECT connect_add_follower('uri', 'postgresql://cg_monitor:s3cr3t@127.0.0.1:1/app?sslmode=disable&sslpassword=k3y');
SELECT connect_add_follower('quoted', $$host=127.0.0.1 port=1 application_name='lag \'probe\' \\ x' password='s3 cr3t'$$);
SELECT name, conninfo FROM connect_follower_lag WHERE source = 'libpq' ORDER BY name;

-- this primary registered as its own follower: reachable, but not a standby
SELECT connect_add_follower('self',
       format('host=%s port=%s dbname=%s user=%s',
              coalesce(nullif(trim(split_part(current_setting('unix_socket_directories'), ',', 1)), ''), '127.0.0.1'),
              current_setting('port'), current_database(), current_user));

SELECT name, reachable, split_part(error, E'\n', 1) AS error, in_recovery, system_identifier_matches,
       timeline > 0 AS has_timeline, lag_bytes, lag_seconds
  FROM connect_check_followers() ORDER BY name;

-- the view shows the same, with the conninfo masked
SELECT source, name, reachable, split_part(error, E'\n', 1) AS error, in_recovery,
       replay_lsn, lag_bytes, lag_seconds, checked_at IS NOT NULL AS checked
  FROM connect_follower_lag ORDER BY name;

-- the secrets are nowhere but in the registration itself
SELECT count(*) AS secrets_shown FROM connect_follower_lag WHERE conninfo ~ '(s3cr3t|s3 cr3t|k3y)';
SELECT count(*) AS secrets_logged FROM connect_guard.event WHERE detail::text ~ '(s3cr3t|s3 cr3t|k3y)';
SELECT count(*) AS secrets_in_status FROM connect_guard.follower_status s
 WHERE (s.*)::text ~ '(s3cr3t|s3 cr3t|k3y)';
SELECT kind, detail FROM connect_guard.event WHERE detail->>'name' IN ('down', 'uri') ORDER BY event_id;

-- the status table itself refuses a lag next to an error, or an unreachable follower without one
INSERT INTO connect_guard.follower_status (name, checked_at, reachable, error, lag_bytes)
VALUES ('down', '2020-01-01 00:00+00', true, 'not a standby of this primary', 0);
INSERT INTO connect_guard.follower_status (name, checked_at, reachable) VALUES ('down', '2020-01-01 00:00+00', false);

-- a follower added in this transaction is shown unchecked
BEGIN;
SELECT connect_add_follower('new', 'host=127.0.0.1 port=1');
SELECT name, reachable, error, checked_at FROM connect_follower_lag WHERE name = 'new';
ROLLBACK;

-- monitoring roles read the view, and nothing else
CREATE ROLE cg_regress_monitor IN ROLE pg_monitor;
SET ROLE cg_regress_monitor;
SELECT name, conninfo FROM connect_follower_lag WHERE name = 'down';
SELECT conninfo FROM connect_guard.follower;
SELECT connect_check_followers();
SELECT connect_remove_follower('down');
RESET ROLE;
DROP ROLE cg_regress_monitor;

-- removing a follower removes its status
SELECT connect_remove_follower('down');
SELECT count(*) AS status_left FROM connect_guard.follower_status WHERE name = 'down';
SELECT kind, detail FROM connect_guard.event WHERE kind = 'follower_removed';
SELECT connect_remove_follower('uri');
SELECT connect_remove_follower('quoted');
SELECT connect_remove_follower('self');
SELECT count(*) AS checked FROM connect_check_followers();

DROP EXTENSION connect_guard;
