/*
 * fence.c
 *		The write fence: blocks writes to fenced tables while a connection is
 *		paused for maintenance, or while a DBA holds a maintenance window.
 *
 * Why hooks and not default_transaction_read_only: pg_readonly showed that
 * a read-only flag per session is easy to bypass (SET transaction_read_only
 * = off) and blocks too much (every table, temp tables, the sync service's
 * own bookkeeping).  Here the fence is shared state that every backend
 * checks in ExecutorStart (which covers plain statements, prepared
 * statements, cached PL/pgSQL plans, writable CTEs, triggers and foreign-key
 * actions, since all of them start an executor) and in ProcessUtility (COPY
 * FROM, TRUNCATE, ALTER TABLE, DROP TABLE, renames).
 *
 * Cost when no fence is up: one unlocked atomic read per statement.  When a
 * fence is up, each backend keeps a sorted copy of its database's fenced
 * relation OIDs, rebuilt only when the shared generation counter moves, so a
 * check is a binary search and never a catalog lookup (a database-wide fence
 * needs one syscache lookup to exempt temporary tables).
 *
 * Changes take effect at once, not at commit: raising a fence must stop new
 * writers before it waits for the writers already in flight.  If the
 * transaction that changed a fence aborts, the change is undone by the
 * transaction callback below.
 *
 * Locking: the state is guarded by one LWLock.  Readers of the shared state
 * take it shared, changes take it exclusive and save the file while holding
 * it, so that the file and memory never disagree for long.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parsetree.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "catalog_names.h"
#include "fence.h"

PG_FUNCTION_INFO_V1(connect_guard_fence_raise);
PG_FUNCTION_INFO_V1(connect_guard_fence_lower);
PG_FUNCTION_INFO_V1(connect_guard_fence_set_relations);
PG_FUNCTION_INFO_V1(connect_guard_fence_list);
PG_FUNCTION_INFO_V1(connect_guard_fence_relations);
PG_FUNCTION_INFO_V1(connect_guard_fence_available);
PG_FUNCTION_INFO_V1(connect_guard_wait_for_lockers);

/* GUC variables */
int			fence_max_tables = 10000;
static bool fence_bypass = false;

/* Saved hook values */
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Shared state */
static FenceShared *fence_state = NULL;
static LWLock *fence_lock = NULL;

/* This backend's copy of its database's fences (see header comment) */
static uint64 local_generation = PG_UINT64_MAX;
static int	local_nfences = 0;
static FenceEntry local_fences[FENCE_MAX_FENCES];
static int	local_nrels = 0;
static FencedRelation *local_rels = NULL;
static int	local_rels_size = 0;
static int	local_database_fence = -1;	/* index into local_fences, or -1 */

/* Changes of this transaction, to undo if it aborts */
typedef enum FenceUndoKind
{
	UNDO_RAISE,					/* remove fence_id */
	UNDO_LOWER,					/* put entry and rels back */
	UNDO_SET_RELATIONS			/* put rels back */
} FenceUndoKind;

typedef struct FenceUndo
{
	FenceUndoKind kind;
	FenceEntry	entry;
	int			nrels;
	FencedRelation *rels;
} FenceUndo;

static List *fence_undo = NIL;

static void fence_shmem_request(void);
static void fence_shmem_startup(void);
static void fence_ExecutorStart(QueryDesc *queryDesc, int eflags);
static void fence_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
								 bool readOnlyTree, ProcessUtilityContext context,
								 ParamListInfo params, QueryEnvironment *queryEnv,
								 DestReceiver *dest, QueryCompletion *qc);
static void fence_xact_callback(XactEvent event, void *arg);
static void fence_check_relation(Oid relid, const char *operation);

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
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = fence_ExecutorStart;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = fence_ProcessUtility;
	RegisterXactCallback(fence_xact_callback, NULL);
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
		pg_atomic_init_u64(&fence_state->generation, 1);
		fence_state->next_fence_id = 1;
		fence_file_load(fence_state);
	}
	LWLockRelease(AddinShmemInitLock);
}

