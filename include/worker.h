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

/* Wakes this database's worker now (for what needs no commit: a promotion). */
extern void worker_wake_now(void);

/* Whether the library was preloaded, so that workers can run at all. */
extern bool worker_available(void);

/*
 * Whether this session loads a dump into its database (its CREATE EXTENSION
 * recorded it): the database's worker writes nothing until it ends.
 */
extern bool worker_session_restores(void);

/*
 * What connect_guard.upgrade_advance() returns (70_upgrade.sql declares the
 * same values as constants): the worker polls a waiting plan closely and
 * runs a plan that moved again at once.
 */
typedef enum UpgradeAdvance
{
	UPGRADE_NO_PLAN = 0,		/* no plan to drive here */
	UPGRADE_WAITING = 1,		/* the plan waits for something: poll again
								 * soon */
	UPGRADE_MOVED = 2			/* the plan moved: run it again at once */
} UpgradeAdvance;

/*
 * worker_run_step is the one policy for a step of the worker: step(arg)
 * runs in a transaction of its own, with SPI connected and a snapshot set,
 * and commits.  An error in it is caught, logged as a WARNING with its
 * errcode (activity says which step), and aborts that transaction only;
 * the worker goes on with its next step, and tries this one again on a
 * later cycle.  Returns false after an error, with *failure (when not
 * NULL) saying what it was, in the caller's memory context.  Must be
 * called outside a transaction; no network I/O inside step.
 */
extern bool worker_run_step(const char *activity, void (*step) (void *), void *arg, char **failure);

#endif							/* CONNECT_GUARD_WORKER_H */
