"""Painting: a Chart as a PNG of exactly width x height pixels, in rrdtool's classic
look (matplotlib's Agg canvas, imported on first use only)."""

from __future__ import annotations

import math
import time
from typing import Iterable, Sequence

from .charts import Chart, ThresholdLine, ellipsize

BACK = "#F0F0F0"  # around the plot
CANVAS = "#FFFFFF"
GRID = "#C8C8C8"
MGRID = "#E09090"  # major grid: rrdtool's reddish dots
FONT = "#000000"
FRAME = "#808080"
# A level is drawn on the scale of the data when it is at most this many times the
# data's peak; a higher one would squash the data flat, so it is named above the plot.
THRESHOLD_SCALE = 4.0

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


def y_scale(peak: float, base: int | None, integer: bool = False) -> tuple[float, list[float]]:
    """(top of the y axis, tick values) for data up to `peak`: 3-6 round steps; for
    base 1024 the steps are round in KiB, MiB, GiB ... so that labels read well;
    `integer` (counts): steps of whole numbers."""
    if not math.isfinite(peak) or peak <= 0:
        peak = 1.0
    unit = 1.0
    if base == 1024 and peak >= 1024:
        unit = 1024.0 ** math.floor(math.log(peak, 1024))
    scaled = peak / unit
    raw = scaled / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, math.ceil(step))
    top = math.ceil(scaled / step - 1e-9) * step
    if top - scaled < 0.1 * step:  # keep a line at the peak off the frame
        top += step
    count = int(round(top / step))
    return top * unit, [i * step * unit for i in range(count + 1)]


def data_range(chart: Chart) -> tuple[float, float]:
    """(lowest, highest) point the chart's data reaches, 0 included: the top of the
    stacked areas (an unknown row adds nothing to the rows above it) or of a line;
    layers drawn downwards (received traffic) reach down, their areas stacked."""
    low = high = 0.0
    baseline: list[float] | None = None
    under: list[float] | None = None
    for layer in chart.layers:
        values = layer.values
        if layer.below:
            if layer.style == "area":
                under = under or [0.0] * len(values)
                bottoms = [u + v for u, v in zip(under, values)]
                under = [u + (0.0 if math.isnan(v) else v) for u, v in zip(under, values)]
            else:
                bottoms = list(values)
            known = [v for v in bottoms if math.isfinite(v)]
            if known:
                low = min(low, -max(known))
            continue
        if baseline is None:
            baseline = [0.0] * len(values)
        if layer.style == "area":
            top = [b + v for b, v in zip(baseline, values)]
            baseline = [b + (0.0 if math.isnan(v) else v) for b, v in zip(baseline, values)]
        else:
            top = list(values)
        known = [v for v in top if math.isfinite(v)]
        if known:
            high = max(high, max(known))
    return low, high


def data_peak(chart: Chart) -> float:
    """The highest point the chart's data reaches above the axis; 0 without data."""
    return data_range(chart)[1]


def axis_range(chart: Chart) -> tuple[float, float, list[float], list[ThresholdLine]]:
    """(bottom, top of the y axis, its ticks, the threshold lines above it). The axis
    covers the data and the levels up to THRESHOLD_SCALE times the data's peak (all
    levels when there is no data); below zero only what a layer drawn downwards needs,
    on the same steps."""
    low, peak = data_range(chart)
    reach = peak * THRESHOLD_SCALE if peak > 0 else math.inf
    for t in chart.thresholds:
        if t.value <= reach:
            peak = max(peak, t.value)
    if low >= 0:
        y_top, ticks = y_scale(peak, chart.base, chart.integer)
        return 0.0, y_top, ticks, [t for t in chart.thresholds if t.value > y_top]
    # Both ways (Munin's traffic): one step for the whole span, each side a multiple.
    whole, ticks = y_scale(peak - low, chart.base, chart.integer)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else whole
    top = max(step, math.ceil(peak / step - 1e-9) * step) if peak > 0 else step
    bottom = -math.ceil(-low / step - 1e-9) * step
    if top - peak < 0.1 * step and peak > 0:
        top += step
    if -low - (-bottom) > -0.1 * step:
        bottom -= step
    n_down, n_up = int(round(-bottom / step)), int(round(top / step))
    ticks = [i * step for i in range(-n_down, n_up + 1)]
    return bottom, top, ticks, [t for t in chart.thresholds if t.value > top]


