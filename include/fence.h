/*
 * fence.h
 *		The write fence: shared state, its persistence, and the checks.
 *
 * A fence blocks writes to a set of tables (a connection's mapped tables,
 * every mapped table, or every table of a database) until it is lowered.
 * The state lives in shared memory, is read without locks when no fence is
 * up, and is saved to a file in the data directory whenever it changes, so
 * that a restart or a crash keeps it.
 *
 * The module is split by concern:
 *   fence.c        shared state, raising and lowering (transactional)
 *   fence_sql.c    the SQL functions over it
 *   fence_file.c   the state file
 *   fence_check.c  which relations a write reaches, the executor and
 *                  large-object checks, the error
 *   fence_ddl.c    utility statements: their recursion sets, drops, and the
 *                  renames that would make a mapping name another table
 *   fence_gate.c   writes to mapped tables wait for the first rollback check
 *                  after start-up
 */
#ifndef CONNECT_GUARD_FENCE_H
#define CONNECT_GUARD_FENCE_H

#include "access/transam.h"
#include "datatype/timestamp.h"
#include "nodes/parsenodes.h"
#include "nodes/pg_list.h"
#include "nodes/primnodes.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"

#define FENCE_MAX_FENCES	64
#define FENCE_REASON_LEN	256
#define FENCE_GATE_MAX_DATABASES 256

typedef enum FenceScope
{
	FENCE_SCOPE_CONNECTION = 1, /* the mapped tables of one connection */
	FENCE_SCOPE_MAPPED = 2,		/* the mapped tables of every connection */
	FENCE_SCOPE_DATABASE = 3,	/* every non-temporary table of the database */
	FENCE_SCOPE_RELOAD = 4		/* tables the sync service reloads (after a
								 * rollback) */
} FenceScope;

/*
 * A change to a fence made by a transaction that has not ended yet (or had
 * not when the server stopped): in doubt until that transaction commits
 * or aborts.  One transaction at a time may have a change in doubt on a
 * fence (fence.c locks the fence for it).
 */
#define FENCE_CHANGE_RAISE		0x01	/* raised: removed if the transaction
										 * aborts */
#define FENCE_CHANGE_LOWER		0x02	/* lowered: back if the transaction
										 * aborts */
#define FENCE_CHANGE_RELATIONS	0x04	/* relations added / removed
										 * (FencedRelation.state) */

typedef struct FenceEntry
{
	int32		fence_id;		/* 0: free slot */
	Oid			dbid;
	int32		scope;			/* FenceScope */
	int32		connection_id;	/* FENCE_SCOPE_CONNECTION: the connection;
								 * FENCE_SCOPE_RELOAD: the role (an Oid) whose
								 * sessions with xmlbinary = hex write
								 * through, or 0 (fence.c,
								 * fence_blocking_relation) */
	TimestampTz since;
	NameData	raised_by;
	NameData	connection;		/* connection name, or empty */
	char		reason[FENCE_REASON_LEN];
	int32		change;			/* FENCE_CHANGE_* bits in doubt, 0 when
								 * settled */
	bool		orphan;			/* the change's transaction was running when
								 * the server stopped */
	FullTransactionId change_xid;	/* its transaction (invalid: made in hot
									 * standby) */
} FenceEntry;

#define FENCED_RELATION_SETTLED		0
#define FENCED_RELATION_ADDING		1	/* removed if the change aborts */
#define FENCED_RELATION_REMOVING	2	/* kept if the change aborts */

typedef struct FencedRelation
{
	Oid			dbid;
	Oid			relid;
	int32		fence_id;
	int32		state;			/* FENCED_RELATION_* */
	NameData	connections;	/* who maps it, for the error message */
} FencedRelation;

