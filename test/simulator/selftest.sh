#!/usr/bin/env bash
# selftest.sh: checks connect_sim.py against a throwaway PostgreSQL cluster.
#
# Needs the extension installed in the server (make && make install), curl,
# and /usr/bin/python3 with psycopg2.  Runs as root (the server then runs as
# postgres, through runuser) or as an ordinary user (the server runs as that
# user).  Prints one line per check and "N passed, M failed" last; exits
# non-zero when a check failed.
#
# Environment: PGBIN (default /usr/lib/postgresql/15/bin), SELFTEST_PGPORT
# (default 5493), PYTHON (default /usr/bin/python3), KEEP=1 keeps the
# temporary directory for a post-mortem.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-/usr/bin/python3}
SIM="$HERE/connect_sim.py"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGPORT=${SELFTEST_PGPORT:-5493}
TOKEN=selftest-token-1f2e3d
SECRET=selftest-webhook-secret

passed=0
failed=0
SIM_PID=
WORK=$(mktemp -d /tmp/connect_sim_selftest.XXXXXX)

# The server refuses to run as root: drop to postgres for server commands.
if [ "$(id -u)" = 0 ]; then
    AS_PG=(runuser -u postgres --)
    DBUSER=postgres
    chown postgres "$WORK"
else
    AS_PG=()
    DBUSER=$(id -un)
fi

SRC="host=$WORK port=$PGPORT dbname=src user=$DBUSER"
MIR="host=$WORK port=$PGPORT dbname=mirror user=$DBUSER"
CONSUME=(--source "$SRC" --mirror "$MIR" --connection demo)

cleanup() {
    if [ -n "$SIM_PID" ] && kill -0 "$SIM_PID" 2>/dev/null; then
        kill -TERM "$SIM_PID" 2>/dev/null
        wait "$SIM_PID" 2>/dev/null
    fi
    if [ -f "$WORK/data/postmaster.pid" ]; then
        "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "# kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- reporting ---------------------------------------------------------------

ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() {
    failed=$((failed + 1))
    echo "not ok - $1"
    [ -n "${2:-}" ] && printf '    %s\n' "$2"
    return 0
}
# check DESCRIPTION COMMAND...: passes when the command succeeds
check() {
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}
# same EXPECTED ACTUAL DESCRIPTION
same() {
    if [ "$1" = "$2" ]; then ok "$3"; else not_ok "$3" "expected '$1', got '$2'"; fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit $?
}
bail() {
    not_ok "$1" "${2:-}"
    finish
}

# -- helpers -----------------------------------------------------------------

psql_at() {     # psql_at DB SQL: the result, unaligned, tuples only
    "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PGPORT" -U "$DBUSER" -d "$1" -c "$2"
}
psql_file() {
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PGPORT" -U "$DBUSER" -d "$1" -f "$2" >/dev/null
}
# jget EXPR: evaluates a Python expression over the JSON on stdin, bound to d
jget() {
    "$PY" -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1"
}
# http ARGS...: curl with the status on stdout and the body in $WORK/body
http() {
    curl -s -o "$WORK/body" -w '%{http_code}' "$@"
}
api() {         # api METHOD PATH [curl args]: the Connect API with the token
    local method=$1 path=$2
    shift 2
    http -X "$method" -H "Authorization: Bearer $TOKEN" "$BASE$path" "$@"
}
deep() {        # the deep GET of the demo connection, as JSON on stdout
    curl -s -H "Authorization: Bearer $TOKEN" "$BASE/api/v3/connections/$CONN_ID?deep=true"
}
# wait_until SECONDS COMMAND...: polls the command until it succeeds
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}
log_entries() {  # every entry ever captured on the source
    psql_at src "SELECT count(*) FROM (SELECT id FROM connect_guard.trigger_log
                                       UNION ALL SELECT id FROM connect_guard.trigger_log_archive) e"
}
log_head() {
    psql_at src "SELECT coalesce(max(id), 0) FROM connect_guard.trigger_log"
}
hwm_is() { [ "$(deep | jget 'd["high_water_mark"]')" = "$1" ]; }
conn_state_is() { [ "$(deep | jget 'd["state"]')" = "$1" ]; }
verify_ok() { "$PY" "$SIM" --verify "${CONSUME[@]}" >"$WORK/verify.json" 2>>"$WORK/verify.err"; }

