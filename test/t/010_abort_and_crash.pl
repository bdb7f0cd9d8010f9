# Follower changeovers that are aborted, and that crash.
#
# (a) connect_abort_upgrade() at each step: an unreachable follower fails
#     the plan at checking with nothing paused; a plan held at pausing (an
#     open batch), at fencing (a writer in flight), at catching_up (the
#     follower's replay paused) and at ready is aborted: the fences on the
#     primary and on the follower are lowered, the connection resumed.
# (b) one changeover survives a kill -9 of the worker (a crash restart of
#     the postmaster) at pausing, at fencing and at ready, and a kill -9 of
#     the postmaster at catching_up and at ready: the plan resumes after
#     each restart, a fence raised by a committed step is back before any
#     write (one whose step had not committed is raised again), and the
#     follower completes it.  A follower fence left by a try whose answer was lost is
#     reused, not doubled.
#
# Counting: every committed write reached the log once and was delivered
# once, through aborts, crashes and the changeover.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use ConnectGuard::Test;

my $primary = cg_node('primary', init => [ allows_streaming => 1 ],
    conf => [ "connect_guard.naptime = '200ms'", 'restart_after_crash = on' ]);
setup_accounts($primary);
# the plans need the database's worker
wait_for_worker($primary) or die 'no worker';
my $follower = new_standby($primary, 'follower', backup => 'base', conf => 'restart_after_crash = on');
my $follower_conninfo = $follower->connstr('postgres');
my $script = writes_script($primary);

# this test's sync service: it goes on through fences and crashes (an error
# from connect_next_batch ends its turn), recording where it consumed
sub consume_via
{
    my ($node, $via, $max) = @_;
    return consume($node, via => $via, max => $max, stop_on_error => 1);
}

sub write_one { account_write($primary, $_[0]); }

sub plan_is { return plan_status($primary, $_[0]); }

sub fences
{
    my ($node) = @_;
    return $node->safe_psql('postgres', 'SELECT count(*) FROM connect_fences');
}

sub state
{
    return $primary->safe_psql('postgres', 'SELECT state FROM connect_connections');
}

sub prepare
{
    my ($conninfo) = @_;
    return $primary->safe_psql('postgres',
        "SELECT connect_prepare_upgrade('follower', follower => \$\$$conninfo\$\$, max_lag_bytes => 100000000, timeout => '60 s')");
}

# the worker waits on a lock (raising the fence waits for the writers in flight)
sub worker_waits_sql
{
    return "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = connect_guard.worker_pid() AND NOT granted)";
}

# kill -9 of the worker: the postmaster resets shared memory and restarts
# every process; wait until a new worker runs
sub kill_worker
{
    my $pid = $primary->safe_psql('postgres', 'SELECT connect_guard.worker_pid()');
    ok(kill('KILL', $pid), "kill -9 of the worker (pid $pid)");
    $primary->poll_query_until('postgres',
        "SELECT coalesce(connect_guard.worker_pid() <> $pid, false)")
        or die 'no new worker after the crash restart';
}

# some load and consumption before the plans
$primary->command_ok([ 'pgbench', '-n', '-c', '2', '-t', '100', '--max-tries', '1', '-f', $script, 'postgres' ], 'some load');
consume_via($primary, 'old');

# ------------------------------------------------------------------------
# (a) aborts
# ------------------------------------------------------------------------

# checking: an unreachable follower fails the plan, nothing was paused
my $nowhere = 'host=' . $primary->host . ' port=' . PostgreSQL::Test::Cluster::get_free_port()
    . ' dbname=postgres connect_timeout=2';
my $plan = prepare($nowhere);
ok($primary->poll_query_until('postgres', "SELECT status = 'failed' FROM connect_upgrade_status WHERE plan = $plan"),
    'an unreachable follower fails the plan');
is(plan_is($plan), 'failed checking', 'at checking');
like($primary->safe_psql('postgres', "SELECT last_error FROM connect_upgrade_status WHERE plan = $plan"),
    qr/^the follower is unreachable: could not query the other server: .*connect/, 'with a clear last_error');
my ($rc, $o, $e) = $primary->psql('postgres', "SELECT connect_wait_upgrade($plan, 'ready', '10 s')");
like($e, qr/upgrade plan $plan failed at step checking.*DETAIL:  the follower is unreachable/s,
    'connect_wait_upgrade() says why');
