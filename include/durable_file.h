/*
 * durable_file.h
 *		Replacing a small file so that a crash leaves the old one or the new
 *		one, never a mix (the fence file, the rollback witness).
 */
#ifndef CONNECT_GUARD_DURABLE_FILE_H
#define CONNECT_GUARD_DURABLE_FILE_H

extern void durable_file_replace(const char *path, const char *tmp, const char *data, size_t len,
								 const char *what, const char *hint);

#endif							/* CONNECT_GUARD_DURABLE_FILE_H */
