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
# what the Heroku CLI's connect plugin sends with every request, and the
# simulator insists on
CLI_HEADERS=(-H "Heroku-Client: selftest" -H "Accept: application/json" -H "Content-Type: application/json")
api() {         # api METHOD PATH [curl args]: the Connect API with the token
    local method=$1 path=$2
    shift 2
    http -X "$method" -H "Authorization: Bearer $TOKEN" "${CLI_HEADERS[@]}" "$BASE$path" "$@"
}
deep() {        # the deep GET of the demo connection, as JSON on stdout
    curl -s -H "Authorization: Bearer $TOKEN" "${CLI_HEADERS[@]}" "$BASE/api/v3/connections/$CONN_ID?deep=true"
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
curl -s -o /dev/null --max-time 1 -H "Authorization: Bearer $TOKEN" "${CLI_HEADERS[@]}" "$BASE/api/v3/connections/$CONN_ID"
same 28 $? "injected hang: the client times out"
same 200 "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/_sim/health")" "the control API is never faulted"
http -X POST -d '{"mode": "none"}' "$BASE/_sim/fail" >/dev/null
same 200 "$(api GET "/api/v3/connections/$CONN_ID")" "mode none: served again"
check "the hung request is recorded without a status" wait_until 5 eval \
    '[ "$(curl -s "$BASE/_sim/requests" | jget "\" \".join(r[\"outcome\"] for r in d[\"requests\"] if r[\"fault\"] == \"hang\")")" = client_gone ]'

# the CLI's headers: a client that forgets one is refused
same 400 "$(http -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json' -H 'Content-Type: application/json' \
    "$BASE/api/v3/connections/$CONN_ID")" "no Heroku-Client header: 400"
check "the 400 names the header" grep -q 'Heroku-Client' "$WORK/body"
same 415 "$(http -H "Authorization: Bearer $TOKEN" -H 'Heroku-Client: selftest' -H 'Accept: application/json' \
    -X POST "$BASE/api/v3/connections/$CONN_ID/actions/pause")" "no Content-Type on a bodiless POST: 415"
same 415 "$(http -H "Authorization: Bearer $TOKEN" -H 'Heroku-Client: selftest' -H 'Accept: application/json' \
    -H 'Content-Type: text/plain' "$BASE/api/v3/connections/$CONN_ID")" "Content-Type text/plain: 415"
same 400 "$(http -H "Authorization: Bearer $TOKEN" -H 'Heroku-Client: selftest' -H 'Accept:' \
    -H 'Content-Type: application/json' "$BASE/api/v3/connections/$CONN_ID")" "no Accept header: 400"
same 406 "$(http -H "Authorization: Bearer $TOKEN" -H 'Heroku-Client: selftest' -H 'Accept: text/html' \
    -H 'Content-Type: application/json' "$BASE/api/v3/connections/$CONN_ID")" "Accept without JSON: 406"
same IDLE "$(deep | jget 'd["state"]')" "the refused pause changed nothing"
same 200 "$(api GET "/api/v3/connections/$CONN_ID" -H 'Accept: application/json, text/plain, */*' \
    -H 'Content-Type: application/json; charset=utf-8')" "the CLI's own Accept and a charset are fine"

# per-route faults: several rules at once, by method and path pattern
same 200 "$(http -X POST -d '{"mode": "409", "count": null, "method": "POST",
                              "path_pattern": "/api/v3/mappings/[^/]+/actions/reload"}' "$BASE/_sim/fail")" \
    "POST /_sim/fail: 409 on reloads"
http -X POST -d '{"mode": "503", "count": 1, "method": "POST", "path_prefix": "/api/v3/connections/",
                  "add": true}' "$BASE/_sim/fail" >/dev/null
