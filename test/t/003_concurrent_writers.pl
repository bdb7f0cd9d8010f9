# Counting under concurrency: pgbench writers commit in every order while a
# consumer takes batches the whole time (often finding nothing new); at the
# end every captured entry was delivered exactly once, and the log holds
# exactly one entry per committed write.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('busy');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'connect_guard'");
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION connect_guard;
    CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
    INSERT INTO account SELECT g FROM generate_series(1, 100) g;
    -- what the writers did, written in the same transactions: the truth to count against
    CREATE TABLE writes (n bigserial PRIMARY KEY, account_id int);
    SELECT connect_create_connection('sync');
    SELECT connect_map_table('sync', 'account');
    CREATE TABLE consumed (entry_id bigint, batch_id bigint);
});

my $script = $node->basedir . '/writes.sql';
PostgreSQL::Test::Utils::append_to_file($script, q{
\set id random(1, 100)
BEGIN;
UPDATE account SET balance = balance + 1 WHERE id = :id;
INSERT INTO writes (account_id) VALUES (:id);
SELECT pg_sleep(random() * 0.005);
END;
});
my $seconds = $ENV{CG_TEST_SECONDS} // 8;
my ($stdout, $stderr) = ('', '');
my $bench = IPC::Run::start(
    [ 'pgbench', '-n', '-c', '6', '-T', $seconds, '-f', $script, $node->connstr('postgres') ],
    '>', \$stdout, '2>', \$stderr);

my ($batches, $empty) = (0, 0);
sub poll_once
{
    my $b = $node->safe_psql('postgres', "SELECT connect_next_batch('sync')");
    if ($b eq '') { $empty++; return 0; }
    $node->safe_psql('postgres', qq{
        INSERT INTO consumed SELECT id, $b FROM connect_batch_events($b);
        SELECT connect_finish_batch($b);
    });
    $batches++;
    return 1;
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
my $log = '(SELECT * FROM connect_guard.trigger_log UNION ALL SELECT * FROM connect_guard.trigger_log_archive)';
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
