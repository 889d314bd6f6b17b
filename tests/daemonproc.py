"""`ctxmon run` as a child process for tests: a temporary config, its log in a file."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

POLLED = "ctxmon.daemon: poll "  # the debug line each finished poll logs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path, rrd_dir, *, interval="1s", daemon="", extra="",
                 graphs='enabled = false') -> str:
    path.write_text(
        f"""
[collector]
interval = "{interval}"
source = "cgroup"

[rrd]
dir = "{rrd_dir}"
step = "1s"
daemon = "{daemon}"

[exporter]
listen = "127.0.0.1:{free_port()}"

[graphs]
{graphs}
{extra}
"""
    )
    return str(path)


class Daemon:
    """`ctxmon run` as a child process, its log in a file."""

    def __init__(self, config: str, log_path, *, command=(sys.executable, "-m", "ctxmon.cli"),
                 cwd=None):
        """`command`: how ctxmon is started (the console script, say); `cwd`: where."""
        m = re.search(r'listen = "127.0.0.1:(\d+)"', open(config).read())
        self.port = int(m.group(1)) if m else None
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [*command, "-v", "run", "-c", config], cwd=cwd,
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return open(self.log_path, encoding="utf-8", errors="replace").read()

    def wait_for_log(self, needle: str, limit: float = 20.0, count: int = 1) -> None:
        deadline = time.monotonic() + limit
        while self.text().count(needle) < count:
            assert self.proc.poll() is None, f"daemon exited:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {needle!r} in:\n{self.text()}"
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM, limit: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=limit)
        finally:
            self.log.close()

    def metrics(self, timeout: float = 10.0) -> str:
        """GET /metrics from this daemon."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=timeout) as r:
            return r.read().decode()

    def wait_for_metrics(self, limit: float = 20.0) -> str:
        deadline = time.monotonic() + limit
        while True:
            assert self.proc.poll() is None, f"daemon exited:\n{self.text()}"
            try:
                text = self.metrics()
                if "ctxmon_context_processes" in text:
                    return text
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no metrics served:\n{self.text()}"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
