"""The sampler's sums and its monotonic CPU counters, on trees and real processes."""

import os

from collector.procfs import CLK_TCK, PAGE_SIZE, ProcessScanner, ProcStat
from collector.sampler import CpuCounters, Sampler
from collector.source import ContextIdentity, KernelAccounting, Source


def P(pid, start, u, s, cu=0, cs=0, threads=1, vsize=0, rss=0):
    return ProcStat(pid, start, u, s, cu, cs, threads, vsize, rss)


def test_kernel_counter_survives_a_context_restart():
    c = CpuCounters()
    assert c.kernel("k", 10.0, 5.0) == (10.0, 5.0)
    assert c.kernel("k", 12.0, 6.0) == (12.0, 6.0)
    # The service restarted: its cgroup's cpu.stat starts again from zero.
    assert c.kernel("k", 1.0, 0.5) == (13.0, 6.5)
    assert c.kernel("k", 2.0, 1.0) == (14.0, 7.0)


def test_process_counter_keeps_the_share_of_exited_processes():
    c = CpuCounters()
    u, s = c.processes("k", [P(1, 100, 100, 50), P(2, 200, 300, 0)])
    c.end_poll(["k"], 0)
    assert (u, s) == (400 / CLK_TCK, 50 / CLK_TCK)
    # pid 2 exited; pid 1 used 20 more user ticks.
    u2, s2 = c.processes("k", [P(1, 100, 120, 50)])
    c.end_poll(["k"], 1)
    assert (u2, s2) == (420 / CLK_TCK, 50 / CLK_TCK)
    # pid 2 is reused by a new process (other start time): counted from zero, not as
    # a delta against the old one (which would be negative and dropped).
    u3, _ = c.processes("k", [P(1, 100, 120, 50), P(2, 900, 7, 0)])
    assert u3 == 427 / CLK_TCK


def test_departed_context_state_is_forgotten_after_an_hour():
    c = CpuCounters()
    c.kernel("k", 10.0, 0.0)
    c.end_poll(["k"], 0)
    c.end_poll([], 1800)
    assert c.has_kernel("k")
    c.end_poll([], 3700)
    assert not c.has_kernel("k")


class TwoContexts(Source):
    """Odd pids to `a` (kernel accounted), even pids to `b` (process accounted)."""

    name = "test"

    def __init__(self):
        self.kernel_cpu = (5.0, 1.0)
        self.a = ContextIdentity("a", "alpha", "1", "test")
        self.b = ContextIdentity("b", "beta", "2", "test")

    def assign(self, procs, errors):
        out = {self.a: [], self.b: []}
        for p in procs:
            out[self.a if p.pid % 2 else self.b].append(p)
        return out

    def accounting(self, ident, errors):
        if ident is self.a and self.kernel_cpu is not None:
            return KernelAccounting(*self.kernel_cpu, started_after_boot=50.0)
        if ident is self.a:
            errors["test"] += 1
        return KernelAccounting()


def _tree(root, procs, uptime="1000.50 20.00"):
    (root / "uptime").write_text(uptime + "\n")
    (root / "net").mkdir(exist_ok=True)
    (root / "net" / "dev").write_text(
        "h1\nh2\n  eth0: 1 2 3 4 0 0 0 0 5 6 7 8 0 0 0 0\n"
    )
    for p in procs:
        d = root / str(p.pid)
        d.mkdir(exist_ok=True)
        (d / "stat").write_text(
            f"{p.pid} (x) S 1 1 1 0 -1 0 0 0 0 0 {p.utime} {p.stime} {p.cutime} {p.cstime}"
            f" 20 0 {p.threads} 0 {p.start} {p.vsize} {p.rss} 0\n"
        )


def test_sample_sums_and_accounting_on_a_tree(tmp_path):
    procs = [
        P(11, 300, 10, 20, cu=5, cs=6, threads=4, vsize=1000, rss=3),
        P(13, 200, 1, 2, vsize=500, rss=1),
        P(20, 400, 100, 50, cu=1, cs=1, threads=2, vsize=7, rss=2),
    ]
    _tree(tmp_path, procs)
    src = TwoContexts()
    s = Sampler(src, str(tmp_path), clock=lambda: 10_000.0,
                scanner=ProcessScanner(str(tmp_path), max_open=0))
    snap = s.sample()
    assert snap.host_uptime_seconds == 1000.5
    assert [i.name for i in snap.host_interfaces] == ["eth0"]
    a, b = snap.context("alpha"), snap.context("beta")
    assert (a.processes, a.threads, a.vsz_bytes, a.rss_bytes) == (2, 5, 1500, 4 * PAGE_SIZE)
    assert (a.cpu_user_seconds, a.cpu_system_seconds, a.cpu_accounting) == (5.0, 1.0, "kernel")
    assert a.live_user_seconds == (10 + 5 + 1) / CLK_TCK
    assert a.live_system_seconds == (20 + 6 + 2) / CLK_TCK
    assert a.first_process_start == 200 / CLK_TCK
    # The kernel's start of the context wins over the first live process for uptime.
    assert a.uptime_seconds == 1000.5 - 50.0
    assert a.start_time == 10_000.0 - (1000.5 - 50.0)
    assert (b.cpu_user_seconds, b.cpu_accounting) == (100 / CLK_TCK, "processes")
    assert b.uptime_seconds == 1000.5 - 400 / CLK_TCK
    assert [c.name for c in snap.contexts] == ["alpha", "beta"]

    # The kernel file fails for one poll: the counter holds, it does not fall back.
    src.kernel_cpu = None
    snap2 = s.sample()
    assert snap2.context("alpha").cpu_user_seconds == 5.0
    assert snap2.errors["test"] == 1


