/*
 * worker.c
 *		The launcher and the per-database background workers.
 *
 * The launcher is a static background worker connected to no database: it
 * can read pg_database but not another database's pg_extension.  So it
 * starts a worker for every database that accepts connections, and a worker
 * that finds no connect_guard in its database says so in shared memory and
 * exits; the launcher then leaves that database alone for a while, unless
 * CREATE EXTENSION wakes it (the install script calls
 * connect_guard.wake_launcher()).  A worker that dies for any other reason is
 * started again on the launcher's next cycle; a worker whose extension was
 * dropped exits on its next cycle.
 *
 * On a hot standby both run too, from the moment it is consistent, but a
 * worker there only waits for the promotion: nothing of ours may be written
 * in recovery.  It looks every STANDBY_POLL_MS (RecoveryInProgress() is a
 * read of shared memory), and connect_promote_follower()'s promotion
 * (standby.c) wakes it at once; so the new primary of a changeover completes
 * the plan as soon as it is out of recovery, without waiting for a worker
 * to start or for a naptime.
 *
 * A worker's cycle runs each module's step in transactions of its own and
 * does network I/O (libpq to followers, HTTP to the sync service) outside
 * any transaction.  It sleeps on its latch: SQL calls that need it wake it
 * when their transaction commits (not before, or it would not see their
 * rows), otherwise it runs every connect_guard.naptime.  While a dump is
 * being loaded into its database (a restore's CREATE EXTENSION records its
 * session in the database's slot), a worker runs no step at all.
 *
 * Locking: WorkerShared is guarded by its LWLock; latches are found through
 * the registered pid, never through a stored pointer, so a stale slot can at
 * worst wake nobody.  The plan generation is an atomic counter, moved (and
 * its condition variable broadcast) by every transaction that moved an
 * upgrade plan, once it has committed; connect_wait_upgrade() sleeps on it.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog_names.h"
#include "fence.h"
#include "lag.h"
#include "remote.h"
#include "scrub.h"
#include "signals.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(connect_guard_wake_worker);
PG_FUNCTION_INFO_V1(connect_guard_wake_launcher);
PG_FUNCTION_INFO_V1(connect_guard_hold_worker_for_restore);
PG_FUNCTION_INFO_V1(connect_guard_worker_available);
PG_FUNCTION_INFO_V1(connect_guard_worker_pid);
PG_FUNCTION_INFO_V1(connect_guard_in_binary_upgrade);
PG_FUNCTION_INFO_V1(connect_guard_plan_changed);
PG_FUNCTION_INFO_V1(connect_guard_plan_generation);
PG_FUNCTION_INFO_V1(connect_guard_wait_plan_change);

PGDLLEXPORT void connect_guard_launcher_main(Datum arg);
PGDLLEXPORT void connect_guard_worker_main(Datum arg);

#define WORKER_MAX_DATABASES	64
/* how long the launcher leaves a database without the extension alone */
#define WORKER_ABSENT_RECHECK_MS	30000
/* a worker that died is not started again sooner than this */
#define WORKER_RESTART_DELAY_MS		1000
/* how often a worker looks at an upgrade plan that is waiting for something */
#define UPGRADE_POLL_MS				50
/* how often the workers of a hot standby look whether it was promoted */
#define STANDBY_POLL_MS				10

/* GUC variables */
int			worker_naptime_ms = 1000;
static int	archive_retention_s = 7 * 24 * 3600;
static int	archive_chunks = 10;

typedef struct WorkerSlot
{
	Oid			dbid;			/* InvalidOid: free */
	pid_t		pid;			/* running worker, or 0 */
	bool		absent;			/* the worker found no extension here */
	bool		wanted;			/* CREATE EXTENSION asked for a worker */
	TimestampTz absent_since;
	pid_t		restoring_pid;	/* a session loading a dump here: the worker
								 * writes nothing while it lives */
} WorkerSlot;

typedef struct WorkerShared
{
	LWLock	   *lock;
	pid_t		launcher_pid;
	WorkerSlot	slots[WORKER_MAX_DATABASES];
	pg_atomic_uint64 plan_generation;	/* moves when a plan moved (committed) */
	ConditionVariable plan_changed; /* broadcast when it does */
} WorkerShared;

static WorkerShared *worker_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* set by connect_guard.wake_worker(), wake_launcher() and plan_changed(); acted on at commit */
static bool wake_pending = false;
static bool launcher_wake_pending = false;
static bool plan_change_pending = false;

