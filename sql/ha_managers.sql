-- HA managers: promote_with is checked before a plan is stored, the HTTP
-- function refuses to run outside the worker, and the view never shows the
-- endpoint's password.  Real Patroni and pg_auto_failover clusters are in
-- test/t/021_patroni.pl and test/t/022_pg_auto_failover.pl.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\i sql/show_error.psql

SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', promote_with => 'repmgr')$$);
SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', promote_with => NULL)$$);
SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', promote_with => 'patroni')$$);
SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', promote_with => 'pg_auto_failover')$$);
SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', promote_with => 'patroni',
                                                   ha_endpoint => 'ftp://127.0.0.1:8008')$$);
SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', promote_with => 'patroni',
                                                   ha_endpoint => 'http://127.0.0.1:8008/switchover')$$);
SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', promote_with => 'pg_auto_failover',
                                                   ha_endpoint => 'host=127.0.0.1 port')$$);
SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', promote_with => 'patroni',
                                                   ha_endpoint => 'http://127.0.0.1:8008', ha_member => 'two words')$$);
SELECT show_error($$SELECT connect_prepare_upgrade('pg_upgrade', promote_with => 'patroni', ha_endpoint => 'http://127.0.0.1:8008')$$);
SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', ha_endpoint => 'http://127.0.0.1:8008')$$);
SELECT show_error($$SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1', ha_member => 'node2')$$);
-- none of these stored a plan
SELECT count(*) FROM connect_upgrade_status;

-- no HTTP call from a user's session, not even a superuser's
SELECT show_error($$SELECT * FROM connect_guard.ha_http('GET', 'http://127.0.0.1:1/cluster')$$);
-- and no one else may call it at all
CREATE ROLE ha_nobody;
SET ROLE ha_nobody;
SELECT show_error($$SELECT * FROM connect_guard.ha_http('GET', 'http://127.0.0.1:1/cluster')$$);
RESET ROLE;
DROP ROLE ha_nobody;

-- a plan handed to Patroni: the view shows who promotes, never the REST API's password
SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1 dbname=x', promote_with => 'patroni',
                               ha_endpoint => 'http://patroni:s3cr3t@127.0.0.1:1', ha_member => 'node2') > 0 AS prepared;
SELECT method, promote_with, ha_endpoint, ha_member FROM connect_upgrade_status;
SELECT count(*) FROM connect_upgrade_status WHERE ha_endpoint LIKE '%s3cr3t%';
SELECT connect_abort_upgrade(plan, 'regression test') FROM connect_upgrade_status;
-- the same for the monitor's conninfo
SELECT connect_prepare_upgrade('follower', follower => 'host=127.0.0.1 port=1 dbname=x', promote_with => 'pg_auto_failover',
                               ha_endpoint => 'postgres://autoctl_node:s3cr3t@127.0.0.1:1/pg_auto_failover') > 0 AS prepared;
SELECT promote_with, ha_endpoint FROM connect_upgrade_status WHERE status = 'running' OR status = 'failed' ORDER BY plan DESC LIMIT 1;
SELECT connect_abort_upgrade(plan, 'regression test') FROM connect_upgrade_status WHERE status <> 'aborted';

-- the witness records the timeline history (empty on timeline 1)
SELECT connect_guard.database_state() -> 'history' AS history;
SELECT connect_guard.timeline_ancestry();
-- a former primary: the witness's timeline 3 left this server's timeline 1 at 0/1
SELECT connect_guard.failed_over_detail('{"timeline": 3, "written_at": "then", "history": {"1": "0/1", "2": "0/2"}}',
                                        '{"timeline": 1}') IS NOT NULL AS former_primary;
-- not when the witness's history does not name this timeline (another branch: a rollback)
SELECT connect_guard.failed_over_detail('{"timeline": 3, "history": {"2": "0/2"}}', '{"timeline": 1}') IS NULL AS other_branch;
SELECT connect_guard.failed_over_detail('{"timeline": 3}', '{"timeline": 1}') IS NULL AS older_witness;
DROP EXTENSION connect_guard;
DROP FUNCTION show_error(text);
