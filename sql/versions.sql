-- Versions: 1.0 is frozen (extension/connect_guard--1.0.sql) and every
-- later version is reached from it by upgrade scripts.  A fresh install of
-- the default version and 1.0 brought to it by ALTER EXTENSION UPDATE must
-- have the same objects: extension_objects() lists every member with its
-- definition, owner, privileges and comments, and nothing may differ.
-- (scripts/test.sh also runs every pg_regress and isolation test a second
-- time on installs updated from 1.0; test/t/030_extension_update.pl updates
-- a database in use.)
\set ECHO none
\i sql/extension_objects.psql
\set ECHO all

-- the worker of the test before has seen its DROP EXTENSION and gone
DO $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity
                               WHERE backend_type = 'connect_guard worker' AND datname = current_database());
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;

-- the versions, and how each reaches the default one
SELECT default_version FROM pg_available_extensions WHERE name = 'connect_guard';
SELECT source, target, path FROM pg_extension_update_paths('connect_guard')
 WHERE path IS NOT NULL ORDER BY source, target;

-- a fresh install of the default version
CREATE EXTENSION connect_guard;
SELECT extversion FROM pg_extension WHERE extname = 'connect_guard';
CREATE TEMP TABLE fresh AS SELECT * FROM extension_objects('connect_guard');
DROP EXTENSION connect_guard;

-- 1.0, then updated: what 1.0 lacks, then nothing
CREATE EXTENSION connect_guard VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'connect_guard';
SELECT object AS not_in_1_0 FROM fresh WHERE aspect = 'member'
EXCEPT SELECT object FROM extension_objects('connect_guard') WHERE aspect = 'member'
ORDER BY 1;
ALTER EXTENSION connect_guard UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'connect_guard';
CREATE TEMP TABLE updated AS SELECT * FROM extension_objects('connect_guard');
SELECT 'fresh install' AS only_in, * FROM (TABLE fresh EXCEPT ALL TABLE updated) f
UNION ALL
SELECT 'updated install', * FROM (TABLE updated EXCEPT ALL TABLE fresh) u
ORDER BY object, aspect, only_in;

-- what was compared: every kind of object and aspect (rows per aspect vary as parts are added)
SELECT DISTINCT definition AS member_kind FROM fresh WHERE aspect = 'member' ORDER BY 1;
SELECT DISTINCT regexp_replace(aspect, ' [0-9a-z_]*$', '') AS aspect FROM fresh ORDER BY 1;
SELECT count(*) > 500 AS many_rows FROM fresh;

-- and a difference shows: a privilege, a comment, a function's attribute, a column, an index
GRANT EXECUTE ON FUNCTION connect_preflight(text, text, bigint, text) TO PUBLIC;
COMMENT ON VIEW connect_status IS 'changed';
ALTER FUNCTION connect_guard.preflight_age(timestamptz) COST 7;
ALTER TABLE connect_guard.event ADD COLUMN extra int;
CREATE INDEX event_extra ON connect_guard.event (extra);
SELECT object, aspect FROM (SELECT * FROM extension_objects('connect_guard') EXCEPT ALL TABLE updated) d
ORDER BY object, aspect;

DROP EXTENSION connect_guard;
