#!/usr/bin/env bash
# test/bench/fence/run.sh: what the write fence's checks cost.
#
# Timing cannot show a difference of 1 % on a shared machine, so the main
# measure is instructions: callgrind counts them in a single-user backend
# (postgres --single, no other process, nothing timed) running N statements,
# and the cost per statement is the difference between a run of N2 and one
# of N1 statements, divided by N2 - N1 (start-up and shut-down cancel out).
# Three set-ups, on the same data files:
#   plain      connect_guard not loaded at all
#   preloaded  in shared_preload_libraries, no fence up (every hook installed)
#   fenced     preloaded, a fence up on 10,000 other tables of the database
# and four workloads on an unfenced table of 100,000 rows: a primary-key
# SELECT, UPDATE and INSERT as top-level statements, and the UPDATE run
# from a PL/pgSQL loop (cached plan: the executor start-up, where the check
# is, weighs most there).  It prints instructions per statement and the
# ratios plain/preloaded (target >= 0.99) and preloaded/fenced (target >= 0.98).
#
# BENCH_LOOP_STATEMENTS > 0 adds a timed check: one backend of a running
# server loops over that many UPDATEs in PL/pgSQL (after a warm-up), with
# and without the library preloaded, alternated for BENCH_ROUNDS rounds;
# it times the loop, so it is only as good as the machine is quiet.
#
#   bash test/bench/fence/run.sh   # BENCH_N1=1000 BENCH_N2=6000 BENCH_LOOP_STATEMENTS=0 BENCH_ROUNDS=3
source "$(dirname "$0")/../lib.sh"

n1=${BENCH_N1:-1000}
n2=${BENCH_N2:-6000}
loop_statements=${BENCH_LOOP_STATEMENTS:-0}
rounds=${BENCH_ROUNDS:-3}
fenced_tables=10000

install_packages
install_packages valgrind
build_and_install

bench_scratch fence   # (the runs leave no server behind)
log "preparing: a table of 100,000 rows and $fenced_tables tables to fence"
bench_cluster 5480 "fsync = on" "synchronous_commit = off" "connect_guard.naptime = '1h'"
data="$work/data"
fence_file="$data/connect_guard.fences"
sql -c "CREATE EXTENSION connect_guard" \
    -c "CREATE TABLE acct (aid int PRIMARY KEY, abalance int NOT NULL DEFAULT 0, filler text)" \
    -c "INSERT INTO acct SELECT g, 0, repeat('x', 80) FROM generate_series(1, 100000) g" \
    -c "CREATE TABLE ins (id bigserial PRIMARY KEY, v int)" \
    -c "VACUUM ANALYZE"
sql -c "DO \$\$ BEGIN FOR i IN 1..$fenced_tables LOOP
                 EXECUTE format('CREATE TABLE fenced_%s (id int PRIMARY KEY)', i);
                 IF i % 500 = 0 THEN COMMIT; END IF;   -- max_locks_per_transaction
             END LOOP; END \$\$"
# the fence of a maintenance window over 10,000 tables (fence_raise is what
# connect_fence('mapped') calls once it knows the mapped tables)
sql -c "SELECT connect_guard.fence_raise('mapped', NULL, NULL, 'benchmark',
                 array_agg(oid), array_agg('bench'::text))
               FROM pg_class WHERE relname LIKE 'fenced\\_%' AND relkind = 'r'" >/dev/null
[ "$(sql -c "SELECT tables FROM connect_fences")" = "$fenced_tables" ] || die "the fence does not cover $fenced_tables tables"
[ "$(sql -c "SELECT count(*) FROM connect_guard.fence_relations() r JOIN pg_class c ON c.oid = r.relid WHERE c.relname = 'acct'")" = 0 ] ||
    die "acct must not be fenced"
cluster_stop "$work"
as_run_user cp "$fence_file" "$work/fences.10000"
as_run_user rm -f "$fence_file"
as_run_user cp -a "$data" "$work/pristine"

# workload NAME N: N statements of the workload, one per line, for postgres --single
workload() {
    local name=$1 n=$2
    case $name in
        select) awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "SELECT abalance FROM acct WHERE aid = %d;\n", i % 100000 + 1 }' ;;
        update) awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "UPDATE acct SET abalance = abalance + 1 WHERE aid = %d;\n", i % 100000 + 1 }' ;;
        insert) awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "INSERT INTO ins (v) VALUES (%d);\n", i }' ;;
        plpgsql) echo "DO \$\$ BEGIN FOR i IN 1..$n LOOP UPDATE acct SET abalance = abalance + 1 WHERE aid = i % 100000 + 1; END LOOP; END \$\$;" ;;
    esac
}

