#!/usr/bin/env python3
"""How long does one poll's RRD writing take for many contexts, direct vs rrdcached?

For N contexts (default 1,000) x 3 files (cpu, mem, tasks), times one update of every
file per step, for a few steps, in three ways:
- direct: `RrdSink(directory, step)`, librrd writing each file itself;
- batch: `RrdSink(directory, step, daemon=...)`, one rrdcached BATCH per poll;
- naive: one `rrdtool.update("--daemon", ...)` call per file (the bindings' way).
rrdcached is a private one started here (foreground, own socket, -w 3600 so that it
caches) and stopped at the end. For each way: wall and CPU time per step of this
process, and rrdcached's CPU (from /proc/<pid>/stat); medians, and the ratio to
direct. rrdcached's deferred cost (writing the cached steps out after FLUSHALL) is
measured and printed too, since it is paid later, not avoided.

The first poll (creating 3N files, ~245 kB each at step 60: ~0.75 GB per way for
1,000 contexts) is timed apart. Everything is made in a temporary directory that is
removed at the end (unless --keep).

    /tmp/v/bin/python benchmarks/rrd_bench.py [--contexts 1000] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import rrdtool  # noqa: E402

from collector.snapshot import ContextSample, Snapshot  # noqa: E402
from exporters.rrd import RrdSink, rrd_path  # noqa: E402

STEP = 60
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_WALL = 0.25


def make_snapshot(ts: int, n: int, k: int) -> Snapshot:
    contexts = tuple(
        ContextSample(
            key=str(i), name=f"guest{i:05d}", ctx_id=str(i), source="cgroup",
            processes=5 + i % 7, threads=9 + i % 11, vsz_bytes=(100 + i) << 20, rss_bytes=(10 + i + k) << 20,
            cpu_user_seconds=100.0 + i + 3.1 * k, cpu_system_seconds=50.0 + i + 1.7 * k, cpu_accounting="kernel",
            live_user_seconds=0.0, live_system_seconds=0.0, start_time=None, uptime_seconds=None,
            first_process_start=None,
        )
        for i in range(n)
    )
    return Snapshot(timestamp=ts, duration_seconds=0.0, source="cgroup", contexts=contexts,
                    host_interfaces=(), host_uptime_seconds=1000.0)


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class Daemon:
    def __init__(self, base: str):
        self.sock = os.path.join(base, "rrdcached.sock")
        self.addr = "unix:" + self.sock
        journal = os.path.join(base, "journal")
        os.makedirs(journal)
        self.log = open(os.path.join(base, "rrdcached.log"), "wb")
        self.proc = subprocess.Popen(
            ["rrdcached", "-g", "-l", self.addr, "-p", os.path.join(base, "rrdcached.pid"), "-j", journal,
             "-F", "-w", "3600", "-f", "7200", "-b", base, "-B"],
            stdout=self.log, stderr=self.log,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("rrdcached did not start; see rrdcached.log")
                time.sleep(0.02)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stats(self) -> dict[str, int]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.sock)
            f = s.makefile("rwb")
            f.write(b"STATS\n")
            f.flush()
            n = int(f.readline().split()[0])
            out = {}
            for _ in range(n):
                k, _, v = f.readline().decode().partition(":")
                out[k] = int(v)
            return out

    def write_out(self) -> tuple[float, float]:
        """FLUSHALL and wait until every cached value is on disk: (wall, daemon CPU)."""
        wall0, cpu0 = time.perf_counter(), self.cpu()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.sock)
            s.sendall(b"FLUSHALL\n")
            s.recv(100)
        while True:
            st = self.stats()
            if st["QueueLength"] == 0 and st["DataSetsWritten"] >= st["UpdatesReceived"]:
                break
            time.sleep(0.01)
        return time.perf_counter() - wall0, self.cpu() - cpu0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
        self.log.close()


def timed_steps(do_step, steps: int, daemon: Daemon | None) -> list[tuple[float, float, float]]:
    """(wall, client CPU, daemon CPU) of each step."""
    out = []
    for k in range(steps):
        d0 = daemon.cpu() if daemon else 0.0
        w0, c0 = time.perf_counter(), time.process_time()
        do_step(k)
        w1, c1 = time.perf_counter(), time.process_time()
        d1 = daemon.cpu() if daemon else 0.0
        out.append((w1 - w0, c1 - c0, d1 - d0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if shutil.which("rrdcached") is None:
        print("rrdcached is not installed", file=sys.stderr)
        return 2
    n, steps = args.contexts, args.steps
    base = os.path.realpath(tempfile.mkdtemp(prefix="ctxmon-rrd-bench-"))
    t0 = (int(time.time()) // 3600) * 3600 - 24 * 3600  # step-aligned, in the past
    daemon = None
    results: dict[str, list[tuple[float, float, float]]] = {}
    try:
        daemon = Daemon(base)
        # --- direct
        direct = RrdSink(os.path.join(base, "direct"), STEP)
        w = time.perf_counter()
        direct.write(make_snapshot(t0, n, 0))
        create_direct = time.perf_counter() - w
        snaps = [make_snapshot(t0 + STEP * (k + 1), n, k + 1) for k in range(steps)]
        results["direct"] = timed_steps(lambda k: direct.write(snaps[k]), steps, None)
        assert direct.error_count == 0, direct.error_count
        # --- rrdcached, one BATCH per poll
        batch = RrdSink(os.path.join(base, "cached"), STEP, daemon=daemon.addr)
        w = time.perf_counter()
        batch.write(make_snapshot(t0, n, 0))
        create_batch = time.perf_counter() - w
        results["rrdcached batch"] = timed_steps(lambda k: batch.write(snaps[k]), steps, daemon)
        assert batch.error_count == 0, batch.error_count
        out_batch = daemon.write_out()
        batch.close()
        # --- rrdcached, one rrdtool.update("--daemon") per file (same files, later times)
        paths = [(rrd_path(os.path.join(base, "cached"), kind, f"guest{i:05d}"), kind)
                 for i in range(n) for kind in ("cpu", "mem", "tasks")]

        def naive_step(k: int) -> None:
            ts = t0 + STEP * (steps + 1 + k)
            for path, kind in paths:
                rrdtool.update("--daemon", daemon.addr, path, f"{ts}:{k + 1000}:{k + 2000}")

        results["naive --daemon"] = timed_steps(naive_step, steps, daemon)
        out_naive = daemon.write_out()
    finally:
        if daemon is not None:
            daemon.stop()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    files = 3 * n
    print(f"{n} contexts x 3 files = {files} updates per step, {steps} timed steps, step {STEP} s")
    print(f"first poll (creates {files} files): direct {create_direct:.2f} s, through rrdcached {create_batch:.2f} s")
    print()
    print(f"{'way':<18}{'wall/step':>12}{'client CPU':>12}{'rrdcached CPU':>15}{'wall vs direct':>16}")
    base_wall = statistics.median(w for w, _, _ in results["direct"])
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        dcpu = sum(r[2] for r in rows) / len(rows)  # mean: /proc ticks are 10 ms
        print(f"{name:<18}{wall * 1000:>10.1f}ms{cpu * 1000:>10.1f}ms{dcpu * 1000:>13.1f}ms{wall / base_wall:>15.2f}x")
    print()
    print("rrdcached writing the cached steps out after FLUSHALL (deferred cost, not in the rows above):")
    # the batch sink's first poll also updated every file, after creating it
    for name, (wall, cpu), cached in (("batch", out_batch, steps + 1), ("naive", out_naive, steps)):
        print(f"  {name}: {wall:.2f} s wall, {cpu:.2f} s rrdcached CPU for {cached} cached steps "
              f"= {wall / cached * 1000:.0f} ms wall, {cpu / cached * 1000:.0f} ms CPU per step")
    batch_wall = statistics.median(r[0] for r in results["rrdcached batch"])
    print()
    print(f"target: one poll under {TARGET_WALL * 1000:.0f} ms wall: direct {'met' if base_wall < TARGET_WALL else 'MISSED'}, "
          f"rrdcached batch {'met' if batch_wall < TARGET_WALL else 'MISSED'}; "
          f"rrdcached batch {'faster' if batch_wall < base_wall else 'NOT faster'} than direct ({base_wall / batch_wall:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
