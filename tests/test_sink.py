"""exporters.sink.Complaints: a fault is logged when it starts, when it changes and
when it clears, never once per occurrence (collectd's utils_complain)."""

from __future__ import annotations

import logging

import pytest

from exporters.sink import Complaints, Sink
from exporters.rrd import RrdSink

log = logging.getLogger("test.complaints")


def lines(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == log.name]


def test_a_fault_is_logged_once_until_it_changes_or_clears(caplog):
    caplog.set_level(logging.DEBUG, logger=log.name)
    c = Complaints(log, prefix="X ")
    assert c.complain("disk", "full", "no space left")
    for _ in range(1000):
        assert not c.complain("disk", "full", "no space left")
    assert c.complain("disk", "read-only", "read-only file system")  # another fault: news
    assert c.state("disk") == "read-only" and len(c) == 1
    assert c.release("disk")
    assert not c.release("disk")  # nothing to clear
    assert lines(caplog) == [(logging.WARNING, "X disk: no space left"),
                             (logging.WARNING, "X disk: read-only file system"),
                             (logging.INFO, "X disk: recovered")]


def test_gathered_faults_make_one_line_per_state_and_poll(caplog):
    caplog.set_level(logging.DEBUG, logger=log.name)
    c = Complaints(log, prefix="RRD ", gather=True)
    for k in range(3000):
        c.complain(f"f{k}.rrd", "disk full", "No space left on device")
    c.report()
    for k in range(3000):  # the next poll: still full, nothing to say
        c.complain(f"f{k}.rrd", "disk full", "No space left on device")
    c.report()
    for k in range(2):
        c.release(f"f{k}.rrd")
    c.report()
    got = lines(caplog)
    assert len(got) == 2, got
    assert got[0] == (logging.WARNING, "RRD disk full for 3000 file(s): f0.rrd, f1.rrd, f2.rrd, "
                                       "f3.rrd, f4.rrd ... (No space left on device)")
    assert got[1] == (logging.INFO, "RRD disk full: cleared for 2 file(s): f0.rrd, f1.rrd")


def test_with_every_a_lasting_fault_is_logged_again_each_interval_with_what_was_not(caplog):
    """Failed logins (exporters/http.py) use this: one line per client a minute."""
    caplog.set_level(logging.DEBUG, logger=log.name)
    now = [1000.0]
    c = Complaints(log, every=60.0, clock=lambda: now[0])
    assert c.complain("10.0.0.1", "failing", text=lambda n: f"a: {n} not logged")
    for _ in range(5):
        now[0] += 10
        assert not c.complain("10.0.0.1", "failing", text=lambda n: f"b: {n}")
    c.note("10.0.0.1")  # an occurrence that is no complaint (a refused attempt)
    c.note("10.0.0.9")  # a key in no state: nothing to count
    assert c.last_logged("10.0.0.1") == 1000.0
    now[0] += 10  # 60 s since the last line
    assert c.complain("10.0.0.1", "failing", text=lambda n: f"c: {n} not logged")
    assert c.complain("10.0.0.2", "failing", "another key")  # its own interval
    now[0] += 1
    assert not c.complain("10.0.0.1", "failing", text=lambda n: f"d: {n}")
    c.forget("10.0.0.1")
    assert c.last_logged("10.0.0.1") is None
    assert c.complain("10.0.0.1", "failing", text=lambda n: f"e: {n} not logged")
    assert lines(caplog) == [(logging.WARNING, "a: 0 not logged"),
                             (logging.WARNING, "c: 6 not logged"),
                             (logging.WARNING, "10.0.0.2: another key"),
                             (logging.WARNING, "e: 0 not logged")]
    with pytest.raises(ValueError):
        Complaints(log, gather=True, every=60.0)


def test_the_rrd_sink_is_a_sink(tmp_path):
    assert isinstance(RrdSink(str(tmp_path), 60), Sink)
