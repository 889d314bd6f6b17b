"""Alerts: the [alerts] config, the local state machine on synthetic snapshots with an
injected clock, rates, notifications (a real command, a loopback Alertmanager
stand-in) and the generated Prometheus rules' building blocks."""

from __future__ import annotations

import fnmatch
import http.server
import json
import logging
import re
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from collector.snapshot import ContextSample, InterfaceSample, LimitRow, Snapshot
from alerts import promrules as alert_rules
from alerts.collector import AlertCollector, alert_metric_family
from alerts.engine import AlertEngine
from alerts.formats import humanize, humanize1024, humanize_percentage
from alerts.model import AlertOverride, AlertRule, AlertsConfig, Level
from alerts.rate import prom_rate
from ctxmon.config import ConfigError, load_config

# ----------------------------------------------------------------------- helpers


def ctx(name: str = "web", *, rss: int = 0, vsz: int = 0, processes: int = 1, threads: int = 1,
        cpu: float = 0.0, limits=(), interfaces=(), xid=None) -> ContextSample:
    return ContextSample(
        key=name, name=name, ctx_id=name, source="cgroup", processes=processes,
        threads=threads, vsz_bytes=vsz, rss_bytes=rss, cpu_user_seconds=cpu,
        cpu_system_seconds=0.0, cpu_accounting="kernel", live_user_seconds=0.0,
        live_system_seconds=0.0, start_time=None, uptime_seconds=None,
        first_process_start=None, xid=xid, limits=tuple(limits), interfaces=tuple(interfaces))


def snap(t: float, *contexts: ContextSample) -> Snapshot:
    return Snapshot(timestamp=t, duration_seconds=0.0, source="cgroup", contexts=contexts,
                    host_interfaces=(), host_uptime_seconds=t)


def mem_limit(hard=None, soft=None, resource="memory") -> LimitRow:
    return LimitRow(resource, "bytes", 0, soft=soft, hard=hard)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def make_engine():
    made = []

    def make(*rules: AlertRule, clock=None, **cfg) -> AlertEngine:
        e = AlertEngine(AlertsConfig(rules=rules, **cfg), clock=clock or Clock(), cpus=4,
                        host="testhost")
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def run(engine: AlertEngine, clock: Clock, steps, make_snap) -> list[list[tuple[str, str, str]]]:
    """Evaluate at each (time, value); the (severity, previous, new) transitions per step."""
    out = []
    for t, value in steps:
        clock.t = t
        out.append([(x.alert.severity, x.previous, x.state)
                    for x in engine.evaluate(make_snap(t, value))])
    return out


RSS = AlertRule(name="Mem", metric="rss", warning=Level(0.9, True), critical=Level(0.98, True),
                clear=Level(0.85, True), for_=120.0)


def rss_snap(t, share, name="web"):
    return snap(t, ctx(name, rss=int(share * 1000), limits=[mem_limit(hard=1000)]))


# --------------------------------------------------------------- state machine


def test_pending_then_firing_after_for(make_engine):
    clock = Clock()
    e = make_engine(RSS, clock=clock)
    got = run(e, clock, [(0, 0.5), (60, 0.95), (120, 0.95), (179, 0.95), (180, 0.95)], rss_snap)
    assert got == [[], [("warning", "inactive", "pending")], [], [],
                   [("warning", "pending", "firing")]]
    [a] = e.firing()
    assert (a.name, a.context, a.severity, a.state) == ("Mem", "web", "warning", "firing")
    assert a.active_since == 60 and a.fired_at == 180
    assert a.summary == "web: resident memory at 95% of its limit (threshold 90%)"


def test_for_zero_fires_at_once(make_engine):
    clock = Clock()
    e = make_engine(AlertRule(name="Mem", metric="rss", warning=Level(500)), clock=clock)
    got = run(e, clock, [(0, 0.4), (10, 0.6), (20, 0.6), (30, 0.4)], rss_snap)
    assert got == [[], [("warning", "inactive", "firing")], [], [("warning", "firing", "resolved")]]


