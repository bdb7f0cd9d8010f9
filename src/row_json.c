/*
 * row_json.c
 *		Turn the rows of a captured table into jsonb for the trigger log.
 *
 * The capture trigger fires once per changed row, so the per-row cost
 * matters more than anything else in the extension.  Everything that
 * depends only on the table's layout (which function prints a column, how
 * its value maps to jsonb, the order of the keys) is decided once in
 * row_json_build_layout and cached by capture.c.  The per-row functions
 * then write the jsonb binary format (utils/jsonb.h) directly: with the keys
 * already in jsonb's order there is nothing to sort, and no intermediate
 * JsonbValue tree to build and convert.
 *
 * Values keep their meaning independent of session settings: numbers and
 * booleans become jsonb numbers and booleans (floats with their shortest
 * exact digits, money as a number), dates and times use ISO 8601 whatever
 * DateStyle says, and every other type (arrays, composites, intervals,
 * bytea ...) is written as its text form, printed with DateStyle ISO,
 * IntervalStyle postgres and extra_float_digits 1 (row_json_fix_output),
 * which the type's input function reads back under any settings.
 *
 * json and jsonb columns are embedded when the value is an object, an array,
 * a number or a boolean that jsonb can hold.  Otherwise the value is written
 * as a JSON string holding its json text: a top-level string or null (which
 * ->> would turn into a bare word or SQL NULL), or json text that jsonb
 * refuses (a \u0000 escape, an unpaired surrogate, a number beyond
 * numeric's range, a \u escape above 007F in a database that is not UTF8,
 * a text over JSON_EMBED_MAX_BYTES).  So a JSON string is never the embedded form of a
 * json or jsonb column, and (values->>'col')::json gives back every value,
 * exactly; the capture never refuses a write that json accepted.
 *
 * Locking: none.  Building a layout reads the type catalogs through the
 * syscache; the per-row functions only read the datums they are given.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "common/shortest_dec.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/cash.h"
#include "utils/datum.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"

#include "row_json.h"

/*
 * json text longer than this is not converted to jsonb, so that the jsonb
 * (up to about six times larger for arrays of small numbers) stays well
 * under jsonb's limit of JENTRY_OFFLENMASK bytes.
 */
#define JSON_EMBED_MAX_BYTES (32 * 1024 * 1024)

static RowJsonKind row_json_kind_for_type(Oid typid);
static int	row_json_key_cmp(const void *a, const void *b);
static void set_jentry(StringInfo buf, int jentries, int index, uint32 type,
					   int len, uint32 *totallen);
static void write_object_keys(StringInfo buf, const RowJsonLayout *layout,
							  const int *cols, int n, uint32 *totallen);
static Jsonb *write_object(const RowJsonLayout *layout, const int *cols, int n,
						   const Datum *values, const bool *nulls);
static uint32 write_value(StringInfo buf, const RowJsonColumn *column,
						  Datum value);
static uint32 write_numeric(StringInfo buf, Numeric num);
static uint32 write_string(StringInfo buf, const char *str, int len);
static uint32 write_jsonb(StringInfo buf, Jsonb *jb);
static uint32 write_json(StringInfo buf, text *json);
static bool json_fits_jsonb(char *str, int len);
static bool json_has_high_escape(const char *str, int len);
static void json_fits_scalar(void *state, char *token, JsonTokenType tokentype);
static bool numeric_can_hold(const char *number);

/*
 * row_json_kind_for_type decides, from the base type, how a value of typid
 * is represented in jsonb.
 */
static RowJsonKind
row_json_kind_for_type(Oid typid)
{
	switch (getBaseType(typid))
	{
		case BOOLOID:
			return ROW_JSON_BOOL;
		case INT2OID:
			return ROW_JSON_INT2;
		case INT4OID:
			return ROW_JSON_INT4;
		case INT8OID:
			return ROW_JSON_INT8;
		case NUMERICOID:
			return ROW_JSON_NUMERIC;
		case FLOAT4OID:
			return ROW_JSON_FLOAT4;
		case FLOAT8OID:
			return ROW_JSON_FLOAT8;
		case MONEYOID:
			return ROW_JSON_MONEY;
		case JSONBOID:
			return ROW_JSON_JSONB;
		case JSONOID:
			return ROW_JSON_JSON;
		case DATEOID:
		case TIMEOID:
		case TIMETZOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return ROW_JSON_DATETIME;
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
			return ROW_JSON_STRING;
		default:
			return ROW_JSON_TEXT;
	}
}

