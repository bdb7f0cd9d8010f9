# Signals to the sync service, through the Connect simulator: pause and
# resume round trips (the local state follows Connect's), failures retried
# with backoff until the simulator recovers, an answer no retry can change,
# signed webhooks (a bad signature is refused), a request that survives a
# restart, a request whose sender is killed in flight sent again at once
# (not after its lease), and the token nowhere in the server log (log_statement = all) or
# in a view.  Needs the background worker.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use ConnectGuard::Simulator;
use ConnectGuard::Test;

my $token    = random_secret('tok');
my $hook_key = random_secret('key');
my $conn_id  = '6a1b0f3e-0000-4000-8000-00000000d3e0';
my $token_file = secret_file('connect.token', $token);
my $hook_file  = secret_file('hook.key', $hook_key);

# -- the simulator: the token reaches it through its environment only -------

my $base = start_simulator(
	token          => $token,
	webhook_secret => $hook_key,
	connections    => [ {
		id => $conn_id, name => 'sync', schema_name => 'public',
		mappings => [ { id => 'map-account', object_name => 'Account' } ] } ]);

# -- the server ----------------------------------------------------------------

my $node = cg_node('signals', conf => [ 'connect_guard.http_timeout = 1500', 'restart_after_crash = on', simulator_conf() ]);

sub psql { return sql($node, $_[0]); }

# psql_error returns a statement's error output ('' when it worked)
sub psql_error
{
	my ($ret, $stdout, $stderr) = $node->psql('postgres', $_[0]);
	return $ret == 0 ? '' : $stderr;
}

# wait_request waits until the newest request of connection satisfies cond
sub wait_request
{
	my ($connection, $cond, $what) = @_;
	ok( $node->poll_query_until('postgres', qq{
			SELECT $cond FROM connect_requests
			 WHERE connection = '$connection' ORDER BY request_id DESC LIMIT 1}),
		$what);
}

psql(qq{
	CREATE EXTENSION connect_guard;
	CREATE TABLE account (id int PRIMARY KEY, name text);
	SELECT connect_create_connection('sync', 'heroku',
		jsonb_build_object('region_url', '$base', 'connection_id', '$conn_id', 'token_file', '$token_file'));
	SELECT connect_map_table('sync', 'account', 'Account');
});

# -- pause and resume round trip ---------------------------------------------

is(psql("SELECT connect_pause('sync', reason => 'upgrade window')"), 'PAUSING',
	'connect_pause returns PAUSING: nothing is sent from its transaction');
is(psql("SELECT connect_wait_state('sync', 'PAUSED', '60 s')"), 'PAUSED',
	'the worker paused Connect, then the connection');
is(write_error($node, 'INSERT INTO account VALUES (1)'), '25006', 'the fence went up once Connect was paused');
is(psql("SELECT remote_id FROM connect_mappings WHERE connection = 'sync'"), 'map-account',
	"the mapping's Connect id was filled in from the deep GET, by object name");
is(sim('GET', '/_sim/state')->{connections}[0]{state}, 'PAUSED', 'Connect is paused');
my @posts = grep { $_->{method} eq 'POST' } sim_requests();
is(scalar(@posts), 1, 'one POST reached Connect');
is($posts[0]{path}, "/api/v3/connections/$conn_id/actions/pause", 'it is the pause action of the connection id');
is($posts[0]{status}, 202, 'Connect accepted it');
is($posts[0]{headers}{Authorization}, 'Bearer ***', 'with a bearer token (the simulator hides it)');
ok((grep { $_->{method} eq 'GET' && $_->{path} eq "/api/v3/connections/$conn_id?deep=true" } sim_requests()),
	'the worker read the state with the deep GET');

is(psql("SELECT connect_resume('sync')"), 'RESUMING', 'connect_resume returns RESUMING');
is(write_error($node, 'INSERT INTO account VALUES (2)'), '', 'the fence went down at once');
is(psql("SELECT connect_wait_state('sync', 'IDLE', '60 s')"), 'IDLE', 'the connection is IDLE once Connect is');
is(sim('GET', '/_sim/state')->{connections}[0]{state}, 'IDLE', 'Connect runs again');
ok((grep { $_->{method} eq 'POST' && $_->{path} eq "/api/v3/connections/$conn_id/actions/resume" && $_->{status} == 202 }
		sim_requests()),
	'Connect got the resume action');
is(psql("SELECT string_agg(action || ':' || status || ':' || attempts, ',' ORDER BY request_id) FROM connect_requests"),
	'pause:succeeded:1,resume:succeeded:1', 'connect_requests shows both, done at the first attempt');

# -- failures: 500 three times, then 401, then no answer; then Connect recovers

