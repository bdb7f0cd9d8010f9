#!/usr/bin/env bash
# test.sh: every test suite of connect_guard, on a fresh machine or not.
#   bash scripts/test.sh
# Installs the packages it needs, builds and installs the extension, then
# runs pg_regress and the isolation specs against a throwaway cluster and
# the TAP tests (which make their own clusters), all as an unprivileged user.
source "$(dirname "$0")/lib.sh"

install_packages
install_optional_packages "${CG_APT_HA_PACKAGES[@]}"
build_and_install

work=$(scratch_dir test)
trap 'cluster_stop "$work"; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

# The suites write results into the tree they run from, so they run from a
# copy that RUN_USER owns.
log "copying the tree to $work/src"
as_run_user mkdir "$work/src"
tar -C "$CG_ROOT" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . |
    as_run_user tar -C "$work/src" -xf -

port=$(free_port 5460)
# The regression outputs count what is in the hot log and the event log:
# the worker must not archive or write witness events behind their back
# (test/t/006_worker.pl and 012_rollback.pl test that it does).
cluster_init "$work" "$port" "connect_guard.archive_chunks = 0" "connect_guard.witness_directory = ''"
cluster_start "$work"

# Each suite runs even when an earlier one failed, so that one run shows
# every failure; the last line counts the suites.
suite() {
    local name=$1; shift
    log "$name"
    if as_run_user env PGHOST="$work" PGPORT="$port" PGUSER=postgres \
        make -C "$work/src" -s PG_CONFIG="$PG_BIN/pg_config" installcheck "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); failures+=("$name")
    fi
}
passed=0 failed=0 failures=()
suite "pg_regress (sql/)" ISOLATION= TAP_TESTS=
suite "isolation specs (test/isolation)" REGRESS= TAP_TESTS=
suite "TAP tests (test/t)" REGRESS= ISOLATION= ${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"}

log "Connect simulator self-test (test/simulator)"
if PGBIN="$PG_BIN" bash "$work/src/test/simulator/selftest.sh"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); failures+=("simulator self-test")
fi

# each part of the install script uses only what the parts before it create
log "install script parts in dependency order (scripts/check_sql_order.pl)"
if perl "$CG_ROOT/scripts/check_sql_order.pl"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); failures+=("install script order")
fi

# The Debian package is installed into /usr, tested there and purged: only
# when this run's PostgreSQL is /usr's (CI), not a private copy beside it.
if [ "$PG_BIN" = /usr/lib/postgresql/15/bin ]; then
    log "Debian package and PGXN META.json (scripts/package.sh)"
    if bash "$CG_ROOT/scripts/package.sh"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); failures+=("Debian package")
    fi
else
    log "PGXN META.json (the Debian package is not built: PG_BIN is not /usr's; see scripts/package.sh)"
    if /usr/bin/python3 "$CG_ROOT/scripts/check_meta.py" "$CG_ROOT/META.json"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); failures+=("META.json")
    fi
fi

for f in "$work"/src/results-regress/regression.diffs "$work"/src/results-isolation/regression.diffs; do
    if [ -s "$f" ]; then log "$f"; cat "$f"; fi
done
if [ $failed -ne 0 ] && [ -d "$work/src/tmp_check/log" ]; then
    for f in "$work"/src/tmp_check/log/regress_log_*; do
        log "$f (tail)"; tail -n 80 "$f"
    done
fi

[ $failed -eq 0 ] || log "failed: ${failures[*]}"
echo "test suites: $passed passed, $failed failed"
[ $failed -eq 0 ]
