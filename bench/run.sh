#!/usr/bin/env bash
# pmmap's benchmark (issue "Performance"). `make bench` builds ./pmmap and
# runs this; it can also be run alone from anywhere: bench/run.sh
#
# In one run on this machine, over loopback only:
#   1. starts a real webhook: nginx (Debian's nginx-light), one worker, in a
#      temp prefix, answering POST /hook/{key} with {"ok":true,"key":"{key}"};
#   2. measures two ceilings at each concurrency C: the loopback limit (wrk,
#      one thread, C connections, an 80-byte JSON POST, for BENCH_WRK_SECONDS)
#      and the design's limit (bench/bare_loop.cpp: C threads, one reused
#      libcurl easy handle each, N POSTs in all, each with the headers of
#      pmmap's webhook contract; measured once more without them, "plain");
#   3. runs a fresh ./pmmap on a job of N inputs (values of 80 bytes) fed in
#      PUT batches of 1000 with maxsize 1000 while the job runs, reads the
#      whole output and checks every entry; timed from POST /job to the last
#      byte of output;
#   4. prints a table (and the same as markdown): req/s of the ceilings,
#      pmmap's inputs/s and its ratios to them (to the bare loops: the
#      median of each round's ratio), pmmap's CPU seconds over the bare
#      loop's (likewise), pmmap's peak RSS (VmHWM) and CPU seconds per 1000
#      inputs, read just before pmmap is stopped; for each round, where
#      the CPU went: pmmap's workers and other threads, the client curls,
#      nginx, the machine;
#   5. a memory run: BENCH_BIG_N inputs at concurrency 32: peak RSS and the
#      speed of streaming the whole output of a done job once;
#   6. the PUT rate: N inputs PUT into a job whose queue has room, timed.
#
# Environment:
#   BENCH_QUICK=1         smoke run: N=5000, big N=50000, concurrency 1 and 32
#   BENCH_N               inputs per measurement (default 50000)
#   BENCH_BIG_N           inputs of the memory run (default 1000000; 0 skips it)
#   BENCH_CONCURRENCY     the concurrencies, e.g. "1 8 32 128" (the default)
#   BENCH_WRK_SECONDS     length of each wrk run (default 3)
#   BENCH_REPEAT          rounds of (bare loop, plain bare loop, pmmap) per
#                         concurrency; the table shows medians (default 5)
#   BENCH_BATCH, BENCH_MAXSIZE  inputs per PUT and the job's maxsize (default
#                         1000 each; other values are for experiments only)
#   BENCH_FEEDERS         PUT feeders per job, each a curl with one kept-alive
#                         connection (default 1, the natural client; more take
#                         the PUT round trip out of the way, for experiments)
#   BENCH_PIN=1           pin nginx's worker to CPU 0 and the clients (wrk,
#                         bare_loop, pmmap, curl) to CPU 1. Default: unpinned,
#                         and then a loopback round trip costs several times
#                         more when the scheduler puts client and server on
#                         different CPUs than on one, so results at low
#                         concurrency can swing between runs.
#   BENCH_QUIET_WAIT      before each measurement, wait up to this many seconds
#                         (default 60; 0: don't) for the machine to be idle
#                         (under 10% busy over 1 s): others' work skews results
#   PMMAP_BIN             the binary to measure (default ./pmmap of the repo)
#
# Everything it starts (nginx, pmmap, feeders) is stopped on exit, and its
# temp dir removed. Exits 1 if any check failed.

set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PMMAP=${PMMAP_BIN:-$ROOT/pmmap}

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
  N=${BENCH_N:-5000}
  BIG_N=${BENCH_BIG_N:-50000}
  CONCURRENCY=${BENCH_CONCURRENCY:-"1 32"}
else
  N=${BENCH_N:-50000}
  BIG_N=${BENCH_BIG_N:-1000000}
  CONCURRENCY=${BENCH_CONCURRENCY:-"1 8 32 128"}
fi
WRK_SECONDS=${BENCH_WRK_SECONDS:-3}
REPEAT=${BENCH_REPEAT:-5}  # rounds of bare loops and pmmap per concurrency
BATCH=${BENCH_BATCH:-1000}      # inputs per PUT
MAXSIZE=${BENCH_MAXSIZE:-1000}  # the job's queue bound
BIG_C=32       # concurrency of the memory run
VALUE_BYTES=80
PIN=${BENCH_PIN:-0}
QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
FEEDERS=${BENCH_FEEDERS:-1}
CLIENT=()  # prefix of every client command
if [[ $PIN == 1 ]]; then
  (( $(nproc) >= 2 )) || { echo "bench: BENCH_PIN=1 needs 2 CPUs" >&2; exit 1; }
  CLIENT=(taskset -c 1)
fi

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

for v in N BIG_N WRK_SECONDS BATCH MAXSIZE QUIET_WAIT FEEDERS REPEAT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
(( BATCH >= 1 && MAXSIZE >= 1 && REPEAT >= 1 )) || die "BENCH_BATCH, BENCH_MAXSIZE and BENCH_REPEAT must be at least 1"
(( FEEDERS >= 1 && FEEDERS <= (N + BATCH - 1) / BATCH )) ||
  die "BENCH_FEEDERS must be from 1 to the number of PUTs ($(( (N + BATCH - 1) / BATCH )))"
for c in $CONCURRENCY; do
  [[ $c =~ ^[0-9]+$ && $c -ge 1 ]] || die "bad concurrency '$c'"
  (( N >= c )) || die "BENCH_N ($N) must be at least the concurrency ($c)"
