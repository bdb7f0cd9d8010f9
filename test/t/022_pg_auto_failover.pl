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
# Helpers are local to this file (test/t/021_patroni.pl has its own).
use strict;
use warnings;
use File::Spec;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

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

my $dir  = PostgreSQL::Test::Utils::tempdir;
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
my @running;

END
{
	foreach my $h (reverse @running) { eval { $h->signal('TERM') if $h->pumpable; }; }
	sleep 3 if @running;
	foreach my $h (reverse @running) { eval { $h->kill_kill(grace => 5); }; }
}

# -- helpers ---------------------------------------------------------------------

sub psql_at
{
	my ($conninfo, $sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $conninfo, '-c', $sql ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120));
	chomp $out;
	return ($? >> 8, $out, $err);
}

sub sql
{
	my ($conninfo, $sql) = @_;
	my ($rc, $out, $err) = psql_at($conninfo, $sql);
	die "query failed on $conninfo: $sql\n$err" if $rc != 0;
	return $out;
}

sub poll_sql
{
	my ($conninfo, $sql, $seconds) = @_;
	my $deadline = time + ($seconds // 90);
	while (time < $deadline)
	{
		my ($rc, $out) = psql_at($conninfo, $sql);
		return 1 if $rc == 0 && $out eq 't';
		sleep 0.2;
	}
	return 0;
}

sub run_node
{
	my ($name) = @_;
	my $h = IPC::Run::start([ $autoctl, 'run', '--pgdata', "$dir/$name" ], '>>', "$dir/$name.autoctl.log", '2>&1');
	push @running, $h;
	return $h;
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
		sql($n1, q{
			CREATE EXTENSION connect_guard;
			CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
			INSERT INTO account SELECT g FROM generate_series(1, 100) g;
			CREATE TABLE writes (n bigserial PRIMARY KEY, account_id int NOT NULL);
			SELECT connect_create_connection('sync');
			SELECT connect_map_table('sync', 'account');
			SELECT connect_map_table('sync', 'writes');
		});
	}
}
sub states
{
	return sql($monitor, "SELECT string_agg(nodename || ' ' || reportedstate || '/' || goalstate, ', ' ORDER BY nodename)
	                        FROM pgautofailover.node");
}
sub wait_states
{
	my ($want, $seconds) = @_;
	my $deadline = time + ($seconds // 90);
	while (time < $deadline) { return 1 if states() eq $want; sleep 0.3; }
	diag 'monitor: ' . states();
	return 0;
}
ok(wait_states('node1 primary/primary, node2 secondary/secondary', 120), 'node1 primary, node2 secondary');

my $mirror = PostgreSQL::Test::Cluster->new('mirror');
$mirror->init;
$mirror->start;
$mirror->safe_psql('postgres', q{
	CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
	INSERT INTO account SELECT g FROM generate_series(1, 100) g;
	CREATE TABLE writes (n bigint PRIMARY KEY, account_id int NOT NULL);
});
my $mirror_conninfo = $mirror->connstr('postgres');
my $simulator = File::Spec->rel2abs('test/simulator/connect_sim.py');
my $consumer = IPC::Run::start(
	[ '/usr/bin/python3', $simulator, '--consume', '--source', $both, '--mirror', $mirror_conninfo,
	  '--connection', 'sync', '--poll-ms', '50' ],
	'>', "$dir/consumer.out", '2>', "$dir/consumer.log");
push @running, $consumer;

my $script = "$dir/writes.sql";
append_to_file($script, q{
\set id random(1, 100)
BEGIN;
UPDATE account SET balance = balance + 1 WHERE id = :id;
INSERT INTO writes (account_id) VALUES (:id);
END;
});
sub pgbench
{
	my ($conninfo, $seconds) = @_;
	return IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-T', $seconds, '--max-tries', '1', '-f', $script, $conninfo ],
		'>', "$dir/pgbench.out", '2>>', "$dir/pgbench.log");
}
sub first_write
{
	my ($conninfo, $file) = @_;
	return IPC::Run::start([ 'bash', '-c', q{
		until psql -XAtq -d "$0" -c "UPDATE account SET balance = balance + 1 WHERE id = 1; INSERT INTO writes (account_id) VALUES (1) RETURNING clock_timestamp()" >"$1" 2>/dev/null
		do sleep 0.005; done}, $conninfo, $file ], IPC::Run::timeout(120));
}

# -- 2. the changeover, promoted by the monitor ----------------------------------------

my $bench = pgbench($n1, 8);
sleep 2;
my $plan = sql($n1, "SELECT connect_prepare_upgrade('follower', follower => \$\$$n2\$\$, max_lag_bytes => 16 * 1024 * 1024,
                      timeout => '1 min', promote_with => 'pg_auto_failover', ha_endpoint => \$\$$monitor\$\$,
                      ha_member => 'node2')");
ok($plan > 0, "plan $plan prepared with promote_with => 'pg_auto_failover'");
is(sql($n1, "SELECT connect_wait_upgrade($plan, 'ready', '90 s')"), 'ready',
	'the plan reaches ready: paused, fenced, follower caught up');
is(sql($n1, "SELECT ha_target ->> 'formation' || ' ' || (ha_target ->> 'leader') || ' ' || (ha_target ->> 'candidate')
               FROM connect_guard.upgrade_plan WHERE plan_id = $plan"),
	'default node1 node2', 'the monitor confirmed the formation, this server as primary and node2');

my $probe = first_write($n2, "$dir/first_write_1");
is(sql($n1, "SELECT connect_promote_follower($plan)"), 'switchover requested', 'connect_promote_follower hands over to the monitor');
$probe->finish;
ok(poll_sql($n2, "SELECT status = 'completed' FROM connect_upgrade_status WHERE plan = $plan"),
	'node2\'s worker completes the plan');
$bench->finish;
is(sql($n2, 'SELECT count(*) FROM connect_fences'), '0', 'node2 lifted its fence');
# (IDLE, or POLLING_DB_CHANGES while the simulator holds a batch)
is(sql($n2, "SELECT state IN ('IDLE', 'POLLING_DB_CHANGES') FROM connect_connections"), 't', 'and resumed the connection');
is(sql($n2, "SELECT count(*) FROM connect_guard.event WHERE kind = 'upgrade_switchover_requested'"), '1',
	'the request to the monitor was recorded before this server was demoted');
is(sql($n2, "SELECT string_agg(step, ',' ORDER BY started_at) FROM connect_upgrade_timeline($plan)"),
	'checking,pausing,fencing,fencing_follower,catching_up,ready,switching_over,completing,completed',
	'the timeline shows the switchover step');
ok(wait_states('node1 secondary/secondary, node2 primary/primary', 120), 'pg_autoctl brings node1 back as a secondary');
is(sql($n1, 'SELECT pg_is_in_recovery()'), 't', 'node1 is in recovery');
my $window = sql($n2, "SELECT round(extract(epoch FROM '" . slurp_file("$dir/first_write_1") . "'::timestamptz - finished_at) * 1000)
                         FROM connect_guard.upgrade_step WHERE plan_id = $plan AND step = 'fencing'");
note "write-blocked window under pg_auto_failover (fence up on node1 to the first write accepted on node2): $window ms";
ok(poll_sql($n2, "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'witness_promoted'"),
	'node2 compared itself with node1\'s witness and saw a promotion');
is(sql($n2, "SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_detected'"), '0', 'no rollback detected');

# -- 3. the monitor fails over on its own, under load ------------------------------------

$bench = pgbench($n2, 6);
sleep 2;
sql($monitor, "SELECT pgautofailover.perform_failover('default', 0)");
ok(wait_states('node1 primary/primary, node2 secondary/secondary', 120), 'the monitor made node1 primary again');
$bench->finish;
ok(poll_sql($n1, "SELECT count(*) = 2 FROM connect_guard.event WHERE kind = 'witness_promoted'", 30),
	'node1 sees a promotion past the witness');
like(sql($n1, "SELECT detail ->> 'detail' FROM connect_guard.event WHERE kind = 'witness_promoted' ORDER BY event_id DESC LIMIT 1"),
	qr/^timeline 3 left timeline 2 at .* \(no upgrade plan: a failover/, 'recognised as a failover without a plan');
is(sql($n1, "SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_detected'"), '0', 'not as a rollback');
ok(poll_sql($n1, 'SELECT count(*) = 0 FROM connect_fences', 30), 'node1 keeps no fence from the changeover');
is(sql($n1, "SELECT string_agg(state, ',') FROM connect_mappings"), 'DATA_SYNCED,DATA_SYNCED', 'no mapping is reloaded');
is(sql($n2, 'SELECT pg_is_in_recovery()'), 't', 'node2, the old primary, came back as a replica');
$bench = pgbench($n1, 3);
$bench->finish;

# -- 4. counting ------------------------------------------------------------------------

$consumer->signal('TERM');
$consumer->finish;
command_ok([ '/usr/bin/python3', $simulator, '--drain', '--source', $n1, '--mirror', $mirror_conninfo, '--connection', 'sync' ],
	'the simulator drains the primary');
my $writes = sql($n1, 'SELECT count(*) FROM writes');
ok($writes > 50, "$writes transactions committed across the switchover and the failover");
my $log = '(SELECT id FROM connect_guard.trigger_log UNION ALL SELECT id FROM connect_guard.trigger_log_archive)';
is(sql($n1, "SELECT count(*) FROM $log l"), 2 * $writes, 'each reached the log once (two entries each)');
is($mirror->safe_psql('postgres', "SELECT count(*) FROM _sim_applied WHERE connection = 'sync'"), 2 * $writes,
	'each entry was applied to the mirror once');
is($mirror->safe_psql('postgres', 'SELECT count(*) FROM writes'), $writes, 'the mirror has every row');
command_ok([ '/usr/bin/python3', $simulator, '--verify', '--source', $n1, '--mirror', $mirror_conninfo, '--connection', 'sync' ],
	'--verify: the mirror equals the tables');

foreach my $h (reverse @running) { $h->signal('TERM') if $h->pumpable; }
$_->finish foreach (reverse @running);
@running = ();
$mirror->stop;
done_testing();
