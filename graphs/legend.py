"""The legend figures under a graph: Cur, Min, Avg, Max, and SI formatting.

Pure functions over a series of values (None or NaN = unknown), computed the way
`rrdtool graph` computes `VDEF:x=v,LAST` / `MINIMUM` / `AVERAGE` / `MAXIMUM` over the
rows of a DEF: unknown rows are left out, and a series with no known row gives NaN.
As in the classic graphs, Min is taken over the MIN archive, Max over the MAX archive,
Avg and Cur over the AVERAGE archive.

`si_format` is rrdtool's `%.2lf%s` (its `auto_scale`): the value divided by
base**floor(log_base(|value|)), with the prefix for that power, e.g. `398.66k`.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

# rrdtool's symbols from 1e-18 to 1e18; the middle one is "no prefix".
SYMBOLS = ("a", "f", "p", "n", "u", "m", "", "k", "M", "G", "T", "P", "E")
_CENTER = 6
UNKNOWN_TEXT = "nan"  # what rrdtool prints for an unknown VDEF
_HIDDEN = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def _known(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def last_known(values: Sequence[float | None]) -> float:
    """VDEF LAST: the last known value, NaN if none."""
    for v in reversed(values):
        if v is not None and math.isfinite(v):
            return float(v)
    return math.nan


def minimum(values: Iterable[float | None]) -> float:
    """VDEF MINIMUM: the smallest known value, NaN if none."""
    known = _known(values)
    return min(known) if known else math.nan


def maximum(values: Iterable[float | None]) -> float:
    """VDEF MAXIMUM: the largest known value, NaN if none."""
    known = _known(values)
    return max(known) if known else math.nan


def average(values: Iterable[float | None]) -> float:
    """VDEF AVERAGE: the mean of the known values (unknown rows do not count)."""
    known = _known(values)
    return math.fsum(known) / len(known) if known else math.nan


@dataclass(frozen=True, slots=True)
class Stats:
    """One legend row."""

    cur: float
    min: float
    avg: float
    max: float

    def scaled(self, factor: float) -> "Stats":
        return Stats(self.cur * factor, self.min * factor, self.avg * factor, self.max * factor)


def legend_stats(
    avg_series: Sequence[float | None],
    min_series: Sequence[float | None] | None = None,
    max_series: Sequence[float | None] | None = None,
) -> Stats:
    """Cur and Avg from the AVERAGE series, Min from the MIN one, Max from the MAX one
    (each falls back to the AVERAGE series when its archive is not given)."""
    return Stats(
        cur=last_known(avg_series),
        min=minimum(avg_series if min_series is None else min_series),
        avg=average(avg_series),
        max=maximum(avg_series if max_series is None else max_series),
    )


def auto_scale(value: float, base: int = 1000) -> tuple[float, str]:
    """(value / base**k, prefix) as rrdtool's auto_scale; `?` beyond the symbol table."""
    if value == 0 or not math.isfinite(value):
        return value, ""
    index = math.floor(math.log(abs(value)) / math.log(base))
    scaled = value / (float(base) ** index)
    if -_CENTER <= index <= _CENTER:
        return scaled, SYMBOLS[index + _CENTER]
    return scaled, "?"


def si_format(value: float | None, base: int = 1000, decimals: int = 2) -> str:
    """`398.66k`, `10.42M`, `0.00`; `nan` for unknown."""
    if value is None or math.isnan(value):
        return UNKNOWN_TEXT
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    scaled, symbol = auto_scale(value, base)
    return f"{scaled:.{decimals}f}{symbol}"


def plain_format(value: float | None, decimals: int = 2) -> str:
    """A fixed-point figure (percentages), `nan` for unknown."""
    if value is None or math.isnan(value):
        return UNKNOWN_TEXT
    return f"{value:.{decimals}f}"


def tick_format(value: float, base: int = 1000) -> str:
    """A short axis label: `0`, `500 k`, `1.5 M` (at most 3 significant digits)."""
    if abs(value) < 1:  # counts and rates below one read better as 0.5 than 500 m
        return f"{value:.3g}"
    scaled, symbol = auto_scale(value, base)
    text = f"{scaled:.3g}"
    return f"{text} {symbol}" if symbol else text


def count_format(value: float | None) -> str:
    """A count: a whole number as one (`3`, not `3.00`), a mean with one decimal."""
    if value is None or math.isnan(value):
        return UNKNOWN_TEXT
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.1f}"


def format_row(stats: Stats, base: int | None = 1000, integer: bool = False) -> tuple[str, str, str, str]:
    """The four legend cells; `base=None` for plain figures (percentages); `integer`
    for counts."""
    values = (stats.cur, stats.min, stats.avg, stats.max)
    if integer:
        return tuple(count_format(v) for v in values)  # type: ignore[return-value]
    if base is None:
        return tuple(plain_format(v) for v in values)  # type: ignore[return-value]
    return tuple(si_format(v, base) for v in values)  # type: ignore[return-value]


def rrd_format(value: float | None, base: int = 1000) -> str:
    """rrdtool's `%6.2lf%s` exactly as GPRINT prints it (Munin's legend format): the
    figure right-aligned in 6, then the prefix, a blank where there is none."""
    if value is None or math.isnan(value):
        return f"{'nan':>6} "
    scaled, symbol = auto_scale(value, base)
    return f"{scaled:6.2f}{symbol or ' '}"


def format_pair(received: Stats, sent: Stats, base: int = 1000) -> tuple[str, str, str, str]:
    """Munin's traffic legend cells, `<received>/<sent>` each, e.g. `398.66k/378.72k`
    (rrd_format's trailing blank of a figure without prefix left out before the
    slash, as Munin's legend shows it)."""
    pairs = zip((received.cur, received.min, received.avg, received.max),
                (sent.cur, sent.min, sent.avg, sent.max))
    return tuple(f"{rrd_format(a, base).rstrip()}/{rrd_format(b, base).rstrip()}"  # type: ignore[return-value]
                 for a, b in pairs)


def display_name(name: str) -> str:
    """A name as readable, one-line text that always encodes as UTF-8.

    An undecodable byte read with surrogateescape (U+DC80-U+DCFF) shows as `\\xNN`,
    any other lone surrogate as `\\uXXXX`; control and format characters (newlines,
    bidi overrides that would reorder the text around them) show as `\\xNN` or
    `\\uXXXX` too. Escaping for HTML is the page's job.
    """
    out = []
    for ch in name:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            out.append(f"\\x{cp - 0xDC00:02x}")
        elif unicodedata.category(ch) in _HIDDEN:
            out.append(f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}")
        else:
            out.append(ch)
    return "".join(out)
