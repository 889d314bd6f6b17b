"""VServer source: /proc/virtual parsers, util-vserver name lookup, the source and the
vserver-stat table, on the vs2.0 and vs2.3 fixture trees (see their README.md).

Expected values are worked out by hand from the fixture numbers (USER_HZ 100, 4096-byte
pages; CONFIG_HZ 250 for vs20, 1000 for vs23) and written literally.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import collector.sampler as sampler_mod
from collector.procfs import ErrorCounts, ParseError, ProcessScanner, ProcStat, read_text
from collector.sampler import Sampler
from collector.snapshot import LimitRow, SocketAccounting
from collector.source import KernelAccounting
from collector.vserver import (
    VServerSource,
    detect_kernel_hz,
    parse_cacct,
    parse_config_hz,
    parse_cvirt,
    parse_limit,
    parse_sched,
    parse_status_xid,
    parse_vstatus,
    read_run_xid,
    resolve_in_root,
    resolve_name,
    tree_root,
)
from collector.vserverstat import HEADER, format_row, format_table, shorten_mem, shorten_time

FIXTURES = Path(__file__).parent / "fixtures"
VS20 = FIXTURES / "vs20"
VS23 = FIXTURES / "vs23"
PAGE = 4096
KiB, MiB = 1024, 1024 * 1024


def text(root: Path, rel: str) -> str:
    return read_text(str(root / rel))


@pytest.fixture
def vs20(tmp_path: Path) -> Path:
    """A private copy (symlinks kept) for tests that change the tree."""
    dst = tmp_path / "vs20"
    shutil.copytree(VS20, dst, symlinks=True)
    return dst


@pytest.fixture
def vs23(tmp_path: Path) -> Path:
    dst = tmp_path / "vs23"
    shutil.copytree(VS23, dst, symlinks=True)
    return dst


def scan(root: Path) -> list[ProcStat]:
    sc = ProcessScanner(str(root / "proc"), max_open=0)
    try:
        return sc.scan().procs
    finally:
        sc.close()


def by_xid(groups) -> dict:
    return {ident.xid: (ident, sorted(p.pid for p in members)) for ident, members in groups.items()}


# ---------------------------------------------------------------------------
# <pid>/status
# ---------------------------------------------------------------------------


def test_status_xid_vxid_with_one_blank():
    t = text(VS20, "proc/2901/status")
    assert "\nVxID: 49159\n" in t  # the fixture has the kernel's blank, not a TAB
    assert parse_status_xid(t) == 49159
    assert parse_status_xid(text(VS20, "proc/1/status")) == 0


def test_status_xid_legacy_s_context():
    t = text(VS20, "proc/3190/status")
    assert "VxID" not in t
    assert parse_status_xid(t) == 49159


def test_status_xid_vs23_vxid_and_nxid():
    assert parse_status_xid(text(VS23, "proc/1210/status")) == 40001
    assert parse_status_xid(text(VS23, "proc/3900/status")) == 1


def test_status_xid_kernel_thread_without_memory_lines():
    t = text(VS20, "proc/2/status")
    assert "VmSize" not in t
    assert parse_status_xid(t) == 0


def test_status_xid_missing_or_truncated():
    assert parse_status_xid(text(VS20, "proc/5121/status")) is None
    assert parse_status_xid(text(VS23, "proc/2320/status")) is None
    assert parse_status_xid("Name:\tx\nVxID:\n") is None
    # VxID wins over a legacy block, and a TAB is tolerated.
    assert parse_status_xid("s_context: 7\nVxID:\t9\n") == 9


# ---------------------------------------------------------------------------
# limit
# ---------------------------------------------------------------------------


def test_limit_vs20_layout_with_a_malformed_line():
    rows, bad = parse_limit(text(VS20, "proc/virtual/49159/limit"), PAGE)
    assert bad == 1  # VML: x0
    assert [r.resource for r in rows] == [
        "PROC", "VM", "RSS", "ANON", "FILES", "OFD", "LOCKS", "SOCK", "MSGQ", "SHM"]
    r = {x.resource: x for x in rows}
    assert r["PROC"] == LimitRow("PROC", "count", 26, None, 41, None, None, 0)
    assert r["VM"] == LimitRow("VM", "bytes", 266929 * PAGE, None, 281100 * PAGE, None, None, 0)
    assert r["RSS"] == LimitRow("RSS", "bytes", 414449664, None, 467714048, None, 536870912, 3)
    assert r["OFD"] == LimitRow("OFD", "count", 690, None, 1003, None, 4096, 0)
    assert r["SHM"].current == 2048 * PAGE == 8 * MiB


def test_limit_vs23_layout_padding_around_slash():
    rows, bad = parse_limit(text(VS23, "proc/virtual/40001/limit"), PAGE)
    assert bad == 0
    assert [r.resource for r in rows] == [
        "PROC", "VM", "VML", "RSS", "ANON", "RMAP", "FILES", "OFD", "LOCKS", "SOCK",
        "MSGQ", "SHM", "SEMA", "SEMS", "DENT"]
    r = {x.resource: x for x in rows}
    assert r["PROC"] == LimitRow("PROC", "count", 13, 0, 20, None, None, 0)
    assert r["RSS"] == LimitRow("RSS", "bytes", 25750 * PAGE, 0, 26100 * PAGE,
                                98304 * PAGE, 131072 * PAGE, 0)
    assert r["RMAP"].unit == "bytes" and r["RMAP"].current == 940 * PAGE
    assert r["DENT"] == LimitRow("DENT", "count", 1811, 0, 2043, None, None, 0)


def test_limit_vs23_malformed_and_soft_unlimited_hard_set():
    rows, bad = parse_limit(text(VS23, "proc/virtual/40002/limit"), PAGE)
    assert bad == 1  # SOCK cut after `min/`
    assert len(rows) == 14 and "SOCK" not in {r.resource for r in rows}
    r = {x.resource: x for x in rows}
    assert r["PROC"] == LimitRow("PROC", "count", 9, 0, 12, 200, 256, 0)
    assert r["RSS"] == LimitRow("RSS", "bytes", 128163840, 0, 135196672, None, 134217728, 17)


def test_limit_vs23_full_width_values_and_page_size():
    # When a value fills all 8 columns there is no blank after the `/`.
    t = ("Limit\t current\t     min/max\t\t    soft/hard\t\thits\n"
         "VM:\t12345678\t       0/23456789\t      -1/99999999\t     5\n")
    rows, bad = parse_limit(t, 65536)
    assert bad == 0
    assert rows == (LimitRow("VM", "bytes", 12345678 * 65536, 0, 23456789 * 65536,
                             None, 99999999 * 65536, 5),)


def test_limit_empty_and_garbage():
    assert parse_limit("", PAGE) == ((), 0)
    rows, bad = parse_limit("PROC: lots\nhello\n", PAGE)
    assert rows == () and bad == 2


# ---------------------------------------------------------------------------
# sched, cvirt, cacct, status
# ---------------------------------------------------------------------------


def test_sched_vs20_jiffies_at_config_hz():
    u, s = parse_sched(text(VS20, "proc/virtual/49159/sched"), 250)
    # cpu0 162011/197745 + cpu1 226006/275854 jiffies at 250 Hz
    assert u == pytest.approx(388017 / 250) and u == pytest.approx(1552.068)
    assert s == pytest.approx(1894.396)


def test_sched_vs23_long_cpu_lines():
    u, s = parse_sched(text(VS23, "proc/virtual/40001/sched"), 1000)
    assert (u, s) == pytest.approx((52.13, 8.112))


def test_sched_priobias_only_layout():
    t = "PrioBias:\t       0\ncpu 0: 1000 200 0 0\ncpu 1: 3000 400 7 0\ncpu 2: 0 0 0 0\n"
    assert parse_sched(t, 100) == pytest.approx((40.0, 6.0))


def test_sched_malformed():
    with pytest.raises(ParseError):
        parse_sched("PrioBias:\t       0\n", 250)  # no cpu line at all
    with pytest.raises(ParseError):
        parse_sched("cpu 0: 10 20 0\ncpu 1: 10\n", 250)  # a partial sum would jump


def test_cvirt_vs20():
    c = parse_cvirt(text(VS20, "proc/virtual/49159/cvirt"))
    assert c["BiasUptime"] == pytest.approx(1286.31)
    assert c["nr_threads"] == 26 and c["total_forks"] == 56084
    assert c["loadavg"] == pytest.approx((1.31, 1.27, 1.20))
    assert c["NodeName"] == "wikkit.example.net"
    assert c["Version"] == "#1 SMP Thu Dec 14 18:20:07 UTC 2006"


def test_cvirt_vs23_and_malformed():
    c = parse_cvirt(text(VS23, "proc/virtual/40002/cvirt"))
    assert c["BiasUptime"] == pytest.approx(789.91)
    assert c["nr_threads"] == 9 and "NodeName" not in c
    with pytest.raises(ParseError):
        parse_cvirt("BiasUptime:\tsoon\n")
    with pytest.raises(ParseError):
        parse_cvirt("nr_threads 9\n")


def test_cacct_vs20():
    rows = parse_cacct(text(VS20, "proc/virtual/49159/cacct"))
    assert [r.family for r in rows] == ["UNSPEC", "UNIX", "INET", "INET6", "OTHER"]
    assert rows[2] == SocketAccounting("INET", 215275, 167269356, 124439, 159406380, 78, 6019)
    assert rows[4] == SocketAccounting("OTHER", 4, 5277, 0, 0, 0, 0)


def test_cacct_vs23_with_packet_slab_and_pages():
    rows = parse_cacct(text(VS23, "proc/virtual/40002/cacct"))
    assert [r.family for r in rows] == ["UNSPEC", "UNIX", "INET", "INET6", "PACKET", "OTHER"]
    assert rows[2] == SocketAccounting("INET", 88120, 12044129, 91002, 140221093, 41, 9102)
    assert rows[3] == SocketAccounting("INET6", 310, 22019, 301, 90022, 0, 0)
    with pytest.raises(ParseError):
        parse_cacct("INET:\t  12/34\n")


def test_vstatus_both_layouts():
    s20 = parse_vstatus(text(VS20, "proc/virtual/49159/status"))
    assert s20 == {"UseCnt": 29, "Tasks": 26, "Flags": 0x202000010, "BCaps": 0x344C04FF,
                   "CCaps": 0x101, "Ticks": 0}
    s23 = parse_vstatus(text(VS23, "proc/virtual/40001/status"))
    assert s23["Tasks"] == 13 and s23["Spaces"] == 0 and "Ticks" not in s23
    with pytest.raises(ParseError):
        parse_vstatus("Tasks:\tmany\n")


def test_config_hz():
    assert parse_config_hz(b"# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n") == 250
    assert parse_config_hz(b"CONFIG_HZ_1000=y\n") is None


# ---------------------------------------------------------------------------
# Paths under the root and names
# ---------------------------------------------------------------------------


def test_tree_root():
    assert tree_root("/proc") == "/"
    assert tree_root("/x/fixture/proc/") == "/x/fixture"


def test_resolve_in_root_keeps_absolute_links_and_dotdot_inside(tmp_path: Path):
    root = tmp_path / "root"
    (root / "etc/vservers/a").mkdir(parents=True)
    (root / "etc/vservers/a/name").write_text("inside\n")
    (root / "l").mkdir()
    os.symlink("/etc/vservers/a", root / "l/abs")
    os.symlink("../../../../../../../../etc/vservers/a", root / "l/up")
    for link in ("abs", "up"):
        got = resolve_in_root(str(root), f"/l/{link}/name")
        assert got == str(root / "etc/vservers/a/name")
    assert resolve_in_root(str(root), "/../../..") == str(root)


def test_resolve_in_root_loop(tmp_path: Path):
    os.symlink("/b", tmp_path / "a")
    os.symlink("/a", tmp_path / "b")
    with pytest.raises(OSError) as e:
        resolve_in_root(str(tmp_path), "/a/x")
    assert e.value.errno == errno.ELOOP


def test_names_vs20():
    root = str(VS20)
    assert resolve_name(root, "/etc/vservers", 0) == "root server"
    assert resolve_name(root, "/etc/vservers", 1) == "monitoring server"
    # run.rev -> /etc/vservers/web-prod, whose name file says otherwise
    assert resolve_name(root, "/etc/vservers", 49159) == "wikkit.example.net"
    # no run.rev link, no name file: found by its run file, named after its dir
    assert resolve_name(root, "/etc/vservers", 49160) == "smtp"
    # stale run.rev link to a stopped guest whose run link dangles
    assert resolve_name(root, "/etc/vservers", 49170) == ""
    assert resolve_name(root, "/etc/vservers", 12345) == ""


def test_names_vs23():
    root = str(VS23)
    # .defaults/run.rev is itself an absolute link (to /var/run/vservers.rev)
    assert resolve_name(root, "/etc/vservers", 40001) == "caf\ufffd db"
    assert resolve_name(root, "/etc/vservers", 40002) == "customer-portal-staging-01"
    assert resolve_name(root, "/etc/vservers", 40003) == ""  # legacy-www is stopped


def test_dangling_run_is_not_running():
    assert read_run_xid(str(VS20), "/etc/vservers/olddb") is None
    assert read_run_xid(str(VS20), "/etc/vservers/web-prod") == 49159


def test_run_file_rules(tmp_path: Path):
    cfg = tmp_path / "etc/vservers/g"
    cfg.mkdir(parents=True)
    run = cfg / "run"
    for content, want in [(b"42\n", 42), (b"42", 42), (b" 42\nleft over", 42),
                          (b"42 \n", None), (b"x42\n", None), (b"4" * 51, None)]:
        run.write_bytes(content)
        assert read_run_xid(str(tmp_path), "/etc/vservers/g") == want, content


def test_name_file_rules(tmp_path: Path):
    vs = tmp_path / "etc/vservers"
    for i, (d, name_bytes) in enumerate([("a", b"alpha\n\n"), ("b", b"\n"), ("c", b"x" * 1024),
                                         ("d", b"first\nsecond\n")]):
        (vs / d).mkdir(parents=True)
        (vs / d / "name").write_bytes(name_bytes)
        (vs / d / "run").write_text(f"{100 + i}\n")
    raw = os.fsencode(str(vs)) + b"/\xff\xfe"  # a dir name that is not UTF-8, no name file
    os.mkdir(raw)
    with open(raw + b"/run", "w") as f:
        f.write("104\n")
    root = str(tmp_path)
    assert resolve_name(root, "/etc/vservers", 100) == "alpha"
    assert resolve_name(root, "/etc/vservers", 101) == "b"  # empty name: basename
    assert resolve_name(root, "/etc/vservers", 102) == "c"  # 1024 bytes: too long
    assert resolve_name(root, "/etc/vservers", 103) == "first"
    assert resolve_name(root, "/etc/vservers", 104) == "\ufffd\ufffd"


# ---------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------


def test_assign_vs20_groups_and_errors():
    src = VServerSource(str(VS20 / "proc"), page_size=PAGE)
    errors = ErrorCounts()
    got = by_xid(src.assign(scan(VS20), errors))
    assert {x: (i.name, pids) for x, (i, pids) in got.items()} == {
        0: ("root server", [1, 2, 3, 2314, 2467]),
        49159: ("wikkit.example.net", [2901, 3120, 3188, 3190]),
        49160: ("smtp", [4010, 4011]),
        49170: ("", []),  # listed in proc/virtual, no process
    }
    ident = got[49159][0]
    assert (ident.key, ident.ctx_id, ident.source, ident.xid) == ("49159", "49159", "vserver", 49159)
    assert errors == {"vserver": 2}  # 5120 status is a directory, 5121 cut short


def test_assign_vs23():
    src = VServerSource(str(VS23 / "proc"), page_size=PAGE)
    errors = ErrorCounts()
    got = by_xid(src.assign(scan(VS23), errors))
    assert {x: (i.name, pids) for x, (i, pids) in got.items()} == {
        0: ("root server", [1, 2, 3]),
        1: ("monitoring server", [3900]),
        40001: ("caf\ufffd db", [1190, 1210]),
        40002: ("customer-portal-staging-01", [2300, 2310]),
    }
    assert errors == {"vserver": 1}  # 2320 cut short


def test_default_vservers_dir_is_under_the_root():
    src = VServerSource(str(VS20 / "proc"), vservers_dir=str(VS20 / "etc/vservers"))
    default = VServerSource(str(VS20 / "proc"))
    errors = ErrorCounts()
    procs = scan(VS20)
    assert by_xid(src.assign(procs, errors)) == by_xid(default.assign(procs, errors))


def test_status_read_once_per_process_lifetime(vs20: Path):
    src = VServerSource(str(vs20 / "proc"), page_size=PAGE)
    procs = scan(vs20)
    src.assign(procs, ErrorCounts())
    status = vs20 / "proc/3120/status"
    status.write_text(status.read_text().replace("VxID: 49159", "VxID: 49160"))
    assert 3120 in by_xid(src.assign(procs, ErrorCounts()))[49159][1]  # cached
    # The pid is reused by a new process (another start time): read again.
    reused = [p._replace(start=p.start + 1) if p.pid == 3120 else p for p in procs]
    got = by_xid(src.assign(reused, ErrorCounts()))
    assert 3120 in got[49160][1] and 3120 not in got[49159][1]


def test_cache_pruned_when_the_pid_is_gone(vs20: Path):
    src = VServerSource(str(vs20 / "proc"), page_size=PAGE)
    procs = scan(vs20)
    src.assign(procs, ErrorCounts())
    status = vs20 / "proc/4011/status"
    status.write_text(status.read_text().replace("VxID: 49160", "VxID: 49159"))
    src.assign([p for p in procs if p.pid != 4011], ErrorCounts())
    # Same pid and start seen again after a poll without it: not taken from the cache.
    assert 4011 in by_xid(src.assign(procs, ErrorCounts()))[49159][1]


def test_vanished_status_is_skipped_without_error(vs20: Path):
    src = VServerSource(str(vs20 / "proc"), page_size=PAGE)
    procs = scan(vs20)
    shutil.rmtree(vs20 / "proc/4011")
    errors = ErrorCounts()
    got = by_xid(src.assign(procs, errors))
    assert got[49160][1] == [4010]
    assert errors == {"vserver": 2}  # only the fixture's two bad status files


def test_name_cached_then_refreshed(vs20: Path):
    now = [1000.0]
    src = VServerSource(str(vs20 / "proc"), page_size=PAGE, clock=lambda: now[0])
    procs = scan(vs20)
    assert by_xid(src.assign(procs, ErrorCounts()))[49159][0].name == "wikkit.example.net"
    (vs20 / "etc/vservers/web-prod/name").write_text("renamed\n")
    now[0] += 30
    assert by_xid(src.assign(procs, ErrorCounts()))[49159][0].name == "wikkit.example.net"
    now[0] += 31
    assert by_xid(src.assign(procs, ErrorCounts()))[49159][0].name == "renamed"
    # A context that disappears and comes back is looked up again at once.
    (vs20 / "etc/vservers/smtp/name").write_text("mail\n")
    ctx_dir = vs20 / "proc/virtual/49160"
    ctx_dir.rename(vs20 / "proc/virtual/gone")
    assert 49160 not in by_xid(src.assign([p for p in procs if p.pid not in (4010, 4011)],
                                          ErrorCounts()))
    (vs20 / "proc/virtual/gone").rename(ctx_dir)
    assert by_xid(src.assign(procs, ErrorCounts()))[49160][0].name == "mail"


def test_kernel_hz_detection(tmp_path: Path, caplog):
    assert detect_kernel_hz(str(VS20 / "proc")) == 250  # boot/config-<osrelease>
    assert detect_kernel_hz(str(VS23 / "proc")) == 1000  # config.gz beats /boot's 300
    assert VServerSource(str(VS23 / "proc")).kernel_hz == 1000
    assert VServerSource(str(VS23 / "proc"), kernel_hz=300).kernel_hz == 300
    (tmp_path / "proc").mkdir()
    src = VServerSource(str(tmp_path / "proc"))
    with caplog.at_level(logging.WARNING, logger="collector.vserver"):
        assert src.kernel_hz == 250
        assert src.kernel_hz == 250
    assert len([r for r in caplog.records if "CONFIG_HZ" in r.getMessage()]) == 1


def test_kernel_hz_from_a_broken_config_gz_falls_back(tmp_path: Path):
    proc = tmp_path / "proc"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "config.gz").write_bytes(b"not gzip")
    (proc / "sys/kernel/osrelease").write_text("6.1.0-x\n")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/config-6.1.0-x").write_text("CONFIG_HZ=100\n")
    assert detect_kernel_hz(str(proc)) == 100
    (proc / "config.gz").write_bytes(gzip.compress(b"CONFIG_HZ=300\n"))
    assert detect_kernel_hz(str(proc)) == 300


def test_accounting_vs20():
    src = VServerSource(str(VS20 / "proc"), page_size=PAGE)
    groups = {i.xid: i for i in src.assign(scan(VS20), ErrorCounts())}
    errors = ErrorCounts()
    acct = src.accounting(groups[49159], errors)
    assert acct.cpu_user_seconds == pytest.approx(1552.068)
    assert acct.cpu_system_seconds == pytest.approx(1894.396)
    assert acct.started_after_boot == pytest.approx(1286.31)
    assert acct.threads == 26
    assert len(acct.limits) == 10 and len(acct.sockets) == 5
    assert errors == {"vserver": 1}  # the VML line
    assert src.accounting(groups[0], errors) == KernelAccounting()


def test_accounting_keeps_the_rest_when_a_file_fails(vs23: Path):
    src = VServerSource(str(vs23 / "proc"), page_size=PAGE)
    groups = {i.xid: i for i in src.assign(scan(vs23), ErrorCounts())}
    d = vs23 / "proc/virtual/40001"
    (d / "sched").unlink()
    (d / "sched").mkdir()  # unreadable
    (d / "cvirt").write_text("BiasUptime:\tsoon\n")  # malformed
    (d / "status").unlink()  # gone
    errors = ErrorCounts()
    acct = src.accounting(groups[40001], errors)
    assert acct.cpu_user_seconds is None and acct.started_after_boot is None
    assert acct.threads is None
    assert len(acct.limits) == 15 and len(acct.sockets) == 6
    assert errors == {"vserver": 2}
    # The whole context directory gone (the guest stopped since assign): nothing, no error.
    shutil.rmtree(vs23 / "proc/virtual/40002")
    errors = ErrorCounts()
    assert src.accounting(groups[40002], errors) == KernelAccounting()
    assert errors == {}


def test_remembered_lines_give_what_a_fresh_parse_gives():
    """parse_limit and parse_cacct keep what each line parsed to (most lines repeat
    poll after poll): the same line under another page size, a line that changed, a
    malformed line met again, all come out as parsing anew would make them."""
    limit = text(VS23, "proc/virtual/40001/limit")
    rows4k, bad = parse_limit(limit, 4096)
    rows8k, _ = parse_limit(limit, 8192)
    rss4k = next(r for r in rows4k if r.resource == "RSS")
    rss8k = next(r for r in rows8k if r.resource == "RSS")
    assert rss8k.current == 2 * rss4k.current and rss8k.hard == 2 * rss4k.hard
    assert parse_limit(limit, 4096) == (rows4k, bad)
    moved = limit.replace("25750", "25751", 1)
    assert next(r for r in parse_limit(moved, 4096)[0]
                if r.resource == "RSS").current == 25751 * 4096
    broken = limit + "RSS:\t1\tx\n"
    assert parse_limit(broken, 4096)[1] == bad + 1
    assert parse_limit(broken, 4096)[1] == bad + 1  # remembered as malformed
    cacct = text(VS23, "proc/virtual/40001/cacct")
    assert parse_cacct(cacct) == parse_cacct(cacct)
    bad_cacct = cacct + "UNIX:\t1/2\n"
    for _ in range(2):  # raised again when met again
        with pytest.raises(ParseError):
            parse_cacct(bad_cacct)


def test_held_virtual_files_follow_the_tree(vs23: Path):
    """The /proc/virtual files are held open between polls, yet every change is seen:
    rewritten in place, replaced by a new file, the guest's directory gone and back."""
    src = VServerSource(str(vs23 / "proc"), page_size=PAGE)
    d = vs23 / "proc/virtual/40001"
    sched = (d / "sched").read_text()

    def poll():
        errors = ErrorCounts()
        groups = {i.xid: i for i in src.assign(scan(vs23), errors)}
        return src.accounting(groups[40001], errors)

    user = poll().cpu_user_seconds
    assert user is not None and len(src._files) >= 4  # held
    # In place (as the kernel's files change): a cpu line's user field doubled.
    first = next(line for line in sched.splitlines() if line.startswith("cpu"))
    fields = first.split()
    more = sched.replace(first, first.replace(fields[2], str(int(fields[2]) * 2), 1), 1)
    with open(d / "sched", "r+") as f:
        f.write(more)
    grown = poll().cpu_user_seconds
    assert grown > user
    # Replaced by another file under the same name: the new one is read.
    (d / "sched.new").write_text(sched)
    os.replace(d / "sched.new", d / "sched")
    assert poll().cpu_user_seconds == user
    # The directory renamed away (the guest stopped): nothing from the old files.
    d.rename(vs23 / "proc/virtual/away")
    errors = ErrorCounts()
    assert src.accounting(_vserver_ident(40001), errors) == KernelAccounting()
    (vs23 / "proc/virtual/away").rename(d)
    assert poll().cpu_user_seconds == user
    src.close()
    assert len(src._files) == 0


