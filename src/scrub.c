/*
 * scrub.c
 *		Takes every form of the sync service's secrets (the API token, the
 *		webhook key) out of text that connect_guard stores or logs.
 *
 * A sync service may echo the secret it was sent, and not always as it
 * was sent: JSON-escaped ("TOPSECRET\u002dabc"), percent-encoded, as HTML
 * character references, inside a base64 credential, in hex, or cut short.
 * SQL then decodes the answer (->> undoes JSON escapes) and stores what it
 * read.  Matching the secret byte for byte in the raw answer is not
 * enough, so the rule is:
 *
 *   A stretch of text is replaced by ******** when it spells MIN_PIECE (8)
 *   or more consecutive characters of a secret (the whole secret when it
 *   is shorter), ignoring case, read as it is, or after undoing up to
 *   MAX_LAYERS (3) layers of escapes (JSON and C: \uXXXX, \xXX, \/, \";
 *   percent-encoding: %XX; HTML character references: &#NN; &#xHH; &amp;),
 *   or read as base64 (standard or URL-safe alphabet, at any alignment) or
 *   as hex, of any of those layers.
 *
 * Each character of a decoded layer remembers which bytes of the original
 * text spell it, so what is replaced is exactly the original stretch: the
 * rest of a message (an HTTP status, Connect's words) stays readable.  A
 * partial echo shorter than MIN_PIECE is left alone: a 7-character piece of
 * a 36-character token is not the token, and masking every short common
 * substring would make every message unreadable.
 *
 * Where it applies: the worker scrubs each answer and error with the
 * secrets of the requests it is handling before SQL sees them (signals.c),
 * and the trigger connect_guard.scrub_stored() scrubs, again, every value
 * written to the columns that can hold an answer's words
 * (connect_guard.request.last_error and remote_state,
 * connection.state_reason, event.detail), so that what SQL decodes or
 * composes is covered too.  worker_run_step() scrubs the server log line
 * of a failed step.  The secrets are those the worker registered
 * (scrub_register) while it sends requests and records their outcomes;
 * outside that window nothing is registered, in the worker or any other
 * backend, and every scrubber returns its input unchanged.
 *
 * No locking: the registered secrets are this process's memory, wiped by
 * scrub_forget().
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/jsonfuncs.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "scrub.h"

PG_FUNCTION_INFO_V1(connect_guard_scrub);
PG_FUNCTION_INFO_V1(connect_guard_scrub_stored);
PG_FUNCTION_INFO_V1(connect_guard_scrub_hold);
PG_FUNCTION_INFO_V1(connect_guard_scrub_release);

#define MIN_PIECE	8
#define MAX_LAYERS	3

/*
 * A reading of the text: each character, and the bytes [from, to) of the
 * original text that spell it.
 */
typedef struct Reading
{
	int			n;
	int			cap;
	unsigned char *ch;
	int		   *from;
	int		   *to;
} Reading;

/* One secret, prepared for the search */
typedef struct Needle
{
	const char *secret;
	int			len;
	int			min;			/* the shortest piece that counts */
	int			first[256];		/* by lower-case character: the first k where
								 * a piece may start, or -1 */
	int		   *next;			/* the next such k after k, or -1 */
} Needle;

static MemoryContext registered_context = NULL;
static List *registered = NIL;	/* of char *, in registered_context */

static Reading *
reading_new(int cap)
{
	Reading    *r = palloc(sizeof(Reading));

	r->n = 0;
	r->cap = Max(cap, 16);
	r->ch = palloc(r->cap);
	r->from = palloc(r->cap * sizeof(int));
	r->to = palloc(r->cap * sizeof(int));
	return r;
}

static void
reading_add(Reading *r, unsigned char c, int from, int to)
{
	if (r->n == r->cap)
	{
		r->cap *= 2;
		r->ch = repalloc(r->ch, r->cap);
		r->from = repalloc(r->from, r->cap * sizeof(int));
		r->to = repalloc(r->to, r->cap * sizeof(int));
	}
	r->ch[r->n] = c;
	r->from[r->n] = from;
	r->to[r->n] = to;
	r->n++;
}

static void
reading_free(Reading *r)
{
	pfree(r->ch);
	pfree(r->from);
	pfree(r->to);
	pfree(r);
}

