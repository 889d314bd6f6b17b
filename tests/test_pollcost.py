"""What a poll does not do when nobody asks: render /metrics."""

from __future__ import annotations

import os

from ctxmon.config import load_config
from ctxmon.daemon import Daemon

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_metrics_text_is_rendered_at_the_first_scrape_after_a_poll(tmp_path, monkeypatch):
    conf = tmp_path / "ctxmon.toml"
    conf.write_text(
        f'[collector]\nsource = "vserver"\nproc_root = "{FIXTURES}/vs23/proc"\n'
        f'[rrd]\ndir = "{tmp_path}/rrd"\n[exporter]\nlisten = "127.0.0.1:9"\n'
        '[graphs]\nenabled = false\n'
    )
    d = Daemon(load_config(str(conf)))
    collector = d.server.registry.snapshot_collector
    rendered = []
    real = collector._snapshot_families
    monkeypatch.setattr(collector, "_snapshot_families",
                        lambda snap: rendered.append(snap) or real(snap))
    try:
        first = d.poll()
        assert rendered == []  # nobody scraped: nothing rendered
        text = b"".join(d.server.registry.exposition()).decode()
        assert rendered == [first]
        assert "ctxmon_context_processes{" in text
        b"".join(d.server.registry.exposition())
        assert rendered == [first]  # the same snapshot: rendered once
        second = d.poll()
        assert rendered == [first]
        b"".join(d.server.registry.exposition())
        assert rendered == [first, second]
    finally:
        d.rrd.close()
        d.sampler.close()
