#!/usr/bin/env python3
"""The webhook of bench.py's latency-bound run: `slow_webhook.py PORT DELAY` answers every
POST with 200 `{}` DELAY seconds after reading it, on kept-alive connections, from one
asyncio process listening with a backlog of 4096 (it can hold as many connections as
RLIMIT_NOFILE lets it: bench.py raises that before starting it). GET /stats answers at
once with its own counts, so that the bench can tell whether the webhook kept up:
requests answered, the most requests and connections held at once, and how late the
answers were (the time from reading a request to writing its reply, beyond DELAY).
PORT 0 picks a free port; it prints "listening on PORT" once it listens.
"""

import asyncio
import json
import re
import sys

REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)


class Stats:
    def __init__(self):
        self.counts = dict(requests=0, in_flight=0, max_in_flight=0, connections=0,
                           max_connections=0, late_total_s=0.0, late_max_s=0.0)

    def add(self, name, step=1):
        counts = self.counts
        counts[name] += step
        counts["max_" + name] = max(counts["max_" + name], counts[name])

    def answered(self, late):
        self.counts["requests"] += 1
        self.counts["late_total_s"] += late
        self.counts["late_max_s"] = max(self.counts["late_max_s"], late)


async def answer(writer, delay, stats):
    """Holds one request for `delay` seconds, then answers it."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    stats.add("in_flight")
    try:
        await asyncio.sleep(delay)
        writer.write(REPLY)
        stats.answered(loop.time() - start - delay)
        await writer.drain()
    finally:
        stats.add("in_flight", -1)


async def serve(reader, writer, delay, stats):
    """One connection's requests, one after another, until the client closes it."""
    stats.add("connections")
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = CONTENT_LENGTH.search(head)
            if length:
                await reader.readexactly(int(length.group(1)))
            if head.startswith(b"GET /stats "):
                body = json.dumps(stats.counts).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
            else:
                await answer(writer, delay, stats)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        stats.add("connections", -1)
        writer.close()


async def main(port, delay):
    stats = Stats()
    server = await asyncio.start_server(lambda r, w: serve(r, w, delay, stats), "127.0.0.1",
                                        port, backlog=4096)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: slow_webhook.py PORT DELAY_SECONDS")
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
