"""A rendering run: the graphs whose archive has new rows, then the HTML pages.

A small state file in the graphs folder remembers which row each PNG shows. Every
file is written to a temporary name in the same folder and renamed over the old one,
so a browser never sees half a PNG.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import rrdtool

from exporters.files import write_atomic
from exporters.names import decode_name, encode_name
from exporters.rrd import CTX_DIR, RrdFile, list_rrd_files, rra_layout

from . import PERIODS, SPANS, html
from .alertstate import EMPTY as NO_ALERTS
from .alertstate import AlertState, read_alert_state
from .charts import TOP_N, ChartBuilder, ThresholdLine, threshold_lines
from .data import Series, effective_step, load_series, request_step
from .legend import display_name
from .paint import Painter
from .plan import ContextEntry, ContextFigures, GraphSpec, Plan, make_plan

log = logging.getLogger("ctxmon.graphs")

DAY = 86400
# A period's graph is redrawn at most this often, whatever its archive's row length.
MIN_REDRAW = {"day": 0, "week": 1800, "month": 7200, "year": DAY}
STATE_FILE = ".ctxmon-graphs-state.json"
LOCK_FILE = ".ctxmon-graphs.lock"
STATE_VERSION = 1
NAN = math.nan


class GraphError(Exception):
    """A run that cannot go ahead; `str()` is one line."""


class UnknownContextError(GraphError):
    """The context asked for has no RRD files (bad input)."""


class BusyError(GraphError):
    """Another run holds the graphs folder."""


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
                elif kind == "tasks":  # other kinds (cgmem ...) are not in the table
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
