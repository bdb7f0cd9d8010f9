# Every upgrade method and the maintenance runbooks on an adopted Heroku
# Connect schema, with the simulator playing Connect on it (--connect-log:
# it drains salesforce._trigger_log as Connect does, as the schema's owner,
# with xmlbinary = 'hex'), one server after the other:
#
#   1. runbooks/follower_changeover.sql to a streaming follower (stopped at
#      ready, then promoted by a second run)
#   2. a point-in-time restore of the new primary to before Connect
#      processed a batch, and runbooks/rollback_recovery.sql there: the
#      worker's incident, every mapping reloaded through the API.  Connect
#      starts each reload a second after its 202 and takes no time for it,
#      so that no poll sees it running: the reload_started_at of the deep
#      GET proves each one (59_reload_acknowledgement.sql)
#   3. runbooks/pg_upgrade.sql, for real: the shell steps it prints
#      (pg_upgrade, the fence file), then its verify phase on the upgraded
#      cluster
#   4. runbooks/pg_copy.sql: pg_dump | pg_restore into a new database, and
#      its complete phase there (connect_complete_upgrade() compares
#      Connect's log with what the plan recorded)
#
# Before each plan Connect is paused (without a fence) and the application
# writes, so that Connect's log holds entries it has not processed; the
# runbooks' preflight stops on that paused connection (the plan resumes
# it at its end), so each run accepts that check (-v accept=sync_service:hc).
# Counting, for each: every one of them is still NEW on the database that
# takes over, every entry is in the state it had at the fence; the marks
# there are Connect's (backlog, processed mark below the first unfinished
# entry); once Connect follows, it sends each of them once (the simulator
# records every send in _sim_connect_deliveries): none lost, none doubled,
# but for the entries the point-in-time restore brought back after Connect
# had sent them, which are listed by the incident and sent twice, exactly.
# pg_dump --schema-only -n salesforce on each server is what it was before
# the adoption: Connect's objects are untouched.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test qw(:DEFAULT runbook wal_archived restored_node);
use ConnectGuard::Simulator;
use ConnectGuard::Adopted;

my $wdir       = PostgreSQL::Test::Utils::tempdir;    # the rollback witness of every server
my $token      = random_secret('tok');
my $token_file = secret_file('connect.token', $token);
my $conn_id    = '6a1b0f3e-0000-4000-8000-0000000014c0';
my $sim_port   = PostgreSQL::Test::Cluster::get_free_port();
my $conf       = [ "connect_guard.naptime = '200ms'", "connect_guard.witness_directory = '$wdir'", simulator_conf() ];

my $sf = start_salesforce();
my $primary = cg_node('primary', init => [ allows_streaming => 1 ], conf => $conf);
ok(load_connect_schema($primary), 'the fixture: a Connect-managed schema salesforce with account and contact');
my $dump_before = schema_dump($primary);
# pg_upgrade and pg_restore create Connect's objects again from their SQL, and PostgreSQL deparses
# some of it differently the second time (the partial index's IN list): the reference for them is
# the dump before the adoption, loaded once into a scratch database and dumped again
my $dump_reparsed;
{
	$sf->safe_psql('postgres', 'CREATE ROLE connect_sync; CREATE ROLE app; CREATE DATABASE reparsed');
	$sf->safe_psql('reparsed', 'CREATE EXTENSION hstore');
	my ($stdout, $stderr) = ('', '');
	IPC::Run::run([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $sf->connstr('reparsed') ],
		'<', \$dump_before, '>', \$stdout, '2>', \$stderr) or die "loading the schema dump: $stderr";
	$dump_reparsed = schema_dump($sf, 'reparsed');
}

connect_settings(token => $token, id => $conn_id, port => $sim_port, args => [ '--reload-seconds', '1' ]);

# Connect's requests waited while it was away (backoff): they go out now, not after the backoff
sub nudge
{
	my ($node, $db) = @_;
	sql($node, q{UPDATE connect_guard.request SET next_attempt_at = clock_timestamp() WHERE status = 'pending';
	             SELECT connect_guard.wake_worker()}, $db);
	return;
}

