#!/usr/bin/env bash
# demo_adopted.sh: the demo's second act (bash scripts/demo.sh --adopted):
# connect_guard on a schema Heroku Connect already manages.
#
# Three clusters again: the primary, a follower, and "Salesforce" (the
# simulator's mirror).  The primary holds a Connect-managed schema
# (test/fixtures/connect_schema.sql) on which the simulator plays Connect
# itself: it drains salesforce._trigger_log, as Connect does, logged in as
# the role that owns the schema.  connect_guard adopts the schema (adding
# nothing to it), reads Connect's processed mark, backlog and write
# errors, pauses Connect through its API with the tables fenced, and runs
# the follower changeover of the first act under pgbench load.  At the
# end: every entry Connect had not sent at the fence was sent once from
# the new primary, none twice; the mirror equals the tables; and pg_dump
# shows Connect's schema as it was before the adoption.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/demo_lib.sh"

install_packages
build_and_install

demo_clusters demo-adopted 5480
sim_post() {   # sim_post PATH JSON: a control request to the simulator
    /usr/bin/python3 -c 'import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(),
                       headers={"Content-Type": "application/json"}), timeout=10).read()' \
        "http://127.0.0.1:$sim_port$1" "$2"
}

log "1. a primary whose schema salesforce Heroku Connect manages, a follower, and Salesforce"
as_run_user mkdir "$work/witness"
# the simulator stands in for Connect on plain http at 127.0.0.1, which only
# this setting lets a request carrying the token use
cluster_init "$work/primary" "$p_port" "connect_guard.naptime = '200ms'" \
    "connect_guard.witness_directory = '$work/witness'" "connect_guard.http_allow_insecure_loopback = on"
cluster_start "$work/primary"
as_run_user createdb -h "$work/primary" -p "$p_port" -U postgres app
# Connect created the schema (its role connect_sync owns it); the application writes with a role of its own (app)
psql_at "$primary" -f "$CG_ROOT/test/fixtures/connect_schema.sql" \
    -f "$CG_ROOT/test/fixtures/connect_schema_owners.sql" >/dev/null
as_run_user pg_dump -h "$work/primary" -p "$p_port" -U postgres --schema-only -n salesforce app |
    grep -v '^\\\(un\)\?restrict ' > "$work/schema_before.sql"
cluster_follower "$work/primary" "$p_port" "$work/follower" "$f_port"
cluster_start "$work/follower"
cluster_init "$work/salesforce" "$s_port"
cluster_start "$work/salesforce"
as_run_user createdb -h "$work/salesforce" -p "$s_port" -U postgres salesforce

token="demo-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
as_run_user sh -c "umask 077; echo '$token' > '$work/connect.token'"
conn_id=6a1b0f3e-0000-4000-8000-00000000de02
as_run_user tee "$work/connect.json" >/dev/null <<JSON
{"connections": [{"id": "$conn_id", "name": "hc", "schema_name": "salesforce",
  "mappings": [{"id": "map-account", "object_name": "Account"}, {"id": "map-contact", "object_name": "Contact"}]}]}
JSON
# the simulator as Connect on the database it is given, logged in as the schema's owner
# (and listening: its LISTENING line is one more in the log than before it started)
start_connect() {
    local listened
    listened=$(grep -c '^LISTENING' "$work/simulator.log" 2>/dev/null || true)
    sim_start CONNECT_SIM_TOKEN="$token" -- --port "$sim_port" --config "$work/connect.json" --consume \
        --connect-log salesforce --source "$1 user=connect_sync" --mirror "$mirror" --connection hc \
        --poll-ms 50 --archive-after 5 --reload-delay 0.5 --reload-seconds 2
    until [ "$(grep -c '^LISTENING' "$work/simulator.log" || true)" -gt "${listened:-0}" ]; do sleep 0.05; done
}
start_connect "$primary"

cat > "$work/writes.sql" <<'SQL'
INSERT INTO salesforce.account (name) VALUES ('a' || (random() * 1000)::int);
INSERT INTO salesforce.contact (name) VALUES ('c' || (random() * 1000)::int);
SQL
chown "$RUN_USER" "$work/writes.sql" 2>/dev/null || true
as_run_user pgbench -n -c 2 -T 2 -f "$work/writes.sql" "$primary user=app" >/dev/null 2>&1
echo "Connect runs on its own log already:"
psql_at "$primary" -c "SELECT state, count(*) FROM (SELECT state FROM salesforce._trigger_log UNION ALL
                                                      SELECT state FROM salesforce._trigger_log_archive) l GROUP BY 1 ORDER BY 1"

log "2. adopt the schema: connect_guard reads Connect's log and adds nothing to it"
psql_at "$primary" -c "CREATE EXTENSION connect_guard" \
    -c "SELECT connect_adopt_schema('hc', 'salesforce', 'heroku', jsonb_build_object(
            'region_url', 'http://127.0.0.1:$sim_port', 'connection_id', '$conn_id', 'token_file', '$work/connect.token'))"
