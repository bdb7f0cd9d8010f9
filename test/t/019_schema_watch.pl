# The schema watch with the worker, and the configuration in Connect's
# export format with the Connect simulator:
#   - what event triggers cannot see (a superuser's change of pg_trigger) is
#     found by the worker's next cycle: SCHEMA_CHANGED, an event, a WARNING
#     in the server log; writes hidden by a disabled capture trigger are
#     counted, and connect_save_mapping() puts the trigger back and reloads;
#     a reload alone does not settle a schema change (the worker puts the
#     mapping back in SCHEMA_CHANGED);
#   - a heroku connection's export and import go through the worker to
#     Connect's endpoints; connect_wait_config() returns Connect's answer;
#     Connect's fields that the table lacks are field drift; a file Connect
#     refuses fails with its message; a malformed file never reaches Connect;
#   - runbooks: recreate_connection carries the configuration (local, and
#     heroku's import to Connect), field_change shows and saves.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Simulator;
use ConnectGuard::Test qw(:DEFAULT runbook);

my $token = random_secret('tok');
my $token_file = secret_file('connect.token', $token);
my $conn_id = '6a1b0f3e-0000-4000-8000-0000000015a1';
my $conn2_id = '6a1b0f3e-0000-4000-8000-0000000015a2';

my $node = cg_node('schema_watch',
	conf => [ "connect_guard.naptime = '200ms'", "connect_guard.witness_directory = ''", simulator_conf() ]);

# Connect's export of a mapping no file configured lists its table's columns (--source)
my $base = start_simulator(
	token => $token,
	args => [ '--source', $node->connstr('postgres') ],
	connections => [
		{ id => $conn_id, name => 'hc', schema_name => 'salesforce',
		  mappings => [ { id => 'map-contact', object_name => 'Contact' },
						{ id => 'map-account', object_name => 'Account' } ] },
		{ id => $conn2_id, name => 'hc-new', schema_name => 'salesforce', mappings => [] } ]);

sub psql { return sql($node, $_[0]); }

# psql_error returns a statement's error output ('' when it worked)
sub psql_error
{
	my ($ret, $stdout, $stderr) = $node->psql('postgres', $_[0]);
	return $ret == 0 ? '' : $stderr;
}

sub events { return psql("SELECT count(*) FROM connect_guard.event WHERE kind = '$_[0]'"); }

psql(q{
	CREATE EXTENSION connect_guard;
	CREATE SCHEMA salesforce;
	CREATE TABLE salesforce.contact (id serial PRIMARY KEY, sfid varchar(18), firstname varchar(40),
									 lastname varchar(80), email text, _hc_lastop varchar(32), _hc_err text);
	CREATE TABLE salesforce.account (id serial PRIMARY KEY, sfid varchar(18), name varchar(255),
									 systemmodstamp timestamp, _hc_lastop varchar(32), _hc_err text);
	CREATE TABLE lead (id int PRIMARY KEY, name text);
	SELECT connect_create_connection('sync');
	SELECT connect_map_table('sync', 'lead', 'Lead');
});
wait_for_worker($node);

# -- the worker finds what no event trigger sees ------------------------------

my $log_offset = -s $node->logfile;
my $changed_before = events('schema_changed');
psql(q{UPDATE pg_trigger SET tgenabled = 'D' WHERE tgrelid = 'lead'::regclass AND tgname = '_connect_guard_capture'});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM connect_schema_drift WHERE detected_by = 'worker'}),
	'the worker found the capture trigger disabled by a change of pg_trigger');
is(psql(q{SELECT table_name || ' ' || mapping_state || ' ' || kind || ' ' || object || ' ' || needs_reload
			FROM connect_schema_drift}),
	'lead SCHEMA_CHANGED trigger_disabled _connect_guard_capture on public.lead true',
	'the mapping is SCHEMA_CHANGED, with what differs');
