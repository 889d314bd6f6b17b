"""Alert state survives a restart (issue 11 item 9): saved atomically at each change,
resumed at start, so a firing alert stays firing instead of going back to pending
and waiting out its `for` again."""

from __future__ import annotations

import json
import os
import re
import signal

from daemonproc import POLLED, write_config
from factories import FakeClock, context, snapshot

from alerts.engine import STATE_FILE, AlertEngine
from alerts.model import AlertRule, AlertsConfig, Level

HERE = os.path.dirname(__file__)
VS20 = os.path.join(HERE, "fixtures", "vs20")


def rss_rule(for_: float = 60.0) -> AlertRule:
    return AlertRule(name="RssHigh", metric="rss", warning=Level(100.0), for_=for_)


def cpu_rule() -> AlertRule:
    return AlertRule(name="CpuHigh", metric="cpu", warning=Level(0.5), for_=60.0)


def engine(path, clock, *rules) -> AlertEngine:
    return AlertEngine(AlertsConfig(rules=rules, rate_window=60.0), clock=clock, cpus=1,
                       host="h", state_path=str(path))


def test_a_firing_alert_resumes_firing_and_a_pending_one_keeps_its_start(tmp_path):
    path = tmp_path / STATE_FILE
    clock = FakeClock(1000.0)
    e = engine(path, clock, rss_rule())
    e.evaluate(snapshot(context("web", rss=500), context("db", rss=10), t=1000))
    clock.advance(60)
    e.evaluate(snapshot(context("web", rss=500), context("db", rss=500), t=1060))
    assert [(a.context, a.state) for a in e.active()] == [("db", "pending"), ("web", "firing")]
    saved = json.loads(path.read_text())
    assert {(a["context"], a["state"]) for a in saved["alerts"]} == {("db", "pending"),
                                                                     ("web", "firing")}
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    e.close()

    clock.advance(30)  # the restart
    again = engine(path, clock, rss_rule())
    assert [a.context for a in again.firing()] == ["web"]  # before any evaluation
    t = again.evaluate(snapshot(context("web", rss=500), context("db", rss=500), t=1090))
    assert t == []  # no transition: web stays firing, db still pending (30 s to go)
    assert [(a.context, a.state) for a in again.active()] == [("db", "pending"),
                                                              ("web", "firing")]
    clock.advance(30)
    t = again.evaluate(snapshot(context("web", rss=500), context("db", rss=500), t=1120))
    assert [(x.alert.context, x.previous, x.state) for x in t] == [("db", "pending", "firing")]
    again.close()


def test_a_resumed_rate_alert_holds_until_the_rate_has_samples(tmp_path):
    path = tmp_path / STATE_FILE
    clock = FakeClock(1000.0)
    e = engine(path, clock, AlertRule(name="CpuHigh", metric="cpu", warning=Level(0.5)))
    for i in range(4):
        clock.now = 1000.0 + 10 * i
        e.evaluate(snapshot(context("web", user=100.0 * i), t=clock.now))
    assert [a.context for a in e.firing()] == ["web"]
    e.close()
    clock.advance(20)
    again = engine(path, clock, AlertRule(name="CpuHigh", metric="cpu", warning=Level(0.5)))
    # One snapshot is no rate: without the hold this would resolve the alert.
    assert again.evaluate(snapshot(context("web", user=1000.0), t=clock.now)) == []
    clock.advance(10)
    assert again.evaluate(snapshot(context("web", user=1100.0), t=clock.now)) == []
    assert [a.context for a in again.firing()] == ["web"]
    # Once a value exists, it is judged as usual.
    clock.advance(10)
    again.evaluate(snapshot(context("web", user=1100.0), t=clock.now))
    clock.advance(10)
    t = again.evaluate(snapshot(context("web", user=1100.0), t=clock.now))
    t += again.evaluate(snapshot(context("web", user=1100.0), t=clock.advance(60)))
    assert [(x.alert.context, x.state) for x in t] == [("web", "resolved")]
    again.close()


def test_stale_malformed_or_orphaned_state_is_not_resumed(tmp_path, caplog):
    path = tmp_path / STATE_FILE
    clock = FakeClock(1000.0)
    e = engine(path, clock, rss_rule(for_=0))
    e.evaluate(snapshot(context("web", rss=500), t=1000))
    e.close()
    clock.advance(2 * 3600)  # down for two hours: the state is stale
    assert engine(path, clock, rss_rule(for_=0)).firing() == []
    clock.now = 1000.0 + 10
    assert engine(path, clock, cpu_rule()).firing() == []  # its rule is gone
    path.write_text('{"version": 1, "saved_at": 1000, "alerts": [{"alert": 3}, 7]}')
    assert engine(path, clock, rss_rule(for_=0)).firing() == []
    path.write_text("[" * 100000)
    assert engine(path, clock, rss_rule(for_=0)).firing() == []
    assert "not resumed" in caplog.text


def test_an_unwritable_state_file_never_stops_evaluation(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    clock = FakeClock(1000.0)
    e = engine(blocker / STATE_FILE, clock, rss_rule(for_=0))
    t = e.evaluate(snapshot(context("web", rss=500), t=1000))
    assert [x.state for x in t] == ["firing"]
    assert caplog.text.count("cannot save the alert state") == 1
    e.evaluate(snapshot(context("web", rss=500), context("db", rss=500), t=1010))
    assert caplog.text.count("cannot save the alert state") == 1  # logged once
    e.close()


def _firing(text: str, alert: str) -> set[str]:
    return set(re.findall(rf'ctxmon_alert_firing{{alert="{alert}",context="([^"]*)"', text))


def test_a_firing_alert_stays_firing_across_a_real_daemon_restart(tmp_path, daemons):
    """Fires after `for` 3s; killed (-9, no clean close) and restarted with `for` 1h:
    without the saved state it would be pending for an hour."""
    cfg_path = tmp_path / "ctxmon.toml"
    rule = ('[[alerts.rule]]\nname = "ManyProcs"\nmetric = "processes"\nwarning = 3\n'
            'for = "{for_}"\ncontexts = ["wikkit.example.net"]\n')
    write_config(cfg_path, tmp_path / "rrd", extra="[alerts]\n" + rule.format(for_="3s"))
    recorded = f'source = "vserver"\nproc_root = "{VS20}/proc"'
    cfg_path.write_text(cfg_path.read_text().replace('source = "cgroup"', recorded))
    d = daemons(str(cfg_path), tmp_path / "one.log")
    d.wait_for_log("ManyProcs warning for wikkit.example.net: firing")
    assert _firing(d.wait_for_metrics(), "ManyProcs") == {"wikkit.example.net"}
    d.kill()
    assert os.path.exists(tmp_path / "rrd" / STATE_FILE)

    cfg_path.write_text(cfg_path.read_text().replace('for = "3s"', 'for = "1h"'))
    again = daemons(str(cfg_path), tmp_path / "two.log")
    again.wait_for_log(POLLED)
    assert _firing(again.wait_for_metrics(), "ManyProcs") == {"wikkit.example.net"}
    again.wait_for_log(POLLED, count=3)
    text = again.text()
    assert "alert state resumed" in text and "1 firing" in text
    assert "ManyProcs warning for wikkit.example.net: pending" not in text
    assert "ManyProcs warning for wikkit.example.net: firing" not in text  # not again
    assert _firing(again.metrics(), "ManyProcs") == {"wikkit.example.net"}
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(timeout=20) == 0
