/*
 * connect_guard.h
 *		The settings connect_guard.c defines for modules that have no _init
 *		of their own to define them in.
 *
 * connect_guard.c is the module entry point: _PG_init defines these
 * settings, then calls every module's *_init (declared in that module's
 * own header), so that it stays the one place that knows the order of
 * initialisation.  Names shared by every module (the private schema) are
 * in catalog_names.h, not here: a module that only needs a name does not
 * depend on the entry point.
 */
#ifndef CONNECT_GUARD_H
#define CONNECT_GUARD_H

/* connect_guard.capture: off lets the sync service's own writes skip capture. */
extern bool connect_guard_capture_enabled;

#endif							/* CONNECT_GUARD_H */
