# ConnectGuard::Adopted: what the TAP tests on a schema Heroku Connect
# manages share (test/t/013_connect_log.pl, test/t/014_connect_log_methods.pl):
# the schema and its roles, "Salesforce", the simulator playing Connect on
# it, the application's writes and the reads that count Connect's log.  Its
# POD below documents each function.

=pod

=head1 NAME

ConnectGuard::Adopted - a Connect-managed schema with the simulator as Connect, for TAP tests

=head1 SYNOPSIS

  use ConnectGuard::Test;
  use ConnectGuard::Simulator;
  use ConnectGuard::Adopted;

  start_salesforce();
  my $primary = cg_node('primary', conf => [ simulator_conf() ]);
  ok(load_connect_schema($primary), 'the fixture');
  connect_settings(token => $token, id => $conn_id, port => $sim_port);
  start_connect($primary);
  app_writes($primary, 3);
  ok(all_processed($primary), 'Connect processes every entry');
  is(sent_twice(), '', 'no entry was sent twice');

=head1 DESCRIPTION

The schema is test/fixtures/connect_schema.sql's C<salesforce> (tables
C<account> and C<contact>), owned by the role C<connect_sync> as Connect's
is, written by the application's role C<app>
(test/fixtures/connect_schema_owners.sql).  The simulator plays Connect on
it (C<--connect-log salesforce>): it drains C<salesforce._trigger_log> as
Connect's role, into the database C<mirror> of "Salesforce", a cluster of
its own (a restore of the application's database must not rewind it), and
records every send in C<_sim_connect_deliveries>.

Like L<ConnectGuard::Test>, it makes no assertion of its own.  One
Salesforce per test file: the functions share it.

=cut

package ConnectGuard::Adopted;

use strict;
use warnings;
use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use Test::More;
use ConnectGuard::Test qw(sql);
use ConnectGuard::Simulator qw(start_simulator);

our @EXPORT = qw(
  start_salesforce load_connect_schema schema_dump
  connect_settings start_connect
  app_writes connect_whole_log unfinished states all_processed witness_mark_past sent_twice
);

# beside test/perl/ConnectGuard/: test/fixtures/
my $FIXTURES = File::Spec->rel2abs(dirname(__FILE__) . '/../../fixtures');

# Connect's log and its archive, as Connect sees them
my $WHOLE_LOG = '(SELECT id, state FROM salesforce._trigger_log'
  . ' UNION ALL SELECT id, state FROM salesforce._trigger_log_archive) l';

my ($salesforce, %connect);

=head2 The databases

=over

=item start_salesforce()

"Salesforce": a started cluster with the database C<mirror>, which the
simulator fills.  Returns its node.

=cut

sub start_salesforce
{
	$salesforce = PostgreSQL::Test::Cluster->new('salesforce');
	$salesforce->init;
	$salesforce->start;
	$salesforce->safe_psql('postgres', 'CREATE DATABASE mirror');
	return $salesforce;
}

=item load_connect_schema($node)

Loads the Connect-managed schema and hands it to its roles (made here);
true when psql succeeded, its error output is a C<diag> otherwise.

=cut

sub load_connect_schema
{
	my ($node) = @_;
	my ($stdout, $stderr) = ('', '');
	return 1
	  if IPC::Run::run([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
			'-f', "$FIXTURES/connect_schema.sql", '-f', "$FIXTURES/connect_schema_owners.sql",
			$node->connstr('postgres') ], '>', \$stdout, '2>', \$stderr);
	diag($stderr);
	return 0;
}

=item schema_dump($node, $db)

C<pg_dump --schema-only -n salesforce> of C<$db> (default C<postgres>),
less the C<\restrict> lines, which carry a random key of each run: the
proof that Connect's objects are as they were.

=cut

sub schema_dump
{
	my ($node, $db) = @_;
	my ($stdout, $stderr);
	IPC::Run::run([ 'pg_dump', '--schema-only', '-n', 'salesforce', $node->connstr($db // 'postgres') ],
		'>', \$stdout, '2>', \$stderr) or die "pg_dump: $stderr";
	return join('', grep { !/^\\(un)?restrict / } split /^/m, $stdout);
}

=back

=head2 Connect

=over

=item connect_settings(token => T, id => ID, port => P, args => [...])

What every start of the simulator as Connect uses: the API token, the
connection's id (the connection is C<hc>, with the mappings
C<map-account> and C<map-contact>), the port, and more command-line
options (e.g. C<--reload-seconds>).

=cut

sub connect_settings
{
	%connect = @_;
	return;
}

=item start_connect($node, $db, @args)

Starts the simulator as Connect on the schema of C<$node>'s C<$db>
(default C<postgres>), logged in as the schema's owner, with C<@args> after
the settings' (the later of two equal options wins).  Returns its base URL.

=cut

sub start_connect
{
	my ($node, $db, @args) = @_;
	return start_simulator(
		token => $connect{token},
		connections => [ { id => $connect{id}, name => 'hc', schema_name => 'salesforce',
			mappings => [ { id => 'map-account', object_name => 'Account' },
						  { id => 'map-contact', object_name => 'Contact' } ] } ],
		args => [ '--port', $connect{port}, '--consume', '--connect-log', 'salesforce',
			'--source', $node->connstr($db // 'postgres') . ' user=connect_sync',
			'--mirror', $salesforce->connstr('mirror'), '--connection', 'hc',
			'--poll-ms', '50', '--archive-after', '3', '--reload-delay', '0.3',
			@{ $connect{args} // [] }, @args ]);
}

=back

=head2 The application and Connect's log

=over

=item app_writes($node, $n, $db)

The application's writes, as its own role: C<$n> accounts and C<$n>
contacts, one log entry each.

=cut

sub app_writes
{
	my ($node, $n, $db) = @_;
	sql($node, "SET ROLE app; INSERT INTO salesforce.account (name) SELECT 'a' || g FROM generate_series(1, $n) g;
	            INSERT INTO salesforce.contact (name) SELECT 'c' || g FROM generate_series(1, $n) g", $db);
	return;
}

=item connect_whole_log()

SQL for every entry of Connect's log and its archive (C<id>, C<state>), for
C<FROM ... >: its alias is C<l>.

=cut

sub connect_whole_log { return $WHOLE_LOG; }

=item unfinished($node, $db), states($node, $db)

The ids of the entries of Connect's log (and its archive) still NEW or
PENDING, comma-separated (C<''> for none); and every entry as C<id:state>.

=cut

sub unfinished
{
	my ($node, $db) = @_;
	return sql($node,
		"SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM $WHOLE_LOG WHERE state IN ('NEW', 'PENDING')",
		$db);
}

sub states
{
	my ($node, $db) = @_;
	return sql($node, "SELECT string_agg(id || ':' || state, ',' ORDER BY id) FROM $WHOLE_LOG", $db);
}

=item all_processed($node, $db)

Waits until no entry is NEW or PENDING; false on timeout.

=cut

sub all_processed
{
	my ($node, $db) = @_;
	return $node->poll_query_until($db // 'postgres',
		"SELECT count(*) = 0 FROM $WHOLE_LOG WHERE state IN ('NEW', 'PENDING')");
}

=item witness_mark_past($node, $id)

Waits until the rollback witness of C<$node> records Connect's processed
mark of C<hc> at C<$id> or past it; false on timeout.

=cut

sub witness_mark_past
{
	my ($node, $id) = @_;
	return $node->poll_query_until('postgres', qq{
		SELECT (w.content -> 'connections' -> 'hc' ->> 'processed_mark')::bigint >= $id
		  FROM connect_guard.witness_read(connect_guard.witness_path()) w});
}

=item sent_twice()

The ids of the entries the simulator sent to Salesforce more than once,
comma-separated.

=cut

sub sent_twice
{
	return $salesforce->safe_psql('mirror', q{
		SELECT coalesce(string_agg(entry_id::text, ',' ORDER BY entry_id), '')
		  FROM (SELECT entry_id FROM _sim_connect_deliveries GROUP BY 1 HAVING count(*) > 1) d});
}

=back

=cut

1;
