# pg_auto_failover: a follower changeover whose promotion the monitor
# performs, and a failover the monitor runs on its own.  Real Debian
# packages (postgresql-15-auto-failover, pg_autoctl): a monitor and two
# nodes on loopback, the nodes on this build's binaries with connect_guard
# preloaded, one witness directory shared by both.
#
#   1. node1 primary, node2 secondary; the Connect simulator consumes the
#      trigger log through a multi-host conninfo (it follows the primary)
#   2. under pgbench load: connect_prepare_upgrade('follower', promote_with =>
#      'pg_auto_failover', ha_member => 'node2') pauses, fences, waits for the
#      catch-up; the worker calls pgautofailover.perform_promotion() on the
#      monitor; node2's worker completes the plan; pg_autoctl brings node1
#      back as a secondary; the write-blocked window is measured
#   3. a failover without a plan (pgautofailover.perform_failover(), under
#      load): node1 leads again, sees a promotion past the witness, not a
#      rollback, and keeps no fence from the changeover
#   4. counting: every committed write reached the log once and the mirror
#      once, and the simulator's --verify finds the mirror equal
#
# Helpers of both HA tests (this and test/t/021_patroni.pl) and the checks
# every manager must pass are in ConnectGuard::HA; the monitor's own are here.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ConnectGuard::HA;

my $autoctl = '/usr/bin/pg_autoctl';
plan skip_all => "$autoctl is missing: the package postgresql-15-auto-failover could not be installed"
  unless -x $autoctl;
my $bindir = `pg_config --bindir`;
chomp $bindir;
my $sharedir = `pg_config --sharedir`;
chomp $sharedir;
# the monitor needs the pgautofailover extension: Debian installs it into the
# system's PostgreSQL 15, which a private copy of the binaries may lack
my $monitor_bindir =
    -e "$sharedir/extension/pgautofailover.control"                 ? $bindir
  : -e '/usr/share/postgresql/15/extension/pgautofailover.control' ? '/usr/lib/postgresql/15/bin'
  :                                                                   undef;
plan skip_all => 'the pgautofailover extension is not installed (package postgresql-15-auto-failover)'
  unless defined $monitor_bindir;

my $dir  = ha_dir();
my $sock = PostgreSQL::Test::Utils::tempdir_short;
my $wdir = PostgreSQL::Test::Utils::tempdir;    # the witness directory of both nodes
# pg_autoctl reaches its local servers through PGHOST (PostgreSQL::Test::Cluster
# points it at a directory of its own), and keeps its configuration and state
# under the XDG directories
$ENV{PGHOST} = $sock;
$ENV{XDG_CONFIG_HOME} = "$dir/xdg/config";
$ENV{XDG_DATA_HOME}   = "$dir/xdg/data";
$ENV{XDG_RUNTIME_DIR} = "$dir/xdg/run";
mkdir $_ foreach ("$dir/xdg", "$dir/xdg/config", "$dir/xdg/data", "$dir/xdg/run");

# -- the monitor's helpers ---------------------------------------------------------

sub run_node
{
	my ($name) = @_;
	return background([ $autoctl, 'run', '--pgdata', "$dir/$name" ], "$dir/$name.autoctl.log");
}

# -- 1. a monitor, two nodes ---------------------------------------------------------

my %port = map { $_ => PostgreSQL::Test::Cluster::get_free_port() } ('monitor', 'node1', 'node2');
my $monitor = "host=$sock port=$port{monitor} dbname=pg_auto_failover user=autoctl_node";
my $monitor_uri = "postgres://autoctl_node\@127.0.0.1:$port{monitor}/pg_auto_failover?sslmode=disable";
my $n1 = "host=$sock port=$port{node1} dbname=postgres user=postgres";
my $n2 = "host=$sock port=$port{node2} dbname=postgres user=postgres";
my $both = "host=$sock,$sock port=$port{node1},$port{node2} dbname=postgres user=postgres target_session_attrs=read-write";

# pg_autoctl has no socket-directory option: the data directories are made
# here with unix_socket_directories set (node2's is a copy of node1's)
command_ok([ "$monitor_bindir/initdb", '-D', "$dir/monitor", '-A', 'trust', '-U', 'postgres', '--no-sync' ], 'initdb monitor');
append_to_file("$dir/monitor/postgresql.conf", "unix_socket_directories = '$sock'\nfsync = off\n");
command_ok([ $autoctl, 'create', 'monitor', '--pgdata', "$dir/monitor", '--pgport', $port{monitor},
	'--hostname', '127.0.0.1', '--auth', 'trust', '--no-ssl', '--pgctl', "$monitor_bindir/pg_ctl" ],
	'pg_autoctl create monitor');