static void worker_shmem_request(void);
static void worker_shmem_startup(void);
static void worker_xact_callback(XactEvent event, void *arg);

/*
 * worker_init defines the worker's settings and registers the launcher.
 * Without shared_preload_libraries there are no workers: the SQL functions
 * that need one say so (worker_available()).
 */
void
worker_init(void)
{
	BackgroundWorker launcher;

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("connect_guard.naptime",
							"Time between two cycles of a connect_guard worker.",
							"SQL calls that need the worker wake it at once; this is the "
							"pace of everything else (follower checks, retention).",
							&worker_naptime_ms,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("connect_guard.archive_retention",
							"How long entries stay in the trigger log's archive.",
							NULL,
							&archive_retention_s,
							7 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("connect_guard.archive_chunks",
							"How many chunks of 10000 consumed entries a worker archives per cycle.",
							"0 leaves retention to connect_archive_consumed() calls of your own.",
							&archive_chunks,
							10, 0, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = worker_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = worker_shmem_startup;
	RegisterXactCallback(worker_xact_callback, NULL);

	memset(&launcher, 0, sizeof(launcher));
	launcher.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	launcher.bgw_start_time = BgWorkerStart_ConsistentState;
	launcher.bgw_restart_time = 5;
	snprintf(launcher.bgw_library_name, BGW_MAXLEN, "connect_guard");
	snprintf(launcher.bgw_function_name, BGW_MAXLEN, "connect_guard_launcher_main");
	snprintf(launcher.bgw_name, BGW_MAXLEN, "connect_guard launcher");
	snprintf(launcher.bgw_type, BGW_MAXLEN, "connect_guard launcher");
	RegisterBackgroundWorker(&launcher);
}

bool
worker_available(void)
{
	return worker_shared != NULL;
}

static void
worker_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(WorkerShared));
	RequestNamedLWLockTranche("connect_guard_worker", 1);
}

static void
worker_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	worker_shared = ShmemInitStruct("connect_guard workers", sizeof(WorkerShared), &found);
	if (!found)
	{
		memset(worker_shared, 0, sizeof(WorkerShared));
		worker_shared->lock = &(GetNamedLWLockTranche("connect_guard_worker"))->lock;
		pg_atomic_init_u64(&worker_shared->plan_generation, 0);
		ConditionVariableInit(&worker_shared->plan_changed);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* slot_for finds (or, with create, takes) dbid's slot.  Caller holds the lock. */
static WorkerSlot *
slot_for(Oid dbid, bool create)
{
	WorkerSlot *free_slot = NULL;

	for (int i = 0; i < WORKER_MAX_DATABASES; i++)
	{
		WorkerSlot *slot = &worker_shared->slots[i];

		if (slot->dbid == dbid)
			return slot;
		if (slot->dbid == InvalidOid && free_slot == NULL)
			free_slot = slot;
	}
	if (create && free_slot != NULL)
	{
		memset(free_slot, 0, sizeof(WorkerSlot));
		free_slot->dbid = dbid;
	}
	return create ? free_slot : NULL;
}

static void
set_latch_of(pid_t pid)
{
	PGPROC	   *proc;

	if (pid == 0)
		return;
	proc = BackendPidGetProc(pid);
	if (proc != NULL)
		SetLatch(&proc->procLatch);
}

/*
 * worker_xact_callback wakes the worker once the transaction that asked
 * for it has committed, so that the worker sees what was asked.
 */
static void
worker_xact_callback(XactEvent event, void *arg)
{
	if (!wake_pending && !launcher_wake_pending && !plan_change_pending)
		return;
	if ((event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT) && plan_change_pending)
	{
		/* committed, so visible: those woken see the plan's new step */
		pg_atomic_fetch_add_u64(&worker_shared->plan_generation, 1);
		ConditionVariableBroadcast(&worker_shared->plan_changed);
	}
	if ((event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT) &&
		(wake_pending || launcher_wake_pending))
	{
		pid_t		pid = 0;
		pid_t		launcher = 0;

		/*
		 * Only now may the launcher start a worker for a new extension: one
		 * started before the commit would find no extension and be retried
		 * only 30 s later.
		 */
		LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
		{
			WorkerSlot *slot = slot_for(MyDatabaseId, launcher_wake_pending);

			if (slot != NULL && launcher_wake_pending)
			{
				slot->wanted = true;
				slot->absent = false;
			}
			if (slot != NULL)
				pid = slot->pid;
			launcher = worker_shared->launcher_pid;
		}
		LWLockRelease(worker_shared->lock);
		/* no worker yet: the launcher starts one */
		set_latch_of(pid != 0 ? pid : launcher);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		wake_pending = launcher_wake_pending = plan_change_pending = false;
}

void
worker_wake_at_commit(void)
{
	if (worker_shared != NULL)
		wake_pending = true;
}

/*
 * worker_wake_now wakes this database's worker at once, for what it can see
 * without waiting for a commit (a promotion: standby.c).
 */
void
worker_wake_now(void)
{
	pid_t		pid = 0;

	if (worker_shared == NULL)
		return;
	LWLockAcquire(worker_shared->lock, LW_SHARED);
	{
		WorkerSlot *slot = slot_for(MyDatabaseId, false);

		if (slot != NULL)
			pid = slot->pid;
	}
	LWLockRelease(worker_shared->lock);
	set_latch_of(pid);
}

/* connect_guard.wake_worker(): wake this database's worker at commit. */
Datum
connect_guard_wake_worker(PG_FUNCTION_ARGS)
{
	worker_wake_at_commit();
	PG_RETURN_BOOL(worker_shared != NULL);
}

/*
 * connect_guard.wake_launcher(): called by CREATE EXTENSION, so that the
 * new database gets its worker without waiting for the recheck.
 */
Datum
connect_guard_wake_launcher(PG_FUNCTION_ARGS)
{
	if (worker_shared == NULL)
		PG_RETURN_BOOL(false);
	launcher_wake_pending = true;
	PG_RETURN_BOOL(true);
}

/*
 * A restore of a database that has connect_guard runs CREATE EXTENSION
 * first, then creates the other objects, then loads the rows of the
 * extension's tables (pg_extension_config_dump: events, ticks, plans...)
 * with their keys.  The worker that CREATE EXTENSION starts must write
 * nothing before those rows are in, or it takes their keys and the restore
 * fails (duplicate key on connect_guard.event).  The session that runs
 * such a CREATE EXTENSION is recorded in the database's slot, before the
 * extension becomes visible (CREATE EXTENSION has not committed yet), and
 * the worker runs no step while that session lives; the session clears it
 * when it ends, and wakes the worker.
 *
 * A session loads a dump when it runs with row_security = off, which
 * pg_dump's output and pg_restore set (a DBA's session has it on), or is
 * named pg_restore.  The application name alone is not enough: PGAPPNAME
 * or the conninfo renames pg_restore's sessions, and psql runs plain dumps.
 */
static void
restore_session_end(int code, Datum arg)
{
	pid_t		worker = 0;

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	{
		WorkerSlot *slot = slot_for(MyDatabaseId, false);

		if (slot != NULL && slot->restoring_pid == MyProcPid)
		{
			slot->restoring_pid = 0;
			worker = slot->pid;
		}
	}
	LWLockRelease(worker_shared->lock);
	set_latch_of(worker);
}

/* set once this session's CREATE EXTENSION recorded it as loading a dump */
static bool this_session_restores = false;

bool
worker_session_restores(void)
{
	return this_session_restores;
}

/*
 * connect_guard.hold_worker_for_restore(): called by the install script;
 * returns whether this session loads a dump, and then records it (above).
 */
Datum
connect_guard_hold_worker_for_restore(PG_FUNCTION_ARGS)
{
	static bool exit_callback = false;
	bool		recorded = false;

	if (worker_shared == NULL || !creating_extension)
		PG_RETURN_BOOL(false);
	if (row_security && strcmp(application_name, "pg_restore") != 0)
		PG_RETURN_BOOL(false);

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	{
		WorkerSlot *slot = slot_for(MyDatabaseId, true);

		if (slot != NULL)
		{
			slot->restoring_pid = MyProcPid;
			recorded = true;
		}
	}
	LWLockRelease(worker_shared->lock);
	if (!recorded)
	{
		ereport(WARNING,
				(errmsg("connect_guard: no room to record that this session restores database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errhint("connect_guard serves at most %d databases per cluster; its worker may collide with the restore.",
						 WORKER_MAX_DATABASES)));
		PG_RETURN_BOOL(false);
	}
	if (!exit_callback)
	{
		before_shmem_exit(restore_session_end, (Datum) 0);
		exit_callback = true;
	}

	/*
	 * Its writes pass the start-up write gate, which waits for the worker
	 * (fence_gate.c).
	 */
	this_session_restores = true;
	ereport(LOG,
			(errmsg("connect_guard: CREATE EXTENSION in a session that loads a dump (pid %d): the worker of database \"%s\" writes nothing until this session ends",
					MyProcPid, get_database_name(MyDatabaseId))));
	PG_RETURN_BOOL(true);
}

/*
 * restoring_session returns the pid of the session that loads a dump into
 * this database (above), or 0.
 */
static pid_t
restoring_session(void)
{
	pid_t		pid = 0;

	LWLockAcquire(worker_shared->lock, LW_SHARED);
	{
		WorkerSlot *slot = slot_for(MyDatabaseId, false);

		if (slot != NULL)
			pid = slot->restoring_pid;
	}
	LWLockRelease(worker_shared->lock);
	/* its exit clears it; a crash resets shared memory: this is only a guard */
	if (pid != 0 && BackendPidGetProc(pid) == NULL)
		pid = 0;
	return pid;
}

Datum
connect_guard_worker_available(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(worker_shared != NULL);
}

/* connect_guard.worker_pid(): this database's worker, or NULL. */
Datum
connect_guard_worker_pid(PG_FUNCTION_ARGS)
{
	pid_t		pid = 0;

	if (worker_shared != NULL)
	{
		LWLockAcquire(worker_shared->lock, LW_SHARED);
		{
			WorkerSlot *slot = slot_for(MyDatabaseId, false);

			if (slot != NULL)
				pid = slot->pid;
		}
		LWLockRelease(worker_shared->lock);
	}
	if (pid == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(pid);
}

/*
 * connect_guard.in_binary_upgrade(): whether this server is one that
 * pg_upgrade started (postgres -b), where neither workers nor upgrade
 * plans may write.
 */
Datum
connect_guard_in_binary_upgrade(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(IsBinaryUpgrade);
}

/*
 * connect_guard.plan_changed(): the calling transaction moves an upgrade
 * plan; once it commits, those waiting in connect_wait_upgrade() look again.
 */
Datum
connect_guard_plan_changed(PG_FUNCTION_ARGS)
{
	if (worker_shared != NULL)
		plan_change_pending = true;
	PG_RETURN_VOID();
}

/* connect_guard.plan_generation(): how many committed plan moves this server has seen */
Datum
connect_guard_plan_generation(PG_FUNCTION_ARGS)
{
	if (worker_shared == NULL)
		PG_RETURN_INT64(0);
	PG_RETURN_INT64((int64) pg_atomic_read_u64(&worker_shared->plan_generation));
}

/*
 * connect_guard.wait_plan_change(seen bigint, timeout_ms integer) sleeps
 * until the plan generation is no longer seen (a plan moved and committed
 * since the caller read it), or timeout_ms have passed; returns the
 * generation.  A plan that moves without a commit here (WAL replayed on a
 * standby) is seen at the timeout.
 */
Datum
connect_guard_wait_plan_change(PG_FUNCTION_ARGS)
{
	uint64		seen = (uint64) PG_GETARG_INT64(0);
	int			timeout_ms = PG_GETARG_INT32(1);
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(timeout_ms, 0));

	if (worker_shared == NULL)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(timeout_ms, 0), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		PG_RETURN_INT64(0);
	}
	ConditionVariablePrepareToSleep(&worker_shared->plan_changed);
	while (pg_atomic_read_u64(&worker_shared->plan_generation) == seen)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

		if (left <= 0 ||
			ConditionVariableTimedSleep(&worker_shared->plan_changed, left, PG_WAIT_EXTENSION))
			break;
	}
	ConditionVariableCancelSleep();
	PG_RETURN_INT64((int64) pg_atomic_read_u64(&worker_shared->plan_generation));
}

/* ------------------------------------------------------------------------
 * The launcher
 * ------------------------------------------------------------------------ */

typedef struct LauncherEntry
{
	Oid			dbid;
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
} LauncherEntry;

static LauncherEntry launched[WORKER_MAX_DATABASES];

/* connectable_databases returns the OIDs of the databases workers may use. */
static List *
connectable_databases(void)
{
	List	   *dbids = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	MemoryContext cxt = CurrentMemoryContext;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);
		MemoryContext old;

		if (!db->datallowconn || db->datistemplate)
			continue;
		old = MemoryContextSwitchTo(cxt);
		dbids = lappend_oid(dbids, db->oid);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	return dbids;
}

