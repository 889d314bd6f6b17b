"""Shared fixtures. `cgroup_factory` makes real cgroups (see tests/cgroups.py)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # so test files can `import cgroups`

import cgroups  # noqa: E402
from daemonproc import Daemon  # noqa: E402
from rrdcached import Rrdcached  # noqa: E402


@pytest.fixture
def cgroup_v2_root() -> str:
    """The mounted cgroup v2 hierarchy; skips when real cgroups cannot be made."""
    reason = cgroups.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return cgroups.v2_mount()


@pytest.fixture
def cgroup_factory(cgroup_v2_root):
    """`cgroup_factory(name=None, parent=None, suffix=".service") -> LiveCgroup`.

    Cgroups are made uniquely named under the v2 root (`ctxmon-test-<hex>.service`);
    at teardown, pass or fail, their processes are killed and reaped and they are
    removed, deepest first.
    """
    factory = cgroups.CgroupFactory(cgroup_v2_root)
    try:
        factory(suffix=".probe")
    except OSError as e:
        factory.cleanup()
        pytest.skip(f"cannot create a cgroup under {cgroup_v2_root}: {e.strerror}")
    factory.cleanup()
    yield factory
    factory.cleanup()


@pytest.fixture
def rrdcached(tmp_path):
    """A private rrdcached on a socket in the test's folder (its `base`, symlink-free:
    -B refuses paths through symlinks), stopped at teardown even if a test killed it."""
    if shutil.which("rrdcached") is None:
        pytest.skip("rrdcached not installed (make test installs it)")
    daemon = Rrdcached(os.path.realpath(tmp_path))
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def daemons():
    """daemons(config, log_path, [command=, cwd=]) -> a running `ctxmon run` child,
    killed at teardown."""
    started: list[Daemon] = []

    def start(config, log_path, **kwargs) -> Daemon:
        d = Daemon(config, log_path, **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


# Fixtures that start real peers make their tests `live` (see pyproject's markers).
LIVE_FIXTURES = frozenset({"cgroup_factory", "cgroup_v2_root", "rrdcached", "daemons"})


def pytest_collection_modifyitems(items):
    for item in items:
        if LIVE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)
