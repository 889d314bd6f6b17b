"""The soak of benchmarks/soak.py in its short version: 300 polls of the real chain
(cgroup sampler -> RRD files -> /metrics) on a fake clock, with cgroups and processes
coming and going and 10 scraper processes hammering /metrics. The soak runs as the
program an admin runs (tests never import benchmarks); its figures come as JSON.

Also checks that the soak's own checks can fail: a hole in an RRD file and a stale
series are caught.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import soakchecks as soak
from factories import wait_until

import cgroups
from collector.snapshot import ContextSample, Snapshot
from exporters.rrd import RrdSink, rrd_path

SOAK = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "soak.py")
PREFIX = "ctxmon-soak-"  # benchmarks/soak.py's cgroups


def run_soak(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """benchmarks/soak.py ARGS; past `timeout` it gets SIGTERM (its cleanup runs:
    scrapers, cgroups), and SIGKILL only if that takes more than 30 s."""
    p = subprocess.Popen([sys.executable, SOAK, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.terminate()
        try:
            p.communicate(timeout=30)
        finally:
            p.kill()
            p.wait()
        raise
    finally:
        if p.poll() is None:  # pytest interrupted us
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def scrapers_of(pid: int) -> list[int]:
    """The soak's scraper processes: its children running `python -S -c` (live, not
    zombies)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != b"Z" and argv[1:3] == [b"-S", b"-c"]:
            out.append(int(name))
    return out


def alive(pid: int) -> bool:
    """A scraper still running: there, not a zombie, and still a `python -S -c`."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return state != b"Z" and argv[1:3] == [b"-S", b"-c"]


def _ctx(name: str, k: int) -> ContextSample:
    return ContextSample(
        key=name, name=name, ctx_id="1", source="cgroup", processes=1, threads=1,
        vsz_bytes=1 << 20, rss_bytes=1 << 19, cpu_user_seconds=float(k),
        cpu_system_seconds=k / 2, cpu_accounting="kernel", live_user_seconds=0.0,
        live_system_seconds=0.0, start_time=None, uptime_seconds=None,
        first_process_start=None)


def _snap(ts: int, *contexts: ContextSample) -> Snapshot:
    return Snapshot(timestamp=ts, duration_seconds=0.0, source="cgroup", contexts=contexts,
                    host_interfaces=(), host_uptime_seconds=1.0)


def test_the_rrd_check_finds_a_hole_while_the_context_ran(tmp_path):
    t0 = 1_700_000_000 // 3600 * 3600
    sink = RrdSink(str(tmp_path), soak.STEP)
    # Three polls missed: longer than the heartbeat (two steps), so rows are unknown.
    polls = [t0 + k * soak.STEP for k in range(40) if not 25 <= k <= 27]
    for k, ts in enumerate(polls):
        sink.write(_snap(ts, _ctx("a", k)))
    end = polls[-1]
    path = rrd_path(str(tmp_path), "cpu", context="a")
    problem = soak.check_rrd(path, t0, end, end, None)
    assert problem is not None and "unknown" in problem
    # Before the hole the file is complete, and the check says so.
    assert soak.check_rrd(path, t0, t0 + 20 * soak.STEP, end, None) is None


def test_the_series_check_finds_a_departed_context():
    snap = _snap(1000, _ctx("a", 1))
    text = ('ctxmon_context_info{context="a",id="a",source="cgroup"} 1.0\n'
            'ctxmon_context_info{context="gone",id="gone",source="cgroup"} 1.0\n'
            "ctxmon_contexts 1.0\n")
    problems = soak.check_series(text, snap, departed={"gone"})
    assert any("departed" in p for p in problems), problems
    fine = 'ctxmon_context_info{context="a",id="a",source="cgroup"} 1.0\nctxmon_contexts 1.0\n'
    assert soak.check_series(fine, snap, departed={"gone"}) == []


@pytest.mark.live
@pytest.mark.slow
def test_300_polls_with_churn_and_10_scrapers_hold(tmp_path):
    reason = cgroups.unavailable_reason()
    if reason:
        pytest.skip(reason)
    run = run_soak(["--polls", "300", "--warmup", "100", "--scrapers", "10",
                    "--churn-every", "10", "--live", "8", "--workdir", str(tmp_path), "--json"],
                   timeout=600)
    out = run.stdout
    print(out, run.stderr[-2000:])
    report = out[:out.index("\n{")]
    r = json.loads(out[len(report):out.rindex("}") + 1])
    assert r["polls"] == 300 and r["poll_failures"] == 0
    assert r["contexts_churned"] >= 20  # 29 made, 8 still up at the end
    assert r["scrapes_served"] > 100 and r["scrape_errors"] == 0
    assert r["rss_growth"] < 5 << 20, report
    assert r["steady_fds_end"] == r["steady_fds_warm"], (r["fds_warm"], r["fds_end"])
    # One held stat file per live process, never one per process ever seen.
    assert r["fds_end"].get("stat", 0) <= r["processes_end"] + 20, (r["fds_end"],
                                                                    r["processes_end"])
    assert r["host_forks"] > r["processes_end"]  # more processes came and went than are up
    assert r["connections_left"] == 0
    assert r["stale_checks"] == 30 and r["stale_series"] == []
    # host, the two steady contexts, and 29 churned ones: three files each.
    assert r["rrd_files_checked"] >= 3 * 32
    assert r["rrd_unknown"] == [] and r["rrd_write_errors"] == 0
    assert r["problems"] == [] and run.returncode == 0, report


def _remove_soak_cgroups(root: str, keep: set[str]) -> list[str]:
    """Kill and remove the soak cgroups not in `keep` (a SIGKILLed soak's); their names."""
    left = sorted(d for d in os.listdir(root) if d.startswith(PREFIX) and d not in keep)
    for d in left:
        cgroups.LiveCgroup(root, d).kill_all()
        cgroups.rmdir_cgroup(os.path.join(root, d))
    return left


@pytest.mark.live
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_scraper_outlives_an_interrupted_soak(tmp_path, how):
    """A soak stopped early (a test's time limit: SIGTERM, or SIGKILL after it) leaves
    no scraper running: on SIGTERM its cleanup stops them and removes its cgroups; a
    SIGKILLed soak runs no cleanup, and its scrapers end by themselves."""
    reason = cgroups.unavailable_reason()
    if reason:
        pytest.skip(reason)
    root = cgroups.v2_mount()
    before = {d for d in os.listdir(root) if d.startswith(PREFIX)}
    p = subprocess.Popen([sys.executable, SOAK, "--polls", "1000000", "--warmup", "100",
                          "--scrapers", "3", "--workdir", str(tmp_path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    scrapers: list[int] = []
    try:
        def three() -> list[int] | None:
            found = scrapers_of(p.pid)
            return found if len(found) == 3 else None

        scrapers = wait_until(three, "the soak's 3 scrapers", limit=60)
        time.sleep(0.5)  # some polls and scrapes under way
        p.send_signal(getattr(signal, how))
        assert p.wait(30) == (128 + signal.SIGTERM if how == "SIGTERM" else -signal.SIGKILL)
        wait_until(lambda: not any(alive(pid) for pid in scrapers), "the scrapers to end",
                   limit=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pid in scrapers:  # only if the test failed: leave nothing behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        left = _remove_soak_cgroups(root, before)
    if how == "SIGTERM":
        assert left == []  # the soak's own cleanup removed its cgroups
    else:
        assert left  # the check above did have something to clean up
