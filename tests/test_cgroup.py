"""The cgroup source: parsers on fixture text, rules on realistic cgroup paths (through a
recorded /proc tree), accounting on fake cgroup trees, and real cgroups (as root)."""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys

import psutil
import pytest

from collector.cgroup import (
    CgroupSource,
    compile_rules,
    context_id,
    glob_to_regex,
    parse_cgroup_procs,
    parse_cpu_stat,
    parse_cpuacct_stat,
    parse_docker_name,
    parse_flat_keyed,
    parse_limit,
    parse_pid_cgroup,
    parse_v1_limit,
    pick_cgroup_path,
    unescape_systemd,
    walk_hierarchy,
)
from collector.procfs import ErrorCounts, ParseError, ProcStat
from collector.snapshot import LimitRow

DOCKER_ID = "3f4e8b2a9c1d" + "0123456789abcdef" * 3 + "0a1b"
PODMAN_ID = "9d1e2f3a4b5c" + "fedcba9876543210" * 3 + "c0de"
assert len(DOCKER_ID) == len(PODMAN_ID) == 64

# --------------------------------------------------------------------------- parsers

HYBRID_PID_CGROUP = "9:name=systemd:/\n4:memory:/a/b\n2:cpuacct:/x\n0::/x\n"


def test_parse_pid_cgroup_hybrid():
    paths, bad = parse_pid_cgroup(HYBRID_PID_CGROUP)
    assert bad == 0
    assert paths == {"name=systemd": "", "memory": "a/b", "cpuacct": "x", "": "x"}


def test_parse_pid_cgroup_comounted_deleted_and_malformed():
    text = (
        "5:cpu,cpuacct:/system.slice/cron.service\n"
        "garbage\n"
        "x:memory:/nope\n"
        "1:name=systemd:relative\n"
        "0::/gone.service (deleted)\n"
        "7:pids:/with:colon\n"
    )
    paths, bad = parse_pid_cgroup(text)
    assert bad == 3
    assert paths == {
        "cpu": "system.slice/cron.service",
        "cpuacct": "system.slice/cron.service",
        "": "gone.service",
        "pids": "with:colon",
    }


def test_pick_cgroup_path():
    paths, _ = parse_pid_cgroup(HYBRID_PID_CGROUP)
    assert pick_cgroup_path(paths, "memory") == "a/b"
    assert pick_cgroup_path(paths, "name=systemd") == ""
    assert pick_cgroup_path(paths, "blkio") is None
    assert pick_cgroup_path(paths, None) == "x"  # auto: v2 first
    v1_only, _ = parse_pid_cgroup("9:name=systemd:/s\n2:cpuacct:/c\n")
    assert pick_cgroup_path(v1_only, None) == "c"
    assert pick_cgroup_path({"name=systemd": "s"}, None) == "s"


def test_parse_cpu_stat():
    text = (
        "usage_usec 3500123\nuser_usec 2500000\nsystem_usec 1000123\n"
        "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n"
    )
    assert parse_cpu_stat(text) == (2.5, 1.000123)
    with pytest.raises(ParseError):
        parse_cpu_stat("usage_usec 5\nuser_usec 3\n")
    with pytest.raises(ParseError):
        parse_cpu_stat("user_usec lots\nsystem_usec 1\n")


def test_parse_cpuacct_stat():
    assert parse_cpuacct_stat("user 250\nsystem 50\n", hz=100) == (2.5, 0.5)
    with pytest.raises(ParseError):
        parse_cpuacct_stat("user 250\n", hz=100)


def test_parse_flat_keyed_memory_events():
    text = "low 0\nhigh 12\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n"
    assert parse_flat_keyed(text) == {
        "low": 0, "high": 12, "max": 7, "oom": 1, "oom_kill": 1, "oom_group_kill": 0,
    }
    with pytest.raises(ParseError):
        parse_flat_keyed("max 1 2\n")


def test_parse_limits():
    assert parse_limit("max\n") is None
    assert parse_limit("1048576\n") == 1048576
    with pytest.raises(ParseError):
        parse_limit("lots\n")
    assert parse_v1_limit("9223372036854771712\n") is None
    assert parse_v1_limit("536870912\n") == 536870912


