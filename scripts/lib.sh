# lib.sh: shared by scripts/*.sh and test/bench.  Sourced, not run.
#
# PostgreSQL refuses to run as root, and these scripts must work both for
# root on a fresh CI machine and for a developer with sudo.  So: packages
# and `make install` go through as_root, servers and tests run as
# RUN_USER (the `postgres` account when we are root, else ourselves), in
# directories RUN_USER owns.

set -euo pipefail

CG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
export PATH="$PG_BIN:$PATH"

if [ "$(id -u)" = 0 ]; then RUN_USER=postgres; else RUN_USER=$(id -un); fi

CG_APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libpq-dev
                 libcurl4-openssl-dev libipc-run-perl python3-psycopg2 curl make gcc
                 prometheus-postgres-exporter prometheus)
# the HA managers the changeover hands promotions to (test/t/021, 022; test/bench/ha):
# optional, their tests skip when these cannot be installed
CG_APT_HA_PACKAGES=(patroni etcd-server postgresql-15-auto-failover)

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# as_run_user runs a command as the account that may run servers.
as_run_user() {
    if [ "$(id -un)" = "$RUN_USER" ]; then "$@"; else runuser -u "$RUN_USER" -- "$@"; fi
}

# install_packages installs what is missing from the list it is given (or
# CG_APT_PACKAGES); apt-get update only runs when something must be fetched.
install_packages() {
    local missing=() p
    [ $# -gt 0 ] || set -- "${CG_APT_PACKAGES[@]}"
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# install_optional_packages installs what it can of a list, and says what it could not.
install_optional_packages() {
    install_packages "$@" || log "could not install $*: the tests that need them are skipped"
}

# build_and_install builds the extension and installs it into PostgreSQL 15.
build_and_install() {
    log "building and installing connect_guard"
    make -C "$CG_ROOT" -s PG_CONFIG="$PG_BIN/pg_config" >/dev/null
    as_root make -C "$CG_ROOT" -s PG_CONFIG="$PG_BIN/pg_config" install >/dev/null
}

# scratch_dir makes a temporary directory owned by RUN_USER.
scratch_dir() {
    local d
    d=$(mktemp -d "${TMPDIR:-/tmp}/connect_guard.$1.XXXXXX")
    chmod 755 "$d"
    [ "$(id -u)" = 0 ] && chown "$RUN_USER" "$d"
    echo "$d"
}

# cluster_init DIR PORT [conf lines...]: a throwaway cluster listening on a
# unix socket in DIR and on 127.0.0.1:PORT, with connect_guard preloaded.
cluster_init() {
    local dir=$1 port=$2; shift 2
    as_run_user initdb -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir'"
        echo "shared_preload_libraries = 'connect_guard'"
        echo "wal_level = replica"
        echo "max_wal_senders = 10"
        echo "fsync = off"
        for line in "$@"; do echo "$line"; done
    } | as_run_user tee -a "$dir/data/postgresql.conf" >/dev/null
}

# cluster_follower PRIMARY_DIR PRIMARY_PORT DIR PORT: a streaming standby of
# the cluster in PRIMARY_DIR (pg_basebackup, so it inherits its settings),
# listening in DIR and on PORT instead; not started.
cluster_follower() {
    local primary=$1 p_port=$2 dir=$3 port=$4
    as_run_user pg_basebackup -h "$primary" -p "$p_port" -U postgres -D "$dir/data" -R -X stream -c fast
    as_run_user sed -i "s/^port = .*/port = $port/; s|^unix_socket_directories = .*|unix_socket_directories = '$dir'|" \
        "$dir/data/postgresql.conf"
}

cluster_start() { as_run_user pg_ctl -D "$1/data" -l "$1/server.log" -w start >/dev/null; }
cluster_stop()  { as_run_user pg_ctl -D "$1/data" -m "${2:-fast}" -w stop >/dev/null 2>&1 || true; }

# free_port prints a TCP port nobody listens on.
free_port() {
    local p
    for p in $(seq "${1:-5440}" 5999); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port"
}
