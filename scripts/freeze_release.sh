#!/usr/bin/env bash
# freeze_release.sh: the base install script of a released version, frozen.
#
#   scripts/freeze_release.sh [--replace] VERSION [REVISION] [-x PART]...
#       writes extension/connect_guard--VERSION.sql from the install parts
#       (extension/parts/*.sql) as they are in git at REVISION (default
#       HEAD), in name order, leaving out each PART named with -x (a part
#       of a later version, e.g. -x 80_preflight.sql).  --replace is needed
#       when that file exists already.
#   scripts/freeze_release.sh --check VERSION
#       makes the file again from the git tree and the parts its header
#       names, and fails (exit 1) if it differs: it was edited by hand.
#
# This is the one-time act of the first release.  The Makefile builds the
# current version's install script from extension/parts/, whose parts move
# on; a released version must stay what it was, because databases run it
# and ALTER EXTENSION UPDATE starts from it.  1.0 is kept as this frozen
# file; every later version is reached from it by the hand-written,
# append-only upgrade scripts (connect_guard--1.0--1.1.sql, ...), which are
# themselves the frozen form of their release (see README, Versions and
# upgrades).  A freeze therefore runs once, for 1.0:
#
#   scripts/freeze_release.sh --replace 1.0 HEAD -x 80_preflight.sql
#
# The output depends only on the content of the parts at REVISION (its
# header names the git tree of extension/parts, not a commit), so running
# it again on a revision with the same parts gives the same bytes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
ext=connect_guard
usage() { echo "usage: $0 [--replace] VERSION [REVISION] [-x PART]... | $0 --check VERSION" >&2; exit 2; }
die() { echo "freeze_release.sh: $*" >&2; exit 1; }

# render TREE PART...: the frozen script of the parts of TREE (a git tree of
# install parts), leaving out the PARTs, on stdout
render() {
    local version=$1 tree=$2; shift 2
    local left_out=("$@") parts=() name p
    for p in "${left_out[@]}"; do
        git -C "$root" cat-file -e "$tree:$p" 2>/dev/null || die "no part $p in tree $tree"
    done
    # git lists a tree's names in byte order, as the Makefile's $(sort) does
    while IFS= read -r name; do
        case $name in *.sql) ;; *) continue ;; esac
        for p in "${left_out[@]}"; do [ "$p" = "$name" ] && continue 2; done
        parts+=("$name")
    done < <(git -C "$root" ls-tree --name-only "$tree")
    [ ${#parts[@]} -gt 0 ] || die "no install parts in tree $tree"
    printf '/* %s--%s.sql: %s %s as released.  Frozen: never edit this file.\n' "$ext" "$version" "$ext" "$version"
    printf ' * Made by scripts/freeze_release.sh from extension/parts at git tree %s,\n' "$tree"
    printf ' * parts left out: %s.\n' "${left_out[*]:-none}"
    printf ' * Later changes ship as upgrade scripts (%s--%s--NEXT.sql). */\n\n' "$ext" "$version"
    printf '\\echo Use "CREATE EXTENSION %s" to load this file. \\quit\n\n' "$ext"
    for name in "${parts[@]}"; do
        git -C "$root" cat-file blob "$tree:$name"
    done
}

if [ "${1:-}" = --check ]; then
    [ $# -eq 2 ] || usage
    version=$2 file="$root/extension/$ext--$2.sql"
    [ -f "$file" ] || die "no $file"
    tree=$(sed -n '2s/.* at git tree \([0-9a-f]\{40\}\),$/\1/p' "$file")
    left=$(sed -n '3s/^ \* parts left out: \(.*\)\.$/\1/p' "$file")
    [ -n "$tree" ] && [ -n "$left" ] || die "$file: no header of freeze_release.sh (edited by hand?)"
    [ "$left" = none ] && left=
    if ! git -C "$root" cat-file -e "$tree^{tree}" 2>/dev/null; then
        echo "freeze_release.sh: $file not checked: git tree $tree is not in this clone (a shallow one?)"
        exit 0
    fi
    # shellcheck disable=SC2086 # part names have no spaces
    if ! render "$version" "$tree" $left | cmp -s - "$file"; then
        echo "freeze_release.sh: $file is not what freeze_release.sh made from git tree $tree:" >&2
        # shellcheck disable=SC2086
        render "$version" "$tree" $left | diff -u - "$file" | head -n 40 >&2
        exit 1
    fi
    now=$(git -C "$root" rev-parse HEAD:extension/parts 2>/dev/null || echo none)
    if [ "$now" = "$tree" ]; then same="the same as HEAD's"; else same="HEAD's is $now"; fi
    echo "freeze_release.sh: $file is the freeze of extension/parts at git tree $tree ($same), parts left out: ${left:-none}"
    exit 0
fi

replace=
[ "${1:-}" = --replace ] && { replace=1; shift; }
[ $# -ge 1 ] || usage
version=$1; shift
revision=HEAD
if [ $# -gt 0 ] && [ "$1" != -x ]; then revision=$1; shift; fi
left_out=()
while [ $# -gt 0 ]; do
    [ "$1" = -x ] && [ $# -ge 2 ] || usage
    left_out+=("$2"); shift 2
done
[[ $version =~ ^[0-9]+(\.[0-9]+)+$ ]] || die "$version is not a version (1.0, 1.1, ...)"

commit=$(git -C "$root" rev-parse --verify -q "$revision^{commit}") || die "no revision $revision"
# the parts' folder; before 1.1 it was named after the version
tree=$(git -C "$root" rev-parse -q --verify "$commit:extension/parts" ||
       git -C "$root" rev-parse -q --verify "$commit:extension/$version") ||
    die "no extension/parts (nor extension/$version) at $revision"

out="$root/extension/$ext--$version.sql"
[ ! -e "$out" ] || [ -n "$replace" ] ||
    die "$out exists: a released version is never made again (--replace redoes a freeze not yet released)"
trap 'rm -f "$out.tmp"' EXIT
render "$version" "$tree" "${left_out[@]}" > "$out.tmp"
mv "$out.tmp" "$out"
echo "freeze_release.sh: wrote $out from extension/parts at $revision (git tree $tree), parts left out: ${left_out[*]:-none}"