def _vserver_ident(xid: int):
    from collector.source import ContextIdentity

    return ContextIdentity(key=str(xid), name="", ctx_id=str(xid), source="vserver", xid=xid)


# ---------------------------------------------------------------------------
# vserver-stat formats (expected strings from the reference's rules and examples)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("value, want", [
    (32 * MiB, "32M"),
    (32 * MiB + 102 * KiB, "32M"),  # tenth < 1 is not printed
    (152 * MiB + 103 * KiB, "152.1M"),
    (152 * MiB + 204 * KiB, "152.1M"),
    (152 * MiB + 205 * KiB, "152.2M"),
    (1000 * MiB, "0.9G"),  # the unit changes at 1000, not 1024
    (1023 * MiB + 1023 * KiB, "0.9G"),
    (1024 * MiB, "1G"),
    (0, "0 "),
    (999, "999 "),
    (1000, "0.9K"),
    (1024, "1K"),
    (1536, "1.5K"),
    (999 * KiB, "999K"),
    (565 * MiB, "565M"),
    (5 * 1024**4, "5T"),
    (1500 * 1024**4, "1.4+"),
])
def test_shorten_mem(value, want):
    assert shorten_mem(value) == want


def _ms(d=0, h=0, m=0, s=0, ms=0):
    return (((d * 24 + h) * 60 + m) * 60 + s) * 1000 + ms


