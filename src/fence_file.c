/*
 * fence_file.c
 *		Saving and loading the write fence, so that it survives a restart
 *		and a crash.
 *
 * The file is replaced atomically (write a temporary file, fsync, durable
 * rename) every time a fence is raised or lowered, before the SQL call
 * returns: a fence the DBA was told is up is on disk.  It is read once, by
 * the postmaster, when shared memory is created, so that no backend can
 * write before the fence is back.  It lives in the data directory, so a
 * base backup (a new follower) inherits the fences of its primary, which is
 * what a changeover wants: the new primary comes up fenced until the plan
 * lifts it.  A file that fails its checks is reported and ignored.
 *
 * The file holds the changes in doubt too (fence.h: FENCE_CHANGE_*): at
 * load they become orphans, in force on the side that fences more, until
 * a backend can read the commit log and settle them
 * (fence_resolve_orphans).
 *
 * Caller holds the fence lock.
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"

#include "durable_file.h"
#include "fence.h"

#define FENCE_FILE		"connect_guard.fences"
#define FENCE_FILE_TMP	"connect_guard.fences.tmp"
#define FENCE_FILE_MAGIC	0x43474632	/* "CGF2": with the changes in doubt */

typedef struct FenceFileHeader
{
	uint32		magic;
	int32		next_fence_id;
	int32		nfences;
	int32		nrels;
} FenceFileHeader;

/*
 * fence_file_save writes the used fence slots and the fenced relations.
 */
void
fence_file_save(FenceShared *state)
{
	FenceFileHeader header;
	StringInfoData buf;
	pg_crc32c	crc;

	header.magic = FENCE_FILE_MAGIC;
	header.next_fence_id = state->next_fence_id;
	header.nfences = 0;
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
		if (state->fences[i].fence_id != 0)
			header.nfences++;
	header.nrels = state->nrels;

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, (const char *) &header, sizeof(header));
	for (int i = 0; i < FENCE_MAX_FENCES; i++)
		if (state->fences[i].fence_id != 0)
			appendBinaryStringInfo(&buf, (const char *) &state->fences[i], sizeof(FenceEntry));
	if (state->nrels > 0)
		appendBinaryStringInfo(&buf, (const char *) state->rels, sizeof(FencedRelation) * state->nrels);
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, buf.data, buf.len);
	FIN_CRC32C(crc);
	appendBinaryStringInfo(&buf, (const char *) &crc, sizeof(crc));

	durable_file_replace(FENCE_FILE, FENCE_FILE_TMP, buf.data, buf.len, "fence state file",
						 "The fence was not saved; check the space and storage of the data directory.");
	pfree(buf.data);
}

static bool
read_exact(int fd, void *data, size_t len)
{
	return read(fd, data, len) == (ssize_t) len;
}

/*
 * fence_file_load fills a freshly initialised state from the file, if there
 * is one.  Runs in the postmaster: reports with LOG, never ERROR.
 */
void
fence_file_load(FenceShared *state)
{
	FenceFileHeader header;
	pg_crc32c	crc;
	pg_crc32c	filecrc;
	int			fd;
	bool		ok;
	uint32		nactive = 0;
	uint32		norphans = 0;

	fd = OpenTransientFile(FENCE_FILE, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not open fence state file \"%s\": %m", FENCE_FILE)));
		return;
	}

	INIT_CRC32C(crc);
	ok = read_exact(fd, &header, sizeof(header)) &&
		header.magic == FENCE_FILE_MAGIC &&
		header.nfences >= 0 && header.nfences <= FENCE_MAX_FENCES &&
		header.nrels >= 0 && header.nrels <= fence_max_tables;
	if (ok)
	{
		COMP_CRC32C(crc, &header, sizeof(header));
		for (int i = 0; ok && i < header.nfences; i++)
		{
			ok = read_exact(fd, &state->fences[i], sizeof(FenceEntry));
			COMP_CRC32C(crc, &state->fences[i], sizeof(FenceEntry));
		}
		if (ok && header.nrels > 0)
		{
			ok = read_exact(fd, state->rels, sizeof(FencedRelation) * header.nrels);
			COMP_CRC32C(crc, state->rels, sizeof(FencedRelation) * header.nrels);
		}
		FIN_CRC32C(crc);
		ok = ok && read_exact(fd, &filecrc, sizeof(filecrc)) && EQ_CRC32C(crc, filecrc);
	}
	CloseTransientFile(fd);

	if (!ok)
	{
		memset(state->fences, 0, sizeof(state->fences));
		ereport(LOG,
				(errmsg("ignoring corrupt fence state file \"%s\"", FENCE_FILE),
				 errhint("Fences raised before the restart are not in force; check connect_fences and raise them again.")));
		return;
	}

	state->next_fence_id = header.next_fence_id;
	state->nrels = header.nrels;
	for (int i = 0; i < header.nfences; i++)
	{
		FenceEntry *entry = &state->fences[i];

		entry->orphan = entry->change != 0;
		if (entry->orphan)
			norphans++;
		if (fence_entry_in_force(entry))
			nactive++;
	}
	pg_atomic_write_u32(&state->nactive, nactive);
	pg_atomic_write_u32(&state->norphans, norphans);
	if (header.nfences > 0)
		ereport(LOG,
				(errmsg("connect_guard: %d write fence(s) restored from \"%s\", %d with a change in doubt",
						header.nfences, FENCE_FILE, norphans)));
}
