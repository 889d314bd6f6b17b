"""The TOML configuration: one file, validated into a frozen dataclass tree.

Every problem is a `ConfigError` whose text is one line naming the file, the line
and the key (`conf/ctxmon.toml:12: [collector] interval: must be at least 1s, got
"500ms"`), so `ctxmon check-config` and the daemon can print it as is. Loading only
reads: it creates no directory and writes no file.

Relative paths in the file are resolved against the file's own directory, so a
checkout's `conf/ctxmon.toml` can say `dir = "../var/rrd"` whatever the CWD.
"""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from types import MappingProxyType, ModuleType
from typing import Any, Callable, Mapping

from alerts.model import (
    _ALERT_NAME,
    _GLOB_CHARS,
    ALERT_METRICS,
    ALERT_PLACEHOLDERS,
    SEVERITIES,
    AlertOverride,
    AlertRule,
    AlertsConfig,
    Level,
    rule_levels,
    severity_levels,
)

__all__ = [
    "ALERT_METRICS",
    "AlertOverride",
    "AlertRule",
    "AlertsConfig",
    "Level",
    "DaemonConfig",
    "CollectorConfig",
    "Config",
    "ConfigError",
    "ExporterConfig",
    "GraphsConfig",
    "LogConfig",
    "RrdConfig",
    "TrafficConfig",
    "Rule",
    "config_from_json",
    "config_to_json",
    "default_config",
    "load_config",
    "parse_duration",
    "parse_listen",
    "rule_levels",
    "severity_levels",
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
BCRYPT_COSTS = (4, 17)  # cost 18 already takes seconds per login


class ConfigError(Exception):
    """A configuration problem; `str()` is one line: `FILE:LINE: KEY: message`."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 key: str | None = None):
        # One line whatever the parts contain: the CLI prints it as a log line.
        self.message = _one_line(message)
        self.path = path
        self.line = line
        self.key = key
        super().__init__(self._text())

    def _text(self) -> str:
        where = ""
        if self.path is not None:
            where = _one_line(self.path) + (f":{self.line}" if self.line else "") + ": "
        key = f"{_one_line(self.key)}: " if self.key else ""
        return where + key + self.message


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


# --------------------------------------------------------------------------- schema
#
# Field metadata "toml" names the key in the file when it differs from the field
# name; None marks a field that is no key (Config.source_path).


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


# ------------------------------------------------------------------ value parsing

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")


def parse_duration(value: Any) -> float:
    """"30s", "5m", "1h30m", "2d", "250ms", "90" or the integer 90 → seconds.

    Raises ValueError with a message fit for a ConfigError.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(
            f'must be a duration like "30s", "5m", "1h30m" or a whole number of '
            f"seconds, got {_show(value)}"
        )
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip()
        if len(text) > 40:
            raise ValueError(f"duration too long: {_show(value)}")
        if text.isascii() and text.isdigit():
            seconds = int(text)
        elif _DURATION_FULL.fullmatch(text):
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(
                f"invalid duration {_show(value)}: use numbers with units ms, s, m, h, d, w "
                f'(e.g. "90s", "1h30m") or a whole number of seconds'
            )
    if seconds < 0:
        raise ValueError(f"must not be negative, got {_show(value)}")
    try:
        result = float(seconds)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise ValueError(f"duration too large: {_show(value)}")
    return result


def format_duration(seconds: float) -> str:
    """86400 → "1d", 90 → "90s": the largest unit that divides evenly."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _valid_hostname(host: str) -> bool:
    if not host or len(host) > 253 or not host.isascii():
        return False
    return all(_HOSTNAME_LABEL.fullmatch(label) for label in host.removesuffix(".").split("."))


def parse_listen(text: str) -> tuple[str, int]:
    """"127.0.0.1:9717", "[::1]:9717", "localhost:9717" → (host, port).

    Raises ValueError with a message fit for a ConfigError.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1:].startswith(":"):
            raise ValueError(f'expected "[IPv6]:port", got {_show(text)}')
        host, port_text = text[1:close], text[close + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {_show(host)} in {_show(text)}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f'expected "host:port", got {_show(text)}')
        if ":" in host:
            raise ValueError(f'put an IPv6 address in brackets ("[::1]:9717"), got {_show(text)}')
        if not host:
            raise ValueError(
                f'host missing in {_show(text)} (use "0.0.0.0:PORT" or "[::]:PORT" '
                f"for every interface)"
            )
        if not _valid_hostname(host):
            raise ValueError(f"invalid host {_show(host)} in {_show(text)}")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"invalid port {_show(port_text)} in {_show(text)}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, got {port} in {_show(text)}")
    return host, port


def _check_rrdcached_address(text: str) -> None:
    """rrdcached's address forms: "" (none), "unix:/path", "/path", "host:port"."""
    if text == "":
        return
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f'"unix:" needs an absolute socket path, got {_show(text)}')
        return
    if text.startswith("/"):
        return
    try:
        parse_listen(text)
    except ValueError as e:
        raise ValueError(
            f'expected "", "unix:/path", "/path" or "host:port": {e}'
        ) from None


