"""Graphs and the admin's HTML pages, drawn from the RRD files (see graphs.render).

Run as `python -m graphs -c FILE` (the daemon does so in a child process, so the
polling process never imports matplotlib). Importing this package imports nothing
heavy: matplotlib is loaded only when a graph is drawn.
"""

from __future__ import annotations

PERIODS = ("day", "week", "month", "year")

__all__ = ["PERIODS"]
