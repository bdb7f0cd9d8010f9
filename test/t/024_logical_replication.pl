# Logical replication into a mapped table, with two real clusters: a
# publisher (wal_level = logical, no connect_guard) and a subscriber with
# connect_guard, whose apply and table-sync workers write with
# session_replication_role = replica, where a capture trigger enabled in the
# origin role stays silent.
#   - CREATE SUBSCRIPTION whose publication holds a mapped table is refused,
#     leaves no subscription and no slot on the publisher, applies nothing;
#   - ALTER SUBSCRIPTION ... REFRESH PUBLICATION that would add one is
#     refused, and the table stays out of pg_subscription_rel;
#   - a subscription made before its table was mapped is reported when it is
#     mapped (subscription_target, SCHEMA_CHANGED, reload due), and
#     connect_save_mapping() enables the triggers ALWAYS: from then on the
#     applied rows are logged; a catalog changed by hand is found by the
#     worker's cycle;
#   - with the capture triggers ENABLE ALWAYS the subscription is accepted,
#     and every row it applies (the initial copy, then the stream) reaches
#     the log exactly once: counted per action and per row;
#   - a fence (connect_fence, connect_pause) holds against the apply worker,
#     which starts no executor: the capture trigger refuses each applied row
#     (25006 in the server log), nothing reaches the table or the log while
#     fenced, and once lowered every row arrives, logged exactly once; a
#     replicated TRUNCATE is held too.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ConnectGuard::Test;

my $publisher = PostgreSQL::Test::Cluster->new('publisher');
$publisher->init(allows_streaming => 'logical');
$publisher->start;
my $subscriber = cg_node('subscriber',
	conf => [
		"connect_guard.naptime = '200ms'", "connect_guard.witness_directory = ''",
		# the SQLSTATE in the server log; an apply worker refused retries soon
		'log_error_verbosity = verbose', "wal_retrieve_retry_interval = '500ms'"
	]);
(my $pubconn = $publisher->connstr('postgres')) =~ s/'/''/g;    # inside a literal

my $tables = 'CREATE TABLE contact (id int PRIMARY KEY, name text);
              CREATE TABLE lead (id int PRIMARY KEY, name text);';
