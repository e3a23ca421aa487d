#!/bin/sh
# Print packages.txt's packages, one a line, with each {pg} line written
# once per PostgreSQL major given: packages.sh 15, packages.sh "14 15 16 17".
set -eu
[ $# -eq 1 ] && [ -n "$1" ] || { echo "usage: packages.sh \"PG_MAJOR...\"" >&2; exit 2; }
list="$(dirname "$0")/packages.txt"
[ -r "$list" ] || { echo "packages.sh: cannot read $list" >&2; exit 1; }
sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$list" | while read -r pkg; do
  case "$pkg" in
    *'{pg}'*) for major in $1; do echo "$pkg" | sed "s/{pg}/$major/g"; done ;;
    *) echo "$pkg" ;;
  esac
done
