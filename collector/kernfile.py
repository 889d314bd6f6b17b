"""Kernel files read safely (a recorded tree is hostile input) and cheaply (every poll).

Safety:
- `open_regular` opens with O_NONBLOCK and reads only a regular file (fstat): a FIFO
  planted in a recorded tree would otherwise block open() until a writer comes, a
  device like /dev/zero would never end. /proc, sysfs and cgroupfs files are regular.
- `read_fd` reads at most `cap` bytes: a file with more is refused (`TooLarge`), not
  read whole every poll.

Cost: `HeldFiles` keeps files open and re-reads them with `os.pread` at offset 0, as
`ProcessScanner` does for `<pid>/stat` (a third of open+read+close); remembers which
files a context does not have (a controller not enabled: four failed opens a context
a poll otherwise); and keeps the parsed value of a file whose bytes did not change
(limits that stay `max`).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Callable, TypeVar

T = TypeVar("T")

DEFAULT_CAP = 1 << 20  # bytes; no per-context file comes near it (net/dev: ~8,000 interfaces)
_FIRST = 4096
# A read shorter than this is the whole file: seq_file hands out less than was asked
# only when its next record did not fit its page-sized buffer, and no record of the
# files read here comes near half a page.
_SURELY_ALL = 2048
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)


class NotRegular(OSError):
    """The path is a FIFO, device, socket or directory, not a file to read."""


class TooLarge(OSError):
    """The file holds more than the cap allows."""


def open_regular(path: str) -> int:
    """An fd for reading `path` if it is a regular file; never blocks."""
    fd = os.open(path, _FLAGS)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegular(errno.EINVAL, "not a regular file", path)
    return fd


def read_fd(fd: int, cap: int = DEFAULT_CAP) -> bytes:
    """The whole content from offset 0, at most `cap` bytes (else TooLarge)."""
    data = os.pread(fd, min(_FIRST, cap + 1), 0)
    if len(data) > cap:
        raise TooLarge(errno.EFBIG, f"more than {cap} bytes")
    if len(data) <= _SURELY_ALL:
        return data
    parts = [data]
    size = len(data)
    while size <= cap:
        more = os.pread(fd, min(1 << 16, cap + 1 - size), size)
        if not more:
            return b"".join(parts)
        parts.append(more)
        size += len(more)
    raise TooLarge(errno.EFBIG, f"more than {cap} bytes")


def read_file(path: str, cap: int = DEFAULT_CAP) -> bytes:
    """open_regular + read_fd + close."""
    fd = open_regular(path)
    try:
        return read_fd(fd, cap)
    finally:
        os.close(fd)


def read_text(path: str, cap: int = DEFAULT_CAP) -> str:
    """A kernel file as text: UTF-8, bytes that are not kept as surrogate escapes."""
    return read_file(path, cap).decode("utf-8", "surrogateescape")


class HeldFiles:
    """Files of a live tree read every poll, held open.

    `read(path)` raises what open/read would (FileNotFoundError for a missing file,
    also while it is remembered as missing). Call `sweep()` after each poll: files not
    read since the previous sweep are closed and forgotten (their context is gone).
    At most `max_open` fds are held; beyond that files are opened and closed each time.
    `hold=False` (a recorded tree, whose files tests rewrite under the same name)
    holds nothing and remembers nothing: every read is open+read+close.
    """

    def __init__(self, max_open: int, hold: bool = True, recheck_missing: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_open = max_open if hold else 0
        self.hold = hold
        self.recheck_missing = recheck_missing
        self.clock = clock
        self._fds: dict[str, int] = {}
        self._used: set[str] = set()
        # dir -> {name: when to look again}; all go when a held file fails (a cgroup
        # was removed, maybe made again with other controllers).
        self._missing: dict[str, dict[str, float]] = {}
        self._parsed: dict[str, tuple[bytes, Callable, object]] = {}

    def __len__(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._missing.clear()
        self._parsed.clear()
        self._used.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def read(self, path: str, cap: int = DEFAULT_CAP) -> bytes:
        if not self.hold:
            return read_file(path, cap)
        self._used.add(path)
        fd = self._fds.get(path)
        in_flux = fd is not None  # if the held one fails: its cgroup is coming or going
        if fd is not None:
            try:
                return read_fd(fd, cap)
            except TooLarge:
                raise
            except OSError:
                # The file's cgroup or process is gone (maybe made again since): the
                # fd stays bound to the old one. Open afresh, and look again for every
                # file found missing (a cgroup made again may have other controllers,
                # in this hierarchy and in the others).
                del self._fds[path]
                os.close(fd)
                self._missing.clear()
        d, _, name = path.rpartition("/")
        missing = self._missing.get(d)
        if missing is not None and name in missing:
            if self.clock() < missing[name]:
                raise FileNotFoundError(errno.ENOENT, "missing (remembered)", path)
            del missing[name]
        try:
            fd = open_regular(path)
        except OSError as e:
            # Also when the directory is missing (a cgroup absent from one hierarchy):
            # a context that goes away is swept, one made again is looked at afresh.
            if e.errno == errno.ENOENT and not in_flux:
                self._missing.setdefault(d, {})[name] = self.clock() + self.recheck_missing
            raise
        try:
            data = read_fd(fd, cap)
        except OSError:
            os.close(fd)
            raise
        if len(self._fds) < self.max_open:
            self._fds[path] = fd
        else:
            os.close(fd)
        return data

    def parsed(self, path: str, parse: Callable[[str], T], cap: int = DEFAULT_CAP) -> T:
        """parse(text of the file); the last value again when the bytes are the same."""
        data = self.read(path, cap)
        hit = self._parsed.get(path) if self.hold else None
        if hit is not None and hit[1] is parse and hit[0] == data:
            return hit[2]  # type: ignore[return-value]
        value = parse(data.decode("utf-8", "surrogateescape"))
        if self.hold:
            self._parsed[path] = (data, parse, value)
        return value

    def sweep(self) -> None:
        """Close and forget what was not read since the last sweep."""
        used = self._used
        for path in [p for p in self._fds if p not in used]:
            os.close(self._fds.pop(path))
        for path in [p for p in self._parsed if p not in used]:
            del self._parsed[path]
        for d in list(self._missing):
            names = self._missing[d]
            for name in [n for n in names if f"{d}/{n}" not in used]:
                del names[name]
            if not names:
                del self._missing[d]
        used.clear()


def held_files_budget() -> int:
    """How many kernel files a source may hold open: a quarter of the fd limit (the
    process scanner's `<pid>/stat` files, sockets and RRD files need the rest)."""
    from .procfs import raise_fd_limit

    return raise_fd_limit() // 4
