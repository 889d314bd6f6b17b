#!/usr/bin/env python3
"""What does `[traffic] accounting = "nftables"` cost, with 1,000 contexts accounted?

Runs in a private network and mount namespace (it re-executes itself under
`unshare -m -n`), so the host's own ruleset is never touched: `lo` up, cgroup2
mounted at /sys/fs/cgroup inside. Contexts: N real cgroups (level 2, under one
benchmark cgroup) and N/4 VServer guests with one loopback address each
(127.0.2.x, in fixture `interfaces/0/ip` files). Measured, medians:

- poll cost: `TrafficAccounting.sample()` over all contexts when nothing changed
  (what a poll adds: reading every counter with `nft -j list counters`, parsing,
  matching, offsets), next to the same call with the table empty (baseline: nft's
  own start-up), and the counter read alone;
- rebuild: one context leaves or arrives, one `nft -f` transaction (`apply`);
  next to the first build of the whole table;
- loopback TCP throughput, iperf3 client and server each in an accounted cgroup,
  with the table (counting them) and without it (deleted), alternating in the same
  run, median Gbit/s and the ratio.

Removes every cgroup, process and file it made, also on Ctrl-C; the table dies
with the namespace at the latest. Run as root:  .venv/bin/python benchmarks/nft_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from collector.procfs import ErrorCounts  # noqa: E402
from collector.snapshot import ContextSample  # noqa: E402
from collector.traffic import TrafficAccounting, run_nft  # noqa: E402

IPERF_PORT = 5299


def in_private_netns() -> bool:
    with open("/proc/self/net/dev") as f:
        devs = [line.split(":")[0].strip() for line in f.read().splitlines()[2:]]
    return devs == ["lo"]


def sh(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def setup_namespace() -> None:
    sh("ip", "link", "set", "lo", "up")
    if not os.path.isfile("/sys/fs/cgroup/cgroup.controllers"):
        sh("mount", "-t", "cgroup2", "none", "/sys/fs/cgroup")


def context(name: str, *, cgroup: str | None = None, xid: int | None = None) -> ContextSample:
    return ContextSample(
        key=cgroup if cgroup else str(xid), name=name, ctx_id=name, processes=1, threads=1,
        source="cgroup" if cgroup else "vserver", vsz_bytes=0, rss_bytes=0,
        cpu_user_seconds=0.0, cpu_system_seconds=0.0, cpu_accounting="kernel",
        live_user_seconds=0.0, live_system_seconds=0.0, start_time=None,
        uptime_seconds=None, first_process_start=None, xid=xid, cgroup=cgroup)


def clocks() -> tuple[float, float]:
    """(wall, CPU) seconds; CPU is this process's and its children's, user + system
    (libnftables and the kernel's netlink work run in this process; nft in a child).
    With other jobs on the cores, wall time mostly measures waiting for one: CPU time
    is the cost."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, repeat: int) -> list[tuple[float, float]]:
    out = []
    for _ in range(repeat):
        w0, c0 = clocks()
        fn()
        w1, c1 = clocks()
        out.append((w1 - w0, c1 - c0))
    return out


def ms(values: list[tuple[float, float]]) -> str:
    """Median wall and CPU milliseconds."""
    return (f"{statistics.median(v[0] for v in values) * 1000:6.1f} ms wall, "
            f"{statistics.median(v[1] for v in values) * 1000:5.1f} ms CPU")


def iperf(seconds: float, server_cg: str, client_cg: str) -> tuple[float, float]:
    """(Gbit/s, Gbit per CPU second) of one loopback TCP run, server and client each
    in their cgroup."""
    def enter(cg: str):
        return lambda: open(os.path.join(cg, "cgroup.procs"), "w").write("0")
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(IPERF_PORT), "-B", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=enter(server_cg))
    try:
        out = None
        for _ in range(50):  # the server needs a moment to listen
            p = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(IPERF_PORT), "-J",
                                "-t", str(seconds)], capture_output=True, text=True,
                               preexec_fn=enter(client_cg))
            try:
                got = json.loads(p.stdout)
            except ValueError:
                got = {}
            if p.returncode == 0 and "sum_received" in got.get("end", {}):
                out = got
                break
            time.sleep(0.1)
        if out is None:
            raise RuntimeError("iperf3 did not run: " + p.stdout[-300:] + p.stderr[-300:])
        end = out["end"]
        gbps = end["sum_received"]["bits_per_second"] / 1e9
        # CPU of client and server (% of one CPU over the run): with other jobs on the
        # cores, throughput per CPU second is the steadier figure of the two.
        cpu = (end["cpu_utilization_percent"]["host_total"]
               + end["cpu_utilization_percent"]["remote_total"]) / 100.0
        return gbps, gbps / cpu if cpu > 0 else float("nan")
    finally:
        srv.kill()
        srv.wait()


