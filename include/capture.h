/*
 * capture.h
 *		The capture trigger: appends the writes to mapped tables to the
 *		trigger log.
 */
#ifndef CONNECT_GUARD_CAPTURE_H
#define CONNECT_GUARD_CAPTURE_H

/* Registers the relcache invalidation callback and the constant texts. */
extern void capture_init(void);

#endif							/* CONNECT_GUARD_CAPTURE_H */
