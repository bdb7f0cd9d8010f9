/*
 * log_writer.c
 *		Appends entries to connect_guard.trigger_log, in batches.
 *
 * The capture trigger fires once per changed row.  Inserting each entry on
 * its own costs a WAL record, a buffer lookup and a page lock per row, and
 * opening the log and its indexes per row; so entries are formed at once
 * (with their id: see "Ordering") but kept in a bounded buffer and written
 * with heap_multi_insert() at the end of the statement, when the buffer is
 * full, and in any case before anything could read them:
 *
 *	- after every statement (ExecutorFinish, and ProcessUtility for COPY and
 *	  TRUNCATE), so that the next statement of the transaction sees them;
 *	- before every statement (ExecutorStart, ProcessUtility), in case an
 *	  entry was left (the library loaded in mid-statement, see below);
 *	- before commit and PREPARE (XACT_EVENT_PRE_COMMIT/PRE_PREPARE).  After
 *	  that point, entries are written at once.
 *
 * The buffer holds at most LOG_BUFFER_ENTRIES entries or LOG_BUFFER_BYTES of
 * them per (sub)transaction level, whatever the statement's size: a
 * ten-million-row UPDATE keeps PostgreSQL's after-trigger queue, not ten
 * million entries here.
 *
 * Subtransactions: an entry must be inserted by the subtransaction that made
 * it, so that ROLLBACK TO SAVEPOINT (or a PL/pgSQL exception block) takes
 * it away with the change it records.  Each buffered entry carries its
 * subtransaction; a flush writes only the entries of the current one (they
 * are always the tail of the buffer).  A subtransaction that aborts drops
 * its tail; one that commits hands it to its parent.  At top-level commit
 * every entry belongs to the top transaction.
 *
 * Ordering: the entry's id is taken from the log's sequence when the trigger
 * fires, after the transaction has its xid, which connect_next_batch relies
 * on (see the tick comments in the install script and tick.c); entries are
 * ordered by id, not by where they land in the heap.
 *
 * Locking: the log is locked (RowExclusiveLock, as an INSERT would) when the
 * first entry of a transaction is formed, not only when it is written, so
 * that its definition cannot change under a buffered entry.  Our own
 * transaction's DDL on the log is a utility statement, which flushes first.
 *
 * Security: inserting directly needs no privilege on the log, so the
 * application's roles get none: they cannot write, rewrite or delete log
 * entries, yet all their changes are captured.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/hio.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "catalog_names.h"
#include "log_writer.h"

/* The bounds of the buffer: about what COPY buffers per table. */
#define LOG_BUFFER_ENTRIES 1000
#define LOG_BUFFER_BYTES (256 * 1024)

static const struct
{
	const char *name;
	Oid			type;
}			log_columns[LOG_NCOLUMNS] =

{
	{"id", INT8OID},
	{"txid", XID8OID},
	{"created_at", TIMESTAMPTZOID},
	{"updated_at", TIMESTAMPTZOID},
	{"processed_at", TIMESTAMPTZOID},
	{"processed_tx", XID8OID},
	{"state", TEXTOID},
	{"action", TEXTOID},
	{"table_schema", TEXTOID},
	{"table_name", TEXTOID},
	{"record_id", TEXTOID},
	{"sfid", TEXTOID},
	{"old", JSONBOID},
	{"values", JSONBOID},
	{"sf_result", INT4OID},
	{"sf_message", TEXTOID},
};

/*
 * What the writer needs to know about the log itself.  Reset whenever the
 * log's relcache entry is invalidated (which includes DROP EXTENSION).
 */
typedef struct TriggerLogInfo
{
	bool		valid;
	Oid			relid;
	Oid			seqid;
	int			nindexes;
	Oid		   *indexids;
	IndexInfo **indexinfo;
	MemoryContext cxt;
} TriggerLogInfo;

/*
 * The buffered entries.  slots[i] holds entry i, formed in cxt and owned by
 * the slot; subids[i] is the subtransaction that made it.  The tuple
 * descriptor is built from log_columns, not taken from the relcache: every
 * log that passes trigger_log_load's check has exactly this layout.
 */
