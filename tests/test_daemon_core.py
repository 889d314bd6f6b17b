"""The daemon's core under faults: a stopped rrdcached, a stuck poll, SIGTERM during
it, a busy port at SIGHUP. Real `ctxmon run` processes (or the real Daemon in a child
process, with a sink that hangs), real rrdcached, real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from daemonproc import POLLED, free_port
from rrdcached import sigstop
from test_faults import add_guest, vserver_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scrape(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.read().decode()


def value(text: str, series: str) -> float | None:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def wait_until(predicate, what: str, limit: float = 20.0):
    deadline = time.monotonic() + limit
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def stop_within(proc: subprocess.Popen, limit: float) -> tuple[int, float]:
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=limit + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running {limit + 5:g} s after SIGTERM")
    return code, time.monotonic() - t


def fixture_config(path, rrd_dir, proc_root: str | None = None, rrd: str = "") -> tuple[str, int]:
    """A config reading a recorded VServer tree (vs20's unless `proc_root`): a few
    contexts, whatever the host runs."""
    port = free_port()
    tree = os.path.join(ROOT, "tests", "fixtures", "vs20")
    proc_root = proc_root or f"{tree}/proc"
    path.write_text(textwrap.dedent(f"""
        [collector]
        interval = "1s"
        source = "vserver"
        proc_root = "{proc_root}"
        [rrd]
        dir = "{rrd_dir}"
        {rrd}
        [exporter]
        listen = "127.0.0.1:{port}"
        [graphs]
        enabled = false
    """))
    return str(path), port


# ------------------------------------------------------------ rrdcached stopped


def test_stopped_rrdcached_and_a_new_context_never_hang_the_poll(tmp_path, daemons, rrdcached):
    """Issue 11.4: with rrdcached SIGSTOPped and a new context appearing, librrd's
    client hung the poll for good, /metrics served the frozen snapshot as fresh and
    SIGTERM waited on it. Now polls go on (their RRD points counted as lost). A copy
    of a recorded VServer tree is the host, so that only the test adds contexts."""
    proc = vserver_tree(tmp_path)
    rrd_dir = os.path.join(rrdcached.base, "rrd")
    cfg, port = fixture_config(tmp_path / "ctxmon.toml", rrd_dir, proc_root=proc,
                               rrd=f'daemon = "{rrdcached.addr}"')
    d = daemons(cfg, tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=2)
    sigstop(rrdcached.proc)
    try:
        stopped_at = time.monotonic()
        before = scrape(port)
        polls0 = value(before, "ctxmon_polls_total")
        stuck0 = value(before, "ctxmon_stuck_polls_total")
        name = add_guest(proc, 40777, 9777)
        d.wait_for_log(f"context appeared: {name}")
        # Polls keep ending: each waits one rrdcached deadline (2 s at a 1 s step).
        text = wait_until(lambda: (lambda t: value(t, "ctxmon_polls_total") >= polls0 + 3 and t)(
            scrape(port)), "three polls with rrdcached stopped", limit=30)
        assert value(text, "ctxmon_poll_stuck") == 0
        assert value(text, "ctxmon_stuck_polls_total") == stuck0
        assert value(text, "ctxmon_snapshot_age_seconds") < 10
        assert value(text, "ctxmon_rrd_write_errors") > 0  # the lost points, counted
        assert f'context="{name}"' in text  # served: the snapshot is new
        duration = value(text, "ctxmon_poll_duration_seconds")
        assert 1.5 < duration < 6, duration
        print(f"\npoll with rrdcached stopped: {duration:.2f} s; "
              f"{value(text, 'ctxmon_polls_total') - polls0:.0f} polls in "
              f"{time.monotonic() - stopped_at:.1f} s")
        log = d.text()
        assert log.count("did not answer within 2 s") == 1, log  # logged once, not per poll
        # SIGTERM while rrdcached is still stopped: out within 10 s.
        code, took = stop_within(d.proc, 10)
        print(f"SIGTERM with rrdcached stopped: exited in {took:.2f} s")
        assert code == 0 and took < 10, (code, took)
    finally:
        rrdcached.proc.send_signal(signal.SIGCONT)
    assert "Traceback" not in d.text()


# ----------------------------------------------------------------- a stuck poll

HANGING_DAEMON = textwrap.dedent("""
    import sys, threading, logging
    sys.path.insert(0, {root!r})
    from ctxmon.cli import setup_logging
    from ctxmon.config import load_config
    from ctxmon.daemon import Daemon

    class Hangs:
        '''A sink whose write never returns from the third poll on.'''
        name = "hangs"
        error_count = 0
        calls = 0
        def write(self, snapshot):
            self.calls += 1
            if self.calls >= 3:
                threading.Event().wait()
        def flush(self): pass
        def close(self): pass

    setup_logging(True)
    sys.exit(Daemon(load_config(sys.argv[1]), sys.argv[1], sinks=[Hangs()]).run())
""")


def test_a_stuck_poll_is_logged_counted_shown_and_sigterm_still_exits(tmp_path):
    cfg, port = fixture_config(tmp_path / "ctxmon.toml", tmp_path / "rrd")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", HANGING_DAEMON.format(root=ROOT), cfg],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        def text() -> str:
            return log_path.read_text(errors="replace")

        wait_until(lambda: "stuck poll: running for" in text(), "the stuck poll's line", 30)
        metrics = scrape(port)
        assert value(metrics, "ctxmon_poll_stuck") == 1
        assert value(metrics, "ctxmon_stuck_polls_total") == 1
        assert value(metrics, "ctxmon_snapshot_age_seconds") >= 3
        [line] = [x for x in text().splitlines() if "stuck poll: running" in x]
        assert re.search(r"<string>:\d+ in write", line), line  # where it hangs
        time.sleep(2)
        assert value(scrape(port), "ctxmon_snapshot_age_seconds") > value(metrics, "ctxmon_snapshot_age_seconds")
        # One line of ours per skipped poll, none of APScheduler's.
        log = text()
        assert log.count("stuck poll: running") == 1
        assert log.count("skipped a poll") >= 2
        assert "maximum number of running instances" not in log and "was missed by" not in log
        code, took = stop_within(proc, 10)
        print(f"\nSIGTERM with a stuck poll: exited in {took:.2f} s")
        assert took < 10, took
        assert code == 0
        assert "stopping without the poll in progress" in text()
        assert "Traceback" not in text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------- SIGHUP to a busy port


def test_sighup_to_a_busy_port_keeps_serving_the_old_one_and_retries(tmp_path, daemons):
    cfg_path = tmp_path / "ctxmon.toml"
    fixture_config(cfg_path, tmp_path / "rrd")
    d = daemons(str(cfg_path), tmp_path / "daemon.log")
    old_port = d.port
    d.wait_for_log(POLLED, count=2)
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    new_port = busy.getsockname()[1]
    try:
        cfg_path.write_text(cfg_path.read_text().replace(f"127.0.0.1:{old_port}", f"127.0.0.1:{new_port}"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log("config reloaded")
        line = next(x for x in d.text().splitlines() if "cannot serve on" in x)
        assert f"127.0.0.1:{new_port}" in line and f"still serving on 127.0.0.1:{old_port}" in line
        polls = value(scrape(old_port), "ctxmon_polls_total")
        time.sleep(3)  # retried meanwhile, still busy: not logged again
        assert value(scrape(old_port), "ctxmon_polls_total") > polls
        assert d.text().count("cannot serve on") == 1
    finally:
        busy.close()
    d.wait_for_log(f"now serving on 127.0.0.1:{new_port}")
    assert value(scrape(new_port), "ctxmon_polls_total") > 0
    with pytest.raises(OSError):
        scrape(old_port, timeout=2)
    assert d.stop() == 0
    assert "Traceback" not in d.text()


# ------------------------------------------------------------------ check-config


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxmon.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_check_config_prints_the_expected_size_and_checks_the_disk_keys(tmp_path):
    cfg, _ = fixture_config(tmp_path / "ctxmon.toml", tmp_path / "rrd",
                            rrd='step = "1s"\nmax_bytes = "2G"\narchive_keep = "90d"')
    r = run_cli("check-config", "-c", cfg)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[1]
    # vs20: four contexts (host and three guests), each with no interface of its own
    assert "this host now: 4 contexts" in line and "max_bytes 2048 MiB" in line, line
    assert "archives for 90 days" in line
    for key, bad in (("max_bytes", '"2X"'), ("max_bytes", "-1"), ("archive_keep", '"1h"')):
        bad_cfg, _ = fixture_config(tmp_path / "bad.toml", tmp_path / "rrd", rrd=f"{key} = {bad}")
        r = run_cli("check-config", "-c", bad_cfg)
        assert r.returncode == 2 and f"[rrd] {key}" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
