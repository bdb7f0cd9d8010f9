/*
 * remote.h
 *		One query on another server through libpq, latch-aware and bounded.
 */
#ifndef CONNECT_GUARD_REMOTE_H
#define CONNECT_GUARD_REMOTE_H

#include "libpq-fe.h"

typedef struct RemoteAnswer
{
	bool		connected;		/* the server was reached (the query may still
								 * fail) */
	PGresult   *result;			/* tuples of a successful query; caller
								 * PQclears */
	char	   *error;			/* what went wrong, when result is NULL */
} RemoteAnswer;

extern void remote_query(const char *conninfo, const char *sql, int timeout_ms,
						 RemoteAnswer *answer);

#endif							/* CONNECT_GUARD_REMOTE_H */
