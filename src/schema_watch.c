/*
 * schema_watch.c
 *		The C side of the schema watch (66_schema_watch.sql): the truncate
 *		watch, and the flag that tells the event triggers that connect_guard
 *		is changing a mapped table itself.
 *
 * The truncate watch notices a TRUNCATE of one partition of a mapped
 * partitioned table.
 *
 * TRUNCATE of a partition fires no trigger of the partitioned table (the
 * capture trigger's TRUNCATE entry is the table's, and only for a TRUNCATE
 * of the table) and no event trigger, so the partition's rows would leave
 * the mapped table without a log entry.  connect_guard therefore puts this
 * trigger, BEFORE TRUNCATE FOR EACH STATEMENT, on the mapped table (argument
 * 'root') and on each of its partitions (argument 'partition'), and also
 * AFTER TRUNCATE on the mapped table (19_table_shape.sql):
 *
 *   - the table's BEFORE trigger marks the table as being truncated; a
 *     TRUNCATE fires the BEFORE triggers of the tables it names first, then
 *     those of their partitions, so every partition of a truncated table
 *     finds its table marked, and is fine: the table's TRUNCATE is logged;
 *   - a partition whose table is not marked is being truncated alone: it
 *     calls connect_guard.note_partition_truncated(partition), which puts
 *     the mapping in SCHEMA_CHANGED with a WARNING and an event, in the
 *     truncating transaction;
 *   - the table's AFTER trigger unmarks it at the end of the statement.
 *
 * The marks are this backend's own (a setting could be forged by the
 * session that truncates), and are all forgotten when a transaction or
 * subtransaction ends with an abort (a TRUNCATE that failed half-way leaves
 * no mark; at worst a later partition TRUNCATE in the same statement is
 * reported although its table was truncated too: the safe side).  A
 * session with connect_guard.capture off (the sync service applying a
 * change it received) is not watched, as it is not captured.
 *
 * Own DDL: while connect_guard itself creates or repairs the triggers of a
 * mapped table (19_table_shape.sql, 66_schema_watch.sql), the tables are
 * half way to what their mappings expect, and the event triggers must not
 * report that.  connect_guard.own_ddl(true) says so for this backend until
 * own_ddl(false), or the end of the (sub)transaction; a backend flag, so no
 * other session, and no SET, can switch the watch off.
 *
 * Locking: none of its own; the TRUNCATE holds the tables.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "catalog_names.h"
#include "connect_guard.h"

PG_FUNCTION_INFO_V1(connect_guard_truncate_watch);
PG_FUNCTION_INFO_V1(connect_guard_own_ddl);
PG_FUNCTION_INFO_V1(connect_guard_in_own_ddl);

/* mapped tables being truncated by the current statement; in TopTransactionContext */
static List *truncating_tables = NIL;

/* connect_guard is changing a mapped table's triggers itself */
static bool own_ddl = false;
static bool callbacks_registered = false;

static void
forget_at_xact_end(XactEvent event, void *arg)
{
	/* TopTransactionContext is reset at the end of every transaction */
	truncating_tables = NIL;
	own_ddl = false;
}

static void
forget_at_subxact_abort(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		truncating_tables = NIL;
		own_ddl = false;
	}
}

static void
register_callbacks(void)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(forget_at_xact_end, NULL);
		RegisterSubXactCallback(forget_at_subxact_abort, NULL);
		callbacks_registered = true;
	}
}

/* connect_guard.own_ddl(on boolean) returns boolean: sets the flag, returns what it was */
Datum
connect_guard_own_ddl(PG_FUNCTION_ARGS)
{
	bool		was = own_ddl;

	register_callbacks();
	own_ddl = PG_GETARG_BOOL(0);
	PG_RETURN_BOOL(was);
}

/* connect_guard.in_own_ddl() returns boolean */
Datum
connect_guard_in_own_ddl(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(own_ddl);
}

/*
 * note_partition_truncated calls connect_guard.note_partition_truncated()
 * through fmgr: the truncating role need not be granted it (it is SECURITY
 * DEFINER and revoked from PUBLIC, so that no one else can call it).
 */
static void
note_partition_truncated(Oid partition)
{
	Oid			argtypes[1] = {OIDOID};
	Oid			nsp = get_namespace_oid(CONNECT_GUARD_SCHEMA, true);
	Oid			fn = InvalidOid;

	/*
	 * By the catalog, not LookupFuncName(): that checks USAGE on the schema,
	 * which the truncating role has not (it is connect_guard's).
	 */
	if (OidIsValid(nsp))
		fn = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
							 CStringGetDatum("note_partition_truncated"),
							 PointerGetDatum(buildoidvector(argtypes, 1)),
							 ObjectIdGetDatum(nsp));
	if (!OidIsValid(fn))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("connect_guard's truncate watch cannot report the TRUNCATE of \"%s\"",
						get_rel_name(partition)),
				 errdetail("The function connect_guard.note_partition_truncated(oid) does not exist."),
				 errhint("Install connect_guard again (ALTER EXTENSION connect_guard UPDATE), or drop the trigger "
						 "_connect_guard_truncate_watch of a table that is no longer mapped.")));
	(void) OidFunctionCall1(fn, ObjectIdGetDatum(partition));
}

Datum
connect_guard_truncate_watch(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Oid			relid;
	bool		root;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event) ||
		trigdata->tg_trigger->tgnargs != 1 ||
		(strcmp(trigdata->tg_trigger->tgargs[0], "root") != 0 &&
		 strcmp(trigdata->tg_trigger->tgargs[0], "partition") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("connect_guard.truncate_watch() must be called as a TRUNCATE trigger with the argument 'root' or 'partition'"),
				 errhint("connect_map_table() installs it; do not use it in triggers of your own.")));

	register_callbacks();

	relid = RelationGetRelid(trigdata->tg_relation);
	root = strcmp(trigdata->tg_trigger->tgargs[0], "root") == 0;

	if (root)
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		if (TRIGGER_FIRED_BEFORE(trigdata->tg_event))
			truncating_tables = lappend_oid(truncating_tables, relid);
		else
			truncating_tables = list_delete_oid(truncating_tables, relid);
		MemoryContextSwitchTo(old);
	}
	else if (TRIGGER_FIRED_BEFORE(trigdata->tg_event) && connect_guard_capture_enabled &&
			 get_rel_relispartition(relid))
	{
		List	   *ancestors = get_partition_ancestors(relid);
		bool		marked = false;
		ListCell   *lc;

		/* the TRUNCATE of any ancestor that is a mapped table logs it */
		foreach(lc, ancestors)
		{
			if (list_member_oid(truncating_tables, lfirst_oid(lc)))
			{
				marked = true;
				break;
			}
		}
		list_free(ancestors);
		if (!marked)
			note_partition_truncated(relid);
	}
	return PointerGetDatum(NULL);
}
