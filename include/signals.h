/*
 * signals.h
 *		Signalling the sync service (Heroku Connect's API, signed webhooks)
 *		from the background worker.  (Not signal.h: that name would shadow
 *		the C library's header for every file, include/ being on the path.)
 */
#ifndef CONNECT_GUARD_SIGNAL_H
#define CONNECT_GUARD_SIGNAL_H

/* connect_guard.http_timeout, http_max_attempts, http_ca_file */
extern int	signal_http_timeout_ms;
extern int	signal_http_max_attempts;
extern char *signal_http_ca_file;

/* Defines the settings; _PG_init calls it before MarkGUCPrefixReserved. */
extern void signal_init(void);

/*
 * Sends the due requests of connect_guard.request and records what came of
 * them.  The per-database worker calls it once per cycle, outside any
 * transaction; it starts and commits its own, makes its HTTP calls with
 * none open, and never raises an error (problems are recorded in the
 * request, or logged).  It does nothing where the extension is not
 * installed.
 */
extern void signal_process_requests(void);

/*
 * Milliseconds until the next pending request is due (0: due now), or -1
 * when none is pending, as of the end of the last signal_process_requests():
 * a worker may sleep less than its naptime so that retries (1 s, 2 s, ...)
 * and polls (0.5 s, ...) go out on time.
 */
extern long signal_next_wakeup_ms(void);

#endif							/* CONNECT_GUARD_SIGNAL_H */
