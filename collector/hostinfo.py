"""The host's capacity: online CPUs (`<proc>/stat`) and memory (`<proc>/meminfo`), for
`ctxmon_host_cpus`, `ctxmon_host_memory_bytes` and the RRD dir's `host/capacity.json`
that `ctxmon plan` reads. Pure parsers; `HostCapacity` reads them from a proc tree
(a recorded one too) and re-reads only every few minutes: CPUs and memory change
only by hot-plug, and `stat` can be tens of KB on a big host."""

from __future__ import annotations

import os
import time
from typing import Callable

from .procfs import ParseError, read_text

REFRESH_SECONDS = 300.0


def parse_cpu_count(text: str) -> int:
    """Online CPUs: the `cpuN` lines of /proc/stat."""
    n = sum(1 for line in text.splitlines()
            if line.startswith("cpu") and line[3:4].isdigit())
    if not 0 < n <= 1 << 20:
        raise ParseError(f"stat: {n} cpuN lines")
    return n


def parse_mem_total(text: str) -> int:
    """MemTotal of /proc/meminfo, in bytes."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                kib = int(parts[1])
            except (IndexError, ValueError):
                break
            if len(parts) == 3 and parts[2] == "kB" and 0 < kib < 1 << 50:
                return kib * 1024
            break
    raise ParseError("meminfo: no valid MemTotal line")


class HostCapacity:
    """(CPUs, memory bytes) of the host whose proc tree this is; None where unreadable."""

    def __init__(self, proc_root: str, clock: Callable[[], float] = time.monotonic):
        self.proc_root = proc_root
        self.clock = clock
        self._read_at: float | None = None
        self._value: tuple[int | None, int | None] = (None, None)

    def get(self) -> tuple[int | None, int | None]:
        now = self.clock()
        if self._read_at is None or abs(now - self._read_at) >= REFRESH_SECONDS:
            self._read_at = now
            self._value = (self._read(os.path.join(self.proc_root, "stat"), parse_cpu_count),
                           self._read(os.path.join(self.proc_root, "meminfo"), parse_mem_total))
        return self._value

    @staticmethod
    def _read(path: str, parse: Callable[[str], int]) -> int | None:
        try:
            return parse(read_text(path))
        except (OSError, ParseError):
            return None  # absent: no series, no capacity file (not an error of a poll)
