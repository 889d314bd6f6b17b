#!/usr/bin/env python3
"""The RRD sink's own Python per poll (direct writes), this checkout next to a git
revision of exporters/rrd.py (default: BASELINE, just before the sink's Python was cut
for issue 15), in the same run.

One synthetic snapshot of N contexts (catalog_bench's: cpu, mem, tasks and an
interface file per context, 4 host interfaces). Each sink creates its files on a
first real write; then librrd's update is replaced by a no-op C function, so what is
timed is the sink's Python around it (the update lines, each file's state, fault
bookkeeping): `RrdSink.write` of one poll, the two sinks interleaved, medians of R
rounds. (librrd's own cost is the same for both: collectd_bench.py prints it as the
floor.) Then the same through an rrdcached (unless --no-rrdcached): the sink's thread
CPU per poll, one BATCH exchange included.

Usage: .venv/bin/python benchmarks/rrdsink_bench.py [--contexts 1000] [--rounds 31] [--rev REV]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import operator
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import rrdtool  # noqa: E402

from catalog_bench import snapshot  # noqa: E402
from exporters import rrd as new_rrd  # noqa: E402

BASELINE = "7844366"
STEP = 10


def load_rev(rev: str) -> object:
    src = subprocess.run(["git", "-C", os.path.join(HERE, ".."), "show", f"{rev}:exporters/rrd.py"],
                         check=True, capture_output=True, text=True).stdout
    name = "exporters._baseline_rrd"
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    mod.__package__ = "exporters"
    sys.modules[name] = mod
    exec(compile(src, f"{rev}:exporters/rrd.py", "exec"), mod.__dict__)
    return mod


def interleaved(sinks: dict, snap, t: int, rounds: int, clock) -> dict[str, list[float]]:
    took: dict[str, list[float]] = {k: [] for k in sinks}
    for r in range(rounds):
        t += STEP
        one = dataclasses.replace(snap, timestamp=t)
        for k in (("before", "after") if r % 2 else ("after", "before")):
            t0 = clock()
            sinks[k].write(one)
            took[k].append(clock() - t0)
    for k, s in sinks.items():
        assert s.error_count == 0 and s.skipped_count == 0, (k, s.error_count, s.skipped_count)
        s.close()
    return took


def report(what: str, took: dict[str, list[float]], files: int, args) -> None:
    b, a = statistics.median(took["before"]), statistics.median(took["after"])
    print(f"{what}: {args.contexts:,} contexts, {files:,} files, median of {args.rounds} "
          f"polls: {b * 1e3:.2f} ms ({args.rev}) -> {a * 1e3:.2f} ms (this checkout): "
          f"{a / b:.2f}x; load {os.getloadavg()[0]:.2f}", flush=True)


def direct(old_rrd, snap, base: str, args) -> None:
    """Direct writes, librrd's update a no-op after the first poll: wall per write."""
    real_update = rrdtool.update
    sinks = {"before": old_rrd.RrdSink(os.path.join(base, "old"), STEP),
             "after": new_rrd.RrdSink(os.path.join(base, "new"), STEP)}
    t = int(time.time()) // STEP * STEP - 10 * STEP * args.rounds
    for s in sinks.values():
        s.write(dataclasses.replace(snap, timestamp=t))  # files created
    files = len(new_rrd.list_rrd_files(sinks["after"].directory))
    try:
        rrdtool.update = operator.is_  # a no-op of two arguments, in C
        took = interleaved(sinks, snap, t, args.rounds, time.perf_counter)
    finally:
        rrdtool.update = real_update
    report("direct, the sink's Python (librrd a no-op)", took, files, args)


def through_rrdcached(old_rrd, snap, base: str, args) -> None:
    """Through an rrdcached (-w 3600: no disk writes meanwhile): the sink's thread CPU
    per write, the BATCH exchange included (rrdcached's own work is not in it)."""
    from collectd_bench import Rrdcached

    cache = Rrdcached(os.path.join(base, "rrdcached"))
    try:
        sinks = {"before": old_rrd.RrdSink(os.path.join(base, "old-cached"), STEP,
                                           daemon=cache.addr),
                 "after": new_rrd.RrdSink(os.path.join(base, "new-cached"), STEP,
                                          daemon=cache.addr)}
        t = int(time.time()) // STEP * STEP - 10 * STEP * args.rounds
        for s in sinks.values():
            s.write(dataclasses.replace(snap, timestamp=t))  # files created
        files = len(new_rrd.list_rrd_files(sinks["after"].directory))
        took = interleaved(sinks, snap, t, args.rounds, time.thread_time)
    finally:
        cache.stop()
    report("rrdcached, the sink's CPU (one BATCH a poll)", took, files, args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--rev", default=BASELINE)
    ap.add_argument("--no-rrdcached", action="store_true", help="direct writes only")
    args = ap.parse_args()
    old_rrd = load_rev(args.rev)
    snap = snapshot(args.contexts)
    base = os.path.realpath(tempfile.mkdtemp(prefix="ctxmon-rrdsink-bench-"))
    try:
        direct(old_rrd, snap, base, args)
        if not args.no_rrdcached and shutil.which("rrdcached"):
            through_rrdcached(old_rrd, snap, base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