def test_pending_that_drops_starts_over(make_engine):
    clock = Clock()
    e = make_engine(RSS, clock=clock)
    got = run(e, clock, [(0, 0.95), (60, 0.89), (120, 0.95), (180, 0.95), (240, 0.95)], rss_snap)
    # Hysteresis holds only firing alerts: 0.89 ends the pending one, `for` restarts.
    assert got == [[("warning", "inactive", "pending")], [("warning", "pending", "inactive")],
                   [("warning", "inactive", "pending")], [], [("warning", "pending", "firing")]]


def test_hysteresis_holds_a_firing_alert_until_the_clear_level(make_engine):
    clock = Clock()
    e = make_engine(RSS, clock=clock)
    got = run(e, clock, [(0, 0.95), (120, 0.95), (180, 0.86), (240, 0.9), (300, 0.851),
                         (360, 0.85)], rss_snap)
    assert got == [[("warning", "inactive", "pending")], [("warning", "pending", "firing")],
                   [], [], [], [("warning", "firing", "resolved")]]
    assert e.firing() == []


def test_critical_clears_the_same_distance_below_its_level(make_engine):
    clock = Clock()
    e = make_engine(RSS, clock=clock)
    steps = [(0, 0.99), (120, 0.99), (180, 0.931), (240, 0.93), (300, 0.86), (360, 0.8)]
    got = run(e, clock, steps, rss_snap)
    assert got == [
        [("warning", "inactive", "pending"), ("critical", "inactive", "pending")],
        [("warning", "pending", "firing"), ("critical", "pending", "firing")],
        [],  # 93.1 % > 98 % - (90 % - 85 %)
        [("critical", "firing", "resolved")],
        [],
        [("warning", "firing", "resolved")],
    ]


