/*
 * http.h
 *		A small libcurl client for the background worker: one request, with a
 *		timeout, TLS verification, and no ereport on any failure.
 *
 * The caller describes the request; the answer (or why there is none) comes
 * back in an HttpResponse.  A bearer token given in the request goes into
 * its header only and is never copied into the response, into an error
 * text, or into libcurl's verbose output (which stays off).
 */
#ifndef CONNECT_GUARD_HTTP_H
#define CONNECT_GUARD_HTTP_H

/* Larger answers are cut here (a deep GET of a big Connect account is well below). */
#define HTTP_MAX_BODY		(4 * 1024 * 1024)
#define HTTP_ERROR_LEN		512

typedef struct HttpRequest
{
	const char *method;			/* "GET" or "POST" */
	const char *url;			/* http:// or https:// only */
	const char *body;			/* POST body, or NULL for an empty one */
	const char *content_type;	/* of body, or NULL */
	const char *bearer_token;	/* Authorization: Bearer ..., or NULL */
	const char *signature;		/* X-Connect-Guard-Signature value, or NULL */
	int			timeout_ms;		/* for the whole exchange, connecting included */
	const char *ca_file;		/* CA bundle, or NULL/"" for the system's */
} HttpRequest;

typedef struct HttpResponse
{
	long		status;			/* HTTP status, 0 when there was no answer */
	char	   *body;			/* palloc'd and NUL-terminated ("" when none) */
	size_t		body_len;
	bool		truncated;		/* body was longer than HTTP_MAX_BODY */
	bool		timed_out;
	char		error[HTTP_ERROR_LEN];	/* why there is no answer, else "" */
} HttpResponse;

/*
 * http_perform sends one request and waits for its answer.  Returns true
 * when an answer (of any status) arrived; false, with resp->error set, when
 * none did (connection refused, timeout, TLS failure, shutdown).
 */
extern bool http_perform(const HttpRequest *req, HttpResponse *resp);

/*
 * http_hmac_sha256_hex returns the lower-case hex HMAC-SHA256 of data, or
 * NULL.  PostgreSQL's HMAC registers its OpenSSL context with the current
 * resource owner, so call it inside a transaction.
 */
extern char *http_hmac_sha256_hex(const char *key, const char *data, size_t len);

#endif							/* CONNECT_GUARD_HTTP_H */