/* jsonb's order of object keys: shorter first, then bytewise. */
static int
row_json_key_cmp(const void *a, const void *b)
{
	const RowJsonColumn *ca = (const RowJsonColumn *) a;
	const RowJsonColumn *cb = (const RowJsonColumn *) b;

	if (ca->namelen != cb->namelen)
		return ca->namelen < cb->namelen ? -1 : 1;
	return memcmp(ca->name, cb->name, ca->namelen);
}

/*
 * row_json_build_layout fills layout with one entry per live column of desc
 * (dropped columns are skipped), in jsonb key order, allocated in cxt so
 * that the caller can cache it for the life of the relation's cache entry.
 */
void
row_json_build_layout(RowJsonLayout *layout, TupleDesc desc, MemoryContext cxt)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	int			n = 0;
	StringInfoData keys;

	layout->columns = palloc0(sizeof(RowJsonColumn) * Max(desc->natts, 1));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		RowJsonColumn *column = &layout->columns[n];
		Oid			outfunc;
		bool		isvarlena;

		if (att->attisdropped)
			continue;
		column->attnum = att->attnum;
		column->typid = att->atttypid;
		column->typbyval = att->attbyval;
		column->typlen = att->attlen;
		column->kind = row_json_kind_for_type(att->atttypid);
		column->name = pstrdup(NameStr(att->attname));
		column->namelen = strlen(column->name);
		getTypeOutputInfo(att->atttypid, &outfunc, &isvarlena);
		fmgr_info_cxt(outfunc, &column->output, cxt);
		n++;
	}
	layout->ncolumns = n;
	/* column names are unique, so this order is total */
	qsort(layout->columns, n, sizeof(RowJsonColumn), row_json_key_cmp);

	initStringInfo(&keys);
	layout->row_keys_totallen = 0;
	write_object_keys(&keys, layout, NULL, n, &layout->row_keys_totallen);
	layout->row_keys = keys.data;
	layout->row_keys_len = keys.len;
	MemoryContextSwitchTo(oldcxt);
}

/* row_json_column_text prints one non-null value with its type's output. */
char *
row_json_column_text(const RowJsonColumn *column, Datum value)
{
	return OutputFunctionCall((FmgrInfo *) &column->output, value);
}

/*
 * row_json_column_as_text returns one non-null value as a text datum: text,
 * varchar and char values as they are (their output function would only
 * copy them), others printed by their output function.
 */
Datum
row_json_column_as_text(const RowJsonColumn *column, Datum value)
{
	if (column->kind == ROW_JSON_STRING)
		return PointerGetDatum(PG_DETOAST_DATUM_PACKED(value));
	return CStringGetTextDatum(row_json_column_text(column, value));
}

/*
 * row_json_fix_output pins the settings that change the text form of
 * values, for the time an entry is built; row_json_restore_output puts them
 * back (the caller does so in PG_FINALLY).  The variables are set directly,
 * not through the GUC machinery: nothing but output functions runs in
 * between, and a SET per row would cost more than the row.
 */
void
row_json_fix_output(RowJsonOutputSettings *saved)
{
	saved->date_style = DateStyle;
	saved->interval_style = IntervalStyle;
	saved->extra_float_digits = extra_float_digits;
	DateStyle = USE_ISO_DATES;
	IntervalStyle = INTSTYLE_POSTGRES;
	extra_float_digits = 1;
}

void
row_json_restore_output(const RowJsonOutputSettings *saved)
{
	DateStyle = saved->date_style;
	IntervalStyle = saved->interval_style;
	extra_float_digits = saved->extra_float_digits;
}

/*
 * row_json_from_row returns every live column of a row, deformed by the
 * caller into values/nulls (indexed by attnum - 1), as one object.
 */
Jsonb *
row_json_from_row(const RowJsonLayout *layout, const Datum *values,
				  const bool *nulls)
{
	return write_object(layout, NULL, layout->ncolumns, values, nulls);
}

/*
 * row_json_changed_columns returns the new values of the columns whose
 * stored form differs between the old and the new row.  Comparing the stored
 * bytes is enough: an unchanged TOASTed column keeps its TOAST pointer, so
 * it compares equal without being fetched, and a value that was rewritten
 * to an equal one is at worst reported as changed.
 */
Jsonb *
row_json_changed_columns(const RowJsonLayout *layout,
						 const Datum *oldvalues, const bool *oldnulls,
						 const Datum *newvalues, const bool *newnulls)
{
	int		   *cols = palloc(sizeof(int) * Max(layout->ncolumns, 1));
	int			n = 0;

	for (int i = 0; i < layout->ncolumns; i++)
	{
		const RowJsonColumn *column = &layout->columns[i];
		int			att = column->attnum - 1;

		if (oldnulls[att] && newnulls[att])
			continue;
		if (!oldnulls[att] && !newnulls[att] &&
			datumIsEqual(oldvalues[att], newvalues[att], column->typbyval, column->typlen))
			continue;
		cols[n++] = i;
	}
	return write_object(layout, cols, n, newvalues, newnulls);
}