def test_no_flood_one_log_line_per_transition(make_engine, caplog):
    caplog.set_level(logging.DEBUG, logger="ctxmon.alerts")
    clock = Clock()
    e = make_engine(RSS, clock=clock)
    values = [0.95] * 50 + [0.88, 0.92, 0.87, 0.91] * 10 + [0.5] * 20
    transitions = []
    for i, v in enumerate(values):
        clock.t = i * 60.0
        transitions += e.evaluate(rss_snap(clock.t, v))
    assert [(t.previous, t.state) for t in transitions] == [
        ("inactive", "pending"), ("pending", "firing"), ("firing", "resolved")]
    lines = [r.getMessage() for r in caplog.records if r.name == "ctxmon.alerts"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("alert Mem warning for web: pending (value 95% > 90%; fires after 2m)")
    assert lines[1].startswith("alert Mem warning for web: firing (")
    assert lines[2] == "alert Mem warning for web: resolved (value 50% <= 85%)"
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING", "INFO"]


def test_a_departed_context_resolves_and_an_odd_name_stays_on_one_line(make_engine, caplog):
    caplog.set_level(logging.INFO, logger="ctxmon.alerts")
    clock = Clock()
    odd = "we\nb\udcff"
    e = make_engine(AlertRule(name="Mem", metric="rss", warning=Level(100)), clock=clock)
    clock.t = 0
    assert [t.state for t in e.evaluate(snap(0, ctx(odd, rss=500)))] == ["firing"]
    clock.t = 60
    got = e.evaluate(snap(60, ctx("other", rss=500)))
    assert sorted((t.alert.context, t.state, t.reason) for t in got) == [
        ("other", "firing", "value 500B > 100B"), (odd, "resolved", "the context is gone")]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3 and all("\n" not in m for m in msgs), msgs
    assert 'alert Mem warning for "we\\nb\\udcff": resolved (the context is gone)' in msgs


def test_reconfigure_keeps_states_and_resolves_alerts_of_removed_rules(make_engine):
    clock = Clock()
    cpu_rule = AlertRule(name="Procs", metric="processes", warning=Level(10))
    e = make_engine(RSS, cpu_rule, clock=clock)
    for t in (0, 120):
        clock.t = t
        e.evaluate(snap(t, ctx("web", rss=950, processes=50, limits=[mem_limit(hard=1000)])))
    assert {(a.name, a.state) for a in e.firing()} == {("Mem", "firing"), ("Procs", "firing")}
    e.reconfigure(AlertsConfig(rules=(RSS,)))
    clock.t = 180
    ts = e.evaluate(snap(180, ctx("web", rss=950, processes=50, limits=[mem_limit(hard=1000)])))
    assert [(t.alert.name, t.state, t.reason) for t in ts] == [
        ("Procs", "resolved", "its rule was removed")]
    assert [(a.name, a.fired_at) for a in e.firing()] == [("Mem", 120)]


# ---------------------------------------------------------------------- values


def test_share_of_the_lowest_hard_limit_and_no_alert_without_one(make_engine):
    clock = Clock()
    rule = AlertRule(name="Mem", metric="rss", warning=Level(0.5, True))
    e = make_engine(rule, clock=clock)
    contexts = [
        ctx("nolimit", rss=10**12),
        ctx("softonly", rss=900, limits=[mem_limit(soft=100)]),
        ctx("vs", rss=600, limits=[mem_limit(hard=1000, resource="RSS"),
                                   mem_limit(hard=2000), mem_limit(hard=10, resource="VM")]),
        ctx("cg", rss=400, limits=[mem_limit(hard=1000)]),
        ctx("zero", rss=1, limits=[mem_limit(hard=0)]),
    ]
    e.evaluate(snap(0, *contexts))
    assert sorted(a.context for a in e.firing()) == ["vs", "zero"]  # 60 %, x/0 = +Inf
    th = {(t.metric, t.severity): t.value for t in e.thresholds("vs")}
    assert th == {("rss", "warning"): 500.0}  # half of the lowest hard limit, in bytes
    assert e.thresholds("nolimit") == []


def test_prom_rate_matches_prometheus_extrapolation():
    # Hand-computed as Prometheus 2.x extrapolatedRate does (window 180 s):
    # full window, linear: the slope.
    assert prom_rate([(0, 0.0), (60, 6.0), (120, 12.0), (180, 18.0)], 0, 180) == pytest.approx(0.1)
    # two samples starting at zero: no extrapolation below zero -> 6 / 180
    assert prom_rate([(120, 0.0), (180, 6.0)], 0, 180) == pytest.approx(6 / 180)
    # two samples of a running counter: extrapolated by half an interval at the start
    assert prom_rate([(120, 100.0), (180, 106.0)], 0, 180) == pytest.approx(6 * 90 / 60 / 180)
    # a reset (10 -> 2) counts the new value as increase: 2 + 4 = 6 over the window
    assert prom_rate([(0, 8.0), (60, 10.0), (120, 2.0), (180, 6.0)], 0, 180) == \
        pytest.approx((2 + 2 + 4) / 180)
    assert prom_rate([(0, 5.0)], 0, 180) is None


def test_rates_of_cpu_hits_and_traffic(make_engine):
    clock = Clock()
    rules = [
        AlertRule(name="Cpu", metric="cpu", warning=Level(0.5)),
        AlertRule(name="HostCpu", metric="cpu_host", warning=Level(0.2)),
        AlertRule(name="Hits", metric="limit_hits", warning=Level(0)),
        AlertRule(name="In", metric="net_receive_bps", warning=Level(1000)),
    ]
    e = make_engine(*rules, clock=clock, rate_window=20.0)

    def at(t, cpu, hits, rx):
        return snap(t, ctx("web", cpu=cpu,
                           limits=[LimitRow("pids", "count", 0, hard=9, hits=hits),
                                   LimitRow("memory", "bytes", 0, hard=99, hits=0)],
                           interfaces=[InterfaceSample("eth0", rx, 0, 0, 0, 0, 0, 0, 0),
                                       InterfaceSample("eth1", rx, 0, 0, 0, 0, 0, 0, 0)]))

    clock.t = 0
    assert e.evaluate(at(0, 100.0, 3, 0)) == []  # one sample: no rate yet
    for t in (10, 20):
        clock.t = t
        e.evaluate(at(t, 100.0 + 0.9 * t, 3, 100 * t))
    values = {a.name: a.value for a in e.active()}
    # 0.9 CPU; 0.9 / 4 CPUs; no new hit; 2 interfaces x 100 B/s x 8 bit
    assert values == pytest.approx({"Cpu": 0.9, "HostCpu": 0.225, "In": 1600.0})
    clock.t = 30
    e.evaluate(at(30, 100.0 + 0.9 * 30, 4, 3000))
    assert {a.name for a in e.firing()} == {"Cpu", "HostCpu", "Hits", "In"}


def test_overrides_exclude_and_turned_off_levels(make_engine):
    clock = Clock()
    rule = AlertRule(
        name="Procs", metric="processes", warning=Level(10), critical=Level(20), for_=0.0,
        contexts=("web*", "db"), exclude=("web-test",),
        overrides=(AlertOverride("web-big*", warning=Level(30), critical=None, clear=None,
                                 for_=0.0),
                   AlertOverride("web-b*", warning=None, critical=Level(25), clear=None,
                                 for_=0.0)))
    e = make_engine(rule, clock=clock)
    e.evaluate(snap(0, *(ctx(n, processes=35) for n in
                         ("web-1", "web-test", "db", "cache", "web-big", "web-bar"))))
    assert sorted((a.context, a.severity) for a in e.firing()) == [
        ("db", "critical"), ("db", "warning"), ("web-1", "critical"), ("web-1", "warning"),
        ("web-bar", "critical"), ("web-big", "warning")]


def test_absent_fires_for_a_missing_context_after_for_and_resolves_when_back(make_engine):
    clock = Clock()
    rule = AlertRule(name="Down", metric="absent", contexts=("web", "db"), for_=60.0,
                     severity="warning")
    e = make_engine(rule, clock=clock)
    seq = [(0, ("web", "db")), (30, ("db",)), (60, ("db",)), (90, ("db",)), (120, ("web", "db"))]
    got = []
    for t, names in seq:
        clock.t = t
        got.append([(x.alert.context, x.state) for x in e.evaluate(snap(t, *map(ctx, names)))])
    assert got == [[], [("web", "pending")], [], [("web", "firing")], [("web", "resolved")]]


# -------------------------------------------------------------------- formats


def test_value_formats_are_prometheus_template_functions():
    # Prometheus' template.go: humanize, humanize1024, humanizePercentage ("%.4g").
    assert humanize(1234567) == "1.235M"
    assert humanize(0.012) == "12m"
    assert humanize(0) == "0"
    assert humanize(999) == "999"
    assert humanize1024(1536) == "1.5ki"
    assert humanize1024(2 ** 31) == "2Gi"
    assert humanize1024(1) == "1"
    assert humanize_percentage(0.1234) == "12.34%"
    assert humanize_percentage(1.5) == "150%"


def test_custom_summary(make_engine):
    clock = Clock()
    rule = AlertRule(name="Big", metric="rss", warning=Level(2 ** 20),
                     summary="{alert}/{severity}: {context} at {value} > {threshold} {{ok}}")
    e = make_engine(rule, clock=clock)
    e.evaluate(snap(0, ctx("web", rss=3 * 2 ** 20)))
    assert e.firing()[0].summary == "Big/warning: web at 3MiB > 1MiB {ok}"


def test_alert_metric_family_and_collector(make_engine):
    clock = Clock()
    e = make_engine(AlertRule(name="Mem", metric="rss", warning=Level(100)), clock=clock)
    e.evaluate(snap(0, ctx("web", rss=500), ctx("db", rss=5)))
    fam = alert_metric_family(e)
    assert [(s.name, s.labels, s.value) for s in fam.samples] == [
        ("ctxmon_alert_firing", {"alert": "Mem", "context": "web", "severity": "warning"}, 1)]
    reg = CollectorRegistry()
    reg.register(AlertCollector(e))
    text = generate_latest(reg).decode()
    assert 'ctxmon_alert_firing{alert="Mem",context="web",severity="warning"} 1.0' in text
    assert "ctxmon_host_cpus 4.0" in text
    assert alert_metric_family(None).samples == []


# ---------------------------------------------------------------- notifications

HOOK = """\
import json, os, sys, time
out, release = sys.argv[1], sys.argv[2]
data = json.load(sys.stdin)
deadline = time.monotonic() + 10
while release != "-" and not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.01)
env = {k: v for k, v in os.environ.items() if k.startswith("CTXMON_ALERT_")}
with open(out, "a") as f:
    f.write(json.dumps({"stdin": data, "env": env}) + "\\n")
"""


def hook_command(tmp_path: Path, release: str = "-") -> tuple[tuple[str, ...], Path]:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    out = tmp_path / "hook.jsonl"
    return (sys.executable, str(script), str(out), release), out


def test_command_receives_firing_and_resolved_as_json_and_environment(tmp_path, make_engine):
    argv, out = hook_command(tmp_path)
    clock = Clock(1_700_000_000.0)
    rule = AlertRule(name="Mem", metric="rss", warning=Level(100), for_=60.0)
    e = make_engine(rule, clock=clock, command=argv, command_timeout=10.0)
    for dt, rss in ((0, 500), (60, 500), (120, 5)):
        clock.t = 1_700_000_000.0 + dt
        e.evaluate(snap(clock.t, ctx("web", rss=rss)))
    assert e.wait_idle(20)
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["stdin"]["status"] for c in calls] == ["firing", "resolved"]
    firing, resolved = calls
    assert firing["stdin"]["labels"] == {"alertname": "Mem", "context": "web",
                                         "severity": "warning", "host": "testhost"}
    assert firing["stdin"]["startsAt"] == "2023-11-14T22:13:20.000Z"  # when it went pending
    assert firing["stdin"]["value"] == 500 and firing["stdin"]["threshold"] == 100
    assert firing["stdin"]["annotations"]["summary"] == "web: resident memory 500B (threshold 100B)"
    assert resolved["stdin"]["endsAt"] == "2023-11-14T22:15:20.000Z"
    assert firing["env"]["CTXMON_ALERT_STATUS"] == "firing"
    assert resolved["env"]["CTXMON_ALERT_STATUS"] == "resolved"
    assert firing["env"]["CTXMON_ALERT_CONTEXT"] == "web"
    assert firing["env"]["CTXMON_ALERT_SEVERITY"] == "warning"
    assert firing["env"]["CTXMON_ALERT_VALUE"] == "500.0"
    assert resolved["env"]["CTXMON_ALERT_ENDS_AT"] == "2023-11-14T22:15:20.000Z"


