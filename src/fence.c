/*
 * fence.c
 *		The write fence: its shared state, and raising, lowering and
 *		changing fences, transactionally.
 *
 * Why hooks and not default_transaction_read_only: pg_readonly showed that
 * a read-only flag per session is easy to bypass (SET transaction_read_only
 * = off) and blocks too much (every table, temp tables, the sync service's
 * own bookkeeping).  Here the fence is shared state that every backend
 * checks in its hooks (fence_check.c, fence_ddl.c).
 *
 * Changes take effect at once, not at commit: raising a fence must stop new
 * writers before it waits for the writers already in flight.  So a change
 * is "in doubt" until its transaction ends: the fence entry records what
 * changed (FENCE_CHANGE_*), and by which transaction, and the transaction
 * callback below settles it at commit or undoes it at abort.  The state
 * file (fence_file.c) is written at the change, in-doubt marks included,
 * so that a crash or an immediate shutdown in between leaves a file whose
 * in-doubt changes are settled after recovery by the fate of their
 * transaction (fence_resolve_orphans): a fence whose raising transaction
 * never committed does not survive, one whose lowering never committed
 * comes back.  For that the transaction's xid must be in the WAL that
 * recovery reads before the file names it (fence_change_xid), or a new
 * transaction could reuse it.
 *
 * Locking: the state is guarded by one LWLock.  Readers of the shared state
 * take it shared, changes take it exclusive and save the file while holding
 * it, so that the file and memory never disagree for long.  Before that, a
 * transaction that changes a fence takes a heavyweight lock on it (an
 * advisory lock with field4 = FENCE_LOCKTAG_FIELD4, held to the end of the
 * transaction), so that one transaction at a time has a change in doubt on
 * a fence; the heavyweight lock is never waited for while holding the
 * LWLock.
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "catalog_names.h"
#include "fence.h"

/* the advisory lock a fence change holds: (database, "CGF", fence_id, 3) */
#define FENCE_LOCKTAG_KEY		0x00434746
#define FENCE_LOCKTAG_FIELD4	3

/* GUC variables */
int			fence_max_tables = 10000;
bool		fence_bypass = false;

/* Saved hook values */
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Shared state */
FenceShared *fence_state = NULL;
LWLock	   *fence_lock = NULL;

/* The fences this transaction changed, settled by fence_xact_callback */
static List *fence_touched = NIL;

/*
 * Fence changes are not undone by a rollback to a savepoint (the change
 * state keeps one change per fence and transaction, not one per
 * subtransaction).  So a subtransaction that changed a fence and then
 * aborted dooms the whole transaction: its commit fails, and the abort undoes
 * every change consistently.  fence_changes counts this transaction's
 * changes; fence_sub_marks holds the count at each open subtransaction's
 * start, innermost first.
 */
static int	fence_changes = 0;
static List *fence_sub_marks = NIL;
static bool fence_doomed = false;

/* The transaction whose xid is known to be in flushed WAL */
static FullTransactionId fence_logged_xid = {0};

static void fence_shmem_request(void);
static void fence_shmem_startup(void);
static void fence_xact_callback(XactEvent event, void *arg);
static void fence_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								   SubTransactionId parentSubid, void *arg);

static Size
fence_shmem_size(void)
{
	return add_size(offsetof(FenceShared, rels),
					mul_size(sizeof(FencedRelation), fence_max_tables));
}

/*
 * fence_init defines the fence's settings and installs its hooks.  Without
 * shared_preload_libraries there is no shared memory to hold a fence, so
 * nothing is installed and the SQL functions say how to fix it.
 */