typedef struct LogBuffer
{
	MemoryContext cxt;
	TupleDesc	desc;
	TupleTableSlot **slots;
	SubTransactionId *subids;
	int			nslots;			/* allocated */
	int			n;				/* in use */
	Size		bytes;			/* formed since the last flush */
	int			flush_at;		/* flush when n reaches this */
	/* the transaction in which the log is locked, or invalid */
	LocalTransactionId locked_lxid;
	/* the pre-commit flush has run: write new entries at once */
	bool		committing;
	bool		flushing;
	/* scratch memory of one flush */
	MemoryContext flush_cxt;
} LogBuffer;

static TriggerLogInfo trigger_log;
static LogBuffer buffer;

/*
 * When the library was loaded in mid-statement (no shared_preload_libraries:
 * the capture trigger itself loads it), that statement's ExecutorFinish ran
 * without our hook.  Until the next statement, entries are written at once.
 */
static TimestampTz loaded_in_statement = 0;

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

static void log_writer_relcache_callback(Datum arg, Oid relid);
static void log_writer_xact_callback(XactEvent event, void *arg);
static void log_writer_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
										SubTransactionId parentSubid, void *arg);
static void log_writer_ExecutorStart(QueryDesc *queryDesc, int eflags);
static void log_writer_ExecutorFinish(QueryDesc *queryDesc);
static void log_writer_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
									  bool readOnlyTree, ProcessUtilityContext context,
									  ParamListInfo params, QueryEnvironment *queryEnv,
									  DestReceiver *dest, QueryCompletion *qc);
static void trigger_log_prepare(void);
static void trigger_log_load(void);
static void trigger_log_check(Relation rel);
static void trigger_log_insert(TupleTableSlot **slots, int n);
static void buffer_flush_current(void);
static int	buffer_tail_start(SubTransactionId subid);

/*
 * log_writer_init registers the callbacks and hooks.  Called once per
 * process from _PG_init, whether or not the library is preloaded.
 */
void
log_writer_init(void)
{
	buffer.flush_at = LOG_BUFFER_ENTRIES;
	buffer.cxt = AllocSetContextCreate(TopMemoryContext,
									   "connect_guard log buffer",
									   ALLOCSET_DEFAULT_SIZES);
	buffer.flush_cxt = AllocSetContextCreate(TopMemoryContext,
											 "connect_guard log flush",
											 ALLOCSET_DEFAULT_SIZES);
	if (!process_shared_preload_libraries_in_progress)
		loaded_in_statement = GetCurrentStatementStartTimestamp();

	CacheRegisterRelcacheCallback(log_writer_relcache_callback, (Datum) 0);
	RegisterXactCallback(log_writer_xact_callback, NULL);
	RegisterSubXactCallback(log_writer_subxact_callback, NULL);

	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = log_writer_ExecutorStart;
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = log_writer_ExecutorFinish;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = log_writer_ProcessUtility;
}

/*
 * log_writer_relcache_callback forgets what it knows about the log when its
 * definition may have changed.  No catalog access here: the info is rebuilt
 * at its next use.
 */
static void
log_writer_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == trigger_log.relid)
		trigger_log.valid = false;
}

/*
 * trigger_log_load finds the log, its id sequence and its indexes, and
 * checks that the table still has the columns this file writes.  It opens
 * (and so locks) the log; the lock is kept to the end of the transaction.
 */
