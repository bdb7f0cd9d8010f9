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

extern void remote_query(const char *conninfo, const char *first, const char *sql,
						 int timeout_ms, RemoteAnswer *answer);

/* From now on this process keeps its connections between queries (the worker only). */
extern void remote_keep_connections(void);

/* Closes the connections kept so far. */
extern void remote_close_kept(void);

#endif							/* CONNECT_GUARD_REMOTE_H */
