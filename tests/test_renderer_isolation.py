"""The daemon's graph renderer child runs no code from the daemon's working directory
and draws with the daemon's config in force, not whatever the file holds now
(issue 11 item 1)."""

from __future__ import annotations

import os
import signal
import sys

import pytest
from daemonproc import POLLED, write_config

from ctxmon.config import config_from_json, config_to_json, load_config

# The `ctxmon` console script, as an admin starts it (sys.path[0] is its own folder,
# not the working directory).
CTXMON = os.path.join(os.path.dirname(sys.executable), "ctxmon")
DRAWN = "graphs drawn"  # the renderer's closing log line (graphs.__main__)


@pytest.fixture
def started(daemons):
    """started(config, log_path, cwd): `ctxmon -v run` through the console script, in
    `cwd`."""
    return lambda config, log_path, cwd: daemons(config, log_path, command=(CTXMON,), cwd=cwd)


VS20 = os.path.join(os.path.dirname(__file__), "fixtures", "vs20")


def _config(path, rrd_dir, graphs_dir) -> str:
    """A 1 s daemon on the recorded VServer tree: its polls cost the same whatever
    else runs on this host (thousands of cgroups, at times)."""
    write_config(path, rrd_dir, graphs=f'enabled = true\ninterval = "2s"\ndir = "{graphs_dir}"')
    path.write_text(path.read_text().replace(
        'source = "cgroup"', f'source = "vserver"\nproc_root = "{VS20}/proc"'))
    return str(path)


def _hostile_cwd(path, marker, package: bool) -> str:
    """A working directory holding a `graphs` folder: a package whose __main__ writes
    `marker` (and fails), or a plain empty folder."""
    g = path / "graphs"
    g.mkdir(parents=True)
    if package:
        payload = (f"open({str(marker)!r}, 'w').write(str(__import__('os').getuid()))\n"
                   "raise SystemExit(3)\n")
        (g / "__init__.py").write_text(payload)
        (g / "__main__.py").write_text(payload)
    return str(path)


@pytest.mark.parametrize("package", [True, False], ids=["graphs-package", "plain-folder"])
def test_no_code_from_the_working_directory_reaches_the_renderer(tmp_path, started, package):
    marker = tmp_path / "ran-as-uid"
    cwd = _hostile_cwd(tmp_path / "cwd", marker, package)
    graphs_dir = tmp_path / "out"
    cfg = _config(tmp_path / "ctxmon.toml", tmp_path / "rrd", graphs_dir)
    d = started(cfg, tmp_path / "daemon.log", cwd)
    d.wait_for_log(DRAWN, limit=90)
    assert not marker.exists(), f"code from the daemon's cwd ran: {marker.read_text()}"
    assert (graphs_dir / "index.html").exists()
    assert "graph rendering exited with status" not in d.text()
    assert d.stop(limit=30) == 0, d.text()
    assert "Traceback" not in d.text()


def test_after_a_refused_reload_renders_use_the_config_in_force(tmp_path, started):
    graphs_dir = tmp_path / "out"
    cfg_path = tmp_path / "ctxmon.toml"
    _config(cfg_path, tmp_path / "rrd", graphs_dir)
    d = started(str(cfg_path), tmp_path / "daemon.log", str(tmp_path))
    d.wait_for_log(POLLED, count=2)
    good = cfg_path.read_text()
    cfg_path.write_text(good.replace("[graphs]", "[graphs]\nintreval = 3"))  # a typo
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for_log("reload refused")
    # Every render from now on still draws into the running config's folder.
    drawn = d.text().count(DRAWN)
    page = graphs_dir / "index.html"
    d.wait_for_log(DRAWN, count=drawn + 2, limit=90)
    assert page.exists()
    assert "graph rendering exited with status" not in d.text(), d.text()
    assert "ctxmon graph:" not in d.text(), d.text()
    assert d.stop(limit=30) == 0, d.text()


def test_config_round_trips_through_its_serialized_form():
    conf = os.path.join(os.path.dirname(__file__), "..", "conf", "ctxmon.toml")
    cfg = load_config(conf)
    assert cfg.alerts.rules  # the shipped file has rules, overrides, levels
    again = config_from_json(config_to_json(cfg))
    assert again == cfg
    assert type(again.exporter.basic_auth) is type(cfg.exporter.basic_auth)
    with pytest.raises(ValueError):
        config_from_json('{"collector": 5}')
    with pytest.raises(ValueError):
        config_from_json('{"collector": {"interval": "x"}}')