/*
 * set_jentry stores the JEntry of child index of the object whose JEntry
 * array starts at jentries: its type, and its length, or (every
 * JB_OFFSET_STRIDE'th child) the end offset of its data, as
 * convertJsonbObject does.
 */
static void
set_jentry(StringInfo buf, int jentries, int index, uint32 type, int len,
		   uint32 *totallen)
{
	JEntry		meta;

	*totallen += len;
	if (*totallen > JENTRY_OFFLENMASK)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("row is too large for the trigger log"),
				 errdetail("The row's columns take more than %d bytes as jsonb, the most a jsonb value can hold.",
						   JENTRY_OFFLENMASK),
				 errhint("connect_guard cannot capture this row: keep the row's values under 256 MB in all, or unmap the table.")));
	if (index % JB_OFFSET_STRIDE == 0)
		meta = type | *totallen | JENTRY_HAS_OFF;
	else
		meta = type | len;
	memcpy(buf->data + jentries + index * sizeof(JEntry), &meta, sizeof(JEntry));
}

/*
 * write_object_keys appends the header and the keys of an object of n
 * columns of the layout (cols lists their indexes, in layout order; NULL
 * means all columns), with room for the values' JEntries, and counts the
 * keys' bytes in *totallen.
 */
static void
write_object_keys(StringInfo buf, const RowJsonLayout *layout, const int *cols,
				  int n, uint32 *totallen)
{
	uint32		header = n | JB_FOBJECT;
	int			jentries;

	appendBinaryStringInfo(buf, (char *) &header, sizeof(uint32));
	jentries = buf->len;
	enlargeStringInfo(buf, sizeof(JEntry) * 2 * n);
	memset(buf->data + buf->len, 0, sizeof(JEntry) * 2 * n);
	buf->len += sizeof(JEntry) * 2 * n;

	for (int i = 0; i < n; i++)
	{
		const RowJsonColumn *column = &layout->columns[cols ? cols[i] : i];

		appendBinaryStringInfo(buf, column->name, column->namelen);
		set_jentry(buf, jentries, i, JENTRY_ISSTRING, column->namelen, totallen);
	}
}

/*
 * write_object writes an object of n columns of the layout (cols as for
 * write_object_keys) as a Jsonb datum: the header, the keys' and then the
 * values' JEntries, the keys' bytes, the values' bytes.  The part before the
 * values of a whole row is the same for every row, and copied from the
 * layout.
 */
static Jsonb *
write_object(const RowJsonLayout *layout, const int *cols, int n,
			 const Datum *values, const bool *nulls)
{
	StringInfoData buf;
	uint32		totallen = 0;
	int			jentries;

	initStringInfo(&buf);
	/* the varlena header, set at the end */
	buf.len = VARHDRSZ;
	jentries = buf.len + sizeof(uint32);
	if (cols == NULL)
	{
		appendBinaryStringInfo(&buf, layout->row_keys, layout->row_keys_len);
		totallen = layout->row_keys_totallen;
	}
	else
		write_object_keys(&buf, layout, cols, n, &totallen);

	for (int i = 0; i < n; i++)
	{
		const RowJsonColumn *column = &layout->columns[cols ? cols[i] : i];
		int			att = column->attnum - 1;
		int			start = buf.len;
		uint32		type;

		if (nulls[att])
			type = JENTRY_ISNULL;
		else
			type = write_value(&buf, column, values[att]);
		set_jentry(&buf, jentries, n + i, type, buf.len - start, &totallen);
	}

	SET_VARSIZE(buf.data, buf.len);
	return (Jsonb *) buf.data;
}

/*
 * pad_to_int aligns the buffer to 4 bytes, as jsonb does before numerics and
 * containers.  The buffer starts with the varlena header, so this is also
 * alignment relative to the container's data.
 */
static void
pad_to_int(StringInfo buf)
{
	int			padlen = INTALIGN(buf->len) - buf->len;

	if (padlen > 0)
	{
		enlargeStringInfo(buf, padlen);
		memset(buf->data + buf->len, 0, padlen);
		buf->len += padlen;
	}
}

/* write_numeric appends a numeric (with its 4-byte header) after padding. */
static uint32
write_numeric(StringInfo buf, Numeric num)
{
	pad_to_int(buf);
	appendBinaryStringInfo(buf, (char *) num, VARSIZE(num));
	return JENTRY_ISNUMERIC;
}

