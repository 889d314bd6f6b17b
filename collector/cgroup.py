"""The cgroup source: a context is the cgroup (container, machine, service) a rule names.

Each process's cgroup path is walked from its shortest prefix to its longest; the first
prefix that some rule fully matches is the context (so the services inside a container
stay in the container). Unmatched processes, and those whose cgroup cannot be read,
belong to `host`.

Where the cgroup mount is the live one, every poll walks the hierarchy and reads each
cgroup's `cgroup.procs` (right even after processes migrate, and cheap: cgroups are
few). Otherwise (a recorded tree, or no mount) `<proc>/<pid>/cgroup` is read once per
process, keyed by (pid, start).

Pure parsers (text in, values out) come first; I/O is in `CgroupSource`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import string
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, Iterable, Mapping, Sequence

from .catalog import MEMORY_ANON, MEMORY_FILE, PRESSURE_RESOURCES, pressure_key
from .kernfile import HeldFile, HeldFiles, held_files_budget, read_text
from .procfs import ABSURD, CLK_TCK, ErrorCounts, ParseError, ProcStat
from .snapshot import LimitRow
from .source import ContextIdentity, KernelAccounting, Source

log = logging.getLogger(__name__)
_PID = itemgetter(0)  # ProcStat.pid

SOURCE_NAME = "cgroup"
HOST = ContextIdentity(key="", name="host", ctx_id="0", source=SOURCE_NAME, cgroup="")

# Errors that mean "this process or cgroup is gone" (a race), not "something is wrong".
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)

# v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes (about 2**63); anything this
# large is no limit on any real machine.
_V1_UNLIMITED = 1 << 62

V1_HIERARCHIES = ("cpuacct", "memory", "name=systemd")
_V1_HIERARCHY = re.compile(r"name=[A-Za-z0-9_.-]+|[a-z][a-z0-9_]*(?:,[a-z][a-z0-9_]*)*")

# --------------------------------------------------------------------------- rules

# Default rules, tried after the configured ones, in this order. Same form as the
# config's rules; `lookup: docker` means capture 1 is a Docker container id whose
# name is read from `<docker_root>/containers/<id>/config.v2.json`, the rendered
# `name` being the fallback when it cannot be read.
DEFAULT_RULES: tuple[dict[str, str], ...] = (
    # Docker, systemd cgroup driver: system.slice/docker-<id>.scope
    {"regex": r"(?:.*/)?docker-([0-9a-f]{64})\.scope", "name": "docker-{1:.12}", "lookup": "docker"},
    # Docker, cgroupfs driver: docker/<id>
    {"regex": r"(?:.*/)?docker/([0-9a-f]{64})", "name": "docker-{1:.12}", "lookup": "docker"},
    # Podman: machine.slice/libpod-<id>.scope (systemd), libpod_parent/libpod-<id> (cgroupfs)
    {"regex": r"(?:.*/)?libpod-([0-9a-f]{64})(?:\.scope)?", "name": "podman-{1:.12}"},
    # LXC 4+: lxc.payload.<name>; older: lxc/<name>, lxc.payload/<name>
    {"glob": "**/lxc.payload.*", "name": "{1}"},
    {"glob": "**/lxc.payload/*", "name": "{1}"},
    {"glob": "**/lxc/*", "name": "{1}"},
    # systemd-machined (nspawn, libvirt) and nspawn run as a template service
    {"glob": "**/machine.slice/machine-*.scope", "name": "{1}"},
    {"glob": "**/machine.slice/systemd-nspawn@*.service", "name": "{1}"},
    # Any systemd service, by its unit name as systemctl spells it (escapes kept)
    {"glob": "**/*.service", "name": "{basename}"},
)

_LOOKUPS = ("docker",)
_RULE_KEYS = {"glob", "regex", "name", "lookup"}
_NAMED_FIELDS = ("path", "basename")


def unescape_systemd(s: str) -> str:
    r"""Undo systemd's `\xNN` escapes (`my\x2dbox` -> `my-box`); other text unchanged.

    Escaped bytes may form UTF-8 sequences; bytes that do not decode are kept as
    surrogates (like file names from the OS), never raising.
    """
    if "\\x" not in s:
        return s
    raw = s.encode("utf-8", "surrogateescape")
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)
    return raw.decode("utf-8", "surrogateescape")


def glob_to_regex(glob: str) -> str:
    """A cgroup path glob as a regex for `fullmatch`.

    `*` matches within one path segment and is a capture ({1}, {2} ... in order);
    `**` matches across segments and does not capture (`**/` also matches no segment);
    `?` is one character within a segment. Everything else is literal.
    """
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        if glob.startswith("**", i):
            i += 2
            if glob.startswith("/", i):
                out.append("(?:.*/)?")
                i += 1
            elif out and out[-1] == "/" and i == n:
                out[-1] = "(?:/.*)?"
            else:
                out.append(".*")
        elif glob[i] == "*":
            out.append("([^/]*)")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


MAX_TEMPLATE_WIDTH = 255  # characters a name template's field may pad or cut to


def _check_template(template: str, groups: int) -> None:
    """Raise ValueError unless `template` formats with `groups` captures."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"bad name template {template!r}: {e}") from None
    for _, field, spec, _ in fields:
        if field is None:
            continue
        if field == "":
            raise ValueError(
                f"bad name template {template!r}: use numbered captures {{1}}, {{2}} ..."
            )
        if field.isascii() and field.isdigit():
            if int(field) == 0:
                raise ValueError(
                    f"bad name template {template!r}: captures are numbered from {{1}}"
                )
            if int(field) > groups:
                raise ValueError(
                    f"bad name template {template!r}: {{{field}}} but the pattern has "
                    f"{groups} capture(s)"
                )
        elif field not in _NAMED_FIELDS:
            raise ValueError(
                f"bad name template {template!r}: unknown field {{{field}}} "
                f"(captures {{1}}..., {{path}}, {{basename}})"
            )
        if spec and "{" in spec:
            raise ValueError(f"bad name template {template!r}: nested fields")
        # Width and precision are bounded: "{1:>50000000}" would make 50 MB names.
        widths = re.findall(r"\d+", spec or "")
        if any(len(n) > 3 or int(n) > MAX_TEMPLATE_WIDTH for n in widths):
            raise ValueError(f"bad name template {template!r}: width or precision above "
                             f"{MAX_TEMPLATE_WIDTH}")
    try:
        template.format("x", *["x"] * groups, path="x", basename="x")
    except (ValueError, IndexError, KeyError) as e:
        raise ValueError(f"bad name template {template!r}: {e}") from None


