#!/usr/bin/env bash
# check_format.sh: are the C sources (src/*.c, include/*.h) in PostgreSQL's
# own style, the one pgindent gives the PostgreSQL tree?
#   bash scripts/check_format.sh          prints the diff of every file that
#                                         differs; exits 1 if any does
#   bash scripts/check_format.sh --fix    rewrites those files in place
#
# pgindent is a script in PostgreSQL's source tree, not a package; what it
# runs is pg_bsd_indent (Debian package pg-bsd-indent), which this script
# runs the same way: with pgindent's options (scripts/format/pg_bsd_indent.options)
# and a list of every type name (scripts/format/typedefs.pl extracts it from
# the headers of the server we build against, libpq, libcurl and our own
# sources).  Like pgindent, it then writes a function definition's return
# type as "char *", not "char<tab>*".  Nothing else is changed: comments
# longer than the line are reflowed, as pgindent reflows them.
source "$(dirname "$0")/lib.sh"

fix=0
case "${1:-}" in
    --fix) fix=1 ;;
    "") ;;
    *) die "usage: $0 [--fix]" ;;
esac

install_packages pg-bsd-indent
command -v pg_bsd_indent >/dev/null || die "pg_bsd_indent is not on PATH (package pg-bsd-indent)"

work=$(mktemp -d "${TMPDIR:-/tmp}/connect_guard.format.XXXXXX")
trap 'rm -rf "$work"' EXIT

server_include=$("$PG_BIN/pg_config" --includedir-server)
include=$("$PG_BIN/pg_config" --includedir)
# where the compiler finds curl/curl.h (Debian puts it under the multiarch directory)
curl_include=$(dirname "$(echo '#include <curl/curl.h>' | cpp -H -o /dev/null 2>&1 | awk '$1 == "." { print $2; exit }')")
cd "$CG_ROOT"
sources=(src/*.c include/*.h)
perl scripts/format/typedefs.pl \
    $(find "$server_include" -name '*.h') "$include"/libpq-fe.h "$curl_include"/*.h "${sources[@]}" \
    > "$work/typedefs.list"
# shellcheck disable=SC2207 # the options are words
options=($(grep -v '^#' scripts/format/pg_bsd_indent.options))

differ=()
for f in "${sources[@]}"; do
    pg_bsd_indent "${options[@]}" "-U$work/typedefs.list" "$f" "$work/indented" ||
        die "pg_bsd_indent failed on $f"
    # a function definition's return type alone on its line: "char *"
    perl -pe 's/^(\w[\w ]*?)[ \t]+(\*+)$/$1 $2/' "$work/indented" > "$work/formatted"
    if ! cmp -s "$f" "$work/formatted"; then
        differ+=("$f")
        if [ $fix -eq 1 ]; then
            cat "$work/formatted" > "$f"
        else
            diff -u --label "$f" --label "$f (pgindent style)" "$f" "$work/formatted" || true
        fi
    fi
done

if [ ${#differ[@]} -eq 0 ]; then
    echo "check_format: ${#sources[@]} files, all in pgindent style"
elif [ $fix -eq 1 ]; then
    echo "check_format: reformatted ${#differ[@]} of ${#sources[@]} files: ${differ[*]}"
else
    echo "check_format: ${#differ[@]} of ${#sources[@]} files differ from pgindent style: ${differ[*]}"
    echo "check_format: bash scripts/check_format.sh --fix rewrites them"
    exit 1
fi
