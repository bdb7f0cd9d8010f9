/*
 * capture.c
 *		The capture trigger: turns every row change of a mapped table into an
 *		entry of connect_guard.trigger_log.
 *
 * connect_map_table() installs connect_guard.capture(schema, table) as an
 * AFTER ... FOR EACH ROW trigger (and a statement-level one for TRUNCATE).
 * The arguments are the mapped table's name as the mapping records it, so
 * that partitions of a mapped partitioned table log under the parent's name.
 *
 * Speed: the trigger builds the entry itself (row_json.c writes the jsonb)
 * and hands it to log_writer.c, which writes entries in batches straight
 * into the heap and the log's indexes.  Going through SPI would cost an
 * executor start per row, which is most of what PgQ's and Heroku Connect's
 * triggers spend.  Everything that depends on a table's layout is cached
 * per relation and dropped by a relcache invalidation callback.
 *
 * Settings: the text forms of values must not depend on the session, so the
 * output settings that change them (DateStyle, IntervalStyle,
 * extra_float_digits) are pinned while an entry is built (row_json.c).
 *
 * The fence: a write that started an executor was checked at its start
 * (fence_check.c); logical replication's apply starts none, so the trigger
 * makes the same check for each row it fires for (fence_check_trigger_write,
 * the same decision; with no fence up one atomic read).  That is also why a
 * subscription into a mapped table needs the trigger ENABLE ALWAYS
 * (subscription_watch.c).
 *
 * Locking: building a table's recipe opens its primary key index with
 * AccessShareLock (the table itself is locked by the statement that fired
 * the trigger); the log is locked by log_writer.c.
 *
 * Security: only a role allowed to set connect_guard.capture (superuser, or
 * GRANT SET ON PARAMETER) can switch capture off for its own session, which
 * is how the sync service keeps its own writes out of the log.  The log
 * needs no privilege (log_writer.c).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "capture.h"
#include "catalog_names.h"
#include "connect_guard.h"
#include "fence.h"
#include "log_writer.h"
#include "row_json.h"

PG_FUNCTION_INFO_V1(connect_guard_capture);

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
	/* the trigger's arguments last seen, as texts for the log */
	char	   *arg_schema;
	char	   *arg_table;
	Datum		schema_text;
	Datum		table_text;
} CapturedTable;

/* What an error while capturing says about where it happened. */
typedef struct CaptureErrorContext
{
	const char *schema;
	const char *table;
} CaptureErrorContext;

static HTAB *captured_tables = NULL;
static CapturedTable *last_table = NULL;
static Datum state_new;
static Datum action_names[4];

static void capture_relcache_callback(Datum arg, Oid relid);
static CapturedTable *captured_table_get(Relation rel);
static void captured_table_build(CapturedTable *entry, Relation rel);
static void captured_table_set_args(CapturedTable *table, Trigger *trigger);
static Datum record_id_text(CapturedTable *table, Datum *values, bool *nulls);
static void capture_row(TriggerData *trigdata, CapturedTable *table,
						Datum *logvalues, bool *lognulls);
static void capture_row_fixed_output(TriggerData *trigdata, CapturedTable *table,
									 Datum *logvalues, bool *lognulls);
static void capture_error_callback(void *arg);

/*
 * capture_init registers the invalidation callback, the log writer and the
 * constant texts.  Called once per backend from _PG_init.
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
	log_writer_init();
}

/*
 * capture_relcache_callback forgets what it cached about a relation whose
 * definition may have changed.  It must not do catalog access: entries are
 * only marked invalid and rebuilt at their next use.
 */