@pytest.mark.parametrize("ms, want", [
    (_ms(d=232, h=11, m=34, s=59, ms=999), "232d11h34"),  # seconds dropped
    (_ms(h=1, m=54, s=19, ms=700), "1h54m19"),
    (_ms(m=11, s=59, ms=890), "11m59s89"),
    (_ms(s=11, ms=670), "0m11s67"),
    (5, "0m00s05"),
    (50, "0m00s50"),  # looks like 500 ms
    (500, "0m00s50"),
    (0, "0m00s00"),
    (_ms(d=1), "1d00h00"),
    (_ms(d=999, h=23), "999d23h00"),
    (_ms(d=1000, h=5), "2y27d05"),  # 2 y + 270 d: the day field is cut to "27"
    (_ms(d=365 * 3 + 7, h=13), "3y07d13"),
    (_ms(d=998001), "2734y91d00"),
    (_ms(d=998002), "INVALID"),
    (-1, "INVALID"),
])
def test_shorten_time(ms, want):
    assert shorten_time(ms) == want


def test_header_and_row_layout():
    assert HEADER == "CTX   PROC    VSZ    RSS  userTIME   sysTIME    UPTIME NAME"
    row = format_row(49159, 88, 152 * MiB + 150 * KiB, 32 * MiB, _ms(h=1, m=54, s=19),
                     _ms(m=11, s=59, ms=890), _ms(d=232, h=11, m=34), "a-very-long-guest-name-here")
    assert row == ("49159   88 152.1M    32M   1h54m19  11m59s89 232d11h34 "
                   "a-very-long-guest-na")
    assert row.index("a-very") == 55
    # An empty name leaves the line at 55 characters (the blank at column 54).
    assert format_row(0, 1, 0, 0, 0, 0, 0, "") == (
        "0        1     0      0    0m00s00   0m00s00   0m00s00 ")
    # Nothing guards overlaps: a wide PROC runs into the CTX column.
    assert format_row(123456, 12345, 0, 0, 0, 0, 0, "x")[:10] == "12345" + "12345"


