"""What the planner works on: hosts with capacities, contexts with demand series on one
time grid, and the targets a placement must meet."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from . import PlanError

GiB = 1024**3
# Contexts that are a host's own processes, not guests: the cgroup source's `host`,
# VServer's xid 0 and 1 (vserver-stat's names).
HOST_CONTEXTS = frozenset(("host", "root server", "monitoring server"))


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    cpus: float  # cores
    memory_bytes: float


@dataclass(slots=True)
class Demand:
    """One context's demand over the window, gaps filled (see `fill_gaps`)."""

    name: str  # unique within the problem
    host: str | None  # where it runs now; None for a context not running anywhere yet
    cpu: np.ndarray  # cores per grid point
    memory: np.ndarray  # bytes per grid point
    known_seconds: float  # how much of the window had data
    memory_source: str = "rss"  # "cgroup" (the kernel's figure) or "rss" (summed RSS)
    fixed: bool = False  # the host's own processes: they stay with it, never moved

    @property
    def memory_peak(self) -> float:
        return float(self.memory.max()) if self.memory.size else 0.0


@dataclass(slots=True)
class Problem:
    start: int  # epoch seconds of the grid's first point's start
    step: int  # seconds per grid point
    hosts: list[Host]
    contexts: list[Demand]
    refused: list[tuple[str, str]] = field(default_factory=list)  # (context, why)

    @property
    def points(self) -> int:
        return self.contexts[0].cpu.size if self.contexts else 0

    def host(self, name: str) -> Host | None:
        for h in self.hosts:
            if h.name == name:
                return h
        return None


@dataclass(frozen=True, slots=True)
class Targets:
    percentile: float = 99.0  # of each host's summed CPU series
    cpu_target: float = 0.8  # that percentile stays under cpu_target x CPUs
    mem_target: float = 0.9  # the sum of memory peaks stays under mem_target x memory

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 100:
            raise PlanError(f"--percentile {self.percentile:g}: must be above 0 and at most 100")
        for name, v in (("--cpu-target", self.cpu_target), ("--mem-target", self.mem_target)):
            if not 0 < v <= 1:
                raise PlanError(f"{name} {v:g}: must be above 0 and at most 1")


def percentile_index(points: int, percentile: float) -> int:
    """Index in the sorted series of the `percentile` (nearest rank: the smallest value
    that at least `percentile` % of the points do not exceed; numpy's
    method="inverted_cdf")."""
    return min(points - 1, max(0, math.ceil(percentile * points / 100 - 1e-9) - 1))


_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(i?)([bB]?)\s*")
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> float:
    """Bytes from `32GiB`, `32G` (binary), `32GB` (decimal) or a plain number."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise PlanError(f"{text!r}: not a size (e.g. 32GiB, 512MiB, 1073741824)")
    value, prefix, binary, b = m.groups()
    power = _POWERS[prefix.lower()]
    base = 1000 if (b and not binary and power) else 1024
    size = float(value) * base**power
    if size <= 0 or not math.isfinite(size) or size > 2**63:
        raise PlanError(f"{text!r}: size out of range")
    return size


def parse_host(spec: str) -> Host:
    """`NAME=CPUS,MEMORY`, e.g. `new1=8,32GiB`."""
    name, eq, rest = spec.partition("=")
    cpus_text, comma, mem_text = rest.partition(",")
    if not eq or not comma or not name.strip():
        raise PlanError(f"--host {spec!r}: expected NAME=CPUS,MEMORY (e.g. new1=8,32GiB)")
    try:
        cpus = float(cpus_text)
    except ValueError:
        raise PlanError(f"--host {spec!r}: CPUS {cpus_text!r} is not a number") from None
    if not 0 < cpus <= 1_000_000 or not math.isfinite(cpus):
        raise PlanError(f"--host {spec!r}: CPUS must be above 0")
    return Host(name.strip(), cpus, parse_size(mem_text))


def parse_pair(option: str, spec: str) -> tuple[str, str]:
    """`CTX=HOST` of --keep and --move (the context name may itself hold `=`: the
    last `=` separates)."""
    ctx, eq, host = spec.rpartition("=")
    if not eq or not ctx or not host:
        raise PlanError(f"{option} {spec!r}: expected CONTEXT=HOST")
    return ctx, host


def fill_gaps(values: np.ndarray, step: int, start: int) -> np.ndarray:
    """Unknown points (NaN) take the mean of the known points at the same time of day
    (a context's day pattern is what correlation works with), else its overall mean,
    else 0."""
    known = ~np.isnan(values)
    if known.all():
        return values
    out = values.copy()
    if not known.any():
        out[:] = 0.0
        return out
    slots = max(1, 86400 // step) if 86400 % step == 0 else 0
    if slots > 1:
        slot = ((start // step) + np.arange(values.size)) % slots
        sums = np.bincount(slot[known], weights=values[known], minlength=slots)
        counts = np.bincount(slot[known], minlength=slots)
        with np.errstate(invalid="ignore", divide="ignore"):
            profile = sums / counts
        fill = profile[slot]
        fill = np.where(np.isnan(fill), np.nanmean(values), fill)
    else:
        fill = np.full(values.size, np.nanmean(values))
    out[~known] = fill[~known]
    return out


def format_bytes(n: float) -> str:
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if abs(n) >= 1024**power:
            return f"{n / 1024**power:.1f}{unit}"
    return f"{n:.0f}B"


def format_duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"
