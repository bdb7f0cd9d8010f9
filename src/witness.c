/*
 * witness.c
 *		The rollback witness file, and the facts about WAL and timelines that
 *		the rollback checks compare it with.
 *
 * A restore brings back the data directory as it was, and with it every
 * record connect_guard keeps inside the database: the trigger log, the
 * high-water marks, the event log.  So the proof of how far the database
 * had come must live where a restore does not reach: a file in
 * connect_guard.witness_directory, one per cluster lineage (system
 * identifier) and database.  Followers and a restored copy share the system
 * identifier, and so read the witness their predecessor wrote when they
 * share the directory with it; that is the point.
 *
 * The file is replaced atomically (temporary file, fsync, durable rename)
 * and carries a CRC of its body, so a torn or edited file is told apart from
 * a valid one and is never trusted.  What goes in it and what is compared is
 * decided in SQL (75_rollback.sql); this file only reads and writes bytes.
 *
 * Format: one header line, then the JSON body:
 *		connect_guard witness 1 crc32c=0123abcd bytes=412
 *		{"lsn": "0/3000148", ...}
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/timeline.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "common/file_perm.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/pg_lsn.h"

#include "durable_file.h"
#include "witness.h"

PG_FUNCTION_INFO_V1(connect_guard_witness_path);
PG_FUNCTION_INFO_V1(connect_guard_witness_read);
PG_FUNCTION_INFO_V1(connect_guard_witness_write);
PG_FUNCTION_INFO_V1(connect_guard_witness_flush_lsn);
PG_FUNCTION_INFO_V1(connect_guard_timeline_switch_lsn);

#define WITNESS_FORMAT		1
#define WITNESS_MAX_BYTES	(1024 * 1024)

/* GUC variables */
static char *witness_directory = NULL;
static bool fence_on_rollback = true;

void
witness_init(void)
{
	DefineCustomStringVariable("connect_guard.witness_directory",
							   "Directory of the rollback witness files, outside the data directory.",
							   "A relative path is taken from the data directory; the default \"..\" is its "
							   "parent.  Point it at storage that outlives the data directory and that the "
							   "database's followers, restores and upgrade targets can read.  Empty turns "
							   "rollback detection by witness off.",
							   &witness_directory,
							   "..",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("connect_guard.fence_on_rollback",
							 "Whether a detected rollback keeps the mapped tables fenced until the reloads "
							 "are acknowledged.",
							 "Writes made while the sync service reloads a table would be overwritten by the reload.",
							 &fence_on_rollback,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
}

/*
 * witness_dir returns the witness directory as an absolute, canonical path,
 * or NULL when witnessing is off; one inside the data directory is refused,
 * since a restore would rewind it with the data.
 */
static char *
witness_dir(void)
{
	char	   *dir;
	size_t		datalen;

	if (witness_directory == NULL || witness_directory[0] == '\0')
		return NULL;
	if (is_absolute_path(witness_directory))
		dir = pstrdup(witness_directory);
	else
		dir = psprintf("%s/%s", DataDir, witness_directory);
	canonicalize_path(dir);

	datalen = strlen(DataDir);
	if (strncmp(dir, DataDir, datalen) == 0 && (dir[datalen] == '\0' || dir[datalen] == '/'))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("connect_guard.witness_directory \"%s\" is inside the data directory", dir),
				 errdetail("A restore of the data directory would rewind the witness along with the data."),
				 errhint("Set connect_guard.witness_directory to a directory outside \"%s\" and reload.",
						 DataDir)));
	return dir;
}

/* file_safe_name keeps letters, digits, '_' and '-', and writes the rest as %XX */
static char *
file_safe_name(const char *name)
{
	StringInfoData out;

	initStringInfo(&out);
	for (const unsigned char *p = (const unsigned char *) name; *p; p++)
	{
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			(*p >= '0' && *p <= '9') || *p == '_' || *p == '-')
			appendStringInfoChar(&out, (char) *p);
		else
			appendStringInfo(&out, "%%%02X", *p);
	}
	return out.data;
}

/*
 * connect_guard.witness_path(system_identifier bigint) returns the witness
 * file of this database in the lineage of that system identifier (NULL:
 * this cluster's), or NULL when witnessing is off.
 */
Datum
connect_guard_witness_path(PG_FUNCTION_ARGS)
{
	uint64		sysid = PG_ARGISNULL(0) ? GetSystemIdentifier() : (uint64) PG_GETARG_INT64(0);
	char	   *dir = witness_dir();
	char	   *dbname;

	if (dir == NULL)
		PG_RETURN_NULL();
	dbname = get_database_name(MyDatabaseId);
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("%s/connect_guard-" UINT64_FORMAT "-%s.witness",
											  dir, sysid, file_safe_name(dbname))));
}

/*
 * connect_guard.witness_read(path) returns (status, content, detail):
 * status is 'ok' (content is the body), 'missing', 'unreadable' or
 * 'corrupt'; detail says what was wrong, for the DBA.  Never raises an
 * error for what it finds in the file.
 */
