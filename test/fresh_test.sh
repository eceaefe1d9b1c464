#!/usr/bin/env bash
# make fresh-test: runs the README's set-up block, as written, in a bare debian:bookworm
# container, as a newcomer would; a missing install step fails here, not on their machine.
# The block is read from README.md itself, so the two cannot drift. It copies the working
# tree's tracked files (uncommitted edits included, untracked files not), so a change can be
# tried before it is committed. Needs docker or podman; takes minutes; not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_SECONDS=${FRESH_SECONDS:-3600}  # apt, build and tests: ten minutes there
who=fresh-test
# shellcheck source=test/container_lib.sh
. test/container_lib.sh
pick_engine

name=pmmap-fresh-$$
tmp=$(mktemp -d)
cleanup() {
  "$engine" rm -f "$name" >/dev/null 2>&1 || true
  # Only a half-built base image's root-owned files need root to go.
  rm -rf "$tmp" 2>/dev/null || $as_root rm -rf "$tmp"
}
trap cleanup EXIT

# The README's first ```sh block is the set-up. `make run` would serve until stopped, so it
# alone is left out; the block must still hold `make test`, which decides the verdict.
block=$(awk '/^```sh$/ { inside = 1; next } inside && /^```$/ { exit } inside' README.md)
setup=$(grep -vE '^make run( |$)' <<<"$block")
if ! grep -qE '^make test( |$)' <<<"$setup"; then
  echo "fresh-test: README.md's first sh block has no 'make test' line" >&2
  exit 1
fi

ensure_base_image "$tmp"

echo "fresh-test: in a bare $BASE_IMAGE with $engine, as root, running the README's set-up:"
echo "$setup"

# Tracked files as they are in the working tree; a tracked file deleted there stays out.
git ls-files -z | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
  tar -c --null -T - >"$tmp/src.tar"

set_limits

# Host networking: apt reaches the mirror as the host does, and the tests use 127.0.0.1.
start=$(date +%s)
rc=0
# shellcheck disable=SC2016 # $1, the set-up, expands inside the container's bash
timeout "$RUN_SECONDS" "$engine" run -i --rm --name "$name" --network host "${limits[@]}" \
  "$BASE_IMAGE" bash -c 'mkdir /root/pmmap && cd /root/pmmap && tar -x --no-same-owner && bash -ec "$1"' \
  _ "$setup" <"$tmp/src.tar" 2>&1 | tee "$tmp/log" || rc=$?
elapsed=$(($(date +%s) - start))

summary=$(grep -v '^[[:space:]]*$' "$tmp/log" | tail -n 1)
if [ "$rc" -eq 0 ] && grep -qE '^[0-9]+ passed, 0 failed$' <<<"$summary"; then
  echo "fresh-test: passed in $((elapsed / 60)) min $((elapsed % 60)) s: $summary"
else
  echo "fresh-test: FAILED (exit $rc) after $((elapsed / 60)) min $((elapsed % 60)) s;" \
    "last line: $summary" >&2
  exit 1
fi
