/*
 * fence_ddl.c
 *		The fence's checks of utility statements, of drops, and the refusal
 *		to rename mapped tables.
 *
 * Utility statements write without an executor, and many of them reach
 * more tables than they name: TRUNCATE and ALTER TABLE recurse into
 * inheritance children and partitions (unless ONLY), TRUNCATE ... CASCADE
 * into the tables that reference them, COPY into a partitioned table
 * routes rows into its partitions, DROP ... CASCADE (of a parent, a
 * schema, an owner) drops whatever depends.  So each check covers the set
 * the statement will act on, and drops are checked one object at a time
 * in the object-access hook, which sees the cascaded ones too.  Linking a
 * table to a fenced one (CREATE TABLE ... PARTITION OF / INHERITS, ATTACH,
 * INHERIT) is refused while it is fenced, as is unlinking it (DETACH, NO
 * INHERIT): what fence_check.c works out from the inheritance tree then
 * stays true while the fence is up.  Under a database-wide fence, new
 * permanent tables may not be filled either (CREATE TABLE AS, SELECT INTO,
 * materialized views).  In a session with session_replication_role =
 * replica, COPY FROM and TRUNCATE are checked as replica_writes.c says.
 *
 * Mappings name their tables (schema and name, as the trigger log records
 * them: names survive pg_dump and pg_upgrade, OIDs do not).  A rename, a
 * SET SCHEMA, or a rename of the schema would make a mapping name another
 * table, or none, and the next pause would fence the wrong one: refused
 * while the table is mapped, fence or no fence.  ALTER EXTENSION ... SET
 * SCHEMA moves the extension's member tables (any table can be made one
 * with ALTER EXTENSION ... ADD TABLE) without an ALTER TABLE of its own, so
 * it is checked table by table like a SET SCHEMA of each.  An extension's
 * update script needs no check of its own: its statements come through
 * ProcessUtility one by one.  That costs one read of connect_guard.mapping
 * per such DDL statement (per member table for an extension), none per DML.
 *
 * Locking: relations are looked up without locks (the statement takes its
 * own); connect_guard.mapping and pg_depend are read with AccessShareLock.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/dependency.h"
#include "catalog/heap.h"
#include "catalog/namespace.h"
#include "catalog/indexing.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_largeobject.h"
#include "catalog/pg_trigger.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "catalog_names.h"
#include "fence.h"
#include "replica_writes.h"

static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static object_access_hook_type prev_object_access_hook = NULL;

static void fence_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
								 bool readOnlyTree, ProcessUtilityContext context,
								 ParamListInfo params, QueryEnvironment *queryEnv,
								 DestReceiver *dest, QueryCompletion *qc);
static void fence_object_access(ObjectAccessType access, Oid classId, Oid objectId,
								int subId, void *arg);

void
fence_ddl_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = fence_ProcessUtility;
	prev_object_access_hook = object_access_hook;
	object_access_hook = fence_object_access;
}

/* ------------------------------------------------------------------------
 * Which tables are mapped (connect_guard.mapping, read directly: the role
 * renaming a table need not be able to read our catalog)
 * ------------------------------------------------------------------------ */

static AttrNumber
attnum_of(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped &&
			strcmp(NameStr(TupleDescAttr(desc, i)->attname), name) == 0)
			return i + 1;
	return InvalidAttrNumber;
}

static char *
text_attr(HeapTuple tuple, TupleDesc desc, AttrNumber attnum)
{
	bool		isnull;
	Datum		value = heap_getattr(tuple, attnum, desc, &isnull);

	return isnull ? NULL : TextDatumGetCString(value);
}

/*
 * scan_mappings returns the connection names (comma separated, for a
 * table: schema and name) or the mapped tables (for a schema: name NULL)
 * that match; NULL when nothing does or the extension is not installed
 * here.
 */
