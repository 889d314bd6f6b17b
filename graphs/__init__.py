"""Graphs and the admin's HTML pages, drawn from the RRD files.

The modules, along the way data flows (none imports one to its left's callers):
data (RRD rows as rrdtool graph reads them) -> plan (which graphs exist) -> charts
(what a PNG shows, as plain data) -> paint (matplotlib, on first use only) -> run
(a rendering pass, its state and lock) -> html (the pages, from plan and figures).
`legend` holds the pure legend arithmetic, `alertstate` reads the daemon's alert
hand-off. `graphs.render` re-exports the public names for older callers.

Run as `python -m graphs -c FILE` (the daemon does so in a child process, so the
polling process never imports matplotlib). Importing this package imports nothing
heavy: matplotlib is loaded only when a graph is drawn.
"""

from __future__ import annotations

PERIODS = ("day", "week", "month", "year")
SPANS = {"day": 86400, "week": 7 * 86400, "month": 31 * 86400, "year": 365 * 86400}

__all__ = ["PERIODS", "SPANS"]