static bool
start_worker(LauncherEntry *entry)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_main_arg = ObjectIdGetDatum(entry->dbid);
	worker.bgw_notify_pid = MyProcPid;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "connect_guard");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "connect_guard_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "connect_guard worker for database %u", entry->dbid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "connect_guard worker");
	entry->started_at = GetCurrentTimestamp();
	if (!RegisterDynamicBackgroundWorker(&worker, &entry->handle))
	{
		entry->handle = NULL;
		ereport(LOG,
				(errmsg("connect_guard could not start a worker for database %u", entry->dbid),
				 errhint("Raise max_worker_processes: connect_guard needs one worker per database that has the extension, plus its launcher.")));
		return false;
	}
	return true;
}

/*
 * launcher_cycle starts a worker for each database that should have one and
 * has none running.
 */
static void
launcher_cycle(void)
{
	List	   *dbids = connectable_databases();
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();

	foreach(lc, dbids)
	{
		Oid			dbid = lfirst_oid(lc);
		LauncherEntry *entry = NULL;
		LauncherEntry *free_entry = NULL;
		pid_t		pid;
		bool		absent = false;
		bool		wanted = false;
		TimestampTz absent_since = 0;

		for (int i = 0; i < WORKER_MAX_DATABASES; i++)
		{
			if (launched[i].dbid == dbid)
				entry = &launched[i];
			else if (launched[i].dbid == InvalidOid && free_entry == NULL)
				free_entry = &launched[i];
		}
		if (entry == NULL)
		{
			if (free_entry == NULL)
				continue;		/* more databases than slots: logged nowhere,
								 * documented */
			entry = free_entry;
			entry->dbid = dbid;
			entry->handle = NULL;
		}
		if (entry->handle != NULL &&
			GetBackgroundWorkerPid(entry->handle, &pid) != BGWH_STOPPED)
			continue;			/* running, or about to */

		LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
		{
			WorkerSlot *slot = slot_for(dbid, true);

			if (slot != NULL)
			{
				absent = slot->absent;
				wanted = slot->wanted;
				absent_since = slot->absent_since;
				slot->wanted = false;
				slot->pid = 0;
			}
		}
		LWLockRelease(worker_shared->lock);

		if (absent && !wanted &&
			!TimestampDifferenceExceeds(absent_since, now, WORKER_ABSENT_RECHECK_MS))
			continue;
		if (!wanted && entry->handle != NULL &&
			!TimestampDifferenceExceeds(entry->started_at, now, WORKER_RESTART_DELAY_MS))
			continue;
		start_worker(entry);
	}
	list_free(dbids);
}