# ---------------------------------------------------------------------------
# End to end through the Sampler
# ---------------------------------------------------------------------------


@pytest.fixture
def fixed_units(monkeypatch):
    # The fixtures are in USER_HZ=100 and 4096-byte pages, whatever this machine uses.
    monkeypatch.setattr(sampler_mod, "CLK_TCK", 100)
    monkeypatch.setattr(sampler_mod, "PAGE_SIZE", PAGE)


def sample(root: Path):
    s = Sampler(VServerSource(str(root / "proc"), page_size=PAGE), str(root / "proc"),
                clock=lambda: 1_200_000_000.0,
                scanner=ProcessScanner(str(root / "proc"), max_open=0))
    try:
        return s.sample()
    finally:
        s.close()


def test_end_to_end_vs20(fixed_units):
    snap = sample(VS20)
    assert snap.source == "vserver"
    assert snap.host_uptime_seconds == pytest.approx(20082857.63)
    assert dict(snap.errors) == {"vserver": 3}
    c = {x.xid: x for x in snap.contexts}
    assert [x.ctx_id for x in snap.contexts] == ["0", "49159", "49160", "49170"]

    root = c[0]
    assert (root.name, root.processes, root.threads) == ("root server", 5, 5)
    assert root.vsz_bytes == 1658880 + 4915200 + 31457280 == 38031360
    assert root.rss_bytes == (145 + 300 + 1024) * PAGE == 6017024
    assert root.cpu_accounting == "processes"
    assert (root.cpu_user_seconds, root.cpu_system_seconds) == pytest.approx((22.47, 33.04))
    assert (root.live_user_seconds, root.live_system_seconds) == pytest.approx((353.35, 258.15))
    assert root.first_process_start == pytest.approx(0.08)
    assert root.limits == ()

    web = c[49159]
    assert (web.name, web.processes, web.threads) == ("wikkit.example.net", 4, 26)
    assert web.vsz_bytes == 1093341184
    assert web.rss_bytes == 101184 * PAGE == 414449664
    assert web.cpu_accounting == "kernel"
    assert (web.cpu_user_seconds, web.cpu_system_seconds) == pytest.approx((1552.068, 1894.396))
    assert (web.live_user_seconds, web.live_system_seconds) == pytest.approx((4724.05, 791.11))
    assert web.uptime_seconds == pytest.approx(20082857.63 - 1286.31)
    assert web.start_time == pytest.approx(1_200_000_000.0 - (20082857.63 - 1286.31))
    assert web.first_process_start == pytest.approx(1287.0)
    rss = next(r for r in web.limits if r.resource == "RSS")
    assert (rss.current, rss.hard, rss.hits) == (414449664, 536870912, 3)
    assert web.sockets[1] == SocketAccounting("UNIX", 82759, 7493474, 47331, 2845367, 18, 996)

    smtp = c[49160]
    assert (smtp.name, smtp.processes, smtp.threads) == ("smtp", 2, 2)
    assert (smtp.cpu_user_seconds, smtp.cpu_system_seconds) == pytest.approx((220.6, 160.016))

    idle = c[49170]
    assert (idle.name, idle.processes, idle.threads, idle.vsz_bytes) == ("", 0, 0, 0)
    assert idle.uptime_seconds == pytest.approx(857.5)
    assert idle.first_process_start is None

    assert format_table(snap) == (
        "CTX   PROC    VSZ    RSS  userTIME   sysTIME    UPTIME NAME\n"
        "0        5  36.2M   5.7M   5m53s35   4m18s15 232d10h34 root server\n"
        "49159    4     1G 395.2M   1h18m44  13m11s11 232d10h12 wikkit.example.net\n"
        "49160    2    10M   2.9M   2m03s65   1m39s72 232d10h11 smtp\n"
        "49170    0     0      0    0m00s00   0m00s00  14m17s50 \n"
    )


