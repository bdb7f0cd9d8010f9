/*
 * log_writer.h
 *		Appending entries to connect_guard.trigger_log, in batches.
 */
#ifndef CONNECT_GUARD_LOG_WRITER_H
#define CONNECT_GUARD_LOG_WRITER_H

/* The trigger log's columns, in table order; checked against the catalog. */
typedef enum LogColumn
{
	LOG_ID,
	LOG_TXID,
	LOG_CREATED_AT,
	LOG_UPDATED_AT,
	LOG_PROCESSED_AT,
	LOG_PROCESSED_TX,
	LOG_STATE,
	LOG_ACTION,
	LOG_TABLE_SCHEMA,
	LOG_TABLE_NAME,
	LOG_RECORD_ID,
	LOG_SFID,
	LOG_OLD,
	LOG_VALUES,
	LOG_SF_RESULT,
	LOG_SF_MESSAGE,
	LOG_NCOLUMNS
} LogColumn;

extern void log_writer_init(void);
extern void log_writer_append(Datum *values, bool *nulls);
extern void log_writer_flush(void);

#endif							/* CONNECT_GUARD_LOG_WRITER_H */