def test_command_never_blocks_the_evaluation(tmp_path, make_engine):
    release = tmp_path / "release"
    argv, out = hook_command(tmp_path, str(release))
    clock = Clock()
    e = make_engine(AlertRule(name="Mem", metric="rss", warning=Level(100)), clock=clock,
                    command=argv, command_timeout=30.0)
    [t] = e.evaluate(snap(0, ctx("web", rss=500)))
    # The command is still waiting for `release`: had evaluate() run it, we would not
    # be here before it had written its line.
    assert t.state == "firing" and not out.exists()
    release.write_text("")
    assert e.wait_idle(20)
    assert len(out.read_text().splitlines()) == 1


def test_command_timeout_and_failure_are_counted_and_logged(tmp_path, make_engine, caplog):
    caplog.set_level(logging.WARNING, logger="ctxmon.alerts")
    clock = Clock()
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")
    e = make_engine(AlertRule(name="Mem", metric="rss", warning=Level(100)), clock=clock,
                    command=sleeper, command_timeout=0.3)
    e.evaluate(snap(0, ctx("web", rss=500)))
    assert e.wait_idle(20)
    assert e.notification_failures["command"] == 1
    assert any("killed after 0.3s" in r.getMessage() for r in caplog.records)
    failing = (sys.executable, "-c", "import sys; print('no mail today'); sys.exit(3)")
    e.reconfigure(AlertsConfig(rules=e.cfg.rules, command=failing))
    clock.t = 10
    e.evaluate(snap(10))  # resolves: the new command runs
    assert e.wait_idle(20)
    assert any("exit status 3: no mail today" in r.getMessage() for r in caplog.records)


