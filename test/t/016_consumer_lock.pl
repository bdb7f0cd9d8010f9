# Whatever a consumer does, a pause keeps its timeout: one attack per
# block, each with its exact outcome.
#   1. A consumer keeps the connection's lock (connect_next_batch in a
#      transaction it keeps open): connect_pause() fails at its timeout with
#      55P03 naming the consumer's pid, for a local connection and for a
#      heroku one (whose pause is a request).
#   2. A consumer finishes its batch and takes the next at once while a
#      pause waits: connect_next_batch() opens no new batch, the pause gets
#      through.
#   3. A consumer keeps the lock while the worker completes a heroku pause
#      (through the Connect simulator): the worker does not wait for it
#      (another connection's pause completes meanwhile, Connect is not
#      asked twice), the pause fails at its timeout naming the pid (in
#      connect_requests, connect_wait_state and the event log), and once
#      the consumer commits, connect_pause() works again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Simulator;
use ConnectGuard::Test;

my $token = random_secret('tok');
my %id = (sync => '6a1b0f3e-0000-4000-8000-00000000d3e0', other => '6a1b0f3e-0000-4000-8000-00000000d3e1');
my $token_file = secret_file('connect.token', $token);

my $base = start_simulator(
	token       => $token,
	connections => [ map { { id => $id{$_}, name => $_, schema_name => 'public', mappings => [] } } sort keys %id ]);
my $node = cg_node('consumer_lock', conf => [
	"connect_guard.naptime = '200ms'", 'connect_guard.http_timeout = 5000', simulator_conf() ]);

sub psql { return sql($node, $_[0]); }

psql("CREATE EXTENSION connect_guard; CREATE TABLE account (id int PRIMARY KEY); CREATE TABLE note (id int PRIMARY KEY);");
foreach my $name (sort keys %id)
{
	psql(qq{SELECT connect_create_connection('$name', 'heroku',
		jsonb_build_object('region_url', '$base', 'connection_id', '$id{$name}', 'token_file', '$token_file'))});
}
psql("SELECT connect_map_table('sync', 'account')");
psql("SELECT connect_create_connection('loc'); SELECT connect_map_table('loc', 'note')");
ok(wait_for_worker($node), 'the worker runs');

# -- 1. the consumer keeps the lock: connect_pause() fails at its timeout ------

psql('INSERT INTO note VALUES (1)');
my $consumer = $node->background_psql('postgres');
my $consumer_pid = $consumer->query_safe('SELECT pg_backend_pid()');
$consumer->query_safe('BEGIN');
ok($consumer->query_safe("SELECT connect_next_batch('loc') IS NOT NULL") eq 't'
	  && $consumer->query_safe("SELECT connect_next_batch('sync') IS NULL") eq 't',
	'the consumer takes a batch of loc, nothing of sync, and keeps both locked');
foreach my $name ('loc', 'sync')
{
	my ($ret, $out, $err) = $node->psql('postgres', "SELECT connect_pause('$name', timeout => '1 s')", timeout => 60);
	like($err, qr/ERROR:  timed out waiting for the lock on connection "$name"\nDETAIL:  It is held by pid $consumer_pid \(role \w+, transaction open for [0-9:]+, idle\)\.\nHINT:  A consumer must commit right after connect_next_batch\(\)/,
		"$name: connect_pause fails at its timeout, naming the consumer");
	is(psql("SELECT state FROM connect_status WHERE connection = '$name'"), 'IDLE',
		"$name: nothing changed");
}
is(psql("SET lock_timeout = '2s'; SELECT count(*) FROM (SELECT 1 FROM connect_guard.connection FOR KEY SHARE) k"), '3',
	"the consumer's locks hold up no foreign-key check of a row referring to its connections");
$consumer->query_safe('COMMIT');

# -- 2. the consumer takes the next batch at once: the pause gets through -----

