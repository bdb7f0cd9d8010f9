#!/usr/bin/perl
# typedefs.pl FILE...: prints the typedef names the C headers and sources
# given declare, one per line, sorted.  pg_bsd_indent must be told every
# type name (-U FILE): a name it does not know as a type is formatted as a
# variable ("Jsonb * x", no declaration alignment).  PostgreSQL's pgindent
# reads a list the buildfarm extracts from object files; this extracts the
# list from the headers of the server we build against, which is as good
# for our code and needs nothing but perl.
use strict;
use warnings;

my %names;
foreach my $file (@ARGV)
{
	open(my $fh, '<', $file) or next;
	local $/;
	my $src = <$fh>;
	close($fh);
	$src =~ s{/\*.*?\*/}{ }gs;       # comments
	$src =~ s{//[^\n]*}{}g;
	$src =~ s{^\s*#[^\n]*(?:\\\n[^\n]*)*}{}gm;    # preprocessor lines

	# each "typedef ... ;" at brace depth 0 of the typedef itself
	while ($src =~ /\btypedef\b/g)
	{
		my $start = pos($src);
		my ($depth, $i) = (0, $start);
		while ($i < length($src))
		{
			my $ch = substr($src, $i, 1);
			$depth++ if $ch eq '{';
			$depth-- if $ch eq '}';
			last if $ch eq ';' && $depth == 0;
			$i++;
		}
		my $body = substr($src, $start, $i - $start);
		pos($src) = $i;
		if ($body =~ /\(\s*\*\s*(\w+)\s*\)\s*\(/)    # a pointer to function
		{
			$names{$1} = 1;
			next;
		}
		1 while $body =~ s/\{[^{}]*\}//s;    # struct, union and enum bodies
		$body =~ s/\[[^\]]*\]//g;            # array bounds
		$body =~ s/\([^()]*\)//g;            # a function type's parameters
		foreach my $declarator (split /,/, $body)
		{
			$names{$1} = 1 if $declarator =~ /(\w+)\s*$/;
		}
	}
}
my %keyword = map { $_ => 1 } qw(void char short int long float double signed unsigned
  struct union enum const volatile);
print "$_\n" foreach sort grep { !$keyword{$_} && !/^\d/ } keys %names;
