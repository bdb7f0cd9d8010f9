/*
 * fence_sql.c
 *		The SQL functions the install script builds pause, resume and the
 *		maintenance fences on (private, in the connect_guard schema; the
 *		connect_* functions decide the tables, wait for writers and log).
 *
 * Locking: the listings read the shared state under the fence lock,
 * shared; changes go through fence.c.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
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

static FencedRelation *
relations_from_arrays(ArrayType *relids, ArrayType *connections, int *nrels)
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
		rels[i].relid = DatumGetObjectId(oids[i]);
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

	fence_require_shmem();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(4) || PG_ARGISNULL(5))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("fence scope and tables must not be NULL"),
				 errhint("Pass a scope and two arrays, empty for a database-wide fence.")));
	memset(&entry, 0, sizeof(entry));
	entry.scope = scope_from_text(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	entry.connection_id = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	entry.since = GetCurrentTimestamp();
	namestrcpy(&entry.raised_by, GetUserNameFromId(GetSessionUserId(), false));
	if (!PG_ARGISNULL(2))
		namestrcpy(&entry.connection, text_to_cstring(PG_GETARG_TEXT_PP(2)));
	if (!PG_ARGISNULL(3))
		strlcpy(entry.reason, text_to_cstring(PG_GETARG_TEXT_PP(3)), FENCE_REASON_LEN);
	rels = relations_from_arrays(PG_GETARG_ARRAYTYPE_P(4), PG_GETARG_ARRAYTYPE_P(5), &nrels);
	PG_RETURN_INT32(fence_raise(&entry, rels, nrels));
}

/* connect_guard.fence_lower(fence_id) lowers a fence of this database. */
Datum
connect_guard_fence_lower(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(fence_lower(PG_GETARG_INT32(0)));
}

/*
 * connect_guard.fence_set_relations(fence_id, relids, relconnections)
 * replaces the tables of a fence, when mappings change while it is up.
 */
Datum
connect_guard_fence_set_relations(PG_FUNCTION_ARGS)
{
	FencedRelation *rels;
	int			nrels;

	fence_require_shmem();
	rels = relations_from_arrays(PG_GETARG_ARRAYTYPE_P(1), PG_GETARG_ARRAYTYPE_P(2), &nrels);
	PG_RETURN_BOOL(fence_set_relations(PG_GETARG_INT32(0), rels, nrels));
}

/* connect_guard.fence_list() returns the fences in force in this database. */
Datum
connect_guard_fence_list(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (fence_state == NULL)
		return (Datum) 0;		/* not preloaded: no fence can be up */
	fence_resolve_orphans();
	LWLockAcquire(fence_lock, LW_SHARED);
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
	{
		FenceEntry *entry = &fence_state->fences[i];
		Datum		values[8];
		bool		nulls[8] = {false};
		int			tables = 0;

		if (!fence_entry_in_force(entry) || entry->dbid != MyDatabaseId)
			continue;
		for (int r = 0; r < fence_state->nrels; r++)
			if (fence_state->rels[r].fence_id == entry->fence_id &&
				fence_relation_in_force(&fence_state->rels[r], entry))
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
	fence_resolve_orphans();
	LWLockAcquire(fence_lock, LW_SHARED);
	for (int i = 0; i < fence_state->nrels; i++)
	{
		FencedRelation *rel = &fence_state->rels[i];
		FenceEntry *entry = NULL;
		Datum		values[3];
		bool		nulls[3] = {false};

		if (rel->dbid != MyDatabaseId)
			continue;
		for (int f = 0; f < FENCE_MAX_FENCES && entry == NULL; f++)
			if (fence_state->fences[f].fence_id == rel->fence_id && fence_state->fences[f].dbid == MyDatabaseId)
				entry = &fence_state->fences[f];
		if (entry == NULL || !fence_relation_in_force(rel, entry))
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