is(events('schema_changed') - $changed_before, 1, 'one schema_changed event');
is(psql(q{SELECT detail ->> 'source' FROM connect_guard.event WHERE kind = 'schema_changed' ORDER BY event_id DESC LIMIT 1}),
	'worker', "its source is the worker's check");
is(psql(q{SELECT schema_changes FROM connect_status WHERE connection = 'sync'}), '1', 'connect_status counts it');
ok($node->wait_for_log(qr/WARNING:  mapped table public\.lead of connection "sync" changed: trigger_disabled/, $log_offset),
	'the worker logged the WARNING');
# the worker's next cycles find nothing new
sleep 1;
is(events('schema_changed') - $changed_before, 1, 'the next cycles report it no second time');
psql(q{UPDATE pg_trigger SET tgenabled = 'O' WHERE tgrelid = 'lead'::regclass AND tgname = '_connect_guard_capture'});
psql(q{SELECT connect_save_mapping('sync', 'lead', reload => false)});

# -- writes hidden by a disabled trigger, counted; the way out reloads ---------

psql(q{INSERT INTO lead SELECT g, 'before' FROM generate_series(1, 5) g});
consume($node, connection => 'sync', record => 0);
is(psql(q{SELECT state FROM connect_mappings WHERE connection = 'sync'}), 'DATA_SYNCED', 'lead is synced');
psql(q{ALTER TABLE lead DISABLE TRIGGER _connect_guard_capture});
my $entries = psql(q{SELECT count(*) FROM } . whole_log() . q{ l WHERE table_name = 'lead'});
psql(q{INSERT INTO lead SELECT g, 'hidden' FROM generate_series(6, 12) g; UPDATE lead SET name = 'hidden too' WHERE id <= 3});
is(psql(q{SELECT count(*) FROM } . whole_log() . q{ l WHERE table_name = 'lead'}) - $entries, 0,
	'the 10 writes made while the trigger was disabled reached no log entry');
is(psql(q{SELECT mapping_state || ' ' || needs_reload FROM connect_schema_drift}), 'SCHEMA_CHANGED true',
	'and the mapping says a reload is due');
is(psql(q{SELECT connect_save_mapping('sync', 'lead')}), 'RELOAD_TABLE', 'saving puts the trigger back and asks for the reload');
is(psql(q{SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'lead'::regclass AND tgname = '_connect_guard_capture'}), 'O',
	'the capture trigger fires again');
is(write_error($node, q{INSERT INTO lead VALUES (100, 'during the reload')}), '25006', 'the table is fenced while it is reloaded');
psql(q{SELECT connect_mapping_reloaded('sync', 'lead')});
is(psql(q{SELECT state FROM connect_mappings WHERE connection = 'sync'}), 'DATA_SYNCED', 'the reload done, lead is synced');
$entries = psql(q{SELECT count(*) FROM } . whole_log() . q{ l WHERE table_name = 'lead'});
psql(q{INSERT INTO lead VALUES (100, 'after')});
is(psql(q{SELECT count(*) FROM } . whole_log() . q{ l WHERE table_name = 'lead'}) - $entries, 1, 'writes are logged again');

# a reload alone does not settle a schema change: the worker puts the mapping back
psql(q{ALTER TABLE lead ADD COLUMN note text});
psql(q{SELECT connect_reload_mapping('sync', 'lead')});
psql(q{SELECT connect_mapping_reloaded('sync', 'lead')});
ok($node->poll_query_until('postgres', q{SELECT state = 'SCHEMA_CHANGED' FROM connect_mappings WHERE connection = 'sync'}),
	'a reloaded mapping whose change is still open goes back to SCHEMA_CHANGED');
like(psql(q{SELECT detail ->> 'context' FROM connect_guard.event WHERE kind = 'schema_changed' ORDER BY event_id DESC LIMIT 1}),
	qr/a reload does not settle them, connect_save_mapping\(\) does/, 'saying why');
psql(q{SELECT connect_save_mapping('sync', 'lead')});

# -- heroku: Connect's export and import, through the worker -------------------

