"""Faults a running `ctxmon run` survives, each ending with the daemon running and data
flowing again: kill -9 mid-write and restart, rrdcached killed and restarted, disk full
and freed, /proc/virtual files vanishing and coming back truncated mid-read, 100
SIGHUP reloads alternating good and bad files. A clock stepped back and forward is
played on the daemon's chain in-process (sampler -> RRD -> exporter) with an injected
clock, since the real clock cannot be stepped here.

Single faults of one part are tested in the unit tests (tests/test_rrd.py and
tests/test_prometheus.py); here it is the whole daemon, a real child process on a
1-second interval, checked from outside: its log, /metrics and the rrdtool command.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
import soakchecks
from daemonproc import POLLED, Daemon, free_port
from factories import rrdtool_cli
from prometheus_client.parser import text_string_to_metric_families

from collector import build_source
from collector.sampler import Sampler
from exporters.prometheus import SelfMetrics, SnapshotCollector, build_registry
from exporters.rrd import RrdSink, list_rrd_files, rrd_path


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SLEEP = ["sleep", "600"]

pytestmark = pytest.mark.skipif(shutil.which("rrdtool") is None, reason="rrdtool not installed")
pytestmark = [pytestmark, pytest.mark.live, pytest.mark.slow]


# --------------------------------------------------------------------------- helpers


def log_lines(d: Daemon, needle: str) -> list[str]:
    return [line for line in d.text().splitlines() if needle in line]


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) ")


def no_traceback(d: Daemon, expected_errors: tuple[str, ...] = ()) -> None:
    """No error logged (but those `expected_errors` name) and no traceback but at debug
    level (where -v shows, e.g., a client that went away mid-response)."""
    level = None
    for line in d.text().splitlines():
        m = _RECORD.match(line)
        if m:
            level = m.group(1)
            if level in ("ERROR", "CRITICAL"):
                assert any(e in line for e in expected_errors), line
        elif line.startswith("Traceback"):
            assert level == "DEBUG", f"traceback after a {level} line:\n{d.text()[-3000:]}"


def try_scrape(port: int, headers: dict | None = None) -> str | None:
    try:
        return scrape(port, headers)
    except OSError:
        return None


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a TOML basic string


def write_config(path, rrd_dir, *, port: int, source: str = "cgroup", proc_root: str | None = None,
                 interval: str = "1s", step: str = "1s", daemon: str = "",
                 rules: tuple[tuple[str, str, str], ...] = (), exporter: str = "",
                 graphs_dir: str | None = None, graphs_interval: str = "1h") -> str:
    """A daemon config; `rules` are (glob|regex, pattern, name template)."""
    lines = ["[collector]", f"interval = {toml_str(interval)}", f"source = {toml_str(source)}"]
    if proc_root:
        lines.append(f"proc_root = {toml_str(proc_root)}")
    lines += ["", "[rrd]", f"dir = {toml_str(str(rrd_dir))}", f"step = {toml_str(step)}",
              f"daemon = {toml_str(daemon)}", "",
              "[exporter]", f'listen = "127.0.0.1:{port}"', exporter, "", "[graphs]"]
    if graphs_dir:
        lines += ["enabled = true", f"dir = {toml_str(str(graphs_dir))}",
                  f"interval = {toml_str(graphs_interval)}"]
    else:
        lines.append("enabled = false")
    for kind, pattern, name in rules:
        lines += ["", "[[collector.rule]]", f"{kind} = {toml_str(pattern)}",
                  f"name = {toml_str(name)}"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def scrape(port: int, headers: dict | None = None) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode("utf-8")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(found: dict, name: str, **labels) -> float | None:
    return found.get((name, frozenset(labels.items())))


def context_labels(found: dict) -> set[str]:
    return {dict(k[1])["context"] for k in found if k[0] == "ctxmon_context_info"}


def wait_until(cond: Callable[[], object], what: str, limit: float = 20.0, daemon=None):
    deadline = time.monotonic() + limit
    while True:
        got = cond()
        if got:
            return got
        if daemon is not None:
            assert daemon.proc.poll() is None, f"daemon exited while waiting for {what}:\n{daemon.text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (
            f"\n{daemon.text()[-3000:]}" if daemon is not None else "")
        time.sleep(0.1)


def rrdtool_cmd(*args: str) -> subprocess.CompletedProcess:
    return rrdtool_cli(*args, check=False)


def last_update(path: str, daemon: str | None = None) -> int:
    args = ["last", path] + (["--daemon", daemon] if daemon else [])
    r = rrdtool_cmd(*args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def known_rows(path: str, start: int, end: int, daemon: str | None = None) -> list[bool]:
    """For each 1-s row ending in (start, end]: whether all its values are known."""
    args = ["fetch", path, "AVERAGE", "-r", "1", "-s", str(start), "-e", str(end)]
    r = rrdtool_cmd(*(args + (["--daemon", daemon] if daemon else [])))
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.splitlines():
        t, sep, vals = line.partition(":")
        if sep and t.strip().isdigit() and start < int(t) <= end:
            out.append("nan" not in vals.lower())
    return out


def last_poll(port: int) -> float | None:
    text = try_scrape(port)
    return None if text is None else value(samples(text), "ctxmon_last_poll_timestamp_seconds")


def assert_flowing(d, port: int, path: str | None = None, daemon: str | None = None,
                   expected_errors: tuple[str, ...] = ()) -> None:
    """The daemon runs, /metrics shows two fresh polls, and `path` gets new updates."""
    assert d.proc.poll() is None, d.text()
    first = wait_until(lambda: last_poll(port), "a poll in /metrics", daemon=d)
    seen = {first}
    wait_until(lambda: seen.add(last_poll(port) or first) or len(seen) >= 3,
               "two more polls in /metrics", daemon=d)
    if path is not None:
        before = last_update(path, daemon)
        wait_until(lambda: last_update(path, daemon) >= before + 2, f"{path} to advance", daemon=d)
    no_traceback(d, expected_errors)


def steady_fds(pid: int) -> int:
    return soakchecks.steady_fds(soakchecks.fd_census(pid))


# ----------------------------------------------------------------------- kill -9


def _kill_while_writing(pid: int, rrd_dir: str, limit: float = 20.0) -> str | None:
    """SIGKILL the daemon as soon as it holds an RRD file open (mid-poll, mid-write);
    the file it had open, or None if it was never caught writing within `limit`."""
    fd_dir = f"/proc/{pid}/fd"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith(rrd_dir) and target.endswith(".rrd"):
                os.kill(pid, signal.SIGKILL)
                return target
    os.kill(pid, signal.SIGKILL)
    return None


def test_kill_9_mid_write_loses_at_most_the_poll_in_progress(tmp_path, cgroup_factory, daemons):
    rrd_dir = os.path.realpath(tmp_path / "rrd")
    port = free_port()
    cfg = write_config(tmp_path / "ctxmon.toml", rrd_dir, port=port)
    names = []
    for _ in range(3):  # a few contexts: more files, a longer write per poll
        cg = cgroup_factory()
        cg.spawn(SLEEP)
        names.append(os.path.basename(cg.rel))
    ifaces = [line.partition(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
    # Files that every poll updates: ours, the host's, the host's interfaces.
    paths = [rrd_path(rrd_dir, kind, context=n) for n in names + ["host"] for kind in ("cpu", "mem", "tasks")]
    paths += [rrd_path(rrd_dir, "host-if", interface=i) for i in ifaces]

    d = daemons(cfg, tmp_path / "daemon-0.log")
    d.wait_for_log(POLLED, count=7)  # the seconds looked at below are after its start
    caught = []
    for round_ in range(1, 3):
        caught.append(_kill_while_writing(d.proc.pid, rrd_dir))
        d.proc.wait()
        d.log.close()
        # Every file the daemon made is a sound RRD file: info and fetch work.
        for rf in list_rrd_files(rrd_dir):
            info = rrdtool_cmd("info", rf.path)
            assert info.returncode == 0, (rf.path, info.stderr)
            last = last_update(rf.path)
            fetched = rrdtool_cmd("fetch", rf.path, "AVERAGE", "-r", "1", "-s", str(last - 10), "-e", str(last))
            assert fetched.returncode == 0, (rf.path, fetched.stderr)
        # Only the poll in progress may be missing, in some files: their last updates
        # are at most one step apart, and the seconds before it are all there. (The
        # file being written at the kill may hold the new last-update time without
        # its row: that is the one step the issue allows to be lost.)
        lasts = {p: last_update(p) for p in paths}
        assert max(lasts.values()) - min(lasts.values()) <= 1, lasts
        for p in paths:
            rows = known_rows(p, min(lasts.values()) - 5, min(lasts.values()) - 1)
            assert rows and all(rows), (p, rows)

        d = daemons(cfg, tmp_path / f"daemon-{round_}.log")
        d.wait_for_log(POLLED, count=7)
        assert not log_lines(d, "left alone")
        no_traceback(d)
        for p in paths:
            assert last_update(p) > lasts[p]  # the restarted daemon writes on
    assert any(caught), "the daemon was never caught with an RRD file open"
    assert_flowing(d, port, paths[0])


# -------------------------------------------------------------------- rrdcached


def test_rrdcached_killed_and_restarted(tmp_path, cgroup_factory, daemons, rrdcached):
    cached = rrdcached
    base = cached.base
    rrd_dir = os.path.join(base, "rrd")
    port = free_port()
    cfg = write_config(tmp_path / "ctxmon.toml", rrd_dir, port=port, daemon=cached.addr)
    cg = cgroup_factory()
    cg.spawn(SLEEP)
    tasks = rrd_path(rrd_dir, "tasks", context=os.path.basename(cg.rel))
    d = daemons(cfg, tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=3)
    wait_until(lambda: os.path.exists(tasks), "the RRD file", daemon=d)

    cached.stop(signal.SIGKILL)
    polls = d.text().count(POLLED)
    d.wait_for_log(POLLED, count=polls + 3)  # polling goes on without it
    d.wait_for_log("RRD rrdcached:")  # logged once, not per poll
    errors = value(samples(scrape(port)), "ctxmon_rrd_write_errors")
    assert errors and errors >= 3, errors  # the lost updates are counted

    cached.start()
    back = int(time.time())
    wait_until(lambda: last_update(tasks, cached.addr) > back + 3,
               "updates through the restarted rrdcached", daemon=d)
    log = d.text()
    assert len(log_lines(d, "RRD rrdcached:")) == 2, log  # down once, recovered once
    assert "RRD rrdcached: recovered" in log
    # From the first poll after it came back, nothing is missing. (What rrdcached
    # had acknowledged but not yet written to its journal died with it: its
    # journal is buffered.)
    last = last_update(tasks, cached.addr)
    rows = known_rows(tasks, back + 1, last, cached.addr)
    assert rows and all(rows), rows
    assert_flowing(d, port, tasks, cached.addr)
    assert d.stop() == 0



# -------------------------------------------------------------------- disk full


@pytest.fixture
def small_tmpfs(tmp_path):
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mountpoint)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    yield str(mountpoint)
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: str) -> str:
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
        try:  # the last few pages
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def vserver_tree(tmp_path) -> str:
    """A copy of the vs23 fixture tree (a VServer host: contexts 0, 1, 40001, 40002);
    its proc root. Unlike the live host's cgroups, nobody else adds contexts to it."""
    tree = tmp_path / "vs23"
    shutil.copytree(os.path.join(FIXTURES, "vs23"), tree, symlinks=True)
    return str(tree / "proc")