done
[[ -x $PMMAP ]] || die "$PMMAP is missing: run 'make pmmap' (or 'make bench')"

# --- tools ------------------------------------------------------------------

install_packages() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  (( ${#missing[@]} )) || return 0
  log "bench: installing ${missing[*]}"
  local sudo=
  [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >&2
}
install_packages nginx-light wrk curl g++ libcurl4-openssl-dev python3
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $NGINX ]] || die "nginx not found"

# --- cleanup ----------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pmmap-bench.XXXXXX")
# The client's copy of each output goes to memory when /dev/shm is there:
# writing it to disk is the client's cost, not pmmap's. pmmap's own data
# dir stays on disk, under TMP.
OUT=$(mktemp -d /dev/shm/pmmap-bench.XXXXXX 2>/dev/null) || OUT=$TMP
declare -A STARTED=()  # pid -> what, for everything still running

forget() { unset "STARTED[$1]"; }

# Stops one process we started: SIGTERM, then SIGKILL after `grace` seconds.
stop_pid() {
  local pid=$1 grace=${2:-10} i
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 20; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "bench: ${STARTED[$pid]:-process} $pid ignored SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

cleanup() {
  local pid
  trap - EXIT INT TERM
  for pid in "${!STARTED[@]}"; do stop_pid "$pid" 5; done
  rm -rf "$TMP" "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FAILED=0
fail() { log "bench: FAIL: $*"; FAILED=1; }

# --- helpers ----------------------------------------------------------------

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# awk arithmetic: calc 'a / b' (prints with the given format, default %.0f)
calc() { awk "BEGIN { printf \"${2:-%.0f}\", $1 }"; }

# The median and the maximum of the numbers among the arguments ("NA" and
# "FAIL" are skipped; NA if none is left).
median() {
  printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
    awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "NA" }'
}
maximum() {
  printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | tail -1 | grep . || echo NA
}

# ratio A B: A / B to three places, or nothing if either is not a number
# or B is zero, so that a failed run adds no ratio to a round's list.
ratio() {
  [[ $1 =~ ^[0-9.]+$ && $2 =~ ^[0-9.]+$ ]] || return 0
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf " %.3f", a / b }'
}

# median_ratio R...: the median of the ratios to two places, or NA.
median_ratio() {
  local m
  m=$(median "$@")
  if [[ $m == NA ]]; then echo NA; else calc "$m" %.2f; fi
}

# CPU seconds (utime + stime) of a live process.
cpu_seconds() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo NA; return; }
  stat=${stat##*") "}  # the fields after "(comm) "; utime, stime are fields 14, 15
  awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / tck }' <<<"$stat"
}

