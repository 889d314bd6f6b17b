"""`ctxmon plan`: placement against an exhaustive search, anti-correlated packing, oversize
contexts, pins, move limits, what-if, pages, and bad input — on real RRD files.

Every constraint is recomputed here from the series the test wrote (the planner's own
figures are not trusted): per host, the p-th percentile (nearest rank) of the summed
CPU series under target x CPUs, its maximum under the CPUs, the memory peaks' sum
under target x memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from planchecks import exhaustive_hosts, fits, random_instance

from planner.demo import write_capacity, write_context
from planner.model import Demand, GiB, Host, Problem, Targets
from planner.place import optimise

STEP = 3600
DAYS = 7
POINTS = DAYS * 24
END = 1_700_000_000 // 86400 * 86400  # a fixed midnight, UTC
START = END - POINTS * STEP


def run_plan(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "plan", "--end", str(END), "--days", str(DAYS), *args],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


# ------------------------------------------------------------- small instances




def test_small_instances_reach_the_exhaustive_optimum():
    rng = np.random.default_rng(7)
    tg = Targets()
    checked = 0
    while checked < 25:
        problem = random_instance(rng, int(rng.integers(4, 10)), int(rng.integers(2, 5)))
        optimum = exhaustive_hosts(problem, tg)
        if optimum is None:
            continue  # no assignment places everything: not an instance for this test
        checked += 1
        placement = optimise(problem, tg)
        assert placement.unplaced == []
        for h in problem.hosts:
            members = [d for d in problem.contexts if placement.assign[d.name] == h.name]
            assert fits([d.cpu for d in members], [d.memory.max() for d in members], h, tg), h
        assert len(placement.hosts_used()) == optimum


def test_an_instance_the_first_fit_alone_gets_wrong_still_reaches_the_optimum():
    # Sizes 5,4,4,3,3,3 on 2 hosts of 11 (target 1.0): first fit decreasing puts 5+4
    # on the first host and needs 3; the optimum is 5+3+3 / 4+4+3.
    tg = Targets(100, 1.0, 1.0)
    hosts = [Host(f"h{j}", 11.0, 100 * GiB) for j in range(3)]
    contexts = [Demand(f"c{i}", "h0", np.full(8, float(s)), np.full(8, GiB), 8 * 900.0)
                for i, s in enumerate((5, 4, 4, 3, 3, 3))]
    placement = optimise(Problem(0, 900, hosts, contexts), tg)
    assert len(placement.hosts_used()) == 2 and placement.unplaced == []


# ---------------------------------------------------------------- RRD history


def day_night(peak_hour: float, high: float, low: float) -> np.ndarray:
    t = START + STEP * (np.arange(POINTS) + 1) - STEP / 2
    hours = (t % 86400) / 3600
    d = np.minimum(np.abs(hours - peak_hour), 24 - np.abs(hours - peak_hour))
    return np.where(d <= 4, high, low)


def write_host(root, name: str, cpus: float, mem: float,
               contexts: dict[str, tuple[np.ndarray, float]] | None = None,
               capacity: bool = True) -> str:
    d = str(root / name)
    os.makedirs(d, exist_ok=True)
    if capacity:
        write_capacity(d, cpus, mem, name)
    for ctx, (cpu, memory) in (contexts or {}).items():
        write_context(d, ctx, START, STEP, cpu, np.full(POINTS, memory), rows=POINTS + 10)
    return d


@pytest.fixture
def day_and_night(tmp_path):
    """Two day workloads and two night ones, each on its own 8-CPU host: peaks of 5
    cores, so peak sizing (6.4 cores per host at 80 %) needs a host each, while a day
    and a night one fit together."""
    series = {"office1": (day_night(13, 5.0, 0.4), 4 * GiB),
              "office2": (day_night(13, 5.0, 0.5), 4 * GiB),
              "backup1": (day_night(1, 5.0, 0.3), 4 * GiB),
              "backup2": (day_night(1, 5.0, 0.6), 4 * GiB)}
    history = []
    for n, (ctx, s) in enumerate(sorted(series.items())):
        d = write_host(tmp_path, f"host{n}", 8, 32 * GiB, {ctx: s})
        history += ["--history", f"host{n}={d}"]
    return history, series


def check_plan(doc: dict, series: dict[str, tuple[np.ndarray, float]], tg: Targets) -> None:
    placed = [c for h in doc["hosts"] for c in h["contexts"]]
    assert sorted(placed + doc["unplaced"]) == sorted(series)
    assert len(placed) == len(set(placed))
    for h in doc["hosts"]:
        host = Host(h["name"], h["cpus"], h["memory_bytes"])
        cpu = [series[c][0] for c in h["contexts"]]
        assert fits(cpu, [series[c][1] for c in h["contexts"]], host, tg), h
        if cpu:
            total = np.sum(cpu, axis=0)
            assert h["cpu_peak_cores"] == pytest.approx(total.max(), rel=1e-6)
            assert h["cpu_percentile_cores"] == pytest.approx(
                np.percentile(total, tg.percentile, method="inverted_cdf"), rel=1e-6)


def test_anti_correlated_contexts_are_packed_together(day_and_night):
    history, series = day_and_night
    doc = json.loads(run_plan(*history, "--json").stdout)
    assert set(doc) == {"hosts", "moves", "unplaced", "peak_sizing"}
    used = [h for h in doc["hosts"] if h["contexts"]]
    assert len(used) == 2
    assert doc["peak_sizing"]["hosts_needed"] == 4
    for h in used:  # one day and one night workload each
        assert sorted(c[:-1] for c in h["contexts"]) == ["backup", "office"]
    check_plan(doc, series, Targets())
    assert len(doc["moves"]) == 2
    for m in doc["moves"]:
        assert set(m) == {"context", "from", "to"}


def test_text_output_names_hosts_moves_and_the_saving(day_and_night):
    history, _ = day_and_night
    out = run_plan(*history).stdout
    assert "Hosts needed: 2 (time-aligned p99), 2 moves; sizing by each context's own peak: 4 hosts" in out
    assert "Moves (2):" in out
    assert "4 with the whole window" in out


def test_oversize_context_is_unplaced_not_split(tmp_path):
    series = {"huge": (np.full(POINTS, 10.0), GiB), "small": (np.full(POINTS, 1.0), GiB),
              "fat": (np.full(POINTS, 0.5), 40 * GiB)}
    a = write_host(tmp_path, "a", 8, 32 * GiB, {"huge": series["huge"], "small": series["small"]})
    b = write_host(tmp_path, "b", 8, 32 * GiB, {"fat": series["fat"]})
    doc = json.loads(run_plan("--history", f"a={a}", "--history", f"b={b}", "--json").stdout)
    assert doc["unplaced"] == ["fat", "huge"]
    check_plan(doc, series, Targets())
    assert [h["contexts"] for h in doc["hosts"]] == [["small"], []]
    out = run_plan("--history", f"a={a}", "--history", f"b={b}").stdout
    assert "Unplaced (2), fit on no host: fat, huge" in out


def test_a_new_host_keep_and_max_moves(day_and_night, tmp_path):
    history, series = day_and_night
    # One big new host takes everything...
    doc = json.loads(run_plan(*history, "--host", "big=32,128GiB", "--json").stdout)
    big = next(h for h in doc["hosts"] if h["name"] == "big")
    assert sorted(big["contexts"]) == sorted(series) and len(doc["moves"]) == 4
    # ... but a pinned context stays where it is pinned,
    doc = json.loads(run_plan(*history, "--host", "big=32,128GiB", "--keep", "office1=host2",
                              "--json").stdout)
    where = {c: h["name"] for h in doc["hosts"] for c in h["contexts"]}
    assert where["office1"] == "host2"
    check_plan(doc, series, Targets())
    # ... and no more moves than allowed.
    for n in (0, 1):
        doc = json.loads(run_plan(*history, "--max-moves", str(n), "--json").stdout)
        assert len(doc["moves"]) <= n
        check_plan(doc, series, Targets())
    doc = json.loads(run_plan(*history, "--max-moves", "2", "--json").stdout)
    assert len(doc["moves"]) == 2 and sum(1 for h in doc["hosts"] if h["contexts"]) == 2


def test_what_if_moves_report_before_and_after(day_and_night):
    history, series = day_and_night
    # host0 runs backup1, host1 backup2: moving backup2 next to backup1 overloads host0
    doc = json.loads(run_plan(*history, "--move", "backup2=host0", "--json").stdout)
    assert doc["moves"] == [{"context": "backup2", "from": "host1", "to": "host0"}]
    h0 = doc["hosts"][0]
    assert h0["contexts"] == ["backup1", "backup2"]
    total = series["backup1"][0] + series["backup2"][0]
    assert h0["cpu_peak_cores"] == pytest.approx(total.max())
    out = run_plan(*history, "--move", "backup2=host0").stdout
    assert "OVER TARGET" in out
    assert "before: p99 5.00, peak 5.00" in out and "after: p99 10.00, peak 10.00 at 2023-11-07 01:00 UTC" in out


def test_html_has_one_png_per_host(day_and_night, tmp_path):
    history, _ = day_and_night
    run_plan(*history, "--html", str(tmp_path / "page"))
    files = sorted(os.listdir(tmp_path / "page"))
    assert files == ["host-000.png", "host-001.png", "host-002.png", "host-003.png", "index.html"]
    for f in files[:-1]:
        with open(tmp_path / "page" / f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.count("<img ") == 4 and "Hosts needed: 2" in page


def test_too_little_history_is_refused(tmp_path):
    young = np.full(POINTS, np.nan)
    young[-11:] = 1.0  # 10 hours: the first point has no rate yet
    a = write_host(tmp_path, "a", 8, 32 * GiB, {"old": (np.full(POINTS, 1.0), GiB),
                                                "young": (young, GiB)})
    r = run_plan("--history", f"a={a}", "--json")
    doc = json.loads(r.stdout)
    assert [h["contexts"] for h in doc["hosts"]] == [["old"]]
    assert "young refused: only 10.0 h of history (less than 1.0 d)" in r.stderr
    r = run_plan("--history", f"a={a}", "--keep", "young=a", check=False)
    assert r.returncode == 2
    assert r.stderr.strip().endswith("no context 'young' in the history (only 10.0 h of history "
                                      "(less than 1.0 d))")


# ------------------------------------------------------------------ bad input


def one_line_exit_2(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctxmon: plan: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_input_is_one_line_exit_2(tmp_path, day_and_night, capsys):
    """In-process (`ctxmon.cli.main`, the code `python -m ctxmon.cli` runs): a dozen
    interpreter starts would only add time."""
    from ctxmon.cli import main

    def plan(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        rc = main(["plan", "--end", str(END), "--days", str(DAYS), *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err)

    history, _ = day_and_night
    one_line_exit_2(plan("--history", f"x={tmp_path / 'missing'}"), "x:", "no such directory")
    os.makedirs(tmp_path / "empty")
    one_line_exit_2(plan("--history", f"x={tmp_path / 'empty'}"), "no RRD files")
    os.makedirs(tmp_path / "emptyctx" / "ctx")
    one_line_exit_2(plan("--history", f"x={tmp_path / 'emptyctx'}"), "no context has a cpu.rrd")
    nocap = write_host(tmp_path, "nocap", 8, 32 * GiB, {"w": (np.full(POINTS, 1.0), GiB)},
                       capacity=False)
    one_line_exit_2(plan("--history", f"nocap={nocap}"),
                    "host nocap has no capacity", "--host nocap=CPUS,MEMORY")
    # ... which --host supplies
    assert plan("--history", f"nocap={nocap}", "--host", "nocap=8,32GiB").returncode == 0
    one_line_exit_2(plan(*history, "--keep", "nobody=host0"), "--keep nobody=host0: no context 'nobody'")
    one_line_exit_2(plan(*history, "--move", "nobody=host0"), "--move nobody=host0: no context 'nobody'")
    one_line_exit_2(plan(*history, "--move", "office1=nowhere"), "no host 'nowhere'")
    one_line_exit_2(plan(*history, "--host", "new=eight,32GiB"), "CPUS 'eight' is not a number")
    one_line_exit_2(plan(*history, "--host", "new=8,lots"), "not a size")
    one_line_exit_2(plan(*history, "--history", "host0=/x"), "given twice")
    badcap = write_host(tmp_path, "badcap", 8, 32 * GiB, {"w": (np.full(POINTS, 1.0), GiB)})
    with open(os.path.join(badcap, "host", "capacity.json"), "w") as f:
        f.write("{")
    one_line_exit_2(plan("--history", f"b={tmp_path / 'badcap'}"), "unreadable capacity file")
    # and through a real process: no config, no history
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "plan"], capture_output=True, text=True)
    one_line_exit_2(r, "give -c FILE")


def test_demo_history_needs_fewer_hosts_than_peak_sizing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "demo-history", str(tmp_path / "demo")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    history = [a for h in ("vs1", "vs2", "vs3")
               for a in ("--history", f"{h}={tmp_path / 'demo' / h}")]
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "plan", *history, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sum(len(h["contexts"]) for h in doc["hosts"]) == 24 and doc["unplaced"] == []
    used = sum(1 for h in doc["hosts"] if h["contexts"])
    assert used == 2 and doc["peak_sizing"]["hosts_needed"] == 4
    # each demo host has a config for `ctxmon graph` that holds
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "check-config", "-c",
                        str(tmp_path / "demo" / "vs1.toml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_memory_is_the_cgroup_figure_where_stored(tmp_path):
    # Summed RSS of a fork-heavy context counts shared pages once per process: 40 GiB
    # would fit nowhere, the kernel's 2 GiB does.
    d = str(tmp_path / "a")
    write_capacity(d, 8, 32 * GiB, "a")
    write_context(d, "forky", START, STEP, np.full(POINTS, 1.0), np.full(POINTS, 40.0 * GiB),
                  rows=POINTS + 10, cgroup_memory=np.full(POINTS, 2.0 * GiB))
    write_context(d, "guest", START, STEP, np.full(POINTS, 1.0), np.full(POINTS, 3.0 * GiB),
                  rows=POINTS + 10)
    r = run_plan("--history", f"a={d}", "--json")
    doc = json.loads(r.stdout)
    assert doc["unplaced"] == []
    assert doc["hosts"][0]["memory_peak_bytes"] == 5 * GiB
    assert "memory: the kernel's cgroup figure for 1, summed RSS for 1" in run_plan(
        "--history", f"a={d}").stdout


# ------------------------------------------------------------ host capacity


def test_host_capacity_parsers():
    from collector.hostinfo import parse_cpu_count, parse_mem_total
    from collector.procfs import ParseError

    assert parse_cpu_count("cpu  1 2 3\ncpu0 1 2 3\ncpu1 1 2\ncpu7 1\nintr 5\n") == 3
    assert parse_mem_total("MemTotal:       16318664 kB\nMemFree: 1 kB\n") == 16318664 * 1024
    for bad in ("cpu  1 2 3\nintr 5\n", ""):
        with pytest.raises(ParseError):
            parse_cpu_count(bad)
    for bad in ("MemFree: 1 kB\n", "MemTotal: -5 kB\n", "MemTotal: 5 MB\n", "MemTotal: x kB\n"):
        with pytest.raises(ParseError):
            parse_mem_total(bad)


def test_the_sink_keeps_the_capacity_that_plan_reads(tmp_path):
    """The RRD sink writes host/capacity.json from the snapshot; `ctxmon plan -c FILE`
    plans this host's [rrd] dir with it (no --host needed)."""
    from factories import context, snapshot

    from exporters.rrd import RrdSink

    rrd_dir = tmp_path / "rrd"
    sink = RrdSink(str(rrd_dir), STEP)
    for n in range(3):
        sink.write(snapshot(context("web", user=3600.0 * n), t=END - (2 - n) * STEP,
                            host_cpus=6, host_memory_bytes=12 << 30))
    assert sink.error_count == 0
    data = json.loads((rrd_dir / "host" / "capacity.json").read_text())
    assert (data["cpus"], data["memory_bytes"]) == (6, 12 << 30)
    # no capacity in a snapshot (a proc tree without meminfo): the file stays as it was
    sink.write(snapshot(context("web", user=3600.0 * 3), t=END + STEP))
    assert json.loads((rrd_dir / "host" / "capacity.json").read_text())["cpus"] == 6
    config = tmp_path / "ctxmon.toml"
    config.write_text(f'[rrd]\ndir = "{rrd_dir}"\nstep = {STEP}\n')
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "plan", "-c", str(config), "--end",
                        str(END), "--days", "0.125", "--min-days", "0", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(h["cpus"], h["memory_bytes"], h["contexts"]) for h in doc["hosts"]] == [
        (6, 12 << 30, ["web"])]
    assert doc["hosts"][0]["cpu_peak_cores"] == pytest.approx(1.0)


