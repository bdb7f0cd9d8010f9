# An adopted Heroku Connect schema, end to end, with the simulator playing
# Connect on it (test/simulator --connect-log: it drains salesforce._trigger_log
# as Connect does, with xmlbinary = 'hex', as the role that owns the schema):
#
#   1. adopt: every logged table mapped, no trigger of ours, Connect's ids
#      and spelling from the deep GET; the processed mark follows Connect
#   2. an entry of a transaction still open is a gap the mark does not jump,
#      whatever Connect did with the entries above it
#   3. pause and resume through the API; the fence on the adopted tables;
#      a write error Connect records shows in connect_write_errors; a copy
#      plan carries Connect's unfinished entries into the copy
#   4. a follower changeover: every entry Connect had not processed when the
#      plan fenced the database is still unfinished on the promoted follower,
#      and Connect, moved there, sends each entry once: none lost or doubled
#   5. a point-in-time restore to before Connect processed a batch: the
#      incident lists exactly those entries (restored NEW, sent again: the
#      simulator's deliveries count them twice), every mapping is reloaded
#      through the API, and the reload fence lets only Connect's own reload
#      writes through until each reload is seen and done
#   6. pg_dump of the schema: Connect's objects are as they were before the
#      adoption
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ConnectGuard::Test qw(:DEFAULT runbook wal_archived restored_node);
use ConnectGuard::Simulator;
use ConnectGuard::Adopted;

my $wdir       = PostgreSQL::Test::Utils::tempdir;    # the rollback witness of every node
my $token      = random_secret('tok');
my $token_file = secret_file('connect.token', $token);
my $conn_id    = '6a1b0f3e-0000-4000-8000-0000000013c0';
my $sim_port   = PostgreSQL::Test::Cluster::get_free_port();
my $whole_log  = connect_whole_log();

my $sf = start_salesforce();
my $primary = cg_node('primary', init => [ allows_streaming => 1, has_archiving => 1 ], conf => [
	"connect_guard.naptime = '200ms'", "connect_guard.witness_directory = '$wdir'", simulator_conf() ]);
ok(load_connect_schema($primary), 'the fixture: a Connect-managed schema salesforce with account and contact');
my $dump_before = schema_dump($primary);

connect_settings(token => $token, id => $conn_id, port => $sim_port, args => [ '--reload-seconds', '3' ]);
my $base = start_connect($primary);

# -- 1. adopt ----------------------------------------------------------------------------------

app_writes($primary, 3);    # Connect is running already
sql($primary, 'CREATE EXTENSION connect_guard');
ok(wait_for_worker($primary), 'the worker runs');
sql($primary, "SELECT connect_adopt_schema('hc', 'salesforce', 'heroku',
	jsonb_build_object('region_url', '$base', 'connection_id', '$conn_id', 'token_file', '$token_file'))");
is(sql($primary, "SELECT log_schema || ' ' || sync_role FROM connect_guard.connection"), 'salesforce connect_sync',
	"the connection reads salesforce._trigger_log; Connect's role is the owner of its log");
ok($primary->poll_query_until('postgres', q{SELECT string_agg(table_relname || '=' || object_name || '/' || remote_id, ',' ORDER BY table_relname)
	= 'account=Account/map-account,contact=Contact/map-contact' FROM connect_mappings}),
	"every logged table is mapped; the refresh fills Connect's spelling and ids");
is(sql($primary, q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE '\_connect\_guard%'}), '0', 'no trigger of ours');
app_writes($primary, 10);
ok(all_processed($primary), 'Connect processes every entry');
ok($primary->poll_query_until('postgres', q{SELECT hwm_id = log_head AND backlog = 0 FROM connect_high_water_marks}),
	"Connect's processed mark reaches the log head");
is(sql($primary, q{SELECT log_kind || ' ' || log_table || ' ' || log_head FROM connect_high_water_marks}),
	'connect salesforce._trigger_log 26', 'the marks are read from salesforce._trigger_log (26 entries)');

# -- 2. an open transaction's entry is a gap the mark does not jump -----------------------------

