# A consumer that holds its connection's lock (connect_next_batch in a
# transaction it keeps open) while the worker completes a heroku pause,
# through the Connect simulator:
#   - the worker does not wait for it: another connection's pause completes
#     meanwhile, and Connect is not asked twice;
#   - the pause fails at its timeout, naming the transaction that holds the
#     lock (in connect_requests, connect_wait_state and the event log);
#   - once the consumer commits, connect_pause() works again.
# (The local pause, and connect_pause() itself, are in sql/consumers.sql.)
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

psql("CREATE EXTENSION connect_guard; CREATE TABLE account (id int PRIMARY KEY);");
foreach my $name (sort keys %id)
{
	psql(qq{SELECT connect_create_connection('$name', 'heroku',
		jsonb_build_object('region_url', '$base', 'connection_id', '$id{$name}', 'token_file', '$token_file'))});
}
psql("SELECT connect_map_table('sync', 'account')");
ok(wait_for_worker($node), 'the worker runs');

# Connect takes 2 s to accept the pause of sync: time for the consumer to lock it
sim('POST', '/_sim/fail', { mode => 'slow', seconds => 2, count => 1, method => 'POST',
	path_prefix => "/api/v3/connections/$id{sync}/" });
is(psql("SELECT connect_pause('sync', block_writes => false, timeout => '4 s')"), 'PAUSING', 'sync: pause asked for');
my $consumer = $node->background_psql('postgres');
$consumer->query_safe('BEGIN');
is($consumer->query_safe("SELECT coalesce(connect_next_batch('sync')::text, 'none')"), 'none',
	'the consumer takes nothing (PAUSING), and keeps the connection locked');
my $consumer_pid = $consumer->query_safe('SELECT pg_backend_pid()');

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
