#!/usr/bin/env python3
"""Holds idle and half-sent connections open against a pmmap API, then times
GET /healthz: the measurement behind the README's "idle connections" numbers.

usage: bench/idle_load.py PORT [IDLE=1500] [HALF=300] [PROBES=5]

Opens IDLE connections that send nothing and HALF that send half a request
header, then times PROBES requests to /healthz with curl, one after the
other, while they are all still open. Prints each time in seconds, and how
many of the connections the server closed or refused.
"""
import socket
import subprocess
import sys
import time

port = int(sys.argv[1])
idle = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
half = int(sys.argv[3]) if len(sys.argv) > 3 else 300
probes = int(sys.argv[4]) if len(sys.argv) > 4 else 5

held = []
for i in range(idle + half):
    s = socket.create_connection(("127.0.0.1", port))
    if i >= idle:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: half a header
    held.append(s)
print(f"holding {idle} idle and {half} half-sent connections", flush=True)
for _ in range(probes):
    start = time.monotonic()
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
                          f"http://127.0.0.1:{port}/healthz"], capture_output=True, text=True).stdout
    print(f"GET /healthz -> {out} in {time.monotonic() - start:.3f} s", flush=True)
closed = 0
for s in held:
    s.setblocking(False)
    try:
        if s.recv(1, socket.MSG_PEEK) is not None:
            closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(f"{closed} of {len(held)} held connections were closed or answered by the server")