# CPU seconds of pid's threads that are still running. Once a job is done
# its workers exit (by the time its output has been read, one may at most
# be finishing, and would count here), so for pmmap this is what the rest
# (the HTTP threads, main) used, and cpu_seconds minus it what the workers
# used.
live_threads_cpu_seconds() {
  local task stat total=0
  for task in /proc/"$1"/task/*; do
    stat=$(cat "$task/stat" 2>/dev/null) || continue
    stat=${stat##*") "}
    total=$(awk -v t="$total" '{ print t + $12 + $13 }' <<<"$stat")
  done
  calc "$total / $(getconf CLK_TCK)" %.2f
}

# Sets CHILDREN_CPU to the CPU seconds (user + system) of this shell's
# children that have exited and been waited for. It must run in this shell,
# not in $(...): a subshell's children count from zero.
children_cpu() {
  times >"$TMP/times.out"
  CHILDREN_CPU=$(awk 'NR == 2 {
    n = split($0, f, /[ms ]+/); total = 0
    for (i = 1; i + 1 <= n; i += 2) total += f[i] * 60 + f[i + 1]
    printf "%.2f", total }' "$TMP/times.out")
}

# CPU seconds the whole machine spent busy (all CPUs), from /proc/stat.
machine_busy_seconds() {
  awk -v tck="$(getconf CLK_TCK)" '$1 == "cpu" {
    busy = 0; for (i = 2; i <= NF; i++) if (i != 5 && i != 6) busy += $i
    printf "%.2f", busy / tck }' /proc/stat
}

# Waits (up to QUIET_WAIT seconds) until the machine was under 10% busy for
# a second, so that a measurement does not share the CPUs with others' work.
NOISY=0
wait_quiet() {
  (( QUIET_WAIT > 0 )) || return 0
  local what=$1 start=$SECONDS b0 b1 busy
  for (( ; ; )); do
    b0=$(machine_busy_seconds)
    sleep 1
    b1=$(machine_busy_seconds)
    busy=$(calc "($b1 - $b0) * 100 / $(nproc)")
    (( busy < 10 )) && return 0
    if (( SECONDS - start >= QUIET_WAIT )); then
      log "bench: the machine is still ${busy}% busy after ${QUIET_WAIT}s: measuring $what anyway"
      NOISY=$((NOISY + 1))
      return 0
    fi
    (( SECONDS - start > 0 && (SECONDS - start) % 10 == 0 )) && log "bench: waiting for the machine to be idle (${busy}% busy)"
  done
}

# Peak resident set (VmHWM) of a live process, in MB.
peak_rss_mb() {
  awk '/^VmHWM:/ { printf "%.1f", $2 / 1024; found = 1 } END { if (!found) print "NA" }' \
    "/proc/$1/status" 2>/dev/null || echo NA
}

# The ~80-byte value of input i: {"id":i,"payload":"xx...x"}.
value_of() {
  local i=$1 pad
  pad=$(printf '%*s' $((VALUE_BYTES - 20 - ${#i})) '' | tr ' ' x)
  printf '{"id":%s,"payload":"%s"}' "$i" "$pad"
}

# Writes ceil(n / BATCH) PUT bodies into dir: JSON arrays of
# {"key":"k<i>","value":{"id":<i>,"payload":"xx...x"}}, keys k0 .. k<n-1>.
make_batches() {
  local n=$1 dir=$2
  mkdir -p "$dir"
  awk -v n="$n" -v b="$BATCH" -v dir="$dir" -v vb="$VALUE_BYTES" 'BEGIN {
    pad = "x"; while (length(pad) < vb) pad = pad pad
    for (i = 0; i < n; i++) {
      if (i % b == 0) {
        if (f != "") { print "]" > f; close(f) }
        f = sprintf("%s/batch_%07d.json", dir, i / b); printf "[" > f; sep = ""
      }
      p = vb - 20 - length(i ""); if (p < 8) p = 8
      printf "%s{\"key\":\"k%d\",\"value\":{\"id\":%d,\"payload\":\"%s\"}}", sep, i, i, substr(pad, 1, p) > f
      sep = ",\n"
    }
    if (f != "") { print "]" > f; close(f) }
  }'
}

# Writes FEEDERS curl --config files, prefix.0 ..: feeder i PUTs batches
# i, i+FEEDERS, ... of dir in order, over one kept-alive connection, and
# prints "status new-connections seconds" a PUT. @API@ and @JOB@ are filled
# in per run.
make_feed_template() {
  local dir=$1 prefix=$2 f i=0 k
  for ((k = 0; k < FEEDERS; k++)); do
    printf 'silent\nshow-error\n' >"$prefix.$k"
  done
  for f in "$dir"/batch_*.json; do
    {
      (( i < FEEDERS )) || echo 'next'  # "next" separates transfers
      echo 'url = "@API@/job/@JOB@/input"'
      echo 'request = "PUT"'
      echo 'header = "Content-Type: application/json"'
      # upload-file streams the file during its PUT; data-binary = "@file"
      # would read all the batches into memory before the first request,
      # inside the timed part.
      echo "upload-file = \"$f\""
      echo 'output = "/dev/null"'
      echo 'write-out = "%{http_code} %{num_connects} %{time_total}\n"'
      echo 'max-time = 900'
    } >>"$prefix.$((i % FEEDERS))"
    i=$((i + 1))
  done
}

# Checks a GET /output body: a JSON array of exactly n entries, keys
# k0 .. k<n-1> each once, every value {"ok":true,"key":<its key>}.
cat >"$TMP/verify.py" <<'EOF'
import json, sys

path, n = sys.argv[1], int(sys.argv[2])
seen = bytearray(n)
problems = []
count = 0

def check(entry):
    global count
    count += 1
    key = entry.get("key") if isinstance(entry, dict) else None
    value = entry.get("value") if isinstance(entry, dict) else None
    idx = int(key[1:]) if isinstance(key, str) and key[:1] == "k" and key[1:].isdigit() else -1
    if not 0 <= idx < n:
        problems.append("unexpected key %r" % (key,))
    elif seen[idx]:
        problems.append("key %r twice" % key)
    else:
        seen[idx] = 1
    if not (isinstance(value, dict) and value.get("ok") is True and value.get("key") == key):
        problems.append("entry without {\"ok\":true,\"key\":...}: %.200s" % json.dumps(entry))

def by_lines(f):
    # pmmap writes "[", then one entry a line ("," after all but the last), then "]".
    if f.readline().strip() != b"[":
        raise ValueError("not one entry a line")
    ended = False
    for line in f:
        s = line.strip()
        if ended and s:
            raise ValueError("text after ]")
        if s == b"]":
            ended = True
            continue
        if s.endswith(b","):
            s = s[:-1]
        check(json.loads(s))
    if not ended:
        raise ValueError("no closing ]")

try:
    with open(path, "rb") as f:
        by_lines(f)
except ValueError:
    # Some other layout: parse it whole.
    count, problems[:] = 0, []
    seen[:] = bytes(n)
    with open(path, "rb") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        sys.exit("the output is not a JSON array")
    for entry in entries:
        check(entry)

missing = n - sum(seen)
if count != n:
    problems.insert(0, "%d entries, expected %d" % (count, n))
if missing:
    problems.insert(0, "%d keys missing" % missing)
if problems:
    print("%d problems; first: %s" % (len(problems), "; ".join(problems[:3])))
    sys.exit(1)
print("ok: %d entries, each key once, every value ok:true" % count)
EOF

# --- nginx ------------------------------------------------------------------

NGINX_PID=
HOOK=

start_nginx() {
  local prefix=$TMP/nginx port try i
  for try in 1 2 3 4 5; do
    rm -rf "$prefix"
    mkdir -p "$prefix"
    port=$(free_port)
    sed -e "s#@PREFIX@#$prefix#g" -e "s#@PORT@#$port#g" "$ROOT/bench/nginx.conf" >"$prefix/nginx.conf"
    "$NGINX" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" </dev/null \
      >"$prefix/stdout.log" 2>&1 &
    NGINX_PID=$!
    STARTED[$NGINX_PID]=nginx
    for ((i = 0; i < 100; i++)); do
      if curl -s --max-time 2 -o /dev/null -X POST -d '{}' "http://127.0.0.1:$port/hook/probe"; then
        HOOK=http://127.0.0.1:$port/hook
        return 0
      fi
      kill -0 "$NGINX_PID" 2>/dev/null || break
      sleep 0.05
    done
    log "bench: nginx did not start on port $port (try $try):"
    cat "$prefix/error.log" "$prefix/stdout.log" >&2 2>/dev/null || true
    stop_pid "$NGINX_PID" 5
  done
  die "could not start nginx"
}

nginx_worker_pid() { pgrep -P "$NGINX_PID" | head -1; }

check_webhook() {
  local reply
  reply=$(curl -sS --max-time 5 -X POST -H 'Content-Type: application/json' \
    --data-binary "$(value_of 1)" "$HOOK/k1")
  [[ $reply == '{"ok":true,"key":"k1"}' ]] || die "the webhook answered '$reply', not {\"ok\":true,\"key\":\"k1\"}"
  # A body nginx must discard, then a second request on the same connection.
  reply=$(curl -sS --max-time 5 -X POST -H 'Content-Type: application/json' -H 'Expect:' \
    --data-binary "$(value_of 2)" "$HOOK/k2" --next -X POST -H 'Expect:' \
    --data-binary "$(value_of 3)" "$HOOK/k3" -w ' %{num_connects}')
  [[ $reply == '{"ok":true,"key":"k2"}{"ok":true,"key":"k3"} 0' ]] ||
    die "the webhook's kept-alive connection misbehaved: '$reply'"
}

# --- the ceilings -----------------------------------------------------------

# Runs a command in the background, so that a signal to this script is
# handled at once (bash runs traps only between foreground commands), and
# waits for it: run_bg WHAT OUTFILE CMD...; sets BG_RC.
run_bg() {
  local what=$1 out=$2 pid
  shift 2
  "$@" >"$out" 2>&1 </dev/null &
  pid=$!
  STARTED[$pid]=$what
  BG_RC=0
  wait "$pid" || BG_RC=$?
  forget "$pid"
}

# wrk_rps C: sets W_RPS, the loopback limit at C connections.
wrk_rps() {
  local c=$1 out=$TMP/wrk.out
  W_RPS=NA
  run_bg wrk "$out" "${CLIENT[@]}" timeout $((WRK_SECONDS + 60)) wrk -t1 -c"$c" -d"${WRK_SECONDS}s" -s "$TMP/post.lua" "$HOOK/k12345"
  if [[ $BG_RC != 0 ]]; then
    fail "wrk -c$c exited with $BG_RC: $(head -c 500 "$out")"
    return
  fi
  if grep -q -e 'Non-2xx' -e 'Socket errors' "$out"; then
    fail "wrk -c$c saw errors: $(grep -e 'Non-2xx' -e 'Socket errors' "$out" | tr '\n' ' ')"
  fi
  W_RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
  [[ -n $W_RPS ]] || { fail "no Requests/sec from wrk: $(head -c 500 "$out")"; W_RPS=NA; }
}

# bare_rps C N [contract|plain]: sets B_RPS, the design's limit at C
# threads, its requests with pmmap's headers (contract) or without them, and
# B_CPU, the bare loop's own CPU seconds, and B_DETAIL, what the round prints of it.
bare_rps() {
  local c=$1 n=$2 headers=${3:-contract} out=$TMP/bare.out busy0 t0
  B_RPS=NA B_CPU=NA B_DETAIL=
  busy0=$(machine_busy_seconds)
  t0=$EPOCHREALTIME
  run_bg bare_loop "$out" "${CLIENT[@]}" timeout 900 "$TMP/bare_loop" "$HOOK" "$c" "$n" "$headers"
  local busy
  busy="$(calc "$(machine_busy_seconds) - $busy0" %.2f) of $(calc "($EPOCHREALTIME - $t0) * $(nproc)" %.2f) CPU s"
  if [[ $BG_RC != 0 ]]; then
    fail "bare_loop -c$c exited with $BG_RC: $(head -c 500 "$out")"
    return
  fi
  B_RPS=$(sed -n 's/.* rps=\([0-9]*\).*/\1/p' "$out")
  B_CPU=$(sed -n 's/.* cpu=\([0-9.]*\).*/\1/p' "$out")
  [[ -n $B_CPU ]] || B_CPU=NA
  B_DETAIL="its CPU $B_CPU s, machine busy $busy"
  [[ -n $B_RPS ]] || { fail "no rps from bare_loop: $(head -c 500 "$out")"; B_RPS=NA; }
}