@dataclass(frozen=True, slots=True)
class Rule:
    """One mapping rule: a pattern fully matching a cgroup path, and a name template."""

    pattern: re.Pattern[str]
    template: str
    lookup: str | None = None  # "docker": capture 1 is a container id to look up
    text: str = ""  # the rule as written, for messages
    # Written as "/system.slice/..." (how /proc/<pid>/cgroup shows paths): matched
    # against the path with a leading slash.
    slash: bool = False

    def match(self, path: str) -> tuple[str, ...] | None:
        """The captures (unescaped) if the rule fully matches `path`, else None."""
        m = self.pattern.fullmatch("/" + path if self.slash else path)
        if m is None:
            return None
        return tuple(unescape_systemd(g or "") for g in m.groups())

    def render(self, path: str, captures: Sequence[str]) -> str:
        return self.template.format(
            path, *captures, path=path, basename=path.rpartition("/")[2]
        )


def compile_rules(specs: Iterable[Mapping[str, Any]] | None) -> list[Rule]:
    """Compile config rules (`{"glob"|"regex": ..., "name": ..., ["lookup": "docker"]}`).

    Patterns match a whole cgroup path prefix, written without a leading slash
    (`system.slice/*.service`) or with one (`/system.slice/*.service`).
    Raises ValueError with a one-line message (naming the rule's position when
    several are given).
    """
    rules: list[Rule] = []
    specs = list(specs or ())
    for i, spec in enumerate(specs, 1):
        where = f"cgroup rule {i}" if len(specs) > 1 else "cgroup rule"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: expected a table with glob or regex and name")
        unknown = set(spec) - _RULE_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        if ("glob" in spec) == ("regex" in spec):
            given = [k for k in ("glob", "regex") if k in spec]
            raise ValueError(f"{where}: needs exactly one of glob or regex, got "
                             + (" and ".join(given) or "neither"))
        kind = "glob" if "glob" in spec else "regex"
        text = spec[kind]
        template = spec.get("name")
        if template is None:
            raise ValueError(f'{where}: needs a name (a template like "{{1}}")')
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: {kind} must be a non-empty string")
        if not isinstance(template, str) or not template:
            raise ValueError(f"{where}: name must be a non-empty string")
        lookup = spec.get("lookup")
        if lookup is not None and lookup not in _LOOKUPS:
            raise ValueError(f"{where}: lookup must be one of {', '.join(_LOOKUPS)}")
        regex = glob_to_regex(text) if kind == "glob" else text
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise ValueError(f"{where}: bad {kind} {text!r}: {e}") from None
        try:
            _check_template(template, pattern.groups)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if lookup and pattern.groups < 1:
            raise ValueError(f"{where}: lookup needs the container id as capture 1")
        slash = text.startswith(("/", "^/"))
        rules.append(Rule(pattern, template, lookup, f"{kind} {text!r}", slash))
    return rules


DEFAULT_COMPILED = tuple(compile_rules(DEFAULT_RULES))


