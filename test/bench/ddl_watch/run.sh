#!/usr/bin/env bash
# test/bench/ddl_watch/run.sh: what connect_guard's event triggers (the
# schema watch, 66_schema_watch.sql) cost on DDL.
#
# One database with 50 mapped tables.  A procedure runs the DDL of each
# workload in short batches, in one session, with the two event triggers
# enabled and disabled in turn (ALTER EVENT TRIGGER ... DISABLE, a commit
# between batches, the order alternating), so that both sides of every
# ratio are measured within milliseconds of each other: a shared machine's
# noise falls on both.
#   temp_table      CREATE TEMP TABLE + DROP TABLE (an application's own DDL: the
#                   commonest kind, on no mapped table)
#   unmapped_alter  ALTER TABLE ... ALTER COLUMN SET DEFAULT / DROP DEFAULT of a
#                   table nobody maps
#   mapped_alter    the same on a mapped table: the whole check of its mapping
#                   runs (nothing differs, nothing is recorded)
# Prints, per workload, the median over the rounds of the time per
# statement with and without the event triggers, their ratio, and the cost
# added per statement in µs.
#
#   bash test/bench/ddl_watch/run.sh    # BENCH_ROUNDS=30 BENCH_BATCH=100
source "$(dirname "$0")/../lib.sh"

rounds=${BENCH_ROUNDS:-30}
batch=${BENCH_BATCH:-100}

install_packages
build_and_install

bench_scratch ddl-watch
bench_cluster 5485 "synchronous_commit = off"

sql <<'SQL'
CREATE EXTENSION connect_guard;
SELECT connect_create_connection('sync');
CREATE TABLE unmapped (id int PRIMARY KEY, name text);
CREATE TABLE timings (workload text, round int, watched boolean, us_per_statement numeric);

-- bench_batch: n times the two statements of a workload, in µs per statement
CREATE FUNCTION bench_batch(stmt1 text, stmt2 text, n int) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1 .. n LOOP
        EXECUTE stmt1;
        EXECUTE stmt2;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / (2 * n);
END;
$$;

-- bench: rounds of one batch watched and one not, in alternating order, each batch its own transaction
CREATE PROCEDURE bench(workload text, stmt1 text, stmt2 text, rounds int, n int) LANGUAGE plpgsql AS $$
DECLARE
    v_us numeric;
BEGIN
    PERFORM bench_batch(stmt1, stmt2, n);           -- warm the caches and plans
    COMMIT;
    FOR r IN 1 .. rounds LOOP
        FOR side IN 0 .. 1 LOOP
            IF (r + side) % 2 = 0 THEN
                ALTER EVENT TRIGGER connect_guard_ddl_watch ENABLE ALWAYS;
                ALTER EVENT TRIGGER connect_guard_drop_watch ENABLE ALWAYS;
            ELSE
                ALTER EVENT TRIGGER connect_guard_ddl_watch DISABLE;
                ALTER EVENT TRIGGER connect_guard_drop_watch DISABLE;
            END IF;
            COMMIT;
            v_us := bench_batch(stmt1, stmt2, n);
            INSERT INTO timings VALUES (workload, r, (r + side) % 2 = 0, v_us);
            COMMIT;
        END LOOP;
    END LOOP;
    ALTER EVENT TRIGGER connect_guard_ddl_watch ENABLE ALWAYS;
    ALTER EVENT TRIGGER connect_guard_drop_watch ENABLE ALWAYS;
END;
$$;
SQL
# the mapped tables (each map fires the watch, as any DDL does)
for i in $(seq 1 50); do
    sql -c "CREATE TABLE t$i (id int PRIMARY KEY, name text, note text)" \
        -c "SELECT connect_map_table('sync', 't$i')" >/dev/null
done

sql -c "CALL bench('temp_table', 'CREATE TEMP TABLE scratch (id int, v text)', 'DROP TABLE scratch', $rounds, $batch)"
sql -c "CALL bench('unmapped_alter', \$\$ALTER TABLE unmapped ALTER COLUMN name SET DEFAULT 'x'\$\$,
                   'ALTER TABLE unmapped ALTER COLUMN name DROP DEFAULT', $rounds, $batch)"
sql -c "CALL bench('mapped_alter', \$\$ALTER TABLE t25 ALTER COLUMN note SET DEFAULT 'x'\$\$,
                   'ALTER TABLE t25 ALTER COLUMN note DROP DEFAULT', $rounds, $batch)"

echo
echo "$rounds rounds of $batch x 2 statements each side, in one session; medians:"
as_run_user psql -h "$work" -p "$port" -U postgres -qX -d bench <<'SQL'
SELECT w.workload,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY w.us_per_statement)::numeric, 1) AS "µs watched",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY n.us_per_statement)::numeric, 1) AS "µs not",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY n.us_per_statement / w.us_per_statement)::numeric, 3)
           AS "ratio (not / watched)",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY w.us_per_statement - n.us_per_statement)::numeric, 1)
           AS "µs added per statement"
  FROM timings w JOIN timings n USING (workload, round)
 WHERE w.watched AND NOT n.watched
 GROUP BY w.workload ORDER BY min(w.round), w.workload;
-- the watch found nothing: every statement left its table as its mapping expects
SELECT 'schema changes recorded: ' || count(*) FROM connect_guard.schema_change;
SQL
