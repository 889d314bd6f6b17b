"""The TOML configuration: one file, validated into a frozen dataclass tree.

Every problem is a `ConfigError` whose text is one line naming the file, the line
and the key (`conf/ctxmon.toml:12: [collector] interval: must be at least 1s, got
"500ms"`), so `ctxmon check-config` and the daemon can print it as is. Loading only
reads: it creates no directory and writes no file.

- `ctxmon.config.schema`: the dataclasses, defaults, ranges, ConfigError, JSON form;
- `ctxmon.config.tomlmap`: where keys are in the text (for the line of an error);
- `ctxmon.config.loader`: reading and validating (`load_config`).

The alert rules' model is `alerts.model` (imported here, never the reverse).
"""

from __future__ import annotations

from alerts.model import (
    ALERT_METRICS,
    AlertOverride,
    AlertRule,
    AlertsConfig,
    Level,
    rule_levels,
    severity_levels,
)

from .loader import format_duration, load_config, parse_duration
from . import schema
from .schema import *  # noqa: F403 (the schema's public names: its __all__)
from .tomlmap import _LineIndex  # noqa: F401 (tests check the line mapping)

__all__ = [
    "ALERT_METRICS", "AlertOverride", "AlertRule", "AlertsConfig", "Level", "format_duration",
    "load_config", "parse_duration", "rule_levels", "severity_levels", *schema.__all__,
]
