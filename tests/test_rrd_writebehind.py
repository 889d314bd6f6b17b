"""[rrd] write_behind: direct updates held in memory and written several per librrd
call, on real RRD files read back with the rrdtool command; and a real daemon killed
with -9 loses at most the window."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import sys
import time

import pytest
import rrdtool as librrd
from daemonproc import POLLED, free_port
from factories import rrdtool_cli
from test_rrd import T0, ctx, on_disk_last_update, snap, warnings_about, chattr, FakeClock

from ctxmon.config import ConfigError, load_config
from exporters import rrd
from exporters.rrd import RrdSink, rrd_path

STEP = 60
WINDOW = 300  # five polls

pytestmark = pytest.mark.skipif(shutil.which("rrdtool") is None, reason="rrdtool command not installed")


def fetch_rows(path: str, start: int, end: int) -> dict[int, list[float]]:
    """{row time: values} of the AVERAGE archive at the step, start < t <= end."""
    out = rrdtool_cli("fetch", path, "AVERAGE", "-r", str(STEP), "-s", str(start), "-e", str(end)).stdout
    rows = {}
    for line in out.splitlines():
        ts, sep, vals = line.partition(":")
        if sep and ts.strip().isdigit():
            rows[int(ts)] = [float(v) for v in vals.split()]
    return rows


@pytest.fixture
def calls(monkeypatch):
    """{path: number of librrd update calls}."""
    counted: dict[str, int] = {}
    real = librrd.update

    def update(path, *args):
        counted[path] = counted.get(path, 0) + 1
        return real(path, *args)

    monkeypatch.setattr(rrd.rrdtool, "update", update)
    return counted


def test_updates_wait_at_most_the_window_and_every_step_reaches_the_file(tmp_path, calls):
    sink = RrdSink(str(tmp_path / "rrd"), STEP, write_behind=WINDOW)
    names = [f"c{i}" for i in range(12)]
    lags = []
    polls = 23
    for k in range(polls):
        ts = T0 + k * STEP
        sink.write(snap(ts, [ctx(n, processes=k + 1, cpu_user=10.0 * k) for n in names]))
        for n in names:
            lag = ts - on_disk_last_update(rrd_path(sink.directory, "tasks", n))
            assert lag < WINDOW, (n, k, lag)
            lags.append(lag)
    assert max(lags) >= STEP  # updates were held
    # Files take turns: not all of them are written at one poll.
    assert len(set(lags[-len(names):])) > 1
    # One librrd call per file per window, not per poll (the first poll creates).
    for n in names:
        assert calls[rrd_path(sink.directory, "tasks", n)] <= math.ceil(polls / (WINDOW // STEP)) + 1
    assert sink.pending_count > 0
    sink.close()  # as at SIGTERM
    assert sink.pending_count == 0
    end = T0 + (polls - 1) * STEP
    for n in names:
        tasks = rrd_path(sink.directory, "tasks", n)
        assert on_disk_last_update(tasks) == end
        rows = fetch_rows(tasks, T0, end)
        # Every step, with the value of its poll (GAUGE on step boundaries: exact).
        assert [rows[T0 + k * STEP][0] for k in range(1, polls)] == list(range(2, polls + 1))
        cpu = fetch_rows(rrd_path(sink.directory, "cpu", n), T0, end)
        assert all(cpu[T0 + k * STEP][0] == pytest.approx(10.0 * 1e6 / STEP)
                   for k in range(2, polls))
    assert sink.error_count == 0


def test_flush_writes_what_is_held_at_once(tmp_path):
    sink = RrdSink(str(tmp_path / "rrd"), STEP, write_behind=WINDOW)
    for k in range(3):
        sink.write(snap(T0 + k * STEP, [ctx("a", processes=k + 1)]))
    assert sink.flush() is True
    tasks = rrd_path(sink.directory, "tasks", "a")
    assert on_disk_last_update(tasks) == T0 + 2 * STEP
    assert fetch_rows(tasks, T0, T0 + 2 * STEP)[T0 + 2 * STEP][0] == 3


def test_a_fault_of_one_file_loses_only_its_own_updates(tmp_path, caplog):
    sink = RrdSink(str(tmp_path / "rrd"), STEP, write_behind=WINDOW)
    sink.write(snap(T0, [ctx("a"), ctx("b")]))
    sink.flush()
    locked = rrd_path(sink.directory, "cpu", "a")
    chattr("+i", locked)
    try:
        for k in range(1, 4):
            sink.write(snap(T0 + k * STEP, [ctx("a"), ctx("b")]))
        sink.flush()
        assert sink.error_count == 3  # a's cpu: three held updates, counted
        assert len(warnings_about(caplog, locked)) == 1
        for other in (rrd_path(sink.directory, "mem", "a"), rrd_path(sink.directory, "cpu", "b")):
            assert on_disk_last_update(other) == T0 + 3 * STEP
    finally:
        chattr("-i", locked)
    sink.write(snap(T0 + 4 * STEP, [ctx("a"), ctx("b")]))
    sink.flush()
    assert sink.error_count == 3
    assert on_disk_last_update(locked) == T0 + 4 * STEP


def test_held_updates_of_a_departed_context_are_written_before_it_is_archived(tmp_path):
    clock = FakeClock(T0)
    directory = str(tmp_path / "rrd")
    sink = RrdSink(directory, STEP, write_behind=WINDOW, retention_seconds=60, clock=clock)
    for k in range(3):
        clock.now = T0 + k * STEP
        sink.write(snap(clock.now, [ctx("stays"), ctx("gone", processes=k + 1)]))
    later = T0 + 2 * 3600  # next hourly look: "gone" is past retention
    clock.now = later
    sink.write(snap(later, [ctx("stays")]))
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(T0 + 2 * STEP))
    archived = os.path.join(directory, "archive", f"gone-{stamp}", "tasks.rrd")
    assert on_disk_last_update(archived) == T0 + 2 * STEP
    assert fetch_rows(archived, T0, T0 + 2 * STEP)[T0 + 2 * STEP][0] == 3
    assert sink.error_count == 0


def test_write_behind_config_key_is_range_checked(tmp_path):
    def load(value: str):
        path = tmp_path / "c.toml"
        path.write_text(f'[rrd]\ndir = "rrd"\nstep = "60s"\nwrite_behind = {value}\n')
        return load_config(path, check_rrd_files=False)

    assert load('"60s"').rrd.write_behind == 60
    assert load('"0"').rrd.write_behind == 0
    for bad in ('"2h"', '"1.5s"', '"-1s"', "true", '"soon"'):
        with pytest.raises(ConfigError) as e:
            load(bad)
        assert "write_behind" in str(e.value)
    with pytest.raises(ValueError):
        RrdSink(str(tmp_path / "x"), STEP, write_behind=7200)


# ------------------------------------------------------------------ a real daemon


def _config(tmp_path, rrd_dir: str, window: int) -> str:
    path = tmp_path / "ctxmon.toml"
    path.write_text(f"""
