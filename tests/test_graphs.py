"""graphs: the data path against `rrdtool graph` itself, the PNGs, the pages, the runs.

RRD files are written by the real exporters.rrd.RrdSink from synthetic snapshots (a
fake clock, step 300 s) with a two-hour hole in every series, for contexts whose
names are hostile (`<script>`, quotes, `/`, `..`, undecodable bytes).
"""

from __future__ import annotations

import fcntl
import html.parser
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pytest

from collector.snapshot import ContextSample, InterfaceSample, Snapshot
from ctxmon.config import load_config
from exporters.names import encode_name
from exporters.rrd import RrdSink, list_rrd_files, rra_layout, rrd_path
from graphs import legend
from graphs.legend import Stats, display_name, legend_stats, si_format
from graphs.render import (  # the re-exporting facade: these tests predate the split
    IN_COLOR,
    BusyError,
    ChartBuilder,
    GraphRun,
    Painter,
    align,
    context_color,
    effective_step,
    make_plan,
    reduce_rows,
    request_step,
    time_ticks,
    y_scale,
)

pytestmark = pytest.mark.skipif(shutil.which("rrdtool") is None, reason="rrdtool command not installed")

STEP = 300
HOUR = 3600
DAY = 86400
# Data ends 5 min past a half hour, well in the past: one more step does not reach
# the next 30-min row of the week archive.
T_END = (int(time.time()) // 1800) * 1800 - 2 * HOUR + 300
NOW = T_END + 7  # graphs end a few seconds after the last update, off the step grid
GAP = (T_END - 14 * HOUR, T_END - 12 * HOUR)  # no poll strictly between these
WIDTH, HEIGHT = 640, 260
EVIL = ("<script>alert(1)</script>", "../../etc", "caf\udcc3\udca9 \"q\" 'x'")
NAMES = ("web", "db", *EVIL, "mail")
TOP = 3

# ------------------------------------------------------------------ factories


def ctx(name: str, cpu_user: float, cpu_system: float, rss: int, vsz: int, processes: int, threads: int,
        interfaces: tuple[InterfaceSample, ...] = ()) -> ContextSample:
    return ContextSample(
        key=name, name=name, ctx_id="42", source="cgroup", processes=processes, threads=threads,
        vsz_bytes=vsz, rss_bytes=rss, cpu_user_seconds=cpu_user, cpu_system_seconds=cpu_system,
        cpu_accounting="kernel", live_user_seconds=cpu_user, live_system_seconds=cpu_system,
        start_time=None, uptime_seconds=None, first_process_start=None, cgroup="/" + name,
        interfaces=interfaces,
    )


def iface(name: str, rx_bytes: int, tx_bytes: int) -> InterfaceSample:
    return InterfaceSample(name, rx_bytes, rx_bytes // 100, 0, 0, tx_bytes, tx_bytes // 100, 0, 0)


def snap(ts: float, contexts, host_interfaces) -> Snapshot:
    return Snapshot(timestamp=ts, duration_seconds=0.01, source="cgroup", contexts=tuple(contexts),
                    host_interfaces=tuple(host_interfaces), host_uptime_seconds=1000.0)


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    root: str
    config: str
    rrd_dir: str
    graphs_dir: str
    sink: RrdSink
    clock: FakeClock
    names: tuple[str, ...]
    counters: dict

    @property
    def cfg(self):
        return load_config(self.config)

    def write(self, t: int) -> None:
        """One poll at `t`: counters advance by rates that are smooth functions of t."""
        self.clock.now = t
        contexts = []
        c = self.counters
        for k, name in enumerate(self.names):
            rate = (k + 1) * 0.05 * (1.5 + math.sin(t / 7200 + k))  # CPU seconds per second
            user, system = c.setdefault(name, [0.0, 0.0])
            c[name] = [user + 0.7 * rate * STEP, system + 0.3 * rate * STEP]
            ifs = ()
            if name == "web":
                c["veth0"] = c.get("veth0", 0) + int(2e5 * STEP * (1 + math.sin(t / 5000)))
                ifs = (iface("veth0", c["veth0"], c["veth0"] // 3),)
            rss = int((k + 1) * 50 * 2**20 * (1.2 + math.sin(t / 9000)))
            contexts.append(ctx(name, *c[name], rss, (k + 1) * 200 * 2**20, k + 2, 3 * k + 2, ifs))
        c["rx"] = c.get("rx", 0) + int(1.5e6 * STEP * (1.1 + math.sin(t / 6000)))
        c["tx"] = c.get("tx", 0) + int(0.5e6 * STEP * (1.1 + math.cos(t / 8000)))
        host = (iface("eth0", c["rx"], c["tx"]), iface("lo", c["rx"] // 10, c["rx"] // 10))
        self.sink.write(snap(t, contexts, host))


def make_env(root: str, names=NAMES, days: float = 3, daemon: str | None = None, interval: str = "5m") -> Env:
    rrd_dir = os.path.join(root, "rrd")
    graphs_dir = os.path.join(root, "graphs")
    config = os.path.join(root, "ctxmon.toml")
    with open(config, "w") as f:
        f.write(f'[collector]\ninterval = "{STEP}s"\n[rrd]\ndir = "rrd"\nstep = "{STEP}s"\n')
        if daemon:
            f.write(f'daemon = "{daemon}"\n')
        f.write(f'[graphs]\ndir = "graphs"\ninterval = "{interval}"\n')
    clock = FakeClock(T_END)
    env = Env(root, config, rrd_dir, graphs_dir, RrdSink(rrd_dir, STEP, daemon=daemon, clock=clock), clock,
              tuple(names), {})
    for t in range(T_END - int(days * DAY), T_END + 1, STEP):
        if not GAP[0] < t < GAP[1]:
            env.write(t)
    assert env.sink.error_count == 0
    return env


def graph_run(env: Env, now: int = NOW, **kw) -> GraphRun:
    return GraphRun(env.cfg, Painter(WIDTH, HEIGHT), top=TOP, clock=lambda: now, **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    """Every period rendered once; tests here only read it."""
    e = make_env(os.path.realpath(tmp_path_factory.mktemp("graphs")))
    result = graph_run(e).run()
    assert result.failed == 0 and result.rendered > 0
    return e


@pytest.fixture
def small_env(tmp_path) -> Env:
    """Two contexts and two days, for tests that change things."""
    return make_env(os.path.realpath(tmp_path), names=("web", "../../etc"), days=2)


def pixels(path: str):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def count_color(area, color: str) -> int:
    import numpy as np

    return int(np.all(area == np.array(rgb(color), dtype=area.dtype), axis=-1).sum())


def plot_area(img, painter: Painter):
    left, top, width, height = painter.plot_box
    return img[top + 2: top + height - 1, left + 2: left + width - 1]


def x_pixel(painter: Painter, period_span: int, t: float) -> int:
    start = NOW - period_span
    return round(painter.LEFT + (t - start) / period_span * painter.plot_width)


# ------------------------------------------------------------ pure functions


def test_si_format_is_rrdtools_auto_scale():
    cases = [
        (398_660, 1000, "398.66k"),
        (10_420_000, 1000, "10.42M"),
        (20_160_000_000, 1000, "20.16G"),
        (0, 1000, "0.00"),
        (7.5, 1000, "7.50"),
        (0.5, 1000, "500.00m"),
        (-2500, 1000, "-2.50k"),
        (1536, 1024, "1.50k"),
        (3 * 2**30, 1024, "3.00G"),
        (math.nan, 1000, "nan"),
        (None, 1000, "nan"),
    ]
    for value, base, text in cases:
        assert si_format(value, base) == text, (value, base)


def test_axis_labels_are_short():
    assert [legend.tick_format(v) for v in (0, 0.5, 5, 2500, 25e6)] == ["0", "0.5", "5", "2.5 k", "25 M"]
    assert legend.tick_format(512 * 2**20, 1024) == "512 M"


def test_vdef_figures_skip_unknown_rows():
    values = [None, 3.0, math.nan, 1.0, 7.0, None, math.nan]
    assert legend.last_known(values) == 7.0
    assert legend.minimum(values) == 1.0
    assert legend.maximum(values) == 7.0
    assert legend.average(values) == pytest.approx(11 / 3)
    for f in (legend.last_known, legend.minimum, legend.maximum, legend.average):
        assert math.isnan(f([None, math.nan]))
        assert math.isnan(f([]))


def test_min_comes_from_the_min_archive_and_max_from_the_max_archive():
    stats = legend_stats([2.0, 4.0, 3.0], min_series=[1.0, 3.5, 2.5], max_series=[2.5, 9.0, 3.0])
    assert stats == Stats(cur=3.0, min=1.0, avg=3.0, max=9.0)


def test_reduce_rows_consolidates_like_rrdtools_reduce_data():
    # 9 rows of 60 s over (60, 600]: values 1..9. Reduced to 180 s: the grid moves
    # out to (0, 720]; the partial rows at both edges are unknown, as in rrdtool.
    rows = [(float(v), float(10 * v)) for v in range(1, 10)]
    start, end, step, out = reduce_rows("AVERAGE", 60, 60, 600, 180, rows)
    assert (start, end, step) == (0, 720, 180)
    assert len(out) == 4
    assert math.isnan(out[0][0]) and math.isnan(out[3][1])
    assert out[1:3] == [(4.0, 40.0), (7.0, 70.0)]
    _, _, _, out = reduce_rows("MAX", 60, 60, 600, 180, rows)
    assert out[1:3] == [(5.0, 50.0), (8.0, 80.0)]
    _, _, _, out = reduce_rows("MIN", 60, 60, 600, 180, rows)
    assert out[1:3] == [(3.0, 30.0), (6.0, 60.0)]
    # Unknown rows are left out of a block; a block of unknown rows is unknown.
    holes = [(math.nan,), (1.0,), (math.nan,), (math.nan,), (math.nan,), (math.nan,)]
    _, _, _, out = reduce_rows("AVERAGE", 60, 0, 360, 180, holes)
    assert out[0] == (1.0,) and math.isnan(out[1][0])
    # A requested step between two multiples takes the next one (factor = ceil).
    assert reduce_rows("AVERAGE", 60, 0, 1800, 121, [(1.0,)] * 30)[2] == 180


def test_archive_choice_gives_about_one_row_per_pixel():
    width = 558  # the plot width of a 640 px graph
    assert [request_step(s, width) for s in (DAY, 7 * DAY, 31 * DAY, 365 * DAY)] == [154, 1083, 4800, 56516]
    now = 1_700_000_000
    # step 300: (1, 576), (6, 672), (24, 744), (288, 731) archives
    layout = rra_layout(300)
    got = [effective_step(layout, 300, now, now - span, request_step(span, width))
           for span in (DAY, 7 * DAY, 31 * DAY, 365 * DAY)]
    assert got == [300, 1800, 7200, 86400]
    # step 60 and 800 px (710 px plot): the 1-min archive, 121 s a pixel -> 3 rows a point
    layout = rra_layout(60)
    assert effective_step(layout, 60, now, now - DAY, request_step(DAY, 710)) == 180
    assert effective_step(layout, 60, now, now - 7 * DAY, request_step(7 * DAY, 710)) == 1800


def test_align_reads_another_grid_by_row_end_time():
    # source rows of 600 s over (0, 1800]: 1, 2, 3; target rows of 300 s over (300, 1500]
    assert align([1.0, 2.0, 3.0], 0, 600, 300, 300, 4) == [1.0, 2.0, 2.0, 3.0]
    out = align([1.0], 0, 600, 600, 300, 2)
    assert all(math.isnan(v) for v in out)  # past the source's end: unknown, not zero


def test_y_scale_has_round_steps_in_the_graphs_base():
    top, ticks = y_scale(20.16e6, 1000)
    assert top == 25e6 and ticks == [0, 5e6, 10e6, 15e6, 20e6, 25e6]
    top, ticks = y_scale(190.73 * 2**20, 1024)
    assert top == 200 * 2**20 and ticks == [i * 50 * 2**20 for i in range(5)]
    top, ticks = y_scale(0.0, None)
    assert top > 0 and ticks[0] == 0


def test_context_colour_depends_on_the_name_only():
    names = [f"guest{i}" for i in range(24)] + list(EVIL)
    here = [context_color(n) for n in names]
    # names go through JSON: lone surrogates would not survive argv decoding
    code = ("import json, sys; from graphs.render import context_color; "
            "print(' '.join(context_color(n) for n in json.load(sys.stdin)))")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(names), capture_output=True,
                         text=True, env=env, check=True).stdout.split()
    assert out == here
    assert len(set(here)) >= 15  # names do not collapse onto a few colours
    assert all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in here)


def test_display_name_makes_any_name_printable_utf8():
    assert display_name("caf\udcc3\udca9") == "caf\\xc3\\xa9"
    assert display_name("a\nb\u202ec") == "a\\x0ab\\u202ec"
    assert display_name("<script>") == "<script>"  # HTML escaping is the page's job
    for name in EVIL:
        display_name(name).encode("utf-8")  # never raises


def test_time_ticks_fall_on_local_hours_and_days():
    start, end = NOW - DAY, NOW
    major, labels, minor = time_ticks(start, end, "day")
    assert 5 <= len(major) <= 7 and len(minor) >= 23
    for t, label in zip(major, labels):
        lt = time.localtime(t)
        assert start <= t <= end and lt.tm_hour % 4 == 0 and lt.tm_min == 0
        assert label == f"{lt.tm_hour:02d}:00"
    major, labels, _ = time_ticks(NOW - 7 * DAY, NOW, "week")
    assert all(time.localtime(t)[3:6] == (0, 0, 0) for t in major) and len(major) in (6, 7, 8)


# ------------------------------------------------------ against rrdtool graph


def rrdtool_print(path: str, ds: str, start: int, end: int, width: int, cdef: str) -> tuple[list[float], list[str]]:
    """rrdtool graph's LAST/MINIMUM/AVERAGE/MAXIMUM of `ds` (through `cdef`, e.g.
    `8,*`), as %lf and as %.2lf%s."""
    defs = [f"DEF:a={path}:{ds}:AVERAGE", f"DEF:mn={path}:{ds}:MIN", f"DEF:mx={path}:{ds}:MAX",
            f"CDEF:ca=a,{cdef}", f"CDEF:cmn=mn,{cdef}", f"CDEF:cmx=mx,{cdef}",
            "VDEF:cur=ca,LAST", "VDEF:min=cmn,MINIMUM", "VDEF:avg=ca,AVERAGE", "VDEF:max=cmx,MAXIMUM"]
    prints = [f"PRINT:{v}:%lf" for v in ("cur", "min", "avg", "max")]
    prints += [f"PRINT:{v}:%.2lf%s" for v in ("cur", "min", "avg", "max")]
    out = subprocess.run(
        ["rrdtool", "graph", "/dev/null", "--start", str(start), "--end", str(end), "--width", str(width),
         *defs, *prints], check=True, capture_output=True, text=True).stdout.splitlines()
    lines = out[1:]  # the first line is the image size
    return [float(v) for v in lines[:4]], [v.replace(" ", "") for v in lines[4:8]]


def same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


@pytest.mark.parametrize("period,span", [("day", DAY), ("week", 7 * DAY), ("month", 31 * DAY),
                                         ("year", 365 * DAY)])
@pytest.mark.parametrize("plot_width", [Painter(WIDTH, HEIGHT).plot_width, 200])
def test_legend_equals_rrdtool_graph_vdefs(env, period, span, plot_width):
    # At 200 px, the day and month archives have more rows than pixels: rrdtool
    # consolidates them further, and so must we.
    plan = make_plan(list_rrd_files(env.rrd_dir))
    builder = ChartBuilder(plot_width)
    traffic = next(s for s in plan.host_specs if s.stem == "if-eth0")
    cpu = next(s for s in plan.context_specs["web"] if s.kind == "ctx-cpu")
    checks = [(traffic, "In", "rx_bytes", "8,*", 1000), (traffic, "Out", "tx_bytes", "8,*", 1000),
              (cpu, "user", "user", "10000,/", None), (cpu, "system", "system", "10000,/", None)]
    for spec, label, ds, cdef, base in checks:
        chart = builder.build(spec, period, NOW, None)
        if plot_width == 200 and period in ("day", "month"):
            assert chart.step == 2 * {"day": STEP, "month": 7200}[period]  # reduced
        row = next(r for r in chart.legend if r.label == label)
        mine = [row.stats.cur, row.stats.min, row.stats.avg, row.stats.max]
        theirs, texts = rrdtool_print(spec.files[0].path, ds, NOW - span, NOW, plot_width, cdef)
        assert all(same(a, b) for a, b in zip(mine, theirs)), (period, label, mine, theirs)
        assert sum(math.isnan(v) for v in mine) == 0, (period, label, mine)
        if base is not None:
            assert list(legend.format_row(row.stats, base)) == texts, (period, label)
        else:
            assert list(legend.format_row(row.stats, None)) == [f"{v:.2f}" for v in theirs]


# -------------------------------------------------------------------- images


def series_colors(png: str) -> list[str]:
    """The colours a graph's data must show in, from its file name."""
    name = os.path.basename(png)
    if name.startswith(("if-", "net-")):
        return [IN_COLOR]
    if "/ctx/" in png:
        from graphs import render

        return [{"cpu": render.USER_COLOR, "mem": render.RSS_COLOR, "tasks": render.PROC_COLOR}[name.split("-")[0]]]
    return [context_color(n) for n in NAMES]


def test_pngs_decode_have_the_configured_size_and_show_data(env):
    pngs = []
    for dirpath, _, files in os.walk(env.graphs_dir):
        pngs += [os.path.join(dirpath, f) for f in files if f.endswith(".png")]
    # 3 host graphs + 2 host interfaces + 6 contexts x 3 + web's veth0, 4 periods each
    assert len(pngs) == (3 + 2 + len(NAMES) * 3 + 1) * 4
    painter = Painter(WIDTH, HEIGHT)
    for png in pngs:
        img = pixels(png)
        assert img.shape == (HEIGHT, WIDTH, 3), png
        area = plot_area(img, painter)
        shown = sum(count_color(area, c) for c in series_colors(png))
        # even the year graph's 3 days of data are a band a few pixels wide
        assert shown >= 20, png
        assert len({tuple(p) for p in img.reshape(-1, 3)[::7]}) > 20, png  # text, grid, data


def tinted(area, channel: int) -> int:
    """Pixels where one channel (1 green, 2 blue) stands clearly above the other two:
    the traffic colours even when blended by antialiasing, never grey, white or the
    reddish grid."""
    import numpy as np

    a = area.astype(int)
    others = [c for c in range(3) if c != channel]
    return int(np.all([a[..., channel] - a[..., c] > 30 for c in others], axis=0).sum())


def test_a_gap_in_the_data_is_a_gap_in_the_plot(env):
    painter = Painter(WIDTH, HEIGHT)
    # Unknown rows: (GAP[0], GAP[1]] (the poll at GAP[1] ends a 2-h interval, longer
    # than the heartbeat, so it gives no rate; the next one does).
    hole = slice(x_pixel(painter, DAY, GAP[0]) + 2, x_pixel(painter, DAY, GAP[1]) - 1)
    before = slice(x_pixel(painter, DAY, GAP[0] - 3 * STEP), x_pixel(painter, DAY, GAP[0]) - 1)
    left, top, _, height = painter.plot_box
    rows = slice(top, top + height + 1)  # with the frame: a line drawn at zero would show there
    assert hole.stop - hole.start >= 8
    img = pixels(os.path.join(env.graphs_dir, "if-eth0-day.png"))
    for channel in (1, 2):  # in (green area), out (blue line)
        assert tinted(img[rows, hole], channel) == 0, channel
        assert tinted(img[rows, before], channel) > 0, channel
    img = pixels(os.path.join(env.graphs_dir, "cpu-day.png"))
    colors = [context_color(n) for n in NAMES]
    assert sum(count_color(img[rows, hole], c) for c in colors) == 0
    assert sum(count_color(img[rows, before], c) for c in colors) > 0
    # and in the data: unknown, not zero
    plan = make_plan(list_rrd_files(env.rrd_dir))
    chart = ChartBuilder(painter.plot_width).build(plan.host_specs[0], "day", NOW, None)
    assert chart.step == STEP
    first = (GAP[0] - chart.grid_start) // STEP  # the row that ends at GAP[0] + STEP
    last = (GAP[1] - chart.grid_start) // STEP  # the row that ends at GAP[1] + STEP
    for layer in chart.layers:
        assert all(math.isnan(v) for v in layer.values[first:last]), layer.label
        assert not math.isnan(layer.values[first - 1]) and not math.isnan(layer.values[last])


# --------------------------------------------------------------------- pages


class PageParser(html.parser.HTMLParser):
    VOID = {"meta", "link", "img", "br", "hr", "input"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.decl = None

    def handle_decl(self, decl):
        self.decl = decl

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path: str) -> PageParser:
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")  # strict: a surrogate could not have been written
    p = PageParser()
    p.feed(text)
    p.close()
    assert p.decl == "DOCTYPE html" and not p.errors and not p.stack, (path, p.errors, p.stack)
    return p


def all_pages(graphs_dir: str) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(graphs_dir):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".html")]
    return out


def test_pages_are_well_formed_refresh_at_the_interval_and_every_reference_resolves(env):
    pages = all_pages(env.graphs_dir)
    assert len(pages) == 4 * (1 + len(NAMES))
    root = os.path.realpath(env.graphs_dir)
    for page in pages:
        p = parse_page(page)
        metas = [a for t, a in p.tags if t == "meta"]
        assert {"http-equiv": "refresh", "content": "300"} in metas
        assert any(a.get("name") == "viewport" for a in metas)
        assert not [t for t, _ in p.tags if t == "script"]
        refs = [a["src"] for t, a in p.tags if t == "img"] + [a["href"] for t, a in p.tags if t == "a"]
        assert refs
        for ref in refs:
            assert not urlsplit(ref).scheme and not ref.startswith("/"), ref
            target = os.path.realpath(os.path.join(os.path.dirname(page), unquote(ref, errors="strict")))
            assert target.startswith(root + os.sep) and os.path.isfile(target), (page, ref)
        for t, a in p.tags:
            if t == "img":
                assert (a["width"], a["height"]) == (str(WIDTH), str(HEIGHT)) and a["alt"]


def test_names_are_escaped_in_pages_and_safe_as_file_names(env):
    index = open(os.path.join(env.graphs_dir, "index.html"), encoding="utf-8").read()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "../../etc" in index
    assert "caf\\xc3\\xa9 &quot;q&quot; &#x27;x&#x27;" in index
    for page in all_pages(env.graphs_dir):
        text = open(page, encoding="utf-8").read()
        assert "<script" not in text.lower(), page
    # the names read back as the text an admin sees
    p = parse_page(os.path.join(env.graphs_dir, "index.html"))
    shown = "".join(p.text)
    for name in EVIL:
        assert display_name(name) in shown
    # every file stays in the graphs folder under a safe name, one folder per context
    safe = re.compile(r"[A-Za-z0-9_.%~=-]+")
    for dirpath, dirs, files in os.walk(env.root):
        rel = os.path.relpath(dirpath, env.root)
        top = rel.split(os.sep)[0]
        assert top in (".", "rrd", "graphs"), dirpath
        if top == "graphs":
            for name in dirs + files:
                assert safe.fullmatch(name) and name not in (".", ".."), name
    ctx_dirs = sorted(os.listdir(os.path.join(env.graphs_dir, "ctx")))
    assert ctx_dirs == sorted(encode_name(n) for n in NAMES)
    assert sorted(os.listdir(env.root)) == ["ctxmon.toml", "graphs", "rrd"]


# ---------------------------------------------------------------------- runs


def mtimes(graphs_dir: str) -> dict[str, int]:
    out = {}
    for dirpath, _, files in os.walk(graphs_dir):
        for f in files:
            if f.endswith(".png"):
                p = os.path.join(dirpath, f)
                out[os.path.relpath(p, graphs_dir)] = os.stat(p).st_mtime_ns
    return out


def test_a_rerun_draws_only_graphs_whose_archive_has_new_rows(small_env):
    e = small_env
    first = graph_run(e).run()
    assert first.rendered == (3 + 2 + 2 * 3 + 1) * 4 and first.skipped == 0
    before = mtimes(e.graphs_dir)
    again = graph_run(e).run()
    assert (again.rendered, again.skipped) == (0, first.rendered)
    assert mtimes(e.graphs_dir) == before
    # One more poll: a new 5-min row (day), but no new 30-min, 2-h or 1-day row.
    e.write(T_END + STEP)
    later = graph_run(e, now=NOW + STEP).run()
    after = mtimes(e.graphs_dir)
    changed = {p for p in after if after[p] != before[p]}
    assert changed == {p for p in after if p.endswith("-day.png")}
    assert later.rendered == len(changed) and later.skipped == first.rendered - len(changed)
    # A missing PNG is drawn again; --force draws everything.
    os.unlink(os.path.join(e.graphs_dir, "if-eth0-week.png"))
    assert graph_run(e, now=NOW + STEP).run().rendered == 1
    assert graph_run(e, now=NOW + STEP).run(force=True).rendered == first.rendered
    leftovers = [f for _, _, fs in os.walk(e.graphs_dir) for f in fs if f.startswith(".tmp-")]
    assert leftovers == []


def test_periods_and_context_limit_what_is_drawn(small_env):
    e = small_env
    r = graph_run(e).run(periods=("week",), context="../../etc")
    assert r.rendered == 3 and r.pages == 4  # cpu mem tasks; only that context's pages
    drawn = set(mtimes(e.graphs_dir))
    slug = encode_name("../../etc")
    assert drawn == {f"ctx/{slug}/{k}-week.png" for k in ("cpu", "mem", "tasks")}
    assert not os.path.exists(os.path.join(e.graphs_dir, "index.html"))
    from graphs.render import UnknownContextError

    with pytest.raises(UnknownContextError):
        graph_run(e).run(context="nobody")


def test_departed_contexts_lose_their_graphs_but_foreign_files_stay(small_env):
    e = small_env
    graph_run(e).run(periods=("day",))
    slug = encode_name("../../etc")
    gone_dir = os.path.join(e.graphs_dir, "ctx", slug)
    web_dir = os.path.join(e.graphs_dir, "ctx", "web")
    assert os.path.isfile(os.path.join(gone_dir, "cpu-day.png"))
    with open(os.path.join(web_dir, "notes.txt"), "w") as f:
        f.write("admin's own file\n")
    # the context departs: the sink archives its RRD folder
    os.makedirs(os.path.join(e.rrd_dir, "archive"), exist_ok=True)
    os.rename(os.path.join(e.rrd_dir, "ctx", slug), os.path.join(e.rrd_dir, "archive", slug + "-x"))
    r = graph_run(e).run(periods=("day",))
    assert r.removed == 3 * 1 + 4  # its day PNGs (the only period drawn) and 4 pages
    assert not os.path.exists(gone_dir)
    assert os.path.isfile(os.path.join(web_dir, "notes.txt"))
    index = open(os.path.join(e.graphs_dir, "index.html"), encoding="utf-8").read()
    assert "../../etc" not in index


def test_a_second_run_on_the_same_folder_is_refused_while_one_runs(small_env):
    e = small_env
    os.makedirs(e.graphs_dir, exist_ok=True)
    with open(os.path.join(e.graphs_dir, ".ctxmon-graphs.lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BusyError):
            graph_run(e).run(periods=("day",))


def test_unreadable_rrd_file_is_skipped_and_counted(small_env):
    e = small_env
    bad = rrd_path(e.rrd_dir, "mem", "web")
    with open(bad, "wb") as f:
        f.write(b"not an rrd file")
    r = graph_run(e).run(periods=("day",))
    # the host memory graph is drawn without it, web's own memory graph fails
    assert r.failed >= 1 and r.unreadable >= 1
    assert os.path.isfile(os.path.join(e.graphs_dir, "mem-day.png"))
    assert not os.path.exists(os.path.join(e.graphs_dir, "ctx", "web", "mem-day.png"))
    assert os.path.isfile(os.path.join(e.graphs_dir, "ctx", "web", "cpu-day.png"))


def test_rrdcached_pending_updates_are_graphed(rrdcached):
    daemon = rrdcached
    base = daemon.base
    e = make_env(base, names=("web",), days=0.5, daemon=daemon.addr)
    plan = make_plan(list_rrd_files(e.rrd_dir))
    spec = next(s for s in plan.host_specs if s.stem == "if-eth0")
    width = Painter(WIDTH, HEIGHT).plot_width
    # rrdcached holds every update (-w 3600): the file alone knows no traffic yet
    direct = ChartBuilder(width).build(spec, "day", NOW, None).legend[0].stats
    cached = ChartBuilder(width, daemon=daemon.addr).build(spec, "day", NOW, None).legend[0].stats
    assert math.isnan(direct.cur)
    rate = 1.5e6 * (1.1 + math.sin(T_END / 6000)) * 8  # bits/s written for the last step
    assert cached.cur == pytest.approx(rate, rel=1e-3)
    r = graph_run(e).run(periods=("day",))
    assert r.failed == 0 and r.rendered == 3 + 2 + 3 + 1



# ----------------------------------------------------------------------- CLI


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    from ctxmon.cli import main

    try:
        code = main(["graph", *argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_cli_renders_and_reports_bad_input_in_one_line(small_env, capsys):
    cfg = small_env.config
    code, err = run_main(["-c", cfg, "--period", "day", "--context", "web", "--width", "500", "--height", "200"],
                         capsys)
    assert code == 0
    assert pixels(os.path.join(small_env.graphs_dir, "ctx", "web", "cpu-day.png")).shape == (200, 500, 3)
    for argv in (["-c", cfg, "--period", "fortnight"], ["-c", cfg, "--context", "nobody"],
                 ["-c", os.path.join(small_env.root, "missing.toml")], ["-c", cfg, "--width", "20"]):
        code, err = run_main(argv, capsys)
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)


def test_progress_bar_only_on_a_terminal():
    from graphs.__main__ import Progress

    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    tty = Stream(True)
    bar = Progress(tty, width=10)
    bar(1, 4)
    bar(4, 4)
    assert tty.getvalue().startswith("\r[##--------] 1/4 graphs")
    assert tty.getvalue().endswith("\r[##########] 4/4 graphs\n")
    pipe = Stream(False)
    Progress(pipe)(4, 4)
    assert pipe.getvalue() == ""


def test_the_daemon_side_never_imports_matplotlib():
    code = ("import sys, graphs, graphs.render, graphs.html, graphs.legend, graphs.__main__, ctxmon.daemon; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'numpy', 'PIL')))")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