static void
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
 * The checks
 * ------------------------------------------------------------------------ */

static int
fenced_relation_cmp(const void *a, const void *b)
{
	Oid			ra = ((const FencedRelation *) a)->relid;
	Oid			rb = ((const FencedRelation *) b)->relid;

	return (ra > rb) - (ra < rb);
}

/*
 * fence_refresh_local copies this database's fences out of shared memory
 * when they changed since the last copy.
 */
static void
fence_refresh_local(void)
{
	uint64		generation = pg_atomic_read_u64(&fence_state->generation);

	if (generation == local_generation)
		return;

	LWLockAcquire(fence_lock, LW_SHARED);
	generation = pg_atomic_read_u64(&fence_state->generation);
	if (local_rels_size < fence_state->nrels)
	{
		int			size = Max(fence_state->nrels, 64);

		local_rels = local_rels == NULL
			? MemoryContextAlloc(TopMemoryContext, sizeof(FencedRelation) * size)
			: repalloc(local_rels, sizeof(FencedRelation) * size);
		local_rels_size = size;
	}
	local_nfences = 0;
	local_database_fence = -1;
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
	{
		FenceEntry *entry = &fence_state->fences[i];

		if (entry->fence_id == 0 || entry->dbid != MyDatabaseId)
			continue;
		if (entry->scope == FENCE_SCOPE_DATABASE && local_database_fence < 0)
			local_database_fence = local_nfences;
		local_fences[local_nfences++] = *entry;
	}
	local_nrels = 0;
	for (int i = 0; i < fence_state->nrels; i++)
		if (fence_state->rels[i].dbid == MyDatabaseId)
			local_rels[local_nrels++] = fence_state->rels[i];
	LWLockRelease(fence_lock);

	qsort(local_rels, local_nrels, sizeof(FencedRelation), fenced_relation_cmp);
	local_generation = generation;
}

static FenceEntry *
local_fence_by_id(int32 fence_id)
{
	for (int i = 0; i < local_nfences; i++)
		if (local_fences[i].fence_id == fence_id)
			return &local_fences[i];
	return NULL;
}

static char *
qualified_relation_name(Oid relid)
{
	char	   *relname = get_rel_name(relid);
	char	   *nspname = get_namespace_name(get_rel_namespace(relid));

	if (relname == NULL || nspname == NULL)
		return psprintf("%u", relid);
	return quote_qualified_identifier(nspname, relname);
}

static void
fence_report(Oid relid, const char *operation, FenceEntry *fence, const char *connections)
{
	const char *since = timestamptz_to_str(fence->since);
	const char *reason = fence->reason[0] ? fence->reason : "no reason given";

	if (fence->scope == FENCE_SCOPE_DATABASE)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s table %s: the database is fenced for maintenance",
						operation, qualified_relation_name(relid)),
				 errdetail("Every table of this database is write-blocked by fence %d (connections: %s).",
						   fence->fence_id, connections[0] ? connections : "none"),
				 errhint("Fenced since %s by %s, because: %s. Reads still work; writes resume after connect_unfence().",
						 since, NameStr(fence->raised_by), reason)));
	if (fence->scope == FENCE_SCOPE_RELOAD)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s table %s: the sync service is reloading it (connection %s)",
						operation, qualified_relation_name(relid), connections),
				 errdetail("A reload overwrites the table from the sync target, so writes wait until it is "
						   "acknowledged (fence %d).", fence->fence_id),
				 errhint("Fenced since %s by %s, because: %s. Reads still work; writes resume when every reload "
						 "is acknowledged (see connect_mappings), or after connect_unfence().",
						 since, NameStr(fence->raised_by), reason)));
	ereport(ERROR,
			(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
			 fence->scope == FENCE_SCOPE_CONNECTION
			 ? errmsg("cannot %s table %s: it is fenced while connection \"%s\" is paused",
					  operation, qualified_relation_name(relid), NameStr(fence->connection))
			 : errmsg("cannot %s table %s, synced by connection \"%s\": a maintenance fence is up",
					  operation, qualified_relation_name(relid), connections),
			 fence->scope == FENCE_SCOPE_CONNECTION
			 ? errdetail("Writes to the tables this connection syncs are blocked while it is paused (fence %d).",
						 fence->fence_id)
			 : errdetail("Writes to every synced table are blocked for a maintenance window (fence %d).",
						 fence->fence_id),
			 errhint("Fenced since %s by %s, because: %s. Reads still work; writes resume after %s.",
					 since, NameStr(fence->raised_by), reason,
					 fence->scope == FENCE_SCOPE_CONNECTION ? "connect_resume()" : "connect_unfence()")));
}

