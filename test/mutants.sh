#!/bin/bash
# Applies each planted bug of test/mutants.txt, alone, to a scratch copy of
# the tree's tracked files (as they are in the working tree), builds, runs
# the tests the mutant names, and reports it caught (the tests failed) or
# missed (they passed). Exits 1 if any is missed or cannot be applied.
#
#   test/mutants.sh [name...]    only the mutants named; all by default
#
# The copy is built once; each mutant then recompiles only its file. The
# scratch directory is removed at the end unless KEEP_SCRATCH=1.
set -u -o pipefail

top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel) || exit 2
list="$top/test/mutants.txt"
jobs=$(nproc)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/pmmap-mutants.XXXXXX")
cleanup() { [ "${KEEP_SCRATCH:-0}" = 1 ] || rm -rf "$scratch"; }
trap cleanup EXIT

# The working tree's tracked files, never its build outputs.
(cd "$top" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$scratch" || exit 2
echo "mutants: building a clean copy in $scratch"
if ! make -C "$scratch" -j"$jobs" pmmap pmmap_test >"$scratch/build.log" 2>&1; then
  echo "mutants: the unmutated copy does not build; see $scratch/build.log" >&2
  KEEP_SCRATCH=1
  exit 2
fi

# Replaces the one occurrence of find in file with replace; fails if find
# occurs zero times or more than once.
apply() {
  local file=$1 find=$2 replace=$3
  python3 - "$file" "$find" "$replace" <<'PY'
import sys
path, find, replace = sys.argv[1:4]
text = open(path).read()
n = text.count(find)
if n != 1:
    sys.exit("find-string occurs %d times (must be exactly once) in %s:\n    %s" % (n, path, find))
open(path, "w").write(text.replace(find, replace))
PY
}

# Runs one mutant; prints its verdict. Returns 0 if caught.
run_mutant() {
  local name=$1 file=$2 find=$3 replace=$4 tests=$5
  local src="$scratch/$file" log="$scratch/$name.log"
  if [ ! -f "$src" ]; then
    echo "NOT APPLIED  $name: no file $file (re-point it in test/mutants.txt)"
    return 1
  fi
  cp -p "$src" "$src.orig"
  local verdict
  if ! apply "$src" "$find" "$replace" 2>"$log"; then
    verdict="NOT APPLIED  $name: $(cat "$log") -- re-point it in test/mutants.txt"
  elif ! make -C "$scratch" -j"$jobs" pmmap pmmap_test >"$log" 2>&1; then
    verdict="NOT BUILT    $name (see $log)"
  elif (cd "$scratch" && PMMAP_BIN=./pmmap timeout 900 ./pmmap_test "$tests") >>"$log" 2>&1; then
    verdict="MISSED       $name: \"$tests\" passed"
  else
    verdict="caught       $name"
  fi
  mv "$src.orig" "$src"
  touch "$src"  # newer than the mutant's object: the next build recompiles it
  echo "$verdict"
  [[ $verdict == caught* ]]
}

declare -A rec=()
total=0
failed=0
flush() {
  [ -n "${rec[name]:-}" ] || return 0
  if [ $# -eq 0 ] || [[ " $* " == *" ${rec[name]} "* ]]; then
    for field in file find replace tests; do
      if [ -z "${rec[$field]:-}" ]; then
        echo "mutants: ${rec[name]} has no $field: line" >&2
        exit 2
      fi
    done
    total=$((total + 1))
    run_mutant "${rec[name]}" "${rec[file]}" "${rec[find]}" "${rec[replace]}" "${rec[tests]}" ||
      failed=$((failed + 1))
  fi
  rec=()
}

while IFS= read -r line || [ -n "$line" ]; do
  case $line in
    '#'*) ;;
    '') flush "$@" ;;
    name:* | file:* | find:* | replace:* | tests:*)
      key=${line%%:*}
      rec[$key]=${line#"$key: "}
      ;;
    *)
      echo "mutants: cannot read this line of $list: $line" >&2
      exit 2
      ;;
  esac
done <"$list"
flush "$@"

echo "mutants: $((total - failed)) of $total caught"
[ "$total" -gt 0 ] && [ "$failed" -eq 0 ]
