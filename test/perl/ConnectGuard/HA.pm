# ConnectGuard::HA: what the tests of a follower changeover promoted by an
# HA manager share (test/t/021_patroni.pl, test/t/022_pg_auto_failover.pl):
# servers reached by conninfo, background processes, the mirror and the
# simulator consuming into it, the writers, and the checks both managers
# must pass.  Its POD below documents each function.

=pod

=head1 NAME

ConnectGuard::HA - a changeover under Patroni or pg_auto_failover, for TAP tests

=head1 SYNOPSIS

  use ConnectGuard::HA;

  my $dir = ha_dir();
  my $etcd = background([ '/usr/bin/etcd', ... ], "$dir/etcd.log");
  ha_schema($n1);                        # account, writes; sync maps both
  start_mirror();
  start_consumer($both);                 # the simulator, following the primary
  my $bench = start_writers($n1, 8);
  # ... the plan, the manager's switchover ...
  plan_completed_ok($n2, $plan);         # 4 assertions
  # ... a failover ...
  failover_seen_ok($n1);                 # 5 assertions
  stop_consumer();
  delivered_once_ok($n1);                # 6 assertions
  stop_background();

=head1 DESCRIPTION

The HA managers start and stop the servers themselves, so these servers are
not PostgreSQL::Test::Cluster nodes: they are reached by conninfo, and the
managers, etcd and the simulator run as background processes that this
module stops at the end, whatever happens.  Each transaction of the writers
makes two log entries (an C<account> update and a row of C<writes>, both
mapped), which the closing count relies on.

Both tests prove the same thing of two managers: that a changeover they
promote completes on the new primary, and that a failover without a plan is
told from a rollback.  The checks of that contract are here, once, so that
the two files cannot drift apart: unlike L<ConnectGuard::Test>, the
functions ending in C<_ok> make assertions, as many as their description
says, and a test's plan counts them.

One mirror and one consumer per test file: the functions share them.

=cut

package ConnectGuard::HA;

use strict;
use warnings;
use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ConnectGuard::Test ();

our @EXPORT = qw(
  ha_dir psql_at sql_at poll_sql wait_until
  background stop_background
  ha_schema start_mirror start_consumer stop_consumer start_writers first_write
  plan_completed_ok switched_over_ok failover_seen_ok delivered_once_ok
);

# beside test/perl/ConnectGuard/: test/simulator/connect_sim.py
my $SIMULATOR = File::Spec->rel2abs(
	dirname(__FILE__) . '/../../simulator/connect_sim.py');

my ($dir, $mirror, $consumer);
my @running;    # background harnesses, stopped at the end whatever happens

=head2 Servers by conninfo

=over

=item ha_dir()

The test's temporary directory: configuration files, logs, scripts.

=cut

sub ha_dir
{
	$dir //= PostgreSQL::Test::Utils::tempdir;
	return $dir;
}

=item psql_at($conninfo, $sql)

Runs C<$sql> with psql: (exit code, output, error output).

=cut

sub psql_at
{
	my ($conninfo, $sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $conninfo, '-c', $sql ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120));
	chomp $out;
	return ($? >> 8, $out, $err);
}

=item sql_at($conninfo, $sql)

The output of C<$sql>, dying on an error.

=cut

sub sql_at
{
	my ($conninfo, $sql) = @_;
	my ($rc, $out, $err) = psql_at($conninfo, $sql);
	die "query failed on $conninfo: $sql\n$err" if $rc != 0;
	return $out;
}

=item wait_until($seconds, $code, $pause)

Calls C<$code> every C<$pause> seconds (default 0.2) until it returns true
(then returns 1) or C<$seconds> have passed (then 0).

=cut

