/*
 * row_json.c
 *		Turn the rows of a captured table into jsonb for the trigger log.
 *
 * The capture trigger fires once per changed row, so the per-row cost
 * matters more than anything else in the extension.  Everything that
 * depends only on the table's layout (which function prints a column, how
 * its value maps to jsonb) is decided once in row_json_build_layout and
 * cached by capture.c; the per-row functions below only walk that recipe.
 *
 * Values keep their meaning independent of session settings where jsonb
 * allows it: numbers and booleans become jsonb numbers and booleans, dates
 * and times use ISO 8601 whatever DateStyle says, json and jsonb columns are
 * embedded.  Every other type (arrays, composites, intervals, bytea ...) is
 * written as its text form, which the type's input function reads back.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"

#include "row_json.h"

static RowJsonKind row_json_kind_for_type(Oid typid);
static void row_json_push_value(JsonbParseState **state,
								const RowJsonColumn *column,
								Datum value, bool isnull);

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
		case INT4OID:
		case INT8OID:
			return ROW_JSON_INTEGER;
		case NUMERICOID:
			return ROW_JSON_NUMERIC;
		case FLOAT4OID:
		case FLOAT8OID:
			return ROW_JSON_FLOAT;
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
		default:
			return ROW_JSON_TEXT;
	}
}

/*
 * row_json_build_layout fills layout with one entry per live column of desc
 * (dropped columns are skipped), allocated in cxt so that the caller can
 * cache it for the life of the relation's cache entry.
 */
void
row_json_build_layout(RowJsonLayout *layout, TupleDesc desc, MemoryContext cxt)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	int			n = 0;

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
	MemoryContextSwitchTo(oldcxt);
}

/* row_json_column_text prints one non-null value with its type's output. */
char *
row_json_column_text(const RowJsonColumn *column, Datum value)
{
	return OutputFunctionCall((FmgrInfo *) &column->output, value);
}

static void
push_string(JsonbParseState **state, char *str)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = str;
	v.val.string.len = strlen(str);
	pushJsonbValue(state, WJB_VALUE, &v);
}

/*
 * row_json_push_value appends one column's value (the key has been pushed
 * already) to the object under construction.
 */
static void
row_json_push_value(JsonbParseState **state, const RowJsonColumn *column,
					Datum value, bool isnull)
{
	JsonbValue	v;

	if (isnull)
	{
		v.type = jbvNull;
		pushJsonbValue(state, WJB_VALUE, &v);
		return;
	}

	switch (column->kind)
	{
		case ROW_JSON_BOOL:
			v.type = jbvBool;
			v.val.boolean = DatumGetBool(value);
			pushJsonbValue(state, WJB_VALUE, &v);
			return;

		case ROW_JSON_INTEGER:
			{
				int64		i;

				if (column->typlen == 2)
					i = DatumGetInt16(value);
				else if (column->typlen == 4)
					i = DatumGetInt32(value);
				else
					i = DatumGetInt64(value);
				v.type = jbvNumeric;
				v.val.numeric = int64_to_numeric(i);
				pushJsonbValue(state, WJB_VALUE, &v);
				return;
			}

		case ROW_JSON_NUMERIC:
			{
				Numeric		num = DatumGetNumeric(value);

				if (numeric_is_nan(num) || numeric_is_inf(num))
				{
					push_string(state, row_json_column_text(column, value));
					return;
				}
				v.type = jbvNumeric;
				v.val.numeric = num;
				pushJsonbValue(state, WJB_VALUE, &v);
				return;
			}

		case ROW_JSON_FLOAT:
			{
				char	   *str = row_json_column_text(column, value);

				/* jsonb numbers cannot hold NaN or infinities */
				if (strcmp(str, "NaN") == 0 || strcmp(str, "Infinity") == 0 ||
					strcmp(str, "-Infinity") == 0)
				{
					push_string(state, str);
					return;
				}
				v.type = jbvNumeric;
				v.val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in,
																	CStringGetDatum(str),
																	ObjectIdGetDatum(InvalidOid),
																	Int32GetDatum(-1)));
				pushJsonbValue(state, WJB_VALUE, &v);
				return;
			}

		case ROW_JSON_JSON:
			value = DirectFunctionCall1(jsonb_in,
										CStringGetDatum(TextDatumGetCString(value)));
			/* FALLTHROUGH */
		case ROW_JSON_JSONB:
			{
				Jsonb	   *jb = DatumGetJsonbP(value);

				v.type = jbvBinary;
				v.val.binary.data = &jb->root;
				v.val.binary.len = VARSIZE(jb) - VARHDRSZ;
				pushJsonbValue(state, WJB_VALUE, &v);
				return;
			}

		case ROW_JSON_DATETIME:
			push_string(state, JsonEncodeDateTime(NULL, value, column->typid, NULL));
			return;

		case ROW_JSON_TEXT:
			push_string(state, row_json_column_text(column, value));
			return;
	}
}

static void
push_key(JsonbParseState **state, const RowJsonColumn *column)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = column->name;
	k.val.string.len = column->namelen;
	pushJsonbValue(state, WJB_KEY, &k);
}

/*
 * row_json_from_row returns every live column of a row, deformed by the
 * caller into values/nulls (indexed by attnum - 1), as one object.
 */
Jsonb *
row_json_from_row(const RowJsonLayout *layout, const Datum *values,
				  const bool *nulls)
{
	JsonbParseState *state = NULL;
	JsonbValue *result;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < layout->ncolumns; i++)
	{
		const RowJsonColumn *column = &layout->columns[i];
		int			att = column->attnum - 1;

		push_key(&state, column);
		row_json_push_value(&state, column, values[att], nulls[att]);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
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
	JsonbParseState *state = NULL;
	JsonbValue *result;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < layout->ncolumns; i++)
	{
		const RowJsonColumn *column = &layout->columns[i];
		int			att = column->attnum - 1;
		bool		oldnull = oldnulls[att];
		bool		newnull = newnulls[att];
		Datum		oldvalue = oldvalues[att];
		Datum		newvalue = newvalues[att];

		if (oldnull && newnull)
			continue;
		if (!oldnull && !newnull &&
			datumIsEqual(oldvalue, newvalue, column->typbyval, column->typlen))
			continue;
		push_key(&state, column);
		row_json_push_value(&state, column, newvalue, newnull);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}
