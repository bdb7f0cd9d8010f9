/*
 * remote.c
 *		One query on another server through libpq, without blocking the
 *		process: the upgrade plans use it to check, fence and promote the
 *		follower.
 *
 * The connection and the query wait on the socket together with the
 * process latch, so a worker stays responsive to SIGTERM and postmaster
 * death, and the whole exchange is bounded by a deadline.  A latch set
 * while we waited is set again afterwards, so that whoever waits on it next
 * does not lose the wake-up.
 *
 * Kept connections: the worker keeps its connections open between its
 * queries (remote_keep_connections()), because a changeover asks its
 * follower at every step, and a new connection costs the follower a
 * backend start, milliseconds that would count in the write-blocked
 * window.  The worker closes them (remote_close_kept()) at the end of every
 * cycle in which no upgrade plan is in progress.  A connection is kept only
 * after a query on it succeeded, and one that is not idle, or whose query
 * failed in any way, is closed, never reused.  Any other process opens a
 * connection per query and closes it.
 *
 * State: the kept connections are this process's own (static); each holds
 * one of the process's external file descriptors (AcquireExternalFD).
 */
#include "postgres.h"

#include "fmgr.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "lag.h"
#include "remote.h"

PG_FUNCTION_INFO_V1(connect_guard_remote_query);

/* how many connections the worker keeps at most (the follower, an HA manager's monitor) */
#define REMOTE_KEPT_MAX 4

typedef struct KeptConnection
{
	char	   *conninfo;		/* in TopMemoryContext; NULL: a free slot */
	PGconn	   *conn;
} KeptConnection;

static bool keep_connections = false;
static KeptConnection kept[REMOTE_KEPT_MAX];

void
remote_keep_connections(void)
{
	keep_connections = true;
}

static void
close_connection(PGconn *conn)
{
	PQfinish(conn);
	ReleaseExternalFD();
}

/* take_kept removes the connection kept for conninfo and returns it, if it is usable */
static PGconn *
take_kept(const char *conninfo)
{
	for (int i = 0; i < REMOTE_KEPT_MAX; i++)
	{
		PGconn	   *conn = kept[i].conn;

		if (kept[i].conninfo == NULL || strcmp(kept[i].conninfo, conninfo) != 0)
			continue;
		pfree(kept[i].conninfo);
		kept[i].conninfo = NULL;
		kept[i].conn = NULL;
		if (PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_IDLE)
			return conn;
		close_connection(conn);
		return NULL;
	}
	return NULL;
}

/* keep keeps conn for conninfo, or closes it when every slot is taken */
static void
keep(const char *conninfo, PGconn *conn)
{
	for (int i = 0; i < REMOTE_KEPT_MAX; i++)
	{
		if (kept[i].conninfo != NULL)
			continue;
		kept[i].conninfo = MemoryContextStrdup(TopMemoryContext, conninfo);
		kept[i].conn = conn;
		return;
	}
	close_connection(conn);
}

void
remote_close_kept(void)
{
	for (int i = 0; i < REMOTE_KEPT_MAX; i++)
	{
		if (kept[i].conninfo == NULL)
			continue;
		close_connection(kept[i].conn);
		pfree(kept[i].conninfo);
		kept[i].conninfo = NULL;
		kept[i].conn = NULL;
	}
}

static bool
wait_socket(PGconn *conn, bool for_write, TimestampTz deadline, bool *latch_was_set)
{
	for (;;)
	{
		long		timeout = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		int			rc;

		if (timeout <= 0)
			return false;
		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH |
							   (for_write ? WL_SOCKET_WRITEABLE : WL_SOCKET_READABLE),
							   PQsocket(conn), timeout, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			*latch_was_set = true;
			CHECK_FOR_INTERRUPTS();
		}
		if (rc & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
			return true;
	}
}

static char *
conn_error(PGconn *conn, const char *otherwise)
{
	const char *msg = conn != NULL ? PQerrorMessage(conn) : NULL;

	return (msg != NULL && msg[0] != '\0') ? pchomp(msg) : pstrdup(otherwise);
}

/*
 * run_query sends one query string and reads every result of it; returns
 * the first (caller PQclears it), which must be a success (rows, or a
 * command's completion), or NULL with *error set.
 */
static PGresult *
run_query(PGconn *conn, const char *sql, TimestampTz deadline, int timeout_ms,
		  bool *latch_was_set, char **error)
{
	PGresult   *result = NULL;
	PGresult   *next;
	int			rc;

	if (!PQsendQuery(conn, sql))
	{
		*error = conn_error(conn, "could not send the query");
		return NULL;
	}
	while ((rc = PQflush(conn)) != 0)
	{
		if (rc < 0)
		{
			*error = conn_error(conn, "could not send the query");
			return NULL;
		}
		if (!wait_socket(conn, true, deadline, latch_was_set))
			goto timeout;
	}
	for (;;)
	{
		while (PQisBusy(conn))
		{
			if (!wait_socket(conn, false, deadline, latch_was_set))
				goto timeout;
			if (!PQconsumeInput(conn))
			{
				*error = conn_error(conn, "lost the connection");
				PQclear(result);
				return NULL;
			}
		}
		if ((next = PQgetResult(conn)) == NULL)
			break;
		if (result == NULL)
			result = next;
		else
			PQclear(next);
	}
	if (PQresultStatus(result) != PGRES_TUPLES_OK && PQresultStatus(result) != PGRES_COMMAND_OK)
	{
		*error = result != NULL && PQresultErrorMessage(result)[0] != '\0'
			? pchomp(PQresultErrorMessage(result))
			: conn_error(conn, "the query failed");
		PQclear(result);
		return NULL;
	}
	return result;

timeout:
	*error = psprintf("timed out after %d ms waiting for the answer", timeout_ms);
	PQclear(result);
	return NULL;
}

