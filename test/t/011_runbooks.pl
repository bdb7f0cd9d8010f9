# The psql runbooks of runbooks/, run as a DBA runs them (psql -v
# ON_ERROR_STOP=1 -f runbooks/NAME.sql -v name=value), each checked by its
# outcome: connection states, fences, plans completed or handed over, and
# that a failed precondition stops with a non-zero exit and its message.
#
# The story: pause/resume on a primary; recreate a connection from its
# export; move consumers between connections in a window and by double
# write; a pg_upgrade plan up to ready, then aborted; a follower changeover
# to the streaming standby (stopped at ready, then promoted by a second
# run); a plan change from there to a new standby; a real pg_upgrade of that
# server by the shell steps the runbook prints; a pg_copy of the upgraded
# database into a new one; a rollback recovery there (every mapping
# reloaded by force, acknowledged by the local consumers).
use strict;
use warnings;
use File::Temp qw(tempdir);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test qw(:DEFAULT runbook);

# recreate_connection imports a webhook connection to http://127.0.0.1:9, which
# only a test may name (connect_guard.http_allow_insecure_loopback)
my $conf = [ "connect_guard.naptime = '200ms'", 'connect_guard.http_allow_insecure_loopback = on' ];

# consume_once is a local sync service's turn: take a batch, finish it
sub consume_once
{
    my ($node, $connection, $db) = @_;
    return consume($node, connection => $connection, db => $db, max => 1, record => 0, stop_on_error => 1);
}

# runbook_consuming runs a runbook while the sync services of
# @$connections consume, as they do during a real window
sub runbook_consuming
{
    my ($node, $name, $connections, %vars) = @_;
    my $db = $vars{-db};
    return runbook($node, $name, %vars, -while => sub { consume_once($node, $_, $db) for @$connections });
}

sub q1 { return sql(@_); }

# as_consumer runs SQL as a login role (the consumer functions check
# session_user): (exit code, stdout, stderr with its SQLSTATE)
sub as_consumer
{
    my ($node, $role, $sql) = @_;
    return $node->psql('postgres', "\\set VERBOSITY verbose\n$sql", extra_params => [ '-U', $role ]);
}

# take_batch_as: the role takes a batch of the connection, counts its
# events and finishes it; returns the count, or the error
sub take_batch_as
{
    my ($node, $role, $connection) = @_;
    my ($rc, $batch, $err) = as_consumer($node, $role, "SELECT connect_next_batch('$connection')");
    return $err =~ /ERROR:\s+(\w{5})/ ? $1 : "error: $err" if $rc != 0;
    return 'no batch' if $batch eq '';
    ($rc, my $count, $err) = as_consumer($node, $role,
        "SELECT count(*) FROM connect_batch_events($batch); SELECT connect_finish_batch($batch)");
    return $rc == 0 ? (split /\n/, $count)[0] : "error: $err";
}

sub worker_runs
{
    my ($node, $db) = @_;
    # after CREATE EXTENSION the worker may take up to the launcher's 30 s recheck
    ok(wait_for_worker($node, $db), $node->name . ': the worker runs');
}

my $primary = cg_node('primary', init => [ allows_streaming => 1 ], conf => $conf);
$primary->safe_psql('postgres', q{
    CREATE EXTENSION connect_guard;
    CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
    CREATE TABLE contact (id int PRIMARY KEY, name text);
    SELECT connect_create_connection('sync');
    SELECT connect_map_table('sync', 'account');
});
# CREATE EXTENSION's own wake-up can be consumed by the launcher before the
# extension is committed (the worker then finds no extension and the next
# try is 30 s later); waking the launcher again once it is committed avoids that
$primary->safe_psql('postgres', 'SELECT connect_guard.wake_launcher()');
worker_runs($primary);
my ($rc, $out, $err);

# ------------------------------------------------------------------ pause_resume
($rc, $out, $err) = runbook($primary, 'pause_resume', reason => 'test window');
is($rc, 0, 'pause_resume: pause (the only connection by default)');
like($out, qr/== before.*IDLE.*== step 1: pause sync.*== after.*PAUSED.*test window/s,
    'pause_resume: shows the status before and after');
like($out, qr/action=resume/, 'pause_resume: says how to resume');
like($out, qr/== preflight.*sync_service:sync +\| ok .*long_transactions +\| ok /s, 'pause_resume: runs its preflight first');
is(q1($primary, "SELECT state || ' ' || fenced FROM connect_status WHERE connection = 'sync'"), 'PAUSED true',
    'pause_resume: sync is PAUSED and fenced');
is(write_error($primary, 'INSERT INTO account VALUES (1)'), '25006', 'pause_resume: the mapped table refuses writes');
is(write_error($primary, 'INSERT INTO contact VALUES (1)'), '', 'pause_resume: other tables take writes');

($rc, $out, $err) = runbook($primary, 'pause_resume', connection => 'sync');
is($rc, 3, 'pause_resume: pausing a paused connection stops');
like($err, qr/runbook stopped: connection "sync" is already PAUSED .*because: test window/, 'pause_resume: and says why');
like($err, qr/HINT:.*action=resume/, 'pause_resume: and what to do');

