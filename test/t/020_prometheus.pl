# The Prometheus postgres exporter (Debian's prometheus-postgres-exporter)
# with monitoring/queries.yaml, run for real against a primary and a
# standby, connected as a role that has nothing but pg_monitor.  A scenario
# gives every metric a value worth checking: connections with a backlog, an
# open batch, a pause with its fence, a request that failed, a reload with
# its incident and fence, a follower whose replay is paused, then a failed
# upgrade plan with its database fence, then the plan aborted, then a
# mapped table retyped (SCHEMA_CHANGED), reloaded and saved.  Each scrape
# is checked against the views read just before and just after it (every
# series, by its labels, with the value between the two readings: equal for
# counts, in between for ages and lags that grow), and against what the
# scenario did (counted).  Then the alert rules: promtool checks and unit
# tests them, and every metric they name is one the exporter served.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test;
use Time::HiRes qw(sleep);

my $exporter_bin = '/usr/bin/prometheus-postgres-exporter';
my $promtool     = '/usr/bin/promtool';
plan skip_all => "$exporter_bin is not installed (apt-get install prometheus-postgres-exporter)"
  unless -x $exporter_bin;
plan skip_all => "$promtool is not installed (apt-get install prometheus)" unless -x $promtool;
plan skip_all => 'curl is not installed' if system('curl --version >/dev/null 2>&1') != 0;

my $queries = File::Spec->rel2abs('monitoring/queries.yaml');
my $alerts  = File::Spec->rel2abs('monitoring/alerts.yml');

# -- the servers -----------------------------------------------------------------

my $primary = cg_node('primary', init => [ allows_streaming => 1 ], conf => [
    'connect_guard.http_allow_insecure_loopback = on',    # the webhook below is http://127.0.0.1
    'connect_guard.http_max_attempts = 1',
    'connect_guard.http_timeout = 2000',
    "connect_guard.witness_directory = ''" ]);
my $standby = new_standby($primary, 'standby');

# the exporter's role: pg_monitor and nothing else
sql($primary, q{
    CREATE EXTENSION connect_guard;
    CREATE ROLE cg_prometheus LOGIN IN ROLE pg_monitor;
    CREATE TABLE account (id int PRIMARY KEY, name text);
    CREATE TABLE contact (id int PRIMARY KEY, name text);
    CREATE TABLE lead (id int PRIMARY KEY, name text);
    SELECT connect_create_connection('sync');
    SELECT connect_map_table('sync', 'account', 'Account');
    SELECT connect_map_table('sync', 'contact', 'Contact');
    SELECT connect_create_connection('ops');
    SELECT connect_map_table('ops', 'lead', 'Lead');
});
$primary->wait_for_catchup($standby);
ok(wait_for_worker($primary), 'the worker runs');
sql($primary, "SELECT connect_add_follower('f1', \$ci\$" . $standby->connstr('postgres') . "\$ci\$)");

# sync: a first batch consumed, then 7 writes taken in a batch left open,
# then 5 more; its backlog is the 12 entries past its mark
sql($primary, q{INSERT INTO account SELECT g, 'a' || g FROM generate_series(1, 4) g});
my $batch = sql($primary, q{SELECT connect_next_batch('sync')});
is(sql($primary, "SELECT count(*) FROM connect_batch_events($batch)"), '4', 'the first batch has the 4 inserts');
sql($primary, "SELECT connect_finish_batch($batch)");
sql($primary, q{INSERT INTO account SELECT g, 'a' || g FROM generate_series(5, 9) g});
sql($primary, q{INSERT INTO contact SELECT g, 'c' || g FROM generate_series(1, 2) g});
$batch = sql($primary, q{SELECT connect_next_batch('sync')});
sleep 1.1;    # so that the oldest pending entry is measurably old
sql($primary, q{UPDATE account SET name = name || '!' WHERE id <= 5});
# ops: 3 writes, never consumed, then paused with its fence
sql($primary, q{INSERT INTO lead SELECT g, 'l' || g FROM generate_series(1, 3) g});
is(sql($primary, q{SELECT connect_pause('ops', reason => 'monitoring test')}), 'PAUSED', 'ops paused');

