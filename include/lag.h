/*
 * lag.h
 *		Follower lag: how far the followers registered with
 *		connect_add_follower() are behind this primary, measured through
 *		libpq.
 *
 * The worker calls lag_check_followers() once per cycle, outside any
 * transaction; connect_check_followers() does the same checks from SQL.
 * Both write connect_guard.follower_status.
 */
#ifndef CONNECT_GUARD_LAG_H
#define CONNECT_GUARD_LAG_H

/* connect_guard.follower_timeout: how long one follower may take to connect and answer (ms) */
extern int	lag_follower_timeout_ms;

extern void lag_init(void);

/*
 * Checks every registered follower and records the results.  Must be called
 * outside a transaction: it starts and commits its own, and holds none while
 * it talks to followers.  Does nothing when the extension's tables are
 * missing or this server is in recovery; reports (and survives) any error.
 */
extern void lag_check_followers(void);

#endif							/* CONNECT_GUARD_LAG_H */
