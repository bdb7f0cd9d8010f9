# ALTER EXTENSION connect_guard UPDATE on a database in use.  1.0 (the
# frozen extension/connect_guard--1.0.sql) is created and used with this
# build's library, as a server whose packages were upgraded runs it until
# the DBA updates: writes captured and consumed, an upgrade plan prepared
# and aborted, a second batch taken and left open, a connection paused with
# its writes blocked, a maintenance fence up, the worker witnessing it all.
# Then the update to the default version, with the worker running, and:
#
#   - the marks (hwm_id, last_tick), the fences, the plan and its steps are
#     what they were, and the fences still refuse writes (25006)
#   - the open batch is handed out again with the same entries
#   - the worker goes on writing the same witness (same installation) and
#     finds no rollback; connect_preflight() (new in 1.1) sees the fences
#   - resume and unfence work, and every write, before and after the
#     update, is delivered exactly once (counted against the writers' own
#     record), also after a restart; a new plan runs on 1.1
#
# sql/versions.sql checks that 1.0 updated and a fresh install have the
# same objects; scripts/test.sh runs the pg_regress and isolation suites on
# updated installs.
use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ConnectGuard::Test;

my $wdir = PostgreSQL::Test::Utils::tempdir;    # the witness directory
my $node = cg_node('primary', conf => [
	"connect_guard.naptime = '200ms'", "connect_guard.witness_directory = '$wdir'" ]);
my $default = sql($node, "SELECT default_version FROM pg_available_extensions WHERE name = 'connect_guard'");

# -- helpers -------------------------------------------------------------------

sub note_write
{
	my ($n) = @_;
	sql($node, "INSERT INTO note (body) SELECT 'n' || g FROM generate_series(1, $n) g");
}

# the state the update must keep, as text
sub marks
{
	return sql($node, q{SELECT string_agg(format('%s: hwm_id %s, last_tick %s, state %s, fence %s, hwm_tick %s, open batch %s',
		c.name, c.hwm_id, c.last_tick, c.state, c.fence_id, h.hwm_tick, h.open_batch), '; ' ORDER BY c.name)
		FROM connect_guard.connection c JOIN connect_high_water_marks h ON h.connection = c.name});
}
sub fences { return sql($node, 'SELECT string_agg(f::text, E\'\n\' ORDER BY fence_id) FROM connect_fences f'); }
sub plans { return sql($node, 'SELECT string_agg(p::text, E\'\n\' ORDER BY plan_id) FROM connect_guard.upgrade_plan p'); }
sub steps
{
	return sql($node, 'SELECT string_agg(s::text, E\'\n\' ORDER BY plan_id, started_at, step) FROM connect_guard.upgrade_step s');
}
sub events { return sql($node, "SELECT count(*) FROM connect_guard.event WHERE kind = '$_[0]'"); }
sub batch_entries { return sql($node, "SELECT string_agg(id::text, ',' ORDER BY id) FROM connect_batch_events($_[0])"); }