void
fence_init(void)
{
	DefineCustomBoolVariable("connect_guard.fence_bypass",
							 "Lets this session write to fenced tables.",
							 "For the maintenance runbook's own session only.",
							 &fence_bypass,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("connect_guard.max_fenced_tables",
							"How many tables can be fenced at once, over all databases.",
							NULL,
							&fence_max_tables,
							10000, 16, 1000000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = fence_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = fence_shmem_startup;
	RegisterXactCallback(fence_xact_callback, NULL);
	RegisterSubXactCallback(fence_subxact_callback, NULL);
	fence_check_init();
	fence_ddl_init();
}

static void
fence_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(fence_shmem_size());
	RequestNamedLWLockTranche("connect_guard_fence", 1);
}

/*
 * fence_shmem_startup creates the shared state and, in the postmaster,
 * restores the fences saved before the last shutdown or crash.
 */
static void
fence_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	fence_state = ShmemInitStruct("connect_guard fence", fence_shmem_size(), &found);
	fence_lock = &(GetNamedLWLockTranche("connect_guard_fence"))->lock;
	if (!found)
	{
		memset(fence_state, 0, offsetof(FenceShared, rels));
		pg_atomic_init_u32(&fence_state->nactive, 0);
		pg_atomic_init_u32(&fence_state->norphans, 0);
		pg_atomic_init_u64(&fence_state->generation, 1);
		fence_state->next_fence_id = 1;
		ConditionVariableInit(&fence_state->gate_cv);
		fence_file_load(fence_state);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
fence_require_shmem(void)
{
	if (fence_state == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the connect_guard write fence is not available"),
				 errdetail("connect_guard was not loaded through shared_preload_libraries."),
				 errhint("Add connect_guard to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* ------------------------------------------------------------------------
 * What is in force.  A change in doubt counts as made (the fence acts at
 * once), except that a change left in doubt by a stopped server counts as
 * whichever keeps more fenced, until it is resolved.
 * ------------------------------------------------------------------------ */

bool
fence_entry_in_force(const FenceEntry *entry)
{
	if (entry->fence_id == 0)
		return false;
	return !(entry->change & FENCE_CHANGE_LOWER) || entry->orphan;
}

bool
fence_relation_in_force(const FencedRelation *rel, const FenceEntry *entry)
{
	return fence_entry_in_force(entry) &&
		(rel->state != FENCED_RELATION_REMOVING || entry->orphan);
}

static int
count_in_force(void)
{
	int			n = 0;

	for (int i = 0; i < FENCE_MAX_FENCES; i++)
		if (fence_entry_in_force(&fence_state->fences[i]))
			n++;
	return n;
}

static int
count_orphans(void)
{
	int			n = 0;

	for (int i = 0; i < FENCE_MAX_FENCES; i++)
		if (fence_state->fences[i].fence_id != 0 && fence_state->fences[i].orphan)
			n++;
	return n;
}

/* ------------------------------------------------------------------------
 * Changing the shared state.  Caller holds fence_lock exclusively.
 * ------------------------------------------------------------------------ */

static FenceEntry *
find_entry(int32 fence_id)
{
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
		if (fence_state->fences[i].fence_id == fence_id &&
			fence_state->fences[i].dbid == MyDatabaseId)
			return &fence_state->fences[i];
	return NULL;
}

/* remove_relations drops the relations of fence_id for which keep() says no */
static void
remove_relations(int32 fence_id, bool (*drop) (FencedRelation *rel, void *arg), void *arg)
{
	int			kept = 0;

	for (int i = 0; i < fence_state->nrels; i++)
	{
		FencedRelation *rel = &fence_state->rels[i];

		if (rel->fence_id == fence_id && (drop == NULL || drop(rel, arg)))
			continue;
		if (kept != i)
			fence_state->rels[kept] = *rel;
		kept++;
	}
	fence_state->nrels = kept;
}

static void
remove_entry(FenceEntry *entry)
{
	remove_relations(entry->fence_id, NULL, NULL);
	memset(entry, 0, sizeof(FenceEntry));
}

static void
require_room(int nrels)
{
	if (fence_state->nrels + nrels > fence_max_tables)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("cannot fence %d more tables: %d of connect_guard.max_fenced_tables = %d are in use",
						nrels, fence_state->nrels, fence_max_tables),
				 errhint("Raise connect_guard.max_fenced_tables and restart, or use a database-wide fence.")));
}

static void
add_relations(const FencedRelation *rels, int nrels, int32 state)
{
	require_room(nrels);
	for (int i = 0; i < nrels; i++)
	{
		fence_state->rels[fence_state->nrels] = rels[i];
		fence_state->rels[fence_state->nrels].state = state;
		fence_state->nrels++;
	}
}

/* settling the relations of a change: what goes when it commits, or aborts */
static bool
drop_on_commit(FencedRelation *rel, void *arg)
{
	bool		committed = *(bool *) arg;

	if (rel->state == FENCED_RELATION_ADDING)
	{
		rel->state = FENCED_RELATION_SETTLED;
		return !committed;
	}
	if (rel->state == FENCED_RELATION_REMOVING)
	{
		rel->state = FENCED_RELATION_SETTLED;
		return committed;
	}
	return false;
}

static bool
drop_adding(FencedRelation *rel, void *arg)
{
	return rel->state == FENCED_RELATION_ADDING;
}

static bool
settle_keeping_all(FencedRelation *rel, void *arg)
{
	rel->state = FENCED_RELATION_SETTLED;
	return false;
}

/*
 * settle_entry ends the change in doubt on entry: its transaction
 * committed, or not.
 */
static void
settle_entry(FenceEntry *entry, bool committed)
{
	if (entry->fence_id == 0 || entry->change == 0)
		return;
	if (((entry->change & FENCE_CHANGE_RAISE) && !committed) ||
		((entry->change & FENCE_CHANGE_LOWER) && committed))
	{
		remove_entry(entry);
		return;
	}
	remove_relations(entry->fence_id, drop_on_commit, &committed);
	entry->change = 0;
	entry->orphan = false;
	entry->change_xid = InvalidFullTransactionId;
}

/*
 * settle_fenced ends an orphan's doubt on the side that keeps everything
 * fenced, when a change must be made on it before its transaction's fate
 * can be known (in hot standby).
 */
static void
settle_fenced(FenceEntry *entry)
{
	remove_relations(entry->fence_id, settle_keeping_all, NULL);
	entry->change = 0;
	entry->orphan = false;
	entry->change_xid = InvalidFullTransactionId;
}

static void
publish(int elevel)
{
	pg_atomic_write_u32(&fence_state->nactive, count_in_force());
	pg_atomic_write_u32(&fence_state->norphans, count_orphans());
	pg_atomic_fetch_add_u64(&fence_state->generation, 1);
	if (elevel >= ERROR)
		fence_file_save(fence_state);
	else
	{
		PG_TRY();
		{
			fence_file_save(fence_state);
		}
		PG_CATCH();
		{
			FlushErrorState();
			ereport(elevel, (errmsg("could not save the fence state file")));
		}
		PG_END_TRY();
	}
}

/* ------------------------------------------------------------------------
 * Transactions
 * ------------------------------------------------------------------------ */

/*
 * fence_change_xid returns the top transaction id a change is recorded
 * under, after making sure it is in flushed WAL: crash recovery then moves
 * the next xid past it, so that no later transaction can reuse it and lend
 * its commit to a change that never committed.  A transactional logical
 * message is the smallest record that carries an xid (logical decoding
 * sees it as a "connect_guard" message only if the transaction commits).
 * In hot standby there is no xid: such changes count as committed after a
 * crash (the fence stays up).
 */
static FullTransactionId
fence_change_xid(void)
{
	FullTransactionId xid;

	if (RecoveryInProgress())
		return InvalidFullTransactionId;
	xid = GetTopFullTransactionId();
	if (!FullTransactionIdEquals(xid, fence_logged_xid))
	{
		XLogFlush(LogLogicalMessage("connect_guard", "fence", 5, true));
		fence_logged_xid = xid;
	}
	return xid;
}

/* lock_fence takes the transaction's lock on a fence (not holding fence_lock) */
static void
lock_fence(int32 fence_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, FENCE_LOCKTAG_KEY, (uint32) fence_id, FENCE_LOCKTAG_FIELD4);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

static void
touch(int32 fence_id)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

	fence_touched = list_append_unique_int(fence_touched, fence_id);
	fence_changes++;
	MemoryContextSwitchTo(oldcxt);
}

/*
 * fence_subxact_callback dooms the transaction when a subtransaction that
 * changed a fence aborts (see fence_changes).
 */
static void
fence_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	MemoryContext oldcxt;

	switch (event)
	{
		case SUBXACT_EVENT_START_SUB:
			oldcxt = MemoryContextSwitchTo(TopMemoryContext);
			fence_sub_marks = lcons_int(fence_changes, fence_sub_marks);
			MemoryContextSwitchTo(oldcxt);
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
		case SUBXACT_EVENT_ABORT_SUB:
			if (fence_sub_marks == NIL)
				break;
			if (event == SUBXACT_EVENT_ABORT_SUB && fence_changes > linitial_int(fence_sub_marks))
				fence_doomed = true;
			fence_sub_marks = list_delete_first(fence_sub_marks);
			break;
		default:
			break;
	}
}

/* begin_change marks entry as changed by this transaction */
static void
begin_change(FenceEntry *entry, int32 change, FullTransactionId xid)
{
	if (entry->orphan)
		settle_fenced(entry);
	entry->change |= change;
	entry->change_xid = xid;
}

/*
 * fence_xact_callback settles, at commit, or undoes, at abort, the fence
 * changes of the transaction.  A prepared transaction could end in
 * another session, which would not know what to settle: refused.
 */
static void
fence_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;
	bool		committed;

	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		/* the transaction is over: the next one starts with no marks */
		list_free(fence_sub_marks);
		fence_sub_marks = NIL;
		fence_changes = 0;
	}
	if (fence_touched == NIL)
	{
		fence_doomed = false;
		return;
	}
	if (fence_doomed && (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PARALLEL_PRE_COMMIT ||
						 event == XACT_EVENT_PRE_PREPARE))
	{
		fence_doomed = false;	/* the abort this error causes must not raise
								 * it again */
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("cannot commit a transaction in which a fence change was rolled back to a savepoint"),
				 errdetail("A rollback to a savepoint (or an exception block that caught an error) cannot undo "
						   "a raise, lowering or change of a write fence by itself; the whole transaction is "
						   "rolled back instead, so that no fence is left half changed."),
				 errhint("Raise, lower or change fences outside savepoints and exception blocks, or let the "
						 "error end the transaction.")));
	}
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		fence_doomed = false;
	if (event == XACT_EVENT_PRE_PREPARE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot prepare a transaction that raised, lowered or changed a write fence"),
				 errhint("Commit it instead; PREPARE TRANSACTION is not supported with connect_guard's fence functions.")));
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_PARALLEL_COMMIT &&
		event != XACT_EVENT_ABORT && event != XACT_EVENT_PARALLEL_ABORT)
		return;

	committed = (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT);
	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	foreach(lc, fence_touched)
	{
		FenceEntry *entry = find_entry(lfirst_int(lc));

		if (entry != NULL && !entry->orphan)
			settle_entry(entry, committed);
	}
	/* after commit, an error would be a PANIC: a failed save is a WARNING */
	publish(WARNING);
	LWLockRelease(fence_lock);
	list_free(fence_touched);
	fence_touched = NIL;
}

