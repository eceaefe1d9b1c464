#!/usr/bin/env bash
# make image-test: builds pmmap's image from the Dockerfile with docker or podman, checks that
# it refuses a /data it cannot write, runs a job end to end through a container whose /data is
# a named volume, then restarts the container and reads the job back. Makes the debian:bookworm
# base with debootstrap where none can be pulled (test/container_lib.sh). Takes minutes (the
# first build compiles libcurl); not part of CI. Leaves the image (pmmap:image-test) for the
# next run's cache; removes everything else it made.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=pmmap:image-test
BUILD_SECONDS=3600  # a cold build on a shared two-core machine takes about five minutes
START_SECONDS=30    # from `run` or `start` to /healthz answering
STOP_SECONDS=20     # SIGTERM gives calls in flight 5 s, then pmmap exits
OUTPUT_SECONDS=60   # GET /output waits for the job to be done
INPUTS=50
who=image-test
# shellcheck source=test/container_lib.sh
. test/container_lib.sh
pick_engine

name=pmmap-image-test-$$
volume=pmmap-image-test-$$
tmp=$(mktemp -d)
hook_pid=
cleanup() {
  timeout "$STOP_SECONDS" "$engine" rm -f "$name" "$name-unwritable" >/dev/null 2>&1 || true
  timeout "$STOP_SECONDS" "$engine" volume rm -f "$volume" >/dev/null 2>&1 || true
  if [ -n "$hook_pid" ]; then kill "$hook_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  # Only a half-built base image's root-owned files need root to go.
  rm -rf "$tmp" 2>/dev/null || $as_root rm -rf "$tmp"
}
trap cleanup EXIT

say() { echo "image-test: $*"; }
fail() {
  echo "image-test: FAILED: $*" >&2
  if "$engine" inspect "$name" >/dev/null 2>&1; then
    echo "image-test: the container's log:" >&2
    timeout 10 "$engine" logs "$name" 2>&1 | tail -n 20 >&2 || true
  fi
  exit 1
}
c() { curl -sS --max-time 10 "$@"; }

ensure_base_image "$tmp"
set_limits

say "building $TAG with $engine (the first build compiles libcurl: minutes)"
start=$(date +%s)
if ! timeout "$BUILD_SECONDS" "$engine" build "${limits[@]}" -t "$TAG" . >"$tmp/build.log" 2>&1; then
  tail -n 30 "$tmp/build.log" >&2
  fail "the image did not build"
fi
size=$("$engine" image inspect --format '{{.Size}}' "$TAG")
say "built in $(($(date +%s) - start)) s; the image is $size bytes"

# A /data that uid 65532 cannot write (a root-owned directory) is refused at start.
mkdir -m 755 "$tmp/root-owned"
rc=0
timeout "$START_SECONDS" "$engine" run --rm --name "$name-unwritable" --network host \
  "${limits[@]}" -v "$tmp/root-owned:/data" "$TAG" --listen 127.0.0.1:0 >"$tmp/unwritable.log" 2>&1 ||
  rc=$?
if [ "$rc" != 1 ] || ! grep -q "cannot write to /data: Permission denied" "$tmp/unwritable.log"; then
  fail "a /data uid 65532 cannot write: exit $rc, not 1, or no clear message: $(cat "$tmp/unwritable.log")"
fi
say "a /data uid 65532 cannot write is refused: $(grep -m1 'cannot write' "$tmp/unwritable.log")"

