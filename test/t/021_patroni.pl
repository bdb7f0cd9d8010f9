# Patroni: a follower changeover whose promotion Patroni performs, and an
# unplanned failover.  Real Debian packages: one etcd 3.4 and two Patroni
# members on loopback, running this build's PostgreSQL binaries with
# connect_guard preloaded, one witness directory shared by both.
#
#   1. node1 leads, node2 replicates; the Connect simulator consumes the
#      trigger log through a multi-host conninfo (it follows the primary)
#   2. under pgbench load: connect_prepare_upgrade('follower', promote_with =>
#      'patroni') pauses, fences, waits for the catch-up; the switchover goes
#      through Patroni's REST API; node2's worker completes the plan; node1
#      comes back as a replica; the write-blocked window is measured
#   3. an unplanned failover: node2 (the leader) is killed, Patroni promotes
#      node1; node1 sees a promotion past the witness, not a rollback, and
#      lowers the fence it kept from the changeover
#   4. the old leader comes back first as a primary on its own (as after a
#      restart outside Patroni): it finds that a newer timeline descends from
#      its own, fences its mapped tables and asks for no reloads; Patroni
#      then rewinds it and it rejoins as a replica
#   5. counting: every committed write reached the log once and the mirror
#      once, and the simulator's --verify finds the mirror equal
#
# Helpers of both HA tests (this and test/t/022_pg_auto_failover.pl) and
# the checks every manager must pass are in ConnectGuard::HA; Patroni's
# own are here.
use strict;
use warnings;
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ConnectGuard::HA;

foreach my $program ('/usr/bin/patroni', '/usr/bin/etcd', '/usr/bin/patronictl')
{
	plan skip_all => "$program is missing: the packages patroni and etcd-server could not be installed"
	  unless -x $program;
}

my $dir    = ha_dir();
my $sock   = PostgreSQL::Test::Utils::tempdir_short;
my $wdir   = PostgreSQL::Test::Utils::tempdir;    # the witness directory of both members
my $bindir = `pg_config --bindir`;
chomp $bindir;
my $http = HTTP::Tiny->new(timeout => 10);

# -- Patroni's helpers -----------------------------------------------------------------

sub cluster_json
{
	my ($api) = @_;
	my $r = $http->get("$api/cluster");
	return $r->{success} ? decode_json($r->{content}) : { members => [] };
}

