"""Alerts evaluated locally on every snapshot: the state machine.

Each `[[alerts.rule]]` (alerts.model.AlertRule) is compiled once; every poll the
daemon calls `AlertEngine.evaluate(snapshot)`. One alert instance exists per (rule,
context, severity) and moves

    inactive -> pending -> firing -> resolved (-> inactive)

as Prometheus does: pending at the first evaluation above the threshold, firing at
the first evaluation at least `for` later (at once when `for` is 0), resolved at the
first evaluation where the value is not above the clear level (hysteresis) or there
is no value any more (the context is gone, the rule removed). A pending alert whose
value drops back is simply inactive again. Each transition is one log line; nothing
is logged while a state holds.

The same definitions become Prometheus alerting rules in alerts.promrules; what each
metric is comes from the metric catalog, for both (rates are averages over
`rate_window`, "N%" levels are shares of the lowest hard limit, ...).

Notifications (alerts.notify) go through bounded queues to background threads, so a
hanging command or an unreachable Alertmanager never holds up a poll.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from collector import catalog
from collector.snapshot import ContextSample, Snapshot
from exporters.files import write_atomic
from exporters.names import clean_text, loggable

from .formats import _duration, _iso, default_summary, format_value, render_summary, value_unit
from .model import ALERT_METRICS, AlertOverride, AlertRule, AlertsConfig, Level, rule_levels
from .notify import AlertmanagerNotifier, CommandNotifier
from .rate import COUNTERS, CounterHistory

log = logging.getLogger("ctxmon.alerts")

INACTIVE, PENDING, FIRING, RESOLVED = "inactive", "pending", "firing", "resolved"
RESEND_SECONDS = 60.0  # Prometheus' default resend delay to Alertmanager
STATE_FILE = ".ctxmon-alert-state.json"  # in the [rrd] dir: the daemon's own data
STATE_VERSION = 1
RESUME_TOLERANCE = 3600.0  # as Prometheus' for-outage-tolerance: older state is stale
MAX_STATE_BYTES = 64 << 20

# metric -> a context's value of a gauge metric, from the catalog
GAUGES: dict[str, Callable[[ContextSample], float]] = {
    m.name: m.gauge for m in catalog.ALERT_METRICS if m.gauge is not None}
HOST_SHARE = frozenset(m.name for m in catalog.ALERT_METRICS if m.host_share)


def _limit(c: ContextSample, resources: tuple[str, ...]) -> float | None:
    """The lowest hard limit among `resources`, None when the context has none."""
    hard = [lim.hard for lim in c.limits if lim.resource in resources and lim.hard is not None]
    return float(min(hard)) if hard else None


def _ratio(value: float, limit: float) -> float:
    # As PromQL divides: x/0 is +Inf (or NaN for 0/0), which the comparisons handle.
    if limit == 0:
        return math.nan if value == 0 else math.inf
    return value / limit


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
    restored: bool = False  # resumed from the state file; no value seen since

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
                 cpus: int | None = None, host: str | None = None,
                 state_path: str | None = None):
        self.clock = clock
        # Pending and firing alerts are saved here at each change and resumed at start,
        # so a restart neither returns a firing alert to pending nor fires it again.
        self.state_path = state_path
        self._saved: Any = None  # what the file holds (to write only on changes)
        self._grace_until = 0.0  # resumed alerts without a value yet hold till then
        self.cpus = cpus or os.cpu_count() or 1
        self.host = host if host is not None else os.uname().nodename
        self.cfg = cfg
        self.evaluations = 0
        self._rules: list[CompiledRule] = []
        self._counters = CounterHistory(cfg.rate_window)
        self._instances: dict[tuple[str, str, str], _Instance] = {}
        self._firing: tuple[Alert, ...] = ()
        self._active: tuple[Alert, ...] = ()
        self._latest: Snapshot | None = None
        self._last_eval: float | None = None
        self._interval = RESEND_SECONDS
        self._command: CommandNotifier | None = None
        self._alertmanager: AlertmanagerNotifier | None = None
        self.reconfigure(cfg)
        if state_path is not None:
            self._resume(state_path)

    # -- configuration

    def reconfigure(self, cfg: AlertsConfig) -> None:
        """New rules and notifiers. Alert states carry over: an alert whose rule is
        gone resolves at the next evaluation, one whose levels changed is judged by
        the new levels from then on."""
        old = self.cfg
        self.cfg = cfg
        self._rules = [CompiledRule(r) for r in cfg.rules]
        self._counter_kinds = {COUNTERS[r.metric].kind for r in cfg.rules if r.metric in COUNTERS}
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
        self._save()
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
        if metric in GAUGES:
            v = GAUGES[metric](c)
        else:
            v = self._counters.rate(c, metric)
            if v is not None and metric in HOST_SHARE:
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
        if inst.restored:
            if value is None and settings is not None and now < self._grace_until:
                return None  # resumed: a rate needs two polls before it has a value
            inst.restored = False
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

    # -- persistence

    def _state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "alerts": [
            {"alert": i.name, "context": i.context, "severity": i.severity,
             "metric": i.metric, "state": i.state, "active_since": i.active_since,
             "fired_at": i.fired_at, "last_sent": i.last_sent}
            for i in sorted(self._instances.values(),
                            key=lambda i: (i.name, i.context, i.severity))]}

    def _save(self) -> None:
        """Write the pending and firing alerts when they changed (not their values:
        those are evaluated again after a restart). Atomic; a failure is logged when
        it starts and never stops an evaluation."""
        if self.state_path is None:
            return
        state = self._state()
        if state == self._saved:
            return
        data = (json.dumps({**state, "saved_at": self.clock()}, ensure_ascii=True,
                           separators=(",", ":")) + "\n").encode("ascii")
        try:
            write_atomic(self.state_path, data, mode=0o600)
        except OSError as e:
            if self._saved is not False:
                log.warning("cannot save the alert state to %s: %s", self.state_path,
                            e.strerror or e)
            self._saved = False
            return
        if self._saved is False:
            log.info("alert state saved again to %s", self.state_path)
        self._saved = state

    def _resume(self, path: str) -> None:
        """Take up the alerts saved in `path`. A state older than RESUME_TOLERANCE (the
        daemon was down long) or unreadable is not resumed: one log line says why."""
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read(MAX_STATE_BYTES))
            saved_at = float(data["saved_at"])
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            entries = list(data["alerts"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:
            why = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
            log.warning("alert state %s not resumed: %s", path, why[:200])
            return
        now = self.clock()
        age = now - saved_at
        if not 0 <= age <= RESUME_TOLERANCE:
            log.info("alert state %s not resumed: saved %.0f s ago", path, age)
            return
        rules = {r.rule.name: r for r in self._rules}
        for e in entries:
            try:
                key = (str(e["alert"]), str(e["context"]), str(e["severity"]))
                state = e["state"]
                rule = rules.get(key[0])
                if rule is None or state not in (PENDING, FIRING):
                    continue  # its rule is gone: nothing to resume
                settings = rule.settings(key[1])
                if settings is None:
                    continue
                levels = {sev: (t, c) for sev, t, c in settings.levels}
                if key[2] not in levels:
                    continue
                threshold, clear = levels[key[2]]
                fired_at = e.get("fired_at")
                last_sent = e.get("last_sent")
                inst = _Instance(
                    key[0], key[1], key[2], rule.metric, state, float(e["active_since"]),
                    None, threshold, clear, value_unit(rule.metric, settings.of_limit), "",
                    fired_at=None if fired_at is None else float(fired_at),
                    last_sent=None if last_sent is None else float(last_sent), restored=True)
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # one malformed entry costs only itself
            self._instances[key] = inst
        self._grace_until = now + self.cfg.rate_window
        active = sorted(self._instances.values(), key=lambda i: (i.name, i.context, i.severity))
        self._active = tuple(i.freeze() for i in active)
        self._firing = tuple(a for a in self._active if a.state == FIRING)
        self._saved = self._state()
        if self._instances:
            log.info("alert state resumed from %s (saved %.0f s ago): %d firing, %d pending",
                     path, age, len(self._firing), len(self._active) - len(self._firing))


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
