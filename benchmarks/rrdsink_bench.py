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
floor.)

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


def load_rev(rev: str) -> object:
    src = subprocess.run(["git", "-C", os.path.join(HERE, ".."), "show", f"{rev}:exporters/rrd.py"],
                         check=True, capture_output=True, text=True).stdout
    name = "exporters._baseline_rrd"
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    mod.__package__ = "exporters"
    sys.modules[name] = mod
    exec(compile(src, f"{rev}:exporters/rrd.py", "exec"), mod.__dict__)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--rev", default=BASELINE)
    args = ap.parse_args()
    old_rrd = load_rev(args.rev)
    snap = snapshot(args.contexts)
    base = tempfile.mkdtemp(prefix="ctxmon-rrdsink-bench-")
    real_update = rrdtool.update
    try:
        step = 10
        sinks = {"before": old_rrd.RrdSink(os.path.join(base, "old"), step),
                 "after": new_rrd.RrdSink(os.path.join(base, "new"), step)}
        t = int(time.time()) // step * step - 10 * step * args.rounds
        for s in sinks.values():
            s.write(dataclasses.replace(snap, timestamp=t))  # files created
        files = {k: new_rrd.list_rrd_files(s.directory) for k, s in sinks.items()}
        rrdtool.update = operator.is_  # a no-op of two arguments, in C
        took: dict[str, list[float]] = {k: [] for k in sinks}
        for r in range(args.rounds):
            t += step
            one = dataclasses.replace(snap, timestamp=t)
            for k in (("before", "after") if r % 2 else ("after", "before")):
                t0 = time.perf_counter()
                sinks[k].write(one)
                took[k].append(time.perf_counter() - t0)
        rrdtool.update = real_update
        for k, s in sinks.items():
            assert s.error_count == 0 and s.skipped_count == 0, (k, s.error_count, s.skipped_count)
        b, a = statistics.median(took["before"]), statistics.median(took["after"])
        print(f"{args.contexts:,} contexts, {len(files['after']):,} files ({len(files['before']):,} "
              f"before), median of {args.rounds} polls, librrd's update a no-op: the sink's "
              f"Python per poll {b * 1e3:.2f} ms ({args.rev}) -> {a * 1e3:.2f} ms (this "
              f"checkout): {a / b:.2f}x; load {os.getloadavg()[0]:.2f}")
        for s in sinks.values():
            s.close()
    finally:
        rrdtool.update = real_update
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