class FakeAlertmanager:
    """Records what is POSTed to /api/v2/alerts (the real one: test_alerts_live.py)."""

    def __init__(self, status: int = 200):
        self.posts: list[list[dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((self.path, self.headers["Content-Type"], json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_alertmanager_gets_firing_resends_and_resolved(make_engine):
    am = FakeAlertmanager()
    try:
        clock = Clock(1_700_000_000.0)
        e = make_engine(AlertRule(name="Mem", metric="rss", warning=Level(100)), clock=clock,
                        alertmanager_url=am.url + "/")
        for dt, rss in ((0, 500), (30, 500), (60, 500), (90, 500), (120, 5), (150, 5)):
            clock.t = 1_700_000_000.0 + dt
            e.evaluate(snap(clock.t, ctx("web", rss=rss)))
            assert e.wait_idle(10)
    finally:
        am.close()
    assert [(p, ct) for p, ct, _ in am.posts] == [("/api/v2/alerts", "application/json")] * 3
    first, resend, resolved = (body for _, _, body in am.posts)
    assert first[0]["labels"] == {"alertname": "Mem", "context": "web", "severity": "warning",
                                  "host": "testhost"}
    assert first[0]["annotations"]["summary"] == "web: resident memory 500B (threshold 100B)"
    assert first[0]["startsAt"] == resend[0]["startsAt"] == "2023-11-14T22:13:20.000Z"
    # Firing: endsAt well ahead (4 resend intervals), so Alertmanager keeps it between sends.
    assert first[0]["endsAt"] == "2023-11-14T22:17:20.000Z"
    assert resolved[0]["endsAt"] == "2023-11-14T22:15:20.000Z"  # when it resolved
    assert set(first[0]) == {"labels", "annotations", "startsAt", "endsAt"}


def test_unreachable_alertmanager_is_one_warning_not_one_per_poll(make_engine, caplog):
    caplog.set_level(logging.DEBUG, logger="ctxmon.alerts")
    am = FakeAlertmanager()
    url = am.url
    am.close()  # nothing listens there any more
    clock = Clock()
    e = make_engine(AlertRule(name="Mem", metric="rss", warning=Level(100)), clock=clock,
                    alertmanager_url=url, alertmanager_timeout=2.0)
    for t in range(0, 600, 60):
        clock.t = t
        e.evaluate(snap(t, ctx("web", rss=500)))
        assert e.wait_idle(10)
    assert e.notification_failures["alertmanager"] == 10
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "alertmanager" in
                r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


# ---------------------------------------------------------------------- config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ctxmon.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_config_reads_rules_with_overrides(tmp_path):
    path = write(tmp_path, """
[alerts]
command = "logger -t ctxmon"
alertmanager_url = "http://127.0.0.1:9093/"
rate_window = "10m"

[[alerts.rule]]
name = "Mem"
metric = "rss"
warning = "90%"
critical = "98%"
clear = "85%"
for = "5m"
contexts = ["web*"]
exclude = ["web-test"]
summary = "{context} big"

[alerts.rule.overrides."web-db"]
warning = "95%"
critical = false

[[alerts.rule]]
name = "Gone"
metric = "absent"
contexts = ["web"]
""")
    a = load_config(path).alerts
    assert a.command == ("/bin/sh", "-c", "logger -t ctxmon")
    assert a.alertmanager_url == "http://127.0.0.1:9093" and a.rate_window == 600
    mem, gone = a.rules
    assert (mem.warning, mem.critical, mem.clear, mem.for_) == (
        Level(0.9, True), Level(0.98, True), Level(0.85, True), 300.0)
    assert mem.contexts == ("web*",) and mem.exclude == ("web-test",)
    assert mem.overrides == (AlertOverride("web-db", Level(0.95, True), None, Level(0.85, True),
                                           300.0),)
    assert (gone.metric, gone.contexts, gone.severity) == ("absent", ("web",), "critical")


@pytest.mark.parametrize("quantity, metric, value", [
    ("512MiB", "rss", 512 * 2 ** 20), ("2G", "vsz", 2e9), ("1.5GiB", "rss", 1.5 * 2 ** 30),
    ("100Mbit/s", "net_receive_bps", 1e8), ("100M", "net_transmit_bps", 1e8),
    ("0.5/s", "limit_hits", 0.5), ("150%", "cpu", 1.5), ("1k", "threads", 1000.0),
])
def test_config_quantities(tmp_path, quantity, metric, value):
    path = write(tmp_path, f'[[alerts.rule]]\nname = "A"\nmetric = "{metric}"\n'
                           f'warning = "{quantity}"\n')
    assert load_config(path).alerts.rules[0].warning == Level(value)


RULE_HEAD = '[[alerts.rule]]\nname = "Ok"\nmetric = "rss"\nwarning = 1\n\n[[alerts.rule]]\n'


@pytest.mark.parametrize("body, key, message", [
    ('name = "X"\nmetric = "rss"\nwarning = "lots"\n', "warning",
     'expected a number, a percentage ("90%") or a quantity'),
    ('name = "X"\nmetric = "rsss"\nwarning = 1\n', "metric", 'did you mean "rss"?'),
    ('name = "X"\nmetric = "rss"\n', None, "needs a warning or a critical level"),
    ('metric = "rss"\nwarning = 1\n', None, "needs a name"),
    ('name = "Ok"\nmetric = "rss"\nwarning = 1\n', "name", "already the name of [[alerts.rule]] #1"),
    ('name = "X"\nmetric = "rss"\nwarning = "90%"\ncritical = "80%"\n', "critical",
     "must be above warning"),
    ('name = "X"\nmetric = "rss"\nwarning = "90%"\nclear = "95%"\n', "clear",
     "must not be above the warning level"),
    ('name = "X"\nmetric = "rss"\nwarning = "90%"\ncritical = "2GiB"\n', "critical",
     "mixes a share of the limit"),
    ('name = "X"\nmetric = "processes"\nwarning = "90%"\n', "warning", "processes has no limit"),
    ('name = "X"\nmetric = "net_receive_bps"\nwarning = "1GiB"\n', "warning",
     "not measured in B"),
    ('name = "X"\nmetric = "rss"\nwarning = 1\nfor = "soon"\n', "for", "invalid duration"),
    ('name = "X"\nmetric = "rss"\nwarning = 1\nsummary = "{ctx}"\n', "summary",
     "unknown placeholder {ctx}"),
    ('name = "X"\nmetric = "rss"\nwarning = 1\nsummary = "{value:.2f}"\n', "summary",
     "takes no format"),
    ('name = "X"\nmetric = "rss"\nwarning = 1\nseverity = "critical"\n', "severity",
     "only absent rules take a severity"),
    ('name = "X"\nmetric = "absent"\ncontexts = ["web*"]\n', "contexts", "not globs"),
    ('name = "X"\nmetric = "absent"\n', None, "needs `contexts`"),
    ('name = "X"\nmetric = "absent"\ncontexts = ["a"]\nwarning = 1\n', "warning",
     "an absent rule takes no warning"),
    ('name = "X y"\nmetric = "rss"\nwarning = 1\n', "name", "must be letters, digits"),
    ('name = "X"\nmetric = "rss"\nwarning = 1\ncontext = ["a"]\n', "context",
     'unknown key (did you mean "contexts"?)'),
    ('name = "X"\nmetric = "rss"\nwarning = "90%"\n\n[alerts.rule.overrides.db]\n'
     'warning = "80%"\nclear = "85%"\n', "overrides.db.clear", "after the override"),
    ('name = "X"\nmetric = "rss"\nwarning = 1\n\n[alerts.rule.overrides.db]\nwarnin = 2\n',
     "overrides.db.warnin", 'did you mean "warning"?'),
])
def test_config_rule_errors_name_the_rule_and_line(tmp_path, body, key, message):
    text = RULE_HEAD + body
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    got = str(info.value)
    assert "\n" not in got
    last = key.split(".")[-1] if key else None
    if key is None:
        line = text.count("\n", 0, text.rindex("[[alerts.rule]]")) + 1
    else:
        line = next(n for n, ln in enumerate(text.splitlines(), 1)
                    if n > 5 and re.match(rf"{re.escape(last)}\s*=", ln))
    name = re.search(r'^name = "(.*)"$', body, re.M)
    where = "[[alerts.rule]] #2" + (f" ({name.group(1)})" if name else "")
    assert got.startswith(f"{path}:{line}: {where}"), got
    if key:
        assert f" {key}: " in got, got
    assert message in got, got


@pytest.mark.parametrize("text, message", [
    ('[alerts]\ncommand = 5\n', "[alerts] command: must be a string"),
    ('[alerts]\nalertmanager_url = "ftp://x"\n', "[alerts] alertmanager_url: must be an http://"),
    ('[collector]\ninterval = "60s"\n[alerts]\nrate_window = "90s"\n',
     "[alerts] rate_window: must span at least two polls (120s"),
    ('[alerts]\nrule = 5\n', "[alerts] rule: must be an array of tables"),
])
def test_config_alerts_table_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and str(info.value).startswith(f"{path}:")


def test_rate_window_defaults_to_two_polls_when_longer(tmp_path):
    path = write(tmp_path, '[collector]\ninterval = "10m"\n[alerts]\n')
    assert load_config(path).alerts.rate_window == 1200
    assert load_config(write(tmp_path, "[alerts]\n")).alerts == AlertsConfig()


# ------------------------------------------------------------ rules file pieces


@pytest.mark.parametrize("glob", ["web*", "a?c", "[ab]x", "[!a]*", "x.y+z", "w[a-c]", "[]]a",
                                  "br[ack", "*{}$^|()", "ü*", "q[\\]]"])
def test_glob_regex_matches_what_fnmatch_matches(glob):
    rx = re.compile(alert_rules.glob_regex(glob))
    for name in ("web", "web-1", "abc", "a?c", "ax", "bx", "cx", "xx", "x.y+z", "xxy+z", "wb",
                 "wd", "]a", "br[ack", "a{}$^|()", "ü1", "q]", "q\\", "", "a\nb"):
        assert bool(rx.fullmatch(name)) == fnmatch.fnmatchcase(name, glob), (glob, name)


def test_quote_is_ascii_and_round_trips_as_json():
    for s in ['plain', 'q"u\\o', "tab\tnl\n", "ü€", "\U0001F600", "{{x}}"]:
        q = alert_rules.quote(s)
        assert q.isascii() and q.isprintable()
        # JSON reads \u and \" the same way YAML and Go do; \U is YAML's and Go's only.
        if "\U0001F600" not in s:
            assert json.loads(q) == s
    assert alert_rules.quote("\U0001F600") == '"\\U0001f600"'
    assert alert_rules.quote("\udcff") == '"\\ufffd"'


def test_prom_duration_and_number():
    assert [alert_rules.prom_duration(s) for s in (0, 2, 300, 5400, 0.5, 90061)] == [
        "0s", "2s", "5m", "1h30m", "500ms", "1d1h1m1s"]
    assert [alert_rules.number(v) for v in (0.9, 1073741824.0, 0.0)] == ["0.9", "1073741824", "0"]


def test_generated_rule_for_a_simple_case():
    rule = AlertRule(name="Big", metric="processes", warning=Level(100), clear=Level(80),
                     for_=300.0, contexts=("web*",))
    text = alert_rules.generate_rules(AlertsConfig(rules=(rule,)))
    expected = '''\
      - alert: Big
        expr: |-
          ctxmon_context_processes{context=~"(?s:web.*)"} > 100
          or
          (ctxmon_context_processes{context=~"(?s:web.*)"} > 80
            and ignoring(alertname, alertstate, severity) ALERTS{alertname="Big", alertstate="firing", severity="warning"})
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.context }}: {{ $value | humanize }} processes (threshold 100)"
'''
    assert expected in text
    assert text.isascii()
    assert alert_rules.generate_rules(AlertsConfig()).endswith("groups: []\n")
