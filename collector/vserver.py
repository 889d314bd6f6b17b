"""Linux-VServer contexts: processes grouped by xid, the kernel's `/proc/virtual` figures.

Pure parsers for the `/proc/virtual/<xid>/*` files (vs2.0 and vs2.2+/2.3 layouts),
util-vserver's guest-name lookup (as vserver-stat does it), and `VServerSource`.

util-vserver stores absolute paths (`/etc/vservers/NAME/run` -> `/var/run/vservers/NAME`,
`.defaults/run.rev/<xid>` -> `/etc/vservers/NAME`). They are resolved under the tree
root, the parent of `proc_root`, so a recorded tree (`x/fixture/proc`) is read as a
whole host rooted at `x/fixture`, never escaping into the reader's own `/etc`.
"""

from __future__ import annotations

import errno
import zlib
import logging
import os
import re
import time
from typing import Callable, Sequence

from . import kernfile
from .procfs import ABSURD, PAGE_SIZE, ErrorCounts, ParseError, ProcStat, read_text
from .snapshot import LimitRow, SocketAccounting
from .source import ContextIdentity, KernelAccounting, Source

log = logging.getLogger(__name__)

DEFAULT_KERNEL_HZ = 250  # the Kconfig default, used when CONFIG_HZ cannot be found
NAME_TTL_SECONDS = 60.0  # names change only at guest start; see VServerSource.assign
MAX_SYMLINKS = 40  # as the kernel's path walk

# Resources the kernel accounts in pages (K20/K23 limit.h); the rest are counts,
# except MSGQ (RLIMIT_MSGQUEUE, bytes in the kernel's own rlimit).
_PAGE_RESOURCES = frozenset({"VM", "VML", "RSS", "ANON", "RMAP", "SHM"})
_BYTE_RESOURCES = frozenset({"MSGQ"})

_SOCKET_FAMILIES = ("UNSPEC", "UNIX", "INET", "INET6", "PACKET", "OTHER")

# ---------------------------------------------------------------------------
# Parsers (text in, values out)
# ---------------------------------------------------------------------------

_VXID_RE = re.compile(r"^VxID:\s*(\d+)", re.MULTILINE)  # the kernel writes one blank
_S_CONTEXT_RE = re.compile(r"^s_context:\s*(\d+)", re.MULTILINE)  # LEGACY builds
_VINFO_XID_RE = re.compile(r"^XID:\s*(\d+)", re.MULTILINE)


def parse_status_xid(text: str) -> int | None:
    """The xid in a `<pid>/status`: `VxID:` (vs2.0+), else the legacy `s_context:`.

    None when the file has neither (HIDE_VINFO contexts, a truncated file).
    """
    m = _VXID_RE.search(text) or _S_CONTEXT_RE.search(text)
    return int(m.group(1)) if m else None


def parse_vinfo_xid(text: str) -> int | None:
    """`<pid>/vinfo` (vs2.0+): `XID:\\t<xid>`."""
    m = _VINFO_XID_RE.search(text)
    return int(m.group(1)) if m else None


_NUM = r"(-?\d+)"
# vs2.0: `RES:→cur→max→limit→hits`
_LIMIT20_RE = re.compile(rf"^([A-Z0-9_]+):\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s*$")
# vs2.2+: `RES:→cur→min/max→soft/hard→hits`; padding puts blanks after the `/`,
# so the pairs are matched around the `/`, never split on whitespace.
_LIMIT22_RE = re.compile(
    rf"^([A-Z0-9_]+):\s+{_NUM}\s+{_NUM}\s*/\s*{_NUM}\s+{_NUM}\s*/\s*{_NUM}\s+{_NUM}\s*$"
)


def _unlimited(v: int) -> int | None:
    # RLIM_INFINITY is printed signed: -1.
    return None if v < 0 else v


class _LineMemo:
    """line -> what a pure per-line parser made of it, for files whose lines mostly
    repeat from poll to poll (a guest's limit lines: only a few use figures move).
    Two generations bound it: lines not seen for a generation are dropped."""

    def __init__(self, parse_line: Callable[[str], object], size: int = 1 << 14):
        self.parse_line = parse_line
        self.size = size
        self.now: dict[str, object] = {}
        self.before: dict[str, object] = {}

    def __call__(self, line: str) -> object:
        if len(line) > _MEMO_LINE_MAX:  # no real line is this long: not kept
            return self.parse_line(line)
        out = self.now.get(line, _UNSEEN)
        if out is _UNSEEN:
            out = self.before.get(line, _UNSEEN)
            if out is _UNSEEN:
                out = self.parse_line(line)
            if len(self.now) >= self.size:
                self.before, self.now = self.now, {}
            self.now[line] = out
        return out


