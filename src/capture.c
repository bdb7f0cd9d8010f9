/*
 * capture.c
 *		The capture trigger: appends every row change of a mapped table to
 *		connect_guard.trigger_log.
 *
 * connect_map_table() installs connect_guard.capture(schema, table) as an
 * AFTER ... FOR EACH ROW trigger (and a statement-level one for TRUNCATE).
 * The arguments are the mapped table's name as the mapping records it, so
 * that partitions of a mapped partitioned table log under the parent's name.
 *
 * Speed: the trigger builds the log row itself and inserts it with
 * simple_heap_insert() plus index_insert() on the log's (plain, column-only)
 * indexes.  Going through SPI would cost an executor start per row, which is
 * most of what PgQ's and Heroku Connect's triggers spend.  Everything that
 * depends on a table's layout is cached per relation and dropped by a
 * relcache invalidation callback.
 *
 * Security: inserting directly needs no privilege on the log, so the
 * application's roles get none: they cannot write, rewrite or delete log
 * entries, yet all their changes are captured.  Only a role allowed to set
 * connect_guard.capture (superuser, or GRANT SET ON PARAMETER) can switch
 * capture off for its own session, which is how the sync service keeps its
 * own writes out of the log.
 *
 * Ordering: the entry's id is taken after the transaction has its xid, which
 * connect_next_batch relies on (see the tick comments in the install script).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "lib/stringinfo.h"
#include "nodes/execnodes.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "capture.h"
#include "catalog_names.h"
#include "connect_guard.h"
#include "row_json.h"

PG_FUNCTION_INFO_V1(connect_guard_capture);

/* The trigger log's columns, in table order; checked against the catalog. */
enum
{
	LOG_ID,
	LOG_TXID,
	LOG_CREATED_AT,
	LOG_UPDATED_AT,
	LOG_PROCESSED_AT,
	LOG_PROCESSED_TX,
	LOG_STATE,
	LOG_ACTION,
	LOG_TABLE_SCHEMA,
	LOG_TABLE_NAME,
	LOG_RECORD_ID,
	LOG_SFID,
	LOG_OLD,
	LOG_VALUES,
	LOG_SF_RESULT,
	LOG_SF_MESSAGE,
	LOG_NCOLUMNS
};

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

#define LOG_MAX_INDEXES 4

/*
 * What the trigger needs to know about the log itself.  Reset whenever the
 * log's relcache entry is invalidated (which includes DROP EXTENSION).
 */
typedef struct TriggerLogInfo
{
	bool		valid;
	Oid			relid;
	Oid			seqid;
	int			nindexes;
	Oid			indexids[LOG_MAX_INDEXES];
	IndexInfo  *indexinfo[LOG_MAX_INDEXES];
	MemoryContext cxt;
} TriggerLogInfo;

/* Per captured relation: the jsonb recipe and where the key columns are. */
typedef struct CapturedTable
{
	Oid			relid;			/* hash key */
	bool		valid;
	MemoryContext cxt;
	RowJsonLayout layout;
	int			npkey;
	int			pkey[INDEX_MAX_KEYS];	/* indexes into layout.columns */
	int			sfid;			/* index into layout.columns, or -1 */
} CapturedTable;

static TriggerLogInfo trigger_log;
static HTAB *captured_tables = NULL;
static Datum state_new;
static Datum action_names[4];

static void capture_relcache_callback(Datum arg, Oid relid);
static void trigger_log_load(void);
static CapturedTable *captured_table_get(Relation rel);
static void captured_table_build(CapturedTable *entry, Relation rel);
static Datum record_id_text(CapturedTable *table, Datum *values, bool *nulls);
static void trigger_log_append(Datum *logvalues, bool *lognulls);

/*
 * capture_init registers the invalidation callback and the constant texts.
 * Called once per backend from _PG_init.
 */
void
capture_init(void)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

	state_new = CStringGetTextDatum("NEW");
	action_names[0] = CStringGetTextDatum("INSERT");
	action_names[1] = CStringGetTextDatum("UPDATE");
	action_names[2] = CStringGetTextDatum("DELETE");
	action_names[3] = CStringGetTextDatum("TRUNCATE");
	MemoryContextSwitchTo(oldcxt);

	CacheRegisterRelcacheCallback(capture_relcache_callback, (Datum) 0);
}

/*
 * capture_relcache_callback forgets what it cached about a relation whose
 * definition may have changed.  It must not do catalog access: entries are
 * only marked invalid and rebuilt at their next use.
 */