def add_guest(proc: str, xid: int, pid: int) -> str:
    """Start a guest in a fixture tree: its /proc/virtual/<xid> and one process; its label."""
    shutil.copytree(os.path.join(proc, "virtual", "40002"), os.path.join(proc, "virtual", str(xid)))
    os.makedirs(os.path.join(proc, str(pid)))
    for name in ("stat", "status"):
        with open(os.path.join(proc, "2310", name)) as f:
            text = f.read()
        if name == "stat":
            text = f"{pid} " + text.split(" ", 1)[1]
        else:
            text = re.sub(r"^VxID:\s*\d+", f"VxID: {xid}", text, flags=re.MULTILINE)
        with open(os.path.join(proc, str(pid), name), "w") as f:
            f.write(text)
    return f"xid-{xid}"  # no config dir: no name


def test_disk_full_then_freed(tmp_path, small_tmpfs, daemons):
    rrd_dir = os.path.join(small_tmpfs, "rrd")
    proc = vserver_tree(tmp_path)
    port = free_port()
    # A 10 s step keeps the files small (1-4 MB) while the daemon polls every second.
    cfg = write_config(tmp_path / "ctxmon.toml", rrd_dir, port=port, step="10s",
                       source="vserver", proc_root=proc)
    old_tasks = rrd_path(rrd_dir, "tasks", context="customer-portal-staging-01")
    d = daemons(cfg, tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=2)
    wait_until(lambda: os.path.exists(old_tasks), "the first files", daemon=d)

    filler = fill(small_tmpfs)
    new_name = add_guest(proc, 40003, 4000)
    new_tasks = rrd_path(rrd_dir, "tasks", context=new_name)
    d.wait_for_log(f"context appeared: {new_name}")
    d.wait_for_log("no space left")
    polls = d.text().count(POLLED)
    d.wait_for_log(POLLED, count=polls + 2)
    assert value(samples(scrape(port)), "ctxmon_rrd_write_errors") == 3  # the new guest's files
    assert len(log_lines(d, "no space left")) == 1  # logged when it starts, not every poll
    # The files that exist go on being written while the disk is full.
    before = last_update(old_tasks)
    wait_until(lambda: last_update(old_tasks) >= before + 2, "existing files to advance", daemon=d)

    os.unlink(filler)
    wait_until(lambda: os.path.exists(new_tasks) and last_update(new_tasks) > 0,
               "the new guest's files once there is room", daemon=d)
    wait_until(lambda: value(samples(scrape(port)), "ctxmon_rrd_write_errors") == 0,
               "a poll without write errors", daemon=d)
    assert log_lines(d, "no space left on device: cleared")
    assert not log_lines(d, "left alone")  # no half-made file stands in the way
    assert_flowing(d, port, new_tasks)
    assert d.stop() == 0


