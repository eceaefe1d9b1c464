#!/usr/bin/env python3
"""pmmap's benchmark; `make bench` builds ./pmmap and runs it. README.md, Performance,
says what it measures and why, and which environment variables change it.

Over loopback, against nginx as the webhook, at each concurrency: wrk's rate (the
loopback's limit), then BENCH_REPEAT rounds of bench/bare_loop.cpp with and without
pmmap's headers (the design's limit) and of a fresh pmmap on one job, timed from
POST /job to the last byte of GET /output, every output entry checked. Then the PUT
rate and a memory run. pmmap runs there without --data-dir, its job files under the
bench's temp dir (TMPDIR), on disk unless that is a tmpfs.

Then the durable runs, beside those: BENCH_REPEAT rounds at concurrency 32 of the bare
loop and of pmmap without --data-dir, with --data-dir --fsync everysec and with --fsync
always; the PUT rate of each; and a resume run, where a job of BENCH_BIG_N inputs is
killed at half its outcomes and resumed with maxsize 1000. Then the page: its first
load (GET / and the files it loads, over one connection, gzip as a browser asks), and
BENCH_REPEAT rounds at concurrency 32 of pmmap alone and of pmmap while a
`curl -N /events` stream is open.

Then the outage part (issue 14): a job of 20,000 inputs at concurrency 32, limited to
2,000 calls/s so that it lasts 10 s, whose webhook (an nginx of its own) is stopped
1.5 s in for 5 s and started again on the same port, once with the job's defaults (the
circuit breaker on) and once with max_outage_ms 0: failures, total time, circuit
openings. Then a latency-bound run: 4 jobs x 10,240 inputs at concurrency 1024 against
bench/slow_webhook.py, which answers after 1 s: inputs/s against the ideal 4,096/s, and
pmmap's peak RSS. BENCH_ONLY picks some of "main", "durable", "resume", "page" and
"outage" (all by default), and "shell" (only when named): the streamed NDJSON PUT's
ingest rate, a BENCH_SHELL_STREAM_N-line `curl -T` stream through a job of maxsize 1000
with pmmap's peak RSS, and `pmmap map` against the server on the same BENCH_N inputs.

Everything it starts is stopped and its temp dir removed on exit; it exits 1 if any
check failed.
"""

import collections
import concurrent.futures
import dataclasses
import datetime
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUE_BYTES = 80
BIG_CONCURRENCY = 32  # the memory run's
QUIET_PERCENT = 10  # the machine counts as idle when under this busy for a second
PUT_RATE_JOB = {"maxsize": 1000000, "rate_per_sec": 0.001}  # room for all; one call out
FSYNC_MODES = (None, "everysec", "always")  # pmmap without --data-dir, then durable with each
DURABLE_CONCURRENCY = 32  # the durable runs'
RESUME_MAXSIZE = 1000  # the resumed job's queue bound
RESUME_RSS_LIMIT_MB = 64  # issue 13's bound on the resumed job's peak RSS (MiB, as peak_rss_mb)
RESUME_START_SECONDS = 300  # the longest a restarted pmmap may take to load its jobs
PAGE_CONCURRENCY = 32  # the runs with and without an event stream open
PAGE_FILES = ("/", "/page/app.js", "/page/style.css")  # what a browser's first load fetches
DEFAULT_PARTS = ("main", "durable", "resume", "page", "outage")  # what runs without BENCH_ONLY
PARTS = DEFAULT_PARTS + ("shell",)  # what BENCH_ONLY may name
SHELL_STREAM_MAXSIZE = 1000  # the streamed job's queue bound
SHELL_CONCURRENCY = 32  # the streamed job's, and pmmap map's against the server
SHELL_RSS_LIMIT_MB = 64  # issue 16's bound on the streamed job's peak RSS (MiB)
CPUS = os.cpu_count()
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # /usr/sbin may not be on PATH


def log(message):
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Settings:
    n: int  # inputs per measurement
    big_n: int  # inputs of the memory run; 0 skips it
    concurrencies: list
    wrk_seconds: int
    repeat: int  # rounds per concurrency
    batch: int  # inputs per PUT
    maxsize: int  # the job's queue bound
    pin: bool  # nginx's worker on CPU 0, everything else on CPU 1
    quiet_wait: int  # most seconds to wait for an idle machine before a measurement
    pmmap: str
    only: frozenset  # of PARTS: the main table, the durable runs, the resume run, the page, outages, the shell
    shell_stream_n: int  # lines of the shell part's long stream


def read_settings(env):
    """The settings from the environment; exits with a message if one is wrong."""
    quick = env.get("BENCH_QUICK") == "1"

    def whole(name, default, least=0):
        text = env.get(name, str(default))
        if not text.isdigit() or int(text) < least:
            sys.exit(f"bench: {name} must be a whole number of at least {least}, not '{text}'")
        return int(text)

    n = whole("BENCH_N", 5000 if quick else 50000, 1)
    concurrencies = env.get("BENCH_CONCURRENCY", "1 32" if quick else "1 8 32 128").split()
    if not all(c.isdigit() and 1 <= int(c) <= n for c in concurrencies):
        sys.exit(f"bench: BENCH_CONCURRENCY must be numbers from 1 to BENCH_N ({n})")
    settings = Settings(
        n=n, big_n=whole("BENCH_BIG_N", 50000 if quick else 1000000),
        concurrencies=[int(c) for c in concurrencies],
        wrk_seconds=whole("BENCH_WRK_SECONDS", 3, 1), repeat=whole("BENCH_REPEAT", 5, 1),
        batch=whole("BENCH_BATCH", 1000, 1), maxsize=whole("BENCH_MAXSIZE", 1000, 1),
        pin=env.get("BENCH_PIN") == "1", quiet_wait=whole("BENCH_QUIET_WAIT", 60),
        pmmap=env.get("PMMAP_BIN", os.path.join(ROOT, "pmmap")),
        only=frozenset(env.get("BENCH_ONLY", " ".join(DEFAULT_PARTS)).split()),
        shell_stream_n=whole("BENCH_SHELL_STREAM_N", 200000 if quick else 5000000, 1))
    if not settings.only or not settings.only <= set(PARTS):
        sys.exit(f"bench: BENCH_ONLY must name some of {' '.join(PARTS)}")
    if settings.pin and CPUS < 2:
        sys.exit("bench: BENCH_PIN=1 needs 2 CPUs")
    if not os.access(settings.pmmap, os.X_OK):
        sys.exit(f"bench: {settings.pmmap} is missing: run 'make pmmap' (or 'make bench')")
    for tool in (NGINX, "wrk", "curl", "g++"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing: 'make bench' installs it")
    return settings


class Processes:
    """Everything the bench starts; whatever still runs is stopped on leaving the `with`."""

    def __init__(self):
        self.running = {}  # Popen -> what it is

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc in list(self.running):
            self.stop(proc, grace=5)

    def start(self, what, args, log_path, env=None):
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
        self.running[proc] = what
        return proc

    def run(self, what, args, log_path, timeout):
        """Runs a command to its end: its exit code (None if it timed out) and output."""
        proc = self.start(what, args, log_path)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.stop(proc)
        with open(log_path) as f:
            return proc.returncode, f.read()

    def stop(self, proc, grace=10):
        """SIGTERM, then SIGKILL if it still runs after `grace` seconds."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"bench: {self.running[proc]} {proc.pid} ignored SIGTERM; killing it")
                proc.kill()
                proc.wait()
        self.running.pop(proc, None)

    def kill(self, proc):
        """SIGKILL, as a crash would."""
        proc.kill()
        proc.wait()
        self.running.pop(proc, None)


@dataclasses.dataclass
class Rig:
    """What every measurement uses; `failures` and `noisy` are reported at the end."""
    settings: Settings
    procs: Processes
    tmp: str
    hook: str = ""  # the webhook's URL, without the key
    nginx_worker: int = 0
    bare_loop: str = ""
    wrk_script: str = ""
    batches: list = None  # the PUT bodies of BENCH_N inputs
    failures: list = dataclasses.field(default_factory=list)
    noisy: int = 0  # measurements started on a busy machine

    def fail(self, message):
        log(f"bench: FAIL: {message}")
        self.failures.append(message)


# --- what /proc tells ------------------------------------------------------------------


def cpu_seconds(pid, task=None):
    """User + system CPU seconds of a process (or of one of its threads), None if gone."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # stat's fields 14 and 15


def live_threads_cpu_seconds(pid):
    """CPU seconds of pid's threads still running. Once a job is done its workers have
    exited (one still exiting would count here), so for pmmap this is what its other
    threads used, and cpu_seconds minus it what the workers used."""
    return sum(cpu_seconds(pid, task) or 0 for task in os.listdir(f"/proc/{pid}/task"))


def machine_busy_seconds():
    """CPU seconds the whole machine spent busy, all CPUs (idle and iowait left out)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def peak_rss_mb(pid):
    """VmHWM of a live process in MB."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s*(\d+)", f.read()).group(1)) / 1024


def wait_quiet(rig, what):
    """Waits up to BENCH_QUIET_WAIT seconds for the machine to be idle for a second, so
    that a measurement does not share the CPUs with others' work."""
    start = time.monotonic()
    while rig.settings.quiet_wait > 0:
        busy0 = machine_busy_seconds()
        time.sleep(1)
        busy = (machine_busy_seconds() - busy0) * 100 / CPUS
        waited = time.monotonic() - start
        if busy < QUIET_PERCENT:
            return
        if waited >= rig.settings.quiet_wait:
            log(f"bench: the machine is still {busy:.0f}% busy after "
                f"{rig.settings.quiet_wait}s: measuring {what} anyway")
            rig.noisy += 1
            return
        if int(waited) % 10 == 0:
            log(f"bench: waiting for the machine to be idle ({busy:.0f}% busy)")


