# An upgrade with pg_upgrade, from a PostgreSQL 15 cluster into a fresh 15
# cluster, under pgbench load with a consumer draining the trigger log:
# connect_prepare_upgrade('pg_upgrade') pauses and fences the old cluster,
# the runbook stops it, runs pg_upgrade into a fresh cluster and copies the
# old fence file into the new data directory; the new cluster comes up
# fenced, its worker sees the plan under a new system identifier and
# completes it (fence lowered, connection resumed).
# Counting: every committed write reached the log once and was delivered
# once, before or after the upgrade.
use strict;
use warnings;
use Cwd;
use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ConnectGuard::Test;

# the installation under test: make installcheck puts its bindir first on PATH
my $bindir = `pg_config --bindir`;
chomp $bindir;
# one witness directory for both clusters: the new one finds the old one's
# witness through the plan, which names the old system identifier
my $witness_dir = PostgreSQL::Test::Utils::tempdir;
my $conf = [ "connect_guard.naptime = '200ms'", "connect_guard.witness_directory = '$witness_dir'" ];

my $old = cg_node('old', conf => $conf);
setup_accounts($old);
# the plans need the database's worker
wait_for_worker($old) or die 'no worker';
# the 100 initial rows were inserted before the mapping: only the writes count
my $log = whole_log();

# this test's sync service: it goes on through the fence (an error from
# connect_next_batch ends its turn), recording where it consumed
sub consume_via
{
    my ($node, $via, $max) = @_;
    return consume($node, via => $via, max => $max, stop_on_error => 1);
}

# writers keep going into the plan; the fenced ones fail and are counted out
my $bench = start_pgbench($old, [ '-c', '2', '-T', '5', '--max-tries', '1' ]);
my $until = time + 2;
while (time < $until)
{
    consume_via($old, 'old', 1);
    $bench->pump_nb if $bench->pumpable;
}
ok($old->safe_psql('postgres', 'SELECT count(*) FROM consumed') > 0, 'the consumer drained batches under load');

my $plan = $old->safe_psql('postgres', "SELECT connect_prepare_upgrade('pg_upgrade', timeout => '60 s')");
ok($plan > 0, "plan $plan prepared");
# the consumer goes on while the plan pauses it: a batch it holds delays the pause
until ($old->safe_psql('postgres', "SELECT status FROM connect_upgrade_status WHERE plan = $plan") ne 'running')
{
    consume_via($old, 'old', 1);
    $bench->pump_nb if $bench->pumpable;
}
is($old->safe_psql('postgres', "SELECT connect_wait_upgrade($plan, 'ready', '60 s')"), 'ready',
    'the plan reaches ready: paused and fenced');
$bench->pump_nb while $bench->pumpable;
$bench->finish;
note 'pgbench: ' . $bench->summary;

is(write_error($old, 'INSERT INTO account VALUES (1000)'), '25006', 'the old cluster refuses writes to the mapped table');
is(write_error($old, 'INSERT INTO writes (account_id) VALUES (1)'), '25006', 'and to every other table');
is($old->safe_psql('postgres', 'SELECT state FROM connect_connections'), 'PAUSED', 'the connection is paused');
is($old->safe_psql('postgres', "SELECT scope FROM connect_fences"), 'database', 'a database-wide fence is up');
is($old->safe_psql('postgres', "SELECT connect_next_batch('sync') IS NULL"), 't', 'the consumer gets nothing');
my $old_sysid = $old->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
my $old_writes = $old->safe_psql('postgres', 'SELECT count(*) FROM writes');
is($old->safe_psql('postgres', "SELECT count(*) FROM $log l"), $old_writes,
    "$old_writes committed writes on the old cluster, as many log entries");
$old->stop;

# the new cluster: same locale and encoding (same initdb environment)
my $new = cg_node('new', conf => $conf, start => 0);
my $cwd = getcwd();
chdir $new->basedir or die $!;
command_ok(
    [ "$bindir/pg_upgrade", '--no-sync',
      '-b', $bindir, '-B', $bindir,
      '-d', $old->data_dir, '-D', $new->data_dir,
      '-p', $old->port, '-P', $new->port,
      '--socketdir', $new->host ],
    'pg_upgrade');
chdir $cwd;

