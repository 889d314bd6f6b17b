"""The alert state the daemon hands over to the renderer (alerts.handoff.write_alert_state).

The renderer is a child process and cannot ask the daemon's AlertEngine, so after each
evaluation the daemon writes `<graphs dir>/.ctxmon-alerts.json`: the pending and firing
alerts, and per context the levels of the rules that cover it, in each metric's own
unit. Here it is read back. A missing or malformed file is no alerts and no levels
(one debug line), never a failed run: the graphs matter more than the banner.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from alerts.handoff import ALERT_STATE_FILE, ALERT_STATE_VERSION

log = logging.getLogger("ctxmon.graphs")

SEVERITY_ORDER = {"critical": 0, "warning": 1}


@dataclass(frozen=True, slots=True)
class AlertShown:
    """A pending or firing alert, as the pages show it."""

    alert: str
    context: str
    severity: str
    state: str  # "pending" or "firing"
    metric: str
    summary: str
    since: float | None  # when it went pending
    fired_at: float | None


@dataclass(frozen=True, slots=True)
class LevelShown:
    """One level of a rule for one context, in the metric's own unit."""

    alert: str
    metric: str
    severity: str
    value: float


@dataclass(frozen=True)
class AlertState:
    alerts: tuple[AlertShown, ...] = ()
    levels: Mapping[str, tuple[LevelShown, ...]] = field(default_factory=lambda: MappingProxyType({}))
    host_cpus: int = 1
    skipped: int = 0  # entries left out for being malformed

    @property
    def firing(self) -> list[AlertShown]:
        """Firing alerts, the worst first; a warning is left out when the same alert
        of the same context is critical (it says nothing more)."""
        firing = [a for a in self.alerts if a.state == "firing"]
        critical = {(a.alert, a.context) for a in firing if a.severity == "critical"}
        shown = [a for a in firing if a.severity == "critical" or (a.alert, a.context) not in critical]
        return sorted(shown, key=_order)

    @property
    def pending(self) -> list[AlertShown]:
        return sorted((a for a in self.alerts if a.state == "pending"), key=_order)

    def levels_of(self, context: str) -> tuple[LevelShown, ...]:
        return self.levels.get(context, ())


EMPTY = AlertState()


def _order(a: AlertShown) -> tuple:
    return (SEVERITY_ORDER.get(a.severity, 2), a.alert, a.context)


def _text(d: Mapping[str, Any], key: str) -> str:
    v = d[key]
    if not isinstance(v, str):
        raise ValueError(key)
    return v


def _time(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(key)
    return float(v)


def parse_alert_state(text: str) -> AlertState:
    """The state from the file's text. A file that is not the expected JSON object
    raises ValueError; single malformed entries are skipped and counted."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != ALERT_STATE_VERSION:
        raise ValueError("not a version %d alert state" % ALERT_STATE_VERSION)
    raw_alerts, raw_levels = data.get("alerts", []), data.get("thresholds", {})
    if not isinstance(raw_alerts, list) or not isinstance(raw_levels, dict):
        raise ValueError("alerts must be a list and thresholds an object")
    cpus = data.get("host_cpus", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        cpus = 1
    skipped = 0
    alerts = []
    for a in raw_alerts:
        try:
            if not isinstance(a, dict):
                raise ValueError("not an object")
            shown = AlertShown(_text(a, "alert"), _text(a, "context"), _text(a, "severity"),
                               _text(a, "state"), _text(a, "metric"), _text(a, "summary"),
                               _time(a, "since"), _time(a, "fired_at"))
            if shown.state not in ("pending", "firing"):
                raise ValueError("state")
        except (KeyError, ValueError):
            skipped += 1
            continue
        alerts.append(shown)
    levels: dict[str, tuple[LevelShown, ...]] = {}
    for context, items in raw_levels.items():
        if not isinstance(items, list):
            skipped += 1
            continue
        out = []
        for t in items:
            try:
                if not isinstance(t, dict):
                    raise ValueError("not an object")
                v = t["value"]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError("value")
                out.append(LevelShown(_text(t, "alert"), _text(t, "metric"), _text(t, "severity"),
                                      float(v)))
            except (KeyError, ValueError):
                skipped += 1
        if out:
            levels[context] = tuple(out)
    return AlertState(tuple(alerts), MappingProxyType(levels), cpus, skipped)


def read_alert_state(graphs_dir: str) -> AlertState:
    """The state in `graphs_dir`, or EMPTY (with one debug line) when there is none
    or it cannot be read."""
    path = os.path.join(graphs_dir, ALERT_STATE_FILE)
    try:
        with open(path, "rb") as f:
            text = f.read(16 << 20).decode("utf-8")
        state = parse_alert_state(text)
    except FileNotFoundError:
        log.debug("no alert state in %s: no alert banner, no threshold lines", path)
        return EMPTY
    except (OSError, ValueError, RecursionError) as e:
        log.debug("alert state %s ignored (no banner, no threshold lines): %s", path,
                  getattr(e, "strerror", None) or e)
        return EMPTY
    if state.skipped:
        log.debug("alert state %s: %d malformed entries skipped", path, state.skipped)
    return state


__all__ = ["EMPTY", "AlertShown", "AlertState", "LevelShown", "parse_alert_state",
           "read_alert_state"]
