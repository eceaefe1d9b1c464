#!/usr/bin/env python3
"""The page at / in a real browser: `make ui-test`.

Starts the real pmmap binary and a slow webhook (http.server, here), drives
headless Chromium through its DevTools protocol over a pipe
(--remote-debugging-pipe: fd 3 carries commands in, fd 4 replies out, each
message JSON ending with a NUL byte; no WebSocket, no npm), and checks what
a person would: the jobs list shows a job's progress moving, then done with
the right counts; the job's page shows its numbers, errors and charts; the
cancel button, once its confirm dialog is accepted, cancels a second job,
as the API then says. Saves build/ui-list.png, build/ui-job.png and build/ui-phone.png (the list
at a phone's width).
Prints "ok"/"FAIL" a check and ends with "N passed, N failed"; exits 1 on a
failure. Every wait is bounded; the whole run takes about 30 s.
"""

import argparse
import base64
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

DEADLINE = time.monotonic() + 85  # the whole run, whatever happens
RESULTS = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + name + ("" if ok or not detail else ": " + str(detail)), flush=True)
    return ok


# ------------------------------------------------------------ the webhook

class Hook(http.server.BaseHTTPRequestHandler):
    """Answers POST /{job}/{key} after the job's delay: 200 with the body,
    or 422 for keys that start with "bad"."""

    protocol_version = "HTTP/1.1"
    delays = {"slow": 0.05, "slower": 0.5}

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        parts = self.path.strip("/").split("/")
        time.sleep(self.delays.get(parts[0], 0))
        status = 422 if parts[-1].startswith("bad") else 200
        reply = json.dumps({"echo": json.loads(body or b"null")}).encode() if status == 200 else b"no"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        try:
            self.wfile.write(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a call that cancel aborted

    def log_message(self, *args):
        pass


# ------------------------------------------------------------------ pmmap

def start_pmmap(binary, log_path, extra=()):
    log = open(log_path, "w")
    proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", *extra], stdout=log, stderr=log)
    while time.monotonic() < DEADLINE:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(log_path).read())
        if m:
            return proc, "http://127.0.0.1:" + m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError("pmmap did not start: " + open(log_path).read())


