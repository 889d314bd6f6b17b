"""The configuration's schema: one frozen dataclass per table, their defaults, the
ranges the loader enforces, the one-line ConfigError, and the config as JSON (for the
graph renderer child, which runs on the daemon's validated config, not the file).

Field metadata "toml" names the key in the file when it differs from the field
name; None marks a field that is no key (Config.source_path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

from alerts.model import AlertsConfig
from ctxmon.errors import ConfigError, _one_line  # noqa: F401 (re-exported)
from exporters.addresses import parse_listen as _parse_listen
from exporters.passwords import BCRYPT_COSTS  # noqa: F401 (one range, shared)

# What `ctxmon.config` re-exports (the package imports these by this list).
__all__ = [
    "DEFAULT_INTERVAL", "DEFAULT_LISTEN", "LIMITS", "RULE_KEYS", "CollectorConfig", "Config",
    "ConfigError", "DaemonConfig", "ExporterConfig", "GraphsConfig", "LogConfig", "RrdConfig",
    "Rule", "TrafficConfig", "config_from_json", "config_to_json", "default_config",
    "parse_listen", "toml_keys",
]

SOURCES = ("auto", "vserver", "cgroup")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_INTERVAL = 60.0
DEFAULT_LISTEN = "127.0.0.1:9717"

# Sane ranges: whatever check-config accepts must start and reload (timers,
# datetimes and buffers all have limits of their own far below what TOML can say).
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
LIMITS = {  # (low, high) seconds
    "interval": (1.0, DAY),  # [collector] interval, [rrd] step, [graphs] interval
    "retention": (1.0, 36500 * DAY),
    "timeout": (1.0, HOUR),  # command_timeout, alertmanager_timeout
    "rate_window": (2.0, DAY),
    "for": (0.0, 365 * DAY),
    "departed_after": (0.0, 366 * DAY),  # [graphs] departed_after: at most a year graph
    "write_behind": (0.0, HOUR),  # [rrd] write_behind: 0 = every update written at once
}
MAX_RATE_POLLS = 1000  # samples one rate window may keep per series
MAX_CONTEXTS_CAP = 1_000_000
MAX_KERNEL_HZ = 100_000
MAX_LEVEL = 2.0**70  # beyond any byte, bit/s or count a host has
MAX_PERCENT = 100_000.0
MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is not a config file
MAX_NESTING = 32  # arrays and inline tables within one value
MAX_RULES = 1000  # [[collector.rule]] and [[alerts.rule]] entries, each
MAX_NAME = 200  # characters of an alert name, a glob, a user
MAX_TEXT = 4096  # characters of a summary, a command argument, a URL






RULE_KEYS = ("glob", "regex", "name", "lookup")


@dataclass(frozen=True, slots=True)
class Rule:
    """One `[[collector.rule]]`: cgroups matching `glob` or `regex` are named `name`.

    `lookup` ("docker") asks the cgroup source to look the name up by capture 1.
    """

    name: str
    glob: str | None = None
    regex: str | None = None
    lookup: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The form `collector.build_source(rules=...)` takes; `dict(rule)` too."""
        return {k: self[k] for k in self.keys()}

    def keys(self) -> tuple[str, ...]:
        return tuple(k for k in RULE_KEYS if getattr(self, k) is not None)

    def __getitem__(self, key: str) -> str:
        if key not in RULE_KEYS or getattr(self, key) is None:
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    interval: float = DEFAULT_INTERVAL  # seconds between polls
    source: str = "auto"
    proc_root: str = "/proc"
    # Both derived from proc_root when not given: <parent of proc_root>/etc/vservers ...
    vservers_dir: str = "/etc/vservers"
    cgroup_root: str = "/sys/fs/cgroup"  # ... and <parent of proc_root>/sys/fs/cgroup
    cgroup_hierarchy: str = "auto"
    kernel_hz: int | None = None  # None: detect ("auto")
    rules: tuple[Rule, ...] = field(default=(), metadata={"toml": "rule"})


@dataclass(frozen=True, slots=True)
class RrdConfig:
    dir: str = "var/rrd"
    step: float = DEFAULT_INTERVAL  # seconds; defaults to the collector interval
    daemon: str = ""  # rrdcached address, "" for direct writes
    retention: float = 30 * 86400.0  # seconds a departed context stays before archive/
    archive_keep: float = 180 * 86400.0  # seconds an archived context is kept; 0: for good
    max_bytes: int = 0  # no new RRD files past this many bytes in dir; 0: no budget
    write_behind: float = 0.0  # seconds direct updates may wait in memory; 0: none


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    listen: str = DEFAULT_LISTEN
    enabled: bool = True
    tls_cert: str = ""  # PEM certificate file; with tls_key, serve HTTPS only
    tls_key: str = ""
    # user -> bcrypt hash, as in Prometheus' web-config file; empty = no auth
    basic_auth: Mapping[str, str] = field(default_factory=dict)
    max_contexts: int = 0  # export the N busiest contexts, the rest as "other"; 0 = all

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


@dataclass(frozen=True, slots=True)
class GraphsConfig:
    dir: str = "var/graphs"
    interval: float = 300.0
    enabled: bool = True
    departed_after: float = 86400.0  # a gone context leaves the host graphs' legends after this
    traffic_style: str = "munin"  # "munin" (received below the axis) or "mrtg" (in area, out line)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    # "nftables": count each context's traffic in the nftables table `inet ctxmon`
    # (collector.traffic); "off": never touch the firewall.
    accounting: str = "off"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    user: str = ""  # drop root for this user once the port is bound; "" = stay


@dataclass(frozen=True, slots=True)
class Config:
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    rrd: RrdConfig = field(default_factory=RrdConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    graphs: GraphsConfig = field(default_factory=GraphsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    source_path: str | None = field(default=None, metadata={"toml": None})


def toml_keys(cls: type) -> dict[str, str]:
    """{key in the file: field name} for one of the dataclasses above."""
    out = {}
    for f in fields(cls):
        key = f.metadata.get("toml", f.name)
        if key is not None:
            out[key] = f.name
    return out



def config_to_json(cfg: Config) -> str:
    """A validated Config as JSON, for a child process (the graph renderer) that must
    run on the daemon's config in force rather than re-read a file that may have
    changed (and been refused) since."""
    return json.dumps(_encode(cfg), separators=(",", ":"))


def config_from_json(text: str | bytes) -> Config:
    """The inverse of config_to_json. Raises ValueError on anything else."""
    try:
        return _decode(Config, json.loads(text))
    except (TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"not a serialized config: {e}") from None


def _encode(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    return value


def _decode(hint: Any, value: Any) -> Any:
    import types
    import typing

    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        if not isinstance(value, dict):
            raise TypeError(f"{hint.__name__}: expected an object")
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _decode(hints[f.name], value[f.name])
                       for f in fields(hint) if f.name in value})
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value)
    if origin is tuple:
        return tuple(_decode(args[0], v) for v in value)
    if origin is not None and issubclass(origin, Mapping):
        return MappingProxyType({str(k): _decode(args[1], v) for k, v in value.items()})
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise TypeError(f"expected {hint.__name__}, got {type(value).__name__}")
    return value


def default_config() -> Config:
    """All defaults, for commands run without a file.

    The data dirs stay relative ("var/rrd"): with no file to anchor them they are
    relative to the current directory.
    """
    return Config()


def parse_listen(text: str) -> tuple[str, int]:
    """A `listen` value → (host, port): exporters.addresses.parse_listen, with the
    config's rule that the port is a real one (1..65535)."""
    return _parse_listen(text, port_zero=False)
