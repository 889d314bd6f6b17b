"""The daemon's side of the renderer worker (graphs.worker): start it, ask it for pages
and runs, restart it when it dies, kill it when it hangs.

Imports nothing that draws: this module lives in the polling process.

- `on_request(rel)` is the HTTP server's hook for a path under /graphs/: for a
  context's page or PNG (`ctx/<folder>/index.html`, `ctx/<folder>/cpu-week.png`, ...)
  it asks the worker to draw what is missing or out of date of that page, and waits
  for it at most `page_timeout` seconds; anything else returns at once. Requests are
  bounded: one job per (context, period) however many clients ask (they wait on the
  same job), at most `max_pending` jobs and `max_waiting` requests waiting, past
  which a request is served from what is on disk. Folders with no RRD files never
  reach the worker.
- `periodic()` asks for a run (host pages and alerting contexts) with a time budget;
  a run still going past `run_limit` seconds means a stuck worker: it is killed and
  started afresh (the run's progress is saved as it goes, so nothing is redone).
- `start()` writes a page at /graphs/ at once when there is none yet, saying when
  the first graphs will be drawn.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import unquote

from exporters.files import write_atomic
from exporters.names import decode_name
from exporters import rrdlayout

from . import PERIODS, html
from .plan import PAGES_DIR
from .settings import RenderSettings

log = logging.getLogger("ctxmon.graphs")

RUN_TIME_FLOOR = 120.0  # seconds a run may always take (a first one builds matplotlib's font cache)
_PAGE_FILE = re.compile(r"(?:(?:cpu|mem|tasks|net-[A-Za-z0-9_%~.=-]+)-(day|week|month|year)\.png"
                        r"|(index|week|month|year)\.html|)")
_PAGE_PERIOD = {"index": "day", "week": "week", "month": "month", "year": "year"}


def page_request(rel: str) -> tuple[str, str] | None:
    """(context folder, period) a /graphs/ path (URL-encoded, relative) belongs to;
    None for anything that is not a context's page or graph."""
    try:
        path = unquote(rel, errors="strict")
    except UnicodeDecodeError:
        return None
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != PAGES_DIR or len(path) > 1024:
        return None
    slug, name = parts[1], parts[2]
    m = _PAGE_FILE.fullmatch(name)
    if m is None or not slug or slug.startswith("."):
        return None
    try:
        decode_name(slug)
    except ValueError:
        return None
    if m.group(1):
        return slug, m.group(1)
    return slug, _PAGE_PERIOD[m.group(2) or "index"]


class _Job:
    __slots__ = ("id", "key", "proc", "done", "reply")

    def __init__(self, job_id: int, key, proc: subprocess.Popen):
        self.id = job_id
        self.key = key
        self.proc = proc
        self.done = threading.Event()
        self.reply: dict | None = None