is(state(), 'IDLE', 'the connection was not paused');
is(fences($primary), '0', 'nothing was fenced');
is(write_error($primary, 'INSERT INTO writes (account_id) VALUES (NULL)'), '', 'writes go on');
is($primary->safe_psql('postgres', "SELECT connect_abort_upgrade($plan)"), 'aborted', 'a failed plan can be aborted');
is(plan_is($plan), 'aborted aborted', 'and is aborted');

# pausing: an open batch holds the pause; the abort leaves the connection alone
write_one(1);
my $held = $primary->safe_psql('postgres', "SELECT connect_next_batch('sync')");
ok($held > 0, "the consumer holds batch $held");
$plan = prepare($follower_conninfo);
ok($primary->poll_query_until('postgres',
    "SELECT step = 'pausing' AND paused_connections <> '{}' FROM connect_guard.upgrade_plan WHERE plan_id = $plan"),
    'the plan tries to pause');
is(plan_is($plan), 'running pausing', 'and waits for the open batch');
is($primary->safe_psql('postgres', "SELECT connect_abort_upgrade($plan, 'abort at pausing')"), 'aborted', 'aborted at pausing');
is(plan_is($plan), 'aborted aborted', 'the plan is aborted');
is($primary->safe_psql('postgres', "SELECT last_error FROM connect_upgrade_status WHERE plan = $plan"), 'abort at pausing',
    'with the reason given');
is(state(), 'POLLING_DB_CHANGES', 'the connection was not paused: its batch is still open');
is(fences($primary) . fences($follower), '00', 'no fence on the primary or the follower');
ok(consume_via($primary, 'old') >= 1, 'the consumer finishes its batch');

# fencing: a writer in flight holds the fence; the abort waits for the step and undoes it
my $writer = $primary->background_psql('postgres');
$writer->query_safe('BEGIN');
$writer->query_safe('UPDATE account SET balance = balance + 1 WHERE id = 3');
$writer->query_safe('INSERT INTO writes (account_id) VALUES (-3)');
$plan = prepare($follower_conninfo);
ok($primary->poll_query_until('postgres', worker_waits_sql()), 'the plan waits for the writer in flight');
is(plan_is($plan), 'running fencing', 'at fencing');
is(write_error($primary, 'INSERT INTO writes (account_id) VALUES (NULL)'), '25006', 'new writes are refused meanwhile');
my $aborter = $primary->background_psql('postgres');
my $aborter_pid = $aborter->query_safe('SELECT pg_backend_pid()');
$aborter->query_until(qr/aborting/, "\\echo aborting\nSELECT connect_abort_upgrade($plan, 'abort at fencing');\n");
ok($primary->poll_query_until('postgres', "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $aborter_pid AND NOT granted)"),
    'the abort waits for the step');
$writer->query_safe('COMMIT');
$writer->quit;
ok($primary->poll_query_until('postgres', "SELECT status = 'aborted' FROM connect_upgrade_status WHERE plan = $plan"),
    'aborted at fencing');
$aborter->quit;
is(state(), 'IDLE', 'the connection is resumed');
is(fences($primary) . fences($follower), '00', 'no fence on the primary or the follower');
is(write_error($primary, 'INSERT INTO writes (account_id) VALUES (NULL)'), '', 'writes go on');
consume_via($primary, 'old');

# fencing, with a writer that does not end within the step's timeout: the
# try times out (and its fence is lowered with its transaction), the plan fails
$writer = $primary->background_psql('postgres');
$writer->query_safe('BEGIN');
$writer->query_safe('UPDATE account SET balance = balance + 1 WHERE id = 4');
$writer->query_safe('INSERT INTO writes (account_id) VALUES (-4)');
$plan = $primary->safe_psql('postgres',
    "SELECT connect_prepare_upgrade('follower', follower => \$\$$follower_conninfo\$\$, max_lag_bytes => 100000000, timeout => '2 s')");
ok($primary->poll_query_until('postgres', "SELECT status = 'failed' FROM connect_upgrade_status WHERE plan = $plan"),
    'a writer that outlasts the timeout fails the plan at fencing');
is(plan_is($plan), 'failed fencing', 'at fencing');
like($primary->safe_psql('postgres', "SELECT last_error FROM connect_upgrade_status WHERE plan = $plan"),
    qr/^could not fence the database within 00:00:02: writers still in flight/, 'with a clear last_error');
is(fences($primary) . fences($follower), '00', 'no fence is left up');
is(state(), 'PAUSED', 'the connection stays paused until the plan is aborted');
$writer->query_safe('COMMIT');
$writer->quit;
is($primary->safe_psql('postgres', "SELECT connect_abort_upgrade($plan)"), 'aborted', 'aborted');
is(state(), 'IDLE', 'the connection is resumed');
consume_via($primary, 'old');