# -------------------------------------------------------------------- clock steps


class SteppingClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_clock_stepped_back_and_forward_an_hour(tmp_path, cgroup_factory, caplog):
    """The daemon's chain with an injected clock: sampler -> RRD sink -> exporter (with
    a cap, so that `other`'s counters are kept across the steps too)."""
    caplog.set_level(logging.INFO)
    busy = cgroup_factory()
    busy.spawn([sys.executable, "-c", "while True: pass"])
    idle = cgroup_factory()
    idle.spawn(SLEEP)
    step = 60
    t0 = (int(time.time()) - 6 * 3600) // step * step
    clock = SteppingClock(t0)
    sampler = Sampler(build_source("cgroup"), clock=clock)
    sink = RrdSink(str(tmp_path / "rrd"), step, clock=clock)
    latest = {}
    collector = SnapshotCollector(lambda: latest.get("snap"),
                                  lambda: SelfMetrics(last_poll_timestamp_seconds=clock.now),
                                  max_contexts=1)
    registry = build_registry(collector)
    tasks = rrd_path(sink.directory, "tasks", context="host")
    other_cpu: list[float] = []
    polled_at: list[float] = []

    def poll(n: int) -> None:
        for _ in range(n):
            snap = sampler.sample()
            sink.write(snap)
            latest["snap"] = snap
            found = samples(b"".join(registry.exposition()).decode())
            polled_at.append(value(found, "ctxmon_last_poll_timestamp_seconds"))
            other_cpu.append(sum(v for (name, labels), v in found.items()
                                 if name == "ctxmon_context_cpu_seconds_total"
                                 and ("context", "other") in labels))
            clock.now += step
            time.sleep(0.05)  # let the busy context burn a little CPU

    try:
        poll(5)
        assert last_update(tasks) == t0 + 4 * step
        clock.now -= 3600  # stepped back an hour
        poll(5)
        assert last_update(tasks) == t0 + 4 * step  # nothing written "before" the file
        clock.now += 3600  # and forward again
        poll(3)
        assert last_update(tasks) == t0 + 12 * step  # writing again, in order
        clock.now += 3600  # and forward an hour more: a gap, then on
        poll(3)
        end = t0 + 15 * step + 3600
        assert last_update(tasks) == end
        rows = known_rows(tasks, end - 2 * step, end)
        assert rows and all(rows), rows
    finally:
        sampler.close()
        sink.close()

    assert len(polled_at) == 16 and polled_at[5] < polled_at[4]  # served what was polled
    assert other_cpu == sorted(other_cpu), other_cpu  # no false counter reset in `other`
    assert other_cpu[-1] > 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "clock stepped back" in warnings[0].getMessage()
    assert sink.error_count == 0  # skipped on purpose, not lost to a fault