[collector]
interval = "1s"
source = "cgroup"

[rrd]
dir = "{rrd_dir}"
step = "1s"
write_behind = "{window}s"

[exporter]
listen = "127.0.0.1:{free_port()}"

[graphs]
enabled = false
""")
    return str(path)


def test_daemon_killed_with_9_loses_at_most_the_window(tmp_path, cgroup_factory, daemons):
    window = 3
    rrd_dir = str(tmp_path / "rrd")
    cfg = _config(tmp_path, rrd_dir, window)
    cg = cgroup_factory()
    name = os.path.basename(cg.rel)
    cg.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    tasks = rrd_path(rrd_dir, "tasks", context=name)

    d = daemons(cfg, tmp_path / "a.log")
    d.wait_for_log(f"context appeared: {name}")
    d.wait_for_log(POLLED, count=5 + window)
    assert d.stop() == 0, d.text()
    last = on_disk_last_update(tasks)
    assert last >= last_poll_time(d.text()), d.text()  # SIGTERM wrote what was held
    out = rrdtool_cli("fetch", tasks, "AVERAGE", "-r", "1", "-s", str(last - 2 * window),
                      "-e", str(last)).stdout
    rows = [line.split(":") for line in out.splitlines() if ":" in line]
    known = [float(v.split()[0]) for t, v in rows if int(t) <= last and "nan" not in v]
    # (A poll slower than the 2 s heartbeat on a busy host leaves a gap either way.)
    assert len(known) >= window and all(v == 1 for v in known), out

    d = daemons(cfg, tmp_path / "b.log")
    d.wait_for_log(POLLED, count=5 + window)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    lost = last_poll_time(d.text()) - on_disk_last_update(tasks)
    assert -1 <= lost <= window, (lost, d.text()[-2000:])


_POLL_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) DEBUG ctxmon\.daemon: "
                        r"poll \d+: .*?, (\d+) ms \(sample", re.M)


def last_poll_time(log: str) -> int:
    """The snapshot time of the last poll the log shows: its end, less its duration
    (the log's times are local times, as logging writes them)."""
    day, ms, took = _POLL_LINE.findall(log)[-1]
    end = time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    return int(end - int(took) / 1000)