/*
 * fence_check_relation raises the fence's error if relid may not be written
 * by this session.
 */
static void
fence_check_relation(Oid relid, const char *operation)
{
	FencedRelation key;
	FencedRelation *hit;

	if (fence_bypass || !OidIsValid(relid))
		return;
	fence_refresh_local();
	if (local_nfences == 0)
		return;

	key.relid = relid;
	hit = bsearch(&key, local_rels, local_nrels, sizeof(FencedRelation), fenced_relation_cmp);

	/* a partition attached after the fence went up is fenced with its parent */
	if (hit == NULL && local_nrels > 0 && get_rel_relispartition(relid))
	{
		ListCell   *lc;

		foreach(lc, get_partition_ancestors(relid))
		{
			key.relid = lfirst_oid(lc);
			hit = bsearch(&key, local_rels, local_nrels, sizeof(FencedRelation), fenced_relation_cmp);
			if (hit != NULL)
				break;
		}
	}
	if (hit != NULL)
	{
		FenceEntry *fence = local_fence_by_id(hit->fence_id);

		if (fence != NULL)
			fence_report(relid, operation, fence, NameStr(hit->connections));
	}

	if (local_database_fence >= 0 && relid >= FirstNormalObjectId)
	{
		char		persistence = get_rel_persistence(relid);

		/* temp tables are private to the session; our own catalog keeps working */
		if (persistence == RELPERSISTENCE_TEMP ||
			get_rel_namespace(relid) == get_namespace_oid(CONNECT_GUARD_SCHEMA, true))
			return;
		fence_report(relid, operation, &local_fences[local_database_fence], "");
	}
}

static const char *
operation_name(CmdType operation)
{
	switch (operation)
	{
		case CMD_INSERT:
			return "INSERT into";
		case CMD_UPDATE:
			return "UPDATE";
		case CMD_DELETE:
			return "DELETE from";
		case CMD_MERGE:
			return "MERGE into";
		default:
			return "write to";	/* a data-modifying WITH in a SELECT */
	}
}

/*
 * fence_ExecutorStart checks every result relation of the plan: this is
 * where plain, prepared, PL/pgSQL, trigger and foreign-key-action writes all
 * pass.
 */
static void
fence_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	/* pg_upgrade's restore must pass, and a copied fence file must survive it */
	if (pg_atomic_read_u32(&fence_state->nactive) > 0 && !IsBinaryUpgrade &&
		!(eflags & EXEC_FLAG_EXPLAIN_ONLY))
	{
		PlannedStmt *pstmt = queryDesc->plannedstmt;
		ListCell   *lc;

		foreach(lc, pstmt->resultRelations)
		{
			RangeTblEntry *rte = rt_fetch(lfirst_int(lc), pstmt->rtable);

			fence_check_relation(rte->relid, operation_name(queryDesc->operation));
		}
	}

	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

static void
check_range_var(RangeVar *rv, const char *operation)
{
	if (rv != NULL)
		fence_check_relation(RangeVarGetRelid(rv, NoLock, true), operation);
}

/*
 * fence_check_utility covers the writes that do not start an executor.
 */
