/*
 * scrub.h
 *		Takes every form of the sync service's secrets out of text that
 *		connect_guard stores or logs (the rule is at the top of scrub.c).
 *
 * The background worker registers the secrets it holds for the time it
 * sends requests and records their outcomes, and forgets them (wiping the
 * copies) afterwards.  Outside that window nothing is registered, and
 * scrub_registered() and the SQL-level scrubbers return their input.
 */
#ifndef CONNECT_GUARD_SCRUB_H
#define CONNECT_GUARD_SCRUB_H

/* what a scrubbed stretch of text becomes, as in the views' redacted options */
#define SCRUB_MASK			"********"

/*
 * scrub_text returns a palloc'd copy of text in which every stretch that
 * spells (a piece of) one of the nsecrets secrets, in any form the rule
 * covers, is replaced by SCRUB_MASK.  NULL gives NULL.
 */
extern char *scrub_text(const char *text, const char *const *secrets, int nsecrets);

/* scrub_register keeps a copy of secret (NULL and "" are ignored) until scrub_forget */
extern void scrub_register(const char *secret);
extern void scrub_forget(void);
extern bool scrub_active(void);

/* scrub_registered is scrub_text with the registered secrets */
extern char *scrub_registered(const char *text);

#endif							/* CONNECT_GUARD_SCRUB_H */
