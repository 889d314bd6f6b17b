"""exporters.textformat writes exactly what prometheus_client's generate_latest writes."""

from __future__ import annotations

import prometheus_client
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from exporters.prometheus import SelfMetrics, SnapshotCollector, build_registry
from exporters.textformat import TextFormatter
from test_prometheus import FULL, ctx, iface, snap

HOSTILE = ['plain', 'quo"te', 'back\\slash', 'new\nline', 'tab\tand ü', '\ufffd raw', '']


class Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def reference(families) -> bytes:
    return prometheus_client.generate_latest(Fixed(families))


def families(k: float):
    c = CounterMetricFamily("x_cpu_seconds", "CPU\\ with \n newline in help",
                            labels=("context", "mode"))
    g = GaugeMetricFamily("x_bytes", "bytes", labels=("context",))
    for i, name in enumerate(HOSTILE):
        c.add_metric([name, "user"], 1.5 * i + k)
        g.add_metric([name], (i + 1) * 10 ** (i + 3) + k)  # 1e3 .. large: Go's exponents
    plain = GaugeMetricFamily("x_up", "no labels", value=1)
    odd = GaugeMetricFamily("x_odd", "special values", labels=("v",))
    for v in (float("inf"), float("-inf"), float("nan"), -0.0, 1e-7, 123456789.0, 2 ** 70,
              0, 5, 999_999, 1_000_000, 123_456_789, -3, True):
        odd.add_metric([repr(v)], v)
    return [c, g, plain, odd]


def test_same_bytes_as_generate_latest_over_renderings():
    f = TextFormatter()
    for k in (0, 1, 2):  # the second and third renderings use the kept prefixes
        fams = families(k)
        assert f.render(fams) == reference(fams)


def test_series_that_go_away_are_dropped_from_the_cache():
    f = TextFormatter()
    f.render(families(0))
    small = [GaugeMetricFamily("x_up", "no labels", value=2)]
    assert f.render(small) == reference(small)
    assert len(f._prefixes) == 1


def test_other_shapes_fall_back_to_the_reference():
    h = HistogramMetricFamily("x_h", "h", buckets=[("1", 1), ("+Inf", 2)], sum_value=3)
    info = InfoMetricFamily("x_i", "i", value={"a": "b"})
    stamped = GaugeMetricFamily("x_t", "t")
    stamped.add_metric([], 1, timestamp=12.5)
    created = CounterMetricFamily("x_c", "c", value=1, created=100.0)
    fams = [h, info, stamped, created] + families(0)
    assert TextFormatter().render(fams) == reference(fams)


def test_the_collectors_exposition_is_generate_latests_text():
    s = snap(FULL, ctx("a\"b\\c\nd", ctx_id="7", processes=3),
             host_interfaces=(iface("eth0", *range(8)),))
    col = SnapshotCollector(lambda: s, lambda: SelfMetrics(polls_total=3), version="1.0")
    reg = build_registry(col, process_metrics=False)
    assert b"".join(reg.exposition()) == prometheus_client.generate_latest(reg)