static int
hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* hex_number reads ndigits hex digits of r from i, or returns -1 */
static long
hex_number(const Reading *r, int i, int ndigits)
{
	long		v = 0;

	if (i + ndigits > r->n)
		return -1;
	for (int k = 0; k < ndigits; k++)
	{
		int			d = hex_value(r->ch[i + k]);

		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/*
 * html_reference reads a character reference (&#NN; &#xHH; &amp; ...) of r
 * at i: returns its length (0: none) and sets *c.
 */
static int
html_reference(const Reading *r, int i, long *c)
{
	static const struct
	{
		const char *name;
		char		c;
	}			names[] = {{"amp;", '&'}, {"lt;", '<'}, {"gt;", '>'}, {"quot;", '"'}, {"apos;", '\''}};
	int			j = i + 1;

	if (j < r->n && r->ch[j] == '#')
	{
		bool		hex = j + 1 < r->n && (r->ch[j + 1] == 'x' || r->ch[j + 1] == 'X');
		long		v = 0;
		int			digits = 0;

		for (j += hex ? 2 : 1; j < r->n && digits < 7; j++, digits++)
		{
			int			d = hex ? hex_value(r->ch[j]) : (isdigit(r->ch[j]) ? r->ch[j] - '0' : -1);

			if (d < 0)
				break;
			v = v * (hex ? 16 : 10) + d;
		}
		if (digits == 0 || j >= r->n || r->ch[j] != ';')
			return 0;
		*c = v;
		return j + 1 - i;
	}
	for (int k = 0; k < lengthof(names); k++)
	{
		int			len = strlen(names[k].name);

		if (i + 1 + len <= r->n && memcmp(r->ch + i + 1, names[k].name, len) == 0)
		{
			*c = names[k].c;
			return len + 1;
		}
	}
	return 0;
}

/*
 * decode_layer undoes one layer of escapes of in (see the rule at the top);
 * *changed says whether anything was undone.  A decoded character outside
 * ASCII becomes 0x80, which no secret holds (they are printable ASCII).
 */
static Reading *
decode_layer(const Reading *in, bool *changed)
{
	Reading    *out = reading_new(in->n);

	*changed = false;
	for (int i = 0; i < in->n;)
	{
		unsigned char c = in->ch[i];
		long		v = -1;
		int			used = 0;

		if (c == '\\' && i + 1 < in->n)
		{
			unsigned char e = in->ch[i + 1];

			if ((e == 'u' || e == 'U') && (v = hex_number(in, i + 2, 4)) >= 0)
				used = 6;
			else if ((e == 'x' || e == 'X') && (v = hex_number(in, i + 2, 2)) >= 0)
				used = 4;
			else if (e == '"' || e == '\\' || e == '/' || e == '\'')
				v = e, used = 2;
			else if (e == 'n' || e == 'r' || e == 't' || e == 'b' || e == 'f')
				v = ' ', used = 2;
		}
		else if (c == '%' && (v = hex_number(in, i + 1, 2)) >= 0)
			used = 3;
		else if (c == '&')
			used = html_reference(in, i, &v);

		if (used > 0)
		{
			reading_add(out, (v >= 0 && v < 0x80) ? (unsigned char) v : 0x80,
						in->from[i], in->to[i + used - 1]);
			i += used;
			*changed = true;
		}
		else
		{
			reading_add(out, c, in->from[i], in->to[i]);
			i++;
		}
	}
	return out;
}

/* mark_pieces marks in mask the original bytes of every piece of the needle that r spells */
static void
mark_pieces(const Reading *r, const Needle *nd, bool *mask)
{
	for (int p = 0; p + nd->min <= r->n; p++)
	{
		unsigned char c = pg_ascii_tolower(r->ch[p]);

		for (int k = nd->first[c]; k >= 0; k = nd->next[k])
		{
			int			len = 0;

			while (p + len < r->n && k + len < nd->len &&
				   pg_ascii_tolower(r->ch[p + len]) == pg_ascii_tolower((unsigned char) nd->secret[k + len]))
				len++;
			if (len >= nd->min)
				for (int b = r->from[p]; b < r->to[p + len - 1]; b++)
					mask[b] = true;
		}
	}
}

static int
base64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '-')
		return 62;
	if (c == '/' || c == '_')
		return 63;
	return -1;
}

/*
 * mark_encoded reads every run of base64 (bits = 6) or hex (bits = 4)
 * digits of r as such, from each alignment, and marks the pieces of the
 * needle it spells.  A decoded byte stands for the digits it came from.
 */
