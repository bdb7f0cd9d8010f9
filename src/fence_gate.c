/*
 * fence_gate.c
 *		Writes to mapped tables wait for the first rollback check after
 *		start-up.
 *
 * A restored server (PITR, an old snapshot) opens for connections before
 * its worker has compared it with the witness; writes made in between
 * would be unfenced and take log ids the sync service already saw.  So
 * after every start (and crash restart: shared memory starts over) each
 * database's write gate is closed, and a write that reaches a mapped
 * table waits until the database's worker reports that it ran a rollback
 * check on a primary (fence_rollback_checked, called by worker.c after
 * each check): by then a rollback has raised its reload fence, moved the
 * id sequence, and the write meets the fence.  A write that has waited
 * FENCE_GATE_WAIT_MS fails with the reason (a worker that cannot run: no
 * slot, a check that keeps failing).
 *
 * What it costs: nothing per statement once this backend has seen its
 * database checked (a flag); until then, writes look the target up in
 * connect_guard.mapping.  A database without the extension has nothing
 * mapped and passes at once; so do the single-user server, pg_upgrade's
 * restore and fence_bypass.  With witnessing off the worker's check
 * compares only the sync service's own mark, and the gate still waits for
 * it; without shared_preload_libraries there is neither worker nor gate.
 *
 * A database created since start-up (CREATE DATABASE, then pg_restore:
 * a copy) was not restored in place and has no gate (note_oid_bound).
 * The session that loads a dump (its CREATE EXTENSION recorded it,
 * worker.c) passes: the worker writes nothing until it ends.
 *
 * Locking: the list of checked databases is guarded by the fence lock;
 * waiters sleep on a condition variable the worker broadcasts.
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "catalog_names.h"
#include "fence.h"
#include "worker.h"

#define FENCE_GATE_WAIT_MS	30000

bool		fence_gate_passed = false;

/*
 * note_oid_bound records, once recovery has ended, where the OID counter
 * stood: a database created after that (CREATE DATABASE, then pg_restore
 * into it: a copy plan) holds only what was loaded since the server
 * started, so there is nothing a restore of this server could have rewound
 * in it, and its gate is open from the start.  Otherwise a restore into a
 * new database would wait at its first COPY into a mapped table for a
 * worker that cannot check a database still being restored.  Read as soon
 * as the worker's first check or the first gated write comes, whichever is
 * first: a database created before that is gated, the safe side (so is one
 * whose OID the counter's wraparound made low).  Caller holds fence_lock
 * exclusively.
 */
static void
note_oid_bound(void)
{
	if (OidIsValid(fence_state->gate_oid_bound) || RecoveryInProgress())
		return;
	LWLockAcquire(OidGenLock, LW_SHARED);
	fence_state->gate_oid_bound = ShmemVariableCache->nextOid;
	LWLockRelease(OidGenLock);
}

static bool
database_checked(void)
{
	bool		checked = false;

	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	note_oid_bound();
	checked = OidIsValid(fence_state->gate_oid_bound) && MyDatabaseId >= fence_state->gate_oid_bound;
	for (int i = 0; i < fence_state->ngate && !checked; i++)
		checked = fence_state->gate_checked[i] == MyDatabaseId || fence_state->gate_checked[i] == InvalidOid;
	LWLockRelease(fence_lock);
	return checked;
}

/* gate_mapped_by: the connections mapping a table the write reaches, or NULL */
static char *
gate_mapped_by(Oid relid)
{
	char	   *connections;
	ListCell   *lc;

	if (get_rel_namespace(relid) == get_namespace_oid(CONNECT_GUARD_SCHEMA, true))
		return NULL;
	if ((connections = fence_mapped_by(relid)) != NULL)
		return connections;
	foreach(lc, fence_ancestors(relid))
		if ((connections = fence_mapped_by(lfirst_oid(lc))) != NULL)
		return connections;
	if (get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE)
		foreach(lc, find_all_inheritors(relid, NoLock, NULL))
			if (lfirst_oid(lc) != relid && (connections = fence_mapped_by(lfirst_oid(lc))) != NULL)
			return connections;
	return NULL;
}

/*
 * fence_gate_check makes a write (operation) aimed at relid wait while this
 * database has not been checked for a rollback since start-up, if it
 * reaches a mapped table.
 */
void
fence_gate_check(Oid relid, const char *operation)
{
	TimestampTz deadline;
	char	   *connections;

	if (fence_gate_passed)
		return;
	if (!IsUnderPostmaster || fence_state == NULL)
	{
		fence_gate_passed = true;	/* single-user mode: no worker, no gate */
		return;
	}
	if (IsBinaryUpgrade || fence_bypass || !OidIsValid(relid))
		return;

	/*
	 * In recovery the write fails as read-only anyway.  Waiting here would
	 * hold the statement's snapshot, which the replay may wait for (a
	 * changeover's follower then stops catching up until
	 * max_standby_streaming_delay cancels the writer).
	 */
	if (RecoveryInProgress())
		return;

	/*
	 * The session loading a dump here: the worker waits for it (worker.c), so
	 * it cannot wait for the worker.
	 */
	if (worker_session_restores())
		return;
	if (database_checked() || !OidIsValid(get_namespace_oid(CONNECT_GUARD_SCHEMA, true)))
	{
		fence_gate_passed = true;
		return;
	}
	if ((connections = gate_mapped_by(relid)) == NULL)
		return;

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), FENCE_GATE_WAIT_MS);
	ConditionVariablePrepareToSleep(&fence_state->gate_cv);
	while (!database_checked())
	{
		if (GetCurrentTimestamp() >= deadline)
		{
			ConditionVariableCancelSleep();
			ereport(ERROR,
					(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
					 errmsg("cannot %s table %s, synced by connection %s: this database has not been checked for a "
							"rollback since the server started", operation,
							quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													   get_rel_name(relid)),
							connections),
					 errdetail("Writes to mapped tables wait for the first check of connect_guard's worker "
							   "(waited %d s): a restored database must not take writes before the sync service "
							   "is told.", FENCE_GATE_WAIT_MS / 1000),
					 errhint("See connect_worker and the server log for why the worker has not checked this "
							 "database; writes resume once it has.")));
		}
		(void) ConditionVariableTimedSleep(&fence_state->gate_cv, 1000, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	fence_gate_passed = true;
}

/*
 * fence_rollback_checked opens this database's gate: the worker calls it
 * after each rollback check, with as_primary saying the check ran on a
 * primary (in recovery it is skipped, and a promotion during it must not
 * count).
 */
void
fence_rollback_checked(bool as_primary)
{
	bool		found = false;

	if (!as_primary || fence_state == NULL || RecoveryInProgress())
		return;
	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	note_oid_bound();
	for (int i = 0; i < fence_state->ngate && !found; i++)
		found = fence_state->gate_checked[i] == MyDatabaseId || fence_state->gate_checked[i] == InvalidOid;
	if (!found)
	{
		/*
		 * more databases than room: InvalidOid opens every gate rather than
		 * none
		 */
		if (fence_state->ngate == FENCE_GATE_MAX_DATABASES)
			fence_state->gate_checked[FENCE_GATE_MAX_DATABASES - 1] = InvalidOid;
		else
			fence_state->gate_checked[fence_state->ngate++] = MyDatabaseId;
	}
	LWLockRelease(fence_lock);
	if (!found)
		ConditionVariableBroadcast(&fence_state->gate_cv);
}
