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
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

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
				bool *latch_was_set, char **error)
{
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
		if (!wait_socket(conn, status == PGRES_POLLING_WRITING, deadline, latch_was_set))
			goto timeout;
		status = PQconnectPoll(conn);
	}

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
	*error = psprintf("no answer within %d ms", timeout_ms);
	return NULL;
}

/*
 * remote_query runs sql on the server conninfo names and returns its result
 * (the caller PQclears it), or NULL with *error set.  Never raises an error
 * for the remote side's problems: callers decide what they mean.
 */
PGresult *
remote_query(const char *conninfo, const char *sql, int timeout_ms, char **error)
{
	const char *keywords[] = {"dbname", "application_name", NULL};
	const char *values[] = {conninfo, "connect_guard", NULL};
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	bool		latch_was_set = false;
	PGconn	   *conn;
	PGresult   *result;

	*error = NULL;
	conn = PQconnectStartParams(keywords, values, true);
	if (conn == NULL)
	{
		*error = pstrdup("out of memory");
		return NULL;
	}
	result = remote_exchange(conn, sql, deadline, timeout_ms, &latch_was_set, error);
	PQfinish(conn);
	if (latch_was_set)
		SetLatch(MyLatch);
	return result;
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
	int			timeout_ms = PG_ARGISNULL(2) ? 5000 : PG_GETARG_INT32(2);
	char	   *error;
	PGresult   *result = remote_query(conninfo, sql, timeout_ms, &error);
	JsonbParseState *state = NULL;
	JsonbValue *object;

	if (result == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not query the other server: %s", error),
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