# --- one pmmap run ----------------------------------------------------------

# Results of the last run_pmmap.
R_IPS=NA R_SECONDS=NA R_RSS=NA R_CPU=NA R_CPU_PER_K=NA R_STREAM=NA R_PUT_MS=NA R_DETAIL=

# post_job PORT BODY: POST /job over bash's own TCP client, with no process
# to start or to wait for; sets REPLY_BODY to the reply's body.
post_job() {
  local port=$1 body=$2 fd line length=0
  REPLY_BODY=
  exec {fd}<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'POST /job HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$port" "${#body}" "$body" >&"$fd"
  while IFS= read -r -t 30 line <&"$fd"; do
    line=${line%$'\r'}
    [[ -z $line ]] && break
    [[ ${line,,} =~ ^content-length:\ *([0-9]+) ]] && length=${BASH_REMATCH[1]}
  done
  (( length == 0 )) || IFS= read -r -t 30 -N "$length" REPLY_BODY <&"$fd" || true
  exec {fd}>&-
}

# run_pmmap LABEL C N BATCH_DIR STREAM: a fresh pmmap, one job of N inputs at
# concurrency C. With STREAM=1, also times one more GET /output of the done job.
run_pmmap() {
  local label=$1 c=$2 n=$3 batches=$4 stream=${5:-0}
  local dir=$TMP/run-$label pid port api i job t0 t1 get rc statuses
  R_IPS=NA R_SECONDS=NA R_RSS=NA R_CPU=NA R_CPU_REST=NA R_CPU_PER_K=NA R_STREAM=NA R_PUT_MS=NA R_DETAIL=
  mkdir -p "$dir"
  "${CLIENT[@]}" "$PMMAP" --listen 127.0.0.1:0 --data-dir "$dir/data" </dev/null >"$dir/pmmap.log" 2>&1 &
  pid=$!
  STARTED[$pid]=pmmap
  port=
  for ((i = 0; i < 200; i++)); do
    port=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$dir/pmmap.log" 2>/dev/null | head -1)
    [[ -n $port ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [[ -z $port ]]; then
    fail "pmmap ($label) did not start: $(cat "$dir/pmmap.log")"
    stop_pid "$pid"
    return 1
  fi
  api=http://127.0.0.1:$port
  local nginx_worker nginx_cpu0
  nginx_worker=$(nginx_worker_pid)
  nginx_cpu0=$(cpu_seconds "$nginx_worker")
  local busy0 busy1
  busy0=$(machine_busy_seconds)

  # Every curl is started before the clock, reading its config from a FIFO
  # that is written once the job's id is known, so that what is timed is
  # pmmap and the requests, not the start of curl processes (a few ms
  # each). POST /job is sent by bash itself, and the job's id is filled in
  # with bash alone, not sed, likewise.
  local templates=() feeders=() k complete config
  for ((k = 0; k < FEEDERS; k++)); do templates+=("$(<"$batches.feed.$k")"); done
  rm -f "$dir"/*.fifo*  # left by the previous round
  mkfifo "$dir/get.fifo"
  for ((k = 0; k < FEEDERS; k++)); do
    mkfifo "$dir/feed.fifo.$k"
    "${CLIENT[@]}" curl --config "$dir/feed.fifo.$k" >"$dir/feed.out.$k" 2>"$dir/feed.err.$k" </dev/null &
    feeders+=($!)
    STARTED[$!]=feeder
  done
  "${CLIENT[@]}" curl --config "$dir/get.fifo" </dev/null >"$dir/get.out" 2>&1 &
  get=$!
  STARTED[$get]=get

  # The timed part: POST /job ... last byte of GET /output.
  local job_body clients_cpu0
  children_cpu
  clients_cpu0=$CHILDREN_CPU
  printf -v job_body '{"url":"%s","concurrency":%s,"maxsize":%s}' "$HOOK" "$c" "$MAXSIZE"
  t0=$EPOCHREALTIME
  post_job "$port" "$job_body" || true
  if [[ $REPLY_BODY =~ ^\{\"id\":\"([^\"]*)\" ]]; then job=${BASH_REMATCH[1]}; else job=; fi
  if [[ -z $job ]]; then
    fail "POST /job ($label) failed: ${REPLY_BODY:-no reply}"
    for k in "${feeders[@]}" "$get" "$pid"; do stop_pid "$k"; done
    return 1
  fi
  # The feeders PUT while the job runs (a PUT blocks while the queue is
  # full); GET /output waits for the end. A single feeder says complete
  # itself, over its connection, as a client would; several feeders are
  # followed by a curl of its own.
  for ((k = 0; k < FEEDERS; k++)); do
    config=${templates[k]//@API@/$api}
    config=${config//@JOB@/$job}
    if (( FEEDERS == 1 )); then
      config+=$'\nnext\nurl = "'"$api/job/$job/complete"$'"\nrequest = "POST"\noutput = "/dev/null"\nwrite-out = "%{stderr}complete %{http_code}\\n"'
    fi
    printf '%s\n' "$config" >"$dir/feed.fifo.$k"
  done
  printf 'silent\nshow-error\nmax-time = 1800\noutput = "%s"\nwrite-out = "%%{http_code} %%{size_download}"\nurl = "%s"\n' \
    "$OUT/output-$label.json" "$api/job/$job/output" >"$dir/get.fifo"
  rc=0
  for k in "${feeders[@]}"; do
    wait "$k" || rc=$?
    forget "$k"
  done
  if (( FEEDERS == 1 )); then
    complete=$(sed -n 's/^complete //p' "$dir/feed.err.0")
  else
    complete=$(curl -sS --max-time 60 -o /dev/null -w '%{http_code}' -X POST "$api/job/$job/complete" 2>&1) || true
  fi
  wait "$get" || true
  t1=$EPOCHREALTIME
  local clients_cpu
  children_cpu
  clients_cpu=$(calc "$CHILDREN_CPU - $clients_cpu0" %.2f)
  forget "$get"
  get=$(cat "$dir/get.out")

  cat "$dir"/feed.out.* >"$dir/feed.out"
  statuses=$(awk '{ print $1 }' "$dir/feed.out" | sort | uniq -c | awk '{ printf "%s%sx%s", sep, $1, $2; sep = " " }')
  local puts=$(( (n + BATCH - 1) / BATCH ))
  local connects put_times
  connects=$(awk '{ s += $2 } END { print s + 0 }' "$dir/feed.out")
  put_times=$(awk '{ s += $3; if ($3 > m) m = $3 } END { if (NR) printf "mean %.1f ms, max %.1f ms", s / NR * 1000, m * 1000 }' "$dir/feed.out")
  R_PUT_MS=$(awk '{ s += $3 } END { if (NR) printf "%.1f", s / NR * 1000; else print "NA" }' "$dir/feed.out")
  if [[ $rc != 0 ]] || [[ $(grep -c '^201 ' "$dir/feed.out") != "$puts" ]]; then
    fail "the feeders ($label) failed: rc $rc, statuses $statuses, $(cat "$dir"/feed.err.* | head -c 300)"
  fi
  if [[ $complete != 200 ]]; then
    fail "POST /job/$job/complete ($label): $complete"
  fi
  if [[ ${get%% *} != 200 ]]; then
    fail "GET /output ($label): $get"
  fi

  if [[ $stream == 1 ]]; then
    local s bytes secs
    run_bg get "$dir/get2.out" "${CLIENT[@]}" curl -sS --max-time 1800 -o /dev/null \
      -w '%{http_code} %{size_download} %{time_total}' "$api/job/$job/output"
    s=$(cat "$dir/get2.out")
    if [[ ${s%% *} == 200 ]]; then
      read -r _ bytes secs <<<"$s"
      R_STREAM="$(calc "$bytes / 1048576" %.1f) MB in $(calc "$secs" %.3f) s = $(calc "$bytes / 1048576 / $secs" %.0f) MB/s"
    else
      fail "the second GET /output ($label): $s"
    fi
  fi

  # pmmap must still be running here: read its peak RSS and CPU, then stop it.
  if kill -0 "$pid" 2>/dev/null; then
    R_RSS=$(peak_rss_mb "$pid")
    R_CPU=$(cpu_seconds "$pid")
    R_CPU_REST=$(live_threads_cpu_seconds "$pid")
  else
    fail "pmmap ($label) exited before the end: $(tail -5 "$dir/pmmap.log")"
  fi
  local nginx_cpu1
  nginx_cpu1=$(cpu_seconds "$nginx_worker")
  busy1=$(machine_busy_seconds)
  stop_pid "$pid"

  R_SECONDS=$(calc "$t1 - $t0" %.3f)
  R_IPS=$(calc "$n / $R_SECONDS")
  if [[ $R_CPU != NA ]]; then
    R_CPU_PER_K=$(calc "$R_CPU / $n * 1000" %.3f)
  fi
  local verdict
  if verdict=$(python3 "$TMP/verify.py" "$OUT/output-$label.json" "$n" 2>&1); then
    :
  else
    fail "pmmap's output ($label): $verdict"
    R_IPS="FAIL"
  fi
  local out_bytes
  out_bytes=$(stat -c %s "$OUT/output-$label.json" 2>/dev/null || echo 0)
  R_DETAIL="$n inputs in ${R_SECONDS} s; pmmap CPU ${R_CPU} s ($(calc "${R_CPU/NA/0} / $R_SECONDS * 100")% of a core; workers $(calc "${R_CPU/NA/0} - ${R_CPU_REST/NA/0}" %.2f) s, other threads $R_CPU_REST s)"
  R_DETAIL+=", clients (feeder and GET curls) CPU $clients_cpu s"
  R_DETAIL+=", nginx worker CPU $(calc "${nginx_cpu1/NA/0} - ${nginx_cpu0/NA/0}" %.2f) s"
  R_DETAIL+=", machine busy $(calc "$busy1 - $busy0" %.2f) of $(calc "($t1 - $t0) * $(nproc)" %.2f) CPU s"
  R_DETAIL+="; $FEEDERS feeder(s): $puts PUTs ($statuses, $put_times), $connects new connection(s); output $(calc "$out_bytes / 1048576" %.1f) MB; $verdict"
  rm -rf "$dir/data" "$OUT/output-$label.json"
  return 0
}

# --- the run ----------------------------------------------------------------

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal:/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo)
echo "pmmap benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, $mem_total RAM, kernel $(uname -sr)"
echo "tools:   $("$PMMAP" --version 2>&1 | head -1), $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(curl --version | head -1 | cut -d' ' -f1-2,4), wrk $(wrk --version 2>&1 | head -1 | cut -d' ' -f2)"
load1=$(cut -d' ' -f1 /proc/loadavg)
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)$(awk -v l="$load1" 'BEGIN { if (l > 0.5) printf ": the machine is busy, which skews the results" }')"
echo "pinning: $([[ $PIN == 1 ]] && echo "nginx worker on CPU 0, clients and pmmap on CPU 1" || echo "none (the scheduler places every process)")"
echo "setup:   N=$N inputs of ${VALUE_BYTES}-byte values, PUT batches of $BATCH from $FEEDERS feeder(s), maxsize $MAXSIZE; wrk ${WRK_SECONDS}s; memory run: $BIG_N inputs at concurrency $BIG_C"
echo

log "bench: building bare_loop"
g++ -O2 -std=c++17 -Wall -Wextra "$ROOT/bench/bare_loop.cpp" -o "$TMP/bare_loop" -lcurl -pthread ||
  die "bench/bare_loop.cpp does not build"

cat >"$TMP/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$(value_of 12345)'
wrk.headers["Content-Type"] = "application/json"
EOF

log "bench: generating inputs"
make_batches "$N" "$TMP/batches-main"
make_feed_template "$TMP/batches-main" "$TMP/batches-main.feed"

start_nginx
check_webhook
log "bench: webhook $HOOK (nginx pid $NGINX_PID)"
if [[ $PIN == 1 ]]; then
  taskset -pc 0 "$(nginx_worker_pid)" >/dev/null || die "cannot pin nginx's worker"
fi

declare -A WRK BARE PLAIN IPS RATIO_BARE RATIO_PLAIN RATIO_WRK RATIO_CPU RSS CPUK SECS PUTMS
for c in $CONCURRENCY; do
  log "bench: concurrency $c: wrk"
  wait_quiet "wrk -c$c"
  wrk_rps "$c"
  WRK[$c]=$W_RPS
  # The bare loops and pmmap take turns REPEAT times; the table shows the
  # medians, so that one unlucky run moves no ratio. The ratios are the
  # medians of each round's own ratios: a round's runs follow each other
  # within seconds, so the machine's speed, which drifts between rounds on
  # a shared host, cancels out of them.
  round_bare= round_plain= round_ips= round_rss= round_cpuk= round_putms=
  round_ratio_bare= round_ratio_plain= round_ratio_cpu=
  for ((r = 1; r <= REPEAT; r++)); do
    log "bench: concurrency $c, round $r of $REPEAT: bare loop, bare loop without pmmap's headers, pmmap"
    wait_quiet "bare_loop -c$c"
    bare_rps "$c" "$N" contract
    round_bare+=" $B_RPS"
    round_bare_rps=$B_RPS round_bare_detail=$B_DETAIL round_bare_cpu=$B_CPU
    wait_quiet "bare_loop -c$c plain"
    bare_rps "$c" "$N" plain
    round_plain+=" $B_RPS"
    wait_quiet "pmmap -c$c"
    run_pmmap "c$c" "$c" "$N" "$TMP/batches-main" || true
    round_ips+=" $R_IPS" round_rss+=" $R_RSS" round_cpuk+=" $R_CPU_PER_K" round_putms+=" $R_PUT_MS"
    round_ratio_bare+=$(ratio "$R_IPS" "$round_bare_rps")
    round_ratio_plain+=$(ratio "$R_IPS" "$B_RPS")
    # pmmap's CPU for the same calls as the bare loop's, with everything
    # around them: what pmmap itself adds, whatever the clients beside it
    # cost.
    round_ratio_cpu+=$(ratio "$R_CPU" "$round_bare_cpu")
    echo "concurrency $c, round $r: bare loop $round_bare_rps req/s ($B_RPS without pmmap's headers), pmmap $R_IPS inputs/s"
    echo "  bare loop: $round_bare_detail"
    echo "  pmmap: $R_DETAIL"
  done
  BARE[$c]=$(median $round_bare) PLAIN[$c]=$(median $round_plain)
  IPS[$c]=$(median $round_ips) CPUK[$c]=$(median $round_cpuk) PUTMS[$c]=$(median $round_putms)
  RSS[$c]=$(maximum $round_rss)
  R_IPS=${IPS[$c]}
  RATIO_BARE[$c]=$(median_ratio $round_ratio_bare)
  RATIO_PLAIN[$c]=$(median_ratio $round_ratio_plain)
  RATIO_CPU[$c]=$(median_ratio $round_ratio_cpu)
  RATIO_WRK[$c]=NA
  if [[ $R_IPS =~ ^[0-9]+$ && ${WRK[$c]} =~ ^[0-9]+$ ]]; then
    RATIO_WRK[$c]=$(calc "$R_IPS / ${WRK[$c]}" %.2f)
  fi
  of_medians=NA
  if [[ $R_IPS =~ ^[0-9]+$ && ${BARE[$c]} =~ ^[0-9]+$ ]]; then
    of_medians=$(calc "$R_IPS / ${BARE[$c]}" %.2f)
  fi
  echo "concurrency $c, medians of $REPEAT: wrk ${WRK[$c]} req/s, bare loop ${BARE[$c]} req/s (${PLAIN[$c]} without pmmap's headers), pmmap ${IPS[$c]} inputs/s"
  echo "  bare loop:$round_bare; plain:$round_plain; pmmap:$round_ips"
  echo "  pmmap/bare by round:$round_ratio_bare (median ${RATIO_BARE[$c]}; the ratio of the medians: $of_medians)"
  echo "  pmmap's CPU / the bare loop's CPU by round:$round_ratio_cpu (median ${RATIO_CPU[$c]})"
done

# PUT /input alone: N inputs into a job whose queue never fills (maxsize
# 1,000,000) and whose rate limit (0.001/s) lets one call out, so what is
# timed is reading, parsing, validating and queuing, over one connection.
put_rate() {
  local dir=$TMP/run-put pid port api i job t0 t1 statuses
  mkdir -p "$dir"
  "${CLIENT[@]}" "$PMMAP" --listen 127.0.0.1:0 --data-dir "$dir/data" </dev/null >"$dir/pmmap.log" 2>&1 &
  pid=$!
  STARTED[$pid]=pmmap
  for ((i = 0; i < 200; i++)); do
    port=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$dir/pmmap.log" 2>/dev/null | head -1)
    [[ -n $port ]] && break
    sleep 0.05
  done
  api=http://127.0.0.1:$port
  job=$(curl -sS --max-time 30 --data-binary \
    "{\"url\":\"$HOOK\",\"maxsize\":1000000,\"rate_per_sec\":0.001}" "$api/job" |
    sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
  sed -e "s#@API@#$api#g" -e "s#@JOB@#$job#g" "$TMP/batches-main.feed.0" >"$dir/feed.cfg"
  t0=$EPOCHREALTIME
  curl --config "$dir/feed.cfg" >"$dir/feed.out" 2>&1 </dev/null
  t1=$EPOCHREALTIME
  statuses=$(awk '{ print $1 }' "$dir/feed.out" | sort | uniq -c | awk '{ printf "%s%sx%s", sep, $1, $2; sep = " " }')
  stop_pid "$pid"
  forget "$pid"
  [[ $statuses == *x201 && $statuses != *" "* ]] || fail "PUT rate: statuses $statuses"
  PUT_RATE=$(calc "$N / ($t1 - $t0)")
  echo "PUT /input with room in the queue: $N inputs in $(calc "$t1 - $t0" %.3f) s = $PUT_RATE inputs/s ($statuses)"
}
wait_quiet "the PUT rate"
put_rate

BIG_RESULT=
if (( BIG_N > 0 )); then
  log "bench: memory run: generating $BIG_N inputs"
  make_batches "$BIG_N" "$TMP/batches-big"
  make_feed_template "$TMP/batches-big" "$TMP/batches-big.feed"
  log "bench: memory run: $BIG_N inputs at concurrency $BIG_C"
  wait_quiet "the memory run"
  if run_pmmap big "$BIG_C" "$BIG_N" "$TMP/batches-big" 1; then
    echo "memory run: $BIG_N inputs at concurrency $BIG_C: ${R_IPS} inputs/s, peak RSS ${R_RSS} MB, CPU ${R_CPU_PER_K} s per 1000 inputs"
    echo "  pmmap: $R_DETAIL"
    echo "  streaming the whole output of the done job once: $R_STREAM"
    BIG_RESULT="| $BIG_N inputs, concurrency $BIG_C | ${R_IPS} inputs/s | ${R_RSS} MB | ${R_CPU_PER_K} | $R_STREAM |"
  fi
  rm -rf "$TMP/batches-big"
fi

echo
printf '%-11s %10s %10s %11s %10s %11s %12s %10s %12s %14s %14s %12s\n' concurrency 'wrk req/s' 'bare req/s' 'plain req/s' 'pmmap in/s' 'pmmap/bare' 'pmmap/plain' 'pmmap/wrk' 'CPU/bare CPU' 'peak RSS (MB)' 'CPU s/1000 in' 'PUT mean ms'
for c in $CONCURRENCY; do
  printf '%-11s %10s %10s %11s %10s %11s %12s %10s %12s %14s %14s %12s\n' "$c" "${WRK[$c]}" "${BARE[$c]}" "${PLAIN[$c]}" "${IPS[$c]}" \
    "${RATIO_BARE[$c]}" "${RATIO_PLAIN[$c]}" "${RATIO_WRK[$c]}" "${RATIO_CPU[$c]}" "${RSS[$c]}" "${CPUK[$c]}" "${PUTMS[$c]}"
done

echo
echo "Markdown:"
echo
echo "Machine: $(nproc) CPUs ($cpu_model), kernel $(uname -r). Webhook: nginx $("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///'), 1 worker, loopback. $N inputs of $VALUE_BYTES-byte values, PUT batches of $BATCH (one curl per feeder, $FEEDERS feeder(s), one kept-alive connection each), maxsize $MAXSIZE."
echo
echo '| concurrency | wrk req/s | bare loop req/s | bare loop without pmmap headers | pmmap inputs/s | pmmap/bare | pmmap/plain bare | pmmap/wrk | pmmap CPU / bare loop CPU | pmmap peak RSS (MB) | pmmap CPU s per 1000 inputs | mean PUT (ms) |'
echo '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
for c in $CONCURRENCY; do
  echo "| $c | ${WRK[$c]} | ${BARE[$c]} | ${PLAIN[$c]} | ${IPS[$c]} | ${RATIO_BARE[$c]} | ${RATIO_PLAIN[$c]} | ${RATIO_WRK[$c]} | ${RATIO_CPU[$c]} | ${RSS[$c]} | ${CPUK[$c]} | ${PUTMS[$c]} |"
done
echo
echo "PUT /input with room in the queue (parse, validate, enqueue): $PUT_RATE inputs/s."
if [[ -n $BIG_RESULT ]]; then
  echo
  echo '| memory run | pmmap inputs/s | pmmap peak RSS | CPU s per 1000 inputs | streaming the done output (one GET) |'
  echo '|---|---:|---:|---:|---|'
  echo "$BIG_RESULT"
fi

if grep -q -e '\[error\]' -e '\[crit\]' -e '\[alert\]' "$TMP/nginx/error.log" 2>/dev/null; then
  fail "nginx logged errors: $(grep -e '\[error\]' -e '\[crit\]' -e '\[alert\]' "$TMP/nginx/error.log" | head -3)"
fi
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if (( NOISY )); then
  echo "warning: $NOISY measurement(s) started while the machine was busy with other work"
fi
if (( FAILED )); then
  log "bench: some checks FAILED (see above)"
  exit 1
fi