same 2 "$(curl -s "$BASE/_sim/fail" | jget 'len(d["faults"])')" "GET /_sim/fail lists both rules"
same 409 "$(api POST /api/v3/mappings/map-item/actions/reload)" "injected 409 on the reload route"
same conflict "$(jget 'd["id"]' <"$WORK/body")" "the 409 has a JSON error body"
same 200 "$(api GET /api/v3/mappings/map-item)" "a GET of the same mapping is served"
same 503 "$(api POST "/api/v3/connections/$CONN_ID/actions/resume")" "the added rule: 503 on a connection POST"
same 202 "$(api POST "/api/v3/connections/$CONN_ID/actions/resume")" "count 1: then served"
same 409 "$(api POST /api/v3/mappings/map-item/actions/reload)" "the 409 rule (count null) stays"
http -X POST -d '{"mode": "hang", "count": 1, "method": "POST", "path_pattern": ".*/actions/pause"}' \
    "$BASE/_sim/fail" >/dev/null
same 1 "$(curl -s "$BASE/_sim/fail" | jget 'len(d["faults"])')" "a rule without add replaces the rules"
curl -s -o /dev/null --max-time 1 -X POST -H "Authorization: Bearer $TOKEN" "${CLI_HEADERS[@]}" \
    "$BASE/api/v3/connections/$CONN_ID/actions/pause"
same 28 $? "injected hang on the pause route only"
same 202 "$(api POST /api/v3/mappings/map-item/actions/reload)" "the reload is served again"
same IDLE "$(deep | jget 'd["state"]')" "the hung pause did not pause"
http -X POST -d '{"mode": "slow", "seconds": 1, "count": 1}' "$BASE/_sim/fail" >/dev/null
started=$SECONDS
same 200 "$(api GET "/api/v3/connections/$CONN_ID")" "slow: the real answer"
check "slow: after the delay" test $((SECONDS - started)) -ge 1
same 400 "$(http -X POST -d '{"mode": "418x"}' "$BASE/_sim/fail")" "an unknown fault mode: 400"

# a service that echoes the token: JSON-escaped, so a scrubber that only
# looks for the raw token misses it
http -X POST -d '{"mode": "echo_token", "count": 1, "status": 401}' "$BASE/_sim/fail" >/dev/null
same 401 "$(api GET "/api/v3/connections/$CONN_ID")" "echo_token answers the status asked for"
check "the raw body does not hold the token verbatim" bash -c "! grep -qF '$TOKEN' '$WORK/body'"
escaped_token=$(printf '%s' "$TOKEN" | sed 's/-/\\u002d/g')
check "the raw body holds it escaped ($escaped_token)" grep -qF "$escaped_token" "$WORK/body"
same True "$(jget "'$TOKEN' in d['message']" <"$WORK/body")" "the decoded message holds the token"
http -X POST -d '{"mode": "none"}' "$BASE/_sim/fail" >/dev/null
same 0 "$(curl -s "$BASE/_sim/fail" | jget 'len(d["faults"])')" "mode none clears every rule"

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

# -- Connect's own log (--connect-log) on the fixture schema -----------------

FIXTURE="$HERE/../fixtures/connect_schema.sql"
psql_at postgres "CREATE DATABASE hc" && psql_at postgres "CREATE DATABASE hcmirror" || bail "create hc databases"
psql_file hc "$FIXTURE" || bail "load $FIXTURE"
HC=(--source "host=$WORK port=$PGPORT dbname=hc user=$DBUSER"
    --mirror "host=$WORK port=$PGPORT dbname=hcmirror user=$DBUSER" --connection hcdemo --connect-log salesforce)
hc_log() {      # hc_log CONDITION: entries of the log and its archive that meet it
    psql_at hc "SELECT count(*) FROM (SELECT * FROM salesforce._trigger_log
                                      UNION ALL SELECT * FROM salesforce._trigger_log_archive) e WHERE $1"
}
hc_verify_ok() { "$PY" "$SIM" --verify "${HC[@]}" >"$WORK/hcverify.json" 2>>"$WORK/hcverify.err"; }

