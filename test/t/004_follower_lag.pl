# Follower lag against real servers: a streaming standby falls behind under
# pgbench load and catches up after; it shows both in pg_stat_replication
# and through libpq in connect_follower_lag; and every way of not being a
# caught-up standby of this primary (a wrong password, an unknown role,
# another cluster, a stopped standby) is reported with an error and no lag,
# never as caught up.  The worker keeps the status fresh by itself.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test;

my $primary = cg_node('primary', init => [ allows_streaming => 1 ]);
$primary->safe_psql('postgres', q{
    CREATE EXTENSION connect_guard;
    -- for the wrong-password case; the role and its secret replicate to the standby
    SET password_encryption = 'scram-sha-256';
    CREATE ROLE cg_lag_monitor LOGIN PASSWORD 'R1ght-pw';
});

my $standby = new_standby($primary, 'standby', start => 0);
# on the standby, that role must give its password; everyone else is trusted
my $hba = $standby->data_dir . '/pg_hba.conf';
my $rules = slurp_file($hba);
open(my $fh, '>', $hba) or die "could not write $hba: $!";
print $fh "local all cg_lag_monitor scram-sha-256\n", $rules;
close($fh);
$standby->start;
$primary->wait_for_catchup($standby);

# the conninfo is dollar-quoted: connstr() quotes with single quotes
sub add_follower
{
    my ($name, $conninfo) = @_;
    $primary->safe_psql('postgres', "SELECT connect_add_follower('$name', \$ci\$$conninfo\$ci\$)");
}

# checks every follower now and returns the named one's row as "a|b|c"
sub check
{
    my ($name, $columns) = @_;
    return $primary->safe_psql('postgres',
        "SELECT $columns FROM connect_check_followers() WHERE name = '$name'");
}

add_follower('standby', $standby->connstr('postgres'));
# polled: the worker's own writes move this primary's WAL position now and then
ok($primary->poll_query_until('postgres', q{
        SELECT reachable, in_recovery, system_identifier_matches, timeline, error, lag_bytes, lag_seconds
          FROM connect_check_followers() WHERE name = 'standby'},
        't|t|t|1||0|0'),
    'an idle standby: a standby of this primary, on timeline 1, caught up, 0 seconds behind');

# 1. under load the standby falls behind, at least for a moment, and is
#    never mistaken for something else
$primary->command_ok([ 'pgbench', '-i', '-s', '2', '-q', $primary->connstr('postgres') ],
    'pgbench -i');
my $bench = start_pgbench($primary, [ '-c', '4', '-j', '2', '-T', '5' ], script => '');
my ($samples, $behind, $max_lag, $max_seconds, @bad) = (0, 0, 0, 0);
my $both_sources = 0;
# pump_nb reads pgbench's output, which is how the harness sees it end
while ($bench->pumpable)
{
    $bench->pump_nb;
    my ($lag, $seconds, $error) = split /\|/,
        check('standby', "coalesce(lag_bytes, -1), coalesce(lag_seconds, 0), coalesce(error, '')"), -1;
    $samples++;
    push @bad, $error if $error ne '' || $lag < 0;
    if ($lag > 0)
    {
        $behind++;
        $max_lag = $lag if $lag > $max_lag;
        $max_seconds = $seconds if $seconds > $max_seconds;
    }
    $both_sources = 1 if $primary->safe_psql('postgres',
        "SELECT count(DISTINCT source) FROM connect_follower_lag WHERE name = 'standby'") == 2;
}
$bench->finish;
note "samples: $samples, behind in $behind, max lag $max_lag bytes, $max_seconds s";
ok($samples > 3, "sampled the lag $samples times under load");
ok($behind > 0, "the standby was seen behind ($max_lag bytes at most)");
is(join(', ', @bad), '', 'and never reported with an error or without a lag');
ok($both_sources, 'pg_stat_replication and libpq rows both appear in connect_follower_lag');

# 2. once the load stops it catches up, in both views of it
ok($primary->poll_query_until('postgres',
        "SELECT lag_bytes = 0 AND lag_seconds = 0 FROM connect_check_followers() WHERE name = 'standby'"),
    'after the load the standby is caught up again (libpq)');
