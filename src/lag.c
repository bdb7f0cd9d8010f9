/*
 * lag.c
 *		Follower lag: for every follower registered with
 *		connect_add_follower(), whether it is a standby of this primary at
 *		all, and how far behind it is, in bytes and seconds.
 *
 * Why libpq and not only pg_stat_replication: pg_stat_replication shows the
 * walsenders of this server only.  A follower that streams from another
 * standby, restores from an archive, or is not connected at the moment is
 * not there, and whether a server is a standby of this primary at all
 * (system identifier, recovery, timeline) can only be asked of the server
 * itself.  The follower changeover runbook needs exactly that answer before
 * it promotes, so a follower is never reported as caught up unless it is a
 * standby of this primary, on a timeline no newer than ours, that had
 * replayed everything this primary had written when its answer arrived.  Anything else
 * (down, wrong password, another cluster, a primary, a permission error on
 * the follower) is recorded with an error and NULL lag; a CHECK constraint
 * on follower_status holds us to that.
 *
 * Waiting: remote.c connects (PQconnectStartParams/PQconnectPoll) and queries
 * (PQsendQuery/PQconsumeInput) without blocking, and every wait is a
 * WaitLatchOrSocket bounded by one deadline per follower,
 * connect_guard.follower_timeout, so a follower that is down, a firewall
 * that drops packets or a server that hangs costs at most that long, and a
 * cancel or a shutdown interrupts the wait.  The one blocking step is host
 * name resolution, which libpq does synchronously: use hostaddr= where DNS
 * may be slow.
 *
 * Transactions: the worker holds no transaction, snapshot or lock while it
 * talks to followers: it reads the list in one transaction, commits, checks
 * the followers, and writes the results in another.  connect_check_followers()
 * runs inside its caller's transaction throughout; that is the price of a
 * synchronous answer, and it is meant for runbooks and tests.
 *
 * Locking: no shared state.  A result is written only if its follower still
 * exists with the conninfo that was checked (its row is locked FOR KEY
 * SHARE, so a concurrent connect_remove_follower() either waits or wins),
 * and never over a newer result (checked_at), so the worker and a
 * concurrent connect_check_followers() cannot leave a stale row behind.
 */
#include "postgres.h"

#include <ctype.h>
#include <math.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog_names.h"
#include "lag.h"
#include "remote.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(connect_guard_check_followers);
PG_FUNCTION_INFO_V1(connect_guard_conninfo_masked);
PG_FUNCTION_INFO_V1(connect_guard_follower_probe);
PG_FUNCTION_INFO_V1(connect_guard_follower_probe_after_replay);

/* GUC variables */
int			lag_follower_timeout_ms = 5000;

/* What replaces a secret in a conninfo shown to anyone (as redact() does for options) */
#define CONNINFO_MASK "********"

/* Columns of connect_guard.follower_status, in table order */
#define STATUS_NATTS 11

/*
 * What is asked of a follower.  pg_is_in_recovery() is read once, in a
 * subquery that is not flattened (its target list is volatile), so that a
 * promotion during the query cannot send a standby down the primary's
 * branch of the CASE, where pg_current_wal_lsn() would fail.
 *
 * The timeline: a standby's is the one its WAL receiver last received.
 * Without a WAL receiver (restoring from an archive, or no pg_read_all_stats
 * to see it) we fall back on the last checkpoint's, which lags: it stays on
 * the old timeline until a restartpoint after the switch.  A server that is
 * not in recovery writes on the timeline in its current WAL file's name;
 * pg_control_checkpoint() would again lag behind a promotion until the
 * end-of-recovery checkpoint completes.
 *
 * The replay delay is taken on the follower (its now() minus the commit
 * time of the last transaction it replayed), so it includes any clock skew
 * between the two hosts; it only counts when the follower is behind.
 */
