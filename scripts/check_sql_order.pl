#!/usr/bin/perl
# check_sql_order.pl: the install script's parts use only what comes before.
#   perl scripts/check_sql_order.pl [extension/parts]
#
# The Makefile assembles the install script from extension/parts/*.sql
# in name order, and that order is the dependency order: a reader finds a
# function in the file of its concern, and everything it calls above it.
# This fails (exit 1) when a part names a function, table, view or type of
# the extension that only a later part creates, so that loops between the
# parts (a calls b, b calls a) cannot come back.  Comments and string
# literals do not count (they mention functions in hints); dynamic SQL
# built from strings is therefore not checked.
use strict;
use warnings;

my $dir = shift // do {
    my $root = $0 =~ s{/scripts/[^/]+$}{}r;
    $root = '.' if $root eq $0;
    "$root/extension/parts";
};
my @files = sort glob("$dir/*.sql");
die "no install parts in $dir\n" unless @files;

# code: the text without comments and string literals (leftmost token wins,
# so an apostrophe in a comment or "--" in a string is read correctly)
sub code {
    my ($text) = @_;
    $text =~ s{(--[^\n]*|/\*.*?\*/|'(?:[^']|'')*')}{my $t = $1; $t =~ tr/\n//cd; " $t"}gse;
    return $text;
}

my (%defined_in, @code);
for my $i (0 .. $#files) {
    open my $fh, '<', $files[$i] or die "$files[$i]: $!\n";
    local $/;
    $code[$i] = code(<$fh>);
    while ($code[$i] =~ /\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:UNIQUE\s+)?(?:FUNCTION|VIEW|TABLE|SEQUENCE|TYPE|DOMAIN)\s+(connect_guard\.\w+|connect_\w+)/gi) {
        my $name = lc $1;
        $defined_in{$name} //= $i;
    }
}

my $failed = 0;
for my $i (0 .. $#files) {
    my $line = 1;
    my %seen;
    # every name of ours, private (connect_guard.x) or public (connect_x, maybe @extschema@.)
    for my $chunk (split /(\n)/, $code[$i]) {
        if ($chunk eq "\n") { $line++; next; }
        while ($chunk =~ /(?<![\w.])((?:connect_guard\.)?\w+|\@extschema\@\.\w+)/g) {
            my $name = lc($1 =~ s/^\@extschema\@\.//r);
            next unless exists $defined_in{$name};
            my $j = $defined_in{$name};
            next if $j <= $i || $seen{$name}++;
            (my $user = $files[$i]) =~ s{.*/}{};
            (my $owner = $files[$j]) =~ s{.*/}{};
            print "$user:$line: uses $name, which only the later $owner creates\n";
            $failed = 1;
        }
    }
}
if ($failed) {
    print "Move what is shared into an earlier part (general helpers go to the common part first),\n",
          "or the user into a later one: each part may use only what the parts before it create.\n";
    exit 1;
}
printf "install parts in dependency order: %d files, %d objects\n", scalar @files, scalar keys %defined_in;
exit 0;
