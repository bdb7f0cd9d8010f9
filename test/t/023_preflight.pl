# The preflight of a follower changeover (connect_preflight('follower'))
# against real servers: a caught-up standby sharing the witness passes every
# check; a standby that keeps its witness elsewhere, one whose replay is
# paused behind the limit, one that is down, and a standby of another
# cluster each fail exactly the check that says so, and nothing else; so
# do a mapped table whose capture trigger was disabled (until it is saved
# and reloaded) and a sync service whose last request the worker could not
# deliver.  The
# follower_changeover runbook stops on a failed check with nothing changed,
# and goes ahead when the DBA accepts it (-v accept).  The checks one
# cluster can set up are in sql/preflight.sql.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test qw(:DEFAULT runbook);

# one witness directory for the primary and its follower, as the README asks
my $witness_dir = PostgreSQL::Test::Utils::tempdir;
my $primary = cg_node('primary', init => [ allows_streaming => 1 ],
    conf => [ "connect_guard.naptime = '200ms'", "connect_guard.witness_directory = '$witness_dir'",
        'connect_guard.http_allow_insecure_loopback = on' ]);    # the heroku connection below is http://127.0.0.1
setup_accounts($primary, consumed => 0);
$primary->safe_psql('postgres', 'SELECT connect_guard.wake_launcher()');
ok(wait_for_worker($primary), 'the worker runs');
my $sysid = sql($primary, 'SELECT system_identifier FROM pg_control_system()');
ok($primary->poll_query_until('postgres',
        "SELECT status = 'ok' FROM connect_guard.witness_read(connect_guard.witness_path(NULL))"),
    'the worker has written the witness');

# the follower: a streaming standby, with the primary's settings (the shared witness directory)
my $follower = new_standby($primary, 'follower');

# failed returns the checks that failed, "check=ok" for every check that is
# not ok (f: failed, null: not made), in order
sub failed
{
    my ($conninfo, $extra) = @_;
    $extra //= '';
    return sql($primary, "SELECT string_agg(\"check\" || '=' || coalesce(ok::text, 'null'), ',')"
          . " FROM connect_preflight('follower', \$ci\$$conninfo\$ci\$$extra) WHERE ok IS NOT TRUE");
}

sub detail
{
    my ($conninfo, $check, $extra) = @_;
    $extra //= '';
    return sql($primary, "SELECT detail || ' / ' || coalesce(hint, '')"
          . " FROM connect_preflight('follower', \$ci\$$conninfo\$ci\$$extra) WHERE \"check\" = '$check'");
}

# ------------------------------------------------------ 1. every check passes
my $conninfo = $follower->connstr('postgres');
my @plan_checks = qw(primary shared_preload_libraries worker plan maintenance_fence rollback_incident
  sync_service:sync backlog:sync mappings:sync replication_slots prepared_transactions long_transactions witness
  follower_reachable follower_standby follower_lag follower_connect_guard follower_witness);
is(sql($primary, "SELECT string_agg(\"check\" || '=' || coalesce(ok::text, 'null'), ',')"
          . " FROM connect_preflight('follower', \$ci\$$conninfo\$ci\$)"),
    join(',', map { "$_=true" } @plan_checks),
    'a caught-up standby that shares the witness: every check of a changeover, all ok');