static char *
scan_mappings(const char *schema, const char *name)
{
	Oid			nsp = get_namespace_oid(CONNECT_GUARD_SCHEMA, true);
	Oid			mapping_oid = OidIsValid(nsp) ? get_relname_relid("mapping", nsp) : InvalidOid;
	Oid			connection_oid = OidIsValid(nsp) ? get_relname_relid("connection", nsp) : InvalidOid;
	Relation	rel;
	TupleDesc	desc;
	TableScanDesc scan;
	Snapshot	snapshot;
	HeapTuple	tuple;
	AttrNumber	att_schema;
	AttrNumber	att_table;
	AttrNumber	att_connection;
	List	   *connection_ids = NIL;
	StringInfoData result;

	if (!OidIsValid(mapping_oid) || !OidIsValid(connection_oid))
		return NULL;
	initStringInfo(&result);
	snapshot = RegisterSnapshot(GetLatestSnapshot());

	rel = table_open(mapping_oid, AccessShareLock);
	desc = RelationGetDescr(rel);
	att_schema = attnum_of(desc, "table_schema");
	att_table = attnum_of(desc, "table_name");
	att_connection = attnum_of(desc, "connection_id");
	if (att_schema == InvalidAttrNumber || att_table == InvalidAttrNumber || att_connection == InvalidAttrNumber)
		elog(ERROR, "connect_guard.mapping lacks its columns");
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		char	   *row_schema = text_attr(tuple, desc, att_schema);
		char	   *row_table = text_attr(tuple, desc, att_table);
		bool		isnull;

		if (row_schema == NULL || row_table == NULL || strcmp(row_schema, schema) != 0)
			continue;
		if (name == NULL)
		{
			char	   *table = quote_qualified_identifier(row_schema, row_table);

			if (strstr(result.data, table) == NULL)
				appendStringInfo(&result, "%s%s", result.len > 0 ? ", " : "", table);
		}
		else if (strcmp(row_table, name) == 0)
			connection_ids = lappend_int(connection_ids,
										 DatumGetInt32(heap_getattr(tuple, att_connection, desc, &isnull)));
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);

	if (connection_ids != NIL)
	{
		AttrNumber	att_id;
		AttrNumber	att_name;

		rel = table_open(connection_oid, AccessShareLock);
		desc = RelationGetDescr(rel);
		att_id = attnum_of(desc, "connection_id");
		att_name = attnum_of(desc, "name");
		if (att_id == InvalidAttrNumber || att_name == InvalidAttrNumber)
			elog(ERROR, "connect_guard.connection lacks its columns");
		scan = table_beginscan(rel, snapshot, 0, NULL);
		while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			bool		isnull;
			int32		id = DatumGetInt32(heap_getattr(tuple, att_id, desc, &isnull));

			if (list_member_int(connection_ids, id))
				appendStringInfo(&result, "%s\"%s\"", result.len > 0 ? ", " : "",
								 text_attr(tuple, desc, att_name));
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);
		if (result.len == 0)
			appendStringInfoString(&result, "(unknown)");
	}
	UnregisterSnapshot(snapshot);
	return result.len > 0 ? result.data : NULL;
}

/* fence_mapped_by: the connections that map relid, or NULL */
char *
fence_mapped_by(Oid relid)
{
	char	   *relname = get_rel_name(relid);
	char	   *nspname = relname ? get_namespace_name(get_rel_namespace(relid)) : NULL;

	if (relname == NULL || nspname == NULL || strcmp(nspname, CONNECT_GUARD_SCHEMA) == 0)
		return NULL;
	return scan_mappings(nspname, relname);
}

/* fence_schema_mapped_tables: the mapped tables of a schema, or NULL */
char *
fence_schema_mapped_tables(const char *schema)
{
	return scan_mappings(schema, NULL);
}

static void
refuse_mapped(Oid relid, const char *operation)
{
	char	   *connections = OidIsValid(relid) ? fence_mapped_by(relid) : NULL;

	if (connections != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s table %s: it is mapped by connection %s", operation,
						quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												   get_rel_name(relid)),
						connections),
				 errdetail("Mappings name their tables by schema and name, as the trigger log records them; "
						   "the mapping would name another table, or none."),
				 errhint("Unmap it with connect_unmap_table(), %s it, then map it again with connect_map_table().",
						 operation)));
}

/*
 * extension_member_tables: the tables that are members of an extension
 * (pg_depend, deptype 'e'), which ALTER EXTENSION ... SET SCHEMA moves; NIL
 * when there is no such extension (the statement reports that itself)
 */