#define FOLLOWER_QUERY \
	"SELECT r.in_recovery," \
	"       pg_catalog.pg_last_wal_replay_lsn()," \
	"       pg_catalog.pg_last_wal_receive_lsn()," \
	"       (SELECT c.system_identifier FROM pg_catalog.pg_control_system() c)," \
	"       CASE WHEN r.in_recovery" \
	"            THEN coalesce((SELECT w.received_tli FROM pg_catalog.pg_stat_wal_receiver w)," \
	"                          (SELECT k.timeline_id FROM pg_catalog.pg_control_checkpoint() k))" \
	"            ELSE ('x' OPERATOR(pg_catalog.||) pg_catalog.left(pg_catalog.pg_walfile_name(" \
	"                      pg_catalog.pg_current_wal_lsn()), 8))::pg_catalog.bit(32)::pg_catalog.int4" \
	"       END," \
	"       pg_catalog.date_part('epoch', pg_catalog.now()" \
	"           OPERATOR(pg_catalog.-) pg_catalog.pg_last_xact_replay_timestamp())," \
	"       pg_catalog.current_database()" \
	"  FROM (SELECT pg_catalog.pg_is_in_recovery() AS in_recovery) r"
#define FOLLOWER_QUERY_NATTS 7

/*
 * Asked first, on the same connection, when the follower is to answer once
 * it has replayed up to an LSN (or waited so many ms for it): a procedure
 * (standby.c) that holds no snapshot while it waits.
 */
#define FOLLOWER_WAIT_CALL "CALL connect_guard.wait_for_replay('%X/%X', %d)"

/*
 * The write: only for a follower that still exists with the conninfo that
 * was checked, and never over a newer result (see the header comment).
 */
#define WRITE_STATUS \
	"INSERT INTO connect_guard.follower_status AS s" \
	"  (name, checked_at, reachable, error, in_recovery, system_identifier_matches," \
	"   timeline, replay_lsn, receive_lsn, lag_bytes, lag_seconds)" \
	" SELECT f.name, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11" \
	"   FROM connect_guard.follower f" \
	"  WHERE f.name OPERATOR(pg_catalog.=) $1 AND f.conninfo OPERATOR(pg_catalog.=) $12" \
	"    FOR KEY SHARE OF f" \
	" ON CONFLICT (name) DO UPDATE SET" \
	"   checked_at = excluded.checked_at, reachable = excluded.reachable, error = excluded.error," \
	"   in_recovery = excluded.in_recovery," \
	"   system_identifier_matches = excluded.system_identifier_matches," \
	"   timeline = excluded.timeline, replay_lsn = excluded.replay_lsn," \
	"   receive_lsn = excluded.receive_lsn, lag_bytes = excluded.lag_bytes," \
	"   lag_seconds = excluded.lag_seconds" \
	" WHERE s.checked_at OPERATOR(pg_catalog.<=) excluded.checked_at"

/* One follower: what was registered, then what the check found. */
typedef struct FollowerCheck
{
	char	   *name;
	char	   *conninfo;
	XLogRecPtr	wait_for;		/* if valid, the follower replays this first */

	TimestampTz checked_at;
	bool		reachable;		/* a connection was established */
	char	   *error;			/* NULL when the follower is a healthy standby */
	bool		answered;		/* the query returned: in_recovery, sysid
								 * valid */
	bool		in_recovery;
	bool		sysid_matches;
	bool		has_timeline;
	int32		timeline;
	bool		has_replay;
	XLogRecPtr	replay_lsn;
	bool		has_receive;
	XLogRecPtr	receive_lsn;
	bool		has_delay;
	double		delay_seconds;	/* follower's now() - last replayed commit */
	bool		has_lag;		/* lag_bytes valid; only when error is NULL */
	int64		lag_bytes;
	bool		has_lag_seconds;
	double		lag_seconds;
	char	   *database;		/* the database the conninfo reached, when
								 * answered */
} FollowerCheck;

/*
 * What a check compares the follower with: this primary when the follower's
 * answer arrived.  The position is the WAL written, as pg_current_wal_lsn()
 * gives it: an asynchronous commit counts once the WAL writer has written
 * it (within wal_writer_delay).
 */
typedef struct PrimaryPosition
{
	XLogRecPtr	lsn;
	TimeLineID	timeline;
	char		sysid[32];		/* as pg_control_system() prints it */
} PrimaryPosition;

