"""The alert state the daemon hands over to the graph renderer: write_alert_state's
file (what it holds, atomic, rewritten only on change, never raising) and the
renderer's reader of it (graphs.alertstate), on fixture text and on the written file."""

from __future__ import annotations

import json
import logging
import os

import pytest

from alerts.engine import AlertEngine
from alerts.handoff import ALERT_STATE_FILE, write_alert_state
from alerts.model import AlertRule, AlertsConfig, Level
from graphs.alertstate import EMPTY, parse_alert_state, read_alert_state
from test_alerts import Clock, ctx, mem_limit, snap

RSS_SHARE = AlertRule(name="Mem", metric="rss", warning=Level(0.9, True),
                      critical=Level(0.98, True), clear=Level(0.85, True), for_=120.0)
HOST_CPU = AlertRule(name="HostCpu", metric="cpu_host", warning=Level(0.5))
THREADS = AlertRule(name="Threads", metric="threads", warning=Level(100), exclude=("db",))
DOWN = AlertRule(name="Down", metric="absent", contexts=("mail",), severity="warning")


@pytest.fixture
def engine():
    clock = Clock(0.0)
    e = AlertEngine(AlertsConfig(rules=(RSS_SHARE, HOST_CPU, THREADS, DOWN)), clock=clock, cpus=4,
                    host="testhost")
    e.test_clock = clock
    yield e
    e.close()


def evaluate(e: AlertEngine, t: float, web_rss: int) -> None:
    e.test_clock.t = t
    e.evaluate(snap(t, ctx("web", rss=web_rss, limits=[mem_limit(hard=1000)]),
                    ctx("db", rss=5000, threads=300)))


def load(path: str) -> dict:
    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    with open(path, encoding="ascii") as f:
        return json.load(f, parse_constant=no_constants)


def test_the_file_holds_active_alerts_and_each_contexts_levels_in_metric_units(engine, tmp_path):
    path = str(tmp_path / "graphs" / ALERT_STATE_FILE)  # the folder does not exist yet
    evaluate(engine, 0, 950)
    assert write_alert_state(engine, path) is True
    data = load(path)
    assert data["version"] == 1 and data["host_cpus"] == 4
    # pending RSS warning of web; mail is absent (no levels, but an alert)
    alerts = {(a["alert"], a["context"], a["severity"]): a for a in data["alerts"]}
    assert set(alerts) == {("Mem", "web", "warning"), ("Down", "mail", "warning")}
    mem = alerts["Mem", "web", "warning"]
    assert mem["state"] == "pending" and mem["metric"] == "rss" and mem["unit"] == "ratio"
    assert mem["value"] == pytest.approx(0.95) and mem["threshold"] == pytest.approx(0.9)
    assert mem["since"] == 0 and mem["fired_at"] is None
    assert mem["summary"] == "web: resident memory at 95% of its limit (threshold 90%)"
    assert alerts["Down", "mail", "warning"]["state"] == "firing"
    # levels: "90%" of web's 1000-byte limit is 900 bytes; db has no limit, so no RSS
    # level, and the threads rule excludes it; cpu_host stays a share of the host.
    levels = {c: sorted((lv["alert"], lv["severity"], lv["value"]) for lv in v)
              for c, v in data["thresholds"].items()}
    assert levels == {
        "web": [("HostCpu", "warning", 0.5), ("Mem", "critical", pytest.approx(980.0)),
                ("Mem", "warning", pytest.approx(900.0)), ("Threads", "warning", 100.0)],
        "db": [("HostCpu", "warning", 0.5)],
    }
    assert {lv["metric"] for lv in data["thresholds"]["web"]} == {"cpu_host", "rss", "threads"}


def test_the_file_is_rewritten_only_when_its_content_changes(engine, tmp_path):
    path = str(tmp_path / ALERT_STATE_FILE)
    evaluate(engine, 0, 950)
    assert write_alert_state(engine, path)
    before = os.stat(path)
    evaluate(engine, 60, 950)  # still pending, same value: same content
    assert write_alert_state(engine, path) is False
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    evaluate(engine, 120, 950)  # fires
    assert write_alert_state(engine, path) is True
    mem = next(a for a in load(path)["alerts"] if a["alert"] == "Mem")
    assert (mem["state"], mem["since"], mem["fired_at"]) == ("firing", 0, 120)
    # a file someone else changed is put right
    with open(path, "w") as f:
        f.write("{}")
    assert write_alert_state(engine, path) is True and load(path)["version"] == 1
    assert sorted(os.listdir(tmp_path)) == [ALERT_STATE_FILE]  # no temporary file left
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_no_engine_is_no_alerts_and_no_levels(tmp_path):
    path = str(tmp_path / ALERT_STATE_FILE)
    assert write_alert_state(None, path) is True
    data = load(path)
    assert (data["alerts"], data["thresholds"]) == ([], {})
    assert write_alert_state(None, path) is False


def test_a_value_without_a_number_is_null_not_invalid_json(tmp_path):
    rule = AlertRule(name="Mem", metric="rss", warning=Level(0.9, True))
    e = AlertEngine(AlertsConfig(rules=(rule,)), clock=Clock(0.0), cpus=2, host="h")
    try:
        e.evaluate(snap(0, ctx("web", rss=5, limits=[mem_limit(hard=0)])))  # 5/0: +Inf
        path = str(tmp_path / ALERT_STATE_FILE)
        write_alert_state(e, path)
        [a] = load(path)["alerts"]
        assert a["state"] == "firing" and a["value"] is None
    finally:
        e.close()