# -- the cluster -------------------------------------------------------------

echo "# work directory $WORK, server port $PGPORT, database user $DBUSER"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/data" -A trust -U "$DBUSER" >"$WORK/initdb.log" 2>&1 ||
    bail "initdb" "$(tail -5 "$WORK/initdb.log")"
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w \
    -o "-p $PGPORT -k $WORK -c listen_addresses=''" start >/dev/null ||
    bail "server start" "$(tail -5 "$WORK/server.log")"
psql_at postgres "CREATE DATABASE src" && psql_at postgres "CREATE DATABASE mirror" ||
    bail "create databases"
psql_at src "CREATE EXTENSION connect_guard" >/dev/null 2>"$WORK/ext.err" ||
    bail "CREATE EXTENSION connect_guard" "$(cat "$WORK/ext.err") (run: make && make install)"
ok "cluster with databases src and mirror, extension installed in src"

# The same definitions on both sides; the mirror gets no triggers because
# only the source maps the tables.
cat >"$WORK/schema.sql" <<'SQL'
CREATE TABLE public.item (
    id      bigint PRIMARY KEY,
    name    text NOT NULL,
    qty     integer,
    price   numeric(12,2),
    ratio   double precision,
    active  boolean DEFAULT true,
    tags    text[],
    attrs   jsonb,
    doc     json,
    born    date,
    seen    timestamptz,
    blob    bytea,
    span    interval,
    total   numeric GENERATED ALWAYS AS (qty * price) STORED
);
CREATE SCHEMA crm;
CREATE TABLE crm.line (
    order_id integer,
    line_no  integer,
    note     text,
    PRIMARY KEY (order_id, line_no)
);
SQL
psql_file src "$WORK/schema.sql" && psql_file mirror "$WORK/schema.sql" || bail "create tables"
psql_at src "SELECT connect_create_connection('demo');
             SELECT connect_map_table('demo', 'public.item', 'Item');
             SELECT connect_map_table('demo', 'crm.line', 'Line__c')" >/dev/null || bail "map tables"

cat >"$WORK/writes1.sql" <<'SQL'
INSERT INTO item (id, name, qty, price, ratio, active, tags, attrs, doc, born, seen, blob, span)
SELECT g, 'item ' || g, g, g * 1.25, g / 3.0, g % 2 = 0, ARRAY['a', 'b ' || g],
       jsonb_build_object('n', g, 'big', 12345678901234567890.123456789, 'nested', jsonb_build_array(1, 'x')),
       '{"k":  [1, 2],   "s": "spaced"}',
       date '2024-01-01' + g, timestamptz '2024-01-01 12:00:00+02' + g * interval '1 hour',
       decode('00ff' || lpad(g::text, 2, '0'), 'hex'), g * interval '1 minute 1.5 seconds'
  FROM generate_series(1, 20) g;
UPDATE item SET qty = qty + 100, tags = tags || 'x'::text WHERE id % 3 = 0;
UPDATE item SET id = id + 1000 WHERE id = 5;
UPDATE item SET name = E'it''s "quoted" \\ name', attrs = NULL, ratio = 'NaN' WHERE id = 7;
DELETE FROM item WHERE id IN (2, 4);
INSERT INTO crm.line SELECT o, l, 'note ' || o || '/' || l FROM generate_series(1, 3) o, generate_series(1, 3) l;
TRUNCATE crm.line;
INSERT INTO crm.line VALUES (9, 1, 'after truncate'), (9, 2, NULL);
UPDATE crm.line SET line_no = 3 WHERE order_id = 9 AND line_no = 2;
BEGIN; INSERT INTO item (id, name) VALUES (500, 'rolled back'); ROLLBACK;
SQL
psql_file src "$WORK/writes1.sql" || bail "source writes"
expected=$(log_entries)

# -- one-shot modes ------------------------------------------------------------

"$PY" "$SIM" --drain "${CONSUME[@]}" >"$WORK/drain1.json" 2>"$WORK/drain1.err"
same 0 $? "--drain exits 0"
summary=$(tail -1 "$WORK/drain1.json")
same "$expected" "$(jget 'd["entries_applied"]' <<<"$summary")" "--drain applied every captured entry ($expected)"
same 0 "$(jget 'd["duplicates_skipped"]' <<<"$summary")" "--drain skipped no duplicate on first delivery"
same True "$(jget 'd["complete"]' <<<"$summary")" "--drain summary says complete"
same "$(log_head)" "$(jget 'd["high_water_mark"]' <<<"$summary")" "--drain high-water mark is the log head"
same "$expected" "$(psql_at mirror "SELECT count(*) FROM _sim_applied WHERE connection = 'demo'")" \
    "_sim_applied records every entry"
