/*
 * tick.c
 *		The xid bound of a tick.
 *
 * A tick records the log sequence's value (last_id) and, read right after
 * it, the next transaction id to be assigned.  A transaction takes its xid
 * before it takes any log id (capture.c), so every entry with id <= last_id
 * belongs to a transaction whose xid is below that bound, and a later
 * snapshot whose xmin is at or past the bound sees all of them settled.
 *
 * The snapshot's own xmax cannot serve: since PostgreSQL 14 it is the latest
 * completed xid + 1, and a transaction that was assigned a higher xid and is
 * still running appears neither below xmax nor in the snapshot's xip list.
 */
#include "postgres.h"

#include "access/transam.h"
#include "fmgr.h"
#include "utils/xid8.h"

PG_FUNCTION_INFO_V1(connect_guard_next_xid);

/* connect_guard.next_xid() returns the next xid to be assigned, assigning none. */
Datum
connect_guard_next_xid(PG_FUNCTION_ARGS)
{
	PG_RETURN_FULLTRANSACTIONID(ReadNextFullTransactionId());
}
