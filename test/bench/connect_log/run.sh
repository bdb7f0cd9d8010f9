#!/usr/bin/env bash
# test/bench/connect_log/run.sh: what reading Heroku Connect's own trigger
# log costs the worker, on a log of millions of rows.
#
# Two adopted schemas (test/fixtures/connect_schema.sql) side by side in one
# database: "big" with a _trigger_log of BENCH_ROWS entries (default 5
# million: processed SUCCESS entries, a FAILED one every 50,000, and a tail
# of 2,000 NEW and 50 PENDING) and an archive of a fifth of that; "small"
# with 1,000.  In interleaved rounds it times one worker cycle's work per
# log (the log tick, and the head and processed mark the witness records)
# and prints milliseconds per cycle and the ratio big / small: reading by
# Connect's (state, id) index, the cost must not grow with the log
# (target: under 5 ms per cycle, ratio near 1).  Then what a read of
# connect_high_water_marks costs (it counts the backlog, on demand, not per
# cycle) and the plans of the per-cycle queries, which must show no
# sequential scan.
#
#   bash test/bench/connect_log/run.sh   # BENCH_ROWS=5000000 BENCH_ROUNDS=5 BENCH_CALLS=200
source "$(dirname "$0")/../lib.sh"

rows=${BENCH_ROWS:-5000000}
rounds=${BENCH_ROUNDS:-5}
calls=${BENCH_CALLS:-200}

install_packages
build_and_install

bench_scratch connect-log
# no witness and no archiving by the worker: only what is measured runs
bench_cluster 5495 "shared_buffers = 512MB" "maintenance_work_mem = 512MB" "max_wal_size = 4GB" \
    "connect_guard.witness_directory = ''" "connect_guard.archive_chunks = 0"
for schema in big small; do
    sql -v schema="$schema" -v tables=account,contact -f "$CG_ROOT/test/fixtures/connect_schema.sql" >/dev/null
done

log "filling big._trigger_log with $rows entries (and small's with 1000)"
sql <<SQL
CREATE FUNCTION pg_temp.fill(p_schema text, p_rows bigint) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
    EXECUTE format(\$f\$
        INSERT INTO %1\$I._trigger_log (id, txid, created_at, updated_at, processed_at, state, action, table_name,
                                       record_id, sfid, "values", sf_result, sf_message)
        SELECT g, 1000 + g / 10, now() - make_interval(secs => (%2\$s - g) / 100.0), now(),
               CASE WHEN g <= %2\$s - 2050 THEN now() END,
               CASE WHEN g > %2\$s - 2000 THEN 'NEW' WHEN g > %2\$s - 2050 THEN 'PENDING'
                    WHEN g %% 50000 = 0 THEN 'FAILED' ELSE 'SUCCESS' END,
               CASE WHEN g %% 3 = 0 THEN 'UPDATE' ELSE 'INSERT' END,
               CASE WHEN g %% 2 = 0 THEN 'account' ELSE 'contact' END,
               g %% 100000, NULL, '"id"=>"' || g || '", "name"=>"n' || g || '"',
               CASE WHEN g %% 50000 = 0 THEN 400 END,
               CASE WHEN g %% 50000 = 0 THEN 'REQUIRED_FIELD_MISSING' END
          FROM generate_series(1, %2\$s) g\$f\$, p_schema, p_rows);
    EXECUTE format(\$f\$
        INSERT INTO %1\$I._trigger_log_archive (id, txid, created_at, updated_at, processed_at, state, action, table_name, record_id)
        SELECT -g, 1, now() - interval '2 days', now() - interval '1 day', now() - interval '1 day', 'SUCCESS', 'INSERT', 'account', g
          FROM generate_series(1, %2\$s / 5) g\$f\$, p_schema, p_rows);
    PERFORM setval(format('%I._trigger_log_id_seq', p_schema), p_rows);