static void
mark_encoded(const Reading *r, const Needle *nd, bool *mask, int bits)
{
	int			group = bits == 6 ? 4 : 2;	/* digits per group of whole bytes */
	int			shortest = (nd->min * 8 + bits - 1) / bits;

	for (int start = 0; start < r->n;)
	{
		int			end = start;

		while (end < r->n && (bits == 6 ? base64_value(r->ch[end]) : hex_value(r->ch[end])) >= 0)
			end++;
		if (end - start >= shortest)
		{
			for (int align = 0; align < group; align++)
			{
				Reading    *bytes = reading_new((end - start) * bits / 8 + 1);
				uint32		acc = 0;
				int			nbits = 0;
				int			first = start + align;

				for (int i = start + align; i < end; i++)
				{
					int			d = bits == 6 ? base64_value(r->ch[i]) : hex_value(r->ch[i]);

					acc = (acc << bits) | d;
					nbits += bits;
					if (nbits >= 8)
					{
						nbits -= 8;
						reading_add(bytes, (acc >> nbits) & 0xFF, r->from[first], r->to[i]);

						/*
						 * the next byte starts in this digit unless it was
						 * used up
						 */
						first = nbits > 0 ? i : i + 1;
					}
				}
				mark_pieces(bytes, nd, mask);
				reading_free(bytes);
			}
		}
		start = end > start ? end : start + 1;
	}
}

char *
scrub_text(const char *text, const char *const *secrets, int nsecrets)
{
	int			len;
	bool	   *mask;
	bool		any = false;
	Reading    *layers[MAX_LAYERS + 1];
	int			nlayers = 1;
	StringInfoData out;

	if (text == NULL)
		return NULL;
	len = strlen(text);
	if (nsecrets == 0 || len == 0)
		return pstrdup(text);

	mask = palloc0(len);
	layers[0] = reading_new(len);
	for (int i = 0; i < len; i++)
		reading_add(layers[0], (unsigned char) text[i], i, i + 1);
	for (; nlayers <= MAX_LAYERS; nlayers++)
	{
		bool		changed;

		layers[nlayers] = decode_layer(layers[nlayers - 1], &changed);
		if (!changed)
		{
			reading_free(layers[nlayers]);
			break;
		}
	}

	for (int s = 0; s < nsecrets; s++)
	{
		Needle		nd;

		if (secrets[s] == NULL || secrets[s][0] == '\0')
			continue;
		nd.secret = secrets[s];
		nd.len = strlen(secrets[s]);
		nd.min = Min(nd.len, MIN_PIECE);
		nd.next = palloc(nd.len * sizeof(int));
		memset(nd.first, -1, sizeof(nd.first));
		for (int k = nd.len - nd.min; k >= 0; k--)
		{
			unsigned char c = pg_ascii_tolower((unsigned char) nd.secret[k]);

			nd.next[k] = nd.first[c];
			nd.first[c] = k;
		}
		for (int l = 0; l < nlayers; l++)
		{
			mark_pieces(layers[l], &nd, mask);
			mark_encoded(layers[l], &nd, mask, 6);
			mark_encoded(layers[l], &nd, mask, 4);
		}
		pfree(nd.next);
	}
	for (int l = 0; l < nlayers; l++)
		reading_free(layers[l]);

	initStringInfo(&out);
	for (int i = 0; i < len; i++)
	{
		if (!mask[i])
			appendStringInfoChar(&out, text[i]);
		else if (i == 0 || !mask[i - 1])
		{
			appendStringInfoString(&out, SCRUB_MASK);
			any = true;
		}
	}
	pfree(mask);
	if (!any)
	{
		pfree(out.data);
		return pstrdup(text);
	}
	return out.data;
}

