"""Pressure stall information (PSI) per context, end to end through the catalog: the
cgroup source reads `<resource>.pressure`, and the counters, the RRD file, the graph
and the alert metric all come from the catalog's declarations."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import rrdtool
from factories import FakeClock, context, snapshot, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collector import catalog
from collector.cgroup import CgroupSource, parse_pressure
from collector.procfs import ErrorCounts, ParseError, ProcStat
from collector.sampler import Sampler
from collector.source import ContextIdentity
from exporters.prometheus import SelfMetrics, SnapshotCollector, build_registry
from exporters.rrd import RrdSink, rrd_path

CPU_V5_13 = ("some avg10=12.50 avg60=8.00 avg300=2.10 total=4500000\n"
             "full avg10=0.00 avg60=0.00 avg300=0.00 total=1250\n")
MEMORY = ("some avg10=0.00 avg60=0.00 avg300=0.00 total=7000\n"
          "full avg10=0.00 avg60=0.00 avg300=0.00 total=3000\n")
CPU_OLD = "some avg10=1.00 avg60=1.00 avg300=1.00 total=2000000\n"  # before 5.13: no full

WAITING = "ctxmon_context_pressure_waiting_seconds"
STALLED = "ctxmon_context_pressure_stalled_seconds"


# ----------------------------------------------------------------------- parsing


def test_parse_pressure_totals_in_seconds():
    assert parse_pressure(CPU_V5_13) == {"some": 4.5, "full": 0.00125}
    assert parse_pressure(CPU_OLD) == {"some": 2.0}


@pytest.mark.parametrize("text", [
    "", "full avg10=0 total=1\n", "some avg10=0.00 avg60=0.00\n", "some total=-5\n",
    "some total=1e6\n", "some total=1\nsome total=2\n", "some total=1\nhalf total=2\n",
    "some avg10 total=1\n", "some total=٣\n", f"some total={1 << 63}\n",
])
def test_parse_pressure_refuses_what_the_kernel_never_writes(text):
    with pytest.raises(ParseError):
        parse_pressure(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="somefulavg1036=. total\n0123456789x", max_size=120))
def test_parse_pressure_returns_sane_totals_or_a_parse_error(text):
    try:
        out = parse_pressure(text)
    except ParseError:
        return
    assert set(out) <= {"some", "full"} and "some" in out
    assert all(math.isfinite(v) and v >= 0 for v in out.values())


# ------------------------------------------------------------ a recorded cgroup tree


def _write(d, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


def _accounting(tmp_path, cg, path: str, key: str = "0::"):
    src = CgroupSource(str(tmp_path / "proc"), cgroup_root=str(cg))
    (tmp_path / "proc/1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc/1/cgroup").write_text(f"{key}/{path}\n")
    errors = ErrorCounts()
    (ident,) = src.assign([ProcStat(1, 1000, 0, 0, 0, 0, 1, 0, 0)], errors)
    return src.accounting(ident, errors), errors


def test_a_v2_cgroup_gives_each_resources_totals(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, {"cgroup.controllers": "cpu io memory\n", "cgroup.procs": ""})
    _write(cg / "app.service", {"cpu.stat": "user_usec 1\nsystem_usec 1\n",
                                "cpu.pressure": CPU_V5_13, "memory.pressure": MEMORY,
                                "io.pressure": "some total=x\n"})
    acct, errors = _accounting(tmp_path, cg, "app.service")
    key = catalog.pressure_key
    assert {k: v for k, v in acct.figures.items() if k.startswith("pressure_")} == {
        key("cpu", "some"): 4.5, key("cpu", "full"): 0.00125,
        key("memory", "some"): 0.007, key("memory", "full"): 0.003}
    assert errors["cgroup"] == 1  # the bad io.pressure, and only that file is lost


def test_a_v1_only_cgroup_has_no_pressure(tmp_path):
    cg = tmp_path / "cg"
    _write(cg / "cpuacct", {"cgroup.procs": ""})
    _write(cg / "cpuacct/lxc/web", {"cpuacct.stat": "user 1\nsystem 1\n",
                                    "cpu.pressure": CPU_V5_13})  # not read in v1
    acct, errors = _accounting(tmp_path, cg, "lxc/web", key="2:cpuacct:")
    assert not any(k.startswith("pressure_") for k in acct.figures)
    assert sum(errors.values()) == 0


def test_contexts_without_pressure_have_no_series_no_file_and_no_json(tmp_path):
    """Absent, not zero: a VServer (or v1-only) context exports nothing of PSI."""
    from ctxmon.cli import snapshot_json

    plain = context("guest", source="vserver", xid=40001, key="40001", cgroup=None)
    snap = snapshot(plain, t=1_700_000_000.0)
    text = exposition(snap)
    assert WAITING not in text and STALLED not in text
    sink = RrdSink(str(tmp_path), 60, clock=FakeClock(1_700_000_000.0))
    sink.write(snap)
    assert os.path.exists(rrd_path(sink.directory, "cpu", "guest"))
    assert not os.path.exists(rrd_path(sink.directory, "pressure", "guest"))
    assert snapshot_json(snap)[0]["pressure"] is None


def exposition(snap) -> str:
    me = SelfMetrics()
    return generate_latest(build_registry(SnapshotCollector(lambda: snap, lambda: me),
                                          process_metrics=False)).decode()


def samples(text: str, family: str) -> dict[tuple[str, str], float]:
    return {(s.labels["context"], s.labels["resource"]): s.value
            for fam in text_string_to_metric_families(text) if fam.name == family
            for s in fam.samples}


# ------------------------------------------------------- a real cgroup, contended


def _psi_unavailable(root: str) -> str | None:
    try:
        with open(os.path.join(root, "cpu.pressure")) as f:
            f.read()
    except OSError as e:
        return f"no readable cpu.pressure in {root}: {e.strerror}"
    return None


@pytest.mark.slow
def test_waiting_seconds_grow_under_real_contention(cgroup_factory, cgroup_v2_root, tmp_path):
    reason = _psi_unavailable(cgroup_v2_root)
    if reason:
        pytest.skip(reason)
    cg = cgroup_factory()
    name = os.path.basename(cg.rel)
    # More busy processes than CPUs: at any time some of them wait for a CPU.
    for _ in range(2 * (os.cpu_count() or 1) + 1):
        cg.spawn([sys.executable, "-c", "while True: pass"])
    clock = FakeClock(1_700_000_000.0)
    source = CgroupSource("/proc")
    sampler = Sampler(source, "/proc", clock=clock)
    key = catalog.pressure_key("cpu", "some")
    ident = ContextIdentity(key=cg.rel, name=name, ctx_id="1", source="cgroup", cgroup=cg.rel)
    try:
        first = sampler.sample().context(name)
        assert first is not None
        start = first.figures[key]
        t0 = time.monotonic()
        # Wait on the cgroup's own files (a whole poll scans every process of a
        # possibly busy host), then take one more real poll.
        wait_until(lambda: source.accounting(ident, ErrorCounts()).figures[key] - start >= 0.5,
                   "cpu waiting seconds to grow by 0.5 s", limit=30.0, every=0.25)
        later = sampler.sample().context(name)
        elapsed = time.monotonic() - t0
    finally:
        sampler.close()
    waited = later.figures[key] - start
    assert 0.5 <= waited <= elapsed * (2 * (os.cpu_count() or 1) + 1) + 1
    for r in catalog.PRESSURE_RESOURCES:  # every resource is there, growing or not
        assert later.figures[catalog.pressure_key(r, "some")] >= 0

    # The counters
    # Stored as if polled a minute apart, ending now (so that the day graph has it)
    t1 = int(time.time()) // 60 * 60
    before, after = snapshot(first, t=t1 - 60), snapshot(later, t=t1)
    got = samples(exposition(after), WAITING)
    assert got[(name, "cpu")] == pytest.approx(later.figures[key])
    assert {(name, r) for r in catalog.PRESSURE_RESOURCES} <= set(got)
    assert (name, "cpu") in samples(exposition(after), STALLED)

    # The RRD file: only this context is stored (the machine has other cgroups)
    rrd_dir = tmp_path / "rrd"
    sink = RrdSink(str(rrd_dir), 60, clock=FakeClock(t1))
    sink.write(before)
    sink.write(after)
    assert sink.error_count == 0
    path = rrd_path(sink.directory, "pressure", name)
    info = rrdtool.info(path)
    assert [info[f"ds[{d}].type"] for d in catalog.FILE_KIND["pressure"].ds] == ["DERIVE"] * 6
    (_s, _e, _st), names, rows = rrdtool.fetch(path, "AVERAGE", "--start", str(t1 - 60),
                                               "--end", str(t1))
    cpu_some = [r[names.index("cpu_some")] for r in rows if r[names.index("cpu_some")]]
    # stored as microseconds per second: the waiting growth spread over the 60 s step
    assert cpu_some and cpu_some[-1] == pytest.approx(waited * 1e6 / 60, rel=0.01)

    # The graph on the context's page, as the catalog declares it
    out = tmp_path / "graphs"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[rrd]\ndir = "{rrd_dir}"\nstep = 60\n[graphs]\ndir = "{out}"\n')
    run = subprocess.run([sys.executable, "-m", "ctxmon.cli", "graph", "-c", str(cfg),
                          "--context", name, "--period", "day"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    png = out / "ctx" / name / "pressure-day.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", sorted(os.listdir(png.parent))
    assert "pressure-day.png" in (out / "ctx" / name / "index.html").read_text()
