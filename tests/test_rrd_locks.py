"""librrd (1.7) locks every file it opens without waiting, readers too: shared for
`info`, `fetch`, `graph`, `dump`, exclusive for `update`. So the daemon writing a file
and a reader of it (`ctxmon graph`, `ctxmon plan`, a backup's `rrdtool dump`) fail each
other for the instant they overlap ("could not lock RRD"). Real locks, held by another
process, on real RRD files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest
import rrdtool as librrd
from test_rrd import STEP, T0, ctx, on_disk_last_update, snap, warnings_about

from exporters import rrd, rrdlock
from exporters.rrd import RrdSink, fetch, rrd_path

pytestmark = pytest.mark.skipif(shutil.which("rrdtool") is None, reason="rrdtool command not installed")

# Holds POSIX locks on files, as librrd takes them (fcntl), until its stdin closes.
LOCKER = """
import fcntl, os, sys
mode = fcntl.LOCK_EX if sys.argv[1] == "write" else fcntl.LOCK_SH
for path in sys.argv[2:]:
    fcntl.lockf(os.open(path, os.O_RDWR), mode)
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def locked(paths: str | list[str], mode: str, release_after: float | None = None):
    """`paths` locked by another process ("read": as a reader holds them, "write": as
    a writer does) until the block ends, or `release_after` seconds from now."""
    paths = [paths] if isinstance(paths, str) else paths
    p = subprocess.Popen([sys.executable, "-c", LOCKER, mode, *paths],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    timer = None
    try:
        assert p.stdout.readline().strip() == "locked"
        if release_after is not None:
            timer = threading.Timer(release_after, p.stdin.close)
            timer.start()
        yield
    finally:
        if timer is not None:
            timer.cancel()
        p.kill()
        p.wait()


def test_the_locks_are_librrds():
    """What the rest relies on: a reader's shared lock fails librrd's update, a
    writer's exclusive lock fails its reads, with this message."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/x.rrd"
        librrd.create(path, "--start", str(T0), "--step", "60", "DS:x:GAUGE:120:U:U", "RRA:AVERAGE:0.5:1:10")
        with locked(path, "read"):
            librrd.info(path)  # readers share
            with pytest.raises(librrd.OperationalError, match=rrdlock.LOCKED):
                librrd.update(path, f"{T0 + 60}:1")
        with locked(path, "write"):
            with pytest.raises(librrd.OperationalError, match=rrdlock.LOCKED):
                librrd.info(path)


def test_a_reader_holding_a_file_for_a_moment_costs_no_update(tmp_path):
    sink = RrdSink(str(tmp_path / "rrd"), STEP)
    sink.write(snap(T0, [ctx("web")]))
    mem = rrd_path(sink.directory, "mem", "web")
    with locked(mem, "read", release_after=0.01):
        sink.write(snap(T0 + STEP, [ctx("web")]))
    assert sink.error_count == 0
    assert on_disk_last_update(mem) == T0 + STEP


def test_a_file_locked_for_a_whole_poll_is_counted_and_written_again_after(tmp_path, caplog):
    """Locked through a poll: that update is lost and counted, with a warning that
    says why; the file stays ctxmon's (not "left alone" as corrupt or foreign) and the
    next poll writes it, also for a sink that had not looked at it yet."""
    directory = str(tmp_path / "rrd")
    RrdSink(directory, STEP).write(snap(T0, [ctx("web")]))
    mem = rrd_path(directory, "mem", "web")
    for first_sight in (False, True):
        sink = RrdSink(directory, STEP)
        base = on_disk_last_update(mem)
        if not first_sight:
            sink.write(snap(base + STEP, [ctx("web")]))
            base += STEP
        with locked(mem, "write"):
            sink.write(snap(base + STEP, [ctx("web")]))
        assert sink.error_count == 1, first_sight
        assert any("locked by another process" in w for w in warnings_about(caplog, mem)), first_sight
        assert on_disk_last_update(mem) == base
        sink.write(snap(base + 2 * STEP, [ctx("web")]))
        assert on_disk_last_update(mem) == base + 2 * STEP, first_sight
        assert sink.error_count == 1
        assert on_disk_last_update(rrd_path(directory, "cpu", "web")) == base + 2 * STEP


def test_the_waits_for_locks_of_one_poll_are_bounded(tmp_path, monkeypatch):
    """Every file locked for good (a stuck or hostile process): the poll waits for
    locks at most LockWaits' budget in all, not the full series of waits per file."""
    sink = RrdSink(str(tmp_path / "rrd"), STEP)
    names = [f"c{i}" for i in range(40)]
    sink.write(snap(T0, [ctx(n) for n in names]))
    slept: list[float] = []
    monkeypatch.setattr(rrdlock.time, "sleep", slept.append)
    held = [rrd_path(sink.directory, "mem", n) for n in names]
    with locked(held, "write"):
        sink.write(snap(T0 + STEP, [ctx(n) for n in names]))
    assert sink.error_count == len(names)
    assert 0 < sum(slept) <= rrdlock.POLL_BUDGET
    assert sum(slept) > rrdlock.POLL_BUDGET - max(rrdlock.WAITS)  # it did wait, up to the budget


def test_readers_wait_out_a_writer_for_a_moment(tmp_path):
    """`ctxmon graph` and `ctxmon plan` read through fetch and last: a write lock
    held for a moment costs them nothing."""
    sink = RrdSink(str(tmp_path / "rrd"), STEP)
    for k in range(3):
        sink.write(snap(T0 + k * STEP, [ctx("web")]))
    mem = rrd_path(sink.directory, "mem", "web")
    with locked(mem, "write", release_after=0.01):
        got = fetch(mem, T0 - STEP, T0 + 2 * STEP)
    assert got.rows
    with locked(mem, "write", release_after=0.01):
        assert rrd.last(mem) == T0 + 2 * STEP
    with locked(mem, "write"):  # held for good: the reader fails, as before
        with pytest.raises(librrd.OperationalError, match=rrdlock.LOCKED):
            fetch(mem, T0 - STEP, T0 + 2 * STEP)
