#!/usr/bin/env bash
# `make demo`: the README's curl walkthrough, end to end, against a
# throwaway webhook (python3 on loopback) and a throwaway pmmap. Stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
cleanup() {
  kill "$hook_pid" "$pmmap_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The webhook: answers POST /hook/{key} with {"upper": <the value, upper-cased if a string>}.
cat > "$work/hook.py" <<'PY'
import http.server, json, sys
class Hook(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        value = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"upper": value.upper() if isinstance(value, str) else value}).encode()
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
python3 "$work/hook.py" > "$work/hook.port" &
hook_pid=$!
./pmmap --listen 127.0.0.1:0 2> "$work/pmmap.log" &
pmmap_pid=$!
for _ in $(seq 100); do
  [ -s "$work/hook.port" ] && grep -q "listening on" "$work/pmmap.log" && break
  sleep 0.05
done
hook="http://127.0.0.1:$(cat "$work/hook.port")/hook"
api=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/pmmap.log" | head -n 1)

show() { echo; echo "\$ $*"; "$@"; }
c="curl -sS --max-time 30"

show $c -d "{\"url\": \"$hook\", \"secret\": \"s3cret\", \"concurrency\": 4}" "$api/job"
id=$($c "$api/jobs" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])')
show $c -X PUT -d '[{"key": "a", "value": "hello"}, {"key": "b/c", "value": "world"}, {"key": "n", "value": 42}]' "$api/job/$id/input"
show $c -X POST "$api/job/$id/complete"
show $c "$api/job/$id/output"
show $c "$api/job/$id/output?format=ndjson&offset=1&limit=1"
show $c "$api/job/$id"
show $c -X DELETE "$api/job/$id"
show $c "$api/job/$id"
echo
echo "demo done: the job ran end to end."