# hook: a webhook nobody answers; its pause request fails (one attempt)
my $nowhere = PostgreSQL::Test::Cluster::get_free_port();
sql($primary, qq{SELECT connect_create_connection('hook', 'webhook',
        '{"url": "http://127.0.0.1:$nowhere/hook", "secret": "s3cret"}')});
sql($primary, q{SELECT connect_map_table('hook', 'lead', 'Lead')});
sql($primary, q{SELECT connect_pause('hook')});
ok($primary->poll_query_until('postgres',
        q{SELECT count(*) FROM connect_requests WHERE connection = 'hook' AND status = 'failed'}, '1'),
    'the webhook pause request failed');

# a reload by hand: contact goes to RELOAD_TABLE, behind a reload fence,
# recorded as an open incident
sql($primary, q{SELECT connect_reload_mapping('sync', 'contact')});

# the standby stops replaying, and falls behind
$standby->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
sql($primary, q{CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 5000) g});
sql($primary, q{SELECT count(*) FROM connect_check_followers()});

# -- the exporter ----------------------------------------------------------------

my $exporter_port = PostgreSQL::Test::Cluster::get_free_port();
my $dsn = sprintf('host=%s port=%d user=cg_prometheus dbname=postgres sslmode=disable',
    $primary->host, $primary->port);
my ($exp_out, $exp_err) = ('', '');
my $exporter;
{
    local $ENV{DATA_SOURCE_NAME} = $dsn;
    $exporter = IPC::Run::start(
        [ $exporter_bin, "--extend.query-path=$queries",
          "--web.listen-address=127.0.0.1:$exporter_port", '--log.level=info' ],
        '>', \$exp_out, '2>', \$exp_err);
}
END { $exporter->kill_kill if $exporter && $exporter->pumpable; }

