# Rollback detection by witness.  Every node of this test descends from one
# initdb (one system identifier) and shares one witness directory, kept
# outside the data directories as a deployment keeps it out of reach of a
# restore: so every node reads the witness its predecessor wrote.
#
#   1. a primary with archiving, a heroku connection 'sync' mapping account
#      and contact (through the simulator) and a local connection 'archive'
#      mapping account; its first witness
#   2. no false positive after a plain restart, nor after a crash restart
#   3. no false positive when a caught-up streaming follower is promoted; it
#      becomes the primary of what follows and witnesses timeline 2
#   4. a point-in-time restore to before the last consumed batch: found on
#      the worker's first cycle, every mapping reloaded (one reload POST per
#      heroku mapping), the mapped tables fenced until every reload is
#      acknowledged, log ids never reused, the witness replaced; the
#      connections' states come back as they were: sync (heroku), paused
#      at the point restored to and resumed since, is reconciled with
#      Connect (IDLE, its restored pause fence lowered, the reload fence
#      kept); archive's pause fence, back from the base backup's fence file
#      though archive was resumed before that point, is lowered; spare
#      (local), paused then, is reported against the witness
#   5. a forged witness (fails its checksum) and a missing one: reported,
#      not trusted, written anew
use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use ConnectGuard::Simulator;
use ConnectGuard::Test qw(:DEFAULT wal_archived restored_node);

my $wdir    = PostgreSQL::Test::Utils::tempdir;    # the witness directory of every node
my $token   = random_secret('tok');
my $conn_id = '6a1b0f3e-0000-4000-8000-0000000012b0';
my %remote  = (account => 'map-account', contact => 'map-contact');
my $header_re = qr/^connect_guard witness 1 crc32c=[0-9a-f]{8} bytes=\d+$/;

# -- the simulator: a reload stays RELOAD_TABLE until the test acknowledges it

my $token_file = secret_file('connect.token', $token);
my $base = start_simulator(
	token       => $token,
	args        => [ '--reload-seconds', '600' ],
	connections => [ {
		id => $conn_id, name => 'sync', schema_name => 'public',
		mappings => [ map { { id => $remote{$_}, object_name => ucfirst $_ } } sort keys %remote ] } ]);

# -- helpers -------------------------------------------------------------------

# write_rows writes $n rows into each mapped table: 2 * $n log entries
sub write_rows
{
	my ($node, $n) = @_;
	sql($node, join(';', map { "INSERT INTO $_ (name) SELECT 'n' || g FROM generate_series(1, $n) g" } qw(account contact)));
}

# consume_all drains both connections as a sync service does
sub consume_all
{
	my ($node) = @_;
	consume($node, connection => $_, record => 0) for ('sync', 'archive');
}

