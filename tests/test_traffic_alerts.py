"""Alert rules on [traffic] accounting's figure: traffic_receive_bps and
traffic_transmit_bps, bits per second whatever the method, evaluated locally and
generated as PromQL."""

from __future__ import annotations

import pytest

from alerts import promrules
from alerts.engine import AlertEngine
from alerts.model import AlertRule, AlertsConfig, Level
from collector.snapshot import TrafficSample
from tests.factories import FakeClock, context, snapshot


def test_traffic_rules_fire_on_bits_per_second():
    clock = FakeClock(0.0)
    rules = (AlertRule(name="In", metric="traffic_receive_bps", warning=Level(1e6)),
             AlertRule(name="Out", metric="traffic_transmit_bps", warning=Level(1e6)))
    engine = AlertEngine(AlertsConfig(rules=rules, rate_window=20.0), clock=clock, cpus=2,
                         host="testhost")
    try:
        def at(t: float, rx: int, tx: int):
            web = context("web", traffic=TrafficSample("address", rx, rx // 1000, tx, tx // 1000))
            quiet = context("quiet")  # not accounted: never a value, never an alert
            return snapshot(web, quiet, t=t)

        for t in (0, 10, 20, 30):
            clock.now = float(t)
            engine.evaluate(at(t, 250_000 * t, 1_000 * t))  # 2 Mbit/s in, 8 kbit/s out
        values = {(a.name, a.context): a.value for a in engine.active()}
        assert values == {("In", "web"): pytest.approx(2e6)}
        assert {a.name for a in engine.firing()} == {"In"}
    finally:
        engine.close()


def test_traffic_rules_as_promql():
    expr = promrules.value_expr("traffic_receive_bps", False, ['context="web"'], 300.0)
    assert expr == ('sum without(method) (rate(ctxmon_context_traffic_receive_bytes_total'
                    '{context="web"}[5m])) * 8')