def test_end_to_end_vs23(fixed_units):
    snap = sample(VS23)
    assert dict(snap.errors) == {"vserver": 2}
    c = {x.xid: x for x in snap.contexts}
    assert sorted(c) == [0, 1, 40001, 40002]
    assert (c[0].processes, c[0].threads, c[0].vsz_bytes) == (3, 3, 10465280)
    assert c[1].name == "monitoring server" and c[1].cpu_accounting == "processes"

    db = c[40001]
    assert (db.processes, db.threads) == (2, 13)
    assert db.vsz_bytes == 161374208 and db.rss_bytes == 25750 * PAGE
    assert (db.cpu_user_seconds, db.cpu_system_seconds) == pytest.approx((52.13, 8.112))
    assert db.uptime_seconds == pytest.approx(3923.58 - 140.25)
    assert len(db.limits) == 15 and len(db.sockets) == 6

    portal = c[40002]
    assert (portal.processes, portal.threads) == (2, 8)  # 2320 (unreadable tag) left out
    assert (portal.cpu_user_seconds, portal.cpu_system_seconds) == pytest.approx((9.411, 1.96))
    proc = next(r for r in portal.limits if r.resource == "PROC")
    assert (proc.current, proc.soft, proc.hard) == (9, 200, 256)

    assert format_table(snap) == (
        "CTX   PROC    VSZ    RSS  userTIME   sysTIME    UPTIME NAME\n"
        "0        3   9.9M   720K   0m15s40   0m10s24   1h05m22 root server\n"
        "1        1   1.7M   380K   0m00s10   0m00s20   0m03s00 monitoring server\n"
        "40001    2 153.8M 100.5M   8m40s42   1m20s35   1h02m58 caf\ufffd db\n"
        "40002    2   0.9G 121.8M   1m33s00   0m19s20  52m13s00 customer-portal-stag\n"
    )


def test_table_sorts_numeric_ids_first(fixed_units):
    snap = sample(VS23)
    ctxs = list(snap.contexts)
    other = replace(ctxs[2], ctx_id="a1b2c3", name="zz")
    snap2 = replace(snap, contexts=(other, ctxs[3], ctxs[1], ctxs[0]))
    lines = format_table(snap2).splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == ["0", "1", "40002", "a1b2c3"]