static List *
extension_member_tables(const char *extname)
{
	Oid			extoid = get_extension_oid(extname, true);
	List	   *tables = NIL;
	Relation	depend;
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tuple;

	if (!OidIsValid(extoid))
		return NIL;
	depend = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ExtensionRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extoid));
	scan = systable_beginscan(depend, DependReferenceIndexId, true, NULL, 2, key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tuple);
		char		relkind;

		if (dep->deptype != DEPENDENCY_EXTENSION || dep->classid != RelationRelationId)
			continue;
		relkind = get_rel_relkind(dep->objid);
		if (relkind == RELKIND_RELATION || relkind == RELKIND_PARTITIONED_TABLE ||
			relkind == RELKIND_FOREIGN_TABLE)
			tables = lappend_oid(tables, dep->objid);
	}
	systable_endscan(scan);
	table_close(depend, AccessShareLock);
	return tables;
}

/*
 * refuse_moving_extension refuses ALTER EXTENSION ... SET SCHEMA when one
 * of the tables it would move is mapped
 */
static void
refuse_moving_extension(const char *extname)
{
	ListCell   *lc;

	foreach(lc, extension_member_tables(extname))
	{
		Oid			relid = lfirst_oid(lc);
		char	   *connections = fence_mapped_by(relid);

		if (connections != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot move extension %s: its table %s is mapped by connection %s",
							quote_identifier(extname),
							quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													   get_rel_name(relid)),
							connections),
					 errdetail("ALTER EXTENSION ... SET SCHEMA moves the extension's tables. Mappings name "
							   "their tables by schema and name, as the trigger log records them; the "
							   "mapping would name another table, or none."),
					 errhint("Unmap it with connect_unmap_table(), move the extension, then map it again "
							 "with connect_map_table(); or leave the table where it is: ALTER EXTENSION ... "
							 "DROP TABLE takes it out of the extension.")));
	}
}

/*
 * refuse_renaming_mapped refuses the DDL that would make a mapping name
 * another table: renaming a mapped table, moving it to another schema
 * (itself, or as a member of an extension), renaming its schema.
 */
static void
refuse_renaming_mapped(Node *stmt)
{
	if (IsA(stmt, RenameStmt))
	{
		RenameStmt *rename = (RenameStmt *) stmt;

		switch (rename->renameType)
		{
			case OBJECT_TABLE:
			case OBJECT_FOREIGN_TABLE:
			case OBJECT_VIEW:
			case OBJECT_MATVIEW:
			case OBJECT_SEQUENCE:
			case OBJECT_INDEX:
				if (rename->relation != NULL)
					refuse_mapped(RangeVarGetRelid(rename->relation, NoLock, true), "rename");
				break;
			case OBJECT_SCHEMA:
				{
					char	   *tables = fence_schema_mapped_tables(rename->subname);

					if (tables != NULL)
						ereport(ERROR,
								(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
								 errmsg("cannot rename schema %s: it holds mapped tables (%s)",
										quote_identifier(rename->subname), tables),
								 errdetail("Mappings name their tables by schema and name, as the trigger log "
										   "records them; they would name tables that no longer exist."),
								 errhint("Unmap its tables with connect_unmap_table(), rename the schema, then "
										 "map them again with connect_map_table().")));
					break;
				}
			default:
				break;
		}
	}
	else if (IsA(stmt, AlterObjectSchemaStmt))
	{
		AlterObjectSchemaStmt *move = (AlterObjectSchemaStmt *) stmt;

		if (move->relation != NULL)
			refuse_mapped(RangeVarGetRelid(move->relation, NoLock, true), "move");
		else if (move->objectType == OBJECT_EXTENSION)
			refuse_moving_extension(strVal(move->object));
	}
}

/* ------------------------------------------------------------------------
 * Utility statements under a fence
 * ------------------------------------------------------------------------ */

static Oid
relid_of(const RangeVar *rv)
{
	return rv ? RangeVarGetRelid(rv, NoLock, true) : InvalidOid;
}

/* rows written into a partitioned table are routed into its partitions */
static int
reach_of_insert(Oid relid)
{
	return OidIsValid(relid) && get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE
		? FENCE_REACH_DESCENDANTS : 0;
}

/*
 * fence_truncate_targets lists what a TRUNCATE empties: the named tables,
 * their children and partitions unless ONLY, and with CASCADE every table
 * that references one of those, as ExecuteTruncate works it out.
 */