same "account contact" "$(psql_at hc "SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_trigger t
                                      JOIN pg_class c ON c.oid = t.tgrelid WHERE t.tgname LIKE 'hc%logtrigger'")" \
    "fixture: logger triggers on account and contact"
psql_at hc "INSERT INTO salesforce.account (name, isdeleted) SELECT 'acct ' || g, false FROM generate_series(1, 10) g;
            UPDATE salesforce.account SET name = name || ' v2' WHERE id <= 3;
            DELETE FROM salesforce.account WHERE id = 10;
            INSERT INTO salesforce.contact (name) VALUES ('c1'), ('c2')" >/dev/null || bail "fixture writes"
same 16 "$(hc_log "state = 'NEW'")" "fixture: one NEW entry per row change (10 + 3 + 1 + 2)"
same '"name"=>"acct 1 v2"' "$(psql_at hc "SELECT \"values\" FROM salesforce._trigger_log WHERE action = 'UPDATE'
                                         ORDER BY id LIMIT 1")" "fixture: an UPDATE logs only the changed columns"
same PENDING "$(psql_at hc "SELECT _hc_lastop FROM salesforce.account WHERE id = 1")" \
    "fixture: the status trigger marks an application's write PENDING"
psql_at hc "SET xmlbinary = 'hex'; INSERT INTO salesforce.account (name) VALUES ('by connect');
            DELETE FROM salesforce.account WHERE name = 'by connect'" >/dev/null
same 16 "$(hc_log true)" "fixture: writes of a session with xmlbinary = hex are not logged"

# a crash between the mirror ("Salesforce") commit and marking the entries
"$PY" "$SIM" --drain --crash-after-mirror-commit --connect-batch 5 "${HC[@]}" >/dev/null 2>"$WORK/hccrash.err"
same 3 $? "--connect-log test hook exits between the mirror commit and marking"
same 5 "$(hc_log "state = 'PENDING'")" "the crashed pass's 5 entries are still PENDING"
"$PY" "$SIM" --drain --archive-after -1 "${HC[@]}" >"$WORK/hcdrain.json" 2>"$WORK/hcdrain.err"
same 0 $? "--drain --connect-log exits 0"
summary=$(tail -1 "$WORK/hcdrain.json")
same 5 "$(jget 'd["requeued"]' <<<"$summary")" "a new run sets the 5 PENDING entries back to NEW"
same 16 "$(jget 'd["success"]' <<<"$summary")" "--drain marks all 16 entries SUCCESS"
same 0 "$(hc_log "state <> 'SUCCESS' OR processed_at IS NULL OR processed_tx IS NULL")" \
    "every entry is SUCCESS with processed_at and processed_tx"
same 16 "$(psql_at hc "SELECT count(*) FROM salesforce._trigger_log")" "--archive-after -1: nothing archived"
same "21 5" "$(psql_at hcmirror "SELECT count(*) || ' ' || count(*) - count(DISTINCT entry_id) FROM _sim_connect_deliveries")" \
    "deliveries: the crash shows as exactly 5 entries sent twice"
check "--verify --connect-log: source and mirror equal" hc_verify_ok
same SYNCED "$(psql_at hc "SELECT string_agg(DISTINCT _hc_lastop, ',') FROM salesforce.account")" \
    "write-back: _hc_lastop SYNCED"
same 0 "$(psql_at hc "SELECT count(*) FROM salesforce.account WHERE sfid IS NULL")" "write-back: every row has an sfid"
same 16 "$(hc_log true)" "the write-backs (xmlbinary hex) were not logged"

# the service: API server and Connect's drainer
HC_ID=hc-conn-1
cat >"$WORK/hc.json" <<JSON
{"connections": [{"id": "$HC_ID", "name": "hcdemo", "schema_name": "salesforce"}]}
JSON
"$PY" "$SIM" --port 0 --token "$TOKEN" --config "$WORK/hc.json" --reload-delay 1 --reload-seconds 0.5 \
    --archive-after 1 --poll-ms 100 --consume "${HC[@]}" >"$WORK/hcsim.out" 2>"$WORK/hcsim.err" &
