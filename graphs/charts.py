"""Charts: what one PNG shows, as plain data (layers, legend rows, thresholds), built
from a GraphSpec and a period by reading the RRD files (graphs.data). No drawing."""

from __future__ import annotations

import colorsys
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import rrdtool

from collector.catalog import ALERT_METRIC, FILE_KIND
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
PAIR_LABEL = "bps"  # the traffic pair's legend row, as in Munin's if_ graphs
TRAFFIC_STYLES = ("munin", "mrtg")


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
    below: bool = False  # drawn downwards from the axis (received traffic; areas stack downwards)


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
    # Munin's traffic graph: the first two legend rows (received, sent) are one row,
    # `pair_label`, each cell `<received>/<sent>`; received is drawn below the axis.
    pair_label: str | None = None
    integer: bool = False  # counts: whole-number figures and ticks
    notes: list[str] = field(default_factory=list)  # said under the legend (e.g. departed contexts)

    def legend_text(self) -> list[str]:
        """The legend's figures as lines of text, for the page (caption and alt)."""
        from .legend import format_pair, format_row

        out = []
        if self.pair_label and len(self.legend) >= 2 and self.legend[0].stats and self.legend[1].stats:
            cells = format_pair(self.legend[0].stats, self.legend[1].stats, self.base or 1000)
            heads = ("Cur", "Min", "Avg", "Max")
            out.append(f"{self.pair_label} (received/sent): "
                       + ", ".join(f"{h} {c.strip()}" for h, c in zip(heads, cells)))
            return out
        for row in self.legend:
            if row.stats is None:
                continue
            cells = format_row(row.stats, self.base, integer=self.integer)
            out.append(f"{row.label}: " + ", ".join(f"{h} {c}" for h, c in zip(("Cur", "Min", "Avg", "Max"), cells)))
        return out


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


# Colour roles of the catalog's data sources; a role not here gets a stable colour
# derived from its name (context_color), so a new kind draws without a change here.
ROLE_COLORS = {"in": IN_COLOR, "out": OUT_COLOR, "user": USER_COLOR, "system": SYSTEM_COLOR,
               "rss": RSS_COLOR, "vsz": VSZ_COLOR, "processes": PROC_COLOR, "threads": THREAD_COLOR,
               "anon": "#00AA88", "file": "#99DDCC", "usage": "#AA0066"}


def role_color(role: str) -> str:
    return ROLE_COLORS.get(role) or context_color("role:" + role)


def file_kind_of(spec: GraphSpec) -> str:
    """The catalog file kind a context's graph draws (traffic: the interface's)."""
    if spec.kind.startswith(("ctx-", "host-")):
        return spec.kind.split("-", 1)[1]
    return spec.files[0].kind if spec.files else "net"  # a context's interface


def threshold_lines(spec: GraphSpec, levels: Iterable, host_cpus: int = 1) -> list[ThresholdLine]:
    """The levels (graphs.alertstate.LevelShown: metric, severity, value in the metric's
    unit) that belong on a context's graph, in the graph's unit; none on host graphs.

    Which graph shows a metric's levels, and under which legend label, is the
    catalog's (`AlertMetric.drawn_on`, `.drawn_as`). The unit: a ratio is drawn in the
    graph's scale (CPU ratio x 100 = %), a share of the host's CPUs also times their
    number; the other units (bytes, counts, bits/s) are the graphs' own."""
    if spec.context is None:
        return []
    kind = file_kind_of(spec)
    fk = FILE_KIND.get(kind)
    if fk is None or fk.graph is None:
        return []
    out: dict[tuple[str, str, float], ThresholdLine] = {}
    for lv in levels:
        am = ALERT_METRIC.get(lv.metric)
        if am is None or am.drawn_on != kind:
            continue
        factor = fk.graph.factor if am.unit == "ratio" else 1.0
        if am.host_share:
            factor *= host_cpus
        value = lv.value * factor
        if math.isfinite(value) and value >= 0:
            label = am.drawn_as or am.name
            out.setdefault((label, lv.severity, value), ThresholdLine(label, lv.severity, value))
    return sorted(out.values(), key=lambda t: (t.value, t.label, t.severity))


def ellipsize(name: str, width: int) -> str:
    """`name` in at most `width` characters, shortened in the middle with an ellipsis
    (both ends of a name tell contexts apart: `web-prod-…-eu-west-1`)."""
    if len(name) <= width:
        return name
    if width <= 1:
        return "…"[:width]
    head = (width - 1 + 1) // 2
    tail = width - 1 - head
    return name[:head] + "…" + (name[-tail:] if tail else "")


def distinct_colors(names: Sequence[str]) -> list[str]:
    """Each name's own colour (context_color), except where it would be hard to tell
    from the layer stacked right under it: then the next of the name's alternative
    colours that is not. Deterministic: the same names in the same order give the same
    colours."""
    out: list[str] = []
    for name in names:
        color = context_color(name)
        k = 1
        while out and _too_close(color, out[-1]) and k < 16:
            color = context_color(f"{name}#{k}")
            k += 1
        out.append(color)
    return out


def _too_close(a: str, b: str) -> bool:
    ra, ga, ba = (int(a[i:i + 2], 16) for i in (1, 3, 5))
    rb, gb, bb = (int(b[i:i + 2], 16) for i in (1, 3, 5))
    # "redmean" colour distance: cheap and close enough to what the eye sees.
    rm = (ra + rb) / 2
    d = math.sqrt((2 + rm / 256) * (ra - rb) ** 2 + 4 * (ga - gb) ** 2 + (2 + (255 - rm) / 256) * (ba - bb) ** 2)
    return d < 120