/*
 * orphan_committed tells whether an orphan's transaction committed: 1 yes,
 * 0 no, -1 not known yet (in hot standby, a transaction of the primary
 * still running or not replayed yet).
 */
static int
orphan_committed(FullTransactionId fxid)
{
	TransactionId xid = XidFromFullTransactionId(fxid);
	FullTransactionId next = ReadNextFullTransactionId();
	bool		too_old;
	int			result;

	if (!FullTransactionIdIsValid(fxid))
		return 1;				/* changed in hot standby: keep the fence */
	if (!FullTransactionIdPrecedes(fxid, next))
		return RecoveryInProgress() ? -1 : 0;

	LWLockAcquire(XactTruncationLock, LW_SHARED);
	too_old = TransactionIdPrecedes(xid, ShmemVariableCache->oldestClogXid) ||
		U64FromFullTransactionId(next) - U64FromFullTransactionId(fxid) > (uint64) MaxTransactionId / 2;
	if (too_old)
		result = 1;				/* cannot happen in practice: keep the fence */
	else if (TransactionIdIsInProgress(xid))
		result = -1;
	else if (TransactionIdDidCommit(xid))
		result = 1;
	else if (RecoveryInProgress() && !TransactionIdDidAbort(xid))
		result = -1;			/* a crashed primary writes no abort record:
								 * wait for promotion */
	else
		result = 0;
	LWLockRelease(XactTruncationLock);
	return result;
}

