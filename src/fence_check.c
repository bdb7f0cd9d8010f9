/*
 * fence_check.c
 *		Whether a write reaches a fenced table, the executor's check, the
 *		large-object check, and the error they raise.
 *
 * A write reaches a fenced table when it is aimed at the table itself, at
 * one of its partitions or inheritance children (their rows are part of
 * the table: SELECT FROM the table shows them), or at a partitioned table
 * above it (rows are routed into it).  So a relation counts as fenced when
 * it or one of its ancestors is; a write to a partitioned table also when
 * one of its descendants is.  The DDL side (fence_ddl.c) refuses to change
 * the inheritance of fenced tables while they are fenced, so that what is
 * worked out here stays true.
 *
 * ExecutorStart sees every DML, however it was issued: plain, prepared,
 * PL/pgSQL cached plans, writable CTEs, rules, updatable views, INSTEAD OF
 * triggers, foreign-key actions, since all of them start an executor; its
 * result relations are what it writes.  Writes that start no executor
 * (logical replication's apply) still fire the capture trigger of a mapped
 * table, which makes the same check per row (fence_check_trigger_write).
 * Large objects are written by functions into a catalog: the calls of
 * those functions are checked.
 *
 * Cost: with no fence up and this database's write gate passed
 * (fence_gate.c), one unlocked atomic read, one flag and one comparison
 * (session_replication_role, replica_writes.c) per statement, and one
 * flag and one atomic read per captured row (fence_trigger_check_needed).
 * With a fence up, each backend keeps a sorted copy of its database's
 * fenced relation OIDs, rebuilt only when the shared generation counter
 * moves, and a cache of verdicts per relation (reset when the copy is
 * rebuilt or any relcache entry is invalidated), so a repeated statement
 * costs a hash lookup, never a catalog scan.
 *
 * Locking: the local copy is taken under the fence lock, shared.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parsetree.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/xml.h"

#include "catalog_names.h"
#include "fence.h"
#include "replica_writes.h"

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;

int			fence_checked_finish_depth = 0;

/* This backend's copy of its database's fences in force (see header comment) */
static uint64 local_generation = PG_UINT64_MAX;
static int	local_nfences = 0;
static FenceEntry local_fences[FENCE_MAX_FENCES];
static int	local_nrels = 0;
static FencedRelation *local_rels = NULL;
static int	local_rels_size = 0;
static int	local_database_fence = -1;	/* index into local_fences, or -1 */
static Oid	local_own_schema = InvalidOid;

/* Verdicts of the executor's check, per relation */
typedef struct WriteVerdict
{
	Oid			relid;			/* hash key */
	bool		fenced;
	FenceHit	hit;
} WriteVerdict;

static HTAB *verdicts = NULL;
static bool verdicts_stale = false;

static void fence_ExecutorStart(QueryDesc *queryDesc, int eflags);
static void fence_ExecutorFinish(QueryDesc *queryDesc);
static void fence_relcache_callback(Datum arg, Oid relid);

void
fence_check_init(void)
{
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = fence_ExecutorStart;
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = fence_ExecutorFinish;
	CacheRegisterRelcacheCallback(fence_relcache_callback, (Datum) 0);
}

/* Any relcache invalidation may be a change of inheritance: start over. */
static void
fence_relcache_callback(Datum arg, Oid relid)
{
	verdicts_stale = true;
}

static void
reset_verdicts(void)
{
	if (verdicts != NULL)
		hash_destroy(verdicts);
	verdicts = NULL;
	verdicts_stale = false;
}

static int
fenced_relation_cmp(const void *a, const void *b)
{
	Oid			ra = ((const FencedRelation *) a)->relid;
	Oid			rb = ((const FencedRelation *) b)->relid;

	return (ra > rb) - (ra < rb);
}

/*
 * fence_refresh_local copies this database's fences in force out of shared
 * memory when they changed since the last copy.
 */
