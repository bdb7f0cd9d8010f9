#!/usr/bin/env bash
#
# Capture-trigger overhead: how much a row change costs with no trigger,
# with a Heroku-Connect-style PL/pgSQL hstore row trigger, with PgQ's C
# trigger (pgq.logutriga), with PL/pgSQL statement-level triggers reading
# transition tables (jsonb, one INSERT ... SELECT per statement: the best a
# user can do without C) and with connect_guard's C capture trigger.
# Each run is measured twice: throughput (wall clock) and the CPU time its
# backend used (steadier on a shared machine); report.sql prints both, each
# against the no-trigger run of the same round.
#
#   test/bench/capture/run.sh            # about 7 minutes
#   BENCH_SECONDS=2 BENCH_ROUNDS=1 test/bench/capture/run.sh   # smoke test
#
# Settings (environment):
#   BENCH_SECONDS   length of one pgbench run (default 4)
#   BENCH_ROUNDS    rounds; every round runs every workload on every variant (default 5)
#   BENCH_ROWS      rows in each table (default 100000)
#   BENCH_BULK      rows per bulk statement (default 1000)
#   BENCH_CLIENTS   pgbench clients (default 1: latency per statement is then 1/tps)
#   BENCH_WORKLOADS subset of "update_1row insert_1row update_bulk insert_bulk"
#   BENCH_CONNECT_EXTRAS=1  add the rest of what Connect installs to the PL/pgSQL
#                   variant (get_xmlbinary() guard, NOTIFY per log row)
#   BENCH_PRELOAD=1 load connect_guard through shared_preload_libraries: its
#                   write-fence hooks then run in every variant's statements
#   BENCH_PORT      port of the throwaway cluster (default 5491; unix socket only)
#   BENCH_INSTRUCTIONS=1  then count instructions per row with valgrind
#                   (instructions.sh: single-user mode, about 10 more minutes)
#   BENCH_KEEP=1    keep the cluster's directory (for a look at the logs)
#   PG_BIN          PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#
# Runs as root (the cluster runs as postgres, through runuser) or as any
# other user (the cluster runs as that user).  connect_guard must be
# installed (make install); PgQ and hstore are installed here when missing
# and running as root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_SECONDS=${BENCH_SECONDS:-4}
ROUNDS=${BENCH_ROUNDS:-5}
NROWS=${BENCH_ROWS:-100000}
BULK=${BENCH_BULK:-1000}
CLIENTS=${BENCH_CLIENTS:-1}
WORKLOADS=${BENCH_WORKLOADS:-update_1row insert_1row update_bulk insert_bulk}
EXTRAS=${BENCH_CONNECT_EXTRAS:-0}
PRELOAD=${BENCH_PRELOAD:-0}
PORT=${BENCH_PORT:-5491}
INSTRUCTIONS=${BENCH_INSTRUCTIONS:-0}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
# none first in every round: each variant is compared with the baseline of
# its own round, measured moments before it, never with one from a quieter
# or busier minute of this noisy machine
VARIANTS="none plpgsql pgq plpgsql_stmt connect_guard"

die() { echo "run.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites

if [ "$(id -u)" -eq 0 ]; then
    # PostgreSQL refuses to run as root
    AS_PG=(runuser -u postgres --)
else
    AS_PG=()
fi
pg() { "${AS_PG[@]}" "$@"; }

missing=()
for pkg in postgresql-15-pgq3 postgresql-contrib $([ "$INSTRUCTIONS" = 1 ] && echo valgrind); do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}: install them as root (apt-get install -y ${missing[*]})"
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x "$PG_BIN/pgbench" ] || die "no pgbench in $PG_BIN (set PG_BIN)"
SHAREDIR=$("$PG_BIN/pg_config" --sharedir)
PKGLIBDIR=$("$PG_BIN/pg_config" --pkglibdir)
[ -f "$SHAREDIR/extension/connect_guard.control" ] ||
    die "connect_guard is not installed for $("$PG_BIN/pg_config" --version): run make install first"