def test_parse_cgroup_procs():
    assert parse_cgroup_procs("1\n42\n0\n") == [1, 42]
    assert parse_cgroup_procs("") == []
    with pytest.raises(ParseError):
        parse_cgroup_procs("1\nfoo\n")


def test_parse_docker_name():
    assert parse_docker_name(json.dumps({"ID": DOCKER_ID, "Name": "/web"})) == "web"
    assert parse_docker_name(json.dumps({"ID": DOCKER_ID})) is None
    assert parse_docker_name(json.dumps({"Name": 5})) is None
    with pytest.raises(ParseError):
        parse_docker_name("{not json")


def test_unescape_systemd():
    assert unescape_systemd(r"my\x2dbox") == "my-box"
    assert unescape_systemd(r"caf\xc3\xa9") == "café"
    assert unescape_systemd("plain-name") == "plain-name"
    bad = unescape_systemd(r"x\xff")  # not UTF-8: kept, no exception
    assert bad.startswith("x") and len(bad) == 2


def test_glob_to_regex():
    def full(glob, path):
        m = re.fullmatch(glob_to_regex(glob), path)
        return None if m is None else m.groups()

    assert full("system.slice/*.service", "system.slice/sshd.service") == ("sshd",)
    assert full("system.slice/*.service", "system.slice/a/b.service") is None  # * stays in a segment
    assert full("**/*.service", "sshd.service") == ("sshd",)
    assert full("**/*.service", "a/b/c.service") == ("c",)
    assert full("a/**", "a/b/c") == ()
    assert full("a/**", "a") == ()
    assert full("x?z", "xyz") == ()
    assert full("x?z", "x/z") is None
    assert full("a.b", "axb") is None  # dots are literal


def test_context_id():
    a = context_id("system.slice/sshd.service")
    assert re.fullmatch(r"[0-9a-f]{6}", a)
    assert a == context_id("system.slice/sshd.service")
    assert a != context_id("system.slice/cron.service")


# --------------------------------------------------------------------------- rules


def _proc(pid: int, start: int = 1000) -> ProcStat:
    return ProcStat(pid, start, 10, 5, 0, 0, 1, 1 << 20, 100)


def _recorded_tree(tmp_path, paths: list[str]):
    """A recorded /proc with one process per cgroup path (pids 100, 101, ...)."""
    procs = []
    for i, path in enumerate(paths):
        pid = 100 + i
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup").write_text(f"1:name=systemd:/{path}\n0::/{path}\n")
        procs.append(_proc(pid))
    return procs


def assign_paths(tmp_path, paths, rules=None, **kw):
    """{cgroup path: ContextIdentity} as the source assigns a recorded tree."""
    procs = _recorded_tree(tmp_path, paths)
    src = CgroupSource(str(tmp_path / "proc"), rules=rules, **kw)
    errors = ErrorCounts()
    groups = src.assign(procs, errors)
    by_pid = {p.pid: ident for ident, members in groups.items() for p in members}
    return {path: by_pid[100 + i] for i, path in enumerate(paths)}, errors


def write_docker_config(docker_root, cid, text):
    d = docker_root / "containers" / cid
    d.mkdir(parents=True)
    (d / "config.v2.json").write_text(text)


HOST_PATHS = [
    "",
    "init.scope",
    "user.slice/user-1000.slice/session-2.scope",
    "system.slice",
    "lxc.monitor.web",
    f"machine.slice/libpod-conmon-{PODMAN_ID}.scope",
]


def test_host_paths(tmp_path):
    got, errors = assign_paths(tmp_path, HOST_PATHS)
    for path in HOST_PATHS:
        ident = got[path]
        assert (ident.name, ident.key, ident.ctx_id) == ("host", "", "0"), path
    assert len(set(got.values())) == 1
    assert sum(errors.values()) == 0


