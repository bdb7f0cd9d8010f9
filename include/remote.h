/*
 * remote.h
 *		One query on another server through libpq, latch-aware and bounded.
 */
#ifndef CONNECT_GUARD_REMOTE_H
#define CONNECT_GUARD_REMOTE_H

#include "libpq-fe.h"

extern PGresult *remote_query(const char *conninfo, const char *sql, int timeout_ms,
							  char **error);

#endif							/* CONNECT_GUARD_REMOTE_H */
