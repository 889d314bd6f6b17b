"""Demand history from RRD directories (this host's `[rrd] dir`, or copies of other
hosts' data dirs), put on one time grid.

Per context it reads `cpu.rrd` (user + system, AVERAGE) and the memory figure (MAX):
the kernel's cgroup figure where a file of the context stores one, else summed RSS
from `mem.rrd`. `rrdtool fetch` itself picks, per file, the finest archive covering
the window, so any RRA layout holding the series works, older files' too; the grid's
step is the coarsest of those, and finer series are averaged (CPU) or maxed (memory)
onto it. Files are read in-process and directly (not through rrdcached: the few
minutes it may hold back do not matter to a plan over days).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import rrdtool

from collector.catalog import FILE_KIND, FILE_KINDS
from exporters.names import decode_name, loggable
from exporters.rrdlayout import CTX_DIR, capacity_path, context_file_name
from exporters.rrdlock import call as waiting_for_lock

from . import PlanError
from .model import HOST_CONTEXTS, Demand, Host, Problem, fill_gaps

log = logging.getLogger("ctxmon.plan")

CAPACITY_FILE = os.path.relpath(capacity_path("."), ".")  # host/capacity.json
CPU_FILE = context_file_name("cpu")
MEM_FILE = context_file_name("mem")
CPU_SCALE = FILE_KIND["cpu"].store_scale  # stored: microseconds per second
# The kernel's memory figure of a cgroup context: the catalog's file kind whose host
# graph stands in for summed RSS, and the data source it sums there. Where a context
# has none (VServer guests, cgroup v1 without memory), `mem.rrd` rss counts.
CGROUP_MEMORY = tuple((context_file_name(k.name), k.graph.host_ds[:1]) for k in FILE_KINDS
                      if k.scope == "context" and k.graph is not None
                      and k.graph.replaces_on_host == "mem" and k.graph.host_ds)


@dataclass
class Series:
    """One context's raw history on one host, before it is put on the grid."""

    context: str
    host: str
    cpu: tuple[int, int, np.ndarray]  # (start, step, values in cores; NaN unknown)
    memory: tuple[int, int, np.ndarray]  # bytes
    memory_source: str


def read_capacity(directory: str) -> dict | None:
    """{"cpus", "memory_bytes"[, "hostname"]} kept beside the RRD files, or None."""
    path = capacity_path(directory)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(65536))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise PlanError(f"{path}: unreadable capacity file ({e})") from None
    try:
        cpus, mem = float(data["cpus"]), float(data["memory_bytes"])
    except (TypeError, KeyError, ValueError):
        raise PlanError(f"{path}: expected {{\"cpus\": N, \"memory_bytes\": N}}") from None
    if not (0 < cpus < 1e6 and 0 < mem < 2**63):
        raise PlanError(f"{path}: capacity out of range")
    out = {"cpus": cpus, "memory_bytes": mem}
    name = data.get("hostname")
    if isinstance(name, str) and name:
        out["hostname"] = name
    return out


def _fetch(path: str, cf: str, start: int, end: int) -> tuple[int, int, list[str], np.ndarray]:
    (s, _e, st), names, rows = waiting_for_lock(rrdtool.fetch, path, cf, "--start", str(start),
                                                "--end", str(end))
    # None (unknown) becomes NaN with dtype float; a flat list converts ~3x faster
    # than the list of row tuples
    values = np.array([v for row in rows for v in row], dtype=np.float64).reshape(
        len(rows), len(names))
    return s, st, list(names), values


def _fetch_memory(path: str, start: int, end: int) -> tuple[int, int, list[str], np.ndarray]:
    """MAX where the file keeps it (a peak between rows counts), else AVERAGE."""
    try:
        return _fetch(path, "MAX", start, end)
    except rrdtool.OperationalError:
        return _fetch(path, "AVERAGE", start, end)


def read_rrd_dir(host: str, directory: str, start: int, end: int) -> list[Series]:
    """Every context's series under `directory` (a ctxmon `[rrd] dir`)."""
    return read_rrd_dirs([(host, directory)], start, end)


def _context_dirs(host: str, directory: str) -> list[tuple[str, str, str]]:
    """(host, context, folder) of every context under one RRD dir."""
    ctx_root = os.path.join(directory, CTX_DIR)
    if not os.path.isdir(directory):
        raise PlanError(f"history {host}: {directory}: no such directory")
    try:
        entries = sorted(os.scandir(ctx_root), key=lambda e: e.name)
    except FileNotFoundError:
        raise PlanError(f"history {host}: {directory}: no RRD files (no {CTX_DIR}/ folder: "
                        "not a ctxmon [rrd] dir?)") from None
    except OSError as e:
        raise PlanError(f"history {host}: {ctx_root}: {e.strerror}") from None
    out = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            out.append((host, decode_name(entry.name), entry.path))
        except ValueError:
            continue  # not ours
    return out


def _read_one(job: tuple[str, str, str, int, int]) -> Series | None:
    return _read_context(*job)


