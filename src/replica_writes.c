/*
 * replica_writes.c
 *		Refuses writes that session_replication_role = replica would hide
 *		from the trigger log.
 *
 * In a session with session_replication_role = replica, only triggers
 * enabled REPLICA or ALWAYS fire; a capture trigger as connect_map_table()
 * installs it (enabled, i.e. in the origin role: tgenabled 'O') stays
 * silent, and so does Connect's hc_<table>_logtrigger on an adopted schema.
 * A write to a mapped table in such a session would reach the table and
 * never the log.  So the executor's check (fence_check.c) and the utility
 * check (fence_ddl.c) call in here when, and only when, the session's role
 * is replica: the normal case costs them one integer comparison.
 *
 * A write is refused when a trigger of the relation that receives the rows
 * would have logged it in the origin role and will not now:
 *   - connect_guard's capture trigger (connect_guard.capture()) or truncate
 *     watch (connect_guard.truncate_watch()), enabled in the origin role,
 *     while connect_guard.capture is on (a session that turned capture off
 *     said that its writes are not to be logged: the sync service's own);
 *   - Connect's logger trigger (hc_..._logtrigger), enabled in the origin
 *     role, while xmlbinary is base64 (with hex, Connect's own sessions,
 *     its WHEN clause skips the write in any role);
 * and the relation, or one of its ancestors, is mapped.  A trigger that is
 * disabled or missing hides the write in every role: the schema watch has
 * reported it already.  connect_guard.fence_bypass does not let such a
 * write through: it is about fences, and what it would let through here is
 * a write lost to the sync service (connect_guard.capture = off says that
 * explicitly).
 *
 * Which relations receive the rows: the result relation itself, or for a
 * partitioned table its leaf partitions (rows are routed there, and their
 * clones of the row trigger are the ones that fire); for TRUNCATE, every
 * table the statement empties (fence_truncate_targets), each firing its own
 * statement triggers.  Triggers are read from the relcache (trigdesc), the
 * mappings only once a silent trigger is found, just before the error.
 *
 * Locking: each relation looked at is locked as the statement will lock it
 * (RowExclusiveLock for DML and COPY, AccessExclusiveLock for TRUNCATE),
 * so that its triggers cannot change before the write; connect_guard.mapping
 * is read with AccessShareLock (fence_ddl.c).
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/xml.h"

#include "catalog_names.h"
#include "connect_guard.h"
#include "fence.h"
#include "replica_writes.h"

/*
 * logging_trigger: does trigger t log writes of this session in the origin
 * role?  Only connect_guard's own triggers and Connect's logger count.
 */
static bool
logging_trigger(const Trigger *t, Oid own_schema)
{
	size_t		len = strlen(t->tgname);

	if (OidIsValid(own_schema) && get_func_namespace(t->tgfoid) == own_schema)
	{
		char	   *name = get_func_name(t->tgfoid);

		return connect_guard_capture_enabled && name != NULL &&
			(strcmp(name, "capture") == 0 || strcmp(name, "truncate_watch") == 0);
	}

	/*
	 * Connect's logger trigger: its WHEN clause skips sessions with xmlbinary
	 * = hex
	 */
	return len > strlen("hc__logtrigger") && strncmp(t->tgname, "hc_", 3) == 0 &&
		strcmp(t->tgname + len - strlen("_logtrigger"), "_logtrigger") == 0 &&
		xmlbinary == XMLBINARY_BASE64;
}

/*
 * silent_trigger returns the trigger of rel that would log a write of the
 * given events (TRIGGER_TYPE_* bits) in the origin role but does not fire
 * in this one, or NULL.
 */
static const Trigger *
silent_trigger(Relation rel, int16 events, Oid own_schema)
{
	TriggerDesc *trigdesc = rel->trigdesc;

	if (trigdesc == NULL)
		return NULL;
	for (int i = 0; i < trigdesc->numtriggers; i++)
	{
		const Trigger *t = &trigdesc->triggers[i];

		if ((t->tgtype & events) != 0 && t->tgenabled == TRIGGER_FIRES_ON_ORIGIN &&
			logging_trigger(t, own_schema))
			return t;
	}
	return NULL;
}

/* mapped_table: relid, or the ancestor of it, that is mapped (and by whom), or InvalidOid */
static Oid
mapped_table(Oid relid, char **connections)
{
	ListCell   *lc;

	if ((*connections = fence_mapped_by(relid)) != NULL)
		return relid;
	foreach(lc, fence_ancestors(relid))
	{
		if ((*connections = fence_mapped_by(lfirst_oid(lc))) != NULL)
			return lfirst_oid(lc);
	}
	return InvalidOid;
}

static char *
relation_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

/* check_receiver: the check of one relation that receives the rows (a leaf, or a truncated table) */
static void
check_receiver(Oid target, Oid receiver, int16 events, const char *operation, LOCKMODE lockmode,
			   Oid own_schema)
{
	Relation	rel = table_open(receiver, lockmode);
	const Trigger *silent = silent_trigger(rel, events, own_schema);
	char	   *trigger_name = silent ? pstrdup(silent->tgname) : NULL;
	char	   *connections = NULL;
	Oid			mapped;

	table_close(rel, NoLock);	/* the lock is kept, as the statement's own */
	if (trigger_name == NULL)
		return;
	mapped = mapped_table(receiver, &connections);
	if (!OidIsValid(mapped))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s table %s in a session with session_replication_role = replica",
					operation, relation_name(target)),
			 receiver == mapped
			 ? errdetail("Table %s is mapped by connection %s, and its trigger %s fires only in the origin role: "
						 "the write would not reach the trigger log.",
						 relation_name(mapped), connections, quote_identifier(trigger_name))
			 : errdetail("Its rows reach %s, a partition or inheritance child of table %s, which is mapped by "
						 "connection %s; the trigger %s of %s fires only in the origin role: the write would not "
						 "reach the trigger log.",
						 relation_name(receiver), relation_name(mapped), connections,
						 quote_identifier(trigger_name), relation_name(receiver)),
			 errhint("Write with session_replication_role = origin; or, if writes made in this role must reach "
					 "the log, ALTER TABLE %s ENABLE ALWAYS TRIGGER %s; or unmap the table with "
					 "connect_unmap_table().",
					 relation_name(receiver), quote_identifier(trigger_name))));
}

/*
 * replica_check_write refuses a write (operation: "INSERT into", "COPY
 * into", "TRUNCATE" ...) aimed at relid that this session's replica role
 * would hide from the log.  events: the TRIGGER_TYPE_* bits of the write.
 * Call only when SessionReplicationRole is SESSION_REPLICATION_ROLE_REPLICA.
 */
void
replica_check_write(Oid relid, int16 events, const char *operation, LOCKMODE lockmode)
{
	Oid			own_schema;

	/* a hot standby refuses the write itself (and would not grant the lock) */
	if (!OidIsValid(relid) || IsBinaryUpgrade || RecoveryInProgress())
		return;
	own_schema = get_namespace_oid(CONNECT_GUARD_SCHEMA, true);
	if (get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE && !(events & TRIGGER_TYPE_TRUNCATE))
	{
		ListCell   *lc;

		/* rows are routed to the leaves, whose clones of the row trigger fire */
		foreach(lc, find_all_inheritors(relid, lockmode, NULL))
		{
			if (get_rel_relkind(lfirst_oid(lc)) != RELKIND_PARTITIONED_TABLE)
				check_receiver(relid, lfirst_oid(lc), events, operation, lockmode, own_schema);
		}
	}
	else
		check_receiver(relid, relid, events, operation, lockmode, own_schema);
}
