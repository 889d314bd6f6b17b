"""The alert rule model: what one `[[alerts.rule]]` says, validated.

`ctxmon.config` builds these from the TOML file (it imports this module, never the
reverse); the engine, the Prometheus rules generator and the graphs read them. Field
metadata "toml" names the key in the file where it differs from the field name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from collector import catalog

# metric -> (unit, the limits a "N%" level is a share of), from the metric catalog,
# where what each metric is (gauge or counter, its series, its PromQL twin) is declared.
ALERT_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    m.name: (m.unit, m.limit_resources) for m in catalog.ALERT_METRICS}
SEVERITIES = ("warning", "critical")
ALERT_PLACEHOLDERS = ("alert", "context", "severity", "value", "threshold")
_ALERT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class Level:
    """One threshold: an alert is active while the value is above it."""

    value: float
    of_limit: bool = False  # `value` is a share of the context's limit ("90%")


@dataclass(frozen=True, slots=True)
class AlertOverride:
    """`[alerts.rule.overrides."GLOB"]`: other levels or `for` for the contexts GLOB
    matches; the first matching override wins. The values are the effective ones: what
    the override does not set is the rule's own."""

    glob: str = field(metadata={"toml": None})
    warning: Level | None = None
    critical: Level | None = None
    clear: Level | None = None
    for_: float = field(default=0.0, metadata={"toml": "for"})


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One `[[alerts.rule]]`. `severity` is for `absent` rules, which have no levels."""

    name: str
    metric: str
    warning: Level | None = None
    critical: Level | None = None
    clear: Level | None = None  # a firing alert resolves at or below this (hysteresis)
    for_: float = field(default=0.0, metadata={"toml": "for"})
    contexts: tuple[str, ...] = ("*",)  # globs; for `absent`, context names
    exclude: tuple[str, ...] = ()
    overrides: tuple[AlertOverride, ...] = ()
    summary: str = ""  # "" for the metric's default (alerts.formats)
    severity: str = "critical"


def severity_levels(warning: Level | None, critical: Level | None, clear: Level | None
                    ) -> tuple[tuple[str, Level, Level], ...]:
    """(severity, threshold, clear level) for each level set.

    `clear` belongs to the lowest level set; the critical alert, when there is also a
    warning, resolves the same distance below its own threshold. No `clear`: an alert
    resolves as soon as the value is no longer above its threshold."""
    lowest = warning if warning is not None else critical
    out = []
    for severity, level in (("warning", warning), ("critical", critical)):
        if level is None:
            continue
        if clear is None:
            resolve = level
        elif level is lowest:
            resolve = clear
        else:
            # (12 digits: 98% - 5% is 93%, not 0.9299999999999999)
            resolve = Level(float(f"{level.value - (lowest.value - clear.value):.12g}"),
                            level.of_limit)
        out.append((severity, level, resolve))
    return tuple(out)


def rule_levels(rule: AlertRule, override: AlertOverride | None = None
                ) -> tuple[tuple[str, Level, Level], ...]:
    """The (severity, threshold, clear) of a rule, or of one of its overrides. An
    `absent` rule's value is 1 while the context is missing, 0 while it runs."""
    if rule.metric == "absent":
        return ((rule.severity, Level(0.0), Level(0.0)),)
    src = override if override is not None else rule
    return severity_levels(src.warning, src.critical, src.clear)


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """`[alerts]`: notification settings and the `[[alerts.rule]]` entries."""

    command: tuple[str, ...] = ()  # argv; a string in the file runs under /bin/sh -c
    command_timeout: float = 10.0
    alertmanager_url: str = ""  # base URL; alerts go to <url>/api/v2/alerts
    alertmanager_timeout: float = 10.0
    rate_window: float = 300.0  # rates (cpu, hits, traffic) are averaged over this
    rules: tuple[AlertRule, ...] = field(default=(), metadata={"toml": "rule"})