static void
fence_check_utility(Node *stmt)
{
	ListCell   *lc;

	switch (nodeTag(stmt))
	{
		case T_CopyStmt:
			if (((CopyStmt *) stmt)->is_from)
				check_range_var(((CopyStmt *) stmt)->relation, "COPY into");
			break;
		case T_TruncateStmt:
			foreach(lc, ((TruncateStmt *) stmt)->relations)
				check_range_var(lfirst_node(RangeVar, lc), "TRUNCATE");
			break;
		case T_AlterTableStmt:
			check_range_var(((AlterTableStmt *) stmt)->relation, "ALTER");
			break;
		case T_RenameStmt:
			check_range_var(((RenameStmt *) stmt)->relation, "rename");
			break;
		case T_DropStmt:
			if (((DropStmt *) stmt)->removeType == OBJECT_TABLE)
				foreach(lc, ((DropStmt *) stmt)->objects)
					check_range_var(makeRangeVarFromNameList(lfirst(lc)), "DROP");
			break;
		default:
			break;
	}
}

static bool
is_drop_of_this_extension(Node *stmt)
{
	DropStmt   *drop = (DropStmt *) stmt;
	ListCell   *lc;

	if (!IsA(stmt, DropStmt) || drop->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, drop->objects)
		if (strcmp(strVal(lfirst(lc)), "connect_guard") == 0)
			return true;
	return false;
}

static void fence_lower_all_in_database(void);

static void
fence_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	if (pg_atomic_read_u32(&fence_state->nactive) > 0 && !IsBinaryUpgrade)
		fence_check_utility(stmt);

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);

	/* nothing could lower a fence left behind by a dropped extension */
	if (pg_atomic_read_u32(&fence_state->nactive) > 0 && !IsBinaryUpgrade &&
		is_drop_of_this_extension(stmt))
		fence_lower_all_in_database();
}

/* ------------------------------------------------------------------------
 * Changing the shared state.  Caller holds fence_lock exclusively.
 * ------------------------------------------------------------------------ */

static void
fence_changed(void)
{
	pg_atomic_fetch_add_u64(&fence_state->generation, 1);
}

static int
count_fences(void)
{
	int			n = 0;

	for (int i = 0; i < FENCE_MAX_FENCES; i++)
		if (fence_state->fences[i].fence_id != 0)
			n++;
	return n;
}

/* remove_relations drops the relations of fence_id, returning a copy. */
static FencedRelation *
remove_relations(int32 fence_id, int *nremoved)
{
	FencedRelation *removed = palloc(sizeof(FencedRelation) * Max(fence_state->nrels, 1));
	int			kept = 0;

	*nremoved = 0;
	for (int i = 0; i < fence_state->nrels; i++)
	{
		if (fence_state->rels[i].fence_id == fence_id)
			removed[(*nremoved)++] = fence_state->rels[i];
		else
			fence_state->rels[kept++] = fence_state->rels[i];
	}
	fence_state->nrels = kept;
	return removed;
}

static void
add_relations(const FencedRelation *rels, int nrels)
{
	if (fence_state->nrels + nrels > fence_max_tables)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("cannot fence %d more tables: %d of connect_guard.max_fenced_tables = %d are in use",
						nrels, fence_state->nrels, fence_max_tables),
				 errhint("Raise connect_guard.max_fenced_tables and restart, or use a database-wide fence.")));
	memcpy(&fence_state->rels[fence_state->nrels], rels, sizeof(FencedRelation) * nrels);
	fence_state->nrels += nrels;
}

static FenceEntry *
find_fence(int32 fence_id)
{
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
		if (fence_state->fences[i].fence_id == fence_id &&
			fence_state->fences[i].dbid == MyDatabaseId)
			return &fence_state->fences[i];
	return NULL;
}

static void
install_entry(const FenceEntry *entry)
{
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
	{
		if (fence_state->fences[i].fence_id == 0)
		{
			fence_state->fences[i] = *entry;
			return;
		}
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("cannot raise more than %d fences at once", FENCE_MAX_FENCES),
			 errhint("Lower fences that are no longer needed; see connect_fences.")));
}

