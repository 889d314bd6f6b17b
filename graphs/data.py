"""The data path: RRD rows read as `rrdtool graph` reads them.

So that the legend figures equal what `rrdtool graph` prints with VDEF
LAST/MINIMUM/AVERAGE/MAXIMUM over the same file, period and width:
- the requested step is (end - start) // plot width in pixels (one row per pixel);
- `rrdtool fetch --resolution <that step>` picks the archive rrdtool graph would pick
  (the closest step among those covering the period);
- rows finer than the requested step are consolidated as rrdtool's `reduce_data`
  does (same CF, unknown rows left out, partial rows at the edges unknown).

Unknown rows stay NaN all the way to the plot, where they are gaps, never zero.
Nothing here draws: no matplotlib (numpy is imported on first read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from exporters.rrd import fetch

if TYPE_CHECKING:  # numpy is imported where rows are read: graphs.render re-exports
    import numpy as np  # this module and stays light for the daemon's process

NAN = math.nan

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


def reduce_rows(cf: str, cur_step: int, start: int, end: int, step: int,
                rows: Sequence[Sequence[float]]) -> tuple[int, int, int, list[tuple[float, ...]]]:
    """rrdtool's reduce_data: consolidate rows of `cur_step` into rows of the next
    multiple of `cur_step` >= `step`, with `cf`; start and end move outwards to that
    multiple, and a partial row at either edge is unknown. Returns (start, end, step, rows)."""
    import numpy as np

    ncol = len(rows[0]) if rows else 0
    a = np.array(rows, dtype=float).reshape(len(rows), ncol)
    start, end, step, out = _reduce(cf, cur_step, start, end, step, a)
    return start, end, step, [tuple(r) for r in out.tolist()]


def _reduce(cf: str, cur_step: int, start: int, end: int, step: int,
            a: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    """reduce_rows over an array of rows x columns (NaN = unknown), block-wise in
    numpy: each new row from `factor` source rows, summed in their order as
    rrdtool's reduce_data sums them."""
    import numpy as np

    factor = math.ceil(step / cur_step)
    new_step = cur_step * factor
    ncol = a.shape[1]
    row_cnt = (end - start) // cur_step
    src = 0
    start_offset = start % new_step
    end_offset = end % new_step
    if start_offset:
        start -= start_offset
        skip = factor - start_offset // cur_step
        src += skip
        row_cnt -= skip
    if end_offset:
        end = end - end_offset + new_step
        row_cnt -= end_offset // cur_step
    blocks = max(0, row_cnt // factor)
    body = a[src: src + blocks * factor]
    if len(body) < blocks * factor:  # fewer rows than the period holds: unknown
        body = np.vstack([body, np.full((blocks * factor - len(body), ncol), NAN)])
    body = body.reshape(blocks, factor, ncol)
    known = ~np.isnan(body)
    if cf == "MIN":
        out = np.fmin.reduce(body, axis=1) if factor else np.full((blocks, ncol), NAN)
    elif cf == "MAX":
        out = np.fmax.reduce(body, axis=1) if factor else np.full((blocks, ncol), NAN)
    elif cf == "LAST":
        out = np.full((blocks, ncol), NAN)
        for j in range(factor):
            out = np.where(known[:, j], body[:, j], out)
    else:
        total = np.zeros((blocks, ncol))
        for j in range(factor):  # in row order, as rrdtool adds them
            total += np.where(known[:, j], body[:, j], 0.0)
        count = known.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(count > 0, total / np.maximum(count, 1), NAN)
    parts = [out]
    if start_offset:
        parts.insert(0, np.full((1, ncol), NAN))
    if end_offset:
        parts.append(np.full((1, ncol), NAN))
    return start, end, new_step, np.concatenate(parts) if len(parts) > 1 else out


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
    import numpy as np

    got = fetch(path, start, end, cf, resolution=requested, daemon=daemon)
    # Unknown (None) as NaN; a flat list is twice as quick for numpy as rows with None
    flat = [NAN if v is None else v for row in got.rows for v in row]
    a = np.array(flat, dtype=float).reshape(len(got.rows), len(got.names))
    s, e, st = got.start, got.end, got.step
    if st < requested:
        s, e, st, a = _reduce(cf, st, s, e, requested, a)
    n = (e - s) // st
    a = a[:n]
    columns = {name: a[:, i].tolist() for i, name in enumerate(got.names)}
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
    if any(len(c) != length for c in columns):
        columns = [list(c[:length]) + [NAN] * (length - len(c)) for c in columns]
    if not columns:
        return [NAN] * length
    out = []
    for row in zip(*columns):  # row-wise; `v == v` is False for NaN only
        known = [v for v in row if v == v]
        out.append(math.fsum(known) if known else NAN)
    return out


def mean_known(values: Iterable[float]) -> float:
    known = [v for v in values if v == v]  # NaN is the one value unequal to itself
    return math.fsum(known) / len(known) if known else NAN
