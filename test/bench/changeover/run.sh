#!/usr/bin/env bash
# test/bench/changeover/run.sh: the write-blocked window of a follower
# changeover under pgbench load, from the fence going up on the old primary
# to the first write accepted on the new one, and how much of it is the
# follower's catch-up.  Each round builds a fresh primary and a streaming
# follower (caught up when the plan begins), runs pgbench on the primary,
# and changes over with connect_prepare_upgrade('follower').
#
#   bash test/bench/changeover/run.sh    # BENCH_ROUNDS=3 BENCH_CLIENTS=4
# Target: under 2 seconds on this machine.
source "$(dirname "$0")/../../../scripts/lib.sh"

rounds=${BENCH_ROUNDS:-3}
clients=${BENCH_CLIENTS:-4}

install_packages
build_and_install

work=$(scratch_dir bench-changeover)
trap 'for c in "$work"/r*/primary "$work"/r*/follower; do cluster_stop "$c" immediate; done; rm -rf "$work"' EXIT

round() {   # round N: prints "window_ms catch_up_ms fence_to_ready_ms promote_to_write_ms"
    local dir=$work/r$1 p_port f_port primary follower plan
    as_run_user mkdir -p "$dir/primary" "$dir/follower"
    p_port=$(free_port 5500); f_port=$(free_port $((p_port + 1)))
    primary="host=$dir/primary port=$p_port dbname=postgres user=postgres"
    follower="host=$dir/follower port=$f_port dbname=postgres user=postgres"
    cluster_init "$dir/primary" "$p_port" "connect_guard.naptime = '200ms'" "synchronous_commit = off"
    cluster_start "$dir/primary"
    as_run_user psql "$primary" -qX -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE EXTENSION connect_guard;
CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
INSERT INTO account SELECT g FROM generate_series(1, 1000) g;
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'account');
SQL
    as_run_user pg_basebackup -h "$dir/primary" -p "$p_port" -U postgres -D "$dir/follower/data" -R -X stream -c fast
    as_run_user sed -i "s/^port = .*/port = $f_port/; s|^unix_socket_directories = .*|unix_socket_directories = '$dir/follower'|" \
        "$dir/follower/data/postgresql.conf"
    cluster_start "$dir/follower"
    echo '\set id random(1, 1000)
UPDATE account SET balance = balance + 1 WHERE id = :id;' | as_run_user tee "$dir/update.sql" >/dev/null
    as_run_user pgbench -n -c "$clients" -j 2 -T 30 --max-tries 1 -f "$dir/update.sql" "$primary" >/dev/null 2>&1 &
    local bench=$!
    sleep 3
    plan=$(as_run_user psql "$primary" -qXAt -c "SELECT connect_prepare_upgrade('follower', follower => '$follower', max_lag_bytes => 64 * 1024 * 1024)")
    as_run_user psql "$primary" -qXAt -c "SELECT connect_wait_upgrade($plan, 'ready', '2 min')" >/dev/null
    ( until as_run_user psql "$follower" -qXAt -c "UPDATE account SET balance = balance + 1 WHERE id = 1 RETURNING clock_timestamp()" \
            >"$dir/first_write" 2>/dev/null; do sleep 0.005; done ) &
    local writer=$!
    as_run_user psql "$primary" -qXAt -c "SELECT connect_promote_follower($plan)" >/dev/null
    wait "$writer"
    kill "$bench" 2>/dev/null || true; wait "$bench" 2>/dev/null || true
    as_run_user psql "$follower" -qXAt -F ' ' -c "
        SELECT round(extract(epoch FROM '$(cat "$dir/first_write")'::timestamptz - f.finished_at) * 1000),
               round(extract(epoch FROM c.finished_at - c.started_at) * 1000),
               round(extract(epoch FROM c.finished_at - f.finished_at) * 1000),
               round(extract(epoch FROM '$(cat "$dir/first_write")'::timestamptz - c.finished_at) * 1000)
          FROM connect_guard.upgrade_step f, connect_guard.upgrade_step c
         WHERE f.plan_id = $plan AND f.step = 'fencing' AND c.plan_id = $plan AND c.step = 'catching_up'"
    cluster_stop "$dir/primary" immediate; cluster_stop "$dir/follower" immediate
}

printf '\n%5s %12s %12s %16s %20s\n' round window_ms catch_up_ms fence_to_ready_ms promote_to_write_ms
windows=()
for r in $(seq 1 "$rounds"); do
    round "$r" >"$work/round$r.out"
    read -r window catch fence_ready promote_write <"$work/round$r.out"
    windows+=("$window")
    printf '%5s %12s %12s %16s %20s\n' "$r" "$window" "$catch" "$fence_ready" "$promote_write"
done
median=$(printf '%s\n' "${windows[@]}" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
echo
echo "write-blocked window, median of $rounds: $median ms (target < 2000 ms)"
