#!/usr/bin/env bash
# package.sh: the Debian package and the PGXN metadata, built and tested.
#   bash scripts/package.sh
# 1. META.json is valid (PGXN Meta Spec 1.0.0) and its version, like
#    debian/changelog's, is the one of connect_guard.control; LICENSE is
#    the licence it names, with debian/copyright's text and notice.
# 2. postgresql-15-connect-guard is built from a copy of the tree with
#    dpkg-buildpackage (pg_buildext; the build runs the pg_regress and
#    isolation suites against the files in debian/), lintian finds
#    nothing to say, and it carries the licence as debian/copyright.
# 3. autopkgtest installs the .deb into /usr with apt and runs
#    debian/tests/installcheck (the same suites, against the installed
#    files, in a pg_virtualenv cluster); the files are dpkg's and intact.
# 4. The package is purged again, leaving nothing behind.
# It installs into /usr: run it on a machine whose PostgreSQL in /usr is
# yours to use (CI, a developer's machine), not next to someone else's.
source "$(dirname "$0")/lib.sh"

pkg=postgresql-15-connect-guard
install_packages postgresql-15 postgresql-server-dev-all debhelper dpkg-dev libcurl4-openssl-dev libpq-dev \
                 make gcc lintian autopkgtest

log "PGXN META.json"
/usr/bin/python3 "$CG_ROOT/scripts/check_meta.py" "$CG_ROOT/META.json"

version=$(make -s -C "$CG_ROOT" version)
deb_version=$(dpkg-parsechangelog -l "$CG_ROOT/debian/changelog" -S Version)
[ "${deb_version%-*}" = "$version" ] ||
    die "debian/changelog is at $deb_version, connect_guard.control at $version: add a changelog entry"

work=$(scratch_dir package)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
# pg_virtualenv, autopkgtest and their tools make their files here: a TMPDIR
# of the caller's might not be writable by the account the suites run as
export TMPDIR=$work
log "copying the tree to $work/src"
as_run_user mkdir "$work/src"
tar -C "$CG_ROOT" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
    --exclude=results-regress --exclude=results-isolation --exclude=tmp_check -cf - . |
    as_run_user tar -C "$work/src" -xf -

log "dpkg-buildpackage -us -uc -b"
started=$SECONDS
(cd "$work/src" && dpkg-checkbuilddeps &&
    as_run_user dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) ||
    { tail -n 80 "$work/build.log"; die "the package did not build (log: $work/build.log)"; }
grep -E '^(test |     |=|ok |not ok| All)' "$work/build.log" >&2 || true
deb=$(ls "$work"/${pkg}_"$deb_version"_*.deb)
echo "built $(basename "$deb") in $((SECONDS - started)) s" >&2

log "lintian"
# a package not uploaded to Debian closes no ITP bug
as_run_user lintian --fail-on error,warning --suppress-tags initial-upload-closes-no-bugs "$deb" "$work"/*.changes

log "the licence in the package"
# Debian carries the licence as /usr/share/doc/PACKAGE/copyright: debian/copyright,
# whose text and notice scripts/check_meta.py checks against LICENSE.  LICENSE
# itself is not installed (a second copy is lintian's extra-license-file).
dpkg-deb --fsys-tarfile "$deb" | tar -xOf - "./usr/share/doc/$pkg/copyright" | cmp -s - "$CG_ROOT/debian/copyright" ||
    die "the package's /usr/share/doc/$pkg/copyright is not debian/copyright"
if dpkg-deb -c "$deb" | grep -E '/(LICENSE|COPYING)[^/]*$'; then
    die "the package installs a licence file of its own: the licence belongs in debian/copyright"
fi

# Installing, testing and purging in /usr is one step at a time on a machine.
exec 9>/var/lock/connect_guard-package.lock
flock 9

# A `make install` into /usr (scripts/test.sh's, with the default PG_BIN) is
# put back after the purge, as it was.
installed=(/usr/lib/postgresql/15/lib/connect_guard.so /usr/lib/postgresql/15/lib/bitcode/connect_guard*
           /usr/share/postgresql/15/extension/connect_guard*)
before=()
for f in "${installed[@]}"; do [ -e "$f" ] && before+=("$f"); done
if [ ${#before[@]} -gt 0 ] && ! dpkg-query -S "${before[0]}" >/dev/null 2>&1; then
    tar -cf "$work/usr-before.tar" -P "${before[@]}"
fi

log "autopkgtest: install $(basename "$deb") and run debian/tests against it"
started=$SECONDS
as_root autopkgtest --user="$RUN_USER" --output-dir "$work/autopkgtest" "$deb" "$work/src/" -- null \
    >"$work/autopkgtest.log" 2>&1 ||
    { tail -n 120 "$work/autopkgtest.log"; die "autopkgtest failed (log: $work/autopkgtest.log)"; }
grep -q '^installcheck  *PASS' "$work/autopkgtest/summary" || die "autopkgtest: $(cat "$work/autopkgtest/summary")"
echo "autopkgtest: $(cat "$work/autopkgtest/summary") in $((SECONDS - started)) s" >&2

log "the installed files"
[ "$(dpkg-query -W -f '${Status} ${Version}' "$pkg")" = "install ok installed $deb_version" ] ||
    die "$pkg $deb_version is not installed"
# the install script of this version, and the frozen ones of the releases
# before it (extension/connect_guard--*.sql) that ALTER EXTENSION UPDATE needs
frozen=()
for f in "$CG_ROOT"/extension/connect_guard--*.sql; do frozen+=("/usr/share/postgresql/15/extension/${f##*/}"); done
for f in /usr/lib/postgresql/15/lib/connect_guard.so /usr/share/postgresql/15/extension/connect_guard.control \
         "/usr/share/postgresql/15/extension/connect_guard--$version.sql" "${frozen[@]}"; do
    [ "$(dpkg-query -S "$f" 2>/dev/null)" = "$pkg: $f" ] || die "$f is not installed by $pkg"
done
dpkg --verify "$pkg" || die "the installed files of $pkg differ from the package"

log "purge"
as_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "$pkg" >/dev/null
left=$(ls /usr/lib/postgresql/15/lib/connect_guard.so /usr/share/postgresql/15/extension/connect_guard* 2>/dev/null || true)
[ -z "$left" ] || die "purging $pkg left $left"
if [ -f "$work/usr-before.tar" ]; then
    as_root tar -xpf "$work/usr-before.tar" -P
    echo "put back the files of the earlier make install: ${before[*]}" >&2
fi
echo "package: $(basename "$deb") built, lintian-clean, installed, tested, purged" >&2
