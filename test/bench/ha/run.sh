#!/usr/bin/env bash
# test/bench/ha/run.sh: the write-blocked window of a follower changeover
# (fence up on the old primary to the first write accepted on the new one,
# as test/bench/changeover/run.sh measures it) when the promotion is
# connect_guard's own pg_promote(), a Patroni switchover, or a
# pg_auto_failover promotion, side by side in one run, under the same
# pgbench load.
#
# connect_guard's own: a fresh primary and streaming follower per round (its
# old primary stays fenced).  Patroni (one etcd, two members) and
# pg_auto_failover (a monitor, two nodes) are set up once; each round
# changes over from whichever member leads to the other, and waits for the
# HA manager to bring the old primary back as a replica.
#
#   bash test/bench/ha/run.sh    # BENCH_ROUNDS=3 BENCH_CLIENTS=4
source "$(dirname "$0")/../lib.sh"

rounds=${BENCH_ROUNDS:-3}
clients=${BENCH_CLIENTS:-4}

install_packages
install_packages "${CG_APT_HA_PACKAGES[@]}"
build_and_install

work=$(scratch_dir bench-ha)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 3
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for c in "$work"/own/r*/primary "$work"/own/r*/follower; do cluster_stop "$c" immediate; done
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
# servers that the HA managers start inherit what these say
sock=$work/sock
as_run_user mkdir -p "$sock" "$work/own" "$work/patroni" "$work/paf/xdg" "$work/witness"
psql_at() { local conninfo=$1; shift; as_run_user psql "$conninfo" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
# background runs RUN_USER's command in the background and remembers its pid
background() {
    local log=$1; shift
    as_run_user sh -c 'echo $$ > "$0.pid"; exec "$@"' "$log" "$@" >>"$log" 2>&1 &
    until [ -s "$log.pid" ]; do sleep 0.05; done
    pids+=("$(cat "$log.pid")")
}
wait_for() {   # wait_for SECONDS COMMAND...: until the command succeeds
    local until=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $until ] || die "timed out waiting for: $*"
        sleep 0.2
    done
}
bench_update_script "$work/update.sql"

# changeover LEADER FOLLOWER [promote_with endpoint]: one changeover under
# load; prints the window in ms
changeover() {
    local leader=$1 follower=$2 promote_with=${3:-connect_guard} endpoint=${4:-} plan ha='' first
    [ "$promote_with" = connect_guard ] || ha=", promote_with => '$promote_with', ha_endpoint => \$\$$endpoint\$\$"
    as_run_user pgbench -n -c "$clients" -j 2 -T 60 --max-tries 1 -f "$work/update.sql" "$leader" >/dev/null 2>&1 &
    local bench=$!
    sleep 2
    plan=$(psql_at "$leader" -c "SELECT connect_prepare_upgrade('follower', follower => \$\$$follower\$\$,
                                      max_lag_bytes => 64 * 1024 * 1024, timeout => '2 min'$ha)")
    psql_at "$leader" -c "SELECT connect_wait_upgrade($plan, 'ready', '2 min')" >/dev/null
    first=$(mktemp "$work/first.XXXXXX"); chmod 666 "$first"
    ( until psql_at "$follower" -c "UPDATE account SET balance = balance + 1 WHERE id = 1 RETURNING clock_timestamp()" \
            >"$first" 2>/dev/null; do sleep 0.005; done ) &
    local writer=$!
    psql_at "$leader" -c "SELECT connect_promote_follower($plan)" >/dev/null
    wait "$writer"
    kill "$bench" 2>/dev/null || true; wait "$bench" 2>/dev/null || true
    psql_at "$follower" -c "SELECT connect_wait_upgrade($plan, 'completed', '1 min')" >/dev/null
    psql_at "$follower" -c "SELECT round(extract(epoch FROM '$(cat "$first")'::timestamptz - finished_at) * 1000)
                              FROM connect_guard.upgrade_step WHERE plan_id = $plan AND step = 'fencing'"
}

# -- connect_guard's own promotion: a fresh pair per round -----------------------------

own_round() {
    local dir=$work/own/r$1 p_port f_port primary follower
    as_run_user mkdir -p "$dir/primary" "$dir/follower"
    p_port=$(free_port 5600); f_port=$(free_port $((p_port + 1)))
    primary="host=$dir/primary port=$p_port dbname=postgres user=postgres"
    follower="host=$dir/follower port=$f_port dbname=postgres user=postgres"
    cluster_init "$dir/primary" "$p_port" "connect_guard.naptime = '200ms'" "connect_guard.witness_directory = '$dir'"
    cluster_start "$dir/primary"
    bench_accounts "$primary"
    cluster_follower "$dir/primary" "$p_port" "$dir/follower" "$f_port"
    cluster_start "$dir/follower"
    changeover "$primary" "$follower"
    cluster_stop "$dir/primary" immediate; cluster_stop "$dir/follower" immediate
}