class Renderer:
    """The worker process and the requests in flight to it (thread-safe)."""

    def __init__(self, settings: RenderSettings, page_timeout: float = 8.0, max_pending: int = 32,
                 run_limit: float | None = None, python: str | None = None, max_waiting: int = 2):
        self.settings = settings
        self.page_timeout = page_timeout
        self.max_pending = max_pending
        self.run_limit = run_limit if run_limit is not None else max(3 * settings.interval, RUN_TIME_FLOOR)
        self.python = python or sys.executable
        # Requests that may wait for a drawing at once: the HTTP server answers on a
        # small pool of threads, and a scrape must always find one free.
        self._waiting = threading.BoundedSemaphore(max_waiting)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._jobs: dict[int, _Job] = {}
        self._by_key: dict[object, _Job] = {}
        self._ids = itertools.count(1)
        self._run_job: _Job | None = None
        self._run_started = 0.0
        self._closed = False
        self.started_at = time.time()
        self.stats = {"pages": 0, "busy": 0, "timeouts": 0, "restarts": 0}

    # -- lifecycle

    def start(self) -> None:
        """A first page at /graphs/ when there is none (the worker starts on first use)."""
        self.write_placeholder()

    def write_placeholder(self) -> None:
        index = os.path.join(self.settings.graphs_dir, html.page_name("day"))
        if os.path.exists(index):
            return
        s = self.settings
        # A rate needs two updates, and the day graph's first row ends a step later.
        first_data = self.started_at + 3 * s.rrd_step
        when = first_data + min(s.interval, 2 * s.rrd_step + 5)
        page = html.waiting_page(socket.gethostname(), int(self.started_at), int(when), s.rrd_step)
        try:
            write_atomic(index, page.encode("utf-8"))
        except OSError as e:
            log.warning("cannot write %s: %s", index, e.strerror or e)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is not None:
            self._stop(proc)

    def _stop(self, proc: subprocess.Popen, kill: bool = False) -> None:
        try:
            if kill:
                proc.kill()
            else:
                proc.stdin.close()  # the worker ends at end of input, or between two graphs
        except OSError:
            pass
        try:
            proc.wait(timeout=2)  # a graph being drawn is not worth a slow SIGTERM
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _worker(self) -> subprocess.Popen | None:
        """The running worker, started when there is none (called with the lock held)."""
        if self._closed:
            return None
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:
            log.warning("graph renderer exited with status %s; starting it again", proc.returncode)
            self.stats["restarts"] += 1
        try:
            proc = subprocess.Popen(
                [self.python, "-I", "-m", "graphs"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                cwd="/", close_fds=True, text=True, encoding="ascii", bufsize=1,
            )
            proc.stdin.write(self.settings.to_json() + "\n")
            proc.stdin.flush()
        except OSError as e:
            log.error("cannot start the graph renderer: %s", e.strerror or e)
            self._proc = None
            return None
        self._proc = proc
        threading.Thread(target=self._read, args=(proc,), name="ctxmon-renderer", daemon=True).start()
        return proc

    def _read(self, proc: subprocess.Popen) -> None:
        """Replies from one worker; when it ends, every job it had fails."""
        for line in proc.stdout:
            try:
                msg = json.loads(line)
                job_id = int(msg["id"])
            except (ValueError, KeyError, TypeError):
                continue
            with self._lock:
                job = self._jobs.pop(job_id, None)
                if job is not None:
                    self._by_key.pop(job.key, None)
            if job is not None:
                job.reply = msg
                job.done.set()
        with self._lock:
            mine = [j for j in self._jobs.values() if j.proc is proc]
            for job in mine:
                del self._jobs[job.id]
                if self._by_key.get(job.key) is job:
                    del self._by_key[job.key]
            if self._run_job is not None and self._run_job.proc is proc:
                self._run_job = None
        for job in mine:
            job.reply = {"id": job.id, "ok": False, "error": "the renderer exited"}
            job.done.set()

    def _send(self, key, request: dict) -> _Job | None:
        """Queue a request (lock held); the job already queued for `key` if any."""
        job = self._by_key.get(key)
        if job is not None:
            return job
        proc = self._worker()
        if proc is None:
            return None
        job = _Job(next(self._ids), key, proc)
        try:
            proc.stdin.write(json.dumps({**request, "id": job.id}, ensure_ascii=True) + "\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            return None
        self._jobs[job.id] = job
        self._by_key[key] = job
        return job

    # -- pages on request

    def page(self, slug: str, period: str, timeout: float | None = None) -> dict:
        """Have the worker bring one context's page of one period up to date; its reply,
        or {"ok": False, "error": ...} when busy, timed out or not a context."""
        if period not in PERIODS:
            return {"ok": False, "error": "no such period"}
        try:
            folder = rrdlayout.context_dir(self.settings.rrd_dir, decode_name(slug))
        except ValueError:  # not a name the layout can have made
            folder = None
        if folder is None or not os.path.isdir(folder):
            return {"ok": False, "error": "no such context"}
        with self._lock:
            key = ("page", slug, period)
            pages = sum(1 for k in self._by_key if k[0] == "page")
            if key not in self._by_key and pages >= self.max_pending:
                self.stats["busy"] += 1
                return {"ok": False, "error": "busy"}
            job = self._send(key, {"op": "page", "slug": slug, "period": period})
        if job is None:
            return {"ok": False, "error": "no renderer"}
        if not job.done.wait(self.page_timeout if timeout is None else timeout):
            self.stats["timeouts"] += 1
            return {"ok": False, "error": "timed out"}
        self.stats["pages"] += 1
        return job.reply or {"ok": False, "error": "no reply"}

    def on_request(self, rel: str) -> None:
        """The HTTP server's hook (see the module's doc): returns when the page asked for
        is current, or after page_timeout seconds at most."""
        target = page_request(rel)
        if target is None:
            if rel in ("", "index.html"):
                self.write_placeholder()
            return
        if not self._waiting.acquire(blocking=False):
            self.stats["busy"] += 1
            self._write_drawing_page(*target)
            return  # served from what is on disk
        try:
            reply = self.page(*target)
        finally:
            self._waiting.release()
        if not reply.get("ok") and reply.get("error") not in ("no such context",):
            log.debug("graph page %s/%s: %s", target[0], target[1], reply.get("error"))
            if reply.get("error") in ("timed out", "busy"):
                self._write_drawing_page(*target)

    def _write_drawing_page(self, slug: str, period: str) -> None:
        """A page saying the graphs are being drawn, where the context's page does not
        exist yet (never over one: the worker's page, written meanwhile, wins)."""
        folder = os.path.join(self.settings.graphs_dir, PAGES_DIR, slug)
        path = os.path.join(folder, html.page_name(period))
        if os.path.exists(path):
            return
        try:
            context = decode_name(slug)
            if not os.path.isdir(rrdlayout.context_dir(self.settings.rrd_dir, context)):
                return
            page = html.drawing_page(socket.gethostname(), context, period, int(time.time()))
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".tmp-drawing-{os.getpid()}-{threading.get_ident()}")
            with open(tmp, "wb") as f:
                f.write(page.encode("utf-8"))
            try:
                os.link(tmp, path)  # fails when the real page is there by now
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        except (OSError, ValueError) as e:
            log.debug("cannot write a drawing page for %s: %s", slug, e)

    # -- periodic runs

    def periodic(self) -> bool:
        """Start a run unless one is going; False when none was started."""
        with self._lock:
            job = self._run_job
            if job is not None and not job.done.is_set():
                if time.monotonic() - self._run_started > self.run_limit:
                    log.error("graph rendering ran for over %.0f s; killing the renderer", self.run_limit)
                    proc, self._proc = self._proc, None
                    self._run_job = None
                else:
                    log.warning("graph rendering still running; skipping this round")
                    return False
            else:
                proc = None
        if proc is not None:
            self._stop(proc, kill=True)  # its reader thread fails the jobs it had
        with self._lock:
            budget = max(10.0, 0.5 * self.settings.interval)
            job = self._send(("run",), {"op": "run", "budget": budget})
            if job is None:
                return False
            self._run_job = job
            self._run_started = time.monotonic()
        return True

    def wait_run(self, timeout: float) -> dict | None:
        """The reply of the run in flight (tests, benchmarks)."""
        job = self._run_job
        if job is None or not job.done.wait(timeout):
            return None
        return job.reply


__all__ = ["Renderer", "page_request"]
