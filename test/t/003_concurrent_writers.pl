# Counting under concurrency: pgbench writers commit in every order while a
# consumer takes batches the whole time (often finding nothing new); at the
# end every captured entry was delivered exactly once, and the log holds
# exactly one entry per committed write.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test;

my $node = cg_node('busy');
setup_accounts($node);

my $seconds = $ENV{CG_TEST_SECONDS} // 8;
my $bench = start_pgbench($node, [ '-c', '6', '-T', $seconds ],
    script => writes_script($node, sleep => 0.005));

my ($batches, $empty) = (0, 0);
sub poll_once
{
    my $n = consume($node, max => 1);
    $batches += $n;
    $empty++ unless $n;
    return $n;
}
# pump_nb reads pgbench's output, which is how the harness sees it end
while ($bench->pumpable)
{
    $bench->pump_nb;
    poll_once();
}
$bench->finish;
1 while poll_once();
note "batches: $batches, empty polls: $empty";
ok($batches > 3 && $empty > 0, 'the consumer polled while writers were running');

my $writes = $node->safe_psql('postgres', 'SELECT count(*) FROM writes');
ok($writes > 100, "pgbench committed $writes writes");
# the worker archives consumed entries as it goes: count both tables
my $log = whole_log();
is($node->safe_psql('postgres', "SELECT count(*) FROM $log l"),
    $writes, 'one log entry per committed write');
is($node->safe_psql('postgres', 'SELECT count(DISTINCT entry_id) FROM consumed'),
    $writes, 'every entry was delivered');
is($node->safe_psql('postgres', 'SELECT count(*) FROM consumed'),
    $writes, 'and none twice');
is($node->safe_psql('postgres', qq{
    SELECT count(*) FROM (SELECT record_id, count(*) n FROM $log l GROUP BY 1) l
      FULL JOIN (SELECT account_id::text AS record_id, count(*) n FROM writes GROUP BY 1) w USING (record_id)
     WHERE l.n IS DISTINCT FROM w.n}), '0', 'per account, as many entries as writes');

$node->stop;
done_testing();