class ChartBuilder:
    """Turns a GraphSpec and a period into a Chart by reading the RRD files."""

    def __init__(self, plot_width: int, daemon: str | None = None, top: int = TOP_N,
                 traffic_style: str = "munin"):
        self.plot_width = plot_width
        self.daemon = daemon
        self.top = top
        self.traffic_style = traffic_style
        self.errors = 0  # files that could not be read (logged)

    def _top(self, per_context: list[tuple], score: Callable[[tuple], float]
             ) -> tuple[list[tuple], list[tuple], list[tuple]]:
        """The host graphs' contexts (tuples starting with the name) split by what each
        did in the period, `score` (its mean): (active, shown, rest). A context with no
        data in it (NaN) is in none of them; the `top` highest are shown (ties by
        name), the rest go to `other`, and an `other` of one context is that context."""
        scored = [(m, c) for c in per_context if not math.isnan(m := score(c))]
        ranked = [c for _, c in sorted(scored, key=lambda s: (-s[0], s[1][0]))]
        shown, rest = ranked[: self.top], ranked[self.top:]
        if len(rest) == 1:
            shown, rest = ranked, []
        return [c for _, c in scored], shown, rest

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
        g = FILE_KIND[kind].graph
        grid: tuple[int, int, int] | None = None
        per_context: list[tuple[str, list[float]]] = []
        for rf in spec.files:
            s = self._load(rf, "AVERAGE", start, end, req)
            if s is None:
                continue
            # Each file's own kind says what it adds (a stand-in kind its own DS).
            fg = FILE_KIND[rf.kind].graph
            columns = [s.column(ds) for ds in fg.host_ds]
            values = columns[0]
            for c in columns[1:]:
                values = add_series(values, c)
            if fg.factor != 1.0:
                values = [v * fg.factor for v in values]
            if grid is None:
                grid = (s.start, s.step, s.length)
            else:
                values = align(values, s.start, s.step, *grid)
            per_context.append((rf.context or "", values))
        if grid is None:
            return None
        g_start, g_step, n = grid
        active, shown, rest = self._top(per_context, lambda cv: mean_known(cv[1]))
        colors = distinct_colors([name for name, _ in shown])
        layers = [Layer(display_name(name), color, values, "area")
                  for (name, values), color in zip(shown, colors)]
        if rest:
            layers.append(Layer(f"other ({len(rest)})", OTHER_COLOR, sum_known([v for _, v in rest], n), "area"))
        layers.append(Layer("total", TOTAL_COLOR, sum_known([v for _, v in active], n), "line"))
        # One legend row per stacked context, as Munin's stacked graphs have (from
        # the AVERAGE archive: host graphs read no other).
        legend = [LegendRow(layer.label, layer.color, layer.style, legend_stats(layer.values))
                  for layer in layers]
        integer = FILE_KIND[kind].unit == "count"
        return Chart(title, g.host_vertical_label or g.vertical_label, start, end, g_start, g_step, layers,
                     legend, g.host_base, last_update, True, integer=integer)

    # -- host: traffic by context, sent above the axis and received below

    def _traffic_by_context(self, spec: GraphSpec, title: str, start: int, end: int, req: int,
                            last_update: int | None) -> Chart | None:
        """Each context's traffic.rrd stacked (top N + other), and the host's interfaces
        (host-if files in the spec, lo left out) minus those as "unaccounted": the bands
        add up to what the interfaces carried. Special on purpose: no other host graph
        subtracts one kind of file from another."""
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
        active, shown, rest = self._top(per_context, lambda c: mean_known(add_series(c[1], c[2])))
        colors = distinct_colors([name for name, _, _ in shown])
        bands = [(display_name(name), color, tx, rx) for (name, tx, rx), color in zip(shown, colors)]
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
        fk = FILE_KIND[rf.kind]
        g = fk.graph
        series = {cf: self._load(rf, cf, start, end, req) for cf in ("AVERAGE", "MIN", "MAX")}
        avg = series["AVERAGE"]
        if avg is None:
            return None
        n = avg.length

        def col(cf: str, ds: str, factor: float = 1.0) -> list[float]:
            s = series[cf] or avg
            values = align(s.column(ds), s.start, s.step, avg.start, avg.step, n)
            return [v * factor for v in values] if factor != 1.0 else values

        sources = {d.name: d for d in fk.data_sources}
        shown = [sources[ds] for ds in g.shown]
        # Munin's traffic graph (the default): the in/out pair as one legend row,
        # received below the axis; MRTG's (traffic_style "mrtg"): In area, Out line.
        pair = (self.traffic_style == "munin" and len(shown) == 2
                and (shown[0].colour, shown[1].colour) == ("in", "out"))
        layers, legend = [], []
        for d in shown:
            values = col("AVERAGE", d.name, g.factor)
            stats = legend_stats(values, col("MIN", d.name, g.factor), col("MAX", d.name, g.factor))
            if pair:  # received a green area below the axis, sent a blue line above
                color, style = (IN_COLOR, "area") if d.colour == "in" else (OUT_COLOR, "line")
            else:
                color, style = role_color(d.colour), d.style
            layers.append(Layer(d.legend, color, values, style, below=pair and d.colour == "in"))
            legend.append(LegendRow(d.legend, color, style, stats))
        ylabel = g.vertical_label
        return Chart(title, ylabel, start, end, avg.start, avg.step, layers, legend, g.base, last_update, True,
                     pair_label=PAIR_LABEL if pair else None, integer=fk.unit == "count")