Datum
connect_guard_witness_read(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, true, true};
	const char *status = "ok";
	char	   *detail = NULL;
	int			fd;
	struct stat st;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "connect_guard.witness_read must return a record");
	tupdesc = BlessTupleDesc(tupdesc);

	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		status = errno == ENOENT ? "missing" : "unreadable";
		detail = psprintf("could not open \"%s\": %m", path);
	}
	else if (fstat(fd, &st) != 0 || st.st_size > WITNESS_MAX_BYTES)
	{
		status = "corrupt";
		detail = psprintf("\"%s\" is larger than %d bytes, or could not be sized", path, WITNESS_MAX_BYTES);
	}
	else
	{
		char	   *buf = palloc(st.st_size + 1);
		ssize_t		got = read(fd, buf, st.st_size);
		int			version = 0;
		unsigned int filecrc = 0;
		int			bytes = -1;
		int			header_len = 0;
		pg_crc32c	crc;

		if (got != st.st_size)
		{
			status = "unreadable";
			detail = psprintf("could not read \"%s\": %m", path);
		}
		else
		{
			buf[got] = '\0';
			if (sscanf(buf, "connect_guard witness %d crc32c=%8x bytes=%d\n%n",
					   &version, &filecrc, &bytes, &header_len) != 3 || header_len == 0)
				detail = psprintf("\"%s\" does not start with a connect_guard witness header", path);
			else if (version != WITNESS_FORMAT)
				detail = psprintf("\"%s\" is in witness format %d; this version reads format %d",
								  path, version, WITNESS_FORMAT);
			else if (bytes != got - header_len)
				detail = psprintf("\"%s\" has %d bytes after its header, which promises %d: it was cut short or edited",
								  path, (int) (got - header_len), bytes);
			else
			{
				INIT_CRC32C(crc);
				COMP_CRC32C(crc, buf + header_len, bytes);
				FIN_CRC32C(crc);
				if (crc != filecrc)
					detail = psprintf("\"%s\" fails its checksum (%08x, header says %08x): it was damaged or edited",
									  path, crc, filecrc);
			}
			if (detail != NULL)
				status = "corrupt";
			else
			{
				values[1] = DirectFunctionCall1(jsonb_in, CStringGetDatum(buf + header_len));
				nulls[1] = false;
			}
		}
	}
	if (fd >= 0)
		CloseTransientFile(fd);

	values[0] = CStringGetTextDatum(status);
	if (detail != NULL)
	{
		values[2] = CStringGetTextDatum(detail);
		nulls[2] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * connect_guard.witness_write(path, content) replaces the witness file
 * atomically: a crash leaves the old file or the new one, never a mix.
 */
Datum
connect_guard_witness_write(PG_FUNCTION_ARGS)
{
	char	   *path = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Jsonb	   *content = PG_GETARG_JSONB_P(1);
	char	   *body = JsonbToCString(NULL, &content->root, VARSIZE(content));
	size_t		len = strlen(body);
	char	   *tmp = psprintf("%s.tmp", path);
	char	   *dir = pstrdup(path);
	StringInfoData file;
	pg_crc32c	crc;

	get_parent_directory(dir);
	if (dir[0] != '\0' && pg_mkdir_p(dir, pg_dir_create_mode) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create witness directory \"%s\": %m", dir),
				 errhint("Create it, owned by the server's operating-system user, or set "
						 "connect_guard.witness_directory to one that exists.")));

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, body, len);
	FIN_CRC32C(crc);
	initStringInfo(&file);
	appendStringInfo(&file, "connect_guard witness %d crc32c=%08x bytes=%zu\n", WITNESS_FORMAT, crc, len);
	appendBinaryStringInfo(&file, body, len);
	durable_file_replace(path, tmp, file.data, file.len, "rollback witness",
						 "The previous witness is left in place; connect_guard.witness_directory must be "
						 "writable by the server's operating-system user, with space to spare.");
	PG_RETURN_VOID();
}

/*
 * connect_guard.witness_flush_lsn() flushes the WAL written so far and
 * returns the flushed position.  Whatever the caller read before is then
 * durable at or below that LSN, even under synchronous_commit = off, so
 * that a crash never brings the database back below what the witness
 * claims.
 */
Datum
connect_guard_witness_flush_lsn(PG_FUNCTION_ARGS)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("a server in recovery keeps no rollback witness"),
				 errhint("The witness is written and checked by the primary; a promoted follower checks it at its first start.")));
	XLogFlush(GetXLogInsertEndRecPtr());
	PG_RETURN_LSN(GetFlushRecPtr(NULL));
}

/*
 * connect_guard.timeline_switch_lsn(ancestor) returns the LSN at which this
 * server's history left timeline ancestor, from the timeline history files;
 * NULL when ancestor is the current timeline or not in the history at all
 * (the current timeline does not descend from it).
 */
Datum
connect_guard_timeline_switch_lsn(PG_FUNCTION_ARGS)
{
	TimeLineID	ancestor = (TimeLineID) PG_GETARG_INT32(0);
	TimeLineID	current;
	List	   *history;
	ListCell   *lc;

	if (RecoveryInProgress())
		PG_RETURN_NULL();
	current = GetWALInsertionTimeLine();
	if (ancestor == current)
		PG_RETURN_NULL();
	history = readTimeLineHistory(current);
	foreach(lc, history)
	{
		TimeLineHistoryEntry *entry = (TimeLineHistoryEntry *) lfirst(lc);

		if (entry->tli == ancestor)
			PG_RETURN_LSN(entry->end);
	}
	PG_RETURN_NULL();
}