_MEMO_LINE_MAX = 256
_UNSEEN = object()
_SKIP = object()  # a header or blank line
_BAD = object()  # a malformed line
_LIMIT_MEMOS: dict[int, _LineMemo] = {}  # page size -> memo of limit lines


def parse_limit(text: str, page_size: int = PAGE_SIZE) -> tuple[tuple[LimitRow, ...], int]:
    """`/proc/virtual/<xid>/limit`, both layouts; returns (rows, malformed lines skipped).

    Page resources (VM VML RSS ANON RMAP SHM) are converted to bytes. vs2.0 has one
    limit per resource, which the kernel enforces as a hard limit: it goes to `hard`,
    and `soft`/`minimum` stay None (not in that layout). Unlimited (-1) is None.
    """
    memo = _LIMIT_MEMOS.get(page_size)
    if memo is None:
        if len(_LIMIT_MEMOS) > 8:  # page sizes come from config: a handful at most
            _LIMIT_MEMOS.clear()
        memo = _LIMIT_MEMOS[page_size] = _LineMemo(lambda line: _limit_line(line, page_size))
    rows: list[LimitRow] = []
    bad = 0
    for line in text.splitlines():
        row = memo(line)
        if row is _SKIP:
            continue
        if row is _BAD:
            bad += 1
            continue
        rows.append(row)  # type: ignore[arg-type]
    return tuple(rows), bad


def _limit_line(line: str, page_size: int) -> object:
    """One line of a limit file: a LimitRow, _SKIP or _BAD (see parse_limit)."""
    if not line.strip() or line.startswith("Limit"):  # vs2.2+ header
        return _SKIP
    m = _LIMIT22_RE.match(line)
    if m:
        res = m.group(1)
        cur, lo, hi, soft, hard, hits = (int(x) for x in m.groups()[1:])
        lo_v: int | None = lo
    else:
        m = _LIMIT20_RE.match(line)
        if not m:
            return _BAD
        res = m.group(1)
        cur, hi, hard, hits = (int(x) for x in m.groups()[1:])
        lo_v = soft = None  # type: ignore[assignment]
    if cur < 0 or hits < 0 or (lo_v is not None and lo_v < 0) or max(
            cur, hi, hard, hits, lo_v or 0, soft or 0) >= ABSURD:
        return _BAD  # use and hits are never negative; -1 is only "unlimited"
    if res in _PAGE_RESOURCES:
        unit, scale = "bytes", page_size
    elif res in _BYTE_RESOURCES:
        unit, scale = "bytes", 1
    else:
        unit, scale = "count", 1

    def sc(v: int | None) -> int | None:
        return None if v is None else v * scale

    return LimitRow(
        resource=res,
        unit=unit,
        current=cur * scale,
        minimum=sc(lo_v),
        maximum=sc(_unlimited(hi)),
        soft=sc(None if soft is None else _unlimited(soft)),
        hard=sc(_unlimited(hard)),
        hits=hits,
    )


_SCHED_CPU_RE = re.compile(r"^cpu\s+\d+:\s+(\d+)\s+(\d+)(?:\s|$)")


def parse_sched(text: str, hz: int) -> tuple[float, float]:
    """`/proc/virtual/<xid>/sched` -> (user, system) seconds summed over the `cpu N:` lines.

    Every layout (vs2.0, vs2.2/2.3.0, the later PrioBias-only one) starts a per-CPU
    line with `cpu N: user sys hold`; the unit is the kernel's jiffy (CONFIG_HZ), not
    USER_HZ. Times include exited tasks.
    """
    user = system = 0
    cpus = 0
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        m = _SCHED_CPU_RE.match(line)
        if not m:
            # A partial sum would make the counter jump back and forth.
            raise ParseError(f"sched: malformed cpu line {line!r}")
        u, sy = int(m.group(1)), int(m.group(2))
        if u >= ABSURD or sy >= ABSURD:
            raise ParseError(f"sched: absurd value in {line[:80]!r}")
        user += u
        system += sy
        cpus += 1
    if not cpus:
        raise ParseError("sched: no 'cpu N:' lines")
    return user / hz, system / hz


