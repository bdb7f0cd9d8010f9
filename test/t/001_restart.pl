# Nothing captured is lost across a clean restart or a crash (immediate
# shutdown): every committed write arrives in a batch, an unfinished batch is
# handed out again after the restart, and the high-water marks survive.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test;

my $node = cg_node('primary');
sql($node, q{
    CREATE EXTENSION connect_guard;
    CREATE TABLE item (id int PRIMARY KEY, n int);
    SELECT connect_create_connection('sync');
    SELECT connect_map_table('sync', 'item');
});
# what the consumer has applied, by log id: a stand-in for the sync service
create_consumed_table($node);

# 1. writes, part consumed, a clean restart, the rest consumed
$node->safe_psql('postgres',
    "INSERT INTO item SELECT g, 0 FROM generate_series(1, 500) g");
ok(consume($node) >= 1, 'first writes consumed');
$node->safe_psql('postgres', "UPDATE item SET n = n + 1 WHERE id <= 200");
$node->restart;
$node->safe_psql('postgres', "DELETE FROM item WHERE id > 450");
consume($node);

# 2. an open batch at the moment of a crash is delivered again afterwards
$node->safe_psql('postgres', "UPDATE item SET n = n + 1 WHERE id <= 100");
my $open = $node->safe_psql('postgres', "SELECT connect_next_batch('sync')");
ok($open ne '', 'a batch is open before the crash');
# writes that committed but were never batched, and one left in flight
$node->safe_psql('postgres', "INSERT INTO item SELECT g, 0 FROM generate_series(1001, 1300) g");
my $inflight = $node->background_psql('postgres');
$inflight->query_safe("BEGIN; INSERT INTO item VALUES (5000, 0);");
$node->stop('immediate');
$inflight->{run}->kill_kill;
$node->start;

is($node->safe_psql('postgres', "SELECT connect_next_batch('sync')"), $open,
    'the batch open at the crash is handed out again');
consume($node);

# count: every committed change once, the rolled-back one never
my $expected = 500 + 200 + 50 + 100 + 300;
is($node->safe_psql('postgres', 'SELECT count(DISTINCT entry_id) FROM consumed'),
    $expected, "all $expected committed changes were delivered");
is($node->safe_psql('postgres', 'SELECT count(*) FROM consumed'),
    $expected, 'and each exactly once (the crashed batch was not finished twice)');
is($node->safe_psql('postgres', "SELECT count(*) FROM consumed WHERE record_id = '5000'"),
    '0', 'the transaction in flight at the crash was not delivered');
is($node->safe_psql('postgres',
    'SELECT count(*) FROM (SELECT id FROM connect_guard.trigger_log UNION ALL SELECT id FROM connect_guard.trigger_log_archive) l
      WHERE NOT EXISTS (SELECT 1 FROM consumed c WHERE c.entry_id = l.id)'),
    '0', 'no entry of the log was left undelivered');
is($node->safe_psql('postgres',
    "SELECT backlog || ' ' || (open_batch IS NULL) FROM connect_high_water_marks"),
    '0 true', 'the high-water mark is at the head after the restarts');

# the mark survives: a restart delivers nothing again
$node->restart;
is($node->safe_psql('postgres', "SELECT connect_next_batch('sync') IS NULL"), 't',
    'nothing is delivered twice after another restart');

$node->stop;
done_testing();
