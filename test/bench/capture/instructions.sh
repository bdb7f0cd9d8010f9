#!/usr/bin/env bash
#
# Instructions per captured row, counted by valgrind (callgrind), for every
# variant and workload of the capture benchmark: a measure that the machine's
# load cannot disturb.  Called by run.sh (BENCH_INSTRUCTIONS=1) on its own
# cluster, stopped: each variant runs in single-user mode, after a reset, and
# only the statements' execution and commit are counted (PortalRun and
# CommitTransactionCommand), not the parsing and planning, which are the same
# for every variant.
#
#   instructions.sh DATA_DIR TABLE_ROWS BULK_ROWS "WORKLOADS" "VARIANTS"
#
# Environment: PG_BIN; AS_PG_USER (run postgres as that user, when root).
set -euo pipefail

DATA=$1 NROWS=$2 BULK=$3 WORKLOADS=$4 VARIANTS=$5
WORK=$(mktemp -d /tmp/connect_guard_instructions.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[ -z "${AS_PG_USER:-}" ] || chown "$AS_PG_USER" "$WORK"

pg() { if [ -n "${AS_PG_USER:-}" ]; then runuser -u "$AS_PG_USER" -- "$@"; else "$@"; fi; }
single() { pg "$PG_BIN/postgres" --single -D "$DATA" bench; }

# statements per measurement: about 20000 rows changed in each
declare -A COUNT=([update_1row]=2000 [insert_1row]=2000 [update_bulk]=$((20000 / BULK + 1)) [insert_bulk]=$((20000 / BULK + 1)))

# workload_sql WORKLOAD TABLE: the statements, one per line (single-user
# mode ends a statement at a newline), with the same values for every variant
workload_sql() {
    local w=$1 tbl=$2 i start
    RANDOM=42
    for i in $(seq 1 "${COUNT[$w]}"); do
        case $w in
        update_1row)
            echo "UPDATE $tbl SET v = v + 1, systemmodstamp = now() WHERE id = $(( (RANDOM * 32768 + RANDOM) % NROWS + 1 ));" ;;
        insert_1row)
            echo "INSERT INTO $tbl (name, email, phone, amount, systemmodstamp, createddate, description) VALUES ('New contact $i', 'new$i@example.com', '+1 555 0000', $i / 100.0, now(), now(), 'Lead from web form ' || md5('$i'));" ;;
        update_bulk)
            start=$(( (RANDOM * 32768 + RANDOM) % (NROWS - BULK) + 1 ))
            echo "UPDATE $tbl SET v = v + 1, systemmodstamp = now() WHERE id BETWEEN $start AND $((start + BULK - 1));" ;;
        insert_bulk)
            echo "INSERT INTO $tbl (name, email, phone, amount, systemmodstamp, createddate, description) SELECT 'New contact ' || ($i * $BULK + g), 'new' || ($i * $BULK + g) || '@example.com', '+1 555 0000', g / 100.0, now(), now(), 'Lead from web form ' || md5(($i * $BULK + g)::text) FROM generate_series(1, $BULK) g;" ;;
        esac
    done
}

# the logs to empty before each measurement (PgQ's by its queue's prefix)
PGQ_EVENTS=$(echo "SELECT 'pgq_events=' || queue_data_pfx FROM pgq.queue WHERE queue_name = 'bench';" |
    single 2>/dev/null | sed -n 's/.*"pgq_events=\(.*\)".*/\1/p' | head -1)
[ -n "$PGQ_EVENTS" ] || { echo "instructions.sh: no PgQ queue 'bench' found" >&2; exit 1; }

RESULTS=$WORK/instructions.tsv
for w in $WORKLOADS; do
    case $w in *bulk) rows=$BULK ;; *) rows=1 ;; esac
    for v in $VARIANTS; do
        tbl=bench_$v
        # the reload captured by nobody (reset.sql says why connect_guard's way differs)
        quiet='SET session_replication_role = replica;'
        [ "$v" != connect_guard ] || quiet='SET connect_guard.capture = off;'
        cat >"$WORK/reset.sql" <<SQL
$quiet
TRUNCATE $tbl;
INSERT INTO $tbl SELECT * FROM bench_seed;
RESET session_replication_role;
RESET connect_guard.capture;
SELECT setval(pg_get_serial_sequence('$tbl', 'id'), $NROWS);
TRUNCATE salesforce._trigger_log, stmt.trigger_log, connect_guard.trigger_log, $PGQ_EVENTS;
VACUUM ANALYZE $tbl;
CHECKPOINT;
SQL
        workload_sql "$w" "$tbl" >"$WORK/workload.sql"
        [ -z "${AS_PG_USER:-}" ] || chown "$AS_PG_USER" "$WORK"/*.sql
        single <"$WORK/reset.sql" >/dev/null 2>&1
        out=$WORK/callgrind.$w.$v
        pg valgrind --tool=callgrind --callgrind-out-file="$out" \
            --toggle-collect=PortalRun --toggle-collect=CommitTransactionCommand \
            "$PG_BIN/postgres" --single -D "$DATA" bench <"$WORK/workload.sql" >"$WORK/single.log" 2>"$WORK/valgrind.log" ||
            { cat "$WORK/valgrind.log" >&2; exit 1; }
        if grep -q 'ERROR' "$WORK/single.log"; then
            grep -m3 'ERROR' "$WORK/single.log" >&2; exit 1
        fi
        total=$(sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$out" | head -1)
        printf '%s\t%s\t%s\t%s\n' "$w" "$v" "$((COUNT[$w] * rows))" "$total" >>"$RESULTS"
        printf '  %-12s %-14s %12d instructions per row\n' "$w" "$v" "$((total / (COUNT[$w] * rows)))"
    done
done

# every variant against none, then connect_guard against the others
awk -F'\t' '
    { ir[$1 "," $2] = $4 / $3; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
    END {
        printf "\n  %-12s %-14s %14s %14s\n", "workload", "variant", "instr./row", "added/row"
        for (i = 1; i <= n; i++) {
            w = order[i]; base = ir[w ",none"]
            split("none plpgsql pgq plpgsql_stmt connect_guard", vs, " ")
            for (j = 1; j <= 5; j++) if ((w "," vs[j]) in ir)
                printf "  %-12s %-14s %14.0f %14.0f\n", w, vs[j], ir[w "," vs[j]], ir[w "," vs[j]] - base
        }
        printf "\n  connect_guard'"'"'s added instructions per row as a fraction of the others'"'"'\n"
        printf "  %-12s %16s %12s %12s\n", "workload", "÷ plpgsql_stmt", "÷ plpgsql", "÷ pgq"
        for (i = 1; i <= n; i++) {
            w = order[i]; base = ir[w ",none"]; cg = ir[w ",connect_guard"] - base
            printf "  %-12s %16.2f %12.2f %12.2f\n", w, cg / (ir[w ",plpgsql_stmt"] - base),
                cg / (ir[w ",plpgsql"] - base), cg / (ir[w ",pgq"] - base)
        }
    }' "$RESULTS"
