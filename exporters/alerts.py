"""Alerts evaluated locally on every snapshot, with notifications.

Each `[[alerts.rule]]` (ctxmon.config.AlertRule) is compiled once; every poll the
daemon calls `AlertEngine.evaluate(snapshot)`. One alert instance exists per (rule,
context, severity) and moves

    inactive -> pending -> firing -> resolved (-> inactive)

as Prometheus does: pending at the first evaluation above the threshold, firing at
the first evaluation at least `for` later (at once when `for` is 0), resolved at the
first evaluation where the value is not above the clear level (hysteresis) or there
is no value any more (the context is gone, the rule removed). A pending alert whose
value drops back is simply inactive again. Each transition is one log line; nothing
is logged while a state holds.

The same definitions become Prometheus alerting rules in exporters.alert_rules; the
metric semantics here and the PromQL there are kept identical (rates are averages over
`rate_window`, "N%" levels are shares of the lowest hard limit, ...).

Notifications go through bounded queues to background threads, so a hanging command
or an unreachable Alertmanager never holds up a poll:
- `command`: run once per firing and once per resolved alert, the alert as JSON on
  stdin and as CTXMON_ALERT_* environment variables, killed after `command_timeout`;
- `alertmanager_url`: firing and resolved alerts POSTed to its v2 API
  (/api/v2/alerts), firing ones again every minute so Alertmanager keeps them.
"""

from __future__ import annotations

import collections
import datetime
import fnmatch
import json
import logging
import math
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.snapshot import ContextSample, Snapshot
from ctxmon.config import (
    ALERT_METRICS,
    AlertOverride,
    AlertRule,
    AlertsConfig,
    Level,
    rule_levels,
)

from .files import write_atomic
from .names import clean_text, loggable

log = logging.getLogger("ctxmon.alerts")

INACTIVE, PENDING, FIRING, RESOLVED = "inactive", "pending", "firing", "resolved"
RESEND_SECONDS = 60.0  # Prometheus' default resend delay to Alertmanager
QUEUE_SIZE = 1000  # notifications waiting for a notifier thread; more are dropped

# Summaries when a rule sets none, per (metric, of_limit).
DEFAULT_SUMMARIES = {
    "cpu": "{context}: CPU {value} of one CPU (threshold {threshold})",
    "cpu_host": "{context}: CPU {value} of the host's CPUs (threshold {threshold})",
    "rss": "{context}: resident memory {value} (threshold {threshold})",
    ("rss", True): "{context}: resident memory at {value} of its limit (threshold {threshold})",
    "vsz": "{context}: virtual memory {value} (threshold {threshold})",
    ("vsz", True): "{context}: virtual memory at {value} of its limit (threshold {threshold})",
    "processes": "{context}: {value} processes (threshold {threshold})",
    "threads": "{context}: {value} threads (threshold {threshold})",
    ("threads", True): "{context}: threads at {value} of the task limit "
                       "(threshold {threshold})",
    "limit_hits": "{context}: limits refused {value} (threshold {threshold})",
    "net_receive_bps": "{context}: receiving {value} (threshold {threshold})",
    "net_transmit_bps": "{context}: sending {value} (threshold {threshold})",
    "traffic_receive_bps": "{context}: receiving {value} (threshold {threshold})",
    "traffic_transmit_bps": "{context}: sending {value} (threshold {threshold})",
    "absent": "{context} is not running",
}


def default_summary(metric: str, of_limit: bool) -> str:
    return DEFAULT_SUMMARIES.get((metric, of_limit)) or DEFAULT_SUMMARIES[metric]


# ------------------------------------------------------------------ value formats
# Python twins of the Prometheus template functions the generated rules use, so a
# summary reads the same whichever side rendered it.