like(detail($conninfo, 'follower_standby'), qr/^in recovery on timeline 1, system identifier $sysid \(this primary's\), database postgres/,
    'the follower is a standby of this primary: its system identifier and timeline');
like(detail($conninfo, 'follower_witness'), qr/^the follower reads this server's witness \(\Q$witness_dir\E\/connect_guard-$sysid-postgres\.witness\)/,
    'the follower reads the same witness file');
like(detail($conninfo, 'follower_lag'), qr/^\d+ bytes behind \(max_lag_bytes 16777216\), replayed up to [0-9A-F]+\/[0-9A-F]+ /,
    'its lag, against the default limit');

# by its registered name, or the only one registered; and it writes nothing
sql($primary, "SELECT connect_add_follower('f1', \$ci\$$conninfo\$ci\$)");
is(sql($primary, "SELECT count(*) FILTER (WHERE ok IS NOT TRUE) FROM connect_preflight('follower', 'f1')"), '0',
    'by its registered name');
is(sql($primary, "SELECT count(*) FILTER (WHERE ok IS NOT TRUE) FROM connect_preflight()"), '0',
    'the only registered follower, by default');
sql($primary, "SELECT connect_remove_follower('f1')");
is(sql($primary, q{
        SELECT count(*) FROM connect_guard.event \gset
        BEGIN;
        SELECT count(*) FROM connect_preflight('follower', $ci$} . $conninfo . q{$ci$) \g /dev/null
        SELECT pg_current_xact_id_if_assigned() IS NULL AND (SELECT count(*) FROM connect_guard.event) = :count;
        COMMIT;}),
    't', 'it assigned no transaction id and wrote no event');

# ------------------- 2. a standby that keeps its witness elsewhere: follower_witness
my $lonely_dir = PostgreSQL::Test::Utils::tempdir;
my $lonely = new_standby($primary, 'lonely', conf => [ "connect_guard.witness_directory = '$lonely_dir'" ]);
my $lonely_conninfo = $lonely->connstr('postgres');
is(failed($lonely_conninfo), 'follower_witness=false', 'a standby with a witness directory of its own: follower_witness, alone');
like(detail($lonely_conninfo, 'follower_witness'),
    qr/^the follower finds no witness at \Q$lonely_dir\E\/connect_guard-$sysid-postgres\.witness \(missing\): it does not read this server's directory .* \/ Point connect_guard\.witness_directory of both servers at one directory/,
    'it says where the follower looks, and what to do');

# the runbook stops before anything changes, and goes ahead when the DBA accepts the check
my ($rc, $out, $err) = runbook($primary, 'follower_changeover', follower_conninfo => $lonely_conninfo,
    step_timeout => '30 s', wait_timeout => '60 s');
is($rc, 3, 'follower_changeover: a failed preflight check stops the runbook');
like($err, qr/runbook stopped: preflight check failed: follower_witness \(the follower finds no witness/,
    'follower_changeover: naming the check and why');
like($err, qr/HINT:  follower_witness: Point .* Nothing was changed\. To go ahead regardless of a check you have weighed: -v accept=follower_witness/,
    'follower_changeover: with its hint and the way to accept it');
is(sql($primary, q{SELECT (SELECT count(*) FROM connect_guard.follower) || ' ' || (SELECT count(*) FROM connect_guard.upgrade_plan)
                   || ' ' || (SELECT count(*) FROM connect_fences) || ' ' || (SELECT state FROM connect_status)}),
    '0 0 0 IDLE', 'follower_changeover: nothing registered, planned, fenced or paused');
($rc, $out, $err) = runbook($primary, 'follower_changeover', follower_conninfo => $lonely_conninfo, accept => 'follower_witnes');
is($rc, 3, 'follower_changeover: a misspelt accepted check stops too');
like($err, qr/runbook stopped: -v accept names follower_witnes, which this preflight does not check/,
    'follower_changeover: saying which name is unknown');
($rc, $out, $err) = runbook($primary, 'follower_changeover', follower_conninfo => $lonely_conninfo,
    accept => 'follower_witness', step_timeout => '30 s', wait_timeout => '60 s');
is($rc, 0, 'follower_changeover: with -v accept=follower_witness the plan reaches ready');
like($out, qr/follower_witness +\| accepted +\| the follower finds no witness/, 'follower_changeover: showing the check as accepted');
my ($plan) = $out =~ /plan (\d+) prepared/;
is(plan_status($primary, $plan), 'ready ready', 'the plan is ready');
like(detail($lonely_conninfo, 'plan'), qr/^upgrade plan $plan \(follower\) is ready at step ready/,
    'a second preflight now finds the plan open');
is(sql($primary, "SELECT connect_abort_upgrade($plan, 'test: preflight override')"), 'aborted', 'the plan is aborted');
sql($primary, "SELECT connect_remove_follower('changeover')");
is(sql($primary, 'SELECT count(*) FROM connect_fences') . ' ' . sql($lonely, 'SELECT count(*) FROM connect_fences'),
    '0 0', 'both fences are down again');
$lonely->stop;

# ---------------------------- 3. replay paused, the primary writes on: follower_lag
sql($follower, 'SELECT pg_wal_replay_pause()');
ok($follower->poll_query_until('postgres', "SELECT pg_get_wal_replay_pause_state() = 'paused'"), 'replay is paused on the follower');
sql($primary, 'CREATE TABLE ballast AS SELECT g, repeat(md5(g::text), 10) AS pad FROM generate_series(1, 2000) g');
is(failed($conninfo, ', max_lag_bytes => 65536'), 'follower_lag=false', 'a standby behind the limit: follower_lag, alone');
like(detail($conninfo, 'follower_lag', ', max_lag_bytes => 65536'),
    qr/^(\d+) bytes behind \(max_lag_bytes 65536\).* \/ Let it catch up/, 'it says how far behind, and the limit');
my ($behind) = detail($conninfo, 'follower_lag', ', max_lag_bytes => 65536') =~ /^(\d+)/;
ok($behind > 65536, "the follower is $behind bytes behind, more than the limit");
is(failed($conninfo), '', 'within the default limit (16 MB) it passes');
sql($follower, 'SELECT pg_wal_replay_resume()');
$primary->wait_for_catchup($follower);
is(failed($conninfo, ', max_lag_bytes => 65536'), '', 'caught up again, it passes the same limit');

# ------------------------------------------------ 4. the follower is down: follower_reachable
$follower->stop;
is(failed($conninfo),
    'follower_reachable=false,follower_standby=null,follower_lag=null,follower_connect_guard=null,follower_witness=null',
    'a follower that is down: follower_reachable fails, the checks that need an answer are not made');
like(detail($conninfo, 'follower_reachable'), qr/^dbname=postgres host=.* port=\d+: connection to server .* failed/,
    "it says libpq's error");
$follower->start;

# ------------------------------- 5. a standby of another cluster: follower_standby
my $stranger = cg_node('stranger', init => [ allows_streaming => 1 ]);
my $strangers_standby = new_standby($stranger, 'strangers_standby');
my $other_sysid = sql($stranger, 'SELECT system_identifier FROM pg_control_system()');
my $stranger_conninfo = $strangers_standby->connstr('postgres');
is(failed($stranger_conninfo),
    'follower_standby=false,follower_lag=null,follower_connect_guard=null,follower_witness=null',
    'a standby of another cluster: follower_standby fails, the checks that need a standby of ours are not made');
like(detail($stranger_conninfo, 'follower_standby'),
    qr/^its system identifier is $other_sysid, this primary's $sysid: it was made from another cluster \/ Point the conninfo at a streaming standby of this primary/,
    'it names both system identifiers');
$strangers_standby->stop;
$stranger->stop;

is(failed($conninfo), '', 'the real follower passes again');

# ------------ 5b. a capture trigger disabled (writes hidden from the log): mappings:sync
sql($primary, 'ALTER TABLE account DISABLE TRIGGER _connect_guard_capture');
is(failed($conninfo), 'mappings:sync=false', 'a mapped table whose capture trigger is disabled: mappings:sync, alone');
like(detail($conninfo, 'mappings:sync'),
    qr/^public\.account is SCHEMA_CHANGED for \d+ s: trigger_disabled: _connect_guard_capture on public\.account .*it needs a reload\) \/ Settle the mappings before the data moves\. .*SELECT connect_save_mapping\('sync', 'public\.account'\);/,
    'it names the table, the change, and the call that settles it');
($rc, $out, $err) = runbook($primary, 'follower_changeover', follower_conninfo => $conninfo,
    step_timeout => '30 s', wait_timeout => '60 s');
is($rc, 3, 'follower_changeover: a drifted mapping stops the runbook');
like($err, qr/runbook stopped: preflight check failed: mappings:sync \(public\.account is SCHEMA_CHANGED/,
    'follower_changeover: naming the check and the table');
is(sql($primary, q{SELECT (SELECT count(*) FROM connect_guard.follower) || ' ' || (SELECT count(*) FROM connect_guard.upgrade_plan WHERE status <> 'aborted')
                   || ' ' || (SELECT count(*) FROM connect_fences) || ' ' || (SELECT state FROM connect_status)}),
    '0 0 0 IDLE', 'follower_changeover: nothing registered, planned, fenced or paused');
# the trigger enabled again: what was hidden meanwhile is still owed, the change stays open
sql($primary, 'ALTER TABLE account ENABLE TRIGGER _connect_guard_capture');
is(failed($conninfo), 'mappings:sync=false', 'the trigger enabled again: the change is still open');
# saved: the mapping is reloaded (its incident and fence), the check fails until the reload is acknowledged
is(sql($primary, "SELECT connect_save_mapping('sync', 'account')"), 'RELOAD_TABLE', 'saved, the mapping is reloaded');
is(failed($conninfo), 'rollback_incident=false,mappings:sync=false', 'while it reloads: rollback_incident and mappings:sync');
like(detail($conninfo, 'mappings:sync'), qr/^public\.account is RELOAD_TABLE for \d+ s \/ Settle .* Then let the sync service reload the tables/,
    'it says the table is being reloaded');
sql($primary, "SELECT connect_mapping_reloaded('sync', 'account')");
is(failed($conninfo), '', 'reloaded: every check passes again');
like(detail($conninfo, 'mappings:sync'), qr/^1 mapped table, INITIAL or DATA_SYNCED, no open schema change/, 'saying so');

# ------------------- 6. a sync service the worker could not reach: sync_service:NAME
# Connect's API where nothing listens; the token in a file only the server's user reads
my $token = PostgreSQL::Test::Utils::tempdir . '/connect.token';
append_to_file($token, "t0ken-for-the-test\n");
chmod 0600, $token;
my $nowhere = PostgreSQL::Test::Cluster::get_free_port();
sql($primary, "SELECT connect_create_connection('remote', 'heroku', jsonb_build_object("
      . "'region_url', 'http://127.0.0.1:$nowhere', 'connection_id', 'c-1', 'token_file', '$token'))");
my $upgrade_failed = q{SELECT coalesce(string_agg("check" || '=' || coalesce(ok::text, 'null'), ','), '')
                         FROM connect_preflight('pg_upgrade') WHERE ok IS NOT TRUE};
is(sql($primary, $upgrade_failed), '', 'a heroku connection never asked anything passes');
like(sql($primary, q{SELECT detail FROM connect_preflight('pg_upgrade') WHERE "check" = 'sync_service:remote'}),
    qr/^IDLE for \d+ s; as the worker last saw it \(no HTTP call is made here\): no request was ever sent to it/,
    'and says that nothing is known of it yet');
is(sql($primary, q{SELECT ok FROM connect_preflight('pg_upgrade') WHERE "check" = 'token_file:remote'}), 't',
    'its token file is readable by the server');
sql($primary, "SELECT connect_refresh('remote')");
ok($primary->poll_query_until('postgres', "SELECT last_error IS NOT NULL FROM connect_requests WHERE connection = 'remote'"),
    "the worker's refresh failed its first attempt");
is(sql($primary, $upgrade_failed), 'sync_service:remote=false', 'now sync_service:remote fails, alone');
like(sql($primary, q{SELECT detail || ' / ' || hint FROM connect_preflight('pg_upgrade') WHERE "check" = 'sync_service:remote'}),
    qr/as the worker last saw it \(no HTTP call is made here\): its request \d+ \(refresh\) is pending after \d attempt\(s\); last error: .+ \/ Fix what the error says .*SELECT connect_refresh\('remote'\)/,
    "with the worker's last error, and what to do");
sql($primary, "SELECT connect_drop_connection('remote')");
is(sql($primary, $upgrade_failed), '', 'without it, all clear again');
$follower->stop;
$primary->stop;
done_testing();