# The runbook step that keeps the fence across pg_upgrade (as
# runbooks/pg_upgrade.sql prints it): copy the old cluster's fence file into
# the new data directory after pg_upgrade and before the new cluster's first
# start, so that no server pg_upgrade starts (binary upgrade mode, where its
# schema restore runs "DROP EXTENSION IF EXISTS connect_guard" and its
# ALTER TABLEs) has it.  Database OIDs survive pg_upgrade, so the fence
# applies to the same database.  The last server pg_upgrade starts has the
# data and the plan: its worker must not complete the plan there.
copy($old->data_dir . '/connect_guard.fences', $new->data_dir . '/connect_guard.fences')
    or die "copying the fence file: $!";
chmod 0600, $new->data_dir . '/connect_guard.fences';

# first start without background workers: the new cluster comes up fenced
$new->append_conf('postgresql.conf', "max_worker_processes = 0\n");
my $log_offset = -s $new->logfile;
$new->start;
ok($new->log_contains('1 write fence\(s\) restored', $log_offset), 'the new cluster restores the fence at start');
is(write_error($new, 'INSERT INTO account VALUES (1000)'), '25006', 'the upgraded cluster refuses writes until the plan completes');
is($new->safe_psql('postgres', "SELECT status || ' ' || step FROM connect_upgrade_status WHERE plan = $plan"),
    'ready ready', 'the plan came through pg_upgrade, ready');
$new->adjust_conf('postgresql.conf', 'max_worker_processes', '8');
$new->restart;
ok($new->poll_query_until('postgres',
    "SELECT status = 'completed' FROM connect_upgrade_status WHERE plan = $plan"),
    'the new cluster\'s worker completes the plan by itself');
my $new_sysid = $new->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
isnt($new_sysid, $old_sysid, 'under a new system identifier');
is($new->safe_psql('postgres', "SELECT completed_on FROM connect_guard.upgrade_plan WHERE plan_id = $plan"),
    $new_sysid, 'the plan records where it completed');
is($new->safe_psql('postgres', "SELECT detail->>'system_identifier' FROM connect_upgrade_timeline($plan) WHERE step = 'completing'"),
    $new_sysid, 'the timeline shows the takeover by the new system identifier');
is($new->safe_psql('postgres', 'SELECT count(*) FROM connect_fences'), '0', 'the fence carried over is lowered');
is($new->safe_psql('postgres', 'SELECT state FROM connect_connections'), 'IDLE', 'the connection is resumed');
is($new->safe_psql('postgres', 'SELECT count(*) FROM writes'), $old_writes, 'every write came through pg_upgrade');
ok($new->poll_query_until('postgres', "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'witness_upgraded'"),
    'the new cluster compared itself with the old cluster\'s witness');
is($new->safe_psql('postgres', "SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_detected'"), '0',
    'a planned pg_upgrade is not taken for a rollback');
ok(-f "$witness_dir/connect_guard-$new_sysid-postgres.witness", 'the new cluster writes its own witness');

# the consumer goes on, on the new cluster, under new load
$bench = start_pgbench($new, [ '-c', '2', '-t', '200', '--max-tries', '1' ]);
while ($bench->pumpable)
{
    consume_via($new, 'new', 1);
    $bench->pump_nb if $bench->pumpable;
}
ok($bench->finish, 'pgbench on the new cluster: no write refused');
consume_via($new, 'new');

my $writes = $new->safe_psql('postgres', 'SELECT count(*) FROM writes');
ok($writes >= $old_writes + 400, "$writes writes in all");
is($new->safe_psql('postgres', "SELECT count(*) FROM $log l"), $writes, "$writes committed writes, as many log entries");
is($new->safe_psql('postgres', 'SELECT count(DISTINCT entry_id) FROM consumed'), $writes, 'all delivered');
is($new->safe_psql('postgres', 'SELECT count(*) FROM consumed'), $writes, 'none twice');
is($new->safe_psql('postgres', "SELECT count(*) FROM consumed c WHERE NOT EXISTS (SELECT 1 FROM $log l WHERE l.id = c.entry_id)"),
    '0', 'every delivery is a log entry');
ok($new->safe_psql('postgres', "SELECT count(*) FROM consumed WHERE via = 'new'") > 0, 'delivered on the new cluster too');

note_timeline($new, $plan);
$new->stop;
done_testing();