def _g4(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return "%.4g" % v


def humanize(v: float) -> str:
    """Prometheus' `humanize`: SI prefixes, 4 significant digits."""
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    if abs(v) >= 1:
        prefix = ""
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix = p
            v /= 1000
        return _g4(v) + prefix
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return _g4(v) + prefix


def humanize1024(v: float) -> str:
    """Prometheus' `humanize1024`: binary prefixes."""
    if abs(v) <= 1 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix = p
        v /= 1024
    return _g4(v) + prefix


def humanize_percentage(v: float) -> str:
    """Prometheus' `humanizePercentage`."""
    return _g4(v * 100) + "%"


# unit -> (Python formatter, Prometheus template function, suffix)
VALUE_FORMATS: dict[str, tuple[Callable[[float], str], str, str]] = {
    "ratio": (humanize_percentage, "humanizePercentage", ""),
    "bytes": (humanize1024, "humanize1024", "B"),
    "count": (humanize, "humanize", ""),
    "per_second": (humanize, "humanize", "/s"),
    "bits_per_second": (humanize, "humanize", "bit/s"),
    "": (humanize, "humanize", ""),
}


def value_unit(metric: str, of_limit: bool) -> str:
    """The unit a rule's value is in: a share of the limit is a ratio."""
    return "ratio" if of_limit else ALERT_METRICS[metric][0]


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    fmt, _func, suffix = VALUE_FORMATS[unit]
    return fmt(value) + suffix


def render_summary(template: str, *, alert: str, context: str, severity: str,
                   value: float | None, threshold: float, unit: str) -> str:
    return template.format(alert=alert, context=context, severity=severity,
                           value=format_value(value, unit),
                           threshold=format_value(threshold, unit))


def _duration(seconds: float) -> str:
    """5m, 90s, 2.7s: for log lines."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{round(seconds, 1 if seconds < 60 else 0):g}s"


def _iso(t: float) -> str:
    return (datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"))


# ------------------------------------------------------------------- metric values

def _limit(c: ContextSample, resources: tuple[str, ...]) -> float | None:
    """The lowest hard limit among `resources`, None when the context has none."""
    hard = [lim.hard for lim in c.limits if lim.resource in resources and lim.hard is not None]
    return float(min(hard)) if hard else None


def _ratio(value: float, limit: float) -> float:
    # As PromQL divides: x/0 is +Inf (or NaN for 0/0), which the comparisons handle.
    if limit == 0:
        return math.nan if value == 0 else math.inf
    return value / limit


_GAUGES: dict[str, Callable[[ContextSample], float]] = {
    "rss": lambda c: float(c.rss_bytes),
    "vsz": lambda c: float(c.vsz_bytes),
    "processes": lambda c: float(c.processes),
    "threads": lambda c: float(c.threads),
}

# metric -> (counter kind, the context's series of that kind {series: value}, factor)
_COUNTERS: dict[str, tuple[str, Callable[[ContextSample], dict[str, float]], float]] = {
    "cpu": ("cpu", lambda c: {"user": c.cpu_user_seconds, "system": c.cpu_system_seconds}, 1.0),
    "limit_hits": ("hits", lambda c: {lim.resource: float(lim.hits) for lim in c.limits}, 1.0),
    "net_receive_bps": ("rx", lambda c: {i.name: float(i.rx_bytes) for i in c.interfaces}, 8.0),
    "net_transmit_bps": ("tx", lambda c: {i.name: float(i.tx_bytes) for i in c.interfaces}, 8.0),
    "traffic_receive_bps": ("traffic_rx", lambda c: {} if c.traffic is None else
                            {c.traffic.method: float(c.traffic.rx_bytes)}, 8.0),
    "traffic_transmit_bps": ("traffic_tx", lambda c: {} if c.traffic is None else
                             {c.traffic.method: float(c.traffic.tx_bytes)}, 8.0),
}
_COUNTERS["cpu_host"] = _COUNTERS["cpu"]


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


class _CounterHistory:
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
        for metric, (kind, series_of, _factor) in _COUNTERS.items():
            if kind not in kinds or metric == "cpu_host":
                continue
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
        kind, series_of, factor = _COUNTERS[metric]
        total, found = 0.0, False
        for name in series_of(c):
            d = self._series.get((c.label, kind, name))
            r = prom_rate(d, self.end - self.window, self.end) if d else None
            if r is not None:
                total += r
                found = True
        return total * factor if found else None


# ------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Settings:
    """What applies to one context under one rule: the rule's own levels or those of
    the first override whose glob matches the context."""

    override: AlertOverride | None
    levels: tuple[tuple[str, Level, Level], ...]  # (severity, threshold, clear)
    for_: float
    of_limit: bool
    summary: str


class CompiledRule:
    """An AlertRule with its context matching and per-context settings."""

    def __init__(self, rule: AlertRule):
        self.rule = rule
        self.metric = rule.metric
        self.unit_of_limit = ALERT_METRICS[rule.metric][1]
        self.base = self._settings(None)
        self.by_override = [(o.glob, self._settings(o)) for o in rule.overrides]
        self._cache: dict[str, Settings | None] = {}

    def _settings(self, o: AlertOverride | None) -> Settings:
        levels = rule_levels(self.rule, o)
        of_limit = any(t.of_limit for _s, t, _c in levels)
        return Settings(
            override=o, levels=levels,
            for_=o.for_ if o is not None else self.rule.for_, of_limit=of_limit,
            summary=self.rule.summary or default_summary(self.metric, of_limit),
        )

    def settings(self, context: str) -> Settings | None:
        """The settings for a context this rule covers, None for one it does not."""
        try:
            return self._cache[context]
        except KeyError:
            pass
        s = None
        rule = self.rule
        if rule.metric == "absent":
            covered = context in rule.contexts
        else:
            covered = (any(fnmatch.fnmatchcase(context, g) for g in rule.contexts)
                       and not any(fnmatch.fnmatchcase(context, g) for g in rule.exclude))
        if covered:
            s = next((st for g, st in self.by_override if fnmatch.fnmatchcase(context, g)),
                     self.base)
        if len(self._cache) > 10000:  # contexts come and go; keep the cache bounded
            self._cache.clear()
        self._cache[context] = s
        return s


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert instance as it stands (or stood, at a transition)."""

    name: str
    context: str
    severity: str
    metric: str
    state: str  # pending, firing, resolved (or inactive after a pending one cleared)
    value: float | None  # None when there is no value any more (context gone ...)
    threshold: float
    clear: float
    unit: str  # of value, threshold and clear: see VALUE_FORMATS
    summary: str
    active_since: float  # when it went pending (or firing when `for` is 0)
    fired_at: float | None = None
    resolved_at: float | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {"alertname": self.name, "context": clean_text(self.context),
                "severity": self.severity}


@dataclass(frozen=True, slots=True)
class Transition:
    previous: str  # inactive, pending or firing
    alert: Alert  # after the transition: alert.state is the new state
    reason: str

    @property
    def state(self) -> str:
        return self.alert.state


@dataclass(frozen=True, slots=True)
class Threshold:
    """A level of a rule for one context, in the metric's own unit (a "N%" level is
    converted with the context's current limit), for drawing on graphs."""

    alert: str
    metric: str
    severity: str
    value: float


@dataclass
class _Instance:
    name: str
    context: str
    severity: str
    metric: str
    state: str
    active_since: float
    value: float | None
    threshold: Level
    clear: Level
    unit: str
    summary: str
    fired_at: float | None = None
    last_sent: float | None = None  # last time it went to Alertmanager

    def freeze(self, state: str | None = None, resolved_at: float | None = None) -> Alert:
        return Alert(self.name, self.context, self.severity, self.metric,
                     state or self.state, self.value, self.threshold.value, self.clear.value,
                     self.unit, self.summary, self.active_since, self.fired_at, resolved_at)


# --------------------------------------------------------------------- the engine


class AlertEngine:
    """Evaluates the rules of `cfg` on each snapshot; notifies in the background.

    `clock` gives the time the state machine runs on (`for`, startsAt); rates use the
    snapshots' own timestamps. `cpus` is what cpu_host divides by (default: this
    host's). Call `close()` when done, to stop the notifier threads."""

    def __init__(self, cfg: AlertsConfig, clock: Callable[[], float] = time.time,
                 cpus: int | None = None, host: str | None = None):
        self.clock = clock
        self.cpus = cpus or os.cpu_count() or 1
        self.host = host if host is not None else os.uname().nodename
        self.cfg = cfg
        self.evaluations = 0
        self._rules: list[CompiledRule] = []
        self._counters = _CounterHistory(cfg.rate_window)
        self._instances: dict[tuple[str, str, str], _Instance] = {}
        self._firing: tuple[Alert, ...] = ()
        self._active: tuple[Alert, ...] = ()
        self._latest: Snapshot | None = None
        self._last_eval: float | None = None
        self._interval = RESEND_SECONDS
        self._command: CommandNotifier | None = None
        self._alertmanager: AlertmanagerNotifier | None = None
        self.reconfigure(cfg)

    # -- configuration

    def reconfigure(self, cfg: AlertsConfig) -> None:
        """New rules and notifiers. Alert states carry over: an alert whose rule is
        gone resolves at the next evaluation, one whose levels changed is judged by
        the new levels from then on."""
        old = self.cfg
        self.cfg = cfg
        self._rules = [CompiledRule(r) for r in cfg.rules]
        self._counter_kinds = {_COUNTERS[r.metric][0] for r in cfg.rules if r.metric in _COUNTERS}
        self._counters.window = cfg.rate_window
        if self._command is None or (old.command, old.command_timeout) != (
                cfg.command, cfg.command_timeout):
            if self._command is not None:
                self._command.close()
            self._command = CommandNotifier(cfg.command, cfg.command_timeout) \
                if cfg.command else None
        if self._alertmanager is None or (old.alertmanager_url, old.alertmanager_timeout) != (
                cfg.alertmanager_url, cfg.alertmanager_timeout):
            if self._alertmanager is not None:
                self._alertmanager.close()
            self._alertmanager = AlertmanagerNotifier(
                cfg.alertmanager_url, cfg.alertmanager_timeout) if cfg.alertmanager_url else None

    @property
    def rules(self) -> list[CompiledRule]:
        return list(self._rules)

    # -- evaluation

    def evaluate(self, snap: Snapshot) -> list[Transition]:
        """One evaluation on a new snapshot; returns the transitions it made."""
        now = self.clock()
        if self._last_eval is not None and now > self._last_eval:
            self._interval = now - self._last_eval
        self._last_eval = now
        self._latest = snap
        self.evaluations += 1
        self._counters.record(snap, self._counter_kinds)
        transitions: list[Transition] = []
        seen: set[tuple[str, str, str]] = set()
        for rule in self._rules:
            for context, settings, value in self._values(rule, snap):
                for severity, threshold, clear in settings.levels:
                    key = (rule.rule.name, context, severity)
                    seen.add(key)
                    t = self._step(key, rule, settings, threshold, clear, value, now)
                    if t is not None:
                        transitions.append(t)
        for key in [k for k in self._instances if k not in seen]:
            t = self._step(key, None, None, None, None, None, now)
            if t is not None:
                transitions.append(t)
        active = sorted(self._instances.values(), key=lambda i: (i.name, i.context, i.severity))
        self._active = tuple(i.freeze() for i in active)
        self._firing = tuple(a for a in self._active if a.state == FIRING)
        for t in transitions:
            _log_transition(t)
        self._notify(transitions, now)
        return transitions

    def _values(self, rule: CompiledRule, snap: Snapshot
                ) -> Iterator[tuple[str, Settings, float | None]]:
        metric = rule.metric
        if metric == "absent":
            present = {c.label for c in snap.contexts}
            for name in rule.rule.contexts:
                yield name, rule.settings(name), 0.0 if name in present else 1.0
            return
        for c in snap.contexts:
            settings = rule.settings(c.label)
            if settings is None or not settings.levels:
                continue
            yield c.label, settings, self.value(c, metric, settings.of_limit)

    def value(self, c: ContextSample, metric: str, of_limit: bool = False) -> float | None:
        """A context's value of `metric` now (a share of its limit when `of_limit`)."""
        if metric in _GAUGES:
            v = _GAUGES[metric](c)
        else:
            v = self._counters.rate(c, metric)
            if v is not None and metric == "cpu_host":
                v /= self.cpus
        if v is None or not of_limit:
            return v
        limit = _limit(c, ALERT_METRICS[metric][1])
        return None if limit is None else _ratio(v, limit)

    def _step(self, key, rule: CompiledRule | None, settings: Settings | None,
              threshold: Level | None, clear: Level | None, value: float | None,
              now: float) -> Transition | None:
        name, context, severity = key
        inst = self._instances.get(key)
        if settings is not None:
            above = value is not None and value > threshold.value
            render = (lambda: render_summary(
                settings.summary, alert=name, context=context, severity=severity,
                value=value, threshold=threshold.value, unit=inst.unit))
        else:
            above = False
        if inst is None:
            if not above:
                return None
            inst = _Instance(name, context, severity, rule.metric, PENDING, now, value,
                             threshold, clear, value_unit(rule.metric, settings.of_limit), "")
            inst.summary = render()
            self._instances[key] = inst
            if settings.for_ <= 0:
                inst.state, inst.fired_at = FIRING, now
                return Transition(INACTIVE, inst.freeze(),
                                  f"value {self._show(inst, value)} > {self._show(inst)}")
            return Transition(INACTIVE, inst.freeze(),
                              f"value {self._show(inst, value)} > {self._show(inst)}; "
                              f"fires after {_duration(settings.for_)}")
        if settings is not None:
            # Levels and unit may have changed (reload, an override): judge by today's.
            inst.threshold, inst.clear = threshold, clear
            inst.unit = value_unit(inst.metric, settings.of_limit)
        if inst.state == PENDING:
            if not above:
                del self._instances[key]
                inst.value = value
                return Transition(PENDING, inst.freeze(INACTIVE), self._why_not(inst, value, rule))
            inst.value = value
            inst.summary = render()
            if now - inst.active_since >= settings.for_:
                inst.state, inst.fired_at = FIRING, now
                return Transition(PENDING, inst.freeze(),
                                  f"value {self._show(inst, value)} > {self._show(inst)} "
                                  f"for {_duration(now - inst.active_since)}")
            return None
        # firing: resolves only at or below the clear level (NaN included, as PromQL)
        if settings is not None and value is not None and value > clear.value:
            inst.value = value
            inst.summary = render()
            return None
        del self._instances[key]
        inst.value = value
        return Transition(FIRING, inst.freeze(RESOLVED, resolved_at=now),
                          self._why_not(inst, value, rule, clear=True))

    def _show(self, inst: _Instance, value: float | None = None, level: str = "threshold"
              ) -> str:
        if value is None:
            value = getattr(inst, level).value
        return format_value(value, inst.unit)

    def _why_not(self, inst: _Instance, value: float | None, rule: CompiledRule | None,
                 clear: bool = False) -> str:
        if rule is None:
            if not any(r.rule.name == inst.name for r in self._rules):
                return "its rule was removed"
            if self._latest is not None and self._latest.context(inst.context) is None:
                return "the context is gone"
            return "the rule no longer covers the context"
        if value is None:
            return "no value (no limit, or too few samples for a rate)"
        level = "clear" if clear else "threshold"
        return f"value {self._show(inst, value)} <= {self._show(inst, level=level)}"

    # -- views

    def firing(self) -> list[Alert]:
        """The firing alerts after the latest evaluation (safe from other threads)."""
        return list(self._firing)

    def active(self) -> list[Alert]:
        """Pending and firing alerts after the latest evaluation."""
        return list(self._active)

    def thresholds(self, context: str) -> list[Threshold]:
        """The levels that apply to a context, in its metrics' own units."""
        snap = self._latest
        c = snap.context(context) if snap is not None else None
        return self._thresholds(context, c)

    def all_thresholds(self) -> dict[str, list[Threshold]]:
        """thresholds() of every context of the latest snapshot that has any."""
        out: dict[str, list[Threshold]] = {}
        for c in (self._latest.contexts if self._latest is not None else ()):
            levels = self._thresholds(c.label, c)
            if levels:
                out[c.label] = levels
        return out

    def _thresholds(self, context: str, c: ContextSample | None) -> list[Threshold]:
        out = []
        for rule in self._rules:
            if rule.metric == "absent":
                continue
            s = rule.settings(context)
            if s is None:
                continue
            for severity, level, _clear in s.levels:
                value = level.value
                if level.of_limit:
                    limit = _limit(c, rule.unit_of_limit) if c is not None else None
                    if limit is None:
                        continue
                    value *= limit
                out.append(Threshold(rule.rule.name, rule.metric, severity, value))
        return out

    @property
    def notification_failures(self) -> dict[str, int]:
        return {"command": self._command.failures if self._command else 0,
                "alertmanager": self._alertmanager.failures if self._alertmanager else 0}

    # -- notification

    def payload(self, a: Alert) -> dict[str, Any]:
        """An alert in Alertmanager's v2 format, with its figures beside."""
        status = RESOLVED if a.state == RESOLVED else FIRING
        ends = a.resolved_at if a.resolved_at is not None else \
            self.clock() + 4 * max(RESEND_SECONDS, self._interval)
        return {
            "status": status,
            "labels": {**a.labels, "host": clean_text(self.host)},
            "annotations": {"summary": clean_text(a.summary),
                            "value": format_value(a.value, a.unit),
                            "threshold": format_value(a.threshold, a.unit)},
            "startsAt": _iso(a.active_since),
            "endsAt": _iso(ends),
            "metric": a.metric,
            "value": a.value if a.value is not None and math.isfinite(a.value) else None,
            "threshold": a.threshold,
        }

    def _notify(self, transitions: list[Transition], now: float) -> None:
        sent = [t.alert for t in transitions if t.state in (FIRING, RESOLVED)]
        if self._command is not None:
            for a in sent:
                self._command.submit(self.payload(a))
        if self._alertmanager is not None:
            batch = {(a.name, a.context, a.severity): a for a in sent}
            for key, inst in self._instances.items():
                if inst.state == FIRING and (
                        key in batch or inst.last_sent is None
                        or now - inst.last_sent >= RESEND_SECONDS):
                    inst.last_sent = now
                    batch[key] = inst.freeze()
            if batch:
                fields = ("labels", "annotations", "startsAt", "endsAt")
                self._alertmanager.submit(
                    [{k: p[k] for k in fields} for p in map(self.payload, batch.values())])

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until the notifications queued so far were handled (or `timeout` passed)."""
        deadline = time.monotonic() + timeout
        return all(n.wait_idle(max(0.0, deadline - time.monotonic()))
                   for n in (self._command, self._alertmanager) if n is not None)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the notifier threads, giving queued notifications `timeout` seconds."""
        for n in (self._command, self._alertmanager):
            if n is not None:
                n.close(timeout)


def _log_transition(t: Transition) -> None:
    a = t.alert
    head = f"alert {a.name} {a.severity} for {loggable(a.context)}"
    if t.state == FIRING:
        log.warning("%s: firing (%s): %s", head, t.reason, loggable(a.summary))
    elif t.state == PENDING:
        log.info("%s: pending (%s)", head, t.reason)
    elif t.state == RESOLVED:
        log.info("%s: resolved (%s)", head, t.reason)
    else:
        log.info("%s: no longer pending (%s)", head, t.reason)


# ---------------------------------------------------------------------- notifiers


class NotifyError(Exception):
    """A notification that did not go through; the text says why, on one line."""


class _Notifier:
    """A daemon thread working through a bounded queue. Items that do not fit are
    dropped and counted (a poll never waits). Failures are counted and logged: every
    one when `log_every_failure` (each is about another alert), else the first of a
    run and the recovery."""

    kind = "notifier"
    log_every_failure = True

    def __init__(self) -> None:
        self.failures = 0
        self.dropped = 0
        self.sent = 0
        self._failing = False
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.kind}",
                                        daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("alert %s: queue full, %d notification(s) dropped so far",
                            self.kind, self.dropped)
            return False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                try:
                    self.handle(item)
                except Exception as e:  # the thread never dies of one notification
                    self._failed(str(e) if isinstance(e, NotifyError)
                                 else f"{type(e).__name__}: {e}")
                else:
                    self.sent += 1
                    if self._failing:
                        log.info("alert %s: working again", self.kind)
                    self._failing = False
            finally:
                self._queue.task_done()

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self.log_every_failure or not self._failing:
            log.warning("alert %s failed: %s", self.kind, why)
        else:
            log.debug("alert %s failed again: %s", self.kind, why)
        self._failing = True

    def handle(self, item: Any) -> None:
        raise NotImplementedError

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every queued notification was handled (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and self._thread.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("alert %s: still busy at shutdown; %d notification(s) not sent",
                        self.kind, self._queue.qsize())


class CommandNotifier(_Notifier):
    """Runs the command once per alert: JSON on stdin, CTXMON_ALERT_* in the environment."""

    kind = "command"

    def __init__(self, argv: tuple[str, ...], timeout: float):
        self.argv = list(argv)
        self.timeout = timeout
        super().__init__()

    @staticmethod
    def environment(p: Mapping[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        labels, notes = p["labels"], p["annotations"]
        env.update({
            "CTXMON_ALERT_STATUS": p["status"],
            "CTXMON_ALERT_NAME": labels["alertname"],
            "CTXMON_ALERT_CONTEXT": labels["context"],
            "CTXMON_ALERT_SEVERITY": labels["severity"],
            "CTXMON_ALERT_HOST": labels.get("host", ""),
            "CTXMON_ALERT_METRIC": p["metric"],
            "CTXMON_ALERT_VALUE": "" if p["value"] is None else repr(p["value"]),
            "CTXMON_ALERT_THRESHOLD": repr(p["threshold"]),
            "CTXMON_ALERT_SUMMARY": notes["summary"],
            "CTXMON_ALERT_STARTS_AT": p["startsAt"],
            "CTXMON_ALERT_ENDS_AT": p["endsAt"] if p["status"] == RESOLVED else "",
        })
        return env

    def handle(self, p: Mapping[str, Any]) -> None:
        what = (f"{p['labels']['alertname']} {p['labels']['severity']} "
                f"{loggable(p['labels']['context'])} {p['status']}")
        data = json.dumps(p, ensure_ascii=False).encode() + b"\n"
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=self.environment(p),
                                    start_new_session=True, close_fds=True)
        except OSError as e:
            raise NotifyError(f"{what}: cannot run {self.argv[0]}: {e.strerror or e}") from None
        try:
            out, _ = proc.communicate(data, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its children too
            except OSError:
                proc.kill()
            proc.communicate()
            raise NotifyError(f"{what}: killed after {self.timeout:g}s") from None
        if proc.returncode != 0:
            last = (out.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
            raise NotifyError(f"{what}: exit status {proc.returncode}"
                              + (f": {loggable(last[:200])}" if last else ""))
        log.debug("alert command ran for %s", what)


class AlertmanagerNotifier(_Notifier):
    """POSTs batches of alerts to <url>/api/v2/alerts."""

    kind = "alertmanager"
    log_every_failure = False  # one down Alertmanager is one warning, not one a minute

    def __init__(self, url: str, timeout: float):
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.timeout = timeout
        super().__init__()

    def handle(self, alerts: list[dict]) -> None:
        body = json.dumps(alerts).encode()
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                r.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace").strip()
            raise NotifyError(f"{self.url}: HTTP {e.code} {loggable(detail)}") from None
        except (urllib.error.URLError, OSError) as e:
            raise NotifyError(f"{self.url}: {getattr(e, 'reason', e)}") from None


# ------------------------------------------------------------ hand-over to graphs

ALERT_STATE_FILE = ".ctxmon-alerts.json"  # in [graphs] dir; a dot-file: /graphs/ never serves it
ALERT_STATE_VERSION = 1
_state_write_failing: dict[str, str] = {}  # path -> the error logged, until a write succeeds


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None  # JSON has no NaN or Inf


def alert_state(engine: AlertEngine | None) -> dict[str, Any]:
    """What the graph renderer (a child process) needs of the alerts, as plain data:
    the pending and firing alerts, and per context the levels that apply, in each
    metric's own unit (bytes, counts, a ratio of one CPU, of the host, bits/s).
    No engine (no rules): no alerts and no levels."""
    alerts, levels = [], {}
    if engine is not None:
        for a in engine.active():
            if a.state not in (PENDING, FIRING):
                continue
            alerts.append({
                "alert": a.name, "context": a.context, "severity": a.severity,
                "state": a.state, "metric": a.metric, "unit": a.unit,
                "value": _finite(a.value), "threshold": _finite(a.threshold),
                "since": a.active_since, "fired_at": a.fired_at, "summary": a.summary,
            })
        for context, thresholds in engine.all_thresholds().items():
            levels[context] = [{"alert": t.alert, "metric": t.metric, "severity": t.severity,
                                "value": t.value} for t in thresholds if math.isfinite(t.value)]
    return {"version": ALERT_STATE_VERSION,
            "host_cpus": engine.cpus if engine is not None else os.cpu_count() or 1,
            "alerts": alerts, "thresholds": levels}


def write_alert_state(engine: AlertEngine | None, path: str) -> bool:
    """Write alert_state(engine) as JSON to `path` (normally ALERT_STATE_FILE in the
    graphs folder) when it differs from what the file holds; True when it wrote.

    Atomic (a temporary file in the same folder, then a rename), so the renderer never
    reads half a file. Never raises: a failure is logged once when it starts and once
    when it clears, and gives False."""
    # ensure_ascii: names holding undecodable bytes (lone surrogates) stay valid JSON
    # text and read back as the same str.
    data = (json.dumps(alert_state(engine), sort_keys=True, ensure_ascii=True,
                       separators=(",", ":")) + "\n").encode("ascii")
    try:
        with open(path, "rb") as f:
            if f.read(len(data) + 1) == data:
                _state_written(path)
                return False
    except OSError:
        pass  # missing or unreadable: written anew
    try:
        write_atomic(path, data)
    except OSError as e:
        why = e.strerror or str(e)
        if _state_write_failing.get(path) != why:
            log.warning("cannot write the alert state for the graphs (%s): %s", path, why)
        _state_write_failing[path] = why
        return False
    _state_written(path)
    return True


def _state_written(path: str) -> None:
    if _state_write_failing.pop(path, None) is not None:
        log.info("alert state for the graphs written again (%s)", path)


# ------------------------------------------------------------------ Prometheus


def alert_metric_family(engine: AlertEngine | None) -> Metric:
    """`ctxmon_alert_firing{alert,context,severity} 1` per firing alert."""
    fam = GaugeMetricFamily(
        "ctxmon_alert_firing",
        "1 for each alert firing in ctxmon's own evaluation of its [alerts] rules.",
        labels=("alert", "context", "severity"))
    for a in (engine.firing() if engine is not None else ()):
        fam.add_metric([a.name, clean_text(a.context), a.severity], 1)
    return fam


def host_cpus_family(cpus: int) -> Metric:
    """`ctxmon_host_cpus`: what the cpu_host rules divide by, on both sides."""
    fam = GaugeMetricFamily("ctxmon_host_cpus", "CPUs of the host (cpu_host alerts are "
                            "a context's CPU use divided by this).")
    fam.add_metric([], cpus)
    return fam


class AlertCollector(Collector):
    """The alert series for a Prometheus registry: firing alerts, the host's CPUs and
    notification failures. `registry.register(AlertCollector(engine))`."""

    def __init__(self, get_engine: Callable[[], AlertEngine | None] | AlertEngine,
                 host_cpus: bool = True):
        self.get_engine = get_engine if callable(get_engine) and not isinstance(
            get_engine, AlertEngine) else (lambda: get_engine)
        # False beside a SnapshotCollector, which exports ctxmon_host_cpus itself
        # (catalog): one family must not appear twice in a scrape.
        self.host_cpus = host_cpus

    def describe(self) -> list[Metric]:
        return []  # the names are fixed and unique; no need to collect at registration

    def collect(self) -> Iterable[Metric]:
        engine = self.get_engine()
        yield alert_metric_family(engine)
        if self.host_cpus:
            yield host_cpus_family(engine.cpus if engine is not None else os.cpu_count() or 1)
        fam = CounterMetricFamily("ctxmon_alert_notification_failures",
                                  "Alert notifications that failed, per notifier.",
                                  labels=("notifier",))
        for kind, n in (engine.notification_failures if engine is not None else {}).items():
            fam.add_metric([kind], n)
        yield fam


__all__ = [
    "ALERT_STATE_FILE", "Alert", "AlertCollector", "AlertEngine", "AlertmanagerNotifier",
    "CommandNotifier", "CompiledRule", "NotifyError", "Settings", "Threshold", "Transition",
    "alert_metric_family", "alert_state", "default_summary", "format_value", "host_cpus_family",
    "humanize", "humanize1024", "humanize_percentage", "prom_rate", "render_summary",
    "value_unit", "write_alert_state",
]
