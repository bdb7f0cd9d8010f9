# Mapped tables that belong to another extension keep their names.
#
# An extension's tables (made by its script, or any table taken in with
# ALTER EXTENSION ... ADD TABLE) move without an ALTER TABLE of their own:
# ALTER EXTENSION ... SET SCHEMA moves every member, and ALTER EXTENSION ...
# UPDATE runs an update script that may rename or move them.  A mapping
# names its table by schema and name, so each of these is refused while the
# table is mapped (55000), and the mapping still names the table and
# captures its writes afterwards.  Unmapped, the same update does rename it:
# the script is real, the refusal is the check's.
#
# The test extension needs files in the installation's share/extension, which
# the account running the tests may not write (CI: /usr): the test runs its
# cluster from a private installation: a copy of bin/ (PostgreSQL finds share/
# and lib/ relative to its real executable), lib/ linked, share/ linked entry
# by entry, with the test extension added to share/extension.
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test;

# the installation under test: make installcheck puts its bindir first on PATH
my %dir;
for my $kind (qw(bindir sharedir pkglibdir))
{
	$dir{$kind} = `pg_config --$kind`;
	chomp $dir{$kind};
	die "pg_config --$kind failed" if $? != 0 || $dir{$kind} eq '';
}

# the longest directory all three share: below it the copy keeps the same
# relative layout, which is what PostgreSQL's relocation goes by
my @parts  = split m{/}, $dir{bindir};
my $common = '';
for my $i (1 .. $#parts)
{
	my $candidate = join('/', @parts[ 0 .. $i ]);
	last unless grep({ index("$_/", "$candidate/") == 0 } values %dir) == 3;
	$common = $candidate;
}
die "no common directory for @{[ values %dir ]}" if $common eq '';
my $root = PostgreSQL::Test::Utils::tempdir;
my %copy = map { $_ => $root . substr($dir{$_}, length $common) } keys %dir;

make_path($copy{bindir}, $copy{sharedir} . '/extension', dirname($copy{pkglibdir}));
system('cp', '-a', glob("$dir{bindir}/*"), $copy{bindir}) == 0 or die 'cannot copy bin/';
symlink($dir{pkglibdir}, $copy{pkglibdir}) or die "cannot link lib/: $!";
for my $entry (glob("$dir{sharedir}/*"), glob("$dir{sharedir}/extension/*"))
{
	next if $entry eq "$dir{sharedir}/extension";
	my $to = $copy{sharedir} . substr($entry, length $dir{sharedir});
	symlink($entry, $to) or die "cannot link $to: $!";
}

# cg_members: one table; 1.1 renames it, 1.2 moves it to another schema
my %files = (
	'cg_members.control' => "comment = 'connect_guard test: an extension with a table'\n"
	  . "default_version = '1.0'\nrelocatable = true\n",
	'cg_members--1.0.sql'      => "CREATE TABLE widget (id int PRIMARY KEY);\n",
	'cg_members--1.0--1.1.sql' => "ALTER TABLE widget RENAME TO gadget;\n",
	'cg_members--1.0--1.2.sql' => "ALTER TABLE widget SET SCHEMA elsewhere;\n");
append_to_file("$copy{sharedir}/extension/$_", $files{$_}) for sort keys %files;

my $node = PostgreSQL::Test::Cluster->new('extension_scripts', install_path => dirname($copy{bindir}));
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'connect_guard'\n");
$node->start;
is(sql($node, q{SELECT string_agg(name, ' ' ORDER BY name) FROM pg_available_extensions WHERE name IN ('cg_members', 'connect_guard')}),
	'cg_members connect_guard', 'the cluster runs from the private installation, with the test extension');

sql($node, q{
	CREATE EXTENSION connect_guard;
	CREATE SCHEMA app;
	CREATE SCHEMA elsewhere;
	CREATE EXTENSION cg_members SCHEMA app;
	SELECT connect_create_connection('sync');
	SELECT connect_map_table('sync', 'app.widget');
});

# error_of: the SQLSTATE and message a statement fails with ('' when it works)
sub error_of
{
	my ($query) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$query");
	return '' if $rc == 0;
	return $err =~ /ERROR:\s+(\w{5}): ([^\n]*)/ ? "$1 $2" : $err;
}

sub state_of
{
	return sql($node, q{
		SELECT (SELECT extversion || ' ' || extnamespace::regnamespace FROM pg_extension WHERE extname = 'cg_members')
		       || ' ' || coalesce(to_regclass('app.widget')::text, '-')
		       || ' ' || (SELECT string_agg(coalesce(table_name::text, 'missing'), ',') FROM connect_mappings)});
}

is(state_of(), '1.0 app app.widget app.widget', 'cg_members 1.0 in app, its table mapped');

like(error_of(q{ALTER EXTENSION cg_members UPDATE TO '1.1'}),
	qr/^55000 cannot rename table app\.widget: it is mapped by connection "sync"/,
	'an update script that renames a mapped member table is refused');
like(error_of(q{ALTER EXTENSION cg_members UPDATE TO '1.2'}),
	qr/^55000 cannot move table app\.widget: it is mapped by connection "sync"/,
	'an update script that moves it to another schema is refused');
like(error_of(q{ALTER EXTENSION cg_members SET SCHEMA elsewhere}),
	qr/^55000 cannot move extension cg_members: its table app\.widget is mapped by connection "sync"/,
	'ALTER EXTENSION ... SET SCHEMA of its extension is refused');
is(state_of(), '1.0 app app.widget app.widget', 'the extension, its table and the mapping are as they were');

sql($node, 'INSERT INTO app.widget VALUES (1), (2)');
is(sql($node, q{SELECT backlog FROM connect_status WHERE connection = 'sync'}), '2',
	'the mapped table still reaches the log');

# unmapped, the same update renames the table, and the extension moves
sql($node, q{SELECT connect_unmap_table('sync', 'app.widget')});
is(error_of(q{ALTER EXTENSION cg_members UPDATE TO '1.1'}), '', 'unmapped, the update runs');
is(sql($node, q{SELECT extversion || ' ' || to_regclass('app.gadget') FROM pg_extension WHERE extname = 'cg_members'}),
	'1.1 app.gadget', 'and its script renamed the table');
is(error_of(q{ALTER EXTENSION cg_members SET SCHEMA elsewhere}), '', 'an extension without mapped tables moves');
is(sql($node, q{SELECT to_regclass('elsewhere.gadget')}), 'elsewhere.gadget', 'with its table');

$node->stop;
done_testing();