SIM_PID=$!
wait_until 10 grep -q '^LISTENING ' "$WORK/hcsim.out" || bail "connect-log simulator listens" "$(cat "$WORK/hcsim.err")"
BASE="http://127.0.0.1:$(awk '/^LISTENING /{print $2; exit}' "$WORK/hcsim.out")"
CONN_ID=$HC_ID
check "the adopted tables become mappings" wait_until 10 \
    eval '[ "$(deep | jget "\" \".join(sorted(m[\"object_name\"] for m in d[\"mappings\"]))")" = "Account Contact" ]'
same connect "$(deep | jget 'd["log_mode"]')" "deep GET: log_mode connect"
ACCOUNT_MAP=$(deep | jget '[m["id"] for m in d["mappings"] if m["table_name"] == "account"][0]')
CONTACT_MAP=$(deep | jget '[m["id"] for m in d["mappings"] if m["table_name"] == "contact"][0]')
check "processed entries move to the archive after --archive-after" wait_until 10 \
    eval '[ "$(psql_at hc "SELECT count(*) FROM salesforce._trigger_log_archive")" = 16 ]'
same 0 "$(psql_at hc "SELECT count(*) FROM salesforce._trigger_log")" "the log is empty once archived"
hc_hwm_is() { [ "$(deep | jget 'd["high_water_mark"]')" = "$1" ]; }
check "deep GET: high_water_mark counts archived entries" wait_until 5 hc_hwm_is 16

# a live write
psql_at hc "INSERT INTO salesforce.account (name) VALUES ('live')" >/dev/null
check "a live write is sent and SUCCESS" wait_until 10 eval '[ "$(hc_log "id = 17 AND state = '"'SUCCESS'"'")" = 1 ]'
same live "$(psql_at hcmirror "SELECT name FROM salesforce.account WHERE name = 'live'")" "the mirror has it"
check "deep GET: high_water_mark 17" wait_until 5 hc_hwm_is 17

# Salesforce refuses a record
same 200 "$(http -X POST -d '{"table": "contact", "action": "INSERT", "count": 1,
                              "message": "FIELD_CUSTOM_VALIDATION_EXCEPTION: refused"}' "$BASE/_sim/connect_log/fail")" \
    "POST /_sim/connect_log/fail"
psql_at hc "INSERT INTO salesforce.contact (name) VALUES ('refused'), ('accepted')" >/dev/null
check "the entry is FAILED" wait_until 10 eval '[ "$(hc_log "state = '"'FAILED'"'")" = 1 ]'
check "the other entry of the same statement is SUCCESS" wait_until 10 eval '[ "$(hc_log "id = 19 AND state = '"'SUCCESS'"'")" = 1 ]'
same "18 400 FIELD_CUSTOM_VALIDATION_EXCEPTION: refused" \
    "$(psql_at hc "SELECT id || ' ' || sf_result || ' ' || sf_message FROM (SELECT * FROM salesforce._trigger_log
                   UNION ALL SELECT * FROM salesforce._trigger_log_archive) e WHERE state = 'FAILED'")" \
    "FAILED with sf_result and sf_message"
same "FAILED FIELD_CUSTOM_VALIDATION_EXCEPTION: refused" \
    "$(psql_at hc "SELECT _hc_lastop || ' ' || _hc_err FROM salesforce.contact WHERE name = 'refused'")" \
    "write-back: _hc_lastop FAILED and _hc_err"
same 0 "$(psql_at hcmirror "SELECT count(*) FROM salesforce.contact WHERE name = 'refused'")" "the mirror has no refused row"
same 200 "$(api GET "/api/v3/connections/$HC_ID/errors")" "GET connection errors: 200"
same "1 18" "$(jget '"%d %d" % (d["count"], d["results"][0]["id"])' <"$WORK/body")" "the connection's write errors"
api GET "/api/v3/mappings/$CONTACT_MAP/errors" >/dev/null
same 1 "$(jget 'd["count"]' <"$WORK/body")" "the contact mapping's write errors"
api GET "/api/v3/mappings/$ACCOUNT_MAP/errors" >/dev/null
same 0 "$(jget 'd["count"]' <"$WORK/body")" "the account mapping has none"
same 1 "$(deep | jget '[m for m in d["mappings"] if m["table_name"] == "contact"][0]["counts"]["errors"]')" \
    "the mapping counts the error"
