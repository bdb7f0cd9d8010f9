#!/usr/bin/env bash
# demo.sh: connect_guard end to end on a throwaway local cluster.
#   bash scripts/demo.sh
# Installs what it needs, builds and installs the extension, starts a
# cluster as an unprivileged user, maps a table, writes to it with pgbench
# while a consumer drains snapshot-safe batches, and shows that every change
# arrived exactly once.  Everything is removed at the end.
source "$(dirname "$0")/lib.sh"

install_packages
build_and_install

work=$(scratch_dir demo)
trap 'cluster_stop "$work"; rm -rf "$work"' EXIT
port=$(free_port 5470)
cluster_init "$work" "$port"
cluster_start "$work"

sql() { as_run_user psql -h "$work" -p "$port" -U postgres -X -q -v ON_ERROR_STOP=1 -d demo "$@"; }
as_run_user createdb -h "$work" -p "$port" -U postgres demo

log "1. install the extension, create a connection, map a table"
sql -c "CREATE EXTENSION connect_guard" \
    -c "CREATE TABLE contact (id serial PRIMARY KEY, sfid varchar(18), name text, balance numeric DEFAULT 0)" \
    -c "SELECT connect_create_connection('sync')" \
    -c "SELECT connect_map_table('sync', 'contact', 'Contact')" \
    -c "SELECT * FROM connect_mappings"

log "2. pgbench writes for 5 s (inserts and updates, 4 clients) while a consumer drains batches"
cat > "$work/writes.sql" <<'SQL'
\set id random(1, 2000)
INSERT INTO contact (name) VALUES ('c' || :id);
UPDATE contact SET balance = balance + 1 WHERE id = :id;
SQL
chown "$RUN_USER" "$work/writes.sql" 2>/dev/null || true
sql -c "CREATE TABLE consumed (entry_id bigint, batch_id bigint)"
as_run_user pgbench -h "$work" -p "$port" -U postgres -n -c 4 -T 5 -f "$work/writes.sql" demo >"$work/pgbench.log" 2>&1 &
bench=$!
batches=0
drain_once() {
    local b
    b=$(sql -Atc "SELECT connect_next_batch('sync')")
    [ -n "$b" ] || return 1
    sql -c "INSERT INTO consumed SELECT id, $b FROM connect_batch_events($b)" \
        -c "SELECT connect_finish_batch($b)" >/dev/null
    batches=$((batches + 1))
}
while kill -0 $bench 2>/dev/null; do drain_once || sleep 0.2; done
wait $bench
while drain_once; do :; done
grep -E "number of transactions actually processed|tps" "$work/pgbench.log" | head -2

log "3. what happened"
echo "batches consumed: $batches"
sql -c "SELECT connection, hwm_id, log_head, backlog, open_batch FROM connect_high_water_marks"
# the worker moves consumed entries to the archive as it goes: count both
sql -c "WITH log AS (SELECT id FROM connect_guard.trigger_log
                     UNION ALL SELECT id FROM connect_guard.trigger_log_archive)
        SELECT (SELECT count(*) FROM log) AS captured,
               (SELECT count(DISTINCT entry_id) FROM consumed) AS delivered,
               (SELECT count(*) - count(DISTINCT entry_id) FROM consumed) AS delivered_twice,
               (SELECT count(*) FROM log l
                 WHERE NOT EXISTS (SELECT 1 FROM consumed c WHERE c.entry_id = l.id)) AS missed"
sql -c "SELECT id, action, record_id, \"values\" FROM connect_guard.trigger_log_archive ORDER BY id DESC LIMIT 3"

log "4. retention: the worker archived what every connection consumed"
sql -c "SELECT connect_archive_consumed(100000) AS left_to_archive" \
    -c "SELECT count(*) AS still_hot, (SELECT count(*) FROM connect_guard.trigger_log_archive) AS archived FROM connect_guard.trigger_log"
