# test/bench/lib.sh: what the benchmarks' run.sh share, on top of
# scripts/lib.sh (sourced here: packages, build, throwaway clusters).
# Sourced, not run:
#   source "$(dirname "$0")/../lib.sh"

source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

# bench_scratch NAME: $work, a scratch directory removed at exit (its
# cluster stopped first); KEEP=1 keeps it
bench_scratch() {
    work=$(scratch_dir "bench-$1")
    trap 'cluster_stop "$work"; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
}

# bench_cluster BASE_PORT [conf lines...]: the benchmark's cluster in $work,
# on $port (the first free one from BASE_PORT), started, with an empty
# database bench, which sql reaches
bench_cluster() {
    port=$(free_port "$1"); shift
    cluster_init "$work" "$port" "$@"
    cluster_start "$work"
    as_run_user createdb -h "$work" -p "$port" -U postgres bench
}

# sql [psql options...]: psql on the database bench, unaligned, stopping at the first error
sql() { as_run_user psql -h "$work" -p "$port" -U postgres -qXAt -v ON_ERROR_STOP=1 -d bench "$@"; }

# bench_accounts CONNINFO: connect_guard and the table the changeover
# benchmarks write to: account, 1000 rows, mapped by the connection sync
bench_accounts() {
    as_run_user psql "$1" -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE EXTENSION connect_guard;
CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
INSERT INTO account SELECT g FROM generate_series(1, 1000) g;
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'account');
SQL
}

# bench_update_script FILE: the pgbench script of those writers, one
# account's update a transaction
bench_update_script() {
    echo '\set id random(1, 1000)
UPDATE account SET balance = balance + 1 WHERE id = :id;' | as_run_user tee "$1" >/dev/null
}

# median NUMBERS...: their median (of an even count, the mean of the middle two)
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
