"""graphs: the slides' look and legends that tell the truth (issue 12 items 1-4).

Munin's traffic legend pairs against `rrdtool graph` GPRINT over the same VDEFs; the
stacked host graphs' ranking with empty and departed contexts; names shortened in
the middle; counts as integers; binary axis labels; idle interfaces; legend figures
as text in the page; departed contexts marked. RRD files are written by the real
RrdSink (tests/test_graphs.py's environment).
"""

from __future__ import annotations

import math
import os
import subprocess

import pytest

from exporters.rrdlayout import list_rrd_files
from graphs import legend
from graphs.charts import ChartBuilder, _too_close, distinct_colors, ellipsize
from graphs.paint import Painter, axis_label, axis_range
from graphs.plan import make_plan
from graphs.run import GraphRun
from graphs.settings import RenderSettings
from test_graphs import DAY, HEIGHT, HOUR, NOW, STEP, T_END, WIDTH, make_env, parse_page


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(os.path.realpath(str(tmp_path_factory.mktemp("legends"))), names=("web", "db", "idle"),
                    days=2)


def gprint(path: str, ds: str, start: int, end: int, width: int) -> list[str]:
    """rrdtool graph's `%6.2lf%s` of LAST/MINIMUM/AVERAGE/MAXIMUM of `ds` x 8."""
    defs = [f"DEF:a={path}:{ds}:AVERAGE", f"DEF:mn={path}:{ds}:MIN", f"DEF:mx={path}:{ds}:MAX",
            "CDEF:ca=a,8,*", "CDEF:cmn=mn,8,*", "CDEF:cmx=mx,8,*",
            "VDEF:cur=ca,LAST", "VDEF:min=cmn,MINIMUM", "VDEF:avg=ca,AVERAGE", "VDEF:max=cmx,MAXIMUM"]
    out = subprocess.run(["rrdtool", "graph", "/dev/null", "--start", str(start), "--end", str(end),
                          "--width", str(width), *defs,
                          *[f"PRINT:{v}:%6.2lf%s" for v in ("cur", "min", "avg", "max")]],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    return out[1:5]


@pytest.mark.parametrize("period,span", [("day", DAY), ("week", 7 * DAY)])
def test_munin_traffic_legend_pairs_equal_rrdtool_gprint(env, period, span):
    painter = Painter(WIDTH, HEIGHT)
    plan = make_plan(list_rrd_files(env.rrd_dir))
    spec = next(s for s in plan.host_specs if s.stem == "if-eth0")
    chart = ChartBuilder(painter.plot_width).build(spec, period, NOW, None)
    assert chart.pair_label == "bps" and chart.layers[0].below and not chart.layers[1].below
    cells = legend.format_pair(chart.legend[0].stats, chart.legend[1].stats)
    rx = gprint(spec.files[0].path, "rx_bytes", NOW - span, NOW, painter.plot_width)
    tx = gprint(spec.files[0].path, "tx_bytes", NOW - span, NOW, painter.plot_width)
    assert list(cells) == [f"{a.rstrip()}/{b.rstrip()}" for a, b in zip(rx, tx)]
    assert all("/" in c and c.split("/")[1][-1] in "kMG" for c in cells), cells
    # Received is drawn below the axis, on the same steps as sent above it.
    bottom, top, ticks, _ = axis_range(chart)
    assert bottom < 0 < top and 0 in ticks
    assert -bottom >= chart.legend[0].stats.max and top >= chart.legend[1].stats.max


def test_rrd_format_is_munins():
    assert legend.rrd_format(398660) == "398.66k"
    assert legend.rrd_format(23120) == " 23.12k"
    assert legend.rrd_format(2.5) == "  2.50 "
    assert legend.rrd_format(math.nan) == "   nan "
    stats = legend.Stats(398660, 24040, 565960, 10.42e6)
    sent = legend.Stats(378720, 23120, 2.54e6, 49.55e6)
    assert legend.format_pair(stats, sent) == ("398.66k/378.72k", " 24.04k/ 23.12k", "565.96k/  2.54M",
                                               " 10.42M/ 49.55M")


def test_mrtg_style_stays_an_option(env):
    plan = make_plan(list_rrd_files(env.rrd_dir))
    spec = next(s for s in plan.host_specs if s.stem == "if-eth0")
    chart = ChartBuilder(600, traffic_style="mrtg").build(spec, "day", NOW, None)
    assert chart.pair_label is None and [layer.style for layer in chart.layers] == ["area", "line"]
    assert not any(layer.below for layer in chart.layers)


def test_stacked_cpu_has_a_legend_row_per_context_with_stats(env):
    plan = make_plan(list_rrd_files(env.rrd_dir))
    cpu = next(s for s in plan.host_specs if s.kind == "host-cpu")
    chart = ChartBuilder(600, top=7).build(cpu, "day", NOW, None)
    labels = [row.label for row in chart.legend]
    assert labels == ["idle", "db", "web", "total"]  # by what they did: k=2 burns most
    for row, layer in zip(chart.legend, chart.layers):
        assert row.stats is not None and row.stats.avg == pytest.approx(legend.average(layer.values))
    text = chart.legend_text()
    assert text[0].startswith("idle: Cur ") and "Avg" in text[0]


def test_ranking_leaves_out_contexts_without_data_in_the_period(tmp_path):
    """Contexts gone before the day began neither take a top slot nor count in
    `other`: a busy one whose name sorts last is shown, alone."""
    gone = [f"a{i:02d}-gone" for i in range(9)]
    e = make_env(str(tmp_path), names=[*gone, "zz-busy"], days=1)
    e.names = ("zz-busy",)  # the others depart at T_END
    for t in range(T_END + STEP, T_END + 26 * HOUR, STEP):
        e.write(t)
    now = T_END + 26 * HOUR
    plan = make_plan(list_rrd_files(e.rrd_dir))
    cpu = next(s for s in plan.host_specs if s.kind == "host-cpu")
    chart = ChartBuilder(600, top=3).build(cpu, "day", now, None)
    assert [layer.label for layer in chart.layers] == ["zz-busy", "total"]
    week = ChartBuilder(600, top=3).build(cpu, "week", now, None)  # in the week they all did something
    assert [layer.label for layer in week.layers][-2:] == ["other (7)", "total"]
    # A departed context leaves the host graphs after departed_after, and is marked
    # in the contexts table with the time it was last seen.
    settings = RenderSettings(rrd_dir=e.rrd_dir, rrd_step=STEP, graphs_dir=e.graphs_dir, departed_after=HOUR)
    r = GraphRun(settings, Painter(WIDTH, HEIGHT), top=3, clock=lambda: now).run(periods=("day", "week"))
    assert r.failed == 0
    page = open(os.path.join(e.graphs_dir, "week.html"), encoding="utf-8").read()
    assert page.count("departed, last seen") == len(gone)
    caption = page.split("<h2>CPU by context</h2>", 1)[1].split("</figure>")[0]
    assert "zz-busy: Cur" in caption and "gone" not in caption and "other" not in caption


def test_names_are_shortened_in_the_middle():
    name = "web-prod-frontend-cluster-eu-west-1"
    short = ellipsize(name, 16)
    assert len(short) == 16 and short.startswith("web-prod") and short.endswith("west-1") and "…" in short
    assert ellipsize("db", 16) == "db"


def test_counts_are_integers_and_bytes_binary():
    assert legend.format_row(legend.Stats(3, 2, 2.5, 4), 1000, integer=True) == ("3", "2", "2.5", "4")
    assert axis_label(512 * 2**20, 1024) == "512 MiB"
    assert axis_label(1.5 * 2**30, 1024) == "1.5 GiB"
    assert axis_label(3.0, 1000, integer=True) == "3"


def test_adjacent_stacked_colours_are_distinct():
    names = [f"guest{i}" for i in range(40)]
    colors = distinct_colors(names)
    assert all(not _too_close(a, b) for a, b in zip(colors, colors[1:]))
    assert distinct_colors(names) == colors  # deterministic


def test_pages_carry_the_legend_figures_and_idle_interfaces_in_one_line(env):
    r = GraphRun(env.cfg, Painter(WIDTH, HEIGHT), clock=lambda: NOW).run(periods=("day",))
    assert r.failed == 0
    page = parse_page(os.path.join(env.graphs_dir, "index.html"))
    text = open(os.path.join(env.graphs_dir, "index.html"), encoding="utf-8").read()
    assert "bps (received/sent): Cur " in text  # eth0's pair row, also as text
    eth0 = [attrs for tag, attrs in page.tags if tag == "img" and attrs.get("src") == "if-eth0-day.png"]
    assert eth0 and "Cur" in eth0[0]["alt"]
    # count rows are integers in the page too
    ctx = open(os.path.join(env.graphs_dir, "ctx", "web", "index.html"), encoding="utf-8").read()
    assert "processes: Cur " in ctx and not any(f"Cur {n}.00" in ctx for n in range(10))


def test_an_interface_without_traffic_is_listed_not_drawn(tmp_path, monkeypatch):
    import test_graphs

    e = make_env(str(tmp_path), names=("web",), days=0.5)
    snap = test_graphs.snap
    monkeypatch.setattr(test_graphs, "snap", lambda ts, contexts, host: snap(
        ts, contexts, (*host, test_graphs.iface("dummy0", 0, 0))))
    for t in range(T_END + STEP, T_END + 2 * HOUR, STEP):
        e.write(t)
    now = T_END + 2 * HOUR + 7
    settings = RenderSettings(rrd_dir=e.rrd_dir, rrd_step=STEP, graphs_dir=e.graphs_dir)
    r = GraphRun(settings, Painter(WIDTH, HEIGHT), clock=lambda: now).run(periods=("day",))
    assert r.failed == 0
    text = open(os.path.join(e.graphs_dir, "index.html"), encoding="utf-8").read()
    assert "No traffic this day: dummy0." in text
    assert not os.path.exists(os.path.join(e.graphs_dir, "if-dummy0-day.png"))
    assert os.path.exists(os.path.join(e.graphs_dir, "if-eth0-day.png"))


def test_the_first_pages_wait_for_data(tmp_path):
    """Files with a single update: nothing to draw yet, so no graph and no index page
    (the page saying when the first graphs come stays)."""
    from exporters.rrd import RrdSink
    from test_graphs import FakeClock, ctx, snap

    settings = RenderSettings(rrd_dir=str(tmp_path / "rrd"), rrd_step=STEP, graphs_dir=str(tmp_path / "g"))
    run = GraphRun(settings, Painter(WIDTH, HEIGHT), clock=lambda: T_END + 5)
    assert run.run(periods=("day",)).pages == 0  # no file yet: no page over the waiting one
    assert not os.path.exists(tmp_path / "g" / "index.html")
    clock = FakeClock(T_END)
    sink = RrdSink(str(tmp_path / "rrd"), STEP, clock=clock)
    sink.write(snap(T_END, [ctx("web", 1.0, 1.0, 2**20, 2**21, 1, 1)], ()))
    r = run.run(periods=("day",))
    # A rate (CPU) needs two updates: not drawn as an empty graph, tried again next run.
    assert r.failed == 0 and r.waiting == 2  # host and web CPU
    assert not os.path.exists(tmp_path / "g" / "cpu-day.png")
    assert os.path.exists(tmp_path / "g" / "mem-day.png")  # a gauge has its first row
    assert 'CPU by context: not drawn yet' in open(tmp_path / "g" / "index.html").read()


def test_forced_run_writes_the_first_pages_before_any_graph_has_data(tmp_path):
    from exporters.rrd import RrdSink
    from test_graphs import FakeClock, ctx, snap

    settings = RenderSettings(rrd_dir=str(tmp_path / "rrd"), rrd_step=STEP, graphs_dir=str(tmp_path / "g"))
    sink = RrdSink(str(tmp_path / "rrd"), STEP, clock=FakeClock(T_END))
    sink.write(snap(T_END, [ctx("web", 1.0, 1.0, 2**20, 2**21, 1, 1)], ()))
    run = GraphRun(settings, Painter(WIDTH, HEIGHT), clock=lambda: T_END + 5)
    periodic = run.run(periods=("week",))  # a week row is 30 min: nothing to draw yet
    assert periodic.rendered == 0 and not os.path.exists(tmp_path / "g" / "index.html")
    forced = run.run(periods=("week",), force=True)
    assert forced.rendered == 0 and "web" in open(tmp_path / "g" / "index.html").read()


def test_cached_glyphs_and_own_png_draw_the_pixels_matplotlib_draws(env, monkeypatch):
    """graphs.agg keeps glyph bitmaps between graphs and writes the PNG itself: every
    pixel equals what matplotlib's own text drawing and savefig give, legend included,
    in every chart kind (stacked host graphs, traffic pairs, a context's own)."""
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    from graphs import agg

    plan = make_plan(list_rrd_files(env.rrd_dir))
    kinds = {}  # one graph of each kind: host stacked, host traffic, a context's own ...
    for spec in list(plan.host_specs) + [s for specs in plan.context_specs.values() for s in specs]:
        kinds.setdefault(spec.kind, spec)
    charts = [c for s in kinds.values() if (c := ChartBuilder(Painter().plot_width).build(s, "day", NOW, T_END))]
    assert len(charts) >= 6 and any(c.pair_label for c in charts) and any(len(c.legend) > 2 for c in charts)
    ours, theirs = Painter(), Painter()
    theirs._figure()
    FigureCanvasAgg(theirs._fig)  # matplotlib's own canvas: no glyph cache
    for chart in charts:
        ours.paint(chart, "day")  # fills the caches
    for chart in charts:
        png = ours.paint(chart, "day")
        monkeypatch.setattr(agg, "png", _savefig_png)
        want = theirs.paint(chart, "day")
        monkeypatch.undo()
        got = np.asarray(Image.open(io.BytesIO(png)))
        assert got.shape == (ours.height, ours.width, 3)
        assert np.array_equal(got, np.asarray(Image.open(io.BytesIO(want)).convert("RGB"))), chart.title
    renderer = ours._fig.canvas.get_renderer()
    assert isinstance(renderer, agg.CachedRenderer)
    assert not agg._FAST or renderer._glyphs  # the cache was used (where this matplotlib allows it)


def _savefig_png(canvas, level: int = 3) -> bytes:
    """matplotlib's own PNG of the figure (RGBA through Pillow)."""
    import io

    buf = io.BytesIO()
    canvas.figure.savefig(buf, format="png", dpi=canvas.figure.dpi, facecolor=canvas.figure.get_facecolor())
    return buf.getvalue()