static void
fence_refresh_local(void)
{
	uint64		generation;

	fence_resolve_orphans();
	generation = pg_atomic_read_u64(&fence_state->generation);
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

		if (entry->dbid != MyDatabaseId || !fence_entry_in_force(entry))
			continue;
		if (entry->scope == FENCE_SCOPE_DATABASE && local_database_fence < 0)
			local_database_fence = local_nfences;
		local_fences[local_nfences++] = *entry;
	}
	local_nrels = 0;
	for (int i = 0; i < fence_state->nrels; i++)
	{
		FencedRelation *rel = &fence_state->rels[i];

		if (rel->dbid != MyDatabaseId)
			continue;
		for (int f = 0; f < FENCE_MAX_FENCES; f++)
		{
			if (fence_state->fences[f].fence_id == rel->fence_id &&
				fence_state->fences[f].dbid == MyDatabaseId)
			{
				if (fence_relation_in_force(rel, &fence_state->fences[f]))
					local_rels[local_nrels++] = *rel;
				break;
			}
		}
	}
	LWLockRelease(fence_lock);

	qsort(local_rels, local_nrels, sizeof(FencedRelation), fenced_relation_cmp);
	local_own_schema = local_database_fence >= 0 ? get_namespace_oid(CONNECT_GUARD_SCHEMA, true) : InvalidOid;
	local_generation = generation;
	reset_verdicts();
}

static FenceEntry *
local_fence_by_id(int32 fence_id)
{
	for (int i = 0; i < local_nfences; i++)
		if (local_fences[i].fence_id == fence_id)
			return &local_fences[i];
	return NULL;
}

/*
 * writes_through tells whether this session may write through fence.  Only
 * a reload fence lets anyone through: the sync service, whose reload is the
 * very writing the fence waits for.  Its entry's connection_id holds the
 * role the sync service logs in as (0: nobody), and its sessions are those
 * of that role with xmlbinary = 'hex', the setting Heroku Connect's sessions
 * use and its triggers skip.  An application that imitates both writes
 * through, as it would slip past Connect's own logging (README, "the reload
 * fence").  Such sessions skip the verdict cache (write_hit), which knows
 * neither the role nor the setting.
 */
static bool
writes_through(const FenceEntry *fence)
{
	return xmlbinary == XMLBINARY_HEX && fence->scope == FENCE_SCOPE_RELOAD &&
		fence->connection_id != 0 && has_privs_of_role(GetUserId(), (Oid) fence->connection_id);
}

/* direct_hit: is relid itself fenced, by a fence this session may not write through? */
static bool
direct_hit(Oid relid, FenceHit *hit)
{
	FencedRelation key;
	FencedRelation *found;

	key.relid = relid;
	found = bsearch(&key, local_rels, local_nrels, sizeof(FencedRelation), fenced_relation_cmp);
	if (found != NULL)
	{
		FencedRelation *end = local_rels + local_nrels;

		/* several fences may cover relid: they sit next to each other */
		while (found > local_rels && (found - 1)->relid == relid)
			found--;
		for (; found < end && found->relid == relid; found++)
		{
			FenceEntry *fence = local_fence_by_id(found->fence_id);

			if (fence == NULL || writes_through(fence))
				continue;
			hit->relid = relid;
			hit->fence = fence;
			hit->connections = NameStr(found->connections);
			return true;
		}
	}

	if (local_database_fence >= 0 && relid >= FirstNormalObjectId)
	{
		/*
		 * temp tables are private to the session; our own catalog keeps
		 * working
		 */
		if (get_rel_persistence(relid) == RELPERSISTENCE_TEMP ||
			get_rel_namespace(relid) == local_own_schema)
			return false;
		hit->relid = relid;
		hit->fence = &local_fences[local_database_fence];
		hit->connections = "";
		return true;
	}
	return false;
}

