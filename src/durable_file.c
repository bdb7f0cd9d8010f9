/*
 * durable_file.c
 *		Replacing a small file atomically and durably.
 *
 * Write a temporary file beside it, fsync it, rename() it over the old
 * one, and fsync the directory: after a crash the path holds the old content
 * or the new, whole.  One fsync of the content, not three: durable_rename()
 * would fsync the file again before and after the rename, and a fence change
 * is made (on the old primary, on the follower, on the new primary) while a
 * changeover blocks writes.  Errors are ERRORs that say which file (what)
 * and what to do (hint); the old file is left in place.
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "common/file_perm.h"
#include "port.h"
#include "storage/fd.h"

#include "durable_file.h"

void
durable_file_replace(const char *path, const char *tmp, const char *data, size_t len,
					 const char *what, const char *hint)
{
	int			fd;

	fd = OpenTransientFilePerm(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create %s \"%s\": %m", what, tmp),
				 errhint("%s", hint)));
	errno = 0;
	if (write(fd, data, len) != (ssize_t) len)
	{
		if (errno == 0)
			errno = ENOSPC;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write %s \"%s\": %m", what, tmp),
				 errhint("%s", hint)));
	}
	if (pg_fsync(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync %s \"%s\": %m", what, tmp),
				 errhint("%s", hint)));
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close %s \"%s\": %m", what, tmp),
				 errhint("%s", hint)));
	if (rename(tmp, path) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not rename %s \"%s\" to \"%s\": %m", what, tmp, path),
				 errhint("%s", hint)));
	{
		char		dir[MAXPGPATH];

		strlcpy(dir, path, sizeof(dir));
		get_parent_directory(dir);
		fsync_fname(dir[0] != '\0' ? dir : ".", true);
	}
}