# -------------------------------------------------------- /proc/virtual vanishing


def test_proc_virtual_files_vanishing_mid_read(tmp_path, daemons):
    proc = Path(vserver_tree(tmp_path))
    rrd_dir = tmp_path / "rrd"
    port = free_port()
    cfg = write_config(tmp_path / "ctxmon.toml", rrd_dir, port=port, source="vserver",
                       proc_root=str(proc))
    d = daemons(cfg, tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=2)
    found = samples(scrape(port))
    baseline = value(found, "ctxmon_poll_errors", source="vserver")
    assert baseline == 2  # the fixture's own two malformed files (see its README)
    portal = "customer-portal-staging-01"
    assert value(found, "ctxmon_context_limit", context=portal, resource="RSS", type="hard")
    tasks = rrd_path(str(rrd_dir), "tasks", context=portal)
    originals = {p: p.read_bytes() for xid in ("40001", "40002")
                 for p in (proc / "virtual" / xid / f for f in ("limit", "sched", "cvirt"))}

    stop = threading.Event()

    def write_in_two_halves(path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            f.write(data[len(data) // 2:])

    def vandal() -> None:
        # Each phase outlasts a poll interval, so the daemon meets each one.
        phases = [
            ("flap", 2.5),  # deleted and rewritten as fast as possible
            ("truncated", 1.6),  # cut mid-line: malformed, counted
            ("missing", 1.6),  # gone, as when a context ends
            ("dir-gone", 1.6),  # the whole /proc/virtual/<xid> directory
            ("flap", 2.5),
        ]
        for phase, seconds in phases:
            end = time.monotonic() + seconds
            if phase == "truncated":
                for p, data in originals.items():
                    p.write_bytes(data[: len(data) * 2 // 3])
            elif phase == "missing":
                for p in originals:
                    p.unlink()
            elif phase == "dir-gone":
                for p, data in originals.items():
                    p.write_bytes(data)
                (proc / "virtual" / "40002").rename(tmp_path / "40002-away")
            while time.monotonic() < end and not stop.is_set():
                if phase == "flap":
                    for p, data in originals.items():
                        try:
                            p.unlink()
                        except FileNotFoundError:
                            pass
                        write_in_two_halves(p, data)
                else:
                    time.sleep(0.05)
            if phase == "dir-gone":
                (tmp_path / "40002-away").rename(proc / "virtual" / "40002")
        for p, data in originals.items():
            p.write_bytes(data)

    polls_before = value(samples(scrape(port)), "ctxmon_polls_total")
    errors_seen = []
    t = threading.Thread(target=vandal)
    t.start()
    try:
        while t.is_alive():
            found = samples(scrape(port))
            errors_seen.append(value(found, "ctxmon_poll_errors", source="vserver"))
            time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    polls_after = value(samples(scrape(port)), "ctxmon_polls_total")
    assert polls_after - polls_before >= 6  # about 10 s of vandalism, polling on
    assert max(errors_seen) > baseline, errors_seen  # the truncated files were counted
    assert not log_lines(d, "poll failed")
    no_traceback(d)

    # Once the files are back, so are the figures, and the count is the fixture's.
    wait_until(lambda: value(samples(scrape(port)), "ctxmon_poll_errors", source="vserver") == baseline,
               "a clean poll", daemon=d)
    found = samples(scrape(port))
    assert value(found, "ctxmon_context_limit", context=portal, resource="RSS", type="hard")
    assert_flowing(d, port, tasks)
    assert d.stop() == 0


# ---------------------------------------------------------------- 100 reloads


BAD_CONFIGS = [
    lambda good: good + "\n[collector\n",  # TOML syntax
    lambda good: good.replace("[exporter]", "[exporter]\nsurprise = 1"),  # unknown key
    lambda good: good.replace('interval = "1s"', 'interval = "0.2s"'),  # below the minimum
    lambda good: good.replace('glob = ', 'regex = "(unclosed"\nglob = '),  # two patterns
    lambda good: good.replace('step = "1s"', 'step = "2s"'),  # files exist with step 1 s
    lambda good: good.replace('name = "reload-', 'name = "{nope}-'),  # bad template
    lambda good: good.replace('listen = "127.0.0.1:', 'listen = "127.0.0.1;'),
    lambda good: "\udcff".join(good.split("\n", 1)),  # not UTF-8
    lambda good: None,  # the file is missing
    lambda good: good.replace('source = "cgroup"', 'source = ["cgroup"]'),  # wrong type
]


def test_100_reloads_alternating_good_and_bad_configs(tmp_path, cgroup_factory, daemons):
    rrd_dir = tmp_path / "rrd"
    port = free_port()
    cfg_path = tmp_path / "ctxmon.toml"
    cg = cgroup_factory()
    cg.spawn(SLEEP)

    def good(k: int) -> str:
        # Each good file renames our context and changes the exporter, so that every
        # reload rebuilds the sampler and restarts the HTTP server.
        write_config(cfg_path, rrd_dir, port=port, rules=(("glob", cg.rel, f"reload-{k}"),),
                     exporter=f"max_contexts = {0 if k % 4 == 0 else 50}")
        return cfg_path.read_text()

    def reloads(d) -> int:
        text = d.text()
        return text.count("config reloaded") + text.count("reload refused")

    good(0)
    d = daemons(str(cfg_path), tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=2)
    fds_before = steady_fds(d.proc.pid)
    last_good = 0
    for k in range(1, 101):
        if k % 2 == 0:
            good(k)
            last_good = k
        else:
            bad = BAD_CONFIGS[(k // 2) % len(BAD_CONFIGS)](good(k))
            if bad is None:
                cfg_path.unlink()
            else:
                cfg_path.write_bytes(bad.encode("utf-8", "surrogateescape"))
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads(d) >= k, f"reload {k}", daemon=d)
    log = d.text()
    refusals = log_lines(d, "reload refused")
    assert len(log_lines(d, "config reloaded")) == 50 and len(refusals) == 50, log[-3000:]
    assert all(str(cfg_path) in line for line in refusals)  # each names the file

    # The last good file is in force: its name for our context, and nothing else.
    polls = d.text().count(POLLED)
    d.wait_for_log(POLLED, count=polls + 2)
    labels = context_labels(samples(scrape(port)))
    assert f"reload-{last_good}" in labels
    assert not {x for x in labels if x.startswith("reload-")} - {f"reload-{last_good}"}
    # Fifty samplers and servers later, no fd was left behind.
    assert steady_fds(d.proc.pid) == fds_before
    assert_flowing(d, port, rrd_path(str(rrd_dir), "tasks", context=f"reload-{last_good}"),
                   expected_errors=("reload refused",))
    assert d.stop() == 0
