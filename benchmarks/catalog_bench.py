#!/usr/bin/env python3
"""What deriving the sinks from the metric catalog costs, next to the hand-written
code it replaced, in the same run.

Baseline: exporters/prometheus.py and exporters/rrd.py as of commit 859b212 (before
the catalog), loaded from git into this process. Timed on one synthetic snapshot of
N contexts (each with 3 limits, 1 interface and 2 socket families) and 4 host
interfaces, interleaved, medians of R rounds:
- Prometheus: the snapshot's families (`SnapshotCollector._snapshot_families`) and
  their text (`generate_latest`);
- RRD: the update lines of one poll (`RrdSink._points`).
Usage: .venv/bin/python benchmarks/catalog_bench.py [--contexts 1000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from prometheus_client.exposition import generate_latest  # noqa: E402

from collector.snapshot import (  # noqa: E402
    ContextSample,
    InterfaceSample,
    LimitRow,
    Snapshot,
    SocketAccounting,
)
from exporters import prometheus as new_prom  # noqa: E402
from exporters import rrd as new_rrd  # noqa: E402

BASELINE = "859b212"


def load_baseline(module: str) -> object:
    """exporters.<module> as of BASELINE, as exporters._baseline_<module>."""
    src = subprocess.run(["git", "-C", os.path.join(HERE, ".."), "show",
                          f"{BASELINE}:exporters/{module}.py"],
                         check=True, capture_output=True, text=True).stdout
    name = f"exporters._baseline_{module}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "exporters"
    sys.modules[name] = mod
    exec(compile(src, f"{BASELINE}:exporters/{module}.py", "exec"), mod.__dict__)
    return mod


def snapshot(n: int) -> Snapshot:
    contexts = []
    for i in range(n):
        contexts.append(ContextSample(
            key=f"/svc{i}", name=f"svc{i:05d}", ctx_id=str(i + 1), source="cgroup",
            processes=3, threads=7, vsz_bytes=1 << 30, rss_bytes=1 << 28,
            cpu_user_seconds=1000.5 + i, cpu_system_seconds=200.25 + i,
            cpu_accounting="kernel", live_user_seconds=1.0, live_system_seconds=1.0,
            start_time=1.7e9, uptime_seconds=3600.0, first_process_start=10.0,
            cgroup=f"/svc{i}",
            # no "memory" row: the baseline had no cgmem.rrd, so both write the same files
            limits=(LimitRow("VM", "bytes", 1 << 28, maximum=1 << 29, hard=1 << 30, hits=2),
                    LimitRow("pids", "count", 7, maximum=9, hard=100),
                    LimitRow("RSS", "bytes", 1 << 28, soft=1 << 29)),
            sockets=(SocketAccounting("INET", 1, 2, 3, 4, 0, 0),
                     SocketAccounting("UNIX", 5, 6, 7, 8, 0, 0)),
            interfaces=(InterfaceSample("eth0", i, i, 0, 0, 2 * i, i, 0, 0),)))
    ifaces = tuple(InterfaceSample(f"eth{k}", 10**9, 10**6, 1, 2, 10**9, 10**6, 3, 4)
                   for k in range(4))
    return Snapshot(timestamp=1.7e9, duration_seconds=0.1, source="cgroup",
                    contexts=tuple(contexts), host_interfaces=ifaces, host_uptime_seconds=1e5)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    old_prom, old_rrd = load_baseline("prometheus"), load_baseline("rrd")
    snap = snapshot(args.contexts)
    me = new_prom.SelfMetrics()

    def collector(mod):
        return mod.SnapshotCollector(lambda: snap, lambda: me, version="bench")

    class Fams:
        def __init__(self, fams):
            self.fams = fams

        def collect(self):
            return self.fams

    cases = {
        "prometheus families": (
            lambda: collector(old_prom)._snapshot_families(snap),
            lambda: collector(new_prom)._snapshot_families(snap)),
        "prometheus text": (
            lambda: generate_latest(Fams(collector(old_prom)._snapshot_families(snap))),
            lambda: generate_latest(Fams(collector(new_prom)._snapshot_families(snap)))),
    }
    with tempfile.TemporaryDirectory() as d:
        old_sink, new_sink = old_rrd.RrdSink(d, 60), new_rrd.RrdSink(d, 60)
        cases["rrd update lines"] = (lambda: old_sink._points(snap),
                                     lambda: new_sink._points(snap))
        # Same output first: the derivation must not change what is written. (The
        # catalog adds files the baseline did not have, cgmem.rrd: those are extra.)
        before = {path: values for path, _k, values in old_sink._points(snap)}
        after = {path: values for path, _k, values in new_sink._points(snap)}
        assert all(after.get(path) == v for path, v in before.items()), "RRD lines differ"
        extra = len(after) - len(before)
        text_old = generate_latest(Fams(collector(old_prom)._snapshot_families(snap)))
        text_new = generate_latest(Fams(collector(new_prom)._snapshot_families(snap)))
        assert all(line in text_new.splitlines() for line in text_old.splitlines()), \
            "a line of the baseline's text is missing"
        print(f"{args.contexts} contexts, medians of {args.rounds} interleaved rounds "
              f"(baseline: hand-written code of {BASELINE}); extra files of the catalog: {extra}, "
              f"extra bytes of text: {len(text_new) - len(text_old)}")
        print(f"{'':22} {'baseline ms':>12} {'catalog ms':>11} {'ratio':>6}")
        for name, (old, new) in cases.items():
            a, b = [], []
            for _ in range(args.rounds):
                a.append(timed(old))
                b.append(timed(new))
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"{name:22} {ma * 1e3:12.1f} {mb * 1e3:11.1f} {mb / ma:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
