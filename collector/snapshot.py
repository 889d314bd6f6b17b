"""The immutable snapshot: the only thing sinks (RRD, Prometheus, alerts, graphs) see.

Plain frozen dataclasses with tuples inside, so a snapshot can be handed to another
thread (a scrape) while the next poll builds a new one. Units are base units:
bytes, seconds, epoch seconds for points in time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


def _frozen_mapping(d: Mapping[str, float] | None = None) -> Mapping[str, float]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True, slots=True)
class LimitRow:
    """One resource limit of a context (a VServer `limit` line, a cgroup memory.max ...).

    Memory-like resources are converted to bytes; counts stay counts. `None` means
    not reported by this layout, or unlimited (the kernel's -1) for soft/hard.
    """

    resource: str  # as the kernel names it: PROC, VM, RSS ... or memory, pids
    unit: str  # "bytes" or "count"
    current: int
    minimum: int | None = None  # vs2.2+ only: low-water mark
    maximum: int | None = None  # high-water mark
    soft: int | None = None
    hard: int | None = None
    hits: int = 0  # times the limit refused something (a counter)


@dataclass(frozen=True, slots=True)
class SocketAccounting:
    """VServer `cacct` line: socket calls and payload bytes for one address family."""

    family: str  # UNSPEC UNIX INET INET6 PACKET OTHER
    recv_calls: int
    recv_bytes: int
    send_calls: int
    send_bytes: int
    fail_calls: int
    fail_bytes: int


@dataclass(frozen=True, slots=True)
class InterfaceSample:
    """Counters of one network interface (a `net/dev` line)."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_drops: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_drops: int


@dataclass(frozen=True, slots=True)
class TrafficSample:
    """A context's traffic as `[traffic] accounting` measured it: counters that never
    decrease (offsets carry them over rule rebuilds and a context's restart)."""

    method: str  # how it was measured: "cgroup", "address" or "netns"
    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int


@dataclass(frozen=True, slots=True)
class ContextSample:
    """Everything sampled for one context in one poll.

    Two CPU figures on purpose:
    - `cpu_user_seconds` / `cpu_system_seconds` are counters that never decrease:
      the kernel's per-context accounting where it exists (cgroup cpu.stat, VServer
      sched), else per-process deltas accumulated across exits. Sinks graph these.
    - `live_user_seconds` / `live_system_seconds` are vserver-stat's definition: the
      sum over the context's live processes of their own time plus their reaped
      children's time. It drops when processes exit; `ctxmon stat` prints it.
    """

    key: str  # stable identity within its source: the xid, or the context's cgroup path
    name: str  # what an admin calls it: guest name, container or unit name, `host`
    ctx_id: str  # short id for the CTX column: the xid, or a short stable hash
    source: str  # "vserver" or "cgroup"
    processes: int
    threads: int
    vsz_bytes: int
    rss_bytes: int
    cpu_user_seconds: float
    cpu_system_seconds: float
    cpu_accounting: str  # "kernel" or "processes": where the counters come from
    live_user_seconds: float
    live_system_seconds: float
    start_time: float | None  # epoch seconds the context started, None if unknown
    uptime_seconds: float | None  # at the snapshot's time
    # vserver-stat's UPTIME is host uptime minus its first live process's start, even
    # where the kernel knows when the context began; this keeps that figure.
    first_process_start: float | None  # seconds after host boot, min over live processes
    xid: int | None = None  # VServer contexts only
    cgroup: str | None = None  # cgroup contexts only: the context's cgroup path
    limits: tuple[LimitRow, ...] = ()
    sockets: tuple[SocketAccounting, ...] = ()
    interfaces: tuple[InterfaceSample, ...] = ()  # only when it has its own netns
    # Further figures the kernel keeps for this context (cgroup memory.stat, pressure
    # ...), by the key the metric catalog (collector.catalog) declares for each, in
    # base units. A key is absent, not 0, where this context has no such figure.
    figures: Mapping[str, float] = field(default_factory=_frozen_mapping)
    traffic: TrafficSample | None = None  # only with [traffic] accounting on

    @property
    def label(self) -> str:
        """The name sinks use: `name`, or a stand-in when the source found none
        (a VServer xid without a config dir has an empty NAME in vserver-stat)."""
        if self.name:
            return self.name
        return f"xid-{self.xid}" if self.xid is not None else f"ctx-{self.ctx_id}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One poll of the whole host."""

    timestamp: float  # epoch seconds when the poll started
    duration_seconds: float  # how long the poll took
    source: str  # the source that grouped processes into contexts
    contexts: tuple[ContextSample, ...]  # sorted by (ctx_id as number if numeric, name)
    host_interfaces: tuple[InterfaceSample, ...]
    host_uptime_seconds: float  # `<proc>/uptime`, so recorded trees keep their own clock
    # Per-source count of things skipped this poll (unreadable, truncated or malformed
    # files). A pid that vanished between listing and reading is a race, not an error,
    # and is counted in `vanished` instead.
    errors: Mapping[str, int] = field(default_factory=_frozen_mapping)
    vanished: int = 0
    # The host's capacity (online CPUs, MemTotal); None where the proc tree lacks it.
    host_cpus: int | None = None
    host_memory_bytes: int | None = None

    def context(self, label: str) -> ContextSample | None:
        for c in self.contexts:
            if c.label == label:
                return c
        return None


def unique_label(label: str, ctx_id: str, taken: set[str]) -> str:
    """The one rule that keeps two contexts from sharing a label (the sampler's, for
    file names and series; the exporter's, for label values that collide after
    cleaning): `label~ctx_id`, then `label~ctx_id~2`, ..., never one in `taken`,
    which it joins."""
    candidate, n = f"{label}~{ctx_id}", 2
    while candidate in taken:  # a context may really be called "x~40012"
        candidate, n = f"{label}~{ctx_id}~{n}", n + 1
    taken.add(candidate)
    return candidate
