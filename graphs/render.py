"""Graphs from the RRD files: what to draw (charts), drawing it (matplotlib), and a run.

The data path is rrdtool graph's own, so the legend figures equal what `rrdtool graph`
prints with VDEF LAST/MINIMUM/AVERAGE/MAXIMUM over the same file, period and width:
- the requested step is (end - start) // plot width in pixels (one row per pixel);
- `rrdtool fetch --resolution <that step>` picks the archive rrdtool graph would pick
  (the closest step among those covering the period);
- rows finer than the requested step are consolidated as rrdtool's `reduce_data`
  does (same CF, unknown rows left out, partial rows at the edges unknown).

Unknown rows stay NaN all the way to the plot, where they are gaps, never zero.

A run (`GraphRun.run`) renders only graphs whose period's archive has new rows since
the last run (a small state file in the graphs folder remembers which row each PNG
shows), then writes the HTML pages. Every file is written to a temporary name in the
same folder and renamed over the old one, so a browser never sees half a PNG.

matplotlib is imported only when something is drawn: this module can be imported
(e.g. by tests of the data path) without paying for it.
"""

from __future__ import annotations

import colorsys
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import rrdtool

from exporters.files import write_atomic
from exporters.names import decode_name, encode_name
from exporters.rrd import (
    CONTEXT_KINDS,
    CTX_DIR,
    RrdFile,
    fetch,
    list_rrd_files,
    rra_layout,
)

from .alertstate import EMPTY as NO_ALERTS
from .alertstate import AlertState, read_alert_state
from .legend import Stats, display_name, legend_stats

log = logging.getLogger("ctxmon.graphs")

DAY = 86400
from . import PERIODS

SPANS = {"day": DAY, "week": 7 * DAY, "month": 31 * DAY, "year": 365 * DAY}
# A period's graph is redrawn at most this often, whatever its archive's row length.
MIN_REDRAW = {"day": 0, "week": 1800, "month": 7200, "year": DAY}
TOP_N = 7  # contexts drawn on their own in the host graphs; the rest is `other`
STATE_FILE = ".ctxmon-graphs-state.json"
LOCK_FILE = ".ctxmon-graphs.lock"
STATE_VERSION = 1
NAN = math.nan

# Classic rrdtool colours.
BACK = "#F0F0F0"  # around the plot
CANVAS = "#FFFFFF"
GRID = "#C8C8C8"
MGRID = "#E09090"  # major grid: rrdtool's reddish dots
FONT = "#000000"
FRAME = "#808080"
IN_COLOR = "#00CC00"  # MRTG's classic green area for traffic in
OUT_COLOR = "#0000FF"  # and blue line for traffic out
TOTAL_COLOR = "#000000"
OTHER_COLOR = "#A0A0A0"
USER_COLOR = "#3366CC"
SYSTEM_COLOR = "#FF6600"
RSS_COLOR = "#00AA88"
VSZ_COLOR = "#AA0066"
PROC_COLOR = "#6699FF"
THREAD_COLOR = "#CC3300"
# Threshold lines (dashed, over the data) and their labels, darker for contrast on white.
WARNING_COLOR = "#FFB000"
CRITICAL_COLOR = "#FF0000"
WARNING_TEXT = "#8A5A00"
CRITICAL_TEXT = "#C00000"
# A level is drawn on the scale of the data when it is at most this many times the
# data's peak; a higher one would squash the data flat, so it is named above the plot.
THRESHOLD_SCALE = 4.0


class GraphError(Exception):
    """A run that cannot go ahead; `str()` is one line."""


class UnknownContextError(GraphError):
    """The context asked for has no RRD files (bad input)."""


class BusyError(GraphError):
    """Another run holds the graphs folder."""


# ------------------------------------------------------------------ data path