check "--verify finds source and mirror equal" verify_ok
same 2 "$(jget 'len(d["tables"])' <"$WORK/verify.json")" "--verify compared both mapped tables"

# A crash between the mirror commit and finishing the batch: the batch is
# handed out again and every entry in it is skipped, none applied twice.
before=$(log_entries)
psql_at src "UPDATE item SET qty = -1 WHERE id <= 3; INSERT INTO crm.line VALUES (10, 1, 'x')" >/dev/null
new=$(($(log_entries) - before))
"$PY" "$SIM" --drain --crash-after-mirror-commit "${CONSUME[@]}" >/dev/null 2>"$WORK/crash.err"
same 3 $? "test hook exits between the mirror commit and connect_finish_batch"
check "the batch is still open on the source" \
    test -n "$(psql_at src "SELECT open_batch FROM connect_high_water_marks WHERE connection = 'demo'")"
"$PY" "$SIM" --drain "${CONSUME[@]}" >"$WORK/drain2.json" 2>"$WORK/drain2.err"
summary=$(tail -1 "$WORK/drain2.json")
same "$new" "$(jget 'd["duplicates_skipped"]' <<<"$summary")" "redelivered batch: all $new entries skipped as duplicates"
same 0 "$(jget 'd["entries_applied"]' <<<"$summary")" "redelivered batch: nothing applied twice"
check "the redelivered batch is finished" \
    test -z "$(psql_at src "SELECT open_batch FROM connect_high_water_marks WHERE connection = 'demo'")"
check "--verify after redelivery" verify_ok

# --verify must notice a difference, and name the row.
psql_at mirror "UPDATE item SET name = 'tampered' WHERE id = 1" >/dev/null
verify_ok
same 1 $? "--verify exits 1 when a mirror row differs"
same "[{'key': '(1)', 'difference': 'differs'}]" "$(jget '[t["differences"] for t in d["tables"] if not t["ok"]][0]' \
    <"$WORK/verify.json")" "--verify names the differing row"
psql_at mirror "UPDATE item SET name = 'item 1' WHERE id = 1" >/dev/null

# -- the HTTP server, with the consumer running --------------------------------

CONN_ID=6a1b0f3e-0000-4000-8000-00000000d3e0
cat >"$WORK/config.json" <<JSON
{"connections": [{"id": "$CONN_ID", "name": "demo", "db_key": "DATABASE_URL", "schema_name": "public",
                  "mappings": [{"id": "map-item", "object_name": "Item", "table_name": "item"}]}]}
JSON
"$PY" "$SIM" --port 0 --token "$TOKEN" --webhook-secret "$SECRET" --config "$WORK/config.json" \
    --request-log "$WORK/requests.jsonl" --reload-seconds 0.5 --hang-seconds 1 --poll-ms 100 \
    --consume "${CONSUME[@]}" >"$WORK/sim.out" 2>"$WORK/sim.err" &
SIM_PID=$!
wait_until 10 grep -q '^LISTENING ' "$WORK/sim.out" || bail "simulator prints LISTENING" "$(cat "$WORK/sim.err")"
PORT=$(awk '/^LISTENING /{print $2; exit}' "$WORK/sim.out")
BASE="http://127.0.0.1:$PORT"
ok "simulator listens on port $PORT"

same 401 "$(http "$BASE/api/v3/connections/$CONN_ID")" "no token: 401"
same unauthorized "$(jget 'd["id"]' <"$WORK/body")" "401 has a JSON error body"
same 401 "$(http -H 'Authorization: Bearer wrong' "$BASE/api/v3/connections/$CONN_ID")" "wrong token: 401"
same 404 "$(api GET /api/v3/connections/no-such-id)" "unknown connection: 404"
same 404 "$(api POST /api/v3/mappings/no-such-id/actions/reload)" "unknown mapping: 404"
same 200 "$(api GET "/api/v3/connections/$CONN_ID?deep=true")" "deep GET: 200"
same "demo IDLE public" "$(jget '" ".join([d["name"], d["state"], d["schema_name"]])' <"$WORK/body")" \
    "deep GET: name, state, schema_name"