T0 = time.monotonic()


def phase(what: str) -> None:
    print(f"nft_bench: {time.monotonic() - T0:6.1f} s  {what}", file=sys.stderr, flush=True)


def bench(args) -> None:
    setup_namespace()
    base_name = f"ctxmon-nftbench-{os.getpid()}"
    base = f"/sys/fs/cgroup/{base_name}"
    guests_dir = tempfile.mkdtemp(prefix="ctxmon-nftbench-")
    n_cg, n_addr = args.contexts - args.contexts // 4, args.contexts // 4
    made: list[str] = []
    acct = TrafficAccounting("/sys/fs/cgroup")
    try:
        os.mkdir(base)
        made.append(base)
        contexts = []
        for i in range(n_cg):
            os.mkdir(f"{base}/c{i:04d}")
            made.append(f"{base}/c{i:04d}")
            contexts.append(context(f"c{i:04d}", cgroup=f"{base_name}/c{i:04d}"))
        for i in range(n_addr):
            xid = 100 + i
            d = os.path.join(guests_dir, str(xid), "interfaces", "0")
            os.makedirs(d)
            with open(os.path.join(d, "ip"), "w") as f:
                f.write(f"127.0.{2 + i // 250}.{1 + i % 250}/8\n")
            contexts.append(context(f"guest{xid}", xid=xid))

        def guest_dir(xid: int) -> str:
            return os.path.join(guests_dir, str(xid))

        phase(f"{n_cg} cgroups and {n_addr} guests made")
        errors = ErrorCounts()
        now = [1000.0]

        def poll(ctxs):
            now[0] += 10
            return acct.sample(ctxs, now[0], errors, guest_dir)

        # Baseline for the poll: the same call with nothing to count (empty table).
        empty_poll = timed(lambda: poll([]), args.repeat)
        phase("empty polls timed")
        first_build = timed(lambda: poll(contexts), 1)  # the whole table, one transaction
        phase("table built")
        assert acct.table.active and acct.table.cgroup_ok, acct.table.cgroup_error
        # The chains only: listing the maps makes nft resolve each cgroup id back to a
        # path by walking /sys/fs/cgroup, seconds for a large host.
        rows = sum(1 for chain in ("input", "output")
                   for line in sh("nft", "list", "chain", "inet", "ctxmon", chain).splitlines()
                   if "counter name" in line and "map @" in line)
        steady_poll = timed(lambda: poll(contexts), args.repeat)
        phase("steady polls timed")
        read_only = timed(acct.table.read, args.repeat)
        # Baseline for the read: what the issue names, the nft executable with JSON.
        read_exe = timed(lambda: run_nft(["-j", "list", "counters", "table", "inet", "ctxmon"]),
                         args.repeat)
        phase("polls and reads timed")
        # Rebuild: one context leaves, then comes back (two changes per round): the
        # transaction alone, and the whole poll that sees the change.
        full = dict(acct.table.plan)
        fewer = {k: v for k, v in full.items() if k != contexts[5].key}
        rebuild = []
        for _ in range(args.repeat):
            for plan in (fewer, full):
                changed = []
                rebuild += timed(lambda: changed.append(acct.table.apply(plan)), 1)
                assert changed == [True]
        change_poll = []
        for _ in range(args.repeat):
            for ctxs in (contexts[:5] + contexts[6:], contexts):
                change_poll += timed(lambda: poll(ctxs), 1)
        assert not errors, dict(errors)
        phase("rebuilds timed")

        # Throughput: iperf3 between two accounted cgroups, with and without the table.
        server_cg, client_cg = f"{base}/c0000", f"{base}/c0001"
        plan = acct.table.plan
        with_table, without = [], []
        for _ in range(args.rounds):
            if not acct.table.active:
                acct.table.start()
                acct.table.apply(plan)
            with_table.append(iperf(args.seconds, server_cg, client_cg))
            counted = acct.table.read()[f"{base_name}/c0001"][2]
            acct.table.close()
            without.append(iperf(args.seconds, server_cg, client_cg))
        assert counted > 0, "the client's traffic was not counted"
        phase("iperf3 runs done")
    finally:
        acct.close()
        for d in reversed(made):
            try:
                os.rmdir(d)
            except OSError as e:
                print(f"nft_bench: could not remove {d}: {e}", file=sys.stderr)
        shutil.rmtree(guests_dir, ignore_errors=True)
        phase("cleaned up")

    load = os.getloadavg()[0]
    print(f"nft_bench: {args.contexts} contexts ({n_cg} cgroups at level 2, {n_addr} guest "
          f"addresses); {rows} map rules in the table; medians of {args.repeat} runs; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"  poll, nothing changed:  {ms(steady_poll)}   (baseline, no context counted: "
          f"{ms(empty_poll)})")
    print(f"  counter read alone:     {ms(read_only)}   (libnftables in-process, "
          f"`list counters` + parse)")
    print(f"    baseline: `nft -j list counters` (executable, JSON, not parsed): {ms(read_exe)}")
    print(f"  rebuild, one change:    {ms(rebuild)}   (one `nft -f` transaction)")
    print(f"    first build of the table: {ms(first_build)}; the poll that sees a change: "
          f"{ms(change_poll)}")
    gw, gwo = (statistics.median(r[0] for r in runs) for runs in (with_table, without))
    ew, ewo = (statistics.median(r[1] for r in runs) for runs in (with_table, without))
    print(f"  iperf3 loopback TCP:    {gw:6.2f} Gbit/s with the table, {gwo:.2f} without: "
          f"ratio {gw / gwo:.3f} (medians of {args.rounds} alternating {args.seconds:g} s runs)")
    pairs = sorted(w[0] / wo[0] for w, wo in zip(with_table, without))
    print(f"    ratio of each adjacent pair: median {statistics.median(pairs):.3f}, "
          f"range {pairs[0]:.3f}-{pairs[-1]:.3f}")
    print(f"    per CPU second of client and server: {ew:.2f} Gbit with the table, "
          f"{ewo:.2f} without: ratio {ew / ewo:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, default=1000, help="contexts accounted (1000)")
    ap.add_argument("--repeat", type=int, default=15, help="timed runs per figure (15)")
    ap.add_argument("--rounds", type=int, default=7, help="iperf3 runs each way (7)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per iperf3 run (2)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("nft_bench: run as root (namespaces, nftables, cgroups)")
    for tool in ("unshare", "nft", "ip", "iperf3"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            sys.exit(f"nft_bench: {tool} not installed")
    if not in_private_netns():
        os.execvp("unshare", ["unshare", "-m", "-n", "--", sys.executable,
                              os.path.abspath(__file__), *sys.argv[1:]])
    bench(args)


if __name__ == "__main__":
    main()
