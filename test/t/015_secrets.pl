# Secrets through the worker and the Connect simulator, one attack per
# block, each with its exact outcome:
#   - Connect echoes the token in an error, JSON-escaped (the raw answer
#     does not hold it, the message decoded from it does): on a pause that
#     fails (400), one that is retried (503), and a poll (GET, 500);
#     last_error, paused_because, the events and the server log hold no
#     form of it (raw, decoded, nor any 8 characters of it);
#   - plain http:// once connect_guard.http_allow_insecure_loopback is off:
#     nothing is sent, the request fails saying why, a new connection is
#     refused;
#   - an inline token is in the statement log (log_statement = all), as the
#     README says, with a WARNING that steers to token_file; a token_file's
#     token is not.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Simulator;
use ConnectGuard::Test;

my $token      = random_secret('tok');    # tok-<32 hex digits>: its "-" is escaped in an echo
my $conn_id    = '6a1b0f3e-0000-4000-8000-00000000d3e0';
my $token_file = secret_file('connect.token', $token);

my $base = start_simulator(
	token       => $token,
	connections => [ {
		id => $conn_id, name => 'sync', schema_name => 'public',
		mappings => [ { id => 'map-account', object_name => 'Account' } ] } ]);

my $node = cg_node('secrets', conf => [
	"connect_guard.naptime = '200ms'", 'connect_guard.http_timeout = 1500',
	'connect_guard.http_max_attempts = 2', 'log_statement = all', simulator_conf() ]);

sub psql { return sql($node, $_[0]); }

# leaks returns what in $text spells the token: the token itself, or any 8
# characters of it, as written or once JSON and percent escapes are undone
sub leaks
{
	my ($text) = @_;
	my $decoded = $text;
	$decoded =~ s/\\u([0-9a-fA-F]{4})/chr(hex($1))/ge;
	$decoded =~ s/%([0-9a-fA-F]{2})/chr(hex($1))/ge;
	foreach my $form ($text, $decoded)
	{
		foreach my $i (0 .. length($token) - 8)
		{
			my $piece = substr($token, $i, 8);
			return $piece if index(lc $form, lc $piece) >= 0;
		}
	}
	return '';
}

# stored is every text connect_guard keeps that an answer can reach
sub stored
{
	return psql(q{
		SELECT concat_ws(E'\n',
			(SELECT string_agg(concat_ws(' ', last_error, remote_state), E'\n') FROM connect_guard.request),
			(SELECT string_agg(state_reason, E'\n') FROM connect_guard.connection),
			(SELECT string_agg(detail::text, E'\n') FROM connect_guard.event),
			(SELECT string_agg(remote_id, E'\n') FROM connect_guard.mapping))});
}

sub wait_request
{
	my ($cond, $what) = @_;
	ok( $node->poll_query_until('postgres', qq{
			SELECT $cond FROM connect_requests ORDER BY request_id DESC LIMIT 1}),
		$what);
}

psql(qq{
	CREATE EXTENSION connect_guard;
	CREATE TABLE account (id int PRIMARY KEY, name text);
	SELECT connect_create_connection('sync', 'heroku',
		jsonb_build_object('region_url', '$base', 'connection_id', '$conn_id', 'token_file', '$token_file'));
	SELECT connect_map_table('sync', 'account', 'Account');
});
ok(wait_for_worker($node), 'the worker runs');

# -- 1. a 400 that quotes the token: the pause fails at once -----------------

my $echo = sim('POST', '/_sim/fail', { mode => 'echo_token', count => 1, method => 'POST' });
is(psql("SELECT connect_pause('sync')"), 'PAUSING', 'pause asked for');
wait_request("status = 'failed'", 'the 400 failed the pause at once');
my @answers = grep { $_->{method} eq 'POST' } sim_requests();
is($answers[0]{status}, 400, 'Connect answered 400 with the token in its message');
is(psql("SELECT last_error FROM connect_requests ORDER BY request_id DESC LIMIT 1"),
	'HTTP 400 from Connect: token ******** is not valid for this connection',
	'last_error keeps the message, without the token');
like(psql("SELECT paused_because FROM connect_status WHERE connection = 'sync'"),
	qr/^pause request \d+ failed: HTTP 400 from Connect: token \*{8} is not valid for this connection$/,
	'connect_status.paused_because too');
is(psql("SELECT detail ->> 'error' FROM connect_guard.event WHERE kind = 'request_failed'"),
	'HTTP 400 from Connect: token ******** is not valid for this connection', 'and the event');