sub wait_until
{
	my ($seconds, $code, $pause) = @_;
	my $deadline = time + $seconds;
	while (time < $deadline)
	{
		return 1 if $code->();
		sleep($pause // 0.2);
	}
	return 0;
}

=item poll_sql($conninfo, $sql, $seconds)

Waits up to C<$seconds> (default 90) until C<$sql> returns C<t>; errors on
the way (a server restarting) are waited through.

=cut

sub poll_sql
{
	my ($conninfo, $sql, $seconds) = @_;
	return wait_until(
		$seconds // 90,
		sub {
			my ($rc, $out) = psql_at($conninfo, $sql);
			return $rc == 0 && $out eq 't';
		});
}

=back

=head2 Background processes

=over

=item background(\@cmd, $log)

Starts C<@cmd> with its output appended to C<$log> and returns the
IPC::Run harness; C<stop_background> (or the end of the test) stops it.

=cut

sub background
{
	my ($cmd, $log) = @_;
	my $h = IPC::Run::start($cmd, '>>', $log, '2>&1');
	push @running, $h;
	return $h;
}

=item stop_background()

Stops every background process still running, the last started first
(SIGTERM, then SIGKILL after 30 s): the managers before etcd or the
monitor they depend on.

=cut

sub stop_background
{
	while (my $h = pop @running)
	{
		eval { $h->kill_kill(grace => 30) if $h->pumpable; 1 }
		  or diag("stopping a background process: $@");
	}
	return;
}

END
{
	local $?;    # reaping them must not change the exit status Test::More reads
	stop_background();
}

=back

=head2 The tables, the mirror, the consumer, the writers

=over

=item ha_schema($conninfo)

CREATE EXTENSION connect_guard; C<account> (100 rows, there before the
mapping) and C<writes>, both mapped by the connection C<sync>.

=cut

sub ha_schema
{
	my ($conninfo) = @_;
	sql_at($conninfo, q{
		CREATE EXTENSION connect_guard;
		CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
		INSERT INTO account SELECT g FROM generate_series(1, 100) g;
		CREATE TABLE writes (n bigserial PRIMARY KEY, account_id int NOT NULL);
		SELECT connect_create_connection('sync');
		SELECT connect_map_table('sync', 'account');
		SELECT connect_map_table('sync', 'writes');
	});
	return;
}

=item start_mirror()

The mirror (Salesforce, for the simulator): a cluster of its own with the
same tables, filled as the primary's were before the mapping.  Returns its
node.

=cut

sub start_mirror
{
	$mirror = PostgreSQL::Test::Cluster->new('mirror');
	$mirror->init;
	$mirror->start;
	$mirror->safe_psql('postgres', q{
		CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
		INSERT INTO account SELECT g FROM generate_series(1, 100) g;
		CREATE TABLE writes (n bigint PRIMARY KEY, account_id int NOT NULL);
	});
	return $mirror;
}

# the simulator's command line for a mode (--consume, --drain, --verify) on a source
sub _simulator
{
	my ($mode, $source, @extra) = @_;
	return [ '/usr/bin/python3', $SIMULATOR, $mode, '--source', $source,
		'--mirror', $mirror->connstr('postgres'), '--connection', 'sync', @extra ];
}

=item start_consumer($conninfo)

The simulator consuming C<sync> from C<$conninfo> into the mirror; a
multi-host conninfo with C<target_session_attrs=read-write> lets it follow
the primary.

=cut

sub start_consumer
{
	my ($conninfo) = @_;
	$consumer = background(_simulator('--consume', $conninfo, '--poll-ms', '50'),
		ha_dir() . '/consumer.log');
	return $consumer;
}

=item stop_consumer()

SIGTERM: the simulator finishes the batch in hand, then exits.

=cut

sub stop_consumer
{
	$consumer->signal('TERM');
	$consumer->finish;
	return;
}

=item start_writers($conninfo, $seconds)

C<pgbench> with two clients for C<$seconds>, each transaction an
C<account> update and a row of C<writes> (two log entries); returns the
harness, to C<finish>.

=cut

sub start_writers
{
	my ($conninfo, $seconds) = @_;
	my $script = ConnectGuard::Test::writes_script(ha_dir());
	return IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-T', $seconds, '--max-tries', '1', '-f', $script, $conninfo ],
		'>', ha_dir() . '/pgbench.out', '2>>', ha_dir() . '/pgbench.log');
}

=item first_write($conninfo, $file)