run_node('monitor');
ok(poll_sql("host=$sock port=$port{monitor} dbname=pg_auto_failover user=postgres", 'SELECT true'), 'the monitor runs');

command_ok([ "$bindir/initdb", '-D', "$dir/node1", '-A', 'trust', '-U', 'postgres', '--no-sync' ], 'initdb node1');
append_to_file("$dir/node1/postgresql.conf", <<"CONF");
unix_socket_directories = '$sock'
shared_preload_libraries = 'connect_guard'
connect_guard.naptime = '200ms'
connect_guard.witness_directory = '$wdir'
fsync = off
shared_buffers = '128MB'
CONF
foreach my $name ('node1', 'node2')
{
	command_ok([ $autoctl, 'create', 'postgres', '--pgdata', "$dir/$name", '--pgport', $port{$name},
		'--hostname', '127.0.0.1', '--name', $name, '--monitor', $monitor_uri, '--auth', 'trust', '--no-ssl',
		'--pgctl', "$bindir/pg_ctl", '--pghost', $sock ], "pg_autoctl create postgres $name");
	run_node($name);
	if ($name eq 'node1')
	{
		ok(poll_sql($monitor, "SELECT reportedstate = 'single' FROM pgautofailover.node WHERE nodename = 'node1'"),
			'node1 runs as a single node');
		ok(poll_sql($n1, 'SELECT NOT pg_is_in_recovery()'), 'and accepts connections');
		ha_schema($n1);
	}
}
sub states
{
	return sql_at($monitor, "SELECT string_agg(nodename || ' ' || reportedstate || '/' || goalstate, ', ' ORDER BY nodename)
	                        FROM pgautofailover.node");
}
sub wait_states
{
	my ($want, $seconds) = @_;
	return 1 if wait_until($seconds // 90, sub { states() eq $want }, 0.3);
	diag 'monitor: ' . states();
	return 0;
}
ok(wait_states('node1 primary/primary, node2 secondary/secondary', 120), 'node1 primary, node2 secondary');

start_mirror();
start_consumer($both);

# -- 2. the changeover, promoted by the monitor ----------------------------------------

my $bench = start_writers($n1, 8);
sleep 2;
my $plan = sql_at($n1, "SELECT connect_prepare_upgrade('follower', follower => \$\$$n2\$\$, max_lag_bytes => 16 * 1024 * 1024,
                      timeout => '1 min', promote_with => 'pg_auto_failover', ha_endpoint => \$\$$monitor\$\$,
                      ha_member => 'node2')");
ok($plan > 0, "plan $plan prepared with promote_with => 'pg_auto_failover'");
is(sql_at($n1, "SELECT connect_wait_upgrade($plan, 'ready', '90 s')"), 'ready',
	'the plan reaches ready: paused, fenced, follower caught up');
is(sql_at($n1, "SELECT ha_target ->> 'formation' || ' ' || (ha_target ->> 'leader') || ' ' || (ha_target ->> 'candidate')
               FROM connect_guard.upgrade_plan WHERE plan_id = $plan"),
	'default node1 node2', 'the monitor confirmed the formation, this server as primary and node2');

my $probe = first_write($n2, "$dir/first_write_1");
is(sql_at($n1, "SELECT connect_promote_follower($plan)"), 'switchover requested', 'connect_promote_follower hands over to the monitor');
$probe->finish;
$bench->finish;
plan_completed_ok($n2, $plan);
is(sql_at($n2, "SELECT count(*) FROM connect_guard.event WHERE kind = 'upgrade_switchover_requested'"), '1',
	'the request to the monitor was recorded before this server was demoted');
ok(wait_states('node1 secondary/secondary, node2 primary/primary', 120), 'pg_autoctl brings node1 back as a secondary');
switched_over_ok($n1, $n2, $plan, "$dir/first_write_1", 'pg_auto_failover');

# -- 3. the monitor fails over on its own, under load ------------------------------------

$bench = start_writers($n2, 6);
sleep 2;
sql_at($monitor, "SELECT pgautofailover.perform_failover('default', 0)");
ok(wait_states('node1 primary/primary, node2 secondary/secondary', 120), 'the monitor made node1 primary again');
$bench->finish;
failover_seen_ok($n1);
is(sql_at($n2, 'SELECT pg_is_in_recovery()'), 't', 'node2, the old primary, came back as a replica');
$bench = start_writers($n1, 3);
$bench->finish;

# -- 4. counting ------------------------------------------------------------------------

stop_consumer();
delivered_once_ok($n1);

stop_background();
done_testing();
