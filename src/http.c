/*
 * http.c
 *		The libcurl client the background worker signals the sync service
 *		with (see signals.c for what it sends and when).
 *
 * Why this shape: the worker must never ERROR out because of the network,
 * and PostgreSQL's error handling longjmps, which libcurl does not survive
 * (a longjmp out of one of its callbacks leaves the handle and its sockets
 * in an undefined state).  So nothing here calls ereport, and the callbacks
 * use malloc rather than palloc: everything that could fail before or after
 * libcurl holds resources is palloc'd outside that window.  A failure is
 * described in HttpResponse.error and the caller records it.
 *
 * Secrets: the bearer token is put into its header line only, and the
 * line is wiped after use; a webhook's HMAC key never reaches this file,
 * only the signature computed with it.  CURLOPT_VERBOSE stays off (its
 * output would show the Authorization header), redirects are not followed
 * (a redirect would carry the token to another host), and only http and
 * https are allowed.
 *
 * Signals: CURLOPT_NOSIGNAL, because PostgreSQL owns SIGALRM (timeouts)
 * and libcurl would otherwise use it for name resolution.  The progress
 * callback polls the shutdown flags, so that a SIGTERM does not wait for
 * the timeout of a hung request.
 *
 * No locking: each call has its own handle; nothing is shared between
 * processes.  curl_global_init runs once per process, on first use.
 */
#include "postgres.h"

#include <curl/curl.h>

#include "common/hmac.h"
#include "common/sha2.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "utils/builtins.h"

#include "http.h"

typedef struct HttpBuffer
{
	char	   *data;			/* malloc'd: written from a libcurl callback */
	size_t		len;
	size_t		cap;
	bool		truncated;
	bool		out_of_memory;
} HttpBuffer;

static bool curl_initialised = false;

static size_t http_write(char *ptr, size_t size, size_t nmemb, void *userdata);
static int	http_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
						  curl_off_t ultotal, curl_off_t ulnow);
static void wipe_and_free(char *s);

/*
 * http_write collects the answer.  It runs inside libcurl, so it must not
 * ereport: it uses malloc, and a failure makes it return 0, which libcurl
 * turns into CURLE_WRITE_ERROR.
 */
static size_t
http_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	HttpBuffer *buf = (HttpBuffer *) userdata;
	size_t		n = size * nmemb;
	size_t		keep = n;

	if (buf->len + keep > HTTP_MAX_BODY)
	{
		keep = HTTP_MAX_BODY - buf->len;
		buf->truncated = true;
	}
	if (keep == 0)
		return n;				/* read and drop the rest */
	if (buf->len + keep + 1 > buf->cap)
	{
		size_t		cap = Max(Max(buf->cap * 2, buf->len + keep + 1), 8192);
		char	   *data;

		cap = Min(cap, HTTP_MAX_BODY + 1);
		data = realloc(buf->data, cap);
		if (data == NULL)
		{
			buf->out_of_memory = true;
			return 0;
		}
		buf->data = data;
		buf->cap = cap;
	}
	memcpy(buf->data + buf->len, ptr, keep);
	buf->len += keep;
	return n;
}

/*
 * http_progress aborts the transfer when the worker is asked to stop.  It
 * only reads flags that signal handlers set: no ereport, no longjmp.
 */
static int
http_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
			  curl_off_t ultotal, curl_off_t ulnow)
{
	bool	   *interrupted = (bool *) clientp;

	if (ProcDiePending || ShutdownRequestPending)
	{
		*interrupted = true;
		return 1;
	}
	return 0;
}

static void
wipe_and_free(char *s)
{
	if (s != NULL)
	{
		explicit_bzero(s, strlen(s));
		pfree(s);
	}
}

char *
http_hmac_sha256_hex(const char *key, const char *data, size_t len)
{
	pg_hmac_ctx *ctx;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char	   *hex;

	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL)
		return NULL;
	if (pg_hmac_init(ctx, (const uint8 *) key, strlen(key)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) data, len) < 0 ||
		pg_hmac_final(ctx, digest, sizeof(digest)) < 0)
	{
		pg_hmac_free(ctx);
		return NULL;
	}
	pg_hmac_free(ctx);
	hex = palloc(PG_SHA256_DIGEST_LENGTH * 2 + 1);
	hex_encode((const char *) digest, PG_SHA256_DIGEST_LENGTH, hex);
	hex[PG_SHA256_DIGEST_LENGTH * 2] = '\0';
	return hex;
}

