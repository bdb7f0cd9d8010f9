# The fence holes a crash or a restore opens (the ones a table owner opens
# are in sql/fence_holes.sql).
#
# A. A crash while a fence change has not committed.  The fence acts at
#    once, before its transaction commits (it must stop new writers before
#    waiting for the ones in flight), and its file is written then.  A
#    server that stops before the commit must not come back with a fence
#    nobody raised (connect_status not fenced, connect_resume "not paused",
#    connect_unfence "no fence"), nor without one whose lowering never
#    committed.  Each way of stopping: immediate shutdown, kill -9 of the
#    backend (a crash restart resets shared memory), kill -9 of the
#    postmaster; each change: connect_pause and connect_fence (both scopes)
#    waiting for a writer, connect_resume, a table mapped and unmapped while
#    paused.  After each restart: the fences are exactly those whose change
#    committed, and every fence is one connect_status shows and a function
#    lowers.
#
# B. Writes while a restored server has not been checked yet.  After a
#    point-in-time restore the server accepts connections before its
#    worker's first rollback check moves the log id sequence past what the
#    consumer saw.  Writers hammer the mapped table from before the server
#    opens; counted by commit timestamp against the check: none committed
#    before it, and no entry reuses an id the consumer saw.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep);
use ConnectGuard::Test qw(:DEFAULT wal_archived restored_node);

# -- A. crashes while a fence change is in doubt -------------------------------

my $node = cg_node('crash', conf => [ "connect_guard.naptime = '200ms'", 'restart_after_crash = on' ]);
sql($node, q{
	CREATE EXTENSION connect_guard;
	CREATE TABLE item (id int PRIMARY KEY);
	CREATE TABLE extra (id int PRIMARY KEY);
	CREATE TABLE other (id int PRIMARY KEY);
	SELECT connect_create_connection('sync');
	SELECT connect_map_table('sync', 'item');
});

my $next_id = 100;
sub try_write { my ($table) = @_; $next_id++; return write_error($node, "INSERT INTO $table VALUES ($next_id)"); }

# every fence is one connect_status shows, and one a function lowers: a
# connection's fence is its connection's, the others are connect_unfence's
sub hidden_fences
{
	return sql($node, q{
		SELECT count(*) FROM connect_fences f
		 WHERE f.scope = 'connection'
		   AND NOT EXISTS (SELECT 1 FROM connect_guard.connection c
		                    WHERE c.fence_id = f.fence_id AND c.state IN ('PAUSED', 'PAUSING'))});
}

# crash stops the server the given way and starts it again
sub crash
{
	my ($how, $victim_pid) = @_;
	if ($how eq 'immediate')
	{
		$node->stop('immediate');
		$node->start;
	}
	elsif ($how eq 'backend')
	{
		kill 'KILL', $victim_pid;
		$node->poll_query_until('postgres', 'SELECT true') or die 'no crash restart';
	}
	else
	{
		kill9_postmaster($node);
	}
}

# in_doubt starts $call in a session of its own and leaves it waiting for a
# writer that holds item, until the fence it raised is seen from outside;
# returns the session, the writer and the caller's backend pid
sub in_doubt
{
	my ($call) = @_;
	my $writer = $node->background_psql('postgres');
	$writer->query_safe("BEGIN; INSERT INTO item VALUES (1)");
	my $caller = $node->background_psql('postgres');
	my $pid = $caller->query_safe('SELECT pg_backend_pid()');
	$caller->query_until(qr/started/, "\\echo started\n$call;\n");
	$node->poll_query_until('postgres', 'SELECT count(*) > 0 FROM connect_fences') or die 'no fence seen';
	return ($caller, $writer, $pid);
}

sub after_crash
{
	my ($what) = @_;
	is(sql($node, 'SELECT count(*) FROM connect_fences'), '0', "$what: no fence after the restart");
	is(sql($node, 'SELECT state || \' \' || fenced FROM connect_status'), 'IDLE false',
		"$what: the connection is IDLE and not fenced");
	is(try_write('item'), '', "$what: the mapped table takes writes");
	is(try_write('other'), '', "$what: so does another table");
	is(write_error($node, "SELECT connect_unfence()"), '55000', "$what: connect_unfence: no fence is up, rightly");
	is(hidden_fences(), '0', "$what: no fence connect_status hides");
}

