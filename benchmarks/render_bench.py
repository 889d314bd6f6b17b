"""Render cost, against `rrdtool graph` of the same chart in the same run.

    .venv/bin/python benchmarks/render_bench.py [--contexts 1000] [--repeat 15]

1. Per PNG: a context's CPU graph (day, 800x300, user+system stacked with a
   Cur/Min/Avg/Max legend) drawn by graphs (ChartBuilder + Painter, warm process),
   next to librrd drawing the same chart (rrdtool.graph in the same process: DEF,
   CDEF x100, two stacked AREAs, GPRINT LAST/MINIMUM/AVERAGE/MAXIMUM) and the
   `rrdtool graph` command. Medians and the ratio.
2. A never-drawn context's page through the real endpoint: ctxmon's HTTP server
   (exporters.http) with the daemon's hook, graphs.client.Renderer and its worker (a
   real child process): wall time of the HTML and of the HTML plus its three day PNGs
   as a browser asks for them, the worker warm and cold (the first request starts it).
3. Renderer CPU at N contexts over an hour of steps: N contexts' RRD files (step
   60 s, two hours of history), then 12 periodic runs (graphs interval 5 min), each
   after 5 more polls, as the daemon's worker does them (host graphs and pages, the
   contexts with alerts: none here). The renderer's CPU time (process time of the
   runs; writing the RRD files is the sink's, not counted) over the hour it stands
   for, as a share of one core.

Everything in a temporary folder; the fake clock starts two hours in the past.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rrdtool  # noqa: E402

from collector.snapshot import ContextSample, InterfaceSample, Snapshot  # noqa: E402
from exporters.rrd import RrdSink  # noqa: E402
from exporters.rrdlayout import list_rrd_files  # noqa: E402

STEP = 60


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def context(name: str, k: int, t: float) -> ContextSample:
    # CPU counters that only grow: a share of a CPU per context with a slow wobble
    rate = 0.05 + 0.01 * (k % 7)
    user = 0.7 * (rate * t + 100 * math.sin(t / 3000 + k))
    system = 0.3 * (rate * t + 100 * math.sin(t / 3000 + k))
    return ContextSample(
        key="/" + name, name=name, ctx_id=str(k), source="cgroup", processes=1 + k % 5, threads=2 + k % 9,
        vsz_bytes=(k % 13 + 1) * 50 * 2**20, rss_bytes=int((k % 11 + 1) * 20 * 2**20 * (1.1 + math.sin(t / 5000))),
        cpu_user_seconds=user, cpu_system_seconds=system, cpu_accounting="kernel", live_user_seconds=user,
        live_system_seconds=system, start_time=None, uptime_seconds=None, first_process_start=None,
        cgroup="/" + name)


def write_poll(sink: RrdSink, clock: Clock, names: list[str], t: int) -> None:
    clock.now = t
    rx = int(t * 1.5e5)
    host = (InterfaceSample("eth0", rx, rx // 100, 0, 0, rx // 3, rx // 300, 0, 0),)
    contexts = tuple(context(n, k, t) for k, n in enumerate(names))
    sink.write(Snapshot(timestamp=t, duration_seconds=0.01, source="cgroup", contexts=contexts,
                        host_interfaces=host, host_uptime_seconds=1000.0))


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def per_png(root: str, repeat: int) -> dict:
    from graphs.charts import ChartBuilder
    from graphs.paint import Painter
    from graphs.plan import make_plan

    rrd_dir = os.path.join(root, "one")
    clock = Clock(0)
    sink = RrdSink(rrd_dir, STEP, clock=clock)
    end = (int(time.time()) // STEP) * STEP
    for t in range(end - 2 * 86400, end + 1, STEP):
        write_poll(sink, clock, ["web"], t)
    sink.close()
    files = list_rrd_files(rrd_dir)
    spec = next(s for s in make_plan(files).context_specs["web"] if s.kind == "ctx-cpu")
    painter = Painter(800, 300)
    builder = ChartBuilder(painter.plot_width)
    path = spec.files[0].path
    ours = []
    for _ in range(repeat + 2):
        t0 = time.perf_counter()
        chart = builder.build(spec, "day", end + 5, end)
        painter.paint(chart, "day")
        ours.append(time.perf_counter() - t0)
    ours = ours[2:]  # the first draws build the figure and load fonts
    args = ["--start", str(end + 5 - 86400), "--end", str(end + 5), "--width", str(painter.plot_width),
            "--height", str(painter.plot_height), "--title", "web CPU - by day",
            "--vertical-label", "% of one CPU",
            f"DEF:u={path}:user:AVERAGE", f"DEF:s={path}:system:AVERAGE",
            f"DEF:umin={path}:user:MIN", f"DEF:umax={path}:user:MAX",
            f"DEF:smin={path}:system:MIN", f"DEF:smax={path}:system:MAX",
            "CDEF:pu=u,0.0001,*", "CDEF:ps=s,0.0001,*", "CDEF:pumin=umin,0.0001,*",
            "CDEF:pumax=umax,0.0001,*", "CDEF:psmin=smin,0.0001,*", "CDEF:psmax=smax,0.0001,*",
            "VDEF:ucur=pu,LAST", "VDEF:umn=pumin,MINIMUM", "VDEF:uavg=pu,AVERAGE", "VDEF:umx=pumax,MAXIMUM",
            "VDEF:scur=ps,LAST", "VDEF:smn=psmin,MINIMUM", "VDEF:savg=ps,AVERAGE", "VDEF:smx=psmax,MAXIMUM",
            "AREA:pu#3366CC:user", "GPRINT:ucur:%6.2lf", "GPRINT:umn:%6.2lf", "GPRINT:uavg:%6.2lf",
            "GPRINT:umx:%6.2lf\\n",
            "AREA:ps#FF6600:system:STACK", "GPRINT:scur:%6.2lf", "GPRINT:smn:%6.2lf", "GPRINT:savg:%6.2lf",
            "GPRINT:smx:%6.2lf\\n"]
    out = os.path.join(root, "rrdtool.png")
    lib = []
    for _ in range(repeat + 2):
        t0 = time.perf_counter()
        rrdtool.graph(out, *args)
        lib.append(time.perf_counter() - t0)
    lib = lib[2:]
    cmd = []
    for _ in range(max(5, repeat // 2)):
        t0 = time.perf_counter()
        subprocess.run(["rrdtool", "graph", out, *args], check=True, capture_output=True)
        cmd.append(time.perf_counter() - t0)
    return {"ours_ms": median_ms(ours), "librrd_ms": median_ms(lib), "command_ms": median_ms(cmd),
            "ratio_librrd": statistics.median(ours) / statistics.median(lib),
            "ratio_command": statistics.median(ours) / statistics.median(cmd)}


def many_contexts(root: str, n: int) -> tuple[str, Clock, RrdSink, list[str], int]:
    rrd_dir = os.path.join(root, "many")
    clock = Clock(0)
    sink = RrdSink(rrd_dir, STEP, clock=clock)
    names = [f"guest{k:04d}" for k in range(n)]
    start = (int(time.time()) // STEP) * STEP - 2 * 3600
    for t in range(start - 2 * 3600, start + 1, STEP):
        write_poll(sink, clock, names, t)
    return rrd_dir, clock, sink, names, start


def page_latency(rrd_dir: str, graphs_dir: str, names: list[str], samples: int) -> dict:
    """Never-drawn context pages through the real endpoint: ctxmon's HTTP server with
    the daemon's hook (graphs.client.Renderer: the worker draws on request). A page
    as a browser loads it: the HTML, then its day graphs (cpu, mem, tasks)."""
    import urllib.request

    from prometheus_client import CollectorRegistry

    from exporters.http import MetricsServer
    from exporters.names import encode_name
    from graphs.client import Renderer
    from graphs.settings import RenderSettings

    settings = RenderSettings(rrd_dir=rrd_dir, rrd_step=STEP, graphs_dir=graphs_dir)
    r = Renderer(settings, page_timeout=120)
    srv = MetricsServer("127.0.0.1:0", registry=CollectorRegistry(), graphs_dir=graphs_dir,
                        graph_hook=r.on_request)
    srv.start()
    base = f"http://127.0.0.1:{srv.port}/graphs/ctx/"

    def get(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=120) as resp:
            assert resp.status == 200, (url, resp.status)
            return resp.read()

    def load(name: str) -> tuple[float, float]:
        """(seconds to the page's HTML, seconds to the HTML and its three day PNGs)."""
        slug = urllib.request.quote(encode_name(name), safe="")
        t0 = time.perf_counter()
        page = get(base + slug + "/")
        t_html = time.perf_counter() - t0
        assert b"cpu-day.png" in page and b"being drawn" not in page, page[:300]
        for kind in ("cpu", "mem", "tasks"):
            assert get(f"{base}{slug}/{kind}-day.png").startswith(b"\x89PNG")
        return t_html, time.perf_counter() - t0

    try:
        cold_html, cold = load(names[-1])  # the first request starts the worker
        html_s, full_s = [], []
        for name in names[1: 1 + samples]:
            h, f = load(name)
            html_s.append(h)
            full_s.append(f)
        t0 = time.perf_counter()
        load(names[1])
        cached = time.perf_counter() - t0
        assert r.stats["busy"] == 0 and r.stats["timeouts"] == 0, r.stats
    finally:
        srv.stop()
        r.close()
    return {"cold_s": cold, "cold_html_s": cold_html, "html_median_s": statistics.median(html_s),
            "warm_median_s": statistics.median(full_s), "warm_max_s": max(full_s), "cached_s": cached}


def hour_of_runs(rrd_dir: str, graphs_dir: str, clock: Clock, sink: RrdSink, names: list[str],
                 start: int) -> dict:
    from graphs.paint import Painter
    from graphs.run import GraphRun
    from graphs.settings import RenderSettings

    settings = RenderSettings(rrd_dir=rrd_dir, rrd_step=STEP, graphs_dir=graphs_dir)
    t = start
    now = [t]
    g = GraphRun(settings, Painter(), clock=lambda: now[0] + 3)
    # The first run draws all four periods of the host graphs; in an hour that is one
    # run of twelve, and it is counted with the others.
    cpu = []
    drawn = 0
    for _ in range(12):
        for _ in range(5):
            t += STEP
            write_poll(sink, clock, names, t)
        now[0] = t
        c0 = time.process_time()
        r = g.run(alerting_only=True, budget=150)
        cpu.append(time.process_time() - c0)
        drawn += r.rendered
    total = sum(cpu)
    return {"runs": len(cpu), "cpu_total_s": total, "cpu_median_run_s": statistics.median(cpu),
            "cpu_first_run_s": cpu[0], "pngs": drawn, "core_share_percent": 100 * total / 3600}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--pages", type=int, default=8, help="never-drawn context pages to time")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ctxmon-render-bench-")
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(root, "mpl"))
    try:
        png = per_png(root, args.repeat)
        print(f"per PNG (ctx CPU, day, 800x300): graphs {png['ours_ms']:.1f} ms, "
              f"librrd rrdtool.graph {png['librrd_ms']:.1f} ms (ratio {png['ratio_librrd']:.2f}), "
              f"`rrdtool graph` command {png['command_ms']:.1f} ms (ratio {png['ratio_command']:.2f}); medians")
        t0 = time.perf_counter()
        rrd_dir, clock, sink, names, start = many_contexts(root, args.contexts)
        print(f"{args.contexts} contexts, 2 h of history at {STEP} s: written in {time.perf_counter() - t0:.0f} s")
        sink.flush()
        lat = page_latency(rrd_dir, os.path.join(root, "pages"), names, args.pages)
        print(f"never-drawn context page through /graphs/ctx/<name>/ (HTML, then cpu, mem, tasks day PNGs): "
              f"median {lat['warm_median_s']:.2f} s (HTML alone {lat['html_median_s']:.2f} s), "
              f"max {lat['warm_max_s']:.2f} s; cold {lat['cold_s']:.2f} s (the request starts the worker); "
              f"drawn already: {lat['cached_s'] * 1000:.0f} ms")
        hour = hour_of_runs(rrd_dir, os.path.join(root, "periodic"), clock, sink, names, start)
        print(f"periodic runs at {args.contexts} contexts, an hour of steps ({hour['runs']} runs, "
              f"{hour['pngs']} PNGs): renderer CPU {hour['cpu_total_s']:.1f} s "
              f"(first run {hour['cpu_first_run_s']:.1f} s, median run {hour['cpu_median_run_s']:.1f} s) "
              f"= {hour['core_share_percent']:.2f} % of one core")
        sink.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
