#!/usr/bin/env python3
"""How long does the `ctxmon` command take as a whole process, next to its baselines
in the same run?

- `ctxmon --version` against `python3 -c pass` (target: at most 2x);
- `ctxmon stat` on the host as it is (idle) against `python3 -c pass` (at most 4x);
- with N sleeping processes (default 20,000) in G real v2 cgroups (default 8),
  `ctxmon stat --json` against `ps -e -o pid,vsz,rss,times,cgroup` (at most 0.5x);
  then the scan of /proc alone, in this process: the pure-Python loop, the C reader
  (collector/_procscan.c) with one thread and with two, wall and CPU.

The commands of one comparison run interleaved (a, b, a, b, ...), so a load change
on the machine hits both alike; medians of the wall times. Spawns and removes its
processes and cgroups (also on Ctrl-C). Run as root:

    .venv/bin/python benchmarks/startup_bench.py [--processes 20000] [--repeat 15]

`python -X importtime -m ctxmon.cli stat` shows where a command's start-up goes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))

from sample_bench import kill_cgroup, spawn_group, v2_root  # noqa: E402

CTXMON = os.path.join(os.path.dirname(sys.executable), "ctxmon")
# The baseline is the interpreter ctxmon runs on, with the same site-packages: a
# system python3 may load other .pth files at start (here one imports certifi).
PYTHON3 = sys.executable
RECORDED = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "vs20", "proc")


def run(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system) of one run of `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def read_floor() -> float:
    """Seconds to list /proc and open, read and close every <pid>/stat, nothing else:
    what any pure-Python reader of those files pays, the floor of the last row."""
    t0 = time.perf_counter()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fd = os.open(f"/proc/{name}/stat", os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                os.read(fd, 1024)
            except OSError:
                pass
            os.close(fd)
    return time.perf_counter() - t0


def scan_cost(threads: int | None) -> tuple[float, float]:
    """(wall, CPU) seconds of one in-process scan of /proc: the C reader with this many
    threads, or (None) the pure-Python loop `ctxmon stat` falls back to."""
    from collector import procfs

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)  # all threads
        return r.ru_utime + r.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    if threads is None:
        saved, procfs._procscan = procfs._procscan, None
        try:
            procfs.ProcessScanner("/proc", max_open=0).scan()
        finally:
            procfs._procscan = saved
    else:
        procfs._procscan.scan("/proc", -1, procfs.ProcStat, threads)
    return time.perf_counter() - t0, cpu() - c0


def compare(a: list[str], b: list[str], repeat: int):
    """Median (wall, CPU) seconds of `a` and of `b`, interleaved after a warm-up each."""
    run(a), run(b)
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(run(a))
        tb.append(run(b))

    def medians(ts):
        return statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
    return medians(ta), medians(tb)


def line(what: str, ours, base, base_name: str, target: float) -> str:
    """Wall medians and their ratio (the target is on it), CPU medians beside: on a
    loaded machine wall time includes waiting for a core."""
    ratio = ours[0] / base[0]
    verdict = "ok" if ratio <= target else "over target"
    return (f"{what:<36} {ours[0] * 1e3:8.1f} ms  vs  {base_name:<33} {base[0] * 1e3:8.1f} ms"
            f"  = {ratio:5.2f}x wall (target <= {target:g}x: {verdict});"
            f"  CPU {ours[1] * 1e3:.0f} vs {base[1] * 1e3:.0f} ms = {ours[1] / base[1]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=20000,
                    help="sleeping processes for the last comparison (0: skip it)")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    pass_ = [PYTHON3, "-c", "pass"]
    # An installed ctxmon has its bytecode; a source tree edited since its last run
    # under PYTHONDONTWRITEBYTECODE (set here) would recompile its changed modules on
    # every start (~20 ms), which is no start-up cost a user pays.
    top = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    subprocess.run([PYTHON3, "-m", "compileall", "-q"]
                   + [os.path.join(top, d) for d in ("ctxmon", "collector")],
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""}, check=True,
                   stdout=subprocess.DEVNULL)
    print("load average %.2f %.2f %.2f (1, 5, 15 min) at start" % os.getloadavg(), flush=True)
    rows = []
    v, p = compare([CTXMON, "--version"], pass_, args.repeat)
    rows.append(line("ctxmon --version", v, p, "python3 -c pass (venv)", 2))
    # An idle host, whatever else runs on this one: a recorded tree (5 guests).
    s, p = compare([CTXMON, "stat", "--proc-root", RECORDED], pass_, args.repeat)
    rows.append(line("ctxmon stat (recorded idle host)", s, p, "python3 -c pass (venv)", 4))
    n = len(json.loads(subprocess.run([CTXMON, "stat", "--json"], capture_output=True,
                                      text=True).stdout))
    s, p = compare([CTXMON, "stat"], pass_, args.repeat)
    rows.append(line(f"ctxmon stat (this host, {n} ctx)", s, p, "python3 -c pass (venv)", 4))
    print("\n".join(rows), flush=True)
    if args.processes <= 0:
        return

    if os.geteuid() != 0:
        sys.exit("startup_bench: the many-process case needs root (cgroups)")
    root = v2_root()
    # Leftovers of an earlier run would be counted as contexts and read by both sides.
    stale = [d for d in os.listdir(root) if d.startswith("ctxbench-")]
    if stale:
        print(f"note: {len(stale)} benchmark cgroup(s) left by another run: {stale[:3]}")
    tag = uuid.uuid4().hex[:8]
    groups = [os.path.join(root, f"ctxbench-start-{tag}-{i}.service") for i in range(args.groups)]
    procs = []
    try:
        per = args.processes // args.groups
        for cg in groups:
            os.mkdir(cg)
            procs.append(spawn_group(cg, per))
        total = sum(1 for d in os.listdir("/proc") if d.isdigit())
        cgroups = len(json.loads(subprocess.run([CTXMON, "stat", "--json"],
                                                capture_output=True, text=True).stdout))
        s, ps = compare([CTXMON, "stat", "--json"],
                        ["ps", "-e", "-o", "pid,vsz,rss,times,cgroup"], max(5, args.repeat // 3))
        print(line(f"stat --json ({total} procs, {cgroups} ctx)", s, ps,
                   "ps -e -o pid,vsz,rss,times,cgroup", 0.5))
        floor = statistics.median(read_floor() for _ in range(3))
        print(f"floor: listing /proc and open+read+close of each <pid>/stat in a Python "
              f"loop {floor * 1e3:.1f} ms = {floor / ps[0]:.2f}x of ps (+ python3 -c pass "
              f"{p[0] * 1e3:.1f} ms = {(floor + p[0]) / ps[0]:.2f}x)")
        # The scan alone, in this process: the pure-Python loop against the C reader
        # with one thread and with two (interleaved, medians).
        ways = {"Python loop": None, "C reader, 1 thread": 1, "C reader, 2 threads": 2}
        costs: dict[str, list] = {w: [] for w in ways}
        for _ in range(max(5, args.repeat)):
            for w, threads in ways.items():
                costs[w].append(scan_cost(threads))
        for w, xs in costs.items():
            wall = statistics.median(x[0] for x in xs)
            cpu = statistics.median(x[1] for x in xs)
            print(f"scan of /proc in-process, {w:<20} wall {wall * 1e3:6.1f} ms  CPU {cpu * 1e3:6.1f} ms")
        print("load average %.2f %.2f %.2f at end" % os.getloadavg())
    finally:
        for p in procs:
            p.kill()
        for cg in groups:
            if os.path.isdir(cg):
                kill_cgroup(cg)


if __name__ == "__main__":
    main()