static bool followers_catalog_present(void);
static List *read_followers(MemoryContext cxt);
static void write_results(List *checks);
static void check_follower(FollowerCheck *check);
static void status_datums(FollowerCheck *check, Datum *values, bool *nulls);
static char *mask_conninfo(const char *conninfo, char **error);

/*
 * lag_init defines the setting.  Call it before the connect_guard prefix is
 * reserved, so that a value set in postgresql.conf is kept.
 */
void
lag_init(void)
{
	DefineCustomIntVariable("connect_guard.follower_timeout",
							"How long one follower may take to accept a connection and answer the lag query.",
							"A follower that takes longer is reported unreachable; the checks "
							"run one follower after another, so a cycle takes at most this "
							"long per follower.",
							&lag_follower_timeout_ms,
							5000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/* ------------------------------------------------------------------------
 * Entry points
 * ------------------------------------------------------------------------ */

/* read_followers_step and write_results_step: lag_check_followers' two worker steps */
typedef struct LagSteps
{
	MemoryContext cxt;
	List	   *checks;
} LagSteps;

static void
read_followers_step(void *arg)
{
	LagSteps   *steps = (LagSteps *) arg;

	steps->checks = read_followers(steps->cxt);
}

static void
write_results_step(void *arg)
{
	LagSteps   *steps = (LagSteps *) arg;

	/* DROP EXTENSION may have run while we were away */
	if (followers_catalog_present())
		write_results(steps->checks);
}

/*
 * lag_check_followers is the worker's step: the list is read and the
 * results written in worker steps of their own (worker_run_step: an error
 * is logged and ends this cycle's checks, never the worker), and the
 * followers are checked between them, with no transaction open.  An
 * interrupt while a follower is checked (a cancel) is reported the same way.
 */
void
lag_check_followers(void)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	LagSteps	steps;

	Assert(!IsTransactionState());

	/*
	 * a standby cannot write the results, and has no WAL position of its own
	 * to compare
	 */
	if (RecoveryInProgress())
		return;

	steps.cxt = AllocSetContextCreate(TopMemoryContext, "connect_guard follower lag",
									  ALLOCSET_DEFAULT_SIZES);
	steps.checks = NIL;
	if (worker_run_step("connect_guard: reading the followers", read_followers_step, &steps, NULL) &&
		steps.checks != NIL)
	{
		volatile bool checked = true;

		if (IsBackgroundWorker)
			pgstat_report_activity(STATE_RUNNING, "connect_guard: checking followers");
		PG_TRY();
		{
			ListCell   *lc;

			MemoryContextSwitchTo(steps.cxt);
			foreach(lc, steps.checks)
				check_follower(lfirst(lc));
		}
		PG_CATCH();
		{
			HOLD_INTERRUPTS();
			MemoryContextSwitchTo(oldcxt);
			errcontext("connect_guard: checking followers");
			EmitErrorReport();
			FlushErrorState();
			RESUME_INTERRUPTS();
			checked = false;
		}
		PG_END_TRY();
		MemoryContextSwitchTo(oldcxt);
		if (checked)
			(void) worker_run_step("connect_guard: writing the follower checks", write_results_step, &steps, NULL);
	}
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(steps.cxt);
}

/*
 * connect_guard_check_followers runs the worker's checks now, in the
 * caller's transaction, records them, and returns them, so that a runbook
 * can wait for a follower without waiting for the worker.
 */
Datum
connect_guard_check_followers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt = CurrentMemoryContext;
	List	   *checks;
	ListCell   *lc;

	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot check followers on a server in recovery"),
				 errdetail("Follower lag is measured against the primary's current WAL position, and the results are written to a table."),
				 errhint("Run connect_check_followers() on the primary.")));

	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != STATUS_NATTS)
		elog(ERROR, "connect_guard.follower_status has %d columns, expected %d",
			 rsinfo->setDesc->natts, STATUS_NATTS);

	/* SPI's memory goes at SPI_finish: the checks live in ours */
	SPI_connect();
	checks = read_followers(cxt);
	SPI_finish();
	foreach(lc, checks)
		check_follower(lfirst(lc));
	SPI_connect();
	write_results(checks);
	SPI_finish();

	/* what was found, even for a follower removed meanwhile: it was checked */
	foreach(lc, checks)
	{
		Datum		values[STATUS_NATTS];
		bool		nulls[STATUS_NATTS];

		status_datums(lfirst(lc), values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* appends "key": value to a JSON object being built, the value a JSON string or null */
static void
append_json_text(StringInfo buf, const char *key, const char *value)
{
	appendStringInfo(buf, ", \"%s\": ", key);
	if (value == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, value);
}

/*
 * probe_follower checks one follower exactly as the worker does
 * (check_follower, and judge_answer's verdict), for the upgrade plans, and
 * returns what it found as jsonb: answered (the lag query returned),
 * reachable, error (NULL only for a standby of this primary that has
 * replayed WAL), in_recovery, system_identifier_matches, database,
 * timeline, replay_lsn (NULL for another cluster's server) and lag_bytes
 * (from this primary's position when the answer arrived).  Bounded by
 * connect_guard.follower_timeout; never raises for the follower's problems,
 * only for an interrupt.
 *
 * With wait_for valid, the follower first waits (a second at most, half
 * the timeout) until it has replayed that far, and answers then: one query
 * instead of a poll.  What it must replay is this primary's to send, so WAL
 * is flushed up to there first (an asynchronous commit would otherwise wait
 * for the WAL writer: walsenders send only flushed WAL).
 */
static Datum
probe_follower(const char *conninfo, XLogRecPtr wait_for)
{
	FollowerCheck check;
	StringInfoData buf;

	memset(&check, 0, sizeof(check));
	check.name = "upgrade plan follower";
	check.conninfo = pstrdup(conninfo);
	check.wait_for = wait_for;
	if (!XLogRecPtrIsInvalid(check.wait_for))
		XLogFlush(Min(check.wait_for, GetXLogInsertRecPtr()));
	check_follower(&check);

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"answered\": %s, \"reachable\": %s",
					 check.answered ? "true" : "false", check.reachable ? "true" : "false");
	append_json_text(&buf, "error", check.error);
	append_json_text(&buf, "in_recovery", check.answered ? (check.in_recovery ? "t" : "f") : NULL);
	append_json_text(&buf, "system_identifier_matches",
					 check.answered ? (check.sysid_matches ? "t" : "f") : NULL);
	append_json_text(&buf, "database", check.database);
	append_json_text(&buf, "timeline", check.has_timeline ? psprintf("%d", check.timeline) : NULL);
	append_json_text(&buf, "replay_lsn",
					 check.has_replay ? psprintf("%X/%X", LSN_FORMAT_ARGS(check.replay_lsn)) : NULL);
	append_json_text(&buf, "lag_bytes", check.has_lag ? psprintf(INT64_FORMAT, check.lag_bytes) : NULL);
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

/* connect_guard.follower_probe(conninfo): the follower as it is (1.0) */
Datum
connect_guard_follower_probe(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(probe_follower(text_to_cstring(PG_GETARG_TEXT_PP(0)), InvalidXLogRecPtr));
}

/*
 * connect_guard.follower_probe_after_replay(conninfo, replayed): the
 * follower once it has replayed up to replayed, or waited for it (1.1)
 */
Datum
connect_guard_follower_probe_after_replay(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(probe_follower(text_to_cstring(PG_GETARG_TEXT_PP(0)), PG_GETARG_LSN(1)));
}

/*
 * connect_guard_conninfo_masked returns a conninfo with its secrets (the
 * options libpq itself marks as passwords) replaced, so that views and
 * events can show where a follower is without its password.  With
 * raise_error it also validates the conninfo, which is how
 * connect_add_follower() rejects a malformed one; without, a conninfo that
 * no longer parses (a libpq upgrade dropped an option) shows as such rather
 * than breaking the view.
 */
Datum
connect_guard_conninfo_masked(PG_FUNCTION_ARGS)
{
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	bool		raise_error = PG_GETARG_BOOL(1);
	char	   *error = NULL;
	char	   *masked = mask_conninfo(conninfo, &error);

	if (masked == NULL)
	{
		if (!raise_error)
			PG_RETURN_TEXT_P(cstring_to_text("(invalid connection string)"));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid follower connection string"),
				 errdetail_internal("%s", error),
				 errhint("Use libpq's key=value form, e.g. 'host=standby.example.com port=5432 dbname=app user=monitor', "
						 "or a URI, e.g. 'postgresql://monitor@standby.example.com:5432/app'.")));
	}
	PG_RETURN_TEXT_P(cstring_to_text(masked));
}