my @ways = (
	[ "connect_pause waiting for a writer", "SELECT connect_pause('sync', timeout => '5 min')", 'immediate' ],
	[ "connect_fence('mapped') waiting for a writer", "SELECT connect_fence('mapped', timeout => '5 min')", 'backend' ],
	[ "connect_fence('database') waiting for a writer", "SELECT connect_fence('database', timeout => '5 min')", 'postmaster' ],
	[ "connect_pause waiting for a writer", "SELECT connect_pause('sync', timeout => '5 min')", 'postmaster' ],
);
foreach my $way (@ways)
{
	my ($what, $call, $how) = @$way;
	my $offset = -s $node->logfile;
	my ($caller, $writer, $pid) = in_doubt($call);
	is(try_write('item'), '25006', "$what: in doubt, the fence already refuses writes");
	crash($how, $pid);
	$_->{run}->kill_kill foreach ($caller, $writer);
	after_crash("$what, then $how stop");
	# (after a kill -9 of the postmaster the backend notices, aborts and
	# undoes the raise itself; otherwise it dies without a word)
	ok($node->log_contains('had not committed when the server stopped: undone', $offset),
		"$what, then $how stop: the server log says the raise was undone")
		if $how ne 'postmaster';
}

# a lowering in doubt: the fence comes back
sql($node, "SELECT connect_pause('sync', reason => 'kept')");
foreach my $how ('immediate', 'backend')
{
	my $session = $node->background_psql('postgres');
	my $pid = $session->query_safe('SELECT pg_backend_pid()');
	$session->query_safe("BEGIN; SELECT connect_resume('sync')");
	is(sql($node, 'SELECT count(*) FROM connect_fences'), '0', "resume in doubt ($how): the fence is down meanwhile");
	crash($how, $pid);
	$session->{run}->kill_kill;
	is(sql($node, "SELECT state || ' ' || fenced || ' ' || fenced_because FROM connect_status"), 'PAUSED true kept',
		"resume in doubt, then $how stop: still paused and fenced, for its reason");
	is(try_write('item'), '25006', "resume in doubt, then $how stop: the mapped table is fenced");
	is(hidden_fences(), '0', "resume in doubt, then $how stop: no fence connect_status hides");
}

# tables mapped or unmapped while paused, in doubt: the fence covers what committed
my $session = $node->background_psql('postgres');
$session->query_safe("BEGIN; SELECT connect_map_table('sync', 'extra')");
# (a write would wait for the trigger the open transaction created)
is(sql($node, "SELECT array_to_string(fenced_tables, ',') FROM connect_fences"), 'extra,item',
	'mapping in doubt while paused: the new table is fenced at once');
crash('immediate');
$session->{run}->kill_kill;
is(sql($node, "SELECT array_to_string(fenced_tables, ',') FROM connect_fences"), 'item',
	'mapping in doubt, then a crash: the fence covers the committed mappings only');
is(try_write('extra'), '', 'mapping in doubt, then a crash: the table that was not mapped takes writes');
$session = $node->background_psql('postgres');
$session->query_safe("BEGIN; SELECT connect_unmap_table('sync', 'item')");
is(sql($node, "SELECT coalesce(array_to_string(fenced_tables, ','), '') FROM connect_fences"), '',
	'unmapping in doubt while paused: the table is unfenced at once');
crash('immediate');
$session->{run}->kill_kill;
is(sql($node, "SELECT array_to_string(fenced_tables, ',') FROM connect_fences"), 'item',
	'unmapping in doubt, then a crash: the table is fenced again');
is(try_write('item'), '25006', 'unmapping in doubt, then a crash: and refuses writes');

# a committed change survives, and everything can be lowered
crash('postmaster');
is(try_write('item'), '25006', 'a committed pause survives a kill -9 of the postmaster');
is(sql($node, "SELECT connect_resume('sync')"), 'IDLE', 'connect_resume lowers it');
is(try_write('item'), '', 'writes resume');
is(sql($node, 'SELECT count(*) FROM connect_fences'), '0', 'no fence left');
# every write that succeeded is in the log once; the refused ones nowhere
is(sql($node, q{SELECT count(*) FROM connect_guard.trigger_log}),
	sql($node, 'SELECT count(*) FROM item'), 'the log holds one entry per row of the mapped table');
$node->stop;

# -- B. a restored server holds writes to mapped tables until its first check --

