"""A rendering run: the graphs whose archive has new rows, then the HTML pages.

A small state file in the graphs folder remembers which row each PNG shows. Every
file is written to a temporary name in the same folder and renamed over the old one,
so a browser never sees half a PNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from collector import catalog
from exporters.files import write_atomic
from exporters.names import decode_name, encode_name
from exporters.rrd import last as rrd_last
from exporters.rrd import rra_layout
from exporters.rrdlayout import CONTEXT_KINDS, RrdFile, list_rrd_files

from . import PERIODS, SPANS, html
from .alertstate import EMPTY as NO_ALERTS
from .alertstate import AlertState, read_alert_state
from .charts import TOP_N, ChartBuilder, ThresholdLine, threshold_lines
from .data import Series, effective_step, load_series, request_step
from .legend import display_name
from .paint import Painter
from .plan import PAGES_DIR, ContextEntry, ContextFigures, GraphSpec, Plan, context_rrd_files, make_plan
from .settings import RenderSettings

log = logging.getLogger("ctxmon.graphs")

DAY = 86400
# A period's graph is redrawn at most this often, whatever its archive's row length.
MIN_REDRAW = {"day": 0, "week": 1800, "month": 7200, "year": DAY}
STATE_FILE = ".ctxmon-graphs-state.json"
LOCK_FILE = ".ctxmon-graphs.lock"
STATE_VERSION = 1
DEPARTED_STEPS = 3  # steps without an update after which a context is shown as departed
NAN = math.nan


class GraphError(Exception):
    """A run that cannot go ahead; `str()` is one line."""


class UnknownContextError(GraphError):
    """The context asked for has no RRD files (bad input)."""


class BusyError(GraphError):
    """Another run holds the graphs folder."""


# ------------------------------------------------------------------ state


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


class StateStore:
    """Which archive row each PNG shows, in one small file per folder: the host's
    graphs in the graphs folder, each context's in its own folder.

    A group is saved as soon as its graphs are drawn, so a run that is killed loses at
    most the graph it was drawing, and the next run carries on where it stopped (what
    is drawn and current is skipped). One file per context keeps each save small
    whatever the number of contexts.
    """

    def __init__(self, graphs_dir: str):
        self.graphs_dir = graphs_dir
        self._groups: dict[str, dict[str, dict]] = {}
        self._dirty: set[str] = set()

    @staticmethod
    def group_of(png: str) -> str:
        """"" for the host's graphs, the context's folder name for a context's."""
        parts = png.split("/")
        return parts[1] if len(parts) == 3 and parts[0] == PAGES_DIR else ""

    def path(self, group: str) -> str:
        if not group:
            return os.path.join(self.graphs_dir, STATE_FILE)
        return os.path.join(self.graphs_dir, PAGES_DIR, group, STATE_FILE)

    def _group(self, group: str) -> dict[str, dict]:
        if group not in self._groups:
            self._groups[group] = _load_state(self.path(group))
        return self._groups[group]

    def get(self, png: str) -> dict | None:
        value = self._group(self.group_of(png)).get(png)
        return value if isinstance(value, dict) else None

    def set(self, png: str, value: dict) -> None:
        group = self.group_of(png)
        self._group(group)[png] = value
        self._dirty.add(group)

    def keep_only(self, group: str, known: set[str]) -> None:
        entries = self._group(group)
        stale = [k for k in entries if k not in known]
        for k in stale:
            del entries[k]
        if stale:
            self._dirty.add(group)

    def save(self, group: str | None = None) -> None:
        """Write the changed groups (or just `group`)."""
        for g in sorted(self._dirty if group is None else self._dirty & {group}):
            data = json.dumps({"version": STATE_VERSION, "graphs": self._groups[g]}, sort_keys=True,
                              indent=0)
            write_atomic(self.path(g), data.encode("utf-8"))
            self._dirty.discard(g)


# ------------------------------------------------------------------- a run


@dataclass
class RunResult:
    rendered: int = 0
    skipped: int = 0  # unchanged since the last run
    failed: int = 0  # graphs that could not be drawn (logged)
    pages: int = 0
    removed: int = 0  # files of departed contexts and interfaces
    unreadable: int = 0  # RRD files that could not be read (logged; graphs drawn without them)
    left: int = 0  # graphs not looked at: the run's time budget was spent (next run goes on)
    waiting: int = 0  # graphs with no data in their period yet (not drawn; tried next run)

    def add(self, other: "RunResult") -> None:
        for f in ("rendered", "skipped", "failed", "pages", "removed", "unreadable", "left", "waiting"):
            setattr(self, f, getattr(self, f) + getattr(other, f))