wait_until 10 hwm_is "$(log_head)"
same "$(log_head)" "$(deep | jget 'd["high_water_mark"]')" "deep GET: high_water_mark is what the mirror holds"
wait_until 5 eval '[ "$(deep | jget "len(d[\"mappings\"])")" = 2 ]'
same "Item Line__c" "$(deep | jget '" ".join(sorted((m["object_name"] for m in d["mappings"]), key=len))')" \
    "deep GET: configured mapping plus the one adopted from connect_mappings"

# live sync
psql_at src "INSERT INTO item (id, name, qty) VALUES (100, 'live', 1)" >/dev/null
check "the consumer applies a new write" wait_until 10 hwm_is "$(log_head)"
same live "$(psql_at mirror "SELECT name FROM item WHERE id = 100")" "the mirror has the new row"
same 1 "$(deep | jget '[m for m in d["mappings"] if m["id"] == "map-item"][0]["counts"]["inserts"]')" \
    "mapping counts the insert"

# pause and resume
same 202 "$(api POST "/api/v3/connections/$CONN_ID/actions/pause")" "pause: 202"
check "state PAUSED" conn_state_is PAUSED
before=$(deep | jget 'd["high_water_mark"]')
psql_at src "UPDATE item SET name = 'while paused' WHERE id = 100" >/dev/null
sleep 1
same "$before" "$(deep | jget 'd["high_water_mark"]')" "no batch is taken while PAUSED"
same paused "$(curl -s "$BASE/_sim/consumer" | jget 'd["status"]')" "/_sim/consumer says paused"
same 202 "$(api POST "/api/v3/connections/$CONN_ID/actions/resume")" "resume: 202"
check "the consumer catches up after resume" wait_until 10 hwm_is "$(log_head)"
check "state IDLE after resume" wait_until 5 conn_state_is IDLE
same "while paused" "$(psql_at mirror "SELECT name FROM item WHERE id = 100")" "the write made while paused arrived"

# reload
same 202 "$(api POST /api/v3/mappings/map-item/actions/reload)" "reload: 202"
same RELOAD_TABLE "$(api GET /api/v3/mappings/map-item >/dev/null; jget 'd["state"]' <"$WORK/body")" \
    "mapping state RELOAD_TABLE"
check "mapping state DATA_SYNCED after --reload-seconds" wait_until 5 \
    eval '[ "$(api GET /api/v3/mappings/map-item >/dev/null; jget "d[\"state\"]" <"$WORK/body")" = DATA_SYNCED ]'

# fault injection
same 200 "$(http -X POST -d '{"mode": "500", "count": 1}' "$BASE/_sim/fail")" "POST /_sim/fail"
same 500 "$(api GET "/api/v3/connections/$CONN_ID")" "injected 500"
same 200 "$(api GET "/api/v3/connections/$CONN_ID")" "count 1: the next request is served"
http -X POST -d '{"mode": "401", "count": 1, "path_prefix": "/api/v3/mappings"}' "$BASE/_sim/fail" >/dev/null
same 200 "$(api GET "/api/v3/connections/$CONN_ID")" "path_prefix: other paths are served"
same 401 "$(api POST /api/v3/mappings/map-item/actions/reload)" "injected 401 on the prefix"
same 202 "$(api POST /api/v3/mappings/map-item/actions/reload)" "then served again"
http -X POST -d '{"mode": "timeout", "count": 1}' "$BASE/_sim/fail" >/dev/null
started=$SECONDS
same 504 "$(api GET "/api/v3/connections/$CONN_ID")" "injected timeout: 504"
check "the 504 came after --hang-seconds" test $((SECONDS - started)) -ge 1
http -X POST -d '{"mode": "hang", "count": null}' "$BASE/_sim/fail" >/dev/null
curl -s -o /dev/null --max-time 1 -H "Authorization: Bearer $TOKEN" "$BASE/api/v3/connections/$CONN_ID"
same 28 $? "injected hang: the client times out"
same 200 "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/_sim/health")" "the control API is never faulted"
http -X POST -d '{"mode": "none"}' "$BASE/_sim/fail" >/dev/null
same 200 "$(api GET "/api/v3/connections/$CONN_ID")" "mode none: served again"
check "the hung request is recorded without a status" wait_until 5 eval \
    '[ "$(curl -s "$BASE/_sim/requests" | jget "\" \".join(r[\"outcome\"] for r in d[\"requests\"] if r[\"fault\"] == \"hang\")")" = client_gone ]'