sub hwm { return sql($_[0], "SELECT hwm_id FROM connect_high_water_marks WHERE connection = 'sync'"); }
# hwms and witnessed_hwms: every connection's hwm_id, in the database and in a witness
sub hwms { return sql($_[0], "SELECT string_agg(connection || '=' || hwm_id, ',' ORDER BY connection) FROM connect_high_water_marks"); }
sub witnessed_hwms { my $c = $_[0]{connections} // {}; return join(',', map { "$_=" . ($c->{$_}{hwm_id} // '') } sort keys %$c); }
sub events { return sql($_[0], "SELECT count(*) FROM connect_guard.event WHERE kind = '$_[1]'"); }

my $sysid;    # every node's: they all descend from the primary's initdb
sub witness_path { return "$wdir/connect_guard-$sysid-postgres.witness"; }

# witness reads the witness file: its JSON body, with _header and _raw
# added; undef when there is no file
sub witness
{
	return undef unless -e witness_path();
	my $raw = slurp_file(witness_path());
	my ($header, $body) = split /\n/, $raw, 2;
	my $json = eval { decode_json($body // '') } // {};
	return { %$json, _header => $header, _raw => $raw };
}

# wait_witness returns the witness once $cond holds for it (undef on timeout)
sub wait_witness
{
	my ($cond) = @_;
	foreach (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		my $w = witness();
		return $w if $w && $cond->($w);
		sleep 0.1;
	}
	return undef;
}

# settle makes a change and waits until the worker has witnessed it: by then
# its start-up check has run; then it lets a few more cycles (200ms) pass
sub settle
{
	my ($node) = @_;
	write_rows($node, 1);
	consume_all($node);
	my $hwms = hwms($node);
	my $w = wait_witness(sub { witnessed_hwms($_[0]) eq $hwms });
	sleep 0.6;
	return $w;
}

# no_rollback settles, then checks that nothing was detected, nothing acted
# upon, and nothing is found now; returns the witness
sub no_rollback
{
	my ($node, $what) = @_;
	my $w = settle($node);
	ok($w, "$what: the worker witnessed a change since");
	is(events($node, 'rollback_detected'), '0', "$what: no rollback_detected event");
	is(sql($node, 'SELECT count(*) FROM connect_guard.rollback_incident'), '0', "$what: no incident");
	is(sql($node, 'SELECT count(*) FROM connect_check_rollback() WHERE rollback'), '0',
		"$what: connect_check_rollback() finds no rollback");
	is(sql($node, "SELECT string_agg(DISTINCT state, ',') FROM connect_mappings"), 'DATA_SYNCED',
		"$what: no mapping is to be reloaded");
	is(sql($node, 'SELECT count(*) FROM connect_fences'), '0', "$what: nothing is fenced");
	return $w;
}

# -- 1. the primary ------------------------------------------------------------

my $primary = cg_node('primary', init => [ has_archiving => 1, allows_streaming => 1 ], conf => [
	"connect_guard.naptime = '200ms'", "connect_guard.witness_directory = '$wdir'", simulator_conf() ]);
$sysid = sql($primary, 'SELECT system_identifier FROM pg_control_system()');
sql($primary, qq{
	CREATE EXTENSION connect_guard;
	CREATE TABLE account (id bigserial PRIMARY KEY, name text);
	CREATE TABLE contact (id bigserial PRIMARY KEY, name text);
	CREATE TABLE note (id bigserial PRIMARY KEY, body text);
	SELECT connect_create_connection('sync', 'heroku',
		jsonb_build_object('region_url', '$base', 'connection_id', '$conn_id', 'token_file', '$token_file'));
	SELECT connect_map_table('sync', 'account', 'Account');
	SELECT connect_map_table('sync', 'contact', 'Contact');
	SELECT connect_create_connection('archive');
	SELECT connect_map_table('archive', 'account');
	SELECT connect_refresh('sync');
});
ok($primary->poll_query_until('postgres', q{SELECT string_agg(table_relname || '=' || remote_id, ',' ORDER BY table_relname)
	FROM connect_mappings WHERE connection = 'sync'}, 'account=map-account,contact=map-contact'),
	'connect_refresh filled in the remote ids by object name');
write_rows($primary, 5);
consume_all($primary);

my $w = settle($primary);
ok($w, 'the worker writes the witness, with the HWM of every connection, into connect_guard.witness_directory');
like($w->{_header}, $header_re, 'its first line: format, checksum, length');
is($w->{system_identifier}, $sysid, 'it names the system identifier, as text');
is("$w->{database} $w->{timeline}", 'postgres 1', 'the database, and timeline 1');
is(events($primary, 'witness_created'), '1', 'the first witness is in the event log');
is(sql($primary, "SELECT finding || ' ' || rollback FROM connect_check_rollback()"), 'no_rollback false',
	'connect_check_rollback(): one row, no_rollback');

# -- 2. restarts are not rollbacks ----------------------------------------------

$primary->restart;
no_rollback($primary, 'plain restart');

# crash right after the worker witnessed a change: the witnessed LSN must
# be one the crash recovery gets back to
$primary->stop('immediate');
$primary->start;
no_rollback($primary, 'crash restart');

# -- 3. the promotion of a caught-up follower is not a rollback ---------------

$primary->backup('for_standby');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'for_standby', has_streaming => 1);
$standby->enable_archiving;    # once promoted, for the restore of part 4
$standby->start;
write_rows($primary, 10);
consume_all($primary);
settle($primary);
$primary->wait_for_catchup($standby);
$primary->stop;    # fast: the standby receives everything up to the shutdown checkpoint
my $last = witness();
ok($standby->poll_query_until('postgres', "SELECT pg_last_wal_replay_lsn() >= '$last->{lsn}'"),
	"the standby replayed past the primary's last witnessed LSN $last->{lsn}");
$standby->promote;
ok($standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'promoted');
$w = no_rollback($standby, 'promotion of a caught-up follower');
is(($w // {})->{timeline}, 2, 'the promoted node writes its own witness, on timeline 2');
is(sql($standby, "SELECT count(*) FROM connect_check_rollback() WHERE finding NOT IN ('promoted', 'no_rollback')"), '0',
	'connect_check_rollback() says promoted or no_rollback, nothing else');

# -- 4. a point-in-time restore to before the last consumed batch ------------

my $new_primary = $standby;
write_rows($new_primary, 10);
consume_all($new_primary);
write_rows($new_primary, 10);
consume_all($new_primary);
my $hwm_at_target = hwm($new_primary);
# The base backup is taken while sync (in Connect) and archive are paused,
# their fences up: the fence file it copies has both.  archive is resumed
# before the point restored to, sync after it; spare (local, no mapping) is
# paused without a fence at that point, and resumed after it.
is(sql($new_primary, "SELECT connect_pause('sync', reason => 'before the restore point')"), 'PAUSING', 'sync is paused');
is(sql($new_primary, "SELECT connect_wait_state('sync', 'PAUSED', '60 s')"), 'PAUSED', 'Connect is paused, then sync');
my $pause_fence = sql($new_primary, "SELECT fence_id FROM connect_fences WHERE scope = 'connection' AND connection = 'sync'");
ok($pause_fence > 0, "its pause fence $pause_fence is up");
is(sql($new_primary, "SELECT connect_pause('archive')"), 'PAUSED', 'archive is paused');
my $archive_fence = sql($new_primary, "SELECT fence_id FROM connect_fences WHERE scope = 'connection' AND connection = 'archive'");
ok($archive_fence > 0, "its pause fence $archive_fence is up");
sql($new_primary, "SELECT connect_create_connection('spare')");
is(sql($new_primary, "SELECT connect_pause('spare', block_writes => false)"), 'PAUSED', 'spare is paused, without a fence');
$new_primary->backup('before_pitr');
is(sql($new_primary, "SELECT connect_resume('archive')"), 'IDLE', 'archive is resumed before the restore point');
sql($new_primary, "INSERT INTO note (body) VALUES ('the restore point')");
my $target = sql($new_primary, 'SELECT pg_current_wal_lsn()');
is(sql($new_primary, "SELECT connect_resume('sync')"), 'RESUMING', 'after the restore point sync is resumed');
is(sql($new_primary, "SELECT connect_wait_state('sync', 'IDLE', '60 s')"), 'IDLE', 'Connect runs again, and sync');
is(sql($new_primary, "SELECT connect_resume('spare')"), 'IDLE', 'and spare');
# 100 entries: more than a sequence logs ahead (32), so that a restored log
# id sequence would hand out witnessed ids again unless it is advanced
write_rows($new_primary, 50);
consume_all($new_primary);
my ($hwm_last, $hwms_last) = (hwm($new_primary), hwms($new_primary));
my $last_witness = wait_witness(sub { witnessed_hwms($_[0]) eq $hwms_last });
ok($last_witness, "the witness records the last batch: $hwms_last");
is(join(',', map { my $p = ($last_witness // {})->{connections}{$_}{paused};
		"$_=" . (!defined $p ? 'unknown' : $p ? 'paused' : 'running') } qw(archive spare sync)),
	'archive=running,spare=running,sync=running', 'and that every connection runs');
ok(wal_archived($new_primary), 'the WAL up to there is archived');
$new_primary->stop;
my $before = witness();
is($before->{log_head}, $hwm_last, "the witnessed log head: $hwm_last");

sim('POST', '/_sim/reset', {});
my $restored = restored_node($new_primary, 'before_pitr', $target);
ok($restored->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'restored to before the last batch, promoted');
is(hwm($restored), $hwm_at_target, "the HWM went back to $hwm_at_target");
ok($restored->poll_query_until('postgres', "SELECT count(*) > 0 FROM connect_guard.event WHERE kind = 'rollback_detected'"),
	'the worker detects the rollback');
is(sql($restored, "SELECT detail->>'first_cycle' FROM connect_guard.event WHERE kind = 'rollback_detected'"), 'true',
	"on its first cycle after start-up");
my $findings = q{(SELECT f.* FROM connect_guard.event e, jsonb_array_elements(e.detail->'findings') f
                  WHERE e.kind = 'rollback_detected') AS f(x)};
my $found = sql($restored, "SELECT string_agg(DISTINCT x->>'finding', ',') FROM $findings");
like($found, qr/\btimeline_forked_before_witness\b/, "findings ($found): forked before the witnessed LSN");
like($found, qr/\bhwm_behind_witness\b/, 'the HWM is behind the witness');
like($found, qr/\blog_head_behind_witness\b/, 'the log head is behind the witness');
is(sql($restored, "SELECT string_agg(DISTINCT x->>'connection', ',' ORDER BY x->>'connection') FROM $findings WHERE x->>'finding' = 'hwm_behind_witness'"),
	'archive,sync', 'for both connections');
is(sql($restored, "SELECT string_agg(connection || '.' || table_relname || ':' || state, ',' ORDER BY connection, table_relname) FROM connect_mappings"),
	'archive.account:RELOAD_TABLE,sync.account:RELOAD_TABLE,sync.contact:RELOAD_TABLE', 'every mapping is to be reloaded');

is(sql($restored, "SELECT count(*) || ' ' || count(DISTINCT table_name) FROM connect_requests WHERE connection = 'sync' AND action = 'reload'"),
	sql($restored, "SELECT count(*) || ' ' || count(*) FROM connect_mappings WHERE connection = 'sync'"),
	'a reload request for every mapping of sync, one per table');
is(sql($restored, q{SELECT (SELECT string_agg(r, ',' ORDER BY r::bigint) FROM jsonb_array_elements_text(detail->'reload_requests') r)
                    FROM connect_guard.event WHERE kind = 'rollback_detected'}),
	sql($restored, "SELECT string_agg(request_id::text, ',' ORDER BY request_id) FROM connect_requests WHERE action = 'reload'"),
	'the event names them');
is(sql($restored, q{SELECT source || ' ' || cardinality(mapping_ids) || ' ' || cardinality(reload_requests) || ' '
                    || (fence_id IS NOT NULL)::text || ' ' || (resolved_at IS NULL)::text FROM connect_guard.rollback_incident}),
	'worker 3 2 true true', 'one incident: from the worker, 3 mappings, 2 reloads, a fence, unresolved');

ok($restored->poll_query_until('postgres', "SELECT count(*) = 1 FROM connect_fences WHERE scope = 'reload'"),
	'a reload fence is up');

# the connections' states, restored as they were at the point restored to:
# sync is reconciled with Connect (which runs), archive is reported
ok($restored->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'connection_state_reconciled' AND connection_name = 'sync'"),
	"sync's restored state is reconciled with Connect's");
my $reconciled = decode_json(sql($restored,
	"SELECT detail FROM connect_guard.event WHERE kind = 'connection_state_reconciled' AND connection_name = 'sync'") || '{}');
is(join(' ', map { $reconciled->{$_} // 'null' } qw(recorded_state remote_state state)), 'PAUSED IDLE IDLE',
	'the event: recorded PAUSED, Connect IDLE, now IDLE');
is("$reconciled->{fence_lowered} $reconciled->{incident_id}",
	$pause_fence . ' ' . sql($restored, 'SELECT incident_id FROM connect_guard.rollback_incident'),
	"it lowered the pause fence $pause_fence that the restore brought back, for the incident");
is(join(',', map { $_->{scope} } @{ $reconciled->{fences_still_up} // [] }), 'reload', 'and names the fence that still holds the tables');
is(sql($restored, "SELECT state || ' ' || (paused_because IS NULL)::text FROM connect_status WHERE connection = 'sync'"),
	'IDLE true', 'sync is IDLE, no pause reason left');
is(sql($restored, 'SELECT string_agg(scope, \',\' ORDER BY fence_id) FROM connect_fences'), 'reload',
	"only the rollback's reload fence is up: the restored pause fences are down");
is(sql($restored, "SELECT string_agg(connection_name || ' ' || (detail->>'fence_id') || ' ' || (detail->>'connection_state'), ',') FROM connect_guard.event WHERE kind = 'restored_fence_lowered'"),
	"archive $archive_fence IDLE", "archive's pause fence, back from the backup's fence file though archive was resumed at the point restored to, was lowered");
is(sql($restored, "SELECT state FROM connect_status WHERE connection = 'archive'"), 'IDLE', 'archive is IDLE, as restored');
is(sql($restored, q{SELECT min(request_id) FILTER (WHERE action = 'refresh') < min(request_id) FILTER (WHERE action = 'reload')
                    FROM connect_requests WHERE connection = 'sync'}),
	't', 'Connect was asked for its state before the reloads');
is(sql($restored, "SELECT string_agg(connection_name || ' ' || (detail->>'state') || ' ' || (detail->>'witnessed_paused'), ',') FROM connect_guard.event WHERE kind = 'connection_state_stale'"),
	'spare PAUSED false', 'spare (local, no API to ask): its restored PAUSED is reported against the witness, which saw it run');
is(sql($restored, "SELECT state FROM connect_status WHERE connection = 'spare'"), 'PAUSED', 'and left as restored');
ok($restored->log_contains(qr/WARNING:  connect_guard: connection "spare" was restored PAUSED, but it was running/),
	'with a WARNING in the server log');
is(sql($restored, "SELECT connect_resume('spare')"), 'IDLE', 'the DBA resumes it, as the hint says');
is(write_error($restored, "INSERT INTO account (name) VALUES ('x')"), '25006', 'account is fenced');
is(write_error($restored, "UPDATE contact SET name = 'y'"), '25006', 'contact is fenced');
is(write_error($restored, "INSERT INTO note (body) VALUES ('x')"), '', 'a table no connection maps is not');

# Connect is asked for every reload at once (reloads of different mappings
# do not wait for each other: N tables must not take N reload times), and
# none is done before Connect says so; the local consumer does not reload yet
my @ids;
foreach (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	@ids = map { $_->{path} =~ m{^/api/v3/mappings/([^/]+)/actions/reload$} ? ($1) : () } sim_posts();
	last if @ids == 2;
	sleep 0.1;
}
is(scalar(@ids), 2, 'both reloads reached Connect while neither was finished');
is(sql($restored, "SELECT count(*) FROM connect_mappings WHERE connection = 'sync' AND state = 'RELOAD_TABLE'"), '2',
	'and both mappings stay RELOAD_TABLE until Connect reports them done');
sim('POST', '/_sim/state', { mappings => [ map { { id => $_, state => 'DATA_SYNCED' } } @ids ] });
ok($restored->poll_query_until('postgres',
	"SELECT count(*) = 2 AND bool_and(status = 'succeeded') FROM connect_requests WHERE action = 'reload'"),
	'both reload requests succeed once Connect reports DATA_SYNCED');
my @posts = sim_posts();
foreach my $t (sort keys %remote)
{
	is(join(',', map { $_->{status} } grep { $_->{path} eq "/api/v3/mappings/$remote{$t}/actions/reload" } @posts), '202',
		"Connect was asked once to reload $t ($remote{$t})");
}
is(sql($restored, "SELECT string_agg(connection || '.' || table_relname || ':' || state, ',' ORDER BY connection, table_relname) FROM connect_mappings"),
	'archive.account:RELOAD_TABLE,sync.account:DATA_SYNCED,sync.contact:DATA_SYNCED', 'the heroku mappings are synced again');
is(write_error($restored, "INSERT INTO account (name) VALUES ('x')"), '25006', 'account stays fenced: archive has not reloaded');
is(write_error($restored, "UPDATE contact SET name = 'y'"), '25006', 'so does contact: one fence, until every reload is done');
is(events($restored, 'rollback_resolved'), '0', 'not resolved yet');

sql($restored, "SELECT connect_mapping_reloaded('archive', 'account')");
ok($restored->poll_query_until('postgres', q{SELECT (SELECT count(*) FROM connect_fences) = 0
	AND (SELECT count(*) FROM connect_guard.event WHERE kind = 'rollback_resolved') = 1}),
	'once every reload is acknowledged the fence goes down: rollback_resolved');
is(write_error($restored, "INSERT INTO account (name) VALUES ('after')"), '', 'account is writable');
is(write_error($restored, "UPDATE contact SET name = 'z'"), '', 'contact is writable');
is(sql($restored, 'SELECT (resolved_at IS NOT NULL)::text FROM connect_guard.rollback_incident'), 'true', 'the incident is resolved');
my $new_id = sql($restored, q{SELECT max(id) FROM connect_guard.trigger_log WHERE "values"->>'name' = 'after'});
cmp_ok($new_id, '>', $before->{log_head}, "a new entry gets id $new_id, above the witnessed log head: no id is used twice");
$w = wait_witness(sub { ($_[0]{timeline} // 0) == 3 });
ok($w, 'the restored node replaced the witness (timeline 3)');
is(sql($restored, 'SELECT count(*) FROM connect_check_rollback() WHERE rollback'), '0', 'connect_check_rollback() is clean again');
is(events($restored, 'rollback_detected'), '1', 'the rollback was detected once, not again on later cycles');
is(scalar(sim_posts()), 2, 'and Connect got no further reload');

# -- 5. a forged, then a missing witness: reported, not trusted, replaced ------

my $real = settle($restored);
$restored->stop;
# a longer log and higher HWMs than the database has, as many bytes: only
# the checksum tells; trusted, it would be a rollback
(my $forged = $real->{_raw}) =~ s/("(?:log_head|hwm_id)"\s*:\s*"?)(\d+)/$1 . ($2 =~ tr{0-8}{9}r)/ge;
isnt($forged, $real->{_raw}, 'a forged witness');
unlink witness_path() or die "unlink: $!";
append_to_file(witness_path(), $forged);
my $offset = -s $restored->logfile;
$restored->start;
ok($restored->poll_query_until('postgres', "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'witness_corrupt'"),
	'witness_corrupt is logged');
like(sql($restored, "SELECT detail->>'detail' FROM connect_guard.event WHERE kind = 'witness_corrupt'"), qr/checksum/,
	'its detail says it fails its checksum');
is(sql($restored, "SELECT detail->>'path' FROM connect_guard.event WHERE kind = 'witness_corrupt'"), witness_path(), 'and names the file');
$w = wait_witness(sub { $_[0]{_raw} ne $forged });
ok($w, 'the witness is written anew');
like($w->{_header}, $header_re, 'with a valid header');
is($w->{log_head}, $real->{log_head}, 'and the real log head');
ok($restored->log_contains(qr/WARNING: .*witness/, $offset), 'the server log has a WARNING');
is(events($restored, 'rollback_detected'), '1', 'the forged witness was not trusted: no new rollback');
is(sql($restored, 'SELECT count(*) FROM connect_guard.rollback_incident'), '1', 'no new incident');

$restored->stop;
unlink witness_path() or die "unlink: $!";
$restored->start;
ok($restored->poll_query_until('postgres', "SELECT count(*) = 1 FROM connect_guard.event WHERE kind = 'witness_missing'"),
	'a missing witness is logged as witness_missing');
$w = wait_witness(sub { 1 });
ok($w, 'the witness is written anew');
like($w->{_header}, $header_re, 'with a valid header');
is(events($restored, 'rollback_detected'), '1', 'no rollback detected');
is(sql($restored, 'SELECT count(*) FROM connect_check_rollback() WHERE rollback'), '0', 'connect_check_rollback() is clean');

stop_simulator();
$restored->stop;
done_testing();
