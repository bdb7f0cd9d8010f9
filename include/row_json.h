/*
 * row_json.h
 *		Conversion of heap tuples of a captured table to jsonb.
 */
#ifndef CONNECT_GUARD_ROW_JSON_H
#define CONNECT_GUARD_ROW_JSON_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "utils/jsonb.h"

/* How one column's value becomes a jsonb value. */
typedef enum RowJsonKind
{
	ROW_JSON_BOOL,				/* jsonb true/false */
	ROW_JSON_INTEGER,			/* int2, int4, int8: jsonb number */
	ROW_JSON_NUMERIC,			/* numeric: number, or string for NaN/Infinity */
	ROW_JSON_FLOAT,				/* float4, float8: number, or string if not finite */
	ROW_JSON_JSONB,				/* embedded as is */
	ROW_JSON_JSON,				/* parsed and embedded */
	ROW_JSON_DATETIME,			/* ISO 8601, independent of DateStyle */
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
	FmgrInfo	output;			/* valid only for ROW_JSON_TEXT and _FLOAT */
} RowJsonColumn;

/* Per-relation recipe, built once and cached by capture.c. */
typedef struct RowJsonLayout
{
	int			ncolumns;
	RowJsonColumn *columns;
} RowJsonLayout;

extern void row_json_build_layout(RowJsonLayout *layout, TupleDesc desc,
								  MemoryContext cxt);
extern Jsonb *row_json_from_row(const RowJsonLayout *layout,
								const Datum *values, const bool *nulls);
extern Jsonb *row_json_changed_columns(const RowJsonLayout *layout,
									   const Datum *oldvalues, const bool *oldnulls,
									   const Datum *newvalues, const bool *newnulls);
extern char *row_json_column_text(const RowJsonColumn *column, Datum value);

#endif							/* CONNECT_GUARD_ROW_JSON_H */