_CGROUP_V1_HIERARCHY = re.compile(r"name=[A-Za-z0-9_.-]+|[a-z][a-z0-9_]*(?:,[a-z][a-z0-9_]*)*")


def _show(value: Any) -> str:
    """A value as the admin wrote it, short and on one line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "an array"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------- line finding


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASIC_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# The rest of a multi-line string up to its closing quotes, if on this line.
_BASIC_ML_END = re.compile(r'(?:[^"\\]|\\.|"(?!""))*"""')
_LITERAL_ML_END = re.compile(r".*?'''")


def _scan_key(line: str, pos: int) -> tuple[tuple[str, ...], int] | None:
    """A (dotted) TOML key starting at `pos` → (parts, end), or None."""
    parts: list[str] = []
    n = len(line)
    while True:
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos >= n:
            return None
        ch = line[pos]
        if ch == '"':
            m = _BASIC_STRING.match(line, pos)
            if not m:
                return None
            try:
                parts.append(json.loads(m.group(0)))
            except ValueError:
                parts.append(m.group(0)[1:-1])
            pos = m.end()
        elif ch == "'":
            end = line.find("'", pos + 1)
            if end < 0:
                return None
            parts.append(line[pos + 1:end])
            pos = end + 1
        else:
            m = _BARE_KEY.match(line, pos)
            if not m:
                return None
            parts.append(m.group(0))
            pos = m.end()
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos < n and line[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


class _LineIndex:
    """Where keys and tables are in the file text, for error messages.

    Locations are tuples of keys and array indexes: ("collector", "rule", 1, "regex")
    is the `regex` of the second `[[collector.rule]]`. Only the file's own structure
    is recorded: a key inside an inline table or a multi-line value falls back to the
    nearest enclosing thing that has a line.
    """

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        self._array_counts: dict[tuple, int] = {}
        self.too_deep: int | None = None  # the first line nesting past MAX_NESTING
        self._scan(text)

    def _record(self, loc: tuple, lineno: int) -> None:
        self.lines.setdefault(loc, lineno)

    def _scan(self, text: str) -> None:
        section: tuple = ()
        depth = 0  # open [ and { of a value spanning lines
        in_string: str | None = None  # the closing quotes of a multi-line string
        for lineno, line in enumerate(text.splitlines(), start=1):
            pos = 0
            if in_string is None and depth == 0:
                stripped = line.lstrip()
                if stripped.startswith("[["):
                    parsed = _scan_key(line, line.index("[[") + 2)
                    if parsed and line[parsed[1]:].startswith("]]"):
                        path = parsed[0]
                        index = self._array_counts.get(path, 0)
                        self._array_counts[path] = index + 1
                        section = path + (index,)
                        self._record(path, lineno)
                        self._record(section, lineno)
                        continue
                elif stripped.startswith("["):
                    parsed = _scan_key(line, line.index("[") + 1)
                    if parsed and line[parsed[1]:].startswith("]"):
                        section = self._resolve(parsed[0])
                        self._record(section, lineno)
                        continue
                else:
                    parsed = _scan_key(line, 0)
                    if parsed and line[parsed[1]:].startswith("="):
                        keys, end = parsed
                        for i in range(1, len(keys) + 1):
                            self._record(section + keys[:i], lineno)
                        pos = end + 1
            depth, in_string, peak = self._scan_value(line, pos, depth, in_string)
            if peak > MAX_NESTING and self.too_deep is None:
                self.too_deep = lineno

    def _resolve(self, path: tuple[str, ...]) -> tuple:
        """`[a.b]` after `[[a]]` is a table in a's latest array element."""
        out: tuple = ()
        for part in path:
            out += (part,)
            if out in self._array_counts:
                out += (self._array_counts[out] - 1,)
        return out

    @staticmethod
    def _scan_value(line: str, pos: int, depth: int, in_string: str | None):
        """Carry bracket depth and multi-line string state past one line."""
        n = len(line)
        peak = depth
        while pos < n:
            if in_string is not None:
                m = (_BASIC_ML_END if in_string == '"""' else _LITERAL_ML_END).match(line, pos)
                if not m:
                    return depth, in_string, peak
                pos = m.end()
                in_string = None
                continue
            ch = line[pos]
            if ch == "#":
                break
            if line.startswith('"""', pos) or line.startswith("'''", pos):
                in_string = line[pos:pos + 3]
                pos += 3
                continue
            if ch == '"':
                m = _BASIC_STRING.match(line, pos)
                pos = m.end() if m else n
                continue
            if ch == "'":
                end = line.find("'", pos + 1)
                pos = end + 1 if end >= 0 else n
                continue
            if ch in "[{":
                depth += 1
                peak = max(peak, depth)
            elif ch in "]}":
                depth = max(0, depth - 1)
            pos += 1
        return depth, in_string, peak

    def line_of(self, loc: tuple) -> int | None:
        for n in range(len(loc), 0, -1):
            line = self.lines.get(loc[:n])
            if line is not None:
                return line
        return None


# ------------------------------------------------------------------------ loading


def _describe(loc: tuple) -> str:
    """("collector", "interval") → "[collector] interval";
    ("collector", "rule", 1, "regex") → "[[collector.rule]] #2 regex"."""
    table: list[str] = []
    rest = list(loc)
    while rest and isinstance(rest[0], str) and len(rest) > 1:
        table.append(rest.pop(0))
        if rest and isinstance(rest[0], int):
            index = rest.pop(0)
            head = f"[[{'.'.join(table)}]] #{index + 1}"
            return head + (" " + ".".join(map(str, rest)) if rest else "")
    if not table:
        return ".".join(map(str, rest))
    return f"[{'.'.join(table)}]" + (" " + ".".join(map(str, rest)) if rest else "")


class _Loader:
    def __init__(self, path: str, text: str, index: "_LineIndex | None" = None):
        self.path = path
        self.base_dir = os.path.dirname(os.path.abspath(path))
        self.index = index if index is not None else _LineIndex(text)

    def error(self, loc: tuple, message: str, describe: str | None = None) -> ConfigError:
        return ConfigError(message, self.path, self.index.line_of(loc),
                           describe if describe is not None else _describe(loc))

    # -- structure

    def table(self, raw: Any, loc: tuple, cls: type) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.error(loc, f"must be a table, got {_show(raw)}", f"[{'.'.join(loc)}]")
        known = toml_keys(cls)
        for key in raw:
            if key not in known:
                raise self.error(loc + (key,), "unknown key" + _suggest(key, known, quote='"'))
        return raw

    def get(self, raw: dict, loc: tuple, key: str, convert: Callable[[Any], Any], default: Any):
        if key not in raw:
            return default
        try:
            return convert(raw[key])
        except ValueError as e:
            raise self.error(loc + (key,), str(e)) from None

    # -- converters (raise ValueError with the message)

    @staticmethod
    def string(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {_show(value)}")
        return value

    @staticmethod
    def integer(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {_show(value)}")
        return value

    @staticmethod
    def boolean(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {_show(value)}")
        return value

    @staticmethod
    def choice(*allowed: str) -> Callable[[Any], str]:
        def convert(value: Any) -> str:
            value = _Loader.string(value)
            if value not in allowed:
                raise ValueError(
                    f"must be one of {', '.join(allowed)}, got {_show(value)}"
                    + _suggest(value, allowed, quote='"')
                )
            return value
        return convert

    @staticmethod
    def duration_at_least_1s(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < 1:
            raise ValueError(f"must be at least 1s, got {_show(value)}")
        return seconds

    @staticmethod
    def duration(kind: str) -> Callable[[Any], float]:
        """A duration within LIMITS[kind]."""
        low, high = LIMITS[kind]

        def convert(value: Any) -> float:
            seconds = parse_duration(value)
            if seconds < low:
                raise ValueError(f"must be at least {format_duration(low)}, got {_show(value)}")
            if seconds > high:
                raise ValueError(f"must be at most {format_duration(high)}, got {_show(value)}")
            return seconds
        return convert

    @staticmethod
    def integer_in(low: int, high: int, what: str = "") -> Callable[[Any], int]:
        def convert(value: Any) -> int:
            value = _Loader.integer(value)
            if not low <= value <= high:
                raise ValueError(f"must be {low}..{high}{what}, got {value}")
            return value
        return convert

    def path_value(self, value: Any) -> str:
        value = self.string(value)
        if not value:
            raise ValueError("must not be empty")
        if "\0" in value:
            raise ValueError("must not contain a NUL character")
        if os.path.isabs(value):
            return value
        return os.path.normpath(os.path.join(self.base_dir, value))

    def optional_path(self, value: Any) -> str:
        """A path, or "" for "derive it"."""
        return self.path_value(value) if self.string(value) else ""

    # -- tables

    def load(self, data: dict[str, Any], check_rrd_files: bool) -> Config:
        tables = toml_keys(Config)
        for key, value in data.items():
            if key not in tables:
                if isinstance(value, dict):
                    raise self.error((key,), "unknown table" + _suggest(key, tables, brackets=True),
                                     f"[{key}]")
                raise self.error((key,), "unknown key at top level (keys belong in a table "
                                 "such as [collector])" + _suggest(key, tables, brackets=True), key)
        collector = self.collector(data.get("collector", {}))
        rrd = self.rrd(data.get("rrd", {}), collector, check_rrd_files)
        exporter = self.exporter(data.get("exporter", {}))
        graphs = self.graphs(data.get("graphs", {}))
        alerts = self.alerts(data.get("alerts", {}), collector)
        log = self.log(data.get("log", {}))
        daemon = self.daemon(data.get("daemon", {}))
        traffic = self.traffic(data.get("traffic", {}))
        return Config(collector=collector, rrd=rrd, exporter=exporter, graphs=graphs,
                      alerts=alerts, log=log, daemon=daemon, traffic=traffic,
                      source_path=os.path.abspath(self.path))

    def collector(self, raw: Any) -> CollectorConfig:
        loc = ("collector",)
        raw = self.table(raw, loc, CollectorConfig)
        d = CollectorConfig()
        proc_root = self.get(raw, loc, "proc_root", self.path_value, d.proc_root)
        # "" (the default): under the root the proc tree is in, so a recorded or
        # chroot tree reads its own util-vserver config and cgroup mount.
        root = os.path.dirname(os.path.normpath(proc_root))
        vservers_dir = (self.get(raw, loc, "vservers_dir", self.optional_path, "")
                        or os.path.join(root, "etc", "vservers"))
        cgroup_root = (self.get(raw, loc, "cgroup_root", self.optional_path, "")
                       or os.path.join(root, "sys", "fs", "cgroup"))
        return CollectorConfig(
            interval=self.get(raw, loc, "interval", self.duration("interval"), d.interval),
            source=self.get(raw, loc, "source", self.choice(*SOURCES), d.source),
            proc_root=proc_root,
            vservers_dir=vservers_dir,
            cgroup_root=cgroup_root,
            cgroup_hierarchy=self.get(raw, loc, "cgroup_hierarchy", _cgroup_hierarchy,
                                      d.cgroup_hierarchy),
            kernel_hz=self.get(raw, loc, "kernel_hz", _kernel_hz, d.kernel_hz),
            rules=self.rules(raw.get("rule"), loc + ("rule",)) if "rule" in raw else (),
        )

    def rules(self, raw: Any, loc: tuple) -> tuple[Rule, ...]:
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise self.error(loc, 'must be an array of tables ("[[collector.rule]]")')
        if len(raw) > MAX_RULES:
            raise self.error(loc, f"at most {MAX_RULES} rules, got {len(raw)}")
        compile_rules = _optional_function("collector.cgroup", "compile_rules")
        out = []
        for i, item in enumerate(raw):
            rloc = loc + (i,)
            for key in item:
                if key not in RULE_KEYS:
                    raise self.error(rloc + (key,),
                                     "unknown key" + _suggest(key, RULE_KEYS, quote='"'))
            matchers = [k for k in ("glob", "regex") if k in item]
            if len(matchers) != 1:
                raise self.error(rloc, "needs exactly one of glob or regex, got "
                                 + (" and ".join(matchers) or "neither"))
            if "name" not in item:
                raise self.error(rloc, 'needs a name (a template like "{1}")')
            matcher = matchers[0]
            pattern = self.get(item, rloc, matcher, self.string, None)
            name = self.get(item, rloc, "name", self.string, None)
            lookup = self.get(item, rloc, "lookup", self.string, None)
            rule = Rule(name=name, lookup=lookup, **{matcher: pattern})
            try:
                if compile_rules is not None:
                    compile_rules([rule.as_dict()])
                elif matcher == "regex":
                    try:
                        re.compile(pattern)
                    except re.error as e:
                        raise ValueError(f"invalid regular expression {_show(pattern)}: {e}")
            except ValueError as e:
                message = _RULE_MESSAGE_PREFIX.sub("", str(e)) or "invalid rule"
                raise self.error(rloc + (_rule_key_at_fault(message, matcher),), message) from None
            out.append(rule)
        return tuple(out)

    def rrd(self, raw: Any, collector: CollectorConfig, check_rrd_files: bool) -> RrdConfig:
        loc = ("rrd",)
        raw = self.table(raw, loc, RrdConfig)
        d = RrdConfig()
        directory = self.get(raw, loc, "dir", self.path_value, self.path_value(d.dir))
        if "step" in raw:
            step = self.get(raw, loc, "step", self.duration("interval"), None)
            step_loc = loc + ("step",)
        else:
            step = collector.interval
            step_loc = ("collector", "interval")
        if step != int(step):
            # RRD files count time in whole seconds.
            where = "" if "step" in raw else " (the default: [collector] interval)"
            raise self.error(step_loc, f"must be a whole number of seconds{where}, got {step:g}s",
                             "[rrd] step")
        step = float(step)
        rrd = RrdConfig(
            dir=directory,
            step=step,
            daemon=self.get(raw, loc, "daemon", _rrdcached_address, d.daemon),
            retention=self.get(raw, loc, "retention", self.duration("retention"), d.retention),
        )
        if check_rrd_files and os.path.isdir(directory):
            check_step = _optional_function("exporters.rrd", "check_step")
            if check_step is not None:
                try:
                    problem = check_step(directory, int(step))
                except OSError:
                    problem = None  # unreadable files: the RRD writer reports them itself
                if problem:
                    raise self.error(step_loc, str(problem), "[rrd] step")
        return rrd

    def exporter(self, raw: Any) -> ExporterConfig:
        loc = ("exporter",)
        raw = self.table(raw, loc, ExporterConfig)
        d = ExporterConfig()
        tls_cert = self.get(raw, loc, "tls_cert", self.optional_path, "")
        tls_key = self.get(raw, loc, "tls_key", self.optional_path, "")
        if bool(tls_cert) != bool(tls_key):
            missing = "tls_key" if tls_cert else "tls_cert"
            present = "tls_cert" if tls_cert else "tls_key"
            raise self.error(loc + (present,), f"needs {missing} too")
        for key, path in (("tls_cert", tls_cert), ("tls_key", tls_key)):
            if path and not os.access(path, os.R_OK):
                raise self.error(loc + (key,), f"cannot read {_show(path)}")
        users = raw.get("basic_auth", {})
        if not isinstance(users, dict):
            raise self.error(loc + ("basic_auth",),
                             'must be a table of user = "bcrypt hash" ([exporter.basic_auth])')
        for user, hashed in users.items():
            if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
                raise self.error(loc + ("basic_auth", user),
                                 "must be a bcrypt hash ($2b$..., see `htpasswd -nBC 10`)")
            cost = int(hashed.split("$")[2])
            if not BCRYPT_COSTS[0] <= cost <= BCRYPT_COSTS[1]:
                raise self.error(loc + ("basic_auth", user),
                                 f"bcrypt cost must be {BCRYPT_COSTS[0]}..{BCRYPT_COSTS[1]} "
                                 f"(each login costs 2^cost rounds), got {cost}")
            if len(user) > MAX_NAME:
                raise self.error(loc + ("basic_auth",), f"user name longer than {MAX_NAME}")
            if ":" in user or not user:
                raise self.error(loc + ("basic_auth", user), "a user name cannot be empty or hold ':'")
        max_contexts = self.get(raw, loc, "max_contexts", self.integer, d.max_contexts)
        if max_contexts < 0:
            raise self.error(loc + ("max_contexts",), f"must be 0 (no cap) or more, got {max_contexts}")
        if max_contexts > MAX_CONTEXTS_CAP:
            raise self.error(loc + ("max_contexts",),
                             f"must be at most {MAX_CONTEXTS_CAP}, got {max_contexts}")
        return ExporterConfig(
            listen=self.get(raw, loc, "listen", _listen, d.listen),
            enabled=self.get(raw, loc, "enabled", self.boolean, d.enabled),
            tls_cert=tls_cert,
            tls_key=tls_key,
            basic_auth=MappingProxyType(dict(users)),
            max_contexts=max_contexts,
        )

    def graphs(self, raw: Any) -> GraphsConfig:
        loc = ("graphs",)
        raw = self.table(raw, loc, GraphsConfig)
        d = GraphsConfig()
        return GraphsConfig(
            dir=self.get(raw, loc, "dir", self.path_value, self.path_value(d.dir)),
            interval=self.get(raw, loc, "interval", self.duration("interval"), d.interval),
            enabled=self.get(raw, loc, "enabled", self.boolean, d.enabled),
        )

    def log(self, raw: Any) -> LogConfig:
        loc = ("log",)
        raw = self.table(raw, loc, LogConfig)
        return LogConfig(level=self.get(raw, loc, "level", self.choice(*LOG_LEVELS), "info"))

    def traffic(self, raw: Any) -> TrafficConfig:
        loc = ("traffic",)
        raw = self.table(raw, loc, TrafficConfig)
        return TrafficConfig(accounting=self.get(raw, loc, "accounting",
                                                 self.choice("off", "nftables"), "off"))

    def daemon(self, raw: Any) -> DaemonConfig:
        loc = ("daemon",)
        raw = self.table(raw, loc, DaemonConfig)
        user = self.get(raw, loc, "user", self.string, "")
        if user:
            import pwd

            try:
                pwd.getpwnam(user)
            except KeyError:
                raise self.error(loc + ("user",), f"no such user {_show(user)}") from None
        return DaemonConfig(user=user)

    # -- [alerts]

    def alerts(self, raw: Any, collector: CollectorConfig) -> AlertsConfig:
        loc = ("alerts",)
        raw = self.table(raw, loc, AlertsConfig)
        d = AlertsConfig()
        # A rate needs two polls inside its window.
        shortest = 2 * collector.interval
        if "rate_window" in raw:
            rate_window = self.get(raw, loc, "rate_window", self.duration("rate_window"), None)
            if rate_window < shortest:
                raise self.error(
                    loc + ("rate_window",),
                    f"must span at least two polls ({shortest:g}s with [collector] interval "
                    f"{collector.interval:g}s), got {_show(raw['rate_window'])}")
            if rate_window > MAX_RATE_POLLS * collector.interval:
                raise self.error(
                    loc + ("rate_window",),
                    f"must span at most {MAX_RATE_POLLS} polls "
                    f"({format_duration(MAX_RATE_POLLS * collector.interval)} with [collector] "
                    f"interval {collector.interval:g}s), got {_show(raw['rate_window'])}")
        else:
            rate_window = max(d.rate_window, shortest)
        return AlertsConfig(
            command=self.get(raw, loc, "command", _command, d.command),
            command_timeout=self.get(raw, loc, "command_timeout", self.duration("timeout"),
                                     d.command_timeout),
            alertmanager_url=self.get(raw, loc, "alertmanager_url", _alertmanager_url,
                                      d.alertmanager_url),
            alertmanager_timeout=self.get(raw, loc, "alertmanager_timeout",
                                          self.duration("timeout"), d.alertmanager_timeout),
            rate_window=rate_window,
            rules=self.alert_rules(raw["rule"], loc + ("rule",)) if "rule" in raw else (),
        )

    def alert_rules(self, raw: Any, loc: tuple) -> tuple[AlertRule, ...]:
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise self.error(loc, 'must be an array of tables ("[[alerts.rule]]")')
        if len(raw) > MAX_RULES:
            raise self.error(loc, f"at most {MAX_RULES} rules, got {len(raw)}")
        out: list[AlertRule] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(raw):
            rule = self.alert_rule(item, loc + (i,))
            if rule.name in seen:
                raise self.error(loc + (i, "name"), f"{_show(rule.name)} is already the name "
                                 f"of [[alerts.rule]] #{seen[rule.name] + 1}",
                                 self._rule_describe(loc + (i,), rule.name, "name"))
            seen[rule.name] = i
            out.append(rule)
        return tuple(out)

    def _rule_describe(self, rloc: tuple, name: str | None, *keys: str) -> str:
        """"[[alerts.rule]] #2 (ContextCpuHigh) warning": index, and name when known."""
        head = _describe(rloc)
        if name:
            head += f" ({_one_line(name)})"
        return head + (" " + ".".join(keys) if keys else "")

    def alert_rule(self, item: dict, rloc: tuple) -> AlertRule:
        name = item.get("name") if isinstance(item.get("name"), str) else None

        def fail(keys: tuple, message: str) -> ConfigError:
            return self.error(rloc + keys, message,
                              self._rule_describe(rloc, name, *map(str, keys)))

        def get(key: str, convert: Callable[[Any], Any], default: Any) -> Any:
            if key not in item:
                return default
            try:
                return convert(item[key])
            except ValueError as e:
                raise fail((key,), str(e)) from None

        known = toml_keys(AlertRule)
        for key in item:
            if key not in known:
                raise fail((key,), "unknown key" + _suggest(key, known, quote='"'))
        if "name" not in item:
            raise fail((), 'needs a name, the alert\'s name (like "ContextCpuHigh")')
        name = get("name", _alert_name, None)
        if "metric" not in item:
            raise fail((), "needs a metric: one of " + ", ".join(ALERT_METRICS))
        metric = get("metric", self.choice(*ALERT_METRICS), None)
        for_ = get("for", self.duration("for"), 0.0)
        summary = get("summary", _summary_template, "")
        if metric == "absent":
            for key in ("warning", "critical", "clear", "exclude"):
                if key in item:
                    raise fail((key,), f"an absent rule takes no {key}: it fires when a "
                               "context listed in `contexts` is not running (set `severity`)")
            if "contexts" not in item:
                raise fail((), 'an absent rule needs `contexts`: the names of the contexts '
                           'that should run, e.g. ["web", "db"]')
            contexts = get("contexts", _context_names, ())
            overrides = self.alert_overrides(item, rloc, fail, metric, None, None, None, for_)
            return AlertRule(name=name, metric=metric, for_=for_, contexts=contexts,
                             overrides=overrides, summary=summary,
                             severity=get("severity", self.choice(*SEVERITIES), "critical"))
        if "severity" in item:
            raise fail(("severity",), "only absent rules take a severity; this one's "
                       "alerts are named by the level they pass (warning, critical)")
        if "warning" not in item and "critical" not in item:
            raise fail((), "needs a warning or a critical level (or both)")
        levels = {key: get(key, lambda v: _level(v, metric), None)
                  for key in ("warning", "critical", "clear")}
        problem = _level_problem(levels["warning"], levels["critical"], levels["clear"])
        if problem:
            raise fail((problem[0],), problem[1])
        overrides = self.alert_overrides(item, rloc, fail, metric, levels["warning"],
                                         levels["critical"], levels["clear"], for_)
        return AlertRule(
            name=name, metric=metric, for_=for_, summary=summary, overrides=overrides,
            contexts=get("contexts", _globs, ("*",)), exclude=get("exclude", _globs, ()),
            **levels,
        )

    def alert_overrides(self, item: dict, rloc: tuple, fail, metric: str,
                        warning: Level | None, critical: Level | None, clear: Level | None,
                        for_: float) -> tuple[AlertOverride, ...]:
        raw = item.get("overrides", {})
        if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
            raise fail(("overrides",), 'must be a table of tables, one per context glob: '
                       '[alerts.rule.overrides."db-*"]')
        allowed = ("for",) if metric == "absent" else ("warning", "critical", "clear", "for")
        out = []
        for glob, table in raw.items():
            oloc = ("overrides", glob)
            if not glob:
                raise fail(oloc, "the context glob must not be empty")
            for key in table:
                if key not in allowed:
                    extra = " (an absent rule's overrides take only `for`)" \
                        if metric == "absent" else _suggest(key, allowed, quote='"')
                    raise fail(oloc + (key,), "unknown key" + extra)
            values = {"warning": warning, "critical": critical, "clear": clear}
            for key in ("warning", "critical", "clear"):
                if key in table:
                    value = table[key]
                    try:
                        # false: this level (or the hysteresis) is off for these contexts
                        values[key] = None if value is False else _level(value, metric)
                    except ValueError as e:
                        raise fail(oloc + (key,), str(e)) from None
            o_for = for_
            if "for" in table:
                try:
                    o_for = self.duration("for")(table["for"])
                except ValueError as e:
                    raise fail(oloc + ("for",), str(e)) from None
            problem = _level_problem(values["warning"], values["critical"], values["clear"],
                                     in_override=True)
            if problem:
                key = problem[0] if problem[0] in table else next(
                    (k for k in ("warning", "critical", "clear") if k in table), problem[0])
                raise fail(oloc + (key,), problem[1])
            out.append(AlertOverride(glob=glob, for_=o_for, **values))
        return tuple(out)


_BCRYPT_HASH = re.compile(r"\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}")

# compile_rules names the rule itself ("cgroup rule: ..."); ours names it with its line.
_RULE_MESSAGE_PREFIX = re.compile(r"^cgroup rule(?: \d+)?: ")


def _rule_key_at_fault(message: str, matcher: str) -> str:
    """Which key of a rule compile_rules's message is about, for the line number."""
    if "template" in message or message.startswith("name "):
        return "name"
    if message.startswith("lookup"):
        return "lookup"
    return matcher


def _cgroup_hierarchy(value: Any) -> str:
    value = _Loader.string(value)
    if value in ("auto", "unified") or _CGROUP_V1_HIERARCHY.fullmatch(value):
        return value
    raise ValueError(
        f'must be "auto", "unified" or a v1 hierarchy like "cpuacct" or "name=systemd", '
        f"got {_show(value)}"
    )


def _kernel_hz(value: Any) -> int | None:
    if value == "auto" and isinstance(value, str):
        return None
    if (isinstance(value, bool) or not isinstance(value, int) or value <= 0
            or value > MAX_KERNEL_HZ):
        raise ValueError(f'must be "auto" or a positive integer up to {MAX_KERNEL_HZ} '
                         f"(CONFIG_HZ), got {_show(value)}")
    return value


def _listen(value: Any) -> str:
    value = _Loader.string(value)
    parse_listen(value)
    return value


def _rrdcached_address(value: Any) -> str:
    value = _Loader.string(value)
    _check_rrdcached_address(value)
    return value


# ------------------------------------------------------------------ alert values

_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
       "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50,
       "Ei": 2.0**60}
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([kKMGTPE]i?)?\s*(B|bit/s|bps|/s)?")
_UNIT_WORDS = {"B": "bytes", "bit/s": "bits_per_second", "bps": "bits_per_second",
               "/s": "per_second"}


def _level(value: Any, metric: str) -> Level:
    """A threshold as written: a number, "90%", or a quantity like "512MiB", "100Mbit/s"."""
    unit, limits = ALERT_METRICS[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f'must be a number or a string like "90%" or "512MiB", '
                         f"got {_show(value)}")
    if isinstance(value, (int, float)):
        number = float(value)
        if not math.isfinite(number) or number < 0 or number > MAX_LEVEL:
            raise ValueError(f"must be a number 0..{MAX_LEVEL:.3g}, got {_show(value)}")
        return Level(number)
    text = value.strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            percent = math.nan
        if not math.isfinite(percent) or percent < 0 or percent > MAX_PERCENT:
            raise ValueError(f'expected a percentage like "90%" (at most {MAX_PERCENT:g}%), '
                             f"got {_show(value)}")
        if unit == "ratio":
            return Level(percent / 100)  # cpu "90%" = 0.9 of a CPU (or of the host)
        if not limits:
            raise ValueError(
                f"{metric} has no limit for {_show(value)} to be a share of (rss, vsz and "
                "threads have); give a number")
        return Level(percent / 100, of_limit=True)
    m = _QUANTITY.fullmatch(text)
    if not m:
        raise ValueError(f'expected a number, a percentage ("90%") or a quantity like '
                         f'"512MiB" or "100M", got {_show(value)}')
    word = m.group(3)
    if word is not None and _UNIT_WORDS[word] != unit:
        raise ValueError(f"{metric} is not measured in {word}, got {_show(value)}")
    number = float(m.group(1)) * _SI[m.group(2) or ""]
    if number > MAX_LEVEL:
        raise ValueError(f"must be at most {MAX_LEVEL:.3g}, got {_show(value)}")
    return Level(number)


def _level_problem(warning: Level | None, critical: Level | None, clear: Level | None,
                   in_override: bool = False) -> tuple[str, str] | None:
    """(key at fault, message) when the levels do not fit together."""
    given = [(k, v) for k, v in (("warning", warning), ("critical", critical),
                                 ("clear", clear)) if v is not None]
    if len({v.of_limit for _, v in given}) > 1:
        key = next(k for k, v in given if v.of_limit != given[0][1].of_limit)
        return key, ("mixes a share of the limit (N%) with an absolute level: write the "
                     "levels of one rule the same way")
    if warning is not None and critical is not None and critical.value <= warning.value:
        return "critical", (f"must be above warning ({critical.value:g} <= "
                            f"{warning.value:g}{' after the override' if in_override else ''})")
    lowest = warning if warning is not None else critical
    if clear is not None and lowest is not None and clear.value > lowest.value:
        return "clear", (f"must not be above the {'warning' if warning else 'critical'} "
                         f"level ({clear.value:g} > {lowest.value:g}"
                         f"{' after the override' if in_override else ''}): a firing alert "
                         "resolves at or below it")
    return None


def _alert_name(value: Any) -> str:
    value = _Loader.string(value)
    if len(value) > MAX_NAME:
        raise ValueError(f"must be at most {MAX_NAME} characters, got {len(value)}")
    if not _ALERT_NAME.fullmatch(value):
        raise ValueError("must be letters, digits and underscores, not starting with a "
                         f'digit (like "ContextCpuHigh"), got {_show(value)}')
    return value


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be an array of {what}, got {_show(value)}")
    if any(not v for v in value):
        raise ValueError("must not contain an empty string")
    if len(value) > MAX_RULES or any(len(v) > MAX_NAME for v in value):
        raise ValueError(f"at most {MAX_RULES} entries of at most {MAX_NAME} characters each")
    return tuple(value)


def _globs(value: Any) -> tuple[str, ...]:
    return _string_list(value, 'context name globs like ["web*", "db"]')


def _context_names(value: Any) -> tuple[str, ...]:
    names = _string_list(value, 'context names like ["web", "db"]')
    if not names:
        raise ValueError("must list at least one context")
    for n in names:
        if _GLOB_CHARS.search(n):
            raise ValueError(f"must be context names, not globs: absent cannot tell which "
                             f"of the contexts {_show(n)} matches should run")
    return names


def _summary_template(value: Any) -> str:
    import string

    value = _Loader.string(value)
    if len(value) > MAX_TEXT:
        raise ValueError(f"must be at most {MAX_TEXT} characters, got {len(value)}")
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as e:
        raise ValueError(f"{e} (write {{{{ and }}}} for literal braces)") from None
    for _literal, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in ALERT_PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{field_name}}}; there are "
                             + ", ".join(f"{{{p}}}" for p in ALERT_PLACEHOLDERS)
                             + _suggest(field_name, ALERT_PLACEHOLDERS, quote="{"))
        if spec or conversion:
            raise ValueError(f"placeholder {{{field_name}}} takes no format: values are "
                             "formatted by their unit")
    return value


def _command(value: Any) -> tuple[str, ...]:
    """["prog", "arg"] runs as is; a string runs under /bin/sh -c; "" or [] is none."""
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError("must not contain a NUL character")
        if len(value) > MAX_TEXT:
            raise ValueError(f"must be at most {MAX_TEXT} characters, got {len(value)}")
        return ("/bin/sh", "-c", value) if value.strip() else ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'must be a string (run by /bin/sh) or an array like '
                         f'["/usr/local/bin/notify", "--to", "ops"], got {_show(value)}')
    if value and not value[0]:
        raise ValueError("the program (first element) must not be empty")
    if len(value) > 256 or any(len(v) > MAX_TEXT for v in value):
        raise ValueError(f"at most 256 arguments of at most {MAX_TEXT} characters each")
    if any("\0" in v for v in value):
        raise ValueError("must not contain a NUL character")
    return tuple(value)