my $open = $primary->background_psql('postgres');
$open->query_safe("SET ROLE app; BEGIN; INSERT INTO salesforce.account (name) VALUES ('open')");
my $gap = sql($primary, 'SELECT last_value FROM salesforce._trigger_log_id_seq');
app_writes($primary, 2);
ok($primary->poll_query_until('postgres', "SELECT count(*) = 4 FROM $whole_log WHERE id > $gap AND state = 'SUCCESS'"),
	"Connect processed the 4 entries above id $gap, whose transaction is still open");
# several worker cycles: the mark stays below the gap
my $held = 1;
foreach (1 .. 10)
{
	$held &&= sql($primary, 'SELECT hwm_id FROM connect_high_water_marks') == $gap - 1;
	sleep 0.2;
}
ok($held, 'the processed mark stays at ' . ($gap - 1) . ' while entry ' . $gap . ' is invisible');
$open->query_safe('COMMIT');
$open->quit;
ok($primary->poll_query_until('postgres', 'SELECT hwm_id = log_head FROM connect_high_water_marks'),
	'once it commits and Connect sends it, the mark passes it');

# -- 3. pause, fence, resume; write errors -----------------------------------------------------

is(sql($primary, "SELECT connect_pause('hc', reason => 'disk swap')"), 'PAUSING', 'pause: a request to Connect');
is(sql($primary, "SELECT connect_wait_state('hc', 'PAUSED', '30 s')"), 'PAUSED', 'Connect paused, then the fence');
is(sim('GET', '/_sim/state')->{connections}[0]{state}, 'PAUSED', 'the simulator is paused');
is(write_error($primary, "SET ROLE app; INSERT INTO salesforce.account (name) VALUES ('x')"), '25006', 'account is fenced');
is(write_error($primary, "SET ROLE connect_sync; SET xmlbinary = 'hex'; UPDATE salesforce.contact SET name = 'y'"), '25006',
	'for Connect\'s role too: a pause fence lets nobody through');
is(write_error($primary, "SET ROLE app; CREATE TEMP TABLE t (i int); INSERT INTO t VALUES (1)"), '', 'other writes work');
is(sql($primary, "SELECT connect_resume('hc')"), 'RESUMING', 'resume');
is(sql($primary, "SELECT connect_wait_state('hc', 'IDLE', '30 s')"), 'IDLE', 'Connect runs again');
# the runbook does the same, unaware of which log the connection reads
is((runbook($primary, 'pause_resume', connection => 'hc', action => 'pause', reason => 'runbook'))[0], 0,
	'runbooks/pause_resume.sql pauses hc');
is(sql($primary, "SELECT state || ' ' || fenced FROM connect_status"), 'PAUSED true', 'paused and fenced');
is((runbook($primary, 'pause_resume', connection => 'hc', action => 'resume'))[0], 0, 'and resumes it');
is(sql($primary, "SELECT state || ' ' || fenced FROM connect_status"), 'IDLE false', 'running, not fenced');
sim('POST', '/_sim/connect_log/fail', { count => 1, table => 'contact', message => 'REQUIRED_FIELD_MISSING: LastName' });
app_writes($primary, 1);
ok($primary->poll_query_until('postgres', q{SELECT failed = 1 FROM connect_high_water_marks}), 'the FAILED entry is counted');
is(sql($primary, q{SELECT table_name || ' ' || action || ' ' || sf_message FROM connect_write_errors}),
	'salesforce.contact INSERT REQUIRED_FIELD_MISSING: LastName', 'connect_write_errors shows it');
ok($primary->poll_query_until('postgres', q{SELECT archived FROM connect_write_errors}),
	'and still once Connect has archived it');
ok(all_processed($primary), 'everything else is processed');

# -- 3b. a copy plan: Connect's unfinished entries go with the copy ------------------------------------

sql($primary, "SELECT connect_pause('hc', block_writes => false)");
is(sql($primary, "SELECT connect_wait_state('hc', 'PAUSED', '30 s')"), 'PAUSED', 'Connect paused, so that entries wait');
app_writes($primary, 3);
my $copy_plan = sql($primary, "SELECT connect_prepare_upgrade('copy', timeout => '60 s')");
is(sql($primary, "SELECT connect_wait_upgrade($copy_plan, 'ready', '60 s')"), 'ready',
	'the copy plan is ready without waiting for Connect to drain: its log is rows the copy carries');