def path_prefixes(path: str) -> Iterable[str]:
    """`a/b/c` -> `a`, `a/b`, `a/b/c` (the root "" is not a candidate)."""
    i = path.find("/")
    while i >= 0:
        if i:
            yield path[:i]
        i = path.find("/", i + 1)
    if path:
        yield path


def match_path(path: str, rules: Sequence[Rule]) -> tuple[str, Rule, tuple[str, ...]] | None:
    """The shortest prefix of `path` some rule matches: (prefix, rule, captures)."""
    for prefix in path_prefixes(path):
        for rule in rules:
            caps = rule.match(prefix)
            if caps is not None:
                return prefix, rule, caps
    return None


try:  # hashlib's own blake2s, without hashlib's OpenSSL start-up (2.5 ms of `ctxmon stat`)
    from _blake2 import blake2s
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2s


def context_id(path: str) -> str:
    """The CTX column for a cgroup context: 6 hex digits of a stable hash of its path."""
    return blake2s(path.encode("utf-8", "surrogateescape"), digest_size=3).hexdigest()


# --------------------------------------------------------------------------- parsers


def parse_pid_cgroup(text: str) -> tuple[dict[str, str], int]:
    """`<proc>/<pid>/cgroup` -> ({hierarchy: path}, malformed lines).

    Hierarchy keys: "" for cgroup v2 (`0::/path`), else each controller of a v1 line
    (`2:cpu,cpuacct:/x` gives `cpu` and `cpuacct`) or `name=systemd`. Paths are
    relative to the hierarchy root, without the leading slash; v2's " (deleted)"
    suffix for a removed cgroup is dropped.
    """
    out: dict[str, str] = {}
    bad = 0
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit()) or not parts[2].startswith("/"):
            bad += 1
            continue
        _, controllers, path = parts
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        path = path.strip("/")
        if controllers == "":
            out[""] = path
        else:
            for c in controllers.split(","):
                out.setdefault(c, path)
    return out, bad


def pick_cgroup_path(paths: Mapping[str, str], hierarchy: str | None) -> str | None:
    """The path in `hierarchy` ("" = v2); None = auto: v2, else cpuacct, else name=systemd."""
    if hierarchy is not None:
        return paths.get(hierarchy)
    for h in ("", "cpuacct", "name=systemd"):
        if h in paths:
            return paths[h]
    return None


def parse_cgroup_procs(text: str) -> list[int]:
    """`cgroup.procs`: one pid a line (0 = a process outside our pid namespace: dropped)."""
    try:
        pids = list(map(int, text.split()))
    except ValueError:
        raise ParseError("cgroup.procs: non-numeric pid") from None
    if pids and min(pids) <= 0:  # rare: test first, the check runs in C
        return [p for p in pids if p > 0]
    return pids


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.events, pids.events, cpuacct.stat)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if len(f) != 2:
            raise ParseError(f"expected 'key value', got {line!r}")
        try:
            v = out[f[0]] = int(f[1])
        except ValueError:
            raise ParseError(f"non-numeric value in {line!r}") from None
        if not 0 <= v < ABSURD:
            raise ParseError(f"negative or absurd value in {line[:80]!r}")
    return out


def parse_cpu_stat(text: str) -> tuple[float, float]:
    """v2 `cpu.stat` -> (user, system) seconds."""
    kv = parse_flat_keyed(text)
    try:
        return kv["user_usec"] / 1e6, kv["system_usec"] / 1e6
    except KeyError as e:
        raise ParseError(f"cpu.stat: no {e.args[0]}") from None


def parse_cpuacct_stat(text: str, hz: int = CLK_TCK) -> tuple[float, float]:
    """v1 `cpuacct.stat` (USER_HZ ticks) -> (user, system) seconds."""
    kv = parse_flat_keyed(text)
    try:
        return kv["user"] / hz, kv["system"] / hz
    except KeyError as e:
        raise ParseError(f"cpuacct.stat: no {e.args[0]}") from None


def parse_int(text: str) -> int:
    """A file holding one integer (memory.current, cpuacct.usage_user ...)."""
    try:
        v = int(text.strip())
    except ValueError:
        raise ParseError(f"expected an integer, got {text.strip()[:40]!r}") from None
    if not 0 <= v < ABSURD:
        raise ParseError(f"negative or absurd value {text.strip()[:40]!r}")
    return v


def parse_limit(text: str) -> int | None:
    """A v2 limit (`memory.max`, `pids.max`): "max" -> None (unlimited), else the value."""
    if text.strip() == "max":
        return None
    return parse_int(text)


def parse_v1_limit(text: str) -> int | None:
    """A v1 byte limit: the kernel's "no limit" (about 2**63) -> None."""
    v = parse_int(text)
    return None if v >= _V1_UNLIMITED else v


def parse_docker_name(text: str) -> str | None:
    """`config.v2.json` -> the container name without its leading "/", or None."""
    try:
        cfg = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ParseError("config.v2.json: not JSON") from None
    name = cfg.get("Name") if isinstance(cfg, dict) else None
    if not isinstance(name, str):
        return None
    return name.lstrip("/") or None