def _key_values(text: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ParseError(f"{what}: no ':' in {line!r}")
        out[key.strip()] = value.strip()
    return out


_CVIRT_INTS = ("nr_threads", "nr_running", "nr_unintr", "nr_onhold", "load_updates",
               "total_forks")


def parse_cvirt(text: str) -> dict:
    """`/proc/virtual/<xid>/cvirt`.

    `BiasUptime` (float seconds after host boot the context was created), the task
    counters as ints, `loadavg` as a 3-tuple of floats, uts strings (vs2.0 only) as is.
    """
    kv = _key_values(text, "cvirt")
    out: dict = dict(kv)
    try:
        if "BiasUptime" in kv:
            out["BiasUptime"] = float(kv["BiasUptime"])
            if not 0 <= out["BiasUptime"] < float("inf"):  # float() takes nan, inf, -5
                raise ValueError(f"BiasUptime {kv['BiasUptime'][:40]!r}")
        for k in _CVIRT_INTS:
            if k in kv:
                out[k] = int(kv[k])
                if not 0 <= out[k] < ABSURD:
                    raise ValueError(f"{k} {kv[k][:40]!r}")
        if "loadavg" in kv:
            la = tuple(float(x) for x in kv["loadavg"].split())
            if len(la) != 3:
                raise ValueError("loadavg: expected 3 values")
            out["loadavg"] = la
    except ValueError as e:
        raise ParseError(f"cvirt: {e}") from None
    return out


_CACCT_RE = re.compile(r"^([A-Z0-9]+):\s+(\d+)/(\d+)\s+(\d+)/(\d+)\s+(\d+)/(\d+)\s*$")


def parse_cacct(text: str) -> tuple[SocketAccounting, ...]:
    """`/proc/virtual/<xid>/cacct`, both layouts: one row per address family.

    The header, `forks:`, `slab:` and `page[i]:` lines are not socket figures.
    """
    out: list[SocketAccounting] = []
    memo = _CACCT_MEMO
    for line in text.splitlines():
        row = memo(line)
        if row is _SKIP:
            continue
        if row is _BAD:
            _cacct_line(line)  # raises its ParseError
        out.append(row)  # type: ignore[arg-type]
    return tuple(out)


def _cacct_line(line: str) -> object:
    """One line of a cacct file: a SocketAccounting or _SKIP; ParseError if malformed."""
    fam = line.partition(":")[0]
    if fam not in _SOCKET_FAMILIES:
        return _SKIP
    m = _CACCT_RE.match(line)
    if not m:
        raise ParseError(f"cacct: malformed line {line!r}")
    n = [int(x) for x in m.groups()[1:]]
    if max(n) >= ABSURD:
        raise ParseError(f"cacct: absurd value in {line[:80]!r}")
    return SocketAccounting(fam, n[0], n[1], n[2], n[3], n[4], n[5])


def _cacct_line_or_bad(line: str) -> object:
    try:
        return _cacct_line(line)
    except ParseError:
        return _BAD


_CACCT_MEMO = _LineMemo(_cacct_line_or_bad)


_VSTATUS_HEX = frozenset({"Flags", "BCaps", "CCaps", "Spaces"})


def parse_vstatus(text: str) -> dict[str, int]:
    """`/proc/virtual/<xid>/status`: UseCnt, Tasks, Ticks (decimal); Flags, BCaps,
    CCaps, Spaces (hex)."""
    out: dict[str, int] = {}
    try:
        for k, v in _key_values(text, "status").items():
            out[k] = int(v, 16) if k in _VSTATUS_HEX else int(v)
    except ValueError as e:
        raise ParseError(f"status: {e}") from None
    return out


_CONFIG_HZ_RE = re.compile(rb"^CONFIG_HZ=(\d+)\s*$", re.MULTILINE)


def parse_config_hz(data: bytes) -> int | None:
    """`CONFIG_HZ=<n>` from a kernel .config."""
    m = _CONFIG_HZ_RE.search(data)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


# ---------------------------------------------------------------------------
# Paths under a root, and util-vserver's name lookup
# ---------------------------------------------------------------------------


def resolve_in_root(root: str, path: str, max_links: int = MAX_SYMLINKS) -> str:
    """The host path of `path` (interpreted with `root` as `/`), symlinks followed.

    Like a path walk inside a chroot at `root`: absolute link targets restart at
    `root` and `..` stops there, so the result never leaves `root`. Missing
    components are kept as they are (opening the result then fails). Raises
    OSError(ELOOP) after `max_links` links.
    """
    todo = [p for p in reversed(path.split("/"))]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        try:
            target = os.readlink(os.path.join(root, *done, part))
        except OSError:  # not a link (or missing): a plain component
            done.append(part)
            continue
        links += 1
        if links > max_links:
            raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
        if target.startswith("/"):
            done = []
        todo.extend(reversed(target.split("/")))
    return os.path.join(root, *done)


def _read_small(host_path: str, limit: int) -> bytes | None:
    """The file's bytes, or None if it cannot be read (or is no regular file) or
    holds `limit` bytes or more."""
    try:
        return kernfile.read_file(host_path, cap=limit - 1)
    except OSError:
        return None


_RUN_XID_RE = re.compile(rb"\s*([+-]?\d+)")


def read_run_xid(root: str, cfgdir: str) -> int | None:
    """The xid in `<cfgdir>/run` (util-vserver's getCtxFromFile: at most 50 bytes, a
    number ended by the end of the file or a newline). None for a stopped guest,
    whose `run` link dangles."""
    try:
        data = _read_small(resolve_in_root(root, cfgdir + "/run"), 51)
    except OSError:
        return None
    if data is None:
        return None
    m = _RUN_XID_RE.match(data)
    if not m:
        return None
    rest = data[m.end() :]
    if rest and not rest.startswith(b"\n"):  # strtol must stop at the end or a newline
        return None
    return int(m.group(1))


def _decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def config_name(root: str, cfgdir: str) -> str:
    """util-vserver's vc_getVserverName: `<cfgdir>/name` without trailing newlines
    (when under 1024 bytes and not empty), else the basename of the resolved dir.

    Only the first line is kept, so a stray multi-line file cannot break a table row.
    """
    try:
        data = _read_small(resolve_in_root(root, cfgdir + "/name"), 1024)
        if data is not None:
            data = data.rstrip(b"\n").split(b"\n", 1)[0]
            if data:
                return _decode_name(data)
        real = resolve_in_root(root, cfgdir)
    except OSError:  # ELOOP
        real = cfgdir
    return _decode_name(os.fsencode(os.path.basename(real.rstrip("/"))))


def find_config_dir(root: str, vservers_dir: str, xid: int) -> str | None:
    """The config dir (a path under `root`) of the running guest with this xid.

    First `<vservers_dir>/.defaults/run.rev/<xid>` (a link the guest's start leaves),
    then any config dir whose `run` file holds the xid. Either is only accepted when
    its `run` holds the xid (a stale run.rev link or a stopped guest does not match).
    """
    rev = f"{vservers_dir}/.defaults/run.rev/{xid}"
    if read_run_xid(root, rev) == xid:
        return rev
    try:
        entries = sorted(os.listdir(resolve_in_root(root, vservers_dir)))
    except OSError:
        return None
    for entry in entries:
        if entry.startswith("."):
            continue
        cand = f"{vservers_dir}/{entry}"
        if read_run_xid(root, cand) == xid:
            return cand
    return None


def resolve_name(root: str, vservers_dir: str, xid: int) -> str:
    """vserver-stat's NAME: fixed names for 0 and 1, the running guest's name, or ""."""
    if xid == 0:
        return "root server"
    if xid == 1:
        return "monitoring server"
    cfg = find_config_dir(root, vservers_dir, xid)
    return "" if cfg is None else config_name(root, cfg)


def tree_root(proc_root: str) -> str:
    """The root a proc tree belongs to: `/proc` -> `/`, `x/fixture/proc` -> `x/fixture`."""
    return os.path.dirname(os.path.abspath(proc_root.rstrip("/") or "/"))


def detect_kernel_hz(proc_root: str, root: str | None = None) -> int | None:
    """CONFIG_HZ from `<proc>/config.gz`, else `<root>/boot/config-<osrelease>`."""
    root = tree_root(proc_root) if root is None else root
    try:
        packed = kernfile.read_file(os.path.join(proc_root, "config.gz"), cap=1 << 20)
        # bounded: a forged config.gz must not unpack into gigabytes
        hz = parse_config_hz(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(packed, 16 << 20))
        if hz:
            return hz
    except (OSError, EOFError, ValueError, zlib.error):
        pass
    try:
        release = read_text(os.path.join(proc_root, "sys", "kernel", "osrelease")).strip()
    except OSError:
        return None
    if not release or "/" in release or release in (".", ".."):
        return None
    try:
        return parse_config_hz(kernfile.read_file(resolve_in_root(root, f"/boot/config-{release}"),
                                                  cap=16 << 20))
    except OSError:
        return None


# ---------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------

_GONE = (errno.ENOENT, errno.ESRCH)


class VServerSource(Source):
    """Contexts by xid, with the kernel's per-context accounting from `/proc/virtual`."""

    name = "vserver"

    def __init__(
        self,
        proc_root: str = "/proc",
        vservers_dir: str | None = None,
        kernel_hz: int | None = None,
        *,
        page_size: int = PAGE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.proc_root = proc_root
        self.root = tree_root(proc_root)
        if vservers_dir is None:
            vservers_dir = os.path.join(self.root, "etc", "vservers")
        # Name lookups work on paths inside the root; a config dir given outside it
        # is used as is, its absolute links then resolving on the real root.
        vdir = os.path.abspath(vservers_dir)
        rel = os.path.relpath(vdir, self.root)
        if rel == ".." or rel.startswith("../"):
            self._name_root, self._vservers_dir = "/", vdir
        else:
            self._name_root, self._vservers_dir = self.root, "/" + rel
        self._kernel_hz = kernel_hz
        self.page_size = page_size
        self.clock = clock
        self._xids: dict[int, tuple[int, int]] = {}  # pid -> (start, xid)
        self._names: dict[int, tuple[str, float]] = {}  # xid -> (name, resolved at)
        # `/proc/virtual/<xid>/*`, held open and re-read with pread, as cgroup files
        # are. Verified: before each read one stat checks that the name still leads to
        # the held file (a recorded tree's file replaced, a guest's directory gone or
        # made anew); nothing is remembered as missing (a guest restarted with the
        # same xid is read at once). A file whose bytes did not change is not parsed.
        self._files = kernfile.HeldFiles(kernfile.held_files_budget(), verify=True,
                                         recheck_missing=0)
        self._plans: dict[int, dict[str, kernfile.HeldFile]] = {}  # xid -> its files
        self._parsers: tuple | None = None

    @property
    def kernel_hz(self) -> int:
        if self._kernel_hz is None:
            hz = detect_kernel_hz(self.proc_root, self.root)
            if hz is None:
                log.warning(
                    "CONFIG_HZ not found in %s/config.gz or /boot/config-<release>; "
                    "assuming %d for /proc/virtual/*/sched (use kernel_hz to set it)",
                    self.proc_root, DEFAULT_KERNEL_HZ,
                )
                hz = DEFAULT_KERNEL_HZ
            self._kernel_hz = hz
        return self._kernel_hz

    # -- assign -------------------------------------------------------------

    def _read_xid(self, pid: int, errors: ErrorCounts) -> int | None:
        base = f"{self.proc_root}/{pid}"
        try:
            text = read_text(f"{base}/status")
        except OSError as e:
            if e.errno not in _GONE:
                errors[self.name] += 1
                log.debug("%s/status: %s", base, e.strerror)
            return None
        xid = parse_status_xid(text)
        if xid is None:
            # No tag (HIDE_VINFO context or a cut-off file): vinfo still says it.
            try:
                xid = parse_vinfo_xid(read_text(f"{base}/vinfo"))
            except OSError:
                xid = None
            if xid is None:
                errors[self.name] += 1
                log.debug("%s/status: no VxID/s_context line", base)
        return xid

    def _list_contexts(self, errors: ErrorCounts) -> list[int]:
        try:
            names = os.listdir(os.path.join(self.proc_root, "virtual"))
        except FileNotFoundError:
            return []
        except OSError as e:
            errors[self.name] += 1
            log.debug("%s/virtual: %s", self.proc_root, e.strerror)
            return []
        return [int(n) for n in names if n.isascii() and n.isdigit()]

    def guest_config_dir(self, xid: int) -> str | None:
        """The host path of the running guest's config dir (for its `interfaces/`)."""
        cfg = find_config_dir(self._name_root, self._vservers_dir, xid)
        if cfg is None:
            return None
        try:
            return resolve_in_root(self._name_root, cfg)
        except OSError:
            return None

    def _name(self, xid: int, now: float) -> str:
        cached = self._names.get(xid)
        if cached is not None and now - cached[1] < NAME_TTL_SECONDS:
            return cached[0]
        name = resolve_name(self._name_root, self._vservers_dir, xid)
        self._names[xid] = (name, now)
        return name

    def close(self) -> None:
        self._files.close()
        self._plans.clear()

    def assign(
        self, procs: Sequence[ProcStat], errors: ErrorCounts
    ) -> dict[ContextIdentity, list[ProcStat]]:
        self._files.sweep()  # what the previous poll did not read belongs to nobody now
        by_xid: dict[int, list[ProcStat]] = {}
        cache = self._xids
        live: dict[int, tuple[int, int]] = {}
        for p in procs:
            hit = cache.get(p.pid)
            if hit is not None and hit[0] == p.start:
                xid = hit[1]
            else:
                # The xid of a process never changes in practice, and a reused pid
                # has a new start: one status read per process lifetime.
                xid = self._read_xid(p.pid, errors)
                if xid is None:
                    continue
            live[p.pid] = (p.start, xid)
            by_xid.setdefault(xid, []).append(p)
        self._xids = live  # pids no longer present are dropped
        for xid in self._list_contexts(errors):
            by_xid.setdefault(xid, [])

        now = self.clock()
        # A context seen for the first time (a guest (re)started) is looked up anew.
        for xid in self._names.keys() - by_xid.keys():
            del self._names[xid]
        for xid in self._plans.keys() - by_xid.keys():
            del self._plans[xid]  # a guest gone (its files are swept next poll)
        out: dict[ContextIdentity, list[ProcStat]] = {}
        for xid in sorted(by_xid):
            ident = ContextIdentity(
                key=str(xid), name=self._name(xid, now), ctx_id=str(xid),
                source=self.name, xid=xid,
            )
            out[ident] = by_xid[xid]
        return out

    # -- accounting ---------------------------------------------------------

    def _parsers_now(self) -> tuple:
        """(file, parser) of the accounting files; made once (kernel_hz is looked up
        when first needed), the same function objects every poll, so a file whose
        bytes did not change keeps its parsed value."""
        if self._parsers is None:
            page_size, hz = self.page_size, self.kernel_hz
            self._parsers = (
                ("limit", lambda t: parse_limit(t, page_size)),
                ("sched", lambda t: parse_sched(t, hz)),
                ("cvirt", parse_cvirt),
                ("cacct", parse_cacct),
                ("status", parse_vstatus),
            )
        return self._parsers

    def accounting(self, ident: ContextIdentity, errors: ErrorCounts) -> KernelAccounting:
        xid = ident.xid
        if xid is None or xid <= 1 or not os.path.isdir(f"{self.proc_root}/virtual/{xid}"):
            return KernelAccounting()  # 0 (host) and 1 (spectator) have no directory
        plan = self._plans.get(xid)
        if plan is None:
            d = f"{self.proc_root}/virtual/{xid}"
            plan = self._plans[xid] = {
                name: self._files.file(f"{d}/{name}") for name, _ in self._parsers_now()}
        got: dict = {}
        for file, fn in self._parsers_now():
            hf = plan[file]
            try:
                got[file] = hf.get(fn)
            except OSError as e:  # missing (not in this kernel's layout, or the context
                # ended) is None, not an error
                errors[self.name] += 1
                log.debug("%s: %s", hf.path, e.strerror or e)
            except ParseError as e:
                errors[self.name] += 1
                log.debug("%s: %s", hf.path, e)

        cpu_u = cpu_s = started = threads = None
        limits: tuple[LimitRow, ...] = ()
        sockets: tuple[SocketAccounting, ...] = ()

        lim = got.get("limit")
        if lim is not None:
            limits, bad = lim
            if bad:
                errors[self.name] += bad
        sched = got.get("sched")
        if sched is not None:
            cpu_u, cpu_s = sched
        cvirt = got.get("cvirt")
        if cvirt is not None:
            started = cvirt.get("BiasUptime")
            threads = cvirt.get("nr_threads")
        cacct = got.get("cacct")
        if cacct is not None:
            sockets = cacct
        status = got.get("status")
        if status is not None and "Tasks" in status:
            threads = status["Tasks"]

        return KernelAccounting(
            cpu_user_seconds=cpu_u,
            cpu_system_seconds=cpu_s,
            started_after_boot=started,
            threads=threads,
            limits=limits,
            sockets=sockets,
        )
