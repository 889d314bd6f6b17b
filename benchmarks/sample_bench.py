#!/usr/bin/env python3
"""How fast is one full ctxmon sample, next to `ps` and a psutil loop, in the same run?

Spawns N sleeping processes spread over several real cgroups (v2), then times:
- ctxmon: `Sampler(CgroupSource).sample()` in steady state (stat files held open,
  contexts resolved, sums and counters built), and the first, cold sample;
- `ps -e -o pid,vsz,rss,times,cgroup` (the baseline the target is stated against);
- a psutil loop reading memory, CPU times and threads of every process.
Prints medians in µs per process and the ratios; removes every process and cgroup
it made, also on Ctrl-C. Run as root:  .venv/bin/python benchmarks/sample_bench.py
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from collector.cgroup import CgroupSource  # noqa: E402
from collector.procfs import ProcessScanner, raise_fd_limit  # noqa: E402
from collector.sampler import Sampler  # noqa: E402


def v2_root() -> str:
    for p in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.exists(os.path.join(p, "cgroup.controllers")):
            return p
    sys.exit("sample_bench: no cgroup v2 hierarchy found")


# A fresh, minimal interpreter forks the group: forking from this process (with
# psutil and rrdtool loaded) is three times slower.
FORKER = """
import os, signal, sys
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
for _ in range(int(sys.argv[2]) - 1):
    if os.fork() == 0:
        signal.pause()
        os._exit(0)
print("ready", flush=True)
signal.pause()
"""


def spawn_group(cg: str, n: int) -> subprocess.Popen:
    """Start a process in cgroup `cg` that forks n-1 sleeping children."""
    p = subprocess.Popen([sys.executable, "-S", "-c", FORKER, cg, str(n)],
                         stdout=subprocess.PIPE)
    if p.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"could not spawn {n} processes in {cg}")
    return p


def kill_cgroup(cg: str) -> None:
    kill = os.path.join(cg, "cgroup.kill")
    if os.path.exists(kill):
        with open(kill, "w") as f:
            f.write("1")
    else:
        with open(os.path.join(cg, "cgroup.procs")) as f:
            for pid in f.read().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for _ in range(200):
        try:
            os.rmdir(cg)
            return
        except OSError:
            time.sleep(0.05)
    print(f"warning: could not remove {cg}", file=sys.stderr)


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_ps() -> None:
    subprocess.run(["ps", "-e", "-o", "pid,vsz,rss,times,cgroup"],
                   stdout=subprocess.DEVNULL, check=True)


def run_psutil() -> None:
    import psutil

    for p in psutil.process_iter(["memory_info", "cpu_times", "num_threads"]):
        p.info  # noqa: B018 - the attrs are fetched by process_iter


def bench(n: int, groups: int, repeat: int) -> dict:
    root = v2_root()
    tag = uuid.uuid4().hex[:8]
    cgs = [os.path.join(root, f"ctxmon-bench-{tag}-{i}.service") for i in range(groups)]
    leaders = []
    try:
        for cg in cgs:
            os.mkdir(cg)
        per = [n // groups + (1 if i < n % groups else 0) for i in range(groups)]
        t = time.perf_counter()
        for cg, k in zip(cgs, per):
            leaders.append(spawn_group(cg, k))
        spawn_s = time.perf_counter() - t
        total = sum(1 for e in os.listdir("/proc") if e.isdigit())

        sampler = Sampler(CgroupSource("/proc", cgroup_root=root), "/proc")
        t = time.perf_counter()
        snap = sampler.sample()
        cold = time.perf_counter() - t
        got = {c.name: c.processes for c in snap.contexts}
        for i, cg in enumerate(cgs):
            name = os.path.basename(cg)
            if got.get(name) != per[i]:
                print(f"warning: {name}: {got.get(name)} processes, expected {per[i]}")
        warm = median_time(sampler.sample, repeat)
        held = len(sampler.scanner._fds)
        sampler.close()
        one_shot = Sampler(CgroupSource("/proc", cgroup_root=root), "/proc",
                           scanner=ProcessScanner("/proc", max_open=0))
        no_hold = median_time(one_shot.sample, max(3, repeat // 2))
        one_shot.close()
        ps = median_time(run_ps, repeat)
        psu = median_time(run_psutil, max(3, repeat // 2))
        return dict(n=n, total=total, spawn_s=spawn_s, cold=cold, warm=warm, held=held,
                    no_hold=no_hold, ps=ps, psutil=psu)
    finally:
        for cg in cgs:
            if os.path.isdir(cg):
                kill_cgroup(cg)
        for p in leaders:
            p.kill()
            p.wait()
            p.stdout.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="600,5000,20000",
                    help="process counts to test (default 600,5000,20000)")
    ap.add_argument("--groups", type=int, default=8, help="cgroups to spread them over")
    ap.add_argument("--repeat", type=int, default=9, help="timed runs per tool (median)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("sample_bench: run as root (it creates cgroups)")
    print(f"fd limit (soft): {raise_fd_limit()}; medians of {args.repeat} runs; "
          "µs per process in /proc")
    hdr = (f"{'procs':>7} {'ctxmon':>8} {'cold':>8} {'no-hold':>8} {'ps':>8} {'psutil':>8}"
           f" {'ps/ctxmon':>10} {'psutil/ctxmon':>14}")
    print(hdr)
    for n in (int(x) for x in args.sizes.split(",")):
        r = bench(n, args.groups, args.repeat)
        us = lambda s: s * 1e6 / r["total"]  # noqa: E731
        print(f"{r['total']:>7} {us(r['warm']):>8.1f} {us(r['cold']):>8.1f} "
              f"{us(r['no_hold']):>8.1f} {us(r['ps']):>8.1f} {us(r['psutil']):>8.1f}"
              f" {r['ps'] / r['warm']:>9.1f}x {r['psutil'] / r['warm']:>13.1f}x"
              f"   (spawned in {r['spawn_s']:.1f}s, {r['held']} stat files held)",
              flush=True)


if __name__ == "__main__":
    main()
