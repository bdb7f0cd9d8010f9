/*
 * witness.h
 *		The rollback witness: a small file outside the data directory that
 *		records how far this database had come (see witness.c and
 *		extension/parts/75_rollback.sql).
 */
#ifndef CONNECT_GUARD_WITNESS_H
#define CONNECT_GUARD_WITNESS_H

extern void witness_init(void);

#endif							/* CONNECT_GUARD_WITNESS_H */
