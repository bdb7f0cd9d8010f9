# ConnectGuard::Simulator: starts test/simulator/connect_sim.py (the only
# simulated component: the Connect API and the webhook receiver) for a TAP
# test and talks to its /_sim control endpoints.  Its POD documents each
# function.

=pod

=head1 NAME

ConnectGuard::Simulator - the Connect simulator, for TAP tests

=head1 SYNOPSIS

  use ConnectGuard::Simulator;

  my $token = random_secret('tok');
  my $token_file = secret_file('connect.token', $token);
  my $base = start_simulator(token => $token, connections => [ {
      id => $conn_id, name => 'sync', schema_name => 'public',
      mappings => [ { id => 'map-account', object_name => 'Account' } ] } ]);
  my $node = cg_node('primary', conf => [ simulator_conf() ]);   # http:// to 127.0.0.1
  # ... connect_create_connection('sync', 'heroku', region_url => $base ...)
  sim('POST', '/_sim/fail', { mode => '500', count => 3 });
  my @posts = sim_posts();
  stop_simulator();

=head1 DESCRIPTION

One simulator per test file: the functions share it, so that a test reads
C<sim('GET', '/_sim/state')> rather than passing a handle around.  The
token and the webhook secret reach the simulator through its environment
only (never its command line, which C<ps> shows).  It runs with
F</usr/bin/python3>, Debian's, which has psycopg2.

=cut

package ConnectGuard::Simulator;

use strict;
use warnings;
use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

our @EXPORT = qw(
  random_secret secret_file
  start_simulator stop_simulator sim sim_requests sim_posts simulator_conf
);

# beside test/perl/ConnectGuard/: test/simulator/connect_sim.py
my $SIMULATOR = File::Spec->rel2abs(
	dirname(__FILE__) . '/../../simulator/connect_sim.py');

my ($harness, $base, $http, $secrets_dir);
my ($out, $err) = ('', '');

=head2 Secrets

=over

=item random_secret($prefix)

C<$prefix-> and 32 random hex digits: a token or key no test hard-codes,
so that finding it in a log or a view is proof it leaked.

=cut

sub random_secret
{
	my ($prefix) = @_;
	return "$prefix-" . join('', map { sprintf '%02x', int(rand(256)) } 1 .. 16);
}

=item secret_file($name, $value)

Writes C<$value> into a file of a private temporary directory that only
its owner (the server's user: ours) can read, and returns its path: the
token_file and secret_file options refuse anything laxer.

=cut

sub secret_file
{
	my ($name, $value) = @_;
	$secrets_dir //= PostgreSQL::Test::Utils::tempdir;
	my $path = "$secrets_dir/$name";
	unlink $path;
	append_to_file($path, "$value\n");
	chmod 0600, $path or die "chmod $path: $!";
	return $path;
}

=back

=head2 The simulator

=over

=item start_simulator(%opt)

Starts the simulator on a free port and returns its base URL
(C<http://127.0.0.1:PORT>).  Options: C<connections> (its configuration:
the Connect connections and their mappings), C<token> (the API token it
accepts), C<webhook_secret> (the key webhook signatures must use),
C<args> (more command-line options, e.g. C<--reload-seconds 600>).  Bails
out when it does not start: every later check would fail for that one
reason.

=cut

sub start_simulator
{
	my (%opt) = @_;
	die 'the simulator runs already' if $harness;
	my $config = PostgreSQL::Test::Utils::tempdir . '/connect.json';
	append_to_file($config,
		encode_json({ connections => $opt{connections} // [] }));
	{
		local %ENV = (%ENV,
			defined $opt{token} ? (CONNECT_SIM_TOKEN => $opt{token}) : (),
			defined $opt{webhook_secret}
			? (CONNECT_SIM_WEBHOOK_SECRET => $opt{webhook_secret})
			: ());
		$harness = IPC::Run::start(
			[
				'/usr/bin/python3', $SIMULATOR,
				'--port', '0', '--config', $config, @{ $opt{args} // [] }
			],
			'>', \$out, '2>', \$err);
	}
	# it prints LISTENING <port> once it accepts connections
	foreach my $try (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		last if $out =~ /^LISTENING \d+$/m;
		$harness->pump_nb;
		sleep 0.1;
	}
	my ($port) = $out =~ /^LISTENING (\d+)$/m
	  or BAIL_OUT("the simulator did not start: $err");
	$base = "http://127.0.0.1:$port";
	$http = HTTP::Tiny->new(timeout => 10);
	return $base;
}

=item simulator_conf()

The postgresql.conf line a server needs to send requests to the simulator:
it listens on plain http:// at 127.0.0.1, and connect_guard refuses to
send a token or a signature over http:// unless
C<connect_guard.http_allow_insecure_loopback> allows it for loopback
addresses.  Only tests set it (the demo uses the simulator as a consumer, not over HTTP).

=cut

sub simulator_conf
{
	return 'connect_guard.http_allow_insecure_loopback = on';
}

=item stop_simulator()

Stops it (also done at exit, should a test die first).

=cut

sub stop_simulator
{
	$harness->kill_kill if $harness;
	$harness = undef;
	return;
}

END { stop_simulator(); }

=item sim($method, $path, $body)

One request to the simulator (C<$body>, a Perl structure, sent as JSON);
returns the decoded JSON answer and dies on any non-2xx: the control
endpoints (C</_sim/state>, C</_sim/fail>, C</_sim/reset>,
C</_sim/requests>, C</_sim/webhooks>) always succeed.

=cut

sub sim
{
	my ($method, $path, $body) = @_;
	my $r = $http->request(
		$method, "$base$path",
		$body
		? {
			content => encode_json($body),
			headers => { 'Content-Type' => 'application/json' }
		  }
		: {});
	die "simulator: $method $path: $r->{status} $r->{content}"
	  unless $r->{success};
	return decode_json($r->{content});
}

=item sim_requests(), sim_posts()

Every request the simulator received since its last reset, oldest first
(method, path, status, fault, headers with the token hidden); C<sim_posts>
keeps the POSTs: the actions.

=cut

sub sim_requests { return @{ sim('GET', '/_sim/requests')->{requests} }; }
sub sim_posts    { return grep { $_->{method} eq 'POST' } sim_requests(); }

=back

=cut

1;