/*
 * fence_resolve_orphans settles the changes left in doubt by a server that
 * stopped while their transactions ran, by those transactions' fate.
 * Called by every backend that reads the fence while orphans are left;
 * needs a transaction (it reads the commit log).
 */
void
fence_resolve_orphans(void)
{
	int			resolved = 0;

	if (fence_state == NULL || pg_atomic_read_u32(&fence_state->norphans) == 0 ||
		!IsTransactionState())
		return;
	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
	{
		FenceEntry *entry = &fence_state->fences[i];
		int32		fence_id = entry->fence_id;
		int			committed;

		if (fence_id == 0 || !entry->orphan)
			continue;
		committed = orphan_committed(entry->change_xid);
		if (committed < 0)
			continue;
		ereport(LOG,
				(errmsg("connect_guard: fence %d: the %s by transaction %llu %s",
						fence_id,
						(entry->change & FENCE_CHANGE_RAISE) ? "raise" :
						(entry->change & FENCE_CHANGE_LOWER) ? "lowering" : "change of tables",
						(unsigned long long) U64FromFullTransactionId(entry->change_xid),
						committed ? "had committed when the server stopped: kept"
						: "had not committed when the server stopped: undone")));
		settle_entry(entry, committed == 1);
		resolved++;
	}
	if (resolved > 0)
		publish(WARNING);
	LWLockRelease(fence_lock);
}