class GraphRun:
    """Rendering into the graphs folder: a whole pass (`run`), or one context's page of
    one period (`context_page`, what the daemon's worker draws on request).

    Every piece of work holds the graphs folder's lock (flock on LOCK_FILE), so the
    daemon's worker and `ctxmon graph` never draw the same files at once.
    """

    def __init__(self, settings, painter: Painter | None = None, top: int = TOP_N,
                 clock: Callable[[], float] = time.time):
        if not isinstance(settings, RenderSettings):  # a validated ctxmon Config
            p = painter or Painter()
            settings = RenderSettings.from_config(settings, p.width, p.height)
        self.settings = settings
        self.rrd_dir = settings.rrd_dir
        self.graphs_dir = settings.graphs_dir
        self.daemon = settings.rrd_daemon
        self.pdp_step = settings.rrd_step
        self.layout = rra_layout(self.pdp_step)
        self.painter = painter or Painter(settings.width, settings.height)
        self.top = top
        self.clock = clock
        self.alerts: AlertState = NO_ALERTS  # read from the graphs folder at each run
        self._levels: dict[str, tuple] = {}  # context folder -> its alert levels

    # -- the lock

    @contextlib.contextmanager
    def locked(self, wait: bool | float = False, on_wait: Callable[[], None] | None = None):
        """Hold the graphs folder's lock. `wait`: False refuses at once (BusyError),
        True waits as long as it takes, a number waits that many seconds at most."""
        os.makedirs(self.graphs_dir, exist_ok=True)
        lock = open(os.path.join(self.graphs_dir, LOCK_FILE), "a")
        try:
            deadline = None if wait is True else time.monotonic() + (float(wait) if wait else 0.0)
            told = False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise BusyError(f"another rendering is running in {self.graphs_dir}") from None
                    if not told and on_wait is not None:
                        on_wait()
                        told = True
                    time.sleep(0.05)
            yield
        finally:
            lock.close()

    # -- a whole pass

    def run(self, periods: Sequence[str] = PERIODS, context: str | None = None, force: bool = False,
            progress: Callable[[int, int], None] | None = None, *, alerting_only: bool = False,
            budget: float | None = None, between: Callable[[], None] | None = None,
            wait: bool | float = False, on_wait: Callable[[], None] | None = None) -> RunResult:
        """Draw what changed. `context`: only that context's graphs and pages.
        `alerting_only`: the host's graphs and pages, and the contexts with a pending or
        firing alert (the daemon's periodic run; other contexts are drawn on request).
        `budget`: seconds after which no new graph is started (what is left is counted,
        and the next run carries on). `between`: called between two graphs (the worker
        answers page requests there)."""
        with self.locked(wait, on_wait):
            return self._run(periods, context, force, progress, alerting_only, budget, between)

    def _run(self, periods, context, force, progress, alerting_only, budget, between) -> RunResult:
        result = RunResult()
        deadline = None if budget is None else time.monotonic() + budget
        now = int(self.clock())
        self._read_alerts()
        files = list_rrd_files(self.rrd_dir)
        plan = make_plan(files)
        if context is not None:
            wanted = [c for c in plan.contexts if c.name == context or c.slug == encode_name(context)]
            if not wanted:
                raise UnknownContextError(f"no RRD files for context {display_name(context)!r} in {self.rrd_dir}")
        elif alerting_only:
            alerting = {encode_name(a.context) for a in self.alerts.alerts}
            wanted = [c for c in plan.contexts if c.slug in alerting]
        else:
            wanted = plan.contexts
        host_specs = plan.host_specs if context is None else []
        last = self._last_updates(files)
        state = StateStore(self.graphs_dir)
        builder = self._builder()
        total = (len(host_specs) + sum(len(plan.context_specs[c.slug]) for c in wanted)) * len(periods)
        done = 0

        def over() -> bool:
            # At least one graph is looked at whatever the budget: every run makes progress.
            return (deadline is not None and time.monotonic() > deadline
                    and result.rendered + result.failed + result.waiting > 0)

        # The host's graphs first, then its pages: the overview is current even when
        # the budget runs out among the contexts.
        for period in periods:
            for spec in host_specs:
                if over():
                    result.left += 1
                    continue
                self._try_one(spec, period, now, last, state, builder, force, result)
                state.save("")
                done += 1
                if progress is not None:
                    progress(done, total)
                if between is not None:
                    between()
        # The first pages wait for the first graph with data: until then /graphs/
        # keeps the page saying when they will come (graphs.client). `ctxmon graph
        # --force` writes them at once, graphs or not yet.
        if context is None and ((force and plan.host_specs)
                                or any(self._exists(spec.png("day")) for spec in plan.host_specs)):
            figures = self.figures(plan.contexts, now, last)
            for period in PERIODS:
                page = html.index_page(socket.gethostname(), period, plan, figures, self._refresh(),
                                       self._exists, now, self._size(), self.alerts,
                                       legend=lambda png: self._legend_of(state, png),
                                       idle=lambda png: bool((state.get(png) or {}).get("idle")))
                write_atomic(os.path.join(self.graphs_dir, html.page_name(period)), page.encode("utf-8"))
                result.pages += 1
            result.removed = self._remove_departed(plan)
            state.keep_only("", {spec.png(p) for spec in plan.host_specs for p in PERIODS})
            state.save("")
        for c in wanted:
            specs = plan.context_specs[c.slug]
            drawn = False
            for period in periods:
                if over():
                    result.left += len(specs)
                    continue
                self._draw_context(c, specs, period, now, last, state, builder, force, result)
                drawn = True
                done += len(specs)
                if progress is not None:
                    progress(done, total)
                if between is not None:
                    between()
            if drawn:
                self._write_context_pages(c, specs, PERIODS, now, result, last, state)
        if result.left:
            log.info("time budget of %.0f s spent: %d graphs left for the next run", budget, result.left)
        result.unreadable = builder.errors
        return result

    def _draw_context(self, c: ContextEntry, specs: Sequence[GraphSpec], period: str, now: int,
                      last: dict[str, int], state: "StateStore", builder: ChartBuilder, force: bool,
                      result: RunResult) -> None:
        for spec in specs:
            self._try_one(spec, period, now, last, state, builder, force, result)
        state.keep_only(c.slug, {spec.png(p) for spec in specs for p in PERIODS})
        state.save(c.slug)

    def _write_context_pages(self, c: ContextEntry, specs: Sequence[GraphSpec], periods: Sequence[str],
                             now: int, result: RunResult, last: dict[str, int], state: "StateStore") -> None:
        figures = self.figures([c], now, last).get(c.slug)
        for period in periods:
            page = html.context_page(socket.gethostname(), period, c, specs, figures, self._refresh(),
                                     self._exists, now, self._size(), self.alerts,
                                     legend=lambda png: self._legend_of(state, png))
            write_atomic(os.path.join(self.graphs_dir, PAGES_DIR, c.slug, html.page_name(period)),
                         page.encode("utf-8"))
            result.pages += 1

    # -- one context's page, on request

    def context_page(self, slug: str, period: str, wait: bool | float = 10.0) -> RunResult:
        """Draw what is missing or out of date of one context's page of one period
        (`slug` is its folder name). UnknownContextError when it has no RRD files."""
        with self.locked(wait):
            return self.draw_context_page(slug, period)

    def draw_context_page(self, slug: str, period: str) -> RunResult:
        """context_page for a caller that holds the lock already (the worker, between
        two graphs of a run)."""
        if period not in PERIODS:
            raise GraphError(f"no such period {period!r}")
        files = context_rrd_files(self.rrd_dir, slug)
        if not files:
            raise UnknownContextError(f"no RRD files for context folder {display_name(slug)!r}")
        plan = make_plan(files)
        entry = plan.contexts[0]
        self._read_alerts()
        result = RunResult()
        builder = self._builder()
        specs = plan.context_specs[entry.slug]
        now = int(self.clock())
        last, state = self._last_updates(files), StateStore(self.graphs_dir)
        self._draw_context(entry, specs, period, now, last, state, builder, False, result)
        page = os.path.join(self.graphs_dir, PAGES_DIR, entry.slug, html.page_name(period))
        if result.rendered or not os.path.exists(page):
            self._write_context_pages(entry, specs, (period,), now, result, last, state)
        result.unreadable = builder.errors
        return result

    # -- pieces

    def _builder(self) -> ChartBuilder:
        return ChartBuilder(self.painter.plot_width, self.daemon, self.top, self.settings.traffic_style)

    def _read_alerts(self) -> None:
        self.alerts = read_alert_state(self.graphs_dir)
        self._levels = {encode_name(name): levels for name, levels in self.alerts.levels.items()}

    def _refresh(self) -> int:
        return max(10, int(self.settings.interval))

    def _size(self) -> tuple[int, int]:
        return (self.painter.width, self.painter.height)

    def _exists(self, rel: str) -> bool:
        return os.path.exists(os.path.join(self.graphs_dir, rel))

    def _try_one(self, spec, period, now, last, state, builder, force, result) -> None:
        try:
            self._one(spec, period, now, last, state, builder, force, result)
        except Exception as e:  # one graph's failure never stops the others
            result.failed += 1
            log.warning("%s failed: %s", spec.png(period), e)
            log.debug("graphs: %s failed", spec.png(period), exc_info=True)

    def _one(self, spec: GraphSpec, period: str, now: int, last: dict[str, int], state: "StateStore",
             builder: ChartBuilder, force: bool, result: RunResult) -> None:
        png = spec.png(period)
        full = os.path.join(self.graphs_dir, png)
        if spec.kind.startswith("host-"):
            # A departed context leaves the host graphs (and their legends) after
            # departed_after; its own pages stay until its files are archived. A file
            # last updated before the period began has nothing to show in it: not read.
            gone = now - min(self.settings.departed_after, SPANS[period])
            spec = dataclasses.replace(spec, files=tuple(rf for rf in spec.files if last.get(rf.path, gone) >= gone))
            if not spec.files:
                return
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
        if (not force and previous is not None and previous.get("row") == row
                and previous.get("sig") == signature
                and (previous.get("idle") or os.path.exists(full))):
            result.skipped += 1
            return
        chart = builder.build(spec, period, now, newest)
        if chart is None:
            result.failed += 1
            return
        known = [v for layer in chart.layers for v in layer.values if math.isfinite(v)]
        if not known:
            # No data in the period yet (the first minutes): nothing drawn, tried again
            # at the next run; an empty graph tells nothing.
            result.waiting += 1
            return
        if spec.kind == "traffic" and spec.context is None and not any(known):
            # An interface that carried no traffic in the period: listed, not drawn.
            state.set(png, {"row": row, "sig": signature, "idle": True})
            if os.path.exists(full):
                os.unlink(full)
            return
        chart.thresholds = lines
        write_atomic(full, self.painter.paint(chart, period))
        state.set(png, {"row": row, "sig": signature, "legend": chart.legend_text()})
        result.rendered += 1

    @staticmethod
    def _legend_of(state: "StateStore", png: str) -> list[str]:
        entry = state.get(png) or {}
        lines = entry.get("legend")
        return [x for x in lines if isinstance(x, str)] if isinstance(lines, list) else []

    def threshold_lines(self, spec: GraphSpec) -> list[ThresholdLine]:
        """The alert levels drawn on `spec`'s graphs, from the alert state of this run."""
        if spec.context is None or not spec.stem.startswith(PAGES_DIR + "/"):
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
        out = {}
        for rf in files:
            try:  # through ctxmon's rrdcached client: librrd's has no timeout
                out[rf.path] = rrd_last(rf.path, self.daemon)
            except rrdtool.OperationalError as e:
                log.warning("cannot read %s: %s", rf.path, e)
        return out

    def figures(self, contexts: Sequence[ContextEntry], now: int,
                last: dict[str, int] | None = None) -> dict[str, ContextFigures]:
        """Each context's latest known figures, from the finest archive; a context
        whose files had no update for DEPARTED_STEPS steps is marked departed, with the
        time it was last seen (its figures are not read)."""
        out: dict[str, ContextFigures] = {}
        start = now - 6 * self.pdp_step
        last = last if last is not None else self._last_updates([rf for c in contexts for rf in c.files.values()])
        for c in contexts:
            fig = ContextFigures()
            seen = [last[rf.path] for rf in c.files.values() if rf.path in last]
            fig.last_seen = max(seen) if seen else None
            if fig.last_seen is not None and fig.last_seen < now - DEPARTED_STEPS * self.pdp_step:
                fig.departed = True
                out[c.slug] = fig
                continue
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
                for col in catalog.CONTEXT_TABLE:  # kinds without a column are not in the table
                    if col.kind == kind:
                        fig.values[col.title] = sum(values[d] for d in col.ds) * col.factor
            out[c.slug] = fig
        return out

    def _remove_departed(self, plan: Plan) -> int:
        """Delete our PNGs and pages of contexts and interfaces that have no RRD file any
        more (archived); only names this module writes, only inside the graphs folder."""
        removed = 0
        kinds = "|".join(re.escape(k) for k in CONTEXT_KINDS)
        ours = re.compile(rf"({kinds}|net-[A-Za-z0-9_.%~=-]+)-(day|week|month|year)\.png"
                          r"|index\.html|week\.html|month\.html|year\.html|" + re.escape(STATE_FILE))
        ctx_root = os.path.join(self.graphs_dir, PAGES_DIR)
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
                    removed += f.name != STATE_FILE  # graphs and pages are counted
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
