"""Demand history from a Prometheus server that scrapes ctxmon on many hosts: the host
is the `instance` label. The same figures as from RRD files, one range query each
over the window at the grid's step:

- CPU: `rate(ctxmon_context_cpu_seconds_total[step])` summed over modes (cores);
- memory: the cgroup's charge, `ctxmon_context_resource_usage{resource="memory"}`
  (what cgmem.rrd's `usage` stores), where a context has it, else summed RSS
  `ctxmon_context_memory_rss_bytes`; each the maximum within the step;
- capacity: `ctxmon_host_cpus`, `ctxmon_host_memory_bytes` (the largest seen in the
  window).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request

import logging

import numpy as np

from collector.catalog import OTHER  # the exporter's fold
from exporters.names import loggable

from . import PlanError
from .history import Series

log = logging.getLogger("ctxmon.plan")

TIMEOUT = 60.0
MAX_BYTES = 1 << 30  # a reply larger than this is not what we asked for

CPU = 'sum by (instance, context) (rate(ctxmon_context_cpu_seconds_total[{step}s]))'
# max_over_time over one step less a second: the sample at the step's end only when
# samples lie on the grid, as an RRD row holds (with real scrapes, the whole step).
CGROUP_MEMORY = ('max by (instance, context) (max_over_time('
                 'ctxmon_context_resource_usage{{resource="memory"}}[{within}s]))')
RSS = 'max by (instance, context) (max_over_time(ctxmon_context_memory_rss_bytes[{within}s]))'
CAPACITY = 'max by (instance) (max_over_time({family}[{window}s]))'
FOLDED = 'max by (instance) (max_over_time(ctxmon_contexts_folded[{window}s]))'


def _get(url: str, path: str, params: dict) -> object:
    full = url.rstrip("/") + "/api/v1/" + path
    body = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(full, data=body, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            raw = r.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read(65536)).get("error", e.reason)
        except ValueError:
            detail = e.reason
        raise PlanError(f"Prometheus {url}: {path} failed: HTTP {e.code} {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PlanError(f"Prometheus {url}: unreachable ({reason})") from None
    if len(raw) > MAX_BYTES:
        raise PlanError(f"Prometheus {url}: reply to {path} over {MAX_BYTES >> 20} MiB")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise PlanError(f"Prometheus {url}: {path}: not a Prometheus API reply") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error") if isinstance(answer, dict) else None
        raise PlanError(f"Prometheus {url}: {path} failed: {error or 'not a Prometheus API reply'}")
    return answer.get("data")


def _matrix(url: str, query: str, first: int, end: int, step: int) -> dict[tuple[str, str], np.ndarray]:
    """{(instance, context): values at first, first + step, ..., end (NaN where none)}."""
    data = _get(url, "query_range", {"query": query, "start": first, "end": end, "step": step})
    points = (end - first) // step + 1
    out = {}
    for series in _results(url, data, "matrix"):
        labels = series.get("metric", {})
        instance, context = labels.get("instance"), labels.get("context")
        if not isinstance(instance, str) or not isinstance(context, str):
            continue
        values = np.full(points, np.nan)
        for pair in series.get("values", []):
            try:
                t, v = float(pair[0]), float(pair[1])
            except (TypeError, ValueError, IndexError):
                continue
            i = round((t - first) / step)
            if 0 <= i < points and math.isfinite(v) and v >= 0:
                values[i] = v
        out[(instance, context)] = values
    return out


def _results(url: str, data: object, kind: str) -> list[dict]:
    if not isinstance(data, dict) or data.get("resultType") != kind:
        raise PlanError(f"Prometheus {url}: expected a {kind} result")
    result = data.get("result")
    return [r for r in result if isinstance(r, dict)] if isinstance(result, list) else []


def read_prometheus(url: str, start: int, end: int, step: int
                    ) -> tuple[list[Series], dict[str, tuple[float, float]]]:
    """Every (host, context)'s series in the window (start, end] on a grid of `step`,
    and each host's capacity {instance: (cpus, memory bytes)}."""
    if not url.startswith(("http://", "https://")):
        raise PlanError(f"--prometheus {url!r}: expected http://HOST:PORT or https://...")
    end = end // step * step
    first = start // step * step + step  # the first grid point's end
    if first > end:
        raise PlanError("the window is shorter than one step")
    cpu = _matrix(url, CPU.format(step=step), first, end, step)
    rss = _matrix(url, RSS.format(within=step - 1), first, end, step)
    cgroup = _matrix(url, CGROUP_MEMORY.format(within=step - 1), first, end, step)
    # Where the exporter caps contexts, `other` is the sum of those it folded: not a
    # context that can move as one.
    folded = set()
    data = _get(url, "query", {"query": FOLDED.format(window=end - start), "time": end})
    for r in _results(url, data, "vector"):
        instance = r.get("metric", {}).get("instance")
        if isinstance(instance, str):
            folded.add(instance)
    series = []
    grid_start = first - step
    for (instance, context), values in sorted(cpu.items()):
        if context == OTHER and instance in folded:
            log.warning("%s: context %s left out: it sums the contexts the exporter's "
                        "max_contexts cap folds", loggable(instance), OTHER)
            continue
        mem = cgroup.get((instance, context))
        source = "cgroup"
        if mem is None or np.isnan(mem).all():
            mem, source = rss.get((instance, context)), "rss"
        if mem is None:
            mem = np.zeros(values.size)
        series.append(Series(context, instance, (grid_start, step, values),
                             (grid_start, step, mem), source))
    capacity: dict[str, list[float]] = {}
    for family in ("ctxmon_host_cpus", "ctxmon_host_memory_bytes"):
        data = _get(url, "query", {"query": CAPACITY.format(family=family, window=end - start),
                                   "time": end})
        for r in _results(url, data, "vector"):
            instance = r.get("metric", {}).get("instance")
            try:
                value = float(r["value"][1])
            except (KeyError, TypeError, ValueError, IndexError):
                continue
            if isinstance(instance, str) and math.isfinite(value) and value > 0:
                capacity.setdefault(instance, [math.nan, math.nan])
                capacity[instance][family == "ctxmon_host_memory_bytes"] = value
    caps = {i: (c[0], c[1]) for i, c in capacity.items() if not any(math.isnan(x) for x in c)}
    if not series:
        raise PlanError(f"Prometheus {url}: no ctxmon_context_cpu_seconds_total series in the window")
    return series, caps
