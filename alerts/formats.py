"""How alert values and summaries read: Python twins of the Prometheus template
functions the generated rules use, so a summary reads the same whichever side
rendered it."""

from __future__ import annotations

import datetime
import math
from typing import Callable

from collector import catalog

from .model import ALERT_METRICS

# Summaries when a rule sets none, per (metric, of_limit): the catalog's.
DEFAULT_SUMMARIES: dict = {m.name: m.summary for m in catalog.ALERT_METRICS}
DEFAULT_SUMMARIES.update({(m.name, True): m.summary_of_limit for m in catalog.ALERT_METRICS
                          if m.summary_of_limit})


def default_summary(metric: str, of_limit: bool) -> str:
    return DEFAULT_SUMMARIES.get((metric, of_limit)) or DEFAULT_SUMMARIES[metric]




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
