/*
 * fence.h
 *		The write fence: shared state, its persistence, and the checks.
 *
 * A fence blocks writes to a set of tables (a connection's mapped tables,
 * every mapped table, or every table of a database) until it is lowered.
 * The state lives in shared memory, is read without locks when no fence is
 * up, and is saved to a file in the data directory whenever it changes, so
 * that a restart or a crash keeps it.
 */
#ifndef CONNECT_GUARD_FENCE_H
#define CONNECT_GUARD_FENCE_H

#include "datatype/timestamp.h"
#include "port/atomics.h"

#define FENCE_MAX_FENCES	64
#define FENCE_REASON_LEN	256

typedef enum FenceScope
{
	FENCE_SCOPE_CONNECTION = 1, /* the mapped tables of one connection */
	FENCE_SCOPE_MAPPED = 2,		/* the mapped tables of every connection */
	FENCE_SCOPE_DATABASE = 3,	/* every non-temporary table of the database */
	FENCE_SCOPE_RELOAD = 4		/* tables the sync service reloads (after a rollback) */
} FenceScope;

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
} FenceEntry;

typedef struct FencedRelation
{
	Oid			dbid;
	Oid			relid;
	int32		fence_id;
	NameData	connections;	/* who maps it, for the error message */
} FencedRelation;

typedef struct FenceShared
{
	pg_atomic_uint32 nactive;	/* fences up in the whole cluster */
	pg_atomic_uint64 generation;	/* bumped on every change */
	int32		next_fence_id;
	int32		nrels;
	FenceEntry	fences[FENCE_MAX_FENCES];
	FencedRelation rels[FLEXIBLE_ARRAY_MEMBER];
} FenceShared;

extern int	fence_max_tables;

extern void fence_init(void);

/* fence_file.c: caller holds the fence lock (shared is enough to save) */
extern void fence_file_save(FenceShared *state);
extern void fence_file_load(FenceShared *state);

#endif							/* CONNECT_GUARD_FENCE_H */