# setup NAME: a data directory as it was prepared (every run starts from
# the same files: a workload's row versions and index entries would
# otherwise make the next run's statements cost more), in that set-up;
# prints the extra options
setup() {
    as_run_user rm -rf "$data"
    as_run_user cp -a "$work/pristine" "$data"
    case $1 in
        plain) echo "-c shared_preload_libraries=" ;;
        preloaded) echo "-c shared_preload_libraries=connect_guard" ;;
        fenced) as_run_user cp "$work/fences.10000" "$fence_file"
                echo "-c shared_preload_libraries=connect_guard" ;;
    esac
}

# instructions SETUP WORKLOAD N: instructions callgrind counts for N statements
instructions() {
    local opts script="$work/script.sql" out="$work/callgrind.out"
    opts=$(setup "$1")
    workload "$2" "$3" | as_run_user tee "$script" >/dev/null
    # shellcheck disable=SC2086
    as_run_user valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$PG_BIN/postgres" --single -D "$data" $opts bench <"$script" >/dev/null 2>"$work/valgrind.err" ||
        die "postgres --single under valgrind failed: $(tail -5 "$work/valgrind.err")"
    grep -q "ERROR:" "$work/valgrind.err" && die "a statement failed: $(grep -m1 ERROR "$work/valgrind.err")"
    sed -n 's/^summary: \([0-9]*\)$/\1/p' "$out"
}

log "counting instructions (callgrind, postgres --single, $n1 and $n2 statements per run)"
# Two passes, the second in the reverse order, averaged.
printf '\n%-9s %-10s %14s\n' workload setup "instr/stmt"
declare -A per count
for w in select update insert plpgsql; do
    m=1; [ "$w" = plpgsql ] && m=10     # a loop's statements are cheap: more of them
    declare -A sum=()
    for s in plain preloaded fenced fenced preloaded plain; do
        a=$(instructions "$s" "$w" $((n1 * m)))
        b=$(instructions "$s" "$w" $((n2 * m)))
        sum[$s]=$(awk -v t="${sum[$s]:-0}" -v a="$a" -v b="$b" -v d=$(((n2 - n1) * m)) 'BEGIN { printf "%.3f", t + (b - a) / d }')
    done
    for s in plain preloaded fenced; do
        per[$w.$s]=$(awk -v t="${sum[$s]}" 'BEGIN { printf "%.1f", t / 2 }')
        printf '%-9s %-10s %14s\n' "$w" "$s" "${per[$w.$s]}"
    done
done

echo
echo "ratios (statements per instruction; targets: >= 0.99 and >= 0.98):"
printf '%-9s %24s %26s\n' workload "plain / preloaded" "preloaded / fenced 10,000"
for w in select update insert plpgsql; do
    printf '%-9s %24s %26s\n' "$w" \
        "$(awk -v a="${per[$w.plain]}" -v b="${per[$w.preloaded]}" 'BEGIN { printf "%.4f", a / b }')" \
        "$(awk -v a="${per[$w.preloaded]}" -v b="${per[$w.fenced]}" 'BEGIN { printf "%.4f", a / b }')"
done

if [ "$loop_statements" -gt 0 ]; then
    log "timing $loop_statements UPDATEs in one backend, $rounds rounds, order alternating"
    setup preloaded >/dev/null
    conf="$data/postgresql.conf"
    preload() {   # restart with (on) or without (off) the library
        cluster_stop "$work"
        if [ "$1" = on ]; then
            as_run_user sed -i "s/^#*shared_preload_libraries.*/shared_preload_libraries = 'connect_guard'/" "$conf"
        else
            as_run_user sed -i "s/^shared_preload_libraries.*/#shared_preload_libraries = ''/" "$conf"
        fi
        cluster_start "$work"
    }
    printf '\n%5s %12s %12s %8s\n' round "s preloaded" "s plain" ratio
    for r in $(seq 1 "$rounds"); do
        order=(on off); [ $((r % 2)) -eq 0 ] && order=(off on)
        declare -A secs=()
        for mode in "${order[@]}"; do
            preload "$mode"
            secs[$mode]=$(sql -c "DO \$\$ BEGIN FOR i IN 1..20000 LOOP UPDATE acct SET abalance = abalance + 1 WHERE aid = i % 100000 + 1; END LOOP; END \$\$" \
                -c "SELECT extract(epoch FROM clock_timestamp())" \
                -c "DO \$\$ BEGIN FOR i IN 1..$loop_statements LOOP UPDATE acct SET abalance = abalance + 1 WHERE aid = i % 100000 + 1; END LOOP; END \$\$" \
                -c "SELECT extract(epoch FROM clock_timestamp())" | awk 'NR == 1 { a = $1 } NR == 2 { printf "%.3f", $1 - a }')
        done
        printf '%5s %12s %12s %8s\n' "$r" "${secs[on]}" "${secs[off]}" \
            "$(awk -v a="${secs[on]}" -v b="${secs[off]}" 'BEGIN { printf "%.4f", b / a }')"
    done
fi