def test_hostile_names_never_reach_the_terminal_or_the_page_raw(tmp_path):
    evil = "\x1b[2Jevil<script>/../x"
    a = write_host(tmp_path, "a", 8, 32 * GiB, {evil: (day_night(13, 5.0, 0.4), GiB)})
    b = write_host(tmp_path, "b", 8, 32 * GiB, {evil: (day_night(1, 5.0, 0.4), GiB)})
    history = ["--history", f"a={a}", "--history", f"b={b}"]
    r = run_plan(*history, "--html", str(tmp_path / "page"))
    assert "\x1b" not in r.stdout and "\x1b" not in r.stderr
    # the same name on two hosts: two contexts, told apart by their host
    assert '"\\u001b[2Jevil<script>/../x@a"' in r.stdout
    page = (tmp_path / "page" / "index.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert sorted(os.listdir(tmp_path / "page")) == ["host-000.png", "host-001.png", "index.html"]
    doc = json.loads(run_plan(*history, "--json").stdout)
    assert sorted(c for h in doc["hosts"] for c in h["contexts"]) == [evil + "@a", evil + "@b"]
    assert sum(1 for h in doc["hosts"] if h["contexts"]) == 1  # day + night on one host


def test_the_sampler_reports_this_hosts_capacity():
    from collector.hostinfo import HostCapacity

    cpus, memory = HostCapacity("/proc").get()
    assert cpus == os.cpu_count()
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0.5 * physical <= memory <= physical


def test_hosts_with_other_steps_and_archive_layouts_share_one_grid(tmp_path):
    """Host a keeps 30-minute rows in ctxmon's own archive layout, host b hourly rows in
    one plain archive: the grid is hourly, a's half hours averaged onto it."""
    half = np.tile(np.array([0.5, 3.5]), POINTS)  # 30-minute points: 0.5, 3.5, 0.5 ...
    a = str(tmp_path / "a")
    write_capacity(a, 8, 32 * GiB, "a")
    write_context(a, "fine", START, STEP // 2, half, np.full(2 * POINTS, GiB))
    b = write_host(tmp_path, "b", 8, 32 * GiB, {"coarse": (day_night(13, 4.0, 1.0), GiB)})
    doc = json.loads(run_plan("--history", f"a={a}", "--history", f"b={b}", "--json").stdout)
    hourly = {"fine": (np.full(POINTS, 2.0), GiB), "coarse": (day_night(13, 4.0, 1.0), GiB)}
    check_plan(doc, hourly, Targets())
    used = [h for h in doc["hosts"] if h["contexts"]]
    assert len(used) == 1 and used[0]["cpu_peak_cores"] == pytest.approx(6.0)


def test_a_hosts_own_processes_stay_and_go_with_it(tmp_path):
    """`host` (the cgroup source's own processes) is never moved: its load counts on its
    host while the host stays in use, and leaves with it when the host is emptied."""
    a = write_host(tmp_path, "a", 8, 32 * GiB, {"host": (np.full(POINTS, 0.5), GiB),
                                                "office": (day_night(13, 5.0, 0.4), GiB)})
    b = write_host(tmp_path, "b", 8, 32 * GiB, {"host": (np.full(POINTS, 1.5), GiB),
                                                "backup": (day_night(1, 5.0, 0.4), GiB)})
    history = ["--history", f"a={a}", "--history", f"b={b}"]
    doc = json.loads(run_plan(*history, "--json").stdout)
    used = [h for h in doc["hosts"] if h["contexts"]]
    # b's own 1.5 cores make b the worse place: backup moves to a, b's host goes with b
    assert [(h["name"], h["contexts"]) for h in used] == [("a", ["backup", "host@a", "office"])]
    assert doc["moves"] == [{"context": "backup", "from": "b", "to": "a"}]
    assert doc["unplaced"] == []
    assert used[0]["cpu_peak_cores"] == pytest.approx(
        (day_night(13, 5.0, 0.4) + day_night(1, 5.0, 0.4) + 0.5).max())
    r = run_plan(*history, "--keep", "host@a=b", check=False)
    assert r.returncode == 2 and "a host's own processes" in r.stderr