# the bench measures what is installed, which may not be what is in the tree
REPO=$(cd "$HERE/../../.." && pwd)
if [ -n "$(find "$REPO/src" "$REPO/include" -newer "$PKGLIBDIR/connect_guard.so" -name '*.[ch]' 2>/dev/null)" ]; then
    echo "NOTE: sources in $REPO are newer than the installed connect_guard.so; run make install to measure them" >&2
fi

for w in $WORKLOADS; do
    [ -f "$HERE/$w.sql" ] || die "unknown workload $w"
done

# ---------------------------------------------------------------- cluster

WORK=$(mktemp -d /tmp/connect_guard_bench.XXXXXX)
# the postgres account must be able to write the cluster and read the scripts
cp "$HERE"/*.sql "$WORK"/
[ ${#AS_PG[@]} -eq 0 ] || chown -R postgres: "$WORK"
cleanup() {
    if [ -f "$WORK/data/postmaster.pid" ]; then
        pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export PGHOST=$WORK PGPORT=$PORT PGDATABASE=bench
pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 ||
    { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = $PORT
shared_buffers = 512MB
# Durability stays on (fsync, full_page_writes), but commits do not wait for
# the WAL flush: otherwise the single-row runs would time the disk's flush
# latency, the same for every variant, instead of the triggers.
synchronous_commit = off
# Checkpoints and vacuums happen between runs (reset.sql), never inside one,
# where they would land on whichever variant happened to be running.
autovacuum = off
checkpoint_timeout = 1h
max_wal_size = 16GB
EOF
if [ "$PRELOAD" = 1 ]; then
    echo "shared_preload_libraries = 'connect_guard'" >>"$WORK/data/postgresql.conf"
fi
pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null ||
    { cat "$WORK/server.log" >&2; die "server did not start"; }
pg "$PG_BIN/createdb" bench

psql_q() { pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_q -v extras="$EXTRAS" -v nrows="$NROWS" -f "$WORK/setup.sql" >/dev/null

# ---------------------------------------------------------------- runs

pg_value() { pg "$PG_BIN/psql" -X -Atc "$1"; }
# the logs' index counts explain much of the per-row cost: keep them in sight
LOG_INDEXES=$(pg_value "
    SELECT format('plpgsql %s (Connect''s), pgq %s, plpgsql_stmt %s, connect_guard %s',
                  (SELECT count(*) FROM pg_index WHERE indrelid = 'salesforce._trigger_log'::regclass),
                  (SELECT count(*) FROM pg_index i, pgq.queue q
                    WHERE q.queue_name = 'bench'
                      AND i.indrelid = (q.queue_data_pfx || '_' || q.queue_cur_table)::regclass),
                  (SELECT count(*) FROM pg_index WHERE indrelid = 'stmt.trigger_log'::regclass),
                  (SELECT count(*) FROM pg_index WHERE indrelid = 'connect_guard.trigger_log'::regclass))")
if [ "$EXTRAS" = 1 ]; then
    PLPGSQL_NOTE="Connect's hstore logger + its get_xmlbinary() guard + NOTIFY per log row"
else
    PLPGSQL_NOTE="Connect's hstore logger only (BENCH_CONNECT_EXTRAS=1 adds its get_xmlbinary() guard and NOTIFY)"
fi
cat <<EOF
connect_guard capture benchmark
  $(pg_value 'SELECT version()')
  $(pg_value "SELECT string_agg(extname || ' ' || extversion, ', ' ORDER BY extname) FROM pg_extension WHERE extname IN ('connect_guard', 'pgq', 'hstore')")
  $NROWS rows per table, bulk statements of $BULK rows, $CLIENTS client(s), ${RUN_SECONDS}s per run, $ROUNDS round(s)
  synchronous_commit=off (fsync on): single-row runs time the triggers, not the WAL flush
  before every run: table reloaded, all logs truncated, VACUUM ANALYZE, CHECKPOINT
  PL/pgSQL variant: $PLPGSQL_NOTE
  indexes on the trigger logs: $LOG_INDEXES
  shared_preload_libraries = '$(pg_value 'SHOW shared_preload_libraries')'$( [ "$PRELOAD" = 1 ] || echo ' (BENCH_PRELOAD=1 preloads connect_guard)')

EOF

# CPU time of the run's backends: the postmaster's cutime + cstime
# (/proc/PID/stat fields 16 and 17, in clock ticks), which grow by a
# backend's CPU time when it exits and is reaped.  On a shared machine this
# is much steadier than throughput, which also counts the time the backend
# waited for a CPU.  Read only once no client backend is left.
POSTMASTER_PID=$(head -1 "$WORK/data/postmaster.pid")
TICK_US=$((1000000 / $(getconf CLK_TCK)))
backends_gone() {
    local i pid
    for i in $(seq 1 500); do
        local busy=0
        for pid in $(pgrep -P "$POSTMASTER_PID"); do
            if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '\[local\]'; then busy=1; break; fi
        done
        [ $busy = 0 ] && return 0
        sleep 0.01
    done
    die "client backends did not exit"
}
children_cpu_ticks() { awk '{ print $16 + $17 }' "/proc/$POSTMASTER_PID/stat"; }

RESULTS=$WORK/results.tsv
: >"$RESULTS"
[ ${#AS_PG[@]} -eq 0 ] || chown postgres: "$RESULTS"

for round in $(seq 1 "$ROUNDS"); do
    for w in $WORKLOADS; do
        case $w in *bulk) rows=$BULK ;; *) rows=1 ;; esac
        for v in $VARIANTS; do
            psql_q -v tbl="bench_$v" -v nrows="$NROWS" -f "$WORK/reset.sql" >/dev/null
            log=$WORK/pgbench.$round.$w.$v.log
            backends_gone
            ticks_before=$(children_cpu_ticks)
            # simple protocol: the only one in which :tbl may name a table
            if ! pg "$PG_BIN/pgbench" -n -M simple -c "$CLIENTS" -j "$CLIENTS" -T "$RUN_SECONDS" \
                    -D tbl="bench_$v" -D nrows="$NROWS" -D rows="$rows" \
                    -f "$WORK/$w.sql" >"$log" 2>&1; then
                cat "$log" >&2
                die "pgbench failed: round $round, $w, $v"
            fi
            backends_gone
            cpu_us=$((($(children_cpu_ticks) - ticks_before) * TICK_US))
            tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$log")
            tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
            if [ -z "$tps" ] || [ -z "$tx" ] || [ "$tx" -eq 0 ]; then
                cat "$log" >&2
                die "no result from pgbench: round $round, $w, $v"
            fi
            captured=$(pg_value "SELECT bench_captured('$v')")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$w" "$v" "$rows" "$tps" "$tx" "$captured" "$cpu_us" >>"$RESULTS"
            printf 'round %d/%d  %-12s %-14s %10.1f tps  %7.2f CPU µs/row  %9d rows changed, %9d captured\n' \
                "$round" "$ROUNDS" "$w" "$v" "$tps" "$(awk -v us="$cpu_us" -v n=$((tx * rows)) 'BEGIN { print us / n }')" \
                $((tx * rows)) "$captured"
        done
    done
done

# ---------------------------------------------------------------- report

psql_q -f "$WORK/report.sql" <"$RESULTS"

if [ "$INSTRUCTIONS" = 1 ]; then
    echo
    echo "Instructions per row (valgrind --tool=callgrind, single-user mode: the machine's load does not change them)"
    pg "$PG_BIN/pg_ctl" -D "$WORK/data" -w stop >/dev/null
    AS_PG_USER=$([ ${#AS_PG[@]} -eq 0 ] || echo postgres) PG_BIN=$PG_BIN \
        bash "$HERE/instructions.sh" "$WORK/data" "$NROWS" "$BULK" "$WORKLOADS" "$VARIANTS"
fi