sim('POST', '/_sim/reset', {});
sim('POST', '/_sim/fail', { mode => '500', count => 3 });
is(psql("SELECT connect_pause('sync', block_writes => false)"), 'PAUSING', 'a pause while Connect fails');
wait_request('sync', 'attempts = 3 AND last_http_status = 500', 'three attempts got HTTP 500');
sim('POST', '/_sim/fail', { mode => '401', count => 1 });
wait_request('sync', 'attempts = 4 AND last_http_status = 401', 'the fourth got HTTP 401');
sim('POST', '/_sim/fail', { mode => 'hang', count => 1 });
wait_request('sync', "attempts = 5 AND last_http_status IS NULL AND last_error LIKE '%timed out%'",
	'the fifth got no answer within connect_guard.http_timeout');
is(psql("SELECT connect_wait_state('sync', 'PAUSED', '120 s')"), 'PAUSED', 'the sixth got through: PAUSED');
is(psql(q{SELECT status || ' ' || attempts || ' ' || last_http_status FROM connect_requests
		  WHERE connection = 'sync' ORDER BY request_id DESC LIMIT 1}),
	'succeeded 6 200', 'the request records its attempts');
like(psql("SELECT last_error FROM connect_requests WHERE connection = 'sync' ORDER BY request_id DESC LIMIT 1"),
	qr/^no answer from Connect: Operation timed out after \d+ milliseconds/, 'and its last error');
is(psql(q{SELECT string_agg(coalesce(detail->>'http_status', 'none') || '/' || (detail->>'retry_in_s'), ','
		  ORDER BY event_id) FROM connect_guard.event WHERE kind = 'request_retry'}),
	'500/1,500/2,500/4,401/8,none/16', 'each failure is in the event log, retried after 1, 2, 4, 8, 16 s');