# catching_up: the follower's replay is paused; both are fenced
$follower->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
$plan = prepare($follower_conninfo);
ok($primary->poll_query_until('postgres',
    "SELECT step = 'catching_up' AND follower_lag_bytes > 0 FROM connect_upgrade_status WHERE plan = $plan"),
    'the plan waits for the follower at catching_up');
is(state(), 'PAUSED', 'the connection is paused');
is(fences($primary) . fences($follower), '11', 'the primary and the follower are fenced');
is(write_error($primary, 'INSERT INTO account VALUES (1000)'), '25006', 'the primary refuses writes');
is($primary->safe_psql('postgres', "SELECT connect_abort_upgrade($plan, 'abort at catching_up')"), 'aborted', 'aborted at catching_up');
is(plan_is($plan), 'aborted aborted', 'the plan is aborted');
is(state(), 'IDLE', 'the connection is resumed');
is(fences($primary) . fences($follower), '00', 'both fences are lowered');
is(write_error($primary, 'INSERT INTO writes (account_id) VALUES (NULL)'), '', 'writes go on');
$follower->safe_psql('postgres', 'SELECT pg_wal_replay_resume()');
consume_via($primary, 'old');

# ready
$plan = prepare($follower_conninfo);
is($primary->safe_psql('postgres', "SELECT connect_wait_upgrade($plan, 'ready', '60 s')"), 'ready', 'the plan is ready');
is(fences($primary) . fences($follower), '11', 'the primary and the follower are fenced');
is($primary->safe_psql('postgres', "SELECT connect_abort_upgrade($plan, 'abort at ready')"), 'aborted', 'aborted at ready');
is(plan_is($plan), 'aborted aborted', 'the plan is aborted');
is(state(), 'IDLE', 'the connection is resumed');
is(fences($primary) . fences($follower), '00', 'both fences are lowered');
($rc, $o, $e) = $primary->psql('postgres', "SELECT connect_promote_follower($plan)");
like($e, qr/is not a ready follower changeover/, 'an aborted plan cannot promote');
($rc, $o, $e) = $primary->psql('postgres', "SELECT connect_abort_upgrade($plan)");
like($e, qr/is already aborted/, 'nor be aborted twice');
is($primary->safe_psql('postgres',
    "SELECT string_agg(step, ' ') FROM connect_upgrade_timeline($plan)"),
    'checking pausing fencing fencing_follower catching_up ready aborted', 'its timeline');

# ------------------------------------------------------------------------
# (b) crashes during one changeover
# ------------------------------------------------------------------------

# pausing, under load: an open batch holds the plan; kill -9 of the worker
write_one(4);
$held = $primary->safe_psql('postgres', "SELECT connect_next_batch('sync')");
my $bench = start_pgbench($primary, [ '-c', '2', '-T', '30', '--max-tries', '1' ], script => $script);
$plan = prepare($follower_conninfo);
# a fence on the follower left by an earlier try of fencing_follower whose
# answer was lost (it commits there first): the plan must reuse it
$follower->safe_psql('postgres',
    "SELECT connect_guard.fence_raise('database', NULL, NULL, 'upgrade plan $plan: fenced until the plan completes on this server', '{}', '{}')");
ok($primary->poll_query_until('postgres',
    "SELECT step = 'pausing' AND paused_connections <> '{}' FROM connect_guard.upgrade_plan WHERE plan_id = $plan"),
    "plan $plan waits at pausing for batch $held");
$bench->pump_nb if $bench->pumpable;
kill_worker();
$bench->pump_nb while $bench->pumpable;    # the crash ended pgbench's sessions
$bench->finish;
note 'pgbench: ' . $bench->summary;
is(plan_is($plan), 'running pausing', 'after the crash restart the plan is still at pausing');
is(state(), 'POLLING_DB_CHANGES', 'nothing paused yet: the batch is still open');

# fencing: a writer in flight; the follower's replay paused for later
$follower->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
$writer = $primary->background_psql('postgres');
$writer->query_safe('BEGIN');
$writer->query_safe('UPDATE account SET balance = balance + 1 WHERE id = 5');
$writer->query_safe('INSERT INTO writes (account_id) VALUES (-5)');
ok(consume_via($primary, 'old') >= 1, 'the consumer takes the open batch again and finishes it');
ok($primary->poll_query_until('postgres', worker_waits_sql()), 'the plan waits at fencing for the writer in flight');
is(plan_is($plan), 'running fencing', 'at fencing');
kill_worker();
eval { $writer->quit };    # its session died with the crash
# the fencing step had not committed: its fence went with the crash, as a
# fence whose raise did not commit must (017_fence_holes.pl), and the plan
# raises it again (a write in between comes before the fence LSN the plan
# records, so the follower has it)
ok($primary->poll_query_until('postgres', 'SELECT count(*) = 1 FROM connect_fences'),
    'the plan raises its fence again after the crash');