psql_at hc "DELETE FROM salesforce.contact WHERE name = 'refused'" >/dev/null
check "the delete is sent" wait_until 10 eval '[ "$(hc_log "state IN ('"'NEW', 'PENDING'"')")" = 0 ]'

# an entry being sent is PENDING
same 200 "$(http -X POST -d '{"seconds": 2}' "$BASE/_sim/connect_log/stall")" "POST /_sim/connect_log/stall"
psql_at hc "INSERT INTO salesforce.account (name) VALUES ('stalled')" >/dev/null
check "the entry is PENDING while it is sent" wait_until 5 eval '[ "$(hc_log "state = '"'PENDING'"'")" = 1 ]'
same POLLING_DB_CHANGES "$(deep | jget 'd["state"]')" "the connection is POLLING_DB_CHANGES meanwhile"
http -X POST -d '{"seconds": 0}' "$BASE/_sim/connect_log/stall" >/dev/null
check "then SUCCESS" wait_until 10 eval '[ "$(hc_log "state IN ('"'NEW', 'PENDING'"')")" = 0 ]'

# ids commit out of order: an open transaction's entry is invisible, and the
# mark passes it; it is sent once it commits
rm -f "$WORK/tx.started" "$WORK/tx.go"
"$PY" - "host=$WORK port=$PGPORT dbname=hc user=$DBUSER" "$WORK" <<'PY' &
import os, sys, time
import psycopg2
conn = psycopg2.connect(sys.argv[1])
with conn.cursor() as cur:
    cur.execute("INSERT INTO salesforce.account (name) VALUES ('slow tx')")
open(os.path.join(sys.argv[2], "tx.started"), "w").close()
deadline = time.time() + 30
while not os.path.exists(os.path.join(sys.argv[2], "tx.go")) and time.time() < deadline:
    time.sleep(0.1)
conn.commit()
PY
TX_PID=$!
wait_until 10 test -f "$WORK/tx.started" || not_ok "the slow transaction started"
psql_at hc "INSERT INTO salesforce.account (name) VALUES ('fast tx')" >/dev/null
fast_id=$(psql_at hc "SELECT max(id) FROM salesforce._trigger_log")
check "the later id, committed first, is sent" wait_until 10 eval '[ "$(hc_log "id = $fast_id AND state = '"'SUCCESS'"'")" = 1 ]'
same 0 "$(hc_log "record_id = (SELECT id FROM salesforce.account WHERE name = 'fast tx') - 1 AND table_name = 'account'")" \
    "the open transaction's entry is not visible"
check "the mark passes the open transaction's id" wait_until 5 hc_hwm_is "$fast_id"
touch "$WORK/tx.go"
wait "$TX_PID"
check "the late entry, below the mark, is sent once it commits" wait_until 10 \
    eval '[ "$(hc_log "id = $((fast_id - 1)) AND state = '"'SUCCESS'"'")" = 1 ]'
same 1 "$(psql_at hcmirror "SELECT count(*) FROM _sim_connect_deliveries WHERE entry_id = $((fast_id - 1))")" \
    "and delivered once"

# pause and resume
same 202 "$(api POST "/api/v3/connections/$HC_ID/actions/pause")" "pause: 202"
psql_at hc "INSERT INTO salesforce.account (name) VALUES ('while paused')" >/dev/null
sleep 1
same 1 "$(hc_log "state = 'NEW'")" "nothing is sent while PAUSED"
same 202 "$(api POST "/api/v3/connections/$HC_ID/actions/resume")" "resume: 202"
check "sent after resume" wait_until 10 eval '[ "$(hc_log "state = '"'NEW'"'")" = 0 ]'

