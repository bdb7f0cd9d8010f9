# A follower changeover under pgbench load, with a consumer draining the
# trigger log all along: connect_prepare_upgrade('follower') pauses, fences,
# waits for the follower to replay past the fence, promotes it through
# connect_promote_follower(), and the promoted follower's own worker lifts
# its fence and resumes.  The old primary stays fenced.  Counting: every
# committed write reached the log once and was delivered once, before or
# after the changeover.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $primary = PostgreSQL::Test::Cluster->new('old_primary');
$primary->init(allows_streaming => 1);
# both servers keep their rollback witness in one directory, as servers of
# one lineage should: the promoted follower compares itself with what the
# old primary recorded, and must not take the changeover for a rollback
my $witness_dir = PostgreSQL::Test::Utils::tempdir;
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'connect_guard'
connect_guard.naptime = '200ms'
connect_guard.witness_directory = '$witness_dir'
});
$primary->start;
$primary->safe_psql('postgres', q{
    CREATE EXTENSION connect_guard;
    CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
    INSERT INTO account SELECT g FROM generate_series(1, 100) g;
    CREATE TABLE writes (n bigserial PRIMARY KEY, account_id int);
    SELECT connect_create_connection('sync');
    SELECT connect_map_table('sync', 'account');
    CREATE TABLE consumed (entry_id bigint, batch_id bigint, via text);
});
$primary->backup('base');
my $follower = PostgreSQL::Test::Cluster->new('follower');
$follower->init_from_backup($primary, 'base', has_streaming => 1);
$follower->start;
$primary->wait_for_catchup($follower);

my $script = $primary->basedir . '/writes.sql';
append_to_file($script, q{
\set id random(1, 100)
BEGIN;
UPDATE account SET balance = balance + 1 WHERE id = :id;
INSERT INTO writes (account_id) VALUES (:id);
END;
});
my ($out, $err) = ('', '');
# writers keep going through the changeover; the fenced ones fail and are counted out
my $bench = IPC::Run::start(
    [ 'pgbench', '-n', '-c', '2', '-T', '6', '--max-tries', '1', '-f', $script, $primary->connstr('postgres') ],
    '>', \$out, '2>', \$err);

sub consume
{
    my ($node, $via) = @_;
    my $n = 0;
    while (1)
    {
        my ($rc, $b) = $node->psql('postgres', "SELECT connect_next_batch('sync')");
        last if $rc != 0 || $b eq '';
        $node->safe_psql('postgres', qq{
            INSERT INTO consumed SELECT id, $b, '$via' FROM connect_batch_events($b);
            SELECT connect_finish_batch($b);
        });
        $n++;
    }
    return $n;
}

# consume while the load runs, then start the plan
my $until = time + 2;
consume($primary, 'old') while time < $until;
my $follower_conninfo = $follower->connstr('postgres');
my $plan = $primary->safe_psql('postgres',
    "SELECT connect_prepare_upgrade('follower', follower => \$\$$follower_conninfo\$\$, max_lag_bytes => 10000000)");
ok($plan > 0, "plan $plan prepared");
is($primary->safe_psql('postgres', "SELECT connect_wait_upgrade($plan, 'ready', '60 s')"), 'ready',
    'the plan reaches ready: paused, fenced, follower caught up');
$bench->pump_nb while $bench->pumpable;
$bench->finish;

my ($rc, $o, $e) = $primary->psql('postgres', 'INSERT INTO account VALUES (1000)');
like($e, qr/fenced for maintenance/, 'the old primary refuses writes');
is($primary->safe_psql('postgres', "SELECT state FROM connect_connections"), 'PAUSED', 'the connection is paused');
($rc, $o, $e) = $follower->psql('postgres', 'SELECT 1');
is($follower->safe_psql('postgres', 'SELECT count(*) FROM connect_fences'), '1',
    'the follower was fenced while still a standby');

is($primary->safe_psql('postgres', "SELECT connect_promote_follower($plan)"), 'promoted', 'promoted');
ok($follower->poll_query_until('postgres',
    "SELECT status = 'completed' FROM connect_upgrade_status WHERE plan = $plan"),
    'the promoted follower completes the plan by itself');
is($follower->safe_psql('postgres', 'SELECT count(*) FROM connect_fences'), '0', 'and lifts its fence');
is($follower->safe_psql('postgres', "SELECT state FROM connect_connections"), 'IDLE', 'and resumes the connection');
$follower->safe_psql('postgres', "INSERT INTO writes (account_id) VALUES (1); UPDATE account SET balance = balance + 1 WHERE id = 1");
ok($primary->poll_query_until('postgres',
    "SELECT status = 'handed_over' FROM connect_upgrade_status WHERE plan = $plan"),
    'the old primary sees the hand-over');
($rc, $o, $e) = $primary->psql('postgres', 'INSERT INTO account VALUES (1001)');
like($e, qr/fenced for maintenance/, 'and stays fenced');

# the consumer picks up on the new primary where it left off (copy what was
# consumed on the old one first, as a sync service keeps its own state)
my $old = $primary->safe_psql('postgres', "SELECT string_agg(format('(%s,%s,%L)', entry_id, batch_id, via), ',') FROM consumed");
$follower->safe_psql('postgres', "TRUNCATE consumed; INSERT INTO consumed VALUES $old") if $old ne '';
consume($follower, 'new');
my $writes = $follower->safe_psql('postgres', 'SELECT count(*) FROM writes');
my $log = '(SELECT id FROM connect_guard.trigger_log UNION ALL SELECT id FROM connect_guard.trigger_log_archive)';
is($follower->safe_psql('postgres', "SELECT count(*) FROM $log l"), $writes, "$writes committed writes, as many log entries");
is($follower->safe_psql('postgres', 'SELECT count(DISTINCT entry_id) FROM consumed'), $writes, 'all delivered');
is($follower->safe_psql('postgres', 'SELECT count(*) FROM consumed'), $writes, 'none twice');

# no rollback seen on either side: the new primary crossed the promotion
# (the plan's fence covers what the old primary wrote after it), the old
# one leaves the witness to the newer timeline
ok($follower->poll_query_until('postgres', "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'witness_promoted'"),
    'the new primary compared itself with the old primary\'s witness and saw a promotion');
ok($primary->poll_query_until('postgres', "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'witness_superseded'"),
    'the old primary sees the newer timeline in the witness and stops writing it');
is($follower->safe_psql('postgres', "SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_detected'"), '0',
    'no rollback detected on the new primary');
is($primary->safe_psql('postgres', "SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_detected'"), '0',
    'nor on the old one');
is($follower->safe_psql('postgres', "SELECT string_agg(finding, ',') FROM connect_check_rollback() WHERE rollback"), '',
    'connect_check_rollback agrees');

my $timeline = $follower->safe_psql('postgres',
    "SELECT string_agg(step || ' ' || coalesce(round(extract(epoch FROM duration) * 1000)::text || ' ms', '-'), ', ') FROM connect_upgrade_timeline($plan)");
note "timeline: $timeline";
$primary->stop;
$follower->stop;
done_testing();