/* whether the launcher's last cycle ran in recovery */
static bool launcher_in_recovery = false;

/*
 * want_every_database: this server was promoted.  A database whose worker
 * found no extension while it was a standby may have got it since (CREATE
 * EXTENSION replayed, which wakes no launcher): look again now rather than
 * at the absent recheck, in case a changeover's plan waits there.
 */
static void
want_every_database(void)
{
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < WORKER_MAX_DATABASES; i++)
		if (worker_shared->slots[i].dbid != InvalidOid && worker_shared->slots[i].absent)
			worker_shared->slots[i].wanted = true;
	LWLockRelease(worker_shared->lock);
}

void
connect_guard_launcher_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* the servers pg_upgrade starts are not for us to write to */
	if (IsBinaryUpgrade)
		proc_exit(0);

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("connect_guard launcher");

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	worker_shared->launcher_pid = MyProcPid;
	LWLockRelease(worker_shared->lock);

	for (;;)
	{
		bool		in_recovery = RecoveryInProgress();

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (launcher_in_recovery && !in_recovery)
			want_every_database();
		launcher_in_recovery = in_recovery;
		launcher_cycle();
		/* a worker that sees its standby promoted wakes us (await_promotion) */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 worker_naptime_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ------------------------------------------------------------------------
 * The per-database worker
 * ------------------------------------------------------------------------ */

/* One statement run for its side effects (warm caches), its result dropped */
static void
statement_step(void *arg)
{
	if (SPI_execute((const char *) arg, true, 0) < 0)
		elog(ERROR, "connect_guard worker: statement failed: %s", (const char *) arg);
}

/*
 * await_promotion: a worker on a hot standby waits for the end of recovery,
 * looking every STANDBY_POLL_MS and woken at once by a promotion that
 * connect_guard asked for (standby.c).  It holds no transaction, snapshot
 * or lock meanwhile, so it never holds up the replay.
 */
static void
await_promotion(void)
{
	/*
	 * First, what the first cycle after a promotion reads (the rollback
	 * check's witness and log head, a changeover's plan and the marks it
	 * compares), read-only: their catalog entries and functions are then in
	 * this process's caches when the promotion comes, which saves the
	 * write-blocked window some milliseconds.
	 */
	(void) worker_run_step("connect_guard: preparing to complete a changeover here", statement_step,
						   "SELECT connect_guard.high_water_marks(), connect_guard.log_head(), "
						   "connect_guard.system_identifier(), connect_guard.log_sequence_head(), "
						   "(SELECT w.status FROM connect_guard.witness_load() w), "
						   "(SELECT count(*) FROM connect_guard.upgrade_plan), "
						   "(SELECT count(*) FROM connect_guard.upgrade_step)", NULL);

	pgstat_report_activity(STATE_IDLE, "connect_guard: waiting for this standby's promotion");
	while (RecoveryInProgress())
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 STANDBY_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
	/* the launcher looks for extensions that came while this was a standby */
	set_latch_of(worker_shared->launcher_pid);
}

static void
worker_detach(int code, Datum arg)
{
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	{
		WorkerSlot *slot = slot_for(MyDatabaseId, false);

		if (slot != NULL && slot->pid == MyProcPid)
			slot->pid = 0;
	}
	LWLockRelease(worker_shared->lock);
	set_latch_of(worker_shared->launcher_pid);
}

/*
 * extension_schema returns the schema connect_guard is installed in, quoted,
 * or NULL when it is not installed in this database.  *restoring is set when
 * a dump is being loaded into this database: the extension's tables are
 * dumped with their rows (pg_extension_config_dump), so a worker that wrote
 * events or ticks between the restore's CREATE EXTENSION and its COPY of
 * those rows would take their keys and break the restore (duplicate key in
 * event).  The session whose CREATE EXTENSION loads a dump is recorded
 * (restoring_session); a parallel pg_restore's leader hands the data over to
 * sessions of its own, named pg_restore (fallback_application_name), which
 * are looked for too.
 */
static char *
extension_schema(bool *restoring)
{
	char	   *schema = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute("SELECT quote_ident(n.nspname) FROM pg_extension e "
					"JOIN pg_namespace n ON n.oid = e.extnamespace "
					"WHERE e.extname = 'connect_guard'", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		schema = MemoryContextStrdup(cxt, value);
	}
	*restoring = schema != NULL && restoring_session() != 0;
	if (schema != NULL && !*restoring &&
		SPI_execute("SELECT 1 FROM pg_stat_activity a "
					"WHERE a.datid = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()) "
					"AND a.application_name = 'pg_restore' AND a.pid <> pg_backend_pid()",
					true, 1) == SPI_OK_SELECT)
		*restoring = SPI_processed > 0;
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return schema;
}

/*
 * worker_lock_extension holds the extension in share mode for the step's
 * transaction, and says whether the step may run.  DROP EXTENSION locks the
 * extension's pg_extension object in AccessExclusiveLock before anything
 * else of it (RemoveObjects() -> get_object_address() locks the object it
 * resolved; only then does performMultipleDeletions() lock and delete the
 * members, in an order of its own), so a step that reads several members
 * would otherwise deadlock with it.  Now either the step holds the
 * extension and DROP EXTENSION waits for the step's commit, or the step
 * waits for DROP EXTENSION holding nothing it needs.  It is called before
 * the step takes a snapshot or any other lock.
 *
 * After a wait the extension is looked up again (the lock accepted the
 * catalog changes it waited for): gone, or dropped and created again under
 * another OID, and the step is skipped quietly (the cycle ends; the next
 * one finds the extension as it is then).  So the extension a step found
 * stays the same one until the step ends (a restore with --clean drops and
 * creates it again), and whether a restore is loading it is known once for
 * the step.
 */
static bool
worker_lock_extension(void)
{
	Oid			extension = get_extension_oid("connect_guard", true);

	if (!OidIsValid(extension))
		return false;
	LockDatabaseObject(ExtensionRelationId, extension, 0, AccessShareLock);
	InvalidateCatalogSnapshot();
	return get_extension_oid("connect_guard", true) == extension;
}

bool
worker_run_step(const char *activity, void (*step) (void *), void *arg, char **failure)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;
	volatile bool skipped = false;

	Assert(!IsTransactionState());
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		bool		extension_held;

		if (IsBackgroundWorker)
			pgstat_report_activity(STATE_RUNNING, activity);
		/* first, before a snapshot: it may wait for DROP EXTENSION */
		extension_held = worker_lock_extension();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");

		/*
		 * A worker's step writes nothing into an extension that is gone (or
		 * was dropped while the step waited for it), or that a restore is
		 * loading (a step of a cycle that began before the restore: see
		 * restoring_session).
		 */
		if (!extension_held && IsBackgroundWorker)
			skipped = true;
		else if (IsBackgroundWorker && restoring_session() != 0)
			skipped = true;
		else
			step(arg);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		RESUME_INTERRUPTS();

		/*
		 * an error while recording an answer may quote it: scrub.c takes the
		 * secrets out
		 */
		edata->message = scrub_registered(edata->message);
		edata->detail = scrub_registered(edata->detail);
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("%s failed: %s", activity, edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 errhint("The worker goes on, and tries again on a later cycle.")));
		if (failure != NULL)
			*failure = edata->detail
				? psprintf("%s (%s)", edata->message, edata->detail)
				: pstrdup(edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	if (skipped)
	{
		if (failure != NULL)
			*failure = pstrdup("skipped: the extension is being dropped, or a restore is loading this database");
		ok = false;
	}
	pgstat_report_stat(false);
	return ok;
}