# The webhook, on the host: answers POST /hook/{key} with {"key": <key>, "value": <the body>}.
cat >"$tmp/hook.py" <<'PY'
import http.server, json, sys, urllib.parse
class Hook(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        value = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
        body = json.dumps({"key": key, "value": value}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
python3 "$tmp/hook.py" >"$tmp/hook.port" &
hook_pid=$!
for _ in $(seq 100); do [ -s "$tmp/hook.port" ] && break; sleep 0.05; done
[ -s "$tmp/hook.port" ] || fail "the webhook did not start"
hook="http://127.0.0.1:$(cat "$tmp/hook.port")/hook"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
api=http://127.0.0.1:$port

# Waits (bounded) for the container's /healthz.
wait_healthy() {
  local deadline=$(($(date +%s) + START_SECONDS))
  until c -o /dev/null "$api/healthz" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "no answer on $api/healthz after $START_SECONDS s"
    sleep 0.2
  done
}

# Checks the output of GET /job/$id/output in $1: one entry per input, each the echo of its value.
check_output() {
  python3 - "$1" "$INPUTS" <<'PY' || fail "the output is wrong (see above)"
import json, sys
entries = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
want = {f"k{i}": {"key": f"k{i}", "value": {"i": i}} for i in range(n)}
got = {}
for e in entries:
    if e["key"] in got:
        sys.exit(f"image-test: key {e['key']} appears twice")
    got[e["key"]] = e.get("value", e)
if got != want:
    wrong = sorted(k for k in want.keys() | got.keys() if got.get(k) != want.get(k))
    sys.exit(f"image-test: {len(wrong)} entries wrong or missing, e.g. {wrong[0]}: {got.get(wrong[0])}")
PY
}

timeout "$START_SECONDS" "$engine" volume create "$volume" >/dev/null
timeout "$START_SECONDS" "$engine" run -d --name "$name" --network host "${limits[@]}" \
  -v "$volume:/data" "$TAG" --listen "127.0.0.1:$port" >/dev/null
wait_healthy
grep -q "with data in /data" <(timeout 10 "$engine" logs "$name" 2>&1) ||
  fail "pmmap does not keep its data in /data"
say "a container with the volume $volume on /data answers on $api, with data in /data"

job=$(c -d "{\"url\": \"$hook\", \"concurrency\": 4}" "$api/job")
id=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["id"])' "$job") ||
  fail "POST /job answered: $job"
inputs=$(python3 -c 'import json, sys; print(json.dumps([{"key": f"k{i}", "value": {"i": i}}
                                                       for i in range(int(sys.argv[1]))]))' "$INPUTS")
status=$(c -o "$tmp/put" -w '%{http_code}' -X PUT -d "$inputs" "$api/job/$id/input")
[ "$status" = 201 ] || fail "PUT /job/$id/input answered $status: $(cat "$tmp/put")"
status=$(c -o "$tmp/complete" -w '%{http_code}' -X POST "$api/job/$id/complete")
[ "$status" = 200 ] || fail "POST /job/$id/complete answered $status: $(cat "$tmp/complete")"
say "job $id: $INPUTS inputs PUT, completed"
curl -sS --max-time "$OUTPUT_SECONDS" -o "$tmp/output" "$api/job/$id/output" ||
  fail "GET /job/$id/output did not answer in $OUTPUT_SECONDS s"
check_output "$tmp/output"
say "job $id: its output has every one of the $INPUTS entries, each right"
files=$(timeout "$START_SECONDS" "$engine" run --rm "${limits[@]}" -v "$volume:/data" "$BASE_IMAGE" \
  ls -A /data | tr '\n' ' ')
expected="$id.job $id.journal $id.ndjson "
[ "$files" = "$expected" ] || fail "the volume holds '$files', not the job's record, journal and outcomes ($expected)"
say "the volume holds $files"

timeout "$STOP_SECONDS" "$engine" stop -t "$STOP_SECONDS" "$name" >/dev/null ||
  fail "the container did not stop in $STOP_SECONDS s"
code=$("$engine" inspect --format '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "pmmap exited $code on SIGTERM"
timeout "$START_SECONDS" "$engine" start "$name" >/dev/null
wait_healthy
say "the container stopped (pmmap exited 0) and started again"

status=$(c -o "$tmp/job" -w '%{http_code}' "$api/job/$id")
[ "$status" = 200 ] ||
  fail "job $id not found after restart (GET /job/$id answered $status: $(cat "$tmp/job"))"
state=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"])' "$tmp/job")
[ "$state" = "done" ] || fail "job $id is $state after restart, not done"
curl -sS --max-time "$OUTPUT_SECONDS" -o "$tmp/output" "$api/job/$id/output" ||
  fail "GET /job/$id/output did not answer in $OUTPUT_SECONDS s after restart"
check_output "$tmp/output"
say "job $id: read back after the restart, done, with every one of its $INPUTS entries"
say "passed"
