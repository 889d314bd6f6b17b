"""alerts/: its own package. Nothing in it (nor in collector/, exporters/, graphs/)
imports ctxmon.* (the config loader imports the alert model, never the reverse), and
the hand-off file's schema is the one module both the writer and graphs/ use."""

from __future__ import annotations

import os

from test_graphs_structure import ROOT, imports_of

import alerts.handoff
import graphs.alertstate


def _imports(package: str) -> dict[str, set[str]]:
    out = {}
    folder = os.path.join(ROOT, package)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            module = f"{package}.{name[:-3]}" if name != "__init__.py" else package
            out[module] = imports_of(os.path.join(folder, name), module)
    return out


def test_alerts_imports_no_ctxmon_and_no_one_outside_imports_it_backwards():
    for package in ("alerts", "collector", "exporters", "graphs", "planner"):
        for module, imported in _imports(package).items():
            bad = sorted(m for m in imported if m == "ctxmon" or m.startswith("ctxmon."))
            assert not bad, f"{module} imports {bad}"
    config = imports_of(os.path.join(ROOT, "ctxmon", "config", "loader.py"), "ctxmon.config.loader")
    assert "alerts.model" in config


def test_no_sink_reads_sampler_internals():
    """Sinks and views take the snapshot and the catalog (the departed-state time is
    the catalog's), never the sampler that builds the snapshot."""
    for package in ("alerts", "exporters", "graphs", "planner"):
        for module, imported in _imports(package).items():
            assert "collector.sampler" not in imported, f"{module} imports collector.sampler"


def test_the_alert_metrics_come_from_the_catalog():
    from alerts.engine import GAUGES
    from alerts.model import ALERT_METRICS
    from alerts.rate import COUNTERS
    from collector import catalog

    assert set(ALERT_METRICS) == {m.name for m in catalog.ALERT_METRICS}
    for m in catalog.ALERT_METRICS:
        assert (m.name in GAUGES) == (m.gauge is not None), m.name
        assert (m.name in COUNTERS) == (m.counter is not None), m.name
    for module, imported in _imports("alerts").items():
        assert "exporters.alerts" not in imported and "exporters.alert_rules" not in imported


def test_writer_and_reader_share_one_schema_module():
    assert graphs.alertstate.ALERT_STATE_FILE is alerts.handoff.ALERT_STATE_FILE
    assert graphs.alertstate.ALERT_STATE_VERSION == alerts.handoff.ALERT_STATE_VERSION
    reader = imports_of(os.path.join(ROOT, "graphs", "alertstate.py"), "graphs.alertstate")
    assert "alerts.handoff" in reader
    data = alerts.handoff.alert_state(None)
    assert data["version"] == alerts.handoff.ALERT_STATE_VERSION
    assert data["alerts"] == [] and data["thresholds"] == {}
