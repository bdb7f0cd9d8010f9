/*
 * connect_guard.h
 *		Settings and entry points shared by the modules of connect_guard.
 *
 * Every module registers its own GUCs and callbacks from an *_init function
 * that _PG_init calls, so that connect_guard.c stays the one place that
 * knows the order of initialisation.
 */
#ifndef CONNECT_GUARD_H
#define CONNECT_GUARD_H

/* Name of the private schema that holds the catalog and the trigger log. */
#define CONNECT_GUARD_SCHEMA "connect_guard"

/* connect_guard.capture: off lets the sync service's own writes skip capture. */
extern bool connect_guard_capture_enabled;

extern void capture_init(void);

#endif							/* CONNECT_GUARD_H */