def _alertmanager_url(value: Any) -> str:
    from urllib.parse import urlsplit

    value = _Loader.string(value).strip()
    if not value:
        return ""
    if len(value) > MAX_TEXT:
        raise ValueError(f"must be at most {MAX_TEXT} characters, got {len(value)}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'must be an http:// or https:// URL like "http://127.0.0.1:9093", '
                         f"got {_show(value)}")
    if parts.query or parts.fragment:
        raise ValueError(f"must have no query or fragment, got {_show(value)}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"invalid port in {_show(value)}") from None
    return value.rstrip("/")


def _suggest(word: str, choices, brackets: bool = False, quote: str = "") -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        return ""
    shown = f"[{close[0]}]" if brackets else f"{quote}{close[0]}{quote}"
    return f" (did you mean {shown}?)"


def _optional_function(module_name: str, function: str) -> Callable | None:
    """A function from a module another part of ctxmon may not have yet.

    Only the module itself being absent counts as absent: an import error inside it
    is a bug and propagates.
    """
    try:
        module: ModuleType = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        parts = module_name.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        if e.name in prefixes:
            return None
        raise
    fn = getattr(module, function, None)
    return fn if callable(fn) else None


_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def load_config(path: str | os.PathLike[str], *, check_rrd_files: bool = True) -> Config:
    """Read and validate the TOML file at `path`.

    `check_rrd_files`: ask `exporters.rrd.check_step` (when it exists) whether RRD
    files already in the data dir were made with another step. Reading only.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", path) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES >> 10} KiB: not a config file", path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(
            f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column})", path, line
        ) from None
    index = _LineIndex(text)
    if index.too_deep is not None:
        raise ConfigError(f"values nested more than {MAX_NESTING} deep", path, index.too_deep)
    try:
        parsed = tomllib.loads(text)
    except RecursionError:  # nesting the scan above cannot see (e.g. dotted keys)
        raise ConfigError("nested too deeply", path) from None
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _TOML_POSITION.search(message)
        line = None
        if m:
            message = message[: m.start()]
            if m.group(1):
                line = int(m.group(1))
                message += f" (column {m.group(2)})"
            else:
                line = max(1, len(text.splitlines()))
                message += " (at end of file)"
        raise ConfigError(f"syntax error: {message}", path, line) from None
    try:
        return _Loader(path, text, index).load(parsed, check_rrd_files)
    except RecursionError:
        raise ConfigError("nested too deeply", path) from None
