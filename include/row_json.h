/*
 * row_json.h
 *		Conversion of the rows of a captured table to jsonb.
 *
 * The layout (one recipe per table) is built once and cached by capture.c;
 * the per-row functions write the jsonb binary format directly from it.
 */
#ifndef CONNECT_GUARD_ROW_JSON_H
#define CONNECT_GUARD_ROW_JSON_H

#include "access/tupdesc.h"
#include "fmgr.h"
#include "utils/jsonb.h"

/* How one column's value becomes a jsonb value. */
typedef enum RowJsonKind
{
	ROW_JSON_BOOL,				/* jsonb true/false */
	ROW_JSON_INT2,				/* jsonb number */
	ROW_JSON_INT4,
	ROW_JSON_INT8,
	ROW_JSON_NUMERIC,			/* number, or string for NaN/Infinity */
	ROW_JSON_FLOAT4,			/* shortest exact number, or string if not
								 * finite */
	ROW_JSON_FLOAT8,
	ROW_JSON_MONEY,				/* number, whatever lc_monetary says */
	ROW_JSON_JSONB,				/* embedded, or its text as a string (see
								 * row_json.c) */
	ROW_JSON_JSON,				/* the same, from the json text */
	ROW_JSON_DATETIME,			/* ISO 8601, independent of DateStyle */
	ROW_JSON_STRING,			/* text, varchar, char: their bytes, as a
								 * string */
	ROW_JSON_TEXT				/* the type's output function, as a string */
} RowJsonKind;

typedef struct RowJsonColumn
{
	AttrNumber	attnum;
	Oid			typid;
	bool		typbyval;
	int16		typlen;
	RowJsonKind kind;
	char	   *name;
	int			namelen;
	FmgrInfo	output;
} RowJsonColumn;

/*
 * Per-relation recipe.  columns are in jsonb key order (shorter names
 * first, then bytewise), so that objects are written without sorting.
 */
typedef struct RowJsonLayout
{
	int			ncolumns;
	RowJsonColumn *columns;
	/* the header and keys of a whole row's object, the same for every row */
	char	   *row_keys;
	int			row_keys_len;
	uint32		row_keys_totallen;
} RowJsonLayout;

/* The settings row_json_fix_output() pins, to be put back after. */
typedef struct RowJsonOutputSettings
{
	int			date_style;
	int			interval_style;
	int			extra_float_digits;
} RowJsonOutputSettings;

extern void row_json_build_layout(RowJsonLayout *layout, TupleDesc desc,
								  MemoryContext cxt);
extern Jsonb *row_json_from_row(const RowJsonLayout *layout,
								const Datum *values, const bool *nulls);
extern Jsonb *row_json_changed_columns(const RowJsonLayout *layout,
									   const Datum *oldvalues, const bool *oldnulls,
									   const Datum *newvalues, const bool *newnulls);
extern char *row_json_column_text(const RowJsonColumn *column, Datum value);
extern Datum row_json_column_as_text(const RowJsonColumn *column, Datum value);
extern void row_json_fix_output(RowJsonOutputSettings *saved);
extern void row_json_restore_output(const RowJsonOutputSettings *saved);

#endif							/* CONNECT_GUARD_ROW_JSON_H */
