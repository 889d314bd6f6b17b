"""The /proc parsers and the held-open stat scanner."""

import os
import subprocess
import sys
import time

import pytest

from collector.procfs import (
    ParseError,
    ProcessScanner,
    parse_net_dev,
    parse_stat,
    parse_uptime,
)

# A real 6.x kernel line (52 fields) for a process whose comm holds ") (" and blanks.
STAT_TRAP = (
    b"4242 (evil) (name x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 "
    b"150 30 7 3 20 0 3 0 98765 123456789 2500 18446744073709551615 1 1 0 0 0 0 0 "
    b"0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
)


def test_parse_stat_uses_last_paren_and_field_numbers():
    p = parse_stat(4242, STAT_TRAP)
    assert p.pid == 4242
    assert (p.utime, p.stime, p.cutime, p.cstime) == (150, 30, 7, 3)
    assert p.threads == 3
    assert p.start == 98765
    assert p.vsize == 123456789
    assert p.rss == 2500


def test_parse_stat_2_6_17_layout_with_41_fields():
    # 2.6.17 printed 41 fields; a kernel thread has vsize and rss 0.
    line = b"7 (events/0) S 1 1 1 0 -1 33088 0 0 0 0 0 12 0 0 10 -5 1 0 40 0 0 " \
           b"4294967295 0 0 0 0 0 0 2147483647 0 0 0 0 0 0 0 0 0\n"
    assert len(line.split()) == 41
    p = parse_stat(7, line)
    assert (p.utime, p.stime, p.threads, p.start, p.vsize, p.rss) == (0, 12, 1, 40, 0, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"4242 (noparen S 1 2 3",
        STAT_TRAP[:60],  # truncated mid-line
        STAT_TRAP.replace(b" 98765 ", b" 98x65 "),
    ],
)
def test_parse_stat_rejects_bad_lines(data):
    with pytest.raises(ParseError):
        parse_stat(1, data)


def test_parse_uptime():
    assert parse_uptime("6569681.37 1072973.16\n") == 6569681.37
    for bad in ("", "nan 1.0", "inf 1.0", "-5.00 1.0"):
        with pytest.raises(ParseError):
            parse_uptime(bad)


NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     789    0    0    0     0          0         0   123456     789    0    0    0     0       0          0
  eth0:4294967295 12345678  1  2    0     0          0        10 987654321  654321    3    4    0     0       0          0
  bad: 1 2 3
veth-x@if3: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0
"""


def test_parse_net_dev():
    ifaces, bad = parse_net_dev(NET_DEV)
    assert bad == 1
    by = {i.name: i for i in ifaces}
    assert set(by) == {"lo", "eth0", "veth-x@if3"}
    e = by["eth0"]
    assert (e.rx_bytes, e.rx_packets, e.rx_errors, e.rx_drops) == (4294967295, 12345678, 1, 2)
    assert (e.tx_bytes, e.tx_packets, e.tx_errors, e.tx_drops) == (987654321, 654321, 3, 4)


def _write_pid(root, pid, start, utime=1, comm=b"sh"):
    d = root / str(pid)
    d.mkdir(exist_ok=True)
    line = (b"%d (%s) S 1 1 1 0 -1 0 0 0 0 0 %d 2 0 0 20 0 1 0 %d 1000 5 0\n"
            % (pid, comm, utime, start))
    (d / "stat").write_bytes(line)


def test_scanner_on_a_tree_counts_errors_and_vanished(tmp_path):
    _write_pid(tmp_path, 10, 100)
    _write_pid(tmp_path, 11, 200)
    (tmp_path / "12").mkdir()  # a pid whose stat vanished before it was read
    (tmp_path / "13").mkdir()
    (tmp_path / "13" / "stat").mkdir()  # unreadable: EISDIR
    (tmp_path / "14").mkdir()
    (tmp_path / "14" / "stat").write_bytes(b"14 (x) S 1 2")  # truncated
    (tmp_path / "self").mkdir()  # non-numeric entries are not processes
    scan = ProcessScanner(str(tmp_path), max_open=0).scan()
    assert sorted(p.pid for p in scan.procs) == [10, 11]
    assert scan.vanished == 1
    assert scan.errors == 2


def test_scanner_holds_files_and_drops_exited_processes():
    sc = ProcessScanner("/proc")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        first = {p.pid: p for p in sc.scan().procs}
        assert child.pid in first
        assert child.pid in sc._fds  # held open for the next poll
        assert first[os.getpid()].threads >= 1
    finally:
        child.kill()
        child.wait()
    second = {p.pid for p in sc.scan().procs}
    assert child.pid not in second
    assert child.pid not in sc._fds
    sc.close()


def test_scanner_rereads_held_files():
    sc = ProcessScanner("/proc")
    me = os.getpid()
    before = {p.pid: p for p in sc.scan().procs}[me]
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    after = {p.pid: p for p in sc.scan().procs}[me]
    assert after.utime + after.stime >= before.utime + before.stime + 20  # 0.3 s at 100 Hz
    sc.close()