# wait_members waits until Patroni reports the roles given ({node1 => 'leader', ...}) running
sub wait_members
{
	my ($api, $want, $seconds) = @_;
	return wait_until(
		$seconds // 90,
		sub {
			my %role = map { $_->{name} => "$_->{role}/$_->{state}" } @{ cluster_json($api)->{members} };
			return !grep { ($role{$_} // '') !~ /^\Q$want->{$_}\E\/(running|streaming)$/ } keys %$want;
		},
		0.3);
}

sub start_patroni
{
	my ($name) = @_;
	local $ENV{PATH} = "/usr/bin:/bin";    # Debian's python3 and its modules, not another one first on PATH
	return background([ '/usr/bin/patroni', "$dir/$name.yml" ], "$dir/$name.patroni.log");
}

sub postmaster_pid
{
	my ($data) = @_;
	open my $fh, '<', "$data/postmaster.pid" or return undef;
	my $pid = <$fh>;
	close $fh;
	chomp $pid;
	return $pid;
}

# -- 1. etcd, two Patroni members ------------------------------------------------------

my ($etcd_client, $etcd_peer) = (PostgreSQL::Test::Cluster::get_free_port(), PostgreSQL::Test::Cluster::get_free_port());
my $etcd = background(
	[ '/usr/bin/etcd', '--name', 'e1', '--data-dir', "$dir/etcd",
	  '--listen-client-urls', "http://127.0.0.1:$etcd_client", '--advertise-client-urls', "http://127.0.0.1:$etcd_client",
	  '--listen-peer-urls', "http://127.0.0.1:$etcd_peer", '--initial-advertise-peer-urls', "http://127.0.0.1:$etcd_peer",
	  '--initial-cluster', "e1=http://127.0.0.1:$etcd_peer" ],
	"$dir/etcd.log");

my %node;
foreach my $name ('node1', 'node2')
{
	my ($pg, $api) = (PostgreSQL::Test::Cluster::get_free_port(), PostgreSQL::Test::Cluster::get_free_port());
	$node{$name} = {
		port => $pg, api => "http://127.0.0.1:$api", data => "$dir/$name.data",
		conninfo => "host=$sock port=$pg dbname=postgres user=postgres" };
	append_to_file("$dir/$name.yml", <<"YML");
scope: cg_021
name: $name
restapi:
  listen: 127.0.0.1:$api
  connect_address: 127.0.0.1:$api
etcd3:
  host: 127.0.0.1:$etcd_client
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 16777216
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: 'on'
  initdb:
    - encoding: UTF8
postgresql:
  listen: 127.0.0.1:$pg
  connect_address: 127.0.0.1:$pg
  data_dir: $dir/$name.data
  bin_dir: $bindir
  pgpass: $dir/$name.pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    unix_socket_directories: '$sock'
    shared_preload_libraries: connect_guard
    connect_guard.naptime: 200ms
    connect_guard.witness_directory: '$wdir'
    fsync: 'off'
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
YML
}
my $n1 = $node{node1}{conninfo};
my $n2 = $node{node2}{conninfo};
my $both = "host=$sock,$sock port=$node{node1}{port},$node{node2}{port} dbname=postgres user=postgres target_session_attrs=read-write";

$node{node1}{patroni} = start_patroni('node1');
ok(wait_members($node{node1}{api}, { node1 => 'leader' }), 'Patroni bootstraps node1 as the leader')
  or BAIL_OUT('Patroni did not start: ' . slurp_file("$dir/node1.patroni.log"));
ha_schema($n1);
$node{node2}{patroni} = start_patroni('node2');
ok(wait_members($node{node1}{api}, { node1 => 'leader', node2 => 'sync_standby' }, 120),
	'Patroni clones node2 and makes it the synchronous standby')
  or BAIL_OUT('node2 did not join: ' . slurp_file("$dir/node2.patroni.log"));

# the mirror (Salesforce, for the simulator) holds the same tables, filled from the start
start_mirror();
start_consumer($both);

# -- 2. the changeover, promoted by Patroni --------------------------------------------

my $bench = start_writers($n1, 8);
sleep 2;
my $plan = sql_at($n1, "SELECT connect_prepare_upgrade('follower', follower => \$\$$n2\$\$, max_lag_bytes => 16 * 1024 * 1024,
                      timeout => '1 min', promote_with => 'patroni', ha_endpoint => '$node{node1}{api}')");
ok($plan > 0, "plan $plan prepared with promote_with => 'patroni'");
is(sql_at($n1, "SELECT connect_wait_upgrade($plan, 'ready', '90 s')"), 'ready',
	'the plan reaches ready: paused, fenced, follower caught up');
is(sql_at($n1, "SELECT promote_with || ' ' || ha_member || ' ' || ha_endpoint FROM connect_upgrade_status WHERE plan = $plan"),
	"patroni node2 $node{node1}{api}", 'Patroni\'s member for the follower was found by its port');
is(sql_at($n1, "SELECT ha_target ->> 'leader' FROM connect_guard.upgrade_plan WHERE plan_id = $plan"), 'node1',
	'and the leader is this server');

my $probe = first_write($n2, "$dir/first_write_1");
is(sql_at($n1, "SELECT connect_promote_follower($plan)"), 'switchover requested', 'connect_promote_follower hands over to Patroni');
ok(wait_members($node{node2}{api}, { node2 => 'leader' }, 60), 'Patroni switched over to node2');
$probe->finish;
$bench->finish;
plan_completed_ok($n2, $plan);
ok(wait_members($node{node2}{api}, { node2 => 'leader', node1 => 'sync_standby' }, 60),
	'Patroni brings node1 back as a replica');
switched_over_ok($n1, $n2, $plan, "$dir/first_write_1", 'Patroni');

# -- 3. an unplanned failover: the leader dies --------------------------------------------

$bench = start_writers($n2, 3);
$bench->finish;
# A crash in the milliseconds between a witness write and its replication
# would leave the promoted server short of the witnessed WAL, which the check
# cannot tell from a loss the sync service saw (and so calls a rollback): the
# writers and the consumer stop first, and the standby replays everything.
stop_consumer();
ok(poll_sql($n2, "SELECT (SELECT replay_lsn FROM pg_stat_replication LIMIT 1) >= pg_current_wal_lsn()"),
	'node1 has replayed everything node2 wrote');
my $n2_postmaster = postmaster_pid($node{node2}{data});
kill 'KILL', $node{node2}{patroni}->{KIDS}[0]{PID};
kill 'KILL', $n2_postmaster;
$node{node2}{patroni}->finish;
ok(wait_members($node{node1}{api}, { node1 => 'leader' }, 90), 'Patroni promotes node1 once node2\'s leader key expires');
failover_seen_ok($n1);    # node1 lowers the fence it kept as the changeover's old primary
start_consumer($both);
$bench = start_writers($n1, 3);
$bench->finish;

# -- 4. the old leader comes back on its own first, then through Patroni ---------------------

sleep 1 while kill 0, $n2_postmaster;
command_ok([ 'pg_ctl', '-D', $node{node2}{data}, '-l', "$dir/node2.alone.log", '-w', 'start' ],
	'node2 starts as a primary on its old timeline, outside Patroni');
ok(poll_sql($n2, "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'witness_failed_over'", 30),
	'node2 finds that a newer timeline took over from its own');
like(sql_at($n2, "SELECT detail ->> 'detail' FROM connect_guard.event WHERE kind = 'witness_failed_over'"),
	qr/another server was promoted without an upgrade plan \(a failover\), and this one is a former primary/,
	'and says why');
is(sql_at($n2, "SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_detected'")
	 . ' ' . sql_at($n2, 'SELECT count(*) FROM connect_guard.rollback_incident')
	 . ' ' . sql_at($n2, "SELECT count(*) FROM connect_guard.request WHERE action = 'reload'"),
	'0 0 0', 'no rollback, no incident, no reload requested');
like(sql_at($n2, "SELECT scope || ': ' || reason FROM connect_fences"), qr/^mapped: former primary of timeline 2:/,
	'its mapped tables are fenced');
my ($rc, $out, $err) = psql_at($n2, 'INSERT INTO writes (account_id) VALUES (1)');
like($err, qr/a maintenance fence is up/, 'a write there is refused');
command_ok([ 'pg_ctl', '-D', $node{node2}{data}, '-m', 'fast', '-w', 'stop' ], 'node2 stopped');
$node{node2}{patroni} = start_patroni('node2');
ok(wait_members($node{node1}{api}, { node1 => 'leader', node2 => 'sync_standby' }, 120),
	'Patroni rewinds node2 and it rejoins as a replica');

# -- 5. counting ------------------------------------------------------------------------

stop_consumer();
delivered_once_ok($n1);

stop_background();
done_testing();
