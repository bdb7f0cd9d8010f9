#!/usr/bin/env bash
# test/bench/witness/run.sh: what rollback detection costs.
#
# 1. The worker's step, measured in a session: one check against the
#    witness (read, compare, no write) and one witness write (flush, fsync,
#    durable rename), each averaged over many calls, and what they add up
#    to per second at the default naptime of 1 s.
# 2. Write throughput with the witness on and off: pgbench tpcb-like on a
#    mapped table with the worker cycling every 100 ms (ten times the
#    default pace), so that the log head moves and the witness is rewritten
#    on every cycle, the worst case.  Witness on and off alternate in
#    rounds on one cluster (a reload switches it); prints each round's
#    ratio and the median.  Target: at least 0.98.  Only ratios measured
#    side by side mean anything on these machines.
#
#   bash test/bench/witness/run.sh   # BENCH_ROUNDS=5 BENCH_SECONDS=10 BENCH_CLIENTS=2
source "$(dirname "$0")/../lib.sh"

rounds=${BENCH_ROUNDS:-5}
seconds=${BENCH_SECONDS:-10}
clients=${BENCH_CLIENTS:-2}

install_packages
build_and_install

bench_scratch witness
as_run_user mkdir "$work/witness"
bench_cluster 5490 "fsync = on" "shared_buffers = 256MB" "connect_guard.naptime = '100ms'" \
    "connect_guard.witness_directory = '$work/witness'"
as_run_user pgbench -h "$work" -p "$port" -U postgres -i -q -s 10 bench >/dev/null 2>&1
sql -c "CREATE EXTENSION connect_guard" -c "SELECT connect_create_connection('bench')" \
    -c "SELECT connect_map_table('bench', 'pgbench_accounts')" >/dev/null

echo "== the worker's step (average of 500 calls each)"
sql <<'SQL'
DO $$
DECLARE
    t0 timestamptz;
    check_ms double precision;
    write_ms double precision;
    state jsonb := connect_guard.database_state() || jsonb_build_object('lsn', '0/0');
    path text := connect_guard.witness_path();
BEGIN
    PERFORM connect_guard.rollback_check();            -- warm
    t0 := clock_timestamp();
    FOR i IN 1..500 LOOP
        PERFORM connect_guard.rollback_check();
    END LOOP;
    check_ms := extract(epoch FROM clock_timestamp() - t0) * 1000 / 500;
    t0 := clock_timestamp();
    FOR i IN 1..500 LOOP
        PERFORM connect_guard.witness_write(path || '.bench', state);
    END LOOP;
    write_ms := extract(epoch FROM clock_timestamp() - t0) * 1000 / 500;
    RAISE NOTICE 'check: % ms, write: % ms; at naptime 1 s, checking and writing every cycle takes % %% of the worker''s time',
        round(check_ms::numeric, 3), round(write_ms::numeric, 3), round(((check_ms + write_ms) / 10)::numeric, 3);
END
$$;
SQL

bench() {   # prints tps
    as_run_user pgbench -h "$work" -p "$port" -U postgres -n -c "$clients" -j "$clients" -T "$seconds" bench 2>/dev/null |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
witness() {   # witness on|off
    local dir="''"; [ "$1" = on ] && dir="'$work/witness'"
    sql -c "ALTER SYSTEM SET connect_guard.witness_directory = $dir" -c "SELECT pg_reload_conf()" >/dev/null
    sleep 0.5
}

echo
echo "== pgbench tpcb-like on a mapped table, worker every 100 ms"
printf "%5s %12s %12s %8s\n" round "tps witness" "tps none" ratio
ratios=""
for r in $(seq 1 "$rounds"); do
    order=(on off); [ $((r % 2)) -eq 0 ] && order=(off on)
    declare -A tps=()
    for mode in "${order[@]}"; do
        witness "$mode"
        tps[$mode]=$(bench)
    done
    ratio=$(awk -v a="${tps[on]}" -v b="${tps[off]}" 'BEGIN { printf "%.4f", a / b }')
    ratios+="$ratio "
    printf '%5s %12.0f %12.0f %8s\n' "$r" "${tps[on]}" "${tps[off]}" "$ratio"
done
echo
echo "median ratio, witness on / off (target >= 0.98): $(median $ratios)"
