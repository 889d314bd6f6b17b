"""Painting: a Chart as a PNG of exactly width x height pixels, in rrdtool's classic
look (matplotlib's Agg canvas, imported on first use only)."""

from __future__ import annotations

import io
import math
import time
from typing import Iterable, Sequence

from .charts import Chart, ThresholdLine

BACK = "#F0F0F0"  # around the plot
CANVAS = "#FFFFFF"
GRID = "#C8C8C8"
MGRID = "#E09090"  # major grid: rrdtool's reddish dots
TOTAL_AXIS = "#000000"  # the zero line between areas drawn up and down
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
        if layer.below:
            continue
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


def data_depth(chart: Chart) -> float:
    """How far below the axis the areas drawn downwards reach; 0 without any."""
    n = len(chart.layers[0].values) if chart.layers else 0
    depth, baseline = 0.0, [0.0] * n
    for layer in chart.layers:
        if layer.below and layer.style == "area":
            baseline = [b + (0.0 if math.isnan(v) else v) for b, v in zip(baseline, layer.values)]
            depth = max([depth, *baseline])
    return depth


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
        depth = data_depth(chart)
        y_bottom = -y_scale(depth, chart.base)[0] if depth > 0 else 0.0
        return self.TOP + self.plot_height * (y_top - value) / (y_top - y_bottom)

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
            under = np.zeros(n)  # the stack drawn downwards (Layer.below)
            for layer in chart.layers:
                values = np.asarray(layer.values, dtype=float)
                if layer.style == "area" and layer.below:
                    x, y1 = _steps(chart.grid_start, chart.step, -(under + values))
                    _, y0 = _steps(chart.grid_start, chart.step, -under)
                    drawn.append(ax.fill_between(x, y0, y1, facecolor=layer.color, edgecolor="none",
                                                 linewidth=0, zorder=2))
                    under = under + np.nan_to_num(values, nan=0.0)
                elif layer.style == "area":
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
            depth = data_depth(chart)
            y_bottom, down_ticks = y_scale(depth, chart.base) if depth > 0 else (0.0, [0.0])
            y_bottom = -y_bottom
            y_ticks = [-v for v in reversed(down_ticks[1:])] + y_ticks
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
            drawn.append(ax.hlines([v for v in y_ticks if v != y_bottom], chart.start, chart.end,
                                   colors=MGRID, linestyles=dots, linewidth=0.6, zorder=1))
            if y_bottom < 0:  # the axis between sent and received
                drawn.append(ax.axhline(0, color=TOTAL_AXIS, linewidth=0.8, zorder=3))
            plot_bottom = self.TOP + self.plot_height
            for t, label in zip(major, labels):
                text(self.x_pixel(chart, t), plot_bottom + 3, label, ha="center", va="top")
            for v in y_ticks:
                label = f"{v:g}" if chart.base is None else tick_format(abs(v), chart.base)
                if v < 0:
                    label = "-" + label
                text(self.LEFT - 4, plot_bottom - (v - y_bottom) / (y_top - y_bottom) * self.plot_height,
                     label, ha="right", va="center")
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