Starts a loop that writes to a server until it accepts (one transaction of
the writers' shape) and records when into C<$file>; returns the harness.

=cut

sub first_write
{
	my ($conninfo, $file) = @_;
	return IPC::Run::start([ 'bash', '-c', q{
		until psql -XAtq -d "$0" -c "UPDATE account SET balance = balance + 1 WHERE id = 1; INSERT INTO writes (account_id) VALUES (1) RETURNING clock_timestamp()" >"$1" 2>/dev/null
		do sleep 0.005; done}, $conninfo, $file ], IPC::Run::timeout(120));
}

=back

=head2 What every manager must get right

=over

=item plan_completed_ok($new, $plan)

Four assertions on the promoted server C<$new>: its worker completes the
plan, lifts its fence, resumes the connection, and the timeline shows the
switchover step.

=cut

sub plan_completed_ok
{
	my ($new, $plan) = @_;
	ok(poll_sql($new, "SELECT status = 'completed' FROM connect_upgrade_status WHERE plan = $plan"),
		'the new primary\'s worker completes the plan');
	is(sql_at($new, 'SELECT count(*) FROM connect_fences'), '0', 'the new primary lifted its fence');
	# (IDLE, or POLLING_DB_CHANGES while the simulator holds a batch)
	is(sql_at($new, "SELECT state IN ('IDLE', 'POLLING_DB_CHANGES') FROM connect_connections"), 't',
		'and resumed the connection');
	is(sql_at($new, "SELECT string_agg(step, ',' ORDER BY started_at) FROM connect_upgrade_timeline($plan)"),
		'checking,pausing,fencing,fencing_follower,catching_up,ready,switching_over,completing,completed',
		'the timeline shows the switchover step');
	return;
}

=item switched_over_ok($old, $new, $plan, $first_write_file, $manager)

Three assertions once the manager brought the old primary back: C<$old> is
in recovery, C<$new> compared itself with the old primary's witness and saw
a promotion, not a rollback.  Notes the write-blocked window (the fence up
on C<$old> to the first write C<first_write> saw accepted on C<$new>).

=cut

sub switched_over_ok
{
	my ($old, $new, $plan, $first_write_file, $manager) = @_;
	is(sql_at($old, 'SELECT pg_is_in_recovery()'), 't', 'the old primary is in recovery');
	my $window = sql_at($new,
		"SELECT round(extract(epoch FROM '" . slurp_file($first_write_file) . "'::timestamptz - finished_at) * 1000)
		   FROM connect_guard.upgrade_step WHERE plan_id = $plan AND step = 'fencing'");
	note "write-blocked window under $manager (fence up on the old primary to the first write accepted on the new one): $window ms";
	ok(poll_sql($new, "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'witness_promoted'"),
		'the new primary compared itself with the old one\'s witness and saw a promotion');
	is(sql_at($new, "SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_detected'"), '0',
		'no rollback detected');
	return;
}

=item failover_seen_ok($conninfo)

Five assertions on a server promoted by a failover without a plan, after
the changeover: it sees a second promotion past the witness (the first, of
the changeover, came with the WAL), recognised as a failover and not as a
rollback; it keeps no fence from the changeover and reloads no mapping.

=cut

sub failover_seen_ok
{
	my ($conninfo) = @_;
	ok(poll_sql($conninfo, "SELECT count(*) = 2 FROM connect_guard.event WHERE kind = 'witness_promoted'", 30),
		'the promoted server sees a promotion past the witness');
	like(sql_at($conninfo, "SELECT detail ->> 'detail' FROM connect_guard.event WHERE kind = 'witness_promoted'
	                         ORDER BY event_id DESC LIMIT 1"),
		qr/^timeline 3 left timeline 2 at .* \(no upgrade plan: a failover/, 'recognised as a failover without a plan');
	is(sql_at($conninfo, "SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_detected'"), '0',
		'not as a rollback');
	ok(poll_sql($conninfo, 'SELECT count(*) = 0 FROM connect_fences', 30),
		'it keeps no fence from the changeover, whose old primary it was');
	is(sql_at($conninfo, "SELECT string_agg(state, ',') FROM connect_mappings"), 'DATA_SYNCED,DATA_SYNCED',
		'no mapping is reloaded');
	return;
}

=item delivered_once_ok($conninfo)

Six assertions, once the consumer is stopped: the simulator drains the
primary C<$conninfo>; more than 50 transactions committed; each reached the
log once (two entries each) and the mirror once; the mirror has every row;
and C<--verify> finds the mirror equal to the tables.

=cut

sub delivered_once_ok
{
	my ($conninfo) = @_;
	command_ok(_simulator('--drain', $conninfo), 'the simulator drains the primary');
	my $writes = sql_at($conninfo, 'SELECT count(*) FROM writes');
	ok($writes > 50, "$writes transactions committed across the switchover and the failover");
	is(sql_at($conninfo, 'SELECT count(*) FROM ' . ConnectGuard::Test::whole_log() . ' l'), 2 * $writes,
		'each reached the log once (two entries each)');
	is($mirror->safe_psql('postgres', "SELECT count(*) FROM _sim_applied WHERE connection = 'sync'"), 2 * $writes,
		'each entry was applied to the mirror once');
	is($mirror->safe_psql('postgres', 'SELECT count(*) FROM writes'), $writes, 'the mirror has every row');
	command_ok(_simulator('--verify', $conninfo), '--verify: the mirror equals the tables');
	return;
}

=back

=cut

1;