typedef struct FenceShared
{
	pg_atomic_uint32 nactive;	/* fences in force in the whole cluster */
	pg_atomic_uint32 norphans;	/* fences with a change whose transaction died
								 * with the server */
	pg_atomic_uint64 generation;	/* bumped on every change */
	int32		next_fence_id;
	int32		ngate;			/* databases checked for a rollback since
								 * start-up */
	ConditionVariable gate_cv;	/* broadcast when one more is */
	Oid			gate_oid_bound; /* the OID counter once recovery had ended
								 * (InvalidOid until read): a database at or
								 * above it was created since, so it was not
								 * restored in place (fence_gate.c) */
	Oid			gate_checked[FENCE_GATE_MAX_DATABASES];
	int32		nrels;
	FenceEntry	fences[FENCE_MAX_FENCES];
	FencedRelation rels[FLEXIBLE_ARRAY_MEMBER];
} FenceShared;

/* fence.c */
extern int	fence_max_tables;
extern bool fence_bypass;
extern FenceShared *fence_state;
extern LWLock *fence_lock;

extern void fence_init(void);
extern void fence_require_shmem(void);
extern int32 fence_raise(FenceEntry *entry, FencedRelation *rels, int nrels);
extern bool fence_lower(int32 fence_id);
extern bool fence_set_relations(int32 fence_id, FencedRelation *rels, int nrels);
extern bool fence_entry_in_force(const FenceEntry *entry);
extern bool fence_relation_in_force(const FencedRelation *rel, const FenceEntry *entry);
extern void fence_resolve_orphans(void);
extern void fence_lower_all_in_database(void);

/* fence_file.c: caller holds the fence lock (shared is enough to save) */
extern void fence_file_save(FenceShared *state);
extern void fence_file_load(FenceShared *state);

/* fence_check.c */
#define FENCE_REACH_DESCENDANTS	0x01	/* the write reaches the partitions
										 * and children too */

typedef struct FenceHit
{
	Oid			relid;			/* the fenced relation the write reaches */
	FenceEntry *fence;
	const char *connections;	/* who maps it ("" for a database-wide fence) */
} FenceHit;

extern void fence_check_init(void);
extern List *fence_ancestors(Oid relid);
extern bool fence_find_hit(Oid relid, int reach, FenceHit *hit);
extern void fence_report(Oid target, const char *operation, const FenceHit *hit);
extern void fence_check_relation(Oid relid, const char *operation, int reach);
extern void fence_check_new_relation(const RangeVar *rv, const char *operation);
extern bool fence_database_fenced(void);
extern void fence_check_function(Oid fn_oid);
extern void fence_check_large_object_drop(void);
extern void fence_check_trigger_write(Oid relid, uint32 event); /* a TriggerEvent */

/* fence_ddl.c */
extern void fence_ddl_init(void);
extern char *fence_mapped_by(Oid relid);
extern char *fence_schema_mapped_tables(const char *schema);
extern List *fence_truncate_targets(TruncateStmt *stmt);

/* fence_gate.c */
extern bool fence_gate_passed;
extern void fence_gate_check(Oid relid, const char *operation);
extern void fence_rollback_checked(bool as_primary);

/* fence_check.c: how many executors whose start was checked are finishing */
extern int	fence_checked_finish_depth;

/*
 * fence_trigger_check_needed: whether the capture trigger must check the
 * write that fired it (fence_check_trigger_write): with no fence up, once
 * this backend passed the write gate, a flag and one atomic read.  No
 * shared state without shared_preload_libraries: no fence, no gate.  Rows
 * of a statement whose executor start was checked fire while it finishes
 * (ExecutorFinish): checked already, they are not checked again, so a
 * statement in flight when a fence goes up ends as it would have, and the
 * fence waits for its transaction.
 */
static inline bool
fence_trigger_check_needed(void)
{
	return fence_state != NULL &&
		unlikely(!fence_gate_passed || pg_atomic_read_u32(&fence_state->nactive) > 0) &&
		fence_checked_finish_depth == 0;
}

#endif							/* CONNECT_GUARD_FENCE_H */
