"""Fuzzing every /proc, /proc/virtual and cgroup parser on mutated real-format text.

Seeds are the fixture files (tests/fixtures/vs20, vs23: the kernel's own formats) and,
for cgroup files, text in the kernel's formats; Hypothesis mutates them (bytes flipped,
cut, inserted and deleted, lines dropped, doubled and swapped, numbers replaced by
odd ones) and decodes them as the daemon does (UTF-8 with surrogate escapes, as
procfs.read_text and the cgroup source read kernel text). A parser may only return its values
(with its documented count of bad lines, which then adds up) or raise ParseError;
nothing else may escape. Two whole-tree fuzzes check the same through a Sampler.

Deterministic (derandomize=True, no example database) and bounded by max_examples.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from collector import cgroup, procfs, vserver  # noqa: E402
from factories import one_shot_scan  # noqa: E402
from collector.cgroup import CgroupSource  # noqa: E402
from collector.procfs import ParseError, ProcessScanner, ProcStat  # noqa: E402
from collector.sampler import Sampler  # noqa: E402
from collector.snapshot import InterfaceSample, LimitRow, SocketAccounting  # noqa: E402
from collector.vserver import VServerSource  # noqa: E402

pytestmark = [pytest.mark.slow]

FIXTURES = Path(__file__).parent / "fixtures"
TREES = (FIXTURES / "vs20", FIXTURES / "vs23")


def fuzz(n: int):
    return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fixture_files(pattern: str) -> list[bytes]:
    """The contents of the fixture files matching `pattern` (a regex on the path
    below the tree), in a fixed order."""
    found = []
    for tree in TREES:
        for path in sorted(tree.rglob("*")):
            rel = path.relative_to(tree).as_posix()
            if path.is_file() and re.fullmatch(pattern, rel):
                found.append(path.read_bytes())
    assert found, pattern
    return found


# ---------------------------------------------------------------------- mutation

# Bytes that matter to these formats, and ones that do not belong in them.
ALPHABET = b"0123456789-+ \t\n:/()[]{}.,x=_\"\\\x00\x7f\xff\xc2\xb2"
ODD_NUMBERS = [b"", b"-1", b"-0", b"+5", b"1_0", b"0x1f", b"1e9", b"nan", b"inf", b"\xc2\xb2",
               b"\xd9\xa3", b"99999999999999999999999999999999", b"18446744073709551615",
               b"9223372036854775808", b" ", b"1.5", b"\xff"]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "drop-line",
                                   "double-line", "swap-lines", "number"]))
        n = len(data)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[draw(st.integers(0, n)):]
        elif op == "insert":
            i = draw(st.integers(0, n))
            piece = draw(st.one_of(
                st.binary(max_size=8),
                st.lists(st.sampled_from(list(ALPHABET)), max_size=12).map(bytes),
                st.sampled_from(ODD_NUMBERS)))
            data[i:i] = piece
        elif op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del data[i:i + draw(st.integers(1, 16))]
        elif op in ("drop-line", "double-line", "swap-lines"):
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            if op == "drop-line":
                del lines[i]
            elif op == "double-line":
                lines.insert(i, lines[i])
            else:
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        elif op == "number":
            runs = [m.span() for m in re.finditer(rb"\d+", bytes(data))]
            if runs:
                a, b = draw(st.sampled_from(runs))
                data[a:b] = draw(st.sampled_from(ODD_NUMBERS))
    return bytes(data)


def kernel_text(data: bytes) -> str:
    """As the daemon decodes a kernel file (procfs.read_text, cgroup._read)."""
    return data.decode("utf-8", "surrogateescape")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# -------------------------------------------------------------------- /proc


STAT_SEEDS = fixture_files(r"proc/\d+/stat")


@fuzz(600)
@given(mutated(STAT_SEEDS))
def test_parse_stat(data):
    try:
        p = procfs.parse_stat(4242, data)
    except ParseError:
        return
    assert isinstance(p, ProcStat) and p.pid == 4242 and all(is_int(v) for v in p)


@pytest.fixture(scope="module")
def scan_tree():
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "4242"))
        yield d


@fuzz(300)
@given(data=mutated(STAT_SEEDS))
@pytest.mark.parametrize("reader", ["python", "c"])
def test_the_scanners_inline_parse_agrees_with_parse_stat(scan_tree, reader, data):
    """ProcessScanner parses stat lines inline (the hot path), or through the C
    reader in one-shot scans; each must take what parse_stat takes and count as an
    error what parse_stat refuses."""
    with open(os.path.join(scan_tree, "4242", "stat"), "wb") as f:
        f.write(data)
    scan = one_shot_scan(scan_tree, reader == "c")
    if not data:
        assert (scan.procs, scan.errors, scan.vanished) == ([], 0, 1)  # read as a gone pid
        return
    try:
        want = procfs.parse_stat(4242, data[:1024])  # the scanner reads 1 KiB
    except ParseError:
        assert (scan.procs, scan.errors) == ([], 1)
    else:
        assert (scan.procs, scan.errors) == ([want], 0)


@fuzz(300)
@given(mutated(fixture_files(r"proc/net/dev")))
def test_parse_net_dev(data):
    text = kernel_text(data)
    ifaces, bad = procfs.parse_net_dev(text)
    # Every line after the two headers is an interface or a counted bad line.
    assert len(ifaces) + bad == max(0, len(text.splitlines()) - 2)
    for i in ifaces:
        assert isinstance(i, InterfaceSample) and i.name and ":" not in i.name
        assert all(is_int(getattr(i, f)) for f in InterfaceSample.__slots__ if f != "name")


@fuzz(200)
@given(mutated(fixture_files(r"proc/uptime")))
def test_parse_uptime(data):
    try:
        assert is_number(procfs.parse_uptime(kernel_text(data)))
    except ParseError:
        pass


# ------------------------------------------------------------- /proc/virtual


@fuzz(300)
@given(mutated(fixture_files(r"proc/\d+/status") + [b"XID:\t49159\nNID:\t49159\n"]))
def test_parse_status_and_vinfo_xid(data):
    text = kernel_text(data)
    for parse in (vserver.parse_status_xid, vserver.parse_vinfo_xid):
        xid = parse(text)
        assert xid is None or (is_int(xid) and xid >= 0)


@fuzz(400)
@given(mutated(fixture_files(r"proc/virtual/\d+/limit")))
def test_parse_limit(data):
    text = kernel_text(data)
    rows, bad = vserver.parse_limit(text, page_size=4096)
    lines = [x for x in text.splitlines() if x.strip() and not x.startswith("Limit")]
    assert len(rows) + bad == len(lines)  # every line a row or a counted bad line
    for r in rows:
        assert isinstance(r, LimitRow) and r.unit in ("bytes", "count")
        for v in (r.current, r.minimum, r.maximum, r.soft, r.hard, r.hits):
            assert v is None or is_int(v)
        for v in (r.maximum, r.soft, r.hard):
            assert v is None or v >= 0  # -1 (unlimited) is None


@fuzz(300)
@given(mutated(fixture_files(r"proc/virtual/\d+/sched")), st.sampled_from([100, 250, 1000]))
def test_parse_sched(data, hz):
    try:
        user, system = vserver.parse_sched(kernel_text(data), hz)
    except ParseError:
        return
    assert user >= 0 and system >= 0 and math.isfinite(user) and math.isfinite(system)


@fuzz(300)
@given(mutated(fixture_files(r"proc/virtual/\d+/cvirt")))
def test_parse_cvirt(data):
    try:
        out = vserver.parse_cvirt(kernel_text(data))
    except ParseError:
        return
    assert all(isinstance(k, str) and k for k in out)
    if "loadavg" in out:
        assert len(out["loadavg"]) == 3 and all(is_number(x) for x in out["loadavg"])
    if "BiasUptime" in out:
        assert isinstance(out["BiasUptime"], float)
    if "nr_threads" in out:
        assert is_int(out["nr_threads"])


@fuzz(300)
@given(mutated(fixture_files(r"proc/virtual/\d+/cacct")))
def test_parse_cacct(data):
    try:
        rows = vserver.parse_cacct(kernel_text(data))
    except ParseError:
        return
    for r in rows:
        assert isinstance(r, SocketAccounting)
        assert all(is_int(getattr(r, f)) and getattr(r, f) >= 0
                   for f in SocketAccounting.__slots__ if f != "family")


@fuzz(300)
@given(mutated(fixture_files(r"proc/virtual/(\d+/)?status")))
def test_parse_vstatus(data):
    try:
        out = vserver.parse_vstatus(kernel_text(data))
    except ParseError:
        return
    assert all(isinstance(k, str) and is_int(v) for k, v in out.items())


CONFIG_SEEDS = fixture_files(r"boot/config-.*") + [
    gzip.decompress((FIXTURES / "vs23" / "proc" / "config.gz").read_bytes())]


@fuzz(200)
@given(mutated(CONFIG_SEEDS))
def test_parse_config_hz(data):
    hz = vserver.parse_config_hz(data)
    assert hz is None or (is_int(hz) and hz > 0)


@pytest.fixture(scope="module")
def name_tree():
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "etc", "vservers", "g"))
        yield d


@fuzz(300)
@given(run=mutated(fixture_files(r"etc/vservers/.*/context") + [b"49159\n", b"40001"]),
       name=mutated(fixture_files(r"etc/vservers/.*/name")))
def test_run_and_name_files(name_tree, run, name):
    """util-vserver's `run` (an xid) and `name` files of a guest's config dir."""
    cfg = os.path.join(name_tree, "etc", "vservers", "g")
    with open(os.path.join(cfg, "run"), "wb") as f:
        f.write(run)
    with open(os.path.join(cfg, "name"), "wb") as f:
        f.write(name)
    xid = vserver.read_run_xid(name_tree, "/etc/vservers/g")
    assert xid is None or is_int(xid)
    shown = vserver.config_name(name_tree, "/etc/vservers/g")
    assert isinstance(shown, str) and "\n" not in shown
    shown.encode("utf-8")  # always encodable: bytes that are not UTF-8 were replaced


# ------------------------------------------------------------------- cgroups

PID_CGROUP_SEEDS = [
    b"0::/system.slice/ssh.service\n",
    b"0::/user.slice/user-1000.slice/session-2.scope\n",
    b"0::/machine.slice/libpod-" + b"9d1e2f3a" * 8 + b".scope/container\n",
    b"12:pids:/docker/" + b"3f4e8b2a" * 8 + b"\n11:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n"
    b"1:name=systemd:/docker/x\n0::/docker/x\n",
    b"9:name=systemd:/\n4:memory:/a/b\n2:cpuacct:/x\n0::/gone.service (deleted)\n",
]
FLAT_SEEDS = [
    b"usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods 0\n"
    b"nr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n",
    b"user 250\nsystem 50\n",
    b"low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\noom_group_kill 0\n",
    b"max 17\n",
]
INT_SEEDS = [b"max\n", b"536870912\n", b"9223372036854771712\n", b"12345\n", b"0\n"]


@fuzz(300)
@given(mutated(PID_CGROUP_SEEDS))
def test_parse_pid_cgroup(data):
    text = kernel_text(data)
    paths, bad = cgroup.parse_pid_cgroup(text)
    assert 0 <= bad <= len([x for x in text.splitlines() if x])
    for hierarchy, path in paths.items():
        assert isinstance(hierarchy, str) and isinstance(path, str)
        assert not path.startswith("/") and not path.endswith(" (deleted)")
    for h in (None, "", "cpuacct", "memory", "name=systemd"):
        found = cgroup.pick_cgroup_path(paths, h)
        assert found is None or isinstance(found, str)


@fuzz(300)
@given(mutated([b"1\n23\n456\n", b"0\n7\n", b""]))
def test_parse_cgroup_procs(data):
    try:
        pids = cgroup.parse_cgroup_procs(kernel_text(data))
    except ParseError:
        return
    assert all(is_int(p) and p > 0 for p in pids)


@fuzz(300)
@given(mutated(FLAT_SEEDS))
def test_flat_keyed_and_cpu_parsers(data):
    text = kernel_text(data)
    try:
        kv = cgroup.parse_flat_keyed(text)
        assert all(isinstance(k, str) and is_int(v) for k, v in kv.items())
    except ParseError:
        pass
    for parse in (cgroup.parse_cpu_stat, lambda t: cgroup.parse_cpuacct_stat(t, hz=100)):
        try:
            user, system = parse(text)
        except ParseError:
            continue
        assert is_number(user) and is_number(system)


@fuzz(300)
@given(mutated(INT_SEEDS))
def test_single_value_files(data):
    text = kernel_text(data)
    for parse in (cgroup.parse_int, cgroup.parse_limit, cgroup.parse_v1_limit):
        try:
            v = parse(text)
        except ParseError:
            continue
        assert v is None or is_int(v)


@fuzz(300)
@given(mutated([json.dumps({"ID": "3f4e8b2a" * 8, "Name": "/web-1", "State": {"Running": True},
                            "Config": {"Hostname": "web"}}).encode()]))
def test_parse_docker_name(data):
    try:
        name = cgroup.parse_docker_name(kernel_text(data))
    except ParseError:
        return
    assert name is None or (isinstance(name, str) and name)


@fuzz(300)
@given(mutated([b"my\\x2dbox.service", b"system-getty.slice/getty@tty\\x31.service",
                b"a\\xc3\\xa9\\xff\\x2f..\\x2fb"]))
def test_unescape_systemd(data):
    text = kernel_text(data)
    out = cgroup.unescape_systemd(text)  # cgroup names come surrogate-escaped
    assert len(out) <= len(text)  # an escape only ever shortens
    if "\\x" not in text:
        assert out == text  # nothing to unescape: unchanged
    out.encode("utf-8", "surrogateescape")  # still a name the OS could have given


def test_parse_docker_name_deeply_nested_json_is_a_parse_error():
    with pytest.raises(ParseError):
        cgroup.parse_docker_name("[" * 100_000)


# ------------------------------------------------------------- whole trees


def _tree_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.suffix != ".md"
                  and "config" not in p.name)


@pytest.fixture(scope="module")
def vs_tree():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "vs23"
        shutil.copytree(FIXTURES / "vs23", root, symlinks=True)
        yield root


VS23_FILES = _tree_files(FIXTURES / "vs23")


@fuzz(60)
@given(data=st.data())
def test_a_vserver_tree_with_one_file_mutated_samples_without_raising(vs_tree, data):
    rel = data.draw(st.sampled_from(VS23_FILES))
    path = vs_tree / rel
    original = (FIXTURES / "vs23" / rel).read_bytes()
    path.write_bytes(data.draw(mutated([original])))
    proc = str(vs_tree / "proc")
    sampler = Sampler(VServerSource(proc, kernel_hz=1000), proc,
                      scanner=ProcessScanner(proc, max_open=0))
    try:
        snap = sampler.sample()
    finally:
        sampler.close()
        path.write_bytes(original)
    assert all(n >= 0 for n in snap.errors.values())
    root = snap.context("root server")
    assert root is not None and (root.xid, root.source) == (0, "vserver")


CGROUP_TREE = {
    "proc/uptime": b"3923.58 7000.10\n",
    "proc/net/dev": (FIXTURES / "vs23" / "proc" / "net" / "dev").read_bytes(),
    "proc/100/stat": b"100 (sshd) S 1 100 100 0 -1 4194560 500 0 0 0 120 80 0 0 20 0 1 0 "
                     b"5000 12000000 800 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0\n",
    "proc/100/cgroup": b"0::/system.slice/ssh.service\n",
    "proc/200/stat": b"200 (web) S 1 200 200 0 -1 4194560 500 0 0 0 300 40 0 0 20 0 4 0 "
                     b"6000 52000000 3000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0\n",
    "proc/200/cgroup": b"0::/system.slice/docker-" + b"3f4e8b2a" * 8 + b".scope\n",
    "sys/fs/cgroup/cgroup.controllers": b"cpu memory pids\n",
}
for unit in ("ssh.service", "docker-" + "3f4e8b2a" * 8 + ".scope"):
    base = f"sys/fs/cgroup/system.slice/{unit}/"
    CGROUP_TREE.update({
        base + "cpu.stat": FLAT_SEEDS[0],
        base + "memory.current": b"1048576\n", base + "memory.peak": b"2097152\n",
        base + "memory.max": b"max\n", base + "memory.high": b"1073741824\n",
        base + "memory.events": FLAT_SEEDS[2],
        base + "pids.current": b"4\n", base + "pids.peak": b"9\n", base + "pids.max": b"512\n",
        base + "pids.events": b"max 0\n",
    })
CGROUP_TREE["var/lib/docker/containers/" + "3f4e8b2a" * 8 + "/config.v2.json"] = json.dumps(
    {"Name": "/web-1"}).encode()


@pytest.fixture(scope="module")
def cg_tree():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for rel, content in CGROUP_TREE.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content)
        yield root


@fuzz(60)
@given(data=st.data())
def test_a_cgroup_tree_with_one_file_mutated_samples_without_raising(cg_tree, data):
    rel = data.draw(st.sampled_from(sorted(CGROUP_TREE)))
    path = cg_tree / rel
    path.write_bytes(data.draw(mutated([CGROUP_TREE[rel]])))
    proc = str(cg_tree / "proc")
    sampler = Sampler(CgroupSource(proc), proc, scanner=ProcessScanner(proc, max_open=0))
    try:
        snap = sampler.sample()
    finally:
        sampler.close()
        path.write_bytes(CGROUP_TREE[rel])
    assert all(n >= 0 for n in snap.errors.values())
    assert {c.label for c in snap.contexts} <= {"host", "ssh.service", "web-1", "docker-3f4e8b2a3f4e"}
