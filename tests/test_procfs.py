"""The /proc parsers and the held-open stat scanner."""

import os
import subprocess
import sys
import time

import pytest
from factories import one_shot_scan

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


# --------------------------------------------------- the C reader of one-shot scans


def scan_with(root: str, c_reader: bool, skip_pid=None):
    """(sorted procs, errors, vanished) of one one-shot scan, C or Python."""
    scan = one_shot_scan(root, c_reader, skip_pid)
    return sorted(scan.procs), scan.errors, scan.vanished


def test_the_c_reader_is_built():
    """setup.py builds collector/_procscan.c (gcc and python3-dev are in `make setup`);
    without it `ctxmon stat` silently takes the slower pure-Python scan."""
    from collector import procfs

    assert procfs._procscan is not None, "collector._procscan missing: pip install -e . failed to compile it"


def _copy_live_stats(dst, limit=400):
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and n < limit:
            try:
                data = open(f"/proc/{name}/stat", "rb").read()
            except OSError:
                continue
            os.makedirs(dst / name)
            (dst / name / "stat").write_bytes(data)
            n += 1
    return n


def test_the_c_reader_and_the_python_loop_agree_on_a_hostile_tree(tmp_path):
    """Both readers of a frozen copy of this host's stat files plus every trap a
    recorded tree can hold: same processes, same errors, same vanished."""
    live = _copy_live_stats(tmp_path)
    assert live > 5
    good = STAT_TRAP  # its comm holds ") (" and a blank

    def put(name, data=None):
        (tmp_path / name).mkdir()
        if data is not None:
            (tmp_path / name / "stat").write_bytes(data)

    put("900001")  # vanished: no stat
    put("900002", b"")  # vanished: empty
    put("900003"); os.mkdir(tmp_path / "900003" / "stat")  # error: a directory
    put("900004"); os.mkfifo(tmp_path / "900004" / "stat")  # error, and never blocks
    put("900005"); os.symlink("/dev/null", tmp_path / "900005" / "stat")  # error: device
    put("900006", good.replace(b") S", b")\tS"))  # not the kernel's shape: Python judges
    put("900007", good.replace(b" 150 30 ", b"  150\t30 "))  # odd blanks: Python takes it
    put("900008", good[:60])  # truncated: error
    put("900009", good.replace(b" 150 30 ", b" -150 30 "))  # a negative utime: error
    put("900010", good.replace(b" 150 30 ", b" 9223372036854775808 30 "))  # 2**63: error
    put("900014", good.replace(b" 150 30 ", b" 99999999999999999999 30 "))  # 20 digits: error
    put("900011", good.replace(b" 150 30 ", b" 1_5 30 "))  # int() takes it, so both do
    put("900012", good)  # the pid to skip
    put("123456789012345678901234567890", good)  # a pid no kernel has: kept, as Python does
    put("00900013", good)  # leading zeros
    put("x12")  # not a pid
    (tmp_path / "²").mkdir()  # "²".isdigit() is true in Python
    c = scan_with(str(tmp_path), True, skip_pid=900012)
    py = scan_with(str(tmp_path), False, skip_pid=900012)
    assert c == py
    procs, errors, vanished = c
    pids = {p.pid for p in procs}
    assert {900006, 900007, 900011, 123456789012345678901234567890, 900013} <= pids
    assert not pids & {900001, 900002, 900003, 900004, 900005, 900008, 900009, 900010, 900012, 900014}
    assert (len(procs), errors, vanished) == (live + 5, 7, 2)
    by_pid = {p.pid: p for p in procs}
    assert by_pid[900011].utime == 15 and by_pid[900007].utime == 150
    assert tuple(by_pid[900013]) == (900013, 98765, 150, 30, 7, 3, 3, 123456789, 2500)


def test_the_c_reader_reads_the_live_proc_as_the_python_loop_does():
    """On the real /proc: every long-lived process seen by both with the same values
    (times may tick between the two scans, the rest does not)."""
    c = {p.pid: p for p in scan_with("/proc", True)[0]}
    py = {p.pid: p for p in scan_with("/proc", False)[0]}
    both = set(c) & set(py)
    assert os.getpid() in both and len(both) >= 0.9 * len(py)
    for pid in both:
        a, b = c[pid], py[pid]
        assert (a.pid, a.start) == (b.pid, b.start)
        assert a.utime <= b.utime and a.stime <= b.stime  # the Python scan came second
    assert type(c[os.getpid()]).__name__ == "ProcStat"


def test_the_c_reader_splits_a_large_tree_among_threads_and_loses_nothing(tmp_path):
    """5,000 processes (a second thread reads from 2,048 listed on, while the listing
    goes on; the entries span two blocks of 4,096), the odd ones interleaved: every
    process once, in listing order, with its own values, as the Python loop."""
    for pid in range(1, 5001):
        (tmp_path / str(pid)).mkdir()
        line = STAT_TRAP.replace(b"4242 ", b"%d " % pid, 1).replace(b" 150 30 ", b" %d 30 " % pid)
        if pid % 997 == 0:
            line = line.replace(b") S", b")\tS")  # back to Python
        if pid % 1009 != 0:  # these vanished
            (tmp_path / str(pid) / "stat").write_bytes(line)
    c = scan_with(str(tmp_path), True, skip_pid=4999)
    assert c == scan_with(str(tmp_path), False, skip_pid=4999)
    procs, errors, vanished = c
    assert (errors, vanished) == (0, 4)
    assert [(p.pid, p.utime) for p in procs] == [(i, i) for i in range(1, 5001)
                                                 if i % 1009 and i != 4999]