/* One statement whose int8 result the worker wants (0 for NULL) */
typedef struct Int8Step
{
	const char *sql;
	int64		result;
} Int8Step;

static void
int8_step(void *arg)
{
	Int8Step   *st = (Int8Step *) arg;

	if (SPI_execute(st->sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "connect_guard worker: statement failed: %s", st->sql);
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			st->result = DatumGetInt64(value);
	}
}

/*
 * run_int8 runs one statement as a worker step (worker_run_step) and
 * returns its int8 result, or failed_result after an error; worker steps
 * are small so that none holds locks or a snapshot for long.
 */
static int64
run_int8(const char *activity, const char *sql, int64 failed_result)
{
	Int8Step	st = {sql, 0};

	if (!worker_run_step(activity, int8_step, &st, NULL))
		return failed_result;
	return st.result;
}

/*
 * drive_upgrade_plan moves the upgrade plan as far as it can now, a step
 * per transaction, and returns what its last step returned: UPGRADE_FAILED
 * (no value of the enum) after an error.
 */
#define UPGRADE_FAILED (-1)
static int64
drive_upgrade_plan(void)
{
	int64		plan = UPGRADE_NO_PLAN;

	for (int step = 0; step < 20; step++)
	{
		plan = run_int8("connect_guard: driving the upgrade plan",
						"SELECT connect_guard.upgrade_advance()", UPGRADE_FAILED);
		if (plan != UPGRADE_MOVED)
			break;
	}
	return plan;
}