/* ------------------------------------------------------------------------
 * Reading the list and writing the results (inside a transaction, SPI
 * connected)
 * ------------------------------------------------------------------------ */

/*
 * followers_catalog_present says whether this database has the tables, so
 * that the worker does nothing (rather than fail) in a database without
 * the extension, or with a version older than the tables.
 */
static bool
followers_catalog_present(void)
{
	Oid			nsp = get_namespace_oid(CONNECT_GUARD_SCHEMA, true);

	return OidIsValid(nsp) &&
		OidIsValid(get_relname_relid("follower", nsp)) &&
		OidIsValid(get_relname_relid("follower_status", nsp));
}

/*
 * read_followers returns the registered followers, allocated in cxt so that
 * they outlive the transaction.
 */
static List *
read_followers(MemoryContext cxt)
{
	List	   *checks = NIL;

	if (!followers_catalog_present())
		return NIL;
	if (SPI_execute("SELECT name, conninfo FROM connect_guard.follower ORDER BY name",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read connect_guard.follower");

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext spicxt = MemoryContextSwitchTo(cxt);
		FollowerCheck *check = palloc0(sizeof(FollowerCheck));

		check->name = SPI_getvalue(tuple, desc, 1);
		check->conninfo = SPI_getvalue(tuple, desc, 2);
		checks = lappend(checks, check);
		MemoryContextSwitchTo(spicxt);
	}
	return checks;
}

static void
write_results(List *checks)
{
	Oid			argtypes[STATUS_NATTS + 1] = {
		TEXTOID, TIMESTAMPTZOID, BOOLOID, TEXTOID, BOOLOID, BOOLOID,
		INT4OID, PG_LSNOID, PG_LSNOID, NUMERICOID, FLOAT8OID, TEXTOID
	};
	SPIPlanPtr	plan;
	ListCell   *lc;

	if (checks == NIL)
		return;
	plan = SPI_prepare(WRITE_STATUS, STATUS_NATTS + 1, argtypes);
	if (plan == NULL)
		elog(ERROR, "could not prepare the follower status write: %s",
			 SPI_result_code_string(SPI_result));

	foreach(lc, checks)
	{
		FollowerCheck *check = lfirst(lc);
		Datum		values[STATUS_NATTS + 1];
		bool		isnull[STATUS_NATTS + 1];
		char		nulls[STATUS_NATTS + 1];

		status_datums(check, values, isnull);
		values[STATUS_NATTS] = CStringGetTextDatum(check->conninfo);
		isnull[STATUS_NATTS] = false;
		for (int i = 0; i <= STATUS_NATTS; i++)
			nulls[i] = isnull[i] ? 'n' : ' ';
		if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write the status of follower \"%s\"", check->name);
	}
	SPI_freeplan(plan);
}