List *
fence_truncate_targets(TruncateStmt *stmt)
{
	List	   *relids = NIL;
	ListCell   *lc;

	foreach(lc, stmt->relations)
	{
		RangeVar   *rv = lfirst_node(RangeVar, lc);
		Oid			relid = relid_of(rv);

		if (!OidIsValid(relid))
			continue;
		if (rv->inh)
			relids = list_concat_unique_oid(relids, find_all_inheritors(relid, NoLock, NULL));
		else
			relids = list_append_unique_oid(relids, relid);
	}
	if (stmt->behavior == DROP_CASCADE)
	{
		for (;;)
		{
			List	   *more = list_difference_oid(heap_truncate_find_FKs(relids), relids);

			if (more == NIL)
				break;
			relids = list_concat(relids, more);
		}
	}
	return relids;
}

static void
check_truncate(TruncateStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, fence_truncate_targets(stmt))
		fence_check_relation(lfirst_oid(lc), "TRUNCATE", 0);
}

/*
 * replica_check_utility: the writes without an executor (COPY FROM,
 * TRUNCATE) that session_replication_role = replica would hide from the
 * log (replica_writes.c).
 */
static pg_noinline void
replica_check_utility(Node *stmt)
{
	ListCell   *lc;

	if (IsA(stmt, CopyStmt) && ((CopyStmt *) stmt)->is_from && ((CopyStmt *) stmt)->relation)
		replica_check_write(relid_of(((CopyStmt *) stmt)->relation), TRIGGER_TYPE_INSERT, "COPY into",
							RowExclusiveLock);
	else if (IsA(stmt, TruncateStmt))
	{
		foreach(lc, fence_truncate_targets((TruncateStmt *) stmt))
			replica_check_write(lfirst_oid(lc), TRIGGER_TYPE_TRUNCATE, "TRUNCATE", AccessExclusiveLock);
	}
}

/*
 * check_alter_table covers the table an ALTER TABLE names, its children
 * and partitions unless ONLY (most subcommands recurse), and the other
 * table a subcommand links or unlinks: ATTACH / DETACH PARTITION, INHERIT /
 * NO INHERIT.
 */
static void
check_alter_table(AlterTableStmt *stmt)
{
	Oid			relid = relid_of(stmt->relation);
	ListCell   *lc;

	fence_check_relation(relid, "ALTER", stmt->relation->inh ? FENCE_REACH_DESCENDANTS : 0);
	foreach(lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

		switch (cmd->subtype)
		{
			case AT_AttachPartition:
				fence_check_relation(relid_of(((PartitionCmd *) cmd->def)->name),
									 "attach", FENCE_REACH_DESCENDANTS);
				break;
			case AT_DetachPartition:
			case AT_DetachPartitionFinalize:
				fence_check_relation(relid_of(((PartitionCmd *) cmd->def)->name),
									 "detach", FENCE_REACH_DESCENDANTS);
				break;
			case AT_AddInherit:
				fence_check_relation(relid_of((RangeVar *) cmd->def), "add an inheritance child to", 0);
				break;
			case AT_DropInherit:
				fence_check_relation(relid_of((RangeVar *) cmd->def), "remove an inheritance child from", 0);
				break;
			default:
				break;
		}
	}
}

static void
check_create_table(CreateStmt *stmt)
{
	ListCell   *lc;

	/* PARTITION OF names its parent here too */
	foreach(lc, stmt->inhRelations)
		fence_check_relation(relid_of(lfirst_node(RangeVar, lc)),
							 stmt->partbound ? "add a partition to" : "add an inheritance child to", 0);
}

static void
check_create_table_as(CreateTableAsStmt *stmt)
{
	if (stmt->objtype == OBJECT_MATVIEW)
		fence_check_new_relation(stmt->into->rel, "create materialized view");
	else
		fence_check_new_relation(stmt->into->rel, "create and fill");
}

/*
 * fence_check_utility covers the writes that do not start an executor, and
 * the DDL that would change which tables a fence reaches.
 */
