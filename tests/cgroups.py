"""Real cgroups for tests: create them under the cgroup v2 hierarchy, start processes
inside them, and tear everything down again (kill, reap, rmdir).

Use through the `cgroup_factory` fixture in conftest.py, which skips when this cannot
work (not root, no cgroup v2 mounted, not writable).
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import time
from typing import Sequence

PREFIX = "ctxmon-test-"

# Workloads for `python -c`: one CPU busy; 64 MiB touched page by page, then "ready".
BURN = "while True: pass"
TOUCH_64M = (
    "import time\n"
    "b = bytearray(64 << 20)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def v2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where cgroup2 is mounted (a pure-v2 host's /sys/fs/cgroup, a hybrid's .../unified)."""
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if sep and right.split()[:1] == ["cgroup2"]:
            mount_point = left.split()[4]
            # mountinfo escapes blanks and backslashes as octal
            return mount_point.encode().decode("unicode_escape")
    return None


def unavailable_reason() -> str | None:
    """Why real test cgroups cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "real cgroups need root"
    root = v2_mount()
    if root is None:
        return "no cgroup v2 hierarchy mounted"
    if not os.access(root, os.W_OK) or not os.path.isfile(os.path.join(root, "cgroup.procs")):
        return f"cgroup v2 hierarchy {root} is not writable"
    return None


def _join_cgroup(procs_file: str) -> None:
    """In the child between fork and exec: move itself ("0" = the writer) into the cgroup."""
    fd = os.open(procs_file, os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def rmdir_cgroup(path: str, limit: float = 10.0) -> None:
    """rmdir an emptied cgroup (gone already is fine): the kernel may call it busy for
    a moment after its last process exits. OSError if it stays busy past `limit` s."""
    deadline = time.monotonic() + limit
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class LiveCgroup:
    """One test cgroup: `rel` is its path relative to the v2 root, `path` absolute."""

    def __init__(self, root: str, rel: str):
        self.root = root
        self.rel = rel
        self.path = os.path.join(root, rel)
        self.popens: list[subprocess.Popen] = []

    def spawn(self, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        """Start `argv` already inside this cgroup (it joins before exec)."""
        procs = os.path.join(self.path, "cgroup.procs")
        p = subprocess.Popen(argv, preexec_fn=lambda: _join_cgroup(procs), **popen_kwargs)
        self.popens.append(p)
        return p

    def add(self, pid: int) -> None:
        """Move a running process into this cgroup."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def pids(self) -> list[int]:
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]

    def read(self, name: str) -> str:
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL everything inside and every child spawned here (wherever it went
        since), reap those children, and wait until the cgroup is empty."""
        kill_file = os.path.join(self.path, "cgroup.kill")
        if os.path.exists(kill_file):  # Linux 5.14+
            with open(kill_file, "w") as f:
                f.write("1")
        deadline = time.monotonic() + timeout
        while True:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for p in self.popens:  # ours even if they moved to another cgroup
                if p.poll() is None:
                    p.kill()
                    try:
                        p.wait(timeout=0.05)
                    except subprocess.TimeoutExpired:
                        pass
            if not self.pids() and all(p.returncode is not None for p in self.popens):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.path}: processes left {self.pids()}")
            time.sleep(0.02)


class CgroupFactory:
    """Makes uniquely named cgroups; `cleanup()` removes all of them, deepest first."""

    def __init__(self, root: str):
        self.root = root
        self.made: list[LiveCgroup] = []

    def __call__(self, name: str | None = None, parent: LiveCgroup | None = None,
                 suffix: str = ".service") -> LiveCgroup:
        """A new cgroup. Without `name`: `ctxmon-test-<random><suffix>`."""
        if name is None:
            name = f"{PREFIX}{secrets.token_hex(4)}{suffix}"
        rel = f"{parent.rel}/{name}" if parent else name
        os.mkdir(os.path.join(self.root, rel))
        cg = LiveCgroup(self.root, rel)
        self.made.append(cg)
        return cg

    def cleanup(self) -> None:
        """Kill and rmdir everything made; raise at the end if something stayed behind."""
        problems = []
        for cg in sorted(self.made, key=lambda c: c.rel.count("/"), reverse=True):
            try:
                cg.kill_all()
            except (OSError, RuntimeError) as e:
                problems.append(str(e))
            for p in cg.popens:  # close pipes we may have opened
                for stream in (p.stdin, p.stdout, p.stderr):
                    if stream is not None:
                        stream.close()
            try:
                rmdir_cgroup(cg.path, limit=2.0)
            except OSError as e:
                problems.append(f"rmdir {cg.path}: {e.strerror}")
        self.made.clear()
        if problems:
            raise RuntimeError("test cgroup cleanup: " + "; ".join(problems))