# --- inputs, HTTP and the output's check -----------------------------------------------


def value_of(i):
    """The ~80-byte value of input i: {"id":i,"payload":"xx...x"}."""
    return '{"id":%d,"payload":"%s"}' % (i, "x" * max(8, VALUE_BYTES - 20 - len(str(i))))


def make_batches(n, batch):
    """The PUT bodies of n inputs: JSON arrays of {"key":"k<i>","value":value_of(i)}."""
    return [("[" + ",\n".join('{"key":"k%d","value":%s}' % (i, value_of(i))
                              for i in range(first, min(n, first + batch))) + "]").encode()
            for first in range(0, n, batch)]


def request(port, method, path, body=None, timeout=30):
    """One request on a connection of its own: (status, reply body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


@dataclasses.dataclass
class Feed:
    statuses: collections.Counter
    put_seconds: list
    connects: int = 0  # connections opened
    complete: str = "not sent"  # POST /complete's status, or what went wrong
    cpu: float = 0.0  # the feeding thread's CPU seconds


def feed(port, job, batches, complete):
    """PUTs the batches in order over one kept-alive connection, as a client would (a PUT
    blocks while the job's queue is full), then POST /complete if `complete`."""
    cpu0 = time.thread_time()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    fed = Feed(collections.Counter(), [])
    try:
        for body in batches:
            fed.connects += conn.sock is None
            t0 = time.perf_counter()
            conn.request("PUT", f"/job/{job}/input", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            fed.put_seconds.append(time.perf_counter() - t0)
            fed.statuses[reply.status] += 1
        if complete:
            conn.request("POST", f"/job/{job}/complete")
            fed.complete = str(conn.getresponse().status)
    except (OSError, http.client.HTTPException) as e:
        fed.statuses[repr(e)] += 1
    conn.close()
    fed.cpu = time.thread_time() - cpu0
    return fed


def get_output(port, job):
    """GET /output, which waits for the job's end: (status, body, this thread's CPU)."""
    cpu0 = time.thread_time()
    try:
        status, body = request(port, "GET", f"/job/{job}/output", timeout=1800)
    except (OSError, http.client.HTTPException) as e:
        status, body = repr(e), b""
    return status, body, time.thread_time() - cpu0


def stream_output(rig, port, job):
    """Times one more GET of a done job's output with curl writing to /dev/null, so that
    what is timed is pmmap's streaming, not Python's reading of a chunked reply."""
    done = subprocess.run(["curl", "-sS", "--max-time", "1800", "-o", "/dev/null", "-w",
                           "%{http_code} %{size_download} %{time_total}",
                           f"http://127.0.0.1:{port}/job/{job}/output"],
                          capture_output=True, text=True)
    status, size, seconds = (done.stdout.split() + ["", "", ""])[:3]
    if status != "200":
        rig.fail(f"the second GET /output: {done.stdout} {done.stderr}")
        return "FAIL"
    mb = int(size) / 1048576
    return f"{mb:.1f} MB in {float(seconds):.3f} s = {mb / float(seconds):.0f} MB/s"


def check_output(data, n):
    """Checks a GET /output body: a JSON array of exactly n entries, keys k0 .. k<n-1>
    each once, every value {"ok":true,"key":<its key>}. Returns (ok, verdict)."""
    try:
        entries = json.loads(data)
    except ValueError as e:
        return False, f"the output is not JSON: {e}"
    if not isinstance(entries, list):
        return False, "the output is not a JSON array"
    seen = bytearray(n)
    problems = [] if len(entries) == n else [f"{len(entries)} entries, expected {n}"]
    for entry in entries:
        key = entry.get("key") if isinstance(entry, dict) else None
        value = entry.get("value") if isinstance(entry, dict) else None
        index = int(key[1:]) if isinstance(key, str) and re.fullmatch(r"k\d+", key) else -1
        if not 0 <= index < n:
            problems.append(f"unexpected key {key!r}")
        elif seen[index]:
            problems.append(f"key {key!r} twice")
        else:
            seen[index] = 1
        if not (isinstance(value, dict) and value.get("ok") is True and value.get("key") == key):
            problems.append('entry without {"ok":true,"key":...}: %.200s' % json.dumps(entry))
    if problems:
        return False, f"{len(problems)} problems; first: " + "; ".join(problems[:3])
    return True, f"ok: {n} entries, each key once, every value ok:true"


def describe_statuses(statuses):
    return " ".join(f"{count}x{status}" for status, count in sorted(statuses.items(), key=str))


# --- the webhook and the ceilings ------------------------------------------------------


def free_port():
    """A port free now on 127.0.0.1 (nginx would not say which one port 0 gave it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nginx(rig, prefix, port):
    """nginx with bench/nginx.conf in `prefix` on `port`, once it answers: its process,
    or None if it exited (see prefix/error.log). Launched again on the same prefix and
    port, it comes back as it was."""
    os.makedirs(prefix, exist_ok=True)
    with open(os.path.join(ROOT, "bench", "nginx.conf")) as f:
        conf = f.read().replace("@PREFIX@", prefix).replace("@PORT@", str(port))
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(conf)
    proc = rig.procs.start("nginx", [NGINX, "-p", prefix, "-c", f"{prefix}/nginx.conf",
                                     "-e", f"{prefix}/error.log"], f"{prefix}/stdout.log")
    for _ in range(100):
        try:
            request(port, "POST", "/hook/probe", b"{}", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    rig.procs.stop(proc)
    return None


def start_nginx(rig):
    """Starts nginx with bench/nginx.conf on a free port, once it answers; sets rig.hook."""
    prefix, port = os.path.join(rig.tmp, "nginx"), free_port()
    proc = launch_nginx(rig, prefix, port)
    if proc is None:
        sys.exit(f"bench: nginx did not start; see {prefix}/error.log")
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        rig.nginx_worker = int(f.read().split()[0])
    rig.hook = f"http://127.0.0.1:{port}/hook"
    check_webhook(port)


def check_webhook(port):
    """The webhook answers as pmmap's contract says, twice on one kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    replies = []
    for i in (1, 2):
        conn.request("POST", f"/hook/k{i}", value_of(i), {"Content-Type": "application/json"})
        replies.append(conn.getresponse().read())
    kept = conn.sock is not None
    conn.close()
    if replies != [b'{"ok":true,"key":"k1"}', b'{"ok":true,"key":"k2"}'] or not kept:
        sys.exit(f"bench: the webhook misbehaved: {replies}, connection kept: {kept}")


def build_tools(rig):
    """Builds bare_loop and writes wrk's script, into the temp dir."""
    rig.bare_loop = os.path.join(rig.tmp, "bare_loop")
    subprocess.run(["g++", "-O2", "-std=c++17", "-Wall", "-Wextra",
                    os.path.join(ROOT, "bench", "bare_loop.cpp"), "-o", rig.bare_loop,
                    "-lcurl", "-pthread"], check=True)
    rig.wrk_script = os.path.join(rig.tmp, "post.lua")
    with open(rig.wrk_script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = \'{value_of(12345)}\'\n'
                'wrk.headers["Content-Type"] = "application/json"\n')


def wrk_rps(rig, c):
    """The loopback's limit at c connections: wrk's req/s, or None."""
    seconds = rig.settings.wrk_seconds
    rc, text = rig.procs.run("wrk", ["wrk", "-t1", f"-c{c}", f"-d{seconds}s", "-s",
                                     rig.wrk_script, f"{rig.hook}/k12345"],
                             os.path.join(rig.tmp, "wrk.out"), timeout=seconds + 60)
    errors = re.findall(r"^\s*(?:Non-2xx|Socket errors).*$", text, re.M)
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    if rc != 0 or errors or not rps:
        rig.fail(f"wrk -c{c} exited with {rc}: {' '.join(errors) or text[:500]}")
    return round(float(rps.group(1))) if rc == 0 and rps else None


@dataclasses.dataclass
class Bare:
    rps: int = None
    cpu: float = None  # its own CPU seconds
    detail: str = ""


def bare_rps(rig, c, headers):
    """The design's limit at c threads, with pmmap's headers ("contract") or without
    ("plain"): bare_loop's req/s and CPU."""
    busy0, t0 = machine_busy_seconds(), time.perf_counter()
    rc, text = rig.procs.run("bare_loop", [rig.bare_loop, rig.hook, str(c), str(rig.settings.n),
                                           headers],
                             os.path.join(rig.tmp, "bare.out"), timeout=900)
    busy, wall = machine_busy_seconds() - busy0, time.perf_counter() - t0
    fields = dict(re.findall(r"(\w+)=([0-9.]+)", text))
    if rc != 0 or "rps" not in fields or "cpu" not in fields:
        rig.fail(f"bare_loop -c{c} exited with {rc}: {text[:500]}")
        return Bare()
    return Bare(int(fields["rps"]), float(fields["cpu"]),
                f"its CPU {fields['cpu']} s, machine busy {busy:.2f} of {wall * CPUS:.2f} CPU s")


# --- one pmmap run ---------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One pmmap run's results; ips is None if the run or its output failed."""
    ips: int = None
    rss: float = None  # peak, MB
    cpu: float = None
    cpu_per_k: float = None
    put_ms: float = None  # the mean PUT's
    stream: str = ""
    detail: str = ""


def pmmap_command(rig, run_dir, fsync):
    """pmmap's arguments and environment. Without `fsync` it runs as it does without
    --data-dir: its job files in a fresh folder under $TMPDIR, here run_dir, on the same
    disk as the bench's temp dir (not a tmpfs), removed on exit. With `fsync` ("everysec"
    or "always") its jobs are durable, in run_dir/data."""
    args = [rig.settings.pmmap, "--listen", "127.0.0.1:0"]
    env = {k: v for k, v in os.environ.items() if k != "PMMAP_DATA_DIR"}
    if fsync is None:
        return args, dict(env, TMPDIR=run_dir)
    return args + ["--data-dir", os.path.join(run_dir, "data"), "--fsync", fsync], env


def wait_for_port(proc, log_path, pattern, wait_seconds):
    """Waits until a process we started logs `pattern` (a regex whose group 1 is a port):
    (port, the log so far); port None if it exited or the wait ran out first."""
    deadline = time.monotonic() + wait_seconds
    while True:
        with open(log_path) as f:
            text = f.read()
        port = re.search(pattern, text)
        if port:
            return int(port.group(1)), text
        if proc.poll() is not None or time.monotonic() > deadline:
            return None, text
        time.sleep(0.05)


def start_pmmap(rig, run_dir, fsync=None, log_name="pmmap.log", wait_seconds=10):
    """A pmmap on a free port with its data in run_dir (see pmmap_command), once it says
    where it listens, which a durable one does after loading the jobs it finds there:
    (process, port) or None."""
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, log_name)
    args, env = pmmap_command(rig, run_dir, fsync)
    proc = rig.procs.start("pmmap", args, log_path, env)
    port, text = wait_for_port(proc, log_path, r"listening on http://127\.0\.0\.1:(\d+)",
                               wait_seconds)
    if port is not None:
        return proc, port
    rig.fail(f"pmmap did not start: {text}")
    rig.procs.stop(proc)
    return None


def post_job(rig, port, fields):
    """POST /job with these fields, to rig.hook unless they name a url: the new job's id,
    or None."""
    body = json.dumps({"url": rig.hook, **fields}, separators=(",", ":")).encode()
    try:
        status, reply = request(port, "POST", "/job", body)
        return json.loads(reply)["id"] if status == 201 else None
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        return None


def timed_job(rig, port, c, batches, **fields):
    """The timed part, from POST /job (with these fields beside c and BENCH_MAXSIZE) to
    the last byte of GET /output, while one thread PUTs the batches and says complete and
    another waits for the output: (seconds, job, Feed, (status, output, CPU)), or None if
    POST /job failed."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        t0 = time.perf_counter()
        job = post_job(rig, port, {"concurrency": c, "maxsize": rig.settings.maxsize, **fields})
        if job is None:
            return None
        feeding = pool.submit(feed, port, job, batches, True)
        output = pool.submit(get_output, port, job)
        fed, got = feeding.result(), output.result()
        return time.perf_counter() - t0, job, fed, got


def run_pmmap(rig, label, c, n, batches, stream=False, fsync=None, watch=False):
    """A fresh pmmap, one job of n inputs at concurrency c, checked; where the CPU went.
    With `stream`, also times one more GET /output of the done job; with `fsync`, pmmap
    is durable (see pmmap_command); with `watch`, a `curl -N /events` reads the jobs'
    event stream throughout, as the page does."""
    run_dir = os.path.join(rig.tmp, f"run-{label}")
    started = start_pmmap(rig, run_dir, fsync)
    if started is None:
        return Run()
    proc, port = started
    watcher = None
    if watch:
        watcher = rig.procs.start("curl -N /events", ["curl", "-sN", "-o", os.path.join(run_dir, "events"),
                                                    f"http://127.0.0.1:{port}/events"],
                                  os.path.join(run_dir, "curl.log"))
        # Timed once the stream is open and has shown its first snapshot.
        events_path, deadline = os.path.join(run_dir, "events"), time.monotonic() + 5
        while time.monotonic() < deadline and not (
                os.path.exists(events_path) and b"data: " in open(events_path, "rb").read()):
            time.sleep(0.01)
    nginx_cpu0, busy0 = cpu_seconds(rig.nginx_worker), machine_busy_seconds()
    timed = timed_job(rig, port, c, batches)
    if timed is None:
        rig.fail(f"POST /job ({label}) failed")
        rig.procs.stop(proc)
        return Run()
    seconds, job, fed, (get_status, output, get_cpu) = timed
    if fed.statuses != {201: len(batches)} or fed.complete != "200" or get_status != 200:
        rig.fail(f"pmmap ({label}): PUTs {describe_statuses(fed.statuses)}, complete "
                 f"{fed.complete}, GET /output {get_status} {output[:300]}")
    run = Run(put_ms=statistics.mean(fed.put_seconds) * 1000 if fed.put_seconds else None)
    if stream:
        run.stream = stream_output(rig, port, job)
    run.rss, run.cpu, cpu_rest = last_readings(rig, proc, run_dir)
    nginx_cpu = (cpu_seconds(rig.nginx_worker) or 0) - (nginx_cpu0 or 0)
    busy = machine_busy_seconds() - busy0
    if watcher is not None:
        rig.procs.stop(watcher)
        with open(os.path.join(run_dir, "events"), "rb") as f:
            if b"data: " not in f.read():
                rig.fail(f"pmmap ({label}): the event stream showed no snapshot")
    rig.procs.stop(proc)
    shutil.rmtree(run_dir)
    ok, verdict = check_output(output, n)
    if not ok:
        rig.fail(f"pmmap's output ({label}): {verdict}")
    run.ips = round(n / seconds) if ok else None
    cpu = run.cpu or 0
    run.cpu_per_k = cpu / n * 1000 if run.cpu is not None else None
    run.detail = (
        f"{n} inputs in {seconds:.3f} s; pmmap CPU {cpu:.2f} s ({cpu / seconds:.0%} of a core;"
        f" workers {cpu - cpu_rest:.2f} s, other threads {cpu_rest:.2f} s), clients (PUT and"
        f" GET threads) CPU {fed.cpu + get_cpu:.2f} s, nginx worker CPU {nginx_cpu:.2f} s,"
        f" machine busy {busy:.2f} of {seconds * CPUS:.2f} CPU s; {len(batches)} PUTs"
        f" ({describe_statuses(fed.statuses)}, mean {run.put_ms or 0:.1f} ms, max"
        f" {max(fed.put_seconds, default=0) * 1000:.1f} ms), {fed.connects} new connection(s);"
        f" output {len(output) / 1048576:.1f} MB; {verdict}")
    return run


def last_readings(rig, proc, run_dir, log_name="pmmap.log"):
    """pmmap's peak RSS, CPU and its live threads' CPU, read just before it is stopped;
    Nones and a failure if it already exited."""
    if proc.poll() is None:
        return peak_rss_mb(proc.pid), cpu_seconds(proc.pid), live_threads_cpu_seconds(proc.pid)
    with open(os.path.join(run_dir, log_name)) as f:
        rig.fail(f"pmmap exited before the end: {f.read()[-500:]}")
    return None, None, 0


# --- the measurements ------------------------------------------------------------------


def fmt(value, spec="", none="NA"):
    return none if value is None else format(value, spec)


def median(values):
    """The median (the lower of the middle two) of the values that are not None."""
    values = [v for v in values if v is not None]
    return statistics.median_low(values) if values else None


def ratio(a, b):
    """a / b to three places, or None if either is missing or b is zero."""
    return round(a / b, 3) if a is not None and b else None


@dataclasses.dataclass
class Row:
    """One concurrency's line of the table, in its order."""
    c: int
    wrk: int
    bare: int
    plain: int
    ips: int
    ratio_bare: float
    ratio_plain: float
    ratio_wrk: float
    ratio_cpu: float
    rss: float
    cpu_per_k: float
    put_ms: float


def measure_round(rig, c, round_number):
    """One round at concurrency c: the bare loop, the plain bare loop, pmmap."""
    log(f"bench: concurrency {c}, round {round_number} of {rig.settings.repeat}: bare loop, "
        "bare loop without pmmap's headers, pmmap")
    wait_quiet(rig, f"bare_loop -c{c}")
    bare = bare_rps(rig, c, "contract")
    wait_quiet(rig, f"bare_loop -c{c} plain")
    plain = bare_rps(rig, c, "plain")
    wait_quiet(rig, f"pmmap -c{c}")
    run = run_pmmap(rig, f"c{c}-{round_number}", c, rig.settings.n, rig.batches)
    print(f"concurrency {c}, round {round_number}: bare loop {fmt(bare.rps)} req/s "
          f"({fmt(plain.rps)} without pmmap's headers), pmmap {fmt(run.ips, '', 'FAIL')} inputs/s")
    print(f"  bare loop: {bare.detail}\n  pmmap: {run.detail}", flush=True)
    return bare, plain, run


def measure_concurrency(rig, c):
    """wrk once, then BENCH_REPEAT rounds. Rates are medians; ratios are the medians of
    the rounds' own ratios, since a round's runs follow each other within seconds while
    a shared machine's speed drifts between rounds. pmmap's CPU over the bare loop's is
    what pmmap adds around the same calls, whatever the clients beside it cost."""
    log(f"bench: concurrency {c}: wrk")
    wait_quiet(rig, f"wrk -c{c}")
    wrk = wrk_rps(rig, c)
    rounds = [measure_round(rig, c, r) for r in range(1, rig.settings.repeat + 1)]
    bares, plains, runs = zip(*rounds)
    by_bare = [ratio(run.ips, bare.rps) for bare, _, run in rounds]
    by_cpu = [ratio(run.cpu, bare.cpu) for bare, _, run in rounds]
    ips = median(run.ips for run in runs)
    row = Row(c, wrk, median(b.rps for b in bares), median(p.rps for p in plains), ips,
              median(by_bare), median(ratio(run.ips, p.rps) for _, p, run in rounds),
              ratio(ips, wrk), median(by_cpu), max((r.rss for r in runs if r.rss), default=None),
              median(run.cpu_per_k for run in runs), median(run.put_ms for run in runs))

    def listed(values, spec=""):
        return " ".join(fmt(v, spec) for v in values)

    print(f"concurrency {c}, medians of {rig.settings.repeat}: wrk {fmt(wrk)} req/s, bare loop "
          f"{fmt(row.bare)} req/s ({fmt(row.plain)} without pmmap's headers), pmmap "
          f"{fmt(ips)} inputs/s")
    print(f"  bare loop: {listed(b.rps for b in bares)}; plain: {listed(p.rps for p in plains)};"
          f" pmmap: {listed(run.ips for run in runs)}")
    print(f"  pmmap/bare by round: {listed(by_bare, '.3f')} (median {fmt(row.ratio_bare, '.2f')};"
          f" the ratio of the medians: {fmt(ratio(ips, row.bare), '.2f')})")
    print(f"  pmmap's CPU / the bare loop's CPU by round: {listed(by_cpu, '.3f')} "
          f"(median {fmt(row.ratio_cpu, '.2f')})", flush=True)
    return row


def put_rate(rig, fsync=None):
    """PUT /input alone: N inputs into a job whose queue never fills and whose rate limit
    lets one call out, so what is timed is reading, parsing, validating, journaling if
    `fsync` makes pmmap durable, and queuing, over one connection. Inputs/s, or None."""
    what = f"the PUT rate ({mode_name(fsync)})"
    wait_quiet(rig, what)
    run_dir = os.path.join(rig.tmp, f"run-put-{fsync or 'none'}")
    proc, port = start_pmmap(rig, run_dir, fsync) or (None, None)
    job = post_job(rig, port, PUT_RATE_JOB) if proc else None
    if job is None:
        rig.fail(f"{what}: pmmap did not start or refused POST /job")
        return None
    t0 = time.perf_counter()
    fed = feed(port, job, rig.batches, complete=False)
    seconds = time.perf_counter() - t0
    rig.procs.stop(proc)
    shutil.rmtree(run_dir)
    if fed.statuses != {201: len(rig.batches)}:
        rig.fail(f"{what}: statuses {describe_statuses(fed.statuses)}")
        return None
    rate = round(rig.settings.n / seconds)
    print(f"PUT /input with room in the queue, {mode_name(fsync)}: {rig.settings.n} inputs in "
          f"{seconds:.3f} s = {rate} inputs/s ({describe_statuses(fed.statuses)})", flush=True)
    return rate


def memory_run(rig):
    """BENCH_BIG_N inputs at concurrency 32: the peak RSS, and how fast the done job's
    whole output streams."""
    n = rig.settings.big_n
    log(f"bench: memory run: {n} inputs at concurrency {BIG_CONCURRENCY}")
    batches = make_batches(n, rig.settings.batch)
    wait_quiet(rig, "the memory run")
    run = run_pmmap(rig, "big", BIG_CONCURRENCY, n, batches, stream=True)
    print(f"memory run: {n} inputs at concurrency {BIG_CONCURRENCY}: {fmt(run.ips, '', 'FAIL')}"
          f" inputs/s, peak RSS {fmt(run.rss, '.1f')} MB, CPU {fmt(run.cpu_per_k, '.3f')} s per"
          f" 1000 inputs\n  pmmap: {run.detail}\n"
          f"  streaming the whole output of the done job once: {run.stream}", flush=True)
    return run


# --- the durable runs ------------------------------------------------------------------


def mode_name(fsync):
    return "no --data-dir" if fsync is None else f"--data-dir, --fsync {fsync}"


def measure_durable_round(rig, round_number):
    """One round at concurrency 32: the bare loop, then a fresh pmmap in each of
    FSYNC_MODES on one job of N inputs: (Bare, {fsync: Run})."""
    c = DURABLE_CONCURRENCY
    log(f"bench: durable, round {round_number} of {rig.settings.repeat}: bare loop, then pmmap"
        " without --data-dir, with --fsync everysec and with --fsync always")
    wait_quiet(rig, f"bare_loop -c{c}")
    bare = bare_rps(rig, c, "contract")
    runs = {}
    for fsync in FSYNC_MODES:
        wait_quiet(rig, f"pmmap -c{c} ({mode_name(fsync)})")
        runs[fsync] = run_pmmap(rig, f"durable-{fsync or 'none'}-{round_number}", c,
                                rig.settings.n, rig.batches, fsync=fsync)
    print(f"durable, round {round_number}: bare loop {fmt(bare.rps)} req/s; pmmap inputs/s: "
          + ", ".join(f"{mode_name(f)} {fmt(run.ips, '', 'FAIL')}" for f, run in runs.items()))
    for fsync, run in runs.items():
        print(f"  pmmap, {mode_name(fsync)}: {run.detail}", flush=True)
    return bare, runs


@dataclasses.dataclass
class DurableRow:
    """One mode's line of the durable table, in its order."""
    mode: str
    ips: int
    ratio_bare: float
    ratio_volatile: float  # to pmmap without --data-dir, in the same round
    rss: float
    put_rate: int


def measure_durable(rig, put_rates):
    """BENCH_REPEAT rounds at concurrency 32, one row per mode: the median rate, the
    medians of the rounds' own ratios, the highest peak RSS, the mode's PUT rate."""
    rounds = [measure_durable_round(rig, r) for r in range(1, rig.settings.repeat + 1)]
    rows = []
    for fsync in FSYNC_MODES:
        by_bare = [ratio(runs[fsync].ips, bare.rps) for bare, runs in rounds]
        by_volatile = [ratio(runs[fsync].ips, runs[None].ips) for _, runs in rounds]
        ips = [runs[fsync].ips for _, runs in rounds]
        rows.append(DurableRow(mode_name(fsync), median(ips), median(by_bare),
                               median(by_volatile),
                               max((runs[fsync].rss or 0 for _, runs in rounds), default=None),
                               put_rates.get(fsync)))
        print(f"durable, {mode_name(fsync)}: inputs/s {' '.join(fmt(v) for v in ips)}; "
              f"pmmap/bare by round {' '.join(fmt(v, '.3f') for v in by_bare)} (median "
              f"{fmt(rows[-1].ratio_bare, '.2f')}); / no --data-dir by round "
              f"{' '.join(fmt(v, '.3f') for v in by_volatile)}", flush=True)
    return rows


# --- the resume run --------------------------------------------------------------------


@dataclasses.dataclass
class Resumed:
    """The resume run's results; None where it failed before."""
    journaled: int = None  # inputs in the journal when pmmap was killed
    stored: int = None  # outcomes on disk then
    start_s: float = None  # from the restart to /healthz's 200
    start_rss: float = None  # peak RSS by then, MB
    finish_s: float = None  # from the restart to the last byte of GET /output
    rss: float = None  # peak RSS from the restart to the end, MB
    verdict: str = "not run"


def fill_and_kill(rig, run_dir, n, batches):
    """A durable pmmap, one job at concurrency 32 with room for all n inputs, PUT and
    completed; SIGKILL once half its outcomes are stored. The job's id, or None."""
    proc, port = start_pmmap(rig, run_dir, "everysec") or (None, None)
    job = post_job(rig, port, {"concurrency": DURABLE_CONCURRENCY, "maxsize": n}) if proc else None
    if job is None:
        rig.fail("resume run: pmmap did not start or refused POST /job")
        return None
    fed = feed(port, job, batches, complete=True)
    while fed.statuses == {201: len(batches)} and fed.complete == "200":
        try:
            status, reply = request(port, "GET", f"/job/{job}")
            if status != 200 or json.loads(reply)["outputs"] >= n // 2:
                break
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            break
        time.sleep(0.02)
    rig.procs.kill(proc)
    if fed.statuses != {201: len(batches)} or fed.complete != "200":
        rig.fail(f"resume run: PUTs {describe_statuses(fed.statuses)}, complete {fed.complete}")
        return None
    return job


def shrink_queue(data_dir, job, maxsize):
    """Sets the job's maxsize in its record ({id}.job, JSON) while pmmap is down. Had the
    job had this maxsize from the start, each PUT would have waited for room in its queue,
    and the journal would never have run far ahead of the outcomes; this way the restart
    resumes a long journal through a short queue."""
    path = os.path.join(data_dir, f"{job}.job")
    with open(path) as f:
        record = json.load(f)
    record["options"]["maxsize"] = maxsize
    with open(path, "w") as f:
        json.dump(record, f, separators=(",", ":"))


def count_lines(path):
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def resume_and_finish(rig, run_dir, job, n, resumed):
    """Restarts pmmap on run_dir's data and times it to /healthz and to the end of the
    job's output, reading its peak RSS at both; checks the output. Fills in `resumed`."""
    t0 = time.perf_counter()
    proc, port = start_pmmap(rig, run_dir, "everysec", "pmmap-resumed.log",
                             RESUME_START_SECONDS) or (None, None)
    if proc is None:
        return
    if request(port, "GET", "/healthz")[0] != 200:  # it listens: it answers
        rig.fail("resume run: /healthz did not answer 200")
    resumed.start_s = time.perf_counter() - t0
    resumed.start_rss = peak_rss_mb(proc.pid)
    status, output, _ = get_output(port, job)
    resumed.finish_s = time.perf_counter() - t0
    resumed.rss, _, _ = last_readings(rig, proc, run_dir, "pmmap-resumed.log")
    rig.procs.stop(proc)
    ok, resumed.verdict = check_output(output, n) if status == 200 else (
        False, f"GET /output: {status} {output[:300]}")
    if not ok:
        rig.fail(f"resume run: {resumed.verdict}")


def resume_run(rig):
    """BENCH_BIG_N inputs journaled, half their outcomes stored, pmmap killed; the job
    resumed with maxsize 1000, whose RSS issue 13 bounds (RESUME_RSS_LIMIT_MB)."""
    n = rig.settings.big_n
    log(f"bench: resume run: {n} inputs, pmmap killed at half of them, resumed with maxsize"
        f" {RESUME_MAXSIZE}")
    run_dir, resumed = os.path.join(rig.tmp, "run-resume"), Resumed()
    data_dir = os.path.join(run_dir, "data")
    job = fill_and_kill(rig, run_dir, n, make_batches(n, rig.settings.batch))
    if job is None:
        return resumed
    shrink_queue(data_dir, job, RESUME_MAXSIZE)
    resumed.journaled, resumed.stored = n, count_lines(os.path.join(data_dir, f"{job}.ndjson"))
    wait_quiet(rig, "the resumed pmmap")
    resume_and_finish(rig, run_dir, job, n, resumed)
    shutil.rmtree(run_dir)
    print(f"resume run: {resumed.journaled} inputs journaled, {resumed.stored} outcomes stored "
          f"at the kill; restarted with maxsize {RESUME_MAXSIZE}: /healthz after "
          f"{fmt(resumed.start_s, '.2f')} s (peak RSS {fmt(resumed.start_rss, '.1f')} MB), the "
          f"whole output after {fmt(resumed.finish_s, '.2f')} s (peak RSS "
          f"{fmt(resumed.rss, '.1f')} MB, bound {RESUME_RSS_LIMIT_MB}); {resumed.verdict}",
          flush=True)
    return resumed


# --- the outage part: a webhook that stops for a while, and one that answers slowly -----

OUTAGE_N, OUTAGE_CONCURRENCY = 20000, 32
OUTAGE_RATE = 2000  # calls/s: unthrottled, nginx would see all 20,000 in half a second
OUTAGE_AT, OUTAGE_SECONDS = 1.5, 5.0  # the webhook stops this long into the job, this long
OUTAGE_JOBS = (("breaker on (defaults)", {}), ("max_outage_ms 0", {"max_outage_ms": 0}))
SLOW_JOBS, SLOW_CONCURRENCY, SLOW_N, SLOW_DELAY = 4, 1024, 10240, 1.0
SLOW_IDEAL = SLOW_JOBS * SLOW_CONCURRENCY / SLOW_DELAY  # calls/s


@dataclasses.dataclass
class OutageRow:
    """One outage run's line of its table."""
    label: str
    failed: int = None
    seconds: float = None  # POST /job to the output's last byte
    openings: int = None  # pmmap_circuit_openings_total
    refused: int = None  # pmmap_circuit_refused_total
    retries: int = None


@dataclasses.dataclass
class LatencyRow:
    """The latency-bound run's line of its table."""
    label: str
    rate: int = None  # inputs/s over all the jobs
    ratio_ideal: float = None  # to SLOW_IDEAL
    rss: float = None  # pmmap's peak, MB
    failed: int = None
    hook_max_in_flight: int = None  # the webhook's own count


def port_below_ephemeral():
    """A free port below the kernel's ephemeral range: while the webhook on it is down,
    none of pmmap's connects can take it as its own end (or connect to itself on it)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for port in random.sample(range(max(1024, low - 10000), low), 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    return free_port()


def metrics(port):
    """GET /metrics as {'name{labels}': value}."""
    status, body = request(port, "GET", "/metrics")
    lines = body.decode().splitlines() if status == 200 else []
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def tally_output(data, n):
    """A GET /output body whose entries should be keys k0 .. k<n-1>, each once:
    (successes, failures, a Counter of the failures' messages, problems or "")."""
    try:
        entries = json.loads(data)
        keys = {entry["key"] for entry in entries}
        errors = collections.Counter(e["error"]["message"] for e in entries if "error" in e)
    except (ValueError, TypeError, KeyError) as e:
        return None, None, collections.Counter(), f"the output is not a list of entries: {e!r}"
    problem = "" if len(entries) == n and keys == {f"k{i}" for i in range(n)} else (
        f"{len(entries)} entries of {len(keys)} keys, expected k0 .. k{n - 1} once each")
    return len(entries) - sum(errors.values()), sum(errors.values()), errors, problem


def watch_job(port, running):
    """Polls GET /jobs every 0.1 s while `running` (a future) runs: the first job's
    circuit changes, as "at s: circuit (effective concurrency, outputs)"."""
    t0, last, changes = time.perf_counter(), None, []
    while not running.done():
        try:
            job = json.loads(request(port, "GET", "/jobs", timeout=5)[1])[0]
        except (OSError, http.client.HTTPException, ValueError, IndexError):
            job = None
        if job and job["circuit"] != last:
            last = job["circuit"]
            changes.append(f"{time.perf_counter() - t0:.1f}s {last} (effective "
                           f"{job['effective_concurrency']}, {job['outputs']} outputs)")
        time.sleep(0.1)
    return changes


def take_webhook_down(rig, nginx, prefix, port, t0):
    """OUTAGE_AT s after t0, stops the outage run's nginx for OUTAGE_SECONDS and launches
    it again on the same port: (the new nginx or None, when it went down and came back
    up, in seconds after t0)."""
    time.sleep(max(0.0, t0 + OUTAGE_AT - time.perf_counter()))
    rig.procs.stop(nginx)
    down = time.perf_counter() - t0
    time.sleep(OUTAGE_SECONDS)
    nginx = launch_nginx(rig, prefix, port)
    if nginx is None:
        rig.fail(f"the outage run's nginx did not come back on port {port}; see {prefix}")
    return nginx, down, time.perf_counter() - t0


def outage_run(rig, index, label, fields):
    """A fresh pmmap and a nginx of its own; one job of OUTAGE_N inputs at concurrency 32
    and OUTAGE_RATE calls/s with these fields, whose webhook stops OUTAGE_AT s in for
    OUTAGE_SECONDS: OutageRow."""
    log(f"bench: outage run, {label}: {OUTAGE_N} inputs at concurrency {OUTAGE_CONCURRENCY}"
        f" and {OUTAGE_RATE} calls/s, the webhook down {OUTAGE_SECONDS:g} s from "
        f"{OUTAGE_AT:g} s in")
    run_dir = os.path.join(rig.tmp, f"run-outage-{index}")
    hook_port, prefix = port_below_ephemeral(), os.path.join(run_dir, "nginx")
    nginx = launch_nginx(rig, prefix, hook_port)
    started = start_pmmap(rig, run_dir) if nginx else None
    if started is None:
        rig.fail(f"outage run, {label}: nginx or pmmap did not start")
        return OutageRow(label)
    proc, port = started
    fields = dict(fields, url=f"http://127.0.0.1:{hook_port}/hook", rate_per_sec=OUTAGE_RATE)
    batches = make_batches(OUTAGE_N, rig.settings.batch)
    wait_quiet(rig, f"the outage run ({label})")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        t0 = time.perf_counter()
        running = pool.submit(timed_job, rig, port, OUTAGE_CONCURRENCY, batches, **fields)
        watching = pool.submit(watch_job, port, running)
        nginx, down, up = take_webhook_down(rig, nginx, prefix, hook_port, t0)
        if nginx is None:  # or the job would wait max_outage_ms for it
            rig.procs.stop(proc)
        timed, changes = running.result(), watching.result()
    timeline = (f"the webhook went down at {down:.2f} s and answered again at {up:.2f} s; "
                f"the circuit by GET /jobs: {', '.join(changes) or 'no reading'}")
    row = report_outage_run(rig, label, fields, (proc, port), run_dir, timed, timeline)
    if nginx:
        rig.procs.stop(nginx)
    shutil.rmtree(run_dir)
    return row


def report_outage_run(rig, label, fields, pmmap, run_dir, timed, timeline):
    """Reads what the outage run's pmmap says (output, job, metrics, log), prints it with
    the timeline and stops that pmmap: OutageRow. A failure with the breaker on is a
    failed check."""
    (proc, port), row = pmmap, OutageRow(label)
    if timed is None or proc.poll() is not None:
        rig.fail(f"outage run, {label}: POST /job failed or pmmap stopped")
        rig.procs.stop(proc)
        return row
    row.seconds, job, fed, (status, output, _) = timed
    counts, job_json = metrics(port), request(port, "GET", f"/job/{job}")[1].decode().strip()
    rig.procs.stop(proc)
    ok, row.failed, errors, problem = tally_output(output, OUTAGE_N)
    if fed.statuses != {201: len(fed.put_seconds)} or fed.complete != "200" or status != 200:
        problem += f"; PUTs {describe_statuses(fed.statuses)}, complete {fed.complete}, " \
                   f"GET /output {status}"
    if problem or (row.failed and "max_outage_ms" not in fields):
        rig.fail(f"outage run, {label}: {row.failed} failed {problem}")
    row.openings = int(counts.get("pmmap_circuit_openings_total", -1))
    row.refused = int(counts.get("pmmap_circuit_refused_total", -1))
    row.retries = json.loads(job_json)["retries"]
    with open(os.path.join(run_dir, "pmmap.log")) as f:
        circuit_log = [line.rstrip() for line in f if "circuit" in line]
    ideal = OUTAGE_N / OUTAGE_RATE + OUTAGE_SECONDS
    print(f"outage run, {label}: {OUTAGE_N} inputs, {ok} succeeded, {row.failed} failed, in "
          f"{row.seconds:.2f} s ({row.seconds - ideal:+.2f} s beyond the {ideal:g} s of the "
          f"rate limit plus the outage); circuit openings {row.openings}, calls refused by the"
          f" circuit {row.refused}, retries {row.retries}\n  {timeline}")
    print(f"  failures by message: {dict(errors.most_common(3))}" if errors else "  no failures")
    print(f"  pmmap's log about the circuit ({len(circuit_log)} lines): "
          + " | ".join(circuit_log[:4] + (["..."] + circuit_log[-2:] if len(circuit_log) > 6
                                          else circuit_log[4:])))
    print(f"  the job at its end: {job_json}", flush=True)
    return row


def raise_file_limit(needed):
    """Raises RLIMIT_NOFILE's soft limit to `needed` where the hard limit allows, for
    this process and the ones it starts from now on: the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def start_slow_webhook(rig, run_dir):
    """bench/slow_webhook.py, answering after SLOW_DELAY s, on a free port: (process,
    port) or None."""
    log_path = os.path.join(run_dir, "slow_webhook.log")
    proc = rig.procs.start("slow webhook", [sys.executable, "-u",
                                            os.path.join(ROOT, "bench", "slow_webhook.py"),
                                            "0", str(SLOW_DELAY)], log_path)
    port, text = wait_for_port(proc, log_path, r"listening on (\d+)", 10)
    if port is None:
        rig.fail(f"the slow webhook did not start: {text[-500:]}")
        rig.procs.stop(proc)
        return None
    return proc, port


def latency_jobs(rig, port, hook):
    """SLOW_JOBS jobs at once, each of SLOW_N inputs at SLOW_CONCURRENCY: (seconds from
    the first POST /job to the end of the last output, [timed_job's answer per job])."""
    batches = make_batches(SLOW_N, rig.settings.batch)
    with concurrent.futures.ThreadPoolExecutor(SLOW_JOBS) as pool:
        t0 = time.perf_counter()
        runs = [pool.submit(timed_job, rig, port, SLOW_CONCURRENCY, batches, url=hook)
                for _ in range(SLOW_JOBS)]
        timed = [run.result() for run in runs]
    return time.perf_counter() - t0, timed


def latency_run(rig):
    """SLOW_JOBS jobs x SLOW_CONCURRENCY on one fresh pmmap against a webhook that
    answers after SLOW_DELAY s: inputs/s against SLOW_IDEAL, peak RSS. LatencyRow."""
    row = LatencyRow(f"{SLOW_JOBS} jobs x {SLOW_N} inputs, concurrency {SLOW_CONCURRENCY}")
    log(f"bench: latency-bound run: {row.label}, the webhook answering after {SLOW_DELAY:g} s")
    files = raise_file_limit(2 * SLOW_JOBS * SLOW_CONCURRENCY + 1024)
    run_dir = os.path.join(rig.tmp, "run-latency")
    os.makedirs(run_dir)
    hook = start_slow_webhook(rig, run_dir)
    started = start_pmmap(rig, run_dir) if hook else None
    if started is None:
        return row
    (hook_proc, hook_port), (proc, port) = hook, started
    wait_quiet(rig, "the latency-bound run")
    hook_cpu0 = cpu_seconds(hook_proc.pid)
    seconds, timed = latency_jobs(rig, port, f"http://127.0.0.1:{hook_port}/hook")
    hook_cpu = cpu_seconds(hook_proc.pid) - hook_cpu0
    stats = json.loads(request(hook_port, "GET", "/stats")[1])
    row.rss, cpu, _ = last_readings(rig, proc, run_dir)
    rig.procs.stop(proc)
    rig.procs.stop(hook_proc)
    row.failed, problems = check_latency_jobs(timed)
    if problems:
        rig.fail(f"latency-bound run: {problems}")
    row.rate = None if problems else round(SLOW_JOBS * SLOW_N / seconds)
    row.ratio_ideal, row.hook_max_in_flight = ratio(row.rate, SLOW_IDEAL), stats["max_in_flight"]
    print(f"latency-bound run: {row.label}: {SLOW_JOBS * SLOW_N} inputs in {seconds:.2f} s = "
          f"{fmt(row.rate, '', 'FAIL')} inputs/s, {fmt(row.ratio_ideal, '.2f')} of the ideal "
          f"{SLOW_IDEAL:.0f}/s; {row.failed} failed; pmmap's peak RSS {fmt(row.rss, '.1f')} MB,"
          f" CPU {fmt(cpu, '.2f')} s; jobs' own times "
          f"{' '.join(f'{t[0]:.2f}' for t in timed if t)} s; RLIMIT_NOFILE {files}")
    print(f"  the webhook by its own count: {stats['requests']} answers "
          f"({stats['requests'] / seconds:.0f}/s), at most {stats['max_in_flight']} held at "
          f"once on {stats['max_connections']} connections, answers late by "
          f"{stats['late_total_s'] / max(1, stats['requests']) * 1000:.1f} ms on average and "
          f"{stats['late_max_s'] * 1000:.0f} ms at most; its CPU {hook_cpu:.2f} s in "
          f"{seconds:.2f} s", flush=True)
    shutil.rmtree(run_dir)
    return row


def check_latency_jobs(timed):
    """The latency-bound jobs' outputs, tallied: (failures, problems or "")."""
    failed, problems = 0, []
    for answer in timed:
        if answer is None:
            problems.append("POST /job failed")
            continue
        _, _, fed, (status, output, _) = answer
        _, job_failed, errors, problem = tally_output(output, SLOW_N)
        failed += job_failed or 0
        if problem or errors or status != 200 or fed.complete != "200":
            problems.append(f"GET /output {status}, complete {fed.complete}, {problem} "
                            f"{dict(errors.most_common(2))}")
    return failed, "; ".join(problems)


def measure_outage(rig):
    """The outage runs, then the latency-bound run: ([OutageRow], LatencyRow)."""
    rows = [outage_run(rig, i, label, fields) for i, (label, fields) in enumerate(OUTAGE_JOBS)]
    return rows, latency_run(rig)


# --- the report ------------------------------------------------------------------------

COLUMNS = [  # the terminal's heading and width (negative: to the left), the markdown's
    ("concurrency", -11, "concurrency"), ("wrk req/s", 10, "wrk req/s"),
    ("bare req/s", 10, "bare loop req/s"), ("plain req/s", 11, "bare loop without pmmap headers"),
    ("pmmap in/s", 10, "pmmap inputs/s"), ("pmmap/bare", 11, "pmmap/bare"),
    ("pmmap/plain", 12, "pmmap/plain bare"), ("pmmap/wrk", 10, "pmmap/wrk"),
    ("CPU/bare CPU", 12, "pmmap CPU / bare loop CPU"), ("peak RSS (MB)", 14, "pmmap peak RSS (MB)"),
    ("CPU s/1000 in", 14, "pmmap CPU s per 1000 inputs"), ("PUT mean ms", 12, "mean PUT (ms)"),
]
ROW_FORMATS = ["", "", "", "", "", ".2f", ".2f", ".2f", ".2f", ".1f", ".3f", ".1f"]


def first_line(*command):
    """The first line a command prints, on stdout or stderr."""
    done = subprocess.run(command, capture_output=True, text=True)
    return (done.stdout or done.stderr).splitlines()[0]


def filesystem_of(path):
    """The type of the filesystem holding path, as stat names it (ext2/ext3, tmpfs...)."""
    done = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def describe_setup(settings, tmp):
    """The report's first lines: when, the machine, the tools, the load, the settings,
    where pmmap's files go."""
    with open("/proc/cpuinfo") as f:
        cpu = re.search(r"^model name\s*: (.*)$", f.read(), re.M).group(1)
    with open("/proc/meminfo") as f:
        mem_gb = int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1)) / 1048576
    curl = first_line("curl", "--version").split()
    load = os.getloadavg()
    fs = filesystem_of(tmp)
    return "\n".join([
        f"pmmap benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"machine: {CPUS} CPUs, {cpu}, {mem_gb:.1f} GB RAM, kernel {os.uname().sysname} "
        f"{os.uname().release}",
        f"tools:   {first_line(settings.pmmap, '--version')}, "
        f"{first_line(NGINX, '-v').replace('nginx version: ', '')}, "
        f"{' '.join(curl[0:2] + curl[3:4])}, wrk {first_line('wrk', '--version').split()[1]}",
        f"load:    {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)"
        + (": the machine is busy, which skews the results" if load[0] > 0.5 else ""),
        "pinning: " + ("nginx worker on CPU 0, clients and pmmap on CPU 1" if settings.pin
                       else "none (the scheduler places every process)"),
        f"setup:   N={settings.n} inputs of {VALUE_BYTES}-byte values, PUT batches of "
        f"{settings.batch} over one connection, maxsize {settings.maxsize}; wrk "
        f"{settings.wrk_seconds}s; memory run: {settings.big_n} inputs at concurrency "
        f"{BIG_CONCURRENCY}",
        f"files:   pmmap's job files under {tmp}, on {fs}"
        + (": a tmpfs, not a disk; set TMPDIR to a folder on disk" if fs == "tmpfs" else "")
    ]), cpu


DURABLE_COLUMNS = [
    ("durable, concurrency 32", -32, "pmmap at concurrency 32"),
    ("pmmap in/s", 10, "pmmap inputs/s"), ("pmmap/bare", 11, "pmmap/bare"),
    ("/no data dir", 13, "pmmap / pmmap without --data-dir"),
    ("peak RSS (MB)", 14, "pmmap peak RSS (MB)"), ("PUT in/s", 10, "PUT /input inputs/s"),
]
DURABLE_FORMATS = ["", "", ".2f", ".2f", ".1f", ""]
RESUME_COLUMNS = [
    ("resume run", -30, "resume run"), ("stored", 8, "outcomes stored at the kill"),
    ("start s", 8, "restart to /healthz (s)"), ("start RSS", 10, "peak RSS by then (MB)"),
    ("finish s", 9, "restart to the output's end (s)"), ("peak RSS", 9, "peak RSS (MB)"),
    (f"< {RESUME_RSS_LIMIT_MB} MiB", 9, f"under {RESUME_RSS_LIMIT_MB} MiB"),
    ("output", 7, "output"),
]
OUTAGE_COLUMNS = [
    ("outage run", -24, f"{OUTAGE_N} inputs, concurrency {OUTAGE_CONCURRENCY}, {OUTAGE_RATE}"
     f" calls/s, the webhook down {OUTAGE_SECONDS:g} s from {OUTAGE_AT:g} s in"),
    ("failed", 7, "failed"), ("total s", 8, "total time (s)"),
    ("openings", 9, "circuit openings"), ("refused", 8, "calls refused by the circuit"),
    ("retries", 8, "retries"),
]
OUTAGE_FORMATS = ["", "", ".2f", "", "", ""]
LATENCY_COLUMNS = [
    ("latency-bound run", -40, f"latency-bound run, the webhook answering after {SLOW_DELAY:g} s"),
    ("calls/s", 8, "calls/s"), (f"/ {SLOW_IDEAL:.0f}", 7, f"/ ideal {SLOW_IDEAL:.0f}/s"),
    ("peak RSS (MB)", 14, "pmmap peak RSS (MB)"), ("failed", 7, "failed"),
    ("hook max", 9, "most calls the webhook held at once"),
]
LATENCY_FORMATS = ["", "", ".2f", ".1f", "", ""]


@dataclasses.dataclass
class Results:
    """What bench measured, for the tables; empty where a part did not run."""
    rows: list = dataclasses.field(default_factory=list)  # a Row per concurrency
    put_rates: dict = dataclasses.field(default_factory=dict)  # by FSYNC_MODES
    big: Run = None
    durable: list = dataclasses.field(default_factory=list)  # a DurableRow per mode
    resumed: Resumed = None
    page: "PageResult" = None
    outages: list = dataclasses.field(default_factory=list)  # an OutageRow per OUTAGE_JOBS
    latency: LatencyRow = None


@dataclasses.dataclass
class PageResult:
    """The page's part: its first load, and the runs with and without an event stream."""
    bytes: int = None  # received, gzip
    raw_bytes: int = None  # uncompressed
    ms: float = None  # from the first request to the last byte
    alone: list = dataclasses.field(default_factory=list)  # inputs/s by round
    watched: list = dataclasses.field(default_factory=list)
    ratio: float = None


def resume_cells(resumed):
    """The resume run's line of its table."""
    ok = resumed.verdict.startswith("ok")
    under = None if resumed.rss is None else ("yes" if resumed.rss < RESUME_RSS_LIMIT_MB else "NO")
    return [f"{fmt(resumed.journaled)} inputs, maxsize {RESUME_MAXSIZE}", fmt(resumed.stored),
            fmt(resumed.start_s, ".2f"), fmt(resumed.start_rss, ".1f"),
            fmt(resumed.finish_s, ".2f"), fmt(resumed.rss, ".1f"), fmt(under),
            "ok" if ok else "FAIL"]


def print_table(columns, cells, markdown=False):
    """A table, its columns (heading, width: negative to the left, markdown heading)."""
    if markdown:
        print("| " + " | ".join(heading for _, _, heading in columns) + " |")
        print("|" + "---:|" * len(columns))
        for line in cells:
            print("| " + " | ".join(line) + " |")
        return
    for line in [[heading for heading, _, _ in columns]] + cells:
        print(" ".join(f"{cell:{'<' if width < 0 else '>'}{abs(width)}}"
                       for cell, (_, width, _) in zip(line, columns)))


def print_tables(settings, cpu, results):
    """The tables, then the same in markdown with the PUT rate and the memory run."""
    def cells_of(rows, formats):
        return [[fmt(value, spec) for value, spec in zip(dataclasses.astuple(row), formats)]
                for row in rows]

    tables = [(COLUMNS, cells_of(results.rows, ROW_FORMATS)),
              (DURABLE_COLUMNS, cells_of(results.durable, DURABLE_FORMATS)),
              (RESUME_COLUMNS, [resume_cells(results.resumed)] if results.resumed else []),
              (OUTAGE_COLUMNS, cells_of(results.outages, OUTAGE_FORMATS)),
              (LATENCY_COLUMNS, cells_of([results.latency] if results.latency else [],
                                         LATENCY_FORMATS))]
    tables = [(columns, cells) for columns, cells in tables if cells]
    for columns, cells in tables:
        print()
        print_table(columns, cells)
    print(f"\nMarkdown:\n\nMachine: {CPUS} CPUs ({cpu}), kernel {os.uname().release}. Webhook: "
          f"nginx {first_line(NGINX, '-v').rsplit('/', 1)[-1]}, 1 worker, loopback. "
          f"{settings.n} inputs of {VALUE_BYTES}-byte values, PUT batches of {settings.batch} "
          f"over one kept-alive connection, maxsize {settings.maxsize}.")
    for columns, cells in tables:
        print()
        print_table(columns, cells, markdown=True)
        if columns is COLUMNS:
            print_put_and_memory(settings, results)


def print_put_and_memory(settings, results):
    """The markdown's lines below the main table: the PUT rate, the memory run."""
    print(f"\nPUT /input with room in the queue (parse, validate, enqueue): "
          f"{fmt(results.put_rates.get(None))} inputs/s.")
    big = results.big
    if big is not None:
        print("\n| memory run | pmmap inputs/s | pmmap peak RSS | CPU s per 1000 inputs | "
              "streaming the done output (one GET) |\n|---|---:|---:|---:|---|")
        print(f"| {settings.big_n} inputs, concurrency {BIG_CONCURRENCY} | "
              f"{fmt(big.ips, '', 'FAIL')} inputs/s | {fmt(big.rss, '.1f')} MB | "
              f"{fmt(big.cpu_per_k, '.3f')} | {big.stream} |")


# --- the shell runs (issue 16) ---------------------------------------------------------


def write_ndjson(path, n):
    """n inputs as NDJSON, the same keys and values as make_batches'."""
    with open(path, "w") as f:
        for first in range(0, n, 10000):
            f.write("".join('{"key":"k%d","value":%s}\n' % (i, value_of(i))
                            for i in range(first, min(n, first + 10000))))


def curl_put_ndjson(port, job, path):
    """curl -T path as a streamed NDJSON PUT: (status, reply, seconds)."""
    t0 = time.perf_counter()
    done = subprocess.run(["curl", "-sS", "--max-time", "3600", "-T", path, "-H",
                           "Content-Type: application/x-ndjson", "-w", "\n%{http_code}",
                           f"http://127.0.0.1:{port}/job/{job}/input"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    reply, _, status = done.stdout.rpartition("\n")
    return status, reply + done.stderr, seconds


def accepted_of(reply):
    try:
        return json.loads(reply).get("accepted")
    except ValueError:
        return None


def shell_ingest(rig, path, n):
    """The streamed PUT alone, into a job whose queue never fills (PUT_RATE_JOB)."""
    wait_quiet(rig, "the streamed PUT's ingest rate")
    run_dir = os.path.join(rig.tmp, "run-shell-ingest")
    proc, port = start_pmmap(rig, run_dir) or (None, None)
    job = post_job(rig, port, PUT_RATE_JOB) if proc else None
    if job is None:
        rig.fail("shell ingest: pmmap did not start or refused POST /job")
        return
    status, reply, seconds = curl_put_ndjson(port, job, path)
    rig.procs.stop(proc)
    shutil.rmtree(run_dir)
    if status != "201" or accepted_of(reply) != n:
        rig.fail(f"shell ingest: {status} {reply[:300]}")
        return
    mb = os.path.getsize(path) / 1048576
    print(f"streamed NDJSON PUT, queue never full: {n} inputs ({mb:.1f} MB) in {seconds:.3f} s"
          f" = {n / seconds:.0f} inputs/s, {mb / seconds:.1f} MB/s", flush=True)


def wait_job_done(port, job, timeout):
    """GET /job until it is done or timeout passes: the job's JSON, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = request(port, "GET", f"/job/{job}")
        shown = json.loads(body) if status == 200 else {}
        if shown.get("state") == "done":
            return shown
        time.sleep(0.2)
    return None


def shell_stream(rig):
    """BENCH_SHELL_STREAM_N lines through one `curl -T` into a job of maxsize 1000 at
    concurrency 32, the job running meanwhile: the time and pmmap's peak RSS."""
    n = rig.settings.shell_stream_n
    log(f"bench: shell stream: writing {n} lines")
    path = os.path.join(rig.tmp, "stream.ndjson")
    write_ndjson(path, n)
    wait_quiet(rig, "the long streamed PUT")
    run_dir = os.path.join(rig.tmp, "run-shell-stream")
    proc, port = start_pmmap(rig, run_dir) or (None, None)
    fields = {"concurrency": SHELL_CONCURRENCY, "maxsize": SHELL_STREAM_MAXSIZE}
    job = post_job(rig, port, fields) if proc else None
    if job is None:
        rig.fail("shell stream: pmmap did not start or refused POST /job")
        return
    status, reply, seconds = curl_put_ndjson(port, job, path)
    request(port, "POST", f"/job/{job}/complete")
    done = wait_job_done(port, job, 600)
    rss = peak_rss_mb(proc.pid)
    rig.procs.stop(proc)
    shutil.rmtree(run_dir)
    mb = os.path.getsize(path) / 1048576
    os.remove(path)
    if status != "201" or accepted_of(reply) != n or not done or done.get("succeeded") != n:
        rig.fail(f"shell stream: PUT {status} {reply[:200]}; job {done}")
        return
    under = "yes" if rss < SHELL_RSS_LIMIT_MB else "NO"
    # The job keeps every key's hashes (key_table.hpp), 16 bytes a slot, and
    # holds the old and the new table while it grows: what a stream of n
    # distinct keys costs beside the stream itself.
    slots = 64
    while n * 10 > slots * 7:
        slots *= 2
    keys_mb = slots * 16 * 1.5 / 1048576
    print(f"streamed NDJSON PUT through maxsize {SHELL_STREAM_MAXSIZE} at concurrency "
          f"{SHELL_CONCURRENCY}: {n} lines ({mb:.0f} MB) in {seconds:.1f} s = "
          f"{n / seconds:.0f} inputs/s, all succeeded; peak RSS {rss:.1f} MB "
          f"(under {SHELL_RSS_LIMIT_MB}: {under}; the key table's peak alone: "
          f"{keys_mb:.0f} MB)", flush=True)
    if rss >= SHELL_RSS_LIMIT_MB:
        rig.fail(f"shell stream: peak RSS {rss:.1f} MB")


def check_map_output(path, n):
    """pmmap map's stdout: n NDJSON entries, each key once, every value ok."""
    seen = set()
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            value = entry.get("value")
            if not (isinstance(value, dict) and value.get("ok") is True):
                return f"entry not ok: {line[:200]}"
            seen.add(entry["key"])
    return "ok" if len(seen) == n else f"{len(seen)} keys, expected {n}"


def map_run(rig, path, n):
    """pmmap map on the NDJSON file at concurrency 32: (inputs/s, peak RSS MB) or Nones."""
    out = os.path.join(rig.tmp, "map.out")
    args = [rig.settings.pmmap, "map", rig.hook, "--concurrency", str(SHELL_CONCURRENCY),
            "--maxsize", str(rig.settings.maxsize)]
    peak = 0.0
    with open(path) as stdin, open(out, "w") as stdout:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        # VmHWM, read while it runs: wait4's ru_maxrss would count the pages the
        # child shared with this Python process before its exec.
        while proc.poll() is None:
            try:
                peak = max(peak, peak_rss_mb(proc.pid))
            except (OSError, AttributeError):
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
    verdict = check_map_output(out, n)
    os.remove(out)
    if proc.returncode != 0 or verdict != "ok":
        rig.fail(f"pmmap map: exit {proc.returncode}, {verdict}, {proc.stderr.read()[:300]}")
        return None, None
    return n / seconds, peak


def shell_map(rig, path, n):
    """BENCH_REPEAT rounds of the server (one job, as the main table's) and of pmmap map
    on the same inputs at concurrency 32; medians, and the median of the rounds' ratios."""
    server, mapped, ratios, rss = [], [], [], []
    for r in range(rig.settings.repeat):
        wait_quiet(rig, f"pmmap map, round {r + 1}")
        run = run_pmmap(rig, f"shell-server-{r}", SHELL_CONCURRENCY, n, rig.batches)
        ips, peak = map_run(rig, path, n)
        server.append(run.ips)
        mapped.append(ips)
        rss.append(peak)
        ratios.append(ratio(ips, run.ips))
        log(f"bench: round {r + 1}: server {run.ips} inputs/s, pmmap map {fmt(ips, '.0f')}")
    print(f"pmmap map vs the server, {n} inputs at concurrency {SHELL_CONCURRENCY}: map "
          f"{fmt(median(mapped), '.0f')} inputs/s (peak RSS {fmt(median(rss), '.1f')} MB), "
          f"server {fmt(median(server))} inputs/s, map/server {fmt(median(ratios))}", flush=True)


def shell_runs(rig):
    """The shell part: the ingest rate, the long stream, pmmap map against the server."""
    n = rig.settings.n
    path = os.path.join(rig.tmp, "inputs.ndjson")
    write_ndjson(path, n)
    shell_ingest(rig, path, n)
    shell_stream(rig)
    shell_map(rig, path, n)
    os.remove(path)


# --- main ------------------------------------------------------------------------------


def page_load(port):
    """A browser's first load of the page, over one new connection, asking for gzip as
    browsers do: (bytes received, ms from the first request to the last byte)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.perf_counter()
    received = 0
    for path in PAGE_FILES:
        conn.request("GET", path, headers={"Accept-Encoding": "gzip, deflate"})
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise OSError(f"GET {path}: {reply.status}")
        received += len(body)
    ms = (time.perf_counter() - t0) * 1000
    conn.close()
    return received, ms


def measure_page(rig):
    """The page's first load (the median of 5, on a fresh pmmap), then BENCH_REPEAT rounds
    of pmmap at PAGE_CONCURRENCY alone and with a `curl -N /events` open: PageResult."""
    result = PageResult()
    run_dir = os.path.join(rig.tmp, "run-page-load")
    started = start_pmmap(rig, run_dir)
    if started is not None:
        proc, port = started
        try:
            loads = [page_load(port) for _ in range(5)]
            result.bytes = loads[0][0]
            result.ms = median(ms for _, ms in loads)
            result.raw_bytes = page_bytes_uncompressed(port)
        except (OSError, http.client.HTTPException) as e:
            rig.fail(f"the page's first load: {e}")
        rig.procs.stop(proc)
        shutil.rmtree(run_dir)
    c = PAGE_CONCURRENCY
    for r in range(1, rig.settings.repeat + 1):
        log(f"bench: page, round {r} of {rig.settings.repeat}: pmmap alone, pmmap with curl -N /events")
        wait_quiet(rig, f"pmmap -c{c}")
        alone = run_pmmap(rig, f"page-alone-{r}", c, rig.settings.n, rig.batches)
        wait_quiet(rig, f"pmmap -c{c} watched")
        watched = run_pmmap(rig, f"page-watched-{r}", c, rig.settings.n, rig.batches, watch=True)
        result.alone.append(alone.ips)
        result.watched.append(watched.ips)
        print(f"page, round {r}: pmmap {fmt(alone.ips, '', 'FAIL')} inputs/s alone, "
              f"{fmt(watched.ips, '', 'FAIL')} with curl -N /events open", flush=True)
    result.ratio = median(ratio(w, a) for a, w in zip(result.alone, result.watched))
    return result


def page_bytes_uncompressed(port):
    """The bytes of the page's files as they are, without compression."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    total = 0
    for path in PAGE_FILES:
        conn.request("GET", path)
        total += len(conn.getresponse().read())
    conn.close()
    return total


def print_page(result):
    """The page's lines of the report, in markdown."""
    if result is None:
        return
    print(f"\nThe page's first load ({', '.join(PAGE_FILES)} over one connection, gzip): "
          f"{fmt(result.bytes)} bytes ({fmt(result.raw_bytes)} uncompressed) in "
          f"{fmt(result.ms, '.1f')} ms to the last byte (median of 5).")
    print(f"\n| pmmap at concurrency {PAGE_CONCURRENCY} | inputs/s by round | median |\n|---|---|---:|")
    print(f"| alone | {' '.join(fmt(v) for v in result.alone)} | {fmt(median(result.alone))} |")
    print(f"| with `curl -N /events` open | {' '.join(fmt(v) for v in result.watched)} | "
          f"{fmt(median(result.watched))} |")
    print(f"| with / alone, median of the rounds' ratios | | {fmt(result.ratio, '.2f')} |")


def measure(rig):
    """The parts BENCH_ONLY names, in the report's order: Results."""
    settings, results = rig.settings, Results()
    if "main" in settings.only:
        results.rows = [measure_concurrency(rig, c) for c in settings.concurrencies]
    if settings.only & {"main", "durable"}:
        results.put_rates[None] = put_rate(rig)
    if "durable" in settings.only:
        results.put_rates.update((f, put_rate(rig, f)) for f in FSYNC_MODES if f)
        results.durable = measure_durable(rig, results.put_rates)
    if "main" in settings.only and settings.big_n > 0:
        results.big = memory_run(rig)
    if "resume" in settings.only and settings.big_n > 0:
        results.resumed = resume_run(rig)
    if "page" in settings.only:
        results.page = measure_page(rig)
    if "outage" in settings.only:
        results.outages, results.latency = measure_outage(rig)
    if "shell" in settings.only:
        shell_runs(rig)
    return results


def bench(rig):
    """The whole run, in the report's order; the exit code."""
    settings = rig.settings
    setup, cpu = describe_setup(settings, rig.tmp)
    print(setup + "\n", flush=True)
    if settings.only & {"main", "durable"}:
        log("bench: building bare_loop")
        build_tools(rig)
    rig.batches = make_batches(settings.n, settings.batch)
    start_nginx(rig)
    log(f"bench: webhook {rig.hook} (nginx worker pid {rig.nginx_worker})")
    if settings.pin:  # the bench, and all it starts from now on, on CPU 1
        os.sched_setaffinity(rig.nginx_worker, {0})
        os.sched_setaffinity(0, {1})
    results = measure(rig)
    print_tables(settings, cpu, results)
    print_page(results.page)
    with open(os.path.join(rig.tmp, "nginx", "error.log")) as f:
        errors = [line for line in f if re.search(r"\[(error|crit|alert)\]", line)]
    if errors:
        rig.fail(f"nginx logged errors: {''.join(errors[:3])}")
    print("\nload average at the end: %.2f %.2f %.2f" % os.getloadavg())
    if rig.noisy:
        print(f"warning: {rig.noisy} measurement(s) started while the machine was busy with "
              "other work")
    if rig.failures:
        log("bench: some checks FAILED (see above)")
    return 1 if rig.failures else 0


def main():
    settings = read_settings(os.environ)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the cleanup runs
    try:
        with tempfile.TemporaryDirectory(prefix="pmmap-bench.") as tmp, Processes() as procs:
            return bench(Rig(settings, procs, tmp))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
