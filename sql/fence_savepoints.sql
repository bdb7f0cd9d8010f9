-- A fence change cannot be undone by a rollback to a savepoint (the change
-- state keeps one change per fence and transaction), so a subtransaction
-- that changed a fence and aborted dooms its whole transaction: the commit
-- fails and the abort undoes every change.  Without this, a lowering rolled
-- back to a savepoint left the table writable, and a raise rolled back to a
-- savepoint left a fence that connect_unfence() could not find.
CREATE EXTENSION connect_guard;
\set SHOW_CONTEXT never
\set VERBOSITY terse
CREATE TABLE sp (id int PRIMARY KEY);
SELECT connect_create_connection('sp') > 0 AS created;
SELECT connect_map_table('sp', 'sp') > 0 AS mapped;
SELECT connect_fence('mapped') > 0 AS fenced;
-- a lowering rolled back to a savepoint: the commit fails, the fence stays up
BEGIN;
SAVEPOINT s;
SELECT connect_unfence() > 0 AS lowered;
ROLLBACK TO s;
COMMIT;
SELECT count(*) AS fences FROM connect_fences;
INSERT INTO sp VALUES (1);
SELECT connect_unfence() > 0 AS lowered;
-- a raise rolled back to a savepoint: the commit fails, no fence is left
BEGIN;
SAVEPOINT s;
SELECT connect_fence('mapped') > 0 AS fenced;
ROLLBACK TO s;
COMMIT;
SELECT count(*) AS fences FROM connect_fences;
INSERT INTO sp VALUES (2);
-- the same through an exception block that catches an error after the raise
DO $$
BEGIN
    BEGIN
        PERFORM connect_fence('mapped');
        RAISE EXCEPTION 'after the raise';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
END
$$;
SELECT count(*) AS fences FROM connect_fences;
-- a savepoint rolled back before the change does not doom the transaction
BEGIN;
SAVEPOINT s;
SELECT 1 AS nothing;
ROLLBACK TO s;
SELECT connect_fence('mapped') > 0 AS fenced;
COMMIT;
SELECT count(*) AS fences FROM connect_fences;
-- nor does a released one
BEGIN;
SAVEPOINT s;
SELECT connect_unfence() > 0 AS lowered;
RELEASE s;
COMMIT;
SELECT count(*) AS fences FROM connect_fences;
INSERT INTO sp VALUES (3);
SELECT count(*) AS rows FROM sp;
SELECT connect_drop_connection('sp');
DROP TABLE sp;
DROP EXTENSION connect_guard;