def request_step(span: int, plot_width: int) -> int:
    """rrdtool graph's step: max(1, span // width) seconds per pixel."""
    return max(1, int(span) // max(1, int(plot_width)))


def archive_step(layout: Sequence[tuple[int, int]], pdp_step: int, last_update: int, start: int,
                 requested: int) -> int:
    """The row length rrd_fetch picks for `requested` (the closest among the archives
    that reach back to `start`; else the one that covers most of the period)."""
    best_full: tuple[int, int] | None = None
    best_part: tuple[int, int, int] | None = None
    for per_row, rows in layout:
        row_step = per_row * pdp_step
        cal_end = last_update - last_update % row_step
        cal_start = cal_end - row_step * rows
        diff = abs(requested - row_step)
        if cal_start <= start:
            if best_full is None or diff < best_full[0]:
                best_full = (diff, row_step)
        else:
            match = -(cal_start - start)
            if best_part is None or match > best_part[0] or (match == best_part[0] and diff < best_part[1]):
                best_part = (match, diff, row_step)
    if best_full is not None:
        return best_full[1]
    if best_part is not None:
        return best_part[2]
    return pdp_step


def effective_step(layout: Sequence[tuple[int, int]], pdp_step: int, last_update: int, start: int,
                   requested: int) -> int:
    """The row length of the data a graph shows, after rrdtool's reduction."""
    row_step = archive_step(layout, pdp_step, last_update, start, requested)
    if row_step < requested:
        return row_step * math.ceil(requested / row_step)
    return row_step


def _consolidate(cf: str, values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return NAN
    if cf == "MIN":
        return min(known)
    if cf == "MAX":
        return max(known)
    if cf == "LAST":
        return known[-1]
    return math.fsum(known) / len(known)


def reduce_rows(cf: str, cur_step: int, start: int, end: int, step: int,
                rows: Sequence[Sequence[float]]) -> tuple[int, int, int, list[tuple[float, ...]]]:
    """rrdtool's reduce_data: consolidate rows of `cur_step` into rows of the next
    multiple of `cur_step` >= `step`, with `cf`; start and end move outwards to that
    multiple, and a partial row at either edge is unknown. Returns (start, end, step, rows)."""
    factor = math.ceil(step / cur_step)
    new_step = cur_step * factor
    ncol = len(rows[0]) if rows else 0
    unknown = (NAN,) * ncol
    row_cnt = (end - start) // cur_step
    src = 0
    out: list[tuple[float, ...]] = []
    start_offset = start % new_step
    end_offset = end % new_step
    if start_offset:
        start -= start_offset
        skip = factor - start_offset // cur_step
        src += skip
        row_cnt -= skip
        out.append(unknown)
    if end_offset:
        end = end - end_offset + new_step
        row_cnt -= end_offset // cur_step
    while row_cnt >= factor:
        block = rows[src:src + factor]
        out.append(tuple(_consolidate(cf, [r[c] for r in block]) for c in range(ncol)))
        src += factor
        row_cnt -= factor
    if end_offset:
        out.append(unknown)
    return start, end, new_step, out


@dataclass(frozen=True, slots=True)
class Series:
    """Rows of one file and CF on a time grid: row i covers (start + i*step, start + (i+1)*step]."""

    start: int
    step: int
    columns: dict[str, list[float]]  # data source -> values, NaN = unknown

    @property
    def length(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def column(self, name: str) -> list[float]:
        return self.columns[name]


def load_series(path: str, cf: str, start: int, end: int, requested: int,
                daemon: str | None = None) -> Series:
    """Fetch one file as rrdtool graph would for a plot of `requested` s per pixel.

    Values are in the file kind's unit (CPU as a ratio, see exporters.rrd.fetch).
    Raises rrdtool.OperationalError for an unreadable file.
    """
    got = fetch(path, start, end, cf, resolution=requested, daemon=daemon)
    rows = [tuple(NAN if v is None else float(v) for v in row) for row in got.rows]
    s, e, st = got.start, got.end, got.step
    if st < requested:
        s, e, st, rows = reduce_rows(cf, st, s, e, requested, rows)
    n = (e - s) // st
    rows = rows[:n]
    columns = {name: [r[i] for r in rows] for i, name in enumerate(got.names)}
    return Series(s, st, columns)


def align(values: Sequence[float], start: int, step: int, grid_start: int, grid_step: int,
          length: int) -> list[float]:
    """`values` (a grid of its own) read on another grid: each target row takes the
    source row that holds the target row's end time."""
    if start == grid_start and step == grid_step and len(values) == length:
        return list(values)
    out = []
    for i in range(length):
        t = grid_start + (i + 1) * grid_step
        j = -(-(t - start) // step) - 1  # row whose interval (start+j*step, start+(j+1)*step] holds t
        out.append(values[j] if 0 <= j < len(values) else NAN)
    return out


def add_series(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Row-wise sum, unknown if either is unknown (rrdtool's CDEF a,b,+)."""
    return [x + y for x, y in zip(a, b)]


def sum_known(columns: Sequence[Sequence[float]], length: int) -> list[float]:
    """Row-wise sum of the known values, unknown where none is known."""
    out = []
    for i in range(length):
        known = [c[i] for c in columns if not math.isnan(c[i])]
        out.append(math.fsum(known) if known else NAN)
    return out


def mean_known(values: Iterable[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return math.fsum(known) / len(known) if known else NAN


def context_color(name: str) -> str:
    """A colour derived from the name alone: the same in every graph, period and run."""
    # 16 hues x 3 shades rather than a continuous hue: two contexts either share a
    # colour (rare) or differ visibly, never by a shade the eye cannot tell apart.
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    index = int.from_bytes(digest[:4], "big") % 48
    hue = (index % 16) / 16
    saturation, value = ((0.75, 0.95), (0.90, 0.70), (0.45, 0.90))[index // 16]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return "#%02X%02X%02X" % (round(r * 255), round(g * 255), round(b * 255))


# --------------------------------------------------------------------- charts


@dataclass(frozen=True, slots=True)
class Layer:
    label: str
    color: str
    values: list[float]
    style: str  # "area" (stacked on the areas before it) or "line"


@dataclass(frozen=True, slots=True)
class LegendRow:
    label: str
    color: str
    style: str
    stats: Stats | None  # None: a colour key only


@dataclass
class Chart:
    """Everything drawn in one PNG, as plain data."""

    title: str
    ylabel: str
    start: int  # of the period shown
    end: int
    grid_start: int  # of the data rows
    step: int
    layers: list[Layer]
    legend: list[LegendRow]
    base: int | None  # 1000 or 1024 for SI figures, None for plain (percent)
    last_update: int | None
    stats_table: bool  # Cur/Min/Avg/Max columns, else a colour key
    thresholds: list["ThresholdLine"] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ThresholdLine:
    """An alert level drawn across a graph, in the graph's own unit."""

    label: str  # what it is a level of, e.g. "RSS"
    severity: str  # warning or critical
    value: float

    @property
    def color(self) -> str:
        return CRITICAL_COLOR if self.severity == "critical" else WARNING_COLOR

    @property
    def text_color(self) -> str:
        return CRITICAL_TEXT if self.severity == "critical" else WARNING_TEXT


# graph kind -> {alert metric: (label, factor from the metric's unit to the graph's)};
# "host_cpus" stands for the host's CPU count (cpu_host is a share of all of them).
_THRESHOLD_METRICS: dict[str, dict[str, tuple[str, float | str]]] = {
    "ctx-cpu": {"cpu": ("CPU", 100.0), "cpu_host": ("CPU", "host_cpus")},
    "ctx-mem": {"rss": ("RSS", 1.0), "vsz": ("VSZ", 1.0)},
    "ctx-tasks": {"processes": ("processes", 1.0), "threads": ("threads", 1.0)},
    # The rules compare the sum over the context's own interfaces: drawn on each.
    "traffic": {"net_receive_bps": ("In", 1.0), "net_transmit_bps": ("Out", 1.0)},
}


def threshold_lines(spec: "GraphSpec", levels: Iterable, host_cpus: int = 1) -> list[ThresholdLine]:
    """The levels (graphs.alertstate.LevelShown: metric, severity, value in the metric's
    unit) that belong on a context's graph, in the graph's unit; none on host graphs."""
    if spec.context is None:
        return []
    metrics = _THRESHOLD_METRICS.get(spec.kind, {})
    out: dict[tuple[str, str, float], ThresholdLine] = {}
    for lv in levels:
        if lv.metric not in metrics:
            continue
        label, factor = metrics[lv.metric]
        value = lv.value * (100.0 * host_cpus if factor == "host_cpus" else float(factor))
        if math.isfinite(value) and value >= 0:
            out.setdefault((label, lv.severity, value), ThresholdLine(label, lv.severity, value))
    return sorted(out.values(), key=lambda t: (t.value, t.label, t.severity))


@dataclass(frozen=True, slots=True)
class GraphSpec:
    """One graph (for every period): a PNG per period, `<stem>-<period>.png`."""

    stem: str  # path under the graphs folder without the period, e.g. ctx/<enc>/cpu
    kind: str  # host-cpu host-mem host-tasks traffic ctx-cpu ctx-mem ctx-tasks
    title: str  # without the period
    files: tuple[RrdFile, ...]
    context: str | None = None

    def png(self, period: str) -> str:
        return f"{self.stem}-{period}.png"


@dataclass
class ContextEntry:
    name: str  # decoded (may end with … when the name was too long to keep)
    slug: str  # the directory name the RRD layout uses: safe as a file name
    files: dict[str, RrdFile] = field(default_factory=dict)  # cpu mem tasks
    interfaces: list[tuple[str, str, RrdFile]] = field(default_factory=list)  # (name, slug, file)


@dataclass
class Plan:
    contexts: list[ContextEntry]
    host_interfaces: list[tuple[str, str, RrdFile]]
    host_specs: list[GraphSpec]
    context_specs: dict[str, list[GraphSpec]]  # slug -> its graphs

    def all_specs(self) -> list[GraphSpec]:
        out = list(self.host_specs)
        for specs in self.context_specs.values():
            out.extend(specs)
        return out


def _slug_of(rf: RrdFile) -> str:
    return os.path.basename(os.path.dirname(rf.path))


def _interface_slug(rf: RrdFile) -> str:
    base = os.path.basename(rf.path)[: -len(".rrd")]
    return base.split("-", 1)[1]


def make_plan(files: Iterable[RrdFile]) -> Plan:
    """The graphs for a set of RRD files (from exporters.rrd.list_rrd_files)."""
    contexts: dict[str, ContextEntry] = {}
    host_ifs: list[tuple[str, str, RrdFile]] = []
    for rf in files:
        if rf.kind == "host-if":
            host_ifs.append((rf.interface or "", _interface_slug(rf), rf))
            continue
        slug = _slug_of(rf)
        entry = contexts.setdefault(slug, ContextEntry(rf.context or "", slug))
        if rf.kind in CONTEXT_KINDS:
            entry.files[rf.kind] = rf
        elif rf.kind == "net":
            entry.interfaces.append((rf.interface or "", _interface_slug(rf), rf))
    ordered = sorted(contexts.values(), key=lambda c: (c.name, c.slug))
    host_ifs.sort(key=lambda x: (x[0], x[1]))
    host_specs = []
    for kind, title in (("cpu", "CPU by context"), ("mem", "Memory by context"),
                        ("tasks", "Processes by context")):
        inputs = tuple(c.files[kind] for c in ordered if kind in c.files)
        if inputs:
            host_specs.append(GraphSpec(kind, "host-" + kind, title, inputs))
    for name, slug, rf in host_ifs:
        host_specs.append(GraphSpec(f"if-{slug}", "traffic", f"{display_name(name)} traffic", (rf,)))
    context_specs: dict[str, list[GraphSpec]] = {}
    for c in ordered:
        specs = []
        label = display_name(c.name)
        for kind, what in (("cpu", "CPU"), ("mem", "memory"), ("tasks", "processes")):
            if kind in c.files:
                specs.append(GraphSpec(f"{CTX_DIR}/{c.slug}/{kind}", "ctx-" + kind, f"{label} {what}",
                                       (c.files[kind],), c.name))
        for name, slug, rf in sorted(c.interfaces, key=lambda x: (x[0], x[1])):
            specs.append(GraphSpec(f"{CTX_DIR}/{c.slug}/net-{slug}", "traffic",
                                   f"{label} {display_name(name)} traffic", (rf,), c.name))
        context_specs[c.slug] = specs
    return Plan(ordered, host_ifs, host_specs, context_specs)


class ChartBuilder:
    """Turns a GraphSpec and a period into a Chart by reading the RRD files."""

    def __init__(self, plot_width: int, daemon: str | None = None, top: int = TOP_N):
        self.plot_width = plot_width
        self.daemon = daemon
        self.top = top
        self.errors = 0  # files that could not be read (logged)

    def _load(self, rf: RrdFile, cf: str, start: int, end: int, req: int) -> Series | None:
        try:
            return load_series(rf.path, cf, start, end, req, self.daemon)
        except rrdtool.OperationalError as e:
            self.errors += 1
            log.warning("cannot read %s: %s", rf.path, str(e).splitlines()[0] if str(e) else "error")
            return None

    def build(self, spec: GraphSpec, period: str, end: int, last_update: int | None) -> Chart | None:
        span = SPANS[period]
        start = end - span
        req = request_step(span, self.plot_width)
        title = f"{spec.title} - by {period}"
        if spec.kind.startswith("host-"):
            return self._stacked(spec, title, start, end, req, last_update)
        return self._single(spec, title, start, end, req, last_update)

    # -- host graphs: one stacked area per context, top N + other, total line

    def _stacked(self, spec: GraphSpec, title: str, start: int, end: int, req: int,
                 last_update: int | None) -> Chart | None:
        kind = spec.kind[len("host-"):]
        grid: tuple[int, int, int] | None = None
        per_context: list[tuple[str, list[float]]] = []
        for rf in spec.files:
            s = self._load(rf, "AVERAGE", start, end, req)
            if s is None:
                continue
            if kind == "cpu":
                values = [v * 100 for v in add_series(s.column("user"), s.column("system"))]
            elif kind == "mem":
                values = s.column("rss")
            else:
                values = s.column("processes")
            if grid is None:
                grid = (s.start, s.step, s.length)
            else:
                values = align(values, s.start, s.step, *grid)
            per_context.append((rf.context or "", values))
        if grid is None:
            return None
        g_start, g_step, n = grid
        ranked = sorted(per_context, key=lambda cv: (-_rank(cv[1]), cv[0]))
        shown, rest = ranked[: self.top], ranked[self.top:]
        if len(rest) == 1:  # an `other` of one context is that context
            shown, rest = ranked, []
        layers = [Layer(display_name(name), context_color(name), values, "area") for name, values in shown]
        if rest:
            layers.append(Layer(f"other ({len(rest)})", OTHER_COLOR, sum_known([v for _, v in rest], n), "area"))
        layers.append(Layer("total", TOTAL_COLOR, sum_known([v for _, v in per_context], n), "line"))
        legend = [LegendRow(layer.label, layer.color, layer.style, None) for layer in layers]
        ylabel, base = {"cpu": ("% of one CPU", None), "mem": ("bytes (RSS)", 1024),
                        "tasks": ("processes", 1000)}[kind]
        return Chart(title, ylabel, start, end, g_start, g_step, layers, legend, base, last_update, False)

    # -- one file: traffic or a context's own series, with Cur/Min/Avg/Max

    def _single(self, spec: GraphSpec, title: str, start: int, end: int, req: int,
                last_update: int | None) -> Chart | None:
        rf = spec.files[0]
        series = {cf: self._load(rf, cf, start, end, req) for cf in ("AVERAGE", "MIN", "MAX")}
        avg = series["AVERAGE"]
        if avg is None:
            return None
        n = avg.length

        def col(cf: str, ds: str, factor: float = 1.0) -> list[float]:
            s = series[cf] or avg
            values = align(s.column(ds), s.start, s.step, avg.start, avg.step, n)
            return [v * factor for v in values] if factor != 1.0 else values

        if spec.kind == "traffic":
            rows = (("In", IN_COLOR, "area", "rx_bytes"), ("Out", OUT_COLOR, "line", "tx_bytes"))
            factor, ylabel, base = 8.0, "bits per second", 1000
        elif spec.kind == "ctx-cpu":
            rows = (("user", USER_COLOR, "area", "user"), ("system", SYSTEM_COLOR, "area", "system"))
            factor, ylabel, base = 100.0, "% of one CPU", None
        elif spec.kind == "ctx-mem":
            rows = (("RSS", RSS_COLOR, "area", "rss"), ("VSZ", VSZ_COLOR, "line", "vsz"))
            factor, ylabel, base = 1.0, "bytes", 1024
        else:
            rows = (("processes", PROC_COLOR, "area", "processes"), ("threads", THREAD_COLOR, "line", "threads"))
            factor, ylabel, base = 1.0, "count", 1000
        layers, legend = [], []
        for label, color, style, ds in rows:
            values = col("AVERAGE", ds, factor)
            stats = legend_stats(values, col("MIN", ds, factor), col("MAX", ds, factor))
            layers.append(Layer(label, color, values, style))
            legend.append(LegendRow(label, color, style, stats))
        return Chart(title, ylabel, start, end, avg.start, avg.step, layers, legend, base, last_update, True)


def _rank(values: Sequence[float]) -> float:
    m = mean_known(values)
    return -1.0 if math.isnan(m) else m


# ------------------------------------------------------------------ drawing

_LEGEND_LINE = 12  # px per legend line
_LEGEND_LINES = 4  # header + 2 rows + last update; a colour key uses the same room


def time_ticks(start: int, end: int, period: str) -> tuple[list[float], list[str], list[float]]:
    """(major tick times, their labels, minor tick times), in local time."""
    lt = time.localtime(start)

    def hours(every: int) -> Iterable[float]:
        h = lt.tm_hour - lt.tm_hour % every
        while True:
            t = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, h, 0, 0, 0, 0, -1))
            if t > end:
                return
            yield t
            h += every

    def days(every: int = 1, weekday: int | None = None) -> Iterable[float]:
        d = lt.tm_mday
        while True:
            t = time.mktime((lt.tm_year, lt.tm_mon, d, 0, 0, 0, 0, 0, -1))
            if t > end:
                return
            if weekday is None or time.localtime(t).tm_wday == weekday:
                yield t
            d += every

    def months() -> Iterable[float]:
        m = lt.tm_mon
        while True:
            t = time.mktime((lt.tm_year, m, 1, 0, 0, 0, 0, 0, -1))
            if t > end:
                return
            yield t
            m += 1

    if period == "day":
        major, fmt, minor = list(hours(4)), "%H:%M", list(hours(1))
    elif period == "week":
        major, fmt, minor = list(days()), "%a %d", list(hours(6))
    elif period == "month":
        major, fmt, minor = list(days(weekday=0)), "%d %b", list(days())
    else:
        major, fmt, minor = list(months()), "%b", list(days(weekday=0))
    major = [t for t in major if start <= t <= end]
    minor = [t for t in minor if start <= t <= end]
    labels = [time.strftime(fmt, time.localtime(t)) for t in major]
    return major, labels, minor


def _steps(grid_start: int, step: int, values: Sequence[float]):
    """Each row as a flat segment over its own interval: x, y with two points a row."""
    import numpy as np

    n = len(values)
    edges = grid_start + step * np.arange(n + 1, dtype=float)
    x = np.empty(2 * n)
    x[0::2] = edges[:-1]
    x[1::2] = edges[1:]
    y = np.repeat(np.asarray(values, dtype=float), 2)
    return x, y


def y_scale(peak: float, base: int | None) -> tuple[float, list[float]]:
    """(top of the y axis, tick values) for data up to `peak`: 3-6 round steps; for
    base 1024 the steps are round in KiB, MiB, GiB ... so that labels read well."""
    if not math.isfinite(peak) or peak <= 0:
        peak = 1.0
    unit = 1.0
    if base == 1024 and peak >= 1024:
        unit = 1024.0 ** math.floor(math.log(peak, 1024))
    scaled = peak / unit
    raw = scaled / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    top = math.ceil(scaled / step - 1e-9) * step
    if top - scaled < 0.1 * step:  # keep a line at the peak off the frame
        top += step
    count = int(round(top / step))
    return top * unit, [i * step * unit for i in range(count + 1)]


def data_peak(chart: Chart) -> float:
    """The highest point the chart's data reaches: the top of the stacked areas (an
    unknown row adds nothing to the rows above it) or of a line; 0 without data."""
    peak = 0.0
    baseline: list[float] | None = None
    for layer in chart.layers:
        values = layer.values
        if baseline is None:
            baseline = [0.0] * len(values)
        if layer.style == "area":
            top = [b + v for b, v in zip(baseline, values)]
            baseline = [b + (0.0 if math.isnan(v) else v) for b, v in zip(baseline, values)]
        else:
            top = list(values)
        known = [v for v in top if math.isfinite(v)]
        if known:
            peak = max(peak, max(known))
    return peak


def axis_scale(chart: Chart) -> tuple[float, list[float], list[ThresholdLine]]:
    """(top of the y axis, its ticks, the threshold lines above it). The axis covers
    the data and the levels up to THRESHOLD_SCALE times the data's peak (all levels
    when there is no data)."""
    peak = data_peak(chart)
    reach = peak * THRESHOLD_SCALE if peak > 0 else math.inf
    for t in chart.thresholds:
        if t.value <= reach:
            peak = max(peak, t.value)
    y_top, ticks = y_scale(peak, chart.base)
    return y_top, ticks, [t for t in chart.thresholds if t.value > y_top]


class Painter:
    """Draws Charts as PNGs of exactly width x height pixels, in rrdtool's classic look.

    One figure is built on first use and kept: each chart adds its artists, is
    saved, and takes them away again (building a figure and its axes costs more
    than drawing a graph). Grid and labels are drawn directly, not as matplotlib
    ticks, for the same reason. Not thread-safe: one Painter per thread.
    """

    LEFT, RIGHT, TOP = 66, 16, 22
    XLABELS = 18
    FONT = {"family": "DejaVu Sans Mono", "fontsize": 7, "color": FONT}

    def __init__(self, width: int = 800, height: int = 300, dpi: int = 100):
        if width < 300 or height < 160:
            raise ValueError(f"graph size {width}x{height} is too small (at least 300x160)")
        self.width = int(width)
        self.height = int(height)
        self.dpi = int(dpi)
        self.bottom = self.XLABELS + _LEGEND_LINE * _LEGEND_LINES + 6
        self._fig = None
        self._ax = None

    @property
    def plot_width(self) -> int:
        return self.width - self.LEFT - self.RIGHT

    @property
    def plot_height(self) -> int:
        return self.height - self.TOP - self.bottom

    @property
    def plot_box(self) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the plot area in image pixels (top row = 0)."""
        return self.LEFT, self.TOP, self.plot_width, self.plot_height

    def x_pixel(self, chart: Chart, t: float) -> float:
        """Image column of time `t`."""
        return self.LEFT + (t - chart.start) / (chart.end - chart.start) * self.plot_width

    def y_pixel(self, chart: Chart, value: float) -> float:
        """Image row (from the top, fractional) of `value` on the chart's y axis."""
        y_top = axis_scale(chart)[0]
        return self.TOP + self.plot_height * (1 - value / y_top)

    def _figure(self):
        if self._fig is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            w, h = self.width, self.height
            fig = Figure(figsize=(w / self.dpi, h / self.dpi), dpi=self.dpi, facecolor=BACK)
            FigureCanvasAgg(fig)
            ax = fig.add_axes((self.LEFT / w, self.bottom / h, self.plot_width / w, self.plot_height / h),
                              facecolor=CANVAS)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_autoscale_on(False)
            for spine in ax.spines.values():
                spine.set_color(FRAME)
                spine.set_linewidth(0.6)
            self._fig, self._ax = fig, ax
        return self._fig, self._ax

    def paint(self, chart: Chart, period: str) -> bytes:
        import numpy as np
        from matplotlib.patches import Rectangle

        from .legend import format_row, tick_format

        fig, ax = self._figure()
        w, h = self.width, self.height
        drawn: list = []

        def text(x_px: float, y_px: float, s: str, **kw) -> None:
            """Text at pixel coordinates from the top left; never parsed as mathtext."""
            drawn.append(fig.text(x_px / w, 1 - y_px / h, s, parse_math=False, **{**self.FONT, **kw}))

        def box(x_px: float, y_px: float, bw: float, bh: float, color: str, edge: bool = True) -> None:
            drawn.append(fig.add_artist(Rectangle(
                (x_px / w, 1 - (y_px + bh) / h), bw / w, bh / h, transform=fig.transFigure, facecolor=color,
                edgecolor="#000000" if edge else "none", linewidth=0.4 if edge else 0)))

        try:
            # Stacked areas (an unknown row breaks the area: a gap), then lines on top.
            n = len(chart.layers[0].values) if chart.layers else 0
            baseline = np.zeros(n)
            for layer in chart.layers:
                values = np.asarray(layer.values, dtype=float)
                if layer.style == "area":
                    upper = baseline + values
                    x, y1 = _steps(chart.grid_start, chart.step, upper)
                    _, y0 = _steps(chart.grid_start, chart.step, baseline)
                    drawn.append(ax.fill_between(x, y0, y1, facecolor=layer.color, edgecolor="none",
                                                 linewidth=0, zorder=2))
                    baseline = baseline + np.nan_to_num(values, nan=0.0)
                else:
                    x, y = _steps(chart.grid_start, chart.step, values)
                    drawn.extend(ax.plot(x, y, color=layer.color, linewidth=1.0, zorder=3,
                                         solid_capstyle="butt"))
            y_top, y_ticks, off_scale = axis_scale(chart)
            ax.set_xlim(chart.start, chart.end)
            ax.set_ylim(0, y_top)

            # Grid: minor time lines, then major ones and the value lines.
            major, labels, minor = time_ticks(chart.start, chart.end, period)
            dots = (0, (1, 2))
            if minor:
                drawn.append(ax.vlines(minor, 0, y_top, colors=GRID, linestyles=dots, linewidth=0.5, zorder=1))
            if major:
                drawn.append(ax.vlines(major, 0, y_top, colors=MGRID, linestyles=dots, linewidth=0.6, zorder=1))
            drawn.append(ax.hlines(y_ticks[1:], chart.start, chart.end, colors=MGRID, linestyles=dots,
                                   linewidth=0.6, zorder=1))
            plot_bottom = self.TOP + self.plot_height
            for t, label in zip(major, labels):
                text(self.x_pixel(chart, t), plot_bottom + 3, label, ha="center", va="top")
            for v in y_ticks:
                label = f"{v:g}" if chart.base is None else tick_format(v, chart.base)
                text(self.LEFT - 4, plot_bottom - v / y_top * self.plot_height, label, ha="right", va="center")
            self._thresholds(chart, y_top, off_scale, ax, text, drawn)

            text(w / 2, 4, chart.title[:110], ha="center", va="top", fontsize=8.5)
            drawn.append(fig.text(3 / w, 1 - (self.TOP + self.plot_height / 2) / h, chart.ylabel, rotation=90,
                                  ha="left", va="center", parse_math=False, **self.FONT))

            y0 = plot_bottom + self.XLABELS + 2
            swatch = 8
            if chart.stats_table:
                # One monospace line a row: the columns line up as in rrdtool's legend.
                text(self.LEFT, y0, " " * 12 + "".join(f"{c:>11}" for c in ("Cur", "Min", "Avg", "Max")),
                     ha="left", va="top")
                for i, row in enumerate(chart.legend, start=1):
                    y = y0 + i * _LEGEND_LINE
                    box(self.LEFT, y + 1, swatch, swatch, row.color)
                    cells = format_row(row.stats, chart.base) if row.stats else ("",) * 4
                    text(self.LEFT, y, "  " + f"{row.label[:9]:<10}" + "".join(f"{c:>11}" for c in cells),
                         ha="left", va="top")
                last_line = y0 + (len(chart.legend) + 1) * _LEGEND_LINE
            else:
                per_row = 4
                col_w = (w - self.LEFT - self.RIGHT) // per_row
                label_chars = max(8, col_w // 5 - 3)
                shown = chart.legend[: per_row * (_LEGEND_LINES - 1)]
                for i, row in enumerate(shown):
                    x = self.LEFT + (i % per_row) * col_w
                    y = y0 + (i // per_row) * _LEGEND_LINE
                    if row.style == "line":
                        box(x, y + swatch / 2, swatch, 2, row.color, edge=False)
                    else:
                        box(x, y + 1, swatch, swatch, row.color)
                    label = row.label if len(row.label) <= label_chars else row.label[: label_chars - 1] + "…"
                    text(x + swatch + 4, y, label, ha="left", va="top")
                last_line = y0 + -(-len(shown) // per_row) * _LEGEND_LINE
            if chart.last_update:
                stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(chart.last_update))
                text(w - self.RIGHT, min(last_line, h - _LEGEND_LINE - 1), f"Last update: {stamp}",
                     ha="right", va="top")
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=self.dpi, facecolor=BACK)
            return buf.getvalue()
        finally:
            for artist in drawn:
                artist.remove()

    def _thresholds(self, chart: Chart, y_top: float, off_scale: list[ThresholdLine], ax, text,
                    drawn: list) -> None:
        """Alert levels: a dashed line each, over the data, labelled at the right end;
        the levels above the axis named in one line at the top of the plot."""
        from .legend import tick_format

        def show(v: float) -> str:
            return f"{v:.4g} %" if chart.base is None else tick_format(v, chart.base)

        right = self.LEFT + self.plot_width - 3
        for t in chart.thresholds:
            if t.value > y_top:
                continue
            # 2 px wide, snapped to whole pixels: the colour shows unblended.
            drawn.append(ax.axhline(t.value, color=t.color, linewidth=144 / self.dpi,
                                    linestyle=(0, (6, 3)), zorder=4, snap=True))
            row = self.y_pixel(chart, t.value)
            below = row - self.TOP < 12  # no room above the line: label under it
            text(right, row + 2 if below else row - 2, f"{t.label} {t.severity} {show(t.value)}",
                 ha="right", va="top" if below else "bottom", color=t.text_color, zorder=5)
        if off_scale:
            names = ", ".join(f"{t.label} {t.severity} {show(t.value)}" for t in off_scale)
            worst = max(off_scale, key=lambda t: t.severity == "critical")
            text(self.LEFT + 4, self.TOP + 2, f"off scale: {names}"[:100], ha="left", va="top",
                 color=worst.text_color, zorder=5)


# ------------------------------------------------------------------ files


def _load_state(path: str) -> dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return {}
    graphs = data.get("graphs")
    return graphs if isinstance(graphs, dict) else {}


# ------------------------------------------------------------------- a run


@dataclass
class RunResult:
    rendered: int = 0
    skipped: int = 0  # unchanged since the last run
    failed: int = 0  # graphs that could not be drawn (logged)
    pages: int = 0
    removed: int = 0  # files of departed contexts and interfaces
    unreadable: int = 0  # RRD files that could not be read (logged; graphs drawn without them)


@dataclass
class ContextFigures:
    """A context's latest figures for the overview table (NaN = unknown)."""

    cpu_percent: float = NAN
    rss: float = NAN
    vsz: float = NAN
    processes: float = NAN
    threads: float = NAN
    last_update: int | None = None


class GraphRun:
    """One rendering pass over the RRD folder into the graphs folder."""

    def __init__(self, cfg, painter: Painter | None = None, top: int = TOP_N,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        # The path the sink writes by (it resolves symlinks): rrdcached knows files by it.
        self.rrd_dir = os.path.realpath(cfg.rrd.dir)
        self.graphs_dir = cfg.graphs.dir
        self.daemon = cfg.rrd.daemon or None
        self.pdp_step = int(cfg.rrd.step)
        self.layout = rra_layout(self.pdp_step)
        self.painter = painter or Painter()
        self.top = top
        self.clock = clock
        self.alerts: AlertState = NO_ALERTS  # read from the graphs folder at each run
        self._levels: dict[str, tuple] = {}  # context folder -> its alert levels

    def run(self, periods: Sequence[str] = PERIODS, context: str | None = None, force: bool = False,
            progress: Callable[[int, int], None] | None = None) -> RunResult:
        os.makedirs(self.graphs_dir, exist_ok=True)
        lock = open(os.path.join(self.graphs_dir, LOCK_FILE), "a")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BusyError(f"another rendering is running in {self.graphs_dir}") from None
            return self._run(periods, context, force, progress)
        finally:
            lock.close()

    def _run(self, periods, context, force, progress) -> RunResult:
        from . import html

        result = RunResult()
        now = int(self.clock())
        self.alerts = read_alert_state(self.graphs_dir)
        self._levels = {encode_name(name): levels for name, levels in self.alerts.levels.items()}
        files = list_rrd_files(self.rrd_dir)
        plan = make_plan(files)
        if context is not None:
            wanted = [c for c in plan.contexts if c.name == context or c.slug == encode_name(context)]
            if not wanted:
                raise UnknownContextError(f"no RRD files for context {display_name(context)!r} in {self.rrd_dir}")
            specs = [s for c in wanted for s in plan.context_specs[c.slug]]
        else:
            wanted = plan.contexts
            specs = plan.all_specs()
        last = self._last_updates(files)
        state_path = os.path.join(self.graphs_dir, STATE_FILE)
        state = _load_state(state_path)
        builder = ChartBuilder(self.painter.plot_width, self.daemon, self.top)
        jobs = [(spec, period) for spec in specs for period in periods]
        for done, (spec, period) in enumerate(jobs, start=1):
            try:
                self._one(spec, period, now, last, state, builder, force, result)
            except Exception as e:  # one graph's failure never stops the others
                result.failed += 1
                log.warning("%s failed: %s", spec.png(period), e)
                log.debug("graphs: %s failed", spec.png(period), exc_info=True)
            if progress is not None:
                progress(done, len(jobs))
        result.unreadable = builder.errors
        figures = self.figures(wanted, now)
        host = socket.gethostname()
        refresh = max(10, int(self.cfg.graphs.interval))
        size = (self.painter.width, self.painter.height)
        exists = lambda rel: os.path.exists(os.path.join(self.graphs_dir, rel))  # noqa: E731
        alerts = self.alerts
        for period in PERIODS:
            if context is None:
                page = html.index_page(host, period, plan, figures, refresh, exists, now, size, alerts)
                write_atomic(os.path.join(self.graphs_dir, html.page_name(period)), page.encode("utf-8"))
                result.pages += 1
            for c in wanted:
                page = html.context_page(host, period, c, plan.context_specs[c.slug], figures.get(c.slug),
                                         refresh, exists, now, size, alerts)
                path = os.path.join(self.graphs_dir, CTX_DIR, c.slug, html.page_name(period))
                write_atomic(path, page.encode("utf-8"))
                result.pages += 1
        if context is None:
            result.removed = self._remove_departed(plan)
            known = {spec.png(p) for spec in plan.all_specs() for p in PERIODS}
            state = {k: v for k, v in state.items() if k in known}
        data = json.dumps({"version": STATE_VERSION, "graphs": state}, sort_keys=True, indent=0)
        write_atomic(state_path, data.encode("utf-8"))
        return result

    def _one(self, spec: GraphSpec, period: str, now: int, last: dict[str, int], state: dict,
             builder: ChartBuilder, force: bool, result: RunResult) -> None:
        png = spec.png(period)
        full = os.path.join(self.graphs_dir, png)
        updates = [last[rf.path] for rf in spec.files if rf.path in last]
        if not updates:
            result.failed += 1
            return
        newest = max(updates)
        span = SPANS[period]
        req = request_step(span, self.painter.plot_width)
        step = effective_step(self.layout, self.pdp_step, newest, now - span, req)
        granularity = max(step, MIN_REDRAW[period])
        row = newest - newest % granularity
        lines = self.threshold_lines(spec)
        signature = self._signature(spec, period, lines)
        previous = state.get(png)
        if (not force and isinstance(previous, dict) and previous.get("row") == row
                and previous.get("sig") == signature and os.path.exists(full)):
            result.skipped += 1
            return
        chart = builder.build(spec, period, now, newest)
        if chart is None:
            result.failed += 1
            return
        chart.thresholds = lines
        write_atomic(full, self.painter.paint(chart, period))
        state[png] = {"row": row, "sig": signature}
        result.rendered += 1

    def threshold_lines(self, spec: GraphSpec) -> list[ThresholdLine]:
        """The alert levels drawn on `spec`'s graphs, from the alert state of this run."""
        if spec.context is None or not spec.stem.startswith(CTX_DIR + "/"):
            return []
        slug = spec.stem.split("/")[1]  # the context's folder: its full name, encoded
        return threshold_lines(spec, self._levels.get(slug, ()), self.alerts.host_cpus)

    def _signature(self, spec: GraphSpec, period: str, lines: Sequence[ThresholdLine] = ()) -> str:
        # The levels are part of what a PNG shows: when they change, it is redrawn
        # even if its archive has no new row.
        p = self.painter
        key = [STATE_VERSION, p.width, p.height, p.dpi, self.top, spec.kind, spec.title,
               [rf.path for rf in spec.files], period]
        if lines:  # (no levels: the key graphs drawn before alerts existed have)
            key.append([[t.label, t.severity, repr(t.value)] for t in lines])
        text = json.dumps(key, ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]

    def _last_updates(self, files: Sequence[RrdFile]) -> dict[str, int]:
        args = ("--daemon", self.daemon) if self.daemon else ()
        out = {}
        for rf in files:
            try:
                out[rf.path] = int(rrdtool.last(*args, rf.path))
            except rrdtool.OperationalError as e:
                log.warning("cannot read %s: %s", rf.path, e)
        return out

    def figures(self, contexts: Sequence[ContextEntry], now: int) -> dict[str, ContextFigures]:
        """Each context's latest known figures, from the finest archive."""
        out: dict[str, ContextFigures] = {}
        start = now - 6 * self.pdp_step
        for c in contexts:
            fig = ContextFigures()
            for kind, rf in c.files.items():
                try:
                    s = load_series(rf.path, "AVERAGE", start, now, self.pdp_step, self.daemon)
                except rrdtool.OperationalError:
                    continue
                latest = _latest_row(s)
                if latest is None:
                    continue
                values, t = latest
                fig.last_update = max(fig.last_update or 0, t)
                if kind == "cpu":
                    fig.cpu_percent = (values["user"] + values["system"]) * 100
                elif kind == "mem":
                    fig.rss, fig.vsz = values["rss"], values["vsz"]
                else:
                    fig.processes, fig.threads = values["processes"], values["threads"]
            out[c.slug] = fig
        return out

    def _remove_departed(self, plan: Plan) -> int:
        """Delete our PNGs and pages of contexts and interfaces that have no RRD file any
        more (archived); only names this module writes, only inside the graphs folder."""
        removed = 0
        ours = re.compile(r"(cpu|mem|tasks|net-[A-Za-z0-9_.%~=-]+)-(day|week|month|year)\.png"
                          r"|index\.html|week\.html|month\.html|year\.html")
        ctx_root = os.path.join(self.graphs_dir, CTX_DIR)
        current = set(plan.context_specs)
        try:
            entries = list(os.scandir(ctx_root))
        except OSError:
            entries = []
        for entry in entries:
            if entry.name in current or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                decode_name(entry.name)
            except ValueError:
                continue  # not ours
            for f in os.scandir(entry.path):
                if f.is_file(follow_symlinks=False) and ours.fullmatch(f.name):
                    os.unlink(f.path)
                    removed += 1
            try:
                os.rmdir(entry.path)
            except OSError:
                pass  # something else is in there: left alone
        for entry in entries:
            if entry.name in current:
                wanted = {os.path.basename(s.png(p)) for s in plan.context_specs[entry.name] for p in PERIODS}
                for f in os.scandir(entry.path):
                    if f.name.startswith("net-") and f.name.endswith(".png") and ours.fullmatch(f.name) \
                            and f.name not in wanted:
                        os.unlink(f.path)
                        removed += 1
        wanted_root = {s.png(p) for s in plan.host_specs for p in PERIODS}
        for f in os.scandir(self.graphs_dir):
            if (f.name.startswith("if-") and f.name.endswith(".png") and f.name not in wanted_root
                    and f.is_file(follow_symlinks=False)
                    and re.fullmatch(r"if-[A-Za-z0-9_.%~=-]+-(day|week|month|year)\.png", f.name)):
                os.unlink(f.path)
                removed += 1
        return removed


def _latest_row(s: Series) -> tuple[dict[str, float], int] | None:
    """The last row where every column is known, with its end time."""
    names = list(s.columns)
    for i in range(s.length - 1, -1, -1):
        values = {n: s.columns[n][i] for n in names}
        if not any(math.isnan(v) for v in values.values()):
            return values, s.start + (i + 1) * s.step
    return None


__all__ = [
    "PERIODS",
    "Chart",
    "ChartBuilder",
    "BusyError",
    "GraphError",
    "UnknownContextError",
    "GraphRun",
    "GraphSpec",
    "Painter",
    "Plan",
    "RunResult",
    "ThresholdLine",
    "axis_scale",
    "data_peak",
    "threshold_lines",
    "align",
    "archive_step",
    "context_color",
    "effective_step",
    "load_series",
    "make_plan",
    "reduce_rows",
    "request_step",
    "time_ticks",
    "write_atomic",
]