void
scrub_register(const char *secret)
{
	MemoryContext old;
	ListCell   *lc;

	if (secret == NULL || secret[0] == '\0')
		return;
	foreach(lc, registered)
	{
		if (strcmp((char *) lfirst(lc), secret) == 0)
			return;
	}
	if (registered_context == NULL)
		registered_context = AllocSetContextCreate(TopMemoryContext, "connect_guard scrub",
												   ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(registered_context);
	registered = lappend(registered, pstrdup(secret));
	MemoryContextSwitchTo(old);
}

void
scrub_forget(void)
{
	ListCell   *lc;

	foreach(lc, registered)
	{
		char	   *s = (char *) lfirst(lc);

		explicit_bzero(s, strlen(s));
	}
	registered = NIL;
	if (registered_context != NULL)
		MemoryContextReset(registered_context);
}

bool
scrub_active(void)
{
	return registered != NIL;
}

char *
scrub_registered(const char *text)
{
	const char **secrets;
	int			n = 0;
	ListCell   *lc;
	char	   *result;

	if (text == NULL)
		return NULL;
	if (registered == NIL)
		return pstrdup(text);
	secrets = palloc(list_length(registered) * sizeof(char *));
	foreach(lc, registered)
		secrets[n++] = (const char *) lfirst(lc);
	result = scrub_text(text, secrets, n);
	pfree(secrets);
	return result;
}

/* connect_guard.scrub(text): the text with the registered secrets scrubbed */
Datum
connect_guard_scrub(PG_FUNCTION_ARGS)
{
	text	   *in = PG_GETARG_TEXT_PP(0);

	if (registered == NIL)
		PG_RETURN_TEXT_P(in);
	PG_RETURN_TEXT_P(cstring_to_text(scrub_registered(text_to_cstring(in))));
}

/*
 * connect_guard.scrub_hold(secrets text[]) registers secrets in this
 * backend, as the worker does while it records outcomes, and
 * connect_guard.scrub_release() forgets them: so that the regression tests
 * (sql/secrets.sql) can show the rule and the triggers at work without a
 * worker.  They only change what this backend stores.
 */
Datum
connect_guard_scrub_hold(PG_FUNCTION_ARGS)
{
	ArrayType  *secrets = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	deconstruct_array(secrets, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			scrub_register(TextDatumGetCString(elems[i]));
	PG_RETURN_VOID();
}

Datum
connect_guard_scrub_release(PG_FUNCTION_ARGS)
{
	scrub_forget();
	PG_RETURN_VOID();
}

/* for transform_jsonb_string_values: one string of a jsonb value */
static text *
scrub_json_string(void *state, char *value, int len)
{
	char	   *copy = pnstrdup(value, len);
	text	   *result = cstring_to_text(scrub_registered(copy));

	pfree(copy);
	return result;
}

/*
 * connect_guard.scrub_stored(): a BEFORE INSERT OR UPDATE row trigger whose
 * arguments name text or jsonb columns; it scrubs them (the strings of a
 * jsonb, not its keys, which are connect_guard's own).
 */
Datum
connect_guard_scrub_stored(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	TupleDesc	tupdesc;
	HeapTuple	tuple;
	int		   *columns;
	Datum	   *values;
	bool	   *nulls;
	int			ncolumns = 0;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		elog(ERROR, "connect_guard.scrub_stored() must be a BEFORE INSERT OR UPDATE row trigger");
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : trigdata->tg_trigtuple;
	if (registered == NIL)
		return PointerGetDatum(tuple);

	trigger = trigdata->tg_trigger;
	tupdesc = RelationGetDescr(trigdata->tg_relation);
	columns = palloc(trigger->tgnargs * sizeof(int));
	values = palloc(trigger->tgnargs * sizeof(Datum));
	nulls = palloc0(trigger->tgnargs * sizeof(bool));
	for (int i = 0; i < trigger->tgnargs; i++)
	{
		int			attnum = SPI_fnumber(tupdesc, trigger->tgargs[i]);
		Oid			type;
		bool		isnull;
		Datum		value;

		if (attnum <= 0)
			elog(ERROR, "connect_guard.scrub_stored(): relation \"%s\" has no column \"%s\"",
				 RelationGetRelationName(trigdata->tg_relation), trigger->tgargs[i]);
		type = TupleDescAttr(tupdesc, attnum - 1)->atttypid;
		value = heap_getattr(tuple, attnum, tupdesc, &isnull);
		if (isnull)
			continue;
		if (type == TEXTOID)
			value = CStringGetTextDatum(scrub_registered(TextDatumGetCString(value)));
		else if (type == JSONBOID)
			value = JsonbPGetDatum(transform_jsonb_string_values(DatumGetJsonbP(value), NULL,
																 scrub_json_string));
		else
			elog(ERROR, "connect_guard.scrub_stored(): column \"%s\" is neither text nor jsonb",
				 trigger->tgargs[i]);
		columns[ncolumns] = attnum;
		values[ncolumns] = value;
		ncolumns++;
	}
	if (ncolumns == 0)
		return PointerGetDatum(tuple);
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, tupdesc, ncolumns, columns, values, nulls));
}
