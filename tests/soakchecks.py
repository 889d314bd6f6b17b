"""The checks of the soak (benchmarks/soak.py) that tests use too: an fd census of a
process, whether an RRD file has holes while its context ran, whether a scrape lists
exactly the snapshot's contexts.

Here rather than in benchmarks/ so that tests never import benchmarks: benchmarks
use test helpers (this, cgroups.py, rrdcached.py), not the other way round.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import rrdtool

from exporters.rrdlock import call as waiting_for_lock

STEP = 60  # RRD step and fake seconds per poll of the soak


def _tcp_states(pid: int | str = "self") -> dict[str, str]:
    """socket inode -> TCP state (hex, 0A = LISTEN) in the process's network namespace."""
    out = {}
    for name in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    out[parts[9]] = parts[3]
        except OSError:
            continue
    return out


_STAT_FD = re.compile(r"/proc/\d+/stat$")


def fd_census(pid: int | str = "self") -> dict[str, int]:
    """Open fds of a process (this one by default) by kind: `stat` (the scanner's held
    /proc/<pid>/stat), `cgroup` (held cgroup files), `tcp-conn` (HTTP connections in flight), `tcp-listen`, `socket`,
    `pipe`, `file`, `other`."""
    tcp = _tcp_states(pid)
    kinds: Counter = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # the fd listing itself, closed meanwhile
        if _STAT_FD.match(target):
            kinds["stat"] += 1
        elif target.startswith("/sys/fs/cgroup/"):
            kinds["cgroup"] += 1  # held accounting and cgroup.procs files: one set per cgroup
        elif target.startswith("socket:["):
            state = tcp.get(target[8:-1])
            kinds["socket" if state is None else "tcp-listen" if state == "0A" else "tcp-conn"] += 1
        elif target.startswith("pipe:["):
            kinds["pipe"] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds["other"] += 1
    return dict(kinds)


def steady_fds(census: dict[str, int]) -> int:
    """Fds that must not change over a soak: all but the held stat files (one per live
    process), held cgroup files (a few per live cgroup) and HTTP connections in flight."""
    return sum(n for kind, n in census.items() if kind not in ("stat", "cgroup", "tcp-conn"))


_INFO = re.compile(r'^ctxmon_context_info\{context="((?:[^"\\]|\\.)*)"', re.MULTILINE)
_CONTEXTS = re.compile(r"^ctxmon_contexts ([0-9.e+]+)$", re.MULTILINE)


def check_series(text: str, snap, departed: set[str]) -> list[str]:
    """The scrape must list exactly the snapshot's contexts, and none of `departed`."""
    problems = []
    labels = [re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), x)
              for x in _INFO.findall(text)]
    m = _CONTEXTS.search(text)
    if m is None or float(m.group(1)) != len(snap.contexts):
        problems.append(f"ctxmon_contexts is {m and m.group(1)}, the snapshot has {len(snap.contexts)}")
    if len(labels) != len(snap.contexts):
        problems.append(f"{len(labels)} context_info series for {len(snap.contexts)} contexts")
    stale = departed & set(labels)
    if stale:
        problems.append(f"departed contexts still exported: {sorted(stale)[:3]}")
    return problems


def _fetch_rows(path: str, start: int, end: int, resolution: int, daemon: str | None):
    args = [path, "AVERAGE", "-r", str(resolution), "-s", str(start), "-e", str(end)]
    if daemon:
        args = ["--daemon", daemon, *args]
    (s, _e, st), names, rows = waiting_for_lock(rrdtool.fetch, *args)
    # Row i covers (s + i*st, s + (i+1)*st]; it is stamped with its end.
    return [(s + (i + 1) * st, row) for i, row in enumerate(rows)], st


def check_rrd(path: str, first: int, last: int, end: int, daemon: str | None) -> str | None:
    """None if every row of `path` is known while its context ran; else what is missing.

    The context was polled at `first` ... `last`: rows ending at first + STEP ... last
    must be known (a counter's first update gives no rate yet). Rows within 2 days of
    `end` are read at the step; older ones in the 30-minute archive, where a row is
    checked when it lies wholly inside the context's life."""
    if not os.path.exists(path):
        return f"{path}: missing"
    problems = []
    lo = first + STEP
    fine_from = end - 2 * 86400 + 2 * STEP  # what the step archive still holds
    s = max(lo, fine_from)
    if last >= s:
        rows, st = _fetch_rows(path, s - STEP, last, STEP, daemon)
        holes = [t for t, row in rows if s <= t <= last and any(v is None for v in row)]
        if st != STEP:
            problems.append(f"read at {st} s, not {STEP} s")
        elif holes:
            problems.append(f"{len(holes)} unknown rows, first at {holes[0]}")
    top = min(last, fine_from)
    if top - first >= 2 * 1800:
        rows, st = _fetch_rows(path, first, top, 1800, daemon)
        if st == 1800:
            holes = [t for t, row in rows
                     if t - st >= first and t <= top and any(v is None for v in row)]
            if holes:
                problems.append(f"{len(holes)} unknown {st}-s rows, first at {holes[0]}")
        else:
            problems.append(f"old rows read at {st} s, not 1800 s")
    return f"{path}: {', '.join(problems)}" if problems else None