/*
 * worker_cycle_steps runs the modules' steps, in order.  Each one starts
 * and commits its own transactions and keeps network I/O outside them.
 * promoted: the first cycle since this server left recovery.
 */
static int
worker_cycle_steps(const char *schema, bool *plan_active, bool promoted)
{
	static bool first_cycle = true;
	static TimestampTz last_rollback_check = 0;
	int64		plan = 0;
	bool		plan_driven = false;

	int			sleep_ms;
	long		due;

	/*
	 * First, so that the reloads a rollback calls for go out in this cycle;
	 * at the naptime's pace even while a plan is polled every few ms.
	 */
	if (first_cycle ||
		TimestampDifferenceExceeds(last_rollback_check, GetCurrentTimestamp(), worker_naptime_ms))
	{
		bool		as_primary = !RecoveryInProgress(); /* in recovery the check
														 * is skipped */

		/*
		 * a tick of each adopted trigger log, for its processed mark
		 * (15_log_sources.sql)
		 */
		(void) run_int8("connect_guard: reading Heroku Connect's trigger logs",
						"SELECT connect_guard.log_sources_cycle()", 0);
		(void) run_int8("connect_guard: checking for a rollback",
						first_cycle ? "SELECT connect_guard.rollback_cycle(true)"
						: "SELECT connect_guard.rollback_cycle(false)", 0);
		fence_rollback_checked(as_primary); /* writes to mapped tables may go
											 * (fence_gate.c) */

		/*
		 * A changeover's new primary completes the plan right after that
		 * check (its fence and the write gate hold every write until both are
		 * done), before anything else.
		 */
		if (promoted)
		{
			(void) drive_upgrade_plan();
			plan_driven = true;
		}

		/*
		 * What event triggers do not see: the capture triggers changed in the
		 * catalog by hand.
		 */
		(void) run_int8("connect_guard: checking the mapped tables",
						"SELECT connect_guard.schema_watch_cycle()", 0);
		last_rollback_check = GetCurrentTimestamp();
		first_cycle = false;
	}

	/*
	 * In any case before the requests and the follower checks, which may wait
	 * on the network.
	 */
	if (promoted && !plan_driven)
		(void) drive_upgrade_plan();

	pgstat_report_activity(STATE_RUNNING, "connect_guard: signalling the sync service");
	signal_process_requests();
	pgstat_report_activity(STATE_RUNNING, "connect_guard: checking followers");
	lag_check_followers();

	/*
	 * An upgrade plan moves as far as it can now, then is polled closely.  A
	 * step that failed backs off: the plan is tried again after the naptime,
	 * not at the close polling pace.
	 */
	plan = drive_upgrade_plan();
	*plan_active = plan != UPGRADE_NO_PLAN;

	/* retries and polls of the sync service go out when they are due */
	sleep_ms = plan == UPGRADE_WAITING || plan == UPGRADE_MOVED ? UPGRADE_POLL_MS : worker_naptime_ms;
	due = signal_next_wakeup_ms();
	if (due >= 0 && due < sleep_ms)
		sleep_ms = (int) Max(due, UPGRADE_POLL_MS);
	return sleep_ms;
}

