"""Golden outputs: what users and their tools see, compared in full with checked-in files.

A renamed series, a changed help text, a label, an RRD file name or data source, or a
`stat --json` key shows here as a diff of a file in `tests/golden/`, so it is seen
in review instead of slipping through. The inputs are the recorded trees
(`tests/fixtures/vs20`, `vs23`) through the real Sampler with a fixed clock, and one
synthetic cgroup snapshot that has what the trees lack (limits with every field,
interfaces, sockets, the `other` fold).

After an intended change, regenerate with
`CTXMON_REGOLD=1 .venv/bin/python -m pytest tests/test_golden.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import rrdtool
from factories import FakeClock, context, iface, snapshot
from prometheus_client.exposition import generate_latest

from collector import catalog
from collector.procfs import ProcessScanner
from collector.sampler import Sampler
from collector.snapshot import LimitRow, Snapshot, SocketAccounting
from collector.vserver import VServerSource
from ctxmon.cli import snapshot_json
from exporters.prometheus import SelfMetrics, SnapshotCollector, build_registry
from exporters.rrd import RrdSink

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
T = 1_700_000_000.0  # the fixed clock


def fixture_snapshot(tree: str) -> Snapshot:
    proc = str(FIXTURES / tree / "proc")
    source = VServerSource(proc, page_size=4096, clock=FakeClock(T))
    sampler = Sampler(source, proc, clock=FakeClock(T), scanner=ProcessScanner(proc, max_open=0))
    try:
        return sampler.sample()
    finally:
        sampler.close()


def synthetic_snapshot(t: float = T) -> Snapshot:
    limits = (
        LimitRow("memory", "bytes", 300 << 20, maximum=400 << 20, soft=256 << 20,
                 hard=512 << 20, hits=3),
        LimitRow("pids", "count", 12, maximum=20, hard=100, hits=0),
        LimitRow("RSS", "bytes", 1 << 20, minimum=4096),
    )
    sockets = (SocketAccounting("INET", 5, 500, 6, 600, 1, 10),
               SocketAccounting("UNIX", 1, 100, 2, 200, 0, 0))
    return snapshot(
        context("web", ctx_id="a1", processes=4, threads=9, vsz=8 << 20, rss=3 << 20, user=12.5,
                system=2.25, limits=limits, start_time=t - 3600, uptime_seconds=3600.0,
                interfaces=(iface("eth0", 1000, 2000),),
                figures={catalog.MEMORY_ANON: 200 << 20, catalog.MEMORY_FILE: 90 << 20,
                         **{catalog.pressure_key(r, line): v for r, line, v in (
                             ("cpu", "some", 12.5), ("cpu", "full", 0.25),
                             ("memory", "some", 0.5), ("memory", "full", 0.125),
                             ("io", "some", 3.0), ("io", "full", 1.5))}}),
        context("db", ctx_id="b2", processes=2, threads=2, vsz=4 << 20, rss=1 << 20, user=3.0,
                system=1.0, sockets=sockets, source="vserver", xid=40001, key="40001",
                cgroup=None),
        context("cron", ctx_id="c3", user=0.5, system=0.25, rss=4096, vsz=8192),
        context("idle", ctx_id="d4", processes=0, threads=0),
        t=t,
        host_interfaces=(iface("lo", 50, 50), iface("eth0", 10_000, 20_000, rx_errors=1, tx_drops=2)),
        errors={"cgroup": 2},
        host_cpus=4, host_memory_bytes=8 << 30,
    )


def exposition(snap: Snapshot, max_contexts: int | None = None) -> str:
    me = SelfMetrics(poll_duration_seconds=0.125, last_poll_timestamp_seconds=T + 1,
                     rrd_write_errors=1, polls_total=7, missed_polls_total=1,
                     poll_failures_total=0)
    collector = SnapshotCollector(lambda: snap, lambda: me, max_contexts=max_contexts,
                                  version="0.0-golden")
    return generate_latest(build_registry(collector, process_metrics=False)).decode()


def compare(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CTXMON_REGOLD"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    expected = path.read_text()
    assert text == expected, f"{name} differs from tests/golden/{name} (see the module doc)"


@pytest.mark.parametrize("tree", ["vs20", "vs23"])
def test_metrics_of_a_recorded_tree(tree):
    compare(f"metrics-{tree}.prom", exposition(fixture_snapshot(tree)))


def test_metrics_of_a_synthetic_snapshot_with_every_series():
    compare("metrics-synthetic.prom", exposition(synthetic_snapshot()))


def test_metrics_with_the_other_fold():
    compare("metrics-synthetic-cap2.prom", exposition(synthetic_snapshot(), max_contexts=2))


@pytest.mark.parametrize("tree", ["vs20", "vs23"])
def test_stat_json_of_a_recorded_tree(tree):
    got = json.dumps(snapshot_json(fixture_snapshot(tree)), indent=1, ensure_ascii=True) + "\n"
    compare(f"stat-{tree}.json", got)


def test_stat_json_of_a_synthetic_snapshot():
    got = json.dumps(snapshot_json(synthetic_snapshot()), indent=1, ensure_ascii=True) + "\n"
    compare("stat-synthetic.json", got)


def test_rrd_layout(tmp_path):
    """Every file the sink makes: its path under the directory, step, data sources
    with type, heartbeat and bounds, and archives."""
    sink = RrdSink(str(tmp_path), 60, clock=FakeClock(T))
    sink.write(synthetic_snapshot(T))
    sink.write(synthetic_snapshot(T + 60))
    assert sink.error_count == 0
    lines = []
    for dirpath, _dirs, files in sorted(os.walk(tmp_path)):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            if not f.endswith(".rrd"):  # host/capacity.json (its hostname is this machine's)
                data = json.loads(open(path).read())
                lines.append(f"{os.path.relpath(path, tmp_path)} cpus={data['cpus']} "
                             f"memory_bytes={data['memory_bytes']} keys={sorted(data)}")
                continue
            info = rrdtool.info(path)
            lines.append(os.path.relpath(path, tmp_path))
            lines.append(f"  step {info['step']}")
            keys = sorted((k for k in info if k.startswith("ds[") or k.startswith("rra[")),
                          key=_info_order)
            for k in keys:
                if k.endswith((".last_ds", ".value", ".unknown_sec", ".cur_row")) or ".cdp_prep" in k:
                    continue  # values and librrd's random start row, not layout
                lines.append(f"  {k} = {info[k]}")
    compare("rrd-layout.txt", "\n".join(lines) + "\n")


def _info_order(key: str) -> tuple:
    head, _, rest = key.partition("].")
    kind, _, index = head.partition("[")
    return (kind, int(index) if index.isdigit() else 0, index, rest)