/*
 * fence_lower_all_in_database lowers the fences of this database: nothing
 * could lower a fence left behind by a dropped extension.
 */
void
fence_lower_all_in_database(void)
{
	List	   *ids = NIL;
	ListCell   *lc;
	FullTransactionId xid = fence_change_xid();

	LWLockAcquire(fence_lock, LW_SHARED);
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
		if (fence_state->fences[i].fence_id != 0 && fence_state->fences[i].dbid == MyDatabaseId)
			ids = lappend_int(ids, fence_state->fences[i].fence_id);
	LWLockRelease(fence_lock);

	foreach(lc, ids)
		lock_fence(lfirst_int(lc));
	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	foreach(lc, ids)
	{
		FenceEntry *entry = find_entry(lfirst_int(lc));

		if (entry == NULL || !fence_entry_in_force(entry))
			continue;
		touch(entry->fence_id);
		if (entry->change & FENCE_CHANGE_RAISE && !entry->orphan)
			remove_entry(entry);
		else
			begin_change(entry, FENCE_CHANGE_LOWER, xid);
	}
	publish(ERROR);
	LWLockRelease(fence_lock);
}

/* ------------------------------------------------------------------------
 * Raising, lowering, changing a fence (fence_sql.c calls these for the
 * install script's functions)
 * ------------------------------------------------------------------------ */

/*
 * fence_raise raises a fence at once: entry says what it is (its id,
 * change and xid are filled in here), rels what it covers.  Returns its id.
 */
