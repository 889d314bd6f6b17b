"""The `ctxmon` command line (issue 12 item 7, issue 10 item 6): options after the
command, --version, one-line refusals, no folders made by `rules -o`, each command
importing only what it needs, and a Makefile whose `make run` installs no test tools."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from daemonproc import write_config

import collector
from ctxmon import __version__, cli

HERE = os.path.dirname(__file__)
CHECKOUT = os.path.dirname(HERE)
VS20 = os.path.join(HERE, "fixtures", "vs20")
SHIPPED = os.path.join(CHECKOUT, "conf", "ctxmon.toml")


def ctxmon(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "ctxmon.cli", *args], capture_output=True,
                          text=True, timeout=60, **kwargs)


def imported(*args) -> set[str]:
    """The modules `ctxmon ARGS` imports (python -X importtime)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ctxmon.cli", *args],
                       capture_output=True, text=True, timeout=60)
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", r.stderr, re.M)}


def test_version():
    for argv in (["--version"], ["-v", "--version"]):
        r = ctxmon(*argv)
        assert r.returncode == 0 and r.stdout == f"ctxmon {__version__}\n", r
    assert __version__ == "0.1.0"


def test_options_after_the_command(tmp_path):
    for argv in (["check-config", "-c", SHIPPED, "-v"], ["-v", "check-config", "-c", SHIPPED],
                 ["check-config", "-v", "-c", SHIPPED]):
        r = ctxmon(*argv)
        assert r.returncode == 0, (argv, r.stderr)
        assert r.stdout.splitlines()[0] == f"{SHIPPED}: OK", (argv, r.stdout)
    bad = tmp_path / "bad.toml"
    bad.write_text("[collector]\ninterval = 5\nintreval = 1\n")
    r = ctxmon("run", "-c", str(bad), "-v")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "did you mean" in r.stderr


def test_run_with_options_after_the_command(tmp_path):
    """`ctxmon run -c FILE -v`, as the README shows it: the daemon runs, verbosely."""
    cfg = tmp_path / "ctxmon.toml"
    write_config(cfg, tmp_path / "rrd")
    cfg.write_text(cfg.read_text().replace(
        'source = "cgroup"', f'source = "vserver"\nproc_root = "{VS20}/proc"'))
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ctxmon.cli", "run", "-c", str(cfg), "-v"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = 60
        t0 = time.monotonic()
        # The debug line of a finished poll: -v took effect.
        while not re.search(r"DEBUG ctxmon\.daemon: poll \d+:", (tmp_path / "run.log").read_text()):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() - t0 < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_stat_source_vserver_without_proc_virtual_is_one_line_exit_2(tmp_path):
    tree = tmp_path / "proc"
    tree.mkdir()
    (tree / "uptime").write_text("100.00 50.00\n")
    r = ctxmon("stat", "--source", "vserver", "--proc-root", str(tree))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "virtual" in lines[0] and "Traceback" not in r.stderr
    # With the tree's /proc/virtual, the same command lists the guests.
    ok = ctxmon("stat", "--source", "vserver", "--proc-root", os.path.join(VS20, "proc"))
    assert ok.returncode == 0 and "wikkit.example.net" in ok.stdout


def test_rules_output_never_makes_folders(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "ctxmon.rules.yml"
    r = ctxmon("rules", "-c", SHIPPED, "-o", str(target))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such directory" in lines[0], r.stderr
    assert not (tmp_path / "no").exists()
    ok = ctxmon("rules", "-c", SHIPPED, "-o", str(tmp_path / "ctxmon.rules.yml"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ctxmon.rules.yml").read_text().startswith("# Prometheus alerting rules")


HEAVY = ("matplotlib", "prometheus_client", "apscheduler", "rrdtool", "bcrypt", "psutil")


def test_each_command_imports_only_what_it_needs():
    version = imported("--version")
    assert not {m for m in version if m.split(".")[0] in
                ("collector", "exporters", "alerts", "graphs", "planner", "argparse", "json",
                 "logging") + HEAVY}, sorted(version)
    assert "ctxmon.config" not in version
    stat = imported("stat", "--proc-root", os.path.join(VS20, "proc"))
    assert "collector.sampler" in stat
    assert not {m for m in stat if m.split(".")[0] in
                ("exporters", "alerts", "graphs", "planner") + HEAVY
                or m.startswith("ctxmon.config") or m == "collector.traffic"}, sorted(stat)
    check = imported("check-config", "-c", SHIPPED)
    assert "ctxmon.config.loader" in check
    # check-config also estimates the RRD files' size on this host (ctxmon.wiring's
    # storage_estimate: the sampler and librrd), without the daemon or its scheduler.
    assert "ctxmon.wiring" in check
    assert not {m for m in check if m.split(".")[0] in
                ("graphs", "planner", "matplotlib", "prometheus_client", "bcrypt",
                 "apscheduler") or m == "ctxmon.daemon"}, sorted(check)
    helps = imported("--help")
    assert not {m for m in helps if m.split(".")[0] in ("collector", "graphs", "planner")}


def test_the_cli_s_source_names_are_the_collector_s():
    assert cli.SOURCES == collector.SOURCES


def _make_dry_run(target: str) -> str:
    r = subprocess.run(["make", "-n", "-B", target], cwd=CHECKOUT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(not os.path.exists(os.path.join(CHECKOUT, "Makefile")), reason="no Makefile")
def test_make_run_installs_no_test_tools_and_says_what_it_installs():
    run = _make_dry_run("run")
    assert "[test]" not in run and "pytest" not in run
    assert "pip install -q -e ." in run
    assert "echo \"setup: installing ctxmon" in run
    test = _make_dry_run("test")
    assert "'.[test]'" in test and "setup: installing the test tools" in test


def test_pyproject_license_is_an_spdx_expression():
    import tomllib

    with open(os.path.join(CHECKOUT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert project["project"]["license"] == "GPL-2.0-or-later"  # not the deprecated table
    requires = project["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+).*", r) and int(
        re.match(r"setuptools>=(\d+)", r).group(1)) >= 77 for r in requires)