static void
publish(int elevel)
{
	pg_atomic_write_u32(&fence_state->nactive, count_fences());
	fence_changed();
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

static void
remember_undo(FenceUndoKind kind, const FenceEntry *entry, FencedRelation *rels, int nrels)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	FenceUndo  *undo = palloc0(sizeof(FenceUndo));

	undo->kind = kind;
	undo->entry = *entry;
	undo->nrels = nrels;
	if (nrels > 0)
	{
		undo->rels = palloc(sizeof(FencedRelation) * nrels);
		memcpy(undo->rels, rels, sizeof(FencedRelation) * nrels);
	}
	fence_undo = lcons(undo, fence_undo);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * fence_xact_callback undoes, in reverse order, the fence changes of a
 * transaction that aborted.
 */
static void
fence_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	if (fence_undo == NIL)
		return;
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		LWLockAcquire(fence_lock, LW_EXCLUSIVE);
		foreach(lc, fence_undo)
		{
			FenceUndo  *undo = lfirst(lc);
			FenceEntry *entry = find_fence(undo->entry.fence_id);
			int			n;

			switch (undo->kind)
			{
				case UNDO_RAISE:
					if (entry != NULL)
						entry->fence_id = 0;
					pfree(remove_relations(undo->entry.fence_id, &n));
					break;
				case UNDO_LOWER:
					if (entry == NULL && count_fences() < FENCE_MAX_FENCES &&
						fence_state->nrels + undo->nrels <= fence_max_tables)
					{
						install_entry(&undo->entry);
						add_relations(undo->rels, undo->nrels);
					}
					break;
				case UNDO_SET_RELATIONS:
					pfree(remove_relations(undo->entry.fence_id, &n));
					if (fence_state->nrels + undo->nrels <= fence_max_tables)
						add_relations(undo->rels, undo->nrels);
					break;
			}
		}
		publish(WARNING);
		LWLockRelease(fence_lock);
	}
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE)
	{
		list_free_deep(fence_undo);
		fence_undo = NIL;
	}
}

static void
fence_lower_all_in_database(void)
{
	int			n;

	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
	{
		FenceEntry *entry = &fence_state->fences[i];

		if (entry->fence_id == 0 || entry->dbid != MyDatabaseId)
			continue;
		remember_undo(UNDO_LOWER, entry, NULL, 0);
		pfree(remove_relations(entry->fence_id, &n));
		entry->fence_id = 0;
	}
	publish(ERROR);
	LWLockRelease(fence_lock);
}

/* ------------------------------------------------------------------------
 * SQL functions (private; the connect_* functions in the install script
 * call them and do the waiting and the event log)
 * ------------------------------------------------------------------------ */

static FencedRelation *
relations_from_arrays(ArrayType *relids, ArrayType *connections, int32 fence_id, int *nrels)
{
	Datum	   *oids;
	Datum	   *names;
	bool	   *nulls;
	int			n;
	int			nnames;
	FencedRelation *rels;

	deconstruct_array(relids, OIDOID, sizeof(Oid), true, TYPALIGN_INT, &oids, &nulls, &n);
	deconstruct_array(connections, TEXTOID, -1, false, TYPALIGN_INT, &names, NULL, &nnames);
	if (nnames != n)
		elog(ERROR, "relation and connection arrays differ in length");
	rels = palloc0(sizeof(FencedRelation) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		rels[i].dbid = MyDatabaseId;
		rels[i].relid = DatumGetObjectId(oids[i]);
		rels[i].fence_id = fence_id;
		namestrcpy(&rels[i].connections, TextDatumGetCString(names[i]));
	}
	*nrels = n;
	return rels;
}

