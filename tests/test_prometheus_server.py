"""The exporter against a real Prometheus (Debian's `prometheus` package).

One private Prometheus per module scrapes two real `ctxmon run` daemons on loopback
every second, as it would two hosts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from cgroups import rmdir_cgroup
from daemonproc import Daemon, write_config
from prometheus_client.parser import text_string_to_metric_families
from promserver import PrometheusError, PrometheusServer, find_binary

from collector import build_source
from collector.procfs import CLK_TCK
from collector.sampler import Sampler
from exporters.http import MetricsServer
from exporters.prometheus import SelfMetrics, SnapshotCollector, build_registry

pytestmark = pytest.mark.skipif(
    find_binary("prometheus") is None, reason="Debian package prometheus not installed"
)
pytestmark = [pytestmark, pytest.mark.live, pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two real `ctxmon run` daemons (1 s polls) and one Prometheus scraping both."""
    base = tmp_path_factory.mktemp("ctxmon")
    daemons: list[Daemon] = []
    prom = None
    try:
        for i in range(2):
            cfg = write_config(base / f"ctxmon{i}.toml", base / f"rrd{i}")
            daemons.append(Daemon(cfg, base / f"daemon{i}.log"))
        for d in daemons:
            d.wait_for_metrics()
        instances = [f"127.0.0.1:{d.port}" for d in daemons]
        prom = PrometheusServer(str(tmp_path_factory.mktemp("prometheus")), targets=instances)
        prom.start()
        prom.wait_for_targets(2)
        yield prom, daemons, instances
    finally:
        if prom is not None:
            prom.stop()
        for d in daemons:
            code = d.stop()
            assert code == 0, d.text()


def scrape(srv) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=10) as r:
        return r.read().decode()