static void
trigger_log_load(void)
{
	Oid			nspid = get_namespace_oid(CONNECT_GUARD_SCHEMA, true);
	Relation	rel;
	List	   *indexes;
	ListCell   *lc;
	MemoryContext oldcxt;

	if (!OidIsValid(nspid) ||
		!OidIsValid(trigger_log.relid = get_relname_relid("trigger_log", nspid)) ||
		!OidIsValid(trigger_log.seqid = get_relname_relid("trigger_log_id_seq", nspid)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("connect_guard is not installed in this database"),
				 errdetail("A capture trigger fired, but the table connect_guard.trigger_log or its sequence does not exist."),
				 errhint("Run CREATE EXTENSION connect_guard, or drop the trigger _connect_guard_capture from this table.")));

	if (trigger_log.cxt == NULL)
		trigger_log.cxt = AllocSetContextCreate(CacheMemoryContext,
												"connect_guard trigger log",
												ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(trigger_log.cxt);
	trigger_log.nindexes = 0;

	/*
	 * Valid from the start: an invalidation that arrives while we load
	 * (opening the relations accepts them) must win and force a reload.
	 */
	trigger_log.valid = true;
	rel = table_open(trigger_log.relid, RowExclusiveLock);
	trigger_log_check(rel);

	indexes = RelationGetIndexList(rel);
	oldcxt = MemoryContextSwitchTo(trigger_log.cxt);
	trigger_log.indexids = palloc(sizeof(Oid) * Max(list_length(indexes), 1));
	trigger_log.indexinfo = palloc(sizeof(IndexInfo *) * Max(list_length(indexes), 1));
	foreach(lc, indexes)
	{
		Oid			indexid = lfirst_oid(lc);
		Relation	index = index_open(indexid, RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);

		/* an index being built concurrently, as ExecInsertIndexTuples does */
		if (!info->ii_ReadyForInserts)
		{
			index_close(index, NoLock);
			continue;
		}

		/* trigger_log_insert computes keys straight from the columns */
		if (info->ii_Expressions != NIL || info->ii_Predicate != NIL ||
			info->ii_ExclusionOps != NULL || !index->rd_index->indimmediate)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("connect_guard.trigger_log has an index the capture trigger cannot maintain"),
					 errdetail("Index \"%s\" is an expression, partial, exclusion or deferrable index; the capture trigger writes index entries itself, from plain columns only.",
							   RelationGetRelationName(index)),
					 errhint("Drop index connect_guard.%s, or replace it with an index on plain columns.",
							 quote_identifier(RelationGetRelationName(index)))));
		trigger_log.indexids[trigger_log.nindexes] = indexid;
		trigger_log.indexinfo[trigger_log.nindexes] = info;
		trigger_log.nindexes++;
		index_close(index, NoLock);
	}
	MemoryContextSwitchTo(oldcxt);
	list_free(indexes);
	table_close(rel, NoLock);
}

/*
 * trigger_log_check refuses a log whose columns are not the ones this file
 * writes (names, types and order), since entries are formed with that
 * layout and written straight into the heap.
 */
static void
trigger_log_check(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (desc->natts != LOG_NCOLUMNS)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("connect_guard.trigger_log does not have the columns the capture trigger writes"),
				 errdetail("The table has %d columns (dropped ones included); the capture trigger writes %d.",
						   desc->natts, LOG_NCOLUMNS),
				 errhint("The trigger log's definition must not be changed: undo the ALTER TABLE, or drain the log and reinstall the extension.")));
	for (int i = 0; i < LOG_NCOLUMNS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != log_columns[i].type ||
			strcmp(NameStr(att->attname), log_columns[i].name) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("connect_guard.trigger_log does not have the columns the capture trigger writes"),
					 errdetail("Column %d is %s; the capture trigger writes \"%s\" of type %s there.",
							   i + 1,
							   att->attisdropped ? "dropped" :
							   psprintf("\"%s\" of type %s", NameStr(att->attname),
										format_type_be(att->atttypid)),
							   log_columns[i].name, format_type_be(log_columns[i].type)),
					 errhint("The trigger log's definition must not be changed: undo the ALTER TABLE, or drain the log and reinstall the extension.")));
	}
}

/*
 * trigger_log_prepare makes sure, before an entry is formed, that the log's
 * info is valid and that this transaction holds its lock.
 */