is(join(',', map { $_->{fault} // $_->{status} } grep { $_->{method} eq 'POST' } sim_requests()),
	'500,500,500,401,hang,202', 'the simulator saw the same attempts');
is(psql("SELECT connect_resume('sync')"), 'RESUMING', 'resume');
is(psql("SELECT connect_wait_state('sync', 'IDLE', '60 s')"), 'IDLE', 'IDLE again');

# -- an answer no retry can change: the request fails at once, and says why

psql(qq{SELECT connect_create_connection('ghost', 'heroku',
	jsonb_build_object('region_url', '$base', 'connection_id', 'no-such-connection', 'token_file', '$token_file'))});
psql("SELECT connect_pause('ghost')");
my $err = psql_error("SELECT connect_wait_state('ghost', 'PAUSED', '60 s')");
like($err, qr/connection "ghost" will not become PAUSED: its pause request \d+ failed/,
	'connect_wait_state fails once the request has failed');
like($err, qr/HTTP 404 from Connect.*check the option connection_id/, 'its detail has the last error');
is(psql("SELECT attempts FROM connect_requests WHERE connection = 'ghost'"), '1', 'a 404 is not retried');
like(psql("SELECT paused_because FROM connect_status WHERE connection = 'ghost'"),
	qr/^pause request \d+ failed: HTTP 404/, "the connection's state_reason says why");
psql("SELECT connect_drop_connection('ghost')");

# -- webhooks: signed, and refused when the signature is wrong ----------------

psql(qq{SELECT connect_create_connection('hook', 'webhook',
	jsonb_build_object('url', '$base/webhook', 'secret_file', '$hook_file'))});
is(psql("SELECT connect_pause('hook', reason => 'vacuum full')"), 'PAUSING', 'webhook pause');
is(psql("SELECT connect_wait_state('hook', 'PAUSED', '60 s')"), 'PAUSED', 'PAUSED once the webhook said 200');
is(psql("SELECT connect_resume('hook')"), 'RESUMING', 'webhook resume');
is(psql("SELECT connect_wait_state('hook', 'IDLE', '60 s')"), 'IDLE', 'IDLE once the webhook said 200');
my @hooks = map { $_->{event} } @{ sim('GET', '/_sim/webhooks')->{webhooks} };
is(join(',', map { "$_->{connection}:$_->{action}" } @hooks), 'hook:pause,hook:resume',
	'the simulator checked both signatures and recorded both events');
is($hooks[0]{reason}, 'vacuum full', 'the event carries the reason');
like($hooks[0]{requested_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'and when it was asked for');
is($hooks[0]{request_id}, psql("SELECT min(request_id) FROM connect_requests WHERE connection = 'hook'"),
	'and the request id');

my $wrong_key = secret_file('wrong.key', 'not-the-key');
psql(qq{SELECT connect_create_connection('badhook', 'webhook',
	jsonb_build_object('url', '$base/webhook', 'secret_file', '$wrong_key'))});
psql("SELECT connect_pause('badhook')");
wait_request('badhook', 'attempts >= 1 AND last_http_status = 401', 'a wrong signature gets 401 and is retried');
like(psql("SELECT last_error FROM connect_requests WHERE connection = 'badhook'"),
	qr/^HTTP 401 from the webhook: bad or missing X-Connect-Guard-Signature/, 'the error says so');
is(scalar(@{ sim('GET', '/_sim/webhooks')->{webhooks} }), 2, 'the simulator recorded no badly signed event');
psql("SELECT connect_drop_connection('badhook')");

# -- a request survives a restart ------------------------------------------------

sim('POST', '/_sim/fail', { mode => '500', count => undef });
psql("SELECT connect_pause('sync', block_writes => false)");
wait_request('sync', 'attempts >= 1 AND last_http_status = 500', 'a pause fails while Connect is down');
$node->restart;
sim('POST', '/_sim/fail', { mode => 'none' });
is(psql("SELECT connect_wait_state('sync', 'PAUSED', '120 s')"), 'PAUSED',
	'after a restart the worker sends it again, and it gets through');
psql("SELECT connect_resume('sync')");
is(psql("SELECT connect_wait_state('sync', 'IDLE', '60 s')"), 'IDLE', 'and resumes');

# -- a request whose sender died is sent again at once -------------------------
# The worker is killed (kill -9: the postmaster's crash restart follows)
# while Connect holds its pause unanswered.  With a long http_timeout, the
# request's lease (http_timeout + 10 s) would hold it for 70 s; the new
# worker sees that the request's taker is gone and sends it again at once.
# While the taker lives, nobody else may take it.

psql("ALTER SYSTEM SET connect_guard.http_timeout = '60s'");
$node->reload;
sim('POST', '/_sim/reset', {});
sim('POST', '/_sim/fail', { mode => 'hang', count => 1, method => 'POST',
	path_prefix => "/api/v3/connections/$conn_id/actions/pause" });
psql("SELECT connect_pause('sync', block_writes => false)");
ok($node->poll_query_until('postgres',
	q{SELECT activity LIKE 'connect_guard: pause request % of connection "sync"' FROM connect_worker}),
	'Connect holds the pause unanswered: the request is in flight');
is(psql(q{BEGIN; SELECT count(*) FROM connect_guard.request_take(8, 70000); ROLLBACK;}), '0',
	'while its taker lives, nobody else may take it');
my $worker = psql('SELECT connect_guard.worker_pid()');
my $killed_at = time;
ok(kill('KILL', $worker), "kill -9 of the worker (pid $worker) in the middle of the request");
my $again = 0;
foreach my $try (1 .. 900)
{
	$again = grep { $_->{path} =~ m{/actions/pause$} && defined $_->{status} } sim_posts();
	last if $again;
	sleep 0.1;
}
my $after = time - $killed_at;
is($again, 1, 'the pause is sent again after the crash restart');
ok($after < 15, sprintf('within %.1f s of the kill, well before http_timeout (60 s): its taker is gone', $after));
is(psql("SELECT connect_wait_state('sync', 'PAUSED', '60 s')"), 'PAUSED', 'and Connect is paused');
is(psql(qq{SELECT string_agg(detail->>'action' || ' ' || (detail->>'attempts'), ',') FROM connect_guard.event
		   WHERE kind = 'request_taker_gone' AND (detail->>'taken_by_pid')::int = $worker}),
	'pause 1', 'a request_taker_gone event names the dead taker and the attempt it made');
is(scalar(grep { $_->{path} =~ m{/actions/pause$} } sim_posts()), 2,
	'two POSTs: the one that died with its sender, and the retry (at least once)');
psql("SELECT connect_resume('sync')");
is(psql("SELECT connect_wait_state('sync', 'IDLE', '60 s')"), 'IDLE', 'resumed');
psql("ALTER SYSTEM RESET connect_guard.http_timeout");
$node->reload;

# -- the token and the key are nowhere to be read ----------------------------

my $log = slurp_file($node->logfile);
like($log, qr/statement: .*connect_create_connection/, 'the server log has the statements (log_statement = all)');
unlike($log, qr/\Q$token\E/, 'the token is not in the server log');
unlike($log, qr/\Q$hook_key\E/, 'the webhook key is not in the server log');
foreach my $view (qw(connect_connections connect_status connect_requests connect_mappings connect_fences
	connect_high_water_marks connect_guard.event connect_guard.request connect_guard.connection))
{
	my $rows = psql("SELECT v::text FROM $view v");
	ok($rows ne '' || $view eq 'connect_fences', "$view has rows");
	unlike($rows, qr/\Q$token\E|\Q$hook_key\E/, "$view holds neither the token nor the key");
}

stop_simulator();
$node->stop;
done_testing();
