# An upgrade by copy, under pgbench load with a consumer: the plan fences
# the database, the consumer drains the backlog (draining), the plan pauses
# the connection (pausing) and is ready; pg_dump -Fc | pg_restore copies the
# database into a new one, where connect_complete_upgrade() completes the
# plan; the consumer goes on there and new writes on the copy are captured
# and delivered.  Counting: every committed write reached the log once and
# was delivered once, before or after the copy.
#
# The database-wide fence blocks every table of the source database, so the
# consumer keeps its own record of deliveries in another database ('sink'),
# as a sync service keeps its state outside the database it drains: it
# records a batch's entries there, then finishes the batch (the README's
# order: commit your side first, then connect_finish_batch()).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('copy');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'connect_guard'
connect_guard.naptime = '200ms'
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE DATABASE source;
    CREATE DATABASE sink;
});
$node->safe_psql('sink', 'CREATE TABLE consumed (entry_id bigint, batch_id bigint, via text)');
$node->safe_psql('source', q{
    CREATE EXTENSION connect_guard;
    CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
    INSERT INTO account SELECT g FROM generate_series(1, 100) g;
    CREATE TABLE writes (n bigserial PRIMARY KEY, account_id int);
    SELECT connect_create_connection('sync');
    SELECT connect_map_table('sync', 'account');
});
# the plans need the database's worker
$node->poll_query_until('source', 'SELECT connect_guard.worker_pid() IS NOT NULL') or die 'no worker';
my $log = '(SELECT id FROM connect_guard.trigger_log UNION ALL SELECT id FROM connect_guard.trigger_log_archive)';

my $script = $node->basedir . '/writes.sql';
append_to_file($script, q{
\set id random(1, 100)
BEGIN;
UPDATE account SET balance = balance + 1 WHERE id = :id;
INSERT INTO writes (account_id) VALUES (:id);
END;
});

# consume takes batches of $db until none is left (or $max were taken)
sub consume
{
    my ($db, $max) = @_;
    my $n = 0;
    while (!defined $max || $n < $max)
    {
        my ($rc, $b) = $node->psql($db, "SELECT connect_next_batch('sync')");
        last if $rc != 0 || $b eq '';
        my $ids = $node->safe_psql($db, "SELECT coalesce(string_agg(id::text, ','), '') FROM connect_batch_events($b)");
        $node->safe_psql('sink', "INSERT INTO consumed SELECT unnest('{$ids}'::bigint[]), $b, '$db'");
        $node->safe_psql($db, "SELECT connect_finish_batch($b)");
        $n++;
    }
    return $n;
}

sub write_error
{
    my ($db, $sql) = @_;
    my ($rc, $o, $e) = $node->psql($db, "\\set VERBOSITY sqlstate\n$sql");
    return $rc == 0 ? '' : ($e =~ /ERROR:\s+(\w{5})/ ? $1 : $e);
}

sub status
{
    my ($db, $plan) = @_;
    return $node->safe_psql($db, "SELECT status || ' ' || step FROM connect_upgrade_status WHERE plan = $plan");
}

my ($out, $err) = ('', '');
my $bench = IPC::Run::start(
    [ 'pgbench', '-n', '-c', '2', '-T', '5', '--max-tries', '1', '-f', $script, $node->connstr('source') ],
    '>', \$out, '2>', \$err);
my $until = time + 1.5;
while (time < $until)
{
    consume('source', 1);
    $bench->pump_nb if $bench->pumpable;
}

# one more write, so that the plan surely finds a backlog to drain
$node->safe_psql('source', 'BEGIN; UPDATE account SET balance = balance + 1 WHERE id = 1; INSERT INTO writes (account_id) VALUES (1); COMMIT');
my $plan = $node->safe_psql('source', "SELECT connect_prepare_upgrade('copy', timeout => '60 s')");
ok($plan > 0, "plan $plan prepared");
# the fence goes up first, so the backlog is final; the consumer drains it
ok($node->poll_query_until('source', "SELECT step <> 'fencing' FROM connect_upgrade_status WHERE plan = $plan"),
    'the plan fences the database');
is(status('source', $plan), 'running draining', 'and waits for the consumer to drain the trigger log');
ok($node->safe_psql('source', 'SELECT backlog FROM connect_high_water_marks') > 0, 'there is a backlog to drain');
is(write_error('source', 'INSERT INTO writes (account_id) VALUES (1)'), '25006', 'writes are refused while it drains');
while (status('source', $plan) eq 'running draining')
{
    consume('source', 1);
    $bench->pump_nb if $bench->pumpable;
}
ok($node->poll_query_until('source', "SELECT status = 'ready' FROM connect_upgrade_status WHERE plan = $plan"),
    'drained: the plan is ready');