def test_large_contexts_sum_as_small_ones(tmp_path):
    """A context of many processes is summed column-wise, a small one process by
    process: the same sums either way (alpha: 20 odd pids, beta: 3 even ones)."""
    procs = [P(2 * i + 1, 1000 - i, i, 2 * i, cu=i % 3, cs=i % 5, threads=1 + i % 4,
               vsize=4096 * i, rss=i + 7) for i in range(20)]
    procs += [P(2 * i, 50 + i, 3 * i, i, threads=2, vsize=10 * i, rss=i) for i in (1, 2, 3)]
    _tree(tmp_path, procs)
    src = TwoContexts()
    snap = Sampler(src, str(tmp_path), clock=lambda: 10_000.0,
                   scanner=ProcessScanner(str(tmp_path), max_open=0)).sample()
    for name, members in (("alpha", procs[:20]), ("beta", procs[20:])):
        c = snap.context(name)
        assert (c.processes, c.threads, c.vsz_bytes, c.rss_bytes) == (
            len(members), sum(p.threads for p in members), sum(p.vsize for p in members),
            sum(p.rss for p in members) * PAGE_SIZE)
        assert c.live_user_seconds == sum(p.utime + p.cutime for p in members) / CLK_TCK
        assert c.live_system_seconds == sum(p.stime + p.cstime for p in members) / CLK_TCK
        assert c.first_process_start == min(p.start for p in members) / CLK_TCK


def test_missing_uptime_and_net_dev_are_counted_not_raised(tmp_path):
    (tmp_path / "11").mkdir()
    (tmp_path / "11" / "stat").write_text("11 (x) S 1 1 1 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 6 7 0\n")
    snap = Sampler(TwoContexts(), str(tmp_path),
                   scanner=ProcessScanner(str(tmp_path), max_open=0)).sample()
    assert snap.errors["procfs"] == 1
    assert snap.errors["net"] == 1
    assert snap.host_interfaces == ()


def test_context_with_its_own_network_namespace_reports_its_interfaces():
    import shutil
    import subprocess
    import sys

    import pytest

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a network namespace")
    child = subprocess.Popen(["unshare", "-n", sys.executable, "-c",
                              "import time; time.sleep(30)"])
    try:
        import time

        # unshare execs python: wait until the process in the new namespace is python.
        for _ in range(100):
            if os.readlink(f"/proc/{child.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.02)

        class ChildAlone(Source):
            name = "test"
            ident = ContextIdentity("c", "child", "1", "test")

            def assign(self, procs, errors):
                return {self.ident: [p for p in procs if p.pid == child.pid]}

        snap = Sampler(ChildAlone()).sample()
        names = [i.name for i in snap.context("child").interfaces]
        assert names == ["lo"]  # a new netns has only its loopback
        assert "lo" in [i.name for i in snap.host_interfaces]
        assert len(snap.host_interfaces) >= 1
    finally:
        child.kill()
        child.wait()


def test_contexts_sharing_a_name_get_distinct_labels(tmp_path):
    _tree(tmp_path, [P(11, 1, 1, 1), P(20, 1, 1, 1)])

    class SameName(TwoContexts):
        def __init__(self):
            self.kernel_cpu = None
            self.a = ContextIdentity("system.slice/x.service", "x.service", "ab12cd", "test")
            self.b = ContextIdentity("user.slice/x.service", "x.service", "ef34ab", "test")

    snap = Sampler(SameName(), str(tmp_path),
                   scanner=ProcessScanner(str(tmp_path), max_open=0)).sample()
    assert sorted(c.label for c in snap.contexts) == ["x.service", "x.service~ef34ab"]
    assert snap.context("x.service").key == "system.slice/x.service"


def test_a_disambiguated_label_never_takes_an_existing_one(tmp_path):
    _tree(tmp_path, [P(11, 1, 1, 1), P(20, 1, 1, 1), P(31, 1, 1, 1)])

    class Three(Source):
        name = "test"
        ids = [ContextIdentity("a", "x", "1", "test"), ContextIdentity("b", "x", "2", "test"),
               ContextIdentity("c", "x~2", "3", "test")]

        def assign(self, procs, errors):
            return {ident: [p] for ident, p in zip(self.ids, sorted(procs))}

    snap = Sampler(Three(), str(tmp_path),
                   scanner=ProcessScanner(str(tmp_path), max_open=0)).sample()
    labels = [c.label for c in snap.contexts]
    assert len(set(labels)) == 3 and "x" in labels and "x~2" in labels
