/*
 * replica_writes.h
 *		Writes that session_replication_role = replica would hide from the
 *		trigger log (replica_writes.c), and the subscriptions that would
 *		apply rows into a mapped table unlogged (subscription_watch.c).
 */
#ifndef CONNECT_GUARD_REPLICA_WRITES_H
#define CONNECT_GUARD_REPLICA_WRITES_H

#include "storage/lockdefs.h"

/* replica_writes.c: call only when session_replication_role = replica */
extern void replica_check_write(Oid relid, int16 events, const char *operation, LOCKMODE lockmode);

#endif							/* CONNECT_GUARD_REPLICA_WRITES_H */
