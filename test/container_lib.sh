# shellcheck shell=bash
# Sourced by the scripts that run pmmap in a container (test/fresh_test.sh, test/image_test.sh):
# picks the engine, makes sure the debian:bookworm base image is there, and works out the
# resource limits to pass. The sourcing script sets `who` (its name in messages) and runs
# under `set -euo pipefail`.

who=${who:-container}
BASE_IMAGE=docker.io/library/debian:bookworm
PULL_SECONDS=300          # a pull that takes longer is treated as impossible
DEBOOTSTRAP_SECONDS=1800  # three minutes on a shared two-core machine
as_root=$([ "$(id -u)" = 0 ] || echo sudo)

# Sets engine: docker when its engine answers; otherwise podman (a docker client alone is not
# enough).
pick_engine() {
  if command -v docker >/dev/null && timeout 30 docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null; then
    engine=podman
  else
    echo "$who: needs docker or podman (see ../shared/CONTAINERS.md)" >&2
    exit 1
  fi
}

# Makes sure $BASE_IMAGE exists: already there, pulled, or, on a machine that reaches only
# Debian's mirror and cannot pull the official image, its equivalent (minbase, as the official
# one is) built with debootstrap, once, under the same name. $1: a scratch directory.
ensure_base_image() {
  local scratch=$1 mirror
  if "$engine" image inspect "$BASE_IMAGE" >/dev/null 2>&1 ||
    timeout "$PULL_SECONDS" "$engine" pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  command -v debootstrap >/dev/null || {
    echo "$who: needs debootstrap to build the base image (apt-get install debootstrap)" >&2
    exit 1
  }
  echo "$who: no $BASE_IMAGE here and none could be pulled;" \
    "building it with debootstrap (once; later runs reuse it)"
  # The host's first Debian mirror (grep fails on a missing sources.list: no matter).
  mirror=$({ grep -shE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list ||
    true; } | grep -oE 'https?://[^ ]+' | head -1)
  $as_root timeout "$DEBOOTSTRAP_SECONDS" debootstrap --variant=minbase bookworm "$scratch/rootfs" \
    "${mirror:-http://deb.debian.org/debian}"
  # The official image lists bookworm, -updates and -security in debian.sources; so does
  # the host, through the mirrors this machine can reach.
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    $as_root cp /etc/apt/sources.list.d/debian.sources "$scratch/rootfs/etc/apt/sources.list.d/"
    $as_root rm -f "$scratch/rootfs/etc/apt/sources.list"
  fi
  $as_root tar -C "$scratch/rootfs" -c . |
    "$engine" import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  $as_root rm -rf "$scratch/rootfs"
}

# Sets limits, the --ulimit arguments for `run` and `build`. Podman as root sets the
# container's open-file and process limits to 1048576, which a sandbox whose root cannot raise
# rlimits refuses ("error setting rlimits"). This shell's own limits work with either engine,
# and need no /etc/containers/containers.conf; the process limit is capped at kernel.pid_max,
# as runc refused one above it on such a sandbox.
set_limits() {
  local nofile nproc pid_max
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  pid_max=$(cat /proc/sys/kernel/pid_max)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
  limits=(--ulimit "nproc=$nproc:$nproc")
  [ "$nofile" = unlimited ] || limits+=(--ulimit "nofile=$nofile:$nofile")
}
