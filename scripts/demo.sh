#!/usr/bin/env bash
# demo.sh: a Connect-aware follower changeover, end to end, on throwaway
# local clusters.
#   bash scripts/demo.sh
#
# Three clusters: the primary (the app's database), a streaming follower,
# and a "Salesforce" cluster where the Connect simulator mirrors every
# change it consumes.  pgbench writes to the primary while the simulator
# drains the trigger log; connect_prepare_upgrade('follower') pauses,
# fences, waits for the follower to replay past the fence; the follower is
# promoted and its own worker lifts its fence and resumes; the simulator
# carries on from the new primary.  At the end: the plan's timeline, the
# write-blocked window, and the check that the mirror equals the tables.
#   bash scripts/demo.sh --adopted
# is the second act: the same on a schema Heroku Connect already manages
# (scripts/demo_adopted.sh).
if [ "${1:-}" = --adopted ]; then exec bash "$(dirname "$0")/demo_adopted.sh"; fi
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/demo_lib.sh"

install_packages
build_and_install

demo_clusters demo 5470

log "1. a primary with the extension, a streaming follower, and the simulator's mirror"
# the follower inherits the settings, and with them the rollback witness's
# directory: after the promotion it compares itself with what the primary saw
as_run_user mkdir "$work/witness"
cluster_init "$work/primary" "$p_port" "connect_guard.naptime = '200ms'" "synchronous_commit = off" \
    "connect_guard.witness_directory = '$work/witness'"
cluster_start "$work/primary"
as_run_user createdb -h "$work/primary" -p "$p_port" -U postgres app
psql_at "$primary" <<'SQL'
CREATE EXTENSION connect_guard;
CREATE TABLE contact (id serial PRIMARY KEY, sfid varchar(18), name text, balance numeric NOT NULL DEFAULT 0);
CREATE TABLE account (id int PRIMARY KEY, name text, updated_at timestamptz);
INSERT INTO account SELECT g, 'account ' || g, now() FROM generate_series(1, 200) g;
SELECT connect_create_connection('sync');
SELECT connect_map_table('sync', 'contact', 'Contact');
SELECT connect_map_table('sync', 'account', 'Account');
SQL
cluster_follower "$work/primary" "$p_port" "$work/follower" "$f_port"
cluster_start "$work/follower"
psql_at "$primary" -c "SELECT connect_add_follower('follower', '$follower')"

cluster_init "$work/salesforce" "$s_port"
cluster_start "$work/salesforce"
as_run_user createdb -h "$work/salesforce" -p "$s_port" -U postgres salesforce
# the mirror has the app's tables, without the extension (the simulator applies by key)
as_run_user pg_dump -h "$work/primary" -p "$p_port" -U postgres --schema-only -t contact -t account app |
    grep -v '_connect_guard' | psql_at "$mirror" >/dev/null
psql_at "$mirror" -c "TRUNCATE contact, account"
as_run_user pg_dump -h "$work/primary" -p "$p_port" -U postgres --data-only -t account app | psql_at "$mirror" >/dev/null
psql_at "$primary" -c "SELECT connection, table_name, object_name, state FROM connect_mappings ORDER BY 2"

# the simulator as Connect, consuming from the database it is given
start_consumer() { sim_start -- --consume --source "$1" --mirror "$mirror" --connection sync --poll-ms 50; }
start_consumer "$primary"

log "2. pgbench writes to the primary (4 clients) while the simulator consumes"
cat > "$work/writes.sql" <<'SQL'
\set id random(1, 200)
INSERT INTO contact (name, balance) VALUES ('c' || :id, :id);
UPDATE account SET updated_at = now(), name = 'account ' || :id || ' @' || random() WHERE id = :id;
SQL
chown "$RUN_USER" "$work/writes.sql" 2>/dev/null || true
as_run_user pgbench -n -c 4 -j 2 -T 8 --max-tries 1 -f "$work/writes.sql" "$primary" >"$work/pgbench_old.log" 2>&1 &
bench=$!
sleep 3
psql_at "$primary" -c "SELECT connection, hwm_id, log_head, backlog FROM connect_high_water_marks"
psql_at "$primary" -c "SELECT source, name, state, replay_lsn, lag_bytes, lag_seconds FROM connect_follower_lag"