# a read-only mapping
same 200 "$(http -X POST -d "{\"mappings\": [{\"id\": \"$CONTACT_MAP\", \"access\": \"read_only\"}]}" "$BASE/_sim/state")" \
    "POST /_sim/state: contact read_only"
psql_at hc "INSERT INTO salesforce.contact (name) VALUES ('local only')" >/dev/null
check "a change on a read-only mapping is READONLY" wait_until 10 eval '[ "$(hc_log "state = '"'READONLY'"'")" = 1 ]'
same 0 "$(psql_at hcmirror "SELECT count(*) FROM salesforce.contact WHERE name = 'local only'")" "and not sent"
psql_at hc "DELETE FROM salesforce.contact WHERE name = 'local only'" >/dev/null
check "the delete too" wait_until 10 eval '[ "$(hc_log "state = '"'READONLY'"'")" = 2 ]'
http -X POST -d "{\"mappings\": [{\"id\": \"$CONTACT_MAP\", \"access\": \"read_write\"}]}" "$BASE/_sim/state" >/dev/null

# a reload: starts a moment after its 202, rewrites the table from Salesforce
psql_at hcmirror "UPDATE salesforce.account SET name = 'from salesforce' WHERE id = 1" >/dev/null
entries_before=$(hc_log true)
same "DATA_SYNCED None" "$(api GET "/api/v3/mappings/$ACCOUNT_MAP" >/dev/null; jget '"%s %s" % (d["state"], d["reload_started_at"])' <"$WORK/body")" \
    "before the first reload: no reload_started_at"
same 202 "$(api POST "/api/v3/mappings/$ACCOUNT_MAP/actions/reload")" "reload: 202"
same "DATA_SYNCED None" "$(api GET "/api/v3/mappings/$ACCOUNT_MAP" >/dev/null; jget '"%s %s" % (d["state"], d["reload_started_at"])' <"$WORK/body")" \
    "--reload-delay: right after the 202 the mapping still shows DATA_SYNCED, and no reload started"
check "then RELOAD_TABLE" wait_until 5 \
    eval '[ "$(api GET "/api/v3/mappings/$ACCOUNT_MAP" >/dev/null; jget "d[\"state\"]" <"$WORK/body")" = RELOAD_TABLE ]'
check "then DATA_SYNCED" wait_until 5 \
    eval '[ "$(api GET "/api/v3/mappings/$ACCOUNT_MAP" >/dev/null; jget "d[\"state\"]" <"$WORK/body")" = DATA_SYNCED ]'
same True "$(jget 'd["reload_started_at"] is not None and d["reload_finished_at"] > d["reload_started_at"]' <"$WORK/body")" \
    "the mapping shows when the reload started and ended"
same "from salesforce SYNCED" "$(psql_at hc "SELECT name || ' ' || _hc_lastop FROM salesforce.account WHERE id = 1")" \
    "the reload rewrote the table from the mirror"
same "$entries_before" "$(hc_log true)" "the reload's writes were not logged"
same 1 "$(curl -s "$BASE/_sim/connect_log" | jget 'd["reloads"]')" "/_sim/connect_log counts the reload"

# export and import
same 200 "$(api GET "/api/v3/connections/$HC_ID/actions/export")" "export: 200"
cp "$WORK/body" "$WORK/export.json"
same "1 hcdemo Account,Contact" "$(jget '"%d %s %s" % (d["version"], d["connection"]["name"],
    ",".join(m["object_name"] for m in d["mappings"]))' <"$WORK/export.json")" "export: version, connection, mappings"
same "True True read_write" "$(jget '" ".join(str(x) for x in ("Name" in d["mappings"][0]["config"]["fields"],
    d["mappings"][0]["config"]["indexes"]["Id"]["unique"], d["mappings"][0]["config"]["access"]))' <"$WORK/export.json")" \
    "export: fields from the table's columns, the Id index, access"