# --------------------------------------------------------------------------- I/O


class _Gone(Exception):
    """The file's process or cgroup went away: a race, not an error."""


def _read(path: str) -> str:
    """Read a small kernel file; raise _Gone when it vanished, OSError otherwise."""
    try:
        return read_text(path)
    except OSError as e:
        if e.errno in _GONE:
            raise _Gone(path) from None
        raise


def walk_hierarchy(root: str, errors: ErrorCounts | None = None) -> dict[str, list[int]]:
    """cgroup path (relative, "" = root) -> its pids, from every `cgroup.procs` under
    `root`; cgroups without processes are left out. A process moved mid-walk may be
    listed twice: `CgroupSource.assign` counts it where it was seen first."""
    out: dict[str, list[int]] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        d = os.path.join(root, rel) if rel else root
        try:
            pids = parse_cgroup_procs(_read(os.path.join(d, "cgroup.procs")))
            if pids:
                out[rel] = pids
        except _Gone:
            continue  # removed while we walked
        except OSError as e:
            # A threaded cgroup refuses cgroup.procs: its processes are listed at the
            # thread root, so this is no error.
            if e.errno != errno.EOPNOTSUPP and errors is not None:
                errors[SOURCE_NAME] += 1
                log.debug("%s/cgroup.procs: %s", d, e.strerror)
        except ParseError as e:
            if errors is not None:
                errors[SOURCE_NAME] += 1
            log.debug("%s: %s", d, e)
        try:
            with os.scandir(d) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(f"{rel}/{entry.name}" if rel else entry.name)
        except OSError:
            continue  # removed while we walked
    return out


def _v1_dir(cgroup_root: str, hierarchy: str) -> str | None:
    """Where a v1 hierarchy is mounted under `cgroup_root` (co-mounts like cpu,cpuacct too)."""
    want = hierarchy[5:] if hierarchy.startswith("name=") else hierarchy
    d = os.path.join(cgroup_root, want)
    if os.path.isfile(os.path.join(d, "cgroup.procs")):
        return d
    try:
        names = sorted(os.listdir(cgroup_root))
    except OSError:
        return None
    for name in names:
        d = os.path.join(cgroup_root, name)
        if want in name.split(",") and os.path.isfile(os.path.join(d, "cgroup.procs")):
            return d
    return None


