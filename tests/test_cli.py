"""The `ctxmon` command as an admin runs it: exit codes, one-line errors, output."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)
VS20 = os.path.join(HERE, "fixtures", "vs20")


def ctxmon(*args, check=False):
    return subprocess.run([sys.executable, "-m", "ctxmon.cli", *args],
                          capture_output=True, text=True, check=check, timeout=60)


def test_help_explains_the_commands():
    r = ctxmon("--help")
    assert r.returncode == 0
    for cmd in ("stat", "run", "check-config"):
        assert cmd in r.stdout
    r = ctxmon("stat", "--help")
    assert "--proc-root" in r.stdout and "--json" in r.stdout


def test_no_command_is_a_usage_error():
    r = ctxmon()
    assert r.returncode == 2


@pytest.mark.parametrize("root", ["/nonexistent/proc", "EMPTY"])
def test_stat_on_a_missing_or_foreign_root_is_one_line_exit_2(root, tmp_path):
    if root == "EMPTY":
        root = str(tmp_path)
    r = ctxmon("stat", "--proc-root", root)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and root in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize("c_reader", [True, False])
def test_stat_a_proc_root_failing_mid_scan_is_one_line_exit_2(c_reader, monkeypatch, capsys):
    """The listing of the proc root fails after the root was found fine (an I/O error,
    a tree removed underneath): one line naming the root, exit 2, no traceback."""
    import errno

    from collector import procfs
    from ctxmon import cli

    root = os.path.join(VS20, "proc")

    def failing(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    if c_reader:
        assert procfs._procscan is not None
        monkeypatch.setattr(procfs._procscan, "scan", failing)
    else:
        monkeypatch.setattr(procfs, "_procscan", None)
        real = os.listdir
        monkeypatch.setattr(procfs.os, "listdir", lambda p=".": failing() if p == root else real(p))
    assert cli.main(["stat", "--proc-root", root]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and root in lines[0] and "Input/output error" in lines[0], err


def test_stat_unknown_source_is_a_usage_error():
    r = ctxmon("stat", "--source", "docker")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_stat_json_on_a_vserver_tree_matches_the_table():
    table = ctxmon("stat", "--proc-root", os.path.join(VS20, "proc"), check=True).stdout
    rows = json.loads(ctxmon("stat", "--json", "--proc-root", os.path.join(VS20, "proc"),
                             check=True).stdout)
    lines = table.splitlines()
    assert lines[0].split() == ["CTX", "PROC", "VSZ", "RSS", "userTIME", "sysTIME",
                                "UPTIME", "NAME"]
    assert [str(r["id"]) for r in rows] == [line.split()[0] for line in lines[1:]]
    assert [r["processes"] for r in rows] == [int(line.split()[1]) for line in lines[1:]]
    for r in rows:
        for key in ("context", "name", "id", "processes", "threads", "vsz_bytes", "rss_bytes",
                    "cpu_user_seconds", "cpu_system_seconds", "uptime_seconds", "interfaces"):
            assert key in r
        assert r["threads"] >= r["processes"]
    root = next(r for r in rows if r["id"] == 0)
    assert root["name"] == "root server" and root["source"] == "vserver"


def test_stat_cgroup_on_a_tree_without_cgroup_files_loses_no_process_silently(tmp_path):
    """A recorded tree whose <pid> directories have no cgroup file (a VServer
    recording), or an empty one: every process is still counted (under the host, the
    context of a process whose cgroup is unknown) and a warning says how many files
    were skipped, where the table used to come out empty without a word."""
    proc = os.path.join(VS20, "proc")
    n = sum(1 for d in os.listdir(proc) if d.isdigit() and os.path.isfile(f"{proc}/{d}/stat"))
    assert n > 10
    r = ctxmon("stat", "--json", "--source", "cgroup", "--proc-root", proc)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["name"], x["processes"]) for x in rows] == [("host", n)]
    assert f"{n} cgroup file(s) skipped" in r.stderr
    # The same with empty cgroup files, in a copy of the tree.
    import shutil

    copy = tmp_path / "proc"
    shutil.copytree(proc, copy, symlinks=True)
    for d in os.listdir(copy):
        if d.isdigit():
            (copy / d / "cgroup").write_text("")
    r = ctxmon("stat", "--json", "--source", "cgroup", "--proc-root", str(copy))
    assert [(x["name"], x["processes"]) for x in json.loads(r.stdout)] == [("host", n)]
    assert f"{n} cgroup file(s) skipped" in r.stderr


def test_stat_live_host_lists_this_test_process():
    rows = json.loads(ctxmon("stat", "--json", "--source", "cgroup", check=True).stdout)
    assert sum(r["processes"] for r in rows) >= 2
    assert all(r["rss_bytes"] >= 0 and r["cpu_user_seconds"] >= 0 for r in rows)


def test_stat_never_prints_terminal_controls_from_names():
    from collector.vserverstat import terminal_text

    raw = "web\x1b[2Jx\n" + b"\xff".decode("utf-8", "surrogateescape")
    shown = terminal_text(raw)
    assert shown.isprintable() and "\x1b" not in shown
    assert shown == "web\\x1b[2Jx\\x0a\\xff"
    assert terminal_text("wikkit.example.net") == "wikkit.example.net"
