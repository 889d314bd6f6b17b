"""A private rrdcached for tests, on a socket under a temporary directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


class Rrdcached:
    """A private rrdcached in the foreground (-g), with -B so it writes under tmp only."""

    def __init__(self, base: str):
        self.base = base
        self.sock = os.path.join(base, "c.sock")
        self.addr = "unix:" + self.sock
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        journal = os.path.join(self.base, "journal")
        os.makedirs(journal, exist_ok=True)
        log_file = open(os.path.join(self.base, "rrdcached.log"), "ab")
        self.proc = subprocess.Popen(
            ["rrdcached", "-g", "-l", self.addr, "-p", os.path.join(self.base, "rrdcached.pid"),
             "-j", journal, "-F", "-w", "3600", "-f", "7200", "-b", self.base, "-B"],
            stdout=log_file, stderr=log_file,
        )
        log_file.close()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rrdcached exited: {open(os.path.join(self.base, 'rrdcached.log')).read()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.proc = None


def sigstop(proc: subprocess.Popen, limit: float = 5.0) -> None:
    """SIGSTOP `proc` and wait until the kernel shows it stopped (state T)."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + limit
    while True:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {proc.pid} did not stop")
        time.sleep(0.01)
