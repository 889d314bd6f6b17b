"""One poll: processes → contexts → sums and counters → an immutable Snapshot.

The sampler owns what must survive between polls: held stat files (in the scanner),
and the state that keeps CPU counters monotonic. Sources only say who belongs where
and what the kernel accounts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Iterable

from .catalog import DEPARTED_STATE_SECONDS
from .hostinfo import HostCapacity
from .procfs import (
    CLK_TCK,
    NET_DEV_CAP,
    PAGE_SIZE,
    ErrorCounts,
    ParseError,
    ProcessScanner,
    ProcStat,
    parse_net_dev,
    parse_uptime,
    read_text,
)
from .snapshot import ContextSample, InterfaceSample, Snapshot, unique_label
from .source import ContextIdentity, KernelAccounting, Source

if TYPE_CHECKING:  # only the daemon has traffic accounting: `ctxmon stat` skips nft's
    from .traffic import TrafficAccounting

log = logging.getLogger(__name__)

__all__ = ["CpuCounters", "DEPARTED_STATE_SECONDS", "Sampler"]

_NO_FIGURES: MappingProxyType = MappingProxyType({})


class CpuCounters:
    """Keeps per-context CPU seconds monotonic.

    Kernel accounting (cgroup cpu.stat, VServer sched) restarts from zero when the
    context is recreated: an offset absorbs that. Without kernel accounting, each
    process's own user/system ticks are accumulated as deltas keyed by (pid, start),
    so a process that exits keeps the share it was seen to use (the time between its
    last poll and its exit is not seen: at most one interval of one process).
    """

    def __init__(self) -> None:
        self._kernel: dict[str, list[float]] = {}  # key -> [last_u, last_s, off_u, off_s]
        self._ticks: dict[str, list[int]] = {}  # key -> [user ticks, system ticks]
        self._proc_last: dict[tuple[int, int], tuple[int, int]] = {}
        self._proc_next: dict[tuple[int, int], tuple[int, int]] = {}
        self._last_seen: dict[str, float] = {}

    def kernel(self, key: str, user: float, system: float) -> tuple[float, float]:
        st = self._kernel.get(key)
        if st is None:
            st = self._kernel[key] = [user, system, 0.0, 0.0]
        if user < st[0]:
            st[2] += st[0]
        if system < st[1]:
            st[3] += st[1]
        st[0], st[1] = user, system
        return st[2] + user, st[3] + system

    def has_kernel(self, key: str) -> bool:
        return key in self._kernel

    def held_kernel(self, key: str) -> tuple[float, float]:
        """The last kernel value, for a poll where the kernel file could not be read."""
        st = self._kernel[key]
        return st[2] + st[0], st[3] + st[1]

    def processes(self, key: str, members: Iterable[ProcStat]) -> tuple[float, float]:
        acc = self._ticks.get(key)
        if acc is None:
            acc = self._ticks[key] = [0, 0]
        last = self._proc_last
        nxt = self._proc_next
        du = ds = 0
        for p in members:
            k = (p.pid, p.start)
            prev = last.get(k)
            if prev is None:
                du += p.utime
                ds += p.stime
            else:
                # A process's own times never go down; guard against odd trees anyway.
                if p.utime > prev[0]:
                    du += p.utime - prev[0]
                if p.stime > prev[1]:
                    ds += p.stime - prev[1]
            nxt[k] = (p.utime, p.stime)
        acc[0] += du
        acc[1] += ds
        return acc[0] / CLK_TCK, acc[1] / CLK_TCK

    def end_poll(self, seen: Iterable[str], now: float) -> None:
        """Forget exited processes, and contexts departed for long."""
        self._proc_last, self._proc_next = self._proc_next, {}
        for key in seen:
            self._last_seen[key] = now
        for key, t in list(self._last_seen.items()):
            if now - t > DEPARTED_STATE_SECONDS:
                del self._last_seen[key]
                self._kernel.pop(key, None)
                self._ticks.pop(key, None)


class Sampler:
    """Turns the live (or recorded) `proc_root` into Snapshots, one per `sample()`."""

    def __init__(
        self,
        source: Source,
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.time,
        scanner: ProcessScanner | None = None,
        traffic: TrafficAccounting | None = None,
    ):
        self.source = source
        self.traffic = traffic  # [traffic] accounting; None when off
        self.proc_root = proc_root
        self.clock = clock
        self.scanner = scanner or ProcessScanner(proc_root)
        self.cpu = CpuCounters()
        self.capacity = HostCapacity(proc_root)

    def close(self) -> None:
        self.scanner.close()
        self.source.close()
        if self.traffic is not None:
            self.traffic.close()  # deletes the nftables table

    def replace_source(self, source: Source) -> None:
        """Group by new rules from the next poll on, keeping the held stat files and
        the CPU counters (a context that stays the same keeps counting)."""
        self.source.close()
        self.source = source

    def sample(self) -> Snapshot:
        t0 = time.monotonic()
        now = self.clock()
        errors = ErrorCounts()
        scan = self.scanner.scan()
        if scan.errors:
            errors["procfs"] += scan.errors
        groups = self.source.assign(scan.procs, errors)
        host_uptime = self._host_uptime(errors)
        host_ifaces = self._net_dev(os.path.join(self.proc_root, "net", "dev"), errors)
        netns = _NetNamespaces(self.proc_root, errors)

        contexts = []
        for ident, members in groups.items():
            acct = self.source.accounting(ident, errors)
            contexts.append(
                self._context(ident, members, acct, host_uptime, now, netns, errors)
            )
        self.cpu.end_poll((c.key for c in contexts), now)
        contexts = _unique_labels(contexts)
        if self.traffic is not None:
            traffic = self.traffic.sample(
                contexts, now, errors, getattr(self.source, "guest_config_dir", None))
            contexts = [dataclasses.replace(c, traffic=traffic[c.key]) if c.key in traffic
                        else c for c in contexts]
        contexts.sort(key=_context_order)
        host_cpus, host_memory = self.capacity.get()
        return Snapshot(
            timestamp=now,
            duration_seconds=time.monotonic() - t0,
            source=self.source.name,
            contexts=tuple(contexts),
            host_interfaces=tuple(host_ifaces),
            host_uptime_seconds=host_uptime,
            host_cpus=host_cpus,
            host_memory_bytes=host_memory,
            errors=dict(errors),
            vanished=scan.vanished,
        )

    def _context(
        self,
        ident: ContextIdentity,
        members: list[ProcStat],
        acct: KernelAccounting,
        host_uptime: float,
        now: float,
        netns: "_NetNamespaces",
        errors: ErrorCounts,
    ) -> ContextSample:
        vsz = rss = threads = live_u = live_s = 0
        first = None
        if len(members) > 16:
            # Column sums in C: at 20,000 processes in a context (`ctxmon stat`) the
            # loop below costs 5 ms; for a few it is the cheaper way.
            _, start, utime, stime, cutime, cstime, n_threads, vsize, pages = zip(*members)
            vsz, rss, threads = sum(vsize), sum(pages), sum(n_threads)
            live_u, live_s = sum(utime) + sum(cutime), sum(stime) + sum(cstime)
            first = min(start)
        else:
            for p in members:
                vsz += p.vsize
                rss += p.rss
                threads += p.threads
                live_u += p.utime + p.cutime
                live_s += p.stime + p.cstime
                if first is None or p.start < first:
                    first = p.start
        first_start = None if first is None else first / CLK_TCK

        key = ident.key
        if acct.cpu_user_seconds is not None and acct.cpu_system_seconds is not None:
            cpu_u, cpu_s = self.cpu.kernel(key, acct.cpu_user_seconds, acct.cpu_system_seconds)
            accounting = "kernel"
        elif self.cpu.has_kernel(key):
            # The kernel file failed this poll (already counted): hold, do not switch
            # to process sums, which would make the counter jump.
            cpu_u, cpu_s = self.cpu.held_kernel(key)
            accounting = "kernel"
        else:
            cpu_u, cpu_s = self.cpu.processes(key, members)
            accounting = "processes"

        started = acct.started_after_boot if acct.started_after_boot is not None else first_start
        uptime = None if started is None else max(0.0, host_uptime - started)
        if not members and acct.threads is not None:
            threads = acct.threads

        return ContextSample(
            key=key,
            name=ident.name,
            ctx_id=ident.ctx_id,
            source=ident.source,
            processes=len(members),
            threads=threads,
            vsz_bytes=vsz,
            rss_bytes=rss * PAGE_SIZE,
            cpu_user_seconds=cpu_u,
            cpu_system_seconds=cpu_s,
            cpu_accounting=accounting,
            live_user_seconds=live_u / CLK_TCK,
            live_system_seconds=live_s / CLK_TCK,
            start_time=None if uptime is None else now - uptime,
            uptime_seconds=uptime,
            first_process_start=first_start,
            xid=ident.xid,
            cgroup=ident.cgroup,
            limits=acct.limits,
            sockets=acct.sockets,
            interfaces=netns.interfaces_of(members),
            figures=MappingProxyType(dict(acct.figures)) if acct.figures else _NO_FIGURES,
        )

    def _host_uptime(self, errors: ErrorCounts) -> float:
        try:
            return parse_uptime(read_text(os.path.join(self.proc_root, "uptime")))
        except (OSError, ParseError) as e:
            errors["procfs"] += 1
            log.debug("uptime: %s", e)
            return 0.0

    @staticmethod
    def _net_dev(path: str, errors: ErrorCounts) -> list[InterfaceSample]:
        try:
            ifaces, bad = parse_net_dev(read_text(path, NET_DEV_CAP))
        except OSError as e:
            errors["net"] += 1
            log.debug("%s: %s", path, e)
            return []
        if bad:
            errors["net"] += bad
        return ifaces


class _NetNamespaces:
    """Per poll: which network namespace a context's processes are in, and its interfaces.

    A context shares the host's namespace unless its first member's `ns/net` differs
    from the reader's; each foreign namespace's `net/dev` is read once per poll.
    """

    def __init__(self, proc_root: str, errors: ErrorCounts):
        self.proc_root = proc_root
        self.errors = errors
        self.host = self._ns("self") or self._ns("1")
        self._read: dict[str, tuple[InterfaceSample, ...]] = {}

    def _ns(self, pid: str) -> str | None:
        try:
            return os.readlink(f"{self.proc_root}/{pid}/ns/net")
        except OSError:
            return None

    def interfaces_of(self, members: list[ProcStat]) -> tuple[InterfaceSample, ...]:
        if not members or self.host is None:
            return ()
        # The lowest pid's namespace (members come in no set order; pids are unique,
        # so the tuples compare by pid alone).
        pid = str(min(members).pid)
        ns = self._ns(pid)
        if ns is None or ns == self.host:
            return ()
        if ns not in self._read:
            path = f"{self.proc_root}/{pid}/net/dev"
            self._read[ns] = tuple(Sampler._net_dev(path, self.errors))
        return self._read[ns]


def _unique_labels(contexts: list[ContextSample]) -> list[ContextSample]:
    """Sinks key files and series on the label, so two contexts must never share one
    (`system.slice/x.service` and `user.slice/.../x.service`): the one with the
    smallest key keeps the name, the others get `~<ctx_id>` appended."""
    by_label: dict[str, list[ContextSample]] = {}
    for c in contexts:
        by_label.setdefault(c.label, []).append(c)
    if all(len(v) == 1 for v in by_label.values()):
        return contexts
    taken = set(by_label)
    out = []
    for same in by_label.values():
        same.sort(key=lambda c: c.key)
        out.append(same[0])
        for c in same[1:]:
            out.append(dataclasses.replace(c, name=unique_label(c.label, c.ctx_id, taken)))
    return out


def _context_order(c: ContextSample) -> tuple:
    numeric = c.ctx_id.isdigit()
    return (not numeric, int(c.ctx_id) if numeric else 0, c.name, c.key)