# scrape returns { "name{sorted labels without server}" => value } of every series
sub scrape
{
    my ($out, $err) = ('', '');
    IPC::Run::run([ 'curl', '-sf', '--max-time', '30', "http://127.0.0.1:$exporter_port/metrics" ],
        '>', \$out, '2>', \$err)
      or return undef;
    my %series;
    foreach my $line (split /\n/, $out)
    {
        next if $line =~ /^#/ || $line eq '';
        my ($name, $labels, $value) = $line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
          or die "unparsable line from the exporter: $line";
        my %l;
        while (($labels // '') =~ /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g) { $l{$1} = $2; }
        delete $l{server};
        $series{ $name . '{' . join(',', map { "$_=$l{$_}" } sort keys %l) . '}' } = $value;
    }
    return \%series;
}

my $up;
foreach my $try (1 .. 100)
{
    $up = eval { scrape() };
    last if $up;
    sleep 0.2;
}
ok($up, 'the exporter serves /metrics') or BAIL_OUT("the exporter did not start: $exp_err");

# -- the views, read as the exporter's role ------------------------------------

# Each metric: the SQL that reads its series from the views, one row per
# series: labels (sorted "k=v,k=v", as scrape() writes them) and value.
my @expected = (
    [ 'connect_guard_connection_paused', q{SELECT concat_ws(',', 'adapter=' || adapter, 'connection=' || connection), paused::int FROM connect_status} ],
    [ 'connect_guard_connection_fenced', q{SELECT concat_ws(',', 'adapter=' || adapter, 'connection=' || connection), fenced::int FROM connect_status} ],
    [ 'connect_guard_connection_backlog_entries', q{SELECT concat_ws(',', 'adapter=' || adapter, 'connection=' || connection), backlog FROM connect_status} ],
    [ 'connect_guard_connection_oldest_pending_age_seconds', q{SELECT concat_ws(',', 'adapter=' || s.adapter, 'connection=' || s.connection), coalesce(extract(epoch FROM clock_timestamp() - h.oldest_pending_at), 0) FROM connect_status s JOIN connect_high_water_marks h USING (connection)} ],
    [ 'connect_guard_connection_hwm_lag_seconds', q{SELECT concat_ws(',', 'adapter=' || s.adapter, 'connection=' || s.connection), extract(epoch FROM clock_timestamp() - h.hwm_at) FROM connect_status s JOIN connect_high_water_marks h USING (connection)} ],
    [ 'connect_guard_connection_state_age_seconds', q{SELECT concat_ws(',', 'adapter=' || adapter, 'connection=' || connection), extract(epoch FROM clock_timestamp() - state_since) FROM connect_status} ],
    [ 'connect_guard_connection_last_batch_age_seconds', q{SELECT concat_ws(',', 'adapter=' || adapter, 'connection=' || connection), extract(epoch FROM clock_timestamp() - last_batch_at) FROM connect_status} ],
    [ 'connect_guard_connection_batch_open', q{SELECT concat_ws(',', 'adapter=' || adapter, 'connection=' || connection), (open_batch IS NOT NULL)::int FROM connect_status} ],
    [ 'connect_guard_connection_requests_failed', q{SELECT concat_ws(',', 'adapter=' || s.adapter, 'connection=' || s.connection), count(r.request_id) FILTER (WHERE r.status = 'failed') FROM connect_status s LEFT JOIN connect_requests r USING (connection) GROUP BY 1} ],
    [ 'connect_guard_connection_requests_pending', q{SELECT concat_ws(',', 'adapter=' || s.adapter, 'connection=' || s.connection), count(r.request_id) FILTER (WHERE r.status = 'pending') FROM connect_status s LEFT JOIN connect_requests r USING (connection) GROUP BY 1} ],
    [ 'connect_guard_connection_log_ids_used_ratio', q{SELECT concat_ws(',', 'adapter=' || s.adapter, 'connection=' || s.connection), coalesce(h.ids_used_pct, 0) / 100.0 FROM connect_status s JOIN connect_high_water_marks h USING (connection)} ],
    [ 'connect_guard_connection_state_current', q{SELECT concat_ws(',', 'connection=' || c.connection, 'state=' || s.state), (c.state = s.state)::int FROM connect_connections c, unnest('{IDLE,POLLING_DB_CHANGES,PAUSING,PAUSED,RESUMING}'::text[]) s (state)} ],
    [ 'connect_guard_mappings_tables', q{SELECT concat_ws(',', 'connection=' || c.connection, 'state=' || s.state), count(m.table_relname) FROM connect_connections c CROSS JOIN unnest('{INITIAL,DATA_SYNCED,RELOAD_TABLE,SCHEMA_CHANGED}'::text[]) s (state) LEFT JOIN connect_mappings m ON m.connection = c.connection AND m.state = s.state GROUP BY 1} ],
    # the mapped tables with an open change, read from the mappings (the query counts the drift's rows)
    [ 'connect_guard_schema_drift_mappings', q{SELECT 'connection=' || c.connection, count(m.table_relname) FROM connect_connections c LEFT JOIN connect_mappings m ON m.connection = c.connection AND EXISTS (SELECT 1 FROM connect_schema_drift d WHERE d.connection = m.connection AND d.table_schema = m.table_schema AND d.table_relname = m.table_relname) GROUP BY 1} ],
    [ 'connect_guard_schema_drift_mappings_needing_reload', q{SELECT 'connection=' || c.connection, count(m.table_relname) FROM connect_connections c LEFT JOIN connect_mappings m ON m.connection = c.connection AND EXISTS (SELECT 1 FROM connect_schema_drift d WHERE d.connection = m.connection AND d.table_schema = m.table_schema AND d.table_relname = m.table_relname AND d.needs_reload) GROUP BY 1} ],
    [ 'connect_guard_schema_drift_changes', q{SELECT 'connection=' || connection, schema_changes FROM connect_status} ],
    [ 'connect_guard_fences_up', q{SELECT 'scope=' || s.scope, count(f.fence_id) FROM unnest('{connection,mapped,database,reload}'::text[]) s (scope) LEFT JOIN connect_fences f USING (scope) GROUP BY 1} ],
    [ 'connect_guard_fences_tables', q{SELECT 'scope=' || s.scope, coalesce(sum(cardinality(f.fenced_tables)), 0) FROM unnest('{connection,mapped,database,reload}'::text[]) s (scope) LEFT JOIN connect_fences f USING (scope) GROUP BY 1} ],
    [ 'connect_guard_fences_oldest_age_seconds', q{SELECT 'scope=' || s.scope, coalesce(extract(epoch FROM clock_timestamp() - min(f.since)), 0) FROM unnest('{connection,mapped,database,reload}'::text[]) s (scope) LEFT JOIN connect_fences f USING (scope) GROUP BY 1} ],
    [ 'connect_guard_upgrade_plan_step_age_seconds', q{SELECT concat_ws(',', 'method=' || method, 'plan=' || plan, 'status=' || status, 'step=' || step), extract(epoch FROM clock_timestamp() - step_since) FROM connect_upgrade_status WHERE status NOT IN ('completed', 'aborted')} ],
    [ 'connect_guard_upgrade_plan_elapsed_seconds', q{SELECT concat_ws(',', 'method=' || method, 'plan=' || plan, 'status=' || status, 'step=' || step), extract(epoch FROM elapsed) FROM connect_upgrade_status WHERE status NOT IN ('completed', 'aborted')} ],
    [ 'connect_guard_follower_reachable', q{SELECT concat_ws(',', 'name=' || coalesce(name, ''), 'source=' || source), bool_and(coalesce(reachable, false))::int FROM connect_follower_lag GROUP BY 1} ],
    [ 'connect_guard_follower_lag_bytes', q{SELECT concat_ws(',', 'name=' || coalesce(name, ''), 'source=' || source), max(lag_bytes) FROM connect_follower_lag GROUP BY 1} ],
    [ 'connect_guard_follower_lag_seconds', q{SELECT concat_ws(',', 'name=' || coalesce(name, ''), 'source=' || source), max(lag_seconds) FROM connect_follower_lag GROUP BY 1} ],
    [ 'connect_guard_rollback_incidents_open', q{SELECT '', count(*) FILTER (WHERE resolved_at IS NULL) FROM connect_rollback_incidents} ],
    [ 'connect_guard_rollback_reloads_pending', q{SELECT '', coalesce(sum(reloads_pending) FILTER (WHERE resolved_at IS NULL), 0) FROM connect_rollback_incidents} ],
    [ 'connect_guard_rollback_incidents', q{SELECT '', count(*) FROM connect_rollback_incidents} ],
    [ 'connect_guard_rollback_oldest_open_age_seconds', q{SELECT '', coalesce(extract(epoch FROM clock_timestamp() - min(detected_at) FILTER (WHERE resolved_at IS NULL)), 0) FROM connect_rollback_incidents} ],
    [ 'connect_guard_worker_running', q{SELECT '', count(*) FROM connect_worker} ],
    [ 'connect_guard_write_errors', q{SELECT 'connection=' || c.connection, count(w.connection) FROM connect_connections c LEFT JOIN connect_write_errors w USING (connection) GROUP BY 1} ],
);

# views returns { "name{labels}" => value } as the exporter's role sees it now
sub views
{
    my $union = join("\nUNION ALL\n", map {
        my ($name, $select) = @$_;
        "SELECT '$name' || '{' || x.labels || '}', coalesce(x.value::float8::text, 'NaN') FROM ($select) x (labels, value)"
    } @expected);
    my %series = map { split /\t/, $_, 2 }
      split /\n/, $primary->safe_psql('postgres', $union, extra_params => [ '-U', 'cg_prometheus', '-A', '-F', "\t" ]);
    return \%series;
}

sub value_between
{
    my ($v, $a, $b) = @_;
    return ($v eq 'NaN' && $a eq 'NaN' && $b eq 'NaN') if grep { $_ eq 'NaN' } $v, $a, $b;
    ($a, $b) = ($b, $a) if $a > $b;
    # extract(epoch) has microseconds; the exporter prints float64
    return $v >= $a - 1e-6 && $v <= $b + 1e-6;
}

# check_scrape: every connect_guard series of a scrape against the views read
# just before and just after it; returns the scrape
sub check_scrape
{
    my ($what) = @_;
    my ($before, $scraped, $after);
    # the sets of series may change between the readings (a request finishing,
    # a check of the follower): then read again
    foreach my $try (1 .. 10)
    {
        $before  = views();
        $scraped = scrape();
        $after   = views();
        last if join(' ', sort keys %$before) eq join(' ', sort keys %$after);
    }
    my %ours = map { $_ => $scraped->{$_} } grep { /^connect_guard_/ } keys %$scraped;
    is_deeply([ sort keys %ours ], [ sort keys %$after ], "$what: the exporter serves exactly the views' series")
      or diag(explain({ scraped => [ sort keys %ours ], views => [ sort keys %$after ] }));
    my @wrong = grep {
        exists $before->{$_} && exists $after->{$_} && !value_between($ours{$_}, $before->{$_}, $after->{$_})
    } sort keys %ours;
    is_deeply(\@wrong, [], "$what: every value is the views' (" . scalar(keys %ours) . ' series)')
      or diag(explain({ map { $_ => [ $before->{$_}, $ours{$_}, $after->{$_} ] } @wrong }));
    is($scraped->{'pg_up{}'}, 1, "$what: pg_up");
    is($scraped->{'pg_exporter_last_scrape_error{}'}, 0, "$what: no query of the scrape failed");
    return $scraped;
}

# -- 1. connections, fences, requests, a reload, a lagging follower ------------

# connect_write_errors comes with adopted Connect schemas (a later version);
# until then its query returns nothing, and the scrape does not fail
my $has_write_errors = sql($primary, q{SELECT to_regclass('connect_write_errors') IS NOT NULL});
my $m = scrape();
if ($has_write_errors eq 'f')
{
    is(scalar(grep { /^connect_guard_write_errors/ } keys %$m), 0, 'without connect_write_errors: no write_errors series');
    is($m->{'pg_exporter_last_scrape_error{}'}, 0, 'without connect_write_errors: the scrape does not fail');
    # a stand-in with the view's connection column, for the query's other branch
    sql($primary, q{CREATE VIEW connect_write_errors AS
            SELECT 'sync'::text AS connection, g AS record_id FROM generate_series(1, 3) g;
          GRANT SELECT ON connect_write_errors TO pg_monitor});
}

$m = check_scrape('scrape 1');
my $s = 'adapter=local,connection=sync';
is($m->{"connect_guard_connection_backlog_entries{$s}"}, 12, 'sync: 12 entries past its mark (7 in the open batch, 5 after)');
is($m->{"connect_guard_connection_batch_open{$s}"}, 1, 'sync: its batch is open');
ok($m->{"connect_guard_connection_oldest_pending_age_seconds{$s}"} >= 1, 'sync: the oldest pending entry is over a second old');
ok($m->{"connect_guard_connection_hwm_lag_seconds{$s}"} >= 1, 'sync: its mark is over a second old');
ok($m->{"connect_guard_connection_last_batch_age_seconds{$s}"} >= 1, 'sync: its last batch finished over a second ago');
is($m->{"connect_guard_connection_paused{$s}"}, 0, 'sync: not paused');
is($m->{"connect_guard_connection_fenced{$s}"}, 1, 'sync: fenced (the reload fence)');
is($m->{'connect_guard_mappings_tables{connection=sync,state=RELOAD_TABLE}'}, 1, 'sync: one mapping reloading');
is($m->{'connect_guard_mappings_tables{connection=sync,state=DATA_SYNCED}'}, 1, 'sync: one mapping synced');
$s = 'adapter=local,connection=ops';
is($m->{"connect_guard_connection_backlog_entries{$s}"}, 3, 'ops: 3 entries never consumed');
is($m->{"connect_guard_connection_paused{$s}"}, 1, 'ops: paused');
is($m->{"connect_guard_connection_fenced{$s}"}, 1, 'ops: fenced');
is($m->{"connect_guard_connection_last_batch_age_seconds{$s}"}, 'NaN', 'ops: no batch ever (NaN)');
is($m->{'connect_guard_connection_state_current{connection=ops,state=PAUSED}'}, 1, 'ops: state PAUSED');
is($m->{'connect_guard_connection_requests_failed{adapter=webhook,connection=hook}'}, 1, 'hook: one failed request');
is($m->{'connect_guard_fences_up{scope=connection}'}, 1, 'one connection fence (ops)');
is($m->{'connect_guard_fences_up{scope=reload}'}, 1, 'one reload fence (contact)');
is($m->{'connect_guard_fences_tables{scope=reload}'}, 1, 'the reload fence covers one table');
is($m->{'connect_guard_fences_up{scope=database}'}, 0, 'no database fence');
is($m->{'connect_guard_rollback_incidents_open{}'}, 1, 'one open incident');
is($m->{'connect_guard_rollback_reloads_pending{}'}, 1, 'one reload pending');
is($m->{'connect_guard_worker_running{}'}, 1, 'the worker runs');
is($m->{'connect_guard_follower_reachable{name=f1,source=libpq}'}, 1, 'follower f1 reachable');
ok($m->{'connect_guard_follower_lag_bytes{name=f1,source=libpq}'} > 200_000, 'follower f1 is behind (bytes)');
ok($m->{'connect_guard_follower_lag_bytes{name=standby,source=pg_stat_replication}'} > 200_000,
    'the standby is behind in pg_stat_replication too');
is($m->{'connect_guard_write_errors{connection=sync}'}, 3, 'write errors counted per connection (the stand-in\'s 3)')
  if $has_write_errors eq 'f';
is(scalar(grep { /^connect_guard_upgrade_plan/ } keys %$m), 0, 'no upgrade plan series');
my %served = map { /^([^{]+)/; $1 => 1 } keys %$m;

# -- 2. a failed upgrade plan ----------------------------------------------------

# the plan pauses every connection; the webhook's never answers
my $plan = sql($primary, q{SELECT connect_prepare_upgrade('pg_upgrade', timeout => '3 s')});
ok($primary->poll_query_until('postgres',
        "SELECT status FROM connect_upgrade_status WHERE plan = $plan", 'failed'),
    'the plan failed (the webhook does not answer its pause)');
my $step = sql($primary, "SELECT step FROM connect_upgrade_status WHERE plan = $plan");
$m = check_scrape('scrape 2');
ok(defined $m->{"connect_guard_upgrade_plan_step_age_seconds{method=pg_upgrade,plan=$plan,status=failed,step=$step}"},
    "the failed plan is served, at its step ($step)");
$served{$_ =~ s/\{.*//r} = 1 foreach keys %$m;

# -- 3. the plan aborted ---------------------------------------------------------

sql($primary, "SELECT connect_abort_upgrade($plan, 'monitoring test')");
$m = check_scrape('scrape 3');
is(scalar(grep { /^connect_guard_upgrade_plan/ } keys %$m), 0, 'an aborted plan is no longer served');

# -- 4. a mapped table changes, and is settled ---------------------------------------

# drift returns "mappings/needing reload/changes SCHEMA_CHANGED-state-count" of connection sync in scrape $m
sub drift
{
    my ($m) = @_;
    return join(' ', map { $m->{"connect_guard_schema_drift_$_\{connection=sync}"} } qw(mappings mappings_needing_reload changes))
      . ' ' . $m->{'connect_guard_mappings_tables{connection=sync,state=SCHEMA_CHANGED}'};
}
is(drift($m), '0 0 0 0', 'before: no schema change of sync');
# ALTER COLUMN ... TYPE rewrites every row without a log entry: SCHEMA_CHANGED, and a reload is owed
sql($primary, q{ALTER TABLE account ALTER COLUMN name TYPE varchar(200)});
is(sql($primary, q{SELECT state FROM connect_mappings WHERE table_relname = 'account'}), 'SCHEMA_CHANGED',
    'account is SCHEMA_CHANGED');
$m = check_scrape('scrape 4');
is(drift($m), '1 1 1 1', 'a column retyped: one mapped table changed, needing a reload, one change; SCHEMA_CHANGED');
is($m->{'connect_guard_schema_drift_mappings{connection=ops}'}, 0, 'ops: no change (another connection\'s table)');
# reloaded by hand: the mapping is RELOAD_TABLE, but the change is still open
sql($primary, q{SELECT connect_reload_mapping('sync', 'account')});
$m = check_scrape('scrape 5');
is(drift($m), '1 1 1 0', 'reloading: the change is still served, though no mapping is SCHEMA_CHANGED');
is($m->{'connect_guard_mappings_tables{connection=sync,state=RELOAD_TABLE}'}, 2, 'sync: two mappings reloading');
# saved (the reload under way is the one it needs), then the reload acknowledged
is(sql($primary, q{SELECT connect_save_mapping('sync', 'account')}), 'RELOAD_TABLE', 'account saved, still reloading');
sql($primary, q{SELECT connect_mapping_reloaded('sync', 'account')});
$m = check_scrape('scrape 6');
is(drift($m), '0 0 0 0', 'saved and reloaded: back to no schema change');
is($m->{'connect_guard_mappings_tables{connection=sync,state=DATA_SYNCED}'}, 1, 'account is DATA_SYNCED again');
is(sql($primary, q{SELECT count(*) FROM connect_schema_drift}), '0', 'connect_schema_drift is empty');

# -- the alert rules ---------------------------------------------------------------

my ($out, $err) = ('', '');
# promtool's rule tests keep their samples in a directory under TMPDIR
local $ENV{TMPDIR} = PostgreSQL::Test::Utils::tempdir;
ok(IPC::Run::run([ $promtool, 'check', 'rules', $alerts ], '>', \$out, '2>', \$err), 'promtool check rules')
  or diag("$out$err");
ok(IPC::Run::run([ $promtool, 'test', 'rules', File::Spec->rel2abs('monitoring/alerts_test.yml') ], '>', \$out, '2>', \$err),
    'promtool test rules (monitoring/alerts_test.yml)')
  or diag("$out$err");
my %named = map { $_ => 1 } map { /\b((?:connect_guard|pg)_[a-z_]+)\b/g } grep { /^\s*expr:/ } split /\n/, slurp_file($alerts);
my @unknown = grep { !$served{$_} } sort keys %named;
is_deeply(\@unknown, [], 'every metric the alert rules name is one the exporter served ('
      . scalar(keys %named) . ' names)');

# -- the README documents the metrics served and shows the rules as they are --------

my $readme = slurp_file(File::Spec->rel2abs('README.md'));
my @undocumented = grep { /^connect_guard_/ && $readme !~ /`\Q$_\E`/ } sort keys %served;
is_deeply(\@undocumented, [], 'README.md (Monitoring) names every metric served');
my %rules = slurp_file($alerts) =~ /^\s*- alert: (\w+)\n\s*expr: (.*)$/mg;
my %shown = $readme =~ /^\s*- alert: (\w+)[^\n]*\n\s*expr: (.*)$/mg;
is_deeply(\%shown, \%rules, 'README.md shows every alert rule of monitoring/alerts.yml, with its expression')
  or diag(explain({ readme => \%shown, alerts => \%rules }));
ok(scalar(keys %rules) >= 17, scalar(keys %rules) . ' alert rules');

# -- the exporter's own log: no query failed ---------------------------------------

$exporter->kill_kill;
my @errors = grep { /err=|level=error/ } split /\n/, $exp_err;
is_deeply(\@errors, [], 'the exporter logged no error');

$standby->stop;
$primary->stop;
done_testing();