($rc, $out, $err) = runbook($primary, 'pause_resume', connection => 'nope');
is($rc, 3, 'pause_resume: an unknown connection stops');
like($err, qr/runbook stopped: connection "nope" does not exist/, 'pause_resume: naming it');
($rc, $out, $err) = runbook($primary, 'pause_resume', action => 'halt');
like($err, qr/runbook stopped: unknown action halt/, 'pause_resume: an unknown action stops');

($rc, $out, $err) = runbook($primary, 'pause_resume', connection => 'sync', action => 'resume');
is($rc, 0, 'pause_resume: resume');
like($out, qr/connect_resume\(\) returned IDLE/, 'pause_resume: reports the new state');
is(q1($primary, "SELECT state || ' ' || fenced FROM connect_status WHERE connection = 'sync'"), 'IDLE false',
    'pause_resume: sync runs, unfenced');
is(write_error($primary, 'INSERT INTO account VALUES (1)'), '', 'pause_resume: writes work again');
($rc, $out, $err) = runbook($primary, 'pause_resume', connection => 'sync', action => 'resume');
like($err, qr/runbook stopped: connection "sync" is not paused: it is IDLE/, 'pause_resume: resuming a running connection stops');

($rc, $out, $err) = runbook($primary, 'pause_resume', block_writes => 'off');
is($rc, 0, 'pause_resume: pause without a fence');
is(q1($primary, "SELECT state || ' ' || fenced FROM connect_status WHERE connection = 'sync'"), 'PAUSED false',
    'pause_resume: paused, not fenced');
is(write_error($primary, 'INSERT INTO account VALUES (2)'), '', 'pause_resume: writes reach the log');
like($out, qr/Writes still reach the trigger log/, 'pause_resume: and says so');
like($out, qr/long_transactions +\| not needed /, "pause_resume: without a fence the fence's checks are not needed");
($rc) = runbook($primary, 'pause_resume', action => 'resume');
is($rc, 0, 'pause_resume: resume again');
consume_once($primary, 'sync') while q1($primary, "SELECT backlog FROM connect_status WHERE connection = 'sync'") > 0;

# ----------------------------------------------------------- recreate_connection
$primary->safe_psql('postgres', q{
    SELECT connect_create_connection('crm');
    SELECT connect_map_table('crm', 'contact', 'Contact');
});
# crm's sync service consumes as crm_app, an ordinary role granted crm alone;
# outsider consumes sync, not crm (a consumer role is bound per connection)
$primary->safe_psql('postgres', q{
    CREATE ROLE crm_app LOGIN;
    SELECT connect_grant_consumer('crm', 'crm_app');
    CREATE ROLE outsider LOGIN;
    SELECT connect_grant_consumer('sync', 'outsider');
});
($rc, $out, $err) = runbook($primary, 'pause_resume');
is($rc, 3, 'pause_resume: with two connections the name is needed');
like($err, qr/-v connection=NAME is needed: this database has 2 connections \(crm, sync\)/, 'pause_resume: and it says so');

my $tmp = tempdir(CLEANUP => 1);
my $file = "$tmp/crm.json";
($rc, $out, $err) = runbook($primary, 'recreate_connection', connection => 'crm', file => $file);
is($rc, 3, 'recreate_connection: a mapping that is not DATA_SYNCED stops the export');
like($err, qr/runbook stopped: mappings not in DATA_SYNCED: contact \(INITIAL\)/, 'recreate_connection: naming it');
ok(!-e $file, 'recreate_connection: nothing was exported');
is(q1($primary, "SELECT state FROM connect_status WHERE connection = 'crm'"), 'IDLE', 'recreate_connection: nothing was paused');

$primary->safe_psql('postgres', 'INSERT INTO contact VALUES (2), (3)');
consume_once($primary, 'crm');
is(q1($primary, "SELECT state FROM connect_mappings WHERE connection = 'crm'"), 'DATA_SYNCED', 'crm synced its first batch');
$primary->safe_psql('postgres', 'INSERT INTO contact VALUES (4), (5)');
($rc, $out, $err) = runbook_consuming($primary, 'recreate_connection', ['crm', 'sync'], connection => 'crm', file => $file);
is($rc, 0, 'recreate_connection: export, with the sync service draining the backlog');
like($out, qr/step 2: stop the writes.*step 3: wait.*drained.*step 4: pause crm.*step 5: export/s,
    'recreate_connection: fence, drain, pause, export, step by step');
is(q1($primary, "SELECT state || ' ' || fenced || ' ' || backlog FROM connect_status WHERE connection = 'crm'"),
    'PAUSED true 0', 'recreate_connection: crm is paused, fenced, with nothing left to consume');
is(q1($primary, "SELECT count(*) FROM connect_fences WHERE scope <> 'connection'"), '0',
    'recreate_connection: the maintenance fence was lowered again');
is(write_error($primary, 'INSERT INTO contact VALUES (6)'), '25006', 'recreate_connection: the table stays fenced');
is(write_error($primary, 'INSERT INTO account VALUES (6)'), '', "recreate_connection: sync's table does not");
my $json = slurp_file($file);
like($json, qr/"connection": "crm"/, 'recreate_connection: the export names the connection');
like($json, qr/"object_name": "Contact"/, 'recreate_connection: and its mappings');
is(q1($primary, "SELECT (\$\$$json\$\$::jsonb -> 'high_water_mark' ->> 'hwm_id')::bigint = hwm_id FROM connect_status WHERE connection = 'crm'"),
    't', 'recreate_connection: and its high-water mark');