# -- Patroni: one etcd, two members ---------------------------------------------------

etcd_client=$(free_port 5700); etcd_peer=$(free_port $((etcd_client + 1)))
background "$work/patroni/etcd.log" /usr/bin/etcd --name e1 --data-dir "$work/patroni/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "e1=http://127.0.0.1:$etcd_peer"
declare -A pat_port pat_api
next=$((etcd_peer + 1))
for n in 1 2; do
    pat_port[$n]=$(free_port $next); pat_api[$n]=$(free_port $((pat_port[$n] + 1))); next=$((pat_api[$n] + 1))
    as_run_user tee "$work/patroni/node$n.yml" >/dev/null <<YML
scope: bench_ha
name: node$n
restapi: {listen: '127.0.0.1:${pat_api[$n]}', connect_address: '127.0.0.1:${pat_api[$n]}'}
etcd3: {host: '127.0.0.1:$etcd_client'}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 67108864
    postgresql: {use_pg_rewind: true, parameters: {wal_log_hints: 'on'}}
  initdb: [{encoding: UTF8}]
postgresql:
  listen: '127.0.0.1:${pat_port[$n]}'
  connect_address: '127.0.0.1:${pat_port[$n]}'
  data_dir: $work/patroni/node$n.data
  bin_dir: $PG_BIN
  pgpass: $work/patroni/node$n.pgpass
  authentication: {superuser: {username: postgres}, replication: {username: postgres}}
  parameters:
    unix_socket_directories: '$sock'
    shared_preload_libraries: connect_guard
    connect_guard.naptime: 200ms
    connect_guard.witness_directory: '$work/witness'
  pg_hba: ['local all all trust', 'host all all 127.0.0.1/32 trust', 'host replication all 127.0.0.1/32 trust']
YML
done
patroni_roles() { curl -sf "http://127.0.0.1:${pat_api[1]}/cluster" | /usr/bin/python3 -c \
    'import json, sys; print(" ".join(sorted(m["name"] + "=" + m["role"] + "/" + m["state"] for m in json.load(sys.stdin)["members"])))'; }
patroni_is() { [ "$(patroni_roles)" = "$1" ]; }
log "Patroni: node1 bootstraps, node2 clones it"
background "$work/patroni/node1.log" env PATH=/usr/bin:/bin /usr/bin/patroni "$work/patroni/node1.yml"
wait_for 90 patroni_is "node1=leader/running"
bench_accounts "host=$sock port=${pat_port[1]} dbname=postgres user=postgres"
background "$work/patroni/node2.log" env PATH=/usr/bin:/bin /usr/bin/patroni "$work/patroni/node2.yml"
wait_for 120 patroni_is "node1=leader/running node2=replica/running"
pat_leader=1

patroni_round() {
    local from=$pat_leader to=$((3 - pat_leader))
    changeover "host=$sock port=${pat_port[$from]} dbname=postgres user=postgres" \
               "host=$sock port=${pat_port[$to]} dbname=postgres user=postgres" patroni "http://127.0.0.1:${pat_api[$from]}"
    pat_leader=$to
    wait_for 120 patroni_is "$(if [ $to = 1 ]; then echo "node1=leader/running node2=replica/running"; \
                               else echo "node1=replica/running node2=leader/running"; fi)"
}

# -- pg_auto_failover: a monitor, two nodes ---------------------------------------------

monitor_bin=$PG_BIN
[ -e "$("$PG_BIN/pg_config" --sharedir)/extension/pgautofailover.control" ] || monitor_bin=/usr/lib/postgresql/15/bin
# pg_autoctl reaches its local servers through PGHOST, and keeps its state under XDG_*
paf_env=(env PGHOST="$sock" XDG_CONFIG_HOME="$work/paf/xdg" XDG_DATA_HOME="$work/paf/xdg" XDG_RUNTIME_DIR="$work/paf/xdg")
paf() { as_run_user "${paf_env[@]}" "$@"; }
declare -A paf_port
paf_port[m]=$(free_port $next); paf_port[1]=$(free_port $((paf_port[m] + 1))); paf_port[2]=$(free_port $((paf_port[1] + 1)))
monitor="host=$sock port=${paf_port[m]} dbname=pg_auto_failover user=autoctl_node"
log "pg_auto_failover: a monitor, node1, node2"
as_run_user "$monitor_bin/initdb" -D "$work/paf/monitor" -A trust -U postgres --no-sync >/dev/null
echo "unix_socket_directories = '$sock'" | as_run_user tee -a "$work/paf/monitor/postgresql.conf" >/dev/null
paf /usr/bin/pg_autoctl create monitor --pgdata "$work/paf/monitor" --pgport "${paf_port[m]}" --hostname 127.0.0.1 \
    --auth trust --no-ssl --pgctl "$monitor_bin/pg_ctl" >"$work/paf/monitor.create.log" 2>&1