static void
trigger_log_prepare(void)
{
	if (buffer.locked_lxid != MyProc->lxid)
	{
		if (trigger_log.valid)
			LockRelationOid(trigger_log.relid, RowExclusiveLock);
		buffer.locked_lxid = MyProc->lxid;
	}
	if (!trigger_log.valid)
	{
		PG_TRY();
		{
			trigger_log_load();
		}
		PG_CATCH();
		{
			trigger_log.valid = false;
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
}

/*
 * log_writer_append forms one entry from every column but the id and txid,
 * which it takes here, and buffers it.
 */
void
log_writer_append(Datum *values, bool *nulls)
{
	TupleTableSlot *slot;
	HeapTuple	tuple;
	MemoryContext oldcxt;
	bool		at_once;

	trigger_log_prepare();

	/* the xid first: see "Ordering" */
	values[LOG_TXID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	values[LOG_ID] = Int64GetDatum(nextval_internal(trigger_log.seqid, false));
	nulls[LOG_TXID] = nulls[LOG_ID] = false;

	/* built at first use: it looks the types up, which _PG_init cannot */
	if (buffer.desc == NULL)
	{
		TupleDesc	desc;

		oldcxt = MemoryContextSwitchTo(buffer.cxt);
		desc = CreateTemplateTupleDesc(LOG_NCOLUMNS);
		for (int i = 0; i < LOG_NCOLUMNS; i++)
			TupleDescInitEntry(desc, i + 1, log_columns[i].name,
							   log_columns[i].type, -1, 0);
		MemoryContextSwitchTo(oldcxt);
		buffer.desc = desc;
	}

	if (buffer.n == buffer.nslots)
	{
		int			nslots = Max(buffer.nslots * 2, 64);

		oldcxt = MemoryContextSwitchTo(buffer.cxt);
		if (buffer.slots == NULL)
		{
			buffer.slots = palloc(sizeof(TupleTableSlot *) * nslots);
			buffer.subids = palloc(sizeof(SubTransactionId) * nslots);
		}
		else
		{
			buffer.slots = repalloc(buffer.slots, sizeof(TupleTableSlot *) * nslots);
			buffer.subids = repalloc(buffer.subids, sizeof(SubTransactionId) * nslots);
		}
		for (int i = buffer.nslots; i < nslots; i++)
			buffer.slots[i] = MakeSingleTupleTableSlot(buffer.desc, &TTSOpsHeapTuple);
		buffer.nslots = nslots;
		MemoryContextSwitchTo(oldcxt);
	}

	oldcxt = MemoryContextSwitchTo(buffer.cxt);
	tuple = heap_form_tuple(buffer.desc, values, nulls);
	MemoryContextSwitchTo(oldcxt);
	slot = buffer.slots[buffer.n];
	ExecStoreHeapTuple(tuple, slot, true);
	buffer.subids[buffer.n] = GetCurrentSubTransactionId();
	buffer.n++;
	buffer.bytes += tuple->t_len;

	if (loaded_in_statement != 0 &&
		loaded_in_statement != GetCurrentStatementStartTimestamp())
		loaded_in_statement = 0;
	at_once = buffer.committing || loaded_in_statement != 0;
	if (at_once || buffer.bytes >= LOG_BUFFER_BYTES || buffer.n >= buffer.flush_at)
		buffer_flush_current();
}

/* buffer_tail_start returns where the entries of subid begin. */
static int
buffer_tail_start(SubTransactionId subid)
{
	int			start = buffer.n;

	while (start > 0 && buffer.subids[start - 1] == subid)
		start--;
	return start;
}

/*
 * log_writer_flush writes the current subtransaction's buffered entries,
 * when it is safe to write: in a transaction that is not aborted and not in
 * parallel mode.  Otherwise they wait for the next flush, at the latest the
 * one before commit.
 */
void
log_writer_flush(void)
{
	if (buffer.n == 0 || buffer.flushing || !IsTransactionState() ||
		IsInParallelMode())
		return;
	buffer_flush_current();
}

/*
 * buffer_flush_current writes the tail of the buffer that belongs to the
 * current subtransaction.  The entries leave the buffer before they are
 * written: if writing fails, the error aborts this subtransaction, which
 * would have dropped them anyway.
 */
static void
buffer_flush_current(void)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	int			start = buffer_tail_start(subid);
	int			n = buffer.n - start;

	/*
	 * Entries of enclosing subtransactions stay (they are bounded the same
	 * way when they are made), so the next flush comes LOG_BUFFER_ENTRIES
	 * entries from here.
	 */
	buffer.n = start;
	buffer.bytes = 0;
	buffer.flush_at = start + LOG_BUFFER_ENTRIES;
	if (n == 0)
		return;

	buffer.flushing = true;
	PG_TRY();
	{
		trigger_log_insert(&buffer.slots[start], n);
	}
	PG_FINALLY();
	{
		buffer.flushing = false;
	}
	PG_END_TRY();
}

/*
 * trigger_log_insert writes n formed entries and their index entries.
 */
static void
trigger_log_insert(TupleTableSlot **slots, int n)
{
	MemoryContext oldcxt;
	Relation	rel;
	CommandId	cid = GetCurrentCommandId(true);

	MemoryContextReset(buffer.flush_cxt);
	oldcxt = MemoryContextSwitchTo(buffer.flush_cxt);

	trigger_log_prepare();
	rel = table_open(trigger_log.relid, RowExclusiveLock);

	if (n == 1)
	{
		HeapTuple	tuple = ExecFetchSlotHeapTuple(slots[0], false, NULL);

		heap_insert(rel, tuple, cid, 0, NULL);
		slots[0]->tts_tid = tuple->t_self;
	}
	else
	{
		/*
		 * No BULKWRITE ring: consumers read these pages soon, they should
		 * stay in shared buffers like any insert's.
		 */
		BulkInsertStateData bistate = {NULL, InvalidBuffer};

		heap_multi_insert(rel, slots, n, cid, 0, &bistate);
		if (bistate.current_buf != InvalidBuffer)
			ReleaseBuffer(bistate.current_buf);
	}

	for (int i = 0; i < trigger_log.nindexes; i++)
	{
		Relation	index = index_open(trigger_log.indexids[i], RowExclusiveLock);
		IndexInfo  *info = trigger_log.indexinfo[i];
		IndexUniqueCheck check = index->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO;

		for (int s = 0; s < n; s++)
		{
			Datum		keys[INDEX_MAX_KEYS];
			bool		keynulls[INDEX_MAX_KEYS];

			for (int k = 0; k < info->ii_NumIndexAttrs; k++)
				keys[k] = slot_getattr(slots[s], info->ii_IndexAttrNumbers[k], &keynulls[k]);
			index_insert(index, keys, keynulls, &slots[s]->tts_tid, rel, check,
						 false, info);
		}
		index_close(index, NoLock);
	}
	table_close(rel, NoLock);

	for (int s = 0; s < n; s++)
		ExecClearTuple(slots[s]);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(buffer.flush_cxt);
}

/*
 * log_writer_xact_callback writes what is left before the transaction
 * commits or is prepared, and forgets it when the transaction aborts.
 */
static void
log_writer_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			/* every subtransaction has ended: all entries are the top's */
			if (buffer.n > 0)
			{
				if (buffer_tail_start(GetCurrentSubTransactionId()) != 0)
					elog(ERROR, "connect_guard log buffer holds entries of an ended subtransaction");
				buffer_flush_current();
			}
			buffer.committing = true;
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PREPARE:

			/*
			 * cannot happen: entries made after PRE_COMMIT are written at
			 * once
			 */
			if (buffer.n > 0)
				elog(WARNING, "connect_guard: %d captured entries were not written before commit",
					 buffer.n);
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PARALLEL_COMMIT:
			buffer.n = 0;
			buffer.bytes = 0;
			buffer.flush_at = LOG_BUFFER_ENTRIES;
			buffer.committing = false;
			buffer.flushing = false;
			buffer.locked_lxid = InvalidLocalTransactionId;
			break;
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			break;
	}
}