sub count_of { my @ids = split /,/, $_[0]; return scalar @ids; }
# how many sends, and of how many distinct entries, the entries $ids got
sub sends_of
{
	my ($ids) = @_;
	return $sf->safe_psql('mirror', "SELECT count(*) || ' ' || count(DISTINCT entry_id) FROM _sim_connect_deliveries
	                                  WHERE entry_id = ANY ('{$ids}'::int[])");
}
# Connect paused, without a fence: what the application writes now waits in the log, NEW
sub pause_connect
{
	my ($node, $db) = @_;
	sql($node, "SELECT connect_pause('hc', block_writes => false)", $db);
	return sql($node, "SELECT connect_wait_state('hc', 'PAUSED', '30 s')", $db);
}
# the marks of the adopted log on the database that took over, once its worker has ticked the log:
# log kind, backlog (the entries left NEW), the processed mark just below the first of them
sub marks_are
{
	my ($node, $ids, $db) = @_;
	my $first = (split /,/, $ids)[0];
	my $expected = "connect " . count_of($ids) . ' ' . ($first - 1);
	$node->poll_query_until($db // 'postgres',
		q{SELECT log_kind || ' ' || backlog || ' ' || hwm_id FROM connect_high_water_marks}, $expected);
	return sql($node, q{SELECT log_kind || ' ' || backlog || ' ' || hwm_id FROM connect_high_water_marks}, $db) eq $expected;
}

# -- adopt ------------------------------------------------------------------------------------------

start_connect($primary);
app_writes($primary, 3);    # Connect is running already
sql($primary, 'CREATE EXTENSION connect_guard');
ok(wait_for_worker($primary), 'the worker runs');
sql($primary, "SELECT connect_adopt_schema('hc', 'salesforce', 'heroku',
	jsonb_build_object('region_url', 'http://127.0.0.1:$sim_port', 'connection_id', '$conn_id', 'token_file', '$token_file'))");
ok($primary->poll_query_until('postgres', q{SELECT string_agg(table_relname || '=' || remote_id, ',' ORDER BY table_relname)
	= 'account=map-account,contact=map-contact' FROM connect_mappings}), "adopted; the refresh fills Connect's mapping ids");
ok(all_processed($primary), 'Connect processes every entry');

# -- 1. runbooks/follower_changeover.sql ------------------------------------------------------------

my $follower = new_standby($primary, 'follower', start => 0);
$follower->enable_archiving;    # for the restore of part 2
$follower->start;
$primary->wait_for_catchup($follower);
is(pause_connect($primary), 'PAUSED', 'changeover: Connect paused (no fence)');
app_writes($primary, 4);
my $waiting = unfinished($primary);
is(count_of($waiting), 8, "changeover: 8 entries wait for Connect: $waiting");

my ($rc, $out, $err) = runbook($primary, 'follower_changeover', follower => 'follower', accept => 'sync_service:hc',
	follower_conninfo => $follower->connstr('postgres'), max_lag => '100000000', wait_timeout => '60 s');
is($rc, 0, 'changeover: the runbook reaches ready');
my ($plan) = $out =~ /plan (\d+) prepared/;
my $at_fence = states($primary);
is(unfinished($primary), $waiting, 'changeover: the plan changed no entry of Connect\'s log');
is(sql($primary, "SELECT (high_water_marks -> 'hc' ->> 'unfinished') || ' ' || (high_water_marks -> 'hc' ->> 'first_unfinished_id')
	FROM connect_guard.upgrade_plan WHERE plan_id = $plan"), '8 ' . (split /,/, $waiting)[0],
	'changeover: the plan recorded them (count, first id)');
stop_simulator();    # Connect follows DATABASE_URL to the new primary
($rc, $out, $err) = runbook($primary, 'follower_changeover', plan => $plan, promote => 'on', wait_timeout => '90 s',
	accept => 'sync_service:hc');
is($rc, 0, 'changeover: the second run promotes, and the new primary completes the plan');
like($out, qr/step 4: promote the follower.*step 6: on the new primary/s, 'changeover: promote, hand over, complete');
is(sql($follower, "SELECT status FROM connect_upgrade_status WHERE plan = $plan"), 'completed', 'changeover: completed');
is(states($follower), $at_fence, 'changeover: every entry is on the new primary in the state it had at the fence');
is(unfinished($follower), $waiting, 'changeover: every entry Connect had not processed is still NEW');
ok(marks_are($follower, $waiting), "changeover: the new primary's marks: backlog 8, processed mark below the first of them");
is(schema_dump($follower), $dump_before, "changeover: Connect's objects on the new primary are as before the adoption");
start_connect($follower);
nudge($follower);
ok(all_processed($follower), 'changeover: Connect, on the new primary, processes them');
is(sends_of($waiting), '8 8', 'changeover: each of them sent once');
is(sent_twice(), '', 'changeover: no entry was sent twice');
is(write_error($primary, "SET ROLE app; INSERT INTO salesforce.account (name) VALUES ('stray')"), '25006',
	'changeover: the old primary stays fenced');
$primary->stop;

# -- 2. a point-in-time restore, runbooks/rollback_recovery.sql ------------------------------------

$follower->backup('before_pitr');
is(pause_connect($follower), 'PAUSED', 'rollback: Connect paused (no fence)');
app_writes($follower, 3);
my $restored_ids = unfinished($follower);
my $target = sql($follower, 'SELECT pg_current_wal_lsn()');
sql($follower, "SELECT connect_resume('hc')");
ok(all_processed($follower), "rollback: Connect sends entries $restored_ids");
my $last = (split /,/, $restored_ids)[-1];
ok(witness_mark_past($follower, $last), "rollback: the witness records Connect's mark past $last");
ok(wal_archived($follower), 'rollback: the WAL is archived');
stop_simulator();
$follower->stop;

my $restored = restored_node($follower, 'before_pitr', $target);
ok($restored->poll_query_until('postgres', "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'rollback_detected'"),
	'rollback: the worker detects the rollback');
is(unfinished($restored), $restored_ids, 'rollback: the restore brought those entries back as NEW');
# Connect is back; each reload starts 1 s after its 202 and is over at once: never seen running
start_connect($restored, 'postgres', '--reload-delay', '1', '--reload-seconds', '0');
nudge($restored);
($rc, $out, $err) = runbook($restored, 'rollback_recovery', wait_timeout => '60 s');
is($rc, 0, 'rollback: runbooks/rollback_recovery.sql');
like($out, qr/has acted already.*every reload was acknowledged/s, 'rollback: it finds the worker\'s incident and waits for the reloads');
is(sql($restored, q{SELECT string_agg(r ->> 'first_id' || '-' || (r ->> 'last_id') || ' ' || (r ->> 'entries'), ',')
	FROM connect_rollback_incidents, jsonb_array_elements(restored_as_new) r}),
	(split /,/, $restored_ids)[0] . "-$last " . count_of($restored_ids), 'rollback: the incident lists the entries restored as NEW');
is(sql($restored, q{SELECT string_agg(detail ->> 'table' || ':' || (detail ->> 'seen'), ',' ORDER BY detail ->> 'table')
	FROM connect_guard.event WHERE kind = 'reload_started'}),
	'salesforce.account:finished,salesforce.contact:finished',
	'rollback: both reloads are proven by a reload_started_at later than before the request, never seen running');
my $sim_reloads = sim('GET', '/_sim/state')->{connections}[0]{mappings};
my $finished = join(',', map { "'$_->{reload_finished_at}'::timestamptz" } @$sim_reloads);
is(sql($restored, "SELECT count(*) FILTER (WHERE status = 'succeeded' AND polls >= 2 AND completed_at >= greatest($finished))
	FROM connect_requests WHERE action = 'reload'"), '2',
	'rollback: each acknowledged only after Connect\'s reload ended (the DATA_SYNCED polled before it started was not taken)');
is(sql($restored, 'SELECT count(*) FROM connect_fences'), '0', 'rollback: the reload fence is down');
my $progress = sim('GET', '/_sim/connect_log');
is("$progress->{reloads} $progress->{reload_errors}", '2 0', "rollback: Connect's reload writes went through the reload fence");
ok(all_processed($restored), 'rollback: Connect processes the restored entries');
is(sent_twice(), $restored_ids, 'rollback: exactly the listed entries were sent to Salesforce twice');
is(schema_dump($restored), $dump_before, "rollback: Connect's objects as before the adoption");
# the restore took the connection's row back to the PAUSED it had at the target, while Connect runs:
# the worker asked Connect and reconciled it (57_rollback_states.sql)
is(sql($restored, "SELECT connect_wait_state('hc', 'IDLE', '30 s')"), 'IDLE',
	'rollback: the connection, restored PAUSED while Connect runs, is IDLE here too, reconciled with Connect');
like(sql($restored, q{SELECT detail ->> 'recorded_state' || ' ' || (detail ->> 'remote_state') || ' ' || (detail ->> 'state')
	FROM connect_guard.event WHERE kind = 'connection_state_reconciled'}), qr/^PAUSED (IDLE|POLLING_DB_CHANGES) IDLE$/,
	'rollback: a connection_state_reconciled event says so');

# -- 3. runbooks/pg_upgrade.sql: the shell steps it prints, then its verify phase ------------------

is(pause_connect($restored), 'PAUSED', 'pg_upgrade: Connect paused (no fence)');
app_writes($restored, 2);
$waiting = unfinished($restored);
is(count_of($waiting), 4, "pg_upgrade: 4 entries wait for Connect: $waiting");
my $bindir = sql($restored, "SELECT setting FROM pg_config WHERE name = 'BINDIR'");
my $upgraded = cg_node('upgraded', conf => $conf, start => 0);
($rc, $out, $err) = runbook($restored, 'pg_upgrade', accept => 'sync_service:hc',
	new_bindir => $bindir, new_datadir => $upgraded->data_dir, new_logfile => $upgraded->logfile, wait_timeout => '60 s',
	pg_upgrade_options => '--no-sync -p ' . $restored->port . ' -P ' . $upgraded->port . ' --socketdir ' . $upgraded->host);
is($rc, 0, 'pg_upgrade: prepare reaches ready');
($plan) = $out =~ /plan (\d+) prepared/;
$at_fence = states($restored);
is(unfinished($restored), $waiting, 'pg_upgrade: the plan changed no entry of Connect\'s log');
stop_simulator();
my ($steps) = $out =~ /(# ---- shell steps for plan.*?# ---- end of shell steps ----)/s;
my ($sout, $serr) = ('', '');
ok(IPC::Run::run([ 'bash', '-c', $steps ], '>', \$sout, '2>', \$serr), 'pg_upgrade: the shell steps ran')
  or BAIL_OUT("the shell steps failed:\n$sout\n$serr");
$restored->_update_pid(0);
$upgraded->_update_pid(1);
($rc, $out, $err) = runbook($upgraded, 'pg_upgrade', phase => 'verify', wait_timeout => '60 s');
is($rc, 0, 'pg_upgrade: verify on the upgraded cluster');
is(sql($upgraded, "SELECT status FROM connect_upgrade_status WHERE plan = $plan"), 'completed',
	"pg_upgrade: completed: Connect's log positions are those the plan recorded");
is(states($upgraded), $at_fence, 'pg_upgrade: every entry in the state it had at the fence');
is(unfinished($upgraded), $waiting, 'pg_upgrade: every entry Connect had not processed is still NEW');
ok(marks_are($upgraded, $waiting), "pg_upgrade: the upgraded cluster's marks: backlog 4, processed mark below the first of them");
is(schema_dump($upgraded), $dump_reparsed, "pg_upgrade: Connect's objects as before the adoption (as PostgreSQL restores them)");
start_connect($upgraded);
nudge($upgraded);
ok(all_processed($upgraded), 'pg_upgrade: Connect processes them on the upgraded cluster');
is(sends_of($waiting), '4 4', 'pg_upgrade: each of them sent once');
is(sent_twice(), $restored_ids, 'pg_upgrade: no other entry was sent twice');

# -- 4. runbooks/pg_copy.sql: pg_dump | pg_restore into a new database, then its complete phase -----

sql($upgraded, 'CREATE DATABASE copydb');
is(pause_connect($upgraded), 'PAUSED', 'pg_copy: Connect paused (no fence)');
app_writes($upgraded, 2);
$waiting = unfinished($upgraded);
is(count_of($waiting), 4, "pg_copy: 4 entries wait for Connect: $waiting");
($rc, $out, $err) = runbook($upgraded, 'pg_copy', target => $upgraded->connstr('copydb'), wait_timeout => '60 s',
	accept => 'sync_service:hc');
is($rc, 0, 'pg_copy: prepare reaches ready (Connect\'s log needs no draining: it goes with the copy)');
($plan) = $out =~ /plan (\d+) prepared/;
$at_fence = states($upgraded);
my ($copy) = $out =~ /(# ---- copy for plan.*?# ---- end of copy ----)/s;
($sout, $serr) = ('', '');
ok(IPC::Run::run([ 'bash', '-c', $copy ], '>', \$sout, '2>', \$serr), 'pg_copy: pg_dump | pg_restore ran') or diag("$sout\n$serr");
stop_simulator();    # Connect follows DATABASE_URL to the copy
# a copy whose Connect log is not the one the plan recorded (an entry Connect marked meanwhile, as a
# Connect that was not paused would) is refused: nothing resumed, the plan still ready
my $marked = (split /,/, $waiting)[0];
sql($upgraded, "UPDATE salesforce._trigger_log SET state = 'SUCCESS' WHERE id = $marked", 'copydb');
($rc, $out, $err) = runbook($upgraded, 'pg_copy', phase => 'complete', -db => 'copydb');
is($rc, 3, 'pg_copy: complete refuses a copy whose Connect log differs from what the plan recorded');
like($err, qr/the copied Heroku Connect trigger log differs from the one the copy began with\nDETAIL:  connection "hc": .*"unfinished": 3.* here, .*"unfinished": 4.* then/,
	'pg_copy: saying what differs');
is(sql($upgraded, "SELECT p.status || ' ' || c.state FROM connect_upgrade_status p, connect_connections c WHERE p.plan = $plan", 'copydb'),
	'ready PAUSED', 'pg_copy: the plan is still ready in the copy, the connection paused');
sql($upgraded, "UPDATE salesforce._trigger_log SET state = 'NEW' WHERE id = $marked", 'copydb');
($rc, $out, $err) = runbook($upgraded, 'pg_copy', phase => 'complete', -db => 'copydb');
is($rc, 0, "pg_copy: complete in the copy: Connect's log came over as the plan recorded it");
is(sql($upgraded, "SELECT status FROM connect_upgrade_status WHERE plan = $plan", 'copydb'), 'completed', 'pg_copy: completed');
is(states($upgraded, 'copydb'), $at_fence, 'pg_copy: every entry in the copy in the state it had at the fence');
is(unfinished($upgraded, 'copydb'), $waiting, 'pg_copy: every entry Connect had not processed is still NEW');
ok(marks_are($upgraded, $waiting, 'copydb'), "pg_copy: the copy's marks: backlog 4, processed mark below the first of them");
is(schema_dump($upgraded, 'copydb'), $dump_reparsed, "pg_copy: Connect's objects in the copy as before the adoption (as PostgreSQL restores them)");
start_connect($upgraded, 'copydb');
nudge($upgraded, 'copydb');
ok(all_processed($upgraded, 'copydb'), 'pg_copy: Connect processes them in the copy');
is(sends_of($waiting), '4 4', 'pg_copy: each of them sent once');
is(sent_twice(), $restored_ids, 'pg_copy: no other entry was sent twice');
is(write_error($upgraded, "SET ROLE app; INSERT INTO salesforce.account (name) VALUES ('stray')"), '25006',
	'pg_copy: the old database stays fenced');
is(write_error($upgraded, "SET ROLE app; INSERT INTO salesforce.account (name) VALUES ('new')", 'copydb'), '',
	'pg_copy: the copy takes writes');
ok(all_processed($upgraded, 'copydb'), 'pg_copy: and Connect sends them');
is(schema_dump($upgraded), $dump_reparsed, "Connect's objects in the old database as before the adoption (as PostgreSQL restores them)");

stop_simulator();
$upgraded->stop;
done_testing();
