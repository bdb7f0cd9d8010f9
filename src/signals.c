/*
 * signals.c
 *		Tells the sync service what connect_pause() and its siblings asked
 *		for, from the background worker, and records what came of it.
 *
 * Why from the worker: an HTTP call takes up to connect_guard.http_timeout,
 * and the sync service must not be told "pause" by a transaction that then
 * rolls back.  So the SQL functions only store a request in
 * connect_guard.request (50_requests.sql; its state machine is in
 * 56_request_states.sql, what goes on the wire in 58_protocols.sql), and
 * once per cycle the worker:
 *
 *   1. takes the due requests in a short transaction (request_take: each is
 *      locked, leased, marked as this worker's and counted as an attempt),
 *      and, while that transaction is open, reads each one's secret and signs webhook
 *      bodies (PostgreSQL's HMAC needs a resource owner);
 *   2. makes the HTTP calls with no transaction open (http.c);
 *   3. records each outcome in a transaction of its own (request_outcome),
 *      which retries, polls, or finishes the request and moves the local
 *      state along (raising the fence once Connect is paused).
 *
 * Errors: nothing here may end the worker, and an HTTP problem is never an
 * ERROR: it is recorded in the request.  Each transaction is a worker step
 * (worker_run_step: an error is logged and aborts that transaction only),
 * and the request is told about the error in a new one, so that it is
 * retried or failed like any other failure.  libcurl's callbacks never
 * ereport (see http.c).
 *
 * Secrets: the token or webhook key comes from connection_secret or from
 * the file the options name, read again before every attempt (a rotated
 * token is picked up without touching the database).  It lives in this
 * round's memory only: each job's copy is wiped after its call, and the
 * copies registered with scrub.c (so that every form of them is scrubbed
 * from the answers and error texts that go back to SQL, and from what SQL
 * stores while the outcomes are recorded) are wiped at the end of the
 * round.  Only superusers and members of pg_read_server_files may name
 * such a file, since the worker sends its content to a URL.  A secret goes
 * over https:// only (or plain http:// to a loopback address, with
 * connect_guard.http_allow_insecure_loopback, for tests).
 *
 * Locking: requests are taken FOR UPDATE SKIP LOCKED, leased past the HTTP
 * timeout and marked with their taker (pid and backend start) until the
 * outcome is recorded, so no request is sent twice at once; a request whose
 * taker is gone (this worker killed while it waited for an answer, a crash
 * restart) is taken again at once by the next worker, not at the end of
 * its lease.  request_outcome locks the connection row before the request,
 * the order the user's calls use.
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "catalog_names.h"
#include "http.h"
#include "scrub.h"
#include "signals.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(connect_guard_secret_file_problem);
PG_FUNCTION_INFO_V1(connect_guard_url_transport_problem);

#define SECRET_MAX_LEN		4096
#define SIGNAL_BATCH		8	/* requests taken per round */
#define SIGNAL_MAX_ROUNDS	8	/* rounds per call, for follow-ups due at once */
#define SIGNAL_LEASE_EXTRA_MS 10000 /* lease beyond the HTTP timeout */

/* GUC variables */
int			signal_http_timeout_ms = 10000;
int			signal_http_max_attempts = 8;
char	   *signal_http_ca_file = NULL;
bool		signal_http_allow_insecure_loopback = false;

/* One request to send, as request_take() described it */
typedef struct SignalJob
{
	int64		request_id;
	char	   *step;			/* send, lookup, poll, apply */
	char	   *method;			/* NULL: nothing to send */
	char	   *url;
	char	   *body;
	char	   *auth;			/* "bearer", "hmac" or NULL */
	char	   *secret;			/* the token or key; wiped after the call */
	char	   *signature;		/* "sha256=<hex>" of body, for webhooks */
	char	   *description;	/* for pg_stat_activity */
	char	   *problem;		/* why it could not be sent */
	bool		answered;
	HttpResponse resp;
	char	   *error_out;		/* resp.error, scrubbed (scrub.c) */
	char	   *body_out;		/* resp.body, scrubbed, valid in the database
								 * encoding */
} SignalJob;

typedef struct TakeState
{
	List	   *jobs;
	long		next_wakeup_ms;
} TakeState;

typedef struct OutcomeArgs
{
	int64		request_id;
	const char *step;
	long		http_status;	/* 0: none */
	const char *error;
	const char *body;
} OutcomeArgs;

/* this cycle's jobs and secrets; reset every round */
static MemoryContext signal_context = NULL;
static long next_wakeup_ms = -1;