psql(qq{
	SELECT connect_create_connection('hc', 'heroku',
		jsonb_build_object('region_url', '$base', 'connection_id', '$conn_id', 'token_file', '$token_file'));
	SELECT connect_map_table('hc', 'salesforce.contact', 'Contact');
	SELECT connect_map_table('hc', 'salesforce.account', 'Account');
});
like(psql(q{SELECT connect_export_config('hc')}), qr/"status": "pending"/, 'the export returns a receipt');
my $file = psql(q{SELECT connect_wait_config('hc')});
like($file, qr/"version": 1/, 'connect_wait_config returns Connect\'s export file');
my @exports = grep { $_->{path} eq "/api/v3/connections/$conn_id/actions/export" } sim_requests();
is(scalar(@exports), 1, 'one GET of the export endpoint reached Connect');
is($exports[0]{method} . ' ' . $exports[0]{status}, 'GET 200', 'and Connect answered it');
is(psql(qq{SELECT (\$\$$file\$\$::jsonb -> 'mappings') = (SELECT jsonb_agg(jsonb_build_object('object_name', m.object_name, 'config', m.config)
												  ORDER BY m.object_name DESC)
											FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id)
										   WHERE c.name = 'hc')}),
	't', "each mapping's configuration is now Connect's");
is(psql(q{SELECT string_agg(DISTINCT config_source, ',') FROM connect_guard.mapping m JOIN connect_guard.connection c
			USING (connection_id) WHERE c.name = 'hc'}), 'connect', 'from Connect');
is(psql(q{SELECT count(*) FROM connect_schema_drift WHERE connection = 'hc'}), '0',
	"Connect's fields are the tables' columns: no drift");

# a field changed in Salesforce and was added to the mapping in Connect: the table lacks its column
sim('POST', '/_sim/state', { mappings => [ { id => 'map-contact', config => {
	access => 'read_write', fields => { Id => {}, FirstName => {}, LastName => {}, Email => {}, MobilePhone => {} } } } ] });
$log_offset = -s $node->logfile;
psql(q{SELECT connect_export_config('hc')});
psql(q{SELECT connect_wait_config('hc')});
is(psql(q{SELECT table_name || ' ' || mapping_state || ' ' || kind || ' ' || object || ' ' || detected_by
			FROM connect_schema_drift WHERE connection = 'hc'}),
	'salesforce.contact SCHEMA_CHANGED field_without_column MobilePhone export',
	"Connect's field without a column is field drift, found by the export");
ok($node->wait_for_log(qr/WARNING:  mapped table salesforce\.contact of connection "hc" changed: field_without_column: MobilePhone/,
		$log_offset), 'the worker logged the WARNING');
like(psql_error(q{SELECT connect_save_mapping('hc', 'salesforce.contact')}),
	qr/cannot save the mapping of salesforce\.contact: field_without_column: MobilePhone.*HINT:  The fields are Connect's/s,
	"saving cannot change Connect's fields");
psql(q{ALTER TABLE salesforce.contact ADD COLUMN mobilephone varchar(40)});
is(psql(q{SELECT connect_save_mapping('hc', 'salesforce.contact', reload => false)}), 'INITIAL',
	'with the column there, the mapping is saved');

# the import: the file is Connect's import endpoint's body; Connect's answer comes back
my $import = q{{"version": 1, "mappings": [
	{"object_name": "Contact", "config": {"access": "read_write", "sf_polling_seconds": 300,
		"fields": {"Id": {}, "FirstName": {}, "LastName": {}, "Email": {}, "MobilePhone": {}}}},
	{"object_name": "Account", "config": {"access": "read_only",
		"fields": {"Id": {}, "Name": {}, "SystemModstamp": {}}, "indexes": {"SystemModstamp": {"unique": false}}}}]}};
like(psql(qq{SELECT connect_import_config('hc', \$\$$import\$\$)}), qr/"status": "pending".*"updated": \["salesforce.contact", "salesforce.account"\]/,
	'the import maps what exists and returns a receipt');