/*
 * retention_step moves consumed entries out of the hot log, a bounded
 * number of chunks per cycle, each chunk its own transaction, and purges
 * the archive by age.
 */
static void
retention_step(const char *schema)
{
	char	   *archive = psprintf("SELECT %s.connect_archive_consumed(10000)", schema);
	char	   *purge = psprintf("SELECT %s.connect_purge_archive(make_interval(secs => %d), 10000)",
								 schema, archive_retention_s);

	if (archive_chunks == 0)
		return;
	for (int chunk = 0; chunk < archive_chunks; chunk++)
		if (run_int8("connect_guard: archiving consumed entries", archive, 0) == 0)
			break;
	(void) run_int8("connect_guard: purging the archive", purge, 0);
	pfree(archive);
	pfree(purge);
}

void
connect_guard_worker_main(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	bool		promoted = false;	/* the next cycle is the first since a
									 * promotion */

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	pgstat_report_appname("connect_guard worker");

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	{
		WorkerSlot *slot = slot_for(dbid, true);

		if (slot == NULL)
		{
			LWLockRelease(worker_shared->lock);
			ereport(LOG,
					(errmsg("connect_guard worker: no slot for database %u", dbid),
					 errhint("connect_guard serves at most %d databases per cluster.", WORKER_MAX_DATABASES)));
			proc_exit(0);
		}
		slot->pid = MyProcPid;
	}
	LWLockRelease(worker_shared->lock);
	before_shmem_exit(worker_detach, (Datum) 0);
	/* a changeover asks its follower at every step: one connection for all */
	remote_keep_connections();

	for (;;)
	{
		char	   *schema;
		long		sleep_ms;
		bool		plan_active;
		bool		restoring;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		schema = extension_schema(&restoring);
		if (schema == NULL)
		{
			/* not installed, or dropped: tell the launcher and go */
			LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
			{
				WorkerSlot *slot = slot_for(dbid, false);

				if (slot != NULL)
				{
					slot->absent = true;
					slot->absent_since = GetCurrentTimestamp();
				}
			}
			LWLockRelease(worker_shared->lock);
			proc_exit(0);
		}

		if (RecoveryInProgress())
		{
			/* a standby: nothing of ours may be written until it is promoted */
			pfree(schema);
			await_promotion();
			promoted = true;
			continue;
		}

		if (restoring)
		{
			/* nothing of ours may be written until the restore has loaded */
			pgstat_report_activity(STATE_IDLE, "connect_guard: waiting for the restore of this database to finish");
			pfree(schema);
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 worker_naptime_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			continue;
		}

		sleep_ms = worker_cycle_steps(schema, &plan_active, promoted);
		promoted = false;
		/* archiving can take seconds under load: not while a plan is timed */
		if (!plan_active)
		{
			remote_close_kept();
			retention_step(schema);
		}
		pfree(schema);

		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
