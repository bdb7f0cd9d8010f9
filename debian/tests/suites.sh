# The pg_regress and isolation suites, run by `pg_buildext virtualenv`
# (sh -ex inside pg_virtualenv, from the top of the source tree) at build
# time (debian/rules) and against the installed package (tests/installcheck).
# The cluster preloads connect_guard (-o shared_preload_libraries) and allows
# prepared transactions (-o max_prepared_transactions: sql/preflight.sql); the
# outputs count what is in the log and the event log, so retention and the
# rollback witness are turned off as scripts/test.sh does (an empty value
# cannot be given with -o).  The TAP tests make their own clusters and run
# from scripts/test.sh.
psql -X -v ON_ERROR_STOP=1 -c "ALTER SYSTEM SET connect_guard.witness_directory = ''" \
    -c "ALTER SYSTEM SET connect_guard.archive_chunks = 0" -c "SELECT pg_reload_conf()"
until [ "$(psql -XAtc 'SHOW connect_guard.archive_chunks')" = 0 ]; do sleep 0.1; done
if ! make installcheck PG_CONFIG="/usr/lib/postgresql/$PGVERSION/bin/pg_config" TAP_TESTS=; then
    cat results-regress/regression.diffs results-isolation/regression.diffs 2>/dev/null || true
    exit 1
fi
make clean PG_CONFIG="/usr/lib/postgresql/$PGVERSION/bin/pg_config"