@pytest.mark.parametrize(
    "path, name, key",
    [
        ("system.slice/sshd.service", "sshd.service", "system.slice/sshd.service"),
        ("system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service",
         "system.slice/system-getty.slice/getty@tty1.service"),
        # the unit name as systemd spells it, escapes and all
        (r"system.slice/system-openvpn.slice/openvpn@my\x2dvpn.service",
         r"openvpn@my\x2dvpn.service",
         r"system.slice/system-openvpn.slice/openvpn@my\x2dvpn.service"),
        # the user's manager is a service; the apps inside it stay in it
        ("user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service",
         "user@1000.service", "user.slice/user-1000.slice/user@1000.service"),
        (f"machine.slice/libpod-{PODMAN_ID}.scope", f"podman-{PODMAN_ID[:12]}",
         f"machine.slice/libpod-{PODMAN_ID}.scope"),
        (f"machine.slice/libpod-{PODMAN_ID}.scope/container", f"podman-{PODMAN_ID[:12]}",
         f"machine.slice/libpod-{PODMAN_ID}.scope"),
        (f"libpod_parent/libpod-{PODMAN_ID}", f"podman-{PODMAN_ID[:12]}",
         f"libpod_parent/libpod-{PODMAN_ID}"),
        ("lxc.payload.web", "web", "lxc.payload.web"),
        ("lxc.payload.web/system.slice/sshd.service", "web", "lxc.payload.web"),
        ("lxc.payload.db.example/init.scope", "db.example", "lxc.payload.db.example"),
        ("lxc/old", "old", "lxc/old"),
        ("lxc/old/system.slice/cron.service", "old", "lxc/old"),
        ("lxc.payload/mid", "mid", "lxc.payload/mid"),
        (r"machine.slice/machine-my\x2dbox.scope", "my-box",
         r"machine.slice/machine-my\x2dbox.scope"),
        (r"machine.slice/machine-qemu\x2d1\x2ddebian.scope", "qemu-1-debian",
         r"machine.slice/machine-qemu\x2d1\x2ddebian.scope"),
        (r"machine.slice/machine-caf\xc3\xa9.scope", "café",
         r"machine.slice/machine-caf\xc3\xa9.scope"),
        (r"machine.slice/systemd-nspawn@my\x2dbox.service", "my-box",
         r"machine.slice/systemd-nspawn@my\x2dbox.service"),
        # a container's own services stay in the container
        ("machine.slice/systemd-nspawn@c1.service/payload/system.slice/cron.service", "c1",
         "machine.slice/systemd-nspawn@c1.service"),
        # nested services: the outermost one
        ("outer.service/sub/inner.service", "outer.service", "outer.service"),
    ],
)
def test_default_rules(tmp_path, path, name, key):
    got, errors = assign_paths(tmp_path, [path])
    ident = got[path]
    assert (ident.name, ident.key, ident.cgroup, ident.source) == (name, key, key, "cgroup")
    assert re.fullmatch(r"[0-9a-f]{6}", ident.ctx_id)
    assert sum(errors.values()) == 0


@pytest.mark.parametrize("driver_path", [
    f"system.slice/docker-{DOCKER_ID}.scope",  # systemd cgroup driver
    f"docker/{DOCKER_ID}",  # cgroupfs driver
])
def test_docker_without_config(tmp_path, driver_path):
    inner = driver_path + "/init.scope"
    got, errors = assign_paths(tmp_path, [driver_path, inner])
    assert got[driver_path].name == f"docker-{DOCKER_ID[:12]}"
    assert got[inner] == got[driver_path]
    assert got[driver_path].key == driver_path
    assert DOCKER_ID not in got[driver_path].name
    assert sum(errors.values()) == 0


@pytest.mark.parametrize("driver_path", [
    f"system.slice/docker-{DOCKER_ID}.scope",
    f"docker/{DOCKER_ID}",
])
def test_docker_name_from_config(tmp_path, driver_path):
    # default docker_root: var/lib/docker under the recorded tree's root
    write_docker_config(tmp_path / "var/lib/docker", DOCKER_ID,
                        json.dumps({"ID": DOCKER_ID, "Name": "/web-1", "State": {}}))
    got, errors = assign_paths(tmp_path, [driver_path])
    assert got[driver_path].name == "web-1"
    assert got[driver_path].key == driver_path
    assert sum(errors.values()) == 0


def test_docker_explicit_root_and_bad_config(tmp_path):
    other = tmp_path / "elsewhere"
    write_docker_config(other, DOCKER_ID, "{truncated")
    path = f"system.slice/docker-{DOCKER_ID}.scope"
    got, errors = assign_paths(tmp_path, [path], docker_root=str(other))
    assert got[path].name == f"docker-{DOCKER_ID[:12]}"
    assert errors["cgroup"] == 1