static void
capture_relcache_callback(Datum arg, Oid relid)
{
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
 * captured_table_get returns the valid cache entry for rel, building it on
 * first use or after an invalidation.
 */
static CapturedTable *
captured_table_get(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	CapturedTable *entry;
	bool		found;

	/* a statement changes one table many times in a row */
	if (last_table != NULL && last_table->relid == relid && last_table->valid)
		return last_table;

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
		return last_table = entry;
	if (!found)
		entry->cxt = NULL;

	if (entry->cxt == NULL)
		entry->cxt = AllocSetContextCreate(CacheMemoryContext,
										   "connect_guard captured table",
										   ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(entry->cxt);
	entry->arg_schema = entry->arg_table = NULL;

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
	return last_table = entry;
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
 * captured_table_set_args keeps the trigger's arguments (the mapped table's
 * schema and name) as the texts the log stores, so that they are not
 * converted again for every row.
 */
static void
captured_table_set_args(CapturedTable *table, Trigger *trigger)
{
	MemoryContext oldcxt;

	if (table->arg_schema != NULL &&
		strcmp(table->arg_schema, trigger->tgargs[0]) == 0 &&
		strcmp(table->arg_table, trigger->tgargs[1]) == 0)
		return;

	oldcxt = MemoryContextSwitchTo(table->cxt);
	table->arg_schema = pstrdup(trigger->tgargs[0]);
	table->arg_table = pstrdup(trigger->tgargs[1]);
	table->schema_text = CStringGetTextDatum(table->arg_schema);
	table->table_text = CStringGetTextDatum(table->arg_table);
	MemoryContextSwitchTo(oldcxt);
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
		return row_json_column_as_text(column, values[column->attnum - 1]);
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
 * capture_row fills the columns of an INSERT, UPDATE or DELETE entry that
 * depend on the row: old, values, record_id and sfid.
 */
static void
capture_row(TriggerData *trigdata, CapturedTable *table,
			Datum *logvalues, bool *lognulls)
{
	TriggerEvent event = trigdata->tg_event;
	TupleDesc	desc = RelationGetDescr(trigdata->tg_relation);
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
			logvalues[LOG_SFID] = row_json_column_as_text(column, values[column->attnum - 1]);
			lognulls[LOG_SFID] = false;
		}
	}
}

/*
 * capture_row_fixed_output runs capture_row with the output settings pinned
 * (row_json_fix_output), and puts them back whatever happens.
 */
static void
capture_row_fixed_output(TriggerData *trigdata, CapturedTable *table,
						 Datum *logvalues, bool *lognulls)
{
	RowJsonOutputSettings saved;

	row_json_fix_output(&saved);
	PG_TRY();
	{
		capture_row(trigdata, table, logvalues, lognulls);
	}
	PG_FINALLY();
	{
		row_json_restore_output(&saved);
	}
	PG_END_TRY();
}

/*
 * capture_error_callback names the capture and the table in any error
 * raised while a change is captured, so that a refused write says that
 * connect_guard refused it.
 */
static void
capture_error_callback(void *arg)
{
	CaptureErrorContext *context = (CaptureErrorContext *) arg;

	errcontext("connect_guard capture trigger, capturing a change of table %s.%s",
			   quote_identifier(context->schema), quote_identifier(context->table));
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
	CaptureErrorContext context;
	ErrorContextCallback errcallback;

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
	if (!TRIGGER_FIRED_BY_TRUNCATE(event) && !TRIGGER_FIRED_FOR_ROW(event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("connect_guard.capture() must fire FOR EACH ROW for INSERT, UPDATE and DELETE"),
				 errhint("Drop the trigger and use connect_map_table() to capture the table.")));

	context.schema = trigdata->tg_trigger->tgargs[0];
	context.table = trigdata->tg_trigger->tgargs[1];
	errcallback.callback = capture_error_callback;
	errcallback.arg = &context;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	/*
	 * The fence, for the writes no executor start checked (logical
	 * replication's apply): whether capture is on or not, since the row is
	 * written either way.
	 */
	if (fence_trigger_check_needed())
		fence_check_trigger_write(RelationGetRelid(trigdata->tg_relation), event);

	if (!connect_guard_capture_enabled)
	{
		error_context_stack = errcallback.previous;
		return PointerGetDatum(NULL);
	}

	memset(lognulls, true, sizeof(lognulls));
	now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	logvalues[LOG_CREATED_AT] = now;
	logvalues[LOG_UPDATED_AT] = now;
	logvalues[LOG_STATE] = state_new;
	lognulls[LOG_CREATED_AT] = lognulls[LOG_UPDATED_AT] = false;
	lognulls[LOG_STATE] = lognulls[LOG_ACTION] = false;
	lognulls[LOG_TABLE_SCHEMA] = lognulls[LOG_TABLE_NAME] = false;

	if (TRIGGER_FIRED_BY_TRUNCATE(event))
	{
		logvalues[LOG_ACTION] = action_names[3];
		logvalues[LOG_TABLE_SCHEMA] = CStringGetTextDatum(context.schema);
		logvalues[LOG_TABLE_NAME] = CStringGetTextDatum(context.table);
	}
	else
	{
		CapturedTable *table = captured_table_get(trigdata->tg_relation);

		captured_table_set_args(table, trigdata->tg_trigger);
		logvalues[LOG_TABLE_SCHEMA] = table->schema_text;
		logvalues[LOG_TABLE_NAME] = table->table_text;

		capture_row_fixed_output(trigdata, table, logvalues, lognulls);
	}

	log_writer_append(logvalues, lognulls);

	error_context_stack = errcallback.previous;
	return PointerGetDatum(NULL);
}
