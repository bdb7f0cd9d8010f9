/*
 * connect_guard.c
 *		Module entry point: settings, and the start-up of every other module.
 *
 * The library works when loaded on demand (the capture trigger loads it),
 * but the write fence and the background worker need it in
 * shared_preload_libraries; those modules check process_shared_preload_libraries_in_progress
 * themselves and say so when it is missing.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "capture.h"
#include "connect_guard.h"
#include "fence.h"
#include "lag.h"
#include "signals.h"
#include "witness.h"
#include "worker.h"

PG_MODULE_MAGIC;

/* GUC variables */
bool		connect_guard_capture_enabled = true;

void		_PG_init(void);

/*
 * _PG_init defines the settings and lets each module register its hooks
 * and callbacks.
 */
void
_PG_init(void)
{
	/*
	 * PGC_SUSET, so that an ordinary role cannot hide its writes from the
	 * sync service; the DBA gives the sync service's role the right to skip
	 * its own writes with GRANT SET ON PARAMETER connect_guard.capture.
	 */
	DefineCustomBoolVariable("connect_guard.capture",
							 "Whether writes to mapped tables are appended to the trigger log.",
							 "Turn off only in the sync service's own sessions, so that the changes "
							 "it applies are not sent back to it.",
							 &connect_guard_capture_enabled,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	fence_init();
	lag_init();
	signal_init();
	worker_init();
	witness_init();

	MarkGUCPrefixReserved("connect_guard");

	capture_init();
}