static FenceScope
scope_from_text(const char *scope)
{
	if (strcmp(scope, "connection") == 0)
		return FENCE_SCOPE_CONNECTION;
	if (strcmp(scope, "mapped") == 0)
		return FENCE_SCOPE_MAPPED;
	if (strcmp(scope, "database") == 0)
		return FENCE_SCOPE_DATABASE;
	if (strcmp(scope, "reload") == 0)
		return FENCE_SCOPE_RELOAD;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown fence scope \"%s\"", scope),
			 errhint("Use 'mapped' (the tables of every connection), 'database' (every table), 'connection' or 'reload'.")));
	return 0;					/* keep compiler quiet */
}

static const char *
scope_to_text(int32 scope)
{
	switch (scope)
	{
		case FENCE_SCOPE_CONNECTION:
			return "connection";
		case FENCE_SCOPE_MAPPED:
			return "mapped";
		case FENCE_SCOPE_RELOAD:
			return "reload";
		default:
			return "database";
	}
}

/*
 * connect_guard.fence_raise(scope, connection_id, connection, reason,
 * relids, relconnections) raises a fence at once and returns its id.
 */
Datum
connect_guard_fence_raise(PG_FUNCTION_ARGS)
{
	FenceEntry	entry;
	FencedRelation *rels;
	int			nrels;
	char	   *reason = PG_ARGISNULL(3) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(3));

	fence_require_shmem();
	memset(&entry, 0, sizeof(entry));
	entry.dbid = MyDatabaseId;
	entry.scope = scope_from_text(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	entry.connection_id = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	entry.since = GetCurrentTimestamp();
	namestrcpy(&entry.raised_by, GetUserNameFromId(GetSessionUserId(), false));
	if (!PG_ARGISNULL(2))
		namestrcpy(&entry.connection, text_to_cstring(PG_GETARG_TEXT_PP(2)));
	strlcpy(entry.reason, reason, FENCE_REASON_LEN);

	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	entry.fence_id = fence_state->next_fence_id++;
	rels = relations_from_arrays(PG_GETARG_ARRAYTYPE_P(4), PG_GETARG_ARRAYTYPE_P(5),
								 entry.fence_id, &nrels);
	install_entry(&entry);
	PG_TRY();
	{
		add_relations(rels, nrels);
	}
	PG_CATCH();
	{
		FenceEntry *installed = find_fence(entry.fence_id);

		if (installed)
			installed->fence_id = 0;
		PG_RE_THROW();
	}
	PG_END_TRY();
	remember_undo(UNDO_RAISE, &entry, NULL, 0);
	publish(ERROR);
	LWLockRelease(fence_lock);

	PG_RETURN_INT32(entry.fence_id);
}

/* connect_guard.fence_lower(fence_id) lowers a fence of this database. */
Datum
connect_guard_fence_lower(PG_FUNCTION_ARGS)
{
	int32		fence_id = PG_GETARG_INT32(0);
	FenceEntry *entry;
	FencedRelation *rels;
	int			nrels;

	fence_require_shmem();
	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	entry = find_fence(fence_id);
	if (entry == NULL)
	{
		LWLockRelease(fence_lock);
		PG_RETURN_BOOL(false);
	}
	rels = remove_relations(fence_id, &nrels);
	remember_undo(UNDO_LOWER, entry, rels, nrels);
	entry->fence_id = 0;
	publish(ERROR);
	LWLockRelease(fence_lock);
	PG_RETURN_BOOL(true);
}

/*
 * connect_guard.fence_set_relations(fence_id, relids, relconnections)
 * replaces the tables of a fence, when mappings change while it is up.
 */
Datum
connect_guard_fence_set_relations(PG_FUNCTION_ARGS)
{
	int32		fence_id = PG_GETARG_INT32(0);
	FencedRelation *rels;
	FencedRelation *old;
	int			nrels;
	int			nold;

	fence_require_shmem();
	LWLockAcquire(fence_lock, LW_EXCLUSIVE);
	if (find_fence(fence_id) == NULL)
	{
		LWLockRelease(fence_lock);
		PG_RETURN_BOOL(false);
	}
	rels = relations_from_arrays(PG_GETARG_ARRAYTYPE_P(1), PG_GETARG_ARRAYTYPE_P(2),
								 fence_id, &nrels);
	old = remove_relations(fence_id, &nold);
	PG_TRY();
	{
		add_relations(rels, nrels);
	}
	PG_CATCH();
	{
		add_relations(old, nold);
		PG_RE_THROW();
	}
	PG_END_TRY();
	remember_undo(UNDO_SET_RELATIONS, find_fence(fence_id), old, nold);
	publish(ERROR);
	LWLockRelease(fence_lock);
	PG_RETURN_BOOL(true);
}

