# The write fence survives a clean restart, a crash of a backend (which
# resets shared memory) and a kill -9 of the postmaster: the fence is read
# back from its file before any backend can write.  Lowering it survives
# too, and a corrupt fence file is reported, not trusted.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test;

my $node = cg_node('fenced', conf => 'restart_after_crash = on');

$node->safe_psql('postgres', q{
    CREATE EXTENSION connect_guard;
    CREATE TABLE item (id int PRIMARY KEY);
    CREATE TABLE other (id int PRIMARY KEY);
    SELECT connect_create_connection('sync');
    SELECT connect_map_table('sync', 'item');
    INSERT INTO item VALUES (1);
    SELECT connect_pause('sync', reason => 'upgrade window');
});

is(write_error($node, 'INSERT INTO item VALUES (2)'), '25006', 'fenced before any restart');
is(write_error($node, 'INSERT INTO other VALUES (2)'), '', 'an unmapped table is not fenced');

$node->restart;
is(write_error($node, 'INSERT INTO item VALUES (3)'), '25006', 'fenced after a clean restart');
is($node->safe_psql('postgres', 'SELECT reason FROM connect_fences'), 'upgrade window',
    'connect_fences shows the fence and its reason after the restart');

# a backend crash makes the postmaster reset shared memory
my $bg = $node->background_psql('postgres');
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
kill 'KILL', $pid;
$node->poll_query_until('postgres', 'SELECT true') or die 'server did not come back';
$bg->{run}->kill_kill;
is(write_error($node, 'INSERT INTO item VALUES (4)'), '25006', 'fenced after a crash reset shared memory');

# kill -9 of the postmaster: its children exit when they notice, and only
# then can a new postmaster start on the same shared memory key
my $datadir = $node->data_dir;
kill9_postmaster($node);
is(write_error($node, 'INSERT INTO item VALUES (5)'), '25006', 'fenced after kill -9 of the postmaster');
is($node->safe_psql('postgres', "SELECT state FROM connect_status"), 'PAUSED',
    'the connection is still paused');

# lowering survives restarts too
$node->safe_psql('postgres', "SELECT connect_resume('sync')");
$node->restart;
is(write_error($node, 'INSERT INTO item VALUES (6)'), '', 'writes work after resume and a restart');
is($node->safe_psql('postgres', 'SELECT count(*) FROM connect_fences'), '0', 'no fence left');

# nothing written while fenced was lost or invented: the log holds exactly
# the writes that succeeded (1 before the pause, 6 after the resume)
is($node->safe_psql('postgres',
    "SELECT string_agg(record_id, ',' ORDER BY id) FROM connect_guard.trigger_log"),
    '1,6', 'the trigger log holds exactly the committed writes');

# a corrupt fence file is reported and ignored
$node->safe_psql('postgres', "SELECT connect_fence('database', 'to be corrupted')");
$node->stop;
open(my $fh, '+<', "$datadir/connect_guard.fences") or die $!;
seek($fh, 20, 0);
print $fh "garbage";
close($fh);
my $log_offset = -s $node->logfile;
$node->start;
ok($node->log_contains('ignoring corrupt fence state file', $log_offset),
    'a corrupt fence file is reported in the server log');
is(write_error($node, 'INSERT INTO other VALUES (7)'), '', 'and not trusted');

$node->stop;
done_testing();