is($node->safe_psql('source', "SELECT string_agg(step, ' ') FROM connect_upgrade_timeline($plan)"),
    'fencing draining pausing ready', 'through fencing, draining, pausing');
$bench->pump_nb while $bench->pumpable;
$bench->finish;
note "pgbench: " . join(' ', grep { /aborted|processed|failed/ } split /\n/, $out . $err);
is($node->safe_psql('source', 'SELECT state FROM connect_connections'), 'PAUSED', 'the connection is paused');
is($node->safe_psql('source', 'SELECT backlog FROM connect_high_water_marks'), '0', 'nothing left to deliver');
is($node->safe_psql('source', "SELECT connect_next_batch('sync') IS NULL"), 't', 'the consumer gets nothing more');
is(write_error('source', 'INSERT INTO account VALUES (1000)'), '25006', 'the source refuses writes');
my $source_writes = $node->safe_psql('source', 'SELECT count(*) FROM writes');
is($node->safe_psql('source', "SELECT count(*) FROM $log l"), $source_writes,
    "$source_writes committed writes in the source, as many log entries");
is($node->safe_psql('sink', 'SELECT count(*) FROM consumed'), $source_writes, 'all delivered before the copy');

# the copy
my $dump = $node->basedir . '/source.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', 'source' ], 'pg_dump -Fc of the fenced database');
$node->safe_psql('postgres', 'CREATE DATABASE copy');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'copy', $dump ], 'pg_restore into a new database');
is(status('copy', $plan), 'ready ready', 'the plan came with the copy, ready');
is($node->safe_psql('copy', 'SELECT count(*) FROM connect_fences'), '0', 'the copy is not fenced');

is($node->safe_psql('copy', "SELECT connect_complete_upgrade($plan)"), 'completed', 'connect_complete_upgrade() on the copy');
is(status('copy', $plan), 'completed completed', 'the plan is completed there');
is($node->safe_psql('copy', 'SELECT state FROM connect_connections'), 'IDLE', 'the connection is resumed on the copy');
is(status('source', $plan), 'ready ready', 'the source keeps its plan ready');
is(write_error('source', 'INSERT INTO account VALUES (1001)'), '25006', 'and stays fenced');

# the consumer goes on, on the copy, under new load
($out, $err) = ('', '');
$bench = IPC::Run::start(
    [ 'pgbench', '-n', '-c', '2', '-t', '200', '--max-tries', '1', '-f', $script, $node->connstr('copy') ],
    '>', \$out, '2>', \$err);
while ($bench->pumpable)
{
    consume('copy', 1);
    $bench->pump_nb if $bench->pumpable;
}
ok($bench->finish, 'pgbench on the copy: no write refused');
consume('copy');

my $writes = $node->safe_psql('copy', 'SELECT count(*) FROM writes');
is($writes, $source_writes + 400, "$writes writes in all, 400 of them on the copy");
is($node->safe_psql('copy', "SELECT count(*) FROM $log l"), $writes, "as many log entries in the copy");
is($node->safe_psql('copy', "SELECT count(*) FROM $log l WHERE id > (SELECT log_head FROM connect_upgrade_status WHERE plan = $plan)"),
    '400', 'the writes on the copy were captured after the copied log head');
is($node->safe_psql('sink', 'SELECT count(DISTINCT entry_id) FROM consumed'), $writes, 'all delivered');
is($node->safe_psql('sink', 'SELECT count(*) FROM consumed'), $writes, 'none twice');
is($node->safe_psql('sink', "SELECT count(*) FROM consumed WHERE via = 'copy'"), '400', 'the copy delivered exactly its new writes');
my $ids = $node->safe_psql('sink', "SELECT string_agg(entry_id::text, ',') FROM consumed");
is($node->safe_psql('copy', "SELECT count(*) FROM $log l WHERE id = ANY ('{$ids}'::bigint[])"), $writes,
    'every delivery is a log entry of the copy');

my $timeline = $node->safe_psql('copy',
    "SELECT string_agg(step || ' ' || coalesce(round(extract(epoch FROM duration) * 1000)::text || ' ms', '-'), ', ') FROM connect_upgrade_timeline($plan)");
note "timeline: $timeline";
$node->stop;
done_testing();