/*
 * status_datums lays a check out as a row of connect_guard.follower_status.
 */
static void
status_datums(FollowerCheck *check, Datum *values, bool *nulls)
{
	memset(nulls, true, sizeof(bool) * STATUS_NATTS);

	values[0] = CStringGetTextDatum(check->name);
	nulls[0] = false;
	values[1] = TimestampTzGetDatum(check->checked_at);
	nulls[1] = false;
	values[2] = BoolGetDatum(check->reachable);
	nulls[2] = false;
	if (check->error != NULL)
	{
		values[3] = CStringGetTextDatum(check->error);
		nulls[3] = false;
	}
	if (check->answered)
	{
		values[4] = BoolGetDatum(check->in_recovery);
		nulls[4] = false;
		values[5] = BoolGetDatum(check->sysid_matches);
		nulls[5] = false;
	}
	if (check->has_timeline)
	{
		values[6] = Int32GetDatum(check->timeline);
		nulls[6] = false;
	}
	if (check->has_replay)
	{
		values[7] = LSNGetDatum(check->replay_lsn);
		nulls[7] = false;
	}
	if (check->has_receive)
	{
		values[8] = LSNGetDatum(check->receive_lsn);
		nulls[8] = false;
	}
	if (check->has_lag)
	{
		values[9] = NumericGetDatum(int64_to_numeric(check->lag_bytes));
		nulls[9] = false;
	}
	if (check->has_lag_seconds)
	{
		values[10] = Float8GetDatum(check->lag_seconds);
		nulls[10] = false;
	}
}