my ($ret, $out, $err) = $node->psql('postgres', "SELECT connect_wait_state('sync', 'PAUSED', '5 s')");
like($err, qr/will not become PAUSED.*last error: HTTP 400 from Connect: token \*{8} is not valid/s,
	'connect_wait_state quotes it, scrubbed');
is(leaks($err), '', 'no piece of the token in that error');

# -- 2. a 503 that quotes it, then success: the retry's event is clean -------

sim('POST', '/_sim/fail', { mode => 'echo_token', status => 503, count => 1, method => 'POST' });
is(psql("SELECT connect_pause('sync', block_writes => false)"), 'PAUSING', 'pause asked for again');
is(psql("SELECT connect_wait_state('sync', 'PAUSED', '60 s')"), 'PAUSED', 'retried after the 503, and paused');
is(psql("SELECT detail ->> 'error' FROM connect_guard.event WHERE kind = 'request_retry' ORDER BY event_id DESC LIMIT 1"),
	'HTTP 503 from Connect: token ******** is not valid for this connection', 'the retry event is scrubbed');

# -- 3. a poll (GET) that quotes it ------------------------------------------

sim('POST', '/_sim/fail', { mode => 'echo_token', status => 500, count => 1, method => 'GET' });
is(psql("SELECT connect_resume('sync')"), 'RESUMING', 'resume asked for');
is(psql("SELECT connect_wait_state('sync', 'IDLE', '60 s')"), 'IDLE', 'resumed after a failed poll');
my @gets = grep { $_->{method} eq 'GET' && $_->{fault} } sim_requests();
is(scalar(@gets), 1, 'one poll got the echo');
is(psql("SELECT last_error FROM connect_requests ORDER BY request_id DESC LIMIT 1"),
	'HTTP 500 from Connect: token ******** is not valid for this connection', 'its last_error is scrubbed');

# -- every stored text, and the server log ------------------------------------

my $stored = stored();
like($stored, qr/token \*{8} is not valid/, 'the stored texts hold the scrubbed messages');
is(leaks($stored), '', 'and no piece of the token, raw or decoded');
is(leaks(slurp_file($node->logfile)), '', 'nor does the server log');

# -- 4. plain http:// once the test setting is off ------------------------------

$node->append_conf('postgresql.conf', 'connect_guard.http_allow_insecure_loopback = off');
$node->reload;
ok($node->poll_query_until('postgres', "SELECT current_setting('connect_guard.http_allow_insecure_loopback') = 'off'"),
	'the setting is off');
sleep 1;    # a cycle of the worker (naptime 200 ms) rereads its configuration
sim('POST', '/_sim/reset', {});
is(psql("SELECT connect_pause('sync', block_writes => false)"), 'PAUSING', 'pause asked for over http://');
wait_request("status = 'failed'", 'the request fails');
is(psql("SELECT attempts || ' ' || last_error FROM connect_requests ORDER BY request_id DESC LIMIT 1"),
	"2 refusing to send the API token to $base/api/v3/connections/$conn_id/actions/pause: plain http:// would "
	  . 'send the token or the signature in clear, and connect_guard.http_allow_insecure_loopback (for tests '
	  . 'against a local simulator) is off (gave up after 2 attempts)',
	'after 2 attempts, saying why');
is(scalar(sim_requests()), 0, 'nothing reached the simulator');
($ret, $out, $err) = $node->psql('postgres', qq{SELECT connect_create_connection('again', 'heroku',
	jsonb_build_object('region_url', '$base', 'connection_id', '$conn_id', 'token_file', '$token_file'))});
like($err, qr/ERROR:  option "region_url" must be an https:\/\/ URL/, 'a new connection to it is refused');

# -- 5. an inline token is in the statement log; a token_file's is not ------

my $inline = random_secret('inline');
($ret, $out, $err) = $node->psql('postgres', qq{SELECT connect_create_connection('inline', 'heroku',
	'{"region_url": "https://connect.example.com", "connection_id": "c-2", "token": "$inline"}')});
like($err, qr/WARNING:  the API token given inline \(option "token"\) is in the text of this statement.*HINT:  Write it to a file.*"token_file" instead/s,
	'an inline token gets a WARNING that steers to token_file');
my $log = slurp_file($node->logfile);
like($log, qr/statement: SELECT connect_create_connection\('inline'.*\Q$inline\E/s,
	'and it is in the statement log, as the README says');
unlike($log, qr/\Q$token\E/, 'the token read from token_file is not');

stop_simulator();
$node->stop;
done_testing();