static void
capture_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == trigger_log.relid)
		trigger_log.valid = false;

	if (captured_tables == NULL)
		return;
	if (relid == InvalidOid)
	{
		HASH_SEQ_STATUS status;
		CapturedTable *entry;

		hash_seq_init(&status, captured_tables);
		while ((entry = hash_seq_search(&status)) != NULL)
			entry->valid = false;
	}
	else
	{
		CapturedTable *entry = hash_search(captured_tables, &relid, HASH_FIND, NULL);

		if (entry != NULL)
			entry->valid = false;
	}
}

/*
 * trigger_log_load finds the log, its id sequence and its indexes, and
 * checks that the table still has the columns this file writes.  The log is
 * opened (and so locked) by the caller's insert right after, so a concurrent
 * DROP EXTENSION either waits or has already invalidated us.
 */
static void
trigger_log_load(void)
{
	Oid			nspid = get_namespace_oid(CONNECT_GUARD_SCHEMA, true);
	Relation	rel;
	TupleDesc	desc;
	List	   *indexes;
	ListCell   *lc;
	MemoryContext oldcxt;

	if (!OidIsValid(nspid) ||
		!OidIsValid(trigger_log.relid = get_relname_relid("trigger_log", nspid)) ||
		!OidIsValid(trigger_log.seqid = get_relname_relid("trigger_log_id_seq", nspid)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("connect_guard is not installed in this database"),
				 errdetail("A capture trigger fired, but the table connect_guard.trigger_log does not exist."),
				 errhint("Run CREATE EXTENSION connect_guard, or drop the trigger _connect_guard_capture from this table.")));

	if (trigger_log.cxt == NULL)
		trigger_log.cxt = AllocSetContextCreate(CacheMemoryContext,
												"connect_guard trigger log",
												ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(trigger_log.cxt);

	/* as in captured_table_get: an invalidation during the load wins */
	trigger_log.valid = true;
	rel = table_open(trigger_log.relid, RowExclusiveLock);
	desc = RelationGetDescr(rel);
	if (desc->natts != LOG_NCOLUMNS)
		elog(ERROR, "connect_guard.trigger_log has %d columns, expected %d",
			 desc->natts, LOG_NCOLUMNS);
	for (int i = 0; i < LOG_NCOLUMNS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != log_columns[i].type ||
			strcmp(NameStr(att->attname), log_columns[i].name) != 0)
			elog(ERROR, "column %d of connect_guard.trigger_log is not \"%s\"",
				 i + 1, log_columns[i].name);
	}

	indexes = RelationGetIndexList(rel);
	if (list_length(indexes) > LOG_MAX_INDEXES)
		elog(ERROR, "connect_guard.trigger_log has more than %d indexes",
			 LOG_MAX_INDEXES);
	trigger_log.nindexes = 0;
	oldcxt = MemoryContextSwitchTo(trigger_log.cxt);
	foreach(lc, indexes)
	{
		Oid			indexid = lfirst_oid(lc);
		Relation	index = index_open(indexid, RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);

		/* index_insert below computes keys straight from the columns */
		if (info->ii_Expressions != NIL || info->ii_Predicate != NIL)
			elog(ERROR, "connect_guard.trigger_log must not have expression or partial indexes");
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
 * trigger_log_append inserts one entry and its index entries.  The caller
 * has filled every column but the id, which is taken last so that it comes
 * after the transaction's xid was assigned.
 */
static void
trigger_log_append(Datum *logvalues, bool *lognulls)
{
	Relation	rel;
	HeapTuple	tuple;

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

	rel = table_open(trigger_log.relid, RowExclusiveLock);
	logvalues[LOG_TXID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	logvalues[LOG_ID] = Int64GetDatum(nextval_internal(trigger_log.seqid, false));
	tuple = heap_form_tuple(RelationGetDescr(rel), logvalues, lognulls);
	simple_heap_insert(rel, tuple);

	for (int i = 0; i < trigger_log.nindexes; i++)
	{
		Relation	index = index_open(trigger_log.indexids[i], RowExclusiveLock);
		IndexInfo  *info = trigger_log.indexinfo[i];
		Datum		keys[INDEX_MAX_KEYS];
		bool		keynulls[INDEX_MAX_KEYS];

		for (int k = 0; k < info->ii_NumIndexAttrs; k++)
		{
			AttrNumber	attnum = info->ii_IndexAttrNumbers[k];

			keys[k] = logvalues[attnum - 1];
			keynulls[k] = lognulls[attnum - 1];
		}
		index_insert(index, keys, keynulls, &tuple->t_self, rel,
					 index->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
					 false, info);
		index_close(index, NoLock);
	}
	table_close(rel, NoLock);
}

/*
 * captured_table_get returns the valid cache entry for rel, building it on
 * first use or after an invalidation.
 */
static CapturedTable *
captured_table_get(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	CapturedTable *entry;
	bool		found;

	if (captured_tables == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CapturedTable);
		ctl.hcxt = CacheMemoryContext;
		captured_tables = hash_create("connect_guard captured tables", 64, &ctl,
									  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}

	entry = hash_search(captured_tables, &relid, HASH_ENTER, &found);
	if (found && entry->valid)
		return entry;
	if (!found)
		entry->cxt = NULL;

	if (entry->cxt == NULL)
		entry->cxt = AllocSetContextCreate(CacheMemoryContext,
										   "connect_guard captured table",
										   ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(entry->cxt);

	/*
	 * Valid from the start: an invalidation that arrives while we build
	 * (opening the key index accepts them) must win and force a rebuild.
	 */
	entry->valid = true;
	PG_TRY();
	{
		captured_table_build(entry, rel);
	}
	PG_CATCH();
	{
		entry->valid = false;
		PG_RE_THROW();
	}
	PG_END_TRY();
	return entry;
}

/*
 * captured_table_build fills a cache entry: the jsonb recipe, the primary
 * key's columns and the sfid column.
 */
static void
captured_table_build(CapturedTable *entry, Relation rel)
{
	Oid			pkeyid;

	row_json_build_layout(&entry->layout, RelationGetDescr(rel), entry->cxt);

	entry->npkey = 0;
	entry->sfid = -1;
	pkeyid = RelationGetPrimaryKeyIndex(rel);
	if (OidIsValid(pkeyid))
	{
		Relation	pkey = index_open(pkeyid, AccessShareLock);

		for (int k = 0; k < pkey->rd_index->indnkeyatts; k++)
		{
			AttrNumber	attnum = pkey->rd_index->indkey.values[k];

			for (int c = 0; c < entry->layout.ncolumns; c++)
				if (entry->layout.columns[c].attnum == attnum)
					entry->pkey[entry->npkey++] = c;
		}
		index_close(pkey, AccessShareLock);
	}
	for (int c = 0; c < entry->layout.ncolumns; c++)
		if (strcmp(entry->layout.columns[c].name, "sfid") == 0)
			entry->sfid = c;
}

/*
 * record_id_text identifies the row by its primary key: the key's text for
 * a one-column key, a JSON array of the texts for a composite key, NULL for
 * a table that lost its key after it was mapped.
 */
static Datum
record_id_text(CapturedTable *table, Datum *values, bool *nulls)
{
	StringInfoData buf;

	if (table->npkey == 1)
	{
		RowJsonColumn *column = &table->layout.columns[table->pkey[0]];

		if (nulls[column->attnum - 1])
			return (Datum) 0;
		return CStringGetTextDatum(row_json_column_text(column, values[column->attnum - 1]));
	}

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	for (int k = 0; k < table->npkey; k++)
	{
		RowJsonColumn *column = &table->layout.columns[table->pkey[k]];

		if (k > 0)
			appendStringInfoChar(&buf, ',');
		if (nulls[column->attnum - 1])
			appendStringInfoString(&buf, "null");
		else
			escape_json(&buf, row_json_column_text(column, values[column->attnum - 1]));
	}
	appendStringInfoChar(&buf, ']');
	return PointerGetDatum(cstring_to_text_with_len(buf.data, buf.len));
}

/*
 * connect_guard_capture is the trigger function.  Its two arguments are the
 * schema and name the mapping knows the table by.
 */
Datum
connect_guard_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TriggerEvent event;
	Datum		logvalues[LOG_NCOLUMNS];
	bool		lognulls[LOG_NCOLUMNS];
	Datum		now;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("connect_guard.capture() can only be called as a trigger"),
				 errhint("Use connect_map_table() to capture a table's changes.")));
	event = trigdata->tg_event;
	if (!TRIGGER_FIRED_AFTER(event) || trigdata->tg_trigger->tgnargs != 2)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table \"%s\" is not a connect_guard capture trigger",
						trigdata->tg_trigger->tgname,
						RelationGetRelationName(trigdata->tg_relation)),
				 errdetail("connect_guard.capture() must fire AFTER the change and take the mapped table's schema and name as arguments."),
				 errhint("Drop the trigger and use connect_map_table() to capture the table.")));

	if (!connect_guard_capture_enabled)
		return PointerGetDatum(NULL);

	memset(lognulls, true, sizeof(lognulls));
	now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	logvalues[LOG_CREATED_AT] = now;
	logvalues[LOG_UPDATED_AT] = now;
	logvalues[LOG_STATE] = state_new;
	logvalues[LOG_TABLE_SCHEMA] = CStringGetTextDatum(trigdata->tg_trigger->tgargs[0]);
	logvalues[LOG_TABLE_NAME] = CStringGetTextDatum(trigdata->tg_trigger->tgargs[1]);
	lognulls[LOG_ID] = lognulls[LOG_TXID] = false;
	lognulls[LOG_CREATED_AT] = lognulls[LOG_UPDATED_AT] = false;
	lognulls[LOG_STATE] = lognulls[LOG_ACTION] = false;
	lognulls[LOG_TABLE_SCHEMA] = lognulls[LOG_TABLE_NAME] = false;

	if (TRIGGER_FIRED_BY_TRUNCATE(event))
	{
		logvalues[LOG_ACTION] = action_names[3];
		trigger_log_append(logvalues, lognulls);
		return PointerGetDatum(NULL);
	}
	if (!TRIGGER_FIRED_FOR_ROW(event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("connect_guard.capture() must fire FOR EACH ROW for INSERT, UPDATE and DELETE"),
				 errhint("Drop the trigger and use connect_map_table() to capture the table.")));

	{
		Relation	rel = trigdata->tg_relation;
		TupleDesc	desc = RelationGetDescr(rel);
		CapturedTable *table = captured_table_get(rel);
		Datum	   *values = palloc(sizeof(Datum) * desc->natts);
		bool	   *nulls = palloc(sizeof(bool) * desc->natts);

		if (TRIGGER_FIRED_BY_INSERT(event))
		{
			heap_deform_tuple(trigdata->tg_trigtuple, desc, values, nulls);
			logvalues[LOG_ACTION] = action_names[0];
			logvalues[LOG_VALUES] = JsonbPGetDatum(row_json_from_row(&table->layout, values, nulls));
			lognulls[LOG_VALUES] = false;
		}
		else if (TRIGGER_FIRED_BY_UPDATE(event))
		{
			Datum	   *oldvalues = palloc(sizeof(Datum) * desc->natts);
			bool	   *oldnulls = palloc(sizeof(bool) * desc->natts);

			heap_deform_tuple(trigdata->tg_trigtuple, desc, oldvalues, oldnulls);
			heap_deform_tuple(trigdata->tg_newtuple, desc, values, nulls);
			logvalues[LOG_ACTION] = action_names[1];
			logvalues[LOG_OLD] = JsonbPGetDatum(row_json_from_row(&table->layout, oldvalues, oldnulls));
			logvalues[LOG_VALUES] = JsonbPGetDatum(row_json_changed_columns(&table->layout,
																			oldvalues, oldnulls,
																			values, nulls));
			lognulls[LOG_OLD] = lognulls[LOG_VALUES] = false;
		}
		else
		{
			heap_deform_tuple(trigdata->tg_trigtuple, desc, values, nulls);
			logvalues[LOG_ACTION] = action_names[2];
			logvalues[LOG_OLD] = JsonbPGetDatum(row_json_from_row(&table->layout, values, nulls));
			lognulls[LOG_OLD] = false;
		}

		if (table->npkey > 0)
		{
			logvalues[LOG_RECORD_ID] = record_id_text(table, values, nulls);
			lognulls[LOG_RECORD_ID] = (logvalues[LOG_RECORD_ID] == (Datum) 0);
		}
		if (table->sfid >= 0)
		{
			RowJsonColumn *column = &table->layout.columns[table->sfid];

			if (!nulls[column->attnum - 1])
			{
				logvalues[LOG_SFID] = CStringGetTextDatum(row_json_column_text(column,
																			   values[column->attnum - 1]));
				lognulls[LOG_SFID] = false;
			}
		}
	}

	trigger_log_append(logvalues, lognulls);
	return PointerGetDatum(NULL);
}
