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
use ConnectGuard::Test;

my $node = cg_node('copy', conf => "connect_guard.naptime = '200ms'");
$node->safe_psql('postgres', q{
    CREATE DATABASE source;
    CREATE DATABASE sink;
});
create_consumed_table($node, 'sink');
setup_accounts($node, db => 'source', consumed => 0);
# the plans need the database's worker
wait_for_worker($node, 'source') or die 'no worker';
my $log = whole_log();

# consume takes batches of $db until none is left (or $max were taken),
# recording them in the sink database
sub consume_into_sink
{
    my ($db, $max) = @_;
    return consume($node, db => $db, via => $db, max => $max, record_in => 'sink', stop_on_error => 1);
}

sub status
{
    my ($db, $plan) = @_;
    return plan_status($node, $plan, $db);
}

my $bench = start_pgbench($node, [ '-c', '2', '-T', '5', '--max-tries', '1' ], db => 'source');
my $until = time + 1.5;
while (time < $until)
{
    consume_into_sink('source', 1);
    $bench->pump_nb if $bench->pumpable;
}

# one more write, so that the plan surely finds a backlog to drain
account_write($node, 1, 'source');
my $plan = $node->safe_psql('source', "SELECT connect_prepare_upgrade('copy', timeout => '60 s')");
ok($plan > 0, "plan $plan prepared");
# the fence goes up first, so the backlog is final; the consumer drains it
ok($node->poll_query_until('source', "SELECT step <> 'fencing' FROM connect_upgrade_status WHERE plan = $plan"),
    'the plan fences the database');
is(status('source', $plan), 'running draining', 'and waits for the consumer to drain the trigger log');
ok($node->safe_psql('source', 'SELECT backlog FROM connect_high_water_marks') > 0, 'there is a backlog to drain');
is(write_error($node, 'INSERT INTO writes (account_id) VALUES (1)', 'source'), '25006', 'writes are refused while it drains');
while (status('source', $plan) eq 'running draining')
{
    consume_into_sink('source', 1);
    $bench->pump_nb if $bench->pumpable;
}
ok($node->poll_query_until('source', "SELECT status = 'ready' FROM connect_upgrade_status WHERE plan = $plan"),
    'drained: the plan is ready');
is($node->safe_psql('source', "SELECT string_agg(step, ' ') FROM connect_upgrade_timeline($plan)"),
    'fencing draining pausing ready', 'through fencing, draining, pausing');
$bench->pump_nb while $bench->pumpable;
$bench->finish;
note 'pgbench: ' . $bench->summary;
is($node->safe_psql('source', 'SELECT state FROM connect_connections'), 'PAUSED', 'the connection is paused');
is($node->safe_psql('source', 'SELECT backlog FROM connect_high_water_marks'), '0', 'nothing left to deliver');
is($node->safe_psql('source', "SELECT connect_next_batch('sync') IS NULL"), 't', 'the consumer gets nothing more');
is(write_error($node, 'INSERT INTO account VALUES (1000)', 'source'), '25006', 'the source refuses writes');
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
is(write_error($node, 'INSERT INTO account VALUES (1001)', 'source'), '25006', 'and stays fenced');

# the consumer goes on, on the copy, under new load
$bench = start_pgbench($node, [ '-c', '2', '-t', '200', '--max-tries', '1' ], db => 'copy');
while ($bench->pumpable)
{
    consume_into_sink('copy', 1);
    $bench->pump_nb if $bench->pumpable;
}
ok($bench->finish, 'pgbench on the copy: no write refused');
consume_into_sink('copy');

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

note_timeline($node, $plan, 'copy');
$node->stop;
done_testing();