like(psql(q{SELECT connect_wait_config('hc')}), qr/"imported": 2/, "connect_wait_config returns Connect's answer");
my $imports = sim('GET', '/_sim/imports')->{imports};
is(scalar(@$imports), 1, 'Connect received one import');
is(psql(qq{SELECT '$imports->[0]{connection}' = '$conn_id' AND \$\$$import\$\$::jsonb = '${\ encode_json_text($imports->[0]{file})}'::jsonb}),
	't', 'of the file, for the connection');
is(psql(q{SELECT config ->> 'access' FROM connect_mappings m JOIN connect_guard.mapping mp ON mp.table_name = m.table_relname
			AND mp.connection_id = (SELECT connection_id FROM connect_guard.connection WHERE name = 'hc')
		   WHERE m.connection = 'hc' AND m.table_relname = 'account'}),
	'read_only', "Connect accepted it: the mappings' configuration is the file's");
is(join(' ', map { "$_->{object_name}:$_->{access}" } @{ sim('GET', '/_sim/state')->{connections}[0]{mappings} }),
	'Contact:read_write Account:read_only', "and Connect's own is too");

# a malformed file never reaches Connect; one Connect refuses fails with Connect's message
my $requests = scalar(sim_requests());
like(psql_error(q{SELECT connect_import_config('hc', '{"version": 1, "mappings": [{"object_name": "Contact",
	"config": {"access": "rw", "fields": {"Id": {}}}}]}')}),
	qr/invalid configuration: mappings\[0\]\.config\.access: must be read_only or read_write, not "rw"/,
	'a malformed file is refused here, naming the key');
sleep 0.5;
is(scalar(sim_requests()), $requests, 'and nothing was sent to Connect');
sim('POST', '/_sim/fail', { mode => '400', count => 1, path_pattern => '/api/v3/connections/[^/]+/actions/import' });
psql(qq{SELECT connect_import_config('hc', \$\$$import\$\$)});
my $refused = psql_error(q{SELECT connect_wait_config('hc')});
like($refused, qr/ERROR:  the import of connection "hc" failed: HTTP 400 from Connect: injected failure/,
	"a file Connect refuses fails the wait with Connect's message");
like($refused, qr/HINT:  Connect refused the file and changed nothing/, 'and says nothing changed');
sim('POST', '/_sim/fail', { mode => 'none' });

# -- runbooks ----------------------------------------------------------------

# field_change: shows what differs and the way out; saves
psql(q{ALTER TABLE lead ALTER COLUMN name TYPE varchar(200)});
my ($rc, $out, $err) = runbook($node, 'field_change', connection => 'sync');
is($rc, 0, 'field_change: shows');
like($out, qr/column_type_changed \| name .*the rows were rewritten, it reloads/, 'field_change: what differs and the way out');
($rc, $out, $err) = runbook($node, 'field_change', connection => 'sync', table => 'public.lead', action => 'save');
is($rc, 0, 'field_change: saves');
like($out, qr/the mapping is RELOAD_TABLE.*connect_mapping_reloaded\('sync', 'public\.lead'\)/s,
	'field_change: a local consumer is told to acknowledge the reload');
psql(q{SELECT connect_mapping_reloaded('sync', 'public.lead')});
psql(q{CREATE TABLE lead_child () INHERITS (lead)});
($rc, $out, $err) = runbook($node, 'field_change', connection => 'sync', table => 'public.lead', action => 'save');
is($rc, 3, 'field_change: what saving cannot mend stops it');
like($err, qr/runbook stopped: the mapping of public\.lead cannot be saved yet: .*inheritance_child/, 'field_change: naming it');
psql(q{DROP TABLE lead_child});
($rc, $out, $err) = runbook($node, 'field_change', connection => 'sync', table => 'public.lead', action => 'save', reload => 'off');
is($rc, 0, 'field_change: with the child gone, the mapping is saved');
like($err, qr/WARNING:  the mapping of public\.lead is saved without the reload it needed/,
	'field_change: reload=off says what it skipped');
