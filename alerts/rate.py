"""PromQL's rate() over the counter samples the engine keeps, per context series."""

from __future__ import annotations

import collections

from collector import catalog
from collector.snapshot import ContextSample, Snapshot

# metric -> the catalog's counter source (the history is kept per source kind).
COUNTERS: dict[str, catalog.CounterSource] = {
    m.name: m.counter for m in catalog.ALERT_METRICS if m.counter is not None}


def prom_rate(samples: collections.deque | list, start: float, end: float) -> float | None:
    """PromQL's rate() (Prometheus 2.x) of counter samples [(t, v)] inside [start, end].

    The increase across the samples, a decrease counting as a counter reset, is
    extrapolated towards the window's edges (by at most half a sample interval where
    the samples stop short of an edge, and never below a zero count), then divided by
    the window. Fewer than two samples: no rate."""
    if len(samples) < 2:
        return None
    first_t, first_v = samples[0]
    last_t, last_v = samples[-1]
    sampled = last_t - first_t
    if sampled <= 0 or end <= start:
        return None
    increase, prev = last_v - first_v, first_v
    for _t, v in samples:
        if v < prev:
            increase += prev
        prev = v
    to_start, to_end = first_t - start, end - last_t
    average = sampled / (len(samples) - 1)
    if increase > 0 and first_v >= 0:
        to_start = min(to_start, sampled * (first_v / increase))
    limit = average * 1.1
    interval = sampled + (to_start if to_start < limit else average / 2) \
        + (to_end if to_end < limit else average / 2)
    return increase * (interval / sampled) / (end - start)


class CounterHistory:
    """The samples of every counter series inside the rate window.

    A context's rate is the sum of its series' rates (CPU modes, interfaces, limits),
    each as PromQL's rate() over [snapshot time - window, snapshot time]."""

    def __init__(self, window: float):
        self.window = window
        self.end = 0.0  # the latest snapshot's time
        self._series: dict[tuple[str, str, str], collections.deque] = {}

    def record(self, snap: Snapshot, kinds: set[str]) -> None:
        t = snap.timestamp
        if t <= self.end:
            return  # the same or an older snapshot again
        self.end = t
        # One history per source kind (cpu and cpu_host share the CPU seconds).
        sources = {src.kind: src for src in COUNTERS.values()}
        for kind, src in sources.items():
            if kind not in kinds:
                continue
            series_of = src.series
            for c in snap.contexts:
                for name, value in series_of(c).items():
                    self._series.setdefault((c.label, kind, name), collections.deque()
                                            ).append((t, value))
        start = t - self.window
        for key in list(self._series):
            d = self._series[key]
            while d and d[0][0] < start:
                d.popleft()
            if not d:
                del self._series[key]

    def rate(self, c: ContextSample, metric: str) -> float | None:
        src = COUNTERS[metric]
        kind, series_of, factor = src.kind, src.series, src.factor
        total, found = 0.0, False
        for name in series_of(c):
            d = self._series.get((c.label, kind, name))
            r = prom_rate(d, self.end - self.window, self.end) if d else None
            if r is not None:
                total += r
                found = True
        return total * factor if found else None