static const char *read_secret_file(const char *path, char **secret);
static char *as_valid_text(const char *text);
static void take_in_transaction(void *arg);
static SignalJob *make_job(HeapTuple tuple, TupleDesc tupdesc);
static void run_job(SignalJob *job);
static void record_job(SignalJob *job);
static void outcome_in_transaction(void *arg);
static void wipe_secrets(List *jobs);

/*
 * signal_init defines the settings.  They matter only in the worker, and
 * change with a reload (the worker rereads its configuration on SIGHUP).
 */
void
signal_init(void)
{
	DefineCustomIntVariable("connect_guard.http_timeout",
							"How long the worker waits for the sync service to answer one HTTP request.",
							"Connecting included. A request that takes longer counts as a failed attempt.",
							&signal_http_timeout_ms,
							10000, 100, 600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("connect_guard.http_max_attempts",
							"How many times the worker tries to deliver a request to the sync service.",
							"Retries wait 1 s, doubling up to 60 s; then the request fails.",
							&signal_http_max_attempts,
							8, 1, 100,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomStringVariable("connect_guard.http_ca_file",
							   "CA certificates to verify the sync service's TLS certificate with.",
							   "Empty means the system's CA bundle. The peer and its host name are always verified.",
							   &signal_http_ca_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("connect_guard.http_allow_insecure_loopback",
							 "Lets the worker send the API token or a webhook signature over plain http:// to a loopback address.",
							 "For tests against a sync service simulated on this machine (127.0.0.0/8, ::1, localhost). "
							 "Any other http:// URL is always refused for requests that carry a secret.",
							 &signal_http_allow_insecure_loopback,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
}

long
signal_next_wakeup_ms(void)
{
	return next_wakeup_ms;
}

/*
 * read_secret_file reads a token or key from the file at path.  Returns
 * NULL and sets *secret (palloc'd), or returns a sentence saying what is
 * wrong, which never quotes the file.  No ereport: the worker calls it.
 */
static const char *
read_secret_file(const char *path, char **secret)
{
	char		buf[SECRET_MAX_LEN + 2];
	size_t		len = 0;
	struct stat st;
	const char *problem = NULL;
	int			fd;

	*secret = NULL;
	if (path[0] != '/')
		return "The path is not absolute";
	/* O_NONBLOCK: a FIFO must not hang the worker before fstat refuses it */
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return psprintf("The server cannot open it: %s", strerror(errno));
	if (fstat(fd, &st) < 0)
		problem = psprintf("The server cannot examine it: %s", strerror(errno));
	else if (!S_ISREG(st.st_mode))
		problem = "It is not a regular file";
	else if (st.st_mode & S_IRWXO)
		problem = "Every user of the server's machine may read or write it";
	else
	{
		while (len < sizeof(buf) - 1)
		{
			ssize_t		n = read(fd, buf + len, sizeof(buf) - 1 - len);

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
			{
				problem = psprintf("The server cannot read it: %s", strerror(errno));
				break;
			}
			if (n == 0)
				break;
			len += n;
		}
	}
	close(fd);

	if (problem == NULL)
	{
		while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' ||
						   buf[len - 1] == ' ' || buf[len - 1] == '\t'))
			len--;
		if (len == 0)
			problem = "It is empty";
		else if (len > SECRET_MAX_LEN)
			problem = "It is longer than 4096 bytes";
		else
		{
			for (size_t i = 0; i < len; i++)
			{
				if (buf[i] < '!' || buf[i] > '~')
				{
					problem = "It must hold the secret on one line, in printable ASCII without spaces";
					break;
				}
			}
		}
	}
	if (problem == NULL)
		*secret = pnstrdup(buf, len);
	explicit_bzero(buf, sizeof(buf));
	return problem;
}

/*
 * connect_guard.secret_file_problem(path) is read_secret_file for
 * connect_create_connection(): NULL when the worker could use the file,
 * else why not.  The file's content is never returned.
 */
Datum
connect_guard_secret_file_problem(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *secret = NULL;
	const char *problem;

	if (!has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to name a file the server reads a secret from"),
				 errdetail("The background worker sends that file's content to the sync service, so naming one needs the rights of pg_read_server_files."),
				 errhint("Ask a superuser to create the connection, or give the secret inline.")));

	problem = read_secret_file(path, &secret);
	if (secret != NULL)
	{
		explicit_bzero(secret, strlen(secret));
		pfree(secret);
	}
	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}

/*
 * is_loopback_host says whether the URL part after "http://" names a
 * loopback host: 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z), localhost.
 */
static bool
is_loopback_host(const char *rest)
{
	char		host[256];
	size_t		len;
	struct in_addr a4;
	struct in6_addr a6;

	if (rest[0] == '[')
	{
		const char *close = strchr(rest, ']');

		if (close == NULL || close - rest - 1 >= sizeof(host))
			return false;
		len = close - rest - 1;
		memcpy(host, rest + 1, len);
	}
	else
	{
		len = strcspn(rest, ":/");
		if (len >= sizeof(host))
			return false;
		memcpy(host, rest, len);
	}
	host[len] = '\0';
	if (pg_strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6) ||
			(IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
	return false;
}

/*
 * url_transport_problem says why a request that carries a secret (every
 * request of the heroku and webhook adapters: a bearer token, or a
 * signature that a listener could replay) must not go to url, or returns
 * NULL: only https://, or plain http:// to a loopback address when
 * connect_guard.http_allow_insecure_loopback is on.
 */
static const char *
url_transport_problem(const char *url)
{
	if (pg_strncasecmp(url, "https://", 8) == 0)
		return NULL;
	if (pg_strncasecmp(url, "http://", 7) != 0)
		return "It is not an https:// URL";
	if (!is_loopback_host(url + 7))
		return "Plain http:// would send the token or the signature in clear";
	if (!signal_http_allow_insecure_loopback)
		return "Plain http:// would send the token or the signature in clear, "
			"and connect_guard.http_allow_insecure_loopback (for tests against a local simulator) is off";
	return NULL;
}

/*
 * connect_guard.url_transport_problem(url) is url_transport_problem for
 * connect_create_connection(): NULL when the worker will send to url.
 */
Datum
connect_guard_url_transport_problem(PG_FUNCTION_ARGS)
{
	const char *problem = url_transport_problem(text_to_cstring(PG_GETARG_TEXT_PP(0)));

	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}

/*
 * as_valid_text makes an answer storable as text: bytes that are not valid
 * in the database encoding become '?'.
 */
static char *
as_valid_text(const char *text)
{
	char	   *copy = pstrdup(text);
	unsigned char *c;

	if (!pg_verifymbstr(copy, strlen(copy), true))
	{
		for (c = (unsigned char *) copy; *c; c++)
			if (*c >= 0x80)
				*c = '?';
	}
	return copy;
}

/*
 * take_in_transaction fetches the due requests (if this database has the
 * extension's tables) and prepares each one while the transaction is
 * open: its secret, its signature.
 */
static void
take_in_transaction(void *arg)
{
	TakeState  *take = (TakeState *) arg;
	Oid			nsp = get_namespace_oid(CONNECT_GUARD_SCHEMA, true);
	Oid			argtypes[2] = {INT4OID, INT4OID};
	Datum		values[2];
	int			ret;
	bool		isnull;
	Datum		wait;

	take->next_wakeup_ms = -1;
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("request", nsp)))
		return;

	values[0] = Int32GetDatum(SIGNAL_BATCH);
	values[1] = Int32GetDatum(signal_http_timeout_ms + SIGNAL_LEASE_EXTRA_MS);
	ret = SPI_execute_with_args("SELECT * FROM " CONNECT_GUARD_SCHEMA ".request_take($1, $2)",
								2, argtypes, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "request_take() failed: %s", SPI_result_code_string(ret));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		SignalJob  *job = make_job(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
		MemoryContext old = MemoryContextSwitchTo(signal_context);

		take->jobs = lappend(take->jobs, job);
		MemoryContextSwitchTo(old);
	}

	/*
	 * as request_take() orders them: only the oldest pending request of a
	 * connection can be due
	 */
	ret = SPI_execute("SELECT ceil(extract(epoch FROM min(q.next_attempt_at) - clock_timestamp()) * 1000)::bigint"
					  "  FROM " CONNECT_GUARD_SCHEMA ".request q"
					  " WHERE q.status = 'pending'"
					  "   AND NOT EXISTS (SELECT 1 FROM " CONNECT_GUARD_SCHEMA ".request o"
					  "                    WHERE o.connection_id = q.connection_id AND o.status = 'pending'"
					  "                      AND o.request_id < q.request_id)",
					  true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read when the next request is due: %s", SPI_result_code_string(ret));
	wait = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		take->next_wakeup_ms = (long) Max(DatumGetInt64(wait), 0);
}

/*
 * take_column finds a column of request_take()'s result by name: the
 * contract between 60_request_worker.sql and this file is the column
 * names, not their order.
 */
static int
take_column(TupleDesc tupdesc, const char *name)
{
	int			column = SPI_fnumber(tupdesc, name);

	if (column <= 0)
		elog(ERROR, "connect_guard.request_take() returned no column \"%s\"", name);
	return column;
}

/* column_text copies a text column of request_take()'s row into signal_context */
static char *
column_text(HeapTuple tuple, TupleDesc tupdesc, const char *name)
{
	char	   *value = SPI_getvalue(tuple, tupdesc, take_column(tupdesc, name));
	char	   *copy;

	if (value == NULL)
		return NULL;
	copy = MemoryContextStrdup(signal_context, value);
	explicit_bzero(value, strlen(value));
	pfree(value);
	return copy;
}

/*
 * make_job builds a job from a row of request_take(), whose columns it
 * reads by name.  Runs inside the take transaction.
 */
static SignalJob *
make_job(HeapTuple tuple, TupleDesc tupdesc)
{
	SignalJob  *job = MemoryContextAllocZero(signal_context, sizeof(SignalJob));
	bool		isnull;
	char	   *secret_file;
	MemoryContext old;

	job->request_id = DatumGetInt64(SPI_getbinval(tuple, tupdesc, take_column(tupdesc, "t_request_id"), &isnull));
	job->step = column_text(tuple, tupdesc, "t_step");
	job->method = column_text(tuple, tupdesc, "t_method");
	job->url = column_text(tuple, tupdesc, "t_url");
	job->body = column_text(tuple, tupdesc, "t_body");
	job->auth = column_text(tuple, tupdesc, "t_auth");
	job->secret = column_text(tuple, tupdesc, "t_secret");
	secret_file = column_text(tuple, tupdesc, "t_secret_file");
	job->description = column_text(tuple, tupdesc, "t_description");

	if (job->method == NULL || job->auth == NULL)
		return job;

	old = MemoryContextSwitchTo(signal_context);
	if (url_transport_problem(job->url) != NULL)
	{
		/*
		 * checked again here: the setting may have changed, or the connection
		 * come from a dump
		 */
		const char *problem = url_transport_problem(job->url);

		job->problem = psprintf("refusing to send the %s to %s: %c%s",
								strcmp(job->auth, "bearer") == 0 ? "API token" : "webhook signature",
								job->url, pg_tolower((unsigned char) problem[0]), problem + 1);
		if (job->secret != NULL)
		{
			explicit_bzero(job->secret, strlen(job->secret));
			job->secret = NULL;
		}
	}
	else if (job->secret == NULL && secret_file != NULL)
	{
		const char *problem = read_secret_file(secret_file, &job->secret);

		if (problem != NULL)
			job->problem = psprintf("cannot read the %s file \"%s\": %c%s",
									strcmp(job->auth, "bearer") == 0 ? "token" : "webhook key",
									secret_file, pg_tolower((unsigned char) problem[0]), problem + 1);
	}
	else if (job->secret == NULL)
		job->problem = pstrdup("the connection has no token or key: neither a stored secret nor a file in its options");

	if (job->problem == NULL && strcmp(job->auth, "hmac") == 0)
	{
		const char *body = job->body ? job->body : "";
		char	   *hex = http_hmac_sha256_hex(job->secret, body, strlen(body));

		if (hex == NULL)
			job->problem = pstrdup("could not compute the HMAC-SHA256 signature of the webhook");
		else
			job->signature = psprintf("sha256=%s", hex);
	}
	MemoryContextSwitchTo(old);
	return job;
}

/*
 * run_job makes the job's HTTP call, with no transaction open.  Whatever
 * goes wrong ends up in the job, never in an ERROR.
 */
static void
run_job(SignalJob *job)
{
	HttpRequest req;
	MemoryContext cxt = CurrentMemoryContext;

	if (job->problem != NULL || job->method == NULL)
		return;

	memset(&req, 0, sizeof(req));
	req.method = job->method;
	req.url = job->url;
	req.body = job->body;
	req.content_type = job->body ? "application/json" : NULL;
	req.bearer_token = strcmp(job->auth, "bearer") == 0 ? job->secret : NULL;
	req.signature = job->signature;
	req.timeout_ms = signal_http_timeout_ms;
	req.ca_file = signal_http_ca_file;

	pgstat_report_activity(STATE_RUNNING, job->description);
	PG_TRY();
	{
		job->answered = http_perform(&req, &job->resp);
		if (job->answered)
			job->body_out = scrub_registered(as_valid_text(job->resp.body));
		else
			job->error_out = scrub_registered(as_valid_text(job->resp.error));
	}
	PG_CATCH();
	{
		/* only palloc can get here (out of memory): no transaction to abort */
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		job->answered = false;
		job->problem = psprintf("the worker failed sending it: %s", edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

static void
outcome_in_transaction(void *arg)
{
	OutcomeArgs *a = (OutcomeArgs *) arg;
	Oid			argtypes[5] = {INT8OID, TEXTOID, INT4OID, TEXTOID, TEXTOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			ret;

	values[0] = Int64GetDatum(a->request_id);
	values[1] = CStringGetTextDatum(a->step);
	values[2] = Int32GetDatum((int32) a->http_status);
	if (a->http_status == 0)
		nulls[2] = 'n';
	values[3] = a->error ? CStringGetTextDatum(a->error) : (Datum) 0;
	if (a->error == NULL)
		nulls[3] = 'n';
	values[4] = a->body ? CStringGetTextDatum(a->body) : (Datum) 0;
	if (a->body == NULL)
		nulls[4] = 'n';
	ret = SPI_execute_with_args("SELECT " CONNECT_GUARD_SCHEMA ".request_outcome($1, $2, $3, $4, $5)",
								5, argtypes, values, nulls, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "request_outcome() failed: %s", SPI_result_code_string(ret));
}

/*
 * record_job hands the job's outcome to request_outcome().  If that fails
 * (e.g. the fence could not be raised for a reason it does not handle),
 * the request is told so in a new transaction, and is retried or failed.
 */
static void
record_job(SignalJob *job)
{
	OutcomeArgs args;
	char	   *failure = NULL;
	char	   *activity = psprintf("%s: recording the outcome", job->description);

	memset(&args, 0, sizeof(args));
	args.request_id = job->request_id;
	if (job->problem != NULL)
	{
		args.step = "unsent";
		args.error = job->problem;
	}
	else
	{
		args.step = job->step;
		args.http_status = job->answered ? job->resp.status : 0;
		args.error = job->error_out;
		args.body = job->body_out;
	}
	if (worker_run_step(activity, outcome_in_transaction, &args, &failure))
		return;

	/*
	 * worker_run_step logged the error; if this fails too, the lease runs out
	 * and it is tried again (sooner if this worker ends first)
	 */
	memset(&args, 0, sizeof(args));
	args.request_id = job->request_id;
	args.step = "error";
	args.error = failure;
	(void) worker_run_step(activity, outcome_in_transaction, &args, &failure);
}

static void
wipe_secrets(List *jobs)
{
	ListCell   *lc;

	foreach(lc, jobs)
	{
		SignalJob  *job = (SignalJob *) lfirst(lc);

		if (job->secret != NULL)
		{
			explicit_bzero(job->secret, strlen(job->secret));
			job->secret = NULL;
		}
	}
}

void
signal_process_requests(void)
{
	MemoryContext oldcxt;
	bool		stop = false;

	if (IsTransactionOrTransactionBlock())
	{
		elog(WARNING, "connect_guard: signal_process_requests() must be called outside a transaction");
		return;
	}
	if (signal_context == NULL)
		signal_context = AllocSetContextCreate(TopMemoryContext, "connect_guard signals",
											   ALLOCSET_DEFAULT_SIZES);
	oldcxt = MemoryContextSwitchTo(signal_context);

	for (int round = 0; round < SIGNAL_MAX_ROUNDS && !stop; round++)
	{
		TakeState	take = {NIL, -1};
		char	   *failure = NULL;
		ListCell   *lc;

		MemoryContextReset(signal_context);
		if (!worker_run_step("connect_guard: taking due requests", take_in_transaction, &take, &failure))
		{
			wipe_secrets(take.jobs);
			break;
		}
		next_wakeup_ms = take.next_wakeup_ms;
		if (take.jobs == NIL)
			break;

		/*
		 * Every secret of the round is scrubbed from every answer and from
		 * what SQL stores while the outcomes are recorded: an answer to one
		 * connection could quote another's secret.
		 */
		foreach(lc, take.jobs)
			scrub_register(((SignalJob *) lfirst(lc))->secret);

		foreach(lc, take.jobs)
		{
			SignalJob  *job = (SignalJob *) lfirst(lc);

			/*
			 * the rest stay leased to this worker, which is ending: the next
			 * one takes them at once
			 */
			if (ProcDiePending || ShutdownRequestPending)
			{
				stop = true;
				break;
			}
			run_job(job);
			if (job->secret != NULL)
			{
				explicit_bzero(job->secret, strlen(job->secret));
				job->secret = NULL;
			}
			record_job(job);
		}
		wipe_secrets(take.jobs);
		scrub_forget();
		if (round == SIGNAL_MAX_ROUNDS - 1)
			next_wakeup_ms = 0;
	}

	scrub_forget();
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(signal_context);
	pgstat_report_activity(STATE_IDLE, NULL);
}