background "$work/paf/monitor.log" "${paf_env[@]}" /usr/bin/pg_autoctl run --pgdata "$work/paf/monitor"
as_run_user initdb -D "$work/paf/node1" -A trust -U postgres --no-sync >/dev/null
printf "%s\n" "unix_socket_directories = '$sock'" "shared_preload_libraries = 'connect_guard'" \
    "connect_guard.naptime = '200ms'" "connect_guard.witness_directory = '$work/witness'" "shared_buffers = '128MB'" |
    as_run_user tee -a "$work/paf/node1/postgresql.conf" >/dev/null
paf_states() { psql_at "$monitor" -c "SELECT string_agg(nodename || '=' || reportedstate || '/' || goalstate, ' ' ORDER BY nodename) FROM pgautofailover.node"; }
paf_is() { [ "$(paf_states)" = "$1" ]; }
for n in 1 2; do
    wait_for 60 psql_at "$monitor" -c "SELECT 1"
    paf /usr/bin/pg_autoctl create postgres --pgdata "$work/paf/node$n" --pgport "${paf_port[$n]}" --hostname 127.0.0.1 \
        --name "node$n" --monitor "postgres://autoctl_node@127.0.0.1:${paf_port[m]}/pg_auto_failover?sslmode=disable" \
        --auth trust --no-ssl --pgctl "$PG_BIN/pg_ctl" --pghost "$sock" >"$work/paf/node$n.create.log" 2>&1
    background "$work/paf/node$n.log" "${paf_env[@]}" /usr/bin/pg_autoctl run --pgdata "$work/paf/node$n"
    if [ $n = 1 ]; then
        wait_for 60 psql_at "host=$sock port=${paf_port[1]} dbname=postgres user=postgres" -c "SELECT 1"
        bench_accounts "host=$sock port=${paf_port[1]} dbname=postgres user=postgres"
    fi
done
wait_for 120 paf_is "node1=primary/primary node2=secondary/secondary"
paf_leader=1

paf_round() {
    local from=$paf_leader to=$((3 - paf_leader))
    changeover "host=$sock port=${paf_port[$from]} dbname=postgres user=postgres" \
               "host=$sock port=${paf_port[$to]} dbname=postgres user=postgres" pg_auto_failover "$monitor"
    paf_leader=$to
    wait_for 120 paf_is "$(if [ $to = 1 ]; then echo "node1=primary/primary node2=secondary/secondary"; \
                           else echo "node1=secondary/secondary node2=primary/primary"; fi)"
}

# -- rounds, interleaved ----------------------------------------------------------------

own=() pat=() af=()
printf '\n%5s %18s %12s %20s   (write-blocked window, ms; %s pgbench clients)\n' round connect_guard patroni pg_auto_failover "$clients"
# (not in $(...): the rounds keep who leads in this shell)
for r in $(seq 1 "$rounds"); do
    own_round "$r" >"$work/out" 2>>"$work/errors.log"; own+=("$(tail -1 "$work/out")")
    patroni_round >"$work/out" 2>>"$work/errors.log"; pat+=("$(tail -1 "$work/out")")
    paf_round >"$work/out" 2>>"$work/errors.log"; af+=("$(tail -1 "$work/out")")
    printf '%5s %18s %12s %20s\n' "$r" "${own[-1]}" "${pat[-1]}" "${af[-1]}"
done
m_own=$(median "${own[@]}"); m_pat=$(median "${pat[@]}"); m_af=$(median "${af[@]}")
echo
awk -v r="$rounds" -v o="$m_own" -v p="$m_pat" -v a="$m_af" 'BEGIN {
    printf "write-blocked window, median of %d: connect_guard %s ms, patroni %s ms (%.2fx), pg_auto_failover %s ms (%.2fx)\n",
           r, o, p, p / o, a, a / o }'
