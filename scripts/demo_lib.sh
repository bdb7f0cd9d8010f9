# demo_lib.sh: what the two acts of the demo share (scripts/demo.sh and
# scripts/demo_adopted.sh): three throwaway clusters and the Connect
# simulator in the background.  Sourced after lib.sh, not run.

# demo_clusters NAME BASE_PORT: $work (removed at exit with everything in
# it stopped; KEEP=1 keeps it) with the directories of the primary, the
# follower and "Salesforce"; the free ports p_port, f_port, s_port and
# sim_port from BASE_PORT on; the conninfos primary and follower (database
# app) and mirror (database salesforce)
demo_clusters() {
    work=$(scratch_dir "$1")
    trap demo_cleanup EXIT
    for c in primary follower salesforce; do as_run_user mkdir "$work/$c"; done
    p_port=$(free_port "$2"); f_port=$(free_port $((p_port + 1))); s_port=$(free_port $((f_port + 1)))
    sim_port=$(free_port $((s_port + 1)))
    primary="host=$work/primary port=$p_port dbname=app user=postgres"
    follower="host=$work/follower port=$f_port dbname=app user=postgres"
    mirror="host=$work/salesforce port=$s_port dbname=salesforce user=postgres"
}

demo_cleanup() {
    [ -n "${sim_pid:-}" ] && kill "$sim_pid" 2>/dev/null
    for c in primary follower salesforce; do cluster_stop "$work/$c" immediate; done
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}

psql_at() { local conninfo=$1; shift; as_run_user psql "$conninfo" -X -q -v ON_ERROR_STOP=1 "$@"; }

# sim_start [NAME=VALUE...] -- ARGS...: test/simulator/connect_sim.py ARGS in
# the background, with NAME=VALUE in its environment (a secret goes there,
# never on its command line), its output appended to $work/simulator.log.
# Its own pid is kept in sim_pid (not runuser's), so that sim_stop really
# stops it: two consumers of one connection would apply the same batch twice.
sim_start() {
    local env=()
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    as_run_user sh -c 'echo $$ > "$0/simulator.pid"; exec env PYTHONUNBUFFERED=1 "$@"' "$work" \
        "${env[@]}" /usr/bin/python3 "$CG_ROOT/test/simulator/connect_sim.py" "$@" >>"$work/simulator.log" 2>&1 &
    until [ -s "$work/simulator.pid" ]; do sleep 0.05; done
    sim_pid=$(cat "$work/simulator.pid")
}

# sim_stop: SIGTERM; the simulator finishes the batch or pass in hand, then exits
sim_stop() {
    kill "$sim_pid"
    while kill -0 "$sim_pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$work/simulator.pid"; sim_pid=
}