like($json, qr/"consumers": \[\s*"crm_app"\s*\]/, 'recreate_connection: and its consumer roles');
# a role granted crm after the export (while it is paused) is not in the file
$primary->safe_psql('postgres', q{CREATE ROLE crm_late LOGIN; SELECT connect_grant_consumer('crm', 'crm_late')});

($rc, $out, $err) = runbook($primary, 'recreate_connection', phase => 'import', file => $file);
is($rc, 0, 'recreate_connection: import');
like($out, qr/dropped the old crm.*created crm.*mapped 1 table.*granted it to 2 consumer role\(s\)/s,
    'recreate_connection: replaces the paused connection');
is(q1($primary, "SELECT string_agg(role, ', ' ORDER BY role) FROM connect_consumers WHERE connection = 'crm'"), 'crm_app, crm_late',
    "recreate_connection: the new crm is granted the exported consumers, and the old crm's granted since");
is(q1($primary, "SELECT state || ' ' || fenced FROM connect_status WHERE connection = 'crm'"), 'IDLE false',
    'recreate_connection: the new crm runs');
is(q1($primary, "SELECT table_name || ' ' || object_name || ' ' || state FROM connect_mappings WHERE connection = 'crm'"),
    'contact Contact INITIAL', 'recreate_connection: with its mapping');
is(write_error($primary, 'INSERT INTO contact VALUES (7)'), '', 'recreate_connection: the table takes writes again');
is(q1($primary, "SELECT backlog FROM connect_status WHERE connection = 'crm'"), '1',
    'recreate_connection: and the new connection gets them');
is(take_batch_as($primary, 'outsider', 'crm'), '42501', 'recreate_connection: a role not granted crm may not take its batches');
is(take_batch_as($primary, 'crm_app', 'crm'), '1', 'recreate_connection: crm_app takes the write from the new crm, and finishes it');
is(q1($primary, "SELECT backlog FROM connect_status WHERE connection = 'crm'"), '0', 'recreate_connection: nothing is left');
$primary->safe_psql('postgres', q{SELECT connect_revoke_consumer('crm', 'crm_late'); DROP ROLE crm_late});
($rc, $out, $err) = runbook($primary, 'recreate_connection', phase => 'import', file => $file);
like($err, qr/runbook stopped: connection "crm" exists here and is IDLE/, 'recreate_connection: a second import stops');
($rc, $out, $err) = runbook($primary, 'recreate_connection', phase => 'import', file => "$tmp/none.json");
like($err, qr/runbook stopped: cannot read .*none\.json/, 'recreate_connection: so does a missing file');

# a redacted secret must come back through -v options
append_to_file("$tmp/hook.json", q{{"format": "connect_guard connection 1", "connection": "hook", "adapter": "webhook",
    "options": {"url": "http://127.0.0.1:9/hook", "secret": "********"},
    "mappings": [{"table_schema": "public", "table_name": "account", "object_name": "Account"}],
    "consumers": ["nobody_here"]}});
($rc, $out, $err) = runbook($primary, 'recreate_connection', phase => 'import', file => "$tmp/hook.json");
is($rc, 3, 'recreate_connection: an import with a redacted secret stops');
like($err, qr/runbook stopped: the export has redacted values \("\*{8}"\) for: secret/, 'recreate_connection: naming it');
# a consumer role of the export that this cluster lacks: its sync service would get 42501
($rc, $out, $err) = runbook($primary, 'recreate_connection', phase => 'import', file => "$tmp/hook.json",
    options => '{"secret": "k3y-for-the-test"}');
is($rc, 3, 'recreate_connection: an import whose consumer role does not exist here stops');
like($err, qr/runbook stopped: role\(s\) nobody_here of the export \(.*hook\.json\) do not exist\nHINT: +Create them.*-v consumers=role/,
    'recreate_connection: naming it, and -v consumers');
is(q1($primary, "SELECT count(*) FROM connect_connections WHERE connection = 'hook'"), '0', 'recreate_connection: nothing was created');
($rc, $out, $err) = runbook($primary, 'recreate_connection', phase => 'import', file => "$tmp/hook.json",
    options => '{"secret": "k3y-for-the-test"}', consumers => ' outsider');
is($rc, 0, 'recreate_connection: with the secret and the consumers given, the import runs');
is(q1($primary, "SELECT string_agg(role, ', ') FROM connect_consumers WHERE connection = 'hook'"), 'outsider',
    'recreate_connection: -v consumers names the roles granted');
is(q1($primary, "SELECT adapter || ' ' || (options ->> 'url') || ' ' || (options ->> 'secret') FROM connect_connections WHERE connection = 'hook'"),
    'webhook http://127.0.0.1:9/hook ********', 'recreate_connection: the webhook connection is back, its secret stored');
$primary->safe_psql('postgres', "SELECT connect_drop_connection('hook')");

