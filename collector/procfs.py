"""Per-process figures from `<proc>/<pid>/stat`, and the host-wide `/proc` files.

Pure parsers (bytes/text in, values out) plus `ProcessScanner`, the polling hot path:
it keeps each `/proc/<pid>/stat` open and re-reads it with `os.pread`, which costs a
third of open+read+close. An fd stays bound to the task it was opened for, so a reused
pid never inherits the old process's figures: a dead fd fails (ESRCH) or reads empty,
and the pid is opened afresh.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import resource
from collections import Counter
from typing import NamedTuple

from . import kernfile
from .snapshot import InterfaceSample

try:  # the C reader for one-shot scans (setup.py builds it; optional)
    from . import _procscan
except ImportError:  # pragma: no cover - no compiler where ctxmon was installed
    _procscan = None

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")  # USER_HZ: the unit of every time in <pid>/stat
PAGE_SIZE = os.sysconf("SC_PAGESIZE")


class ProcStat(NamedTuple):
    """One process (thread-group leader) as read from `<pid>/stat`; times in USER_HZ ticks."""

    pid: int
    start: int  # f22 starttime, ticks since boot: with pid, the process's identity
    utime: int  # f14
    stime: int  # f15
    cutime: int  # f16: reaped children
    cstime: int  # f17
    threads: int  # f20
    vsize: int  # f23, bytes
    rss: int  # f24, pages


class ParseError(ValueError):
    """A /proc file that does not have the layout its kernel documents."""


# No time, size or count in a kernel file comes near 2**63 (ticks: 2.9e9 years at
# 100 Hz); a value at or past it, or below zero, is a corrupt or forged file.
ABSURD = 1 << 63


def parse_stat(pid: int, data: bytes) -> ProcStat:
    """Parse one `<pid>/stat` line.

    The comm field may hold `)` and blanks, so fields are counted after the *last*
    `)` (vserver-stat uses the first and is derailed by such names). Newer kernels
    append fields; only the first 24 are used.
    """
    i = data.rfind(b")")
    if i < 0:
        raise ParseError("no ')' after comm")
    f = data[i + 2 :].split()
    if len(f) < 22:
        raise ParseError(f"truncated: {len(f) + 2} fields")
    try:
        p = ProcStat(
            pid, int(f[19]), int(f[11]), int(f[12]), int(f[13]), int(f[14]),
            int(f[17]), int(f[20]), int(f[21]),
        )
    except ValueError as e:
        raise ParseError(f"non-numeric field: {e}") from None
    if any(not 0 <= v < ABSURD for v in p[1:]):
        raise ParseError("negative or absurd value")
    return p


def parse_uptime(text: str) -> float:
    """`/proc/uptime`: `S.cc I.ii` -> S.cc seconds since boot."""
    try:
        seconds = float(text.split()[0])
    except (IndexError, ValueError):
        raise ParseError("uptime: expected '<seconds> <idle>'") from None
    if not 0 <= seconds < float("inf"):  # float() takes "nan", "inf", "-5"
        raise ParseError(f"uptime: {seconds!r} is no time since boot")
    return seconds


_NET_DEV_FIELDS = 16


def parse_net_dev(text: str) -> tuple[list[InterfaceSample], int]:
    """`<proc>/net/dev` (2.6+ layout: two header lines, then `name: 16 counters`).

    Returns the interfaces and the number of malformed lines skipped.
    """
    out: list[InterfaceSample] = []
    bad = 0
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        v = rest.split()
        if not sep or not name or len(v) < _NET_DEV_FIELDS:
            bad += 1
            continue
        try:
            n = [int(x) for x in v[:_NET_DEV_FIELDS]]
        except ValueError:
            bad += 1
            continue
        if min(n) < 0 or max(n) >= 1 << 64:  # the kernel's counters are u64
            bad += 1
            continue
        out.append(InterfaceSample(name, n[0], n[1], n[2], n[3], n[8], n[9], n[10], n[11]))
    return out, bad


# `net/dev` may list thousands of interfaces (~130 bytes each); more than this is
# refused rather than read whole every poll.
NET_DEV_CAP = 4 << 20


def read_text(path: str, cap: int = kernfile.DEFAULT_CAP) -> str:
    """Read a whole small kernel file as text: UTF-8, with bytes that are not kept
    as surrogate escapes (never a decode error, and names stay reversible). Only a
    regular file, opened without blocking, of at most `cap` bytes (see kernfile)."""
    return kernfile.read_text(path, cap)


def raise_fd_limit(want_at_least: int = 1 << 16) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (and, as root, the hard one up to
    `want_at_least` within fs.nr_open); return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want_at_least and os.geteuid() == 0:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                ceiling = int(f.read())
        except (OSError, ValueError):
            ceiling = want_at_least
        try:
            new_hard = min(want_at_least, ceiling)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_hard, new_hard))
            return new_hard
        except (ValueError, OSError):
            pass  # no CAP_SYS_RESOURCE (a container): fall back to the hard limit
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


# Errors that mean "this process is gone" rather than "something is wrong".
_GONE = (errno.ENOENT, errno.ESRCH)


class ProcessScan(NamedTuple):
    procs: list[ProcStat]
    errors: int  # unreadable or malformed stat files skipped
    vanished: int  # pids listed but gone before their stat was read


class ProcessScanner:
    """Lists `<proc_root>` and reads every process's stat file, holding the files open.

    At most `max_open` files are held, and only while the fd pool shared with the
    sources' held files has room (`kernfile.POOL`: the fd limit less a reserve for
    sockets and RRD files); beyond that, files are opened, read and closed each poll.
    """

    def __init__(self, proc_root: str = "/proc", max_open: int | None = None):
        self.proc_root = proc_root
        if max_open is None:
            max_open = kernfile.POOL.cap  # shared with the sources' held files
        self.max_open = max_open
        self._fds: dict[int, int] = {}
        # pid -> (the stat bytes last read, their ProcStat): a process that did not
        # change (most are asleep) is not parsed again.
        self._last: dict[int, tuple[bytes, ProcStat]] = {}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        kernfile.POOL.held -= len(self._fds)
        self._fds.clear()
        self._last.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def scan(self, skip_pid: int | None = None) -> ProcessScan:
        if self.max_open == 0 and not self._fds and _procscan is not None:
            return self._scan_once(skip_pid)
        # The hot path: everything is a local name, the stat line is parsed inline
        # (same rules as parse_stat, which stays the reference and the error path),
        # and the cyclic GC is paused: thousands of fresh tuples would trigger it
        # many times per poll for nothing (tuples of ints hold no cycles).
        root = self.proc_root
        fds = self._fds
        kept: dict[int, int] = {}
        max_open = self.max_open
        pread = os.pread
        open_regular = kernfile.open_regular
        pool = kernfile.POOL
        new = tuple.__new__
        procs: list[ProcStat] = []
        append = procs.append
        last = self._last
        seen: dict[int, tuple[bytes, ProcStat]] = {}
        errors = vanished = 0
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for name in os.listdir(root):
                if not (name.isascii() and name.isdigit()):  # "²".isdigit() too
                    continue
                pid = int(name)
                if pid == skip_pid:
                    continue
                data = b""
                fd = fds.pop(pid, None)
                if fd is not None:
                    try:
                        data = pread(fd, 1024, 0)
                    except OSError:
                        pass
                    if not data:  # the task behind this fd is gone; the pid may be reused
                        os.close(fd)
                        fd = None
                        pool.held -= 1
                was_held = fd  # counted in the pool
                if fd is None:
                    try:
                        fd = open_regular(f"{root}/{name}/stat")  # no FIFO, no blocking
                    except OSError as e:
                        if e.errno in _GONE:
                            vanished += 1
                        else:
                            errors += 1
                            log.debug("%s/%s/stat: %s", root, name, e.strerror)
                        continue
                    try:
                        data = pread(fd, 1024, 0)
                    except OSError as e:
                        if e.errno not in _GONE:
                            errors += 1
                            log.debug("%s/%s/stat: %s", root, name, e.strerror)
                            os.close(fd)
                            continue
                    if not data:
                        vanished += 1
                        os.close(fd)
                        continue
                if was_held is not None and len(kept) < max_open:
                    kept[pid] = fd
                elif was_held is None and len(kept) < max_open and pool.take():
                    kept[pid] = fd
                else:
                    os.close(fd)
                    if was_held is not None:
                        pool.held -= 1
                hit = last.get(pid)
                if hit is not None and hit[0] == data:
                    append(hit[1])
                    seen[pid] = hit
                    continue
                i = data.rfind(b")")
                f = data[i + 2 :].split(None, 22)
                try:
                    if i < 0:
                        raise ValueError
                    p = new(ProcStat, (
                        pid, int(f[19]), int(f[11]), int(f[12]), int(f[13]), int(f[14]),
                        int(f[17]), int(f[20]), int(f[21]),
                    ))
                    # One test for all: the OR is negative if any value is, and has
                    # bit 63 or above if any value does.
                    x = p[1] | p[2] | p[3] | p[4] | p[5] | p[6] | p[7] | p[8]
                    if x < 0 or x >> 63:
                        raise ValueError
                    append(p)
                    seen[pid] = (data, p)
                except (IndexError, ValueError):
                    errors += 1
                    try:
                        parse_stat(pid, data)
                    except ParseError as e:
                        log.debug("%s/%d/stat: %s", root, pid, e)
        finally:
            if gc_was_enabled:
                gc.enable()
        for fd in fds.values():  # processes no longer listed
            os.close(fd)
        pool.held -= len(fds)
        self._fds = kept
        self._last = seen
        return ProcessScan(procs, errors, vanished)

    def _scan_once(self, skip_pid: int | None) -> ProcessScan:
        """The same scan through the C reader, nothing held (`ctxmon stat`): at 20,000
        processes it halves the scan. Lines not in the kernel's own shape come back
        unparsed and are judged by parse_stat, the one parser of record."""
        gc_was_enabled = gc.isenabled()
        gc.disable()  # as in scan(): 20,000 fresh tuples, no cycles
        try:
            procs, unparsed, errors, vanished, failures = _procscan.scan(
                self.proc_root, -1 if skip_pid is None else skip_pid, ProcStat)
        finally:
            if gc_was_enabled:
                gc.enable()
        for name, err in failures:
            log.debug("%s/%s/stat: %s", self.proc_root, name,
                      os.strerror(err) if err else "not a regular file")
        for pid, data in unparsed:
            try:
                procs.append(parse_stat(pid, data))
            except ParseError as e:
                errors += 1
                log.debug("%s/%d/stat: %s", self.proc_root, pid, e)
        self._last.clear()
        return ProcessScan(procs, errors, vanished)


class ErrorCounts(Counter):
    """Per-source counts of skipped files in one poll."""