until [ "$(psql_at "$primary" -At -c "SELECT count(*) FROM connect_mappings WHERE remote_id IS NOT NULL")" = 2 ]; do sleep 0.1; done
psql_at "$primary" -c "SELECT connection, table_name, object_name, remote_id FROM connect_mappings ORDER BY 2" \
    -c "SELECT count(*) AS triggers_of_connect_guard FROM pg_trigger WHERE tgname LIKE '\_connect\_guard%'"
sleep 1
psql_at "$primary" -c "SELECT connection, log_table, hwm_id AS processed_mark, log_head, backlog, failed, ids_used_pct FROM connect_high_water_marks"

log "3. pause Connect through its API: the tables are fenced until it resumes"
psql_at "$primary" -At -c "SELECT connect_pause('hc', reason => 'demo')" -c "SELECT connect_wait_state('hc', 'PAUSED', '30 s')"
psql_at "$primary" -c "SELECT connection, state, paused_because, fenced, fenced_because FROM connect_status"
psql_at "$primary user=app" -c "INSERT INTO salesforce.account (name) VALUES ('while paused')" 2>&1 | head -1 || true
psql_at "$primary" -At -c "SELECT connect_resume('hc')" -c "SELECT connect_wait_state('hc', 'IDLE', '30 s')"

log "4. a write Salesforce refuses: connect_write_errors keeps it (Connect's CLI shows 24 hours)"
sim_post /_sim/connect_log/fail '{"count": 1, "table": "contact", "message": "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]"}'
psql_at "$primary user=app" -c "INSERT INTO salesforce.contact (name) VALUES ('no last name')"
until [ "$(psql_at "$primary" -At -c "SELECT count(*) FROM connect_write_errors")" = 1 ]; do sleep 0.1; done
psql_at "$primary" -c "SELECT connection, table_name, record_id, action, sf_message, archived FROM connect_write_errors"

log "5. the follower changeover of the first act, under pgbench load"
as_run_user pgbench -n -c 2 -j 2 -T 6 -f "$work/writes.sql" "$primary user=app" >"$work/pgbench.log" 2>&1 &
bench=$!
sleep 2
plan=$(psql_at "$primary" -At -c "SELECT connect_prepare_upgrade('follower', follower => '$follower', max_lag_bytes => 16 * 1024 * 1024, timeout => '1 min')")
psql_at "$primary" -At -c "SELECT 'plan ' || $plan || ' is ' || connect_wait_upgrade($plan, 'ready', '2 min') || ': Connect paused, writes fenced, follower caught up'"
wait "$bench" || true
unfinished=$(psql_at "$primary" -At -c "SELECT count(*) FROM salesforce._trigger_log WHERE state IN ('NEW', 'PENDING')")
echo "entries Connect has not sent yet, at the fence: $unfinished"
psql_at "$primary" -At -c "SELECT connect_promote_follower($plan)" >/dev/null
psql_at "$follower" -At -c "SELECT 'new primary: plan ' || $plan || ' ' || connect_wait_upgrade($plan, 'completed', '1 min')"
echo "on the new primary, the same entries are still unfinished: $(psql_at "$follower" -At -c "SELECT count(*) FROM salesforce._trigger_log WHERE state IN ('NEW', 'PENDING')")"
sim_stop                 # Connect follows DATABASE_URL to the new primary
start_connect "$follower"
until [ "$(psql_at "$follower" -At -c "SELECT count(*) FROM salesforce._trigger_log WHERE state IN ('NEW', 'PENDING')")" = 0 ]; do sleep 0.2; done

log "6. what happened"
psql_at "$follower" -c "SELECT step, round(extract(epoch FROM duration) * 1000) AS ms FROM connect_upgrade_timeline($plan)"
psql_at "$follower" -c "SELECT connection, hwm_id AS processed_mark, log_head, backlog, failed FROM connect_high_water_marks"
echo "counting: the entries of the log and its archive on the new primary, and what Connect sent of them"
logged=$(psql_at "$follower" -At -c "SELECT count(*) FROM (SELECT id FROM salesforce._trigger_log UNION ALL
                                                            SELECT id FROM salesforce._trigger_log_archive) l")
psql_at "$mirror" -c "SELECT $logged AS entries_logged, count(*) AS entries_sent, count(*) FILTER (WHERE n > 1) AS sent_twice
                        FROM (SELECT entry_id, count(*) AS n FROM _sim_connect_deliveries GROUP BY 1) d"
echo "the mirror against the tables (the one difference: the contact Salesforce refused in step 4):"
sim_stop
as_run_user /usr/bin/python3 "$CG_ROOT/test/simulator/connect_sim.py" --verify --connect-log salesforce \
    --source "$follower" --mirror "$mirror" --connection hc 2>>"$work/simulator.log" || true
echo
as_run_user pg_dump -h "$work/follower" -p "$f_port" -U postgres --schema-only -n salesforce app |
    grep -v '^\\\(un\)\?restrict ' > "$work/schema_after.sql"
if diff -u "$work/schema_before.sql" "$work/schema_after.sql"; then
    echo "pg_dump --schema-only -n salesforce: Connect's schema is as it was before the adoption"
else
    die "Connect's schema changed"
fi
