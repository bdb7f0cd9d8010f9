/*
 * catalog_names.h
 *		Names of the extension's SQL objects that the C modules reach.
 *
 * The install script (the parts in extension/VERSION/) creates them; a C module
 * that queries or recognises them takes the name from here, so that a
 * rename is one change on each side.  Constants only: no module state.
 */
#ifndef CONNECT_GUARD_CATALOG_NAMES_H
#define CONNECT_GUARD_CATALOG_NAMES_H

/* Name of the private schema that holds the catalog and the trigger log. */
#define CONNECT_GUARD_SCHEMA "connect_guard"

#endif							/* CONNECT_GUARD_CATALOG_NAMES_H */