static uint32
write_string(StringInfo buf, const char *str, int len)
{
	appendBinaryStringInfo(buf, str, len);
	return JENTRY_ISSTRING;
}

static uint32
write_cstring(StringInfo buf, const char *str)
{
	return write_string(buf, str, strlen(str));
}

/* write_float appends a finite float's shortest exact digits as a number. */
static uint32
write_float(StringInfo buf, const char *digits)
{
	return write_numeric(buf, DatumGetNumeric(DirectFunctionCall3(numeric_in,
																  CStringGetDatum(digits),
																  ObjectIdGetDatum(InvalidOid),
																  Int32GetDatum(-1))));
}

/*
 * write_value appends one non-null value and returns its JEntry type.
 */
static uint32
write_value(StringInfo buf, const RowJsonColumn *column, Datum value)
{
	char		digits[32];

	switch (column->kind)
	{
		case ROW_JSON_BOOL:
			return DatumGetBool(value) ? JENTRY_ISBOOL_TRUE : JENTRY_ISBOOL_FALSE;

		case ROW_JSON_INT2:
			return write_numeric(buf, int64_to_numeric(DatumGetInt16(value)));
		case ROW_JSON_INT4:
			return write_numeric(buf, int64_to_numeric(DatumGetInt32(value)));
		case ROW_JSON_INT8:
			return write_numeric(buf, int64_to_numeric(DatumGetInt64(value)));

		case ROW_JSON_NUMERIC:
			{
				Numeric		num = DatumGetNumeric(value);

				/* jsonb numbers cannot hold NaN or infinities */
				if (numeric_is_nan(num) || numeric_is_inf(num))
					return write_cstring(buf, row_json_column_text(column, value));
				return write_numeric(buf, num);
			}

		case ROW_JSON_FLOAT4:
			{
				float4		f = DatumGetFloat4(value);

				if (isnan(f))
					return write_cstring(buf, "NaN");
				if (isinf(f))
					return write_cstring(buf, f > 0 ? "Infinity" : "-Infinity");
				float_to_shortest_decimal_buf(f, digits);
				return write_float(buf, digits);
			}
		case ROW_JSON_FLOAT8:
			{
				float8		f = DatumGetFloat8(value);

				if (isnan(f))
					return write_cstring(buf, "NaN");
				if (isinf(f))
					return write_cstring(buf, f > 0 ? "Infinity" : "-Infinity");
				double_to_shortest_decimal_buf(f, digits);
				return write_float(buf, digits);
			}

		case ROW_JSON_MONEY:
			/* the amount, without lc_monetary's symbol and separators */
			return write_numeric(buf, DatumGetNumeric(DirectFunctionCall1(cash_numeric, value)));

		case ROW_JSON_JSONB:
			return write_jsonb(buf, DatumGetJsonbP(value));

		case ROW_JSON_JSON:
			return write_json(buf, DatumGetTextPP(value));

		case ROW_JSON_DATETIME:
			return write_cstring(buf, JsonEncodeDateTime(NULL, value, column->typid, NULL));

		case ROW_JSON_STRING:
			{
				text	   *t = DatumGetTextPP(value);

				return write_string(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
			}

		case ROW_JSON_TEXT:
			return write_cstring(buf, row_json_column_text(column, value));
	}
	elog(ERROR, "unexpected row_json kind %d", (int) column->kind);
	return 0;					/* keep compiler quiet */
}

/*
 * write_jsonb embeds a jsonb value: a container by copying its bytes (a
 * container's offsets are relative to itself, so it can be moved to any
 * 4-byte boundary), a number or boolean as such, a string or null as its
 * json text (see the header).
 */
static uint32
write_jsonb(StringInfo buf, Jsonb *jb)
{
	if (JB_ROOT_IS_SCALAR(jb))
	{
		JsonbValue	scalar;

		if (!JsonbExtractScalar(&jb->root, &scalar))
			elog(ERROR, "jsonb scalar container without a scalar");
		if (scalar.type == jbvNumeric)
			return write_numeric(buf, scalar.val.numeric);
		if (scalar.type == jbvBool)
			return scalar.val.boolean ? JENTRY_ISBOOL_TRUE : JENTRY_ISBOOL_FALSE;
		return write_cstring(buf, JsonbToCString(NULL, &jb->root, VARSIZE(jb)));
	}
	pad_to_int(buf);
	appendBinaryStringInfo(buf, (char *) &jb->root, VARSIZE(jb) - VARHDRSZ);
	return JENTRY_ISCONTAINER;
}

/*
 * write_json embeds a json value through jsonb when jsonb can hold it and
 * it is not a top-level string or null; otherwise it writes the json text,
 * unchanged, as a string.
 */
static uint32
write_json(StringInfo buf, text *json)
{
	char	   *str = VARDATA_ANY(json);
	int			len = VARSIZE_ANY_EXHDR(json);

	if (json_fits_jsonb(str, len))
	{
		Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															CStringGetDatum(text_to_cstring(json))));

		if (!JB_ROOT_IS_SCALAR(jb))
			return write_jsonb(buf, jb);
		else
		{
			JsonbValue	scalar;

			if (JsonbExtractScalar(&jb->root, &scalar) &&
				(scalar.type == jbvNumeric || scalar.type == jbvBool))
				return write_jsonb(buf, jb);
		}
	}
	return write_string(buf, str, len);
}

