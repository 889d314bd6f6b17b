"""What a poll does not do when nobody asks (render /metrics), and what scrapes do not
wait for (a rendering of a new snapshot that the daemon started for them)."""

from __future__ import annotations

import os
import threading
import time

from ctxmon.config import load_config
from ctxmon.daemon import Daemon

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def daemon(tmp_path) -> Daemon:
    conf = tmp_path / "ctxmon.toml"
    conf.write_text(
        f'[collector]\nsource = "vserver"\nproc_root = "{FIXTURES}/vs23/proc"\n'
        f'[rrd]\ndir = "{tmp_path}/rrd"\n[exporter]\nlisten = "127.0.0.1:9"\n'
        '[graphs]\nenabled = false\n'
    )
    return Daemon(load_config(str(conf)))


def wait_for(cond, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_metrics_text_is_rendered_only_for_scrapers(tmp_path, monkeypatch):
    d = daemon(tmp_path)
    registry = d.server.registry
    collector = registry.snapshot_collector
    rendered = []
    real = collector._snapshot_families
    monkeypatch.setattr(collector, "_snapshot_families",
                        lambda snap: rendered.append(snap) or real(snap))
    try:
        s1 = d.poll()
        time.sleep(0.2)
        assert rendered == []  # nobody scraped: nothing rendered
        text = b"".join(registry.exposition()).decode()
        assert "ctxmon_context_processes{" in text
        b"".join(registry.exposition())
        assert rendered == [s1]  # rendered at the first scrape, once
        s2 = d.poll()  # scraped since the last poll: rendered for the next scrapes now
        wait_for(lambda: len(rendered) == 2)
        assert rendered == [s1, s2]
        b"".join(registry.exposition())
        assert rendered == [s1, s2]
        s3 = d.poll()  # scraped again in between: rendered
        wait_for(lambda: len(rendered) == 3)
        d.poll()  # not scraped since s3: nothing
        time.sleep(0.2)
        assert rendered == [s1, s2, s3]
    finally:
        d.rrd.close()
        d.sampler.close()


def test_scrapes_do_not_wait_for_the_rendering_the_daemon_started(tmp_path):
    d = daemon(tmp_path)
    registry = d.server.registry
    collector = registry.snapshot_collector
    try:
        d.poll()
        old = collector.exposition()[0]  # the snapshot's part
        collector._scraped = False  # no rendering started by this poll: the test does it
        d.poll()
        with collector._lock:  # as while published() renders the new snapshot
            collector._prerendering = True
            got = []
            t = threading.Thread(target=lambda: got.append(collector.exposition()[0]))
            t.start()
            t.join(5)
            assert not t.is_alive(), "the scrape waited for the rendering"
            collector._prerendering = False
        assert got == [old]  # the previous snapshot's text, at once
        new = collector.exposition()[0]  # after it: the new snapshot's text
        assert new != old
    finally:
        d.rrd.close()
        d.sampler.close()