END;
\$\$;
SELECT pg_temp.fill('big', $rows);
SELECT pg_temp.fill('small', 1000);
VACUUM ANALYZE big._trigger_log, big._trigger_log_archive, small._trigger_log, small._trigger_log_archive;
CREATE EXTENSION connect_guard;
SELECT connect_adopt_schema('big', 'big', 'local') > 0;
SELECT connect_adopt_schema('small', 'small', 'local') > 0;
SQL
sql -c "SELECT pg_size_pretty(pg_total_relation_size('big._trigger_log')) AS big_log, pg_size_pretty(pg_total_relation_size('big._trigger_log_archive')) AS big_archive" |
    sed 's/^/size of the big log and archive: /'

# one cycle's work for one log, as the worker does it (each call a transaction of its own)
for name in big small; do
    id=$(sql -c "SELECT connection_id FROM connect_guard.connection WHERE name = '$name'")
    as_run_user tee "$work/cycle_$name.sql" >/dev/null <<SQL
SELECT connect_guard.log_tick($id, '$name');
SELECT connect_guard.log_witness_marks($id);
SQL
done
cycle_ms() {   # prints the average latency of one cycle's work for log $1, in ms
    as_run_user pgbench -h "$work" -p "$port" -U postgres -n -c 1 -t "$calls" -f "$work/cycle_$1.sql" bench 2>/dev/null |
        sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p'
}

echo
echo "== one worker cycle's work per log (log tick, then head and processed mark), $calls cycles a round"
printf "%5s %12s %12s %8s\n" round "big ms" "small ms" ratio
ratios="" bigs=""
for r in $(seq 1 "$rounds"); do
    order=(big small); [ $((r % 2)) -eq 0 ] && order=(small big)
    declare -A ms=()
    for name in "${order[@]}"; do
        ms[$name]=$(cycle_ms "$name")
    done
    ratio=$(awk -v a="${ms[big]}" -v b="${ms[small]}" 'BEGIN { printf "%.3f", a / b }')
    ratios+="$ratio " bigs+="${ms[big]} "
    printf '%5s %12s %12s %8s\n' "$r" "${ms[big]}" "${ms[small]}" "$ratio"
done
echo
echo "median ms per cycle on the $rows-entry log (target < 5): $(median $bigs)"
echo "median ratio, $rows entries / 1000 entries (target near 1): $(median $ratios)"

echo
echo "== a read of connect_high_water_marks (on demand: it counts the backlog, 2050 entries here)"
as_run_user tee "$work/view.sql" >/dev/null <<'SQL'
SELECT * FROM connect_high_water_marks WHERE connection = 'big';
SQL
as_run_user pgbench -h "$work" -p "$port" -U postgres -n -c 1 -t 50 -f "$work/view.sql" bench 2>/dev/null |
    sed -n 's/^latency average = /latency average of one read: /p'
sql -c "SELECT 'big: head ' || log_head || ', processed mark ' || hwm_id || ', backlog ' || backlog || ', failed ' || failed || ', ids used ' || ids_used_pct || ' %' FROM connect_high_water_marks WHERE connection = 'big'"

echo
echo "== the plans of the per-cycle queries on the big log (no Seq Scan)"
plans=$(sql <<'SQL'
EXPLAIN (COSTS OFF) SELECT min(l.id) FROM big._trigger_log l WHERE l.state = 'NEW';
EXPLAIN (COSTS OFF) SELECT min(l.id) FROM big._trigger_log l WHERE l.state IS NULL;
EXPLAIN (COSTS OFF) SELECT l.state::text FROM big._trigger_log l WHERE l.state > 'NEW' ORDER BY l.state LIMIT 1;
EXPLAIN (COSTS OFF) SELECT count(*) FROM big._trigger_log WHERE state IN ('NEW', 'PENDING');
SQL
)
echo "$plans"
if grep -q "Seq Scan" <<<"$plans"; then echo "a per-cycle query scans the whole log"; exit 1; fi