psql('INSERT INTO note VALUES (2)');      # loc's batch (note 1) is open; this is the next
my $pauser = $node->background_psql('postgres', on_error_stop => 0);
$pauser->query_until(qr/started/, "\\echo started\nSELECT connect_pause('loc', block_writes => false, timeout => '60 s');\n");
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_locks
		WHERE locktype = 'advisory' AND classid = connect_guard.pause_lock_class()::oid AND granted}),
	'the pause waits for the open batch, and says so');
$consumer->query_safe('BEGIN');
ok($consumer->query_safe("SELECT connect_finish_batch(open_batch) FROM connect_status WHERE connection = 'loc'") eq '1',
	'the consumer finishes its batch');
is($consumer->query_safe("SELECT coalesce(connect_next_batch('loc')::text, 'none') || ' ' || state || ' ' || backlog
		FROM connect_status WHERE connection = 'loc'"), 'none IDLE 1',
	'and gets no new batch, though one entry waits: a pause is under way');
$consumer->query_safe('COMMIT');
like($pauser->query('SELECT 1'), qr/^PAUSED\n1$/, 'the pause got through');
is(psql("SELECT state || ' ' || (open_batch IS NULL) FROM connect_status WHERE connection = 'loc'"), 'PAUSED true',
	'loc is PAUSED with no batch open');
$pauser->quit;
psql("SELECT connect_resume('loc')");

# -- 3. the consumer keeps the lock while the worker completes a heroku pause --

# Connect takes 2 s to accept the pause of sync: time for the consumer to lock it
sim('POST', '/_sim/fail', { mode => 'slow', seconds => 2, count => 1, method => 'POST',
	path_prefix => "/api/v3/connections/$id{sync}/" });
is(psql("SELECT connect_pause('sync', block_writes => false, timeout => '4 s')"), 'PAUSING', 'sync: pause asked for');
$consumer->query_safe('BEGIN');
is($consumer->query_safe("SELECT coalesce(connect_next_batch('sync')::text, 'none')"), 'none',
	'the consumer takes nothing (PAUSING), and keeps the connection locked');

is(psql("SELECT connect_pause('other', block_writes => false)"), 'PAUSING', 'other: pause asked for');
is(psql("SELECT connect_wait_state('other', 'PAUSED', '60 s')"), 'PAUSED',
	'other is paused meanwhile: the worker does not wait for the lock on sync');

ok($node->poll_query_until('postgres',
		"SELECT status = 'failed' FROM connect_requests WHERE connection = 'sync' ORDER BY request_id DESC LIMIT 1"),
	"sync's pause fails once its timeout has passed");
like(psql("SELECT last_error FROM connect_requests WHERE connection = 'sync' ORDER BY request_id DESC LIMIT 1"),
	qr/^the pause could not be completed within its timeout: timed out waiting for the lock on connection "sync": It is held by pid $consumer_pid \(role \w+, transaction open for [0-9:]+, idle\)\.$/,
	'naming the transaction that holds the lock');
my ($ret, $out, $err) = $node->psql('postgres', "SELECT connect_wait_state('sync', 'PAUSED', '5 s')");
like($err, qr/will not become PAUSED: its pause request \d+ failed.*held by pid $consumer_pid/s,
	'connect_wait_state fails at once and says so');
is(psql("SELECT count(*) FROM connect_guard.event WHERE connection_name = 'sync' AND kind = 'request_failed'"), '1',
	'the failure is in the event log');
is(scalar(grep { $_->{method} eq 'POST' && $_->{path} =~ m{/$id{sync}/actions/pause$} } sim_requests()), 1,
	'Connect was asked once: what it accepted was not sent again');

$consumer->query_safe('COMMIT');
$consumer->quit;
is(psql("SELECT connect_pause('sync', block_writes => false)"), 'PAUSING', 'after the commit, pause again');
is(psql("SELECT connect_wait_state('sync', 'PAUSED', '60 s')"), 'PAUSED', 'and sync is paused');

stop_simulator();
$node->stop;
done_testing();