my $at_copy = states($primary);
is(scalar(split /,/, unfinished($primary)), 6, 'six entries unfinished at the fence');
my $dump = $primary->basedir . '/copy.dump';
$primary->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $primary->connstr('postgres') ], 'pg_dump -Fc of the fenced database');
sql($primary, 'CREATE DATABASE copy');
# in one transaction: the copy's worker starts at CREATE EXTENSION's commit, and must find the data restored
$primary->command_ok([ 'pg_restore', '--exit-on-error', '--single-transaction', '-d', $primary->connstr('copy'), $dump ],
	'pg_restore into a new database');
is(sql($primary, "SELECT connect_complete_upgrade($copy_plan)", 'copy'), 'completed',
	'connect_complete_upgrade() on the copy: Connect\'s log came over as it was');
is(states($primary, 'copy'), $at_copy, 'every entry of Connect\'s log is in the copy, in the state it had');
sql($primary, 'DROP DATABASE copy WITH (FORCE)');
is(sql($primary, "SELECT connect_abort_upgrade($copy_plan, 'the copy was a test')"), 'aborted', 'the source is given back');
ok($primary->poll_query_until('postgres', "SELECT state = 'IDLE' FROM connect_connections"), 'Connect runs again');
ok(all_processed($primary), 'and sends what waited');

# -- 4. a follower changeover ---------------------------------------------------------------------

my $follower = new_standby($primary, 'follower', start => 0);
$follower->enable_archiving;    # for the restore of part 5
$follower->start;
$primary->wait_for_catchup($follower);
my $writes = $primary->basedir . '/app_writes.sql';
append_to_file($writes, "INSERT INTO salesforce.account (name) VALUES ('bench');\n"
	. "INSERT INTO salesforce.contact (name) VALUES ('bench');\n");
my ($bench_out, $bench_err) = ('', '');
my $bench = IPC::Run::start([ 'pgbench', '-n', '-c', '2', '-T', '3', '-f', $writes, $primary->connstr('postgres') . ' user=app' ],
	'>', \$bench_out, '2>', \$bench_err);
sleep 1;
my $plan = sql($primary, "SELECT connect_prepare_upgrade('follower', follower => \$\$" . $follower->connstr('postgres')
	. "\$\$, max_lag_bytes => 10000000)");
my ($wait_rc, $wait_out, $wait_err) = $primary->psql('postgres', "SELECT connect_wait_upgrade($plan, 'ready', '60 s')");
is($wait_out, 'ready', 'the plan is ready: Connect paused, fenced, follower caught up')
  or diag($wait_err, sql($primary, 'SELECT * FROM connect_requests'), sql($primary, 'SELECT * FROM connect_status'));
$bench->finish;
my $at_ready = states($primary);
my $unfinished_at_ready = unfinished($primary);
isnt($unfinished_at_ready, '', 'entries written after Connect paused are unfinished: ' . scalar(split /,/, $unfinished_at_ready));
is(sql($primary, "SELECT high_water_marks -> 'hc' ->> 'unfinished' FROM connect_guard.upgrade_plan WHERE plan_id = $plan"),
	scalar(split /,/, $unfinished_at_ready), 'the plan recorded them');
is(sql($primary, "SELECT connect_promote_follower($plan)"), 'promoted', 'promoted');
ok($follower->poll_query_until('postgres', "SELECT status = 'completed' FROM connect_upgrade_status WHERE plan = $plan"),
	'the promoted follower completes the plan: Connect\'s log came through intact');
is(states($follower), $at_ready, 'every entry is there in the state it had at the fence (none lost, none processed meanwhile)');
is(unfinished($follower), $unfinished_at_ready, 'every entry Connect had not processed is still NEW');
ok($follower->poll_query_until('postgres', "SELECT state = 'IDLE' FROM connect_connections"), 'and the connection is resumed');
stop_simulator();    # Connect follows DATABASE_URL to the new primary
start_connect($follower);
ok(all_processed($follower), 'Connect processes them on the new primary');
is(sent_twice(), '', 'no entry was sent twice');
is($sf->safe_psql('mirror', 'SELECT count(DISTINCT entry_id) FROM _sim_connect_deliveries'),
	sql($follower, "SELECT count(*) FROM $whole_log WHERE state IN ('SUCCESS', 'FAILED')"),
	'and every entry was sent once');
