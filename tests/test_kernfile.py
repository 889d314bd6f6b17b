"""Kernel files: only regular files, never blocking, size-capped; absurd values are
parse errors; files held open on a live hierarchy follow cgroups that come and go."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from collector import kernfile
from collector.cgroup import CgroupSource, parse_flat_keyed, parse_int
from collector.procfs import ErrorCounts, ParseError, ProcessScanner, parse_net_dev, parse_stat
from collector.sampler import Sampler
from collector.source import ContextIdentity
from collector.vserver import VServerSource, parse_cacct, parse_cvirt, parse_limit, parse_sched

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def bounded(fn, seconds: float = 20.0):
    """Run fn on a thread; fail (not hang) if it does not return in time."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def rchar() -> int:
    """Bytes this process has read so far (read and pread alike)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


# --------------------------------------------------------------------------- reading


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(kernfile.NotRegular):
        bounded(lambda: kernfile.read_file(str(fifo)))
    with pytest.raises(kernfile.NotRegular):
        kernfile.read_file("/dev/zero")  # would never end
    with pytest.raises(kernfile.NotRegular):
        kernfile.read_file(str(tmp_path))
    (tmp_path / "f").write_bytes(b"12\n")
    assert kernfile.read_file(str(tmp_path / "f")) == b"12\n"
    assert kernfile.read_file("/proc/self/stat").startswith(str(os.getpid()).encode())


def test_reads_are_capped(tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"x" * 10_000)
    assert kernfile.read_file(str(f), cap=10_000) == b"x" * 10_000
    with pytest.raises(kernfile.TooLarge):
        kernfile.read_file(str(f), cap=9_999)
    with pytest.raises(kernfile.TooLarge):
        kernfile.read_file(str(f), cap=100)  # refused on the first read
    # A live seq_file longer than a page is read whole.
    assert kernfile.read_file("/proc/self/maps") == open("/proc/self/maps", "rb").read()


def test_a_100_mb_net_dev_is_not_read_whole(tmp_path):
    tree = tmp_path / "t"
    shutil.copytree(os.path.join(FIXTURES, "vs23"), tree, symlinks=True)
    dev = tree / "proc/net/dev"
    head = dev.read_bytes()
    with open(dev, "r+b") as f:
        f.truncate(100 << 20)  # sparse: the header, then 100 MB of zeros
    proc = str(tree / "proc")
    sampler = Sampler(VServerSource(proc), proc, scanner=ProcessScanner(proc, max_open=0))
    try:
        before = rchar()
        snap = sampler.sample()
        read = rchar() - before
    finally:
        sampler.close()
    assert read < 8 << 20, f"{read} bytes read in one poll"
    assert snap.host_interfaces == () and snap.errors.get("net") == 1
    assert len(snap.contexts) >= 3  # the rest of the poll went on
    dev.write_bytes(head)


def test_a_fifo_in_a_recorded_tree_does_not_block_a_poll(tmp_path):
    tree = tmp_path / "t"
    shutil.copytree(os.path.join(FIXTURES, "vs23"), tree, symlinks=True)
    proc = tree / "proc"
    for rel in ("net/dev", "virtual/40001/limit", "virtual/40001/sched", "1190/stat",
                "2300/status", "uptime"):
        (proc / rel).unlink()
        os.mkfifo(proc / rel)
    (tree / "etc/vservers/portal/name").unlink()
    os.mkfifo(tree / "etc/vservers/portal/name")
    sampler = Sampler(VServerSource(str(proc)), str(proc),
                      scanner=ProcessScanner(str(proc), max_open=0))
    try:
        snap = bounded(sampler.sample)
    finally:
        sampler.close()
    assert snap.host_interfaces == ()
    assert snap.errors.get("net") and snap.errors.get("procfs") and snap.errors.get("vserver")
    assert any(c.xid == 40002 for c in snap.contexts)


# --------------------------------------------------------------------------- values


def test_negative_or_absurd_values_are_parse_errors():
    line = open(os.path.join(FIXTURES, "vs23/proc/2310/stat"), "rb").read()
    assert parse_stat(2310, line).rss == 1200
    fields = line.split(b" ")
    for i, v in ((23, b"-1200"), (13, str(10 ** 29).encode()), (22, b"-1")):  # rss, utime, vsize
        forged = b" ".join(fields[:i] + [v] + fields[i + 1:])
        with pytest.raises(ParseError):
            parse_stat(2310, forged)
    for text in ("-5\n", str(1 << 63) + "\n"):
        with pytest.raises(ParseError):
            parse_int(text)
    with pytest.raises(ParseError):
        parse_flat_keyed(f"usage_usec 5\nuser_usec {10 ** 33}\n")  # 1e27 s
    ifaces, bad = parse_net_dev("h1\nh2\n  lo: -1 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0\n"
                                f"eth0: {1 << 64} 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0\n")
    assert (ifaces, bad) == ([], 2)
    rows, bad = parse_limit("RSS:  -25750  0/ 26100  98304/ 131072  0\n"
                            "PROC:  13  0/ 20  -1/ -1  -3\n"
                            "VM:  39398  0/ 41020  -1/ -1  0\n")
    assert [r.resource for r in rows] == ["VM"] and bad == 2
    with pytest.raises(ParseError):
        parse_sched(f"cpu 0: {10 ** 30} 5 0\n", 1000)
    with pytest.raises(ParseError):
        parse_cacct(f"INET:\t{10 ** 20}/1\t0/0\t0/0\n")
    for text in ("BiasUptime:\t-5\n", "BiasUptime:\tnan\n", "nr_threads:\t-2\n"):
        with pytest.raises(ParseError):
            parse_cvirt(text)


def test_the_scanner_refuses_absurd_stat_lines(tmp_path):
    good = open(os.path.join(FIXTURES, "vs23/proc/2310/stat"), "rb").read()
    fields = good.split(b" ")
    (tmp_path / "1").mkdir()
    (tmp_path / "1/stat").write_bytes(good.replace(b"2310", b"1", 1))
    (tmp_path / "2").mkdir()
    (tmp_path / "2/stat").write_bytes(b" ".join(fields[:23] + [b"-1200"] + fields[24:]))
    scan = ProcessScanner(str(tmp_path), max_open=0).scan()
    assert [p.pid for p in scan.procs] == [1] and scan.errors == 1


# --------------------------------------------------------------------------- held files


def test_held_files_reread_forget_and_remember_missing(tmp_path):
    now = [0.0]
    held = kernfile.HeldFiles(max_open=10, clock=lambda: now[0], recheck_missing=60)
    f = tmp_path / "cpu.stat"
    f.write_text("user_usec 1\n")
    assert held.read(str(f)) == b"user_usec 1\n" and len(held) == 1
    with open(f, "r+") as w:  # in place, as the kernel's files change
        w.write("user_usec 2\n")
    assert held.read(str(f)) == b"user_usec 2\n"
    calls = []

    def parse(text):
        calls.append(text)
        return text.split()

    assert held.parsed(str(f), parse) == held.parsed(str(f), parse) == ["user_usec", "2"]
    assert len(calls) == 1  # same bytes: parsed once
    with pytest.raises(FileNotFoundError):
        held.read(str(tmp_path / "memory.current"))
    (tmp_path / "memory.current").write_text("5\n")
    with pytest.raises(FileNotFoundError):  # remembered as missing ...
        held.read(str(tmp_path / "memory.current"))
    now[0] = 61
    assert held.read(str(tmp_path / "memory.current")) == b"5\n"  # ... for a while
    held.sweep()
    held.read(str(f))
    held.sweep()  # memory.current was not read since the last sweep
    assert len(held) == 1
    held.sweep()
    assert len(held) == 0
    held.close()


def test_held_files_stay_within_their_budget(tmp_path):
    held = kernfile.HeldFiles(max_open=2)
    for i in range(5):
        (tmp_path / str(i)).write_text(str(i))
        assert held.read(str(tmp_path / str(i))) == str(i).encode()
    assert len(held) == 2
    held.close()


def test_a_recreated_cgroup_is_read_afresh(cgroup_factory, cgroup_v2_root):
    """The held cpu.stat of a removed cgroup fails (ENODEV); the new one of the same
    name is opened, and what it lacks is looked for again."""
    cg = cgroup_factory()
    src = CgroupSource(cgroup_root=cgroup_v2_root)
    assert src._files.hold
    ident = ContextIdentity(key=cg.rel, name="x", ctx_id="1", source="cgroup", cgroup=cg.rel)
    p = cg.spawn([sys.executable, "-c", "import time\nwhile time.process_time() < 0.3: pass"])
    p.wait()
    errors = ErrorCounts()
    first = src.accounting(ident, errors)
    assert first.cpu_user_seconds + first.cpu_system_seconds > 0.1
    assert len(src._files) >= 1
    cg.kill_all()
    os.rmdir(cg.path)
    os.mkdir(cg.path)
    again = src.accounting(ident, errors)
    assert again.cpu_user_seconds + again.cpu_system_seconds < 0.1  # the new cgroup's
    assert sum(errors.values()) == 0
    src.close()


def test_walking_follows_new_cgroups_and_drops_empty_ones(cgroup_factory, cgroup_v2_root):
    from collector.procfs import ProcessScanner as Scanner

    a = cgroup_factory()
    pa = a.spawn(["sleep", "60"])
    src = CgroupSource(cgroup_root=cgroup_v2_root)
    assert src.walk
    scanner = Scanner("/proc", max_open=0)

    def where(pid):
        groups = src.assign(scanner.scan().procs, ErrorCounts())
        return [i.name for i, members in groups.items() if any(m.pid == pid for m in members)]

    name_a = os.path.basename(a.rel)
    assert where(pa.pid) == [name_a]  # the first poll walks everything
    b = cgroup_factory()  # made after the first walk
    pb = b.spawn(["sleep", "60"])
    assert where(pb.pid) == [os.path.basename(b.rel)]
    assert b.rel in src._known
    a.add(pb.pid)  # moved into a walked cgroup
    assert where(pb.pid) == [name_a]
    assert where(pa.pid) == [name_a]
    assert b.rel not in src._known  # found empty: no longer read
    src.close()


def test_the_scanner_and_held_files_share_one_fd_pool(tmp_path, monkeypatch):
    """Held fds of every holder count against one cap; all are given back on close."""
    pool = kernfile.FdPool()
    pool._cap = 6
    monkeypatch.setattr(kernfile, "POOL", pool)
    from collector.procfs import ProcessScanner as Scanner

    scanner = Scanner("/proc", max_open=100)
    assert len(scanner.scan().procs) > 6
    assert pool.held == 6 and len(scanner._fds) == 6  # the pool, not max_open, stopped it
    held = kernfile.HeldFiles(max_open=10)
    (tmp_path / "f").write_text("1\n")
    assert held.read(str(tmp_path / "f")) == b"1\n"
    assert len(held) == 0  # no room left: read, not held
    scanner.close()
    assert pool.held == 0
    assert held.read(str(tmp_path / "f")) == b"1\n"
    assert len(held) == 1 and pool.held == 1
    scanner = Scanner("/proc", max_open=100)
    scanner.scan()
    assert pool.held == 6
    held.sweep()
    held.sweep()  # f not read since: closed, given back
    assert pool.held == 5
    scanner.close()
    held.close()
    assert pool.held == 0