def cpu_seconds(pid: int) -> float:
    """The process's own user+system time, read independently of ctxmon."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _context_label(daemon: Daemon, cgroup_rel: str) -> str | None:
    """The label the daemon exports for the context of this cgroup, from its /metrics."""
    for family in text_string_to_metric_families(daemon.metrics()):
        if family.name == "ctxmon_context_info":
            for sample in family.samples:
                if sample.labels.get("id") == cgroup_rel:
                    return sample.labels["context"]
    return None


def test_series_exist_cpu_rate_matches_a_burning_cgroup_and_departed_contexts_go_stale(
        setup, cgroup_factory):
    prom, daemons, instances = setup
    inst = instances[0]
    cg = cgroup_factory()
    burner = cg.spawn([sys.executable, "-c", "while True: pass"])

    # The daemon names the cgroup (the default rules name a service by its unit).
    label = prom.wait_until(lambda: _context_label(daemons[0], cg.rel), 10,
                            "the test cgroup sampled")
    sel = f'context="{label}",instance="{inst}"'
    prom.wait_for_query(f"ctxmon_context_cpu_seconds_total{{{sel}}}")

    # The series of the table are there for a real host.
    names = {r["metric"]["__name__"] for r in prom.query(f'{{__name__=~"ctxmon_.+",'
                                                         f'instance="{inst}"}}')}
    for name in ("ctxmon_context_cpu_seconds_total", "ctxmon_context_memory_rss_bytes",
                 "ctxmon_context_memory_virtual_bytes", "ctxmon_context_processes",
                 "ctxmon_context_threads", "ctxmon_context_start_time_seconds",
                 "ctxmon_context_info", "ctxmon_contexts", "ctxmon_network_receive_bytes_total",
                 "ctxmon_network_transmit_bytes_total", "ctxmon_network_receive_packets_total",
                 "ctxmon_network_transmit_packets_total", "ctxmon_network_receive_errors_total",
                 "ctxmon_network_transmit_drops_total", "ctxmon_poll_duration_seconds",
                 "ctxmon_last_poll_timestamp_seconds", "ctxmon_poll_errors",
                 "ctxmon_rrd_write_errors", "ctxmon_polls_total", "ctxmon_build_info"):
        assert name in names, name
    info = prom.values(f"ctxmon_context_info{{{sel}}}")
    assert list(info) == [frozenset({("__name__", "ctxmon_context_info"), ("job", "ctxmon"),
                                     ("instance", inst), ("context", label),
                                     ("id", cg.rel), ("source", "cgroup")})]
    assert prom.values(f"ctxmon_context_processes{{{sel}}}") == {
        frozenset({("__name__", "ctxmon_context_processes"), ("job", "ctxmon"),
                   ("instance", inst), ("context", label)}): 1.0}

    # rate() over a window against what the burner really used in it (the machine has
    # two cores and other tests run, so one CPU is not guaranteed, its own time is).
    t1, used1 = time.time(), cpu_seconds(burner.pid)
    prom.wait_until(
        lambda: prom.query(f"timestamp(ctxmon_context_cpu_seconds_total{{{sel},mode='user'}})"
                           f" > {t1 + 8:.3f}"),
        20, "8 s of samples")
    t2, used2 = time.time(), cpu_seconds(burner.pid)
    window_ms = int((t2 - t1) * 1000)
    got = prom.values(
        f"sum(rate(ctxmon_context_cpu_seconds_total{{{sel}}}[{window_ms}ms]))", at=t2)
    rate = next(iter(got.values()))
    actual = (used2 - used1) / (t2 - t1)
    assert actual > 0.3, f"the burner got only {actual:.2f} CPU: machine too busy"
    assert abs(rate - actual) <= 0.3, f"Prometheus rate {rate:.3f}, burner used {actual:.3f}"
    print(f"rate() {rate:.3f} CPU, burner used {actual:.3f} CPU")

    # The burner exits and its cgroup goes: the series are stale at the next scrapes.
    cg.kill_all()
    rmdir_cgroup(cg.path)
    cgroup_factory.made.remove(cg)  # removed here already: nothing left to clean up
    prom.wait_for_absent(f"ctxmon_context_processes{{{sel}}}", timeout=15)
    assert prom.query(f"ctxmon_context_cpu_seconds_total{{{sel}}}") == []
    assert f'context="{label}"' not in daemons[0].metrics()
    # while the host itself is still exported
    assert prom.query(f'ctxmon_context_processes{{context="host",instance="{inst}"}}')


def test_promtool_check_metrics_on_a_real_scrape_reports_nothing(setup):
    _, daemons, _ = setup
    text = daemons[0].metrics()
    assert "ctxmon_context_cpu_seconds_total" in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


def test_promtool_accepts_hostile_context_names(setup):
    """Quotes, backslashes, newlines, HTML and non-UTF-8 bytes in names still parse."""
    sampler = Sampler(build_source("cgroup"))
    real = sampler.sample()
    sampler.close()
    odd = b'we"ird\\name\n<b>\xff'.decode("utf-8", "surrogateescape")
    snap = dataclasses.replace(real, contexts=tuple(
        dataclasses.replace(c, name=f"{odd}{i}") for i, c in enumerate(real.contexts)))
    collector = SnapshotCollector(lambda: snap, SelfMetrics, max_contexts=1)
    srv = MetricsServer("127.0.0.1:0", build_registry(collector))
    srv.start()
    try:
        text = scrape(srv)
    finally:
        srv.stop()
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


def test_one_prometheus_scrapes_two_ctxmon_instances(setup):
    prom, _, instances = setup
    targets = prom.targets()
    assert sorted(t["labels"]["instance"] for t in targets) == sorted(instances)
    assert {t["health"] for t in targets} == {"up"}
    try:
        got = prom.wait_for_query("ctxmon_build_info", accept=lambda r: len(r) == 2)
    except PrometheusError as e:
        pytest.fail(str(e))
    assert sorted(r["metric"]["instance"] for r in got) == sorted(instances)
    assert prom.values('count(up{job="ctxmon"} == 1)') == {frozenset(): 2.0}


CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf",
                    "prometheus.yml")


def test_the_shipped_scrape_config_is_valid_and_its_relabelling_drops_the_port():
    r = subprocess.run(["promtool", "check", "config", CONF], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(CONF) as f:
        regexes = {line.split("regex:", 1)[1].strip().strip("'")
                   for line in f if line.strip().startswith("regex:")}
    assert regexes  # the example relabels instance
    for regex in regexes:
        # Prometheus anchors relabel regexes at both ends, like fullmatch
        for address, instance in (("host1.example.org:9717", "host1.example.org"),
                                  ("[2001:db8::10]:9717", "2001:db8::10"),
                                  ("10.0.0.1:9717", "10.0.0.1")):
            m = re.fullmatch(regex, address)
            assert m and m.group(1) == instance, (regex, address)
