"""exporters.sink.Complaints: a fault is logged when it starts, when it changes and
when it clears, never once per occurrence (collectd's utils_complain)."""

from __future__ import annotations

import logging

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


def test_the_rrd_sink_is_a_sink(tmp_path):
    assert isinstance(RrdSink(str(tmp_path), 60), Sink)
