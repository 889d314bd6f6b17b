"""RRD storage sink: one RRD file per context and group of series, one per host interface.

Which files there are, and their data sources, comes from the metric catalog
(`collector.catalog.FILE_KINDS`); where they are is `exporters.rrdlayout`'s
(`ctx/<context>/<kind>.rrd`, `ctx/<context>/net-<if>.rrd`, `host/if-<dev>.rrd`,
departed ones under `archive/`). `rrd_path` and `list_rrd_files` are re-exported
here for older callers.

CPU time is stored as an integer count of microseconds (`int(seconds * 1e6)`), since
DERIVE takes integers: the stored rate is microseconds of CPU per second, and
rate / 1e6 is the CPU ratio (1.0 = one CPU busy). `fetch` applies that conversion.

Kernel counters are DERIVE with min 0, so a counter reset gives one unknown point and
never a spike; gauges are GAUGE with min 0. Heartbeat is 2 x step. Each file has
AVERAGE, MIN and MAX archives covering at least 2 days at the step (at rows of <= 108 s
below a 60 s step, plus what the 60-s file's size leaves at the step itself), 14 days
at <= 30 min per row, 62 days at <= 2 h and 2 years at <= 1 day (see `rra_layout`):
no file is larger at a short step than at 60 s.

With `daemon` set, files are created through rrdcached, validated through it, and a
poll's updates are sent as one BATCH over its socket (the bindings would cost one
round trip per file). There is no direct-write fallback while rrdcached is down, since
its cache would then be stale: that poll's data is lost and counted.

Faults of one file (disk full, read-only or vanished directory, corrupt or foreign
file, immutable file, rrdcached down or restarted) never stop the others: each is
counted in `error_count` and logged once when it starts and once when it clears;
writing resumes by itself. Files this sink did not make are never overwritten.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import re
import shutil
import socket
import stat
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

import rrdtool

from collector import catalog
from collector.catalog import INTERFACE_DS, FileKind
from collector.snapshot import Snapshot

from . import rrdlayout as layout
from .addresses import parse_listen
from .files import write_atomic
from .names import decode_name, encode_name
from .rrdlock import POLL_BUDGET, LockWaits, is_locked
from .rrdlock import call as waiting_for_lock
from .rrdlayout import (  # noqa: F401  (re-exported for older callers)
    ARCHIVE_DIR,
    CONTEXT_KINDS,
    CTX_DIR,
    HOST_DIR,
    RrdFile,
    list_rrd_files,
    rrd_path,
)
from .sink import Complaints

log = logging.getLogger(__name__)

DAY = 86400
CPU_SCALE = 1_000_000  # stored CPU unit: microseconds
XFF = 0.5
CONSOLIDATIONS = ("AVERAGE", "MIN", "MAX")
# (time span each archive covers, longest time one row may stand for; None = the step)
RETENTION = ((2 * DAY, None), (14 * DAY, 1800), (62 * DAY, 7200), (731 * DAY, DAY))
BUDGET_STEP = 60  # at a shorter step, files are no larger than at this one (rra_layout)
DAY_GRAPH_ROW = 108  # seconds per pixel of a day graph 800 px wide
HEADER_ROWS = 32  # rows a CF's archive spends on the header of one more archive level
MAINTENANCE_INTERVAL = 3600  # seconds between looks for departed contexts
STALE_TEMP_SECONDS = 3600  # a librrd temporary file this old belongs to no create
_LIBRRD_TEMP = re.compile(r"\.rrd[A-Za-z0-9]{6}$")
DEFAULT_RETENTION_SECONDS = 30 * DAY
DEFAULT_ARCHIVE_KEEP_SECONDS = 180 * DAY
_ARCHIVE_STAMP = re.compile(r"-(\d{14})(?:\.\d+)?(?:\.rrd)?$")
RRDCACHED_PORT = 42217
MAX_WRITE_BEHIND = 3600  # seconds: [rrd] write_behind's upper bound
FLUSH_WAIT = 1.0  # seconds flush() waits for a running write to end

# The catalog's file kinds (name -> FileKind: ds, ds_type, unit, scale, values).
KINDS: dict[str, FileKind] = catalog.FILE_KIND
_CONTEXT_FILE_KINDS = tuple(k for k in catalog.FILE_KINDS if k.scope == "context")
_CONTEXT_IF_KINDS = tuple(k for k in catalog.FILE_KINDS if k.scope == "context-interface")
_HOST_IF_KINDS = tuple(k for k in catalog.FILE_KINDS if k.scope == "host-interface")
_scandir = layout.scandir


# ------------------------------------------------------------------------ definitions


def _levels(step: int, retention) -> list[tuple[int, int]]:
    """(steps per row, rows) covering each (span, longest row) of `retention`."""
    out = []
    for span, longest in retention:
        per_row = 1 if longest is None else max(1, longest // step)
        out.append((per_row, -(-span // (per_row * step))))  # rows: ceiling
    return out


def rra_layout(step: int) -> tuple[tuple[int, int], ...]:
    """(steps per row, rows) of each archive level.

    From BUDGET_STEP (60 s) up: RETENTION as it says. Below it, a row budget per span
    as collectd does, so that no file is larger than at 60 s whatever the step: the
    2 days are kept at rows of at most DAY_GRAPH_ROW seconds (one row per pixel or
    better on an 800 px day graph), the longer spans as at 60 s, and the rows left in
    the 60-s file's budget go to a first archive at the step itself (20 min at 1 s,
    1.6 h at 5 s, 7.5 h at 30 s).
    """
    if step >= BUDGET_STEP:
        return tuple(_levels(step, RETENTION))
    budget = sum(rows for _, rows in _levels(BUDGET_STEP, RETENTION)) - HEADER_ROWS
    rest = _levels(step, RETENTION[1:])
    left = budget - sum(rows for _, rows in rest)
    day_per_row = DAY_GRAPH_ROW // step
    if day_per_row <= 1:  # the step itself is about a pixel: one archive for the days
        return ((1, left), *rest)
    day_rows = -(-RETENTION[0][0] // (day_per_row * step))
    return ((1, left - day_rows), (day_per_row, day_rows), *rest)


def definition_args(kind: str, step: int) -> list[str]:
    """The DS and RRA arguments of `rrdtool create` for one kind of file."""
    fk = KINDS[kind]
    args = [f"DS:{ds}:{fk.ds_type}:{2 * step}:0:U" for ds in fk.ds]
    for cf in CONSOLIDATIONS:
        for per_row, rows in rra_layout(step):
            args.append(f"RRA:{cf}:{XFF}:{per_row}:{rows}")
    return args


def _estimated_size(kind: str, step: int) -> int:
    values = sum(rows for _, rows in rra_layout(step)) * len(CONSOLIDATIONS) * len(KINDS[kind].ds)
    return 8 * values + 4096


def _mismatch(info: dict, kind: FileKind, step: int) -> str | None:
    """Why an existing file is not one of ours for this kind and step (None if it is)."""
    if info.get("step") != step:
        return f"step is {info.get('step')} s, not {step} s"
    indexed = []
    for key, value in info.items():
        m = re.fullmatch(r"ds\[(.+)\]\.index", key)
        if m:
            indexed.append((value, m.group(1)))
    names = tuple(name for _, name in sorted(indexed))
    if names != kind.ds:
        return f"data sources are {', '.join(names) or 'none'}, not {', '.join(kind.ds)}"
    for ds in kind.ds:
        if info.get(f"ds[{ds}].type") != kind.ds_type:
            return f"data source {ds} is {info.get(f'ds[{ds}].type')}, not {kind.ds_type}"
    return None


def check_step(directory: str, step: int) -> str | None:
    """An error message if RRD files under `directory` have another step than `step`.

    For the config loader: a step that does not match existing files is refused, since
    the sink would leave every such file alone. Unreadable files are ignored here.
    """
    for rf in list_rrd_files(directory):
        try:
            found = waiting_for_lock(rrdtool.info, rf.path).get("step")
        except rrdtool.OperationalError:
            continue
        if found != step:
            return (
                f"RRD files in {directory} have a step of {found} s (e.g. {rf.path}), "
                f"but the configured step is {step} s: use step {found}, or another directory"
            )
    return None


class Fetched(NamedTuple):
    start: int
    end: int
    step: int
    names: tuple[str, ...]
    rows: list[tuple[float | None, ...]]  # in KINDS[kind].unit; None = unknown


def fetch(
    path: str,
    start: int,
    end: int,
    cf: str = "AVERAGE",
    resolution: int | None = None,
    daemon: str | None = None,
) -> Fetched:
    """Read one file's series, converted to its kind's unit (CPU: ratio, not µs/s).

    Through `daemon` when given: the file's pending updates are flushed first (with a
    deadline, see `flush_for_reading`), then the file is read. Raises
    rrdtool.OperationalError for an unreadable file or an rrdcached that cannot flush.
    """
    if daemon:
        flush_for_reading(daemon, path)
    args = [path, cf, "--start", str(int(start)), "--end", str(int(end))]
    if resolution:
        args += ["--resolution", str(int(resolution))]
    (s, e, st), names, rows = waiting_for_lock(rrdtool.fetch, *args)
    kind = layout.kind_of(path)
    scale = KINDS[kind].scale if kind is not None else 1.0
    if scale != 1.0:
        rows = [tuple(None if v is None else v * scale for v in row) for row in rows]
    return Fetched(s, e, st, tuple(names), list(rows))


def last(path: str, daemon: str | None = None) -> int:
    """Time of the file's last update, its pending rrdcached updates included.
    Raises rrdtool.OperationalError as `fetch` does."""
    if daemon:
        flush_for_reading(daemon, path)
    return int(waiting_for_lock(rrdtool.last, path))


READ_TIMEOUT = 5.0  # seconds one FLUSH for a reader may take
READ_RETRY_SECONDS = 10.0  # after a failure, readers fail at once for this long
_readers: dict[str, "_Rrdcached"] = {}
_readers_down: dict[str, tuple[float, str]] = {}  # daemon -> (monotonic time, why)
_readers_lock = threading.Lock()


def flush_for_reading(daemon: str, path: str) -> None:
    """Have rrdcached write `path`'s pending updates, so a read of the file is current.

    What `rrdtool fetch/graph --daemon` do, but with a deadline: a stopped rrdcached
    costs one READ_TIMEOUT, then READ_RETRY_SECONDS of immediate failures (a renderer
    reading a thousand files does not wait a thousand times). Raises
    rrdtool.OperationalError when rrdcached cannot be asked or refuses.
    """
    family, _ = _daemon_address(daemon)
    target = os.path.realpath(path) if family == socket.AF_UNIX else path
    if re.search(r"\s", target):
        raise rrdtool.OperationalError(f"the rrdcached protocol cannot carry the path {target!r}")
    with _readers_lock:
        down = _readers_down.get(daemon)
        if down is not None and time.monotonic() < down[0]:
            raise rrdtool.OperationalError(f"rrdcached {daemon}: {down[1]}")
        for _attempt in (1, 2):
            conn = _readers.get(daemon)
            fresh = conn is None
            try:
                if conn is None:
                    conn = _readers[daemon] = _Rrdcached(daemon, READ_TIMEOUT)
                conn.flush(target)
            except RrdcachedError as e:
                raise rrdtool.OperationalError(f"rrdcached {daemon}: {e}") from None
            except (OSError, _ProtocolError) as e:
                stale = _readers.pop(daemon, None)
                if stale is not None:
                    stale.close()
                if fresh or isinstance(e, TimeoutError):
                    why = str(e) or type(e).__name__
                    _readers_down[daemon] = (time.monotonic() + READ_RETRY_SECONDS, why)
                    raise rrdtool.OperationalError(f"rrdcached {daemon}: {why}") from None
                continue  # a kept connection to an rrdcached that restarted: once more
            _readers_down.pop(daemon, None)
            return


# ------------------------------------------------------------------------- rrdcached


class _ProtocolError(Exception):
    """rrdcached said something the protocol does not allow, or hung up."""


class RrdcachedError(Exception):
    """rrdcached refused a command (an error reply); the connection stays usable."""


MAX_REPLY_LINE = 1 << 20


def _daemon_address(daemon: str) -> tuple[int, object]:
    """(address family, address) of an rrdcached address as the config takes it
    ("unix:/path", "/path", "host:port", "[v6]:port"; `exporters.addresses`' parser,
    so what the config refuses is refused here too). ValueError if malformed."""
    if daemon.startswith("unix:"):
        return socket.AF_UNIX, daemon[len("unix:") :]
    if daemon.startswith("/"):
        return socket.AF_UNIX, daemon
    host, port = parse_listen(daemon, port_zero=False)
    return (socket.AF_INET6 if daemon.startswith("[") else socket.AF_INET), (host, port)


class _Rrdcached:
    """One connection to rrdcached speaking its line protocol (rrdcached(1)).

    Every exchange (a command and its whole reply) has a deadline of `timeout`
    seconds: an rrdcached that is stopped (SIGSTOP), swapping or wedged makes the
    exchange raise TimeoutError (an OSError) instead of hanging the poll, which
    librrd's own client (`--daemon`) would do for good.
    """

    def __init__(self, daemon: str, timeout: float):
        self.timeout = timeout
        family, address = _daemon_address(daemon)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            if family == socket.AF_UNIX:
                sock.connect(address)
            else:
                sock.close()
                host, port = address  # type: ignore[misc]
                sock = socket.create_connection((host, port), timeout=timeout)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._buf = bytearray()
        self._deadline = 0.0

    def close(self) -> None:
        self._sock.close()

    # -- deadline-bound I/O

    def _begin(self) -> None:
        self._deadline = time.monotonic() + self.timeout

    def _remaining(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._late()
        return left

    def _late(self) -> TimeoutError:
        return TimeoutError(f"rrdcached did not answer within {self.timeout:g} s")

    def _send(self, data: bytes) -> None:
        self._sock.settimeout(self._remaining())
        try:
            self._sock.sendall(data)  # the timeout bounds the whole sendall (Python >= 3.5)
        except TimeoutError:
            raise self._late() from None

    def _line(self) -> str:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line.decode("utf-8", "replace")
            self._sock.settimeout(self._remaining())
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise self._late() from None
            if not chunk:
                raise _ProtocolError("connection closed by rrdcached")
            self._buf += chunk
            if len(self._buf) > MAX_REPLY_LINE and b"\n" not in self._buf:
                raise _ProtocolError("reply line too long")

    def _status(self) -> tuple[int, str]:
        line = self._line()
        head, _, text = line.partition(" ")
        try:
            return int(head), text
        except ValueError:
            raise _ProtocolError(f"unexpected reply {line!r}") from None

    # -- commands

    def command(self, line: str) -> tuple[int, list[str]]:
        """Send one command; (status, [status text, lines that follow a positive status])."""
        if "\n" in line:
            raise ValueError("a command is one line")
        self._begin()
        self._send(line.encode("utf-8", "surrogateescape") + b"\n")
        status, text = self._status()
        extra = [self._line() for _ in range(status)] if status > 0 else []
        return status, [text, *extra]

    def checked(self, line: str) -> list[str]:
        """`command`, raising RrdcachedError for an error reply."""
        status, lines = self.command(line)
        if status < 0:
            raise RrdcachedError(lines[0])
        return lines

    def create(self, path: str, start: int, step: int, definitions: list[str]) -> None:
        """CREATE (rrdcached >= 1.5) that never overwrites; RrdcachedError if refused."""
        self.checked(f"CREATE {path} -b {int(start)} -s {int(step)} -O {' '.join(definitions)}")

    def flush(self, path: str) -> None:
        """Write the file's pending updates now; a file with none is fine too."""
        status, lines = self.command(f"FLUSH {path}")
        if status < 0 and not lines[0].startswith("No such file"):
            raise RrdcachedError(lines[0])

    def info(self, path: str) -> dict[str, object]:
        """INFO as rrdtool.info gives it: {key: int, float, str or None}."""
        out: dict[str, object] = {}
        for line in self.checked(f"INFO {path}")[1:]:
            key, _, rest = line.partition(" ")
            kind, _, value = rest.partition(" ")
            if kind == "1":
                out[key] = int(value)
            elif kind == "0":
                f = float(value)
                out[key] = None if f != f else f
            else:
                out[key] = value
        return out

    def last(self, path: str) -> int:
        return int(self.checked(f"LAST {path}")[0].split()[0])

    def start_batch(self) -> None:
        self._begin()
        status, text = self._status_after(b"BATCH\n")
        if status != 0:
            raise _ProtocolError(f"BATCH refused: {text}")

    def _status_after(self, data: bytes) -> tuple[int, str]:
        self._send(data)
        return self._status()

    def finish_batch(self, commands: list[str]) -> dict[int, str]:
        """Send the commands and the closing dot; {command number (from 1): error}."""
        self._begin()
        payload = "".join(commands) + ".\n"
        count, _ = self._status_after(payload.encode("utf-8", "surrogateescape"))
        if count < 0:
            raise _ProtocolError("batch refused")
        errors: dict[int, str] = {}
        for _ in range(count):
            head, _, message = self._line().partition(" ")
            try:
                errors[int(head)] = message
            except ValueError:
                raise _ProtocolError(f"unexpected batch error line {head} {message}") from None
        return errors


