"""Shared test factories: contexts, snapshots, a fake clock, waiting for a condition.

Import from here rather than writing another `ctx()` in a test module:

    from factories import FakeClock, context, iface, snapshot, wait_until

Every field has a plain default, so a test names only what it is about.
(`tests/` is on sys.path through conftest.py.)
"""

from __future__ import annotations

import subprocess
import time
from typing import Any, Callable, Iterable, TypeVar

from collector.snapshot import ContextSample, InterfaceSample, LimitRow, Snapshot

T = TypeVar("T")


def context(name: str = "web", *, key: str | None = None, ctx_id: str = "42",
            source: str = "cgroup", processes: int = 1, threads: int = 1,
            vsz: int = 0, rss: int = 0, user: float = 0.0, system: float = 0.0,
            limits: Iterable[LimitRow] = (), interfaces: Iterable[InterfaceSample] = (),
            **fields: Any) -> ContextSample:
    """A ContextSample; any other ContextSample field may be given by its own name."""
    values: dict[str, Any] = dict(
        key=key if key is not None else f"/{name}", name=name, ctx_id=ctx_id, source=source,
        processes=processes, threads=threads, vsz_bytes=vsz, rss_bytes=rss,
        cpu_user_seconds=user, cpu_system_seconds=system, cpu_accounting="kernel",
        live_user_seconds=user, live_system_seconds=system, start_time=None,
        uptime_seconds=None, first_process_start=None,
        cgroup=f"/{name}" if source == "cgroup" else None,
        limits=tuple(limits), interfaces=tuple(interfaces),
    )
    values.update(fields)
    return ContextSample(**values)


def iface(name: str = "eth0", rx_bytes: int = 0, tx_bytes: int = 0, *, rx_packets: int | None = None,
          tx_packets: int | None = None, rx_errors: int = 0, tx_errors: int = 0, rx_drops: int = 0,
          tx_drops: int = 0) -> InterfaceSample:
    """An interface's counters; packets default to bytes / 100."""
    return InterfaceSample(
        name, rx_bytes, rx_bytes // 100 if rx_packets is None else rx_packets, rx_errors, rx_drops,
        tx_bytes, tx_bytes // 100 if tx_packets is None else tx_packets, tx_errors, tx_drops)


def snapshot(*contexts: ContextSample, t: float = 1000.0, host_interfaces: Iterable[InterfaceSample] = (),
             **fields: Any) -> Snapshot:
    """A Snapshot of `contexts` at epoch time `t`."""
    values: dict[str, Any] = dict(
        timestamp=t, duration_seconds=0.01, source="cgroup", contexts=tuple(contexts),
        host_interfaces=tuple(host_interfaces), host_uptime_seconds=1000.0)
    values.update(fields)
    return Snapshot(**values)


class FakeClock:
    """A clock a test moves by hand: `clock()` is `clock.now`; `advance(s)` moves it."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def wait_until(cond: Callable[[], T], what: str, limit: float = 20.0, every: float = 0.05) -> T:
    """Poll `cond` until it returns something true, and return that; AssertionError
    naming `what` after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}")
        time.sleep(every)


def one_shot_scan(root: str, c_reader: bool, skip_pid: int | None = None):
    """One `ProcessScanner(root, max_open=0)` scan, through the C reader (asserted
    built) or the pure-Python loop: the two ways `ctxmon stat` may read a /proc."""
    from collector import procfs

    saved = procfs._procscan
    assert saved is not None or not c_reader, "collector._procscan was not built"
    procfs._procscan = saved if c_reader else None
    scanner = procfs.ProcessScanner(root, max_open=0)
    try:
        return scanner.scan(skip_pid=skip_pid)
    finally:
        scanner.close()
        procfs._procscan = saved


def rrdtool_cli(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """The `rrdtool` command as an admin runs it, tried again for up to 5 s while the
    daemon or rrdcached holds the file's lock: librrd does not wait for it (see
    exporters/rrdlock.py) and fails with "could not lock RRD"."""
    deadline = time.monotonic() + 5
    while True:
        r = subprocess.run(["rrdtool", *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode == 0 or "could not lock RRD" not in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if check and r.returncode:
        raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout, r.stderr)
    return r
