#!/usr/bin/env bash
# make fresh-test: runs the README's set-up block, as written, in a bare debian:bookworm
# container, as a newcomer would; a missing install step fails here, not on their machine.
# The block is read from README.md itself, so the two cannot drift. It copies the working
# tree's tracked files (uncommitted edits included, untracked files not), so a change can be
# tried before it is committed. Needs docker or podman; takes minutes; not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=docker.io/library/debian:bookworm
PULL_SECONDS=300                    # a pull that takes longer is treated as impossible
DEBOOTSTRAP_SECONDS=1800            # three minutes on a shared two-core machine
RUN_SECONDS=${FRESH_SECONDS:-3600}  # apt, build and tests: ten minutes there
as_root=$([ "$(id -u)" = 0 ] || echo sudo)

# Docker when its engine answers; otherwise podman (a docker client alone is not enough).
if command -v docker >/dev/null && timeout 30 docker info >/dev/null 2>&1; then
  engine=docker
elif command -v podman >/dev/null; then
  engine=podman
else
  echo "fresh-test: needs docker or podman (see ../shared/CONTAINERS.md)" >&2
  exit 1
fi

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

# Machines that reach only Debian's mirror cannot pull the official image: build its
# equivalent (minbase, as the official one is) with debootstrap, once, under the same name.
build_base() {
  command -v debootstrap >/dev/null || {
    echo "fresh-test: needs debootstrap to build the base image (apt-get install debootstrap)" >&2
    exit 1
  }
  echo "fresh-test: no $IMAGE here and none could be pulled;" \
    "building it with debootstrap (once; later runs reuse it)"
  local mirror
  # The host's first Debian mirror (grep fails on a missing sources.list: no matter).
  mirror=$({ grep -shE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list ||
    true; } | grep -oE 'https?://[^ ]+' | head -1)
  $as_root timeout "$DEBOOTSTRAP_SECONDS" debootstrap --variant=minbase bookworm "$tmp/rootfs" \
    "${mirror:-http://deb.debian.org/debian}"
  # The official image lists bookworm, -updates and -security in debian.sources; so does
  # the host, through the mirrors this machine can reach.
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    $as_root cp /etc/apt/sources.list.d/debian.sources "$tmp/rootfs/etc/apt/sources.list.d/"
    $as_root rm -f "$tmp/rootfs/etc/apt/sources.list"
  fi
  $as_root tar -C "$tmp/rootfs" -c . | "$engine" import --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
  $as_root rm -rf "$tmp/rootfs"
}

if ! "$engine" image inspect "$IMAGE" >/dev/null 2>&1 &&
  ! timeout "$PULL_SECONDS" "$engine" pull -q "$IMAGE" >/dev/null 2>&1; then
  build_base
fi

echo "fresh-test: in a bare $IMAGE with $engine, as root, running the README's set-up:"
echo "$setup"

# Tracked files as they are in the working tree; a tracked file deleted there stays out.
git ls-files -z | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
  tar -c --null -T - >"$tmp/src.tar"

# Podman as root sets the container's open-file and process limits to 1048576, which a
# sandbox whose root cannot raise rlimits refuses ("error setting rlimits"). This shell's own
# limits work with either engine, and need no /etc/containers/containers.conf; the process
# limit is capped at kernel.pid_max, as runc refused one above it on such a sandbox.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
limits=(--ulimit "nproc=$nproc:$nproc")
[ "$nofile" = unlimited ] || limits+=(--ulimit "nofile=$nofile:$nofile")

# Host networking: apt reaches the mirror as the host does, and the tests use 127.0.0.1.
start=$(date +%s)
rc=0
# shellcheck disable=SC2016 # $1, the set-up, expands inside the container's bash
timeout "$RUN_SECONDS" "$engine" run -i --rm --name "$name" --network host "${limits[@]}" "$IMAGE" \
  bash -c 'mkdir /root/pmmap && cd /root/pmmap && tar -x --no-same-owner && bash -ec "$1"' \
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