($rc, $out, $err) = runbook($node, 'field_change', connection => 'hc');
is($rc, 0, "field_change on a heroku connection: fetches Connect's configuration first");
like($out, qr/step 1: fetch Connect's configuration of hc/, 'field_change: says so');

# recreate_connection, heroku: the import phase sends the configuration to the new Connect connection
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $export = psql(q{SELECT connect_export_config('hc')}) && psql(q{SELECT connect_wait_config('hc')});
append_to_file("$tmp/hc.json", qq{{"format": "connect_guard connection 1", "connection": "hc-new", "adapter": "heroku",
	"options": {"region_url": "$base", "connection_id": "$conn2_id", "token_file": "********"},
	"mappings": [{"table_schema": "salesforce", "table_name": "contact", "object_name": "Contact"},
				 {"table_schema": "salesforce", "table_name": "account", "object_name": "Account"}],
	"connect_config": $export}});
($rc, $out, $err) = runbook($node, 'recreate_connection', phase => 'import', file => "$tmp/hc.json",
	options => qq{{"token_file": "$token_file"}});
is($rc, 0, 'recreate_connection (heroku): import');
like($out, qr/mapped 2 table.*gave 2 mapping\(s\) their configuration.*Heroku Connect imports the configuration.*Connect answered/s,
	'recreate_connection: maps, configures, and imports into Connect');
my @new = grep { $_->{connection} eq $conn2_id } @{ sim('GET', '/_sim/imports')->{imports} };
is(scalar(@new), 1, 'the new Connect connection received the configuration');
is(scalar(@{ sim('GET', '/_sim/state')->{connections}[1]{mappings} }), 2, 'and has both mappings now');

# a connect_config with a bad key stops the import before it changes anything
my $bad = $export =~ s/"read_write"/"rw"/r;
append_to_file("$tmp/bad.json", qq{{"format": "connect_guard connection 1", "connection": "hc-bad", "adapter": "local",
	"options": {}, "mappings": [], "connect_config": $bad}});
($rc, $out, $err) = runbook($node, 'recreate_connection', phase => 'import', file => "$tmp/bad.json");
is($rc, 3, 'recreate_connection: a connect_config with a bad key stops the import');
like($err, qr/runbook stopped: .*bad\.json: connect_config: mappings\[\d\]\.config\.access: must be read_only or read_write/,
	'recreate_connection: naming the key');
is(psql(q{SELECT count(*) FROM connect_connections WHERE connection = 'hc-bad'}), '0', 'recreate_connection: nothing was created');

# recreate_connection, local: the export carries the configuration, the import gives it back
psql(q{SELECT connect_import_config('sync', '{"version": 1, "mappings": [{"object_name": "Lead",
	"config": {"access": "read_write", "sf_polling_seconds": 60, "fields": {"Name": {}, "Note": {}}}}]}')});
consume($node, connection => 'sync', record => 0);
($rc, $out, $err) = runbook($node, 'recreate_connection', connection => 'sync', file => "$tmp/sync.json");
is($rc, 0, 'recreate_connection (local): export');
like(slurp_file("$tmp/sync.json"), qr/"connect_config": \{.*"sf_polling_seconds": 60/s,
	'recreate_connection: the file has the configuration in Connect\'s format');
($rc, $out, $err) = runbook($node, 'recreate_connection', phase => 'import', file => "$tmp/sync.json");
is($rc, 0, 'recreate_connection (local): import');
is(psql(q{SELECT m.config ->> 'sf_polling_seconds' FROM connect_guard.mapping m JOIN connect_guard.connection c USING (connection_id)
		   WHERE c.name = 'sync'}), '60', 'recreate_connection: the new connection has the configuration back');

# encode_json_text: a Perl structure as JSON text, for SQL
sub encode_json_text
{
	my ($v) = @_;
	require JSON::PP;
	return JSON::PP->new->canonical->encode($v) =~ s/'/''/gr;
}

$node->stop;
done_testing();
