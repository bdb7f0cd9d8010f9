#!/usr/bin/env bash
# test/bench/ddl_watch/run.sh: what connect_guard's event triggers (the
# schema watch, 66_schema_watch.sql) cost on DDL.
#
# One database with 50 mapped tables; pgbench runs one DDL transaction after
# another, with the two event triggers enabled and disabled (ALTER EVENT
# TRIGGER ... DISABLE), in rounds whose order alternates:
#   temp_table      CREATE TEMP TABLE + DROP TABLE (an application's own DDL: the
#                   commonest kind, on no mapped table)
#   unmapped_alter  ALTER TABLE ... ALTER COLUMN SET DEFAULT / DROP DEFAULT of a table
#                   nobody maps
#   mapped_alter    ALTER TABLE ... ALTER COLUMN SET DEFAULT / DROP DEFAULT of a
#                   mapped table: the whole check of its mapping runs (nothing differs)
# Prints each round's tps and ratio (watched / not), the median ratio, and
# the cost per statement in µs.  Only ratios measured side by side mean
# anything on a shared machine.
#
#   bash test/bench/ddl_watch/run.sh    # BENCH_ROUNDS=5 BENCH_SECONDS=5
source "$(dirname "$0")/../../../scripts/lib.sh"

rounds=${BENCH_ROUNDS:-5}
seconds=${BENCH_SECONDS:-5}

install_packages
build_and_install

work=$(scratch_dir bench-ddl-watch)
trap 'cluster_stop "$work"; rm -rf "$work"' EXIT
port=$(free_port 5485)
cluster_init "$work" "$port" "synchronous_commit = off"
cluster_start "$work"

sql() { as_run_user psql -h "$work" -p "$port" -U postgres -qAtX -v ON_ERROR_STOP=1 -d bench "$@"; }

as_run_user createdb -h "$work" -p "$port" -U postgres bench
sql <<'SQL'
CREATE EXTENSION connect_guard;
SELECT connect_create_connection('sync');
SQL
# the tables, then their mappings (one statement each: the DDL fires the watch, mapped or not)
for i in $(seq 1 50); do
    sql -c "CREATE TABLE t$i (id int PRIMARY KEY, name text, note text)" \
        -c "SELECT connect_map_table('sync', 't$i')" >/dev/null
done
sql -c "CREATE TABLE unmapped (id int PRIMARY KEY, name text)"

scripts=$(as_run_user mktemp -d "$work/scripts.XXXXXX")
as_run_user tee "$scripts/temp_table.sql" >/dev/null <<'SQL'
BEGIN;
CREATE TEMP TABLE scratch (id int, v text);
DROP TABLE scratch;
COMMIT;
SQL
as_run_user tee "$scripts/unmapped_alter.sql" >/dev/null <<'SQL'
ALTER TABLE unmapped ALTER COLUMN name SET DEFAULT 'x';
ALTER TABLE unmapped ALTER COLUMN name DROP DEFAULT;
SQL
as_run_user tee "$scripts/mapped_alter.sql" >/dev/null <<'SQL'
ALTER TABLE t25 ALTER COLUMN note SET DEFAULT 'x';
ALTER TABLE t25 ALTER COLUMN note DROP DEFAULT;
SQL

watch() {   # watch on|off
    local what=ENABLE; [ "$1" = off ] && what=DISABLE
    sql -c "ALTER EVENT TRIGGER connect_guard_ddl_watch $what" -c "ALTER EVENT TRIGGER connect_guard_drop_watch $what"
    [ "$1" = on ] && sql -c "ALTER EVENT TRIGGER connect_guard_ddl_watch ENABLE ALWAYS" \
                         -c "ALTER EVENT TRIGGER connect_guard_drop_watch ENABLE ALWAYS"
    return 0
}

bench() {   # bench <script>: prints tps (one client: DDL takes exclusive locks)
    as_run_user pgbench -h "$work" -p "$port" -U postgres -n -c 1 -j 1 -T "$seconds" -f "$scripts/$1.sql" bench 2>/dev/null |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

printf '\n%-15s %5s %12s %12s %8s\n' workload round "tps watched" "tps not" ratio
declare -A ratios costs
for workload in temp_table unmapped_alter mapped_alter; do
    for r in $(seq 1 "$rounds"); do
        order=(on off); [ $((r % 2)) -eq 0 ] && order=(off on)
        declare -A tps=()
        for mode in "${order[@]}"; do
            watch "$mode"
            tps[$mode]=$(bench "$workload")
        done
        ratio=$(awk -v a="${tps[on]}" -v b="${tps[off]}" 'BEGIN { printf "%.4f", a / b }')
        # two DDL statements per transaction: the cost of one, in µs
        cost=$(awk -v a="${tps[on]}" -v b="${tps[off]}" 'BEGIN { printf "%.1f", (1 / a - 1 / b) * 1e6 / 2 }')
        ratios[$workload]+="$ratio "
        costs[$workload]+="$cost "
        printf '%-15s %5s %12.0f %12.0f %8s\n' "$workload" "$r" "${tps[on]}" "${tps[off]}" "$ratio"
    done
done
watch on
# the watch found nothing: every statement above left its table as its mapping expects
sql -c "SELECT 'schema changes recorded: ' || count(*) FROM connect_guard.schema_change"

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo
echo "median over $rounds rounds: ratio of tps with the event triggers to without; added cost per DDL statement"
for workload in temp_table unmapped_alter mapped_alter; do
    printf '  %-15s ratio %s   %s µs per statement\n' "$workload" "$(median ${ratios[$workload]})" "$(median ${costs[$workload]})"
done
