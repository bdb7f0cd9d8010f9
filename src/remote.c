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
 */
#include "postgres.h"

#include "fmgr.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "lag.h"
#include "remote.h"

PG_FUNCTION_INFO_V1(connect_guard_remote_query);

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

static PGresult *
remote_exchange(PGconn *conn, const char *sql, TimestampTz deadline, int timeout_ms,
				bool *latch_was_set, RemoteAnswer *answer)
{
	char	  **error = &answer->error;
	PostgresPollingStatusType status = PGRES_POLLING_WRITING;
	PGresult   *result;
	PGresult   *extra;
	int			rc;

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

	if (PQsetnonblocking(conn, 1) != 0 || !PQsendQuery(conn, sql))
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
	while (PQisBusy(conn))
	{
		if (!wait_socket(conn, false, deadline, latch_was_set))
			goto timeout;
		if (!PQconsumeInput(conn))
		{
			*error = conn_error(conn, "lost the connection");
			return NULL;
		}
	}
	result = PQgetResult(conn);
	if (PQresultStatus(result) != PGRES_TUPLES_OK)
	{
		*error = result != NULL && PQresultErrorMessage(result)[0] != '\0'
			? pchomp(PQresultErrorMessage(result))
			: conn_error(conn, "the query failed");
		PQclear(result);
		return NULL;
	}
	while (!PQisBusy(conn) && (extra = PQgetResult(conn)) != NULL)
		PQclear(extra);
	return result;

timeout:
	*error = psprintf("timed out after %d ms waiting for the answer", timeout_ms);
	return NULL;
}

/*
 * remote_query runs sql on the server conninfo names and fills *answer: the
 * result (caller PQclears it), or an error, and whether the connection was
 * made at all.  Never raises an error for the remote side's problems:
 * callers decide what they mean.  An interrupt (cancel, shutdown) is raised
 * after the connection is closed.
 */
void
remote_query(const char *conninfo, const char *sql, int timeout_ms, RemoteAnswer *answer)
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

	/*
	 * libpq's socket counts against the backend's file descriptors, as in
	 * postgres_fdw
	 */
	if (!AcquireExternalFD())
	{
		answer->error = pstrdup("could not connect: too many open files on this server");
		return;
	}
	PG_TRY();
	{
		conn = PQconnectStartParams(keywords, values, true);
		if (conn == NULL)
			answer->error = pstrdup("out of memory");
		else
			answer->result = remote_exchange(conn, sql, deadline, timeout_ms,
											 (bool *) &latch_was_set, answer);
	}
	PG_FINALLY();
	{
		if (conn != NULL)
			PQfinish(conn);
		ReleaseExternalFD();
		if (latch_was_set)
			SetLatch(MyLatch);
	}
	PG_END_TRY();
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

	remote_query(conninfo, sql, timeout_ms, &answer);
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