/* inheritance_parents: the direct parents of relid (partitioned or not) */
static List *
inheritance_parents(Oid relid)
{
	Relation	inherits = table_open(InheritsRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	List	   *parents = NIL;

	ScanKeyInit(&key, Anum_pg_inherits_inhrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(inherits, InheritsRelidSeqnoIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		parents = lappend_oid(parents, ((Form_pg_inherits) GETSTRUCT(tuple))->inhparent);
	systable_endscan(scan);
	table_close(inherits, AccessShareLock);
	return parents;
}

/*
 * fence_ancestors lists every ancestor of relid, breadth first: its
 * partitioned parents and inheritance parents, theirs, and so on (multiple
 * inheritance makes it a graph).
 */
List *
fence_ancestors(Oid relid)
{
	List	   *pending = inheritance_parents(relid);
	List	   *seen = NIL;

	while (pending != NIL)
	{
		Oid			parent = linitial_oid(pending);

		pending = list_delete_first(pending);
		if (parent == relid || list_member_oid(seen, parent))
			continue;
		seen = lappend_oid(seen, parent);
		pending = list_concat(pending, inheritance_parents(parent));
	}
	return seen;
}

/*
 * fence_find_hit tells whether a write aimed at relid reaches a fenced
 * table: relid itself, one of its ancestors, or with
 * FENCE_REACH_DESCENDANTS one of its partitions or inheritance children.
 * No cache: for DDL and the verdict cache's misses.
 */
bool
fence_find_hit(Oid relid, int reach, FenceHit *hit)
{
	ListCell   *lc;

	if (fence_bypass || !OidIsValid(relid))
		return false;
	fence_refresh_local();
	if (local_nfences == 0)
		return false;
	if (direct_hit(relid, hit))
		return true;
	foreach(lc, fence_ancestors(relid))
		if (direct_hit(lfirst_oid(lc), hit))
		return true;
	if (reach & FENCE_REACH_DESCENDANTS)
	{
		foreach(lc, find_all_inheritors(relid, NoLock, NULL))
			if (lfirst_oid(lc) != relid && direct_hit(lfirst_oid(lc), hit))
			return true;
	}
	return false;
}

/*
 * write_hit is fence_find_hit for the executor, cached: a partitioned
 * table's rows are routed to its partitions, so they count; an inheritance
 * parent's INSERT stays in the parent, and its UPDATE and DELETE list the
 * children among the result relations themselves.
 */
static bool
write_hit(Oid relid, FenceHit *hit)
{
	WriteVerdict *verdict;
	WriteVerdict computed;

	if (fence_bypass)
		return false;
	fence_refresh_local();
	if (local_nfences == 0)
		return false;
	if (xmlbinary == XMLBINARY_HEX) /* see writes_through */
	{
		int			reach = get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE ? FENCE_REACH_DESCENDANTS : 0;

		return fence_find_hit(relid, reach, hit);
	}
	if (verdicts_stale)
		reset_verdicts();
	if (verdicts == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(WriteVerdict);
		ctl.hcxt = TopMemoryContext;
		verdicts = hash_create("connect_guard fence verdicts", 64, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	verdict = hash_search(verdicts, &relid, HASH_FIND, NULL);
	if (verdict == NULL)
	{
		/* computed before it is entered: an error leaves no half entry */
		int			reach = get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE ? FENCE_REACH_DESCENDANTS : 0;

		computed.relid = relid;
		computed.fenced = fence_find_hit(relid, reach, &computed.hit);
		if (verdicts == NULL)
			return computed.fenced ? (*hit = computed.hit, true) : false;
		verdict = hash_search(verdicts, &relid, HASH_ENTER, NULL);
		*verdict = computed;
	}
	if (verdict->fenced)
		*hit = verdict->hit;
	return verdict->fenced;
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

/*
 * report raises the fence's error for a write (operation) to what (e.g.
 * "table public.contact"); relative, when set, says how the write reaches
 * the fenced table.
 */
static void
report(const char *what, const char *operation, const FenceHit *hit, const char *relative)
{
	FenceEntry *fence = hit->fence;
	const char *since = timestamptz_to_str(fence->since);
	const char *reason = fence->reason[0] ? fence->reason : "no reason given";
	const char *connections = hit->connections;
	const char *prefix = relative ? relative : "";

	if (fence->scope == FENCE_SCOPE_DATABASE)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s %s: the database is fenced for maintenance", operation, what),
				 errdetail("%sEvery table of this database is write-blocked by fence %d (connections: %s).",
						   prefix, fence->fence_id, connections[0] ? connections : "none"),
				 errhint("Fenced since %s by %s, because: %s. Reads still work; writes resume after connect_unfence().",
						 since, NameStr(fence->raised_by), reason)));
	if (fence->scope == FENCE_SCOPE_RELOAD)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s %s: the sync service is reloading it (connection %s)",
						operation, what, connections),
				 errdetail("%sA reload overwrites the table from the sync target, so writes wait until it is "
						   "acknowledged (fence %d).", prefix, fence->fence_id),
				 errhint("Fenced since %s by %s, because: %s. Reads still work; writes resume when every reload "
						 "is acknowledged (see connect_mappings), or after connect_unfence().",
						 since, NameStr(fence->raised_by), reason)));
	ereport(ERROR,
			(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
			 fence->scope == FENCE_SCOPE_CONNECTION
			 ? errmsg("cannot %s %s: it is fenced while connection \"%s\" is paused",
					  operation, what, NameStr(fence->connection))
			 : errmsg("cannot %s %s, synced by connection \"%s\": a maintenance fence is up",
					  operation, what, connections),
			 fence->scope == FENCE_SCOPE_CONNECTION
			 ? errdetail("%sWrites to the tables this connection syncs are blocked while it is paused (fence %d).",
						 prefix, fence->fence_id)
			 : errdetail("%sWrites to every synced table are blocked for a maintenance window (fence %d).",
						 prefix, fence->fence_id),
			 errhint("Fenced since %s by %s, because: %s. Reads still work; writes resume after %s.",
					 since, NameStr(fence->raised_by), reason,
					 fence->scope == FENCE_SCOPE_CONNECTION ? "connect_resume()" : "connect_unfence()")));
}

void
fence_report(Oid target, const char *operation, const FenceHit *hit)
{
	char	   *what = psprintf("table %s", qualified_relation_name(target));
	char	   *relative = NULL;

	if (hit->relid != target)
		relative = psprintf("The write reaches fenced table %s (a partition, inheritance parent or child of "
							"%s, or a table its TRUNCATE cascades to). ",
							qualified_relation_name(hit->relid), qualified_relation_name(target));
	report(what, operation, hit, relative);
}

/*
 * fence_check_relation raises the fence's error if a write (operation)
 * aimed at relid may not happen in this session; for the utility
 * statements, uncached.
 */
void
fence_check_relation(Oid relid, const char *operation, int reach)
{
	FenceHit	hit;

	if (!OidIsValid(relid) || IsBinaryUpgrade)
		return;
	if (!fence_gate_passed)
		fence_gate_check(relid, operation);
	if (pg_atomic_read_u32(&fence_state->nactive) > 0 && fence_find_hit(relid, reach, &hit))
		fence_report(relid, operation, &hit);
}

/* fence_database_fenced: is a database-wide fence up here (for this session)? */
bool
fence_database_fenced(void)
{
	if (fence_bypass || IsBinaryUpgrade || pg_atomic_read_u32(&fence_state->nactive) == 0)
		return false;
	fence_refresh_local();
	return local_database_fence >= 0;
}

/*
 * fence_check_new_relation refuses to fill a new permanent relation (CREATE
 * TABLE AS, SELECT INTO, CREATE MATERIALIZED VIEW) under a database-wide
 * fence; temporary ones are private to the session.
 */
void
fence_check_new_relation(const RangeVar *rv, const char *operation)
{
	FenceHit	hit;

	if (rv->relpersistence == RELPERSISTENCE_TEMP || !fence_database_fenced())
		return;
	hit.relid = InvalidOid;
	hit.fence = &local_fences[local_database_fence];
	hit.connections = "";
	report(psprintf("table %s", quote_qualified_identifier(rv->schemaname, rv->relname)), operation, &hit, NULL);
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
 * check_write is the decision on a write (operation) to relid, for the
 * executor (each result relation) and the capture trigger (each row): it
 * waits at the write gate, and raises the fence's error if the write
 * reaches a fenced table in this session.
 */
static void
check_write(Oid relid, const char *operation)
{
	FenceHit	hit;

	if (!fence_gate_passed)
		fence_gate_check(relid, operation);
	if (pg_atomic_read_u32(&fence_state->nactive) > 0 && write_hit(relid, &hit))
		fence_report(relid, operation, &hit);
}

/* check_result_relations: the checks of a plan's result relations */
static pg_noinline void
check_result_relations(QueryDesc *queryDesc)
{
	PlannedStmt *pstmt = queryDesc->plannedstmt;
	const char *operation = operation_name(queryDesc->operation);
	ListCell   *lc;

	foreach(lc, pstmt->resultRelations)
	{
		Oid			relid = rt_fetch(lfirst_int(lc), pstmt->rtable)->relid;

		check_write(relid, operation);
		/* a write the capture trigger would not see (replica_writes.c) */
		if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
			replica_check_write(relid, TRIGGER_TYPE_INSERT | TRIGGER_TYPE_UPDATE | TRIGGER_TYPE_DELETE,
								operation, RowExclusiveLock);
	}
}

/*
 * fence_ExecutorStart checks every result relation of the plan: this is
 * where plain, prepared, PL/pgSQL, trigger and foreign-key-action writes all
 * pass.  pg_upgrade's restore must pass, and a copied fence file must
 * survive it.  A session with session_replication_role = replica is checked
 * too (replica_writes.c): in the origin role that costs one comparison.
 */
static void
fence_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (unlikely(!fence_gate_passed || pg_atomic_read_u32(&fence_state->nactive) > 0 ||
				 SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA) &&
		queryDesc->plannedstmt->resultRelations != NIL && !IsBinaryUpgrade &&
		!(eflags & EXEC_FLAG_EXPLAIN_ONLY))
		check_result_relations(queryDesc);

	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * fence_ExecutorFinish counts the executors finishing, where their
 * statements' AFTER ROW triggers fire: fence_ExecutorStart checked those
 * writes (fence_trigger_check_needed).  Writes that start no executor
 * (logical replication's apply, COPY, other extensions' C code) fire their
 * triggers outside ExecutorFinish, at depth 0, and are checked by the
 * capture trigger.
 */
static void
fence_ExecutorFinish(QueryDesc *queryDesc)
{
	fence_checked_finish_depth++;
	PG_TRY();
	{
		if (prev_ExecutorFinish)
			prev_ExecutorFinish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		fence_checked_finish_depth--;
	}
	PG_END_TRY();
}

/*
 * fence_check_trigger_write is the executor's check of a write, made again
 * by the capture trigger for the row (or TRUNCATE) that fired it, when
 * fence_trigger_check_needed() says a fence or the write gate is up.  It
 * catches writes that start no executor: logical replication's apply and
 * table-sync workers (their error makes the worker exit and retry the
 * transaction later, so the rows arrive once the fence is lowered), COPY's
 * rows into a table the utility check let through, C code of other
 * extensions.  A write whose executor start was checked is not checked
 * again (fence_ExecutorFinish): a fence waits for the transactions in
 * flight as it goes up, and their statements end as they would have.
 */
pg_noinline void
fence_check_trigger_write(Oid relid, TriggerEvent event)
{
	const char *operation;

	if (IsBinaryUpgrade)
		return;
	if (TRIGGER_FIRED_BY_INSERT(event))
		operation = operation_name(CMD_INSERT);
	else if (TRIGGER_FIRED_BY_UPDATE(event))
		operation = operation_name(CMD_UPDATE);
	else if (TRIGGER_FIRED_BY_DELETE(event))
		operation = operation_name(CMD_DELETE);
	else
		operation = "TRUNCATE";
	check_write(relid, operation);
}

/* ------------------------------------------------------------------------
 * Large objects live in a catalog (pg_largeobject) and are written by
 * functions, not by DML: under a database-wide fence the calls of those
 * functions are refused.  The function manager's hook is not asked about
 * built-in functions, so the check is made where the executor (and the
 * fast-path interface of libpq's lo_* calls) announces a function it is
 * about to call: the object-access hook's OAT_FUNCTION_EXECUTE
 * (fence_ddl.c), once per function per plan start, a switch for the
 * others.
 * ------------------------------------------------------------------------ */

static const char *
large_object_write(Oid fn_oid)
{
	switch (fn_oid)
	{
		case F_LO_CREATE:
		case F_LO_CREAT:
		case F_LO_FROM_BYTEA:
		case F_LO_IMPORT_TEXT:
		case F_LO_IMPORT_TEXT_OID:
			return "create";
		case F_LOWRITE:
		case F_LO_PUT:
		case F_LO_TRUNCATE:
		case F_LO_TRUNCATE64:
			return "write to";
		case F_LO_UNLINK:
			return "drop";
		default:
			return NULL;
	}
}

static void
report_large_object(const char *operation)
{
	FenceHit	hit;

	hit.relid = InvalidOid;
	hit.fence = &local_fences[local_database_fence];
	hit.connections = "";
	report("a large object", operation, &hit, NULL);
}

/* fence_check_function: a call of fn_oid is about to start */
void
fence_check_function(Oid fn_oid)
{
	const char *operation = large_object_write(fn_oid);

	if (operation != NULL && fence_database_fenced())
		report_large_object(operation);
}

/* fence_check_large_object_drop: DROP OWNED and friends unlink large objects too */
void
fence_check_large_object_drop(void)
{
	if (fence_database_fenced())
		report_large_object("drop");
}
