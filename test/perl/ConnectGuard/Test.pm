# ConnectGuard::Test: the set-up the TAP tests of test/t/ share (servers
# with connect_guard preloaded, the accounts schema, pgbench writers, the
# stand-in consumer).  Its POD below documents each function.

=pod

=head1 NAME

ConnectGuard::Test - the set-up every connect_guard TAP test shares

=head1 SYNOPSIS

  use PostgreSQL::Test::Utils;
  use Test::More;
  use ConnectGuard::Test;

  my $node = cg_node('primary', conf => [ "connect_guard.naptime = '200ms'" ]);
  setup_accounts($node);                   # account, writes, consumed; sync maps account
  my $bench = start_pgbench($node, [ '-c', '2', '-T', '5', '--max-tries', '1' ]);
  while ($bench->pumpable) { consume($node, via => 'old', max => 1); $bench->pump_nb; }
  $bench->finish;
  consume($node, via => 'old');
  is(write_error($node, 'INSERT INTO account VALUES (1000)'), '25006', 'fenced');
  is(sql($node, 'SELECT count(*) FROM consumed'),
     sql($node, 'SELECT count(*) FROM ' . whole_log() . ' l'), 'every entry delivered');

=head1 DESCRIPTION

The TAP files of test/t/ start servers with connect_guard preloaded, give
them the same small schema, drive a stand-in for the sync service (the
consumer), run pgbench writers and count what arrived.  This module holds
that set-up once, so that a test file shows only its story and its
assertions.  It makes no assertion of its own: every C<ok>/C<is> stays in the
test files, where a reader counts them.

The Makefile's PROVE_FLAGS (C<-I test/perl>) puts this folder on the path;
the Connect simulator has its own module, L<ConnectGuard::Simulator>.

Every function takes the node first; where a database other than
C<postgres> is meant, it comes last (or as C<< db => >>).

=cut

package ConnectGuard::Test;

use strict;
use warnings;
use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(sleep);

our @EXPORT = qw(
  cg_node new_standby kill9_postmaster wait_for_worker
  sql write_error
  setup_accounts create_consumed_table account_write writes_script start_pgbench
  consume whole_log plan_status note_timeline
);
# on request (use ConnectGuard::Test qw(:DEFAULT runbook ...)): some tests have a runbook() of their own
our @EXPORT_OK = qw(runbook wal_archived restored_node);

=head2 Servers

=over

=item cg_node($name, %opt)

A new PostgreSQL::Test::Cluster with C<shared_preload_libraries =
'connect_guard'>, started.  Options: C<init> (an array ref of options for
C<init>, e.g. C<< [allows_streaming => 1] >>), C<conf> (more
postgresql.conf lines, an array ref or a string), C<start> (0: configure
only, as for the target of pg_upgrade).  Preloading is what every test
needs: the fence hook, the worker and the shared state only exist then.

=cut

