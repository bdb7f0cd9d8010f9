#!/usr/bin/env bash
# test/bench/changeover/run.sh: the write-blocked window of a follower
# changeover under pgbench load, from the fence going up on the old primary
# to the first write accepted on the new one, and its parts.  Each round
# builds a fresh primary and a streaming follower (caught up when the plan
# begins), runs pgbench on the primary, and changes over as the README's
# runbook does: connect_prepare_upgrade('follower'), connect_wait_upgrade(
# plan, 'ready'), connect_promote_follower(plan), in one session.  A writer
# connected to the follower retries its UPDATE every 2 ms once the follower
# is fenced, each in a transaction of its own, until one is accepted.
#
# Rounds alternate connect_guard.naptime = 1 s and 10 s in one run: the
# steps are woken by what they wait for (the follower's replay, the
# promotion), so the window must not depend on the naptime.
#
#   bash test/bench/changeover/run.sh    # BENCH_ROUNDS=5 (per naptime) BENCH_CLIENTS=4
# Target: median under 150 ms (aim 50 ms) at either naptime.
#
# The parts of each round, in ms, end to end:
#   pause      the pausing step (before the fence: writes still accepted)
#   fence      the fence up on the old primary (its since) until both fences
#              are up (writers in flight waited for, the follower fenced)
#   catch_up   until the follower has replayed past the fence (ready)
#   handoff    until the runbook's connect_promote_follower() begins
#   promote    until the follower is out of recovery and its worker begins
#              to complete the plan (the completing step)
#   complete   until the writer's next try is accepted: the worker has
#              checked the fork point, the log and the marks, and lowered
#              the new primary's fence
#   window     fence .. first write, the sum of the parts after pause
source "$(dirname "$0")/../lib.sh"

rounds=${BENCH_ROUNDS:-5}
clients=${BENCH_CLIENTS:-4}

install_packages
build_and_install