my $witness_path;
# witness: the witness file's JSON body (undef when there is none)
sub witness
{
	return undef unless -e $witness_path;
	my (undef, $body) = split /\n/, slurp_file($witness_path), 2;
	return eval { decode_json($body // '') };
}

# witnessed waits until the witness records the database's current log head
# and marks (the worker rewrites it when they move) and returns it
sub witnessed
{
	my $want = sql($node, q{SELECT connect_guard.log_sequence_head() || ' '
		|| string_agg(name || '=' || hwm_id, ',' ORDER BY name) FROM connect_guard.connection});
	foreach (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		my $w = witness();
		if ($w)
		{
			my $c = $w->{connections} // {};
			my $got = ($w->{log_head} // '') . ' '
			  . join(',', map { "$_=" . ($c->{$_}{hwm_id} // '') } sort keys %$c);
			return $w if $got eq $want;
		}
		sleep 0.1;
	}
	return undef;
}

# -- 1.0 in use ----------------------------------------------------------------

sql($node, q{
	CREATE EXTENSION connect_guard VERSION '1.0';
	CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
	INSERT INTO account SELECT g FROM generate_series(1, 100) g;
	CREATE TABLE writes (n bigserial PRIMARY KEY, account_id int);
	CREATE TABLE note (id serial PRIMARY KEY, body text);
	SELECT connect_create_connection('sync');
	SELECT connect_map_table('sync', 'account');
	SELECT connect_create_connection('crm');
	SELECT connect_map_table('crm', 'note');
	SELECT connect_guard.wake_launcher();
});
create_consumed_table($node);
isnt($default, '1.0', "the default version ($default) is not 1.0");
is(sql($node, "SELECT extversion FROM pg_extension WHERE extname = 'connect_guard'"), '1.0',
	'CREATE EXTENSION ... VERSION \'1.0\' installs 1.0 with this build\'s library');
is(sql($node, "SELECT to_regprocedure('connect_preflight(text, text, bigint, text)') IS NULL"), 't',
	'1.0 has no connect_preflight()');
ok(wait_for_worker($node), 'the worker runs in the 1.0 database');
$witness_path = sql($node, 'SELECT connect_guard.witness_path(NULL)');

account_write($node, $_) for 1 .. 10;
note_write(5);
ok(consume($node, via => 'sync') >= 1, '1.0: the consumer takes and finishes batches');
ok(consume($node, connection => 'crm', via => 'crm') >= 1, '1.0: and of the second connection');
is(sql($node, "SELECT count(*) FROM consumed WHERE via = 'sync'"), '10', '1.0: the 10 account writes delivered');
is(sql($node, "SELECT hwm_id > 0 FROM connect_high_water_marks WHERE connection = 'sync'"), 't', '1.0: the mark moved');

# an upgrade plan, prepared, driven by the worker to ready, then put off
my $plan = sql($node, "SELECT connect_prepare_upgrade('pg_upgrade', timeout => '1 min')");
is(sql($node, "SELECT connect_wait_upgrade($plan, 'ready', '1 min')"), 'ready', '1.0: the worker drives a plan to ready');
is(sql($node, "SELECT connect_abort_upgrade($plan, 'put off until the extension is updated')"), 'aborted',
	'1.0: the plan is aborted');

# a batch taken and left open, and writes after it
account_write($node, $_) for 11 .. 16;
my $open = sql($node, "SELECT connect_next_batch('sync')");
ok($open ne '', "1.0: batch $open taken and left open");
my $open_entries = batch_entries($open);
is(scalar(split /,/, $open_entries), 6, '1.0: the open batch holds the 6 writes before it');
account_write($node, $_) for 17 .. 19;
note_write(2);

# the fences: crm paused with its writes blocked, and a maintenance fence
is(sql($node, "SELECT connect_pause('crm', reason => 'crm paused for the update')"), 'PAUSED', '1.0: crm paused');
ok(sql($node, "SELECT connect_fence('mapped', 'extension update window')") > 0, '1.0: a maintenance fence');
is(write_error($node, 'UPDATE account SET balance = 0 WHERE id = 1'), '25006', '1.0: account is fenced');
is(write_error($node, "INSERT INTO note (body) VALUES ('x')"), '25006', '1.0: note is fenced');

my $w = witnessed();
ok($w, '1.0: the worker witnessed the log head and the marks');
my $installation = $w->{installation} // '';
like($installation, qr/^[0-9a-f-]{36}$/, '1.0: the witness names the installation');

my %before = (marks => marks(), fences => fences(), plans => plans(), steps => steps());
like($before{fences}, qr/crm paused for the update.*\n.*extension update window/, '1.0: both fences listed');
like($before{steps}, qr/^\($plan,pausing,.*\n\($plan,fencing,.*\n\($plan,ready,.*\n\($plan,aborted,/,
	'1.0: the plan\'s steps: pausing, fencing, ready, aborted');

# -- the update ----------------------------------------------------------------

sql($node, 'ALTER EXTENSION connect_guard UPDATE');
is(sql($node, "SELECT extversion FROM pg_extension WHERE extname = 'connect_guard'"), $default,
	"ALTER EXTENSION connect_guard UPDATE: at $default");
is(marks(), $before{marks}, 'the marks, states and open batches are unchanged');
is(fences(), $before{fences}, 'the fences are unchanged');
is(plans(), $before{plans}, 'the plan is unchanged');
is(steps(), $before{steps}, 'its steps are unchanged');
is(write_error($node, 'UPDATE account SET balance = 0 WHERE id = 1'), '25006', 'account is still fenced');
is(write_error($node, "INSERT INTO note (body) VALUES ('x')"), '25006', 'note is still fenced');
is(sql($node, "SELECT connect_next_batch('sync')"), $open, 'the open batch is handed out again');
is(batch_entries($open), $open_entries, 'with the same entries');

is(sql($node, q{SELECT string_agg("check" || '=' || coalesce(ok::text, 'null'), ',' ORDER BY "check")
	FROM connect_preflight('pg_upgrade') WHERE "check" IN ('worker', 'plan', 'maintenance_fence')}),
	'maintenance_fence=false,plan=true,worker=true',
	'connect_preflight() works and sees the maintenance fence raised on 1.0');

# the worker goes on: the open batch finished moves the mark, and the witness follows
is(consume($node, via => 'sync'), 2, 'the open batch and the writes after it are delivered');
$w = witnessed();
ok($w, 'the worker writes the same witness file on the updated install');
is($w->{installation}, $installation, 'for the same installation');
is(events('rollback_detected'), '0', 'no rollback_detected event');
is(sql($node, 'SELECT count(*) FROM connect_guard.rollback_incident'), '0', 'no rollback incident');
is(sql($node, 'SELECT count(*) FROM connect_check_rollback() WHERE rollback'), '0',
	'connect_check_rollback() finds no rollback');

# resume and unfence
is(sql($node, 'SELECT connect_unfence()') > 0, 1, 'connect_unfence() lowers the maintenance fence');
is(write_error($node, 'UPDATE account SET balance = balance WHERE false'), '', 'account takes writes again');
is(write_error($node, "INSERT INTO note (body) SELECT 'x' WHERE false"), '25006', 'note is still fenced by the pause');
is(sql($node, "SELECT connect_resume('crm')"), 'IDLE', 'connect_resume() lifts the pause');
is(sql($node, 'SELECT count(*) FROM connect_fences'), '0', 'no fence left');

# new writes are captured and delivered; every write exactly once
account_write($node, $_) for 20 .. 24;
note_write(3);
consume($node, via => 'sync');
consume($node, connection => 'crm', via => 'crm');
is(sql($node, "SELECT count(*) || ' ' || count(DISTINCT entry_id) FROM consumed WHERE via = 'sync'"), '24 24',
	'sync: 24 entries delivered, none twice');
is(sql($node, 'SELECT count(*) FROM writes'), '24', 'as many as the writers made');
is(sql($node, "SELECT count(*) FROM " . whole_log() . " l WHERE table_name = 'account'"), '24',
	'and as the log holds');
is(sql($node, "SELECT count(*) || ' ' || count(DISTINCT entry_id) FROM consumed WHERE via = 'crm'"), '10 10',
	'crm: the 10 note writes delivered, none twice');

# a plan on the updated install
my $plan2 = sql($node, "SELECT connect_prepare_upgrade('pg_upgrade', timeout => '1 min')");
is(sql($node, "SELECT connect_wait_upgrade($plan2, 'ready', '1 min')"), 'ready', 'a new plan reaches ready');
is(sql($node, "SELECT connect_abort_upgrade($plan2)"), 'aborted', 'and is aborted');

# a restart: still the updated version, no rollback, writes still delivered
$node->restart;
ok(wait_for_worker($node), 'the worker runs after a restart');
is(sql($node, "SELECT extversion FROM pg_extension WHERE extname = 'connect_guard'"), $default,
	"still $default after a restart");
account_write($node, 25);
is(consume($node, via => 'sync'), 1, 'a write after the restart is delivered');
ok(witnessed(), 'the worker witnessed it');
is(events('rollback_detected'), '0', 'no rollback_detected event after the restart');
is(sql($node, "SELECT count(*) || ' ' || count(DISTINCT entry_id) FROM consumed WHERE via = 'sync'"), '25 25',
	'sync: 25 entries delivered, none twice');

$node->stop;
done_testing();
