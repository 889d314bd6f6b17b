"""Charts: what one PNG shows, as plain data (layers, legend rows, thresholds), built
from a GraphSpec and a period by reading the RRD files (graphs.data). No drawing."""

from __future__ import annotations

import colorsys
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import rrdtool

from exporters.rrdlayout import RrdFile

from . import SPANS
from .data import Series, add_series, align, load_series, mean_known, request_step, sum_known
from .legend import Stats, display_name, legend_stats
from .plan import GraphSpec

log = logging.getLogger("ctxmon.graphs")

TOP_N = 7  # contexts drawn on their own in the host graphs; the rest is `other`
IN_COLOR = "#00CC00"  # MRTG's classic green area for traffic in
OUT_COLOR = "#0000FF"  # and blue line for traffic out
TOTAL_COLOR = "#000000"
OTHER_COLOR = "#A0A0A0"
UNACCOUNTED_COLOR = "#E0E0E0"  # the host's traffic no context accounts for
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



@dataclass(frozen=True, slots=True)
class Layer:
    label: str
    color: str
    values: list[float]
    style: str  # "area" (stacked on the areas before it) or "line"
    below: bool = False  # an area drawn downwards from the axis (received traffic)


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
    "ctx-traffic": {"traffic_receive_bps": ("In", 1.0), "traffic_transmit_bps": ("Out", 1.0)},
}


def threshold_lines(spec: GraphSpec, levels: Iterable, host_cpus: int = 1) -> list[ThresholdLine]:
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
        if spec.kind == "host-traffic":
            return self._traffic_by_context(spec, title, start, end, req, last_update)
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

    # -- host: traffic by context, sent above the axis and received below

    def _traffic_by_context(self, spec: GraphSpec, title: str, start: int, end: int, req: int,
                            last_update: int | None) -> Chart | None:
        """Each context's traffic.rrd stacked (top N + other), and the host's interfaces
        (host-if files in the spec, lo left out) minus those as "unaccounted": the bands
        add up to what the interfaces carried."""
        grid: tuple[int, int, int] | None = None
        per_context: list[tuple[str, list[float], list[float]]] = []  # name, sent, received
        host_tx: list[list[float]] = []
        host_rx: list[list[float]] = []
        for rf in spec.files:
            s = self._load(rf, "AVERAGE", start, end, req)
            if s is None:
                continue
            tx = [v * 8 for v in s.column("tx_bytes")]
            rx = [v * 8 for v in s.column("rx_bytes")]
            if grid is None:
                grid = (s.start, s.step, s.length)
            else:
                tx, rx = align(tx, s.start, s.step, *grid), align(rx, s.start, s.step, *grid)
            if rf.kind == "host-if":
                host_tx.append(tx)
                host_rx.append(rx)
            else:
                per_context.append((rf.context or "", tx, rx))
        if grid is None:
            return None
        g_start, g_step, n = grid
        ranked = sorted(per_context, key=lambda c: (-_rank(add_series(c[1], c[2])), c[0]))
        shown, rest = ranked[: self.top], ranked[self.top:]
        if len(rest) == 1:
            shown, rest = ranked, []
        bands = [(display_name(name), context_color(name), tx, rx) for name, tx, rx in shown]
        if rest:
            bands.append((f"other ({len(rest)})", OTHER_COLOR, sum_known([c[1] for c in rest], n),
                          sum_known([c[2] for c in rest], n)))
        if host_tx:
            def left(host: list[list[float]], counted: list[list[float]]) -> list[float]:
                total, known = sum_known(host, n), sum_known(counted, n)
                return [t if math.isnan(t) else max(0.0, t - (0.0 if math.isnan(k) else k))
                        for t, k in zip(total, known)]
            bands.append(("unaccounted", UNACCOUNTED_COLOR,
                          left(host_tx, [c[1] for c in per_context]),
                          left(host_rx, [c[2] for c in per_context])))
        layers = [Layer(label, color, tx, "area") for label, color, tx, _ in bands]
        layers += [Layer(label, color, rx, "area", below=True) for label, color, _, rx in bands]
        legend = [LegendRow(label, color, "area", None) for label, color, _, _ in bands]
        return Chart(title, "bits per second", start, end, g_start, g_step,
                     layers, legend, 1000, last_update, False)

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

        if spec.kind in ("traffic", "ctx-traffic"):  # traffic.rrd has net-*.rrd's names
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
