"""The alert series for the exporter's Prometheus registry."""

from __future__ import annotations

import os
from typing import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporters.names import clean_text

from .engine import AlertEngine


def alert_metric_family(engine: AlertEngine | None) -> Metric:
    """`ctxmon_alert_firing{alert,context,severity} 1` per firing alert."""
    fam = GaugeMetricFamily(
        "ctxmon_alert_firing",
        "1 for each alert firing in ctxmon's own evaluation of its [alerts] rules.",
        labels=("alert", "context", "severity"))
    for a in (engine.firing() if engine is not None else ()):
        fam.add_metric([a.name, clean_text(a.context), a.severity], 1)
    return fam


def host_cpus_family(cpus: int) -> Metric:
    """`ctxmon_host_cpus`: what the cpu_host rules divide by, on both sides."""
    fam = GaugeMetricFamily("ctxmon_host_cpus", "CPUs of the host (cpu_host alerts are "
                            "a context's CPU use divided by this).")
    fam.add_metric([], cpus)
    return fam


class AlertCollector(Collector):
    """The alert series for a Prometheus registry: firing alerts, the host's CPUs and
    notification failures. `registry.register(AlertCollector(engine))`."""

    def __init__(self, get_engine: Callable[[], AlertEngine | None] | AlertEngine,
                 host_cpus: bool = True):
        self.get_engine = get_engine if callable(get_engine) and not isinstance(
            get_engine, AlertEngine) else (lambda: get_engine)
        # False beside a SnapshotCollector, which exports ctxmon_host_cpus itself
        # (catalog): one family must not appear twice in a scrape.
        self.host_cpus = host_cpus

    def describe(self) -> list[Metric]:
        return []  # the names are fixed and unique; no need to collect at registration

    def collect(self) -> Iterable[Metric]:
        engine = self.get_engine()
        yield alert_metric_family(engine)
        if self.host_cpus:
            yield host_cpus_family(engine.cpus if engine is not None else os.cpu_count() or 1)
        fam = CounterMetricFamily("ctxmon_alert_notification_failures",
                                  "Alert notifications that failed, per notifier.",
                                  labels=("notifier",))
        for kind, n in (engine.notification_failures if engine is not None else {}).items():
            fam.add_metric([kind], n)
        yield fam