my $wdir = PostgreSQL::Test::Utils::tempdir;
my $primary = cg_node('primary', init => [ has_archiving => 1, allows_streaming => 1 ], conf => [
	"connect_guard.naptime = '200ms'", "connect_guard.witness_directory = '$wdir'",
	'connect_guard.fence_on_rollback = off', 'track_commit_timestamp = on' ]);
sql($primary, q{
	CREATE EXTENSION connect_guard;
	CREATE TABLE item (id bigserial PRIMARY KEY, tag text NOT NULL);
	SELECT connect_create_connection('sync');
	SELECT connect_map_table('sync', 'item');
});

$primary->backup('base');
sql($primary, "INSERT INTO item (tag) SELECT 'before' FROM generate_series(1, 10)");
consume($primary, record => 0);
my $target = sql($primary, 'SELECT pg_current_wal_lsn()');
sql($primary, "INSERT INTO item (tag) SELECT 'lost' FROM generate_series(1, 100)");
consume($primary, record => 0);
my $seen = sql($primary, "SELECT hwm_id FROM connect_high_water_marks WHERE connection = 'sync'");
# the witness, once it records what the consumer saw
sub witnessed_hwm
{
	my ($file) = glob("$wdir/*.witness");
	return '' unless $file;
	my (undef, $body) = split /\n/, slurp_file($file), 2;
	my $w = eval { decode_json($body // '') } // {};
	return $w->{connections}{sync}{hwm_id} // '';
}
my $witnessed = '';
foreach (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	last if ($witnessed = witnessed_hwm()) eq $seen;
	sleep 0.1;
}
is($witnessed, $seen, "the witness records what the consumer saw: entry $seen");
ok(wal_archived($primary), 'the WAL is archived');
$primary->stop;

my $restored = restored_node($primary, 'base', $target, start => 0);    # started below, with writers waiting

# writers: from before the server opens, each its own psql per attempt
my $stop = $restored->basedir . '/stop_writers';
my ($host, $port) = ($restored->host, $restored->port);
my @writers = map {
	my $out = '';
	my $h = IPC::Run::start(
		[ 'bash', '-c', qq{while [ ! -e '$stop' ]; do
			psql -X -At -h '$host' -p $port -d postgres -c "INSERT INTO item (tag) VALUES ('writer') RETURNING 'committed'" 2>&1 | head -c 200; echo;
		done} ],
		'>', \$out, '2>', \$out);
	[ $h, \$out ];
} 1 .. 4;
sleep 0.3;
$restored->start;
ok($restored->poll_query_until('postgres', 'SELECT count(*) = 1 FROM connect_guard.rollback_incident'),
	'the restored server finds the rollback in its first check');
sleep 1.5;    # writes after the check commit: the count below can see commits
append_to_file($stop, 'stop');
foreach my $w (@writers) { $w->[0]->finish; }
my $out = join('', map { ${ $_->[1] } } @writers);
my $attempts = () = $out =~ /^(committed|psql|ERROR)/mg;
my $committed = () = $out =~ /^committed$/mg;
note "writers: $attempts attempts, $committed committed";
cmp_ok($attempts, '>', 20, "the writers tried while the server opened ($attempts attempts)");

my $before_check = sql($restored, q{
	SELECT count(*) FROM item
	 WHERE tag = 'writer'
	   AND pg_xact_commit_timestamp(xmin) <= (SELECT detected_at FROM connect_guard.rollback_incident)});
is($before_check, '0', 'no write to the mapped table committed before the rollback check');
my $after_check = sql($restored, "SELECT count(*) FROM item WHERE tag = 'writer'");
cmp_ok($after_check, '>', 0, "writes committed after the check ($after_check): the count sees commits");
is($after_check, $committed, 'every write a writer was told committed is in the table');
is(sql($restored, qq{SELECT count(*) FROM connect_guard.trigger_log WHERE "values" ->> 'tag' = 'writer' AND id <= $seen}),
	'0', "no writer's entry reuses an id the consumer saw (<= $seen)");
is(sql($restored, q{SELECT count(*) FROM connect_guard.trigger_log WHERE "values" ->> 'tag' = 'writer'}),
	$after_check, "each writer's row is in the log once");

# a plain restart: writes wait for the check, then go
$restored->restart;
is(write_error($restored, "INSERT INTO item (tag) VALUES ('after restart')"), '',
	'after a plain restart a write waits for the check and goes');
$restored->stop;

done_testing();
