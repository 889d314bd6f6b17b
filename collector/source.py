"""The interface every context source implements, and `auto` selection.

A source answers two questions: which context each process belongs to (`assign`),
and what the kernel accounts per context beyond the process sums (`accounting`).
Everything common (sums, monotonic CPU counters, network namespaces, the snapshot)
lives in `collector.sampler`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Sequence

from .procfs import ErrorCounts, ProcStat
from .snapshot import LimitRow, SocketAccounting


@dataclass(frozen=True, slots=True)
class ContextIdentity:
    """Who a context is. Hashable: the sampler keys its state on it."""

    key: str  # stable identity within the source: the xid as text, or the cgroup path
    name: str  # display name
    ctx_id: str  # short id for the CTX column
    source: str
    xid: int | None = None
    cgroup: str | None = None


@dataclass(frozen=True, slots=True)
class KernelAccounting:
    """Per-context figures the kernel keeps itself.

    CPU seconds here include exited processes; they may restart from zero when the
    context is recreated (the sampler keeps the exported counter monotonic).
    """

    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    started_after_boot: float | None = None  # seconds since host boot the context began
    threads: int | None = None
    limits: tuple[LimitRow, ...] = ()
    sockets: tuple[SocketAccounting, ...] = ()
    figures: Mapping[str, float] | None = None  # ContextSample.figures (catalog keys)


class Source(ABC):
    name: str

    @abstractmethod
    def assign(
        self, procs: Sequence[ProcStat], errors: ErrorCounts
    ) -> dict[ContextIdentity, list[ProcStat]]:
        """Group processes into contexts.

        May include contexts with no process (a VServer context the kernel still
        lists). Files that cannot be read or parsed add to `errors[self.name]`;
        a process that vanished is simply left out.
        """

    def accounting(self, ident: ContextIdentity, errors: ErrorCounts) -> KernelAccounting:
        return KernelAccounting()

    def close(self) -> None:
        """Release held files."""


def detect_source(proc_root: str) -> str:
    """`auto`: VServer when the kernel has `<proc>/virtual`, else cgroup."""
    return "vserver" if os.path.isdir(os.path.join(proc_root, "virtual")) else "cgroup"
