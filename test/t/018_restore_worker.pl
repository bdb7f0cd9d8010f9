# Restoring a database that has connect_guard while the server runs its
# workers: the dump creates the extension first and loads the extension's
# tables (events, ticks, plans, ...) with their rows later; a worker that
# wrote anything in between would take the keys of the rows being restored
# (duplicate key on connect_guard.event).  The worker of the new database
# must write nothing until the restore is over, whatever the restore's
# sessions are called (these run with PGAPPNAME, which the TAP harness sets,
# so they are not named pg_restore).
#
# A loop of restores, bounded in time, each with the window widened (the
# dump has 300 tables to create between CREATE EXTENSION and the first
# data): custom format through pg_restore into a new database, and into
# one that existed before the server started (its writes to mapped tables
# wait at the start-up write gate for the worker's first check, which
# waits for the restore: the restoring session passes the gate), plain
# format through psql, and a --clean restore over a database whose worker
# runs.  Counting: every event of the source arrives, the worker writes its
# own only afterwards.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ConnectGuard::Test;

my $wdir = PostgreSQL::Test::Utils::tempdir;
# a short naptime and a witness: every worker writes an event in its first cycle
my $node = cg_node('restore', conf => [ "connect_guard.naptime = '20ms'", "connect_guard.witness_directory = '$wdir'" ]);
$node->safe_psql('postgres', 'CREATE DATABASE source');
setup_accounts($node, db => 'source', consumed => 0);
ok(wait_for_worker($node, 'source'), 'the worker of the source database runs');
sql($node, q{
	DO $$ BEGIN
	    FOR i IN 1 .. 300 LOOP
	        EXECUTE format('CREATE TABLE filler_%s (id int PRIMARY KEY, t text)', i);
	    END LOOP;
	END $$;
	UPDATE account SET balance = balance + 1 WHERE id <= 20;
	SELECT count(connect_next_batch('sync'));
}, 'source');
ok($node->poll_query_until('source', "SELECT count(*) > 0 FROM connect_guard.event WHERE kind = 'witness_created'"),
	'the source\'s worker has written its own events');
my $events = sql($node, 'SELECT count(*) || \' \' || max(event_id) FROM connect_guard.event', 'source');
my ($source_events, $source_max) = split / /, $events;

my $custom = $node->basedir . '/source.dump';
my $plain  = $node->basedir . '/source.sql';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $custom, '-d', $node->connstr('source') ], 'pg_dump -Fc');
$node->command_ok([ 'pg_dump', '-Fp', '-f', $plain, '-d', $node->connstr('source') ], 'pg_dump -Fp');

# restore() runs one restore into $db and returns its stderr ('' when it succeeded)
sub restore
{
	my ($db, $how) = @_;
	my ($out, $err) = ('', '');
	my @cmd = $how eq 'plain'
	  ? ('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $plain, '-d', $node->connstr($db))
	  : ('pg_restore', '--exit-on-error', ($how eq 'clean' ? ('--clean', '--if-exists') : ()), '-d', $node->connstr($db), $custom);
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err) and return '';
	return $err || "exit code $?";
}

# every source event arrived (by id), and the worker took over afterwards
sub restored_intact
{
	my ($db) = @_;
	return sql($node, "SELECT count(*) FROM connect_guard.event WHERE event_id <= $source_max", $db) eq $source_events
	  && $node->poll_query_until($db, "SELECT count(*) > 0 FROM connect_guard.event WHERE event_id > $source_max AND kind = 'witness_created'");
}

# databases that exist before the server (re)starts, so that the write gate applies to them
sql($node, "CREATE DATABASE g$_") for 0 .. 2;
$node->restart;

my ($runs, $failures, @errors) = (0, 0);
my %by_kind;
my $until = time + 40;
while (time < $until && $runs < 12)
{
	my $how = (qw(custom gated plain clean))[ $runs % 4 ];
	my $db = $how eq 'gated' ? 'g' . int($runs / 4) : "r$runs";
	sql($node, "CREATE DATABASE $db") unless $how eq 'gated';
	if ($how eq 'clean')
	{
		# a database where the extension and its worker run already, restored over with --clean
		sql($node, 'CREATE EXTENSION connect_guard', $db);
		wait_for_worker($node, $db);
	}
	my $err = restore($db, $how);
	my $ok = $err eq '' && restored_intact($db);
	$by_kind{$how}++;
	unless ($ok)
	{
		$failures++;
		push @errors, "$db ($how): " . ($err || 'events missing or no worker event afterwards');
	}
	$node->safe_psql('postgres', "DROP DATABASE $db WITH (FORCE)");
	$runs++;
}
note "restores: " . join(', ', map { "$by_kind{$_} $_" } sort keys %by_kind);
ok($runs >= 4, "$runs restores within the time bound");
is($failures, 0, "every restore loaded all $source_events events of the source, and the worker wrote only afterwards")
  or diag(join("\n", @errors));
ok(!$node->log_contains('duplicate key value violates unique constraint "event_pkey"'),
	'no duplicate key in the server log, neither the restore\'s nor the worker\'s');
$node->stop;
done_testing();