bool
http_perform(const HttpRequest *req, HttpResponse *resp)
{
	CURL	   *curl;
	CURLcode	rc;
	struct curl_slist *headers = NULL;
	HttpBuffer	buf = {0};
	char		errbuf[CURL_ERROR_SIZE];
	bool		interrupted = false;
	bool		post = strcmp(req->method, "POST") == 0;
	const char *body = req->body ? req->body : "";
	char	   *auth_line = NULL;
	char	   *signature_line = NULL;
	char	   *type_line = NULL;
	bool		answered = false;

	memset(resp, 0, sizeof(*resp));
	resp->body = "";

	if (!curl_initialised)
	{
		rc = curl_global_init(CURL_GLOBAL_DEFAULT);
		if (rc != CURLE_OK)
		{
			snprintf(resp->error, sizeof(resp->error), "libcurl could not be initialised: %s",
					 curl_easy_strerror(rc));
			return false;
		}
		curl_initialised = true;
	}

	/* everything that may palloc, before libcurl holds anything */
	if (req->bearer_token != NULL)
		auth_line = psprintf("Authorization: Bearer %s", req->bearer_token);
	if (req->signature != NULL)
		signature_line = psprintf("X-Connect-Guard-Signature: %s", req->signature);
	if (req->content_type != NULL)
		type_line = psprintf("Content-Type: %s", req->content_type);

	curl = curl_easy_init();
	if (curl == NULL)
	{
		snprintf(resp->error, sizeof(resp->error), "libcurl could not create a handle");
		wipe_and_free(auth_line);
		return false;
	}

	errbuf[0] = '\0';

	/*
	 * The headers the Heroku CLI's connect plugin sends on every request,
	 * GETs and bodiless POSTs included: JSON both ways, and a client header
	 * naming the caller (the plugin says "cli"; the version is in the
	 * User-Agent).  Connect may refuse requests without them, so the
	 * simulator refuses them too.
	 */
	headers = curl_slist_append(headers, "Accept: application/json");
	if (headers != NULL)
		headers = curl_slist_append(headers, type_line != NULL ? type_line : "Content-Type: application/json");
	if (headers != NULL && auth_line != NULL)
		headers = curl_slist_append(headers, "Heroku-Client: connect_guard");
	/* no "Expect: 100-continue" round trip for larger bodies */
	if (headers != NULL)
		headers = curl_slist_append(headers, "Expect:");
	if (headers != NULL && auth_line != NULL)
		headers = curl_slist_append(headers, auth_line);
	if (headers != NULL && signature_line != NULL)
		headers = curl_slist_append(headers, signature_line);
	if (headers == NULL)
	{
		snprintf(resp->error, sizeof(resp->error), "out of memory building the request headers");
		goto done;
	}

	curl_easy_setopt(curl, CURLOPT_VERBOSE, 0L);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
	if (req->ca_file != NULL && req->ca_file[0] != '\0')
		curl_easy_setopt(curl, CURLOPT_CAINFO, req->ca_file);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) req->timeout_ms);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long) req->timeout_ms);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "connect_guard/" CONNECT_GUARD_VERSION);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, http_write);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buf);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, http_progress);
	curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &interrupted);
	if (post)
	{
		curl_easy_setopt(curl, CURLOPT_POST, 1L);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
	}
	else
		curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);

	rc = curl_easy_perform(curl);
	if (rc == CURLE_OK)
	{
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
		answered = true;
	}
	else if (interrupted)
		snprintf(resp->error, sizeof(resp->error), "interrupted: the worker is shutting down");
	else if (buf.out_of_memory)
		snprintf(resp->error, sizeof(resp->error), "out of memory reading the answer");
	else
	{
		resp->timed_out = (rc == CURLE_OPERATION_TIMEDOUT);
		if (errbuf[0] != '\0')
			snprintf(resp->error, sizeof(resp->error), "%s", errbuf);
		else
			snprintf(resp->error, sizeof(resp->error), "%s", curl_easy_strerror(rc));
	}

done:
	curl_slist_free_all(headers);
	curl_easy_cleanup(curl);
	wipe_and_free(auth_line);
	if (signature_line != NULL)
		pfree(signature_line);
	if (type_line != NULL)
		pfree(type_line);

	if (answered)
	{
		char	   *copy = palloc(buf.len + 1);

		if (buf.len > 0)
			memcpy(copy, buf.data, buf.len);
		copy[buf.len] = '\0';
		resp->body = copy;
		resp->body_len = buf.len;
		resp->truncated = buf.truncated;
	}
	free(buf.data);
	return answered;
}
