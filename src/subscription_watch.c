/*
 * subscription_watch.c
 *		Refuses a subscription that would apply rows into a mapped table
 *		without logging them (67_subscription_watch.sql).
 *
 * Logical replication's apply and table-sync workers write with
 * session_replication_role = replica and without the executor's start-up
 * (replica_writes.c cannot see them): a capture trigger enabled in the
 * origin role stays silent for every row they apply.  Which tables a
 * subscription writes is in pg_subscription_rel, filled by the command
 * itself: CREATE SUBSCRIPTION (unless connect = false), ALTER SUBSCRIPTION
 * ... REFRESH PUBLICATION, ADD / SET PUBLICATION (with refresh).  So an
 * event trigger on ddl_command_end of CREATE and ALTER SUBSCRIPTION, this
 * function, asks connect_guard.subscription_unlogged() about the tables of
 * the subscription as the command left them, and refuses the command when
 * a mapped one would not be logged.  ENABLE is checked too (a subscription
 * whose tables were listed while it could not yet apply).  What this cannot
 * see (a subscription that was there before its table was mapped, a catalog
 * changed by hand, single-user mode) the schema watch reports instead:
 * subscription_target (19_table_shape_changes.sql).
 *
 * CREATE SUBSCRIPTION creates its replication slot on the publisher as its
 * last step, and a slot is not undone by the abort: before refusing, the
 * slot the command created is dropped again, as DROP SUBSCRIPTION would
 * (the command cannot run in a transaction block, so nothing else of the
 * transaction could still need it).  A slot that cannot be dropped is named
 * in the error, with how to drop it.
 *
 * Locking: none of its own; the command holds the subscription.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_subscription.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "commands/event_trigger.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "replication/slot.h"
#include "replication/walreceiver.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

#include "catalog_names.h"

PG_FUNCTION_INFO_V1(connect_guard_subscription_watch);

/* option of a CREATE / ALTER SUBSCRIPTION, as the command read it (default when absent) */
static bool
option_bool(List *options, const char *name, bool default_value)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *def = lfirst_node(DefElem, lc);

		if (strcmp(def->defname, name) == 0)
			return defGetBoolean(def);
	}
	return default_value;
}

/*
 * unlogged_tables: connect_guard.subscription_unlogged(subid), the mapped
 * tables' triggers that would stay silent for the subscription's rows ("" for
 * none), called through fmgr: it is SECURITY DEFINER and revoked from
 * PUBLIC.  NULL when the extension's function is not there (being created
 * or dropped).
 */
static char *
unlogged_tables(Oid subid)
{
	Oid			argtypes[1] = {OIDOID};
	Oid			nsp = get_namespace_oid(CONNECT_GUARD_SCHEMA, true);
	Oid			fn = InvalidOid;

	if (OidIsValid(nsp))
		fn = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
							 CStringGetDatum("subscription_unlogged"),
							 PointerGetDatum(buildoidvector(argtypes, 1)),
							 ObjectIdGetDatum(nsp));
	if (!OidIsValid(fn))
		return NULL;
	return TextDatumGetCString(OidFunctionCall1(fn, ObjectIdGetDatum(subid)));
}

/*
 * drop_created_slot drops the slot CREATE SUBSCRIPTION has just created on
 * the publisher; returns NULL, or why it could not.  In a subtransaction,
 * so that a failure is reported with the refusal rather than instead of it.
 */
static char *
drop_created_slot(Subscription *sub)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	WalReceiverConn *wrconn;
	char	   *err = NULL;
	char	   *volatile failure = NULL;

	load_file("libpqwalreceiver", false);
	wrconn = walrcv_connect(sub->conninfo, true, sub->name, &err);
	if (wrconn == NULL)
		return psprintf("could not connect to the publisher: %s", err);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		ReplicationSlotDropAtPubNode(wrconn, sub->slotname, true);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		failure = edata->message;
	}
	PG_END_TRY();
	walrcv_disconnect(wrconn);
	return failure;
}

Datum
connect_guard_subscription_watch(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	Node	   *stmt;
	const char *subname;
	bool		creates_slot = false;
	Oid			subid;
	Subscription *sub;
	char	   *unlogged;
	char	   *slot_note = "";

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("connect_guard.on_subscription_change() must be called as an event trigger"),
				 errhint("The extension's event trigger connect_guard_subscription_watch calls it.")));
	trigdata = (EventTriggerData *) fcinfo->context;
	stmt = trigdata->parsetree;

	if (IsA(stmt, CreateSubscriptionStmt))
	{
		CreateSubscriptionStmt *create = (CreateSubscriptionStmt *) stmt;
		bool		connect = option_bool(create->options, "connect", true);

		subname = create->subname;
		creates_slot = connect && option_bool(create->options, "create_slot", connect);
	}
	else if (IsA(stmt, AlterSubscriptionStmt))
	{
		AlterSubscriptionStmt *alter = (AlterSubscriptionStmt *) stmt;

		/* the commands that add tables to it, or start its apply */
		if (alter->kind != ALTER_SUBSCRIPTION_REFRESH &&
			alter->kind != ALTER_SUBSCRIPTION_ADD_PUBLICATION &&
			alter->kind != ALTER_SUBSCRIPTION_SET_PUBLICATION &&
			!(alter->kind == ALTER_SUBSCRIPTION_ENABLED && option_bool(alter->options, "enabled", false)))
			PG_RETURN_VOID();
		subname = alter->subname;
	}
	else
		PG_RETURN_VOID();

	subid = get_subscription_oid(subname, true);
	if (!OidIsValid(subid))
		PG_RETURN_VOID();
	unlogged = unlogged_tables(subid);
	if (unlogged == NULL || unlogged[0] == '\0')
		PG_RETURN_VOID();

	sub = GetSubscription(subid, false);
	if (creates_slot && sub->slotname != NULL)
	{
		char	   *failure = drop_created_slot(sub);

		slot_note = failure == NULL
			? psprintf(" The replication slot \"%s\" it created on the publisher is dropped again.", sub->slotname)
			: psprintf(" The replication slot \"%s\" it created on the publisher could not be dropped (%s): "
					   "drop it there with SELECT pg_drop_replication_slot('%s').",
					   sub->slotname, failure, sub->slotname);
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s subscription \"%s\": it would apply rows to mapped tables without logging them",
					IsA(stmt, CreateSubscriptionStmt) ? "create" : "alter", subname),
			 errdetail("Logical replication applies rows with session_replication_role = replica, where these "
					   "triggers, enabled in the origin role, do not fire: %s.%s", unlogged, slot_note),
			 errhint("To log the rows it applies, ENABLE ALWAYS those triggers (ALTER TABLE ... ENABLE ALWAYS "
					 "TRIGGER ...) first; otherwise leave the mapped tables out of its publications, or unmap "
					 "them with connect_unmap_table().")));
	PG_RETURN_VOID();
}