sql($publisher, "$tables
    INSERT INTO contact SELECT g, 'c' || g FROM generate_series(1, 3) g;
    INSERT INTO lead SELECT g, 'l' || g FROM generate_series(1, 2) g;
    CREATE PUBLICATION pub_contact FOR TABLE contact;
    CREATE PUBLICATION pub_lead FOR TABLE lead;");
sql($subscriber, "CREATE EXTENSION connect_guard; $tables
    SELECT connect_create_connection('sync');
    SELECT connect_map_table('sync', 'contact');");

sub entries
{
	my ($table, $where) = @_;
	return sql($subscriber,
		"SELECT count(*) FROM connect_guard.trigger_log WHERE table_name = '$table'"
		  . ($where ? " AND $where" : ''));
}

sub slots { return sql($publisher, 'SELECT count(*) FROM pg_replication_slots'); }

# 1. CREATE SUBSCRIPTION into a mapped table whose capture trigger is enabled in the origin role
my ($rc, $out, $err) = $subscriber->psql('postgres',
	"\\set VERBOSITY verbose\nCREATE SUBSCRIPTION sub_contact CONNECTION '$pubconn' PUBLICATION pub_contact");
like($err, qr/ERROR:\s+55000: cannot create subscription "sub_contact"/, 'CREATE SUBSCRIPTION refused (55000)');
like($err, qr/_connect_guard_capture on public\.contact/, 'the error names the mapped table and its trigger');
like($err, qr/slot "sub_contact" it created on the publisher is dropped again/, 'and says its slot is dropped');
is(sql($subscriber, 'SELECT count(*) FROM pg_subscription'), '0', 'no subscription left');
is(slots(), '0', 'no replication slot left on the publisher');
is(sql($subscriber, 'SELECT count(*) FROM contact'), '0', 'nothing applied');

# 2. A subscription of unmapped tables is fine; REFRESH that would add the mapped one is refused
sql($subscriber, "CREATE SUBSCRIPTION sub_lead CONNECTION '$pubconn' PUBLICATION pub_lead");
$subscriber->wait_for_subscription_sync($publisher, 'sub_lead');
is(sql($subscriber, 'SELECT count(*) FROM lead'), '2', 'an unmapped table is replicated');
sql($publisher, 'ALTER PUBLICATION pub_lead ADD TABLE contact');
is(write_error($subscriber, 'ALTER SUBSCRIPTION sub_lead REFRESH PUBLICATION'), '55000',
	'REFRESH PUBLICATION adding the mapped table refused');
is(sql($subscriber, "SELECT count(*) FROM pg_subscription_rel WHERE srrelid = 'contact'::regclass"),
	'0', 'the mapped table is not among its tables');
sql($publisher, 'ALTER PUBLICATION pub_lead DROP TABLE contact');
is(slots(), '1', "the publisher keeps only sub_lead's slot");

# 3. Mapping a table a subscription already writes into: reported at once, reload due
my $events = sql($subscriber, "SELECT count(*) FROM connect_guard.event WHERE kind = 'schema_changed'");
sql($subscriber, "SELECT connect_map_table('sync', 'lead')");
is( sql($subscriber,
		"SELECT string_agg(format('%s %s %s %s', kind, object, needs_reload, detected_by), ', ' ORDER BY object)
		   FROM connect_schema_drift WHERE table_relname = 'lead'"),
	'subscription_target _connect_guard_capture on public.lead t map, '
	  . 'subscription_target _connect_guard_truncate on public.lead t map',
	'connect_map_table reports subscription_target');
is(sql($subscriber, "SELECT state FROM connect_mappings WHERE table_relname = 'lead'"),
	'SCHEMA_CHANGED', 'the mapping is SCHEMA_CHANGED');
is(sql($subscriber, "SELECT count(*) FROM connect_guard.event WHERE kind = 'schema_changed'") - $events,
	1, 'one schema_changed event');
# saving enables connect_guard's own triggers ALWAYS: the rows applied from then on are logged
sql($subscriber, "SELECT connect_save_mapping('sync', 'lead', reload => false)");
is( sql($subscriber,
		"SELECT string_agg(tgname || '=' || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger
		  WHERE tgrelid = 'lead'::regclass AND NOT tgisinternal"),
	'_connect_guard_capture=A,_connect_guard_truncate=A', 'the save enables them ALWAYS');
is(entries('lead'), '0', 'no lead entry yet');
sql($publisher, "INSERT INTO lead VALUES (3, 'l3'), (4, 'l4'); UPDATE lead SET name = 'x' WHERE id = 1");
$publisher->wait_for_catchup('sub_lead');
is(entries('lead', "action = 'INSERT'") . '/' . entries('lead', "action = 'UPDATE'"), '2/1',
	'the applied rows are logged once each');
# a catalog changed by hand is the worker's to find
sql($subscriber, "UPDATE pg_trigger SET tgenabled = 'O'
                   WHERE tgrelid = 'lead'::regclass AND tgname = '_connect_guard_capture'");
ok( $subscriber->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM connect_schema_drift
		  WHERE table_relname = 'lead' AND kind = 'subscription_target' AND detected_by = 'worker'"),
	"the worker's cycle finds the trigger put back in the origin role by hand");
sql($subscriber, 'DROP SUBSCRIPTION sub_lead');
is(slots(), '0', 'DROP SUBSCRIPTION took its slot');

# 4. With the capture triggers ENABLE ALWAYS the subscription is accepted, and every applied row is
# logged exactly once: the initial copy (3 rows), then the stream
sql($subscriber, 'ALTER TABLE contact ENABLE ALWAYS TRIGGER _connect_guard_capture,
                                      ENABLE ALWAYS TRIGGER _connect_guard_truncate');
is(write_error($subscriber,
		"CREATE SUBSCRIPTION sub_contact CONNECTION '$pubconn' PUBLICATION pub_contact"),
	'', 'CREATE SUBSCRIPTION accepted with the triggers ALWAYS');
$subscriber->wait_for_subscription_sync($publisher, 'sub_contact');
is(entries('contact'), '3', 'the initial copy: 3 entries');
sql($publisher, "INSERT INTO contact SELECT g, 'c' || g FROM generate_series(4, 8) g");
sql($publisher, "UPDATE contact SET name = 'u' || id WHERE id IN (1, 2)");
sql($publisher, 'DELETE FROM contact WHERE id = 8');
$publisher->wait_for_catchup('sub_contact');
is(sql($subscriber, 'SELECT count(*) FROM contact'), '7', 'the subscriber has the 7 rows');
is( sql($subscriber,
		"SELECT string_agg(action || ':' || n, ',' ORDER BY action)
		   FROM (SELECT action, count(*) n FROM connect_guard.trigger_log
		          WHERE table_name = 'contact' GROUP BY action) a"),
	'DELETE:1,INSERT:8,UPDATE:2', 'every applied change logged: 8 inserts, 2 updates, 1 delete');
is( sql($subscriber,
		"SELECT string_agg(record_id, ',' ORDER BY record_id::int) FROM connect_guard.trigger_log
		  WHERE table_name = 'contact' AND action = 'INSERT'"),
	'1,2,3,4,5,6,7,8', 'each inserted row exactly once');
is( sql($subscriber,
		"SELECT count(*) FROM (SELECT record_id, action, \"values\" FROM connect_guard.trigger_log
		  WHERE table_name = 'contact' GROUP BY 1, 2, 3 HAVING count(*) > 1) d"),
	'0', 'no entry twice');
# the table is what the mapping expects while the subscription writes into it: saving settles trigger_always
sql($subscriber, "SELECT connect_save_mapping('sync', 'contact', reload => false)");
is(sql($subscriber, "SELECT count(*) FROM connect_schema_drift WHERE table_relname = 'contact'"),
	'0', 'nothing left open for contact');
is( sql($subscriber,
		"SELECT string_agg(tgenabled::text, ',') FROM pg_trigger
		  WHERE tgrelid = 'contact'::regclass AND NOT tgisinternal"),
	'A,A', 'its triggers stay ALWAYS');

# 5. The fence holds against the apply worker, which starts no executor: the capture trigger
# (ALWAYS) refuses each applied row under a fence, the worker exits and retries, and the rows
# arrive, logged once each, when the fence is lowered
my ($rows_before, $entries_before) = (sql($subscriber, 'SELECT count(*) FROM contact'), entries('contact'));
sql($subscriber, "SELECT connect_fence('mapped', 'apply test')");
is(sql($subscriber, "SELECT connect_pause('sync', reason => 'apply test')"), 'PAUSED', 'paused too');
my $offset = -s $subscriber->logfile;
sql($publisher, "INSERT INTO contact SELECT g, 'f' || g FROM generate_series(101, 120) g");
$offset = $subscriber->wait_for_log(
	qr/ERROR:\s+25006: cannot INSERT into table public\.contact[,:][^\n]*\n(?:[^\n]*\n){0,8}?[^\n]*processing remote data/,
	$offset);
pass('the apply worker is refused with 25006 under both fences (server log)');
# it retries every wal_retrieve_retry_interval: another refusal, and still nothing arrived
$subscriber->wait_for_log(qr/ERROR:\s+25006: cannot INSERT into table public\.contact/, $offset);
sleep 2;
is(sql($subscriber, 'SELECT count(*) FROM contact'), $rows_before, 'fenced: no applied row reached the table');
is(entries('contact'), $entries_before, 'fenced: nor the log');
# the maintenance fence lowered, the pause still holds
sql($subscriber, 'SELECT connect_unfence()');
$offset = $subscriber->wait_for_log(
	qr/ERROR:\s+25006: cannot INSERT into table public\.contact: it is fenced while connection "sync" is paused/,
	-s $subscriber->logfile);
pass('after connect_unfence() the pause alone refuses the apply worker');
sleep 2;
is(sql($subscriber, 'SELECT count(*) FROM contact'), $rows_before, 'paused: no applied row reached the table');
is(entries('contact'), $entries_before, 'paused: nor the log');
is(sql($subscriber, "SELECT connect_resume('sync')"), 'IDLE', 'resumed');
$publisher->wait_for_catchup('sub_contact');
is(sql($subscriber, 'SELECT count(*) FROM contact WHERE id BETWEEN 101 AND 120'), '20',
	'resumed: the 20 rows arrived');
is( sql($subscriber,
		"SELECT count(*) || '/' || count(DISTINCT record_id) FROM connect_guard.trigger_log
		  WHERE table_name = 'contact' AND action = 'INSERT' AND record_id::int BETWEEN 101 AND 120"),
	'20/20', 'each logged exactly once');
is(entries('contact'), $entries_before + 20, 'and nothing else logged');
# a replicated TRUNCATE (the apply worker calls no utility hook either) is held as well
sql($subscriber, "SELECT connect_fence('mapped', 'apply test')");
$offset = -s $subscriber->logfile;
sql($publisher, 'TRUNCATE contact');
$subscriber->wait_for_log(qr/ERROR:\s+25006: cannot TRUNCATE table public\.contact/, $offset);
is(sql($subscriber, 'SELECT count(*) FROM contact'), $rows_before + 20, 'fenced: the TRUNCATE is held');
sql($subscriber, 'SELECT connect_unfence()');
$publisher->wait_for_catchup('sub_contact');
is(sql($subscriber, 'SELECT count(*) FROM contact'), '0', 'unfenced: the TRUNCATE is applied');
is(entries('contact', "action = 'TRUNCATE'"), '1', 'and logged once');

sql($subscriber, 'DROP SUBSCRIPTION sub_contact');

# a local statement in flight when a fence goes up was checked at its start:
# its rows, captured as it finishes, are not refused; the fence waits for it
my $writer = $subscriber->background_psql('postgres', on_error_stop => 0);
$writer->query_until(qr/started/, "\\echo started\nINSERT INTO contact SELECT 500, 'in flight' FROM pg_sleep(2);\n");
ok($subscriber->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
		WHERE query LIKE 'INSERT INTO contact SELECT 500%' AND state = 'active'}), 'a statement is in flight');
sql($subscriber, "SELECT connect_fence('mapped', 'in flight test')");
like($writer->query('SELECT count(*) FROM contact WHERE id = 500'), qr/^1$/,
	'the statement in flight when the fence went up ended as it would have');
is(entries('contact', "record_id = '500'"), '1', 'and its row is logged once');
$writer->quit;
sql($subscriber, 'SELECT connect_unfence()');
$subscriber->stop;
$publisher->stop;
done_testing();