def axis_scale(chart: Chart) -> tuple[float, list[float], list[ThresholdLine]]:
    """(top of the y axis, its ticks, the threshold lines above it), see axis_range."""
    _, top, ticks, off = axis_range(chart)
    return top, ticks, off


def axis_label(value: float, base: int | None, integer: bool = False) -> str:
    """A y axis label: `0`, `2.5 k`, `50 %`; bytes (base 1024) in binary units:
    `512 MiB`, `1.5 GiB`."""
    from .legend import auto_scale, tick_format

    if base is None:
        return f"{value:g}"
    if integer and abs(value) < 1000:
        return f"{value:.0f}"
    if base == 1024:
        if value == 0:
            return "0"
        scaled, symbol = auto_scale(abs(value), 1024)
        unit = {"": "B", "k": "KiB"}.get(symbol, f"{symbol}iB")
        return ("-" if value < 0 else "") + f"{scaled:.4g} {unit}"
    text = tick_format(abs(value), base)
    return ("-" if value < 0 else "") + text


class Painter:
    """Draws Charts as PNGs of exactly width x height pixels, in rrdtool's classic look.

    One figure is built on first use and kept: each chart adds its artists, is
    saved, and takes them away again (building a figure and its axes costs more
    than drawing a graph). Grid and labels are drawn directly, not as matplotlib
    ticks, for the same reason. A legend of more rows (one per stacked context)
    takes its room from the plot, never from the image size. Not thread-safe: one
    Painter per thread.
    """

    LEFT, RIGHT, TOP = 66, 16, 22
    XLABELS = 18
    FONT = {"family": "DejaVu Sans Mono", "fontsize": 7, "color": FONT}
    CHAR = 4.25  # px per monospace character at FONT's size
    LABEL_CHARS = 24  # a legend label's room in the stats table

    def __init__(self, width: int = 800, height: int = 300, dpi: int = 100):
        if width < 300 or height < 160:
            raise ValueError(f"graph size {width}x{height} is too small (at least 300x160)")
        self.width = int(width)
        self.height = int(height)
        self.dpi = int(dpi)
        self.bottom = self._bottom(_LEGEND_LINES)
        self._fig = None
        self._ax = None

    def _bottom(self, legend_lines: int) -> int:
        # At most a third of the image for the legend: the plot stays readable.
        room = min(legend_lines, max(_LEGEND_LINES, (self.height // 3) // _LEGEND_LINE))
        return self.XLABELS + _LEGEND_LINE * room + 6

    def legend_lines(self, chart: Chart) -> int:
        """Lines the chart's legend takes: heading, rows, notes, last update."""
        if chart.pair_label:
            rows = 1
        elif chart.stats_table:
            rows = len(chart.legend)
        else:
            rows = -(-len(chart.legend) // 4)
        return max(_LEGEND_LINES, 1 + rows + len(chart.notes) + 1)

    def bottom_for(self, chart: Chart) -> int:
        return self._bottom(self.legend_lines(chart))

    @property
    def plot_width(self) -> int:
        return self.width - self.LEFT - self.RIGHT

    @property
    def plot_height(self) -> int:
        return self.height - self.TOP - self.bottom

    @property
    def plot_box(self) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the plot area in image pixels (top row = 0) of
        a chart with the usual legend (two rows); see plot_box_for."""
        return self.LEFT, self.TOP, self.plot_width, self.plot_height

    def plot_box_for(self, chart: Chart) -> tuple[int, int, int, int]:
        return self.LEFT, self.TOP, self.plot_width, self.height - self.TOP - self.bottom_for(chart)

    def x_pixel(self, chart: Chart, t: float) -> float:
        """Image column of time `t`."""
        return self.LEFT + (t - chart.start) / (chart.end - chart.start) * self.plot_width

    def y_pixel(self, chart: Chart, value: float) -> float:
        """Image row (from the top, fractional) of `value` on the chart's y axis."""
        bottom, top, _, _ = axis_range(chart)
        height = self.plot_box_for(chart)[3]
        return self.TOP + height * (top - value) / (top - bottom)

    def _figure(self):
        if self._fig is None:
            from matplotlib.figure import Figure

            from .agg import CachedCanvas

            w, h = self.width, self.height
            fig = Figure(figsize=(w / self.dpi, h / self.dpi), dpi=self.dpi, facecolor=BACK)
            CachedCanvas(fig)
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

    def warm(self) -> None:
        """Draw one throw-away graph: matplotlib, its font and figure loaded and the
        legend's characters in the glyph cache before the first graph anyone waits for
        (the renderer worker calls this when it starts)."""
        from .charts import Layer, LegendRow
        from .legend import Stats

        end = 86400 * 365
        start, step = end - 86400, 300
        n = 86400 // step
        values = [float(i % 7) for i in range(n)]
        digits = Stats(0.123456789, 9876.5, 45.0, 1e6)
        legend = [LegendRow("abcdefghijklmnopqrstuvwxyz", "#3366CC", "area", digits),
                  LegendRow("ABCDEFGHIJKLMNOPQRSTUVWXYZ-_.", "#FF6600", "line", digits)]
        chart = Chart("warm up - by day", "units", start, end, start, step,
                      [Layer("a", "#3366CC", values, "area"), Layer("b", "#FF6600", values, "line")],
                      legend, 1000, end, True)
        self.paint(chart, "day")

    def paint(self, chart: Chart, period: str) -> bytes:
        import numpy as np
        from matplotlib.patches import Rectangle

        from .legend import format_pair, format_row

        fig, ax = self._figure()
        w, h = self.width, self.height
        bottom_px = self.bottom_for(chart)
        plot_h = h - self.TOP - bottom_px
        ax.set_position((self.LEFT / w, bottom_px / h, self.plot_width / w, plot_h / h))
        drawn: list = []

        def text(x_px: float, y_px: float, s: str, **kw) -> None:
            """Text at pixel coordinates from the top left; never parsed as mathtext."""
            drawn.append(fig.text(x_px / w, 1 - y_px / h, s, parse_math=False, **{**self.FONT, **kw}))

        def box(x_px: float, y_px: float, bw: float, bh: float, color: str, edge: bool = True) -> None:
            drawn.append(fig.add_artist(Rectangle(
                (x_px / w, 1 - (y_px + bh) / h), bw / w, bh / h, transform=fig.transFigure, facecolor=color,
                edgecolor="#000000" if edge else "none", linewidth=0.4 if edge else 0)))

        try:
            # Stacked areas (an unknown row breaks the area: a gap), then lines on top;
            # a `below` layer is drawn downwards from the axis.
            n = len(chart.layers[0].values) if chart.layers else 0
            baseline = np.zeros(n)
            under = np.zeros(n)  # the stack drawn downwards (Layer.below)
            for layer in chart.layers:
                values = np.asarray(layer.values, dtype=float)
                if layer.below and layer.style == "area":  # from the axis (or the stack) down
                    x, y1 = _steps(chart.grid_start, chart.step, -(under + values))
                    _, y0 = _steps(chart.grid_start, chart.step, -under)
                    drawn.append(ax.fill_between(x, y0, y1, facecolor=layer.color, edgecolor="none",
                                                 linewidth=0, zorder=2))
                    under = under + np.nan_to_num(values, nan=0.0)
                    continue
                if layer.below:
                    values = -values
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
            y_bottom, y_top, y_ticks, off_scale = axis_range(chart)
            ax.set_xlim(chart.start, chart.end)
            ax.set_ylim(y_bottom, y_top)

            # Grid: minor time lines, then major ones and the value lines.
            major, labels, minor = time_ticks(chart.start, chart.end, period)
            dots = (0, (1, 2))
            if minor:
                drawn.append(ax.vlines(minor, y_bottom, y_top, colors=GRID, linestyles=dots, linewidth=0.5,
                                       zorder=1))
            if major:
                drawn.append(ax.vlines(major, y_bottom, y_top, colors=MGRID, linestyles=dots, linewidth=0.6,
                                       zorder=1))
            drawn.append(ax.hlines([v for v in y_ticks if v != y_bottom], chart.start, chart.end, colors=MGRID,
                                   linestyles=dots, linewidth=0.6, zorder=1))
            if y_bottom < 0:  # the zero line between received and sent
                drawn.append(ax.axhline(0, color="#000000", linewidth=0.6, zorder=3))
            plot_bottom = self.TOP + plot_h
            for t, label in zip(major, labels):
                text(self.x_pixel(chart, t), plot_bottom + 3, label, ha="center", va="top")
            for v in y_ticks:
                row = self.TOP + plot_h * (y_top - v) / (y_top - y_bottom)
                text(self.LEFT - 4, row, axis_label(v, chart.base, chart.integer), ha="right", va="center")
            self._thresholds(chart, y_bottom, y_top, plot_h, off_scale, ax, text, drawn)

            text(w / 2, 4, chart.title[:110], ha="center", va="top", fontsize=8.5)
            drawn.append(fig.text(3 / w, 1 - (self.TOP + plot_h / 2) / h, chart.ylabel, rotation=90,
                                  ha="left", va="center", parse_math=False, **self.FONT))

            y0 = plot_bottom + self.XLABELS + 2
            swatch = 8
            room = (h - y0 - _LEGEND_LINE) // _LEGEND_LINE  # rows that fit above "Last update"
            if chart.pair_label and len(chart.legend) >= 2:
                # Munin's: Cur (-/+) Min (-/+) Avg (-/+) Max (-/+), one row of pairs.
                rx, tx = chart.legend[0], chart.legend[1]
                cells = format_pair(rx.stats, tx.stats, chart.base or 1000) if rx.stats and tx.stats \
                    else ("",) * 4
                col = max(18, max(len(c) for c in cells) + 2)
                label_w = 8
                text(self.LEFT, y0, " " * (label_w + 2) + "".join(
                    f"{c:>{col}}" for c in ("Cur (-/+)", "Min (-/+)", "Avg (-/+)", "Max (-/+)")),
                    ha="left", va="top")
                y = y0 + _LEGEND_LINE
                box(self.LEFT, y + 1, swatch / 2, swatch, rx.color)  # received | sent
                box(self.LEFT + swatch / 2, y + 1, swatch / 2, swatch, tx.color)
                text(self.LEFT, y, "  " + f"{chart.pair_label:<{label_w}}" + "".join(f"{c:>{col}}" for c in cells),
                     ha="left", va="top")
                last_line = y0 + 2 * _LEGEND_LINE
            elif chart.stats_table:
                # One monospace line a row: the columns line up as in rrdtool's legend.
                lw = self.LABEL_CHARS if len(chart.legend) > 2 else 10
                text(self.LEFT, y0, " " * (lw + 2) + "".join(f"{c:>11}" for c in ("Cur", "Min", "Avg", "Max")),
                     ha="left", va="top")
                rows = chart.legend if len(chart.legend) <= room - 1 else chart.legend[: max(1, room - 2)]
                for i, row in enumerate(rows, start=1):
                    y = y0 + i * _LEGEND_LINE
                    if row.style == "line":
                        box(self.LEFT, y + swatch / 2, swatch, 2, row.color, edge=False)
                    else:
                        box(self.LEFT, y + 1, swatch, swatch, row.color)
                    cells = format_row(row.stats, chart.base, chart.integer) if row.stats else ("",) * 4
                    text(self.LEFT, y, "  " + f"{ellipsize(row.label, lw - 1):<{lw}}"
                         + "".join(f"{c:>11}" for c in cells), ha="left", va="top")
                last_line = y0 + (len(rows) + 1) * _LEGEND_LINE
                if len(rows) < len(chart.legend):
                    text(self.LEFT, last_line, f"  … {len(chart.legend) - len(rows)} more rows on the page",
                         ha="left", va="top")
                    last_line += _LEGEND_LINE
            else:
                per_row = 4
                col_w = (w - self.LEFT - self.RIGHT) // per_row
                label_chars = max(8, int(col_w / self.CHAR) - 4)
                shown = chart.legend[: per_row * max(1, room - 1)]
                for i, row in enumerate(shown):
                    x = self.LEFT + (i % per_row) * col_w
                    y = y0 + (i // per_row) * _LEGEND_LINE
                    if row.style == "line":
                        box(x, y + swatch / 2, swatch, 2, row.color, edge=False)
                    else:
                        box(x, y + 1, swatch, swatch, row.color)
                    text(x + swatch + 4, y, ellipsize(row.label, label_chars), ha="left", va="top")
                last_line = y0 + -(-len(shown) // per_row) * _LEGEND_LINE
            for note in chart.notes:
                text(self.LEFT, last_line, note[:150], ha="left", va="top", color="#555555")
                last_line += _LEGEND_LINE
            if chart.last_update:
                stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(chart.last_update))
                text(w - self.RIGHT, min(last_line, h - _LEGEND_LINE - 1), f"Last update: {stamp}",
                     ha="right", va="top")
            from .agg import png

            fig.canvas.draw()
            return png(fig.canvas)
        finally:
            for artist in drawn:
                artist.remove()

    def _thresholds(self, chart: Chart, y_bottom: float, y_top: float, plot_h: float,
                    off_scale: list[ThresholdLine], ax, text, drawn: list) -> None:
        """Alert levels: a dashed line each, over the data, labelled where the data is
        not: above the line or under it, at the right end or else the left one."""
        from .legend import tick_format

        def show(v: float) -> str:
            return f"{v:.4g} %" if chart.base is None else tick_format(v, chart.base)

        def row_of(v: float) -> float:
            return self.TOP + plot_h * (y_top - v) / (y_top - y_bottom)

        # The data's top edge in image rows, per pixel column, to keep labels off it.
        tops = _top_rows(chart, self, row_of) if chart.thresholds else []
        right = self.LEFT + self.plot_width - 3
        for t in chart.thresholds:
            if t.value > y_top:
                continue
            # 2 px wide, snapped to whole pixels: the colour shows unblended.
            drawn.append(ax.axhline(t.value, color=t.color, linewidth=144 / self.dpi,
                                    linestyle=(0, (6, 3)), zorder=4, snap=True))
            row = row_of(t.value)
            label = f"{t.label} {t.severity} {show(t.value)}"
            width = len(label) * self.CHAR + 4
            best = None
            for x_end, ha in ((right, "right"), (self.LEFT + 3 + width, "left")):
                x0 = int(x_end - width - self.LEFT)
                cols = tops[max(0, x0): max(0, int(x_end - self.LEFT))]
                data_top = min(cols) if cols else math.inf  # smallest row = highest data
                above_free = row - 11 >= self.TOP and data_top > row  # data stays below the line there
                below_free = row + 12 <= self.TOP + plot_h and data_top > row + 12
                for free, y, va in ((above_free, row - 2, "bottom"), (below_free, row + 2, "top")):
                    if free and best is None:
                        best = (x_end if ha == "right" else self.LEFT + 3, y, ha, va)
            if best is None:  # nowhere clear: above the line at the right, as before
                below = row - self.TOP < 12
                best = (right, row + 2 if below else row - 2, "right", "top" if below else "bottom")
            x, y, ha, va = best
            text(x, y, label, ha=ha, va=va, color=t.text_color, zorder=5)
        if off_scale:
            names = ", ".join(f"{t.label} {t.severity} {show(t.value)}" for t in off_scale)
            worst = max(off_scale, key=lambda t: t.severity == "critical")
            text(self.LEFT + 4, self.TOP + 2, f"off scale: {names}"[:100], ha="left", va="top",
                 color=worst.text_color, zorder=5)


def _top_rows(chart: Chart, painter: Painter, row_of) -> list[float]:
    """Per plot column, the image row of the highest point of the data drawn there
    (inf where nothing is drawn above the axis)."""
    width = painter.plot_width
    out = [math.inf] * width
    if not chart.layers:
        return out
    n = len(chart.layers[0].values)
    tops = [0.0] * n
    seen = [False] * n
    baseline = [0.0] * n
    for layer in chart.layers:
        if layer.below:
            continue
        for i, v in enumerate(layer.values):
            if not math.isfinite(v):
                continue
            top = baseline[i] + v if layer.style == "area" else v
            if layer.style == "area":
                baseline[i] += v
            tops[i] = max(tops[i], top) if seen[i] else top
            seen[i] = True
    span = chart.end - chart.start
    for i in range(n):
        if not seen[i]:
            continue
        t0 = chart.grid_start + i * chart.step
        c0 = int((t0 - chart.start) / span * width)
        c1 = int((t0 + chart.step - chart.start) / span * width) + 1
        r = row_of(tops[i])
        for c in range(max(0, c0), min(width, c1)):
            out[c] = min(out[c], r)
    return out
