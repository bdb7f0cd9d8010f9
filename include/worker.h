/*
 * worker.h
 *		The launcher and the per-database background workers.
 */
#ifndef CONNECT_GUARD_WORKER_H
#define CONNECT_GUARD_WORKER_H

/* connect_guard.naptime: how long a worker sleeps between cycles (ms) */
extern int	worker_naptime_ms;

extern void worker_init(void);

/* Wakes this database's worker when the current transaction commits. */
extern void worker_wake_at_commit(void);

/* Whether the library was preloaded, so that workers can run at all. */
extern bool worker_available(void);

#endif							/* CONNECT_GUARD_WORKER_H */