# webhook
body='{"event": "fence_engaged", "connection": "demo"}'
sig=$("$PY" -c 'import hashlib, hmac, sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())' \
    "$SECRET" "$body")
same 200 "$(http -X POST -H "X-Connect-Guard-Signature: sha256=$sig" --data-binary "$body" "$BASE/webhook")" \
    "webhook with a good signature: 200"
same 401 "$(http -X POST -H "X-Connect-Guard-Signature: sha256=${sig//a/b}0" --data-binary "$body" "$BASE/webhook")" \
    "webhook with a bad signature: 401"
same 401 "$(http -X POST --data-binary "$body" "$BASE/webhook")" "webhook without a signature: 401"
same "['fence_engaged']" "$(curl -s "$BASE/_sim/webhooks" | jget '[w["event"]["event"] for w in d["webhooks"]]')" \
    "only the signed event is recorded"

# recording and redaction
curl -s "$BASE/_sim/requests" >"$WORK/requests.json"
check "recorded requests hide the token as 'Bearer ***'" grep -q 'Bearer \*\*\*' "$WORK/requests.json"
check "recorded requests never show the token" bash -c "! grep -q '$TOKEN' '$WORK/requests.json' '$WORK/requests.jsonl'"
same "$(jget 'len(d["requests"])' <"$WORK/requests.json")" "$(wc -l <"$WORK/requests.jsonl" | tr -d ' ')" \
    "--request-log has one line per recorded request"
same "POST /api/v3/connections/$CONN_ID/actions/pause 202" \
    "$(jget '[" ".join([r["method"], r["path"], str(r["status"])]) for r in d["requests"] if r["path"].endswith("/pause")][0]' \
    <"$WORK/requests.json")" "a recorded request has method, path and status"

# control state and reset
same 200 "$(http -X POST -d '{"connections": [{"id": "other", "name": "other", "state": "PAUSED"}]}' \
    "$BASE/_sim/state")" "POST /_sim/state creates a connection"
same PAUSED "$(api GET /api/v3/connections/other >/dev/null; jget 'd["state"]' <"$WORK/body")" \
    "the created connection has the state given"
same 200 "$(http -X POST "$BASE/_sim/reset")" "POST /_sim/reset"
same 0 "$(curl -s "$BASE/_sim/requests" | jget 'len(d["requests"])')" "reset clears the recorded requests"
same 404 "$(api GET /api/v3/connections/other)" "reset forgets connections tests created"

# a restart of the databases under the running consumer
psql_at src "UPDATE item SET qty = 7 WHERE id = 100" >/dev/null
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w restart >/dev/null 2>&1 ||
    bail "server restart" "$(tail -5 "$WORK/server.log")"
psql_at src "INSERT INTO item (id, name) SELECT g, 'after restart' FROM generate_series(200, 209) g;
             DELETE FROM item WHERE id = 201" >/dev/null
check "the consumer catches up after the server restarted" wait_until 30 hwm_is "$(log_head)"
check "the consumer reconnected to the source" \
    test "$(curl -s "$BASE/_sim/consumer" | jget 'd["reconnects"]["source"]')" -ge 1
check "sim.err logs the lost connection" grep -q 'connection lost' "$WORK/sim.err"

# stopping
kill -TERM "$SIM_PID"
wait "$SIM_PID"
same 0 $? "SIGTERM: the simulator exits 0"
SIM_PID=
check "the consumer said it stopped" grep -q 'consumer stopped' "$WORK/sim.err"

# nothing lost, nothing applied twice
check "--verify at the end" verify_ok
same "$(log_entries)" "$(psql_at mirror "SELECT count(*) FROM _sim_applied WHERE connection = 'demo'")" \
    "every captured entry was applied exactly once"

if [ "$failed" != 0 ]; then
    echo "# simulator stderr (last 20 lines):"
    tail -20 "$WORK/sim.err" 2>/dev/null | sed 's/^/#   /'
fi
finish
