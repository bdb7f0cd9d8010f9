# connect_guard: PGXS build.  The version lives in connect_guard.control only.
EXTENSION    = connect_guard
EXTVERSION   = $(shell sed -n "s/^default_version *= *'\([^']*\)'/\1/p" $(EXTENSION).control)

MODULE_big   = connect_guard
OBJS         = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))

# The install script of the current version is assembled from one file per
# concern in extension/$(EXTVERSION)/; upgrade scripts (x--y--z.sql) are
# written by hand in extension/ and never change once released.
DATA_built   = $(EXTENSION)--$(EXTVERSION).sql
DATA         = $(sort $(wildcard extension/$(EXTENSION)--*--*.sql))
INSTALL_PARTS = $(sort $(wildcard extension/$(EXTVERSION)/*.sql))

# CONNECT_GUARD_VERSION: the control file's default_version, for the C code
# (the HTTP user agent), so that the version is written in one place.
PG_CPPFLAGS  = -I$(srcdir)/include -I$(libpq_srcdir) -DCONNECT_GUARD_VERSION=\"$(EXTVERSION)\"
PG_CFLAGS    = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK_INTERNAL = $(libpq)
SHLIB_LINK   = -lcurl

# pg_regress: one script per feature, in sql/ with expected/ beside it.
REGRESS      = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --outputdir=$(CURDIR)/results-regress

# Isolation specs for the races (test/isolation/specs, expected output beside).
ISOLATION    = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=$(CURDIR)/results-isolation

# TAP tests on PostgreSQL::Test::Cluster.
TAP_TESTS    = 1
PROVE_TESTS  = $(sort $(wildcard test/t/*.pl))

EXTRA_CLEAN  = results-regress results-isolation tmp_check

PG_CONFIG   ?= pg_config
PGXS        := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The TAP tests' shared modules (test/perl/ConnectGuard/).  Added after the
# include: Makefile.global empties PROVE_FLAGS, which is left to the user
# (e.g. PROVE_FLAGS=--verbose).
PG_PROVE_FLAGS += -I $(srcdir)/test/perl

$(OBJS): $(wildcard include/*.h) $(EXTENSION).control

$(EXTENSION)--$(EXTVERSION).sql: extension/$(EXTVERSION)/header.txt $(INSTALL_PARTS) $(EXTENSION).control
	cat extension/$(EXTVERSION)/header.txt $(INSTALL_PARTS) > $@

.PHONY: version
version:
	@echo $(EXTVERSION)