# ----------------------------------------------------------- kafka_style_cutover
# crm_app consumes crm (granted by recreate_connection); a write for the window to drain
$primary->safe_psql('postgres', 'INSERT INTO contact VALUES (13)');
($rc, $out, $err) = runbook($primary, 'kafka_style_cutover', old => 'crm');
like($err, qr/runbook stopped: the new connection's name is needed/, 'kafka_style_cutover: the new name is needed');
($rc, $out, $err) = runbook($primary, 'kafka_style_cutover', old => 'crm', new => 'sync');
like($err, qr/runbook stopped: connection "sync" exists already/, 'kafka_style_cutover: window: new must not exist');

($rc, $out, $err) = runbook($primary, 'kafka_style_cutover', old => 'crm', new => 'hook2', new_adapter => 'webhook',
    new_options => '{"url": "ftp://example.com/hook", "secret": "k3y"}');
like($err, qr/runbook stopped: connection "hook2" cannot be created: option "url" is not an http/,
    'kafka_style_cutover: window: bad new_options stop before the window');
($rc, $out, $err) = runbook($primary, 'kafka_style_cutover', old => 'crm', new => 'crm2', new_consumers => 'crm_app, nobody_here');
is($rc, 3, 'kafka_style_cutover: a consumer role that does not exist stops');
like($err, qr/runbook stopped: role\(s\) nobody_here of -v new_consumers do not exist/, 'kafka_style_cutover: naming it');
is(q1($primary, "SELECT count(*) FROM connect_fences") . ' ' . q1($primary, "SELECT state FROM connect_status WHERE connection = 'crm'")
      . ' ' . q1($primary, "SELECT count(*) FROM connect_connections WHERE connection = 'crm2'"),
    '0 IDLE 0', 'kafka_style_cutover: with nothing fenced, paused or created');

# maintenance window: crm's backlog (entry 13) is drained by its consumer, then crm2 takes over
($rc, $out, $err) = runbook_consuming($primary, 'kafka_style_cutover', ['crm'], old => 'crm', new => 'crm2', drop_old => 'off');
is($rc, 0, 'kafka_style_cutover: window');
like($out, qr/step 1 \(enter the maintenance window.*step 2 \(consumers fully caught up.*drained.*step 3: pause crm.*step 4 \(switch over\).*step 5/s,
    "kafka_style_cutover: window, the article's steps");
is(q1($primary, "SELECT string_agg(connection || ' ' || state || ' ' || backlog, ', ' ORDER BY connection) FROM connect_status WHERE connection LIKE 'crm%'"),
    'crm PAUSED 0, crm2 IDLE 0', 'kafka_style_cutover: crm drained and paused, crm2 runs');
is(q1($primary, "SELECT count(*) FROM connect_fences"), '0', 'kafka_style_cutover: no fence left');
is(q1($primary, "SELECT object_name FROM connect_mappings WHERE connection = 'crm2'"), 'Contact',
    'kafka_style_cutover: crm2 maps what crm mapped');
$primary->safe_psql('postgres', 'INSERT INTO contact VALUES (8)');
is(q1($primary, "SELECT string_agg(connection || ' ' || backlog, ', ' ORDER BY connection) FROM connect_status WHERE connection LIKE 'crm%'"),
    'crm 1, crm2 1', 'kafka_style_cutover: a new write reaches crm2 (and the kept crm)');
like($out, qr/crm stays PAUSED as a way back/, 'kafka_style_cutover: says how to drop the kept one');
# crm's consumer role consumes crm2 now (granted in the window); a role is bound per connection
is(q1($primary, "SELECT string_agg(connection || ' ' || role, ', ' ORDER BY connection) FROM connect_consumers WHERE connection LIKE 'crm%'"),
    'crm crm_app, crm2 crm_app', 'kafka_style_cutover: window: crm2 is granted the consumers of crm');
like($out, qr/granted 1 consumer role\(s\)/, 'kafka_style_cutover: window: says so');
is(take_batch_as($primary, 'crm_app', 'sync'), '42501', 'crm_app may not take a batch of sync (not granted it)');
is(take_batch_as($primary, 'crm_app', 'crm2'), '1', 'kafka_style_cutover: window: crm_app takes the new write from crm2, and finishes it');
is(q1($primary, "SELECT backlog FROM connect_status WHERE connection = 'crm2'"), '0', 'kafka_style_cutover: crm2 has nothing left');
$primary->safe_psql('postgres', "SELECT connect_drop_connection('crm')");

# double write: crm3 consumes alongside crm2, then takes over
($rc, $out, $err) = runbook($primary, 'kafka_style_cutover', variant => 'double_write', old => 'crm2', new => 'crm3');
is($rc, 0, 'kafka_style_cutover: double_write start');
is(q1($primary, "SELECT string_agg(connection || ' ' || state, ', ' ORDER BY connection) FROM connect_status WHERE connection LIKE 'crm%'"),
    'crm2 IDLE, crm3 IDLE', 'kafka_style_cutover: both connections run');
($rc, $out, $err) = runbook($primary, 'kafka_style_cutover', variant => 'double_write', phase => 'cutover', old => 'crm2', new => 'crm3');
is($rc, 3, 'kafka_style_cutover: a cutover before crm3 synced stops');
like($err, qr/runbook stopped: mappings of "crm3" not in DATA_SYNCED yet: contact \(INITIAL\)/, 'kafka_style_cutover: saying why');
is(q1($primary, "SELECT state FROM connect_status WHERE connection = 'crm2'"), 'IDLE', 'kafka_style_cutover: crm2 was left running');
$primary->safe_psql('postgres', 'INSERT INTO contact VALUES (9)');
consume_once($primary, 'crm3');
$primary->safe_psql('postgres', 'INSERT INTO contact VALUES (10)');
consume_once($primary, 'crm2');
($rc, $out, $err) = runbook_consuming($primary, 'kafka_style_cutover', ['crm3'], variant => 'double_write', phase => 'cutover',
    old => 'crm2', new => 'crm3');
is($rc, 0, 'kafka_style_cutover: double_write cutover');
like($out, qr/step 1 \(switch the consumers\): pause crm2.*step 2: wait.*caught up.*step 3 .*drop crm2/s,
    'kafka_style_cutover: pause, compare the marks, drop');
is(q1($primary, "SELECT string_agg(connection || ' ' || state || ' ' || backlog, ', ' ORDER BY connection) FROM connect_status WHERE connection LIKE 'crm%'"),
    'crm3 IDLE 0', 'kafka_style_cutover: crm3 alone, with everything consumed');
is(q1($primary, "SELECT string_agg(role, ', ') FROM connect_consumers WHERE connection = 'crm3'"), 'crm_app',
    'kafka_style_cutover: double_write: crm3 was granted the consumers of crm2 at the start');
$primary->safe_psql('postgres', 'INSERT INTO contact VALUES (50)');
is(take_batch_as($primary, 'crm_app', 'crm3'), '1', 'kafka_style_cutover: double_write: crm_app takes the new write from crm3');

# -------------------------------------------------------------------- pg_upgrade
my $datadir = $primary->data_dir;
# a batch its consumer never finishes: the plan cannot pause sync, and fails at its step timeout
$primary->safe_psql('postgres', 'INSERT INTO account VALUES (50)');
my $held = q1($primary, "SELECT connect_next_batch('sync')");
($rc, $out, $err) = runbook($primary, 'pg_upgrade', new_datadir => "$tmp/new", step_timeout => '1 s');
is($rc, 3, 'pg_upgrade: a plan that fails stops the runbook');
like($err, qr/runbook stopped: upgrade plan (\d+) failed at step pausing/, "pg_upgrade: with the plan's step");
my ($failed) = $err =~ /upgrade plan (\d+) failed/;
like($err, qr/HINT:  Do not run pg_upgrade\. SELECT connect_abort_upgrade\($failed\)/, 'pg_upgrade: and the way back');
like($out, qr/did not become ready:.*not every connection reached PAUSED within 00:00:01: sync \(POLLING_DB_CHANGES\)/s,
    'pg_upgrade: the reason is printed with the status');
unlike($out, qr/shell steps/, 'pg_upgrade: no shell steps for a failed plan');
is(q1($primary, "SELECT connect_abort_upgrade($failed)"), 'aborted', 'pg_upgrade: the failed plan is aborted');
q1($primary, "SELECT connect_finish_batch($held)");
is(q1($primary, "SELECT string_agg(connection || ' ' || state || ' ' || fenced, ', ' ORDER BY connection) FROM connect_status"),
    'crm3 IDLE false, sync IDLE false', 'pg_upgrade: and everything runs again');
($rc, $out, $err) = runbook($primary, 'pg_upgrade', new_datadir => "$tmp/new", new_bindir => '/usr/lib/postgresql/16/bin',
    wait_timeout => '60 s');
is($rc, 0, 'pg_upgrade: prepare reaches ready');
like($out, qr/== preflight.*plan +\| ok .*replication_slots +\| ok .*witness +\| ok /s, 'pg_upgrade: after its preflight');
my ($plan) = $out =~ /plan (\d+) prepared/;
ok($plan, "pg_upgrade: plan $plan");
is(q1($primary, "SELECT status || ' ' || step FROM connect_upgrade_status WHERE plan = $plan"), 'ready ready',
    'pg_upgrade: the plan is ready');
is(q1($primary, "SELECT string_agg(connection || ' ' || state, ', ' ORDER BY connection) FROM connect_status"),
    'crm3 PAUSED, sync PAUSED', 'pg_upgrade: every connection paused');
is(write_error($primary, 'INSERT INTO contact VALUES (11)'), '25006', 'pg_upgrade: the database is fenced');
like($out, qr/OLD_PGDATA='\Q$datadir\E'/, 'pg_upgrade: the shell steps name the data directory');
like($out, qr/-D "\$OLD_CONFDIR" -m fast -w stop.*pg_upgrade" -b "\$OLD_BINDIR" -B "\$NEW_BINDIR".*cp -p "\$OLD_PGDATA\/connect_guard\.fences" "\$NEW_PGDATA\/connect_guard\.fences".*pg_ctl" -D "\$NEW_CONFDIR" -l .* -w start/s,
    'pg_upgrade: stop, pg_upgrade, copy the fence file, start');
like($out, qr/phase=verify -v plan=$plan/, 'pg_upgrade: and the verify phase');
($rc, $out, $err) = runbook($primary, 'pg_upgrade', phase => 'verify');
is($rc, 3, 'pg_upgrade: verify on the old cluster stops');
like($err, qr/runbook stopped: this is the cluster plan $plan was prepared on/, 'pg_upgrade: saying so');
($rc, $out, $err) = runbook($primary, 'pg_upgrade', new_datadir => "$tmp/new");
like($err, qr/runbook stopped: upgrade plan $plan is already ready/, 'pg_upgrade: a second plan stops');
is(q1($primary, "SELECT connect_abort_upgrade($plan, 'test: abort after ready')"), 'aborted', 'pg_upgrade: abort');
is(q1($primary, "SELECT string_agg(connection || ' ' || state || ' ' || fenced, ', ' ORDER BY connection) FROM connect_status"),
    'crm3 IDLE false, sync IDLE false', 'pg_upgrade: the abort resumed the connections and lowered the fence');
is(write_error($primary, 'INSERT INTO contact VALUES (11)'), '', 'pg_upgrade: writes work again');

# ----------------------------------------------------------- follower_changeover
my $standby = new_standby($primary, 'standby', backup => 'base');

my $nobody = PostgreSQL::Test::Cluster::get_free_port();
($rc, $out, $err) = runbook($primary, 'follower_changeover', follower => 'ghost',
    follower_conninfo => "host=" . $primary->host . " port=$nobody dbname=postgres");
is($rc, 3, 'follower_changeover: an unreachable follower stops');
like($err, qr/runbook stopped: preflight check failed: follower_reachable \(.*port=$nobody: /, 'follower_changeover: saying so (its preflight)');
like($err, qr/HINT:.*-v accept=follower_reachable/, 'follower_changeover: and how to go ahead regardless');
is(q1($primary, "SELECT count(*) FROM connect_follower_lag WHERE source = 'libpq'"), '0',
    'follower_changeover: the failed follower was not kept registered');
($rc, $out, $err) = runbook($primary, 'follower_changeover', follower => 'self', follower_conninfo => $primary->connstr('postgres'));
like($err, qr/runbook stopped: preflight check failed: follower_standby \(it is not in recovery/, 'follower_changeover: a primary as follower stops');
($rc, $out, $err) = runbook($primary, 'follower_changeover', follower => 'otherdb', follower_conninfo => $standby->connstr('template1'));
like($err, qr/runbook stopped: preflight check failed: follower_standby \(the conninfo reaches database template1, not postgres\)/,
    'follower_changeover: a conninfo naming another database stops');
($rc, $out, $err) = runbook($primary, 'follower_changeover', follower_conninfo => $standby->connstr('postgres'), max_lag => 'lots');
like($err, qr/runbook stopped: max_lag must be a number of bytes/, 'follower_changeover: a bad max_lag stops');
is(q1($primary, "SELECT count(*) FROM connect_upgrade_status WHERE status IN ('running', 'ready')"), '0',
    'follower_changeover: no plan was started by the failed runs');

# every node keeps its witness beside its own data directory (the default): the
# follower does not share the primary's, which the preflight reports and the DBA accepts
($rc, $out, $err) = runbook($primary, 'follower_changeover', follower => 'standby', follower_conninfo => $standby->connstr('postgres'),
    max_lag => '100000000', wait_timeout => '60 s');
is($rc, 3, 'follower_changeover: a follower that does not share the witness stops');
like($err, qr/runbook stopped: preflight check failed: follower_witness \(the follower finds no witness at /,
    'follower_changeover: naming the check');
($rc, $out, $err) = runbook($primary, 'follower_changeover', follower => 'standby', follower_conninfo => $standby->connstr('postgres'),
    max_lag => '100000000', wait_timeout => '60 s', accept => 'follower_witness');
is($rc, 0, 'follower_changeover: the plan reaches ready');
like($out, qr/step 1: preflight.*follower_reachable +\| ok .*follower_witness +\| accepted /s,
    'follower_changeover: the preflight passed, with follower_witness accepted');
($plan) = $out =~ /plan (\d+) prepared/;
like($out, qr/== plan $plan timeline.*checking.*pausing.*fencing.*fencing_follower.*catching_up.*ready/s,
    'follower_changeover: prints the timeline');
like($out, qr/-v plan=$plan -v promote=on/, 'follower_changeover: and how to promote');
is(q1($primary, "SELECT status FROM connect_upgrade_status WHERE plan = $plan"), 'ready', 'follower_changeover: ready');
is(q1($standby, "SELECT count(*) FROM connect_fences"), '1', 'follower_changeover: the follower is fenced');

($rc, $out, $err) = runbook($primary, 'follower_changeover', plan => $plan, promote => 'on', wait_timeout => '90 s');
is($rc, 0, 'follower_changeover: second run: promote');
like($out, qr/step 4: promote the follower.*step 5.*step 6: on the new primary.*completed/s,
    'follower_changeover: promote, hand over, complete');
is(q1($primary, "SELECT status FROM connect_upgrade_status WHERE plan = $plan"), 'handed_over',
    'follower_changeover: the old primary handed over');
is(write_error($primary, 'INSERT INTO contact VALUES (12)'), '25006', 'follower_changeover: and stays fenced');
is(q1($standby, "SELECT status FROM connect_upgrade_status WHERE plan = $plan"), 'completed',
    'follower_changeover: the new primary completed the plan');
is(q1($standby, "SELECT string_agg(connection || ' ' || state || ' ' || fenced, ', ' ORDER BY connection) FROM connect_status"),
    'crm3 IDLE false, sync IDLE false', 'follower_changeover: and resumed the connections, unfenced');
is(q1($standby, "SELECT count(*) FROM connect_follower_lag WHERE source = 'libpq'"), '0',
    'follower_changeover: the follower registration was removed');
is(write_error($standby, 'INSERT INTO contact VALUES (12)'), '', 'follower_changeover: the new primary takes writes');
$primary->stop;

# ------------------------------------------------------------------- plan_change
worker_runs($standby);
my $bigger = new_standby($standby, 'bigger', backup => 'base2');
($rc, $out, $err) = runbook($standby, 'plan_change', follower_conninfo => $bigger->connstr('postgres'), wait_timeout => '90 s',
    accept => 'follower_witness');
is($rc, 0, 'plan_change: the changeover to the bigger server, promoted');
like($out, qr/a follower changeover without a version change.*step 4: promote the follower.*== the new primary/s,
    'plan_change: explains, promotes, completes');
unlike($out, qr/to move to a new major version/, 'plan_change: without the version upgrade note');
($plan) = $out =~ /plan (\d+) prepared/;
is(q1($bigger, "SELECT status FROM connect_upgrade_status WHERE plan = $plan"), 'completed', 'plan_change: completed');
is(q1($standby, "SELECT status FROM connect_upgrade_status WHERE plan = $plan"), 'handed_over', 'plan_change: handed over');
$standby->stop;

# -------------------------------------------- pg_upgrade, for real: the shell steps
worker_runs($bigger);
my $bindir = q1($bigger, "SELECT setting FROM pg_config WHERE name = 'BINDIR'");
my $upgraded = cg_node('upgraded', conf => $conf, start => 0);
($rc, $out, $err) = runbook($bigger, 'pg_upgrade',
    new_bindir => $bindir, new_datadir => $upgraded->data_dir, new_logfile => $upgraded->logfile, wait_timeout => '60 s',
    pg_upgrade_options => '--no-sync -p ' . $bigger->port . ' -P ' . $upgraded->port . ' --socketdir ' . $upgraded->host);
is($rc, 0, 'pg_upgrade: prepare on the bigger server');
($plan) = $out =~ /plan (\d+) prepared/;
my ($steps) = $out =~ /(# ---- shell steps for plan.*?# ---- end of shell steps ----)/s;
ok($steps, 'pg_upgrade: shell steps printed');
my ($sout, $serr) = ('', '');
my $shell_ok = IPC::Run::run([ 'bash', '-c', $steps ], '>', \$sout, '2>', \$serr);
ok($shell_ok, 'pg_upgrade: the shell steps ran') or BAIL_OUT("the shell steps failed:\n$sout\n$serr");
$bigger->_update_pid(0);
$upgraded->_update_pid(1);
($rc, $out, $err) = runbook($upgraded, 'pg_upgrade', phase => 'verify', wait_timeout => '60 s');
is($rc, 0, 'pg_upgrade: verify on the upgraded cluster');
like($out, qr/== plan $plan timeline.*ready.*completing.*completed/s, 'pg_upgrade: prints the timeline');
ok($upgraded->log_contains('1 write fence\(s\) restored'), 'pg_upgrade: the upgraded cluster came up fenced');
is(q1($upgraded, "SELECT status FROM connect_upgrade_status WHERE plan = $plan"), 'completed', 'pg_upgrade: completed');
is(q1($upgraded, "SELECT string_agg(connection || ' ' || state || ' ' || fenced, ', ' ORDER BY connection) FROM connect_status"),
    'crm3 IDLE false, sync IDLE false', 'pg_upgrade: connections resumed, unfenced');

# ----------------------------------------------------------------------- pg_copy
worker_runs($upgraded);
$upgraded->safe_psql('postgres', 'CREATE DATABASE copydb');
$upgraded->safe_psql('postgres', 'INSERT INTO account VALUES (100); INSERT INTO contact VALUES (100)');
($rc, $out, $err) = runbook_consuming($upgraded, 'pg_copy', ['sync', 'crm3'], target => $upgraded->connstr('copydb'),
    wait_timeout => '60 s');
is($rc, 0, 'pg_copy: prepare reaches ready, the consumers draining');
($plan) = $out =~ /plan (\d+) prepared/;
like($out, qr/== plan $plan timeline.*fencing.*draining.*pausing.*ready/s, 'pg_copy: prints the timeline');
is(q1($upgraded, "SELECT string_agg(connection || ' ' || state || ' ' || backlog, ', ' ORDER BY connection) FROM connect_status"),
    'crm3 PAUSED 0, sync PAUSED 0', 'pg_copy: drained and paused');
my ($copy) = $out =~ /(# ---- copy for plan.*?# ---- end of copy ----)/s;
ok($copy, 'pg_copy: the copy command printed');
($sout, $serr) = ('', '');
$shell_ok = IPC::Run::run([ 'bash', '-c', $copy ], '>', \$sout, '2>', \$serr);
ok($shell_ok, 'pg_copy: pg_dump | pg_restore ran') or diag("$sout\n$serr");
($rc, $out, $err) = runbook($upgraded, 'pg_copy', phase => 'complete', plan => $plan);
is($rc, 3, 'pg_copy: complete in the old database stops');
like($err, qr/runbook stopped: this is the database plan $plan was prepared on/, 'pg_copy: saying so');
($rc, $out, $err) = runbook($upgraded, 'pg_copy', phase => 'complete', -db => 'copydb');
is($rc, 0, 'pg_copy: complete in the copy');
is(q1($upgraded, "SELECT status FROM connect_upgrade_status WHERE plan = $plan", 'copydb'), 'completed', 'pg_copy: completed in the copy');
is(q1($upgraded, "SELECT string_agg(connection || ' ' || state || ' ' || fenced, ', ' ORDER BY connection) FROM connect_status", 'copydb'),
    'crm3 IDLE false, sync IDLE false', "pg_copy: the copy's connections run");
is(write_error($upgraded, 'INSERT INTO contact VALUES (101)', 'copydb'), '', 'pg_copy: the copy takes writes');
is(q1($upgraded, "SELECT backlog FROM connect_status WHERE connection = 'crm3'", 'copydb'), '1', 'pg_copy: and captures them');
is(write_error($upgraded, 'INSERT INTO contact VALUES (101)'), '25006', 'pg_copy: the old database stays fenced');
($rc, $out, $err) = runbook($upgraded, 'pg_copy', phase => 'complete', -db => 'copydb');
is($rc, 0, 'pg_copy: complete again is harmless');
like($out, qr/was completed in this database already/, 'pg_copy: and says so');

# ------------------------------------------------------------- rollback_recovery
# in the copy: two local connections, sync (account) and crm3 (contact)
worker_runs($upgraded, 'copydb');
ok($upgraded->poll_query_until('copydb', "SELECT string_agg(finding, ',') FROM connect_check_rollback()", 'no_rollback'),
    'rollback_recovery: the worker has witnessed copydb');
($rc, $out, $err) = runbook($upgraded, 'rollback_recovery', -db => 'copydb');
is($rc, 3, 'rollback_recovery: with no rollback found it stops');
like($err, qr/runbook stopped: nothing was detected for every connection: connect_check_rollback\(\) finds no rollback \(no_rollback\) and no incident is open/,
    'rollback_recovery: saying nothing was detected');
like($err, qr/HINT:.*witness_missing.*-v force=on/, 'rollback_recovery: the hint says force=on');
is(q1($upgraded, "SELECT count(*) FROM connect_mappings WHERE state <> 'DATA_SYNCED'", 'copydb'), '0',
    'rollback_recovery: and reloads nothing');

($rc, $out, $err) = runbook($upgraded, 'rollback_recovery', -db => 'copydb', force => 'on', wait_timeout => '10 s');
is($rc, 0, 'rollback_recovery: force=on');
like($out, qr/step 2 \(force=on\).*asked for 2 reload\(s\), 0 of them from a sync service.*only local connections are left/s,
    'rollback_recovery: reloads every mapping, and does not wait for local consumers');
is(q1($upgraded, "SELECT string_agg(connection || '.' || table_relname || ':' || state, ',' ORDER BY connection) FROM connect_mappings", 'copydb'),
    'crm3.contact:RELOAD_TABLE,sync.account:RELOAD_TABLE', 'rollback_recovery: every mapping is in RELOAD_TABLE');
is(write_error($upgraded, 'INSERT INTO account VALUES (102)', 'copydb'), '25006', 'rollback_recovery: account is fenced');
is(write_error($upgraded, 'INSERT INTO contact VALUES (102)', 'copydb'), '25006', 'rollback_recovery: contact is fenced');
like($out, qr/SELECT connect_mapping_reloaded\('crm3', 'public\.contact'\);\n.*SELECT connect_mapping_reloaded\('sync', 'public\.account'\);/,
    'rollback_recovery: prints what the local consumers must do');

($rc, $out, $err) = runbook($upgraded, 'rollback_recovery', -db => 'copydb', connection => 'crm3');
is($rc, 0, 'rollback_recovery: a second run, for crm3');
like($out, qr/has acted already; open incidents: \d+ \(manual\)/, 'rollback_recovery: finds the reload under way');
like($out, qr/connect_mapping_reloaded\('crm3', 'public\.contact'\)/, "rollback_recovery: and prints crm3's instruction");
unlike($out, qr/connect_mapping_reloaded\('sync'/, "rollback_recovery: not sync's");

q1($upgraded, "SELECT connect_mapping_reloaded('crm3', 'public.contact')", 'copydb');
is(write_error($upgraded, 'INSERT INTO contact VALUES (102)', 'copydb'), '', 'rollback_recovery: acknowledged, contact takes writes');
is(write_error($upgraded, 'INSERT INTO account VALUES (102)', 'copydb'), '25006', 'rollback_recovery: account is still fenced');
q1($upgraded, "SELECT connect_mapping_reloaded('sync', 'public.account')", 'copydb');
is(write_error($upgraded, 'INSERT INTO account VALUES (102)', 'copydb'), '', 'rollback_recovery: acknowledged, account takes writes');
is(q1($upgraded, "SELECT count(*) FILTER (WHERE resolved_at IS NULL) || ' ' || string_agg(DISTINCT resolution, ',') FROM connect_rollback_incidents WHERE source = 'manual'", 'copydb'),
    '0 every reload was acknowledged', 'rollback_recovery: the incidents are resolved');
($rc, $out, $err) = runbook($upgraded, 'rollback_recovery', -db => 'copydb');
like($err, qr/no incident is open \(the last one, \d+, was resolved at .*every reload was acknowledged\)/,
    'rollback_recovery: a run afterwards says so');

$bigger->stop if defined $bigger->{_pid};
$upgraded->stop;
done_testing();