is(write_error($primary, 'INSERT INTO writes (account_id) VALUES (NULL)'), '25006',
    'the fence is back');
ok($primary->poll_query_until('postgres',
    "SELECT step = 'catching_up' AND follower_lag_bytes > 0 FROM connect_upgrade_status WHERE plan = $plan"),
    'the plan resumes: fenced, the follower fenced, waiting at catching_up');
is(fences($primary) . fences($follower), '11', 'one fence on the primary, one on the follower (reused)');
is($primary->safe_psql('postgres', "SELECT fence_id FROM connect_guard.upgrade_plan WHERE plan_id = $plan"),
    $primary->safe_psql('postgres', 'SELECT fence_id FROM connect_fences'), 'the plan owns it');

# catching_up: kill -9 of the postmaster
kill9_postmaster($primary);
is(write_error($primary, 'INSERT INTO writes (account_id) VALUES (NULL)'), '25006', 'fenced after kill -9 of the postmaster');
is(plan_is($plan), 'running catching_up', 'the plan is still at catching_up');
$follower->safe_psql('postgres', 'SELECT pg_wal_replay_resume()');
is($primary->safe_psql('postgres', "SELECT connect_wait_upgrade($plan, 'ready', '60 s')"), 'ready',
    'the follower catches up: ready');

# ready: kill -9 of the worker
kill_worker();
is(plan_is($plan), 'ready ready', 'still ready after the crash restart');
is(fences($primary) . fences($follower), '11', 'the primary and the follower are fenced');
is(write_error($primary, 'INSERT INTO account VALUES (1001)'), '25006', 'the primary refuses writes');

# ready: kill -9 of the postmaster
kill9_postmaster($primary);
is(plan_is($plan), 'ready ready', 'still ready after kill -9 of the postmaster');
is(fences($primary) . fences($follower), '11', 'the primary and the follower are still fenced');
is(write_error($primary, 'INSERT INTO account VALUES (1001)'), '25006', 'the primary refuses writes');

is($primary->safe_psql('postgres', "SELECT connect_promote_follower($plan)"), 'promoted', 'promoted');
ok($follower->poll_query_until('postgres',
    "SELECT status = 'completed' FROM connect_upgrade_status WHERE plan = $plan"),
    'the promoted follower completes the plan');
is(fences($follower), '0', 'and lifts its fence');
is($follower->safe_psql('postgres', 'SELECT state FROM connect_connections'), 'IDLE', 'and resumes the connection');
ok($primary->poll_query_until('postgres',
    "SELECT status = 'handed_over' FROM connect_upgrade_status WHERE plan = $plan"),
    'the old primary sees the hand-over');
is(write_error($primary, 'INSERT INTO account VALUES (1002)'), '25006', 'and stays fenced');

# counting, on the new primary
account_write($follower, 7);
consume_via($follower, 'new');
my $writes = $follower->safe_psql('postgres', 'SELECT count(*) FROM writes WHERE account_id IS NOT NULL');
my $log = whole_log();
is($follower->safe_psql('postgres', "SELECT count(*) FROM $log l"), $writes, "$writes committed writes, as many log entries");
is($follower->safe_psql('postgres', 'SELECT count(DISTINCT entry_id) FROM consumed'), $writes, 'all delivered');
is($follower->safe_psql('postgres', 'SELECT count(*) FROM consumed'), $writes, 'none twice');
is($follower->safe_psql('postgres', "SELECT count(*) FROM consumed c WHERE NOT EXISTS (SELECT 1 FROM $log l WHERE l.id = c.entry_id)"),
    '0', 'every delivery is a log entry');
is($follower->safe_psql('postgres', 'SELECT count(*) FROM writes WHERE account_id = -3'), '1', 'the writer that committed during the aborted fencing counts once');
is($follower->safe_psql('postgres', 'SELECT count(*) FROM writes WHERE account_id = -5'), '0', 'the writer killed by the crash wrote nothing');

note_timeline($follower, $plan);
$primary->stop;
$follower->stop;
done_testing();