def test_docker_rename_is_seen(tmp_path):
    root = tmp_path / "var/lib/docker"
    write_docker_config(root, DOCKER_ID, json.dumps({"Name": "/before"}))
    path = f"docker/{DOCKER_ID}"
    procs = _recorded_tree(tmp_path, [path])
    src = CgroupSource(str(tmp_path / "proc"))
    (first,) = src.assign(procs, ErrorCounts())
    cfg = root / "containers" / DOCKER_ID / "config.v2.json"
    cfg.write_text(json.dumps({"Name": "/after-rename"}))
    (second,) = src.assign(procs, ErrorCounts())
    assert (first.name, second.name) == ("before", "after-rename")
    assert first.key == second.key


def test_config_rules_come_first(tmp_path):
    rules = [
        {"glob": "system.slice/*.service", "name": "svc-{1}"},
        {"regex": r"/lxc\.payload\.(\w+)", "name": "guest-{1}"},  # leading slash form
        {"regex": r"system\.slice/docker-([0-9a-f]{64})\.scope", "name": "c-{1:.8}"},
        {"glob": "**/batch/*", "name": "{basename}@{path}"},
    ]
    paths = [
        "system.slice/sshd.service",
        "lxc.payload.web/system.slice/sshd.service",
        f"system.slice/docker-{DOCKER_ID}.scope",
        "work.slice/batch/job7/step1",
        "other.service",  # defaults still apply after the config rules
    ]
    got, _ = assign_paths(tmp_path, paths, rules=rules)
    assert [got[p].name for p in paths] == [
        "svc-sshd", "guest-web", f"c-{DOCKER_ID[:8]}", "job7@work.slice/batch/job7",
        "other.service",
    ]
    assert got[paths[1]].key == "lxc.payload.web"


def test_config_rule_escapes_unescaped_in_captures(tmp_path):
    rules = [{"glob": "vms.slice/vm-*.scope", "name": "vm {1}"}]
    path = r"vms.slice/vm-web\x2dfront.scope"
    got, _ = assign_paths(tmp_path, [path], rules=rules)
    assert got[path].name == "vm web-front"


@pytest.mark.parametrize("spec, words", [
    ({"regex": "system.slice/(unclosed", "name": "x"}, ["bad regex", "unclosed"]),
    ({"glob": "*.service", "name": "{2}"}, ["{2}"]),
    ({"glob": "*.service", "name": "{1:d}"}, ["template"]),
    ({"glob": "*.service", "name": "{nope}"}, ["{nope}"]),
    ({"glob": "*.service", "name": "{1.__class__}"}, ["unknown field"]),
    ({"glob": "*.service", "regex": "x", "name": "x"}, ["exactly one"]),
    ({"glob": "*.service"}, ["name"]),
    ({"glob": "*.service", "name": "x", "nmae": "y"}, ["unknown key", "nmae"]),
])
def test_bad_rules_raise_one_line_value_error(spec, words):
    with pytest.raises(ValueError) as exc:
        compile_rules([spec])
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_bad_rule_message_names_its_position():
    with pytest.raises(ValueError, match="rule 2"):
        compile_rules([{"glob": "*", "name": "{1}"}, {"regex": "(", "name": "x"}])


def test_source_rejects_bad_rules_and_hierarchy(tmp_path):
    with pytest.raises(ValueError):
        CgroupSource(str(tmp_path), rules=[{"regex": "[", "name": "x"}])
    with pytest.raises(ValueError, match="hierarchy"):
        CgroupSource(str(tmp_path), cgroup_root=str(tmp_path), hierarchy="not a controller!")


# --------------------------------------------------------------------------- assign I/O


def test_assign_groups_processes_and_counts_bad_files(tmp_path):
    procs = _recorded_tree(tmp_path, ["system.slice/a.service", "system.slice/a.service",
                                      "system.slice/b.service"])
    proc = tmp_path / "proc"
    # unreadable cgroup file (a directory), malformed one, and a vanished pid
    (proc / "200" / "cgroup").mkdir(parents=True)
    (proc / "201").mkdir()
    (proc / "201" / "cgroup").write_text("this is not a cgroup file\n")
    procs += [_proc(200), _proc(201), _proc(202)]
    src = CgroupSource(str(proc))
    errors = ErrorCounts()
    groups = src.assign(procs, errors)
    by_name = {ident.name: sorted(p.pid for p in members) for ident, members in groups.items()}
    assert by_name == {"a.service": [100, 101], "b.service": [102], "host": [200, 201]}
    assert errors["cgroup"] == 2


