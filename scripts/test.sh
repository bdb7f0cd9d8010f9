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

# The same pg_regress and isolation tests again, on installs updated from
# the first release: a copy of the tree in which every test creates the
# extension at that version and updates it (ALTER EXTENSION ... UPDATE),
# in its script and its expected output alike (isolation specs create it in
# their setup, which the output does not show).  sql/versions.sql compares
# the two kinds of install object by object; this shows they also behave
# the same.
base=$(cd "$CG_ROOT/extension" && ls connect_guard--*.sql | sed -n 's/^connect_guard--\([0-9.]*\)\.sql$/\1/p' | head -n 1)
[ -n "$base" ] || die "no frozen install script (extension/connect_guard--VERSION.sql)"
log "copying the tree to $work/updated, where the tests update the extension from $base"
as_run_user cp -a "$work/src" "$work/updated"
(cd "$work/updated" &&
    as_run_user sed -i "s/^\( *\)CREATE EXTENSION connect_guard;\$/\1CREATE EXTENSION connect_guard VERSION '$base';\n\1ALTER EXTENSION connect_guard UPDATE;/" \
        sql/*.sql expected/*.out test/isolation/specs/*.spec &&
    ! grep -n 'CREATE EXTENSION connect_guard\b' sql/*.sql expected/*.out test/isolation/specs/*.spec |
        grep -v "VERSION '$base';\$" &&
    [ "$(cat sql/*.sql | grep -c '^ *ALTER EXTENSION connect_guard UPDATE;$')" -gt 10 ] &&
    [ "$(cat test/isolation/specs/*.spec | grep -c '^ *ALTER EXTENSION connect_guard UPDATE;$')" -gt 0 ]) ||
    die "the tests' CREATE EXTENSION connect_guard could not all be made to update from $base (the lines above)"

port=$(free_port 5460)
# The regression outputs count what is in the hot log and the event log:
# the worker must not archive or write witness events behind their back
# (test/t/006_worker.pl and 012_rollback.pl test that it does).  sql/preflight.sql
# prepares a transaction.
cluster_init "$work" "$port" "connect_guard.archive_chunks = 0" "connect_guard.witness_directory = ''" \
    "max_prepared_transactions = 2"
cluster_start "$work"

# Each suite runs even when an earlier one failed, so that one run shows
# every failure; the last line counts the suites.
suite() {
    local name=$1 tree=$2; shift 2
    log "$name"
    if as_run_user env PGHOST="$work" PGPORT="$port" PGUSER=postgres \
        make -C "$tree" -s PG_CONFIG="$PG_BIN/pg_config" installcheck "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); failures+=("$name")
    fi
}
passed=0 failed=0 failures=()
suite "pg_regress (sql/)" "$work/src" ISOLATION= TAP_TESTS=
suite "isolation specs (test/isolation)" "$work/src" REGRESS= TAP_TESTS=
suite "pg_regress and isolation specs on installs updated from $base" "$work/updated" TAP_TESTS=
suite "TAP tests (test/t)" "$work/src" REGRESS= ISOLATION= ${PROVE_TESTS:+PROVE_TESTS="$PROVE_TESTS"}

log "Connect simulator self-test (test/simulator)"
if PGBIN="$PG_BIN" bash "$work/src/test/simulator/selftest.sh"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); failures+=("simulator self-test")
fi

# the C sources stay in pgindent's style (pg_bsd_indent, scripts/format/)
log "C sources in pgindent's style (scripts/check_format.sh)"
if bash "$CG_ROOT/scripts/check_format.sh"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); failures+=("format check (bash scripts/check_format.sh --fix)")
fi

# each part of the install script uses only what the parts before it create
log "install script parts in dependency order (scripts/check_sql_order.pl)"
if perl "$CG_ROOT/scripts/check_sql_order.pl"; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); failures+=("install script order")
fi

# the released install script is the freeze of its parts, not edited by hand
if git -C "$CG_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    log "the frozen install script of $base (scripts/freeze_release.sh --check)"
    if bash "$CG_ROOT/scripts/freeze_release.sh" --check "$base"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); failures+=("frozen $base install script")
    fi
else
    log "the frozen install script of $base is not checked: the tree is not a git checkout"
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

for f in "$work"/{src,updated}/results-regress/regression.diffs "$work"/{src,updated}/results-isolation/regression.diffs; do
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