def _on_cgroupfs(paths: Iterable[str], mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether every path is inside a mounted cgroup or cgroup2 file system (a live
    hierarchy, whose files may be held open), not a recorded copy."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    mounts = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        if sep and right.split()[:1] in (["cgroup"], ["cgroup2"]):
            mounts.append(left.split()[4].encode().decode("unicode_escape"))
    for p in paths:
        real = os.path.realpath(p)
        if not any(real == m or real.startswith(m.rstrip("/") + "/") for m in mounts):
            return False
    return True


def _is_live_proc(proc_root: str) -> bool:
    """Whether `proc_root` is this process's own /proc (cgroup.procs pids are ours)."""
    try:
        return os.path.samefile(proc_root, "/proc")
    except OSError:
        return False


class CgroupSource(Source):
    """Contexts from cgroups. See the module docstring.

    `hierarchy`: "auto" (v2 at `cgroup_root`, else the hybrid `unified`, else v1
    cpuacct or name=systemd), "unified", or a v1 hierarchy ("cpuacct", "memory",
    "name=systemd"). `cgroup_root` and `docker_root` default to `sys/fs/cgroup` and
    `var/lib/docker` under the parent of `proc_root`, so a recorded tree reads its own.
    """

    name = SOURCE_NAME

    def __init__(
        self,
        proc_root: str = "/proc",
        cgroup_root: str | None = None,
        hierarchy: str = "auto",
        rules: Iterable[Mapping[str, Any]] | Sequence[Rule] | None = None,
        docker_root: str | None = None,
    ):
        self.proc_root = proc_root
        root = os.path.dirname(os.path.abspath(proc_root))
        self.cgroup_root = cgroup_root or os.path.join(root, "sys/fs/cgroup")
        self.docker_root = docker_root or os.path.join(root, "var/lib/docker")
        rules = list(rules or ())
        compiled = rules if all(isinstance(r, Rule) for r in rules) else compile_rules(rules)
        self.rules: tuple[Rule, ...] = tuple(compiled) + DEFAULT_COMPILED

        self.version, self.hierarchy_dir, self.proc_key = self._select(hierarchy)
        self.v2_dir = self.hierarchy_dir if self.version == 2 else None
        self.v1_dirs = {
            h: d for h in ("cpuacct", "memory", "pids") if (d := _v1_dir(self.cgroup_root, h))
        }
        # Walk cgroup.procs only where its pids are the ones in proc_root.
        self.walk = (
            self.hierarchy_dir is not None
            and os.path.isfile(os.path.join(self.hierarchy_dir, "cgroup.procs"))
            and _is_live_proc(proc_root)
        )
        self._proc_paths: dict[tuple[int, int], str | None] = {}
        # Walking: the cgroups last seen with processes, whose cgroup.procs are re-read
        # each poll (None: walk the whole hierarchy first).
        self._known: set[str] | None = None
        # Files read every poll (cgroup.procs, accounting), held open on a live hierarchy.
        live = _is_live_proc(proc_root)
        dirs = [d for d in (self.hierarchy_dir, *self.v1_dirs.values()) if d]
        self._files = HeldFiles(held_files_budget(), hold=live and bool(dirs) and _on_cgroupfs(dirs))
        self._plans: dict[str, _Plan] = {}  # context path -> its accounting files
        self._matches: dict[str, tuple[str, Rule, tuple[str, ...]] | None] = {}
        self._idents: dict[str, ContextIdentity] = {}  # path -> its context, if fixed
        self._procs_files: dict[str, HeldFile] = {}  # walked cgroup -> its cgroup.procs
        self._docker_names: dict[str, tuple[tuple[int, int], str | None]] = {}

    def _select(self, hierarchy: str) -> tuple[int | None, str | None, str | None]:
        """(cgroup version, mounted hierarchy dir or None, key in <pid>/cgroup or None=auto)."""
        root = self.cgroup_root
        unified = os.path.join(root, "unified")
        if hierarchy in ("auto", "unified"):
            for d in (root, unified):
                if os.path.isfile(os.path.join(d, "cgroup.controllers")):
                    return 2, d, ""
            if hierarchy == "unified":
                return 2, None, ""
            for h in ("cpuacct", "name=systemd"):
                d = _v1_dir(root, h)
                if d:
                    return 1, d, h
            return None, None, None  # nothing mounted: each pid's cgroup file decides
        if _V1_HIERARCHY.fullmatch(hierarchy):
            # A co-mount ("cpu,cpuacct") is found by, and keyed in <pid>/cgroup by,
            # its first controller.
            first = hierarchy.split(",")[0]
            return 1, _v1_dir(root, hierarchy) or _v1_dir(root, first), first
        raise ValueError(
            f"unknown cgroup hierarchy {hierarchy!r} "
            f"(expected auto, unified, {', '.join(V1_HIERARCHIES)})"
        )

    # ---- assign

    def assign(
        self, procs: Sequence[ProcStat], errors: ErrorCounts
    ) -> dict[ContextIdentity, list[ProcStat]]:
        self._files.sweep()  # what the previous poll did not read belongs to nobody now
        cache = self._proc_paths
        live_keys: set[tuple[int, int]] = set()
        # Group by path first (a str hashes once and caches it), then paths to
        # identities: hashing a ContextIdentity per process costs more than the rest.
        by_path: dict[str, list[ProcStat]] = {}
        if self.walk:
            # Each walked cgroup takes its processes out of the scan, in C (map, pop,
            # filter): a Python loop over 20,000 processes costs 5 ms more. A pid
            # listed twice (moved mid-walk) stays where it was seen first; a listed pid
            # the scan did not see (exited, or a thread's) is dropped.
            unclaimed = dict(zip(map(_PID, procs), procs))
            take = unclaimed.pop
            for path, pids in self._walk(errors).items():
                members = list(filter(None, map(take, pids, repeat(None))))
                if members:
                    by_path[path] = members
            procs = list(unclaimed.values())
        for p in procs:
            if self.walk:
                # Missed by the walk: in a cgroup not walked yet (new, or moved there),
                # a zombie, or moved mid-walk. Its own file says where it is now.
                try:
                    path = self._read_pid_cgroup(p.pid, errors)
                except _Gone:
                    continue
                if path is not None and self._known is not None:
                    self._known.add(path)
                path = path or ""
            else:
                # Not walked (a recorded tree): once per process life.
                k = (p.pid, p.start)
                live_keys.add(k)
                if k in cache:
                    path = cache[k]
                else:
                    try:
                        path = cache[k] = self._read_pid_cgroup(p.pid, errors)
                    except _Gone:
                        continue
                path = path or ""
            members = by_path.get(path)
            if members is None:
                by_path[path] = [p]
            else:
                members.append(p)
        idents: dict[str, ContextIdentity] = {}
        groups: dict[ContextIdentity, list[ProcStat]] = {}
        for path, members in by_path.items():
            ident = idents[path] = self._identity(path, errors)
            if ident in groups:
                groups[ident].extend(members)
            else:
                groups[ident] = members
        for k in cache.keys() - live_keys:
            del cache[k]
        for path in self._matches.keys() - idents.keys():
            del self._matches[path]
            self._idents.pop(path, None)
        for path in self._plans.keys() - {i.key for i in groups}:
            del self._plans[path]  # a context gone (its files are swept next poll)
        return groups

    def _walk(self, errors: ErrorCounts) -> dict[str, list[int]]:
        """cgroup path -> pids from cgroup.procs: the whole hierarchy at first, then
        the cgroups that had processes (held open, re-read with pread). Processes that
        appear elsewhere are found through their own cgroup file, and their cgroup
        is read from then on; a cgroup found empty or gone is dropped."""
        known = self._known
        if known is None:
            out = walk_hierarchy(self.hierarchy_dir, errors)
            self._known = set(out)
            return out
        out: dict[str, list[int]] = {}
        base = self.hierarchy_dir
        files = self._procs_files
        for rel in files.keys() - known:
            del files[rel]
        for rel in list(known):
            hf = files.get(rel)
            if hf is None:
                path = f"{base}/{rel}/cgroup.procs" if rel else f"{base}/cgroup.procs"
                hf = files[rel] = self._files.file(path, rel)
            path = hf.path
            try:
                pids = list(map(int, hf.read().split()))
            except OSError as e:
                known.discard(rel)
                # A threaded cgroup refuses cgroup.procs (its processes are listed at
                # the thread root); a removed one is simply gone.
                if e.errno not in _GONE and e.errno != errno.EOPNOTSUPP:
                    errors[SOURCE_NAME] += 1
                    log.debug("%s: %s", path, e.strerror)
                continue
            except ValueError:
                known.discard(rel)
                errors[SOURCE_NAME] += 1
                log.debug("%s: non-numeric pid", path)
                continue
            if pids:
                out[rel] = pids
            else:
                known.discard(rel)
        return out

    def close(self) -> None:
        self._files.close()
        self._plans.clear()
        self._procs_files.clear()

    def _read_pid_cgroup(self, pid: int, errors: ErrorCounts) -> str | None:
        """The pid's cgroup path in our hierarchy; None (host) when unreadable."""
        path = f"{self.proc_root}/{pid}/cgroup"
        try:
            text = _read(path)
        except _Gone:
            text = ""
        except OSError as e:
            errors[SOURCE_NAME] += 1
            log.debug("%s: %s", path, e.strerror)
            return None
        if not text.strip():
            # The process exited after the scan: its directory went with it. A file
            # missing or empty in a directory still there is a broken (recorded) tree,
            # whose process is kept, under the host, and counted.
            if not os.path.isdir(f"{self.proc_root}/{pid}"):
                raise _Gone(path)
            errors[SOURCE_NAME] += 1
            log.debug("%s: missing or empty", path)
            return None
        paths, bad = parse_pid_cgroup(text)
        found = pick_cgroup_path(paths, self.proc_key)
        if bad or found is None:
            errors[SOURCE_NAME] += 1
            log.debug("%s: %d malformed lines, hierarchy found: %s", path, bad, found is not None)
        return found

    def _identity(self, path: str, errors: ErrorCounts) -> ContextIdentity:
        ident = self._idents.get(path)
        if ident is not None:
            return ident
        if path not in self._matches:
            self._matches[path] = match_path(path, self.rules)
        m = self._matches[path]
        if m is None:
            ident = HOST
        else:
            prefix, rule, caps = m
            name = None
            if rule.lookup == "docker":
                name = self._docker_name(caps[0], errors)
            if not name:
                name = rule.render(prefix, caps) or prefix
            ident = ContextIdentity(
                key=prefix, name=name, ctx_id=context_id(prefix), source=SOURCE_NAME,
                cgroup=prefix
            )
            if rule.lookup == "docker":
                return ident  # a container may be renamed: looked up each poll
        # The rest depends on the path and the rules only: made once per path.
        self._idents[path] = ident
        return ident

    def _docker_name(self, cid: str, errors: ErrorCounts) -> str | None:
        """The container's name from Docker's config.v2.json, re-read when it changes."""
        if not re.fullmatch(r"[0-9a-f]{64}", cid):
            return None  # a config rule captured something that is no container id
        path = os.path.join(self.docker_root, "containers", cid, "config.v2.json")
        try:
            st = os.stat(path)
        except OSError:
            self._docker_names.pop(cid, None)
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._docker_names.get(cid)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            name = parse_docker_name(_read(path))
        except _Gone:
            return None
        except (OSError, ParseError) as e:
            errors[SOURCE_NAME] += 1
            log.debug("%s: %s", path, e)
            name = None
        if len(self._docker_names) > 4096:  # containers come and go: bound the cache
            self._docker_names.clear()
        self._docker_names[cid] = (stamp, name)
        return name

    # ---- accounting
    #
    # Each context keeps its files (`_Plan`: HeldFile objects, made when first read),
    # so a poll builds no path, looks none up, and a file the cgroup does not have
    # (a controller not enabled: most of them on a hybrid host) costs no exception.

    def _plan(self, path: str) -> "_Plan":
        plan = self._plans.get(path)
        if plan is None:
            dirs = {h: f"{d}/{path}" for h, d in self.v1_dirs.items()}
            if self.v2_dir:
                dirs["v2"] = f"{self.v2_dir}/{path}"
            plan = self._plans[path] = _Plan(self._files, dirs, path)
        return plan

    def accounting(self, ident: ContextIdentity, errors: ErrorCounts) -> KernelAccounting:
        path = ident.key
        if not path:
            return KernelAccounting()  # host: the sampler sums its processes
        plan = self._plans.get(path) or self._plan(path)
        f = plan.f
        get = self._get
        held = self._files
        # Which hierarchies have the memory and pids files is looked up in full once
        # in a while (as often as a missing file is looked for again: HeldFiles'
        # recheck_missing), and whenever a held file failed (a cgroup removed, maybe
        # made again with other controllers); in between only those are read.
        full = (not held.hold or held.clock() >= plan.until
                or plan.epoch != held.epoch(path))
        user = system = None
        # A cgroup gone since assign (or absent from the cpuacct hierarchy) just
        # reads as missing files: keep what there is.
        if self.v2_dir:
            cpu = get(f("v2/cpu.stat"), parse_cpu_stat, errors)
            if cpu is not None:
                user, system = cpu
        elif "cpuacct" in self.v1_dirs:
            user, system = self._v1_cpu(plan, errors)

        limits: list[LimitRow] = []
        memory = None
        mem_at = ()
        # v2's, else (v1, or a hybrid host's v1 memory controller) v1's
        for where in (plan.all_memory if full else plan.memory):
            if where == "v2/":
                current = get(f("v2/memory.current"), parse_int, errors)
                if current is None:
                    continue
                events = get(f("v2/memory.events"), parse_flat_keyed, errors) or {}
                memory = LimitRow(
                    "memory", "bytes", current,
                    maximum=get(f("v2/memory.peak"), parse_int, errors),
                    soft=get(f("v2/memory.high"), parse_limit, errors),
                    hard=get(f("v2/memory.max"), parse_limit, errors),
                    hits=events.get("max", 0),
                )
            else:
                current = get(f("memory/memory.usage_in_bytes"), parse_int, errors)
                if current is None:
                    continue
                memory = LimitRow(
                    "memory", "bytes", current,
                    maximum=get(f("memory/memory.max_usage_in_bytes"), parse_int, errors),
                    soft=get(f("memory/memory.soft_limit_in_bytes"), parse_v1_limit, errors),
                    hard=get(f("memory/memory.limit_in_bytes"), parse_v1_limit, errors),
                    hits=get(f("memory/memory.failcnt"), parse_int, errors) or 0,
                )
            mem_at = (where,)
            limits.append(memory)
            break
        # v1's pids controller has the same files as v2's.
        pids_at = ()
        for where in (plan.all_pids if full else plan.pids):
            current = get(f(where + "pids.current"), parse_int, errors)
            if current is None:
                continue
            events = get(f(where + "pids.events"), parse_flat_keyed, errors) or {}
            limits.append(LimitRow(
                "pids", "count", current,
                maximum=get(f(where + "pids.peak"), parse_int, errors),
                hard=get(f(where + "pids.max"), parse_limit, errors),
                hits=events.get("max", 0),
            ))
            pids_at = (where,)
            break

        # anon and file memory from memory.stat, of the controller memory is read from.
        # v2's figures include descendants; v1's `total_*` do (its plain rss/cache are
        # this cgroup's own only), as memory.usage_in_bytes does.
        figures: dict[str, float] = {}
        stat_at = ()
        for where in (plan.all_memory if full else plan.memory_stat):
            stat = get(f(where + "memory.stat"),
                       _v2_memory_split if where == "v2/" else _v1_memory_split, errors)
            if stat is not None:
                figures.update(stat)
                stat_at = (where,)
                break
        if self.v2_dir:
            self._pressure(plan, figures, errors)
        if full:
            plan.memory, plan.pids, plan.memory_stat = mem_at, pids_at, stat_at
            plan.epoch = held.epoch(path)
            plan.until = held.clock() + held.recheck_missing
        return KernelAccounting(cpu_user_seconds=user, cpu_system_seconds=system,
                                limits=tuple(limits), figures=figures)

    @staticmethod
    def _get(hf: HeldFile, parse, errors: ErrorCounts):
        """Read and parse one file. Missing or gone -> None; bad -> counted, None."""
        try:
            return hf.get(parse)
        except OSError as e:
            errors[SOURCE_NAME] += 1
            log.debug("%s: %s", hf.path, e.strerror or e)
            return None
        except ParseError as e:
            errors[SOURCE_NAME] += 1
            log.debug("%s: %s", hf.path, e)
            return None

    def _v1_cpu(self, plan: "_Plan", errors: ErrorCounts) -> tuple[float | None, float | None]:
        f = plan.f
        try:
            user = f("cpuacct/cpuacct.usage_user").parsed(parse_int)
            system = f("cpuacct/cpuacct.usage_sys").parsed(parse_int)
            return user / 1e9, system / 1e9
        except (OSError, ParseError):
            pass  # older kernels: no usage_user/usage_sys, use cpuacct.stat
        cpu = self._get(f("cpuacct/cpuacct.stat"), parse_cpuacct_stat, errors)
        return cpu if cpu is not None else (None, None)

    def _pressure(self, plan: "_Plan", out: dict[str, float], errors: ErrorCounts) -> None:
        """PSI totals of a v2 cgroup's cpu, memory and io.pressure files. A kernel
        booted with psi=0 has the files but refuses to read them: no figures, no
        error (and none for a v1-only or VServer context, which has no such file)."""
        f = plan.f
        for name, parse in _PRESSURE_FILES:
            hf = f(name)
            try:
                totals = hf.get(parse)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                    errors[SOURCE_NAME] += 1
                    log.debug("%s: %s", hf.path, e.strerror or e)
                continue
            except ParseError as e:
                errors[SOURCE_NAME] += 1
                log.debug("%s: %s", hf.path, e)
                continue
            if totals:
                out.update(totals)


class _Plan:
    """The held files of one cgroup context: `f("v2/cpu.stat")` is its cpu.stat in
    the cgroup2 hierarchy, `f("memory/memory.stat")` in the v1 memory one."""

    __slots__ = ("held", "dirs", "group", "files", "all_memory", "all_pids", "memory",
                 "pids", "memory_stat", "epoch", "until")

    def __init__(self, held: HeldFiles, dirs: dict[str, str], group: str):
        self.held = held
        self.group = group  # the cgroup path: its files in every hierarchy are one group
        self.dirs = dirs
        self.files: dict[str, HeldFile] = {}
        # Where memory and pids files may be, in the order they are looked for, and
        # where they were found at the last full look (until `until`, in `epoch`).
        self.all_memory = tuple(w for w in ("v2/", "memory/") if w[:-1] in dirs)
        self.all_pids = tuple(w for w in ("v2/", "pids/") if w[:-1] in dirs)
        self.memory: tuple[str, ...] = ()
        self.pids: tuple[str, ...] = ()
        self.memory_stat: tuple[str, ...] = ()
        self.epoch = -1
        self.until = 0.0

    def f(self, name: str) -> HeldFile:
        hf = self.files.get(name)
        if hf is None:
            where, _, file = name.partition("/")
            hf = self.files[name] = self.held.file(f"{self.dirs[where]}/{file}", self.group)
        return hf


def parse_pressure(text: str) -> dict[str, float]:
    """A PSI file (`cpu.pressure` ...) -> {"some": seconds, "full": seconds}.

    Lines are `some avg10=0.00 avg60=0.00 avg300=0.00 total=<microseconds>`, then
    the same for `full` (cpu.pressure has no full line before Linux 5.13). Only the
    totals are kept: they are counters; the averages can be derived from them."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        kind = fields[0]
        if kind not in ("some", "full") or kind in out:
            raise ParseError(f"pressure: unexpected line {line[:80]!r}")
        total = None
        for f in fields[1:]:
            key, sep, value = f.partition("=")
            if not sep:
                raise ParseError(f"pressure: no key=value in {line[:80]!r}")
            if key == "total":
                if not (value.isascii() and value.isdigit()) or int(value) >= ABSURD:
                    raise ParseError(f"pressure: bad total in {line[:80]!r}")
                total = int(value)
        if total is None:
            raise ParseError(f"pressure: no total in {line[:80]!r}")
        out[kind] = total / 1e6
    if "some" not in out:
        raise ParseError("pressure: no 'some' line")
    return out


def _memory_split(stat: Mapping[str, int], anon: str, file: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if anon in stat:
        out[MEMORY_ANON] = stat[anon]
    if file in stat:
        out[MEMORY_FILE] = stat[file]
    return out


def _v2_memory_split(text: str) -> dict[str, float]:
    return _memory_split(parse_flat_keyed(text), "anon", "file")


def _v1_memory_split(text: str) -> dict[str, float]:
    return _memory_split(parse_flat_keyed(text), "total_rss", "total_cache")


def _pressure_parser(resource: str):
    def parse(text: str) -> tuple[tuple[str, float], ...]:
        return tuple((pressure_key(resource, line), seconds)
                     for line, seconds in parse_pressure(text).items())
    return parse


# (file in the plan, parser to (figures key, seconds) pairs): one function per
# resource, made once, so a file whose bytes did not change is not parsed again.
_PRESSURE_FILES = tuple((f"v2/{r}.pressure", _pressure_parser(r)) for r in PRESSURE_RESOURCES)
