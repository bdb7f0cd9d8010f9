/*
 * ha.c
 *		HTTP for the HA-manager steps of an upgrade plan: the worker asks
 *		Patroni's REST API who leads the cluster and for a switchover
 *		(extension/parts/69_ha_managers.sql decides what to ask, 70_upgrade.sql when).
 *
 * Why a SQL-callable function at all: the plan's steps are PL/pgSQL that
 * the worker runs one transaction at a time, and a Patroni switchover is
 * one of those steps.  But no HTTP call is ever made in a user's
 * transaction (a hung peer would hold the user's locks for the whole
 * timeout), so the function refuses to run anywhere but in connect_guard's
 * own per-database worker.
 *
 * The request goes through http.c, which never ereports while libcurl holds
 * resources; interrupts are checked before and after, not during (http.c's
 * progress callback aborts the transfer on SIGTERM).  Credentials in the
 * URL (http://user:password@host:port, for Patroni's restapi.authentication)
 * go to libcurl only: the answer carries the status, the body and a libcurl
 * error text, none of which repeats the URL.
 *
 * No locking: nothing is shared between processes.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/builtins.h"

#include "http.h"
#include "signals.h"

PG_FUNCTION_INFO_V1(connect_guard_ha_http);

/* the longest a caller may wait: Patroni answers a switchover within ~15 s */
#define HA_HTTP_MAX_TIMEOUT_MS	60000

/* whether this process is connect_guard's per-database worker */
static bool
in_connect_guard_worker(void)
{
	return MyBgworkerEntry != NULL &&
		strcmp(MyBgworkerEntry->bgw_library_name, "connect_guard") == 0 &&
		strcmp(MyBgworkerEntry->bgw_function_name, "connect_guard_worker_main") == 0;
}

/*
 * connect_guard.ha_http(method, url, body, timeout_ms) sends one request
 * and returns (status, body, error): status 0 and an error when no answer
 * came.  A JSON body goes with Content-Type application/json.
 */
Datum
connect_guard_ha_http(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	HttpRequest req = {0};
	HttpResponse resp;
	char	   *method;
	char	   *url;
	char	   *body = NULL;
	int			timeout_ms;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (!in_connect_guard_worker())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("connect_guard.ha_http() runs only in connect_guard's worker"),
				 errhint("HTTP calls are never made in a user's transaction: an upgrade plan with "
						 "promote_with => 'patroni' asks Patroni from the worker.")));
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("connect_guard.ha_http() needs a method and a URL"),
				 errhint("Pass 'GET' or 'POST' and an http:// or https:// URL.")));
	method = text_to_cstring(PG_GETARG_TEXT_PP(0));
	url = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unsupported HTTP method \"%s\"", method),
				 errhint("Use GET or POST.")));
	if (!PG_ARGISNULL(2))
		body = text_to_cstring(PG_GETARG_TEXT_PP(2));
	timeout_ms = PG_ARGISNULL(3) ? signal_http_timeout_ms : PG_GETARG_INT32(3);
	timeout_ms = Max(100, Min(timeout_ms, HA_HTTP_MAX_TIMEOUT_MS));

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "connect_guard.ha_http() must return a record");
	tupdesc = BlessTupleDesc(tupdesc);

	req.method = method;
	req.url = url;
	req.body = body;
	req.content_type = body != NULL ? "application/json" : NULL;
	req.timeout_ms = timeout_ms;
	req.ca_file = signal_http_ca_file;

	CHECK_FOR_INTERRUPTS();
	if (http_perform(&req, &resp))
	{
		values[0] = Int32GetDatum((int32) resp.status);
		values[1] = CStringGetTextDatum(resp.body);
		nulls[2] = true;
	}
	else
	{
		values[0] = Int32GetDatum(0);
		nulls[1] = true;
		values[2] = CStringGetTextDatum(resp.error);
	}
	CHECK_FOR_INTERRUPTS();
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
