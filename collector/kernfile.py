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
(limits that stay `max`). A source keeps the `HeldFile` objects of each context, so
a poll builds no path and looks none up, and a missing file costs no exception.
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
    return _open_regular(path)[0]


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(errno.EINVAL, "not a regular file", path)
    return fd, st


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


class HeldFile:
    """One file of a `HeldFiles`, kept by a caller that reads it every poll: no path
    is built or looked up per read (`HeldFiles.file(path)` makes or finds it)."""

    __slots__ = ("path", "group", "owner", "fd", "ident", "seen", "missing_until", "missing_epoch",
                 "data", "parse", "value", "registered")

    def __init__(self, owner: "HeldFiles", path: str, group: str | None = None):
        self.path = path
        # Files of one thing that is removed and made again as a whole (a cgroup, in
        # every hierarchy): when one of them fails, the missing ones are looked for again.
        self.group = path.rpartition("/")[0] if group is None else group
        self.owner = owner
        self.fd: int | None = None
        self.ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the held fd
        self.seen = -1  # the owner's sweep generation this file was last read in
        self.missing_until = 0.0  # remembered as missing until then (if the epoch holds)
        self.missing_epoch = -1
        self.data: bytes | None = None  # the bytes last parsed, and by what into what
        self.parse: Callable | None = None
        self.value: object = None
        self.registered = True

    def _forget(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.owner._open -= 1
            POOL.held -= 1
        self.data = self.parse = self.value = None
        self.missing_epoch = -1
        self.registered = False

    def read(self, cap: int = DEFAULT_CAP) -> bytes:
        """The file's bytes; raises what open/read would (FileNotFoundError also while
        it is remembered as missing)."""
        owner = self.owner
        if not owner.hold:
            return read_file(self.path, cap)
        if self.seen != owner._gen:
            self.seen = owner._gen
            if not self.registered:  # swept while its caller kept it: back in the set
                self.registered = True
                other = owner._files.get(self.path)
                if other is not None:
                    other._forget()  # one object per path holds the fd
                owner._files[self.path] = self
        fd = self.fd
        in_flux = fd is not None  # if the held one fails: its cgroup is coming or going
        if fd is not None and owner.verify:
            # A recorded tree: the name may now be another file (replaced, its
            # directory renamed away): hold the fd only while the path still leads to it.
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == self.ident
            except OSError:
                same = False
            if not same:
                self.fd = None
                owner._open -= 1
                POOL.held -= 1
                os.close(fd)
                fd = None
        if fd is not None:
            try:
                data = os.pread(fd, _FIRST, 0)
                if len(data) <= _SURELY_ALL and len(data) <= cap:
                    return data
                return read_fd(fd, cap)
            except TooLarge:
                raise
            except OSError:
                # The file's cgroup or process is gone (maybe made again since): the
                # fd stays bound to the old one. Open afresh, and look again for every
                # file found missing (a cgroup made again may have other controllers,
                # in this hierarchy and in the others).
                self.fd = None
                owner._open -= 1
                POOL.held -= 1
                os.close(fd)
                owner.bump(self.group)
        elif self.missing_epoch == owner.epoch(self.group):
            if owner.clock() < self.missing_until:
                raise FileNotFoundError(errno.ENOENT, "missing (remembered)", self.path)
            self.missing_epoch = -1
        try:
            fd, st = _open_regular(self.path)
        except OSError as e:
            # Also when the directory is missing (a cgroup absent from one hierarchy):
            # a context that goes away is swept, one made again is looked at afresh.
            if e.errno == errno.ENOENT and not in_flux and owner.recheck_missing > 0:
                self.missing_epoch = owner.epoch(self.group)
                self.missing_until = owner.clock() + owner.recheck_missing
            raise
        try:
            data = read_fd(fd, cap)
        except OSError:
            os.close(fd)
            raise
        if owner._open < owner.max_open and POOL.take():
            self.fd = fd
            self.ident = (st.st_dev, st.st_ino)
            owner._open += 1
        else:
            os.close(fd)
        return data

    def parsed(self, parse: Callable[[str], T], cap: int = DEFAULT_CAP) -> T:
        """parse(text of the file); the last value again when the bytes are the same."""
        data = self.read(cap)
        if data == self.data and parse is self.parse:
            return self.value  # type: ignore[return-value]
        value = parse(data.decode("utf-8", "surrogateescape"))
        if self.owner.hold:
            self.data, self.parse, self.value = data, parse, value
        return value

    def get(self, parse: Callable[[str], T], cap: int = DEFAULT_CAP) -> T | None:
        """`parsed`, but None, not an exception, when the file is missing or gone (the
        common case of a controller a cgroup does not have: no exception per poll).
        Other OSErrors and parse's errors are raised."""
        owner = self.owner
        fd = self.fd
        if fd is not None and not owner.verify:  # the hot path, inline: one pread, parsed if it changed
            self.seen = owner._gen
            try:
                data = os.pread(fd, _FIRST, 0)
            except OSError:
                data = None  # read() below reopens
            if data is not None and len(data) <= _SURELY_ALL and len(data) <= cap:
                if data == self.data and parse is self.parse:
                    return self.value  # type: ignore[return-value]
                value = parse(data.decode("utf-8", "surrogateescape"))
                self.data, self.parse, self.value = data, parse, value
                return value
        elif (owner.hold and self.missing_epoch == owner.epoch(self.group)
                and owner.clock() < self.missing_until):
            self.seen = owner._gen  # still in use: not swept
            return None
        try:
            return self.parsed(parse, cap)
        except OSError as e:
            if e.errno in _GONE:
                return None
            raise


class HeldFiles:
    """Files of a live tree read every poll, held open.

    `read(path)` raises what open/read would (FileNotFoundError for a missing file,
    also while it is remembered as missing). Call `sweep()` after each poll: files not
    read since the previous sweep are closed and forgotten (their context is gone).
    At most `max_open` fds are held; beyond that files are opened and closed each time.
    `hold=False` (a recorded tree, whose files tests rewrite under the same name)
    holds nothing and remembers nothing: every read is open+read+close.
    `verify=True` holds files of such a tree too, but before each pread checks that
    the path still names the held file (one stat: a file replaced or a directory
    renamed away is opened afresh). `recheck_missing=0`: nothing is remembered as
    missing (a file is looked for every time).
    A caller that reads the same files every poll keeps their `file(path)` objects.
    """

    def __init__(self, max_open: int, hold: bool = True, recheck_missing: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, verify: bool = False):
        self.max_open = max_open if hold else 0
        self.hold = hold
        self.verify = verify
        self.recheck_missing = recheck_missing
        self.clock = clock
        self._files: dict[str, HeldFile] = {}
        self._open = 0  # fds held
        self._gen = 0  # sweep generation
        # Bumped when a held file fails (a cgroup was removed, maybe made again with
        # other controllers): every file of its group remembered as missing is looked
        # for again (`_epoch`: all groups, when `_epochs` is cleared).
        self._epoch = 0
        self._epochs: dict[str, int] = {}  # group -> failures of its held files

    def __len__(self) -> int:
        return self._open

    def close(self) -> None:
        for f in self._files.values():
            f._forget()
        self._files.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def epoch(self, group: str) -> int:
        """Changes whenever a held file of `group` failed (see HeldFile.group)."""
        return (self._epoch << 32) | self._epochs.get(group, 0)

    def bump(self, group: str) -> None:
        if len(self._epochs) >= 4096:  # groups come and go: start afresh, all at once
            self._epochs.clear()
            self._epoch += 1
        self._epochs[group] = self._epochs.get(group, 0) + 1

    def file(self, path: str, group: str | None = None) -> HeldFile:
        f = self._files.get(path)
        if f is None:
            f = HeldFile(self, path, group)
            if self.hold:
                self._files[path] = f
        return f

    def read(self, path: str, cap: int = DEFAULT_CAP) -> bytes:
        if not self.hold:
            return read_file(path, cap)
        return self.file(path).read(cap)

    def parsed(self, path: str, parse: Callable[[str], T], cap: int = DEFAULT_CAP) -> T:
        """parse(text of the file); the last value again when the bytes are the same."""
        return self.file(path).parsed(parse, cap)

    def sweep(self) -> None:
        """Close and forget what was not read since the last sweep."""
        gen = self._gen
        files = self._files
        for path in [p for p, f in files.items() if f.seen != gen]:
            files.pop(path)._forget()
        self._gen = gen + 1


class FdPool:
    """The fds held open between polls by every holder in this process (the process
    scanner's `<pid>/stat` files, the sources' kernel files), against one cap: the
    fd limit less a reserve for sockets, RRD files and logs. One pool, not a fixed
    split: 1,000 cgroup contexts hold 5,000 files and the stat files of 1,100
    processes 1,100, and either may be the larger on another host."""

    def __init__(self) -> None:
        self.held = 0
        self._cap: int | None = None

    @property
    def cap(self) -> int:
        if self._cap is None:
            from .procfs import raise_fd_limit

            soft = raise_fd_limit()
            self._cap = max(0, soft - max(256, soft // 10))
        return self._cap

    def take(self) -> bool:
        """Count one more held fd if the pool has room."""
        if self.held < self.cap:
            self.held += 1
            return True
        return False


POOL = FdPool()  # polls run on one thread: a plain count


def held_files_budget() -> int:
    """How many kernel files a source may hold open: as many as the shared pool
    (`POOL`) has room for."""
    return POOL.cap
