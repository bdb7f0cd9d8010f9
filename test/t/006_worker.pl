# The launcher gives every database that has the extension a worker, and
# only those; a worker that is terminated comes back; dropping the
# extension stops it, even right after CREATE EXTENSION (the worker's
# steps wait for DROP EXTENSION or it for them, and a step that found the
# extension gone is skipped quietly); the worker archives consumed entries by itself; and
# without shared_preload_libraries the functions that need a worker say so.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test;

my $node = cg_node('workers', conf => "connect_guard.naptime = '100ms'");
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('postgres', 'CREATE DATABASE other');

my $workers = q{SELECT string_agg(coalesce(datname, '-'), ',' ORDER BY datname)
                  FROM pg_stat_activity WHERE backend_type = 'connect_guard worker'};
ok($node->poll_query_until('postgres',
    "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'connect_guard launcher'"),
    'the launcher runs');

$node->safe_psql('app', 'CREATE EXTENSION connect_guard');
ok($node->poll_query_until('postgres', "SELECT ($workers) = 'app'"),
    'a worker starts for the database that created the extension, and only there');

my $pid = $node->safe_psql('app', 'SELECT connect_guard.worker_pid()');
ok($pid > 0, 'connect_guard.worker_pid() knows it');
is($node->safe_psql('app', 'SELECT backend_type FROM connect_worker'), 'connect_guard worker',
    'connect_worker shows it');

$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok($node->poll_query_until('app',
    "SELECT connect_guard.worker_pid() IS NOT NULL AND connect_guard.worker_pid() <> $pid"),
    'a terminated worker is started again');

# the worker does retention on its own
$node->safe_psql('app', q{
    CREATE TABLE item (id int PRIMARY KEY);
    SELECT connect_create_connection('sync');
    SELECT connect_map_table('sync', 'item');
    INSERT INTO item SELECT generate_series(1, 50);
    SELECT connect_finish_batch(connect_next_batch('sync'));
    SELECT connect_next_batch('sync');
});
ok($node->poll_query_until('app',
    'SELECT (SELECT count(*) FROM connect_guard.trigger_log) = 0
        AND (SELECT count(*) FROM connect_guard.trigger_log_archive) = 50'),
    'the worker moved the consumed entries to the archive');

$node->safe_psql('app', 'DROP TABLE item');
$node->safe_psql('app', 'DROP EXTENSION connect_guard');
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'connect_guard worker'"),
    'dropping the extension stops its worker');

# DROP EXTENSION right after CREATE EXTENSION meets the new worker's first
# steps: each step holds the extension in share mode, so one waits for the
# other, and a step that waited for the drop is skipped quietly (it found
# the extension gone), never failing against the dropped objects nor
# deadlocking with DROP EXTENSION
$node->safe_psql('postgres', "ALTER SYSTEM SET connect_guard.naptime = '10ms'");
$node->reload;
my $log_offset = -s $node->logfile;
my ($loop_rc, $loop_out, $loop_err) = $node->psql('app',
    join('', map { "CREATE EXTENSION connect_guard;\nDROP EXTENSION connect_guard;\n" } 1 .. 200));
my @loop_errors = $loop_err =~ /^.*ERROR:.*$/mg;
is(scalar(@loop_errors), 0, '200 times CREATE EXTENSION then DROP EXTENSION at once: no error')
    or diag(join("\n", @loop_errors[0 .. ($#loop_errors > 4 ? 4 : $#loop_errors)]));
my $loop_log = slurp_file($node->logfile, $log_offset);
my @step_failures = $loop_log =~ /^.*(?:deadlock detected|connect_guard: .* failed: ).*$/mg;
is(scalar(@step_failures), 0, 'no worker step failed, nor deadlocked, meanwhile: a step that waited for the drop was skipped')
    or diag(join("\n", @step_failures[0 .. ($#step_failures > 4 ? 4 : $#step_failures)]));
$node->safe_psql('postgres', 'ALTER SYSTEM RESET connect_guard.naptime');
$node->reload;
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'connect_guard worker'"),
    'and no worker is left');

$node->restart;
$node->safe_psql('other', 'CREATE EXTENSION connect_guard');
ok($node->poll_query_until('postgres', "SELECT ($workers) = 'other'"),
    'after a restart, workers follow where the extension is');

# without shared_preload_libraries
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''");
$node->restart;
my ($ret, $out, $err) = $node->psql('other', "SELECT connect_guard.require_worker('this call')");
like($err, qr/this call needs the connect_guard background worker/, 'no preload: a clear error');
like($err, qr/HINT:  Add connect_guard to shared_preload_libraries/, 'with the hint to add it');
is($node->safe_psql('postgres',
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'connect_guard%'"), '0',
    'and no worker runs');

$node->stop;
done_testing();