static void
fence_check_utility(Node *stmt)
{
	ListCell   *lc;

	switch (nodeTag(stmt))
	{
		case T_CopyStmt:
			if (((CopyStmt *) stmt)->is_from && ((CopyStmt *) stmt)->relation)
			{
				Oid			relid = relid_of(((CopyStmt *) stmt)->relation);

				fence_check_relation(relid, "COPY into", reach_of_insert(relid));
			}
			break;
		case T_TruncateStmt:
			check_truncate((TruncateStmt *) stmt);
			break;
		case T_AlterTableStmt:
			check_alter_table((AlterTableStmt *) stmt);
			break;
		case T_RenameStmt:
			{
				RenameStmt *rename = (RenameStmt *) stmt;

				/* a column rename recurses into the children */
				if (rename->relation != NULL)
					fence_check_relation(relid_of(rename->relation), "rename",
										 rename->relation->inh ? FENCE_REACH_DESCENDANTS : 0);
				break;
			}
		case T_AlterObjectSchemaStmt:
			{
				AlterObjectSchemaStmt *move = (AlterObjectSchemaStmt *) stmt;

				if (move->relation != NULL)
					fence_check_relation(relid_of(move->relation), "move", 0);
				else if (move->objectType == OBJECT_EXTENSION)
				{
					/* it moves its member tables */
					foreach(lc, extension_member_tables(strVal(move->object)))
						fence_check_relation(lfirst_oid(lc), "move", 0);
				}
				break;
			}
		case T_DropStmt:
			if (((DropStmt *) stmt)->removeType == OBJECT_TABLE ||
				((DropStmt *) stmt)->removeType == OBJECT_FOREIGN_TABLE)
				foreach(lc, ((DropStmt *) stmt)->objects)
					fence_check_relation(relid_of(makeRangeVarFromNameList(lfirst(lc))), "DROP",
										 FENCE_REACH_DESCENDANTS);
			break;
		case T_CreateStmt:
		case T_CreateForeignTableStmt:	/* starts with a CreateStmt */
			check_create_table((CreateStmt *) stmt);
			break;
		case T_CreateTableAsStmt:
			check_create_table_as((CreateTableAsStmt *) stmt);
			break;
		case T_RefreshMatViewStmt:
			fence_check_relation(relid_of(((RefreshMatViewStmt *) stmt)->relation), "REFRESH", 0);
			break;
		case T_ExplainStmt:

			/*
			 * EXPLAIN ANALYZE CREATE TABLE AS fills the table without
			 * ProcessUtility
			 */
			if (IsA(((ExplainStmt *) stmt)->query, Query) &&
				((Query *) ((ExplainStmt *) stmt)->query)->utilityStmt != NULL)
				fence_check_utility(((Query *) ((ExplainStmt *) stmt)->query)->utilityStmt);
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
	{
		if (strcmp(strVal(lfirst(lc)), "connect_guard") == 0)
			return true;
	}
	return false;
}

static void
fence_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	/* pg_upgrade's restore must pass, and a copied fence file must survive it */
	if (!IsBinaryUpgrade)
	{
		refuse_renaming_mapped(stmt);
		if (!fence_gate_passed || pg_atomic_read_u32(&fence_state->nactive) > 0)
			fence_check_utility(stmt);
		if (unlikely(SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA))
			replica_check_utility(stmt);
	}

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

/*
 * fence_object_access sees every object a DROP removes, the ones it
 * cascades to included (DROP TABLE parent CASCADE, DROP SCHEMA ... CASCADE,
 * DROP OWNED): a fenced table, or a column of one, may not go; nor, under
 * a database-wide fence, a large object.  Internal drops (a rewrite's
 * transient table, temporary tables at session end) are not the user's.
 * It also sees the functions a plan is about to call (OAT_FUNCTION_EXECUTE,
 * once per function per plan start): the large-object writers
 * (fence_check.c).  With no fence up, one atomic read.
 */
static pg_noinline void
object_access_fenced(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (IsBinaryUpgrade)
		return;
	if (access == OAT_FUNCTION_EXECUTE)
	{
		fence_check_function(objectId);
		return;
	}
	if (access != OAT_DROP || (((ObjectAccessDrop *) arg)->dropflags & PERFORM_DELETION_INTERNAL))
		return;
	if (classId == RelationRelationId)
	{
		char		relkind = get_rel_relkind(objectId);

		if (relkind == RELKIND_RELATION || relkind == RELKIND_PARTITIONED_TABLE ||
			relkind == RELKIND_FOREIGN_TABLE)
			fence_check_relation(objectId, subId == 0 ? "DROP" : "drop a column of", 0);
	}
	else if (classId == LargeObjectRelationId)
		fence_check_large_object_drop();
}

/* called for every function a plan starts: the common case costs a few instructions */
static void
fence_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (likely(pg_atomic_read_u32(&fence_state->nactive) == 0))
	{
		if (prev_object_access_hook)
			prev_object_access_hook(access, classId, objectId, subId, arg);
		return;
	}
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	object_access_fenced(access, classId, objectId, subId, arg);
}