def read_rrd_dirs(sources: list[tuple[str, str]], start: int, end: int) -> list[Series]:
    """Every context's series under each (host, RRD dir); each dir is checked first."""
    jobs = []
    for host, directory in sources:
        found = _context_dirs(host, directory)
        if not any(os.path.isfile(os.path.join(path, CPU_FILE)) for _, _, path in found):
            raise PlanError(f"history {host}: {directory}: no context has a {CPU_FILE}")
        jobs += [(h, c, path, start, end) for h, c, path in found]
    results = [_read_one(j) for j in jobs]
    return [s for s in results if s is not None]


def _read_context(host: str, context: str, path: str, start: int, end: int) -> Series | None:
    cpu_path = os.path.join(path, CPU_FILE)
    if not os.path.isfile(cpu_path):
        return None
    try:
        s, st, names, values = _fetch(cpu_path, "AVERAGE", start, end)
    except rrdtool.OperationalError as e:
        log.warning("%s: %s: unreadable, context %s left out (%s)", host, cpu_path,
                    loggable(context), e)
        return None
    # user + system, microseconds per second -> cores; unknown if either is
    cpu = values.sum(axis=1) / CPU_SCALE if values.size else np.zeros(0)
    memory = None
    source = "rss"
    for filename, wanted in CGROUP_MEMORY:
        f = os.path.join(path, filename)
        if not os.path.isfile(f):
            continue
        try:
            ms, mst, mnames, mvalues = _fetch_memory(f, start, end)
        except rrdtool.OperationalError:
            continue
        for ds in wanted:
            if ds in mnames:
                col = mvalues[:, mnames.index(ds)]
                if np.any(~np.isnan(col)):
                    memory, source = (ms, mst, col), "cgroup"
                    break
        if memory is not None:
            break
    if memory is None:
        f = os.path.join(path, MEM_FILE)
        try:
            ms, mst, mnames, mvalues = _fetch_memory(f, start, end)
            memory = (ms, mst, mvalues[:, mnames.index("rss")])
        except (rrdtool.OperationalError, ValueError):
            log.warning("%s: %s: no readable memory series, context %s counted with none",
                        host, f, loggable(context))
            memory = (s, st, np.zeros(cpu.size))
    return Series(context, host, (s, st, cpu), memory, source)


def to_grid(series: tuple[int, int, np.ndarray], start: int, step: int, points: int,
            how: str) -> np.ndarray:
    """Values on the grid (start, start + step], ... averaged ("mean") or maxed ("max");
    a grid point no value falls in is NaN."""
    s, st, values = series
    if values.size == 0:
        return np.full(points, np.nan)
    ends = s + st * (np.arange(values.size) + 1)  # a row stands for (end - st, end]
    if st == step and (s - start) % step == 0:
        offset = (s - start) // step
        out = np.full(points, np.nan)
        lo, hi = max(0, offset), min(points, offset + values.size)
        if lo < hi:
            out[lo:hi] = values[lo - offset:hi - offset]
        return out
    idx = -(-(ends - start) // step) - 1
    keep = (idx >= 0) & (idx < points) & ~np.isnan(values)
    idx, v = idx[keep], values[keep]
    if how == "max":
        out = np.full(points, -np.inf)
        np.maximum.at(out, idx, v)
        out[np.isinf(out)] = np.nan
        return out
    sums = np.bincount(idx, weights=v, minlength=points)
    counts = np.bincount(idx, minlength=points)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def build_problem(raw: list[Series], hosts: list[Host], end: int, days: float,
                  min_seconds: float, step: int | None = None) -> Problem:
    """Put every series on one grid ending at `end`; refuse contexts with less than
    `min_seconds` of CPU history and leave out those with no data in the window's
    last 6 hours (gone)."""
    if not raw:
        raise PlanError("no context history in the window")
    if step is None:
        step = max(s.cpu[1] for s in raw)
    window = int(days * 86400)
    end = end // step * step
    points = max(1, window // step)
    start = end - points * step
    names: dict[str, int] = {}
    for s in raw:
        names[s.context] = names.get(s.context, 0) + 1
    contexts, refused = [], []
    recent = max(6 * 3600, 3 * step)  # rrdcached may hold back the last hour or so
    for s in raw:
        name = s.context if names[s.context] == 1 else f"{s.context}@{s.host}"
        cpu = to_grid(s.cpu, start, step, points, "mean")
        known = ~np.isnan(cpu)
        known_seconds = float(known.sum()) * step
        if known_seconds < min_seconds:
            refused.append((name, f"only {_dur(known_seconds)} of history (less than "
                                  f"{_dur(min_seconds)})"))
            continue
        last_known = int(np.flatnonzero(known)[-1])
        if (points - 1 - last_known) * step >= recent:
            refused.append((name, f"no data in the window's last {_dur(recent)} (gone from "
                                  f"{s.host}?)"))
            continue
        memory = to_grid(s.memory, start, step, points, "max")
        contexts.append(Demand(name, s.host, np.maximum(fill_gaps(cpu, step, start), 0.0),
                               np.maximum(fill_gaps(memory, step, start), 0.0),
                               known_seconds, s.memory_source, s.context in HOST_CONTEXTS))
    contexts.sort(key=lambda d: d.name)
    if not contexts:
        raise PlanError("no context has enough history: " + "; ".join(
            f"{loggable(n)}: {why}" for n, why in refused[:3]))
    return Problem(start, step, hosts, contexts, refused)


def _dur(seconds: float) -> str:
    from .model import format_duration

    return format_duration(seconds)