/* ------------------------------------------------------------------------
 * Talking to a follower (no transaction needed; never raises for a
 * follower's failure, only for an interrupt)
 * ------------------------------------------------------------------------ */

/* parses one column of the answer, which libpq gives as text */
static bool
answer_lsn(PGresult *result, int column, XLogRecPtr *lsn)
{
	bool		have_error = false;

	if (PQgetisnull(result, 0, column))
		return false;
	*lsn = pg_lsn_in_internal(PQgetvalue(result, 0, column), &have_error);
	return !have_error;
}

/*
 * judge_answer reads the follower's answer and decides, against this
 * primary's position, whether the follower is a standby of ours and how
 * far behind it is.  Every way of not being one leaves the lag NULL.
 */
static void
judge_answer(FollowerCheck *check, PGresult *result, const PrimaryPosition *primary)
{
	const char *sysid;
	bool		caught_up;

	if (PQntuples(result) != 1 || PQnfields(result) != FOLLOWER_QUERY_NATTS ||
		PQgetisnull(result, 0, 0) || PQgetisnull(result, 0, 3))
	{
		check->error = pstrdup("unexpected answer to the lag query");
		return;
	}
	check->answered = true;
	check->in_recovery = PQgetvalue(result, 0, 0)[0] == 't';
	if (!PQgetisnull(result, 0, 6))
		check->database = pstrdup(PQgetvalue(result, 0, 6));
	sysid = PQgetvalue(result, 0, 3);
	check->sysid_matches = strcmp(sysid, primary->sysid) == 0;
	if (!PQgetisnull(result, 0, 4))
	{
		check->timeline = (int32) strtol(PQgetvalue(result, 0, 4), NULL, 10);
		check->has_timeline = true;
	}

	if (!check->sysid_matches)
	{
		/*
		 * its WAL positions are of another history: not shown, so that nobody
		 * compares them with ours
		 */
		check->error = pstrdup("not a standby of this primary");
		return;
	}
	check->has_replay = answer_lsn(result, 1, &check->replay_lsn);
	check->has_receive = answer_lsn(result, 2, &check->receive_lsn);
	if (!PQgetisnull(result, 0, 5))
	{
		check->delay_seconds = strtod(PQgetvalue(result, 0, 5), NULL);
		check->has_delay = isfinite(check->delay_seconds);
	}

	if (!check->in_recovery)
	{
		/*
		 * this primary itself, or a follower that was promoted: it no longer
		 * follows us
		 */
		check->error = pstrdup("not a standby: the server is not in recovery");
		return;
	}
	if (check->has_timeline && (TimeLineID) check->timeline > primary->timeline)
	{
		check->error = psprintf("not following this primary: it is on timeline %d, this primary on %u",
								check->timeline, primary->timeline);
		return;
	}
	if (!check->has_replay)
	{
		check->error = pstrdup("the standby has not replayed any WAL yet");
		return;
	}

	/*
	 * caught up means: it had replayed everything we had written when it
	 * answered
	 */
	caught_up = check->replay_lsn >= primary->lsn;
	check->has_lag = true;
	check->lag_bytes = caught_up ? 0 : (int64) (primary->lsn - check->replay_lsn);
	if (caught_up)
	{
		/*
		 * an idle standby's last replayed commit grows old without it falling
		 * behind
		 */
		check->has_lag_seconds = true;
		check->lag_seconds = 0;
	}
	else if (check->has_delay)
	{
		check->has_lag_seconds = true;
		check->lag_seconds = Max(check->delay_seconds, 0);
	}
}

