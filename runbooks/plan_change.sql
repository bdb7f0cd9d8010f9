-- runbooks/plan_change.sql: move the database to a server of another size
-- (Heroku Connect Maintenance Operations, "Changing the Plan of Your Heroku
-- Postgres Database").  Run it on the current primary:
--
--   psql -v ON_ERROR_STOP=1 -f runbooks/plan_change.sql -d app \
--        -v follower_conninfo='host=bigger-db port=5432 dbname=app user=postgres'
--
-- Heroku changes a plan in place (heroku addons:upgrade), which Connect
-- handles like an HA failover.  On your own servers a plan change is a move
-- to other hardware: build a streaming follower on the new server, then do
-- the follower changeover of runbooks/follower_changeover.sql without its
-- version upgrade (the seed: "omitting step 4").  A streaming follower
-- always runs the primary's major version, so nothing changes but the
-- server: the follower is promoted as soon as the plan is ready, which is
-- why promote defaults to on here.
--
-- Variables: those of runbooks/follower_changeover.sql (follower,
-- follower_conninfo, max_lag, step_timeout, wait_timeout, plan), with
--   promote   [on]: off stops at 'ready' and prints how to promote later.
--
-- When a follower cannot be made (Heroku's Essential tier; or a new server
-- reachable only through pg_dump), use runbooks/pg_copy.sql instead:
-- pause together with the application's maintenance mode, copy, resume.

\set ON_ERROR_STOP on
\set QUIET on
\set runbook plan_change
\if :{?promote} \else \set promote on \endif

\echo '== plan_change: a follower changeover without a version change (follower_changeover.sql, promote =' :promote')'
\echo '   1. check the follower is a caught-up standby of this primary'
\echo '   2. the plan pauses every connection, fences this database and the follower, waits for the follower'
\echo '   3. promote the follower; its worker lifts its fence and resumes the connections; this server stays fenced'
\echo
\ir follower_changeover.sql
