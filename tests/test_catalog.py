"""The metric catalog (collector.catalog): consistent in itself, the README's table is
its output, and what the sinks expose is what it declares."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from factories import context, iface, snapshot

from collector import catalog
from collector.snapshot import LimitRow

ROOT = Path(__file__).resolve().parent.parent


def test_readme_table_is_the_catalogs():
    readme = (ROOT / "README.md").read_text()
    start = readme.find(catalog.README_BEGIN)
    end = readme.find(catalog.README_END)
    assert start >= 0 and end > start, "README lacks the generated metric table's markers"
    in_readme = readme[start:end + len(catalog.README_END)]
    assert in_readme == catalog.readme_table(), (
        "README's metric table differs from the catalog: paste the output of "
        "`python -m collector.catalog` between the markers")


def test_readme_rrd_file_list_is_the_layouts():
    from exporters import rrdlayout

    readme = (ROOT / "README.md").read_text()
    assert rrdlayout.readme_block() in readme, (
        "README's RRD file list differs: paste the output of `python -m exporters.rrdlayout`")
    for k in catalog.FILE_KINDS:
        assert k.readme, f"file kind {k.name} has no README line"


def test_readme_alert_metric_row_is_the_catalogs():
    readme = (ROOT / "README.md").read_text().splitlines()
    rows = [line for line in readme if line.startswith("| `metric` |")]
    assert rows == [catalog.alert_metrics_readme()], (
        "README's alert `metric` row differs: paste it from `python -m collector.catalog`")
    for m in catalog.ALERT_METRICS:
        assert f"`{m.name}`" in rows[0]


def test_python_m_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "collector.catalog"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out == catalog.readme_table() + "\n\n" + catalog.alert_metrics_readme() + "\n"
    for fam in catalog.FAMILIES:  # every family has a row (alone or in its group)
        assert f"`{fam.readme_group or fam.exposed}`" in out, fam.name


def test_catalog_imports_no_sink_or_entry_point():
    code = ("import sys, collector.catalog; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('ctxmon', 'exporters', 'graphs', 'alerts', 'planner', 'prometheus_client', "
            "'rrdtool', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_families_are_well_formed():
    names = [f.name for f in catalog.FAMILIES]
    assert len(names) == len(set(names))
    for f in catalog.FAMILIES:
        assert re.fullmatch(r"ctxmon_[a-z_]+", f.name), f.name
        assert not f.name.endswith("_total"), f.name  # added for counters on exposition
        assert f.type in ("counter", "gauge")
        assert f.scope in ("context", "host", "daemon")
        assert f.help.endswith("."), f.name
        if f.scope == "context":
            assert f.labels[0] == "context" and f.samples is not None, f.name
        else:
            assert "context" not in f.labels, f.name
        if f.summed:
            assert f.scope == "context"


def test_context_samples_match_their_labels():
    c = context("web", limits=(LimitRow("memory", "bytes", 5, 1, 9, 7, 8, 2),),
                interfaces=(iface("eth0", 100, 200),), start_time=5.0)
    seen = set()
    for f in catalog.FAMILIES:
        if f.scope != "context":
            continue
        for labels, value in f.samples(c):
            assert len(labels) == len(f.labels) - 1, f.name
            assert isinstance(value, (int, float)), f.name
            seen.add(f.name)
    assert {"ctxmon_context_limit", "ctxmon_context_network_receive_bytes",
            "ctxmon_context_start_time_seconds"} <= seen
    limits = dict(catalog.FAMILY["ctxmon_context_limit"].samples(c))
    assert limits == {("memory", "soft"): 7, ("memory", "hard"): 8}


def test_file_kinds_are_well_formed():
    for k in catalog.FILE_KINDS:
        assert k.ds_type in ("DERIVE", "GAUGE")
        assert k.scope in ("context", "context-interface", "host-interface")
        assert len(k.ds) == len(set(k.ds)) and all(re.fullmatch(r"[a-z_]{1,19}", d) for d in k.ds)
        if k.graph is not None:
            assert set(k.graph.shown) <= set(k.ds), k.name
            assert set(k.graph.host_ds) <= set(k.ds), k.name
            assert k.graph.base in (None, 1000, 1024)
    cpu = catalog.FILE_KIND["cpu"]
    assert cpu.values(context(user=1.5, system=0.25)) == [1.5, 0.25]
    assert cpu.scale == 1e-6
    assert catalog.FILE_KIND["host-if"].values(iface("lo", 10, 20))[:2] == [10, 20]


def test_alert_metrics_point_at_real_families_and_files():
    for m in catalog.ALERT_METRICS:
        if m.name == "absent":
            assert m.gauge is None and m.counter is None
            continue
        assert (m.gauge is None) != (m.counter is None), m.name
        fam = catalog.FAMILY[m.family]
        assert fam.type == ("counter" if m.counter else "gauge"), m.name
        if m.counter:
            assert m.summed_label in fam.labels, m.name
        if m.drawn_on:
            assert catalog.FILE_KIND[m.drawn_on].graph is not None
    c = context(rss=300, limits=(LimitRow("pids", "count", 1, hits=4),))
    assert catalog.ALERT_METRIC["rss"].gauge(c) == 300.0
    assert catalog.ALERT_METRIC["limit_hits"].counter.series(c) == {"pids": 4.0}


def test_alert_metrics_match_what_the_config_and_engine_accept():
    """The alerts derive from the catalog: what the config and engine accept is it."""
    from alerts.formats import default_summary
    from alerts.model import ALERT_METRICS

    assert {m.name: (m.unit, m.limit_resources) for m in catalog.ALERT_METRICS} == ALERT_METRICS
    for m in catalog.ALERT_METRICS:
        assert default_summary(m.name, False) == m.summary
        if m.summary_of_limit:
            assert default_summary(m.name, True) == m.summary_of_limit


def test_prometheus_families_are_the_catalogs():
    from exporters.prometheus import FAMILIES

    assert list(FAMILIES) == [f.name for f in catalog.FAMILIES]
    assert all(FAMILIES[f.name] == (f.type, f.help, f.labels) for f in catalog.FAMILIES)


def test_stat_json_fields_are_the_catalogs():
    from ctxmon.cli import snapshot_json

    got = snapshot_json(snapshot(context("a"), context("b")))
    assert [list(o) for o in got] == [[k for k, _ in catalog.CONTEXT_JSON]] * 2
    assert [o["context"] for o in got] == ["a", "b"]


def test_the_daemons_scrape_has_each_family_once():
    """The daemon's registry joins the snapshot's families (the catalog's) and the
    alert collector's: a family in both would be two TYPE lines, which Prometheus
    refuses (ctxmon_host_cpus was)."""
    import dataclasses
    import types

    from test_golden import synthetic_snapshot

    from ctxmon.config import default_config
    from ctxmon.daemon import build_metrics_server
    from exporters.prometheus import SelfMetrics

    cfg = default_config()
    cfg = dataclasses.replace(cfg, exporter=dataclasses.replace(cfg.exporter,
                                                                listen="127.0.0.1:0"))
    snap = synthetic_snapshot()
    daemon = types.SimpleNamespace(latest=snap, self_metrics=SelfMetrics, alerts=None,
                                   graph_request=lambda *a, **k: None)
    server = build_metrics_server(cfg, daemon)
    text = b"".join(server.registry.exposition()).decode()
    types_ = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types_) == len(set(types_)), sorted(t for t in types_ if types_.count(t) > 1)
    assert "ctxmon_alert_firing" in types_ and "ctxmon_host_cpus" in types_


def test_alert_metric_matchers_reach_the_promql(monkeypatch):
    """An alert metric that is one label value of its family (one resource) selects
    it in the generated rules."""
    import dataclasses

    from alerts import promrules

    m = dataclasses.replace(catalog.ALERT_METRIC["limit_hits"], name="pids_hits",
                            matchers=(("resource", "pids"),))
    monkeypatch.setitem(catalog.ALERT_METRIC, "pids_hits", m)
    monkeypatch.setitem(promrules._COUNTER_SERIES, "pids_hits",
                        promrules._COUNTER_SERIES["limit_hits"])
    expr = promrules.value_expr("pids_hits", False, ['context="web"'], 300)
    assert expr == ('sum without(resource) (rate(ctxmon_context_limit_hits_total'
                    '{context="web", resource="pids"}[5m]))')
    plain = promrules.value_expr("limit_hits", False, ['context="web"'], 300)
    assert "pids" not in plain
