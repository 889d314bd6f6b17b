"""`ctxmon plan --prometheus`: a real Prometheus whose storage was filled with the same
history as the RRD files (`promtool tsdb create-blocks-from openmetrics`, then
Prometheus started on that directory) gives the same plan as the RRD files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from promserver import PrometheusServer, find_binary, free_port

from planner.demo import write_capacity, write_context
from planner.model import GiB

STEP = 3600
DAYS = 7
POINTS = DAYS * 24
END = int(time.time()) // 86400 * 86400 - 86400  # recent, so no retention drops it
START = END - POINTS * STEP


def day_night(peak_hour: float, high: float, low: float, seed: int) -> np.ndarray:
    t = START + STEP * (np.arange(POINTS) + 1) - STEP / 2
    hours = (t % 86400) / 3600
    d = np.minimum(np.abs(hours - peak_hour), 24 - np.abs(hours - peak_hour))
    noise = np.random.default_rng(seed).uniform(0, 0.3, POINTS)
    return np.round(np.where(d <= 4, high, low) + noise, 3)


# host -> context -> (CPU cores, summed RSS, cgroup charge or None)
FLEET = {
    "host0": {"office1": (day_night(13, 5.0, 0.4, 1), 4 * GiB, None),
              "forky": (day_night(9, 1.0, 0.2, 2), 40 * GiB, 2 * GiB)},
    "host1": {"office2": (day_night(13, 4.5, 0.5, 3), 6 * GiB, None)},
    "host2": {"backup1": (day_night(1, 5.0, 0.3, 4), 3 * GiB, None)},
    "host3": {"backup2": (day_night(2, 4.0, 0.6, 5), 5 * GiB, None),
              "web": (day_night(20, 2.0, 0.3, 6), 2 * GiB, None)},
}


def openmetrics() -> str:
    """The series a Prometheus scraping ctxmon on each host would hold."""
    times = START + STEP * np.arange(POINTS + 1)
    lines = ["# TYPE ctxmon_context_cpu_seconds counter"]
    for host, contexts in FLEET.items():
        for ctx, (cpu, _, _) in contexts.items():
            # as the RRD file: whole microseconds, 70 % user
            total = np.concatenate([[0], np.cumsum(np.round(cpu * STEP * 1e6))]).astype(np.int64)
            user = total * 7 // 10
            for mode, counter in (("user", user), ("system", total - user)):
                lab = f'context="{ctx}",instance="{host}",job="ctxmon",mode="{mode}"'
                lines += [f"ctxmon_context_cpu_seconds_total{{{lab}}} {v / 1e6:.6f} {t}"
                          for t, v in zip(times, counter)]
    # host3's exporter caps contexts: its `other` sums folded ones and is left out
    lines += [f'ctxmon_context_cpu_seconds_total{{context="other",instance="host3",job="ctxmon",'
              f'mode="user"}} {0.5 * STEP * n:.1f} {t}' for n, t in enumerate(times)]
    for family, pick in (("ctxmon_context_memory_rss_bytes", 1),
                         ("ctxmon_context_resource_usage", 2)):
        lines.append(f"# TYPE {family} gauge")
        for host, contexts in FLEET.items():
            for ctx, figures in contexts.items():
                if figures[pick] is None:
                    continue
                extra = ',resource="memory"' if pick == 2 else ""
                lab = f'context="{ctx}",instance="{host}",job="ctxmon"{extra}'
                lines += [f"{family}{{{lab}}} {int(figures[pick])} {t}" for t in times[1:]]
    lines.append("# TYPE ctxmon_contexts_folded gauge")
    lines += [f'ctxmon_contexts_folded{{instance="host3",job="ctxmon"}} 3 {t}' for t in times[1:]]
    for family, value in (("ctxmon_host_cpus", 8), ("ctxmon_host_memory_bytes", 32 * GiB)):
        lines.append(f"# TYPE {family} gauge")
        for host in FLEET:
            lines += [f'{family}{{instance="{host}",job="ctxmon"}} {value} {t}' for t in times[1:]]
    return "\n".join(lines) + "\n# EOF\n"


def write_rrd(root) -> list[str]:
    args = []
    for host, contexts in FLEET.items():
        d = str(root / host)
        write_capacity(d, 8, 32 * GiB, host)
        for ctx, (cpu, rss, cgroup) in contexts.items():
            write_context(d, ctx, START, STEP, cpu, np.full(POINTS, float(rss)), rows=POINTS + 10,
                          cgroup_memory=None if cgroup is None else np.full(POINTS, float(cgroup)))
        args += ["--history", f"{host}={d}"]
    return args


def plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxmon.cli", "plan", "--end", str(END),
                           "--days", str(DAYS), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.skipif(find_binary("prometheus") is None or find_binary("promtool") is None,
                    reason="Debian package prometheus not installed")
def test_prometheus_history_gives_the_same_plan_as_the_rrd_files(tmp_path):
    history = write_rrd(tmp_path / "rrd")
    workdir = tmp_path / "prom"
    os.makedirs(workdir / "data")
    (tmp_path / "history.om").write_text(openmetrics())
    r = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics",
                        str(tmp_path / "history.om"), str(workdir / "data")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with PrometheusServer(str(workdir), scrape_configs=[]) as prom:
        assert prom.values("count(ctxmon_host_cpus)", at=END) == {frozenset(): 4.0}
        from_rrd = plan(*history, "--json")
        from_prom = plan("--prometheus", prom.url, "--step", str(STEP), "--json")
    assert from_rrd.returncode == 0, from_rrd.stderr
    assert from_prom.returncode == 0, from_prom.stderr
    assert "context other left out" in from_prom.stderr
    a, b = json.loads(from_rrd.stdout), json.loads(from_prom.stdout)
    assert a["moves"] == b["moves"] and a["unplaced"] == b["unplaced"]
    assert a["peak_sizing"] == b["peak_sizing"]
    assert [(h["name"], h["cpus"], h["memory_bytes"], h["contexts"]) for h in a["hosts"]] == \
        [(h["name"], h["cpus"], h["memory_bytes"], h["contexts"]) for h in b["hosts"]]
    for ha, hb in zip(a["hosts"], b["hosts"]):
        for key in ("cpu_peak_cores", "cpu_percentile_cores", "memory_peak_bytes"):
            assert ha[key] == pytest.approx(hb[key], rel=1e-6, abs=1e-6), (ha["name"], key)
    # the plan is worth comparing: fewer hosts than today, forky counted at its charge
    assert sum(1 for h in a["hosts"] if h["contexts"]) < 4 and a["moves"]
    where = next(h for h in b["hosts"] if "forky" in h["contexts"])
    assert where["memory_peak_bytes"] == sum(
        int(FLEET[host][c][2] or FLEET[host][c][1])
        for host in FLEET for c in FLEET[host] if c in where["contexts"])


def test_unreachable_prometheus_is_one_line_exit_2():
    r = plan("--prometheus", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and lines[0].startswith("ctxmon: plan:")
    r = plan("--prometheus", "file:///etc/passwd")
    assert r.returncode == 2 and "expected http://" in r.stderr
