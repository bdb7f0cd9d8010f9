/*
 * standby.c
 *		What a follower does for its changeover, asked over libpq by the old
 *		primary's upgrade plan (70_upgrade.sql): wait until its replay has
 *		reached an LSN, and promote itself and wait for the end of it.
 *
 * Why on the follower: asked from the old primary, each question is a
 * connection and a query, and the answer comes only at the next poll.
 * Here one call waits where the event happens: the backend reads its own
 * replay position (a spinlock read) or RecoveryInProgress() (a shared
 * memory read) every millisecond on its latch, so it answers within a
 * millisecond of the event.  PostgreSQL 15 offers an extension nothing to
 * sleep on until replay reaches an LSN or recovery ends.  Every wait is
 * bounded by the caller's timeout, and a cancel or a shutdown ends it.
 *
 * Why procedures: a standby's replay waits for the queries whose snapshot a
 * replayed record would invalidate (max_standby_streaming_delay), so a wait
 * that held a snapshot could hold up the very replay it waits for (seen: a
 * pruning record held the replay until the wait timed out).  Called by
 * CALL outside a transaction block, they commit their transaction (read
 * only, on a standby) before they wait, which releases the statement's
 * snapshot; the waits themselves read no table.
 *
 * Locking: no shared state of ours; waking the worker goes through
 * worker.c.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/latch.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "worker.h"

PG_FUNCTION_INFO_V1(connect_guard_wait_for_replay);
PG_FUNCTION_INFO_V1(connect_guard_promote_standby);

/* how often a waiting backend looks again: the answer comes this late at most */
#define STANDBY_WAIT_STEP_MS	1

/*
 * wait_until waits, a step at a time on the latch, until done() or until
 * timeout_ms have passed, and says whether done() came true.
 */
static bool
wait_until(bool (*done) (void *), void *arg, int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	for (;;)
	{
		if (done(arg))
			return true;
		if (GetCurrentTimestamp() >= deadline)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 STANDBY_WAIT_STEP_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

static bool
replay_reached(void *arg)
{
	XLogRecPtr	target = *(XLogRecPtr *) arg;

	/* a server out of recovery replays nothing more: the caller looks at why */
	return !RecoveryInProgress() || GetXLogReplayRecPtr(NULL) >= target;
}

static bool
out_of_recovery(void *arg)
{
	return !RecoveryInProgress();
}

static int
timeout_arg(FunctionCallInfo fcinfo, int argno)
{
	int			timeout_ms = PG_GETARG_INT32(argno);

	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must be 0 or more"),
				 errhint("Pass how long to wait, in milliseconds.")));
	return timeout_ms;
}

/*
 * nonatomic_call says whether this procedure was called by CALL outside a
 * transaction block, where it may commit.
 */
static bool
nonatomic_call(FunctionCallInfo fcinfo)
{
	return fcinfo->context != NULL && IsA(fcinfo->context, CallContext) &&
		!castNode(CallContext, fcinfo->context)->atomic;
}

/*
 * CALL connect_guard.wait_for_replay(target pg_lsn, timeout_ms integer)
 * returns once this standby has replayed WAL up to target, or is no longer
 * in recovery, or timeout_ms have passed.  The old primary calls it before
 * its lag query, on the same connection, so that the answer it judges is
 * the one read after the wait.
 */
Datum
connect_guard_wait_for_replay(PG_FUNCTION_ARGS)
{
	XLogRecPtr	target = PG_GETARG_LSN(0);
	int			timeout_ms = timeout_arg(fcinfo, 1);

	if (nonatomic_call(fcinfo))
	{
		SPI_connect_ext(SPI_OPT_NONATOMIC);
		SPI_commit();			/* its snapshot goes (header comment) */
		SPI_finish();
	}
	(void) wait_until(replay_reached, &target, timeout_ms);
	PG_RETURN_VOID();
}

/*
 * CALL connect_guard.promote_standby(timeout_ms integer, OUT promoted
 * boolean) asks for this standby's promotion with pg_promote(wait =>
 * false) (so that its own privilege check applies), waits until the server
 * is out of recovery, then wakes this database's connect_guard worker, which
 * completes the changeover here.  promoted is false when the promotion
 * could not be asked for, or has not ended within timeout_ms.
 * pg_promote(wait => true) would look only ten times a second.
 */
Datum
connect_guard_promote_standby(PG_FUNCTION_ARGS)
{
	int			timeout_ms = timeout_arg(fcinfo, 0);
	bool		nonatomic = nonatomic_call(fcinfo);
	bool		promoted = false;
	bool		isnull;
	TupleDesc	desc;
	Datum		value;

	SPI_connect_ext(nonatomic ? SPI_OPT_NONATOMIC : 0);
	if (SPI_execute("SELECT pg_catalog.pg_promote(false)", false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "pg_promote() returned no row");
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull && DatumGetBool(value))
	{
		if (nonatomic)
			SPI_commit();		/* its snapshot goes (header comment) */
		promoted = wait_until(out_of_recovery, NULL, timeout_ms);
	}
	SPI_finish();
	if (promoted)
		worker_wake_now();

	/* in the CALL's memory, which outlives the transaction that ended above */
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "connect_guard.promote_standby must have one OUT parameter");
	desc = BlessTupleDesc(desc);
	isnull = false;
	value = BoolGetDatum(promoted);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, &value, &isnull)));
}