int32
fence_raise(FenceEntry *entry, FencedRelation *rels, int nrels)
{
	FenceEntry *slot = NULL;

	fence_require_shmem();
	fence_resolve_orphans();
	entry->dbid = MyDatabaseId;
	entry->change = FENCE_CHANGE_RAISE;
	entry->change_xid = fence_change_xid();

	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	entry->fence_id = fence_state->next_fence_id++;
	LWLockRelease(fence_lock);
	/* nobody knows the id yet: this cannot wait */
	lock_fence(entry->fence_id);
	for (int i = 0; i < nrels; i++)
	{
		rels[i].dbid = MyDatabaseId;
		rels[i].fence_id = entry->fence_id;
	}

	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	for (int i = 0; i < FENCE_MAX_FENCES && slot == NULL; i++)
		if (fence_state->fences[i].fence_id == 0)
			slot = &fence_state->fences[i];
	if (slot == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("cannot raise more than %d fences at once", FENCE_MAX_FENCES),
				 errhint("Lower fences that are no longer needed; see connect_fences.")));
	require_room(nrels);
	touch(entry->fence_id);
	*slot = *entry;
	add_relations(rels, nrels, FENCED_RELATION_SETTLED);
	PG_TRY();
	{
		publish(ERROR);
	}
	PG_CATCH();
	{
		/*
		 * Not saved: not raised, even if a caller's exception block lets the
		 * transaction commit (its caller would not know the id).
		 */
		remove_entry(slot);
		pg_atomic_write_u32(&fence_state->nactive, count_in_force());
		pg_atomic_fetch_add_u64(&fence_state->generation, 1);
		PG_RE_THROW();
	}
	PG_END_TRY();
	LWLockRelease(fence_lock);
	return entry->fence_id;
}

/* fence_lower lowers a fence of this database; false if there is none */
bool
fence_lower(int32 fence_id)
{
	FenceEntry *entry;
	FullTransactionId xid;

	fence_require_shmem();
	fence_resolve_orphans();
	xid = fence_change_xid();
	lock_fence(fence_id);
	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	entry = find_entry(fence_id);
	if (entry == NULL || !fence_entry_in_force(entry))
	{
		LWLockRelease(fence_lock);
		return false;
	}
	touch(fence_id);
	/* raised by this very transaction: nothing to bring back if it aborts */
	if ((entry->change & FENCE_CHANGE_RAISE) && !entry->orphan)
		remove_entry(entry);
	else
		begin_change(entry, FENCE_CHANGE_LOWER, xid);
	publish(ERROR);
	LWLockRelease(fence_lock);
	return true;
}

/*
 * fence_set_relations replaces the tables of a fence, when mappings change
 * while it is up; false if there is no such fence.
 */
bool
fence_set_relations(int32 fence_id, FencedRelation *rels, int nrels)
{
	FenceEntry *entry;
	FullTransactionId xid;

	fence_require_shmem();
	fence_resolve_orphans();
	for (int i = 0; i < nrels; i++)
	{
		rels[i].dbid = MyDatabaseId;
		rels[i].fence_id = fence_id;
	}
	xid = fence_change_xid();
	lock_fence(fence_id);
	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	entry = find_entry(fence_id);
	if (entry == NULL || !fence_entry_in_force(entry))
	{
		LWLockRelease(fence_lock);
		return false;
	}
	require_room(nrels);
	touch(fence_id);
	if ((entry->change & FENCE_CHANGE_RAISE) && !entry->orphan)
	{
		/* raised by this transaction: its tables simply change */
		remove_relations(fence_id, NULL, NULL);
		add_relations(rels, nrels, FENCED_RELATION_SETTLED);
	}
	else
	{
		begin_change(entry, FENCE_CHANGE_RELATIONS, xid);
		/* what this transaction added before goes; the rest is on its way out */
		remove_relations(fence_id, drop_adding, NULL);
		for (int i = 0; i < fence_state->nrels; i++)
			if (fence_state->rels[i].fence_id == fence_id)
				fence_state->rels[i].state = FENCED_RELATION_REMOVING;
		add_relations(rels, nrels, FENCED_RELATION_ADDING);
	}
	publish(ERROR);
	LWLockRelease(fence_lock);
	return true;
}