/* connect_guard.fence_list() returns the fences of this database. */
Datum
connect_guard_fence_list(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (fence_state == NULL)
		return (Datum) 0;		/* not preloaded: no fence can be up */
	LWLockAcquire(fence_lock, LW_SHARED);
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
	{
		FenceEntry *entry = &fence_state->fences[i];
		Datum		values[8];
		bool		nulls[8] = {false};
		int			tables = 0;

		if (entry->fence_id == 0 || entry->dbid != MyDatabaseId)
			continue;
		for (int r = 0; r < fence_state->nrels; r++)
			if (fence_state->rels[r].fence_id == entry->fence_id)
				tables++;
		values[0] = Int32GetDatum(entry->fence_id);
		values[1] = CStringGetTextDatum(scope_to_text(entry->scope));
		values[2] = Int32GetDatum(entry->connection_id);
		nulls[2] = entry->connection_id == 0;
		values[3] = CStringGetTextDatum(NameStr(entry->connection));
		nulls[3] = NameStr(entry->connection)[0] == '\0';
		values[4] = CStringGetTextDatum(entry->reason);
		nulls[4] = entry->reason[0] == '\0';
		values[5] = TimestampTzGetDatum(entry->since);
		values[6] = NameGetDatum(&entry->raised_by);
		values[7] = Int32GetDatum(tables);
		nulls[7] = entry->scope == FENCE_SCOPE_DATABASE;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(fence_lock);
	return (Datum) 0;
}

/* connect_guard.fence_relations() returns the fenced tables of this database. */
Datum
connect_guard_fence_relations(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (fence_state == NULL)
		return (Datum) 0;
	LWLockAcquire(fence_lock, LW_SHARED);
	for (int i = 0; i < fence_state->nrels; i++)
	{
		FencedRelation *rel = &fence_state->rels[i];
		Datum		values[3];
		bool		nulls[3] = {false};

		if (rel->dbid != MyDatabaseId)
			continue;
		values[0] = Int32GetDatum(rel->fence_id);
		values[1] = ObjectIdGetDatum(rel->relid);
		values[2] = CStringGetTextDatum(NameStr(rel->connections));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(fence_lock);
	return (Datum) 0;
}

/* connect_guard.fence_available() tells whether fences can be raised here. */
Datum
connect_guard_fence_available(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(fence_state != NULL);
}

/*
 * connect_guard.wait_for_lockers(relids) waits until every transaction that
 * holds a write lock on one of relids has ended, as CREATE INDEX
 * CONCURRENTLY does.  The waits are ordinary lock waits, so lock_timeout
 * bounds them and pg_blocking_pids() shows them.
 */
Datum
connect_guard_wait_for_lockers(PG_FUNCTION_ARGS)
{
	ArrayType  *relids = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *oids;
	bool	   *nulls;
	int			n;
	List	   *locktags = NIL;

	deconstruct_array(relids, OIDOID, sizeof(Oid), true, TYPALIGN_INT, &oids, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		LOCKTAG    *tag = palloc(sizeof(LOCKTAG));

		SET_LOCKTAG_RELATION(*tag, MyDatabaseId, DatumGetObjectId(oids[i]));
		locktags = lappend(locktags, tag);
	}
	/* ShareLock conflicts with RowExclusiveLock and every stronger mode */
	if (locktags != NIL)
		WaitForLockersMultiple(locktags, ShareLock, false);
	PG_RETURN_VOID();
}
