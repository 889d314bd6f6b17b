"""The daemon's renderer worker: one long-lived child process that draws.

Started by graphs.client as `python -I -m graphs` (isolated: no code from the
working directory or PYTHON* variables), in `/`. It reads its RenderSettings as the
first line on stdin (the daemon's validated configuration, never the config file),
then one JSON request a line:

    {"id": 7, "op": "page", "slug": "<context folder>", "period": "day"}
    {"id": 8, "op": "run", "budget": 150}

and answers each with one JSON line on stdout, `{"id": 7, "ok": true, ...}` or
`{"id": 7, "ok": false, "error": "..."}`. matplotlib is imported once, at start, and
one throw-away graph drawn (figure, font and glyphs loaded), so a page costs the
drawing only.

A run (the host's graphs and pages, and the contexts with alerts) answers page
requests between two graphs: a page asked for in a browser never waits for a whole
run. Log lines go to stderr, timestamped like the daemon's.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from typing import TextIO

from . import PERIODS
from .settings import RenderSettings, SettingsError

log = logging.getLogger("ctxmon.graphs")


class _Stop(Exception):
    """The daemon closed our stdin: stop what we do, at once."""


def log_format() -> str:
    """The daemon's own format: timestamps, except under systemd (journald adds them)."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM") and not os.environ.get("INVOCATION_ID"):
        fmt = "%(asctime)s " + fmt
    return fmt


class Worker:
    def __init__(self, settings: RenderSettings, out: TextIO):
        from .paint import Painter
        from .run import GraphRun

        self.out = out
        self.requests: queue.Queue = queue.Queue()
        self.graphs = GraphRun(settings, Painter(settings.width, settings.height))
        self._in_run = False
        self._deferred: list[dict | None] = []

    # -- I/O

    def read(self, stream: TextIO) -> None:
        """Reader thread: requests into the queue; None at end of input."""
        try:
            for line in stream:
                try:
                    req = json.loads(line)
                except ValueError:
                    log.warning("renderer: malformed request ignored")
                    continue
                if isinstance(req, dict):
                    self.requests.put(req)
        finally:
            self.requests.put(None)

    def reply(self, req: dict, ok: bool, **fields) -> None:
        msg = {"id": req.get("id"), "ok": ok, **fields}
        self.out.write(json.dumps(msg, ensure_ascii=True) + "\n")
        self.out.flush()

    # -- requests

    def loop(self) -> int:
        while True:
            req = self._deferred.pop(0) if self._deferred else self.requests.get()
            if req is None:
                return 0
            try:
                self.handle(req)
            except _Stop:
                return 0

    def handle(self, req: dict) -> None:
        op = req.get("op")
        if op == "page":
            self.page(req, locked=self._in_run)
        elif op == "run":
            self.run(req)
        else:
            self.reply(req, False, error="unknown request")

    def page(self, req: dict, locked: bool) -> None:
        from .run import GraphError

        slug, period = req.get("slug"), req.get("period")
        if not isinstance(slug, str) or period not in PERIODS:
            self.reply(req, False, error="bad page request")
            return
        t0 = time.monotonic()
        try:
            if locked:
                r = self.graphs.draw_context_page(slug, period)
            else:
                r = self.graphs.context_page(slug, period, wait=float(req.get("wait", 10.0)))
        except GraphError as e:
            self.reply(req, False, error=str(e))
            return
        except Exception as e:  # a page's failure never ends the worker
            log.warning("renderer: page %s/%s failed: %s", slug, period, e)
            log.debug("renderer: page failed", exc_info=True)
            self.reply(req, False, error="drawing failed, see the log")
            return
        self.reply(req, True, rendered=r.rendered, failed=r.failed,
                   seconds=round(time.monotonic() - t0, 3))

    def between(self) -> None:
        """Between two graphs of a run: answer the page requests waiting."""
        while True:
            try:
                req = self.requests.get_nowait()
            except queue.Empty:
                return
            if req is None:
                raise _Stop()
            if req.get("op") == "page":
                self.page(req, locked=True)
            else:
                self._deferred.append(req)

    def run(self, req: dict) -> None:
        from .run import GraphError

        budget = req.get("budget")
        budget = float(budget) if isinstance(budget, (int, float)) and budget > 0 else None
        t0 = time.monotonic()
        self._in_run = True
        try:
            r = self.graphs.run(PERIODS, alerting_only=True, budget=budget, between=self.between,
                                wait=float(req.get("wait", 30.0)))
        except GraphError as e:
            log.warning("renderer: %s", e)
            self.reply(req, False, error=str(e))
            return
        except _Stop:
            raise
        except Exception as e:
            log.error("renderer: run failed: %s", e)
            log.debug("renderer: run failed", exc_info=True)
            self.reply(req, False, error="run failed, see the log")
            return
        finally:
            self._in_run = False
        seconds = time.monotonic() - t0
        log.info("%d graphs drawn, %d unchanged, %d failed, %d waiting for data, %d left, %d pages in %.1f s (%s)",
                 r.rendered, r.skipped, r.failed, r.waiting, r.left, r.pages, seconds, self.graphs.graphs_dir)
        self.reply(req, True, rendered=r.rendered, skipped=r.skipped, failed=r.failed, left=r.left,
                   seconds=round(seconds, 3))


def main(argv: list[str] | None = None) -> int:
    if argv:
        print("python -m graphs: the daemon's renderer worker takes no arguments "
              "(settings on stdin); to draw now use `ctxmon graph -c FILE`", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=log_format(), stream=sys.stderr)
    # Protocol lines only on our stdout: anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="ascii", buffering=1)
    os.dup2(2, 1)
    first = sys.stdin.readline()
    try:
        settings = RenderSettings.from_json(first)
    except SettingsError as e:
        print(f"python -m graphs: {e}", file=sys.stderr)
        return 2
    worker = Worker(settings, out)
    try:  # warm before the first request: the first page someone waits for costs no more than the next
        worker.graphs.painter.warm()
    except Exception as e:  # a page drawn later would say the same; the worker serves on
        log.warning("renderer: warming up failed: %s", e)
    threading.Thread(target=worker.read, args=(sys.stdin,), name="requests", daemon=True).start()
    try:
        return worker.loop()
    except KeyboardInterrupt:
        return 130


__all__ = ["Worker", "log_format", "main"]