/*
 * json_fits_jsonb tells whether jsonb_in() would accept a json text, so that
 * it can be converted without an error to catch.  json_in has checked the
 * syntax already; what jsonb adds is the de-escaping of strings and the
 * numeric conversion of numbers (checked by numeric_can_hold), within
 * jsonb's size limits.  De-escaping fails on \u0000 and on unpaired
 * surrogates, which json accepts; the lexer reports those as errors rather
 * than throwing them.  In a database whose encoding is not UTF8 it also
 * converts escapes above 007F to that encoding, and throws when it cannot,
 * so such text is not given to it (json_has_high_escape).
 */
static bool
json_fits_jsonb(char *str, int len)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	bool		fits = true;

	if (len > JSON_EMBED_MAX_BYTES)
		return false;
	/* the lexer would throw converting these: see json_has_high_escape */
	if (GetDatabaseEncoding() != PG_UTF8 && json_has_high_escape(str, len))
		return false;
	lex = makeJsonLexContextCstringLen(str, len, GetDatabaseEncoding(), true);
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &fits;
	sem.scalar = json_fits_scalar;
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
		return false;
	return fits;
}

/*
 * json_has_high_escape tells whether a (valid) json text has a \u escape
 * above 007F.  Backslashes occur only inside strings in valid json, and
 * every one starts an escape, so a plain scan finds them all.
 */
static bool
json_has_high_escape(const char *str, int len)
{
	for (int i = 0; i < len; i++)
	{
		if (str[i] != '\\')
			continue;
		if (i + 5 < len && str[i + 1] == 'u')
		{
			unsigned int code = 0;

			for (int k = 2; k < 6; k++)
			{
				char		c = str[i + k];

				code <<= 4;
				if (c >= '0' && c <= '9')
					code += c - '0';
				else if (c >= 'a' && c <= 'f')
					code += c - 'a' + 10;
				else if (c >= 'A' && c <= 'F')
					code += c - 'A' + 10;
			}
			if (code > 0x7F)
				return true;
			i += 5;
		}
		else
			i++;				/* the escaped character */
	}
	return false;
}

static void
json_fits_scalar(void *state, char *token, JsonTokenType tokentype)
{
	if (tokentype == JSON_TOKEN_NUMBER && !numeric_can_hold(token))
		*(bool *) state = false;
}

/*
 * numeric_can_hold tells whether numeric_in() accepts a JSON number.
 * numeric holds up to 131072 digits before the decimal point and 16383
 * after it (numeric.c, NUMERIC_WEIGHT_MAX and NUMERIC_DSCALE_MAX); the
 * bounds here stay inside those, so a number near the limits may be kept as
 * text even though numeric could hold it, but never the other way round.
 */
static bool
numeric_can_hold(const char *number)
{
	const char *p = number;
	int64		intdigits = 0;
	int64		fracdigits = 0;
	int64		exponent = 0;
	bool		negative_exponent = false;

	if (*p == '-')
		p++;
	while (*p >= '0' && *p <= '9')
		intdigits++, p++;
	if (*p == '.')
	{
		p++;
		while (*p >= '0' && *p <= '9')
			fracdigits++, p++;
	}
	if (*p == 'e' || *p == 'E')
	{
		p++;
		if (*p == '+' || *p == '-')
			negative_exponent = (*p++ == '-');
		while (*p >= '0' && *p <= '9')
		{
			if (exponent < 100000000)
				exponent = exponent * 10 + (*p - '0');
			p++;
		}
	}
	if (negative_exponent)
		exponent = -exponent;

	return exponent > -1000000 && exponent < 1000000 &&
		intdigits + exponent <= 131000 &&
		fracdigits - exponent <= 16000;
}