# ------------------------------------------------------------------------------ sink

_REASONS = (
    ("No space left", "no space left on device"),
    ("Read-only file system", "read-only file system"),
    ("Permission denied", "permission denied"),
    ("Operation not permitted", "operation not permitted"),
    ("No such file", "no such file or directory"),
    ("Not a directory", "not a directory"),
    ("Is a directory", "is a directory"),
    ("illegal attempt to update", "time not after the file's last update"),
    ("could not lock RRD", "locked by another process"),  # see rrdlock
)


def _reason(message: str) -> str:
    """A short, stable label for an error message, so that a fault is logged once."""
    for needle, label in _REASONS:
        if needle in message:
            return label
    return "error"


def _stat_key(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns


def _unwritable(path: str) -> str | None:
    """Why `path` cannot be opened for writing (read-only fs, immutable, mode), or None."""
    try:
        os.close(os.open(path, os.O_WRONLY))
    except OSError as e:
        return f"{path}: {e.strerror}"
    return None


def _value(v: object) -> str:
    try:
        return str(int(v))  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return "U"  # NaN, inf, None: an unknown point rather than a failed update


def _stored(kind: FileKind, subject: object) -> str:
    """The update values of one file: integers (DERIVE takes no fractions), U unknown."""
    values = kind.values(subject)
    scale = kind.store_scale
    if scale != 1.0:
        values = [None if v is None else v * scale for v in values]
    return ":".join(map(_value, values))


def _targets(folder: str, kinds: tuple[FileKind, ...], interface: str) -> tuple:
    """(path, kind, value getters, store scale) of an interface's files."""
    return tuple((os.path.join(folder, layout.interface_file_name(kind.name, interface)), kind,
                  tuple(d.value for d in kind.data_sources), kind.store_scale)
                 for kind in kinds)


def _format(getters: tuple, scale: float, subject: object, kind: FileKind) -> str:
    """`_stored`, for the common case of values that are all numbers, in one join;
    anything else (None, NaN, inf) takes `_stored`'s way, so the text is the same."""
    try:
        if scale == 1.0:
            return ":".join([str(int(g(subject))) for g in getters])
        return ":".join([str(int(g(subject) * scale)) for g in getters])
    except (TypeError, ValueError, OverflowError):
        return _stored(kind, subject)


CLOCK_BACK = "clock stepped back: updates skipped"
_LOST = "\0lost"  # _create_through_daemon: rrdcached could not be asked


class _File:
    """What the sink knows of one RRD file."""

    __slots__ = ("kind", "last", "checked", "invalid_key", "pending", "phase")

    def __init__(self, kind: FileKind):
        self.kind = kind
        self.pending: list[tuple[int, str]] = []  # write_behind: (time, "time:values") held
        self.phase = -1  # write_behind: the poll (mod a window's polls) it is written at
        self.last: int | None = None  # time of its last update, as written or read
        self.checked = False  # False: stat it (create or validate) before the next update
        self.invalid_key: tuple | None = None  # stat of a file found unusable, to see it change


class RrdSink:
    """Writes each snapshot to RRD files (see the module doc for layout and faults).

    `write(snapshot)` never raises for a fault of the files, the disk or rrdcached.
    `error_count` counts data points lost to faults (a failed create or update, a
    file left alone as corrupt or foreign, updates lost while rrdcached is down);
    `skipped_count` counts points deliberately not written (same second as the
    previous update, clock stepped back, a duplicate name in one snapshot).
    """

    name = "rrd"  # as the daemon names it (exporters.sink.Sink)

    def __init__(
        self,
        directory: str,
        step: int,
        daemon: str | None = None,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        clock: Callable[[], float] = time.time,
        timeout: float | None = None,
        archive_keep_seconds: float = DEFAULT_ARCHIVE_KEEP_SECONDS,
        max_bytes: int = 0,
        write_behind: float = 0,
    ):
        if int(step) != step or step < 1:
            raise ValueError(f"step must be a whole number of seconds >= 1, not {step!r}")
        if not 0 <= write_behind <= MAX_WRITE_BEHIND:
            raise ValueError(f"write_behind must be 0..{MAX_WRITE_BEHIND} s, not {write_behind!r}")
        # Absolute and free of symlinks: rrdcached resolves relative paths against its
        # own base directory, and with -B refuses paths through symlinks.
        self.directory = os.path.realpath(directory)
        if daemon and re.search(r"\s", self.directory):
            raise ValueError(f"the rrdcached protocol cannot carry a path with blanks: {self.directory!r}")
        self.step = int(step)
        self.daemon = daemon or None
        if self.daemon:
            _daemon_address(self.daemon)  # ValueError for an address the config refuses
        # Direct writes only (rrdcached holds updates itself): seconds a file's updates
        # may wait in memory, so that one librrd call writes several (see _write_direct).
        self.write_behind = 0 if self.daemon else int(write_behind)
        self._window_polls = max(1, self.write_behind // self.step)
        self._pending: dict[str, _File] = {}  # files with updates held
        self._locks = LockWaits(POLL_BUDGET)  # waits for other processes' locks, per poll
        self._lock = threading.Lock()  # a poll's write and flush() never interleave
        self.retention_seconds = retention_seconds
        self.archive_keep_seconds = archive_keep_seconds  # 0: archives are kept for good
        self.max_bytes = max_bytes  # 0: no budget
        self.refused_count = 0  # files not created: max_bytes reached
        self._refused: set[str] = set()
        self._used_bytes: int | None = None  # under the directory, at the last count
        self.error_count = 0
        self.skipped_count = 0
        self.clock_back_count = 0  # updates skipped: the time is before a file's last update
        self._clock = clock
        self._ctx_root = os.path.join(self.directory, CTX_DIR)
        self._host_root = layout.host_dir(self.directory)
        # Deadline of one rrdcached exchange; one failed exchange ends the rest of the
        # poll's (see _daemon_fault), so a wedged rrdcached costs a poll this long.
        self._timeout = float(timeout) if timeout else min(10.0, max(2.0, self.step / 2))
        self._conn: _Rrdcached | None = None
        self._daemon_failed = False  # an exchange failed in this poll: no more tries
        self._clock_back: tuple[int, int] | None = None  # (latest last update, time) this poll
        self._recreated: list[str] = []  # files deleted behind our back, recreated
        self._files: dict[str, _File] = {}
        self._next_maintenance = float("-inf")
        self._root_seen = False
        self._capacity: tuple[int | None, int | None] | None = None  # last written
        self._duplicates_warned: set[str] = set()
        self._targets: dict[tuple, tuple] = {}  # _points' paths and getters per context
        self._faults = Complaints(log, prefix="RRD ", gather=True)  # per file, one line a poll
        self._global = Complaints(log, prefix="RRD ")  # the directory, rrdcached

    # ---------------------------------------------------------------- public

    def write(self, snapshot: Snapshot) -> None:
        """Store one snapshot; faults are counted and logged, never raised."""
        with self._lock:
            self._locks = LockWaits(POLL_BUDGET)
            try:
                self._write(snapshot)
            except Exception:  # a bug here must not stop polling; it is logged in full
                log.exception("RRD sink: unexpected error")
                self.error_count += 1
            finally:
                self._report()

    @property
    def pending_count(self) -> int:
        """Updates held in memory by write_behind, not yet in their files."""
        return sum(len(f.pending) for f in list(self._pending.values()))

    def flush(self) -> bool:
        """Write what is pending: the updates write_behind holds, or (with rrdcached)
        ask rrdcached to write all it caches (FLUSHALL; returns at once).

        For SIGTERM and reloads. rrdcached is asked over a connection of its own, so
        that is safe while `write` runs elsewhere; held updates wait for a running
        `write` at most FLUSH_WAIT seconds (a poll stuck in librrd: they are lost, and
        counted). True if all was written or accepted.
        """
        if not self.daemon:
            return self._flush_pending()
        try:
            conn = _Rrdcached(self.daemon, self._timeout)
            try:
                status, lines = conn.command("FLUSHALL")
            finally:
                conn.close()
        except (OSError, _ProtocolError) as e:
            log.warning("rrdcached %s: FLUSHALL failed: %s", self.daemon, e)
            return False
        if status < 0:
            log.warning("rrdcached %s: FLUSHALL refused: %s", self.daemon, lines[0])
            return False
        return True

    def close(self) -> None:
        """Write the updates write_behind holds; close the rrdcached connection
        (pending updates stay with rrdcached)."""
        if self._pending:
            self._flush_pending()
        self._drop_connection()

    def _flush_pending(self) -> bool:
        if not self._lock.acquire(timeout=FLUSH_WAIT):
            held = self.pending_count
            log.error("RRD: %d update(s) held by write_behind not written: a poll is stuck "
                      "writing", held)
            return held == 0
        try:
            errors = self.error_count
            self._locks = LockWaits(POLL_BUDGET)
            for path, f in list(self._pending.items()):
                self._write_pending(path, f)
            self._report()
            return self.error_count == errors
        finally:
            self._lock.release()

    # ------------------------------------------------------------ the poll

    def _write(self, snapshot: Snapshot) -> None:
        ts = int(snapshot.timestamp)
        self._daemon_failed = False
        now = self._clock()
        points = self._points(snapshot)
        if not self._check_root():
            self.error_count += len(points)
            return
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_INTERVAL
            self._maintain(snapshot, now)
        self._keep_capacity(snapshot)
        if self.daemon:
            self._write_daemon(points, ts)
        else:
            self._write_direct(points, ts)

    def _keep_capacity(self, snapshot: Snapshot) -> None:
        """host/capacity.json, (re)written atomically when the host's CPUs or memory
        change or the file is gone: `ctxmon plan` reads it from a copy of this dir."""
        cap = (snapshot.host_cpus, snapshot.host_memory_bytes)
        path = layout.capacity_path(self.directory)
        if None in cap or (cap == self._capacity and os.path.exists(path)):
            return
        data = {"cpus": cap[0], "memory_bytes": cap[1], "hostname": socket.gethostname()}
        try:
            write_atomic(path, (json.dumps(data) + "\n").encode())
        except OSError as e:
            self._set_global("capacity", "unwritable", f"cannot write {path}: {e}")
            return
        self._capacity = cap
        self._set_global("capacity", None)

    def _points(self, snapshot: Snapshot) -> list[tuple[str, FileKind, str]]:
        """(path, kind, "v1:v2...") of every file this snapshot updates.

        What does not change between polls (a context's paths, its kinds' getters) is
        looked up once per context and kept while the context is present: a poll only
        reads and formats the values.
        """
        points: list[tuple[str, FileKind, str]] = []
        append = points.append
        previous = self._targets
        targets: dict[tuple, tuple] = {}  # this poll's, so departed ones fall out

        for c in snapshot.contexts:
            key = ("c", c.label)
            t = targets[key] = previous.get(key) or self._context_targets(c.label)
            cdir, files = t
            for path, kind, getters, scale in files:
                if kind.present is not None and not kind.present(c):
                    continue
                append((path, kind, _format(getters, scale, c, kind)))
            for i in c.interfaces:
                ikey = ("i", c.label, i.name)
                files = targets[ikey] = previous.get(ikey) or _targets(cdir, _CONTEXT_IF_KINDS, i.name)
                for path, kind, getters, scale in files:
                    append((path, kind, _format(getters, scale, i, kind)))
        for i in snapshot.host_interfaces:
            hkey = ("h", i.name)
            files = targets[hkey] = previous.get(hkey) or _targets(self._host_root, _HOST_IF_KINDS, i.name)
            for path, kind, getters, scale in files:
                append((path, kind, _format(getters, scale, i, kind)))
        self._targets = targets
        if len({p[0] for p in points}) != len(points):  # rare: checked in one go
            points = self._first_of_each(points)
        return points

    def _first_of_each(self, points: list[tuple[str, FileKind, str]]
                       ) -> list[tuple[str, FileKind, str]]:
        """`points` with only the first of each path: two contexts or interfaces
        mapped to one file in this poll (skipped, counted, warned once per path)."""
        seen: set[str] = set()
        out = []
        for point in points:
            path = point[0]
            if path in seen:
                self.skipped_count += 1
                if path not in self._duplicates_warned:
                    self._duplicates_warned.add(path)
                    log.warning("RRD: two contexts or interfaces map to %s in one poll: only the first is stored", path)
                continue
            seen.add(path)
            out.append(point)
        return out

    def _context_targets(self, label: str) -> tuple[str, tuple]:
        cdir = layout.context_dir(self.directory, label)
        return cdir, tuple(
            (os.path.join(cdir, layout.context_file_name(kind.name)), kind,
             tuple(d.value for d in kind.data_sources), kind.store_scale)
            for kind in _CONTEXT_FILE_KINDS)

    def _write_direct(self, points: list[tuple[str, FileKind, str]], ts: int) -> None:
        if self.write_behind:
            self._write_behind(points, ts)
            return
        ready, update = self._ready, rrdtool.update
        # A file enters a fault state only through this loop's own _fail, and no file
        # comes twice in a poll: with none in one at the start, none is to be released.
        release = self._ok if self._faults else None
        for path, kind, values in points:
            f = ready(path, kind, ts)
            if f is None:
                continue
            text = f"{ts}:{values}"
            try:
                update(path, text)
            except rrdtool.OperationalError as e:
                try:  # a reader holding the file for a moment is waited out
                    self._locks.after(e, update, path, text)
                except rrdtool.OperationalError as error:
                    self._fail(path, f, "update failed: " + _reason(str(error)), str(error))
                    f.checked = False  # look again: the file may have gone or changed
                    continue
            f.last = ts
            if release is not None:
                release(path, f)

    def _write_behind(self, points: list[tuple[str, FileKind, str]], ts: int) -> None:
        """Hold each file's update; write a file's held updates in one librrd call
        (which costs little more than one: open, lock, header and close are librrd's
        cost per call) at its turn: files take turns over the polls of a window
        (`phase`, from the path), so each poll writes about 1/n of them, n =
        write_behind / step. Whatever the timing, none waits write_behind or longer."""
        pending = self._pending
        for path, kind, values in points:
            f = self._ready(path, kind, ts)
            if f is None:
                continue
            if not f.pending:
                pending[path] = f
                if f.phase < 0:
                    f.phase = zlib.crc32(path.encode("utf-8", "surrogateescape")) % self._window_polls
            f.pending.append((ts, f"{ts}:{values}"))
            f.last = ts  # held counts as written: the next poll's same second is skipped
        turn = (ts // self.step) % self._window_polls
        limit = ts - self.write_behind
        for path, f in list(pending.items()):
            if f.phase == turn or f.pending[0][0] <= limit:
                self._write_pending(path, f)

    def _write_pending(self, path: str, f: _File) -> None:
        """One librrd call with the file's held updates; a failure loses (and counts)
        the ones not in the file, never another file's."""
        held, f.pending = f.pending, []
        self._pending.pop(path, None)
        if not held:
            return
        try:
            self._locks.call(rrdtool.update, path, *[text for _, text in held])
        except rrdtool.OperationalError as e:
            try:
                stored = int(rrdtool.last(path))  # librrd keeps the updates before a bad one
            except rrdtool.OperationalError:
                stored = -1
            lost = sum(1 for t, _ in held if t > stored)
            self.error_count += max(0, lost - 1)  # _fail counts one
            self._fail(path, f, "update failed: " + _reason(str(e)), str(e))
            f.checked = False  # look again: the file may have gone or changed
        else:
            self._ok(path, f)

    def _drop_pending(self, paths: Iterable[str] | None = None) -> None:
        """Forget held updates (counted as lost) whose files are gone from our view."""
        for path in list(self._pending) if paths is None else paths:
            f = self._pending.pop(path, None)
            if f is not None:
                self.error_count += len(f.pending)
                f.pending = []

    def _write_daemon(self, points: list[tuple[str, FileKind, str]], ts: int) -> None:
        conn = self._connection()
        if conn is None:
            self.error_count += len(points)  # this poll's data is lost, not written directly
            return
        commands: list[str] = []
        batch: list[tuple[str, _File]] = []
        ready = self._ready
        for path, kind, values in points:
            f = ready(path, kind, ts)
            if f is None:
                continue
            commands.append(f"UPDATE {path} {ts}:{values}\n")
            batch.append((path, f))
        if not batch:
            return
        try:
            errors = self._batch(commands)
        except (OSError, _ProtocolError) as e:
            self._daemon_fault("an update batch", e)
            errors = None
        if errors is None:
            self.error_count += len(batch)  # lost; rrdcached may have taken part of it
            return
        self._daemon_answered()
        release = self._ok if self._faults else None  # see _write_direct
        for number, (path, f) in enumerate(batch, 1):
            message = errors.get(number) if errors else None
            if message is None:
                f.last = ts
                if release is not None:
                    release(path, f)
            else:
                self._fail(path, f, "update refused by rrdcached: " + _reason(message), message)
                f.checked = False

    def _batch(self, commands: list[str]) -> dict[int, str] | None:
        """Send one poll's updates as one BATCH: {command number: error}, or None if
        rrdcached cannot be reached (already logged)."""
        conn = self._connection()
        if conn is None:
            return None
        try:
            conn.start_batch()
        except TimeoutError:
            raise  # wedged, not restarted: waiting again would only double the wait
        except (OSError, _ProtocolError):
            # A kept connection to an rrdcached that has restarted fails here, before
            # any update was sent: reconnect once and go on.
            self._drop_connection()
            conn = self._connection()
            if conn is None:
                return None
            conn.start_batch()
        return conn.finish_batch(commands)

    def _connection(self) -> _Rrdcached | None:
        """The connection to rrdcached; None (logged once) if it cannot be had, or
        an exchange already failed in this poll."""
        if self._daemon_failed:
            return None
        if self._conn is None:
            try:
                self._conn = _Rrdcached(self.daemon, self._timeout)  # type: ignore[arg-type]
            except OSError as e:
                self._daemon_failed = True
                self._set_global("rrdcached", "unreachable", f"cannot reach rrdcached {self.daemon}: {e}")
                return None
        return self._conn

    def _daemon_fault(self, during: str, e: Exception) -> None:
        """An exchange failed (timed out, connection lost, nonsense): drop the
        connection and send nothing more this poll, so that a stopped rrdcached costs
        one deadline per poll, not one per file."""
        self._drop_connection()
        self._daemon_failed = True
        why = str(e) or type(e).__name__
        self._set_global("rrdcached", "failed", f"rrdcached {self.daemon} failed during {during}: {why}")

    def _daemon_answered(self) -> None:
        self._set_global("rrdcached", None)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    # ---------------------------------------------------------- one file

    def _ready(self, path: str, kind: FileKind, ts: int) -> _File | None:
        """The file's state if `ts` may be written to it now, after creating or
        validating it on first sight; None (counted) if not."""
        f = self._files.get(path)
        if (f is not None and f.checked and f.invalid_key is None
                and (f.last is None or ts > f.last)
                and (not self.daemon or os.access(path, os.W_OK))):
            return f  # the common case, every poll for every file: nothing to do
        if f is None:
            f = self._files[path] = _File(kind)
        if f.invalid_key is not None:
            key = _stat_key(path)
            if key == f.invalid_key:
                self.error_count += 1  # still the file found unusable: left alone
                return None
            f.invalid_key = None
            f.checked = False
        if self.daemon and f.checked and not os.access(path, os.W_OK):
            # rrdcached takes updates for a file it already caches without looking at
            # it, and reports a failed write only in its own log: so look here for a
            # file deleted, made immutable or read-only since it was checked.
            f.checked = False
        if not f.checked and not self._examine(path, f, ts):
            return None
        if f.last is not None and ts <= f.last:
            self.skipped_count += 1
            if ts == f.last:
                log.debug("RRD %s already updated at %d: skipped", path, ts)
            else:
                self.clock_back_count += 1
                until = max(self._clock_back[0], f.last) if self._clock_back else f.last
                self._clock_back = (until, ts)
                self._set_fault(path, f, CLOCK_BACK, f"time {ts} is before the last update {f.last}")
            return None
        return f

    def _examine(self, path: str, f: _File, ts: int) -> bool:
        """Create a missing file, or read an existing one's last update and check it is
        ours (right step and data sources). False if it cannot be written (counted)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if f.last is not None:  # we wrote it before: someone deleted it
                self._recreated.append(path)
            return self._create(path, f, ts)
        except OSError as e:
            self._fail(path, f, "cannot examine: " + (e.strerror or "error").lower(), str(e))
            return False
        if not stat.S_ISREG(st.st_mode):
            return self._invalid(path, f, "not a regular file")
        if self.daemon:
            conn = self._connection()
            if conn is None:
                self.error_count += 1  # lost with rrdcached (logged once)
                return False
            try:
                conn.flush(path)  # so that its last update counts what rrdcached holds
                info = conn.info(path)
            except RrdcachedError as e:
                return self._invalid(path, f, f"not a readable RRD file: {e}")
            except (OSError, _ProtocolError, ValueError) as e:
                self._daemon_fault("reading a file's header", e)
                self.error_count += 1
                return False
        else:
            try:
                info = self._locks.call(rrdtool.info, path)
            except rrdtool.OperationalError as e:
                if is_locked(e):  # another process's, for longer than we wait: not corrupt
                    self._fail(path, f, "cannot examine: " + _reason(str(e)), str(e))
                    return False
                return self._invalid(path, f, f"not a readable RRD file: {e}")
        problem = _mismatch(info, f.kind, self.step)
        if problem:
            return self._invalid(path, f, f"not a ctxmon {f.kind.name} file: {problem}")
        if self.daemon:
            unwritable = _unwritable(path)
            if unwritable:
                self._fail(path, f, "not writable: " + _reason(unwritable), unwritable)
                return False
        f.last = int(info["last_update"])
        f.checked = True
        return True

    def _invalid(self, path: str, f: _File, detail: str) -> bool:
        f.invalid_key = _stat_key(path)
        self._fail(path, f, "file left alone (corrupt or foreign)", detail)
        return False

    def _create(self, path: str, f: _File, ts: int) -> bool:
        if not self._within_budget(path, f.kind.name):
            return False
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as e:
            self._fail(path, f, "create failed: " + (e.strerror or "error").lower(), str(e))
            return False
        start = ts - self.step
        if self.daemon:
            message = self._create_through_daemon(path, f, start)
        else:
            message = None
            try:
                rrdtool.create(
                    path,
                    "--no-overwrite",  # never clobber a file that appeared meanwhile
                    "--start",
                    str(start),
                    "--step",
                    str(self.step),
                    *definition_args(f.kind.name, self.step),
                )
            except rrdtool.OperationalError as e:
                message = str(e)
        if message == _LOST:
            return False
        if message is not None:
            reason = _reason(message)
            if reason == "error" and self._short_of_space(path, f.kind.name):
                # librrd reports a full disk with an empty message
                reason = "no space left on device"
            self._fail(path, f, "create failed: " + reason, message or reason)
            return False
        log.debug("RRD created %s", path)
        if self._used_bytes is not None:
            self._used_bytes += _size(path)
        self._refused.discard(path)
        f.last = start
        f.checked = True
        self._ok(path, f)
        return True

    def _create_through_daemon(self, path: str, f: _File, start: int) -> str | None:
        """CREATE through rrdcached: None when made, else the error message, or _LOST
        when rrdcached could not be asked (counted, logged once)."""
        conn = self._connection()
        if conn is None:
            self.error_count += 1
            return _LOST
        try:
            # rrdcached may still cache updates for a file of that name that was
            # deleted: they would fail against the new file, and the new ones with them.
            conn.command(f"FORGET {path}")  # an error reply (not cached) is fine
            conn.create(path, start, self.step, definition_args(f.kind.name, self.step))
        except RrdcachedError as e:
            # Some of rrdcached's error replies span two lines: start afresh.
            self._drop_connection()
            return str(e)
        except (OSError, _ProtocolError) as e:
            self._daemon_fault("a create", e)
            self.error_count += 1
            return _LOST
        self._daemon_answered()
        return None

    def _within_budget(self, path: str, kind: str) -> bool:
        """False (counted once per file, logged once) when a new file would take the
        directory past max_bytes."""
        if not self.max_bytes:
            return True
        if self._used_bytes is None:
            self._used_bytes = _tree_bytes(self.directory)
        if self._used_bytes + _estimated_size(kind, self.step) <= self.max_bytes:
            self._set_global("max_bytes", None)
            return True
        if path not in self._refused:
            self._refused.add(path)
            self.refused_count += 1
        self.skipped_count += 1
        self._set_global(
            "max_bytes", "full",
            f"{self.directory} holds {self._used_bytes / 2**20:.0f} MiB of its max_bytes "
            f"{self.max_bytes / 2**20:.0f} MiB: new files are not created (counted in "
            f"ctxmon_rrd_files_refused_total); existing ones are still written")
        return False

    def _short_of_space(self, path: str, kind: str) -> bool:
        try:
            vfs = os.statvfs(os.path.dirname(path))
        except OSError:
            return False
        return vfs.f_bavail * vfs.f_frsize < _estimated_size(kind, self.step)

    def _check_root(self) -> bool:
        """The sink's directory exists, recreated if it vanished."""
        if os.path.isdir(self.directory):
            self._root_seen = True
            self._set_global("directory", None)
            return True
        # Deleted under us: what was known of its files is void.
        self._drop_pending()
        self._files.clear()
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            self._set_global("directory", "missing", f"{self.directory} is missing and cannot be created: {e}")
            return False
        if self._root_seen:
            log.warning("RRD directory %s had vanished: recreated", self.directory)
        else:
            log.info("RRD directory %s created", self.directory)
        self._root_seen = True
        self._set_global("directory", None)
        return True

    # -------------------------------------------------------- departed contexts

    def _maintain(self, snapshot: Snapshot, now: float) -> None:
        """Hourly: look again at files left alone, archive departed contexts."""
        for f in self._files.values():
            if f.invalid_key is not None:
                f.invalid_key = None
                f.checked = False
        self._remove_stale_temp_files()
        self._prune_archive(now)
        if self.max_bytes:
            self._used_bytes = _tree_bytes(self.directory)
        if self.daemon and self._connection() is None:
            return  # rrdcached must forget a file before it moves: try next time
        cutoff = now - self.retention_seconds
        present = {encode_name(c.label) for c in snapshot.contexts}
        for entry in _scandir(self._ctx_root):
            if entry.name in present or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                decode_name(entry.name)
            except ValueError:
                continue  # not ours
            files = [e.path for e in _scandir(entry.path) if e.name.endswith(".rrd")]
            last = max((self._last_update(p) for p in files), default=None)
            if last is None:
                last = _mtime(entry.path)
            if last is not None and last < cutoff:
                target = self._archive_target(entry.name, last, "")
                self._archive(entry.path, files, target, f"context {decode_name(entry.name)!r}", last)
        present_if = {layout.interface_file_name(k.name, i.name)
                      for i in snapshot.host_interfaces for k in _HOST_IF_KINDS}
        for entry in _scandir(self._host_root):
            if entry.name in present_if or not layout.is_host_interface_file(entry.name):
                continue
            last = self._last_update(entry.path)
            if last is not None and last < cutoff:
                target = self._archive_target(os.path.join(HOST_DIR, entry.name[:-4]), last, ".rrd")
                self._archive(entry.path, [entry.path], target, f"host interface file {entry.name}", last)

    def _prune_archive(self, now: float) -> None:
        """Remove archived contexts and interfaces whose last update is older than
        archive_keep_seconds (the time is in their names, see `_archive_target`)."""
        if not self.archive_keep_seconds:
            return
        cutoff = now - self.archive_keep_seconds
        top = os.path.join(self.directory, ARCHIVE_DIR)
        gone = []
        entries = [e for e in _scandir(top) if e.name != HOST_DIR]
        entries += _scandir(os.path.join(top, HOST_DIR))
        for e in entries:
            m = _ARCHIVE_STAMP.search(e.name)
            if m is None:
                continue  # not one of ours
            try:
                last = calendar.timegm(time.strptime(m.group(1), "%Y%m%d%H%M%S"))
            except ValueError:
                continue
            if last >= cutoff:
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path)
                elif e.is_file(follow_symlinks=False):
                    os.unlink(e.path)
                else:
                    continue
            except OSError as err:
                log.warning("RRD: cannot remove old archive %s: %s", e.path, err.strerror or err)
                continue
            gone.append(e.name)
        if gone:
            log.info("RRD: removed %d archive(s) last updated over %.0f days ago: %s%s",
                     len(gone), self.archive_keep_seconds / DAY, ", ".join(gone[:5]),
                     " ..." if len(gone) > 5 else "")

    def _remove_stale_temp_files(self) -> None:
        """librrd creates `<file>.rrdXXXXXX` and renames it into place; a kill during
        a create leaves it behind (tens of MB at a short step). Old ones are ours to
        remove: nothing else writes files of that shape in our folders."""
        limit = time.time() - STALE_TEMP_SECONDS  # file times are wall-clock times
        dirs = [self._host_root] + [e.path for e in _scandir(self._ctx_root)
                                    if e.is_dir(follow_symlinks=False)]
        for d in dirs:
            for e in _scandir(d):
                if not _LIBRRD_TEMP.search(e.name) or not e.is_file(follow_symlinks=False):
                    continue
                mtime = _mtime(e.path)
                if mtime is not None and mtime < limit:
                    try:
                        os.unlink(e.path)
                        log.info("removed %s, left behind by an interrupted create", e.path)
                    except OSError as err:
                        log.debug("%s: %s", e.path, err.strerror)

    def _last_update(self, path: str) -> float | None:
        f = self._files.get(path)
        known = f.last if f is not None and f.invalid_key is None else None
        try:
            on_disk: float | None = rrdtool.last(path)
        except rrdtool.OperationalError:
            on_disk = _mtime(path)
        candidates = [t for t in (known, on_disk) if t is not None]
        return max(candidates) if candidates else None

    def _archive_target(self, name: str, last: float, suffix: str) -> str:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(last))
        base = os.path.join(self.directory, ARCHIVE_DIR, f"{name}-{stamp}")
        target, n = base + suffix, 1
        while os.path.lexists(target):
            n += 1
            target = f"{base}.{n}{suffix}"
        return target

    def _archive(self, source: str, files: Iterable[str], target: str, what: str, last: float) -> None:
        files = list(files)
        for p in files:  # held updates go to the file before it moves
            f = self._pending.get(p)
            if f is not None:
                self._write_pending(p, f)
        if self._conn is not None:
            # Write out and drop what rrdcached holds for these files, or it would
            # write it later to a path that no longer exists. Replies do not matter
            # (a file it does not cache is an error reply).
            try:
                for p in files:
                    self._conn.command(f"FLUSH {p}")
                    self._conn.command(f"FORGET {p}")
            except (OSError, _ProtocolError) as e:
                self._daemon_fault("archiving", e)
                log.warning("RRD: departed %s not archived this time: rrdcached: %s", what, e)
                return
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(source, target)
        except OSError as e:
            log.warning("RRD: could not archive departed %s (%s): %s", what, source, e)
            return
        prefix = source + os.sep
        for p in [p for p in self._files if p == source or p.startswith(prefix)]:
            del self._files[p]
            self._drop_pending([p])
            self._faults.forget(p)
        log.info(
            "RRD: archived departed %s, last updated %s, to %s",
            what,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last)),
            target,
        )

    # ------------------------------------------------------------ fault log

    def _fail(self, path: str, f: _File, category: str, detail: str) -> None:
        self.error_count += 1
        self._set_fault(path, f, category, detail)

    def _set_fault(self, path: str, f: _File, category: str, detail: str) -> None:
        self._faults.complain(path, category, detail)

    def _ok(self, path: str, f: _File) -> None:
        self._faults.release(path)

    def _set_global(self, key: str, category: str | None, detail: str = "") -> None:
        """A fault of the whole sink (its directory, rrdcached), logged on change."""
        if category is None:
            self._global.release(key)
        else:
            self._global.complain(key, category, detail)

    def _report(self) -> None:
        """One log line per fault category that files entered or left in this poll."""
        if self._recreated:
            paths = self._recreated
            log.info("RRD file(s) deleted behind ctxmon's back, created anew: %s%s",
                     ", ".join(paths[:5]), " ..." if len(paths) > 5 else "")
            self._recreated = []
        clock_back, self._clock_back = self._clock_back, None
        details = {}
        if clock_back is not None:
            until, ts = clock_back
            details[CLOCK_BACK] = (f"their last update is {_utc(until)}, {until - ts} s ahead "
                                   f"of the clock: writing resumes when the clock passes it")
        self._faults.report(details)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _tree_bytes(top: str) -> int:
    """Bytes of the regular files under `top` (not following symlinks)."""
    total = 0
    for d, _dirs, files in os.walk(top):
        for name in files:
            try:
                st = os.lstat(os.path.join(d, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def expected_bytes(kind: str, step: int) -> int:
    """Size of one RRD file of `kind` made at `step` (check-config's estimate)."""
    return _estimated_size(kind, step)


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
