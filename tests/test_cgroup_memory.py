"""The cgroup's own memory figures (memory.current / usage_in_bytes, memory.stat anon
and file): read by the cgroup source, stored in `cgmem.rrd`, exported, and in
`stat --json`; on recorded files and on a real cgroup whose processes share pages."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import rrdtool
from factories import FakeClock
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collector import catalog
from collector.cgroup import CgroupSource
from collector.procfs import ErrorCounts, ProcStat
from collector.sampler import Sampler
from exporters.prometheus import SelfMetrics, SnapshotCollector, build_registry
from exporters.rrd import RrdSink, rrd_path

MIB = 1 << 20
V1_MEMORY = "/sys/fs/cgroup/memory"


def _write(d, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


def _proc(pid: int) -> ProcStat:
    return ProcStat(pid, 1000, 0, 0, 0, 0, 1, 0, 0)


def _accounting(tmp_path, cg, path: str):
    src = CgroupSource(str(tmp_path / "proc"), cgroup_root=str(cg))
    (tmp_path / "proc/1").mkdir(parents=True, exist_ok=True)
    key = "0::" if src.version == 2 else "4:memory:"
    (tmp_path / "proc/1/cgroup").write_text(f"{key}/{path}\n2:cpuacct:/{path}\n")
    errors = ErrorCounts()
    (ident,) = src.assign([_proc(1)], errors)
    return src.accounting(ident, errors), errors


V2_STAT = "anon 7340032\nfile 3145728\nkernel 65536\nshmem 0\npgfault 1200\n"


def test_v2_memory_stat_gives_anon_and_file(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, {"cgroup.controllers": "cpu memory pids\n", "cgroup.procs": ""})
    _write(cg / "app.service", {"memory.current": "11534336\n", "memory.stat": V2_STAT})
    acct, errors = _accounting(tmp_path, cg, "app.service")
    assert dict(acct.figures) == {catalog.MEMORY_ANON: 7340032, catalog.MEMORY_FILE: 3145728}
    assert [(r.resource, r.current) for r in acct.limits] == [("memory", 11534336)]
    assert sum(errors.values()) == 0


def test_v1_memory_stat_takes_the_hierarchical_totals(tmp_path):
    cg = tmp_path / "cg"
    for h in ("cpuacct", "memory"):
        _write(cg / h, {"cgroup.procs": ""})
    _write(cg / "cpuacct/lxc/web", {"cpuacct.stat": "user 1\nsystem 1\n"})
    _write(cg / "memory/lxc/web", {
        "memory.usage_in_bytes": "9437184\n",
        # own rss/cache are this cgroup's only; total_* include children, as usage does
        "memory.stat": "cache 4096\nrss 8192\ntotal_cache 2097152\ntotal_rss 6291456\n",
    })
    acct, errors = _accounting(tmp_path, cg, "lxc/web")
    assert dict(acct.figures) == {catalog.MEMORY_ANON: 6291456, catalog.MEMORY_FILE: 2097152}
    assert sum(errors.values()) == 0


def test_a_bad_memory_stat_is_counted_and_leaves_no_figures(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, {"cgroup.controllers": "memory\n", "cgroup.procs": ""})
    _write(cg / "app.service", {"memory.current": "4096\n", "memory.stat": "anon lots\n"})
    acct, errors = _accounting(tmp_path, cg, "app.service")
    assert dict(acct.figures) == {}
    assert errors["cgroup"] == 1
    assert [(r.resource, r.current) for r in acct.limits] == [("memory", 4096)]


def test_without_a_memory_controller_there_is_no_file_and_no_series(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, {"cgroup.controllers": "cpu\n", "cgroup.procs": ""})
    _write(cg / "app.service", {"cpu.stat": "user_usec 1\nsystem_usec 1\n"})
    acct, errors = _accounting(tmp_path, cg, "app.service")
    assert dict(acct.figures) == {} and acct.limits == ()
    assert sum(errors.values()) == 0


# ------------------------------------------------------------------ a real cgroup

# Touches 64 MiB, then forks 7 children that keep the pages shared (copy-on-write,
# never written again): summed RSS counts them 8 times, the cgroup once.
SHARED_64M = (
    "import os, sys, time\n"
    "b = bytearray(64 << 20)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\n"
    "for _ in range(7):\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(600); os._exit(0)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def _join(*procs_files: str) -> None:
    for f in procs_files:
        fd = os.open(f, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


@pytest.fixture
def v1_memory_twin(cgroup_factory):
    """A v2 test cgroup and a v1 memory cgroup of the same path (a hybrid host's
    memory controller lives in v1), removed at teardown."""
    if not os.path.isfile(os.path.join(V1_MEMORY, "memory.usage_in_bytes")):
        pytest.skip("no v1 memory controller at /sys/fs/cgroup/memory")
    cg = cgroup_factory()
    v1 = os.path.join(V1_MEMORY, cg.rel)
    os.makedirs(v1)
    try:
        yield cg, v1
    finally:
        cg.kill_all()
        try:
            os.rmdir(v1)
        except OSError:
            pass


def test_a_real_cgroup_sharing_pages_is_charged_once(v1_memory_twin, tmp_path):
    cg, v1 = v1_memory_twin
    procs = (os.path.join(cg.path, "cgroup.procs"), os.path.join(v1, "cgroup.procs"))
    p = subprocess.Popen([sys.executable, "-c", SHARED_64M], stdout=subprocess.PIPE, text=True,
                         preexec_fn=lambda: _join(*procs))
    cg.popens.append(p)
    assert p.stdout.readline().strip() == "ready"
    name = os.path.basename(cg.rel)

    sampler = Sampler(CgroupSource("/proc"), "/proc", clock=FakeClock(1_700_000_000.0))
    try:
        snap = sampler.sample()
    finally:
        sampler.close()
    ctx = snap.context(name)
    assert ctx is not None and ctx.processes == 8
    charged = next(r.current for r in ctx.limits if r.resource == "memory")
    anon = ctx.figures[catalog.MEMORY_ANON]
    assert 64 * MIB <= charged <= 160 * MIB, charged
    assert 60 * MIB <= anon <= charged, (anon, charged)
    assert ctx.figures[catalog.MEMORY_FILE] >= 0
    assert ctx.rss_bytes >= 8 * 60 * MIB  # summed RSS: the shared pages 8 times over
    assert charged < ctx.rss_bytes / 3

    sink = RrdSink(str(tmp_path / "rrd"), 60, clock=FakeClock(1_700_000_000.0))
    # Only this context and the host's: other cgroups on the machine are not ours to
    # store (a busy host has thousands, at 0.7 MB of files each).
    sink.write(dataclasses.replace(snap, contexts=(ctx, snap.context("host")),
                                   host_interfaces=()))
    assert sink.error_count == 0
    path = rrd_path(sink.directory, "cgmem", name)
    info = rrdtool.info(path)
    assert [info[f"ds[{d}].type"] for d in ("usage", "anon", "file")] == ["GAUGE"] * 3
    last = rrdtool.lastupdate(path)["ds"]
    assert (last["usage"], last["anon"]) == (charged, anon)
    # Contexts without the controller (the host context here) get no such file.
    assert not os.path.exists(rrd_path(sink.directory, "cgmem", "host"))

    me = SelfMetrics()
    text = generate_latest(build_registry(SnapshotCollector(lambda: snap, lambda: me),
                                          process_metrics=False)).decode()
    found = {(s.labels["context"], s.labels["type"]): s.value
             for fam in text_string_to_metric_families(text)
             if fam.name == "ctxmon_context_memory_cgroup_bytes" for s in fam.samples}
    assert found[(name, "anon")] == anon and (name, "file") in found
    assert ("host", "anon") not in found  # absent, not 0, without the controller
    from ctxmon.cli import snapshot_json
    row = next(o for o in snapshot_json(snap) if o["context"] == name)
    assert row["cgroup_memory"] == {"charged_bytes": charged, "anon_bytes": anon,
                                    "file_bytes": ctx.figures[catalog.MEMORY_FILE]}
    json.dumps(row)


def test_a_graph_run_over_a_context_with_cgroup_memory_files(tmp_path):
    """Files of kinds the pages do not tabulate (cgmem.rrd) never break a graph run
    (they did: the contexts table took every file for a tasks file)."""
    import time

    from factories import context, snapshot

    from collector.snapshot import LimitRow

    rrd_dir, out = tmp_path / "rrd", tmp_path / "graphs"
    now = int(time.time()) // 60 * 60
    sink = RrdSink(str(rrd_dir), 60)
    for k in range(5):
        sink.write(snapshot(context("web", limits=(LimitRow("memory", "bytes", 1000),),
                                    user=float(k), processes=3, threads=4,
                                    figures={catalog.MEMORY_ANON: 600,
                                             catalog.MEMORY_FILE: 300}),
                            t=now - 300 + 60 * k))
    assert os.path.exists(rrd_path(str(rrd_dir), "cgmem", "web"))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[rrd]\ndir = "{rrd_dir}"\nstep = 60\n[graphs]\ndir = "{out}"\n')
    run = subprocess.run([sys.executable, "-m", "ctxmon.cli", "graph", "-c", str(cfg),
                          "--period", "day"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    index = (out / "index.html").read_text()
    assert 'href="ctx/web/index.html"' in index
    assert "<td>3</td><td>4</td>" in index  # the tasks file's figures, not another's