def test_a_write_failure_is_logged_once_and_never_raises(engine, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ctxmon.alerts")
    blocker = tmp_path / "graphs"
    blocker.write_text("a file where the folder should be")
    path = str(blocker / ALERT_STATE_FILE)
    evaluate(engine, 0, 950)
    caplog.clear()
    assert write_alert_state(engine, path) is False
    assert write_alert_state(engine, path) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write the alert state" in warnings[0].getMessage()
    blocker.unlink()
    assert write_alert_state(engine, path) is True
    assert caplog.records[-1].levelno == logging.INFO
    assert "written again" in caplog.records[-1].getMessage()


def test_hostile_names_reach_the_renderer_unchanged(tmp_path):
    odd = "<script>alert(1)</script>\n\udcff\u202e"
    e = AlertEngine(AlertsConfig(rules=(AlertRule(name="Procs", metric="processes",
                                                  warning=Level(10)),)),
                    clock=Clock(0.0), cpus=2, host="h")
    try:
        e.evaluate(snap(0, ctx(odd, processes=50)))
        write_alert_state(e, str(tmp_path / ALERT_STATE_FILE))
    finally:
        e.close()
    state = read_alert_state(str(tmp_path))
    [a] = state.firing
    assert (a.alert, a.context, a.severity) == ("Procs", odd, "warning")
    assert a.summary == f"{odd}: 50 processes (threshold 10)"
    [lv] = state.levels_of(odd)
    assert (lv.metric, lv.severity, lv.value) == ("processes", "warning", 10.0)
    assert state.host_cpus == 2 and state.skipped == 0


# ---------------------------------------------------------- the reader, on text

GOOD = {
    "version": 1, "host_cpus": 8,
    "alerts": [
        {"alert": "Mem", "context": "web", "severity": "warning", "state": "firing", "metric": "rss",
         "unit": "ratio", "value": 0.99, "threshold": 0.9, "since": 10, "fired_at": 20,
         "summary": "s1"},
        {"alert": "Mem", "context": "web", "severity": "critical", "state": "firing", "metric": "rss",
         "unit": "ratio", "value": 0.99, "threshold": 0.98, "since": 10, "fired_at": 20,
         "summary": "s2"},
        {"alert": "Cpu", "context": "db", "severity": "warning", "state": "firing", "metric": "cpu",
         "unit": "ratio", "value": 1.2, "threshold": 0.9, "since": 5, "fired_at": 5, "summary": "s3"},
        {"alert": "Cpu", "context": "web", "severity": "warning", "state": "pending", "metric": "cpu",
         "unit": "ratio", "value": 1.2, "threshold": 0.9, "since": 5, "fired_at": None,
         "summary": "s4"},
    ],
    "thresholds": {"web": [{"alert": "Mem", "metric": "rss", "severity": "warning", "value": 900}]},
}


def test_reader_orders_the_worst_first_and_folds_a_warning_under_its_critical():
    state = parse_alert_state(json.dumps(GOOD))
    assert [(a.alert, a.context, a.severity) for a in state.firing] == [
        ("Mem", "web", "critical"), ("Cpu", "db", "warning")]
    assert [a.summary for a in state.pending] == ["s4"]
    assert state.host_cpus == 8 and state.levels_of("web")[0].value == 900.0
    assert state.levels_of("db") == ()


@pytest.mark.parametrize("text", [
    "", "not json", "[]", '{"version": 2, "alerts": []}', '{"alerts": []}',
    '{"version": 1, "alerts": {}}', '{"version": 1, "thresholds": []}', "\"\\ud800\"",
])
def test_reader_refuses_what_is_not_an_alert_state(text):
    with pytest.raises(ValueError):
        parse_alert_state(text)


def test_reader_skips_and_counts_malformed_entries():
    data = json.loads(json.dumps(GOOD))
    data["alerts"] += [None, {"alert": "x"}, {**GOOD["alerts"][0], "state": "resolved"},
                       {**GOOD["alerts"][0], "since": "yesterday"}, {**GOOD["alerts"][0], "context": 7}]
    data["thresholds"]["db"] = [{"alert": "C", "metric": "cpu", "severity": "warning", "value": "9"},
                                {"alert": "C", "metric": "cpu", "severity": "warning", "value": 0.9}]
    data["thresholds"]["mail"] = "nope"
    data["host_cpus"] = -3
    state = parse_alert_state(json.dumps(data))
    assert state.skipped == 5 + 1 + 1
    assert len(state.alerts) == len(GOOD["alerts"])
    assert [lv.value for lv in state.levels_of("db")] == [0.9]
    assert state.host_cpus == 1


def test_a_missing_or_broken_file_is_no_state_with_one_debug_line(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ctxmon.graphs")
    assert read_alert_state(str(tmp_path)) is EMPTY
    (tmp_path / ALERT_STATE_FILE).write_bytes(b"\xff\xfe{garbage")
    assert read_alert_state(str(tmp_path)) is EMPTY
    (tmp_path / ALERT_STATE_FILE).write_text('{"version": 1, "alerts": ' + "[" * 100000)
    assert read_alert_state(str(tmp_path)) is EMPTY
    records = [r for r in caplog.records if r.name == "ctxmon.graphs"]
    assert [r.levelno for r in records] == [logging.DEBUG] * 3
    assert EMPTY.firing == [] and EMPTY.pending == [] and EMPTY.levels_of("web") == ()
