"""[traffic] accounting on the graph pages: a context's traffic.rrd gets its
"<name> traffic - by <period>" graph on the context's page (real RRD files, the real
renderer)."""

from __future__ import annotations

import os
import shutil

import pytest

from collector.snapshot import TrafficSample
from ctxmon.config import load_config
from exporters.rrd import RrdSink
from exporters.rrdlayout import list_rrd_files
from graphs.data import mean_known
from graphs.render import ChartBuilder, GraphRun, Painter, make_plan
from tests.factories import FakeClock, context, iface, snapshot

pytestmark = pytest.mark.skipif(shutil.which("rrdtool") is None, reason="rrdtool command not installed")

STEP = 300
T_END = 1_700_000_000 - 1_700_000_000 % STEP


def test_context_page_has_its_traffic_graph(tmp_path):
    root = os.path.realpath(tmp_path)
    config = os.path.join(root, "ctxmon.toml")
    with open(config, "w") as f:
        f.write(f'[collector]\ninterval = "{STEP}s"\n[rrd]\ndir = "rrd"\nstep = "{STEP}s"\n'
                '[graphs]\ndir = "graphs"\n')
    clock = FakeClock(T_END)
    sink = RrdSink(os.path.join(root, "rrd"), STEP, clock=clock)
    rx = tx = 0
    for t in range(T_END - 86400, T_END + 1, STEP):
        clock.now = t
        rx += 2_000_000 * STEP  # 16 Mbit/s in
        tx += 500_000 * STEP  # 4 Mbit/s out
        web = context("web", key="svc/web", cgroup="svc/web",
                      traffic=TrafficSample("cgroup", rx, rx // 1000, tx, tx // 1000))
        quiet = context("quiet", key="svc/quiet", cgroup="svc/quiet")  # not accounted
        # eth0 carries 20 Mbit/s in and 10 out: 4 in and 6 out are no context's; lo is
        # not on the wire.
        host = (iface("eth0", rx * 5 // 4, tx * 5 // 2), iface("lo", rx * 9, tx * 9))
        sink.write(snapshot(web, quiet, t=t, host_interfaces=host))
    assert sink.error_count == 0
    result = GraphRun(load_config(config), Painter(640, 260), clock=lambda: T_END + 7).run(
        periods=("day",))
    assert result.failed == 0
    pages = os.path.join(root, "graphs", "ctx")
    web_dir = next(os.path.join(pages, d) for d in os.listdir(pages) if "web" in d)
    quiet_dir = next(os.path.join(pages, d) for d in os.listdir(pages) if "quiet" in d)
    assert result.rendered >= 3 + 4 + 3  # host; web: cpu mem tasks traffic; quiet: 3
    assert os.path.isfile(os.path.join(web_dir, "traffic-day.png"))
    assert not any(f.startswith("traffic") for f in os.listdir(quiet_dir))
    page = open(os.path.join(web_dir, "index.html"), encoding="utf-8").read()
    assert "<h2>web traffic</h2>" in page and "traffic-day.png" in page
    # The chart: "<name> traffic - by day", In 16 Mbit/s and Out 4 Mbit/s from traffic.rrd.
    plan = make_plan(list_rrd_files(os.path.join(root, "rrd")))
    spec = next(s for specs in plan.context_specs.values() for s in specs
                if s.kind == "ctx-traffic")
    chart = ChartBuilder(600).build(spec, "day", T_END + 7, T_END)
    assert chart.title == "web traffic - by day"
    assert chart.ylabel == "bits per second"
    (rx_row, tx_row) = chart.legend
    assert (rx_row.label, tx_row.label) == ("In", "Out")
    assert rx_row.stats.avg == pytest.approx(16e6, rel=0.01)
    assert tx_row.stats.avg == pytest.approx(4e6, rel=0.01)

    # The host page: "Traffic by context", sent up and received down, the rest of
    # eth0 as its own band.
    index = open(os.path.join(root, "graphs", "index.html"), encoding="utf-8").read()
    assert "<h2>Traffic by context</h2>" in index
    assert os.path.isfile(os.path.join(root, "graphs", "traffic-day.png"))
    host_spec = next(s for s in plan.host_specs if s.kind == "host-traffic")
    chart = ChartBuilder(600).build(host_spec, "day", T_END + 7, T_END)
    assert chart.title == "Traffic by context - by day"
    avg = {(layer.label, layer.below): mean_known(layer.values) for layer in chart.layers}
    assert avg[("web", False)] == pytest.approx(4e6, rel=0.01)
    assert avg[("web", True)] == pytest.approx(16e6, rel=0.01)
    assert avg[("unaccounted", False)] == pytest.approx(6e6, rel=0.01)
    assert avg[("unaccounted", True)] == pytest.approx(4e6, rel=0.01)
    assert [row.label for row in chart.legend] == ["web", "unaccounted"]
