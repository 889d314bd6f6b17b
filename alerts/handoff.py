"""The alert hand-off file: what the daemon tells the graph renderer (a child process)
about the alerts, in `<graphs dir>/.ctxmon-alerts.json`.

The one schema both sides import: the daemon writes it (`write_alert_state`), the
renderer reads it (graphs.alertstate). Version ALERT_STATE_VERSION:

    {"version": 1, "host_cpus": N,
     "alerts": [{ALERT_KEYS...}],            # pending and firing alerts
     "thresholds": {context: [{LEVEL_KEYS...}]}}   # levels in each metric's own unit
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from exporters.files import write_atomic
from exporters.sink import Complaints

log = logging.getLogger("ctxmon.alerts")

ALERT_KEYS = ("alert", "context", "severity", "state", "metric", "unit", "value",
              "threshold", "since", "fired_at", "summary")
LEVEL_KEYS = ("alert", "metric", "severity", "value")
ALERT_STATE_FILE = ".ctxmon-alerts.json"  # in [graphs] dir; a dot-file: /graphs/ never serves it
ALERT_STATE_VERSION = 1
_state_write_failing = Complaints(log)  # by path: logged when it starts and when it clears


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None  # JSON has no NaN or Inf


def alert_state(engine: "AlertEngine | None") -> dict[str, Any]:
    """What the graph renderer (a child process) needs of the alerts, as plain data:
    the pending and firing alerts, and per context the levels that apply, in each
    metric's own unit (bytes, counts, a ratio of one CPU, of the host, bits/s).
    No engine (no rules): no alerts and no levels."""
    alerts, levels = [], {}
    if engine is not None:
        for a in engine.active():
            if a.state not in ("pending", "firing"):
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


def write_alert_state(engine: "AlertEngine | None", path: str) -> bool:
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
        _state_write_failing.complain(
            path, why, text=f"cannot write the alert state for the graphs ({path}): {why}")
        return False
    _state_written(path)
    return True


def _state_written(path: str) -> None:
    _state_write_failing.release(path, text=f"alert state for the graphs written again ({path})")
