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
use ConnectGuard::Test;

# both servers keep their rollback witness in one directory, as servers of
# one lineage should: the promoted follower compares itself with what the
# old primary recorded, and must not take the changeover for a rollback
my $witness_dir = PostgreSQL::Test::Utils::tempdir;
my $primary = cg_node('old_primary', init => [ allows_streaming => 1 ], conf => [
    "connect_guard.naptime = '200ms'",
    "connect_guard.witness_directory = '$witness_dir'" ]);
setup_accounts($primary);
my $follower = new_standby($primary, 'follower', backup => 'base');

# writers keep going through the changeover; the fenced ones fail and are counted out
my $bench = start_pgbench($primary, [ '-c', '2', '-T', '6', '--max-tries', '1' ]);

# consume while the load runs, then start the plan
my $until = time + 2;
consume($primary, via => 'old', stop_on_error => 1) while time < $until;
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
consume($follower, via => 'new', stop_on_error => 1);
my $writes = $follower->safe_psql('postgres', 'SELECT count(*) FROM writes');
my $log = whole_log();
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

note_timeline($follower, $plan);
$primary->stop;
$follower->stop;
done_testing();
