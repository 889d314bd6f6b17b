"""Alert notifications, each kind on its own daemon thread behind a bounded queue:

- `command`: run once per firing and once per resolved alert, the alert as JSON on
  stdin and as CTXMON_ALERT_* environment variables, killed after `command_timeout`;
- `alertmanager_url`: firing and resolved alerts POSTed to its v2 API
  (/api/v2/alerts), firing ones again every minute so Alertmanager keeps them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Mapping

from exporters.names import loggable
from exporters.sink import Complaints

log = logging.getLogger("ctxmon.alerts")

QUEUE_SIZE = 1000  # notifications waiting for a notifier thread; more are dropped
RESOLVED = "resolved"


class NotifyError(Exception):
    """A notification that did not go through; the text says why, on one line."""


class _Notifier:
    """A daemon thread working through a bounded queue. Items that do not fit are
    dropped and counted (a poll never waits). Failures are counted and logged: every
    one when `log_every_failure` (each is about another alert), else the first of a
    run and the recovery."""

    kind = "notifier"
    log_every_failure = True

    def __init__(self) -> None:
        self.failures = 0
        self.dropped = 0
        self.sent = 0
        self._complaints = Complaints(log)  # failing: logged once, "working again" once
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.kind}",
                                        daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("alert %s: queue full, %d notification(s) dropped so far",
                            self.kind, self.dropped)
            return False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                try:
                    self.handle(item)
                except Exception as e:  # the thread never dies of one notification
                    self._failed(str(e) if isinstance(e, NotifyError)
                                 else f"{type(e).__name__}: {e}")
                else:
                    self.sent += 1
                    self._complaints.release(self.kind, text=f"alert {self.kind}: working again")
            finally:
                self._queue.task_done()

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self._complaints.complain(self.kind, "failing", text=f"alert {self.kind} failed: {why}"):
            return
        if self.log_every_failure:  # each failure is another alert's notification
            log.warning("alert %s failed: %s", self.kind, why)
        else:
            log.debug("alert %s failed again: %s", self.kind, why)

    def handle(self, item: Any) -> None:
        raise NotImplementedError

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every queued notification was handled (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and self._thread.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("alert %s: still busy at shutdown; %d notification(s) not sent",
                        self.kind, self._queue.qsize())


class CommandNotifier(_Notifier):
    """Runs the command once per alert: JSON on stdin, CTXMON_ALERT_* in the environment."""

    kind = "command"

    def __init__(self, argv: tuple[str, ...], timeout: float):
        self.argv = list(argv)
        self.timeout = timeout
        super().__init__()

    @staticmethod
    def environment(p: Mapping[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        labels, notes = p["labels"], p["annotations"]
        env.update({
            "CTXMON_ALERT_STATUS": p["status"],
            "CTXMON_ALERT_NAME": labels["alertname"],
            "CTXMON_ALERT_CONTEXT": labels["context"],
            "CTXMON_ALERT_SEVERITY": labels["severity"],
            "CTXMON_ALERT_HOST": labels.get("host", ""),
            "CTXMON_ALERT_METRIC": p["metric"],
            "CTXMON_ALERT_VALUE": "" if p["value"] is None else repr(p["value"]),
            "CTXMON_ALERT_THRESHOLD": repr(p["threshold"]),
            "CTXMON_ALERT_SUMMARY": notes["summary"],
            "CTXMON_ALERT_STARTS_AT": p["startsAt"],
            "CTXMON_ALERT_ENDS_AT": p["endsAt"] if p["status"] == RESOLVED else "",
        })
        return env

    def handle(self, p: Mapping[str, Any]) -> None:
        what = (f"{p['labels']['alertname']} {p['labels']['severity']} "
                f"{loggable(p['labels']['context'])} {p['status']}")
        data = json.dumps(p, ensure_ascii=False).encode() + b"\n"
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=self.environment(p),
                                    start_new_session=True, close_fds=True)
        except OSError as e:
            raise NotifyError(f"{what}: cannot run {self.argv[0]}: {e.strerror or e}") from None
        try:
            out, _ = proc.communicate(data, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its children too
            except OSError:
                proc.kill()
            proc.communicate()
            raise NotifyError(f"{what}: killed after {self.timeout:g}s") from None
        if proc.returncode != 0:
            last = (out.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
            raise NotifyError(f"{what}: exit status {proc.returncode}"
                              + (f": {loggable(last[:200])}" if last else ""))
        log.debug("alert command ran for %s", what)


class AlertmanagerNotifier(_Notifier):
    """POSTs batches of alerts to <url>/api/v2/alerts."""

    kind = "alertmanager"
    log_every_failure = False  # one down Alertmanager is one warning, not one a minute

    def __init__(self, url: str, timeout: float):
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.timeout = timeout
        super().__init__()

    def handle(self, alerts: list[dict]) -> None:
        body = json.dumps(alerts).encode()
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                r.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace").strip()
            raise NotifyError(f"{self.url}: HTTP {e.code} {loggable(detail)}") from None
        except (urllib.error.URLError, OSError) as e:
            raise NotifyError(f"{self.url}: {getattr(e, 'reason', e)}") from None