work=$(scratch_dir bench-changeover)
trap 'for c in "$work"/r*/primary "$work"/r*/follower; do cluster_stop "$c" immediate; done; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
psql_at() { local conninfo=$1; shift; as_run_user psql "$conninfo" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

round() {   # round NAME NAPTIME: prints the parts, in ms, as the header says
    local dir=$work/r$1 naptime=$2 p_port f_port primary follower plan
    as_run_user mkdir -p "$dir/primary" "$dir/follower"
    p_port=$(free_port 5500); f_port=$(free_port $((p_port + 1)))
    primary="host=$dir/primary port=$p_port dbname=postgres user=postgres"
    follower="host=$dir/follower port=$f_port dbname=postgres user=postgres"
    cluster_init "$dir/primary" "$p_port" "connect_guard.naptime = '$naptime'" "synchronous_commit = off" \
        "log_line_prefix = '%m [%p] '" "log_timezone = 'UTC'"
    cluster_start "$dir/primary"
    bench_accounts "$primary"
    cluster_follower "$dir/primary" "$p_port" "$dir/follower" "$f_port"
    cluster_start "$dir/follower"
    bench_update_script "$dir/update.sql"
    as_run_user pgbench -n -c "$clients" -j 2 -T 30 --max-tries 1 -f "$dir/update.sql" "$primary" >/dev/null 2>&1 &
    local bench=$!
    as_run_user /usr/bin/python3 "$work/writer.py" "$follower" >"$dir/first_write" 2>"$dir/first_write.err" &
    local writer=$!
    sleep 3
    plan=$(psql_at "$primary" -c "SELECT connect_prepare_upgrade('follower', follower => '$follower', max_lag_bytes => 64 * 1024 * 1024)")
    # the runbook: wait for ready, promote (one session, as a DBA would)
    psql_at "$primary" -F ' ' >"$dir/runbook" <<SQL
SELECT connect_wait_upgrade($plan, 'ready', '2 min');
SELECT clock_timestamp();
SELECT connect_promote_follower($plan);
SQL
    wait "$writer"
    kill "$bench" 2>/dev/null || true; wait "$bench" 2>/dev/null || true
    local promote_at first_write fence_at
    promote_at=$(sed -n 2p "$dir/runbook")
    first_write=$(cat "$dir/first_write")
    fence_at=$(psql_at "$primary" -c "SELECT f.since FROM connect_guard.fence_list() f
                                        JOIN connect_guard.upgrade_plan p ON p.fence_id = f.fence_id WHERE p.plan_id = $plan")
    # the old primary's timeline, then the new primary's, as "step started_at" lines
    psql_at "$primary" -F '|' -c "SELECT step, started_at FROM connect_guard.upgrade_step WHERE plan_id = $plan" >"$dir/steps"
    psql_at "$follower" -F '|' -c "SELECT step || '@new', started_at FROM connect_guard.upgrade_step WHERE plan_id = $plan" >>"$dir/steps"
    psql_at "$follower" -F ' ' >"$dir/parts" <<SQL
CREATE TEMP TABLE step (step text, at timestamptz);
COPY step FROM '$dir/steps' (DELIMITER '|');
WITH t(name, at) AS (
    SELECT name, at FROM (VALUES ('pausing', (SELECT min(at) FROM step WHERE step = 'pausing')),
                                 ('fence', '$fence_at'::timestamptz),
                                 ('catching_up', (SELECT min(at) FROM step WHERE step = 'catching_up')),
                                 ('ready', (SELECT min(at) FROM step WHERE step = 'ready')),
                                 ('promote', '$promote_at'::timestamptz),
                                 ('completing', (SELECT min(at) FROM step WHERE step = 'completing@new')),
                                 ('write', '$first_write'::timestamptz)) v(name, at))
SELECT string_agg(coalesce(round(extract(epoch FROM b.at - a.at) * 1000)::text, '?'), ' ' ORDER BY o)
  FROM (VALUES (1, 'pausing', 'fence'), (2, 'fence', 'catching_up'), (3, 'catching_up', 'ready'),
               (4, 'ready', 'promote'), (5, 'promote', 'completing'), (6, 'completing', 'write'),
               (7, 'fence', 'write')) p(o, a_name, b_name)
  JOIN t a ON a.name = p.a_name JOIN t b ON b.name = p.b_name;
SQL
    cat "$dir/parts"
    cluster_stop "$dir/primary" immediate; cluster_stop "$dir/follower" immediate
}

# the application's writer on the follower: from the moment the follower is
# fenced (before that, a look every 20 ms), one try every 2 ms, each in a
# transaction of its own (one begun in recovery stays read-only), holding no
# snapshot between tries (a standby's replay would wait for it); its refused
# tries are not logged (a log line each would load the server)
cat >"$work/writer.py" <<'PY'
import sys, time, psycopg2
conn = psycopg2.connect(sys.argv[1])
conn.autocommit = True
cur = conn.cursor()
cur.execute("SET log_min_messages = fatal")
while True:
    cur.execute("SELECT count(*) FROM connect_guard.fence_list()")
    if cur.fetchone()[0] > 0:
        break
    time.sleep(0.02)
while True:
    try:
        cur.execute("UPDATE account SET balance = balance + 1 WHERE id = 1 RETURNING clock_timestamp()")
        print(cur.fetchone()[0])
        break
    except psycopg2.Error:
        time.sleep(0.002)     # read-only (in recovery), or fenced
PY

columns='%5s %8s %7s %7s %9s %8s %8s %9s %8s\n'
printf "\n$columns" round naptime pause fence catch_up handoff promote complete window
declare -A windows
for r in $(seq 1 "$rounds"); do
    for naptime in 1s 10s; do
        round "$r-$naptime" "$naptime" >"$work/round.out"
        read -r pause fence catch handoff promote complete window <"$work/round.out"
        windows[$naptime]+="$window "
        windows[all]+="$window "
        printf "$columns" "$r" "$naptime" "$pause" "$fence" "$catch" "$handoff" "$promote" "$complete" "$window"
    done
done
echo
echo "write-blocked window (ms), median of $rounds rounds: $(median ${windows[1s]}) at naptime 1s, $(median ${windows[10s]}) at 10s;" \
     "$(median ${windows[all]}) over all $((2 * rounds)) (target < 150, aim 50)"
