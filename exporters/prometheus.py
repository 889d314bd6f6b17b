"""The Prometheus view of the latest snapshot: a custom prometheus_client Collector.

Every `collect()` fetches the daemon's latest immutable Snapshot once and builds fresh
metric families from it, so a scrape never walks `/proc`, concurrent scrapes are safe,
and a context that is gone is simply absent from the next scrape (Prometheus then
marks its series stale). No labelled metric children outlive their context, and no
`_created` series are made (families are built without `created`).

Optional cap: only the `max_contexts` contexts with the most CPU seconds are exported
by name; the rest are summed into `context="other"`. Its counters are accumulated from
per-context increases, so they stay monotonic while contexts move in and out of it.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from collector import catalog
from collector.catalog import DEPARTED_STATE_SECONDS, OTHER
from collector.snapshot import ContextSample, Snapshot, unique_label
from exporters.names import clean_text as label_value
from exporters.textformat import TextFormatter
from exporters.version import version as _version


@dataclass(frozen=True, slots=True)
class SelfMetrics:
    """The daemon's own figures, as the daemon knows them at scrape time.

    Per-source file errors and the number of folded contexts are not here: the
    collector reads them from the snapshot it exports, so they always match it.
    """

    poll_duration_seconds: float | None = None  # the last poll, sampling and sinks
    last_poll_timestamp_seconds: float | None = None  # epoch seconds the last poll ended
    rrd_write_errors: int = 0  # RRD updates that failed in the last poll
    polls_total: int = 0
    missed_polls_total: int = 0  # polls skipped because the previous one ran late
    poll_failures_total: int = 0  # polls that raised and produced no snapshot
    stuck_polls_total: int = 0  # polls that ran past 3 intervals
    poll_stuck: bool = False  # the poll in progress is one of them
    snapshot_age_seconds: float | None = None  # of the snapshot served, at scrape time
    rrd_clock_back_total: int = 0  # RRD updates skipped: clock behind a file's last update
    rrd_files_refused_total: int = 0  # RRD files not made: [rrd] max_bytes reached


# name (without _total for counters) -> (type, help, label names), derived from the
# metric catalog (collector.catalog), the one place the exported metrics are declared.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    f.name: (f.type, f.help, f.labels) for f in catalog.FAMILIES
}
_CONTEXT_FAMILIES = tuple(f for f in catalog.FAMILIES if f.scope == "context")
_SUMMED = tuple(f for f in _CONTEXT_FAMILIES if f.summed)
_OWN = tuple(f for f in _CONTEXT_FAMILIES if not f.summed)
_SUMMED_THEN_OWN = _SUMMED + _OWN
# Host families the snapshot fills; `ctxmon_contexts_folded` is the cap's (no samples).
_HOST_FAMILIES = tuple(f for f in catalog.FAMILIES if f.scope == "host" and f.samples)

# Families that change between snapshots (from SelfMetrics), rendered on every scrape.
LIVE_FAMILIES = tuple(f.name for f in catalog.FAMILIES if f.scope == "daemon")

_FAMILY_CLASS = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}


def unique_labels(contexts: Iterable[ContextSample], reserved: str | None = None) -> list[str]:
    """The `context` label of each context, made unique.

    The sampler already gives contexts distinct labels; two can still meet here when
    names differing only in non-UTF-8 bytes become the same label value, or when a
    context is called like the cap's `reserved` bucket. A label already taken gets the
    context's short id appended by the sampler's own rule (collector.snapshot
    .unique_label), so two contexts never make one series."""
    out: list[str] = []
    taken = {reserved} if reserved else set()
    for c in contexts:
        label = label_value(c.label)
        if label in taken:
            label = unique_label(label, label_value(c.ctx_id), taken)
        taken.add(label)
        out.append(label)
    return out


# --------------------------------------------------------------------------- rows
# A context's samples as rows: (family, label values after `context`, value).

Row = tuple[str, tuple[str, ...], float]


def _rows(families: tuple[catalog.Family, ...], c: ContextSample) -> Iterator[Row]:
    for fam in families:
        for labels, value in fam.samples(c):  # type: ignore[misc]
            yield fam.name, tuple(label_value(v) for v in labels), value


def _summed_rows(c: ContextSample) -> Iterator[Row]:
    """The samples that stay meaningful when contexts are summed into `other`."""
    return _rows(_SUMMED, c)


def _own_rows(c: ContextSample) -> Iterator[Row]:
    """Samples of one context that make no sense summed (identity, limits)."""
    return _rows(_OWN, c)


class _OtherCounters:
    """Monotonic counters for `other`.

    Summing the folded contexts' counters afresh would jump down whenever a context
    left `other` (a false counter reset). Instead each folded context adds what it
    grew since the previous snapshot seen (all of its value when first seen), and a
    context leaving takes nothing away. The same snapshot scraped again adds nothing.
    Callers serialize fetching the snapshot and updating (the collector's lock), so
    snapshots arrive here in the order the daemon made them, whatever the clock does.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None  # held, so `is` cannot match a new one
        self._last: dict[tuple[str, str, tuple[str, ...]], float] = {}  # (key, family, labels)
        self._last_seen: dict[str, float] = {}  # context key -> snapshot time
        self._total: dict[tuple[str, tuple[str, ...]], float] = {}  # (family, labels)

    def update(
        self, snap: Snapshot, folded_keys: set[str]
    ) -> dict[tuple[str, tuple[str, ...]], float]:
        if snap is not self._snapshot:
            self._snapshot = snap
            self._advance(snap, folded_keys)
        return dict(self._total)

    def _advance(self, snap: Snapshot, folded_keys: set[str]) -> None:
        now = snap.timestamp
        last, total = self._last, self._total
        for c in snap.contexts:
            self._last_seen[c.key] = now
            folded = c.key in folded_keys
            for fam, labels, value in _summed_rows(c):
                if FAMILIES[fam][0] != "counter":
                    continue
                k = (c.key, fam, labels)
                prev = last.get(k)
                if folded:
                    # A counter that went down restarted (e.g. an interface recreated):
                    # all of its new value is new growth.
                    grew = value if prev is None or value < prev else value - prev
                    total[(fam, labels)] = total.get((fam, labels), 0.0) + grew
                last[k] = value
        # Keep departed contexts' last values as long as the sampler keeps their
        # counters, so one coming back does not count its history twice. (abs: after
        # the clock stepped back, contexts seen "in the future" age too.)
        gone = {k for k, t in self._last_seen.items()
                if abs(now - t) > DEPARTED_STATE_SECONDS}
        if gone:
            for k in gone:
                del self._last_seen[k]
            for k in [k for k in last if k[0] in gone]:
                del last[k]


RENDER_SWITCH_INTERVAL = 0.0005  # seconds: the GIL's while the text renders after a poll


def _new_family(name: str, labels: tuple[str, ...] | None = None) -> Metric:
    typ, doc, names = FAMILIES[name]
    full = name + "_total" if typ == "counter" else name
    return _FAMILY_CLASS[typ](full, doc, labels=names if labels is None else labels)


class SnapshotCollector(Collector):
    """Exports the snapshot `get_snapshot()` returns (None before the first poll)."""

    def __init__(
        self,
        get_snapshot: Callable[[], Snapshot | None],
        get_self_metrics: Callable[[], SelfMetrics],
        max_contexts: int | None = None,
        version: str | None = None,
    ):
        if max_contexts is not None and max_contexts < 1:
            raise ValueError("max_contexts must be at least 1 (or None for no cap)")
        self.get_snapshot = get_snapshot
        self.get_self_metrics = get_self_metrics
        self.max_contexts = max_contexts
        self.version = version if version is not None else _version()
        self._other = _OtherCounters()
        # Held while fetching a snapshot and building its families: concurrent scrapes
        # then handle snapshots in the order the daemon made them (see _OtherCounters)
        # and one snapshot is rendered once.
        self._lock = threading.Lock()
        self._cache: tuple[Snapshot | None, bytes] | None = None
        self._scraped = False  # since the last published()
        self._prerendering = False  # published() renders a new snapshot now
        # generate_latest's output; each keeps the series of its last rendering
        self._text, self._live_text = TextFormatter(), TextFormatter()

    def describe(self) -> list[Metric]:
        """The families, empty: registration needs no snapshot and no walk."""
        return [_new_family(name) for name in FAMILIES]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = self._snapshot_families(self.get_snapshot())
        yield from families
        yield from self._live_families(self.get_self_metrics())

    def exposition(self) -> list[bytes]:
        """The text format of `collect()` in pieces to send one after the other; the
        snapshot's part is rendered once per snapshot.

        Rendering 1,000 contexts costs tens of ms of Python while the snapshot changes
        only once a poll; concurrent scrapes of one snapshot wait for one rendering.
        While `published()` renders a new snapshot for scrapers, they get the text of
        the one before it rather than wait (at most one poll old, for that moment).
        (Pieces, not one string: joining copies a megabyte for nothing.)"""
        self._scraped = True
        cached = self._cache
        if not (self._prerendering and cached is not None):
            with self._lock:
                snap = self.get_snapshot()
                cached = self._cache
                if cached is None or cached[0] is not snap:  # `is`: the cache holds it alive
                    cached = self._cache = (
                        snap, self._text.render(self._snapshot_families(snap)))
        return [cached[1], self._live_text.render(self._live_families(self.get_self_metrics()))]

    def published(self) -> None:
        """The daemon has a new snapshot. Nobody scraped since the last one: render
        nothing (the first scrape will). Someone did: render it now on a thread of
        its own, the poll's thread going on."""
        if not self._scraped:
            return
        self._scraped = False
        # Set before the thread runs: a scrape in between would otherwise render the
        # new snapshot itself, on the HTTP loop, holding up every other connection.
        self._prerendering = True
        try:
            threading.Thread(target=self._prerender, name="ctxmon-render", daemon=True).start()
        except RuntimeError:  # no thread to be had: the next scrape renders
            self._prerendering = False

    def _prerender(self) -> None:
        # Scrapes meanwhile are served the previous text, but they need the GIL, and
        # each of their hand-overs waits out a switch interval (5 ms) of this Python
        # loop: a shorter one while it renders. Lowered and given back under the lock,
        # so a render that waits for the one before never takes the short interval
        # for the process's own.
        try:
            with self._lock:
                switch = sys.getswitchinterval()
                sys.setswitchinterval(min(switch, RENDER_SWITCH_INTERVAL))
                try:
                    self._prerendering = True
                    snap = self.get_snapshot()
                    if self._cache is None or self._cache[0] is not snap:
                        self._cache = (snap, self._text.render(self._snapshot_families(snap)))
                finally:
                    sys.setswitchinterval(switch)
        except Exception:  # a scrape will render (and report) it
            pass
        finally:
            self._prerendering = False

    def _snapshot_families(self, snap: Snapshot | None) -> list[Metric]:
        fams = {name: _new_family(name) for name in FAMILIES if name not in LIVE_FAMILIES}

        def add(name: str, labels: Iterable[str], value: float) -> None:
            fams[name].add_metric(list(labels), value)

        if snap is not None:
            folded_count = self._contexts(snap, add)
            if self.max_contexts is not None:
                add("ctxmon_contexts_folded", (), folded_count)
            for hf in _HOST_FAMILIES:
                for labels, value in hf.samples(snap):  # type: ignore[misc]
                    add(hf.name, (label_value(v) for v in labels), value)
        return [fam for fam in fams.values() if fam.samples]

    def _live_families(self, me: SelfMetrics) -> list[Metric]:
        """What changes without a new snapshot: the daemon's own counters."""
        fams = {name: _new_family(name) for name in LIVE_FAMILIES}

        def add(name: str, labels: Iterable[str], value: float) -> None:
            fams[name].add_metric(list(labels), value)

        if me.poll_duration_seconds is not None:
            add("ctxmon_poll_duration_seconds", (), me.poll_duration_seconds)
        if me.last_poll_timestamp_seconds is not None:
            add("ctxmon_last_poll_timestamp_seconds", (), me.last_poll_timestamp_seconds)
        add("ctxmon_rrd_write_errors", (), me.rrd_write_errors)
        add("ctxmon_polls", (), me.polls_total)
        add("ctxmon_missed_polls", (), me.missed_polls_total)
        add("ctxmon_poll_failures", (), me.poll_failures_total)
        add("ctxmon_stuck_polls", (), me.stuck_polls_total)
        add("ctxmon_poll_stuck", (), 1 if me.poll_stuck else 0)
        if me.snapshot_age_seconds is not None:
            add("ctxmon_snapshot_age_seconds", (), me.snapshot_age_seconds)
        add("ctxmon_rrd_clock_back_skips", (), me.rrd_clock_back_total)
        add("ctxmon_rrd_files_refused", (), me.rrd_files_refused_total)
        add("ctxmon_build_info", (label_value(self.version),), 1)
        return [fam for fam in fams.values() if fam.samples]

    def _contexts(self, snap: Snapshot, add: Callable[[str, Iterable[str], float], None]) -> int:
        """Add every context's samples; returns how many were folded into `other`."""
        contexts = snap.contexts
        folded: list[ContextSample] = []
        cap = self.max_contexts
        if cap is not None and len(contexts) > cap:
            ranked = sorted(
                contexts, key=lambda c: (-(c.cpu_user_seconds + c.cpu_system_seconds), c.label)
            )
            keep = {id(c) for c in ranked[:cap]}
            folded = [c for c in contexts if id(c) not in keep]
            contexts = tuple(c for c in contexts if id(c) in keep)
        labels = unique_labels(contexts, reserved=OTHER if cap is not None else None)
        # The hot loop of a scrape (once per family and context): _summed_rows and
        # _own_rows inlined, label values cleaned only where there are any.
        for label, c in zip(labels, contexts):
            for fam in _SUMMED_THEN_OWN:
                name = fam.name
                for rest, value in fam.samples(c):  # type: ignore[misc]
                    add(name, (label, *map(label_value, rest)) if rest else (label,), value)
        if cap is not None:
            # Always advanced while capping, so growth is tracked from the first
            # collect even for contexts that are folded only later.
            counters = self._other.update(snap, {c.key for c in folded})
            if folded:
                gauges: dict[tuple[str, tuple[str, ...]], float] = {}
                for c in folded:
                    for fam, rest, value in _summed_rows(c):
                        if FAMILIES[fam][0] == "gauge":
                            gauges[(fam, rest)] = gauges.get((fam, rest), 0) + value
                for (fam, rest), value in (*gauges.items(), *counters.items()):
                    add(fam, (OTHER, *rest), value)
        return len(folded)


class _Families:
    """Ready families in the shape generate_latest() takes."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class ExportRegistry(CollectorRegistry):
    """A private registry: the SnapshotCollector, and any other collectors registered.

    `generate_latest(registry)` works as with any registry; `exposition()` gives the
    same text faster, from the collector's per-snapshot rendering."""

    def __init__(self, collector: SnapshotCollector):
        super().__init__(auto_describe=True)
        self.snapshot_collector = collector
        self.register(collector)
        self._others = CollectorRegistry(auto_describe=True)

    def register(self, collector: Collector) -> None:
        super().register(collector)
        if collector is not getattr(self, "snapshot_collector", None):
            self._others.register(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        if collector is not self.snapshot_collector:
            self._others.unregister(collector)

    def exposition(self) -> list[bytes]:
        """The same text as generate_latest(self), in pieces (see SnapshotCollector)."""
        return [*self.snapshot_collector.exposition(), generate_latest(self._others)]


def build_registry(collector: SnapshotCollector, process_metrics: bool = True
                   ) -> ExportRegistry:
    """A private registry with `collector` and, node-exporter style, the daemon's own
    `process_*` figures (CPU, memory, open fds). Nothing goes to the global registry."""
    registry = ExportRegistry(collector)
    if process_metrics:
        _ProcessCollector(registry=registry)
    return registry


class _ProcessCollector(ProcessCollector):
    """prometheus_client's `process_*` figures (same names, help and values), with
    `process_open_fds` from the size of /proc/self/fd, the kernel's count of open fds
    (Linux >= 6.2), instead of a listing of it: ctxmon holds thousands of kernel files
    open, and listing them was ~1.5 ms of every scrape, most of a cached one. Where
    the size says 0 (older kernels), the folder is listed as before."""

    def collect(self) -> Iterable[Metric]:
        if not self._btime:
            return []
        pid = os.path.join(self._proc, str(self._pid()).strip())
        result: list[Metric] = []
        try:
            with open(os.path.join(pid, "stat"), "rb") as f:
                parts = f.read().split(b")")[-1].split()
            result += [
                GaugeMetricFamily(self._prefix + "virtual_memory_bytes",
                                  "Virtual memory size in bytes.", value=float(parts[20])),
                GaugeMetricFamily(self._prefix + "resident_memory_bytes",
                                  "Resident memory size in bytes.",
                                  value=float(parts[21]) * self._pagesize),
                GaugeMetricFamily(self._prefix + "start_time_seconds",
                                  "Start time of the process since unix epoch in seconds.",
                                  value=float(parts[19]) / self._ticks + self._btime),
                CounterMetricFamily(self._prefix + "cpu_seconds_total",
                                    "Total user and system CPU time spent in seconds.",
                                    value=(float(parts[11]) + float(parts[12])) / self._ticks),
            ]
        except OSError:
            pass
        try:
            with open(os.path.join(pid, "limits"), "rb") as f:
                for line in f:
                    if line.startswith(b"Max open file"):
                        max_fds = GaugeMetricFamily(self._prefix + "max_fds",
                                                    "Maximum number of open file descriptors.",
                                                    value=float(line.split()[3]))
                        break
            fd_dir = os.path.join(pid, "fd")
            count = os.stat(fd_dir).st_size or len(os.listdir(fd_dir))
            result += [GaugeMetricFamily(self._prefix + "open_fds",
                                         "Number of open file descriptors.", count),
                       max_fds]
        except OSError:
            pass
        return result