/*
 * log_writer_subxact_callback drops the entries of an aborted subtransaction
 * and hands those of a committed one to its parent.
 */
static void
log_writer_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							SubTransactionId parentSubid, void *arg)
{
	int			start;

	switch (event)
	{
		case SUBXACT_EVENT_ABORT_SUB:
			buffer.n = buffer_tail_start(mySubid);
			buffer.bytes = 0;
			buffer.flush_at = buffer.n + LOG_BUFFER_ENTRIES;
			buffer.flushing = false;
			/* the lock may have been taken in this subtransaction */
			buffer.locked_lxid = InvalidLocalTransactionId;
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			start = buffer_tail_start(mySubid);
			for (int i = start; i < buffer.n; i++)
				buffer.subids[i] = parentSubid;
			break;
		default:
			break;
	}
}

static void
log_writer_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	log_writer_flush();
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/* The statement's AFTER triggers have fired: write what they buffered. */
static void
log_writer_ExecutorFinish(QueryDesc *queryDesc)
{
	if (prev_ExecutorFinish)
		prev_ExecutorFinish(queryDesc);
	else
		standard_ExecutorFinish(queryDesc);
	log_writer_flush();
}

/*
 * Before a utility statement (it may read the log, or change it), and after
 * it (COPY FROM and TRUNCATE fire triggers without ExecutorFinish).
 */
static void
log_writer_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
						  bool readOnlyTree, ProcessUtilityContext context,
						  ParamListInfo params, QueryEnvironment *queryEnv,
						  DestReceiver *dest, QueryCompletion *qc)
{
	log_writer_flush();
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
	log_writer_flush();
}