def api(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.loads(res.read())


def make_job(base, hook_url, concurrency, n, bad):
    job = api(base, "POST", "/job", {"url": hook_url, "concurrency": concurrency, "max_attempts": 1})
    inputs = [{"key": ("bad" if i < bad else "k") + str(i), "value": {"i": i}} for i in range(n)]
    api(base, "PUT", "/job/" + job["id"] + "/input", inputs)
    api(base, "POST", "/job/" + job["id"] + "/complete")
    return job["id"]


# --------------------------------------------------------------- Chromium

class Browser:
    """Headless Chromium on the DevTools pipe, one page attached (flat
    sessions). A reader thread files replies by id, keeps events, and
    accepts every JavaScript dialog (confirm) as it opens: the click that
    opened it waits until then."""

    def __init__(self, chromium, profile):
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()

        def pipes_on_3_and_4():
            os.dup2(cmd_r, 103)
            os.dup2(res_w, 104)
            os.dup2(103, 3)
            os.dup2(104, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--hide-scrollbars", "--user-data-dir=" + profile, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=pipes_on_3_and_4)
        os.close(cmd_r)
        os.close(res_w)
        self.next_id = 0
        self.replies = {}
        self.events = []
        self.dialogs = []
        self.cv = threading.Condition()
        self.session = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self.res_r, 1 << 16)
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if msg.get("method") == "Page.javascriptDialogOpening":
                    self.dialogs.append(msg["params"]["message"])
                    self._send("Page.handleJavaScriptDialog", {"accept": True}, msg.get("sessionId"))
                with self.cv:
                    if "id" in msg:
                        self.replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self.cv.notify_all()

    def _send(self, method, params, session):
        with self.cv:
            self.next_id += 1
            mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        return mid

    def call(self, method, params=None, browser_level=False, timeout=15):
        mid = self._send(method, params, None if browser_level else self.session)
        end = min(DEADLINE, time.monotonic() + timeout)
        with self.cv:
            while mid not in self.replies:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(method)
                self.cv.wait(left)
            msg = self.replies.pop(mid)
        if "error" in msg:
            raise RuntimeError(method + ": " + json.dumps(msg["error"]))
        return msg["result"]

    def open_page(self):
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser_level=True)
        self.session = self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                 browser_level=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(domain + ".enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})

    def eval(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("text", "exception") + " in " + expression)
        return r["result"].get("value")

    def wait_for(self, expression, timeout=20, every=0.1):
        """Evaluates expression until it is truthy; returns its last value."""
        end = min(DEADLINE, time.monotonic() + timeout)
        value = None
        while time.monotonic() < end:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(every)
        return value

    def screenshot(self, path, width=1280):
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(4000, max(900, size["height"])), "scale": 1}})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    def requests(self):
        with self.cv:
            return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def exceptions(self):
        with self.cv:
            return [e["params"]["exceptionDetails"] for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def close(self):
        try:
            self.call("Browser.close", browser_level=True, timeout=3)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- the test

ROW = "document.querySelector('tr[data-job-id=\"%s\"]')"


def row_field(job_id, field):
    return "(() => { const r = %s; const f = r && r.querySelector('[data-field=\"%s\"]'); " \
           "return f ? f.textContent : null; })()" % (ROW % job_id, field)


def cell(job_id, col):
    return "(() => { const r = %s; const c = r && r.querySelector('td[data-col=\"%s\"]'); " \
           "return c ? c.textContent : null; })()" % (ROW % job_id, col)


def num(text):
    return int(text.replace(",", "")) if text else -1


def run(browser, base, out_dir):
    browser.open_page()
    browser.call("Page.navigate", {"url": base + "/"})
    check("the page loads and shows its title", browser.wait_for("document.querySelector('h1') && document.querySelector('h1').textContent") == "Jobs")

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    hook_base = "http://127.0.0.1:%d" % hook.server_address[1]
    n, bad = 120, 5
    watched = make_job(base, hook_base + "/slow", 2, n, bad)

    # Progress moving: two different readings strictly between 0 and n.
    first = num(browser.wait_for("(() => { const t = %s; return t && +t.replace(/,/g, '') > 0 && +t.replace(/,/g, '') < %d ? t : null; })()" % (row_field(watched, "outputs"), n), timeout=20, every=0.05))
    later = num(browser.wait_for("(() => { const t = %s; return t && +t.replace(/,/g, '') > %d ? t : null; })()" % (row_field(watched, "outputs"), first), timeout=10, every=0.05))
    check("the list shows the job's progress moving", 0 < first < later, (first, later))
    done = browser.wait_for("%s === 'done' ? 'done' : null" % row_field(watched, "state"), timeout=30)
    check("the list shows the job done", done == "done", done)
    counts = (num(browser.eval(row_field(watched, "outputs"))), num(browser.eval(row_field(watched, "inputs"))),
              num(browser.eval(cell(watched, "succeeded"))), num(browser.eval(cell(watched, "failed"))))
    check("with the right counts", counts == (n, n, n - bad, bad), counts)
    check("the host shows in the row", browser.eval(cell(watched, "host")) == hook_base[len("http://"):])
    browser.screenshot(os.path.join(out_dir, "ui-list.png"))

    # The job's page, opened from the list by its link.
    browser.eval("%s.querySelector('a').click()" % (ROW % watched))
    title = browser.wait_for("(() => { const h = document.querySelector('#job-title'); "
                             "return h && document.querySelector('#job-numbers [data-field=succeeded]') ? h.textContent : null; })()")
    check("the job's page opens from the list", title == "Job " + watched, title)
    shown = browser.eval("document.querySelector('#job-numbers [data-field=succeeded]').textContent")
    check("it shows the succeeded count", num(shown) == n - bad, shown)
    text = browser.eval("document.querySelector('main').textContent")
    check("it shows the top error with its count", "the webhook answered HTTP 422" in text and re.search(r"HTTP 422\s*5", text) is not None)
    check("it lists the latest failed entries", all(("bad%d" % i) in text for i in range(bad)))
    check("it shows latency percentiles", all(p in text for p in ("p50", "p95", "p99")))
    bars = browser.eval("document.querySelectorAll('svg.chart').length")
    check("it draws the throughput chart and the histogram", bars == 2, bars)
    browser.screenshot(os.path.join(out_dir, "ui-job.png"))

    # Cancel a second job from its page: the button, the confirm dialog, the API.
    slow = make_job(base, hook_base + "/slower", 1, 200, 0)
    browser.eval("location.hash = '#/job/%s'" % slow)
    ready = browser.wait_for("(() => { const b = document.querySelector('#btn-cancel'); "
                             "return b && !b.disabled && document.querySelector('#job-title').textContent.includes('%s'); })()" % slow)
    check("the second job's page has an enabled cancel button", ready)
    if "paused" in api(base, "GET", "/job/" + slow):  # a server with pause and resume
        for action, want in (("Pause", True), ("Resume", False)):
            label = browser.wait_for("(() => { const b = document.querySelector('#btn-pause'); "
                                     "return b && !b.hidden && b.textContent === '%s' ? b.textContent : null; })()" % action)
            browser.eval("document.querySelector('#btn-pause').click()")
            end = time.monotonic() + 10
            while time.monotonic() < min(end, DEADLINE) and api(base, "GET", "/job/" + slow)["paused"] != want:
                time.sleep(0.1)
            check("its %s button %s it, as the API says" % (action.lower(), "pauses" if want else "resumes"),
                  label == action and api(base, "GET", "/job/" + slow)["paused"] == want, label)
    else:
        print("skip the pause checks: this pmmap has no pause", flush=True)
    dialogs_before = len(browser.dialogs)
    browser.eval("document.querySelector('#btn-cancel').click()")
    state = None
    end = time.monotonic() + 10
    while time.monotonic() < min(end, DEADLINE):
        state = api(base, "GET", "/job/" + slow)["state"]
        if state == "cancelled":
            break
        time.sleep(0.1)
    check("cancel asked to confirm", len(browser.dialogs) == dialogs_before + 1 and "Cancel job" in browser.dialogs[-1], browser.dialogs)
    check("the API says the job is cancelled", state == "cancelled", state)
    shown = browser.wait_for("(() => { const s = document.querySelector('.summary [data-field=state]'); "
                             "return s && s.textContent === 'cancelled' ? s.textContent : null; })()", timeout=10)
    check("the page shows it cancelled", shown == "cancelled", shown)

    # A phone's width: the list becomes one card a job (for a person to look at).
    browser.call("Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    browser.eval("location.hash = '#/'")
    browser.wait_for("!!%s" % (ROW % slow))
    browser.screenshot(os.path.join(out_dir, "ui-phone.png"), width=390)

    outside = [u for u in browser.requests() if not u.startswith(base) and not u.startswith("about:")]
    check("the page fetched nothing from outside the server", not outside, outside)
    check("the page threw no exception", not browser.exceptions(), browser.exceptions()[:1])
    hook.shutdown()


def run_with_token(browser, binary, tmp):
    """With --api-token (where this pmmap has it): the page asks for the token once,
    then shows the jobs, which it can only list with the token as a Bearer header."""
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    if "--api-token" not in help_text:
        print("skip the token checks: this pmmap has no --api-token", flush=True)
        return
    token = "ui-test-token"
    log_path = os.path.join(tmp, "pmmap-token.log")
    proc, base = start_pmmap(binary, log_path, ["--api-token", token])
    try:
        req = urllib.request.Request(base + "/job", method="POST", headers={"Authorization": "Bearer " + token},
                                     data=json.dumps({"url": "http://127.0.0.1:9/hook"}).encode())
        with urllib.request.urlopen(req, timeout=10) as res:
            job = json.loads(res.read())["id"]
        browser.call("Page.navigate", {"url": base + "/"})
        asked = browser.wait_for("(() => { const f = document.querySelector('#token-form'); return f && !f.hidden; })()")
        check("with --api-token the page asks for the token", asked)
        browser.eval("document.querySelector('#token-input').value = '%s'; "
                     "document.querySelector('#token-form').requestSubmit()" % token)
        shown = browser.wait_for("!!%s" % (ROW % job))
        check("with the token it lists the jobs", shown)
        kept = browser.eval("sessionStorage.getItem('pmmap-token') === '%s' && location.href.indexOf('%s') < 0" % (token, token))
        check("the token is kept in the tab, not in the URL", kept)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pmmap", default=os.environ.get("PMMAP_BIN", "./pmmap"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--out", default="build")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="pmmap-ui-")
    pmmap, browser = None, None
    try:
        pmmap, base = start_pmmap(args.pmmap, os.path.join(tmp, "pmmap.log"))
        browser = Browser(args.chromium, os.path.join(tmp, "profile"))
        run(browser, base, args.out)
        run_with_token(browser, args.pmmap, tmp)
    except Exception as e:  # a failed step fails the run, with what it was
        check("the run went to its end", False, repr(e))
    finally:
        if browser:
            browser.close()
        if pmmap:
            pmmap.send_signal(signal.SIGTERM)
            try:
                pmmap.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pmmap.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