is(write_error($primary, "INSERT INTO salesforce.account (name) VALUES ('stray')"), '25006', 'the old primary stays fenced');
$primary->stop;

# -- 5. a point-in-time restore to before Connect processed a batch -------------------------------

$follower->backup('before_pitr');
sql($follower, "SELECT connect_pause('hc', block_writes => false)");
is(sql($follower, "SELECT connect_wait_state('hc', 'PAUSED', '30 s')"), 'PAUSED', 'Connect paused (no fence)');
app_writes($follower, 4);
my $restored_ids = unfinished($follower);
my $target = sql($follower, 'SELECT pg_current_wal_lsn()');
sql($follower, "SELECT connect_resume('hc')");
ok(all_processed($follower), "Connect sends entries $restored_ids");
my ($first, $last) = (split(/,/, $restored_ids))[0, -1];
ok(witness_mark_past($follower, $last), "the witness records Connect's mark past $last");
ok(wal_archived($follower), 'the WAL is archived');
stop_simulator();
$follower->stop;

my $restored = restored_node($follower, 'before_pitr', $target);
ok($restored->poll_query_until('postgres', "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'rollback_detected'"),
	'the worker detects the rollback');
is(unfinished($restored), $restored_ids, 'the restore brought those entries back as NEW');
is(sql($restored, q{SELECT r ->> 'first_id' || '-' || (r ->> 'last_id') || ' ' || (r ->> 'entries')
	FROM connect_rollback_incidents, jsonb_array_elements(restored_as_new) r WHERE r ->> 'connection' = 'hc'}),
	"$first-$last " . scalar(split /,/, $restored_ids), 'the incident lists them: id range and count');
is(sql($restored, q{SELECT string_agg(table_relname || ':' || state, ',' ORDER BY table_relname) FROM connect_mappings}),
	'account:RELOAD_TABLE,contact:RELOAD_TABLE', 'every mapping is to be reloaded');
is(write_error($restored, "SET ROLE app; INSERT INTO salesforce.account (name) VALUES ('during')"), '25006', 'the app is fenced');
is(write_error($restored, "SET ROLE app; SET xmlbinary = 'hex'; UPDATE salesforce.contact SET name = 'x'"), '25006',
	'also when it imitates Connect\'s setting');
is(write_error($restored, "SET ROLE connect_sync; UPDATE salesforce.contact SET name = 'x'"), '25006',
	'also Connect\'s role without it');
start_connect($restored);    # Connect is back: the reloads reach it, and it sends the restored entries again
ok($restored->poll_query_until('postgres', "SELECT count(*) = 2 FROM connect_guard.event WHERE kind = 'reload_started'"),
	'Connect is seen reloading both tables');
ok($restored->poll_query_until('postgres', q{SELECT resolved_at IS NOT NULL FROM connect_rollback_incidents}),
	'both reloads acknowledged: the incident is resolved');
is(sql($restored, 'SELECT count(*) FROM connect_fences'), '0', 'the fence is down');
is(join(',', sort map { "$_->{path}:$_->{status}" } grep { $_->{path} =~ m{/actions/reload$} } sim_posts()),
	'/api/v3/mappings/map-account/actions/reload:202,/api/v3/mappings/map-contact/actions/reload:202',
	'one reload per mapping through the API');
my $progress = sim('GET', '/_sim/connect_log');
is("$progress->{reloads} $progress->{reload_errors}", '2 0', "Connect's reload writes went through the reload fence");
is($progress->{reload_rows}, sql($restored, 'SELECT (SELECT count(*) FROM salesforce.account) + (SELECT count(*) FROM salesforce.contact)'),
	'it rewrote both tables from Salesforce');
ok(all_processed($restored), 'Connect processes the restored entries');
is(sent_twice(), $restored_ids, 'exactly the listed entries were sent to Salesforce twice');
is(write_error($restored, "SET ROLE app; INSERT INTO salesforce.account (name) VALUES ('after')"), '', 'the app writes again');

# -- 6. Connect's objects are untouched -------------------------------------------------------------

is(schema_dump($restored), $dump_before, "pg_dump --schema-only -n salesforce: as before the adoption");
stop_simulator();
done_testing();
