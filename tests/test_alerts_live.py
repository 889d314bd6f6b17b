"""Alerts for real: `ctxmon run` polling a test cgroup whose processes pass an RSS and
a CPU threshold, with the command hook, a private Alertmanager (Debian's
prometheus-alertmanager) and a private Prometheus loading the rules `ctxmon rules`
generates from the same config.

Every wait polls (a log file, an API) until its condition holds or a deadline passes.
Intervals are 1 s and `for` is 2 s so the file stays short.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest
from cgroups import BURN, TOUCH_64M
from promserver import PrometheusServer

pytestmark = [pytest.mark.live, pytest.mark.slow]

HOOK = """\
import json, os, sys
data = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("CTXMON_ALERT_")}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"stdin": data, "env": env}) + "\\n")
"""
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], what: str, limit: float = 30.0, every: float = 0.1,
             show: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + limit
    last = None
    while True:
        try:
            last = check()
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last {last!r}\n{show()}")
        time.sleep(every)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


class Alertmanager:
    """A private Alertmanager on loopback: no clustering, a receiver that sends nothing."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "alertmanager.yml"
        # JSON is YAML.
        self.config.write_text(json.dumps({
            "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s",
                      "repeat_interval": "1h"},
            "receivers": [{"name": "null"}],
        }))
        self.log_path = workdir / "alertmanager.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> "Alertmanager":
        for _ in range(3):  # a free port may be taken before Alertmanager binds it
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [ALERTMANAGER, f"--config.file={self.config}",
                     f"--storage.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}",
                     "--cluster.listen-address=", "--log.level=warn"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            try:
                wait_for(lambda: self.proc.poll() is not None or get_text(self.url + "/-/ready"),
                         "Alertmanager ready", 30, show=self.log)
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is None:
                return self
            if "address already in use" not in self.log():
                raise AssertionError("Alertmanager exited:\n" + self.log())
        raise AssertionError("Alertmanager did not start:\n" + self.log())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def alerts(self) -> list[dict]:
        """Alertmanager's current alerts (resolved ones it no longer lists)."""
        return get_json(self.url + "/api/v2/alerts")

    def received(self, status: str) -> float:
        """alertmanager_alerts_received_total{status=...}, summed over API versions."""
        total = 0.0
        for line in get_text(self.url + "/metrics").splitlines():
            if line.startswith("alertmanager_alerts_received_total{") and \
                    f'status="{status}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


class CtxmonRun:
    """`ctxmon run` as a child process, its log in a file."""

    def __init__(self, config: Path, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ctxmon.cli", "-v", "run", "-c",
                                      str(config)], stdout=self.log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def line(self, needle: str, limit: float = 30.0) -> str:
        """The first log line holding `needle`, once there is one."""
        def find():
            assert self.proc.poll() is None, f"ctxmon exited:\n{self.text()}"
            return next((ln for ln in self.text().splitlines() if needle in ln), None)
        return wait_for(find, repr(needle), limit, show=self.text)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def ctxmon_runs():
    started: list[CtxmonRun] = []

    def start(config: Path, log_path: Path) -> CtxmonRun:
        r = CtxmonRun(config, log_path)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


def write_config(tmp_path: Path, context: str, listen: str, *, command: list[str] | None = None,
                 alertmanager: str = "") -> Path:
    path = tmp_path / "ctxmon.toml"
    path.write_text(f"""
[collector]
interval = "1s"
source = "cgroup"

[rrd]
dir = "{tmp_path / 'rrd'}"
step = "1s"

[exporter]
listen = "{listen}"

[graphs]
enabled = false

[alerts]
command = {json.dumps(command or [])}
alertmanager_url = "{alertmanager}"
rate_window = "3s"

[[alerts.rule]]
name = "TestRss"
metric = "rss"
warning = "40MiB"
for = "2s"
contexts = [{json.dumps(context)}]

[[alerts.rule]]
name = "TestCpu"
metric = "cpu"
warning = "30%"
clear = "10%"
for = "2s"
contexts = [{json.dumps(context)}]
""")
    return path


def start_load(cg) -> tuple[subprocess.Popen, subprocess.Popen]:
    """64 MiB resident in one process, one CPU burnt by another."""
    toucher = cg.spawn([sys.executable, "-c", TOUCH_64M], stdout=subprocess.PIPE)
    assert toucher.stdout.readline().strip() == b"ready"
    burner = cg.spawn([sys.executable, "-c", BURN])
    return toucher, burner


def log_time(line: str) -> float:
    """The asctime at the start of a ctxmon log line, as epoch seconds."""
    stamp = " ".join(line.split()[:2])
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def stop(p: subprocess.Popen) -> None:
    p.kill()
    p.wait()


@pytest.mark.skipif(ALERTMANAGER is None,
                    reason="Debian package prometheus-alertmanager not installed")
def test_daemon_alerts_go_to_the_hook_and_a_real_alertmanager(tmp_path, cgroup_factory,
                                                               ctxmon_runs):
    am = Alertmanager(tmp_path / "am").start()
    try:
        hook = tmp_path / "hook.py"
        hook.write_text(HOOK)
        calls_file = tmp_path / "calls.jsonl"
        cg = cgroup_factory()
        name = os.path.basename(cg.rel)  # the built-in *.service rule names it by its unit
        listen = f"127.0.0.1:{free_port()}"
        cfg = write_config(tmp_path, name, listen,
                           command=[sys.executable, str(hook), str(calls_file)],
                           alertmanager=am.url)
        toucher, burner = start_load(cg)
        d = ctxmon_runs(cfg, tmp_path / "ctxmon.log")

        def calls() -> list[dict]:
            if not calls_file.exists():
                return []
            return [json.loads(x) for x in calls_file.read_text().splitlines()]

        # Local evaluation: pending, then firing no sooner than `for` later.
        for alert in ("TestRss", "TestCpu"):
            pending = d.line(f"alert {alert} warning for {name}: pending")
            firing = d.line(f"alert {alert} warning for {name}: firing")
            assert log_time(firing) - log_time(pending) >= 2.0 - 0.01, (pending, firing)

        # The command hook ran once per firing alert.
        got = wait_for(lambda: len(calls()) >= 2 and calls(), "two hook calls", 20)
        assert sorted((c["stdin"]["labels"]["alertname"], c["stdin"]["status"],
                       c["env"]["CTXMON_ALERT_STATUS"], c["env"]["CTXMON_ALERT_CONTEXT"])
                      for c in got) == [("TestCpu", "firing", "firing", name),
                                        ("TestRss", "firing", "firing", name)]

        # /metrics serves the firing alerts.
        metrics = get_text(f"http://{listen}/metrics")
        for alert in ("TestRss", "TestCpu"):
            assert (f'ctxmon_alert_firing{{alert="{alert}",context="{name}",'
                    f'severity="warning"}} 1.0') in metrics

        # Alertmanager has both, active, with ctxmon's labels and summary.
        def am_ours() -> list[dict]:
            return [a for a in am.alerts() if a["labels"].get("context") == name]

        active = wait_for(lambda: len(am_ours()) == 2 and am_ours(), "2 alerts in Alertmanager",
                          20, show=am.log)
        assert {a["labels"]["alertname"] for a in active} == {"TestRss", "TestCpu"}
        for a in active:
            assert a["status"]["state"] == "active"
            assert a["labels"]["severity"] == "warning"
            assert a["annotations"]["summary"].startswith(f"{name}: ")

        # The burner stops: CPU falls under the clear level, the context stays (RSS).
        stop(burner)
        d.line(f"alert TestCpu warning for {name}: resolved (value ")
        # The toucher stops too: the context is gone, its RSS alert resolves.
        stop(toucher)
        d.line(f"alert TestRss warning for {name}: resolved (the context is gone)")

        got = wait_for(lambda: len(calls()) >= 4 and calls(), "four hook calls", 20)
        assert sorted((c["stdin"]["labels"]["alertname"], c["stdin"]["status"],
                       c["env"]["CTXMON_ALERT_STATUS"]) for c in got) == [
            ("TestCpu", "firing", "firing"), ("TestCpu", "resolved", "resolved"),
            ("TestRss", "firing", "firing"), ("TestRss", "resolved", "resolved")]

        # Alertmanager got both resolutions: it counts them, and lists neither any more.
        wait_for(lambda: am.received("resolved") >= 2, "2 resolved alerts received", 20,
                 show=am.log)
        wait_for(lambda: am_ours() == [], "Alertmanager to drop the resolved alerts", 20)
        assert am.received("firing") >= 2
        assert d.stop() == 0, d.text()
        assert "Traceback" not in d.text()
        assert "alert alertmanager failed" not in d.text()
        assert "alert command failed" not in d.text()
    finally:
        am.stop()


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Debian package prometheus not installed")
def test_generated_rules_in_a_real_prometheus_fire_like_the_daemon(tmp_path, cgroup_factory,
                                                                   ctxmon_runs):
    cg = cgroup_factory()
    name = os.path.basename(cg.rel)
    listen = f"127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path, name, listen)
    rules = tmp_path / "ctxmon.rules.yml"
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "rules", "-c", str(cfg), "-o",
                        str(rules)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    toucher, burner = start_load(cg)
    d = ctxmon_runs(cfg, tmp_path / "ctxmon.log")
    with PrometheusServer(str(tmp_path / "prom"), targets=[listen],
                          rule_files=[str(rules)]) as prom:
        prom.wait_for_targets(1)

        def prom_firing() -> set[str]:
            return {a["labels"]["alertname"] for a in prom.alerts()
                    if a["labels"].get("context") == name and a["state"] == "firing"}

        prom.wait_until(lambda: prom_firing() == {"TestRss", "TestCpu"},
                        40, "both alerts firing in Prometheus")
        # The daemon's own evaluation, as Prometheus scraped it, says the same.
        local = prom.wait_for_query(f'ctxmon_alert_firing{{context="{name}"}}',
                                    accept=lambda res: len(res) == 2)
        assert {x["metric"]["alert"] for x in local} == {"TestRss", "TestCpu"}
        for a in prom.alerts():
            if a["labels"].get("context") == name:
                assert a["labels"]["severity"] == "warning"
                assert a["annotations"]["summary"].startswith(f"{name}: ")

        stop(burner)
        prom.wait_until(lambda: prom_firing() == {"TestRss"}, 30, "TestCpu to resolve")
        stop(toucher)
        prom.wait_until(lambda: not any(a["labels"].get("context") == name
                                        for a in prom.alerts()), 30, "TestRss to resolve")
        prom.wait_for_absent(f'ctxmon_alert_firing{{context="{name}"}}')
    assert d.stop() == 0, d.text()
    assert "Traceback" not in d.text()