sub cg_node
{
	my ($name, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(@{ $opt{init} // [] });
	$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'connect_guard'", _lines($opt{conf}), ''));
	$node->start if $opt{start} // 1;
	return $node;
}

=item new_standby($primary, $name, %opt)

A streaming standby of C<$primary> from a new base backup (named by
C<backup>, default C<$name . '_base'>), with C<conf> lines appended,
started and caught up.  C<< start => 0 >> stops before the start (to edit
its files first; then start it and wait for the catch-up yourself).

=cut

sub new_standby
{
	my ($primary, $name, %opt) = @_;
	my $backup = $opt{backup} // "${name}_base";
	$primary->backup($backup);
	my $standby = PostgreSQL::Test::Cluster->new($name);
	$standby->init_from_backup($primary, $backup, has_streaming => 1);
	$standby->append_conf('postgresql.conf', join("\n", _lines($opt{conf}), ''))
	  if $opt{conf};
	return $standby unless $opt{start} // 1;
	$standby->start;
	$primary->wait_for_catchup($standby);
	return $standby;
}

=item kill9_postmaster($node)

kill -9 of the postmaster, then a start.  Its children exit only when they
notice the postmaster is gone, and a new postmaster cannot start on the
same shared memory key before they have: so this waits for every one of
them (up to the harness timeout) before starting again.

=cut

sub kill9_postmaster
{
	my ($node) = @_;
	my $postmaster = $node->{_pid};
	my @children = split /\s+/, `pgrep -P $postmaster`;
	$node->kill9;
	foreach my $try (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		last unless grep { kill 0, $_ } ($postmaster, @children);
		sleep 0.1;
	}
	$node->start;
	return;
}

=item wait_for_worker($node, $db)

Waits until the database's connect_guard worker runs (C<connect_worker>
shows it); returns false on timeout.  Plans, signals and the witness need
it, and after CREATE EXTENSION it may take up to the launcher's recheck to
start.

=cut

sub wait_for_worker
{
	my ($node, $db) = @_;
	return $node->poll_query_until($db // 'postgres',
		'SELECT count(*) = 1 FROM connect_worker');
}

=back

=head2 Queries

=over

=item sql($node, $query, $db)

C<safe_psql> in C<$db> (default C<postgres>): the query's output, dying on
an error.

=cut

sub sql
{
	my ($node, $query, $db) = @_;
	return $node->safe_psql($db // 'postgres', $query);
}

=item write_error($node, $sql, $db)

The SQLSTATE C<$sql> fails with (C<25006> is the fence's), C<''> when it
works, or the whole error output when it carries no SQLSTATE.  Tests
compare codes, not wordings, so that a reworded message does not hide or
fake a fence.

=cut

sub write_error
{
	my ($node, $sql, $db) = @_;
	my ($rc, $stdout, $stderr) =
	  $node->psql($db // 'postgres', "\\set VERBOSITY sqlstate\n$sql");
	return '' if $rc == 0;
	return $stderr =~ /ERROR:\s+(\w{5})/ ? $1 : $stderr;
}

=back

=head2 The accounts schema and its writers

Most tests count writes: pgbench writers update C<account> (mapped by the
connection C<sync>) and record each write in C<writes> in the same
transaction, the truth to count the log and the deliveries against.

=over

=item setup_accounts($node, %opt)

In C<db> (default C<postgres>): CREATE EXTENSION connect_guard; C<account>
(100 rows, inserted before the mapping so they are not in the log);
C<writes>; the connection C<sync> mapping C<account>; and, unless
C<< consumed => 0 >>, the table C<consumed> (see
C<create_consumed_table>).

=cut

sub setup_accounts
{
	my ($node, %opt) = @_;
	my $db = $opt{db} // 'postgres';
	sql($node, q{
		CREATE EXTENSION connect_guard;
		CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0);
		INSERT INTO account SELECT g FROM generate_series(1, 100) g;
		-- what the writers did, written in the same transactions: the truth to count against
		CREATE TABLE writes (n bigserial PRIMARY KEY, account_id int);
		SELECT connect_create_connection('sync');
		SELECT connect_map_table('sync', 'account');
	}, $db);
	create_consumed_table($node, $db) if $opt{consumed} // 1;
	return;
}

=item create_consumed_table($node, $db)

C<consumed (entry_id, batch_id, via, record_id)>: what the stand-in sync
service applied, one row per delivered log entry; C<via> says which server
or database delivered it.  Counting its rows (and distinct C<entry_id>s)
against the log proves "every entry at least once" and "none twice".

=cut

sub create_consumed_table
{
	my ($node, $db) = @_;
	sql($node,
		'CREATE TABLE consumed (entry_id bigint, batch_id bigint, via text, record_id text)',
		$db);
	return;
}

=item account_write($node, $id, $db)

One write as the pgbench writers make it: C<account> row C<$id> updated and
recorded in C<writes>, in one transaction.

=cut

sub account_write
{
	my ($node, $id, $db) = @_;
	sql($node,
		"BEGIN; UPDATE account SET balance = balance + 1 WHERE id = $id; "
		  . "INSERT INTO writes (account_id) VALUES ($id); COMMIT", $db);
	return;
}

=item writes_script($node, %opt)

Writes the pgbench script of those writers into the node's base directory
(or into C<$node> itself, when it is a directory's path: for servers that
are not PostgreSQL::Test::Cluster nodes) and returns its path.
C<< sleep => S >> adds a random sleep of up to S seconds before the
commit, so that writers commit in every order.

=cut

sub writes_script
{
	my ($node, %opt) = @_;
	my $script = (ref $node ? $node->basedir : $node) . '/writes.sql';
	my $sleep = $opt{sleep} ? "SELECT pg_sleep(random() * $opt{sleep});\n" : '';
	unlink $script;
	append_to_file($script, qq{
\\set id random(1, 100)
BEGIN;
UPDATE account SET balance = balance + 1 WHERE id = :id;
INSERT INTO writes (account_id) VALUES (:id);
${sleep}END;
});
	return $script;
}

=item start_pgbench($node, \@args, %opt)

Starts C<pgbench -n @args> in the background against the node's database
C<db> (default C<postgres>) and returns a C<ConnectGuard::Test::Pgbench>.
C<script> is the script to run: by default C<writes_script>'s, C<''> for
pgbench's built-in one (after C<pgbench -i>).  It runs beside the test's
own sessions: that is the point (writers and consumer at once).

=cut

sub start_pgbench
{
	my ($node, $args, %opt) = @_;
	my $script = exists $opt{script} ? $opt{script} : writes_script($node);
	return ConnectGuard::Test::Pgbench->new([
		'pgbench', '-n', @$args, ($script ne '' ? ('-f', $script) : ()),
		$node->connstr($opt{db} // 'postgres') ]);
}

=back

=head2 The consumer

=over

=item consume($node, %opt)

The stand-in sync service: takes batches of connection C<connection>
(default C<sync>) in C<db> (default C<postgres>) until none is left, or
C<max> were taken, and returns how many it took.  Each batch's entries go
into C<consumed> (with C<via>), in the transaction that finishes the batch,
so that a crash can neither lose a delivery nor record one twice.

Options:

=over

=item C<< via => TEXT >>

written into C<consumed.via>.

=item C<< record_in => DB >>

record into C<consumed> of another database of the same node, then finish
the batch (commit your side first, then connect_finish_batch(), as the
README says): for a source database that a database-wide fence closes.

=item C<< record => 0 >>

record nothing (no C<consumed> table): the batch's entries are read and
the batch finished.

=item C<< stop_on_error => 1 >>

an error from connect_next_batch() (a fence, a server that crashed) ends
the loop instead of failing the test: for consumers that run through
fences and crashes on purpose.

=back

=cut

sub consume
{
	my ($node, %opt) = @_;
	my $db = $opt{db} // 'postgres';
	my $connection = $opt{connection} // 'sync';
	my $via = defined $opt{via} ? "'$opt{via}'" : 'NULL';
	my $n = 0;
	while (!defined $opt{max} || $n < $opt{max})
	{
		my $batch;
		if ($opt{stop_on_error})
		{
			(my $rc, $batch) =
			  $node->psql($db, "SELECT connect_next_batch('$connection')");
			last if $rc != 0;
		}
		else
		{
			$batch = sql($node, "SELECT connect_next_batch('$connection')", $db);
		}
		last if $batch eq '';
		if (!($opt{record} // 1))
		{
			sql($node, "SELECT count(*) FROM connect_batch_events($batch); "
				  . "SELECT connect_finish_batch($batch)", $db);
		}
		elsif (defined $opt{record_in})
		{
			my $ids = sql($node,
				"SELECT coalesce(string_agg(id::text, ','), '') FROM connect_batch_events($batch)",
				$db);
			sql($node,
				"INSERT INTO consumed (entry_id, batch_id, via) SELECT unnest('{$ids}'::bigint[]), $batch, $via",
				$opt{record_in});
			sql($node, "SELECT connect_finish_batch($batch)", $db);
		}
		else
		{
			sql($node, qq{
				INSERT INTO consumed (entry_id, batch_id, via, record_id)
				  SELECT id, $batch, $via, record_id FROM connect_batch_events($batch);
				SELECT connect_finish_batch($batch);
			}, $db);
		}
		$n++;
	}
	return $n;
}

=item whole_log()

SQL for every log entry, consumed or not: the hot log and its archive
(the worker archives consumed entries as it goes), for C<FROM ... l>.

=cut

sub whole_log
{
	return '(SELECT * FROM connect_guard.trigger_log'
	  . ' UNION ALL SELECT * FROM connect_guard.trigger_log_archive)';
}

=back

=head2 Upgrade plans

=over

=item plan_status($node, $plan, $db)

C<"status step"> of the plan, from connect_upgrade_status.

=cut

sub plan_status
{
	my ($node, $plan, $db) = @_;
	return sql($node,
		"SELECT status || ' ' || step FROM connect_upgrade_status WHERE plan = $plan",
		$db);
}

=item note_timeline($node, $plan, $db)

Prints the plan's steps and their durations as a TAP note: the figures a
reader of the test log wants, asserted nowhere (never timed tests).

=cut

sub note_timeline
{
	my ($node, $plan, $db) = @_;
	my $timeline = sql($node,
		"SELECT string_agg(step || ' ' || coalesce(round(extract(epoch FROM duration) * 1000)::text || ' ms', '-'), ', ')"
		  . " FROM connect_upgrade_timeline($plan)", $db);
	Test::More::note("timeline: $timeline");
	return;
}

=back

=head2 Runbooks

=over

=item runbook($node, $name, %vars)

Runs F<runbooks/$name.sql> as a DBA does (C<psql -v ON_ERROR_STOP=1 -f>),
each of C<%vars> as a C<-v>, in the database C<< -db => >> (default
C<postgres>); notes how it ended and returns (exit code, output, error
output).  A runbook stops with exit code 3 when a precondition fails.
C<< -while => sub { ... } >> is called again and again (every 0.1 s) as
long as the runbook runs: the sync services that consume during a window,
for a runbook that waits for them.

=cut

sub runbook
{
	my ($node, $name, %vars) = @_;
	my $db = delete $vars{-db} // 'postgres';
	my $while = delete $vars{-while};
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', (map { ('-v', "$_=$vars{$_}") } sort keys %vars),
		  '-f', "runbooks/$name.sql", '-d', $node->connstr($db) ],
		'>', \$out, '2>', \$err);
	while ($while && $h->pumpable)
	{
		$while->();
		$h->pump_nb;
		sleep(0.1);
	}
	$h->finish;
	my $rc = $h->result(0);
	Test::More::note("runbook $name exited with $rc" . ($rc ? ":\n$err" : ''));
	return ($rc, $out, $err);
}

=back

=head2 Point-in-time restores

=over

=item wal_archived($node)

Switches to a new WAL file and waits until the archiver has archived the
one it left (and so every earlier one): what a restore to a point before
now needs; false on timeout.

=cut

sub wal_archived
{
	my ($node) = @_;
	my $walfile = sql($node, 'SELECT pg_walfile_name(pg_switch_wal())');
	return $node->poll_query_until('postgres',
		"SELECT last_archived_wal >= '$walfile' FROM pg_stat_archiver");
}

=item restored_node($from, $backup, $lsn, %opt)

A new node (named by C<name>, default C<restored>) from C<$from>'s backup
C<$backup>, recovering from C<$from>'s archive up to C<$lsn>, then
promoted, archiving nothing itself; started unless C<< start => 0 >>.

=cut

sub restored_node
{
	my ($from, $backup, $lsn, %opt) = @_;
	my $restored = PostgreSQL::Test::Cluster->new($opt{name} // 'restored');
	$restored->init_from_backup($from, $backup, has_restoring => 1, standby => 0);
	$restored->append_conf('postgresql.conf',
		"recovery_target_lsn = '$lsn'\nrecovery_target_action = 'promote'\narchive_mode = off\n");
	$restored->start if $opt{start} // 1;
	return $restored;
}

# _lines: conf lines given as an array ref or one string
sub _lines
{
	my ($conf) = @_;
	return () unless defined $conf;
	return ref $conf ? @$conf : ($conf);
}

=back

=head2 ConnectGuard::Test::Pgbench

What C<start_pgbench> returns: the IPC::Run harness's C<pumpable>,
C<pump_nb> and C<finish> (true when pgbench exited 0), and C<summary>,
pgbench's lines about processed, failed and aborted transactions, for a
note.  The harness only sees pgbench end when its output is read, hence
C<< $bench->pump_nb while $bench->pumpable >> before C<finish>.

=cut

package ConnectGuard::Test::Pgbench;

sub new
{
	my ($class, $cmd) = @_;
	my $self = bless { out => '', err => '' }, $class;
	$self->{harness} =
	  IPC::Run::start($cmd, '>', \$self->{out}, '2>', \$self->{err});
	return $self;
}

sub pumpable { return $_[0]{harness}->pumpable; }
sub pump_nb  { return $_[0]{harness}->pump_nb; }
sub finish   { return $_[0]{harness}->finish; }

sub summary
{
	my ($self) = @_;
	return join(' ',
		grep { /aborted|processed|failed/ } split /\n/,
		$self->{out} . $self->{err});
}

1;
