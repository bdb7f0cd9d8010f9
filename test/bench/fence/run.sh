#!/usr/bin/env bash
# test/bench/fence/run.sh: what the write fence costs when no fence is up.
#
# One cluster, restarted between runs with and without connect_guard in
# shared_preload_libraries (same data files, same caches), pgbench
# select-only and tpcb-like, interleaved in rounds whose order alternates.
# Prints each round's ratio (preloaded / not) and the median: the target is
# at least 0.99.  The machine is noisy, so only ratios measured side by side
# mean anything; the absolute tps do not.
#
#   bash test/bench/fence/run.sh   # BENCH_ROUNDS=5 BENCH_SECONDS=10 BENCH_CLIENTS=2
#                                  # BENCH_WORKLOADS="select-only tpcb-like"
source "$(dirname "$0")/../../../scripts/lib.sh"

rounds=${BENCH_ROUNDS:-5}
seconds=${BENCH_SECONDS:-10}
clients=${BENCH_CLIENTS:-2}

install_packages
build_and_install

work=$(scratch_dir bench-fence)
trap 'cluster_stop "$work"; rm -rf "$work"' EXIT
port=$(free_port 5480)
cluster_init "$work" "$port" "fsync = on" "synchronous_commit = off" "shared_buffers = 256MB"
conf="$work/data/postgresql.conf"

# preload on|off: restart the cluster with or without the extension
preload() {
    cluster_stop "$work"
    if [ "$1" = on ]; then
        as_run_user sed -i "s/^#*shared_preload_libraries.*/shared_preload_libraries = 'connect_guard'/" "$conf"
    else
        as_run_user sed -i "s/^shared_preload_libraries.*/#shared_preload_libraries = ''/" "$conf"
    fi
    cluster_start "$work"
}

bench() {   # bench <pgbench args...>: prints tps
    as_run_user pgbench -h "$work" -p "$port" -U postgres -n -c "$clients" -j "$clients" "$@" bench 2>/dev/null |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

preload on
as_run_user createdb -h "$work" -p "$port" -U postgres bench
as_run_user psql -h "$work" -p "$port" -U postgres -qX -d bench -c "CREATE EXTENSION connect_guard"
as_run_user pgbench -h "$work" -p "$port" -U postgres -i -q -s 10 bench >/dev/null 2>&1

printf '\n%-12s %5s %12s %12s %8s\n' workload round "tps preload" "tps plain" ratio
declare -A ratios
for workload in ${BENCH_WORKLOADS:-select-only tpcb-like}; do
    args=(-T "$seconds"); [ "$workload" = select-only ] && args+=(-S)
    for r in $(seq 1 "$rounds"); do
        order=(on off); [ $((r % 2)) -eq 0 ] && order=(off on)
        declare -A tps=()
        for mode in "${order[@]}"; do
            preload "$mode"
            bench -T 2 "${args[@]:2}" >/dev/null      # warm up after the restart
            tps[$mode]=$(bench "${args[@]}")
        done
        ratio=$(awk -v a="${tps[on]}" -v b="${tps[off]}" 'BEGIN { printf "%.4f", a / b }')
        ratios[$workload]+="$ratio "
        printf '%-12s %5s %12.0f %12.0f %8s\n' "$workload" "$r" "${tps[on]}" "${tps[off]}" "$ratio"
    done
done

echo
echo "median ratio, preloaded with no fence up / not preloaded (target >= 0.99):"
for workload in ${BENCH_WORKLOADS:-select-only tpcb-like}; do
    median=$(printf '%s\n' ${ratios[$workload]} | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
    printf '  %-12s %s\n' "$workload" "$median"
done
