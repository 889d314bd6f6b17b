"""Loading: read the TOML file, validate every value into the schema's dataclasses,
and turn every problem into a one-line ConfigError naming the file, the line and
the key. Reading only: it creates no directory and writes no file.

Relative paths in the file are resolved against the file's own directory, so a
checkout's `conf/ctxmon.toml` can say `dir = "../var/rrd"` whatever the CWD.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from types import MappingProxyType
from typing import Any, Callable

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
)
from collector.cgroup import compile_rules
from exporters.addresses import check_rrdcached_address
from exporters.passwords import bcrypt_cost

from .schema import (
    LIMITS,
    LOG_LEVELS,
    MAX_CONFIG_BYTES,
    MAX_CONTEXTS_CAP,
    MAX_KERNEL_HZ,
    MAX_LEVEL,
    MAX_NAME,
    MAX_NESTING,
    MAX_PERCENT,
    MAX_RATE_POLLS,
    MAX_RULES,
    MAX_TEXT,
    RULE_KEYS,
    SOURCES,
    CollectorConfig,
    Config,
    ConfigError,
    DaemonConfig,
    ExporterConfig,
    GraphsConfig,
    LogConfig,
    RrdConfig,
    Rule,
    TrafficConfig,
    _one_line,
    parse_listen,
    toml_keys,
)
from .tomlmap import _describe, _LineIndex


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")


def _archive_keep(value: Any) -> float:
    """[rrd] archive_keep: 0 (keep archives for good) or a duration of 1d .. 100 years."""
    seconds = parse_duration(value)
    if seconds != 0 and not 86400 <= seconds <= 36500 * 86400:
        raise ValueError(f"must be 0 (keep for good) or 1d..36500d, got {_show(value)}")
    return seconds


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?", re.I)


def _byte_size(value: Any) -> int:
    """[rrd] max_bytes: a count of bytes, or "500M", "20GiB", "1.5T" (1024-based);
    0 for no budget."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size such as \"20G\" or a number of bytes, got {_show(value)}")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
        if m is None:
            raise ValueError(f"must be a size such as \"20G\" or a number of bytes, got {_show(value)}")
        size = int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))
    if not 0 <= size <= 1 << 60:
        raise ValueError(f"must be 0 (no budget) or a size up to 1 EiB, got {_show(value)}")
    return size


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

    @classmethod
    def _write_behind(cls, value: Any) -> float:
        """[rrd] write_behind: whole seconds within LIMITS (librrd takes whole seconds)."""
        seconds = cls.duration("write_behind")(value)
        if seconds != int(seconds):
            raise ValueError(f"must be a whole number of seconds, got {_show(value)}")
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
        out = []
        for i, item in enumerate(raw):
            rloc = loc + (i,)
            # The file's side: known keys (with a suggestion), string values (with
            # their line). What a rule means is the collector's one validator's.
            for key in item:
                if key not in RULE_KEYS:
                    raise self.error(rloc + (key,),
                                     "unknown key" + _suggest(key, RULE_KEYS, quote='"'))
                self.get(item, rloc, key, self.string, None)
            matcher = "glob" if "glob" in item else "regex"
            try:
                compile_rules([item])
            except ValueError as e:
                message = _RULE_MESSAGE_PREFIX.sub("", str(e)) or "invalid rule"
                key = _rule_key_at_fault(message, matcher)
                raise self.error(rloc + ((key,) if key else ()), message) from None
            out.append(Rule(**{k: item[k] for k in RULE_KEYS if k in item}))
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
            archive_keep=self.get(raw, loc, "archive_keep", _archive_keep, d.archive_keep),
            max_bytes=self.get(raw, loc, "max_bytes", _byte_size, d.max_bytes),
            write_behind=self.get(raw, loc, "write_behind", self._write_behind, d.write_behind),
        )
        if check_rrd_files and os.path.isdir(directory):
            from exporters.rrd import check_step  # librrd only when there are files

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
            try:
                bcrypt_cost(hashed)
            except ValueError as e:
                raise self.error(loc + ("basic_auth", user), str(e)) from None
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
            departed_after=self.get(raw, loc, "departed_after",
                                    self.duration("departed_after"), d.departed_after),
            traffic_style=self.get(raw, loc, "traffic_style", self.choice("munin", "mrtg"),
                                   d.traffic_style),
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


# compile_rules names the rule itself ("cgroup rule: ..."); ours names it with its line.
_RULE_MESSAGE_PREFIX = re.compile(r"^cgroup rule(?: \d+)?: ")


def _rule_key_at_fault(message: str, matcher: str) -> str | None:
    """Which key of a rule compile_rules's message is about, for the line number
    (None: the rule as a whole)."""
    if message.startswith("needs"):
        return None
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
    check_rrdcached_address(value)
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
