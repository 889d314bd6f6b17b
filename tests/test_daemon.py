"""`ctxmon run` end to end: a real daemon polling real processes in real cgroups into
RRD files (directly and through a real rrdcached), read back with the rrdtool command."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cgroups import BURN, TOUCH_64M
from daemonproc import POLLED, Daemon, free_port, write_config  # noqa: F401 (reused)
from factories import rrdtool_cli

from collector.procfs import CLK_TCK, PAGE_SIZE
from exporters.rrd import rrd_path


def rrdtool(*args: str) -> str:
    return rrdtool_cli(*args).stdout


def info(path: str) -> dict[str, str]:
    out = {}
    for line in rrdtool("info", path).splitlines():
        k, _, v = line.partition(" = ")
        out[k] = v.strip('"')
    return out


def fetch(path: str, cf: str, start: int, end: int) -> list[tuple[int, list[float]]]:
    rows = []
    for line in rrdtool("fetch", path, cf, "-r", "1", "-s", str(start), "-e", str(end)).splitlines():
        ts, sep, vals = line.partition(":")
        if not sep or not ts.strip().isdigit():
            continue
        rows.append((int(ts), [float(v) for v in vals.split()]))
    return rows


def proc_cpu_seconds(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[21]) * PAGE_SIZE


def test_daemon_polls_real_cgroups_into_rrd_files(tmp_path, cgroup_factory, daemons):
    rrd_dir = tmp_path / "rrd"
    cfg = write_config(tmp_path / "ctxmon.toml", rrd_dir)
    cg = cgroup_factory()
    name = os.path.basename(cg.rel)  # the default *.service rule names it by its unit
    toucher = cg.spawn([sys.executable, "-c", TOUCH_64M], stdout=subprocess.PIPE)
    assert toucher.stdout.readline().strip() == b"ready"
    burner = cg.spawn([sys.executable, "-c", BURN])

    d = daemons(cfg, tmp_path / "daemon.log")
    d.wait_for_log(f"context appeared: {name}")
    t0, cpu0 = time.time(), proc_cpu_seconds(burner.pid)
    d.wait_for_log(POLLED, count=8)
    t1, cpu1 = time.time(), proc_cpu_seconds(burner.pid)
    rss = proc_rss(burner.pid) + proc_rss(toucher.pid)

    # The same poll is served to Prometheus.
    port = re.search(r'listen = "127.0.0.1:(\d+)"', open(cfg).read()).group(1)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f'ctxmon_context_processes{{context="{name}"}} 2.0' in metrics
    assert "ctxmon_polls_total" in metrics

    assert d.stop() == 0, d.text()
    assert "Traceback" not in d.text()

    cpu = rrd_path(str(rrd_dir), "cpu", context=name)
    mem = rrd_path(str(rrd_dir), "mem", context=name)
    tasks = rrd_path(str(rrd_dir), "tasks", context=name)
    for path in (cpu, mem, tasks):
        assert os.path.exists(path), sorted(os.listdir(os.path.dirname(path)))

    # The file's definition, as the rrdtool command reads it.
    i = info(cpu)
    assert i["step"] == "1"
    for ds in ("user", "system"):
        assert i[f"ds[{ds}].type"] == "DERIVE"
        assert float(i[f"ds[{ds}].min"]) == 0
        assert i[f"ds[{ds}].minimal_heartbeat"] == "2"
    m = info(mem)
    assert m["ds[rss].type"] == "GAUGE" and m["ds[vsz].type"] == "GAUGE"
    cfs = {v for k, v in i.items() if k.endswith(".cf")}
    assert cfs == {"AVERAGE", "MIN", "MAX"}

    # CPU: the burner used (cpu1 - cpu0) / (t1 - t0) of a CPU; the file says the same.
    expected = (cpu1 - cpu0) / (t1 - t0)
    last = int(rrdtool("last", cpu))
    rows = fetch(cpu, "AVERAGE", last - 8, last - 1)
    rates = [(u + s) / 1e6 for _, (u, s) in rows if not (math.isnan(u) or math.isnan(s))]
    assert len(rates) >= 3, rows
    measured = sum(rates) / len(rates)
    assert measured == pytest.approx(expected, rel=0.15), (rates, expected)

    # RSS: both processes' resident memory, within 10 %.
    rows = fetch(mem, "AVERAGE", last - 4, last - 1)
    stored = [r for _, (r, _v) in rows if not math.isnan(r)]
    assert stored and stored[-1] == pytest.approx(rss, rel=0.10)
    assert stored[-1] > 64 << 20

    rows = fetch(tasks, "MAX", last - 4, last - 1)
    assert any(p == 2 for _, (p, _t) in rows if not math.isnan(p)), rows


def test_daemon_through_rrdcached_flushes_on_sigterm(tmp_path, cgroup_factory, daemons, rrdcached):
    cached = rrdcached
    base = cached.base
    rrd_dir = os.path.join(base, "rrd")
    cfg = write_config(tmp_path / "ctxmon.toml", rrd_dir, daemon=cached.addr)
    cg = cgroup_factory()
    name = os.path.basename(cg.rel)
    cg.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    d = daemons(cfg, tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=4)
    assert d.stop() == 0, d.text()
    # rrdcached writes only every hour (-w 3600): what is on disk now came from
    # the daemon's flush at SIGTERM.
    tasks = rrd_path(rrd_dir, "tasks", context=name)
    last = int(rrdtool("last", tasks))
    rows = fetch(tasks, "AVERAGE", last - 3, last)
    assert any(p == 1 for _, (p, _t) in rows if not math.isnan(p)), rows



def test_sighup_reload_keeps_the_old_config_when_the_new_one_is_bad(tmp_path, daemons):
    rrd_dir = tmp_path / "rrd"
    cfg_path = tmp_path / "ctxmon.toml"
    write_config(cfg_path, rrd_dir)
    d = daemons(str(cfg_path), tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=2)
    good = cfg_path.read_text()

    cfg_path.write_text(good.replace('interval = "1s"', 'interval = "0.2s"'))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for_log("reload refused")
    line = next(x for x in d.text().splitlines() if "reload refused" in x)
    assert "interval" in line and str(cfg_path) in line
    polls = d.text().count(POLLED)
    d.wait_for_log(POLLED, count=polls + 2)  # still polling on the old config

    # Loads, but cannot be put in force (rrdcached cannot carry a blank): refused too.
    cfg_path.write_text(good.replace(f'dir = "{rrd_dir}"', f'dir = "{rrd_dir} x"')
                        .replace('daemon = ""', 'daemon = "unix:/nonexistent.sock"'))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for_log("reload refused", count=2)
    polls = d.text().count(POLLED)
    d.wait_for_log(POLLED, count=polls + 2)

    cfg_path.write_text(good.replace('interval = "1s"', 'interval = "2s"'))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for_log("config reloaded")
    assert d.stop() == 0
    assert "Traceback" not in d.text()


def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path):
    rrd_dir = tmp_path / "rrd"
    cfg = write_config(tmp_path / "ctxmon.toml", rrd_dir,
                       extra='[collector.surprise]\nx = 1\n')
    for cmd in ("check-config", "run"):
        r = subprocess.run([sys.executable, "-m", "ctxmon.cli", cmd, "-c", cfg],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and cfg in lines[0], r.stderr
    assert not rrd_dir.exists()


def test_shipped_config_checks_clean():
    conf = os.path.join(os.path.dirname(__file__), "..", "conf", "ctxmon.toml")
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "check-config", "-c", conf],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_daemon_renders_graphs_in_a_child_and_serves_them(tmp_path, cgroup_factory, daemons):
    graphs_dir = tmp_path / "graphs"
    cfg = write_config(tmp_path / "ctxmon.toml", tmp_path / "rrd",
                       graphs=f'enabled = true\ninterval = "2s"\ndir = "{graphs_dir}"')
    cg = cgroup_factory()
    name = os.path.basename(cg.rel)
    cg.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    d = daemons(cfg, tmp_path / "daemon.log")
    d.wait_for_log(f"context appeared: {name}")
    # The first pages wait for the day graph's first row: below a 60 s step its rows
    # are 108 s (the RRD row budget), known once half of one is covered.
    deadline = time.monotonic() + 240
    page = graphs_dir / "index.html"
    while not (page.exists() and name in page.read_text(errors="replace")):
        assert d.proc.poll() is None, d.text()
        assert time.monotonic() < deadline, d.text()
        time.sleep(0.2)
    # matplotlib stays out of the polling process: it is the child's.
    maps = open(f"/proc/{d.proc.pid}/maps").read()
    assert "matplotlib" not in maps
    port = re.search(r'listen = "127.0.0.1:(\d+)"', open(cfg).read()).group(1)
    served = urllib.request.urlopen(f"http://127.0.0.1:{port}/graphs/index.html", timeout=10)
    assert served.status == 200 and name in served.read().decode(errors="replace")
    assert d.stop() == 0, d.text()
    assert "Traceback" not in d.text()


def test_daemon_drops_root_for_the_configured_user(cgroup_factory, daemons):
    import pwd
    import tempfile

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    # pytest's tmp_path is root-only (0700): the user could not reach its data there.
    base = tempfile.mkdtemp(prefix="ctxmon-user-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        rrd_dir = os.path.join(base, "rrd")
        os.makedirs(os.path.join(rrd_dir, "host"))  # left by an earlier run as root
        cfg = write_config(Path(base) / "ctxmon.toml", rrd_dir,
                           extra='[daemon]\nuser = "nobody"\n')
        cg = cgroup_factory()
        name = os.path.basename(cg.rel)
        cg.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
        d = daemons(cfg, Path(base) / "daemon.log")
        d.wait_for_log("running as user nobody")
        d.wait_for_log(POLLED, count=3)
        uid_line = next(x for x in open(f"/proc/{d.proc.pid}/status") if x.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
        # root's processes are still sampled, and the files are the user's
        assert f'ctxmon_context_processes{{context="{name}"}} 1.0' in d.metrics()
        tasks = rrd_path(rrd_dir, "tasks", context=name)
        assert os.stat(tasks).st_uid == nobody.pw_uid
        assert os.stat(os.path.join(rrd_dir, "host")).st_uid == nobody.pw_uid
        assert d.stop() == 0, d.text()
        assert "Traceback" not in d.text()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_config_that_cannot_start_is_one_line_exit_2(tmp_path):
    # rrdcached's line protocol cannot carry a path with a blank: refused at start.
    cfg = write_config(tmp_path / "ctxmon.toml", tmp_path / "with blank" / "rrd",
                       daemon="unix:/nonexistent/rrdcached.sock")
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "run", "-c", cfg],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "blank" in lines[0] and "Traceback" not in r.stderr