/*
 * check_follower connects to one follower, asks FOLLOWER_QUERY, and fills
 * in the check.  libpq failures are recorded, not raised; an interrupt
 * (cancel, shutdown) is raised after the connection is closed.
 */
static void
check_follower(FollowerCheck *check)
{
	RemoteAnswer answer;
	PrimaryPosition primary;
	char	   *wait = NULL;

	if (!XLogRecPtrIsInvalid(check->wait_for))
		wait = psprintf(FOLLOWER_WAIT_CALL, LSN_FORMAT_ARGS(check->wait_for),
						Min(1000, lag_follower_timeout_ms / 2));
	remote_query(check->conninfo, wait, FOLLOWER_QUERY, lag_follower_timeout_ms, &answer);
	check->reachable = answer.connected;
	if (answer.result == NULL)
		check->error = answer.error;
	else
	{
		/*
		 * Read after the answer arrived, so that the lag is never
		 * understated: caught up means the follower had replayed everything
		 * this primary had written by then.  Read before, the follower would
		 * catch up during the connection set-up and look caught up under any
		 * load.
		 */
		primary.lsn = GetXLogWriteRecPtr();
		primary.timeline = GetWALInsertionTimeLine();
		snprintf(primary.sysid, sizeof(primary.sysid), INT64_FORMAT,
				 (int64) GetSystemIdentifier());
		judge_answer(check, answer.result, &primary);
		PQclear(answer.result);
	}
	check->checked_at = GetCurrentTimestamp();
}

/* ------------------------------------------------------------------------
 * Masking
 * ------------------------------------------------------------------------ */

/* appends a conninfo value, quoted as libpq's parser wants when it must be */
static void
append_conninfo_value(StringInfo buf, const char *value)
{
	bool		quote = value[0] == '\0';

	for (const char *p = value; *p && !quote; p++)
		quote = isspace((unsigned char) *p) || *p == '\'' || *p == '\\';
	if (!quote)
	{
		appendStringInfoString(buf, value);
		return;
	}
	appendStringInfoChar(buf, '\'');
	for (const char *p = value; *p; p++)
	{
		if (*p == '\'' || *p == '\\')
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, *p);
	}
	appendStringInfoChar(buf, '\'');
}

/*
 * mask_conninfo parses a conninfo (key=value or URI) and writes it back as
 * key=value pairs with every option libpq displays as a password field
 * (dispchar "*": password, sslpassword) replaced by CONNINFO_MASK.  Returns NULL and
 * sets *error to libpq's message when it does not parse.
 */
static char *
mask_conninfo(const char *conninfo, char **error)
{
	char	   *libpq_msg = NULL;
	PQconninfoOption *options = PQconninfoParse(conninfo, &libpq_msg);
	PQconninfoOption *option;
	StringInfoData buf;

	if (options == NULL)
	{
		*error = libpq_msg != NULL ? pchomp(libpq_msg) : pstrdup("out of memory");
		if (libpq_msg != NULL)
			PQfreemem(libpq_msg);
		return NULL;
	}
	initStringInfo(&buf);
	for (option = options; option->keyword != NULL; option++)
	{
		if (option->val == NULL)
			continue;
		if (buf.len > 0)
			appendStringInfoChar(&buf, ' ');
		appendStringInfo(&buf, "%s=", option->keyword);
		if (option->dispchar != NULL && option->dispchar[0] == '*')
			appendStringInfoString(&buf, CONNINFO_MASK);
		else
			append_conninfo_value(&buf, option->val);
	}
	PQconninfoFree(options);
	return buf.data;
}