def test_assign_v1_hierarchy_from_pid_cgroup(tmp_path):
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "cgroup").write_text(
        "9:name=systemd:/system.slice/x.service\n4:memory:/lxc/m\n2:cpuacct:/lxc/c\n"
    )
    nocg = str(tmp_path / "no-cgroup-mount")
    for hierarchy, name in [("memory", "m"), ("cpuacct", "c"), ("name=systemd", "x.service"),
                            ("auto", "c")]:
        src = CgroupSource(str(proc), cgroup_root=nocg, hierarchy=hierarchy)
        (ident,) = src.assign([_proc(7)], ErrorCounts())
        assert ident.name == name, hierarchy


def test_pid_cgroup_is_read_once_per_process(tmp_path):
    procs = _recorded_tree(tmp_path, ["system.slice/a.service"])
    src = CgroupSource(str(tmp_path / "proc"))
    (first,) = src.assign(procs, ErrorCounts())
    (tmp_path / "proc/100/cgroup").write_text("0::/system.slice/b.service\n")
    (same,) = src.assign(procs, ErrorCounts())
    (reused,) = src.assign([_proc(100, start=2000)], ErrorCounts())  # a new process, same pid
    assert (first.name, same.name, reused.name) == ("a.service", "a.service", "b.service")


def test_walk_hierarchy(tmp_path):
    root = tmp_path / "cg"
    (root / "a/b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / "cgroup.procs").write_text("1\n2\n")
    (root / "a/cgroup.procs").write_text("10\n")
    (root / "a/b/cgroup.procs").write_text("11\n0\n")
    (root / "c/cgroup.procs").write_text("12\nbogus\n")
    errors = ErrorCounts()
    assert walk_hierarchy(str(root), errors) == {"": [1, 2], "a": [10], "a/b": [11]}
    assert errors["cgroup"] == 1


def test_walk_wins_over_pid_cgroup_and_falls_back(tmp_path):
    """Where cgroup.procs can be walked it decides; a pid it misses (a zombie) falls back."""
    procs = _recorded_tree(tmp_path, ["old.service", "zombie.service"])
    cg = tmp_path / "cg"
    (cg / "new.service").mkdir(parents=True)
    (cg / "cgroup.controllers").write_text("cpu memory pids\n")
    (cg / "cgroup.procs").write_text("")
    (cg / "new.service/cgroup.procs").write_text("100\n")
    src = CgroupSource(str(tmp_path / "proc"), cgroup_root=str(cg))
    assert not src.walk  # a recorded proc tree: its pids are not the live ones
    src.walk = True
    groups = src.assign(procs, ErrorCounts())
    by_pid = {p.pid: ident.name for ident, members in groups.items() for p in members}
    assert by_pid == {100: "new.service", 101: "zombie.service"}



def test_walk_counts_each_scanned_process_once(tmp_path):
    """A pid listed by two cgroups (moved mid-walk) is counted once; a listed pid the
    scan did not see (exited meanwhile) is nobody's member; the scan's order of
    processes does not decide where they go."""
    procs = _recorded_tree(tmp_path, ["a.service", "b.service"])
    cg = tmp_path / "cg"
    for name, pids in (("a.service", "101\n100\n777\n"), ("b.service", "101\n")):
        (cg / name).mkdir(parents=True)
        (cg / name / "cgroup.procs").write_text(pids)
    (cg / "cgroup.controllers").write_text("cpu memory pids\n")
    (cg / "cgroup.procs").write_text("")
    src = CgroupSource(str(tmp_path / "proc"), cgroup_root=str(cg))
    src.walk = True
    for order in (procs, procs[::-1]):
        groups = src.assign(order, ErrorCounts())
        members = sorted(p.pid for ms in groups.values() for p in ms)
        assert members == [100, 101]
        by_pid = {p.pid: ident.name for ident, ms in groups.items() for p in ms}
        assert by_pid[100] == "a.service" and by_pid[101] in ("a.service", "b.service")


# --------------------------------------------------------------------------- accounting


def _write(base, rel, files: dict[str, str]):
    d = base / rel
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


V2_FILES = {
    "cpu.stat": "usage_usec 3500000\nuser_usec 2500000\nsystem_usec 1000000\nnr_periods 0\n",
    "memory.current": "1048576\n",
    "memory.max": "max\n",
    "memory.high": "4194304\n",
    "memory.peak": "2097152\n",
    "memory.events": "low 0\nhigh 3\nmax 7\noom 1\noom_kill 1\n",
    "pids.current": "3\n",
    "pids.max": "100\n",
    "pids.events": "max 2\n",
}


def _v2_tree(tmp_path, files=V2_FILES, rel="system.slice/x.service"):
    cg = tmp_path / "cg"
    _write(cg, "", {"cgroup.controllers": "cpu memory pids\n", "cgroup.procs": ""})
    _write(cg, rel, files)
    return CgroupSource(str(tmp_path / "proc"), cgroup_root=str(cg))


def _ident(src, tmp_path, path):
    (tmp_path / "proc/1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc/1/cgroup").write_text(f"0::/{path}\n")
    (ident,) = src.assign([_proc(1)], ErrorCounts())
    return ident


def test_accounting_v2(tmp_path):
    src = _v2_tree(tmp_path)
    assert src.version == 2
    errors = ErrorCounts()
    acct = src.accounting(_ident(src, tmp_path, "system.slice/x.service"), errors)
    assert (acct.cpu_user_seconds, acct.cpu_system_seconds) == (2.5, 1.0)
    assert acct.limits == (
        LimitRow("memory", "bytes", 1048576, maximum=2097152, soft=4194304, hard=None, hits=7),
        LimitRow("pids", "count", 3, maximum=None, hard=100, hits=2),
    )
    assert sum(errors.values()) == 0


def test_accounting_host_has_no_cpu(tmp_path):
    src = _v2_tree(tmp_path)
    acct = src.accounting(_ident(src, tmp_path, "init.scope"), ErrorCounts())
    assert acct.cpu_user_seconds is None and acct.cpu_system_seconds is None


def test_accounting_bad_files_counted_rest_kept(tmp_path):
    files = dict(V2_FILES, **{"memory.max": "lots\n", "cpu.stat": "user_usec x\n"})
    src = _v2_tree(tmp_path, files)
    errors = ErrorCounts()
    acct = src.accounting(_ident(src, tmp_path, "system.slice/x.service"), errors)
    assert acct.cpu_user_seconds is None
    assert [(r.resource, r.current, r.hard) for r in acct.limits] == [
        ("memory", 1048576, None), ("pids", 3, 100)]
    assert errors["cgroup"] == 2


def test_accounting_without_memory_or_pids_controllers(tmp_path):
    src = _v2_tree(tmp_path, {"cpu.stat": V2_FILES["cpu.stat"]})
    errors = ErrorCounts()
    acct = src.accounting(_ident(src, tmp_path, "system.slice/x.service"), errors)
    assert acct.cpu_user_seconds == 2.5 and acct.limits == ()
    assert sum(errors.values()) == 0


def test_accounting_vanished_cgroup(tmp_path):
    src = _v2_tree(tmp_path)
    ident = _ident(src, tmp_path, "system.slice/gone.service")
    errors = ErrorCounts()
    acct = src.accounting(ident, errors)
    assert acct.cpu_user_seconds is None and acct.limits == ()
    assert sum(errors.values()) == 0


def test_accounting_v1(tmp_path):
    cg = tmp_path / "cg"
    for h in ("cpuacct", "memory", "systemd"):
        _write(cg, h, {"cgroup.procs": ""})
    _write(cg, "cpuacct/lxc/web", {
        "cpuacct.usage_user": "2000000000\n", "cpuacct.usage_sys": "500000000\n",
        "cpuacct.stat": "user 1\nsystem 1\n",
    })
    _write(cg, "cpuacct/lxc/old", {"cpuacct.stat": "user 250\nsystem 50\n"})
    _write(cg, "memory/lxc/web", {
        "memory.usage_in_bytes": "8192\n", "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.soft_limit_in_bytes": "4096000\n", "memory.max_usage_in_bytes": "16384\n",
        "memory.failcnt": "3\n",
    })
    src = CgroupSource(str(tmp_path / "proc"), cgroup_root=str(cg))
    assert (src.version, src.proc_key) == (1, "cpuacct")
    errors = ErrorCounts()
    web = src.accounting(_ident_v1(src, tmp_path, "lxc/web"), errors)
    assert (web.cpu_user_seconds, web.cpu_system_seconds) == (2.0, 0.5)
    assert web.limits == (
        LimitRow("memory", "bytes", 8192, maximum=16384, soft=4096000, hard=None, hits=3),)
    old = src.accounting(_ident_v1(src, tmp_path, "lxc/old"), errors)
    from collector.procfs import CLK_TCK
    assert (old.cpu_user_seconds, old.cpu_system_seconds) == (250 / CLK_TCK, 50 / CLK_TCK)
    assert sum(errors.values()) == 0


def _ident_v1(src, tmp_path, path):
    (tmp_path / "proc/1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc/1/cgroup").write_text(f"2:cpuacct:/{path}\n")
    src._proc_paths.clear()
    (ident,) = src.assign([_proc(1)], ErrorCounts())
    return ident


def test_hierarchy_selection(tmp_path):
    pure = tmp_path / "pure"
    _write(pure, "", {"cgroup.controllers": "cpu\n", "cgroup.procs": ""})
    hybrid = tmp_path / "hybrid"
    _write(hybrid, "unified", {"cgroup.controllers": "\n", "cgroup.procs": ""})
    _write(hybrid, "memory", {"cgroup.procs": ""})
    _write(hybrid, "cpu,cpuacct", {"cgroup.procs": ""})
    legacy = tmp_path / "legacy"
    _write(legacy, "systemd", {"cgroup.procs": ""})

    def sel(root, hierarchy="auto"):
        s = CgroupSource(str(tmp_path / "proc"), cgroup_root=str(root), hierarchy=hierarchy)
        rel = None if s.hierarchy_dir is None else os.path.relpath(s.hierarchy_dir, root)
        return s.version, rel

    assert sel(pure) == (2, ".")
    assert sel(hybrid) == (2, "unified")
    assert sel(hybrid, "unified") == (2, "unified")
    assert sel(hybrid, "cpuacct") == (1, "cpu,cpuacct")
    assert sel(hybrid, "memory") == (1, "memory")
    assert sel(legacy) == (1, "systemd")
    assert sel(tmp_path / "none") == (None, None)


def test_hybrid_takes_memory_from_v1(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "unified", {"cgroup.controllers": "\n", "cgroup.procs": ""})
    _write(cg, "unified/system.slice/x.service", {"cpu.stat": V2_FILES["cpu.stat"]})
    _write(cg, "memory", {"cgroup.procs": ""})
    _write(cg, "memory/system.slice/x.service", {
        "memory.usage_in_bytes": "8192\n", "memory.limit_in_bytes": "65536\n",
    })
    src = CgroupSource(str(tmp_path / "proc"), cgroup_root=str(cg))
    errors = ErrorCounts()
    acct = src.accounting(_ident(src, tmp_path, "system.slice/x.service"), errors)
    assert acct.cpu_user_seconds == 2.5
    assert [(r.resource, r.current, r.hard) for r in acct.limits] == [("memory", 8192, 65536)]
    assert sum(errors.values()) == 0


# --------------------------------------------------------------------------- real cgroups

CHILD = r"""
import sys, time
mode, amount = sys.argv[1], float(sys.argv[2])
if mode == "burn":  # use `amount` seconds of CPU
    while time.process_time() < amount:
        pass
else:  # allocate `amount` bytes and write every page
    n = int(amount)
    buf = bytearray(n)
    buf[::4096] = b"\1" * len(range(0, n, 4096))
print("ready", flush=True)
time.sleep(600)
"""

MIB = 1 << 20


def spawn_child(cg, mode, amount):
    return cg.spawn([sys.executable, "-c", CHILD, mode, str(amount)],
                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)


def wait_ready(p, timeout=120.0):
    # selectors, not select.select: samplers earlier in the session hold stat files
    # open, so the pipe's fd can be above select()'s 1024 limit.
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
    assert ready, f"child {p.pid} not ready after {timeout}s"
    assert p.stdout.readline() == b"ready\n"


def cpu_seconds(pid):
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def test_real_cgroup_cpu_rss_and_exit(cgroup_factory, cgroup_v2_root):
    from collector.sampler import Sampler

    cg = cgroup_factory()
    idle_cg = cgroup_factory(suffix=".scope")  # an idle equivalent, outside the context
    burner = spawn_child(cg, "burn", 2.0)
    toucher = spawn_child(cg, "touch", 64 * MIB)
    idle = spawn_child(idle_cg, "touch", 0)
    for p in (burner, toucher, idle):
        wait_ready(p)
    assert sorted(cg.pids()) == sorted([burner.pid, toucher.pid])

    sampler = Sampler(CgroupSource(cgroup_root=cgroup_v2_root), "/proc")
    try:
        snap = sampler.sample()
        consumed = cpu_seconds(burner.pid) + cpu_seconds(toucher.pid)
        idle_rss = psutil.Process(idle.pid).memory_info().rss
        ctx = snap.context(os.path.basename(cg.rel))
        assert ctx is not None, [c.name for c in snap.contexts]
        assert (ctx.key, ctx.cgroup, ctx.source) == (cg.rel, cg.rel, "cgroup")
        assert ctx.processes == 2
        assert ctx.cpu_accounting == "kernel"
        assert consumed >= 1.9
        cpu = ctx.cpu_user_seconds + ctx.cpu_system_seconds
        assert abs(cpu - consumed) <= 0.10 * consumed, (cpu, consumed)
        expected_rss = 64 * MIB + 2 * idle_rss  # both children carry an idle one's baseline
        assert abs(ctx.rss_bytes - expected_rss) <= 0.10 * expected_rss, (ctx.rss_bytes,
                                                                           expected_rss)
        host = snap.context("host")
        assert host is not None and host.processes >= 1 and host.key == ""

        burner.kill()
        burner.wait()
        after = sampler.sample().context(os.path.basename(cg.rel))
        assert after is not None and after.processes == 1
        assert after.cpu_user_seconds >= ctx.cpu_user_seconds
        assert after.cpu_system_seconds >= ctx.cpu_system_seconds
        assert after.cpu_user_seconds + after.cpu_system_seconds >= 0.9 * consumed
    finally:
        sampler.close()


def test_real_migration_is_followed(cgroup_factory, cgroup_v2_root):
    a, b = cgroup_factory(), cgroup_factory()
    p = spawn_child(a, "touch", 0)
    wait_ready(p)
    from collector.procfs import ProcessScanner

    scanner = ProcessScanner("/proc", max_open=0)
    src = CgroupSource(cgroup_root=cgroup_v2_root)
    assert src.walk

    def context_of_child():
        groups = src.assign(scanner.scan().procs, ErrorCounts())
        return [ident.name for ident, members in groups.items()
                if any(m.pid == p.pid for m in members)]

    assert context_of_child() == [os.path.basename(a.rel)]
    b.add(p.pid)
    assert context_of_child() == [os.path.basename(b.rel)]


def test_real_nested_cgroup_and_pid_cgroup_fallback(cgroup_factory, cgroup_v2_root):
    outer = cgroup_factory()
    inner = cgroup_factory(name="inner.service", parent=cgroup_factory(name="sub", parent=outer))
    p = spawn_child(inner, "touch", 0)
    wait_ready(p)
    from collector.procfs import ProcessScanner

    procs = ProcessScanner("/proc", max_open=0).scan().procs
    for walk in (True, False):
        src = CgroupSource(cgroup_root=cgroup_v2_root)
        src.walk = walk  # False: read /proc/<pid>/cgroup as for a recorded tree
        errors = ErrorCounts()
        groups = src.assign(procs, errors)
        (ident,) = [i for i, members in groups.items() if any(m.pid == p.pid for m in members)]
        assert (ident.name, ident.key) == (os.path.basename(outer.rel), outer.rel), walk


def test_v2_mount_from_mountinfo(tmp_path):
    import cgroups

    info = tmp_path / "mountinfo"
    info.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert cgroups.v2_mount(str(info)) == "/sys/fs/cgroup/unified"
    info.write_text("29 23 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroups.v2_mount(str(info)) == "/sys/fs/cgroup"
    info.write_text("33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n")
    assert cgroups.v2_mount(str(info)) is None


def test_cgroup_fixtures_skip_when_not_root(monkeypatch):
    import cgroups

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cgroups.unavailable_reason() == "real cgroups need root"