log "3. the changeover: connect_prepare_upgrade('follower', ...) while pgbench keeps writing"
plan=$(psql_at "$primary" -At -c "SELECT connect_prepare_upgrade('follower', follower => '$follower', max_lag_bytes => 16 * 1024 * 1024, timeout => '1 min')")
echo "plan $plan prepared"
psql_at "$primary" -At -c "SELECT 'plan ' || $plan || ' is ' || connect_wait_upgrade($plan, 'ready', '2 min') || ': Connect paused, writes fenced, follower caught up'"
psql_at "$primary" -c "SELECT plan, method, status, step, follower, follower_lag_bytes, fence_lsn, log_head FROM connect_upgrade_status"

log "4. promote the follower (connect_promote_follower); its worker completes the plan"
# the app's first write on the new primary ends the write-blocked window
( until psql_at "$follower" -At -c "INSERT INTO contact (name) VALUES ('first write after the changeover') RETURNING clock_timestamp()" \
        >"$work/first_write" 2>/dev/null; do sleep 0.01; done ) &
writer=$!
psql_at "$primary" -At -c "SELECT connect_promote_follower($plan)"
wait "$writer"
psql_at "$follower" -At -c "SELECT 'new primary: plan ' || $plan || ' ' || connect_wait_upgrade($plan, 'completed', '1 min')"
wait "$bench" || true
grep -E "number of transactions actually processed|number of failed" "$work/pgbench_old.log" || true

log "5. the simulator moves to the new primary (as Connect follows DATABASE_URL) and catches up"
sim_stop
start_consumer "$follower"
as_run_user pgbench -n -c 4 -j 2 -T 3 -f "$work/writes.sql" "$follower" 2>&1 | grep -E "number of transactions actually processed"
sim_stop
as_run_user /usr/bin/python3 "$CG_ROOT/test/simulator/connect_sim.py" --drain \
    --source "$follower" --mirror "$mirror" --connection sync 2>>"$work/simulator.log" >/dev/null ||
    { tail -n 20 "$work/simulator.log"; die "the simulator could not drain the new primary"; }

log "6. what happened"
echo "the plan's timeline (on the new primary; the rows came with the WAL):"
psql_at "$follower" -c "SELECT step, to_char(started_at, 'HH24:MI:SS.MS') AS started, round(extract(epoch FROM duration) * 1000) AS ms FROM connect_upgrade_timeline($plan)"
first_write=$(cat "$work/first_write")
psql_at "$follower" -c "SELECT round(extract(epoch FROM '$first_write'::timestamptz - s.finished_at) * 1000) AS write_blocked_ms,
                               round(extract(epoch FROM p.finished_at - s.finished_at) * 1000) AS fence_up_to_plan_completed_ms
                          FROM connect_guard.upgrade_step s JOIN connect_guard.upgrade_plan p USING (plan_id)
                         WHERE s.plan_id = $plan AND s.step = 'fencing'"
echo "the old primary stays fenced:"
psql_at "$primary" -c "SELECT plan, status, step FROM connect_upgrade_status" \
                   -c "SELECT scope, reason FROM connect_fences"
psql_at "$primary" -c "INSERT INTO contact (name) VALUES ('stray write')" 2>&1 | head -1 || true
echo "the new primary against the rollback witness the old one kept (a promotion past the fence, not a rollback):"
psql_at "$follower" -c "SELECT kind, detail ->> 'detail' AS detail FROM connect_guard.event WHERE kind LIKE 'witness%' OR kind LIKE 'rollback%' ORDER BY event_id" \
                    -c "SELECT finding, rollback FROM connect_check_rollback()"
echo "counting on the new primary:"
psql_at "$follower" -c "WITH log AS (SELECT id FROM connect_guard.trigger_log UNION ALL SELECT id FROM connect_guard.trigger_log_archive)
                        SELECT (SELECT count(*) FROM log) AS captured, connection, hwm_id, log_head, backlog
                          FROM connect_high_water_marks"
echo "the simulator's mirror against the tables:"
as_run_user /usr/bin/python3 "$CG_ROOT/test/simulator/connect_sim.py" --verify \
    --source "$follower" --mirror "$mirror" --connection sync 2>>"$work/simulator.log"
