"""A demo history: the talk's 24 servers, as contexts on 3 hosts, 30 days of RRD files.

`ctxmon demo-history DIR` writes DIR/<host>/ as a ctxmon `[rrd] dir` would be
(ctx/<name>/cpu.rrd and mem.rrd in ctxmon's own layout at a 5-minute step, and
host/capacity.json), so that `ctxmon plan --history vs1=DIR/vs1 ...` and the graph
pages work on a fresh machine. The patterns are made up but shaped like the talk's
school network: office hours for file and print services, lessons for teaching,
nightly backup, mirror sync and antivirus scans, evening peaks for the public web,
quiet weekends. `write_context` is also what the tests and the benchmark use.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import rrdtool

from exporters.files import write_atomic
from exporters.rrd import definition_args
from exporters.rrdlayout import capacity_path, context_dir, context_file_name

from .history import CPU_SCALE
from .model import GiB

DAY = 86400
STEP = 300

# name, host now, kind of day, CPU cores at the busy hours, base cores, memory GiB
SERVERS = (
    ("samba1", "vs1", "office", 0.98, 0.07, 2.0),
    ("samba2", "vs1", "office", 0.77, 0.07, 2.0),
    ("samba3", "vs2", "office", 0.63, 0.06, 1.5),
    ("db-school", "vs1", "office+batch", 1.12, 0.14, 6.0),
    ("db-web", "vs2", "evening", 0.91, 0.14, 4.0),
    ("db-library", "vs3", "office+batch", 0.56, 0.07, 3.0),
    ("mail-in", "vs2", "office", 0.63, 0.07, 1.5),
    ("mail-out", "vs3", "office", 0.42, 0.03, 1.0),
    ("antivirus", "vs2", "night", 1.54, 0.10, 2.5),
    ("webmail", "vs1", "office", 0.63, 0.03, 1.5),
    ("web-public", "vs3", "evening", 1.26, 0.10, 2.0),
    ("web-intranet", "vs1", "office", 0.49, 0.03, 1.0),
    ("management", "vs3", "flat", 0.14, 0.10, 1.0),
    ("mirror", "vs3", "night", 1.12, 0.01, 1.0),
    ("dhcp", "vs2", "morning", 0.10, 0.01, 0.25),
    ("helpdesk", "vs3", "office", 0.35, 0.03, 1.0),
    ("auth", "vs1", "morning", 0.63, 0.03, 0.5),
    ("test", "vs2", "bursts", 1.05, 0.01, 2.0),
    ("teaching", "vs2", "lessons", 1.68, 0.03, 3.0),
    ("backup", "vs3", "night", 1.40, 0.03, 1.5),
    ("dns", "vs1", "flat", 0.07, 0.03, 0.25),
    ("proxy", "vs1", "office", 0.70, 0.03, 1.0),
    ("print", "vs2", "lessons", 0.28, 0.01, 0.5),
    ("wiki", "vs3", "evening", 0.42, 0.03, 1.0),
)
HOSTS = {"vs1": (8, 32 * GiB), "vs2": (8, 32 * GiB), "vs3": (8, 32 * GiB)}


def _shape(kind: str, hours: np.ndarray, weekday: np.ndarray, rng) -> np.ndarray:
    """0..1 activity at each point."""
    work = weekday < 5
    def bump(centre, width):
        d = np.minimum(np.abs(hours - centre), 24 - np.abs(hours - centre))
        return np.exp(-0.5 * (d / width) ** 2)
    if kind == "office":
        a = np.clip((hours >= 8) & (hours < 18), 0, 1) * (0.6 + 0.4 * bump(10.5, 1.5) + 0.3 * bump(15, 1.5))
        a = np.minimum(a, 1.0) * np.where(work, 1.0, 0.1)
    elif kind == "office+batch":
        a = 0.7 * _shape("office", hours, weekday, rng) + bump(2.5, 0.7)
    elif kind == "evening":
        a = 0.4 * bump(13, 3) + bump(20.5, 1.5)
    elif kind == "night":
        a = bump(3, 1.0)
    elif kind == "morning":
        a = bump(8.3, 0.5) * np.where(work, 1.0, 0.2)
    elif kind == "lessons":
        a = (((hours >= 8.5) & (hours < 13)) | ((hours >= 14) & (hours < 16.5))).astype(float)
        a = a * np.where(work, 1.0, 0.0)
    elif kind == "bursts":
        a = (rng.random(hours.size) < 0.002).astype(float)
        a = np.convolve(a, np.ones(12), mode="same").clip(0, 1) * np.where(work, 1, 0.3)
    else:  # flat
        a = np.full(hours.size, 0.5)
    return np.clip(a, 0, 1.2)


def _rra_args(points_at_step: int | None) -> list[str] | None:
    if points_at_step is None:
        return None
    return [f"RRA:{cf}:0.5:1:{points_at_step}" for cf in ("AVERAGE", "MAX")]


def write_context(directory: str, context: str, start: int, step: int,
                  cpu_cores: np.ndarray, memory_bytes: np.ndarray,
                  rows: int | None = None, cgroup_memory: np.ndarray | None = None) -> None:
    """cpu.rrd and mem.rrd of one context as the ctxmon RRD sink writes them, with
    the given series from `start` (cores and bytes per step; `memory_bytes` is summed
    RSS), and cgmem.rrd when `cgroup_memory` (the kernel's figure) is given. `rows`:
    one archive of that many rows at the step instead of ctxmon's layout."""
    path = context_dir(directory, context)
    os.makedirs(path, exist_ok=True)
    unknown = np.concatenate([[False], np.isnan(cpu_cores)])  # NaN: written as U
    used = np.nan_to_num(np.round(cpu_cores * step * CPU_SCALE))
    counters = np.concatenate([[0], np.cumsum(used)]).astype(np.int64)
    user = counters * 7 // 10
    system = counters - user
    times = start + step * np.arange(counters.size)
    cpu = [f"{t}:U:U" if u_ else f"{t}:{u}:{s}" for t, u, s, u_ in zip(times, user, system, unknown)]
    mem = [f"{t}:U:U" if u_ or np.isnan(m) else f"{t}:{int(m)}:{int(m * 1.6)}"
           for t, m, u_ in zip(times[1:], memory_bytes, unknown[1:])]
    files = [("cpu", cpu), ("mem", mem)]
    if cgroup_memory is not None:  # usage, anon, file
        files.append(("cgmem", [f"{t}:{int(m)}:{int(m * 0.7)}:{int(m) - int(m * 0.7)}"
                                for t, m in zip(times[1:], cgroup_memory)]))
    for kind, updates in files:
        f = os.path.join(path, context_file_name(kind))
        if os.path.exists(f):
            os.unlink(f)
        args = definition_args(kind, step)
        if rows is not None:
            args = [a for a in args if a.startswith("DS:")] + _rra_args(rows)
        rrdtool.create(f, "--start", str(start - 1), "--step", str(step), *args)
        for i in range(0, len(updates), 2000):  # bounded argument lists
            rrdtool.update(f, *updates[i:i + 2000])


def write_capacity(directory: str, cpus: float, memory_bytes: float, hostname: str) -> None:
    data = {"cpus": cpus, "memory_bytes": int(memory_bytes), "hostname": hostname}
    write_atomic(capacity_path(directory), (json.dumps(data) + "\n").encode())


def demo_series(end: int, days: int = 30, step: int = STEP, seed: int = 2009
                ) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """{server: (host, CPU cores, memory bytes)} for the window ending at `end`."""
    rng = np.random.default_rng(seed)
    points = days * DAY // step
    start = end - points * step
    t = start + step * (np.arange(points) + 1) - step / 2  # middle of each step, UTC
    hours = (t % DAY) / 3600.0
    weekday = ((t // DAY) + 3) % 7  # 1970-01-01 was a Thursday (3)
    out = {}
    for name, host, kind, busy, base, mem_gib in SERVERS:
        a = _shape(kind, hours, weekday, rng)
        noise = rng.gamma(4.0, 0.25, points)  # mean 1, a right tail
        cpu = base * (0.7 + 0.3 * noise) + busy * a * (0.85 + 0.15 * noise)
        mem = mem_gib * GiB * (0.75 + 0.2 * np.minimum(a, 1) + 0.02 * rng.random(points))
        out[name] = (host, cpu, mem)
    return out


CONFIG = """# ctxmon config of the demo host {host}: `ctxmon graph -c {host}.toml` draws its
# pages into {host}-graphs/ (paths are relative to this file)
[collector]
interval = "{step}s"

[rrd]
dir = "{host}"
step = "{step}s"

[graphs]
dir = "{host}-graphs"
"""


def write_demo(directory: str, end: int, days: int = 30,
               only: Sequence[str] | None = None) -> dict[str, str]:
    """The demo under `directory`: DIR/<host>/ as its [rrd] dir and DIR/<host>.toml
    (for `ctxmon graph`); returns {host: its RRD dir}."""
    start = end // STEP * STEP - days * DAY
    series = demo_series(start + days * DAY, days)
    dirs = {}
    for host, (cpus, mem) in HOSTS.items():
        d = os.path.join(directory, host)
        dirs[host] = d
        write_capacity(d, cpus, mem, host)
        write_atomic(os.path.join(directory, host + ".toml"),
                     CONFIG.format(host=host, step=STEP).encode())
    for name, (host, cpu, mem) in series.items():
        if only is None or name in only:
            write_context(dirs[host], name, start, STEP, cpu, mem)
    return dirs