"$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
d["mappings"][1]["config"]["sf_polling_seconds"] = 120
d["mappings"].append({"object_name": "Lead", "config": {"access": "read_only", "fields": {"Name": {}, "Email": {}},
                      "indexes": {"Id": {"unique": True}}}})
json.dump(d, open(sys.argv[2], "w"))
bad = json.loads(json.dumps(d)); bad["mappings"][0]["config"]["access"] = "write"
json.dump(bad, open(sys.argv[2] + ".access", "w"))
bad = json.loads(json.dumps(d)); bad["mappings"][2]["config"]["colour"] = "red"
json.dump(bad, open(sys.argv[2] + ".unknown", "w"))
bad = json.loads(json.dumps(d)); bad["version"] = 2
json.dump(bad, open(sys.argv[2] + ".version", "w"))' "$WORK/export.json" "$WORK/import.json"
same 400 "$(api POST "/api/v3/connections/$HC_ID/actions/import" --data-binary @"$WORK/import.json.access")" \
    "import with a bad access: 400"
check "the message names the key" grep -q 'mappings\[0\].config.access' "$WORK/body"
same 400 "$(api POST "/api/v3/connections/$HC_ID/actions/import" --data-binary @"$WORK/import.json.unknown")" \
    "import with an unknown key: 400"
check "the message names it" grep -q 'mappings\[2\].config.colour: unknown key' "$WORK/body"
same 400 "$(api POST "/api/v3/connections/$HC_ID/actions/import" --data-binary @"$WORK/import.json.version")" \
    "import of version 2: 400"
check "the message names version" grep -q '"invalid import file: version' "$WORK/body"
same 400 "$(api POST "/api/v3/connections/$HC_ID/actions/import" --data-binary 'not json')" "import of no JSON: 400"
same 0 "$(curl -s "$BASE/_sim/imports" | jget 'len(d["imports"])')" "refused imports are not recorded"
same 2 "$(deep | jget 'len(d["mappings"])')" "and changed nothing"
same 202 "$(api POST "/api/v3/connections/$HC_ID/actions/import" --data-binary @"$WORK/import.json")" "import: 202"
same "['Lead'] ['Account', 'Contact']" "$(jget '"%s %s" % (d["created"], d["updated"])' <"$WORK/body")" \
    "import: Lead created, the others updated"
same "1 Lead" "$(curl -s "$BASE/_sim/imports" | jget '"%d %s" % (len(d["imports"]), d["imports"][0]["file"]["mappings"][2]["object_name"])')" \
    "GET /_sim/imports gives the file back"
api GET "/api/v3/connections/$HC_ID/actions/export" >/dev/null
same "120 read_only" "$(jget '"%s %s" % (d["mappings"][1]["config"]["sf_polling_seconds"], d["mappings"][2]["config"]["access"])' \
    <"$WORK/body")" "the next export shows the imported config"

# stop; then nothing lost, nothing doubled but the crash's 5
kill -TERM "$SIM_PID"
wait "$SIM_PID"
same 0 $? "SIGTERM: the connect-log simulator exits 0"
SIM_PID=
same 0 "$(hc_log "state IN ('NEW', 'PENDING')")" "no entry is left NEW or PENDING"
check "--verify --connect-log at the end" hc_verify_ok
same 5 "$(psql_at hcmirror "SELECT count(*) - count(DISTINCT entry_id) FROM _sim_connect_deliveries")" \
    "no entry was sent twice apart from the crash's 5"
same "$(hc_log "state IN ('SUCCESS', 'FAILED')")" "$(psql_at hcmirror "SELECT count(DISTINCT entry_id) FROM _sim_connect_deliveries")" \
    "every SUCCESS or FAILED entry was delivered"

if [ "$failed" != 0 ]; then
    echo "# simulator stderr (last 20 lines):"
    tail -20 "$WORK/sim.err" 2>/dev/null | sed 's/^/#   /'
fi
finish