ok($primary->poll_query_until('postgres', q{
        SELECT lag_bytes = 0 AND lag_seconds = 0 FROM connect_follower_lag
         WHERE source = 'pg_stat_replication' AND name = 'standby'}),
    'and pg_stat_replication agrees');
is($primary->safe_psql('postgres', q{
        SELECT string_agg(concat_ws(' ', source, state), ', ' ORDER BY source) FROM connect_follower_lag
         WHERE name = 'standby' AND reachable AND error IS NULL AND replay_lsn IS NOT NULL}),
    'libpq, pg_stat_replication streaming', 'the view shows the standby from both sources');

# 3. the worker keeps the status fresh without being asked
my $last = $primary->safe_psql('postgres',
    "SELECT checked_at FROM connect_guard.follower_status WHERE name = 'standby'");
ok($primary->poll_query_until('postgres',
        "SELECT checked_at > '$last' AND lag_bytes IS NOT NULL FROM connect_guard.follower_status WHERE name = 'standby'"),
    'the worker checks the followers every cycle');

# 4. a wrong password, and a role that does not exist: unreachable, with the server's reason
my $standby_conn = $standby->connstr('postgres');
add_follower('right_pw', "$standby_conn user=cg_lag_monitor password=R1ght-pw");
add_follower('wrong_pw', "$standby_conn user=cg_lag_monitor password=Wr0ng-pw");
add_follower('no_role', "$standby_conn user=cg_lag_nobody");
is(check('right_pw', 'reachable, error IS NULL, lag_bytes IS NOT NULL'), 't|t|t',
    'the right password connects and measures the lag');
like(check('wrong_pw', "reachable || ' ' || error || ' ' || (lag_bytes IS NULL)"),
    qr/^false .*password authentication failed for user "cg_lag_monitor".* true$/s,
    'a wrong password: unreachable, the authentication error, no lag');
like(check('no_role', "reachable || ' ' || error || ' ' || (lag_bytes IS NULL)"),
    qr/^false .*role "cg_lag_nobody" does not exist.* true$/s,
    'an unknown role: unreachable, the server says why, no lag');
is($primary->safe_psql('postgres', q{
        SELECT count(*) FROM connect_follower_lag WHERE conninfo ~ '(R1ght|Wr0ng)-pw'}),
    '0', 'no password shows in connect_follower_lag');
is($primary->safe_psql('postgres',
        "SELECT conninfo ~ 'password=\\*{8}' FROM connect_follower_lag WHERE name = 'wrong_pw'"),
    't', 'it shows masked instead');

# 5. another cluster, not a standby of ours: reachable, but never caught up
my $other = PostgreSQL::Test::Cluster->new('other');
$other->init;
$other->start;
add_follower('other', $other->connstr('postgres'));
is(check('other', 'reachable, system_identifier_matches, error, replay_lsn IS NULL, lag_bytes IS NULL, lag_seconds IS NULL'),
    't|f|not a standby of this primary|t|t|t',
    'another cluster: system identifier differs, not a standby of this primary, no lag');

# 6. the standby stops: unreachable, no lag; it starts again: caught up again
$standby->stop;
like(check('standby', "reachable || ' ' || error || ' ' || (lag_bytes IS NULL) || ' ' || (lag_seconds IS NULL)"),
    qr/^false connection to server .*failed: .* true true$/s,
    'a stopped standby: unreachable, the connection error, no lag');
ok($primary->poll_query_until('postgres',
        "SELECT count(*) = 0 FROM connect_follower_lag WHERE source = 'pg_stat_replication'"),
    'and it leaves pg_stat_replication');
$primary->safe_psql('postgres', 'INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 1)');
$standby->start;
ok($primary->poll_query_until('postgres',
        "SELECT error IS NULL AND lag_bytes = 0 FROM connect_check_followers() WHERE name = 'standby'"),
    'restarted, the standby catches up with what was written while it was down');

$other->stop;
$standby->stop;
$primary->stop;
done_testing();