/*
 * remote_exchange connects (unless conn is a kept connection), runs first
 * (when not NULL) and then sql, and returns sql's result, or NULL with
 * answer->error set.
 */
static PGresult *
remote_exchange(PGconn *conn, const char *first, const char *sql, TimestampTz deadline,
				int timeout_ms, bool *latch_was_set, RemoteAnswer *answer)
{
	char	  **error = &answer->error;
	PostgresPollingStatusType status = PQstatus(conn) == CONNECTION_OK ? PGRES_POLLING_OK : PGRES_POLLING_WRITING;

	if (PQstatus(conn) == CONNECTION_BAD)
	{
		*error = conn_error(conn, "could not start a connection");
		return NULL;
	}
	while (status != PGRES_POLLING_OK)
	{
		if (status == PGRES_POLLING_FAILED)
		{
			*error = conn_error(conn, "could not connect");
			return NULL;
		}
		/* the socket changes when libpq moves on to the next host or address */
		if (!wait_socket(conn, status == PGRES_POLLING_WRITING, deadline, latch_was_set))
		{
			*error = psprintf("timed out after %d ms while connecting", timeout_ms);
			return NULL;
		}
		status = PQconnectPoll(conn);
	}
	answer->connected = true;

	if (PQsetnonblocking(conn, 1) != 0)
	{
		*error = conn_error(conn, "could not send the query");
		return NULL;
	}
	if (first != NULL)
	{
		PGresult   *result = run_query(conn, first, deadline, timeout_ms, latch_was_set, error);

		if (result == NULL)
			return NULL;
		PQclear(result);
	}
	return run_query(conn, sql, deadline, timeout_ms, latch_was_set, error);
}

/*
 * remote_query runs sql on the server conninfo names and fills *answer: the
 * result (caller PQclears it), or an error, and whether the connection was
 * made at all.  first, when not NULL, is run before sql on the same
 * connection, as a statement of its own (a CALL that commits must be one),
 * and must succeed; its result is dropped.  Never raises an error for the
 * remote side's problems: callers decide what they mean.  An interrupt
 * (cancel, shutdown) is raised after the connection is closed.  In the
 * worker, the connection is kept for the next query (header comment).
 */
void
remote_query(const char *conninfo, const char *first, const char *sql, int timeout_ms,
			 RemoteAnswer *answer)
{
	/*
	 * expand_dbname: the whole conninfo goes in as dbname and is parsed by
	 * libpq
	 */
	static const char *const keywords[] = {"dbname", "fallback_application_name", NULL};
	const char *values[] = {conninfo, "connect_guard", NULL};
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	volatile bool latch_was_set = false;
	PGconn	   *volatile conn = NULL;

	memset(answer, 0, sizeof(*answer));
	if (keep_connections)
		conn = take_kept(conninfo);

	/*
	 * libpq's socket counts against the backend's file descriptors, as in
	 * postgres_fdw
	 */
	if (conn == NULL && !AcquireExternalFD())
	{
		answer->error = pstrdup("could not connect: too many open files on this server");
		return;
	}
	PG_TRY();
	{
		if (conn == NULL)
			conn = PQconnectStartParams(keywords, values, true);
		if (conn == NULL)
			answer->error = pstrdup("out of memory");
		else
			answer->result = remote_exchange(conn, first, sql, deadline, timeout_ms,
											 (bool *) &latch_was_set, answer);
	}
	PG_CATCH();
	{
		if (conn != NULL)
			PQfinish(conn);
		ReleaseExternalFD();
		if (latch_was_set)
			SetLatch(MyLatch);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (conn != NULL && answer->result != NULL && keep_connections)
		keep(conninfo, conn);
	else
	{
		if (conn != NULL)
			PQfinish(conn);
		ReleaseExternalFD();
	}
	if (latch_was_set)
		SetLatch(MyLatch);
}

/*
 * connect_guard.remote_query(conninfo, sql, timeout_ms) returns the first
 * row of sql's result on that server as a jsonb object of texts (NULL when
 * there is no row), or raises a connection_failure error that tells which
 * part failed.  The conninfo (which may hold a password) is never printed.
 */
Datum
connect_guard_remote_query(PG_FUNCTION_ARGS)
{
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *sql = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int			timeout_ms = PG_ARGISNULL(2) ? lag_follower_timeout_ms : PG_GETARG_INT32(2);
	RemoteAnswer answer;
	PGresult   *result;
	JsonbParseState *state = NULL;
	JsonbValue *object;

	remote_query(conninfo, NULL, sql, timeout_ms, &answer);
	result = answer.result;
	if (result == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not query the other server: %s", answer.error),
				 errhint("Check that it is running and that the conninfo given to connect_guard reaches it.")));
	if (PQntuples(result) == 0)
	{
		PQclear(result);
		PG_RETURN_NULL();
	}

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int col = 0; col < PQnfields(result); col++)
	{
		JsonbValue	key;
		JsonbValue	value;

		key.type = jbvString;
		key.val.string.val = pstrdup(PQfname(result, col));
		key.val.string.len = strlen(key.val.string.val);
		pushJsonbValue(&state, WJB_KEY, &key);
		if (PQgetisnull(result, 0, col))
			value.type = jbvNull;
		else
		{
			value.type = jbvString;
			value.val.string.val = pstrdup(PQgetvalue(result, 0, col));
			value.val.string.len = strlen(value.val.string.val);
		}
		pushJsonbValue(&state, WJB_VALUE, &value);
	}
	object = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PQclear(result);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(object));
}
